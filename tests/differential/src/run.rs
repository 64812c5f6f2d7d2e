//! Runs one scenario on both sides, directive by directive, and records
//! every disagreement: DMA outcomes, event records written, registers
//! and memory read, then at the end the dynamic registers and all of the
//! scenario's RAM.
//!
//! After a disagreement about memory (a DMA that landed on one side
//! only, event records that differ), QEMU's bytes are overwritten with
//! ours, so each difference is reported once and later steps start from
//! the same memory.

use viommu::replay::Directive;
use viommu::replay::parse::{Expect, TranslateExpect, Width};

use crate::events;
use crate::model::{ModelDma, ModelSide};
use crate::qemu::{DMA_PATTERN, DmaResult, QemuSide, QemuSpec};
use crate::qtest::QtestError;
use crate::registers;
use crate::scenario::Scenario;
use crate::triage::{self, Departure, Evidence, Facts};
use smmuv3::event::{EVENT_SIZE, EventRecord};
use smmuv3::regs::off;

/// What disagreed.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A register, or one field of an ID register.
    Register {
        /// Register (and field) name.
        name: String,
        /// Ours.
        ours: u64,
        /// QEMU's.
        qemu: u64,
    },
    /// Where a DMA write went (`None`: refused).
    Dma {
        /// StreamID.
        sid: u32,
        /// Input address.
        iova: u64,
        /// Ours.
        ours: Option<u64>,
        /// QEMU's.
        qemu: QemuDma,
    },
    /// How many event records a step wrote.
    EventCount {
        /// Ours.
        ours: Vec<EventRecord>,
        /// QEMU's.
        qemu: Vec<EventRecord>,
    },
    /// One field of an event record both sides wrote.
    EventField {
        /// Ours.
        ours: EventRecord,
        /// QEMU's.
        qemu: EventRecord,
        /// Field name.
        field: String,
        /// Our value.
        a: u64,
        /// QEMU's value.
        b: u64,
    },
    /// Guest memory.
    Memory {
        /// Address.
        gpa: u64,
        /// Ours (up to 8 bytes, little-endian).
        ours: u64,
        /// QEMU's.
        qemu: u64,
    },
    /// The script's own expectation about our model does not hold.
    ScriptCheck {
        /// What.
        what: String,
    },
}

/// Where QEMU's DMA write went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuDma {
    /// Refused by the SMMU (or to no memory at all).
    Fault,
    /// Here.
    At(u64),
    /// It succeeded, but not in the scenario's RAM.
    OutsideRam,
}

/// One disagreement.
#[derive(Clone, Debug)]
pub struct Disagreement {
    /// Script line (0: the end-of-scenario comparison).
    pub line: usize,
    /// The StreamID of the step, for triage.
    pub sid: Option<u32>,
    /// What.
    pub subject: Subject,
    /// The known departure it is, if any.
    pub departure: Option<&'static Departure>,
    /// For an unexpected one: what our memory says of its stream.
    pub evidence: Option<String>,
}

impl Disagreement {
    /// One line of text.
    pub fn text(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("fault".to_string(), |g| format!("{g:#x}"));
        match &self.subject {
            Subject::Register { name, ours, qemu } => {
                format!("{name}: ours {ours:#x}, QEMU {qemu:#x}")
            }
            Subject::Dma {
                sid,
                iova,
                ours,
                qemu,
            } => format!(
                "DMA write sid {sid:#x} iova {iova:#x}: ours {}, QEMU {}",
                opt(*ours),
                match qemu {
                    QemuDma::Fault => "fault".to_string(),
                    QemuDma::At(g) => format!("{g:#x}"),
                    QemuDma::OutsideRam => "outside the scenario's RAM".to_string(),
                }
            ),
            Subject::EventCount { ours, qemu } => {
                let list = |v: &[EventRecord]| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.iter().map(events::summary).collect::<Vec<_>>().join("; ")
                    }
                };
                format!(
                    "events written: ours [{}], QEMU [{}]",
                    list(ours),
                    list(qemu)
                )
            }
            Subject::EventField {
                ours,
                qemu,
                field,
                a,
                b,
            } if field == "TYPE" => format!(
                "event type: ours {} ({a:#x}), QEMU {} ({b:#x})",
                events::summary(ours),
                events::summary(qemu)
            ),
            Subject::EventField {
                ours, field, a, b, ..
            } => format!(
                "event {}: {field} ours {a:#x}, QEMU {b:#x}",
                events::summary(ours)
            ),
            Subject::Memory { gpa, ours, qemu } => {
                format!("memory at {gpa:#x}: ours {ours:#018x}, QEMU {qemu:#018x}")
            }
            Subject::ScriptCheck { what } => format!("script check on our model: {what}"),
        }
    }
}

