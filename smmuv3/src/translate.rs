//! Translation of one transaction through the stream's configuration
//! (IHI 0070 "Data structures and translation procedure"): stream
//! table entry, context descriptor, stage-1 and stage-2 walks, and the
//! fault to report when any step fails (chapter 7, with the fault
//! configuration of "Fault configuration").
//!
//! [`resolve`] reads guest memory and updates access/dirty flags but
//! records nothing: the model writes the event, stalls, and caches.

use nesting_core::iotlb::IotlbTag;
use nesting_core::types::Access;
use vm_memory::GuestMemory;

use crate::caps::Caps;
use crate::cd::{Cd, CdConfig, CdStep, L1Cd, cd_step, override_attrs, select_region};
use crate::cfgcache::ConfigCache;
use crate::event::{Event, EventId};
use crate::strtab::{DefaultSubstream, S2Ste, Ste, SteConfig, SteLookup, SteMode, StreamTable};
use crate::tlb::{Kind, tag};
use crate::walk::{
    Direct, FaultClass, FaultKind, Leaf, S2Info, TableAccess, TableConfig, Walk, WalkFault,
    WalkReq, walk,
};
use crate::wire::read_qwords;

/// One transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if the transaction has one.
    pub ssid: Option<u32>,
    /// Input address.
    pub addr: u64,
    /// READ / WRITE / EXEC (instruction), PRIV (privileged).
    pub access: Access,
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The input region's first address (aligned to `1 << shift`).
    pub iova: u64,
    /// The output region's first address.
    pub oa: u64,
    /// log2 of the region size.
    pub shift: u32,
    /// What the request's privilege may do through it.
    pub granted: Access,
    /// The IOTLB tag (what invalidates it).
    pub tag: IotlbTag,
    /// The tag's kind.
    pub kind: Kind,
    /// Whether the IOTLB may keep it (not for top-byte-tagged addresses,
    /// whose tag a TLBI by address ignores).
    pub cacheable: bool,
}

/// A failed translation: what to report and how to end the transaction
/// (IHI 0070 "Fault configuration").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The event to record; `None` for silent aborts (STE.Config abort).
    pub event: Option<Event>,
    /// Whether the configuration asks for it to be recorded (always for
    /// configuration errors; CD.R / STE.S2R for the translation-related
    /// faults).
    pub record: bool,
    /// Whether the transaction stalls (CD.S / STE.S2S).
    pub stall: bool,
    /// Abort (true) or RAZ/WI (false, CD.A = 0) when terminated.
    pub abort: bool,
}

impl Fault {
    fn silent() -> Fault {
        Fault {
            event: None,
            record: false,
            stall: false,
            abort: true,
        }
    }

    fn config(ev: Event) -> Fault {
        Fault {
            event: Some(ev),
            record: true,
            stall: false,
            abort: true,
        }
    }

    /// A configuration-class event: always recorded, aborts.
    pub(crate) fn config_event(ev: Event) -> Fault {
        Fault::config(ev)
    }
}

/// The fault of a stage-2 walk of a stream (ATS split-stage translated
/// transactions).
pub(crate) fn fault_of_walk(
    req: &Request,
    access: Access,
    f: &WalkFault,
    ste: &SteConfig,
) -> Fault {
    walk_fault(req, access, f, FaultCfg::of(ste, None))
}

/// The outcome of [`resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Translated.
    Mapped(Resolved),
    /// Faulted.
    Fault(Fault),
}

/// What a walk is for: a transaction, or an ATS translation request
/// (which stops at stage 1 for split-stage ATS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A transaction.
    Transaction,
    /// An ATS translation request returning IPAs (STE.EATS = 0b10).
    AtsStage1Only,
}

/// Stage-2 reach for stage-1 structures (CDs, table descriptors) of a
/// nested stream.
struct S2Tables<'a, M: ?Sized> {
    mem: &'a M,
    s2: &'a TableConfig,
    class: FaultClass,
}

