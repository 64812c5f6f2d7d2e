//! The nested engine on the simulated host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{
    DevId, Errno, HostOp, HwptData, HwptFlags, PageResponseCode, VtdS1Flags, VtdS1Invalidation,
};
use nesting_core::nested::*;
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::types::{Access, Gpa, Iova, IovaRange, Pasid};

struct Fixture {
    sim: Arc<SimIommufd>,
    host: SharedHost,
    ram: Arc<RamIoas>,
}

fn fixture(profile: HostProfile) -> Fixture {
    let sim = Arc::new(SimIommufd::with_host(profile.spec()));
    let host: SharedHost = sim.clone();
    // Arm hosts reserve an MSI window at 128 MiB that an attach refuses to
    // see mapped (EADDRINUSE); guest RAM of Arm's `virt` machine starts at
    // 1 GiB, x86's at 0.
    let base = if profile == HostProfile::Smmuv3Nest {
        0x4000_0000
    } else {
        0
    };
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(base),
        len: 256 << 20,
        backing: RamBacking::UserVa(0x7000_0000_0000),
    }])
    .unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    Fixture { sim, host, ram }
}

impl Fixture {
    fn engine(&self, cfg: NestedConfig) -> NestedEngine {
        NestedEngine::new(&self.host, &self.ram, cfg).unwrap()
    }

    fn device(&self, unit: u32) -> BoundDevice {
        BoundDevice::bind(&self.host, self.sim.add_device(unit)).unwrap()
    }

    /// Adds a device of unit 0 as `vsid` in context `initial`; returns its
    /// host ID.
    fn add(&self, e: &mut NestedEngine, vsid: u64, initial: NestedContext) -> DevId {
        let dev = self.device(0);
        let id = dev.id();
        e.add_device(vsid, dev, initial)
            .map_err(|(e, _)| e)
            .unwrap();
        id
    }
}

fn vtd_s1(pgtbl: u64) -> NestedContext {
    NestedContext::VtdS1 {
        flags: VtdS1Flags::empty(),
        pgtbl_addr: pgtbl,
        addr_width: 48,
    }
}

fn inv(addr: u64) -> VtdS1Invalidation {
    VtdS1Invalidation {
        addr,
        npages: 1,
        leaf: true,
    }
}

#[test]
fn vtd_device_starts_in_bypass_on_the_nest_parent() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    let h = f.sim.attached_hwpt(id, None).unwrap();
    let desc = f.sim.hwpt(h).unwrap();
    assert!(desc.flags.contains(HwptFlags::NEST_PARENT));
    assert_eq!(desc.ioas, f.ram.ioas().id());
    assert_eq!(e.parents(), 1);
}

#[test]
fn vtd_context_change_replaces_then_destroys_the_old_hwpt() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, vtd_s1(0x1000)).unwrap();
    let first = f.sim.attached_hwpt(id, None).unwrap();
    assert!(matches!(
        f.sim.hwpt(first).unwrap().data,
        HwptData::VtdS1 {
            pgtbl_addr: 0x1000,
            addr_width: 48,
            ..
        }
    ));
    f.sim.reset_counters();
    e.install(0x10, None, vtd_s1(0x2000)).unwrap();
    assert_eq!(f.sim.calls(HostOp::Replace), 1);
    assert_eq!(
        f.sim.calls(HostOp::Detach),
        0,
        "never left without a domain"
    );
    assert!(f.sim.hwpt(first).is_none(), "old HWPT destroyed");
    // The same context again costs nothing.
    f.sim.reset_counters();
    e.install(0x10, None, vtd_s1(0x2000)).unwrap();
    assert_eq!(
        f.sim.calls(HostOp::HwptAlloc) + f.sim.calls(HostOp::Replace),
        0
    );
}

#[test]
fn failed_install_keeps_the_old_context_attached() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, vtd_s1(0x1000)).unwrap();
    let before = f.sim.attached_hwpt(id, None);
    // Address width 39 is not a first-stage width: the kernel refuses it.
    let bad = NestedContext::VtdS1 {
        flags: VtdS1Flags::empty(),
        pgtbl_addr: 0x3000,
        addr_width: 39,
    };
    assert!(e.install(0x10, None, bad).is_err());
    f.sim.fail_nth(HostOp::Replace, 1, Errno::EIO);
    assert!(e.install(0x10, None, vtd_s1(0x4000)).is_err());
    assert_eq!(f.sim.attached_hwpt(id, None), before);
    assert_eq!(e.context(0x10, None), Some(vtd_s1(0x1000)));
}

