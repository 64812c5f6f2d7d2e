//! The IORT against bytes assembled by hand from DEN 0049's field tables,
//! and against a re-implementation of what Linux reads of it
//! (`drivers/acpi/arm64/iort.c`): the node walk, `iort_node_map_id`,
//! `arm_smmu_v3_init_resources` and `iort_get_rmrs`.

use nesting_core::types::{Iova, IovaRange};

use super::*;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The doc example's platform: ITS 0, one SMMU, one root complex, the
/// MSI window of StreamID 0x10 reserved.
fn platform() -> Iort {
    let mut iort = Iort::default();
    iort.its_groups.push(ItsGroup { its_ids: vec![0] });
    let mut smmu = SmmuNode::new(0x0905_0000, SmmuIrqs::spis(106));
    smmu.id_maps
        .push(IdMap::identity(0, 0x1_0000, Target::ItsGroup(0)));
    iort.smmus.push(smmu);
    iort.root_complexes.push(RootComplex::new(
        0,
        IdMap::identity(0, 0x1_0000, Target::Smmu(0)),
    ));
    let window = IovaRange::new(Iova(0x800_0000), Iova(0x80f_ffff)).unwrap();
    iort.rmrs.push(Rmr::msi_window(0, &[0x10], window));
    iort
}

fn table(iort: &Iort) -> Vec<u8> {
    iort.sdt(*b"VIOMMU", *b"VIOMMUGT", 1)
        .unwrap()
        .as_slice()
        .to_vec()
}

/// Appends little-endian fields of the given widths.
fn fields(out: &mut Vec<u8>, f: &[(u64, usize)]) {
    for &(v, w) in f {
        out.extend_from_slice(&v.to_le_bytes()[..w]);
    }
}

#[test]
fn iort_golden_bytes() {
    let t = table(&platform());
    // Offsets: ITS group 48 (24 bytes), SMMU 72 (68 + 20), RC 160 (40 +
    // 20), RMR 220 (28 + 20 + 20), end 288.
    let mut want = Vec::new();
    // Table 2: node count, node array offset, reserved.
    fields(&mut want, &[(4, 4), (48, 4), (0, 4)]);
    // ITS group: type 0, length 24, revision 1, id 0, no mappings; one ITS.
    fields(
        &mut want,
        &[(0, 1), (24, 2), (1, 1), (0, 4), (0, 4), (0, 4)],
    );
    fields(&mut want, &[(1, 4), (0, 4)]);
    // SMMUv3: type 4, length 88, revision 5, id 1, one mapping at 68.
    fields(
        &mut want,
        &[(4, 1), (88, 2), (5, 1), (1, 4), (1, 4), (68, 4)],
    );
    // Base, flags (COHACC), reserved, VATOS, model, event/PRI/GERR/sync
    // GSIVs, proximity domain, DeviceID mapping index.
    fields(
        &mut want,
        &[(0x0905_0000, 8), (1, 4), (0, 4), (0, 8), (0, 4)],
    );
    fields(
        &mut want,
        &[(106, 4), (107, 4), (108, 4), (109, 4), (0, 4), (0, 4)],
    );
    // StreamIDs 0..=0xffff -> ITS group at 48, DeviceID = StreamID.
    fields(&mut want, &[(0, 4), (0xffff, 4), (0, 4), (48, 4), (0, 4)]);
    // Root complex: type 2, length 60, revision 4, id 2, one mapping at 40.
    fields(
        &mut want,
        &[(2, 1), (60, 2), (4, 1), (2, 4), (1, 4), (40, 4)],
    );
    // CCA 1, hints 0, reserved, CPM|DACS; ATS 0; segment 0; 64-bit
    // addresses; PASID caps 0; reserved; flags 0.
    fields(&mut want, &[(1, 4), (0, 1), (0, 2), (3, 1), (0, 4), (0, 4)]);
    fields(&mut want, &[(64, 1), (0, 2), (0, 1), (0, 4)]);
    // RIDs 0..=0xffff -> SMMU at 72, StreamID = RID.
    fields(&mut want, &[(0, 4), (0xffff, 4), (0, 4), (72, 4), (0, 4)]);
    // RMR: type 6, length 68, revision 3, id 3, one mapping at 28; flags
    // (Device-nGnRE << 2, not remappable), one range at 48.
    fields(
        &mut want,
        &[(6, 1), (68, 2), (3, 1), (3, 4), (1, 4), (28, 4)],
    );
    fields(&mut want, &[(1 << 2, 4), (1, 4), (48, 4)]);
    fields(&mut want, &[(0x10, 4), (0, 4), (0x10, 4), (72, 4), (0, 4)]);
    fields(&mut want, &[(0x800_0000, 8), (0x10_0000, 8), (0, 4)]);
    assert_eq!(&t[..4], b"IORT");
    assert_eq!(le32(&t, 4) as usize, t.len());
    assert_eq!(t[8], IORT_REVISION);
    assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    assert_eq!(&t[ACPI_HEADER_LEN..], want.as_slice());
}

