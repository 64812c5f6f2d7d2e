//! The shadow engine (nesting-core `shadow`) driven by a guest: map,
//! unmap, sync, attach and detach devices and PASIDs, identity on and off,
//! with host calls failing where the input says (`SimIommufd::fail_nth`).
//! After every step, against a page-granular reference of the guest's
//! mappings:
//! - the guest view is the reference as of the last successful sync (a
//!   failed sync leaves the domain as before);
//! - a device attached to the shadow IOAS reaches nothing the reference
//!   lacks (nothing stays mapped that was unmapped), and once no change is
//!   pending the IOAS holds exactly the reference's RAM pages that it can
//!   hold (not those its devices reserve or that lie beyond their
//!   aperture, which the engine skips);
//! - every device the domain lists is on its IOAS (or the RAM IOAS in
//!   identity, or blocked), and no other device is on its IOAS;
//! - a range the host cannot express is refused before anything changes.
//! At the end, syncs without failures settle the domain to the reference.
#![no_main]

#[path = "cursor.rs"]
mod cursor;

use std::collections::BTreeMap;
use std::sync::Arc;

use cursor::Cursor;
use iommufd_sim::profile::HostProfile;
use iommufd_sim::{SimBacking, SimIommufd};
use libfuzzer_sys::fuzz_target;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{DevId, Errno, HostOp, IoasId, PtId};
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::shadow::{ShadowDomain, ShadowError};
use nesting_core::types::{Access, Gpa, Iova, IovaRange, Pasid};

const PAGE: u64 = 0x1000;
/// Guest RAM: GPA 0 .. 64 MiB at VA0, and 4 GiB .. +16 MiB at VA1.
const VA0: u64 = 0x7000_0000_0000;
const VA1: u64 = 0x7100_0000_0000;
const RAM0_LEN: u64 = 64 << 20;
const RAM1: u64 = 0x1_0000_0000;
const RAM1_LEN: u64 = 16 << 20;
/// Most steps per input.
const MAX_STEPS: usize = 96;

/// The host memory behind a GPA, if it is RAM.
fn va_of(gpa: u64) -> Option<u64> {
    match gpa {
        g if g < RAM0_LEN => Some(VA0 + g),
        g if (RAM1..RAM1 + RAM1_LEN).contains(&g) => Some(VA1 + g - RAM1),
        _ => None,
    }
}

/// IOVA page -> (GPA, access): the guest's mappings.
type Reference = BTreeMap<u64, (u64, Access)>;

/// A maximal run of pages contiguous in IOVA and target with one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first: u64,
    last: u64,
    target: u64,
    access: Access,
}

/// Merges `(iova, len, target, access)` pieces, ascending by IOVA, into
/// maximal runs.
fn runs(pieces: impl Iterator<Item = (u64, u64, u64, Access)>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (iova, len, target, access) in pieces {
        let last = iova + (len - 1);
        if let Some(r) = out.last_mut()
            && r.last.checked_add(1) == Some(iova)
            && r.access == access
            && r.target.wrapping_add(r.last - r.first + 1) == target
        {
            r.last = last;
            continue;
        }
        out.push(Run { first: iova, last, target, access });
    }
    out
}

/// The reference's runs in guest terms (targets are GPAs).
fn guest_runs(r: &Reference) -> Vec<Run> {
    runs(r.iter().map(|(&i, &(g, a))| (i, PAGE, g, a)))
}

/// The reference's runs as the host must hold them (targets are host VAs;
/// pages whose GPA is not RAM are not mapped).
fn host_runs_expected(r: &Reference) -> Vec<Run> {
    runs(r.iter().filter_map(|(&i, &(g, a))| Some((i, PAGE, va_of(g)?, a))))
}

