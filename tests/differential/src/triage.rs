//! Known departures: disagreements already judged against IHI 0070 in
//! `docs/smmuv3-differential.md`, each recognised by a predicate over
//! the disagreement, what both sides did in that step and the
//! configuration structures of its stream (as our side's memory holds
//! them). A disagreement no departure explains is unexpected and fails
//! the run.
//!
//! A departure may also claim the register symptoms it leaves behind in
//! the rest of its scenario (`consequences`): once QEMU drops an event
//! or skips a command, its queue indices and GERROR stay different.

use smmuv3::Smmuv3Config;
use smmuv3::caps::Caps;
use smmuv3::cd::{Cd, select_region};
use smmuv3::event::{EventId, EventRecord};
use smmuv3::regs::off;
use smmuv3::strtab::{BadSte, L1Std, Ste, SteConfig, SteLookup, SteMode, StreamTable};
use smmuv3::walk::{Granule, TableConfig, descriptor_address};
use smmuv3::wire::{read_qwords, read_u64};

use crate::model::ModelSide;
use crate::run::{Disagreement, QemuDma, Subject};

/// A departure: a stable key, the row of the triage document, and how
/// to recognise it.
pub struct Departure {
    /// Stable description (the allow-list key).
    pub key: &'static str,
    /// Anchor in `docs/smmuv3-differential.md`.
    pub doc: &'static str,
    /// Whether `d` is this departure.
    pub matches: fn(&Disagreement, &Evidence) -> bool,
    /// Register (field) names that, later in the same scenario, are this
    /// departure's after-effects.
    pub consequences: &'static [&'static str],
}

impl std::fmt::Debug for Departure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Departure")
            .field("key", &self.key)
            .field("doc", &self.doc)
            .finish()
    }
}

/// What both sides did in one step.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The step's DMA input address, if it was a DMA.
    pub iova: Option<u64>,
    /// Where our DMA went (`None`: fault), if it was a DMA.
    pub ours_dma: Option<Option<u64>>,
    /// QEMU's, if it was a DMA.
    pub qemu_dma: Option<QemuDma>,
    /// Event records each side wrote in the step.
    pub ours_events: Vec<EventRecord>,
    /// QEMU's.
    pub qemu_events: Vec<EventRecord>,
}

/// One walk through a translation table: the descriptors read, from the
/// starting level, and the output if it reached a leaf.
#[derive(Clone, Debug, Default)]
pub struct Path {
    /// Table addresses visited (IPAs for a nested stage 1).
    pub tables: Vec<u64>,
    /// `(level, descriptor)` read at each level.
    pub descs: Vec<(u32, u64)>,
    /// The output address of a leaf (page or block).
    pub output: Option<u64>,
}

impl Path {
    /// The leaf descriptor, if the walk ended on one.
    pub fn leaf(&self) -> Option<(u32, u64)> {
        self.output.and(self.descs.last().copied())
    }
}

/// The stream's configuration as our side's memory holds it, and what
/// happened in the step.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// The step.
    pub facts: Facts,
    /// The level-1 descriptor of a two-level stream table, with SPLIT.
    pub l1: Option<(L1Std, u32)>,
    /// The StreamID.
    pub sid: Option<u32>,
    /// The STE, if it could be located.
    pub ste: Option<Ste>,
    /// Our model's verdict on it.
    pub verdict: Option<Result<SteConfig, BadSte>>,
    /// The CD (SubstreamID 0), if the STE has stage 1 and it is in RAM.
    pub cd: Option<Cd>,
    /// The CD's IPA, for a nested stream.
    pub cd_ipa: Option<u64>,
    /// A nested stream whose CD.TTB0 (an IPA) stage 2 does not map.
    pub ttb0_unmapped: bool,
    /// The stage-1 walk of the DMA's address.
    pub s1: Option<Path>,
    /// The stage-1 table.
    pub s1_table: Option<TableConfig>,
    /// The IPA the DMA reaches (its input with stage 1 bypassed).
    pub ipa: Option<u64>,
    /// The stage-2 walk of that IPA.
    pub s2: Option<Path>,
    /// The SMMU's OAS (= IAS).
    pub oas: u32,
    /// The command at our CMDQ_CONS (where our queue stopped).
    pub cmd_at_cons: Option<[u64; 2]>,
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Walks `t` for `addr` without changing anything, reaching its tables
/// through `to_pa` (stage 2 for a nested stage 1).
fn trace(
    ours: &ModelSide,
    t: &TableConfig,
    addr: u64,
    to_pa: &mut dyn FnMut(u64) -> Option<u64>,
) -> Path {
    let g = t.granule;
    let mut path = Path::default();
    let mut table = t.table_base();
    let mut level = t.start_level;
    // A walk has at most four levels.
    while level <= 3 {
        path.tables.push(table);
        let bits = if level == t.start_level {
            t.start_bits()
        } else {
            g.stride()
        };
        let index = (addr >> g.level_shift(level)) & mask(bits);
        let Some(d) = to_pa(table).and_then(|pa| read_u64(&ours.mem, pa + 8 * index)) else {
            break;
        };
        path.descs.push((level, d));
        if d & 1 == 0 {
            break;
        }
        if level < 3 && d & 3 == 3 {
            table = descriptor_address(d, g, g.shift());
            level += 1;
            continue;
        }
        let shift = g.level_shift(level);
        path.output = Some(descriptor_address(d, g, shift) | (addr & mask(shift)));
        break;
    }
    path
}

