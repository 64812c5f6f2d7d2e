//! PCI configuration space of a modern virtio-pci function: header, the
//! virtio vendor-specific capabilities (virtio 1.3 4.1.4) and MSI-X.
//!
//! Layout (all structures in BAR0, MSI-X table and PBA in BAR2):
//!
//! | cap at | cfg_type            | BAR0 offset | length |
//! |--------|---------------------|-------------|--------|
//! | 0x40   | 1 COMMON_CFG        | 0x0000      | 0x40   |
//! | 0x50   | 2 NOTIFY_CFG (+mul) | 0x3000      | 0x1000 |
//! | 0x64   | 3 ISR_CFG           | 0x1000      | 1      |
//! | 0x74   | 4 DEVICE_CFG        | 0x2000      | 0x1000 |
//! | 0x84   | 5 PCI_CFG (+data)   | (window)    |        |
//! | 0x98   | MSI-X               | BAR2        |        |

use crate::regfile::{RegFile, RegSpec};

/// Virtio vendor ID (virtio 1.3 4.1.2: "Any PCI device with PCI Vendor ID
/// 0x1AF4 ... is a virtio device").
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 plus the virtio device ID (4.1.2).
pub const MODERN_DEVICE_BASE: u16 = 0x1040;
/// Size of BAR0, which holds every virtio structure.
pub const BAR0_SIZE: u64 = 0x4000;
/// Size of BAR2, the MSI-X table and PBA.
pub const BAR2_SIZE: u64 = 0x1000;
/// BAR0 offset of the common configuration.
pub const COMMON_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (4.1.4.3, up to
/// `admin_queue_num`).
pub const COMMON_LEN: u64 = 0x40;
/// BAR0 offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// BAR0 offset of the device-specific configuration.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Length of the device configuration window.
pub const DEVICE_LEN: u64 = 0x1000;
/// BAR0 offset of the notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Length of the notification area.
pub const NOTIFY_LEN: u64 = 0x1000;
/// `notify_off_multiplier`: queue `n` is notified at `n * 4`.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// Config-space offset of the VIRTIO_PCI_CAP_PCI_CFG capability.
pub const PCI_CFG_CAP: u32 = 0x84;
/// Config-space offset of its `pci_cfg_data` window.
pub const PCI_CFG_DATA: u32 = PCI_CFG_CAP + 16;
/// Config-space offset of the MSI-X capability.
pub const MSIX_CAP: u32 = 0x98;

/// `cfg_type` values (4.1.4).
const COMMON_CFG: u32 = 1;
const NOTIFY_CFG: u32 = 2;
const ISR_CFG: u32 = 3;
const DEVICE_CFG: u32 = 4;
const PCI_CFG: u32 = 5;
/// Vendor-specific capability ID (PCI Local Bus 3.0, appendix H).
const CAP_VNDR: u32 = 0x09;
/// MSI-X capability ID.
const CAP_MSIX: u32 = 0x11;

/// The first dword of a virtio capability: `cap_vndr`, `cap_next`,
/// `cap_len`, `cfg_type`.
const fn head(next: u32, len: u32, cfg_type: u32) -> u32 {
    CAP_VNDR | next << 8 | len << 16 | cfg_type << 24
}

/// `struct virtio_pci_cap` as register specs: head, `bar` (+ `id`,
/// padding), `offset`, `length`.
macro_rules! virtio_cap {
    ($at:expr, $next:expr, $len:expr, $ty:expr, $off:expr, $length:expr) => {
        [
            RegSpec::ro("cap_head", $at, 4, head($next, $len, $ty)),
            RegSpec::ro("cap_bar", $at + 4, 4, 0),
            RegSpec::ro("cap_offset", $at + 8, 4, $off as u32),
            RegSpec::ro("cap_length", $at + 12, 4, $length as u32),
        ]
    };
}

const fn mem32_bar_mask(size: u64) -> u32 {
    !((size as u32).wrapping_sub(1)) & 0xffff_fff0
}

const COMMON: [RegSpec; 4] = virtio_cap!(0x40, 0x50, 16, COMMON_CFG, COMMON_OFFSET, COMMON_LEN);
const NOTIFY: [RegSpec; 4] = virtio_cap!(0x50, 0x64, 20, NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_LEN);
const ISR: [RegSpec; 4] = virtio_cap!(0x64, 0x74, 16, ISR_CFG, ISR_OFFSET, 1);
const DEVICE: [RegSpec; 4] = virtio_cap!(0x74, 0x84, 16, DEVICE_CFG, DEVICE_OFFSET, DEVICE_LEN);

/// Builds the spec table for virtio device `device_id` with `vectors`
/// MSI-X vectors. The PCI_CFG capability's `bar`, `offset` and `length`
/// are writable (4.1.4.9: the driver sets them before accessing
/// `pci_cfg_data`); the data window itself is handled by the transport.
pub fn specs(device_id: u16, vectors: u16) -> Vec<RegSpec> {
    let dev = u32::from(MODERN_DEVICE_BASE + device_id);
    let vendor = u32::from(VIRTIO_VENDOR);
    let mut v = vec![
        RegSpec::ro("VENDOR", 0x00, 2, vendor),
        RegSpec::ro("DEVICE", 0x02, 2, dev),
        RegSpec::rw("COMMAND", 0x04, 2, 0, 0x0406),
        RegSpec::ro("STATUS", 0x06, 2, 1 << 4),
        // 4.1.2.1: "Devices MUST have the PCI Revision ID of 1 or higher";
        // class 0x08 base system peripheral, subclass 0x06 IOMMU (as
        // QEMU's virtio-iommu-pci).
        RegSpec::ro("CLASS_REV", 0x08, 4, 0x0806_0001),
        RegSpec::rw("CACHE_LINE", 0x0c, 1, 0, 0xff),
        RegSpec::rw("BAR0", 0x10, 4, 0, mem32_bar_mask(BAR0_SIZE)),
        RegSpec::rw("BAR2", 0x18, 4, 0, mem32_bar_mask(BAR2_SIZE)),
        RegSpec::ro("SUBSYS_VENDOR", 0x2c, 2, vendor),
        // 4.1.2.1: modern devices SHOULD have a subsystem device ID of
        // 0x40 or higher.
        RegSpec::ro("SUBSYS", 0x2e, 2, 0x40),
        RegSpec::ro("CAP_PTR", 0x34, 1, 0x40),
        RegSpec::rw("INT_LINE", 0x3c, 1, 0, 0xff),
        RegSpec::ro("INT_PIN", 0x3d, 1, 0),
    ];
    for cap in [COMMON, NOTIFY, ISR, DEVICE] {
        v.extend(cap);
    }
    v.push(RegSpec::ro("NOTIFY_MUL", 0x50 + 16, 4, NOTIFY_MULTIPLIER));
    v.push(RegSpec::ro(
        "PCI_CFG_HEAD",
        PCI_CFG_CAP,
        4,
        head(MSIX_CAP, 20, PCI_CFG),
    ));
    v.push(RegSpec::rw("PCI_CFG_BAR", PCI_CFG_CAP + 4, 1, 0, 0xff));
    v.push(RegSpec::rw(
        "PCI_CFG_OFFSET",
        PCI_CFG_CAP + 8,
        4,
        0,
        0xffff_ffff,
    ));
    v.push(RegSpec::rw(
        "PCI_CFG_LENGTH",
        PCI_CFG_CAP + 12,
        4,
        0,
        0xffff_ffff,
    ));
    v.push(RegSpec::ro("MSIX_HEAD", MSIX_CAP, 2, CAP_MSIX));
    v.push(RegSpec::rw(
        "MSIX_CTRL",
        MSIX_CAP + 2,
        2,
        u32::from(vectors) - 1,
        0xc000,
    ));
    v.push(RegSpec::ro("MSIX_TABLE", MSIX_CAP + 4, 4, 2));
    v.push(RegSpec::ro("MSIX_PBA", MSIX_CAP + 8, 4, 0x800 | 2));
    v
}

/// The function's configuration space (256 bytes).
pub fn config_space(device_id: u16, vectors: u16) -> RegFile {
    RegFile::new(specs(device_id, vectors), 256)
}
