//! The shadow engine over the simulated host: guest mappings per second,
//! and the host cost of the guest patterns the issue names, printed and
//! checked against their goals before timing:
//! - pages newly pinned when a guest maps memory already pinned (goal 0);
//! - host calls when a guest maps a 2 MiB buffer 4 KiB at a time and
//!   invalidates once (goal 1);
//! - host calls per 4 KiB page mapped and unmapped one by one (goal 1 each).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::HostOp;
use nesting_core::host::objects::BoundDevice;
use nesting_core::shadow::ShadowDomain;
use nesting_core::types::{Access, Gpa, Iova};

const PAGE: u64 = 4096;

struct Setup {
    sim: Arc<SimIommufd>,
    _dev: BoundDevice,
    domain: ShadowDomain,
}

fn setup() -> Setup {
    let (sim, host, ram) = viommu_benches::sim_with_ram(HostProfile::VtdNonest);
    let mut dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let mut domain = ShadowDomain::new(&host, &ram).unwrap();
    domain.attach(&mut dev, None).unwrap();
    Setup {
        sim,
        _dev: dev,
        domain,
    }
}

fn host_calls(sim: &SimIommufd) -> u64 {
    [
        HostOp::IoasMap,
        HostOp::IoasMapFile,
        HostOp::IoasCopy,
        HostOp::IoasUnmap,
    ]
    .into_iter()
    .map(|op| sim.calls(op))
    .sum()
}

fn figures() {
    let mut s = setup();
    // A 2 MiB buffer mapped 4 KiB at a time, then one invalidation.
    s.sim.reset_counters();
    for i in 0..512 {
        s.domain
            .map(
                Iova(0x1000_0000 + i * PAGE),
                Gpa(0x20_0000 + i * PAGE),
                PAGE,
                Access::RW,
            )
            .unwrap();
    }
    s.domain.sync().unwrap();
    let batch_calls = host_calls(&s.sim);
    println!("shadow: 2 MiB mapped 4 KiB at a time, one sync: {batch_calls} host call(s) (goal 1)");
    assert_eq!(batch_calls, 1);

    // The same memory mapped again at other IOVAs: no new pins.
    let pinned = s.sim.pinned_pages();
    for i in 0..512 {
        s.domain
            .map(
                Iova(0x2000_0000 + i * PAGE),
                Gpa(0x20_0000 + i * PAGE),
                PAGE,
                Access::READ,
            )
            .unwrap();
        s.domain.sync().unwrap();
    }
    let new_pins = s.sim.pinned_pages() - pinned;
    println!("shadow: pages newly pinned re-mapping 512 pinned pages: {new_pins} (goal 0)");
    assert_eq!(new_pins, 0);

    // 4 KiB pages mapped and unmapped one by one.
    s.sim.reset_counters();
    for i in 0..256 {
        let iova = Iova(0x4000_0000 + i * PAGE);
        s.domain.map(iova, Gpa(i * PAGE), PAGE, Access::RW).unwrap();
        s.domain.sync().unwrap();
        s.domain.unmap(iova, PAGE).unwrap();
        s.domain.sync().unwrap();
    }
    let per_op = host_calls(&s.sim) as f64 / 512.0;
    println!(
        "shadow: 4 KiB map/unmap one by one: {per_op} host call(s) per guest operation (goal 1)"
    );
    assert!(per_op <= 1.0);
}

fn shadow(c: &mut Criterion) {
    figures();
    let mut s = setup();
    // 256 live mappings so lookups are not on an empty tree.
    for i in 0..256 {
        s.domain
            .map(
                Iova(0x8000_0000 + i * 2 * PAGE),
                Gpa(i * 2 * PAGE),
                PAGE,
                Access::RW,
            )
            .unwrap();
    }
    s.domain.sync().unwrap();
    let mut g = c.benchmark_group("shadow");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("map+sync+unmap+sync 4K", |b| {
        b.iter(|| {
            i = (i + 1) % 1024;
            let iova = Iova(0x1_0000_0000 + i * PAGE);
            s.domain.map(iova, Gpa(i * PAGE), PAGE, Access::RW).unwrap();
            black_box(s.domain.sync().unwrap());
            s.domain.unmap(iova, PAGE).unwrap();
            black_box(s.domain.sync().unwrap());
        })
    });
    g.throughput(Throughput::Elements(512));
    g.bench_function("512 x 4K maps, one sync, then unmap", |b| {
        b.iter(|| {
            for p in 0..512 {
                s.domain
                    .map(
                        Iova(0x2_0000_0000 + p * PAGE),
                        Gpa(0x100_0000 + p * PAGE),
                        PAGE,
                        Access::RW,
                    )
                    .unwrap();
            }
            black_box(s.domain.sync().unwrap());
            s.domain.unmap(Iova(0x2_0000_0000), 512 * PAGE).unwrap();
            black_box(s.domain.sync().unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, shadow);
criterion_main!(benches);
