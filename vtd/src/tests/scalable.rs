//! Scalable mode: scalable root/context entries, PASID directory and
//! tables, PGTT first-stage/second-stage/pass-through/nested, first-stage
//! access rights and A/D updates, RID_PASID.

use nesting_core::types::Access;

use super::Harness;
use crate::mock::{FsTables, PasidSetup, ScalableTables, SlTables, flpte, probe_like_linux};
use crate::regs::off;
use crate::{TranslateResult, fault::FaultReason};

pub(super) const SID: u16 = 0x0210;
const HI_SID: u16 = 0x02f8; // devfn 0xf8: upper context table
const DID: u16 = 9;

/// A scalable-mode guest as Linux sets one up for device `SID` (also the
/// fixture of the passthrough PASID tests).
pub(super) struct Sm {
    pub h: Harness,
    pub t: ScalableTables,
    pub dir: u64,
    pub q: crate::mock::Queue,
}

/// Tables with `SID`'s context entry (PASID directory for 2^14 PASIDs),
/// probed like Linux (queue, root table, TE); its events consumed.
pub(super) fn scalable(opts: &[&str]) -> Sm {
    let mut h = Harness::new(opts);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    // Linux: PDTS for the full 20-bit PASID space is 7 (2^14 entries); a
    // small directory keeps the test pool small.
    let dir = t.set_context(&h.mem, &mut h.alloc, SID, 1, 0);
    let q = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root).queue;
    h.vtd.take_events();
    Sm { h, t, dir, q }
}

impl Sm {
    /// Writes a PASID entry and flushes as Linux's `pasid.c` does after a
    /// change: PASID-cache (PASID-selective), then PASID-based IOTLB.
    pub fn set_pasid(&mut self, pasid: u32, e: &PasidSetup) {
        self.t
            .set_pasid(&self.h.mem, &mut self.h.alloc, self.dir, pasid, e);
        let did = (e.q[1] & 0xffff) as u16;
        let flush = [
            crate::mock::desc::pasid_cache(1, did, pasid),
            crate::mock::desc::pasid_iotlb(did, pasid, None),
        ];
        assert!(self.q.submit(&mut self.h.vtd, &self.h.mem, &flush));
    }

    pub fn fs(&mut self, levels: u32) -> FsTables {
        FsTables::new(&self.h.mem, &mut self.h.alloc, levels)
    }
}

const USER_RW: u64 = flpte::RW | flpte::US;

#[test]
fn first_stage_rid_pasid_4_level_translates_and_sets_accessed_dirty() {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x7000, 0x1_2000, 12, USER_RW);
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    match s.h.translate(SID, None, 0x7abc, Access::READ) {
        TranslateResult::Mapped(t) => {
            assert_eq!(t.gpa_of(nesting_core::types::Iova(0x7abc)).0, 0x1_2abc);
            assert_eq!(
                t.access,
                Access::READ | Access::EXEC,
                "W withheld until a write walks"
            );
        }
        r => panic!("{r:?}"),
    }
    let e = fs.entries(&s.h.mem, 0x7000);
    assert!(e.iter().all(|e| e & flpte::A != 0), "A set on every level");
    assert_eq!(e[3] & flpte::D, 0, "read leaves D clear");
    assert_eq!(s.h.gpa(SID, None, 0x7000, Access::WRITE), Ok(0x1_2000));
    assert_ne!(
        fs.entries(&s.h.mem, 0x7000)[3] & flpte::D,
        0,
        "write sets D"
    );
}

#[test]
fn first_stage_5_level_and_superpages() {
    let mut s = scalable(&["aw=57"]);
    let fs = s.fs(5);
    let iova = 0x00aa_bbcc_dd00_0000u64 & ((1 << 56) - 1) & !0x3fff_ffff;
    fs.map(&s.h.mem, &mut s.h.alloc, iova, 0x4000_0000, 30, USER_RW);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x60_0000, 0x20_0000, 21, USER_RW);
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 5, false, false));
    assert_eq!(
        s.h.gpa(SID, None, iova + 0x123_4567, Access::READ),
        Ok(0x4123_4567)
    );
    assert_eq!(s.h.gpa(SID, None, 0x7f_ffff, Access::WRITE), Ok(0x3f_ffff));
}

