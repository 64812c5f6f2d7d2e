//! The ACPI VIOT table (Virtual I/O Translation table, ACPI 6.4 and later;
//! Linux `drivers/acpi/viot.c`) that tells an ACPI guest which endpoints
//! sit behind which virtio-iommu, and the endpoint ID each one has in
//! ATTACH, MAP and PROBE requests.
//!
//! A VMM describes the topology in a [`Viot`] and gets the whole table
//! ([`Viot::sdt`], an `acpi_tables` [`Sdt`] with header and checksum) or
//! the part after the 36-byte header ([`Viot::body`], what QEMU's
//! `-acpitable sig=VIOT,rev=0,data=FILE` takes).
//!
//! ```
//! use nesting_core::types::Bdf;
//! use virtio_iommu::acpi::{Viot, ViotIommu, ViotPciRange};
//!
//! // A virtio-pci IOMMU at 00:04.0 translating 00:05.0 and 00:06.0, whose
//! // endpoint IDs are their requester IDs (0x28, 0x30).
//! let mut viot = Viot::default();
//! let iommu = viot.add_iommu(ViotIommu::Pci { segment: 0, bdf: Bdf::new(0, 4, 0) });
//! viot.pci_ranges.push(ViotPciRange::by_requester_id(iommu, 0, Bdf::new(0, 5, 0), Bdf::new(0, 6, 0)));
//! let table = viot.sdt(*b"VIOMMU", *b"VIOMMUGT", 1).unwrap();
//! assert_eq!(&table.as_slice()[..4], b"VIOT");
//! assert_eq!(viot.body().unwrap(), table.as_slice()[36..]);
//! ```
//!
//! `acpi_tables` (rust-vmm) gives the header, the checksum and the [`Sdt`]
//! VMMs assemble their tables with. Its own `viot` module is not used: it
//! writes revision 1 where the VIOT definition and QEMU have 0, fixes a PCI
//! range's first endpoint ID to the first BDF, panics on bad input, and its
//! running checksum goes wrong from the 256th node on (it adds one per
//! node for the 16-bit node count). The nodes are `#[repr(C)]`
//! little-endian structs here, as Linux's `include/acpi/actbl3.h` lays
//! them out, each with a size check; a bad topology is a [`ViotError`].

use acpi_tables::sdt::Sdt;
use nesting_core::types::Bdf;
use thiserror::Error;
use zerocopy::little_endian::{U16 as Le16, U32 as Le32, U64 as Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The table's signature.
pub const VIOT_SIGNATURE: [u8; 4] = *b"VIOT";
/// The table's revision: 0 (the VIOT definition; QEMU writes the same).
pub const VIOT_REVISION: u8 = 0;
/// Length of the standard ACPI table header that precedes the body.
pub const ACPI_HEADER_LEN: usize = 36;

/// A virtio-iommu device (a translation node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViotIommu {
    /// Node type 3: a virtio-iommu on the PCI transport.
    Pci {
        /// PCI segment.
        segment: u16,
        /// Its own BDF, which is not translated by itself.
        bdf: Bdf,
    },
    /// Node type 4: a virtio-iommu on the MMIO transport.
    Mmio {
        /// Base address of its virtio-mmio registers.
        base: u64,
    },
}

/// The index [`Viot::add_iommu`] returns: endpoints name their IOMMU by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IommuIndex(pub usize);

/// Node type 1: PCI endpoints behind an IOMMU. The endpoint with BDF `b`
/// on segment `s` has ID `endpoint_start + ((s - segment_start) << 16) +
/// (b - bdf_start)`, for every segment of the range and every BDF of the
/// range within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViotPciRange {
    /// The IOMMU translating the endpoints.
    pub iommu: IommuIndex,
    /// Endpoint ID of `bdf_start` on `segment_start`.
    pub endpoint_start: u32,
    /// First segment.
    pub segment_start: u16,
    /// Last segment.
    pub segment_end: u16,
    /// First BDF in each segment.
    pub bdf_start: Bdf,
    /// Last BDF in each segment.
    pub bdf_end: Bdf,
}

impl ViotPciRange {
    /// The endpoints `first..=last` of `segment`, each with its requester ID
    /// (and the segment in bits 31:16) as endpoint ID.
    pub fn by_requester_id(iommu: IommuIndex, segment: u16, first: Bdf, last: Bdf) -> Self {
        ViotPciRange {
            iommu,
            endpoint_start: u32::from(segment) << 16 | u32::from(first.0),
            segment_start: segment,
            segment_end: segment,
            bdf_start: first,
            bdf_end: last,
        }
    }
}

/// Node type 2: one endpoint found by its MMIO base address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViotMmioEndpoint {
    /// The IOMMU translating it.
    pub iommu: IommuIndex,
    /// Its endpoint ID.
    pub endpoint: u32,
    /// Base address of its MMIO registers.
    pub base: u64,
}

