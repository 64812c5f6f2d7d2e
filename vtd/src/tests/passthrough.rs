//! Passthrough devices backed by `nesting-core`'s engines on the simulated
//! host: nested stage-1 HWPTs per PASID, batched stage-1 invalidations,
//! shadowed second-stage tables, and host failures turned into the
//! architected guest-visible errors.

use std::sync::Arc;

use iommufd_sim::profile::{HostProfile, SimHostSpec};
use iommufd_sim::{SimBacking, SimIommufd};
use nesting_core::host::HostBackend;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{Errno, HostOp, HwptData, PtId, VtdS1Flags};
use nesting_core::ladder::{DecisionKind, HostView};
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::types::{Iova, Pasid};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::Harness;
use crate::mock::{
    FsTables, LegacyTables, PasidSetup, Queue, ScalableTables, SlTables, desc, probe_like_linux,
};
use crate::passthrough::{PassthroughBackend, PassthroughError};
use crate::regs::{fsts, off};

pub(crate) const SID: u16 = 0x0010;
pub(crate) const DID: u16 = 3;

pub(crate) struct Host {
    pub sim: Arc<SimIommufd>,
    pub dev: nesting_core::host::DevId,
}

fn host(h: &mut Harness, profile: HostProfile) -> (Arc<SimIommufd>, BoundDevice, HostView) {
    host_spec(h, &profile.spec())
}

/// A simulated host of `spec` over the harness's RAM, passthrough enabled
/// on the unit, one device bound.
fn host_spec(h: &mut Harness, spec: &SimHostSpec) -> (Arc<SimIommufd>, BoundDevice, HostView) {
    let sim = Arc::new(SimIommufd::with_host(spec.clone()));
    let shared: SharedHost = sim.clone();
    let ram = GuestRam::from_guest_memory(&h.mem).unwrap();
    let ram = Arc::new(RamIoas::new(&shared, ram).unwrap());
    h.vtd.enable_passthrough(shared.clone(), ram);
    let dev = BoundDevice::bind(&shared, sim.add_device(0)).unwrap();
    let view = view_of(&sim, spec, &dev);
    (sim, dev, view)
}

/// The unit's passthrough backend.
pub(crate) fn backend(h: &Harness) -> &PassthroughBackend {
    h.vtd.passthrough().expect("passthrough enabled")
}

/// What the runner (or a VMM) learns of the host for `dev`.
fn view_of(sim: &SimIommufd, spec: &SimHostSpec, dev: &BoundDevice) -> HostView {
    let mut view = spec.host_view();
    view.info = sim.hw_info(dev.id()).unwrap();
    view.unit = sim.iommu_of(dev.id());
    view
}

/// A backend with `SID` accepted as `want`.
fn accepted(h: &mut Harness, profile: HostProfile, want: DecisionKind) -> Host {
    accepted_as(h, &profile.spec(), SID, want).0
}

/// A backend on a `spec` host with `sid` accepted as `want`, and the
/// decision.
pub(super) fn accepted_as(
    h: &mut Harness,
    spec: &SimHostSpec,
    sid: u16,
    want: DecisionKind,
) -> (Host, nesting_core::ladder::Decision) {
    let (sim, dev, view) = host_spec(h, spec);
    let id = dev.id();
    let d = h
        .vtd
        .add_passthrough(&h.mem, sid, dev, view)
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(d.kind, want, "{}", d.reason);
    (Host { sim, dev: id }, d)
}

impl Host {
    fn s1(&self, pasid: Option<u32>) -> Option<HwptData> {
        let pasid = pasid.map(|p| Pasid::new(p).unwrap());
        let id = self.sim.attached_hwpt(self.dev, pasid)?;
        Some(self.sim.hwpt(id)?.data)
    }
}

fn s1_data(pgtbl: u64, flags: VtdS1Flags) -> Option<HwptData> {
    Some(HwptData::VtdS1 {
        flags,
        pgtbl_addr: pgtbl,
        addr_width: 48,
    })
}

/// The FSTS bit `f` is set.
fn fsts_set(h: &Harness, f: nesting_core::bits::Field) -> bool {
    f.is_set(h.read32(off::FSTS))
}

/// The first fault record (FRCD at CAP.FRO), as its two quadwords.
fn first_fault(h: &Harness) -> (u64, u64) {
    let fro = h.vtd.config().fro;
    (h.read64(fro), h.read64(fro + 8))
}

