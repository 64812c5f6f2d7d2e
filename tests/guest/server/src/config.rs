//! PCI configuration space of the DMA test endpoint (vfio-user region 7).
//!
//! QEMU's vfio-user-pci reads this space to learn the IDs, the BAR types
//! and the capability list, and forwards guest writes to it. It emulates
//! the BAR address registers and the MSI-X capability itself (the MSI-X
//! table lives in QEMU), so what matters here is that the types, sizes and
//! capability bytes are right and that the Command register's Bus Master
//! Enable bit reaches the device.
//!
//! IDs: vendor 0x1af4, device 0x10f0. PCI IDs for QEMU (docs/specs/
//! pci-ids.rst) sets aside 1af4:10f0..10ff "for experimental usage without
//! registration"; the harness is exactly that. Class 0xff (device does
//! not fit a defined class) keeps every guest driver away from it.

use crate::regfile::{RegFile, RegSpec};

/// Vendor ID of the test endpoint.
pub const VENDOR_ID: u16 = 0x1af4;
/// Device ID of the DMA test endpoint.
pub const DEVICE_ID: u16 = 0x10f0;
/// Size of conventional PCI configuration space.
pub const CONFIG_SIZE: u32 = 256;

/// Size of BAR0, the command registers (one page, so a guest can mmap it).
pub const BAR0_SIZE: u64 = 0x1000;
/// Size of BAR2, which holds the MSI-X table and PBA.
pub const BAR2_SIZE: u64 = 0x1000;
/// MSI-X vectors: 0 is command completion; the rest are kept for the
/// fault reporting of later steps.
pub const MSIX_VECTORS: u32 = 4;
/// Offset of the MSI-X table in BAR2.
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// Offset of the MSI-X PBA in BAR2.
pub const MSIX_PBA_OFFSET: u32 = 0x800;
/// BAR index (BIR) of the MSI-X table and PBA.
pub const MSIX_BIR: u32 = 2;

/// Command register: Memory Space Enable (PCI Local Bus 3.0, 6.2.2).
pub const CMD_MEMORY: u32 = 1 << 1;
/// Command register: Bus Master Enable. "Controls a device's ability to
/// act as a master on the PCI bus. A value of 0 disables the device from
/// generating PCI accesses" (PCI Local Bus 3.0, 6.2.2).
pub const CMD_BUS_MASTER: u32 = 1 << 2;
/// Command register: Interrupt Disable (INTx only; this device has none).
pub const CMD_INTX_DISABLE: u32 = 1 << 10;

/// Status register: Capabilities List.
const STS_CAP_LIST: u32 = 1 << 4;
/// Offset of the MSI-X capability.
pub const MSIX_CAP: u32 = 0x40;
/// MSI-X capability ID (PCI Local Bus 3.0, 6.8.2).
const CAP_ID_MSIX: u32 = 0x11;
/// MSI-X Message Control: MSI-X Enable and Function Mask.
const MSIX_CTRL_WRITABLE: u32 = 0xc000;

/// 32-bit, non-prefetchable memory BAR of `size` bytes: the low four bits
/// are zero (memory, 32-bit, not prefetchable) and the address bits below
/// the size read back as zero (PCI Local Bus 3.0, 6.2.5.1).
const fn mem32_bar_mask(size: u64) -> u32 {
    !((size as u32).wrapping_sub(1)) & 0xffff_fff0
}

