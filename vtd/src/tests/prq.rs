//! Page request queue (VT-d "Recoverable Fault Reporting", 11.4, page request registers).

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;

use super::Harness;
use crate::mock::{ScalableTables, probe_like_linux};
use crate::prq::{PageRequest, PageRequestOutcome, response};
use crate::regs::{ectl, off};

const SID: u16 = 0x0010;

/// A scalable unit with PRS; the context entry of `SID` has PRE set when
/// `pre`; the page request queue (4 KiB, 128 descriptors) is at the
/// returned address, set up as Linux's `intel_iommu_enable_prq` does.
fn unit(pre: bool) -> (Harness, u64) {
    let mut h = Harness::new(&["prs=1"]);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    t.set_context(&h.mem, &mut h.alloc, SID, 0, 0);
    if pre {
        let root = h.mem.read_u64_le(Gpa(t.root)).unwrap();
        let ce = (root & !0xfff) + 32 * 0x10;
        let q0 = h.mem.read_u64_le(Gpa(ce)).unwrap();
        h.mem.write_u64_le(Gpa(ce), q0 | (1 << 4)).unwrap();
    }
    probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    let q = h.alloc.page(&h.mem);
    h.write64(off::PQH, 0);
    h.write64(off::PQT, 0);
    h.write64(off::PQA, q);
    (h, q)
}

fn req(index: u16, last: bool) -> PageRequest {
    PageRequest {
        sid: SID,
        pasid: Some(5),
        addr: 0x7000,
        read: true,
        write: true,
        exec: false,
        privileged: false,
        last,
        index,
    }
}

#[test]
fn page_request_is_queued_with_linux_descriptor_layout() {
    let (mut h, q) = unit(true);
    h.write32(off::PEDATA, 0x61);
    h.write32(off::PEADDR, 0xfee0_2000);
    h.write32(off::PECTL, 0);
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(3, true)),
        PageRequestOutcome::Queued
    );
    // qw0: type 1, PASID present (bit 8), RID 31:16, PASID 51:32.
    assert_eq!(
        h.mem.read_u64_le(Gpa(q)).unwrap(),
        1 | (1 << 8) | (0x10 << 16) | (5 << 32)
    );
    // qw1: RD, WR, LPIG, PRG index 3, address.
    assert_eq!(
        h.mem.read_u64_le(Gpa(q + 8)).unwrap(),
        0b111 | (3 << 3) | 0x7000
    );
    assert_eq!(h.read64(off::PQT), 32);
    assert_eq!(h.read32(off::PRS), 1);
    assert_eq!(h.irq_count(), 1);
    assert_eq!(h.irqs.lock().unwrap()[0].data, 0x61);
    // PPR still set: no second interrupt.
    h.vtd.page_request(&h.mem, &req(4, true));
    assert_eq!(h.irq_count(), 1);
}

#[test]
fn full_queue_sets_pro_and_autoresponds_to_last_in_group() {
    let (mut h, _q) = unit(true);
    for i in 0..127 {
        assert_eq!(
            h.vtd.page_request(&h.mem, &req(i, false)),
            PageRequestOutcome::Queued
        );
    }
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(200, true)),
        PageRequestOutcome::Responded {
            response: Some(response::SUCCESS)
        }
    );
    assert_eq!(h.read32(off::PRS), 0b11);
    // Linux's prq thread: consume, move PQH, clear PRO.
    h.write64(off::PQH, h.read64(off::PQT));
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(201, false)),
        PageRequestOutcome::Responded { response: None },
        "PRO still set"
    );
    h.write32(off::PRS, 0b11);
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(202, false)),
        PageRequestOutcome::Queued
    );
}

/// The one pending fault record: (low, high) quadwords.
fn only_record(h: &Harness) -> (u64, u64) {
    let fro = 0x220;
    assert_ne!(h.read32(off::FSTS) & 2, 0, "PPF: a fault is pending");
    (h.read64(fro), h.read64(fro + 8))
}

