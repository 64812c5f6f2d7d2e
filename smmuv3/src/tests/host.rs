//! The host seam ([`crate::host`]): a CMD_SYNC completes only after the
//! backend's operations returned, and a refusal stops the queue at the
//! refused command with CERROR_ILL.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use vm_memory::GuestMemoryMmap;

use super::Harness;
use crate::cmdq::Command;
use crate::host::{HostCommands, Refused};
use crate::irq::IrqSource;
use crate::mock::cmd;
use crate::regs::{gerror, off, queue_ptr};

/// Where the CMD_SYNC under test is.
#[derive(Clone, Copy, Debug)]
struct SyncUnderTest {
    /// Its queue position.
    pos: u32,
    /// Its slot (the MSIPOLL word).
    slot: u64,
}

/// A backend that, at every call, checks that the CMD_SYNC's completion
/// is not yet visible: the MSIPOLL word still holds the command, CMDQ_CONS
/// has not passed it, no CMD_SYNC interrupt was raised.
struct Watchful {
    mem: GuestMemoryMmap<()>,
    cons: Arc<AtomicU32>,
    irqs: Arc<Mutex<Vec<crate::Interrupt>>>,
    sync: Arc<Mutex<Option<SyncUnderTest>>>,
    log: Arc<Mutex<Vec<(u32, Command)>>>,
    syncs: Arc<AtomicU32>,
}

impl Watchful {
    fn check(&self) {
        let Some(s) = *self.sync.lock().unwrap() else {
            return;
        };
        assert_ne!(
            self.mem.read_u32_le(Gpa(s.slot)).unwrap(),
            0,
            "MSIPOLL word written before the host returned"
        );
        let cons = self.cons.load(Ordering::Acquire) & 0x1ff;
        let past = cons.wrapping_sub(s.pos) & 0x1ff;
        assert!(
            past == 0 || past > 0x100,
            "CMDQ_CONS {cons:#x} passed the sync at {:#x}",
            s.pos
        );
        let synced = self
            .irqs
            .lock()
            .unwrap()
            .iter()
            .any(|i| i.source == IrqSource::CmdSync);
        assert!(!synced, "CMD_SYNC interrupt before the host returned");
    }
}

impl HostCommands for Watchful {
    fn command(&mut self, index: u32, cmd: &Command) {
        self.check();
        self.log.lock().unwrap().push((index, *cmd));
    }

    fn sync(&mut self) -> Result<(), Refused> {
        self.check();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[test]
fn sync_completion_waits_for_the_host_msipoll() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    let sync = Arc::new(Mutex::new(None));
    let log = Arc::new(Mutex::new(Vec::new()));
    let syncs = Arc::new(AtomicU32::new(0));
    h.smmu.set_host_commands(Box::new(Watchful {
        mem: h.mem.clone(),
        cons: h.smmu.cmdq_cons_mirror(),
        irqs: h.irqs.clone(),
        sync: sync.clone(),
        log: log.clone(),
        syncs: syncs.clone(),
    }));
    let cmds = [cmd::tlbi_nh_va(0, 5, 0x1000), cmd::cfgi_cd(3, 0)];
    let pos = d.cmdq.ptr + 2;
    *sync.lock().unwrap() = Some(SyncUnderTest {
        pos,
        slot: d.cmdq.base + 16 * u64::from(pos & 0xff),
    });
    assert!(d.issue(&mut h.smmu, &h.mem, &cmds));
    assert_eq!(syncs.load(Ordering::Relaxed), 1);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].0, pos - 2);
    assert!(matches!(
        log[1].1,
        Command::CfgiCd {
            sid: 3,
            ssid: 0,
            ..
        }
    ));
    assert_eq!(h.read32(off::CMDQ_CONS), u64::from(pos + 1));
}

