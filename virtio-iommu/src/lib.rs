//! virtio-iommu device model (virtio 1.3, section 5.13), as the Linux
//! driver (`drivers/iommu/virtio-iommu.c`) uses it.
//!
//! The VMM owns the virtio transport (PCI or MMIO); this crate owns what is
//! behind it: feature negotiation, the device configuration space, the
//! request and event virtqueues (split rings, through `virtio-queue` over
//! `vm-memory`), domains and mappings, fault reports, the translation of
//! emulated endpoints' DMA, and the shadowing of passthrough endpoints into
//! the host IOMMU through `nesting-core`.
//!
//! # Layout
//! - [`protocol`]: wire formats (5.13.3 to 5.13.6.9).
//! - [`config`]: features offered and the configuration space (5.13.3,
//!   5.13.4), adjusted to the host for passthrough endpoints.
//! - [`device`]: [`VirtioIommu`], the device a transport drives.
//! - `queue.rs`: request and event virtqueues; `request.rs`: ATTACH,
//!   DETACH, MAP, UNMAP, PROBE; [`domain`]: domains and mappings;
//!   [`event`]: fault reports; [`translate`]: DMA of emulated endpoints;
//!   [`nesting`]: passthrough endpoints; [`snapshot`]: migration
//!   (nesting-core's common `Snapshot` API); [`stats`]: counters a VMM
//!   exports ([`VirtioIommu::stats`]).
//!
//! # Wiring the device into a VMM
//!
//! The whole path (virtqueues, `IommuMemory` DMA, VIOT, a shadowed
//! passthrough endpoint and a refused one, interrupts, stats, snapshot and
//! restore) runs in `examples/examples/virtio_iommu.rs`: `cargo run
//! --example virtio_iommu`.
//!
//! ```
//! use std::sync::Arc;
//! use nesting_core::options::ModelOptions;
//! use nesting_core::types::Access;
//! use virtio_iommu::{DeviceOptions, Interrupt, Translation, VirtioIommu, VirtioIommuConfig};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! // The model options of REPLAY.md, or a VirtioIommuConfig built in code.
//! let cfg = VirtioIommuConfig::from_options(&["endpoints=8,16"]).unwrap();
//! let dev: Arc<VirtioIommu<GuestMemoryMmap>> =
//!     Arc::new(VirtioIommu::new(&cfg, DeviceOptions::default()).unwrap());
//! let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
//! dev.set_memory(mem);
//! // The transport raises the queue's MSI-X vector (or INTx / MMIO
//! // interrupt status) for each cause.
//! dev.set_interrupt(Arc::new(|cause: Interrupt| {
//!     let _ = cause; // e.g. irqfd.write(1) for the queue's vector
//! }));
//!
//! // Transport hooks:
//! //   device feature select/read  -> dev.device_features()
//! //   FEATURES_OK                 -> dev.ack_features(driver_features)?
//! //   device config read/write    -> dev.read_config / dev.write_config
//! //   queue enable (per queue)    -> dev.setup_queue(idx, size, desc, avail, used)?
//! //   queue notify                -> dev.notify(idx)?
//! //   status = 0                  -> dev.reset()
//! assert_eq!(dev.device_features() >> 32 & 1, 1); // VIRTIO_F_VERSION_1
//!
//! // The emulated devices' DMA path: translate every access. Endpoint 8
//! // is not attached yet and bypass is off, so this faults (and the fault
//! // waits for the driver's event buffers).
//! assert!(matches!(dev.translate(8, 0x1000, Access::READ), Translation::Fault(_)));
//! ```
//!
//! # Configuring for Linux guests
//!
//! Keep `domain_range` starting at 0. With BYPASS_CONFIG, Linux
//! (`drivers/iommu/virtio-iommu.c`) takes `domain_range.start` as the ID
//! of its identity domain and ATTACHes bypassed endpoints to it, but
//! `viommu_detach_dev` sends DETACH with the ID of its static identity
//! domain structure, which is always 0. With a start above 0 that DETACH
//! names a domain the endpoint is not attached to: the device answers
//! S_INVAL (5.13.6.4.2) and Linux WARNs when such a device is released.
//!
//! # The translate callback of emulated devices
//!
//! [`VirtioIommu::translate`] answers one access; translations are cached
//! in the device's IOTLB (hits take no lock) and invalidated before the
//! request that changes them completes. A VMM whose device emulation reads
//! guest memory through vm-memory wraps the device, per endpoint, in
//! `nesting_core::iotlb::IommuView` (the device implements
//! `nesting_core::iotlb::Translate`), which is a vm-memory `Iommu`.
//! A refused access has been reported to the driver on the event queue
//! when `translate` returns; the VMM then fails the DMA (e.g. completes the
//! I/O with an error), as hardware would abort it.
//!
//! # Passthrough (VFIO) endpoints
//!
//! They are always shadowed. Give the device the VM's iommufd and its RAM
//! IOAS once, then each endpoint's bound VFIO device with its host view:
//! the ladder refuses a host that cannot back the device (the device is
//! handed back), and the device's page sizes and input range shrink to
//! what the host can map. Each passthrough endpoint's PROBE announces its
//! own host's IOVA holes. A device hot-plugged into a running guest is
//! accepted when the page sizes and input range the driver read still
//! hold (present an input range your hosts map) and its holes can still
//! be announced (PROBE negotiated, that endpoint not probed yet). The device keeps the host objects (one
//! `nesting_core::passthrough::Registry`): every ATTACH, DETACH, MAP and
//! UNMAP that concerns a passthrough endpoint is on the host before the
//! request completes, and a host failure is the request's status.
//!
//! ```
//! use std::sync::Arc;
//! use iommufd_sim::SimIommufd;
//! use iommufd_sim::profile::HostProfile;
//! use nesting_core::host::PtId;
//! use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
//! use nesting_core::ladder::HostView;
//! use nesting_core::ram::{GuestRam, RamIoas};
//! use virtio_iommu::{DeviceOptions, VirtioIommu, VirtioIommuConfig};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! // One iommufd per VM (here the simulated one) and guest RAM mapped once.
//! let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
//! let host: SharedHost = sim.clone();
//! let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
//! let ram = Arc::new(RamIoas::new(&host, GuestRam::from_guest_memory(&*mem).unwrap()).unwrap());
//!
//! // The VFIO device behind endpoint 8: bind it, learn its IOVA ranges.
//! let mut vfio = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
//! let probe = Ioas::alloc(&host).unwrap();
//! vfio.attach(None, PtId::Ioas(probe.id())).unwrap();
//! let ranges = host.ioas_iova_ranges(probe.id()).unwrap();
//! let view = HostView {
//!     info: host.hw_info(vfio.id()).unwrap(),
//!     iova_ranges: ranges.ranges,
//!     page_size: ranges.alignment,
//!     unit: None,
//! };
//! vfio.detach(None).unwrap();
//!
//! let dev = VirtioIommu::<GuestMemoryMmap>::new(&VirtioIommuConfig::default(), DeviceOptions::default()).unwrap();
//! dev.set_passthrough_host(host.clone(), ram).unwrap();
//! // Err((why, vfio)): refused, fail the hot-plug (and drop or reuse vfio).
//! let decision = dev.add_passthrough(8, vfio, &view).map_err(|(e, _)| e).unwrap();
//! println!("endpoint 8: {}", decision.reason);
//! dev.set_memory(mem);
//! // Until the driver attaches it, endpoint 8 is blocked on the host.
//!
//! // Hot-unplug: the device is handed back, detached, its host space
//! // released (dropping it unbinds it). The ID can be plugged again.
//! let vfio = dev.remove_passthrough(8).unwrap();
//! dev.add_passthrough(8, vfio, &view).map_err(|(e, _)| e).unwrap();
//! ```
//!
//! When the host fails while the device moves a passthrough endpoint, the
//! change is undone on the host and not applied to the guest's view: the
//! request gets S_NOMEM, S_UNSUPP or S_DEVERR, a `bypass` write the host
//! cannot follow is not applied, FEATURES_OK and `restore` return the
//! error. A reset cannot be refused: it empties every domain space even if
//! an endpoint cannot leave it (it then reaches nothing, never stale
//! mappings).
#![forbid(unsafe_code)]

