//! The output and exit-status contract of `viommu replay` (REPLAY.md,
//! "Output and exit status"), checked on small scripts.

use viommu::replay::{exit_code, run_script};

fn run(script: &str) -> (i32, String) {
    let mut out = Vec::new();
    let r = run_script(script, &mut out);
    let code = exit_code(&r);
    let mut text = String::from_utf8(out).unwrap();
    if let Err(e) = r {
        text.push_str(&format!("error {e}\n"));
    }
    (code, text)
}

#[test]
fn passing_checks_print_ok_lines_and_summary_exit_0() {
    let (code, out) = run("model vtd\nram 0 0x1000\nwrite32 0x10 7\nread32 0x10 == 7\n");
    assert_eq!(code, 0);
    assert_eq!(out, "ok 4\n1 passed, 0 failed\n");
}

#[test]
fn failed_check_prints_expected_and_got_exit_1() {
    let (code, out) = run("model vtd\nram 0 0x1000\nread32 0x10 == 7\nread32 0x10 == 0\n");
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "FAIL 3: expected 0x7, got 0x0\nok 4\n1 passed, 1 failed\n"
    );
}

#[test]
fn unknown_directive_is_script_error_exit_2() {
    let (code, out) = run("model vtd\nfrobnicate 1\n");
    assert_eq!(code, 2);
    assert!(out.contains("line 2: unknown directive"), "{out}");
}

#[test]
fn unknown_model_key_is_script_error() {
    let (code, out) = run("model vtd colour=blue\n");
    assert_eq!(code, 2);
    assert!(out.contains("line 1"), "{out}");
}

#[test]
fn model_must_come_first() {
    let (code, out) = run("ram 0 0x1000\nmodel vtd\n");
    assert_eq!(code, 2);
    assert!(
        out.contains("line 1: the first directive must be `model`"),
        "{out}"
    );
}

#[test]
fn memory_access_outside_ram_is_use_before_setup() {
    let (code, out) = run("model virtio-iommu\nram 0x1000 0x1000\nread8 0x2000 == 0\n");
    assert_eq!(code, 2);
    assert!(out.contains("line 3: use before setup"), "{out}");
    let (code, _) = run("model virtio-iommu\nram 0x1000 0x1000\nwrite64 0x1ffc 0\n");
    assert_eq!(code, 2);
}

#[test]
fn overlapping_ram_is_script_error() {
    let (code, out) = run("model vtd\nram 0 0x2000\nram 0x1000 0x1000\n");
    assert_eq!(code, 2);
    assert!(out.contains("line 3"), "{out}");
}

#[test]
fn bad_host_profile_or_key_is_script_error() {
    assert_eq!(run("model vtd\nhost amd-vi\n").0, 2);
    assert_eq!(run("model vtd\nhost vtd-nest idr0=1\n").0, 2);
    assert_eq!(run("model vtd\nhost vtd-nest color=1\n").0, 2);
}

#[test]
fn passthrough_prints_decision_line_with_reason() {
    let (code, out) = run("model smmuv3\nhost smmuv3-s2only\npassthrough 0x10 => refuse\n");
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("decision 16 refuse: "), "{first}");
    assert!(
        first.len() > "decision 16 refuse: ".len(),
        "reason missing: {first}"
    );
}

#[test]
fn passthrough_wrong_expectation_fails_check() {
    let (code, out) = run("model smmuv3\nhost smmuv3-s2only\npassthrough 0x10 => nested\n");
    assert_eq!(code, 1);
    assert!(out.contains("FAIL 3: expected nested, got refuse"), "{out}");
}

#[test]
fn host_counters_count_and_reset() {
    let script = "model virtio-iommu\nhost vtd-nonest\npassthrough 1\nhost-calls bind_device == 1\nhost-calls get_hw_info == 1\nhost-reset-counters\nhost-calls bind_device == 0\nhost-invalidations == 0\n";
    let (code, out) = run(script);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("4 passed, 0 failed\n"), "{out}");
}

#[test]
fn unknown_host_call_name_is_script_error() {
    let (code, out) = run("model vtd\nhost-calls ioas_frob == 0\n");
    assert_eq!(code, 2);
    assert!(out.contains("unknown host call"), "{out}");
}

#[test]
fn model_directive_without_model_support_is_script_error_naming_it() {
    // SMMUv3 has registers but no virtio feature bits.
    let (code, out) = run("model smmuv3\nfeatures == 0\n");
    assert_eq!(code, 2);
    assert!(out.contains("not supported by model smmuv3"), "{out}");
}

#[test]
fn comments_and_numbers_with_underscores() {
    let (code, out) = run(
        "model vtd # the model\n\n# nothing\nram 0x1_0000 0x1_000\nwrite16 0x1_0000 0x1_2 # x\nread16 65536 == 18\n",
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn defaults_listing_parses_back() {
    for m in ["vtd", "smmuv3", "virtio-iommu"] {
        let text = viommu::replay::defaults_text(m).unwrap();
        let opts: Vec<&str> = text.lines().collect();
        assert!(!opts.is_empty());
        let script = format!("model {m} {}\n", opts.join(" "));
        assert_eq!(run(&script).0, 0, "{script}");
    }
    assert!(viommu::replay::defaults_text("amd").is_err());
}

#[test]
fn host_calls_leave_out_the_runners_own_ram_ioas() {
    // The runner maps guest RAM once into a RAM IOAS at the first
    // passthrough device; `host-calls` counts what the guest caused.
    let (code, out) = run(
        "model smmuv3\nram 0x4000_0000 0x10000\nram 0x8000_0000 0x10000\npassthrough 0x10\nhost-calls ioas_map == 0\nhost-calls ioas_alloc == 0\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("decision 16 nested"), "{out}");
    // After a reset the same holds.
    let (code, out) = run(
        "model smmuv3\nram 0x4000_0000 0x10000\npassthrough 0x10\nhost-reset-counters\nhost-calls ioas_map == 0\n",
    );
    assert_eq!(code, 0, "{out}");
}
