//! Shadowed passthrough devices' PASIDs (caching mode, VT-d 6.1): every
//! PASID the guest sets up is mirrored into the shadow domain of its
//! domain-id and tables and attached for that PASID; the RID follows
//! iommufd's PASID rule; PASIDs the host cannot carry fault.

use nesting_core::host::info::ecap;
use nesting_core::host::{HwptFlags, IoasId};
use nesting_core::ladder::Decision;
use nesting_core::types::Access;

use super::{Host, accepted_as, backend, first_fault, fsts_set};
use crate::mock::{FsTables, PasidSetup, SlTables, desc, flpte};
use crate::regs::{fsts, off};
use crate::tests::scalable::{SID, Sm, scalable};
use crate::{TranslateResult, passthrough::Stage};
use iommufd_sim::SimBacking;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::objects::BoundDevice;
use nesting_core::host::{Errno, HostOp, PtId};
use nesting_core::ladder::DecisionKind;
use nesting_core::types::{Iova, Pasid};
use vm_memory::{GuestAddress, GuestMemoryBackend};

const USER_RW: u64 = flpte::US | flpte::RW;

/// A scalable-mode guest (caching mode) with `SID` shadowed.
struct Pt {
    s: Sm,
    host: Host,
}

fn shadowed(opts: &[&str]) -> Pt {
    shadowed_on(opts, &HostProfile::VtdNonest.spec()).0
}

fn shadowed_on(opts: &[&str], spec: &SimHostSpec) -> (Pt, Decision) {
    let opts = [&["cm=1"], opts].concat();
    let mut s = scalable(&opts);
    let (host, d) = accepted_as(&mut s.h, spec, SID, DecisionKind::Shadow);
    (Pt { s, host }, d)
}

/// The VT-d host profile without nesting whose ECAP is `f(ecap)`.
fn nonest_with_ecap(f: impl Fn(u64) -> u64) -> SimHostSpec {
    let mut spec = HostProfile::VtdNonest.spec();
    let (_, e) = spec.info.vtd().unwrap();
    spec.apply("ecap", &format!("{:#x}", f(e.0))).unwrap();
    spec
}

/// The page every [`Pt::tables`] maps: 0x1000 -> 0x9_1000, user RW.
const PAGE: (u64, u64) = (0x1000, 0x9_1000);

/// `intel_pasid_setup_first_level` of 4-level `fs` for `did`.
fn fs_entry(did: u16, fs: &FsTables) -> PasidSetup {
    PasidSetup::first_stage(did, fs.root, 4, false, false)
}

impl Pt {
    fn fs(&mut self) -> FsTables {
        self.s.fs(4)
    }

    /// First-stage tables mapping [`PAGE`].
    fn tables(&mut self) -> FsTables {
        let fs = self.fs();
        self.map(&fs, PAGE.0, PAGE.1, USER_RW);
        fs
    }

    /// Whether the RID or PASID sees [`PAGE`] on the host, writable.
    fn sees_page(&self, pasid: Option<u32>) -> bool {
        self.backing(pasid, PAGE.0) == Some((self.va(PAGE.1), true))
    }

    fn map(&mut self, fs: &FsTables, iova: u64, gpa: u64, flags: u64) {
        fs.map(&self.s.h.mem, &mut self.s.h.alloc, iova, gpa, 12, flags);
    }

    /// Writes a PASID entry and flushes as `pasid.c` does (PASID-cache,
    /// PASID-based IOTLB).
    fn set(&mut self, pasid: u32, e: &PasidSetup) {
        self.s.set_pasid(pasid, e);
    }

    /// `intel_pasid_tear_down_entry`: entry cleared, PASID-cache and
    /// PASID-based IOTLB flushed.
    fn clear(&mut self, pasid: u32, did: u16) {
        let (mem, alloc) = (&self.s.h.mem, &mut self.s.h.alloc);
        self.s
            .t
            .set_pasid(mem, alloc, self.s.dir, pasid, &PasidSetup::default());
        self.flush(&[
            desc::pasid_cache(1, did, pasid),
            desc::pasid_iotlb(did, pasid, None),
        ]);
    }

    fn flush(&mut self, descs: &[[u64; 2]]) {
        assert!(self.s.q.submit(&mut self.s.h.vtd, &self.s.h.mem, descs));
    }

