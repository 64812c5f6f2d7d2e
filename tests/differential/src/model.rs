//! Our side: the `smmuv3` model in-process, with guest RAM laid out as
//! QEMU's `virt` lays it out (one region at [`RAM_BASE`]), so both sides
//! see the same physical address map and a scenario's addresses mean
//! the same thing on both.

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Gpa, Iova};
use smmuv3::{Smmuv3, Smmuv3Config, TranslateResult};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::qemu::RAM_BASE;

/// What our model did with one DMA write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelDma {
    /// Translated to this address.
    Mapped(u64),
    /// Terminated (aborted, or RAZ/WI with CD.A = 0: the write is
    /// dropped either way).
    Fault,
}

/// The model with its guest RAM.
pub struct ModelSide {
    /// The SMMU.
    pub smmu: Smmuv3,
    /// Guest RAM, `[RAM_BASE, RAM_BASE + size)`.
    pub mem: GuestMemoryMmap,
}

/// Errors of the model side: only the harness can cause them.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The RAM could not be created.
    #[error("cannot create {size:#x} bytes of guest RAM")]
    Ram {
        /// Size.
        size: u64,
    },
    /// An access outside guest RAM.
    #[error("{len:#x} bytes at {gpa:#x} are not guest RAM")]
    NotRam {
        /// Address.
        gpa: u64,
        /// Length.
        len: usize,
    },
}

impl ModelSide {
    /// A model of `cfg` at reset, with `size` bytes of RAM.
    pub fn new(cfg: Smmuv3Config, size: u64) -> Result<ModelSide, ModelError> {
        let len = usize::try_from(size).map_err(|_| ModelError::Ram { size })?;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), len)])
            .map_err(|_| ModelError::Ram { size })?;
        let mut smmu = Smmuv3::new(cfg);
        // Wired interrupts and MSIs outside RAM have nowhere to go here.
        smmu.set_interrupt_callback(|_| true);
        Ok(ModelSide { smmu, mem })
    }

    /// A register read.
    pub fn mmio_read(&mut self, offset: u64, size: u32) -> u64 {
        self.smmu.mmio_read(offset, size)
    }

    /// A register write, with everything it starts.
    pub fn mmio_write(&mut self, offset: u64, size: u32, v: u64) {
        self.smmu.mmio_write(&self.mem, offset, size, v);
    }

    /// Guest memory.
    pub fn read_mem(&self, gpa: u64, len: usize) -> Result<Vec<u8>, ModelError> {
        let mut b = vec![0u8; len];
        self.mem
            .read_bytes_at(Gpa(gpa), &mut b)
            .map_err(|_| ModelError::NotRam { gpa, len })?;
        Ok(b)
    }

    /// Guest memory.
    pub fn write_mem(&self, gpa: u64, bytes: &[u8]) -> Result<(), ModelError> {
        self.mem
            .write_bytes_at(Gpa(gpa), bytes)
            .map_err(|_| ModelError::NotRam {
                gpa,
                len: bytes.len(),
            })
    }

    /// The translation of a write by StreamID `sid` (no SubstreamID,
    /// unprivileged data: what a PCI device without a PASID prefix
    /// issues), as iommu-testdev makes one.
    pub fn dma_write(&mut self, sid: u32, iova: u64) -> ModelDma {
        match self
            .smmu
            .translate(&self.mem, sid, None, Iova(iova), Access::WRITE)
        {
            TranslateResult::Mapped(t) => ModelDma::Mapped(t.gpa_of(Iova(iova)).raw()),
            TranslateResult::Fault { .. } | TranslateResult::Stalled { .. } => ModelDma::Fault,
        }
    }
}
