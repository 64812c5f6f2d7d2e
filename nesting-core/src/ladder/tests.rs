//! The ladder's range arithmetic (private). The decisions themselves are
//! tested against the simulated host profiles in
//! `nesting-core/tests/sim/ladder.rs`.

use super::*;

fn range(a: u64, b: u64) -> IovaRange {
    IovaRange {
        first: Iova(a),
        last: Iova(b),
    }
}

#[test]
fn subtract_handles_top_of_space_and_adjacent_holes() {
    let full = [range(0, u64::MAX)];
    assert_eq!(subtract(&full, &[range(0, 9), range(10, u64::MAX)]), vec![]);
    assert_eq!(
        subtract(&full, &[range(0x10, 0x1f), range(u64::MAX - 1, u64::MAX)]),
        vec![range(0, 0xf), range(0x20, u64::MAX - 2)]
    );
    assert_eq!(
        intersect(&[range(0, 10)], &[range(5, 20), range(30, 40)]),
        vec![range(5, 10)]
    );
    assert_eq!(
        normalize(&[range(5, 9), range(0, 4), range(3, 6)]),
        vec![range(0, 9)]
    );
}

/// A model the ladder knows nothing about but what it states.
#[derive(Debug)]
struct Fake {
    stage1: Stage1,
    passes: bool,
    notice: MapNotice,
    iova: IovaSpace,
}

impl GuestIommu for Fake {
    fn model_name(&self) -> &'static str {
        "fake"
    }
    fn stage1(&self) -> Stage1 {
        self.stage1
    }
    fn nest_checks(&self, _host: &HostInfo) -> Vec<Check> {
        vec![Check::new(
            "fake-cap",
            self.passes,
            "fake capability".into(),
        )]
    }
    fn shadow_needs(&self) -> crate::guest::ShadowNeeds {
        crate::guest::ShadowNeeds {
            map_notice: self.notice.clone(),
            page_size: 4096,
            iova: self.iova.clone(),
        }
    }
}

fn vtd_host(ranges: Vec<IovaRange>) -> HostView {
    HostView {
        info: HostInfo {
            hw: HwInfo::IntelVtd {
                cap: Default::default(),
                ecap: Default::default(),
                errata: VtdErrata::empty(),
            },
            ..HostInfo::default()
        },
        iova_ranges: ranges,
        page_size: 4096,
        unit: Some(0),
    }
}

fn fake(passes: bool, notice: MapNotice, iova: IovaSpace) -> Fake {
    Fake {
        stage1: Stage1::WalkedBy(HwType::IntelVtd),
        passes,
        notice,
        iova,
    }
}

#[test]
fn decide_model_checks_pass_on_its_host_type_nests() {
    let g = fake(
        true,
        MapNotice::Requests,
        IovaSpace::Fixed(vec![range(0, 0xffff)]),
    );
    let d = decide(&g, &vtd_host(vec![range(0, u64::MAX)]));
    assert_eq!(d.kind, DecisionKind::Nested);
    let names: Vec<&str> = d.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, ["host-type", "fake-cap"]);
}

#[test]
fn decide_never_told_of_maps_refuses_with_that_check_alone() {
    let never = Check::fail("map-invalidation", "never told".into());
    let g = fake(
        false,
        MapNotice::Never(never),
        IovaSpace::Fixed(vec![range(0, 0xffff)]),
    );
    let d = decide(&g, &vtd_host(vec![range(0, u64::MAX)]));
    assert_eq!(d.kind, DecisionKind::Refuse);
    let names: Vec<&str> = d.checks.iter().map(|c| c.name).collect();
    assert_eq!(names, ["host-type", "fake-cap", "map-invalidation"]);
}

#[test]
fn decide_fixed_space_with_host_hole_refuses_coverage() {
    let g = fake(
        false,
        MapNotice::Requests,
        IovaSpace::Fixed(vec![range(0, 0xffff)]),
    );
    let d = decide(
        &g,
        &vtd_host(vec![range(0, 0xfff), range(0x2000, u64::MAX)]),
    );
    assert_eq!(d.kind, DecisionKind::Refuse);
    assert!(d.has_failed("iova-coverage"), "{d}");
    assert!(d.reason.contains("0x1000"), "{}", d.reason);
}

#[test]
fn decide_announced_space_clips_and_counts_holes_against_room() {
    let space = |max_holes| IovaSpace::Announced {
        range: range(0, u64::MAX),
        max_holes,
        room: format!("room for {max_holes}"),
    };
    let host = vtd_host(vec![range(0x1000, 0x1fff), range(0x3000, 0xffff)]);
    let d = decide(&fake(false, MapNotice::Requests, space(1)), &host);
    assert_eq!(d.kind, DecisionKind::Shadow, "{d}");
    assert_eq!(d.adjust.input_range, Some(range(0x1000, 0xffff)));
    assert_eq!(d.adjust.reserved, vec![range(0x2000, 0x2fff)]);
    let d = decide(&fake(false, MapNotice::Requests, space(0)), &host);
    assert_eq!(d.kind, DecisionKind::Refuse);
    assert!(d.has_failed("reserved-regions"), "{d}");
}

#[test]
fn decide_no_format_fails_stage1_and_skips_host_type() {
    let mut g = fake(
        true,
        MapNotice::Requests,
        IovaSpace::Fixed(vec![range(0, 0xffff)]),
    );
    g.stage1 = Stage1::NoFormat("no tables");
    let d = decide(&g, &vtd_host(vec![range(0, u64::MAX)]));
    assert_eq!(d.kind, DecisionKind::Shadow);
    assert!(d.has_failed("stage1-format"));
    assert!(!d.checks.iter().any(|c| c.name == "host-type"));
}
