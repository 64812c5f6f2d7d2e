//! The real host backend: one open `/dev/iommu` and the VFIO cdev devices
//! bound to it.
//!
//! Every trait call is one ioctl (two for `IOMMU_IOAS_IOVA_RANGES` and
//! `IOMMU_GET_HW_INFO` when the first buffer is too small), a `read(2)` of
//! an event queue, or a `write(2)` of a page response, made through
//! `super::sys`, the only module with `unsafe` code. The kernel behaviour
//! relied on is cited from the Linux 7.2 sources under
//! `drivers/iommu/iommufd/`.
//!
//! The iommufd itself is held as iommufd-ioctls' `IommuFd` behind an `Arc`:
//! opened here, handed over ([`Iommufd::from_fd`]) or shared with the VMM's
//! own iommufd-ioctls or vfio-ioctls code ([`Iommufd::from_shared`]), and
//! closed by whichever holder lets go of it last.
//!
//! The backend keeps the file descriptors the kernel objects come with: the
//! VFIO device files (keyed by device ID: closing one it owns unbinds the
//! device, one it shares stays open with its owner, see
//! [`DeviceSource`]), the vEVENTQ and fault-queue files (keyed by object
//! ID). The tables are
//! behind one mutex, held across the system calls that use their
//! descriptors (bind, attach, detach, queue reads and writes), none of which
//! blocks: the iommufd event queues never wait for events (`eventq.c`
//! returns 0 bytes when empty). Calls on the iommufd itself (map, unmap,
//! allocations, invalidations) take no lock.

#![forbid(unsafe_code)]

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::mem::offset_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use bitvec::slice::BitSlice;
use bitvec::vec::BitVec;
use iommufd_bindings::iommufd as k;
use iommufd_ioctls::IommuFd;
use vfio_bindings::bindings::vfio as v;

use super::sys::{self, IoctlArg, IoctlBufArg, Payload};
use super::{
    DevId, DeviceSource, Errno, FaultGroup, FaultQueueId, HostBackend, HostCaps, HostError,
    HostInfo, HostOp, HostResult, HwInfo, HwptAlloc, HwptData, HwptFlags, HwptId,
    InvalidateOutcome, InvalidateTarget, InvalidationBatch, IoasId, IovaPlacement, IovaRanges,
    MapSource, ObjectId, PageFault, PageFaultFlags, PageResponse, PageResponseCode, PtId, SharedFd,
    VEvent, VdeviceId, VeventqId, VeventqType, ViommuId, ViommuType, VtdCap, VtdEcap, VtdErrata,
};
use crate::types::{Access, Iova, IovaRange, Pasid};

/// The iommufd character device.
pub const IOMMU_DEV_PATH: &str = "/dev/iommu";

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// `IOMMU_GET_HW_INFO` buffer: the largest vendor structure we know.
const HW_INFO_BUF_LEN: usize = max(
    max(
        size_of::<k::iommu_hw_info_vtd>(),
        size_of::<k::iommu_hw_info_arm_smmuv3>(),
    ),
    max(
        size_of::<k::iommu_hw_info_tegra241_cmdqv>(),
        size_of::<k::iommu_hw_info_amd>(),
    ),
);

/// Largest vendor data we re-ask for when the kernel reports more than
/// [`HW_INFO_BUF_LEN`] (a newer or unknown vendor structure): one page,
/// so that a kernel-reported length cannot make us allocate without bound.
const HW_INFO_MAX_LEN: usize = 4096;

/// First `IOMMU_IOAS_IOVA_RANGES` buffer, in ranges: an IOAS has one range
/// per gap between reserved regions (MSI window, RMRRs), a handful.
const IOVA_RANGES_INITIAL: usize = 8;

/// Most ranges we allocate room for, bounding what a kernel-reported count
/// can make us allocate.
const IOVA_RANGES_MAX: usize = 1 << 16;

/// Calls before giving up on `IOMMU_IOAS_IOVA_RANGES`: the range list can
/// grow between two calls when devices attach concurrently.
const IOVA_RANGES_TRIES: usize = 4;

/// Bytes of one `read()` of a vEVENTQ, bounding the buffer a large `max`
/// would ask for (the rest stays queued for the next read).
const VEVENTQ_READ_MAX_BYTES: usize = 64 << 10;

/// `struct iommufd_vevent_header`.
const VEVENT_HEADER_LEN: usize = size_of::<k::iommufd_vevent_header>();

/// vEVENT sequence numbers run over `[0, INT_MAX]` and wrap to 0
/// (`iommufd_vevent_handler`: `sequence = (sequence + 1) & INT_MAX`).
const VEVENT_SEQUENCE_MASK: u32 = i32::MAX as u32;

/// The selftest vEVENTQ type (`drivers/iommu/iommufd/iommufd_test.h`),
/// whose records are a `__u32 virt_id`.
const VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;

/// `struct iommu_hwpt_pgfault`.
const PGFAULT_LEN: usize = size_of::<k::iommu_hwpt_pgfault>();

/// Fault records of the first read buffer.
const FAULT_READ_RECORDS: usize = 64;

/// Largest fault group we make room for. The kernel returns whole groups
/// only and fails with EINVAL when the first one does not fit
/// (`iommufd_fault_fops_read`), so the buffer doubles up to this; a PCIe
/// page request group is bounded by the device's outstanding requests.
const FAULT_GROUP_MAX_RECORDS: usize = 4096;

/// Reads per `fault_read` call, so that a device faulting continuously
/// cannot keep the caller in the loop; what is left is read next time.
const FAULT_READS_MAX: usize = 16;

fn host_err(op: HostOp) -> impl FnOnce(io::Error) -> HostError {
    move |e| HostError::new(op, Errno::from_io(&e))
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_io(e)
}

/// `size` / `argsz` of a kernel structure (all are far below 4 GiB).
const fn size32<T>() -> u32 {
    size_of::<T>() as u32
}

/// A `u32` count for the kernel, EINVAL for `op` when it does not fit.
fn count32(op: HostOp, n: usize) -> HostResult<u32> {
    u32::try_from(n).map_err(|_| HostError::new(op, Errno::EINVAL))
}

