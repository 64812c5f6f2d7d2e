//! Shadowed passthrough devices (caching mode, VT-d 6.1): every requester
//! of a device — its RID (requests without PASID, through RID_PASID in
//! scalable mode or the context entry in legacy mode) and each PASID the
//! guest sets up — is attached to the shadow domain of the address space
//! its entry names, whose mappings the guest's invalidations keep in line
//! with its tables.
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
//! - **iommufd's PASID rule.** A PASID attaches only to a HWPT allocated
//!   with `IOMMU_HWPT_ALLOC_PASID`, and while any PASID of a device is
//!   attached its RID must be on such a HWPT too (`iommufd_hwpt_pasid_compat`,
//!   drivers/iommu/iommufd/device.c). The first PASID of a device to attach
//!   moves its RID, in place, onto its PASID-capable HWPT over the same
//!   IOAS (its shadow domain's with [`ShadowDomain::attach_pasid_capable`],
//!   or the RAM IOAS); from then on every attach of the device is
//!   PASID-capable, wherever its RID and PASIDs go, until it is removed.
//! - **Pass-through** entries (PGTT=100, 9.6) and the RID with translation
//!   disabled see guest RAM at IOVA = GPA: the RAM IOAS, through the
//!   device's PASID-capable HWPT over it when PASIDs are involved.
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

use nesting_core::host::info::ecap;
use nesting_core::host::objects::{BoundDevice, Hwpt};
use nesting_core::host::{HwptAlloc, HwptData, HwptFlags, PtId};
use nesting_core::ladder::{Check, HostView};
use nesting_core::shadow::ShadowDomain;
use nesting_core::types::{Access, Bdf, Gpa, Iova, Pasid};
use vm_memory::GuestMemory;

use super::{
    Dirty, MAX_NESTED_PASIDS_PER_DEVICE, MAX_ROUNDS_PER_RANGE, PassthroughBackend,
    PassthroughError, entry_refused, fpd_of, pasids_in_use, refusal_fault, rid_did, sm_context,
    warn_host,
};
use crate::Vtd;
use crate::fault::FaultReason;
use crate::nesting::{IotlbScope, PasidScope, VtdEvent};
use crate::shadow::{MAX_ENTRIES_PER_ENUMERATION, TableView};
use crate::tables::{Pgtt, SmContextEntry};
use crate::translate::{Caps, RootPointer, Tables, tables_for};

/// Most shadow domains one unit keeps: each is a host IOAS (and a HWPT per
/// device). Requesters are bounded (devices times RID and
/// [`super::MAX_NESTED_PASIDS_PER_DEVICE`] PASIDs), but a guest giving
/// every PASID of every device its own domain must not make the VMM
/// allocate thousands of IOASes; a requester beyond it stays blocked and
/// the guest gets a fault for its entry.
pub const MAX_SHADOW_DOMAINS: usize = 4096;

/// A shadowed requester: a device's RID (`None`) or one of its PASIDs.
pub(super) type Requester = (u16, Option<Pasid>);

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

/// Where a shadowed requester is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum At {
    /// Nowhere (just bound, no valid entry, or the host refused).
    Blocked,
    /// The RAM IOAS: IOVA = GPA.
    Ram,
    /// The shadow domain of an address space.
    Domain(Space),
}

#[derive(Debug)]
pub(super) struct ShadowDev {
    pub dev: BoundDevice,
    /// Where its RID (`None`) and PASIDs are attached; absent: blocked.
    pub at: BTreeMap<Option<Pasid>, At>,
    /// Every attach of the device goes on PASID-capable HWPTs: set when
    /// its first PASID attaches, kept until it is removed.
    pasid_mode: bool,
    /// The host attaches PASIDs below `2^host_pasid_bits` for it (0:
    /// none).
    host_pasid_bits: u8,
    /// Requesters refused with a fault already recorded: one fault per
    /// refusal, until the requester is attached or its entry goes.
    faulted: BTreeSet<Option<Pasid>>,
    /// Its PASID-capable HWPT over the RAM IOAS; after `dev`, so it is
    /// destroyed once the device let go of it.
    ram_hwpt: Option<Hwpt>,
}

impl ShadowDev {
    pub(super) fn new(dev: BoundDevice, view: Option<&HostView>) -> ShadowDev {
        ShadowDev {
            dev,
            at: BTreeMap::new(),
            pasid_mode: false,
            host_pasid_bits: view.map_or(0, host_pasid_bits),
            faulted: BTreeSet::new(),
            ram_hwpt: None,
        }
    }
}

