//! `probe` on the simulated host, across every host profile and model:
//! what the kernel side reports (hw info through GET_HW_INFO, usable ranges
//! through an attached IOAS) must lead to the same decision as the ladder
//! run on the profile's own description.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use nesting_core::host::HostOp;
use nesting_core::host::objects::SharedHost;
use nesting_core::ladder::{self, DecisionKind};
use viommu::models::GuestModel;
use viommu::probe::{self, HostArg, ProbeArgs};

const MODELS: [(&str, &[&str]); 7] = [
    ("vtd", &[]),
    ("vtd", &["mode=legacy", "cm=1"]),
    ("vtd", &["cm=0"]),
    ("vtd", &["aw=57"]),
    ("smmuv3", &[]),
    ("smmuv3", &["gran=4k"]),
    ("virtio-iommu", &[]),
];

fn probe_sim(spec: &SimHostSpec, guest: &GuestModel) -> ladder::Decision {
    let sim = Arc::new(SimIommufd::with_host(spec.clone()));
    let host: SharedHost = sim.clone();
    let (_, d) = probe::probe_device(&host, sim.add_device(0), Some(0), guest).unwrap();
    // probe leaves nothing behind: the scratch IOAS and the device are gone.
    assert_eq!(sim.calls(HostOp::UnbindDevice), 1);
    assert_eq!(sim.calls(HostOp::Destroy), 1);
    d
}

#[test]
fn probe_on_sim_agrees_with_ladder_on_profile_for_every_profile_and_model() {
    for profile in HostProfile::ALL {
        let spec = profile.spec();
        for (model, opts) in MODELS {
            let guest = GuestModel::from_options(model, opts).unwrap();
            let direct = ladder::decide(guest.guest(), &spec.host_view());
            let probed = probe_sim(&spec, &guest);
            assert_eq!(
                probed.kind,
                direct.kind,
                "{} / {model} {opts:?}:\nprobed {probed}\ndirect {direct}",
                profile.name()
            );
        }
    }
}

#[test]
fn probe_expected_kinds_on_named_profiles() {
    let cases = [
        ("vtd-nest", "vtd", &[][..], DecisionKind::Nested),
        ("vtd-nonest", "vtd", &[][..], DecisionKind::Shadow),
        (
            "vtd-nest",
            "vtd",
            &["cm=0", "mode=legacy"][..],
            DecisionKind::Refuse,
        ),
        ("none", "vtd", &[][..], DecisionKind::Shadow),
        ("smmuv3-nest", "smmuv3", &[][..], DecisionKind::Nested),
        ("smmuv3-s2only", "smmuv3", &[][..], DecisionKind::Refuse),
        ("vtd-nest", "smmuv3", &[][..], DecisionKind::Refuse),
        ("smmuv3-nest", "virtio-iommu", &[][..], DecisionKind::Shadow),
        ("none,pgsize=0x10000", "vtd", &[][..], DecisionKind::Refuse),
    ];
    for (host, model, opts, want) in cases {
        let spec = SimHostSpec::parse(host).unwrap();
        let guest = GuestModel::from_options(model, opts).unwrap();
        let d = probe_sim(&spec, &guest);
        assert_eq!(d.kind, want, "{host} / {model} {opts:?}: {d}");
    }
}

#[test]
fn probe_run_prints_host_then_decision_then_checks() {
    let args = ProbeArgs {
        host: HostArg::Sim(HostProfile::VtdNonest.spec()),
        model: GuestModel::from_options("vtd", &[]).unwrap(),
    };
    let mut out = Vec::new();
    let d = probe::run(&args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("host iommu: intel-vtd cap=0x"), "{text}");
    let decision_line = text.lines().position(|l| l == "decision: shadow").unwrap();
    assert!(
        text.lines()
            .nth(decision_line + 1)
            .unwrap()
            .starts_with("reason: ")
    );
    assert!(text.contains("  FAIL host-nest: "), "{text}");
    assert_eq!(d.kind, DecisionKind::Shadow);
}

#[test]
fn probe_args_bad_input_is_usage_error() {
    let p = |a: &[&str]| probe::parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert!(p(&["--host", "sim:vtd-nest"]).is_err(), "no model");
    assert!(p(&["--model", "amd-vi"]).is_err());
    assert!(p(&["--model", "vtd", "aw=40"]).is_err());
    assert!(p(&["--host", "sim:nope", "--model", "vtd"]).is_err());
    assert!(
        p(&["--host", "/dev/iommu", "--model", "vtd"]).is_err(),
        "real host needs --device"
    );
    assert!(p(&["--host", "sim:vtd-nest", "--device", "/x", "--model", "vtd"]).is_err());
    assert!(p(&["--host", "fd:x", "--device", "fd:3", "--model", "vtd"]).is_err());
    assert!(p(&["--model"]).is_err());
    assert!(p(&["--frob", "--model", "vtd"]).is_err());
    assert!(p(&["--model", "vtd", "cm=1"]).is_ok());
    // Model options may come before --model too (clap's positionals).
    assert!(p(&["cm=1", "--model", "vtd"]).is_ok());
    assert!(p(&["--model", "vtd", "--expect", "maybe"]).is_err());
    assert!(p(&["--model", "vtd", "--expect", "shadow"]).is_ok());
    assert!(
        p(&[
            "--host",
            "fd:3",
            "--device",
            "fd:4",
            "--model",
            "virtio-iommu"
        ])
        .is_ok()
    );
}

#[test]
fn devices_behind_two_units_share_a_domain_only_by_shadowing() {
    let sim = Arc::new(SimIommufd::new());
    let a = sim.add_iommu(HostProfile::VtdNest.spec());
    let b = sim.add_iommu(HostProfile::VtdNest.spec());
    let host: SharedHost = sim.clone();
    let guest = GuestModel::from_options("vtd", &[]).unwrap();
    let mut views = Vec::new();
    for unit in [a, b] {
        let (v, _) = probe::probe_device(&host, sim.add_device(unit), Some(unit), &guest).unwrap();
        views.push(v);
    }
    assert_eq!(
        ladder::decide(guest.guest(), &views[0]).kind,
        DecisionKind::Nested
    );
    let d = ladder::decide_domain(guest.guest(), &views);
    assert_eq!(d.kind, DecisionKind::Shadow, "{d}");
    // Hot-plugging the second unit's device into the first's nested domain
    // is refused; joining as shadowed would need the domain to be shadowed.
    let h = ladder::decide_hotplug(guest.guest(), &views[..1], DecisionKind::Nested, &views[1]);
    assert_eq!(h.kind, DecisionKind::Refuse, "{h}");
    let h = ladder::decide_hotplug(guest.guest(), &views[..1], DecisionKind::Shadow, &views[1]);
    assert_eq!(h.kind, DecisionKind::Shadow, "{h}");
}
