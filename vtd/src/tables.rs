//! Translation structure formats (VT-d chapter 9): root and context
//! entries of legacy and scalable mode, PASID directory and PASID table
//! entries. Each structure is read from guest memory as little-endian
//! quadwords and decoded through [`Field`] constants; decoding is total
//! (every bit pattern decodes, reserved values become `Unknown`).

use nesting_core::bits::Field;
use nesting_core::mem::{GuestMemoryExt, MemError};
use nesting_core::types::Gpa;
use vm_memory::GuestMemory;
use zerocopy::little_endian::U64 as Le64;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// `N` little-endian quadwords as they lie in guest memory: the wire form
/// of every structure this module decodes (and of invalidation and page
/// request descriptors). Each structure's size is asserted below.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Qwords<const N: usize>(pub [Le64; N]);

impl<const N: usize> Qwords<N> {
    /// The quadwords as native integers.
    pub fn get(&self) -> [u64; N] {
        self.0.map(|q| q.get())
    }
}

/// Wire form of a root entry (9.1, 9.2).
pub type RootEntryWire = Qwords<2>;
/// Wire form of a legacy context entry (9.3).
pub type ContextEntryWire = Qwords<2>;
/// Wire form of a scalable-mode context entry (9.4).
pub type SmContextEntryWire = Qwords<4>;
/// Wire form of a PASID directory entry (9.5).
pub type PasidDirEntryWire = Qwords<1>;
/// Wire form of a PASID table entry (9.6).
pub type PasidEntryWire = Qwords<8>;
/// Wire form of a paging entry (VT-d "First-Stage Paging Entries", VT-d
/// "Second-Stage Paging Entries").
pub type PagingEntryWire = Qwords<1>;

const _: () = assert!(size_of::<RootEntryWire>() == ROOT_ENTRY_SIZE as usize);
const _: () = assert!(size_of::<ContextEntryWire>() == CONTEXT_ENTRY_SIZE as usize);
const _: () = assert!(size_of::<SmContextEntryWire>() == SM_CONTEXT_ENTRY_SIZE as usize);
const _: () = assert!(size_of::<PasidDirEntryWire>() == PASID_DIR_ENTRY_SIZE as usize);
const _: () = assert!(size_of::<PasidEntryWire>() == PASID_ENTRY_SIZE as usize);
const _: () = assert!(size_of::<PagingEntryWire>() == 8);

/// Reads `N` little-endian quadwords at `gpa`.
pub fn read_qwords<M: GuestMemory + ?Sized, const N: usize>(
    mem: &M,
    gpa: u64,
) -> Result<[u64; N], MemError> {
    let mut wire = Qwords::<N>::new_zeroed();
    mem.read_bytes_at(Gpa(gpa), wire.as_mut_bytes())?;
    Ok(wire.get())
}

/// Bits `[51:haw]` of a table address: reserved when above the host
/// address width (VT-d chapter 9, every table entry format: "bits above HAW are reserved").
pub const fn above_haw(haw: u32) -> u64 {
    if haw >= 52 {
        0
    } else {
        Field::bits(51, haw).mask()
    }
}

/// Bits `[63:haw]` of a table pointer field (bits 63:12 of root,
/// context, PASID directory and PASID entries): reserved above the host
/// address width.
pub const fn ptr_above_haw(haw: u32) -> u64 {
    if haw >= 64 {
        0
    } else {
        Field::bits(63, haw).mask()
    }
}

/// Size of a root entry (9.1, 9.2).
pub const ROOT_ENTRY_SIZE: u64 = 16;
/// Size of a legacy context entry (9.3).
pub const CONTEXT_ENTRY_SIZE: u64 = 16;
/// Size of a scalable-mode context entry (9.4).
pub const SM_CONTEXT_ENTRY_SIZE: u64 = 32;
/// Size of a PASID directory entry (9.5).
pub const PASID_DIR_ENTRY_SIZE: u64 = 8;
/// Size of a PASID table entry (9.6).
pub const PASID_ENTRY_SIZE: u64 = 64;
/// PASIDs per PASID table: PASID bits 5:0 index the table (9.6).
pub const PASIDS_PER_TABLE: u32 = 64;

/// Present bit, bit 0 of every entry.
pub const P: Field = Field::bit(0);
/// Fault processing disable, bit 1 of context, PASID directory and PASID
/// table entries.
pub const FPD: Field = Field::bit(1);
/// A 4 KiB-aligned table pointer, bits 63:12.
pub const PTR: Field = Field::bits(63, 12);