/// The outcome of one scenario.
#[derive(Debug, Default)]
pub struct Report {
    /// Every disagreement, in order.
    pub diffs: Vec<Disagreement>,
    /// Directives not run on either side, with the reason.
    pub skipped: Vec<(usize, String)>,
    /// Directives run.
    pub steps: usize,
    /// DMA writes that agreed.
    pub dma_agreed: usize,
}

impl Report {
    /// Disagreements no departure explains.
    pub fn unexpected(&self) -> usize {
        self.diffs.iter().filter(|d| d.departure.is_none()).count()
    }
}

/// Errors that stop a scenario (never a disagreement).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// QEMU failed.
    #[error(transparent)]
    Qemu(#[from] QtestError),
    /// The model side refused (an address outside RAM).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// QEMU's device reported something the harness does not know.
    #[error("line {line}: iommu-testdev RESULT {code:#x}")]
    Device {
        /// Line.
        line: usize,
        /// RESULT.
        code: u32,
    },
}

fn size_of(w: Width) -> u32 {
    match w {
        Width::W64 => 8,
        _ => 4,
    }
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Both sides of one scenario.
struct Pair<'s> {
    scenario: &'s Scenario,
    ours: ModelSide,
    qemu: QemuSide,
    /// Event queue PROD (index and wrap) last seen on each side.
    evtq_seen: (u64, u64),
    /// Disagreements of the current step, triaged when it ends.
    pending: Vec<Disagreement>,
    report: Report,
}

/// Runs `scenario`, starting QEMU as `spec` (whose devices and stage
/// come from the scenario) says.
pub fn run(scenario: &Scenario, spec: &QemuSpec) -> Result<Report, RunError> {
    let ours = ModelSide::new(scenario.config.clone(), scenario.ram)?;
    let qemu = QemuSide::start(spec)?;
    let mut p = Pair {
        scenario,
        ours,
        qemu,
        evtq_seen: (0, 0),
        pending: Vec::new(),
        report: Report::default(),
    };
    for l in &scenario.lines {
        p.step(l.number, &l.directive)?;
    }
    p.finish()?;
    Ok(p.report)
}

