//! The command queue (IHI 0070 chapter 4, 7.1): Linux's probe
//! sequence, CMD_SYNC completions, CERROR_ILL/ABT and the stop at the bad
//! command until GERRORN acknowledges it.

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;

use super::Harness;
use crate::caps::Caps;
use crate::cmdq::{Cmd, Command, Illegal, Opcode};
use crate::irq::{IrqSource, Signal};
use crate::mock::cmd;
use crate::regs::{cr0, gerror, off, queue_ptr};
use crate::wire::write_qwords;

fn cons(h: &Harness) -> (u64, u8) {
    let v = h.read32(off::CMDQ_CONS);
    (v & 0xfffff, queue_ptr::QueuePtr(v).err())
}

#[test]
fn linux_probe_default_config_uses_msipoll_and_enables_everything() {
    let mut h = Harness::new(&[]);
    let d = h.probe();
    assert!(d.msipoll);
    assert_eq!(h.read32(off::CR0ACK), 0b1101);
    assert_eq!(h.read32(off::IRQ_CTRLACK), 0b101);
    // CFGI_ALL and TLBI_NSNH_ALL, each with its CMD_SYNC.
    assert_eq!(h.smmu.commands_processed(), 4);
    assert_eq!(cons(&h), (4, 0));
    // The MSIPOLL word of each sync (its own slot's first word) is 0.
    assert_eq!(h.mem.read_u32_le(Gpa(d.cmdq.base + 16)).unwrap(), 0);
    assert!(matches!(
        d.strtab,
        crate::mock::DriverStrtab::TwoLevel { log2: 16, .. }
    ));
}

#[test]
fn linux_probe_without_msi_polls_cons_after_sev() {
    let mut h = Harness::new(&["msi=0", "sidsize=8", "stlevel=linear"]);
    let d = h.probe();
    assert!(!d.msipoll);
    assert!(matches!(
        d.strtab,
        crate::mock::DriverStrtab::Linear { log2: 8, .. }
    ));
    let sevs = h
        .irqs
        .lock()
        .unwrap()
        .iter()
        .filter(|i| i.source == IrqSource::CmdSync && i.signal == Signal::Sev)
        .count();
    assert_eq!(sevs, 2);
}

#[test]
fn cmd_sync_msi_outside_ram_goes_to_callback() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    h.irqs.lock().unwrap().clear();
    d.msipoll = false;
    d.issue_no_sync(&mut h.smmu, &h.mem, &[cmd::sync(1, 0x0800_0040, 0x55)]);
    let irqs = h.irqs.lock().unwrap().clone();
    assert_eq!(irqs.len(), 1);
    assert_eq!(
        irqs[0].signal,
        Signal::Msi {
            addr: 0x0800_0040,
            data: 0x55
        }
    );
}

#[test]
fn cmd_sync_msi_refused_sets_msi_cmdq_abt_err() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    h.smmu.set_interrupt_callback(|_| false);
    d.issue_no_sync(&mut h.smmu, &h.mem, &[cmd::sync(1, 0x0800_0040, 0x55)]);
    assert!(h.smmu.error_active(gerror::MSI_CMDQ_ABT_ERR));
    // The sync itself completed.
    assert_eq!(cons(&h).0, 5);
}

#[test]
fn unknown_opcode_stops_queue_with_cerror_ill_until_ack() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    let bad = [0x7f, 0];
    d.issue_no_sync(
        &mut h.smmu,
        &h.mem,
        &[cmd::tlbi_nh_all(0), bad, cmd::tlbi_nsnh_all()],
    );
    assert_eq!(
        cons(&h),
        (5, 1),
        "CONS at the illegal command, ERR = CERROR_ILL"
    );
    assert!(h.smmu.error_active(gerror::CMDQ_ERR));
    let before = h.smmu.commands_processed();
    // More commands do not run while the error is active.
    d.issue_no_sync(&mut h.smmu, &h.mem, &[cmd::tlbi_nsnh_all()]);
    assert_eq!(h.smmu.commands_processed(), before);
    // Linux replaces the bad command by a CMD_SYNC, then acknowledges.
    let slot = d.cmdq.base + 5 * 16;
    write_qwords(&h.mem, slot, cmd::sync(0, 0, 0)).unwrap();
    h.write32(off::GERRORN, h.read32(off::GERROR));
    assert!(!h.smmu.error_active(gerror::CMDQ_ERR));
    assert_eq!(cons(&h).0, 8);
}

#[test]
fn sync_with_reserved_cs_is_cerror_ill() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    d.issue_no_sync(&mut h.smmu, &h.mem, &[cmd::sync(3, 0, 0)]);
    assert_eq!(cons(&h), (4, 1));
}

