//! A VMM with an SMMUv3, on the simulated host: `cargo run --example smmuv3`.
//!
//! 1. Guest RAM and the VM's iommufd (two host SMMUs: one with stage 1
//!    and 2, one stage 2 only), RAM mapped once into the RAM IOAS.
//! 2. The SMMU, its interrupt callback, and a passthrough device decided
//!    by the ladder (nested) and one refused.
//! 3. The firmware tables the guest finds it by: the IORT (with an RMR for
//!    the passthrough device's host MSI window) and the device-tree node.
//! 4. The guest's driver (`smmuv3::mock` playing Linux) probes through
//!    forwarded MMIO and installs STEs and CDs; the passthrough device's
//!    STE is nested on the host.
//! 5. An emulated device's DMA through vm-memory's `IommuMemory`; a fault,
//!    its event record and interrupt; a TLB invalidation the host gets.
//! 6. Stats, then snapshot and restore, the passthrough device re-added.

use std::sync::{Arc, Mutex};

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::iotlb::IommuView;
use nesting_core::ladder::DecisionKind;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::snapshot::Snapshot;
use nesting_core::types::{Access, Iova, RequesterId, StreamId};
use smmuv3::acpi::{IdMap, Iort, ItsGroup, Rmr, RootComplex, SmmuIrqs, SmmuNode, Target};
use smmuv3::fdt::{IommuMapEntry, SmmuInterrupts, write_iommu_map, write_smmuv3_node};
use smmuv3::mock::{Driver, PageAlloc, PageTable, cdtable_ste, cmd, pte, s1_cd};
use smmuv3::walk::Granule;
use smmuv3::{Interrupt, SharedSmmuv3, Smmuv3, Smmuv3Config, TranslateResult};
use viommu_examples::host_view;
use vm_fdt::FdtWriter;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

/// Guest RAM: 64 MiB at 0 (below the host's MSI window at 128 MiB).
const RAM: u64 = 64 << 20;
/// Where the VMM maps the SMMU's two 64 KiB pages.
const BASE: u64 = 0x0905_0000;
const EMULATED: u32 = 0x08;
const PASSTHROUGH: u32 = 0x10;
const REFUSED: u32 = 0x18;
const ASID_EMULATED: u16 = 1;
const ASID_PASSTHROUGH: u16 = 2;
const IOVA: u64 = 0x10_0000;
const GPA: u64 = 0x20_0000;

type Mem = GuestMemoryMmap<()>;

