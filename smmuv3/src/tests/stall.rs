//! Stalls (IHI 0070 "Stall model"; CMD_RESUME; CMD_STALL_TERM).

use std::sync::{Arc, Mutex};

use nesting_core::snapshot::Snapshot as _;
use nesting_core::types::Access;

use super::{ASID, S1Setup, SID};
use crate::TranslateResult;
use crate::mock::{cdtable_ste, cmd, s1_cd};
use crate::regs::MAX_STALLS;
use crate::stall::{StallOutcome, StallResolution};

const R: Access = Access::READ;

/// A stage-1 stream whose CD stalls faults, with the resolutions seen.
fn stalling() -> (S1Setup, Arc<Mutex<Vec<StallResolution>>>) {
    let mut s = S1Setup::new(&[]);
    let ste = cdtable_ste(s.cd_table.0, 0, false, false).with_s1stalld(false);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    let cd = s1_cd(ASID, &s.pt, 5, true).with_s(true).with_r(false);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    s.h.smmu
        .set_stall_callback(move |r| sink.lock().unwrap().push(*r));
    (s, seen)
}

fn stag_of(r: TranslateResult) -> u16 {
    match r {
        TranslateResult::Stalled { stag } => stag,
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn stalled_fault_records_stall_event_and_resume_retry_is_delivered() {
    let (mut s, seen) = stalling();
    let stag = stag_of(s.h.translate(SID, None, 0x1000, R));
    let e = s
        .next_event()
        .expect("stall events are recorded even with R = 0");
    assert!(e.stall());
    assert_eq!(e.stag(), stag);
    // The guest maps the page and resumes with retry.
    s.map(0x1000, 0xa000);
    assert!(s.issue(&[cmd::resume(SID, stag, 1)]));
    let r = seen.lock().unwrap().clone();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, StallOutcome::Retry);
    assert_eq!((r[0].stall.sid, r[0].stall.addr), (SID, 0x1000));
    assert_eq!(s.h.gpa(SID, None, 0x1000, R), Some(0xa000));
    // The tag is gone: resuming it again does nothing.
    assert!(s.issue(&[cmd::resume(SID, stag, 1)]));
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn resume_abort_and_stall_term_terminate() {
    let (mut s, seen) = stalling();
    let a = stag_of(s.h.translate(SID, None, 0x1000, R));
    let b = stag_of(s.h.translate(SID, None, 0x2000, R));
    let c = stag_of(s.h.translate(SID, None, 0x3000, R));
    assert!(a != b && b != c);
    assert!(s.issue(&[cmd::resume(SID, a, 2)]));
    assert!(s.issue(&[cmd::stall_term(SID)]));
    let r = seen.lock().unwrap().clone();
    assert_eq!(r.len(), 3);
    assert!(
        r.iter()
            .all(|x| x.outcome == StallOutcome::Terminate { abort: true })
    );
    assert!(s.h.smmu.snapshot().stalls.is_empty());
}

#[test]
fn stalls_beyond_stall_max_terminate() {
    let (mut s, _) = stalling();
    for i in 0..u64::from(MAX_STALLS) {
        stag_of(s.h.translate(SID, None, 0x1000 + (i << 12), R));
        s.next_event();
    }
    let r = s.h.translate(SID, None, 0x100_0000, R);
    assert!(matches!(r, TranslateResult::Fault { recorded: true, .. }));
    assert!(!s.next_event().unwrap().stall());
}

#[test]
fn stall_without_room_in_event_queue_terminates() {
    let (mut s, _) = stalling();
    let en = s.drv.enables;
    s.h.write32(crate::regs::off::CR0, en & !0b100);
    let r = s.h.translate(SID, None, 0x1000, R);
    assert!(matches!(
        r,
        TranslateResult::Fault {
            recorded: false,
            ..
        }
    ));
    assert!(s.h.smmu.snapshot().stalls.is_empty());
}
