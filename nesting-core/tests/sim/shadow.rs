//! The shadow engine on the simulated host.

use std::collections::BTreeMap;
use std::sync::Arc;

use iommufd_sim::profile::HostProfile;
use iommufd_sim::{SimBacking, SimIommufd};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{DevId, Errno, HostOp, HwptFlags, IoasId, PtId};
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::shadow::*;
use nesting_core::types::{Access, Gpa, Iova, IovaRange, Pasid};
use proptest::prelude::*;

const PAGE: u64 = 0x1000;
/// Host VA of guest RAM region 0 (GPA 0..64 MiB) and region 1 (GPA 4 GiB
/// .. +16 MiB); GPA 64 MiB .. 4 GiB is not RAM.
const VA0: u64 = 0x7000_0000_0000;
const VA1: u64 = 0x7100_0000_0000;
const RAM1: u64 = 0x1_0000_0000;

struct Fixture {
    sim: Arc<SimIommufd>,
    host: SharedHost,
    ram: Arc<RamIoas>,
    dev: BoundDevice,
}

fn fixture() -> Fixture {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![
        RamRegion {
            gpa: Gpa(0),
            len: 64 << 20,
            backing: RamBacking::UserVa(VA0),
        },
        RamRegion {
            gpa: Gpa(RAM1),
            len: 16 << 20,
            backing: RamBacking::UserVa(VA1),
        },
    ])
    .unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    let dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    Fixture {
        sim,
        host,
        ram,
        dev,
    }
}

impl Fixture {
    fn domain(&mut self) -> ShadowDomain {
        let mut d = ShadowDomain::new(&self.host, &self.ram).unwrap();
        d.attach(&mut self.dev, None).unwrap();
        d
    }
}

/// The host memory a GPA is backed by, if it is RAM.
fn va_of(gpa: u64) -> Option<u64> {
    match gpa {
        g if g < 64 << 20 => Some(VA0 + g),
        g if (RAM1..RAM1 + (16 << 20)).contains(&g) => Some(VA1 + g - RAM1),
        _ => None,
    }
}

/// Every page of the IOAS equals `expect` (IOVA page -> (GPA, access)),
/// non-RAM GPAs and unlisted pages unmapped.
fn assert_host_matches(sim: &SimIommufd, ioas: IoasId, expect: &BTreeMap<u64, (u64, Access)>) {
    let mut mapped_pages = 0;
    for m in sim.mappings(ioas) {
        let mut iova = m.range.first.raw();
        loop {
            let want = expect
                .get(&iova)
                .and_then(|&(g, a)| va_of(g).map(|v| (v, a)));
            let got = sim.translate(ioas, Iova(iova));
            assert_eq!(
                got,
                want.map(|(v, a)| (SimBacking::UserVa(v), a)),
                "iova {iova:#x}"
            );
            mapped_pages += 1;
            if iova >= m.range.last.raw() - (PAGE - 1) {
                break;
            }
            iova += PAGE;
        }
    }
    let want_pages = expect.values().filter(|(g, _)| va_of(*g).is_some()).count();
    assert_eq!(mapped_pages, want_pages, "pages mapped on the host");
}

#[test]
fn map_2mib_in_4k_pieces_is_one_copy_and_no_new_pins() {
    let mut f = fixture();
    let mut d = f.domain();
    f.sim.reset_counters();
    for i in 0..512 {
        d.map(
            Iova(0x4000_0000 + i * PAGE),
            Gpa(0x20_0000 + i * PAGE),
            PAGE,
            Access::RW,
        )
        .unwrap();
    }
    let r = d.sync().unwrap();
    assert_eq!(r.host_calls, 1);
    assert_eq!(f.sim.calls(HostOp::IoasCopy), 1);
    assert_eq!(f.sim.calls(HostOp::IoasMap), 0);
    let pinned = f.sim.pinned_pages();
    assert_eq!(pinned, 512);

    // Unmapped and mapped again elsewhere: nothing new pinned.
    d.unmap(Iova(0x4000_0000), 0x20_0000).unwrap();
    d.map(Iova(0x8000_0000), Gpa(0x20_0000), 0x20_0000, Access::READ)
        .unwrap();
    d.sync().unwrap();
    assert_eq!(f.sim.pinned_pages(), pinned);
    let expect = (0..512)
        .map(|i| (0x8000_0000 + i * PAGE, (0x20_0000 + i * PAGE, Access::READ)))
        .collect();
    assert_host_matches(&f.sim, d.ioas().id(), &expect);
}

