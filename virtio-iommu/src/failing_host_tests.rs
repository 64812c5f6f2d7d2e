//! A failing host (issue 16): random request sequences of a driver, with
//! the n-th host call of a request failing with an errno the kernel
//! returns for its op (`SimIommufd::fail_nth_call`, drawing from
//! `iommufd_sim::kernel_errnos`). After every request:
//!
//! - the guest-visible answer agrees with a reference: a twin device
//!   whose endpoint 8 is emulated (no host, never failing) gets the same
//!   request when the passthrough device answered it, and must answer the
//!   same with the same tables; a host error (S_NOMEM, S_DEVERR, or
//!   S_UNSUPP for an ATTACH the host refused) is allowed only when an
//!   injected failure fired, and then the device's tables are those the
//!   reference has without the request;
//! - the host holds exactly what the reference says for endpoint 8: the
//!   mappings of its domain (nothing the guest unmapped, nothing of
//!   another domain), guest RAM at IOVA = GPA in bypass, nothing when
//!   detached, or it is blocked (not attached at all) after a failure;
//! - the device is never half attached: no PASID attachment, and the RID
//!   on exactly one IOAS.
//!
//! 48 sequences by default; `VIOMMU_FAILING_HOST_CASES` sets another count.

use nesting_core::types::{Access, Pasid};
use proptest::prelude::*;

use crate::domain::Tables;
use crate::mock::MockDriver;
use crate::protocol::Status;
use crate::shadow_tests::{Rig, rig};

const RW: u32 = 3;
/// IOVA slots of 64 KiB, GPA slots of 64 KiB from 8 MiB.
const SLOT: u64 = 0x1_0000;
const PHYS: u64 = 0x80_0000;

#[derive(Clone, Debug)]
enum Op {
    Attach {
        domain: u32,
        endpoint: u32,
        bypass: bool,
    },
    Detach {
        domain: u32,
        endpoint: u32,
    },
    Map {
        domain: u32,
        slot: u64,
        pages: u64,
        phys: u64,
        write: bool,
    },
    Unmap {
        domain: u32,
        first: u64,
        last: Option<u64>,
    },
    Bypass(bool),
}

fn op() -> impl Strategy<Value = Op> {
    let domain = 1u32..4;
    let endpoint = prop::sample::select(vec![8u32, 8, 9]);
    prop_oneof![
        3 => (domain.clone(), endpoint.clone(), prop::bool::weighted(0.15))
            .prop_map(|(domain, endpoint, bypass)| Op::Attach { domain, endpoint, bypass }),
        1 => (domain.clone(), endpoint).prop_map(|(domain, endpoint)| Op::Detach { domain, endpoint }),
        4 => (domain.clone(), 0u64..16, 1u64..4, 0u64..64, any::<bool>())
            .prop_map(|(domain, slot, pages, phys, write)| Op::Map { domain, slot, pages, phys, write }),
        2 => (domain, 0u64..16, prop::option::of(0u64..16))
            .prop_map(|(domain, first, last)| Op::Unmap { domain, first, last }),
        1 => any::<bool>().prop_map(Op::Bypass),
    ]
}

/// A failure to inject: the `n`-th host call of the request fails, with
/// the errno at `errno` (modulo their number) of those the kernel
/// returns for its op.
#[derive(Clone, Copy, Debug)]
struct Fail {
    n: u64,
    errno: usize,
}

fn fail() -> impl Strategy<Value = Option<Fail>> {
    prop::option::weighted(
        0.6,
        (1u64..6, 0usize..8).prop_map(|(n, errno)| Fail { n, errno }),
    )
}

/// Sends `op`; `None` for a config write (no status).
fn send(d: &mut MockDriver, op: &Op) -> Option<Status> {
    Some(match *op {
        Op::Attach {
            domain,
            endpoint,
            bypass,
        } => d.attach_flags(domain, endpoint, u32::from(bypass)),
        Op::Detach { domain, endpoint } => d.detach(domain, endpoint),
        Op::Map {
            domain,
            slot,
            pages,
            phys,
            write,
        } => {
            let first = slot * SLOT;
            let flags = if write { RW } else { 1 };
            d.map(
                domain,
                first,
                first + pages * 0x1000 - 1,
                PHYS + phys * SLOT,
                flags,
            )
        }
        Op::Unmap {
            domain,
            first,
            last,
        } => match last {
            Some(l) => d.unmap(domain, first * SLOT, (l + 1) * SLOT - 1),
            None => d.unmap(domain, 0, u64::MAX),
        },
        Op::Bypass(on) => {
            d.dev.write_config(0x24, &[u8::from(on)]);
            return None;
        }
    })
}

fn tables(d: &MockDriver) -> Tables {
    d.dev.lock().state.tables.clone()
}

fn bypass(d: &MockDriver) -> bool {
    d.dev.lock().state.bypass
}

fn offers_bypass(d: &MockDriver) -> bool {
    let g = d.dev.lock();
    g.state
        .cfg
        .offered()
        .contains(crate::protocol::Features::BYPASS_CONFIG)
}

/// What endpoint 8's host must show, by content: `Blocked` (attached to
/// nothing), `Identity`, or the mappings of its domain as (IOVA, GPA,
/// bytes, writable).
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostView {
    Blocked,
    Identity,
    Maps(Vec<(u64, u64, u64, bool)>),
}

