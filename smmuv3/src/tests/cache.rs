//! The translation cache and what each invalidation removes (IHI 0070
//! "TLB tagging", configuration and TLB invalidation): every
//! command removes what it must, and a command for another ASID or VMID
//! leaves the entry alone.

use nesting_core::types::Access;

use super::{ASID, Harness, S1Setup, SID};
use crate::mock::{Driver, PageTable, cdtable_ste, cmd, pte, s1_cd, s2_ste, with_s2};
use crate::strtab::SteMode;
use crate::walk::Granule;
use crate::wire::write_qwords;

const R: Access = Access::READ;

/// Maps 0x1000 -> 0xa000, caches it, then remaps it to 0xb000 behind the
/// cache's back: a translation of 0xa000 afterwards means the entry is
/// still cached, 0xb000 that it was dropped.
fn cached_s1() -> S1Setup {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), Some(0xa000));
    s.map(0x1000, 0xb000);
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), Some(0xa000), "cached");
    s
}

fn still_cached(s: &mut S1Setup) -> bool {
    s.h.gpa(SID, None, 0x1000, R) == Some(0xa000)
}

#[test]
fn tlbi_nh_asid_drops_own_asid_only() {
    let mut s = cached_s1();
    assert!(s.issue(&[cmd::tlbi_nh_asid(0, ASID + 1)]));
    assert!(still_cached(&mut s));
    assert!(s.issue(&[cmd::tlbi_nh_asid(0, ASID)]));
    assert!(!still_cached(&mut s));
}

#[test]
fn tlbi_nh_va_drops_covering_entry_only() {
    let mut s = cached_s1();
    assert!(s.issue(&[cmd::tlbi_nh_va(0, ASID, 0x2000)]));
    assert!(s.issue(&[cmd::tlbi_nh_va(0, ASID + 1, 0x1000)]));
    assert!(still_cached(&mut s));
    assert!(s.issue(&[cmd::tlbi_nh_va(0, ASID, 0x1000)]));
    assert!(!still_cached(&mut s));
}

#[test]
fn tlbi_nh_va_range_num_scale_covers_blocks() {
    let mut s = cached_s1();
    // 4 KiB granule, (NUM + 1) << SCALE = 2 << 1 = 4 pages from 0.
    assert!(s.issue(&[cmd::tlbi_nh_va_range(0, ASID, 0x8000, 1, 1, 1)]));
    assert!(still_cached(&mut s));
    assert!(s.issue(&[cmd::tlbi_nh_va_range(0, ASID, 0, 1, 1, 1)]));
    assert!(!still_cached(&mut s));
}

#[test]
fn range_fields_are_ignored_without_ril() {
    let mut s = S1Setup::new(&["ril=0"]);
    s.map(0x3000, 0xa000);
    s.h.gpa(SID, None, 0x3000, R);
    s.map(0x3000, 0xb000);
    // As a range, this would cover 0x3000; without RIL it is one address.
    assert!(s.issue(&[cmd::tlbi_nh_va_range(0, ASID, 0, 1, 3, 0)]));
    assert_eq!(s.h.gpa(SID, None, 0x3000, R), Some(0xa000));
}

#[test]
fn tlbi_nh_vaa_drops_every_asid() {
    let mut s = cached_s1();
    assert!(s.issue(&[cmd::tlbi_nh_vaa(0, 0x1000)]));
    assert!(!still_cached(&mut s));
}

#[test]
fn global_entries_survive_asid_but_not_va_invalidation() {
    let mut s = S1Setup::new(&[]);
    let global = pte::s1(true, false, false) & !pte::NG;
    s.map_attrs(0x1000, 0xa000, 3, global);
    s.h.gpa(SID, None, 0x1000, R);
    s.map_attrs(0x1000, 0xb000, 3, global);
    assert!(s.issue(&[cmd::tlbi_nh_asid(0, ASID)]));
    assert!(
        still_cached(&mut s),
        "TLBI_NH_ASID need not drop global entries"
    );
    // TLBI_NH_VA of any ASID removes global entries at the address.
    assert!(s.issue(&[cmd::tlbi_nh_va(0, ASID + 7, 0x1000)]));
    assert!(!still_cached(&mut s));
}

