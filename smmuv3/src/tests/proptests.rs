//! proptest: the walkers against a reference walk written separately from
//! the Arm ARM's translation table walk pseudocode
//! (`AArch64.TranslationTableWalk`, `AArch64.CheckPermission`,
//! `AArch64.CheckS2Permission`, `AArch64.CheckAndUpdateDescriptor`), for
//! every granule, both stages and nested stage 1 over stage 2, on random
//! tables with random corruption.
//!
//! The reference is deliberately plain: it reads one descriptor per level
//! with explicit bit arithmetic, keeps its hardware updates in an overlay
//! instead of writing memory, and decides permissions from the
//! architecture's AP/S2AP tables. The contiguous hint is left out of the
//! random corruption: with an inconsistent contiguous run the result is
//! CONSTRAINED UNPREDICTABLE.

use std::collections::BTreeMap;

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Gpa};
use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::mock::{PageAlloc, PageTable};
use crate::walk::{
    Direct, FaultKind, Granule, Stage, TableAccess, TableConfig, Walk, WalkFault, WalkReq, walk,
};

/// RAM of one case: tables from 1 MiB, 3 MiB of them.
const MEM: u64 = 4 << 20;
const POOL: u64 = 1 << 20;

// -- the reference --------------------------------------------------------

/// Memory as the reference sees it: guest RAM under the updates the
/// reference made.
struct Overlay<'a> {
    mem: &'a GuestMemoryMmap<()>,
    writes: BTreeMap<u64, u64>,
}

impl Overlay<'_> {
    fn read(&self, pa: u64) -> Option<u64> {
        if let Some(v) = self.writes.get(&pa) {
            return Some(*v);
        }
        self.mem.read_u64_le(Gpa(pa)).ok()
    }
}

/// What the reference decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ref {
    /// Output address of the queried address, and R/W/X granted now.
    Ok(u64, Access),
    /// Fault kind (EABT without its address), level, stage 2.
    Fault(&'static str, u32, bool),
}

fn bits(v: u64, hi: u32, lo: u32) -> u64 {
    (v >> lo) & ((1u64 << (hi - lo + 1)) - 1)
}

/// One stage's parameters, as plain numbers.
#[derive(Clone, Copy, Debug)]
struct RefCfg {
    stage2: bool,
    grain: u32,
    ia: u32,
    start: u32,
    ttb: u64,
    pa_bits: u32,
    ha: bool,
    hd: bool,
    affd: bool,
    had: bool,
    wxn: bool,
    ptw: bool,
    lpa: bool,
}

impl RefCfg {
    fn of(t: &TableConfig) -> RefCfg {
        RefCfg {
            stage2: t.stage == Stage::Two,
            grain: t.granule.shift(),
            ia: t.ia_bits,
            start: t.start_level,
            ttb: t.ttb,
            pa_bits: t.oa_bits,
            ha: t.ha,
            hd: t.hd,
            affd: t.affd,
            had: t.had,
            wxn: t.wxn,
            ptw: t.ptw,
            lpa: t.lpa,
        }
    }
}

/// The address field of a descriptor, bits [47:lsb] and, with 64 KiB
/// granules, [51:48] from bits [15:12]; with 4/16 KiB, [49:48] as is.
fn ref_addr(d: u64, grain: u32, lsb: u32) -> u64 {
    let low = bits(d, 47, lsb) << lsb;
    if grain == 16 {
        low | (bits(d, 15, 12) << 48)
    } else {
        low | (bits(d, 49, 48) << 48)
    }
}

fn fault(kind: &'static str, level: u32, c: &RefCfg) -> Ref {
    Ref::Fault(kind, level, c.stage2)
}