#[test]
fn first_stage_non_canonical_faults_0x80() {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    assert_eq!(s.h.gpa(SID, None, 1 << 47, Access::READ), Err(0x80));
    // Canonical upper half reaches the tables (and faults there).
    assert_eq!(
        s.h.gpa(SID, None, 0xffff_8000_0000_0000, Access::READ),
        Err(0x71)
    );
}

#[test]
fn first_stage_user_supervisor_wpe_and_sre() {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x1000, 0x5000, 12, 0); // supervisor, read-only
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, Access::READ),
        Err(0x81),
        "user to supervisor page"
    );
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, Access::READ | Access::PRIV),
        Err(0x5d),
        "SRE clear"
    );
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, true, false));
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, Access::WRITE | Access::PRIV),
        Ok(0x5000),
        "WPE=0"
    );
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, true, true));
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, Access::WRITE | Access::PRIV),
        Err(0x85),
        "WPE=1"
    );
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, Access::READ | Access::PRIV),
        Ok(0x5000)
    );
}

#[test]
fn first_stage_execute_needs_ere_and_no_xd() {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    fs.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x1000,
        0x5000,
        12,
        USER_RW | flpte::XD,
    );
    fs.map(&s.h.mem, &mut s.h.alloc, 0x2000, 0x6000, 12, USER_RW);
    let mut pe = PasidSetup::first_stage(DID, fs.root, 4, false, false);
    s.set_pasid(0, &pe);
    assert_eq!(
        s.h.gpa(SID, None, 0x2000, Access::EXEC | Access::READ),
        Err(0x5c)
    );
    pe.q[2] |= 1 << 1; // ERE
    s.set_pasid(0, &pe);
    assert_eq!(
        s.h.gpa(SID, None, 0x2000, Access::EXEC | Access::READ),
        Ok(0x6000)
    );
    assert_eq!(
        s.h.gpa(SID, None, 0x1000, Access::EXEC | Access::READ),
        Err(0x82)
    );
}

#[test]
fn first_stage_reserved_bits_fault_0x72() {
    let mut s = scalable(&["aw=48"]);
    let fs = s.fs(4);
    // Output address above HAW (48).
    fs.map(&s.h.mem, &mut s.h.alloc, 0x1000, 1 << 50, 12, USER_RW);
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    assert_eq!(s.h.gpa(SID, None, 0x1000, Access::READ), Err(0x72));
}

#[test]
fn first_stage_1g_without_fs1gp_is_reserved() {
    let mut s = scalable(&["sps=1"]);
    let fs = s.fs(4);
    fs.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x4000_0000,
        0x4000_0000,
        30,
        USER_RW,
    );
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    assert_eq!(s.h.gpa(SID, None, 0x4000_0000, Access::READ), Err(0x72));
}

#[test]
fn five_level_fspm_without_fs5lp_is_invalid_entry() {
    let mut s = scalable(&[]);
    let fs = s.fs(5);
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 5, false, false));
    assert_eq!(s.h.gpa(SID, None, 0x1000, Access::READ), Err(0x5b));
}

#[test]
fn request_with_pasid_uses_its_entry_and_checks_bounds() {
    let mut s = scalable(&["pasid_bits=8"]);
    let fs = s.fs(4);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x1000, 0x9000, 12, USER_RW);
    s.set_pasid(77, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    assert_eq!(s.h.gpa(SID, Some(77), 0x1000, Access::READ), Ok(0x9000));
    assert_eq!(
        s.h.gpa(SID, Some(78), 0x1000, Access::READ),
        Err(0x59),
        "PASID entry not present"
    );
    assert_eq!(
        s.h.gpa(SID, Some(300), 0x1000, Access::READ),
        Err(0x46),
        "beyond ECAP.PSS"
    );
    assert_eq!(
        s.h.gpa(SID, Some(200), 0x1000, Access::READ),
        Err(0x51),
        "directory entry absent"
    );
}

