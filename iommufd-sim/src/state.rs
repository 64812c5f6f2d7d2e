//! The simulated iommufd context: one object table (the kernel's
//! `ictx->objects` xarray), the physical IOMMU units and devices, and the
//! attachments of devices and PASIDs.
//!
//! Every operation runs on a clone of [`State`] that is committed only when
//! the operation succeeds (see `SimIommufd::run`), so the rollback paths of
//! the kernel never need to be written out here. Map and unmap calls,
//! whose cost must not grow with the number of mappings, run on a clone of
//! everything but the IOAS areas and journal their area changes instead
//! (`SimIommufd::run_journaled`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use nesting_core::host::info::HostInfo;
use nesting_core::host::{Errno, HwptData, HwptFlags, PageFault, PtId, VeventqType, ViommuType};
use nesting_core::types::{Access, IovaRange};

use super::SimFileKey;
use crate::profile::SimHostSpec;

/// Kernel `PAGE_SIZE` of a host whose units all use 4 KiB pages.
pub(super) const DEFAULT_PAGE_SIZE: u64 = 4096;

/// `xa_limit_31b`: object IDs are positive 31-bit numbers
/// (drivers/iommu/iommufd/main.c, `_iommufd_object_alloc`).
const MAX_OBJECT_ID: u32 = i32::MAX as u32;

/// One physical IOMMU unit.
#[derive(Clone, Debug)]
pub(super) struct Unit {
    pub spec: SimHostSpec,
}

/// A device behind a unit, as `add_device` created it.
#[derive(Clone, Debug)]
pub(super) struct PhysDev {
    pub unit: u32,
    /// Object ID while bound.
    pub bound: Option<u32>,
    /// Who holds the bound device's file open: the binding lasts until
    /// neither does.
    pub holders: Holders,
}

/// Who holds a bound device's VFIO file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Holders {
    /// The backend: it bound the device, or adopted the owner's binding
    /// (`DeviceSource::Bound`).
    pub backend: bool,
    /// The VMM's own VFIO code (`SimIommufd::bind_as_owner`), as
    /// vfio-ioctls binds the cdev devices it opens.
    pub owner: bool,
}

/// Who owns a reserved IOVA range of an IOAS (`iopt_reserved.owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// The aperture of a domain (HWPT ID), `iopt_table_add_domain`.
    Domain(u32),
    /// The reserved regions of a device (device object ID),
    /// `iopt_table_enforce_dev_resv_regions`.
    Dev(u32),
}

/// What an `iopt_pages` pins: user memory or a file, from a page-aligned
/// base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PagesBase {
    /// `pages->uptr`, page aligned.
    User(u64),
    /// `pages->file` and `pages->start`, page aligned.
    File(SimFileKey, u64),
}

/// An `iopt_area`: one mapping of an IOAS, a slice of an `iopt_pages`.
#[derive(Clone, Debug)]
pub(super) struct Area {
    pub iova: u64,
    pub len: u64,
    /// Identity of the `iopt_pages` (shared by IOAS_COPY).
    pub pages: u64,
    pub base: PagesBase,
    /// `pages->writable`.
    pub writable: bool,
    /// Byte offset of the first byte inside the pages object.
    pub start_byte: u64,
    pub access: Access,
    /// File size for a file-backed `iopt_pages` (see `PagesElm`).
    pub file_size: Option<u64>,
}

impl Area {
    pub fn last(&self) -> u64 {
        self.iova + (self.len - 1)
    }

    pub fn range(&self) -> IovaRange {
        IovaRange {
            first: self.iova.into(),
            last: self.last().into(),
        }
    }
}

/// `area_itree`: an IOAS's areas keyed by first IOVA. Reads go through
/// `Deref`; the two changes, [`Areas::insert`] and [`Areas::remove`], are
/// journaled so that a failed map or unmap call is undone in place
/// instead of running on a copy of every IOAS (`SimIommufd::run_journaled`).
#[derive(Clone, Debug, Default)]
pub(super) struct Areas {
    map: BTreeMap<u64, Area>,
    /// Each change of the current call: the key and what it held before.
    journal: Vec<(u64, Option<Area>)>,
}

