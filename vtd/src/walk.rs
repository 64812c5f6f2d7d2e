//! Page-table walks (VT-d 3.6 first-stage translation, 3.7 second-stage
//! translation, VT-d "Nested Translation"; entry formats
//! VT-d "First-Stage Paging Entries" and VT-d "Second-Stage Paging Entries").
//!
//! A walk returns an enum, never `Result`: guest tables are guest input,
//! and every outcome is architected. Walks are bounded by the level count
//! (at most five reads, plus at most five nested second-stage walks of
//! five reads each for a nested first-stage walk).

use crate::options::{SPS_1G, SPS_2M};
use nesting_core::bits::Field;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Gpa};
use vm_memory::GuestMemory;

use crate::fault::FaultReason;
use crate::tables::{EntryReader, PTR, above_haw};

/// Bits of the input address one level indexes: 9 per level above the
/// 12-bit page offset.
const LEVEL_BITS: u32 = 9;

/// The first input-address bit level `level` (1 = leaf page table)
/// indexes.
const fn level_shift(level: u32) -> u32 {
    12 + LEVEL_BITS * (level - 1)
}

/// Deepest table level of any walk (5-level paging).
const MAX_LEVELS: u32 = 5;

/// Per level (index = level; 0 unused): a walk's constants, computed once
/// at compile time so that the walk itself does no field arithmetic.
#[derive(Clone, Copy)]
struct LevelBits {
    /// The input-address bits that index a table of this level.
    index: Field,
    /// Output-address bits of a leaf of this level: bits 51:shift.
    output: u64,
    /// Address bits a leaf of this level covers above 4 KiB, bits
    /// (shift-1):12: reserved in a second-stage superpage entry.
    ss_superpage_low: u64,
    /// Bits (shift-1):13: reserved in a first-stage superpage entry (bit
    /// 12 is PAT).
    fs_superpage_low: u64,
}

const fn level_bits() -> [LevelBits; MAX_LEVELS as usize + 1] {
    let unused = LevelBits {
        index: Field::bit(0),
        output: 0,
        ss_superpage_low: 0,
        fs_superpage_low: 0,
    };
    let mut out = [unused; MAX_LEVELS as usize + 1];
    let mut level = 1;
    while level <= MAX_LEVELS {
        let shift = level_shift(level);
        out[level as usize] = LevelBits {
            index: Field::bits(shift + LEVEL_BITS - 1, shift),
            output: Field::bits(51, shift).mask(),
            ss_superpage_low: if level > 1 {
                Field::bits(shift - 1, 12).mask()
            } else {
                0
            },
            fs_superpage_low: if level > 1 {
                Field::bits(shift - 1, 13).mask()
            } else {
                0
            },
        };
        level += 1;
    }
    out
}

const LEVELS: [LevelBits; MAX_LEVELS as usize + 1] = level_bits();

/// The constants of `level` (1..=5; every walk loop is bounded by
/// [`MAX_LEVELS`]).
#[inline]
fn bits_of(level: u32) -> &'static LevelBits {
    &LEVELS[level.min(MAX_LEVELS) as usize]
}

/// Index of `iova` in a table of `level`.
#[inline]
fn level_index(iova: u64, level: u32) -> u64 {
    bits_of(level).index.get(iova)
}

/// A leaf: the page an input address falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Output address of the page's first byte.
    pub base: u64,
    /// log2 of the page size (12, 21 or 30).
    pub shift: u32,
    /// Permissions granted (READ/WRITE/EXEC).
    pub perms: Access,
}

impl Leaf {
    /// Output address of `iova`.
    pub fn output(&self, iova: u64) -> u64 {
        self.base | (iova & ((1u64 << self.shift) - 1))
    }
}

/// Second-stage entry bits (VT-d "Second-Stage Paging Entries").
pub mod sl {
    nesting_core::bitfield! {
        /// A second-stage paging entry.
        pub struct SsEntry(u64) in mod;
        /// Read.
        R [0]: bool => r, with_r;
        /// Write.
        W [1]: bool => w, with_w;
        /// Page size (leaf at level 2 or 3).
        PS [7]: bool => ps, with_ps;
        /// Snoop (reserved without ECAP.SC, which the model does not report).
        SNP [11]: bool => snp, with_snp;
        /// Address of the next-level table (or of the 4 KiB page), bits
        /// 51:12.
        ADDR [51:12]: address => addr, with_addr;
    }
}

/// Why a second-stage walk stopped; the caller maps it to the fault reason
/// of its mode (legacy, scalable, or a nested first-stage table fetch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsFault {
    /// Reading an entry failed.
    Access,
    /// An entry with R=W=0.
    NotPresent,
    /// A reserved bit is set in a present entry.
    Reserved,
    /// The translation does not grant the access.
    Permission,
}

