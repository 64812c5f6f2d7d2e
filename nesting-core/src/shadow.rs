//! The shadow engine: a guest domain's IOVA -> GPA mappings mirrored into a
//! kernel-managed IOAS for the passthrough devices attached to it.
//!
//! - **Pin once.** Guest RAM is mapped once into the VM's RAM IOAS
//!   ([`RamIoas`], IOVA = GPA). Each shadow mapping is an `IOMMU_IOAS_COPY`
//!   out of it, so the kernel pins and accounts a page at most once however
//!   many domains and devices use it, and a guest that maps memory again
//!   costs no new pinning. Where the kernel refuses a COPY the engine falls
//!   back to a plain MAP of the same memory.
//! - **Batches.** Guest changes are staged ([`ShadowDomain::map`],
//!   [`ShadowDomain::unmap`]) and applied together at a sync point
//!   ([`ShadowDomain::sync`]): a virtio-iommu request, a VT-d invalidation.
//!   Runs contiguous in both IOVA and GPA become one host mapping.
//! - **Whole areas.** The kernel refuses an unmap that splits a mapping, so
//!   the engine keeps the host's runs: a guest unmap of part of a run
//!   unmaps the run and maps the remainder again.
//! - **Not RAM.** GPAs outside guest RAM (MMIO, BARs) are skipped with a
//!   warning and counted; never fatal.
//! - **Not mappable.** IOVAs the IOAS cannot hold (the attached devices'
//!   reserved regions, beyond their IOMMUs' aperture, as
//!   `IOMMU_IOAS_IOVA_RANGES` reports them) are skipped the same way: the
//!   devices cannot reach them, and a guest that maps there cannot wedge
//!   the domain with syncs the host refuses. When the devices change, the
//!   next sync reconsiders what was skipped under the old ranges.
//! - **Consistent on failure.** A host failure rolls the domain back to
//!   what it was before the sync (guest view and host IOAS), and returns a
//!   typed error the model turns into its architected error. If even the
//!   rollback fails, the IOAS is emptied (or, failing that, the devices are
//!   blocked) so a device can never reach memory the guest did not map, and
//!   the next sync rebuilds everything.
//! - **Devices.** Several devices share one domain's IOAS; a device joining
//!   gets the existing mappings; one leaving returns to blocking.
//! - **Identity.** With translation off (VT-d TE=0, virtio-iommu bypass) a
//!   device sees guest RAM at IOVA = GPA: the devices are re-attached to
//!   the RAM IOAS, and back, without re-mapping anything.

mod spans;

use std::os::fd::AsFd;
use std::sync::Arc;

use thiserror::Error;

pub use spans::{Keyed, PackedSpan, SortedChunks, Span, SpanMap, SpanRecord};

use std::collections::{BTreeMap, BTreeSet};

use crate::host::objects::{BoundDevice, Hwpt, Ioas, SharedHost};
use crate::host::{
    DevId, Errno, HostError, HwptAlloc, HwptData, HwptFlags, IoasId, IovaPlacement, MapSource, PtId,
};
use crate::ram::{RamBacking, RamIoas};
use crate::types::{Access, Gpa, Iova, Pasid};

/// Most guest mappings one domain may hold: a guest mapping 4 GiB in 4 KiB
/// pages, one by one, reaches this. Each costs host memory in the engine
/// and in the kernel, so a guest asking for more gets an out-of-memory
/// answer instead of growing the VMM without bound.
pub const MAX_GUEST_SPANS: usize = 1 << 20;

/// The smallest IOVA alignment the engine accepts: 4 KiB, the smallest
/// page of every IOMMU iommufd drives.
const MIN_ALIGNMENT: u64 = 4096;

/// Failure of a shadow domain operation.
#[derive(Debug, Error)]
pub enum ShadowError {
    /// A mapping or unmapping the host cannot express: empty, wrapping the
    /// address space, or not aligned to the host IOMMU's page size. Models
    /// check their own architected limits first; this is the backstop.
    #[error(
        "range at {iova:#x} of {len:#x} bytes (gpa {gpa:#x}) is empty, wraps or is not {align:#x}-aligned"
    )]
    BadRange {
        /// IOVA.
        iova: u64,
        /// GPA (0 for an unmap).
        gpa: u64,
        /// Length.
        len: u64,
        /// The host's IOVA alignment.
        align: u64,
    },
    /// The domain would exceed [`MAX_GUEST_SPANS`].
    #[error("more than {MAX_GUEST_SPANS} mappings in one domain")]
    TooManyMappings,
    /// The host ran out of memory or IOVA space (ENOMEM, ENOSPC).
    #[error("host out of memory")]
    NoMemory {
        /// The host's error.
        #[source]
        source: HostError,
    },
    /// Any other host failure.
    #[error("host failure")]
    Host {
        /// The host's error.
        #[source]
        source: HostError,
    },
}

