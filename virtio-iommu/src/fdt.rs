//! The device-tree description of a virtio-iommu on the PCI transport, for
//! guests booted with a device tree instead of ACPI (Linux bindings
//! `Documentation/devicetree/bindings/virtio/pci-iommu.yaml` and the PCI
//! `iommu-map` binding, formerly `pci/pci-iommu.txt`).
//!
//! The IOMMU's programming interface is found by PCI enumeration; the tree
//! only says which node it is and which requester IDs it translates:
//!
//! - the PCIe host controller's node gets `iommu-map`, tuples (rid-base,
//!   IOMMU phandle, endpoint-base, length): requester ID `r` in
//!   `rid-base..rid-base + length` is endpoint `r - rid-base +
//!   endpoint-base` of that IOMMU ([`write_iommu_map`]);
//! - the IOMMU is a child node of the host controller, named after its
//!   device and function, with `compatible = "virtio,pci-iommu",
//!   "pci1af4,1057"`, `reg` holding its PCI address and `#iommu-cells =
//!   <1>` (the endpoint ID) ([`write_pci_iommu_node`]).
//!
//! Both write into a [`FdtWriter`] inside the host controller's node the
//! VMM has open, `iommu-map` first: properties precede child nodes.
//!
//! ```
//! use nesting_core::types::Bdf;
//! use virtio_iommu::fdt::{iommu_map_all_but, write_iommu_map, write_pci_iommu_node};
//! use vm_fdt::FdtWriter;
//!
//! let iommu = Bdf::new(0, 1, 0);
//! let phandle = 2;
//! let mut fdt = FdtWriter::new().unwrap();
//! let root = fdt.begin_node("").unwrap();
//! let pcie = fdt.begin_node("pcie@40000000").unwrap();
//! fdt.property_string("device_type", "pci").unwrap();
//! fdt.property_u32("#address-cells", 3).unwrap();
//! fdt.property_u32("#size-cells", 2).unwrap();
//! // Every function but the IOMMU's own, endpoint ID = requester ID.
//! write_iommu_map(&mut fdt, &iommu_map_all_but(phandle, iommu)).unwrap();
//! write_pci_iommu_node(&mut fdt, iommu, phandle).unwrap();
//! fdt.end_node(pcie).unwrap();
//! fdt.end_node(root).unwrap();
//! let dtb = fdt.finish().unwrap();
//! assert_eq!(&dtb[..4], &0xd00d_feedu32.to_be_bytes());
//! ```

use nesting_core::types::Bdf;
use thiserror::Error;
use vm_fdt::FdtWriter;

/// The IOMMU node's `compatible`: the binding's name, then the PCI vendor
/// and device ID of a modern virtio-iommu (0x1af4, 0x1040 + 23).
pub const COMPATIBLE: [&str; 2] = ["virtio,pci-iommu", "pci1af4,1057"];
/// `#iommu-cells`: one cell, the endpoint ID (pci-iommu.yaml: const 1).
pub const IOMMU_CELLS: u32 = 1;

/// One `iommu-map` tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuMapEntry {
    /// First requester ID (bus << 8 | devfn).
    pub rid_base: u32,
    /// The IOMMU node's phandle.
    pub iommu: u32,
    /// Endpoint ID of `rid_base`.
    pub endpoint_base: u32,
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
    /// An `iommu-map` tuple with no requester ID, or whose IDs run past 32
    /// bits (Linux `of_map_id` compares `id < rid-base + length` in 32 bits).
    #[error(
        "iommu-map entry {rid_base:#x}+{length:#x} -> {endpoint_base:#x} is empty or runs past 32 bits"
    )]
    MapEntry {
        /// First requester ID.
        rid_base: u32,
        /// Number of IDs.
        length: u32,
        /// First endpoint ID.
        endpoint_base: u32,
    },
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

/// The first cell of a PCI address (PCI bus binding, `phys.hi`):
/// configuration space, bus in bits 23:16, device 15:11, function 10:8.
pub fn pci_phys_hi(bdf: Bdf) -> u32 {
    u32::from(bdf.0) << 8
}

/// Writes the virtio-pci IOMMU's node, a child of the host controller node
/// open in `fdt`: `iommu@DEV,FN`, its `compatible`, `reg` (the function's
/// PCI address, size 0), `#iommu-cells = <1>` and `phandle`. The IOMMU must
/// sit on the host controller's root bus: Linux matches a child node to a
/// root-bus device by devfn (`of_pci_find_child_device`).
pub fn write_pci_iommu_node(fdt: &mut FdtWriter, bdf: Bdf, phandle: u32) -> Result<(), FdtError> {
    check_phandle(phandle)?;
    let node = fdt.begin_node(&format!("iommu@{:x},{:x}", bdf.dev(), bdf.func()))?;
    fdt.property_string_list("compatible", COMPATIBLE.map(String::from).to_vec())?;
    // #address-cells = 3 (phys.hi, phys.mid, phys.lo), #size-cells = 2.
    fdt.property_array_u32("reg", &[pci_phys_hi(bdf), 0, 0, 0, 0])?;
    fdt.property_u32("#iommu-cells", IOMMU_CELLS)?;
    fdt.property_phandle(phandle)?;
    fdt.end_node(node)?;
    Ok(())
}

/// Writes `iommu-map` into the host controller node open in `fdt`.
pub fn write_iommu_map(fdt: &mut FdtWriter, entries: &[IommuMapEntry]) -> Result<(), FdtError> {
    let mut cells = Vec::with_capacity(entries.len() * 4);
    for e in entries {
        check_phandle(e.iommu)?;
        let end = |base: u32| u64::from(base) + u64::from(e.length);
        let too_far = end(e.rid_base) > 1 << 32 || end(e.endpoint_base) > 1 << 32;
        if e.length == 0 || too_far {
            return Err(FdtError::MapEntry {
                rid_base: e.rid_base,
                length: e.length,
                endpoint_base: e.endpoint_base,
            });
        }
        cells.extend([e.rid_base, e.iommu, e.endpoint_base, e.length]);
    }
    fdt.property_array_u32("iommu-map", &cells)?;
    Ok(())
}

/// The `iommu-map` of a host controller whose every requester ID but the
/// IOMMU's own goes to the IOMMU with endpoint ID = requester ID: "DMA
/// from the IOMMU device isn't managed by another IOMMU" (pci-iommu.yaml),
/// so its own ID is left out.
pub fn iommu_map_all_but(iommu: u32, iommu_bdf: Bdf) -> Vec<IommuMapEntry> {
    let own = u32::from(iommu_bdf.0);
    let entry = |first: u32, length: u32| IommuMapEntry {
        rid_base: first,
        iommu,
        endpoint_base: first,
        length,
    };
    let mut map = Vec::with_capacity(2);
    if own > 0 {
        map.push(entry(0, own));
    }
    if own < 0xffff {
        map.push(entry(own + 1, 0xffff - own));
    }
    map
}

#[cfg(test)]
mod tests;
