//! The SMMU node, `iommu-map` and the MSI window region in a whole blob,
//! read back with a small flattened-tree reader: property bytes against
//! the bindings, and what Linux's `arm_smmu_device_dt_probe`, `of_map_id`
//! and `of_iommu_get_resv_regions` make of them.

use nesting_core::types::{Iova, IovaRange};

use super::*;

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
        v.chunks(4).map(be32).collect()
    }

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

/// Devicetree specification chapter 5: header offsets, structure tokens.
fn parse_dtb(dtb: &[u8]) -> Node {
    assert_eq!(be32(dtb), 0xd00d_feed);
    let (structs, strings) = (be32(&dtb[8..]) as usize, be32(&dtb[12..]) as usize);
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
    stack.pop().unwrap().children.pop().unwrap()
}

const SMMU: u32 = 3;
const REGION: u32 = 4;
const DEVICE: u32 = 5;

fn window() -> IovaRange {
    IovaRange::new(Iova(0x800_0000), Iova(0x80f_ffff)).unwrap()
}

/// A root with the SMMU, a PCIe host mapping every RID through it, the
/// passthrough function 00:02.0 with its own node, and the MSI window.
fn tree() -> Node {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    write_smmuv3_node(&mut fdt, 0x0905_0000, SMMU, &SmmuInterrupts::spis(74)).unwrap();
    let rmem = fdt.begin_node("reserved-memory").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_null("ranges").unwrap();
    write_msi_window_region(&mut fdt, window(), REGION, &[DEVICE]).unwrap();
    fdt.end_node(rmem).unwrap();
    let pcie = fdt.begin_node("pcie@10000000").unwrap();
    fdt.property_string("device_type", "pci").unwrap();
    let map = IommuMapEntry {
        rid_base: 0,
        iommu: SMMU,
        sid_base: 0,
        length: 0x1_0000,
    };
    write_iommu_map(&mut fdt, &[map]).unwrap();
    let dev = fdt.begin_node("ethernet@2,0").unwrap();
    fdt.property_array_u32("reg", &[0x1000, 0, 0, 0, 0])
        .unwrap();
    fdt.property_u32("memory-region", REGION).unwrap();
    fdt.property_phandle(DEVICE).unwrap();
    fdt.end_node(dev).unwrap();
    fdt.end_node(pcie).unwrap();
    fdt.end_node(root).unwrap();
    parse_dtb(&fdt.finish().unwrap())
}

#[test]
fn smmu_node_golden_bytes() {
    let root = tree();
    let n = root.child("iommu@9050000");
    assert_eq!(n.prop("compatible").unwrap(), b"arm,smmu-v3\0");
    // reg = <0x0 0x09050000 0x0 0x20000>: both 64 KiB pages.
    assert_eq!(n.cells("reg"), [0, 0x0905_0000, 0, 0x2_0000]);
    // <GIC_SPI 74 IRQ_TYPE_EDGE_RISING>, ... in the names' order.
    assert_eq!(
        n.cells("interrupts"),
        [0, 74, 1, 0, 76, 1, 0, 75, 1, 0, 77, 1]
    );
    assert_eq!(
        n.prop("interrupt-names").unwrap(),
        b"eventq\0gerror\0priq\0cmdq-sync\0"
    );
    assert_eq!(n.prop("dma-coherent").unwrap(), b"");
    assert_eq!(n.cells("#iommu-cells"), [1]);
    assert_eq!(n.cells("phandle"), [SMMU]);
}

/// `platform_get_irq_byname_optional`: the interrupt named `name`.
fn irq_byname(n: &Node, name: &str) -> Option<u32> {
    let names = n.prop("interrupt-names")?;
    let i = names
        .split(|&c| c == 0)
        .position(|s| s == name.as_bytes())?;
    Some(n.cells("interrupts")[3 * i + 1])
}

#[test]
fn linux_probes_the_smmu_and_maps_requesters_to_streams() {
    let root = tree();
    let smmu = root.child("iommu@9050000");
    // arm_smmu_device_probe: the MMIO region is at least 128 KiB.
    assert!(smmu.cells("reg")[3] >= 0x2_0000);
    // arm_smmu_setup_unique_irqs: "eventq", "gerror", "priq".
    assert_eq!(irq_byname(smmu, "eventq"), Some(74));
    assert_eq!(irq_byname(smmu, "gerror"), Some(76));
    assert_eq!(irq_byname(smmu, "priq"), Some(75));
    // of_map_id(pcie, rid, "iommu-map"): (target, StreamID).
    let map = root.child("pcie@10000000").cells("iommu-map");
    for rid in [0u32, 0x10, 0xffff] {
        let (base, ph, out, len) = (map[0], map[1], map[2], map[3]);
        assert!(rid >= base && rid < base + len);
        let target = root.by_phandle(ph).unwrap();
        assert_eq!(target.name, "iommu@9050000");
        assert_eq!(target.cells("#iommu-cells"), [1]);
        assert_eq!(rid - base + out, rid);
    }
}

/// `of_iommu_get_resv_regions(dev)`: for each `memory-region` of the
/// device, each `iommu-addresses` entry naming the device: (iova, length,
/// direct) where direct is `reg` equal to the range
/// (`iommu_resv_region_get_type`).
fn resv_regions_linux(root: &Node, dev: &Node) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let me = dev.cells("phandle")[0];
    for ph in dev.cells("memory-region") {
        let region = root.by_phandle(ph).unwrap();
        let reg = region.cells("reg");
        let phys = (
            u64::from(reg[0]) << 32 | u64::from(reg[1]),
            u64::from(reg[2]) << 32 | u64::from(reg[3]),
        );
        let maps = region.cells("iommu-addresses");
        for e in maps.chunks(5) {
            if e[0] != me {
                continue;
            }
            let iova = u64::from(e[1]) << 32 | u64::from(e[2]);
            let len = u64::from(e[3]) << 32 | u64::from(e[4]);
            out.push((iova, len, phys == (iova, len)));
        }
    }
    out
}

#[test]
fn linux_reserves_the_msi_window_one_to_one_for_the_device() {
    let root = tree();
    let region = root.child("reserved-memory").child("msi@8000000");
    assert_eq!(region.cells("reg"), [0, 0x800_0000, 0, 0x10_0000]);
    assert_eq!(
        region.cells("iommu-addresses"),
        [DEVICE, 0, 0x800_0000, 0, 0x10_0000]
    );
    assert!(region.prop("no-map").is_some());
    let dev = root.child("pcie@10000000").child("ethernet@2,0");
    assert_eq!(
        resv_regions_linux(&root, dev),
        [(0x800_0000, 0x10_0000, true)],
        "IOMMU_RESV_DIRECT"
    );
}

#[test]
fn bad_nodes_are_refused() {
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    let none = SmmuInterrupts::default();
    assert!(matches!(
        write_smmuv3_node(&mut fdt, 0, 3, &none),
        Err(FdtError::NoInterrupts)
    ));
    assert!(matches!(
        write_smmuv3_node(&mut fdt, 0, 0, &SmmuInterrupts::spis(1)),
        Err(FdtError::Phandle(0))
    ));
    let bad = IommuMapEntry {
        rid_base: 0xffff_ff00,
        iommu: 3,
        sid_base: 0,
        length: 0x200,
    };
    assert!(matches!(
        write_iommu_map(&mut fdt, &[bad]),
        Err(FdtError::MapEntry { .. })
    ));
    assert!(matches!(
        write_msi_window_region(&mut fdt, window(), 4, &[]),
        Err(FdtError::NoDevice)
    ));
    fdt.end_node(root).unwrap();
}
