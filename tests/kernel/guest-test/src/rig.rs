//! One interface over the two hosts a scenario runs on: the kernel (the
//! real [`Iommufd`] backend plus the selftest ioctl for what only a mock
//! device can do) and [`SimIommufd`] (its own injection hooks).
//!
//! A scenario drives every iommufd call through [`Rig::host`], the
//! `HostBackend` under test, and uses the other methods only for what a
//! real device or the kernel's internals would do: appear, attach through
//! its driver, fault, raise an event, dirty a page, report pin counts.

use std::fs;
use std::os::fd::AsFd;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::SimHostSpec;
use nesting_core::host::info::{HostCaps, HostInfo, HwInfo};
use nesting_core::host::{DevId, Errno, HostBackend, HwptId, Iommufd, PtId, ViommuId};
use nesting_core::types::{Access, Iova, IovaRange, Pasid};

use crate::testcmd::{self as tc, IommuTestCmd, Op};

/// A device of the test, bound and attached: a mock device (kernel
/// selftest or simulator) or the real VFIO device.
#[derive(Clone, Copy, Debug)]
pub struct TestDev {
    /// Its iommufd device ID.
    pub dev: DevId,
    /// The selftest object holding it (kernel only; 0 on the simulator).
    pub stdev: u32,
}

/// A host a scenario runs on.
pub trait Rig {
    /// The backend under test.
    fn host(&self) -> &dyn HostBackend;
    /// Adds a device attached to `pt` (an IOAS or a HWPT);
    /// `pasid`: the device supports PASIDs.
    fn add_device(&self, pt: PtId, pasid: bool) -> Result<TestDev, Errno>;
    /// Attaches (or replaces) the device's RID or PASID domain.
    fn attach(&self, d: TestDev, pasid: Option<Pasid>, pt: PtId) -> Result<(), Errno>;
    /// Detaches a PASID.
    fn detach_pasid(&self, d: TestDev, pasid: Pasid) -> Result<(), Errno>;
    /// Whether a device's PASID is attached to `hwpt` (`None`: detached).
    fn pasid_domain_is(&self, d: TestDev, pasid: Pasid, hwpt: Option<HwptId>) -> bool;
    /// Pages pinned for DMA by this process now.
    fn pinned_pages(&self) -> u64;
    /// How many times each page of `[va, va + len)` is pinned, where the
    /// host can tell.
    fn pin_count(&self, _va: u64, _len: u64) -> Option<Result<u32, i32>> {
        None
    }
    /// The device raises a one-fault page request group.
    fn trigger_iopf(
        &self,
        d: TestDev,
        pasid: Option<Pasid>,
        grpid: u32,
        addr: Iova,
    ) -> Result<(), Errno>;
    /// The device raises the selftest vEVENT (its vDEVICE's virtual ID).
    fn trigger_vevent(&self, d: TestDev, viommu: ViommuId, virt_id: u32) -> Result<(), Errno>;
    /// The device writes the page at `iova` through `hwpt`.
    fn dirty(&self, hwpt: HwptId, iova: Iova, page: u64) -> Result<(), Errno>;
}

/// The simulated host describing the kernel's mock IOMMU
/// (`drivers/iommu/iommufd/selftest.c`, `MOCK_IOMMUPT_DEFAULT`) for a mock
/// device with or without `MOCK_FLAGS_DEVICE_PASID`.
pub fn mock_spec(pasid: bool) -> SimHostSpec {
    let mut data = Vec::new();
    data.extend_from_slice(&0u32.to_ne_bytes());
    data.extend_from_slice(&tc::HW_INFO_SELFTEST_REGVAL.to_ne_bytes());
    SimHostSpec {
        info: HostInfo {
            hw: HwInfo::Other {
                kind: tc::HW_INFO_TYPE_SELFTEST,
                data,
            },
            // mock_domain_capable: dirty tracking unless the device has
            // MOCK_FLAGS_DEVICE_NO_DIRTY; mock devices do no ATS.
            caps: HostCaps::DIRTY_TRACKING | HostCaps::PCI_ATS_NOT_SUPPORTED,
            max_pasid_log2: if pasid { tc::MOCK_PASID_WIDTH } else { 0 },
        },
        page_size: tc::MOCK_PAGE_SIZE,
        aperture: IovaRange {
            first: Iova(tc::MOCK_APERTURE_START),
            last: Iova(tc::MOCK_APERTURE_LAST),
        },
        reserved: vec![],
    }
}

