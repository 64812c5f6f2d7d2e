//! The passthrough registry: where each requester of the VM's passthrough
//! devices is on the host, kept once for every model.
//!
//! A requester is an endpoint's requests without PASID (its RID) or with
//! one PASID ([`Requester`]); an endpoint is what the model calls its
//! devices by (VT-d source-id, SMMUv3 StreamID, virtio-iommu endpoint ID).
//! Each requester is at one [`Place`]: blocked, at IOVA = GPA over guest
//! RAM (identity), in a shadow space the model names (`S`: a virtio-iommu
//! domain, a VT-d domain-id with its tables), or under a nested context.
//!
//! The registry owns the bound devices, the shadow spaces (one
//! [`ShadowDomain`] each, made when a requester first goes there and
//! destroyed when the last one leaves) and the nested engine. A model
//! changes the host through one call, [`Registry::stage`], with a
//! [`Plan`]: mapping changes per space and requester moves. The plan is
//! checked in full before the host is touched, then applied all or
//! nothing: when the host refuses a step, what the plan already did is
//! undone and the host is as it was before the call.
//!
//! iommufd's PASID rule is kept here, once: a PASID attaches only to a HWPT
//! allocated with `IOMMU_HWPT_ALLOC_PASID`, and while any PASID of a
//! device is attached its RID must be on such a HWPT too
//! (`iommufd_hwpt_pasid_compat`, drivers/iommu/iommufd/device.c). The first
//! PASID of a device to leave blocking moves its RID, where it is, onto a
//! PASID-capable HWPT over the same IOAS; from then on every attach of the
//! device is PASID-capable, until it is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::host::objects::{BoundDevice, Hwpt, SharedHost};
use crate::host::{HostError, HostOp, HwptAlloc, HwptData, HwptFlags, PtId};
use crate::ladder::HostView;
use crate::nested::{NestedConfig, NestedContext, NestedEngine, NestedError};
use crate::ram::RamIoas;
use crate::shadow::{ShadowDomain, ShadowError, Span};
use crate::types::{Access, Gpa, Iova, Pasid};

/// An endpoint: the model's name for a passthrough device.
pub type Endpoint = u32;

/// An endpoint's requests without PASID (`None`) or with one PASID.
pub type Requester = (Endpoint, Option<Pasid>);

/// Most shadow spaces one registry keeps by default: each is a host IOAS
/// (and a HWPT per PASID-capable device in it). Requesters are bounded by
/// the model, but a guest giving every requester a space of its own must
/// not make the VMM allocate IOASes without bound; a plan that would pass
/// this is refused before it touches the host.
pub const MAX_SPACES: usize = 4096;

/// Where a requester is on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place<S> {
    /// No DMA.
    Blocked,
    /// Guest RAM at IOVA = GPA (the RAM IOAS).
    Identity,
    /// The shadow space `S`.
    Shadow(S),
    /// A nested context (nested devices only).
    Nested(NestedContext),
}

/// How a device is backed, as the ladder decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Its requesters are blocked, identity or in shadow spaces.
    Shadow,
    /// Its requesters are blocked or under nested contexts.
    Nested,
}

/// One change of a [`Plan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<S> {
    /// The guest maps `len` bytes at `iova` to `gpa` in space `space`,
    /// replacing what was there.
    Map {
        /// The space.
        space: S,
        /// First address.
        iova: Iova,
        /// Guest-physical address it maps to.
        gpa: Gpa,
        /// Bytes.
        len: u64,
        /// Read and write permission.
        access: Access,
    },
    /// The guest's mappings of `[iova, iova + len)` in `space` go.
    Unmap {
        /// The space.
        space: S,
        /// First address.
        iova: Iova,
        /// Bytes.
        len: u64,
    },
    /// Every mapping of `space` goes.
    Clear {
        /// The space.
        space: S,
    },
    /// A requester moves.
    Place {
        /// Who.
        req: Requester,
        /// Where to.
        to: Place<S>,
    },
}

