//! Translation structure formats (VT-d chapter 9): root and context
//! entries of legacy and scalable mode, PASID directory and PASID table
//! entries. Each structure is read from guest memory as little-endian
//! quadwords and decoded through [`nesting_core::bitfield!`] accessors; decoding is total
//! (every bit pattern decodes, reserved values become `Unknown`).

use nesting_core::bits::{Field, FieldValue, Words};
use nesting_core::mem::{GuestMemoryExt, MemError};
use nesting_core::types::Gpa;
use vm_memory::bitmap::BS;
use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, VolatileMemory,
    VolatileSlice,
};
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

/// Reads `N` little-endian quadwords at `gpa` (one read; a walk reads
/// through an [`EntryReader`]).
pub fn read_qwords<M: GuestMemory + ?Sized, const N: usize>(
    mem: &M,
    gpa: u64,
) -> Result<[u64; N], MemError> {
    EntryReader::new(mem).qwords(gpa)
}

/// A guest memory region of `M` (when `M` is guest-physical memory).
type RegionOf<M> = <<M as GuestMemory>::PhysicalMemory as GuestMemoryBackend>::R;
/// The whole of such a region, for volatile access.
type RegionSlice<'m, M> = VolatileSlice<'m, BS<'m, <RegionOf<M> as GuestMemoryRegion>::B>>;

/// Reads the table entries of one walk. A walk's tables usually lie in
/// one guest memory region, so the reader keeps the region of its last
/// read: an entry is then a bounds check and one 8-byte read per
/// quadword (each quadword read whole, as the hardware reads it), instead
/// of a region lookup and a byte copy per entry. Anything else (a read
/// crossing regions, memory behind an IOMMU, an address outside guest
/// memory) takes the byte copy of [`GuestMemoryExt::read_bytes_at`],
/// which succeeds or fails exactly as a plain read does.
pub struct EntryReader<'m, M: GuestMemory + ?Sized> {
    mem: &'m M,
    /// The region of the last read: its first guest address and its slice.
    last: Option<(u64, RegionSlice<'m, M>)>,
}

impl<'m, M: GuestMemory + ?Sized> EntryReader<'m, M> {
    /// A reader of `mem`.
    pub fn new(mem: &'m M) -> Self {
        EntryReader { mem, last: None }
    }

    /// The memory read (for writes, and walks of their own).
    pub fn mem(&self) -> &'m M {
        self.mem
    }

    /// Reads `N` little-endian quadwords at `gpa`.
    #[inline]
    pub fn qwords<const N: usize>(&mut self, gpa: u64) -> Result<[u64; N], MemError> {
        if let Some(q) = self.load(gpa) {
            return Ok(q);
        }
        let mut wire = Qwords::<N>::new_zeroed();
        self.mem.read_bytes_at(Gpa(gpa), wire.as_mut_bytes())?;
        Ok(wire.get())
    }

    /// The loads, where they apply.
    #[inline]
    fn load<const N: usize>(&mut self, gpa: u64) -> Option<[u64; N]> {
        let size = size_of::<Qwords<N>>();
        let cached = |last: &Option<(u64, RegionSlice<'m, M>)>| {
            last.as_ref().and_then(|(start, slice)| {
                let off = usize::try_from(gpa.checked_sub(*start)?).ok()?;
                (off.checked_add(size)? <= slice.len()).then_some(off)
            })
        };
        let off = match cached(&self.last) {
            Some(off) => off,
            None => {
                self.last = self.region_of(gpa);
                cached(&self.last)?
            }
        };
        let (_, slice) = self.last.as_ref()?;
        let entries = slice.get_array_ref::<u64>(off, N).ok()?;
        let mut out = [0u64; N];
        for (i, q) in out.iter_mut().enumerate() {
            *q = u64::from_le(entries.load(i));
        }
        Some(out)
    }

    fn region_of(&self, gpa: u64) -> Option<(u64, RegionSlice<'m, M>)> {
        let region = self.mem.physical_memory()?.find_region(GuestAddress(gpa))?;
        let slice = region.as_volatile_slice().ok()?;
        Some((region.start_addr().raw_value(), slice))
    }
}

/// Bits `[51:haw]` of a table address: reserved when above the host
/// address width (VT-d chapter 9, every table entry format: "bits above HAW are reserved").
pub const fn above_haw(haw: u32) -> u64 {
    if haw >= 52 {
        0
    } else {
        ABOVE_HAW[haw as usize]
    }
}

