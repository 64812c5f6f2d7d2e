//! iommufd-sim: the simulated host, an in-memory iommufd
//! ([`nesting_core::host::HostBackend`]) that applies the Linux 7.2
//! kernel's rules as its code applies them, for tests, replays and
//! `viommu probe --host sim:...`. A VMM that backs passthrough devices with
//! `/dev/iommu` links nesting-core alone; the `viommu` tool, the tests,
//! benches and fuzz targets use this crate as their host.
//!
//! - [`SimIommufd`]: the backend, with fault injection
//!   ([`SimIommufd::fail_nth`]), per-op call counters and views of its
//!   state (mappings, HWPTs, attachments, pinned pages).
//! - [`profile`]: the physical IOMMUs it can simulate
//!   ([`profile::HostProfile`]), parsed with overrides from
//!   `PROFILE[,key=value...]` ([`profile::SimHostSpec::parse`]).
//!
//! Each rule cites the kernel function it mirrors
//! (`drivers/iommu/iommufd/*.c` and the VT-d / SMMUv3 drivers). Where a
//! uAPI comment and the code disagree, the code is followed; the notable
//! cases are:
//!
//! - an IOAS without domains has IOVA alignment 1, not `PAGE_SIZE`
//!   (`iopt_init_table`);
//! - pages are pinned only while the IOAS has a domain (a device attached
//!   or a paging HWPT allocated on it);
//! - `IOAS_COPY` accepts a sub-range of earlier mappings, and creates one
//!   mapping per source mapping it spans (`iopt_get_pages`);
//! - `IOAS_UNMAP` of a range whose *end* cuts a mapping fails with ENOENT
//!   after unmapping the mappings before it (`iopt_unmap_iova_range`
//!   removes areas one by one); this is the only failing call that changes
//!   state;
//! - VT-d stage-1 fields (address width, SRE, EAFE) are checked when a
//!   device is attached to the nested HWPT, not at allocation
//!   (`intel_pasid_setup_nested`), and unknown flag bits are ignored.
//!
//! Every operation runs on a copy of the state that is committed only on
//! success, so a refused call (real or injected with
//! [`SimIommufd::fail_nth`]) leaves nothing behind. The simulator never
//! dereferences user addresses and contains no `unsafe` code.
//!
//! # Example
//!
//! The sequence a VMM runs for each passthrough device (see nesting-core's
//! crate documentation), on a simulated VT-d host without nesting:
//!
//! ```
//! use std::sync::Arc;
//! use iommufd_sim::SimIommufd;
//! use iommufd_sim::profile::HostProfile;
//! use nesting_core::options::ModelOptions;
//! use nesting_core::host::PtId;
//! use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
//! use nesting_core::ladder::{self, DecisionKind, HostView};
//!
//! let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
//! let host: SharedHost = sim.clone();
//! // The guest's model owns its options and its checks against a host.
//! let guest = vtd::VtdConfig::from_options(&["mode=scalable", "cm=1"]).unwrap();
//!
//! let mut dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
//! let ioas = Ioas::alloc(&host).unwrap();
//! dev.attach(None, PtId::Ioas(ioas.id())).unwrap();
//! let ranges = host.ioas_iova_ranges(ioas.id()).unwrap();
//! let view = HostView {
//!     info: host.hw_info(dev.id()).unwrap(),
//!     iova_ranges: ranges.ranges,
//!     page_size: ranges.alignment,
//!     unit: None,
//! };
//! let decision = ladder::decide(&guest, &view);
//! // No nesting on this host, but the guest invalidates on map (CAP.CM):
//! assert_eq!(decision.kind, DecisionKind::Shadow);
//! println!("{decision}");
//! ```
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};

use bitvec::vec::BitVec;
use nesting_core::host::{
    DevId, DeviceSource, Errno, FaultGroup, FaultQueueId, HostBackend, HostError, HostInfo, HostOp,
    HostResult, HwptAlloc, HwptData, HwptFlags, HwptId, InvalidateOutcome, InvalidateTarget,
    InvalidationBatch, IoasId, IovaPlacement, IovaRanges, MapSource, ObjectId, PageResponse, PtId,
    VEvent, VdeviceId, VeventqId, VeventqType, ViommuId, ViommuType,
};
use nesting_core::types::{Access, Iova, IovaRange, Pasid};

use crate::profile::SimHostSpec;

pub mod profile;

mod attach;
mod driver;
mod eventq;
mod ioas;
mod mock;
mod state;
mod vendor;
mod viommu;

#[cfg(test)]
mod mock_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use state::{Holders, Obj, PagesBase, PhysDev, State, Unit};