/// What the shadow IOAS holds.
fn host_runs(sim: &SimIommufd, ioas: IoasId) -> Vec<Run> {
    runs(sim.mappings(ioas).into_iter().map(|m| {
        let SimBacking::UserVa(va) = m.backing else {
            panic!("the shadow IOAS maps only guest RAM: {m:?}");
        };
        let first = m.range.first.raw();
        (first, m.range.last.raw() - first + 1, va, m.access)
    }))
}

/// `runs` cut to the IOVAs the IOAS can hold now (what the engine skips
/// as unmappable: reserved by its devices, beyond their aperture).
fn clip_to(all: &[Run], usable: &[IovaRange]) -> Vec<Run> {
    let mut pieces = Vec::new();
    for r in all {
        for u in usable {
            let (f, l) = (u.first.raw().max(r.first), u.last.raw().min(r.last));
            if f <= l {
                pieces.push((f, l - f + 1, r.target.wrapping_add(f - r.first), r.access));
            }
        }
    }
    runs(pieces.into_iter())
}

/// Every run of `small` lies inside one run of `big` with the same
/// target and access.
fn within(small: &[Run], big: &[Run]) -> bool {
    small.iter().all(|s| {
        let i = big.partition_point(|b| b.last < s.first);
        big.get(i).is_some_and(|b| {
            b.first <= s.first
                && s.last <= b.last
                && b.access == s.access
                && b.target.wrapping_add(s.first - b.first) == s.target
        })
    })
}

struct Rig {
    sim: Arc<SimIommufd>,
    host: SharedHost,
    ram: Arc<RamIoas>,
    devs: Vec<BoundDevice>,
}

fn rig() -> Rig {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![
        RamRegion { gpa: Gpa(0), len: RAM0_LEN, backing: RamBacking::UserVa(VA0) },
        RamRegion { gpa: Gpa(RAM1), len: RAM1_LEN, backing: RamBacking::UserVa(VA1) },
    ])
    .expect("ram");
    let ram = Arc::new(RamIoas::new(&host, ram).expect("ram ioas"));
    let devs = (0..2)
        .map(|_| BoundDevice::bind(&host, sim.add_device(0)).expect("bind"))
        .collect();
    Rig { sim, host, ram, devs }
}

/// The IOAS behind what `(dev, pasid)` is attached to.
fn attached_ioas(sim: &SimIommufd, dev: DevId, pasid: Option<Pasid>) -> Option<IoasId> {
    match sim.attachment(dev, pasid)? {
        PtId::Ioas(i) => Some(i),
        PtId::Hwpt(h) => sim.hwpt(h).map(|h| h.ioas),
        PtId::Viommu(_) => None,
    }
}

const PASIDS: [Option<u32>; 3] = [None, Some(1), Some(2)];

fn pasid(c: &mut Cursor<'_>) -> Option<Option<Pasid>> {
    Some(PASIDS[c.pick(PASIDS.len())?].and_then(Pasid::new))
}

/// An IOVA page: mostly low, sometimes at the top of the address space.
fn iova_page(c: &mut Cursor<'_>) -> Option<u64> {
    let b = c.u8()?;
    Some(if b & 0x80 != 0 { (u64::MAX >> 12) - u64::from(b & 31) } else { u64::from(b) })
}

/// A GPA page: low RAM, either end of each RAM region (where runs cross
/// into memory that is not RAM), or the top of the address space.
fn gpa_page(c: &mut Cursor<'_>) -> Option<u64> {
    let b = u64::from(c.u8()?);
    Some(match b & 7 {
        0..=2 => b >> 3,
        3 => (RAM0_LEN >> 12) - 8 + (b >> 3) % 16,
        4 => (RAM1 >> 12) - 8 + (b >> 3) % 16,
        5 => ((RAM1 + RAM1_LEN) >> 12) - 8 + (b >> 3) % 16,
        6 => (u64::MAX >> 12) - (b >> 3) % 16,
        _ => 0x100 + (b >> 3),
    })
}

