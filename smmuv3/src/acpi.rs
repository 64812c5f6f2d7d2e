//! The ACPI IORT (IO Remapping Table, Arm DEN 0049 revision E.e) that
//! tells a guest where its SMMUv3s are, which PCI requester IDs each
//! translates as which StreamIDs, where their MSIs go, and which memory a
//! stream must keep mapped one-to-one (RMR: the host MSI doorbell window
//! of a passthrough device, [`crate::Smmuv3::passthrough_msi_window`]).
//!
//! A VMM describes the platform in an [`Iort`] and gets either the whole
//! table ([`Iort::sdt`], an `acpi_tables` [`Sdt`] with header and
//! checksum) or the part after the 36-byte header ([`Iort::body`]).
//!
//! ```
//! use nesting_core::types::{Iova, IovaRange};
//! use smmuv3::acpi::{IdMap, Iort, ItsGroup, RootComplex, Rmr, SmmuIrqs, SmmuNode, Target};
//!
//! // One SMMU (its two 64 KiB pages at 0x0905_0000, wired SPIs 106-109)
//! // translating every requester ID of segment 0 as StreamID = RID; the
//! // devices' MSIs then go to ITS 0 with DeviceID = StreamID.
//! let mut iort = Iort::default();
//! iort.its_groups.push(ItsGroup { its_ids: vec![0] });
//! let mut smmu = SmmuNode::new(0x0905_0000, SmmuIrqs::spis(106));
//! smmu.id_maps.push(IdMap::identity(0, 0x1_0000, Target::ItsGroup(0)));
//! iort.smmus.push(smmu);
//! iort.root_complexes.push(RootComplex::new(0, IdMap::identity(0, 0x1_0000, Target::Smmu(0))));
//! // StreamID 0x10 is a passthrough device: the host's MSI window stays
//! // mapped one-to-one in its stage 1.
//! let window = IovaRange::new(Iova(0x800_0000), Iova(0x80f_ffff)).unwrap();
//! iort.rmrs.push(Rmr::msi_window(0, &[0x10], window));
//! let table = iort.sdt(*b"VIOMMU", *b"VIOMMUGT", 1).unwrap();
//! assert_eq!(&table.as_slice()[..4], b"IORT");
//! assert_eq!(table.as_slice().iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
//! ```
//!
//! `acpi_tables` (rust-vmm) has the header, the checksum and the [`Sdt`],
//! but no IORT nodes; they are `#[repr(C)]` little-endian structs here,
//! laid out as DEN 0049 and Linux's `include/acpi/actbl2.h` define them,
//! each with a size check. Everything is checked before a byte is written
//! ([`IortError`]); what Linux reads (`drivers/acpi/arm64/iort.c`) is
//! re-implemented in the tests and run against the tables made here.

