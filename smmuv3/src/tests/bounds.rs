//! Bounded work per guest action (issue 16): the guest-memory reads and
//! writes and the host calls one DMA translation or one MMIO write can
//! cause stay within the named bounds of [`crate::limits`], for tables
//! that point at themselves or at upper levels, queues full of valid
//! commands, wrap-around storms and huge invalidation ranges.

use nesting_core::host::HostOp;
use nesting_core::iotlb::IotlbInvalidation;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::testing::CountingMemory;
use nesting_core::types::{Access, Gpa, Iova};
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use super::passthrough::{Pt, nest};
use super::{ASID, Harness};
use crate::limits::{
    MAX_COMMANDS_PER_WRITE, MAX_READS_PER_TRANSLATION, MAX_WRITES_PER_MMIO_WRITE,
    MAX_WRITES_PER_TRANSLATION, max_host_calls_per_mmio_write, max_reads_per_mmio_write,
};
use crate::mock::{Driver, PageTable, cdtable_ste, cmd, pte, s1_cd, s2_ste, with_s2};
use crate::regs::{off, queue_ptr};
use crate::strtab::SteMode;
use crate::walk::Granule;
use crate::wire::write_qwords;

fn host_calls(sim: &iommufd_sim::SimIommufd) -> u64 {
    HostOp::ALL.iter().map(|op| sim.calls(*op)).sum()
}

/// Pages every aliasing descriptor points into: 8 MiB, below the pool
/// the harness allocates from.
const TABLES: u64 = 8 << 20;
const PAGES: u64 = 8;

fn page(i: u64) -> u64 {
    TABLES + 4096 * (i % PAGES)
}

/// Low attribute bits a descriptor may carry: table or page (0b11), block
/// (0b01), invalid, with or without AF, read-only, unprivileged, DBM.
const LOW: [u64; 7] = [0x403, 0x043, 0x401, 0x4c3, 0x443, 0x0, 0x003];

/// Fills the pool with descriptors pointing into it: every table a walk
/// meets is one of eight pages, itself and upper levels included.
fn fill(mem: &GuestMemoryMmap, words: &[(u64, usize)]) {
    for p in 0..PAGES {
        for i in 0..512u64 {
            let (t, low) = words[((p * 512 + i) as usize) % words.len()];
            let d = page(t) | LOW[low % LOW.len()] | ((1 << 51) * (i & 1));
            mem.write_u64_le(Gpa(page(p) + 8 * i), d).unwrap();
        }
    }
}

