//! A VMM with a virtio-iommu, on the simulated host:
//! `cargo run --example virtio_iommu`.
//!
//! 1. Guest RAM and the VM's iommufd (a VT-d host without nesting, and one
//!    whose 64 KiB pages the guest's 4 KiB granule cannot use).
//! 2. The device, its interrupt callback, its firmware (VIOT), a
//!    passthrough endpoint (shadowed) and one refused.
//! 3. The transport: the driver (`virtio_iommu::mock` playing Linux)
//!    negotiates features, sets up both queues and sends requests; every
//!    notify is forwarded to the device.
//! 4. An emulated endpoint's DMA through vm-memory's `IommuMemory`; a
//!    fault reported on the event queue with its interrupt.
//! 5. Stats, then snapshot and restore into a device that has its
//!    passthrough endpoint re-added.

use std::sync::{Arc, Mutex};

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::iotlb::IommuView;
use nesting_core::ladder::DecisionKind;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::snapshot::Snapshot;
use nesting_core::types::{Bdf, EndpointId, RequesterId};
use viommu_examples::host_view;
use virtio_iommu::acpi::{Viot, ViotIommu, ViotPciRange};
use virtio_iommu::mock::MockDriver;
use virtio_iommu::{DeviceOptions, Interrupt, Status, VirtioIommu, VirtioIommuConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

const RAM: u64 = 64 << 20;
const EMULATED: u32 = 8;
const PASSTHROUGH: u32 = 16;
const REFUSED: u32 = 24;
const IOVA: u64 = 0x10_0000;
/// Above the mock driver's rings and buffers (its first 16 MiB).
const GPA: u64 = 0x300_0000;
const RW: u32 = 0b11; // VIRTIO_IOMMU_MAP_F_READ | WRITE

type Mem = GuestMemoryMmap<()>;

fn main() {
    // 1. The VM's memory and iommufd.
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("RAM"));
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let big_pages = sim.add_iommu(SimHostSpec::parse("vtd-nonest,pgsize=65536").expect("spec"));
    let host: SharedHost = sim.clone();
    let ram = Arc::new(
        RamIoas::new(&host, GuestRam::from_guest_memory(&*mem).expect("ram")).expect("RAM IOAS"),
    );

    // 2. The device and its passthrough endpoints.
    let cfg = VirtioIommuConfig::default();
    let dev = Arc::new(VirtioIommu::<Mem>::new(&cfg, DeviceOptions::default()).expect("device"));
    let irqs: Arc<Mutex<Vec<Interrupt>>> = Arc::default();
    let sink = irqs.clone();
    // A VMM raises the queue's MSI-X vector (an irqfd) for each cause.
    dev.set_interrupt(Arc::new(move |cause| sink.lock().unwrap().push(cause)));
    // An ACPI guest finds it through the VIOT: the IOMMU at 00:01.0, the
    // endpoints at 00:01.0 to 00:03.0 by requester ID.
    let mut viot = Viot::default();
    let iommu = viot.add_iommu(ViotIommu::Pci {
        segment: 0,
        bdf: Bdf::new(0, 4, 0),
    });
    viot.pci_ranges.push(ViotPciRange::by_requester_id(
        iommu,
        0,
        Bdf(EMULATED as u16),
        Bdf(REFUSED as u16),
    ));
    let table = viot.sdt(*b"VIOMMU", *b"VIOMMUEX", 1).expect("VIOT");
    println!("virtio-iommu: VIOT of {} bytes", table.len());
    dev.set_passthrough_host(host.clone(), ram.clone())
        .expect("host");
    let mut vfio = BoundDevice::bind(&host, sim.add_device(0)).expect("bind");
    let view = host_view(&host, &mut vfio, Some(0));
    let decision = dev
        .add_passthrough(PASSTHROUGH, vfio, &view)
        .map_err(|(e, _)| e)
        .expect("accepted");
    println!(
        "virtio-iommu: endpoint {PASSTHROUGH}: {:?}: {}",
        decision.kind, decision.reason
    );
    assert_eq!(decision.kind, DecisionKind::Shadow);

    // 3. The transport: the driver's feature negotiation, queue set-up and
    //    notifies reach ack_features, setup_queue and notify.
    let mut drv = MockDriver::with_memory(dev.clone(), mem.clone(), true);
    assert_eq!(drv.attach(1, EMULATED), Status::Ok);
    assert_eq!(drv.map(1, IOVA, IOVA + 0xfff, GPA, RW), Status::Ok);
    assert_eq!(drv.attach(2, PASSTHROUGH), Status::Ok);
    assert_eq!(drv.map(2, IOVA, IOVA + 0xfff, GPA + 0x1000, RW), Status::Ok);
    println!(
        "virtio-iommu: requests answered; interrupts {:?}",
        irqs.lock().unwrap().len()
    );
    // A hot-plug once the driver runs: its 4 KiB granule is fixed, a host
    // mapping 64 KiB pages cannot back it.
    let mut other = BoundDevice::bind(&host, sim.add_device(big_pages)).expect("bind");
    let view = host_view(&host, &mut other, Some(big_pages));
    match dev.add_passthrough(REFUSED, other, &view) {
        Err((why, _dev)) => println!("virtio-iommu: endpoint {REFUSED} refused: {why}"),
        Ok(d) => panic!("a 64 KiB host backed a 4 KiB guest granule: {d}"),
    }

    // 4. The emulated endpoint's DMA through vm-memory.
    let rid = RequesterId::Endpoint(EndpointId(EMULATED));
    let dma = IommuMemory::new(
        (*mem).clone(),
        IommuView::new(dev.clone(), rid, None, false),
        true,
        (),
    );
    dma.write_obj(0xfeed_f00du32, GuestAddress(IOVA + 0x10))
        .expect("DMA write");
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(GPA + 0x10)).unwrap(),
        0xfeed_f00d
    );
    println!(
        "virtio-iommu: endpoint {EMULATED} wrote IOVA {:#x} -> GPA {:#x}",
        IOVA + 0x10,
        GPA + 0x10
    );
    let before = irqs.lock().unwrap().len();
    assert!(
        dma.read_obj::<u32>(GuestAddress(0x30_0000)).is_err(),
        "unmapped IOVA"
    );
    let faults = drv.events();
    println!("virtio-iommu: fault reported: {faults:?}");
    assert_eq!(faults.len(), 1);
    assert!(irqs.lock().unwrap()[before..].contains(&Interrupt::Queue(1)));
    // Per-access translation (a device model without vm-memory): a hit.
    for _ in 0..2 {
        assert_eq!(
            dev.translate(EMULATED, IOVA, nesting_core::types::Access::READ)
                .gpa(),
            Some(GPA)
        );
    }

    // 5. Counters, snapshot and restore.
    let stats = dev.stats();
    println!(
        "virtio-iommu: stats {}",
        serde_json::to_string(&stats).unwrap()
    );
    assert!(stats.iotlb_hits >= 1 && stats.iotlb_misses >= 1 && stats.faults == 1);
    assert!(stats.host_calls > 0 && stats.passthrough_endpoints == 1);
    let bytes = dev.to_bytes().expect("snapshot");
    let vfio = dev.remove_passthrough(PASSTHROUGH).expect("endpoint");
    drop(dma);
    drop(drv);
    drop(dev);
    // The destination: a device, its passthrough endpoint, then the state.
    let dst = Arc::new(VirtioIommu::<Mem>::new(&cfg, DeviceOptions::default()).expect("device"));
    dst.set_passthrough_host(host.clone(), ram).expect("host");
    let mut vfio = vfio;
    let view = host_view(&host, &mut vfio, Some(0));
    dst.add_passthrough(PASSTHROUGH, vfio, &view)
        .map_err(|(e, _)| e)
        .expect("re-added");
    dst.restore(&VirtioIommu::<Mem>::state_from_bytes(&bytes).expect("state"))
        .expect("restore");
    dst.set_memory(mem.clone());
    let dma = IommuMemory::new(
        (*mem).clone(),
        IommuView::new(dst.clone(), rid, None, false),
        true,
        (),
    );
    assert_eq!(
        dma.read_obj::<u32>(GuestAddress(IOVA + 0x10)).unwrap(),
        0xfeed_f00d
    );
    println!(
        "virtio-iommu: restored from {} bytes; mappings and the passthrough endpoint are back",
        bytes.len()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_runs() {
        super::main();
    }
}
