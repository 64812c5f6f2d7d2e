//! The nested engine (nesting-core `nested`) driven by a guest on a VT-d
//! or an SMMUv3 host: devices added and removed, contexts installed,
//! replaced and removed (any flags, table addresses, STE words),
//! invalidations queued and flushed, events and page requests polled and
//! answered, with host calls failing where the input says
//! (`SimIommufd::fail_nth`). After every step:
//! - an install that failed left the old context; one that succeeded
//!   shows the context (STE words masked to what the kernel takes);
//! - what each device and PASID is attached to on the host is what its
//!   context says (its own nested HWPT, the stage-2 parent, or blocked),
//!   and a device outside the engine is blocked;
//! - queued invalidations are counted exactly, and a flush empties the
//!   queue and reports only tags that were queued;
//! - at most one stage-2 parent per host IOMMU (more only after the host
//!   refused a device with an errno that means "this parent cannot take
//!   it"), and page requests waiting stay within their bound.
//! At the end every device comes back blocked, and dropping the engine
//! destroys every HWPT it made.
#![no_main]

#[path = "cursor.rs"]
mod cursor;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cursor::Cursor;
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use libfuzzer_sys::fuzz_target;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{Errno, HostOp, HwptId, PageResponseCode, VtdS1Flags, VtdS1Invalidation};
use nesting_core::nested::{
    MAX_PENDING_FAULTS, NestedConfig, NestedContext, NestedEngine, SMMUV3_STE0_NESTING_ALLOWED,
    SMMUV3_STE1_NESTING_ALLOWED,
};
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::types::{Access, Gpa, Iova, IovaRange, Pasid};

/// Most steps per input.
const MAX_STEPS: usize = 96;
/// Host devices: two behind IOMMU unit 0, one behind unit 1.
const DEVICES: usize = 3;
/// Guest IDs the input picks from.
const VSIDS: [u64; 4] = [0x10, 0x11, 0x18, 0x20];
const PASIDS: [Option<u32>; 3] = [None, Some(1), Some(7)];

struct Rig {
    sim: Arc<SimIommufd>,
    smmu: bool,
    e: NestedEngine,
    /// Devices not in the engine.
    pool: Vec<Option<BoundDevice>>,
    /// vsid -> pool slot of the devices in the engine.
    added: BTreeMap<u64, usize>,
    /// Tags queued since the last flush.
    queued: Vec<u64>,
    /// Every HWPT the engine showed: destroyed when it is dropped.
    hwpts: BTreeSet<u32>,
    /// Host calls made to fail: a failed detach leaves a device attached
    /// (the engine logs it; the host gave it no way out).
    injected: BTreeSet<HostOp>,
    /// Failures injected with EINVAL, EOPNOTSUPP or EBUSY: the engine
    /// takes them as "this parent cannot take the device" and may make
    /// another parent.
    incompatible: usize,
}

fn rig(c: &mut Cursor<'_>) -> Option<Rig> {
    let flags = c.u8()?;
    let smmu = flags & 1 == 1;
    let profile = if smmu { HostProfile::Smmuv3Nest } else { HostProfile::VtdNest };
    let sim = Arc::new(SimIommufd::with_host(profile.spec()));
    sim.add_iommu(profile.spec());
    let host: SharedHost = sim.clone();
    // Arm's `virt` machine has RAM from 1 GiB (clear of the host's MSI
    // window at 128 MiB), x86 from 0.
    let base = if smmu { 0x4000_0000 } else { 0 };
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(base),
        len: 256 << 20,
        backing: RamBacking::UserVa(0x7000_0000_0000),
    }])
    .expect("ram");
    let ram = Arc::new(RamIoas::new(&host, ram).expect("ram ioas"));
    let pool = (0..DEVICES)
        .map(|i| Some(BoundDevice::bind(&host, sim.add_device(u32::from(i == 2))).expect("bind")))
        .collect();
    let cfg = NestedConfig {
        dirty_tracking: flags & 2 != 0,
        iopf: flags & 4 != 0,
        veventq_depth: [0, 1, 64, 64][usize::from(flags >> 3 & 3)],
        fault_timeout: Duration::from_secs(10),
    };
    let e = NestedEngine::new(&host, &ram, cfg).ok()?;
    Some(Rig {
        sim,
        smmu,
        e,
        pool,
        added: BTreeMap::new(),
        queued: Vec::new(),
        hwpts: BTreeSet::new(),
        injected: BTreeSet::new(),
        incompatible: 0,
    })
}

