//! A failing host (issue 16): random sequences of what a Linux guest does
//! with two passthrough streams (STEs set to stage 1 on one of two CD
//! tables, bypass, abort or invalid, each with CFGI_STE; TLB and CD
//! invalidations; CFGI_ALL), each batch issued with a CMD_SYNC, with the
//! n-th host call of the batch failing with an errno the kernel returns
//! for its op (`SimIommufd::fail_nth_call`). After every batch:
//!
//! - the guest saw the CMD_SYNC complete, or the architected error:
//!   CMDQ_CONS stopped at a command of the batch with CERROR_ILL and
//!   GERROR.CMDQ_ERR active (the driver then skips that command as Linux's
//!   `arm_smmu_cmdq_skip_err` does and the queue runs on);
//! - each stream's host context is what its STE says (the masked vSTE, the
//!   abort or bypass HWPT), or it is aborted after a refused CFGI_STE,
//!   until the guest's next CFGI of it: never stage 1 on tables the guest
//!   no longer points at, never half attached;
//! - a host vEVENTQ that fails to be read is an event queue overflow.
//!
//! 32 sequences by default; `VIOMMU_FAILING_HOST_CASES` sets another count.

use std::collections::BTreeMap;

use nesting_core::host::{DevId, HwptData};
use nesting_core::nested::{SMMUV3_STE0_NESTING_ALLOWED, SMMUV3_STE1_NESTING_ALLOWED};
use proptest::prelude::*;

use super::passthrough::{Pt, nest};
use crate::mock::{Driver, cdtable_ste, cmd};
use crate::regs::{gerror, off, queue_ptr};
use crate::wire::write_qwords;

const SIDS: [u32; 2] = [0x10, 0x11];
const ABORT: HwptData = HwptData::Smmuv3 { ste: [1, 0] };
const BYPASS: HwptData = HwptData::Smmuv3 { ste: [0x9, 0] };

/// What an STE says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ste {
    /// Stage 1 on CD table 0 or 1.
    S1(usize),
    Bypass,
    Abort,
    /// V = 0.
    Invalid,
}

#[derive(Clone, Debug)]
enum Op {
    /// STE of stream `s` (index into [`SIDS`]), then CFGI_STE.
    Ste { s: usize, ste: Ste },
    /// TLB invalidations by VA for ASID 1 (`n` of them).
    Tlbi { n: u64 },
    /// CFGI_CD of stream `s`.
    CfgiCd { s: usize },
    /// CFGI_ALL.
    CfgiAll,
    /// The host reports an event for stream `s` and the VMM polls.
    Event { s: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let ste = prop_oneof![
        3 => (0usize..2).prop_map(Ste::S1),
        1 => Just(Ste::Bypass),
        1 => Just(Ste::Abort),
        1 => Just(Ste::Invalid),
    ];
    prop_oneof![
        4 => (0usize..2, ste).prop_map(|(s, ste)| Op::Ste { s, ste }),
        2 => (1u64..6).prop_map(|n| Op::Tlbi { n }),
        1 => (0usize..2).prop_map(|s| Op::CfgiCd { s }),
        1 => Just(Op::CfgiAll),
        1 => (0usize..2).prop_map(|s| Op::Event { s }),
    ]
}

struct Guest {
    p: Pt,
    drv: Driver,
    devs: [DevId; 2],
    cds: [(u64, bool); 2],
    stes: [Ste; 2],
}

impl Guest {
    fn new() -> Guest {
        let mut p = Pt::new(&[], nest());
        let a = p.add(SIDS[0]).unwrap().1;
        let b = p.add(SIDS[1]).unwrap().1;
        let drv = p.h.probe();
        let cds = [0, 1].map(|_| Driver::cd_table(&p.h.mem, &mut p.h.alloc, 0, true));
        Guest {
            p,
            drv,
            devs: [a, b],
            cds,
            stes: [Ste::Invalid; 2],
        }
    }

    fn words(&self, ste: Ste) -> [u64; 8] {
        match ste {
            Ste::S1(k) => cdtable_ste(self.cds[k].0, 0, self.cds[k].1, false).0,
            Ste::Bypass => [0x9, 0, 0, 0, 0, 0, 0, 0],
            Ste::Abort => [0x1, 0, 0, 0, 0, 0, 0, 0],
            Ste::Invalid => [0; 8],
        }
    }