#[test]
fn vtd_pasids_pass_through_each_with_its_own_hwpt() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, vtd_s1(0x1000)).unwrap();
    for p in [1u32, 7, 0xf_ffff] {
        e.install(0x10, Pasid::new(p), vtd_s1(0x10_0000 * u64::from(p)))
            .unwrap();
    }
    for p in [1u32, 7, 0xf_ffff] {
        let h = f.sim.attached_hwpt(id, Pasid::new(p)).unwrap();
        assert!(
            matches!(f.sim.hwpt(h).unwrap().data, HwptData::VtdS1 { pgtbl_addr, .. } if pgtbl_addr == 0x10_0000 * u64::from(p))
        );
    }
    e.remove_pasid(0x10, Pasid::new(7).unwrap()).unwrap();
    assert_eq!(f.sim.attached_hwpt(id, Pasid::new(7)), None);
    assert!(f.sim.attached_hwpt(id, Pasid::new(1)).is_some());
}

#[test]
fn vtd_abort_blocks_the_device() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, NestedContext::Abort).unwrap();
    assert_eq!(f.sim.attachment(id, None), None);
}

#[test]
fn sixty_four_invalidations_between_syncs_are_one_call() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, vtd_s1(0x1000)).unwrap();
    f.sim.reset_counters();
    for i in 0..64 {
        assert!(e.queue_vtd(0x10, None, inv(i * 0x1000), i));
    }
    let r = e.flush();
    assert_eq!((r.calls, r.handled), (1, 64));
    assert!(r.failures.is_empty());
    assert_eq!(f.sim.calls(HostOp::HwptInvalidate), 1);
    assert_eq!(f.sim.invalidation_entries(), 64);
}

#[test]
fn bad_entry_in_the_middle_names_its_tag_and_the_unsent_ones() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, vtd_s1(0x1000)).unwrap();
    e.queue_vtd(0x10, None, inv(0x1000), 100);
    e.queue_vtd(0x10, None, inv(0x1234), 101); // misaligned: EINVAL
    e.queue_vtd(0x10, None, inv(0x3000), 102);
    let r = e.flush();
    assert_eq!(r.handled, 1);
    assert_eq!(r.failures.len(), 1);
    assert_eq!(r.failures[0].tag, 101);
    assert_eq!(r.failures[0].error.errno, Errno::EINVAL);
    assert_eq!(r.failures[0].unsent, vec![102]);
    assert_eq!(e.queued(), 0);
}

#[test]
fn invalidation_for_a_context_without_nested_hwpt_is_not_queued() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x10, NestedContext::Bypass);
    assert!(!e.queue_vtd(0x10, None, inv(0), 1));
    assert!(!e.queue_vtd(0x99, None, inv(0), 1));
    assert_eq!(e.flush().calls, 0);
}

fn ste_s1(cd: u64) -> [u64; 2] {
    // V=1, Cfg=0b101 (S1 translate), S1ContextPtr, S1CDMax=0; word 1: S1DSS=0.
    [1 | (0b101 << 1) | (cd & 0x000f_ffff_ffff_ffc0), 0]
}

#[test]
fn smmuv3_device_gets_viommu_vdevice_and_masked_ste() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x800, NestedContext::Abort);
    assert_eq!(e.viommus().len(), 1);
    let abort = f.sim.attached_hwpt(id, None).unwrap();
    assert_eq!(
        f.sim.hwpt(abort).unwrap().data,
        HwptData::Smmuv3 { ste: [1, 0] }
    );
    // Guest bits the kernel does not take (S2 fields in word 1, reserved
    // bits) are dropped.
    let mut ste = ste_s1(0x8_0000);
    ste[1] |= 0xffff_0000_0000_0000;
    e.install(0x800, None, NestedContext::Smmuv3 { ste })
        .unwrap();
    let h = f.sim.attached_hwpt(id, None).unwrap();
    assert_eq!(
        f.sim.hwpt(h).unwrap().data,
        HwptData::Smmuv3 {
            ste: ste_s1(0x8_0000)
        }
    );
    // Back to bypass: the pre-allocated HWPT, no new allocation.
    f.sim.reset_counters();
    e.install(0x800, None, NestedContext::Bypass).unwrap();
    assert_eq!(f.sim.calls(HostOp::HwptAlloc), 0);
    assert!(f.sim.hwpt(h).is_none());
}