impl ShadowError {
    fn from_host(source: HostError) -> ShadowError {
        if source.errno == Errno::ENOMEM || source.errno == Errno::ENOSPC {
            ShadowError::NoMemory { source }
        } else {
            ShadowError::Host { source }
        }
    }

    /// Whether the failure is a lack of memory (virtio-iommu `S_NOMEM`)
    /// rather than a device error (`S_DEVERR`).
    pub fn is_no_memory(&self) -> bool {
        matches!(
            self,
            ShadowError::NoMemory { .. } | ShadowError::TooManyMappings
        )
    }
}

/// What one [`ShadowDomain::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Host calls made (map, copy, unmap), rollback excluded.
    pub host_calls: u64,
    /// Host mappings created.
    pub mapped: u64,
    /// Host unmap calls.
    pub unmapped: u64,
    /// Bytes of guest mappings skipped because their GPAs are not RAM.
    pub skipped_bytes: u64,
    /// Bytes of guest mappings skipped because the IOAS cannot hold their
    /// IOVAs (reserved, or beyond the attached IOMMUs' aperture).
    pub unmappable_bytes: u64,
}

/// Totals over a domain's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Successful syncs.
    pub syncs: u64,
    /// Syncs that failed and were rolled back.
    pub failed_syncs: u64,
    /// Host calls made by syncs (rollback excluded).
    pub host_calls: u64,
    /// Bytes skipped because they were not RAM.
    pub skipped_bytes: u64,
    /// Bytes skipped because the IOAS could not hold their IOVAs.
    pub unmappable_bytes: u64,
    /// COPYs refused by the host and done as MAP instead.
    pub copy_fallbacks: u64,
}

#[derive(Clone, Copy, Debug)]
enum Staged {
    Map(Span),
    Unmap { first: u64, last: u64 },
}

impl Staged {
    fn range(&self) -> (u64, u64) {
        match *self {
            Staged::Map(s) => (s.first, s.last),
            Staged::Unmap { first, last } => (first, last),
        }
    }
}

/// A host change made during a sync, to undo on failure.
#[derive(Clone, Copy, Debug)]
enum Done {
    Unmapped(Span),
    Mapped(Span),
}

/// One guest domain's mappings in one host IOAS.
#[derive(Debug)]
pub struct ShadowDomain {
    host: SharedHost,
    ram: Arc<RamIoas>,
    /// Paging HWPTs allocated with `IOMMU_HWPT_ALLOC_PASID`, per IOAS (this
    /// domain's or, in identity mode, the RAM IOAS) and device: iommufd
    /// attaches a PASID only to such a HWPT, and once a device has PASIDs
    /// its RID must be on one too (`iommufd_hwpt_pasid_compat`,
    /// drivers/iommu/iommufd/device.c); the automatic domain of an IOAS
    /// attach is not. Declared before `ioas` so they are destroyed first.
    pasid_hwpts: BTreeMap<(IoasId, DevId), Hwpt>,
    /// Devices whose RID goes on their PASID-capable HWPT here even with
    /// no PASID in this domain: their PASIDs are attached elsewhere
    /// ([`ShadowDomain::attach_pasid_capable`]).
    pasid_devs: Vec<DevId>,
    ioas: Ioas,
    align: u64,
    /// The guest's mappings as of the last successful sync.
    guest: SpanMap,
    /// The host mappings, as installed (each one COPY or MAP), in packed
    /// records: a domain holds one per guest mapping mapped on its own.
    runs: SpanMap<PackedSpan>,
    staged: Vec<Staged>,
    devices: Vec<(DevId, Option<Pasid>)>,
    identity: bool,
    /// The host IOAS no longer matches `runs`: rebuild at the next sync.
    rebuild: bool,
    /// Devices were detached because the IOAS could not be cleaned.
    quarantined: bool,
    /// The IOVA ranges the IOAS can hold, inclusive and ascending, as the
    /// host reported them since its devices last changed (`None`: ask).
    usable: Option<Vec<(u64, u64)>>,
    /// The gaps between `usable` ranges in which guest mappings were
    /// skipped (whole gaps, so a few entries however many mappings).
    skipped_gaps: BTreeSet<(u64, u64)>,
    /// IOVA ranges the next sync reconsiders though the guest did not
    /// change them: skipped gaps, after the devices (and the ranges)
    /// changed.
    recheck: Vec<(u64, u64)>,
    stats: ShadowStats,
}

