//! A request completes only after the host has done everything it owes
//! for it (issue 11, part 1): the used-ring entry of an ATTACH, DETACH,
//! MAP or UNMAP of a passthrough endpoint's domain, and its status byte,
//! are written only after every host call the request needs has returned,
//! and a host failure is the request's status instead of S_OK.
//!
//! The simulated host runs a hook at the start of every host call; it reads
//! what the guest can see of the request in flight (the used ring's `idx`
//! and the request's status byte, which the driver filled with a value no
//! status has) and records it. Each request of a guest's sequence is then
//! replayed with a failure injected at each of its host calls in turn.

use std::sync::{Arc, Mutex};

use nesting_core::host::{Errno, HostOp, PtId};
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;

use crate::domain::Tables;
use crate::mock::{MOCK_RESPONSE_BUFFER, MockDriver};
use crate::protocol::Status;
use crate::shadow_tests::{Rig, rig_with};

const RW: u32 = 3;

/// What the driver's response buffer holds until the device answers: no
/// status has this value.
const UNANSWERED: u8 = 0xa5;

/// What the guest could see at one host call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    op: HostOp,
    used_idx: u16,
    status: u8,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Installs the hook: at every host call it reads the request queue's used
/// index and the in-flight request's status byte from guest memory.
fn watch(r: &mut Rig) -> Log {
    r.drv.response_fill = UNANSWERED;
    let mem = r.drv.mem.clone();
    let used_idx_at = Gpa(r.drv.request_ring().used + 2);
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let out = log.clone();
    r.sim.set_call_hook(Some(Arc::new(move |op| {
        let used_idx = mem.read_u16_le(used_idx_at).unwrap_or(u16::MAX);
        let mut status = [0u8];
        let _ = mem.read_bytes_at(Gpa(MOCK_RESPONSE_BUFFER), &mut status);
        let seen = Seen {
            op,
            used_idx,
            status: status[0],
        };
        out.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
    })));
    log
}

/// One guest request.
type Request = fn(&mut MockDriver) -> Status;

/// A Linux-like sequence touching a passthrough endpoint (8) in every way a
/// request can: its domain's space made and filled (the emulated endpoint
/// 9 mapped first), mappings added and removed, a move to a bypass domain
/// (identity) that destroys the space, and a detach.
const REQUESTS: &[(&str, Request)] = &[
    ("ATTACH emulated 9 to domain 1", |d| d.attach(1, 9)),
    ("MAP in domain 1, no host space yet", |d| {
        d.map(1, 0x10_0000, 0x10_1fff, 0x40_0000, RW)
    }),
    ("ATTACH 8 to domain 1: space made and filled", |d| {
        d.attach(1, 8)
    }),
    ("MAP in domain 1", |d| {
        d.map(1, 0x20_0000, 0x20_0fff, 0x50_0000, RW)
    }),
    ("UNMAP both mappings", |d| d.unmap(1, 0x10_0000, 0x20_0fff)),
    ("MAP in domain 1 again", |d| {
        d.map(1, 0x30_0000, 0x30_0fff, 0x60_0000, RW)
    }),
    ("ATTACH 8 to bypass domain 2: domain 1's space goes", |d| {
        d.attach_flags(2, 8, 1)
    }),
    ("DETACH 8 from domain 2", |d| d.detach(2, 8)),
];

/// The device's view of endpoint 8's host, by content: not attached (0),
/// at identity over the RAM IOAS (1), or in another IOAS (2) with its
/// mappings.
type HostState = (u8, Vec<(u64, u64)>);

fn host_state(r: &Rig) -> HostState {
    match r.ioas() {
        None => (0, Vec::new()),
        Some(i) if i == r.ram_ioas => (1, Vec::new()),
        Some(i) => {
            let maps = r.sim.mappings(i);
            (
                2,
                maps.iter()
                    .map(|m| (m.range.first.0, m.range.last.0))
                    .collect(),
            )
        }
    }
}

fn tables(r: &Rig) -> Tables {
    r.drv.dev.lock().state.tables.clone()
}

/// Sends request `n`, checking that no host call of it saw it completed.
fn send(r: &mut Rig, log: &Log, n: usize) -> (Status, Vec<Seen>) {
    let before = r.drv.request_ring().used_idx(&*r.drv.mem).unwrap();
    log.lock().unwrap().clear();
    let status = (REQUESTS[n].1)(&mut r.drv);
    let seen = std::mem::take(&mut *log.lock().unwrap());
    for s in &seen {
        assert_eq!(
            (s.used_idx, s.status),
            (before, UNANSWERED),
            "{}: completion visible at host call {:?}",
            REQUESTS[n].0,
            s.op
        );
    }
    (status, seen)
}

