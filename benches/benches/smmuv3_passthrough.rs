//! SMMUv3 passthrough: a CMD_SYNC batch of 64 TLBI_NH_VA for a nested
//! passthrough stream on the simulated host. Reports the host
//! `IOMMU_HWPT_INVALIDATE` calls per batch (1: the batch goes out in one
//! call; QEMU's and cloud-hypervisor's vSMMU send one per command, 64)
//! and the time per batch, CMD_SYNC completion included.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{HostBackend, HostOp};
use nesting_core::ram::{GuestRam, RamIoas};
use smmuv3::mock::{Driver, PageAlloc, cdtable_ste, cmd};
use smmuv3::{Smmuv3, Smmuv3Config};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const SID: u32 = 0x10;
const BATCH: u64 = 64;

struct Setup {
    mem: GuestMemoryMmap,
    smmu: Smmuv3,
    drv: Driver,
    sim: Arc<SimIommufd>,
}

/// A probed SMMU with passthrough stream `SID` nested on a host SMMUv3.
/// Guest RAM (32 MiB at 0) stays clear of the host's MSI window at 128 MiB.
fn setup() -> Setup {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    let mut a = PageAlloc::new(16 << 20, 16 << 20);
    let spec = HostProfile::Smmuv3Nest.spec();
    let sim = Arc::new(SimIommufd::with_host(spec.clone()));
    let host: SharedHost = sim.clone();
    let ram = Arc::new(RamIoas::new(&host, GuestRam::from_guest_memory(&mem).unwrap()).unwrap());
    let mut smmu = Smmuv3::new(Smmuv3Config::default());
    smmu.enable_passthrough(host.clone(), ram);
    let dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let mut view = spec.host_view();
    view.info = sim.hw_info(dev.id()).unwrap();
    smmu.add_passthrough(&mem, SID, dev, view)
        .map_err(|(e, _)| e)
        .unwrap();
    let mut drv = Driver::probe(&mut smmu, &mem, &mut a).unwrap();
    let cdt = Driver::cd_table(&mem, &mut a, 0, true);
    drv.install_ste(
        &mut smmu,
        &mem,
        &mut a,
        SID,
        cdtable_ste(cdt.0, 0, false, false),
    );
    Setup {
        mem,
        smmu,
        drv,
        sim,
    }
}

fn batch() -> Vec<[u64; 2]> {
    (0..BATCH).map(|i| cmd::tlbi_nh_va(0, 5, i << 12)).collect()
}

fn tlbi_batch(c: &mut Criterion) {
    let mut s = setup();
    let cmds = batch();
    s.sim.reset_counters();
    assert!(s.drv.issue(&mut s.smmu, &s.mem, &cmds));
    let calls = s.sim.calls(HostOp::HwptInvalidate);
    let entries = s.sim.invalidation_entries();
    assert_eq!((calls, entries), (1, BATCH));
    println!(
        "smmuv3 passthrough: {calls} IOMMU_HWPT_INVALIDATE per CMD_SYNC batch of {BATCH} TLBI_NH_VA ({entries} entries; QEMU, cloud-hypervisor: {BATCH})"
    );
    let mut g = c.benchmark_group("smmuv3_passthrough");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tlbi_nh_va_x64_sync", |b| {
        b.iter(|| black_box(s.drv.issue(&mut s.smmu, &s.mem, &cmds)))
    });
    g.finish();
}

criterion_group!(benches, tlbi_batch);
criterion_main!(benches);