/// Host changes applied together by [`Registry::stage`]. Mapping changes
/// of a space apply in their order; a space that does not exist yet is
/// made for the requesters the plan moves into it, with the mappings the
/// plan gives it, before they arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<S> {
    /// The changes, in order.
    pub steps: Vec<Step<S>>,
}

impl<S> Default for Plan<S> {
    fn default() -> Self {
        Plan { steps: Vec::new() }
    }
}

impl<S> Plan<S> {
    /// An empty plan.
    pub fn new() -> Self {
        Plan::default()
    }

    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Adds a step.
    pub fn push(&mut self, step: Step<S>) -> &mut Self {
        self.steps.push(step);
        self
    }
}

/// Why a plan was refused before anything was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The endpoint is not a passthrough device of this registry.
    NoEndpoint,
    /// The place does not fit how the device is backed (a shadow space for
    /// a nested device, a nested context for a shadowed one).
    WrongBacking,
    /// The host attaches no PASID this large for the device.
    PasidBeyondHost,
    /// A mapping change for a space that neither exists nor receives a
    /// requester in the plan.
    NoSpace,
    /// A mapping that is empty, wraps, or is not aligned to the space's
    /// host page.
    BadRange,
    /// More than the registry's limit of spaces.
    TooManySpaces,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invalid::NoEndpoint => "not a passthrough endpoint",
            Invalid::WrongBacking => "the place does not fit how the device is backed",
            Invalid::PasidBeyondHost => "the host attaches no PASID this large for the device",
            Invalid::NoSpace => "no such space, and no requester moves into it",
            Invalid::BadRange => "empty, wrapping or unaligned range",
            Invalid::TooManySpaces => "too many shadow spaces",
        })
    }
}

/// A failure of [`Registry::stage`]; the host is as it was before the
/// call.
#[derive(Debug, Error)]
pub enum StageError {
    /// The plan was refused before the host was touched.
    #[error("step {step}: {why}")]
    Invalid {
        /// Index of the offending step.
        step: usize,
        /// Why.
        why: Invalid,
    },
    /// The host refused step `step` (for mapping changes: the sync of
    /// that step's space).
    #[error("step {step}: the host refused it")]
    Host {
        /// Index of the step.
        step: usize,
        /// The host's failure.
        #[source]
        source: HostFailure,
    },
}

impl StageError {
    /// The step that was refused.
    pub fn step(&self) -> usize {
        match self {
            StageError::Invalid { step, .. } | StageError::Host { step, .. } => *step,
        }
    }

    /// Whether the host ran out of memory or IOVA space (or the plan would
    /// pass a limit), rather than failing otherwise.
    pub fn is_no_memory(&self) -> bool {
        match self {
            StageError::Invalid { why, .. } => *why == Invalid::TooManySpaces,
            StageError::Host { source, .. } => source.is_no_memory(),
        }
    }

    /// The host call that refused the plan (`None` for a plan refused
    /// before the host was touched, or an engine's own limit): a model
    /// tells a device that cannot join an address space (an attach
    /// refused) from a host that failed otherwise.
    pub fn host_op(&self) -> Option<HostOp> {
        match self {
            StageError::Invalid { .. } => None,
            StageError::Host { source, .. } => source.op(),
        }
    }
}

