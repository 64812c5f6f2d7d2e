//! Passthrough endpoints through the registry and the real shadow engine
//! on the simulated host: MAP/UNMAP reach the host IOAS before the request
//! completes, host failures become S_NOMEM/S_DEVERR with guest and host
//! views unchanged, bypass uses the RAM IOAS, and the ladder refuses what
//! cannot be backed. The rig here is the one every passthrough test uses.

use std::sync::Arc;

use iommufd_sim::profile::{HostProfile, SimHostSpec};
use iommufd_sim::{SimBacking, SimIommufd};
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::host::{DevId, Errno, HostOp, IoasId, PtId};
use nesting_core::ladder::{Decision, HostView};
use nesting_core::passthrough::Place;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::types::{Access, Iova};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::config::DeviceOptions;
use crate::device::{DeviceError, VirtioIommu};
use crate::mock::{MockDriver, config, mock_memory};
use crate::protocol::Status;

const RW: u32 = 3;

/// A virtio-iommu with passthrough endpoint 8 on a simulated host, set up
/// as the crate docs' VMM flow does, and a driver.
pub(crate) struct Rig {
    pub sim: Arc<SimIommufd>,
    pub drv: MockDriver,
    /// Endpoint 8's device.
    pub dev_id: DevId,
    pub ram_ioas: IoasId,
    /// What the host says of its devices.
    pub view: HostView,
}

/// What a rig is made of.
pub(crate) struct RigSpec<'a> {
    pub host: SimHostSpec,
    /// Model options (REPLAY.md).
    pub opts: &'a [&'a str],
    pub device: DeviceOptions,
    /// The driver acknowledges every offered feature at once.
    pub negotiate: bool,
}

impl Default for RigSpec<'_> {
    fn default() -> Self {
        RigSpec {
            host: HostProfile::VtdNonest.spec(),
            opts: &[],
            device: DeviceOptions::default(),
            negotiate: true,
        }
    }
}

/// The view of a device of `host`, read back from it as a VMM does: bound,
/// attached to a probe IOAS for its ranges.
pub(crate) fn read_view(sim: &Arc<SimIommufd>, dev: &mut BoundDevice) -> HostView {
    let host: SharedHost = sim.clone();
    let probe = Ioas::alloc(&host).unwrap();
    dev.attach(None, PtId::Ioas(probe.id())).unwrap();
    let ranges = host.ioas_iova_ranges(probe.id()).unwrap();
    let view = HostView {
        info: host.hw_info(dev.id()).unwrap(),
        iova_ranges: ranges.ranges,
        page_size: ranges.alignment,
        unit: None,
    };
    dev.detach(None).unwrap();
    view
}

pub(crate) fn rig_of(spec: RigSpec<'_>) -> Result<Rig, DeviceError> {
    let sim = Arc::new(SimIommufd::with_host(spec.host));
    let host: SharedHost = sim.clone();
    let mem = mock_memory();
    let ram = Arc::new(RamIoas::new(&host, GuestRam::from_guest_memory(&*mem).unwrap()).unwrap());
    let mut bound = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let dev_id = bound.id();
    let view = read_view(&sim, &mut bound);
    let dev = Arc::new(VirtioIommu::new(&config(spec.opts), spec.device)?);
    dev.set_passthrough_host(host, ram.clone())?;
    dev.add_passthrough(8, bound, &view).map_err(|(e, _)| e)?;
    let drv = MockDriver::with_memory(dev, mem, spec.negotiate);
    Ok(Rig {
        sim,
        drv,
        dev_id,
        ram_ioas: ram.ioas().id(),
        view,
    })
}

pub(crate) fn rig_with(host: SimHostSpec, opts: &[&str]) -> Result<Rig, DeviceError> {
    rig_of(RigSpec {
        host,
        opts,
        ..RigSpec::default()
    })
}

pub(crate) fn rig() -> Rig {
    rig_with(HostProfile::VtdNonest.spec(), &[]).unwrap()
}

impl Rig {
    /// The IOAS endpoint 8's device is attached to (directly or through a
    /// HWPT).
    pub fn ioas(&self) -> Option<IoasId> {
        self.ioas_of(self.dev_id)
    }

    pub fn ioas_of(&self, dev: DevId) -> Option<IoasId> {
        match self.sim.attachment(dev, None) {
            Some(PtId::Ioas(i)) => Some(i),
            Some(PtId::Hwpt(h)) => self.sim.hwpt(h).map(|h| h.ioas),
            _ => None,
        }
    }

