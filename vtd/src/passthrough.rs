//! Passthrough devices of a VT-d unit, backed by the host's iommufd
//! through `nesting-core`'s passthrough registry
//! ([`nesting_core::passthrough::Registry`]).
//!
//! ```text
//!   guest MMIO -> Vtd::mmio_write -> invalidation descriptors -> VtdEvents
//!                                                                  |
//!        at each Invalidation Wait (and at the end of the write):  v
//!                          PassthroughBackend::sync -> Registry -> host
//!        only then: the wait's status write, ICS.IWC, its interrupt
//! ```
//!
//! The unit owns its backend ([`crate::Vtd::enable_passthrough`]), so a VMM
//! makes one call per guest access and the guest sees an invalidation
//! complete only after the host has it: before a wait descriptor
//! completes (and before a register-based invalidation clears IVT or
//! ICC), every host operation owed for the descriptors before it has
//! returned.
//!
//! - **Deciding.** [`crate::Vtd::add_passthrough`] decides with the ladder
//!   (the first device with [`ladder::decide`]; later ones must be backed
//!   the same way: a nested unit's devices each nest on their own merits,
//!   behind any host IOMMU, while a shadowing unit's must be able to share
//!   an IOAS, [`ladder::decide_hotplug`]) and backs the device at once.
//! - **Nested** (host VT-d with nesting, guest first-stage tables in
//!   scalable mode, `nested` module): each PASID entry the guest makes
//!   present, the RID_PASID entry for requests without PASID and every
//!   other PASID of the device's PASID table, becomes a nested context
//!   with the entry's FSPTPTR, address width and SRE/WPE/EAFE
//!   ([`crate::nesting::stage1_hwpt`]). Context and PASID-cache
//!   invalidations (6.5.2.1, 6.5.2.2; caching mode makes Linux send them
//!   for entries it makes present, 6.1) re-read the entries they cover.
//!   IOTLB and PASID-based IOTLB invalidations become stage-1
//!   invalidation entries, sent together at the next sync point (one
//!   `IOMMU_HWPT_INVALIDATE` per HWPT).
//! - **Shadow** (caching mode, 6.1, `shadowed` module): the guest
//!   invalidates after making entries present, so each IOTLB invalidation
//!   re-reads the range it names ([`crate::Vtd::table_view`]) into the
//!   shadow space of the address space it covers, all spaces in one plan
//!   at the sync point. Every requester is shadowed: the RID and each PASID
//!   with a present entry, in the space of its domain-id and tables
//!   ([`Space`]); pass-through entries and the RID with translation
//!   disabled go to identity (IOVA = GPA).
//! - **Host failures** become the architected errors, instead of the
//!   completion:
//!   - An invalidation the host did not carry out (a stage-1 invalidation
//!     the host failed, a shadow space it would not update) stops the
//!     queue at the wait descriptor that follows, which is not completed:
//!     FSTS.ITE with IQER.ITESID of the device (6.5.2.10: hardware aborts
//!     the pending waits and fetches nothing until software clears ITE).
//!     Linux's `qi_check_fault` clears ITE and submits its descriptors
//!     again, so a transient host failure is retried; the context whose
//!     invalidation failed is rebuilt first (a fresh HWPT caches nothing),
//!     so no stale host translation outlives the error. A requester the
//!     host refuses [`MAX_HOST_RETRIES`] times in a row is blocked with a
//!     fault instead, which ends the retries.
//!   - A register-based invalidation the host did not carry out completes
//!     with IAIG (or CAIG) 0, "not performed" (11.4 IOTLB_REG,
//!     CCMD_REG); Linux reports "Flush IOTLB failed".
//!   - An entry the host refuses to back (or that cannot nest: second-stage
//!     or nested PGTT on a nested unit), or a device it refuses to attach,
//!     leaves the requester blocked and records a fault for its entry
//!     (unless FPD), once per refusal.
//! - Not forwarded: faults the host IOMMU takes on a nested device's DMA
//!   (iommufd reports VT-d nested faults only as page requests, and the
//!   nested engine runs without IOPF), and device-TLB invalidations (the
//!   host kernel issues them with the IOTLB ones).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nesting_core::host::HostError;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::ladder::{self, Decision, DecisionKind, HostView};
use nesting_core::mem::ReadBudget;
use nesting_core::passthrough::{Backing, HostFailure, Place, Registry};
use nesting_core::ram::RamIoas;
use nesting_core::types::{Bdf, Pasid};
use thiserror::Error;
use vm_memory::GuestMemory;

