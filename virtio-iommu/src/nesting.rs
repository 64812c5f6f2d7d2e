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

use std::collections::BTreeMap;
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

/// A refusal of [`ShadowHost`].
#[derive(Debug, Error)]
pub enum ShadowHostError {
    /// The endpoint has a device already; the refused one is handed back.
    #[error("endpoint {endpoint:#x} has a passthrough device already")]
    EndpointTaken {
        /// The endpoint.
        endpoint: u32,
        /// The device that was not added.
        device: Box<BoundDevice>,
    },
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
    /// Destroys a space. No endpoint is attached to it any more, except
    /// after a reset whose block of an endpoint failed: the device then
    /// emptied the space first ([`PassthroughHost::clear`]), and the host
    /// keeps it, empty, until that endpoint is attached or blocked, while
    /// the same ID may be created again for a new domain.
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
    /// Maps every one of `maps` into `space`, all or none: on failure the
    /// host is as it was. The default maps one by one and unmaps what it
    /// mapped when one fails; a host that can apply a batch at once (the
    /// shadow engine: one sync) overrides it.
    fn map_batch(&mut self, space: SpaceId, maps: &[Mapping]) -> Result<(), HostFailure> {
        for (i, m) in maps.iter().enumerate() {
            let access = access_of(m.map_flags());
            if let Err(e) = self.map(space, Iova(m.iova_first), Gpa(m.gpa), m.len(), access) {
                for done in maps.iter().take(i) {
                    if let Err(again) = self.unmap(space, Iova(done.iova_first), done.len()) {
                        log::error!("undoing {space} at {:#x}: {again}", done.iova_first);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
    /// Unmaps every one of `maps` (mappings `map` created) from `space`,
    /// all or none. The default unmaps one by one and maps back what it
    /// unmapped when one fails; the shadow engine overrides it.
    fn unmap_batch(&mut self, space: SpaceId, maps: &[Mapping]) -> Result<(), HostFailure> {
        for (i, m) in maps.iter().enumerate() {
            if let Err(e) = self.unmap(space, Iova(m.iova_first), m.len()) {
                for done in maps.iter().take(i) {
                    let access = access_of(done.map_flags());
                    let (iova, gpa) = (Iova(done.iova_first), Gpa(done.gpa));
                    if let Err(again) = self.map(space, iova, gpa, done.len(), access) {
                        log::error!("restoring {space} at {:#x}: {again}", done.iova_first);
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }
    /// Removes every mapping of `space` (`mapped` lists what the device
    /// mapped there), so that an endpoint still attached reaches nothing.
    /// The default unmaps each of `mapped`.
    fn clear(&mut self, space: SpaceId, mapped: &[Mapping]) -> Result<(), HostFailure> {
        for m in mapped {
            self.unmap(space, Iova(m.iova_first), m.len())?;
        }
        Ok(())
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

/// Where a passthrough endpoint's device is on the host now (which may
/// differ from where the guest's view puts it after a host failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Blocked: no DMA.
    Blocked,
    /// Attached to this space.
    In(SpaceId),
    /// Still attached to a domain space the device gave up at reset (its
    /// block failed): the space was emptied and is tied to no guest domain
    /// any more, so the device reaches nothing until it is moved.
    Stranded,
}

impl Placement {
    fn of(space: Option<SpaceId>) -> Self {
        match space {
            Some(s) => Placement::In(s),
            None => Placement::Blocked,
        }
    }
}

/// The passthrough endpoints, where each one's device actually is on the
/// host, and the spaces that exist for them (with their user counts).
#[derive(Debug)]
pub struct Passthrough {
    host: Box<dyn PassthroughHost>,
    endpoints: BTreeMap<u32, Placement>,
    spaces: BTreeMap<SpaceId, usize>,
}

impl Passthrough {
    /// No passthrough endpoint yet, behind `host`.
    pub fn new(host: Box<dyn PassthroughHost>) -> Self {
        Passthrough {
            host,
            endpoints: BTreeMap::new(),
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
        self.endpoints.insert(endpoint, Placement::of(space));
        Ok(())
    }

    /// Whether `endpoint` is a passthrough endpoint.
    pub fn is_passthrough(&self, endpoint: u32) -> bool {
        self.endpoints.contains_key(&endpoint)
    }

    /// The passthrough endpoints.
    pub fn endpoints(&self) -> impl Iterator<Item = u32> + '_ {
        self.endpoints.keys().copied()
    }

    /// Where `endpoint`'s device is on the host, if it is a passthrough
    /// endpoint.
    pub fn placement(&self, endpoint: u32) -> Option<Placement> {
        self.endpoints.get(&endpoint).copied()
    }

    /// Whether `domain` has a host space.
    pub fn has_space(&self, domain: u32) -> bool {
        self.spaces.contains_key(&SpaceId::Domain(domain))
    }

    /// Moves passthrough endpoint `endpoint` from where it is on the host
    /// to `to` (`None`: blocked). Host first: on failure the endpoint and
    /// the spaces are as they were.
    pub fn move_to(
        &mut self,
        endpoint: u32,
        to: Option<SpaceId>,
        tables: &Tables,
    ) -> Result<(), HostFailure> {
        let Some(from) = self.placement(endpoint) else {
            return Ok(());
        };
        if from == Placement::of(to) {
            return Ok(());
        }
        match to {
            Some(space) => self.enter(endpoint, space, tables)?,
            None => self.host.block(endpoint)?,
        }
        if let Placement::In(f) = from {
            self.leave(f);
        }
        self.endpoints.insert(endpoint, Placement::of(to));
        Ok(())
    }

    /// Device reset: moves every endpoint to `to` (blocked or identity)
    /// and drops every domain space, `old` being the guest's tables before
    /// the reset. A domain space an endpoint could not leave (its move
    /// failed) is emptied and given up all the same: that endpoint is
    /// [`Placement::Stranded`], its device reaching nothing, never the
    /// stale mappings, and a later ATTACH to the same domain ID builds a
    /// fresh space. Returns the first failure (already logged).
    pub fn reset(&mut self, to: Option<SpaceId>, old: &Tables) -> Result<(), HostFailure> {
        let empty = Tables::default();
        let mut first = Ok(());
        let eps: Vec<u32> = self.endpoints().collect();
        for ep in eps {
            if let Err(e) = self.move_to(ep, to, &empty) {
                log::error!("virtio-iommu: reset: moving passthrough endpoint {ep:#x}: {e}");
                first = first.and(Err(e));
            }
        }
        let left: Vec<SpaceId> = self
            .spaces
            .keys()
            .copied()
            .filter(|s| matches!(s, SpaceId::Domain(_)))
            .collect();
        for space in left {
            let mapped: Vec<Mapping> = match space {
                SpaceId::Domain(d) => old
                    .domain(d)
                    .map(|d| d.mappings.values().copied().collect())
                    .unwrap_or_default(),
                SpaceId::Identity => Vec::new(),
            };
            if let Err(e) = self.host.clear(space, &mapped) {
                log::error!("virtio-iommu: reset: cannot empty {space} of a stuck endpoint: {e}");
                first = first.and(Err(e));
            }
            self.spaces.remove(&space);
            self.host.destroy(space);
            for p in self.endpoints.values_mut() {
                if *p == Placement::In(space) {
                    *p = Placement::Stranded;
                }
            }
        }
        first
    }

    /// Removes passthrough endpoint `endpoint` (hot-unplug): blocks it on
    /// the host and leaves its space (destroyed if it was the last user).
    /// The endpoint is removed even when the block fails; that failure is
    /// returned.
    pub fn remove(&mut self, endpoint: u32) -> Result<(), HostFailure> {
        let Some(place) = self.endpoints.remove(&endpoint) else {
            return Ok(());
        };
        let blocked = match place {
            Placement::Blocked => Ok(()),
            Placement::In(_) | Placement::Stranded => self.host.block(endpoint),
        };
        if let Placement::In(space) = place {
            self.leave(space);
        }
        blocked
    }

    /// Puts `endpoint` into `space`, creating it (and, for a domain,
    /// replaying the domain's mappings from `tables`) when it is the
    /// first; counts the new user.
    fn enter(&mut self, endpoint: u32, space: SpaceId, tables: &Tables) -> Result<(), HostFailure> {
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

    /// One user fewer of `space`; destroys it when it was the last.
    fn leave(&mut self, space: SpaceId) {
        if let Some(n) = self.spaces.get_mut(&space) {
            *n -= 1;
            if *n == 0 {
                self.spaces.remove(&space);
                self.host.destroy(space);
            }
        }
    }

    /// Mirrors the mappings `tables` holds for `domain` into its new
    /// space, in one batch (one shadow sync).
    fn replay(&mut self, domain: u32, tables: &Tables) -> Result<(), HostFailure> {
        let Some(d) = tables.domain(domain) else {
            return Ok(());
        };
        let maps: Vec<Mapping> = d.mappings.values().copied().collect();
        if maps.is_empty() {
            return Ok(());
        }
        self.host.map_batch(SpaceId::Domain(domain), &maps)
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

    /// Removes mappings of `domain` from its host space, in one batch
    /// (one shadow sync for an UNMAP however many mappings it covers). On
    /// failure the host is unchanged, matching the unchanged guest view.
    pub fn unmap(&mut self, domain: u32, removed: &[Mapping]) -> Result<(), HostFailure> {
        let space = SpaceId::Domain(domain);
        if !self.spaces.contains_key(&space) || removed.is_empty() {
            return Ok(());
        }
        self.host.unmap_batch(space, removed)
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
    /// Spaces the device destroyed while an endpoint whose block failed
    /// was still attached (emptied by `clear` first): kept until their
    /// last device is attached elsewhere or blocked.
    orphans: Vec<ShadowDomain>,
}

/// Whether the shadow engine accepts `m` for staging (its range checks:
/// not empty, aligned to the host's page, not wrapping), so that a batch
/// can be refused before anything of it is staged.
fn stageable(m: &Mapping, align: u64) -> bool {
    let len = m.len();
    let a = align.saturating_sub(1);
    len != 0
        && (m.iova_first | m.gpa | len) & a == 0
        && m.gpa.checked_add(len - 1).is_some()
        && m.iova_first.checked_add(len - 1).is_some()
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
                orphans: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShadowInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over the bound VFIO device of passthrough endpoint
    /// `endpoint` (before [`crate::VirtioIommu::add_passthrough`]).
    /// Refused, with the device handed back, when the endpoint has a
    /// device already: replacing it would unbind a device the guest may
    /// have attached. Remove the old one first
    /// ([`crate::VirtioIommu::remove_passthrough`], then
    /// [`ShadowHost::remove_device`]).
    pub fn add_device(&self, endpoint: u32, dev: BoundDevice) -> Result<(), ShadowHostError> {
        let mut g = self.lock();
        if g.devices.contains_key(&endpoint) {
            return Err(ShadowHostError::EndpointTaken {
                endpoint,
                device: Box::new(dev),
            });
        }
        g.devices.insert(endpoint, dev);
        Ok(())
    }

    /// Takes back the device of an endpoint the device refused, or of one
    /// removed with [`crate::VirtioIommu::remove_passthrough`] (hot-unplug):
    /// it is detached from whatever it is still attached to; dropping it
    /// unbinds it.
    pub fn remove_device(&self, endpoint: u32) -> Option<BoundDevice> {
        let mut g = self.lock();
        let g = &mut *g;
        let space = g.attached.remove(&endpoint);
        let mut dev = g.devices.remove(&endpoint)?;
        if let Some(d) = space.and_then(|s| g.spaces.get_mut(&s))
            && let Err(e) = d.detach(&mut dev, None)
        {
            log::warn!("virtio-iommu: detaching endpoint {endpoint:#x}: {e}");
        }
        // Still attached: to an orphaned space (its block failed at reset).
        if dev.is_attached(None)
            && let Err(e) = dev.detach(None)
        {
            log::warn!("virtio-iommu: detaching endpoint {endpoint:#x}: {e}");
        }
        g.forget_orphan(dev.id());
        Some(dev)
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

    /// `dev` left whatever orphan space held it; orphans left without
    /// devices are dropped (destroying their IOAS).
    fn forget_orphan(&mut self, dev: nesting_core::host::DevId) {
        self.orphans.retain_mut(|o| {
            o.forget(dev, None);
            !o.devices().is_empty()
        });
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
        // Normally no device is attached any more (the device moved every
        // endpoint out first) and dropping destroys the IOAS. A device
        // whose block failed at reset is still attached: keep its (emptied)
        // IOAS as an orphan, tied to no ID, until it moves.
        let mut g = self.lock();
        let Some(d) = g.spaces.remove(&space) else {
            return;
        };
        if !d.devices().is_empty() {
            g.attached.retain(|_, s| *s != space);
            g.orphans.push(d);
        }
    }

    fn map_batch(&mut self, space: SpaceId, maps: &[Mapping]) -> Result<(), HostFailure> {
        let mut g = self.lock();
        let d = g.space(space)?;
        // Staging fails only on the engine's range checks: make them all
        // first, so that a refusal leaves nothing staged.
        let align = d.alignment();
        if let Some(m) = maps.iter().find(|m| !stageable(m, align)) {
            log::warn!(
                "virtio-iommu: {space}: mapping at {:#x} not stageable",
                m.iova_first
            );
            return Err(HostFailure::Device);
        }
        for m in maps {
            let access = access_of(m.map_flags());
            d.map(Iova(m.iova_first), Gpa(m.gpa), m.len(), access)
                .map_err(|e| failure(&e))?;
        }
        // One sync for the batch; a failure rolls all of it back.
        g.sync(space)
    }

    fn unmap_batch(&mut self, space: SpaceId, maps: &[Mapping]) -> Result<(), HostFailure> {
        let mut g = self.lock();
        let d = g.space(space)?;
        let align = d.alignment();
        if let Some(m) = maps.iter().find(|m| !stageable(m, align)) {
            log::warn!(
                "virtio-iommu: {space}: mapping at {:#x} not stageable",
                m.iova_first
            );
            return Err(HostFailure::Device);
        }
        for m in maps {
            d.unmap(Iova(m.iova_first), m.len())
                .map_err(|e| failure(&e))?;
        }
        g.sync(space)
    }

    fn clear(&mut self, space: SpaceId, _mapped: &[Mapping]) -> Result<(), HostFailure> {
        let mut g = self.lock();
        g.space(space)?.unmap_all();
        g.sync(space)
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
        g.forget_orphan(id);
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
        let id = dev.id();
        if let Some(old) = g.attached.remove(&endpoint)
            && let Some(o) = g.spaces.get_mut(&old)
        {
            o.forget(id, None);
        }
        g.forget_orphan(id);
        Ok(())
    }
}
