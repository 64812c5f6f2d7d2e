//! The host side: a trait mirroring the iommufd object model in our own
//! types and the real `/dev/iommu` backend. The simulated backend is the
//! `iommufd-sim` crate.
//!
//! The object model is the kernel's (`include/uapi/linux/iommufd.h`):
//! devices bound through VFIO cdev, IOASes (kernel-managed I/O address
//! spaces), HWPTs (hardware page tables: paging ones built from an IOAS,
//! nested ones holding a guest's stage-1 description on top of a
//! NEST_PARENT), vIOMMUs and vDEVICEs, vEVENTQs and fault queues. Every
//! object has a 32-bit ID in one namespace per iommufd, destroyed with
//! `IOMMU_DESTROY`.
//!
//! One backend instance is one iommufd: it serves the whole VM, shared as an
//! `Arc<dyn HostBackend>` by every model and device, so that memory pinned
//! for DMA is accounted once. [`objects`] wraps the raw IDs into RAII
//! handles.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use bitflags::bitflags;
use bitvec::vec::BitVec;
use thiserror::Error;

use crate::types::{Access, Iova, IovaRange, Pasid};

pub mod info;

pub use info::{HostCaps, HostInfo, HwInfo, VtdCap, VtdEcap, VtdErrata};

macro_rules! object_id {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
            pub struct $name(pub u32);

            impl $name {
                /// The kernel object ID.
                pub const fn raw(self) -> u32 {
                    self.0
                }
            }

            impl fmt::Display for $name {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{}#{}", stringify!($name), self.0)
                }
            }
        )*
    };
}

object_id!(
    /// A device bound to the iommufd (VFIO cdev `out_devid`).
    DevId,
    /// An IOAS.
    IoasId,
    /// A hardware page table.
    HwptId,
    /// A vIOMMU.
    ViommuId,
    /// A vDEVICE.
    VdeviceId,
    /// A vEVENTQ.
    VeventqId,
    /// A fault queue (IOPF).
    FaultQueueId,
);

/// Any object ID, for `IOMMU_DESTROY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectId {
    /// An IOAS.
    Ioas(IoasId),
    /// A HWPT.
    Hwpt(HwptId),
    /// A vIOMMU.
    Viommu(ViommuId),
    /// A vDEVICE.
    Vdevice(VdeviceId),
    /// A vEVENTQ.
    Veventq(VeventqId),
    /// A fault queue.
    FaultQueue(FaultQueueId),
}

impl ObjectId {
    /// The kernel object ID.
    pub fn raw(self) -> u32 {
        match self {
            ObjectId::Ioas(i) => i.0,
            ObjectId::Hwpt(i) => i.0,
            ObjectId::Viommu(i) => i.0,
            ObjectId::Vdevice(i) => i.0,
            ObjectId::Veventq(i) => i.0,
            ObjectId::FaultQueue(i) => i.0,
        }
    }
}

/// What a device is attached to, or what a HWPT is allocated on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PtId {
    /// An IOAS: the kernel picks or builds a paging HWPT for it.
    Ioas(IoasId),
    /// A HWPT.
    Hwpt(HwptId),
    /// A vIOMMU (parent of SMMUv3 nested HWPTs).
    Viommu(ViommuId),
}

impl PtId {
    /// The kernel object ID.
    pub fn raw(self) -> u32 {
        match self {
            PtId::Ioas(i) => i.0,
            PtId::Hwpt(i) => i.0,
            PtId::Viommu(i) => i.0,
        }
    }
}

/// A VFIO cdev file the VMM keeps owning and shares with the backend:
/// an `Arc` of anything that holds the descriptor open (`Arc<File>`,
/// `Arc<OwnedFd>`, `VfioCdev` for a vfio-ioctls device with the
/// `vfio-ioctls` feature). The backend keeps a clone; the descriptor is
/// closed when the last clone goes, the VMM's or the backend's. No
/// descriptor is duplicated.
pub type SharedFd = Arc<dyn AsFd + Send + Sync>;

