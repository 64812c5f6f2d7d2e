//! Legacy mode: root and context tables, second-stage walks, primary
//! fault logging.

use nesting_core::types::Access;

use super::Harness;
use crate::fault::{FaultReason, FaultRecord};
use crate::mock::{LegacyTables, SlTables};
use crate::regs::{ectl, fsts, gcmd, off};
use crate::{InterruptSource, TranslateResult};

const SID: u16 = 0x0108; // 01:01.0
const DID: u16 = 7;

struct Legacy {
    h: Harness,
    tables: LegacyTables,
    sl: SlTables,
}

/// A legacy unit with translation on, device `SID` in domain `DID` with
/// `levels`-level tables.
fn legacy(opts: &[&str], levels: u32) -> Legacy {
    let mut all = vec!["mode=legacy"];
    all.extend_from_slice(opts);
    let mut h = Harness::new(&all);
    let tables = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, levels);
    let aw = u64::from(levels - 2);
    tables.set_context(&h.mem, &mut h.alloc, SID, DID, 0, aw, sl.root, false);
    let probe = crate::mock::probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, tables.root);
    assert_eq!(probe.queue.free, 3, "cc + iotlb + wait");
    Legacy { h, tables, sl }
}

fn fault_code(r: TranslateResult) -> Option<u8> {
    match r {
        TranslateResult::Fault { reason, .. } => Some(reason.code()),
        TranslateResult::Mapped(_) => None,
    }
}

#[test]
fn linux_probe_sequence_legacy_enables_translation() {
    let l = legacy(&[], 4);
    let s = l.h.read32(off::GSTS);
    assert!(gcmd::TE.is_set(s) && gcmd::QIE.is_set(s) && gcmd::SRTP.is_set(s));
    assert_eq!(l.h.read32(off::FSTS), 0);
}

#[test]
fn second_stage_4k_walk_each_level_count_translates() {
    for (levels, aw) in [(3, "aw=39"), (4, "aw=48"), (5, "aw=57")] {
        let mut l = legacy(&[aw], levels);
        let iova = 0x40_1234_5000 & ((1u64 << (12 + 9 * levels)) - 1);
        l.sl.map(&l.h.mem, &mut l.h.alloc, iova, 0x7_7000, 12, true, true);
        assert_eq!(
            l.h.gpa(SID, None, iova + 0x123, Access::RW),
            Ok(0x7_7123),
            "{levels} levels"
        );
    }
}

#[test]
fn second_stage_superpages_translate_with_their_size() {
    let mut l = legacy(&[], 4);
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x4000_0000,
        0x8000_0000,
        30,
        true,
        false,
    );
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x20_0000,
        0x60_0000,
        21,
        true,
        true,
    );
    match l.h.translate(SID, None, 0x4123_4567, Access::READ) {
        TranslateResult::Mapped(t) => {
            assert_eq!(t.size.bytes(), 1 << 30);
            assert_eq!(t.gpa.0, 0x8000_0000);
            assert_eq!(t.access, Access::READ);
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(l.h.gpa(SID, None, 0x3f_ffff, Access::WRITE), Ok(0x7f_ffff));
    let req = crate::translate::Request {
        sid: SID,
        pasid: None,
        iova: 0x4000_0000,
        access: Access::READ,
    };
    assert!(matches!(
        l.h.vtd.walk(&l.h.mem, &req),
        crate::translate::Outcome::Mapped { origin, .. } if origin.did == DID && origin.pasid.is_none()
    ));
}

#[test]
fn superpage_not_advertised_is_reserved_fault() {
    let mut l = legacy(&["sps=0"], 4);
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x20_0000,
        0x60_0000,
        21,
        true,
        true,
    );
    assert_eq!(l.h.gpa(SID, None, 0x20_0000, Access::READ), Err(0xc));
}

#[test]
fn permission_faults_are_read_0x6_and_write_0x5() {
    let mut l = legacy(&[], 4);
    l.sl.map(&l.h.mem, &mut l.h.alloc, 0x1000, 0x2000, 12, true, false);
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::WRITE), Err(0x5));
    assert_eq!(
        l.h.gpa(SID, None, 0x9000, Access::READ),
        Err(0x6),
        "not mapped"
    );
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Ok(0x2000));
}

#[test]
fn address_beyond_agaw_faults_0x4() {
    let mut l = legacy(&[], 3);
    assert_eq!(l.h.gpa(SID, None, 1 << 39, Access::READ), Err(0x4));
}

#[test]
fn context_aw_not_in_sagaw_is_invalid_0x3() {
    let mut l = legacy(&["aw=39"], 3);
    // AW=2 (4-level) is not in SAGAW of a 39-bit unit.
    l.tables
        .set_context(&l.h.mem, &mut l.h.alloc, SID, DID, 0, 2, l.sl.root, false);
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Err(0x3));
}

#[test]
fn root_and_context_not_present_fault_0x1_and_0x2() {
    let mut l = legacy(&[], 4);
    assert_eq!(
        l.h.gpa(0x0200, None, 0, Access::READ),
        Err(0x1),
        "bus 2 has no root entry"
    );
    assert_eq!(
        l.h.gpa(0x0110, None, 0, Access::READ),
        Err(0x2),
        "devfn 0x10 has no context"
    );
}