/// What a run without failure did, request by request.
struct DryRun {
    /// The host calls of each request.
    ops: Vec<Vec<HostOp>>,
    /// The state after each request.
    after: Vec<(Tables, HostState)>,
}

fn dry_run(opts: &[&str]) -> DryRun {
    let mut r = rig_with(iommufd_sim::profile::HostProfile::VtdNonest.spec(), opts).unwrap();
    let log = watch(&mut r);
    let mut dry = DryRun {
        ops: Vec::new(),
        after: Vec::new(),
    };
    for (n, (what, _)) in REQUESTS.iter().enumerate() {
        let (status, seen) = send(&mut r, &log, n);
        assert_eq!(status, Status::Ok, "{what}");
        dry.ops.push(seen.iter().map(|s| s.op).collect());
        dry.after.push((tables(&r), host_state(&r)));
    }
    dry
}

/// Replays the sequence with `errno` injected at host call `call` of
/// request `n`; returns the request's status.
fn fail_at(opts: &[&str], dry: &DryRun, n: usize, call: usize, errno: Errno) -> Status {
    let what = REQUESTS[n].0;
    let mut r = rig_with(iommufd_sim::profile::HostProfile::VtdNonest.spec(), opts).unwrap();
    let log = watch(&mut r);
    for k in 0..n {
        assert_eq!(send(&mut r, &log, k).0, Status::Ok);
    }
    let before = (tables(&r), host_state(&r));
    // The sequence of host calls is the dry run's up to the failure.
    let op = dry.ops[n][call];
    let nth = dry.ops[n][..=call].iter().filter(|o| **o == op).count() as u64;
    r.sim.fail_nth(op, nth, errno);
    let (status, seen) = send(&mut r, &log, n);
    assert_eq!(seen.get(call).map(|s| s.op), Some(op), "{what}");
    let after = (tables(&r), host_state(&r));
    match status {
        // The failure did not matter to the request (a destroy the kernel
        // finishes on close, a fallback that worked): all of it was done.
        Status::Ok => assert_eq!(after, dry.after[n], "{what}: {op:?} failed, S_OK"),
        // Nothing of it was done, on the host or in the guest's view.
        Status::NoMem | Status::DevErr | Status::Unsupp => {
            assert_eq!(after, before, "{what}: {op:?} failed, {status:?}")
        }
        other => panic!("{what}: {op:?} failed: status {other:?}"),
    }
    status
}

fn every_host_call_fails_in_turn(opts: &[&str]) {
    let dry = dry_run(opts);
    let mut refused = 0;
    for (n, ops) in dry.ops.iter().enumerate() {
        for call in 0..ops.len() {
            for errno in [Errno::ENOMEM, Errno::EIO] {
                if fail_at(opts, &dry, n, call, errno) != Status::Ok {
                    refused += 1;
                }
            }
        }
    }
    let calls: usize = dry.ops.iter().map(Vec::len).sum();
    assert!(calls >= 8, "the sequence reaches the host: {:?}", dry.ops);
    assert!(
        refused >= calls,
        "{refused} refusals over {calls} host calls"
    );
}

#[test]
fn completion_never_visible_while_host_calls_run() {
    for (opts, detach_reaches_host) in [(&[][..], true), (&["bypass=1"][..], false)] {
        let dry = dry_run(opts);
        // Requests of the passthrough endpoint's domain reach the host;
        // the emulated endpoint's first ones do not, nor a DETACH from a
        // bypass domain when unattached endpoints bypass too.
        let reached: Vec<bool> = dry.ops.iter().map(|o| !o.is_empty()).collect();
        let mut want = vec![false, false, true, true, true, true, true];
        want.push(detach_reaches_host);
        assert_eq!(reached, want, "{opts:?}: {:?}", dry.ops);
    }
}

#[test]
fn completion_after_host_with_each_host_call_failing_in_turn() {
    every_host_call_fails_in_turn(&[]);
}

#[test]
fn completion_after_host_with_each_host_call_failing_in_turn_in_bypass_mode() {
    every_host_call_fails_in_turn(&["bypass=1"]);
}

#[test]
fn completion_hook_sees_the_used_entry_of_earlier_requests() {
    // The check is about the request in flight: earlier completions are
    // visible, and the hook reads them.
    let mut r = rig_with(iommufd_sim::profile::HostProfile::VtdNonest.spec(), &[]).unwrap();
    let log = watch(&mut r);
    for n in 0..3 {
        send(&mut r, &log, n);
    }
    assert_eq!(r.drv.request_ring().used_idx(&*r.drv.mem).unwrap(), 3);
    let (_, seen) = send(&mut r, &log, 3);
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.used_idx == 3));
    assert!(matches!(
        r.sim.attachment(r.dev_id, None),
        Some(PtId::Ioas(_) | PtId::Hwpt(_))
    ));
}