/// Root entry (9.1 legacy; 9.2 scalable: low half for devfn 0..127, high
/// half for devfn 128..255).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl RootEntry {
    /// Reserved bits of one half (the legacy high half is all reserved).
    pub const HALF_RESERVED: u64 = Field::bits(11, 1).mask();

    /// Reads the entry of `bus` in the root table at `rta`.
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, rta: u64, bus: u8) -> Result<Self, MemError> {
        let [lo, hi] = read_qwords::<M, 2>(mem, rta + ROOT_ENTRY_SIZE * u64::from(bus))?;
        Ok(RootEntry { lo, hi })
    }
}

/// Translation type of a legacy context entry (9.3 TT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslationType {
    /// 00: untranslated requests through the second-stage tables.
    Untranslated,
    /// 01: all requests, device-TLBs allowed.
    DeviceTlb,
    /// 10: pass-through (ECAP.PT).
    PassThrough,
    /// 11: reserved.
    Unknown(u8),
}

/// Legacy context entry (9.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl ContextEntry {
    /// Translation type, bits 3:2.
    pub const TT: Field = Field::bits(3, 2);
    /// Address width, bits 66:64 (hi 2:0).
    pub const AW: Field = Field::bits(2, 0);
    /// Domain identifier, bits 87:72 (hi 23:8).
    pub const DID: Field = Field::bits(23, 8);
    /// Reserved bits of the low quadword (11:4).
    pub const LO_RESERVED: u64 = Field::bits(11, 4).mask();
    /// Reserved bits of the high quadword (7 and 63:24).
    pub const HI_RESERVED: u64 = Field::bit(7).mask() | Field::bits(63, 24).mask();

    /// Reads the entry of `devfn` in the context table at `ctp`.
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, ctp: u64, devfn: u8) -> Result<Self, MemError> {
        let [lo, hi] = read_qwords::<M, 2>(mem, ctp + CONTEXT_ENTRY_SIZE * u64::from(devfn))?;
        Ok(ContextEntry { lo, hi })
    }

    /// The translation type.
    pub fn tt(&self) -> TranslationType {
        match Self::TT.get(self.lo) {
            0 => TranslationType::Untranslated,
            1 => TranslationType::DeviceTlb,
            2 => TranslationType::PassThrough,
            v => TranslationType::Unknown(v as u8),
        }
    }

    /// The domain identifier.
    pub fn did(&self) -> u16 {
        Self::DID.get(self.hi) as u16
    }

    /// Whether any reserved bit is set, given the host address width.
    pub fn reserved(&self, haw: u32) -> bool {
        self.lo & (Self::LO_RESERVED | ptr_above_haw(haw)) != 0 || self.hi & Self::HI_RESERVED != 0
    }
}

/// Scalable-mode context entry (9.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmContextEntry {
    /// The four quadwords.
    pub q: [u64; 4],
}

impl SmContextEntry {
    /// Device-TLB enable, bit 2.
    pub const DTE: Field = Field::bit(2);
    /// PASID enable, bit 3.
    pub const PASIDE: Field = Field::bit(3);
    /// Page request enable, bit 4.
    pub const PRE: Field = Field::bit(4);
    /// PASID directory size: 2^(PDTS + 7) entries, bits 11:9.
    pub const PDTS: Field = Field::bits(11, 9);
    /// RID_PASID, bits 83:64 (q1 19:0).
    pub const RID_PASID: Field = Field::bits(19, 0);
    /// RID_PRIV, bit 84 (q1 bit 20).
    pub const RID_PRIV: Field = Field::bit(20);
    /// Reserved bits of q0 (8:5).
    pub const Q0_RESERVED: u64 = Field::bits(8, 5).mask();
    /// Reserved bits of q1 (63:21).
    pub const Q1_RESERVED: u64 = Field::bits(63, 21).mask();

    /// Reads the entry of `devfn` from the context table at `ctp` (the
    /// root entry's lower table holds devfn 0..127, the upper 128..255;
    /// both are indexed by devfn bits 6:0).
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, ctp: u64, devfn: u8) -> Result<Self, MemError> {
        let idx = u64::from(devfn & 0x7f);
        let q = read_qwords::<M, 4>(mem, ctp + SM_CONTEXT_ENTRY_SIZE * idx)?;
        Ok(SmContextEntry { q })
    }

    /// Number of PASIDs the PASID directory covers.
    pub fn max_pasids(&self) -> u64 {
        (1u64 << (Self::PDTS.get(self.q[0]) + 7)) * u64::from(PASIDS_PER_TABLE)
    }

    /// Whether any reserved bit is set.
    pub fn reserved(&self, haw: u32) -> bool {
        self.q[0] & (Self::Q0_RESERVED | ptr_above_haw(haw)) != 0
            || self.q[1] & Self::Q1_RESERVED != 0
            || self.q[2] != 0
            || self.q[3] != 0
    }
}

/// PASID directory entry (9.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidDirEntry(pub u64);