/// Where a VFIO device comes from, and so who closes its cdev file.
///
/// | source | the backend | file closed by | when the backend unbinds it |
/// |---|---|---|---|
/// | `Path` | opens and binds it | the backend | closed: the kernel unbinds it |
/// | `Fd` | binds it | the backend | closed: the kernel unbinds it |
/// | `Shared` | binds it | the last `Arc` holder | reference dropped: stays bound while the VMM holds it |
/// | `Bound` | adopts the binding | as its inner source | as its inner source |
///
/// "Unbinds" is [`HostBackend::unbind_device`], which
/// [`objects::BoundDevice`] calls on drop after detaching the PASIDs and
/// the RID *it* attached: a device the VMM still holds is left bound,
/// blocked (no DMA through page tables that are about to be destroyed),
/// and usable: the VMM attaches it again to go on (a detach of a detached
/// device succeeds, `vfio_df_ioctl_detach_pt`, so vfio-ioctls'
/// `VfioDevice` drop, which detaches, is unaffected).
pub enum DeviceSource {
    /// A VFIO cdev path, e.g. `/dev/vfio/devices/vfio0`.
    Path(PathBuf),
    /// An already-open VFIO cdev file descriptor, as libvirt passes it to a
    /// VMM that may not open device files itself; the backend owns it.
    Fd(OwnedFd),
    /// A VFIO cdev file the VMM keeps owning ([`SharedFd`]), not bound yet:
    /// the backend binds it. A file bound already is refused with EINVAL
    /// (the kernel binds a file once): adopt it with `Bound`.
    Shared(SharedFd),
    /// A device of the simulated host (see `iommufd_sim::SimIommufd::add_device`).
    Simulated {
        /// Index returned by `SimIommufd::add_device`.
        index: u32,
    },
    /// A device its owner bound to this iommufd already, as `dev`: e.g. by
    /// vfio-ioctls, whose `VfioDevice::new_from_fd` binds the cdev itself
    /// and reports the ID (`VfioDevice::iommufd_dev_id`). The backend adopts
    /// the binding rather than binding again, which the kernel refuses.
    /// `source` is `Fd`, `Shared` or `Simulated` (a `Path` opened now is
    /// bound to nothing: EINVAL); `dev` must be a device of this iommufd
    /// (ENOENT otherwise) that the backend does not hold yet (EEXIST).
    Bound {
        /// The device's file (or simulated device).
        source: Box<DeviceSource>,
        /// The ID its binding returned.
        dev: DevId,
    },
}

impl fmt::Debug for DeviceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::fd::AsRawFd;
        match self {
            DeviceSource::Path(p) => f.debug_tuple("Path").field(p).finish(),
            DeviceSource::Fd(fd) => f.debug_tuple("Fd").field(fd).finish(),
            DeviceSource::Shared(fd) => f
                .debug_tuple("Shared")
                .field(&fd.as_fd().as_raw_fd())
                .finish(),
            DeviceSource::Simulated { index } => {
                f.debug_struct("Simulated").field("index", index).finish()
            }
            DeviceSource::Bound { source, dev } => f
                .debug_struct("Bound")
                .field("source", source)
                .field("dev", dev)
                .finish(),
        }
    }
}

impl DeviceSource {
    /// A VFIO cdev file the VMM keeps, for the backend to bind.
    pub fn shared<T: AsFd + Send + Sync + 'static>(fd: Arc<T>) -> DeviceSource {
        DeviceSource::Shared(fd)
    }

    /// This source, bound to the backend's iommufd already as `dev`.
    #[must_use]
    pub fn bound(self, dev: DevId) -> DeviceSource {
        DeviceSource::Bound {
            source: Box::new(self),
            dev,
        }
    }

    /// A vfio-ioctls device of the cdev flavour, shared: adopted as the ID
    /// it was bound with when vfio-ioctls bound it (`VfioDevice::new`,
    /// `new_from_fd`), else to be bound by the backend. A device made with
    /// `new_from_bound_fd` reports no ID: add it with
    /// [`DeviceSource::bound`].
    #[cfg(feature = "vfio-ioctls")]
    pub fn vfio(dev: &Arc<vfio_ioctls::VfioDevice>) -> DeviceSource {
        let shared = DeviceSource::shared(Arc::new(VfioCdev(dev.clone())));
        match dev.iommufd_dev_id() {
            Some(id) => shared.bound(DevId(id)),
            None => shared,
        }
    }
}

