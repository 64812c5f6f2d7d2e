//! Arm SMMUv3 guest IOMMU model (Arm IHI 0070).
//!
//! Not implemented yet: this crate is the home of the SMMUv3 model (stream
//! table, context descriptors, command and event queues, stage-1 walks,
//! nesting through `nesting-core`'s vIOMMU/vDEVICE objects). A guest SMMUv3
//! sends no invalidation when it maps, so passthrough devices behind it can
//! only be nested, never shadowed; see `nesting_core::ladder`.
#![forbid(unsafe_code)]