#[test]
fn ssec_and_unimplemented_commands_are_illegal() {
    let caps = Caps::new(&super::config(&[]));
    let el2 = Cmd::default().with_op(Opcode::TlbiEl2All).0;
    assert_eq!(
        Command::decode(el2, &caps),
        Err(Illegal::NotImplemented(Opcode::TlbiEl2All))
    );
    let s2 = Cmd::default().with_op(Opcode::TlbiS2Ipa).0;
    assert!(Command::decode(s2, &caps).is_err(), "no stage 2");
    let atc = cmd::atc_inv(1, None, 0, 0);
    assert!(Command::decode(atc, &caps).is_err(), "no ATS");
    let pri = cmd::pri_resp(1, None, 0, 2);
    assert!(Command::decode(pri, &caps).is_err(), "no PRI");
    let sec = Cmd(cmd::cfgi_ste(1)).with_ssec(true).0;
    assert_eq!(Command::decode(sec, &caps), Err(Illegal::Secure));
    let nested = Caps::new(&super::config(&["stages=s2", "ssidsize=0"]));
    assert!(
        Command::decode(cmd::tlbi_nh_all(0), &nested).is_err(),
        "no stage 1"
    );
    assert!(Command::decode(s2, &nested).is_ok());
}

#[test]
fn every_opcode_decodes_without_panic() {
    let caps = Caps::new(&super::config(&["stages=nested", "ats=1", "pri=1"]));
    for op in 0..=255u64 {
        for w in [0, u64::MAX] {
            let _ = Command::decode([op | (w & !0xff), w], &caps);
        }
    }
}

#[test]
fn cfgi_all_golden_bytes_decode_as_full_range() {
    let caps = Caps::new(&super::config(&[]));
    // Linux's arm_smmu_make_cmd_cfgi_all(): opcode 0x04, data[1] = 31.
    assert_eq!(
        Command::decode([0x04, 31], &caps),
        Ok(Command::CfgiSteRange { first: 0, log2: 32 })
    );
    assert_eq!(cmd::cfgi_all(), [0x04, 31]);
}

#[test]
fn command_fetch_abort_is_cerror_abt_at_that_command() {
    let mut h = Harness::new(&[]);
    // Guest RAM ends halfway through a 256-entry queue at 0x10_0000.
    h.mem = vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10_0800)])
        .unwrap();
    let base = 0x10_0000;
    h.write64(off::CMDQ_BASE, base | 8);
    h.write32(off::CR0, cr0::CMDQEN.mask());
    for i in 0..128 {
        write_qwords(&h.mem, base + i * 16, cmd::tlbi_nsnh_all()).unwrap();
    }
    h.write32(off::CMDQ_PROD, 130);
    assert_eq!(cons(&h), (128, 2));
    assert!(h.smmu.error_active(gerror::CMDQ_ERR));
    assert_eq!(h.smmu.commands_processed(), 128);
}

#[test]
fn queue_wraps_and_toggles_wrap_bit() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    // 256-entry queue: 70 syncs of 4 commands each go round it.
    for _ in 0..70 {
        assert!(d.issue(&mut h.smmu, &h.mem, &[cmd::tlbi_nh_all(0); 3]));
    }
    let (c, err) = cons(&h);
    assert_eq!(err, 0);
    assert_eq!(c, u64::from(d.cmdq.ptr));
    assert_ne!(c & 0x100, 0, "wrapped once");
}

#[test]
fn prod_rewritten_past_queue_is_bounded_by_one_queue_of_commands() {
    let mut h = Harness::new(&[]);
    let d = h.probe();
    // Fill the whole 256-entry queue with NSNH_ALL, then claim it full.
    for i in 0..256 {
        write_qwords(&h.mem, d.cmdq.base + i * 16, cmd::tlbi_nsnh_all()).unwrap();
    }
    let before = h.smmu.commands_processed();
    h.write32(off::CMDQ_PROD, 4 | 0x100);
    assert_eq!(h.smmu.commands_processed() - before, 256);
    assert_eq!(cons(&h).0, 4 | 0x100);
}

#[test]
fn cmdq_disabled_consumes_nothing_until_enabled() {
    let mut h = Harness::new(&[]);
    let base = 0x10_0000;
    h.write64(off::CMDQ_BASE, base | 7);
    write_qwords(&h.mem, base, cmd::tlbi_nsnh_all()).unwrap();
    h.write32(off::CMDQ_PROD, 1);
    assert_eq!(cons(&h).0, 0);
    h.write32(off::CR0, cr0::CMDQEN.mask());
    assert_eq!(cons(&h).0, 1);
}

#[test]
fn resume_with_reserved_action_is_illegal() {
    let caps = Caps::new(&super::config(&[]));
    assert!(Command::decode(cmd::resume(1, 2, 3), &caps).is_err());
    assert!(Command::decode(cmd::resume(1, 2, 1), &caps).is_ok());
}
