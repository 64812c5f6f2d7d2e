//! Intel VT-d guest IOMMU model (Intel Virtualization Technology for
//! Directed I/O, revision 4 and later).
//!
//! Not implemented yet: this crate is the home of the model built by the
//! VT-d issue (legacy and scalable mode, both translation stages, queued
//! invalidation, fault recording, nesting and shadowing through
//! `nesting-core`). Its planned layout follows the spec's chapters:
//! `regs.rs` (chapter 11, register descriptions), `tables.rs`/`walk.rs`
//! (chapter 9, translation structure formats; chapter 3, DMA remapping),
//! `queue.rs` (chapter 6.5, invalidation), `fault.rs` (chapter 7), and
//! `nesting.rs` (what it asks of `nesting-core`).
#![forbid(unsafe_code)]
