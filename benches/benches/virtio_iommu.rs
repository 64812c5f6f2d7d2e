//! virtio-iommu: requests per second for MAP/UNMAP pairs of 4 KiB through
//! the request queue (emulated endpoints only, and with a passthrough
//! endpoint shadowed into SimIommufd), and translations per second for an
//! emulated endpoint (IOTLB hits, and misses that take the device lock).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::host::{HostOp, PtId};
use nesting_core::ladder::HostView;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::types::Access;
use virtio_iommu::mock::{MockDriver, config, mock_memory};
use virtio_iommu::{DeviceOptions, Status, VirtioIommu};

const PAGE: u64 = 4096;
const RW: u32 = 3;

/// A driver with endpoint 8 attached to domain 1; with `passthrough`,
/// endpoint 8 is a passthrough device shadowed into a SimIommufd IOAS.
fn driver(passthrough: bool) -> (MockDriver, Option<Arc<SimIommufd>>) {
    if !passthrough {
        let mut d = MockDriver::new(&[]);
        assert_eq!(d.attach(1, 8), Status::Ok);
        return (d, None);
    }
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let mem = mock_memory();
    let ram = Arc::new(RamIoas::new(&host, GuestRam::from_guest_memory(&*mem).unwrap()).unwrap());
    let mut bound = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let probe = Ioas::alloc(&host).unwrap();
    bound.attach(None, PtId::Ioas(probe.id())).unwrap();
    let ranges = host.ioas_iova_ranges(probe.id()).unwrap();
    let view = HostView {
        info: host.hw_info(bound.id()).unwrap(),
        iova_ranges: ranges.ranges,
        page_size: ranges.alignment,
        unit: None,
    };
    bound.detach(None).unwrap();
    drop(probe);
    let dev = Arc::new(VirtioIommu::new(&config(&[]), DeviceOptions::default()).unwrap());
    dev.set_passthrough_host(host, ram).unwrap();
    dev.add_passthrough(8, bound, &view)
        .map_err(|(e, _)| e)
        .unwrap();
    let mut d = MockDriver::with_memory(dev, mem, true);
    assert_eq!(d.attach(1, 8), Status::Ok);
    (d, Some(sim))
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtio_iommu_map_unmap_4k");
    g.throughput(Throughput::Elements(2));
    for (name, pt) in [("emulated", false), ("passthrough_sim", true)] {
        let (mut d, sim) = driver(pt);
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
    let (mut d, _) = driver(false);
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
