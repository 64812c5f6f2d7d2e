//! Translation table walks (Arm ARM VMSAv8-64 as IHI 0070 uses
//! it): granules, levels, blocks, the contiguous hint, access flag and
//! dirty state, permissions, address size faults.

use nesting_core::types::Access;

use super::{ASID, Harness, S1Setup, SID};
use crate::TranslateResult;
use crate::event::EventId;
use crate::mock::{PageTable, pte, s1_cd, s2_ste};
use crate::walk::{
    Direct, FaultKind, Granule, TableConfig, Walk, WalkReq, desc, descriptor_address, walk,
};

const R: Access = Access::READ;
const W: Access = Access::WRITE;
const X: Access = Access::EXEC;
const P: Access = Access::PRIV;

fn req(addr: u64, access: Access) -> WalkReq {
    WalkReq {
        addr,
        access,
        table_walk: false,
    }
}

#[test]
fn stage1_start_level_follows_granule_and_tsz() {
    let lvl = |g, tsz| TableConfig::stage1(g, tsz, 0, 48).unwrap().start_level;
    assert_eq!(lvl(Granule::G4K, 16), 0);
    assert_eq!(lvl(Granule::G4K, 25), 1);
    assert_eq!(lvl(Granule::G4K, 39), 2);
    assert_eq!(lvl(Granule::G16K, 16), 0);
    assert_eq!(lvl(Granule::G16K, 17), 1);
    assert_eq!(lvl(Granule::G64K, 16), 1);
    assert_eq!(lvl(Granule::G64K, 22), 2);
    assert!(TableConfig::stage1(Granule::G4K, 15, 0, 48).is_none());
    assert!(TableConfig::stage1(Granule::G4K, 40, 0, 48).is_none());
}

#[test]
fn stage2_concatenation_limits_start_level() {
    // 4 KiB, 40-bit IPA from level 1: 10 bits, two concatenated tables.
    let t = TableConfig::stage2(Granule::G4K, 24, 1, 0, 48).unwrap();
    assert_eq!((t.start_level, t.start_bits()), (1, 10));
    // 16 concatenated is the most: 4 KiB level 1 resolves up to 43 bits.
    assert!(TableConfig::stage2(Granule::G4K, 21, 1, 0, 48).is_some());
    assert!(TableConfig::stage2(Granule::G4K, 20, 1, 0, 48).is_none());
    // 64 KiB from level 3 cannot cover 42 bits.
    assert!(TableConfig::stage2(Granule::G64K, 22, 0, 0, 48).is_none());
    assert!(TableConfig::stage2(Granule::G16K, 22, 1, 0, 48).is_none());
    assert_eq!(
        TableConfig::stage2(Granule::G16K, 22, 2, 0, 48)
            .unwrap()
            .start_level,
        1
    );
}

#[test]
fn every_granule_translates_pages_and_blocks() {
    for g in Granule::ALL {
        let mut s = S1Setup::with(&[], g, 48, 0);
        let page = 1u64 << g.shift();
        let block = 1u64 << g.level_shift(2);
        s.map_attrs(0x40 * page, 0x20 * page, 3, pte::s1(true, false, false));
        s.map_attrs(4 * block, 2 * block, 2, pte::s1(true, false, false));
        assert_eq!(
            s.h.gpa(SID, None, 0x40 * page + 5, R),
            Some(0x20 * page + 5),
            "{g:?} page"
        );
        assert_eq!(
            s.h.gpa(SID, None, 4 * block + page + 7, W),
            Some(2 * block + page + 7),
            "{g:?} block"
        );
    }
}