/// The kernel: a fresh `/dev/iommu`.
#[derive(Debug)]
pub struct KernelRig {
    /// The backend under test.
    pub fd: Iommufd,
}

impl KernelRig {
    /// Opens `/dev/iommu`.
    pub fn open() -> std::io::Result<Self> {
        Ok(KernelRig {
            fd: Iommufd::open()?,
        })
    }

    fn cmd(&self, mut c: IommuTestCmd) -> Result<IommuTestCmd, Errno> {
        c.run(self.fd.as_fd()).map_err(Errno)?;
        Ok(c)
    }

    /// How many times each page of `[uptr, uptr + len)` is pinned, checked
    /// by `IOMMU_TEST_OP_MD_CHECK_REFS` (0 when it fails for every count
    /// tried, up to 4).
    pub fn pin_count(&self, uptr: u64, len: u64) -> Result<u32, Errno> {
        for refs in 0..=4 {
            let mut c = IommuTestCmd::new(Op::MdCheckRefs, 0);
            c.set_u64(0, len).set_u64(8, uptr).set_u32(16, refs);
            match self.cmd(c) {
                Ok(_) => return Ok(refs),
                Err(Errno(libc::EIO)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EIO)
    }
}

/// `VmPin` of /proc/self/status (`mm->pinned_vm`, which iommufd raises for
/// every page it pins whatever its accounting mode), in 4 KiB pages.
pub fn vm_pinned_pages() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPin:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 4)
}

impl Rig for KernelRig {
    fn host(&self) -> &dyn HostBackend {
        &self.fd
    }

    fn add_device(&self, pt: PtId, pasid: bool) -> Result<TestDev, Errno> {
        let mut c = IommuTestCmd::new(Op::MockDomainFlags, pt.raw());
        c.set_u32(
            12,
            if pasid {
                tc::MOCK_FLAGS_DEVICE_PASID
            } else {
                0
            },
        );
        let c = self.cmd(c)?;
        Ok(TestDev {
            stdev: c.u32_at(0),
            dev: DevId(c.u32_at(8)),
        })
    }

    fn attach(&self, d: TestDev, pasid: Option<Pasid>, pt: PtId) -> Result<(), Errno> {
        let Some(p) = pasid else {
            let mut c = IommuTestCmd::new(Op::MockDomainReplace, d.stdev);
            c.set_u32(0, pt.raw());
            return self.cmd(c).map(drop);
        };
        let op = if self.pasid_domain_is(d, p, None) {
            Op::PasidAttach
        } else {
            Op::PasidReplace
        };
        let mut c = IommuTestCmd::new(op, d.stdev);
        c.set_u32(0, p.raw()).set_u32(4, pt.raw());
        self.cmd(c).map(drop)
    }

    fn detach_pasid(&self, d: TestDev, pasid: Pasid) -> Result<(), Errno> {
        let mut c = IommuTestCmd::new(Op::PasidDetach, d.stdev);
        c.set_u32(0, pasid.raw());
        self.cmd(c).map(drop)
    }

    fn pasid_domain_is(&self, d: TestDev, pasid: Pasid, hwpt: Option<HwptId>) -> bool {
        // PASID_CHECK_HWPT succeeds when the PASID's domain is the HWPT's;
        // HWPT 0 asks whether the PASID is detached.
        let mut c = IommuTestCmd::new(Op::PasidCheckHwpt, d.stdev);
        c.set_u32(0, pasid.raw())
            .set_u32(4, hwpt.map_or(0, |h| h.0));
        self.cmd(c).is_ok()
    }

    fn pinned_pages(&self) -> u64 {
        vm_pinned_pages()
    }

    fn pin_count(&self, va: u64, len: u64) -> Option<Result<u32, i32>> {
        Some(KernelRig::pin_count(self, va, len).map_err(|e| e.0))
    }

