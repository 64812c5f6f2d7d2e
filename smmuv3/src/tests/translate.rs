//! Translation through the stream table and CDs (IHI 0070 3.3, 5.1-5.4)
//! and the events of their faults (chapter 7).

use nesting_core::types::Access;

use super::{ASID, Harness, S1Setup, SID};
use crate::TranslateResult;
use crate::cd::Cd;
use crate::event::EventId;
use crate::mock::{Driver, PageTable, cdtable_ste, cmd, pte, s1_cd, s2_ste, with_s2};
use crate::regs::off;
use crate::strtab::{Ste, SteMode};
use crate::walk::Granule;
use crate::wire::write_qwords;

const R: Access = Access::READ;
const W: Access = Access::WRITE;

#[test]
fn stage1_4k_translates_and_records_nothing() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1234_5000, 0x9_0000);
    assert_eq!(s.h.gpa(SID, None, 0x1234_5678, R), Some(0x9_0678));
    assert!(s.next_event().is_none());
}

#[test]
fn smmu_disabled_bypasses_by_gbpa() {
    let mut h = Harness::new(&[]);
    assert_eq!(h.gpa(3, None, 0xabc_d123, W), Some(0xabc_d123));
    assert_eq!(h.gpa(3, Some(1), 0x5000, R), Some(0x5000));
}

#[test]
fn unmapped_address_records_f_translation_with_fields() {
    let mut s = S1Setup::new(&[]);
    let r = s.h.translate(SID, None, 0x4000_0123, W | Access::PRIV);
    assert_eq!(
        r,
        TranslateResult::Fault {
            event: Some(EventId::Translation),
            recorded: true,
            abort: true
        }
    );
    let e = s.next_event().expect("event recorded");
    assert_eq!(e.id(), EventId::Translation);
    assert_eq!(e.sid(), SID);
    assert!(!e.ssv() && !e.rnw() && e.pnu() && !e.ind() && !e.s2() && !e.stall());
    assert_eq!(e.class(), 0b10, "CLASS = IN");
    assert_eq!(e.input_addr(), 0x4000_0123);
}

#[test]
fn event_record_golden_bytes_of_f_translation() {
    let mut s = S1Setup::new(&[]);
    s.h.translate(SID, None, 0x4000_0123, R | Access::EXEC);
    let e = s.next_event().unwrap();
    // Word 0: type 0x10, SID 0x10 at [63:32]; word 1: RnW (bit 35), InD
    // (34), CLASS IN (0b10 at 41:40); word 2: the input address.
    assert_eq!(
        e.0,
        [
            0x10_0000_0010,
            (1 << 35) | (1 << 34) | (2 << 40),
            0x4000_0123,
            0
        ]
    );
}

#[test]
fn cd_record_clear_suppresses_translation_faults() {
    let mut s = S1Setup::new(&[]);
    let cd = s1_cd(ASID, &s.pt, 5, true).with_r(false);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    let r = s.h.translate(SID, None, 0x4000_0000, R);
    assert!(matches!(
        r,
        TranslateResult::Fault {
            recorded: false,
            ..
        }
    ));
    assert!(s.next_event().is_none());
}

#[test]
fn cd_abort_clear_terminates_as_raz_wi() {
    let mut s = S1Setup::new(&[]);
    let cd = s1_cd(ASID, &s.pt, 5, true).with_a(false);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    let r = s.h.translate(SID, None, 0x4000_0000, R);
    assert!(matches!(r, TranslateResult::Fault { abort: false, .. }));
}

#[test]
fn invalid_ste_is_c_bad_ste() {
    let mut s = S1Setup::new(&[]);
    s.drv.install_ste(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        0x20,
        Ste::default(),
    );
    assert_eq!(s.h.fault(0x20, None, 0, R), Some(EventId::BadSte));
    let e = s.next_event().unwrap();
    assert_eq!((e.id(), e.sid()), (EventId::BadSte, 0x20));
    assert_eq!(e.0[1..], [0, 0, 0], "C_BAD_STE carries only word 0");
}