/// A file as the simulator identifies it: `(st_dev, st_ino)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SimFileKey {
    /// Device of the file system holding the file.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl SimFileKey {
    /// The key of an open file (safe std calls only: the descriptor is
    /// duplicated and `fstat`ed).
    pub fn of(fd: BorrowedFd<'_>) -> Result<SimFileKey, Errno> {
        let owned = fd.try_clone_to_owned().map_err(|e| Errno::from_io(&e))?;
        let meta = std::fs::File::from(owned)
            .metadata()
            .map_err(|e| Errno::from_io(&e))?;
        Ok(SimFileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Host memory behind an IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimBacking {
    /// A user virtual address of the process that mapped it.
    UserVa(u64),
    /// A byte of a file.
    File {
        /// The file.
        file: SimFileKey,
        /// Byte offset in the file.
        offset: u64,
    },
}

impl SimBacking {
    fn at(base: PagesBase, byte: u64) -> SimBacking {
        match base {
            PagesBase::User(b) => SimBacking::UserVa(b.wrapping_add(byte)),
            PagesBase::File(file, b) => SimBacking::File {
                file,
                offset: b.wrapping_add(byte),
            },
        }
    }
}

/// One mapping of an IOAS (a kernel `iopt_area`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimMapping {
    /// IOVAs covered.
    pub range: IovaRange,
    /// Memory behind the first byte.
    pub backing: SimBacking,
    /// READ and/or WRITE.
    pub access: Access,
}

/// What the simulator knows of a HWPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimHwpt {
    /// What it was allocated on: an IOAS (paging), a NEST_PARENT HWPT
    /// (VT-d nested) or a vIOMMU (SMMUv3 nested).
    pub parent: PtId,
    /// The IOAS its stage-2 translation derives from.
    pub ioas: IoasId,
    /// Allocation flags.
    pub flags: HwptFlags,
    /// Vendor data as given ([`HwptData::None`] for paging HWPTs).
    pub data: HwptData,
    /// Whether it is a nested HWPT.
    pub nested: bool,
    /// Whether the kernel made it for an attach to an IOAS.
    pub auto_domain: bool,
    /// The IOMMU unit its domain belongs to.
    pub iommu: u32,
    /// Fault queue receiving its I/O page faults.
    pub fault: Option<FaultQueueId>,
    /// Whether dirty tracking is on (paging HWPTs).
    pub dirty_tracking: bool,
}

/// The errnos the kernel can return for `op` (docs/kernel-findings.md
/// section 3, the iommufd sources it cites, and ENOMEM for every call that
/// allocates), for fault injection that fails a call as the kernel would:
/// [`SimIommufd::fail_nth`] with each of them.
pub fn kernel_errnos(op: HostOp) -> &'static [Errno] {
    use Errno as E;
    match op {
        HostOp::BindDevice => &[E::EBUSY, E::EINVAL, E::ENODEV, E::ENOMEM],
        HostOp::UnbindDevice => &[E::ENOENT],
        HostOp::GetHwInfo => &[E::ENOENT, E::EOPNOTSUPP, E::ENOMEM],
        HostOp::IoasAlloc => &[E::ENOMEM],
        HostOp::IoasMap => &[
            E::EEXIST,
            E::EINVAL,
            E::ENOENT,
            E::ENOMEM,
            E::ENOSPC,
            E::EFAULT,
        ],
        HostOp::IoasMapFile => &[E::EINVAL, E::EOVERFLOW, E::EBADF, E::ENOMEM, E::ENOSPC],
        HostOp::IoasUnmap => &[E::ENOENT, E::EINVAL, E::EBUSY],
        HostOp::IoasCopy => &[
            E::ENOENT,
            E::EEXIST,
            E::EINVAL,
            E::EPERM,
            E::ENOMEM,
            E::ENOSPC,
        ],
        HostOp::IoasIovaRanges => &[E::ENOENT, E::EOVERFLOW],
        HostOp::IoasAllowIovas => &[E::EINVAL, E::EBUSY, E::ENOMEM],
        HostOp::HwptAlloc => &[E::EOPNOTSUPP, E::EINVAL, E::ENOENT, E::ENOMEM],
        HostOp::HwptInvalidate => &[E::EINVAL, E::EOPNOTSUPP, E::ENOMEM, E::ETIMEDOUT],
        HostOp::SetDirtyTracking => &[E::EOPNOTSUPP, E::EINVAL],
        HostOp::GetDirtyBitmap => &[E::EINVAL, E::EFAULT],
        HostOp::ViommuAlloc => &[E::EINVAL, E::EOPNOTSUPP, E::ENOMEM],
        HostOp::VdeviceAlloc => &[E::EEXIST, E::EINVAL, E::ENOMEM],
        HostOp::VeventqAlloc => &[E::EINVAL, E::EEXIST, E::ENOMEM],
        HostOp::VeventqRead => &[E::EINVAL, E::EFAULT, E::ENOENT],
        HostOp::FaultQueueAlloc => &[E::ENOMEM],
        HostOp::FaultRead => &[E::EINVAL, E::EFAULT, E::ENOENT],
        HostOp::FaultRespond => &[E::EINVAL, E::ENOENT],
        HostOp::Attach | HostOp::Replace => &[
            E::EINVAL,
            E::ENOENT,
            E::EBUSY,
            E::ENOMEM,
            E::ENODEV,
            E::EOPNOTSUPP,
        ],
        HostOp::Detach => &[E::EINVAL, E::ENOENT],
        HostOp::Destroy => &[E::EBUSY, E::ENOENT],
    }
}

/// One pending `fail_nth`.
#[derive(Clone, Copy, Debug)]
struct Injection {
    op: HostOp,
    remaining: u64,
    errno: Errno,
}

/// What [`SimIommufd::set_call_hook`] runs.
pub type CallHook = Arc<dyn Fn(HostOp) + Send + Sync>;

