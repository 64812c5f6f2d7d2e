//! Reserved regions per endpoint and passthrough hot-plug (issue 11,
//! part 4). PROBE is per endpoint (virtio 1.3 5.13.6.8): a passthrough
//! endpoint's PROBE announces its own host's holes, an emulated one's
//! none. A device hot-plugged after FEATURES_OK is accepted when the page
//! sizes and input range the driver read still hold and its holes can
//! still be announced (PROBE negotiated, that endpoint not probed yet);
//! otherwise the refusal names what would change or which hole cannot be
//! announced, and why.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::ladder::HostView;
use nesting_core::passthrough::Place;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::types::Iova;

use crate::config::DeviceOptions;
use crate::device::{DeviceError, VirtioIommu};
use crate::mock::{MockDriver, config, mock_memory};
use crate::protocol::{Features, RESV_MEM_T_RESERVED, Status};
use crate::shadow_tests::{Rig, RigSpec, rig, rig_of};
use crate::state::{MAX_PROBED_ENDPOINTS, Probed};

const RW: u32 = 3;
/// The VT-d hosts' one hole: the interrupt (MSI) window.
const HOLE: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// The RESV_MEM properties of `endpoint`'s PROBE, as `(start, end,
/// subtype)`.
fn probe(d: &mut MockDriver, endpoint: u32) -> Vec<(u64, u64, u8)> {
    let (_, status, props) = d.probe(endpoint, 0x200);
    assert_eq!(status, Status::Ok);
    props
        .chunks_exact(24)
        .take_while(|c| c[0] == 1)
        .map(|c| {
            let q = |at: usize| u64::from_le_bytes(c[at..at + 8].try_into().unwrap());
            (q(8), q(16), c[4])
        })
        .collect()
}

/// The VT-d host's view (with its hole).
fn vtd_view() -> HostView {
    HostProfile::VtdNonest.spec().host_view()
}

/// A second host IOMMU, without any hole, and its view.
fn holeless_unit(r: &Rig) -> (u32, HostView) {
    let mut spec: SimHostSpec = HostProfile::VtdNonest.spec();
    spec.reserved.clear();
    let view = spec.host_view();
    (r.sim.add_iommu(spec), view)
}

/// The refusal of hot-plugging `endpoint` behind `view`.
fn refused(r: &Rig, endpoint: u32, view: &HostView) -> String {
    match r.plug(endpoint, view) {
        Ok(_) => panic!("endpoint {endpoint:#x} accepted"),
        Err((DeviceError::Refused(d), device)) => {
            assert!(!device.is_attached(None), "handed back detached");
            d.reason
        }
        Err((e, _)) => panic!("{e}"),
    }
}

#[test]
fn probe_announces_each_passthrough_endpoints_own_holes_only() {
    let mut r = rig();
    let (unit, view) = holeless_unit(&r);
    r.plug_behind(unit, 9, &view).map_err(|(e, _)| e).unwrap();
    let hole = (HOLE.0, HOLE.1, RESV_MEM_T_RESERVED);
    assert_eq!(probe(&mut r.drv, 8), vec![hole], "its host's hole");
    assert_eq!(probe(&mut r.drv, 9), vec![], "a host without holes");
    assert_eq!(probe(&mut r.drv, 16), vec![], "emulated");
}

/// A running guest (features negotiated, queues set up) on a device with
/// `opts` and no passthrough endpoint yet, whose VMM gave it the host.
fn running_without_passthrough(opts: &[&str]) -> (MockDriver, Arc<SimIommufd>) {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let mem = mock_memory();
    let ram = GuestRam::from_guest_memory(&*mem).unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    let dev = VirtioIommu::new(&config(opts), DeviceOptions::default()).unwrap();
    dev.set_passthrough_host(host, ram).unwrap();
    (MockDriver::with_memory(Arc::new(dev), mem, true), sim)
}

fn bind(sim: &Arc<SimIommufd>) -> BoundDevice {
    let host: SharedHost = sim.clone();
    BoundDevice::bind(&host, sim.add_device(0)).unwrap()
}