    /// The host memory behind `iova` in endpoint 8's IOAS, if mapped.
    pub fn host_at(&self, iova: u64) -> Option<(u64, Access)> {
        match self.sim.translate(self.ioas()?, Iova(iova))? {
            (SimBacking::UserVa(va), acc) => Some((va, acc)),
            _ => None,
        }
    }

    pub fn hva(&self, gpa: u64) -> u64 {
        self.drv.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    /// Where the device's registry has `endpoint`.
    pub fn place(&self, endpoint: u32) -> Place<u32> {
        let g = self.drv.dev.lock();
        g.state
            .passthrough
            .as_ref()
            .map_or(Place::Blocked, |p| p.place(endpoint))
    }

    /// The guest mappings domain `domain`'s host space mirrors, as
    /// `(first, len, gpa)`; `None` without a host space.
    pub fn space_maps(&self, domain: u32) -> Option<Vec<(u64, u64, u64)>> {
        let g = self.drv.dev.lock();
        let s = g.state.passthrough.as_ref()?.space(domain)?;
        Some(
            s.guest_mappings()
                .map(|m| (m.first, m.len(), m.gpa))
                .collect(),
        )
    }

    /// Binds a new device on the simulated host and adds it as passthrough
    /// endpoint `endpoint` with `view`; returns its ID and the decision.
    pub fn plug(
        &self,
        endpoint: u32,
        view: &HostView,
    ) -> Result<(DevId, Decision), (DeviceError, BoundDevice)> {
        self.plug_behind(0, endpoint, view)
    }

    /// [`Rig::plug`] for a device behind the host's IOMMU unit `unit`.
    pub fn plug_behind(
        &self,
        unit: u32,
        endpoint: u32,
        view: &HostView,
    ) -> Result<(DevId, Decision), (DeviceError, BoundDevice)> {
        let host: SharedHost = self.sim.clone();
        let dev = BoundDevice::bind(&host, self.sim.add_device(unit)).unwrap();
        let id = dev.id();
        let d = self.drv.dev.add_passthrough(endpoint, dev, view)?;
        Ok((id, d))
    }
}

#[test]
fn shadow_endpoint_blocked_until_attached_then_map_in_host_before_completion() {
    let mut r = rig();
    assert_eq!(r.sim.attachment(r.dev_id, None), None, "blocked");
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(
        r.drv.map(1, 0x10_0000, 0x10_1fff, 0x40_0000, RW),
        Status::Ok
    );
    let want = r.hva(0x40_1000);
    assert_eq!(r.host_at(0x10_1000), Some((want, Access::RW)));
    assert_eq!(r.drv.unmap(1, 0x10_0000, 0x10_1fff), Status::Ok);
    assert_eq!(r.host_at(0x10_1000), None);
    assert_eq!(r.drv.detach(1, 8), Status::Ok);
    assert_eq!(r.sim.attachment(r.dev_id, None), None, "blocked again");
}

#[test]
fn shadow_read_only_mapping_is_read_only_on_host() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.drv.map(1, 0x2000, 0x2fff, 0x50_0000, 1), Status::Ok);
    assert_eq!(r.host_at(0x2000).map(|h| h.1), Some(Access::READ));
}

#[test]
fn shadow_host_enomem_is_nomem_and_views_unchanged() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    r.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    assert_eq!(r.drv.map(1, 0x3000, 0x3fff, 0x50_0000, RW), Status::NoMem);
    assert_eq!(r.host_at(0x3000), None);
    assert_eq!(r.drv.dev.translate(8, 0x3000, Access::READ).gpa(), None);
    assert_eq!(
        r.drv.map(1, 0x3000, 0x3fff, 0x50_0000, RW),
        Status::Ok,
        "retry works"
    );
}

#[test]
fn shadow_host_failure_on_unmap_is_deverr_and_mapping_kept() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.drv.map(1, 0x3000, 0x3fff, 0x50_0000, RW), Status::Ok);
    r.sim.fail_nth(HostOp::IoasUnmap, 1, Errno::EIO);
    assert_eq!(r.drv.unmap(1, 0x3000, 0x3fff), Status::DevErr);
    assert_eq!(r.host_at(0x3000).map(|h| h.0), Some(r.hva(0x50_0000)));
    assert_eq!(
        r.drv.dev.translate(8, 0x3000, Access::READ).gpa(),
        Some(0x50_0000)
    );
}