impl std::ops::Deref for Areas {
    type Target = BTreeMap<u64, Area>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl Areas {
    /// Inserts `area` at `iova` (journaled).
    pub fn insert(&mut self, iova: u64, area: Area) {
        let old = self.map.insert(iova, area);
        self.journal.push((iova, old));
    }

    /// Removes the area at `iova` (journaled).
    pub fn remove(&mut self, iova: &u64) -> Option<Area> {
        let old = self.map.remove(iova);
        if let Some(a) = &old {
            self.journal.push((*iova, Some(a.clone())));
        }
        old
    }

    /// Undoes the journaled changes, newest first.
    fn undo(&mut self) {
        while let Some((iova, old)) = self.journal.pop() {
            match old {
                Some(a) => self.map.insert(iova, a),
                None => self.map.remove(&iova),
            };
        }
    }
}

/// `struct iommufd_ioas` with its `io_pagetable`.
#[derive(Clone, Debug, Default)]
pub(super) struct Ioas {
    /// `area_itree`, keyed by first IOVA.
    pub areas: Areas,
    /// `allowed_itree`.
    pub allowed: Vec<IovaRange>,
    /// `reserved_itree`.
    pub reserved: Vec<(Owner, IovaRange)>,
    /// `iopt->domains`: paging HWPT IDs, in insertion order.
    pub domains: Vec<u32>,
}

/// Which page-table format a paging domain got from its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// VT-d first stage or SMMUv3 stage 1 (PASID capable).
    First,
    /// VT-d second stage or SMMUv3 stage 2 (may be a nesting parent).
    Second,
    /// An IOMMU without hardware information.
    Generic,
}

/// `struct iommufd_hwpt_paging`.
#[derive(Clone, Debug)]
pub(super) struct Paging {
    pub ioas: u32,
    pub unit: u32,
    pub flags: HwptFlags,
    pub auto_domain: bool,
    pub stage: Stage,
    pub fault: Option<u32>,
    pub dirty_enabled: bool,
    /// Dirty kernel pages (IOVA of each page).
    pub dirty: BTreeSet<u64>,
}

/// `struct iommufd_hwpt_nested`.
#[derive(Clone, Debug)]
pub(super) struct Nested {
    /// The NEST_PARENT paging HWPT.
    pub parent: u32,
    /// The vIOMMU it was allocated on (SMMUv3).
    pub viommu: Option<u32>,
    pub unit: u32,
    pub flags: HwptFlags,
    pub data: HwptData,
    pub fault: Option<u32>,
}

/// `struct iommufd_viommu`.
#[derive(Clone, Debug)]
pub(super) struct Viommu {
    pub hwpt: u32,
    pub unit: u32,
    pub kind: ViommuType,
    /// `viommu->vdevs`: virt_id -> vDEVICE ID.
    pub vdevs: BTreeMap<u64, u32>,
}

/// `struct iommufd_vdevice`.
#[derive(Clone, Debug)]
pub(super) struct Vdevice {
    pub viommu: u32,
    pub dev: u32,
    pub virt_id: u64,
}

/// One node of a vEVENTQ's deliver list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum QItem {
    Event { sequence: u32, data: Vec<u8> },
    Lost { sequence: u32 },
}

/// `struct iommufd_veventq`.
#[derive(Clone, Debug)]
pub(super) struct Veventq {
    pub viommu: u32,
    pub kind: VeventqType,
    pub depth: u32,
    pub deliver: VecDeque<QItem>,
    pub num_events: u32,
    pub sequence: u32,
}

/// An `iopf_group` on its way to user space.
#[derive(Clone, Debug)]
pub(super) struct Group {
    /// The attach handle it was raised on.
    pub handle: u64,
    pub faults: Vec<PageFault>,
}

/// `struct iommufd_fault`.
#[derive(Clone, Debug, Default)]
pub(super) struct FaultQ {
    pub deliver: VecDeque<Group>,
    /// `fault->response`: groups read and waiting for an answer.
    pub response: BTreeMap<u32, Group>,
}

/// `struct iommufd_device`.
#[derive(Clone, Debug)]
pub(super) struct DevObj {
    pub phys: u32,
    pub unit: u32,
    pub vdev: Option<u32>,
    pub next_grpid: u32,
}

/// Everything that can sit in the object table.
#[derive(Clone, Debug)]
pub(super) enum Obj {
    Device(DevObj),
    Ioas(Ioas),
    Paging(Paging),
    Nested(Nested),
    Viommu(Viommu),
    Vdevice(Vdevice),
    Veventq(Veventq),
    Fault(FaultQ),
    /// `XA_ZERO_ENTRY` left by `iommufd_object_tombstone_user` (a vDEVICE
    /// destroyed by its device's unbind): the ID is never reused.
    Tombstone,
}

