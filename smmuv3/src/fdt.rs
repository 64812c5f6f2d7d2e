//! The device-tree description of an SMMUv3, for guests booted with a
//! device tree (Linux bindings `iommu/arm,smmu-v3.yaml`, the PCI
//! `iommu-map` binding, `reserved-memory/reserved-memory.yaml`).
//!
//! - [`write_smmuv3_node`]: the `iommu@BASE` node: `compatible =
//!   "arm,smmu-v3"`, `reg` covering both 64 KiB register pages, its wired
//!   `interrupts` with their `interrupt-names` (or `msi-parent`),
//!   `dma-coherent`, `#iommu-cells = <1>` (the StreamID) and `phandle`.
//! - [`write_iommu_map`]: `iommu-map` in the PCIe host controller's node:
//!   tuples (rid-base, SMMU phandle, StreamID base, length).
//! - [`write_msi_window_region`]: a `reserved-memory` child that keeps the
//!   host MSI doorbell window of passthrough devices
//!   ([`crate::Smmuv3::passthrough_msi_window`]) mapped one-to-one, the
//!   device-tree way of the IORT's RMR. Linux reads it in
//!   `of_iommu_get_resv_regions` (`drivers/iommu/of_iommu.c`, called from
//!   `iommu_dma_get_resv_regions`): for each node in the *device's*
//!   `memory-region` list, each `iommu-addresses` entry whose phandle is
//!   the device's own node becomes a reserved region, `IOMMU_RESV_DIRECT`
//!   when the node's `reg` equals the IOVA range (what is written here),
//!   `IOMMU_RESV_RESERVED` without `reg`. The address and size cells are
//!   those of the device's DMA parent; the device needs a node of its own
//!   with `memory-region = <&region>`, which for a PCI function is a child
//!   of the host controller named by its devfn. ACPI guests use
//!   [`crate::acpi::Rmr`] instead.
//!
//! All write into a [`FdtWriter`] the VMM builds its tree with, the SMMU
//! node at the level its parent's `#address-cells = <2>` and `#size-cells
//! = <2>` apply to (the root of an arm64 tree):
//!
//! ```
//! use smmuv3::fdt::{SmmuInterrupts, write_iommu_map, write_smmuv3_node, IommuMapEntry};
//! use vm_fdt::FdtWriter;
//!
//! let smmu = 3; // phandle
//! let mut fdt = FdtWriter::new().unwrap();
//! let root = fdt.begin_node("").unwrap();
//! fdt.property_u32("#address-cells", 2).unwrap();
//! fdt.property_u32("#size-cells", 2).unwrap();
//! write_smmuv3_node(&mut fdt, 0x0905_0000, smmu, &SmmuInterrupts::spis(74)).unwrap();
//! let pcie = fdt.begin_node("pcie@10000000").unwrap();
//! fdt.property_string("device_type", "pci").unwrap();
//! // Every requester ID is StreamID = RID of this SMMU.
//! write_iommu_map(&mut fdt, &[IommuMapEntry { rid_base: 0, iommu: smmu, sid_base: 0, length: 0x1_0000 }]).unwrap();
//! fdt.end_node(pcie).unwrap();
//! fdt.end_node(root).unwrap();
//! let dtb = fdt.finish().unwrap();
//! assert_eq!(&dtb[..4], &0xd00d_feedu32.to_be_bytes());
//! ```

use nesting_core::types::IovaRange;
use thiserror::Error;
use vm_fdt::FdtWriter;

use crate::acpi::SMMU_FRAME_SIZE;

/// The node's `compatible`.
pub const COMPATIBLE: &str = "arm,smmu-v3";
/// `#iommu-cells`: one cell, the StreamID (arm,smmu-v3.yaml: const 1).
pub const IOMMU_CELLS: u32 = 1;
/// GIC interrupt specifier: SPI (first cell 0).
const GIC_SPI: u32 = 0;
/// GIC interrupt specifier flags: edge, rising (the binding's example;
/// the SMMU's interrupts are edge-triggered pulses).
const IRQ_TYPE_EDGE_RISING: u32 = 1;