/// A host failure under the registry.
#[derive(Debug, Error)]
pub enum HostFailure {
    /// An attach, detach or HWPT allocation.
    #[error("host")]
    Host(#[from] HostError),
    /// A shadow space.
    #[error("shadow engine")]
    Shadow(#[from] ShadowError),
    /// The nested engine.
    #[error("nested engine")]
    Nested(#[from] NestedError),
}

impl HostFailure {
    /// Whether the host ran out of memory or IOVA space.
    pub fn is_no_memory(&self) -> bool {
        let errno = match self {
            HostFailure::Shadow(e) => return e.is_no_memory(),
            HostFailure::Host(e) => e.errno,
            HostFailure::Nested(NestedError::Host { source }) => source.errno,
            HostFailure::Nested(_) => return false,
        };
        errno == crate::host::Errno::ENOMEM || errno == crate::host::Errno::ENOSPC
    }

    /// The host call that failed (`None` for an engine's own limit or
    /// refusal, which is no host call).
    pub fn op(&self) -> Option<HostOp> {
        match self {
            HostFailure::Host(e) => Some(e.op),
            HostFailure::Shadow(
                ShadowError::NoMemory { source } | ShadowError::Host { source },
            ) => Some(source.op),
            HostFailure::Shadow(_) => None,
            HostFailure::Nested(NestedError::Host { source }) => Some(source.op),
            HostFailure::Nested(_) => None,
        }
    }
}

/// Totals since creation, for a VMM's statistics and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Plans applied.
    pub plans: u64,
    /// Plans refused before the host was touched.
    pub invalid: u64,
    /// Plans the host refused (and that were undone).
    pub refused: u64,
    /// Undo steps the host refused in turn (the requester was blocked).
    pub undo_failures: u64,
    /// Host calls (MAP, COPY, UNMAP) the shadow spaces' syncs made,
    /// failed and undoing ones included.
    pub shadow_host_calls: u64,
}

/// Syncs `dom`, adding the host calls it made to `calls`.
fn counted_sync(
    calls: &mut u64,
    dom: &mut ShadowDomain,
) -> Result<crate::shadow::SyncReport, ShadowError> {
    let before = dom.stats().host_calls;
    let res = dom.sync();
    *calls += dom.stats().host_calls.saturating_sub(before);
    res
}

/// One passthrough device.
#[derive(Debug)]
struct Device<S> {
    backing: Backing,
    /// The bound device; `None` while the nested engine holds it.
    dev: Option<BoundDevice>,
    /// Where its requesters are; absent: blocked.
    at: BTreeMap<Option<Pasid>, Place<S>>,
    /// Every attach of the device goes on PASID-capable HWPTs.
    pasid_mode: bool,
    /// The host attaches PASIDs below `2^host_pasid_bits` for it.
    host_pasid_bits: u8,
    /// Its PASID-capable HWPT over the RAM IOAS; declared after `dev`, so
    /// it is destroyed once the device let go of it.
    ram_hwpt: Option<Hwpt>,
}

/// The passthrough devices of one guest IOMMU and the host objects backing
/// them. `S` names the model's shadow spaces.
///
/// Fields drop in order: devices (detached as they drop) before the spaces
/// and HWPTs they were attached to.
#[derive(Debug)]
pub struct Registry<S> {
    host: SharedHost,
    ram: Arc<RamIoas>,
    devices: BTreeMap<Endpoint, Device<S>>,
    spaces: BTreeMap<S, ShadowDomain>,
    /// Spaces given up (emptied) while a device whose move failed was
    /// still attached: kept until no device uses them.
    stranded: Vec<ShadowDomain>,
    nested: Option<NestedEngine>,
    nested_cfg: NestedConfig,
    max_spaces: usize,
    stats: RegistryStats,
}

/// What a successful [`Registry::stage`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied<S> {
    /// Spaces made by the plan.
    pub created: Vec<S>,
    /// Spaces destroyed because no requester is left in them.
    pub destroyed: Vec<S>,
}

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
    /// A registry over the VM's iommufd and RAM IOAS.
    pub fn new(host: SharedHost, ram: Arc<RamIoas>) -> Self {
        Registry {
            host,
            ram,
            devices: BTreeMap::new(),
            spaces: BTreeMap::new(),
            stranded: Vec::new(),
            nested: None,
            nested_cfg: NestedConfig::default(),
            max_spaces: MAX_SPACES,
            stats: RegistryStats::default(),
        }
    }

    /// The limit of shadow spaces (default [`MAX_SPACES`]).
    pub fn set_max_spaces(&mut self, n: usize) {
        self.max_spaces = n;
    }

    /// The nested engine's configuration, used when it is made (with the
    /// first nested device).
    pub fn set_nested_config(&mut self, cfg: NestedConfig) {
        self.nested_cfg = cfg;
    }