struct Nested {
    h: Harness,
    host: Host,
    q: Queue,
    tables: ScalableTables,
    dir: u64,
    fs: [FsTables; 3],
}

/// Scalable mode as Linux sets it up for a device with PASIDs: RID_PASID
/// 0 and PASID 5 before translation is enabled, first-stage tables each.
fn nested() -> Nested {
    let mut h = Harness::new(&[]);
    let host = accepted(&mut h, HostProfile::VtdNest, DecisionKind::Nested);
    let tables = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = tables.set_context(&h.mem, &mut h.alloc, SID, 0, 0);
    let fs = [0, 1, 2].map(|_| FsTables::new(&h.mem, &mut h.alloc, 4));
    let pe0 = PasidSetup::first_stage(DID, fs[0].root, 4, false, false);
    tables.set_pasid(&h.mem, &mut h.alloc, dir, 0, &pe0);
    let pe5 = PasidSetup::first_stage(DID, fs[1].root, 4, true, true);
    tables.set_pasid(&h.mem, &mut h.alloc, dir, 5, &pe5);
    let p = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, tables.root);
    Nested {
        h,
        host,
        q: p.queue,
        tables,
        dir,
        fs,
    }
}

#[test]
fn nested_rid_pasid_and_two_pasids_get_their_stage1_hwpts() {
    let mut n = nested();
    // A third PASID set up later, as intel_pasid_setup_first_level does
    // in caching mode: entry, then PASID-selective PASID-cache flush.
    let pe9 = PasidSetup::first_stage(DID + 1, n.fs[2].root, 4, true, false);
    n.tables.set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 9, &pe9);
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::pasid_cache(1, DID + 1, 9)]));

    assert_eq!(n.host.s1(None), s1_data(n.fs[0].root, VtdS1Flags::empty()));
    assert_eq!(
        n.host.s1(Some(5)),
        s1_data(n.fs[1].root, VtdS1Flags::SRE | VtdS1Flags::WPE)
    );
    assert_eq!(n.host.s1(Some(9)), s1_data(n.fs[2].root, VtdS1Flags::SRE));
    assert_eq!(n.host.s1(Some(1)), None);
}

#[test]
fn nested_cleared_pasid_entry_is_detached() {
    let mut n = nested();
    n.tables
        .set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 5, &PasidSetup::default());
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::pasid_cache(1, DID, 5)]));
    assert_eq!(n.host.s1(Some(5)), None);
    assert!(n.host.s1(None).is_some());
}

#[test]
fn nested_64_pasid_iotlb_invalidations_in_one_batch_are_one_host_call() {
    let mut n = nested();
    n.host.sim.reset_counters();
    let batch: Vec<[u64; 2]> = (0..64u64)
        .map(|i| desc::pasid_iotlb(DID, 5, Some((i << 12, 0, true))))
        .collect();
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &batch));
    assert_eq!(n.host.sim.calls(HostOp::HwptInvalidate), 1);
    assert_eq!(n.host.sim.invalidation_entries(), 64);
    assert!(!fsts_set(&n.h, fsts::ICE));
}

#[test]
fn nested_domain_iotlb_invalidation_reaches_every_pasid_of_the_domain() {
    let mut n = nested();
    n.host.sim.reset_counters();
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::iotlb_domain(DID)]));
    // RID_PASID and PASID 5: one HWPT each.
    assert_eq!(n.host.sim.calls(HostOp::HwptInvalidate), 2);
    assert_eq!(n.host.sim.invalidation_entries(), 2);
}

#[test]
fn nested_host_refusing_the_stage1_hwpt_records_a_fault_for_the_pasid() {
    let mut n = nested();
    n.host.sim.fail_nth(HostOp::HwptAlloc, 1, Errno::EINVAL);
    let pe7 = PasidSetup::first_stage(DID, n.fs[2].root, 4, false, false);
    n.tables.set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 7, &pe7);
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::pasid_cache(1, DID, 7)]));
    assert_eq!(n.host.s1(Some(7)), None);
    assert!(fsts_set(&n.h, fsts::PPF));
    let (_, hi) = first_fault(&n.h);
    // F, FR 0x5B (PASID entry invalid), PP with PV 7, SID.
    assert_eq!(hi >> 63, 1);
    assert_eq!((hi >> 32) & 0xff, 0x5b);
    assert_eq!((hi >> 31) & 1, 1);
    assert_eq!((hi >> 40) & 0xf_ffff, 7);
    assert_eq!(hi & 0xffff, u64::from(SID));
    assert_eq!(backend(&n.h).stats().faults_reported, 1);
}

