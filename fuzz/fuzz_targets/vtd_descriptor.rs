//! VT-d invalidation descriptors (VT-d 6.5.2): any bytes decode without
//! panicking, and a queue of any contents, at any size and tail, drains in
//! bounded work with an architected outcome (IQH at the tail, or IQE).
#![no_main]

#[path = "vtd_common.rs"]
mod vtd_common;

use libfuzzer_sys::fuzz_target;
use vtd::Vtd;
use vtd::queue::{Decoded, decode};
use vtd::regs::off;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let cfg = vtd_common::config(sel);
    for chunk in rest.chunks(16).take(64) {
        let q = [vtd_common::u64_at(chunk, 0), vtd_common::u64_at(chunk, 8)];
        if let Decoded::Invalid(code) = decode(q, &cfg) {
            assert!((1..=5).contains(&code));
        }
    }
    // The queue: IQA from the first bytes (pointing anywhere), tail from
    // the next; the rest of the input is RAM.
    let mem = vtd_common::ram(rest);
    let mut unit = Vtd::new(cfg);
    unit.mmio_write(&mem, off::IQA, 8, vtd_common::u64_at(rest, 0) & !0x7f8);
    unit.mmio_write(&mem, off::GCMD, 4, 1 << 26);
    unit.mmio_write(&mem, off::IQT, 8, vtd_common::u64_at(rest, 8));
    let head = unit.mmio_read(off::IQH, 8);
    let tail = unit.mmio_read(off::IQT, 8);
    let iqe = unit.mmio_read(off::FSTS, 4) & (1 << 4) != 0;
    assert!(head == tail || iqe || unit.mmio_read(off::GSTS, 4) & (1 << 26) == 0);
    // One queue's worth at most.
    assert!(unit.descriptors_processed() <= 256 << 7);
});
