//! The nested engine over the simulated host: host calls per 64 guest
//! invalidations issued between two syncs (goal 1, checked and printed
//! before timing), and the time to queue and flush them.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::BoundDevice;
use nesting_core::host::{HostOp, VtdS1Flags, VtdS1Invalidation};
use nesting_core::nested::{NestedConfig, NestedContext, NestedEngine};

fn setup() -> (Arc<SimIommufd>, NestedEngine) {
    let (sim, host, ram) = viommu_benches::sim_with_ram(HostProfile::VtdNest);
    let mut e = NestedEngine::new(&host, &ram, NestedConfig::default()).unwrap();
    let dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    e.add_device(0x10, dev, NestedContext::Bypass)
        .map_err(|(e, _)| e)
        .unwrap();
    let s1 = NestedContext::VtdS1 {
        flags: VtdS1Flags::empty(),
        pgtbl_addr: 0x1000,
        addr_width: 48,
    };
    e.install(0x10, None, s1).unwrap();
    (sim, e)
}

fn queue_64(e: &mut NestedEngine) {
    for i in 0..64u64 {
        let inv = VtdS1Invalidation {
            addr: i << 12,
            npages: 1,
            leaf: true,
        };
        e.queue_vtd(0x10, None, inv, i);
    }
}

fn nested(c: &mut Criterion) {
    let (sim, mut e) = setup();
    sim.reset_counters();
    queue_64(&mut e);
    let r = e.flush();
    let calls = sim.calls(HostOp::HwptInvalidate);
    println!("nested: 64 guest invalidations between two syncs: {calls} host call(s) (goal 1)");
    assert_eq!((calls, r.handled), (1, 64));

    let mut g = c.benchmark_group("nested");
    g.throughput(Throughput::Elements(64));
    g.bench_function("queue+flush 64 VT-d stage-1 invalidations", |b| {
        b.iter(|| {
            queue_64(&mut e);
            black_box(e.flush())
        })
    });
    g.finish();
}

criterion_group!(benches, nested);
criterion_main!(benches);