#[test]
fn shadow_bypass_domain_and_global_bypass_use_identity() {
    let mut r = rig();
    assert_eq!(r.drv.attach_flags(1, 8, 1), Status::Ok);
    assert_eq!(r.ioas(), Some(r.ram_ioas));
    assert_eq!(r.host_at(0x60_0000).map(|h| h.0), Some(r.hva(0x60_0000)));
    assert_eq!(r.drv.detach(1, 8), Status::Ok);
    assert_eq!(r.sim.attachment(r.dev_id, None), None);
    r.drv
        .dev
        .write_config(crate::protocol::CONFIG_BYPASS_OFFSET, &[1]);
    assert_eq!(r.ioas(), Some(r.ram_ioas), "unattached endpoint bypasses");
}

#[test]
fn shadow_joining_domain_with_mappings_gets_them_in_host() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 9), Status::Ok);
    assert_eq!(r.drv.map(1, 0x7000, 0x7fff, 0x70_0000, RW), Status::Ok);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.host_at(0x7000).map(|h| h.0), Some(r.hva(0x70_0000)));
    // Domain 1 emptied of its passthrough endpoint: the host IOAS goes.
    assert_eq!(r.drv.attach(2, 8), Status::Ok);
    assert_eq!(r.host_at(0x7000), None);
}

#[test]
fn shadow_page_size_mask_is_intersection_with_host_pages() {
    let mut spec = HostProfile::VtdNonest.spec();
    spec.page_size = 0x1_0000;
    let r = rig_with(spec, &["page_size_mask=0x201000"]).unwrap();
    let mut b = [0u8; 8];
    r.drv.dev.read_config(0, &mut b);
    assert_eq!(
        u64::from_le_bytes(b),
        0x20_0000,
        "4K dropped: below the host's 64K"
    );
}

#[test]
fn shadow_refused_when_no_page_size_left() {
    let mut spec = HostProfile::VtdNonest.spec();
    spec.page_size = 0x1_0000;
    let e = rig_with(spec, &["page_size_mask=0x1000"]).err().unwrap();
    assert!(matches!(e, crate::DeviceError::Refused(_)), "{e}");
}

#[test]
fn shadow_snapshot_restored_on_new_host_rebuilds_host_mappings() {
    let mut a = rig();
    assert_eq!(a.drv.attach(1, 8), Status::Ok);
    assert_eq!(a.drv.map(1, 0x9000, 0x9fff, 0x90_0000, RW), Status::Ok);
    let snap = a.drv.dev.snapshot();
    assert_eq!(snap.passthrough, vec![8]);
    let b = rig();
    assert_eq!(b.host_at(0x9000), None);
    b.drv.dev.restore(&snap).unwrap();
    assert_eq!(b.host_at(0x9000).map(|h| h.0), Some(b.hva(0x90_0000)));
    assert_eq!(
        b.drv.dev.translate(8, 0x9000, Access::READ).gpa(),
        Some(0x90_0000)
    );
}

#[test]
fn shadow_reset_with_failing_detach_leaves_device_in_emptied_space() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(
        r.drv.map(1, 0x10_0000, 0x10_0fff, 0x40_0000, RW),
        Status::Ok
    );
    r.sim.fail_nth(HostOp::Detach, 1, Errno::EIO);
    r.drv.dev.reset();
    let stuck = r.ioas().expect("the detach failed: still attached");
    assert_eq!(r.host_at(0x10_0000), None, "no stale mapping");
    assert!(r.sim.mappings(stuck).is_empty());
    // The driver comes back: FEATURES_OK moves the stranded endpoint to
    // blocked (releasing the orphaned space), and domain 1 is rebuilt
    // fresh when the endpoint is attached again.
    let mem = r.drv.mem.clone();
    r.drv = MockDriver::with_memory(r.drv.dev.clone(), mem, true);
    assert_eq!(r.ioas(), None, "blocked");
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.host_at(0x10_0000), None);
    assert_eq!(
        r.drv.map(1, 0x20_0000, 0x20_0fff, 0x40_0000, RW),
        Status::Ok
    );
    assert!(r.host_at(0x20_0000).is_some());
}

#[test]
fn remove_passthrough_hands_device_back_blocked_and_releases_domain_space() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(
        r.drv.map(1, 0x10_0000, 0x10_0fff, 0x40_0000, RW),
        Status::Ok
    );
    let dev = r.drv.dev.remove_passthrough(8).expect("handed back");
    assert_eq!(dev.id(), r.dev_id);
    assert!(!dev.is_attached(None));
    assert_eq!(r.sim.attachment(r.dev_id, None), None, "blocked");
    assert_eq!(r.space_maps(1), None, "space gone");
    assert!(r.drv.dev.remove_passthrough(8).is_none());
}