/// Every kind of host call, for counters, fault injection and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostOp {
    /// `VFIO_DEVICE_BIND_IOMMUFD`.
    BindDevice,
    /// Closing a bound device.
    UnbindDevice,
    /// `IOMMU_GET_HW_INFO`.
    GetHwInfo,
    /// `IOMMU_IOAS_ALLOC`.
    IoasAlloc,
    /// `IOMMU_IOAS_MAP`.
    IoasMap,
    /// `IOMMU_IOAS_MAP_FILE`.
    IoasMapFile,
    /// `IOMMU_IOAS_UNMAP`.
    IoasUnmap,
    /// `IOMMU_IOAS_COPY`.
    IoasCopy,
    /// `IOMMU_IOAS_IOVA_RANGES`.
    IoasIovaRanges,
    /// `IOMMU_IOAS_ALLOW_IOVAS`.
    IoasAllowIovas,
    /// `IOMMU_HWPT_ALLOC`.
    HwptAlloc,
    /// `IOMMU_HWPT_INVALIDATE`.
    HwptInvalidate,
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
    SetDirtyTracking,
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    GetDirtyBitmap,
    /// `IOMMU_VIOMMU_ALLOC`.
    ViommuAlloc,
    /// `IOMMU_VDEVICE_ALLOC`.
    VdeviceAlloc,
    /// `IOMMU_VEVENTQ_ALLOC`.
    VeventqAlloc,
    /// `read()` on a vEVENTQ.
    VeventqRead,
    /// `IOMMU_FAULT_QUEUE_ALLOC`.
    FaultQueueAlloc,
    /// `read()` on a fault queue.
    FaultRead,
    /// `write()` of a page response on a fault queue.
    FaultRespond,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on a detached device or PASID.
    Attach,
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT` on an attached device or PASID
    /// (the kernel replaces the domain atomically).
    Replace,
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    Detach,
    /// `IOMMU_DESTROY`.
    Destroy,
}

impl HostOp {
    /// Every op, in declaration order.
    pub const ALL: [HostOp; 25] = [
        HostOp::BindDevice,
        HostOp::UnbindDevice,
        HostOp::GetHwInfo,
        HostOp::IoasAlloc,
        HostOp::IoasMap,
        HostOp::IoasMapFile,
        HostOp::IoasUnmap,
        HostOp::IoasCopy,
        HostOp::IoasIovaRanges,
        HostOp::IoasAllowIovas,
        HostOp::HwptAlloc,
        HostOp::HwptInvalidate,
        HostOp::SetDirtyTracking,
        HostOp::GetDirtyBitmap,
        HostOp::ViommuAlloc,
        HostOp::VdeviceAlloc,
        HostOp::VeventqAlloc,
        HostOp::VeventqRead,
        HostOp::FaultQueueAlloc,
        HostOp::FaultRead,
        HostOp::FaultRespond,
        HostOp::Attach,
        HostOp::Replace,
        HostOp::Detach,
        HostOp::Destroy,
    ];

    /// The snake_case name used by counters, `host-calls` and fault
    /// injection (`ioas_map`, `hwpt_invalidate`, ...).
    pub fn name(self) -> &'static str {
        match self {
            HostOp::BindDevice => "bind_device",
            HostOp::UnbindDevice => "unbind_device",
            HostOp::GetHwInfo => "get_hw_info",
            HostOp::IoasAlloc => "ioas_alloc",
            HostOp::IoasMap => "ioas_map",
            HostOp::IoasMapFile => "ioas_map_file",
            HostOp::IoasUnmap => "ioas_unmap",
            HostOp::IoasCopy => "ioas_copy",
            HostOp::IoasIovaRanges => "ioas_iova_ranges",
            HostOp::IoasAllowIovas => "ioas_allow_iovas",
            HostOp::HwptAlloc => "hwpt_alloc",
            HostOp::HwptInvalidate => "hwpt_invalidate",
            HostOp::SetDirtyTracking => "set_dirty_tracking",
            HostOp::GetDirtyBitmap => "get_dirty_bitmap",
            HostOp::ViommuAlloc => "viommu_alloc",
            HostOp::VdeviceAlloc => "vdevice_alloc",
            HostOp::VeventqAlloc => "veventq_alloc",
            HostOp::VeventqRead => "veventq_read",
            HostOp::FaultQueueAlloc => "fault_queue_alloc",
            HostOp::FaultRead => "fault_read",
            HostOp::FaultRespond => "fault_respond",
            HostOp::Attach => "attach",
            HostOp::Replace => "replace",
            HostOp::Detach => "detach",
            HostOp::Destroy => "destroy",
        }
    }

    /// The op named `name` (see [`HostOp::name`]).
    pub fn from_name(name: &str) -> Option<HostOp> {
        HostOp::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for HostOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Linux errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// No such entry.
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// I/O error.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Bad file descriptor.
    pub const EBADF: Errno = Errno(libc::EBADF);
    /// Try again.
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    /// Bad address.
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    /// Busy.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// Exists.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// No such device.
    pub const ENODEV: Errno = Errno(libc::ENODEV);
    /// Invalid argument.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// No space left.
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// Result out of range.
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    /// Inappropriate ioctl.
    pub const ENOTTY: Errno = Errno(libc::ENOTTY);
    /// Value too large.
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    /// Operation not supported.
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    /// Timed out.
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);

    /// The errno of an `io::Error`, or EIO when it carries none.
    pub fn from_io(e: &std::io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // io::Error's text already ends in "(os error N)".
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// A host call failed. Both backends report the kernel's errno, so results
/// of the real and the simulated host can be compared class for class.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("host {op} failed: {errno}")]
pub struct HostError {
    /// The call that failed.
    pub op: HostOp,
    /// Its errno.
    pub errno: Errno,
}

impl HostError {
    /// A failure of `op` with `errno`.
    pub fn new(op: HostOp, errno: Errno) -> Self {
        HostError { op, errno }
    }
}

/// Result of a host call.
pub type HostResult<T> = Result<T, HostError>;

/// Where a new IOAS mapping goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaPlacement {
    /// At exactly this IOVA (`IOMMU_IOAS_MAP_FIXED_IOVA`); EEXIST if used.
    Fixed(Iova),
    /// Anywhere the kernel finds room; the chosen IOVA is returned.
    Any,
}

/// Memory backing an IOAS mapping.
#[derive(Clone, Copy, Debug)]
pub enum MapSource<'a> {
    /// A range of this process's address space (`IOMMU_IOAS_MAP`).
    UserVa(u64),
    /// A file, e.g. a memfd, from a byte offset (`IOMMU_IOAS_MAP_FILE`).
    File {
        /// The file.
        fd: BorrowedFd<'a>,
        /// Byte offset into the file.
        offset: u64,
    },
}

/// The usable IOVA space of an IOAS (`IOMMU_IOAS_IOVA_RANGES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaRanges {
    /// Ranges where mappings may be placed, ascending.
    pub ranges: Vec<IovaRange>,
    /// Every IOVA and length must be a multiple of this (the largest
    /// minimum page size of the attached domains).
    pub alignment: u64,
}

