//! The device state the requests, the queues and `translate` work on,
//! apart from the device so that those modules depend on it and not on
//! each other.

use std::collections::BTreeSet;

use nesting_core::iotlb::IotlbInvalidation;

use crate::config::DeviceConfig;
use crate::domain::Tables;
use crate::event::EventLog;
use crate::nesting::Passthrough;
use crate::protocol::Features;

/// Most endpoints the device remembers the driver probed. Linux probes each
/// endpoint once, when its device appears; 65536 is every endpoint of a
/// PCI segment. A guest probing more (any ID is a valid PROBE target when
/// the device manages every endpoint) makes the device forget which: it
/// then counts every endpoint as probed (a hot-plug whose PROBE would have
/// to announce host holes is refused) rather than grow.
pub const MAX_PROBED_ENDPOINTS: usize = 1 << 16;

/// The endpoints the driver has probed since FEATURES_OK: their PROBE
/// answer is given, and a hot-plugged device behind one of them could not
/// have its host holes announced (5.13.6.8: properties are per endpoint,
/// read once by the driver).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Probed {
    endpoints: BTreeSet<u32>,
    /// Past [`MAX_PROBED_ENDPOINTS`] (or unknown, from an old snapshot):
    /// every endpoint counts as probed.
    all: bool,
}

impl Probed {
    /// The set of a snapshot.
    pub fn from_parts(endpoints: &[u32], all: bool) -> Option<Probed> {
        (endpoints.len() <= MAX_PROBED_ENDPOINTS).then(|| Probed {
            endpoints: endpoints.iter().copied().collect(),
            all,
        })
    }

    /// The probed endpoints, and whether every endpoint counts as probed.
    pub fn parts(&self) -> (Vec<u32>, bool) {
        (self.endpoints.iter().copied().collect(), self.all)
    }

    /// The driver probed `endpoint`.
    pub fn record(&mut self, endpoint: u32) {
        if self.all || self.endpoints.contains(&endpoint) {
            return;
        }
        if self.endpoints.len() >= MAX_PROBED_ENDPOINTS {
            nesting_core::guest_log!(
                Warn,
                "virtio-iommu: over {MAX_PROBED_ENDPOINTS} endpoints probed; every endpoint now counts as probed"
            );
            self.endpoints.clear();
            self.all = true;
            return;
        }
        self.endpoints.insert(endpoint);
    }

    /// Whether the driver probed `endpoint`.
    pub fn contains(&self, endpoint: u32) -> bool {
        self.all || self.endpoints.contains(&endpoint)
    }

    /// The device behind `endpoint` is gone (hot-unplug): a device plugged
    /// there next is a new device the driver probes anew.
    pub fn forget(&mut self, endpoint: u32) {
        self.endpoints.remove(&endpoint);
    }
}

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
    /// Endpoints the driver probed since FEATURES_OK.
    pub probed: Probed,
    /// IOTLB invalidations the last changes call for, applied before the
    /// change completes (request used, config write returns).
    pub inv: Vec<IotlbInvalidation>,
    /// Requests refused by a limit (MAX_DOMAINS, MAX_MAPPINGS_*), over the
    /// device's life.
    pub limit_refusals: u64,
    /// Accesses of emulated endpoints refused, over the device's life.
    pub faults: u64,
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
            nesting_core::guest_log!(
                Warn,
                "virtio-iommu: request for domain {domain} refused with S_NOMEM by {limit} ({n} refusal(s) so far); the guest's DMA through it will fault"
            );
        }
    }
}
