//! [`Registry::stage`]: a plan checked in full, then applied all or
//! nothing, undone on the host's first refusal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{
    Applied, Backing, Invalid, Place, Plan, Registry, Requester, StageError, Step, counted_sync,
};
use crate::shadow::{ShadowDomain, ShadowError, Span};
use crate::types::{Gpa, Iova};

/// Undo information of one applied step.
enum Undo<S> {
    /// The mappings a space held in a range before the plan.
    Space {
        space: S,
        ranges: Vec<(u64, u64)>,
        old: Vec<Span>,
    },
    /// Where a requester was.
    Moved { req: Requester, from: Place<S> },
}

impl<S: Copy + Ord + fmt::Debug> Registry<S> {
    // -- staging ---------------------------------------------------------

    /// Applies `plan`, all or nothing: checked in full first (nothing is
    /// done for an [`StageError::Invalid`] plan), then mapping changes
    /// space by space (each space's one sync), then moves in order; spaces
    /// no requester is left in are destroyed last. When the host refuses a
    /// step, every step done before it is undone and the host is as it was.
    pub fn stage(&mut self, plan: &Plan<S>) -> Result<Applied<S>, StageError> {
        if let Err((step, why)) = self.validate(plan) {
            self.stats.invalid += 1;
            return Err(StageError::Invalid { step, why });
        }
        let created = self.create_spaces(plan)?;
        let mut undo: Vec<Undo<S>> = Vec::new();
        let res = self
            .apply_mappings(plan, &mut undo)
            .and_then(|()| self.apply_moves(plan, &mut undo));
        if let Err(e) = res {
            self.stats.refused += 1;
            self.undo(undo);
            for s in &created {
                self.spaces.remove(s);
            }
            self.drop_unused();
            return Err(e);
        }
        self.stats.plans += 1;
        let destroyed = self.drop_unused();
        let created = created
            .into_iter()
            .filter(|s| self.spaces.contains_key(s))
            .collect();
        Ok(Applied { created, destroyed })
    }

