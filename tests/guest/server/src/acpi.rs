//! ACPI tables the harness passes to QEMU with `-acpitable`, which takes
//! the table body (everything after the 36-byte header) and builds the
//! header from `sig=`, `rev=`, `oem_id=` and friends.
//!
//! VIOT (Virtual I/O Translation table, ACPI 6.5 5.2.32; Linux
//! drivers/acpi/viot.c): which PCI endpoints sit behind which
//! virtio-iommu. Layout after the header: `node_count` (u16),
//! `node_offset` (u16, from the table start), 8 reserved bytes, then the
//! nodes, each starting with `type` (u8), reserved (u8), `length` (u16).

use thiserror::Error;

/// Size of the ACPI table header QEMU prepends.
const HEADER: usize = 36;
/// VIOT fields between the header and the first node.
const VIOT_FIXED: usize = 12;
/// Node type 1: PCI range.
const NODE_PCI_RANGE: u8 = 1;
/// Node type 3: virtio-pci IOMMU.
const NODE_VIRTIO_IOMMU_PCI: u8 = 3;
/// Length of a PCI range node.
const PCI_RANGE_LEN: u16 = 24;
/// Length of a virtio-pci IOMMU node.
const VIRTIO_PCI_LEN: u16 = 16;

/// Errors building a VIOT.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    /// More nodes than the 16-bit count and offsets can describe.
    #[error("{0} endpoint ranges do not fit a VIOT")]
    TooManyNodes(usize),
}

/// A range of PCI endpoints behind the IOMMU: requester IDs
/// `bdf_start..=bdf_end` of segment 0 are endpoint IDs `endpoint_start`
/// onwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciRange {
    /// Endpoint ID of `bdf_start`.
    pub endpoint_start: u32,
    /// First requester ID.
    pub bdf_start: u16,
    /// Last requester ID.
    pub bdf_end: u16,
}

/// The VIOT body (after the header) for a virtio-pci IOMMU at `iommu_bdf`
/// of segment 0 translating `ranges`.
pub fn viot_body(iommu_bdf: u16, ranges: &[PciRange]) -> Result<Vec<u8>, AcpiError> {
    let node_count =
        u16::try_from(ranges.len() + 1).map_err(|_| AcpiError::TooManyNodes(ranges.len()))?;
    let iommu_offset = (HEADER + VIOT_FIXED) as u16;
    let mut b = Vec::new();
    b.extend_from_slice(&node_count.to_le_bytes());
    b.extend_from_slice(&iommu_offset.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    // virtio-pci IOMMU node: segment, bdf, 8 reserved.
    b.extend_from_slice(&[NODE_VIRTIO_IOMMU_PCI, 0]);
    b.extend_from_slice(&VIRTIO_PCI_LEN.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&iommu_bdf.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    for r in ranges {
        // PCI range node: endpoint_start, segment_start, segment_end,
        // bdf_start, bdf_end, output_node, 6 reserved.
        b.extend_from_slice(&[NODE_PCI_RANGE, 0]);
        b.extend_from_slice(&PCI_RANGE_LEN.to_le_bytes());
        b.extend_from_slice(&r.endpoint_start.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&r.bdf_start.to_le_bytes());
        b.extend_from_slice(&r.bdf_end.to_le_bytes());
        b.extend_from_slice(&iommu_offset.to_le_bytes());
        b.extend_from_slice(&[0; 6]);
    }
    if HEADER + b.len() > usize::from(u16::MAX) {
        return Err(AcpiError::TooManyNodes(ranges.len()));
    }
    Ok(b)
}

/// DMAR (Intel VT-d 8.1): the body after the header is Host Address
/// Width (width - 1), Flags, 10 reserved bytes, then remapping structures.
/// One DRHD (8.3: type 0) at `base` (size 0: one 4 KiB page, VT-d 4.0+),
/// segment 0, without INCLUDE_PCI_ALL: only the `endpoints` named by its
/// device scopes are behind it. (QEMU's own devices, such as q35's AHCI,
/// do not translate their DMA through our model and must stay outside.)
/// Each device scope (8.3.1) is a PCI endpoint (type 1) on bus 0 with a
/// one-element path (device, function). Flags 0: no interrupt remapping
/// claimed (the model has none).
pub fn dmar_body(address_width: u8, base: u64, endpoints: &[(u8, u8)]) -> Vec<u8> {
    /// Device scope: type, length, 2 reserved, enumeration ID, start bus,
    /// then the path.
    const SCOPE_LEN: u8 = 8;
    let drhd_len = 16 + usize::from(SCOPE_LEN) * endpoints.len();
    let mut b = vec![address_width.saturating_sub(1), 0];
    b.extend_from_slice(&[0; 10]);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&u16::try_from(drhd_len).unwrap_or(u16::MAX).to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    for &(dev, func) in endpoints {
        b.extend_from_slice(&[1, SCOPE_LEN, 0, 0, 0, 0, dev, func]);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmar_one_drhd_golden_bytes() {
        #[rustfmt::skip]
        let want = [
            47, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // DRHD, 24 bytes, flags 0, size 0, segment 0, base
            0, 0, 24, 0, 0, 0, 0, 0, 0x00, 0x10, 0xbe, 0xfe, 0, 0, 0, 0,
            // PCI endpoint scope, 8 bytes, bus 0, path 05.0
            1, 8, 0, 0, 0, 0, 5, 0,
        ];
        assert_eq!(dmar_body(48, 0xfebe_1000, &[(5, 0)]), want);
    }

    #[test]
    fn viot_one_endpoint_golden_bytes() {
        let body = viot_body(
            0x20,
            &[PciRange {
                endpoint_start: 0x28,
                bdf_start: 0x28,
                bdf_end: 0x28,
            }],
        )
        .unwrap();
        #[rustfmt::skip]
        let want = [
            2, 0, 48, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // virtio-pci IOMMU at 00:04.0
            3, 0, 16, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            // PCI range 00:05.0 -> endpoint 0x28, output node at 48
            1, 0, 24, 0, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x28, 0, 0x28, 0, 48, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(body, want);
    }

    #[test]
    fn viot_without_ranges_has_iommu_node_only() {
        let body = viot_body(0x08, &[]).unwrap();
        assert_eq!(body.len(), 12 + 16);
        assert_eq!(body[0], 1);
    }
}