/// log2 of the PASIDs the host attaches for a device: iommu.c
/// `iommu_attach_device_pasid` refuses `pasid >= max_pasids`, and Intel's
/// `set_dev_pasid` needs scalable mode with PASID support (VT-d 11.4.3
/// ECAP.SMTS, ECAP.PASID).
fn host_pasid_bits(view: &HostView) -> u8 {
    if let Some((_, e)) = view.info.vtd()
        && !(e.has(ecap::SMTS) && e.has(ecap::PASID))
    {
        return 0;
    }
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
    Check {
        name: "shadow-pasids",
        passed,
        detail,
    }
}

impl PassthroughBackend {
    pub(super) fn back_pending_shadow<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        dirty: &mut Dirty,
    ) {
        for (sid, dev) in std::mem::take(&mut self.pending) {
            let d = ShadowDev::new(dev, self.views.get(&sid));
            self.shadow_devs.insert(sid, d);
            self.reconcile(vtd, mem, sid, dirty);
        }
        self.domains.retain(|_, d| !d.devices().is_empty());
    }

    pub(super) fn process_shadow<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        events: &[VtdEvent],
        dirty: &mut Dirty,
    ) {
        for ev in events {
            match *ev {
                VtdEvent::TranslationEnabled(on) => {
                    // GCMD.TE (11.4.4): devices of the shadow domains see
                    // guest RAM untranslated while it is clear; their
                    // mappings stay for when it is set again.
                    for (s, d) in &mut self.domains {
                        if let Err(e) = d.set_identity(!on) {
                            log::warn!("vtd passthrough: {s:?}: identity {}: {e}", !on);
                        }
                    }
                    self.reconcile_all(vtd, mem, dirty);
                    if on {
                        self.resync_all(vtd, mem, dirty);
                    }
                }
                VtdEvent::PasidCache(PasidScope::Pasid { pasid, .. }) => {
                    let sids: Vec<u16> = self.shadow_devs.keys().copied().collect();
                    for sid in sids {
                        self.reconcile_pasid(vtd, mem, sid, pasid, dirty);
                    }
                    self.domains.retain(|_, d| !d.devices().is_empty());
                }
                VtdEvent::RootTable { .. } | VtdEvent::Context(_) | VtdEvent::PasidCache(_) => {
                    self.reconcile_all(vtd, mem, dirty)
                }
                VtdEvent::Resync | VtdEvent::Iotlb(IotlbScope::Global) => {
                    self.reconcile_all(vtd, mem, dirty);
                    self.resync_all(vtd, mem, dirty);
                }
                VtdEvent::Iotlb(scope) => {
                    let (did, pasid) = match scope {
                        IotlbScope::Domain { did } | IotlbScope::Pages { did, .. } => (did, None),
                        IotlbScope::Pasid { did, pasid }
                        | IotlbScope::PasidPages { did, pasid, .. } => (did, Some(pasid)),
                        IotlbScope::Global => continue,
                    };
                    for space in self.spaces_of(vtd, mem, did, pasid) {
                        self.resync(vtd, mem, space, scope.range(), dirty);
                    }
                }
                // Shadowed devices do not use ATS through the guest's
                // tables (the host IOMMU's own device-TLB follows the
                // shadow IOAS), and their page requests are not forwarded.
                VtdEvent::DeviceTlb { .. } | VtdEvent::PageGroupResponse { .. } => {}
            }
        }
        for (space, first) in std::mem::take(dirty) {
            self.sync_domain(vtd, mem, space, first);
        }
    }

    /// The spaces an IOTLB invalidation of `did` covers: 6.5.2.3, a
    /// domain- or page-selective IOTLB invalidation covers every
    /// translation tagged with the domain-id; 6.5.2.4, a PASID-based one
    /// only those also tagged with `pasid` (6.2.1: first-stage
    /// translations are tagged with both), i.e. the spaces a requester
    /// with that PASID is attached to (the RID's is RID_PASID, 9.4).
    fn spaces_of<M: GuestMemory + ?Sized>(
        &self,
        vtd: &Vtd,
        mem: &M,
        did: u16,
        pasid: Option<u32>,
    ) -> Vec<Space> {
        let of_did = self.domains.keys().filter(|s| s.did == did).copied();
        let Some(p) = pasid else {
            return of_did.collect();
        };
        let tagged = |&(sid, key): &Requester| match key {
            Some(k) => k.raw() == p,
            None => vtd.pasid_entry(mem, Bdf(sid), None).map(|l| l.pasid) == Some(p),
        };
        of_did
            .filter(|s| self.members(*s).iter().any(tagged))
            .collect()
    }

    fn reconcile_all<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        dirty: &mut Dirty,
    ) {
        let sids: Vec<u16> = self.shadow_devs.keys().copied().collect();
        for sid in sids {
            self.reconcile(vtd, mem, sid, dirty);
        }
        // A domain whose devices all left costs a host IOAS for nothing;
        // a device joining it again gets a fresh one, read in full.
        self.domains.retain(|_, d| !d.devices().is_empty());
    }

    /// Where requests of (`sid`, `key`) must go, per the guest's tables.
    fn target<M: GuestMemory + ?Sized>(&self, vtd: &Vtd, mem: &M, (sid, key): Requester) -> At {
        if !vtd.translation_enabled() {
            // 3.1 (GSTS.TES clear): requests without PASID are not
            // remapped; a requester in a domain sees RAM through the
            // domain's identity switch, other RIDs attach to the RAM IOAS.
            // Requests with PASID are blocked: the unit translates PASIDs
            // only through a scalable-mode root table it uses with TE.
            let at = self
                .shadow_devs
                .get(&sid)
                .and_then(|d| d.at.get(&key).copied());
            return match at {
                Some(At::Domain(s)) if key.is_none() && self.domains.contains_key(&s) => {
                    At::Domain(s)
                }
                _ if key.is_none() => At::Ram,
                _ => At::Blocked,
            };
        }
        let pasid = key.map(Pasid::raw);
        let (addr, ttm) = vtd.root_pointer();
        let caps = Caps::new(vtd.config());
        let tables = tables_for(mem, &caps, RootPointer { addr, ttm }, sid, pasid);
        let (stage, root, levels) = match tables {
            // 9.6 PGTT=100 (and legacy TT=10, 9.3): output = input.
            Ok(Tables::Identity) => return At::Ram,
            Ok(Tables::Second(p)) => (Stage::Second, p.root, p.levels),
            Ok(Tables::First(p)) => (Stage::First, p.root, p.levels),
            // Nested PGTT (9.6 PGTT=011) needs a nested HWPT, and a
            // faulting entry blocks: requests fault before any walk.
            Ok(Tables::Nested(..)) | Err(_) => return At::Blocked,
        };
        let did = match pasid {
            None => rid_did(mem, vtd, sid),
            Some(p) => vtd
                .pasid_entry(mem, Bdf(sid), Some(p))
                .map(|l| l.entry.did()),
        };
        did.map_or(At::Blocked, |did| {
            At::Domain(Space {
                did,
                stage,
                root,
                levels,
            })
        })
    }

    /// Attaches every requester of `sid` where the tables say: the RID,
    /// and with translation enabled every PASID whose entry is present in
    /// the device's PASID table (9.4 PASIDE, 9.5, 9.6); requesters no
    /// longer there are detached. A space joined afresh is read in full.
    fn reconcile<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
        dirty: &mut Dirty,
    ) {
        let Some(d) = self.shadow_devs.get(&sid) else {
            return;
        };
        let mut keys: BTreeSet<Option<Pasid>> = d.at.keys().copied().collect();
        keys.extend(d.faulted.iter().copied());
        keys.insert(None);
        if vtd.translation_enabled() {
            keys.extend(pasids_in_use(mem, vtd, sid).into_iter().map(Pasid::new));
        }
        for key in keys {
            self.reconcile_one(vtd, mem, (sid, key), dirty);
        }
    }

    /// Re-reads one PASID of `sid` after a PASID-selective PASID-cache
    /// invalidation (6.5.2.2: software sends one after changing that
    /// entry; Linux's `pasid.c` does for every entry it sets up or tears
    /// down), instead of the whole PASID table: the RID if it is the
    /// context's RID_PASID (9.4), else that PASID, unless the device
    /// already has [`super::MAX_NESTED_PASIDS_PER_DEVICE`] others.
    fn reconcile_pasid<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
        pasid: u32,
        dirty: &mut Dirty,
    ) {
        let rid_pasid =
            sm_context(mem, vtd, sid).map(|c| SmContextEntry::RID_PASID.get(c.q[1]) as u32);
        if rid_pasid == Some(pasid) {
            return self.reconcile_one(vtd, mem, (sid, None), dirty);
        }
        let (Some(key), Some(d)) = (Pasid::new(pasid), self.shadow_devs.get(&sid)) else {
            return;
        };
        let key = Some(key);
        let known = d.at.contains_key(&key) || d.faulted.contains(&key);
        let others = d.at.keys().filter(|k| k.is_some()).count();
        if known || others < MAX_NESTED_PASIDS_PER_DEVICE {
            self.reconcile_one(vtd, mem, (sid, key), dirty);
        } else {
            log::warn!(
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
        let Some(d) = self.shadow_devs.get_mut(&sid) else {
            return;
        };
        if want == At::Blocked {
            // No entry (any more): a later one is owed a fresh fault.
            d.faulted.remove(&key);
        }
        // VT-d 11.4.3 ECAP.PSS gives the guest PASIDs the host may not
        // attach (iommu_attach_device_pasid: pasid < max_pasids): such a
        // PASID's entry is one the (virtual) unit cannot use.
        let beyond_host = key.is_some_and(|p| u64::from(p.raw()) >> d.host_pasid_bits != 0);
        let result = if want != At::Blocked && beyond_host {
            log::warn!(
                "vtd passthrough {sid:#06x}: pasid {:#x} is beyond the host's {}-bit PASIDs; blocked",
                key.map_or(0, Pasid::raw),
                d.host_pasid_bits
            );
            if let Err(e) = self.move_to(req, At::Blocked) {
                warn_host("blocking a PASID the host cannot carry", sid, &e);
            }
            Err(None)
        } else {
            self.move_to(req, want).map_err(Some)
        };
        match result {
            Ok(fresh) => {
                if let Some(d) = self.shadow_devs.get_mut(&sid)
                    && want != At::Blocked
                {
                    d.faulted.remove(&key);
                }
                if let Some(space) = fresh {
                    self.resync(vtd, mem, space, None, dirty);
                }
            }
            Err(e) => {
                if let Some(e) = e {
                    warn_host("attaching a shadowed device", sid, &e);
                }
                let owed = self
                    .shadow_devs
                    .get_mut(&sid)
                    .is_some_and(|d| d.faulted.insert(key));
                if owed {
                    let pasid = key.map(Pasid::raw);
                    let rec = refusal_fault(sid, pasid, 0, entry_refused(vtd));
                    let fpd = fpd_of(mem, vtd, sid, pasid);
                    self.record(vtd, &rec, fpd);
                }
            }
        }
    }

    /// Attaches a requester to `want`; returns the space of a shadow
    /// domain made for it (empty: to be read in full). On failure the
    /// requester is left blocked.
    fn move_to(&mut self, req: Requester, want: At) -> Result<Option<Space>, PassthroughError> {
        let (sid, key) = req;
        let Some(d) = self.shadow_devs.get(&sid) else {
            return Ok(None);
        };
        let at = d.at.get(&key).copied().unwrap_or(At::Blocked);
        if at == want {
            return Ok(None);
        }
        let mut res = Ok(None);
        if key.is_some() && want != At::Blocked {
            res = self.enter_pasid_mode(sid).map(|()| None);
        }
        if res.is_ok() {
            res = self.attach_at(req, want);
        }
        let Some(d) = self.shadow_devs.get_mut(&sid) else {
            return res;
        };
        if res.is_err()
            && d.dev.is_attached(key)
            && let Err(e) = d.dev.detach(key)
        {
            warn_host("blocking after a refusal", sid, &e);
        }
        // The host no longer uses the old domain's HWPT for it: the old
        // domain may let go of it.
        if let At::Domain(old) = at
            && let Some(dom) = self.domains.get_mut(&old)
        {
            dom.forget(d.dev.id(), key);
        }
        match (&res, want) {
            (Ok(_), At::Ram | At::Domain(_)) => d.at.insert(key, want),
            _ => d.at.remove(&key),
        };
        res
    }

    /// Moves the device's RID, where it is, onto a PASID-capable HWPT
    /// (iommufd refuses a PASID attach while the RID's domain is not
    /// one); from then on the device's attaches all are.
    fn enter_pasid_mode(&mut self, sid: u16) -> Result<(), PassthroughError> {
        let Some(d) = self.shadow_devs.get_mut(&sid) else {
            return Ok(());
        };
        if d.pasid_mode {
            return Ok(());
        }
        match d.at.get(&None).copied() {
            Some(At::Domain(s)) => {
                if let Some(dom) = self.domains.get_mut(&s) {
                    dom.attach_pasid_capable(&mut d.dev, None)?;
                }
            }
            Some(At::Ram) => {
                let pt = self.ram_pt(sid, true)?;
                if let Some(d) = self.shadow_devs.get_mut(&sid) {
                    d.dev.attach(None, pt)?;
                }
            }
            Some(At::Blocked) | None => {}
        }
        if let Some(d) = self.shadow_devs.get_mut(&sid) {
            d.pasid_mode = true;
        }
        Ok(())
    }

    /// What a requester of `sid` attaches to for IOVA = GPA: the RAM IOAS,
    /// or (`pasid_capable`) the device's PASID-capable HWPT over it,
    /// allocated on first use.
    fn ram_pt(&mut self, sid: u16, pasid_capable: bool) -> Result<PtId, PassthroughError> {
        let ram = PtId::Ioas(self.ram.ioas().id());
        let Some(d) = self.shadow_devs.get_mut(&sid) else {
            return Ok(ram);
        };
        if !pasid_capable {
            return Ok(ram);
        }
        if let Some(h) = &d.ram_hwpt {
            return Ok(PtId::Hwpt(h.id()));
        }
        let req = HwptAlloc {
            dev: d.dev.id(),
            parent: ram,
            flags: HwptFlags::PASID,
            fault: None,
            data: HwptData::None,
        };
        let h = Hwpt::alloc(&self.host, &req)?;
        let id = h.id();
        d.ram_hwpt = Some(h);
        Ok(PtId::Hwpt(id))
    }

    /// The host side of [`PassthroughBackend::move_to`].
    fn attach_at(
        &mut self,
        (sid, key): Requester,
        want: At,
    ) -> Result<Option<Space>, PassthroughError> {
        let pasid_mode = self.shadow_devs.get(&sid).is_some_and(|d| d.pasid_mode);
        match want {
            At::Blocked => {
                if let Some(d) = self.shadow_devs.get_mut(&sid)
                    && d.dev.is_attached(key)
                {
                    d.dev.detach(key)?;
                }
                Ok(None)
            }
            At::Ram => {
                let pt = self.ram_pt(sid, pasid_mode || key.is_some())?;
                if let Some(d) = self.shadow_devs.get_mut(&sid) {
                    d.dev.attach(key, pt)?;
                }
                Ok(None)
            }
            At::Domain(space) => {
                let at_limit = self.domains.len() >= MAX_SHADOW_DOMAINS;
                let Some(d) = self.shadow_devs.get_mut(&sid) else {
                    return Ok(None);
                };
                let mut fresh = None;
                let dom = match self.domains.entry(space) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        if at_limit {
                            return Err(PassthroughError::TooManyDomains);
                        }
                        fresh = Some(space);
                        v.insert(ShadowDomain::new(&self.host, &self.ram)?)
                    }
                };
                let res = match pasid_mode {
                    true => dom.attach_pasid_capable(&mut d.dev, key),
                    false => dom.attach(&mut d.dev, key),
                };
                if let Err(e) = res {
                    if dom.devices().is_empty() {
                        self.domains.remove(&space);
                    }
                    return Err(e.into());
                }
                Ok(fresh)
            }
        }
    }

    fn resync_all<M: GuestMemory + ?Sized>(&mut self, vtd: &mut Vtd, mem: &M, dirty: &mut Dirty) {
        let spaces: Vec<Space> = self.domains.keys().copied().collect();
        for space in spaces {
            self.resync(vtd, mem, space, None, dirty);
        }
    }

    /// The requesters attached to the shadow domain of `space`.
    pub(super) fn members(&self, space: Space) -> Vec<Requester> {
        let mut out = Vec::new();
        for (&sid, d) in &self.shadow_devs {
            for (&key, &at) in &d.at {
                if at == At::Domain(space) {
                    out.push((sid, key));
                }
            }
        }
        out
    }

    /// Stages the guest's mappings of `range` (`None`: everything) into
    /// the shadow domain of `space`, replacing what it held there. Its
    /// members all use the space's tables, so any one of them reads them.
    fn resync<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &Vtd,
        mem: &M,
        space: Space,
        range: Option<(u64, u64)>,
        dirty: &mut Dirty,
    ) {
        let Some(&req) = self.members(space).first() else {
            return;
        };
        let Some(dom) = self.domains.get_mut(&space) else {
            return;
        };
        let (first, last) = match range {
            Some((addr, len)) => {
                if let Err(e) = dom.unmap(Iova(addr), len) {
                    log::warn!("vtd passthrough: {space:?}: unmap {addr:#x}+{len:#x}: {e}");
                    return;
                }
                (addr, addr.saturating_add(len - 1))
            }
            None => {
                dom.unmap_all();
                (0, u64::MAX)
            }
        };
        dirty
            .entry(space)
            .and_modify(|a| *a = (*a).min(first))
            .or_insert(first);
        if !stage_mappings(dom, vtd, mem, req, first, last) {
            log::warn!(
                "vtd passthrough: {space:?}: range up to {last:#x} not fully read after {MAX_ROUNDS_PER_RANGE} rounds; the rest stays unmapped"
            );
            self.stats.truncated_ranges += 1;
        }
    }

    /// Applies what is staged for `space`. The engine rolls back a failed
    /// sync, so the mappings the guest just made are missing on the host
    /// and its devices' DMA there will fail without the guest knowing:
    /// each requester of the domain gets a fault record for the first
    /// address of the failed change, with the reason a unit gives when it
    /// cannot use a paging entry (0x70 first stage, 0x78 second stage,
    /// 0x7 legacy).
    fn sync_domain<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        space: Space,
        address: u64,
    ) {
        let Some(dom) = self.domains.get_mut(&space) else {
            return;
        };
        let Err(e) = dom.sync() else {
            return;
        };
        log::warn!("vtd passthrough: {space:?}: sync failed: {e}");
        for (sid, key) in self.members(space) {
            let pasid = key.map(Pasid::raw);
            let reason = match vtd
                .pasid_entry(mem, Bdf(sid), pasid)
                .map(|l| l.entry.pgtt())
            {
                Some(Pgtt::FirstStage) => FaultReason::FsEntryAccess,
                Some(_) => FaultReason::SsEntryAccess,
                None => FaultReason::PagingEntryAccess,
            };
            let fpd = fpd_of(mem, vtd, sid, pasid);
            self.record(vtd, &refusal_fault(sid, pasid, address, reason), fpd);
        }
    }

    /// Detaches every requester of a removed device (PASIDs first: the
    /// RID's domain stays in place while they go) and drops the domains
    /// left empty.
    pub(super) fn take_shadowed(&mut self, sid: u16) -> Option<BoundDevice> {
        let mut d = self.shadow_devs.remove(&sid)?;
        let mut keys: Vec<(Option<Pasid>, At)> = std::mem::take(&mut d.at).into_iter().collect();
        keys.sort_by_key(|(k, _)| k.is_none());
        for (key, at) in keys {
            let res = match at {
                At::Domain(s) => match self.domains.get_mut(&s) {
                    Some(dom) => dom.detach(&mut d.dev, key).map_err(PassthroughError::from),
                    None => d.dev.detach(key).map_err(PassthroughError::from),
                },
                At::Ram => d.dev.detach(key).map_err(PassthroughError::from),
                At::Blocked => Ok(()),
            };
            if let Err(e) = res {
                warn_host("detaching a shadowed device", sid, &e);
            }
        }
        self.domains.retain(|_, dom| !dom.devices().is_empty());
        let ShadowDev { dev, ram_hwpt, .. } = d;
        drop(ram_hwpt);
        Some(dev)
    }
}