fn access(c: &mut Cursor<'_>) -> Option<Access> {
    Some([Access::READ, Access::WRITE, Access::RW, Access::READ | Access::EXEC, Access::RW][c.pick(5)?])
}

/// Whether the engine must refuse this range (empty, misaligned or
/// wrapping), as ShadowDomain::map documents.
fn bad_range(iova: u64, gpa: u64, len: u64, align: u64) -> bool {
    len == 0
        || (iova | gpa | len) & (align - 1) != 0
        || gpa.checked_add(len - 1).is_none()
        || iova.checked_add(len - 1).is_none()
}

struct State {
    d: ShadowDomain,
    committed: Reference,
    staged: Reference,
    injections: usize,
    /// A detach was made to fail: a device the engine could neither
    /// switch back nor block stays where it was (logged; the host left no
    /// way out).
    detach_fails: bool,
}

fn stage_map(s: &mut State, iova: u64, gpa: u64, len: u64, acc: Access) {
    let bad = bad_range(iova, gpa, len, s.d.alignment());
    match s.d.map(Iova(iova), Gpa(gpa), len, acc) {
        Ok(()) => {
            assert!(!bad, "map {iova:#x} {gpa:#x} {len:#x} accepted");
            for p in 0..len / PAGE {
                s.staged.insert(iova + p * PAGE, (gpa + p * PAGE, acc & Access::RW));
            }
        }
        Err(e) => assert!(bad && matches!(e, ShadowError::BadRange { .. }), "{e:?}"),
    }
}

fn stage_unmap(s: &mut State, iova: u64, len: u64) {
    let bad = bad_range(iova, 0, len, s.d.alignment());
    match s.d.unmap(Iova(iova), len) {
        Ok(()) => {
            assert!(!bad);
            let last = iova + (len - 1);
            let gone: Vec<u64> = s.staged.range(iova..=last).map(|(&k, _)| k).collect();
            for k in gone {
                s.staged.remove(&k);
            }
        }
        Err(e) => assert!(bad && matches!(e, ShadowError::BadRange { .. }), "{e:?}"),
    }
}

fn sync(s: &mut State) {
    let before: Vec<Run> = runs(s.d.guest_mappings().map(|m| (m.first, m.last - m.first + 1, m.gpa, m.access)));
    let failed_before = s.d.stats().failed_syncs;
    match s.d.sync() {
        Ok(_) => s.committed = s.staged.clone(),
        Err(_) => {
            // As before, staged changes dropped.
            let after: Vec<Run> =
                runs(s.d.guest_mappings().map(|m| (m.first, m.last - m.first + 1, m.gpa, m.access)));
            assert_eq!(before, after, "a failed sync changed the guest view");
            assert_eq!(s.d.stats().failed_syncs, failed_before + 1);
            s.staged = s.committed.clone();
        }
    }
}

const FAIL_OPS: [HostOp; 9] = [
    HostOp::IoasCopy,
    HostOp::IoasMap,
    HostOp::IoasUnmap,
    HostOp::Replace,
    HostOp::Attach,
    HostOp::Detach,
    HostOp::HwptAlloc,
    HostOp::IoasIovaRanges,
    HostOp::Destroy,
];
const ERRNOS: [Errno; 5] = [Errno::ENOMEM, Errno::EIO, Errno::EINVAL, Errno::ENOSPC, Errno::EBUSY];