#[test]
fn sync_completion_waits_for_the_host_sev() {
    let mut h = Harness::new(&["msi=0"]);
    let mut d = h.probe();
    h.irqs.lock().unwrap().clear();
    let sync = Arc::new(Mutex::new(None));
    let syncs = Arc::new(AtomicU32::new(0));
    h.smmu.set_host_commands(Box::new(Watchful {
        mem: h.mem.clone(),
        cons: h.smmu.cmdq_cons_mirror(),
        irqs: h.irqs.clone(),
        sync: sync.clone(),
        log: Arc::new(Mutex::new(Vec::new())),
        syncs: syncs.clone(),
    }));
    let pos = d.cmdq.ptr + 1;
    // SEV mode has no MSIPOLL word; point at a non-zero word instead.
    h.mem.write_u32_le(Gpa(0x100), 1).unwrap();
    *sync.lock().unwrap() = Some(SyncUnderTest { pos, slot: 0x100 });
    assert!(d.issue(&mut h.smmu, &h.mem, &[cmd::tlbi_nh_all(0)]));
    assert_eq!(syncs.load(Ordering::Relaxed), 1);
    assert!(
        h.irqs
            .lock()
            .unwrap()
            .iter()
            .any(|i| i.source == IrqSource::CmdSync)
    );
}

/// Refuses the `n`th command it is given (counting from 0).
struct Refusing {
    n: usize,
    seen: Vec<u32>,
}

impl HostCommands for Refusing {
    fn command(&mut self, index: u32, _cmd: &Command) {
        self.seen.push(index);
    }

    fn sync(&mut self) -> Result<(), Refused> {
        match self.seen.get(self.n) {
            Some(&index) => Err(Refused { index }),
            None => Ok(()),
        }
    }
}

#[test]
fn refused_command_stops_queue_there_with_cerror_ill() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    h.smmu.set_host_commands(Box::new(Refusing {
        n: 1,
        seen: Vec::new(),
    }));
    let first = d.cmdq.ptr;
    let sync_pos = first + 3;
    let slot = d.cmdq.base + 16 * u64::from(sync_pos);
    let cmds = [
        cmd::tlbi_nh_asid(0, 1),
        cmd::tlbi_nh_asid(0, 2),
        cmd::tlbi_nh_asid(0, 3),
    ];
    assert!(
        !d.issue(&mut h.smmu, &h.mem, &cmds),
        "the sync does not complete"
    );
    let c = h.read32(off::CMDQ_CONS);
    assert_eq!(
        c & 0xfffff,
        u64::from(first + 1),
        "CONS at the refused command"
    );
    assert_eq!(queue_ptr::QueuePtr(c).err(), 1, "CERROR_ILL");
    assert!(h.smmu.error_active(gerror::CMDQ_ERR));
    assert_ne!(h.mem.read_u32_le(Gpa(slot)).unwrap(), 0, "no MSIPOLL write");
}

#[test]
fn refusal_at_end_of_drain_keeps_cons_before_refused_command() {
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    h.smmu.set_host_commands(Box::new(Refusing {
        n: 0,
        seen: Vec::new(),
    }));
    let first = d.cmdq.ptr;
    d.issue_no_sync(
        &mut h.smmu,
        &h.mem,
        &[cmd::tlbi_nh_all(0), cmd::tlbi_nh_all(0)],
    );
    assert_eq!(h.read32(off::CMDQ_CONS) & 0xfffff, u64::from(first));
    assert!(h.smmu.error_active(gerror::CMDQ_ERR));
}

#[test]
fn refusal_naming_an_unknown_position_stops_at_the_sync() {
    struct Liar;
    impl HostCommands for Liar {
        fn command(&mut self, _: u32, _: &Command) {}
        fn sync(&mut self) -> Result<(), Refused> {
            Err(Refused { index: 0xdead })
        }
    }
    let mut h = Harness::new(&[]);
    let mut d = h.probe();
    h.smmu.set_host_commands(Box::new(Liar));
    let sync_pos = d.cmdq.ptr + 1;
    assert!(!d.issue(&mut h.smmu, &h.mem, &[cmd::tlbi_nh_all(0)]));
    assert_eq!(h.read32(off::CMDQ_CONS) & 0xfffff, u64::from(sync_pos));
}