    fn trigger_iopf(
        &self,
        d: TestDev,
        pasid: Option<Pasid>,
        grpid: u32,
        addr: Iova,
    ) -> Result<(), Errno> {
        let mut c = IommuTestCmd::new(Op::TriggerIopf, 0);
        c.set_u32(0, d.dev.0)
            .set_u32(4, pasid.map_or(0, Pasid::raw))
            .set_u32(8, grpid)
            .set_u32(12, 1 | 2) // IOMMU_PGFAULT_PERM_READ | _WRITE
            .set_u64(16, addr.0);
        self.cmd(c).map(drop)
    }

    fn trigger_vevent(&self, d: TestDev, _viommu: ViommuId, _virt_id: u32) -> Result<(), Errno> {
        let mut c = IommuTestCmd::new(Op::TriggerVevent, 0);
        c.set_u32(0, d.dev.0);
        self.cmd(c).map(drop)
    }

    fn dirty(&self, hwpt: HwptId, iova: Iova, page: u64) -> Result<(), Errno> {
        // IOMMU_TEST_OP_DIRTY marks the pages whose bits are set in the
        // bitmap at `uptr` (one bit per `page_size` from `iova`).
        let mut bitmap = [1u64];
        let mut c = IommuTestCmd::new(Op::Dirty, hwpt.0);
        c.set_u32(0, 0)
            .set_u64(8, iova.0)
            .set_u64(16, page)
            .set_u64(24, page)
            .set_u64(32, bitmap.as_mut_ptr() as u64);
        self.cmd(c).map(drop)
    }
}

/// The simulator, with one mock IOMMU unit.
#[derive(Debug)]
pub struct SimRig {
    /// The backend under test.
    pub sim: SimIommufd,
}

/// Unit of the simulator's mock devices without PASID support.
const SIM_UNIT_PLAIN: u32 = 0;
/// Unit of the simulator's mock devices with PASID support.
const SIM_UNIT_PASID: u32 = 1;

/// Whether the running kernel has CONFIG_TRANSPARENT_HUGEPAGE, which the
/// simulator must be told: it changes automatic IOVA placement.
fn kernel_has_thp() -> bool {
    std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists()
}

impl Default for SimRig {
    fn default() -> Self {
        let sim = SimIommufd::new();
        sim.set_transparent_hugepage(kernel_has_thp());
        assert_eq!(sim.add_iommu(mock_spec(false)), SIM_UNIT_PLAIN);
        assert_eq!(sim.add_iommu(mock_spec(true)), SIM_UNIT_PASID);
        SimRig { sim }
    }
}

impl Rig for SimRig {
    fn host(&self) -> &dyn HostBackend {
        &self.sim
    }

    fn add_device(&self, pt: PtId, pasid: bool) -> Result<TestDev, Errno> {
        let unit = if pasid {
            SIM_UNIT_PASID
        } else {
            SIM_UNIT_PLAIN
        };
        let dev = self
            .sim
            .bind_device(self.sim.add_device(unit))
            .map_err(|e| e.errno)?;
        self.sim.attach(dev, None, pt).map_err(|e| e.errno)?;
        Ok(TestDev { dev, stdev: 0 })
    }

    fn attach(&self, d: TestDev, pasid: Option<Pasid>, pt: PtId) -> Result<(), Errno> {
        self.sim.attach(d.dev, pasid, pt).map_err(|e| e.errno)
    }

    fn detach_pasid(&self, d: TestDev, pasid: Pasid) -> Result<(), Errno> {
        self.sim.detach(d.dev, Some(pasid)).map_err(|e| e.errno)
    }

    fn pasid_domain_is(&self, d: TestDev, pasid: Pasid, hwpt: Option<HwptId>) -> bool {
        self.sim.attached_hwpt(d.dev, Some(pasid)) == hwpt
    }

    fn pinned_pages(&self) -> u64 {
        self.sim.pinned_pages()
    }

    /// `IOMMU_TEST_OP_TRIGGER_IOPF` reports the fault with
    /// `iommu_report_device_fault`, which returns nothing: a fault the
    /// domain cannot take is dropped and the op still succeeds.
    fn trigger_iopf(
        &self,
        d: TestDev,
        pasid: Option<Pasid>,
        _grpid: u32,
        addr: Iova,
    ) -> Result<(), Errno> {
        let _dropped = self
            .sim
            .inject_page_fault(d.dev, pasid, addr, Access::RW, 1);
        Ok(())
    }