impl Evidence {
    /// No stream involved.
    pub fn none(facts: Facts) -> Evidence {
        Evidence {
            facts,
            ..Evidence::default()
        }
    }

    /// Reads what explains a step of StreamID `sid` from our side
    /// (without changing anything: the harness runs without HTTU).
    pub fn gather(
        ours: &ModelSide,
        cfg: &Smmuv3Config,
        sid: Option<u32>,
        facts: Facts,
    ) -> Evidence {
        let caps = Caps::new(cfg);
        let mut ev = Evidence {
            facts,
            oas: caps.oas,
            sid,
            cmd_at_cons: cmd_at_cons(ours),
            ..Evidence::default()
        };
        let Some(sid) = sid else {
            return ev;
        };
        let st = StreamTable::from_regs(
            ours.smmu.mmio_read(off::STRTAB_BASE, 8),
            ours.smmu.mmio_read(off::STRTAB_BASE_CFG, 4),
            &caps,
        );
        if let Some(split) = st.split {
            let at = st.base + 8 * u64::from(sid >> split);
            ev.l1 = read_u64(&ours.mem, at).map(|w| (L1Std(w), split));
        }
        let SteLookup::At(at) = st.locate(&ours.mem, sid) else {
            return ev;
        };
        let Ok(words) = read_qwords::<_, 8>(&ours.mem, at) else {
            return ev;
        };
        let ste = Ste(words);
        let verdict = ste.decode(&caps);
        ev.ste = Some(ste);
        ev.walks(ours, &caps, &ste, &verdict);
        ev.verdict = Some(verdict);
        ev
    }

    fn walks(&mut self, ours: &ModelSide, caps: &Caps, ste: &Ste, v: &Result<SteConfig, BadSte>) {
        let Ok(cfg) = v else { return };
        let s2 = cfg.s2.map(|s| s.table);
        let mut to_pa = |ipa: u64| match &s2 {
            Some(t) => trace(ours, t, ipa, &mut |a| Some(a)).output,
            None => Some(ipa),
        };
        let iova = self.facts.iova;
        if let Some(s1) = cfg.s1 {
            let nested = ste.config() == SteMode::Nested;
            self.cd_ipa = nested.then_some(s1.cd_table);
            self.cd = to_pa(s1.cd_table)
                .and_then(|pa| read_qwords::<_, 8>(&ours.mem, pa).ok())
                .map(Cd);
            if let (true, Some(cd), Some(t)) = (nested, self.cd, &s2) {
                self.ttb0_unmapped = trace(ours, t, cd.ttb0(), &mut |a| Some(a)).output.is_none();
            }
            let table = self
                .cd
                .and_then(|cd| cd.decode(caps, &s1).ok())
                .zip(iova)
                .and_then(|(c, a)| select_region(&c, a));
            if let (Some(t), Some(a)) = (table, iova) {
                let p = trace(ours, &t, a, &mut to_pa);
                self.ipa = p.output.filter(|_| nested);
                self.s1 = Some(p);
                self.s1_table = Some(t);
            }
        } else if s2.is_some() {
            self.ipa = iova;
        }
        if let (Some(t), Some(ipa)) = (&s2, self.ipa) {
            self.s2 = Some(trace(ours, t, ipa, &mut |a| Some(a)));
        }
    }

