//! DMA translation for emulated endpoints (virtio 1.3 5.13.6: bypass
//! mode; 5.13.6.5: "PA = VA - virt_start + phys_start" when the access is
//! compatible with the mapping's flags), and fault reporting for the
//! accesses it refuses (5.13.6.9).

use nesting_core::iotlb::{Iotlb, IotlbTag, Translate, TranslateFault, Translation as IotlbPage};
use nesting_core::types::{Access, EndpointId, Gpa, Iova, PageSize, Pasid, RequesterId};
use vm_memory::GuestMemory;

use crate::config::ResvMem;
use crate::device::VirtioIommu;
use crate::domain::Mapping;
use crate::event::Fault;
use crate::nesting::access_of;
use crate::protocol::{EVENT_QUEUE, FaultReason, MapFlags, RESV_MEM_T_MSI};
use crate::queue;
use crate::state::State;

/// The outcome of one DMA access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Translated: the access goes to `gpa`. `len` bytes from `gpa` share
    /// the translation (to the end of the mapping, or of the bypass
    /// space), so a VMM may cache it for that span.
    Mapped {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes from `iova` that translate contiguously; at least 1.
        /// Saturates at `u64::MAX`: a span from IOVA 0 to the top of the
        /// space (a MAP of `[0, u64::MAX]`, as Linux's identity domain
        /// sends without BYPASS_CONFIG) holds 2^64 bytes, one more than
        /// fits. A consumer walking a buffer advances with
        /// `iova.checked_add(len)` and stops at `None` (the top of the
        /// space), never with a wrapping add.
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

/// A successful lookup: the result and, when it can be cached, the page
/// (with the domain tag) to put in the IOTLB.
pub(crate) struct Hit {
    pub t: Translation,
    pub page: Option<(IotlbTag, IotlbPage)>,
}

/// Tag of translations that belong to no domain (an unattached endpoint in
/// bypass); invalidated by requester or globally.
const NO_DOMAIN: u32 = u32::MAX;

/// The largest page of 1 GiB, 2 MiB or 4 KiB around `iova` that lies
/// inside `[first, last]` and maps to a `size`-aligned GPA (`gpa_of` gives
/// the GPA of an IOVA).
fn page_of(
    iova: u64,
    first: u64,
    last: u64,
    gpa_of: impl Fn(u64) -> u64,
) -> Option<(u64, PageSize)> {
    [PageSize::SIZE_1G, PageSize::SIZE_2M, PageSize::SIZE_4K]
        .into_iter()
        .find_map(|size| {
            let base = iova & !size.mask();
            let end = base.checked_add(size.mask())?;
            let fits = first <= base && end <= last && gpa_of(base) & size.mask() == 0;
            fits.then_some((base, size))
        })
}

impl State {
    /// Translates without side effects; `Err` carries the fault to report
    /// (`None`: endpoint not managed, nothing to report).
    pub(crate) fn lookup(
        &self,
        endpoint: u32,
        iova: u64,
        access: Access,
    ) -> Result<Hit, Option<Fault>> {
        if !self.cfg.manages(endpoint) {
            return Err(None);
        }
        let fault = |r| Err(Some(Fault::new(r, endpoint, iova, access)));
        let Some(domain_id) = self.tables.domain_of(endpoint) else {
            // 5.13.6.2: "The device SHOULD NOT let unattached endpoints that
            // are not in bypass mode access the guest-physical address
            // space."
            return match self.unattached_bypass() {
                true => Ok(identity_hit(iova, NO_DOMAIN, access)),
                false => fault(FaultReason::Domain),
            };
        };
        let Some(d) = self.tables.domain(domain_id) else {
            return fault(FaultReason::Unspecified);
        };
        // 5.13.6: "All accesses from an endpoint in bypass mode are allowed
        // and translated by the IOMMU using the identity function."
        if d.bypass {
            return Ok(identity_hit(iova, domain_id, access));
        }
        let resv = self.endpoint_resv(endpoint);
        // 5.13.6.8.1: an MSI region is a doorbell the platform translates
        // (writes pass untranslated); a RESERVED region is never mapped.
        // 5.13.6.9: R_MAPPING is "The endpoint attempted to access
        // address, which wasn't mapped in the domain or didn't have the
        // correct protection flags": a reserved address is not mapped (and
        // an MSI doorbell is not mapped for reads); R_UNKNOWN is for
        // internal errors. QEMU reports R_MAPPING here too.
        if let Some(r) = resv.iter().find(|r| r.overlaps(iova, iova)) {
            if r.subtype != RESV_MEM_T_MSI || access.intersects(Access::READ | Access::EXEC) {
                return fault(FaultReason::Mapping);
            }
            return Ok(msi_hit(r, iova, domain_id, access));
        }
        match d.lookup(iova).filter(|m| permits(m.map_flags(), access)) {
            Some(m) => Ok(mapping_hit(m, &resv, iova, domain_id, access)),
            None => fault(FaultReason::Mapping),
        }
    }
}

/// An IOTLB entry of `domain`: `size` bytes from `base` to `gpa`.
fn entry(
    domain: u32,
    base: u64,
    gpa: u64,
    size: PageSize,
    access: Access,
) -> (IotlbTag, IotlbPage) {
    let tag = IotlbTag { domain, asid: None };
    let page = IotlbPage {
        iova: Iova(base),
        gpa: Gpa(gpa),
        size,
        access,
    };
    (tag, page)
}

/// Bypass: identity, every permission; cached by the largest page.
fn identity_hit(iova: u64, domain: u32, access: Access) -> Hit {
    let granted = Access::RW | Access::EXEC | (access & Access::PRIV);
    Hit {
        t: identity(iova),
        page: page_of(iova, 0, u64::MAX, |v| v)
            .map(|(base, size)| entry(domain, base, base, size, granted)),
    }
}

/// A write to an MSI doorbell region: identity, writes only.
fn msi_hit(r: &ResvMem, iova: u64, domain: u32, access: Access) -> Hit {
    let granted = Access::WRITE | (access & Access::PRIV);
    Hit {
        t: Translation::Mapped {
            gpa: iova,
            // The region may end at u64::MAX: saturate (see `len`).
            len: (r.end - iova).saturating_add(1),
        },
        page: page_of(iova, r.start, r.end, |v| v)
            .map(|(base, size)| entry(domain, base, base, size, granted)),
    }
}

/// A mapping's translation; cached by the largest page of it that keeps
/// clear of the RESV_MEM regions.
fn mapping_hit(m: &Mapping, resv: &[ResvMem], iova: u64, domain: u32, access: Access) -> Hit {
    let gpa_of = |v: u64| m.gpa + (v - m.iova_first);
    let mut granted = access_of(m.map_flags()) | (access & Access::PRIV);
    if granted.contains(Access::READ) {
        granted |= Access::EXEC;
    }
    let page = page_of(iova, m.iova_first, m.iova_last, gpa_of)
        .filter(|(base, size)| !resv.iter().any(|r| r.overlaps(*base, base + size.mask())))
        .map(|(base, size)| entry(domain, base, gpa_of(base), size, granted));
    Hit {
        t: Translation::Mapped {
            gpa: gpa_of(iova),
            // A mapping of [0, u64::MAX] hit at 0 spans 2^64 bytes:
            // saturate (see `len`).
            len: (m.iova_last - iova).saturating_add(1),
        },
        page,
    }
}

impl<M: GuestMemory> VirtioIommu<M> {
    /// Translates a DMA access of an emulated endpoint. A refused access
    /// is reported as a fault on the event queue before this returns
    /// (written into a posted buffer with an interrupt, or queued until the
    /// driver posts one). Hits in the device's IOTLB take no lock.
    pub fn translate(&self, endpoint: u32, iova: u64, access: Access) -> Translation {
        let rid = RequesterId::Endpoint(EndpointId(endpoint));
        if let Some(p) = self.iotlb.lookup(rid, None, Iova(iova), access) {
            let off = iova - p.iova.raw();
            return Translation::Mapped {
                gpa: p.gpa.raw() + off,
                len: p.size.bytes() - off,
            };
        }
        self.iotlb.count_miss();
        let mut g = self.lock();
        let at = self.iotlb.generation();
        let fault = match g.state.lookup(endpoint, iova, access) {
            Ok(hit) => {
                if let Some((tag, page)) = hit.page {
                    self.iotlb.insert(at, rid, None, tag, page);
                }
                return hit.t;
            }
            Err(None) => {
                nesting_core::guest_log!(
                    Warn,
                    "virtio-iommu: translate for unmanaged endpoint {endpoint:#x}"
                );
                return Translation::Fault(FaultReason::Unspecified);
            }
            Err(Some(f)) => f,
        };
        g.state.faults += 1;
        g.state.events.push(fault);
        let inner = &mut *g;
        if let Some(mem) = inner.mem.clone() {
            let q = &mut inner.queues[usize::from(EVENT_QUEUE)];
            match queue::deliver_events(&mut inner.state.events, q, &*mem) {
                Ok(0) => {}
                Ok(_) => inner.signal_used(EVENT_QUEUE, &mem),
                // The event queue is not set up yet: the fault waits.
                Err(e) => nesting_core::guest_log!(Debug, "virtio-iommu: fault queued: {e}"),
            }
        }
        Translation::Fault(FaultReason::from(fault.reason))
    }
}

impl<M: GuestMemory + Send + Sync> Translate for VirtioIommu<M> {
    /// The page holding `iova` for endpoint `rid` (virtio-iommu has no
    /// PASIDs: an access with one is refused). The fault, if any, is
    /// reported on the event queue before this returns.
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<IotlbPage, TranslateFault> {
        let refused = TranslateFault { rid, iova };
        let (RequesterId::Endpoint(EndpointId(ep)), None) = (rid, pasid) else {
            return Err(refused);
        };
        if let Some(p) = self.iotlb.lookup(rid, None, iova, access) {
            return Ok(p);
        }
        // The device's translate fills the IOTLB with the page when the
        // translation covers one (it always does with a granule of 4 KiB or
        // more); a sub-page translation cannot be described as a page and
        // is refused rather than over-granted.
        for _ in 0..2 {
            if let Translation::Fault(_) = VirtioIommu::translate(self, ep, iova.raw(), access) {
                return Err(refused);
            }
            // The walk above counted; reading its entry back is no hit.
            if let Some(p) = self.iotlb.peek(rid, None, iova, access) {
                return Ok(p);
            }
        }
        nesting_core::guest_log!(
            Warn,
            "virtio-iommu: {rid} at {iova:#x} maps less than a page; refused"
        );
        Err(refused)
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}