impl Pair<'_> {
    fn diff(&mut self, line: usize, sid: Option<u32>, subject: Subject) {
        self.pending.push(Disagreement {
            line,
            sid,
            subject,
            departure: None,
            evidence: None,
        });
    }

    /// Triages the step's disagreements with what both sides did and
    /// what our memory says of the stream.
    fn triage(&mut self, sid: Option<u32>, facts: Facts) {
        if self.pending.is_empty() {
            return;
        }
        let ev = Evidence::gather(&self.ours, &self.scenario.config, sid, facts);
        for mut d in std::mem::take(&mut self.pending) {
            d.departure = triage::classify(&d, &ev, &self.report.diffs);
            if d.departure.is_none() && d.sid.is_some() {
                d.evidence = Some(ev.describe());
            }
            self.report.diffs.push(d);
        }
    }

    fn check(&mut self, line: usize, expect: &Expect, actual: u64, what: &str) {
        if self.scenario.checks && !expect.holds(actual) {
            self.diff(
                line,
                None,
                Subject::ScriptCheck {
                    what: format!(
                        "{what}: expected {}, got {:#x}",
                        expect.describe(),
                        expect.compared(actual)
                    ),
                },
            );
        }
    }

    fn step(&mut self, line: usize, d: &Directive) -> Result<(), RunError> {
        self.report.steps += 1;
        match d {
            // REPLAY.md: RAM is zero-filled; QEMU's holds virt's device
            // tree at its start.
            Directive::Ram { gpa, size } => self.qemu.zero_mem(*gpa, *size)?,
            Directive::Write { width, gpa, value } => {
                let b = &value.to_le_bytes()[..width.bytes()];
                self.ours.write_mem(*gpa, b)?;
                self.qemu.write_mem(*gpa, b)?;
            }
            Directive::WriteBytes { gpa, bytes } => {
                self.ours.write_mem(*gpa, bytes)?;
                self.qemu.write_mem(*gpa, bytes)?;
            }
            Directive::Read { width, gpa, expect } => self.read(line, *width, *gpa, expect)?,
            Directive::MmioWrite {
                width,
                offset,
                value,
            } => {
                self.ours.mmio_write(*offset, size_of(*width), *value);
                self.qemu.mmio_write(*offset, size_of(*width), *value)?;
                let (a, b) = self.events(line, None)?;
                self.triage(
                    None,
                    Facts {
                        ours_events: a,
                        qemu_events: b,
                        ..Facts::default()
                    },
                );
            }
            Directive::MmioRead {
                width,
                offset,
                expect,
            } => self.mmio_read(line, *width, *offset, expect)?,
            Directive::Translate {
                sid,
                pasid,
                iova,
                access,
                expect,
            } => {
                if pasid.is_some() {
                    self.skip(line, "iommu-testdev issues no SubstreamIDs");
                } else if !self.qemu.has_device(*sid) {
                    self.skip(
                        line,
                        "no iommu-testdev can have this StreamID (8..=255 only)",
                    );
                } else {
                    let checked = access.contains(nesting_core::types::Access::WRITE);
                    self.translate(line, *sid, *iova, checked.then_some(expect))?;
                }
            }
            other => {
                // Scenario::parse refuses everything else.
                self.skip(line, &format!("not run: {other:?}"));
            }
        }
        self.triage(None, Facts::default());
        Ok(())
    }

    /// `readN GPA`: memory on both sides.
    fn read(
        &mut self,
        line: usize,
        width: Width,
        gpa: u64,
        expect: &Expect,
    ) -> Result<(), RunError> {
        let a = le(&self.ours.read_mem(gpa, width.bytes())?);
        let b = le(&self.qemu.read_mem(gpa, width.bytes())?);
        if expect.compared(a) != expect.compared(b) {
            self.diff(
                line,
                None,
                Subject::Memory {
                    gpa,
                    ours: a,
                    qemu: b,
                },
            );
            self.qemu
                .write_mem(gpa, &a.to_le_bytes()[..width.bytes()])?;
        }
        self.check(line, expect, a, &format!("memory at {gpa:#x}"));
        Ok(())
    }

    /// `mmio-readN OFFSET`: a register on both sides, by field.
    fn mmio_read(
        &mut self,
        line: usize,
        width: Width,
        offset: u64,
        expect: &Expect,
    ) -> Result<(), RunError> {
        let a = self.ours.mmio_read(offset, size_of(width));
        let b = self.qemu.mmio_read(offset, size_of(width))?;
        if expect.compared(a) != expect.compared(b) {
            let m = expect.mask.unwrap_or(u64::MAX);
            for (name, x, y) in registers::split(offset, a & m, b & m) {
                self.diff(
                    line,
                    None,
                    Subject::Register {
                        name,
                        ours: x,
                        qemu: y,
                    },
                );
            }
        }
        self.check(line, expect, a, &registers::name(offset));
        Ok(())
    }

    /// `translate`: one DMA write on both sides, then the events it wrote,
    /// triaged together.
    fn translate(
        &mut self,
        line: usize,
        sid: u32,
        iova: u64,
        expect: Option<&TranslateExpect>,
    ) -> Result<(), RunError> {
        let (ours, qemu) = self.dma(line, sid, iova)?;
        if let Some(e) = expect {
            self.check_translate(line, e, ours);
        }
        let (a, b) = self.events(line, Some(sid))?;
        let facts = Facts {
            iova: Some(iova),
            ours_dma: Some(match ours {
                ModelDma::Mapped(g) => Some(g),
                ModelDma::Fault => None,
            }),
            qemu_dma: Some(qemu),
            ours_events: a,
            qemu_events: b,
        };
        self.triage(Some(sid), facts);
        Ok(())
    }

    fn skip(&mut self, line: usize, why: &str) {
        self.report.skipped.push((line, why.to_string()));
    }

    fn check_translate(&mut self, line: usize, expect: &TranslateExpect, ours: ModelDma) {
        if !self.scenario.checks {
            return;
        }
        let ok = match (expect, ours) {
            (TranslateExpect::Gpa(g), ModelDma::Mapped(m)) => *g == m,
            (TranslateExpect::Fault, ModelDma::Fault) => true,
            _ => false,
        };
        if !ok {
            let got = match ours {
                ModelDma::Mapped(m) => format!("{m:#x}"),
                ModelDma::Fault => "fault".into(),
            };
            self.diff(
                line,
                None,
                Subject::ScriptCheck {
                    what: format!("translate expected {expect:?}, got {got}"),
                },
            );
        }
    }

    /// One DMA write on both sides; returns where each went.
    fn dma(&mut self, line: usize, sid: u32, iova: u64) -> Result<(ModelDma, QemuDma), RunError> {
        let ours = self.ours.dma_write(sid, iova);
        let target = match ours {
            ModelDma::Mapped(g) if self.ours.read_mem(g, DMA_PATTERN.len()).is_ok() => Some(g),
            _ => None,
        };
        if let Some(g) = target {
            // Both sides start from bytes that are not the pattern, so a
            // match at `g` on QEMU's side means QEMU wrote there.
            self.ours.write_mem(g, &[0; 4])?;
            self.qemu.write_mem(g, &[0; 4])?;
            self.ours.write_mem(g, &DMA_PATTERN)?;
        }
        let probe = target.unwrap_or(self.scenario.regions.first().map_or(0, |r| r.0));
        let qemu = match self.qemu.dma_write(sid, iova, probe)? {
            DmaResult::AtGpa if let Some(g) = target => {
                self.report.dma_agreed += 1;
                return Ok((ours, QemuDma::At(g)));
            }
            DmaResult::Fault if target.is_none() => {
                if let ModelDma::Mapped(g) = ours {
                    // Ours translated outside RAM: QEMU's write to no
                    // memory fails the same way as a refused one.
                    self.skip(
                        line,
                        &format!(
                            "ours translated to {g:#x}, not RAM; QEMU's write failed: inconclusive"
                        ),
                    );
                } else {
                    self.report.dma_agreed += 1;
                }
                return Ok((ours, QemuDma::Fault));
            }
            DmaResult::Fault => QemuDma::Fault,
            DmaResult::AtGpa | DmaResult::Elsewhere => match (self.find_qemu_write()?, ours) {
                (None, ModelDma::Mapped(g)) if target.is_none() => {
                    // Both wrote somewhere that is not the scenario's RAM
                    // (QEMU's MMIO windows take writes): nothing to compare.
                    self.skip(
                        line,
                        &format!(
                            "ours translated to {g:#x} and QEMU wrote outside RAM: inconclusive"
                        ),
                    );
                    return Ok((ours, QemuDma::OutsideRam));
                }
                (q, _) => q.map_or(QemuDma::OutsideRam, QemuDma::At),
            },
            DmaResult::Other(code) => return Err(RunError::Device { line, code }),
        };
        self.diff(
            line,
            Some(sid),
            Subject::Dma {
                sid,
                iova,
                ours: match ours {
                    ModelDma::Mapped(g) => Some(g),
                    ModelDma::Fault => None,
                },
                qemu,
            },
        );
        // Put QEMU's memory back in step with ours.
        if let Some(g) = target {
            self.qemu.write_mem(g, &DMA_PATTERN)?;
        }
        if let QemuDma::At(q) = qemu
            && let Ok(b) = self.ours.read_mem(q, DMA_PATTERN.len())
        {
            self.qemu.write_mem(q, &b)?;
        }
        Ok((ours, qemu))
    }

    /// Where QEMU's last DMA landed: the first place in the scenario's
    /// RAM where QEMU has the pattern and we do not.
    fn find_qemu_write(&mut self) -> Result<Option<u64>, RunError> {
        for (base, size) in self.scenario.regions.clone() {
            let mut at = base;
            while at < base + size {
                let len = (base + size - at).min(CHUNK) as usize;
                let a = self.ours.read_mem(at, len)?;
                let b = self.qemu.read_mem(at, len)?;
                for i in (0..len.saturating_sub(3)).step_by(4) {
                    if b[i..i + 4] == DMA_PATTERN && a[i..i + 4] != DMA_PATTERN {
                        return Ok(Some(at + i as u64));
                    }
                }
                at += len as u64;
            }
        }
        Ok(None)
    }

    /// Event records written since the last look, on both sides; returns
    /// them.
    fn events(
        &mut self,
        line: usize,
        sid: Option<u32>,
    ) -> Result<(Vec<EventRecord>, Vec<EventRecord>), RunError> {
        let base_a = self.ours.mmio_read(off::EVTQ_BASE, 8);
        let base_b = self.qemu.mmio_read(off::EVTQ_BASE, 8)?;
        let prod_a = self.ours.mmio_read(off::EVTQ_PROD, 4);
        let prod_b = self.qemu.mmio_read(off::EVTQ_PROD, 4)?;
        let (seen_a, seen_b) = self.evtq_seen;
        let ours = self.records_a(base_a, seen_a, prod_a)?;
        let qemu = self.records_b(base_b, seen_b, prod_b)?;
        self.evtq_seen = (prod_a, prod_b);
        if ours.is_empty() && qemu.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if ours.len() != qemu.len() {
            self.diff(
                line,
                sid,
                Subject::EventCount {
                    ours: ours.iter().map(|(_, r)| *r).collect(),
                    qemu: qemu.iter().map(|(_, r)| *r).collect(),
                },
            );
        } else {
            for ((_, a), (_, b)) in ours.iter().zip(&qemu) {
                for (field, x, y) in events::diff(a, b) {
                    self.diff(
                        line,
                        sid,
                        Subject::EventField {
                            ours: *a,
                            qemu: *b,
                            field,
                            a: x,
                            b: y,
                        },
                    );
                }
            }
        }
        // Reported: QEMU's memory takes our bytes at every slot either
        // side wrote.
        for at in ours.iter().chain(&qemu).map(|(at, _)| *at) {
            let b = self.ours.read_mem(at, EVENT_SIZE as usize)?;
            self.qemu.write_mem(at, &b)?;
        }
        Ok((
            ours.into_iter().map(|(_, r)| r).collect(),
            qemu.into_iter().map(|(_, r)| r).collect(),
        ))
    }

    fn records_a(
        &mut self,
        base: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, EventRecord)>, RunError> {
        let mut out = Vec::new();
        for at in slots(base, from, to) {
            let b = self.ours.read_mem(at, EVENT_SIZE as usize)?;
            out.push((at, record_of(&b)));
        }
        Ok(out)
    }

    fn records_b(
        &mut self,
        base: u64,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, EventRecord)>, RunError> {
        let mut out = Vec::new();
        for at in slots(base, from, to) {
            let b = self.qemu.read_mem(at, EVENT_SIZE as usize)?;
            out.push((at, record_of(&b)));
        }
        Ok(out)
    }

    /// The end: dynamic registers, then all RAM.
    fn finish(&mut self) -> Result<(), RunError> {
        for (offset, size) in SWEEP {
            let a = self.ours.mmio_read(offset, size);
            let b = self.qemu.mmio_read(offset, size)?;
            if a != b {
                for (name, x, y) in registers::split(offset, a, b) {
                    self.diff(
                        0,
                        None,
                        Subject::Register {
                            name,
                            ours: x,
                            qemu: y,
                        },
                    );
                }
            }
        }
        let mut reported = 0;
        for (base, size) in self.scenario.regions.clone() {
            let mut at = base;
            while at < base + size {
                let len = (base + size - at).min(CHUNK) as usize;
                let a = self.ours.read_mem(at, len)?;
                let b = self.qemu.read_mem(at, len)?;
                for i in (0..len.saturating_sub(7)).step_by(8) {
                    if a[i..i + 8] != b[i..i + 8] && reported < MAX_MEMORY_LINES {
                        reported += 1;
                        self.diff(
                            0,
                            None,
                            Subject::Memory {
                                gpa: at + i as u64,
                                ours: le(&a[i..i + 8]),
                                qemu: le(&b[i..i + 8]),
                            },
                        );
                    }
                }
                at += len as u64;
            }
        }
        self.triage(None, Facts::default());
        Ok(())
    }
}

