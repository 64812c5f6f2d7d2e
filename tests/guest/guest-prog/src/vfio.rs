//! Just enough of Linux VFIO (legacy container + type1 IOMMU, the API of
//! include/uapi/linux/vfio.h) to drive the endpoint from user space: bind
//! it to vfio-pci, map buffers at chosen IOVAs, reach BAR0 and config
//! space through the device file, and take MSI-X vector 0 as an eventfd.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vfio_bindings::bindings::vfio::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_GROUP_FLAGS_VIABLE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_TYPE1v2_IOMMU, vfio_group_status,
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_irq_set, vfio_region_info,
};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)` with VFIO_TYPE ';' and VFIO_BASE 100.
pub const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}
const GET_API_VERSION: u64 = vfio_io(0);
const CHECK_EXTENSION: u64 = vfio_io(1);
const SET_IOMMU: u64 = vfio_io(2);
const GROUP_GET_STATUS: u64 = vfio_io(3);
const GROUP_SET_CONTAINER: u64 = vfio_io(4);
const GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const DEVICE_GET_REGION_INFO: u64 = vfio_io(8);
const DEVICE_SET_IRQS: u64 = vfio_io(10);
const IOMMU_MAP_DMA: u64 = vfio_io(13);
const IOMMU_UNMAP_DMA: u64 = vfio_io(14);

/// Names the failed step in an error.
fn ctx<T>(what: &str, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, req, arg)` with a pointer argument.
pub fn ioctl_ptr<T>(fd: &impl AsRawFd, req: u64, arg: &mut T) -> io::Result<libc::c_int> {
    // SAFETY: `arg` is a live, exclusively borrowed struct of the layout
    // the request expects (vfio-bindings' definitions of the uapi).
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, std::ptr::from_mut(arg)) })
}

/// `ioctl(fd, req, value)` with an integer argument.
fn ioctl_val(fd: &impl AsRawFd, req: u64, v: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the request takes an integer argument; no memory is passed.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, v) })
}

/// Binds `dev` to vfio-pci (driver_override, then a probe); nothing to do
/// when it already is.
pub fn bind_vfio_pci(dev: &Path) -> io::Result<()> {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if driver(dev).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    fs::write(dev.join("driver_override"), "vfio-pci")?;
    unbind(dev)?;
    fs::write("/sys/bus/pci/drivers_probe", &name)?;
    let driver = fs::read_link(dev.join("driver"))?;
    if driver.file_name().is_some_and(|n| n == "vfio-pci") {
        Ok(())
    } else {
        Err(io::Error::other(format!("bound to {}", driver.display())))
    }
}

/// Unbinds `dev` from its driver, if it has one.
pub fn unbind(dev: &Path) -> io::Result<()> {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if dev.join("driver").exists() {
        fs::write(dev.join("driver/unbind"), &name)?;
    }
    Ok(())
}

