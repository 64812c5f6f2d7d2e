//! AArch64 translation table walks, stage 1 and stage 2, for the 4 KiB,
//! 16 KiB and 64 KiB granules (IHI 0070 "Configuration and Translation lookup" and 5.4 defer the table
//! format to the Arm ARM's VMSAv8-64 translation system, chapter D8; the
//! SMMU-specific parts are the hardware updates of IHI 0070 "Translation table entries and Access/Dirty flags" and the
//! fault records of chapter 7).
//!
//! A walk returns [`Walk`], never `Result`: guest tables are guest input
//! and every outcome is architected. A walk reads at most four
//! descriptors (levels 0..=3) plus, for a nested stage 1, what the
//! [`TableAccess`] does per descriptor (one bounded stage-2 walk each),
//! and retries at most [`MAX_UPDATE_RETRIES`] times when a descriptor it
//! updates changes under it.

use nesting_core::types::Access;
use vm_memory::GuestMemory;

use crate::wire::{CasError, cas_u64, read_u64};

/// A translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB.
    G4K,
    /// 16 KiB.
    G16K,
    /// 64 KiB.
    G64K,
}

impl Granule {
    /// Every granule.
    pub const ALL: [Granule; 3] = [Granule::G4K, Granule::G16K, Granule::G64K];

    /// log2 of the granule size.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::G4K => 12,
            Granule::G16K => 14,
            Granule::G64K => 16,
        }
    }

    /// Input bits one level resolves.
    pub const fn stride(self) -> u32 {
        self.shift() - 3
    }

    /// The first input bit level `level` (0..=3) resolves.
    pub const fn level_shift(self, level: u32) -> u32 {
        self.shift() + self.stride() * (3 - level)
    }

    /// The TG0 / S2TG encoding (IHI 0070 5.4 CD.TG0, 5.2 STE.S2TG): 0b00
    /// 4 KiB, 0b01 64 KiB, 0b10 16 KiB, 0b11 reserved.
    pub const fn from_tg0(v: u8) -> Option<Granule> {
        match v {
            0 => Some(Granule::G4K),
            1 => Some(Granule::G64K),
            2 => Some(Granule::G16K),
            _ => None,
        }
    }

    /// The TG1 encoding (IHI 0070 5.4 CD.TG1): 0b01 16 KiB, 0b10 4 KiB,
    /// 0b11 64 KiB, 0b00 reserved.
    pub const fn from_tg1(v: u8) -> Option<Granule> {
        match v {
            1 => Some(Granule::G16K),
            2 => Some(Granule::G4K),
            3 => Some(Granule::G64K),
            _ => None,
        }
    }

    /// The TG0 encoding of this granule.
    pub const fn tg0(self) -> u8 {
        match self {
            Granule::G4K => 0,
            Granule::G64K => 1,
            Granule::G16K => 2,
        }
    }

    /// Arm ARM (block descriptors): 4 KiB granule blocks at levels 1
    /// and 2; 16 KiB at level 2; 64 KiB at level 2, and level 1 with
    /// 52-bit output addresses (`lpa`).
    pub const fn block_allowed(self, level: u32, lpa: bool) -> bool {
        match self {
            Granule::G4K => level == 1 || level == 2,
            Granule::G16K => level == 2,
            Granule::G64K => level == 2 || (level == 1 && lpa),
        }
    }

    /// log2 of the number of entries a contiguous hint groups at `level`
    /// (Arm ARM, "The Contiguous bit"): 16 with 4 KiB; 128 pages
    /// or 32 blocks with 16 KiB; 32 with 64 KiB.
    pub const fn contiguous_bits(self, level: u32) -> u32 {
        match (self, level) {
            (Granule::G4K, 1..=3) => 4,
            (Granule::G16K, 3) => 7,
            (Granule::G16K, 2) => 5,
            (Granule::G64K, 2..=3) => 5,
            _ => 0,
        }
    }
}

/// Which stage a table belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Stage 1 (context descriptor): VA to IPA (or PA).
    One,
    /// Stage 2 (stream table entry): IPA to PA.
    Two,
}