impl<M: GuestMemory + ?Sized> TableAccess for S2Tables<'_, M> {
    fn resolve(&mut self, ipa: u64, write: bool) -> Result<u64, WalkFault> {
        let req = WalkReq {
            addr: ipa,
            access: if write { Access::WRITE } else { Access::READ },
            table_walk: true,
        };
        match walk(self.mem, self.s2, &mut Direct, &req) {
            Walk::Mapped(l) => Ok(l.output(ipa)),
            Walk::Fault(mut f) => {
                f.s2 = Some(S2Info {
                    ipa,
                    class: self.class,
                });
                Err(f)
            }
        }
    }
}

/// The fault configuration of a stream: CD for stage-1 faults, STE for
/// stage-2 faults.
#[derive(Clone, Copy, Debug)]
struct FaultCfg {
    cd: Option<(bool, bool, bool)>,
    s2: Option<(bool, bool)>,
}

impl FaultCfg {
    fn of(ste: &SteConfig, cd: Option<&CdConfig>) -> FaultCfg {
        FaultCfg {
            cd: cd.map(|c| (c.record, c.stall, c.abort)),
            s2: ste.s2.map(|s: S2Ste| (s.record, s.stall)),
        }
    }
}

/// The fault of a failed walk (IHI 0070 "Event records", F_WALK_EABT to F_PERMISSION),
/// configured by "Fault configuration": the four translation-related faults are recorded when R (or
/// S2R) is set or the transaction stalls; F_WALK_EABT always.
fn walk_fault(req: &Request, access: Access, f: &WalkFault, cfg: FaultCfg) -> Fault {
    let id = EventId::of_fault(f.kind);
    let fetch = match f.kind {
        FaultKind::ExternalAbort { fetch } => fetch,
        _ => 0,
    };
    let event = Event {
        id,
        sid: req.sid,
        ssid: req.ssid,
        stag: None,
        access,
        s2: f.s2.map(|s| (s.class, s.ipa)),
        addr: req.addr,
        fetch,
    };
    let (record, stall, abort) = match (f.s2, cfg.cd, cfg.s2) {
        (Some(_), _, Some((r, s))) => (r, s, true),
        (None, Some(c), _) => c,
        _ => (true, false, true),
    };
    if !id.is_translation_related() {
        return Fault::config(event);
    }
    Fault {
        event: Some(event),
        record: record || stall,
        stall,
        abort,
    }
}

/// Reads and checks `req.sid`'s stream table entry (IHI 0070 "Stream table lookup";
/// C_BAD_STREAMID, F_STE_FETCH, C_BAD_STE).
pub fn fetch_ste<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    st: &StreamTable,
    req: &Request,
    cache: &mut ConfigCache,
) -> Result<SteConfig, Fault> {
    if let Some(ste) = cache.ste(req.sid) {
        return Ok(ste);
    }
    let cfg_event = |id| Fault::config(Event::config(id, req.sid, req.ssid));
    let at = match st.locate(mem, req.sid) {
        SteLookup::At(a) => a,
        SteLookup::BadStreamId => return Err(cfg_event(EventId::BadStreamId)),
        SteLookup::FetchFault { addr } => return Err(fetch_fault(EventId::SteFetch, req, addr)),
    };
    let Ok(words) = read_qwords::<M, 8>(mem, at) else {
        return Err(fetch_fault(EventId::SteFetch, req, at));
    };
    let ste = Ste(words).decode(caps).map_err(|why| {
        nesting_core::guest_log!(Debug, "smmuv3: C_BAD_STE sid {:#x}: {why:?}", req.sid);
        cfg_event(EventId::BadSte)
    })?;
    cache.put_ste(req.sid, ste);
    Ok(ste)
}

fn fetch_fault(id: EventId, req: &Request, addr: u64) -> Fault {
    let mut ev = Event::config(id, req.sid, req.ssid);
    ev.fetch = addr;
    Fault::config(ev)
}