    /// The VM's iommufd.
    pub fn host(&self) -> &SharedHost {
        &self.host
    }

    /// Totals since creation.
    pub fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// Takes passthrough device `ep` with its requests without PASID at
    /// `initial`: blocked or identity for a shadowed device, blocked (an
    /// abort context) or a nested context for a nested one. `view` is what
    /// the host said about it. A refused device is handed back.
    pub fn add_device(
        &mut self,
        ep: Endpoint,
        dev: BoundDevice,
        backing: Backing,
        view: &HostView,
        initial: Place<S>,
    ) -> Result<(), (HostFailure, BoundDevice)> {
        let fits = matches!(
            (backing, initial),
            (_, Place::Blocked)
                | (Backing::Shadow, Place::Identity)
                | (Backing::Nested, Place::Nested(_))
        );
        if self.devices.contains_key(&ep) || !fits {
            let e = match fits {
                true => NestedError::Duplicate {
                    vsid: u64::from(ep),
                },
                false => NestedError::Unsupported {
                    what: "this initial place for the device's backing",
                },
            };
            return Err((e.into(), dev));
        }
        self.add_blocked(ep, dev, backing, view, initial)?;
        if initial != Place::Blocked
            && backing == Backing::Shadow
            && let Err(e) = self.move_to((ep, None), initial)
        {
            let dev = self.remove_device(ep);
            return match dev {
                Some(dev) => Err((e, dev)),
                None => {
                    log::error!("passthrough endpoint {ep:#x}: lost while refusing it: {e}");
                    Ok(())
                }
            };
        }
        Ok(())
    }

    /// Adds the device blocked; a nested one joins the engine directly in
    /// its initial context (one attach, not abort then the context).
    fn add_blocked(
        &mut self,
        ep: Endpoint,
        mut dev: BoundDevice,
        backing: Backing,
        view: &HostView,
        initial: Place<S>,
    ) -> Result<(), (HostFailure, BoundDevice)> {
        let mut device = Device {
            backing,
            dev: None,
            at: BTreeMap::new(),
            pasid_mode: false,
            host_pasid_bits: view.info.max_pasid_log2,
            ram_hwpt: None,
        };
        match backing {
            Backing::Shadow => {
                if dev.is_attached(None)
                    && let Err(e) = dev.detach(None)
                {
                    return Err((e.into(), dev));
                }
                device.dev = Some(dev);
            }
            Backing::Nested => {
                if self.nested.is_none() {
                    match NestedEngine::new(&self.host, &self.ram, self.nested_cfg) {
                        Ok(e) => self.nested = Some(e),
                        Err(e) => return Err((e.into(), dev)),
                    }
                }
                let Some(engine) = self.nested.as_mut() else {
                    return Err((HostFailure::Nested(NestedError::NoDevice { vsid: 0 }), dev));
                };
                let ctx = match initial {
                    Place::Nested(c) => c,
                    _ => NestedContext::Abort,
                };
                if let Err((e, dev)) = engine.add_device(u64::from(ep), dev, ctx) {
                    return Err((e.into(), dev));
                }
                if let Place::Nested(_) = initial {
                    device.at.insert(None, initial);
                }
            }
        }
        self.devices.insert(ep, device);
        Ok(())
    }

