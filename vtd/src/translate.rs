//! DMA remapping of one request (VT-d chapter 3): the root table, the
//! context entry (VT-d "Legacy Mode Address Translation", "Scalable Mode
//! Address Translation"), the PASID directory and PASID table (scalable
//! mode), then the walk the translation type selects.
//!
//! The resolution reports, with each fault, whether fault processing was
//! disabled (FPD) by an entry it had already accepted (VT-d "Primary Fault Logging": "faults
//! detected ... after ... an entry with FPD=1 are not recorded").

use crate::options::{VtdConfig, VtdMode};
use nesting_core::types::{Access, Bdf, Iova, IovaRange};
use vm_memory::GuestMemory;

use crate::fault::FaultReason;
use crate::regs::capability;
use crate::tables::EntryReader;
use crate::tables::{
    ContextEntry, PasidDirEntry, PasidEntry, Pgtt, RootEntry, SmContextEntry, TranslationType,
    aw_levels,
};
use crate::walk::{
    Direct, FsParams, FsWalk, Leaf, SsFault, SsParams, SsWalk, TableAccess, walk_first_stage_in,
    walk_second_stage, walk_second_stage_in,
};

/// The latched root table pointer (GCMD.SRTP copies RTADDR, 11.4 GCMD_REG).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootPointer {
    /// Root table address.
    pub addr: u64,
    /// RTADDR.TTM: 0 legacy, 1 scalable, others reserved.
    pub ttm: u8,
}

/// What the unit supports, from its configuration.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Legacy or scalable.
    pub mode: VtdMode,
    /// CAP.SAGAW.
    pub sagaw: u64,
    /// Host address width (the unit reports MGAW = HAW).
    pub haw: u32,
    /// CAP.SLLPS.
    pub sps: u8,
    /// CAP.FS1GP.
    pub fs1gp: bool,
    /// CAP.FS5LP.
    pub fs5lp: bool,
    /// ECAP.FSTS.
    pub flts: bool,
    /// ECAP.SSTS.
    pub slts: bool,
    /// ECAP.NEST.
    pub nest: bool,
    /// PASID width (0: no PASIDs).
    pub pasid_bits: u8,
    /// ECAP.DT.
    pub dt: bool,
    /// ECAP.PRS.
    pub prs: bool,
}

impl Caps {
    /// The capabilities of a configuration.
    pub fn new(cfg: &VtdConfig) -> Caps {
        use nesting_core::host::info::cap;
        let c = capability(cfg);
        Caps {
            mode: cfg.mode,
            sagaw: cap::SAGAW.get(c),
            haw: cfg.aw.bits(),
            sps: cfg.sps,
            fs1gp: cap::FS1GP.is_set(c),
            fs5lp: cap::FS5LP.is_set(c),
            flts: cfg.flts,
            slts: cfg.slts,
            nest: cfg.nest,
            pasid_bits: cfg.pasid_bits,
            dt: cfg.qi,
            prs: cfg.prs,
        }
    }
}

/// One DMA request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Source-id (requester ID).
    pub sid: u16,
    /// PASID, when the request carries one.
    pub pasid: Option<u32>,
    /// Input address.
    pub iova: u64,
    /// READ/WRITE/EXEC and PRIV.
    pub access: Access,
}

/// How a translation was made: what a cache entry is tagged with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Domain identifier of the context or PASID entry.
    pub did: u16,
    /// The PASID the translation is granular to (first-stage or nested
    /// translations, VT-d "Tagging of Cached Translations": "PASID-granular");
    /// `None` for domain-granular second-stage and pass-through translations.
    pub pasid: Option<u32>,
}

/// The result of resolving one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Translated.
    Mapped {
        /// The page.
        leaf: Leaf,
        /// Where it came from.
        origin: Origin,
    },
    /// Blocked.
    Fault {
        /// Why.
        reason: FaultReason,
        /// Fault processing disabled by an entry already accepted.
        fpd: bool,
    },
}

fn fault(reason: FaultReason, fpd: bool) -> Outcome {
    Outcome::Fault { reason, fpd }
}