mod nested;
mod shadowed;

pub use shadowed::{MAX_SHADOW_DOMAINS, Space, Stage};

use crate::Vtd;
use crate::fault::{FaultReason, FaultRecord};
use crate::nesting::VtdEvent;
use crate::options::VtdMode;
use crate::tables::{PASIDS_PER_TABLE, PasidDirEntry, PasidEntry, RootEntry, SmContextEntry};
use crate::translate::{Caps, legacy_context};

/// Most PASIDs one device may have backed, nested or shadowed: each costs a
/// host HWPT or attachment (kernel memory and a host PASID table entry),
/// and a guest filling a 2^20-entry PASID table must not make the VMM
/// allocate a million of them. PASIDs beyond it stay blocked (logged).
pub const MAX_NESTED_PASIDS_PER_DEVICE: usize = 1024;

/// Most enumeration rounds (each at most
/// [`crate::shadow::MAX_ENTRIES_PER_ENUMERATION`] table entries) one
/// invalidation range may take: 2^26 entries, more than a fully populated
/// 256 GiB of 4 KiB pages. Tables aliasing themselves can make a range look
/// larger; what is left over stays unmapped on the host (DMA there is
/// blocked, never let through) and is logged.
pub const MAX_ROUNDS_PER_RANGE: usize = 64;

/// Most mappings one sync point reads from the guest's tables for its
/// shadow spaces together: two shadow domains' worth
/// ([`nesting_core::shadow::MAX_GUEST_SPANS`] each, so a global
/// invalidation of a guest with full domains is read whole), and a bound
/// on the plan a sync point builds (a step of about 64 bytes each) however
/// the tables alias. Past it, the ranges left are unmapped on the host
/// (DMA there is blocked, never let through) and logged, as a truncated
/// range is.
pub const MAX_MAPPINGS_PER_SYNC: usize = 2 * nesting_core::shadow::MAX_GUEST_SPANS;

/// Consecutive sync points at which the host refused the work owed for the
/// same device before the backend stops reporting the failure as a retried
/// invalidation (FSTS.ITE) and blocks the device's requesters with a
/// fault: a guest's retry loop must end even when the host never recovers.
pub const MAX_HOST_RETRIES: u32 = 8;

/// Failure of the passthrough backend when a device is added (host
/// failures while the guest runs become guest-visible errors instead).
#[derive(Debug, Error)]
pub enum PassthroughError {
    /// The source-id already has a passthrough device.
    #[error("source-id {sid:#06x} is already a passthrough device")]
    Duplicate {
        /// Source-id.
        sid: u16,
    },
    /// The ladder refused the device; the decision says why.
    #[error("refused: {}", decision.reason)]
    Refused {
        /// The ladder's decision.
        decision: Box<Decision>,
    },
    /// Passthrough was not enabled on the unit
    /// ([`crate::Vtd::enable_passthrough`]).
    #[error("passthrough is not enabled on this unit")]
    NotEnabled,
    /// The host refused the device.
    #[error("host")]
    Host(#[from] HostFailure),
    /// The host would not take the mappings of the guest's tables for the
    /// device.
    #[error("the host refused to mirror the guest's tables for source-id {sid:#06x}")]
    MirrorRefused {
        /// Source-id.
        sid: u16,
    },
}

impl From<HostError> for PassthroughError {
    fn from(e: HostError) -> Self {
        PassthroughError::Host(e.into())
    }
}

/// The host did not carry out the work owed for `sid`'s requesters; the
/// invalidation that needed it must not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRefusal {
    /// Source-id of the device.
    pub sid: u16,
}