// --- What Linux reads ------------------------------------------------------

/// One node as `struct acpi_iort_node` and where it is.
#[derive(Clone, Copy, Debug)]
struct Node<'a> {
    at: usize,
    kind: u8,
    revision: u8,
    data: &'a [u8],
}

impl<'a> Node<'a> {
    fn mapping(&self, i: usize) -> (u32, u32, u32, u32, u32) {
        let base = le32(self.data, 12) as usize + 20 * i;
        let m = |k: usize| le32(self.data, base + 4 * k);
        (m(0), m(1), m(2), m(3), m(4))
    }

    fn mappings(&self) -> usize {
        le32(self.data, 8) as usize
    }
}

/// `acpi_iort_init` and the node walk of `iort_scan_node`: every node
/// lies inside the table.
fn nodes(t: &[u8]) -> Vec<Node<'_>> {
    let count = le32(t, 36) as usize;
    let mut at = le32(t, 40) as usize;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = usize::from(u16::from_le_bytes([t[at + 1], t[at + 2]]));
        assert!(at + len <= t.len(), "node at {at:#x} past the table end");
        out.push(Node {
            at,
            kind: t[at],
            revision: t[at + 3],
            data: &t[at..at + len],
        });
        at += len;
    }
    out
}

fn node_at<'a>(t: &'a [u8], off: u32) -> Node<'a> {
    *nodes(t)
        .iter()
        .find(|n| n.at == off as usize)
        .expect("output reference names a node")
}

/// `iort_id_map`: the inclusive range `[input_base, input_base +
/// id_count]`, single mappings only for the node's own ID.
fn id_map_linux(m: (u32, u32, u32, u32, u32), id: u32) -> Option<u32> {
    let (input, count, output, _, flags) = m;
    if flags & 1 != 0 {
        return None;
    }
    (id >= input && id <= input + count).then(|| output + (id - input))
}

/// `iort_node_map_id` from a root complex: the SMMU node and StreamID a
/// requester ID maps to.
fn rc_to_smmu<'a>(t: &'a [u8], rc: Node<'a>, rid: u32) -> Option<(Node<'a>, u32)> {
    (0..rc.mappings()).find_map(|i| {
        let m = rc.mapping(i);
        let sid = id_map_linux(m, rid)?;
        let target = node_at(t, m.3);
        (target.kind == TYPE_SMMUV3).then_some((target, sid))
    })
}

/// `arm_smmu_v3_init_resources`: the MMIO window and the named wired
/// interrupts (a GSIV of 0 is not one).
fn smmu_resources(n: Node<'_>) -> ((u64, u64), Vec<(&'static str, u32)>) {
    let base = le64(n.data, 16);
    let names = ["eventq", "priq", "gerror", "cmdq-sync"];
    let irqs = names
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, le32(n.data, 44 + 4 * i)))
        .filter(|(_, g)| *g != 0)
        .collect();
    ((base, base + SMMU_FRAME_SIZE - 1), irqs)
}

/// `iort_get_rmrs` for one stream of one SMMU: (base, length, direct
/// (not relaxable), MMIO) of every reserved range. Linux takes RMR nodes
/// only from table revision 5 on.
fn rmrs_linux(t: &[u8], smmu: Node<'_>, sid: u32) -> Vec<(u64, u64, bool, bool)> {
    if t[8] < 5 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for n in nodes(t).into_iter().filter(|n| n.kind == TYPE_RMR) {
        let covers = (0..n.mappings()).any(|i| {
            let (_, count, output, reference, _) = n.mapping(i);
            reference as usize == smmu.at && sid >= output && sid <= output + count
        });
        if !covers {
            continue;
        }
        let flags = le32(n.data, 16);
        let direct = flags & 1 == 0;
        let mmio = (flags >> 2) & 0xff <= 0x3;
        let (count, at) = (le32(n.data, 20) as usize, le32(n.data, 24) as usize);
        for i in 0..count {
            let d = at + 20 * i;
            out.push((le64(n.data, d), le64(n.data, d + 8), direct, mmio));
        }
    }
    out
}

