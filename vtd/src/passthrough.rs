//! Passthrough devices of a VT-d unit backed by the host's iommufd through
//! `nesting-core`'s engines: the layer a VMM owns next to the [`Vtd`]
//! model.
//!
//! ```text
//!   guest MMIO -> Vtd::mmio_write -> VtdEvent queue
//!                                        |
//!                    PassthroughBackend::process (after every write)
//!                      nested: PASID entries -> NestedEngine contexts,
//!                              IOTLB events  -> stage-1 invalidations
//!                      shadow: IOTLB events  -> table_view -> ShadowDomain
//! ```
//!
//! - [`PassthroughBackend::add_device`] decides with the ladder (the first
//!   device with [`ladder::decide`]; later ones must be backed the same
//!   way: a nested unit's devices each nest on their own, behind any host
//!   IOMMU, while a shadowing unit's must be able to share an IOAS,
//!   [`ladder::decide_hotplug`]) and keeps the device; the host
//!   attach happens at the next [`PassthroughBackend::process`], which a
//!   VMM calls once before the guest runs and after every register write.
//! - **Nested** (host VT-d with nesting, guest first-stage tables in
//!   scalable mode): each PASID entry the guest makes present, the
//!   RID_PASID entry for requests without PASID and every other PASID of
//!   the device's PASID table, becomes a nested HWPT with the entry's
//!   FSPTPTR, address width and SRE/WPE/EAFE
//!   ([`crate::nesting::stage1_hwpt`]). Context and PASID-cache
//!   invalidations are when the guest tells the unit an entry changed
//!   (6.5.2.1, 6.5.2.2; caching mode makes Linux send them for entries
//!   it makes present, 6.1), so those events re-read the entries they
//!   cover. IOTLB and PASID-based IOTLB invalidations become stage-1
//!   invalidation entries, sent once per [`PassthroughBackend::process`]
//!   (one `IOMMU_HWPT_INVALIDATE` per HWPT).
//! - **Shadow** (caching mode, 6.1): the guest invalidates after making
//!   entries present, so each IOTLB invalidation re-reads the range it
//!   names ([`Vtd::table_view`]) and stages the result into the
//!   [`ShadowDomain`] of the address space it covers; domain-selective and
//!   global invalidations re-read whole spaces. Every requester is
//!   shadowed: the RID (first- or second-stage tables of RID_PASID in
//!   scalable mode, the context's in legacy mode) and each PASID with a
//!   present entry (PGTT first-stage, second-stage or pass-through), each
//!   attached for itself to the shadow domain of its domain-id and tables
//!   ([`Space`]: requesters with the same ones share it); pass-through
//!   entries and translation disabled attach to the RAM IOAS (IOVA =
//!   GPA). Once a device has a PASID attached, its RID is on a
//!   PASID-capable HWPT too, as iommufd requires; PASIDs the host cannot
//!   attach stay blocked with a fault. Details in the `shadowed` module.
//! - **Host failures** become the architected errors: an entry the host
//!   refuses to nest (or that cannot nest: second-stage or nested PGTT),
//!   or a device it refuses to attach, leaves the device (PASID) blocked
//!   and records a fault for it (unless FPD; a shadowed requester once
//!   per refusal, until it is attached or its entry goes); an invalidation the host
//!   fails sets FSTS.ICE with the source-id, and the context is rebuilt so
//!   no stale host translation survives; a shadow sync the host fails
//!   records a fault for the domain's devices at the first address of
//!   the failed change.
//! - Not forwarded: faults the host IOMMU takes on a nested device's DMA
//!   (iommufd reports VT-d nested faults only as page requests, and the
//!   nested engine runs without IOPF), and device-TLB invalidations
//!   (the host kernel issues them with the IOTLB ones).

use std::collections::BTreeMap;
use std::sync::Arc;

use nesting_core::host::HostError;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::ladder::{self, Decision, DecisionKind, HostView};
use nesting_core::nested::{NestedConfig, NestedContext, NestedEngine, NestedError};
use nesting_core::ram::RamIoas;
use nesting_core::shadow::{ShadowDomain, ShadowError};
use nesting_core::types::{Bdf, Pasid};
use thiserror::Error;
use vm_memory::GuestMemory;

mod shadowed;

use shadowed::{At, ShadowDev};
pub use shadowed::{MAX_SHADOW_DOMAINS, Space, Stage};

