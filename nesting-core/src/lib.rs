//! nesting-core: what the three guest IOMMU models (VT-d, SMMUv3,
//! virtio-iommu) share.
//!
//! - [`types`]: addresses, permissions, page sizes, requester IDs, PASIDs.
//! - [`mem`]: checked little-endian guest memory access through vm-memory.
//! - [`host`]: the host IOMMU as iommufd sees it: the [`host::HostBackend`]
//!   trait, the real `/dev/iommu` backend ([`host::Iommufd`]) and RAII
//!   handles ([`host::objects`]). The simulated host, for tests, replays
//!   and probes, is the `iommufd-sim` crate, so that a VMM linking this
//!   crate does not carry it.
//! - [`guest`]: the configuration a guest IOMMU model presents.
//! - [`ladder`]: the nest -> shadow -> refuse decision for a passthrough
//!   device.
//! - [`ram`]: guest RAM and the RAM IOAS (all guest RAM mapped once, IOVA =
//!   GPA), shared by both engines so every page is pinned once.
//! - [`shadow`]: the shadow engine, mirroring a guest domain's mappings
//!   into a host IOAS by `IOAS_COPY` from the RAM IOAS, in batches, with
//!   rollback on host failure.
//! - [`nested`]: the nested engine: NEST_PARENT stage 2 over the RAM IOAS,
//!   nested HWPTs per guest context and PASID, batched invalidations,
//!   vIOMMU events and page requests.
//! - [`iotlb`]: the translation cache for emulated devices, lock-free on
//!   lookup, and [`iotlb::IommuView`], a vm-memory `Iommu` over a model.
//!
//! # Plugging it into a VMM
//!
//! One host backend serves the whole VM. For each passthrough device, bind
//! it, describe its host IOMMU, and let the ladder decide. The host is
//! `/dev/iommu` here ([`host::Iommufd::open`], or [`host::Iommufd::from_fd`]
//! with a descriptor from [`host::take_inherited_fd`]) and the device a VFIO
//! cdev ([`host::DeviceSource::Path`] or [`host::DeviceSource::Fd`]); the
//! same sequence runs, tested, on the simulated host in the crate
//! documentation of `iommufd-sim`.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use nesting_core::guest::GuestModel;
//! use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
//! use nesting_core::host::{DeviceSource, Iommufd, PtId};
//! use nesting_core::ladder::{self, DecisionKind, HostView};
//!
//! let host: SharedHost = Arc::new(Iommufd::open()?);
//! let guest = GuestModel::from_options("vtd", &["mode=scalable", "cm=1"])?;
//!
//! let path = DeviceSource::Path("/dev/vfio/devices/vfio0".into());
//! let mut dev = BoundDevice::bind(&host, path)?;
//! let ioas = Ioas::alloc(&host)?;
//! dev.attach(None, PtId::Ioas(ioas.id()))?;
//! let ranges = host.ioas_iova_ranges(ioas.id())?;
//! let view = HostView {
//!     info: host.hw_info(dev.id())?,
//!     iova_ranges: ranges.ranges,
//!     page_size: ranges.alignment,
//!     unit: None,
//! };
//! let decision = ladder::decide(&guest, &view);
//! if decision.kind == DecisionKind::Refuse {
//!     // Fail the attach or the hotplug, saying why.
//!     return Err(decision.reason.into());
//! }
//! println!("{decision}");
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bits;
pub mod guest;
pub mod host;
pub mod iotlb;
pub mod ladder;
pub mod mem;
pub mod nested;
pub mod ram;
pub mod shadow;
pub mod types;