#[test]
fn partial_unmap_of_coalesced_run_unmaps_it_and_maps_the_rest() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x10_0000), Gpa(0x40_0000), 16 * PAGE, Access::RW)
        .unwrap();
    d.sync().unwrap();
    f.sim.reset_counters();
    d.unmap(Iova(0x10_4000), 2 * PAGE).unwrap();
    let r = d.sync().unwrap();
    // One unmap of the run, two COPYs for the head and the tail.
    assert_eq!((r.unmapped, r.mapped), (1, 2));
    let expect: BTreeMap<_, _> = (0..16u64)
        .filter(|i| !(4..6).contains(i))
        .map(|i| (0x10_0000 + i * PAGE, (0x40_0000 + i * PAGE, Access::RW)))
        .collect();
    assert_host_matches(&f.sim, d.ioas().id(), &expect);
    assert_eq!(d.host_runs().count(), 2);
}

#[test]
fn no_coalescing_across_non_contiguous_gpas_or_permissions() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x0), Gpa(0x1000), PAGE, Access::RW).unwrap();
    d.map(Iova(0x1000), Gpa(0x3000), PAGE, Access::RW).unwrap(); // GPA gap
    d.map(Iova(0x2000), Gpa(0x4000), PAGE, Access::READ)
        .unwrap(); // other access
    let r = d.sync().unwrap();
    assert_eq!(r.mapped, 3);
}

#[test]
fn coalescing_stops_at_a_ram_region_end() {
    let mut f = fixture();
    let mut d = f.domain();
    // GPA 64 MiB - 4 KiB is RAM, 64 MiB is not.
    d.map(Iova(0x0), Gpa((64 << 20) - PAGE), 2 * PAGE, Access::RW)
        .unwrap();
    let r = d.sync().unwrap();
    assert_eq!((r.mapped, r.skipped_bytes), (1, PAGE));
    assert_eq!(d.stats().skipped_bytes, PAGE);
}

#[test]
fn mmio_gpa_is_skipped_counted_and_not_fatal() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x1000), Gpa(0xfeb0_0000), 4 * PAGE, Access::RW)
        .unwrap();
    d.map(Iova(0x9000), Gpa(0x2000), PAGE, Access::RW).unwrap();
    let r = d.sync().unwrap();
    assert_eq!(r.skipped_bytes, 4 * PAGE);
    assert_eq!(r.mapped, 1);
    // The guest view keeps the mapping (the model answered the guest OK);
    // unmapping it later touches nothing on the host.
    assert_eq!(d.guest_mappings().count(), 2);
    d.unmap(Iova(0x1000), 4 * PAGE).unwrap();
    let r = d.sync().unwrap();
    assert_eq!(r.host_calls, 0);
}

#[test]
fn unmap_of_many_consecutive_runs_is_one_call() {
    let mut f = fixture();
    let mut d = f.domain();
    for i in 0..64 {
        // Every other GPA page: 64 separate runs.
        d.map(Iova(i * PAGE), Gpa(i * 2 * PAGE), PAGE, Access::RW)
            .unwrap();
        d.sync().unwrap();
    }
    f.sim.reset_counters();
    d.unmap(Iova(0), 64 * PAGE).unwrap();
    let r = d.sync().unwrap();
    assert_eq!(r.host_calls, 1);
    assert!(f.sim.mappings(d.ioas().id()).is_empty());
}

#[test]
fn misaligned_or_wrapping_ranges_are_refused_before_the_host() {
    let mut f = fixture();
    let mut d = f.domain();
    assert!(matches!(
        d.map(Iova(0x800), Gpa(0), PAGE, Access::RW),
        Err(ShadowError::BadRange { .. })
    ));
    assert!(d.map(Iova(0), Gpa(0), 0, Access::RW).is_err());
    assert!(
        d.map(Iova(u64::MAX - 0xfff), Gpa(0), 2 * PAGE, Access::RW)
            .is_err()
    );
    assert!(
        d.map(Iova(0), Gpa(u64::MAX - 0xfff), 2 * PAGE, Access::RW)
            .is_err()
    );
    // The last page of the address space is fine.
    d.map(Iova(u64::MAX - 0xfff), Gpa(0), PAGE, Access::RW)
        .unwrap();
    assert!(d.unmap(Iova(0), 0).is_err());
    assert_eq!(d.alignment(), PAGE);
}

