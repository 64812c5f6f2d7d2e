//! RAII handles over host objects.
//!
//! A handle owns one kernel object of the VM's shared iommufd and destroys
//! it when dropped. `Drop` never panics: a failure to destroy (EBUSY
//! because a child object still exists, or the host going away) is logged
//! and the object is left to the kernel, which frees everything when the
//! iommufd is closed.
//!
//! Handles of objects that depend on others keep their parent alive (a
//! nested HWPT holds its parent, a vDEVICE its vIOMMU), so dropping handles
//! in any order destroys the kernel objects children first.

use std::sync::Arc;

use super::{
    DevId, DeviceSource, FaultQueueId, HostBackend, HostResult, HwptAlloc, HwptId, IoasId,
    IovaPlacement, MapSource, ObjectId, PtId, VdeviceId, VeventqId, VeventqType, ViommuId,
    ViommuType,
};
use crate::types::{Access, Iova, Pasid};

/// The VM's iommufd, shared by every model and device.
pub type SharedHost = Arc<dyn HostBackend>;

/// A kernel object that `IOMMU_DESTROY` removes.
pub trait HostObject: Copy + std::fmt::Debug {
    /// The object as a generic ID.
    fn object_id(self) -> ObjectId;
}

macro_rules! host_object {
    ($($id:ident => $variant:ident),* $(,)?) => {
        $(
            impl HostObject for $id {
                fn object_id(self) -> ObjectId {
                    ObjectId::$variant(self)
                }
            }
            impl From<$id> for ObjectId {
                fn from(id: $id) -> ObjectId {
                    ObjectId::$variant(id)
                }
            }
        )*
    };
}

host_object!(
    IoasId => Ioas,
    HwptId => Hwpt,
    ViommuId => Viommu,
    VdeviceId => Vdevice,
    VeventqId => Veventq,
    FaultQueueId => FaultQueue,
);

/// An owned host object, destroyed on drop.
#[derive(Debug)]
pub struct Owned<T: HostObject> {
    host: SharedHost,
    id: T,
    /// Objects this one depends on, kept alive until it is destroyed.
    _parents: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

impl<T: HostObject> Owned<T> {
    /// Takes ownership of `id`, created on `host`.
    pub fn new(host: SharedHost, id: T) -> Self {
        Owned {
            host,
            id,
            _parents: Vec::new(),
        }
    }

    /// Keeps `parent` alive as long as this object exists.
    #[must_use]
    pub fn with_parent<P: Send + Sync + 'static>(mut self, parent: Arc<P>) -> Self {
        self._parents.push(parent);
        self
    }

    /// The object's ID.
    pub fn id(&self) -> T {
        self.id
    }

    /// The host it lives on.
    pub fn host(&self) -> &SharedHost {
        &self.host
    }
}

impl<T: HostObject> Drop for Owned<T> {
    fn drop(&mut self) {
        if let Err(e) = self.host.destroy(self.id.object_id()) {
            crate::guest_log!(Warn, "leaving {:?} to the kernel: {e}", self.id);
        }
    }
}

/// An owned IOAS.
pub type Ioas = Owned<IoasId>;
/// An owned HWPT.
pub type Hwpt = Owned<HwptId>;
/// An owned vIOMMU.
pub type Viommu = Owned<ViommuId>;
/// An owned vDEVICE.
pub type Vdevice = Owned<VdeviceId>;
/// An owned vEVENTQ.
pub type Veventq = Owned<VeventqId>;
/// An owned fault queue.
pub type FaultQueue = Owned<FaultQueueId>;

impl Ioas {
    /// Allocates an IOAS.
    pub fn alloc(host: &SharedHost) -> HostResult<Ioas> {
        Ok(Owned::new(host.clone(), host.ioas_alloc()?))
    }

    /// Maps memory at a placement; see [`HostBackend::ioas_map`].
    pub fn map(
        &self,
        iova: IovaPlacement,
        src: MapSource<'_>,
        len: u64,
        access: Access,
    ) -> HostResult<Iova> {
        self.host.ioas_map(self.id, iova, src, len, access)
    }

    /// Unmaps a range; see [`HostBackend::ioas_unmap`].
    pub fn unmap(&self, iova: Iova, len: u64) -> HostResult<u64> {
        self.host.ioas_unmap(self.id, iova, len)
    }
}