/// Walks `c` for `va`. `s2` resolves stage-1 table IPAs (nested).
fn ref_walk(
    o: &mut Overlay<'_>,
    c: &RefCfg,
    va: u64,
    want: Access,
    table_walk: bool,
    s2: Option<&RefCfg>,
) -> Ref {
    let stride = c.grain - 3;
    if c.stage2 && va >= (1u64 << c.ia) {
        return fault("translation", c.start, c);
    }
    if c.ttb >= (1u64 << c.pa_bits) {
        return fault("addrsize", 0, c);
    }
    let lsb_of = |level: u32| c.grain + (3 - level) * stride;
    let first_bits = c.ia - lsb_of(c.start);
    let align = (8u64 << first_bits).max(64);
    let mut base = c.ttb & !(align - 1);
    let (mut no_el0, mut no_write, mut uxn_t, mut pxn_t) = (false, false, false, false);
    let mut level = c.start;
    let (desc, at) = loop {
        let lsb = lsb_of(level);
        let msb = if level == c.start {
            c.ia - 1
        } else {
            lsb + stride - 1
        };
        let at = base + 8 * bits(va, msb, lsb);
        let pa = match s2 {
            Some(s2c) => match ref_walk(o, s2c, at, Access::READ, true, None) {
                Ref::Ok(pa, _) => pa,
                Ref::Fault(k, l, _) => return Ref::Fault(k, l, true),
            },
            None => at,
        };
        let Some(d) = o.read(pa) else {
            return fault("eabt", level, c);
        };
        match d & 3 {
            0 | 2 => return fault("translation", level, c),
            1 => {
                let block_ok = match c.grain {
                    12 => level == 1 || level == 2,
                    14 => level == 2,
                    _ => level == 2 || (level == 1 && c.lpa),
                };
                if level == 3 || !block_ok {
                    return fault("translation", level, c);
                }
                break (d, at);
            }
            _ if level == 3 => break (d, at),
            _ => {
                let next = ref_addr(d, c.grain, c.grain);
                if next >= (1u64 << c.pa_bits) {
                    return fault("addrsize", level, c);
                }
                if !c.stage2 && !c.had {
                    no_el0 |= bits(d, 61, 61) == 1;
                    no_write |= bits(d, 62, 62) == 1;
                    uxn_t |= bits(d, 60, 60) == 1;
                    pxn_t |= bits(d, 59, 59) == 1;
                }
                base = next;
                level += 1;
            }
        }
    };
    let lsb = lsb_of(level);
    let oa = ref_addr(desc, c.grain, lsb);
    if oa >= (1u64 << c.pa_bits) {
        return fault("addrsize", level, c);
    }
    if bits(desc, 10, 10) == 0 && !c.ha && !c.affd {
        return fault("access", level, c);
    }
    // Permissions: (read, write now, write once dirty, execute).
    let (r, w, wc, x) = if c.stage2 {
        let s2ap = bits(desc, 7, 6);
        let dirty_ok = c.hd && bits(desc, 51, 51) == 1;
        (
            s2ap & 1 == 1,
            s2ap & 2 == 2,
            s2ap & 2 == 0 && dirty_ok,
            bits(desc, 54, 54) == 0,
        )
    } else {
        stage1_perms(
            c,
            desc,
            want.contains(Access::PRIV),
            (no_el0, no_write, uxn_t, pxn_t),
        )
    };
    let device = c.stage2 && bits(desc, 5, 4) == 0;
    if (want.contains(Access::READ) && !r)
        || (want.contains(Access::WRITE) && !w && !wc)
        || (want.contains(Access::EXEC) && !x)
        || (table_walk && c.ptw && device)
    {
        return fault("permission", level, c);
    }
    let dirtying = want.contains(Access::WRITE) && !w;
    let mut new = desc;
    if c.ha {
        new |= 1 << 10;
    }
    if dirtying {
        new = if c.stage2 {
            new | (1 << 7)
        } else {
            new & !(1 << 7)
        };
    }
    if new != desc {
        let pa = match s2 {
            Some(s2c) => match ref_walk(o, s2c, at, Access::WRITE, true, None) {
                Ref::Ok(pa, _) => pa,
                Ref::Fault(k, l, _) => return Ref::Fault(k, l, true),
            },
            None => at,
        };
        o.writes.insert(pa, new);
    }
    let mut granted = Access::empty();
    granted.set(Access::READ, r);
    granted.set(Access::WRITE, w || dirtying);
    granted.set(Access::EXEC, x);
    Ref::Ok(oa | (va & ((1u64 << lsb) - 1)), granted)
}

