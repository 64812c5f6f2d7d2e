//! The RAII handles on the simulated host: what their drops destroy, in
//! which order, and what a failure leaves.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::*;
use nesting_core::host::{
    Errno, HostOp, HwptAlloc, HwptData, HwptFlags, IoasId, ObjectId, PtId, ViommuType,
};

fn sim() -> (Arc<SimIommufd>, SharedHost) {
    let s = Arc::new(SimIommufd::with_host(HostProfile::Smmuv3Nest.spec()));
    let h: SharedHost = s.clone();
    (s, h)
}

fn ioas_exists(h: &SharedHost, id: IoasId) -> bool {
    h.ioas_iova_ranges(id).is_ok()
}

#[test]
fn ioas_drop_destroys_kernel_object() {
    let (s, h) = sim();
    let ioas = Ioas::alloc(&h).unwrap();
    let id = ioas.id();
    assert!(ioas_exists(&h, id));
    drop(ioas);
    assert!(!ioas_exists(&h, id));
    assert_eq!(s.calls(HostOp::Destroy), 1);
}

#[test]
fn drop_with_injected_destroy_failure_is_silent_and_leaves_object() {
    let (s, h) = sim();
    let ioas = Ioas::alloc(&h).unwrap();
    let id = ioas.id();
    s.fail_nth(HostOp::Destroy, 1, Errno::EBUSY);
    drop(ioas);
    // The destroy failed: the object is left to the kernel, and the
    // host still works.
    assert!(ioas_exists(&h, id));
    h.destroy(ObjectId::Ioas(id)).unwrap();
    assert!(Ioas::alloc(&h).is_ok());
}

#[test]
fn hwpt_keeps_parent_ioas_alive_whatever_the_drop_order() {
    let (s, h) = sim();
    let mut dev = BoundDevice::bind(&h, s.add_device(0)).unwrap();
    let ioas = Arc::new(Ioas::alloc(&h).unwrap());
    let ioas_id = ioas.id();
    let req = HwptAlloc {
        dev: dev.id(),
        parent: PtId::Ioas(ioas_id),
        flags: HwptFlags::NEST_PARENT,
        fault: None,
        data: HwptData::None,
    };
    let hwpt = Hwpt::alloc(&h, &req).unwrap().with_parent(ioas.clone());
    let hwpt_id = hwpt.id();
    dev.attach(None, PtId::Hwpt(hwpt_id)).unwrap();
    drop(ioas); // the HWPT still holds it
    assert!(ioas_exists(&h, ioas_id));
    drop(dev); // detaches and unbinds
    drop(hwpt); // destroys the HWPT, then the IOAS
    assert!(s.hwpt(hwpt_id).is_none());
    assert!(!ioas_exists(&h, ioas_id));
}

#[test]
fn viommu_chain_drops_children_first() {
    let (s, h) = sim();
    let dev = BoundDevice::bind(&h, s.add_device(0)).unwrap();
    let ioas = Arc::new(Ioas::alloc(&h).unwrap());
    let req = HwptAlloc {
        dev: dev.id(),
        parent: PtId::Ioas(ioas.id()),
        flags: HwptFlags::NEST_PARENT,
        fault: None,
        data: HwptData::None,
    };
    let parent = Arc::new(Hwpt::alloc(&h, &req).unwrap().with_parent(ioas.clone()));
    let viommu = Arc::new(Viommu::alloc(&h, dev.id(), &parent, ViommuType::ArmSmmuv3).unwrap());
    let vdev = Vdevice::alloc(&h, &viommu, dev.id(), 0x42).unwrap();
    let parent_id = parent.id();
    drop((parent, viommu, ioas));
    assert!(s.hwpt(parent_id).is_some(), "vDEVICE keeps the chain alive");
    drop(vdev);
    assert!(s.hwpt(parent_id).is_none());
    // Every destroy succeeded: one each for vDEVICE, vIOMMU, HWPT, IOAS.
    assert_eq!(s.calls(HostOp::Destroy), 4);
}

#[test]
fn bound_device_drop_detaches_pasids_then_rid_even_when_detach_fails() {
    let s = Arc::new(SimIommufd::with_host(HostProfile::VtdNest.spec()));
    let h: SharedHost = s.clone();
    let mut dev = BoundDevice::bind(&h, s.add_device(0)).unwrap();
    let id = dev.id();
    let ioas = Ioas::alloc(&h).unwrap();
    dev.attach(None, PtId::Ioas(ioas.id())).unwrap();
    assert!(dev.is_attached(None));
    s.fail_nth(HostOp::Detach, 1, Errno::EIO);
    drop(dev);
    assert_eq!(s.calls(HostOp::Detach), 1);
    assert_eq!(s.calls(HostOp::UnbindDevice), 1);
    assert!(
        s.iommu_of(id).is_none(),
        "unbound although the detach failed"
    );
    drop(ioas);
}

#[test]
fn bind_failure_leaves_nothing_to_drop() {
    let (s, h) = sim();
    s.fail_nth(HostOp::BindDevice, 1, Errno::ENODEV);
    let r = BoundDevice::bind(&h, s.add_device(0));
    assert_eq!(r.unwrap_err().errno, Errno::ENODEV);
    assert_eq!(s.calls(HostOp::UnbindDevice), 0);
}
