//! Shadowed passthrough devices (caching mode, VT-d 6.1): every requester
//! of a device — its RID (requests without PASID, through RID_PASID in
//! scalable mode or the context entry in legacy mode) and each PASID the
//! guest sets up — is attached to the shadow domain of the address space
//! its entry names, whose mappings the guest's invalidations keep in line
//! with its tables.
//!
//! The requesters' places and the shadow domains are the registry's
//! ([`nesting_core::passthrough::Registry`], spaces named by [`Space`]);
//! this module says where each requester must go and what each space
//! holds, and hands the registry plans.
//!
//! - **Address spaces.** A shadow domain mirrors one guest address space:
//!   a domain-id and the tables its entry points at ([`Space`]). A
//!   domain-id names one second-stage address space (9.3, 9.6 DID:
//!   entries with one domain-id must reference the same second-stage
//!   tables), but first-stage translations are cached per domain-id *and*
//!   PASID (6.2.1), so two PASIDs of one domain-id may use different
//!   first-stage tables: they get two shadow domains. The RID and a PASID
//!   whose entries name the same domain-id and tables share one.
//! - **Invalidations.** A domain- or page-selective IOTLB invalidation
//!   (6.5.2.3) re-reads every space of its domain-id; a PASID-based one
//!   (6.5.2.4) the spaces of its domain-id that a requester with that
//!   PASID (RID_PASID for the RID) is attached to; context and PASID-cache
//!   invalidations (6.5.2.1, 6.5.2.2) re-read where each requester goes,
//!   which attaches, moves or detaches it. A PASID entry cleared and
//!   invalidated detaches the PASID.
//! - **iommufd's PASID rule** (PASIDs only on PASID-capable HWPTs, and the
//!   RID too once a PASID is attached) is the registry's.
//! - **Pass-through** entries (PGTT=100, 9.6) and the RID with translation
//!   disabled see guest RAM at IOVA = GPA (the registry's identity place);
//!   requests with PASID are blocked while translation is disabled.
//! - **The host's PASIDs.** A PASID at or above what the host can attach
//!   for the device (none on a host IOMMU without scalable-mode PASID
//!   support) stays blocked, and the guest gets the fault a unit reports
//!   for a PASID entry it cannot use (0x5B), once per entry; the decision
//!   [`super::PassthroughBackend::add_device`] returns says so
//!   (`shadow-pasids`).
//! - **Limits.** First-stage tables are mirrored as a user-mode request
//!   sees them (9.7 U/S): the host IOAS has no privilege levels, so
//!   supervisor-only pages are not reachable by privileged DMA of a
//!   shadowed PASID (it faults on the host instead).

use std::collections::{BTreeMap, BTreeSet};

use nesting_core::ladder::{Check, HostView};
use nesting_core::passthrough::{Place, Plan, StageError, Step};
use nesting_core::types::{Access, Bdf, Gpa, Iova, Pasid};
use vm_memory::GuestMemory;

use super::{
    HostRefusal, MAX_MAPPINGS_PER_SYNC, MAX_NESTED_PASIDS_PER_DEVICE, MAX_ROUNDS_PER_RANGE,
    PassthroughBackend, fpd_of, pasids_in_use, rid_did, rid_pasid, warn_host,
};
use crate::Vtd;
use crate::nesting::{IotlbScope, PasidScope, VtdEvent};
use crate::shadow::{MAX_ENTRIES_PER_ENUMERATION, MIN_BUDGET, TableView};
use crate::translate::{Caps, RootPointer, Tables, tables_for};

/// Most shadow domains one unit keeps: each is a host IOAS (and a HWPT per
/// device). Requesters are bounded (devices times RID and
/// [`super::MAX_NESTED_PASIDS_PER_DEVICE`] PASIDs), but a guest giving
/// every PASID of every device its own domain must not make the VMM
/// allocate thousands of IOASes; a requester beyond it stays blocked and
/// the guest gets a fault for its entry.
pub const MAX_SHADOW_DOMAINS: usize = 4096;

/// The table format of a [`Space`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Second-stage tables (legacy mode, PGTT=010).
    Second,
    /// First-stage tables (PGTT=001).
    First,
}

/// The guest address space one shadow domain mirrors: a domain-id and the
/// tables behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Space {
    /// Domain-id of the entry (what IOTLB invalidations name).
    pub did: u16,
    /// Table format.
    pub stage: Stage,
    /// Table root (SLPTPTR, SSPTPTR or FSPTPTR).
    pub root: u64,
    /// Paging levels.
    pub levels: u32,
}

