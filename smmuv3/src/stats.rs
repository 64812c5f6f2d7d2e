//! Counters a VMM exports for an SMMU ([`Smmuv3::stats`]): what its
//! emulated devices' DMA cost, what the guest was told, and what the host
//! was asked for its passthrough devices. Serializable, so a VMM can hand
//! them to its metrics as they are.

use serde::{Deserialize, Serialize};

use crate::Smmuv3;

/// Counts kept by the SMMU on paths that already hold it mutably; the
/// translation-cache counts are kept by the IOTLB itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Transactions that faulted while the SMMU was enabled.
    pub faults: u64,
    /// Event records not written: event queue disabled, full (overflow
    /// flagged) or its write aborted.
    pub events_dropped: u64,
}

/// An SMMU's totals since it was made (a restored SMMU starts at zero but
/// for `commands`, which the snapshot keeps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smmuv3Stats {
    /// DMA translations of emulated devices: `iotlb_hits + iotlb_misses`.
    pub translations: u64,
    /// Translations answered by the IOTLB without a walk.
    pub iotlb_hits: u64,
    /// Translations that walked the stream and CD tables and page tables
    /// (or bypassed with SMMUEN = 0).
    pub iotlb_misses: u64,
    /// Guest invalidations applied to the IOTLB.
    pub iotlb_invalidations: u64,
    /// Translations that faulted.
    pub faults: u64,
    /// Event records lost (queue disabled, full or aborted).
    pub events_dropped: u64,
    /// Commands executed from the command queue.
    pub commands: u64,
    /// Passthrough devices the SMMU backs.
    pub passthrough_devices: u64,
    /// `IOMMU_HWPT_INVALIDATE` calls for passthrough devices (attaches and
    /// object allocations are not counted).
    pub host_calls: u64,
    /// Invalidation commands the host handled.
    pub invalidations_sent: u64,
    /// Commands the host refused (the guest saw CERROR_ILL).
    pub host_refusals: u64,
    /// Host event records copied into the guest's event queue.
    pub host_events: u64,
    /// Times host events were lost (guest EVTQ overflow flagged).
    pub host_events_lost: u64,
}

impl Smmuv3 {
    /// The SMMU's totals.
    pub fn stats(&self) -> Smmuv3Stats {
        let tlb = self.iotlb().stats();
        let mut s = Smmuv3Stats {
            translations: tlb.hits + tlb.misses,
            iotlb_hits: tlb.hits,
            iotlb_misses: tlb.misses,
            iotlb_invalidations: tlb.invalidations,
            faults: self.counters.faults,
            events_dropped: self.counters.events_dropped,
            commands: self.commands,
            ..Smmuv3Stats::default()
        };
        if let Some(p) = self.passthrough() {
            let b = p.stats();
            s.passthrough_devices = p.streams().count() as u64;
            s.host_calls = b.invalidate_calls;
            s.invalidations_sent = b.invalidations;
            s.host_refusals = b.refused;
            s.host_events = b.events;
            s.host_events_lost = b.lost;
        }
        s
    }
}
