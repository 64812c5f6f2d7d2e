//! Intel VT-d guest IOMMU model (Intel Virtualization Technology for
//! Directed I/O, revision 4 and later).
//!
//! # For a VMM author
//!
//! The whole path (MMIO, `IommuMemory` DMA, a nested passthrough device
//! and a refused one, interrupts, stats, snapshot and restore) runs in
//! `examples/examples/vtd.rs`: `cargo run --example vtd`.
//!
//! Create a [`Vtd`] from a [`VtdConfig`] (the `model vtd` options of
//! `REPLAY.md`), map its register page (4 KiB at the DMAR unit's base, as
//! the ACPI DMAR table announces it) and forward MMIO:
//!
//! ```
//! use vtd::VtdConfig;
//! use nesting_core::types::{Access, Bdf, Iova};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vtd::{Vtd, TranslateResult};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut unit = Vtd::new(VtdConfig::legacy_defaults());
//! unit.set_interrupt_callback(|irq| println!("MSI {:#x} <- {:#x}", irq.addr, irq.data));
//! // The guest driver's MMIO accesses:
//! let cap = unit.mmio_read(0x08, 8);
//! assert_ne!(cap, 0);
//! // A device's DMA, before the guest enabled translation, is untranslated:
//! let r = unit.translate(&mem, Bdf(0x08), None, Iova(0x1234), Access::READ);
//! assert!(matches!(r, TranslateResult::Mapped(t) if t.gpa_of(Iova(0x1234)).0 == 0x1234));
//! ```
//!
//! - Registers: [`regs`] declares them as data (chapter 11); CAP/ECAP
//!   derive from the configuration.
//! - Translation: [`translate`] (chapter 3: root, context, PASID tables)
//!   and [`walk`] (first-stage x86 4/5-level walks, second-stage walks,
//!   nested), on formats from [`tables`] (chapter 9).
//! - Invalidation: register-based (CCMD, IOTLB) and queued ([`queue`],
//!   6.5), including invalidation wait with status write, interrupt and
//!   fence, and the IQE/ITE/ICE errors.
//! - Faults: [`fault`] (chapter 7): primary fault logging, FPD, PFO, PPF,
//!   FRI, fault events.
//! - Passthrough: [`passthrough`] backs VFIO devices through
//!   `nesting-core`'s passthrough registry, nested or shadowed as the
//!   ladder decides ([`ladder`] holds the unit's checks against a host). A
//!   VMM enables it once ([`Vtd::enable_passthrough`]) and hands over each
//!   device ([`Vtd::add_passthrough`]); the unit drives the host itself,
//!   so every register write returns after the host work it caused and
//!   no invalidation completes before the host has it. [`nesting`] holds
//!   the events and stage-1 formats it works from, [`shadow`] enumerates
//!   what a shadow mirrors.
//! - Page requests: [`prq`] (VT-d "Recoverable Fault Reporting"), when ECAP.PRS is advertised.
//! - Device-TLBs (ATS): [`ats`]: translation requests
//!   ([`Vtd::translation_request`]) and translated requests
//!   ([`Vtd::translate_translated`]) of emulated ATS devices, and the
//!   guest's device-TLB invalidations delivered to the VMM
//!   ([`Vtd::set_device_tlb_callback`]).
//! - Limits: [`limits`] names the bounds on the work one guest action
//!   can cause (`docs/guest-limits.md` tables them with the caps).
//! - Snapshot and restore: [`snapshot`] (nesting-core's common
//!   `Snapshot` API); counters a VMM exports: [`Vtd::stats`].
//!
//! The unit's host address width (output addresses and table pointers)
//! equals the configured address width `aw`: the VMM's ACPI DMAR table
//! should report `Host Address Width = aw - 1`, and guest RAM must lie
//! below `2^aw`.
//!
//! Interrupts (fault events, invalidation completion events, page request
//! events) are MSIs raised through the callback of
//! [`Vtd::set_interrupt_callback`]. Interrupt remapping is not modelled.
#![forbid(unsafe_code)]

pub mod acpi;
pub mod ats;
pub mod fault;
pub mod ladder;
pub mod limits;
pub mod nesting;
pub mod options;
pub mod passthrough;
pub mod prq;
pub mod queue;
pub mod regs;
pub mod shadow;
pub mod snapshot;
pub mod stats;
pub mod tables;
pub mod translate;
pub mod walk;

mod model;
mod shared;

#[cfg(any(test, feature = "test-utils"))]
pub mod mock;

#[cfg(test)]
mod tests;

pub use ats::{
    AtsCompletion, AtsResponse, AtsTranslation, DeviceTlbInvalidation, TranslationRequest,
};
pub use model::{Interrupt, InterruptSource, TranslateResult, Vtd};
pub use nesting_core::iotlb::Translation;
pub use options::VtdConfig;
pub use passthrough::PassthroughBackend;
pub use shared::SharedVtd;
pub use stats::VtdStats;