#[test]
fn nh_all_and_nsnh_all_drop_everything_stage1() {
    let mut s = cached_s1();
    assert!(s.issue(&[cmd::tlbi_nh_all(0)]));
    assert!(!still_cached(&mut s));
    let mut s = cached_s1();
    assert!(s.issue(&[cmd::tlbi_nsnh_all()]));
    assert!(!still_cached(&mut s));
}

#[test]
fn cfgi_ste_and_cd_drop_the_streams_entries() {
    for c in [
        cmd::cfgi_ste(SID),
        cmd::cfgi_cd(SID, 0),
        cmd::cfgi_cd_all(SID),
        cmd::cfgi_all(),
    ] {
        let mut s = cached_s1();
        assert!(s.issue(&[cmd::cfgi_ste(SID + 1), cmd::cfgi_cd(SID + 1, 0)]));
        assert!(still_cached(&mut s));
        assert!(s.issue(&[c]));
        assert!(!still_cached(&mut s), "{c:x?}");
    }
}

#[test]
fn disabling_smmu_drops_cache() {
    let mut s = cached_s1();
    let en = s.drv.enables;
    s.h.write32(crate::regs::off::CR0, en & !1);
    s.h.write32(crate::regs::off::CR0, en);
    assert!(!still_cached(&mut s));
}

/// A nested stream (VMID 4) and a stage-2-only stream (VMID 4), both
/// cached at IOVA 0x1000.
fn nested_and_s2() -> (Harness, Driver, PageTable, PageTable) {
    let mut h = Harness::new(&["stages=nested"]);
    let mut d = h.probe();
    let s2 = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    for i in 0..8u64 {
        let pa = super::POOL + (i << 21);
        s2.map(&h.mem, &mut h.alloc, pa, pa, 2, pte::s2(true, true));
    }
    s2.map(&h.mem, &mut h.alloc, 0x1000, 0x5000, 3, pte::s2(true, true));
    s2.map(&h.mem, &mut h.alloc, 0x9000, 0x6000, 3, pte::s2(true, true));
    let s1 = PageTable::stage1(&h.mem, &mut h.alloc, Granule::G4K, 48, 48);
    s1.map(
        &h.mem,
        &mut h.alloc,
        0x1000,
        0x9000,
        3,
        pte::s1(true, false, false),
    );
    let (cdt, _) = Driver::cd_table(&h.mem, &mut h.alloc, 0, true);
    write_qwords(&h.mem, cdt, s1_cd(ASID, &s1, 5, false).0).unwrap();
    let nested = with_s2(cdtable_ste(cdt, 0, false, false), 4, &s2, 5).with_config(SteMode::Nested);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 1, nested);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 2, s2_ste(4, &s2, 5));
    assert_eq!(h.gpa(1, None, 0x1000, R), Some(0x6000));
    assert_eq!(h.gpa(2, None, 0x1000, R), Some(0x5000));
    (h, d, s1, s2)
}

/// Remaps both stages so that a fresh walk gives different answers.
fn remap(h: &mut Harness, s1: &PageTable, s2: &PageTable) {
    s2.map(&h.mem, &mut h.alloc, 0x1000, 0x7000, 3, pte::s2(true, true));
    s1.map(
        &h.mem,
        &mut h.alloc,
        0x1000,
        0x1000,
        3,
        pte::s1(true, false, false),
    );
}

#[test]
fn tlbi_s2_ipa_drops_stage2_entries_not_combined_ones() {
    let (mut h, mut d, s1, s2) = nested_and_s2();
    remap(&mut h, &s1, &s2);
    assert!(d.issue(&mut h.smmu, &h.mem, &[cmd::tlbi_s2_ipa(4, 0x1000)]));
    assert_eq!(h.gpa(2, None, 0x1000, R), Some(0x7000));
    assert_eq!(
        h.gpa(1, None, 0x1000, R),
        Some(0x6000),
        "combined entry kept"
    );
    // Linux follows with TLBI_NH_ALL for the VMID.
    assert!(d.issue(&mut h.smmu, &h.mem, &[cmd::tlbi_nh_all(4)]));
    assert_eq!(h.gpa(1, None, 0x1000, R), Some(0x7000));
}

