//! VIOT bytes against the node layout of the VIOT definition (as Linux's
//! `include/acpi/actbl3.h` has it), and against what Linux's parser
//! (`drivers/acpi/viot.c`) makes of them.

use super::*;

const OEM_ID: [u8; 6] = *b"VIOMMU";
const OEM_TABLE_ID: [u8; 8] = *b"VIOMMUGT";

fn bdf(dev: u8, func: u8) -> Bdf {
    Bdf::new(0, dev, func)
}

/// The real-guest harness's table: a virtio-pci IOMMU at 00:04.0 and one
/// range per endpoint, endpoint ID = requester ID.
fn harness_viot(endpoints: &[Bdf]) -> Viot {
    let mut viot = Viot::default();
    let iommu = viot.add_iommu(ViotIommu::Pci {
        segment: 0,
        bdf: bdf(4, 0),
    });
    for &e in endpoints {
        viot.pci_ranges
            .push(ViotPciRange::by_requester_id(iommu, 0, e, e));
    }
    viot
}

/// Every node kind: a PCI IOMMU translating segment 0 but itself and two
/// whole segments 1..=2 (IDs from 0x1_0000 on), a virtio-mmio IOMMU
/// translating one MMIO endpoint.
fn every_node_kind() -> Viot {
    let mut v = Viot::default();
    let pci = v.add_iommu(ViotIommu::Pci {
        segment: 0,
        bdf: bdf(1, 0),
    });
    let mmio = v.add_iommu(ViotIommu::Mmio { base: 0x0a00_3e00 });
    v.pci_ranges = vec![
        ViotPciRange::by_requester_id(pci, 0, Bdf(0), Bdf(7)),
        ViotPciRange::by_requester_id(pci, 0, Bdf(9), Bdf(0xffff)),
        ViotPciRange {
            iommu: pci,
            endpoint_start: 0x1_0000,
            segment_start: 1,
            segment_end: 2,
            bdf_start: Bdf(0),
            bdf_end: Bdf(0xffff),
        },
    ];
    v.mmio_endpoints = vec![ViotMmioEndpoint {
        iommu: mmio,
        endpoint: 0x3_0000,
        base: 0x0a00_0000,
    }];
    v
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

#[test]
fn harness_one_endpoint_body_golden_bytes() {
    #[rustfmt::skip]
    let want = [
        // node count 2, node offset 48, 8 reserved
        2, 0, 48, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // type 3 virtio-pci IOMMU, length 16, segment 0, BDF 00:04.0
        3, 0, 16, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // type 1 PCI range, length 24, endpoint start 0x28, segments 0..0,
        // BDFs 00:05.0..00:05.0, output node at 48, 6 reserved
        1, 0, 24, 0, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x28, 0, 0x28, 0, 48, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(harness_viot(&[bdf(5, 0)]).body().unwrap(), want);
}

#[test]
fn every_node_kind_golden_bytes() {
    let t = every_node_kind()
        .sdt(OEM_ID, OEM_TABLE_ID, 1)
        .unwrap()
        .as_slice()
        .to_vec();
    #[rustfmt::skip]
    let body: [u8; 12 + 2 * 16 + 4 * 24] = [
        6, 0, 48, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // @48 virtio-pci IOMMU at 00:01.0
        3, 0, 16, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        // @64 type 4 virtio-mmio IOMMU, length 16, 4 reserved, base
        4, 0, 16, 0, 0, 0, 0, 0, 0x00, 0x3e, 0x00, 0x0a, 0, 0, 0, 0,
        // PCI ranges to the node at 48: 0..=7 from 0; 9..=0xffff from 9;
        // segments 1..=2, all BDFs, from 0x10000
        1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 48, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 24, 0, 9, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0xff, 0xff, 48, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 24, 0, 0, 0, 1, 0, 1, 0, 2, 0, 0, 0, 0xff, 0xff, 48, 0, 0, 0, 0, 0, 0, 0,
        // type 2 MMIO endpoint 0x30000 at 0x0a000000, to the node at 64
        2, 0, 24, 0, 0, 0, 3, 0, 0x00, 0x00, 0x00, 0x0a, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(t[36..], body);
    assert_eq!(&t[0..4], b"VIOT");
    assert_eq!(u32_at(&t, 4) as usize, 36 + body.len());
    assert_eq!(t[8], 0, "VIOT revision 0");
    assert_eq!(&t[10..16], b"VIOMMU");
    assert_eq!(&t[16..24], b"VIOMMUGT");
    assert_eq!(u32_at(&t, 24), 1);
}

#[test]
fn table_checksum_makes_every_byte_sum_to_zero() {
    // 300 nodes: past the 256 where a running count-per-node checksum
    // would go wrong.
    let many = harness_viot(&(0..299).map(|i| Bdf(0x100 + i)).collect::<Vec<_>>());
    for viot in [every_node_kind(), harness_viot(&[bdf(5, 0)]), many] {
        let sdt = viot.sdt(OEM_ID, OEM_TABLE_ID, 3).unwrap();
        let t = sdt.as_slice();
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(u32_at(t, 4) as usize, t.len());
        assert_eq!(t[36..], viot.body().unwrap());
    }
}

/// An IOMMU as `viot_get_iommu` finds it: by the offset an endpoint's
/// `output_node` holds.
#[derive(Debug, PartialEq, Eq)]
enum LinuxIommu {
    Pci { segment: u16, bdf: u16 },
    Mmio { base: u64 },
}

/// A PCI range as Linux keeps it (`struct viot_endpoint`).
#[derive(Debug)]
struct LinuxRange {
    segment_start: u16,
    segment_end: u16,
    bdf_start: u16,
    bdf_end: u16,
    endpoint_id: u32,
    viommu: LinuxIommu,
}

/// `acpi_viot_init` / `viot_parse_node` / `viot_check_bounds` on the
/// offsets of the ACPICA structures: the PCI ranges, and the MMIO
/// endpoints (address, endpoint ID), with the IOMMU each one resolves to.
fn linux_parse(t: &[u8]) -> (Vec<LinuxRange>, Vec<(u64, u32, LinuxIommu)>) {
    let len = u32_at(t, 4) as usize;
    let (count, first) = (u16_at(t, 36), usize::from(u16_at(t, 38)));
    let check_bounds = |off: usize| {
        assert!(
            off >= first.max(48) && off + 4 <= len,
            "Node pointer overflows"
        );
        assert!(u16_at(t, off + 2) >= 4, "Empty node");
    };
    let iommu = |off: usize| {
        check_bounds(off);
        match t[off] {
            3 => LinuxIommu::Pci {
                segment: u16_at(t, off + 4),
                bdf: u16_at(t, off + 6),
            },
            4 => LinuxIommu::Mmio {
                base: u64_at(t, off + 8),
            },
            other => panic!("output node of type {other}"),
        }
    };
    let (mut pci, mut mmio) = (Vec::new(), Vec::new());
    let mut off = first;
    for _ in 0..count {
        check_bounds(off);
        let node_len = usize::from(u16_at(t, off + 2));
        match t[off] {
            1 => {
                assert!(node_len >= 24, "Invalid PCI node size");
                pci.push(LinuxRange {
                    segment_start: u16_at(t, off + 8),
                    segment_end: u16_at(t, off + 10),
                    bdf_start: u16_at(t, off + 12),
                    bdf_end: u16_at(t, off + 14),
                    endpoint_id: u32_at(t, off + 4),
                    viommu: iommu(usize::from(u16_at(t, off + 16))),
                });
            }
            2 => {
                assert!(node_len >= 24, "Invalid MMIO node size");
                mmio.push((
                    u64_at(t, off + 8),
                    u32_at(t, off + 4),
                    iommu(usize::from(u16_at(t, off + 16))),
                ));
            }
            3 | 4 => {}
            other => panic!("Unsupported node {other:x}"),
        }
        off += node_len;
    }
    (pci, mmio)
}

/// `viot_pci_dev_iommu_init`: the endpoint ID Linux gives PCI device
/// `dev_id` of `domain`, and the IOMMU it attaches it to.
fn linux_pci_endpoint(
    ranges: &[LinuxRange],
    domain: u16,
    dev_id: u16,
) -> Option<(u32, &LinuxIommu)> {
    ranges
        .iter()
        .find(|r| {
            (r.segment_start..=r.segment_end).contains(&domain)
                && (r.bdf_start..=r.bdf_end).contains(&dev_id)
        })
        .map(|r| {
            let epid = (u32::from(domain - r.segment_start) << 16)
                + u32::from(dev_id - r.bdf_start)
                + r.endpoint_id;
            (epid, &r.viommu)
        })
}

#[test]
fn linux_finds_each_endpoint_and_its_iommu() {
    let t = every_node_kind().sdt(OEM_ID, OEM_TABLE_ID, 1).unwrap();
    let (pci, mmio) = linux_parse(t.as_slice());
    let pci_iommu = LinuxIommu::Pci {
        segment: 0,
        bdf: 0x08,
    };
    assert_eq!(linux_pci_endpoint(&pci, 0, 0x28), Some((0x28, &pci_iommu)));
    assert_eq!(linux_pci_endpoint(&pci, 0, 0x07), Some((0x07, &pci_iommu)));
    // The IOMMU itself (00:01.0 = 0x08) is in no range.
    assert_eq!(linux_pci_endpoint(&pci, 0, 0x08), None);
    assert_eq!(
        linux_pci_endpoint(&pci, 1, 0x28),
        Some((0x1_0028, &pci_iommu))
    );
    assert_eq!(
        linux_pci_endpoint(&pci, 2, 0xffff),
        Some((0x2_ffff, &pci_iommu))
    );
    assert_eq!(linux_pci_endpoint(&pci, 3, 0), None);
    assert_eq!(
        mmio,
        [(
            0x0a00_0000,
            0x3_0000,
            LinuxIommu::Mmio { base: 0x0a00_3e00 }
        )]
    );
}

#[test]
fn linux_reads_the_harness_topology() {
    let t = harness_viot(&[bdf(5, 0), bdf(6, 0)])
        .sdt(OEM_ID, OEM_TABLE_ID, 1)
        .unwrap();
    let (pci, mmio) = linux_parse(t.as_slice());
    let iommu = LinuxIommu::Pci {
        segment: 0,
        bdf: 0x20,
    };
    assert!(mmio.is_empty());
    assert_eq!(linux_pci_endpoint(&pci, 0, 0x28), Some((0x28, &iommu)));
    assert_eq!(linux_pci_endpoint(&pci, 0, 0x30), Some((0x30, &iommu)));
    assert_eq!(linux_pci_endpoint(&pci, 0, 0x20), None);
}

#[test]
fn iommu_alone_is_a_table() {
    let body = harness_viot(&[]).body().unwrap();
    assert_eq!(body.len(), 12 + 16);
    assert_eq!(u16_at(&body, 0), 1);
}

#[test]
fn bad_topologies_are_errors_not_bytes() {
    assert_eq!(Viot::default().body(), Err(ViotError::NoIommu));
    let mut v = harness_viot(&[bdf(5, 0)]);
    v.mmio_endpoints.push(ViotMmioEndpoint {
        iommu: IommuIndex(1),
        endpoint: 1,
        base: 0x1000,
    });
    assert_eq!(
        v.body(),
        Err(ViotError::UnknownIommu {
            node: 1,
            iommu: 1,
            count: 1
        })
    );
    let mut v = harness_viot(&[]);
    v.pci_ranges.push(ViotPciRange::by_requester_id(
        IommuIndex(0),
        0,
        bdf(6, 0),
        bdf(5, 0),
    ));
    assert!(matches!(v.body(), Err(ViotError::EmptyRange { .. })));
    v.pci_ranges[0] = ViotPciRange {
        segment_start: 2,
        segment_end: 1,
        ..ViotPciRange::by_requester_id(IommuIndex(0), 0, bdf(5, 0), bdf(5, 0))
    };
    assert!(matches!(v.body(), Err(ViotError::EmptyRange { .. })));
    v.pci_ranges[0] =
        ViotPciRange::by_requester_id(IommuIndex(0), 0xffff, Bdf(0xff00), Bdf(0xffff));
    assert!(v.body().is_ok(), "the last ID is 0xffff_ffff");
    v.pci_ranges[0].endpoint_start += 1;
    assert!(matches!(
        v.body(),
        Err(ViotError::EndpointIdOverflow { .. })
    ));
    let many = harness_viot(&vec![bdf(5, 0); 65_535]);
    assert_eq!(many.body(), Err(ViotError::TooManyNodes { nodes: 65_536 }));
    assert!(harness_viot(&vec![bdf(5, 0); 65_534]).body().is_ok());
}