fn pasid(c: &mut Cursor<'_>) -> Option<Option<Pasid>> {
    Some(PASIDS[c.pick(PASIDS.len())?].and_then(Pasid::new))
}

fn context(c: &mut Cursor<'_>) -> Option<NestedContext> {
    Some(match c.pick(4)? {
        0 => NestedContext::Abort,
        1 => NestedContext::Bypass,
        2 => NestedContext::VtdS1 {
            flags: VtdS1Flags::from_bits_retain(u64::from(c.u8()?)),
            pgtbl_addr: if c.bool()? { c.u64()? } else { u64::from(c.u16()?) << 12 },
            addr_width: [48, 57, 39, 0][c.pick(4)?],
        },
        _ => NestedContext::Smmuv3 {
            ste: if c.bool()? {
                [c.u64()?, c.u64()?]
            } else {
                // Valid, stage 1 translate, a CD table in RAM.
                [0x1 | 0b101 << 1 | (u64::from(c.u16()?) << 12) | 0x4000_0000, u64::from(c.u8()?)]
            },
        },
    })
}

/// The context as the engine keeps it.
fn normalized(ctx: NestedContext) -> NestedContext {
    match ctx {
        NestedContext::Smmuv3 { ste } => NestedContext::Smmuv3 {
            ste: [ste[0] & SMMUV3_STE0_NESTING_ALLOWED, ste[1] & SMMUV3_STE1_NESTING_ALLOWED],
        },
        c => c,
    }
}

const FAIL_OPS: [HostOp; 14] = [
    HostOp::GetHwInfo,
    HostOp::HwptAlloc,
    HostOp::ViommuAlloc,
    HostOp::VdeviceAlloc,
    HostOp::VeventqAlloc,
    HostOp::Attach,
    HostOp::Replace,
    HostOp::Detach,
    HostOp::Destroy,
    HostOp::HwptInvalidate,
    HostOp::VeventqRead,
    HostOp::FaultRead,
    HostOp::FaultRespond,
    HostOp::GetDirtyBitmap,
];
const ERRNOS: [Errno; 5] = [Errno::ENOMEM, Errno::EIO, Errno::EINVAL, Errno::EBUSY, Errno::EOPNOTSUPP];

fn add(c: &mut Cursor<'_>, r: &mut Rig) -> Option<()> {
    let (slot, vsid, initial) = (c.pick(DEVICES)?, VSIDS[c.pick(VSIDS.len())?], context(c)?);
    let Some(dev) = r.pool[slot].take() else { return Some(()) };
    let before = r.e.device(vsid);
    match r.e.add_device(vsid, dev, initial) {
        Ok(()) => {
            assert!(before.is_none(), "vsid {vsid:#x} added twice");
            assert_eq!(r.e.context(vsid, None), Some(normalized(initial)));
            r.added.insert(vsid, slot);
        }
        Err((_, dev)) => {
            assert_eq!(r.e.device(vsid), before, "a failed add changed vsid {vsid:#x}");
            r.pool[slot] = Some(dev);
        }
    }
    Some(())
}

fn remove(r: &mut Rig, vsid: u64) {
    match r.e.remove_device(vsid) {
        Ok(dev) => {
            let slot = r.added.remove(&vsid).expect("removed a device never added");
            if !r.injected.contains(&HostOp::Detach) {
                for p in PASIDS.map(|p| p.and_then(Pasid::new)) {
                    assert_eq!(r.sim.attachment(dev.id(), p), None, "removed device left attached");
                }
            }
            r.pool[slot] = Some(dev);
        }
        Err(_) => assert!(!r.added.contains_key(&vsid)),
    }
}

