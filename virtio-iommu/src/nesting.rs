//! What the device asks of the host for passthrough endpoints.
//!
//! virtio-iommu has no page-table format a physical IOMMU could walk, so
//! the ladder never nests it: a passthrough endpoint is always shadowed.
//! Each guest domain holding a passthrough endpoint gets one host address
//! space (a `nesting_core::shadow::ShadowDomain` over the RAM IOAS); an
//! unattached passthrough endpoint is either blocked or, in bypass, attached
//! to one shared identity space (IOVA = GPA over all guest RAM).
//!
//! The device drives a [`PassthroughHost`]: every call is synchronous and
//! has reached the host IOMMU when it returns, so a MAP or UNMAP request
//! completes only after the host agrees. A failed call leaves the host as
//! it was, and the device then leaves its own state as it was too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::ram::RamIoas;
use nesting_core::shadow::{ShadowDomain, ShadowError};
use nesting_core::types::{Access, Gpa, Iova};
use thiserror::Error;

use crate::domain::{Mapping, Tables};
use crate::protocol::{MapFlags, Status};

/// A host IOMMU failure, as the device answers it.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HostFailure {
    /// The host ran out of memory or IOVA space (ENOMEM, ENOSPC):
    /// `VIRTIO_IOMMU_S_NOMEM`.
    #[error("the host IOMMU is out of resources")]
    NoMemory,
    /// The endpoint's device cannot share the domain's host address
    /// space with the devices already in it (5.13.6.3.2: incompatible
    /// endpoint properties): `VIRTIO_IOMMU_S_UNSUPP`.
    #[error("the device cannot join this host address space")]
    Incompatible,
    /// Any other host failure: `VIRTIO_IOMMU_S_DEVERR`.
    #[error("the host IOMMU failed")]
    Device,
}

impl HostFailure {
    /// The request status for this failure.
    pub fn status(self) -> Status {
        match self {
            HostFailure::NoMemory => Status::NoMem,
            HostFailure::Incompatible => Status::Unsupp,
            HostFailure::Device => Status::DevErr,
        }
    }
}

/// A host address space the device shadows into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpaceId {
    /// The guest domain with this ID.
    Domain(u32),
    /// The identity space shared by every passthrough endpoint in bypass.
    Identity,
}

impl fmt::Display for SpaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpaceId::Domain(d) => write!(f, "domain {d}"),
            SpaceId::Identity => f.write_str("identity space"),
        }
    }
}

/// The host side of passthrough endpoints. Implemented over
/// `nesting_core::shadow` for a real or simulated iommufd; tests use a
/// recording fake. Every call applies its change to the host IOMMU before
/// returning and, on failure, leaves the host unchanged.
pub trait PassthroughHost: Send + fmt::Debug {
    /// Creates an empty address space (the identity one maps all guest
    /// RAM at IOVA = GPA).
    fn create(&mut self, space: SpaceId) -> Result<(), HostFailure>;
    /// Destroys a space no endpoint is attached to any more.
    fn destroy(&mut self, space: SpaceId);
    /// Maps `[iova, iova + len)` to guest RAM at `gpa`.
    fn map(
        &mut self,
        space: SpaceId,
        iova: Iova,
        gpa: Gpa,
        len: u64,
        access: Access,
    ) -> Result<(), HostFailure>;
    /// Unmaps exactly the mappings `map` created in `[iova, iova + len)`.
    fn unmap(&mut self, space: SpaceId, iova: Iova, len: u64) -> Result<(), HostFailure>;
    /// Attaches a passthrough endpoint to a space, replacing what it was
    /// attached to.
    fn attach(&mut self, endpoint: u32, space: SpaceId) -> Result<(), HostFailure>;
    /// Blocks all DMA of a passthrough endpoint.
    fn block(&mut self, endpoint: u32) -> Result<(), HostFailure>;
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

/// The passthrough endpoints and the spaces that exist for them.
#[derive(Debug)]
pub struct Passthrough {
    host: Box<dyn PassthroughHost>,
    endpoints: BTreeSet<u32>,
    spaces: BTreeMap<SpaceId, usize>,
}

impl Passthrough {
    /// No passthrough endpoint yet, behind `host`.
    pub fn new(host: Box<dyn PassthroughHost>) -> Self {
        Passthrough {
            host,
            endpoints: BTreeSet::new(),
            spaces: BTreeMap::new(),
        }
    }

    /// Adds a passthrough endpoint, unattached: blocked (`None`) or in
    /// the identity space.
    pub fn add(
        &mut self,
        endpoint: u32,
        space: Option<SpaceId>,
        tables: &Tables,
    ) -> Result<(), HostFailure> {
        match space {
            Some(s) => self.enter(endpoint, s, tables)?,
            None => self.host.block(endpoint)?,
        }
        self.endpoints.insert(endpoint);
        Ok(())
    }

