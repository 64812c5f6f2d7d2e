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
//! - [`guest`]: what a guest IOMMU model needs from a host ([`guest::GuestIommu`]),
//!   in terms that name no model; [`options`]: the `key=value` option parsing
//!   the models share.
//! - [`ladder`]: the nest -> shadow -> refuse decision for a passthrough
//!   device.
//! - [`regs`]: a model's register file as data (declarations, values,
//!   the shared write rule).
//! - [`ram`]: guest RAM and the RAM IOAS (all guest RAM mapped once, IOVA =
//!   GPA), shared by both engines so every page is pinned once.
//! - [`shadow`]: the shadow engine, mirroring a guest domain's mappings
//!   into a host IOAS by `IOAS_COPY` from the RAM IOAS, in batches, with
//!   rollback on host failure.
//! - [`passthrough`]: the registry of every model's passthrough devices:
//!   where each requester is (blocked, identity, a shadow space, a nested
//!   context), changed by all-or-nothing plans.
//! - [`nested`]: the nested engine: NEST_PARENT stage 2 over the RAM IOAS,
//!   nested HWPTs per guest context and PASID, batched invalidations,
//!   vIOMMU events and page requests.
//! - [`iotlb`]: the translation cache for emulated devices, lock-free on
//!   lookup, and [`iotlb::IommuView`], a vm-memory `Iommu` over a model.
//! - [`snapshot`]: the snapshot and restore API every model implements
//!   ([`snapshot::Snapshot`]), its error and its versioned envelope.
//! - [`ratelimit`]: [`guest_log!`], the rate-limited log line for
//!   everything a guest can trigger.
//! - `testing` (feature `test-utils`): guest memory that counts accesses
//!   and a line-counting logger, for the per-action bounds of
//!   `docs/guest-limits.md`.
//!
//! # Plugging it into a VMM
//!
//! Runnable, one per model on the simulated host, in the workspace's
//! `examples/` package: `cargo run --example vtd`, `--example smmuv3`,
//! `--example virtio_iommu` (each also a test `cargo test` runs).
//!
//! One host backend serves the whole VM. For each passthrough device, bind
//! it, describe its host IOMMU, and let the ladder decide against what the
//! guest model says it needs (each model crate implements
//! [`guest::GuestIommu`] for its configuration: `vtd::VtdConfig`,
//! `smmuv3::Smmuv3Config`, `virtio_iommu::VirtioIommuConfig`). A VMM opens
//! [`host::Iommufd::open`] (or [`host::Iommufd::from_fd`] with a descriptor
//! from [`host::take_inherited_fd`]) and names the device by
//! [`host::DeviceSource::Path`] or [`host::DeviceSource::Fd`]; the
//! simulated host of the `iommufd-sim` crate stands in for both in tests.
//!
//! ```
//! use std::path::Path;
//!
//! use nesting_core::guest::GuestIommu;
//! use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
//! use nesting_core::host::{DeviceSource, HostError, PtId, sysfs_iommu_unit};
//! use nesting_core::ladder::{self, Decision, HostView};
//!
//! /// Binds the VFIO cdev `cdev` and decides how the guest model backs it.
//! fn decide_device(
//!     host: &SharedHost,
//!     guest: &dyn GuestIommu,
//!     cdev: &Path,
//! ) -> Result<(BoundDevice, Decision), HostError> {
//!     let dev = BoundDevice::bind(host, DeviceSource::Path(cdev.into()))?;
//!     decide(host, guest, dev, sysfs_iommu_unit(cdev))
//! }
//!
//! /// Describes a bound device's host IOMMU and runs the ladder.
//! fn decide(
//!     host: &SharedHost,
//!     guest: &dyn GuestIommu,
//!     mut dev: BoundDevice,
//!     unit: Option<u32>,
//! ) -> Result<(BoundDevice, Decision), HostError> {
//!     // Attached to a scratch IOAS, the device reports what an IOAS can
//!     // map for it.
//!     let ioas = Ioas::alloc(host)?;
//!     dev.attach(None, PtId::Ioas(ioas.id()))?;
//!     let ranges = host.ioas_iova_ranges(ioas.id())?;
//!     dev.detach(None)?;
//!     let view = HostView {
//!         info: host.hw_info(dev.id())?,
//!         iova_ranges: ranges.ranges,
//!         page_size: ranges.alignment,
//!         unit,
//!     };
//!     Ok((dev, ladder::decide(guest, &view)))
//! }
//! ```
//!
//! ## A VMM that keeps its iommufd and devices
//!
//! A VMM built on vfio-ioctls or iommufd-ioctls owns its iommufd (an
//! `Arc<`[`host::IommuFd`]`>`, e.g. `VfioIommufd::iommufd()`) and its cdev
//! devices, which vfio-ioctls binds itself. It shares them with the backend
//! rather than duplicating or handing them over: [`host::Iommufd::from_shared`]
//! for the iommufd, [`host::DeviceSource::Shared`] for a device file the
//! backend is to bind, and [`host::DeviceSource::Bound`] to adopt a binding
//! the VMM made (the kernel refuses a second bind). With the `vfio-ioctls`
//! feature, `DeviceSource::vfio(&Arc<VfioDevice>)` does both for a
//! vfio-ioctls device. Dropping the [`host::objects::BoundDevice`] detaches
//! what it attached and leaves the device bound to the VMM, which closes it
//! when it lets go; `docs/host-ioctls.md` says who closes what.
//!
//! ```
//! use std::fs::File;
//! use std::sync::Arc;
//!
//! use nesting_core::host::objects::{BoundDevice, SharedHost};
//! use nesting_core::host::{DevId, DeviceSource, HostError, IommuFd, Iommufd};
//!
//! /// The backend over the VMM's iommufd, and its device: adopted when the
//! /// VMM bound it already (`bound_as`, e.g. vfio-ioctls'
//! /// `VfioDevice::iommufd_dev_id()`), else bound through the VMM's file.
//! fn share(
//!     iommufd: &Arc<IommuFd>,
//!     cdev: &Arc<File>,
//!     bound_as: Option<DevId>,
//! ) -> Result<(SharedHost, BoundDevice), HostError> {
//!     let host: SharedHost = Arc::new(Iommufd::from_shared(iommufd.clone()));
//!     let source = DeviceSource::shared(cdev.clone());
//!     let source = match bound_as {
//!         Some(dev) => source.bound(dev),
//!         None => source,
//!     };
//!     let dev = BoundDevice::bind(&host, source)?;
//!     Ok((host, dev))
//! }
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
pub mod options;
pub mod passthrough;
pub mod ram;
pub mod ratelimit;
pub mod regs;
pub mod shadow;
pub mod snapshot;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod types;