#[test]
fn level1_blocks_only_where_the_granule_allows() {
    let mut s = S1Setup::new(&[]);
    s.map_attrs(1 << 30, 3 << 30, 1, pte::s1(true, false, false));
    assert_eq!(
        s.h.gpa(SID, None, (1 << 30) + 0x1234, R),
        Some((3 << 30) + 0x1234)
    );
    // A 16 KiB level-1 block is reserved without FEAT_LPA2: Translation.
    let mut s = S1Setup::with(&[], Granule::G16K, 48, 0);
    s.map_attrs(1 << 36, 0, 1, pte::s1(true, false, false));
    assert_eq!(s.h.fault(SID, None, 1 << 36, R), Some(EventId::Translation));
    // A level-3 descriptor with bit 1 clear is reserved: Translation.
    let mut s = S1Setup::new(&[]);
    s.pt.set_raw(&s.h.mem, &mut s.h.alloc, 0x5000, 3, 0x9000 | pte::AF | 1);
    assert_eq!(s.h.fault(SID, None, 0x5000, R), Some(EventId::Translation));
}

#[test]
fn contiguous_run_is_cached_as_one_region() {
    let mut s = S1Setup::new(&[]);
    for i in 0..16u64 {
        let attrs = pte::s1(true, false, false) | pte::CONT;
        s.map_attrs(0x10_0000 + (i << 12), 0x30_0000 + (i << 12), 3, attrs);
    }
    match s.h.translate(SID, None, 0x10_5123, R) {
        TranslateResult::Mapped(t) => {
            assert_eq!(t.size.bytes(), 64 << 10);
            assert_eq!(t.gpa.0, 0x30_0000);
        }
        other => panic!("{other:?}"),
    }
    // Served from the cache without walking.
    assert_eq!(s.h.gpa(SID, None, 0x10_f000, R), Some(0x30_f000));
    assert_eq!(s.h.smmu.iotlb().len(), 1);
}

#[test]
fn access_flag_clear_faults_without_httu() {
    let mut s = S1Setup::new(&["httu=0"]);
    s.map_attrs(0x6000, 0x8000, 3, pte::s1(true, false, false) & !pte::AF);
    assert_eq!(s.h.fault(SID, None, 0x6000, R), Some(EventId::Access));
    // AFFD: no access flag fault.
    let cd = s1_cd(ASID, &s.pt, 5, false).with_affd(true);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.gpa(SID, None, 0x6000, R), Some(0x8000));
    assert_eq!(
        s.pt.get(&s.h.mem, 0x6000, 3) & pte::AF,
        0,
        "AFFD does not set AF"
    );
}

#[test]
fn access_flag_set_by_hardware_with_ha() {
    let mut s = S1Setup::new(&[]);
    s.map_attrs(0x6000, 0x8000, 3, pte::s1(true, false, false) & !pte::AF);
    assert_eq!(s.h.gpa(SID, None, 0x6000, R), Some(0x8000));
    assert_ne!(s.pt.get(&s.h.mem, 0x6000, 3) & pte::AF, 0);
}

#[test]
fn dirty_state_set_on_first_write_of_writable_clean_page() {
    let mut s = S1Setup::new(&[]);
    s.map_attrs(0x7000, 0x9000, 3, pte::s1(true, false, true));
    let d0 = s.pt.get(&s.h.mem, 0x7000, 3);
    assert_ne!(d0 & pte::AP_RDONLY, 0, "clean");
    // A read leaves it clean, and is cached without write permission.
    assert_eq!(s.h.gpa(SID, None, 0x7000, R), Some(0x9000));
    assert_eq!(s.pt.get(&s.h.mem, 0x7000, 3), d0);
    // The write misses the cache, walks and marks it dirty (AP[2] = 0).
    assert_eq!(s.h.gpa(SID, None, 0x7004, W), Some(0x9004));
    assert_eq!(s.pt.get(&s.h.mem, 0x7000, 3) & pte::AP_RDONLY, 0);
}

#[test]
fn dirty_tracking_off_makes_writable_clean_read_only() {
    let mut s = S1Setup::new(&["httu=1"]);
    s.map_attrs(0x7000, 0x9000, 3, pte::s1(true, false, true));
    assert_eq!(s.h.fault(SID, None, 0x7000, W), Some(EventId::Permission));
}