#[test]
fn copy_refused_falls_back_to_map() {
    let mut f = fixture();
    let mut d = f.domain();
    f.sim.fail_nth(HostOp::IoasCopy, 1, Errno::EINVAL);
    d.map(Iova(0x10_0000), Gpa(RAM1 + 0x1000), 2 * PAGE, Access::READ)
        .unwrap();
    d.sync().unwrap();
    assert_eq!(d.stats().copy_fallbacks, 1);
    let expect = (0..2)
        .map(|i| {
            (
                0x10_0000 + i * PAGE,
                (RAM1 + 0x1000 + i * PAGE, Access::READ),
            )
        })
        .collect();
    assert_host_matches(&f.sim, d.ioas().id(), &expect);
}

#[test]
fn host_out_of_memory_rolls_back_and_reports_no_memory() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x0), Gpa(0x0), 8 * PAGE, Access::RW).unwrap();
    d.sync().unwrap();
    let before_guest: Vec<_> = d.guest_mappings().copied().collect();
    let before_host = f.sim.mappings(d.ioas().id());
    // Split the run (unmap + 2 maps); the second map fails.
    f.sim.fail_nth(HostOp::IoasCopy, 2, Errno::ENOMEM);
    d.unmap(Iova(0x3000), PAGE).unwrap();
    let e = d.sync().unwrap_err();
    assert!(e.is_no_memory(), "{e:?}");
    assert_eq!(
        d.guest_mappings().copied().collect::<Vec<_>>(),
        before_guest
    );
    assert_eq!(f.sim.mappings(d.ioas().id()), before_host);
    assert_eq!(d.stats().failed_syncs, 1);
    // And the next operation works.
    d.unmap(Iova(0x3000), PAGE).unwrap();
    d.sync().unwrap();
    assert_eq!(f.sim.mappings(d.ioas().id()).len(), 2);
}

#[test]
fn failed_rollback_empties_the_ioas_then_rebuilds_it() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x0), Gpa(0x0), 8 * PAGE, Access::RW).unwrap();
    d.sync().unwrap();
    // The split's second COPY fails, and so do the MAP fallback and the
    // rollback's re-install of the original run.
    f.sim.fail_nth(HostOp::IoasCopy, 2, Errno::EIO);
    f.sim.fail_nth(HostOp::IoasMap, 1, Errno::EIO);
    f.sim.fail_nth(HostOp::IoasCopy, 3, Errno::EIO);
    f.sim.fail_nth(HostOp::IoasMap, 2, Errno::EIO);
    d.unmap(Iova(0x3000), PAGE).unwrap();
    assert!(d.sync().is_err());
    // Nothing the guest did not map is reachable: the IOAS is empty.
    assert!(f.sim.mappings(d.ioas().id()).is_empty());
    assert!(d.has_staged(), "a rebuild is pending");
    let r = d.sync().unwrap();
    assert!(r.mapped >= 1);
    let expect = (0..8).map(|i| (i * PAGE, (i * PAGE, Access::RW))).collect();
    assert_host_matches(&f.sim, d.ioas().id(), &expect);
}

/// A domain with `f.dev` and a second device whose sync, rollback and
/// emptying of the IOAS all failed: both devices blocked (quarantine).
fn quarantined(f: &mut Fixture) -> (ShadowDomain, BoundDevice) {
    let mut d = f.domain();
    let mut dev2 = BoundDevice::bind(&f.host, f.sim.add_device(0)).unwrap();
    d.attach(&mut dev2, None).unwrap();
    d.map(Iova(0x0), Gpa(0x0), 8 * PAGE, Access::RW).unwrap();
    d.sync().unwrap();
    f.sim.fail_nth(HostOp::IoasCopy, 2, Errno::EIO);
    f.sim.fail_nth(HostOp::IoasMap, 1, Errno::EIO);
    f.sim.fail_nth(HostOp::IoasUnmap, 2, Errno::EIO);
    f.sim.fail_nth(HostOp::IoasUnmap, 3, Errno::EIO);
    d.unmap(Iova(0x3000), PAGE).unwrap();
    assert!(d.sync().is_err());
    f.sim.clear_injections();
    for id in [f.dev.id(), dev2.id()] {
        assert_eq!(f.sim.attachment(id, None), None, "blocked");
    }
    (d, dev2)
}

