//! proptest: random mappings -> tables built by the mock -> every walk
//! result equals the mapping, for each format and level count.

use std::collections::BTreeMap;

use nesting_core::types::Access;
use proptest::prelude::*;

use super::Harness;
use crate::mock::{
    FsTables, LegacyTables, PasidSetup, ScalableTables, SlTables, flpte, probe_like_linux,
};

/// One mapping of the reference model: page index in a slot grid, page
/// size shift, output page number, writable.
#[derive(Clone, Debug)]
struct Map {
    slot: u64,
    shift: u32,
    out: u64,
    write: bool,
}

/// Mappings on a grid of 1 GiB slots so that pages of different sizes
/// never overlap; the slot number spreads them over the top-level index.
fn mappings(bits: u32) -> impl Strategy<Value = Vec<Map>> {
    let slots = 1u64 << (bits - 30).min(20);
    prop::collection::vec(
        (
            0..slots,
            prop::sample::select(vec![12u32, 21, 30]),
            0u64..256,
            any::<bool>(),
        ),
        1..12,
    )
    .prop_map(|v| {
        let mut seen = BTreeMap::new();
        // Outputs in the interrupt range are blocked (VT-d "Handling
        // Requests to Interrupt Address Range"); the reference model maps
        // only memory.
        let interrupt = |shift: u32, out: u64| {
            let first = out << shift;
            first <= 0xfeef_ffff && first + (1u64 << shift) > 0xfee0_0000
        };
        for (slot, shift, out, write) in v.into_iter().filter(|m| !interrupt(m.1, m.2)) {
            seen.entry(slot).or_insert(Map {
                slot,
                shift,
                out,
                write,
            });
        }
        seen.into_values().collect()
    })
}

/// The mappings (in order) whose output pages overlap no earlier one's.
fn disjoint_outputs(maps: Vec<Map>) -> Vec<Map> {
    let range = |m: &Map| (m.out << m.shift, (m.out + 1) << m.shift);
    let mut kept: Vec<Map> = Vec::new();
    for m in maps {
        let (a, b) = range(&m);
        if kept.iter().all(|k| {
            let (c, d) = range(k);
            b <= c || d <= a
        }) {
            kept.push(m);
        }
    }
    kept
}

fn iova_of(m: &Map, offset: u64) -> u64 {
    (m.slot << 30) + (offset & ((1 << m.shift) - 1))
}

fn gpa_of(m: &Map, offset: u64) -> u64 {
    (m.out << m.shift) + (offset & ((1 << m.shift) - 1))
}

