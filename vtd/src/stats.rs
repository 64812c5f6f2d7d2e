//! Counters a VMM exports for a unit ([`Vtd::stats`]): what its emulated
//! devices' DMA cost, what the guest was told, and what the host was asked
//! for its passthrough devices. Serializable, so a VMM can hand them to
//! its metrics as they are.

use serde::{Deserialize, Serialize};

use crate::Vtd;

/// Counts kept by the unit on paths that already hold it mutably (faults);
/// translation-cache counts are kept by the IOTLB itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// DMA requests that faulted (recorded, dropped or FPD).
    pub faults: u64,
    /// Faults not recorded because the fault log was full (FSTS.PFO).
    pub faults_dropped: u64,
}

/// A unit's totals since it was made (a restored unit starts at zero but
/// for `descriptors`, which the snapshot keeps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtdStats {
    /// DMA translations of emulated devices: `iotlb_hits + iotlb_misses`.
    pub translations: u64,
    /// Translations answered by the IOTLB without a walk.
    pub iotlb_hits: u64,
    /// Translations that walked the guest's tables.
    pub iotlb_misses: u64,
    /// Guest invalidations applied to the IOTLB.
    pub iotlb_invalidations: u64,
    /// Translations that faulted.
    pub faults: u64,
    /// Faults lost because the fault log overflowed (the guest sees
    /// FSTS.PFO).
    pub events_dropped: u64,
    /// Invalidation-queue descriptors processed.
    pub descriptors: u64,
    /// Passthrough devices the unit backs.
    pub passthrough_devices: u64,
    /// Host calls for passthrough devices: shadow MAP/COPY/UNMAP and
    /// nested `IOMMU_HWPT_INVALIDATE` (attaches and object allocations are
    /// not counted).
    pub host_calls: u64,
    /// Invalidation entries the host handled for nested devices.
    pub invalidations_sent: u64,
    /// Faults recorded because the host refused to back a guest entry.
    pub host_refusals: u64,
}

impl Vtd {
    /// The unit's totals.
    pub fn stats(&self) -> VtdStats {
        let tlb = self.iotlb().stats();
        let mut s = VtdStats {
            translations: tlb.hits + tlb.misses,
            iotlb_hits: tlb.hits,
            iotlb_misses: tlb.misses,
            iotlb_invalidations: tlb.invalidations,
            faults: self.counters.faults,
            events_dropped: self.counters.faults_dropped,
            descriptors: self.descriptors_processed(),
            ..VtdStats::default()
        };
        if let Some(p) = self.passthrough() {
            let (b, r) = (p.stats(), p.registry().stats());
            s.passthrough_devices = p.registry().endpoints().count() as u64;
            s.host_calls = r.shadow_host_calls + b.invalidate_calls;
            s.invalidations_sent = b.invalidations;
            s.host_refusals = b.faults_reported;
        }
        s
    }
}
