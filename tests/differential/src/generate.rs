//! Generated scenarios: proptest strategies choose stream tables (linear
//! and two-level), STEs, CDs and translation tables (stage 1, stage 2,
//! nested; 4, 16 and 64 KiB granules; pages and blocks; permissions,
//! access flags, address sizes), the driver-side mock builds them in a
//! scratch copy of guest RAM (`smmuv3::mock`: `PageTable`, `PageAlloc`),
//! and every non-zero word becomes a `write64` of a `.viommu` script,
//! followed by DMA writes at mapped, unmapped and out-of-range
//! addresses. The script is what both sides run, and what a failing case
//! prints.
//!
//! Cases are drawn from a fixed seed without shrinking (each case starts
//! QEMU; shrinking would start it hundreds of times): the same seed gives
//! the same cases, and `--save` keeps a failing one as a script.
//!
//! Most choices are architecturally valid, so translations succeed and
//! their addresses are compared; a minority probe the edges (invalid
//! descriptors, blocks at levels that allow none, access flag clear,
//! read-only and privileged-only pages, output beyond IPS/S2PS, input
//! beyond TxSZ, stage-2 faults on stage-1 table walks, invalid STEs and
//! CDs).

use std::fmt::Write as _;

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use smmuv3::cd::Cd;
use smmuv3::mock::{PageAlloc, PageTable, pte, with_s2};
use smmuv3::regs::queue_base::QueueBase;
use smmuv3::regs::strtab_base::StrtabBase;
use smmuv3::regs::strtab_base_cfg::StrtabBaseCfg;
use smmuv3::strtab::{L1Std, STE_SIZE, Ste, SteMode};
use smmuv3::walk::Granule;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::qemu::{QemuStage, RAM_BASE};

/// RAM of a generated case.
const RAM: u64 = 16 << 20;
/// DMA targets: the first 4 MiB of RAM (blocks map from RAM_BASE).
const DATA: u64 = 4 << 20;
/// Command queue, event queue and stream table.
const CMDQ: u64 = RAM_BASE + DATA;
const EVTQ: u64 = CMDQ + 0x1000;
const STRTAB: u64 = CMDQ + 0x10000;
/// Level-2 stream tables.
const STRTAB_L2: u64 = CMDQ + 0x20000;
/// CDs and translation tables, allocated by the mock.
const POOL: u64 = RAM_BASE + (6 << 20);
/// log2 of the event queue's entries (4 KiB).
const EVTQ_LOG2: u8 = 7;
/// log2 of the command queue's entries.
const CMDQ_LOG2: u8 = 8;

/// A generated scenario.
#[derive(Clone, Debug)]
pub struct Case {
    /// `generated:STAGE:N`.
    pub name: String,
    /// The script.
    pub text: String,
}

/// How a leaf is made.
#[derive(Clone, Copy, Debug)]
enum LeafKind {
    /// A page at level 3.
    Page,
    /// A block at the level above.
    Block,
    /// A block at a level where the granule allows none.
    BadBlock,
}

/// One stage-1 or stage-2 mapping.
#[derive(Clone, Debug)]
struct Map {
    kind: LeafKind,
    /// Read-only (S1 AP[2]; S2AP write clear).
    read_only: bool,
    /// Privileged only (S1 AP[1] = 0) / no access at all (S2AP = 0).
    no_unpriv: bool,
    /// Access flag clear.
    af_clear: bool,
    /// Output beyond the output size.
    high_output: bool,
    /// Entropy for addresses.
    seed: u64,
    /// Offset of the DMA inside the leaf.
    offset: u64,
}

fn map() -> impl Strategy<Value = Map> {
    (
        prop_oneof![8 => Just(LeafKind::Page), 3 => Just(LeafKind::Block), 1 => Just(LeafKind::BadBlock)],
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.06),
        prop::bool::weighted(0.08),
        prop::bool::weighted(0.04),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(kind, read_only, no_unpriv, af_clear, high_output, seed, offset)| Map {
                kind,
                read_only,
                no_unpriv,
                af_clear,
                high_output,
                seed,
                offset,
            },
        )
}