fn check_all(
    h: &mut Harness,
    maps: &[Map],
    pasid: Option<u32>,
    sid: u16,
    offset: u64,
    write_fault: u8,
) {
    for m in maps {
        let iova = iova_of(m, offset);
        assert_eq!(
            h.gpa(sid, pasid, iova, Access::READ),
            Ok(gpa_of(m, offset)),
            "{m:?}"
        );
        let w = h.gpa(sid, pasid, iova, Access::WRITE);
        if m.write {
            assert_eq!(w, Ok(gpa_of(m, offset)));
        } else {
            assert_eq!(w, Err(write_fault));
        }
        // The next slot is unmapped unless another mapping uses it.
        let next = (m.slot + 1) << 30;
        if !maps.iter().any(|o| o.slot == m.slot + 1)
            && h.gpa(sid, pasid, next, Access::READ).is_ok()
        {
            panic!("unmapped {next:#x} translated");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn legacy_second_stage_walk_equals_mapping(
        (levels, maps) in (3u32..=5).prop_flat_map(|l| (Just(l), mappings(9 * l + 12))),
        offset in 0u64..(1 << 30),
    ) {
        let aw = match levels { 3 => "aw=39", 4 => "aw=48", _ => "aw=57" };
        let mut h = Harness::new(&["mode=legacy", aw]);
        let t = LegacyTables::new(&h.mem, &mut h.alloc);
        let sl = SlTables::new(&h.mem, &mut h.alloc, levels);
        for m in &maps {
            sl.map(&h.mem, &mut h.alloc, iova_of(m, 0), gpa_of(m, 0), m.shift, true, m.write);
        }
        t.set_context(&h.mem, &mut h.alloc, 0x10, 1, 0, u64::from(levels - 2), sl.root, false);
        probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
        check_all(&mut h, &maps, None, 0x10, offset, 0x5);
    }

    #[test]
    fn first_stage_walk_equals_mapping(
        // The lower (canonical, non-negative) half of the address space.
        (levels, maps) in (4u32..=5).prop_flat_map(|l| (Just(l), mappings(9 * l + 11))),
        offset in 0u64..(1 << 30),
        pasid in 1u32..4096,
    ) {
        let aw = if levels == 5 { "aw=57" } else { "aw=48" };
        let mut h = Harness::new(&[aw]);
        let t = ScalableTables::new(&h.mem, &mut h.alloc);
        let dir = t.set_context(&h.mem, &mut h.alloc, 0x10, 0, 0);
        let fs = FsTables::new(&h.mem, &mut h.alloc, levels);
        for m in &maps {
            let flags = flpte::US | if m.write { flpte::RW } else { 0 };
            fs.map(&h.mem, &mut h.alloc, iova_of(m, 0), gpa_of(m, 0), m.shift, flags);
        }
        let e = PasidSetup::first_stage(1, fs.root, levels, false, false);
        t.set_pasid(&h.mem, &mut h.alloc, dir, pasid, &e);
        probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
        check_all(&mut h, &maps, Some(pasid), 0x10, offset, 0x85);
    }
}

/// The L1 GPA a nested test's second stage puts L2 GPA `x` at.
const NESTED_OFFSET: u64 = 1 << 40;
/// Where a nested test's first stage outputs start, clear of the table
/// pool the second stage identity-maps.
const L2_BASE: u64 = 4 << 30;

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn scalable_second_stage_walk_equals_mapping(
        (levels, maps) in (3u32..=5).prop_flat_map(|l| (Just(l), mappings(9 * l + 12))),
        offset in 0u64..(1 << 30),
    ) {
        let aw = match levels { 3 => "aw=39", 4 => "aw=48", _ => "aw=57" };
        let mut h = Harness::new(&[aw, "flts=0", "slts=1"]);
        let t = ScalableTables::new(&h.mem, &mut h.alloc);
        let dir = t.set_context(&h.mem, &mut h.alloc, 0x10, 0, 0);
        let sl = SlTables::new(&h.mem, &mut h.alloc, levels);
        for m in &maps {
            sl.map(&h.mem, &mut h.alloc, iova_of(m, 0), gpa_of(m, 0), m.shift, true, m.write);
        }
        let e = PasidSetup::second_stage(1, sl.root, u64::from(levels - 2));
        t.set_pasid(&h.mem, &mut h.alloc, dir, 0, &e);
        probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
        check_all(&mut h, &maps, None, 0x10, offset, 0x85);
    }

    #[test]
    fn nested_walk_equals_composition_of_stages(
        maps in mappings(47),
        offset in 0u64..(1 << 30),
    ) {
        // The second stage is keyed by first-stage output: two mappings
        // whose outputs overlap (a 2 MiB page and a 4 KiB page inside it)
        // cannot both be second-stage leaves.
        let maps = disjoint_outputs(maps);
        let mut h = Harness::new(&["flts=1", "slts=1", "nest=1"]);
        let t = ScalableTables::new(&h.mem, &mut h.alloc);
        let dir = t.set_context(&h.mem, &mut h.alloc, 0x10, 0, 0);
        let fs = FsTables::new(&h.mem, &mut h.alloc, 4);
        let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
        for m in &maps {
            let flags = flpte::US | if m.write { flpte::RW } else { 0 };
            fs.map(&h.mem, &mut h.alloc, iova_of(m, 0), L2_BASE + gpa_of(m, 0), m.shift, flags);
            // The second stage moves each first-stage output page up by
            // NESTED_OFFSET, with the same size; always writable.
            sl.map(&h.mem, &mut h.alloc, L2_BASE + gpa_of(m, 0), gpa_of(m, 0) + NESTED_OFFSET, m.shift, true, true);
        }
        // First-stage table pages are addressed through the second stage:
        // identity-map the table pool (the first 2 MiB of it is plenty).
        for page in (super::POOL..super::POOL + (2 << 20)).step_by(1 << 21) {
            sl.map(&h.mem, &mut h.alloc, page, page, 21, true, true);
        }
        let e = PasidSetup::nested(1, fs.root, 4, sl.root, 2);
        t.set_pasid(&h.mem, &mut h.alloc, dir, 0, &e);
        probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
        for m in &maps {
            let iova = iova_of(m, offset);
            prop_assert_eq!(h.gpa(0x10, None, iova, Access::READ), Ok(gpa_of(m, offset) + NESTED_OFFSET));
            let w = h.gpa(0x10, None, iova, Access::WRITE);
            if m.write {
                prop_assert_eq!(w, Ok(gpa_of(m, offset) + NESTED_OFFSET));
            } else {
                prop_assert_eq!(w, Err(0x85));
            }
        }
    }
}

fn sorted_reference(maps: &[Map]) -> Vec<crate::shadow::Mapping> {
    let mut v: Vec<_> = maps
        .iter()
        .map(|m| crate::shadow::Mapping {
            iova: iova_of(m, 0),
            gpa: gpa_of(m, 0),
            shift: m.shift,
            perms: if m.write {
                Access::READ | Access::WRITE
            } else {
                Access::READ
            },
        })
        .collect();
    v.sort_by_key(|m| m.iova);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn table_view_enumerates_exactly_the_mappings(
        (levels, maps) in (3u32..=5).prop_flat_map(|l| (Just(l), mappings(9 * l + 12))),
        budget in 1usize..64,
    ) {
        use crate::shadow::TableView;
        let aw = match levels { 3 => "aw=39", 4 => "aw=48", _ => "aw=57" };
        let mut h = Harness::new(&["mode=legacy", aw]);
        let t = LegacyTables::new(&h.mem, &mut h.alloc);
        let sl = SlTables::new(&h.mem, &mut h.alloc, levels);
        for m in &maps {
            sl.map(&h.mem, &mut h.alloc, iova_of(m, 0), gpa_of(m, 0), m.shift, true, m.write);
        }
        t.set_context(&h.mem, &mut h.alloc, 0x10, 1, 0, u64::from(levels - 2), sl.root, false);
        probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
        // Whole space in one go.
        let all = h.vtd.table_view(&h.mem, nesting_core::types::Bdf(0x10), None, 0, u64::MAX, usize::MAX);
        let TableView::Mappings { list, complete: true, .. } = all else {
            panic!("{all:?}");
        };
        prop_assert_eq!(&list, &sorted_reference(&maps));
        // The same in budget-sized pieces, resuming where each stopped.
        let mut got = Vec::new();
        let mut first = 0;
        for _ in 0..100_000 {
            match h.vtd.table_view(&h.mem, nesting_core::types::Bdf(0x10), None, first, u64::MAX, budget) {
                TableView::Mappings { list, complete, resume } => {
                    for m in list {
                        if got.last().is_none_or(|l: &crate::shadow::Mapping| l.iova < m.iova) {
                            got.push(m);
                        }
                    }
                    if complete {
                        break;
                    }
                    first = resume;
                }
                other => panic!("{other:?}"),
            }
        }
        prop_assert_eq!(got, sorted_reference(&maps));
    }

    #[test]
    fn first_stage_table_view_enumerates_user_mappings(
        maps in mappings(47),
    ) {
        use crate::shadow::TableView;
        let mut h = Harness::new(&[]);
        let t = ScalableTables::new(&h.mem, &mut h.alloc);
        let dir = t.set_context(&h.mem, &mut h.alloc, 0x10, 0, 0);
        let fs = FsTables::new(&h.mem, &mut h.alloc, 4);
        for m in &maps {
            let flags = flpte::US | if m.write { flpte::RW } else { 0 };
            fs.map(&h.mem, &mut h.alloc, iova_of(m, 0), gpa_of(m, 0), m.shift, flags);
        }
        // A supervisor-only page is invisible to user-mode DMA.
        fs.map(&h.mem, &mut h.alloc, 0x7fff_0000_0000, 0x1000, 12, flpte::RW);
        t.set_pasid(&h.mem, &mut h.alloc, dir, 0, &PasidSetup::first_stage(1, fs.root, 4, false, false));
        probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
        let v = h.vtd.table_view(&h.mem, nesting_core::types::Bdf(0x10), None, 0, u64::MAX, usize::MAX);
        let TableView::Mappings { list, complete: true, .. } = v else {
            panic!("{v:?}");
        };
        prop_assert_eq!(list, sorted_reference(&maps));
    }
}

#[test]
fn table_view_reports_identity_blocked_and_nested() {
    use crate::shadow::TableView;
    use nesting_core::types::Bdf;
    let mut h = Harness::new(&["flts=1", "slts=1", "nest=1"]);
    assert_eq!(
        h.vtd.table_view(&h.mem, Bdf(0x10), None, 0, 0xfff, 16),
        TableView::Identity
    );
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = t.set_context(&h.mem, &mut h.alloc, 0x10, 0, 0);
    t.set_pasid(&h.mem, &mut h.alloc, dir, 1, &PasidSetup::pass_through(1));
    t.set_pasid(
        &h.mem,
        &mut h.alloc,
        dir,
        2,
        &PasidSetup::nested(1, 0x1000, 4, 0x2000, 2),
    );
    probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    assert_eq!(
        h.vtd.table_view(&h.mem, Bdf(0x10), None, 0, 0xfff, 16),
        TableView::Blocked(crate::fault::FaultReason::PasidEntryNotPresent)
    );
    assert_eq!(
        h.vtd.table_view(&h.mem, Bdf(0x10), Some(1), 0, 0xfff, 16),
        TableView::Identity
    );
    assert_eq!(
        h.vtd.table_view(&h.mem, Bdf(0x10), Some(2), 0, 0xfff, 16),
        TableView::Nested
    );
}