fn ne_u32(b: &[u8], off: usize) -> u32 {
    b.get(off..off.wrapping_add(4))
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_ne_bytes)
}

fn ne_u64(b: &[u8], off: usize) -> u64 {
    b.get(off..off.wrapping_add(8))
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_ne_bytes)
}

/// The VFIO cdev file of a bound device.
enum DeviceFile {
    /// Ours: closing it unbinds the device ("Unbind is automatically
    /// conducted when device fd is closed", vfio.h).
    Owned(OwnedFd),
    /// Shared with the VMM: dropping our reference closes nothing while
    /// the VMM holds one, and the device stays bound.
    Shared(SharedFd),
}

impl AsFd for DeviceFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DeviceFile::Owned(fd) => fd.as_fd(),
            DeviceFile::Shared(fd) => fd.as_fd(),
        }
    }
}

/// A bound VFIO device.
struct Device {
    /// The VFIO cdev file.
    fd: DeviceFile,
    /// Attachments made through this backend: `None` for the device's RID,
    /// `Some(pasid)` for a PASID. Tells [`HostOp::Attach`] from
    /// [`HostOp::Replace`].
    attached: BTreeSet<Option<u32>>,
}

/// A vEVENTQ.
struct Veventq {
    /// The queue's file.
    fd: OwnedFd,
    /// Bytes of the type-specific record after each header.
    payload_len: usize,
    /// Sequence number the next event should carry: a different one means
    /// events were lost in between.
    next_sequence: u32,
}

#[derive(Default)]
struct Tables {
    devices: HashMap<u32, Device>,
    veventqs: HashMap<u32, Veventq>,
    faults: HashMap<u32, OwnedFd>,
}

/// The real iommufd backend: one open `/dev/iommu`.
///
/// `Send + Sync`: the tables of kept file descriptors are behind a mutex,
/// and the kernel serialises calls on the iommufd itself.
///
/// A backend is shared by the VM's models as an `Arc<dyn HostBackend>`,
/// which outlives any borrow: an iommufd the VMM keeps owning is therefore
/// shared ([`Iommufd::from_shared`]) rather than borrowed.
pub struct Iommufd {
    // Declared first so that device files are closed (devices unbound)
    // before the iommufd.
    tables: Mutex<Tables>,
    fd: Arc<IommuFd>,
}

impl fmt::Debug for Iommufd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Iommufd");
        d.field("fd", &self.fd.as_raw_fd());
        match self.tables.try_lock() {
            Ok(t) => d
                .field("devices", &t.devices.len())
                .field("veventqs", &t.veventqs.len())
                .field("fault_queues", &t.faults.len()),
            Err(TryLockError::Poisoned(p)) => d.field("devices", &p.get_ref().devices.len()),
            Err(TryLockError::WouldBlock) => d.field("tables", &"<in use>"),
        };
        d.finish()
    }
}

impl AsFd for Iommufd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        sys::iommufd_fd(&self.fd)
    }
}

impl Iommufd {
    /// Opens [`IOMMU_DEV_PATH`] read-write and close-on-exec.
    pub fn open() -> io::Result<Self> {
        Self::open_path(IOMMU_DEV_PATH)
    }