/// Totals since creation, for a VMM's statistics and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Faults recorded for host refusals (entries the host would not back).
    pub faults_reported: u64,
    /// Sync points whose host work failed: reported as FSTS.ITE (queued
    /// invalidation) or IAIG/CAIG 0 (register-based).
    pub invalidation_errors: u64,
    /// Devices blocked after [`MAX_HOST_RETRIES`] refusals in a row.
    pub gave_up: u64,
    /// Invalidation ranges left incomplete ([`MAX_ROUNDS_PER_RANGE`]).
    pub truncated_ranges: u64,
    /// `IOMMU_HWPT_INVALIDATE` calls made for nested devices.
    pub invalidate_calls: u64,
    /// Invalidation entries those calls carried that the host handled.
    pub invalidations: u64,
    /// Guest actions whose table reads passed
    /// [`crate::limits::MAX_SYNC_READS_PER_WRITE`].
    pub budget_exhausted: u64,
}

/// What a nested requester's guest entry says, for invalidation targeting
/// and fault records: the requester's place itself is the registry's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryTag {
    /// The guest PASID the entry is for (RID_PASID for the RID).
    pasid: u32,
    /// Domain-id of the PASID entry (what IOTLB invalidations name).
    did: u16,
    /// Fault processing disabled for it (9.4, 9.5, 9.6 FPD).
    fpd: bool,
    /// A present entry that cannot nest (the requester is blocked).
    cannot_nest: bool,
}

/// The passthrough devices of one VT-d unit and the host objects backing
/// them.
#[derive(Debug)]
pub struct PassthroughBackend {
    reg: Registry<Space>,
    /// The unit's decision once a device was accepted.
    kind: Option<DecisionKind>,
    /// Host views of the accepted devices (hot-plug decisions).
    views: BTreeMap<u16, HostView>,
    /// Nested requesters: what their guest entries say.
    tags: BTreeMap<(u16, Option<Pasid>), EntryTag>,
    /// Requesters refused with a fault already recorded: one fault per
    /// refusal, until the requester is backed or its entry goes.
    faulted: BTreeSet<(u16, Option<Pasid>)>,
    /// Consecutive refused sync points per device.
    refusals: BTreeMap<u16, u32>,
    /// Mappings the sync point under way may still read
    /// ([`MAX_MAPPINGS_PER_SYNC`]).
    map_room: usize,
    pub(crate) stats: BackendStats,
}

/// Logs a host failure with its source-id (the guest learns of it
/// through the architected error its caller reports).
fn warn_host(what: &str, sid: u16, e: &dyn std::error::Error) {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg += &format!(": {c}");
        cause = c.source();
    }
    nesting_core::guest_log!(Warn, "vtd passthrough {sid:#06x}: {what}: {msg}");
}

impl PassthroughBackend {
    /// A backend over the VM's iommufd and RAM IOAS.
    pub fn new(host: SharedHost, ram: Arc<RamIoas>) -> PassthroughBackend {
        let mut reg = Registry::new(host, ram);
        reg.set_max_spaces(MAX_SHADOW_DOMAINS);
        PassthroughBackend {
            reg,
            kind: None,
            views: BTreeMap::new(),
            tags: BTreeMap::new(),
            faulted: BTreeSet::new(),
            refusals: BTreeMap::new(),
            map_room: MAX_MAPPINGS_PER_SYNC,
            stats: BackendStats::default(),
        }
    }

    /// The unit's decision (nested or shadow), once a device was accepted.
    pub fn kind(&self) -> Option<DecisionKind> {
        self.kind
    }

    /// Totals since creation.
    pub fn stats(&self) -> BackendStats {
        self.stats
    }

    /// The registry: where each requester is, the shadow spaces, the
    /// nested engine.
    pub fn registry(&self) -> &Registry<Space> {
        &self.reg
    }

    /// The nested engine, when the unit nests.
    pub fn nested(&self) -> Option<&nesting_core::nested::NestedEngine> {
        self.reg.nested()
    }

    /// A shadow domain of a domain-id, when the unit shadows: the one
    /// with the lowest table root when PASIDs of the domain-id use
    /// several first-stage tables ([`Space`]).
    pub fn shadow_domain(&self, did: u16) -> Option<&nesting_core::shadow::ShadowDomain> {
        self.reg
            .spaces()
            .find(|(s, _)| s.did == did)
            .map(|(_, d)| d)
    }

