//! Moving one requester on the host, and the reset path that moves every
//! requester whatever the host answers.

use std::fmt;

use super::{Backing, Endpoint, HostFailure, Place, Registry, Requester, counted_sync};
use crate::host::objects::{BoundDevice, Hwpt};
use crate::host::{HwptAlloc, HwptData, HwptFlags, PtId};
use crate::nested::NestedContext;
use crate::types::Pasid;

impl<S: Copy + Ord + fmt::Debug> Registry<S> {
    // -- moving one requester ---------------------------------------------

    /// Moves `req` to `to` on the host. On failure it is where it was.
    pub(super) fn move_to(&mut self, req: Requester, to: Place<S>) -> Result<(), HostFailure> {
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
    pub(super) fn stranded_at(&self, (ep, key): Requester) -> bool {
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
