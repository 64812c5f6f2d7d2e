//! SMMUv3 registers (IHI 0070 chapter 6): any sequence of register reads
//! and writes of any size, interleaved with transactions, over guest
//! memory holding anything, never panics; ID registers never change and
//! the acknowledge registers always mirror their controls.
#![no_main]

#[path = "smmuv3_common.rs"]
mod smmuv3_common;

use libfuzzer_sys::fuzz_target;
use nesting_core::types::{Access, Iova};
use smmuv3::regs::off;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    smmuv3_common::with_model(sel, rest, |mem, smmu| {
        let ids: Vec<u64> = (0..8).map(|i| smmu.mmio_read(4 * i, 4)).collect();
        for op in rest.chunks_exact(12).take(256) {
            let head = smmuv3_common::u64_at(op, 0);
            let value = smmuv3_common::u64_at(op, 4);
            // Mostly the two register pages' first 0x100 bytes, sometimes
            // anywhere.
            let offset = match head & 0x3 {
                0 => value,
                1 => off::PAGE1 + ((head >> 8) & 0xfc),
                _ => (head >> 8) & 0xfc,
            };
            let size = [1u32, 2, 4, 8][((head >> 2) & 3) as usize];
            match (head >> 4) & 3 {
                0 => {
                    let _ = smmu.mmio_read(offset, size);
                }
                1 => {
                    let access = Access::from_bits_truncate((head >> 16) as u8);
                    let ssid = ((head >> 24) & 1 == 1).then_some((value >> 32) as u32);
                    let _ = smmu.translate(mem, (head >> 32) as u32, ssid, Iova(value), access);
                }
                _ => smmu.mmio_write(mem, offset, size, value),
            }
            assert_eq!(smmu.mmio_read(off::CR0ACK, 4), smmu.mmio_read(off::CR0, 4));
            assert_eq!(smmu.mmio_read(off::IRQ_CTRLACK, 4), smmu.mmio_read(off::IRQ_CTRL, 4));
            assert_eq!(smmu.mmio_read(off::GBPA, 4) >> 31, 0, "GBPA.Update self-clears");
        }
        let after: Vec<u64> = (0..8).map(|i| smmu.mmio_read(4 * i, 4)).collect();
        assert_eq!(ids, after);
    });
});
