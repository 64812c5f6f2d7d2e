//! What the device asks of the host for passthrough endpoints.
//!
//! virtio-iommu has no page-table format a physical IOMMU could walk, so
//! the ladder never nests it: a passthrough endpoint is always shadowed.
//! nesting-core's passthrough [`Registry`] keeps where each one is: blocked,
//! at IOVA = GPA over guest RAM (identity: a bypass domain, or bypass of
//! unattached endpoints), or in the shadow space of its guest domain (the
//! space's name is the domain ID; the registry makes it when the first
//! passthrough endpoint joins the domain, filled with the domain's
//! mappings, and destroys it when the last one leaves).
//!
//! Every change of the guest's view that concerns passthrough endpoints
//! (ATTACH, DETACH, MAP, UNMAP, a `bypass` write, FEATURES_OK, a restore)
//! becomes one [`Plan`] staged through the registry: checked in full, then
//! applied to the host all or nothing, before the device changes its own
//! state and before the request completes. A refused plan leaves the host
//! as it was, and the device then leaves its own state as it was too. A
//! reset cannot be refused: [`Registry::evacuate`] empties what the host
//! will not let go of.

use std::collections::BTreeMap;
use std::sync::Arc;

use nesting_core::host::HostOp;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::ladder::HostView;
use nesting_core::passthrough::{Backing, HostFailure, Place, Plan, Registry, StageError, Step};
use nesting_core::ram::RamIoas;
use nesting_core::types::{Access, Gpa, Iova};
use thiserror::Error;

use crate::config::ResvMem;
use crate::domain::{Mapping, Tables};
use crate::protocol::{MapFlags, Status};

/// A host failure under passthrough endpoints.
#[derive(Debug, Error)]
pub enum PassthroughError {
    /// The host refused a change; it was undone and the host is as it was.
    #[error("the host refused the change")]
    Stage(#[from] StageError),
    /// The host refused to take the device.
    #[error("the host refused the device")]
    Device(#[from] HostFailure),
}

/// The request status for a plan the host refused: `S_NOMEM` when it ran
/// out of memory or IOVA space; for an ATTACH (`joining`), `S_UNSUPP` when
/// the host refused to attach the endpoint's device to the domain's
/// address space (it cannot share it with the devices there, e.g. its
/// reserved regions collide with the domain's mappings: the endpoint's
/// properties are incompatible with the domain, 5.13.6.3.2); `S_DEVERR`
/// otherwise.
pub(crate) fn status(e: &StageError, joining: bool) -> Status {
    let mut why = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        why += &format!(": {c}");
        cause = c.source();
    }
    nesting_core::guest_log!(Warn, "virtio-iommu: passthrough: {why}");
    if e.is_no_memory() {
        return Status::NoMem;
    }
    match e.host_op() {
        Some(HostOp::Attach | HostOp::Replace) if joining => Status::Unsupp,
        _ => Status::DevErr,
    }
}

/// The host access a mapping grants: the READ/WRITE flags (MMIO is a memory
/// type, not a permission).
pub fn access_of(flags: MapFlags) -> Access {
    let mut a = Access::empty();
    if flags.contains(MapFlags::READ) {
        a |= Access::READ;
    }
    if flags.contains(MapFlags::WRITE) {
        a |= Access::WRITE;
    }
    a
}

/// The registry step of one guest mapping of `domain`.
fn map_step(domain: u32, m: &Mapping) -> Step<u32> {
    Step::Map {
        space: domain,
        iova: Iova(m.iova_first),
        gpa: Gpa(m.gpa),
        len: m.len(),
        access: access_of(m.map_flags()),
    }
}

/// The passthrough endpoints of one device: the registry over the VM's
/// iommufd and RAM IOAS, and each endpoint's host holes.
#[derive(Debug)]
pub(crate) struct Passthrough {
    reg: Registry<u32>,
    /// Each endpoint's host IOVA holes as its PROBE announces them
    /// (`DeviceConfig::host_pieces`): per endpoint, since each may sit
    /// behind another host IOMMU, and its PROBE is its own (5.13.6.8).
    holes: BTreeMap<u32, Vec<ResvMem>>,
}

impl Passthrough {
    /// No passthrough endpoint yet, over the VM's iommufd and RAM IOAS.
    pub fn new(host: SharedHost, ram: Arc<RamIoas>) -> Self {
        Passthrough {
            reg: Registry::new(host, ram),
            holes: BTreeMap::new(),
        }
    }

    /// The registry's totals.
    pub fn registry_stats(&self) -> nesting_core::passthrough::RegistryStats {
        self.reg.stats()
    }

    /// Whether `endpoint` is a passthrough endpoint.
    pub fn contains(&self, endpoint: u32) -> bool {
        self.reg.contains(endpoint)
    }

    /// The passthrough endpoints.
    pub fn endpoints(&self) -> impl Iterator<Item = u32> + '_ {
        self.reg.endpoints()
    }

    /// Whether `domain` has a host space (a passthrough endpoint is in it).
    pub fn has_space(&self, domain: u32) -> bool {
        self.reg.space(&domain).is_some()
    }

