//! Arm SMMUv3 guest IOMMU model (Arm IHI 0070, SMMUv3.2 features).
//!
//! # For a VMM author
//!
//! The whole path (MMIO, `IommuMemory` DMA, IORT and device tree, a nested
//! passthrough device and a refused one, interrupts, stats, snapshot and
//! restore) runs in `examples/examples/smmuv3.rs`: `cargo run --example
//! smmuv3`.
//!
//! Create an [`Smmuv3`] from a [`Smmuv3Config`] (the `model smmuv3`
//! options of `REPLAY.md`), map its two 64 KiB register pages
//! ([`regs::off::SIZE`] bytes: page 0 at the base, page 1 at base +
//! 0x10000) and forward MMIO. Emulated devices' DMA goes through
//! [`Smmuv3::translate`] (or [`SharedSmmuv3`] and nesting-core's
//! `IommuView` for vm-memory).
//!
//! ```
//! use nesting_core::types::{Access, Iova};
//! use smmuv3::{Smmuv3, Smmuv3Config, TranslateResult};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut smmu = Smmuv3::new(Smmuv3Config::default());
//! smmu.set_interrupt_callback(|irq| {
//!     println!("{irq:?}");
//!     true
//! });
//! // The guest driver's MMIO accesses:
//! let idr0 = smmu.mmio_read(0x0, 4);
//! assert_ne!(idr0 & 0b10, 0); // IDR0.S1P
//! // Before the guest enables the SMMU, DMA bypasses it (SMMU_GBPA):
//! let r = smmu.translate(&mem, 8, None, Iova(0x1234), Access::READ);
//! assert!(matches!(r, TranslateResult::Mapped(t) if t.gpa_of(Iova(0x1234)).0 == 0x1234));
//! ```
//!
//! - Registers: [`regs`] declares them as data (chapter 6); the ID
//!   registers derive from the configuration.
//! - Configuration: [`strtab`] (linear and two-level stream tables, STE
//!   checks) and [`cd`] (linear and two-level CD tables, CD checks).
//! - Translation: [`translate`] (3.3) over [`walk`] (AArch64 stage 1 and
//!   stage 2, every granule, nested, access flag and dirty state updates).
//! - Commands: [`cmdq`] (decode) and `cmdq_exec` (the queue, CMD_SYNC,
//!   CERROR_ILL/ABT/ATC_INV_SYNC); TLB tagging in [`tlb`].
//! - Events: [`event`] (chapter 7), interrupts and global errors in
//!   [`irq`]; stalls in [`stall`]; the PRI queue in [`priq`]; ATS in
//!   [`ats`].
//! - Passthrough: [`passthrough`] nests passthrough devices on the
//!   host's SMMUv3 through iommufd ([`Smmuv3::enable_passthrough`],
//!   [`Smmuv3::add_passthrough`], [`Smmuv3::poll_host_events`],
//!   [`Smmuv3::passthrough_msi_window`]); [`host`] is the seam another
//!   backend plugs into. A CMD_SYNC completes only after both.
//! - Host requirements for nesting: [`ladder`].
//! - Firmware tables a guest finds the SMMU by: [`acpi`] (the IORT, with
//!   an RMR for a passthrough device's MSI window) and [`fdt`] (the
//!   `arm,smmu-v3` node, `iommu-map`, the window as reserved memory).
//! - Snapshot and restore: [`snapshot`] (nesting-core's common
//!   `Snapshot` API); counters a VMM exports: [`Smmuv3::stats`].
//!
//! Each [`Smmuv3`] is independent: several in one VM each have their own
//! registers, StreamID space and translation cache.
#![forbid(unsafe_code)]

pub mod acpi;
pub mod ats;
pub mod caps;
pub mod cd;
pub mod cfgcache;
pub mod cmdq;
mod cmdq_exec;
pub mod event;
pub mod fdt;
pub mod host;
pub mod irq;
pub mod ladder;
pub mod limits;
pub mod options;
pub mod passthrough;
pub mod priq;
pub mod queue;
pub mod regs;
pub mod snapshot;
pub mod stall;
pub mod stats;
pub mod strtab;
pub mod tlb;
pub mod translate;
pub mod walk;
pub mod wire;

mod model;
mod shared;

#[cfg(any(test, feature = "test-utils"))]
pub mod mock;

#[cfg(test)]
mod tests;

pub use ats::{AtcInvalidation, AtsRequest, AtsResponse};
pub use cmdq::Command;
pub use host::{HostCommands, Refused};
pub use irq::{Interrupt, IrqSource, Signal};
pub use model::{PriResponseNotice, Smmuv3, TranslateResult};
pub use nesting_core::iotlb::Translation;
pub use options::Smmuv3Config;
pub use priq::{PageRequest, PageRequestOutcome};
pub use shared::SharedSmmuv3;
pub use stall::{Stall, StallOutcome, StallResolution};
pub use stats::Smmuv3Stats;