    /// One line saying what the stream is, for an unexpected
    /// disagreement's reader.
    pub fn describe(&self) -> String {
        let mut out = Vec::new();
        if let Some(ste) = self.ste {
            out.push(format!(
                "STE {:?} -> {:?}",
                ste.config(),
                self.verdict.as_ref().map(|v| v.as_ref().map(|c| c.mode))
            ));
        }
        if let Some(t) = self.s2_table() {
            out.push(format!(
                "S2 {:?} ia {} start L{} ttb {:#x} oa {}",
                t.granule, t.ia_bits, t.start_level, t.ttb, t.oa_bits
            ));
        }
        if let Some(cd) = self.cd {
            out.push(format!(
                "CD v {} t0sz {} tg0 {} ips {} r {} a {} s {} epd0 {} ttb0 {:#x}{}",
                cd.v(),
                cd.t0sz(),
                cd.tg0(),
                cd.ips(),
                cd.r(),
                cd.a(),
                cd.s(),
                cd.epd0(),
                cd.ttb0(),
                self.cd_ipa
                    .map_or(String::new(), |i| format!(" (CD at IPA {i:#x})"))
            ));
        }
        if let Some(p) = &self.s1 {
            out.push(format!(
                "S1 tables {:x?} descs {:x?} out {:x?}",
                p.tables, p.descs, p.output
            ));
        }
        if let Some(p) = &self.s2 {
            out.push(format!(
                "S2 of {:#x}: descs {:x?} out {:x?}",
                self.ipa.unwrap_or(0),
                p.descs,
                p.output
            ));
        }
        out.join("; ")
    }

    fn s2_table(&self) -> Option<TableConfig> {
        self.verdict
            .as_ref()
            .and_then(|v| v.as_ref().ok())
            .and_then(|c| c.s2)
            .map(|s| s.table)
    }

    /// The single event each side wrote in the step, if any.
    fn events(&self) -> (Option<&EventRecord>, Option<&EventRecord>) {
        (
            self.facts.ours_events.first(),
            self.facts.qemu_events.first(),
        )
    }

    fn qemu_event_is(&self, id: EventId) -> bool {
        self.facts.qemu_events.iter().any(|r| r.id() == id)
    }

    fn qemu_event_not_ours(&self, id: EventId) -> bool {
        self.qemu_event_is(id) && !self.facts.ours_events.iter().any(|r| r.id() == id)
    }
}

fn cmd_at_cons(ours: &ModelSide) -> Option<[u64; 2]> {
    let base = ours.smmu.mmio_read(off::CMDQ_BASE, 8);
    let cons = ours.smmu.mmio_read(off::CMDQ_CONS, 4);
    let log2 = (base & 0x1f).min(19);
    let addr = (base & 0x000f_ffff_ffff_ffe0) + 16 * (cons & mask(log2 as u32));
    read_qwords::<_, 2>(&ours.mem, addr).ok()
}

/// Whether the step is a DMA whose outcome or events disagree.
fn dma_step(d: &Disagreement) -> bool {
    matches!(
        d.subject,
        Subject::Dma { .. } | Subject::EventCount { .. } | Subject::EventField { .. }
    )
}

/// Whether a register disagreement is this field.
fn register_is(d: &Disagreement, name: &str) -> bool {
    matches!(&d.subject, Subject::Register { name: n, .. } if n == name)
}

fn event_field(d: &Disagreement) -> Option<(&str, u64, u64, &EventRecord)> {
    match &d.subject {
        Subject::EventField {
            field, a, b, qemu, ..
        } => Some((field.as_str(), *a, *b, qemu)),
        _ => None,
    }
}

/// Stage-1 AP[1]: 0 means no unprivileged access.
const AP1: u64 = 1 << 6;

// -- predicates ---------------------------------------------------------

fn stage_override(d: &Disagreement, _: &Evidence) -> bool {
    matches!(&d.subject, Subject::Register { name, ours: 0, qemu: 1 } if name == "SMMU_IDR0.S2P")
}

fn queue_base_reset(d: &Disagreement, _: &Evidence) -> bool {
    d.line == 0
        && matches!(&d.subject, Subject::Register { name, ours: 0, qemu: 19 }
            if name == "SMMU_CMDQ_BASE.LOG2SIZE" || name == "SMMU_EVENTQ_BASE.LOG2SIZE")
}