#[test]
fn pasid_beyond_directory_size_faults_0x46() {
    let mut s = scalable(&[]);
    // PDTS=1: 256 directory entries, 16384 PASIDs.
    assert_eq!(s.h.gpa(SID, Some(16384), 0, Access::READ), Err(0x46));
}

#[test]
fn pasid_request_without_paside_faults_0x45() {
    let mut s = scalable(&[]);
    let ce = s.t.root + 16 * 2;
    let lo = vm_memory::Bytes::read_obj::<u64>(&s.h.mem, vm_memory::GuestAddress(ce)).unwrap();
    let ctx = (lo & !0xfff) + 32 * 0x10;
    let q0 = vm_memory::Bytes::read_obj::<u64>(&s.h.mem, vm_memory::GuestAddress(ctx)).unwrap();
    vm_memory::Bytes::write_obj(&s.h.mem, q0 & !(1 << 3), vm_memory::GuestAddress(ctx)).unwrap();
    assert_eq!(s.h.gpa(SID, Some(1), 0, Access::READ), Err(0x45));
}

#[test]
fn scalable_root_context_faults() {
    let mut s = scalable(&[]);
    assert_eq!(
        s.h.gpa(0x0300, None, 0, Access::READ),
        Err(0x39),
        "root half not present"
    );
    assert_eq!(
        s.h.gpa(HI_SID, None, 0, Access::READ),
        Err(0x39),
        "upper half not present"
    );
    assert_eq!(
        s.h.gpa(0x0208, None, 0, Access::READ),
        Err(0x41),
        "context not present"
    );
    s.t.set_context(&s.h.mem, &mut s.h.alloc, HI_SID, 0, 0);
    assert_eq!(
        s.h.gpa(HI_SID, None, 0, Access::READ),
        Err(0x51),
        "upper table reached"
    );
}

#[test]
fn second_stage_pgtt_needs_ssts() {
    let mut s = scalable(&["slts=1"]);
    let sl = SlTables::new(&s.h.mem, &mut s.h.alloc, 4);
    sl.map(&s.h.mem, &mut s.h.alloc, 0x3000, 0x8000, 12, true, false);
    s.set_pasid(0, &PasidSetup::second_stage(DID, sl.root, 2));
    assert_eq!(s.h.gpa(SID, None, 0x3000, Access::READ), Ok(0x8000));
    assert_eq!(s.h.gpa(SID, None, 0x3000, Access::WRITE), Err(0x85));
    assert_eq!(s.h.gpa(SID, None, 0x4000, Access::READ), Err(0x86));
    let mut s = scalable(&["slts=0"]);
    s.set_pasid(0, &PasidSetup::second_stage(DID, sl.root, 2));
    assert_eq!(s.h.gpa(SID, None, 0x3000, Access::READ), Err(0x5b));
}

#[test]
fn pass_through_pgtt_is_identity() {
    let mut s = scalable(&[]);
    s.set_pasid(0, &PasidSetup::pass_through(DID));
    assert_eq!(s.h.gpa(SID, None, 0x1234_5678, Access::RW), Ok(0x1234_5678));
}

/// RID_PASID nested: first stage maps 0x5000 -> 0x40_0000, the second
/// stage identity-maps the pool (where the first-stage tables are;
/// writable if `tables_w`) and maps 0x40_0000 -> 0x9_9000 (writable if
/// `out_w`).
fn nested_setup(s: &mut Sm, tables_w: bool, out_w: bool) {
    let sl = SlTables::new(&s.h.mem, &mut s.h.alloc, 4);
    let fs = s.fs(4);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x5000, 0x40_0000, 12, USER_RW);
    for page in (16 << 20..17 << 20).step_by(4096) {
        sl.map(&s.h.mem, &mut s.h.alloc, page, page, 12, true, tables_w);
    }
    sl.map(
        &s.h.mem,
        &mut s.h.alloc,
        0x40_0000,
        0x9_9000,
        12,
        true,
        out_w,
    );
    s.set_pasid(0, &PasidSetup::nested(DID, fs.root, 4, sl.root, 2));
}

