//! Who owns and closes what: shared and adopted devices, a shared iommufd,
//! and the route each request takes (through the fake kernel of `sys`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, Weak};

use super::super::objects::{BoundDevice, SharedHost};
use super::sys::fake::{self, Call};
use super::sys::nr;
use super::*;

fn backend() -> Iommufd {
    fake::reset();
    Iommufd::open_path("/dev/null").unwrap()
}

/// A VFIO cdev file the VMM keeps.
fn vmm_file() -> Arc<File> {
    Arc::new(File::open("/dev/null").unwrap())
}

fn err(op: HostOp, errno: i32) -> HostError {
    HostError::new(op, Errno(errno))
}

#[test]
fn bind_shared_binds_vmm_file_without_dup() {
    let be = backend();
    let file = vmm_file();
    fake::reply(|a: &mut v::vfio_device_bind_iommufd| {
        a.out_devid = 5;
        Ok(0)
    });

    let dev = be.bind_device(DeviceSource::shared(file.clone())).unwrap();

    assert_eq!(dev, DevId(5));
    let calls = fake::take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].req(), Some(nr::VFIO_DEVICE_BIND_IOMMUFD));
    // The ioctl went to the VMM's own descriptor, not a duplicate.
    assert!(matches!(calls[0], Call::Ioctl { fd, .. } if fd == file.as_raw_fd()));
    assert_eq!(Arc::strong_count(&file), 2);
}

#[test]
fn unbind_shared_drops_our_reference_vmm_file_stays_open() {
    let be = backend();
    let file = vmm_file();
    fake::reply(|a: &mut v::vfio_device_bind_iommufd| {
        a.out_devid = 5;
        Ok(0)
    });
    let dev = be.bind_device(DeviceSource::shared(file.clone())).unwrap();

    be.unbind_device(dev).unwrap();

    assert_eq!(Arc::strong_count(&file), 1);
    assert!(file.metadata().is_ok(), "the VMM's file is still open");
    assert_eq!(
        be.unbind_device(dev).unwrap_err(),
        err(HostOp::UnbindDevice, libc::ENOENT)
    );
}

#[test]
fn bind_shared_already_bound_einval_releases_file() {
    let be = backend();
    let file = vmm_file();
    fake::fail_next(libc::EINVAL);

    let e = be
        .bind_device(DeviceSource::shared(file.clone()))
        .unwrap_err();

    assert_eq!(e, err(HostOp::BindDevice, libc::EINVAL));
    assert_eq!(Arc::strong_count(&file), 1);
}

#[test]
fn bound_source_adopts_id_after_zero_length_hw_info() {
    let be = backend();
    let file = vmm_file();

    let dev = be
        .bind_device(DeviceSource::shared(file.clone()).bound(DevId(7)))
        .unwrap();

    assert_eq!(dev, DevId(7));
    let calls = fake::take_calls();
    assert_eq!(calls.len(), 1, "no second bind: {calls:?}");
    assert_eq!(calls[0].req(), Some(nr::IOMMU_GET_HW_INFO));
    let arg = calls[0].arg::<k::iommu_hw_info>();
    assert_eq!((arg.dev_id, arg.data_len), (7, 0));
    // Attach goes to the VMM's file.
    be.attach(dev, None, PtId::Ioas(IoasId(2))).unwrap();
    let calls = fake::take_calls();
    assert!(matches!(calls[0], Call::Ioctl { fd, .. } if fd == file.as_raw_fd()));
}

#[test]
fn bound_source_id_not_in_iommufd_enoent_releases_file() {
    let be = backend();
    let file = vmm_file();
    fake::fail_next(libc::ENOENT);

    let e = be
        .bind_device(DeviceSource::shared(file.clone()).bound(DevId(7)))
        .unwrap_err();

    assert_eq!(e, err(HostOp::BindDevice, libc::ENOENT));
    assert_eq!(Arc::strong_count(&file), 1);
    assert!(be.attach(DevId(7), None, PtId::Ioas(IoasId(2))).is_err());
}

#[test]
fn bound_source_twice_eexist_without_call() {
    let be = backend();
    let file = vmm_file();
    be.bind_device(DeviceSource::shared(file.clone()).bound(DevId(7)))
        .unwrap();
    fake::take_calls();

    let e = be
        .bind_device(DeviceSource::shared(file.clone()).bound(DevId(7)))
        .unwrap_err();

    assert_eq!(e, err(HostOp::BindDevice, libc::EEXIST));
    assert!(fake::take_calls().is_empty());
    assert_eq!(Arc::strong_count(&file), 2, "the first adoption holds it");
}

#[test]
fn bound_path_or_nested_bound_einval_simulated_enodev_without_call() {
    let be = backend();
    let cases = [
        (DeviceSource::Path("/dev/null".into()), libc::EINVAL),
        (
            DeviceSource::shared(vmm_file()).bound(DevId(1)),
            libc::EINVAL,
        ),
        (DeviceSource::Simulated { index: 0 }, libc::ENODEV),
    ];
    for (inner, errno) in cases {
        let e = be.bind_device(inner.bound(DevId(7))).unwrap_err();
        assert_eq!(e, err(HostOp::BindDevice, errno));
    }
    assert!(fake::take_calls().is_empty());
}

#[test]
fn bound_owned_fd_is_ours_to_close() {
    let be = backend();
    let file = File::open("/dev/null").unwrap();
    let raw = file.as_raw_fd();

    let dev = be
        .bind_device(DeviceSource::Fd(file.into()).bound(DevId(3)))
        .unwrap();
    fake::take_calls();
    be.attach(dev, None, PtId::Ioas(IoasId(2))).unwrap();

    assert!(matches!(fake::take_calls()[0], Call::Ioctl { fd, .. } if fd == raw));
}

