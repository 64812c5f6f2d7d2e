//! Bounded work per guest action (issue 16): the guest-memory reads and
//! writes and the host calls one DMA translation or one MMIO write can
//! cause stay within the named bounds of [`crate::limits`], for tables
//! that point at themselves or at upper levels, tables pointing
//! everywhere, queues full of valid descriptors, wrap-around storms and
//! huge invalidation ranges.

use nesting_core::host::HostOp;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::testing::CountingMemory;
use nesting_core::types::{Access, Bdf, Gpa, Iova, Pasid};
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use super::Harness;
use super::passthrough::{Shadow, backend, shadow};
use crate::limits::{
    MAX_QUEUE_DESCRIPTORS, MAX_READS_PER_MMIO_WRITE, MAX_READS_PER_PAGE_REQUEST,
    MAX_READS_PER_TRANSLATION, MAX_READS_PER_TRANSLATION_REQUEST, MAX_WRITES_PER_PAGE_REQUEST,
    MAX_WRITES_PER_TRANSLATION, MAX_WRITES_PER_TRANSLATION_REQUEST, max_host_calls_per_sync,
};
use crate::mock::{QI_DONE, desc};
use crate::passthrough::MAX_MAPPINGS_PER_SYNC;
use crate::regs::{gcmd, off};

/// Host calls made since the counters were reset.
pub(super) fn host_calls(sim: &iommufd_sim::SimIommufd) -> u64 {
    HostOp::ALL.iter().map(|op| sim.calls(*op)).sum()
}

/// Pages of the pool that every page-table entry points into: 8 MiB,
/// below the harness's allocator.
const TABLES: u64 = 8 << 20;
const PAGES: u64 = 8;

fn page(i: u64) -> u64 {
    TABLES + 4096 * (i % PAGES)
}

/// Low bits an entry may carry: present or R/W, U/S, accessed, dirty,
/// page size, in the combinations that let a walk go on (first- and
/// second-stage formats both read them).
const LOW: [u64; 6] = [0x3, 0x7, 0x27, 0x67, 0xe7, 0x1];

/// Fills every pool page with entries pointing into the pool (each page
/// table of a walk is one of eight pages, itself and upper levels
/// included), picked by `words`.
fn fill(mem: &GuestMemoryMmap, words: &[(u64, usize)]) {
    for p in 0..PAGES {
        for i in 0..512u64 {
            let (t, low) = words[((p * 512 + i) as usize) % words.len()];
            let e = page(t) | LOW[low % LOW.len()];
            mem.write_u64_le(Gpa(page(p) + 8 * i), e).unwrap();
        }
    }
}

/// A unit in scalable mode (nesting, second stage, 5-level first stage
/// offered) or legacy mode, translation enabled, whose requesters' tables
/// all lie in the pool: legacy context entries of every device function
/// on bus 0 with 5-level second-stage tables; scalable-mode RID_PASID
/// and PASIDs 1..4 first-stage, second-stage, nested and pass-through
/// entries.
fn everywhere(scalable: bool, roots: &[u64; 4]) -> Harness {
    let opts: &[&str] = if scalable {
        &["mode=scalable", "nest=1", "slts=1", "aw=57", "prs=1"]
    } else {
        &["mode=legacy", "aw=57"]
    };
    let mut h = Harness::new(opts);
    let root = if scalable {
        let t = crate::mock::ScalableTables::new(&h.mem, &mut h.alloc);
        let dir = t.set_context(&h.mem, &mut h.alloc, 0x8, 0, 0);
        let entries = [
            crate::mock::PasidSetup::nested(1, page(roots[0]), 5, page(roots[1]), 3),
            crate::mock::PasidSetup::first_stage(1, page(roots[2]), 5, true, true),
            crate::mock::PasidSetup::second_stage(1, page(roots[3]), 3),
            crate::mock::PasidSetup::nested(2, page(roots[3]), 4, page(roots[2]), 3),
            crate::mock::PasidSetup::pass_through(3),
        ];
        for (pasid, e) in entries.iter().enumerate() {
            t.set_pasid(&h.mem, &mut h.alloc, dir, pasid as u32, e);
        }
        t.root | 1 << 10
    } else {
        let t = crate::mock::LegacyTables::new(&h.mem, &mut h.alloc);
        for devfn in 0..8u16 {
            let slptptr = page(roots[usize::from(devfn) % 4]);
            t.set_context(&h.mem, &mut h.alloc, devfn, 1, 0, 3, slptptr, false);
        }
        t.root
    };
    h.write64(off::RTADDR, root);
    h.write32(off::GCMD, gcmd::SRTP.mask());
    h.write32(off::GCMD, gcmd::TE.mask());
    h
}