#[test]
fn stage1_permissions_ap_xn_pxn() {
    let mut s = S1Setup::new(&[]);
    // Read-only user page, user execute-never.
    s.map_attrs(0x1000, 0xa000, 3, pte::s1(false, false, false) | pte::XN);
    // Privileged-only page.
    s.map_attrs(0x2000, 0xb000, 3, pte::s1(true, true, false));
    // User-writable page (implicitly privileged execute-never).
    s.map_attrs(0x3000, 0xc000, 3, pte::s1(true, false, false));
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), Some(0xa000));
    assert_eq!(s.h.fault(SID, None, 0x1000, W), Some(EventId::Permission));
    assert_eq!(
        s.h.fault(SID, None, 0x1000, R | X),
        Some(EventId::Permission)
    );
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, R | X | P),
        Some(0xa000),
        "PXN clear"
    );
    assert_eq!(s.h.fault(SID, None, 0x2000, R), Some(EventId::Permission));
    assert_eq!(s.h.gpa(SID, None, 0x2000, W | P), Some(0xb000));
    assert_eq!(s.h.gpa(SID, None, 0x3000, R | X), Some(0xc000));
    assert_eq!(
        s.h.fault(SID, None, 0x3000, R | X | P),
        Some(EventId::Permission)
    );
    let mut last = None;
    while let Some(e) = s.next_event() {
        last = Some(e);
    }
    let e = last.unwrap();
    assert!(e.ind() && e.pnu() && e.rnw());
}

#[test]
fn table_attributes_limit_levels_below_unless_had() {
    let mut s = S1Setup::new(&[]);
    s.map(0x20_0000, 0xd000);
    // APTable[1] (no write) and UXNTable in the level-2 table descriptor.
    let l2 = s.pt.get(&s.h.mem, 0x20_0000, 2);
    s.pt.set_raw(
        &s.h.mem,
        &mut s.h.alloc,
        0x20_0000,
        2,
        l2 | (1 << 62) | (1 << 60),
    );
    assert_eq!(
        s.h.fault(SID, None, 0x20_0000, W),
        Some(EventId::Permission)
    );
    assert_eq!(
        s.h.fault(SID, None, 0x20_0000, R | X),
        Some(EventId::Permission)
    );
    let cd = s1_cd(ASID, &s.pt, 5, true).with_had0(true);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.gpa(SID, None, 0x20_0000, W), Some(0xd000));
}

#[test]
fn wxn_makes_writable_pages_execute_never() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    assert!(s.h.gpa(SID, None, 0x1000, R | X).is_some());
    let cd = s1_cd(ASID, &s.pt, 5, true).with_wxn(true);
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
        s.h.fault(SID, None, 0x1000, R | X),
        Some(EventId::Permission)
    );
}

#[test]
fn output_beyond_ips_is_address_size_fault() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 1 << 40);
    let cd = s1_cd(ASID, &s.pt, 2, true); // IPS = 40 bits
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.fault(SID, None, 0x1000, R), Some(EventId::AddrSize));
    // A table address beyond it, too.
    let l3 = s.pt.get(&s.h.mem, 0x1000, 2);
    s.pt.set_raw(&s.h.mem, &mut s.h.alloc, 0x1000, 2, l3 | (1 << 41));
    assert_eq!(s.h.fault(SID, None, 0x1000, R), Some(EventId::AddrSize));
    // TTB0 itself beyond the IPS is not an Address Size fault but an
    // ILLEGAL CD (5.4 CD.TTB0): see translate::ttb0_beyond_effective_ips_is_c_bad_cd.
    let cd = s1_cd(ASID, &s.pt, 2, true).with_ttb0(1 << 42);
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
fn walk_beyond_ram_is_f_walk_eabt_with_fetch_address() {
    let mut s = S1Setup::new(&[]);
    let cd = s1_cd(ASID, &s.pt, 5, true).with_ttb0(super::RAM + 0x1000);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert_eq!(s.h.fault(SID, None, 0x1000, R), Some(EventId::WalkEabt));
    let e = s.next_event().unwrap();
    assert_eq!(e.fetch_addr(), super::RAM + 0x1000);
    assert_eq!(e.class(), 0b01, "CLASS = TT");
}