#[test]
fn linux_maps_requesters_to_smmu_streams_and_finds_its_resources() {
    let t = table(&platform());
    let rc = nodes(&t)
        .into_iter()
        .find(|n| n.kind == TYPE_ROOT_COMPLEX)
        .unwrap();
    for rid in [0u32, 0x10, 0x0108, 0xffff] {
        let (smmu, sid) = rc_to_smmu(&t, rc, rid).expect("mapped");
        assert_eq!(sid, rid, "StreamID = requester ID");
        let (mmio, irqs) = smmu_resources(smmu);
        assert_eq!(mmio, (0x0905_0000, 0x0906_ffff), "both 64 KiB pages");
        assert_eq!(
            irqs,
            [
                ("eventq", 106),
                ("priq", 107),
                ("gerror", 108),
                ("cmdq-sync", 109)
            ]
        );
        // The SMMU's streams reach the ITS with DeviceID = StreamID.
        let its = smmu.mapping(0);
        assert_eq!(node_at(&t, its.3).kind, TYPE_ITS_GROUP);
        assert_eq!(id_map_linux(its, sid), Some(sid));
    }
    assert!(rc_to_smmu(&t, rc, 0x1_0000).is_none(), "past 16 bits");
    assert_eq!(
        nodes(&t).iter().map(|n| n.revision).collect::<Vec<_>>(),
        [1, 5, 4, 3]
    );
}

#[test]
fn linux_reserves_the_msi_window_one_to_one_for_its_stream_only() {
    let t = table(&platform());
    let smmu = nodes(&t)
        .into_iter()
        .find(|n| n.kind == TYPE_SMMUV3)
        .unwrap();
    assert_eq!(
        rmrs_linux(&t, smmu, 0x10),
        [(0x800_0000, 0x10_0000, true, true)],
        "IOMMU_RESV_DIRECT, IOMMU_MMIO"
    );
    assert!(rmrs_linux(&t, smmu, 0x11).is_empty());
}

#[test]
fn smmu_msi_is_a_single_mapping_named_by_the_deviceid_index() {
    let mut iort = platform();
    iort.smmus[0].msi = Some((0, 0x2_0000));
    let t = table(&iort);
    let smmu = nodes(&t)
        .into_iter()
        .find(|n| n.kind == TYPE_SMMUV3)
        .unwrap();
    // iort_get_id_mapping_index: DEVICEID_VALID, index below the count.
    let flags = le32(smmu.data, 24);
    assert_eq!(flags & SMMU_DEVICEID_VALID, SMMU_DEVICEID_VALID);
    let index = le32(smmu.data, 64) as usize;
    assert!(index < smmu.mappings());
    let (_, _, output, reference, mflags) = smmu.mapping(index);
    assert_eq!((output, mflags), (0x2_0000, ID_SINGLE_MAPPING));
    assert_eq!(node_at(&t, reference).kind, TYPE_ITS_GROUP);
    // The RC -> SMMU map still skips over it.
    let rc = nodes(&t)
        .into_iter()
        .find(|n| n.kind == TYPE_ROOT_COMPLEX)
        .unwrap();
    assert_eq!(rc_to_smmu(&t, rc, 0x20).unwrap().1, 0x20);
}

#[test]
fn invalid_tables_are_refused_before_writing() {
    let mut bad = platform();
    bad.root_complexes[0].id_maps[0].target = Target::Smmu(3);
    assert_eq!(
        bad.body(),
        Err(IortError::NoTarget {
            target: Target::Smmu(3)
        })
    );
    let mut bad = platform();
    bad.root_complexes[0].id_maps[0].count = 0;
    assert!(matches!(bad.body(), Err(IortError::IdRange { .. })));
    let mut bad = platform();
    bad.root_complexes[0].id_maps[0].output_base = u32::MAX;
    assert!(matches!(bad.body(), Err(IortError::IdRange { .. })));
    let mut bad = platform();
    bad.rmrs[0].ranges[0] = (0x800_1000, 0x10_0000);
    assert!(matches!(bad.body(), Err(IortError::RmrRange { .. })));
    let mut bad = platform();
    bad.rmrs[0].streams.clear();
    assert_eq!(bad.body(), Err(IortError::EmptyRmr));
    let mut bad = platform();
    bad.its_groups[0].its_ids.clear();
    assert_eq!(bad.body(), Err(IortError::EmptyItsGroup));
    let mut bad = platform();
    bad.smmus[0].id_maps[0].target = Target::Smmu(0);
    assert_eq!(bad.body(), Err(IortError::SmmuToSmmu));
}