/// One DMA-side action of a device behind the unit.
#[derive(Clone, Debug)]
enum Dma {
    Translate(Access),
    TranslationRequest {
        no_write: bool,
        exec: bool,
        privileged: bool,
    },
    Translated(Access),
    PageRequest {
        write: bool,
        last: bool,
    },
}

fn dma() -> impl Strategy<Value = Dma> {
    prop_oneof![
        4 => (0u8..16).prop_map(|a| Dma::Translate(Access::from_bits_truncate(a))),
        2 => (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(no_write, exec, privileged)| Dma::TranslationRequest { no_write, exec, privileged }),
        1 => (0u8..16).prop_map(|a| Dma::Translated(Access::from_bits_truncate(a))),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(write, last)| Dma::PageRequest { write, last }),
    ]
}

/// Runs `d` for (`sid`, `pasid`) at `iova` through `m`; returns the
/// (reads, writes) bound of its kind.
fn run_dma(
    h: &mut Harness,
    m: &CountingMemory<GuestMemoryMmap>,
    d: &Dma,
    sid: u16,
    pasid: Option<u32>,
    iova: u64,
) -> (u64, u64) {
    let p = pasid.and_then(Pasid::new);
    match *d {
        Dma::Translate(access) => {
            let _ = h.vtd.translate(m, Bdf(sid), p, Iova(iova), access);
            (MAX_READS_PER_TRANSLATION, MAX_WRITES_PER_TRANSLATION)
        }
        Dma::TranslationRequest {
            no_write,
            exec,
            privileged,
        } => {
            let req = crate::ats::TranslationRequest {
                sid: Bdf(sid),
                pasid: p,
                addr: iova,
                no_write,
                exec,
                privileged,
            };
            let _ = h.vtd.translation_request(m, &req);
            (
                MAX_READS_PER_TRANSLATION_REQUEST,
                MAX_WRITES_PER_TRANSLATION_REQUEST,
            )
        }
        Dma::Translated(access) => {
            let _ = h.vtd.translate_translated(m, Bdf(sid), iova, access);
            (MAX_READS_PER_TRANSLATION, MAX_WRITES_PER_TRANSLATION)
        }
        Dma::PageRequest { write, last } => {
            let req = crate::prq::PageRequest {
                sid,
                pasid,
                addr: iova & !0xfff,
                read: true,
                write,
                exec: false,
                privileged: false,
                last,
                index: 1,
            };
            let _ = h.vtd.page_request(m, &req);
            (MAX_READS_PER_PAGE_REQUEST, MAX_WRITES_PER_PAGE_REQUEST)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// Tables pointing everywhere (each entry at one of eight pages, the
    /// tables themselves included, so every walk meets cycles and upper
    /// levels, with accessed flags to set or not): one DMA action stays
    /// within its bounds.
    #[test]
    fn dma_over_tables_pointing_everywhere_is_bounded(
        scalable in any::<bool>(),
        roots in [0..PAGES, 0..PAGES, 0..PAGES, 0..PAGES],
        words in prop::collection::vec((0..PAGES, 0usize..LOW.len()), 1..64),
        reqs in prop::collection::vec((0u16..8, prop::option::of(0u32..5), any::<u64>(), dma()), 1..12),
    ) {
        let mut h = everywhere(scalable, &roots);
        fill(&h.mem, &words);
        let m = CountingMemory::new(h.mem.clone());
        for (sid, pasid, iova, d) in reqs {
            // The walk, not the cache: every request reads.
            h.vtd.iotlb().invalidate(nesting_core::iotlb::IotlbInvalidation::All);
            let sid = if scalable { 8 } else { sid };
            m.reset();
            let (reads, writes) = run_dma(&mut h, &m, &d, sid, pasid, iova & ((1 << 57) - 1));
            prop_assert!(m.reads() <= reads, "{d:?}: {} reads", m.reads());
            prop_assert!(m.writes() <= writes, "{d:?}: {} writes", m.writes());
        }
    }
}

/// The bound is reached, not just respected: a nested translation through
/// five first-stage levels, each table behind a five-level second stage,
/// with every accessed flag to set (a second-stage walk per flag).
#[test]
fn translation_nested_with_accessed_updates_reads_exactly_the_bound() {
    let mut h = everywhere(true, &[0, 1, 2, 3]);
    // P|RW|US, accessed clear, every entry pointing at pool page 1.
    fill(&h.mem, &[(1, 1)]);
    let m = CountingMemory::new(h.mem.clone());
    let r = h
        .vtd
        .translate(&m, Bdf(8), None, Iova(0x1234), Access::READ);
    assert!(matches!(r, crate::TranslateResult::Mapped(_)), "{r:?}");
    assert_eq!(m.reads(), MAX_READS_PER_TRANSLATION);
    assert_eq!(m.writes(), MAX_WRITES_PER_TRANSLATION);
}

// -- MMIO writes: the invalidation queue ----------------------------------

/// A legacy-mode unit with queued invalidation enabled on a queue of
/// `2^qs` pages at `base`, every slot holding a valid descriptor made by
/// `pick` from its index; returns the slots.
fn full_queue(qs: u64, pick: fn(u64) -> [u64; 2]) -> (Harness, u64) {
    let mut h = Harness::new(&["mode=legacy"]);
    let slots = 256u64 << qs;
    let base = 4 << 20;
    for i in 0..slots {
        let d = pick(i);
        h.mem.write_u64_le(Gpa(base + 16 * i), d[0]).unwrap();
        h.mem.write_u64_le(Gpa(base + 16 * i + 8), d[1]).unwrap();
    }
    h.write32(off::IQT, 0);
    h.write64(off::IQA, base | qs);
    h.write32(off::GCMD, gcmd::QIE.mask());
    (h, slots)
}

/// Status dword of the waits of [`full_queue`].
const STATUS: u64 = 2 << 20;

/// Invalidations of every cache, with a wait (status write) in four.
fn mixed(i: u64) -> [u64; 2] {
    match i % 4 {
        0 => desc::iotlb_global(),
        1 => desc::cc_global(),
        2 => desc::iotlb_page(1, (i << 12) & 0xffff_f000, crate::regs::MAMV as u8, false),
        _ => desc::wait(STATUS, i as u32, i % 8 == 3, false),
    }
}

/// Descriptors that cost the unit no cache scan (interrupt entry cache,
/// device-TLB), with a wait (status write) in four: the largest queue's
/// worth stays quick in a debug build.
fn light(i: u64) -> [u64; 2] {
    match i % 4 {
        0 => desc::iec_global(),
        1 | 2 => desc::dev_tlb(0x10, (i << 12) & 0xffff_f000, false),
        _ => desc::wait(STATUS, i as u32, i % 8 == 3, false),
    }
}

/// The largest queue (2^7 pages, [`MAX_QUEUE_DESCRIPTORS`] slots) full of
/// valid descriptors, and a smaller one of every kind: one tail write
/// fetches each descriptor once, writes only the waits' status, and
/// makes no host call without passthrough devices.
#[test]
fn mmio_write_of_a_full_queue_reads_each_descriptor_once() {
    for (qs, pick) in [(7, light as fn(u64) -> [u64; 2]), (2, mixed)] {
        let (mut h, slots) = full_queue(qs, pick);
        assert!(slots <= MAX_QUEUE_DESCRIPTORS);
        let m = CountingMemory::new(h.mem.clone());
        // The tail one slot behind the head: every slot but one is work.
        h.vtd.mmio_write(&m, off::IQT, 4, (slots - 1) * 16);
        assert_eq!(h.vtd.descriptors_processed(), slots - 1, "qs {qs}");
        assert_eq!(m.reads(), slots - 1);
        assert!(m.reads() <= MAX_READS_PER_MMIO_WRITE);
        assert_eq!(m.writes(), (slots - 1) / 4);
    }
}

/// Wrap-around storm: the guest moves the tail around the ring again and
/// again, each time to just behind the head (the longest drain), or to a
/// value no descriptor sits at; every write is bounded by the ring.
#[test]
fn mmio_write_wrap_around_storm_each_write_bounded_by_the_ring() {
    let (mut h, slots) = full_queue(0, mixed);
    let m = CountingMemory::new(h.mem.clone());
    let size = slots * 16;
    for round in 0..16u64 {
        let head = h.read64(off::IQH) & (size - 1);
        let tail = match round % 4 {
            // Not on a descriptor, or outside the queue: IQE, no fetch.
            3 => head + 8,
            2 => size + 16,
            _ => (head + size - 16) % size,
        };
        m.reset();
        h.vtd.mmio_write(&m, off::IQT, 4, tail);
        assert!(m.reads() < slots, "round {round}: {} reads", m.reads());
        assert!(m.writes() <= slots / 4 + 1);
        // Software clears an error, which fetches again (a write too).
        let fsts = h.read32(off::FSTS);
        m.reset();
        h.vtd.mmio_write(&m, off::FSTS, 4, fsts);
        h.write32(off::IQT, h.read64(off::IQH) & (size - 1));
        assert!(m.reads() < slots);
    }
}

// -- MMIO writes: passthrough sync points ----------------------------------

/// Submits `descs` and a wait as Linux does, the tail write through
/// counting memory; returns (reads, writes, host calls, completed).
fn submit_counted(s: &mut Shadow, descs: &[[u64; 2]]) -> (u64, u64, u64, bool) {
    let mem = s.h.mem.clone();
    mem.write_u32_le(Gpa(s.q.status), 1).unwrap();
    for d in descs {
        s.q.push(&mem, *d);
    }
    s.q.push(&mem, desc::wait(s.q.status, QI_DONE, false, false));
    let m = CountingMemory::new(mem.clone());
    s.host.sim.reset_counters();
    s.h.vtd.mmio_write(&m, off::IQT, 4, s.q.tail());
    let done = mem.read_u32_le(Gpa(s.q.status)).unwrap() == QI_DONE;
    (m.reads(), m.writes(), host_calls(&s.host.sim), done)
}

/// A queue full of context-cache invalidations before one wait: the
/// device is reconciled once at the sync point, not once per descriptor.
#[test]
fn sync_point_after_a_queue_of_context_invalidations_reconciles_once() {
    let mut s = shadow();
    for i in 0..16 {
        s.map_page(0x10_0000 + (i << 12), 0x20_0000 + (i << 12));
    }
    let (one, _, one_calls, done) = submit_counted(&mut s, &[desc::cc_global()]);
    assert!(done);
    let many = vec![desc::cc_global(); 200];
    let (reads, writes, calls, done) = submit_counted(&mut s, &many);
    assert!(done);
    // 199 more descriptor fetches, and nothing else.
    assert_eq!(reads, one + 199, "one: {one}");
    assert_eq!(writes, 1);
    assert_eq!(calls, one_calls);
    assert!(calls <= max_host_calls_per_sync(1, 201));
}

/// Huge invalidation ranges over tables pointing everywhere: every entry
/// of the device's second-stage root points at the root itself, so every
/// level walks back to it and every IOVA maps (to the root page). A
/// global invalidation then asks for 2^36 leaf entries: the sync point
/// reads at most its budget, mirrors only what the tables say, and the
/// rest stays unmapped on the host.
#[test]
fn huge_range_over_self_referencing_tables_reads_at_most_the_budget() {
    let mut s = shadow();
    let root = s.sl.root;
    for i in 0..512 {
        s.h.mem.write_u64_le(Gpa(root + 8 * i), root | 3).unwrap();
    }
    let budget = 1 << 12;
    s.h.vtd.sync_read_budget = budget;
    let (reads, _, calls, done) = submit_counted(&mut s, &[desc::iotlb_global()]);
    assert!(done, "the wait completes: truncation is no host failure");
    assert!(reads <= 2 + budget, "{reads} reads");
    assert!(calls <= max_host_calls_per_sync(1, 2), "{calls} calls");
    let stats = backend(&s.h).stats();
    assert_eq!((stats.budget_exhausted, stats.truncated_ranges), (1, 1));
    // Whatever is mapped on the host is what the tables say: the root page.
    let maps = s.host.sim.mappings(s.ioas());
    assert!(!maps.is_empty());
    let root_va = s.host_va(root);
    for mp in &maps {
        assert_eq!(
            mp.backing,
            iommufd_sim::SimBacking::UserVa(root_va),
            "{mp:?}"
        );
        assert_eq!(mp.range.last.0 - mp.range.first.0, 0xfff);
    }
}

/// The same with the real budget and caps, for `VIOMMU_BOUNDS_HEAVY=1`
/// (about a minute in a debug build): the sync point reads at most
/// [`MAX_MAPPINGS_PER_SYNC`] mappings' worth, the shadow domain refuses
/// more than it can hold, and the wait is aborted with ITE.
#[test]
fn huge_range_over_self_referencing_tables_with_the_real_budget() {
    if std::env::var_os("VIOMMU_BOUNDS_HEAVY").is_none() {
        return;
    }
    let mut s = shadow();
    let root = s.sl.root;
    for i in 0..512 {
        s.h.mem.write_u64_le(Gpa(root + 8 * i), root | 3).unwrap();
    }
    let (reads, _, calls, done) = submit_counted(&mut s, &[desc::iotlb_global()]);
    assert!(reads <= MAX_READS_PER_MMIO_WRITE);
    // The leaves, and the entries above them (one per 512 below, and the
    // walk down again at each round).
    let tables = MAX_MAPPINGS_PER_SYNC as u64 / 256;
    assert!(
        reads <= 2 + MAX_MAPPINGS_PER_SYNC as u64 + tables,
        "{reads}"
    );
    assert!(calls <= max_host_calls_per_sync(1, 2));
    assert!(!done);
    assert!(crate::regs::fsts::ITE.is_set(s.h.read32(off::FSTS)));
}

// -- Log lines -----------------------------------------------------------------

/// A guest flooding what the unit logs (register-based invalidations with
/// queued invalidation on, invalid tails, unsupported accesses) gets at
/// most a burst of lines per call site per interval, not a line per write.
#[test]
fn guest_triggered_log_lines_are_rate_limited() {
    use nesting_core::ratelimit::{LOG_BURST, LOG_INTERVAL};
    let counter = nesting_core::testing::LogCounter::install();
    let (mut h, slots) = full_queue(0, light);
    let t0 = std::time::Instant::now();
    let before = counter.lines();
    for i in 0..5000u64 {
        h.write64(off::CCMD, 1 << 63 | 1 << 61);
        h.write32(off::IQT, (i % slots) * 16 + 8);
        h.write32(off::FSTS, crate::regs::fsts::IQE.mask());
        h.vtd.mmio_write(&h.mem.clone(), 0x3, 2, 0);
    }
    let lines = counter.lines() - before;
    // Call sites the flood reaches: CCMD, the queue error, the unsupported
    // write.
    let windows = t0.elapsed().as_secs() / LOG_INTERVAL.as_secs() + 1;
    assert!(lines >= 3, "{lines}");
    assert!(lines <= 3 * u64::from(LOG_BURST) * windows, "{lines} lines");
}
