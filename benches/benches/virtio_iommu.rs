//! virtio-iommu: requests per second for MAP/UNMAP pairs of 4 KiB through
//! the request queue (emulated endpoints only, and with a passthrough
//! endpoint shadowed into SimIommufd), and translations per second for an
//! emulated endpoint (IOTLB hits, and misses that take the device lock).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nesting_core::host::HostOp;
use nesting_core::types::Access;
use viommu_benches::virtio_iommu_driver;
use virtio_iommu::Status;

const PAGE: u64 = 4096;
const RW: u32 = 3;

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_iommu_map_unmap_4k");
    g.throughput(Throughput::Elements(2));
    for (name, pt) in [("emulated", false), ("passthrough_sim", true)] {
        let (mut d, sim) = virtio_iommu_driver(pt);
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                let iova = 0x100_0000 + (i % 256) * PAGE;
                i += 1;
                assert_eq!(d.map(1, iova, iova + PAGE - 1, 0x40_0000, RW), Status::Ok);
                assert_eq!(d.unmap(1, iova, iova + PAGE - 1), Status::Ok);
            })
        });
        if let Some(sim) = sim {
            // Every pair reached the host: one COPY and one UNMAP each.
            assert!(sim.calls(HostOp::IoasCopy) + sim.calls(HostOp::IoasMap) >= i);
            assert!(sim.calls(HostOp::IoasUnmap) >= i);
        }
    }
    g.finish();
}

fn translate(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_iommu_translate");
    g.throughput(Throughput::Elements(1));
    let (mut d, _) = virtio_iommu_driver(false);
    // 8192 separate 4 KiB mappings: twice the IOTLB's entries.
    for p in 0..8192u64 {
        let iova = p * PAGE;
        assert_eq!(
            d.map(1, iova, iova + PAGE - 1, 0x10_0000 + (p % 64) * PAGE, RW),
            Status::Ok
        );
    }
    g.bench_function("iotlb_hit", |b| {
        b.iter(|| black_box(d.dev.translate(8, black_box(0x1008), Access::READ)))
    });
    let mut i = 0u64;
    g.bench_function("iotlb_miss_cycling_8192_pages", |b| {
        b.iter(|| {
            i = (i + 4099) % 8192;
            black_box(d.dev.translate(8, i * PAGE, Access::WRITE))
        })
    });
    g.finish();
}

criterion_group!(benches, map_unmap, translate);
criterion_main!(benches);