#[test]
fn nested_second_stage_pasid_entry_is_blocked_with_one_fault() {
    let mut n = nested();
    let sl = SlTables::new(&n.h.mem, &mut n.h.alloc, 4);
    let pe6 = PasidSetup::second_stage(DID, sl.root, 2);
    n.tables.set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 6, &pe6);
    for _ in 0..2 {
        assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::pasid_cache(1, DID, 6)]));
    }
    assert_eq!(n.host.sim.attachment(n.host.dev, Pasid::new(6)), None);
    assert_eq!(backend(&n.h).stats().faults_reported, 1, "reported once");
    let (_, hi) = first_fault(&n.h);
    assert_eq!((hi >> 32) & 0xff, 0x5b);
    assert_eq!((hi >> 40) & 0xf_ffff, 6);
    // Made first-stage: nested after all.
    let pe6 = PasidSetup::first_stage(DID, n.fs[2].root, 4, false, false);
    n.tables.set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 6, &pe6);
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::pasid_cache(1, DID, 6)]));
    assert_eq!(
        n.host.s1(Some(6)),
        s1_data(n.fs[2].root, VtdS1Flags::empty())
    );
}

#[test]
fn nested_host_refusal_under_fpd_records_no_fault() {
    let mut n = nested();
    n.host.sim.fail_nth(HostOp::HwptAlloc, 1, Errno::EINVAL);
    let mut pe7 = PasidSetup::first_stage(DID, n.fs[2].root, 4, false, false);
    pe7.q[0] |= 1 << 1; // FPD (9.6)
    n.tables.set_pasid(&n.h.mem, &mut n.h.alloc, n.dir, 7, &pe7);
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::pasid_cache(1, DID, 7)]));
    assert_eq!(n.host.s1(Some(7)), None);
    assert!(!fsts_set(&n.h, fsts::PPF));
    assert_eq!(backend(&n.h).stats().faults_reported, 0);
}

/// The source-id IQER.ITESID names (6.5.2.10).
fn itesid(h: &Harness) -> u64 {
    (h.read64(off::IQER) >> 32) & 0xffff
}

#[test]
fn nested_failed_invalidation_aborts_the_wait_with_ite_and_rebuilds_the_hwpt() {
    let mut n = nested();
    n.host.sim.reset_counters();
    n.host.sim.fail_nth(HostOp::HwptInvalidate, 1, Errno::EIO);
    let d = desc::pasid_iotlb(DID, 5, Some((0x1000, 0, false)));
    // The wait after the failed invalidation is aborted: ITE, with the
    // device's source-id; the wait was fetched and is never completed.
    assert!(!n.q.submit_once(&mut n.h.vtd, &n.h.mem, &[d]));
    assert!(fsts_set(&n.h, fsts::ITE));
    assert!(!fsts_set(&n.h, fsts::ICE));
    assert_eq!(itesid(&n.h), u64::from(SID));
    assert_eq!(n.h.read32(off::IQH), n.h.read32(off::IQT));
    // Nothing is fetched while ITE is set (6.5.2.10).
    n.q.push(&n.h.mem, desc::iotlb_domain(DID));
    n.h.vtd.mmio_write(&n.h.mem, off::IQT, 4, n.q.tail());
    assert_ne!(n.h.read32(off::IQH), n.h.read32(off::IQT));
    n.h.vtd.mmio_write(&n.h.mem, off::FSTS, 4, fsts::ITE.mask());
    assert_eq!(n.h.read32(off::IQH), n.h.read32(off::IQT));
    let status = nesting_core::mem::GuestMemoryExt::read_u32_le(
        &n.h.mem,
        nesting_core::types::Gpa(n.q.status),
    )
    .unwrap();
    assert_ne!(
        status,
        crate::mock::QI_DONE,
        "the aborted wait stays aborted"
    );
    // A fresh HWPT drops what the host cached, before the guest retries.
    assert_eq!(n.host.sim.calls(HostOp::HwptAlloc), 1);
    assert_eq!(
        n.host.s1(Some(5)),
        s1_data(n.fs[1].root, VtdS1Flags::SRE | VtdS1Flags::WPE)
    );
    // Linux clears ITE and submits again: now it completes.
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[d]));
    assert!(!fsts_set(&n.h, fsts::ITE));
    assert_eq!(backend(&n.h).stats().invalidation_errors, 1);
}