impl ShadowDomain {
    /// An empty domain with a new IOAS.
    pub fn new(host: &SharedHost, ram: &Arc<RamIoas>) -> Result<ShadowDomain, ShadowError> {
        let ioas = Ioas::alloc(host).map_err(ShadowError::from_host)?;
        let (align, usable) = Self::host_ranges(host, ioas.id())?;
        Ok(ShadowDomain {
            host: host.clone(),
            ram: ram.clone(),
            pasid_hwpts: BTreeMap::new(),
            pasid_devs: Vec::new(),
            ioas,
            align,
            guest: SpanMap::new(),
            runs: SpanMap::default(),
            staged: Vec::new(),
            devices: Vec::new(),
            identity: false,
            rebuild: false,
            quarantined: false,
            usable: Some(usable),
            skipped_gaps: BTreeSet::new(),
            recheck: Vec::new(),
            stats: ShadowStats::default(),
        })
    }

    /// The IOVA alignment the host requires of the IOAS: the largest page
    /// size of the attached devices' IOMMUs, and never less than 4 KiB
    /// (an IOAS without devices reports 1, but every IOMMU it may meet has
    /// pages of at least 4 KiB).
    /// With the IOVA ranges it can hold (inclusive, ascending).
    fn host_ranges(host: &SharedHost, ioas: IoasId) -> Result<(u64, Vec<(u64, u64)>), ShadowError> {
        let r = host
            .ioas_iova_ranges(ioas)
            .map_err(ShadowError::from_host)?;
        let usable = r
            .ranges
            .iter()
            .map(|r| (r.first.raw(), r.last.raw()))
            .collect();
        Ok((r.alignment.max(MIN_ALIGNMENT), usable))
    }

    /// The shadow IOAS.
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The guest's mappings as of the last successful sync.
    pub fn guest_mappings(&self) -> impl Iterator<Item = &Span> {
        self.guest.iter()
    }