impl PasidDirEntry {
    /// Reserved bits (11:2).
    pub const RESERVED: u64 = Field::bits(11, 2).mask();

    /// Reads the directory entry for `pasid` (PASID bits 19:6 index it).
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, dir: u64, pasid: u32) -> Result<Self, MemError> {
        let idx = u64::from(pasid / PASIDS_PER_TABLE);
        let [v] = read_qwords::<M, 1>(mem, dir + PASID_DIR_ENTRY_SIZE * idx)?;
        Ok(PasidDirEntry(v))
    }
}

/// PASID-granular translation type of a PASID table entry (9.6 PGTT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pgtt {
    /// 001: first-stage only.
    FirstStage,
    /// 010: second-stage only.
    SecondStage,
    /// 011: nested.
    Nested,
    /// 100: pass-through.
    PassThrough,
    /// Reserved values.
    Unknown(u8),
}

/// Scalable-mode PASID table entry (9.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidEntry {
    /// The eight quadwords.
    pub q: [u64; 8],
}

impl PasidEntry {
    /// q0: address width of the second-stage tables, bits 4:2.
    pub const AW: Field = Field::bits(4, 2);
    /// q0: PASID-granular translation type, bits 8:6.
    pub const PGTT: Field = Field::bits(8, 6);
    /// q0: second-stage A/D enable, bit 9 (needs ECAP.SSADS).
    pub const SSADE: Field = Field::bit(9);
    /// q1: domain identifier, bits 79:64.
    pub const DID: Field = Field::bits(15, 0);
    /// q2: supervisor request enable, bit 128.
    pub const SRE: Field = Field::bit(0);
    /// q2: execute request enable, bit 129.
    pub const ERE: Field = Field::bit(1);
    /// q2: first-stage paging mode (0: 4-level, 1: 5-level), bits 131:130.
    pub const FSPM: Field = Field::bits(3, 2);
    /// q2: write protect enable, bit 132.
    pub const WPE: Field = Field::bit(4);
    /// q2: extended accessed flag enable, bit 135.
    pub const EAFE: Field = Field::bit(7);
    /// Reserved bits of q0 (11:10, 5; 9 without ECAP.SSADS).
    pub const Q0_RESERVED: u64 =
        Field::bits(11, 10).mask() | Field::bit(9).mask() | Field::bit(5).mask();
    /// Reserved bits of q1 (22:16).
    pub const Q1_RESERVED: u64 = Field::bits(22, 16).mask();
    /// Reserved bits of q2 (11:8).
    pub const Q2_RESERVED: u64 = Field::bits(11, 8).mask();

    /// Reads the entry for `pasid` from the PASID table at `table` (PASID
    /// bits 5:0 index it).
    pub fn read<M: GuestMemory + ?Sized>(
        mem: &M,
        table: u64,
        pasid: u32,
    ) -> Result<Self, MemError> {
        let idx = u64::from(pasid % PASIDS_PER_TABLE);
        let q = read_qwords::<M, 8>(mem, table + PASID_ENTRY_SIZE * idx)?;
        Ok(PasidEntry { q })
    }

    /// The PASID-granular translation type.
    pub fn pgtt(&self) -> Pgtt {
        match Self::PGTT.get(self.q[0]) {
            1 => Pgtt::FirstStage,
            2 => Pgtt::SecondStage,
            3 => Pgtt::Nested,
            4 => Pgtt::PassThrough,
            v => Pgtt::Unknown(v as u8),
        }
    }

    /// Domain identifier.
    pub fn did(&self) -> u16 {
        Self::DID.get(self.q[1]) as u16
    }

    /// Second-stage table pointer.
    pub fn ssptptr(&self) -> u64 {
        PTR.mask() & self.q[0]
    }

    /// First-stage table pointer.
    pub fn fsptptr(&self) -> u64 {
        PTR.mask() & self.q[2]
    }

    /// Whether any reserved bit is set.
    pub fn reserved(&self, haw: u32) -> bool {
        let hi = self.q.get(3..).unwrap_or_default();
        self.q[0] & (Self::Q0_RESERVED | ptr_above_haw(haw)) != 0
            || self.q[1] & Self::Q1_RESERVED != 0
            || self.q[2] & (Self::Q2_RESERVED | ptr_above_haw(haw)) != 0
            || hi.iter().any(|q| *q != 0)
    }
}

/// The levels a context or PASID entry's AW field selects (9.3 AW: 1 =
/// 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level), if the unit's
/// CAP.SAGAW supports it.
pub fn aw_levels(aw: u64, sagaw: u64) -> Option<u32> {
    let levels = match aw {
        1 => 3,
        2 => 4,
        3 => 5,
        _ => return None,
    };
    (sagaw & (1 << aw) != 0).then_some(levels)
}