use acpi_tables::sdt::Sdt;
use nesting_core::types::IovaRange;
use thiserror::Error;
use zerocopy::little_endian::{U16 as Le16, U32 as Le32, U64 as Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The table's signature.
pub const IORT_SIGNATURE: [u8; 4] = *b"IORT";
/// The table's revision: 6 is DEN 0049 E.e. Linux reads RMR nodes only
/// from revision 5 (E.d) on (`iort_find_rmrs`).
pub const IORT_REVISION: u8 = 6;
/// Length of the standard ACPI table header that precedes the body.
pub const ACPI_HEADER_LEN: usize = 36;
/// The size of the register frame of an SMMUv3 node: page 0 and page 1,
/// 64 KiB each (Linux `arm_smmu_v3_init_resources`: `SZ_128K`).
pub const SMMU_FRAME_SIZE: u64 = 0x2_0000;
/// RMR ranges are 64 KiB aligned and a multiple of 64 KiB long (DEN 0049
/// "Memory Range Descriptor"; Linux warns "not aligned to 64K").
pub const RMR_GRANULE: u64 = 0x1_0000;

/// Node revisions of E.e.
const REV_ITS_GROUP: u8 = 1;
const REV_ROOT_COMPLEX: u8 = 4;
const REV_SMMUV3: u8 = 5;
const REV_RMR: u8 = 3;

/// Node types (DEN 0049 "IORT node types").
const TYPE_ITS_GROUP: u8 = 0;
const TYPE_ROOT_COMPLEX: u8 = 2;
const TYPE_SMMUV3: u8 = 4;
const TYPE_RMR: u8 = 6;

/// ID mapping flags: bit 0, Single mapping (the node's own ID, e.g. an
/// SMMU's DeviceID for its MSIs).
const ID_SINGLE_MAPPING: u32 = 1 << 0;
/// SMMUv3 node flags.
const SMMU_COHACC_OVERRIDE: u32 = 1 << 0;
const SMMU_DEVICEID_VALID: u32 = 1 << 4;
/// Root complex: ATS attribute bit 0, memory access flags CPM and DACS.
const RC_ATS_SUPPORTED: u32 = 1 << 0;
const RC_MEM_CPM_DACS: u8 = 0b11;
/// RMR flags: bit 0 remapping permitted, bit 1 privileged, bits 9:2
/// access attributes.
const RMR_REMAP_PERMITTED: u32 = 1 << 0;
const RMR_PRIVILEGED: u32 = 1 << 1;
const RMR_ATTR_SHIFT: u32 = 2;

/// Where an ID mapping's output IDs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The SMMU at this index of [`Iort::smmus`] (output IDs: StreamIDs).
    Smmu(usize),
    /// The ITS group at this index of [`Iort::its_groups`] (output IDs:
    /// DeviceIDs).
    ItsGroup(usize),
}

/// A range of input IDs mapped to output IDs of a target node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// First input ID.
    pub input_base: u32,
    /// Number of IDs (the table stores it minus one).
    pub count: u32,
    /// The output ID of `input_base`.
    pub output_base: u32,
    /// Where the output IDs go.
    pub target: Target,
}

impl IdMap {
    /// `count` IDs from `first`, output ID = input ID.
    pub fn identity(first: u32, count: u32, target: Target) -> IdMap {
        IdMap {
            input_base: first,
            count,
            output_base: first,
            target,
        }
    }
}

/// An ITS group: the GIC ITSs (their MADT translation IDs) MSIs may go to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItsGroup {
    /// GIC ITS identifiers.
    pub its_ids: Vec<u32>,
}

/// The SMMU's wired interrupts (GSIVs; 0: not wired, e.g. signalled by
/// MSI). Linux names them "eventq", "priq", "gerror" and "cmdq-sync".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmmuIrqs {
    /// Event queue.
    pub event: u32,
    /// PRI queue.
    pub pri: u32,
    /// Global errors.
    pub gerr: u32,
    /// CMD_SYNC completion.
    pub sync: u32,
}

impl SmmuIrqs {
    /// Four consecutive SPIs from GSIV `first` (event, PRI, GERROR,
    /// sync), as QEMU's virt board wires its SMMU.
    pub fn spis(first: u32) -> SmmuIrqs {
        SmmuIrqs {
            event: first,
            pri: first + 1,
            gerr: first + 2,
            sync: first + 3,
        }
    }
}

/// An SMMUv3 node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuNode {
    /// Base of page 0 (page 1 follows at + 64 KiB).
    pub base: u64,
    /// COHACC override: the SMMU's table walks and queue accesses are
    /// coherent (the model reads guest memory coherently).
    pub coherent: bool,
    /// Wired interrupts.
    pub irqs: SmmuIrqs,
    /// The SMMU's own MSIs: (ITS group index, DeviceID), written as a
    /// single mapping that the DeviceID mapping index names.
    pub msi: Option<(usize, u32)>,
    /// StreamIDs to ITS DeviceIDs, for the MSIs of the devices behind it.
    pub id_maps: Vec<IdMap>,
}

impl SmmuNode {
    /// A coherent SMMU at `base` with wired interrupts.
    pub fn new(base: u64, irqs: SmmuIrqs) -> SmmuNode {
        SmmuNode {
            base,
            coherent: true,
            irqs,
            msi: None,
            id_maps: Vec::new(),
        }
    }
}