bitflags! {
    /// `IOMMU_HWPT_ALLOC` flags.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct HwptFlags: u32 {
        /// The HWPT may be the stage-2 parent of nested HWPTs.
        const NEST_PARENT = 1 << 0;
        /// Track dirty pages.
        const DIRTY_TRACKING = 1 << 1;
        /// Deliver IOPFs to the fault queue given in the request.
        const FAULT_ID_VALID = 1 << 2;
        /// The HWPT may be attached to PASIDs.
        const PASID = 1 << 3;
    }
}

bitflags! {
    /// Flags of a VT-d stage-1 nested HWPT (`iommu_hwpt_vtd_s1_flags`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VtdS1Flags: u64 {
        /// Supervisor requests enabled.
        const SRE = 1 << 0;
        /// Extended access flag enabled.
        const EAFE = 1 << 1;
        /// Write protect enabled.
        const WPE = 1 << 2;
    }
}

/// Vendor data of a nested HWPT: the guest's stage-1 description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HwptData {
    /// A paging HWPT (no vendor data).
    None,
    /// VT-d first-stage tables (`struct iommu_hwpt_vtd_s1`).
    VtdS1 {
        /// SRE / EAFE / WPE.
        flags: VtdS1Flags,
        /// GPA of the first-stage root table (FSPTPTR).
        pgtbl_addr: u64,
        /// Input address width: 48 or 57.
        addr_width: u32,
    },
    /// An SMMUv3 STE's stage-1 words (`struct iommu_hwpt_arm_smmuv3`).
    Smmuv3 {
        /// STE double-words 0 and 1, as the guest wrote them (little-endian
        /// values).
        ste: [u64; 2],
    },
    /// Any other data type, passed through as bytes (the kernel's selftest
    /// types, new vendors).
    Raw {
        /// `enum iommu_hwpt_data_type` value.
        data_type: u32,
        /// The structure's bytes.
        bytes: Vec<u8>,
    },
}