#[test]
fn nested_host_failing_every_time_blocks_the_device_after_the_retries() {
    let mut n = nested();
    n.host.sim.reset_counters();
    for i in 1..=u64::from(crate::passthrough::MAX_HOST_RETRIES) {
        n.host.sim.fail_nth(HostOp::HwptInvalidate, i, Errno::EIO);
    }
    let d = desc::pasid_iotlb(DID, 5, Some((0x1000, 0, false)));
    // Linux retries after each ITE; the backend gives up at the limit,
    // blocks the device with a fault and lets the wait complete.
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[d]));
    assert_eq!(backend(&n.h).stats().gave_up, 1);
    assert_eq!(n.host.s1(Some(5)), None);
    assert!(fsts_set(&n.h, fsts::PPF));
}

#[test]
fn nested_translation_disabled_is_bypass_on_the_parent() {
    let mut h = Harness::new(&[]);
    let host = accepted(&mut h, HostProfile::VtdNest, DecisionKind::Nested);
    let id = host.sim.attached_hwpt(host.dev, None).unwrap();
    assert!(matches!(host.sim.hwpt(id).unwrap().data, HwptData::None));
}

pub(crate) struct Shadow {
    pub h: Harness,
    pub host: Host,
    pub q: Queue,
    pub sl: SlTables,
}

/// Legacy mode with caching mode on a host without nesting: shadowed.
pub(crate) fn shadow() -> Shadow {
    let mut h = Harness::new(&["mode=legacy", "cm=1"]);
    let host = accepted(&mut h, HostProfile::VtdNonest, DecisionKind::Shadow);
    let t = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    t.set_context(&h.mem, &mut h.alloc, SID, DID, 0, 2, sl.root, false);
    let p = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    Shadow {
        h,
        host,
        q: p.queue,
        sl,
    }
}

impl Shadow {
    pub fn ioas(&self) -> nesting_core::host::IoasId {
        match self.host.sim.attachment(self.host.dev, None) {
            Some(PtId::Ioas(i)) => i,
            other => panic!("not attached to an IOAS: {other:?}"),
        }
    }

    pub fn host_va(&self, gpa: u64) -> u64 {
        self.h.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    /// Maps one 4 KiB page RW and sends its page-selective invalidation,
    /// as Linux's map path does in caching mode.
    pub fn map_page(&mut self, iova: u64, gpa: u64) {
        self.sl
            .map(&self.h.mem, &mut self.h.alloc, iova, gpa, 12, true, true);
        self.invalidate_page(iova);
    }

    fn invalidate_page(&mut self, iova: u64) {
        let inv = desc::iotlb_page(DID, iova, 0, false);
        assert!(self.q.submit(&mut self.h.vtd, &self.h.mem, &[inv]));
    }

    fn backing(&self, iova: u64) -> Option<u64> {
        match self.host.sim.translate(self.ioas(), Iova(iova))? {
            (SimBacking::UserVa(v), _) => Some(v),
            _ => None,
        }
    }
}

#[test]
fn shadow_map_and_invalidation_maps_iova_to_the_gpa_host_memory() {
    let mut s = shadow();
    s.map_page(0x10_0000, 0x20_0000);
    assert_eq!(s.backing(0x10_0000), Some(s.host_va(0x20_0000)));
    // Not the RAM IOAS: only what the guest mapped is there.
    assert_eq!(s.backing(0x20_0000), None);
}

#[test]
fn shadow_unmap_and_invalidation_removes_the_mapping() {
    let mut s = shadow();
    s.map_page(0x10_0000, 0x20_0000);
    s.sl.unmap(&s.h.mem, 0x10_0000, 12);
    s.invalidate_page(0x10_0000);
    assert_eq!(s.backing(0x10_0000), None);
    assert!(s.host.sim.mappings(s.ioas()).is_empty());
}

#[test]
fn shadow_2mib_mapped_in_4k_pages_then_one_invalidation_is_one_host_call() {
    let mut s = shadow();
    for i in 0..512u64 {
        let (iova, gpa) = (0x40_0000 + (i << 12), 0x60_0000 + (i << 12));
        s.sl.map(&s.h.mem, &mut s.h.alloc, iova, gpa, 12, true, true);
    }
    s.host.sim.reset_counters();
    let inv = desc::iotlb_page(DID, 0x40_0000, 9, false);
    assert!(s.q.submit(&mut s.h.vtd, &s.h.mem, &[inv]));
    let maps = s.host.sim.calls(HostOp::IoasMap)
        + s.host.sim.calls(HostOp::IoasMapFile)
        + s.host.sim.calls(HostOp::IoasCopy);
    assert_eq!(maps, 1);
    assert_eq!(s.backing(0x40_0000), Some(s.host_va(0x60_0000)));
    assert_eq!(s.backing(0x5f_f000), Some(s.host_va(0x7f_f000)));
}

#[test]
fn shadow_domain_invalidation_reads_the_whole_domain() {
    let mut s = shadow();
    s.sl.map(&s.h.mem, &mut s.h.alloc, 0x1000, 0x8000, 12, true, false);
    s.sl.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x4000_0000,
        0x20_0000,
        21,
        true,
        true,
    );
    assert!(s.q.submit(&mut s.h.vtd, &s.h.mem, &[desc::iotlb_domain(DID)]));
    assert_eq!(s.backing(0x1000), Some(s.host_va(0x8000)));
    assert_eq!(s.backing(0x4010_0000), Some(s.host_va(0x30_0000)));
}