    /// Opens an iommufd at `path` read-write and close-on-exec (the
    /// standard library sets `O_CLOEXEC` on every file it opens).
    pub fn open_path(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Self::from_fd(file.into()))
    }

    /// Wraps an already-open iommufd, e.g. one libvirt passed down, taking
    /// ownership: it is closed when the backend (and every `Arc` handed out
    /// by [`Iommufd::iommufd_ioctls`]) is dropped.
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self::from_shared(Arc::new(IommuFd::new_from_fd(fd.into())))
    }

    /// Shares an iommufd the VMM keeps: iommufd-ioctls' handle, as
    /// vfio-ioctls' `VfioIommufd::iommufd()` gives it. Nothing is
    /// duplicated; the descriptor is closed when the last `Arc` goes, the
    /// VMM's or ours. Devices the VMM bound to it can be adopted
    /// ([`DeviceSource::Bound`]).
    pub fn from_shared(fd: Arc<IommuFd>) -> Self {
        Iommufd {
            tables: Mutex::default(),
            fd,
        }
    }

    /// The iommufd as iommufd-ioctls' handle, to share with VMM code built
    /// on iommufd-ioctls or vfio-ioctls (e.g. `VfioIommufd::new`).
    pub fn iommufd_ioctls(&self) -> &Arc<IommuFd> {
        &self.fd
    }

    /// Record size of the vEVENTQ types whose layout this backend knows:
    /// SMMUv3 (`struct iommu_vevent_arm_smmuv3`), Tegra241 CMDQV
    /// (`struct iommu_vevent_tegra241_cmdqv`, type 2) and the kernel
    /// selftest's (`struct iommu_viommu_event_selftest`, type 0xbeefbeef).
    pub fn veventq_payload_len(kind: VeventqType) -> Option<usize> {
        match veventq_type_raw(kind) {
            k::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 => {
                Some(size_of::<k::iommu_vevent_arm_smmuv3>())
            }
            k::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV => {
                Some(size_of::<k::iommu_vevent_tegra241_cmdqv>())
            }
            VEVENTQ_TYPE_SELFTEST => Some(size_of::<u32>()),
            _ => None,
        }
    }

    /// Allocates a vEVENTQ whose records carry `payload_len` bytes after
    /// each header. The record size is not in the read stream (events are
    /// packed back to back), so a type [`Iommufd::veventq_payload_len`]
    /// does not know must be allocated here rather than through
    /// [`HostBackend::veventq_alloc`].
    pub fn veventq_alloc_sized(
        &self,
        viommu: ViommuId,
        kind: VeventqType,
        depth: u32,
        payload_len: usize,
    ) -> HostResult<VeventqId> {
        let op = HostOp::VeventqAlloc;
        let mut cmd = k::iommu_veventq_alloc {
            size: size32::<k::iommu_veventq_alloc>(),
            viommu_id: viommu.0,
            type_: veventq_type_raw(kind),
            veventq_depth: depth,
            ..Default::default()
        };
        let fd = sys::veventq_alloc(&self.fd, &mut cmd).map_err(host_err(op))?;
        let q = Veventq {
            fd,
            payload_len,
            next_sequence: 0,
        };
        self.tables().veventqs.insert(cmd.out_veventq_id, q);
        Ok(VeventqId(cmd.out_veventq_id))
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // The tables stay consistent whatever panicked while holding them:
        // every update is a single insert or remove.
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ioctl<T: IoctlArg>(&self, op: HostOp, arg: &mut T) -> HostResult<()> {
        sys::ioctl(&self.fd, arg).map_err(host_err(op))
    }

    fn ioctl_buf<T: IoctlBufArg, P: Payload>(
        &self,
        op: HostOp,
        arg: &mut T,
        buf: &mut [P],
    ) -> HostResult<()> {
        sys::ioctl_buf(&self.fd, arg, buf).map_err(host_err(op))
    }

    fn get_hw_info(&self, dev: DevId, buf: &mut [u8]) -> HostResult<k::iommu_hw_info> {
        let op = HostOp::GetHwInfo;
        let mut cmd = k::iommu_hw_info {
            size: size32::<k::iommu_hw_info>(),
            dev_id: dev.0,
            data_len: count32(op, buf.len())?,
            ..Default::default()
        };
        self.ioctl_buf(op, &mut cmd, buf)?;
        Ok(cmd)
    }

    /// Adopts a device that its owner bound to this iommufd already, as
    /// `dev`. The kernel has no call telling a cdev file's device ID, but it
    /// does tell whether `dev` is a device of this iommufd: a zero-length
    /// `IOMMU_GET_HW_INFO` answers ENOENT otherwise (`iommufd_get_device`),
    /// e.g. when the VMM bound it to another iommufd. A `Path` is refused
    /// with EINVAL: a file opened now is bound to nothing.
    fn adopt(&self, source: DeviceSource, dev: DevId) -> HostResult<DevId> {
        let op = HostOp::BindDevice;
        let fd = match source {
            DeviceSource::Path(_) => return Err(HostError::new(op, Errno::EINVAL)),
            source => device_file(source)?,
        };
        if self.tables().devices.contains_key(&dev.0) {
            return Err(HostError::new(op, Errno::EEXIST));
        }
        self.get_hw_info(dev, &mut [])
            .map_err(|e| HostError::new(op, e.errno))?;
        self.keep_device(dev, fd)
    }

    /// Records a bound device; EEXIST if the ID is in the table already.
    fn keep_device(&self, dev: DevId, fd: DeviceFile) -> HostResult<DevId> {
        match self.tables().devices.entry(dev.0) {
            Entry::Occupied(_) => Err(HostError::new(HostOp::BindDevice, Errno::EEXIST)),
            Entry::Vacant(slot) => {
                slot.insert(Device {
                    fd,
                    attached: BTreeSet::new(),
                });
                Ok(dev)
            }
        }
    }

    fn ioas_map_user(
        &self,
        ioas: IoasId,
        (flags, iova): (u32, u64),
        user_va: u64,
        len: u64,
    ) -> HostResult<Iova> {
        let mut cmd = k::iommu_ioas_map {
            size: size32::<k::iommu_ioas_map>(),
            flags,
            ioas_id: ioas.0,
            user_va,
            length: len,
            iova,
            ..Default::default()
        };
        self.ioctl(HostOp::IoasMap, &mut cmd)?;
        Ok(Iova(cmd.iova))
    }

    fn ioas_map_file(
        &self,
        ioas: IoasId,
        (flags, iova): (u32, u64),
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> HostResult<Iova> {
        let mut cmd = k::iommu_ioas_map_file {
            size: size32::<k::iommu_ioas_map_file>(),
            flags,
            ioas_id: ioas.0,
            fd: fd.as_raw_fd(),
            start: offset,
            length: len,
            iova,
        };
        self.ioctl(HostOp::IoasMapFile, &mut cmd)?;
        Ok(Iova(cmd.iova))
    }

    fn hwpt_alloc_with<P: Payload>(
        &self,
        cmd: &mut k::iommu_hwpt_alloc,
        data_type: u32,
        data: &mut [P],
    ) -> HostResult<()> {
        let op = HostOp::HwptAlloc;
        cmd.data_type = data_type;
        cmd.data_len = count32(op, size_of_val(data))?;
        self.ioctl_buf(op, cmd, data)
    }

    /// One `IOMMU_HWPT_INVALIDATE` of `entries`; returns the kernel's
    /// result and how many entries it reports handled.
    fn invalidate_with<P: Payload>(
        &self,
        cmd: &mut k::iommu_hwpt_invalidate,
        entries: &mut [P],
    ) -> InvalidateOutcome {
        let op = HostOp::HwptInvalidate;
        let requested = cmd.entry_num;
        let result = sys::ioctl_buf(&self.fd, cmd, entries).map_err(host_err(op));
        // `iommufd_hwpt_invalidate` writes back the handled count on every
        // path, errors included. Only a kernel without the ioctl (ENOTTY,
        // from the dispatcher, before the handler) leaves our count in
        // place, and it handled nothing.
        let handled = match result {
            Err(e) if e.errno == Errno::ENOTTY => 0,
            _ => cmd.entry_num.min(requested),
        };
        InvalidateOutcome { handled, result }
    }
}

/// The device file of a `Path`, `Fd` or `Shared` source: ENODEV for a
/// simulated device, EINVAL for a `Bound` one inside another.
fn device_file(source: DeviceSource) -> HostResult<DeviceFile> {
    let op = HostOp::BindDevice;
    match source {
        DeviceSource::Path(path) => OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(|f| DeviceFile::Owned(f.into()))
            .map_err(host_err(op)),
        DeviceSource::Fd(fd) => Ok(DeviceFile::Owned(fd)),
        DeviceSource::Shared(fd) => Ok(DeviceFile::Shared(fd)),
        DeviceSource::Simulated { .. } => Err(HostError::new(op, Errno::ENODEV)),
        DeviceSource::Bound { .. } => Err(HostError::new(op, Errno::EINVAL)),
    }
}

fn map_flags(iova: IovaPlacement, access: Access) -> (u32, u64) {
    let mut flags = 0;
    if access.contains(Access::READ) {
        flags |= k::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
    }
    if access.contains(Access::WRITE) {
        flags |= k::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
    }
    match iova {
        IovaPlacement::Fixed(i) => (
            flags | k::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
            i.0,
        ),
        IovaPlacement::Any => (flags, 0),
    }
}

fn veventq_type_raw(kind: VeventqType) -> u32 {
    match kind {
        VeventqType::ArmSmmuv3 => k::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
        VeventqType::Other(t) => t,
    }
}

/// Decodes the vendor part of `IOMMU_GET_HW_INFO`. `data` is what the kernel
/// filled, already cut to the length it reported; fields past its end read
/// as zero (the kernel zero-fills a buffer larger than its structure).
fn decode_hw_info(kind: u32, data: &[u8]) -> HwInfo {
    match kind {
        k::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_NONE => HwInfo::None,
        k::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD => HwInfo::IntelVtd {
            cap: VtdCap(ne_u64(data, offset_of!(k::iommu_hw_info_vtd, cap_reg))),
            ecap: VtdEcap(ne_u64(data, offset_of!(k::iommu_hw_info_vtd, ecap_reg))),
            errata: VtdErrata::from_bits_retain(ne_u32(
                data,
                offset_of!(k::iommu_hw_info_vtd, flags),
            )),
        },
        k::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3 => {
            let idr0 = offset_of!(k::iommu_hw_info_arm_smmuv3, idr);
            HwInfo::ArmSmmuv3 {
                idr: std::array::from_fn(|i| ne_u32(data, idr0 + 4 * i)),
                iidr: ne_u32(data, offset_of!(k::iommu_hw_info_arm_smmuv3, iidr)),
                aidr: ne_u32(data, offset_of!(k::iommu_hw_info_arm_smmuv3, aidr)),
                flags: ne_u32(data, offset_of!(k::iommu_hw_info_arm_smmuv3, flags)),
            }
        }
        kind => HwInfo::Other {
            kind,
            data: data.to_vec(),
        },
    }
}

/// Parses what one `read()` of a vEVENTQ returned.
///
/// The kernel copies whole records only (`iommufd_veventq_fops_read`):
/// a header, then `payload_len` bytes unless the header is the
/// LOST_EVENTS marker, which has no payload and sits at the tail of the
/// queue. Sequence numbers are consecutive modulo 2^31; a jump means the
/// events in between were dropped (the kernel removes the tail marker when
/// a new event arrives), reported as a [`VEvent::Lost`] carrying the last
/// lost sequence number, as the kernel's own marker would have.
fn parse_vevents(bytes: &[u8], payload_len: usize, next_sequence: &mut u32) -> Vec<VEvent> {
    let lost_flag = k::iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS;
    let seq_off = offset_of!(k::iommufd_vevent_header, sequence);
    let flags_off = offset_of!(k::iommufd_vevent_header, flags);
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((header, tail)) = rest.split_at_checked(VEVENT_HEADER_LEN) else {
            break;
        };
        let sequence = ne_u32(header, seq_off) & VEVENT_SEQUENCE_MASK;
        if ne_u32(header, flags_off) & lost_flag != 0 {
            out.push(VEvent::Lost { sequence });
            *next_sequence = sequence.wrapping_add(1) & VEVENT_SEQUENCE_MASK;
            rest = tail;
            continue;
        }
        let Some((data, tail)) = tail.split_at_checked(payload_len) else {
            break;
        };
        if sequence != *next_sequence {
            out.push(VEvent::Lost {
                sequence: sequence.wrapping_sub(1) & VEVENT_SEQUENCE_MASK,
            });
        }
        out.push(VEvent::Event {
            sequence,
            data: data.to_vec(),
        });
        *next_sequence = sequence.wrapping_add(1) & VEVENT_SEQUENCE_MASK;
        rest = tail;
    }
    if !rest.is_empty() {
        // Not a whole record: the kernel never does this, but if a record
        // size disagrees with ours, the bytes are lost, and say so.
        crate::guest_log!(
            Warn,
            "vEVENTQ read: {} trailing bytes are not a whole record (payload {payload_len})",
            rest.len()
        );
        out.push(VEvent::Lost {
            sequence: *next_sequence,
        });
    }
    out
}