    /// The shadow domain requests of `sid` with `pasid` (`None`: without
    /// PASID) go through, when they are shadowed into one.
    pub fn shadow_domain_of(
        &self,
        sid: u16,
        pasid: Option<u32>,
    ) -> Option<&nesting_core::shadow::ShadowDomain> {
        let key = match pasid {
            Some(p) => Some(Pasid::new(p)?),
            None => None,
        };
        match self.reg.place((u32::from(sid), key)) {
            Place::Shadow(s) => self.reg.space(&s),
            _ => None,
        }
    }

    /// The guest address spaces mirrored, with their shadow domains.
    pub fn shadow_domains(
        &self,
    ) -> impl Iterator<Item = (&Space, &nesting_core::shadow::ShadowDomain)> {
        self.reg.spaces()
    }

    /// Decides for the passthrough device `sid` and backs it, with the
    /// unit's tables as they are. A refused device is handed back.
    pub(crate) fn add_device<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
        device: BoundDevice,
        view: HostView,
    ) -> Result<Decision, (PassthroughError, BoundDevice)> {
        if self.reg.contains(u32::from(sid)) {
            return Err((PassthroughError::Duplicate { sid }, device));
        }
        self.map_room = MAX_MAPPINGS_PER_SYNC;
        let decision = self.decide(vtd, &view);
        if decision.kind == DecisionKind::Refuse {
            let decision = Box::new(decision);
            return Err((PassthroughError::Refused { decision }, device));
        }
        let backing = match decision.kind {
            DecisionKind::Nested => Backing::Nested,
            _ => Backing::Shadow,
        };
        if let Err((e, dev)) =
            self.reg
                .add_device(u32::from(sid), device, backing, &view, Place::Blocked)
        {
            return Err((e.into(), dev));
        }
        self.kind = Some(decision.kind);
        self.views.insert(sid, view);
        // The device sees what the guest's tables say at once; a refusal
        // of an entry is the guest's fault record, as later.
        match backing {
            Backing::Nested => self.rescan_nested(vtd, mem, sid),
            Backing::Shadow => {
                let mut dirty = shadowed::Dirty::new();
                self.reconcile(vtd, mem, sid, &mut dirty);
                if self.flush_shadow(vtd, mem, dirty).is_err() {
                    // Hot-plug fails cleanly rather than with a device
                    // missing mappings its guest made.
                    return match self.remove_device(sid) {
                        Some(dev) => Err((PassthroughError::MirrorRefused { sid }, dev)),
                        None => Ok(decision),
                    };
                }
            }
        }
        Ok(decision)
    }

    /// The passthrough devices' source-ids.
    fn sids(&self) -> Vec<u16> {
        self.views.keys().copied().collect()
    }

    fn decide(&self, vtd: &Vtd, view: &HostView) -> Decision {
        let guest = vtd.config();
        let mut decision = match self.kind {
            None => ladder::decide(guest, view),
            // Nested devices each get their own nested HWPTs (one stage-2
            // parent per host IOMMU): a device nests on its own merits,
            // behind whichever host IOMMU; one that cannot nest is refused
            // with the hot-plug rule's evidence, as the unit cannot mix.
            Some(DecisionKind::Nested) => {
                let own = ladder::decide(guest, view);
                if own.kind == DecisionKind::Nested {
                    own
                } else {
                    let existing: Vec<HostView> = self.views.values().cloned().collect();
                    ladder::decide_hotplug(guest, &existing, DecisionKind::Nested, view)
                }
            }
            // Any two devices may end up in one guest domain, whose shadow
            // IOAS they then share: the hot-plug rule checks that.
            Some(kind) => {
                let existing: Vec<HostView> = self.views.values().cloned().collect();
                ladder::decide_hotplug(guest, &existing, kind, view)
            }
        };
        if decision.kind == DecisionKind::Shadow {
            // What the host cannot attach of the guest's PASIDs (11.4.3
            // ECAP.PSS) stays blocked, with a fault per entry: stated with
            // the decision, as the device is still backed. PASIDs need a
            // scalable-mode root table (3.4.3, 9.2).
            let cfg = vtd.config();
            let guest_bits = match cfg.mode {
                VtdMode::Scalable => cfg.pasid_bits,
                VtdMode::Legacy => 0,
            };
            let c = shadowed::pasid_check(guest_bits, view);
            if !c.passed {
                decision.reason += &format!("; {}", c.detail);
            }
            decision.checks.push(c);
        }
        decision
    }

    /// Removes the passthrough device `sid` (hot-unplug): every PASID and
    /// the RID detached, its host objects destroyed, and the bound device
    /// handed back, blocked. `None` if `sid` is not a passthrough device
    /// or the host failed to let go of it (logged).
    pub(crate) fn remove_device(&mut self, sid: u16) -> Option<BoundDevice> {
        let dev = self.reg.remove_device(u32::from(sid));
        self.views.remove(&sid);
        self.tags.retain(|(s, _), _| *s != sid);
        self.faulted.retain(|(s, _)| *s != sid);
        self.refusals.remove(&sid);
        if self.views.is_empty() {
            // Nothing left to join: the next device is decided afresh.
            self.kind = None;
        }
        dev
    }

    /// Brings the host in line with `events` (the unit's, since the last
    /// sync point). `Err` names a device whose host work the host did not
    /// carry out: the invalidation that needed it must not complete.
    pub(crate) fn sync<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        events: &[VtdEvent],
    ) -> Result<(), HostRefusal> {
        if events.is_empty() {
            return Ok(());
        }
        self.map_room = MAX_MAPPINGS_PER_SYNC;
        let res = match self.kind {
            Some(DecisionKind::Nested) => self.sync_nested(vtd, mem, events),
            Some(DecisionKind::Shadow) => self.sync_shadow(vtd, mem, events),
            _ => Ok(()),
        };
        match res {
            Ok(()) => {
                self.refusals.clear();
                Ok(())
            }
            Err(r) => self.refused(vtd, mem, r),
        }
    }

    /// Counts a refused sync point; after [`MAX_HOST_RETRIES`] in a row
    /// for one device, blocks its requesters with a fault and reports
    /// success, so the guest's retries end.
    fn refused<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        r: HostRefusal,
    ) -> Result<(), HostRefusal> {
        self.stats.invalidation_errors += 1;
        let n = self.refusals.entry(r.sid).or_insert(0);
        *n += 1;
        if *n < MAX_HOST_RETRIES {
            return Err(r);
        }
        nesting_core::guest_log!(
            Error,
            "vtd passthrough {:#06x}: the host refused {MAX_HOST_RETRIES} times in a row; the device is blocked",
            r.sid
        );
        self.refusals.remove(&r.sid);
        self.stats.gave_up += 1;
        self.block_device(vtd, mem, r.sid);
        Ok(())
    }

    /// Blocks every requester of `sid` and records a fault for each.
    fn block_device<M: GuestMemory + ?Sized>(&mut self, vtd: &mut Vtd, mem: &M, sid: u16) {
        let ep = u32::from(sid);
        let mut keys: Vec<Option<Pasid>> = self
            .reg
            .requesters(ep)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.sort_by_key(|k| k.is_none());
        for key in keys {
            let plan = nesting_core::passthrough::Plan {
                steps: vec![nesting_core::passthrough::Step::Place {
                    req: (ep, key),
                    to: Place::Blocked,
                }],
            };
            if let Err(e) = self.reg.stage(&plan) {
                warn_host("blocking a device the host keeps refusing", sid, &e);
            }
            let pasid = key.map(Pasid::raw);
            let fpd = fpd_of(mem, vtd, sid, pasid);
            self.refusal_fault(vtd, sid, key, fpd);
        }
    }

    /// Records the fault of an entry the host refused to back, once per
    /// refusal (unless FPD: 9.3, 9.4, 9.5, 9.6, the unit then records no
    /// non-recoverable fault for it).
    fn refusal_fault(&mut self, vtd: &mut Vtd, sid: u16, key: Option<Pasid>, fpd: bool) {
        if !self.faulted.insert((sid, key)) {
            return;
        }
        if fpd {
            nesting_core::guest_log!(
                Debug,
                "vtd passthrough {sid:#06x} {key:?}: FPD set, no fault recorded"
            );
            return;
        }
        let rec = refusal_fault(sid, key.map(Pasid::raw), 0, entry_refused(vtd));
        vtd.report_fault(&rec);
        self.stats.faults_reported += 1;
    }
}