    fn validate(&self, plan: &Plan<S>) -> Result<(), (usize, Invalid)> {
        let targets: BTreeSet<S> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Place {
                    to: Place::Shadow(sp),
                    ..
                } => Some(*sp),
                _ => None,
            })
            .collect();
        let new = targets
            .iter()
            .filter(|s| !self.spaces.contains_key(s))
            .count();
        for (i, step) in plan.steps.iter().enumerate() {
            match *step {
                Step::Map {
                    space,
                    iova,
                    gpa,
                    len,
                    ..
                } => self.check_range(space, &targets, iova, gpa.raw(), len),
                Step::Unmap { space, iova, len } => self.check_range(space, &targets, iova, 0, len),
                Step::Clear { space } => self.check_space(space, &targets),
                Step::Place { req, to } => self.check_place(req, to),
            }
            .map_err(|why| (i, why))?;
        }
        if self.spaces.len() + new > self.max_spaces {
            let i = plan
                .steps
                .iter()
                .position(|s| matches!(s, Step::Place { to: Place::Shadow(sp), .. } if !self.spaces.contains_key(sp)))
                .unwrap_or(0);
            return Err((i, Invalid::TooManySpaces));
        }
        Ok(())
    }

    fn check_space(&self, space: S, targets: &BTreeSet<S>) -> Result<(), Invalid> {
        match self.spaces.contains_key(&space) || targets.contains(&space) {
            true => Ok(()),
            false => Err(Invalid::NoSpace),
        }
    }

    fn check_range(
        &self,
        space: S,
        targets: &BTreeSet<S>,
        iova: Iova,
        gpa: u64,
        len: u64,
    ) -> Result<(), Invalid> {
        self.check_space(space, targets)?;
        // A new space's IOAS starts at the smallest page any IOMMU has.
        let align = self.spaces.get(&space).map_or(4096, |d| d.alignment());
        let a = align.saturating_sub(1);
        let ok = len != 0
            && (iova.raw() | gpa | len) & a == 0
            && gpa.checked_add(len - 1).is_some()
            && iova.raw().checked_add(len - 1).is_some();
        match ok {
            true => Ok(()),
            false => Err(Invalid::BadRange),
        }
    }

    fn check_place(&self, req: Requester, to: Place<S>) -> Result<(), Invalid> {
        let d = self.devices.get(&req.0).ok_or(Invalid::NoEndpoint)?;
        let fits = matches!(
            (d.backing, to),
            (_, Place::Blocked)
                | (Backing::Shadow, Place::Identity | Place::Shadow(_))
                | (Backing::Nested, Place::Nested(_))
        );
        if !fits {
            return Err(Invalid::WrongBacking);
        }
        if to != Place::Blocked && !self.carries(req) {
            return Err(Invalid::PasidBeyondHost);
        }
        Ok(())
    }

    /// Makes the spaces the plan moves requesters into that do not exist.
    fn create_spaces(&mut self, plan: &Plan<S>) -> Result<Vec<S>, StageError> {
        let mut created = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let Step::Place {
                to: Place::Shadow(s),
                ..
            } = *step
            else {
                continue;
            };
            if self.spaces.contains_key(&s) {
                continue;
            }
            match ShadowDomain::new(&self.host, &self.ram) {
                Ok(d) => {
                    self.spaces.insert(s, d);
                    created.push(s);
                }
                Err(e) => {
                    for c in &created {
                        self.spaces.remove(c);
                    }
                    self.stats.refused += 1;
                    return Err(StageError::Host {
                        step: i,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(created)
    }

    /// Stages each space's mapping changes and syncs it once; a refusal
    /// names the space's last step.
    fn apply_mappings(
        &mut self,
        plan: &Plan<S>,
        undo: &mut Vec<Undo<S>>,
    ) -> Result<(), StageError> {
        let mut touched: BTreeMap<S, Vec<usize>> = BTreeMap::new();
        for (i, step) in plan.steps.iter().enumerate() {
            if let Step::Map { space, .. } | Step::Unmap { space, .. } | Step::Clear { space } =
                *step
            {
                touched.entry(space).or_default().push(i);
            }
        }
        for (space, steps) in touched {
            let Some(dom) = self.spaces.get_mut(&space) else {
                continue;
            };
            let last_step = steps.last().copied().unwrap_or(0);
            let ranges: Vec<(u64, u64)> = steps
                .iter()
                .filter_map(|&i| match plan.steps[i] {
                    Step::Map { iova, len, .. } | Step::Unmap { iova, len, .. } => {
                        Some((iova.raw(), iova.raw() + (len - 1)))
                    }
                    Step::Clear { .. } => Some((0, u64::MAX)),
                    Step::Place { .. } => None,
                })
                .collect();
            let old: Vec<Span> = ranges
                .iter()
                .flat_map(|&(f, l)| dom.guest_overlapping(f, l))
                .collect();
            let host = |source: ShadowError| StageError::Host {
                step: last_step,
                source: source.into(),
            };
            for &i in &steps {
                let staged = match plan.steps[i] {
                    Step::Map {
                        iova,
                        gpa,
                        len,
                        access,
                        ..
                    } => dom.map(iova, gpa, len, access),
                    Step::Unmap { iova, len, .. } => dom.unmap(iova, len),
                    Step::Clear { .. } => {
                        dom.unmap_all();
                        Ok(())
                    }
                    Step::Place { .. } => Ok(()),
                };
                if let Err(e) = staged {
                    // Validated ranges stage; this is the engine's own
                    // limit. Nothing of this space was synced.
                    dom.discard_staged();
                    return Err(host(e));
                }
            }
            counted_sync(&mut self.stats.shadow_host_calls, dom).map_err(host)?;
            undo.push(Undo::Space { space, ranges, old });
        }
        Ok(())
    }

    fn apply_moves(&mut self, plan: &Plan<S>, undo: &mut Vec<Undo<S>>) -> Result<(), StageError> {
        for (i, step) in plan.steps.iter().enumerate() {
            let Step::Place { req, to } = *step else {
                continue;
            };
            let from = self.place(req);
            if from == to && !self.stranded_at(req) {
                continue;
            }
            self.move_to(req, to)
                .map_err(|source| StageError::Host { step: i, source })?;
            undo.push(Undo::Moved { req, from });
        }
        Ok(())
    }

    /// Undoes applied steps, last first. A move back the host refuses
    /// leaves the requester blocked; a space whose old mappings cannot be
    /// restored keeps the plan's (both logged and counted).
    fn undo(&mut self, undo: Vec<Undo<S>>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Moved { req, from } => {
                    if let Err(e) = self.move_to(req, from) {
                        crate::guest_log!(
                            Error,
                            "passthrough {req:?}: cannot move back to {from:?}: {e}"
                        );
                        self.stats.undo_failures += 1;
                        if let Err(e) = self.move_to(req, Place::Blocked) {
                            crate::guest_log!(
                                Error,
                                "passthrough {req:?}: cannot block it either: {e}"
                            );
                        }
                    }
                }
                Undo::Space { space, ranges, old } => {
                    let Some(dom) = self.spaces.get_mut(&space) else {
                        continue;
                    };
                    let mut res = Ok(());
                    for &(f, l) in &ranges {
                        res = res.and(match l.checked_sub(f).and_then(|n| n.checked_add(1)) {
                            Some(len) => dom.unmap(Iova(f), len),
                            None => {
                                dom.unmap_all();
                                Ok(())
                            }
                        });
                    }
                    for s in &old {
                        res = res.and(dom.map(Iova(s.first), Gpa(s.gpa), s.len(), s.access));
                    }
                    let calls = &mut self.stats.shadow_host_calls;
                    if let Err(e) = res.and_then(|()| counted_sync(calls, dom).map(|_| ())) {
                        crate::guest_log!(
                            Error,
                            "passthrough space {space:?}: cannot restore it: {e}"
                        );
                        self.stats.undo_failures += 1;
                    }
                }
            }
        }
    }

    /// Destroys the spaces no requester is in; returns them.
    pub(super) fn drop_unused(&mut self) -> Vec<S> {
        let gone: Vec<S> = self
            .spaces
            .iter()
            .filter(|(_, d)| d.devices().is_empty())
            .map(|(s, _)| *s)
            .collect();
        for s in &gone {
            self.spaces.remove(s);
        }
        gone
    }
}