fn perm_to_access(perm: u32) -> Access {
    [
        (
            k::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_READ,
            Access::READ,
        ),
        (
            k::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_WRITE,
            Access::WRITE,
        ),
        (
            k::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_EXEC,
            Access::EXEC,
        ),
        (
            k::iommu_hwpt_pgfault_perm_IOMMU_PGFAULT_PERM_PRIV,
            Access::PRIV,
        ),
    ]
    .into_iter()
    .filter(|(bit, _)| perm & bit != 0)
    .fold(Access::empty(), |a, (_, acc)| a | acc)
}

fn decode_fault(r: &[u8]) -> PageFault {
    PageFault {
        flags: PageFaultFlags::from_bits_retain(ne_u32(
            r,
            offset_of!(k::iommu_hwpt_pgfault, flags),
        )),
        dev: DevId(ne_u32(r, offset_of!(k::iommu_hwpt_pgfault, dev_id))),
        pasid: ne_u32(r, offset_of!(k::iommu_hwpt_pgfault, pasid)),
        grpid: ne_u32(r, offset_of!(k::iommu_hwpt_pgfault, grpid)),
        perm: perm_to_access(ne_u32(r, offset_of!(k::iommu_hwpt_pgfault, perm))),
        addr: Iova(ne_u64(r, offset_of!(k::iommu_hwpt_pgfault, addr))),
        length: ne_u32(r, offset_of!(k::iommu_hwpt_pgfault, length)),
        cookie: ne_u32(r, offset_of!(k::iommu_hwpt_pgfault, cookie)),
    }
}