#[test]
fn reserved_bits_in_root_context_and_pte_fault() {
    let mut l = legacy(&[], 4);
    l.sl.map(&l.h.mem, &mut l.h.alloc, 0x1000, 0x2000, 12, true, true);
    // PTE with SNP (bit 11) without ECAP.SC.
    l.sl.map(
        &l.h.mem,
        &mut l.h.alloc,
        0x3000,
        0x2800 & !0xfff | 0x800,
        12,
        true,
        true,
    );
    assert_eq!(l.h.gpa(SID, None, 0x3000, Access::READ), Err(0xc));
    let ct = l.tables.context_table(&l.h.mem, &mut l.h.alloc, 1);
    let ce = ct + 16 * 8;
    let hi = vm_memory::Bytes::read_obj::<u64>(&l.h.mem, vm_memory::GuestAddress(ce + 8)).unwrap();
    vm_memory::Bytes::write_obj(&l.h.mem, hi | (1 << 40), vm_memory::GuestAddress(ce + 8)).unwrap();
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Err(0xb));
    let root = l.tables.root + 16;
    vm_memory::Bytes::write_obj(&l.h.mem, 1u64, vm_memory::GuestAddress(root + 8)).unwrap();
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Err(0xa));
}

#[test]
fn pass_through_context_is_identity() {
    let mut l = legacy(&[], 4);
    l.tables
        .set_context(&l.h.mem, &mut l.h.alloc, SID, 1, 2, 2, 0, false);
    assert_eq!(l.h.gpa(SID, None, 0x1234_5678, Access::RW), Ok(0x1234_5678));
}

#[test]
fn reserved_translation_type_is_invalid_context() {
    let mut l = legacy(&[], 4);
    l.tables
        .set_context(&l.h.mem, &mut l.h.alloc, SID, 1, 3, 2, l.sl.root, false);
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Err(0x3));
}

#[test]
fn request_with_pasid_on_legacy_tables_faults_0x31() {
    let mut l = legacy(&[], 4);
    assert_eq!(l.h.gpa(SID, Some(1), 0x1000, Access::READ), Err(0x31));
}

#[test]
fn fault_record_matches_spec_bits() {
    let mut l = legacy(&[], 4);
    let r =
        l.h.translate(SID, None, 0xdead_b123, Access::WRITE | Access::PRIV);
    assert!(matches!(r, TranslateResult::Fault { recorded: true, .. }));
    let lo = l.h.read64(0x220);
    let hi = l.h.read64(0x228);
    // FI = page address; SID bits 79:64; FR 103:96 = 5; T1 (bit 126) = 0
    // for a write; PRIV bit 93; F bit 127.
    assert_eq!(lo, 0xdead_b000);
    assert_eq!(hi, (1 << 63) | (0x5 << 32) | (1 << 29) | u64::from(SID));
    let rec = FaultRecord::decode([lo, hi]);
    assert_eq!(rec.reason, FaultReason::Write);
    assert!(rec.write && rec.privileged && rec.pasid.is_none());
    let s = l.h.read32(off::FSTS);
    assert!(fsts::PPF.is_set(s));
    assert_eq!(fsts::FRI.get(s), 0);
}

#[test]
fn fault_event_interrupt_once_until_serviced() {
    let mut l = legacy(&[], 4);
    l.h.write32(off::FEDATA, 0x41);
    l.h.write32(off::FEADDR, 0xfee0_0000);
    l.h.write32(off::FECTL, 0);
    let _ = l.h.translate(SID, None, 0x1000, Access::READ);
    let _ = l.h.translate(SID, None, 0x2000, Access::READ);
    {
        let irqs = l.h.irqs.lock().unwrap();
        assert_eq!(irqs.len(), 1, "PPF already set: no second interrupt");
        assert_eq!(irqs[0].source, InterruptSource::Fault);
        assert_eq!((irqs[0].addr, irqs[0].data), (0xfee0_0000, 0x41));
    }
    // Linux's dmar_fault: clear each F, then PFO/PPF status.
    l.h.write32(0x22c, 1 << 31);
    l.h.write32(0x23c, 1 << 31);
    assert!(!fsts::PPF.is_set(l.h.read32(off::FSTS)));
    let _ = l.h.translate(SID, None, 0x3000, Access::READ);
    assert_eq!(l.h.irq_count(), 2);
    assert_eq!(
        fsts::FRI.get(l.h.read32(off::FSTS)),
        2,
        "circular index moves on"
    );
}

#[test]
fn masked_fault_event_sets_ip_and_unmask_delivers() {
    let mut l = legacy(&[], 4);
    let _ = l.h.translate(SID, None, 0x1000, Access::READ);
    assert_eq!(l.h.irq_count(), 0);
    assert!(ectl::IP.is_set(l.h.read32(off::FECTL)));
    l.h.write32(off::FECTL, 0);
    assert_eq!(l.h.irq_count(), 1);
    assert!(!ectl::IP.is_set(l.h.read32(off::FECTL)));
}