#[test]
fn shadow_translation_disabled_attaches_to_ram_identity() {
    let mut h = Harness::new(&["mode=legacy", "cm=1"]);
    let host = accepted(&mut h, HostProfile::VtdNonest, DecisionKind::Shadow);
    let Some(PtId::Ioas(ioas)) = host.sim.attachment(host.dev, None) else {
        panic!("not attached to an IOAS");
    };
    let want = h.mem.get_host_address(GuestAddress(0x12_3000)).unwrap() as u64;
    assert!(matches!(
        host.sim.translate(ioas, Iova(0x12_3000)),
        Some((SimBacking::UserVa(v), _)) if v == want
    ));
}

#[test]
fn shadow_failed_sync_aborts_the_wait_with_ite_until_the_retry_maps() {
    let mut s = shadow();
    s.host.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    s.host.sim.fail_nth(HostOp::IoasMap, 1, Errno::ENOMEM);
    s.sl.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x10_0000,
        0x20_0000,
        12,
        true,
        true,
    );
    let inv = desc::iotlb_page(DID, 0x10_0000, 0, false);
    assert!(!s.q.submit_once(&mut s.h.vtd, &s.h.mem, &[inv]));
    assert_eq!(s.backing(0x10_0000), None);
    assert!(fsts_set(&s.h, fsts::ITE));
    assert_eq!(itesid(&s.h), u64::from(SID));
    assert!(!fsts_set(&s.h, fsts::PPF), "no fault: the guest retries");
    // Linux clears ITE and submits again.
    assert!(s.q.submit(&mut s.h.vtd, &s.h.mem, &[inv]));
    assert_eq!(s.backing(0x10_0000), Some(s.host_va(0x20_0000)));
}

#[test]
fn shadow_register_based_invalidation_the_host_refuses_is_not_performed() {
    let mut h = Harness::new(&["mode=legacy", "cm=1", "qi=0"]);
    let host = accepted(&mut h, HostProfile::VtdNonest, DecisionKind::Shadow);
    let t = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    t.set_context(&h.mem, &mut h.alloc, SID, DID, 0, 2, sl.root, false);
    h.write64(off::RTADDR, t.root);
    h.write32(off::GCMD, 1 << 30);
    h.write32(off::GCMD, 1 << 31);
    sl.map(&h.mem, &mut h.alloc, 0x10_0000, 0x20_0000, 12, true, true);
    host.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    host.sim.fail_nth(HostOp::IoasMap, 1, Errno::ENOMEM);
    // Domain-selective IOTLB invalidation through IOTLB_REG (IIRG=2).
    let iotlb = h.vtd.config().iro + 8;
    h.write64(iotlb, (1 << 63) | (2 << 60) | (u64::from(DID) << 32));
    let v = h.read64(iotlb);
    assert_eq!(v >> 63, 0, "IVT clears");
    assert_eq!((v >> 57) & 3, 0, "IAIG 0: not performed");
    h.write64(iotlb, (1 << 63) | (2 << 60) | (u64::from(DID) << 32));
    assert_eq!((h.read64(iotlb) >> 57) & 3, 2, "performed on the retry");
}

