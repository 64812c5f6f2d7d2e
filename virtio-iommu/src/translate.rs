//! DMA translation for emulated endpoints (virtio 1.3 5.13.6: bypass
//! mode; 5.13.6.5: "PA = VA - virt_start + phys_start" when the access is
//! compatible with the mapping's flags), and fault reporting for the
//! accesses it refuses (5.13.6.9).

use nesting_core::types::Access;
use vm_memory::GuestMemory;

use crate::device::{Interrupt, State, VirtioIommu};
use crate::event::Fault;
use crate::protocol::{EVENT_QUEUE, FaultReason, MapFlags, RESV_MEM_T_MSI};
use crate::queue;

/// The outcome of one DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Translated: the access goes to `gpa`. `len` bytes from `gpa` share
    /// the translation (to the end of the mapping, or of the bypass
    /// space), so a VMM may cache it for that span.
    Mapped {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes from `iova` that translate contiguously.
        len: u64,
    },
    /// Refused; the fault was reported on the event queue (or queued for
    /// it), unless the endpoint is not managed by this device.
    Fault(FaultReason),
}

impl Translation {
    /// The GPA, if translated.
    pub fn gpa(self) -> Option<u64> {
        match self {
            Translation::Mapped { gpa, .. } => Some(gpa),
            Translation::Fault(_) => None,
        }
    }
}

/// Whether a mapping with `flags` allows `access` (5.13.6.5.2: "The device
/// MUST NOT allow writes to a range mapped without the
/// VIRTIO_IOMMU_MAP_F_WRITE flag"; reads need READ: the model supports
/// write-only mappings; an instruction fetch is a read).
fn permits(flags: MapFlags, access: Access) -> bool {
    let needs_read = access.intersects(Access::READ | Access::EXEC);
    let needs_write = access.contains(Access::WRITE);
    (!needs_read || flags.contains(MapFlags::READ))
        && (!needs_write || flags.contains(MapFlags::WRITE))
}

fn identity(iova: u64) -> Translation {
    Translation::Mapped {
        gpa: iova,
        len: (u64::MAX - iova).saturating_add(1),
    }
}

impl State {
    /// Translates without side effects; `Err` carries the fault to report
    /// (`None`: endpoint not managed, nothing to report).
    pub(crate) fn lookup(
        &self,
        endpoint: u32,
        iova: u64,
        access: Access,
    ) -> Result<Translation, Option<Fault>> {
        if !self.cfg.manages(endpoint) {
            return Err(None);
        }
        let fault = |r| Err(Some(Fault::new(r, endpoint, iova, access)));
        let Some(domain_id) = self.tables.domain_of(endpoint) else {
            // 5.13.6.2: "The device SHOULD NOT let unattached endpoints that
            // are not in bypass mode access the guest-physical address
            // space."
            return match self.unattached_bypass() {
                true => Ok(identity(iova)),
                false => fault(FaultReason::Domain),
            };
        };
        let Some(d) = self.tables.domain(domain_id) else {
            return fault(FaultReason::Unspecified);
        };
        // 5.13.6: "All accesses from an endpoint in bypass mode are allowed
        // and translated by the IOMMU using the identity function."
        if d.bypass {
            return Ok(identity(iova));
        }
        // 5.13.6.8.1: an MSI region is a doorbell the platform translates
        // (writes pass untranslated); a RESERVED region is never mapped.
        for r in self.endpoint_resv(endpoint) {
            if r.overlaps(iova, iova) {
                return match r.subtype == RESV_MEM_T_MSI && !access.contains(Access::READ) {
                    true => Ok(Translation::Mapped {
                        gpa: iova,
                        len: r.end - iova + 1,
                    }),
                    false => fault(FaultReason::Unspecified),
                };
            }
        }
        match d.lookup(iova) {
            Some(m) if permits(m.map_flags(), access) => Ok(Translation::Mapped {
                gpa: m.gpa + (iova - m.iova_first),
                len: m.iova_last - iova + 1,
            }),
            _ => fault(FaultReason::Mapping),
        }
    }
}

impl<M: GuestMemory> VirtioIommu<M> {
    /// Translates a DMA access of an emulated endpoint. A refused access
    /// is reported as a fault on the event queue before this returns
    /// (written into a posted buffer with an interrupt, or queued until the
    /// driver posts one).
    pub fn translate(&self, endpoint: u32, iova: u64, access: Access) -> Translation {
        let mut g = self.lock();
        let fault = match g.state.lookup(endpoint, iova, access) {
            Ok(t) => return t,
            Err(None) => {
                log::warn!("virtio-iommu: translate for unmanaged endpoint {endpoint:#x}");
                return Translation::Fault(FaultReason::Unspecified);
            }
            Err(Some(f)) => f,
        };
        g.state.events.push(fault);
        let inner = &mut *g;
        if let Some(mem) = inner.mem.clone() {
            let q = &mut inner.queues[usize::from(EVENT_QUEUE)];
            match queue::deliver_events(&mut inner.state.events, q, &*mem) {
                Ok(0) => {}
                Ok(_) => inner.signal(Interrupt::Queue(EVENT_QUEUE)),
                // The event queue is not set up yet: the fault waits.
                Err(e) => log::debug!("virtio-iommu: fault queued: {e}"),
            }
        }
        Translation::Fault(FaultReason::from(fault.reason))
    }
}
