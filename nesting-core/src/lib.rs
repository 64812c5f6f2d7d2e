//! nesting-core: what the three guest IOMMU models (VT-d, SMMUv3,
//! virtio-iommu) share.
//!
//! - [`types`]: addresses, permissions, page sizes, requester IDs, PASIDs.
//! - [`mem`]: checked little-endian guest memory access through vm-memory.
//! - [`host`]: the host IOMMU as iommufd sees it: the [`host::HostBackend`]
//!   trait, the real `/dev/iommu` backend ([`host::Iommufd`]), the simulated
//!   one ([`host::SimIommufd`]) and RAII handles ([`host::objects`]).
//! - [`guest`]: the configuration a guest IOMMU model presents.
//! - [`ladder`]: the nest -> shadow -> refuse decision for a passthrough
//!   device.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bits;
pub mod guest;
pub mod host;
pub mod ladder;
pub mod mem;
pub mod types;
