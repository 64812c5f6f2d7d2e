//! The ownership paths of the backend on the real kernel, with the edu
//! device (tests/kernel/vfio-setup) and no `dup` anywhere:
//!
//! 1. A VMM built on vfio-ioctls owns the iommufd (iommufd-ioctls'
//!    `IommuFd`, inside its `VfioIommufd`) and the cdev device
//!    (`VfioDevice::new_from_fd`, which binds it itself). The backend shares
//!    the iommufd (`Iommufd::from_shared`), is refused a second bind by the
//!    kernel, adopts the binding instead (`DeviceSource::vfio`), attaches
//!    the device to an IOAS of its own, has the device DMA through it, and
//!    lets go: the VMM's device is still bound and usable, its iommufd still
//!    open, and its own teardown (`VfioDevice`'s drop) still succeeds.
//! 2. A VMM that keeps a plain cdev `File` in an `Arc` and an `IommuFd`: the
//!    backend binds the device through the shared file; after the backend
//!    lets go the device stays bound (the kernel refuses to bind it again)
//!    and can be adopted back; the VMM closing its file unbinds it.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use iommufd_ioctls::{IommuFd, IommufdIoas};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{
    DevId, DeviceSource, Errno, HostBackend, HostError, IoasId, Iommufd, IovaPlacement, MapSource,
    ObjectId, PtId, VfioCdev,
};
use nesting_core::types::{Access, Iova};
use vfio_ioctls::{VfioDevice, VfioIommufd};

use crate::mem::Buf;
use crate::trace::Check;
use crate::vfio::{
    BAR0, CONFIG, DMA_LEN, DMA_TIMEOUT, EDU_BUF, EDU_DMA_CMD, EDU_DMA_COUNT, EDU_DMA_DST,
    EDU_DMA_RUN, EDU_DMA_SRC, EDU_DMA_TO_RAM, EDU_ID, EDU_ID_VALUE, IOVA_DST, IOVA_SRC,
    PCI_COMMAND, PCI_COMMAND_MASTER, find_edu,
};

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &str, pass: bool, detail: impl Into<String>) -> bool {
        self.0.push(Check {
            name: format!("shared/{name}"),
            pass,
            detail: detail.into(),
        });
        pass
    }

    fn res<T, E: std::fmt::Debug>(&mut self, name: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => {
                self.add(name, true, "ok");
                Some(v)
            }
            Err(e) => {
                self.add(name, false, format!("{e:?}"));
                None
            }
        }
    }

    /// Checks that `r` failed with `want`.
    fn refused<T: std::fmt::Debug>(&mut self, name: &str, r: Result<T, HostError>, want: Errno) {
        let got = r.as_ref().map_err(|e| e.errno);
        self.add(name, got.as_ref().err() == Some(&want), format!("{r:?}"));
    }
}

