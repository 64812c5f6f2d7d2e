//! SMMUv3 translation over arbitrary guest memory (IHI 0070 3.3, 5, 7;
//! the walks of 3.3.3): stream table, CDs and both stages' tables are
//! whatever the input holds. No panic, bounded work, and every
//! translation is self-consistent; ATS translation requests and page
//! requests get architected answers.
#![no_main]

#[path = "smmuv3_common.rs"]
mod smmuv3_common;

use libfuzzer_sys::fuzz_target;
use nesting_core::types::{Access, Iova};
use smmuv3::regs::off;
use smmuv3::{AtsRequest, AtsResponse, PageRequest, TranslateResult};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    smmuv3_common::with_model(sel, rest, |mem, smmu| {
        // Stream table anywhere (in RAM mostly), any format; event and
        // PRI queues in RAM; everything enabled.
        smmu.mmio_write(mem, off::STRTAB_BASE, 8, smmuv3_common::u64_at(rest, 0) & 0xffff_ffc0);
        smmu.mmio_write(mem, off::STRTAB_BASE_CFG, 4, smmuv3_common::u64_at(rest, 8));
        smmu.mmio_write(mem, off::EVTQ_BASE, 8, 0xe000 | 4);
        smmu.mmio_write(mem, off::PRIQ_BASE, 8, 0xf000 | 4);
        smmu.mmio_write(mem, off::CR0, 4, 0b11111);
        let reqs = rest.len().saturating_sub(256) / 16;
        for i in 0..reqs.min(24) {
            let at = rest.len() - 16 * (i + 1);
            let a = smmuv3_common::u64_at(rest, at);
            let iova = smmuv3_common::u64_at(rest, at + 8);
            let sid = (a & 0xfff) as u32;
            let ssid = ((a >> 12) & 1 == 1).then_some(((a >> 13) & 0xff) as u32);
            let access = Access::from_bits_truncate((a >> 40) as u8);
            match smmu.translate(mem, sid, ssid, Iova(iova), access) {
                TranslateResult::Mapped(t) => {
                    assert!(t.iova.raw() <= iova && iova - t.iova.raw() < t.size.bytes());
                    assert_eq!(t.gpa.raw() & t.size.mask(), 0);
                    // Read and write as asked. Instruction and privilege
                    // are the transaction's after STE.INSTCFG/PRIVCFG, and
                    // a write is always data (cd::override_attrs), so a
                    // translation for WRITE|EXEC may grant WRITE alone.
                    assert!(t.access.permits(access & (Access::READ | Access::WRITE)));
                }
                TranslateResult::Fault { .. } | TranslateResult::Stalled { .. } => {}
            }
            let r = AtsRequest { sid, ssid, addr: iova, access };
            if let AtsResponse::Translated { addr, input, shift, .. } =
                smmu.translation_request(mem, &r)
            {
                assert!((12..64).contains(&shift));
                assert_eq!(input & ((1 << shift) - 1), 0);
                assert_eq!(addr & ((1 << shift) - 1), 0);
            }
            let _ = smmu.translate_translated(mem, sid, iova, access);
            let pr = PageRequest {
                sid,
                ssid,
                addr: iova & !0xfff,
                read: a & (1 << 50) != 0,
                write: a & (1 << 51) != 0,
                exec: false,
                privileged: false,
                last: a & (1 << 52) != 0,
                prg_index: (a >> 53) as u16 & 0x1ff,
            };
            let _ = smmu.page_request(mem, &pr);
        }
    });
});
