//! The device state the requests, the queues and `translate` work on,
//! apart from the device so that those modules depend on it and not on
//! each other.

use nesting_core::iotlb::IotlbInvalidation;

use crate::config::DeviceConfig;
use crate::domain::Tables;
use crate::event::EventLog;
use crate::nesting::Passthrough;
use crate::protocol::Features;

/// Everything the requests and `translate` work on.
#[derive(Debug)]
pub(crate) struct State {
    pub cfg: DeviceConfig,
    /// Negotiated features (empty before FEATURES_OK).
    pub features: Features,
    pub features_ok: bool,
    /// Config field `bypass` now.
    pub bypass: bool,
    pub tables: Tables,
    pub events: EventLog,
    pub passthrough: Option<Passthrough>,
    /// IOTLB invalidations the last changes call for, applied before the
    /// change completes (request used, config write returns).
    pub inv: Vec<IotlbInvalidation>,
    /// Requests refused by a limit (MAX_DOMAINS, MAX_MAPPINGS_*), over the
    /// device's life.
    pub limit_refusals: u64,
}

impl State {
    /// Counts a request a limit refused and warns about it, rate-limited
    /// by the count (the 1st, 2nd, 4th, 8th, ... refusal is logged). Loud
    /// on purpose: Linux does not read the status of MAP (its
    /// viommu_add_mapping only queues it), so a refused MAP surfaces in
    /// the guest as a DMA fault later, with nothing in the guest's log.
    pub(crate) fn limit_refused(&mut self, limit: &'static str, domain: u32) {
        self.limit_refusals = self.limit_refusals.saturating_add(1);
        let n = self.limit_refusals;
        if n.is_power_of_two() {
            log::warn!(
                "virtio-iommu: request for domain {domain} refused with S_NOMEM by {limit} ({n} refusal(s) so far); the guest's DMA through it will fault"
            );
        }
    }
}