#[test]
fn fifty_two_bit_output_with_64k_granule() {
    let cfg = TableConfig::stage1(Granule::G64K, 16, 0x10_0000, 52).unwrap();
    // Output bits 51:48 come from descriptor bits 15:12.
    let d = 0x0000_1234_5678_0000 | (0xa << 12) | 0b11;
    assert_eq!(descriptor_address(d, Granule::G64K, 16), 0xa_1234_5678_0000);
    // With 4 KiB they are address bits 51:48 and so beyond 48 bits.
    let d4 = (0x3 << 48) | pte::DBM | 0x1000 | 0b11;
    assert_eq!(descriptor_address(d4, Granule::G4K, 12), 0x3_0000_0000_1000);
    assert_eq!(cfg.oa_bits, 52);
}

#[test]
fn stage2_permissions_and_dirty_state() {
    let mut h = Harness::new(&["stages=s2", "ssidsize=0"]);
    let mut d = h.probe();
    let pt = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 40, 1, 48);
    pt.map(
        &h.mem,
        &mut h.alloc,
        0x1000,
        0xa000,
        3,
        pte::s2(false, true),
    );
    pt.map(
        &h.mem,
        &mut h.alloc,
        0x2000,
        0xb000,
        3,
        pte::s2(true, false) | pte::DBM,
    );
    pt.map(
        &h.mem,
        &mut h.alloc,
        0x3000,
        0xc000,
        3,
        pte::s2(true, true) | pte::XN,
    );
    let ste = s2_ste(1, &pt, 5).with_s2ha(true).with_s2hd(true);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 1, ste);
    assert_eq!(h.fault(1, None, 0x1000, R), Some(EventId::Permission));
    assert_eq!(h.gpa(1, None, 0x1000, W), Some(0xa000));
    assert_eq!(h.gpa(1, None, 0x2000, W), Some(0xb000));
    assert_ne!(
        pt.get(&h.mem, 0x2000, 3) & pte::S2_WRITE,
        0,
        "S2AP[1] set: dirty"
    );
    assert_eq!(h.fault(1, None, 0x3000, R | X), Some(EventId::Permission));
    // Beyond the 40-bit IPA space: Translation, stage 2.
    assert_eq!(h.fault(1, None, 1 << 40, R), Some(EventId::Translation));
}

#[test]
fn walker_reports_fault_level() {
    let h = Harness::new(&[]);
    let mut a = crate::mock::PageAlloc::new(super::POOL, 1 << 20);
    let pt = PageTable::stage1(&h.mem, &mut a, Granule::G4K, 48, 48);
    pt.map(
        &h.mem,
        &mut a,
        0x1000,
        0x2000,
        3,
        pte::s1(true, false, false),
    );
    let w = walk(&h.mem, &pt.cfg, &mut Direct, &req(0x2000, R));
    assert!(matches!(w, Walk::Fault(f) if f.kind == FaultKind::Translation && f.level == 3));
    let w = walk(&h.mem, &pt.cfg, &mut Direct, &req(0x20_0000, R));
    assert!(matches!(w, Walk::Fault(f) if f.level == 2));
    let w = walk(&h.mem, &pt.cfg, &mut Direct, &req(1 << 40, R));
    assert!(matches!(w, Walk::Fault(f) if f.level == 0));
    let w = walk(&h.mem, &pt.cfg, &mut Direct, &req(1 << 30, R));
    assert!(matches!(w, Walk::Fault(f) if f.level == 1));
    let w = walk(&h.mem, &pt.cfg, &mut Direct, &req(0x1008, R));
    assert!(matches!(w, Walk::Mapped(l) if l.output(0x1008) == 0x2008 && !l.global));
    assert!(desc::Desc(pt.get(&h.mem, 0x1000, 3)).af());
}
