//! Nested passthrough devices: each guest PASID entry (and RID_PASID for
//! the RID) becomes a nested context in the registry; IOTLB invalidations
//! become stage-1 invalidations sent at the sync point.

use std::collections::BTreeSet;

use nesting_core::nested::NestedContext;
use nesting_core::passthrough::{Place, Plan, Step};
use nesting_core::types::{Bdf, Pasid};
use vm_memory::GuestMemory;

use super::{
    EntryTag, HostRefusal, MAX_NESTED_PASIDS_PER_DEVICE, PassthroughBackend, pasids_in_use,
    rid_pasid, warn_host,
};
use crate::Vtd;
use crate::nesting::{
    ContextScope, IotlbScope, PasidScope, VtdEvent, function_siblings, stage1_hwpt,
    stage1_invalidation,
};
use crate::shadow::{MIN_BUDGET, TableView};
use crate::tables::{PasidEntry, Pgtt};

/// A queued stage-1 invalidation's tag: the requester it is for.
type Tags = Vec<(u16, Option<Pasid>)>;

/// What a requester's guest entry nests as, with what the entry says.
type Want = (NestedContext, EntryTag);

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
fn located(sid: u16, l: &crate::translate::Located) -> Want {
    let ctx = nested_context(&l.entry);
    if ctx.is_none() {
        nesting_core::guest_log!(
            Debug,
            "vtd passthrough {sid:#06x} pasid {}: PGTT {:?} cannot nest; blocked",
            l.pasid,
            l.entry.pgtt()
        );
    }
    let tag = EntryTag {
        pasid: l.pasid,
        did: l.entry.did(),
        fpd: l.fpd,
        cannot_nest: ctx.is_none(),
    };
    (ctx.unwrap_or(NestedContext::Abort), tag)
}

/// Whether an IOTLB invalidation of `scope` covers what a context tagged
/// `tag` caches (6.5.2.3, 6.5.2.4): global covers everything; domain- and
/// page-selective IOTLB invalidations every PASID of the domain;
/// PASID-based ones one PASID of the domain.
fn covers(scope: &IotlbScope, tag: &EntryTag) -> bool {
    match *scope {
        IotlbScope::Global => true,
        IotlbScope::Domain { did } | IotlbScope::Pages { did, .. } => tag.did == did,
        IotlbScope::Pasid { did, pasid } | IotlbScope::PasidPages { did, pasid, .. } => {
            tag.did == did && tag.pasid == pasid
        }
    }
}

fn place_of(ctx: NestedContext) -> Place<super::Space> {
    match ctx {
        NestedContext::Abort => Place::Blocked,
        c => Place::Nested(c),
    }
}