/// One stage's tables.
#[derive(Clone, Debug)]
struct StageSpec {
    granule: Granule,
    /// Input bits (64 - TxSZ).
    ia_bits: u32,
    /// IPS / S2PS encoding.
    ps: u8,
    /// Access flag faults disabled.
    affd: bool,
    /// Record faults (CD.R / STE.S2R).
    record: bool,
    /// Stage 2: SL0 choice (reduced to a valid one); stage 1: TBI0.
    pick: u8,
    /// ASID / VMID.
    tag: u16,
}

fn granule() -> impl Strategy<Value = Granule> {
    prop_oneof![Just(Granule::G4K), Just(Granule::G16K), Just(Granule::G64K)]
}

fn stage_spec() -> impl Strategy<Value = StageSpec> {
    (
        granule(),
        32u32..=44,
        prop_oneof![1 => 0u8..=3, 6 => 4u8..=5],
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.9),
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(
            |(granule, ia_bits, ps, affd, record, pick, tag)| StageSpec {
                granule,
                ia_bits,
                ps,
                affd,
                record,
                pick,
                tag,
            },
        )
}

/// What a stream's STE is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Translate,
    Bypass,
    Abort,
    Invalid,
}

/// Edge cases of the stream's configuration.
#[derive(Clone, Copy, Debug, Default)]
struct Quirks {
    /// CD.V = 0.
    cd_invalid: bool,
    /// CD.EPD0 = 1.
    epd0: bool,
    /// STE.S1STALLD = 1.
    s1stalld: bool,
    /// CD.A = 0.
    cd_abort_clear: bool,
    /// CD.S = 1.
    cd_stall: bool,
    /// STE.S1CDMax = 1 (with a linear table of two CDs).
    cdmax: bool,
    /// Stage-1 tables of a nested stream partly outside stage 2.
    tables_outside_s2: bool,
    /// CD.HA and CD.HD, which QEMU's IDR0.HTTU = 0 makes ILLEGAL.
    cd_httu: bool,
}

fn quirks() -> impl Strategy<Value = Quirks> {
    prop::collection::vec(prop::bool::weighted(0.03), 8).prop_map(|v| Quirks {
        cd_invalid: v[0],
        epd0: v[1],
        s1stalld: v[2],
        cd_abort_clear: v[3],
        cd_stall: v[4],
        cdmax: v[5],
        tables_outside_s2: v[6],
        cd_httu: v[7],
    })
}

/// One stream.
#[derive(Clone, Debug)]
struct Stream {
    sid: u8,
    mode: Mode,
    /// On a nested SMMU: 0 nested, 1 stage 1 only, 2 stage 2 only.
    nested_kind: u8,
    s1: StageSpec,
    s2: StageSpec,
    quirks: Quirks,
    maps: Vec<Map>,
    /// Extra DMA addresses (unmapped or out of range).
    extra: Vec<u64>,
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        8u8..=255,
        prop_oneof![
            24 => Just(Mode::Translate),
            1 => Just(Mode::Bypass),
            1 => Just(Mode::Abort),
            1 => Just(Mode::Invalid)
        ],
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        stage_spec(),
        stage_spec(),
        quirks(),
        prop::collection::vec(map(), 2..6),
        prop::collection::vec(any::<u64>(), 1..3),
    )
        .prop_map(
            |(sid, mode, nested_kind, s1, s2, quirks, maps, extra)| Stream {
                sid,
                mode,
                nested_kind,
                s1,
                s2,
                quirks,
                maps,
                extra,
            },
        )
}

/// The stream table.
#[derive(Clone, Copy, Debug)]
struct Strtab {
    two_level: bool,
    /// SPLIT for two-level tables (6 or 8).
    split: u8,
    /// LOG2SIZE.
    log2size: u8,
    /// Span shortened (a StreamID beyond a level-2 table).
    short_span: bool,
}

fn strtab() -> impl Strategy<Value = Strtab> {
    (
        prop::bool::ANY,
        prop_oneof![Just(6u8), Just(8u8)],
        prop_oneof![6 => Just(8u8), 1 => 5u8..=7],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(two_level, split, log2size, short_span)| Strtab {
            two_level,
            split,
            log2size: if two_level {
                log2size.max(split)
            } else {
                log2size
            },
            short_span,
        })
}

/// A whole case.
#[derive(Clone, Debug)]
struct CaseSpec {
    strtab: Strtab,
    streams: Vec<Stream>,
}