/// Bits `[63:haw]` of a table pointer field (bits 63:12 of root,
/// context, PASID directory and PASID entries): reserved above the host
/// address width.
pub const fn ptr_above_haw(haw: u32) -> u64 {
    if haw >= 64 {
        0
    } else {
        PTR_ABOVE_HAW[haw as usize]
    }
}

/// `Field::bits(hi, haw).mask()` for every `haw <= hi`, computed at
/// compile time: the checks above run on every table walk.
const fn masks_from<const N: usize>(hi: u32) -> [u64; N] {
    let mut out = [0u64; N];
    let mut haw = 0;
    while haw < N {
        out[haw] = Field::bits(hi, haw as u32).mask();
        haw += 1;
    }
    out
}

const ABOVE_HAW: [u64; 52] = masks_from(51);
const PTR_ABOVE_HAW: [u64; 64] = masks_from(63);

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
    /// Reads the entry of `bus` in the root table at `rta`.
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, rta: u64, bus: u8) -> Result<Self, MemError> {
        Self::read_in(&mut EntryReader::new(mem), rta, bus)
    }

    /// [`RootEntry::read`] through a walk's reader.
    pub fn read_in<M: GuestMemory + ?Sized>(
        r: &mut EntryReader<'_, M>,
        rta: u64,
        bus: u8,
    ) -> Result<Self, MemError> {
        let [lo, hi] = r.qwords(rta + ROOT_ENTRY_SIZE * u64::from(bus))?;
        Ok(RootEntry { lo, hi })
    }

    /// The low half: the legacy entry (9.1), or the scalable entry's
    /// lower half (9.2).
    pub fn lower(&self) -> RootHalf {
        RootHalf(self.lo)
    }

    /// The half of a scalable-mode root entry that serves `devfn` (9.2:
    /// the lower half devfn 0..127, the upper half 128..255).
    pub fn half_for(&self, devfn: u8) -> RootHalf {
        RootHalf(if devfn < 128 { self.lo } else { self.hi })
    }
}

nesting_core::bitfield! {
    /// One half of a root entry: a legacy root entry's low half (9.1; its
    /// high half is reserved), or the lower or upper half of a scalable-mode
    /// root entry (9.2). The halves share one layout.
    pub struct RootHalf(u64);
    /// Present.
    P (P): bool => present;
    /// Context-table pointer.
    CTP (PTR): address => ctp;
    reserved [11:1];
}

impl RootHalf {
    /// Whether any reserved bit is set, context-table pointer bits above
    /// the host address width included.
    pub fn reserved(&self, haw: u32) -> bool {
        self.reserved_set() || self.0 & ptr_above_haw(haw) != 0
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

impl FieldValue for TranslationType {
    const BITS: u32 = 2;
    fn from_raw(raw: u64) -> Self {
        match u8::from_raw(raw) {
            0 => TranslationType::Untranslated,
            1 => TranslationType::DeviceTlb,
            2 => TranslationType::PassThrough,
            v => TranslationType::Unknown(v),
        }
    }
    fn into_raw(self) -> u64 {
        u64::from(match self {
            TranslationType::Untranslated => 0,
            TranslationType::DeviceTlb => 1,
            TranslationType::PassThrough => 2,
            TranslationType::Unknown(v) => v,
        })
    }
}

/// Legacy context entry (9.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextEntry {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl Words for ContextEntry {
    const LEN: usize = 2;
    fn word(&self, i: usize) -> u64 {
        match i {
            0 => self.lo,
            1 => self.hi,
            _ => 0,
        }
    }
    fn set_word(&mut self, i: usize, v: u64) {
        match i {
            0 => self.lo = v,
            1 => self.hi = v,
            _ => {}
        }
    }
}

nesting_core::bitfield! {
    impl ContextEntry;
    /// Present.
    P (P): bool => present;
    /// Fault processing disable.
    FPD (FPD): bool => fpd;
    /// Translation type, bits 3:2.
    TT [3:2]: TranslationType => tt, with_tt;
    /// Second-stage page-table pointer, bits 63:12.
    SLPTPTR (PTR): address => slptptr;
    /// Address width, bits 66:64.
    AW [66:64]: u8 => aw;
    /// Domain identifier, bits 87:72.
    DID [87:72]: u16 => did;
    reserved [11:4], [71], [127:88];
}

impl ContextEntry {
    /// Reads the entry of `devfn` in the context table at `ctp`.
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, ctp: u64, devfn: u8) -> Result<Self, MemError> {
        Self::read_in(&mut EntryReader::new(mem), ctp, devfn)
    }