/// A PCI root complex node: which of its requester IDs go where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootComplex {
    /// PCI segment.
    pub segment: u32,
    /// Its devices may use ATS.
    pub ats: bool,
    /// Coherent path to memory (cache-coherent DMA).
    pub coherent: bool,
    /// Width of the DMA addresses it can emit, in bits (64: no limit).
    pub address_bits: u8,
    /// Requester IDs to StreamIDs (of an SMMU) or DeviceIDs (of an ITS
    /// group, for requesters no SMMU translates).
    pub id_maps: Vec<IdMap>,
}

impl RootComplex {
    /// A coherent root complex of `segment` without ATS, with one map.
    pub fn new(segment: u32, map: IdMap) -> RootComplex {
        RootComplex {
            segment,
            ats: false,
            coherent: true,
            address_bits: 64,
            id_maps: vec![map],
        }
    }
}

/// Memory attributes of an RMR (DEN 0049 "RMR node", access attributes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmrAttributes {
    /// Device-nGnRE: an MSI doorbell (Linux maps it `IOMMU_MMIO`).
    DeviceNgnre,
    /// Normal, inner and outer write-back (Linux: `IOMMU_CACHE`).
    NormalWriteBack,
}

impl RmrAttributes {
    fn raw(self) -> u32 {
        match self {
            RmrAttributes::DeviceNgnre => 0x1,
            RmrAttributes::NormalWriteBack => 0x5,
        }
    }
}

/// A Reserved Memory Range node: memory the named streams of one SMMU
/// must reach one-to-one at all times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmr {
    /// The SMMU (index into [`Iort::smmus`]).
    pub smmu: usize,
    /// The streams: (first StreamID, count).
    pub streams: Vec<(u32, u32)>,
    /// The ranges: (base, length), 64 KiB granular.
    pub ranges: Vec<(u64, u64)>,
    /// The OS may remap the range (Linux: `IOMMU_RESV_DIRECT_RELAXABLE`);
    /// clear, it must stay one-to-one (`IOMMU_RESV_DIRECT`).
    pub remap_permitted: bool,
    /// Privileged accesses (Linux: `IOMMU_PRIV`).
    pub privileged: bool,
    /// Memory attributes.
    pub attributes: RmrAttributes,
}

impl Rmr {
    /// The host MSI doorbell window of passthrough streams `sids` of SMMU
    /// `smmu`: device memory the guest's stage 1 keeps mapped one-to-one
    /// (the window [`crate::Smmuv3::passthrough_msi_window`] names).
    pub fn msi_window(smmu: usize, sids: &[u32], window: IovaRange) -> Rmr {
        let len = window.last.0.wrapping_sub(window.first.0).wrapping_add(1);
        Rmr {
            smmu,
            streams: sids.iter().map(|&s| (s, 1)).collect(),
            ranges: vec![(window.first.0, len)],
            remap_permitted: false,
            privileged: false,
            attributes: RmrAttributes::DeviceNgnre,
        }
    }
}

/// The IO Remapping Table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Iort {
    /// ITS groups.
    pub its_groups: Vec<ItsGroup>,
    /// SMMUv3s.
    pub smmus: Vec<SmmuNode>,
    /// PCI root complexes.
    pub root_complexes: Vec<RootComplex>,
    /// Reserved memory ranges.
    pub rmrs: Vec<Rmr>,
}

