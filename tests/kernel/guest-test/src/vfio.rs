//! The real-device part: QEMU's `edu` device behind QEMU's intel-iommu,
//! bound to vfio-pci in the guest (tests/kernel/vfio-setup), driven
//! through the `Iommufd` backend over its VFIO cdev: bind, hardware
//! information, the decision ladder, IOAS mapping, attach, DMA by the
//! device into our buffer, and DMA refused after unmap.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nesting_core::host::info::{cap, ecap};
use nesting_core::host::{
    DeviceSource, HostBackend, HwInfo, IoasId, Iommufd, IovaPlacement, MapSource, PtId,
};
use nesting_core::ladder::{self, DecisionKind, HostView};
use nesting_core::options::ModelOptions;
use nesting_core::types::{Access, Iova};
use vtd::VtdConfig;

use iommufd_sim::profile::SimHostSpec;

use crate::mem::{Buf, Mem};
use crate::rig::{SimRig, VfioRig, spec_from_kernel};
use crate::scenarios;
use crate::trace::{Check, Trace};

/// PCI IDs of QEMU's edu device.
const EDU_VENDOR: &str = "0x1234";
const EDU_DEVICE: &str = "0x11e8";
/// edu registers (QEMU docs/specs/edu.rst): identification, DMA source,
/// destination, count, command.
pub(crate) const EDU_ID: u64 = 0x00;
pub(crate) const EDU_DMA_SRC: u64 = 0x80;
pub(crate) const EDU_DMA_DST: u64 = 0x88;
pub(crate) const EDU_DMA_COUNT: u64 = 0x90;
pub(crate) const EDU_DMA_CMD: u64 = 0x98;
/// Command bits: start; direction (set: device buffer to RAM).
pub(crate) const EDU_DMA_RUN: u64 = 1;
pub(crate) const EDU_DMA_TO_RAM: u64 = 2;
/// The device's DMA buffer, as addressed by its DMA registers.
pub(crate) const EDU_BUF: u64 = 0x4_0000;
/// Bytes moved per DMA (the buffer is 4 KiB).
pub(crate) const DMA_LEN: u64 = 4096;
/// Upper half of the identification register: version 1.0 (`0x010000ed`).
pub(crate) const EDU_ID_VALUE: u32 = 0x0100_00ed;
/// IOVAs of the source and destination buffers: below the edu's 28-bit DMA
/// mask, which it would apply silently.
pub(crate) const IOVA_SRC: u64 = 0x100_0000;
pub(crate) const IOVA_DST: u64 = 0x100_1000;
/// How long a DMA may take: edu runs it from a 100 ms (virtual) timer.
pub(crate) const DMA_TIMEOUT: Duration = Duration::from_secs(20);

/// `VFIO_DEVICE_GET_REGION_INFO`: `_IO(VFIO_TYPE, VFIO_BASE + 8)`.
const VFIO_DEVICE_GET_REGION_INFO: u64 = ((b';' as u64) << 8) | (100 + 8);
/// `VFIO_PCI_BAR0_REGION_INDEX`, `VFIO_PCI_CONFIG_REGION_INDEX`.
pub(crate) const BAR0: u32 = 0;
pub(crate) const CONFIG: u32 = 7;
/// PCI command register and its bus-master bit.
pub(crate) const PCI_COMMAND: u64 = 0x04;
pub(crate) const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// `struct vfio_region_info` (include/uapi/linux/vfio.h), 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

const _: () = assert!(size_of::<RegionInfo>() == 32);

/// File offset of a VFIO region.
fn region_offset(dev: &File, index: u32) -> io::Result<u64> {
    let mut info = RegionInfo {
        argsz: size_of::<RegionInfo>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: `info` is a live `struct vfio_region_info` whose `argsz` says
    // how much of it the kernel may write; the request carries no pointer.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            VFIO_DEVICE_GET_REGION_INFO as _,
            &mut info as *mut RegionInfo,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.offset)
}

/// The edu's BAR 0 through the VFIO device file.
struct Edu {
    dev: File,
    bar: u64,
}