#[test]
fn no_caching_mode_and_no_host_nesting_is_refused_by_the_ladder() {
    let mut h = Harness::new(&["cm=0"]);
    let (_sim, dev, view) = host(&mut h, HostProfile::VtdNonest);
    let Err((PassthroughError::Refused { decision }, _dev)) =
        h.vtd.add_passthrough(&h.mem, SID, dev, view)
    else {
        panic!("accepted");
    };
    assert_eq!(decision.kind, DecisionKind::Refuse);
    assert!(backend(&h).kind().is_none());
}

#[test]
fn same_source_id_twice_is_refused_as_duplicate() {
    let mut h = Harness::new(&[]);
    let (sim, dev, view) = host(&mut h, HostProfile::VtdNest);
    h.vtd
        .add_passthrough(&h.mem, SID, dev, view.clone())
        .map_err(|(e, _)| e)
        .unwrap();
    let shared: SharedHost = sim.clone();
    let dev2 = BoundDevice::bind(&shared, sim.add_device(0)).unwrap();
    assert!(matches!(
        h.vtd.add_passthrough(&h.mem, SID, dev2, view),
        Err((PassthroughError::Duplicate { sid: SID }, _))
    ));
}

#[test]
fn device_added_before_passthrough_is_enabled_is_handed_back() {
    let mut h = Harness::new(&[]);
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNest.spec()));
    let shared: SharedHost = sim.clone();
    let dev = BoundDevice::bind(&shared, sim.add_device(0)).unwrap();
    let view = HostProfile::VtdNest.spec().host_view();
    let r = h.vtd.add_passthrough(&h.mem, SID, dev, view);
    assert!(matches!(r, Err((PassthroughError::NotEnabled, _))));
}

#[test]
fn removed_nested_device_is_handed_back_detached() {
    let mut n = nested();
    let dev = n.h.vtd.remove_passthrough(SID).expect("handed back");
    assert_eq!(dev.id(), n.host.dev);
    assert_eq!(n.host.sim.attachment(n.host.dev, None), None);
    assert_eq!(n.host.sim.attachment(n.host.dev, Pasid::new(5)), None);
    assert!(backend(&n.h).kind().is_none());
    // The unit's later events reach no device.
    assert!(n.q.submit(&mut n.h.vtd, &n.h.mem, &[desc::iotlb_domain(DID)]));
    n.host.sim.reset_counters();
    assert_eq!(n.host.sim.calls(HostOp::HwptInvalidate), 0);
}

#[test]
fn removed_shadowed_device_is_detached_and_its_domain_dropped() {
    let mut s = shadow();
    s.map_page(0x10_0000, 0x20_0000);
    assert!(backend(&s.h).shadow_domain(DID).is_some());
    assert!(s.h.vtd.remove_passthrough(SID).is_some());
    assert_eq!(s.host.sim.attachment(s.host.dev, None), None);
    assert!(backend(&s.h).shadow_domain(DID).is_none());
    assert!(s.h.vtd.remove_passthrough(SID).is_none());
}

#[test]
fn second_nested_device_behind_another_host_iommu_nests_too() {
    let mut n = nested();
    let unit = n.host.sim.add_iommu(HostProfile::VtdNest.spec());
    let shared: SharedHost = n.host.sim.clone();
    let dev2 = BoundDevice::bind(&shared, n.host.sim.add_device(unit)).unwrap();
    let id2 = dev2.id();
    let view = view_of(&n.host.sim, &HostProfile::VtdNest.spec(), &dev2);
    let d =
        n.h.vtd
            .add_passthrough(&n.h.mem, SID + 1, dev2, view)
            .map_err(|(e, _)| e)
            .unwrap();
    assert_eq!(d.kind, DecisionKind::Nested);
    // Its context entry is absent: once attached, it is blocked.
    assert_eq!(n.host.sim.attachment(id2, None), None);
    let e = backend(&n.h).nested().unwrap();
    assert_eq!(e.device(u64::from(SID + 1)), Some(id2));
}