/// A probed SMMU (stages 1 and 2, HTTU) with three streams whose tables
/// lie in the pool: 0x10 stage 1 only, 0x11 stage 2 only, 0x12 nested
/// (its stage 2 built properly, identity over the pool with 4 KiB pages
/// at four levels, its stage 1 aliasing).
fn everywhere(roots: [u64; 2]) -> Harness {
    let mut h = Harness::new(&["stages=nested", "httu=2"]);
    let mut d = h.probe();
    // Stream 0x10: stage 1 at pool page roots[0].
    let mut s1 = PageTable::stage1(&h.mem, &mut h.alloc, Granule::G4K, 48, 48);
    s1.cfg.ttb = page(roots[0]);
    let (cdt, _) = Driver::cd_table(&h.mem, &mut h.alloc, 0, true);
    write_qwords(&h.mem, cdt, s1_cd(ASID, &s1, 5, true).0).unwrap();
    d.install_ste(
        &mut h.smmu,
        &h.mem,
        &mut h.alloc,
        0x10,
        cdtable_ste(cdt, 0, false, false),
    );
    // Stream 0x11: stage 2 only, at pool page roots[1].
    let mut s2 = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 48, 2, 48);
    s2.cfg.ttb = page(roots[1]);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 0x11, s2_ste(3, &s2, 5));
    // Stream 0x12: a real 4-level stage 2 mapping the pool, the CD and
    // its table 1:1, and stage 1 at pool page roots[0].
    let s2n = PageTable::stage2(&h.mem, &mut h.alloc, Granule::G4K, 48, 2, 48);
    let (cdt2, _) = Driver::cd_table(&h.mem, &mut h.alloc, 0, true);
    for pa in (0..PAGES).map(page).chain([cdt2 & !0xfff]) {
        s2n.map(&h.mem, &mut h.alloc, pa, pa, 3, pte::s2(true, true));
    }
    write_qwords(&h.mem, cdt2, s1_cd(ASID, &s1, 5, true).0).unwrap();
    let ste = with_s2(cdtable_ste(cdt2, 0, false, false), 4, &s2n, 5).with_config(SteMode::Nested);
    d.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, 0x12, ste);
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Tables pointing everywhere (cycles, upper levels, blocks, missing
    /// AF for HTTU to set): one translation of each kind of stream stays
    /// within the bounds, the caches dropped so that it walks.
    #[test]
    fn translation_over_tables_pointing_everywhere_is_bounded(
        roots in [0..PAGES, 0..PAGES],
        words in prop::collection::vec((0..PAGES, 0usize..LOW.len()), 1..64),
        reqs in prop::collection::vec((0x10u32..0x13, any::<u64>(), 0u8..16), 1..16),
    ) {
        let mut h = everywhere(roots);
        fill(&h.mem, &words);
        let m = CountingMemory::new(h.mem.clone());
        for (sid, iova, acc) in reqs {
            h.smmu.iotlb().invalidate(IotlbInvalidation::All);
            h.smmu.cfg_cache.clear();
            m.reset();
            let access = Access::from_bits_truncate(acc);
            let _ = h.smmu.translate(&m, sid, None, Iova(iova & ((1 << 48) - 1)), access);
            prop_assert!(m.reads() <= MAX_READS_PER_TRANSLATION, "{} reads", m.reads());
            prop_assert!(m.writes() <= MAX_WRITES_PER_TRANSLATION, "{} writes", m.writes());
        }
    }
}

/// A nested walk reads what the bound counts without retries: the STE,
/// the CD behind a 4-level stage-2 walk, four stage-1 descriptors each
/// behind one, the access-flag update of the stage-1 leaf behind one, and
/// the output's stage-2 walk.
#[test]
fn translation_nested_walk_reads_every_level_of_both_stages() {
    let mut h = everywhere([0, 1]);
    // Every stage-1 descriptor a table or page at pool page 2, AF clear,
    // EL0 read/write.
    fill(&h.mem, &[(2, 1)]);
    // Pool page 2 as the final IPA is mapped by the stage 2 too.
    let m = CountingMemory::new(h.mem.clone());
    let r = h.smmu.translate(&m, 0x12, None, Iova(0x1234), Access::READ);
    assert!(matches!(r, crate::TranslateResult::Mapped(_)), "{r:?}");
    // Two-level stream table: level-1 descriptor and STE; linear CD
    // table: the CD alone, behind stage 2.
    let no_retry = 2 + (1 + 4) + 4 * (1 + 4) + (1 + 4) + 4;
    assert_eq!(m.reads(), no_retry);
    assert!(m.reads() <= MAX_READS_PER_TRANSLATION);
    assert_eq!(m.writes(), 1, "the stage-1 leaf's AF");
}

// -- MMIO writes: the command queue -----------------------------------------

/// A probed SMMU whose command queue has 2^`log2` entries, all of them
/// valid commands made by `pick`; returns the driver.
fn full_cmdq(h: &mut Harness, log2: u8, pick: fn(u32) -> [u64; 2]) -> Driver {
    let sizes = crate::mock::QueueSizes {
        cmdq: log2,
        ..Default::default()
    };
    let d = Driver::probe_with(&mut h.smmu, &h.mem, &mut h.alloc, sizes).unwrap();
    for i in 0..1u32 << log2 {
        write_qwords(&h.mem, d.cmdq.base + 16 * u64::from(i), pick(i)).unwrap();
    }
    d
}

/// Commands the model executes without a cache scan (prefetches, PRI
/// responses), and a CMD_SYNC in four (MSI completion into guest
/// memory): the largest queue's worth stays quick in a debug build.
fn light(i: u32) -> [u64; 2] {
    match i % 4 {
        0 | 1 => [0x01 | (0x10 << 32), 0],
        2 => cmd::pri_resp(0x10, None, 1, 0),
        _ => cmd::sync(1, 0x20_0000, i),
    }
}