// ---------------------------------------------------------------------------
// The unit's side.

impl Vtd {
    /// Enables passthrough devices on the unit, over the VM's iommufd and
    /// its RAM IOAS. From then on the unit drives the host itself: every
    /// register write returns after the host work it caused, and no
    /// invalidation completes before the host has it.
    pub fn enable_passthrough(&mut self, host: SharedHost, ram: Arc<RamIoas>) {
        if self.passthrough.is_none() {
            self.passthrough = Some(Box::new(PassthroughBackend::new(host, ram)));
        }
    }

    /// Takes the passthrough device `sid` (bound to the VM's iommufd,
    /// `view` what the host said of it): decides with the ladder, and
    /// backs it at once as the unit's tables say. A refused device is
    /// handed back with the reason; fail the attach or hot-plug with it.
    pub fn add_passthrough<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sid: u16,
        device: BoundDevice,
        view: HostView,
    ) -> Result<Decision, (PassthroughError, BoundDevice)> {
        let Some(mut backend) = self.passthrough.take() else {
            return Err((PassthroughError::NotEnabled, device));
        };
        self.start_sync_budget();
        // Events the unit queued before are the host's to see first.
        let events = self.take_events();
        if let Err(r) = backend.sync(self, mem, &events) {
            log::warn!("vtd passthrough {:#06x}: earlier host work refused", r.sid);
        }
        let res = backend.add_device(self, mem, sid, device, view);
        self.passthrough = Some(backend);
        res
    }

    /// Removes the passthrough device `sid` (hot-unplug) and hands it back,
    /// blocked; `None` if it is not one, or the host did not let go of it
    /// (logged).
    pub fn remove_passthrough(&mut self, sid: u16) -> Option<BoundDevice> {
        self.passthrough.as_mut()?.remove_device(sid)
    }

    /// The passthrough backend, once enabled.
    pub fn passthrough(&self) -> Option<&PassthroughBackend> {
        self.passthrough.as_deref()
    }

    /// A sync point: the events queued since the last one go to the host
    /// now. `Err` names a device whose host work was not carried out.
    pub(crate) fn sync_host<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<(), HostRefusal> {
        let Some(mut backend) = self.passthrough.take() else {
            return Ok(());
        };
        let events = self.take_events();
        // What the sync reads of the guest's tables is bounded by the
        // action's budget, whatever the tables say: past it, reads fail
        // as unreadable memory does (requesters blocked, mappings not
        // mirrored: never more access than the guest gave).
        let budget = ReadBudget::shared(mem, self.sync_reads());
        let res = backend.sync(self, &budget, &events);
        if budget.refused() > 0 {
            backend.stats.budget_exhausted += 1;
            nesting_core::guest_log!(
                Warn,
                "vtd passthrough: the guest's tables take more than {} reads for one register write; {} reads refused, what they cover stays blocked",
                crate::limits::MAX_SYNC_READS_PER_WRITE,
                budget.refused()
            );
        }
        self.passthrough = Some(backend);
        res
    }
}