/// Arm ARM stage-1 data access permissions from AP[2:1] (00 EL1 RW, 01
/// EL1/EL0 RW, 10 EL1 RO, 11 EL1/EL0 RO), with APTable forcing AP[1] to 0
/// or AP[2] to 1, DBM making AP[2] = 1 writable-clean under HD, and the
/// execute rules (UXN/PXN, their table forms, WXN, and EL1 never
/// executing EL0-writable memory).
fn stage1_perms(
    c: &RefCfg,
    d: u64,
    privileged: bool,
    t: (bool, bool, bool, bool),
) -> (bool, bool, bool, bool) {
    let (no_el0, no_write, uxn_t, pxn_t) = t;
    let ap1 = bits(d, 6, 6) == 1 && !no_el0;
    let ap2 = bits(d, 7, 7) == 1 || no_write;
    let clean = bits(d, 7, 7) == 1 && !no_write && c.hd && bits(d, 51, 51) == 1;
    let (el1_rw, el0_r, el0_w) = match (ap2, ap1) {
        (false, false) => (true, false, false),
        (false, true) => (true, true, true),
        (true, false) => (false, false, false),
        (true, true) => (false, true, false),
    };
    let el0_wc = ap1 && clean;
    let writable = el1_rw || clean;
    let (r, w, wc) = if privileged {
        (true, el1_rw, clean)
    } else {
        (el0_r, el0_w, el0_wc)
    };
    let x = if privileged {
        bits(d, 53, 53) == 0 && !pxn_t && !(el0_w || el0_wc)
    } else {
        bits(d, 54, 54) == 0 && !uxn_t
    };
    (r, w, wc, x && !(c.wxn && writable))
}

// -- comparison -----------------------------------------------------------

fn model(w: Walk, addr: u64) -> Ref {
    match w {
        Walk::Mapped(l) => Ref::Ok(l.output(addr), l.granted),
        Walk::Fault(WalkFault { kind, level, s2 }) => {
            let k = match kind {
                FaultKind::Translation => "translation",
                FaultKind::AddressSize => "addrsize",
                FaultKind::AccessFlag => "access",
                FaultKind::Permission => "permission",
                FaultKind::ExternalAbort { .. } => "eabt",
            };
            Ref::Fault(k, level, s2.is_some())
        }
    }
}

/// Stage-2 reach for the model's nested stage-1 walk (the same as the
/// model's own, written here against the walker's public API).
struct ViaS2<'a> {
    mem: &'a GuestMemoryMmap<()>,
    s2: TableConfig,
}

impl TableAccess for ViaS2<'_> {
    fn resolve(&mut self, addr: u64, write: bool) -> Result<u64, WalkFault> {
        let access = if write { Access::WRITE } else { Access::READ };
        let req = WalkReq {
            addr,
            access,
            table_walk: true,
        };
        match walk(self.mem, &self.s2, &mut Direct, &req) {
            Walk::Mapped(l) => Ok(l.output(addr)),
            Walk::Fault(f) => Err(f),
        }
    }
}

fn check_writes(mem: &GuestMemoryMmap<()>, o: &Overlay<'_>) -> Result<(), TestCaseError> {
    for (pa, v) in &o.writes {
        let got = mem.read_u64_le(Gpa(*pa)).unwrap();
        prop_assert_eq!(got, *v, "descriptor at {:#x}", pa);
    }
    Ok(())
}

// -- strategies -----------------------------------------------------------

fn granule() -> impl Strategy<Value = Granule> {
    prop::sample::select(Granule::ALL.to_vec())
}

/// One mapping: address seed, level, output page seed, attribute bits.
type MapSpec = (u64, u32, u64, u64);

