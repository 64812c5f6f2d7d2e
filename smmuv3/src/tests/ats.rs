//! ATS (IHI 0070 "Support for PCI Express, PASIDs, PRI and ATS"): translation requests, translated transactions
//! with CR0.ATSCHK, CMD_ATC_INV and CERROR_ATC_INV_SYNC.

use std::sync::{Arc, Mutex};

use nesting_core::types::Access;

use super::{ASID, Harness, S1Setup, SID};
use crate::event::EventId;
use crate::mock::{Driver, PageTable, cdtable_ste, cmd, pte, s1_cd, with_s2};
use crate::regs::{off, queue_ptr};
use crate::strtab::SteMode;
use crate::walk::Granule;
use crate::wire::write_qwords;
use crate::{AtcInvalidation, AtsRequest, AtsResponse, TranslateResult};

const R: Access = Access::READ;
const W: Access = Access::WRITE;

fn ats_setup() -> S1Setup {
    let mut s = S1Setup::new(&["ats=1"]);
    let ste = cdtable_ste(s.cd_table.0, 0, false, true);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    s
}

fn treq(addr: u64, access: Access) -> AtsRequest {
    AtsRequest {
        sid: SID,
        ssid: None,
        addr,
        access,
    }
}

#[test]
fn translation_request_returns_translation_and_sets_dirty_for_writes() {
    let mut s = ats_setup();
    s.map_attrs(0x1000, 0xa000, 3, pte::s1(true, false, true));
    let r = s.h.smmu.translation_request(&s.h.mem, &treq(0x1234, R));
    assert_eq!(
        r,
        AtsResponse::Translated {
            addr: 0xa000,
            input: 0x1000,
            shift: 12,
            granted: R | Access::EXEC
        }
    );
    let r = s.h.smmu.translation_request(&s.h.mem, &treq(0x1234, R | W));
    assert!(matches!(r, AtsResponse::Translated { granted, .. } if granted.contains(W)));
    assert_eq!(s.pt.get(&s.h.mem, 0x1000, 3) & pte::AP_RDONLY, 0);
}

#[test]
fn translation_request_fault_is_unrecorded_no_access_response() {
    let mut s = ats_setup();
    let r = s.h.smmu.translation_request(&s.h.mem, &treq(0x5000, R));
    assert!(matches!(r, AtsResponse::Translated { granted, .. } if granted.is_empty()));
    assert!(s.next_event().is_none());
}

#[test]
fn translation_request_without_eats_is_f_bad_ats_treq() {
    let mut s = S1Setup::new(&["ats=1"]);
    let r = s.h.smmu.translation_request(&s.h.mem, &treq(0x1000, R));
    assert_eq!(r, AtsResponse::UnsupportedRequest);
    let e = s.next_event().unwrap();
    assert_eq!((e.id(), e.input_addr()), (EventId::BadAtsTreq, 0x1000));
}

#[test]
fn translated_transaction_checked_against_eats_with_atschk() {
    let mut s = S1Setup::new(&["ats=1"]);
    assert!(matches!(
        s.h.smmu.translate_translated(&s.h.mem, SID, 0x8000, R),
        TranslateResult::Fault {
            event: Some(EventId::TranslForbidden),
            ..
        }
    ));
    let mut s = ats_setup();
    assert!(matches!(
        s.h.smmu.translate_translated(&s.h.mem, SID, 0x8000, R),
        TranslateResult::Mapped(t) if t.gpa.0 == 0x8000
    ));
    // Without ATSCHK translated transactions pass unchecked.
    let mut s = S1Setup::new(&["ats=1"]);
    let en = s.drv.enables & !0b1_0000;
    s.h.write32(off::CR0, en);
    assert!(matches!(
        s.h.smmu.translate_translated(&s.h.mem, SID, 0x8000, R),
        TranslateResult::Mapped(_)
    ));
}

#[test]
fn split_stage_ats_returns_ipa_and_translated_goes_through_stage2() {
    let mut h = Harness::new(&["stages=nested", "ats=1"]);
    let mut d = h.probe();
    let s2 = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    for i in 0..8u64 {
        let pa = super::POOL + (i << 21);
        s2.map(&h.mem, &mut h.alloc, pa, pa, 2, pte::s2(true, true));
    }
    s2.map(
        &h.mem,
        &mut h.alloc,
        0x8000_0000,
        0x60_0000,
        3,
        pte::s2(true, true),
    );
    let s1 = PageTable::stage1(&h.mem, &mut h.alloc, Granule::G4K, 48, 48);
    s1.map(
        &h.mem,
        &mut h.alloc,
        0x7000,
        0x8000_0000,
        3,
        pte::s1(true, false, false),
    );
    let (cdt, _) = Driver::cd_table(&h.mem, &mut h.alloc, 0, true);
    write_qwords(&h.mem, cdt, s1_cd(ASID, &s1, 5, false).0).unwrap();
    let ste = with_s2(cdtable_ste(cdt, 0, false, true), 4, &s2, 5)
        .with_config(SteMode::Nested)
        .with_eats(2);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 9, ste);
    let req = AtsRequest {
        sid: 9,
        ssid: None,
        addr: 0x7010,
        access: R,
    };
    let r = h.smmu.translation_request(&h.mem, &req);
    assert!(matches!(
        r,
        AtsResponse::Translated {
            addr: 0x8000_0000,
            ..
        }
    ));
    assert!(matches!(
        h.smmu.translate_translated(&h.mem, 9, 0x8000_0010, R),
        TranslateResult::Mapped(t) if t.gpa_of(nesting_core::types::Iova(0x8000_0010)).0 == 0x60_0010
    ));
}

#[test]
fn atc_inv_reaches_the_vmm_and_timeout_fails_next_sync() {
    let mut s = ats_setup();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    s.h.smmu.set_atc_callback(move |inv| {
        sink.lock().unwrap().push(*inv);
        inv.sid != 0x99
    });
    assert!(s.issue(&[cmd::atc_inv(SID, Some(3), 0x4000, 2)]));
    let inv: AtcInvalidation = seen.lock().unwrap()[0];
    assert_eq!(
        (inv.sid, inv.ssid, inv.range()),
        (SID, Some(3), (0x4000, 0x4000))
    );
    let sync_pos = s.drv.cmdq.ptr + 1;
    assert!(!s.issue(&[cmd::atc_inv(0x99, None, 0, 52)]));
    let c = s.h.read32(off::CMDQ_CONS);
    assert_eq!(c & 0xfffff, u64::from(sync_pos), "CONS at the CMD_SYNC");
    assert_eq!(queue_ptr::QueuePtr(c).err(), 3, "CERROR_ATC_INV_SYNC");
    // Linux acknowledges and lets the CMD_SYNC run again: it completes.
    s.h.write32(off::GERRORN, s.h.read32(off::GERROR));
    assert_eq!(
        s.h.read32(off::CMDQ_CONS) & 0xfffff,
        u64::from(sync_pos + 1)
    );
}

#[test]
fn ats_requests_with_smmu_disabled_are_unsupported() {
    let mut h = Harness::new(&["ats=1"]);
    let r = h.smmu.translation_request(&h.mem, &treq(0, R));
    assert_eq!(r, AtsResponse::UnsupportedRequest);
}
