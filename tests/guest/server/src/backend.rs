//! The vfio-user backend of the DMA test endpoint: what the rust-vmm
//! `vfio_user::Server` calls for each client message.
//!
//! Regions (VFIO PCI region indices): BAR0 the command registers, BAR2 the
//! MSI-X table and PBA (QEMU emulates both; reads the client still sends
//! return zero), config space (index 7). IRQs: MSI-X only.

use std::fs::File;
use std::io;
use std::sync::Arc;

use log::{debug, info, warn};
use nesting_core::iotlb::Translate;
use nesting_core::types::RequesterId;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_BAR0_REGION_INDEX,
    VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, vfio_region_info,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, ServerBackend, ServerRegion};

use crate::config::{BAR0_SIZE, BAR2_SIZE, CONFIG_SIZE, ConfigSpace, MSIX_VECTORS};
use crate::dma::DmaEndpoint;
use crate::irq::MsixVectors;
use crate::ram::{GuestRam, invalid};

/// The regions a function announces, indexed by VFIO region index: BAR0,
/// BAR2 and config space of the given sizes (read-write), nothing else.
/// Every function this server hosts has that shape.
pub fn pci_regions(bar0: u64, bar2: u64, config: u64) -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let size = match index {
                VFIO_PCI_BAR0_REGION_INDEX => bar0,
                VFIO_PCI_BAR2_REGION_INDEX => bar2,
                VFIO_PCI_CONFIG_REGION_INDEX => config,
                _ => 0,
            };
            let flags = if size == 0 {
                0
            } else {
                VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
            };
            ServerRegion {
                region_info: vfio_region_info {
                    argsz: size_of::<vfio_region_info>() as u32,
                    index,
                    size,
                    flags,
                    ..Default::default()
                },
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

/// The IRQ indices a function announces: `vectors` MSI-X vectors signalled
/// by eventfd, enabled as a set (`NORESIZE`), nothing else.
pub fn msix_irqs(vectors: u32) -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| {
            let (count, flags) = if index == VFIO_PCI_MSIX_IRQ_INDEX {
                (vectors, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE)
            } else {
                (0, 0)
            };
            IrqInfo {
                index,
                count,
                flags,
            }
        })
        .collect()
}

/// The regions of the DMA endpoint.
pub fn regions() -> Vec<ServerRegion> {
    pci_regions(BAR0_SIZE, BAR2_SIZE, u64::from(CONFIG_SIZE))
}

/// The IRQ indices of the DMA endpoint.
pub fn irqs() -> Vec<IrqInfo> {
    msix_irqs(MSIX_VECTORS)
}

/// The whole device as the server sees it.
#[derive(Debug)]
pub struct EndpointBackend<T: Translate> {
    config: ConfigSpace,
    endpoint: DmaEndpoint<T>,
    ram: GuestRam,
    msix: MsixVectors,
}

impl<T: Translate> EndpointBackend<T> {
    /// The endpoint issuing DMA as `rid` through `model`.
    pub fn new(model: Arc<T>, rid: RequesterId) -> Self {
        EndpointBackend {
            config: ConfigSpace::default(),
            endpoint: DmaEndpoint::new(model, rid),
            ram: GuestRam::default(),
            msix: MsixVectors::new(MSIX_VECTORS),
        }
    }

    /// The guest RAM currently shared.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }
}

impl<T: Translate> ServerBackend for EndpointBackend<T> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_CONFIG_REGION_INDEX => self.config.regs().read(offset, data).map_err(invalid),
            VFIO_PCI_BAR0_REGION_INDEX => self.endpoint.read(offset, data).map_err(invalid),
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
                let touched = self
                    .config
                    .regs_mut()
                    .write(offset, data)
                    .map_err(invalid)?;
                debug!("config write {offset:#x} {data:02x?}: {touched:?}");
                Ok(())
            }
            VFIO_PCI_BAR0_REGION_INDEX => {
                let bus_master = self.config.bus_master();
                self.endpoint
                    .write(offset, data, bus_master, &mut self.msix)
                    .map_err(invalid)
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
            .map_message("endpoint", flags, offset, address, size, fd)?;
        self.endpoint.set_ram(self.ram.memory());
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        self.ram.unmap_message("endpoint", flags, address, size)?;
        self.endpoint.set_ram(self.ram.memory());
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        info!("device reset");
        self.config = ConfigSpace::default();
        self.endpoint.reset();
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
            .set_irqs(index, flags, start, count, fds)
            .inspect_err(|e| warn!("set_irqs: {e}"))
            .map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passthrough::Passthrough;
    use nesting_core::types::Bdf;

    fn backend() -> EndpointBackend<Passthrough> {
        EndpointBackend::new(
            Arc::new(Passthrough::default()),
            RequesterId::Pci(Bdf::new(0, 5, 0)),
        )
    }

    #[test]
    fn regions_announce_bar0_bar2_and_config() {
        let r = regions();
        assert_eq!(r.len(), VFIO_PCI_NUM_REGIONS as usize);
        assert_eq!(r[0].region_info.size, 0x1000);
        assert_eq!(r[1].region_info.size, 0);
        assert_eq!(r[2].region_info.size, 0x1000);
        assert_eq!(r[7].region_info.size, 256);
        assert_eq!(
            r[7].region_info.flags,
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
        );
    }

    #[test]
    fn irqs_offer_msix_only() {
        let i = irqs();
        assert_eq!(i[VFIO_PCI_MSIX_IRQ_INDEX as usize].count, MSIX_VECTORS);
        assert!(i.iter().filter(|q| q.count != 0).count() == 1);
    }

    #[test]
    fn unmappable_fd_then_bus_master_gives_fault_not_error() {
        let mut b = backend();
        let socket = std::fs::File::from(std::os::fd::OwnedFd::from(
            std::os::unix::net::UnixStream::pair().unwrap().0,
        ));
        // A socket cannot be mapped: the region is unbacked, not an error.
        b.dma_map(DmaMapFlags::READ_WRITE, 0, 0, 0x1000, Some(socket))
            .unwrap();
        assert_eq!(b.ram().mapped_regions(), 0);
        b.region_write(0, 0x20, &4u32.to_le_bytes()).unwrap();
        b.region_write(0, 0x08, &1u32.to_le_bytes()).unwrap();
        let mut s = [0u8; 4];
        b.region_read(0, 0x0c, &mut s).unwrap();
        assert_eq!(u32::from_le_bytes(s), 4, "NoBusMaster");
        b.region_write(7, 4, &[0x06, 0]).unwrap();
        b.region_write(0, 0x08, &1u32.to_le_bytes()).unwrap();
        b.region_read(0, 0x0c, &mut s).unwrap();
        assert_eq!(u32::from_le_bytes(s), 3, "WriteFault: nothing backs 0");
    }

    #[test]
    fn function_reset_keeps_scratch_clears_command() {
        let mut b = backend();
        b.region_write(0, 0x3c, &7u32.to_le_bytes()).unwrap();
        b.region_write(7, 4, &[0x06, 0]).unwrap();
        b.reset().unwrap();
        let mut d = [0u8; 4];
        b.region_read(0, 0x3c, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 7);
        b.region_read(7, 4, &mut d).unwrap();
        assert_eq!(d[0] & 0x06, 0, "bus master and memory off after reset");
    }

    #[test]
    fn out_of_range_region_access_is_error() {
        let mut b = backend();
        let mut d = [0u8; 4];
        assert!(b.region_read(7, 254, &mut d).is_err());
        assert!(b.region_read(5, 0, &mut d).is_err());
        assert!(b.region_write(0, 0x1000, &d).is_err());
    }
}