#[test]
fn smmuv3_per_pasid_attach_is_refused_cleanly() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x800, NestedContext::Abort);
    let r = e.install(
        0x800,
        Pasid::new(1),
        NestedContext::Smmuv3 {
            ste: ste_s1(0x8_0000),
        },
    );
    assert!(matches!(r, Err(NestedError::Unsupported { .. })));
}

#[test]
fn smmuv3_vsid_used_twice_is_refused_and_the_device_handed_back() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x800, NestedContext::Abort);
    let (err, dev) = e
        .add_device(0x800, f.device(0), NestedContext::Abort)
        .unwrap_err();
    assert!(matches!(err, NestedError::Duplicate { vsid: 0x800 }));
    assert_eq!(f.sim.attachment(dev.id(), None), None);
}

#[test]
fn devices_behind_another_physical_smmu_get_their_own_parent() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let unit1 = f.sim.add_iommu(HostProfile::Smmuv3Nest.spec());
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x800, NestedContext::Abort);
    f.add(&mut e, 0x801, NestedContext::Abort);
    assert_eq!(e.parents(), 1);
    e.add_device(0x900, f.device(unit1), NestedContext::Bypass)
        .unwrap();
    assert_eq!(e.parents(), 2);
    // A TLBI by ASID goes to both vIOMMUs; a CFGI_STE to one.
    assert_eq!(e.queue_smmuv3(None, [0x11 | (1 << 48), 0], 1), 2);
    assert_eq!(e.queue_smmuv3(Some(0x900), [0x03 | (0x900 << 32), 0], 2), 1);
    let r = e.flush();
    assert_eq!(r.calls, 2);
}

#[test]
fn remove_device_detaches_everything_and_hands_it_back() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, None, vtd_s1(0x1000)).unwrap();
    e.install(0x10, Pasid::new(3), vtd_s1(0x2000)).unwrap();
    let dev = e.remove_device(0x10).unwrap();
    assert_eq!(dev.id(), id);
    assert_eq!(f.sim.attachment(id, None), None);
    assert_eq!(f.sim.attachment(id, Pasid::new(3)), None);
    assert!(e.device(0x10).is_none());
}

#[test]
fn a_pasid_left_attached_by_a_refused_detach_is_detached_when_the_device_rejoins() {
    // Found by the nested_engine fuzz target: the PASID's detach failed
    // when the device left, and it came back with that PASID still on the
    // stage-2 parent (all of guest RAM) though its new context had none.
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig::default());
    let id = f.add(&mut e, 0x11, NestedContext::Bypass);
    e.install(0x11, Pasid::new(1), NestedContext::Bypass)
        .unwrap();
    f.sim.fail_nth(HostOp::Detach, 1, Errno::EOPNOTSUPP);
    let dev = e.remove_device(0x11).unwrap();
    assert!(
        f.sim.attachment(id, Pasid::new(1)).is_some(),
        "left attached"
    );
    // Rejoining detaches it first; if that fails too, the device is refused.
    f.sim.fail_nth(HostOp::Detach, 1, Errno::EOPNOTSUPP);
    let (_, dev) = e
        .add_device(0x11, dev, NestedContext::Abort)
        .expect_err("a PASID that cannot be detached");
    assert!(e.device(0x11).is_none());
    e.add_device(0x11, dev, NestedContext::Abort)
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(f.sim.attachment(id, Pasid::new(1)), None);
    assert_eq!(e.context(0x11, Pasid::new(1)), None);
}

#[test]
fn dropping_the_engine_destroys_every_object_quietly() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let destroys_before = f.sim.calls(HostOp::Destroy);
    {
        let mut e = f.engine(NestedConfig {
            iopf: true,
            ..Default::default()
        });
        f.add(&mut e, 0x800, NestedContext::Abort);
        e.install(
            0x800,
            None,
            NestedContext::Smmuv3 {
                ste: ste_s1(0x8_0000),
            },
        )
        .unwrap();
    }
    // Fault queue, parent, vIOMMU, vEVENTQ, abort, bypass, nested, vDEVICE.
    assert_eq!(f.sim.calls(HostOp::Destroy) - destroys_before, 8);
    // Every destroy succeeded: the RAM IOAS is no longer in use and goes too.
    let ram = f.ram.ioas().id();
    drop(f.ram);
    assert!(f.sim.mappings(ram).is_empty());
}