/// The name of the driver `dev` is bound to, if any.
pub fn driver(dev: &Path) -> Option<String> {
    let link = fs::read_link(dev.join("driver")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// A type1v2 container: one IOMMU address space (one domain when the
/// groups' IOMMU allows it) shared by every group added to it.
pub struct Container {
    file: File,
    iommu_set: std::cell::Cell<bool>,
}

impl Container {
    /// Opens a new container and checks the API and type1v2.
    pub fn new() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/vfio/vfio")?;
        if ioctl_val(&file, GET_API_VERSION, 0)? != 0 {
            return Err(io::Error::other("VFIO API version is not 0"));
        }
        let type1 = libc::c_ulong::from(VFIO_TYPE1v2_IOMMU);
        if ioctl_val(&file, CHECK_EXTENSION, type1)? != 1 {
            return Err(io::Error::other("no VFIO_TYPE1v2_IOMMU"));
        }
        Ok(Container {
            file,
            iommu_set: std::cell::Cell::new(false),
        })
    }

    /// Adds the group of `dev` (bound to vfio-pci) to the container (the
    /// first group also selects type1v2) and opens the device.
    pub fn attach(&self, dev: &Path) -> io::Result<Device> {
        let rw = |p: &str| OpenOptions::new().read(true).write(true).open(p);
        let link = fs::read_link(dev.join("iommu_group"))?;
        let n = link.file_name().map(|n| n.to_string_lossy().into_owned());
        let group = rw(&format!("/dev/vfio/{}", n.unwrap_or_default()))?;
        let mut st = vfio_group_status {
            argsz: size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        ctx(
            "VFIO_GROUP_GET_STATUS",
            ioctl_ptr(&group, GROUP_GET_STATUS, &mut st),
        )?;
        if st.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other("group not viable"));
        }
        let mut cfd = self.file.as_raw_fd();
        ctx(
            "VFIO_GROUP_SET_CONTAINER",
            ioctl_ptr(&group, GROUP_SET_CONTAINER, &mut cfd),
        )?;
        if !self.iommu_set.get() {
            let type1 = libc::c_ulong::from(VFIO_TYPE1v2_IOMMU);
            ctx("VFIO_SET_IOMMU", ioctl_val(&self.file, SET_IOMMU, type1))?;
            self.iommu_set.set(true);
        }
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cname = std::ffi::CString::new(name)
            .map_err(io::Error::other)?
            .into_bytes_with_nul();
        // SAFETY: the request reads a NUL-terminated device name from the
        // live buffer; it returns a new file descriptor or -1.
        let fd = ctx(
            "VFIO_GROUP_GET_DEVICE_FD",
            check(unsafe {
                libc::ioctl(
                    group.as_raw_fd(),
                    GROUP_GET_DEVICE_FD as _,
                    cname.as_mut_ptr(),
                )
            }),
        )?;
        // SAFETY: `fd` was just returned by the kernel and is owned here.
        let device = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let bar0 = region_offset(&device, VFIO_PCI_BAR0_REGION_INDEX)?;
        let config = region_offset(&device, VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(Device {
            device,
            _group: Some(group),
            bar0,
            config,
        })
    }

    /// Maps `len` bytes at user address `vaddr` to `iova`; `write` lets
    /// the device write them.
    pub fn map(&self, vaddr: u64, iova: u64, len: u64, write: bool) -> io::Result<()> {
        let mut flags = VFIO_DMA_MAP_FLAG_READ;
        if write {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let mut m = vfio_iommu_type1_dma_map {
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr,
            iova,
            size: len,
        };
        ioctl_ptr(&self.file, IOMMU_MAP_DMA, &mut m).map(|_| ())
    }

    /// Unmaps `[iova, iova + len)`; returns the bytes unmapped.
    pub fn unmap(&self, iova: u64, len: u64) -> io::Result<u64> {
        let mut u = vfio_iommu_type1_dma_unmap {
            argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            iova,
            size: len,
            ..Default::default()
        };
        ioctl_ptr(&self.file, IOMMU_UNMAP_DMA, &mut u)?;
        Ok(u.size)
    }
}

/// A device opened through its group (which keeps the group's place in
/// its container while it lives).
pub struct Device {
    device: File,
    /// The group it was opened through (none for a cdev bound to iommufd).
    _group: Option<File>,
    bar0: u64,
    config: u64,
}

/// A type1 container holding one device's group, and the device.
pub struct Vfio {
    pub dev: Device,
    pub container: Container,
}

impl Vfio {
    /// Opens the group of `dev` (bound to vfio-pci), puts it in a new
    /// type1v2 container and gets the device.
    pub fn open(dev: &Path) -> io::Result<Self> {
        let container = Container::new()?;
        let dev = container.attach(dev)?;
        Ok(Vfio { dev, container })
    }

    /// [`Container::map`].
    pub fn map(&self, vaddr: u64, iova: u64, len: u64, write: bool) -> io::Result<()> {
        self.container.map(vaddr, iova, len, write)
    }
}

impl Device {
    /// A device opened as its VFIO cdev (`/dev/vfio/devices/vfioN`), to be
    /// bound to an iommufd before use of its regions.
    pub fn from_cdev(device: File) -> Self {
        Device {
            device,
            _group: None,
            bar0: 0,
            config: 0,
        }
    }

    /// Looks up the BAR0 and config region offsets (after the bind).
    pub fn find_regions(&mut self) -> io::Result<()> {
        self.bar0 = region_offset(&self.device, VFIO_PCI_BAR0_REGION_INDEX)?;
        self.config = region_offset(&self.device, VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(())
    }

    /// The device file.
    pub fn file(&self) -> &File {
        &self.device
    }

    /// Reads the BAR0 register at `off`.
    pub fn read32(&self, off: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.device.read_exact_at(&mut b, self.bar0 + off)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes the BAR0 register at `off`.
    pub fn write32(&self, off: u64, v: u32) -> io::Result<()> {
        self.device.write_all_at(&v.to_le_bytes(), self.bar0 + off)
    }

    /// Reads 16 bits of config space.
    pub fn config_read16(&self, off: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.device.read_exact_at(&mut b, self.config + off)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes 16 bits of config space.
    pub fn config_write16(&self, off: u64, v: u16) -> io::Result<()> {
        self.device
            .write_all_at(&v.to_le_bytes(), self.config + off)
    }

    /// Enables MSI-X with vector 0 signalling a new eventfd.
    pub fn msix_vector0(&self) -> io::Result<EventFd> {
        // SAFETY: creates a new eventfd; -1 on failure.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned here.
        let efd = EventFd(unsafe { OwnedFd::from_raw_fd(fd) });
        #[repr(C)]
        struct SetOne {
            hdr: vfio_irq_set,
            fd: i32,
        }
        let mut s = SetOne {
            hdr: vfio_irq_set {
                argsz: size_of::<SetOne>() as u32,
                flags: VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                index: VFIO_PCI_MSIX_IRQ_INDEX,
                start: 0,
                count: 1,
                ..Default::default()
            },
            fd: efd.0.as_raw_fd(),
        };
        ioctl_ptr(&self.device, DEVICE_SET_IRQS, &mut s)?;
        Ok(efd)
    }
}

fn region_offset(dev: &File, index: u32) -> io::Result<u64> {
    let mut r = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    ioctl_ptr(dev, DEVICE_GET_REGION_INFO, &mut r)?;
    Ok(r.offset)
}

/// An eventfd the kernel signals for an interrupt.
pub struct EventFd(OwnedFd);

impl EventFd {
    /// Waits up to `ms` milliseconds for the counter; returns its value
    /// (interrupts since the last read), 0 on timeout.
    pub fn wait(&self, ms: i32) -> io::Result<u64> {
        let mut p = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if check(unsafe { libc::poll(&mut p, 1, ms) })? == 0 {
            return Ok(0);
        }
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into the live buffer.
        let n = unsafe { libc::read(self.0.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
        if n != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from_ne_bytes(b))
    }
}

/// `len` bytes of anonymous memory (page-aligned), unmapped on drop.
pub struct Buf {
    addr: *mut u8,
    len: usize,
}

impl Buf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Buf {
            addr: p.cast(),
            len,
        })
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The user virtual address.
    pub fn va(&self) -> u64 {
        self.addr as u64
    }

    /// Writes byte `i` (volatile: the device reads it behind our back).
    pub fn set(&mut self, i: usize, v: u8) {
        assert!(i < self.len);
        // SAFETY: `i` is inside the live mapping.
        unsafe { self.addr.add(i).write_volatile(v) }
    }

    /// Byte `i` as memory holds it now (volatile: the device writes it).
    pub fn get(&self, i: usize) -> u8 {
        assert!(i < self.len);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: `i` is inside the live mapping.
        unsafe { self.addr.add(i).read_volatile() }
    }

    /// The bytes as memory holds them now.
    pub fn snapshot(&self) -> Vec<u8> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: every index is inside the live mapping.
        (0..self.len)
            .map(|i| unsafe { self.addr.add(i).read_volatile() })
            .collect()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}
