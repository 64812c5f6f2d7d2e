//! The ACPI DMAR table (DMA Remapping Reporting, VT-d chapter 8 "BIOS
//! Considerations") that tells the guest where its VT-d units are and which
//! devices each translates.
//!
//! A VMM describes the platform in a [`Dmar`] and gets either the whole
//! table ([`Dmar::sdt`], an `acpi_tables` [`Sdt`] with header and
//! checksum, for its own firmware tables) or the part after the 36-byte
//! header ([`Dmar::body`], what QEMU's `-acpitable
//! sig=DMAR,rev=1,data=FILE` takes: QEMU writes the header itself).
//!
//! ```
//! use nesting_core::types::Bdf;
//! use vtd::acpi::{Dmar, Drhd};
//!
//! // One unit whose registers (the 4 KiB page the model's MMIO serves)
//! // sit at 0xfed9_0000, translating two devices on bus 0. The host
//! // address width is the unit's `aw` (48 by default).
//! let mut dmar = Dmar::new(48);
//! dmar.drhds.push(Drhd::for_devices(0xfed9_0000, 0, &[Bdf::new(0, 5, 0), Bdf::new(0, 6, 0)]));
//! let table = dmar.sdt(*b"VIOMMU", *b"VIOMMUGT", 1).unwrap();
//! assert_eq!(&table.as_slice()[..4], b"DMAR");
//! assert_eq!(table.as_slice().iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
//! assert_eq!(dmar.body().unwrap(), table.as_slice()[36..]);
//! ```
//!
//! `acpi_tables` (rust-vmm) has the table header, the checksum and the
//! [`Sdt`] a VMM hands to its firmware builder, but no DMAR structures; they
//! are `#[repr(C)]` little-endian structs here, laid out as chapter 8 and
//! Linux's `include/acpi/actbl1.h` define them, each with a size check.
//! Everything is checked before a byte is written: a VMM's mistake (a
//! misaligned RMRR, a path that names device 32) is a [`DmarError`], not a
//! table Linux rejects or misreads at boot.

use acpi_tables::sdt::Sdt;
use bitflags::bitflags;
use nesting_core::types::Bdf;
use thiserror::Error;
use zerocopy::little_endian::{U16 as Le16, U64 as Le64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The table's signature (VT-d 8.1).
pub const DMAR_SIGNATURE: [u8; 4] = *b"DMAR";
/// The table's revision (VT-d 8.1: 1).
pub const DMAR_REVISION: u8 = 1;
/// Length of the standard ACPI table header that precedes the body.
pub const ACPI_HEADER_LEN: usize = 36;

/// Narrowest host address width a table may announce. Below 12 bits there
/// is not one 4 KiB page to translate to, and Linux refuses such a table
/// (`parse_dmar_table`: "Invalid DMAR haw" when the field is below
/// `PAGE_SHIFT - 1`).
pub const MIN_HOST_ADDRESS_WIDTH: u8 = 12;
/// Longest PCI path of a device scope: its length is one byte, 6 bytes of
/// header and 2 per path entry (VT-d 8.3.1).
pub const MAX_PATH_ENTRIES: usize = (u8::MAX as usize - SCOPE_LEN) / PATH_ENTRY_LEN;
/// Largest register-set size exponent: DRHD Size bits 3:0 (VT-d 8.3).
pub const MAX_REGISTER_SET_SIZE: u8 = 0xf;

/// VT-d 4 KiB page: RMRR bounds are page-aligned (VT-d 8.4).
const PAGE_SIZE: u64 = 0x1000;

bitflags! {
    /// DMAR Flags (VT-d 8.1).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DmarFlags: u8 {
        /// INTR_REMAP: the platform supports interrupt remapping.
        const INTR_REMAP = 1 << 0;
        /// X2APIC_OPT_OUT: firmware asks the OS not to enable x2APIC mode.
        const X2APIC_OPT_OUT = 1 << 1;
        /// DMA_CTRL_PLATFORM_OPT_IN_FLAG: firmware asks the OS to keep DMA
        /// remapping on (Linux `dmar_platform_optin`).
        const DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
    }

    /// DRHD Flags (VT-d 8.3).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DrhdFlags: u8 {
        /// INCLUDE_PCI_ALL: the unit translates every PCI device of its
        /// segment that no other unit names.
        const INCLUDE_PCI_ALL = 1 << 0;
    }

    /// ATSR Flags (VT-d 8.5).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct AtsrFlags: u8 {
        /// ALL_PORTS: every root port of the segment supports ATS.
        const ALL_PORTS = 1 << 0;
    }

    /// SATC Flags (VT-d 8.8).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SatcFlags: u8 {
        /// ATC_REQUIRED: the devices must have their ATC enabled to work.
        const ATC_REQUIRED = 1 << 0;
    }
}