/// Parses what one `read()` of a fault queue returned into groups.
///
/// A group ends at a fault flagged LAST_PAGE. The kernel gives every fault
/// of a group the group's cookie and copies whole groups only
/// (`iommufd_fault_fops_read`), so a cookie change also starts a new group,
/// and faults left without LAST_PAGE at the end of the read are a whole
/// group too.
fn parse_faults(bytes: &[u8]) -> Vec<FaultGroup> {
    let mut groups = Vec::new();
    let mut current: Vec<PageFault> = Vec::new();
    let records = bytes.chunks_exact(PGFAULT_LEN);
    if !records.remainder().is_empty() {
        crate::guest_log!(
            Warn,
            "fault queue read: {} trailing bytes are not a whole record",
            records.remainder().len()
        );
    }
    for fault in records.map(decode_fault) {
        if current.last().is_some_and(|f| f.cookie != fault.cookie) {
            groups.push(FaultGroup {
                faults: std::mem::take(&mut current),
            });
        }
        current.push(fault);
        if fault.flags.contains(PageFaultFlags::LAST_PAGE) {
            groups.push(FaultGroup {
                faults: std::mem::take(&mut current),
            });
        }
    }
    if !current.is_empty() {
        groups.push(FaultGroup { faults: current });
    }
    groups
}

fn encode_page_response(resp: PageResponse) -> [u8; size_of::<k::iommu_hwpt_page_response>()] {
    let code = match resp.code {
        PageResponseCode::Success => k::iommufd_page_response_code_IOMMUFD_PAGE_RESP_SUCCESS,
        PageResponseCode::Invalid => k::iommufd_page_response_code_IOMMUFD_PAGE_RESP_INVALID,
    };
    let mut out = [0u8; size_of::<k::iommu_hwpt_page_response>()];
    let cookie_off = offset_of!(k::iommu_hwpt_page_response, cookie);
    let code_off = offset_of!(k::iommu_hwpt_page_response, code);
    out[cookie_off..cookie_off + 4].copy_from_slice(&resp.cookie.to_ne_bytes());
    out[code_off..code_off + 4].copy_from_slice(&code.to_ne_bytes());
    out
}

/// The dirty bitmap geometry the kernel accepts (`iommufd_check_iova_range`):
/// a power-of-two page size, a range starting and ending on a page
/// boundary. Returns `(length, bits)`.
fn dirty_bitmap_geometry(range: IovaRange, page_size: u64) -> Result<(u64, u64), Errno> {
    if !page_size.is_power_of_two() {
        return Err(Errno::EINVAL);
    }
    let end = range.last.0.checked_add(1).ok_or(Errno::EOVERFLOW)?;
    let length = end - range.first.0;
    if !range.first.is_aligned(page_size) || !Iova(end).is_aligned(page_size) {
        return Err(Errno::EINVAL);
    }
    Ok((length, length / page_size))
}

impl HostBackend for Iommufd {
    /// Binds `Path`, `Fd` and `Shared` sources (`VFIO_DEVICE_BIND_IOMMUFD`)
    /// and adopts `Bound` ones after checking the ID is a device of this
    /// iommufd (a zero-length `IOMMU_GET_HW_INFO`: ENOENT otherwise).
    fn bind_device(&self, source: DeviceSource) -> HostResult<DevId> {
        let op = HostOp::BindDevice;
        let fd = match source {
            DeviceSource::Bound { source, dev } => return self.adopt(*source, dev),
            source => device_file(source)?,
        };
        let mut cmd = v::vfio_device_bind_iommufd {
            argsz: size32::<v::vfio_device_bind_iommufd>(),
            flags: 0,
            iommufd: self.fd.as_raw_fd(),
            ..Default::default()
        };
        // A file bound already (by us or by the VMM's VFIO crate) is
        // refused with EINVAL (device_cdev.c: "one device cannot be bound
        // twice"): adopt it with `DeviceSource::Bound` instead.
        sys::device_ioctl(fd.as_fd(), &mut cmd).map_err(host_err(op))?;
        // IDs are unique per iommufd; a duplicate means our table is stale.
        // Dropping the new file unbinds the new device if it is ours.
        self.keep_device(DevId(cmd.out_devid), fd)
    }

    /// Closes the device file if the backend owns it, which unbinds the
    /// device; drops the backend's reference to a shared one, which leaves
    /// the device bound for as long as its owner keeps the file open.
    fn unbind_device(&self, dev: DevId) -> HostResult<()> {
        // Removed under the lock, dropped after it: dropping the last
        // reference to a shared device may run the owner's own teardown
        // (vfio-ioctls' `VfioDevice` detaches and closes in its `Drop`).
        let device = self.tables().devices.remove(&dev.0);
        match device {
            Some(device) => {
                drop(device);
                Ok(())
            }
            None => Err(HostError::new(HostOp::UnbindDevice, Errno::ENOENT)),
        }
    }

    fn hw_info(&self, dev: DevId) -> HostResult<HostInfo> {
        let mut buf = vec![0u8; HW_INFO_BUF_LEN];
        let mut cmd = self.get_hw_info(dev, &mut buf)?;
        // The kernel reports its full data length even when it copied less
        // (device.c: "It could be larger than the input buffer").
        let reported = cmd.data_len as usize;
        if reported > buf.len() && reported <= HW_INFO_MAX_LEN {
            buf = vec![0u8; reported];
            cmd = self.get_hw_info(dev, &mut buf)?;
        }
        let len = (cmd.data_len as usize).min(buf.len());
        Ok(HostInfo {
            hw: decode_hw_info(sys::hw_info_out_type(&cmd), &buf[..len]),
            caps: HostCaps::from_bits_retain(cmd.out_capabilities),
            max_pasid_log2: cmd.out_max_pasid_log2,
        })
    }

    fn ioas_alloc(&self) -> HostResult<IoasId> {
        let mut cmd = k::iommu_ioas_alloc {
            size: size32::<k::iommu_ioas_alloc>(),
            ..Default::default()
        };
        self.ioctl(HostOp::IoasAlloc, &mut cmd)?;
        Ok(IoasId(cmd.out_ioas_id))
    }