/// RAM is read in chunks of this size.
const CHUNK: u64 = 1 << 20;
/// Memory differences reported per scenario (the rest would repeat).
const MAX_MEMORY_LINES: usize = 16;
/// Event records looked at per step: a step makes a handful, and a
/// garbage PROD must not make the harness read a whole queue.
const MAX_RECORDS_PER_STEP: u64 = 64;

/// Registers compared at the end of every scenario: those a scenario
/// changes.
const SWEEP: [(u64, u32); 17] = [
    (off::CR0, 4),
    (off::CR0ACK, 4),
    (off::CR1, 4),
    (off::CR2, 4),
    (off::GBPA, 4),
    (off::IRQ_CTRL, 4),
    (off::IRQ_CTRLACK, 4),
    (off::GERROR, 4),
    (off::GERRORN, 4),
    (off::STRTAB_BASE, 8),
    (off::STRTAB_BASE_CFG, 4),
    (off::CMDQ_BASE, 8),
    (off::CMDQ_PROD, 4),
    (off::CMDQ_CONS, 4),
    (off::EVTQ_BASE, 8),
    (off::EVTQ_PROD, 4),
    (off::EVTQ_CONS, 4),
];

/// The addresses of the event queue slots from index `from` up to (not
/// including) `to` (PROD/CONS form: index and wrap bit below bit 31).
fn slots(base_reg: u64, from: u64, to: u64) -> Vec<u64> {
    let log2 = (base_reg & 0x1f).min(19);
    let wrap_mask = (2u64 << log2) - 1;
    let n = (to.wrapping_sub(from) & wrap_mask).min(MAX_RECORDS_PER_STEP);
    let base = base_reg & 0x000f_ffff_ffff_ffe0 & !((EVENT_SIZE << log2) - 1);
    (0..n)
        .map(|i| base + EVENT_SIZE * ((from + i) & ((1u64 << log2) - 1)))
        .collect()
}

fn record_of(b: &[u8]) -> EventRecord {
    let mut w = [0u64; 4];
    for (i, chunk) in b.chunks(8).take(4).enumerate() {
        w[i] = le(chunk);
    }
    EventRecord(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_index_and_wrap() {
        // 4-entry queue at 0x4001_1000: from index 3 to index 1 with wrap
        // toggled is two records, slots 3 and 0.
        assert_eq!(
            slots(0x4001_1002, 3, 0b101),
            vec![0x4001_1000 + 96, 0x4001_1000]
        );
        assert!(slots(0x4001_1002, 2, 2).is_empty());
    }

    #[test]
    fn le_reads_little_endian() {
        assert_eq!(le(&[0x78, 0x56, 0x34, 0x12]), 0x1234_5678);
    }
}
