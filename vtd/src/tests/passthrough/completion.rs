//! Issue 11's ordering check: at every host call the unit makes for a
//! passthrough device, the guest must not yet see the completion of the
//! invalidation that call serves: the wait's status dword still holds the
//! value Linux wrote before submitting, and no invalidation completion
//! interrupt has been raised. Checked for nested and shadowed devices, and
//! with the host failing each of its calls in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nesting_core::host::{Errno, HostOp};
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use vm_memory::GuestMemoryMmap;

use super::super::Harness;
use super::{DID, Nested, SID, Shadow, nested, shadow};
use crate::mock::{FsTables, PasidSetup, QI_DONE, Queue, desc};
use crate::regs::{ectl, off};
use crate::{Interrupt, InterruptSource};

/// What the host call hook saw.
#[derive(Default)]
struct Seen {
    /// A batch is in flight: its completion must not be visible yet.
    armed: AtomicBool,
    /// Host calls made while armed.
    calls: AtomicU64,
    /// Host calls made while armed that found the completion visible.
    violations: AtomicU64,
}

/// Installs the hook on `sim`: at every host call of an armed batch it
/// reads the status dword of `q` and counts the completion interrupts the
/// unit raised.
fn watch(
    sim: &iommufd_sim::SimIommufd,
    h: &Harness,
    q: &Queue,
) -> (Arc<Seen>, Arc<std::sync::Mutex<Vec<Interrupt>>>) {
    let seen = Arc::new(Seen::default());
    let mem: GuestMemoryMmap<()> = h.mem.clone();
    let status = q.status;
    let irqs = h.irqs.clone();
    let (s, i) = (seen.clone(), irqs.clone());
    sim.set_call_hook(Some(Arc::new(move |_op: HostOp| {
        if !s.armed.load(Ordering::SeqCst) {
            return;
        }
        s.calls.fetch_add(1, Ordering::SeqCst);
        let done = mem.read_u32_le(Gpa(status)).ok() == Some(QI_DONE);
        let irq = i
            .lock()
            .unwrap()
            .iter()
            .any(|x| x.source == InterruptSource::InvalidationCompletion);
        if done || irq {
            s.violations.fetch_add(1, Ordering::SeqCst);
        }
    })));
    (seen, irqs)
}

/// Submits `descs` as Linux does, with the wait asking for the completion
/// interrupt too (IECTL unmasked), the hook armed for the batch; returns
/// whether the batch completed.
fn submit_watched(seen: &Seen, h: &mut Harness, q: &mut Queue, descs: &[[u64; 2]]) -> bool {
    h.irqs.lock().unwrap().clear();
    h.write32(off::IECTL, 0);
    seen.armed.store(true, Ordering::SeqCst);
    let mut all = descs.to_vec();
    all.push(desc::wait(q.status, QI_DONE, true, false));
    let done = q.submit(&mut h.vtd, &h.mem, &all);
    seen.armed.store(false, Ordering::SeqCst);
    let ip = ectl::IP.is_set(h.read32(off::IECTL));
    done && !ip
}

/// A nested device's life: a PASID set up, IOTLB invalidations, the PASID
/// torn down; each step one batch.
fn nested_steps(n: &mut Nested, seen: &Seen) -> Vec<bool> {
    let fs = FsTables::new(&n.h.mem, &mut n.h.alloc, 4);
    let pe = PasidSetup::first_stage(DID, fs.root, 4, true, false);
    n.tables.set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 9, &pe);
    let mut out = vec![submit_watched(
        seen,
        &mut n.h,
        &mut n.q,
        &[
            desc::pasid_cache(1, DID, 9),
            desc::pasid_iotlb(DID, 9, None),
        ],
    )];
    let pages: Vec<[u64; 2]> = (0..8u64)
        .map(|i| desc::pasid_iotlb(DID, 5, Some((i << 12, 0, false))))
        .collect();
    out.push(submit_watched(seen, &mut n.h, &mut n.q, &pages));
    out.push(submit_watched(
        seen,
        &mut n.h,
        &mut n.q,
        &[desc::iotlb_domain(DID)],
    ));
    n.tables
        .set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 9, &PasidSetup::default());
    out.push(submit_watched(
        seen,
        &mut n.h,
        &mut n.q,
        &[
            desc::pasid_cache(1, DID, 9),
            desc::pasid_iotlb(DID, 9, None),
        ],
    ));
    out
}