    fn want(&self, s: usize) -> HwptData {
        match self.stes[s] {
            Ste::S1(_) => {
                let w = self.words(self.stes[s]);
                HwptData::Smmuv3 {
                    ste: [
                        w[0] & SMMUV3_STE0_NESTING_ALLOWED,
                        w[1] & SMMUV3_STE1_NESTING_ALLOWED,
                    ],
                }
            }
            Ste::Bypass => BYPASS,
            Ste::Abort | Ste::Invalid => ABORT,
        }
    }

    /// The batch `op` issues, after writing what it writes.
    fn apply(&mut self, op: &Op) -> Vec<[u64; 2]> {
        match *op {
            Op::Ste { s, ste } => {
                let at = self
                    .drv
                    .ste_addr(&self.p.h.mem, &mut self.p.h.alloc, SIDS[s]);
                write_qwords(&self.p.h.mem, at, self.words(ste)).unwrap();
                self.stes[s] = ste;
                vec![cmd::cfgi_ste(SIDS[s])]
            }
            Op::Tlbi { n } => (0..n).map(|i| cmd::tlbi_nh_va(0, 1, i << 12)).collect(),
            Op::CfgiCd { s } => vec![cmd::cfgi_cd(SIDS[s], 0)],
            Op::CfgiAll => vec![cmd::cfgi_all()],
            Op::Event { .. } => Vec::new(),
        }
    }

    /// F_TRANSLATION of stream `s` as the kernel reports it.
    fn record(s: usize) -> [u64; 4] {
        [0x10 | (u64::from(SIDS[s]) << 32), 0, 0x1000, 0]
    }

    /// Injects a host event for stream `s` and polls, with `fail` as the
    /// batches have it; checks that nothing read is lost and a failed read
    /// is an overflow. `pending` counts the records still on the host.
    fn event(
        &mut self,
        s: usize,
        fail: Option<(u64, usize)>,
        pending: &mut Vec<[u64; 4]>,
    ) -> Result<bool, String> {
        let v = self
            .p
            .h
            .smmu
            .passthrough()
            .unwrap()
            .nested()
            .unwrap()
            .viommus()[0];
        let rec = Self::record(s);
        let bytes: Vec<u8> = rec.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.p.sim.inject_vevent(v, bytes).unwrap();
        pending.push(rec);
        self.p.sim.clear_injections();
        if let Some((n, pick)) = fail {
            self.p.sim.fail_nth_call(n, pick);
        }
        let res = self.p.h.smmu.poll_host_events(&self.p.h.mem);
        let fired = fail.is_some() && self.p.sim.injections_pending() == 0;
        self.p.sim.clear_injections();
        // Overflow outstanding (OVFLG != OVACKFLG) before the driver reads
        // the queue, which acknowledges it.
        let flagged = queue_ptr::OVF.is_set(self.p.h.read32(off::EVTQ_PROD))
            != queue_ptr::OVF.is_set(self.p.h.read32(off::EVTQ_CONS));
        let got: Vec<[u64; 4]> =
            std::iter::from_fn(|| self.drv.next_event(&mut self.p.h.smmu, &self.p.h.mem))
                .map(|e| e.0)
                .collect();
        match res {
            Ok(n) if !fired => {
                if got != *pending || n != got.len() {
                    return Err(format!("records {got:x?}, want {pending:x?}"));
                }
                pending.clear();
            }
            Err(_) if fired => {
                // Told as an overflow.
                if !flagged {
                    return Err("a failed read not flagged as an overflow".into());
                }
                if !got.is_empty() {
                    return Err(format!("records {got:x?} from a failed read"));
                }
                if self.p.h.smmu.passthrough().unwrap().stats().lost == 0 {
                    return Err("a failed read not counted as lost".into());
                }
            }
            other => return Err(format!("poll {other:?} with fired {fired}")),
        }
        Ok(fired)
    }