#[test]
fn nested_translates_tables_and_output_through_second_stage() {
    let mut s = scalable(&["flts=1", "slts=1", "nest=1"]);
    nested_setup(&mut s, true, false);
    assert_eq!(s.h.gpa(SID, None, 0x5123, Access::READ), Ok(0x9_9123));
    assert_eq!(
        s.h.gpa(SID, None, 0x5123, Access::WRITE),
        Err(0x85),
        "second stage read-only"
    );
}

#[test]
fn nested_fs_table_outside_second_stage_faults_0x75() {
    let mut s = scalable(&["flts=1", "slts=1", "nest=1"]);
    let sl = SlTables::new(&s.h.mem, &mut s.h.alloc, 4);
    let fs = s.fs(4);
    s.set_pasid(0, &PasidSetup::nested(DID, fs.root, 4, sl.root, 2));
    assert_eq!(s.h.gpa(SID, None, 0x5000, Access::READ), Err(0x75));
}

#[test]
fn fpd_in_pasid_entry_suppresses_recording() {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    let mut pe = PasidSetup::first_stage(DID, fs.root, 4, false, false);
    pe.q[0] |= 1 << 1;
    s.set_pasid(0, &pe);
    let r = s.h.translate(SID, None, 0x1000, Access::READ);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::FsEntryNotPresent,
            recorded: false
        }
    );
    assert_eq!(s.h.read32(off::FSTS), 0);
}

#[test]
fn scalable_fault_record_carries_pasid() {
    let mut s = scalable(&[]);
    let _ =
        s.h.translate(SID, Some(3), 0x4000, Access::READ | Access::EXEC);
    let hi = s.h.read64(0x228);
    // PP (bit 95), PV (123:104) = 3, EXE (bit 94), T1 = 1 (read).
    assert_eq!(hi >> 63, 1);
    assert_eq!((hi >> 31) & 1, 1);
    assert_eq!((hi >> 40) & 0xfffff, 3);
    assert_eq!((hi >> 30) & 1, 1);
    assert_eq!((hi >> 62) & 1, 1);
    assert_eq!((hi >> 32) & 0xff, 0x51);
}

/// RID_PASID first-stage (SRE, WPE) and its entry as a nesting layer
/// finds it.
fn rid_pasid_first_stage() -> (Sm, FsTables, crate::translate::Located) {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    s.set_pasid(0, &PasidSetup::first_stage(DID, fs.root, 4, true, true));
    let l =
        s.h.vtd
            .pasid_entry(&s.h.mem, nesting_core::types::Bdf(SID), None)
            .unwrap();
    (s, fs, l)
}

#[test]
fn pasid_entry_lookup_for_nesting_layer() {
    let (s, fs, l) = rid_pasid_first_stage();
    assert_eq!(l.entry.fsptptr(), fs.root);
    assert_eq!(l.entry.did(), DID);
    assert!(
        s.h.vtd
            .pasid_entry(&s.h.mem, nesting_core::types::Bdf(0x0300), None)
            .is_none()
    );
}

#[test]
fn first_stage_pasid_entry_becomes_vtd_s1_hwpt_data() {
    use nesting_core::host::{HwptData, VtdS1Flags};
    let (_s, fs, l) = rid_pasid_first_stage();
    assert_eq!(
        crate::nesting::stage1_hwpt(&l.entry),
        Some(HwptData::VtdS1 {
            flags: VtdS1Flags::SRE | VtdS1Flags::WPE,
            pgtbl_addr: fs.root,
            addr_width: 48,
        })
    );
    let pt = crate::tables::PasidEntry {
        q: PasidSetup::pass_through(DID).q,
    };
    assert_eq!(crate::nesting::stage1_hwpt(&pt), None);
}