#[test]
fn ip_clears_when_status_serviced_while_masked() {
    let mut l = legacy(&[], 4);
    let _ = l.h.translate(SID, None, 0x1000, Access::READ);
    l.h.write32(0x22c, 1 << 31);
    assert!(!ectl::IP.is_set(l.h.read32(off::FECTL)));
    l.h.write32(off::FECTL, 0);
    assert_eq!(l.h.irq_count(), 0);
}

#[test]
fn full_log_sets_pfo_and_drops_until_cleared() {
    let mut l = legacy(&["nfr=2"], 4);
    for i in 0..3 {
        let _ = l.h.translate(SID, None, 0x1000 * (i + 1), Access::READ);
    }
    let s = l.h.read32(off::FSTS);
    assert!(fsts::PFO.is_set(s) && fsts::PPF.is_set(s));
    // With PFO set, further faults are not recorded.
    let r = l.h.translate(SID, None, 0x9000, Access::READ);
    assert!(matches!(
        r,
        TranslateResult::Fault {
            recorded: false,
            ..
        }
    ));
    assert_eq!(l.h.read64(0x220), 0x1000);
    assert_eq!(l.h.read64(0x230), 0x2000);
    l.h.write32(0x22c, 1 << 31);
    l.h.write32(off::FSTS, fsts::PFO.mask());
    let _ = l.h.translate(SID, None, 0xa000, Access::READ);
    assert_eq!(
        l.h.read64(0x220),
        0xa000,
        "record 0 reused after its F was cleared"
    );
}

#[test]
fn fpd_context_suppresses_recording() {
    let mut l = legacy(&[], 4);
    l.tables
        .set_context(&l.h.mem, &mut l.h.alloc, SID, DID, 0, 2, l.sl.root, true);
    let r = l.h.translate(SID, None, 0x1000, Access::READ);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::Read,
            recorded: false
        }
    );
    assert_eq!(l.h.read32(off::FSTS), 0);
    // Root-entry faults are detected before any FPD and are recorded.
    let r = l.h.translate(0x0500, None, 0x1000, Access::READ);
    assert!(matches!(r, TranslateResult::Fault { recorded: true, .. }));
}

#[test]
fn translation_disabled_is_identity() {
    let mut h = Harness::new(&["mode=legacy"]);
    assert_eq!(h.gpa(0x10, None, 0xabc_d123, Access::WRITE), Ok(0xabc_d123));
}

#[test]
fn fault_reason_codes_round_trip() {
    for code in 0..=255u8 {
        assert_eq!(FaultReason::from_code(code).code(), code);
    }
    assert_eq!(
        fault_code(TranslateResult::Fault {
            reason: FaultReason::SmRead,
            recorded: true
        }),
        Some(0x86)
    );
}

#[test]
fn host_reported_fault_is_recorded_like_a_walk_fault() {
    let mut l = legacy(&[], 4);
    l.h.write32(off::FECTL, 0);
    let rec = FaultRecord {
        source_id: 0x0230,
        pasid: Some(9),
        address: 0x7777_7000,
        write: true,
        page_request: false,
        exec: false,
        privileged: false,
        reason: FaultReason::SmWrite,
    };
    assert!(l.h.vtd.report_fault(&rec));
    assert_eq!(
        FaultRecord::decode([l.h.read64(0x220), l.h.read64(0x228)]),
        rec
    );
    assert_eq!(l.h.irq_count(), 1);
}

#[test]
fn reset_returns_registers_cache_and_fault_log_to_power_on() {
    let mut l = legacy(&[], 4);
    l.sl.map(&l.h.mem, &mut l.h.alloc, 0x1000, 0x7_7000, 12, true, true);
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Ok(0x7_7000));
    assert!(l.h.gpa(SID, None, 0x5000, Access::READ).is_err());
    assert_ne!(l.h.read32(off::FSTS), 0, "a fault is recorded");
    assert!(!l.h.vtd.iotlb().is_empty());
    let _ = l.h.vtd.take_events();

    l.h.vtd.reset(&l.h.mem);

    let fresh = crate::Vtd::new(l.h.vtd.config().clone());
    for offset in (0..0x1000).step_by(4) {
        assert_eq!(
            l.h.read32(offset),
            fresh.mmio_read(offset, 4),
            "{offset:#x}"
        );
    }
    assert_eq!(l.h.vtd.root_pointer(), (0, 0));
    assert_eq!(l.h.vtd.fault_next(), 0);
    assert_eq!(l.h.vtd.descriptors_processed(), 0);
    assert!(l.h.vtd.iotlb().is_empty());
    assert_eq!(
        l.h.vtd.take_events(),
        vec![crate::nesting::VtdEvent::TranslationEnabled(false)]
    );
    // The driver probes again and the same tables translate.
    crate::mock::probe_like_linux(&mut l.h.vtd, &l.h.mem, &mut l.h.alloc, l.tables.root);
    assert_eq!(l.h.gpa(SID, None, 0x1000, Access::READ), Ok(0x7_7000));
}
