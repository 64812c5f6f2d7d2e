use super::*;
use nesting_core::types::StreamId;
use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
use vfio_user::ServerBackend;
use vm_memory::GuestAddress;

fn backend() -> (SmmuBackend, Arc<HarnessSmmu>) {
    let unit = Arc::new(HarnessSmmu::new(Smmuv3::new(Smmuv3Config::default())));
    (SmmuBackend::new(Arc::clone(&unit)), unit)
}

fn read32(b: &mut SmmuBackend, region: u32, off: u64) -> u32 {
    let mut d = [0u8; 4];
    b.region_read(region, off, &mut d).unwrap();
    u32::from_le_bytes(d)
}

#[test]
fn bar0_page0_reads_idr0_page1_reads_evtq_prod() {
    let (mut b, _) = backend();
    // IDR0.S1P (bit 1) with the default stage-1 configuration.
    assert_ne!(read32(&mut b, 0, 0) & 2, 0, "IDR0");
    // SMMU_EVENTQ_PROD lives in page 1 at 0x100a8.
    assert_eq!(read32(&mut b, 0, 0x100a8), 0);
    let mut q = [0u8; 8];
    b.region_read(0, 0x80, &mut q).unwrap();
    assert_eq!(u64::from_le_bytes(q), 0, "STRTAB_BASE at reset");
}

#[test]
fn bar0_odd_sizes_and_past_end_are_refused() {
    let (mut b, _) = backend();
    let mut d = [0u8; 2];
    assert!(b.region_read(0, 0, &mut d).is_err());
    assert!(b.region_write(0, SMMU_BAR_SIZE - 4, &[0; 8]).is_err());
    assert!(b.region_write(0, SMMU_BAR_SIZE - 4, &[0; 4]).is_ok());
}

#[test]
fn translation_before_enable_bypasses() {
    let (_, unit) = backend();
    let t = unit
        .translate(
            RequesterId::Stream(StreamId(0x28)),
            None,
            Iova(0x5000),
            Access::READ,
        )
        .unwrap();
    assert_eq!(t.gpa.raw(), 0x5000);
    let pci = unit.translate(
        RequesterId::Pci(Bdf::new(0, 5, 0)),
        None,
        Iova(0x5000),
        Access::READ,
    );
    assert!(pci.is_err(), "a VT-d requester is not a StreamID");
}

#[test]
fn function_reset_returns_smmu_to_reset_state() {
    let (mut b, unit) = backend();
    let ram = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    unit.set_memory(Arc::new(ram));
    // SMMU_CR0.SMMUEN with no stream table: every StreamID is refused.
    b.region_write(0, 0x20, &1u32.to_le_bytes()).unwrap();
    assert_eq!(read32(&mut b, 0, 0x24), 1, "CR0ACK");
    let rid = stream_of(Bdf::new(0, 5, 0));
    assert!(
        unit.translate(rid, None, Iova(0x5000), Access::READ)
            .is_err()
    );
    let before = unit.iotlb().generation();
    b.reset().unwrap();
    assert_eq!(read32(&mut b, 0, 0x24), 0, "CR0ACK at reset");
    assert!(
        unit.translate(rid, None, Iova(0x5000), Access::READ)
            .is_ok()
    );
    let _ = before;
}

#[test]
fn each_interrupt_source_with_a_message_has_its_own_vector() {
    let v: Vec<_> = [
        IrqSource::EventQueue,
        IrqSource::GlobalError,
        IrqSource::PriQueue,
    ]
    .into_iter()
    .map(vector_of)
    .collect();
    assert_eq!(v, [Some(0), Some(1), Some(2)]);
    assert_eq!(vector_of(IrqSource::CmdSync), None);
    assert_eq!(
        irqs()[VFIO_PCI_MSIX_IRQ_INDEX as usize].count,
        SMMU_MSIX_VECTORS
    );
}

#[test]
fn config_space_identifies_function_and_sizes_bar0() {
    let (mut b, _) = backend();
    assert_eq!(read32(&mut b, 7, 0), 0x10f2_1af4);
    assert_eq!(read32(&mut b, 7, 8) >> 16, 0x0806);
    b.region_write(7, 0x10, &[0xff; 4]).unwrap();
    assert_eq!(read32(&mut b, 7, 0x10), 0xfffe_0000, "128 KiB BAR0");
    assert_eq!(read32(&mut b, 7, 0x40), 0x0002_0011, "MSI-X, 3 vectors");
    assert_eq!(read32(&mut b, 7, 0x44), 2, "table in BAR2 at 0");
    assert_eq!(regions()[0].region_info.size, 0x20000);
}

