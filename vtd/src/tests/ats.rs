//! Device-TLBs: translation requests, translated requests, their fault
//! records (AT field included) and device-TLB invalidations delivered to
//! the VMM.

use std::sync::{Arc, Mutex};

use nesting_core::types::{Access, Bdf, Pasid};

use super::Harness;
use crate::ats::{AtsCompletion, AtsTranslation, DeviceTlbInvalidation, TranslationRequest};
use crate::fault::{AddressType, FaultReason, FaultRecord};
use crate::mock::{
    FsTables, LegacyTables, PasidSetup, Queue, ScalableTables, SlTables, desc, flpte,
    probe_like_linux,
};
use crate::regs::{ectl, fsts, off};
use crate::{AtsResponse, TranslateResult};

const SID: u16 = 0x0108;
const DID: u16 = 7;

fn tr(addr: u64) -> TranslationRequest {
    TranslationRequest {
        sid: Bdf(SID),
        pasid: None,
        addr,
        no_write: false,
        exec: false,
        privileged: false,
    }
}

fn success(r: AtsResponse) -> AtsTranslation {
    match r.completion {
        AtsCompletion::Success(t) => t,
        c => panic!("expected success, got {c:?} ({:?})", r.fault),
    }
}

/// Fault recording register `index` (at CAP.FRO), as two quadwords.
fn record(h: &Harness, index: u64) -> [u64; 2] {
    let fro = h.vtd.config().fro;
    [h.read64(fro + 16 * index), h.read64(fro + 16 * index + 8)]
}

struct Legacy {
    h: Harness,
    tables: LegacyTables,
    sl: SlTables,
}

/// A legacy unit with translation on and `SID`'s context
/// of translation type `tt`, 4-level tables.
fn legacy(tt: u64, fpd: bool) -> Legacy {
    let mut h = Harness::new(&["mode=legacy"]);
    let tables = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    tables.set_context(&h.mem, &mut h.alloc, SID, DID, tt, 2, sl.root, fpd);
    probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, tables.root);
    Legacy { h, tables, sl }
}

#[test]
fn legacy_tt01_translation_request_returns_page_and_permissions() {
    let mut l = legacy(1, false);
    l.sl.map(&l.h.mem, &mut l.h.alloc, 0x1_0000, 0x7_7000, 12, true, true);
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x2_0000,
        0x8_8000,
        12,
        true,
        false,
    );
    let r = l.h.vtd.translation_request(&l.h.mem, &tr(0x1_0abc));
    assert_eq!(r.fault, None);
    let t = success(r);
    assert_eq!(
        (t.translated, t.size, t.read, t.write),
        (0x7_7000, 4096, true, true)
    );
    assert!(!t.exec && !t.privileged && !t.untranslated_only && !t.no_snoop);
    assert_eq!(t.encode(), 0x7_7000 | 0b11);
    // Read-only page: W=0.
    let t = success(l.h.vtd.translation_request(&l.h.mem, &tr(0x2_0000)));
    assert!(t.read && !t.write);
    // NW=1: no write permission asked, none granted.
    let nw = TranslationRequest {
        no_write: true,
        ..tr(0x1_0000)
    };
    let t = success(l.h.vtd.translation_request(&l.h.mem, &nw));
    assert!(t.read && !t.write);
    assert_eq!(l.h.read32(off::FSTS), 0);
}

#[test]
fn legacy_superpage_completion_encodes_size_with_s_bit() {
    let mut l = legacy(1, false);
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x4020_0000,
        0x60_0000,
        21,
        true,
        true,
    );
    let t = success(l.h.vtd.translation_request(&l.h.mem, &tr(0x4021_2345)));
    assert_eq!((t.translated, t.size), (0x60_0000, 2 << 20));
    assert_eq!(t.translate(0x4021_2345), 0x61_2345);
    // Bits 19:12 ones, bit 20 clear: 2 MiB; S = bit 11.
    let raw = t.encode();
    assert_eq!(raw, 0x60_0000 | 0xf_f000 | 0x800 | 0b11);
    assert_eq!(AtsTranslation::decode(raw), t);
}

