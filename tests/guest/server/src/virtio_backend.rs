//! The vfio-user backend of a virtio-pci function: configuration space and
//! BAR0 go to the [`VirtioPci`] transport, BAR2 holds the MSI-X table QEMU
//! emulates, guest RAM from `dma_map` becomes the device's memory, and the
//! MSI-X eventfds are the transport's vector sink.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use log::{info, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion};
use vm_memory::GuestMemoryMmap;

use crate::irq::MsixVectors;
use crate::ram::{GuestRam, invalid};
use crate::virtio_pci::caps::{BAR0_SIZE, BAR2_SIZE};
use crate::virtio_pci::{VectorSink, VirtioDevice, VirtioPci};

/// MSI-X vectors of the virtio function: configuration changes and one
/// per queue of a two-queue device (virtio-iommu), as Linux asks for.
pub const VIRTIO_MSIX_VECTORS: u16 = 3;

/// The regions a virtio-pci function announces.
pub fn regions() -> Vec<ServerRegion> {
    crate::backend::pci_regions(BAR0_SIZE, BAR2_SIZE, 256)
}

/// The IRQ indices: MSI-X only.
pub fn irqs() -> Vec<IrqInfo> {
    crate::backend::msix_irqs(u32::from(VIRTIO_MSIX_VECTORS))
}

/// Hands the guest RAM to the device (e.g. `VirtioIommu::set_memory`).
pub type MemorySink = Box<dyn Fn(Arc<GuestMemoryMmap>) + Send>;

/// A virtio-pci function served over vfio-user.
pub struct VirtioBackend<D: VirtioDevice> {
    pci: VirtioPci<D>,
    msix: Arc<Mutex<MsixVectors>>,
    ram: GuestRam,
    set_memory: MemorySink,
}

impl<D: VirtioDevice> VirtioBackend<D> {
    /// The function for `device`; `set_memory` receives the guest RAM
    /// each time the client changes it.
    pub fn new(device: Arc<D>, set_memory: MemorySink) -> Self {
        let msix = Arc::new(Mutex::new(MsixVectors::new(u32::from(VIRTIO_MSIX_VECTORS))));
        let m = Arc::clone(&msix);
        let sink: VectorSink = Arc::new(move |v| {
            m.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .signal(u32::from(v))
        });
        VirtioBackend {
            pci: VirtioPci::new(device, VIRTIO_MSIX_VECTORS, sink),
            msix,
            ram: GuestRam::default(),
            set_memory,
        }
    }

    /// The transport (for its interrupt router).
    pub fn transport(&self) -> &VirtioPci<D> {
        &self.pci
    }

    fn publish_ram(&self) {
        (self.set_memory)(Arc::new(self.ram.memory().clone()));
    }
}

impl<D: VirtioDevice> ServerBackend for VirtioBackend<D> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.pci.config_read(offset, data).map_err(invalid),
            VFIO_PCI_BAR0_REGION_INDEX => self.pci.bar0_read(offset, data).map_err(invalid),
            VFIO_PCI_BAR2_REGION_INDEX => {
                data.fill(0);
                Ok(())
            }
            _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.pci.config_write(offset, data).map_err(invalid),
            VFIO_PCI_BAR0_REGION_INDEX => self.pci.bar0_write(offset, data).map_err(invalid),
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
            .map_message("virtio", flags, offset, address, size, fd)?;
        self.publish_ram();
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        self.ram.unmap_message("virtio", flags, address, size)?;
        self.publish_ram();
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        // The function's reset stands for the platform's (QEMU resets every
        // function on a system reset, a guest reboot included): the device
        // gets a system reset (virtio 1.3 5.13.4.2: `bypass` back to its
        // initial value).
        info!("virtio: function reset");
        self.pci.system_reset();
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
        self.msix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_irqs(index, flags, start, count, fds)
            .inspect_err(|e| warn!("virtio: set_irqs: {e}"))
            .map_err(invalid)
    }
}
