//! The `viommu` tool as a library: `probe` (which way would a passthrough
//! device go on this host?) and `replay` (run `.viommu` scenario scripts,
//! the contract of `REPLAY.md`). The binary in `main.rs` is a thin wrapper,
//! and the cross-crate tests call the same functions.
#![forbid(unsafe_code)]

pub mod probe;
pub mod replay;