use crate::Vtd;
use crate::fault::{FaultReason, FaultRecord};
use crate::model::function_siblings;
use crate::nesting::{
    ContextScope, IotlbScope, PasidScope, VtdEvent, stage1_hwpt, stage1_invalidation,
};
use crate::options::VtdMode;
use crate::shadow::{MIN_BUDGET, TableView};
use crate::tables::{
    FPD, P, PASIDS_PER_TABLE, PTR, PasidDirEntry, PasidEntry, Pgtt, RootEntry, SmContextEntry,
};
use crate::translate::{Caps, legacy_context};

/// Most PASIDs one device may have backed, nested or shadowed: each costs a
/// host HWPT or attachment (kernel memory and a host PASID table entry),
/// and a guest filling a 2^20-entry PASID table must not make the VMM
/// allocate a million of them. PASIDs beyond it stay blocked (logged).
pub const MAX_NESTED_PASIDS_PER_DEVICE: usize = 1024;

/// Most enumeration rounds (each at most
/// [`crate::shadow::MAX_ENTRIES_PER_ENUMERATION`] table entries) one
/// invalidation range may take: 2^26 entries, more than a fully populated 256 GiB of 4 KiB
/// pages. Tables aliasing themselves can make a range look larger; what
/// is left over stays unmapped on the host (DMA there is blocked, never
/// let through) and is logged.
pub const MAX_ROUNDS_PER_RANGE: usize = 64;

/// Failure of the passthrough backend ([`PassthroughBackend::add_device`]
/// returns it; host failures while processing become guest-visible
/// errors instead).
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
    /// The host refused an attach or detach.
    #[error("host")]
    Host(#[from] HostError),
    /// The shadow engine failed.
    #[error("shadow engine")]
    Shadow(#[from] ShadowError),
    /// The unit already has [`MAX_SHADOW_DOMAINS`] shadow domains.
    #[error("more than {MAX_SHADOW_DOMAINS} shadow domains")]
    TooManyDomains,
}

/// Shadow domains with staged changes in one [`PassthroughBackend::process`]
/// call, with the lowest address staged (for fault records).
type Dirty = BTreeMap<Space, u64>;

/// Logs a host failure with its source-id (the guest learns of it
/// through the architected error its caller reports).
fn warn_host(what: &str, sid: u16, e: &dyn std::error::Error) {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg += &format!(": {c}");
        cause = c.source();
    }
    log::warn!("vtd passthrough {sid:#06x}: {what}: {msg}");
}

/// A context installed for one PASID (or the RID) of a nested device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    ctx: NestedContext,
    /// The guest PASID the entry is for (RID_PASID for the RID).
    pasid: u32,
    /// Domain-id of the PASID entry (what IOTLB invalidations name).
    did: u16,
    /// Fault processing disabled for it (9.4, 9.5, 9.6 FPD).
    fpd: bool,
    /// A present entry that cannot nest (`ctx` is then Abort).
    cannot_nest: bool,
}

/// Totals since creation, for a VMM's statistics and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Faults recorded for host refusals (install, attach, sync).
    pub faults_reported: u64,
    /// Invalidation failures reported as FSTS.ICE.
    pub invalidation_errors: u64,
    /// Invalidation ranges left incomplete ([`MAX_ROUNDS_PER_RANGE`]).
    pub truncated_ranges: u64,
}

/// The passthrough devices of one VT-d unit and the host objects backing
/// them.
#[derive(Debug)]
pub struct PassthroughBackend {
    host: SharedHost,
    ram: Arc<RamIoas>,
    /// The unit's decision once a device was accepted.
    kind: Option<DecisionKind>,
    /// Host views of the accepted devices (hot-plug decisions).
    views: BTreeMap<u16, HostView>,
    /// Devices accepted and not yet attached.
    pending: BTreeMap<u16, BoundDevice>,
    /// Devices the host would not let the engine take: bound, attached
    /// to nothing (blocked), until removed.
    parked: BTreeMap<u16, BoundDevice>,
    nested: Option<NestedEngine>,
    /// Nested devices: their installed contexts.
    nest_devs: BTreeMap<u16, BTreeMap<Option<Pasid>, Installed>>,
    shadow_devs: BTreeMap<u16, ShadowDev>,
    /// Shadow domains by the guest address space they mirror.
    domains: BTreeMap<Space, ShadowDomain>,
    stats: BackendStats,
}

