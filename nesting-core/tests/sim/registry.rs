//! The passthrough registry on the simulated host: plans apply all or
//! nothing, a refused plan leaves the host as it was, iommufd's PASID rule
//! holds, and a reset evacuates even what the host will not move.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::info::ecap;

use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{Errno, HostOp, HwptFlags, PtId};
use nesting_core::nested::NestedContext;
use nesting_core::passthrough::{Backing, Invalid, Place, Plan, Registry, StageError, Step};
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::types::{Access, Gpa, Iova, Pasid};

const PAGE: u64 = 0x1000;
const VA: u64 = 0x7000_0000_0000;

struct Rig {
    sim: Arc<SimIommufd>,
    reg: Registry<u32>,
}

fn rig(profile: HostProfile, backing: Backing, eps: &[u32]) -> Rig {
    rig_on(profile.spec(), backing, eps)
}

fn rig_on(spec: SimHostSpec, backing: Backing, eps: &[u32]) -> Rig {
    let view = spec.host_view();
    let sim = Arc::new(SimIommufd::with_host(spec));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(0),
        len: 64 << 20,
        backing: RamBacking::UserVa(VA),
    }])
    .unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    let mut reg = Registry::new(host.clone(), ram);
    for &ep in eps {
        let dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
        reg.add_device(ep, dev, backing, &view, Place::Blocked)
            .unwrap();
    }
    sim.reset_counters();
    Rig { sim, reg }
}

fn map(space: u32, iova: u64, gpa: u64, len: u64) -> Step<u32> {
    Step::Map {
        space,
        iova: Iova(iova),
        gpa: Gpa(gpa),
        len,
        access: Access::RW,
    }
}

fn place(ep: u32, pasid: Option<u32>, to: Place<u32>) -> Step<u32> {
    Step::Place {
        req: (ep, pasid.and_then(Pasid::new)),
        to,
    }
}

fn plan(steps: Vec<Step<u32>>) -> Plan<u32> {
    Plan { steps }
}

/// Every host call counted by the simulator since the last reset.
fn host_calls(sim: &SimIommufd) -> u64 {
    HostOp::ALL.iter().map(|op| sim.calls(*op)).sum()
}

impl Rig {
    fn ioas_of(&self, space: u32) -> nesting_core::host::IoasId {
        self.reg.space(&space).unwrap().ioas().id()
    }

    /// The (iova, len) of every host mapping of a space.
    fn host_maps(&self, space: u32) -> Vec<(u64, u64)> {
        self.sim
            .mappings(self.ioas_of(space))
            .iter()
            .map(|m| (m.range.first.0, m.range.last.0 - m.range.first.0 + 1))
            .collect()
    }
}

#[test]
fn stage_new_space_is_filled_before_its_first_requester_arrives() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8]);
    let a = r
        .reg
        .stage(&plan(vec![
            map(1, 0x10_0000, 0x4000, 2 * PAGE),
            place(8, None, Place::Shadow(1)),
        ]))
        .unwrap();
    assert_eq!(a.created, vec![1]);
    assert_eq!(r.reg.place((8, None)), Place::Shadow(1));
    assert_eq!(r.host_maps(1), vec![(0x10_0000, 2 * PAGE)]);
    assert_eq!(r.reg.members(1), vec![(8, None)]);
}

#[test]
fn stage_invalid_plans_touch_nothing() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8]);
    r.reg
        .stage(&plan(vec![place(8, None, Place::Shadow(1))]))
        .unwrap();
    r.sim.reset_counters();
    let cases = [
        (
            plan(vec![place(9, None, Place::Identity)]),
            Invalid::NoEndpoint,
        ),
        (
            plan(vec![place(8, None, Place::Nested(NestedContext::Bypass))]),
            Invalid::WrongBacking,
        ),
        (plan(vec![map(2, 0, 0, PAGE)]), Invalid::NoSpace),
        (plan(vec![map(1, 0x800, 0, PAGE)]), Invalid::BadRange),
        (plan(vec![map(1, 0, 0, 0)]), Invalid::BadRange),
        (plan(vec![map(1, !0xfff, 0, 2 * PAGE)]), Invalid::BadRange),
    ];
    for (p, why) in cases {
        match r.reg.stage(&p) {
            Err(StageError::Invalid { why: w, .. }) => assert_eq!(w, why, "{p:?}"),
            other => panic!("{p:?}: {other:?}"),
        }
    }
    // The valid first step of a plan is not applied either.
    let p = plan(vec![map(1, 0, 0, PAGE), place(9, None, Place::Identity)]);
    assert!(matches!(
        r.reg.stage(&p),
        Err(StageError::Invalid { step: 1, .. })
    ));
    assert_eq!(host_calls(&r.sim), 0);
    assert!(r.host_maps(1).is_empty());
}