    /// `iommufd_test_trigger_vevent`: the mock device knows its vIOMMU and
    /// virtual ID only while attached to a nested HWPT of that vIOMMU
    /// (`mock_domain_nop_attach`), else ENOENT.
    fn trigger_vevent(&self, d: TestDev, viommu: ViommuId, virt_id: u32) -> Result<(), Errno> {
        let on_viommu = self
            .sim
            .attached_hwpt(d.dev, None)
            .and_then(|h| self.sim.hwpt(h))
            .is_some_and(|h| h.parent == PtId::Viommu(viommu));
        if !on_viommu {
            return Err(Errno::ENOENT);
        }
        self.sim
            .inject_vevent(viommu, virt_id.to_ne_bytes().to_vec())
    }

    fn dirty(&self, hwpt: HwptId, iova: Iova, _page: u64) -> Result<(), Errno> {
        if self.sim.mark_dirty(hwpt, iova) {
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }
}

/// The kernel with a real VFIO device: "adding a device" binds it through
/// its cdev path (once) and attaches it with `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
#[derive(Debug)]
pub struct VfioRig {
    /// The backend under test.
    pub fd: Iommufd,
    /// The device's VFIO cdev.
    pub path: std::path::PathBuf,
}

impl Rig for VfioRig {
    fn host(&self) -> &dyn HostBackend {
        &self.fd
    }

    fn add_device(&self, pt: PtId, _pasid: bool) -> Result<TestDev, Errno> {
        let src = nesting_core::host::DeviceSource::Path(self.path.clone());
        let dev = self.fd.bind_device(src).map_err(|e| e.errno)?;
        self.fd.attach(dev, None, pt).map_err(|e| e.errno)?;
        Ok(TestDev { dev, stdev: 0 })
    }

    fn attach(&self, d: TestDev, pasid: Option<Pasid>, pt: PtId) -> Result<(), Errno> {
        self.fd.attach(d.dev, pasid, pt).map_err(|e| e.errno)
    }

    fn detach_pasid(&self, d: TestDev, pasid: Pasid) -> Result<(), Errno> {
        self.fd.detach(d.dev, Some(pasid)).map_err(|e| e.errno)
    }

    /// Not observable through VFIO.
    fn pasid_domain_is(&self, _d: TestDev, _pasid: Pasid, _hwpt: Option<HwptId>) -> bool {
        false
    }

    fn pinned_pages(&self) -> u64 {
        vm_pinned_pages()
    }

    /// A real device faults on its own; nothing triggers it here.
    fn trigger_iopf(&self, _: TestDev, _: Option<Pasid>, _: u32, _: Iova) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }

    fn trigger_vevent(&self, _: TestDev, _: ViommuId, _: u32) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }

    fn dirty(&self, _: HwptId, _: Iova, _: u64) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

impl SimRig {
    /// A simulator whose one IOMMU is described by `spec` (every device
    /// added is behind it).
    pub fn with_spec(spec: SimHostSpec) -> Self {
        let sim = SimIommufd::new();
        sim.set_transparent_hugepage(kernel_has_thp());
        sim.add_iommu(spec.clone());
        sim.add_iommu(spec);
        SimRig { sim }
    }
}

/// A simulated host describing what the kernel reported for a device: its
/// `GET_HW_INFO`, and the IOVA ranges and alignment of an IOAS it is
/// attached to (the holes between ranges become reserved regions).
pub fn spec_from_kernel(
    info: &HostInfo,
    r: &nesting_core::host::IovaRanges,
) -> Option<SimHostSpec> {
    let first = r.ranges.first()?;
    let last = r.ranges.last()?;
    let reserved = r
        .ranges
        .windows(2)
        .filter_map(|w| {
            Some(IovaRange {
                first: w[0].last.checked_add(1)?,
                last: w[1].first.checked_sub(1)?,
            })
        })
        .collect();
    Some(SimHostSpec {
        info: info.clone(),
        page_size: r.alignment.max(4096),
        aperture: IovaRange {
            first: first.first,
            last: last.last,
        },
        reserved,
    })
}