/// `cells` as big-endian words somewhere in `blob`.
fn has_cells(blob: &[u8], cells: &[u32]) -> bool {
    let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
    blob.windows(bytes.len()).any(|w| w == bytes.as_slice())
}

fn has_bytes(blob: &[u8], bytes: &[u8]) -> bool {
    blob.windows(bytes.len()).any(|w| w == bytes)
}

#[test]
fn dtb_fragment_names_bar_msi_device_and_endpoints() {
    let dtb = dtb_fragment(&SmmuNode {
        base: 0x1000_0000,
        function_rid: 0x18,
        endpoints: vec![0x28, 0x30],
        its_phandle: 0x8006,
        pcie_node: "pcie@10000000".into(),
    })
    .unwrap();
    assert!(has_cells(&dtb, &[0xd00d_feed]));
    assert!(has_bytes(&dtb, b"iommu@10000000\0"));
    assert!(has_bytes(&dtb, b"pcie@10000000\0"));
    assert!(has_bytes(&dtb, b"arm,smmu-v3\0"));
    assert!(has_cells(&dtb, &[0, 0x1000_0000, 0, 0x20000]), "reg");
    assert!(has_cells(&dtb, &[0x8006, 0x18]), "msi-parent");
    let p = SMMU_PHANDLE;
    assert!(
        has_cells(&dtb, &[0x28, p, 0x28, 1, 0x30, p, 0x30, 1]),
        "iommu-map"
    );
    assert!(!has_bytes(&dtb, b"interrupts\0"), "no wired interrupts");
}

#[test]
fn dtb_fragment_splits_high_base_and_refuses_reserved_phandles() {
    let node = SmmuNode {
        base: 0x80_0000_0000,
        function_rid: 0x18,
        endpoints: vec![0x28],
        its_phandle: 1,
        pcie_node: "pcie".into(),
    };
    assert!(has_cells(
        &dtb_fragment(&node).unwrap(),
        &[0x80, 0, 0, 0x20000]
    ));
    let no_its = SmmuNode {
        its_phandle: 0,
        ..node.clone()
    };
    assert!(dtb_fragment(&no_its).is_err());
    let no_endpoint = SmmuNode {
        endpoints: Vec::new(),
        ..node
    };
    let dtb = dtb_fragment(&no_endpoint).unwrap();
    assert!(
        !has_bytes(&dtb, b"iommu-map\0") && !has_bytes(&dtb, b"pcie\0"),
        "no endpoints: no (empty, refused) iommu-map"
    );
}

/// A recorded SMMU driven the way Linux's arm-smmu-v3 driver drives it
/// (linear stream table, MSIPOLL CMD_SYNCs, a stage-1 domain built by the
/// smmuv3 crate's driver-side mock), replayed by the replay runner: no
/// script error, no failed check, real checks.
mod recorded {
    use super::*;
    use crate::record::Recorder;
    use nesting_core::options::ModelOptions;
    use smmuv3::mock::{PageAlloc, PageTable, cdtable_ste, cmd, pte, s1_cd};
    use smmuv3::regs::{cr0, off};
    use smmuv3::walk::Granule;
    use smmuv3::wire::{read_qwords, write_qwords};

    const SID: u32 = 0x28;
    const CMDQ_LOG2: u64 = 8;

    struct Rig {
        unit: HarnessSmmu,
        mem: Arc<GuestMemoryMmap>,
        alloc: PageAlloc,
        cmdq: u64,
        prod: u64,
    }

    impl Rig {
        /// Commands and an MSIPOLL CMD_SYNC (CS = SIG_IRQ, the MSI into
        /// the sync's own slot, data 0), one CMDQ_PROD write; the slot
        /// must read 0 after it.
        fn issue(&mut self, cmds: &[[u64; 2]]) {
            let mask = (1 << CMDQ_LOG2) - 1;
            for c in cmds {
                write_qwords(&*self.mem, self.cmdq + 16 * (self.prod & mask), *c).unwrap();
                self.prod += 1;
            }
            let slot = self.cmdq + 16 * (self.prod & mask);
            write_qwords(&*self.mem, slot, cmd::sync(1, slot, 0)).unwrap();
            self.prod += 1;
            let wrap = (self.prod >> CMDQ_LOG2 & 1) << CMDQ_LOG2;
            self.unit
                .mmio_write(off::CMDQ_PROD, 4, (self.prod & mask) | wrap);
            let done: [u64; 1] = read_qwords(&*self.mem, slot).unwrap();
            assert_eq!(done[0] & 0xffff_ffff, 0, "CMD_SYNC's MSI written");
        }