/// An `IOMMU_HWPT_ALLOC` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HwptAlloc {
    /// The device the HWPT is made for (its IOMMU decides the format).
    pub dev: DevId,
    /// IOAS for a paging HWPT; a NEST_PARENT HWPT (VT-d) or a vIOMMU
    /// (SMMUv3) for a nested one.
    pub parent: PtId,
    /// Allocation flags.
    pub flags: HwptFlags,
    /// Fault queue for IOPF, with [`HwptFlags::FAULT_ID_VALID`].
    pub fault: Option<FaultQueueId>,
    /// Vendor data.
    pub data: HwptData,
}

/// One VT-d stage-1 invalidation entry (`struct iommu_hwpt_vtd_s1_invalidate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdS1Invalidation {
    /// First address, 4 KiB aligned.
    pub addr: u64,
    /// Number of 4 KiB pages; `u64::MAX` with `addr` 0 means everything.
    pub npages: u64,
    /// Only leaf entries changed (`IOMMU_VTD_INV_FLAGS_LEAF`).
    pub leaf: bool,
}

/// A batch of cache invalidations for one `IOMMU_HWPT_INVALIDATE` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvalidationBatch {
    /// VT-d stage-1 entries, sent to a nested HWPT.
    VtdS1(Vec<VtdS1Invalidation>),
    /// SMMUv3 commands (two little-endian u64 each), sent to a vIOMMU.
    Smmuv3(Vec<[u64; 2]>),
    /// Any other data type, as fixed-size entries.
    Raw {
        /// `enum iommu_hwpt_invalidate_data_type` value.
        data_type: u32,
        /// Size of one entry in bytes.
        entry_len: u32,
        /// `entry_len * n` bytes.
        bytes: Vec<u8>,
    },
}

impl InvalidationBatch {
    /// Number of entries in the batch.
    pub fn len(&self) -> usize {
        match self {
            InvalidationBatch::VtdS1(v) => v.len(),
            InvalidationBatch::Smmuv3(v) => v.len(),
            InvalidationBatch::Raw {
                entry_len, bytes, ..
            } => bytes.len().checked_div(*entry_len as usize).unwrap_or(0),
        }
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `IOMMU_HWPT_INVALIDATE` did: the kernel reports how many entries it
/// handled even when one of them failed, so a model can point its
/// architected error at the failing command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidateOutcome {
    /// Entries handled, from the first; on error the entry at this index is
    /// the one that failed (or was never reached).
    pub handled: u32,
    /// The call's result.
    pub result: HostResult<()>,
}

/// The object an invalidation batch is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidateTarget {
    /// A nested HWPT (VT-d).
    Hwpt(HwptId),
    /// A vIOMMU (SMMUv3: commands carry the vSID/ASID).
    Viommu(ViommuId),
}

/// vIOMMU types (`enum iommu_viommu_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViommuType {
    /// Arm SMMUv3.
    ArmSmmuv3,
    /// Any other type by number (e.g. the kernel selftest's 0xdeadbeef).
    Other(u32),
}

/// vEVENTQ types (`enum iommu_veventq_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VeventqType {
    /// Arm SMMUv3 event records (`struct iommu_vevent_arm_smmuv3`).
    ArmSmmuv3,
    /// Any other type by number.
    Other(u32),
}

/// One record read from a vEVENTQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VEvent {
    /// An event with its type-specific payload.
    Event {
        /// Sequence number (wraps at 2^31 as the kernel's does).
        sequence: u32,
        /// Payload, e.g. an SMMUv3 event record (4 little-endian u64).
        data: Vec<u8>,
    },
    /// The queue overflowed: events before `sequence` were lost
    /// (`IOMMU_VEVENTQ_FLAG_LOST_EVENTS`).
    Lost {
        /// Sequence number of the lost-events marker.
        sequence: u32,
    },
}