#[test]
fn legacy_not_present_translation_request_is_r_w_0_without_fault() {
    let mut l = legacy(1, false);
    let t = success(l.h.vtd.translation_request(&l.h.mem, &tr(0x5000)));
    assert!(!t.read && !t.write);
    // Beyond the 48-bit AGAW: no translation either.
    let t = success(l.h.vtd.translation_request(&l.h.mem, &tr(1 << 50)));
    assert!(!t.read && !t.write);
    assert_eq!(l.h.read32(off::FSTS), 0, "nothing recorded");
    assert_eq!(l.h.irq_count(), 0);
}

#[test]
fn legacy_tt00_and_tt10_block_translation_requests_with_fault_0xd() {
    for tt in [0, 2] {
        let mut l = legacy(tt, false);
        let req = TranslationRequest {
            no_write: true,
            ..tr(0x1_2345)
        };
        let r = l.h.vtd.translation_request(&l.h.mem, &req);
        assert_eq!(r.completion, AtsCompletion::UnsupportedRequest, "tt {tt}");
        assert_eq!(r.fault, Some(FaultReason::TranslationTypeBlocked));
        assert!(r.recorded);
        // FRCD: FI = page, F | T1 (read: NW=1) | AT=01 | FR=0xD | SID.
        let hi = (1u64 << 63) | (1 << 62) | (1 << 60) | (0xd << 32) | u64::from(SID);
        assert_eq!(record(&l.h, 0), [0x1_2000, hi], "tt {tt}");
        assert_eq!(
            AddressType::of_record(record(&l.h, 0)),
            AddressType::TranslationRequest
        );
        assert!(fsts::PPF.is_set(l.h.read32(off::FSTS)));
        // The fault event is pending (FECTL.IM is set from reset).
        assert!(ectl::IP.is_set(l.h.read32(off::FECTL)), "fault event");
    }
}

#[test]
fn legacy_fpd_suppresses_the_0xd_record_but_not_the_completion() {
    let mut l = legacy(0, true);
    let r = l.h.vtd.translation_request(&l.h.mem, &tr(0x1000));
    assert_eq!(r.completion, AtsCompletion::UnsupportedRequest);
    assert!(!r.recorded);
    assert_eq!(l.h.read32(off::FSTS), 0);
}

#[test]
fn legacy_context_not_present_is_ur_and_reserved_bits_are_ca() {
    let mut l = legacy(1, false);
    let other = 0x0110;
    let r = l.h.vtd.translation_request(
        &l.h.mem,
        &TranslationRequest {
            sid: Bdf(other),
            ..tr(0x1000)
        },
    );
    assert_eq!(r.completion, AtsCompletion::UnsupportedRequest);
    assert_eq!(r.fault, Some(FaultReason::ContextNotPresent));
    let hi = (1u64 << 63) | (1 << 60) | (0x2 << 32) | u64::from(other);
    assert_eq!(record(&l.h, 0), [0x1000, hi]);
    // Reserved bit 4 of the context entry: Completer Abort, 0xB.
    let ct = l.tables.context_table(&l.h.mem, &mut l.h.alloc, 1);
    let slot = ct + 16 * u64::from(SID & 0xff);
    let lo =
        nesting_core::mem::GuestMemoryExt::read_u64_le(&l.h.mem, nesting_core::types::Gpa(slot))
            .unwrap();
    nesting_core::mem::GuestMemoryExt::write_u64_le(
        &l.h.mem,
        nesting_core::types::Gpa(slot),
        lo | 1 << 4,
    )
    .unwrap();
    let r = l.h.vtd.translation_request(&l.h.mem, &tr(0x3000));
    assert_eq!(r.completion, AtsCompletion::CompleterAbort);
    assert_eq!(r.fault, Some(FaultReason::ContextReserved));
    let hi = (1u64 << 63) | (1 << 60) | (0xb << 32) | u64::from(SID);
    assert_eq!(record(&l.h, 1), [0x3000, hi]);
}