/// What a device scope names (VT-d 8.3.1, Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeKind {
    /// 1: a PCI endpoint device.
    PciEndpoint,
    /// 2: a PCI-PCI bridge and everything behind it.
    PciSubHierarchy,
    /// 3: an I/O APIC (enumeration ID: its APIC ID).
    IoApic,
    /// 4: an MSI-capable HPET (enumeration ID: its HPET number).
    MsiCapableHpet,
    /// 5: an ACPI namespace device (enumeration ID: its ANDD number).
    AcpiNamespaceDevice,
}

impl ScopeKind {
    fn raw(self) -> u8 {
        match self {
            ScopeKind::PciEndpoint => 1,
            ScopeKind::PciSubHierarchy => 2,
            ScopeKind::IoApic => 3,
            ScopeKind::MsiCapableHpet => 4,
            ScopeKind::AcpiNamespaceDevice => 5,
        }
    }
}

/// One hop of a device scope's path: a device and function on the bus
/// the previous hop (or the start bus) leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciPathEntry {
    /// Device number, 0 to 31.
    pub device: u8,
    /// Function number, 0 to 7.
    pub function: u8,
}

/// A Device Scope structure (VT-d 8.3.1): a device, or a hierarchy, that
/// the structure it is part of applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceScope {
    /// What the scope names.
    pub kind: ScopeKind,
    /// The I/O APIC ID, HPET number or ANDD number; 0 for PCI devices.
    pub enumeration_id: u8,
    /// The bus the path starts on.
    pub start_bus: u8,
    /// The path from the start bus down to the device: one entry for a
    /// device on the start bus, one more per bridge crossed.
    pub path: Vec<PciPathEntry>,
}

impl DeviceScope {
    /// A PCI endpoint at `bdf`, reached directly on its bus.
    pub fn pci_endpoint(bdf: Bdf) -> Self {
        Self::on_bus(ScopeKind::PciEndpoint, bdf)
    }

    /// A PCI-PCI bridge at `bdf` and every device behind it.
    pub fn pci_sub_hierarchy(bdf: Bdf) -> Self {
        Self::on_bus(ScopeKind::PciSubHierarchy, bdf)
    }

    fn on_bus(kind: ScopeKind, bdf: Bdf) -> Self {
        DeviceScope {
            kind,
            enumeration_id: 0,
            start_bus: bdf.bus(),
            path: vec![PciPathEntry {
                device: bdf.dev(),
                function: bdf.func(),
            }],
        }
    }
}

/// A DMA Remapping Hardware Unit Definition (DRHD, VT-d 8.3): one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drhd {
    /// INCLUDE_PCI_ALL.
    pub flags: DrhdFlags,
    /// Size of the register set: 2^`size` 4 KiB pages (0: one page, what
    /// the model serves).
    pub size: u8,
    /// PCI segment of the unit and its devices.
    pub segment: u16,
    /// Register Base Address: where the unit's registers are mapped.
    pub base: u64,
    /// The devices the unit translates (without INCLUDE_PCI_ALL), or the
    /// I/O APICs and HPETs of its segment (with it).
    pub scopes: Vec<DeviceScope>,
}

impl Drhd {
    /// A unit at `base` translating exactly `devices` (PCI endpoints of
    /// `segment`).
    pub fn for_devices(base: u64, segment: u16, devices: &[Bdf]) -> Self {
        Drhd {
            segment,
            base,
            scopes: devices
                .iter()
                .map(|&b| DeviceScope::pci_endpoint(b))
                .collect(),
            ..Drhd::default()
        }
    }

    /// A unit at `base` translating every PCI device of `segment` that no
    /// other unit names.
    pub fn include_all(base: u64, segment: u16) -> Self {
        Drhd {
            flags: DrhdFlags::INCLUDE_PCI_ALL,
            segment,
            base,
            ..Drhd::default()
        }
    }
}

