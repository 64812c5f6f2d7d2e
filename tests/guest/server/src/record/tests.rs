//! The recorder driven the way Linux's intel-iommu driver drives a unit
//! (tables built by the vtd crate's driver-side mock, registers written
//! through [`HarnessVtd`]), and the recorded text replayed by the replay
//! runner: no script error, no failed check, real checks.

use std::sync::{Arc, Mutex};

use nesting_core::iotlb::Translate;
use nesting_core::types::{Access, Bdf, Iova, RequesterId};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};
use vtd::Vtd;
use vtd::mock::{FsTables, PageAlloc, PasidSetup, Queue, ScalableTables, SlTables, desc, flpte};

use super::*;
use crate::reg_fn::RegisterUnit;
use crate::vtd_fn::{HarnessVtd, VtdMode};

/// Guest RAM of the tests: 4 MiB at 0, tables from 1 MiB.
const RAM: usize = 4 << 20;
/// The endpoint's requester ID (00:05.0).
const SID: u16 = 0x28;
/// `QI_DONE` status Linux's `qi_submit_sync` waits for.
const QI_DONE: u32 = 2;

/// Register offsets (VT-d 11.4).
const CAP: u64 = 0x08;
const ECAP: u64 = 0x10;
const GCMD: u64 = 0x18;
const GSTS: u64 = 0x1c;
const RTADDR: u64 = 0x20;
const FSTS: u64 = 0x34;
const IQT: u64 = 0x88;
const IQA: u64 = 0x90;

/// A recorded unit over fresh RAM.
struct Rig {
    unit: Arc<HarnessVtd>,
    mem: Arc<GuestMemoryMmap>,
    alloc: PageAlloc,
    out: Arc<Mutex<Vec<u8>>>,
    rec: SharedRecorder,
}

fn rig(mode: VtdMode) -> Rig {
    let cfg = mode.config().unwrap();
    let (rec, out) = Recorder::in_memory(&cfg);
    let rec = Arc::new(Mutex::new(rec));
    let unit = HarnessVtd::new(Vtd::new(cfg)).with_recorder(Arc::clone(&rec));
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap());
    unit.set_memory(Arc::clone(&mem));
    Rig {
        unit: Arc::new(unit),
        mem,
        alloc: PageAlloc::new(1 << 20, 2 << 20),
        out,
        rec,
    }
}

impl Rig {
    fn text(&self) -> String {
        String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
    }

    /// `qi_submit_sync`: descriptors, a wait writing QI_DONE, one tail
    /// write through the recorded unit; the status must reach QI_DONE.
    fn submit(&self, q: &mut Queue, descs: &[[u64; 2]]) {
        self.mem.write_obj(1u32, GuestAddress(q.status)).unwrap();
        for d in descs {
            q.push(&*self.mem, *d);
        }
        q.push(&*self.mem, desc::wait(q.status, QI_DONE, false, false));
        self.unit.mmio_write(IQT, 4, q.tail());
        let status: u32 = self.mem.read_obj(GuestAddress(q.status)).unwrap();
        assert_eq!(status, QI_DONE, "invalidation wait completed");
    }

    /// Linux's `intel_iommu_init` through the recorded registers: CAP and
    /// ECAP, queued invalidation, root table, global invalidations, then
    /// translation on.
    fn probe(&mut self, root: u64, scalable: bool) -> Queue {
        self.unit.mmio_read(CAP, 8);
        self.unit.mmio_read(ECAP, 8);
        let mut q = Queue::new(&*self.mem, &mut self.alloc, scalable);
        self.unit.mmio_write(IQT, 4, 0);
        self.unit.mmio_write(IQA, 8, q.iqa());
        self.unit.mmio_write(GCMD, 4, 1 << 26);
        assert_ne!(self.unit.mmio_read(GSTS, 4) & 1 << 26, 0, "QIES");
        self.unit
            .mmio_write(RTADDR, 8, root | u64::from(scalable) << 10);
        self.unit.mmio_write(GCMD, 4, 1 << 26 | 1 << 30);
        let mut flush = vec![desc::cc_global()];
        if scalable {
            flush.push(desc::pasid_cache(3, 0, 0));
        }
        flush.push(desc::iotlb_global());
        self.submit(&mut q, &flush);
        self.unit.mmio_write(GCMD, 4, 1 << 26 | 1 << 31);
        assert_ne!(self.unit.mmio_read(GSTS, 4) & 1 << 31, 0, "TES");
        q
    }