/// An [`Iort`] that cannot be written as a valid table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IortError {
    /// An ID mapping names a node the table does not have.
    #[error("ID mapping to {target:?}, which the table does not have")]
    NoTarget {
        /// The target.
        target: Target,
    },
    /// An ID mapping of no ID, or whose IDs run past 32 bits.
    #[error(
        "ID mapping {input_base:#x}+{count:#x} -> {output_base:#x} is empty or runs past 32 bits"
    )]
    IdRange {
        /// First input ID.
        input_base: u32,
        /// Number of IDs.
        count: u32,
        /// First output ID.
        output_base: u32,
    },
    /// An SMMU maps its StreamIDs to another SMMU (its ID mappings go to
    /// ITS groups only).
    #[error("an SMMU's ID mapping must go to an ITS group")]
    SmmuToSmmu,
    /// An ITS group without an ITS.
    #[error("an ITS group needs at least one ITS")]
    EmptyItsGroup,
    /// An RMR with no stream or no range.
    #[error("an RMR needs at least one stream and one range")]
    EmptyRmr,
    /// An RMR range that is not a non-empty run of 64 KiB pages.
    #[error("RMR range {base:#x}+{length:#x} is not a non-empty run of 64 KiB pages")]
    RmrRange {
        /// Base.
        base: u64,
        /// Length.
        length: u64,
    },
    /// A node longer than its 16-bit length field.
    #[error("an IORT node of {len} bytes does not fit its 16-bit length")]
    NodeTooLong {
        /// Its length.
        len: usize,
    },
    /// A table longer than its 32-bit length field.
    #[error("an IORT of {len} bytes does not fit its 32-bit length")]
    TableTooLong {
        /// Its length.
        len: usize,
    },
}

/// After the header: node count, offset of the node array, reserved.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct IortFixed {
    node_count: Le32,
    node_offset: Le32,
    reserved: Le32,
}

/// First in every node (`struct acpi_iort_node`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NodeHeader {
    kind: u8,
    length: Le16,
    revision: u8,
    identifier: Le32,
    mapping_count: Le32,
    mapping_offset: Le32,
}

/// `struct acpi_iort_id_mapping`: `id_count` is the number of IDs minus
/// one.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct IdMapWire {
    input_base: Le32,
    id_count: Le32,
    output_base: Le32,
    output_reference: Le32,
    flags: Le32,
}

/// `struct acpi_iort_its_group` with its header; the ITS IDs follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct ItsGroupFixed {
    header: NodeHeader,
    its_count: Le32,
}

/// `struct acpi_iort_smmu_v3` with its header.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct SmmuFixed {
    header: NodeHeader,
    base: Le64,
    flags: Le32,
    reserved: Le32,
    vatos: Le64,
    model: Le32,
    event: Le32,
    pri: Le32,
    gerr: Le32,
    sync: Le32,
    proximity_domain: Le32,
    deviceid_index: Le32,
}

/// `struct acpi_iort_root_complex` with its header (revision 4).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct RootComplexFixed {
    header: NodeHeader,
    cache_coherency: Le32,
    allocation_hints: u8,
    reserved: Le16,
    memory_flags: u8,
    ats: Le32,
    segment: Le32,
    address_limit: u8,
    pasid_caps: Le16,
    reserved1: u8,
    flags: Le32,
}

/// `struct acpi_iort_rmr` with its header; ID mappings, then the range
/// descriptors follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct RmrFixed {
    header: NodeHeader,
    flags: Le32,
    range_count: Le32,
    range_offset: Le32,
}

/// `struct acpi_iort_rmr_desc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct RangeWire {
    base: Le64,
    length: Le64,
    reserved: Le32,
}

const HEADER_END: usize = ACPI_HEADER_LEN + size_of::<IortFixed>();
const ID_MAP_LEN: usize = size_of::<IdMapWire>();
const _: () = assert!(size_of::<IortFixed>() == 12);
const _: () = assert!(size_of::<NodeHeader>() == 16);
const _: () = assert!(ID_MAP_LEN == 20);
const _: () = assert!(size_of::<ItsGroupFixed>() == 20);
const _: () = assert!(size_of::<SmmuFixed>() == 68);
const _: () = assert!(size_of::<RootComplexFixed>() == 40);
const _: () = assert!(size_of::<RmrFixed>() == 28);
const _: () = assert!(size_of::<RangeWire>() == 20);

/// Offsets (from the table's start) of every node, in writing order.
struct Layout {
    its: Vec<u32>,
    smmu: Vec<u32>,
    total: usize,
}