    /// The host mappings the engine installed.
    pub fn host_runs(&self) -> impl Iterator<Item = Span> + '_ {
        self.runs.spans()
    }

    /// Totals over the domain's life.
    pub fn stats(&self) -> ShadowStats {
        self.stats
    }

    /// The devices (and PASIDs) attached.
    pub fn devices(&self) -> &[(DevId, Option<Pasid>)] {
        &self.devices
    }

    /// Whether devices see guest RAM at IOVA = GPA.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// The host's IOVA alignment (its IOMMU page size).
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn checked_range(&self, iova: Iova, gpa: u64, len: u64) -> Result<(u64, u64), ShadowError> {
        let bad = || ShadowError::BadRange {
            iova: iova.raw(),
            gpa,
            len,
            align: self.align,
        };
        let a = self.align - 1;
        if len == 0 || (iova.raw() | gpa | len) & a != 0 || gpa.checked_add(len - 1).is_none() {
            return Err(bad());
        }
        let last = iova.raw().checked_add(len - 1).ok_or_else(bad)?;
        Ok((iova.raw(), last))
    }

    /// Stages a guest mapping of `len` bytes from `iova` to `gpa`; it
    /// replaces whatever the guest had mapped there. Applied at the next
    /// [`ShadowDomain::sync`].
    pub fn map(
        &mut self,
        iova: Iova,
        gpa: Gpa,
        len: u64,
        access: Access,
    ) -> Result<(), ShadowError> {
        let (first, last) = self.checked_range(iova, gpa.raw(), len)?;
        self.staged.push(Staged::Map(Span {
            first,
            last,
            gpa: gpa.raw(),
            access: access & Access::RW,
        }));
        Ok(())
    }

    /// Stages the removal of every guest mapping inside `[iova, iova +
    /// len)`, splitting those that cross its ends (whether a split is
    /// allowed is the model's rule, not the engine's).
    pub fn unmap(&mut self, iova: Iova, len: u64) -> Result<(), ShadowError> {
        let (first, last) = self.checked_range(iova, 0, len)?;
        self.staged.push(Staged::Unmap { first, last });
        Ok(())
    }

    /// Stages the removal of every guest mapping.
    pub fn unmap_all(&mut self) {
        self.staged.push(Staged::Unmap {
            first: 0,
            last: u64::MAX,
        });
    }

    /// The guest mappings overlapping `[first, last]`, whole, as of the
    /// last successful sync.
    pub fn guest_overlapping(&self, first: u64, last: u64) -> Vec<Span> {
        self.guest.overlapping(first, last)
    }

    /// Drops the changes staged since the last sync.
    pub fn discard_staged(&mut self) {
        self.staged.clear();
    }

    /// Whether changes are staged.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty() || self.rebuild || !self.recheck.is_empty()
    }

    /// Applies the staged changes to the host IOAS. On failure the domain
    /// is as it was before: the staged changes are dropped, the guest view
    /// and the host IOAS unchanged.
    pub fn sync(&mut self) -> Result<SyncReport, ShadowError> {
        if !self.has_staged() {
            return Ok(SyncReport::default());
        }
        let staged = std::mem::take(&mut self.staged);
        let undo = match self.apply_to_guest(&staged) {
            Ok(u) => u,
            Err(e) => {
                self.stats.failed_syncs += 1;
                return Err(e);
            }
        };
        let dirty = if self.rebuild {
            vec![(0, u64::MAX)]
        } else {
            let ranges = staged.iter().map(Staged::range);
            merge(ranges.chain(self.recheck.iter().copied()).collect())
        };
        let mut report = SyncReport::default();
        let result = self
            .refresh_usable(&mut report)
            .and_then(|()| self.apply_to_host(&dirty, &mut report));
        self.stats.host_calls += report.host_calls;
        match result {
            Ok(()) => {
                self.stats.syncs += 1;
                self.stats.skipped_bytes += report.skipped_bytes;
                self.stats.unmappable_bytes += report.unmappable_bytes;
                self.recheck.clear();
                Ok(report)
            }
            Err(e) => {
                self.undo_guest(undo);
                self.stats.failed_syncs += 1;
                Err(e)
            }
        }
    }

    /// Applies staged changes to the guest view; returns how to undo them.
    fn apply_to_guest(
        &mut self,
        staged: &[Staged],
    ) -> Result<Vec<(Staged, Vec<Span>)>, ShadowError> {
        let mut undo = Vec::with_capacity(staged.len());
        for op in staged {
            let (first, last) = op.range();
            let before = self.guest.overlapping(first, last);
            match *op {
                Staged::Map(s) => self.guest.insert(s),
                Staged::Unmap { first, last } => self.guest.remove(first, last),
            }
            undo.push((*op, before));
            if self.guest.len() > MAX_GUEST_SPANS {
                self.undo_guest(undo);
                return Err(ShadowError::TooManyMappings);
            }
        }
        Ok(undo)
    }

    fn undo_guest(&mut self, undo: Vec<(Staged, Vec<Span>)>) {
        for (op, before) in undo.into_iter().rev() {
            let (first, last) = op.range();
            self.guest.remove(first, last);
            for s in before {
                self.guest.insert(s);
            }
        }
    }

    /// Asks the host which IOVAs the IOAS can hold, unless it already
    /// did since the devices last changed.
    fn refresh_usable(&mut self, report: &mut SyncReport) -> Result<(), ShadowError> {
        if self.usable.is_none() {
            report.host_calls += 1;
            let (_, usable) = Self::host_ranges(&self.host, self.ioas.id())?;
            self.usable = Some(usable);
        }
        Ok(())
    }

    /// The IOAS's devices (or their HWPTs) changed: its usable ranges may
    /// have too. Mappings skipped under the old ones are reconsidered at
    /// the next sync.
    fn devices_changed(&mut self) {
        self.usable = None;
        let gaps = std::mem::take(&mut self.skipped_gaps);
        self.recheck.extend(gaps);
    }

    /// Brings the host runs inside the dirty ranges in line with the guest
    /// view.
    fn apply_to_host(
        &mut self,
        dirty: &[(u64, u64)],
        report: &mut SyncReport,
    ) -> Result<(), ShadowError> {
        if self.rebuild {
            return self.rebuild_host(report);
        }
        // Old runs crossing a dirty range are replaced whole: the affected
        // area is the dirty ranges grown to the runs they touch.
        let mut affected = Vec::new();
        for &(first, last) in dirty {
            let runs = self.runs.overlapping(first, last);
            let f = runs.first().map_or(first, |r| r.first.min(first));
            let l = runs.last().map_or(last, |r| r.last.max(last));
            affected.push((f, l));
        }
        let affected = merge(affected);
        let mut old = Vec::new();
        let mut new = Vec::new();
        for &(first, last) in &affected {
            old.push(self.runs.overlapping(first, last));
            new.push(self.desired_runs(first, last, report));
        }
        let mut done = Vec::new();
        let res = self.replace_runs(&old, &new, &mut done, report);
        if let Err(e) = res {
            self.roll_back(done);
            return Err(e);
        }
        Ok(())
    }

    /// Unmaps `old` and installs `new`, area by area, skipping runs present
    /// in both.
    fn replace_runs(
        &mut self,
        old: &[Vec<Span>],
        new: &[Vec<Span>],
        done: &mut Vec<Done>,
        report: &mut SyncReport,
    ) -> Result<(), ShadowError> {
        for (old, new) in old.iter().zip(new) {
            for group in removal_groups(old, new) {
                let (Some(head), Some(tail)) = (group.first(), group.last()) else {
                    continue;
                };
                let (first, last) = (head.first, tail.last);
                report.host_calls += 1;
                report.unmapped += 1;
                self.host
                    .ioas_unmap(
                        self.ioas.id(),
                        Iova(first),
                        (last - first).saturating_add(1),
                    )
                    .map_err(ShadowError::from_host)?;
                for s in &group {
                    self.runs.take(s.first);
                    done.push(Done::Unmapped(*s));
                }
            }
            for s in minus(new, old) {
                self.install(&s, report)?;
                self.runs.insert(s);
                done.push(Done::Mapped(s));
            }
        }
        Ok(())
    }

    /// Maps one run: COPY from the RAM IOAS, or MAP of the same memory
    /// where the host refuses the COPY.
    fn install(&mut self, s: &Span, report: &mut SyncReport) -> Result<(), ShadowError> {
        report.host_calls += 1;
        report.mapped += 1;
        let copied = self.host.ioas_copy(
            self.ioas.id(),
            IovaPlacement::Fixed(Iova(s.first)),
            self.ram.ioas().id(),
            Iova(s.gpa),
            s.len(),
            s.access,
        );
        let e = match copied {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // Out of memory and "already mapped" are not a refusal of COPY
        // itself; a MAP would fail the same way.
        if [Errno::ENOMEM, Errno::ENOSPC, Errno::EEXIST].contains(&e.errno) {
            return Err(ShadowError::from_host(e));
        }
        let Some(region) = self.ram.ram().region_of(Gpa(s.gpa), s.len()) else {
            return Err(ShadowError::from_host(e));
        };
        let off = s.gpa - region.gpa.raw();
        crate::guest_log!(
            Debug,
            "IOAS_COPY of {:#x} refused ({e}); mapping it directly",
            s.gpa
        );
        self.stats.copy_fallbacks += 1;
        report.host_calls += 1;
        let place = IovaPlacement::Fixed(Iova(s.first));
        let res = match &region.backing {
            RamBacking::UserVa(va) => self.host.ioas_map(
                self.ioas.id(),
                place,
                MapSource::UserVa(va + off),
                s.len(),
                s.access,
            ),
            RamBacking::File { file, offset } => self.host.ioas_map(
                self.ioas.id(),
                place,
                MapSource::File {
                    fd: file.as_fd(),
                    offset: offset + off,
                },
                s.len(),
                s.access,
            ),
        };
        res.map(|_| ()).map_err(ShadowError::from_host)
    }

    /// The host runs the guest view calls for inside `[first, last]`:
    /// guest spans clipped to it, cut at RAM region ends, non-RAM parts
    /// skipped, and neighbours contiguous in IOVA and GPA joined.
    fn desired_runs(&mut self, first: u64, last: u64, report: &mut SyncReport) -> Vec<Span> {
        let mut out: Vec<Span> = Vec::new();
        for g in self.guest.overlapping(first, last) {
            let Some(g) = g.clip(first, last) else {
                continue;
            };
            let mut pieces = Vec::new();
            for p in self.ram_pieces(&g, report) {
                pieces.extend(self.usable_pieces(&p, report));
            }
            for piece in pieces {
                match out.last_mut() {
                    Some(prev)
                        if prev.continues_into(&piece)
                            && self
                                .ram
                                .ram()
                                .region_of(Gpa(prev.gpa), prev.len().saturating_add(piece.len()))
                                .is_some() =>
                    {
                        prev.last = piece.last;
                    }
                    _ => out.push(piece),
                }
            }
        }
        out
    }

    /// `span` cut into the parts whose IOVAs the IOAS can hold
    /// ([`Self::refresh_usable`]; all of it if the ranges are unknown).
    fn usable_pieces(&mut self, span: &Span, report: &mut SyncReport) -> Vec<Span> {
        let Some(usable) = &self.usable else {
            return vec![*span];
        };
        let mut out = Vec::new();
        let mut kept = 0u64;
        let start = usable.partition_point(|&(_, last)| last < span.first);
        for &(first, last) in &usable[start..] {
            if first > span.last {
                break;
            }
            let (f, l) = (first.max(span.first), last.min(span.last));
            kept = kept.saturating_add((l - f).saturating_add(1));
            out.push(Span {
                first: f,
                last: l,
                gpa: span.gpa + (f - span.first),
                access: span.access,
            });
        }
        let lost = span.len().saturating_sub(kept);
        if lost != 0 {
            crate::guest_log!(
                Warn,
                "guest maps iova {:#x}..={:#x}, which the host IOAS cannot hold (reserved or beyond the IOMMU's aperture): {lost:#x} bytes not mirrored",
                span.first,
                span.last
            );
            report.unmappable_bytes += lost;
            let gaps = gaps_of(usable);
            let touched = gaps
                .into_iter()
                .filter(|&(f, l)| f <= span.last && span.first <= l);
            self.skipped_gaps.extend(touched);
        }
        out
    }

    /// `span` cut into the parts whose GPAs are RAM, one per RAM region.
    fn ram_pieces(&self, span: &Span, report: &mut SyncReport) -> Vec<Span> {
        let ram = self.ram.ram();
        let gpa_last = span.gpa + (span.last - span.first);
        let mut out = Vec::new();
        let mut at = span.gpa;
        loop {
            let (end, is_ram) = match ram.region_of(Gpa(at), 1) {
                Some(r) => ((r.gpa.raw() + (r.len - 1)).min(gpa_last), true),
                None => {
                    let next = ram
                        .regions()
                        .iter()
                        .find(|r| r.gpa.raw() > at)
                        .map_or(gpa_last, |r| (r.gpa.raw() - 1).min(gpa_last));
                    (next, false)
                }
            };
            let piece = Span {
                first: span.first + (at - span.gpa),
                last: span.first + (end - span.gpa),
                gpa: at,
                access: span.access,
            };
            if is_ram {
                out.push(piece);
            } else {
                crate::guest_log!(
                    Warn,
                    "guest maps iova {:#x}..={:#x} to gpa {at:#x}, which is not RAM: not mirrored to the host",
                    piece.first,
                    piece.last
                );
                report.skipped_bytes += piece.len();
            }
            if end >= gpa_last {
                break;
            }
            at = end + 1;
        }
        out
    }

    /// Undoes the host changes of a failed sync. If that fails too, the IOAS
    /// is emptied (or the devices blocked) and rebuilt at the next sync.
    fn roll_back(&mut self, done: Vec<Done>) {
        let mut scratch = SyncReport::default();
        for d in done.into_iter().rev() {
            let ok = match d {
                Done::Mapped(s) => {
                    self.runs.take(s.first);
                    self.host
                        .ioas_unmap(self.ioas.id(), Iova(s.first), s.len())
                        .is_ok()
                }
                Done::Unmapped(s) => {
                    let ok = self.install(&s, &mut scratch).is_ok();
                    if ok {
                        self.runs.insert(s);
                    }
                    ok
                }
            };
            if !ok {
                crate::guest_log!(Error, "shadow rollback failed; emptying the IOAS");
                self.empty_host();
                return;
            }
        }
    }

    /// Removes every host mapping; if even that fails, blocks the devices.
    /// Either way the next sync rebuilds from the guest view.
    fn empty_host(&mut self) {
        self.rebuild = true;
        match self.host.ioas_unmap(self.ioas.id(), Iova(0), u64::MAX) {
            Ok(_) => self.runs = SpanMap::default(),
            Err(e) if e.errno == Errno::ENOENT => self.runs = SpanMap::default(),
            Err(e) => {
                crate::guest_log!(
                    Error,
                    "cannot empty shadow IOAS ({e}); blocking its devices"
                );
                for &(dev, pasid) in &self.devices {
                    if let Err(e) = self.host.detach(dev, pasid) {
                        crate::guest_log!(Error, "cannot block {dev}: {e}");
                    }
                }
                self.quarantined = true;
            }
        }
    }

    /// Rebuilds the whole IOAS from the guest view (after a failed
    /// rollback).
    fn rebuild_host(&mut self, report: &mut SyncReport) -> Result<(), ShadowError> {
        report.host_calls += 1;
        match self.host.ioas_unmap(self.ioas.id(), Iova(0), u64::MAX) {
            Ok(_) => {}
            Err(e) if e.errno == Errno::ENOENT => {}
            Err(e) => return Err(ShadowError::from_host(e)),
        }
        self.runs = SpanMap::default();
        if self.quarantined {
            // Back on the (now empty) IOAS first: their reserved regions
            // and aperture decide what it can hold.
            let identity = self.identity;
            let devices = self.devices.clone();
            for (i, &(dev, pasid)) in devices.iter().enumerate() {
                let back = self.target_for(dev, pasid, identity).and_then(|pt| {
                    self.host
                        .attach(dev, pasid, pt)
                        .map_err(ShadowError::from_host)
                });
                if let Err(e) = back {
                    // Still quarantined: every device stays blocked, so
                    // those already back are blocked again.
                    for &(d, p) in &devices[..i] {
                        if let Err(e) = self.host.detach(d, p) {
                            crate::guest_log!(Error, "cannot block {d} again: {e}");
                        }
                    }
                    return Err(e);
                }
            }
            self.quarantined = false;
            self.usable = None;
            self.refresh_usable(report)?;
        }
        for s in self.desired_runs(0, u64::MAX, report) {
            if let Err(e) = self.install(&s, report) {
                self.empty_host();
                return Err(e);
            }
            self.runs.insert(s);
        }
        self.rebuild = false;
        Ok(())
    }

    fn target_ioas(&self, identity: bool) -> IoasId {
        if identity {
            self.ram.ioas().id()
        } else {
            self.ioas.id()
        }
    }

    /// What `(dev, pasid)` attaches to: the IOAS (its automatic domain)
    /// while the device uses no PASID in this domain, else the device's
    /// PASID-capable HWPT over that IOAS, allocated on first use.
    fn target_for(
        &mut self,
        dev: DevId,
        pasid: Option<Pasid>,
        identity: bool,
    ) -> Result<PtId, ShadowError> {
        let ioas = self.target_ioas(identity);
        let has_pasids = pasid.is_some()
            || self.pasid_devs.contains(&dev)
            || self.devices.iter().any(|(d, p)| *d == dev && p.is_some());
        if !has_pasids {
            return Ok(PtId::Ioas(ioas));
        }
        if let Some(h) = self.pasid_hwpts.get(&(ioas, dev)) {
            return Ok(PtId::Hwpt(h.id()));
        }
        let req = HwptAlloc {
            dev,
            parent: PtId::Ioas(ioas),
            flags: HwptFlags::PASID,
            fault: None,
            data: HwptData::None,
        };
        let h = Hwpt::alloc(&self.host, &req).map_err(ShadowError::from_host)?;
        let id = h.id();
        self.pasid_hwpts.insert((ioas, dev), h);
        Ok(PtId::Hwpt(id))
    }

    /// Attaches a device (or one of its PASIDs) to this domain, replacing
    /// whatever it was attached to: it sees the domain's mappings at once.
    /// If the host refuses (the device cannot share this IOAS, e.g. its
    /// reserved regions collide with existing mappings), nothing the guest
    /// sees changes. The first PASID of a device also moves its RID (if in
    /// this domain) to the device's PASID-capable HWPT over the same IOAS,
    /// as iommufd requires.
    pub fn attach(
        &mut self,
        dev: &mut BoundDevice,
        pasid: Option<Pasid>,
    ) -> Result<(), ShadowError> {
        if self.quarantined {
            // The IOAS is not trustworthy until rebuilt. The guest's staged
            // changes are not part of that: they wait for their own sync
            // point (the model's), and stay staged whatever happens here.
            let staged = std::mem::take(&mut self.staged);
            let rebuilt = self.sync();
            self.staged = staged;
            rebuilt?;
        }
        let res = self.attach_inner(dev, pasid);
        self.devices_changed();
        if res.is_ok() {
            // A device behind an IOMMU with larger pages raises the
            // alignment (the kernel refused the attach if existing mappings
            // break it); its reserved regions and aperture narrow what the
            // IOAS can hold.
            match Self::host_ranges(&self.host, self.ioas.id()) {
                Ok((align, usable)) => {
                    self.align = align;
                    self.usable = Some(usable);
                }
                Err(e) => {
                    crate::guest_log!(Warn, "cannot read the IOAS's ranges after attach: {e}")
                }
            }
        }
        res
    }

    fn attach_inner(
        &mut self,
        dev: &mut BoundDevice,
        pasid: Option<Pasid>,
    ) -> Result<(), ShadowError> {
        let id = dev.id();
        let identity = self.identity;
        let pt = self.target_for(id, pasid, identity)?;
        let rid_here = self.devices.contains(&(id, None));
        if pasid.is_some() && rid_here && matches!(pt, PtId::Hwpt(_)) {
            // Same IOAS, so the same mappings: the device sees no change.
            self.host
                .attach(id, None, pt)
                .map_err(ShadowError::from_host)?;
        }
        dev.attach(pasid, pt).map_err(ShadowError::from_host)?;
        if !self.devices.contains(&(id, pasid)) {
            self.devices.push((id, pasid));
        }
        Ok(())
    }

    /// [`ShadowDomain::attach`] for a device that has (or will have)
    /// PASIDs attached in other domains: its RID, too, goes on its
    /// PASID-capable HWPT over this domain's IOAS, which iommufd requires
    /// of a device's RID domain while any of its PASIDs is attached
    /// (`iommufd_hwpt_pasid_compat`, drivers/iommu/iommufd/device.c).
    /// Called for a RID already here, it moves it onto that HWPT (same
    /// IOAS, so the device sees no change). The device keeps the HWPT
    /// here until it leaves the domain.
    pub fn attach_pasid_capable(
        &mut self,
        dev: &mut BoundDevice,
        pasid: Option<Pasid>,
    ) -> Result<(), ShadowError> {
        let id = dev.id();
        let marked = self.pasid_devs.contains(&id);
        if !marked {
            self.pasid_devs.push(id);
        }
        let res = self.attach(dev, pasid);
        if res.is_err() && !marked && !self.devices.iter().any(|(d, _)| *d == id) {
            self.pasid_devs.retain(|d| *d != id);
            self.pasid_hwpts.retain(|(_, d), _| *d != id);
            self.devices_changed();
        }
        res
    }

    /// Detaches a device from this domain, leaving it blocked.
    pub fn detach(
        &mut self,
        dev: &mut BoundDevice,
        pasid: Option<Pasid>,
    ) -> Result<(), ShadowError> {
        if self.devices.contains(&(dev.id(), pasid)) {
            let res = dev.detach(pasid);
            if let Err(e) = res {
                self.devices_changed();
                return Err(ShadowError::from_host(e));
            }
        }
        self.forget(dev.id(), pasid);
        Ok(())
    }

    /// Forgets a device that another domain has taken over (its attach
    /// already replaced this one's on the host).
    pub fn forget(&mut self, dev: DevId, pasid: Option<Pasid>) {
        self.devices.retain(|d| *d != (dev, pasid));
        if !self.devices.iter().any(|(d, _)| *d == dev) {
            self.pasid_hwpts.retain(|(_, d), _| *d != dev);
            self.pasid_devs.retain(|d| *d != dev);
        }
        self.devices_changed();
    }

    /// Switches the devices between the RAM IOAS (identity: IOVA = GPA)
    /// and the shadow IOAS by re-attaching them; the mappings stay in
    /// place. On a host failure the devices already switched are switched
    /// back, and those that cannot be are blocked.
    pub fn set_identity(&mut self, on: bool) -> Result<(), ShadowError> {
        if on == self.identity {
            return Ok(());
        }
        let res = self.switch_identity(on);
        self.devices_changed();
        res
    }

    fn switch_identity(&mut self, on: bool) -> Result<(), ShadowError> {
        self.identity = on;
        if self.quarantined {
            return Ok(());
        }
        let devices = self.devices.clone();
        for (i, &(dev, pasid)) in devices.iter().enumerate() {
            let res = self.target_for(dev, pasid, on).and_then(|pt| {
                self.host
                    .attach(dev, pasid, pt)
                    .map_err(ShadowError::from_host)
            });
            if let Err(e) = res {
                for &(d, p) in &devices[..i] {
                    let back = self
                        .target_for(d, p, !on)
                        .and_then(|pt| self.host.attach(d, p, pt).map_err(ShadowError::from_host));
                    if let Err(e) = back {
                        // Left where it was switched to, the device would
                        // see memory the guest did not give it (all of RAM,
                        // when identity was being turned on): block it.
                        crate::guest_log!(Error, "cannot switch {d} back: {e}; blocking it");
                        if let Err(e) = self.host.detach(d, p) {
                            crate::guest_log!(Error, "cannot block {d} either: {e}");
                        }
                    }
                }
                self.identity = !on;
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The inclusive ranges between ascending, disjoint inclusive `ranges`
/// (before the first and after the last included).
fn gaps_of(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = Some(0u64);
    for &(first, last) in ranges {
        if let Some(n) = next
            && n < first
        {
            out.push((n, first - 1));
        }
        next = last.checked_add(1);
    }
    if let Some(n) = next {
        out.push((n, u64::MAX));
    }
    out
}

/// Sorted, merged (overlapping or adjacent) inclusive ranges.
fn merge(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (f, l) in v {
        match out.last_mut() {
            Some(prev) if prev.1 == u64::MAX || f <= prev.1 + 1 => prev.1 = prev.1.max(l),
            _ => out.push((f, l)),
        }
    }
    out
}

/// The spans of `a` not in `b` (both ascending and disjoint).
fn minus(a: &[Span], b: &[Span]) -> Vec<Span> {
    let mut j = 0;
    let mut out = Vec::new();
    for s in a {
        while j < b.len() && b[j].first < s.first {
            j += 1;
        }
        if b.get(j) != Some(s) {
            out.push(*s);
        }
    }
    out
}

/// The runs of `old` that `new` does not keep, grouped into maximal
/// sequences that are consecutive in `old`: one unmap call covers a group,
/// since no kept run lies between its members (runs are disjoint and
/// `old` holds every run of the affected area).
fn removal_groups(old: &[Span], new: &[Span]) -> Vec<Vec<Span>> {
    let kept = minus(old, &minus(old, new));
    let mut k = 0;
    let mut groups: Vec<Vec<Span>> = Vec::new();
    let mut open = false;
    for s in old {
        while k < kept.len() && kept[k].first < s.first {
            k += 1;
        }
        if kept.get(k) == Some(s) {
            open = false;
            continue;
        }
        match groups.last_mut() {
            Some(g) if open => g.push(*s),
            _ => groups.push(vec![*s]),
        }
        open = true;
    }
    groups
}