    /// [`ContextEntry::read`] through a walk's reader.
    pub fn read_in<M: GuestMemory + ?Sized>(
        r: &mut EntryReader<'_, M>,
        ctp: u64,
        devfn: u8,
    ) -> Result<Self, MemError> {
        let [lo, hi] = r.qwords(ctp + CONTEXT_ENTRY_SIZE * u64::from(devfn))?;
        Ok(ContextEntry { lo, hi })
    }

    /// Whether any reserved bit is set, given the host address width.
    pub fn reserved(&self, haw: u32) -> bool {
        self.reserved_set() || self.lo & ptr_above_haw(haw) != 0
    }
}

/// Scalable-mode context entry (9.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmContextEntry {
    /// The four quadwords.
    pub q: [u64; 4],
}

nesting_core::bitfield! {
    impl SmContextEntry(q: [u64; 4]);
    /// Present.
    P (P): bool => present;
    /// Fault processing disable.
    FPD (FPD): bool => fpd;
    /// Device-TLB enable, bit 2.
    DTE [2]: bool => dte;
    /// PASID enable, bit 3.
    PASIDE [3]: bool => paside;
    /// Page request enable, bit 4.
    PRE [4]: bool => pre;
    /// PASID directory size: 2^(PDTS + 7) entries, bits 11:9.
    PDTS [11:9]: u8 => pdts;
    /// PASID directory pointer, bits 63:12.
    PASIDDIRPTR (PTR): address => pasid_dir;
    /// RID_PASID, bits 83:64.
    RID_PASID [83:64]: u32 => rid_pasid;
    /// RID_PRIV, bit 84.
    RID_PRIV [84]: bool => rid_priv;
    reserved [8:5], [127:85], [191:128], [255:192];
}

impl SmContextEntry {
    /// Reads the entry of `devfn` from the context table at `ctp` (the
    /// root entry's lower table holds devfn 0..127, the upper 128..255;
    /// both are indexed by devfn bits 6:0).
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, ctp: u64, devfn: u8) -> Result<Self, MemError> {
        Self::read_in(&mut EntryReader::new(mem), ctp, devfn)
    }

    /// [`SmContextEntry::read`] through a walk's reader.
    pub fn read_in<M: GuestMemory + ?Sized>(
        r: &mut EntryReader<'_, M>,
        ctp: u64,
        devfn: u8,
    ) -> Result<Self, MemError> {
        let idx = u64::from(devfn & 0x7f);
        let q = r.qwords(ctp + SM_CONTEXT_ENTRY_SIZE * idx)?;
        Ok(SmContextEntry { q })
    }

    /// Number of PASIDs the PASID directory covers.
    pub fn max_pasids(&self) -> u64 {
        (1u64 << (u32::from(self.pdts()) + 7)) * u64::from(PASIDS_PER_TABLE)
    }

    /// Whether any reserved bit is set.
    pub fn reserved(&self, haw: u32) -> bool {
        self.reserved_set() || self.q[0] & ptr_above_haw(haw) != 0
    }
}

nesting_core::bitfield! {
    /// PASID directory entry (9.5).
    pub struct PasidDirEntry(u64);
    /// Present.
    P (P): bool => present;
    /// Fault processing disable.
    FPD (FPD): bool => fpd;
    /// PASID table pointer, bits 63:12.
    PASIDPTR (PTR): address => pasid_table;
    reserved [11:2];
}

impl PasidDirEntry {
    /// Reads the directory entry for `pasid` (PASID bits 19:6 index it).
    pub fn read<M: GuestMemory + ?Sized>(mem: &M, dir: u64, pasid: u32) -> Result<Self, MemError> {
        Self::read_in(&mut EntryReader::new(mem), dir, pasid)
    }

    /// [`PasidDirEntry::read`] through a walk's reader.
    pub fn read_in<M: GuestMemory + ?Sized>(
        r: &mut EntryReader<'_, M>,
        dir: u64,
        pasid: u32,
    ) -> Result<Self, MemError> {
        let idx = u64::from(pasid / PASIDS_PER_TABLE);
        let [v] = r.qwords(dir + PASID_DIR_ENTRY_SIZE * idx)?;
        Ok(PasidDirEntry(v))
    }

