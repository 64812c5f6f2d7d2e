//! Differential harness for the Arm SMMUv3 model: the same `.viommu`
//! scenario runs on our model (in-process) and on QEMU's `arm-smmuv3`
//! (`qemu-system-aarch64 -machine virt,iommu=smmuv3` under qtest, DMA
//! from `iommu-testdev` at devfn = StreamID), and every disagreement is
//! printed and triaged (`docs/smmuv3-differential.md`).
//!
//! - [`qtest`]: the qtest protocol client.
//! - [`qemu`] and [`model`]: the two sides.
//! - [`scenario`]: which `.viommu` scripts qualify, and the model
//!   configuration matching QEMU.
//! - [`run`]: runs a scenario on both and records disagreements.
//! - [`registers`], [`events`]: naming what disagreed.
//! - [`triage`]: known departures (the allow-list).
//! - [`generate`]: proptest-generated stream tables, CDs and page tables.
#![forbid(unsafe_code)]

pub mod events;
pub mod generate;
pub mod model;
pub mod qemu;
pub mod qtest;
pub mod registers;
pub mod run;
pub mod scenario;
pub mod triage;
