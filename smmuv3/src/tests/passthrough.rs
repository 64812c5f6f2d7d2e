//! Passthrough devices nested on the simulated host SMMUv3
//! ([`crate::passthrough`]).

use std::sync::{Arc, Mutex};

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{DevId, Errno, HostBackend, HostOp, HwptData};
use nesting_core::ladder::{Decision, DecisionKind};
use nesting_core::nested::{
    NestedConfig, SMMUV3_STE0_NESTING_ALLOWED, SMMUV3_STE1_NESTING_ALLOWED,
};
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::types::Access;

use super::{Harness, S1Setup};
use crate::mock::{Driver, cdtable_ste, cmd, pte};
use crate::passthrough::PassthroughError;
use crate::regs::{gerror, off, queue_ptr};

/// An SMMU with passthrough enabled over a simulated host.
pub(crate) struct Pt {
    pub h: Harness,
    pub sim: Arc<SimIommufd>,
    pub host: SharedHost,
    pub ram: Arc<RamIoas>,
    pub spec: SimHostSpec,
}

impl Pt {
    pub fn new(opts: &[&str], spec: SimHostSpec) -> Pt {
        Self::with_harness(Harness::new(opts), spec)
    }

    pub fn with_harness(mut h: Harness, spec: SimHostSpec) -> Pt {
        let sim = Arc::new(SimIommufd::with_host(spec.clone()));
        let host: SharedHost = sim.clone();
        let ram = GuestRam::from_guest_memory(&h.mem).unwrap();
        let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
        h.smmu.enable_passthrough(host.clone(), ram.clone());
        Pt {
            h,
            sim,
            host,
            ram,
            spec,
        }
    }

    /// Binds a device of host unit `unit` (with `spec`'s report).
    pub fn bind(
        &self,
        unit: u32,
        spec: &SimHostSpec,
    ) -> (BoundDevice, nesting_core::ladder::HostView) {
        let dev = BoundDevice::bind(&self.host, self.sim.add_device(unit)).unwrap();
        let mut view = spec.host_view();
        view.info = self.sim.hw_info(dev.id()).unwrap();
        (dev, view)
    }

    /// Adds a device of unit 0 as `sid`.
    pub fn add(&mut self, sid: u32) -> Result<(Decision, DevId), PassthroughError> {
        let spec = self.spec.clone();
        self.add_on(0, &spec, sid)
    }

    pub fn add_on(
        &mut self,
        unit: u32,
        spec: &SimHostSpec,
        sid: u32,
    ) -> Result<(Decision, DevId), PassthroughError> {
        let (dev, view) = self.bind(unit, spec);
        let id = dev.id();
        self.h
            .smmu
            .add_passthrough(&self.h.mem, sid, dev, view)
            .map(|d| (d, id))
            .map_err(|(e, _)| e)
    }

    /// The vendor data of the HWPT `dev` is attached to.
    pub fn data(&self, dev: DevId) -> Option<HwptData> {
        let h = self.sim.attached_hwpt(dev, None)?;
        self.sim.hwpt(h).map(|h| h.data)
    }
}

pub(crate) fn nest() -> SimHostSpec {
    HostProfile::Smmuv3Nest.spec()
}

const ABORT: HwptData = HwptData::Smmuv3 { ste: [1, 0] };
const BYPASS: HwptData = HwptData::Smmuv3 { ste: [0x9, 0] };

fn masked(ste: [u64; 8]) -> HwptData {
    HwptData::Smmuv3 {
        ste: [
            ste[0] & SMMUV3_STE0_NESTING_ALLOWED,
            ste[1] & SMMUV3_STE1_NESTING_ALLOWED,
        ],
    }
}

