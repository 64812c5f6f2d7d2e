//! Host-side costs: the simulated host's IOAS map/unmap (the floor under
//! every shadowing benchmark), the ladder, and script parsing.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::host::{IovaPlacement, MapSource, PtId};
use nesting_core::ladder;
use nesting_core::types::{Access, Iova};
use vtd::VtdConfig;

fn sim_map_unmap(c: &mut Criterion) {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let mut dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let ioas = Ioas::alloc(&host).unwrap();
    dev.attach(None, PtId::Ioas(ioas.id())).unwrap();
    // 512 existing mappings so lookups are not on an empty tree.
    for i in 0..512u64 {
        let iova = Iova(0x1000_0000 + i * 0x2000);
        ioas.map(
            IovaPlacement::Fixed(iova),
            MapSource::UserVa(0x7f00_0000_0000 + i * 0x1000),
            0x1000,
            Access::RW,
        )
        .unwrap();
    }
    let mut g = c.benchmark_group("sim_ioas");
    g.throughput(Throughput::Elements(1));
    g.bench_function("map_unmap_4k_pair", |b| {
        b.iter(|| {
            let iova = Iova(0x4000_0000);
            ioas.map(
                IovaPlacement::Fixed(iova),
                MapSource::UserVa(0x7f10_0000_0000),
                0x1000,
                Access::RW,
            )
            .unwrap();
            black_box(ioas.unmap(iova, 0x1000).unwrap());
        })
    });
    g.finish();
}

fn ladder_decide(c: &mut Criterion) {
    let view = HostProfile::VtdNest.spec().host_view();
    let guest = VtdConfig::default();
    c.bench_function("ladder_decide_vtd_on_vtd_nest", |b| {
        b.iter(|| black_box(ladder::decide(black_box(&guest), black_box(&view))))
    });
}

fn replay_parse(c: &mut Criterion) {
    let mut script = String::from("model virtio-iommu\nram 0 0x100000\n");
    for i in 0..1000u64 {
        script.push_str(&format!(
            "write32 {:#x} {i}\nread32 {:#x} & 0xffff == {i}\n",
            i * 4,
            i * 4
        ));
    }
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(2001));
    g.bench_function("parse_2000_lines", |b| {
        b.iter(|| black_box(viommu::replay::parse::parse_script(black_box(&script)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, sim_map_unmap, ladder_decide, replay_parse);
criterion_main!(benches);