/// Resolves `req` through the tables rooted at `root`.
pub fn resolve<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    root: RootPointer,
    req: &Request,
) -> Outcome {
    match (root.ttm, caps.mode) {
        // 11.4 RTADDR_REG TTM: 00 legacy mode; requests with PASID cannot be
        // translated by legacy tables (fault 0x31).
        (0, _) if req.pasid.is_some() => fault(FaultReason::SmTtmLegacyWithPasid, false),
        (0, _) => resolve_legacy(&mut EntryReader::new(mem), caps, root.addr, req),
        // VT-d "Handling Requests to Interrupt Address Range" (3.15 rev
        // 4.1): requests with PASID to 0xFEEx_xxxx are not interrupt
        // requests and are translated like any other; only a translation
        // whose output lies in the range is blocked (0x87, checked on the
        // result), which also catches pass-through PASIDs there.
        (1, VtdMode::Scalable) => {
            resolve_scalable(&mut EntryReader::new(mem), caps, root.addr, req)
        }
        // 11.4 RTADDR_REG TTM: 01 needs ECAP.SMTS; 10 and 11 are reserved.
        _ => fault(FaultReason::SmInvalidRootTable, false),
    }
}

/// VT-d "Legacy Mode Address Translation": the context entry of `sid` (root entry by bus,
/// context entry by devfn), checked for presence and reserved bits.
pub fn legacy_context<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    rta: u64,
    sid: u16,
) -> Result<ContextEntry, FaultReason> {
    legacy_context_in(&mut EntryReader::new(mem), caps, rta, sid)
}

fn legacy_context_in<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    rta: u64,
    sid: u16,
) -> Result<ContextEntry, FaultReason> {
    let sid = Bdf(sid);
    let root =
        RootEntry::read_in(reader, rta, sid.bus()).map_err(|_| FaultReason::RootTableAccess)?;
    let entry = root.lower();
    // 9.1: P clear blocks every request of the bus.
    if !entry.present() {
        return Err(FaultReason::RootNotPresent);
    }
    // 9.1: bits 11:1, 127:64 and context-table pointer bits above HAW are
    // reserved.
    if entry.reserved(caps.haw) || root.hi != 0 {
        return Err(FaultReason::RootReserved);
    }
    let ctx = ContextEntry::read_in(reader, entry.ctp(), sid.devfn())
        .map_err(|_| FaultReason::ContextTableAccess)?;
    if !ctx.present() {
        return Err(FaultReason::ContextNotPresent);
    }
    if ctx.reserved(caps.haw) {
        return Err(FaultReason::ContextReserved);
    }
    Ok(ctx)
}

fn resolve_legacy<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    rta: u64,
    req: &Request,
) -> Outcome {
    let ctx = match legacy_context_in(reader, caps, rta, req.sid) {
        Ok(c) => c,
        Err(r) => return fault(r, false),
    };
    let fpd = ctx.fpd();
    let origin = Origin {
        did: ctx.did(),
        pasid: None,
    };
    let out = match ctx.tt() {
        // 9.3 TT=10: pass-through; the output is the input, within HAW.
        TranslationType::PassThrough => {
            passthrough(req, caps, origin, fpd, FaultReason::AddressBeyondAgaw)
        }
        // VT-d "Context Entry" TT: 01b is reserved without ECAP.DT.
        TranslationType::DeviceTlb if !caps.dt => fault(FaultReason::ContextInvalid, fpd),
        TranslationType::Untranslated | TranslationType::DeviceTlb => {
            legacy_second_stage(reader, caps, &ctx, req, origin, fpd)
        }
        TranslationType::Unknown(_) => fault(FaultReason::ContextInvalid, fpd),
    };
    block_interrupt_output(out, FaultReason::InterruptAddress, fpd)
}

/// The interrupt address range 0xFEEx_xxxx (VT-d "Handling Requests to
/// Interrupt Address Range", 3.15 in rev 4.1): never translated on x86,
/// so a guest never uses it for DMA.
pub const INTERRUPT_RANGE: IovaRange = IovaRange {
    first: Iova(0xfee0_0000),
    last: Iova(0xfeef_ffff),
};

