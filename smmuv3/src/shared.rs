//! The SMMU shared between the VMM's MMIO thread and device threads:
//! implements nesting-core's [`Translate`], so a
//! [`nesting_core::iotlb::IommuView`] turns it into vm-memory's `Iommu` for
//! an emulated device.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nesting_core::iotlb::{Iotlb, Translate, TranslateFault, Translation};
use nesting_core::types::{Access, Iova, Pasid, RequesterId};
use vm_memory::GuestMemory;

use crate::regs::off;
use crate::{Smmuv3, TranslateResult};

/// A [`Smmuv3`] behind a lock, with the guest memory it reads. Cache hits
/// and CMDQ_CONS reads take no lock; misses, other MMIO and faults do.
pub struct SharedSmmuv3<M> {
    unit: Mutex<Smmuv3>,
    iotlb: Arc<Iotlb>,
    cons: Arc<AtomicU32>,
    mem: M,
}

impl<M> fmt::Debug for SharedSmmuv3<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSmmuv3").finish_non_exhaustive()
    }
}

impl<M: GuestMemory + Send + Sync> SharedSmmuv3<M> {
    /// Shares `unit`, reading guest memory through `mem`.
    pub fn new(unit: Smmuv3, mem: M) -> Self {
        SharedSmmuv3 {
            iotlb: unit.iotlb().clone(),
            cons: unit.cmdq_cons_mirror(),
            unit: Mutex::new(unit),
            mem,
        }
    }

    /// The SMMU. A panic on another thread while it held the lock does not
    /// make it unusable: its state is consistent after every completed
    /// method.
    pub fn lock(&self) -> MutexGuard<'_, Smmuv3> {
        self.unit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Register read. A 32-bit read of CMDQ_CONS, which a driver polls
    /// while it waits for a CMD_SYNC, is served without the lock.
    pub fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        if offset == off::CMDQ_CONS && size == 4 {
            return u64::from(self.cons.load(Ordering::Acquire));
        }
        self.lock().mmio_read(offset, size)
    }

    /// Register write, with its synchronous effects.
    pub fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        self.lock().mmio_write(&self.mem, offset, size, value);
    }

    /// One transaction ([`Smmuv3::translate`]).
    pub fn translate_stream(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: Iova,
        access: Access,
    ) -> TranslateResult {
        let rid = crate::tlb::requester(sid);
        let pasid = ssid.and_then(Pasid::new);
        if (ssid.is_none() || pasid.is_some())
            && let Some(t) = self.iotlb.lookup(rid, pasid, iova, access)
        {
            return TranslateResult::Mapped(t);
        }
        self.lock().translate(&self.mem, sid, ssid, iova, access)
    }
}

impl<M: GuestMemory + Send + Sync> Translate for SharedSmmuv3<M> {
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        let RequesterId::Stream(sid) = rid else {
            return Err(TranslateFault { rid, iova });
        };
        match self.translate_stream(sid.0, pasid.map(Pasid::raw), iova, access) {
            TranslateResult::Mapped(t) => Ok(t),
            _ => Err(TranslateFault { rid, iova }),
        }
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}