    /// The IOAS behind what the RID (`None`) or a PASID is attached to.
    fn ioas(&self, pasid: Option<u32>) -> Option<IoasId> {
        let key = pasid.map(|p| Pasid::new(p).unwrap());
        match self.host.sim.attachment(self.host.dev, key)? {
            PtId::Ioas(i) => Some(i),
            PtId::Hwpt(h) => self.host.sim.hwpt(h).map(|h| h.ioas),
            PtId::Viommu(_) => None,
        }
    }

    /// Whether the RID or PASID is on a HWPT allocated with
    /// IOMMU_HWPT_ALLOC_PASID.
    fn pasid_capable(&self, pasid: Option<u32>) -> bool {
        let key = pasid.map(|p| Pasid::new(p).unwrap());
        let Some(h) = self.host.sim.attached_hwpt(self.host.dev, key) else {
            return false;
        };
        self.host
            .sim
            .hwpt(h)
            .is_some_and(|h| h.flags.contains(HwptFlags::PASID))
    }

    /// The host memory behind `iova` for the RID or a PASID, and whether
    /// it is writable.
    fn backing(&self, pasid: Option<u32>, iova: u64) -> Option<(u64, bool)> {
        match self.host.sim.translate(self.ioas(pasid)?, Iova(iova))? {
            (SimBacking::UserVa(v), a) => Some((v, a.contains(Access::WRITE))),
            _ => None,
        }
    }