/// Everything a walk of one table needs, decoded and checked by the STE
/// and CD decoders ([`TableConfig::stage1`], [`TableConfig::stage2`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// The stage.
    pub stage: Stage,
    /// The granule.
    pub granule: Granule,
    /// Input address size in bits (64 - TxSZ).
    pub ia_bits: u32,
    /// Starting level, 0..=3.
    pub start_level: u32,
    /// Base of the starting table (an IPA for a nested stage 1).
    pub ttb: u64,
    /// Output address size in bits (effective IPS / S2PS).
    pub oa_bits: u32,
    /// Hardware access flag update (CD.HA / STE.S2HA with IDR0.HTTU).
    pub ha: bool,
    /// Hardware dirty state update (CD.HD / STE.S2HD with IDR0.HTTU=2).
    pub hd: bool,
    /// Access flag faults disabled (CD.AFFD / STE.S2AFFD).
    pub affd: bool,
    /// Stage 1: hierarchical attributes disabled (CD.HADx).
    pub had: bool,
    /// Stage 1: writable implies execute-never (CD.WXN).
    pub wxn: bool,
    /// Stage 2: stage-1 table walks to Device memory fault (STE.S2PTW).
    pub ptw: bool,
    /// 64 KiB level-1 blocks (52-bit output addresses implemented).
    pub lpa: bool,
}

/// Smallest TxSZ: 48-bit input addresses (IDR5.VAX = 0).
pub const MIN_TSZ: u32 = 16;
/// Largest TxSZ without small translation tables (IDR3.STT = 0).
pub const MAX_TSZ: u32 = 39;

impl TableConfig {
    /// A stage-1 table: the starting level follows from TxSZ and the
    /// granule (Arm ARM "the number of levels is the fewest that
    /// resolve the input address"). `None` if TxSZ is outside
    /// [`MIN_TSZ`]..=[`MAX_TSZ`].
    pub fn stage1(granule: Granule, tsz: u32, ttb: u64, oa_bits: u32) -> Option<TableConfig> {
        if !(MIN_TSZ..=MAX_TSZ).contains(&tsz) {
            return None;
        }
        let ia = 64 - tsz;
        let g = granule.shift();
        let levels = (ia - g).div_ceil(granule.stride());
        Some(TableConfig {
            stage: Stage::One,
            granule,
            ia_bits: ia,
            start_level: 4 - levels,
            ttb,
            oa_bits,
            ha: false,
            hd: false,
            affd: false,
            had: false,
            wxn: false,
            ptw: false,
            lpa: false,
        })
    }

    /// A stage-2 table (Arm ARM "concatenated translation tables";
    /// IHI 0070 5.2 STE.S2SL0): the starting level from SL0 and the
    /// granule, up to 16 concatenated tables at it. `None` when T0SZ is
    /// out of range or SL0 and T0SZ are inconsistent (C_BAD_STE).
    pub fn stage2(
        granule: Granule,
        t0sz: u32,
        sl0: u8,
        ttb: u64,
        oa_bits: u32,
    ) -> Option<TableConfig> {
        if !(MIN_TSZ..=MAX_TSZ).contains(&t0sz) {
            return None;
        }
        let ia = 64 - t0sz;
        let start: u32 = match (granule, sl0) {
            (Granule::G4K, 0) => 2,
            (Granule::G4K, 1) => 1,
            (Granule::G4K, 2) => 0,
            (Granule::G16K | Granule::G64K, 0) => 3,
            (Granule::G16K | Granule::G64K, 1) => 2,
            (Granule::G16K | Granule::G64K, 2) => 1,
            _ => return None,
        };
        let ls = granule.level_shift(start);
        // The starting level must resolve at least one bit and at most
        // what 16 concatenated tables hold.
        if ia <= ls || ia - ls > granule.stride() + 4 {
            return None;
        }
        Some(TableConfig {
            stage: Stage::Two,
            granule,
            ia_bits: ia,
            start_level: start,
            ttb,
            oa_bits,
            ha: false,
            hd: false,
            affd: false,
            had: false,
            wxn: false,
            ptw: false,
            lpa: false,
        })
    }