#[test]
fn translation_request_to_interrupt_range_is_write_only_untranslated() {
    let mut l = legacy(1, false);
    let t = success(l.h.vtd.translation_request(&l.h.mem, &tr(0xfee0_0040)));
    assert_eq!(
        (t.translated, t.read, t.write, t.untranslated_only),
        (0xfee0_0000, false, true, true)
    );
}

#[test]
fn translation_disabled_answers_untranslated_only() {
    let mut h = Harness::new(&["mode=legacy"]);
    let t = success(h.vtd.translation_request(&h.mem, &tr(0x1234_5000)));
    assert!(t.untranslated_only && t.read && t.write);
    assert_eq!(t.translated, 0x1234_5000);
}

#[test]
fn translated_request_passes_with_tt01_and_faults_0xd_otherwise() {
    let mut l = legacy(1, false);
    match l
        .h
        .vtd
        .translate_translated(&l.h.mem, Bdf(SID), 0x9_9123, Access::WRITE)
    {
        TranslateResult::Mapped(t) => {
            assert_eq!(t.gpa_of(nesting_core::types::Iova(0x9_9123)).0, 0x9_9123)
        }
        f => panic!("{f:?}"),
    }
    let mut l = legacy(0, false);
    let r =
        l.h.vtd
            .translate_translated(&l.h.mem, Bdf(SID), 0x9_9123, Access::WRITE);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::TranslationTypeBlocked,
            recorded: true
        }
    );
    // Write (T1=0), AT=10.
    let hi = (1u64 << 63) | (2 << 60) | (0xd << 32) | u64::from(SID);
    assert_eq!(record(&l.h, 0), [0x9_9000, hi]);
    let rec = FaultRecord::decode(record(&l.h, 0));
    assert!(rec.write && rec.pasid.is_none());
}

#[test]
fn legacy_tt01_without_device_tlb_support_is_an_invalid_context() {
    // Without queued invalidation the unit reports no ECAP.DT.
    let mut h = Harness::new(&["mode=legacy", "qi=0"]);
    let tables = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    tables.set_context(&h.mem, &mut h.alloc, SID, DID, 1, 2, sl.root, false);
    h.write64(off::RTADDR, tables.root);
    h.write32(off::GCMD, 1 << 30);
    h.write32(off::GCMD, 1 << 31);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Err(0x3));
    let r = h.vtd.translation_request(&h.mem, &tr(0x1000));
    assert_eq!(r.completion, AtsCompletion::CompleterAbort);
}

struct Sm {
    h: Harness,
    t: ScalableTables,
    dir: u64,
    q: Queue,
}

fn scalable(dte: bool) -> Sm {
    let mut h = Harness::new(&[]);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = t.set_context(&h.mem, &mut h.alloc, SID, 1, 0);
    t.set_dte(&h.mem, SID, dte);
    let q = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root).queue;
    Sm { h, t, dir, q }
}

impl Sm {
    fn set_pasid(&mut self, pasid: u32, e: &PasidSetup) {
        self.t
            .set_pasid(&self.h.mem, &mut self.h.alloc, self.dir, pasid, e);
        let flush = [desc::pasid_cache(1, DID, pasid)];
        assert!(self.q.submit(&mut self.h.vtd, &self.h.mem, &flush));
    }

    fn first_stage(&mut self, pasid: u32, sre: bool) -> FsTables {
        let fs = FsTables::new(&self.h.mem, &mut self.h.alloc, 4);
        self.set_pasid(pasid, &PasidSetup::first_stage(DID, fs.root, 4, sre, false));
        // ERE, as a driver enabling execute requests would.
        let e = PasidSetup::first_stage(DID, fs.root, 4, sre, false);
        let mut e2 = e;
        e2.q[2] |= 1 << 1;
        self.set_pasid(pasid, &e2);
        fs
    }
}

fn pasid_tr(pasid: u32, addr: u64) -> TranslationRequest {
    TranslationRequest {
        pasid: Pasid::new(pasid),
        ..tr(addr)
    }
}