/// Result of a second-stage walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SsWalk {
    /// Translated.
    Mapped(Leaf),
    /// Stopped.
    Fault(SsFault),
}

/// Parameters of a second-stage walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SsParams {
    /// Table root (SLPTPTR / SSPTPTR).
    pub root: u64,
    /// Levels, 3..=5.
    pub levels: u32,
    /// Host address width: output and table address bits above are
    /// reserved.
    pub haw: u32,
    /// CAP.SLLPS superpage bits.
    pub sps: u8,
}

/// Whether a present second-stage entry of `level` has a reserved bit set;
/// `rsvd` holds the bits reserved at every level ([`ss_reserved_bits`]).
fn sl_reserved(entry: u64, level: u32, p: &SsParams, rsvd: u64) -> bool {
    if sl::PS.is_set(entry) {
        let superpage_ok = match level {
            2 => p.sps & SPS_2M != 0,
            3 => p.sps & SPS_1G != 0,
            _ => false,
        };
        if !superpage_ok {
            return true;
        }
        // Address bits below the superpage size are reserved.
        return entry & (rsvd | bits_of(level).ss_superpage_low) != 0;
    }
    entry & rsvd != 0
}

/// The bits reserved in a second-stage entry of any level: address bits
/// above the host address width, and SNP.
fn ss_reserved_bits(p: &SsParams) -> u64 {
    above_haw(p.haw) | sl::SNP.mask()
}

/// Walks second-stage tables for `iova` (3.7). Permissions are the
/// intersection of R/W over all levels (3.7.1); `access` is checked
/// against them.
pub fn walk_second_stage<M: GuestMemory + ?Sized>(
    mem: &M,
    p: &SsParams,
    iova: u64,
    access: Access,
) -> SsWalk {
    walk_second_stage_in(&mut EntryReader::new(mem), p, iova, access)
}

/// [`walk_second_stage`] through a reader the caller's earlier reads
/// (root and context entries) went through.
pub fn walk_second_stage_in<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    p: &SsParams,
    iova: u64,
    access: Access,
) -> SsWalk {
    let mut table = p.root & PTR.mask();
    let mut perms = Access::READ | Access::WRITE;
    let rsvd = ss_reserved_bits(p);
    // Bounded: one read per level, levels <= 5.
    for level in (1..p.levels.min(MAX_LEVELS) + 1).rev() {
        let addr = table + 8 * level_index(iova, level);
        let Ok([entry]) = reader.qwords::<1>(addr) else {
            return SsWalk::Fault(SsFault::Access);
        };
        let (r, w) = (sl::R.is_set(entry), sl::W.is_set(entry));
        if !r && !w {
            return SsWalk::Fault(SsFault::NotPresent);
        }
        if sl_reserved(entry, level, p, rsvd) {
            return SsWalk::Fault(SsFault::Reserved);
        }
        if !r {
            perms.remove(Access::READ);
        }
        if !w {
            perms.remove(Access::WRITE);
        }
        if level == 1 || sl::PS.is_set(entry) {
            let leaf = Leaf {
                base: entry & bits_of(level).output,
                shift: level_shift(level),
                perms,
            };
            let needed = access & (Access::READ | Access::WRITE);
            if !perms.contains(needed) {
                return SsWalk::Fault(SsFault::Permission);
            }
            return SsWalk::Mapped(leaf);
        }
        table = sl::SsEntry(entry).addr();
    }
    SsWalk::Fault(SsFault::NotPresent)
}

/// First-stage entry bits (VT-d "First-Stage Paging Entries", the x86 paging format).
pub mod fl {
    nesting_core::bitfield! {
        /// A first-stage paging entry.
        pub struct FsEntry(u64) in mod;
        /// Present.
        P [0]: bool => p, with_p;
        /// Read/write.
        RW [1]: bool => rw, with_rw;
        /// User/supervisor.
        US [2]: bool => us, with_us;
        /// Accessed.
        A [5]: bool => a, with_a;
        /// Dirty (leaf).
        D [6]: bool => d, with_d;
        /// Page size.
        PS [7]: bool => ps, with_ps;
        /// Extended accessed (with PASID-entry EAFE).
        EA [10]: bool => ea, with_ea;
        /// Execute disable.
        XD [63]: bool => xd, with_xd;
        /// Address of the next-level table (or of the 4 KiB page), bits
        /// 51:12.
        ADDR [51:12]: address => addr, with_addr;
        /// The entry's two low bytes: every flag the accessed/dirty update
        /// sets (A, D, EA) lies in them.
        LOW_BYTES [15:0]: u16 => low_bytes;
    }
}