/// The SMMU's interrupts, as three-cell GIC specifiers (`<type number
/// flags>`), each optional. The binding names them "eventq", "gerror",
/// "priq", "cmdq-sync"; Linux uses the first three
/// (`arm_smmu_setup_unique_irqs`) and polls or uses MSIs for sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmmuInterrupts {
    /// Event queue.
    pub eventq: Option<[u32; 3]>,
    /// Global errors.
    pub gerror: Option<[u32; 3]>,
    /// PRI queue.
    pub priq: Option<[u32; 3]>,
    /// CMD_SYNC completion.
    pub cmdq_sync: Option<[u32; 3]>,
    /// `msi-parent = <&its device-id>`: the ITS phandle and the SMMU's
    /// DeviceID, for a guest that programs the SMMU's MSI registers.
    pub msi_parent: Option<(u32, u32)>,
}

impl SmmuInterrupts {
    /// Four edge-triggered SPIs from `first` (event, PRI, GERROR, sync:
    /// the IORT's order, [`crate::acpi::SmmuIrqs::spis`]), numbered as
    /// GIC SPIs (GSIV - 32).
    pub fn spis(first: u32) -> SmmuInterrupts {
        let spi = |n: u32| Some([GIC_SPI, n, IRQ_TYPE_EDGE_RISING]);
        SmmuInterrupts {
            eventq: spi(first),
            priq: spi(first + 1),
            gerror: spi(first + 2),
            cmdq_sync: spi(first + 3),
            msi_parent: None,
        }
    }
}

/// One `iommu-map` tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    /// First requester ID (bus << 8 | devfn).
    pub rid_base: u32,
    /// The SMMU node's phandle.
    pub iommu: u32,
    /// StreamID of `rid_base`.
    pub sid_base: u32,
    /// Number of requester IDs.
    pub length: u32,
}

/// What cannot be written as a valid node or map.
#[derive(Debug, Error)]
pub enum FdtError {
    /// The writer refused (no node open, a property after a child node).
    #[error("writing the device tree")]
    Writer(#[source] vm_fdt::Error),
    /// A phandle of 0 or 0xffffffff, which the device-tree specification
    /// reserves.
    #[error("phandle {0:#x} is reserved")]
    Phandle(u32),
    /// An `iommu-map` tuple with no ID, or whose IDs run past 32 bits
    /// (Linux `of_map_id` compares in 32 bits).
    #[error(
        "iommu-map entry {rid_base:#x}+{length:#x} -> {sid_base:#x} is empty or runs past 32 bits"
    )]
    MapEntry {
        /// First requester ID.
        rid_base: u32,
        /// Number of IDs.
        length: u32,
        /// First StreamID.
        sid_base: u32,
    },
    /// An SMMU node with neither wired interrupts nor an MSI parent.
    #[error("the SMMU node needs interrupts or an msi-parent")]
    NoInterrupts,
    /// A reserved region with no device.
    #[error("the reserved region names no device")]
    NoDevice,
}

impl From<vm_fdt::Error> for FdtError {
    fn from(e: vm_fdt::Error) -> Self {
        FdtError::Writer(e)
    }
}

fn check_phandle(phandle: u32) -> Result<(), FdtError> {
    if phandle == 0 || phandle == u32::MAX {
        return Err(FdtError::Phandle(phandle));
    }
    Ok(())
}

/// Two cells of a 64-bit value (`#address-cells = <2>`).
fn cells64(v: u64) -> [u32; 2] {
    [(v >> 32) as u32, v as u32]
}