fn install(c: &mut Cursor<'_>, r: &mut Rig) -> Option<()> {
    let (vsid, p, ctx) = (VSIDS[c.pick(VSIDS.len())?], pasid(c)?, context(c)?);
    let before = r.e.context(vsid, p);
    match r.e.install(vsid, p, ctx) {
        Ok(()) => assert_eq!(r.e.context(vsid, p), Some(normalized(ctx))),
        Err(_) => assert_eq!(r.e.context(vsid, p), before, "a failed install changed the context"),
    }
    Some(())
}

fn queue(c: &mut Cursor<'_>, r: &mut Rig) -> Option<()> {
    let tag = u64::from(c.u16()?);
    if c.bool()? {
        let (vsid, p) = (VSIDS[c.pick(VSIDS.len())?], pasid(c)?);
        let inv = VtdS1Invalidation {
            addr: u64::from(c.u32()?) << [0, 12][c.pick(2)?],
            npages: [1, 2, 512, u64::MAX][c.pick(4)?],
            leaf: c.bool()?,
        };
        let has_hwpt = r.e.hwpt_of(vsid, p).is_some();
        assert_eq!(r.e.queue_vtd(vsid, p, inv, tag), has_hwpt);
        if has_hwpt {
            r.queued.push(tag);
        }
    } else {
        let vsid = if c.bool()? { Some(VSIDS[c.pick(VSIDS.len())?]) } else { None };
        let n = r.e.queue_smmuv3(vsid, [c.u64()?, c.u64()?], tag);
        match vsid {
            Some(v) => assert!(n <= usize::from(r.added.contains_key(&v) && r.smmu)),
            None => assert_eq!(n, r.e.viommus().len()),
        }
        r.queued.extend(std::iter::repeat_n(tag, n));
    }
    Some(())
}

fn flush(r: &mut Rig) {
    let report = r.e.flush();
    assert_eq!(r.e.queued(), 0);
    assert!(report.handled <= r.queued.len() as u64);
    assert!(report.calls <= r.queued.len() as u64);
    for f in &report.failures {
        assert!(f.tag == u64::MAX || r.queued.contains(&f.tag), "failure of a tag never queued");
        assert!(f.unsent.iter().all(|t| r.queued.contains(t)));
    }
    r.queued.clear();
}

fn events(c: &mut Cursor<'_>, r: &mut Rig) -> Option<()> {
    let now = Instant::now();
    match c.pick(4)? {
        0 => {
            let viommus = r.e.viommus();
            if let Some(&v) = viommus.get(c.pick(2)?) {
                let _ = r.sim.inject_vevent(v, vec![c.u8()?; 32]);
            }
        }
        1 => {
            let vsid = VSIDS[c.pick(VSIDS.len())?];
            if let Some(dev) = r.e.device(vsid) {
                let addr = Iova(u64::from(c.u32()?) << 12);
                let _ = r.sim.inject_page_fault(dev, pasid(c)?, addr, Access::READ, 1 + u32::from(c.u8()? % 3));
            }
        }
        2 => {
            if let Ok(evs) = r.e.poll_events(now) {
                assert!(evs.len() <= 2 * 256 * 2 + MAX_PENDING_FAULTS);
            }
        }
        _ => {
            let answered = r.e.expire(now + Duration::from_secs(u64::from(c.u8()?)));
            for cookie in answered {
                // Answered once: a second answer is refused.
                assert!(r.e.respond(cookie, PageResponseCode::Success).is_err());
            }
        }
    }
    Some(())
}