fn step(c: &mut Cursor<'_>, r: &mut Rig, s: &mut State) -> Option<()> {
    match c.pick(16)? {
        0..=3 => {
            let (i, g, n, a) = (iova_page(c)?, gpa_page(c)?, 1 + u64::from(c.u8()? % 16), access(c)?);
            stage_map(s, i.wrapping_mul(PAGE), g.wrapping_mul(PAGE), n * PAGE, a);
        }
        4 | 5 => {
            let (i, n) = (iova_page(c)?, 1 + u64::from(c.u8()? % 32));
            stage_unmap(s, i.wrapping_mul(PAGE), n * PAGE);
        }
        // Raw ranges: any address, any length up to 64 pages.
        6 => {
            let (i, g, n) = (c.u64()?, c.u64()?, c.u64()? & 0x3_ffff);
            if c.bool()? {
                stage_map(s, i, g, n, access(c)?);
            } else {
                stage_unmap(s, i, n);
            }
        }
        7 => {
            s.d.unmap_all();
            s.staged.clear();
        }
        8 | 9 => sync(s),
        10 => {
            let op = FAIL_OPS[c.pick(FAIL_OPS.len())?];
            let nth = 1 + u64::from(c.u8()? % 4);
            r.sim.fail_nth(op, nth, ERRNOS[c.pick(ERRNOS.len())?]);
            s.injections += 1;
            s.detach_fails |= op == HostOp::Detach;
        }
        11 | 12 => {
            let (dev, p, capable) = (&mut r.devs[c.pick(2)?], pasid(c)?, c.bool()?);
            let _ = if capable {
                s.d.attach_pasid_capable(dev, p)
            } else {
                s.d.attach(dev, p)
            };
        }
        13 => {
            let (dev, p) = (&mut r.devs[c.pick(2)?], pasid(c)?);
            let _ = s.d.detach(dev, p);
        }
        14 => {
            let _ = s.d.set_identity(c.bool()?);
        }
        _ => {
            s.d.discard_staged();
            s.staged = s.committed.clone();
        }
    }
    Some(())
}

fn check(r: &Rig, s: &State) {
    let guest: Vec<Run> = runs(s.d.guest_mappings().map(|m| (m.first, m.last - m.first + 1, m.gpa, m.access)));
    assert_eq!(guest, guest_runs(&s.committed), "guest view");
    let shadow = s.d.ioas().id();
    let ram = r.ram.ioas().id();
    let mut exposed = false;
    for dev in &r.devs {
        for p in PASIDS.map(|p| p.and_then(Pasid::new)) {
            let at = attached_ioas(&r.sim, dev.id(), p);
            if s.d.devices().contains(&(dev.id(), p)) {
                let want = if s.d.is_identity() { ram } else { shadow };
                assert!(
                    at.is_none() || at == Some(want) || s.detach_fails,
                    "{:?} {p:?} on {at:?}",
                    dev.id()
                );
            } else {
                assert_ne!(at, Some(shadow), "{:?} {p:?} left on the shadow IOAS", dev.id());
            }
            exposed |= at == Some(shadow);
        }
    }
    let host = host_runs(&r.sim, shadow);
    let want = clip_to(&host_runs_expected(&s.committed), &r.sim.usable_iovas(shadow));
    // Unless a detach was made to fail: when a sync, its rollback and the
    // emptying of the IOAS all fail, the engine blocks the devices, and a
    // device whose detach fails too keeps what the IOAS held.
    if exposed && !s.detach_fails {
        assert!(within(&host, &want), "a device reaches what the guest did not map:\n{host:x?}\n{want:x?}");
    }
    if !s.d.has_staged() {
        assert_eq!(host, want, "settled IOAS");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let mut r = rig();
    let Ok(d) = ShadowDomain::new(&r.host, &r.ram) else { return };
    let mut s = State { d, committed: Reference::new(), staged: Reference::new(), injections: 0, detach_fails: false };
    for _ in 0..MAX_STEPS {
        if step(&mut c, &mut r, &mut s).is_none() {
            break;
        }
        check(&r, &s);
    }
    // Each injection fires at most once, and a failing sync uses one up:
    // past them, syncs succeed and a pending rebuild completes.
    for _ in 0..s.injections + 2 {
        sync(&mut s);
        if !s.d.has_staged() {
            break;
        }
    }
    assert!(!s.d.has_staged(), "the domain did not settle");
    check(&r, &s);
});