#[test]
fn scalable_dte_clear_blocks_translation_and_translated_requests_with_0x44() {
    let mut s = scalable(false);
    s.set_pasid(0, &PasidSetup::pass_through(DID));
    let r = s.h.vtd.translation_request(&s.h.mem, &tr(0x4000));
    assert_eq!(r.completion, AtsCompletion::UnsupportedRequest);
    assert_eq!(r.fault, Some(FaultReason::SmDteClear));
    let hi = (1u64 << 63) | (1 << 60) | (0x44 << 32) | u64::from(SID);
    assert_eq!(record(&s.h, 0), [0x4000, hi]);
    let r =
        s.h.vtd
            .translate_translated(&s.h.mem, Bdf(SID), 0x5000, Access::READ);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::SmDteClear,
            recorded: true
        }
    );
    let hi = (1u64 << 63) | (1 << 62) | (2 << 60) | (0x44 << 32) | u64::from(SID);
    assert_eq!(record(&s.h, 1), [0x5000, hi]);
    // Untranslated requests are unaffected.
    assert_eq!(s.h.gpa(SID, None, 0x6000, Access::READ), Ok(0x6000));
}

#[test]
fn scalable_dte_pass_through_translates_identity_and_passes_translated() {
    let mut s = scalable(true);
    s.set_pasid(0, &PasidSetup::pass_through(DID));
    let t = success(s.h.vtd.translation_request(&s.h.mem, &tr(0x12_3456)));
    assert_eq!(
        (t.translated, t.read, t.write, t.untranslated_only),
        (0x12_3000, true, true, false)
    );
    assert!(matches!(
        s.h.vtd
            .translate_translated(&s.h.mem, Bdf(SID), 0x12_3456, Access::WRITE),
        TranslateResult::Mapped(_)
    ));
}

#[test]
fn scalable_first_stage_completion_sets_dirty_and_reports_exe_priv() {
    let mut s = scalable(true);
    let fs = s.first_stage(3, false);
    let user_rw = flpte::RW | flpte::US;
    fs.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x7000_0000,
        0x44_4000,
        12,
        user_rw,
    );
    fs.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x7000_1000,
        0x55_5000,
        12,
        user_rw | flpte::XD,
    );
    // Read-only request: A set, D not, W not granted.
    let ro = TranslationRequest {
        no_write: true,
        exec: true,
        ..pasid_tr(3, 0x7000_0000)
    };
    let t = success(s.h.vtd.translation_request(&s.h.mem, &ro));
    assert!(t.read && !t.write && t.exec && !t.privileged);
    let leaf = *fs.entries(&s.h.mem, 0x7000_0000).last().unwrap();
    assert_eq!(leaf & (flpte::A | flpte::D), flpte::A);
    // Write allowed: D set before W granted.
    let t = success(
        s.h.vtd
            .translation_request(&s.h.mem, &pasid_tr(3, 0x7000_0000)),
    );
    assert!(t.write);
    let leaf = *fs.entries(&s.h.mem, 0x7000_0000).last().unwrap();
    assert_eq!(leaf & flpte::D, flpte::D);
    // XD: translation without execute, no fault.
    let x = TranslationRequest {
        exec: true,
        ..pasid_tr(3, 0x7000_1000)
    };
    let t = success(s.h.vtd.translation_request(&s.h.mem, &x));
    assert!(t.read && !t.exec);
    // Privileged request with SRE clear: UR, 0x5D, PASID in the record.
    let p = TranslationRequest {
        privileged: true,
        ..pasid_tr(3, 0x7000_0000)
    };
    let r = s.h.vtd.translation_request(&s.h.mem, &p);
    assert_eq!(r.completion, AtsCompletion::UnsupportedRequest);
    assert_eq!(r.fault, Some(FaultReason::PasidSreClear));
    let hi = (1u64 << 63)
        | (1 << 60)
        | (3 << 40)
        | (1 << 31)
        | (1 << 29)
        | (0x5d << 32)
        | u64::from(SID);
    assert_eq!(record(&s.h, 0), [0x7000_0000, hi]);
    assert_eq!(s.h.read32(off::FSTS) & 0xff, 0b10);
}