/// ID register fields where the two implementations chose differently,
/// each allowed by IHI 0070 6.3 (the document lists them one by one).
const ID_CHOICES: &[&str] = &[
    "SMMU_IDR0.SEV",
    "SMMU_IDR0.VMID16",
    "SMMU_IDR0.CD2L",
    "SMMU_IDR0.ASID16",
    "SMMU_IDR0.STALL_MODEL",
    "SMMU_IDR0.TERM_MODEL",
    "SMMU_IDR3.XNX",
    "SMMU_IDR3.HAD",
    "SMMU_IDR5.STALL_MAX",
    "SMMU_AIDR",
];

fn id_choice(d: &Disagreement, _: &Evidence) -> bool {
    ID_CHOICES.iter().any(|n| register_is(d, n))
}

fn s2_concat_alias(d: &Disagreement, ev: &Evidence) -> bool {
    let Some(t) = ev.s2_table() else { return false };
    let stride = t.granule.stride();
    if t.start_bits() <= stride {
        return false;
    }
    // QEMU walks only the first of the concatenated starting tables: an
    // IPA whose bits above the starting level's stride are not zero
    // aliases into it.
    let lsb = t.granule.level_shift(t.start_level) + stride;
    let aliases = |ipa: u64| ipa >> t.ia_bits == 0 && ipa >> lsb != 0;
    let nested_tables = match &ev.s1 {
        Some(p) if ev.cd_ipa.is_some() => p.tables.clone(),
        _ => Vec::new(),
    };
    let qemu_ipas = ev
        .facts
        .qemu_events
        .iter()
        .filter(|r| r.s2())
        .map(|r| r.ipa());
    dma_step(d)
        && ev
            .cd_ipa
            .into_iter()
            .chain(nested_tables)
            .chain(ev.ipa)
            .chain(qemu_ipas)
            .any(aliases)
}

fn ttb_at_cd_decode(d: &Disagreement, ev: &Evidence) -> bool {
    // A nested stream's DMA outside the CD's regions (no walk), with a
    // TTB0 stage 2 does not map: QEMU faults it at stage 2 (CLASS TT)
    // when it decodes the CD; we give the stage-1 Translation fault.
    let qemu_tt = ev
        .facts
        .qemu_events
        .iter()
        .all(|r| r.s2() && r.class() == 1);
    let ours_s1 = ev
        .facts
        .ours_events
        .iter()
        .all(|r| r.id() == EventId::Translation && !r.s2());
    dma_step(d)
        && ev.cd_ipa.is_some()
        && ev.cd.is_some()
        && ev.s1_table.is_none()
        && ev.ttb0_unmapped
        && qemu_tt
        && ours_s1
}

fn event_ipa_low_bits(d: &Disagreement, _: &Evidence) -> bool {
    matches!(event_field(d), Some(("word 3 unnamed bits", 0, b, q)) if b < 0x1000 && q.s2())
}

fn cd_fetch_rnw(d: &Disagreement, _: &Evidence) -> bool {
    // CLASS CD (0b00) or TT (0b01): QEMU records the descriptor read.
    matches!(event_field(d), Some(("RnW", 0, 1, q)) if q.s2() && q.class() <= 1)
}

fn tt_fault_not_s2(d: &Disagreement, ev: &Evidence) -> bool {
    match event_field(d) {
        Some(("S2", 1, 0, q)) => q.class() == 1,
        // Then QEMU's record has no IPA either.
        Some(("IPA", _, 0, q)) => !q.s2() && q.class() == 1,
        _ => {
            // Or the recording differs: QEMU decides a stage-2 fault on a
            // stage-1 table walk by CD.R instead of STE.S2R.
            let (a, b) = ev.events();
            matches!(&d.subject, Subject::EventCount { .. })
                && (a.is_some_and(|r| r.s2() && r.class() == 1)
                    || b.is_some_and(|r| !r.s2() && r.class() == 1))
        }
    }
}

fn ap1_clear(d: &Disagreement, ev: &Evidence) -> bool {
    let Some((_, leaf)) = ev.s1.as_ref().and_then(Path::leaf) else {
        return false;
    };
    let ours_s1_perm = ev
        .facts
        .ours_events
        .iter()
        .any(|r| r.id() == EventId::Permission && !r.s2());
    let ours_fault = matches!(ev.facts.ours_dma, Some(None));
    dma_step(d) && leaf & AP1 == 0 && (ours_s1_perm || ours_fault)
}