    /// Input bits the starting table resolves.
    pub fn start_bits(&self) -> u32 {
        self.ia_bits - self.granule.level_shift(self.start_level)
    }

    /// The starting table's base: TTB with the bits below the table's
    /// alignment (its size, at least 64 bytes) treated as zero.
    pub fn table_base(&self) -> u64 {
        let bytes = (8u64 << self.start_bits()).max(64);
        self.ttb & !(bytes - 1)
    }
}

/// Descriptor bits common to both stages (Arm ARM, translation table descriptor formats).
pub mod desc {
    nesting_core::bitfield! {
        /// A translation table descriptor.
        pub struct Desc(u64) in mod;
        /// Valid.
        VALID [0]: bool => valid, with_valid;
        /// Table (levels 0-2) or page (level 3); clear: block.
        TABLE [1]: bool => table, with_table;
        /// Stage 2 MemAttr[3:2]: 0b00 is Device memory.
        S2_MEMTYPE [5:4]: u8 => s2_memtype, with_s2_memtype;
        /// Stage 1 AP[1]: EL0 access; stage 2 S2AP[0]: read.
        AP1_S2R [6]: bool => ap1_s2r, with_ap1_s2r;
        /// Stage 1 AP[2]: read-only; stage 2 S2AP[1]: write.
        AP2_S2W [7]: bool => ap2_s2w, with_ap2_s2w;
        /// Access flag.
        AF [10]: bool => af, with_af;
        /// Stage 1: not global (ASID-tagged).
        NG [11]: bool => ng, with_ng;
        /// 64 KiB granule: output address bits 51:48.
        OA_HI [15:12]: u8 => oa_hi, with_oa_hi;
        /// Dirty bit modifier.
        DBM [51]: bool => dbm, with_dbm;
        /// Contiguous hint.
        CONTIG [52]: bool => contig, with_contig;
        /// Stage 1: privileged execute-never.
        PXN [53]: bool => pxn, with_pxn;
        /// Stage 1: unprivileged execute-never; stage 2: execute-never.
        XN [54]: bool => xn, with_xn;
        /// Table descriptor, stage 1: privileged execute-never for the
        /// levels below.
        PXN_TABLE [59]: bool => pxn_table, with_pxn_table;
        /// Table descriptor, stage 1: unprivileged execute-never below.
        UXN_TABLE [60]: bool => uxn_table, with_uxn_table;
        /// Table descriptor, stage 1: APTable[0], no EL0 access below.
        AP_TABLE_EL0 [61]: bool => ap_table_el0, with_ap_table_el0;
        /// Table descriptor, stage 1: APTable[1], no write below.
        AP_TABLE_RO [62]: bool => ap_table_ro, with_ap_table_ro;
    }
}

/// Output address of a descriptor whose address field starts at bit
/// `lsb` (Arm ARM, translation table descriptor formats): bits 47:lsb, plus bits 51:48 from descriptor
/// bits 15:12 with the 64 KiB granule. With 4 and 16 KiB granules bits
/// 49:48 (RES0 without FEAT_LPA2, which the model lacks) are taken as
/// address bits, so a descriptor setting them fails the address size
/// check; bits 50 and up are attributes (GP, DBM, ...).
pub fn descriptor_address(d: u64, g: Granule, lsb: u32) -> u64 {
    let from_lsb = !mask(lsb);
    match g {
        Granule::G64K => (d & mask(48) & from_lsb) | (u64::from(desc::Desc(d).oa_hi()) << 48),
        _ => d & mask(50) & from_lsb,
    }
}

/// What kind of fault a walk met (IHI 0070 "Event records", the translation-related
/// event records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// F_TRANSLATION: invalid descriptor or out-of-range input.
    Translation,
    /// F_ADDR_SIZE: an output or table address beyond the output size.
    AddressSize,
    /// F_ACCESS: access flag clear, no hardware update.
    AccessFlag,
    /// F_PERMISSION.
    Permission,
    /// F_WALK_EABT: a descriptor fetch or update missed guest memory.
    ExternalAbort {
        /// The physical address of the descriptor.
        fetch: u64,
    },
}