    fn dma(&self, iova: u64, access: Access) -> Option<u64> {
        Translate::translate(
            &*self.unit,
            RequesterId::Pci(Bdf(SID)),
            None,
            Iova(iova),
            access,
        )
        .ok()
        .map(|t| t.gpa_of(Iova(iova)).raw())
    }
}

/// Replays `text`: no script error, no failure; returns the checks.
fn replay(text: &str) -> usize {
    let mut out = Vec::new();
    let r = viommu::replay::run_script(text, &mut out);
    let out = String::from_utf8_lossy(&out);
    let s = r.unwrap_or_else(|e| panic!("script error {e}\n{text}"));
    assert_eq!(s.failed, 0, "{out}\n--- script ---\n{text}");
    s.passed
}

/// Scalable mode, first stage: Linux's probe, a PASID entry for the
/// RID_PASID with first-stage tables, DMA through it (accessed and dirty
/// flags set by the walk), a fault recorded and read back.
#[test]
fn vtd_first_stage_recording_replays_with_checks() {
    let mut r = rig(VtdMode::ScalableFs);
    let tables = ScalableTables::new(&*r.mem, &mut r.alloc);
    let mut q = r.probe(tables.root, true);
    let dir = tables.set_context(&*r.mem, &mut r.alloc, SID, 0, 0);
    let fs = FsTables::new(&*r.mem, &mut r.alloc, 4);
    let rw_user = flpte::RW | flpte::US;
    fs.map(&*r.mem, &mut r.alloc, 0x4000_0000, 0x30_0000, 12, rw_user);
    fs.map(&*r.mem, &mut r.alloc, 0x4000_1000, 0x30_1000, 12, rw_user);
    tables.set_pasid(
        &*r.mem,
        &mut r.alloc,
        dir,
        0,
        &PasidSetup::first_stage(1, fs.root, 4, false, false),
    );
    r.submit(&mut q, &[desc::pasid_cache(1, 1, 0), desc::iotlb_domain(1)]);
    assert_eq!(r.dma(0x4000_0010, Access::WRITE), Some(0x30_0010));
    assert_eq!(r.dma(0x4000_1000, Access::READ), Some(0x30_1000));
    assert_eq!(r.dma(0x5000_0000, Access::WRITE), None);
    assert_ne!(r.unit.mmio_read(FSTS, 4), 0, "a fault is recorded");
    let text = r.text();
    assert!(text.contains("\nmodel vtd mode=scalable"), "{text}");
    assert!(text.contains("\nram 0x0 0x400000\n"), "{text}");
    assert!(
        text.contains("translate 0x28 0x40000010 w => 0x300010"),
        "{text}"
    );
    assert!(
        text.contains("translate 0x28 0x50000000 w => fault"),
        "{text}"
    );
    // The invalidation waits' status and the walk's A/D flags are checks
    // of what the model wrote.
    assert!(
        text.contains(&format!("read32 {:#x} == 0x2", q.status)),
        "{text}"
    );
    assert!(text.contains("read16 "), "accessed/dirty flags: {text}");
    let checks = replay(&text);
    assert!(checks >= 15, "{checks} checks\n{text}");
    assert_eq!(lock(&r.rec).stats().checks as usize, checks);
}