/// log2 of the PASIDs the host attaches for a device: iommu.c
/// `iommu_attach_device_pasid` refuses `pasid >= max_pasids`, which the
/// host reports as `max_pasid_log2` (0 on a VT-d host without scalable-mode
/// PASIDs, VT-d 11.4.3 ECAP.SMTS and ECAP.PASID); the registry attaches
/// PASIDs by the same rule.
fn host_pasid_bits(view: &HostView) -> u8 {
    view.info.max_pasid_log2.min(20)
}

/// Whether the host carries every PASID a shadowed device of a guest with
/// `guest_bits`-bit PASIDs (11.4.3 ECAP.PSS) may use, as a check for the
/// device's decision.
pub(super) fn pasid_check(guest_bits: u8, view: &HostView) -> Check {
    let host = host_pasid_bits(view);
    let passed = guest_bits <= host;
    let detail = match (guest_bits, passed) {
        (0, _) => "guest pasid_bits=0: no requests with PASID".to_string(),
        (g, true) => {
            format!("guest pasid_bits={g} <= host PASID width {host}: every PASID shadowed")
        }
        (g, false) => format!(
            "guest pasid_bits={g} > host PASID width {host}: PASIDs from {:#x} stay blocked, their entries fault (0x5B)",
            1u64 << host
        ),
    };
    Check::new("shadow-pasids", passed, detail)
}

/// Ranges of shadow spaces to read again from the guest's tables at the
/// sync point (`None`: the whole space).
pub(super) type Dirty = BTreeMap<Space, Vec<Option<(u64, u64)>>>;

/// A shadowed requester: a device's RID (`None`) or one of its PASIDs.
type Requester = (u16, Option<Pasid>);

/// What one sync point has reconciled already.
#[derive(Debug, Default)]
struct Once {
    /// Every requester.
    all: bool,
    /// Every device's requester of these PASIDs.
    pasids: BTreeSet<u32>,
}