fn step(c: &mut Cursor<'_>, r: &mut Rig) -> Option<()> {
    match c.pick(16)? {
        0 | 1 => add(c, r)?,
        2 => remove(r, VSIDS[c.pick(VSIDS.len())?]),
        3..=5 => install(c, r)?,
        6 => {
            let (vsid, p) = (VSIDS[c.pick(VSIDS.len())?], Pasid::new(1 + u32::from(c.u8()? % 8)));
            if let Some(p) = p
                && r.e.remove_pasid(vsid, p).is_ok()
            {
                assert_eq!(r.e.context(vsid, Some(p)), None);
            }
        }
        7 | 8 => queue(c, r)?,
        9 | 10 => flush(r),
        11 => {
            let op = FAIL_OPS[c.pick(FAIL_OPS.len())?];
            let errno = ERRNOS[c.pick(ERRNOS.len())?];
            r.sim.fail_nth(op, 1 + u64::from(c.u8()? % 4), errno);
            r.injected.insert(op);
            r.incompatible += usize::from([Errno::EINVAL, Errno::EOPNOTSUPP, Errno::EBUSY].contains(&errno));
        }
        12 | 13 => events(c, r)?,
        14 => {
            let _ = r.e.set_dirty_tracking(c.bool()?);
        }
        _ => {
            let first = u64::from(c.u16()?) << 12;
            if let Some(range) = IovaRange::new(Iova(first), Iova(first + (64 << 12) - 1)) {
                if let Ok(bits) = r.e.read_dirty(range, 4096, c.bool()?) {
                    assert!(bits.len() <= 64);
                }
            }
        }
    }
    Some(())
}

fn check(r: &mut Rig) {
    let parents = r.e.stage2_parents();
    assert!(
        parents.len() <= 2 + r.incompatible,
        "more than one stage-2 parent per host IOMMU: {parents:?}"
    );
    r.hwpts.extend(parents.iter().map(|h| h.0));
    for (&vsid, &slot) in &r.added {
        let dev = r.e.device(vsid).expect("added device");
        assert!(r.pool[slot].is_none());
        for p in PASIDS.map(|p| p.and_then(Pasid::new)) {
            let ctx = r.e.context(vsid, p);
            let at = r.sim.attached_hwpt(dev, p);
            if let Some(h) = r.e.hwpt_of(vsid, p) {
                r.hwpts.insert(h.0);
                assert_eq!(at, Some(h), "{vsid:#x} {p:?} not on its nested HWPT");
                continue;
            }
            match ctx {
                None if p.is_some() => assert_eq!(at, None, "{vsid:#x} {p:?} attached without a context"),
                None => panic!("device {vsid:#x} without a RID context"),
                Some(NestedContext::Abort) if !r.smmu => assert_eq!(at, None),
                Some(NestedContext::Bypass) if !r.smmu => {
                    assert!(at.is_some_and(|h| parents.contains(&h)), "{vsid:#x} {p:?} bypass on {at:?}")
                }
                Some(NestedContext::VtdS1 { .. } | NestedContext::Smmuv3 { .. }) => {
                    panic!("{vsid:#x} {p:?}: a translating context without its HWPT")
                }
                Some(_) => {
                    assert!(at.is_some(), "{vsid:#x} {p:?} not attached");
                    r.hwpts.extend(at.map(|h| h.0));
                }
            }
        }
    }
    for dev in r.pool.iter().flatten().filter(|_| !r.injected.contains(&HostOp::Detach)) {
        for p in PASIDS.map(|p| p.and_then(Pasid::new)) {
            assert_eq!(r.sim.attachment(dev.id(), p), None, "a device outside the engine is attached");
        }
    }
    assert_eq!(r.e.queued(), r.queued.len());
    assert!(r.e.pending_faults() <= MAX_PENDING_FAULTS);
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let Some(mut r) = rig(&mut c) else { return };
    for _ in 0..MAX_STEPS {
        if step(&mut c, &mut r).is_none() {
            break;
        }
        check(&mut r);
    }
    flush(&mut r);
    let vsids: Vec<u64> = r.added.keys().copied().collect();
    for vsid in vsids {
        remove(&mut r, vsid);
    }
    assert!(r.pool.iter().all(Option::is_some));
    let Rig { sim, e, injected, hwpts, .. } = r;
    drop(e);
    // A failed destroy (injected) leaves its object, quietly.
    if injected.is_empty() {
        for h in hwpts {
            assert!(sim.hwpt(HwptId(h)).is_none(), "HWPT {h} outlived the engine");
        }
    }
});