impl Iort {
    /// The whole table, header and checksum included.
    pub fn sdt(
        &self,
        oem_id: [u8; 6],
        oem_table_id: [u8; 8],
        oem_revision: u32,
    ) -> Result<Sdt, IortError> {
        let body = self.body()?;
        let mut sdt = Sdt::new(
            IORT_SIGNATURE,
            ACPI_HEADER_LEN as u32,
            IORT_REVISION,
            oem_id,
            oem_table_id,
            oem_revision,
        );
        sdt.append_slice(&body);
        Ok(sdt)
    }

    /// The table after its 36-byte header: the node count and offset,
    /// then ITS groups, SMMUs, root complexes and RMRs, in that order.
    pub fn body(&self) -> Result<Vec<u8>, IortError> {
        self.check()?;
        let layout = self.layout()?;
        let nodes =
            self.its_groups.len() + self.smmus.len() + self.root_complexes.len() + self.rmrs.len();
        let fixed = IortFixed {
            node_count: (nodes as u32).into(),
            node_offset: (HEADER_END as u32).into(),
            reserved: 0.into(),
        };
        let mut b = fixed.as_bytes().to_vec();
        let mut id = 0u32;
        for g in &self.its_groups {
            write_its_group(&mut b, g, next(&mut id));
        }
        for s in &self.smmus {
            write_smmu(&mut b, s, next(&mut id), &layout);
        }
        for rc in &self.root_complexes {
            write_root_complex(&mut b, rc, next(&mut id), &layout);
        }
        for r in &self.rmrs {
            write_rmr(&mut b, r, next(&mut id), &layout);
        }
        debug_assert_eq!(ACPI_HEADER_LEN + b.len(), layout.total);
        Ok(b)
    }

    /// Where each node goes; every node's length fits 16 bits and the
    /// table 32.
    fn layout(&self) -> Result<Layout, IortError> {
        let mut at = HEADER_END;
        let mut place = |len: usize| -> Result<u32, IortError> {
            if len > usize::from(u16::MAX) {
                return Err(IortError::NodeTooLong { len });
            }
            let here = u32::try_from(at).map_err(|_| IortError::TableTooLong { len: at })?;
            at += len;
            Ok(here)
        };
        let its = self
            .its_groups
            .iter()
            .map(|g| place(its_group_len(g)))
            .collect::<Result<Vec<_>, _>>()?;
        let smmu = self
            .smmus
            .iter()
            .map(|s| place(smmu_len(s)))
            .collect::<Result<Vec<_>, _>>()?;
        for rc in &self.root_complexes {
            place(size_of::<RootComplexFixed>() + ID_MAP_LEN * rc.id_maps.len())?;
        }
        for r in &self.rmrs {
            place(rmr_len(r))?;
        }
        u32::try_from(at).map_err(|_| IortError::TableTooLong { len: at })?;
        Ok(Layout {
            its,
            smmu,
            total: at,
        })
    }

    /// DEN 0049's rules a table must keep, checked before writing.
    fn check(&self) -> Result<(), IortError> {
        let target_ok = |t: Target| match t {
            Target::Smmu(i) => i < self.smmus.len(),
            Target::ItsGroup(i) => i < self.its_groups.len(),
        };
        let maps = self
            .smmus
            .iter()
            .flat_map(|s| &s.id_maps)
            .chain(self.root_complexes.iter().flat_map(|rc| &rc.id_maps));
        for m in maps {
            if !target_ok(m.target) {
                return Err(IortError::NoTarget { target: m.target });
            }
            check_ids(m.input_base, m.count, m.output_base)?;
        }
        for s in &self.smmus {
            if s.id_maps
                .iter()
                .any(|m| matches!(m.target, Target::Smmu(_)))
            {
                return Err(IortError::SmmuToSmmu);
            }
            if let Some((g, _)) = s.msi
                && !target_ok(Target::ItsGroup(g))
            {
                return Err(IortError::NoTarget {
                    target: Target::ItsGroup(g),
                });
            }
        }
        if self.its_groups.iter().any(|g| g.its_ids.is_empty()) {
            return Err(IortError::EmptyItsGroup);
        }
        self.rmrs.iter().try_for_each(|r| self.check_rmr(r))
    }

