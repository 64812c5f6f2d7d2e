//! Arm SMMUv3 guest IOMMU model (Arm IHI 0070).
//!
//! The model's options ([`options`], the `model smmuv3` options of
//! `REPLAY.md`) and what it needs from a host ([`ladder`]) are here; the
//! device itself (stream table, context descriptors, command and event
//! queues, stage-1 and stage-2 walks) is not implemented yet. A guest
//! SMMUv3 sends no invalidation when it maps, so passthrough devices
//! behind it can only be nested, never shadowed.
#![forbid(unsafe_code)]

pub mod ladder;
pub mod options;

pub use options::Smmuv3Config;