#[test]
fn stage_space_limit_refused_before_the_host() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8, 9]);
    r.reg.set_max_spaces(1);
    r.reg
        .stage(&plan(vec![place(8, None, Place::Shadow(1))]))
        .unwrap();
    r.sim.reset_counters();
    let e = r
        .reg
        .stage(&plan(vec![place(9, None, Place::Shadow(2))]))
        .unwrap_err();
    assert!(matches!(
        e,
        StageError::Invalid {
            why: Invalid::TooManySpaces,
            ..
        }
    ));
    assert!(e.is_no_memory());
    assert_eq!(e.host_op(), None, "refused before the host");
    assert_eq!(host_calls(&r.sim), 0);
}

#[test]
fn stage_refused_attach_undoes_the_new_space_and_earlier_moves() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8, 9]);
    // Endpoint 9 goes to identity first, then the second attach fails.
    r.sim.fail_nth(HostOp::Attach, 2, Errno(libc::ENOMEM));
    let e = r
        .reg
        .stage(&plan(vec![
            place(9, None, Place::Identity),
            map(1, 0, 0x4000, PAGE),
            place(8, None, Place::Shadow(1)),
        ]))
        .unwrap_err();
    assert_eq!(e.step(), 2);
    assert!(e.is_no_memory());
    assert_eq!(e.host_op(), Some(HostOp::Attach), "the attach refused it");
    assert_eq!(r.reg.place((8, None)), Place::Blocked);
    assert_eq!(r.reg.place((9, None)), Place::Blocked);
    assert!(r.reg.space(&1).is_none(), "the new space is gone");
    assert_eq!(r.reg.stats().refused, 1);
}

#[test]
fn stage_refused_second_sync_restores_the_first_space() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8, 9]);
    r.reg
        .stage(&plan(vec![
            map(1, 0, 0x4000, PAGE),
            place(8, None, Place::Shadow(1)),
            map(2, 0, 0x8000, PAGE),
            place(9, None, Place::Shadow(2)),
        ]))
        .unwrap();
    let before1 = r.host_maps(1);
    let before2 = r.host_maps(2);
    // Space 1 syncs first (ordered keys): an unmap and a map there; the
    // map into space 2 fails.
    r.sim.fail_nth(HostOp::IoasCopy, 2, Errno(libc::EIO));
    r.sim.fail_nth(HostOp::IoasMap, 1, Errno(libc::EIO));
    let e = r.reg.stage(&plan(vec![
        Step::Unmap {
            space: 1,
            iova: Iova(0),
            len: PAGE,
        },
        map(1, 0x2000, 0x5000, PAGE),
        map(2, 0x2000, 0x9000, PAGE),
    ]));
    assert!(matches!(e, Err(StageError::Host { step: 2, .. })), "{e:?}");
    assert_eq!(
        e.as_ref().err().and_then(StageError::host_op),
        Some(HostOp::IoasMap)
    );
    assert_eq!(r.host_maps(1), before1, "space 1 restored");
    assert_eq!(r.host_maps(2), before2, "space 2 rolled back by its engine");
    let guest1: Vec<u64> = r
        .reg
        .space(&1)
        .unwrap()
        .guest_mappings()
        .map(|s| s.first)
        .collect();
    assert_eq!(guest1, vec![0]);
}

#[test]
fn stage_last_requester_leaving_destroys_the_space() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8, 9]);
    r.reg
        .stage(&plan(vec![
            place(8, None, Place::Shadow(1)),
            place(9, None, Place::Shadow(1)),
        ]))
        .unwrap();
    let a = r
        .reg
        .stage(&plan(vec![place(8, None, Place::Identity)]))
        .unwrap();
    assert!(a.destroyed.is_empty());
    let a = r
        .reg
        .stage(&plan(vec![place(9, None, Place::Blocked)]))
        .unwrap();
    assert_eq!(a.destroyed, vec![1]);
    assert!(r.reg.space(&1).is_none());
    assert_eq!(r.reg.place((8, None)), Place::Identity);
}

#[test]
fn stage_first_pasid_moves_the_rid_onto_a_pasid_capable_hwpt() {
    let mut r = rig(HostProfile::VtdNest, Backing::Shadow, &[8]);
    r.reg
        .stage(&plan(vec![place(8, None, Place::Shadow(1))]))
        .unwrap();
    r.reg
        .stage(&plan(vec![place(8, Some(5), Place::Shadow(2))]))
        .unwrap();
    assert_eq!(r.reg.place((8, Pasid::new(5))), Place::Shadow(2));
    let dev = r.reg.space(&1).unwrap().devices()[0].0;
    let rid = r.sim.attached_hwpt(dev, None).unwrap();
    let hw = r.sim.hwpt(rid).unwrap();
    assert!(hw.flags.contains(HwptFlags::PASID), "{hw:?}");
    assert!(matches!(
        r.sim.attachment(dev, Pasid::new(5)),
        Some(PtId::Hwpt(_))
    ));
}