fn refused(r: Result<(Decision, DevId), PassthroughError>) -> Decision {
    match r {
        Err(PassthroughError::Refused { decision }) => *decision,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn stream_follows_gbpa_then_ste_abort_and_stage1_with_masked_vste() {
    let mut p = Pt::new(&[], nest());
    let (d, dev) = p.add(0x10).unwrap();
    assert_eq!(d.kind, DecisionKind::Nested);
    // SMMUEN = 0, GBPA at reset: bypass.
    assert_eq!(p.data(dev), Some(BYPASS));
    let mut drv = p.h.probe();
    // SMMUEN = 1 and the STE is zero (V = 0): abort.
    assert_eq!(p.data(dev), Some(ABORT));
    let cd = Driver::cd_table(&p.h.mem, &mut p.h.alloc, 4, true);
    let mut ste = cdtable_ste(cd.0, 4, cd.1, false);
    // What Linux sets that the kernel rejects: SHCFG (incoming); STRW is
    // NSEL1 (0) in a guest without IDR0.HYP, and masked like SHCFG.
    ste.0[1] |= 1 << 44;
    let ops = Arc::new(Mutex::new(Vec::new()));
    let o = ops.clone();
    p.sim
        .set_call_hook(Some(Arc::new(move |op| o.lock().unwrap().push(op))));
    drv.install_ste(&mut p.h.smmu, &p.h.mem, &mut p.h.alloc, 0x10, ste);
    assert_eq!(p.data(dev), Some(masked(ste.0)));
    // The whole CD table (S1CDMax = 4: 16 SubstreamIDs) goes to the host.
    let Some(HwptData::Smmuv3 { ste: sent }) = p.data(dev) else {
        unreachable!()
    };
    assert_eq!(sent[0] >> 59, 4);
    assert_eq!(
        sent[1] & ((1 << 44) | (0b11 << 30)),
        0,
        "SHCFG, STRW dropped"
    );
    assert_eq!(
        SMMUV3_STE1_NESTING_ALLOWED & ((0b11 << 44) | (0b11 << 30)),
        0
    );
    // A new STE: allocated, attached with replace, and only then is the
    // old (pre-allocated abort) one left; stage 1 to stage 1 destroys the
    // old nested HWPT after the replace.
    let ste2 = cdtable_ste(cd.0, 3, cd.1, false);
    ops.lock().unwrap().clear();
    drv.install_ste(&mut p.h.smmu, &p.h.mem, &mut p.h.alloc, 0x10, ste2);
    let seen: Vec<HostOp> = ops
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|o| matches!(o, HostOp::HwptAlloc | HostOp::Replace | HostOp::Destroy))
        .collect();
    assert_eq!(seen, [HostOp::HwptAlloc, HostOp::Replace, HostOp::Destroy]);
    // Config bypass: the pre-allocated bypass HWPT.
    let mut byp = ste2;
    byp.0[0] = 0x9;
    drv.install_ste(&mut p.h.smmu, &p.h.mem, &mut p.h.alloc, 0x10, byp);
    assert_eq!(p.data(dev), Some(BYPASS));
}

#[test]
fn sixty_four_tlbis_between_syncs_are_one_hwpt_invalidate() {
    let mut p = Pt::new(&[], nest());
    p.add(0x10).unwrap();
    let mut drv = p.h.probe();
    p.sim.reset_counters();
    let before = p.h.smmu.passthrough().unwrap().stats();
    let cmds: Vec<[u64; 2]> = (0..64).map(|i| cmd::tlbi_nh_va(0, 5, i << 12)).collect();
    assert!(drv.issue(&mut p.h.smmu, &p.h.mem, &cmds));
    assert_eq!(p.sim.calls(HostOp::HwptInvalidate), 1);
    assert_eq!(p.sim.invalidation_entries(), 64);
    let s = p.h.smmu.passthrough().unwrap().stats();
    assert_eq!(s.invalidate_calls - before.invalidate_calls, 1);
    assert_eq!(s.invalidations - before.invalidations, 64);
}

#[test]
fn cfgi_cd_of_a_stream_without_vdevice_is_consumed_not_sent() {
    let mut p = Pt::new(&[], nest());
    p.add(0x10).unwrap();
    let mut drv = p.h.probe();
    p.sim.reset_counters();
    // Linux sends CFGI_CD before CFGI_STE for a stream it sets up; 0x99
    // has no vDEVICE (it is not a passthrough device).
    assert!(drv.issue(&mut p.h.smmu, &p.h.mem, &[cmd::cfgi_cd(0x99, 0)]));
    assert_eq!(p.sim.calls(HostOp::HwptInvalidate), 0);
    assert!(!p.h.smmu.error_active(gerror::CMDQ_ERR));
    // The passthrough stream's CFGI_CD and ATC_INV do go to the host.
    assert!(drv.issue(
        &mut p.h.smmu,
        &p.h.mem,
        &[cmd::cfgi_cd(0x10, 0), cmd::cfgi_cd_all(0x10)]
    ));
    assert_eq!(p.sim.invalidation_entries(), 2);
}

#[test]
fn host_failure_stops_cons_at_the_failing_command_with_cerror_ill() {
    let mut p = Pt::new(&[], nest());
    p.add(0x10).unwrap();
    let mut drv = p.h.probe();
    // The first batch (before the CFGI_STE) succeeds; the second, sent at
    // the CMD_SYNC, fails: CONS stops at its first command.
    p.sim.fail_nth(HostOp::HwptInvalidate, 2, Errno::EIO);
    let first = drv.cmdq.ptr;
    let cmds = [
        cmd::tlbi_nh_asid(0, 1),
        cmd::cfgi_ste(0x10),
        cmd::tlbi_nh_asid(0, 2),
        cmd::tlbi_nh_asid(0, 3),
    ];
    assert!(!drv.issue(&mut p.h.smmu, &p.h.mem, &cmds), "no completion");
    let c = p.h.read32(off::CMDQ_CONS);
    assert_eq!(
        c & 0xfffff,
        u64::from(first + 2),
        "CONS at the failed command"
    );
    assert_eq!(queue_ptr::QueuePtr(c).err(), 1, "CERROR_ILL");
    assert!(p.h.smmu.error_active(gerror::CMDQ_ERR));
    assert_eq!(p.h.smmu.passthrough().unwrap().stats().refused, 1);
}

#[test]
fn refused_vste_aborts_the_stream_and_stops_cons_at_the_cfgi_ste() {
    let mut p = Pt::new(&[], nest());
    let (_, dev) = p.add(0x10).unwrap();
    let mut drv = p.h.probe();
    let cd = Driver::cd_table(&p.h.mem, &mut p.h.alloc, 0, true);
    let at = drv.ste_addr(&p.h.mem, &mut p.h.alloc, 0x10);
    crate::wire::write_qwords(&p.h.mem, at, cdtable_ste(cd.0, 0, cd.1, false).0).unwrap();
    p.sim.fail_nth(HostOp::HwptAlloc, 1, Errno::ENOMEM);
    let first = drv.cmdq.ptr;
    assert!(!drv.issue(&mut p.h.smmu, &p.h.mem, &[cmd::cfgi_ste(0x10)]));
    assert_eq!(p.h.read32(off::CMDQ_CONS) & 0xfffff, u64::from(first));
    assert_eq!(p.data(dev), Some(ABORT));
}

#[test]
fn tlbi_without_streamid_reaches_emulated_cache_and_host() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0x8000);
    assert_eq!(
        s.h.gpa(super::SID, None, 0x1000, Access::READ),
        Some(0x8000)
    );
    let sim = Arc::new(SimIommufd::with_host(nest()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::from_guest_memory(&s.h.mem).unwrap();
    let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
    s.h.smmu.enable_passthrough(host.clone(), ram);
    let dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let mut view = nest().host_view();
    view.info = sim.hw_info(dev.id()).unwrap();
    s.h.smmu
        .add_passthrough(&s.h.mem, 0x20, dev, view)
        .map_err(|(e, _)| e)
        .unwrap();
    // The emulated stream's page moves; TLBI_NH_ASID names no StreamID.
    s.map_attrs(0x1000, 0x9000, 3, pte::s1(true, false, false));
    sim.reset_counters();
    assert!(s.issue(&[cmd::tlbi_nh_asid(0, super::ASID)]));
    assert_eq!(
        s.h.gpa(super::SID, None, 0x1000, Access::READ),
        Some(0x9000)
    );
    assert_eq!(sim.calls(HostOp::HwptInvalidate), 1);
    assert_eq!(sim.invalidation_entries(), 1);
}

#[test]
fn caps_are_clamped_to_the_host_before_idr_reads_and_frozen_after() {
    let host = SimHostSpec::parse("smmuv3-nest idr1=0x210 idr3=0x100 idr5=0x12").unwrap();
    let mut p = Pt::new(&[], host);
    p.add(0x10).unwrap();
    let idr1 = p.h.read32(off::IDR1);
    let idr5 = p.h.read32(off::IDR5);
    assert_eq!((idr1 >> 6) & 0x1f, 8, "SSIDSIZE lowered to the host's");
    assert_eq!(idr5 & 0x7, 2, "OAS 40 bits");
    assert_eq!((idr5 >> 4) & 0x7, 0b001, "4 KiB only (GRAN4K)");
    assert_eq!((p.h.read32(off::IDR3) >> 10) & 1, 0, "no RIL");
    // The guest has read them: a host with a smaller OAS is refused.
    let mut small = nest();
    small.info = SimHostSpec::parse("smmuv3-nest idr5=0x11").unwrap().info;
    let unit = p.sim.add_iommu(small.clone());
    let d = refused(p.add_on(unit, &small, 0x11));
    assert!(d.has_failed("oas"), "{}", d.reason);
}

#[test]
fn device_without_host_ats_gets_eats_cleared() {
    let mut p = Pt::new(&["ats=1"], nest());
    let mut spec = nest();
    spec.info.caps |= nesting_core::host::info::HostCaps::PCI_ATS_NOT_SUPPORTED;
    let unit = p.sim.add_iommu(spec.clone());
    let (d, dev) = p.add_on(unit, &spec, 0x10).unwrap();
    assert_eq!(d.kind, DecisionKind::Nested);
    let mut drv = p.h.probe();
    let cd = Driver::cd_table(&p.h.mem, &mut p.h.alloc, 0, true);
    let ste = cdtable_ste(cd.0, 0, cd.1, true);
    drv.install_ste(&mut p.h.smmu, &p.h.mem, &mut p.h.alloc, 0x10, ste);
    let Some(HwptData::Smmuv3 { ste: sent }) = p.data(dev) else {
        panic!()
    };
    assert_eq!(sent[1] & (0b11 << 28), 0);
}

#[test]
fn host_events_reach_the_guest_evtq_and_losses_set_overflow() {
    let mut p = Pt::new(&[], nest());
    p.h.smmu
        .passthrough
        .as_mut()
        .unwrap()
        .reg
        .set_nested_config(NestedConfig {
            veventq_depth: 2,
            ..NestedConfig::default()
        });
    p.add(0x10).unwrap();
    let mut drv = p.h.probe();
    let v = p.h.smmu.passthrough().unwrap().nested().unwrap().viommus()[0];
    // F_TRANSLATION of StreamID 0x10 as the kernel reports it (vSID in).
    let rec: [u64; 4] = [0x10_0000_0010, 0, 0x1000, 0];
    let bytes: Vec<u8> = rec.iter().flat_map(|w| w.to_le_bytes()).collect();
    p.sim.inject_vevent(v, bytes.clone()).unwrap();
    assert_eq!(p.h.smmu.poll_host_events(&p.h.mem).unwrap(), 1);
    assert_eq!(drv.next_event(&mut p.h.smmu, &p.h.mem).unwrap().0, rec);
    // Three into a host queue of two: the loss shows as EVTQ overflow.
    for _ in 0..3 {
        p.sim.inject_vevent(v, bytes.clone()).unwrap();
    }
    p.h.smmu.poll_host_events(&p.h.mem).unwrap();
    let prod = p.h.read32(off::EVTQ_PROD);
    assert!(queue_ptr::OVF.is_set(prod), "overflow flagged");
    assert_eq!(p.h.smmu.passthrough().unwrap().stats().lost, 1);
}

#[test]
fn veventq_is_as_deep_as_the_largest_guest_evtq() {
    let idr1 = crate::regs::idr1(&crate::options::Smmuv3Config::default());
    let eventqs = (idr1 >> 16) & 0x1f;
    assert!(u64::from(crate::passthrough::VEVENTQ_DEPTH) >= 1 << eventqs);
}

#[test]
fn two_smmus_share_stage2_each_with_its_own_viommu_and_vdevices() {
    let mut a = Pt::new(&[], nest());
    let mut b = Harness::new(&[]);
    b.smmu.enable_passthrough(a.host.clone(), a.ram.clone());
    a.add(0x10).unwrap();
    let (dev, view) = a.bind(0, &nest());
    b.smmu
        .add_passthrough(&b.mem, 0x10, dev, view)
        .map_err(|(e, _)| e)
        .unwrap();
    let ea = a.h.smmu.passthrough().unwrap().nested().unwrap();
    let eb = b.smmu.passthrough().unwrap().nested().unwrap();
    assert_eq!(ea.stage2_parents(), eb.stage2_parents());
    assert_ne!(ea.viommus(), eb.viommus());
    // The same virtual StreamID in both: each vIOMMU has its own space.
    assert!(ea.device(0x10).is_some() && eb.device(0x10).is_some());
}

#[test]
fn msi_window_is_given_to_the_vmm_and_its_absence_refuses() {
    let mut p = Pt::new(&[], nest());
    p.add(0x10).unwrap();
    let w = p.h.smmu.passthrough_msi_window(0x10).unwrap();
    assert_eq!((w.first.0, w.last.0), (0x800_0000, 0x80f_ffff));
    let mut none = nest();
    none.reserved.clear();
    let unit = p.sim.add_iommu(none.clone());
    let d = refused(p.add_on(unit, &none, 0x11));
    assert!(d.has_failed("host-msi-window"), "{}", d.reason);
}

#[test]
fn hosts_that_cannot_nest_are_refused_with_the_reason() {
    for (host, check) in [
        ("smmuv3-s2only", "host-s1p"),
        // MMU-600 r0p0: erratum 1209401.
        ("smmuv3-nest", "host-errata"),
        // No S2FWB.
        ("smmuv3-nest idr3=0x400", "host-coherency"),
    ] {
        let mut spec = SimHostSpec::parse(host).unwrap();
        if check == "host-errata"
            && let nesting_core::host::info::HwInfo::ArmSmmuv3 { iidr, .. } = &mut spec.info.hw
        {
            *iidr = 0x4830_043b;
        }
        let mut p = Pt::new(&[], spec);
        let d = refused(p.add(0x10));
        assert!(d.has_failed(check), "{host}: {}", d.reason);
    }
}

/// The completion-order check (as VT-d's `completion.rs`): at every host
/// call made for a command batch, the guest must not yet see the batch's
/// CMD_SYNC complete.
mod completion {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

    use nesting_core::mem::GuestMemoryExt;
    use nesting_core::types::Gpa;

    use super::*;
    use crate::irq::IrqSource;

    #[derive(Default)]
    struct Seen {
        armed: AtomicBool,
        calls: AtomicU64,
        violations: AtomicU64,
        /// Queue position and slot of the CMD_SYNC under test.
        pos: AtomicU32,
        slot: AtomicU64,
        ops: Mutex<Vec<HostOp>>,
    }

    /// A probed SMMU with passthrough stream 0x10 on stage 1 (CD table A),
    /// the hook watching MSIPOLL word, CONS and the CMD_SYNC interrupt.
    fn setup(opts: &[&str]) -> (Pt, Driver, Arc<Seen>, (u64, bool)) {
        let mut p = Pt::new(opts, nest());
        p.add(0x10).unwrap();
        let mut drv = p.h.probe();
        let cd = Driver::cd_table(&p.h.mem, &mut p.h.alloc, 2, true);
        let ste = cdtable_ste(cd.0, 2, cd.1, false);
        drv.install_ste(&mut p.h.smmu, &p.h.mem, &mut p.h.alloc, 0x10, ste);
        let seen = Arc::new(Seen::default());
        let (s, mem, cons, irqs) = (
            seen.clone(),
            p.h.mem.clone(),
            p.h.smmu.cmdq_cons_mirror(),
            p.h.irqs.clone(),
        );
        let msipoll = drv.msipoll;
        p.sim.set_call_hook(Some(Arc::new(move |op: HostOp| {
            if !s.armed.load(Ordering::SeqCst) {
                return;
            }
            s.calls.fetch_add(1, Ordering::SeqCst);
            s.ops.lock().unwrap().push(op);
            let pos = s.pos.load(Ordering::SeqCst);
            let word = mem.read_u32_le(Gpa(s.slot.load(Ordering::SeqCst))).unwrap();
            let c = cons.load(Ordering::Acquire) & 0x1ff;
            let past = c.wrapping_sub(pos) & 0x1ff;
            let irq = irqs
                .lock()
                .unwrap()
                .iter()
                .any(|i| i.source == IrqSource::CmdSync);
            if (msipoll && word == 0) || (past != 0 && past < 0x100) || irq {
                s.violations.fetch_add(1, Ordering::SeqCst);
            }
        })));
        (p, drv, seen, cd)
    }

    /// The batch: TLBIs, the STE moved to another CD table (CFGI_STE: the
    /// TLBIs go first, then a new HWPT replaces the old), CFGI_CD and
    /// more TLBIs, then CMD_SYNC. Returns whether the sync completed.
    fn run(p: &mut Pt, drv: &mut Driver, seen: &Seen, cd: (u64, bool)) -> bool {
        let at = drv.ste_addr(&p.h.mem, &mut p.h.alloc, 0x10);
        let ste = cdtable_ste(cd.0, 1, cd.1, false);
        crate::wire::write_qwords(&p.h.mem, at, ste.0).unwrap();
        let cmds = [
            cmd::tlbi_nh_va(0, 5, 0x1000),
            cmd::tlbi_nh_asid(0, 5),
            cmd::cfgi_ste(0x10),
            cmd::cfgi_cd(0x10, 0),
            cmd::tlbi_nh_va(0, 5, 0x2000),
        ];
        let pos = drv.cmdq.ptr + cmds.len() as u32;
        seen.pos.store(pos, Ordering::SeqCst);
        let slot = drv.cmdq.base + 16 * u64::from(pos & ((1 << drv.cmdq.log2) - 1));
        seen.slot
            .store(if drv.msipoll { slot } else { 0 }, Ordering::SeqCst);
        p.h.irqs.lock().unwrap().clear();
        seen.armed.store(true, Ordering::SeqCst);
        let done = drv.issue(&mut p.h.smmu, &p.h.mem, &cmds);
        seen.armed.store(false, Ordering::SeqCst);
        done
    }

    fn check(opts: &[&str]) {
        let (mut p, mut drv, seen, cd) = setup(opts);
        if !drv.msipoll {
            // SEV mode: no MSIPOLL word; watch a word that stays set.
            p.h.mem.write_u32_le(Gpa(0x100), 1).unwrap();
        }
        assert!(run(&mut p, &mut drv, &seen, cd));
        let ops = seen.ops.lock().unwrap().clone();
        assert!(seen.calls.load(Ordering::SeqCst) >= 4, "{ops:?}");
        assert_eq!(seen.violations.load(Ordering::SeqCst), 0, "{ops:?}");
        if !drv.msipoll {
            assert!(
                p.h.irqs
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|i| i.source == IrqSource::CmdSync)
            );
        }
        // Each host call of the batch failing in turn: never a completion
        // before the call, and no completion at all unless the failure is
        // one the guest cannot see (destroying the replaced HWPT).
        for (k, op) in ops.iter().enumerate() {
            let nth = ops[..=k].iter().filter(|o| *o == op).count() as u64;
            let (mut p, mut drv, seen, cd) = setup(opts);
            if !drv.msipoll {
                p.h.mem.write_u32_le(Gpa(0x100), 1).unwrap();
            }
            p.sim.fail_nth(*op, nth, Errno::EIO);
            let done = run(&mut p, &mut drv, &seen, cd);
            assert_eq!(
                seen.violations.load(Ordering::SeqCst),
                0,
                "call {k} ({op:?}) failing"
            );
            if *op != HostOp::Destroy {
                assert!(!done, "call {k} ({op:?}) failed, yet the sync completed");
                assert!(p.h.smmu.error_active(gerror::CMDQ_ERR));
            }
        }
    }

    #[test]
    fn sync_completes_only_after_every_host_call_msipoll() {
        check(&[]);
    }

    #[test]
    fn sync_completes_only_after_every_host_call_sev() {
        check(&["msi=0"]);
    }
}