    /// Whether `endpoint` is a passthrough endpoint.
    pub fn is_passthrough(&self, endpoint: u32) -> bool {
        self.endpoints.contains(&endpoint)
    }

    /// The passthrough endpoints.
    pub fn endpoints(&self) -> &BTreeSet<u32> {
        &self.endpoints
    }

    /// Whether `domain` has a host space.
    pub fn has_space(&self, domain: u32) -> bool {
        self.spaces.contains_key(&SpaceId::Domain(domain))
    }

    /// Moves `endpoint` into `space`, creating it (and, for a domain,
    /// replaying the domain's mappings from `tables`) when it is the first.
    pub fn enter(
        &mut self,
        endpoint: u32,
        space: SpaceId,
        tables: &Tables,
    ) -> Result<(), HostFailure> {
        let created = !self.spaces.contains_key(&space);
        if created {
            self.host.create(space)?;
            if let SpaceId::Domain(d) = space
                && let Err(e) = self.replay(d, tables)
            {
                self.host.destroy(space);
                return Err(e);
            }
        }
        if let Err(e) = self.host.attach(endpoint, space) {
            if created {
                self.host.destroy(space);
            }
            return Err(e);
        }
        *self.spaces.entry(space).or_insert(0) += 1;
        Ok(())
    }

    /// Takes `endpoint` out of `space` (it is then attached elsewhere or
    /// blocked); destroys the space when it was the last user.
    pub fn leave(&mut self, space: SpaceId) {
        if let Some(n) = self.spaces.get_mut(&space) {
            *n -= 1;
            if *n == 0 {
                self.spaces.remove(&space);
                self.host.destroy(space);
            }
        }
    }

    /// Blocks `endpoint` (detached, no bypass).
    pub fn block(&mut self, endpoint: u32) -> Result<(), HostFailure> {
        self.host.block(endpoint)
    }

    fn replay(&mut self, domain: u32, tables: &Tables) -> Result<(), HostFailure> {
        let Some(d) = tables.domain(domain) else {
            return Ok(());
        };
        for m in d.mappings.values() {
            self.host_map(SpaceId::Domain(domain), m)?;
        }
        Ok(())
    }

    /// Mirrors a new mapping of `domain`, when the domain has a host space.
    pub fn map(&mut self, domain: u32, m: &Mapping) -> Result<(), HostFailure> {
        let space = SpaceId::Domain(domain);
        if !self.spaces.contains_key(&space) {
            return Ok(());
        }
        self.host_map(space, m)
    }

    fn host_map(&mut self, space: SpaceId, m: &Mapping) -> Result<(), HostFailure> {
        self.host.map(
            space,
            Iova(m.iova_first),
            Gpa(m.gpa),
            m.len(),
            access_of(m.map_flags()),
        )
    }