        fn enable(&self, bits: u64) {
            self.unit.mmio_write(off::CR0, 4, bits);
            assert_eq!(self.unit.mmio_read(off::CR0ACK, 4), bits);
        }
    }

    #[test]
    fn linux_like_session_replays() {
        let cfg = Smmuv3Config::from_options(&["sidsize=8", "stlevel=linear"]).unwrap();
        let (rec, out) = Recorder::in_memory(&cfg);
        let unit = HarnessSmmu::new(Smmuv3::new(cfg)).with_recorder(Arc::new(Mutex::new(rec)));
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap());
        unit.set_memory(Arc::clone(&mem));
        let mut alloc = PageAlloc::new(1 << 20, 2 << 20);
        let strtab = alloc.alloc(&*mem, 64 << 8, 64 << 8);
        let cmdq = alloc.alloc(&*mem, 16 << CMDQ_LOG2, 16 << CMDQ_LOG2);
        let evtq = alloc.alloc(&*mem, 32 << 7, 32 << 7);
        let mut r = Rig {
            unit,
            mem,
            alloc,
            cmdq,
            prod: 0,
        };
        // arm_smmu_device_hw_probe reads the IDRs; the reset programs the
        // tables and queues, CFGI_ALL and TLBI_NSNH_ALL, then SMMUEN.
        assert_ne!(r.unit.mmio_read(off::IDR0, 4), 0);
        r.unit.mmio_write(off::STRTAB_BASE, 8, strtab | 1 << 62);
        r.unit.mmio_write(off::STRTAB_BASE_CFG, 4, 8);
        r.unit
            .mmio_write(off::CMDQ_BASE, 8, cmdq | 1 << 62 | CMDQ_LOG2);
        r.unit.mmio_write(off::EVTQ_BASE, 8, evtq | 1 << 62 | 7);
        r.enable(cr0::CMDQEN.mask());
        r.issue(&[cmd::cfgi_all()]);
        r.issue(&[cmd::tlbi_nsnh_all()]);
        r.enable(cr0::CMDQEN.mask() | cr0::EVTQEN.mask());
        // A stage-1 domain mapping one page, as arm_smmu_attach_dev does.
        let pt = PageTable::stage1(&*r.mem, &mut r.alloc, Granule::G4K, 48, 48);
        let leaf = pte::s1(true, false, false);
        pt.map(&*r.mem, &mut r.alloc, 0x4000_0000, 0x30_0000, 3, leaf);
        let cds = r.alloc.alloc(&*r.mem, 64, 64);
        write_qwords(&*r.mem, cds, s1_cd(1, &pt, 5, false).0).unwrap();
        let ste = cdtable_ste(cds, 0, false, false);
        write_qwords(&*r.mem, strtab + 64 * u64::from(SID), ste.0).unwrap();
        r.issue(&[cmd::cfgi_ste(SID)]);
        r.enable(cr0::CMDQEN.mask() | cr0::EVTQEN.mask() | cr0::SMMUEN.mask());
        let rid = RequesterId::Stream(StreamId(SID));
        let t = r
            .unit
            .translate(rid, None, Iova(0x4000_0010), Access::WRITE)
            .unwrap();
        assert_eq!(t.gpa_of(Iova(0x4000_0010)).raw(), 0x30_0010);
        let refused = r
            .unit
            .translate(rid, None, Iova(0x4000_1000), Access::WRITE);
        assert!(refused.is_err());
        assert_eq!(r.unit.mmio_read(off::EVTQ_PROD, 4), 1, "one event");
        drop(r);

        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(text.contains("model smmuv3 stages=s1 sidsize=8 "), "{text}");
        assert!(
            text.contains("translate 0x28 0x40000010 w => 0x300010"),
            "{text}"
        );
        assert!(
            text.contains("translate 0x28 0x40001000 w => fault"),
            "{text}"
        );
        assert!(text.contains("mmio-read32 0x100a8 == 0x1"), "{text}");
        let mut log = Vec::new();
        let s = viommu::replay::run_script(&text, &mut log).unwrap();
        let log = String::from_utf8_lossy(&log);
        assert_eq!(s.failed, 0, "{log}\n{text}");
        assert!(s.passed > 10, "{log}");
    }
}