/// Writes the SMMU's node `iommu@BASE` into the node open in `fdt` (whose
/// `#address-cells` and `#size-cells` are 2): `reg` covers page 0 and
/// page 1 ([`SMMU_FRAME_SIZE`]), then the interrupts, `dma-coherent` (the
/// model's table walks and queues are coherent), `#iommu-cells = <1>` and
/// `phandle`.
pub fn write_smmuv3_node(
    fdt: &mut FdtWriter,
    base: u64,
    phandle: u32,
    irqs: &SmmuInterrupts,
) -> Result<(), FdtError> {
    check_phandle(phandle)?;
    let named = [
        ("eventq", irqs.eventq),
        ("gerror", irqs.gerror),
        ("priq", irqs.priq),
        ("cmdq-sync", irqs.cmdq_sync),
    ];
    let wired: Vec<(&str, [u32; 3])> = named
        .iter()
        .filter_map(|(n, s)| s.map(|s| (*n, s)))
        .collect();
    if wired.is_empty() && irqs.msi_parent.is_none() {
        return Err(FdtError::NoInterrupts);
    }
    let node = fdt.begin_node(&format!("iommu@{base:x}"))?;
    fdt.property_string("compatible", COMPATIBLE)?;
    let [hi, lo] = cells64(base);
    let [shi, slo] = cells64(SMMU_FRAME_SIZE);
    fdt.property_array_u32("reg", &[hi, lo, shi, slo])?;
    if !wired.is_empty() {
        let cells: Vec<u32> = wired.iter().flat_map(|(_, s)| *s).collect();
        fdt.property_array_u32("interrupts", &cells)?;
        let names = wired.iter().map(|(n, _)| n.to_string()).collect();
        fdt.property_string_list("interrupt-names", names)?;
    }
    if let Some((its, device_id)) = irqs.msi_parent {
        check_phandle(its)?;
        fdt.property_array_u32("msi-parent", &[its, device_id])?;
    }
    fdt.property_null("dma-coherent")?;
    fdt.property_u32("#iommu-cells", IOMMU_CELLS)?;
    fdt.property_phandle(phandle)?;
    fdt.end_node(node)?;
    Ok(())
}

/// Writes `iommu-map` into the PCIe host controller node open in `fdt`.
pub fn write_iommu_map(fdt: &mut FdtWriter, entries: &[IommuMapEntry]) -> Result<(), FdtError> {
    let mut cells = Vec::with_capacity(entries.len() * 4);
    for e in entries {
        check_phandle(e.iommu)?;
        let end = |base: u32| u64::from(base) + u64::from(e.length);
        if e.length == 0 || end(e.rid_base) > 1 << 32 || end(e.sid_base) > 1 << 32 {
            return Err(FdtError::MapEntry {
                rid_base: e.rid_base,
                length: e.length,
                sid_base: e.sid_base,
            });
        }
        cells.extend([e.rid_base, e.iommu, e.sid_base, e.length]);
    }
    fdt.property_array_u32("iommu-map", &cells)?;
    Ok(())
}

/// Writes, into the `reserved-memory` node open in `fdt` (`#address-cells`
/// and `#size-cells` 2, `ranges`), the region `msi@BASE` that keeps the
/// host MSI window `window` mapped one-to-one for the devices whose node
/// phandles are `devices` (each device node then lists `phandle` in its
/// `memory-region`): `reg` and one `iommu-addresses` entry per device
/// with the same address and size (two cells each: the devices' DMA
/// parent's), `no-map` (it is no RAM for the guest) and `phandle`.
pub fn write_msi_window_region(
    fdt: &mut FdtWriter,
    window: IovaRange,
    phandle: u32,
    devices: &[u32],
) -> Result<(), FdtError> {
    check_phandle(phandle)?;
    if devices.is_empty() {
        return Err(FdtError::NoDevice);
    }
    let base = window.first.0;
    let len = window.last.0.wrapping_sub(base).wrapping_add(1);
    let (a, s) = (cells64(base), cells64(len));
    let node = fdt.begin_node(&format!("msi@{base:x}"))?;
    fdt.property_array_u32("reg", &[a[0], a[1], s[0], s[1]])?;
    let mut cells = Vec::with_capacity(devices.len() * 5);
    for &d in devices {
        check_phandle(d)?;
        cells.extend([d, a[0], a[1], s[0], s[1]]);
    }
    fdt.property_array_u32("iommu-addresses", &cells)?;
    fdt.property_null("no-map")?;
    fdt.property_phandle(phandle)?;
    fdt.end_node(node)?;
    Ok(())
}

#[cfg(test)]
mod tests;