    fn va(&self, gpa: u64) -> u64 {
        self.s.h.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    fn faults(&self) -> u64 {
        backend(&self.s.h).stats().faults_reported
    }
}

/// Fault record high quadword: reason, PV (PASID present) and source-id.
fn fault_fields(hi: u64) -> (u64, Option<u64>, u64) {
    let pv = ((hi >> 31) & 1 == 1).then_some((hi >> 40) & 0xf_ffff);
    ((hi >> 32) & 0xff, pv, hi & 0xffff)
}

#[test]
fn shadow_pasid_first_stage_maps_reach_the_host_for_that_pasid_only() {
    let mut p = shadowed(&[]);
    let (fs0, fs5) = (p.fs(), p.fs());
    p.map(&fs0, 0x1000, 0x9_0000, USER_RW);
    p.set(0, &fs_entry(1, &fs0));
    p.set(5, &fs_entry(2, &fs5));
    // A page mapped for PASID 5, then the PASID-based IOTLB invalidation
    // Linux sends for a first-stage domain in caching mode (6.5.2.4).
    p.map(&fs5, 0x1000, 0x9_5000, USER_RW);
    p.flush(&[desc::pasid_iotlb(2, 5, Some((0x1000, 0, false)))]);

    assert_eq!(p.backing(Some(5), 0x1000), Some((p.va(0x9_5000), true)));
    assert_eq!(p.backing(None, 0x1000), Some((p.va(0x9_0000), true)));
    assert_ne!(p.ioas(None), p.ioas(Some(5)), "two domains, two IOASes");
    // iommufd's rule: the PASID and, since it has one, the RID on
    // PASID-capable HWPTs.
    assert!(p.pasid_capable(Some(5)) && p.pasid_capable(None));
    // Other PASIDs stay blocked.
    assert_eq!(p.ioas(Some(6)), None);
    assert_eq!(p.faults(), 0);
}

#[test]
fn shadow_rid_and_pasid_in_one_domain_share_one_shadow_domain() {
    let mut p = shadowed(&[]);
    let fs = p.fs();
    p.set(0, &fs_entry(3, &fs));
    p.set(5, &fs_entry(3, &fs));
    p.map(&fs, 0x4000, 0x9_4000, flpte::US);
    p.flush(&[desc::pasid_iotlb(3, 5, Some((0x4000, 0, false)))]);

    assert_eq!(p.ioas(None), p.ioas(Some(5)));
    assert_eq!(backend(&p.s.h).shadow_domains().count(), 1);
    // Read-only for the guest, read-only on the host.
    assert_eq!(p.backing(None, 0x4000), Some((p.va(0x9_4000), false)));
    let dom = backend(&p.s.h).shadow_domain_of(SID, Some(5)).unwrap();
    assert_eq!(dom.devices().len(), 2);
}

#[test]
fn shadow_pasids_of_one_domain_id_with_different_first_stage_tables_get_two_domains() {
    // 6.2.1: first-stage translations are tagged with domain-id and PASID.
    let mut p = shadowed(&[]);
    let (fs5, fs9) = (p.fs(), p.fs());
    p.map(&fs5, 0x1000, 0x9_5000, USER_RW);
    p.map(&fs9, 0x1000, 0x9_9000, USER_RW);
    p.set(5, &fs_entry(4, &fs5));
    p.set(9, &fs_entry(4, &fs9));
    assert_eq!(p.backing(Some(5), 0x1000), Some((p.va(0x9_5000), true)));
    assert_eq!(p.backing(Some(9), 0x1000), Some((p.va(0x9_9000), true)));
    // A PASID-based invalidation of PASID 9 re-reads PASID 9's tables only.
    p.map(&fs5, 0x2000, 0x9_6000, USER_RW);
    p.map(&fs9, 0x2000, 0x9_a000, USER_RW);
    p.flush(&[desc::pasid_iotlb(4, 9, None)]);
    assert_eq!(p.backing(Some(9), 0x2000), Some((p.va(0x9_a000), true)));
    assert_eq!(p.backing(Some(5), 0x2000), None);
    // A domain-selective IOTLB invalidation (6.5.2.3) re-reads both.
    p.flush(&[desc::iotlb_domain(4)]);
    assert_eq!(p.backing(Some(5), 0x2000), Some((p.va(0x9_6000), true)));
    let stages: Vec<Stage> = backend(&p.s.h)
        .shadow_domains()
        .map(|(s, _)| s.stage)
        .collect();
    assert_eq!(stages, [Stage::First, Stage::First]);
}

#[test]
fn shadow_second_stage_pasid_is_mirrored_on_iotlb_invalidation() {
    let mut p = shadowed(&["slts=1"]);
    let sl = SlTables::new(&p.s.h.mem, &mut p.s.h.alloc, 4);
    p.set(7, &PasidSetup::second_stage(6, sl.root, 2));
    sl.map(
        &p.s.h.mem,
        &mut p.s.h.alloc,
        0x8000,
        0xa_0000,
        12,
        true,
        false,
    );
    // Second-stage mappings are invalidated by DID (6.5.2.3).
    p.flush(&[desc::iotlb_page(6, 0x8000, 0, false)]);
    assert_eq!(p.backing(Some(7), 0x8000), Some((p.va(0xa_0000), false)));
    sl.unmap(&p.s.h.mem, 0x8000, 12);
    p.flush(&[desc::iotlb_page(6, 0x8000, 0, false)]);
    assert_eq!(p.backing(Some(7), 0x8000), None);
}

#[test]
fn shadow_pass_through_pasid_sees_guest_ram_at_iova_equal_gpa() {
    let mut p = shadowed(&[]);
    p.set(3, &PasidSetup::pass_through(5));
    assert_eq!(p.backing(Some(3), 0x12_3000), Some((p.va(0x12_3000), true)));
    assert!(p.pasid_capable(Some(3)));
    // The RID has no entry: blocked.
    assert_eq!(p.ioas(None), None);
}

#[test]
fn shadow_rid_pass_through_and_a_pasid_in_a_domain_coexist() {
    let mut p = shadowed(&[]);
    p.set(0, &PasidSetup::pass_through(1));
    assert!(!p.pasid_capable(None), "no PASID yet: the automatic domain");
    let fs = p.tables();
    p.set(2, &fs_entry(2, &fs));
    // The RID moved onto its PASID-capable HWPT over the RAM IOAS.
    assert!(p.pasid_capable(None));
    assert_eq!(p.backing(None, 0x7_7000), Some((p.va(0x7_7000), true)));
    assert!(p.sees_page(Some(2)));
}

#[test]
fn shadow_rid_entry_made_after_a_pasid_goes_on_a_pasid_capable_hwpt() {
    let mut p = shadowed(&[]);
    let fs = p.tables();
    p.set(5, &fs_entry(2, &fs));
    assert_eq!(p.ioas(None), None, "no RID_PASID entry yet");
    let rid = p.tables();
    p.map(&rid, 0x2000, 0x9_2000, USER_RW);
    p.set(0, &fs_entry(1, &rid));
    // A plain IOAS attach of the RID would make iommufd refuse (or, on
    // a replace, drop) the PASID: the RID is on its PASID-capable HWPT.
    assert!(p.pasid_capable(None));
    assert_eq!(p.backing(None, 0x2000), Some((p.va(0x9_2000), true)));
    assert!(p.sees_page(Some(5)));
    assert_ne!(p.ioas(None), p.ioas(Some(5)));
    assert_eq!(p.faults(), 0);
}

#[test]
fn shadow_pasid_selective_pasid_cache_invalidation_rereads_that_pasid_only() {
    let mut p = shadowed(&[]);
    let fs = p.tables();
    // Entries made present without their invalidation (6.1: with CM=1
    // the unit may have cached them not-present).
    let (mem, alloc, dir) = (&p.s.h.mem, &mut p.s.h.alloc, p.s.dir);
    p.s.t.set_pasid(mem, alloc, dir, 6, &fs_entry(2, &fs));
    p.s.t.set_pasid(mem, alloc, dir, 7, &fs_entry(2, &fs));
    p.set(5, &fs_entry(2, &fs));
    assert!(p.sees_page(Some(5)));
    assert_eq!(p.ioas(Some(6)), None);
    // 6.5.2.2 PASID-selective: that PASID.
    p.flush(&[desc::pasid_cache(1, 2, 6)]);
    assert!(p.sees_page(Some(6)));
    assert_eq!(p.ioas(Some(7)), None);
    // Global: the whole PASID table.
    p.flush(&[desc::pasid_cache(3, 0, 0)]);
    assert!(p.sees_page(Some(7)));
    assert_eq!(backend(&p.s.h).shadow_domains().count(), 1);
}

#[test]
fn shadow_cleared_pasid_entry_detaches_it_and_drops_its_domain() {
    let mut p = shadowed(&[]);
    let fs = p.tables();
    p.set(5, &fs_entry(2, &fs));
    assert!(p.ioas(Some(5)).is_some());
    p.clear(5, 2);
    assert_eq!(p.ioas(Some(5)), None);
    assert_eq!(backend(&p.s.h).shadow_domains().count(), 0);
    assert_eq!(p.faults(), 0);
    // Set up again: mirrored again, read in full.
    p.set(5, &fs_entry(2, &fs));
    assert!(p.sees_page(Some(5)));
}

#[test]
fn shadow_translation_disabled_blocks_pasids_and_enabled_brings_them_back() {
    let mut p = shadowed(&[]);
    let fs = p.tables();
    p.set(0, &fs_entry(1, &fs));
    p.set(5, &fs_entry(1, &fs));
    // GCMD.TE clear (3.1: requests without PASID untranslated).
    p.s.h.write32(off::GCMD, 0);
    assert_eq!(p.ioas(Some(5)), None);
    assert_eq!(p.backing(None, 0x5_0000), Some((p.va(0x5_0000), true)));
    p.s.h.write32(off::GCMD, 1 << 31);
    assert!(p.sees_page(Some(5)));
    assert!(p.sees_page(None));
}

#[test]
fn shadow_removed_device_detaches_every_pasid_and_is_handed_back() {
    let mut p = shadowed(&[]);
    let fs = p.fs();
    p.set(0, &fs_entry(1, &fs));
    p.set(5, &fs_entry(2, &fs));
    p.set(6, &PasidSetup::pass_through(3));
    let dev: BoundDevice = p.s.h.vtd.remove_passthrough(SID).expect("handed back");
    assert_eq!(dev.id(), p.host.dev);
    for pasid in [None, Some(5), Some(6)] {
        assert_eq!(p.ioas(pasid), None, "{pasid:?}");
    }
    assert_eq!(backend(&p.s.h).shadow_domains().count(), 0);
    // Nothing left on the host but the bound device's RAM IOAS.
    p.host.sim.reset_counters();
    p.flush(&[desc::iotlb_domain(2)]);
    assert_eq!(p.host.sim.calls(HostOp::IoasCopy), 0);
}

#[test]
fn shadow_host_refusing_a_pasid_attach_faults_once_and_recovers() {
    let mut p = shadowed(&[]);
    let fs = p.tables();
    p.host.sim.fail_nth(HostOp::Attach, 1, Errno::EINVAL);
    p.set(5, &fs_entry(2, &fs));
    assert_eq!(p.ioas(Some(5)), None);
    assert!(fsts_set(&p.s.h, fsts::PPF));
    let (_, hi) = first_fault(&p.s.h);
    assert_eq!(fault_fields(hi), (0x5b, Some(5), u64::from(SID)));
    assert_eq!(p.faults(), 1);
    // The next PASID-cache invalidation retries, and the host takes it.
    p.flush(&[desc::pasid_cache(1, 2, 5)]);
    assert!(p.sees_page(Some(5)));
    assert_eq!(p.faults(), 1);
}

#[test]
fn shadow_failed_sync_of_a_pasid_domain_aborts_the_wait_with_ite() {
    let mut p = shadowed(&[]);
    let fs = p.fs();
    p.set(5, &fs_entry(2, &fs));
    p.map(&fs, 0x3000, 0x9_3000, USER_RW);
    p.host.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    p.host.sim.fail_nth(HostOp::IoasMap, 1, Errno::ENOMEM);
    let inv = desc::pasid_iotlb(2, 5, Some((0x3000, 0, false)));
    assert!(!p.s.q.submit_once(&mut p.s.h.vtd, &p.s.h.mem, &[inv]));
    assert_eq!(p.backing(Some(5), 0x3000), None);
    assert!(fsts_set(&p.s.h, fsts::ITE));
    assert_eq!((p.s.h.read64(off::IQER) >> 32) & 0xffff, u64::from(SID));
    // Linux's retry maps it.
    p.flush(&[inv]);
    assert_eq!(p.backing(Some(5), 0x3000), Some((p.va(0x9_3000), true)));
}

#[test]
fn shadow_pasids_on_a_host_without_pasid_support_fault_and_the_rid_works() {
    let spec = nonest_with_ecap(|e| e & !ecap::PASID.mask());
    let (mut p, decision) = shadowed_on(&[], &spec);
    assert!(decision.has_failed("shadow-pasids"), "{decision}");
    assert!(
        decision.reason.contains("stay blocked"),
        "{}",
        decision.reason
    );
    let fs = p.tables();
    p.set(0, &fs_entry(1, &fs));
    p.set(5, &fs_entry(2, &fs));
    assert_eq!(p.ioas(Some(5)), None);
    assert!(p.sees_page(None));
    let (_, hi) = first_fault(&p.s.h);
    assert_eq!(fault_fields(hi), (0x5b, Some(5), u64::from(SID)));
    // Once per entry, however many invalidations follow.
    p.flush(&[desc::pasid_cache(1, 2, 5), desc::iotlb_global()]);
    assert_eq!(p.faults(), 1);
    // The model still translates the PASID for emulated use.
    assert!(matches!(
        p.s.h.translate(SID, Some(5), 0x1000, Access::READ),
        TranslateResult::Mapped(_)
    ));
}

#[test]
fn shadow_pasid_beyond_the_host_pasid_width_faults_and_narrower_ones_attach() {
    // Host PSS=4: 5-bit PASIDs (below 32).
    let pss = ecap::PSS.mask();
    let spec = nonest_with_ecap(|e| (e & !pss) | (4 << pss.trailing_zeros()));
    let (mut p, decision) = shadowed_on(&[], &spec);
    assert!(decision.has_failed("shadow-pasids"));
    let fs = p.fs();
    p.set(31, &fs_entry(2, &fs));
    p.set(32, &fs_entry(2, &fs));
    assert!(p.ioas(Some(31)).is_some());
    assert_eq!(p.ioas(Some(32)), None);
    let (_, hi) = first_fault(&p.s.h);
    assert_eq!(fault_fields(hi), (0x5b, Some(32), u64::from(SID)));
    assert_eq!(p.faults(), 1);
}

#[test]
fn shadow_legacy_guest_needs_no_host_pasids() {
    let mut h = crate::tests::Harness::new(&["mode=legacy", "cm=1"]);
    let spec = nonest_with_ecap(|e| e & !ecap::PASID.mask());
    let (_, d) = accepted_as(&mut h, &spec, SID, DecisionKind::Shadow);
    assert!(!d.has_failed("shadow-pasids"), "{d}");
}

#[test]
fn shadow_host_with_every_pasid_states_it_in_the_decision() {
    let (_, decision) = shadowed_on(&[], &HostProfile::VtdNonest.spec());
    let c = decision
        .checks
        .iter()
        .find(|c| c.name == "shadow-pasids")
        .unwrap();
    assert!(c.passed, "{}", c.detail);
}

/// Clears the 4 KiB first-stage leaf of `iova` (what Linux's unmap does
/// before its PASID-based IOTLB invalidation).
fn fs_unmap(p: &Pt, fs: &FsTables, iova: u64) {
    use vm_memory::Bytes;
    let mem = &p.s.h.mem;
    let mut table = fs.root;
    for level in (1..=fs.levels).rev() {
        let slot = table + 8 * ((iova >> (12 + 9 * (level - 1))) & 0x1ff);
        if level == 1 {
            mem.write_obj(0u64, GuestAddress(slot)).unwrap();
            return;
        }
        let e: u64 = mem.read_obj(GuestAddress(slot)).unwrap();
        if e & flpte::P == 0 {
            return;
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
}

mod props {
    //! proptest: random maps and unmaps for the RID and two PASIDs (one
    //! domain-id, different tables), each batch followed by Linux's
    //! PASID-based invalidations -> each requester's host IOAS holds
    //! exactly the reference's pages, and nothing of the others'.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const SLOTS: u64 = 12;
    const IOVA: u64 = 0x40_0000;
    const GPA: u64 = 0x80_0000;
    /// (PASID entry index, DID) of the requesters: RID_PASID 0, 5, 9.
    const REQS: [(u32, u16); 3] = [(0, 1), (5, 2), (9, 2)];

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            req: usize,
            slot: u64,
            out: u64,
            write: bool,
        },
        Unmap {
            req: usize,
            slot: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..SLOTS, 0..SLOTS, any::<bool>()).prop_map(|(req, slot, out, write)| {
                Op::Map {
                    req,
                    slot,
                    out,
                    write,
                }
            }),
            (0..3usize, 0..SLOTS).prop_map(|(req, slot)| Op::Unmap { req, slot }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn shadow_pasid_ioases_equal_the_reference(
            batches in proptest::collection::vec(
                (proptest::collection::vec(op(), 1..6), any::<bool>()), 1..5)
        ) {
            let mut p = shadowed(&[]);
            let fs: Vec<FsTables> = REQS.iter().map(|_| p.fs()).collect();
            for (i, &(pasid, did)) in REQS.iter().enumerate() {
                p.set(pasid, &fs_entry(did, &fs[i]));
            }
            let mut reference: Vec<BTreeMap<u64, (u64, bool)>> = vec![BTreeMap::new(); 3];
            for (ops, whole) in batches {
                let mut touched = Vec::new();
                for op in &ops {
                    match *op {
                        Op::Map { req, slot, out, write } => {
                            let flags = flpte::US | if write { flpte::RW } else { 0 };
                            p.map(&fs[req], IOVA + (slot << 12), GPA + (out << 12), flags);
                            reference[req].insert(slot, (GPA + (out << 12), write));
                            touched.push((req, slot));
                        }
                        Op::Unmap { req, slot } => {
                            fs_unmap(&p, &fs[req], IOVA + (slot << 12));
                            reference[req].remove(&slot);
                            touched.push((req, slot));
                        }
                    }
                }
                let descs: Vec<[u64; 2]> = touched
                    .iter()
                    .map(|&(req, slot)| {
                        let (pasid, did) = REQS[req];
                        let page = (!whole).then_some((IOVA + (slot << 12), 0, false));
                        desc::pasid_iotlb(did, pasid, page)
                    })
                    .collect();
                p.flush(&descs);
                for (req, &(pasid, _)) in REQS.iter().enumerate() {
                    let key = (pasid != 0).then_some(pasid);
                    for slot in 0..SLOTS {
                        let want = reference[req].get(&slot).map(|&(g, w)| (p.va(g), w));
                        prop_assert_eq!(
                            p.backing(key, IOVA + (slot << 12)), want,
                            "requester {} slot {}", req, slot
                        );
                    }
                }
            }
            prop_assert_eq!(p.faults(), 0);
        }
    }
}
