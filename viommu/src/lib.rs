//! The `viommu` tool as a library: `probe` (which way would a passthrough
//! device go on this host?), `replay` (run `.viommu` scenario scripts,
//! the contract of `REPLAY.md`) and `models` (the model crates by the
//! names the `model` directive uses). The binary in `main.rs` is a thin wrapper,
//! and the cross-crate tests call the same functions.
#![forbid(unsafe_code)]

pub mod models;
pub mod probe;
pub mod replay;