/// A Reserved Memory Region Reporting structure (RMRR, VT-d 8.4): memory
/// the named devices may DMA to at any time, which the OS keeps mapped
/// one-to-one for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// PCI segment of the devices.
    pub segment: u16,
    /// First byte, 4 KiB aligned.
    pub base: u64,
    /// Last byte (inclusive); `limit + 1` is 4 KiB aligned.
    pub limit: u64,
    /// The devices that use the region.
    pub scopes: Vec<DeviceScope>,
}

/// A Root Port ATS Capability Reporting structure (ATSR, VT-d 8.5): which
/// root ports support ATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Atsr {
    /// ALL_PORTS.
    pub flags: AtsrFlags,
    /// PCI segment.
    pub segment: u16,
    /// The root ports (PCI sub-hierarchies), without ALL_PORTS.
    pub scopes: Vec<DeviceScope>,
}

/// An SoC Integrated Address Translation Cache Reporting structure (SATC,
/// VT-d 8.8): integrated devices with an ATC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Satc {
    /// ATC_REQUIRED.
    pub flags: SatcFlags,
    /// PCI segment.
    pub segment: u16,
    /// The devices.
    pub scopes: Vec<DeviceScope>,
}

/// The DMA Remapping Reporting table (VT-d 8.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// Host Address Width in bits (the table holds it minus one): the
    /// platform's DMA addressability, the model's `aw`.
    pub host_address_width: u8,
    /// INTR_REMAP, X2APIC_OPT_OUT, DMA_CTRL_PLATFORM_OPT_IN.
    pub flags: DmarFlags,
    /// The units. An INCLUDE_PCI_ALL unit comes after every other unit of
    /// its segment.
    pub drhds: Vec<Drhd>,
    /// Reserved memory regions.
    pub rmrrs: Vec<Rmrr>,
    /// Root-port ATS capabilities.
    pub atsrs: Vec<Atsr>,
    /// Integrated devices with an ATC.
    pub satcs: Vec<Satc>,
}

/// A [`Dmar`] that cannot be written as a valid table.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DmarError {
    /// The host address width is outside 12..=64 bits.
    #[error("host address width {bits} is outside {MIN_HOST_ADDRESS_WIDTH}..=64 bits")]
    HostAddressWidth {
        /// The width given.
        bits: u8,
    },
    /// No DRHD: the table would describe no unit.
    #[error("a DMAR needs at least one DRHD")]
    NoUnit,
    /// A DRHD register-set size exponent wider than its 4 bits.
    #[error("DRHD at {base:#x}: register set size {size} does not fit bits 3:0")]
    RegisterSetSize {
        /// The unit's base.
        base: u64,
        /// The exponent given.
        size: u8,
    },
    /// An INCLUDE_PCI_ALL unit not last among its segment's units, or two.
    #[error("DRHD at {base:#x}: INCLUDE_PCI_ALL must be the last unit of segment {segment:#x}")]
    IncludeAllNotLast {
        /// The INCLUDE_PCI_ALL unit's base.
        base: u64,
        /// Its segment.
        segment: u16,
    },
    /// An RMRR whose bounds are not 4 KiB pages, or empty.
    #[error("RMRR {base:#x}..={limit:#x} is not a non-empty run of 4 KiB pages")]
    RmrrRange {
        /// First byte.
        base: u64,
        /// Last byte.
        limit: u64,
    },
    /// A device scope with no path.
    #[error("device scope with an empty path")]
    EmptyPath,
    /// A device scope whose path does not fit its one-byte length.
    #[error("device scope path of {len} entries is longer than {MAX_PATH_ENTRIES}")]
    PathTooLong {
        /// Entries given.
        len: usize,
    },
    /// A path entry with a device above 31 or a function above 7.
    #[error("path entry {device:#x}.{function:#x} is not a PCI device and function")]
    PathEntry {
        /// Device given.
        device: u8,
        /// Function given.
        function: u8,
    },
    /// A structure longer than its 16-bit length field.
    #[error("a DMAR structure of {len} bytes does not fit its 16-bit length")]
    StructureTooLong {
        /// Its length.
        len: usize,
    },
    /// A table longer than its 32-bit length field.
    #[error("a DMAR of {len} bytes does not fit its 32-bit length")]
    TableTooLong {
        /// Its length.
        len: usize,
    },
}

/// The fields between the header and the remapping structures (VT-d 8.1;
/// Linux `struct acpi_table_dmar` after its header).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct DmarFixed {
    /// Host Address Width, N-1.
    width: u8,
    flags: u8,
    reserved: [u8; 10],
}