    /// Removes mappings of `domain` from its host space. On failure the
    /// mappings removed before the failing one are mapped back, so the host
    /// matches the unchanged guest view.
    pub fn unmap(&mut self, domain: u32, removed: &[Mapping]) -> Result<(), HostFailure> {
        let space = SpaceId::Domain(domain);
        if !self.spaces.contains_key(&space) {
            return Ok(());
        }
        for (i, m) in removed.iter().enumerate() {
            if let Err(e) = self.host.unmap(space, Iova(m.iova_first), m.len()) {
                for back in &removed[..i] {
                    if let Err(again) = self.host_map(space, back) {
                        log::error!("restoring {space} at {:#x}: {again}", back.iova_first);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// [`PassthroughHost`] over the shadow engine (`nesting_core::shadow`):
/// one [`ShadowDomain`] per guest domain holding a passthrough endpoint,
/// one in identity mode (IOVA = GPA, the RAM IOAS) for bypass, each
/// endpoint's VFIO device bound to the VM's iommufd.
///
/// A handle: the VMM keeps a clone to hand over the devices of endpoints
/// it hot-plugs after giving the device its host.
#[derive(Clone, Debug)]
pub struct ShadowHost {
    inner: Arc<Mutex<ShadowInner>>,
}

#[derive(Debug)]
struct ShadowInner {
    host: SharedHost,
    ram: Arc<RamIoas>,
    devices: BTreeMap<u32, BoundDevice>,
    spaces: BTreeMap<SpaceId, ShadowDomain>,
    /// The space each endpoint's device is attached to now.
    attached: BTreeMap<u32, SpaceId>,
}

fn failure(e: &ShadowError) -> HostFailure {
    log::warn!("virtio-iommu: shadow engine: {e}");
    match e.is_no_memory() {
        true => HostFailure::NoMemory,
        false => HostFailure::Device,
    }
}

impl ShadowHost {
    /// The VM's iommufd and its RAM IOAS.
    pub fn new(host: SharedHost, ram: Arc<RamIoas>) -> Self {
        ShadowHost {
            inner: Arc::new(Mutex::new(ShadowInner {
                host,
                ram,
                devices: BTreeMap::new(),
                spaces: BTreeMap::new(),
                attached: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShadowInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over the bound VFIO device of passthrough endpoint
    /// `endpoint` (before [`crate::VirtioIommu::add_passthrough`]).
    pub fn add_device(&self, endpoint: u32, dev: BoundDevice) {
        self.lock().devices.insert(endpoint, dev);
    }

    /// Takes back the device of an endpoint the device refused (or one
    /// being unplugged after the guest detached it); dropping it unbinds
    /// it.
    pub fn remove_device(&self, endpoint: u32) -> Option<BoundDevice> {
        let mut g = self.lock();
        if let Some(space) = g.attached.remove(&endpoint) {
            let g = &mut *g;
            if let (Some(d), Some(dev)) = (g.spaces.get_mut(&space), g.devices.get_mut(&endpoint))
                && let Err(e) = d.detach(dev, None)
            {
                log::warn!("virtio-iommu: detaching endpoint {endpoint:#x}: {e}");
            }
        }
        g.devices.remove(&endpoint)
    }

    /// The guest mappings a space mirrors, as `(first, last, gpa)`.
    pub fn space_mappings(&self, space: SpaceId) -> Option<Vec<(u64, u64, u64)>> {
        let g = self.lock();
        let d = g.spaces.get(&space)?;
        Some(
            d.guest_mappings()
                .map(|s| (s.first, s.last, s.gpa))
                .collect(),
        )
    }
}

impl ShadowInner {
    fn space(&mut self, space: SpaceId) -> Result<&mut ShadowDomain, HostFailure> {
        self.spaces.get_mut(&space).ok_or(HostFailure::Device)
    }

    fn sync(&mut self, space: SpaceId) -> Result<(), HostFailure> {
        self.space(space)?
            .sync()
            .map(|_| ())
            .map_err(|e| failure(&e))
    }
}

impl PassthroughHost for ShadowHost {
    fn create(&mut self, space: SpaceId) -> Result<(), HostFailure> {
        let mut g = self.lock();
        let mut d = ShadowDomain::new(&g.host, &g.ram).map_err(|e| failure(&e))?;
        if space == SpaceId::Identity {
            d.set_identity(true).map_err(|e| failure(&e))?;
        }
        g.spaces.insert(space, d);
        Ok(())
    }

    fn destroy(&mut self, space: SpaceId) {
        // No device is attached any more (the device moved every endpoint
        // out first); dropping destroys the IOAS.
        self.lock().spaces.remove(&space);
    }

    fn map(
        &mut self,
        space: SpaceId,
        iova: Iova,
        gpa: Gpa,
        len: u64,
        access: Access,
    ) -> Result<(), HostFailure> {
        let mut g = self.lock();
        g.space(space)?
            .map(iova, gpa, len, access)
            .map_err(|e| failure(&e))?;
        g.sync(space)
    }

    fn unmap(&mut self, space: SpaceId, iova: Iova, len: u64) -> Result<(), HostFailure> {
        let mut g = self.lock();
        g.space(space)?.unmap(iova, len).map_err(|e| failure(&e))?;
        g.sync(space)
    }

    fn attach(&mut self, endpoint: u32, space: SpaceId) -> Result<(), HostFailure> {
        let mut g = self.lock();
        let g = &mut *g;
        let dev = g.devices.get_mut(&endpoint).ok_or(HostFailure::Device)?;
        let d = g.spaces.get_mut(&space).ok_or(HostFailure::Device)?;
        // The kernel replaces the device's domain atomically. A refusal
        // other than lack of memory means the device cannot share this
        // IOAS with the others (iommufd's compatibility and reserved-region
        // checks): the endpoints' properties are not compatible.
        d.attach(dev, None).map_err(|e| match failure(&e) {
            HostFailure::NoMemory => HostFailure::NoMemory,
            _ => HostFailure::Incompatible,
        })?;
        let id = dev.id();
        if let Some(old) = g.attached.insert(endpoint, space)
            && old != space
            && let Some(o) = g.spaces.get_mut(&old)
        {
            o.forget(id, None);
        }
        Ok(())
    }

    fn block(&mut self, endpoint: u32) -> Result<(), HostFailure> {
        let mut g = self.lock();
        let g = &mut *g;
        let dev = g.devices.get_mut(&endpoint).ok_or(HostFailure::Device)?;
        if dev.is_attached(None) {
            dev.detach(None).map_err(|e| {
                log::warn!("virtio-iommu: blocking endpoint {endpoint:#x}: {e}");
                HostFailure::Device
            })?;
        }
        if let Some(old) = g.attached.remove(&endpoint)
            && let Some(o) = g.spaces.get_mut(&old)
        {
            o.forget(dev.id(), None);
        }
        Ok(())
    }
}
