//! Snapshot and restore of the complete device state, for live migration.
//!
//! The snapshot holds everything the guest can observe: configuration,
//! negotiated features, `bypass`, domains with their mappings and
//! endpoints, the fault backlog and the virtqueues' positions. Guest memory
//! and the interrupt callback are the VMM's; passthrough endpoints are
//! re-added by the destination VMM (their host objects cannot migrate)
//! before [`VirtioIommu::restore`], which then rebuilds their host address
//! spaces from the restored domains. Their host holes are the destination
//! host's, as the destination added them; the snapshot keeps which
//! endpoints the driver probed, which decides what may be hot-plugged.

use nesting_core::snapshot::{SnapshotError, check_version};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use crate::config::DeviceConfig;
use crate::device::{MAX_QUEUE_SIZE, VirtioIommu};
use crate::domain::Tables;
use crate::event::EventLog;
use crate::protocol::{Features, NUM_QUEUES};
use crate::state::Probed;

/// Snapshot format version; bumped on any incompatible change.
pub const SNAPSHOT_VERSION: u32 = 1;

/// One split virtqueue's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Ring size the driver chose.
    pub size: u16,
    /// Set up and enabled.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// Next available index the device reads.
    pub next_avail: u16,
    /// Next used index the device writes.
    pub next_used: u16,
}

impl QueueSnapshot {
    fn of(q: &Queue) -> Self {
        QueueSnapshot {
            size: q.size(),
            ready: q.ready(),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }

    fn queue(&self) -> Result<Queue, SnapshotError> {
        let state = virtio_queue::QueueState {
            max_size: MAX_QUEUE_SIZE,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: false,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc,
            avail_ring: self.avail,
            used_ring: self.used,
        };
        Queue::try_from(state).map_err(|_| invalid("invalid virtqueue state"))
    }
}

/// The device's state (serde).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Configuration presented.
    pub config: DeviceConfig,
    /// Negotiated feature bits.
    pub features: u64,
    /// FEATURES_OK accepted.
    pub features_ok: bool,
    /// Config field `bypass`.
    pub bypass: bool,
    /// Domains, mappings, attachments.
    pub tables: Tables,
    /// Waiting faults and counters.
    pub events: EventLog,
    /// Request and event queues.
    pub queues: [QueueSnapshot; NUM_QUEUES],
    /// Passthrough endpoints (re-added by the destination VMM).
    pub passthrough: Vec<u32>,
    /// Endpoints the driver probed since FEATURES_OK (at most
    /// [`crate::MAX_PROBED_ENDPOINTS`]).
    #[serde(default)]
    pub probed: Vec<u32>,
    /// Every endpoint counts as probed. A snapshot without the field (from
    /// before the device kept probes per endpoint) reads as true: a
    /// hot-plug whose PROBE would have to announce host holes is then
    /// refused rather than announced to a driver that may not ask.
    #[serde(default = "every_endpoint")]
    pub probed_all: bool,
}

fn every_endpoint() -> bool {
    true
}

fn invalid(what: &'static str) -> SnapshotError {
    SnapshotError::Invalid { what }
}

/// The common API (model `"virtio-iommu"`, format [`SNAPSHOT_VERSION`]):
/// `dev.to_bytes()` is what a VMM stores; `VirtioIommu::from_bytes` makes
/// a device without passthrough endpoints. A destination with passthrough
/// endpoints makes its device, adds them, then loads the state with
/// [`VirtioIommu::restore`] (decoded by
/// [`nesting_core::snapshot::Snapshot::state_from_bytes`]).
impl<M: GuestMemory> nesting_core::snapshot::Snapshot for VirtioIommu<M> {
    const MODEL: &'static str = "virtio-iommu";
    const VERSION: u32 = SNAPSHOT_VERSION;
    type State = Snapshot;

    fn snapshot(&self) -> Snapshot {
        VirtioIommu::snapshot(self)
    }