#[test]
fn ste_abort_config_aborts_silently() {
    let mut s = S1Setup::new(&[]);
    let ste = Ste::default().with_v(true).with_config(SteMode::Abort);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, 0x21, ste);
    assert_eq!(s.h.fault(0x21, None, 0, R), None);
    assert!(s.next_event().is_none());
}

#[test]
fn ste_bypass_is_identity_and_rejects_substreams() {
    let mut s = S1Setup::new(&[]);
    let ste = Ste::default().with_v(true).with_config(SteMode::Bypass);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, 0x22, ste);
    assert_eq!(s.h.gpa(0x22, None, 0x7654_3210, W), Some(0x7654_3210));
    assert_eq!(
        s.h.fault(0x22, Some(1), 0, R),
        Some(EventId::BadSubstreamId)
    );
}

#[test]
fn illegal_ste_combinations_are_c_bad_ste() {
    let mut s = S1Setup::new(&[]);
    let good = cdtable_ste(s.cd_table.0, 0, false, false);
    let bad = [
        // Stage 2 on a stage-1-only SMMU.
        good.with_config(SteMode::Nested),
        // S1CDMax beyond SSIDSIZE (20).
        good.with_s1cdmax(21),
        // Reserved S1Fmt with substreams.
        good.with_s1cdmax(4).with_s1fmt(3),
        // Reserved S1DSS with substreams.
        good.with_s1cdmax(4).with_s1dss(3),
        // EL2 StreamWorld without IDR0.HYP.
        good.with_strw(2),
    ];
    for (i, ste) in bad.into_iter().enumerate() {
        let sid = 0x30 + i as u32;
        s.drv
            .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, sid, ste);
        assert_eq!(
            s.h.fault(sid, None, 0, R),
            Some(EventId::BadSte),
            "case {i}"
        );
    }
}

#[test]
fn illegal_s2_fields_are_c_bad_ste() {
    let mut h = Harness::new(&["stages=s2", "gran=4k"]);
    let mut d = h.probe();
    let pt = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    let good = s2_ste(1, &pt, 5);
    let bad = [
        good.with_s2aa64(false),
        good.with_s2endi(true),
        good.with_s2tg(1),   // 64 KiB not implemented
        good.with_s2tg(3),   // reserved
        good.with_s2t0sz(8), // 56-bit IPA
        good.with_s2sl0(0),  // level 2 for a 40-bit IPA: 2^19 entries
        good.with_s2sl0(3),  // reserved
    ];
    for (i, ste) in bad.into_iter().enumerate() {
        let sid = 0x40 + i as u32;
        d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, sid, ste);
        assert_eq!(h.fault(sid, None, 0, R), Some(EventId::BadSte), "case {i}");
    }
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 0x50, good);
    pt.map(&h.mem, &mut h.alloc, 0x1000, 0x8000, 3, pte::s2(true, true));
    assert_eq!(h.gpa(0x50, None, 0x1004, W), Some(0x8004));
}

#[test]
fn sid_beyond_table_is_c_bad_streamid() {
    let mut h = Harness::new(&["sidsize=8", "stlevel=linear"]);
    let mut d = h.probe();
    let _ = &mut d;
    assert_eq!(h.fault(0x100, None, 0, R), Some(EventId::BadStreamId));
    let e = d.next_event(&mut h.smmu, &h.mem).unwrap();
    assert_eq!((e.id(), e.sid()), (EventId::BadStreamId, 0x100));
}

#[test]
fn two_level_strtab_missing_l2_is_c_bad_streamid() {
    let mut s = S1Setup::new(&[]);
    assert_eq!(s.h.fault(0x4321, None, 0, R), Some(EventId::BadStreamId));
    // Span too small for the StreamID's index.
    let (l1, _) = match &s.drv.strtab {
        crate::mock::DriverStrtab::TwoLevel { l1, log2, .. } => (*l1, *log2),
        _ => unreachable!(),
    };
    let l2 = s.h.alloc.page(&s.h.mem);
    write_qwords(&s.h.mem, l1 + 8 * 0x43, [l2 | 2]).unwrap();
    assert_eq!(s.h.fault(0x4321, None, 0, R), Some(EventId::BadStreamId));
    // SID 0x4301 is within Span 2 (two STEs): the STE is read (invalid).
    assert_eq!(s.h.fault(0x4301, None, 0, R), Some(EventId::BadSte));
}