/// The Virtual I/O Translation table: IOMMUs and their endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Viot {
    /// The virtio-iommu devices, written first.
    pub iommus: Vec<ViotIommu>,
    /// PCI endpoint ranges, written after the IOMMUs.
    pub pci_ranges: Vec<ViotPciRange>,
    /// MMIO endpoints, written last.
    pub mmio_endpoints: Vec<ViotMmioEndpoint>,
}

/// A [`Viot`] that cannot be written as a valid table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ViotError {
    /// No IOMMU node: no endpoint could name one.
    #[error("a VIOT needs at least one IOMMU node")]
    NoIommu,
    /// An endpoint names an IOMMU the table does not have.
    #[error("endpoint node {node} names IOMMU {iommu}, of {count}")]
    UnknownIommu {
        /// The endpoint's node, counting from 0 after the IOMMUs.
        node: usize,
        /// The index it names.
        iommu: usize,
        /// IOMMUs in the table.
        count: usize,
    },
    /// A PCI range whose start is above its end.
    #[error("PCI range {segment_start:#x}..={segment_end:#x} / {bdf_start}..={bdf_end} is empty")]
    EmptyRange {
        /// First segment.
        segment_start: u16,
        /// Last segment.
        segment_end: u16,
        /// First BDF.
        bdf_start: Bdf,
        /// Last BDF.
        bdf_end: Bdf,
    },
    /// A PCI range whose last endpoint ID does not fit 32 bits.
    #[error("PCI range from endpoint {endpoint_start:#x} needs IDs beyond 32 bits")]
    EndpointIdOverflow {
        /// Its first endpoint ID.
        endpoint_start: u32,
    },
    /// More nodes, or IOMMU nodes further in, than the 16-bit node count and
    /// output-node offsets can describe.
    #[error("{nodes} nodes do not fit a VIOT's 16-bit counts and offsets")]
    TooManyNodes {
        /// Nodes in the table.
        nodes: usize,
    },
}

/// The fields between the header and the nodes (`struct acpi_table_viot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct ViotFixed {
    node_count: Le16,
    /// From the start of the table.
    node_offset: Le16,
    reserved: [u8; 8],
}

/// First in every node (`struct acpi_viot_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NodeHeader {
    kind: u8,
    reserved: u8,
    length: Le16,
}

/// `struct acpi_viot_pci_range`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct PciRangeNode {
    header: NodeHeader,
    endpoint_start: Le32,
    segment_start: Le16,
    segment_end: Le16,
    bdf_start: Le16,
    bdf_end: Le16,
    /// Offset of the IOMMU node from the start of the table.
    output_node: Le16,
    reserved: [u8; 6],
}

/// `struct acpi_viot_mmio`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct MmioEndpointNode {
    header: NodeHeader,
    endpoint: Le32,
    base_address: Le64,
    output_node: Le16,
    reserved: [u8; 6],
}

/// `struct acpi_viot_virtio_iommu_pci`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct VirtioPciNode {
    header: NodeHeader,
    segment: Le16,
    bdf: Le16,
    reserved: [u8; 8],
}

/// `struct acpi_viot_virtio_iommu_mmio`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct VirtioMmioNode {
    header: NodeHeader,
    reserved: [u8; 4],
    base_address: Le64,
}

const _: () = assert!(size_of::<ViotFixed>() == 12);
const _: () = assert!(size_of::<NodeHeader>() == 4);
const _: () = assert!(size_of::<PciRangeNode>() == 24);
const _: () = assert!(size_of::<MmioEndpointNode>() == 24);
const _: () = assert!(size_of::<VirtioPciNode>() == 16);
const _: () = assert!(size_of::<VirtioMmioNode>() == 16);

/// Node types.
const NODE_PCI_RANGE: u8 = 1;
const NODE_MMIO: u8 = 2;
const NODE_VIRTIO_IOMMU_PCI: u8 = 3;
const NODE_VIRTIO_IOMMU_MMIO: u8 = 4;

/// Where the first node starts: right after the fixed fields.
const FIRST_NODE: usize = ACPI_HEADER_LEN + size_of::<ViotFixed>();

fn node_header<T>(kind: u8) -> NodeHeader {
    NodeHeader {
        kind,
        reserved: 0,
        // Node sizes are the constants asserted above.
        length: (size_of::<T>() as u16).into(),
    }
}

impl Viot {
    /// Adds an IOMMU node; endpoints name it by the index returned.
    pub fn add_iommu(&mut self, iommu: ViotIommu) -> IommuIndex {
        self.iommus.push(iommu);
        IommuIndex(self.iommus.len() - 1)
    }

