//! One requester's translations as a vm-memory [`Iommu`], so a VMM's
//! emulated device reads and writes IOVA-addressed memory through an
//! [`vm_memory::IommuMemory`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use thiserror::Error;
use vm_memory::iommu::{Error as IommuError, Iommu, Iotlb as RangeTlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};

use super::{Iotlb, Translation};
use crate::types::{Access, Iova, Pasid, RequesterId};

/// A guest IOMMU model's translation of one DMA access. The model reports
/// the architected fault (fault record, event queue entry) itself before
/// returning [`TranslateFault`]; the caller only learns that the access is
/// refused.
pub trait Translate: Send + Sync + fmt::Debug {
    /// Translates the page holding `iova` for an access of `rid`/`pasid`.
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault>;

    /// The cache whose invalidations [`IommuView`]s follow.
    fn iotlb(&self) -> &Iotlb;
}

/// An access the guest IOMMU refused (and has reported to the guest).
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error("DMA of {rid} at {iova:#x} refused by the guest IOMMU")]
pub struct TranslateFault {
    /// Who made the access.
    pub rid: RequesterId,
    /// The address.
    pub iova: Iova,
}

/// Most pages one [`Iommu::translate`] call walks: a device asking for a
/// huge range at once gets an error past this, rather than holding the
/// model for as long as the range takes to walk.
pub const MAX_PAGES_PER_ACCESS: u64 = 4096;

/// One requester's view of guest memory through the guest IOMMU.
///
/// It keeps vm-memory's range IOTLB, filled from the model's translations
/// and emptied whenever the model's [`Iotlb`] saw an invalidation since the
/// last fill.
#[derive(Debug)]
pub struct IommuView<T: Translate> {
    model: Arc<T>,
    rid: RequesterId,
    pasid: Option<Pasid>,
    privileged: bool,
    tlb: RwLock<RangeTlb>,
    seen: AtomicU64,
}

impl<T: Translate> IommuView<T> {
    /// The view of `rid` (and `pasid`) through `model`; `privileged` marks
    /// the requests supervisor requests.
    pub fn new(model: Arc<T>, rid: RequesterId, pasid: Option<Pasid>, privileged: bool) -> Self {
        let seen = model.iotlb().generation().0;
        IommuView {
            model,
            rid,
            pasid,
            privileged,
            tlb: RwLock::new(RangeTlb::new()),
            seen: AtomicU64::new(seen),
        }
    }

    fn access_of(&self, p: Permissions) -> Access {
        let mut a = match p {
            Permissions::No => Access::empty(),
            Permissions::Read => Access::READ,
            Permissions::Write => Access::WRITE,
            Permissions::ReadWrite => Access::RW,
        };
        if self.privileged {
            a |= Access::PRIV;
        }
        a
    }

    fn perms_of(a: Access) -> Permissions {
        match (a.contains(Access::READ), a.contains(Access::WRITE)) {
            (true, true) => Permissions::ReadWrite,
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            (false, false) => Permissions::No,
        }
    }

    /// Empties the range IOTLB if the model invalidated anything since it
    /// was filled.
    fn follow_invalidations(&self) {
        let now = self.model.iotlb().generation().0;
        if self.seen.load(Ordering::Acquire) != now {
            let mut tlb = self.tlb.write().unwrap_or_else(PoisonError::into_inner);
            tlb.invalidate_all();
            self.seen.store(now, Ordering::Release);
        }
    }

    /// Translates every page of `[first, end)` through the model and caches
    /// the result in the range IOTLB.
    fn fill(&self, first: u64, end: u64, access: Access) -> Result<(), IommuError> {
        let cannot = |reason: String| IommuError::CannotResolve {
            iova_range: IovaRange {
                base: GuestAddress(first),
                length: usize::try_from(end - first).unwrap_or(usize::MAX),
            },
            reason,
        };
        let mut at = first;
        let mut pages = 0;
        while at < end {
            pages += 1;
            if pages > MAX_PAGES_PER_ACCESS {
                return Err(cannot(format!("more than {MAX_PAGES_PER_ACCESS} pages")));
            }
            let t = self
                .model
                .translate(self.rid, self.pasid, Iova(at), access)
                .map_err(|f| cannot(f.to_string()))?;
            let page_end = t.iova.raw().saturating_add(t.size.bytes());
            let len = usize::try_from(page_end - t.iova.raw())
                .map_err(|_| cannot("page larger than the address space".into()))?;
            self.tlb
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .set_mapping(
                    GuestAddress(t.iova.raw()),
                    GuestAddress(t.gpa.raw()),
                    len,
                    Self::perms_of(t.access),
                )?;
            if page_end <= at {
                break;
            }
            at = page_end;
        }
        Ok(())
    }
}

impl<T: Translate> Iommu for IommuView<T> {
    type IotlbGuard<'a>
        = RwLockReadGuard<'a, RangeTlb>
    where
        Self: 'a;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        self.follow_invalidations();
        let want = self.access_of(access);
        // Two rounds: a lookup, then one fill of whatever missed or lacked
        // permission, then the final lookup.
        for round in 0..2 {
            let guard = self.tlb.read().unwrap_or_else(PoisonError::into_inner);
            let fails = match RangeTlb::lookup(guard, iova, length, access) {
                Ok(it) => return Ok(it),
                Err(f) => f,
            };
            if round == 1 {
                break;
            }
            for r in fails.misses.iter().chain(fails.access_fails.iter()) {
                let end = r.base.0.saturating_add(r.length as u64);
                self.fill(r.base.0, end, want)?;
            }
        }
        Err(IommuError::CannotResolve {
            iova_range: IovaRange { base: iova, length },
            reason: "not accessible after a walk".into(),
        })
    }
}
