//! Counters a VMM exports for the device ([`VirtioIommu::stats`]): what
//! its emulated endpoints' DMA cost, what the driver was told, and what
//! the host was asked for its passthrough endpoints. Serializable, so a VMM
//! can hand them to its metrics as they are.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemory;

use crate::VirtioIommu;

/// The device's totals since it was made (a restored device keeps the
/// event counts its snapshot carries and starts the others at zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioIommuStats {
    /// DMA translations of emulated endpoints: `iotlb_hits + iotlb_misses`.
    pub translations: u64,
    /// Translations answered by the IOTLB without the device's lock.
    pub iotlb_hits: u64,
    /// Translations looked up in the domains under the lock.
    pub iotlb_misses: u64,
    /// Invalidations applied to the IOTLB (UNMAP, DETACH, `bypass`).
    pub iotlb_invalidations: u64,
    /// Accesses refused (each reported as a fault on the event queue).
    pub faults: u64,
    /// Fault reports written to the event queue.
    pub events_delivered: u64,
    /// Fault reports dropped: the backlog was full or the driver's buffer
    /// unusable.
    pub events_dropped: u64,
    /// Requests a limit refused (domains, mappings).
    pub limit_refusals: u64,
    /// Passthrough endpoints the device backs.
    pub passthrough_endpoints: u64,
    /// Host MAP/COPY/UNMAP calls that shadowed the passthrough endpoints'
    /// domains.
    pub host_calls: u64,
    /// Invalidations sent to the host: always 0, since every passthrough
    /// endpoint is shadowed (a MAP or UNMAP is the host call itself).
    pub invalidations_sent: u64,
}

impl<M: GuestMemory> VirtioIommu<M> {
    /// The device's totals.
    pub fn stats(&self) -> VirtioIommuStats {
        let tlb = self.iotlb.stats();
        let g = self.lock();
        let st = &g.state;
        let mut s = VirtioIommuStats {
            translations: tlb.hits + tlb.misses,
            iotlb_hits: tlb.hits,
            iotlb_misses: tlb.misses,
            iotlb_invalidations: tlb.invalidations,
            faults: st.faults,
            events_delivered: st.events.delivered(),
            events_dropped: st.events.dropped(),
            limit_refusals: st.limit_refusals,
            ..VirtioIommuStats::default()
        };
        if let Some(p) = &st.passthrough {
            s.passthrough_endpoints = p.endpoints().count() as u64;
            s.host_calls = p.registry_stats().shadow_host_calls;
        }
        s
    }
}