// ---------------------------------------------------------------------------
// Reading the guest's tables.

/// The scalable-mode context entry of `sid`, if present (9.2, 9.4).
fn sm_context<M: GuestMemory + ?Sized>(mem: &M, vtd: &Vtd, sid: u16) -> Option<SmContextEntry> {
    let (rta, ttm) = vtd.root_pointer();
    if ttm != 1 {
        return None;
    }
    let bdf = Bdf(sid);
    let half = RootEntry::read(mem, rta, bdf.bus())
        .ok()?
        .half_for(bdf.devfn());
    if !half.present() {
        return None;
    }
    let ctx = SmContextEntry::read(mem, half.ctp(), bdf.devfn()).ok()?;
    ctx.present().then_some(ctx)
}

/// The PASID the RID's requests use: RID_PASID of the scalable-mode
/// context entry (9.4).
fn rid_pasid<M: GuestMemory + ?Sized>(mem: &M, vtd: &Vtd, sid: u16) -> Option<u32> {
    sm_context(mem, vtd, sid).map(|c| c.rid_pasid())
}

/// The PASIDs (other than RID_PASID) whose PASID entries are present in
/// the device's PASID table (9.4 PASIDE and PDTS, 9.5, 9.6), at most
/// [`MAX_NESTED_PASIDS_PER_DEVICE`]. The directory has at most 2^14
/// entries (PDTS <= 7); each present one costs one 64-entry table.
fn pasids_in_use<M: GuestMemory + ?Sized>(mem: &M, vtd: &Vtd, sid: u16) -> Vec<u32> {
    let Some(ctx) = sm_context(mem, vtd, sid) else {
        return Vec::new();
    };
    if !ctx.paside() {
        return Vec::new();
    }
    let rid_pasid = ctx.rid_pasid();
    let dir = ctx.pasid_dir();
    let tables = ctx.max_pasids() / u64::from(PASIDS_PER_TABLE);
    let mut out = Vec::new();
    for t in (0..tables).filter_map(|t| u32::try_from(t).ok()) {
        if vtd.sync_reads_left() == 0 {
            // MAX_SYNC_READS_PER_WRITE: the PASIDs not read stay as they
            // are found (blocked when new).
            break;
        }
        let base = t * PASIDS_PER_TABLE;
        let Ok(d) = PasidDirEntry::read(mem, dir, base) else {
            continue;
        };
        if !d.present() {
            continue;
        }
        for pasid in base..base + PASIDS_PER_TABLE {
            let present = PasidEntry::read(mem, d.pasid_table(), pasid).is_ok_and(|e| e.present());
            if !present || pasid == rid_pasid {
                continue;
            }
            if out.len() == MAX_NESTED_PASIDS_PER_DEVICE {
                nesting_core::guest_log!(
                    Warn,
                    "vtd passthrough {sid:#06x}: more than {MAX_NESTED_PASIDS_PER_DEVICE} PASIDs; the rest stay blocked"
                );
                return out;
            }
            out.push(pasid);
        }
    }
    out
}