fn case_spec() -> impl Strategy<Value = CaseSpec> {
    (strtab(), prop::collection::vec(stream(), 1..=3))
        .prop_map(|(strtab, streams)| CaseSpec { strtab, streams })
}

/// `n` cases for each QEMU stage setting, from `seed`.
pub fn cases(seed: u64, n: u32) -> Vec<Case> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = case_spec();
    let mut out = Vec::new();
    for stage in [QemuStage::S1, QemuStage::S2, QemuStage::Nested] {
        for i in 0..n {
            let Ok(tree) = strategy.new_tree(&mut runner) else {
                continue;
            };
            let spec = tree.current();
            out.push(Case {
                name: format!("generated:{}:{i}", stage.name()),
                text: build(stage, &spec),
            });
        }
    }
    out
}

/// Builds the script of `spec` for an SMMU with `stage`.
fn build(stage: QemuStage, spec: &CaseSpec) -> String {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RAM_BASE), RAM as usize)])
        .expect("scratch RAM");
    let mut b = Builder {
        mem,
        alloc: PageAlloc::new(POOL, RAM_BASE + RAM - POOL),
        dmas: Vec::new(),
        stage,
    };
    let mut seen = Vec::new();
    for s in &spec.streams {
        if seen.contains(&s.sid) {
            continue;
        }
        seen.push(s.sid);
        let at = b.ste_slot(&spec.strtab, s.sid);
        b.stream(s, at);
    }
    b.script(&spec.strtab)
}

struct Builder {
    mem: GuestMemoryMmap<()>,
    alloc: PageAlloc,
    /// (sid, iova) of every DMA, in order.
    dmas: Vec<(u8, u64)>,
    stage: QemuStage,
}

fn wr(mem: &GuestMemoryMmap<()>, at: u64, v: u64) {
    mem.write_u64_le(Gpa(at), v).expect("scratch RAM");
}

/// `x` aligned down to the 4-byte DMA.
fn word(x: u64) -> u64 {
    x & !3
}

/// IPS / S2PS encoding to bits.
fn ps_bits(ps: u8) -> u32 {
    [32, 36, 40, 42, 44, 48, 52][usize::from(ps.min(6))]
}

/// Leaf bits of a stage-1 mapping.
fn s1_attrs(m: &Map) -> u64 {
    let mut a = pte::s1(!m.read_only, m.no_unpriv, false);
    if m.af_clear {
        a &= !pte::AF;
    }
    a
}

/// Leaf bits of a stage-2 mapping.
fn s2_attrs(m: &Map) -> u64 {
    let mut a = pte::s2(!m.no_unpriv, !m.read_only);
    if m.af_clear {
        a &= !pte::AF;
    }
    a
}

/// A valid S2SL0 for `granule` and `ia_bits` (IHI 0070 5.2 STE.S2SL0),
/// chosen by `pick` among the valid ones.
fn sl0_for(granule: Granule, ia_bits: u32, pick: u8) -> Option<u8> {
    let valid: Vec<u8> = (0u8..=2)
        .filter(|sl0| {
            smmuv3::walk::TableConfig::stage2(granule, 64 - ia_bits, *sl0, 0, 48).is_some()
        })
        .collect();
    (!valid.is_empty()).then(|| valid[usize::from(pick) % valid.len()])
}

impl Builder {
    /// Where StreamID `sid`'s STE goes (building level-1 descriptors), or
    /// `None` when the table has no room for it.
    fn ste_slot(&mut self, st: &Strtab, sid: u8) -> Option<u64> {
        let sid = u64::from(sid);
        if sid >> st.log2size != 0 {
            return None;
        }
        if !st.two_level {
            return Some(STRTAB + STE_SIZE * sid);
        }
        let split = u64::from(st.split);
        let l1 = STRTAB + 8 * (sid >> split);
        let l2 = STRTAB_L2 + (STE_SIZE << split) * (sid >> split);
        let span = if st.short_span { 2 } else { st.split + 1 };
        wr(
            &self.mem,
            l1,
            L1Std::default().with_span(span).with_l2ptr(l2).0,
        );
        let index = sid & ((1 << split) - 1);
        (index >> (span - 1) == 0).then_some(l2 + STE_SIZE * index)
    }