#[test]
fn vmid_tagged_commands_spare_other_vmids() {
    let (mut h, mut d, s1, s2) = nested_and_s2();
    remap(&mut h, &s1, &s2);
    assert!(d.issue(
        &mut h.smmu,
        &h.mem,
        &[
            cmd::tlbi_s12_vmall(5),
            cmd::tlbi_nh_all(5),
            cmd::tlbi_s2_ipa(5, 0x1000)
        ]
    ));
    assert_eq!(h.gpa(1, None, 0x1000, R), Some(0x6000));
    assert_eq!(h.gpa(2, None, 0x1000, R), Some(0x5000));
    assert!(d.issue(&mut h.smmu, &h.mem, &[cmd::tlbi_s12_vmall(4)]));
    assert_eq!(h.gpa(1, None, 0x1000, R), Some(0x7000));
    assert_eq!(h.gpa(2, None, 0x1000, R), Some(0x7000));
}

#[test]
fn cached_read_does_not_grant_write_of_clean_page() {
    let mut s = S1Setup::new(&[]);
    s.map_attrs(0x1000, 0xa000, 3, pte::s1(true, false, true));
    assert!(s.h.gpa(SID, None, 0x1000, R).is_some());
    let t = match s.h.translate(SID, None, 0x1000, R) {
        crate::TranslateResult::Mapped(t) => t,
        other => panic!("{other:?}"),
    };
    assert!(!t.access.contains(Access::WRITE));
}

#[test]
fn changed_ste_is_seen_only_after_cfgi_ste() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), Some(0xa000));
    // The guest makes the stream bypass without invalidating: the cached
    // STE (and translation) still apply.
    let at = s.drv.ste_addr(&s.h.mem, &mut s.h.alloc, SID);
    let bypass = crate::strtab::Ste::default()
        .with_v(true)
        .with_config(SteMode::Bypass);
    write_qwords(&s.h.mem, at, bypass.0).unwrap();
    assert_eq!(
        s.h.gpa(SID, None, 0x2000, R),
        None,
        "old STE: 0x2000 unmapped"
    );
    assert!(s.issue(&[cmd::cfgi_ste(SID)]));
    assert_eq!(s.h.gpa(SID, None, 0x2000, R), Some(0x2000));
}

#[test]
fn changed_cd_is_seen_only_after_cfgi_cd() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    assert!(s.h.gpa(SID, None, 0x1000, R).is_some());
    let cd = s1_cd(ASID, &s.pt, 5, true).with_epd0(true);
    write_qwords(&s.h.mem, s.cd_table.0, cd.0).unwrap();
    assert!(s.issue(&[cmd::tlbi_nh_all(0)]));
    assert!(s.h.gpa(SID, None, 0x1000, R).is_some(), "cached CD");
    assert!(s.issue(&[cmd::cfgi_cd(SID + 1, 0)]));
    assert!(
        s.h.gpa(SID, None, 0x1000, R).is_some(),
        "another stream's CFGI"
    );
    assert!(s.issue(&[cmd::cfgi_cd_all(SID)]));
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), None, "EPD0: walks disabled");
}

#[test]
fn faulting_configuration_is_not_cached() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    let at = s.drv.ste_addr(&s.h.mem, &mut s.h.alloc, 0x30);
    assert!(s.h.gpa(0x30, None, 0x1000, R).is_none());
    let good = cdtable_ste(s.cd_table.0, 0, false, false);
    write_qwords(&s.h.mem, at, good.0).unwrap();
    assert_eq!(s.h.gpa(0x30, None, 0x1000, R), Some(0xa000));
}
