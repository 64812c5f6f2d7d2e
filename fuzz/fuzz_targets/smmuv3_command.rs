//! SMMUv3 commands (IHI 0070 chapter 4, 7.1): any 16 bytes decode to a
//! command or to CERROR_ILL without panicking, and a command queue of any
//! contents, size, base and indices drains in bounded work to an
//! architected state: CONS at PROD, or CONS at the bad command with
//! CMDQ_CONS.ERR set and GERROR.CMDQ_ERR active.
#![no_main]

#[path = "smmuv3_common.rs"]
mod smmuv3_common;

use libfuzzer_sys::fuzz_target;
use smmuv3::caps::Caps;
use smmuv3::cmdq::Command;
use smmuv3::regs::{gerror, off, queue_ptr};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let caps = Caps::new(&smmuv3_common::config(sel));
    for chunk in rest.chunks(16).take(64) {
        let raw = [smmuv3_common::u64_at(chunk, 0), smmuv3_common::u64_at(chunk, 8)];
        if let Ok(Command::CfgiSteRange { first, log2 }) = Command::decode(raw, &caps) {
            assert!((1..=32).contains(&log2));
            assert!(log2 == 32 || first % (1 << log2) == 0);
        }
    }
    smmuv3_common::with_model(sel, rest, |mem, smmu| {
        smmu.set_atc_callback(|inv| inv.sid & 1 == 0);
        // Queue base and size from the input (anywhere, any size), the
        // stream table at the start of RAM, then the enables.
        let base = smmuv3_common::u64_at(rest, 0) & !0x7fe0 | 0x4000_0000_0000_0000;
        smmu.mmio_write(mem, off::STRTAB_BASE, 8, smmuv3_common::u64_at(rest, 8));
        smmu.mmio_write(mem, off::STRTAB_BASE_CFG, 4, smmuv3_common::u64_at(rest, 16));
        smmu.mmio_write(mem, off::CMDQ_BASE, 8, base);
        smmu.mmio_write(mem, off::CMDQ_CONS, 4, smmuv3_common::u64_at(rest, 24));
        smmu.mmio_write(mem, off::EVTQ_BASE, 8, 0x8000 | 5);
        smmu.mmio_write(mem, off::CR0, 4, 0b1101);
        let log2 = (smmu.mmio_read(off::CMDQ_BASE, 8) & 0x1f).min(19);
        let ptr_mask = (2u64 << log2) - 1;
        for round in 0..4 {
            let before = smmu.mmio_read(off::CMDQ_CONS, 4);
            let prod = smmuv3_common::u64_at(rest, 32 + 4 * round);
            smmu.mmio_write(mem, off::CMDQ_PROD, 4, prod);
            // A PROD more than a queue ahead of CONS is a driver bug; the
            // drain stops after one queue's worth of commands.
            let overrun = prod.wrapping_sub(before) & ptr_mask > 1 << log2;
            let cons = smmu.mmio_read(off::CMDQ_CONS, 4);
            let prod = smmu.mmio_read(off::CMDQ_PROD, 4);
            let err = queue_ptr::QueuePtr(cons).err();
            let errored = smmu.mmio_read(off::GERROR, 4) ^ smmu.mmio_read(off::GERRORN, 4);
            if errored & gerror::CMDQ_ERR.mask() != 0 {
                assert!((1..=3).contains(&err), "CMDQ_ERR with ERR {err}");
                // Acknowledge: the queue retries at CONS.
                smmu.mmio_write(mem, off::GERRORN, 4, smmu.mmio_read(off::GERROR, 4));
            } else if !overrun {
                assert_eq!(cons & 0xfffff, prod & 0xfffff);
            }
        }
    });
});