#[test]
fn device_that_cannot_nest_is_refused_by_a_nested_unit() {
    let mut n = nested();
    let unit = n.host.sim.add_iommu(HostProfile::VtdNonest.spec());
    let shared: SharedHost = n.host.sim.clone();
    let dev2 = BoundDevice::bind(&shared, n.host.sim.add_device(unit)).unwrap();
    let view = view_of(&n.host.sim, &HostProfile::VtdNonest.spec(), &dev2);
    let r = n.h.vtd.add_passthrough(&n.h.mem, SID + 1, dev2, view);
    let Err((PassthroughError::Refused { decision }, _)) = r else {
        panic!("accepted");
    };
    assert!(decision.has_failed("host-nest"), "{}", decision.reason);
}

#[test]
fn nested_device_the_host_will_not_take_is_refused_at_hotplug_and_handed_back() {
    let mut h = Harness::new(&[]);
    let (sim, dev, view) = host(&mut h, HostProfile::VtdNest);
    let id = dev.id();
    // The stage-2 parent cannot be allocated: the hot-plug fails cleanly,
    // instead of leaving a device that never gets a domain.
    sim.fail_nth(HostOp::HwptAlloc, 1, Errno::ENOMEM);
    let Err((PassthroughError::Host(e), dev)) = h.vtd.add_passthrough(&h.mem, SID, dev, view)
    else {
        panic!("accepted");
    };
    assert!(e.is_no_memory(), "{e}");
    assert_eq!(dev.id(), id);
    assert_eq!(sim.attachment(id, None), None);
    assert!(backend(&h).kind().is_none());
}

mod completion;
mod failing_host;
mod pasid;

mod props {
    //! proptest: random maps and unmaps, each batch followed by the
    //! invalidations Linux sends -> the shadow IOAS holds exactly what the
    //! model translates, page by page.

    use nesting_core::types::Access;
    use proptest::prelude::*;

    use super::*;
    use crate::TranslateResult;

    const SLOTS: u64 = 16;
    const IOVA: u64 = 0x40_0000;
    const GPA: u64 = 0x80_0000;

    #[derive(Clone, Debug)]
    enum Op {
        Map { slot: u64, out: u64, write: bool },
        Unmap { slot: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..SLOTS, 0..SLOTS, any::<bool>()).prop_map(|(slot, out, write)| Op::Map {
                slot,
                out,
                write
            }),
            (0..SLOTS).prop_map(|slot| Op::Unmap { slot }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn shadow_ioas_equals_model_translation(
            batches in proptest::collection::vec((proptest::collection::vec(op(), 1..6), any::<bool>()), 1..5)
        ) {
            let mut s = shadow();
            for (ops, domain_wide) in batches {
                let mut touched = Vec::new();
                for op in &ops {
                    match *op {
                        Op::Map { slot, out, write } => {
                            let (iova, gpa) = (IOVA + (slot << 12), GPA + (out << 12));
                            s.sl.map(&s.h.mem, &mut s.h.alloc, iova, gpa, 12, true, write);
                            touched.push(slot);
                        }
                        Op::Unmap { slot } => {
                            s.sl.unmap(&s.h.mem, IOVA + (slot << 12), 12);
                            touched.push(slot);
                        }
                    }
                }
                let descs: Vec<[u64; 2]> = if domain_wide {
                    vec![desc::iotlb_domain(DID)]
                } else {
                    touched.iter().map(|t| desc::iotlb_page(DID, IOVA + (t << 12), 0, false)).collect()
                };
                prop_assert!(s.q.submit(&mut s.h.vtd, &s.h.mem, &descs));
                for slot in 0..SLOTS {
                    let iova = IOVA + (slot << 12);
                    let want = match s.h.translate(SID, None, iova, Access::READ) {
                        TranslateResult::Mapped(t) => Some(s.host_va(t.gpa_of(Iova(iova)).0)),
                        TranslateResult::Fault { .. } => None,
                    };
                    prop_assert_eq!(s.backing(iova), want, "slot {}", slot);
                    let writable = matches!(
                        s.h.translate(SID, None, iova, Access::WRITE),
                        TranslateResult::Mapped(_)
                    );
                    let host_w = s.host.sim.translate(s.ioas(), Iova(iova))
                        .is_some_and(|(_, a)| a.contains(Access::WRITE));
                    prop_assert_eq!(host_w, writable, "slot {} write", slot);
                }
            }
        }
    }
}