/// A shared device file whose last reference, dropped, calls the backend
/// back, as a VMM's device wrapper may (vfio-ioctls' `VfioDevice` detaches
/// in its `Drop`); it records whether the backend's tables were locked.
struct Reentrant {
    file: File,
    backend: Mutex<Weak<Iommufd>>,
    locked_at_drop: Arc<Mutex<Option<bool>>>,
}

impl AsFd for Reentrant {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for Reentrant {
    fn drop(&mut self) {
        let be = self.backend.lock().unwrap().upgrade();
        let locked = be.map(|be| format!("{be:?}").contains("<in use>"));
        *self.locked_at_drop.lock().unwrap() = locked;
    }
}

#[test]
fn unbind_last_shared_reference_dropped_outside_table_lock() {
    let be = Arc::new(backend());
    let seen = Arc::new(Mutex::new(None));
    let file = Arc::new(Reentrant {
        file: File::open("/dev/null").unwrap(),
        backend: Mutex::new(Arc::downgrade(&be)),
        locked_at_drop: seen.clone(),
    });
    let dev = be
        .bind_device(DeviceSource::Shared(file).bound(DevId(4)))
        .unwrap();

    be.unbind_device(dev).unwrap();

    assert_eq!(*seen.lock().unwrap(), Some(false));
}

#[test]
fn bound_device_drop_detaches_what_it_attached_vmm_file_stays() {
    let be = Arc::new(backend());
    let host: SharedHost = be.clone();
    let file = vmm_file();
    let src = DeviceSource::shared(file.clone()).bound(DevId(6));
    let mut dev = BoundDevice::bind(&host, src).unwrap();
    dev.attach(None, PtId::Ioas(IoasId(2))).unwrap();
    fake::take_calls();

    drop(dev);

    let calls = fake::take_calls();
    assert_eq!(calls.len(), 1, "one detach, no unbind ioctl: {calls:?}");
    assert_eq!(calls[0].req(), Some(nr::VFIO_DEVICE_DETACH_IOMMUFD_PT));
    assert!(matches!(calls[0], Call::Ioctl { fd, .. } if fd == file.as_raw_fd()));
    assert_eq!(Arc::strong_count(&file), 1);
    assert!(file.metadata().is_ok());
}

#[test]
fn from_shared_uses_vmm_iommufd_and_leaves_it_open() {
    fake::reset();
    let vmm = Arc::new(IommuFd::new_from_fd(File::open("/dev/null").unwrap()));
    let be = Iommufd::from_shared(vmm.clone());
    assert_eq!(be.as_fd().as_raw_fd(), vmm.as_raw_fd());

    be.ioas_alloc().unwrap();
    assert!(matches!(fake::take_calls()[0], Call::Ioctl { fd, .. } if fd == vmm.as_raw_fd()));
    assert_eq!(Arc::strong_count(&vmm), 2);

    drop(be);
    assert_eq!(Arc::strong_count(&vmm), 1);
}

#[test]
fn iommufd_ioctls_handle_shares_ours() {
    let be = backend();
    let handle = be.iommufd_ioctls().clone();
    assert_eq!(handle.as_raw_fd(), be.as_fd().as_raw_fd());
    drop(be);
    assert_eq!(Arc::strong_count(&handle), 1);
}

/// The requests the backend issues, each with the route docs/host-ioctls.md
/// gives it.
#[test]
fn each_request_takes_the_documented_route() {
    let be = backend();
    let crate_ = "iommufd-ioctls";
    let dev = be.bind_device(DeviceSource::shared(vmm_file())).unwrap();
    let ioas = be.ioas_alloc().unwrap();
    be.hw_info(dev).unwrap();
    be.ioas_map(
        ioas,
        IovaPlacement::Any,
        MapSource::UserVa(0x1000),
        0x1000,
        Access::READ,
    )
    .unwrap();
    be.ioas_unmap(ioas, Iova(0), 0x1000).unwrap();
    be.ioas_copy(
        ioas,
        IovaPlacement::Any,
        ioas,
        Iova(0),
        0x1000,
        Access::READ,
    )
    .unwrap();
    be.attach(dev, None, PtId::Ioas(ioas)).unwrap();
    be.viommu_alloc(dev, HwptId(3), ViommuType::ArmSmmuv3)
        .unwrap();
    be.vdevice_alloc(ViommuId(4), dev, 1).unwrap();
    be.veventq_alloc(ViommuId(4), VeventqType::ArmSmmuv3, 8)
        .unwrap();
    be.hwpt_set_dirty_tracking(HwptId(3), true).unwrap();
    be.destroy(ObjectId::Ioas(ioas)).unwrap();
    let got: Vec<(u64, &str)> = fake::take_calls()
        .iter()
        .filter_map(|c| Some((c.req()?, c.via()?)))
        .collect();
    assert_eq!(
        got,
        [
            (nr::VFIO_DEVICE_BIND_IOMMUFD, "own"),
            (nr::IOMMU_IOAS_ALLOC, crate_),
            (nr::IOMMU_GET_HW_INFO, crate_),
            (nr::IOMMU_IOAS_MAP, "own"),
            (nr::IOMMU_IOAS_UNMAP, crate_),
            (nr::IOMMU_IOAS_COPY, "own"),
            (nr::VFIO_DEVICE_ATTACH_IOMMUFD_PT, "own"),
            (nr::IOMMU_VIOMMU_ALLOC, crate_),
            (nr::IOMMU_VDEVICE_ALLOC, crate_),
            (nr::IOMMU_VEVENTQ_ALLOC, crate_),
            (nr::IOMMU_HWPT_SET_DIRTY_TRACKING, "own"),
            (nr::IOMMU_DESTROY, crate_),
        ]
    );
}