bitflags! {
    /// Flags of one page fault (`iommu_hwpt_pgfault_flags`).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PageFaultFlags: u32 {
        /// `pasid` is valid.
        const PASID_VALID = 1 << 0;
        /// Last fault of its group.
        const LAST_PAGE = 1 << 1;
    }
}

/// One I/O page fault (`struct iommu_hwpt_pgfault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// Flags.
    pub flags: PageFaultFlags,
    /// Faulting device.
    pub dev: DevId,
    /// PASID, valid with [`PageFaultFlags::PASID_VALID`].
    pub pasid: u32,
    /// Page request group index.
    pub grpid: u32,
    /// Requested access.
    pub perm: Access,
    /// Faulting address.
    pub addr: Iova,
    /// Length of the access.
    pub length: u32,
    /// Cookie that the response must carry.
    pub cookie: u32,
}

/// A page request group: faults answered by one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultGroup {
    /// The faults, the last flagged [`PageFaultFlags::LAST_PAGE`].
    pub faults: Vec<PageFault>,
}

impl FaultGroup {
    /// The cookie a response to this group carries.
    pub fn cookie(&self) -> Option<u32> {
        self.faults.last().map(|f| f.cookie)
    }
}

/// Response code for a page request group (`enum iommufd_page_response_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageResponseCode {
    /// The fault was resolved: retry.
    Success,
    /// The fault cannot be resolved: fail the request.
    Invalid,
}

/// A page response (`struct iommu_hwpt_page_response`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponse {
    /// Cookie of the group answered.
    pub cookie: u32,
    /// The answer.
    pub code: PageResponseCode,
}

/// The host IOMMU interface: one instance per VM.
///
/// Methods take `&self` (backends lock internally) so a backend can be
/// shared as `Arc<dyn HostBackend>` between the models and device threads.
/// All errors are [`HostError`]s carrying the kernel's errno; guest-caused
/// conditions never reach this layer.
pub trait HostBackend: Send + Sync + fmt::Debug {
    /// Binds a VFIO device to this iommufd (`VFIO_DEVICE_BIND_IOMMUFD`),
    /// or adopts the binding of a [`DeviceSource::Bound`] one.
    fn bind_device(&self, source: DeviceSource) -> HostResult<DevId>;
    /// Releases a bound device: closes its VFIO file if the backend owns
    /// it (the kernel unbinds the device), else drops the backend's hold
    /// and leaves it bound to its owner (see [`DeviceSource`]).
    fn unbind_device(&self, dev: DevId) -> HostResult<()>;
    /// Describes the IOMMU behind a device (`IOMMU_GET_HW_INFO`).
    fn hw_info(&self, dev: DevId) -> HostResult<HostInfo>;

    /// Allocates an empty IOAS.
    fn ioas_alloc(&self) -> HostResult<IoasId>;
    /// Maps `len` bytes of `src` with `access` (READ and/or WRITE); returns
    /// the IOVA used.
    fn ioas_map(
        &self,
        ioas: IoasId,
        iova: IovaPlacement,
        src: MapSource<'_>,
        len: u64,
        access: Access,
    ) -> HostResult<Iova>;
    /// Unmaps every mapping inside `[iova, iova + len)`; `(0, u64::MAX)`
    /// unmaps everything. Returns the number of bytes unmapped; ENOENT when
    /// nothing was mapped there.
    ///
    /// A mapping crossing the range boundary makes the call fail with
    /// ENOENT, but not always with nothing changed: the kernel walks the
    /// mappings in ascending order and has already removed those before the
    /// crossing one (`iopt_unmap_iova_range` in
    /// `drivers/iommu/iommufd/io_pagetable.c`). Callers that need
    /// all-or-nothing must unmap exactly whole mappings.
    fn ioas_unmap(&self, ioas: IoasId, iova: Iova, len: u64) -> HostResult<u64>;
    /// Copies the mappings of `[src_iova, src_iova + len)` of `src` into
    /// `dst`, sharing their pinned pages (`IOMMU_IOAS_COPY`).
    fn ioas_copy(
        &self,
        dst: IoasId,
        dst_iova: IovaPlacement,
        src: IoasId,
        src_iova: Iova,
        len: u64,
        access: Access,
    ) -> HostResult<Iova>;
    /// The usable IOVA ranges and required alignment.
    fn ioas_iova_ranges(&self, ioas: IoasId) -> HostResult<IovaRanges>;
    /// Restricts automatic IOVA allocation to `ranges`
    /// (`IOMMU_IOAS_ALLOW_IOVAS`); an empty slice removes the restriction.
    fn ioas_allow_iovas(&self, ioas: IoasId, ranges: &[IovaRange]) -> HostResult<()>;