/// VT-d "Handling Requests to Interrupt Address Range" (3.14 in rev 3.3,
/// 3.15 in rev 4.1): "Untranslated requests and translation requests
/// that result in an address in the interrupt range will be blocked with
/// condition code LGN.4 or SGN.8" (fault 0xE legacy, 0x87 scalable). The
/// whole page is checked, since the translation cache serves all of it.
fn block_interrupt_output(out: Outcome, reason: FaultReason, fpd: bool) -> Outcome {
    match out {
        Outcome::Mapped { leaf, .. } => {
            let last = leaf.base | ((1u64 << leaf.shift.min(63)) - 1);
            if leaf.base <= INTERRUPT_RANGE.last.raw() && last >= INTERRUPT_RANGE.first.raw() {
                return fault(reason, fpd);
            }
            out
        }
        f => f,
    }
}

fn legacy_second_stage<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    ctx: &ContextEntry,
    req: &Request,
    origin: Origin,
    fpd: bool,
) -> Outcome {
    // 9.3 AW: a value CAP.SAGAW does not report makes the entry invalid.
    let Some(levels) = aw_levels(ctx.aw(), caps.sagaw) else {
        return fault(FaultReason::ContextInvalid, fpd);
    };
    // 3.7: input addresses above the AGAW the entry selects fault (0x4).
    if !fits(req.iova, agaw(levels)) {
        return fault(FaultReason::AddressBeyondAgaw, fpd);
    }
    let p = SsParams {
        root: ctx.slptptr(),
        levels,
        haw: caps.haw,
        sps: caps.sps,
    };
    match walk_second_stage_in(reader, &p, req.iova, req.access) {
        SsWalk::Mapped(leaf) => Outcome::Mapped { leaf, origin },
        // VT-d 7.2.3 "Fault Conditions and Remapping Hardware Behavior for
        // Various Requests": legacy mode reports entries with R=W=0 and
        // insufficient permissions alike, as read (0x6) or write (0x5) faults.
        SsWalk::Fault(SsFault::NotPresent | SsFault::Permission) => fault(
            rw_reason(req.access, FaultReason::Write, FaultReason::Read),
            fpd,
        ),
        SsWalk::Fault(SsFault::Access) => fault(FaultReason::PagingEntryAccess, fpd),
        SsWalk::Fault(SsFault::Reserved) => fault(FaultReason::PagingEntryReserved, fpd),
    }
}

fn rw_reason(access: Access, write: FaultReason, read: FaultReason) -> FaultReason {
    if access.contains(Access::WRITE) {
        write
    } else {
        read
    }
}

/// Address width of `levels` levels.
fn agaw(levels: u32) -> u32 {
    12 + 9 * levels
}

fn fits(addr: u64, bits: u32) -> bool {
    bits >= 64 || addr >> bits == 0
}

fn passthrough(
    req: &Request,
    caps: &Caps,
    origin: Origin,
    fpd: bool,
    beyond: FaultReason,
) -> Outcome {
    if !fits(req.iova, caps.haw) {
        return fault(beyond, fpd);
    }
    Outcome::Mapped {
        leaf: Leaf {
            base: req.iova & !0xfff,
            shift: 12,
            perms: Access::READ | Access::WRITE,
        },
        origin,
    }
}

/// A PASID table entry located for a request (scalable mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// The entry.
    pub entry: PasidEntry,
    /// The PASID it is the entry of (the request's, or RID_PASID).
    pub pasid: u32,
    /// Fault processing disabled by the context, directory or PASID
    /// entry.
    pub fpd: bool,
}

/// Scalable mode: the scalable-mode root entry and context entry of
/// `sid`, checked for presence, reserved bits and what the unit supports.
/// `Err` carries the fault and the context's FPD.
pub fn sm_context<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    rta: u64,
    sid: u16,
) -> Result<SmContextEntry, (FaultReason, bool)> {
    sm_context_in(&mut EntryReader::new(mem), caps, rta, sid)
}