/// Invalidations of everything, with a CMD_SYNC in four.
fn heavy(i: u32) -> [u64; 2] {
    match i % 4 {
        0 => cmd::tlbi_nsnh_all(),
        1 => cmd::cfgi_all(),
        2 => cmd::tlbi_nh_va_range(1, 1, 0, 1, 31, 31),
        _ => cmd::sync(1, 0x20_0000, i),
    }
}

/// The largest command queue (2^19 entries) full of valid commands, and a
/// smaller one of invalidations: one PROD write consumes each command
/// once, reads them in batches, writes one MSI per CMD_SYNC. (The largest
/// takes a few seconds in a debug build: 2^16 entries unless
/// `VIOMMU_BOUNDS_HEAVY` is set.)
#[test]
fn mmio_write_of_a_full_command_queue_is_bounded() {
    let largest = if std::env::var_os("VIOMMU_BOUNDS_HEAVY").is_some() {
        19
    } else {
        16
    };
    for (log2, pick) in [(largest, light as fn(u32) -> [u64; 2]), (10, heavy)] {
        let mut h = Harness::new(&["ats=1", "pri=1"]);
        let _d = full_cmdq(&mut h, log2, pick);
        let entries = 1u64 << log2;
        let m = CountingMemory::new(h.mem.clone());
        let before = h.smmu.commands_processed();
        // PROD one behind CONS, the other wrap: the queue full.
        let cons = h.read32(off::CMDQ_CONS) & ((2 << log2) - 1);
        let prod = (cons + entries - 1) & ((2 << log2) - 1);
        h.smmu.mmio_write(&m, off::CMDQ_PROD, 4, prod);
        assert_eq!(
            h.smmu.commands_processed() - before,
            entries - 1,
            "log2 {log2}"
        );
        assert_eq!(queue_ptr::ERR.get(h.read32(off::CMDQ_CONS)), 0);
        assert!(entries <= MAX_COMMANDS_PER_WRITE);
        assert!(m.reads() <= max_reads_per_mmio_write(0), "{}", m.reads());
        assert!(
            m.reads() <= entries / 64 + 2,
            "batched fetches: {}",
            m.reads()
        );
        assert!(m.writes() <= MAX_WRITES_PER_MMIO_WRITE);
    }
}

/// Wrap-around storm: PROD moved around the ring again and again, its
/// wrap bit flipped, behind CONS (a full queue), on CONS (empty), or at
/// indexes past the queue: each write is bounded by one queue's worth.
#[test]
fn mmio_write_wrap_around_storm_each_write_bounded_by_the_queue() {
    let mut h = Harness::new(&["ats=1", "pri=1"]);
    let log2 = 8;
    let _d = full_cmdq(&mut h, log2, heavy);
    let entries = 1u32 << log2;
    let m = CountingMemory::new(h.mem.clone());
    for round in 0..24u32 {
        let cons = h.read32(off::CMDQ_CONS) as u32 & ((2 << log2) - 1);
        let prod = match round % 3 {
            // Full: one behind CONS, the other wrap.
            0 => (cons + entries - 1) & ((2 << log2) - 1),
            // Bits above the wrap bit are ignored.
            1 => (cons + entries - 1) | 0xff00_0000,
            _ => cons,
        };
        let before = h.smmu.commands_processed();
        m.reset();
        h.smmu.mmio_write(&m, off::CMDQ_PROD, 4, u64::from(prod));
        assert!(h.smmu.commands_processed() - before < u64::from(entries));
        assert!(m.reads() <= u64::from(entries), "{}", m.reads());
        assert!(queue_ptr::ERR.get(h.read32(off::CMDQ_CONS)) == 0);
    }
}

// -- MMIO writes: passthrough streams ----------------------------------------

