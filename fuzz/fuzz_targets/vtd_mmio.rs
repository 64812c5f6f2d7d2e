//! VT-d register file (VT-d chapter 11): any sequence of register reads
//! and writes, with guest memory holding anything, never panics; GCMD
//! always reads as zero and read-only CAP/ECAP never change.
#![no_main]

#[path = "vtd_common.rs"]
mod vtd_common;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vtd::Vtd;
use vtd::regs::off;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    vtd_common::with_unit(sel, rest, |mem, unit| run(mem, unit, rest));
});

fn run(mem: &GuestMemoryMmap, unit: &mut Vtd, rest: &[u8]) {
    let cap = unit.mmio_read(off::CAP, 8);
    let ecap = unit.mmio_read(off::ECAP, 8);
    for op in rest.chunks_exact(12).take(256) {
        let head = vtd_common::u64_at(op, 0);
        let value = vtd_common::u64_at(op, 4);
        // Mostly the register page (and beyond, where far fault records
        // live); sometimes any offset at all.
        let offset = if head & (1 << 14) != 0 { value } else { head & 0x3fff };
        let size = if head & (1 << 12) != 0 { 8 } else { 4 };
        if head & (1 << 13) != 0 {
            let _ = unit.mmio_read(offset, size);
        } else {
            unit.mmio_write(mem, offset, size, value);
        }
        let _ = unit.take_events();
    }
    assert_eq!(unit.mmio_read(off::GCMD, 4), 0);
    assert_eq!(unit.mmio_read(off::CAP, 8), cap);
    assert_eq!(unit.mmio_read(off::ECAP, 8), ecap);
}