/// Why a stage-2 fault happened, for the event record's CLASS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Fetching a context descriptor (CLASS = CD).
    Cd,
    /// Fetching or updating a stage-1 table descriptor (CLASS = TT).
    Tt,
    /// Translating the transaction's own address (CLASS = IN).
    In,
}

/// A stage-2 fault's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Info {
    /// The IPA stage 2 was translating.
    pub ipa: u64,
    /// What the IPA was.
    pub class: FaultClass,
}

/// A fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFault {
    /// What.
    pub kind: FaultKind,
    /// At which level.
    pub level: u32,
    /// `Some` for a stage-2 fault.
    pub s2: Option<S2Info>,
}

/// A translated page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// Output address of the first byte of the `1 << shift` region.
    pub oa: u64,
    /// log2 of the region the translation holds for: the block or page,
    /// or the whole contiguous run when the contiguous hint is set.
    pub shift: u32,
    /// What the request's privilege may do through it now: READ, WRITE
    /// (only once dirty, so a later write of a writable-clean page walks
    /// again and updates dirty state) and EXEC.
    pub granted: Access,
    /// Stage 1: a global translation (nG = 0).
    pub global: bool,
}

impl Leaf {
    /// Output address of `addr`.
    pub fn output(&self, addr: u64) -> u64 {
        self.oa | (addr & mask(self.shift))
    }
}

/// The result of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Translated.
    Mapped(Leaf),
    /// Faulted.
    Fault(WalkFault),
}

/// How a walk reaches its table descriptors: directly (stage 2, or a
/// stage 1 without stage 2), or through stage 2 (a nested stage 1, whose
/// table addresses are IPAs).
pub trait TableAccess {
    /// The physical address of the descriptor at `addr`, for reading it
    /// or (`write`) updating it.
    fn resolve(&mut self, addr: u64, write: bool) -> Result<u64, WalkFault>;
}

/// Tables in physical memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Direct;

impl TableAccess for Direct {
    fn resolve(&mut self, addr: u64, _write: bool) -> Result<u64, WalkFault> {
        Ok(addr)
    }
}

/// How often a walk starts over when a descriptor it updates changed
/// under it (another agent is editing the tables); after that the access
/// faults with F_TRANSLATION rather than spin on guest input.
pub const MAX_UPDATE_RETRIES: u32 = 4;

/// The access a walk is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkReq {
    /// Input address (for stage 1, already checked against its region).
    pub addr: u64,
    /// READ / WRITE / EXEC, PRIV for a privileged request.
    pub access: Access,
    /// Stage 2 only: the access is a stage-1 table walk (STE.S2PTW).
    pub table_walk: bool,
}

const fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn fault(kind: FaultKind, level: u32, cfg: &TableConfig, addr: u64) -> Walk {
    let s2 = (cfg.stage == Stage::Two).then_some(S2Info {
        ipa: addr,
        class: FaultClass::In,
    });
    Walk::Fault(WalkFault { kind, level, s2 })
}

/// Walks `cfg`'s tables for `req`, updating the access flag and dirty
/// state as configured.
pub fn walk<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    cfg: &TableConfig,
    tables: &mut T,
    req: &WalkReq,
) -> Walk {
    // Arm ARM (translation table walk): a stage-2 input address beyond T0SZ's range is a
    // Translation fault at the starting level. (Stage 1 input ranges are
    // checked by the CD's region selection.)
    if cfg.stage == Stage::Two && req.addr >> cfg.ia_bits != 0 {
        return fault(FaultKind::Translation, cfg.start_level, cfg, req.addr);
    }
    // Arm ARM (translation table walk): a table base beyond the output size is an Address
    // size fault at level 0.
    if cfg.ttb >> cfg.oa_bits != 0 {
        return fault(FaultKind::AddressSize, 0, cfg, req.addr);
    }
    for _ in 0..MAX_UPDATE_RETRIES {
        match walk_once(mem, cfg, tables, req) {
            Attempt::Done(w) => return w,
            Attempt::Retry => continue,
        }
    }
    fault(FaultKind::Translation, 3, cfg, req.addr)
}

enum Attempt {
    Done(Walk),
    Retry,
}