#[test]
fn scalable_privileged_request_with_sre_reports_priv() {
    let mut s = scalable(true);
    let fs = s.first_stage(4, true);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x1000, 0x66_6000, 12, flpte::RW);
    let p = TranslationRequest {
        privileged: true,
        ..pasid_tr(4, 0x1000)
    };
    let t = success(s.h.vtd.translation_request(&s.h.mem, &p));
    assert!(t.privileged && t.read && t.write);
    assert_eq!(t.encode() & 0x1f, 0b1_0011);
    // A user request to the supervisor page: no translation, no fault.
    let t = success(s.h.vtd.translation_request(&s.h.mem, &pasid_tr(4, 0x1000)));
    assert!(!t.read && !t.write);
    assert_eq!(s.h.read32(off::FSTS), 0);
}

#[test]
fn scalable_privileged_request_without_srs_gets_r_w_e_0_priv_1() {
    let mut h = Harness::new(&["flts=0", "slts=1"]);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = t.set_context(&h.mem, &mut h.alloc, SID, 1, 0);
    t.set_dte(&h.mem, SID, true);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    t.set_pasid(
        &h.mem,
        &mut h.alloc,
        dir,
        2,
        &PasidSetup::second_stage(DID, sl.root, 2),
    );
    probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    let p = TranslationRequest {
        privileged: true,
        ..pasid_tr(2, 0x1000)
    };
    let c = success(h.vtd.translation_request(&h.mem, &p));
    assert!(!c.read && !c.write && !c.exec && c.privileged);
}

#[test]
fn scalable_missing_pasid_entry_is_ur_with_0x59() {
    let mut s = scalable(true);
    // PASID 8's table holds PASIDs 0..63; 9's entry stays not present.
    s.set_pasid(8, &PasidSetup::pass_through(DID));
    let r = s.h.vtd.translation_request(&s.h.mem, &pasid_tr(9, 0x2000));
    assert_eq!(r.completion, AtsCompletion::UnsupportedRequest);
    assert_eq!(r.fault, Some(FaultReason::PasidEntryNotPresent));
    assert!(r.recorded);
    // With PASID, an input in the interrupt range is translated like any
    // other (here: PASID 9 has no entry); a pass-through output there is
    // blocked with 0x87.
    let r =
        s.h.vtd
            .translation_request(&s.h.mem, &pasid_tr(9, 0xfee0_0000));
    assert_eq!(r.fault, Some(FaultReason::PasidEntryNotPresent));
    let r =
        s.h.vtd
            .translation_request(&s.h.mem, &pasid_tr(8, 0xfee0_0000));
    assert_eq!(r.fault, Some(FaultReason::SmInterruptAddress));
}

#[test]
fn device_tlb_invalidations_reach_the_vmm_decoded() {
    let mut s = scalable(true);
    let seen: Arc<Mutex<Vec<DeviceTlbInvalidation>>> = Arc::default();
    let sink = seen.clone();
    s.h.vtd
        .set_device_tlb_callback(move |i| sink.lock().unwrap().push(*i));
    // Linux: qi_flush_dev_iotlb(sid, pfsid, qdep, addr, mask=4) covers 16
    // pages; the PASID form with size_order 2 covers 4 pages; G = all.
    let pfsid = 0x0abc;
    let descs = [
        desc::dev_tlb_linux(SID, pfsid, 8, 0x40_0000, 4),
        desc::dev_tlb_linux(SID, pfsid, 32, 0x9000, 0),
        desc::pasid_dev_tlb_linux(SID, pfsid, 0x1234, 5, 0x80_4000, 2),
        desc::pasid_dev_tlb(SID, 7, 0, true),
    ];
    assert!(s.q.submit(&mut s.h.vtd, &s.h.mem, &descs));
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0],
        DeviceTlbInvalidation {
            sid: SID,
            pfsid,
            pasid: None,
            addr: 0x40_7000,
            size_bit: true,
            global: false,
            mip: 8,
            first: 0x40_0000,
            len: 16 << 12,
        }
    );
    assert_eq!(
        (got[1].first, got[1].len, got[1].mip, got[1].size_bit),
        (0x9000, 4096, 0, false)
    );
    assert_eq!(
        (
            got[2].pasid,
            got[2].first,
            got[2].len,
            got[2].pfsid,
            got[2].mip
        ),
        (Some(0x1234), 0x80_4000, 4 << 12, pfsid, 5)
    );
    assert!(got[2].covers(Some(0x1234), 0x80_7fff) && !got[2].covers(Some(0x1234), 0x80_8000));
    assert!(!got[2].covers(None, 0x80_4000));
    assert!(got[3].global && got[3].covers(Some(7), u64::MAX));
    // The nesting layer still sees them as events.
    let evs = s.h.vtd.take_events();
    let n = evs
        .iter()
        .filter(|e| matches!(e, crate::nesting::VtdEvent::DeviceTlb { .. }))
        .count();
    assert_eq!(n, 4);
}