#[test]
fn a_rebuild_that_cannot_bring_every_device_back_leaves_them_all_blocked() {
    // Found by the shadow_engine fuzz target: the first device was back on
    // the IOAS when the second's attach failed, and the domain, still
    // quarantined, later moved to identity without touching it.
    let mut f = fixture();
    let (mut d, dev2) = quarantined(&mut f);
    f.sim.fail_nth(HostOp::Attach, 2, Errno::ENOMEM);
    assert!(d.sync().is_err());
    for id in [f.dev.id(), dev2.id()] {
        assert_eq!(f.sim.attachment(id, None), None, "blocked again");
    }
    d.set_identity(true).unwrap();
    let r = d.sync().unwrap();
    assert!(r.mapped >= 1, "rebuilt");
    let ram = f.ram.ioas().id();
    for id in [f.dev.id(), dev2.id()] {
        assert_eq!(f.sim.attachment(id, None), Some(PtId::Ioas(ram)));
    }
}

#[test]
fn attach_to_a_quarantined_domain_rebuilds_it_but_leaves_staged_changes_staged() {
    // Found by the shadow_engine fuzz target: the rebuild an attach runs
    // first also applied the guest's staged changes, before the model's
    // sync point, so the guest view moved without a sync.
    let mut f = fixture();
    let (mut d, _dev2) = quarantined(&mut f);
    d.map(Iova(0x20_0000), Gpa(0x1000), PAGE, Access::RW)
        .unwrap();
    let mut dev3 = BoundDevice::bind(&f.host, f.sim.add_device(0)).unwrap();
    d.attach(&mut dev3, None).unwrap();
    assert!(d.has_staged(), "the guest's map waits for its sync");
    assert!(d.guest_overlapping(0x20_0000, 0x20_0fff).is_empty());
    let expect: BTreeMap<u64, (u64, Access)> =
        (0..8).map(|i| (i * PAGE, (i * PAGE, Access::RW))).collect();
    assert_host_matches(&f.sim, d.ioas().id(), &expect);
    assert_eq!(
        f.sim.attachment(f.dev.id(), None),
        Some(PtId::Ioas(d.ioas().id())),
        "back on the rebuilt IOAS"
    );
    d.sync().unwrap();
    assert_eq!(d.guest_overlapping(0x20_0000, 0x20_0fff).len(), 1);
}