#[test]
fn first_vfio_device_hot_plugged_into_running_guest_accepted_on_x86_host() {
    // The VMM presents the input range its hosts map (48 bits): the
    // host's interrupt window is the only difference, and the new
    // endpoint's own PROBE announces it.
    let (mut d, sim) = running_without_passthrough(&["input_range=0x0-0xffff_ffff_ffff"]);
    d.dev
        .add_passthrough(8, bind(&sim), &vtd_view())
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(
        probe(&mut d, 8),
        vec![(HOLE.0, HOLE.1, RESV_MEM_T_RESERVED)]
    );
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x40_0000, RW), Status::Ok);
}

#[test]
fn first_vfio_device_hot_plugged_refused_when_input_range_is_wider_than_host() {
    // The default input range is all 64 bits; the host maps 48.
    let (d, sim) = running_without_passthrough(&[]);
    let Err((DeviceError::Refused(why), _)) = d.dev.add_passthrough(8, bind(&sim), &vtd_view())
    else {
        panic!("accepted");
    };
    assert_eq!(
        why.reason,
        "hot-plugged endpoint 0x8 refused: input_range the driver read would change: 0x0-0xffffffffffffffff -> 0x0-0xffffffffffff"
    );
}

#[test]
fn hotplug_with_host_hole_accepted_while_its_probe_can_announce_it() {
    let mut r = rig();
    // The driver is running: features negotiated (PROBE among them),
    // endpoint 8 and an emulated one probed.
    probe(&mut r.drv, 8);
    probe(&mut r.drv, 16);
    let (_, d) = r.plug(9, &vtd_view()).map_err(|(e, _)| e).unwrap();
    let check = d
        .checks
        .iter()
        .find(|c| c.name == "hotplug-reserved-regions")
        .unwrap();
    assert!(check.passed, "{d}");
    assert!(check.detail.contains("0xfee00000-0xfeefffff"), "{d}");
    assert_eq!(r.place(9), Place::Blocked);
    assert_eq!(
        probe(&mut r.drv, 9),
        vec![(HOLE.0, HOLE.1, RESV_MEM_T_RESERVED)]
    );
}

#[test]
fn hotplug_refused_when_endpoint_already_probed_names_hole_and_why() {
    let mut r = rig();
    assert_eq!(probe(&mut r.drv, 9), vec![]);
    let why = refused(&r, 9, &vtd_view());
    assert_eq!(
        why,
        "hot-plugged endpoint 0x9 refused: host hole(s) 0xfee00000-0xfeefffff cannot be announced: the driver already probed endpoint 0x9 and does not probe it again"
    );
    assert_eq!(probe(&mut r.drv, 9), vec![], "nothing changed");
    assert!(r.drv.dev.remove_passthrough(9).is_none(), "not added");
}

#[test]
fn hotplug_refused_without_probe_feature_names_hole_and_why() {
    let r = rig_of(RigSpec {
        negotiate: false,
        ..RigSpec::default()
    })
    .unwrap();
    let without_probe = r.drv.dev.device_features() & !Features::PROBE.bits();
    r.drv.dev.ack_features(without_probe).unwrap();
    let why = refused(&r, 9, &vtd_view());
    assert_eq!(
        why,
        "hot-plugged endpoint 0x9 refused: host hole(s) 0xfee00000-0xfeefffff cannot be announced: VIRTIO_IOMMU_F_PROBE was not negotiated, so the driver reads no reserved region of any endpoint"
    );
    // A host without holes needs no PROBE.
    let (unit, view) = holeless_unit(&r);
    r.plug_behind(unit, 9, &view).map_err(|(e, _)| e).unwrap();
}

#[test]
fn hotplug_refused_when_page_size_mask_would_change_names_old_and_new() {
    let r = rig();
    let mut spec = HostProfile::VtdNonest.spec();
    spec.page_size = 0x1_0000;
    let why = refused(&r, 9, &spec.host_view());
    assert_eq!(
        why,
        "hot-plugged endpoint 0x9 refused: page_size_mask the driver read would change: 0xfffffffffffff000 -> 0xffffffffffff0000"
    );
}

#[test]
fn hotplug_refused_when_input_range_would_change_names_old_and_new() {
    let r = rig();
    let mut spec = HostProfile::VtdNonest.spec();
    spec.aperture.last = Iova((1 << 39) - 1);
    let why = refused(&r, 9, &spec.host_view());
    assert_eq!(
        why,
        "hot-plugged endpoint 0x9 refused: input_range the driver read would change: 0x0-0xffffffffffff -> 0x0-0x7fffffffff"
    );
}