impl PassthroughBackend {
    /// A backend over the VM's iommufd and RAM IOAS.
    pub fn new(host: SharedHost, ram: Arc<RamIoas>) -> PassthroughBackend {
        PassthroughBackend {
            host,
            ram,
            kind: None,
            views: BTreeMap::new(),
            pending: BTreeMap::new(),
            parked: BTreeMap::new(),
            nested: None,
            nest_devs: BTreeMap::new(),
            shadow_devs: BTreeMap::new(),
            domains: BTreeMap::new(),
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

    /// The nested engine, when the unit nests.
    pub fn nested(&self) -> Option<&NestedEngine> {
        self.nested.as_ref()
    }

    /// A shadow domain of a domain-id, when the unit shadows: the one
    /// with the lowest table root when PASIDs of the domain-id use
    /// several first-stage tables ([`Space`]).
    pub fn shadow_domain(&self, did: u16) -> Option<&ShadowDomain> {
        self.domains
            .iter()
            .find(|(s, _)| s.did == did)
            .map(|(_, d)| d)
    }

    /// The shadow domain requests of `sid` with `pasid` (`None`: without
    /// PASID) go through, when they are shadowed into one.
    pub fn shadow_domain_of(&self, sid: u16, pasid: Option<u32>) -> Option<&ShadowDomain> {
        let key = match pasid {
            Some(p) => Some(Pasid::new(p)?),
            None => None,
        };
        match self.shadow_devs.get(&sid)?.at.get(&key)? {
            At::Domain(s) => self.domains.get(s),
            At::Ram | At::Blocked => None,
        }
    }

    /// The guest address spaces mirrored, with their shadow domains.
    pub fn shadow_domains(&self) -> impl Iterator<Item = (&Space, &ShadowDomain)> {
        self.domains.iter()
    }

    /// Takes the passthrough device `sid`: decides with the ladder for the
    /// unit of `vtd` and keeps the device; it is attached at the next
    /// [`PassthroughBackend::process`]. A refused device is handed back
    /// with [`PassthroughError::Refused`].
    pub fn add_device(
        &mut self,
        vtd: &Vtd,
        sid: u16,
        device: BoundDevice,
        view: HostView,
    ) -> Result<Decision, (PassthroughError, BoundDevice)> {
        if self.pending.contains_key(&sid)
            || self.parked.contains_key(&sid)
            || self.nest_devs.contains_key(&sid)
            || self.shadow_devs.contains_key(&sid)
        {
            return Err((PassthroughError::Duplicate { sid }, device));
        }
        let guest = vtd.config();
        let decision = match self.kind {
            None => ladder::decide(guest, &view),
            // Nested devices each get their own nested HWPTs (one stage-2
            // parent per host IOMMU): a device nests on its own merits,
            // behind whichever host IOMMU; one that cannot nest is refused
            // with the hot-plug rule's evidence, as the unit cannot mix.
            Some(DecisionKind::Nested) => {
                let own = ladder::decide(guest, &view);
                if own.kind == DecisionKind::Nested {
                    own
                } else {
                    let existing: Vec<HostView> = self.views.values().cloned().collect();
                    ladder::decide_hotplug(guest, &existing, DecisionKind::Nested, &view)
                }
            }
            // Any two devices may end up in one guest domain, whose
            // shadow IOAS they then share: the hot-plug rule checks that.
            Some(kind) => {
                let existing: Vec<HostView> = self.views.values().cloned().collect();
                ladder::decide_hotplug(guest, &existing, kind, &view)
            }
        };
        if decision.kind == DecisionKind::Refuse {
            let decision = Box::new(decision);
            return Err((PassthroughError::Refused { decision }, device));
        }
        let mut decision = decision;
        if decision.kind == DecisionKind::Shadow {
            // What the host cannot attach of the guest's PASIDs (11.4.3
            // ECAP.PSS) stays blocked, with a fault per entry: stated
            // with the decision, as the device is still backed.
            // ECAP.PASID without SMTS gives no PASIDs: requests with
            // PASID need a scalable-mode root table (3.4.3, 9.2).
            let cfg = vtd.config();
            let guest_bits = match cfg.mode {
                VtdMode::Scalable => cfg.pasid_bits,
                VtdMode::Legacy => 0,
            };
            let c = shadowed::pasid_check(guest_bits, &view);
            if !c.passed {
                decision.reason += &format!("; {}", c.detail);
            }
            decision.checks.push(c);
        }
        self.kind = Some(decision.kind);
        self.views.insert(sid, view);
        self.pending.insert(sid, device);
        Ok(decision)
    }

    /// Removes the passthrough device `sid` (hot-unplug): every PASID and
    /// the RID detached, its host objects destroyed, and the bound device
    /// handed back, blocked. `None` if `sid` is not a passthrough device
    /// or the host failed to let go of it (logged).
    pub fn remove_device(&mut self, sid: u16) -> Option<BoundDevice> {
        let dev = self.take_device(sid);
        self.views.remove(&sid);
        if self.views.is_empty() {
            // Nothing left to join: the next device is decided afresh.
            self.kind = None;
        }
        dev
    }

    fn take_device(&mut self, sid: u16) -> Option<BoundDevice> {
        if let Some(dev) = self.pending.remove(&sid) {
            return Some(dev);
        }
        if let Some(dev) = self.parked.remove(&sid) {
            return Some(dev);
        }
        if self.nest_devs.remove(&sid).is_some() {
            let engine = self.nested.as_mut()?;
            return match engine.remove_device(u64::from(sid)) {
                Ok(dev) => Some(dev),
                Err(e) => {
                    warn_host("removing from the nested engine", sid, &e);
                    None
                }
            };
        }
        self.take_shadowed(sid)
    }

    /// Brings the host in line with the guest: attaches devices added
    /// since the last call, then consumes the unit's events
    /// ([`Vtd::take_events`]). Call it after every register write (and
    /// once before the guest runs).
    pub fn process<M: GuestMemory + ?Sized>(&mut self, vtd: &mut Vtd, mem: &M) {
        let events = vtd.take_events();
        match self.kind {
            Some(DecisionKind::Nested) => {
                self.back_pending_nested(vtd, mem);
                self.process_nested(vtd, mem, &events);
            }
            Some(DecisionKind::Shadow) => {
                let mut dirty = Dirty::new();
                self.back_pending_shadow(vtd, mem, &mut dirty);
                self.process_shadow(vtd, mem, &events, &mut dirty);
            }
            _ => {}
        }
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
    let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
    let root = RootEntry::read(mem, rta, bus).ok()?;
    // 9.2: the low half serves devfn 0..127, the high half 128..255.
    let half = if devfn < 128 { root.lo } else { root.hi };
    if !P.is_set(half) {
        return None;
    }
    let ctx = SmContextEntry::read(mem, half & PTR.mask(), devfn).ok()?;
    P.is_set(ctx.q[0]).then_some(ctx)
}

/// The PASIDs (other than RID_PASID) whose PASID entries are present in
/// the device's PASID table (9.4 PASIDE and PDTS, 9.5, 9.6), at most
/// [`MAX_NESTED_PASIDS_PER_DEVICE`]. The directory has at most 2^14
/// entries (PDTS <= 7); each present one costs one 64-entry table.
fn pasids_in_use<M: GuestMemory + ?Sized>(mem: &M, vtd: &Vtd, sid: u16) -> Vec<u32> {
    let Some(ctx) = sm_context(mem, vtd, sid) else {
        return Vec::new();
    };
    if !SmContextEntry::PASIDE.is_set(ctx.q[0]) {
        return Vec::new();
    }
    let rid_pasid = SmContextEntry::RID_PASID.get(ctx.q[1]) as u32;
    let dir = ctx.q[0] & PTR.mask();
    let tables = (ctx.max_pasids() / u64::from(PASIDS_PER_TABLE)) as u32;
    let mut out = Vec::new();
    for t in 0..tables {
        let base = t * PASIDS_PER_TABLE;
        let Ok(d) = PasidDirEntry::read(mem, dir, base) else {
            continue;
        };
        if !P.is_set(d.0) {
            continue;
        }
        for pasid in base..base + PASIDS_PER_TABLE {
            let present =
                PasidEntry::read(mem, d.0 & PTR.mask(), pasid).is_ok_and(|e| P.is_set(e.q[0]));
            if !present || pasid == rid_pasid {
                continue;
            }
            if out.len() == MAX_NESTED_PASIDS_PER_DEVICE {
                log::warn!(
                    "vtd passthrough {sid:#06x}: more than {MAX_NESTED_PASIDS_PER_DEVICE} PASIDs; the rest stay blocked"
                );
                return out;
            }
            out.push(pasid);
        }
    }
    out
}

/// The context a present, valid PASID entry nests as: first-stage entries
/// as a stage-1 HWPT, pass-through as stage 2 only (IOVA = GPA). Second-
/// stage and nested guest entries cannot be expressed on a host that
/// supplies the second stage itself: `None`.
fn nested_context(entry: &PasidEntry) -> Option<NestedContext> {
    match entry.pgtt() {
        Pgtt::PassThrough => Some(NestedContext::Bypass),
        Pgtt::FirstStage => match stage1_hwpt(entry)? {
            nesting_core::host::HwptData::VtdS1 {
                flags,
                pgtbl_addr,
                addr_width,
            } => Some(NestedContext::VtdS1 {
                flags,
                pgtbl_addr,
                addr_width,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// The context a located PASID entry nests as; an entry that cannot nest
/// (second-stage or nested PGTT: the host supplies the second stage
/// itself) is blocked and flagged, so the guest gets a fault for it.
fn located_context(sid: u16, l: &crate::translate::Located) -> Installed {
    let ctx = nested_context(&l.entry);
    if ctx.is_none() {
        log::debug!(
            "vtd passthrough {sid:#06x} pasid {}: PGTT {:?} cannot nest; blocked",
            l.pasid,
            l.entry.pgtt()
        );
    }
    Installed {
        ctx: ctx.unwrap_or(NestedContext::Abort),
        pasid: l.pasid,
        did: l.entry.did(),
        fpd: l.fpd,
        cannot_nest: ctx.is_none(),
    }
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
        return legacy_context(mem, &caps, rta, sid).is_ok_and(|c| FPD.is_set(c.lo));
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

// ---------------------------------------------------------------------------
// Nested.

/// Whether an IOTLB invalidation of `scope` covers what a context tagged
/// (`did`, `pasid`) caches (6.5.2.3, 6.5.2.4): global covers everything;
/// domain- and page-selective IOTLB invalidations every PASID of the
/// domain; PASID-based ones one PASID of the domain.
fn covers(scope: &IotlbScope, inst: &Installed) -> bool {
    match *scope {
        IotlbScope::Global => true,
        IotlbScope::Domain { did } | IotlbScope::Pages { did, .. } => inst.did == did,
        IotlbScope::Pasid { did, pasid } | IotlbScope::PasidPages { did, pasid, .. } => {
            inst.did == did && inst.pasid == pasid
        }
    }
}

impl PassthroughBackend {
    fn back_pending_nested<M: GuestMemory + ?Sized>(&mut self, vtd: &mut Vtd, mem: &M) {
        if self.pending.is_empty() {
            return;
        }
        if self.nested.is_none() {
            match NestedEngine::new(&self.host, &self.ram, NestedConfig::default()) {
                Ok(e) => self.nested = Some(e),
                Err(e) => {
                    // Without an engine the devices cannot be backed:
                    // they stay bound and blocked (their DMA faults on
                    // the host), and the error is not repeated at every
                    // register write.
                    log::error!(
                        "vtd passthrough: nested engine: {e}; {} devices stay blocked",
                        self.pending.len()
                    );
                    self.parked.append(&mut self.pending);
                    return;
                }
            }
        }
        let Some(engine) = self.nested.as_mut() else {
            return;
        };
        let mut added = Vec::new();
        for (sid, dev) in std::mem::take(&mut self.pending) {
            // Until the rescan below the device sees what the unit does
            // before the guest's tables apply.
            let initial = if vtd.translation_enabled() {
                NestedContext::Abort
            } else {
                NestedContext::Bypass
            };
            match engine.add_device(u64::from(sid), dev, initial) {
                Ok(()) => {
                    let ctxs = BTreeMap::from([(
                        None,
                        Installed {
                            ctx: initial,
                            pasid: 0,
                            did: 0,
                            fpd: false,
                            cannot_nest: false,
                        },
                    )]);
                    self.nest_devs.insert(sid, ctxs);
                    added.push(sid);
                }
                Err((e, dev)) => {
                    warn_host("adding to the nested engine; it stays blocked", sid, &e);
                    self.parked.insert(sid, dev);
                }
            }
        }
        for sid in added {
            self.rescan(vtd, mem, sid);
        }
    }

    fn process_nested<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        events: &[VtdEvent],
    ) {
        // Tag of a queued invalidation = index into `tags`.
        let mut tags: Vec<(u16, Option<Pasid>)> = Vec::new();
        for ev in events {
            match *ev {
                VtdEvent::TranslationEnabled(_)
                | VtdEvent::RootTable { .. }
                | VtdEvent::Resync
                | VtdEvent::Context(ContextScope::Global | ContextScope::Domain { .. })
                | VtdEvent::PasidCache(PasidScope::Global | PasidScope::Domain { .. }) => {
                    // A context change must not race invalidations queued
                    // for HWPTs it replaces.
                    self.flush_nested(vtd, &mut tags);
                    let sids: Vec<u16> = self.nest_devs.keys().copied().collect();
                    for sid in sids {
                        self.rescan(vtd, mem, sid);
                    }
                }
                VtdEvent::Context(ContextScope::Device { sid, fm, .. }) => {
                    self.flush_nested(vtd, &mut tags);
                    for s in function_siblings(sid, fm) {
                        if self.nest_devs.contains_key(&s) {
                            self.rescan(vtd, mem, s);
                        }
                    }
                }
                VtdEvent::PasidCache(PasidScope::Pasid { pasid, .. }) => {
                    self.flush_nested(vtd, &mut tags);
                    let sids: Vec<u16> = self.nest_devs.keys().copied().collect();
                    for sid in sids {
                        self.reread_pasid(vtd, mem, sid, pasid);
                    }
                }
                VtdEvent::Iotlb(scope) => self.queue_iotlb(&scope, &mut tags),
                // The host kernel invalidates a nested device's device-TLB
                // together with the nested HWPT's IOTLB (Linux:
                // intel_nested_cache_invalidate_user flushes the domain's
                // cache tags, ATS ones included), so the stage-1
                // invalidations above already cover the device-TLB.
                VtdEvent::DeviceTlb { .. } => {}
                // Page requests of nested devices are not forwarded (the
                // engine runs without IOPF), so no response is owed.
                VtdEvent::PageGroupResponse { .. } => {}
            }
        }
        self.flush_nested(vtd, &mut tags);
    }

    /// Re-reads every PASID entry of a nested device and installs,
    /// replaces or removes its contexts to match.
    fn rescan<M: GuestMemory + ?Sized>(&mut self, vtd: &mut Vtd, mem: &M, sid: u16) {
        let mut want: BTreeMap<Option<Pasid>, Option<Installed>> = BTreeMap::new();
        want.insert(None, Some(self.rid_context(vtd, mem, sid)));
        if vtd.translation_enabled() {
            for p in pasids_in_use(mem, vtd, sid) {
                let key = Pasid::new(p);
                want.insert(key, self.pasid_context(vtd, mem, sid, p));
            }
        }
        let stale: Vec<Option<Pasid>> = self
            .nest_devs
            .get(&sid)
            .map(|c| {
                c.keys()
                    .filter(|k| !want.contains_key(*k))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for key in stale {
            want.insert(key, None);
        }
        for (key, ctx) in want {
            self.apply_context(vtd, sid, key, ctx);
        }
    }

    /// Re-reads one guest PASID of a nested device (a PASID-selective
    /// PASID-cache invalidation, 6.5.2.2).
    fn reread_pasid<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
        pasid: u32,
    ) {
        let rid_pasid =
            sm_context(mem, vtd, sid).map(|c| SmContextEntry::RID_PASID.get(c.q[1]) as u32);
        if rid_pasid == Some(pasid) {
            let ctx = self.rid_context(vtd, mem, sid);
            self.apply_context(vtd, sid, None, Some(ctx));
        } else if let Some(key) = Pasid::new(pasid) {
            let ctx = if vtd.translation_enabled() {
                self.pasid_context(vtd, mem, sid, pasid)
            } else {
                None
            };
            let known = self
                .nest_devs
                .get(&sid)
                .is_some_and(|c| c.contains_key(&Some(key)));
            let room =
                self.nest_devs.get(&sid).map_or(0, BTreeMap::len) <= MAX_NESTED_PASIDS_PER_DEVICE;
            if known || room {
                self.apply_context(vtd, sid, Some(key), ctx);
            }
        }
    }

    /// What requests without PASID of `sid` nest as: the RID_PASID entry
    /// in scalable mode (9.4); untranslated with translation disabled
    /// (GSTS.TES clear); otherwise (legacy tables, absent or invalid
    /// entries) blocked.
    fn rid_context<M: GuestMemory + ?Sized>(&self, vtd: &Vtd, mem: &M, sid: u16) -> Installed {
        let blocked = Installed {
            ctx: NestedContext::Abort,
            pasid: 0,
            did: 0,
            fpd: false,
            cannot_nest: false,
        };
        if !vtd.translation_enabled() {
            return Installed {
                ctx: NestedContext::Bypass,
                ..blocked
            };
        }
        if let Some(l) = vtd.pasid_entry(mem, Bdf(sid), None) {
            return located_context(sid, &l);
        }
        // Legacy pass-through contexts (TT=10) are untranslated too.
        match vtd.table_view(mem, Bdf(sid), None, 0, 0, MIN_BUDGET) {
            TableView::Identity => Installed {
                ctx: NestedContext::Bypass,
                ..blocked
            },
            _ => blocked,
        }
    }

    /// What requests with `pasid` of `sid` nest as; `None`: no valid
    /// entry (blocked).
    fn pasid_context<M: GuestMemory + ?Sized>(
        &self,
        vtd: &Vtd,
        mem: &M,
        sid: u16,
        pasid: u32,
    ) -> Option<Installed> {
        let l = vtd.pasid_entry(mem, Bdf(sid), Some(pasid))?;
        Some(located_context(sid, &l))
    }

    /// Makes the host context of (`sid`, `key`) `want` (`None`: blocked
    /// and forgotten). A refusal of the host blocks the device (PASID)
    /// and records a fault for it, as does an entry that cannot nest.
    fn apply_context(
        &mut self,
        vtd: &mut Vtd,
        sid: u16,
        key: Option<Pasid>,
        want: Option<Installed>,
    ) {
        let res = match want {
            None => self.drop_context(sid, key).map(|()| false),
            Some(w) => self.set_context(sid, key, w),
        };
        let fpd = want.is_some_and(|w| w.fpd);
        match res {
            Ok(false) => {}
            Ok(true) => self.report_refusal(vtd, sid, key, fpd),
            Err(e) => {
                warn_host("installing a nested context", sid, &e);
                self.report_refusal(vtd, sid, key, fpd);
            }
        }
    }

    /// Forgets a PASID's context, detaching it if it was attached.
    fn drop_context(&mut self, sid: u16, key: Option<Pasid>) -> Result<(), NestedError> {
        let (Some(engine), Some(ctxs)) = (self.nested.as_mut(), self.nest_devs.get_mut(&sid))
        else {
            return Ok(());
        };
        let Some(p) = key else {
            return Ok(());
        };
        match ctxs.remove(&key) {
            Some(old) if old.ctx != NestedContext::Abort => engine.remove_pasid(u64::from(sid), p),
            _ => Ok(()),
        }
    }

    /// Installs `w`; `Ok(true)` when it newly blocks an entry that
    /// cannot nest (the guest is owed a fault).
    fn set_context(
        &mut self,
        sid: u16,
        key: Option<Pasid>,
        w: Installed,
    ) -> Result<bool, NestedError> {
        let (Some(engine), Some(ctxs)) = (self.nested.as_mut(), self.nest_devs.get_mut(&sid))
        else {
            return Ok(false);
        };
        let old = ctxs.get(&key).copied();
        if old == Some(w) {
            return Ok(false);
        }
        let vsid = u64::from(sid);
        let attached = old.is_some_and(|o| o.ctx != NestedContext::Abort);
        let res = match (key, w.ctx) {
            // A PASID is blocked by detaching it, if it was attached.
            (Some(p), NestedContext::Abort) if attached => engine.remove_pasid(vsid, p),
            (Some(_), NestedContext::Abort) => Ok(()),
            _ => engine.install(vsid, key, w.ctx),
        };
        if let Err(e) = res {
            // The engine leaves the old context in place; the guest
            // changed it, so block rather than keep translating through
            // stale tables.
            let blocked = match key {
                Some(p) if attached => engine.remove_pasid(vsid, p),
                Some(_) => Ok(()),
                None => engine.install(vsid, None, NestedContext::Abort),
            };
            if let Err(b) = blocked {
                warn_host("blocking after a refusal", sid, &b);
            }
            ctxs.remove(&key);
            return Err(e);
        }
        ctxs.insert(key, w);
        Ok(w.cannot_nest && old.is_none_or(|o| !o.cannot_nest || o.pasid != w.pasid))
    }

    fn report_refusal(&mut self, vtd: &mut Vtd, sid: u16, key: Option<Pasid>, fpd: bool) {
        let rec = refusal_fault(sid, key.map(Pasid::raw), 0, entry_refused(vtd));
        self.record(vtd, &rec, fpd);
    }

    /// Records a fault for the guest unless it disabled fault processing
    /// for the request's entries (9.3, 9.4, 9.5, 9.6 FPD: the unit then
    /// records no non-recoverable fault for them).
    fn record(&mut self, vtd: &mut Vtd, rec: &FaultRecord, fpd: bool) {
        if fpd {
            log::debug!("vtd passthrough: FPD set, not recording {rec:?}");
            return;
        }
        vtd.report_fault(rec);
        self.stats.faults_reported += 1;
    }

    fn queue_iotlb(&mut self, scope: &IotlbScope, tags: &mut Vec<(u16, Option<Pasid>)>) {
        let Some(engine) = self.nested.as_mut() else {
            return;
        };
        let inv = stage1_invalidation(scope);
        for (&sid, ctxs) in &self.nest_devs {
            for (&key, inst) in ctxs {
                if !matches!(inst.ctx, NestedContext::VtdS1 { .. }) || !covers(scope, inst) {
                    continue;
                }
                let tag = tags.len() as u64;
                if engine.queue_vtd(u64::from(sid), key, inv, tag) {
                    tags.push((sid, key));
                }
            }
        }
    }

    /// Sends the queued stage-1 invalidations. An entry the host fails
    /// (and those after it, never sent) leaves the host's IOTLB possibly
    /// stale, which the guest must learn of: VT-d has no error for a
    /// failed IOTLB invalidation, and the one that names a source-id and
    /// stops nothing else is the invalidation completion error (6.5.2.10
    /// FSTS.ICE with IQER.ICESID; Linux's dmar_fault logs it and clears
    /// it). ITE would make Linux's qi_check_fault abort and resubmit
    /// unrelated later requests, IQE would blame a descriptor the unit
    /// accepted. The context is then rebuilt (a fresh HWPT has no cached
    /// translations), or blocked if the host refuses that too.
    fn flush_nested(&mut self, vtd: &mut Vtd, tags: &mut Vec<(u16, Option<Pasid>)>) {
        let Some(engine) = self.nested.as_mut() else {
            return;
        };
        if engine.queued() == 0 {
            tags.clear();
            return;
        }
        let report = engine.flush();
        for f in report.failures {
            let Some(&(sid, key)) = usize::try_from(f.tag).ok().and_then(|t| tags.get(t)) else {
                continue;
            };
            log::warn!(
                "vtd passthrough {sid:#06x} {key:?}: invalidation failed ({}), {} entries unsent",
                f.error,
                f.unsent.len()
            );
            vtd.report_invalidation_completion_error(sid);
            self.stats.invalidation_errors += 1;
            self.rebuild_context(vtd, sid, key);
        }
        tags.clear();
    }

    fn rebuild_context(&mut self, vtd: &mut Vtd, sid: u16, key: Option<Pasid>) {
        let Some(inst) = self.nest_devs.get(&sid).and_then(|c| c.get(&key)).copied() else {
            return;
        };
        let Some(engine) = self.nested.as_mut() else {
            return;
        };
        let vsid = u64::from(sid);
        // Through Abort, so the engine allocates a new HWPT.
        let res = engine
            .install(vsid, key, NestedContext::Abort)
            .and_then(|()| engine.install(vsid, key, inst.ctx));
        if let Err(e) = res {
            warn_host("rebuilding after a failed invalidation", sid, &e);
            if let Some(c) = self.nest_devs.get_mut(&sid) {
                c.remove(&key);
            }
            if let Some(p) = key
                && let Some(engine) = self.nested.as_mut()
            {
                let _ = engine.remove_pasid(vsid, p);
            }
            self.report_refusal(vtd, sid, key, inst.fpd);
        }
    }
}