/// A queue full of CFGI_STE_RANGE over every StreamID, TLB invalidations
/// and CMD_SYNCs, with two passthrough streams: the reads and host calls
/// of the PROD write stay within the bounds for two devices and one
/// vIOMMU, and the invalidations before each CMD_SYNC go out in one call.
#[test]
fn mmio_write_of_a_full_queue_with_passthrough_streams_is_bounded() {
    let mut p = Pt::new(&[], nest());
    p.add(0x10).unwrap();
    p.add(0x11).unwrap();
    let log2 = 8;
    let sizes = crate::mock::QueueSizes {
        cmdq: log2,
        ..Default::default()
    };
    let mut d = Driver::probe_with(&mut p.h.smmu, &p.h.mem, &mut p.h.alloc, sizes).unwrap();
    // Both streams stage 1 on one CD table, so every re-read installs.
    let (cdt, _) = Driver::cd_table(&p.h.mem, &mut p.h.alloc, 0, true);
    for sid in [0x10, 0x11] {
        d.install_ste(
            &mut p.h.smmu,
            &p.h.mem,
            &mut p.h.alloc,
            sid,
            cdtable_ste(cdt, 0, false, false),
        );
    }
    let entries = 1u32 << log2;
    for i in 0..entries {
        let c = match i % 8 {
            0 => cmd::cfgi_all(),
            7 => cmd::sync(0, 0, 0),
            _ => cmd::tlbi_nh_va(0, 1, u64::from(i) << 12),
        };
        write_qwords(&p.h.mem, d.cmdq.base + 16 * u64::from(i), c).unwrap();
    }
    let m = CountingMemory::new(p.h.mem.clone());
    p.sim.reset_counters();
    let cons = p.h.read32(off::CMDQ_CONS) as u32;
    let prod = (cons + entries - 1) & ((2 << log2) - 1);
    p.h.smmu.mmio_write(&m, off::CMDQ_PROD, 4, u64::from(prod));
    assert_eq!(queue_ptr::ERR.get(p.h.read32(off::CMDQ_CONS)), 0);
    assert!(m.reads() <= max_reads_per_mmio_write(2), "{}", m.reads());
    let calls = host_calls(&p.sim);
    assert!(calls <= max_host_calls_per_mmio_write(2, 1), "{calls}");
    // One IOMMU_HWPT_INVALIDATE per CMD_SYNC, however many TLBIs.
    let syncs = u64::from(entries - 1) / 8;
    assert!(p.sim.calls(HostOp::HwptInvalidate) <= syncs + 1);
}

// -- Log lines -------------------------------------------------------------------

/// A guest flooding what the SMMU logs (illegal commands, streams whose
/// STE is invalid, the events and global errors they raise) gets at most
/// a burst of lines per call site per interval, not a line per action.
#[test]
fn guest_triggered_log_lines_are_rate_limited() {
    use nesting_core::ratelimit::{LOG_BURST, LOG_INTERVAL};
    let counter = nesting_core::testing::LogCounter::install();
    let mut h = Harness::new(&[]);
    let d = h.probe();
    let t0 = std::time::Instant::now();
    let before = counter.lines();
    for i in 0..2000u64 {
        // An opcode no SMMU has: CERROR_ILL, GERROR.CMDQ_ERR.
        let cons = h.read32(off::CMDQ_CONS) & 0x1ff;
        write_qwords(&h.mem, d.cmdq.base + 16 * (cons & 0xff), [0x7f, 0]).unwrap();
        h.write32(off::CMDQ_PROD, (cons + 1) & 0x1ff);
        let gerror = h.read32(off::GERROR);
        h.write32(off::GERRORN, gerror);
        // A stream without a valid STE: C_BAD_STE.
        let _ = h
            .smmu
            .translate(&h.mem, 0x40 + (i as u32 % 16), None, Iova(0), Access::READ);
    }
    let lines = counter.lines() - before;
    // Call sites: CERROR_ILL, the global error, C_BAD_STE, the event, the
    // interrupts (event queue, global error).
    let windows = t0.elapsed().as_secs() / LOG_INTERVAL.as_secs() + 1;
    assert!(lines >= 3, "{lines}");
    assert!(lines <= 6 * u64::from(LOG_BURST) * windows, "{lines} lines");
}
