//! Registers (IHI 0070 chapter 6): ID registers from the options, the
//! acknowledge, update and toggle protocols, locks and access sizes.

use super::Harness;
use crate::irq::{IrqSource, Signal};
use crate::mock::Driver;
use crate::regs::{Idr0, Idr1, Idr3, Idr5, gerror, off};

#[test]
fn idr_defaults_golden_values() {
    let h = Harness::new(&[]);
    let idr0 = Idr0(h.read32(off::IDR0));
    assert!(idr0.s1p() && !idr0.s2p());
    assert_eq!(idr0.ttf(), 0b10);
    assert_eq!(idr0.ttendian(), 0b10);
    assert_eq!(idr0.httu(), 2);
    assert!(idr0.msi() && idr0.cohacc() && idr0.sev() && idr0.cd2l() && idr0.asid16());
    assert!(!idr0.ats() && !idr0.pri() && !idr0.vmid16());
    assert_eq!(idr0.st_level(), 1);
    // Golden: S1P|TTF=2|COHACC|HTTU=2|ASID16|MSI|SEV|CD2L|TTENDIAN=2|ST_LEVEL=1.
    assert_eq!(h.read32(off::IDR0), 0x0848_709a);
    let idr1 = Idr1(h.read32(off::IDR1));
    assert_eq!((idr1.sidsize(), idr1.ssidsize()), (16, 20));
    assert_eq!((idr1.cmdqs(), idr1.eventqs(), idr1.priqs()), (19, 19, 0));
    assert_eq!(h.read32(off::IDR1) & (7 << 28), 0, "no presets, no REL");
    assert!(Idr3(h.read32(off::IDR3)).ril());
    // SMMUv3.2 (AIDR) needs BBML 1 or 2; found by the differential
    // harness, QEMU reports 2.
    assert_eq!(Idr3(h.read32(off::IDR3)).bbml(), 0b10);
    let idr5 = Idr5(h.read32(off::IDR5));
    assert_eq!(idr5.oas(), 5);
    assert!(idr5.gran4k() && idr5.gran16k() && idr5.gran64k());
    assert_eq!(idr5.stall_max(), 64);
    assert_eq!(h.read32(off::AIDR), 0x02);
}

#[test]
fn idr_options_nested_linear_no_msi_reflect_options() {
    let h = Harness::new(&[
        "stages=nested",
        "sidsize=8",
        "ssidsize=4",
        "gran=64k",
        "oas=40",
        "ril=0",
        "ats=1",
        "pri=1",
        "httu=0",
        "msi=0",
        "stlevel=linear",
    ]);
    let idr0 = Idr0(h.read32(off::IDR0));
    assert!(idr0.s1p() && idr0.s2p() && idr0.vmid16());
    assert!(idr0.ats() && idr0.pri() && !idr0.msi());
    assert_eq!((idr0.httu(), idr0.st_level()), (0, 0));
    let idr1 = Idr1(h.read32(off::IDR1));
    assert_eq!((idr1.sidsize(), idr1.ssidsize(), idr1.priqs()), (8, 4, 19));
    assert!(!Idr3(h.read32(off::IDR3)).ril());
    let idr5 = Idr5(h.read32(off::IDR5));
    assert_eq!(idr5.oas(), 2);
    assert!(!idr5.gran4k() && !idr5.gran16k() && idr5.gran64k());
}

#[test]
fn cr0_write_mirrors_into_cr0ack() {
    let mut h = Harness::new(&[]);
    h.write32(off::CR0, 0b1101);
    assert_eq!(h.read32(off::CR0ACK), 0b1101);
    // PRIQEN and ATSCHK are RES0 without PRI and ATS.
    h.write32(off::CR0, 0b11111);
    assert_eq!(h.read32(off::CR0ACK), 0b1101);
}

#[test]
fn irq_ctrl_write_mirrors_into_irq_ctrlack() {
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    h.write32(off::IRQ_CTRL, 0b111);
    assert_eq!(h.read32(off::IRQ_CTRLACK), 0b111);
    h.write32(off::IRQ_CTRL, 0);
    assert_eq!(h.read32(off::IRQ_CTRLACK), 0);
}

