//! Just enough of iommufd (include/uapi/linux/iommufd.h) and the VFIO
//! device cdev (include/uapi/linux/vfio.h, VFIO_DEVICE_BIND_IOMMUFD and
//! VFIO_DEVICE_ATTACH_IOMMUFD_PT) to put endpoints in one IOAS and learn
//! which hardware page table (iommu_domain) each got.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::vfio::{self, Device, ioctl_ptr, vfio_io};

/// `_IO(IOMMUFD_TYPE, n)` with IOMMUFD_TYPE ';'.
const fn iommufd_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | n
}
const IOAS_ALLOC: u64 = iommufd_io(0x81);
const IOAS_MAP: u64 = iommufd_io(0x85);
const IOAS_UNMAP: u64 = iommufd_io(0x86);
const DEVICE_BIND_IOMMUFD: u64 = vfio_io(18);
const DEVICE_ATTACH_IOMMUFD_PT: u64 = vfio_io(19);

/// enum iommufd_ioas_map_flags.
const MAP_FIXED_IOVA: u32 = 1 << 0;
const MAP_WRITEABLE: u32 = 1 << 1;
const MAP_READABLE: u32 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct IoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

#[repr(C)]
#[derive(Default)]
struct IoasMap {
    size: u32,
    flags: u32,
    ioas_id: u32,
    reserved: u32,
    user_va: u64,
    length: u64,
    iova: u64,
}

#[repr(C)]
#[derive(Default)]
struct IoasUnmap {
    size: u32,
    ioas_id: u32,
    iova: u64,
    length: u64,
}

#[repr(C)]
#[derive(Default)]
struct BindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
    token_uuid_ptr: u64,
}

#[repr(C)]
#[derive(Default)]
struct AttachPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
    pasid: u32,
}

// The uapi sizes (the kernel checks `size`/`argsz` against them).
const _: () = assert!(size_of::<IoasAlloc>() == 12);
const _: () = assert!(size_of::<IoasMap>() == 40);
const _: () = assert!(size_of::<IoasUnmap>() == 24);
const _: () = assert!(size_of::<BindIommufd>() == 24);
const _: () = assert!(size_of::<AttachPt>() == 16);

/// An iommufd with one IOAS.
pub struct Iommufd {
    file: File,
    pub ioas: u32,
}

impl Iommufd {
    /// Opens `/dev/iommu` and allocates an IOAS.
    pub fn new() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/iommu")?;
        let mut a = IoasAlloc {
            size: size_of::<IoasAlloc>() as u32,
            ..Default::default()
        };
        ioctl_ptr(&file, IOAS_ALLOC, &mut a)?;
        Ok(Iommufd {
            file,
            ioas: a.out_ioas_id,
        })
    }

    /// Opens the VFIO cdev of `dev` (bound to vfio-pci) and binds it to
    /// this iommufd. Bound, the device is the kernel's to isolate: its
    /// group is claimed for user space and attached to a blocking domain
    /// until [`Iommufd::attach`].
    pub fn bind(&self, dev: &Path) -> io::Result<Device> {
        let cdev = fs::read_dir(dev.join("vfio-dev"))?
            .filter_map(|e| e.ok())
            .find_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("vfio").then_some(n)
            })
            .ok_or_else(|| io::Error::other("no vfio-dev/vfioN"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/dev/vfio/devices/{cdev}"))?;
        let mut b = BindIommufd {
            argsz: size_of::<BindIommufd>() as u32,
            iommufd: self.file.as_raw_fd(),
            ..Default::default()
        };
        ioctl_ptr(&file, DEVICE_BIND_IOMMUFD, &mut b)
            .map_err(|e| io::Error::new(e.kind(), format!("VFIO_DEVICE_BIND_IOMMUFD: {e}")))?;
        let mut d = Device::from_cdev(file);
        d.find_regions()?;
        Ok(d)
    }

    /// Attaches a bound device to the IOAS; returns the ID of the hardware
    /// page table the kernel attached it to.
    pub fn attach(&self, d: &Device) -> io::Result<u32> {
        let mut a = AttachPt {
            argsz: size_of::<AttachPt>() as u32,
            pt_id: self.ioas,
            ..Default::default()
        };
        ioctl_ptr(d.file(), DEVICE_ATTACH_IOMMUFD_PT, &mut a)
            .map_err(|e| io::Error::new(e.kind(), format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT: {e}")))?;
        Ok(a.pt_id)
    }

    /// Maps `buf` at `iova`, readable and writable.
    pub fn map(&self, buf: &vfio::Buf, iova: u64) -> io::Result<()> {
        let mut m = IoasMap {
            size: size_of::<IoasMap>() as u32,
            flags: MAP_FIXED_IOVA | MAP_READABLE | MAP_WRITEABLE,
            ioas_id: self.ioas,
            user_va: buf.va(),
            length: buf.len() as u64,
            iova,
            ..Default::default()
        };
        ioctl_ptr(&self.file, IOAS_MAP, &mut m).map(|_| ())
    }

    /// Unmaps `[iova, iova + len)`; returns the bytes unmapped.
    pub fn unmap(&self, iova: u64, len: u64) -> io::Result<u64> {
        let mut u = IoasUnmap {
            size: size_of::<IoasUnmap>() as u32,
            ioas_id: self.ioas,
            iova,
            length: len,
        };
        ioctl_ptr(&self.file, IOAS_UNMAP, &mut u)?;
        Ok(u.length)
    }
}