fn block_level(d: &Disagreement, ev: &Evidence) -> bool {
    let bad = |p: &Option<Path>, g: Option<Granule>| {
        let (Some(p), Some(g)) = (p, g) else {
            return false;
        };
        p.descs
            .iter()
            .any(|(level, desc)| *level < 3 && desc & 3 == 1 && !g.block_allowed(*level, false))
    };
    dma_step(d)
        && (bad(&ev.s1, ev.s1_table.map(|t| t.granule))
            || bad(&ev.s2, ev.s2_table().map(|t| t.granule)))
}

fn checks_before_addr_size(d: &Disagreement, ev: &Evidence) -> bool {
    // Ours F_ADDR_SIZE, QEMU F_ACCESS or F_PERMISSION, for a leaf whose
    // output is beyond its stage's effective output size.
    let Some(("TYPE", 0x11, 0x12 | 0x13, q)) = event_field(d) else {
        return false;
    };
    let (path, table) = if q.s2() {
        (&ev.s2, ev.s2_table())
    } else {
        (&ev.s1, ev.s1_table)
    };
    let out = path.as_ref().and_then(|p| p.output);
    matches!((out, table), (Some(o), Some(t)) if o >> t.oa_bits != 0)
}

fn s2t0sz_vs_s2ps(d: &Disagreement, ev: &Evidence) -> bool {
    let (Some(ste), Some(Ok(cfg))) = (ev.ste, ev.verdict.as_ref()) else {
        return false;
    };
    let Some(s2) = cfg.s2 else { return false };
    let ps = [32, 36, 40, 42, 44, 48, 52, 52][usize::from(ste.s2ps() & 7)];
    // QEMU bounds S2T0SZ by the effective S2PS; IHI 0070 bounds it by the
    // IAS (= OAS).
    dma_step(d) && ev.qemu_event_not_ours(EventId::BadSte) && s2.table.ia_bits > ps.min(ev.oas)
}

fn s1stalld(d: &Disagreement, ev: &Evidence) -> bool {
    dma_step(d) && ev.qemu_event_not_ours(EventId::BadSte) && ev.ste.is_some_and(|s| s.s1stalld())
}

fn cd_stall(d: &Disagreement, ev: &Evidence) -> bool {
    dma_step(d) && ev.qemu_event_not_ours(EventId::BadCd) && ev.cd.is_some_and(|c| c.s())
}

fn cd_abort_clear(d: &Disagreement, ev: &Evidence) -> bool {
    dma_step(d) && ev.qemu_event_not_ours(EventId::BadCd) && ev.cd.is_some_and(|c| !c.a())
}

fn l2_span(d: &Disagreement, ev: &Evidence) -> bool {
    let (Some((l1, split)), Some(sid)) = (ev.l1, ev.sid) else {
        return false;
    };
    let span = u32::from(l1.span());
    let index = sid & ((1 << split) - 1);
    let beyond = span != 0 && span <= split + 1 && index >> (span - 1) != 0;
    let (a, b) = ev.events();
    dma_step(d)
        && beyond
        && a.is_some_and(|r| r.id() == EventId::BadStreamId)
        && b.is_some_and(|r| r.id() == EventId::BadSte)
}

fn s1_bypass_ias_unrecorded(d: &Disagreement, ev: &Evidence) -> bool {
    let (a, b) = ev.events();
    matches!(d.subject, Subject::EventCount { .. })
        && b.is_none()
        && a.is_some_and(|r| {
            r.id() == EventId::AddrSize && !r.s2() && r.input_addr() >> ev.oas != 0
        })
}

fn evtq_full(d: &Disagreement, _: &Evidence) -> bool {
    matches!(&d.subject, Subject::Register { name, ours: 1, qemu: 0 } if name == "SMMU_EVENTQ_PROD.OVFLG")
        || matches!(&d.subject, Subject::Register { name, ours: 0, qemu: 1 } if name == "SMMU_GERROR.EVTQ_ABT_ERR")
}

/// Opcodes of the EL2 and EL3 TLB invalidations (IHI 0070 4.4).
const EL2_EL3_TLBI: [u64; 6] = [0x18, 0x1c, 0x20, 0x21, 0x28, 0x29];

fn cmdq_symptom(d: &Disagreement) -> bool {
    [
        "SMMU_CMDQ_CONS.RD",
        "SMMU_CMDQ_CONS.ERR",
        "SMMU_GERROR.CMDQ_ERR",
    ]
    .iter()
    .any(|n| register_is(d, n))
}