/// Legacy mode, second stage, no caching mode: context entries and
/// second-stage tables.
#[test]
fn vtd_legacy_recording_replays_with_checks() {
    let mut r = rig(VtdMode::Legacy);
    let root = r.alloc.page(&*r.mem);
    let mut q = r.probe(root, false);
    let sl = SlTables::new(&*r.mem, &mut r.alloc, 4);
    sl.map(&*r.mem, &mut r.alloc, 0x1000, 0x20_0000, 12, true, true);
    sl.map(&*r.mem, &mut r.alloc, 0x2000, 0x20_1000, 12, true, false);
    let ctx = r.alloc.page(&*r.mem);
    r.mem.write_obj(ctx | 1, GuestAddress(root)).unwrap();
    // Context entry of devfn 0x28: SLPTPTR, TT=0, AW=2 (4 levels), DID 1.
    let ce = ctx + 16 * 0x28;
    r.mem
        .write_obj(2u64 | 1 << 8, GuestAddress(ce + 8))
        .unwrap();
    r.mem.write_obj(sl.root | 1, GuestAddress(ce)).unwrap();
    r.submit(&mut q, &[desc::cc_global(), desc::iotlb_global()]);
    assert_eq!(r.dma(0x1008, Access::READ | Access::WRITE), Some(0x20_0008));
    assert_eq!(r.dma(0x2000, Access::WRITE), None, "read-only page");
    assert_eq!(r.dma(0x9000, Access::READ), None, "not mapped");
    let text = r.text();
    assert!(text.contains("\nmodel vtd mode=legacy"), "{text}");
    assert!(
        text.contains("translate 0x28 0x1008 rw => 0x200008"),
        "{text}"
    );
    let checks = replay(&text);
    assert!(checks >= 9, "{checks} checks\n{text}");
}

/// An operation that reads only memory the script already gave the
/// replay emits no `write-bytes`, and a repeated translation of the same
/// page is not written again.
#[test]
fn vtd_unchanged_memory_emits_no_write_bytes() {
    let mut r = rig(VtdMode::ScalableSs);
    let tables = ScalableTables::new(&*r.mem, &mut r.alloc);
    let mut q = r.probe(tables.root, true);
    let dir = tables.set_context(&*r.mem, &mut r.alloc, SID, 0, 0);
    let sl = SlTables::new(&*r.mem, &mut r.alloc, 4);
    sl.map(&*r.mem, &mut r.alloc, 0x8000, 0x20_0000, 12, true, true);
    tables.set_pasid(
        &*r.mem,
        &mut r.alloc,
        dir,
        0,
        &PasidSetup::second_stage(1, sl.root, 2),
    );
    r.submit(&mut q, &[desc::pasid_cache(1, 1, 0)]);
    // First fault: the walk reads context, PASID and page-table entries.
    assert_eq!(r.dma(0x9000, Access::READ), None);
    let before = r.text().len();
    assert!(r.text().contains("write-bytes"));
    // Same walk again: every byte it reads is in the replay already.
    assert_eq!(r.dma(0x9000, Access::READ), None);
    let again = r.text()[before..].to_string();
    assert_eq!(again, "translate 0x28 0x9000 r => fault\n");
    // A translated page, then the same page again: one line.
    assert_eq!(r.dma(0x8000, Access::READ), Some(0x20_0000));
    let mid = r.text().len();
    assert_eq!(r.dma(0x8010, Access::READ), Some(0x20_0010));
    assert_eq!(r.text().len(), mid, "a repeat of the page is not written");
    replay(&r.text());
}