    /// Removes device `ep` (hot-unplug): its PASIDs and RID detached, the
    /// spaces it leaves empty destroyed, and the bound device handed back,
    /// blocked. `None` if it is not a device here, or the nested engine
    /// failed to let go of it (logged).
    pub fn remove_device(&mut self, ep: Endpoint) -> Option<BoundDevice> {
        let mut d = self.devices.remove(&ep)?;
        let dev = match d.backing {
            Backing::Nested => {
                let engine = self.nested.as_mut()?;
                match engine.remove_device(u64::from(ep)) {
                    Ok(dev) => dev,
                    Err(e) => {
                        log::warn!("passthrough endpoint {ep:#x}: removing it: {e}");
                        return None;
                    }
                }
            }
            Backing::Shadow => {
                let mut dev = d.dev.take()?;
                let mut keys: Vec<(Option<Pasid>, Place<S>)> =
                    std::mem::take(&mut d.at).into_iter().collect();
                // PASIDs first: the RID's domain stays while they go.
                keys.sort_by_key(|(k, _)| k.is_none());
                for (key, at) in keys {
                    let res = match at {
                        Place::Shadow(s) => match self.spaces.get_mut(&s) {
                            Some(dom) => dom.detach(&mut dev, key).map_err(HostFailure::from),
                            None => dev.detach(key).map_err(HostFailure::from),
                        },
                        Place::Identity | Place::Nested(_) => {
                            dev.detach(key).map_err(HostFailure::from)
                        }
                        Place::Blocked => Ok(()),
                    };
                    if let Err(e) = res {
                        log::warn!("passthrough endpoint {ep:#x} {key:?}: detaching: {e}");
                    }
                }
                if dev.is_attached(None)
                    && let Err(e) = dev.detach(None)
                {
                    log::warn!("passthrough endpoint {ep:#x}: detaching: {e}");
                }
                let id = dev.id();
                self.stranded.retain_mut(|s| {
                    s.forget(id, None);
                    !s.devices().is_empty()
                });
                dev
            }
        };
        self.drop_unused();
        Some(dev)
    }

    /// Whether `ep` is a passthrough device here.
    pub fn contains(&self, ep: Endpoint) -> bool {
        self.devices.contains_key(&ep)
    }