#[derive(Default)]
struct Hook(Option<CallHook>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    calls: BTreeMap<HostOp, u64>,
    invalidation_entries: u64,
    injections: Vec<Injection>,
    /// [`SimIommufd::fail_nth_call`]: calls left before the one that
    /// fails, and which of its op's [`kernel_errnos`] it fails with.
    any_call: Option<(u64, usize)>,
    hook: Hook,
}

impl Inner {
    /// Counts a call of `op` and tells whether an injected failure fires.
    fn enter(&mut self, op: HostOp) -> Option<Errno> {
        if let Some(hook) = &self.hook.0 {
            hook(op);
        }
        *self.calls.entry(op).or_default() += 1;
        let mut fired = None;
        if let Some((left, pick)) = self.any_call.as_mut() {
            *left -= 1;
            if *left == 0 {
                let errnos = kernel_errnos(op);
                fired = errnos.get(*pick % errnos.len().max(1)).copied();
                self.any_call = None;
            }
        }
        self.injections.retain_mut(|i| {
            if i.op != op {
                return true;
            }
            i.remaining -= 1;
            if i.remaining == 0 {
                fired = fired.or(Some(i.errno));
                return false;
            }
            true
        });
        fired
    }
}

/// The simulated iommufd host. See the crate documentation.
#[derive(Debug, Default)]
pub struct SimIommufd {
    inner: Mutex<Inner>,
}

/// `IOMMU_NO_PASID` is 0: a PASID attach of PASID 0 is the RID attach.
fn pasid_raw(p: Option<Pasid>) -> u32 {
    p.map_or(0, Pasid::raw)
}