/// The hierarchical stage-1 limits collected from table descriptors.
#[derive(Clone, Copy, Debug, Default)]
struct TableLimits {
    no_el0: bool,
    read_only: bool,
    uxn: bool,
    pxn: bool,
}

/// The leaf a walk found and where it lies.
#[derive(Clone, Copy, Debug)]
struct Found {
    desc: u64,
    at: u64,
    level: u32,
    limits: TableLimits,
}

fn walk_once<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    cfg: &TableConfig,
    tables: &mut T,
    req: &WalkReq,
) -> Attempt {
    let found = match find_leaf(mem, cfg, tables, req.addr) {
        Ok(f) => f,
        Err(w) => return Attempt::Done(w),
    };
    finish(mem, cfg, tables, req, &found)
}

/// Descends from the starting table to the leaf descriptor (Arm ARM,
/// "translation table walk"), at most four reads.
fn find_leaf<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    cfg: &TableConfig,
    tables: &mut T,
    addr: u64,
) -> Result<Found, Walk> {
    let g = cfg.granule;
    let mut table = cfg.table_base();
    let mut limits = TableLimits::default();
    let mut level = cfg.start_level;
    let mut bits = cfg.start_bits();
    while level <= 3 {
        let index = (addr >> g.level_shift(level)) & mask(bits);
        let at = table + 8 * index;
        let pa = tables.resolve(at, false).map_err(Walk::Fault)?;
        let Some(d) = read_u64(mem, pa) else {
            return Err(fault(
                FaultKind::ExternalAbort { fetch: pa },
                level,
                cfg,
                addr,
            ));
        };
        let e = desc::Desc(d);
        if !e.valid() {
            return Err(fault(FaultKind::Translation, level, cfg, addr));
        }
        let leaf = if level == 3 {
            // Level 3: only pages; 0b01 is reserved, hence invalid.
            if !e.table() {
                return Err(fault(FaultKind::Translation, level, cfg, addr));
            }
            true
        } else if !e.table() {
            if !g.block_allowed(level, cfg.lpa) {
                return Err(fault(FaultKind::Translation, level, cfg, addr));
            }
            true
        } else {
            false
        };
        if leaf {
            return Ok(Found {
                desc: d,
                at,
                level,
                limits,
            });
        }
        let next = descriptor_address(d, g, g.shift());
        if next >> cfg.oa_bits != 0 {
            return Err(fault(FaultKind::AddressSize, level, cfg, addr));
        }
        if cfg.stage == Stage::One && !cfg.had {
            limits.no_el0 |= e.ap_table_el0();
            limits.read_only |= e.ap_table_ro();
            limits.uxn |= e.uxn_table();
            limits.pxn |= e.pxn_table();
        }
        table = next;
        level += 1;
        bits = g.stride();
    }
    Err(fault(FaultKind::Translation, 3, cfg, addr))
}

/// The permissions a leaf gives the request's privilege.
#[derive(Clone, Copy, Debug)]
struct Perms {
    read: bool,
    /// Writable now (dirty, or no dirty tracking).
    write_now: bool,
    /// Writable once dirty state is updated (writable-clean with HD).
    write_clean: bool,
    exec: bool,
}

/// Stage-1 permissions (Arm ARM "Memory access control": AP[2:1],
/// APTable, UXN/PXN and their table forms, WXN, and the implicit PXN of
/// EL0-writable memory; dirty state with DBM).
fn stage1_perms(cfg: &TableConfig, e: desc::Desc, l: TableLimits, privileged: bool) -> Perms {
    let el0 = e.ap1_s2r() && !l.no_el0;
    let reachable = privileged || el0;
    let dirty_ok = cfg.hd && e.dbm() && !l.read_only;
    let write_now = !e.ap2_s2w() && !l.read_only;
    let write_ever = write_now || dirty_ok;
    let exec = if privileged {
        !(e.pxn() || l.pxn || (el0 && write_ever))
    } else {
        !e.xn() && !l.uxn
    };
    Perms {
        read: reachable,
        write_now: reachable && write_now,
        write_clean: reachable && !write_now && dirty_ok,
        exec: exec && !(cfg.wxn && write_ever),
    }
}