    fn check_rmr(&self, r: &Rmr) -> Result<(), IortError> {
        if r.smmu >= self.smmus.len() {
            return Err(IortError::NoTarget {
                target: Target::Smmu(r.smmu),
            });
        }
        if r.streams.is_empty() || r.ranges.is_empty() {
            return Err(IortError::EmptyRmr);
        }
        for &(first, count) in &r.streams {
            check_ids(first, count, first)?;
        }
        // DEN 0049 "Memory Range Descriptor": the base is aligned to 64K
        // and the length a multiple of 64K.
        for &(base, length) in &r.ranges {
            let aligned = base % RMR_GRANULE == 0 && length % RMR_GRANULE == 0;
            if !aligned || length == 0 || base.checked_add(length - 1).is_none() {
                return Err(IortError::RmrRange { base, length });
            }
        }
        Ok(())
    }
}

fn next(id: &mut u32) -> u32 {
    let this = *id;
    *id += 1;
    this
}

fn check_ids(input_base: u32, count: u32, output_base: u32) -> Result<(), IortError> {
    let end = |base: u32| u64::from(base) + u64::from(count);
    if count == 0 || end(input_base) > 1 << 32 || end(output_base) > 1 << 32 {
        return Err(IortError::IdRange {
            input_base,
            count,
            output_base,
        });
    }
    Ok(())
}

fn its_group_len(g: &ItsGroup) -> usize {
    size_of::<ItsGroupFixed>() + 4 * g.its_ids.len()
}

fn smmu_maps(s: &SmmuNode) -> usize {
    s.id_maps.len() + usize::from(s.msi.is_some())
}

fn smmu_len(s: &SmmuNode) -> usize {
    size_of::<SmmuFixed>() + ID_MAP_LEN * smmu_maps(s)
}

fn rmr_len(r: &Rmr) -> usize {
    size_of::<RmrFixed>() + ID_MAP_LEN * r.streams.len() + size_of::<RangeWire>() * r.ranges.len()
}

/// A node header; lengths fit (checked by [`Iort::layout`]).
fn node_header(kind: u8, revision: u8, len: usize, id: u32, maps: usize, at: usize) -> NodeHeader {
    NodeHeader {
        kind,
        length: (len as u16).into(),
        revision,
        identifier: id.into(),
        mapping_count: (maps as u32).into(),
        mapping_offset: (if maps == 0 { 0 } else { at as u32 }).into(),
    }
}

fn target_offset(t: Target, layout: &Layout) -> u32 {
    // Indexes were checked by Iort::check.
    match t {
        Target::Smmu(i) => layout.smmu.get(i).copied().unwrap_or(0),
        Target::ItsGroup(i) => layout.its.get(i).copied().unwrap_or(0),
    }
}

fn id_map(m: &IdMap, layout: &Layout, flags: u32) -> IdMapWire {
    IdMapWire {
        input_base: m.input_base.into(),
        id_count: (m.count - 1).into(),
        output_base: m.output_base.into(),
        output_reference: target_offset(m.target, layout).into(),
        flags: flags.into(),
    }
}

fn write_its_group(b: &mut Vec<u8>, g: &ItsGroup, id: u32) {
    let fixed = ItsGroupFixed {
        header: node_header(TYPE_ITS_GROUP, REV_ITS_GROUP, its_group_len(g), id, 0, 0),
        its_count: (g.its_ids.len() as u32).into(),
    };
    b.extend_from_slice(fixed.as_bytes());
    for its in &g.its_ids {
        b.extend_from_slice(&its.to_le_bytes());
    }
}