    fn stream(&mut self, s: &Stream, at: Option<u64>) {
        let ste = match s.mode {
            Mode::Invalid => Some(Ste::default()),
            Mode::Abort => Some(Ste::default().with_v(true).with_config(SteMode::Abort)),
            Mode::Bypass => Some(Ste::default().with_v(true).with_config(SteMode::Bypass)),
            Mode::Translate => self.translating_ste(s),
        };
        if let (Some(at), Some(ste)) = (at, ste) {
            for (i, w) in ste.0.iter().enumerate() {
                wr(&self.mem, at + 8 * i as u64, *w);
            }
        }
        if s.mode != Mode::Translate {
            for m in &s.maps {
                self.dmas.push((s.sid, RAM_BASE + word(m.seed % DATA)));
            }
        }
        for e in &s.extra {
            self.dmas.push((s.sid, word(e & ((1u64 << 48) - 1))));
        }
    }

    fn which(&self, s: &Stream) -> (bool, bool) {
        match self.stage {
            QemuStage::S1 => (true, false),
            QemuStage::S2 => (false, true),
            QemuStage::Nested => match s.nested_kind {
                1 => (true, false),
                2 => (false, true),
                _ => (true, true),
            },
        }
    }

    fn translating_ste(&mut self, s: &Stream) -> Option<Ste> {
        let (has_s1, has_s2) = self.which(s);
        // Stage 2 first: a nested stage 1 needs to know its IPA offset.
        let s2 = if has_s2 {
            let sl0 = sl0_for(s.s2.granule, s.s2.ia_bits, s.s2.pick)?;
            let oa = ps_bits(s.s2.ps).min(44);
            Some(PageTable::stage2(
                &self.mem,
                &mut self.alloc,
                s.s2.granule,
                s.s2.ia_bits,
                sl0,
                oa,
            ))
        } else {
            None
        };
        // Stage-1 structures are at IPA = PA + offset when nested: an
        // offset that keeps the pool inside the IPA space.
        let ipa_offset = match s2 {
            Some(_) if has_s1 && s.s2.ia_bits > 33 => 0x1_0000_0000,
            _ => 0,
        };
        let mut ste = Ste::default().with_v(true);
        let pool_start = self.alloc.clone().alloc(&self.mem, 0, 1);
        if has_s1 {
            let (cd_ptr, s1_maps) = self.stage1(s, ipa_offset);
            ste = ste
                .with_config(if has_s2 { SteMode::Nested } else { SteMode::S1 })
                .with_s1_context_ptr(cd_ptr + ipa_offset)
                .with_s1stalld(s.quirks.s1stalld);
            if s.quirks.cdmax {
                ste = ste.with_s1cdmax(1);
            }
            if let Some(t) = &s2 {
                let pool_end = self.alloc.clone().alloc(&self.mem, 0, 1);
                self.map_pool_in_s2(s, t, pool_start, pool_end, ipa_offset);
                for (ipa, m) in s1_maps {
                    self.map_ipa(s, t, ipa, &m);
                }
            }
        } else {
            ste = ste.with_config(SteMode::S2);
            if let Some(t) = &s2 {
                for m in &s.maps {
                    let iova = self.map_one(t, &s.s2, m, false);
                    self.dmas.push((s.sid, iova));
                }
            }
        }
        if let Some(t) = &s2 {
            ste = with_s2(ste, s.s2.tag, t, s.s2.ps)
                .with_s2affd(s.s2.affd)
                .with_s2r(s.s2.record);
        }
        Some(ste)
    }