/// Stage-2 permissions (Arm ARM, stage 2 access control: S2AP and XN; dirty state
/// with DBM).
fn stage2_perms(cfg: &TableConfig, e: desc::Desc) -> Perms {
    let write_now = e.ap2_s2w();
    Perms {
        read: e.ap1_s2r(),
        write_now,
        write_clean: !write_now && cfg.hd && e.dbm(),
        exec: !e.xn(),
    }
}

/// Whether `p` refuses the request (or STE.S2PTW refuses a stage-1 table
/// walk that lands in Device memory).
fn denied(cfg: &TableConfig, req: &WalkReq, p: &Perms, e: desc::Desc) -> bool {
    let a = req.access;
    (a.contains(Access::READ) && !p.read)
        || (a.contains(Access::WRITE) && !p.write_now && !p.write_clean)
        || (a.contains(Access::EXEC) && !p.exec)
        || (req.table_walk && cfg.ptw && e.s2_memtype() == 0)
}

/// The descriptor after the hardware updates of an access that did not
/// fault: the access flag with HA, and dirty state for a write to a
/// writable-clean entry (stage 1 clears AP[2], stage 2 sets S2AP[1]).
fn updated(cfg: &TableConfig, d: u64, make_dirty: bool) -> u64 {
    let mut new = d;
    if !desc::Desc(d).af() && cfg.ha {
        new = desc::AF.set(new, 1);
    }
    if make_dirty {
        new = desc::AP2_S2W.set(new, u64::from(cfg.stage == Stage::Two));
    }
    new
}

/// Checks the leaf and makes the hardware updates (IHI 0070,
/// "Translation table entries and Access/Dirty flags"): the access flag
/// fault takes priority over permission faults; the access flag and the
/// dirty state are written only for an access that does not fault.
fn finish<M: GuestMemory + ?Sized, T: TableAccess>(
    mem: &M,
    cfg: &TableConfig,
    tables: &mut T,
    req: &WalkReq,
    f: &Found,
) -> Attempt {
    let g = cfg.granule;
    let e = desc::Desc(f.desc);
    let shift = g.level_shift(f.level);
    let oa = descriptor_address(f.desc, g, shift);
    if oa >> cfg.oa_bits != 0 {
        return Attempt::Done(fault(FaultKind::AddressSize, f.level, cfg, req.addr));
    }
    if !e.af() && !cfg.ha && !cfg.affd {
        return Attempt::Done(fault(FaultKind::AccessFlag, f.level, cfg, req.addr));
    }
    let privileged = req.access.contains(Access::PRIV);
    let p = match cfg.stage {
        Stage::One => stage1_perms(cfg, e, f.limits, privileged),
        Stage::Two => stage2_perms(cfg, e),
    };
    if denied(cfg, req, &p, e) {
        return Attempt::Done(fault(FaultKind::Permission, f.level, cfg, req.addr));
    }
    let make_dirty = req.access.contains(Access::WRITE) && !p.write_now;
    let new = updated(cfg, f.desc, make_dirty);
    if new != f.desc {
        let pa = match tables.resolve(f.at, true) {
            Ok(pa) => pa,
            Err(w) => return Attempt::Done(Walk::Fault(w)),
        };
        match cas_u64(mem, pa, f.desc, new) {
            Ok(()) => {}
            Err(CasError::Changed) => return Attempt::Retry,
            Err(CasError::Abort) => {
                let k = FaultKind::ExternalAbort { fetch: pa };
                return Attempt::Done(fault(k, f.level, cfg, req.addr));
            }
        }
    }
    let mut granted = Access::empty();
    granted.set(Access::READ, p.read);
    granted.set(Access::WRITE, p.write_now || make_dirty);
    granted.set(Access::EXEC, p.exec);
    let contig = if e.contig() {
        g.contiguous_bits(f.level)
    } else {
        0
    };
    let region = (shift + contig).min(cfg.ia_bits);
    Attempt::Done(Walk::Mapped(Leaf {
        oa: oa & !mask(region),
        shift: region,
        granted,
        global: cfg.stage == Stage::One && !e.ng(),
    }))
}
