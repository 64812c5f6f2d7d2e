//! The IOMMU node and `iommu-map` in a whole device tree blob, read back
//! with a small flattened-tree reader: property bytes against the bindings
//! (pci-iommu.yaml's own example), and what Linux's `of_map_id`,
//! `of_pci_get_devfn` and phandle lookup make of them.

use super::*;

/// A node of a parsed blob.
#[derive(Debug, Default)]
struct Node {
    name: String,
    props: Vec<(String, Vec<u8>)>,
    children: Vec<Node>,
}

impl Node {
    fn prop(&self, name: &str) -> Option<&[u8]> {
        self.props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn child(&self, name: &str) -> &Node {
        self.children
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no node {name} in {self:?}"))
    }

    fn cells(&self, name: &str) -> Vec<u32> {
        let v = self.prop(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(v.len() % 4, 0, "{name} is not a cell array");
        v.chunks(4).map(be32).collect()
    }

    /// `of_find_node_by_phandle`.
    fn by_phandle(&self, phandle: u32) -> Option<&Node> {
        if self.prop("phandle").map(be32) == Some(phandle) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.by_phandle(phandle))
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// Reads a flattened device tree (devicetree specification chapter 5):
/// the header's offsets, then the structure block's tokens.
fn parse_dtb(dtb: &[u8]) -> Node {
    assert_eq!(be32(dtb), 0xd00d_feed, "magic");
    assert_eq!(be32(&dtb[4..]) as usize, dtb.len(), "totalsize");
    let structs = be32(&dtb[8..]) as usize;
    let strings = be32(&dtb[12..]) as usize;
    let cstr = |off: usize| {
        let end = dtb[off..].iter().position(|&c| c == 0).unwrap();
        String::from_utf8(dtb[off..off + end].to_vec()).unwrap()
    };
    let align = |off: usize| (off + 3) & !3;
    let mut stack = vec![Node::default()];
    let mut off = structs;
    loop {
        let token = be32(&dtb[off..]);
        off += 4;
        match token {
            1 => {
                let name = cstr(off);
                off = align(off + name.len() + 1);
                stack.push(Node {
                    name,
                    ..Node::default()
                });
            }
            2 => {
                let node = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(node);
            }
            3 => {
                let len = be32(&dtb[off..]) as usize;
                let name = cstr(strings + be32(&dtb[off + 4..]) as usize);
                let value = dtb[off + 8..off + 8 + len].to_vec();
                off = align(off + 8 + len);
                stack.last_mut().unwrap().props.push((name, value));
            }
            4 => {}
            9 => break,
            t => panic!("bad token {t:#x}"),
        }
    }
    let mut top = stack.pop().unwrap();
    assert!(stack.is_empty());
    top.children.pop().unwrap()
}

/// A root with one PCIe host controller holding the IOMMU's node and map.
fn tree(iommu: Bdf, phandle: u32, map: &[IommuMapEntry]) -> Node {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    let pcie = fdt.begin_node("pcie@40000000").unwrap();
    fdt.property_string("device_type", "pci").unwrap();
    fdt.property_u32("#address-cells", 3).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    write_iommu_map(&mut fdt, map).unwrap();
    write_pci_iommu_node(&mut fdt, iommu, phandle).unwrap();
    fdt.end_node(pcie).unwrap();
    fdt.end_node(root).unwrap();
    parse_dtb(&fdt.finish().unwrap())
}

/// The binding's example: the IOMMU at 00:01.0 (phandle 2 here) manages
/// every function of its domain but itself.
fn binding_example() -> Node {
    let iommu = Bdf::new(0, 1, 0);
    tree(iommu, 2, &iommu_map_all_but(2, iommu))
}

#[test]
fn iommu_node_golden_bytes() {
    let root = binding_example();
    let node = root.child("pcie@40000000").child("iommu@1,0");
    assert_eq!(
        node.prop("compatible").unwrap(),
        b"virtio,pci-iommu\0pci1af4,1057\0"
    );
    // reg = <0x800 0 0 0 0>, as in pci-iommu.yaml.
    #[rustfmt::skip]
    let reg = [0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(node.prop("reg").unwrap(), reg);
    assert_eq!(node.prop("#iommu-cells").unwrap(), [0, 0, 0, 1]);
    assert_eq!(node.prop("phandle").unwrap(), [0, 0, 0, 2]);
    assert_eq!(node.props.len(), 4, "{node:?}");
}

#[test]
fn iommu_map_is_the_binding_example() {
    let root = binding_example();
    let pcie = root.child("pcie@40000000");
    // iommu-map = <0x0 &iommu0 0x0 0x8  0x9 &iommu0 0x9 0xfff7>;
    #[rustfmt::skip]
    let want: [u8; 32] = [
        0, 0, 0, 0,  0, 0, 0, 2,  0, 0, 0, 0,  0, 0, 0, 8,
        0, 0, 0, 9,  0, 0, 0, 2,  0, 0, 0, 9,  0, 0, 0xff, 0xf7,
    ];
    assert_eq!(pcie.prop("iommu-map").unwrap(), want);
}

/// `of_map_id(np, id, "iommu-map", "#iommu-cells", ...)`: the target node
/// and the endpoint ID a requester ID maps to, or `None` when no tuple
/// covers it.
fn linux_of_map_id<'a>(root: &'a Node, host: &Node, rid: u32) -> Option<(&'a Node, u32)> {
    let map = host.cells("iommu-map");
    let mut off = 0;
    while off < map.len() {
        let (rid_base, phandle) = (map[off], map[off + 1]);
        let target = root.by_phandle(phandle).expect("-ENODEV: no node");
        let cells = target.cells("#iommu-cells")[0] as usize;
        let (out_base, id_len) = (map[off + 2], map[off + 2 + cells]);
        if rid >= rid_base && rid < rid_base + id_len {
            return Some((target, rid - rid_base + out_base));
        }
        off += 3 + cells;
    }
    None
}

/// `of_pci_get_devfn`: bits 15:8 of the first `reg` cell.
fn linux_devfn(node: &Node) -> u8 {
    (node.cells("reg")[0] >> 8) as u8
}

#[test]
fn linux_maps_each_requester_to_the_iommu_and_finds_the_iommu_function() {
    let iommu = Bdf::new(0, 4, 0);
    let root = tree(iommu, 7, &iommu_map_all_but(7, iommu));
    let pcie = root.child("pcie@40000000");
    let node = pcie.child("iommu@4,0");
    assert_eq!(linux_devfn(node), iommu.devfn());
    for rid in [0x00, 0x1f, 0x21, 0x28, 0x30, 0x1_00, 0xffff] {
        let (target, endpoint) = linux_of_map_id(&root, pcie, rid).unwrap();
        assert_eq!(target.name, "iommu@4,0");
        assert_eq!(endpoint, rid, "endpoint ID = requester ID");
    }
    // The IOMMU's own DMA is not translated by itself.
    assert!(linux_of_map_id(&root, pcie, 0x20).is_none());
}

#[test]
fn map_with_an_endpoint_offset_and_a_function_other_than_0() {
    let iommu = Bdf::new(0, 2, 1);
    let map = [IommuMapEntry {
        rid_base: 0x100,
        iommu: 3,
        endpoint_base: 0x1_0000,
        length: 0x100,
    }];
    let root = tree(iommu, 3, &map);
    let pcie = root.child("pcie@40000000");
    let node = pcie.child("iommu@2,1");
    assert_eq!(node.cells("reg"), [0x1100, 0, 0, 0, 0]);
    assert_eq!(linux_devfn(node), iommu.devfn());
    assert_eq!(
        linux_of_map_id(&root, pcie, 0x1ff).map(|(_, e)| e),
        Some(0x1_00ff)
    );
    assert!(linux_of_map_id(&root, pcie, 0x200).is_none());
}

#[test]
fn map_all_but_the_first_or_last_function_has_one_tuple() {
    let first = iommu_map_all_but(1, Bdf(0));
    assert_eq!(
        first,
        [IommuMapEntry {
            rid_base: 1,
            iommu: 1,
            endpoint_base: 1,
            length: 0xffff
        }]
    );
    let last = iommu_map_all_but(1, Bdf(0xffff));
    assert_eq!(
        last,
        [IommuMapEntry {
            rid_base: 0,
            iommu: 1,
            endpoint_base: 0,
            length: 0xffff
        }]
    );
}

#[test]
fn bad_phandles_entries_and_order_are_errors() {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    for p in [0, u32::MAX] {
        assert!(matches!(
            write_pci_iommu_node(&mut fdt, Bdf(8), p),
            Err(FdtError::Phandle(_))
        ));
    }
    let entry = |rid_base, endpoint_base, length| IommuMapEntry {
        rid_base,
        iommu: 1,
        endpoint_base,
        length,
    };
    for bad in [
        entry(0, 0, 0),
        entry(0xffff_ffff, 0, 2),
        entry(0, 0xffff_ff00, 0x101),
    ] {
        assert!(matches!(
            write_iommu_map(&mut fdt, &[bad]),
            Err(FdtError::MapEntry { .. })
        ));
    }
    assert!(write_iommu_map(&mut fdt, &[entry(0xffff_ff00, 0, 0x100)]).is_ok());
    // Properties precede child nodes: the map after the IOMMU's node is
    // refused by the writer.
    write_pci_iommu_node(&mut fdt, Bdf(8), 1).unwrap();
    assert!(matches!(
        write_iommu_map(&mut fdt, &[entry(0, 0, 1)]),
        Err(FdtError::Writer(vm_fdt::Error::PropertyAfterEndNode))
    ));
    fdt.end_node(root).unwrap();
}
