//! The ladder's decisions for every model against every simulated host
//! profile and the host shortfalls each model's checks catch: nesting-core
//! decides from what each model crate says it needs, so the models and
//! the ladder are tested together here.

use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::info::{HostCaps, HostInfo, HwInfo, VtdErrata, cap, ecap, idr};
use nesting_core::ladder::{Adjustments, Decision, DecisionKind, HostView};
use nesting_core::types::{Iova, IovaRange};
use viommu::models::GuestModel;

use DecisionKind::{Nested, Refuse, Shadow};

fn guest(model: &str, opts: &str) -> GuestModel {
    let toks: Vec<&str> = opts.split_whitespace().collect();
    GuestModel::from_options(model, &toks).unwrap()
}

fn decide(g: &GuestModel, h: &HostView) -> Decision {
    nesting_core::ladder::decide(g.guest(), h)
}

fn decide_domain(g: &GuestModel, h: &[HostView]) -> Decision {
    nesting_core::ladder::decide_domain(g.guest(), h)
}

fn decide_hotplug(g: &GuestModel, e: &[HostView], k: DecisionKind, h: &HostView) -> Decision {
    nesting_core::ladder::decide_hotplug(g.guest(), e, k, h)
}

fn host(text: &str) -> HostView {
    SimHostSpec::parse(text).unwrap().host_view()
}

fn range(a: u64, b: u64) -> IovaRange {
    IovaRange {
        first: Iova(a),
        last: Iova(b),
    }
}

/// Asserts the kind and that every `failing` check failed.
fn expect(d: &Decision, kind: DecisionKind, failing: &[&str], ctx: &str) {
    assert_eq!(d.kind, kind, "{ctx}\n{d}\nreason: {}", d.reason);
    for name in failing {
        assert!(d.has_failed(name), "{ctx}: expected {name} to fail\n{d}");
    }
    if kind == Nested {
        assert_eq!(d.failed().count(), 0, "{ctx}\n{d}");
    }
    assert!(!d.reason.contains('\n'), "{ctx}: reason is one line");
}

/// One guest configuration against every host profile, in
/// `HostProfile::ALL` order: vtd-nest, vtd-nonest, smmuv3-nest,
/// smmuv3-s2only, none.
struct Row {
    model: &'static str,
    opts: &'static str,
    host_opts: &'static str,
    expect: [(DecisionKind, &'static [&'static str]); 5],
}