#[test]
fn strtab_not_in_ram_is_f_ste_fetch_with_address() {
    let mut h = Harness::new(&["sidsize=8", "stlevel=linear"]);
    let mut d = h.probe();
    h.write32(off::CR0, 0b1100);
    let base = super::RAM - 64;
    h.write64(off::STRTAB_BASE, base);
    h.write32(off::CR0, 0b1101);
    assert_eq!(h.fault(2, None, 0, R), Some(EventId::SteFetch));
    let e = d.next_event(&mut h.smmu, &h.mem).unwrap();
    assert_eq!(e.id(), EventId::SteFetch);
    assert_eq!(e.fetch_addr(), base + 128);
}

#[test]
fn substreams_select_cds_and_out_of_range_is_c_bad_substreamid() {
    let mut s = S1Setup::with(&[], Granule::G4K, 48, 4);
    let pt2 = PageTable::stage1(&s.h.mem, &mut s.h.alloc, Granule::G4K, 48, 48);
    pt2.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x1000,
        0xa000,
        3,
        pte::s1(true, false, false),
    );
    s.map(0x1000, 0xb000);
    let cd = s1_cd(9, &pt2, 5, false);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        3,
        cd,
    );
    assert_eq!(s.h.gpa(SID, Some(3), 0x1000, R), Some(0xa000));
    // No SubstreamID: S1DSS = SSID0 uses CD 0.
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), Some(0xb000));
    // SubstreamID 0 is illegal with S1DSS = SSID0; 16 is out of range; a
    // valid SubstreamID with an invalid CD is C_BAD_CD.
    assert_eq!(
        s.h.fault(SID, Some(0), 0x1000, R),
        Some(EventId::BadSubstreamId)
    );
    assert_eq!(
        s.h.fault(SID, Some(16), 0x1000, R),
        Some(EventId::BadSubstreamId)
    );
    assert_eq!(s.h.fault(SID, Some(4), 0x1000, R), Some(EventId::BadCd));
    let e = s.next_event().unwrap();
    assert!(e.ssv());
    assert_eq!(e.ssid(), 0);
}

#[test]
fn s1dss_terminate_and_bypass() {
    let mut s = S1Setup::with(&[], Granule::G4K, 48, 4);
    let ste = cdtable_ste(s.cd_table.0, 4, false, false).with_s1dss(0);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    assert_eq!(s.h.fault(SID, None, 0, R), Some(EventId::StreamDisabled));
    let ste = ste.with_s1dss(1);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    assert_eq!(s.h.gpa(SID, None, 0x1234, R), Some(0x1234));
}

#[test]
fn two_level_cd_table_resolves_and_invalid_l1_is_c_bad_substreamid() {
    let mut s = S1Setup::with(&[], Granule::G4K, 48, 12);
    assert!(
        s.cd_table.1,
        "12 SubstreamID bits make a two-level CD table"
    );
    s.map(0x2000, 0xc000);
    let cd = s1_cd(7, &s.pt, 5, false);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0x805,
        cd,
    );
    assert_eq!(s.h.gpa(SID, Some(0x805), 0x2000, R), Some(0xc000));
    assert_eq!(
        s.h.fault(SID, Some(0x405), 0x2000, R),
        Some(EventId::BadSubstreamId)
    );
}

