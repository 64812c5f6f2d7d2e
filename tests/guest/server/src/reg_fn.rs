//! An IOMMU's register function: the unit's registers as BAR0 of a
//! vfio-user function, an MSI-X table in BAR2 (QEMU emulates it; the
//! server only signals its vectors), and guest RAM handed to the unit
//! through the function's `dma_map`s. The VT-d unit ([`crate::vtd_fn`]) and
//! the SMMUv3 ([`crate::smmu_fn`]) serve their registers this way; only
//! their config space, BAR size and model differ ([`RegisterUnit`]).

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use log::{info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};
use vm_memory::GuestMemoryMmap;

use crate::irq::MsixVectors;
use crate::ram::{GuestRam, invalid};
use crate::regfile::{RegFile, RegSpec};

/// A unit whose registers a [`RegisterBackend`] serves.
pub trait RegisterUnit: Send + Sync {
    /// The unit's name in log lines and in `GuestRam`'s messages.
    const NAME: &'static str;
    /// BAR0's size: every register of the unit.
    const BAR_SIZE: u64;
    /// The function's PCI configuration space.
    const CONFIG: &'static [RegSpec];
    /// Register read of `size` bytes (4 or 8) at `offset`.
    fn mmio_read(&self, offset: u64, size: u32) -> u64;
    /// Register write of `size` bytes (4 or 8) at `offset`, with its
    /// synchronous effects.
    fn mmio_write(&self, offset: u64, size: u32, value: u64);
    /// Guest RAM as the function's `dma_map`s now describe it.
    fn set_memory(&self, mem: Arc<GuestMemoryMmap>);
    /// The function is the unit's only presence on the platform: its
    /// reset (QEMU sends one on every system reset, guest reboots
    /// included) is the platform reset the unit follows.
    fn reset(&self);
    /// The function's MSI-X vectors, which the unit's interrupts signal.
    fn msix(&self) -> &Mutex<MsixVectors>;
}

/// The register function's backend.
pub struct RegisterBackend<U> {
    unit: Arc<U>,
    config: RegFile,
    ram: GuestRam,
}

impl<U: RegisterUnit> RegisterBackend<U> {
    /// The function serving `unit`'s registers.
    pub fn new(unit: Arc<U>) -> Self {
        RegisterBackend {
            unit,
            config: RegFile::new(U::CONFIG, 256),
            ram: GuestRam::default(),
        }
    }

    /// The register access size of a BAR0 access of `len` bytes at
    /// `offset`. Both architectures allow aligned 32-bit accesses and, for
    /// 64-bit registers, aligned 64-bit ones (VT-d 10.2: "Software is
    /// expected to access 32-bit registers as aligned doublewords and
    /// 64-bit registers as either aligned doublewords or aligned
    /// quadwords"; IHI 0070 "Register access"). Other sizes, and
    /// accesses past the registers, are refused to the client.
    fn access_size(offset: u64, len: usize) -> io::Result<u32> {
        match len {
            4 | 8 if offset.saturating_add(len as u64) <= U::BAR_SIZE => Ok(len as u32),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    fn memory_changed(&self) {
        self.unit.set_memory(Arc::new(self.ram.memory().clone()));
    }
}

impl<U: RegisterUnit> ServerBackend for RegisterBackend<U> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.read(offset, data).map_err(invalid),
            VFIO_PCI_BAR0_REGION_INDEX => {
                let size = Self::access_size(offset, data.len())?;
                let v = self.unit.mmio_read(offset, size).to_le_bytes();
                data.copy_from_slice(&v[..data.len()]);
                Ok(())
            }
            VFIO_PCI_BAR2_REGION_INDEX => {
                data.fill(0);
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => {
                self.config.write(offset, data).map_err(invalid)?;
                Ok(())
            }
            VFIO_PCI_BAR0_REGION_INDEX => {
                let size = Self::access_size(offset, data.len())?;
                let mut b = [0u8; 8];
                b[..data.len()].copy_from_slice(data);
                self.unit.mmio_write(offset, size, u64::from_le_bytes(b));
                Ok(())
            }
            VFIO_PCI_BAR2_REGION_INDEX => Ok(()),
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        self.ram
            .map_message(U::NAME, flags, offset, address, size, fd)?;
        self.memory_changed();
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        self.ram.unmap_message(U::NAME, flags, address, size)?;
        self.memory_changed();
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        info!(
            "{}: function reset: the unit back to its reset state",
            U::NAME
        );
        self.config.reset();
        self.unit.reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        self.unit
            .msix()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_irqs(index, flags, start, count, fds)
            .inspect_err(|e| warn!("{}: set_irqs: {e}", U::NAME))
            .map_err(invalid)
    }
}