/// One device or PASID attachment (`igroup->pasid_attach`; every device is
/// its own group here).
#[derive(Clone, Debug)]
pub(super) struct Attach {
    pub hwpt: u32,
    /// What the caller asked for (an IOAS for automatic domains).
    pub requested: PtId,
    /// Identity of the `iommufd_attach_handle`.
    pub handle: u64,
}

/// The whole simulated context.
#[derive(Clone, Debug, Default)]
pub(super) struct State {
    pub units: Vec<Unit>,
    pub devices: Vec<PhysDev>,
    pub objects: BTreeMap<u32, Obj>,
    /// (device object ID, PASID; 0 = `IOMMU_NO_PASID`) -> attachment.
    pub attach: BTreeMap<(u32, u32), Attach>,
    pub next_pages: u64,
    pub next_handle: u64,
    /// The simulated kernel is built without CONFIG_TRANSPARENT_HUGEPAGE.
    pub no_thp: bool,
    /// vEVENTQs and fault queues whose file the backend closed for a
    /// destroy the kernel refused: they can no longer be read or answered.
    pub closed_queues: std::collections::BTreeSet<u32>,
}

/// Looks up an object of one type, with `iommufd_get_object`'s answer for
/// a missing ID or another type: ENOENT.
macro_rules! getter {
    ($get:ident, $get_mut:ident, $variant:ident, $ty:ty) => {
        pub fn $get(&self, id: u32) -> Result<&$ty, Errno> {
            match self.objects.get(&id) {
                Some(Obj::$variant(o)) => Ok(o),
                _ => Err(Errno::ENOENT),
            }
        }

        pub fn $get_mut(&mut self, id: u32) -> Result<&mut $ty, Errno> {
            match self.objects.get_mut(&id) {
                Some(Obj::$variant(o)) => Ok(o),
                _ => Err(Errno::ENOENT),
            }
        }
    };
}

impl State {
    getter!(dev, dev_mut, Device, DevObj);
    getter!(ioas, ioas_mut, Ioas, Ioas);
    getter!(paging, paging_mut, Paging, Paging);
    getter!(viommu, viommu_mut, Viommu, Viommu);
    getter!(fault, fault_mut, Fault, FaultQ);

    pub fn veventq_mut(&mut self, id: u32) -> Result<&mut Veventq, Errno> {
        match self.objects.get_mut(&id) {
            Some(Obj::Veventq(q)) => Ok(q),
            _ => Err(Errno::ENOENT),
        }
    }

    /// The kernel's `PAGE_SIZE`. A unit whose smallest page is larger than
    /// 4 KiB only exists on a kernel built with that page size (the SMMUv3
    /// driver picks the CPU's granule first), so the simulated kernel uses
    /// the largest unit page size.
    pub fn page_size(&self) -> u64 {
        self.units
            .iter()
            .map(|u| u.spec.page_size)
            .fold(DEFAULT_PAGE_SIZE, u64::max)
    }

    /// ENOENT for a queue whose file the backend has closed (see
    /// `closed_queues`), as the backend's descriptor table answers.
    pub fn queue_open(&self, id: u32) -> Result<(), Errno> {
        if self.closed_queues.contains(&id) {
            return Err(Errno::ENOENT);
        }
        Ok(())
    }

    /// `HPAGE_SIZE`: one page-table page of pages (2 MiB with 4 KiB pages).
    pub fn hpage_size(&self) -> u64 {
        let p = self.page_size();
        p.saturating_mul(p / 8)
    }

    /// The largest alignment automatic IOVA allocation uses
    /// (io_pagetable.c, `iopt_alloc_iova`: `max_alignment = PAGE_SIZE`,
    /// raised to `HPAGE_SIZE` under CONFIG_TRANSPARENT_HUGEPAGE).
    pub fn max_iova_alignment(&self) -> u64 {
        if self.no_thp {
            self.page_size()
        } else {
            self.hpage_size()
        }
    }

    pub fn unit_info(&self, unit: u32) -> &HostInfo {
        &self.units[unit as usize].spec.info
    }

    pub fn unit_spec(&self, unit: u32) -> &SimHostSpec {
        &self.units[unit as usize].spec
    }