#[test]
fn gbpa_update_applies_fields_and_self_clears() {
    let mut h = Harness::new(&[]);
    assert_eq!(h.read32(off::GBPA), 0x1000);
    // Without Update, a write is ignored.
    h.write32(off::GBPA, 1 << 20);
    assert_eq!(h.read32(off::GBPA), 0x1000);
    h.write32(off::GBPA, (1 << 31) | (1 << 20) | 0x1000);
    assert_eq!(h.read32(off::GBPA), (1 << 20) | 0x1000);
}

#[test]
fn gbpa_update_like_linux_sets_abort_then_bypass_aborts_dma() {
    let mut h = Harness::new(&[]);
    let d = Driver::probe(&mut h.smmu, &h.mem, &mut h.alloc).unwrap();
    d.update_gbpa(&mut h.smmu, &h.mem, 1 << 20, 0).unwrap();
    h.write32(off::CR0, 0);
    assert_eq!(
        h.gpa(1, None, 0x1000, nesting_core::types::Access::READ),
        None
    );
    d.update_gbpa(&mut h.smmu, &h.mem, 0, 1 << 20).unwrap();
    assert_eq!(
        h.gpa(1, None, 0x1000, nesting_core::types::Access::READ),
        Some(0x1000)
    );
}

#[test]
fn strtab_base_read_only_while_smmuen() {
    let mut h = Harness::new(&[]);
    h.write64(off::STRTAB_BASE, 0x10_0000);
    h.write32(off::CR0, 1);
    h.write64(off::STRTAB_BASE, 0x20_0000);
    h.write32(off::STRTAB_BASE_CFG, 5);
    assert_eq!(h.read64(off::STRTAB_BASE), 0x10_0000);
    assert_eq!(h.read32(off::STRTAB_BASE_CFG), 0);
    h.write32(off::CR0, 0);
    h.write64(off::STRTAB_BASE, 0x20_0000);
    assert_eq!(h.read64(off::STRTAB_BASE), 0x20_0000);
}

#[test]
fn queue_base_and_cons_read_only_while_queue_enabled() {
    let mut h = Harness::new(&[]);
    h.write64(off::CMDQ_BASE, 0x10_0007);
    h.write32(off::CR0, 0b1000);
    h.write64(off::CMDQ_BASE, 0x20_0007);
    h.write32(off::CMDQ_CONS, 3);
    assert_eq!(h.read64(off::CMDQ_BASE), 0x10_0007);
    assert_eq!(h.read32(off::CMDQ_CONS), 0);
    // EVENTQ_PROD is read-only while the event queue is enabled.
    h.write32(off::CR0, 0b1100);
    h.write32(off::EVTQ_PROD, 2);
    assert_eq!(h.read32(off::EVTQ_PROD), 0);
}

#[test]
fn cr1_cr2_read_only_while_enabled() {
    let mut h = Harness::new(&[]);
    h.write32(off::CR0, 0b1000);
    h.write32(off::CR1, 0xfff);
    assert_eq!(h.read32(off::CR1), 0, "CR1 locked while a queue is enabled");
    h.write32(off::CR2, 0b110);
    assert_eq!(h.read32(off::CR2), 0b110, "CR2 only locks with SMMUEN");
    h.write32(off::CR0, 0b1001);
    h.write32(off::CR2, 0);
    assert_eq!(h.read32(off::CR2), 0b110);
}

#[test]
fn msi_cfg_read_only_while_its_irq_enabled() {
    let mut h = Harness::new(&[]);
    h.write64(off::EVTQ_IRQ_CFG0, 0x0800_0040);
    h.write32(off::IRQ_CTRL, 0b100);
    h.write64(off::EVTQ_IRQ_CFG0, 0x0900_0040);
    assert_eq!(h.read64(off::EVTQ_IRQ_CFG0), 0x0800_0040);
    h.write64(off::GERROR_IRQ_CFG0, 0x0900_0041);
    assert_eq!(
        h.read64(off::GERROR_IRQ_CFG0),
        0x0900_0040,
        "ADDR[1:0] RES0"
    );
}

#[test]
fn msi_cfg_absent_without_msi_reads_zero() {
    let mut h = Harness::new(&["msi=0"]);
    h.write64(off::EVTQ_IRQ_CFG0, 0x0800_0040);
    assert_eq!(h.read64(off::EVTQ_IRQ_CFG0), 0);
}