#[test]
fn completion_entry_decode_is_total_and_round_trips() {
    for raw in [
        0u64,
        u64::MAX,
        0x800,
        0xffff_ffff_ffff_f800,
        0x1234_5678_9abc_d41f,
    ] {
        let t = AtsTranslation::decode(raw);
        assert!(t.size >= 4096);
        assert_eq!(t.translated & (t.size.wrapping_sub(1) & !0xfff), 0);
        if t.size != u64::MAX {
            assert_eq!(AtsTranslation::decode(t.encode()), t);
        }
    }
}

#[test]
fn legacy_output_in_interrupt_range_faults_0xe_for_untranslated_and_translation_requests() {
    let mut l = legacy(1, false);
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x3000,
        0xfee0_0000,
        12,
        true,
        true,
    );
    assert_eq!(l.h.gpa(SID, None, 0x3000, Access::WRITE), Err(0xe));
    let r = l.h.vtd.translation_request(&l.h.mem, &tr(0x3000));
    assert_eq!(r.completion, AtsCompletion::UnsupportedRequest);
    assert_eq!(r.fault, Some(FaultReason::InterruptAddress));
    // Record 0: the untranslated write (AT=00, T1=0); record 1: AT=01.
    let hi0 = (1u64 << 63) | (0xe << 32) | u64::from(SID);
    assert_eq!(record(&l.h, 0), [0x3000, hi0]);
    let hi1 = (1u64 << 63) | (1 << 60) | (0xe << 32) | u64::from(SID);
    assert_eq!(record(&l.h, 1), [0x3000, hi1]);
    // A 2 MiB page that covers part of the range is blocked as a whole.
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x4000_0000,
        0xfee0_0000 & !0x1f_ffff,
        21,
        true,
        true,
    );
    assert_eq!(l.h.gpa(SID, None, 0x4000_0000, Access::READ), Err(0xe));
}

#[test]
fn scalable_output_in_interrupt_range_faults_0x87() {
    let mut s = scalable(true);
    let fs = s.first_stage(1, false);
    fs.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x8000,
        0xfee0_1000,
        12,
        flpte::RW | flpte::US,
    );
    assert_eq!(s.h.gpa(SID, Some(1), 0x8000, Access::READ), Err(0x87));
}

#[test]
fn translated_request_to_interrupt_range_is_unsupported_without_record() {
    let mut l = legacy(1, false);
    let r =
        l.h.vtd
            .translate_translated(&l.h.mem, Bdf(SID), 0xfee0_0000, Access::WRITE);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::InterruptAddress,
            recorded: false
        }
    );
    assert_eq!(l.h.read32(off::FSTS), 0);
}

#[test]
fn shared_unit_answers_translation_and_translated_requests() {
    let mut l = legacy(1, false);
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x1_0000,
        0x7_7000,
        12,
        true,
        false,
    );
    let shared = crate::SharedVtd::new(l.h.vtd, l.h.mem.clone());
    let t = success(shared.translation_request(&tr(0x1_0000)));
    assert_eq!((t.translated, t.read, t.write), (0x7_7000, true, false));
    assert!(matches!(
        shared.translate_translated(Bdf(SID), 0x7_7000, Access::READ),
        TranslateResult::Mapped(_)
    ));
}