    fn ioas_map(
        &self,
        ioas: IoasId,
        iova: IovaPlacement,
        src: MapSource<'_>,
        len: u64,
        access: Access,
    ) -> HostResult<Iova> {
        let flags = map_flags(iova, access);
        match src {
            MapSource::UserVa(va) => self.ioas_map_user(ioas, flags, va, len),
            MapSource::File { fd, offset } => self.ioas_map_file(ioas, flags, fd, offset, len),
        }
    }

    fn ioas_unmap(&self, ioas: IoasId, iova: Iova, len: u64) -> HostResult<u64> {
        let mut cmd = k::iommu_ioas_unmap {
            size: size32::<k::iommu_ioas_unmap>(),
            ioas_id: ioas.0,
            iova: iova.0,
            length: len,
        };
        self.ioctl(HostOp::IoasUnmap, &mut cmd)?;
        Ok(cmd.length)
    }

    fn ioas_copy(
        &self,
        dst: IoasId,
        dst_iova: IovaPlacement,
        src: IoasId,
        src_iova: Iova,
        len: u64,
        access: Access,
    ) -> HostResult<Iova> {
        let (flags, iova) = map_flags(dst_iova, access);
        let mut cmd = k::iommu_ioas_copy {
            size: size32::<k::iommu_ioas_copy>(),
            flags,
            dst_ioas_id: dst.0,
            src_ioas_id: src.0,
            length: len,
            dst_iova: iova,
            src_iova: src_iova.0,
        };
        self.ioctl(HostOp::IoasCopy, &mut cmd)?;
        Ok(Iova(cmd.dst_iova))
    }