fn write_smmu(b: &mut Vec<u8>, s: &SmmuNode, id: u32, layout: &Layout) {
    let maps = smmu_maps(s);
    let mut flags = 0;
    if s.coherent {
        flags |= SMMU_COHACC_OVERRIDE;
    }
    // The single mapping of the SMMU's own MSIs comes last; the DeviceID
    // mapping index names it (Linux `iort_get_id_mapping_index`).
    if s.msi.is_some() {
        flags |= SMMU_DEVICEID_VALID;
    }
    let fixed = SmmuFixed {
        header: node_header(
            TYPE_SMMUV3,
            REV_SMMUV3,
            smmu_len(s),
            id,
            maps,
            size_of::<SmmuFixed>(),
        ),
        base: s.base.into(),
        flags: flags.into(),
        reserved: 0.into(),
        vatos: 0.into(),
        // 0: generic SMMUv3 (no model quirks).
        model: 0.into(),
        event: s.irqs.event.into(),
        pri: s.irqs.pri.into(),
        gerr: s.irqs.gerr.into(),
        sync: s.irqs.sync.into(),
        proximity_domain: 0.into(),
        deviceid_index: (if s.msi.is_some() {
            s.id_maps.len() as u32
        } else {
            0
        })
        .into(),
    };
    b.extend_from_slice(fixed.as_bytes());
    for m in &s.id_maps {
        b.extend_from_slice(id_map(m, layout, 0).as_bytes());
    }
    if let Some((group, device_id)) = s.msi {
        let own = IdMap {
            input_base: 0,
            count: 1,
            output_base: device_id,
            target: Target::ItsGroup(group),
        };
        b.extend_from_slice(id_map(&own, layout, ID_SINGLE_MAPPING).as_bytes());
    }
}

fn write_root_complex(b: &mut Vec<u8>, rc: &RootComplex, id: u32, layout: &Layout) {
    let len = size_of::<RootComplexFixed>() + ID_MAP_LEN * rc.id_maps.len();
    let fixed = RootComplexFixed {
        header: node_header(
            TYPE_ROOT_COMPLEX,
            REV_ROOT_COMPLEX,
            len,
            id,
            rc.id_maps.len(),
            size_of::<RootComplexFixed>(),
        ),
        // Memory access properties: CCA = 1 (fully coherent) with CPM and
        // DACS, as for a coherent device (DEN 0049 "Memory access
        // properties").
        cache_coherency: u32::from(rc.coherent).into(),
        allocation_hints: 0,
        reserved: 0.into(),
        memory_flags: if rc.coherent { RC_MEM_CPM_DACS } else { 0 },
        ats: (if rc.ats { RC_ATS_SUPPORTED } else { 0 }).into(),
        segment: rc.segment.into(),
        address_limit: rc.address_bits,
        pasid_caps: 0.into(),
        reserved1: 0,
        flags: 0.into(),
    };
    b.extend_from_slice(fixed.as_bytes());
    for m in &rc.id_maps {
        b.extend_from_slice(id_map(m, layout, 0).as_bytes());
    }
}

fn write_rmr(b: &mut Vec<u8>, r: &Rmr, id: u32, layout: &Layout) {
    let maps_at = size_of::<RmrFixed>();
    let mut flags = r.attributes.raw() << RMR_ATTR_SHIFT;
    if r.remap_permitted {
        flags |= RMR_REMAP_PERMITTED;
    }
    if r.privileged {
        flags |= RMR_PRIVILEGED;
    }
    let fixed = RmrFixed {
        header: node_header(TYPE_RMR, REV_RMR, rmr_len(r), id, r.streams.len(), maps_at),
        flags: flags.into(),
        range_count: (r.ranges.len() as u32).into(),
        range_offset: ((maps_at + ID_MAP_LEN * r.streams.len()) as u32).into(),
    };
    b.extend_from_slice(fixed.as_bytes());
    // Each stream range maps to itself on the SMMU: Linux takes the
    // StreamIDs from the output side (`iort_node_get_rmr_info`).
    for &(first, count) in &r.streams {
        let m = IdMap::identity(first, count, Target::Smmu(r.smmu));
        b.extend_from_slice(id_map(&m, layout, 0).as_bytes());
    }
    for &(base, length) in &r.ranges {
        let range = RangeWire {
            base: base.into(),
            length: length.into(),
            reserved: 0.into(),
        };
        b.extend_from_slice(range.as_bytes());
    }
}

#[cfg(test)]
mod tests;