    /// Allocates a paging or nested HWPT.
    fn hwpt_alloc(&self, req: &HwptAlloc) -> HostResult<HwptId>;
    /// Sends a batch of cache invalidations (`IOMMU_HWPT_INVALIDATE`).
    fn hwpt_invalidate(
        &self,
        target: InvalidateTarget,
        batch: &InvalidationBatch,
    ) -> InvalidateOutcome;
    /// Starts or stops dirty tracking on a HWPT.
    fn hwpt_set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> HostResult<()>;
    /// Reads (and unless `no_clear`, clears) the dirty bits of `range`, one
    /// bit per `page_size` bytes.
    fn hwpt_get_dirty_bitmap(
        &self,
        hwpt: HwptId,
        range: IovaRange,
        page_size: u64,
        no_clear: bool,
    ) -> HostResult<BitVec<u64>>;

    /// Allocates a vIOMMU on a NEST_PARENT HWPT.
    fn viommu_alloc(&self, dev: DevId, parent: HwptId, kind: ViommuType) -> HostResult<ViommuId>;
    /// Allocates a vDEVICE: `dev` as seen by the guest through `viommu`,
    /// with its virtual ID (the guest StreamID for SMMUv3).
    fn vdevice_alloc(&self, viommu: ViommuId, dev: DevId, virt_id: u64) -> HostResult<VdeviceId>;
    /// Allocates a vEVENTQ of `depth` entries on a vIOMMU.
    fn veventq_alloc(
        &self,
        viommu: ViommuId,
        kind: VeventqType,
        depth: u32,
    ) -> HostResult<VeventqId>;
    /// Reads the events pending on a vEVENTQ without blocking (at most
    /// `max`).
    fn veventq_read(&self, q: VeventqId, max: usize) -> HostResult<Vec<VEvent>>;
    /// Allocates a fault queue for IOPF.
    fn fault_queue_alloc(&self) -> HostResult<FaultQueueId>;
    /// Reads the complete fault groups pending, without blocking.
    fn fault_read(&self, q: FaultQueueId) -> HostResult<Vec<FaultGroup>>;
    /// Answers one fault group.
    fn fault_respond(&self, q: FaultQueueId, resp: PageResponse) -> HostResult<()>;

    /// Attaches a device (or one of its PASIDs) to an IOAS or HWPT; when it
    /// is attached already, the kernel replaces its domain atomically and
    /// this counts as [`HostOp::Replace`].
    fn attach(&self, dev: DevId, pasid: Option<Pasid>, pt: PtId) -> HostResult<()>;
    /// Detaches a device (or PASID), leaving it blocked.
    fn detach(&self, dev: DevId, pasid: Option<Pasid>) -> HostResult<()>;

    /// Destroys an object (`IOMMU_DESTROY`); EBUSY while in use. For a
    /// vEVENTQ or fault queue the backend first closes the queue's file
    /// (an open file holds a reference, so the kernel would answer EBUSY).
    fn destroy(&self, id: ObjectId) -> HostResult<()>;
}

pub mod iommufd;
pub mod objects;
pub mod unit;
// The only module allowed `unsafe` code: system calls of the real backend.
#[allow(unsafe_code)]
mod sys;

pub use iommufd::Iommufd;
/// iommufd-ioctls' iommufd handle, which [`Iommufd::from_shared`] shares.
pub use iommufd_ioctls::IommuFd;
#[cfg(feature = "vfio-ioctls")]
pub use sys::VfioCdev;
pub use sys::take_inherited_fd;
pub use unit::{sysfs_iommu_unit, sysfs_iommu_unit_of_fd};