fn sm_context_in<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    rta: u64,
    sid: u16,
) -> Result<SmContextEntry, (FaultReason, bool)> {
    let sid = Bdf(sid);
    let root = RootEntry::read_in(reader, rta, sid.bus())
        .map_err(|_| (FaultReason::SmRootAccess, false))?;
    // VT-d "Scalable-Mode Root Entry": the lower half serves devfn 0..127,
    // the upper half 128..255.
    let half = root.half_for(sid.devfn());
    if !half.present() {
        return Err((FaultReason::SmRootNotPresent, false));
    }
    if half.reserved(caps.haw) {
        return Err((FaultReason::SmRootReserved, false));
    }
    let ctx = SmContextEntry::read_in(reader, half.ctp(), sid.devfn())
        .map_err(|_| (FaultReason::SmContextAccess, false))?;
    if !ctx.present() {
        return Err((FaultReason::SmContextNotPresent, false));
    }
    if ctx.reserved(caps.haw) {
        return Err((FaultReason::SmContextReserved, false));
    }
    let fpd = ctx.fpd();
    // VT-d "Scalable-Mode Context Entry" DTE/PRE: enabling what the unit
    // does not report (ECAP.DT, ECAP.PRS) makes the entry invalid.
    if (ctx.dte() && !caps.dt) || (ctx.pre() && !caps.prs) {
        return Err((FaultReason::SmContextInvalid, fpd));
    }
    Ok(ctx)
}

/// Whether the context of `sid` lets its device use a device-TLB: what
/// translation requests and translated requests need (VT-d "Handling of
/// Translation Requests" and "Handling of Translated Requests"). Legacy
/// mode needs context-entry TT = 01b; scalable mode the scalable-mode
/// context entry's DTE. `Err` carries the fault (0xD resp. 0x44 when the
/// context blocks the request) and the FPD of the entries accepted.
pub fn device_tlb_allowed<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    root: RootPointer,
    sid: u16,
) -> Result<(), (FaultReason, bool)> {
    match (root.ttm, caps.mode) {
        (0, _) => {
            let ctx = legacy_context(mem, caps, root.addr, sid).map_err(|r| (r, false))?;
            let fpd = ctx.fpd();
            match ctx.tt() {
                // VT-d "Context Entry" TT: 01b supports untranslated,
                // translation and translated requests (reserved without
                // ECAP.DT).
                TranslationType::DeviceTlb if caps.dt => Ok(()),
                TranslationType::DeviceTlb | TranslationType::Unknown(_) => {
                    Err((FaultReason::ContextInvalid, fpd))
                }
                // TT 00b and 10b: translation and translated requests
                // are blocked (fault 0xD).
                TranslationType::Untranslated | TranslationType::PassThrough => {
                    Err((FaultReason::TranslationTypeBlocked, fpd))
                }
            }
        }
        (1, VtdMode::Scalable) => sm_context_enables(
            mem,
            caps,
            root.addr,
            sid,
            SmContextEntry::dte,
            FaultReason::SmDteClear,
        ),
        _ => Err((FaultReason::SmInvalidRootTable, false)),
    }
}

/// The scalable-mode context entry of `sid` is usable and has `enable`
/// set (DTE, PRE); else `blocked`, with the entry's FPD, or the fault the
/// root or context entry itself gives.
fn sm_context_enables<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    rta: u64,
    sid: u16,
    enable: fn(&SmContextEntry) -> bool,
    blocked: FaultReason,
) -> Result<(), (FaultReason, bool)> {
    let ctx = sm_context(mem, caps, rta, sid)?;
    if enable(&ctx) {
        Ok(())
    } else {
        Err((blocked, ctx.fpd()))
    }
}

/// VT-d "Scalable Mode Address Translation": scalable root entry, scalable context entry,
/// PASID directory, PASID table entry. `Err` carries the fault and FPD.
pub fn locate_pasid_entry<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    rta: u64,
    sid: u16,
    req_pasid: Option<u32>,
) -> Result<Located, (FaultReason, bool)> {
    locate_pasid_entry_in(&mut EntryReader::new(mem), caps, rta, sid, req_pasid)
}