impl Edu {
    fn read32(&self, reg: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.dev.read_exact_at(&mut b, self.bar + reg)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read64(&self, reg: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.dev.read_exact_at(&mut b, self.bar + reg)?;
        Ok(u64::from_le_bytes(b))
    }

    fn write64(&self, reg: u64, v: u64) -> io::Result<()> {
        self.dev.write_all_at(&v.to_le_bytes(), self.bar + reg)
    }

    /// Runs one DMA and waits for the device to finish it.
    fn dma(&self, src: u64, dst: u64, to_ram: bool) -> io::Result<()> {
        self.write64(EDU_DMA_SRC, src)?;
        self.write64(EDU_DMA_DST, dst)?;
        self.write64(EDU_DMA_COUNT, DMA_LEN)?;
        let dir = if to_ram { EDU_DMA_TO_RAM } else { 0 };
        self.write64(EDU_DMA_CMD, EDU_DMA_RUN | dir)?;
        let deadline = Instant::now() + DMA_TIMEOUT;
        while self.read64(EDU_DMA_CMD)? & EDU_DMA_RUN != 0 {
            if Instant::now() > deadline {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            std::thread::yield_now();
        }
        Ok(())
    }
}

/// The VFIO cdev of the edu device, if it is bound to vfio-pci.
pub(crate) fn find_edu() -> Option<PathBuf> {
    for entry in fs::read_dir("/sys/bus/pci/devices").ok()?.flatten() {
        let p = entry.path();
        let id = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        if id("vendor").trim() != EDU_VENDOR || id("device").trim() != EDU_DEVICE {
            continue;
        }
        let cdev = fs::read_dir(p.join("vfio-dev")).ok()?.flatten().next()?;
        return Some(PathBuf::from("/dev/vfio/devices").join(cdev.file_name()));
    }
    None
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &str, pass: bool, detail: impl Into<String>) -> bool {
        self.0.push(Check {
            name: format!("vfio/{name}"),
            pass,
            detail: detail.into(),
        });
        pass
    }

    fn res<T, E: std::fmt::Display>(&mut self, name: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => {
                self.add(name, true, "ok");
                Some(v)
            }
            Err(e) => {
                self.add(name, false, e.to_string());
                None
            }
        }
    }
}

/// What the real-device part found: its checks, and the traces of the
/// VT-d scenario on the kernel and on the simulator described like it.
pub struct Outcome {
    /// Checks of the DMA part.
    pub checks: Vec<Check>,
    /// Kernel and simulator traces of [`scenarios::vtd::vtd`].
    pub traces: Option<(Trace, Trace)>,
}

/// Runs the real-device checks, then the VT-d scenario on both hosts.
pub fn run(mem: &Mem) -> Outcome {
    let mut c = Checks(Vec::new());
    let found = run_inner(&mut c);
    let traces = found.and_then(|(path, spec)| {
        let spec = spec?;
        let fd = c.res("open /dev/iommu again", Iommufd::open())?;
        let kernel = VfioRig { fd, path };
        let mut tk = Trace::default();
        scenarios::vtd::vtd(&kernel, &mut tk, mem);
        let mut ts = Trace::default();
        scenarios::vtd::vtd(&SimRig::with_spec(spec), &mut ts, mem);
        Some((tk, ts))
    });
    Outcome {
        checks: c.0,
        traces,
    }
}

/// Returns the device path and the simulated host describing it.
fn run_inner(c: &mut Checks) -> Option<(PathBuf, Option<SimHostSpec>)> {
    let path = find_edu();
    c.add("edu bound to vfio-pci", path.is_some(), format!("{path:?}"));
    let path = path?;
    let dev = c.res(
        "open cdev",
        OpenOptions::new().read(true).write(true).open(&path),
    )?;
    let host = c.res("open /dev/iommu", Iommufd::open())?;
    let fd = c.res("dup cdev", dev.try_clone())?;
    let id = c.res("bind", host.bind_device(DeviceSource::Fd(fd.into())))?;
    let info = c.res("get_hw_info", host.hw_info(id))?;
    let HwInfo::IntelVtd {
        cap: cr, ecap: er, ..
    } = info.hw
    else {
        c.add("hw_info is VT-d", false, format!("{:?}", info.hw));
        return None;
    };
    c.add(
        "hw_info is QEMU's VT-d: caching mode, scalable mode, no nesting",
        cap::CM.get(cr.0) == 1 && ecap::SMTS.get(er.0) == 1 && ecap::NEST.get(er.0) == 0,
        format!("cap {:#018x} ecap {:#018x}", cr.0, er.0),
    );
    let ioas = c.res("ioas_alloc", host.ioas_alloc())?;
    c.res("attach to ioas", host.attach(id, None, PtId::Ioas(ioas)))?;
    let ranges = c.res("iova_ranges", host.ioas_iova_ranges(ioas))?;
    decide(c, &info, &ranges);
    let edu = edu(c, dev)?;
    dma(c, &host, ioas, &edu)?;
    c.res("detach", host.detach(id, None))?;
    c.res("unbind", host.unbind_device(id))?;
    Some((path, spec_from_kernel(&info, &ranges)))
}