#[test]
fn illegal_cds_are_c_bad_cd() {
    let mut s = S1Setup::new(&["gran=4k,64k"]);
    let good = s1_cd(ASID, &s.pt, 5, false);
    let bad: [Cd; 6] = [
        good.with_v(false),
        good.with_aa64(false),
        good.with_endi(true),
        good.with_tg0(2), // 16 KiB not implemented
        good.with_t0sz(12),
        good.with_t0sz(40),
    ];
    for (i, cd) in bad.into_iter().enumerate() {
        s.drv.install_cd(
            &mut s.h.smmu,
            &s.h.mem,
            &mut s.h.alloc,
            s.cd_table,
            SID,
            0,
            cd,
        );
        assert_eq!(
            s.h.fault(SID, None, 0x1000, R),
            Some(EventId::BadCd),
            "case {i}"
        );
    }
    // Stall requested while the STE disables stalls.
    let cd = good.with_s(true);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.fault(SID, None, 0x1000, R), Some(EventId::BadCd));
}

#[test]
fn cd_table_not_in_ram_is_f_cd_fetch() {
    let mut s = S1Setup::new(&[]);
    let ste = cdtable_ste(super::RAM + 0x1000, 0, false, false);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    assert_eq!(s.h.fault(SID, None, 0, R), Some(EventId::CdFetch));
    assert_eq!(s.next_event().unwrap().fetch_addr(), super::RAM + 0x1000);
}

#[test]
fn ttb1_region_translates_high_addresses_and_gaps_fault() {
    let mut s = S1Setup::new(&[]);
    let hi = PageTable::stage1(&s.h.mem, &mut s.h.alloc, Granule::G4K, 39, 48);
    let va = 0xffff_ff80_0000_1000u64;
    hi.map(
        &s.h.mem,
        &mut s.h.alloc,
        va,
        0xd000,
        3,
        pte::s1(true, false, false),
    );
    let cd = s1_cd(ASID, &s.pt, 5, false)
        .with_epd1(false)
        .with_t1sz(25)
        .with_tg1(2)
        .with_ttb1(hi.root());
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.gpa(SID, None, va + 8, R), Some(0xd008));
    // Between the regions, and beyond TTB0's 48 bits.
    assert_eq!(
        s.h.fault(SID, None, 0x0080_0000_0000_0000, R),
        Some(EventId::Translation)
    );
    assert_eq!(
        s.h.fault(SID, None, 0xffff_0000_0000_1000, R),
        Some(EventId::Translation)
    );
}

#[test]
fn tbi_ignores_top_byte_and_tagged_translations_are_not_cached() {
    let mut s = S1Setup::new(&[]);
    s.map(0x3000, 0xe000);
    assert_eq!(
        s.h.fault(SID, None, 0x5a00_0000_0000_3000, R),
        Some(EventId::Translation)
    );
    let cd = s1_cd(ASID, &s.pt, 5, false).with_tbi0(true);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.gpa(SID, None, 0x5a00_0000_0000_3010, R), Some(0xe010));
    assert!(s.h.smmu.iotlb().is_empty());
}

#[test]
fn stage2_only_stream_translates_ipa() {
    let mut h = Harness::new(&["stages=s2", "gran=4k,64k"]);
    let mut d = h.probe();
    let pt = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G64K, 42, 1, 48);
    pt.map(
        &h.mem,
        &mut h.alloc,
        0x2012_0000,
        0x40_0000,
        3,
        pte::s2(true, false),
    );
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 7, s2_ste(3, &pt, 5));
    assert_eq!(h.gpa(7, None, 0x2012_3456, R), Some(0x40_3456));
    assert_eq!(h.fault(7, None, 0x2012_3456, W), Some(EventId::Permission));
    let e = d.next_event(&mut h.smmu, &h.mem).unwrap();
    assert!(e.s2());
    assert_eq!(e.class(), 0b10);
    assert_eq!(e.ipa(), 0x2012_3000);
    // A SubstreamID on a stream without stage 1.
    assert_eq!(h.fault(7, Some(1), 0, R), Some(EventId::BadSubstreamId));
}