/// Runs both parts.
pub fn run() -> Vec<Check> {
    let mut c = Checks(Vec::new());
    let path = find_edu();
    if c.add("edu bound to vfio-pci", path.is_some(), format!("{path:?}")) {
        let path = path.unwrap_or_default();
        vfio_ioctls_vmm(&mut c, &path);
        plain_cdev_vmm(&mut c, &path);
    }
    c.0
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Part 1: the VMM's objects are vfio-ioctls'.
fn vfio_ioctls_vmm(c: &mut Checks, path: &Path) -> Option<()> {
    let ifd = Arc::new(c.res("vmm opens /dev/iommu (iommufd-ioctls)", IommuFd::new())?);
    let vi = VfioIommufd::new(ifd.clone(), None, None);
    let vi = Arc::new(c.res("vmm VfioIommufd", vi)?);
    let file = c.res("vmm opens the cdev", open(path))?;
    let vdev = VfioDevice::new_from_fd(file, vi.clone(), false);
    let vdev = Arc::new(c.res("vmm VfioDevice::new_from_fd binds it", vdev)?);
    let id = vdev.iommufd_dev_id();
    c.add(
        "vfio-ioctls reports the dev_id",
        id.is_some(),
        format!("{id:?}"),
    );
    let id = DevId(id?);
    let host: SharedHost = Arc::new(Iommufd::from_shared(vi.iommufd().clone()));
    let cdev = || DeviceSource::shared(Arc::new(VfioCdev(vdev.clone())));
    // device_cdev.c: "one device cannot be bound twice".
    c.refused(
        "second bind of the vmm's cdev: EINVAL",
        host.bind_device(cdev()),
        Errno::EINVAL,
    );
    c.refused(
        "adopting an id that is no device of the iommufd: ENOENT",
        host.bind_device(cdev().bound(DevId(id.0 + 1000))),
        Errno::ENOENT,
    );
    let ioas = adopted_dma(c, &host, &vdev, id)?;
    c.res(
        "our IOAS destroyed: the adopted device was detached",
        host.destroy(ObjectId::Ioas(ioas)),
    )?;
    c.add(
        "backend let go of the vmm's device",
        Arc::strong_count(&vdev) == 1,
        format!("{} references", Arc::strong_count(&vdev)),
    );
    let vmm_ioas = vi.ioas().id();
    c.res("vmm attaches its device again", vdev.attach_hwpt(vmm_ioas))?;
    c.res("vmm detaches it", vdev.detach_hwpt())?;
    drop(host);
    c.res(
        "vmm's iommufd open after our backend dropped",
        IommufdIoas::new(ifd.clone()).map(drop),
    )?;
    // VfioDevice's drop detaches (unwrapping the result) and closes; a
    // panic here would end the guest binary and fail guest/finished.
    drop(vdev);
    c.add("vmm drops its device", true, "detached and closed");
    Some(())
}

/// Adopts the VMM's binding, attaches to a new IOAS and has the device copy
/// a buffer through it; returns the IOAS, the device detached.
fn adopted_dma(
    c: &mut Checks,
    host: &SharedHost,
    vdev: &Arc<VfioDevice>,
    id: DevId,
) -> Option<IoasId> {
    let src = DeviceSource::vfio(vdev);
    let mut dev = c.res("adopt the vmm's binding", BoundDevice::bind(host, src))?;
    c.add(
        "adopted id is vfio-ioctls' id",
        dev.id() == id,
        format!("{} vs {id}", dev.id()),
    );
    c.refused(
        "adopting it twice: EEXIST",
        host.bind_device(DeviceSource::vfio(vdev)),
        Errno::EEXIST,
    );
    c.res("hw_info of the adopted device", host.hw_info(id))?;
    let ioas = c.res("ioas_alloc on the shared iommufd", host.ioas_alloc())?;
    c.res(
        "attach the adopted device",
        dev.attach(None, PtId::Ioas(ioas)),
    )?;
    dma(c, host, ioas, vdev)?;
    drop(dev);
    Some(ioas)
}

/// The device copies a buffer into another, both mapped in `ioas`, with
/// its registers reached through vfio-ioctls.
fn dma(c: &mut Checks, host: &SharedHost, ioas: IoasId, vdev: &VfioDevice) -> Option<()> {
    let mut cmd = [0u8; 2];
    vdev.region_read(CONFIG, &mut cmd, PCI_COMMAND);
    let on = u16::from_le_bytes(cmd) | PCI_COMMAND_MASTER;
    vdev.region_write(CONFIG, &on.to_le_bytes(), PCI_COMMAND);
    let mut idr = [0u8; 4];
    vdev.region_read(BAR0, &mut idr, EDU_ID);
    let edu_id = u32::from_le_bytes(idr);
    c.add(
        "edu answers through vfio-ioctls",
        edu_id == EDU_ID_VALUE,
        format!("{edu_id:#x}"),
    );
    let mut src = c.res("source buffer", Buf::new(DMA_LEN as usize))?;
    let dst = c.res("destination buffer", Buf::new(DMA_LEN as usize))?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = (i as u8) ^ 0x3c;
    }
    for (iova, buf, access) in [
        (IOVA_SRC, &src, Access::READ),
        (IOVA_DST, &dst, Access::WRITE),
    ] {
        let at = IovaPlacement::Fixed(Iova(iova));
        let r = host.ioas_map(ioas, at, MapSource::UserVa(buf.va()), DMA_LEN, access);
        c.res(&format!("map {iova:#x}"), r)?;
    }
    c.res("dma ram -> device", edu_dma(vdev, IOVA_SRC, EDU_BUF, false))?;
    c.res("dma device -> ram", edu_dma(vdev, EDU_BUF, IOVA_DST, true))?;
    c.add(
        "dma through the adopted device arrived",
        dst.bytes() == src.bytes(),
        format!("first bytes {:02x?}", &dst.bytes()[..8]),
    );
    for iova in [IOVA_SRC, IOVA_DST] {
        c.res(
            &format!("unmap {iova:#x}"),
            host.ioas_unmap(ioas, Iova(iova), DMA_LEN),
        )?;
    }
    Some(())
}