impl SimIommufd {
    /// A host without IOMMUs yet (see [`SimIommufd::add_iommu`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A host with one IOMMU unit (index 0).
    pub fn with_host(spec: SimHostSpec) -> Self {
        let s = Self::new();
        s.add_iommu(spec);
        s
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the state half-written: operations
        // commit whole copies.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a physical IOMMU unit; returns its index.
    pub fn add_iommu(&self, spec: SimHostSpec) -> u32 {
        let mut g = self.lock();
        g.state.units.push(Unit { spec });
        (g.state.units.len() - 1) as u32
    }

    /// Adds a device behind unit `iommu`, to be bound with
    /// [`HostBackend::bind_device`] (binding fails with ENODEV if the unit
    /// does not exist).
    pub fn add_device(&self, iommu: u32) -> DeviceSource {
        let mut g = self.lock();
        g.state.devices.push(PhysDev {
            unit: iommu,
            bound: None,
            holders: Holders::default(),
        });
        DeviceSource::Simulated {
            index: (g.state.devices.len() - 1) as u32,
        }
    }

    /// Binds a device the way the VMM's own VFIO code does outside the
    /// backend (vfio-ioctls' `VfioDevice::new_from_fd` binds the cdev it is
    /// given): the binding belongs to that owner, not counted as a backend
    /// call nor open to fault injection. The backend takes it over with
    /// [`DeviceSource::Bound`] and the returned ID; the owner lets go with
    /// [`SimIommufd::unbind_as_owner`].
    pub fn bind_as_owner(&self, source: DeviceSource) -> HostResult<DevId> {
        let op = HostOp::BindDevice;
        let DeviceSource::Simulated { index } = source else {
            return Err(HostError::new(op, Errno::ENODEV));
        };
        let mut g = self.lock();
        let mut next = g.state.clone();
        let id = next.bind_phys(index).map_err(|e| HostError::new(op, e))?;
        next.devices[index as usize].holders.owner = true;
        g.state = next;
        Ok(DevId(id))
    }

    /// The owner of a [`SimIommufd::bind_as_owner`] binding closes its
    /// file: the device is unbound unless the backend adopted it, which
    /// then holds it until it unbinds it. ENOENT if the owner holds no such
    /// device.
    pub fn unbind_as_owner(&self, dev: DevId) -> HostResult<()> {
        let mut g = self.lock();
        let mut next = g.state.clone();
        next.let_go(dev.0, |h| &mut h.owner)
            .map_err(|e| HostError::new(HostOp::UnbindDevice, e))?;
        g.state = next;
        Ok(())
    }

    /// The unit a bound device is behind.
    pub fn iommu_of(&self, dev: DevId) -> Option<u32> {
        self.lock().state.dev(dev.0).ok().map(|d| d.unit)
    }

    /// Whether the simulated kernel has CONFIG_TRANSPARENT_HUGEPAGE (the
    /// default, as distribution kernels do): it lets automatic IOVA
    /// placement align to up to `HPAGE_SIZE` rather than `PAGE_SIZE`. Seen
    /// with the kernel test's guest kernel, built without it: a 64 KiB
    /// mapping of a 16 KiB-aligned buffer placed at 0x1000, not 0x4000.
    pub fn set_transparent_hugepage(&self, enabled: bool) {
        self.lock().state.no_thp = !enabled;
    }

    /// Makes the `n`-th call of `op` from now (1 = the next) fail with
    /// `errno`, changing nothing. `n == 0` is ignored.
    pub fn fail_nth(&self, op: HostOp, n: u64, errno: Errno) {
        if n > 0 {
            self.lock().injections.push(Injection {
                op,
                remaining: n,
                errno,
            });
        }
    }

    /// Makes the `n`-th host call from now (1 = the next), whatever its
    /// op, fail with one of the errnos the kernel returns for that op
    /// ([`kernel_errnos`], the one at `pick` modulo their number),
    /// changing nothing. `n == 0` is ignored.
    pub fn fail_nth_call(&self, n: u64, pick: usize) {
        if n > 0 {
            self.lock().any_call = Some((n, pick));
        }
    }

    /// Injections of [`SimIommufd::fail_nth`] and
    /// [`SimIommufd::fail_nth_call`] that have not fired yet.
    pub fn injections_pending(&self) -> usize {
        let g = self.lock();
        g.injections.len() + usize::from(g.any_call.is_some())
    }

    /// Drops every injection that has not fired.
    pub fn clear_injections(&self) {
        let mut g = self.lock();
        g.injections.clear();
        g.any_call = None;
    }

    /// Runs `hook` at the start of every host call (failed and injected
    /// ones included), before the call has any effect: a test checks there
    /// what the guest can already see while the host work is under way.
    /// The hook runs with the simulator locked and must not call it.
    pub fn set_call_hook(&self, hook: Option<CallHook>) {
        self.lock().hook = Hook(hook);
    }

    /// Calls of `op` made since start or [`SimIommufd::reset_counters`],
    /// failed ones included.
    pub fn calls(&self, op: HostOp) -> u64 {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    /// Invalidation entries handled by `hwpt_invalidate` since start or
    /// reset.
    pub fn invalidation_entries(&self) -> u64 {
        self.lock().invalidation_entries
    }

    /// Zeroes the call and invalidation counters.
    pub fn reset_counters(&self) {
        let mut g = self.lock();
        g.calls.clear();
        g.invalidation_entries = 0;
    }

    /// Pages pinned now, counted as the kernel accounts them: each page of
    /// an `iopt_pages` once however many mappings (COPY) share it, twice
    /// when mapped twice by MAP; only while the IOAS has a domain.
    pub fn pinned_pages(&self) -> u64 {
        self.lock().state.pinned_pages()
    }

    /// The simulated kernel's `PAGE_SIZE` (the largest unit page size, at
    /// least 4096).
    pub fn kernel_page_size(&self) -> u64 {
        self.lock().state.page_size()
    }

    /// The mappings of an IOAS, ascending by IOVA (empty if no such IOAS).
    pub fn mappings(&self, ioas: IoasId) -> Vec<SimMapping> {
        let g = self.lock();
        let Ok(io) = g.state.ioas(ioas.0) else {
            return vec![];
        };
        io.areas
            .values()
            .map(|a| SimMapping {
                range: a.range(),
                backing: SimBacking::at(a.base, a.start_byte),
                access: a.access,
            })
            .collect()
    }

    /// The IOVA ranges an IOAS can hold now (what `IOMMU_IOAS_IOVA_RANGES`
    /// reports), without counting a call or firing an injected failure;
    /// empty if no such IOAS.
    pub fn usable_iovas(&self, ioas: IoasId) -> Vec<IovaRange> {
        self.lock()
            .state
            .iova_ranges(ioas.0)
            .map(|r| r.ranges)
            .unwrap_or_default()
    }

    /// The memory behind one IOVA of an IOAS and the mapping's access.
    pub fn translate(&self, ioas: IoasId, iova: Iova) -> Option<(SimBacking, Access)> {
        let g = self.lock();
        let io = g.state.ioas(ioas.0).ok()?;
        let a = ioas::area_containing(io, iova.0)?;
        let byte = a.start_byte + (iova.0 - a.iova);
        Some((SimBacking::at(a.base, byte), a.access))
    }

    /// What a device or PASID is attached to, as the caller named it (an
    /// IOAS for automatic domains; see [`SimIommufd::attached_hwpt`]).
    pub fn attachment(&self, dev: DevId, pasid: Option<Pasid>) -> Option<PtId> {
        let g = self.lock();
        g.state
            .attachment(dev.0, pasid_raw(pasid))
            .map(|a| a.requested)
    }

    /// The HWPT a device or PASID is attached to: the kernel's `pt_id`
    /// answer to the attach, an automatic HWPT for an IOAS attach.
    pub fn attached_hwpt(&self, dev: DevId, pasid: Option<Pasid>) -> Option<HwptId> {
        let g = self.lock();
        g.state
            .attachment(dev.0, pasid_raw(pasid))
            .map(|a| HwptId(a.hwpt))
    }

    /// A HWPT's description.
    pub fn hwpt(&self, hwpt: HwptId) -> Option<SimHwpt> {
        let g = self.lock();
        let s = &g.state;
        match s.objects.get(&hwpt.0)? {
            Obj::Paging(p) => Some(SimHwpt {
                parent: PtId::Ioas(IoasId(p.ioas)),
                ioas: IoasId(p.ioas),
                flags: p.flags,
                data: HwptData::None,
                nested: false,
                auto_domain: p.auto_domain,
                iommu: p.unit,
                fault: p.fault.map(FaultQueueId),
                dirty_tracking: p.dirty_enabled,
            }),
            Obj::Nested(n) => Some(SimHwpt {
                parent: n
                    .viommu
                    .map_or(PtId::Hwpt(HwptId(n.parent)), |v| PtId::Viommu(ViommuId(v))),
                ioas: IoasId(s.paging(n.parent).map_or(0, |p| p.ioas)),
                flags: n.flags,
                data: n.data.clone(),
                nested: true,
                auto_domain: false,
                iommu: n.unit,
                fault: n.fault.map(FaultQueueId),
                dirty_tracking: false,
            }),
            _ => None,
        }
    }

    /// Queues an event on the vIOMMU's vEVENTQ (the one of its own type,
    /// else its oldest), as `iommufd_viommu_report_event` does: past the
    /// queue's depth the lost-events marker is queued instead.
    pub fn inject_vevent(&self, viommu: ViommuId, data: Vec<u8>) -> Result<(), Errno> {
        let mut g = self.lock();
        let q = g.state.default_veventq(viommu.0)?;
        g.state.report_event(q, data)
    }

    /// Queues an event on the vIOMMU's vEVENTQ of type `kind`.
    pub fn inject_vevent_type(
        &self,
        viommu: ViommuId,
        kind: VeventqType,
        data: Vec<u8>,
    ) -> Result<(), Errno> {
        let mut g = self.lock();
        let q = g
            .state
            .objects
            .iter()
            .find_map(|(id, o)| match o {
                Obj::Veventq(q) if q.viommu == viommu.0 && q.kind == kind => Some(*id),
                _ => None,
            })
            .ok_or(Errno::EOPNOTSUPP)?;
        g.state.report_event(q, data)
    }

    /// Closes the file of a vEVENTQ or fault queue under the backend, as a
    /// refused destroy leaves it (see [`HostBackend::destroy`]): every
    /// later read and page response fails with ENOENT, and events reported
    /// to it are never read. For tests of what a model does with a queue
    /// it can no longer read. Returns whether `id` names such a queue.
    pub fn close_queue(&self, id: ObjectId) -> bool {
        let queue = matches!(id, ObjectId::Veventq(_) | ObjectId::FaultQueue(_));
        let mut g = self.lock();
        let exists = queue && g.state.objects.contains_key(&id.raw());
        if exists {
            g.state.closed_queues.insert(id.raw());
        }
        exists
    }

    /// The vEVENTQ [`SimIommufd::inject_vevent`] reports to for `viommu`.
    pub fn veventq_of(&self, viommu: ViommuId) -> Option<VeventqId> {
        self.lock()
            .state
            .default_veventq(viommu.0)
            .ok()
            .map(VeventqId)
    }

    /// Raises a page request group of `group_len` faults (at `addr`, then
    /// one page further each) from a device or PASID, delivered to the
    /// fault queue of the HWPT it is attached to. ENODEV when detached,
    /// EOPNOTSUPP when that HWPT has no fault queue.
    pub fn inject_page_fault(
        &self,
        dev: DevId,
        pasid: Option<Pasid>,
        addr: Iova,
        perm: Access,
        group_len: u32,
    ) -> Result<(), Errno> {
        let mut g = self.lock();
        let mut next = g.state.clone();
        next.raise_fault(dev.0, pasid_raw(pasid), addr, perm, group_len)?;
        g.state = next;
        Ok(())
    }

    /// Marks the page holding `iova` dirty in a HWPT's domain, as the
    /// hardware would on a DMA write (a nested HWPT's writes dirty its
    /// parent). Returns whether a bit was recorded: tracking must be on and
    /// the IOVA mapped.
    pub fn mark_dirty(&self, hwpt: HwptId, iova: Iova) -> bool {
        let mut g = self.lock();
        let s = &mut g.state;
        let Some(id) = s.find_hwpt_paging(hwpt.0) else {
            return false;
        };
        let Ok(p) = s.paging(id) else { return false };
        let (ioas, pte, on) = (p.ioas, s.unit_spec(p.unit).page_size, p.dirty_enabled);
        let mapped = s
            .ioas(ioas)
            .is_ok_and(|io| ioas::area_containing(io, iova.0).is_some());
        if !on || !mapped {
            return false;
        }
        s.paging_mut(id)
            .map(|p| p.dirty.insert(iova.0 - iova.0 % pte))
            .is_ok()
    }

    /// The whole state, for tests that check a call changed nothing.
    #[cfg(test)]
    fn snapshot(&self) -> String {
        format!("{:?}", self.lock().state)
    }

    /// Runs `f` on a copy of the state, committing when it says so.
    fn run_raw<T>(
        &self,
        op: impl FnOnce(&State) -> HostOp,
        f: impl FnOnce(&mut State) -> (bool, Result<T, Errno>),
    ) -> HostResult<T> {
        let mut g = self.lock();
        let op = op(&g.state);
        if let Some(e) = g.enter(op) {
            return Err(HostError::new(op, e));
        }
        let mut next = g.state.clone();
        let (commit, rc) = f(&mut next);
        if commit {
            g.state = next;
            g.state.forget_journals();
        }
        rc.map_err(|e| HostError::new(op, e))
    }

    /// [`SimIommufd::run_raw`] for the calls that map and unmap: `f` runs
    /// on the state itself, its area changes journaled, and a call that
    /// does not commit is undone (areas from the journal, everything else
    /// from a copy made before). Only the copy of the other objects costs,
    /// not the mappings. `f` must not create or destroy an IOAS.
    fn run_journaled<T>(
        &self,
        op: HostOp,
        f: impl FnOnce(&mut State) -> (bool, Result<T, Errno>),
    ) -> HostResult<T> {
        let mut g = self.lock();
        if let Some(e) = g.enter(op) {
            return Err(HostError::new(op, e));
        }
        let saved = g.state.without_areas();
        let (commit, rc) = f(&mut g.state);
        if !commit {
            g.state.roll_back(saved);
        }
        g.state.forget_journals();
        rc.map_err(|e| HostError::new(op, e))
    }

    /// Runs `f` on a copy of the state, committing on success.
    fn run<T>(&self, op: HostOp, f: impl FnOnce(&mut State) -> Result<T, Errno>) -> HostResult<T> {
        self.run_raw(
            |_| op,
            |s| {
                let rc = f(s);
                (rc.is_ok(), rc)
            },
        )
    }
}

impl State {
    /// vfio `VFIO_DEVICE_BIND_IOMMUFD` -> device.c, `iommufd_device_bind`;
    /// a `Bound` source is adopted (see [`State::adopt`]).
    fn bind(&mut self, source: DeviceSource) -> Result<u32, Errno> {
        let index = match source {
            DeviceSource::Simulated { index } => index,
            DeviceSource::Bound { source, dev } => return self.adopt(*source, dev),
            // The simulator has no real VFIO devices.
            _ => return Err(Errno::ENODEV),
        };
        let id = self.bind_phys(index)?;
        self.devices[index as usize].holders.backend = true;
        Ok(id)
    }

    /// Binds physical device `index`, whoever asks.
    fn bind_phys(&mut self, index: u32) -> Result<u32, Errno> {
        let phys = self
            .devices
            .get(index as usize)
            .ok_or(Errno::ENODEV)?
            .clone();
        if phys.unit as usize >= self.units.len() {
            return Err(Errno::ENODEV);
        }
        // iommu_device_claim_dma_owner: the device is owned already.
        if phys.bound.is_some() {
            return Err(Errno::EBUSY);
        }
        let id = self.insert(Obj::Device(state::DevObj {
            phys: index,
            unit: phys.unit,
            vdev: None,
            next_grpid: 0,
        }))?;
        self.devices[index as usize].bound = Some(id);
        Ok(id)
    }

    /// The backend takes over a binding its owner made
    /// ([`SimIommufd::bind_as_owner`]), with the answers of nesting-core's
    /// `Iommufd`: EINVAL for a `Path` (a file opened now is bound to
    /// nothing) or a nested `Bound`, ENODEV for a real file, EEXIST when the
    /// backend holds the device already, ENOENT when `dev` is not the
    /// device's binding (the real backend can only tell that `dev` is no
    /// device of the iommufd; the simulator knows which device it is).
    fn adopt(&mut self, source: DeviceSource, dev: DevId) -> Result<u32, Errno> {
        let index = match source {
            DeviceSource::Simulated { index } => index,
            DeviceSource::Path(_) | DeviceSource::Bound { .. } => return Err(Errno::EINVAL),
            _ => return Err(Errno::ENODEV),
        };
        let phys = self.devices.get_mut(index as usize).ok_or(Errno::ENODEV)?;
        if phys.bound != Some(dev.0) {
            return Err(Errno::ENOENT);
        }
        if phys.holders.backend {
            return Err(Errno::EEXIST);
        }
        phys.holders.backend = true;
        Ok(dev.0)
    }

    /// One holder of device `dev` lets go of its file (`holder` picks
    /// which); the device is unbound when neither holds it any more.
    /// ENOENT if that holder does not hold it.
    fn let_go(&mut self, dev: u32, holder: fn(&mut Holders) -> &mut bool) -> Result<(), Errno> {
        let phys = self.dev(dev)?.phys;
        let p = self.devices.get_mut(phys as usize).ok_or(Errno::ENOENT)?;
        let held = holder(&mut p.holders);
        if !*held {
            return Err(Errno::ENOENT);
        }
        *held = false;
        if p.holders == Holders::default() {
            self.unbind(dev)?;
        }
        Ok(())
    }

    /// vfio/iommufd.c, `vfio_iommufd_physical_unbind`: PASIDs then the RID
    /// are detached; the vDEVICE is destroyed leaving a tombstone
    /// (device.c, `iommufd_device_remove_vdev`).
    fn unbind(&mut self, dev: u32) -> Result<(), Errno> {
        let d = self.dev(dev)?.clone();
        let mut pasids: Vec<u32> = self
            .attach
            .keys()
            .filter(|(x, _)| *x == dev)
            .map(|(_, p)| *p)
            .collect();
        pasids.sort_by_key(|p| (*p == 0, *p));
        for p in pasids {
            self.detach(dev, p)?;
        }
        if let Some(v) = d.vdev {
            if let Some(Obj::Vdevice(vd)) = self.objects.get(&v).cloned()
                && let Ok(vi) = self.viommu_mut(vd.viommu)
            {
                vi.vdevs.remove(&vd.virt_id);
            }
            self.objects.insert(v, Obj::Tombstone);
        }
        self.objects.remove(&dev);
        if let Some(p) = self.devices.get_mut(d.phys as usize) {
            p.bound = None;
        }
        Ok(())
    }

    /// ioas.c, `iommufd_ioas_map` / `iommufd_ioas_map_file`.
    fn map(
        &mut self,
        ioas: u32,
        place: IovaPlacement,
        (src, start): (PagesSrc, u64),
        len: u64,
        access: Access,
    ) -> Result<u64, Errno> {
        ioas::check_map_args(place, len, access)?;
        self.ioas(ioas)?;
        let writable = access.contains(Access::WRITE);
        let elm = match src {
            PagesSrc::User => self.alloc_user_pages(start, len, writable)?,
            PagesSrc::File(key) => self.alloc_file_pages(key, start, len, writable)?,
            // io_pagetable.c, iopt_map_file_pages: "if (!length) return -EINVAL;",
            // "if (check_add_overflow(start, length - 1, &last)) return -EOVERFLOW;",
            // then "file = fget(fd); if (!file) return -EBADF;"
            PagesSrc::BadFile(e) => {
                if len == 0 {
                    return Err(Errno::EINVAL);
                }
                start.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
                return Err(e);
            }
        };
        self.map_pages(ioas, &[elm], len, place, access)
    }
}

/// The size of an open file (safe std calls only, as `SimFileKey::of`).
fn file_size(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let owned = fd.try_clone_to_owned().map_err(|e| Errno::from_io(&e))?;
    std::fs::File::from(owned)
        .metadata()
        .map(|m| m.len())
        .map_err(|e| Errno::from_io(&e))
}

/// Where MAP's pages come from.
enum PagesSrc {
    User,
    /// The file and its size.
    File((SimFileKey, u64)),
    /// The descriptor could not be inspected.
    BadFile(Errno),
}

impl HostBackend for SimIommufd {
    fn bind_device(&self, source: DeviceSource) -> HostResult<DevId> {
        self.run(HostOp::BindDevice, |s| s.bind(source)).map(DevId)
    }

    fn unbind_device(&self, dev: DevId) -> HostResult<()> {
        self.run(HostOp::UnbindDevice, |s| {
            s.let_go(dev.0, |h| &mut h.backend)
        })
    }

    fn hw_info(&self, dev: DevId) -> HostResult<HostInfo> {
        self.run(HostOp::GetHwInfo, |s| {
            let unit = s.dev(dev.0)?.unit;
            Ok(s.unit_info(unit).clone())
        })
    }

    fn ioas_alloc(&self) -> HostResult<IoasId> {
        self.run(HostOp::IoasAlloc, |s| {
            s.insert(Obj::Ioas(Default::default()))
        })
        .map(IoasId)
    }

    fn ioas_map(
        &self,
        ioas: IoasId,
        iova: IovaPlacement,
        src: MapSource<'_>,
        len: u64,
        access: Access,
    ) -> HostResult<Iova> {
        let (op, src) = match src {
            MapSource::UserVa(va) => (HostOp::IoasMap, (PagesSrc::User, va)),
            MapSource::File { fd, offset } => {
                let src = match (SimFileKey::of(fd), file_size(fd)) {
                    (Ok(key), Ok(size)) => PagesSrc::File((key, size)),
                    _ => PagesSrc::BadFile(Errno::EBADF),
                };
                (HostOp::IoasMapFile, (src, offset))
            }
        };
        self.run_journaled(op, |s| {
            let rc = s.map(ioas.0, iova, src, len, access);
            (rc.is_ok(), rc)
        })
        .map(Iova)
    }

    fn ioas_unmap(&self, ioas: IoasId, iova: Iova, len: u64) -> HostResult<u64> {
        self.run_journaled(HostOp::IoasUnmap, |s| {
            let (n, rc) = s.unmap(ioas.0, iova.0, len);
            (n > 0 || rc.is_ok(), rc)
        })
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
        self.run_journaled(HostOp::IoasCopy, |s| {
            let rc = (|| {
                // ioas.c, iommufd_ioas_copy: "if (cmd->length >= ULONG_MAX ||
                // cmd->src_iova >= ULONG_MAX || cmd->dst_iova >= ULONG_MAX) return -EOVERFLOW;"
                if src_iova.0 == u64::MAX {
                    return Err(Errno::EOVERFLOW);
                }
                ioas::check_map_args(dst_iova, len, access)?;
                let elms = s.get_pages(src.0, src_iova.0, len)?;
                s.ioas(dst.0)?;
                s.map_pages(dst.0, &elms, len, dst_iova, access)
            })();
            (rc.is_ok(), rc)
        })
        .map(Iova)
    }

    fn ioas_iova_ranges(&self, ioas: IoasId) -> HostResult<IovaRanges> {
        self.run(HostOp::IoasIovaRanges, |s| s.iova_ranges(ioas.0))
    }

    fn ioas_allow_iovas(&self, ioas: IoasId, ranges: &[IovaRange]) -> HostResult<()> {
        self.run(HostOp::IoasAllowIovas, |s| s.allow_iovas(ioas.0, ranges))
    }

    /// A request naming a fault queue is sent with
    /// `IOMMU_HWPT_FAULT_ID_VALID`, as the real backend sends it.
    fn hwpt_alloc(&self, req: &HwptAlloc) -> HostResult<HwptId> {
        let mut req = req.clone();
        if req.fault.is_some() {
            req.flags |= HwptFlags::FAULT_ID_VALID;
        }
        self.run(HostOp::HwptAlloc, |s| s.hwpt_alloc(&req))
            .map(HwptId)
    }

    fn hwpt_invalidate(
        &self,
        target: InvalidateTarget,
        batch: &InvalidationBatch,
    ) -> InvalidateOutcome {
        let op = HostOp::HwptInvalidate;
        let mut g = self.lock();
        if let Some(e) = g.enter(op) {
            return InvalidateOutcome {
                handled: 0,
                result: Err(HostError::new(op, e)),
            };
        }
        let raw = match target {
            InvalidateTarget::Hwpt(h) => h.0,
            InvalidateTarget::Viommu(v) => v.0,
        };
        let (handled, rc) = g.state.invalidate(raw, batch);
        g.invalidation_entries += u64::from(handled);
        InvalidateOutcome {
            handled,
            result: rc.map_err(|e| HostError::new(op, e)),
        }
    }

    fn hwpt_set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> HostResult<()> {
        self.run(HostOp::SetDirtyTracking, |s| {
            s.set_dirty_tracking(hwpt.0, enable)
        })
    }

    fn hwpt_get_dirty_bitmap(
        &self,
        hwpt: HwptId,
        range: IovaRange,
        page_size: u64,
        no_clear: bool,
    ) -> HostResult<BitVec<u64>> {
        self.run(HostOp::GetDirtyBitmap, |s| {
            s.dirty_bitmap(hwpt.0, range, page_size, no_clear)
        })
    }

    fn viommu_alloc(&self, dev: DevId, parent: HwptId, kind: ViommuType) -> HostResult<ViommuId> {
        self.run(HostOp::ViommuAlloc, |s| {
            s.viommu_alloc(dev.0, parent.0, kind)
        })
        .map(ViommuId)
    }

    fn vdevice_alloc(&self, viommu: ViommuId, dev: DevId, virt_id: u64) -> HostResult<VdeviceId> {
        self.run(HostOp::VdeviceAlloc, |s| {
            s.vdevice_alloc(viommu.0, dev.0, virt_id)
        })
        .map(VdeviceId)
    }

    fn veventq_alloc(
        &self,
        viommu: ViommuId,
        kind: VeventqType,
        depth: u32,
    ) -> HostResult<VeventqId> {
        self.run(HostOp::VeventqAlloc, |s| {
            s.veventq_alloc(viommu.0, kind, depth)
        })
        .map(VeventqId)
    }

    fn veventq_read(&self, q: VeventqId, max: usize) -> HostResult<Vec<VEvent>> {
        self.run(HostOp::VeventqRead, |s| {
            s.queue_open(q.0)?;
            s.veventq_read(q.0, max)
        })
    }

    fn fault_queue_alloc(&self) -> HostResult<FaultQueueId> {
        self.run(HostOp::FaultQueueAlloc, State::fault_queue_alloc)
            .map(FaultQueueId)
    }

    fn fault_read(&self, q: FaultQueueId) -> HostResult<Vec<FaultGroup>> {
        self.run(HostOp::FaultRead, |s| {
            s.queue_open(q.0)?;
            s.fault_read(q.0)
        })
    }

    fn fault_respond(&self, q: FaultQueueId, resp: PageResponse) -> HostResult<()> {
        self.run(HostOp::FaultRespond, |s| {
            s.queue_open(q.0)?;
            s.fault_respond(q.0, resp)
        })
    }

    fn attach(&self, dev: DevId, pasid: Option<Pasid>, pt: PtId) -> HostResult<()> {
        let p = pasid_raw(pasid);
        self.run_raw(
            |s| {
                if s.attachment(dev.0, p).is_some() {
                    HostOp::Replace
                } else {
                    HostOp::Attach
                }
            },
            |s| {
                let rc = s.attach(dev.0, p, pt);
                (rc.is_ok(), rc)
            },
        )
    }

    fn detach(&self, dev: DevId, pasid: Option<Pasid>) -> HostResult<()> {
        self.run(HostOp::Detach, |s| s.detach(dev.0, pasid_raw(pasid)))
    }

    /// As the real backend does, a vEVENTQ's or fault queue's file is
    /// closed before the destroy is tried: refused (EBUSY while a HWPT
    /// delivers to the queue), the queue stays but cannot be read or
    /// answered any more (ENOENT). Seen with the kernel test.
    fn destroy(&self, id: ObjectId) -> HostResult<()> {
        let queue = matches!(id, ObjectId::Veventq(_) | ObjectId::FaultQueue(_));
        if queue {
            let mut g = self.lock();
            if g.state.objects.contains_key(&id.raw()) {
                g.state.closed_queues.insert(id.raw());
            }
        }
        let r = self.run(HostOp::Destroy, |s| s.destroy(id.raw()));
        if queue && r.is_ok() {
            self.lock().state.closed_queues.remove(&id.raw());
        }
        r
    }
}
