//! A VMM with a VT-d unit, on the simulated host: `cargo run --example vtd`.
//!
//! 1. Guest RAM and the VM's iommufd (two host IOMMUs: a VT-d that nests,
//!    one that does not), RAM mapped once into the RAM IOAS.
//! 2. The unit, its ACPI DMAR, its MSI callback.
//! 3. A passthrough device decided by the ladder (nested) and one refused.
//! 4. The guest's driver (the `vtd::mock` playing Linux) programs the unit
//!    through forwarded MMIO; its first-stage tables are nested on the host.
//! 5. An emulated device's DMA through vm-memory's `IommuMemory`; a fault
//!    and its MSI; an invalidation the device and the host follow.
//! 6. Stats, then snapshot and restore, the passthrough device re-added.

use std::sync::{Arc, Mutex};

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::iotlb::{IommuView, Translate};
use nesting_core::ladder::DecisionKind;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::snapshot::Snapshot;
use nesting_core::types::{Access, Bdf, Iova, RequesterId};
use viommu_examples::host_view;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};
use vtd::acpi::{Dmar, Drhd};
use vtd::mock::{FsTables, PageAlloc, PasidSetup, ScalableTables, desc, flpte, probe_like_linux};
use vtd::regs::off;
use vtd::{Interrupt, SharedVtd, Vtd, VtdConfig};

/// Guest RAM: 64 MiB at 0; the guest driver's tables come from its top half.
const RAM: u64 = 64 << 20;
/// Where the VMM maps the unit's 4 KiB register page.
const REGS: u64 = 0xfed9_0000;
const EMULATED: Bdf = Bdf::new(0, 1, 0);
const PASSTHROUGH: Bdf = Bdf::new(0, 2, 0);
const REFUSED: Bdf = Bdf::new(0, 3, 0);
/// The guest's domain IDs.
const DID_EMULATED: u16 = 1;
const DID_PASSTHROUGH: u16 = 2;
/// The emulated device's buffer: IOVA -> GPA.
const IOVA: u64 = 0x10_0000;
const GPA: u64 = 0x20_0000;

type Mem = GuestMemoryMmap<()>;