impl Hwpt {
    /// Allocates a HWPT. Keep the parent's handle alive with
    /// [`Owned::with_parent`] when the parent is another owned object.
    pub fn alloc(host: &SharedHost, req: &HwptAlloc) -> HostResult<Hwpt> {
        Ok(Owned::new(host.clone(), host.hwpt_alloc(req)?))
    }
}

impl Viommu {
    /// Allocates a vIOMMU over `parent`, which it keeps alive.
    pub fn alloc(
        host: &SharedHost,
        dev: DevId,
        parent: &Arc<Hwpt>,
        kind: ViommuType,
    ) -> HostResult<Viommu> {
        let id = host.viommu_alloc(dev, parent.id(), kind)?;
        Ok(Owned::new(host.clone(), id).with_parent(parent.clone()))
    }
}

impl Vdevice {
    /// Allocates a vDEVICE on `viommu`, which it keeps alive.
    pub fn alloc(
        host: &SharedHost,
        viommu: &Arc<Viommu>,
        dev: DevId,
        virt_id: u64,
    ) -> HostResult<Vdevice> {
        let id = host.vdevice_alloc(viommu.id(), dev, virt_id)?;
        Ok(Owned::new(host.clone(), id).with_parent(viommu.clone()))
    }
}

impl Veventq {
    /// Allocates a vEVENTQ on `viommu`, which it keeps alive.
    pub fn alloc(
        host: &SharedHost,
        viommu: &Arc<Viommu>,
        kind: VeventqType,
        depth: u32,
    ) -> HostResult<Veventq> {
        let id = host.veventq_alloc(viommu.id(), kind, depth)?;
        Ok(Owned::new(host.clone(), id).with_parent(viommu.clone()))
    }
}

impl FaultQueue {
    /// Allocates a fault queue.
    pub fn alloc(host: &SharedHost) -> HostResult<FaultQueue> {
        Ok(Owned::new(host.clone(), host.fault_queue_alloc()?))
    }
}

/// A VFIO device bound to the iommufd; detached and unbound on drop.
#[derive(Debug)]
pub struct BoundDevice {
    host: SharedHost,
    id: DevId,
    /// PASIDs (and `None` for the RID) currently attached.
    attached: Vec<Option<Pasid>>,
}

impl BoundDevice {
    /// Binds a device.
    pub fn bind(host: &SharedHost, source: DeviceSource) -> HostResult<BoundDevice> {
        let id = host.bind_device(source)?;
        Ok(BoundDevice {
            host: host.clone(),
            id,
            attached: Vec::new(),
        })
    }

    /// The device ID.
    pub fn id(&self) -> DevId {
        self.id
    }

    /// Attaches the RID or a PASID to `pt`, replacing its current domain
    /// atomically if it has one.
    pub fn attach(&mut self, pasid: Option<Pasid>, pt: PtId) -> HostResult<()> {
        self.host.attach(self.id, pasid, pt)?;
        if !self.attached.contains(&pasid) {
            self.attached.push(pasid);
        }
        Ok(())
    }

    /// Detaches the RID or a PASID.
    pub fn detach(&mut self, pasid: Option<Pasid>) -> HostResult<()> {
        self.host.detach(self.id, pasid)?;
        self.attached.retain(|p| *p != pasid);
        Ok(())
    }

    /// Whether the RID or PASID is attached.
    pub fn is_attached(&self, pasid: Option<Pasid>) -> bool {
        self.attached.contains(&pasid)
    }

    /// The PASIDs attached (the RID not included).
    pub fn attached_pasids(&self) -> impl Iterator<Item = Pasid> + '_ {
        self.attached.iter().flatten().copied()
    }
}

impl Drop for BoundDevice {
    fn drop(&mut self) {
        // PASIDs first, the RID last: the kernel wants the RID's domain in
        // place while PASIDs are torn down on some IOMMUs.
        self.attached.sort_by_key(|p| p.is_none());
        for pasid in std::mem::take(&mut self.attached) {
            if let Err(e) = self.host.detach(self.id, pasid) {
                log::warn!("detaching {} pasid {pasid:?}: {e}", self.id);
            }
        }
        if let Err(e) = self.host.unbind_device(self.id) {
            log::warn!("unbinding {}: {e}", self.id);
        }
    }
}