/// Stages into `dom` the mappings the tables of `req` hold in `[first,
/// last]`, in rounds of at most [`MAX_ENTRIES_PER_ENUMERATION`] entries;
/// false if [`MAX_ROUNDS_PER_RANGE`] rounds did not finish.
fn stage_mappings<M: GuestMemory + ?Sized>(
    dom: &mut ShadowDomain,
    vtd: &Vtd,
    mem: &M,
    (sid, key): Requester,
    mut first: u64,
    last: u64,
) -> bool {
    let pasid = key.map(Pasid::raw);
    for _ in 0..MAX_ROUNDS_PER_RANGE {
        let budget = MAX_ENTRIES_PER_ENUMERATION;
        let view = vtd.table_view(mem, Bdf(sid), pasid, first, last, budget);
        let TableView::Mappings {
            list,
            complete,
            resume,
        } = view
        else {
            // Identity or blocked: the requester moves at the next
            // context event; nothing to mirror.
            return true;
        };
        for m in list {
            let len = 1u64 << m.shift;
            if let Err(e) = dom.map(Iova(m.iova), Gpa(m.gpa), len, m.perms & Access::RW) {
                log::warn!("vtd passthrough {sid:#06x}: map {:#x}: {e}", m.iova);
            }
        }
        if complete {
            return true;
        }
        first = resume;
    }
    false
}