    fn restore(state: &Snapshot) -> Result<Self, SnapshotError> {
        VirtioIommu::from_snapshot(state)
    }
}

impl<M: GuestMemory> VirtioIommu<M> {
    /// The complete device state.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        let st = &g.state;
        let (probed, probed_all) = st.probed.parts();
        Snapshot {
            version: SNAPSHOT_VERSION,
            config: st.cfg.clone(),
            features: st.features.bits(),
            features_ok: st.features_ok,
            bypass: st.bypass,
            tables: st.tables.clone(),
            events: st.events.clone(),
            queues: [
                QueueSnapshot::of(&g.queues[0]),
                QueueSnapshot::of(&g.queues[1]),
            ],
            passthrough: st
                .passthrough
                .as_ref()
                .map(|p| p.endpoints().collect())
                .unwrap_or_default(),
            probed,
            probed_all,
        }
    }

    /// A device in the state of `snap`, with no passthrough endpoint: for
    /// a destination without passthrough devices.
    pub fn from_snapshot(snap: &Snapshot) -> Result<Self, SnapshotError> {
        if !snap.passthrough.is_empty() {
            return Err(invalid(
                "the snapshot has passthrough endpoints: add them, then restore",
            ));
        }
        snap.config
            .validate(0)
            .map_err(|e| SnapshotError::Config(e.into()))?;
        let dev = VirtioIommu::from_config(snap.config.clone());
        dev.restore(snap)?;
        Ok(dev)
    }

    /// Loads `snap` into this device, whose passthrough endpoints (if
    /// any) the VMM added already, the same set as on the source. Every
    /// part is checked before anything changes; passthrough endpoints are
    /// then moved into the host spaces the restored domains give them. An
    /// `Err` after the checks ([`SnapshotError::Passthrough`]: the host
    /// could not rebuild a passthrough endpoint's space) leaves a device
    /// that must not run: fail the migration, or reset the device.
    pub fn restore(&self, snap: &Snapshot) -> Result<(), SnapshotError> {
        check_version::<Self>(snap.version)?;
        snap.config
            .validate(0)
            .map_err(|e| SnapshotError::Config(e.into()))?;
        let tables = snap
            .tables
            .clone()
            .validated()
            .ok_or(invalid("inconsistent domains"))?;
        if tables
            .domains()
            .flat_map(|(_, d)| d.endpoints.iter())
            .any(|e| !snap.config.manages(*e))
        {
            return Err(invalid("an attached endpoint is not managed"));
        }
        let events = snap
            .events
            .clone()
            .validated()
            .ok_or(invalid("event backlog over its bound"))?;
        let features = Features::from_bits(snap.features)
            .filter(|f| snap.config.offered().contains(*f))
            .ok_or(invalid("features not offered"))?;
        let queues = [snap.queues[0].queue()?, snap.queues[1].queue()?];
        let probed = Probed::from_parts(&snap.probed, snap.probed_all)
            .ok_or(invalid("probed endpoints over their bound"))?;
        let mut g = self.lock();
        let mine: Vec<u32> = g
            .state
            .passthrough
            .as_ref()
            .map(|p| p.endpoints().collect())
            .unwrap_or_default();
        if mine != snap.passthrough {
            return Err(invalid("passthrough endpoints differ from the source's"));
        }
        // Passthrough endpoints leave the domain spaces of this device's
        // previous state first (emptied if one cannot), so that no space of
        // the same domain ID is reused with mappings the snapshot lacks.
        g.state.reset();
        g.state.cfg = snap.config.clone();
        g.state.features = features;
        g.state.features_ok = snap.features_ok;
        g.state.bypass = snap.bypass;
        g.state.tables = tables;
        g.state.events = events;
        g.state.probed = probed;
        g.queues = queues;
        let moved = g.state.settle();
        self.invalidate_all(&mut g.state);
        moved.map_err(|(endpoint, e)| SnapshotError::Passthrough {
            endpoint,
            source: Box::new(crate::nesting::PassthroughError::from(e)),
        })
    }
}
