//! The `viommu` binary's contract: output order, the default host, and exit
//! codes (0 ok, 1 host failure, unexpected decision or failed check, 2 bad
//! arguments or script error), help and version, logging.

use std::process::{Command, Output};

fn viommu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_viommu"))
        .args(args)
        .output()
        .expect("the viommu binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn probe_default_host_is_sim_vtd_nest_and_decision_follows_host_description() {
    let o = viommu(&["probe", "--model", "vtd"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = stdout(&o);
    let host_line = out.find("host iommu: intel-vtd").expect("host description");
    let decision = out.find("\ndecision: nested\n").expect("decision line");
    assert!(host_line < decision, "{out}");
    assert!(out.contains("host iommu unit: 0"), "{out}");
    // The reasons follow the decision.
    assert!(out[decision..].contains("  ok   host-type"), "{out}");
}

#[test]
fn probe_shadow_and_refuse_on_named_profiles() {
    let o = viommu(&[
        "probe",
        "--host",
        "sim:vtd-nonest",
        "--model",
        "vtd",
        "cm=1",
    ]);
    assert!(stdout(&o).contains("\ndecision: shadow\n"), "{o:?}");
    let o = viommu(&["probe", "--host", "sim:smmuv3-s2only", "--model", "smmuv3"]);
    assert!(stdout(&o).contains("\ndecision: refuse\n"), "{o:?}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn probe_bad_arguments_exit_2_with_a_message() {
    for args in [
        &["probe"][..],
        &["probe", "--model"],
        &["probe", "--model", "frob"],
        &["probe", "--model", "vtd", "aw=40"],
        &["probe", "--host", "sim:nope", "--model", "vtd"],
        &["probe", "--host", "/dev/iommu", "--model", "vtd"],
        &[
            "probe",
            "--host",
            "sim:vtd-nest",
            "--device",
            "/dev/vfio/devices/vfio0",
            "--model",
            "vtd",
        ],
        &["frobnicate"],
    ] {
        let o = viommu(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(!o.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn probe_real_host_that_cannot_be_opened_exits_1() {
    let o = viommu(&[
        "probe",
        "--host",
        "/nonexistent/iommu",
        "--device",
        "/nonexistent/vfio0",
        "--model",
        "vtd",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/iommu"),
        "{o:?}"
    );
}

#[test]
fn replay_exit_codes_follow_the_contract() {
    let dir = std::env::temp_dir().join(format!("viommu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let ok = script(
        "ok.viommu",
        "model virtio-iommu\nram 0x0 0x1000\nwrite8 0x10 7\nread8 0x10 == 7\n",
    );
    let fail = script(
        "fail.viommu",
        "model virtio-iommu\nram 0x0 0x1000\nread8 0x10 == 7\n",
    );
    let bad = script("bad.viommu", "model virtio-iommu\nfrobnicate\n");
    let o = viommu(&["replay", &ok]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        stdout(&o),
        format!("PASS {ok} (1 checks)\n1 passed, 0 failed\n")
    );
    let o = viommu(&["replay", "-v", &ok]);
    assert_eq!(
        stdout(&o),
        format!("ok 4\nPASS {ok} (1 checks)\n1 passed, 0 failed\n")
    );
    let o = viommu(&["replay", &fail]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        format!(
            "FAIL 3: expected 0x7, got 0x0\nFAIL {fail} (0 passed, 1 failed)\n0 passed, 1 failed\n"
        )
    );
    // A script error: its line and reason on stderr, the totals still last.
    let o = viommu(&["replay", &ok, &bad, &fail]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).ends_with(&format!("FAIL {bad} (0 passed, 0 failed)\nFAIL 3: expected 0x7, got 0x0\nFAIL {fail} (0 passed, 1 failed)\n1 passed, 1 failed\n")),
        "{o:?}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 2: unknown directive"),
        "{o:?}"
    );
    assert_eq!(viommu(&["replay", &bad]).status.code(), Some(2));
    let o = viommu(&["replay", "--defaults", "vtd"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("mode="), "{o:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_and_version_exit_0_on_stdout() {
    for args in [
        &["--help"][..],
        &["help"],
        &["replay", "--help"],
        &["probe", "--help"],
        &["help", "probe"],
    ] {
        let o = viommu(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        assert!(stdout(&o).contains("Usage: viommu"), "{args:?}: {o:?}");
    }
    let o = viommu(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        format!("viommu {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn replay_help_is_help_not_a_file_named_help() {
    let o = viommu(&["replay", "--help"]);
    let out = stdout(&o);
    assert!(
        out.contains("--verbose") && out.contains("--defaults"),
        "{out}"
    );
    assert!(
        !out.contains("PASS --help") && !out.contains("FAIL --help"),
        "{out}"
    );
    // A script that really is named like an option goes after `--`.
    let o = viommu(&["replay", "--", "--help"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        stdout(&o).starts_with("FAIL --help (0 passed, 0 failed)\n"),
        "{o:?}"
    );
}

#[test]
fn replay_usage_errors_exit_2() {
    for args in [
        &["replay"][..],
        &["replay", "--defaults", "amd-vi"],
        &["replay", "--defaults", "vtd", "x.viommu"],
        &["replay", "--frob", "x.viommu"],
        &[],
    ] {
        let o = viommu(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(!o.stderr.is_empty(), "{args:?}: no message");
    }
}

#[test]
fn probe_expect_exits_1_when_the_decision_differs() {
    let o = viommu(&["probe", "--model", "vtd", "--expect", "nested"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = viommu(&[
        "probe",
        "--host",
        "sim:vtd-nonest",
        "--model",
        "vtd",
        "--expect",
        "nested",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    // The probe's report is printed all the same, the mismatch on stderr.
    assert!(stdout(&o).contains("\ndecision: shadow\n"), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("decision shadow, expected nested"),
        "{o:?}"
    );
    let o = viommu(&[
        "probe",
        "--host",
        "sim:smmuv3-s2only",
        "--model",
        "smmuv3",
        "--expect",
        "refuse",
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let o = viommu(&["probe", "--model", "vtd", "--expect", "maybe"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}

#[test]
fn logs_go_to_stderr_filtered_by_rust_log() {
    let dir = std::env::temp_dir().join(format!("viommu-cli-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("s.viommu");
    std::fs::write(&p, "model virtio-iommu\nram 0x0 0x1000\nread8 0x10 == 0\n").unwrap();
    let run = |level: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_viommu"));
        c.arg("replay").arg(&p).env_remove("RUST_LOG");
        if let Some(l) = level {
            c.env("RUST_LOG", l);
        }
        c.output().unwrap()
    };
    let quiet = run(None);
    assert!(quiet.stderr.is_empty(), "{quiet:?}");
    let debug = run(Some("debug"));
    assert!(
        String::from_utf8_lossy(&debug.stderr).contains("replaying"),
        "{debug:?}"
    );
    // stdout is the contract's, whatever the log level.
    assert_eq!(quiet.stdout, debug.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}