static SPECS: &[RegSpec] = &[
    RegSpec::ro("VENDOR", 0x00, 2, VENDOR_ID as u32),
    RegSpec::ro("DEVICE", 0x02, 2, DEVICE_ID as u32),
    RegSpec::rw(
        "COMMAND",
        0x04,
        2,
        0,
        CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE,
    ),
    RegSpec::ro("STATUS", 0x06, 2, STS_CAP_LIST),
    // Revision 1; class 0xff, subclass 0, programming interface 0.
    RegSpec::ro("CLASS_REV", 0x08, 4, 0xff00_0001),
    RegSpec::rw("CACHE_LINE", 0x0c, 1, 0, 0xff),
    RegSpec::ro("HEADER_TYPE", 0x0e, 1, 0),
    RegSpec::rw("BAR0", 0x10, 4, 0, mem32_bar_mask(BAR0_SIZE)),
    RegSpec::rw("BAR2", 0x18, 4, 0, mem32_bar_mask(BAR2_SIZE)),
    RegSpec::ro("SUBSYS_VENDOR", 0x2c, 2, VENDOR_ID as u32),
    RegSpec::ro("SUBSYS", 0x2e, 2, DEVICE_ID as u32),
    RegSpec::ro("CAP_PTR", 0x34, 1, MSIX_CAP),
    RegSpec::rw("INT_LINE", 0x3c, 1, 0, 0xff),
    // Interrupt Pin 0: no INTx; completion is signalled by MSI-X only.
    RegSpec::ro("INT_PIN", 0x3d, 1, 0),
    RegSpec::ro("MSIX_ID", MSIX_CAP, 1, CAP_ID_MSIX),
    RegSpec::ro("MSIX_NEXT", MSIX_CAP + 1, 1, 0),
    // Table Size is encoded as N - 1 (PCI Local Bus 3.0, 6.8.2.3).
    RegSpec::rw(
        "MSIX_CTRL",
        MSIX_CAP + 2,
        2,
        MSIX_VECTORS - 1,
        MSIX_CTRL_WRITABLE,
    ),
    RegSpec::ro("MSIX_TABLE", MSIX_CAP + 4, 4, MSIX_TABLE_OFFSET | MSIX_BIR),
    RegSpec::ro("MSIX_PBA", MSIX_CAP + 8, 4, MSIX_PBA_OFFSET | MSIX_BIR),
];

/// The endpoint's configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    regs: RegFile,
}

impl Default for ConfigSpace {
    fn default() -> Self {
        ConfigSpace {
            regs: RegFile::new(SPECS, CONFIG_SIZE),
        }
    }
}

impl ConfigSpace {
    /// The register file, for region reads and writes.
    pub fn regs(&self) -> &RegFile {
        &self.regs
    }

    /// The register file, mutable.
    pub fn regs_mut(&mut self) -> &mut RegFile {
        &mut self.regs
    }

    /// Whether the function may master the bus (issue DMA).
    pub fn bus_master(&self) -> bool {
        self.regs.get("COMMAND") & CMD_BUS_MASTER != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(c: &ConfigSpace, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.regs().read(off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_read_as_documented() {
        let c = ConfigSpace::default();
        assert_eq!(read32(&c, 0), 0x10f0_1af4);
        assert_eq!(read32(&c, 0x2c), 0x10f0_1af4);
        assert_eq!(read32(&c, 8) >> 24, 0xff);
    }

    #[test]
    fn bar_sizing_write_returns_size_mask() {
        let mut c = ConfigSpace::default();
        c.regs_mut().write(0x10, &[0xff; 4]).unwrap();
        assert_eq!(read32(&c, 0x10), 0xffff_f000);
        c.regs_mut().write(0x14, &[0xff; 4]).unwrap();
        assert_eq!(read32(&c, 0x14), 0, "BAR1 is not implemented");
    }

    #[test]
    fn msix_capability_bytes_match_layout() {
        let c = ConfigSpace::default();
        assert_eq!(read32(&c, 0x34) & 0xff, 0x40);
        assert_eq!(read32(&c, 0x04) >> 16 & STS_CAP_LIST, STS_CAP_LIST);
        // ID 0x11, next 0, table size 3 (4 vectors).
        assert_eq!(read32(&c, 0x40), 0x0003_0011);
        assert_eq!(read32(&c, 0x44), 0x0000_0002);
        assert_eq!(read32(&c, 0x48), 0x0000_0802);
    }

    #[test]
    fn bus_master_follows_command_writes() {
        let mut c = ConfigSpace::default();
        assert!(!c.bus_master());
        c.regs_mut().write(4, &[0x06, 0x00]).unwrap();
        assert!(c.bus_master());
        c.regs_mut().write(4, &[0x02]).unwrap();
        assert!(!c.bus_master());
    }
}