fn main() {
    // 1. The VM's memory and iommufd.
    let mem = Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("RAM");
    let sim = Arc::new(SimIommufd::with_host(HostProfile::Smmuv3Nest.spec()));
    let s2only = sim.add_iommu(HostProfile::Smmuv3S2only.spec());
    let host: SharedHost = sim.clone();
    let ram = Arc::new(
        RamIoas::new(&host, GuestRam::from_guest_memory(&mem).expect("ram")).expect("RAM IOAS"),
    );

    // 2. The SMMU and its passthrough devices.
    let mut smmu = Smmuv3::new(Smmuv3Config::default());
    let irqs: Arc<Mutex<Vec<Interrupt>>> = Arc::default();
    let sink = irqs.clone();
    // A VMM raises the wired SPI (or writes the MSI); true: delivered.
    smmu.set_interrupt_callback(move |irq| {
        sink.lock().unwrap().push(irq);
        true
    });
    smmu.enable_passthrough(host.clone(), ram.clone());
    let mut dev = BoundDevice::bind(&host, sim.add_device(0)).expect("bind");
    let pt_id = dev.id();
    let view = host_view(&host, &mut dev, Some(0));
    let decision = smmu
        .add_passthrough(&mem, PASSTHROUGH, dev, view)
        .map_err(|(e, _)| e)
        .expect("passthrough device accepted");
    println!(
        "smmuv3: stream {PASSTHROUGH:#x}: {:?}: {}",
        decision.kind, decision.reason
    );
    assert_eq!(decision.kind, DecisionKind::Nested);
    let mut other = BoundDevice::bind(&host, sim.add_device(s2only)).expect("bind");
    let view = host_view(&host, &mut other, Some(s2only));
    match smmu.add_passthrough(&mem, REFUSED, other, view) {
        Err((why, _dev)) => println!("smmuv3: stream {REFUSED:#x} refused: {why}"),
        Ok(d) => panic!("a stage-2-only host backed a stage-1 guest: {d}"),
    }

    // 3. Firmware tables: every RID is StreamID = RID; the passthrough
    //    stream keeps the host's MSI doorbell window mapped one-to-one.
    let window = smmu
        .passthrough_msi_window(PASSTHROUGH)
        .expect("MSI window");
    let mut iort = Iort::default();
    iort.its_groups.push(ItsGroup { its_ids: vec![0] });
    let mut node = SmmuNode::new(BASE, SmmuIrqs::spis(106));
    node.id_maps
        .push(IdMap::identity(0, 0x1_0000, Target::ItsGroup(0)));
    iort.smmus.push(node);
    iort.root_complexes.push(RootComplex::new(
        0,
        IdMap::identity(0, 0x1_0000, Target::Smmu(0)),
    ));
    iort.rmrs.push(Rmr::msi_window(0, &[PASSTHROUGH], window));
    let table = iort.sdt(*b"VIOMMU", *b"VIOMMUEX", 1).expect("IORT");
    println!(
        "smmuv3: IORT of {} bytes, RMR {:#x}..={:#x}",
        table.len(),
        window.first.0,
        window.last.0
    );
    let mut fdt = FdtWriter::new().unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    write_smmuv3_node(&mut fdt, BASE, 3, &SmmuInterrupts::spis(74)).expect("node");
    let pcie = fdt.begin_node("pcie@10000000").unwrap();
    let map = IommuMapEntry {
        rid_base: 0,
        iommu: 3,
        sid_base: 0,
        length: 0x1_0000,
    };
    write_iommu_map(&mut fdt, &[map]).expect("iommu-map");
    fdt.end_node(pcie).unwrap();
    fdt.end_node(root).unwrap();
    println!(
        "smmuv3: device tree of {} bytes",
        fdt.finish().unwrap().len()
    );

    // 4. Shared between the MMIO thread and device threads; the guest
    //    driver's register accesses are forwarded MMIO.
    let shared = Arc::new(SharedSmmuv3::new(smmu, mem.clone()));
    println!("smmuv3: guest reads IDR0 = {:#x}", shared.mmio_read(0, 4));
    let mut alloc = PageAlloc::new(RAM / 2, RAM / 2);
    let mut drv = Driver::probe(&mut shared.lock(), &mem, &mut alloc).expect("probe");
    let mut attach = |drv: &mut Driver, sid: u32, asid: u16, gpa: u64| {
        let pt = PageTable::stage1(&mem, &mut alloc, Granule::G4K, 48, 48);
        pt.map(&mem, &mut alloc, IOVA, gpa, 3, pte::s1(true, false, false));
        let cdt = Driver::cd_table(&mem, &mut alloc, 0, false);
        let mut g = shared.lock();
        drv.install_ste(
            &mut g,
            &mem,
            &mut alloc,
            sid,
            cdtable_ste(cdt.0, 0, false, false),
        );
        drv.install_cd(
            &mut g,
            &mem,
            &mut alloc,
            cdt,
            sid,
            0,
            s1_cd(asid, &pt, 5, false),
        );
        pt
    };
    let pt_emulated = attach(&mut drv, EMULATED, ASID_EMULATED, GPA);
    attach(&mut drv, PASSTHROUGH, ASID_PASSTHROUGH, GPA + 0x1000);
    let hwpt = sim.attached_hwpt(pt_id, None).expect("nested STE");
    println!("smmuv3: passthrough STE nested on the host as HWPT {hwpt:?}");

    // 5. The emulated device's DMA through vm-memory.
    let view = IommuView::new(
        shared.clone(),
        RequesterId::Stream(StreamId(EMULATED)),
        None,
        false,
    );
    let dma = IommuMemory::new(mem.clone(), view, true, ());
    dma.write_obj(0xfeed_f00du32, GuestAddress(IOVA + 0x10))
        .expect("DMA write");
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(GPA + 0x10)).unwrap(),
        0xfeed_f00d
    );
    println!(
        "smmuv3: emulated device wrote IOVA {:#x} -> GPA {:#x}",
        IOVA + 0x10,
        GPA + 0x10
    );
    assert!(
        dma.read_obj::<u32>(GuestAddress(0x30_0000)).is_err(),
        "unmapped IOVA"
    );
    let event = drv
        .next_event(&mut shared.lock(), &mem)
        .expect("event record");
    println!(
        "smmuv3: fault event {:#x?}, interrupts {:?}",
        event.0[0] & 0xff,
        irqs.lock().unwrap().last()
    );
    assert!(!irqs.lock().unwrap().is_empty(), "event queue interrupt");
    // The guest remaps and invalidates; the device and the host follow.
    pt_emulated.map(
        &mem,
        &mut alloc,
        IOVA,
        GPA + 0x2000,
        3,
        pte::s1(true, false, false),
    );
    let tlbi = [
        cmd::tlbi_nh_asid(0, ASID_EMULATED),
        cmd::tlbi_nh_asid(0, ASID_PASSTHROUGH),
    ];
    assert!(
        drv.issue(&mut shared.lock(), &mem, &tlbi),
        "CMD_SYNC completes"
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
        let t = shared.translate_stream(EMULATED, None, Iova(IOVA), Access::READ);
        assert!(matches!(t, TranslateResult::Mapped(_)));
    }

    // 6. Counters, snapshot and restore.
    let stats = shared.lock().stats();
    println!("smmuv3: stats {}", serde_json::to_string(&stats).unwrap());
    assert!(stats.iotlb_misses >= 2 && stats.iotlb_hits >= 1 && stats.faults == 1);
    assert!(stats.iotlb_invalidations > 0 && stats.invalidations_sent > 0 && stats.host_calls > 0);
    let bytes = shared.lock().to_bytes().expect("snapshot");
    let mut device = shared
        .lock()
        .remove_passthrough(PASSTHROUGH)
        .expect("device");
    drop(dma);
    drop(shared);
    let mut restored = Smmuv3::from_bytes(&bytes).expect("restore");
    restored.set_interrupt_callback(|_| true);
    restored.enable_passthrough(host.clone(), ram);
    let view = host_view(&host, &mut device, Some(0));
    let again = restored
        .add_passthrough(&mem, PASSTHROUGH, device, view)
        .map_err(|(e, _)| e)
        .expect("re-added");
    assert_eq!(again.kind, DecisionKind::Nested);
    assert!(
        sim.attached_hwpt(pt_id, None).is_some(),
        "nested again from the restored STE"
    );
    let shared = Arc::new(SharedSmmuv3::new(restored, mem.clone()));
    let view = IommuView::new(
        shared.clone(),
        RequesterId::Stream(StreamId(EMULATED)),
        None,
        false,
    );
    let dma = IommuMemory::new(mem.clone(), view, true, ());
    assert_eq!(
        dma.read_obj::<u32>(GuestAddress(IOVA + 0x10)).unwrap(),
        0x1234_5678
    );
    println!(
        "smmuv3: restored from {} bytes; translations and the passthrough device are back",
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