/// One edu DMA of [`DMA_LEN`] bytes, waited for.
fn edu_dma(vdev: &VfioDevice, from: u64, to: u64, to_ram: bool) -> Result<(), &'static str> {
    let w = |reg: u64, v: u64| vdev.region_write(BAR0, &v.to_le_bytes(), reg);
    w(EDU_DMA_SRC, from);
    w(EDU_DMA_DST, to);
    w(EDU_DMA_COUNT, DMA_LEN);
    w(
        EDU_DMA_CMD,
        EDU_DMA_RUN | if to_ram { EDU_DMA_TO_RAM } else { 0 },
    );
    let deadline = Instant::now() + DMA_TIMEOUT;
    loop {
        let mut cmd = [0u8; 8];
        vdev.region_read(BAR0, &mut cmd, EDU_DMA_CMD);
        if u64::from_le_bytes(cmd) & EDU_DMA_RUN == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("timed out");
        }
        std::thread::yield_now();
    }
}

/// Part 2: the VMM keeps a plain cdev file and an `IommuFd`.
fn plain_cdev_vmm(c: &mut Checks, path: &Path) -> Option<()> {
    let ifd = Arc::new(c.res("plain: vmm opens /dev/iommu", IommuFd::new())?);
    let host: SharedHost = Arc::new(Iommufd::from_shared(ifd.clone()));
    let file = Arc::new(c.res("plain: vmm opens the cdev", open(path))?);
    let src = DeviceSource::shared(file.clone());
    let mut dev = c.res(
        "plain: bind through the vmm's shared file",
        BoundDevice::bind(&host, src),
    )?;
    let ioas = c.res("plain: ioas_alloc", host.ioas_alloc())?;
    c.res("plain: attach", dev.attach(None, PtId::Ioas(ioas)))?;
    let ranges = host.ioas_iova_ranges(ioas).map(|r| r.ranges.len());
    c.res("plain: iova ranges of the attached IOAS", ranges)?;
    let id = dev.id();
    drop(dev);
    c.res(
        "plain: IOAS destroyed after our detach",
        host.destroy(ObjectId::Ioas(ioas)),
    )?;
    c.add(
        "plain: backend let go of the vmm's file",
        Arc::strong_count(&file) == 1,
        format!("{} references", Arc::strong_count(&file)),
    );
    c.refused(
        "plain: still bound after we let go (bind again: EINVAL)",
        host.bind_device(DeviceSource::shared(file.clone())),
        Errno::EINVAL,
    );
    let src = DeviceSource::shared(file.clone()).bound(id);
    let back = c.res("plain: adopt it back", BoundDevice::bind(&host, src))?;
    drop(back);
    drop(host);
    c.res(
        "plain: vmm's iommufd open after our backend dropped",
        IommufdIoas::new(ifd.clone()).map(drop),
    )?;
    drop(file);
    // The VMM closed the last reference: the device is free again.
    let fresh = Iommufd::from_shared(ifd);
    let again = fresh.bind_device(DeviceSource::Path(path.to_path_buf()));
    c.res("plain: vmm closing its file unbinds the device", again)?;
    Some(())
}