/// Type and length, first in every remapping structure (VT-d 8.2; Linux
/// `struct acpi_dmar_header`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct RemapHeader {
    kind: Le16,
    length: Le16,
}

/// VT-d 8.3, before the device scopes (`struct acpi_dmar_hardware_unit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct DrhdFixed {
    header: RemapHeader,
    flags: u8,
    size: u8,
    segment: Le16,
    base: Le64,
}

/// VT-d 8.4, before the device scopes (`struct acpi_dmar_reserved_memory`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct RmrrFixed {
    header: RemapHeader,
    reserved: Le16,
    segment: Le16,
    base: Le64,
    limit: Le64,
}

/// VT-d 8.5 and 8.8, before the device scopes (`struct acpi_dmar_atsr`,
/// `struct acpi_dmar_satc`: the same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct SegmentFlagsFixed {
    header: RemapHeader,
    flags: u8,
    reserved: u8,
    segment: Le16,
}

/// VT-d 8.3.1, before the path (`struct acpi_dmar_device_scope`). The
/// byte after the length is Flags since VT-d 4.1 (reserved before); no
/// flag is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct ScopeFixed {
    kind: u8,
    length: u8,
    flags: u8,
    reserved: u8,
    enumeration_id: u8,
    start_bus: u8,
}

/// One path entry (`struct acpi_dmar_pci_path`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct PathWire {
    device: u8,
    function: u8,
}

const SCOPE_LEN: usize = size_of::<ScopeFixed>();
const PATH_ENTRY_LEN: usize = size_of::<PathWire>();
const _: () = assert!(size_of::<DmarFixed>() == 12);
const _: () = assert!(size_of::<RemapHeader>() == 4);
const _: () = assert!(size_of::<DrhdFixed>() == 16);
const _: () = assert!(size_of::<RmrrFixed>() == 24);
const _: () = assert!(size_of::<SegmentFlagsFixed>() == 8);
const _: () = assert!(SCOPE_LEN == 6);
const _: () = assert!(PATH_ENTRY_LEN == 2);

/// Remapping structure types (VT-d 8.2), in the order a table lists them.
const TYPE_DRHD: u16 = 0;
const TYPE_RMRR: u16 = 1;
const TYPE_ATSR: u16 = 2;
const TYPE_SATC: u16 = 5;

impl Dmar {
    /// A table with no structures yet, for a platform whose DMA reaches
    /// `host_address_width` bits.
    pub fn new(host_address_width: u8) -> Self {
        Dmar {
            host_address_width,
            flags: DmarFlags::empty(),
            drhds: Vec::new(),
            rmrrs: Vec::new(),
            atsrs: Vec::new(),
            satcs: Vec::new(),
        }
    }

    /// The whole table, header and checksum included.
    pub fn sdt(
        &self,
        oem_id: [u8; 6],
        oem_table_id: [u8; 8],
        oem_revision: u32,
    ) -> Result<Sdt, DmarError> {
        let body = self.body()?;
        let len = ACPI_HEADER_LEN + body.len();
        if u32::try_from(len).is_err() {
            return Err(DmarError::TableTooLong { len });
        }
        let mut sdt = Sdt::new(
            DMAR_SIGNATURE,
            ACPI_HEADER_LEN as u32,
            DMAR_REVISION,
            oem_id,
            oem_table_id,
            oem_revision,
        );
        sdt.append_slice(&body);
        Ok(sdt)
    }

    /// The table after its 36-byte header: Host Address Width, Flags, then
    /// the remapping structures in type order (VT-d 8.2: firmware reports
    /// the structure types in numerical order, every DRHD before the first
    /// RMRR and so on).
    pub fn body(&self) -> Result<Vec<u8>, DmarError> {
        self.check()?;
        let mut b = DmarFixed {
            width: self.host_address_width - 1,
            flags: self.flags.bits(),
            reserved: [0; 10],
        }
        .as_bytes()
        .to_vec();
        for d in &self.drhds {
            let fixed = DrhdFixed {
                header: header(TYPE_DRHD),
                flags: d.flags.bits(),
                size: d.size,
                segment: d.segment.into(),
                base: d.base.into(),
            };
            structure(&mut b, fixed, &d.scopes)?;
        }
        for r in &self.rmrrs {
            let fixed = RmrrFixed {
                header: header(TYPE_RMRR),
                reserved: 0.into(),
                segment: r.segment.into(),
                base: r.base.into(),
                limit: r.limit.into(),
            };
            structure(&mut b, fixed, &r.scopes)?;
        }
        for a in &self.atsrs {
            let fixed = segment_flags(TYPE_ATSR, a.flags.bits(), a.segment);
            structure(&mut b, fixed, &a.scopes)?;
        }
        for s in &self.satcs {
            let fixed = segment_flags(TYPE_SATC, s.flags.bits(), s.segment);
            structure(&mut b, fixed, &s.scopes)?;
        }
        Ok(b)
    }