#[test]
fn hotplug_without_hole_accepted_after_probe() {
    let mut r = rig();
    probe(&mut r.drv, 9);
    let (unit, view) = holeless_unit(&r);
    r.plug_behind(unit, 9, &view).map_err(|(e, _)| e).unwrap();
    assert_eq!(probe(&mut r.drv, 9), vec![]);
}

#[test]
fn hotplug_after_unplug_of_probed_endpoint_accepted() {
    // The driver probed the first device; the VMM unplugged it, so a
    // device plugged there next is a new one the driver probes anew.
    let mut r = rig();
    r.plug(9, &vtd_view()).map_err(|(e, _)| e).unwrap();
    assert_eq!(probe(&mut r.drv, 9).len(), 1);
    drop(r.drv.dev.remove_passthrough(9).unwrap());
    r.plug(9, &vtd_view()).map_err(|(e, _)| e).unwrap();
    assert_eq!(probe(&mut r.drv, 9).len(), 1);
}

#[test]
fn reset_forgets_which_endpoints_were_probed() {
    let mut r = rig();
    probe(&mut r.drv, 9);
    r.drv.dev.reset();
    r.drv = MockDriver::with_memory(r.drv.dev.clone(), r.drv.mem.clone(), true);
    r.plug(9, &vtd_view()).map_err(|(e, _)| e).unwrap();
}

#[test]
fn map_over_a_hole_refused_only_in_a_domain_of_an_endpoint_with_that_hole() {
    let mut r = rig();
    let (unit, view) = holeless_unit(&r);
    r.plug_behind(unit, 9, &view).map_err(|(e, _)| e).unwrap();
    let at = |d: &mut MockDriver, domain| d.map(domain, HOLE.0, HOLE.0 + 0xfff, 0x40_0000, RW);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(at(&mut r.drv, 1), Status::Range, "endpoint 8's hole");
    assert_eq!(r.drv.attach(2, 9), Status::Ok);
    assert_eq!(
        at(&mut r.drv, 2),
        Status::Ok,
        "endpoint 9 has no hole there"
    );
    assert_eq!(r.drv.attach(3, 16), Status::Ok);
    assert_eq!(at(&mut r.drv, 3), Status::Ok, "emulated");
}

#[test]
fn probed_endpoints_bounded_then_every_endpoint_counts_as_probed() {
    let mut p = Probed::default();
    for ep in 0..MAX_PROBED_ENDPOINTS as u32 {
        p.record(ep);
    }
    assert!(!p.contains(u32::MAX));
    p.record(u32::MAX);
    assert!(p.contains(u32::MAX - 1), "forgotten which: all count");
    assert_eq!(p.parts(), (vec![], true));
    p.forget(3);
    assert!(p.contains(3));
}

#[test]
fn snapshot_keeps_probed_endpoints_and_an_older_one_counts_all_as_probed() {
    let mut r = rig();
    probe(&mut r.drv, 9);
    let snap = r.drv.dev.snapshot();
    assert_eq!((snap.probed.clone(), snap.probed_all), (vec![9], false));
    // A destination with the same passthrough endpoint, then a hot-plug
    // behind the endpoint the driver probed on the source.
    let b = rig();
    b.drv.dev.restore(&snap).unwrap();
    assert!(refused(&b, 9, &vtd_view()).contains("already probed"));
    // A snapshot from before probes were kept, when the host's holes were
    // device-wide (its config carries them; they are the source host's,
    // and the destination's endpoints bring their own).
    let mut json = serde_json::to_value(&snap).unwrap();
    let fields = json.as_object_mut().unwrap();
    fields.remove("probed");
    fields.remove("probed_all");
    let hole = serde_json::json!([{"start": HOLE.0, "end": HOLE.1, "subtype": 0}]);
    fields["config"]
        .as_object_mut()
        .unwrap()
        .insert("host_resv".into(), hole);
    let old: crate::Snapshot = serde_json::from_value(json).unwrap();
    assert!(old.probed_all);
    let c = rig();
    c.drv.dev.restore(&old).unwrap();
    assert!(refused(&c, 10, &vtd_view()).contains("already probed"));
}