/// The domain-id the RID's translation of `sid` is tagged with: the
/// context entry's (legacy, 9.3) or the RID_PASID entry's (scalable,
/// 9.6).
fn rid_did<M: GuestMemory + ?Sized>(mem: &M, vtd: &Vtd, sid: u16) -> Option<u16> {
    let (rta, ttm) = vtd.root_pointer();
    if ttm == 0 {
        let caps = Caps::new(vtd.config());
        return legacy_context(mem, &caps, rta, sid).ok().map(|c| c.did());
    }
    vtd.pasid_entry(mem, Bdf(sid), None).map(|l| l.entry.did())
}

/// Whether the guest disabled fault recording for requests of `sid`
/// (with `pasid`): FPD of the context entry (9.3, legacy mode), or of the
/// context, PASID directory or PASID entry (9.4, 9.5, 9.6).
fn fpd_of<M: GuestMemory + ?Sized>(mem: &M, vtd: &Vtd, sid: u16, pasid: Option<u32>) -> bool {
    let (rta, ttm) = vtd.root_pointer();
    if ttm == 0 {
        let caps = Caps::new(vtd.config());
        return legacy_context(mem, &caps, rta, sid).is_ok_and(|c| c.fpd());
    }
    vtd.pasid_entry(mem, Bdf(sid), pasid).is_some_and(|l| l.fpd)
}

/// The fault record (7.2.1 primary fault logging) for requests of `sid`
/// that the host will refuse because it refused what the guest
/// programmed: `reason` names the guest structure it could not back.
fn refusal_fault(sid: u16, pasid: Option<u32>, address: u64, reason: FaultReason) -> FaultRecord {
    FaultRecord {
        source_id: sid,
        pasid,
        address,
        write: false,
        page_request: false,
        exec: false,
        privileged: false,
        reason,
    }
}

/// The reason of a fault recorded because the host refused to back the
/// entry the guest programmed: the context entry in legacy mode (0x3,
/// 9.3), the PASID entry in scalable mode (0x5B, 9.6: "programmed with a
/// value the unit does not support").
fn entry_refused(vtd: &Vtd) -> FaultReason {
    if vtd.root_pointer().1 == 1 {
        FaultReason::PasidEntryInvalid
    } else {
        FaultReason::ContextInvalid
    }
}