/// What the reference device says endpoint 8 sees.
fn expected(reference: &MockDriver) -> HostView {
    let g = reference.dev.lock();
    match g.state.place_of(8) {
        nesting_core::passthrough::Place::Blocked => HostView::Blocked,
        nesting_core::passthrough::Place::Identity => HostView::Identity,
        nesting_core::passthrough::Place::Shadow(d) => {
            let mut maps: Vec<_> = g
                .state
                .tables
                .domain(d)
                .map(|d| {
                    d.mappings
                        .values()
                        .map(|m| (m.iova_first, m.gpa, m.len(), m.flags & 2 != 0))
                        .collect()
                })
                .unwrap_or_default();
            maps.sort_unstable();
            HostView::Maps(maps)
        }
        nesting_core::passthrough::Place::Nested(_) => unreachable!("virtio-iommu never nests"),
    }
}

/// What the host shows for endpoint 8, checked page by page against
/// `want` where it maps: every page of every expected mapping with its
/// memory and access, and not one byte more.
fn host_matches(r: &Rig, want: &HostView) -> Result<(), String> {
    // Never half attached: no PASID, the RID on one IOAS or nothing.
    if r.sim.attachment(r.dev_id, Pasid::new(1)).is_some() {
        return Err("a PASID is attached".into());
    }
    let Some(ioas) = r.ioas() else {
        return match want {
            HostView::Blocked => Ok(()),
            HostView::Maps(m) if m.is_empty() => Ok(()),
            other => Err(format!("detached, want {other:?}")),
        };
    };
    let maps = r.sim.mappings(ioas);
    match want {
        HostView::Identity if ioas == r.ram_ioas => Ok(()),
        HostView::Identity => Err("identity wanted, not on the RAM IOAS".into()),
        HostView::Blocked if maps.is_empty() && ioas != r.ram_ioas => Ok(()),
        HostView::Blocked => Err(format!("blocked wanted, attached to {ioas:?}")),
        HostView::Maps(want) => {
            if ioas == r.ram_ioas {
                return Err("on the RAM IOAS, want a domain's mappings".into());
            }
            let host_bytes: u64 = maps
                .iter()
                .map(|m| m.range.last.0 - m.range.first.0 + 1)
                .sum();
            let want_bytes: u64 = want.iter().map(|m| m.2).sum();
            if host_bytes != want_bytes {
                return Err(format!(
                    "host maps {host_bytes:#x} bytes, want {want_bytes:#x}: {maps:?} vs {want:?}"
                ));
            }
            for &(iova, gpa, len, write) in want {
                for page in (0..len).step_by(0x1000) {
                    let got = r.host_at(iova + page);
                    let acc = if write {
                        Access::READ | Access::WRITE
                    } else {
                        Access::READ
                    };
                    if got != Some((r.hva(gpa + page), acc)) {
                        return Err(format!(
                            "{:#x}: host {got:x?}, want gpa {:#x} {acc:?}",
                            iova + page,
                            gpa + page
                        ));
                    }
                }
            }
            Ok(())
        }
    }
}

fn cases() -> u32 {
    std::env::var("VIOMMU_FAILING_HOST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// Runs one sequence; `Err` describes the first disagreement.
fn run(steps: &[(Op, Option<Fail>)]) -> Result<(), String> {
    let mut r = rig();
    let mut reference = MockDriver::new(&[]);
    let mut blocked_after_failure = false;
    for (i, (op, f)) in steps.iter().enumerate() {
        r.sim.clear_injections();
        if let Some(f) = f {
            r.sim.fail_nth_call(f.n, f.errno);
        }
        let before = (tables(&r.drv), bypass(&r.drv));
        let status = send(&mut r.drv, op);
        let fired = f.is_some() && r.sim.injections_pending() == 0;
        r.sim.clear_injections();
        let what = format!("step {i} {op:?} with {f:?} (fired: {fired}): {status:?}");
        if let Op::Bypass(on) = *op {
            // A config write has no status: it took effect, or the host
            // refused it (and it did not), or it is not offered.
            if bypass(&r.drv) == on {
                send(&mut reference, op);
            } else if offers_bypass(&reference) && !fired {
                return Err(format!("{what}: bypass not applied without a host failure"));
            }
        } else if matches!(status, Some(Status::NoMem | Status::DevErr))
            || (fired && status == Some(Status::Unsupp))
        {
            if !fired {
                return Err(format!("{what}: a host error without a host failure"));
            }
            // Nothing of the request happened in the guest's view.
            if (tables(&r.drv), bypass(&r.drv)) != before {
                return Err(format!("{what}: the guest's view changed"));
            }
        } else {
            let want = send(&mut reference, op);
            if want != status {
                return Err(format!("{what}: the reference answers {want:?}"));
            }
        }
        if tables(&r.drv) != tables(&reference) || bypass(&r.drv) != bypass(&reference) {
            return Err(format!("{what}: tables differ from the reference"));
        }
        let want = expected(&reference);
        match host_matches(&r, &want) {
            Ok(()) => blocked_after_failure = false,
            // A failure may leave the endpoint blocked rather than where it
            // was (never anywhere else), until it moves again.
            Err(_) if (fired || blocked_after_failure) && r.ioas().is_none() => {
                blocked_after_failure = true;
            }
            Err(e) => return Err(format!("{what}: host: {e}")),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn failing_host_keeps_guest_and_host_in_agreement(
        steps in prop::collection::vec((op(), fail()), 1..24),
    ) {
        if let Err(e) = run(&steps) {
            prop_assert!(false, "{}", e);
        }
    }
}