pub mod acpi;
pub mod config;
pub mod device;
pub mod domain;
pub mod driver;
pub mod event;
pub mod fdt;
pub mod ladder;
pub mod limits;
#[cfg(any(test, feature = "test-utils"))]
pub mod mock;
pub mod nesting;
pub mod options;
pub mod protocol;
mod queue;
pub mod request;
pub mod snapshot;
mod state;
pub mod stats;
pub mod translate;

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod completion_tests;
#[cfg(test)]
mod failing_host_tests;
#[cfg(test)]
mod hotplug_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod regression_tests;
#[cfg(test)]
mod shadow_tests;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, DeviceConfig, DeviceOptions, MAX_PROBE_SIZE};
pub use device::{
    DeviceError, IOTLB_ENTRIES, Interrupt, InterruptCallback, MAX_QUEUE_SIZE, VirtioIommu,
};
pub use domain::{MAX_DOMAINS, MAX_MAPPINGS_PER_DOMAIN, MAX_MAPPINGS_TOTAL};
pub use event::MAX_QUEUED_EVENTS;
pub use options::VirtioIommuConfig;
pub use protocol::{Features, Status};
pub use queue::{MAX_CHAIN_SEGMENTS, QueueError};
pub use snapshot::Snapshot;
pub use state::MAX_PROBED_ENDPOINTS;
pub use stats::VirtioIommuStats;
pub use translate::Translation;