/// Translates `req` (IHI 0070 "Configuration and Translation
/// lookup"), with SMMUEN = 1.
pub fn resolve<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    st: &StreamTable,
    req: &Request,
    purpose: Purpose,
    cache: &mut ConfigCache,
) -> Outcome {
    let ste = match fetch_ste(mem, caps, st, req, cache) {
        Ok(s) => s,
        Err(f) => return Outcome::Fault(f),
    };
    let access = override_attrs(req.access, ste.instcfg, ste.privcfg);
    resolve_with(mem, caps, &ste, req, access, purpose, cache)
}

/// Translates `req` through an already checked STE.
pub fn resolve_with<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    ste: &SteConfig,
    req: &Request,
    access: Access,
    purpose: Purpose,
    cache: &mut ConfigCache,
) -> Outcome {
    let bad_ssid = || {
        Outcome::Fault(Fault::config(Event::config(
            EventId::BadSubstreamId,
            req.sid,
            req.ssid,
        )))
    };
    match ste.mode {
        // 5.2 STE.Config 0b0xx: abort, and record no event.
        SteMode::Abort => Outcome::Fault(Fault::silent()),
        // "StreamIDs to Context Descriptors": a SubstreamID on a stream without stage 1 is
        // C_BAD_SUBSTREAMID.
        SteMode::Bypass | SteMode::S2 if req.ssid.is_some() => bad_ssid(),
        SteMode::Bypass => Outcome::Mapped(identity(req.addr)),
        SteMode::S2 => stage2_only(mem, caps, ste, req, access),
        SteMode::S1 | SteMode::Nested => stage1(mem, caps, ste, req, access, purpose, cache),
    }
}

/// Identity translations are cached as 1 GiB regions.
const IDENTITY_SHIFT: u32 = 30;

fn identity(addr: u64) -> Resolved {
    let base = addr & !((1u64 << IDENTITY_SHIFT) - 1);
    Resolved {
        iova: base,
        oa: base,
        shift: IDENTITY_SHIFT,
        granted: Access::READ | Access::WRITE | Access::EXEC,
        tag: tag(Kind::Bypass, 0, None),
        kind: Kind::Bypass,
        cacheable: true,
    }
}

