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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

mod moves;
mod stage;

use crate::host::objects::{BoundDevice, Hwpt, SharedHost};
use crate::host::{HostError, HostOp};
use crate::ladder::HostView;
use crate::nested::{NestedConfig, NestedContext, NestedEngine, NestedError};
use crate::ram::RamIoas;
use crate::shadow::{ShadowDomain, ShadowError};
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
pub(crate) fn counted_sync(
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
}