fn el2_tlbi(d: &Disagreement, ev: &Evidence) -> bool {
    cmdq_symptom(d)
        && ev
            .cmd_at_cons
            .is_some_and(|[w, _]| EL2_EL3_TLBI.contains(&(w & 0xff)))
}

fn sync_cs3(d: &Disagreement, ev: &Evidence) -> bool {
    // CMD_SYNC (0x46) with CS (bits 13:12) = 0b11.
    cmdq_symptom(d)
        && ev
            .cmd_at_cons
            .is_some_and(|[w, _]| w & 0xff == 0x46 && (w >> 12) & 3 == 3)
}

/// The departures, in the order they are tried.
pub static DEPARTURES: &[Departure] = &[
    Departure {
        key: "virt >= 9.2 forces arm-smmuv3 stage=nested",
        doc: "q1",
        matches: stage_override,
        consequences: &[],
    },
    Departure {
        key: "queue BASE registers' reset LOG2SIZE",
        doc: "c1",
        matches: queue_base_reset,
        consequences: &[],
    },
    Departure {
        key: "ID register implementation choices",
        doc: "c2",
        matches: id_choice,
        consequences: &[],
    },
    Departure {
        key: "QEMU walks only the first concatenated stage-2 starting table",
        doc: "q2",
        matches: s2_concat_alias,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU translates CD.TTB0 through stage 2 before the input address is checked",
        doc: "q15",
        matches: ttb_at_cd_decode,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU writes IPA[11:0] into the event record",
        doc: "q3",
        matches: event_ipa_low_bits,
        consequences: &[],
    },
    Departure {
        key: "QEMU's RnW of a CLASS=CD/TT fault is the descriptor read's",
        doc: "q4",
        matches: cd_fetch_rnw,
        consequences: &[],
    },
    Departure {
        key: "QEMU reports a stage-2 fault on a stage-1 table walk as stage 1",
        doc: "q5",
        matches: tt_fault_not_s2,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU ignores AP[1] (unprivileged access)",
        doc: "q6",
        matches: ap1_clear,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU takes blocks at levels with no block descriptors",
        doc: "q7",
        matches: block_level,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU checks the access flag and permissions before the output address size",
        doc: "q8",
        matches: checks_before_addr_size,
        consequences: &[],
    },
    Departure {
        key: "QEMU bounds S2T0SZ by S2PS instead of the IAS",
        doc: "q9",
        matches: s2t0sz_vs_s2ps,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU reports a StreamID beyond the L1STD span as C_BAD_STE",
        doc: "q10",
        matches: l2_span,
        consequences: &[],
    },
    Departure {
        key: "QEMU does not record a stage-1-bypass F_ADDR_SIZE",
        doc: "q11",
        matches: s1_bypass_ias_unrecorded,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "QEMU raises EVTQ_ABT_ERR for a full event queue",
        doc: "q12",
        matches: evtq_full,
        consequences: &["SMMU_EVENTQ_PROD.OVFLG", "SMMU_GERROR.EVTQ_ABT_ERR"],
    },
    Departure {
        key: "QEMU accepts EL2/EL3 TLBI commands without IDR0.HYP",
        doc: "q13",
        matches: el2_tlbi,
        consequences: &[
            "SMMU_CMDQ_CONS.RD",
            "SMMU_CMDQ_CONS.ERR",
            "SMMU_GERROR.CMDQ_ERR",
        ],
    },
    Departure {
        key: "QEMU accepts CMD_SYNC with the reserved CS = 0b11",
        doc: "q14",
        matches: sync_cs3,
        consequences: &[
            "SMMU_CMDQ_CONS.RD",
            "SMMU_CMDQ_CONS.ERR",
            "SMMU_GERROR.CMDQ_ERR",
        ],
    },
    Departure {
        key: "STE.S1STALLD is ILLEGAL with QEMU's IDR0.STALL_MODEL",
        doc: "c3",
        matches: s1stalld,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "CD.S is ILLEGAL with QEMU's IDR0.STALL_MODEL",
        doc: "c4",
        matches: cd_stall,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
    Departure {
        key: "CD.A = 0 is ILLEGAL with QEMU's IDR0.TERM_MODEL",
        doc: "c5",
        matches: cd_abort_clear,
        consequences: &["SMMU_EVENTQ_PROD.WR"],
    },
];

/// The departure that explains `d`, if any: its own, then an event
/// disagreement of a DMA step that already has one, then the after-effect
/// of an earlier one of the scenario.
pub fn classify(
    d: &Disagreement,
    ev: &Evidence,
    prior: &[Disagreement],
) -> Option<&'static Departure> {
    if let Some(dep) = DEPARTURES.iter().find(|dep| (dep.matches)(d, ev)) {
        return Some(dep);
    }
    if dma_step(d)
        && let Some(dep) = prior
            .iter()
            .filter(|p| p.line == d.line && d.line != 0 && dma_step(p))
            .find_map(|p| p.departure)
    {
        return Some(dep);
    }
    let Subject::Register { name, .. } = &d.subject else {
        return None;
    };
    prior
        .iter()
        .filter_map(|p| p.departure)
        .find(|dep| dep.consequences.contains(&name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, ours: u64, qemu: u64) -> Disagreement {
        Disagreement {
            line: 3,
            sid: None,
            subject: Subject::Register {
                name: name.to_string(),
                ours,
                qemu,
            },
            departure: None,
            evidence: None,
        }
    }

    #[test]
    fn every_departure_has_a_distinct_key_and_anchor() {
        for (i, a) in DEPARTURES.iter().enumerate() {
            for b in &DEPARTURES[i + 1..] {
                assert_ne!(a.key, b.key);
                assert_ne!(a.doc, b.doc);
            }
        }
    }

    #[test]
    fn full_event_queue_symptom_is_known_and_its_after_effect_follows() {
        let ev = Evidence::none(Facts::default());
        let first = reg("SMMU_GERROR.EVTQ_ABT_ERR", 0, 1);
        let dep = classify(&first, &ev, &[]).expect("known");
        assert_eq!(dep.doc, "q12");
        let mut prior = first.clone();
        prior.departure = Some(dep);
        let later = reg("SMMU_EVENTQ_PROD.OVFLG", 0, 1);
        assert_eq!(classify(&later, &ev, &[prior]).map(|d| d.doc), Some("q12"));
    }

    fn s2_only(ipa: u64) -> Evidence {
        use smmuv3::strtab::{Eats, S2Ste};
        // 4 KiB, 40-bit IPA from level 1: two concatenated tables.
        let table = TableConfig::stage2(Granule::G4K, 24, 1, 0x4003_0000, 44).unwrap();
        let cfg = SteConfig {
            mode: SteMode::S2,
            s1: None,
            s2: Some(S2Ste {
                table,
                vmid: 1,
                record: true,
                stall: false,
            }),
            vmid: 1,
            eats: Eats::Off,
            instcfg: 0,
            privcfg: 0,
        };
        Evidence {
            verdict: Some(Ok(cfg)),
            ipa: Some(ipa),
            ..Evidence::default()
        }
    }

    fn dma(ours: Option<u64>) -> Disagreement {
        Disagreement {
            line: 5,
            sid: Some(0x20),
            subject: Subject::Dma {
                sid: 0x20,
                iova: 0,
                ours,
                qemu: QemuDma::Fault,
            },
            departure: None,
            evidence: None,
        }
    }

    #[test]
    fn concatenated_table_alias_needs_an_ipa_in_the_second_table() {
        let d = dma(Some(0x4009_3010));
        assert!(s2_concat_alias(&d, &s2_only(0x80_0000_0010)));
        assert!(!s2_concat_alias(&d, &s2_only(0xc000_1010)));
        // Beyond the IPA size is a translation fault on both sides.
        assert!(!s2_concat_alias(&d, &s2_only(1 << 40)));
    }

    #[test]
    fn unknown_register_difference_is_unexpected() {
        let ev = Evidence::none(Facts::default());
        assert!(classify(&reg("SMMU_CR1", 0, 1), &ev, &[]).is_none());
    }

    #[test]
    fn qemu_ipa_low_bits_are_known_only_as_low_bits() {
        let q = EventRecord([0x10_0000_0010, 0x80_0000_0000, 0x1234, 0x234]);
        let d = |b| Disagreement {
            line: 1,
            sid: Some(0x10),
            subject: Subject::EventField {
                ours: q,
                qemu: q,
                field: "word 3 unnamed bits".into(),
                a: 0,
                b,
            },
            departure: None,
            evidence: None,
        };
        let ev = Evidence::none(Facts::default());
        assert!(event_ipa_low_bits(&d(0x234), &ev));
        assert!(!event_ipa_low_bits(&d(0x1_0000), &ev));
    }
}