#[test]
fn vevents_are_read_and_gaps_reported_as_lost() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut e = f.engine(NestedConfig {
        veventq_depth: 2,
        ..Default::default()
    });
    f.add(&mut e, 0x800, NestedContext::Abort);
    let v = e.viommus()[0];
    let rec = |n: u8| vec![n; 32];
    f.sim.inject_vevent(v, rec(1)).unwrap();
    let now = Instant::now();
    assert_eq!(
        e.poll_events(now).unwrap(),
        vec![NestedEvent::Smmuv3 { record: rec(1) }]
    );
    // Three events into a queue of two: the kernel drops one and says so.
    for n in 2..5 {
        f.sim.inject_vevent(v, rec(n)).unwrap();
    }
    let evs = e.poll_events(now).unwrap();
    assert!(evs.contains(&NestedEvent::Lost), "{evs:?}");
    assert!(evs.contains(&NestedEvent::Smmuv3 { record: rec(2) }));
}

#[test]
fn closed_veventq_is_reported_not_dropped() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut e = f.engine(NestedConfig::default());
    f.add(&mut e, 0x800, NestedContext::Abort);
    let v = e.viommus()[0];
    f.sim.inject_vevent(v, vec![1; 32]).unwrap();
    let q = f.sim.veventq_of(v).unwrap();
    assert!(f.sim.close_queue(nesting_core::host::ObjectId::Veventq(q)));
    let now = Instant::now();
    for _ in 0..2 {
        let evs = e.poll_events(now).unwrap();
        assert!(
            matches!(&evs[..], [NestedEvent::QueueFailed { error }] if error.errno == Errno::ENOENT),
            "{evs:?}"
        );
    }
}

#[test]
fn closed_fault_queue_is_reported_after_the_vevents_read() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut e = f.engine(NestedConfig {
        iopf: true,
        ..Default::default()
    });
    let id = f.add(&mut e, 0x800, NestedContext::Abort);
    e.install(
        0x800,
        None,
        NestedContext::Smmuv3 {
            ste: ste_s1(0x8_0000),
        },
    )
    .unwrap();
    let v = e.viommus()[0];
    f.sim.inject_vevent(v, vec![7; 32]).unwrap();
    let hwpt = f.sim.attached_hwpt(id, None).unwrap();
    let fq = f
        .sim
        .hwpt(hwpt)
        .unwrap()
        .fault
        .expect("nested HWPT with a fault queue");
    assert!(
        f.sim
            .close_queue(nesting_core::host::ObjectId::FaultQueue(fq))
    );
    let evs = e.poll_events(Instant::now()).unwrap();
    assert_eq!(
        evs[0],
        NestedEvent::Smmuv3 {
            record: vec![7; 32]
        }
    );
    assert!(
        matches!(&evs[1..], [NestedEvent::QueueFailed { error }] if error.errno == Errno::ENOENT),
        "{evs:?}"
    );
}

#[test]
fn page_requests_are_answered_exactly_once_or_timed_out() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig {
        iopf: true,
        fault_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.install(0x10, Pasid::new(2), vtd_s1(0x1000)).unwrap();
    f.sim
        .inject_page_fault(id, Pasid::new(2), Iova(0x4000), Access::WRITE, 2)
        .unwrap();
    let t0 = Instant::now();
    let evs = e.poll_events(t0).unwrap();
    let NestedEvent::PageRequest { vsid, group } = &evs[0] else {
        panic!("{evs:?}");
    };
    assert_eq!(*vsid, 0x10);
    assert_eq!(group.faults.len(), 2);
    let cookie = group.cookie().unwrap();
    e.respond(cookie, PageResponseCode::Success).unwrap();
    assert!(matches!(
        e.respond(cookie, PageResponseCode::Success),
        Err(NestedError::NotPending { .. })
    ));
    assert_eq!(f.sim.calls(HostOp::FaultRespond), 1);

    // A second group the guest never answers is answered INVALID at the
    // timeout, not before.
    f.sim
        .inject_page_fault(id, Pasid::new(2), Iova(0x8000), Access::READ, 1)
        .unwrap();
    e.poll_events(t0).unwrap();
    assert!(e.expire(t0 + Duration::from_secs(4)).is_empty());
    assert_eq!(e.expire(t0 + Duration::from_secs(5)).len(), 1);
    assert_eq!(e.pending_faults(), 0);
    assert_eq!(f.sim.calls(HostOp::FaultRespond), 2);
}