/// The device copies a buffer through its own memory into another mapped
/// buffer; after the destination is unmapped the same DMA must not land.
fn dma(c: &mut Checks, host: &Iommufd, ioas: IoasId, edu: &Edu) -> Option<()> {
    let mut src = c.res("source buffer", Buf::new(DMA_LEN as usize))?;
    let mut dst = c.res("destination buffer", Buf::new(DMA_LEN as usize))?;
    for (i, b) in src.bytes_mut().iter_mut().enumerate() {
        *b = (i as u8) ^ 0xa5;
    }
    let map = |iova, b: &Buf, a| {
        let at = IovaPlacement::Fixed(Iova(iova));
        host.ioas_map(ioas, at, MapSource::UserVa(b.va()), DMA_LEN, a)
    };
    c.res("map source (read)", map(IOVA_SRC, &src, Access::READ))?;
    c.res(
        "map destination (write)",
        map(IOVA_DST, &dst, Access::WRITE),
    )?;
    c.res("dma ram -> device", edu.dma(IOVA_SRC, EDU_BUF, false))?;
    c.res("dma device -> ram", edu.dma(EDU_BUF, IOVA_DST, true))?;
    let same = dst.bytes() == src.bytes();
    let head = format!("first bytes {:02x?}", &dst.bytes()[..8]);
    c.add("dma bytes arrived", same, head);
    dst.bytes_mut().fill(0);
    let unmap = host.ioas_unmap(ioas, Iova(IOVA_DST), DMA_LEN);
    c.res("unmap destination", unmap)?;
    c.res(
        "dma after unmap completes",
        edu.dma(EDU_BUF, IOVA_DST, true),
    )?;
    let untouched = dst.bytes().iter().all(|b| *b == 0);
    c.add(
        "dma after unmap refused",
        untouched,
        "destination left zero",
    );
    Some(())
}

/// The ladder on the host description the kernel gave, for a VT-d guest
/// with caching mode: QEMU's VT-d has no nesting, so it must shadow.
fn decide(c: &mut Checks, info: &nesting_core::host::HostInfo, r: &nesting_core::host::IovaRanges) {
    let Some(model) = c.res("guest model vtd cm=1", VtdConfig::from_options(&["cm=1"])) else {
        return;
    };
    let view = HostView {
        info: info.clone(),
        iova_ranges: r.ranges.clone(),
        page_size: r.alignment.max(4096),
        unit: None,
    };
    let d = ladder::decide(&model, &view);
    c.add(
        "ladder decides shadow",
        d.kind == DecisionKind::Shadow,
        format!("{}: {}", d.kind, d.reason()),
    );
}

/// Enables bus mastering and checks the device answers on BAR 0.
fn edu(c: &mut Checks, dev: File) -> Option<Edu> {
    let cfg = c.res("config region", region_offset(&dev, CONFIG))?;
    let mut cmd = [0u8; 2];
    c.res(
        "read command",
        dev.read_exact_at(&mut cmd, cfg + PCI_COMMAND),
    )?;
    let v = u16::from_le_bytes(cmd) | PCI_COMMAND_MASTER;
    c.res(
        "bus master on",
        dev.write_all_at(&v.to_le_bytes(), cfg + PCI_COMMAND),
    )?;
    let bar = c.res("bar0 region", region_offset(&dev, BAR0))?;
    let edu = Edu { dev, bar };
    let id = c.res("read id", edu.read32(EDU_ID))?;
    c.add("edu identifies", id == EDU_ID_VALUE, format!("{id:#x}"));
    Some(edu)
}