#[test]
fn add_passthrough_refuses_endpoint_already_present_and_hands_device_back() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    let view = r.view.clone();
    let Err((e, device)) = r.plug(8, &view) else {
        panic!("a second device for endpoint 8 was accepted");
    };
    assert!(matches!(e, DeviceError::AlreadyPassthrough(8)), "{e}");
    assert_ne!(device.id(), r.dev_id);
    assert!(r.sim.attachment(r.dev_id, None).is_some(), "still attached");
}

#[test]
fn replug_same_endpoint_after_removal_works() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(
        r.drv.map(1, 0x10_0000, 0x10_0fff, 0x40_0000, RW),
        Status::Ok
    );
    drop(r.drv.dev.remove_passthrough(8).unwrap());
    // A new VFIO device behind the same endpoint ID. The guest never
    // detached endpoint 8: it lands in domain 1's space, rebuilt.
    let view = r.view.clone();
    r.dev_id = r.plug(8, &view).map_err(|(e, _)| e).unwrap().0;
    assert_eq!(r.place(8), Place::Shadow(1));
    let want = r.hva(0x40_0000);
    assert_eq!(r.host_at(0x10_0000), Some((want, Access::RW)));
    assert_eq!(r.drv.attach(2, 8), Status::Ok);
    assert_eq!(
        r.drv.map(2, 0x20_0000, 0x20_0fff, 0x40_0000, RW),
        Status::Ok
    );
    assert_eq!(r.host_at(0x20_0000), Some((want, Access::RW)));
    assert_eq!(r.host_at(0x10_0000), None, "domain 1 left");
}

#[test]
fn replug_into_attached_domain_refused_by_host_hands_device_back_and_changes_nothing() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(
        r.drv.map(1, 0x10_0000, 0x10_0fff, 0x40_0000, RW),
        Status::Ok
    );
    drop(r.drv.dev.remove_passthrough(8).unwrap());
    r.sim.fail_nth(HostOp::Attach, 1, Errno::ENOMEM);
    let view = r.view.clone();
    let Err((e, device)) = r.plug(8, &view) else {
        panic!("accepted although the host refused the attach");
    };
    assert!(
        matches!(e, DeviceError::Passthrough { endpoint: 8, .. }),
        "{e}"
    );
    assert!(!device.is_attached(None));
    assert!(r.drv.dev.remove_passthrough(8).is_none(), "not added");
    assert_eq!(r.space_maps(1), None, "the new space is gone");
    assert_eq!(
        r.drv.dev.translate(8, 0x10_0000, Access::READ).gpa(),
        Some(0x40_0000),
        "the guest's view is unchanged"
    );
}

/// Maps 64 pages of domain 1 from IOVA 0x10_0000, each to its own GPA in
/// reverse order (no two join into one host run).
fn map_64_pages(r: &mut Rig) {
    for i in 0..64u64 {
        let iova = 0x10_0000 + i * 0x1000;
        let gpa = 0x40_0000 + (63 - i) * 0x1000;
        assert_eq!(r.drv.map(1, iova, iova + 0xfff, gpa, RW), Status::Ok);
    }
}

#[test]
fn unmap_covering_64_mappings_costs_one_host_unmap() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    map_64_pages(&mut r);
    r.sim.reset_counters();
    assert_eq!(r.drv.unmap(1, 0x10_0000, 0x13_ffff), Status::Ok);
    assert_eq!(r.sim.calls(HostOp::IoasUnmap), 1);
    assert!((0..64).all(|i| r.host_at(0x10_0000 + i * 0x1000).is_none()));
}

#[test]
fn unmap_batch_host_failure_keeps_every_mapping() {
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    map_64_pages(&mut r);
    r.sim.fail_nth(HostOp::IoasUnmap, 1, Errno::EIO);
    assert_eq!(r.drv.unmap(1, 0x10_0000, 0x13_ffff), Status::DevErr);
    for i in 0..64u64 {
        let iova = 0x10_0000 + i * 0x1000;
        let want = r.hva(0x40_0000 + (63 - i) * 0x1000);
        assert_eq!(
            r.host_at(iova),
            Some((want, Access::RW)),
            "host at {iova:#x}"
        );
        assert!(r.drv.dev.translate(8, iova, Access::READ).gpa().is_some());
    }
}

#[test]
fn attach_replays_domain_mappings_into_new_space() {
    // Mappings made before the passthrough endpoint joins the domain are
    // replayed in one batch when its host space is created.
    let mut r = rig();
    assert_eq!(r.drv.attach(1, 9), Status::Ok);
    map_64_pages(&mut r);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    for i in 0..64u64 {
        let want = r.hva(0x40_0000 + (63 - i) * 0x1000);
        assert_eq!(r.host_at(0x10_0000 + i * 0x1000), Some((want, Access::RW)));
    }
}