    /// `xa_alloc` on an `XA_FLAGS_ALLOC1` xarray: the lowest free ID from 1.
    pub fn alloc_id(&self) -> Result<u32, Errno> {
        let mut want = 1u32;
        for &id in self.objects.keys() {
            if id != want {
                break;
            }
            want = want.checked_add(1).ok_or(Errno::ENOSPC)?;
        }
        if want > MAX_OBJECT_ID {
            return Err(Errno::ENOSPC);
        }
        Ok(want)
    }

    pub fn insert(&mut self, obj: Obj) -> Result<u32, Errno> {
        let id = self.alloc_id()?;
        self.objects.insert(id, obj);
        Ok(id)
    }

    pub fn new_handle(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }

    pub fn new_pages(&mut self) -> u64 {
        self.next_pages += 1;
        self.next_pages
    }

    /// The paging HWPT behind a paging or nested HWPT
    /// (iommufd_private.h, `find_hwpt_paging`).
    pub fn find_hwpt_paging(&self, hwpt: u32) -> Option<u32> {
        match self.objects.get(&hwpt) {
            Some(Obj::Paging(_)) => Some(hwpt),
            Some(Obj::Nested(n)) => Some(n.parent),
            _ => None,
        }
    }

    pub fn hwpt_pasid_compat(&self, hwpt: u32) -> bool {
        match self.objects.get(&hwpt) {
            Some(Obj::Paging(p)) => p.flags.contains(HwptFlags::PASID),
            Some(Obj::Nested(n)) => n.flags.contains(HwptFlags::PASID),
            _ => false,
        }
    }

    pub fn hwpt_fault(&self, hwpt: u32) -> Option<u32> {
        match self.objects.get(&hwpt) {
            Some(Obj::Paging(p)) => p.fault,
            Some(Obj::Nested(n)) => n.fault,
            _ => None,
        }
    }

    /// Whether anything holds a reference on object `id` besides the
    /// object table (`refcount_dec_if_one(&obj->users)` failing in
    /// `iommufd_object_remove`, drivers/iommu/iommufd/main.c).
    pub fn in_use(&self, id: u32) -> bool {
        let referenced_by = |o: &Obj| match o {
            // hwpt_paging holds its IOAS; a fault queue is held by HWPTs.
            Obj::Paging(p) => p.ioas == id || p.fault == Some(id),
            // A nested HWPT holds its vIOMMU, else its parent.
            Obj::Nested(n) => n.viommu.map_or(n.parent == id, |v| v == id) || n.fault == Some(id),
            Obj::Viommu(v) => v.hwpt == id,
            Obj::Vdevice(v) => v.viommu == id,
            Obj::Veventq(q) => q.viommu == id,
            _ => false,
        };
        matches!(self.objects.get(&id), Some(Obj::Device(_)))
            || self.attach.values().any(|a| a.hwpt == id)
            || self.objects.values().any(referenced_by)
    }

    /// `iommufd_object_remove` for `IOMMU_DESTROY`: by raw ID, whatever
    /// the object's type.
    pub fn destroy(&mut self, id: u32) -> Result<(), Errno> {
        match self.objects.get(&id) {
            None | Some(Obj::Tombstone) => return Err(Errno::ENOENT),
            Some(_) if self.in_use(id) => return Err(Errno::EBUSY),
            Some(_) => {}
        }
        let Some(obj) = self.objects.remove(&id) else {
            return Err(Errno::ENOENT);
        };
        self.release(id, obj);
        Ok(())
    }

    /// The object's `destroy` op: undoes what it did to others.
    fn release(&mut self, id: u32, obj: Obj) {
        match obj {
            // iommufd_hwpt_paging_destroy -> iopt_table_remove_domain.
            Obj::Paging(p) => self.remove_domain(p.ioas, id),
            // iommufd_vdevice_abort.
            Obj::Vdevice(v) => {
                if let Ok(vi) = self.viommu_mut(v.viommu) {
                    vi.vdevs.remove(&v.virt_id);
                }
                if let Ok(d) = self.dev_mut(v.dev) {
                    d.vdev = None;
                }
            }
            _ => {}
        }
    }

