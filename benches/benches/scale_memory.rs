//! A million mappings (issue 16): heap bytes per live 4 KiB mapping at
//! 1e6 mappings, goal at most 64, measured with a counting global
//! allocator (bytes live after inserting the mappings minus before,
//! divided by their number), in
//! - virtio-iommu's domain table (`domain::Tables`);
//! - the shadow engine (`ShadowDomain`: guest spans and host runs), its
//!   simulated host's bytes measured apart (the same `IOMMU_IOAS_COPY`
//!   calls on a second simulator) and subtracted.
//!
//! Three patterns: scattered or contiguous GPAs with IOVAs mapped in
//! ascending order, and scattered GPAs with IOVAs mapped out of order.
//! Printed, not timed (a separate binary so that the timing benches run
//! on the system allocator alone). Figures (bytes per mapping):
//!
//! | layer                          | before | after       |
//! |--------------------------------|--------|-------------|
//! | virtio-iommu domain table      | 78.3   | 32.7 - 33.8 |
//! | shadow engine (spans + runs)   | 156.6  | 58.4 - 60.3 |
//! | simulated host (not a goal)    | 180.9  | 171 - 181   |

use std::hint::black_box;

use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, Ioas};
use nesting_core::host::{HostOp, IovaPlacement};
use nesting_core::shadow::ShadowDomain;
use nesting_core::types::{Access, Gpa, Iova};
use viommu_benches::counting::{Counting, live_bytes};
use virtio_iommu::domain::{Mapping, Tables};

#[global_allocator]
static ALLOC: Counting = Counting;

const PAGE: u64 = 4096;
const BASE: u64 = 1 << 32;
const RW: u32 = 3;

/// The IOVA of mapping `i`: every other page, as in the scale bench.
fn live_iova(i: u64) -> u64 {
    BASE + 2 * i * PAGE
}

/// The page of `pages` pages that mapping `i` targets: a stride that
/// keeps neighbours in IOVA apart in GPA, as a DMA API's pages are.
fn scattered(i: u64, pages: u64) -> u64 {
    (i.wrapping_mul(7919)) % pages
}

/// Heap bytes per mapping of virtio-iommu's domain table holding `n`
/// 4 KiB mappings (GPAs from `gpa`).
fn tables_bytes(n: u64, gpa: fn(u64) -> u64, order: fn(u64, u64) -> u64) -> f64 {
    let mut t = Tables::default();
    t.attach(8, 1, false);
    let before = live_bytes();
    for k in 0..n {
        let i = order(k, n);
        let iova = live_iova(i);
        t.insert_mapping(
            1,
            Mapping {
                iova_first: iova,
                iova_last: iova + PAGE - 1,
                gpa: gpa(i),
                flags: RW,
            },
        );
    }
    assert_eq!(t.total_mappings(), n as usize);
    let bytes = live_bytes() - before;
    black_box(&t);
    bytes as f64 / n as f64
}

/// Heap bytes per mapping of a shadow domain holding `n` 4 KiB guest
/// mappings, each mapped and synced on its own (as virtio-iommu does per
/// MAP): `(engine, simulated host)`. The host's share is measured by
/// making the same `IOMMU_IOAS_COPY` calls on a second simulator.
fn shadow_bytes(n: u64, gpa: fn(u64) -> u64, order: fn(u64, u64) -> u64) -> (f64, f64) {
    let host_only = {
        let (sim, host, ram) = viommu_benches::sim_with_ram(HostProfile::VtdNonest);
        let ioas = Ioas::alloc(&host).unwrap();
        let before = live_bytes();
        for k in 0..n {
            let i = order(k, n);
            host.ioas_copy(
                ioas.id(),
                IovaPlacement::Fixed(Iova(live_iova(i))),
                ram.ioas().id(),
                Iova(gpa(i)),
                PAGE,
                Access::RW,
            )
            .unwrap();
        }
        let bytes = live_bytes() - before;
        assert_eq!(sim.calls(HostOp::IoasCopy), n);
        black_box(&ioas);
        bytes
    };
    let (sim, host, ram) = viommu_benches::sim_with_ram(HostProfile::VtdNonest);
    let mut dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let mut domain = ShadowDomain::new(&host, &ram).unwrap();
    domain.attach(&mut dev, None).unwrap();
    sim.reset_counters();
    let before = live_bytes();
    for k in 0..n {
        let i = order(k, n);
        domain
            .map(Iova(live_iova(i)), Gpa(gpa(i)), PAGE, Access::RW)
            .unwrap();
        domain.sync().unwrap();
    }
    let total = live_bytes() - before;
    assert_eq!(sim.calls(HostOp::IoasCopy), n, "one host mapping each");
    black_box(&domain);
    let engine = total - host_only;
    (engine as f64 / n as f64, host_only as f64 / n as f64)
}

/// GPA patterns within the 1 GiB of [`viommu_benches::sim_with_ram`]:
/// scattered pages, and pages contiguous with their IOVA neighbours.
fn gpa_scattered(i: u64) -> u64 {
    scattered(i, (1 << 30) / PAGE) * PAGE
}

fn gpa_contiguous(i: u64) -> u64 {
    (i * PAGE) % (1 << 30)
}

/// Mapping `k` of `n` is the `order(k, n)`th page of the range: in IOVA
/// order, or shuffled (a stride coprime with 10^n).
fn ascending(k: u64, _n: u64) -> u64 {
    k
}

fn shuffled(k: u64, n: u64) -> u64 {
    k.wrapping_mul(7919) % n
}

fn memory_figures() {
    let n = 1_000_000;
    type Pattern = (&'static str, fn(u64) -> u64, fn(u64, u64) -> u64);
    let patterns: [Pattern; 3] = [
        ("scattered GPAs, IOVAs ascending", gpa_scattered, ascending),
        (
            "contiguous GPAs, IOVAs ascending",
            gpa_contiguous,
            ascending,
        ),
        ("scattered GPAs, IOVAs shuffled", gpa_scattered, shuffled),
    ];
    for (pattern, gpa, order) in patterns {
        let t = tables_bytes(n, gpa, order);
        println!(
            "scale: virtio-iommu domain table, {n} mappings ({pattern}): {t:.1} bytes per mapping (goal 64)"
        );
        let (engine, host) = shadow_bytes(n, gpa, order);
        println!(
            "scale: shadow engine, {n} mappings ({pattern}): {engine:.1} bytes per mapping (goal 64); simulated host {host:.1}"
        );
        assert!(t <= 64.0 && engine <= 64.0, "over the goal ({pattern})");
    }
}

fn main() {
    memory_figures();
}