impl PassthroughBackend {
    pub(super) fn sync_nested<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        events: &[VtdEvent],
    ) -> Result<(), HostRefusal> {
        let mut tags = Tags::new();
        let mut res = Ok(());
        // Every read happens now, at the sync point: what a device's
        // entries say does not change between two events of one sync, so
        // each device is rescanned (and each PASID re-read) once however
        // many context or PASID-cache invalidations the guest queued
        // before its wait. A later event covered by an earlier rescan
        // changes nothing and needs no flush either.
        let mut all = false;
        let mut devices: BTreeSet<u16> = BTreeSet::new();
        let mut pasids: BTreeSet<u32> = BTreeSet::new();
        for ev in events {
            match *ev {
                VtdEvent::TranslationEnabled(_)
                | VtdEvent::RootTable { .. }
                | VtdEvent::Resync
                | VtdEvent::Context(ContextScope::Global | ContextScope::Domain { .. })
                | VtdEvent::PasidCache(PasidScope::Global | PasidScope::Domain { .. }) => {
                    if std::mem::replace(&mut all, true) {
                        continue;
                    }
                    // A context change must not race invalidations queued
                    // for HWPTs it replaces.
                    res = res.and(self.flush_nested(vtd, &mut tags));
                    for sid in self.sids() {
                        if devices.insert(sid) {
                            self.rescan_nested(vtd, mem, sid);
                        }
                    }
                }
                VtdEvent::Context(ContextScope::Device { sid, fm, .. }) => {
                    let todo: Vec<u16> = function_siblings(sid, fm)
                        .filter(|s| self.reg.contains(u32::from(*s)) && !devices.contains(s))
                        .collect();
                    if all || todo.is_empty() {
                        continue;
                    }
                    res = res.and(self.flush_nested(vtd, &mut tags));
                    for s in todo {
                        devices.insert(s);
                        self.rescan_nested(vtd, mem, s);
                    }
                }
                VtdEvent::PasidCache(PasidScope::Pasid { pasid, .. }) => {
                    if all || !pasids.insert(pasid) {
                        continue;
                    }
                    res = res.and(self.flush_nested(vtd, &mut tags));
                    for sid in self.sids() {
                        if !devices.contains(&sid) {
                            self.reread_pasid(vtd, mem, sid, pasid);
                        }
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
        res.and(self.flush_nested(vtd, &mut tags))
    }

    /// Re-reads every PASID entry of a nested device and installs,
    /// replaces or removes its contexts to match.
    pub(super) fn rescan_nested<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        sid: u16,
    ) {
        let mut want: Vec<(Option<Pasid>, Option<Want>)> =
            vec![(None, Some(self.rid_context(vtd, mem, sid)))];
        if vtd.translation_enabled() {
            for p in pasids_in_use(mem, vtd, sid) {
                want.push((Pasid::new(p), self.pasid_context(vtd, mem, sid, p)));
            }
        }
        let stale: Vec<Option<Pasid>> = self
            .reg
            .requesters(u32::from(sid))
            .into_iter()
            .map(|(k, _)| k)
            .chain(self.tags.keys().filter(|(s, _)| *s == sid).map(|(_, k)| *k))
            .filter(|k| k.is_some() && !want.iter().any(|(w, _)| w == k))
            .collect();
        want.extend(stale.into_iter().map(|k| (k, None)));
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
        if rid_pasid(mem, vtd, sid) == Some(pasid) {
            let ctx = self.rid_context(vtd, mem, sid);
            return self.apply_context(vtd, sid, None, Some(ctx));
        }
        let Some(key) = Pasid::new(pasid) else {
            return;
        };
        let ctx = match vtd.translation_enabled() {
            true => self.pasid_context(vtd, mem, sid, pasid),
            false => None,
        };
        let known = self.tags.contains_key(&(sid, Some(key)));
        let others = self
            .tags
            .keys()
            .filter(|(s, k)| *s == sid && k.is_some())
            .count();
        if known || others < MAX_NESTED_PASIDS_PER_DEVICE {
            self.apply_context(vtd, sid, Some(key), ctx);
        }
    }

    /// What requests without PASID of `sid` nest as: the RID_PASID entry
    /// in scalable mode (9.4); untranslated with translation disabled
    /// (GSTS.TES clear); otherwise (legacy tables, absent or invalid
    /// entries) blocked.
    fn rid_context<M: GuestMemory + ?Sized>(&self, vtd: &Vtd, mem: &M, sid: u16) -> Want {
        let blocked = EntryTag {
            pasid: 0,
            did: 0,
            fpd: false,
            cannot_nest: false,
        };
        if !vtd.translation_enabled() {
            return (NestedContext::Bypass, blocked);
        }
        if let Some(l) = vtd.pasid_entry(mem, Bdf(sid), None) {
            return located(sid, &l);
        }
        // Legacy pass-through contexts (TT=10) are untranslated too.
        match vtd.table_view(mem, Bdf(sid), None, 0, 0, MIN_BUDGET) {
            TableView::Identity => (NestedContext::Bypass, blocked),
            _ => (NestedContext::Abort, blocked),
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
    ) -> Option<Want> {
        let l = vtd.pasid_entry(mem, Bdf(sid), Some(pasid))?;
        Some(located(sid, &l))
    }

    /// Makes the host context of (`sid`, `key`) what the guest's entry says
    /// (`None`: no entry, blocked and forgotten). A refusal of the host
    /// blocks the requester and records a fault for it, as does an entry
    /// that cannot nest.
    fn apply_context(&mut self, vtd: &mut Vtd, sid: u16, key: Option<Pasid>, want: Option<Want>) {
        let req = (u32::from(sid), key);
        let Some((ctx, tag)) = want else {
            self.tags.remove(&(sid, key));
            self.faulted.remove(&(sid, key));
            self.place(sid, req, Place::Blocked);
            return;
        };
        let old = self.tags.insert((sid, key), tag);
        let to = place_of(ctx);
        let placed = self.reg.place(req) == to || self.place(sid, req, to);
        if !placed {
            self.refusal_fault(vtd, sid, key, tag.fpd);
            return;
        }
        let newly_unnestable =
            tag.cannot_nest && old.is_none_or(|o| !o.cannot_nest || o.pasid != tag.pasid);
        if newly_unnestable {
            self.faulted.remove(&(sid, key));
            self.refusal_fault(vtd, sid, key, tag.fpd);
        } else if !tag.cannot_nest {
            self.faulted.remove(&(sid, key));
        }
    }

    /// Moves one requester; on a host refusal it is blocked instead.
    /// Returns whether it ended up where asked.
    fn place(&mut self, sid: u16, req: (u32, Option<Pasid>), to: Place<super::Space>) -> bool {
        let plan = Plan {
            steps: vec![Step::Place { req, to }],
        };
        let Err(e) = self.reg.stage(&plan) else {
            return true;
        };
        warn_host("installing a nested context", sid, &e);
        let block = Plan {
            steps: vec![Step::Place {
                req,
                to: Place::Blocked,
            }],
        };
        if let Err(e) = self.reg.stage(&block) {
            warn_host("blocking after a refusal", sid, &e);
        }
        // Asked to block it, and blocked at the second try: nothing the
        // guest asked for was refused (no fault owed, and none flagged
        // that would silence the fault of its next entry's refusal).
        to == Place::Blocked && self.reg.place(req) == Place::Blocked
    }

    fn queue_iotlb(&mut self, scope: &IotlbScope, tags: &mut Tags) {
        let inv = stage1_invalidation(scope);
        let targets: Vec<(u16, Option<Pasid>)> = self
            .tags
            .iter()
            .filter(|((sid, key), tag)| {
                covers(scope, tag)
                    && matches!(
                        self.reg.place((u32::from(*sid), *key)),
                        Place::Nested(NestedContext::VtdS1 { .. })
                    )
            })
            .map(|(k, _)| *k)
            .collect();
        let Some(engine) = self.reg.nested_mut() else {
            return;
        };
        for (sid, key) in targets {
            let tag = tags.len() as u64;
            if engine.queue_vtd(u64::from(sid), key, inv, tag) {
                tags.push((sid, key));
            }
        }
    }

    /// Sends the queued stage-1 invalidations. An entry the host fails
    /// (and those after it, never sent) leaves the host's IOTLB possibly
    /// stale: the context is rebuilt (a fresh HWPT has no cached
    /// translations), or blocked with a fault if the host refuses that
    /// too, and the failure is returned so the guest's wait does not
    /// complete (FSTS.ITE, see the module documentation).
    fn flush_nested(&mut self, vtd: &mut Vtd, tags: &mut Tags) -> Result<(), HostRefusal> {
        let Some(engine) = self.reg.nested_mut() else {
            return Ok(());
        };
        if engine.queued() == 0 {
            tags.clear();
            return Ok(());
        }
        let report = engine.flush();
        self.stats.invalidate_calls += report.calls;
        self.stats.invalidations += report.handled;
        let mut res = Ok(());
        for f in report.failures {
            let Some(&(sid, key)) = usize::try_from(f.tag).ok().and_then(|t| tags.get(t)) else {
                continue;
            };
            nesting_core::guest_log!(
                Warn,
                "vtd passthrough {sid:#06x} {key:?}: invalidation failed ({}), {} entries unsent",
                f.error,
                f.unsent.len()
            );
            self.rebuild_context(vtd, sid, key);
            res = res.and(Err(HostRefusal { sid }));
        }
        tags.clear();
        res
    }

    /// Replaces a context by a fresh HWPT of the same tables (through
    /// blocking, so the engine allocates anew).
    fn rebuild_context(&mut self, vtd: &mut Vtd, sid: u16, key: Option<Pasid>) {
        let req = (u32::from(sid), key);
        let Place::Nested(ctx) = self.reg.place(req) else {
            return;
        };
        let plan = Plan {
            steps: vec![
                Step::Place {
                    req,
                    to: Place::Blocked,
                },
                Step::Place {
                    req,
                    to: Place::Nested(ctx),
                },
            ],
        };
        if let Err(e) = self.reg.stage(&plan) {
            warn_host("rebuilding after a failed invalidation", sid, &e);
            self.place(sid, req, Place::Blocked);
            let fpd = self.tags.get(&(sid, key)).is_some_and(|t| t.fpd);
            self.refusal_fault(vtd, sid, key, fpd);
        }
    }
}