#[test]
fn priq_registers_absent_without_pri() {
    let mut h = Harness::new(&[]);
    h.write64(off::PRIQ_BASE, 0x10_0007);
    assert_eq!(h.read64(off::PRIQ_BASE), 0);
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    h.write64(off::PRIQ_BASE, 0x10_0007);
    assert_eq!(h.read64(off::PRIQ_BASE), 0x10_0007);
}

#[test]
fn event_queue_indices_live_in_page_one_only() {
    let mut h = Harness::new(&[]);
    h.write64(off::EVTQ_BASE, 0x10_0000 | 3);
    h.write32(off::EVTQ_CONS, 0x8000_0003);
    assert_eq!(h.read32(off::EVTQ_CONS), 0x8000_0003);
    assert_eq!(h.read32(0xac), 0, "page 0 has no EVENTQ_CONS");
    h.write32(0xac, 5);
    assert_eq!(h.read32(off::EVTQ_CONS), 0x8000_0003);
}

#[test]
fn odd_access_sizes_are_raz_wi() {
    let mut h = Harness::new(&[]);
    // 64-bit access to a 32-bit register pair: RAZ/WI.
    h.write64(off::CMDQ_PROD, 0x1_0000_0001);
    assert_eq!(h.read32(off::CMDQ_PROD), 0);
    assert_eq!(h.read64(off::IDR0), 0);
    // 8- and 16-bit, misaligned, out of range: RAZ/WI, never a panic.
    for (size, offset) in [
        (1, 0x20),
        (2, 0x20),
        (4, 0x22),
        (8, 0x84),
        (4, u64::MAX - 3),
        (8, 0x2_0000),
    ] {
        h.smmu.mmio_write(&h.mem, offset, size, u64::MAX);
        assert_eq!(
            h.smmu.mmio_read(offset, size),
            0,
            "size {size} at {offset:#x}"
        );
    }
    assert_eq!(h.read32(off::CR0), 0);
}

#[test]
fn halves_of_64bit_register_access_independently() {
    let mut h = Harness::new(&[]);
    h.write32(off::STRTAB_BASE, 0x1234_5640);
    h.write32(off::STRTAB_BASE + 4, 0x4000_0001);
    assert_eq!(h.read64(off::STRTAB_BASE), 0x4000_0001_1234_5640);
    assert_eq!(h.read32(off::STRTAB_BASE + 4), 0x4000_0001);
}

#[test]
fn id_registers_are_read_only() {
    let mut h = Harness::new(&[]);
    let idr0 = h.read32(off::IDR0);
    h.write32(off::IDR0, 0);
    h.write32(off::GERROR, 0xff);
    assert_eq!(h.read32(off::IDR0), idr0);
    assert_eq!(h.read32(off::GERROR), 0);
}

#[test]
fn gerror_toggle_active_until_gerrorn_matches() {
    let mut h = Harness::new(&["msi=0"]);
    h.write32(off::IRQ_CTRL, 1);
    // A command queue that is not in guest memory: CERROR_ABT.
    h.write64(off::CMDQ_BASE, 0x4000_0000 | 7);
    h.write32(off::CR0, 0b1000);
    h.write32(off::CMDQ_PROD, 1);
    assert_eq!(h.read32(off::GERROR) & 1, 1);
    assert_eq!(h.read32(off::CMDQ_CONS) >> 24 & 0x7f, 2, "CERROR_ABT");
    let irqs = h.irqs.lock().unwrap().clone();
    assert!(
        irqs.iter()
            .any(|i| i.source == IrqSource::GlobalError && i.signal == Signal::Wired)
    );
    // Acknowledged with the queue still unreadable: the fetch is retried
    // and fails again (Linux: "retrying command fetch").
    h.write32(off::GERRORN, h.read32(off::GERROR));
    assert!(h.smmu.error_active(gerror::CMDQ_ERR));
    // With nothing left to fetch, the acknowledgement sticks.
    h.write32(off::CMDQ_PROD, 0);
    h.write32(off::GERRORN, h.read32(off::GERROR));
    assert_eq!(h.read32(off::GERROR) ^ h.read32(off::GERRORN), 0);
    assert!(!h.smmu.error_active(gerror::CMDQ_ERR));
}