/// A shadowed device's life: maps with their page invalidations, a
/// domain-wide invalidation, an unmap.
fn shadow_steps(s: &mut Shadow, seen: &Seen) -> Vec<bool> {
    let mut out = Vec::new();
    for i in 0..4u64 {
        let iova = 0x10_0000 + (i << 12);
        s.sl.map(
            &s.h.mem,
            &mut s.h.alloc,
            iova,
            0x20_0000 + (i << 12),
            12,
            true,
            true,
        );
        let inv = desc::iotlb_page(DID, iova, 0, false);
        out.push(submit_watched(seen, &mut s.h, &mut s.q, &[inv]));
    }
    out.push(submit_watched(
        seen,
        &mut s.h,
        &mut s.q,
        &[desc::iotlb_domain(DID)],
    ));
    s.sl.unmap(&s.h.mem, 0x10_0000, 12);
    let inv = desc::iotlb_page(DID, 0x10_0000, 0, false);
    out.push(submit_watched(seen, &mut s.h, &mut s.q, &[inv]));
    out
}

fn assert_ordered(seen: &Seen, what: &str) {
    assert!(
        seen.calls.load(Ordering::SeqCst) > 0,
        "{what}: the batches made no host call to check"
    );
    assert_eq!(
        seen.violations.load(Ordering::SeqCst),
        0,
        "{what}: a host call ran after the guest saw its invalidation complete"
    );
}

#[test]
fn nested_wait_completes_only_after_its_host_calls() {
    let mut n = nested();
    let (seen, _) = watch(&n.host.sim, &n.h, &n.q);
    let done = nested_steps(&mut n, &seen);
    assert!(done.iter().all(|d| *d), "{done:?}");
    assert_ordered(&seen, "nested");
}

#[test]
fn shadow_wait_completes_only_after_its_host_calls() {
    let mut s = shadow();
    let (seen, _) = watch(&s.host.sim, &s.h, &s.q);
    let done = shadow_steps(&mut s, &seen);
    assert!(done.iter().all(|d| *d), "{done:?}");
    assert_ordered(&seen, "shadow");
}

/// The ops the steps make, each failed at its n-th call in turn.
const FAILING: [(HostOp, Errno); 5] = [
    (HostOp::HwptInvalidate, Errno::EIO),
    (HostOp::HwptAlloc, Errno::ENOMEM),
    (HostOp::IoasCopy, Errno::ENOMEM),
    (HostOp::IoasMap, Errno::ENOMEM),
    (HostOp::IoasUnmap, Errno::EIO),
];

#[test]
fn nested_wait_never_completes_before_its_host_calls_when_the_host_fails() {
    for (op, errno) in FAILING {
        for nth in 1..=6 {
            let mut n = nested();
            let (seen, _) = watch(&n.host.sim, &n.h, &n.q);
            n.host.sim.fail_nth(op, nth, errno);
            // A failed batch is retried as Linux does; whatever the host
            // refused, no completion is seen before a host call.
            nested_steps(&mut n, &seen);
            let what = format!("nested, {op:?} #{nth} fails");
            assert_eq!(seen.violations.load(Ordering::SeqCst), 0, "{what}");
        }
    }
}

#[test]
fn shadow_wait_never_completes_before_its_host_calls_when_the_host_fails() {
    for (op, errno) in FAILING {
        for nth in 1..=6 {
            let mut s = shadow();
            let (seen, _) = watch(&s.host.sim, &s.h, &s.q);
            s.host.sim.fail_nth(op, nth, errno);
            let done = shadow_steps(&mut s, &seen);
            let what = format!("shadow, {op:?} #{nth} fails");
            assert_eq!(seen.violations.load(Ordering::SeqCst), 0, "{what}");
            // A one-off failure is retried by the guest and ends mapped.
            assert!(done.iter().all(|d| *d), "{what}: {done:?}");
            let mapped = (1..4u64).all(|i| s.backing(0x10_0000 + (i << 12)).is_some());
            assert!(mapped && s.backing(0x10_0000).is_none(), "{what}");
        }
    }
}

/// The hook is a real check: a unit that completes first would be caught.
#[test]
fn watch_catches_a_completion_written_before_a_host_call() {
    let mut n = nested();
    let (seen, _) = watch(&n.host.sim, &n.h, &n.q);
    seen.armed.store(true, Ordering::SeqCst);
    n.h.mem.write_u32_le(Gpa(n.q.status), QI_DONE).unwrap();
    // Any host call now: a context change re-reads the PASID entries.
    let _ = n.h.vtd.remove_passthrough(SID);
    seen.armed.store(false, Ordering::SeqCst);
    assert!(seen.violations.load(Ordering::SeqCst) > 0);
}