const ROWS: &[Row] = &[
    Row {
        model: "vtd",
        opts: "",
        host_opts: "",
        expect: [
            (Nested, &[]),
            (Shadow, &["host-nest"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Shadow, &["host-type"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "mode=legacy",
        host_opts: "",
        expect: [
            (Shadow, &["guest-scalable", "guest-first-stage"]),
            (Shadow, &["guest-scalable", "host-nest"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Shadow, &["host-type"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "cm=0",
        host_opts: "",
        expect: [
            (Nested, &[]),
            (Refuse, &["host-nest", "caching-mode"]),
            (Refuse, &["host-type", "caching-mode", "iova-coverage"]),
            (Refuse, &["host-type", "caching-mode"]),
            (Refuse, &["host-type", "caching-mode"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "aw=57",
        host_opts: "",
        expect: [
            (Refuse, &["fs-5level", "s2-input-width", "iova-coverage"]),
            (Refuse, &["host-nest", "fs-5level", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "aw=39",
        host_opts: "",
        expect: [
            (Nested, &[]),
            (Shadow, &["host-nest"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Shadow, &["host-type"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "slts=1 cm=0",
        host_opts: "",
        expect: [
            (Refuse, &["slts-with-flts", "caching-mode"]),
            (Refuse, &["host-nest", "slts-with-flts", "caching-mode"]),
            (Refuse, &["host-type", "caching-mode"]),
            (Refuse, &["host-type", "caching-mode"]),
            (Refuse, &["host-type", "caching-mode"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "",
        host_opts: ",aperture=0-0xffff_ffff",
        expect: [
            (Nested, &[]),
            (Refuse, &["host-nest", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
            (Refuse, &["host-type", "iova-coverage"]),
        ],
    },
    Row {
        model: "vtd",
        opts: "mode=legacy",
        host_opts: ",pgsize=0x10000",
        expect: [
            (Refuse, &["guest-scalable", "page-size"]),
            (Refuse, &["host-nest", "page-size"]),
            (Refuse, &["host-type", "page-size"]),
            (Refuse, &["host-type", "page-size"]),
            (Refuse, &["host-type", "page-size"]),
        ],
    },
    Row {
        model: "smmuv3",
        opts: "",
        host_opts: "",
        expect: [
            (Refuse, &["host-type", "map-invalidation"]),
            (Refuse, &["host-type", "map-invalidation"]),
            (Nested, &[]),
            (Refuse, &["host-s1p", "map-invalidation"]),
            (Refuse, &["host-type", "map-invalidation"]),
        ],
    },
    Row {
        model: "smmuv3",
        opts: "stages=nested",
        host_opts: "",
        expect: [
            (
                Refuse,
                &["host-type", "guest-stage1-only", "map-invalidation"],
            ),
            (
                Refuse,
                &["host-type", "guest-stage1-only", "map-invalidation"],
            ),
            (Refuse, &["guest-stage1-only", "map-invalidation"]),
            (
                Refuse,
                &["guest-stage1-only", "host-s1p", "map-invalidation"],
            ),
            (Refuse, &["host-type", "map-invalidation"]),
        ],
    },
    Row {
        model: "smmuv3",
        opts: "ats=1 gran=4k oas=44 ssidsize=8",
        host_opts: "",
        expect: [
            (Refuse, &["host-type", "map-invalidation"]),
            (Refuse, &["host-type", "map-invalidation"]),
            (Nested, &[]),
            (Refuse, &["host-s1p", "map-invalidation"]),
            (Refuse, &["host-type", "map-invalidation"]),
        ],
    },
    Row {
        model: "virtio-iommu",
        opts: "",
        host_opts: "",
        expect: [
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
        ],
    },
    Row {
        model: "virtio-iommu",
        opts: "page_size_mask=0x1000",
        host_opts: ",pgsize=0x10000",
        expect: [
            (Refuse, &["stage1-format", "page-size"]),
            (Refuse, &["stage1-format", "page-size"]),
            (Refuse, &["stage1-format", "page-size"]),
            (Refuse, &["stage1-format", "page-size"]),
            (Refuse, &["stage1-format", "page-size"]),
        ],
    },
    Row {
        model: "virtio-iommu",
        opts: "page_size_mask=0xffff_ffff_ffff_0000",
        host_opts: ",pgsize=0x10000",
        expect: [
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
            (Shadow, &["stage1-format"]),
        ],
    },
    Row {
        model: "virtio-iommu",
        opts: "probe_size=0",
        host_opts: "",
        expect: [
            (Refuse, &["stage1-format", "reserved-regions"]),
            (Refuse, &["stage1-format", "reserved-regions"]),
            (Refuse, &["stage1-format", "reserved-regions"]),
            (Refuse, &["stage1-format", "reserved-regions"]),
            (Shadow, &["stage1-format"]),
        ],
    },
    Row {
        model: "virtio-iommu",
        opts: "input_range=0x1_0000_0000_0000-0x1_ffff_ffff_ffff",
        host_opts: "",
        expect: [
            (Refuse, &["input-range"]),
            (Refuse, &["input-range"]),
            (Refuse, &["input-range"]),
            (Refuse, &["input-range"]),
            (Refuse, &["input-range"]),
        ],
    },
];

#[test]
fn decide_every_profile_every_model_expected_kind_and_failures() {
    for row in ROWS {
        let g = guest(row.model, row.opts);
        for (profile, (kind, failing)) in HostProfile::ALL.iter().zip(row.expect) {
            let text = format!("{}{}", profile.name(), row.host_opts);
            let d = decide(&g, &host(&text));
            let ctx = format!("{} {} on {text}", row.model, row.opts);
            expect(&d, kind, failing, &ctx);
        }
    }
}

#[test]
fn decide_profile_specs_convert_to_views() {
    for p in HostProfile::ALL {
        let spec = p.spec();
        let v = spec.host_view();
        assert_eq!(v.iova_ranges, spec.usable_ranges());
        assert_eq!((v.page_size, v.unit), (spec.page_size, None));
    }
}

#[test]
fn decide_vtd_pasid_wider_than_host_falls_back_to_shadow() {
    let mut spec = HostProfile::VtdNest.spec();
    let (_, e) = spec.info.vtd().unwrap();
    spec.apply("ecap", &format!("{:#x}", e.with(ecap::PSS, 9).0))
        .unwrap();
    let d = decide(&guest("vtd", ""), &spec.host_view());
    expect(
        &d,
        Shadow,
        &["pasid-width"],
        "pasid_bits=20 on a 10-bit host",
    );
    let d = decide(&guest("vtd", "pasid_bits=10"), &spec.host_view());
    expect(&d, Nested, &[], "pasid_bits=10 on a 10-bit host");
}

#[test]
fn decide_vtd_host_without_fs1gp_nests_only_without_1g_pages() {
    let mut spec = HostProfile::VtdNest.spec();
    let (c, _) = spec.info.vtd().unwrap();
    spec.apply("cap", &format!("{:#x}", c.with(cap::FS1GP, 0).0))
        .unwrap();
    let v = spec.host_view();
    expect(
        &decide(&guest("vtd", ""), &v),
        Shadow,
        &["fs-1g-pages"],
        "1G guest",
    );
    expect(
        &decide(&guest("vtd", "sps=1"), &v),
        Nested,
        &[],
        "2M-only guest",
    );
}

#[test]
fn decide_vtd_host_missing_nesting_features_fails_each() {
    let v = host("vtd-nest,ecap=0x4000000"); // NEST only
    let d = decide(&guest("vtd", ""), &v);
    expect(
        &d,
        Shadow,
        &["host-smts", "host-fsts", "host-ssts"],
        "NEST without SMTS/FSTS/SSTS",
    );
    assert!(!d.has_failed("host-nest"));
}

#[test]
fn decide_vtd_aw57_host_with_fs5lp_passes_5level_check() {
    let mut spec = HostProfile::VtdNest.spec();
    let (c, _) = spec.info.vtd().unwrap();
    let c = c
        .with(cap::FS5LP, 1)
        .with(cap::MGAW, 56)
        .with(cap::SAGAW, 0b01100);
    spec.apply("cap", &format!("{:#x}", c.0)).unwrap();
    spec.apply("aperture", "0-0x1ff_ffff_ffff_ffff").unwrap();
    let d = decide(&guest("vtd", "aw=57"), &spec.host_view());
    expect(&d, Nested, &[], "aw=57 on a 5-level host");
}

#[test]
fn decide_vtd_slts_with_cm_nests_and_says_second_stage_pasids_stay_blocked() {
    let d = decide(&guest("vtd", "slts=1"), &host("vtd-nest"));
    expect(&d, Nested, &[], "slts=1 cm=1");
    let c = d
        .checks
        .iter()
        .find(|c| c.name == "slts-with-flts")
        .unwrap();
    assert!(
        c.detail.contains("cannot nest and stay blocked"),
        "{}",
        c.detail
    );
    assert!(!d.adjust.skip_readonly_s2);
}

#[test]
fn decide_vtd_erratum_772415_nests_and_skips_readonly() {
    let mut v = host("vtd-nest");
    if let HwInfo::IntelVtd { errata, .. } = &mut v.info.hw {
        *errata = VtdErrata::ERRATA_772415_SPR17;
    }
    let d = decide(&guest("vtd", ""), &v);
    expect(&d, Nested, &[], "erratum host");
    assert!(d.adjust.skip_readonly_s2);
}

#[test]
fn decide_vtd_prs_needs_host_prs() {
    let mut spec = HostProfile::VtdNest.spec();
    let (_, e) = spec.info.vtd().unwrap();
    spec.apply("ecap", &format!("{:#x}", e.with(ecap::PRS, 0).0))
        .unwrap();
    let v = spec.host_view();
    expect(
        &decide(&guest("vtd", "prs=1"), &v),
        Shadow,
        &["prs"],
        "prs=1 on no-PRS host",
    );
    expect(
        &decide(&guest("vtd", ""), &v),
        Nested,
        &[],
        "prs=0 on no-PRS host",
    );
}

#[test]
fn decide_smmuv3_host_shortfalls_each_refuse() {
    let cases = [
        ("smmuv3-nest,idr1=0x210", "", "ssid-width"), // SSIDSIZE 8
        ("smmuv3-nest,idr3=0x100", "", "range-invalidation"),
        ("smmuv3-nest,idr3=0x400", "", "host-coherency"),
        ("smmuv3-nest,idr5=0x55", "", "granules"), // OAS 48, 4K and 64K
        ("smmuv3-nest,idr5=0x72", "", "oas"),      // OAS 40
        ("smmuv3-nest", "oas=52", "oas"),
    ];
    let idr0 = HostProfile::Smmuv3Nest.spec().info.smmuv3_idr().unwrap()[0];
    let no_aarch64 = format!(
        "smmuv3-nest,idr0={:#x}",
        idr::IDR0_TTF.set(idr0.into(), 0b01)
    );
    let big_endian = format!(
        "smmuv3-nest,idr0={:#x}",
        idr::IDR0_TTENDIAN.set(idr0.into(), 0b11)
    );
    let computed = [
        (no_aarch64, "host-ttf-aarch64"),
        (big_endian, "host-endianness"),
    ];
    let cases = cases
        .iter()
        .map(|(h, o, n)| (h.to_string(), *o, *n))
        .chain(computed.into_iter().map(|(h, n)| (h, "", n)));
    for (h, opts, name) in cases {
        let d = decide(&guest("smmuv3", opts), &host(&h));
        expect(
            &d,
            Refuse,
            &[name, "map-invalidation"],
            &format!("smmuv3 {opts} on {h}"),
        );
    }
}

#[test]
fn decide_smmuv3_ats_needs_host_ats_and_usable_device() {
    let g = guest("smmuv3", "ats=1");
    expect(&decide(&g, &host("smmuv3-nest")), Nested, &[], "ats host");
    let mut v = host("smmuv3-nest");
    v.info.caps |= HostCaps::PCI_ATS_NOT_SUPPORTED;
    expect(&decide(&g, &v), Refuse, &["ats"], "device without ATS");
    expect(
        &decide(&guest("smmuv3", ""), &v),
        Nested,
        &[],
        "guest without ATS",
    );
}

#[test]
fn decide_smmuv3_mmu700_r0p0_errata_refuse() {
    let mut v = host("smmuv3-nest");
    if let HwInfo::ArmSmmuv3 { iidr, .. } = &mut v.info.hw {
        *iidr = 0x4870_043b;
    }
    expect(
        &decide(&guest("smmuv3", ""), &v),
        Refuse,
        &["host-errata"],
        "MMU-700 r0p0",
    );
}

#[test]
fn decide_virtio_on_smmu_host_announces_msi_window() {
    let d = decide(&guest("virtio-iommu", ""), &host("smmuv3-nest"));
    expect(&d, Shadow, &["stage1-format"], "virtio on smmuv3-nest");
    assert_eq!(d.adjust.input_range, Some(range(0, (1 << 48) - 1)));
    assert_eq!(d.adjust.reserved, vec![range(0x800_0000, 0x80f_ffff)]);
    assert_eq!(d.adjust.ioas_page_size, Some(4096));
}

#[test]
fn decide_virtio_input_range_partly_outside_is_clipped() {
    let d = decide(
        &guest("virtio-iommu", "input_range=0x1000-0x1_0000_0000_0000"),
        &host("none"),
    );
    expect(&d, Shadow, &[], "partly outside");
    assert_eq!(d.adjust.input_range, Some(range(0x1000, (1 << 48) - 1)));
    assert!(d.adjust.reserved.is_empty());
}

#[test]
fn decide_host_other_type_can_shadow_virtio() {
    let v = HostView {
        info: HostInfo {
            hw: HwInfo::Other {
                kind: 7,
                data: vec![],
            },
            ..HostInfo::default()
        },
        iova_ranges: vec![range(0, u64::MAX)],
        page_size: 4096,
        unit: None,
    };
    expect(
        &decide(&guest("virtio-iommu", ""), &v),
        Shadow,
        &[],
        "other host",
    );
    expect(
        &decide(&guest("vtd", ""), &v),
        Shadow,
        &["host-type"],
        "vtd on other host",
    );
}

#[test]
fn decision_display_lists_every_check() {
    let d = decide(&guest("vtd", "cm=0"), &host("vtd-nonest"));
    let text = d.to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("decision: refuse"));
    assert_eq!(
        lines.next(),
        Some(format!("reason: {}", d.reason()).as_str())
    );
    assert_eq!(text.lines().count(), d.checks.len() + 2);
    assert!(text.ends_with('\n'));
    assert!(text.contains("\n  ok   host-type: "), "{text}");
    assert!(
        text.contains("\n  FAIL host-nest: host ECAP.NEST=0"),
        "{text}"
    );
    assert!(
        d.reason().starts_with("cannot nest (host-nest: "),
        "{}",
        d.reason()
    );
    assert!(
        d.reason().contains("cannot shadow (caching-mode: "),
        "{}",
        d.reason()
    );
    assert_eq!(DecisionKind::Shadow.to_string(), "shadow");
}

fn unit(mut v: HostView, u: u32) -> HostView {
    v.unit = Some(u);
    v
}

#[test]
fn decide_domain_two_units_cannot_nest() {
    let g = guest("vtd", "");
    let d = decide_domain(&g, &[unit(host("vtd-nest"), 0), unit(host("vtd-nest"), 1)]);
    expect(&d, Shadow, &["same-iommu"], "two units");
    let d = decide_domain(&g, &[unit(host("vtd-nest"), 3), unit(host("vtd-nest"), 3)]);
    expect(&d, Nested, &[], "one unit");
}

#[test]
fn decide_domain_unknown_units_fail_closed() {
    let g = guest("smmuv3", "");
    // Identical hardware information is what two units of one server
    // report: it does not show the devices share a unit.
    let d = decide_domain(&g, &[host("smmuv3-nest"), host("smmuv3-nest")]);
    expect(
        &d,
        Refuse,
        &["same-iommu", "map-invalidation"],
        "unknown units",
    );
    assert!(d.to_string().contains("unit unknown"), "{d}");
    let d = decide_domain(&g, &[unit(host("smmuv3-nest"), 0), host("smmuv3-nest")]);
    expect(
        &d,
        Refuse,
        &["same-iommu", "map-invalidation"],
        "one unknown",
    );
    let d = decide_domain(
        &g,
        &[unit(host("smmuv3-nest"), 2), unit(host("smmuv3-nest"), 2)],
    );
    expect(&d, Nested, &[], "known, same");
}

#[test]
fn decide_domain_shadow_intersects_ranges_and_takes_largest_page() {
    let g = guest("virtio-iommu", "page_size_mask=0xffff_ffff_ffff_0000");
    let d = decide_domain(
        &g,
        &[
            host("vtd-nonest"),
            host("smmuv3-nest,pgsize=0x10000,aperture=0-0xffff_ffff_ffff"),
        ],
    );
    expect(&d, Shadow, &["stage1-format"], "mixed hosts");
    assert_eq!(d.adjust.ioas_page_size, Some(0x10000));
    assert_eq!(d.adjust.input_range, Some(range(0, 0xffff_ffff_ffff)));
    assert_eq!(
        d.adjust.reserved,
        vec![
            range(0x800_0000, 0x80f_ffff),
            range(0xfee0_0000, 0xfeef_ffff)
        ]
    );
    let d = decide_domain(
        &guest("vtd", ""),
        &[host("vtd-nonest"), host("smmuv3-nest")],
    );
    expect(&d, Refuse, &["iova-coverage"], "vtd over an smmu hole");
}

#[test]
fn decide_domain_empty_refuses() {
    expect(
        &decide_domain(&guest("vtd", ""), &[]),
        Refuse,
        &["devices"],
        "empty",
    );
}

#[test]
fn decide_hotplug_nested_same_unit_accepts() {
    let g = guest("vtd", "");
    let d = decide_hotplug(
        &g,
        &[unit(host("vtd-nest"), 0)],
        Nested,
        &unit(host("vtd-nest"), 0),
    );
    expect(&d, Nested, &[], "same unit");
}

#[test]
fn decide_hotplug_nested_other_unit_refuses_though_it_could_shadow() {
    let g = guest("vtd", "");
    let d = decide_hotplug(
        &g,
        &[unit(host("vtd-nest"), 0)],
        Nested,
        &unit(host("vtd-nest"), 1),
    );
    expect(&d, Refuse, &["same-iommu"], "other unit");
    let d = decide_hotplug(&g, &[host("vtd-nest")], Nested, &host("vtd-nonest"));
    expect(&d, Refuse, &["host-nest", "same-iommu"], "non-nesting unit");
    assert!(
        d.reason().starts_with("cannot join the nested domain"),
        "{}",
        d.reason()
    );
}

#[test]
fn decide_hotplug_shadow_compatible_host_accepts() {
    let g = guest("vtd", "");
    let d = decide_hotplug(&g, &[host("vtd-nonest")], Shadow, &host("none"));
    expect(&d, Shadow, &[], "none joins vtd-nonest");
}

#[test]
fn decide_hotplug_shadow_larger_page_refuses() {
    let g = guest("virtio-iommu", "page_size_mask=0xffff_ffff_ffff_0000");
    let d = decide_hotplug(&g, &[host("none")], Shadow, &host("none,pgsize=0x10000"));
    expect(&d, Refuse, &["ioas-page-size"], "64K device into a 4K IOAS");
    assert!(d.adjust == Adjustments::default());
}

#[test]
fn decide_hotplug_shadow_narrower_ranges_refuses() {
    let g = guest("virtio-iommu", "");
    let d = decide_hotplug(
        &g,
        &[host("none")],
        Shadow,
        &host("none,aperture=0-0xffff_ffff"),
    );
    expect(
        &d,
        Refuse,
        &["ioas-ranges"],
        "32-bit device into a 48-bit IOAS",
    );
    let d = decide_hotplug(&g, &[host("none")], Shadow, &host("smmuv3-nest"));
    expect(&d, Refuse, &["ioas-ranges"], "new MSI hole");
}

#[test]
fn decide_hotplug_into_refused_or_empty_domain() {
    let g = guest("vtd", "");
    let d = decide_hotplug(&g, &[host("smmuv3-nest")], Refuse, &host("vtd-nest"));
    expect(&d, Refuse, &["existing-kind"], "refused domain");
    assert_eq!(
        decide_hotplug(&g, &[], Refuse, &host("vtd-nest")),
        decide(&g, &host("vtd-nest"))
    );
}