#[test]
fn dirty_tracking_reports_pages_written_through_stage_2() {
    let f = fixture(HostProfile::VtdNest);
    let mut e = f.engine(NestedConfig {
        dirty_tracking: true,
        ..Default::default()
    });
    let id = f.add(&mut e, 0x10, NestedContext::Bypass);
    e.set_dirty_tracking(true).unwrap();
    let parent = f.sim.attached_hwpt(id, None).unwrap();
    assert!(f.sim.mark_dirty(parent, Iova(0x5000)));
    let range = IovaRange::from_len(Iova(0), 0x10000).unwrap();
    let bits = e.read_dirty(range, 0x1000, false).unwrap();
    assert!(bits[5]);
    assert_eq!(bits.count_ones(), 1);
    assert_eq!(
        e.read_dirty(range, 0x1000, false).unwrap().count_ones(),
        0,
        "cleared"
    );
}

#[test]
fn injected_failure_at_every_host_op_leaves_the_engine_usable() {
    // Each op the engine uses, failing at its first call: add_device or
    // install fails cleanly, and afterwards the same steps succeed.
    for op in [
        HostOp::GetHwInfo,
        HostOp::HwptAlloc,
        HostOp::ViommuAlloc,
        HostOp::VdeviceAlloc,
        HostOp::VeventqAlloc,
        HostOp::Attach,
        HostOp::Replace,
    ] {
        for profile in [HostProfile::VtdNest, HostProfile::Smmuv3Nest] {
            let f = fixture(profile);
            let mut e = f.engine(NestedConfig::default());
            let ctx = if profile == HostProfile::VtdNest {
                vtd_s1(0x1000)
            } else {
                NestedContext::Smmuv3 {
                    ste: ste_s1(0x8_0000),
                }
            };
            f.sim.fail_nth(op, 1, Errno::ENOMEM);
            let mut dev = f.device(0);
            let mut added = false;
            for _ in 0..2 {
                match e.add_device(0x10, dev, NestedContext::Bypass) {
                    Ok(()) => {
                        added = true;
                        break;
                    }
                    Err((_, d)) => dev = d,
                }
            }
            assert!(added, "{op} {profile:?}");
            assert_eq!(e.parents(), 1, "{op}: a failed add leaves no parent behind");
            let first = e.install(0x10, None, ctx);
            if first.is_err() {
                assert_eq!(e.context(0x10, None), Some(NestedContext::Bypass), "{op}");
                e.install(0x10, None, ctx).unwrap();
            }
            assert_eq!(e.context(0x10, None), Some(ctx));
        }
    }
}

#[test]
fn smmuv3_two_engines_on_one_host_smmu_share_the_stage2_parent() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut a = f.engine(NestedConfig::default());
    let mut b = f.engine(NestedConfig::default());
    f.add(&mut a, 0x8, NestedContext::Abort);
    f.sim.reset_counters();
    f.add(&mut b, 0x8, NestedContext::Abort);
    // The second instance: its vIOMMU, its abort and bypass HWPTs, no
    // second NEST_PARENT.
    assert_eq!(f.sim.calls(HostOp::HwptAlloc), 2);
    assert_eq!(a.stage2_parents(), b.stage2_parents());
    assert_eq!((a.viommus().len(), b.viommus().len()), (1, 1));
    assert_ne!(a.viommus(), b.viommus());
}

#[test]
fn smmuv3_engine_on_another_host_smmu_gets_its_own_stage2() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let unit1 = f.sim.add_iommu(HostProfile::Smmuv3Nest.spec());
    let mut a = f.engine(NestedConfig::default());
    let mut b = f.engine(NestedConfig::default());
    f.add(&mut a, 0x8, NestedContext::Abort);
    b.add_device(0x8, f.device(unit1), NestedContext::Abort)
        .map_err(|(e, _)| e)
        .unwrap();
    assert_ne!(a.stage2_parents(), b.stage2_parents());
}

#[test]
fn shared_stage2_parent_outlives_the_engine_that_made_it() {
    let f = fixture(HostProfile::Smmuv3Nest);
    let mut a = f.engine(NestedConfig::default());
    let mut b = f.engine(NestedConfig::default());
    f.add(&mut a, 0x8, NestedContext::Abort);
    f.add(&mut b, 0x9, NestedContext::Abort);
    let parent = a.stage2_parents()[0];
    drop(a);
    assert!(f.sim.hwpt(parent).is_some(), "b still uses it");
    drop(b);
    assert!(f.sim.hwpt(parent).is_none(), "destroyed with its last user");
}