fn locate_pasid_entry_in<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    rta: u64,
    sid: u16,
    req_pasid: Option<u32>,
) -> Result<Located, (FaultReason, bool)> {
    let ctx = sm_context_in(reader, caps, rta, sid)?;
    let fpd = ctx.fpd();
    // 9.4 PASIDE: requests with PASID need it; requests without use
    // RID_PASID.
    let pasid = match req_pasid {
        Some(_) if !ctx.paside() => {
            return Err((FaultReason::SmPasidDisabled, fpd));
        }
        Some(p) => p,
        None => ctx.rid_pasid(),
    };
    // 9.4 PDTS: the directory covers 2^(PDTS+7) tables of 64 PASIDs;
    // ECAP.PSS bounds the PASIDs a request may carry.
    let too_wide = req_pasid.is_some() && u64::from(pasid) >> caps.pasid_bits.min(20) != 0;
    if u64::from(pasid) >= ctx.max_pasids() || too_wide {
        // 9.4 RID_PASID: a RID_PASID beyond the directory is an error of
        // that field (0x48), a request's PASID beyond it 0x46.
        let reason = match req_pasid {
            Some(_) => FaultReason::SmPasidTooLarge,
            None => FaultReason::SmRidPasidError,
        };
        return Err((reason, fpd));
    }
    // PASID directory and table access errors are non-qualified faults:
    // recorded even under FPD (QEMU's table of qualified faults, from
    // Intel's engineers; the "Qualified" column of VT-d 7.2.3 is to be
    // re-checked).
    let dirent = PasidDirEntry::read_in(reader, ctx.pasid_dir(), pasid)
        .map_err(|_| (FaultReason::PasidDirAccess, false))?;
    if !dirent.present() {
        return Err((FaultReason::PasidDirNotPresent, fpd));
    }
    if dirent.reserved(caps.haw) {
        return Err((FaultReason::PasidDirReserved, fpd));
    }
    let fpd = fpd || dirent.fpd();
    let entry = PasidEntry::read_in(reader, dirent.pasid_table(), pasid)
        .map_err(|_| (FaultReason::PasidEntryAccess, false))?;
    if !entry.present() {
        return Err((FaultReason::PasidEntryNotPresent, fpd));
    }
    if entry.reserved(caps.haw) {
        return Err((FaultReason::PasidEntryReserved, fpd));
    }
    let fpd = fpd || entry.fpd();
    Ok(Located { entry, pasid, fpd })
}

/// Whether `sid` may issue page requests (VT-d "Handling of Page
/// Requests"): the root table must be in scalable mode (else 0x32) and the
/// device's scalable-mode context entry usable with PRE set (9.4; else
/// 0x47, or the fault the root or context entry itself gives). `Err`
/// carries the fault and the context entry's FPD.
pub fn page_requests_allowed<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    root: RootPointer,
    sid: u16,
) -> Result<(), (FaultReason, bool)> {
    match (root.ttm, caps.mode) {
        (0, _) => Err((FaultReason::SmTtmLegacyPageRequest, false)),
        (1, VtdMode::Scalable) => sm_context_enables(
            mem,
            caps,
            root.addr,
            sid,
            SmContextEntry::pre,
            FaultReason::SmPreClear,
        ),
        _ => Err((FaultReason::SmInvalidRootTable, false)),
    }
}

fn resolve_scalable<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    rta: u64,
    req: &Request,
) -> Outcome {
    match locate_pasid_entry_in(reader, caps, rta, req.sid, req.pasid) {
        Ok(l) => block_interrupt_output(
            scalable_walk(reader, caps, &l.entry, l.pasid, req, l.fpd),
            FaultReason::SmInterruptAddress,
            l.fpd,
        ),
        Err((reason, fpd)) => fault(reason, fpd),
    }
}

fn scalable_walk<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    pe: &PasidEntry,
    pasid: u32,
    req: &Request,
    fpd: bool,
) -> Outcome {
    let did = pe.did();
    let domain = Origin { did, pasid: None };
    let granular = Origin {
        did,
        pasid: Some(pasid),
    };
    // 9.6 PGTT: a type the unit does not report is an invalid entry.
    match pe.pgtt() {
        Pgtt::PassThrough => passthrough(req, caps, domain, fpd, FaultReason::SmAddressBeyond),
        Pgtt::SecondStage if caps.slts => sm_second_stage(reader, caps, pe, req, domain, fpd),
        Pgtt::FirstStage if caps.flts => first_stage(reader, caps, pe, req, granular, fpd, None),
        Pgtt::Nested if caps.nest => match ss_params(caps, pe) {
            Some(ss) => first_stage(reader, caps, pe, req, granular, fpd, Some(ss)),
            None => fault(FaultReason::PasidEntryInvalid, fpd),
        },
        _ => fault(FaultReason::PasidEntryInvalid, fpd),
    }
}