#[test]
fn reset_puts_passthrough_streams_back_on_gbpa() {
    let mut p = Pt::new(&[], nest());
    let (_, dev) = p.add(0x10).unwrap();
    p.h.probe();
    assert_eq!(p.data(dev), Some(ABORT));
    p.h.smmu.reset();
    assert_eq!(p.data(dev), Some(BYPASS));
}

#[test]
fn cfgi_all_rereads_every_passthrough_ste() {
    let mut p = Pt::new(&[], nest());
    let (_, a) = p.add(0x10).unwrap();
    let (_, b) = p.add(0x11).unwrap();
    let mut drv = p.h.probe();
    for sid in [0x10, 0x11] {
        let at = drv.ste_addr(&p.h.mem, &mut p.h.alloc, sid);
        crate::wire::write_qwords(&p.h.mem, at, [0x9, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    }
    assert!(drv.issue(&mut p.h.smmu, &p.h.mem, &[cmd::cfgi_all()]));
    assert_eq!((p.data(a), p.data(b)), (Some(BYPASS), Some(BYPASS)));
}

/// Two host SMMUs, a passthrough device on each (StreamIDs 0x10, 0x20),
/// one host event record queued on each vIOMMU's vEVENTQ.
fn two_host_queues_with_an_event_each() -> (Pt, Driver, [nesting_core::host::ViommuId; 2], [u64; 4])
{
    let mut p = Pt::new(&[], nest());
    p.add(0x10).unwrap();
    let spec = nest();
    let unit = p.sim.add_iommu(spec.clone());
    p.add_on(unit, &spec, 0x20).unwrap();
    let drv = p.h.probe();
    let v = p.h.smmu.passthrough().unwrap().nested().unwrap().viommus();
    assert_eq!(v.len(), 2, "one vIOMMU per host SMMU");
    let rec: [u64; 4] = [0x10_0000_0010, 0, 0x1000, 0];
    let bytes: Vec<u8> = rec.iter().flat_map(|w| w.to_le_bytes()).collect();
    for id in &v {
        p.sim.inject_vevent(*id, bytes.clone()).unwrap();
    }
    (p, drv, [v[0], v[1]], rec)
}

#[test]
fn host_event_queue_closed_is_reported_as_overflow_and_error_and_keeps_what_was_read() {
    let (mut p, mut drv, v, rec) = two_host_queues_with_an_event_each();
    // The second vIOMMU's vEVENTQ goes away under the backend.
    let q = p.sim.veventq_of(v[1]).unwrap();
    assert!(p.sim.close_queue(nesting_core::host::ObjectId::Veventq(q)));
    let err = p.h.smmu.poll_host_events(&p.h.mem).unwrap_err();
    assert!(
        matches!(&err, PassthroughError::Events(nesting_core::nested::NestedError::Host { source }) if source.errno == Errno::ENOENT),
        "{err:?}"
    );
    // The first queue's record reached the guest, and the guest was told
    // that events may be lost.
    assert_eq!(drv.next_event(&mut p.h.smmu, &p.h.mem).unwrap().0, rec);
    assert!(queue_ptr::OVF.is_set(p.h.read32(off::EVTQ_PROD)));
    assert_eq!(p.h.smmu.passthrough().unwrap().stats().lost, 1);
    assert_eq!(p.h.smmu.passthrough().unwrap().stats().events, 1);
}

#[test]
fn host_event_read_failing_once_is_reported_then_reading_resumes() {
    let (mut p, mut drv, _, rec) = two_host_queues_with_an_event_each();
    p.sim.fail_nth(HostOp::VeventqRead, 1, Errno::EFAULT);
    assert!(p.h.smmu.poll_host_events(&p.h.mem).is_err());
    assert!(queue_ptr::OVF.is_set(p.h.read32(off::EVTQ_PROD)));
    // The record of the queue whose read failed is still there: read now.
    assert_eq!(p.h.smmu.poll_host_events(&p.h.mem).unwrap(), 1);
    let got: Vec<[u64; 4]> = std::iter::from_fn(|| drv.next_event(&mut p.h.smmu, &p.h.mem))
        .map(|e| e.0)
        .collect();
    assert_eq!(got, vec![rec, rec]);
}