#[test]
fn nested_cd_and_tables_go_through_stage2() {
    let mut h = Harness::new(&["stages=nested"]);
    let mut d = h.probe();
    // Stage 2 maps IPA [1 GiB, 1 GiB + 16 MiB) to the pool's PAs, with 2
    // MiB blocks; the stage-1 tables and CD are written at IPAs.
    let s2 = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    let ipa_off = (1u64 << 30) - super::POOL;
    for i in 0..8u64 {
        let pa = super::POOL + (i << 21);
        s2.map(
            &h.mem,
            &mut h.alloc,
            pa + ipa_off,
            pa,
            2,
            pte::s2(true, true),
        );
    }
    // And the data page: IPA 0x8000_0000 -> PA 0x60_0000.
    s2.map(
        &h.mem,
        &mut h.alloc,
        0x8000_0000,
        0x60_0000,
        3,
        pte::s2(true, true),
    );
    let s1 = PageTable::stage1(&h.mem, &mut h.alloc, Granule::G4K, 48, 48).with_ipa_offset(ipa_off);
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
    let ste = with_s2(cdtable_ste(cdt + ipa_off, 0, false, false), 4, &s2, 5)
        .with_config(SteMode::Nested);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 9, ste);
    assert_eq!(h.gpa(9, None, 0x7abc, R), Some(0x60_0abc));
    // An unmapped final IPA: stage-2 fault, CLASS = IN.
    s1.map(
        &h.mem,
        &mut h.alloc,
        0x9000,
        0x9000_0000,
        3,
        pte::s1(true, false, false),
    );
    assert_eq!(h.fault(9, None, 0x9000, R), Some(EventId::Translation));
    let e = d.next_event(&mut h.smmu, &h.mem).unwrap();
    assert!(e.s2());
    assert_eq!((e.class(), e.ipa()), (0b10, 0x9000_0000));
    // A CD at an unmapped IPA: stage-2 fault, CLASS = CD.
    let ste2 = ste.with_s1_context_ptr(0xc000_0000);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 10, ste2);
    assert_eq!(h.fault(10, None, 0x7000, R), Some(EventId::Translation));
    let e = d.next_event(&mut h.smmu, &h.mem).unwrap();
    assert_eq!((e.s2(), e.class(), e.ipa()), (true, 0b00, 0xc000_0000));
}

#[test]
fn nested_stage1_table_at_unmapped_ipa_is_class_tt() {
    let mut h = Harness::new(&["stages=nested"]);
    let mut d = h.probe();
    let s2 = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    // Identity for the pool only.
    for i in 0..8u64 {
        let pa = super::POOL + (i << 21);
        s2.map(&h.mem, &mut h.alloc, pa, pa, 2, pte::s2(true, true));
    }
    let (cdt, _) = Driver::cd_table(&h.mem, &mut h.alloc, 0, true);
    let s1 = PageTable::stage1(&h.mem, &mut h.alloc, Granule::G4K, 48, 48);
    // TTB0 at an IPA stage 2 does not map.
    let cd = s1_cd(ASID, &s1, 5, false).with_ttb0(0x7000_0000);
    write_qwords(&h.mem, cdt, cd.0).unwrap();
    let ste = with_s2(cdtable_ste(cdt, 0, false, false), 4, &s2, 5).with_config(SteMode::Nested);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 9, ste);
    assert_eq!(h.fault(9, None, 0x1000, R), Some(EventId::Translation));
    let e = d.next_event(&mut h.smmu, &h.mem).unwrap();
    assert_eq!((e.s2(), e.class(), e.ipa()), (true, 0b01, 0x7000_0000));
}

#[test]
fn privcfg_and_instcfg_override_the_transaction() {
    let mut s = S1Setup::new(&[]);
    // A privileged-only page.
    s.map_attrs(0x5000, 0xf000, 3, pte::s1(true, true, false));
    assert_eq!(s.h.fault(SID, None, 0x5000, R), Some(EventId::Permission));
    let ste = cdtable_ste(s.cd_table.0, 0, false, false).with_privcfg(3);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    assert_eq!(s.h.gpa(SID, None, 0x5000, R), Some(0xf000));
    assert!(s.issue(&[cmd::cfgi_ste(SID)]));
}

// Found by the differential harness against QEMU (tests/differential,
// docs/smmuv3-differential.md): QEMU is right on these three.

