//! The unit shared between the VMM's MMIO thread and device threads:
//! implements nesting-core's [`Translate`], so a
//! [`nesting_core::iotlb::IommuView`] turns it into vm-memory's `Iommu` for
//! an emulated device.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nesting_core::host::objects::BoundDevice;
use nesting_core::iotlb::{Iotlb, Translate, TranslateFault, Translation};
use nesting_core::ladder::{Decision, HostView};
use nesting_core::types::{Access, Iova, Pasid, RequesterId};
use vm_memory::GuestMemory;

use crate::passthrough::PassthroughError;
use crate::{TranslateResult, Vtd};

/// A [`Vtd`] behind a lock, with the guest memory it reads. Cache hits
/// take no lock (the IOTLB is lock-free); misses, MMIO and faults take it.
pub struct SharedVtd<M> {
    unit: Mutex<Vtd>,
    iotlb: Arc<Iotlb>,
    mem: M,
}

impl<M> fmt::Debug for SharedVtd<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedVtd").finish_non_exhaustive()
    }
}

impl<M: GuestMemory + Send + Sync> SharedVtd<M> {
    /// Shares `unit`, reading guest memory through `mem`.
    pub fn new(unit: Vtd, mem: M) -> Self {
        SharedVtd {
            iotlb: unit.iotlb().clone(),
            unit: Mutex::new(unit),
            mem,
        }
    }

    /// The unit. A panic on another thread while it held the lock does not
    /// make the unit unusable: its state is consistent after every
    /// completed method.
    pub fn lock(&self) -> MutexGuard<'_, Vtd> {
        self.unit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register read.
    pub fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        self.lock().mmio_read(offset, size)
    }

    /// Register write, with its synchronous effects: for passthrough
    /// devices, the host work it causes, before any invalidation it
    /// completes becomes visible ([`crate::passthrough`]).
    pub fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        self.lock().mmio_write(&self.mem, offset, size, value);
    }

    /// Takes a passthrough device ([`Vtd::add_passthrough`]; enable
    /// passthrough first with [`Vtd::enable_passthrough`] through
    /// [`SharedVtd::lock`]).
    pub fn add_passthrough(
        &self,
        sid: u16,
        device: BoundDevice,
        view: HostView,
    ) -> Result<Decision, (PassthroughError, BoundDevice)> {
        self.lock().add_passthrough(&self.mem, sid, device, view)
    }

    /// Removes a passthrough device ([`Vtd::remove_passthrough`]).
    pub fn remove_passthrough(&self, sid: u16) -> Option<BoundDevice> {
        self.lock().remove_passthrough(sid)
    }

    /// An ATS translation request of an emulated device
    /// ([`Vtd::translation_request`]).
    pub fn translation_request(&self, req: &crate::TranslationRequest) -> crate::AtsResponse {
        self.lock().translation_request(&self.mem, req)
    }

    /// A translated request of an emulated device
    /// ([`Vtd::translate_translated`]).
    pub fn translate_translated(
        &self,
        sid: nesting_core::types::Bdf,
        addr: u64,
        access: Access,
    ) -> TranslateResult {
        self.lock()
            .translate_translated(&self.mem, sid, addr, access)
    }
}

impl<M: GuestMemory + Send + Sync> Translate for SharedVtd<M> {
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        if let Some(t) = self.iotlb.lookup(rid, pasid, iova, access) {
            return Ok(t);
        }
        let RequesterId::Pci(bdf) = rid else {
            return Err(TranslateFault { rid, iova });
        };
        match self.lock().translate(&self.mem, bdf, pasid, iova, access) {
            TranslateResult::Mapped(t) => Ok(t),
            TranslateResult::Fault { .. } => Err(TranslateFault { rid, iova }),
        }
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}