    /// The rules of chapter 8 a table must keep, checked before writing.
    fn check(&self) -> Result<(), DmarError> {
        let bits = self.host_address_width;
        if !(MIN_HOST_ADDRESS_WIDTH..=64).contains(&bits) {
            return Err(DmarError::HostAddressWidth { bits });
        }
        if self.drhds.is_empty() {
            return Err(DmarError::NoUnit);
        }
        for (i, d) in self.drhds.iter().enumerate() {
            if d.size > MAX_REGISTER_SET_SIZE {
                return Err(DmarError::RegisterSetSize {
                    base: d.base,
                    size: d.size,
                });
            }
            // VT-d 8.3: a DRHD with INCLUDE_PCI_ALL is enumerated after
            // every other DRHD of its segment (so there is at most one).
            let later_same_segment = self.drhds[i + 1..].iter().any(|o| o.segment == d.segment);
            if d.flags.contains(DrhdFlags::INCLUDE_PCI_ALL) && later_same_segment {
                return Err(DmarError::IncludeAllNotLast {
                    base: d.base,
                    segment: d.segment,
                });
            }
        }
        // VT-d 8.4: the base is 4 KiB aligned, the limit above it and the
        // size (limit - base + 1) a multiple of 4 KiB; Linux's
        // rmrr_sanity_check flags any other RMRR as a firmware bug.
        for r in &self.rmrrs {
            let aligned = r.base % PAGE_SIZE == 0 && r.limit % PAGE_SIZE == PAGE_SIZE - 1;
            if !aligned || r.limit <= r.base {
                return Err(DmarError::RmrrRange {
                    base: r.base,
                    limit: r.limit,
                });
            }
        }
        Ok(())
    }
}

fn header(kind: u16) -> RemapHeader {
    RemapHeader {
        kind: kind.into(),
        length: 0.into(),
    }
}

fn segment_flags(kind: u16, flags: u8, segment: u16) -> SegmentFlagsFixed {
    SegmentFlagsFixed {
        header: header(kind),
        flags,
        reserved: 0,
        segment: segment.into(),
    }
}

/// Appends one remapping structure: its fixed part (whose header starts
/// it) and its device scopes, then fills in its length.
fn structure<T: IntoBytes + Immutable>(
    b: &mut Vec<u8>,
    fixed: T,
    scopes: &[DeviceScope],
) -> Result<(), DmarError> {
    let start = b.len();
    b.extend_from_slice(fixed.as_bytes());
    for s in scopes {
        device_scope(b, s)?;
    }
    let len = b.len() - start;
    let len16 = u16::try_from(len).map_err(|_| DmarError::StructureTooLong { len })?;
    // The length is the header's second field (VT-d 8.2).
    b[start + 2..start + 4].copy_from_slice(&len16.to_le_bytes());
    Ok(())
}

fn device_scope(b: &mut Vec<u8>, s: &DeviceScope) -> Result<(), DmarError> {
    let len = s.path.len();
    if len == 0 {
        return Err(DmarError::EmptyPath);
    }
    if len > MAX_PATH_ENTRIES {
        return Err(DmarError::PathTooLong { len });
    }
    let fixed = ScopeFixed {
        kind: s.kind.raw(),
        // Fits: MAX_PATH_ENTRIES keeps it within a byte.
        length: (SCOPE_LEN + PATH_ENTRY_LEN * len) as u8,
        flags: 0,
        reserved: 0,
        enumeration_id: s.enumeration_id,
        start_bus: s.start_bus,
    };
    b.extend_from_slice(fixed.as_bytes());
    for p in &s.path {
        if p.device > 31 || p.function > 7 {
            return Err(DmarError::PathEntry {
                device: p.device,
                function: p.function,
            });
        }
        let entry = PathWire {
            device: p.device,
            function: p.function,
        };
        b.extend_from_slice(entry.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