#[test]
fn ttb0_beyond_effective_ips_is_c_bad_cd() {
    // 5.4 CD.TTB0: ILLEGAL outside the CD's effective IPS (here 32 bits),
    // so C_BAD_CD, not a walk with an Address Size fault.
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0x8000);
    let cd = s1_cd(ASID, &s.pt, 0, false).with_ttb0(1 << 33);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.fault(SID, None, 0x1000, W), Some(EventId::BadCd));
    // Within the IPS it walks.
    let cd = s1_cd(ASID, &s.pt, 0, false);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.gpa(SID, None, 0x1004, W), Some(0x8004));
}

#[test]
fn s2ttb_beyond_effective_s2ps_is_c_bad_ste() {
    // 5.2 STE.S2TTB: ILLEGAL outside the effective S2PS (here 32 bits).
    let mut h = Harness::new(&["stages=s2", "gran=4k"]);
    let mut d = h.probe();
    let pt = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    pt.map(&h.mem, &mut h.alloc, 0x1000, 0x8000, 3, pte::s2(true, true));
    let bad = s2_ste(1, &pt, 0).with_s2ttb(1 << 33);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 0x40, bad);
    assert_eq!(h.fault(0x40, None, 0x1000, W), Some(EventId::BadSte));
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 0x41, s2_ste(1, &pt, 0));
    assert_eq!(h.gpa(0x41, None, 0x1004, W), Some(0x8004));
}

#[test]
fn stage1_bypassed_input_beyond_ias_is_recorded_stage1_address_size_fault() {
    // 3.4 "Address sizes": with stage 1 bypassed, an input address beyond
    // the IAS (= OAS, 44 bits here) is a stage 1 Address Size fault,
    // recorded although S2R is clear; below the IAS but beyond S2T0SZ it
    // is a stage 2 Translation fault, which S2R = 0 does not record.
    let mut h = Harness::new(&["stages=s2", "gran=4k", "oas=44"]);
    let mut d = h.probe();
    let pt = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 44);
    let ste = s2_ste(1, &pt, 4).with_s2r(false);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 0x40, ste);
    assert_eq!(h.fault(0x40, None, 1 << 44, W), Some(EventId::AddrSize));
    let e = d.next_event(&mut h.smmu, &h.mem).expect("recorded");
    assert_eq!(
        (e.id(), e.s2(), e.input_addr()),
        (EventId::AddrSize, false, 1 << 44)
    );
    assert_eq!(h.fault(0x40, None, 1 << 40, W), Some(EventId::Translation));
    assert!(d.next_event(&mut h.smmu, &h.mem).is_none());
}

#[test]
fn cd_ha_hd_beyond_idr0_httu_are_c_bad_cd() {
    // 5.4 CD.HA/HD: HA is ILLEGAL with HTTU = 0b00, HD with HTTU = 0b00
    // or 0b01 (found by the differential harness: QEMU, HTTU = 0, reports
    // C_BAD_CD; we ignored the bits and translated).
    for (httu, ha, hd, bad) in [
        ("httu=0", true, false, true),
        ("httu=0", false, true, true),
        ("httu=1", false, true, true),
        ("httu=1", true, false, false),
        ("httu=2", true, true, false),
    ] {
        let mut s = S1Setup::new(&[httu]);
        s.map(0x1000, 0x8000);
        let cd = s1_cd(ASID, &s.pt, 5, false).with_ha(ha).with_hd(hd);
        s.drv.install_cd(
            &mut s.h.smmu,
            &s.h.mem,
            &mut s.h.alloc,
            s.cd_table,
            SID,
            0,
            cd,
        );
        let got = s.h.translate(SID, None, 0x1004, W);
        match got {
            TranslateResult::Fault { event, .. } if bad => {
                assert_eq!(event, Some(EventId::BadCd), "{httu} HA {ha} HD {hd}")
            }
            TranslateResult::Mapped(_) if !bad => {}
            other => panic!("{httu} HA {ha} HD {hd}: {other:?}"),
        }
    }
}