    /// The whole table, header and checksum included.
    pub fn sdt(
        &self,
        oem_id: [u8; 6],
        oem_table_id: [u8; 8],
        oem_revision: u32,
    ) -> Result<Sdt, ViotError> {
        let body = self.body()?;
        let mut sdt = Sdt::new(
            VIOT_SIGNATURE,
            ACPI_HEADER_LEN as u32,
            VIOT_REVISION,
            oem_id,
            oem_table_id,
            oem_revision,
        );
        sdt.append_slice(&body);
        Ok(sdt)
    }

    /// The table after its 36-byte header: node count and offset, then the
    /// IOMMU nodes, the PCI ranges and the MMIO endpoints.
    pub fn body(&self) -> Result<Vec<u8>, ViotError> {
        let offsets = self.check()?;
        let nodes = self.iommus.len() + self.pci_ranges.len() + self.mmio_endpoints.len();
        let mut b = ViotFixed {
            // Checked by `check`.
            node_count: (nodes as u16).into(),
            node_offset: (FIRST_NODE as u16).into(),
            reserved: [0; 8],
        }
        .as_bytes()
        .to_vec();
        for iommu in &self.iommus {
            match *iommu {
                ViotIommu::Pci { segment, bdf } => b.extend_from_slice(
                    VirtioPciNode {
                        header: node_header::<VirtioPciNode>(NODE_VIRTIO_IOMMU_PCI),
                        segment: segment.into(),
                        bdf: bdf.0.into(),
                        reserved: [0; 8],
                    }
                    .as_bytes(),
                ),
                ViotIommu::Mmio { base } => b.extend_from_slice(
                    VirtioMmioNode {
                        header: node_header::<VirtioMmioNode>(NODE_VIRTIO_IOMMU_MMIO),
                        reserved: [0; 4],
                        base_address: base.into(),
                    }
                    .as_bytes(),
                ),
            }
        }
        for r in &self.pci_ranges {
            let node = PciRangeNode {
                header: node_header::<PciRangeNode>(NODE_PCI_RANGE),
                endpoint_start: r.endpoint_start.into(),
                segment_start: r.segment_start.into(),
                segment_end: r.segment_end.into(),
                bdf_start: r.bdf_start.0.into(),
                bdf_end: r.bdf_end.0.into(),
                output_node: offsets[r.iommu.0].into(),
                reserved: [0; 6],
            };
            b.extend_from_slice(node.as_bytes());
        }
        for e in &self.mmio_endpoints {
            let node = MmioEndpointNode {
                header: node_header::<MmioEndpointNode>(NODE_MMIO),
                endpoint: e.endpoint.into(),
                base_address: e.base.into(),
                output_node: offsets[e.iommu.0].into(),
                reserved: [0; 6],
            };
            b.extend_from_slice(node.as_bytes());
        }
        Ok(b)
    }

    /// Checks the topology; returns each IOMMU node's offset from the start
    /// of the table, the value endpoints' `output_node` holds.
    fn check(&self) -> Result<Vec<u16>, ViotError> {
        if self.iommus.is_empty() {
            return Err(ViotError::NoIommu);
        }
        let nodes = self.iommus.len() + self.pci_ranges.len() + self.mmio_endpoints.len();
        // Both IOMMU node kinds are 16 bytes long.
        let offsets: Vec<u16> = (0..self.iommus.len())
            .map(|i| u16::try_from(FIRST_NODE + i * size_of::<VirtioPciNode>()))
            .collect::<Result<_, _>>()
            .map_err(|_| ViotError::TooManyNodes { nodes })?;
        if u16::try_from(nodes).is_err() {
            return Err(ViotError::TooManyNodes { nodes });
        }
        let count = self.iommus.len();
        let users = self.pci_ranges.iter().map(|r| r.iommu);
        let users = users.chain(self.mmio_endpoints.iter().map(|e| e.iommu));
        for (node, IommuIndex(iommu)) in users.enumerate() {
            if iommu >= count {
                return Err(ViotError::UnknownIommu { node, iommu, count });
            }
        }
        self.pci_ranges.iter().try_for_each(check_range)?;
        Ok(offsets)
    }
}

/// A range covers at least one endpoint, and Linux's endpoint ID
/// arithmetic (`viot_pci_dev_iommu_init`) stays within 32 bits for each.
fn check_range(r: &ViotPciRange) -> Result<(), ViotError> {
    if r.segment_start > r.segment_end || r.bdf_start.0 > r.bdf_end.0 {
        return Err(ViotError::EmptyRange {
            segment_start: r.segment_start,
            segment_end: r.segment_end,
            bdf_start: r.bdf_start,
            bdf_end: r.bdf_end,
        });
    }
    let segments = u64::from(r.segment_end - r.segment_start);
    let last =
        u64::from(r.endpoint_start) + (segments << 16) + u64::from(r.bdf_end.0 - r.bdf_start.0);
    if last > u64::from(u32::MAX) {
        return Err(ViotError::EndpointIdOverflow {
            endpoint_start: r.endpoint_start,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