fn ss_params(caps: &Caps, pe: &PasidEntry) -> Option<SsParams> {
    let levels = aw_levels(pe.aw(), caps.sagaw)?;
    Some(SsParams {
        root: pe.ssptptr(),
        levels,
        haw: caps.haw,
        sps: caps.sps,
    })
}

fn sm_second_stage<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    pe: &PasidEntry,
    req: &Request,
    origin: Origin,
    fpd: bool,
) -> Outcome {
    let Some(p) = ss_params(caps, pe) else {
        return fault(FaultReason::PasidEntryInvalid, fpd);
    };
    if !fits(req.iova, agaw(p.levels)) {
        return fault(FaultReason::SmAddressBeyond, fpd);
    }
    match walk_second_stage_in(reader, &p, req.iova, req.access) {
        SsWalk::Mapped(leaf) => Outcome::Mapped { leaf, origin },
        SsWalk::Fault(f) => fault(ss_fault(f, req.access), fpd),
    }
}

/// Scalable-mode reasons for a second-stage walk of the request itself.
fn ss_fault(f: SsFault, access: Access) -> FaultReason {
    match f {
        SsFault::Access => FaultReason::SsEntryAccess,
        SsFault::Reserved => FaultReason::SsEntryReserved,
        SsFault::NotPresent | SsFault::Permission => {
            rw_reason(access, FaultReason::SmWrite, FaultReason::SmRead)
        }
    }
}

/// First-stage table addresses translated through the second stage
/// (VT-d "Nested Translation").
struct Nested<'m, M: ?Sized> {
    mem: &'m M,
    ss: SsParams,
}

impl<M: GuestMemory + ?Sized> TableAccess for Nested<'_, M> {
    fn table_gpa(&mut self, addr: u64, write: bool, root: bool) -> Result<u64, FaultReason> {
        if !fits(addr, agaw(self.ss.levels)) {
            return Err(FaultReason::NestedFsAddressBeyond);
        }
        let access = if write { Access::WRITE } else { Access::READ };
        match walk_second_stage(self.mem, &self.ss, addr, access) {
            SsWalk::Mapped(leaf) => Ok(leaf.output(addr)),
            SsWalk::Fault(SsFault::Access) => Err(FaultReason::SsEntryAccess),
            SsWalk::Fault(SsFault::Reserved) => Err(FaultReason::SsEntryReserved),
            SsWalk::Fault(_) if write => Err(FaultReason::NestedFsTableWrite),
            SsWalk::Fault(_) if root => Err(FaultReason::NestedFsRootRead),
            SsWalk::Fault(_) => Err(FaultReason::NestedFsTableRead),
        }
    }
}

fn first_stage<M: GuestMemory + ?Sized>(
    reader: &mut EntryReader<'_, M>,
    caps: &Caps,
    pe: &PasidEntry,
    req: &Request,
    origin: Origin,
    fpd: bool,
    nested: Option<SsParams>,
) -> Outcome {
    // 9.6 FSPM: 0 = 4-level, 1 = 5-level (needs CAP.FS5LP).
    let levels = match pe.fspm() {
        0 => 4,
        1 if caps.fs5lp => 5,
        _ => return fault(FaultReason::PasidEntryInvalid, fpd),
    };
    // 9.6 SRE/ERE: supervisor and execute requests need them.
    if req.access.contains(Access::PRIV) && !pe.sre() {
        return fault(FaultReason::PasidSreClear, fpd);
    }
    if req.access.contains(Access::EXEC) && !pe.ere() {
        return fault(FaultReason::PasidEreClear, fpd);
    }
    let p = FsParams {
        root: pe.fsptptr(),
        levels,
        haw: caps.haw,
        fs1gp: caps.fs1gp,
        wpe: pe.wpe(),
        eafe: pe.eafe(),
    };
    let walked = match nested {
        None => walk_first_stage_in(reader, &mut Direct, &p, req.iova, req.access),
        Some(ss) => {
            let nested = &mut Nested {
                mem: reader.mem(),
                ss,
            };
            walk_first_stage_in(reader, nested, &p, req.iova, req.access)
        }
    };
    let leaf = match walked {
        FsWalk::Mapped(leaf) => leaf,
        FsWalk::Fault(r) => return fault(r, fpd),
    };
    let Some(ss) = nested else {
        return Outcome::Mapped { leaf, origin };
    };
    nested_output(reader.mem(), &ss, leaf, req, origin, fpd)
}

