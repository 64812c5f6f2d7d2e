//! vfio-user server of the real-guest harness (`tests/guest/run`).
//!
//! QEMU's `vfio-user-pci` device forwards a PCI function's configuration
//! space, BAR accesses, interrupts and DMA to a server process over a UNIX
//! socket (QEMU docs/interop/vfio-user.rst). This crate is that server,
//! built on the rust-vmm `vfio_user` crate's `Server`/`ServerBackend`.
//!
//! It serves a DMA test endpoint (1af4:10f0, see [`config`]): BAR0 holds a
//! command interface (fill and copy between IOVAs, see [`dma`]), BAR2 the
//! MSI-X table QEMU emulates, and completion is signalled on an MSI-X
//! vector. Guest RAM arrives as `dma_map` messages with memfd descriptors
//! ([`ram`]). Every byte the endpoint moves goes through nesting-core's
//! [`Translate`](nesting_core::iotlb::Translate) seam with the endpoint's
//! requester ID; until a guest IOMMU model is plugged in, [`passthrough`]
//! makes every IOVA the guest physical address of the same value.
#![forbid(unsafe_code)]

pub mod account;
pub mod backend;
pub mod config;
pub mod dma;
pub mod irq;
pub mod passthrough;
pub mod ram;
pub mod record;
pub mod reg_fn;
pub mod regfile;
pub mod smmu_fn;
pub mod virtio_backend;
pub mod virtio_pci;
pub mod virtio_record;
pub mod vtd_fn;