#[test]
fn stage_pasid_the_host_cannot_attach_is_refused() {
    // A VT-d host without scalable mode attaches no PASID (intel/iommu.c:
    // max_pasids only with pasid_supported()).
    let mut spec = HostProfile::VtdNonest.spec();
    let (_, e) = spec.info.vtd().unwrap();
    spec.apply("ecap", &format!("{:#x}", e.with(ecap::SMTS, 0).0))
        .unwrap();
    let mut r = rig_on(spec, Backing::Shadow, &[8]);
    assert!(!r.reg.carries((8, Pasid::new(1))));
    assert!(r.reg.carries((8, None)));
    let e = r
        .reg
        .stage(&plan(vec![place(8, Some(1), Place::Identity)]))
        .unwrap_err();
    assert!(matches!(
        e,
        StageError::Invalid {
            why: Invalid::PasidBeyondHost,
            ..
        }
    ));
    // Blocking it is always allowed.
    r.reg
        .stage(&plan(vec![place(8, Some(1), Place::Blocked)]))
        .unwrap();
}

#[test]
fn stage_nested_contexts_install_replace_and_block() {
    let mut r = rig(HostProfile::VtdNest, Backing::Nested, &[8]);
    let s1 = |pgtbl| NestedContext::VtdS1 {
        flags: Default::default(),
        pgtbl_addr: pgtbl,
        addr_width: 48,
    };
    r.reg
        .stage(&plan(vec![
            place(8, None, Place::Nested(s1(0x1000))),
            place(8, Some(3), Place::Nested(s1(0x2000))),
        ]))
        .unwrap();
    let engine = r.reg.nested().unwrap();
    assert_eq!(engine.context(8, None), Some(s1(0x1000)));
    assert_eq!(engine.context(8, Pasid::new(3)), Some(s1(0x2000)));
    r.reg
        .stage(&plan(vec![place(8, Some(3), Place::Blocked)]))
        .unwrap();
    assert_eq!(r.reg.nested().unwrap().context(8, Pasid::new(3)), None);
    assert_eq!(r.reg.place((8, Pasid::new(3))), Place::Blocked);
    // A shadow place does not fit a nested device.
    let e = r
        .reg
        .stage(&plan(vec![place(8, None, Place::Identity)]))
        .unwrap_err();
    assert!(matches!(
        e,
        StageError::Invalid {
            why: Invalid::WrongBacking,
            ..
        }
    ));
}

#[test]
fn evacuate_strands_an_emptied_space_a_device_cannot_leave() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8]);
    r.reg
        .stage(&plan(vec![
            map(1, 0, 0x4000, PAGE),
            place(8, None, Place::Shadow(1)),
        ]))
        .unwrap();
    let ioas = r.ioas_of(1);
    r.sim.fail_nth(HostOp::Detach, 1, Errno(libc::EIO));
    assert!(r.reg.evacuate(|_| false).is_err());
    assert!(r.reg.space(&1).is_none());
    assert_eq!(r.reg.place((8, None)), Place::Blocked);
    assert!(
        r.sim.mappings(ioas).is_empty(),
        "the device reaches nothing"
    );
    // Blocking it again now detaches it for real.
    r.reg
        .stage(&plan(vec![place(8, None, Place::Blocked)]))
        .unwrap();
    assert_eq!(r.sim.calls(HostOp::Detach), 2);
}

#[test]
fn remove_device_hands_it_back_and_drops_its_spaces() {
    let mut r = rig(HostProfile::VtdNonest, Backing::Shadow, &[8]);
    r.reg
        .stage(&plan(vec![place(8, None, Place::Shadow(1))]))
        .unwrap();
    let dev = r.reg.remove_device(8).unwrap();
    assert!(!dev.is_attached(None));
    assert!(r.reg.space(&1).is_none());
    assert!(!r.reg.contains(8));
}

#[test]
fn nested_device_added_in_a_context_is_attached_once() {
    let mut r = rig(HostProfile::VtdNest, Backing::Nested, &[]);
    let view = HostProfile::VtdNest.spec().host_view();
    let host = r.reg.host().clone();
    let dev = BoundDevice::bind(&host, r.sim.add_device(0)).unwrap();
    let at = Place::Nested(NestedContext::Bypass);
    r.reg
        .add_device(8, dev, Backing::Nested, &view, at)
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(r.reg.place((8, None)), at);
    assert_eq!(
        r.sim.calls(HostOp::Attach) + r.sim.calls(HostOp::Replace),
        1
    );
}