fn main() {
    // 1. The VM's memory and iommufd. A real VMM opens /dev/iommu
    //    (Iommufd::open, or Iommufd::from_shared over its own IommuFd).
    let mem = Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("RAM");
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNest.spec()));
    let nonest = sim.add_iommu(HostProfile::VtdNonest.spec());
    let host: SharedHost = sim.clone();
    let ram = Arc::new(
        RamIoas::new(&host, GuestRam::from_guest_memory(&mem).expect("ram")).expect("RAM IOAS"),
    );

    // 2. The unit and what firmware tells the guest about it.
    let mut dmar = Dmar::new(48);
    dmar.drhds
        .push(Drhd::for_devices(REGS, 0, &[EMULATED, PASSTHROUGH]));
    let table = dmar.sdt(*b"VIOMMU", *b"VIOMMUEX", 1).expect("DMAR");
    println!("vtd: DMAR of {} bytes, unit at {REGS:#x}", table.len());
    let mut unit = Vtd::new(VtdConfig::default());
    let msis: Arc<Mutex<Vec<Interrupt>>> = Arc::default();
    let sink = msis.clone();
    // A VMM signals the MSI (KVM_SIGNAL_MSI, an irqfd) here.
    unit.set_interrupt_callback(move |irq| sink.lock().unwrap().push(irq));
    unit.enable_passthrough(host.clone(), ram.clone());

    // 3. Passthrough devices, before the guest boots (or at hot-plug).
    let mut dev = BoundDevice::bind(&host, sim.add_device(0)).expect("bind");
    let pt_id = dev.id();
    let view = host_view(&host, &mut dev, sim.iommu_of(pt_id));
    let decision = unit
        .add_passthrough(&mem, PASSTHROUGH.0, dev, view)
        .map_err(|(e, _)| e)
        .expect("passthrough device accepted");
    println!(
        "vtd: device {:#06x}: {:?}: {}",
        PASSTHROUGH.0, decision.kind, decision.reason
    );
    assert_eq!(decision.kind, DecisionKind::Nested);
    let mut other = BoundDevice::bind(&host, sim.add_device(nonest)).expect("bind");
    let view = host_view(&host, &mut other, Some(nonest));
    match unit.add_passthrough(&mem, REFUSED.0, other, view) {
        // The hot-plug fails; the VMM keeps (or drops) the device.
        Err((why, _dev)) => println!("vtd: device {:#06x} refused: {why}", REFUSED.0),
        Ok(d) => panic!("a device that cannot nest joined a nested unit: {d}"),
    }

    // 4. The unit shared between the VMM's MMIO thread and device threads.
    let shared = Arc::new(SharedVtd::new(unit, mem.clone()));
    // The VMM's MMIO exit handler for [REGS, REGS + 4 KiB) forwards:
    let cap = shared.mmio_read(off::CAP, 8);
    println!("vtd: guest reads CAP = {cap:#x}");
    // The guest driver: tables in its RAM, then Linux's probe sequence,
    // every register access a forwarded MMIO access.
    let mut alloc = PageAlloc::new(RAM / 2, RAM / 2);
    let tables = ScalableTables::new(&mem, &mut alloc);
    let mut first_stage = |sid: Bdf, did: u16, gpa: u64| {
        let dir = tables.set_context(&mem, &mut alloc, sid.0, 0, 0);
        let fs = FsTables::new(&mem, &mut alloc, 4);
        fs.map(&mem, &mut alloc, IOVA, gpa, 12, flpte::RW | flpte::US);
        let pe = PasidSetup::first_stage(did, fs.root, 4, false, false);
        tables.set_pasid(&mem, &mut alloc, dir, 0, &pe);
        fs
    };
    let fs_emulated = first_stage(EMULATED, DID_EMULATED, GPA);
    let fs_passthrough = first_stage(PASSTHROUGH, DID_PASSTHROUGH, GPA + 0x1000);
    let mut queue = probe_like_linux(&mut shared.lock(), &mem, &mut alloc, tables.root).queue;
    // Fault events unmasked, as dmar_set_interrupt does.
    shared.mmio_write(off::FEDATA, 4, 0x41);
    shared.mmio_write(off::FEADDR, 4, 0xfee0_0000);
    shared.mmio_write(off::FECTL, 4, 0);
    let hwpt = sim
        .attached_hwpt(pt_id, None)
        .expect("nested stage 1 attached");
    println!("vtd: passthrough device's stage 1 nested on the host as HWPT {hwpt:?}");

    // 5. The emulated device's DMA, IOVA-addressed, through vm-memory.
    let view = IommuView::new(shared.clone(), RequesterId::Pci(EMULATED), None, false);
    let dma = IommuMemory::new(mem.clone(), view, true, ());
    dma.write_obj(0xfeed_f00du32, GuestAddress(IOVA + 0x10))
        .expect("DMA write");
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(GPA + 0x10)).unwrap(),
        0xfeed_f00d
    );
    assert_eq!(
        dma.read_obj::<u32>(GuestAddress(IOVA + 0x10)).unwrap(),
        0xfeed_f00d
    );
    println!(
        "vtd: emulated device wrote IOVA {:#x} -> GPA {:#x}",
        IOVA + 0x10,
        GPA + 0x10
    );
    assert!(
        dma.read_obj::<u32>(GuestAddress(0x30_0000)).is_err(),
        "unmapped IOVA"
    );
    let irq = *msis.lock().unwrap().last().expect("fault event MSI");
    println!(
        "vtd: unmapped IOVA faulted; fault event MSI {:#x} <- {:#x}",
        irq.addr, irq.data
    );
    assert_eq!((irq.addr, irq.data), (0xfee0_0000, 0x41));
    // The guest moves both buffers and invalidates: the device's view and
    // the host's nested IOTLB follow before the wait completes.
    fs_emulated.map(
        &mem,
        &mut alloc,
        IOVA,
        GPA + 0x2000,
        12,
        flpte::RW | flpte::US,
    );
    fs_passthrough.map(
        &mem,
        &mut alloc,
        IOVA,
        GPA + 0x3000,
        12,
        flpte::RW | flpte::US,
    );
    let inv = [
        desc::pasid_iotlb(DID_EMULATED, 0, None),
        desc::pasid_iotlb(DID_PASSTHROUGH, 0, None),
    ];
    assert!(
        queue.submit(&mut shared.lock(), &mem, &inv),
        "invalidation wait completes"
    );
    dma.write_obj(0x1234_5678u32, GuestAddress(IOVA + 0x10))
        .unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(GPA + 0x2010)).unwrap(),
        0x1234_5678
    );

    // A device model that asks per access (no vm-memory): cached after
    // the first walk, so the second is an IOTLB hit.
    for _ in 0..2 {
        let t = Translate::translate(
            &*shared,
            RequesterId::Pci(EMULATED),
            None,
            Iova(IOVA),
            Access::READ,
        );
        assert_eq!(t.expect("mapped").gpa_of(Iova(IOVA)).0, GPA + 0x2000);
    }

    // 6. Counters a VMM exports.
    let stats = shared.lock().stats();
    println!("vtd: stats {}", serde_json::to_string(&stats).unwrap());
    assert!(stats.iotlb_misses >= 2 && stats.iotlb_hits >= 1);
    assert_eq!(stats.faults, 1);
    assert!(stats.iotlb_invalidations > 0 && stats.invalidations_sent > 0);
    assert!(stats.host_calls > 0 && stats.passthrough_devices == 1);

    // Snapshot (bytes a VMM stores), then restore in a fresh unit. The
    // passthrough device is not in the snapshot: the destination binds its
    // own and adds it again (here: the same one, handed back).
    let bytes = shared.lock().to_bytes().expect("snapshot");
    let device = shared
        .lock()
        .remove_passthrough(PASSTHROUGH.0)
        .expect("device");
    drop(dma);
    drop(shared);
    let mut restored = Vtd::from_bytes(&bytes).expect("restore");
    restored.set_interrupt_callback(|_| {});
    restored.enable_passthrough(host.clone(), ram);
    let mut device = device;
    let view = host_view(&host, &mut device, Some(0));
    let again = restored
        .add_passthrough(&mem, PASSTHROUGH.0, device, view)
        .map_err(|(e, _)| e)
        .expect("re-added");
    assert_eq!(again.kind, DecisionKind::Nested);
    assert!(
        sim.attached_hwpt(pt_id, None).is_some(),
        "nested again from the restored tables"
    );
    let shared = Arc::new(SharedVtd::new(restored, mem.clone()));
    let view = IommuView::new(shared.clone(), RequesterId::Pci(EMULATED), None, false);
    let dma = IommuMemory::new(mem.clone(), view, true, ());
    assert_eq!(
        dma.read_obj::<u32>(GuestAddress(IOVA + 0x10)).unwrap(),
        0x1234_5678
    );
    println!(
        "vtd: restored from {} bytes; translations and the passthrough device are back",
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