/// Parameters of a first-stage walk, from the PASID entry (9.6) and the
/// unit's capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsParams {
    /// FSPTPTR.
    pub root: u64,
    /// 4 or 5.
    pub levels: u32,
    /// Host address width.
    pub haw: u32,
    /// CAP.FS1GP.
    pub fs1gp: bool,
    /// PASID entry WPE.
    pub wpe: bool,
    /// PASID entry EAFE.
    pub eafe: bool,
}

/// How first-stage table addresses reach guest memory: directly
/// (first-stage only) or through the second stage (nested, VT-d "Nested Translation").
pub trait TableAccess {
    /// The guest physical address of a first-stage table location, for a
    /// read (`write` false) or an accessed/dirty update; `root` says the
    /// location is in the top-level table.
    fn table_gpa(&mut self, addr: u64, write: bool, root: bool) -> Result<u64, FaultReason>;
}

/// First-stage tables addressed directly in guest physical memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

impl TableAccess for Direct {
    fn table_gpa(&mut self, addr: u64, _write: bool, _root: bool) -> Result<u64, FaultReason> {
        Ok(addr)
    }
}

/// Result of a first-stage walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsWalk {
    /// Translated; the output is a GPA (first-stage only) or an address
    /// the second stage translates next (nested).
    Mapped(Leaf),
    /// Stopped with this fault.
    Fault(FaultReason),
}

/// Whether `iova` is canonical for a `levels`-level first-stage table
/// (3.6: bits 63:48 resp. 63:57 equal bit 47 resp. 56).
pub fn canonical(iova: u64, levels: u32) -> bool {
    let upper = match levels {
        4 => CANONICAL_UPPER_4,
        5 => CANONICAL_UPPER_5,
        _ => canonical_upper(levels),
    };
    let bits = upper.get(iova);
    bits == 0 || bits == upper.max()
}

/// The input-address bits above what a `levels`-level first-stage table
/// translates: bits 63:48 (4-level) or 63:57 (5-level).
const fn canonical_upper(levels: u32) -> Field {
    Field::bits(63, level_shift(levels) + LEVEL_BITS - 1)
}

const CANONICAL_UPPER_4: Field = canonical_upper(4);
const CANONICAL_UPPER_5: Field = canonical_upper(5);

/// Whether a present first-stage entry of `level` has a reserved bit set;
/// `rsvd` holds the bits reserved at every level (address bits above the
/// host address width).
fn fl_reserved(entry: u64, level: u32, p: &FsParams, rsvd: u64) -> bool {
    if fl::PS.is_set(entry) && level > 1 {
        let ok = level == 2 || (level == 3 && p.fs1gp);
        if !ok {
            return true;
        }
        // Bit 12 is PAT; bits (shift-1):13 are reserved.
        return entry & (rsvd | bits_of(level).fs_superpage_low) != 0;
    }
    entry & rsvd != 0
}

/// The entries a successful walk visited, for A/D updates.
struct Visited {
    addrs: [u64; 5],
    entries: [u64; 5],
    n: usize,
    /// The accessed flags ([`accessed_flags`]) missing from some visited
    /// entry: when none is, and a write finds D set in the leaf, there is
    /// nothing to update.
    missing: u64,
}

/// The flags a walk sets in every entry it uses: A, and EA with EAFE.
fn accessed_flags(p: &FsParams) -> u64 {
    let mut want = fl::A.mask();
    if p.eafe {
        want |= fl::EA.mask();
    }
    want
}

/// Walks first-stage tables for `iova` (3.6) and checks the access (VT-d 3.6
/// "First-Stage Translation", access rights): user requests need U/S=1 at every
/// level, writes need R/W=1 at every level unless a supervisor request with
/// WPE=0, execute needs XD=0 at every level. On success the accessed flags (and
/// the dirty flag of the leaf for writes) are set (VT-d 3.6 "First-Stage
/// Translation", accessed/dirty flags).
pub fn walk_first_stage<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    tables: &mut T,
    p: &FsParams,
    iova: u64,
    access: Access,
) -> FsWalk {
    walk_first_stage_in(&mut EntryReader::new(mem), tables, p, iova, access)
}