#[test]
fn device_joining_sees_existing_mappings_and_leaving_blocks_it() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x5000), Gpa(0x9000), PAGE, Access::RW).unwrap();
    d.sync().unwrap();
    let mut dev2 = BoundDevice::bind(&f.host, f.sim.add_device(0)).unwrap();
    f.sim.reset_counters();
    d.attach(&mut dev2, None).unwrap();
    assert_eq!(
        f.sim.calls(HostOp::IoasCopy) + f.sim.calls(HostOp::IoasMap),
        0
    );
    assert_eq!(
        f.sim.attachment(dev2.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
    d.detach(&mut dev2, None).unwrap();
    assert_eq!(f.sim.attachment(dev2.id(), None), None);
    assert_eq!(d.devices(), &[(f.dev.id(), None)]);
}

#[test]
fn hotplugged_device_that_cannot_share_the_ioas_is_refused_and_nothing_changes() {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::None.spec()));
    let host: SharedHost = sim.clone();
    let mut msi = HostProfile::VtdNonest.spec();
    msi.reserved = vec![IovaRange::new(Iova(0xfee0_0000), Iova(0xfeef_ffff)).unwrap()];
    let unit1 = sim.add_iommu(msi);
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(0),
        len: 1 << 20,
        backing: RamBacking::UserVa(VA0),
    }])
    .unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    let mut a = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let mut d = ShadowDomain::new(&host, &ram).unwrap();
    d.attach(&mut a, None).unwrap();
    d.map(Iova(0xfee0_0000), Gpa(0x1000), PAGE, Access::RW)
        .unwrap();
    d.sync().unwrap();
    let before = sim.mappings(d.ioas().id());

    let mut b = BoundDevice::bind(&host, sim.add_device(unit1)).unwrap();
    assert!(d.attach(&mut b, None).is_err());
    assert_eq!(sim.attachment(b.id(), None), None);
    assert_eq!(sim.mappings(d.ioas().id()), before);
    assert_eq!(d.devices(), &[(a.id(), None)]);
    assert_eq!(
        sim.attachment(a.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
}

#[test]
fn identity_switch_reattaches_without_remapping() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x5000), Gpa(0x9000), PAGE, Access::RW).unwrap();
    d.sync().unwrap();
    f.sim.reset_counters();
    d.set_identity(true).unwrap();
    assert_eq!(
        f.sim.attachment(f.dev.id(), None),
        Some(PtId::Ioas(f.ram.ioas().id()))
    );
    d.set_identity(false).unwrap();
    assert_eq!(
        f.sim.attachment(f.dev.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
    assert_eq!(f.sim.calls(HostOp::Replace), 2);
    for op in [HostOp::IoasMap, HostOp::IoasCopy, HostOp::IoasUnmap] {
        assert_eq!(f.sim.calls(op), 0, "{op}");
    }
}

#[test]
fn identity_switch_failure_switches_back() {
    let mut f = fixture();
    let mut d = f.domain();
    let mut dev2 = BoundDevice::bind(&f.host, f.sim.add_device(0)).unwrap();
    d.attach(&mut dev2, None).unwrap();
    f.sim.fail_nth(HostOp::Replace, 2, Errno::EIO);
    assert!(d.set_identity(true).is_err());
    assert!(!d.is_identity());
    assert_eq!(
        f.sim.attachment(f.dev.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
    assert_eq!(
        f.sim.attachment(dev2.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
}

#[test]
fn identity_switch_failure_that_cannot_switch_back_blocks_the_device() {
    // Found by the shadow_engine fuzz target: the second device's switch
    // fails, and so does the first one's switch back; it stayed on the
    // RAM IOAS (all of guest RAM) while the domain said translation on.
    let mut f = fixture();
    let mut d = f.domain();
    let mut dev2 = BoundDevice::bind(&f.host, f.sim.add_device(0)).unwrap();
    d.attach(&mut dev2, None).unwrap();
    f.sim.fail_nth(HostOp::Replace, 2, Errno::ENOSPC);
    f.sim.fail_nth(HostOp::Replace, 3, Errno::ENOSPC);
    assert!(d.set_identity(true).is_err());
    assert!(!d.is_identity());
    assert_eq!(f.sim.attachment(f.dev.id(), None), None, "blocked");
    assert_eq!(
        f.sim.attachment(dev2.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
}

/// IOVAs (first, last) the shadow IOAS maps.
fn host_iovas(f: &Fixture, d: &ShadowDomain) -> Vec<(u64, u64)> {
    f.sim
        .mappings(d.ioas().id())
        .iter()
        .map(|m| (m.range.first.raw(), m.range.last.raw()))
        .collect()
}

#[test]
fn iovas_the_ioas_cannot_hold_are_skipped_counted_and_not_fatal() {
    // The VT-d host's device reserves its MSI window and has a 48-bit
    // aperture: a guest mapping there is refused by IOMMU_IOAS_MAP, which
    // would fail the sync (the model's invalidation) every time.
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0xfee0_0000), Gpa(0x1000), PAGE, Access::RW)
        .unwrap();
    d.map(Iova(1 << 48), Gpa(0x2000), 2 * PAGE, Access::RW)
        .unwrap();
    d.map(Iova(0x9000), Gpa(0x3000), PAGE, Access::RW).unwrap();
    let r = d.sync().unwrap();
    assert_eq!(r.unmappable_bytes, 3 * PAGE);
    assert_eq!(r.mapped, 1);
    assert_eq!(host_iovas(&f, &d), vec![(0x9000, 0x9fff)]);
    assert_eq!(d.guest_mappings().count(), 3, "the guest view keeps them");
    assert_eq!(d.stats().unmappable_bytes, 3 * PAGE);
    assert!(!d.has_staged(), "settled");
}

#[test]
fn skipped_iovas_are_mirrored_once_the_devices_that_reserved_them_leave() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(1 << 48), Gpa(0x2000), PAGE, Access::RW).unwrap();
    d.map(Iova(0x9000), Gpa(0x3000), PAGE, Access::RW).unwrap();
    assert_eq!(d.sync().unwrap().unmappable_bytes, PAGE);
    d.detach(&mut f.dev, None).unwrap();
    assert!(d.has_staged(), "the skipped gap is reconsidered");
    let r = d.sync().unwrap();
    assert_eq!((r.unmappable_bytes, r.mapped), (0, 1));
    assert_eq!(
        host_iovas(&f, &d),
        vec![(0x9000, 0x9fff), (1 << 48, (1 << 48) + PAGE - 1)]
    );
    // The device cannot come back while the IOAS holds what it reserves:
    // the host refuses the attach and nothing changes.
    assert!(d.attach(&mut f.dev, None).is_err());
    assert_eq!(f.sim.attachment(f.dev.id(), None), None);
}

#[test]
fn a_domain_whose_ranges_narrowed_during_a_rebuild_still_settles() {
    // Found by the shadow_engine fuzz target: with identity on (devices on
    // the RAM IOAS) the shadow IOAS has no device and holds any IOVA; a
    // mapping at the top of the address space is mirrored. A failed
    // rollback empties the IOAS; identity off then attaches the device to
    // the empty IOAS (48-bit aperture), and every rebuild failed on the
    // top mapping: the domain never settled.
    let mut f = fixture();
    let mut d = f.domain();
    d.set_identity(true).unwrap();
    d.map(Iova(0xffff_ffff_fffe_f000), Gpa(0x1000), PAGE, Access::RW)
        .unwrap();
    d.sync().unwrap();
    assert_eq!(
        host_iovas(&f, &d).len(),
        1,
        "mirrored: no device reserves it"
    );
    // The next sync's copy fails and so does its rollback's re-install of
    // the run it replaced.
    d.map(
        Iova(0xffff_ffff_fffe_f000),
        Gpa(0x1000),
        2 * PAGE,
        Access::RW,
    )
    .unwrap();
    f.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    f.sim.fail_nth(HostOp::IoasCopy, 2, Errno::ENOMEM);
    assert!(d.sync().is_err());
    assert!(d.has_staged(), "a rebuild is due");
    assert!(host_iovas(&f, &d).is_empty(), "emptied");
    d.set_identity(false).unwrap();
    let r = d.sync().unwrap();
    assert_eq!(r.unmappable_bytes, PAGE);
    assert!(!d.has_staged());
    assert!(host_iovas(&f, &d).is_empty());
}

#[derive(Clone, Debug)]
enum GuestOp {
    Map {
        iova_page: u64,
        gpa_page: u64,
        pages: u64,
        write: bool,
    },
    Unmap {
        iova_page: u64,
        pages: u64,
    },
    Sync,
    SyncFailing {
        op: u8,
        nth: u64,
        nomem: bool,
    },
}

fn guest_op() -> impl Strategy<Value = GuestOp> {
    // GPA pages 0..0x4800 cover RAM region 0's first pages and (from
    // 0x4000) pages that are not RAM.
    let gpa = prop_oneof![0..64u64, 0x3ff0..0x4010u64];
    prop_oneof![
        4 => (0..96u64, gpa, 1..12u64, any::<bool>())
            .prop_map(|(iova_page, gpa_page, pages, write)| GuestOp::Map { iova_page, gpa_page, pages, write }),
        2 => (0..96u64, 1..24u64).prop_map(|(iova_page, pages)| GuestOp::Unmap { iova_page, pages }),
        2 => Just(GuestOp::Sync),
        1 => (0..3u8, 1..4u64, any::<bool>()).prop_map(|(op, nth, nomem)| GuestOp::SyncFailing { op, nth, nomem }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Random guest map/unmap streams, with syncs and host failures at any
    /// op: after every sync the host IOAS equals the reference (the guest
    /// mappings as of the last successful sync), and a failed sync changes
    /// nothing.
    #[test]
    fn host_ioas_equals_reference_under_random_streams_and_failures(ops in proptest::collection::vec(guest_op(), 1..60)) {
        let mut f = fixture();
        let mut d = f.domain();
        // Page-granular reference: committed and staged.
        let mut committed: BTreeMap<u64, (u64, Access)> = BTreeMap::new();
        let mut staged = committed.clone();
        // A sync either commits what was staged or leaves everything as it
        // was; injected failures that did not fire may fail any later sync.
        let sync = |d: &mut ShadowDomain, committed: &mut BTreeMap<u64, (u64, Access)>, staged: &mut BTreeMap<u64, (u64, Access)>| {
            match d.sync() {
                Ok(_) => *committed = staged.clone(),
                Err(_) => *staged = committed.clone(),
            }
        };
        for op in ops {
            match op {
                GuestOp::Map { iova_page, gpa_page, pages, write } => {
                    let access = if write { Access::RW } else { Access::READ };
                    d.map(Iova(iova_page * PAGE), Gpa(gpa_page * PAGE), pages * PAGE, access).unwrap();
                    for i in 0..pages {
                        staged.insert((iova_page + i) * PAGE, ((gpa_page + i) * PAGE, access));
                    }
                }
                GuestOp::Unmap { iova_page, pages } => {
                    d.unmap(Iova(iova_page * PAGE), pages * PAGE).unwrap();
                    for i in 0..pages {
                        staged.remove(&((iova_page + i) * PAGE));
                    }
                }
                GuestOp::Sync => sync(&mut d, &mut committed, &mut staged),
                GuestOp::SyncFailing { op, nth, nomem } => {
                    let host_op = [HostOp::IoasCopy, HostOp::IoasUnmap, HostOp::IoasMap][op as usize];
                    let errno = if nomem { Errno::ENOMEM } else { Errno::EIO };
                    f.sim.fail_nth(host_op, nth, errno);
                    sync(&mut d, &mut committed, &mut staged);
                }
            }
            if !d.has_staged() {
                assert_host_matches(&f.sim, d.ioas().id(), &committed);
            }
        }
        // Injections fire once each: a few syncs always get through, and a
        // pending rebuild completes.
        for _ in 0..16 {
            sync(&mut d, &mut committed, &mut staged);
            if !d.has_staged() {
                break;
            }
        }
        prop_assert!(!d.has_staged());
        assert_host_matches(&f.sim, d.ioas().id(), &committed);
        // COPY shares the RAM IOAS's pins: each distinct RAM page mapped is
        // pinned once, however many IOVAs map it.
        if d.stats().copy_fallbacks == 0 {
            let mut gpas: Vec<u64> = committed.values().map(|&(g, _)| g).filter(|g| va_of(*g).is_some()).collect();
            gpas.sort_unstable();
            gpas.dedup();
            prop_assert_eq!(f.sim.pinned_pages(), gpas.len() as u64);
        }
    }
}

/// The IOAS behind what `(dev, pasid)` is attached to.
fn attached_ioas(sim: &SimIommufd, dev: DevId, pasid: Option<Pasid>) -> Option<IoasId> {
    match sim.attachment(dev, pasid)? {
        PtId::Ioas(i) => Some(i),
        PtId::Hwpt(h) => sim.hwpt(h).map(|h| h.ioas),
        PtId::Viommu(_) => None,
    }
}

#[test]
fn pasids_join_the_domain_on_a_pasid_capable_hwpt_with_their_rid() {
    let mut f = fixture();
    let mut d = f.domain();
    d.map(Iova(0x5000), Gpa(0x9000), PAGE, Access::RW).unwrap();
    d.sync().unwrap();
    let id = f.dev.id();
    assert_eq!(f.sim.attachment(id, None), Some(PtId::Ioas(d.ioas().id())));
    for p in [5, 9] {
        d.attach(&mut f.dev, Pasid::new(p)).unwrap();
    }
    // RID and both PASIDs on one HWPT, allocated with ALLOC_PASID over the
    // domain's IOAS: they see its mappings.
    let h = f.sim.attached_hwpt(id, None).unwrap();
    assert!(f.sim.hwpt(h).unwrap().flags.contains(HwptFlags::PASID));
    for p in [5, 9] {
        assert_eq!(f.sim.attached_hwpt(id, Pasid::new(p)), Some(h));
    }
    assert_eq!(
        attached_ioas(&f.sim, id, Pasid::new(5)),
        Some(d.ioas().id())
    );
    // Identity and back: every PASID follows, each time onto a PASID HWPT
    // over the right IOAS.
    d.set_identity(true).unwrap();
    for p in [None, Pasid::new(5), Pasid::new(9)] {
        assert_eq!(
            attached_ioas(&f.sim, id, p),
            Some(f.ram.ioas().id()),
            "{p:?}"
        );
    }
    d.set_identity(false).unwrap();
    for p in [None, Pasid::new(5), Pasid::new(9)] {
        assert_eq!(attached_ioas(&f.sim, id, p), Some(d.ioas().id()), "{p:?}");
    }
    // Leaving: the PASID is blocked, the RID stays.
    d.detach(&mut f.dev, Pasid::new(9)).unwrap();
    assert_eq!(f.sim.attachment(id, Pasid::new(9)), None);
    assert_eq!(attached_ioas(&f.sim, id, None), Some(d.ioas().id()));
}

#[test]
fn pasid_on_a_host_without_pasid_domains_is_refused_and_nothing_changes() {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::Smmuv3S2only.spec()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(0x4000_0000),
        len: 1 << 20,
        backing: RamBacking::UserVa(VA0),
    }])
    .unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    let mut dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let mut d = ShadowDomain::new(&host, &ram).unwrap();
    d.attach(&mut dev, None).unwrap();
    assert!(d.attach(&mut dev, Pasid::new(1)).is_err());
    assert_eq!(
        sim.attachment(dev.id(), None),
        Some(PtId::Ioas(d.ioas().id()))
    );
    assert_eq!(sim.attachment(dev.id(), Pasid::new(1)), None);
    assert_eq!(d.devices(), &[(dev.id(), None)]);
}

#[test]
fn rid_in_one_domain_and_pasid_in_another_attach_when_the_rid_is_pasid_capable() {
    let mut f = fixture();
    let id = f.dev.id();
    let mut a = ShadowDomain::new(&f.host, &f.ram).unwrap();
    let mut b = ShadowDomain::new(&f.host, &f.ram).unwrap();
    a.map(Iova(0x5000), Gpa(0x9000), PAGE, Access::RW).unwrap();
    a.sync().unwrap();
    b.map(Iova(0x5000), Gpa(0xa000), PAGE, Access::READ)
        .unwrap();
    b.sync().unwrap();
    // The RID on A's automatic domain: iommufd refuses a PASID elsewhere.
    a.attach(&mut f.dev, None).unwrap();
    assert!(b.attach(&mut f.dev, Pasid::new(5)).is_err());
    assert_eq!(f.sim.attachment(id, Pasid::new(5)), None);
    assert!(b.devices().is_empty());
    // Moved onto its PASID-capable HWPT over A's IOAS: the PASID joins B.
    a.attach_pasid_capable(&mut f.dev, None).unwrap();
    let h = f.sim.attached_hwpt(id, None).unwrap();
    assert!(f.sim.hwpt(h).unwrap().flags.contains(HwptFlags::PASID));
    assert_eq!(attached_ioas(&f.sim, id, None), Some(a.ioas().id()));
    b.attach(&mut f.dev, Pasid::new(5)).unwrap();
    assert_eq!(
        attached_ioas(&f.sim, id, Pasid::new(5)),
        Some(b.ioas().id())
    );
    // Identity keeps the RID PASID-capable (its PASID is still attached).
    a.set_identity(true).unwrap();
    let h = f.sim.attached_hwpt(id, None).unwrap();
    assert!(f.sim.hwpt(h).unwrap().flags.contains(HwptFlags::PASID));
    assert_eq!(attached_ioas(&f.sim, id, None), Some(f.ram.ioas().id()));
    // Leaving A drops the mark and A's HWPT; the PASID stays in B.
    a.detach(&mut f.dev, None).unwrap();
    assert_eq!(f.sim.attachment(id, None), None);
    assert_eq!(
        attached_ioas(&f.sim, id, Pasid::new(5)),
        Some(b.ioas().id())
    );
}