/// A reset of the unit after the guest used it starts a new script file;
/// a reset before anything was recorded does not.
#[test]
fn reset_after_use_starts_boot2_script() {
    let dir = std::env::temp_dir().join(format!("viommu-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vtd-x.viommu");
    let cfg = VtdMode::Legacy.config().unwrap();
    let rec = Arc::new(Mutex::new(Recorder::new(path.clone(), &cfg)));
    let unit = HarnessVtd::new(Vtd::new(cfg)).with_recorder(Arc::clone(&rec));
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    unit.set_memory(mem);
    unit.reset();
    assert_eq!(lock(&rec).path(), path, "nothing recorded yet: same script");
    unit.mmio_read(0, 4);
    unit.mmio_write(0x3c, 4, 0x21);
    unit.reset();
    let boot2 = dir.join("vtd-x-boot2.viommu");
    assert_eq!(lock(&rec).path(), boot2);
    unit.mmio_read(0x3c, 4);
    drop(unit);
    drop(rec);
    let one = std::fs::read_to_string(&path).unwrap();
    let two = std::fs::read_to_string(&boot2).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(one.contains("mmio-write32 0x3c 0x21"), "{one}");
    // After the reset FECTL reads its reset value again.
    assert!(two.contains("mmio-read32 0x3c == 0x0"), "{two}");
    assert!(!two.contains("mmio-write"), "{two}");
    assert_eq!(replay(&one), 1);
    assert_eq!(replay(&two), 1);
}

#[test]
fn boot_path_inserts_boot_number_before_extension() {
    let p = Path::new("/x/vtd-legacy.viommu");
    assert_eq!(boot_path(p, 1), p);
    assert_eq!(boot_path(p, 2), Path::new("/x/vtd-legacy-boot2.viommu"));
    assert_eq!(boot_path(Path::new("/x/y"), 3), Path::new("/x/y-boot3"));
}

#[test]
fn image_reads_zero_until_set() {
    let mut i = Image::default();
    assert_eq!(i.get(0x1234), 0);
    i.set(0x1234, 7);
    assert_eq!((i.get(0x1234), i.get(0x1235)), (7, 0));
    i.set(0x9_0000, 0);
    assert_eq!(
        i.pages.len(),
        1,
        "zero into an absent page allocates nothing"
    );
}

#[test]
fn uncovered_ranges_leave_declared_out() {
    assert_eq!(
        uncovered(&[(0, 10), (20, 30)], 5, 40),
        vec![(10, 20), (30, 40)]
    );
    assert!(uncovered(&[(0, 100)], 5, 40).is_empty());
}

#[test]
fn write_bytes_merge_close_runs_and_split_long_ones() {
    let cfg = VtdMode::Legacy.config().unwrap();
    let (mut r, _) = Recorder::in_memory(&cfg);
    let mut changed = Vec::new();
    for a in [0x100u64, 0x101, 0x105] {
        r.image.set(a, 0xaa);
        changed.push((a, 0xaa));
    }
    for a in 0x200u64..0x200 + 100 {
        r.image.set(a, 1);
        changed.push((a, 1));
    }
    let lines = r.write_bytes_lines(&changed);
    assert_eq!(lines[0], "write-bytes 0x100 aaaa000000aa");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[1].len(),
        "write-bytes 0x200 ".len() + 2 * WRITE_BYTES_CHUNK
    );
}

#[test]
fn rec_mem_logs_reads_before_and_writes_as_written() {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap());
    mem.write_obj(0x1122_3344u32, GuestAddress(0x100)).unwrap();
    let log = Arc::new(AccessLog::default());
    let m = RecMem::new(Arc::clone(&mem), Arc::clone(&log));
    let _: u32 = m.read_obj(GuestAddress(0x100)).unwrap();
    assert!(log.take().is_empty(), "nothing logged outside an operation");
    log.start();
    let _: u32 = m.read_obj(GuestAddress(0x100)).unwrap();
    m.write_obj(5u16, GuestAddress(0x200)).unwrap();
    // The guest runs on and changes what the model wrote: the log keeps
    // the model's value.
    mem.write_obj(9u16, GuestAddress(0x200)).unwrap();
    assert_eq!(
        log.take(),
        vec![
            MemAccess::Read {
                gpa: 0x100,
                bytes: vec![0x44, 0x33, 0x22, 0x11]
            },
            MemAccess::Write {
                gpa: 0x200,
                bytes: vec![5, 0]
            },
        ]
    );
}

/// A write is staged: guest memory gets the bytes when the model is done
/// with the slice, and the log has them as the model wrote them whatever
/// the guest does afterwards.
#[test]
fn rec_mem_stages_writes_until_the_model_is_done() {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap());
    mem.write_obj(0xaaaa_aaaau32, GuestAddress(0x300)).unwrap();
    let log = Arc::new(AccessLog::default());
    let m = RecMem::new(Arc::clone(&mem), Arc::clone(&log));
    log.start();
    let mut slices = m
        .get_slices(GuestAddress(0x300), 4, Permissions::Write)
        .unwrap();
    let slice = slices.next().unwrap().unwrap();
    slice.copy_from(&[2u8, 0][..]);
    let now: u32 = mem.read_obj(GuestAddress(0x300)).unwrap();
    assert_eq!(now, 0xaaaa_aaaa, "not in guest memory while staged");
    drop(slices);
    let now: u32 = mem.read_obj(GuestAddress(0x300)).unwrap();
    assert_eq!(now, 0xaaaa_0002, "the model's bytes, the rest kept");
    mem.write_obj(0u32, GuestAddress(0x300)).unwrap();
    assert_eq!(
        log.take(),
        vec![MemAccess::Write {
            gpa: 0x300,
            bytes: vec![2, 0, 0xaa, 0xaa]
        }]
    );
}
