//! VT-d invalidation descriptors (VT-d 6.5.2): any bytes decode without
//! panicking, and a queue of any contents, at any size and tail, drains in
//! bounded work with an architected outcome (IQH at the tail, or IQE).
#![no_main]

#[path = "vtd_common.rs"]
mod vtd_common;

use libfuzzer_sys::fuzz_target;
use vtd::queue::{Decoded, decode};
use vtd::{DeviceTlbInvalidation, Vtd};
use vtd::regs::off;
use vm_memory::GuestMemoryMmap;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let cfg = vtd_common::config(sel);
    for chunk in rest.chunks(16).take(64) {
        let q = [vtd_common::u64_at(chunk, 0), vtd_common::u64_at(chunk, 8)];
        match decode(q, &cfg) {
            Decoded::Invalid(code) => assert!((1..=5).contains(&code)),
            // Device-TLB invalidations decode to an aligned, non-empty
            // range that contains the address they name.
            Decoded::Ok(d) => {
                if let Some(i) = DeviceTlbInvalidation::from_descriptor(&d) {
                    assert!(i.len >= 4096);
                    assert!(i.len == u64::MAX || i.first % i.len == 0);
                    assert!(i.covers(i.pasid, i.addr & !0xfff));
                }
            }
        }
    }
    // The queue: IQA from the first bytes (pointing anywhere), tail from
    // the next; the rest of the input is RAM.
    vtd_common::with_unit(sel, rest, |mem, unit| queue(mem, unit, rest));
});

fn queue(mem: &GuestMemoryMmap, unit: &mut Vtd, rest: &[u8]) {
    unit.set_device_tlb_callback(|i| assert!(i.len >= 4096));
    unit.mmio_write(mem, off::IQA, 8, vtd_common::u64_at(rest, 0) & !0x7f8);
    unit.mmio_write(mem, off::GCMD, 4, 1 << 26);
    unit.mmio_write(mem, off::IQT, 8, vtd_common::u64_at(rest, 8));
    let head = unit.mmio_read(off::IQH, 8);
    let tail = unit.mmio_read(off::IQT, 8);
    let iqe = unit.mmio_read(off::FSTS, 4) & (1 << 4) != 0;
    assert!(head == tail || iqe || unit.mmio_read(off::GSTS, 4) & (1 << 26) == 0);
    // One queue's worth at most.
    assert!(unit.descriptors_processed() <= 256 << 7);
}