fn maps() -> impl Strategy<Value = Vec<MapSpec>> {
    // Attribute bits: AP[2:1], AF, nG, DBM, PXN, XN, MemAttr[5:4].
    const BITS: [u32; 9] = [4, 5, 6, 7, 10, 11, 51, 53, 54];
    let attrs = any::<u16>().prop_map(|m| {
        BITS.iter()
            .enumerate()
            .filter(|(i, _)| m >> i & 1 == 1)
            .fold(0u64, |a, (_, b)| a | (1u64 << b))
    });
    prop::collection::vec((any::<u64>(), 0u32..4, any::<u64>(), attrs), 1..12)
}

/// Corruptions: (word index in the table pool, bits to flip, never the
/// contiguous bit).
fn corrupt() -> impl Strategy<Value = Vec<(u64, u64)>> {
    prop::collection::vec((0..(3u64 << 17), any::<u64>()), 0..3)
}

fn queries() -> impl Strategy<Value = Vec<(u64, u8, bool)>> {
    // (address seed, access bits R/W/X/PRIV, near a mapping).
    prop::collection::vec((any::<u64>(), 0u8..16, any::<bool>()), 1..24)
}

fn ram() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// Builds `specs` into `t` (output pages spread over `2^out_bits`, some
/// beyond the output size) and returns the mapped addresses.
fn build(
    mem: &GuestMemoryMmap<()>,
    a: &mut PageAlloc,
    t: &PageTable,
    specs: &[MapSpec],
    out_bits: u32,
) -> Vec<(u64, u32)> {
    let c = t.cfg;
    let mut mapped = Vec::new();
    for &(seed, lvl, out, attrs) in specs {
        let level = c.start_level.max(lvl);
        let size_bits = c.granule.level_shift(level);
        let va = seed & ((1u64 << c.ia_bits) - 1) & !((1u64 << size_bits) - 1);
        // One output in eight beyond the output size.
        let beyond = if out & 7 == 0 { 1u64 << out_bits } else { 0 };
        let oa =
            (((out >> 3) % (1u64 << out_bits)) | beyond) & !((1u64 << size_bits) - 1) & !(1 << 49);
        t.map(mem, a, va, oa, level, attrs);
        mapped.push((va, size_bits));
    }
    mapped
}

fn flip(mem: &GuestMemoryMmap<()>, corrupt: &[(u64, u64)]) {
    for &(word, mask) in corrupt {
        let at = POOL + 8 * word;
        let v = mem.read_u64_le(Gpa(at)).unwrap();
        mem.write_u64_le(Gpa(at), v ^ (mask & !(1 << 52))).unwrap();
    }
}

fn query_addr(seed: u64, near: bool, mapped: &[(u64, u32)], ia: u32) -> u64 {
    if near && !mapped.is_empty() {
        let (base, size) = mapped[(seed as usize) % mapped.len()];
        base + ((seed >> 16) & ((1u64 << size) - 1))
    } else {
        seed & ((1u64 << ia) - 1)
    }
}

fn access_of(bits: u8) -> Access {
    Access::from_bits_truncate(bits)
}