    /// The CD and stage-1 tables; returns the CD's PA and, for each
    /// mapping, the IPA/PA its DMA reaches with its mapping spec.
    fn stage1(&mut self, s: &Stream, ipa_offset: u64) -> (u64, Vec<(u64, Map)>) {
        let oa = ps_bits(s.s1.ps).min(44);
        let cds = if s.quirks.cdmax { 2 } else { 1 };
        let cd_at = self.alloc.alloc(&self.mem, 64 * cds, 64);
        let t = PageTable::stage1(&self.mem, &mut self.alloc, s.s1.granule, s.s1.ia_bits, oa)
            .with_ipa_offset(ipa_offset);
        let tbi = s.s1.pick.is_multiple_of(8);
        let mut cd = Cd::default()
            .with_t0sz(u8::try_from(64 - s.s1.ia_bits).unwrap_or(16))
            .with_tg0(s.s1.granule.tg0())
            .with_epd1(true)
            .with_epd0(s.quirks.epd0)
            .with_v(!s.quirks.cd_invalid)
            .with_ips(s.s1.ps)
            .with_affd(s.s1.affd)
            .with_tbi0(tbi)
            .with_aa64(true)
            .with_r(s.s1.record)
            .with_a(!s.quirks.cd_abort_clear)
            .with_s(s.quirks.cd_stall)
            .with_ha(s.quirks.cd_httu)
            .with_hd(s.quirks.cd_httu)
            .with_aset(true)
            .with_asid(s.s1.tag)
            .with_ttb0(t.root());
        if s.quirks.tables_outside_s2 && ipa_offset != 0 {
            // TTB0 at an IPA stage 2 does not map.
            cd = cd.with_ttb0(t.root() - ipa_offset);
        }
        for (i, w) in cd.0.iter().enumerate() {
            wr(&self.mem, cd_at + 8 * i as u64, *w);
        }
        let nested = ipa_offset != 0 || self.which(s).1;
        let mut out = Vec::new();
        for m in &s.maps {
            let iova = self.map_one(&t, &s.s1, m, nested);
            let top = if tbi { (m.seed >> 56) << 56 } else { 0 };
            self.dmas.push((s.sid, iova | top));
            out.push((self.output_of(&t, iova), m.clone()));
        }
        (cd_at, out)
    }

    /// The output address the tables give `iova` (0 if none).
    fn output_of(&self, t: &PageTable, iova: u64) -> u64 {
        let g = t.cfg.granule;
        for level in t.cfg.start_level..=3 {
            let d = t.get(&self.mem, iova, level);
            let is_leaf = level == 3 || d & 3 == 1;
            if d & 1 == 0 {
                return 0;
            }
            if is_leaf {
                let shift = g.level_shift(level);
                let oa = smmuv3::walk::descriptor_address(d, g, shift);
                return oa | (iova & ((1u64 << shift) - 1));
            }
        }
        0
    }

    /// Maps one leaf of `m` in `t`; returns the DMA's input address.
    fn map_one(&mut self, t: &PageTable, st: &StageSpec, m: &Map, to_ipa: bool) -> u64 {
        let g = t.cfg.granule;
        let start = t.cfg.start_level;
        let level = match m.kind {
            LeafKind::Page => 3,
            LeafKind::Block => {
                if g.block_allowed(2, false) && start <= 2 {
                    2
                } else {
                    3
                }
            }
            LeafKind::BadBlock => match g {
                Granule::G4K if start == 0 => 0,
                Granule::G16K | Granule::G64K if start <= 1 => 1,
                _ => 3,
            },
        };
        let shift = g.level_shift(level);
        let ia = t.cfg.ia_bits;
        let leaf_iova = (m.seed % (1u64 << ia)) & !((1u64 << shift) - 1);
        let bad_block = matches!(m.kind, LeafKind::BadBlock) && level < 2;
        let (oa, offset) = if bad_block {
            // The output bits below a block's size are ignored, so the
            // DMA's own offset decides where QEMU (which takes the block)
            // writes: inside RAM.
            (0, RAM_BASE + word(m.offset % DATA))
        } else if to_ipa {
            // A nested stage 1 outputs IPAs; stage 2 maps them later.
            let ipa = (m.seed.rotate_left(17) % (1u64 << 40)) & !((1u64 << shift) - 1);
            (ipa, word(m.offset % (1u64 << shift).min(1 << 16)))
        } else if m.high_output {
            let bits = ps_bits(st.ps).min(44);
            (
                (1u64 << bits) & !((1u64 << shift) - 1),
                word(m.offset % 0x1000),
            )
        } else {
            let size = 1u64 << shift;
            let slots = (DATA / size).max(1);
            let oa = RAM_BASE + size * (m.seed.rotate_left(29) % slots);
            (oa, word(m.offset % size.min(DATA)))
        };
        let attrs = match t.cfg.stage {
            smmuv3::walk::Stage::One => s1_attrs(m),
            smmuv3::walk::Stage::Two => s2_attrs(m),
        };
        t.map(&self.mem, &mut self.alloc, leaf_iova, oa, level, attrs);
        leaf_iova + offset
    }

