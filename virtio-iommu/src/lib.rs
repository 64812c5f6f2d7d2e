//! virtio-iommu device model (virtio 1.3, section 5.13).
//!
//! Not implemented yet: this crate is the home of the virtio-iommu device
//! (feature negotiation, configuration space, request and event queues,
//! ATTACH/DETACH/MAP/UNMAP/PROBE, fault reporting). Passthrough endpoints
//! behind it are always shadowed through `nesting-core`.
#![forbid(unsafe_code)]