    /// Whether any reserved bit is set, table pointer bits above the host
    /// address width included.
    pub fn reserved(&self, haw: u32) -> bool {
        self.reserved_set() || self.0 & ptr_above_haw(haw) != 0
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

impl FieldValue for Pgtt {
    const BITS: u32 = 3;
    fn from_raw(raw: u64) -> Self {
        match u8::from_raw(raw) {
            1 => Pgtt::FirstStage,
            2 => Pgtt::SecondStage,
            3 => Pgtt::Nested,
            4 => Pgtt::PassThrough,
            v => Pgtt::Unknown(v),
        }
    }
    fn into_raw(self) -> u64 {
        u64::from(match self {
            Pgtt::FirstStage => 1,
            Pgtt::SecondStage => 2,
            Pgtt::Nested => 3,
            Pgtt::PassThrough => 4,
            Pgtt::Unknown(v) => v,
        })
    }
}

/// Scalable-mode PASID table entry (9.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidEntry {
    /// The eight quadwords.
    pub q: [u64; 8],
}

nesting_core::bitfield! {
    impl PasidEntry(q: [u64; 8]);
    /// Present.
    P (P): bool => present;
    /// Fault processing disable.
    FPD (FPD): bool => fpd;
    /// Address width of the second-stage tables, bits 4:2.
    AW [4:2]: u8 => aw;
    /// PASID-granular translation type, bits 8:6.
    PGTT [8:6]: Pgtt => pgtt, with_pgtt;
    /// Second-stage A/D enable, bit 9 (needs ECAP.SSADS).
    SSADE [9]: bool => ssade;
    /// Second-stage table pointer, bits 63:12.
    SSPTPTR (PTR): address => ssptptr;
    /// Domain identifier, bits 79:64.
    DID [79:64]: u16 => did;
    /// Supervisor request enable, bit 128.
    SRE [128]: bool => sre;
    /// Execute request enable, bit 129.
    ERE [129]: bool => ere;
    /// First-stage paging mode (0: 4-level, 1: 5-level), bits 131:130.
    FSPM [131:130]: u8 => fspm;
    /// Write protect enable, bit 132.
    WPE [132]: bool => wpe;
    /// Extended accessed flag enable, bit 135.
    EAFE [135]: bool => eafe;
    /// First-stage table pointer, bits 191:140.
    FSPTPTR [191:140]: address => fsptptr;
    /// Bits 5, 11:10 and SSADE (reserved: the unit does not report
    /// ECAP.SSADS); 86:80; 139:136; quadwords 3 to 7.
    reserved [5], (Self::SSADE), [11:10], [86:80], [139:136],
        [255:192], [319:256], [383:320], [447:384], [511:448];
}

impl PasidEntry {
    /// Reads the entry for `pasid` from the PASID table at `table` (PASID
    /// bits 5:0 index it).
    pub fn read<M: GuestMemory + ?Sized>(
        mem: &M,
        table: u64,
        pasid: u32,
    ) -> Result<Self, MemError> {
        Self::read_in(&mut EntryReader::new(mem), table, pasid)
    }

    /// [`PasidEntry::read`] through a walk's reader.
    pub fn read_in<M: GuestMemory + ?Sized>(
        r: &mut EntryReader<'_, M>,
        table: u64,
        pasid: u32,
    ) -> Result<Self, MemError> {
        let idx = u64::from(pasid % PASIDS_PER_TABLE);
        let q = r.qwords(table + PASID_ENTRY_SIZE * idx)?;
        Ok(PasidEntry { q })
    }

    /// Whether any reserved bit is set, table pointer bits above the host
    /// address width included.
    pub fn reserved(&self, haw: u32) -> bool {
        self.reserved_set()
            || self.q[0] & ptr_above_haw(haw) != 0
            || self.q[2] & ptr_above_haw(haw) != 0
    }
}

/// The levels a context or PASID entry's AW field selects (9.3 AW: 1 =
/// 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level), if the unit's
/// CAP.SAGAW supports it.
pub fn aw_levels(aw: u8, sagaw: u64) -> Option<u32> {
    let levels = match aw {
        1 => 3,
        2 => 4,
        3 => 5,
        _ => return None,
    };
    (sagaw & (1 << aw) != 0).then_some(levels)
}