fn stage2_only<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    ste: &SteConfig,
    req: &Request,
    access: Access,
) -> Outcome {
    let Some(s2) = ste.s2 else {
        return Outcome::Fault(Fault::silent());
    };
    // 3.4 "Address sizes" (and 5.2 STE.S1DSS = 0b01): with stage 1
    // bypassed the input address is the IPA, and one beyond the IAS (the
    // OAS, without AArch32 tables) is a stage 1 Address Size fault,
    // recorded (no CD, so no CD.R); only an IPA within it goes on to
    // stage 2, whose own range (S2T0SZ) gives stage 2 Translation faults.
    if req.addr >> caps.oas != 0 {
        let f = WalkFault {
            kind: FaultKind::AddressSize,
            level: 0,
            s2: None,
        };
        let ev = walk_fault(req, access, &f, FaultCfg::of(ste, None));
        return Outcome::Fault(Fault {
            record: true,
            stall: false,
            ..ev
        });
    }
    let w = WalkReq {
        addr: req.addr,
        access,
        table_walk: false,
    };
    match walk(mem, &s2.table, &mut Direct, &w) {
        Walk::Mapped(l) => Outcome::Mapped(Resolved {
            iova: req.addr & !mask(l.shift),
            oa: l.oa,
            shift: l.shift,
            granted: l.granted,
            tag: tag(Kind::S2, ste.vmid, None),
            kind: Kind::S2,
            cacheable: true,
        }),
        Walk::Fault(f) => Outcome::Fault(walk_fault(req, access, &f, FaultCfg::of(ste, None))),
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Which CD a transaction uses (IHI 0070 "StreamIDs to Context Descriptors"; 5.2 STE.S1CDMax and
/// STE.S1DSS), or how it ends without one.
enum CdChoice {
    Index(u32),
    BypassStage1,
    Fault(Fault),
}

fn choose_cd(ste: &SteConfig, req: &Request) -> CdChoice {
    let Some(s1) = ste.s1 else {
        return CdChoice::Fault(Fault::silent());
    };
    let ev = |id| CdChoice::Fault(Fault::config(Event::config(id, req.sid, req.ssid)));
    match req.ssid {
        // 5.2 STE.S1CDMax: with 0, "a transaction with a SubstreamID is
        // C_BAD_SUBSTREAMID"; otherwise SubstreamIDs of 2^S1CDMax or more
        // are. 5.2 STE.S1DSS = 0b10: SubstreamID 0 is then illegal.
        Some(ssid) => {
            let out_of_range = s1.cdmax == 0 || u64::from(ssid) >> s1.cdmax != 0;
            if out_of_range || (ssid == 0 && s1.dss == DefaultSubstream::Ssid0) {
                ev(EventId::BadSubstreamId)
            } else {
                CdChoice::Index(ssid)
            }
        }
        None if s1.cdmax == 0 => CdChoice::Index(0),
        // 5.2 STE.S1DSS for transactions without a SubstreamID.
        None => match s1.dss {
            DefaultSubstream::Terminate => ev(EventId::StreamDisabled),
            DefaultSubstream::Bypass => CdChoice::BypassStage1,
            DefaultSubstream::Ssid0 => CdChoice::Index(0),
        },
    }
}

/// Reads a CD-table structure at `ipa` (an IPA when nested; IHI 0070
/// "StreamIDs to Context Descriptors": the CD table and level-1 descriptors are in the stream's IPA
/// space), faulting with F_CD_FETCH or a CLASS=CD stage-2 fault.
fn read_cd_words<M: GuestMemory + ?Sized, const N: usize>(
    mem: &M,
    ste: &SteConfig,
    req: &Request,
    access: Access,
    ipa: u64,
) -> Result<[u64; N], Fault> {
    let pa = match &ste.s2 {
        Some(s2) => {
            let mut t = S2Tables {
                mem,
                s2: &s2.table,
                class: FaultClass::Cd,
            };
            t.resolve(ipa, false)
                .map_err(|f| walk_fault(req, access, &f, FaultCfg::of(ste, None)))?
        }
        None => ipa,
    };
    read_qwords::<M, N>(mem, pa).map_err(|_| fetch_fault(EventId::CdFetch, req, pa))
}

/// Fetches and checks CD `index` (IHI 0070 C_BAD_SUBSTREAMID for an
/// invalid level-1 descriptor, F_CD_FETCH, C_BAD_CD).
fn fetch_cd<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    ste: &SteConfig,
    req: &Request,
    access: Access,
    index: u32,
    cache: &mut ConfigCache,
) -> Result<CdConfig, Fault> {
    let Some(s1) = ste.s1 else {
        return Err(Fault::silent());
    };
    if let Some(cd) = cache.cd(req.sid, index) {
        return Ok(cd);
    }
    let cd_addr = match cd_step(&s1, index) {
        CdStep::Cd(a) => a,
        CdStep::Level1 { at, index } => {
            let [raw] = read_cd_words::<M, 1>(mem, ste, req, access, at)?;
            let l1 = L1Cd(raw);
            // 5.3 L1CD.V: an invalid level-1 descriptor is C_BAD_SUBSTREAMID.
            if !l1.v() {
                let ev = Event::config(EventId::BadSubstreamId, req.sid, req.ssid);
                return Err(Fault::config(ev));
            }
            l1.l2ptr() + crate::cd::CD_SIZE * index
        }
    };
    let words = read_cd_words::<M, 8>(mem, ste, req, access, cd_addr)?;
    let cd = Cd(words).decode(caps, &s1).map_err(|why| {
        nesting_core::guest_log!(Debug, "smmuv3: C_BAD_CD sid {:#x}: {why:?}", req.sid);
        Fault::config(Event::config(EventId::BadCd, req.sid, req.ssid))
    })?;
    cache.put_cd(req.sid, index, cd);
    Ok(cd)
}

fn stage1<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    ste: &SteConfig,
    req: &Request,
    access: Access,
    purpose: Purpose,
    cache: &mut ConfigCache,
) -> Outcome {
    let index = match choose_cd(ste, req) {
        CdChoice::Index(i) => i,
        CdChoice::Fault(f) => return Outcome::Fault(f),
        CdChoice::BypassStage1 if ste.s2.is_some() => {
            return stage2_only(mem, caps, ste, req, access);
        }
        CdChoice::BypassStage1 => return Outcome::Mapped(identity(req.addr)),
    };
    let cd = match fetch_cd(mem, caps, ste, req, access, index, cache) {
        Ok(cd) => cd,
        Err(f) => return Outcome::Fault(f),
    };
    let cfg = FaultCfg::of(ste, Some(&cd));
    // Arm ARM (VA ranges, TTBR0/TTBR1 selection): an address outside both regions, or in a region
    // whose walks are disabled (EPDx), is a stage-1 Translation fault.
    let Some(table) = select_region(&cd, req.addr) else {
        let f = WalkFault {
            kind: FaultKind::Translation,
            level: 0,
            s2: None,
        };
        return Outcome::Fault(walk_fault(req, access, &f, cfg));
    };
    let w = WalkReq {
        addr: req.addr,
        access,
        table_walk: false,
    };
    let s1_walk = walk_stage1(mem, ste, &table, &w);
    let l1 = match s1_walk {
        Walk::Mapped(l) => l,
        Walk::Fault(f) => return Outcome::Fault(walk_fault(req, access, &f, cfg)),
    };
    let tagged = {
        let top = req.addr >> 56;
        top != 0 && top != 0xff
    };
    let s2 = match (&ste.s2, purpose) {
        (Some(s2), Purpose::Transaction) => s2,
        _ => return Outcome::Mapped(stage1_result(ste, &cd, req, &l1, tagged)),
    };
    let ipa = l1.output(req.addr);
    let w2 = WalkReq {
        addr: ipa,
        access,
        table_walk: false,
    };
    match walk(mem, &s2.table, &mut Direct, &w2) {
        Walk::Mapped(l2) => Outcome::Mapped(nested_result(ste, &cd, req, &l1, &l2, ipa, tagged)),
        Walk::Fault(f) => Outcome::Fault(walk_fault(req, access, &f, cfg)),
    }
}

/// Walks the stage-1 tables, through stage 2 for a nested stream (its
/// table addresses are IPAs; a stage-2 fault on them has CLASS = TT).
fn walk_stage1<M: GuestMemory + ?Sized>(
    mem: &M,
    ste: &SteConfig,
    table: &TableConfig,
    w: &WalkReq,
) -> Walk {
    match &ste.s2 {
        Some(s2) => {
            let mut t = S2Tables {
                mem,
                s2: &s2.table,
                class: FaultClass::Tt,
            };
            walk(mem, table, &mut t, w)
        }
        None => walk(mem, table, &mut Direct, w),
    }
}

fn stage1_result(
    ste: &SteConfig,
    cd: &CdConfig,
    req: &Request,
    l: &Leaf,
    tagged: bool,
) -> Resolved {
    let (kind, asid) = if l.global {
        (Kind::S1Global, None)
    } else {
        (Kind::S1, Some(cd.asid))
    };
    Resolved {
        iova: req.addr & !mask(l.shift),
        oa: l.oa,
        shift: l.shift,
        granted: l.granted,
        tag: tag(kind, ste.vmid, asid),
        kind,
        cacheable: !tagged,
    }
}

fn nested_result(
    ste: &SteConfig,
    cd: &CdConfig,
    req: &Request,
    l1: &Leaf,
    l2: &Leaf,
    ipa: u64,
    tagged: bool,
) -> Resolved {
    let shift = l1.shift.min(l2.shift);
    let (kind, asid) = if l1.global {
        (Kind::NestedGlobal, None)
    } else {
        (Kind::Nested, Some(cd.asid))
    };
    Resolved {
        iova: req.addr & !mask(shift),
        oa: l2.output(ipa) & !mask(shift),
        shift,
        granted: l1.granted & l2.granted,
        tag: tag(kind, ste.vmid, asid),
        kind,
        cacheable: !tagged,
    }
}