    /// Stage 2 maps the pool pages stage-1 structures use, IPA = PA +
    /// offset, read-write.
    fn map_pool_in_s2(&mut self, s: &Stream, t: &PageTable, from: u64, to: u64, off: u64) {
        let g = 1u64 << t.cfg.granule.shift();
        let mut pa = from & !(g - 1);
        let attrs = pte::s2(true, true);
        while pa < to {
            if pa + off < (1u64 << s.s2.ia_bits) {
                t.map(&self.mem, &mut self.alloc, pa + off, pa, 3, attrs);
            }
            pa += g;
        }
    }

    /// Stage 2 maps the granule holding `ipa` to a data page (or leaves
    /// it unmapped, or beyond S2PS), as `m` says.
    fn map_ipa(&mut self, s: &Stream, t: &PageTable, ipa: u64, m: &Map) {
        if ipa == 0 || ipa >> s.s2.ia_bits != 0 || m.seed.is_multiple_of(11) {
            return;
        }
        let g = t.cfg.granule.shift();
        let page = ipa & !((1u64 << g) - 1);
        let oa = if m.high_output {
            1u64 << ps_bits(s.s2.ps).min(44)
        } else {
            let slots = DATA >> g;
            RAM_BASE + ((m.seed.rotate_left(7) % slots) << g)
        };
        t.map(&self.mem, &mut self.alloc, page, oa, 3, s2_attrs(m));
    }

    /// The script: setup, every non-zero word, enable, then the DMAs.
    fn script(&self, st: &Strtab) -> String {
        let mut out = String::new();
        let stages = match self.stage {
            QemuStage::S1 => "s1",
            QemuStage::S2 => "s2",
            QemuStage::Nested => "nested",
        };
        let _ = writeln!(out, "model smmuv3 stages={stages}");
        let _ = writeln!(out, "ram {RAM_BASE:#x} {RAM:#x}");
        let cfg = StrtabBaseCfg::default()
            .with_log2size(st.log2size)
            .with_split(if st.two_level { st.split } else { 0 })
            .with_fmt(u8::from(st.two_level));
        let base = StrtabBase::default().with_addr(STRTAB).with_ra(true);
        let cmdq = QueueBase::default()
            .with_addr(CMDQ)
            .with_log2size(CMDQ_LOG2);
        let evtq = QueueBase::default()
            .with_addr(EVTQ)
            .with_log2size(EVTQ_LOG2);
        let _ = writeln!(out, "mmio-write64 0x80 {:#x}", base.0);
        let _ = writeln!(out, "mmio-write32 0x88 {:#x}", cfg.0);
        let _ = writeln!(out, "mmio-write64 0x90 {:#x}", cmdq.0);
        let _ = writeln!(out, "mmio-write64 0xa0 {:#x}", evtq.0);
        let mut buf = vec![0u8; (RAM - DATA) as usize];
        let _ = self.mem.read_bytes_at(Gpa(RAM_BASE + DATA), &mut buf);
        for (i, w) in buf.chunks(8).enumerate() {
            let v = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            if v != 0 {
                let _ = writeln!(out, "write64 {:#x} {v:#x}", RAM_BASE + DATA + 8 * i as u64);
            }
        }
        // CMDQEN, EVENTQEN, SMMUEN.
        let _ = writeln!(out, "mmio-write32 0x20 0xd");
        for (sid, iova) in &self.dmas {
            let _ = writeln!(out, "translate {sid:#x} {iova:#x} w => fault");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    #[test]
    fn cases_are_deterministic_and_parse() {
        let a = cases(7, 3);
        let b = cases(7, 3);
        assert_eq!(a.len(), 9);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.text, y.text);
            let s = Scenario::parse(&x.name, &x.text).expect("generated script parses");
            assert!(!s.sids.is_empty());
        }
    }

    #[test]
    fn valid_sl0_exists_for_common_geometries() {
        assert_eq!(sl0_for(Granule::G4K, 40, 0), Some(1));
        assert!(sl0_for(Granule::G64K, 44, 3).is_some());
    }
}