    /// The passthrough endpoints.
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        self.devices.keys().copied()
    }

    /// How `ep` is backed.
    pub fn backing(&self, ep: Endpoint) -> Option<Backing> {
        self.devices.get(&ep).map(|d| d.backing)
    }

    /// Where a requester is (blocked for one the registry does not know).
    pub fn place(&self, (ep, pasid): Requester) -> Place<S> {
        self.devices
            .get(&ep)
            .and_then(|d| d.at.get(&pasid).copied())
            .unwrap_or(Place::Blocked)
    }

    /// The requesters of `ep` that are not blocked.
    pub fn requesters(&self, ep: Endpoint) -> Vec<(Option<Pasid>, Place<S>)> {
        self.devices
            .get(&ep)
            .map(|d| d.at.iter().map(|(k, p)| (*k, *p)).collect())
            .unwrap_or_default()
    }

    /// Whether the host attaches `pasid` for `ep` (always, for requests
    /// without PASID).
    pub fn carries(&self, (ep, pasid): Requester) -> bool {
        let Some(d) = self.devices.get(&ep) else {
            return false;
        };
        match (d.backing, pasid) {
            (_, None) => true,
            (Backing::Nested, Some(_)) => true,
            (Backing::Shadow, Some(p)) => {
                u64::from(p.raw())
                    .checked_shr(u32::from(d.host_pasid_bits))
                    .unwrap_or(0)
                    == 0
            }
        }
    }

    /// The shadow space `s`, if it exists.
    pub fn space(&self, s: &S) -> Option<&ShadowDomain> {
        self.spaces.get(s)
    }

    /// Every shadow space.
    pub fn spaces(&self) -> impl Iterator<Item = (&S, &ShadowDomain)> {
        self.spaces.iter()
    }

    /// The requesters in space `s`.
    pub fn members(&self, s: S) -> Vec<Requester> {
        let mut out = Vec::new();
        for (&ep, d) in &self.devices {
            for (&key, &at) in &d.at {
                if at == Place::Shadow(s) {
                    out.push((ep, key));
                }
            }
        }
        out
    }

    /// The nested engine, once a nested device was added.
    pub fn nested(&self) -> Option<&NestedEngine> {
        self.nested.as_ref()
    }

    /// The nested engine, for invalidations and events.
    pub fn nested_mut(&mut self) -> Option<&mut NestedEngine> {
        self.nested.as_mut()
    }

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
    fn drop_unused(&mut self) -> Vec<S> {
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

    // -- moving one requester ---------------------------------------------

    /// Moves `req` to `to` on the host. On failure it is where it was.
    fn move_to(&mut self, req: Requester, to: Place<S>) -> Result<(), HostFailure> {
        let (ep, key) = req;
        let Some(backing) = self.backing(ep) else {
            return Ok(());
        };
        match backing {
            Backing::Nested => self.move_nested(req, to),
            Backing::Shadow => {
                if key.is_some() && to != Place::Blocked {
                    self.enter_pasid_mode(ep)?;
                }
                let from = self.place(req);
                self.attach_shadowed(req, to)?;
                let Some(d) = self.devices.get_mut(&ep) else {
                    return Ok(());
                };
                if let (Place::Shadow(old), Some(dev)) = (from, d.dev.as_ref())
                    && let Some(dom) = self.spaces.get_mut(&old)
                {
                    // The host no longer uses the old space's HWPT for it.
                    dom.forget(dev.id(), key);
                }
                match to {
                    Place::Blocked => d.at.remove(&key),
                    _ => d.at.insert(key, to),
                };
                if let Some(id) = d.dev.as_ref().map(BoundDevice::id) {
                    self.stranded.retain_mut(|s| {
                        s.forget(id, key);
                        !s.devices().is_empty()
                    });
                }
                Ok(())
            }
        }
    }

    /// Whether `req` is blocked as far as the guest goes but still attached
    /// to an emptied space it could not leave at a reset.
    fn stranded_at(&self, (ep, key): Requester) -> bool {
        self.place((ep, key)) == Place::Blocked
            && self
                .devices
                .get(&ep)
                .and_then(|d| d.dev.as_ref())
                .is_some_and(|dev| dev.is_attached(key))
    }

    fn move_nested(&mut self, (ep, key): Requester, to: Place<S>) -> Result<(), HostFailure> {
        let Some(engine) = self.nested.as_mut() else {
            return Ok(());
        };
        let vsid = u64::from(ep);
        let attached = self
            .devices
            .get(&ep)
            .is_some_and(|d| d.at.contains_key(&key));
        match (key, to) {
            (Some(p), Place::Blocked) if attached => engine.remove_pasid(vsid, p)?,
            (Some(_), Place::Blocked) => {}
            (None, Place::Blocked) => engine.install(vsid, None, NestedContext::Abort)?,
            (_, Place::Nested(ctx)) => engine.install(vsid, key, ctx)?,
            _ => return Ok(()),
        }
        if let Some(d) = self.devices.get_mut(&ep) {
            match to {
                Place::Blocked => d.at.remove(&key),
                _ => d.at.insert(key, to),
            };
        }
        Ok(())
    }

    /// The host side of a shadowed move; on failure nothing changed.
    fn attach_shadowed(&mut self, (ep, key): Requester, to: Place<S>) -> Result<(), HostFailure> {
        let pasid_mode = self.devices.get(&ep).is_some_and(|d| d.pasid_mode);
        match to {
            Place::Blocked => {
                if let Some(dev) = self.devices.get_mut(&ep).and_then(|d| d.dev.as_mut())
                    && dev.is_attached(key)
                {
                    dev.detach(key)?;
                }
            }
            Place::Identity => {
                let pt = self.ram_pt(ep, pasid_mode || key.is_some())?;
                if let Some(dev) = self.devices.get_mut(&ep).and_then(|d| d.dev.as_mut()) {
                    dev.attach(key, pt)?;
                }
            }
            Place::Shadow(space) => {
                let Some(dev) = self.devices.get_mut(&ep).and_then(|d| d.dev.as_mut()) else {
                    return Ok(());
                };
                let Some(dom) = self.spaces.get_mut(&space) else {
                    return Ok(());
                };
                match pasid_mode {
                    true => dom.attach_pasid_capable(dev, key)?,
                    false => dom.attach(dev, key)?,
                }
            }
            Place::Nested(_) => {}
        }
        Ok(())
    }

    /// Moves the device's RID, where it is, onto a PASID-capable HWPT; from
    /// then on every attach of the device is PASID-capable.
    fn enter_pasid_mode(&mut self, ep: Endpoint) -> Result<(), HostFailure> {
        let Some(d) = self.devices.get(&ep) else {
            return Ok(());
        };
        if d.pasid_mode {
            return Ok(());
        }
        match d.at.get(&None).copied() {
            Some(Place::Shadow(s)) => {
                if let (Some(dev), Some(dom)) = (
                    self.devices.get_mut(&ep).and_then(|d| d.dev.as_mut()),
                    self.spaces.get_mut(&s),
                ) {
                    dom.attach_pasid_capable(dev, None)?;
                }
            }
            Some(Place::Identity) => {
                let pt = self.ram_pt(ep, true)?;
                if let Some(dev) = self.devices.get_mut(&ep).and_then(|d| d.dev.as_mut()) {
                    dev.attach(None, pt)?;
                }
            }
            _ => {}
        }
        if let Some(d) = self.devices.get_mut(&ep) {
            d.pasid_mode = true;
        }
        Ok(())
    }

    /// What a requester of `ep` attaches to for IOVA = GPA: the RAM IOAS,
    /// or (`pasid_capable`) the device's PASID-capable HWPT over it, made
    /// on first use.
    fn ram_pt(&mut self, ep: Endpoint, pasid_capable: bool) -> Result<PtId, HostFailure> {
        let ram = PtId::Ioas(self.ram.ioas().id());
        let Some(d) = self.devices.get_mut(&ep) else {
            return Ok(ram);
        };
        if !pasid_capable {
            return Ok(ram);
        }
        if let Some(h) = &d.ram_hwpt {
            return Ok(PtId::Hwpt(h.id()));
        }
        let Some(dev) = d.dev.as_ref() else {
            return Ok(ram);
        };
        let req = HwptAlloc {
            dev: dev.id(),
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

    // -- forced moves (device reset) ----------------------------------------

    /// Moves every requester of the shadowed devices to identity (where
    /// `identity` says) or blocked, whatever the host answers (a device
    /// reset cannot be refused), and gives up every shadow space: a space a
    /// requester could not leave is emptied first, so that requester
    /// reaches nothing, and kept aside until no device uses it. Returns the
    /// first failure (every one is logged).
    pub fn evacuate(&mut self, identity: impl Fn(Requester) -> bool) -> Result<(), HostFailure> {
        let mut first = Ok(());
        let reqs: Vec<Requester> = self
            .devices
            .iter()
            .filter(|(_, d)| d.backing == Backing::Shadow)
            .flat_map(|(&ep, d)| {
                let mut keys: Vec<Option<Pasid>> = d.at.keys().copied().collect();
                if !keys.contains(&None) {
                    keys.push(None);
                }
                keys.into_iter().map(move |k| (ep, k))
            })
            .collect();
        for req in reqs {
            let want = match identity(req) {
                true => Place::Identity,
                false => Place::Blocked,
            };
            if self.place(req) == want && !self.stranded_at(req) {
                continue;
            }
            if let Err(e) = self.move_to(req, want) {
                crate::guest_log!(Error, "passthrough {req:?}: cannot move to {want:?}: {e}");
                first = first.and(Err(e));
            }
        }
        let spaces: Vec<S> = self.spaces.keys().copied().collect();
        for s in spaces {
            let Some(mut dom) = self.spaces.remove(&s) else {
                continue;
            };
            if dom.devices().is_empty() {
                continue;
            }
            dom.unmap_all();
            if let Err(e) = counted_sync(&mut self.stats.shadow_host_calls, &mut dom) {
                crate::guest_log!(Error, "passthrough space {s:?}: cannot empty it: {e}");
            }
            for d in self.devices.values_mut() {
                d.at.retain(|_, p| *p != Place::Shadow(s));
            }
            self.stranded.push(dom);
        }
        first
    }
}