    /// Linux's `arm_smmu_cmdq_skip_err` for CERROR_ILL: the command at
    /// CONS becomes a CMD_SYNC, GERRORN acknowledges the error, and the
    /// queue runs on to PROD. Returns the index of the skipped command.
    fn skip_error(&mut self) -> u32 {
        let cons = self.p.h.read32(off::CMDQ_CONS) as u32;
        let at = cons & ((1 << self.drv.cmdq.log2) - 1);
        write_qwords(
            &self.p.h.mem,
            self.drv.cmdq.base + 16 * u64::from(at),
            cmd::sync(0, 0, 0),
        )
        .unwrap();
        let gerror = self.p.h.read32(off::GERROR);
        self.p.h.write32(off::GERRORN, gerror);
        cons
    }
}

fn cases() -> u32 {
    std::env::var("VIOMMU_FAILING_HOST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

fn run(steps: &[(Op, Option<(u64, usize)>)]) -> Result<(), String> {
    let mut g = Guest::new();
    // Streams aborted after a refused CFGI_STE, until their next CFGI.
    let mut aborted: BTreeMap<usize, bool> = BTreeMap::new();
    let mut pending = Vec::new();
    for (i, (op, fail)) in steps.iter().enumerate() {
        if let Op::Event { s } = *op {
            g.event(s, *fail, &mut pending)
                .map_err(|e| format!("step {i} {op:?} failing {fail:?}: {e}"))?;
            continue;
        }
        let batch = g.apply(op);
        g.p.sim.clear_injections();
        if let Some((n, pick)) = fail {
            g.p.sim.fail_nth_call(*n, *pick);
        }
        let first = g.drv.cmdq.ptr;
        let done = g.drv.issue(&mut g.p.h.smmu, &g.p.h.mem, &batch);
        let fired = fail.is_some() && g.p.sim.injections_pending() == 0;
        g.p.sim.clear_injections();
        let what = format!("step {i} {op:?} failing {fail:?} (fired: {fired})");
        let mut skipped = None;
        if !done {
            // The architected error, and only for a host failure.
            let c = g.p.h.read32(off::CMDQ_CONS);
            if !fired
                || queue_ptr::QueuePtr(c).err() != 1
                || !g.p.h.smmu.error_active(gerror::CMDQ_ERR)
            {
                return Err(format!("{what}: no completion, CONS {c:#x}"));
            }
            let at = g.skip_error();
            let n = at.wrapping_sub(first) & ((2 << g.drv.cmdq.log2) - 1);
            if n as usize > batch.len() {
                return Err(format!(
                    "{what}: CONS {at:#x} outside the batch from {first:#x}"
                ));
            }
            skipped = Some(n as usize);
            if g.p.h.smmu.error_active(gerror::CMDQ_ERR) {
                return Err(format!("{what}: the queue stopped again after the skip"));
            }
        } else if g.p.h.smmu.error_active(gerror::CMDQ_ERR) {
            return Err(format!("{what}: completed with CMDQ_ERR"));
        }
        for s in 0..2 {
            // A CFGI of the stream that ran (not skipped) re-read its STE.
            let cfgi = match op {
                Op::Ste { s: t, .. } => *t == s,
                Op::CfgiAll => true,
                _ => false,
            };
            let reread = cfgi && skipped != Some(0);
            let a = aborted.entry(s).or_insert(false);
            if reread {
                *a = false;
            }
            if cfgi && skipped == Some(0) {
                // The CFGI the guest sent was refused: the stream aborts.
                *a = true;
            }
            let got = g.p.data(g.devs[s]);
            let want = g.want(s);
            if got == Some(want.clone()) {
                *a = false;
                continue;
            }
            if got == Some(ABORT) && (*a || (fired && reread)) {
                *a = true;
                continue;
            }
            return Err(format!(
                "{what}: stream {s}: host {got:?}, want {want:?} (aborted: {a})"
            ));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn failing_host_keeps_streams_in_agreement(
        steps in prop::collection::vec((op(), prop::option::weighted(0.6, (1u64..6, 0usize..8))), 1..16),
    ) {
        if let Err(e) = run(&steps) {
            prop_assert!(false, "{}", e);
        }
    }
}
