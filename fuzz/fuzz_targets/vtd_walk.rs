//! VT-d translation over arbitrary guest memory (VT-d chapter 3, 9): root,
//! context, PASID and page tables are whatever the input holds. No panic,
//! bounded work (each walk reads at most a fixed number of entries), and
//! every translation is self-consistent.
#![no_main]

#[path = "vtd_common.rs"]
mod vtd_common;

use libfuzzer_sys::fuzz_target;
use nesting_core::types::{Access, Bdf, Iova, Pasid};
use vm_memory::GuestMemoryMmap;
use vtd::regs::off;
use vtd::{AtsCompletion, AtsResponse, TranslateResult, TranslationRequest, Vtd};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    vtd_common::with_unit(sel, rest, |mem, unit| walk(mem, unit, rest));
});

fn walk(mem: &GuestMemoryMmap, unit: &mut Vtd, rest: &[u8]) {
    // Root table somewhere in (or outside) RAM, either table mode.
    unit.mmio_write(mem, off::RTADDR, 8, vtd_common::u64_at(rest, 0));
    unit.mmio_write(mem, off::GCMD, 4, 1 << 30);
    unit.mmio_write(mem, off::GCMD, 4, 1 << 31);
    // Requests from the tail of the input.
    let reqs = rest.len().saturating_sub(16 * 16) / 16;
    for i in 0..reqs.min(16) {
        let at = rest.len() - 16 * (i + 1);
        let a = vtd_common::u64_at(rest, at);
        let iova = vtd_common::u64_at(rest, at + 8);
        let sid = Bdf(a as u16);
        let pasid = ((a >> 16) & 1 == 1).then(|| Pasid::new((a >> 20) as u32 & 0xfffff)).flatten();
        let access = Access::from_bits_truncate((a >> 40) as u8) | Access::READ;
        // The shadowing view of the same requester: bounded by its budget.
        if let vtd::shadow::TableView::Mappings { list, .. } =
            unit.table_view(mem, sid, pasid.map(|p| p.raw()), iova & 0xffff_ffff, u64::MAX, 512)
        {
            assert!(list.len() <= 512);
            assert!(list.windows(2).all(|w| w[0].iova < w[1].iova));
        }
        match unit.translate(mem, sid, pasid, Iova(iova), access) {
            TranslateResult::Mapped(t) => {
                assert!(t.iova.raw() <= iova && iova - t.iova.raw() < t.size.bytes());
                assert_eq!(t.gpa.raw() & t.size.mask(), 0);
                // Read and write as asked. Execute applies only where the
                // unit takes execute requests (with a PASID, ERE/SLEE), so
                // a request without PASID that says EXEC is translated as
                // the data access it is, and may get no EXEC back.
                assert!(t.access.permits(access & (Access::READ | Access::WRITE)));
            }
            TranslateResult::Fault { .. } => {}
        }
        // The same requester's translation request (ATS) and translated
        // request: an architected completion, bounded like the walk.
        let req = TranslationRequest {
            sid,
            pasid,
            addr: iova,
            no_write: (a >> 48) & 1 == 1,
            exec: (a >> 49) & 1 == 1,
            privileged: (a >> 50) & 1 == 1,
        };
        let AtsResponse { completion, fault, recorded } = unit.translation_request(mem, &req);
        match completion {
            AtsCompletion::Success(t) => {
                assert!(fault.is_none() && !recorded);
                assert!(t.size >= 4096 && t.size.is_power_of_two());
                assert_eq!(t.translated % t.size, 0);
                assert!(!t.write || !req.no_write);
                assert_eq!(vtd::AtsTranslation::decode(t.encode()), t);
            }
            AtsCompletion::UnsupportedRequest | AtsCompletion::CompleterAbort => {
                assert!(fault.is_some())
            }
        }
        if let TranslateResult::Mapped(t) = unit.translate_translated(mem, sid, iova, access) {
            assert_eq!(t.gpa.raw(), iova & !0xfff);
        }
    }
}