/// The ranges to read again of one space: the whole space if any event
/// asked for it, else the ranges merged where they overlap or touch, so
/// that tables are read once per sync point however many invalidations
/// of overlapping ranges the guest queued.
fn normalize(ranges: Vec<Option<(u64, u64)>>) -> Vec<Option<(u64, u64)>> {
    if ranges.contains(&None) {
        return vec![None];
    }
    let mut r: Vec<(u64, u64)> = ranges.into_iter().flatten().collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (first, last) in r {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out.into_iter().map(Some).collect()
}

fn ep((sid, key): Requester) -> (u32, Option<Pasid>) {
    (u32::from(sid), key)
}

impl PassthroughBackend {
    pub(super) fn sync_shadow<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        events: &[VtdEvent],
    ) -> Result<(), HostRefusal> {
        let mut dirty = Dirty::new();
        // Every read happens now, at the sync point: where the tables put
        // a requester does not change between two events of one sync, so
        // each requester is reconciled once however many context or PASID
        // invalidations the guest queued before its wait (a queue full of
        // them costs one reconcile, not one per descriptor).
        let mut once = Once::default();
        for ev in events {
            match *ev {
                // GCMD.TE (11.4.4): with it clear the RIDs see guest RAM
                // untranslated; set again, every space is read anew.
                VtdEvent::TranslationEnabled(on) => {
                    self.reconcile_all_once(vtd, mem, &mut dirty, &mut once);
                    if on {
                        self.resync_all(&mut dirty);
                    }
                }
                VtdEvent::PasidCache(PasidScope::Pasid { pasid, .. }) => {
                    if !once.all && once.pasids.insert(pasid) {
                        for sid in self.sids() {
                            self.reconcile_pasid(vtd, mem, sid, pasid, &mut dirty);
                        }
                    }
                }
                VtdEvent::RootTable { .. } | VtdEvent::Context(_) | VtdEvent::PasidCache(_) => {
                    self.reconcile_all_once(vtd, mem, &mut dirty, &mut once)
                }
                VtdEvent::Resync | VtdEvent::Iotlb(IotlbScope::Global) => {
                    self.reconcile_all_once(vtd, mem, &mut dirty, &mut once);
                    self.resync_all(&mut dirty);
                }
                VtdEvent::Iotlb(scope) => {
                    let (did, pasid) = match scope {
                        IotlbScope::Domain { did } | IotlbScope::Pages { did, .. } => (did, None),
                        IotlbScope::Pasid { did, pasid }
                        | IotlbScope::PasidPages { did, pasid, .. } => (did, Some(pasid)),
                        IotlbScope::Global => continue,
                    };
                    let range = scope.range().map(|(a, len)| (a, a.saturating_add(len - 1)));
                    for space in self.spaces_of(vtd, mem, did, pasid) {
                        dirty.entry(space).or_default().push(range);
                    }
                }
                // Shadowed devices do not use ATS through the guest's
                // tables (the host IOMMU's own device-TLB follows the
                // shadow IOAS), and their page requests are not forwarded.
                VtdEvent::DeviceTlb { .. } | VtdEvent::PageGroupResponse { .. } => {}
            }
        }
        self.flush_shadow(vtd, mem, dirty)
    }

    /// The spaces an IOTLB invalidation of `did` covers: 6.5.2.3, a
    /// domain- or page-selective IOTLB invalidation covers every
    /// translation tagged with the domain-id; 6.5.2.4, a PASID-based one
    /// only those also tagged with `pasid` (6.2.1: first-stage
    /// translations are tagged with both), i.e. the spaces a requester
    /// with that PASID is in (the RID's is RID_PASID, 9.4).
    fn spaces_of<M: GuestMemory + ?Sized>(
        &self,
        vtd: &Vtd,
        mem: &M,
        did: u16,
        pasid: Option<u32>,
    ) -> Vec<Space> {
        let of_did = self.reg.spaces().map(|(s, _)| *s).filter(|s| s.did == did);
        let Some(p) = pasid else {
            return of_did.collect();
        };
        let tagged = |&(ep, key): &(u32, Option<Pasid>)| match key {
            Some(k) => k.raw() == p,
            None => u16::try_from(ep).is_ok_and(|sid| rid_pasid(mem, vtd, sid) == Some(p)),
        };
        of_did
            .filter(|s| self.reg.members(*s).iter().any(tagged))
            .collect()
    }

    /// Reconciles every requester, once per sync point.
    fn reconcile_all_once<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        dirty: &mut Dirty,
        once: &mut Once,
    ) {
        if once.all {
            return;
        }
        once.all = true;
        for sid in self.sids() {
            self.reconcile(vtd, mem, sid, dirty);
        }
    }

    fn resync_all(&self, dirty: &mut Dirty) {
        for (s, _) in self.reg.spaces() {
            let ranges = dirty.entry(*s).or_default();
            if !ranges.contains(&None) {
                ranges.push(None);
            }
        }
    }

    /// Where requests of (`sid`, `key`) must go, per the guest's tables.
    fn target<M: GuestMemory + ?Sized>(
        &self,
        vtd: &Vtd,
        mem: &M,
        (sid, key): Requester,
    ) -> Place<Space> {
        if !vtd.translation_enabled() {
            // 3.1 (GSTS.TES clear): requests without PASID are not
            // remapped. Requests with PASID are blocked: the unit
            // translates PASIDs only through a scalable-mode root table it
            // uses with TE.
            return match key {
                None => Place::Identity,
                Some(_) => Place::Blocked,
            };
        }
        let pasid = key.map(Pasid::raw);
        let (addr, ttm) = vtd.root_pointer();
        let caps = Caps::new(vtd.config());
        let tables = tables_for(mem, &caps, RootPointer { addr, ttm }, sid, pasid);
        let (stage, root, levels) = match tables {
            // 9.6 PGTT=100 (and legacy TT=10, 9.3): output = input.
            Ok(Tables::Identity) => return Place::Identity,
            Ok(Tables::Second(p)) => (Stage::Second, p.root, p.levels),
            Ok(Tables::First(p)) => (Stage::First, p.root, p.levels),
            // Nested PGTT (9.6 PGTT=011) needs a nested HWPT, and a
            // faulting entry blocks: requests fault before any walk.
            Ok(Tables::Nested(..)) | Err(_) => return Place::Blocked,
        };
        let did = match pasid {
            None => rid_did(mem, vtd, sid),
            Some(p) => vtd
                .pasid_entry(mem, Bdf(sid), Some(p))
                .map(|l| l.entry.did()),
        };
        did.map_or(Place::Blocked, |did| {
            Place::Shadow(Space {
                did,
                stage,
                root,
                levels,
            })
        })
    }

    /// Puts every requester of `sid` where the tables say: the RID, and
    /// with translation enabled every PASID whose entry is present in the
    /// device's PASID table (9.4 PASIDE, 9.5, 9.6); requesters no longer
    /// there are blocked.
    pub(super) fn reconcile<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
        dirty: &mut Dirty,
    ) {
        let mut keys: Vec<Option<Pasid>> = self
            .reg
            .requesters(u32::from(sid))
            .into_iter()
            .map(|(k, _)| k)
            .chain(
                self.faulted
                    .iter()
                    .filter(|(s, _)| *s == sid)
                    .map(|(_, k)| *k),
            )
            .collect();
        keys.push(None);
        if vtd.translation_enabled() {
            keys.extend(pasids_in_use(mem, vtd, sid).into_iter().map(Pasid::new));
        }
        keys.sort();
        keys.dedup();
        for key in keys {
            self.reconcile_one(vtd, mem, (sid, key), dirty);
        }
    }

    /// Re-reads one PASID of `sid` after a PASID-selective PASID-cache
    /// invalidation (6.5.2.2: software sends one after changing that
    /// entry; Linux's `pasid.c` does for every entry it sets up or tears
    /// down), instead of the whole PASID table: the RID if it is the
    /// context's RID_PASID (9.4), else that PASID, unless the device
    /// already has [`MAX_NESTED_PASIDS_PER_DEVICE`] others.
    fn reconcile_pasid<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
        pasid: u32,
        dirty: &mut Dirty,
    ) {
        if rid_pasid(mem, vtd, sid) == Some(pasid) {
            return self.reconcile_one(vtd, mem, (sid, None), dirty);
        }
        let Some(key) = Pasid::new(pasid) else {
            return;
        };
        let key = Some(key);
        let here = self.reg.requesters(u32::from(sid));
        let known = here.iter().any(|(k, _)| *k == key) || self.faulted.contains(&(sid, key));
        let others = here.iter().filter(|(k, _)| k.is_some()).count();
        if known || others < MAX_NESTED_PASIDS_PER_DEVICE {
            self.reconcile_one(vtd, mem, (sid, key), dirty);
        } else {
            nesting_core::guest_log!(
                Warn,
                "vtd passthrough {sid:#06x}: more than {MAX_NESTED_PASIDS_PER_DEVICE} PASIDs; pasid {pasid:#x} stays blocked"
            );
        }
    }

    /// One requester. A PASID the host cannot carry, or a host refusal,
    /// leaves it blocked and records one fault for its entry.
    fn reconcile_one<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        req: Requester,
        dirty: &mut Dirty,
    ) {
        let (sid, key) = req;
        let want = self.target(vtd, mem, req);
        if want == Place::Blocked {
            // No entry (any more): a later one is owed a fresh fault.
            self.faulted.remove(&req);
        }
        // VT-d 11.4.3 ECAP.PSS gives the guest PASIDs the host may not
        // attach (iommu_attach_device_pasid: pasid < max_pasids): such a
        // PASID's entry is one the (virtual) unit cannot use.
        if want != Place::Blocked && !self.reg.carries(ep(req)) {
            nesting_core::guest_log!(
                Warn,
                "vtd passthrough {sid:#06x}: pasid {:#x} is beyond what the host attaches; blocked",
                key.map_or(0, Pasid::raw),
            );
            self.block(req);
            let fpd = fpd_of(mem, vtd, sid, key.map(Pasid::raw));
            return self.refusal_fault(vtd, sid, key, fpd);
        }
        if self.reg.place(ep(req)) == want {
            return;
        }
        let mut plan = Plan::new();
        if let Place::Shadow(space) = want
            && self.reg.space(&space).is_none()
        {
            // A space made afresh is read in full before the requester
            // arrives.
            self.read_tables(vtd, mem, req, space, None, &mut plan);
        }
        plan.push(Step::Place {
            req: ep(req),
            to: want,
        });
        match self.reg.stage(&plan) {
            Ok(_) => {
                self.faulted.remove(&req);
                if let Place::Shadow(space) = want {
                    // Already whole; later invalidations of this sync
                    // point read their ranges again.
                    dirty.entry(space).or_default();
                }
            }
            Err(e) => {
                warn_host("attaching a shadowed device", sid, &e);
                self.block(req);
                // The guest cleared the entry and the requester is blocked
                // after all: nothing the guest asked for was refused, and
                // its next entry is owed a fault of its own if refused.
                if want == Place::Blocked && self.reg.place(ep(req)) == Place::Blocked {
                    return;
                }
                let fpd = fpd_of(mem, vtd, sid, key.map(Pasid::raw));
                self.refusal_fault(vtd, sid, key, fpd);
            }
        }
    }

    fn block(&mut self, req: Requester) {
        let plan = Plan {
            steps: vec![Step::Place {
                req: ep(req),
                to: Place::Blocked,
            }],
        };
        if let Err(e) = self.reg.stage(&plan) {
            warn_host("blocking a shadowed requester", req.0, &e);
        }
    }

    /// Reads every dirty range of every space again from the tables of one
    /// of its members and applies all of it in one plan: the guest's
    /// invalidations up to this sync point are on the host when it
    /// returns, or the host refused (nothing of the plan stays applied)
    /// and the refusal names a device of the first space it could not
    /// update.
    pub(super) fn flush_shadow<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &Vtd,
        mem: &M,
        dirty: Dirty,
    ) -> Result<(), HostRefusal> {
        let mut plan = Plan::new();
        let mut owner: Vec<(usize, u16)> = Vec::new();
        for (space, ranges) in dirty {
            let Some(&(ep, key)) = self.reg.members(space).first() else {
                continue;
            };
            let Ok(sid) = u16::try_from(ep) else {
                continue;
            };
            for range in normalize(ranges) {
                self.read_tables(vtd, mem, (sid, key), space, Some(range), &mut plan);
            }
            owner.push((plan.steps.len(), sid));
        }
        if plan.is_empty() {
            return Ok(());
        }
        let Err(e) = self.reg.stage(&plan) else {
            return Ok(());
        };
        warn_host("updating shadow spaces", 0, &e);
        let step = e.step();
        let sid = owner
            .iter()
            .find(|(end, _)| step < *end)
            .or(owner.last())
            .map_or(0, |(_, sid)| *sid);
        if let StageError::Invalid { why, .. } = e {
            nesting_core::guest_log!(
                Error,
                "vtd passthrough: a shadow plan was refused as invalid: {why}"
            );
        }
        Err(HostRefusal { sid })
    }

    /// Appends to `plan` the removal of what `space` holds in `range`
    /// (`None`: everything; `Some(None)`: the whole space) and the
    /// mappings the tables of `req` hold there now, read in rounds of at
    /// most [`MAX_ENTRIES_PER_ENUMERATION`] entries.
    fn read_tables<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &Vtd,
        mem: &M,
        (sid, key): Requester,
        space: Space,
        range: Option<Option<(u64, u64)>>,
        plan: &mut Plan<Space>,
    ) {
        let (mut first, last) = range.flatten().unwrap_or((0, u64::MAX));
        match (range, (last - first).checked_add(1)) {
            (Some(Some(_)), Some(len)) => plan.push(Step::Unmap {
                space,
                iova: Iova(first),
                len,
            }),
            (Some(_), _) => plan.push(Step::Clear { space }),
            (None, _) => plan,
        };
        let pasid = key.map(Pasid::raw);
        for _ in 0..MAX_ROUNDS_PER_RANGE {
            let reads = usize::try_from(vtd.sync_reads_left()).unwrap_or(usize::MAX);
            if self.map_room == 0 || reads == 0 {
                // MAX_MAPPINGS_PER_SYNC or MAX_SYNC_READS_PER_WRITE: the
                // rest of the range stays unmapped (the unmap above
                // covers it), as a truncated range does.
                break;
            }
            let budget = MAX_ENTRIES_PER_ENUMERATION
                .min(self.map_room)
                .min(reads)
                .max(MIN_BUDGET);
            let view = vtd.table_view(mem, Bdf(sid), pasid, first, last, budget);
            let TableView::Mappings {
                list,
                complete,
                resume,
            } = view
            else {
                // Identity or blocked: the requester moves at the next
                // context event; nothing to mirror.
                return;
            };
            self.map_room = self.map_room.saturating_sub(list.len());
            for m in list {
                plan.push(Step::Map {
                    space,
                    iova: Iova(m.iova),
                    gpa: Gpa(m.gpa),
                    len: 1u64 << m.shift,
                    access: m.perms & Access::RW,
                });
            }
            if complete {
                return;
            }
            first = resume;
        }
        nesting_core::guest_log!(
            Warn,
            "vtd passthrough: {space:?}: range up to {last:#x} not fully read ({MAX_ROUNDS_PER_RANGE} rounds, {MAX_MAPPINGS_PER_SYNC} mappings per sync point or the reads of one register write); the rest stays unmapped"
        );
        self.stats.truncated_ranges += 1;
    }
}