    fn ioas_iova_ranges(&self, ioas: IoasId) -> HostResult<IovaRanges> {
        let op = HostOp::IoasIovaRanges;
        let mut room = IOVA_RANGES_INITIAL;
        for _ in 0..IOVA_RANGES_TRIES {
            let mut buf = vec![k::iommu_iova_range::default(); room];
            let mut cmd = k::iommu_ioas_iova_ranges {
                size: size32::<k::iommu_ioas_iova_ranges>(),
                ioas_id: ioas.0,
                num_iovas: count32(op, room)?,
                ..Default::default()
            };
            match sys::ioctl_buf(&self.fd, &mut cmd, &mut buf) {
                Ok(_) => {
                    let n = (cmd.num_iovas as usize).min(buf.len());
                    return Ok(IovaRanges {
                        ranges: buf[..n]
                            .iter()
                            .filter_map(|r| IovaRange::new(Iova(r.start), Iova(r.last)))
                            .collect(),
                        alignment: cmd.out_iova_alignment.max(1),
                    });
                }
                // ioas.c: the kernel fills what fits, sets num_iovas to the
                // total and fails with EMSGSIZE; ask again with room for it.
                Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                    let needed = cmd.num_iovas as usize;
                    if needed > IOVA_RANGES_MAX {
                        return Err(HostError::new(op, errno_of(&e)));
                    }
                    room = needed.max(room + 1);
                }
                Err(e) => return Err(HostError::new(op, errno_of(&e))),
            }
        }
        Err(HostError::new(op, Errno(libc::EMSGSIZE)))
    }

    fn ioas_allow_iovas(&self, ioas: IoasId, ranges: &[IovaRange]) -> HostResult<()> {
        let op = HostOp::IoasAllowIovas;
        let mut buf: Vec<k::iommu_iova_range> = ranges
            .iter()
            .map(|r| k::iommu_iova_range {
                start: r.first.0,
                last: r.last.0,
            })
            .collect();
        let mut cmd = k::iommu_ioas_allow_iovas {
            size: size32::<k::iommu_ioas_allow_iovas>(),
            ioas_id: ioas.0,
            num_iovas: count32(op, buf.len())?,
            ..Default::default()
        };
        self.ioctl_buf(op, &mut cmd, &mut buf)
    }

    fn hwpt_alloc(&self, req: &HwptAlloc) -> HostResult<HwptId> {
        let mut flags = req.flags;
        if req.fault.is_some() {
            flags |= HwptFlags::FAULT_ID_VALID;
        }
        let mut cmd = k::iommu_hwpt_alloc {
            size: size32::<k::iommu_hwpt_alloc>(),
            flags: flags.bits(),
            dev_id: req.dev.0,
            pt_id: req.parent.raw(),
            fault_id: req.fault.map_or(0, |f| f.0),
            ..Default::default()
        };
        match &req.data {
            HwptData::None => self.hwpt_alloc_with::<u8>(
                &mut cmd,
                k::iommu_hwpt_data_type_IOMMU_HWPT_DATA_NONE,
                &mut [],
            ),
            HwptData::VtdS1 {
                flags,
                pgtbl_addr,
                addr_width,
            } => self.hwpt_alloc_with(
                &mut cmd,
                k::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1,
                &mut [k::iommu_hwpt_vtd_s1 {
                    flags: flags.bits(),
                    pgtbl_addr: *pgtbl_addr,
                    addr_width: *addr_width,
                    __reserved: 0,
                }],
            ),
            HwptData::Smmuv3 { ste } => self.hwpt_alloc_with(
                &mut cmd,
                k::iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3,
                &mut [k::iommu_hwpt_arm_smmuv3 {
                    ste: ste.map(u64::to_le),
                }],
            ),
            HwptData::Raw { data_type, bytes } => {
                self.hwpt_alloc_with(&mut cmd, *data_type, &mut bytes.clone())
            }
        }?;
        Ok(HwptId(cmd.out_hwpt_id))
    }

    fn hwpt_invalidate(
        &self,
        target: InvalidateTarget,
        batch: &InvalidationBatch,
    ) -> InvalidateOutcome {
        let op = HostOp::HwptInvalidate;
        let refuse = |errno| InvalidateOutcome {
            handled: 0,
            result: Err(HostError::new(op, errno)),
        };
        let Ok(entry_num) = u32::try_from(batch.len()) else {
            return refuse(Errno::EINVAL);
        };
        let mut cmd = k::iommu_hwpt_invalidate {
            size: size32::<k::iommu_hwpt_invalidate>(),
            hwpt_id: match target {
                InvalidateTarget::Hwpt(h) => h.0,
                InvalidateTarget::Viommu(v) => v.0,
            },
            entry_num,
            ..Default::default()
        };
        match batch {
            InvalidationBatch::VtdS1(entries) => {
                let mut buf: Vec<k::iommu_hwpt_vtd_s1_invalidate> = entries
                    .iter()
                    .map(|e| k::iommu_hwpt_vtd_s1_invalidate {
                        addr: e.addr,
                        npages: e.npages,
                        flags: if e.leaf {
                            k::iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF
                        } else {
                            0
                        },
                        __reserved: 0,
                    })
                    .collect();
                cmd.data_type =
                    k::iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
                cmd.entry_len = size32::<k::iommu_hwpt_vtd_s1_invalidate>();
                self.invalidate_with(&mut cmd, &mut buf)
            }
            InvalidationBatch::Smmuv3(cmds) => {
                let mut buf: Vec<k::iommu_viommu_arm_smmuv3_invalidate> = cmds
                    .iter()
                    .map(|c| k::iommu_viommu_arm_smmuv3_invalidate {
                        cmd: c.map(u64::to_le),
                    })
                    .collect();
                cmd.data_type =
                    k::iommu_hwpt_invalidate_data_type_IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3;
                cmd.entry_len = size32::<k::iommu_viommu_arm_smmuv3_invalidate>();
                self.invalidate_with(&mut cmd, &mut buf)
            }
            InvalidationBatch::Raw {
                data_type,
                entry_len,
                bytes,
            } => {
                // Bytes that are not whole entries would be silently dropped.
                let whole = (*entry_len as usize)
                    .checked_mul(entry_num as usize)
                    .is_some_and(|n| n == bytes.len());
                if !whole {
                    return refuse(Errno::EINVAL);
                }
                cmd.data_type = *data_type;
                cmd.entry_len = *entry_len;
                self.invalidate_with(&mut cmd, &mut bytes.clone())
            }
        }
    }

    fn hwpt_set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> HostResult<()> {
        let mut cmd = k::iommu_hwpt_set_dirty_tracking {
            size: size32::<k::iommu_hwpt_set_dirty_tracking>(),
            flags: if enable {
                k::iommufd_hwpt_set_dirty_tracking_flags_IOMMU_HWPT_DIRTY_TRACKING_ENABLE
            } else {
                0
            },
            hwpt_id: hwpt.0,
            __reserved: 0,
        };
        self.ioctl(HostOp::SetDirtyTracking, &mut cmd)
    }

    fn hwpt_get_dirty_bitmap(
        &self,
        hwpt: HwptId,
        range: IovaRange,
        page_size: u64,
        no_clear: bool,
    ) -> HostResult<BitVec<u64>> {
        let op = HostOp::GetDirtyBitmap;
        let fail = |errno| HostError::new(op, errno);
        let (length, bits) = dirty_bitmap_geometry(range, page_size).map_err(fail)?;
        let nbits = usize::try_from(bits)
            .ok()
            .filter(|&b| b <= BitSlice::<u64>::MAX_BITS)
            .ok_or(fail(Errno::ENOMEM))?;
        // The kernel only sets bits (iova_bitmap_set), so start from zero:
        // one bit per page, bit 0 for `range.first`, in u64 words.
        let mut words: Vec<u64> = Vec::new();
        let nwords = nbits.div_ceil(64);
        words
            .try_reserve_exact(nwords)
            .map_err(|_| fail(Errno::ENOMEM))?;
        words.resize(nwords, 0);
        let mut cmd = k::iommu_hwpt_get_dirty_bitmap {
            size: size32::<k::iommu_hwpt_get_dirty_bitmap>(),
            hwpt_id: hwpt.0,
            flags: if no_clear {
                k::iommufd_hwpt_get_dirty_bitmap_flags_IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR
            } else {
                0
            },
            iova: range.first.0,
            length,
            page_size,
            ..Default::default()
        };
        self.ioctl_buf(op, &mut cmd, &mut words)?;
        let mut bitmap = BitVec::try_from_vec(words).map_err(|_| fail(Errno::ENOMEM))?;
        bitmap.truncate(nbits);
        Ok(bitmap)
    }

    fn viommu_alloc(&self, dev: DevId, parent: HwptId, kind: ViommuType) -> HostResult<ViommuId> {
        let mut cmd = k::iommu_viommu_alloc {
            size: size32::<k::iommu_viommu_alloc>(),
            type_: match kind {
                ViommuType::ArmSmmuv3 => k::iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
                ViommuType::Other(t) => t,
            },
            dev_id: dev.0,
            hwpt_id: parent.0,
            ..Default::default()
        };
        self.ioctl_buf::<_, u8>(HostOp::ViommuAlloc, &mut cmd, &mut [])?;
        Ok(ViommuId(cmd.out_viommu_id))
    }

    fn vdevice_alloc(&self, viommu: ViommuId, dev: DevId, virt_id: u64) -> HostResult<VdeviceId> {
        let mut cmd = k::iommu_vdevice_alloc {
            size: size32::<k::iommu_vdevice_alloc>(),
            viommu_id: viommu.0,
            dev_id: dev.0,
            virt_id,
            ..Default::default()
        };
        self.ioctl(HostOp::VdeviceAlloc, &mut cmd)?;
        Ok(VdeviceId(cmd.out_vdevice_id))
    }

    /// Types without a known record size (see
    /// [`Iommufd::veventq_payload_len`]) fail with EOPNOTSUPP before any
    /// call: use [`Iommufd::veventq_alloc_sized`] for them.
    fn veventq_alloc(
        &self,
        viommu: ViommuId,
        kind: VeventqType,
        depth: u32,
    ) -> HostResult<VeventqId> {
        let payload_len = Self::veventq_payload_len(kind)
            .ok_or(HostError::new(HostOp::VeventqAlloc, Errno::EOPNOTSUPP))?;
        self.veventq_alloc_sized(viommu, kind, depth, payload_len)
    }

    /// Reads at most `max` records of the kernel's; a sequence gap adds a
    /// [`VEvent::Lost`] of ours in front of the event after it.
    fn veventq_read(&self, q: VeventqId, max: usize) -> HostResult<Vec<VEvent>> {
        let op = HostOp::VeventqRead;
        let mut tables = self.tables();
        let q = tables
            .veventqs
            .get_mut(&q.0)
            .ok_or(HostError::new(op, Errno::ENOENT))?;
        if max == 0 {
            return Ok(Vec::new());
        }
        // The kernel fails with EINVAL when the first record does not fit,
        // so the buffer holds at least one.
        let record = VEVENT_HEADER_LEN.saturating_add(q.payload_len);
        let len = record
            .saturating_mul(max)
            .min(VEVENTQ_READ_MAX_BYTES)
            .max(record);
        let mut buf = vec![0u8; len];
        let n = match sys::read_into(q.fd.as_fd(), &mut buf) {
            Ok(n) => n.min(len),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(HostError::new(op, errno_of(&e))),
        };
        Ok(parse_vevents(
            &buf[..n],
            q.payload_len,
            &mut q.next_sequence,
        ))
    }

    fn fault_queue_alloc(&self) -> HostResult<FaultQueueId> {
        let op = HostOp::FaultQueueAlloc;
        let mut cmd = k::iommu_fault_alloc {
            size: size32::<k::iommu_fault_alloc>(),
            ..Default::default()
        };
        self.ioctl(op, &mut cmd)?;
        let fd = sys::adopt_fd(cmd.out_fault_fd).map_err(host_err(op))?;
        self.tables().faults.insert(cmd.out_fault_id, fd);
        Ok(FaultQueueId(cmd.out_fault_id))
    }

    /// Groups read are registered by the kernel for a response, so once one
    /// read succeeded, a later failing read ends the loop without losing
    /// them.
    fn fault_read(&self, q: FaultQueueId) -> HostResult<Vec<FaultGroup>> {
        let op = HostOp::FaultRead;
        let tables = self.tables();
        let fd = tables
            .faults
            .get(&q.0)
            .ok_or(HostError::new(op, Errno::ENOENT))?;
        let mut records = FAULT_READ_RECORDS;
        let mut groups = Vec::new();
        for _ in 0..FAULT_READS_MAX {
            // The kernel wants a multiple of the record size (else ESPIPE).
            let mut buf = vec![0u8; records * PGFAULT_LEN];
            match sys::read_into(fd.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => groups.extend(parse_faults(&buf[..n.min(buf.len())])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EINVAL)
                        && records < FAULT_GROUP_MAX_RECORDS =>
                {
                    records = (records * 2).min(FAULT_GROUP_MAX_RECORDS);
                }
                Err(e) if groups.is_empty() => return Err(HostError::new(op, errno_of(&e))),
                Err(e) => {
                    crate::guest_log!(
                        Warn,
                        "fault queue {q:?}: read failed after {} groups: {e}",
                        groups.len()
                    );
                    break;
                }
            }
        }
        Ok(groups)
    }

    fn fault_respond(&self, q: FaultQueueId, resp: PageResponse) -> HostResult<()> {
        let op = HostOp::FaultRespond;
        let tables = self.tables();
        let fd = tables
            .faults
            .get(&q.0)
            .ok_or(HostError::new(op, Errno::ENOENT))?;
        sys::write_all(fd.as_fd(), &encode_page_response(resp)).map_err(host_err(op))
    }

    fn attach(&self, dev: DevId, pasid: Option<Pasid>, pt: PtId) -> HostResult<()> {
        let key = pasid.map(Pasid::raw);
        let mut tables = self.tables();
        let device = tables
            .devices
            .get_mut(&dev.0)
            .ok_or(HostError::new(HostOp::Attach, Errno::ENOENT))?;
        let op = if device.attached.contains(&key) {
            HostOp::Replace
        } else {
            HostOp::Attach
        };
        let mut cmd = v::vfio_device_attach_iommufd_pt {
            argsz: size32::<v::vfio_device_attach_iommufd_pt>(),
            flags: if pasid.is_some() {
                v::VFIO_DEVICE_ATTACH_PASID
            } else {
                0
            },
            pt_id: pt.raw(),
            pasid: key.unwrap_or(0),
        };
        sys::device_ioctl(device.fd.as_fd(), &mut cmd).map_err(host_err(op))?;
        device.attached.insert(key);
        Ok(())
    }

    fn detach(&self, dev: DevId, pasid: Option<Pasid>) -> HostResult<()> {
        let op = HostOp::Detach;
        let key = pasid.map(Pasid::raw);
        let mut tables = self.tables();
        let device = tables
            .devices
            .get_mut(&dev.0)
            .ok_or(HostError::new(op, Errno::ENOENT))?;
        let mut cmd = v::vfio_device_detach_iommufd_pt {
            argsz: size32::<v::vfio_device_detach_iommufd_pt>(),
            flags: if pasid.is_some() {
                v::VFIO_DEVICE_DETACH_PASID
            } else {
                0
            },
            pasid: key.unwrap_or(0),
        };
        sys::device_ioctl(device.fd.as_fd(), &mut cmd).map_err(host_err(op))?;
        device.attached.remove(&key);
        Ok(())
    }

    /// A vEVENTQ's or fault queue's file is closed *before* `IOMMU_DESTROY`:
    /// the file holds a reference on its object (`iommufd_eventq_init` takes
    /// `obj.users`), so destroying it while open always fails with EBUSY, as
    /// the kernel selftests' `close(fd); destroy(id)` order shows. If the
    /// kernel then refuses (a HWPT still delivers to the fault queue), the
    /// queue can no longer be read; destroy the users first.
    fn destroy(&self, id: ObjectId) -> HostResult<()> {
        match id {
            ObjectId::Veventq(q) => drop(self.tables().veventqs.remove(&q.0)),
            ObjectId::FaultQueue(q) => drop(self.tables().faults.remove(&q.0)),
            _ => {}
        }
        let mut cmd = k::iommu_destroy {
            size: size32::<k::iommu_destroy>(),
            id: id.raw(),
        };
        self.ioctl(HostOp::Destroy, &mut cmd)
    }
}

#[cfg(test)]
mod ownership_tests;
#[cfg(test)]
mod tests;