#[test]
fn pasid_iotlb_scopes_become_stage1_invalidations() {
    use crate::nesting::{IotlbScope, stage1_invalidation};
    let page = IotlbScope::PasidPages {
        did: 1,
        pasid: 2,
        addr: 0x20_3000,
        am: 2,
        ih: true,
    };
    let e = stage1_invalidation(&page);
    assert_eq!((e.addr, e.npages, e.leaf), (0x20_0000, 4, true));
    let all = stage1_invalidation(&IotlbScope::Pasid { did: 1, pasid: 2 });
    assert_eq!((all.addr, all.npages, all.leaf), (0, u64::MAX, false));
}

/// VT-d 3.15 (rev 4.1): a request with PASID whose input address is in
/// 0xFEEx_xxxx is translated normally; an output there is blocked (0x87).
#[test]
fn request_with_pasid_to_interrupt_range_translates_output_there_faults_0x87() {
    let mut s = scalable(&["pasid_bits=8"]);
    let fs = s.fs(4);
    fs.map(&s.h.mem, &mut s.h.alloc, 0xfee0_0000, 0x9000, 12, USER_RW);
    s.set_pasid(1, &PasidSetup::first_stage(DID, fs.root, 4, false, false));
    assert_eq!(
        s.h.gpa(SID, Some(1), 0xfee0_0000, Access::WRITE),
        Ok(0x9000)
    );
    // Not mapped: the ordinary first-stage fault, not an interrupt one.
    assert_eq!(s.h.gpa(SID, Some(1), 0xfee0_1000, Access::WRITE), Err(0x71));
    // Pass-through: the output would be the interrupt range.
    s.set_pasid(2, &PasidSetup::pass_through(DID));
    assert_eq!(s.h.gpa(SID, Some(2), 0xfee0_0000, Access::WRITE), Err(0x87));
    // Without PASID the address is looked up normally (here: RID_PASID 0
    // shares the PASID table page of 1 and 2, and has no entry).
    assert_eq!(s.h.gpa(SID, None, 0xfee0_0000, Access::WRITE), Err(0x59));
}

#[test]
fn rid_pasid_beyond_directory_faults_0x48() {
    let mut s = scalable(&[]);
    // PDTS=1 covers PASIDs below 16384.
    s.t.set_context(&s.h.mem, &mut s.h.alloc, 0x0220, 1, 20000);
    assert_eq!(s.h.gpa(0x0220, None, 0, Access::READ), Err(0x48));
}

#[test]
fn page_requests_enabled_without_prs_is_invalid_context_0x43() {
    let mut s = scalable(&["prs=0"]);
    let root = vm_memory::Bytes::read_obj::<u64>(&s.h.mem, vm_memory::GuestAddress(s.t.root + 32))
        .unwrap();
    let ce = (root & !0xfff) + 32 * 0x10;
    let q0 = vm_memory::Bytes::read_obj::<u64>(&s.h.mem, vm_memory::GuestAddress(ce)).unwrap();
    vm_memory::Bytes::write_obj(&s.h.mem, q0 | (1 << 4), vm_memory::GuestAddress(ce)).unwrap();
    assert_eq!(s.h.gpa(SID, None, 0, Access::READ), Err(0x43));
}

#[test]
fn eafe_sets_extended_accessed_flag() {
    let mut s = scalable(&[]);
    let fs = s.fs(4);
    fs.map(&s.h.mem, &mut s.h.alloc, 0x1000, 0x5000, 12, USER_RW);
    let mut pe = PasidSetup::first_stage(DID, fs.root, 4, false, false);
    pe.q[2] |= 1 << 7; // EAFE
    s.set_pasid(0, &pe);
    assert_eq!(s.h.gpa(SID, None, 0x1000, Access::READ), Ok(0x5000));
    assert!(
        fs.entries(&s.h.mem, 0x1000)
            .iter()
            .all(|e| e & (1 << 10) != 0)
    );
}

#[test]
fn nested_accessed_update_needs_second_stage_write_0x77() {
    let mut s = scalable(&["flts=1", "slts=1", "nest=1"]);
    // First-stage tables readable but not writable through the second
    // stage: the accessed-flag update cannot be made.
    nested_setup(&mut s, false, true);
    assert_eq!(s.h.gpa(SID, None, 0x5000, Access::READ), Err(0x77));
}