fn run_one(
    mem: &GuestMemoryMmap<()>,
    cfg: &TableConfig,
    s2: Option<&TableConfig>,
    addr: u64,
    access: Access,
) -> Result<(), TestCaseError> {
    let mut o = Overlay {
        mem,
        writes: BTreeMap::new(),
    };
    let rc = RefCfg::of(cfg);
    let rs2 = s2.map(RefCfg::of);
    let want = ref_walk(&mut o, &rc, addr, access, false, rs2.as_ref());
    let req = WalkReq {
        addr,
        access,
        table_walk: false,
    };
    let got = match s2 {
        Some(s) => {
            let mut t = ViaS2 { mem, s2: *s };
            model(walk(mem, cfg, &mut t, &req), addr)
        }
        None => model(walk(mem, cfg, &mut Direct, &req), addr),
    };
    prop_assert_eq!(got, want, "addr {:#x} access {:?}", addr, access);
    check_writes(mem, &o)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn stage1_walk_matches_reference(
        g in granule(),
        tsz in 16u32..=39,
        specs in maps(),
        bad in corrupt(),
        qs in queries(),
        flags in any::<[bool; 5]>(),
        oa in prop::sample::select(vec![32u32, 40, 44, 48]),
    ) {
        let mem = ram();
        let mut a = PageAlloc::new(POOL, 3 << 20);
        let mut t = PageTable::stage1(&mem, &mut a, g, 64 - tsz, oa);
        let mapped = build(&mem, &mut a, &t, &specs, oa);
        flip(&mem, &bad);
        let [ha, hd, affd, had, wxn] = flags;
        t.cfg.ha = ha;
        t.cfg.hd = ha && hd;
        t.cfg.affd = affd;
        t.cfg.had = had;
        t.cfg.wxn = wxn;
        for (seed, acc, near) in qs {
            let addr = query_addr(seed, near, &mapped, t.cfg.ia_bits);
            run_one(&mem, &t.cfg, None, addr, access_of(acc))?;
        }
    }

    #[test]
    fn stage2_walk_matches_reference(
        g in granule(),
        ia in 25u32..=44,
        sl0 in 0u8..3,
        specs in maps(),
        bad in corrupt(),
        qs in queries(),
        flags in any::<[bool; 4]>(),
    ) {
        let Some(geom) = TableConfig::stage2(g, 64 - ia, sl0, 0, 48) else {
            return Ok(());
        };
        let mem = ram();
        let mut a = PageAlloc::new(POOL, 3 << 20);
        let mut t = PageTable::stage2(&mem, &mut a, g, geom.ia_bits, sl0, 48);
        let mapped = build(&mem, &mut a, &t, &specs, 48);
        flip(&mem, &bad);
        let [ha, hd, affd, ptw] = flags;
        t.cfg.ha = ha;
        t.cfg.hd = ha && hd;
        t.cfg.affd = affd;
        t.cfg.ptw = ptw;
        for (seed, acc, near) in qs {
            // Some queries beyond the IPA space.
            let addr = query_addr(seed, near, &mapped, (ia + 1).min(48));
            run_one(&mem, &t.cfg, None, addr, access_of(acc))?;
        }
    }

    #[test]
    fn nested_walk_matches_reference(
        g1 in granule(),
        g2 in granule(),
        specs in maps(),
        holes in prop::collection::vec(0u64..24, 0..3),
        bad in corrupt(),
        qs in queries(),
        flags in any::<[bool; 4]>(),
    ) {
        let mem = ram();
        let mut a = PageAlloc::new(POOL, 3 << 20);
        // Stage 2: 40-bit IPA, identity over RAM except a few 128 KiB
        // holes, read-only where an odd hole index says so; everything
        // above RAM maps 1:1 as one more block run for data pages.
        let mut s2 = PageTable::stage2(&mem, &mut a, g2, 40, 1, 48);
        let page = 1u64 << g2.shift();
        let pages = MEM / page;
        for p in 0..pages {
            let pa = p * page;
            let chunk = pa >> 17;
            if holes.contains(&chunk) && chunk.is_multiple_of(2) {
                continue;
            }
            let write = !holes.contains(&chunk);
            s2.map(&mem, &mut a, pa, pa, 3, crate::mock::pte::s2(true, write));
        }
        let mut s1 = PageTable::stage1(&mem, &mut a, g1, 39, 40);
        let mapped = build(&mem, &mut a, &s1, &specs, 22);
        flip(&mem, &bad);
        let [ha1, ha2, hd, ptw] = flags;
        s1.cfg.ha = ha1;
        s1.cfg.hd = ha1 && hd;
        s2.cfg.ha = ha2;
        s2.cfg.hd = ha2 && hd;
        s2.cfg.ptw = ptw;
        for (seed, acc, near) in qs {
            let addr = query_addr(seed, near, &mapped, 39);
            run_one(&mem, &s1.cfg, Some(&s2.cfg), addr, access_of(acc))?;
        }
    }
}