/// [`walk_first_stage`] through a reader the caller's earlier reads
/// (root, context and PASID entries) went through.
pub fn walk_first_stage_in<M: GuestMemory + ?Sized, T: TableAccess>(
    reader: &mut EntryReader<'_, M>,
    tables: &mut T,
    p: &FsParams,
    iova: u64,
    access: Access,
) -> FsWalk {
    let mem = reader.mem();
    if !canonical(iova, p.levels) {
        return FsWalk::Fault(FaultReason::FsNonCanonical);
    }
    let mut v = Visited {
        addrs: [0; 5],
        entries: [0; 5],
        n: 0,
        missing: 0,
    };
    let (mut rw, mut us, mut xd) = (true, true, false);
    let mut table = p.root & PTR.mask();
    let rsvd = above_haw(p.haw);
    let accessed = accessed_flags(p);
    for level in (1..p.levels.min(MAX_LEVELS) + 1).rev() {
        let root = level == p.levels;
        let entry_addr = table + 8 * level_index(iova, level);
        let addr = match tables.table_gpa(entry_addr, false, root) {
            Ok(a) => a,
            Err(r) => return FsWalk::Fault(r),
        };
        let Ok([entry]) = reader.qwords::<1>(addr) else {
            let r = if root {
                FaultReason::FsRootAccess
            } else {
                FaultReason::FsEntryAccess
            };
            return FsWalk::Fault(r);
        };
        if !fl::P.is_set(entry) {
            return FsWalk::Fault(FaultReason::FsEntryNotPresent);
        }
        if fl_reserved(entry, level, p, rsvd) {
            return FsWalk::Fault(FaultReason::FsEntryReserved);
        }
        if let (Some(a), Some(e)) = (v.addrs.get_mut(v.n), v.entries.get_mut(v.n)) {
            *a = entry_addr;
            *e = entry;
            v.n += 1;
            v.missing |= accessed & !entry;
        }
        rw &= fl::RW.is_set(entry);
        us &= fl::US.is_set(entry);
        xd |= fl::XD.is_set(entry);
        if level == 1 || fl::PS.is_set(entry) {
            let shift = level_shift(level);
            let base = entry & bits_of(level).output;
            return finish_first_stage(mem, tables, p, &v, (rw, us, xd), base, shift, access);
        }
        table = fl::FsEntry(entry).addr();
    }
    FsWalk::Fault(FaultReason::FsEntryNotPresent)
}

#[allow(clippy::too_many_arguments)]
fn finish_first_stage<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    tables: &mut T,
    p: &FsParams,
    v: &Visited,
    (rw, us, xd): (bool, bool, bool),
    base: u64,
    shift: u32,
    access: Access,
) -> FsWalk {
    let user = !access.contains(Access::PRIV);
    // VT-d 3.6 "First-Stage Translation", access rights: user-mode requests
    // need U/S=1 in every paging entry.
    if user && !us {
        return FsWalk::Fault(FaultReason::FsUserSupervisor);
    }
    // VT-d 3.6 "First-Stage Translation", access rights: writes need R/W=1 in
    // every entry; supervisor writes ignore R/W unless WPE=1.
    let writable = rw || (!user && !p.wpe);
    if access.contains(Access::WRITE) && !writable {
        return FsWalk::Fault(FaultReason::SmWrite);
    }
    // VT-d 3.6 "First-Stage Translation", access rights: execute requests fault
    // if XD=1 in any entry.
    if access.contains(Access::EXEC) && xd {
        return FsWalk::Fault(FaultReason::FsExecute);
    }
    if let Err(r) = update_accessed_dirty(mem, tables, p, v, access.contains(Access::WRITE)) {
        return FsWalk::Fault(r);
    }
    let mut perms = Access::READ;
    if writable {
        perms |= Access::WRITE;
    }
    if !xd {
        perms |= Access::EXEC;
    }
    FsWalk::Mapped(Leaf { base, shift, perms })
}

/// VT-d 3.6 "First-Stage Translation", accessed/dirty flags: the accessed flag
/// of every entry used, the extended accessed flag with EAFE, and the dirty
/// flag of the leaf on writes. Only bits 5, 6 and 10 change, so the update
/// writes the entry's two low bytes: a guest CPU editing the address or high
/// flags concurrently is not overwritten (hardware uses a locked operation;
/// vm-memory offers none).
fn update_accessed_dirty<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    tables: &mut T,
    p: &FsParams,
    v: &Visited,
    write: bool,
) -> Result<(), FaultReason> {
    let leaf_dirty =
        v.n.checked_sub(1)
            .and_then(|i| v.entries.get(i))
            .is_some_and(|leaf| fl::D.is_set(*leaf));
    if v.missing == 0 && (!write || leaf_dirty) {
        return Ok(());
    }
    for i in 0..v.n {
        let (Some(addr), Some(entry)) = (v.addrs.get(i), v.entries.get(i)) else {
            break;
        };
        let mut want = accessed_flags(p);
        if write && i + 1 == v.n {
            want |= fl::D.mask();
        }
        if entry & want == want {
            continue;
        }
        let gpa = tables.table_gpa(*addr, true, i == 0)?;
        let low = fl::FsEntry(entry | want).low_bytes();
        mem.write_u16_le(Gpa(gpa), low)
            .map_err(|_| FaultReason::FsEntryAccess)?;
    }
    Ok(())
}