/// VT-d "Nested Translation": the first-stage output goes through the second stage; the page is
/// the smaller of the two and the permissions their intersection.
fn nested_output<M: GuestMemory + ?Sized>(
    mem: &M,
    ss: &SsParams,
    fs: Leaf,
    req: &Request,
    origin: Origin,
    fpd: bool,
) -> Outcome {
    let gpa = fs.output(req.iova);
    if !fits(gpa, agaw(ss.levels)) {
        return fault(FaultReason::SmOutputBeyond, fpd);
    }
    match walk_second_stage(mem, ss, gpa, req.access & (Access::READ | Access::WRITE)) {
        SsWalk::Mapped(s) => {
            let shift = fs.shift.min(s.shift);
            let out = s.output(gpa) & !((1u64 << shift) - 1);
            let mut perms = fs.perms & (s.perms | Access::EXEC);
            if !s.perms.contains(Access::READ) {
                perms.remove(Access::EXEC);
            }
            Outcome::Mapped {
                leaf: Leaf {
                    base: out,
                    shift,
                    perms,
                },
                origin,
            }
        }
        SsWalk::Fault(f) => fault(ss_fault(f, req.access), fpd),
    }
}

/// The tables a requester's DMA goes through, for a shadowing layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tables {
    /// Pass-through: the output is the input.
    Identity,
    /// Second-stage tables (legacy, or scalable PGTT=010).
    Second(SsParams),
    /// First-stage tables (PGTT=001).
    First(FsParams),
    /// Nested (PGTT=011): first-stage tables addressed through the
    /// second stage.
    Nested(FsParams, SsParams),
}

/// The tables `sid` (with `pasid`, or RID_PASID) uses under the root
/// table `root`, or the fault a request would take before any walk.
pub fn tables_for<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    root: RootPointer,
    sid: u16,
    pasid: Option<u32>,
) -> Result<Tables, FaultReason> {
    match (root.ttm, caps.mode) {
        (0, _) if pasid.is_some() => Err(FaultReason::SmTtmLegacyWithPasid),
        (0, _) => {
            let ctx = legacy_context(mem, caps, root.addr, sid)?;
            match ctx.tt() {
                TranslationType::PassThrough => Ok(Tables::Identity),
                TranslationType::Untranslated | TranslationType::DeviceTlb => {
                    let levels =
                        aw_levels(ctx.aw(), caps.sagaw).ok_or(FaultReason::ContextInvalid)?;
                    Ok(Tables::Second(SsParams {
                        root: ctx.slptptr(),
                        levels,
                        haw: caps.haw,
                        sps: caps.sps,
                    }))
                }
                TranslationType::Unknown(_) => Err(FaultReason::ContextInvalid),
            }
        }
        (1, VtdMode::Scalable) => {
            let l = locate_pasid_entry(mem, caps, root.addr, sid, pasid).map_err(|(r, _)| r)?;
            scalable_tables(caps, &l.entry)
        }
        _ => Err(FaultReason::SmInvalidRootTable),
    }
}

fn scalable_tables(caps: &Caps, pe: &PasidEntry) -> Result<Tables, FaultReason> {
    let fs = || -> Result<FsParams, FaultReason> {
        let levels = match pe.fspm() {
            0 => 4,
            1 if caps.fs5lp => 5,
            _ => return Err(FaultReason::PasidEntryInvalid),
        };
        Ok(FsParams {
            root: pe.fsptptr(),
            levels,
            haw: caps.haw,
            fs1gp: caps.fs1gp,
            wpe: pe.wpe(),
            eafe: pe.eafe(),
        })
    };
    let ss = || ss_params(caps, pe).ok_or(FaultReason::PasidEntryInvalid);
    match pe.pgtt() {
        Pgtt::PassThrough => Ok(Tables::Identity),
        Pgtt::SecondStage if caps.slts => Ok(Tables::Second(ss()?)),
        Pgtt::FirstStage if caps.flts => Ok(Tables::First(fs()?)),
        Pgtt::Nested if caps.nest => Ok(Tables::Nested(fs()?, ss()?)),
        _ => Err(FaultReason::PasidEntryInvalid),
    }
}