    /// Destroys an automatic domain once nothing uses it
    /// (`iommufd_hw_pagetable_put` -> `iommufd_object_put_and_try_destroy`).
    pub fn put_hwpt(&mut self, hwpt: u32) {
        let auto = matches!(self.objects.get(&hwpt), Some(Obj::Paging(p)) if p.auto_domain);
        if auto
            && !self.in_use(hwpt)
            && let Some(obj) = self.objects.remove(&hwpt)
        {
            self.release(hwpt, obj);
        }
    }

    /// `iopt_table_remove_domain`: the domain's aperture reservations go;
    /// the alignment is recomputed from the remaining domains.
    pub fn remove_domain(&mut self, ioas: u32, hwpt: u32) {
        if let Ok(io) = self.ioas_mut(ioas) {
            io.domains.retain(|d| *d != hwpt);
            io.reserved.retain(|(o, _)| *o != Owner::Domain(hwpt));
        }
    }

    /// `iopt->iova_alignment` (io_pagetable.c, `iopt_calculate_iova_alignment`):
    /// 1 for an IOAS without domains ("SW tables ... have no alignment
    /// restriction", `iopt_init_table`), else the largest smallest page size
    /// of its domains.
    pub fn iova_alignment(&self, ioas: &Ioas) -> u64 {
        ioas.domains
            .iter()
            .filter_map(|d| self.paging(*d).ok())
            .map(|p| self.unit_spec(p.unit).page_size)
            .fold(1, u64::max)
    }

    /// Pages pinned, as `iopt_pages->npinned` counts them: an `iopt_pages`
    /// pins each of its pages once, for every area of it that sits in an
    /// IOAS with at least one domain (pages.c, `pfn_reader_user_pin`;
    /// io_pagetable.c, `iopt_fill_domain`). IOASes without domains keep
    /// only a lazy reference (`iopt_map_user_pages` kernel-doc).
    pub fn pinned_pages(&self) -> u64 {
        let page = self.page_size();
        let mut spans: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for obj in self.objects.values() {
            let Obj::Ioas(io) = obj else { continue };
            if io.domains.is_empty() {
                continue;
            }
            for a in io.areas.values() {
                let first = a.start_byte / page;
                let last = (a.start_byte + (a.len - 1)) / page;
                spans.entry(a.pages).or_default().push((first, last));
            }
        }
        spans.into_values().map(union_len).sum()
    }

    /// The attachment of `(dev, pasid)`.
    pub fn attachment(&self, dev: u32, pasid: u32) -> Option<&Attach> {
        self.attach.get(&(dev, pasid))
    }
}

impl State {
    /// The IOASes' areas, by IOAS ID, taken out of the state.
    fn take_areas(&mut self) -> BTreeMap<u32, Areas> {
        self.objects
            .iter_mut()
            .filter_map(|(id, o)| match o {
                Obj::Ioas(io) => Some((*id, std::mem::take(&mut io.areas))),
                _ => None,
            })
            .collect()
    }

    /// Puts areas taken out by [`State::take_areas`] back into the IOASes
    /// of the same IDs.
    fn put_areas(&mut self, mut areas: BTreeMap<u32, Areas>) {
        for (id, o) in self.objects.iter_mut() {
            if let (Obj::Ioas(io), Some(a)) = (o, areas.remove(id)) {
                io.areas = a;
            }
        }
    }

    /// A copy of everything but the IOAS areas (left empty): what
    /// [`State::roll_back`] restores after a failed journaled call.
    pub fn without_areas(&mut self) -> State {
        let areas = self.take_areas();
        let copy = self.clone();
        self.put_areas(areas);
        copy
    }

    /// Undoes the area changes journaled since [`State::without_areas`]
    /// made `saved`, and restores everything else from it. The call must
    /// not have created or destroyed an IOAS.
    pub fn roll_back(&mut self, saved: State) {
        let mut areas = self.take_areas();
        areas.values_mut().for_each(Areas::undo);
        *self = saved;
        self.put_areas(areas);
    }

    /// Ends a call: its area changes stay.
    pub fn forget_journals(&mut self) {
        for o in self.objects.values_mut() {
            if let Obj::Ioas(io) = o {
                io.areas.journal.clear();
            }
        }
    }
}

/// Number of integers covered by a set of inclusive spans.
fn union_len(mut spans: Vec<(u64, u64)>) -> u64 {
    spans.sort_unstable();
    let mut total = 0;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in spans {
        cur = match cur {
            Some((s, e)) if a <= e.saturating_add(1) => Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s + 1;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((s, e)) = cur {
        total += e - s + 1;
    }
    total
}