/// VT-d "Handling of Page Requests": PRE clear in the scalable-mode
/// context entry answers "invalid request" and records fault 0x47 as a
/// page request (FRCD T2=1, T1=0), with the PASID.
#[test]
fn page_request_without_pre_is_answered_invalid_and_records_0x47() {
    let (mut h, _q) = unit(false);
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(1, true)),
        PageRequestOutcome::Responded {
            response: Some(response::INVALID)
        }
    );
    assert_eq!(h.read64(off::PQT), 0);
    let (lo, hi) = only_record(&h);
    assert_eq!(lo, 0x7000, "FI: the page address");
    assert_eq!(hi & 0xffff, u64::from(SID));
    assert_eq!((hi >> 32) & 0xff, 0x47, "FR");
    assert_eq!((hi >> 28) & 1, 1, "T2: page request");
    assert_eq!((hi >> 62) & 1, 0, "T1");
    assert_eq!(((hi >> 31) & 1, (hi >> 40) & 0xf_ffff), (1, 5), "PP, PV");
    assert_eq!(hi >> 63, 1, "F");
    let rec = crate::fault::FaultRecord::decode([lo, hi]);
    assert!(rec.page_request);
    assert_eq!(rec.reason, crate::fault::FaultReason::SmPreClear);
    let mut h = Harness::new(&[]);
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(1, true)),
        PageRequestOutcome::Responded {
            response: Some(response::INVALID)
        }
    );
}

#[test]
fn masked_page_request_event_pends_until_ppr_cleared_or_unmasked() {
    let (mut h, _q) = unit(true);
    h.vtd.page_request(&h.mem, &req(1, true));
    assert!(ectl::IP.is_set(h.read32(off::PECTL)));
    h.write32(off::PRS, 1);
    assert!(!ectl::IP.is_set(h.read32(off::PECTL)));
    h.vtd.page_request(&h.mem, &req(2, true));
    h.write32(off::PECTL, 0);
    assert_eq!(h.irq_count(), 1);
}

/// A page request while the root table is in legacy mode records 0x32.
#[test]
fn page_request_with_legacy_root_table_records_0x32() {
    // A scalable-capable unit (PRS needs one) whose driver chose legacy
    // tables: RTADDR.TTM=00b latched by SRTP with translation on.
    let (mut h, _q) = unit(true);
    let t = crate::mock::LegacyTables::new(&h.mem, &mut h.alloc);
    h.write64(off::RTADDR, t.root);
    let (te, srtp, qie) = (1u64 << 31, 1u64 << 30, 1u64 << 26);
    h.write32(off::GCMD, te | qie | srtp);
    h.write32(off::GCMD, te | qie);
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(1, true)),
        PageRequestOutcome::Responded {
            response: Some(response::INVALID)
        }
    );
    let (_, hi) = only_record(&h);
    assert_eq!((hi >> 32) & 0xff, 0x32);
    assert_eq!((hi >> 28) & 1, 1, "T2: page request");
}

/// FPD in the context entry suppresses the 0x47 record, not the answer.
#[test]
fn page_request_without_pre_under_fpd_is_answered_not_recorded() {
    let (mut h, _q) = unit(false);
    let root = h
        .mem
        .read_u64_le(Gpa(h.read64(off::RTADDR) & !0xfff))
        .unwrap();
    let ce = (root & !0xfff) + 32 * 0x10;
    let q0 = h.mem.read_u64_le(Gpa(ce)).unwrap();
    h.mem.write_u64_le(Gpa(ce), q0 | 0b10).unwrap();
    assert_eq!(
        h.vtd.page_request(&h.mem, &req(1, true)),
        PageRequestOutcome::Responded {
            response: Some(response::INVALID)
        }
    );
    assert_eq!(h.read32(off::FSTS) & 2, 0, "no fault pending");
}