    /// The host space of `domain`, if it has one.
    #[cfg(test)]
    pub fn space(&self, domain: u32) -> Option<&nesting_core::shadow::ShadowDomain> {
        self.reg.space(&domain)
    }

    /// Where `endpoint` is on the host.
    #[cfg(test)]
    pub fn place(&self, endpoint: u32) -> Place<u32> {
        self.reg.place((endpoint, None))
    }

    /// The host holes `endpoint`'s PROBE announces (none for an emulated
    /// endpoint).
    pub fn holes(&self, endpoint: u32) -> &[ResvMem] {
        self.holes.get(&endpoint).map_or(&[], Vec::as_slice)
    }

    /// Every passthrough endpoint with its host holes.
    pub fn all_holes(&self) -> impl Iterator<Item = (u32, &[ResvMem])> {
        self.holes.iter().map(|(e, h)| (*e, h.as_slice()))
    }

    /// Takes `dev`, the device behind `endpoint` whose PROBE announces
    /// `holes`, blocked or at identity (`identity`); a refused device is
    /// handed back.
    pub fn add(
        &mut self,
        endpoint: u32,
        dev: BoundDevice,
        view: &HostView,
        identity: bool,
        holes: Vec<ResvMem>,
    ) -> Result<(), (HostFailure, BoundDevice)> {
        let initial = match identity {
            true => Place::Identity,
            false => Place::Blocked,
        };
        self.reg
            .add_device(endpoint, dev, Backing::Shadow, view, initial)?;
        self.holes.insert(endpoint, holes);
        Ok(())
    }

    /// Hands back the device of `endpoint`, detached from whatever it was
    /// attached to; the spaces it leaves empty are destroyed.
    pub fn remove(&mut self, endpoint: u32) -> Option<BoundDevice> {
        self.holes.remove(&endpoint);
        self.reg.remove_device(endpoint)
    }

    /// Applies `plan` all or nothing (nothing to do for an empty one).
    pub fn stage(&mut self, plan: &Plan<u32>) -> Result<(), StageError> {
        if plan.is_empty() {
            return Ok(());
        }
        self.reg.stage(plan).map(|_| ())
    }

    /// Device reset: every endpoint to identity (`identity`) or blocked,
    /// whatever the host answers, and every domain space given up (emptied
    /// first where an endpoint could not leave it, so that it reaches
    /// nothing, never stale mappings). Returns the first failure, logged.
    pub fn evacuate(&mut self, identity: bool) -> Result<(), HostFailure> {
        self.reg.evacuate(|_| identity)
    }

    /// Adds to `plan` the move of `endpoint` to `to`; a domain space that
    /// does not exist yet is filled first with the mappings `tables` holds
    /// for the domain (once per plan, however many endpoints go there).
    pub fn push_move(&self, plan: &mut Plan<u32>, endpoint: u32, to: Place<u32>, tables: &Tables) {
        if let Place::Shadow(domain) = to {
            let filled = plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::Place { to: Place::Shadow(d), .. } if *d == domain));
            if !self.has_space(domain)
                && !filled
                && let Some(d) = tables.domain(domain)
            {
                for m in d.mappings.values() {
                    plan.push(map_step(domain, m));
                }
            }
        }
        plan.push(Step::Place {
            req: (endpoint, None),
            to,
        });
    }

    /// The plan that puts every passthrough endpoint where `place` says.
    pub fn settle(&self, place: impl Fn(u32) -> Place<u32>, tables: &Tables) -> Plan<u32> {
        let mut plan = Plan::new();
        for ep in self.endpoints() {
            self.push_move(&mut plan, ep, place(ep), tables);
        }
        plan
    }

    /// The plan mirroring a new mapping of `domain` (nothing when the
    /// domain has no host space).
    pub fn map_plan(&self, domain: u32, m: &Mapping) -> Plan<u32> {
        let mut plan = Plan::new();
        if self.has_space(domain) {
            plan.push(map_step(domain, m));
        }
        plan
    }

    /// The plan removing `removed` from `domain`'s host space: one host
    /// sync for an UNMAP however many mappings it covers.
    pub fn unmap_plan(&self, domain: u32, removed: &[Mapping]) -> Plan<u32> {
        let mut plan = Plan::new();
        if self.has_space(domain) {
            for m in removed {
                plan.push(Step::Unmap {
                    space: domain,
                    iova: Iova(m.iova_first),
                    len: m.len(),
                });
            }
        }
        plan
    }

    /// The endpoint a failed step of `plan` concerns: the one it moves,
    /// or, for a mapping step, the first one the plan moves into that
    /// space or that is in it.
    pub fn endpoint_of(&self, plan: &Plan<u32>, step: usize) -> u32 {
        let space = match plan.steps.get(step) {
            Some(Step::Place { req, .. }) => return req.0,
            Some(Step::Map { space, .. } | Step::Unmap { space, .. } | Step::Clear { space }) => {
                *space
            }
            None => return 0,
        };
        plan.steps
            .iter()
            .find_map(|s| match s {
                Step::Place {
                    req,
                    to: Place::Shadow(d),
                } if *d == space => Some(req.0),
                _ => None,
            })
            .or_else(|| self.reg.members(space).first().map(|r| r.0))
            .unwrap_or(0)
    }
}
