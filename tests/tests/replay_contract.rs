//! The output and exit-status contract of `viommu replay` (REPLAY.md,
//! "Output and exit status"), checked on small scripts.

use viommu::replay::{Options, Runner, exit_code, run_script};

/// Replays `scripts` (name, text) as `viommu replay [-v]` would: the exit
/// status, what it printed, and its error stream.
fn replay(verbose: bool, scripts: &[(&str, &str)]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut runner = Runner::new(Options { verbose }, &mut out, &mut err);
    for (name, text) in scripts {
        runner.script(name, text);
    }
    let code = runner.finish().exit_code;
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (code, text(out), text(err))
}

/// One script named `s.viommu`: the exit status and its output, error
/// stream included.
fn run(script: &str) -> (i32, String) {
    let (code, out, err) = replay(false, &[("s.viommu", script)]);
    (code, format!("{out}{err}"))
}

#[test]
fn passing_script_prints_its_pass_line_and_the_totals_exit_0() {
    let (code, out, err) = replay(
        false,
        &[(
            "s.viommu",
            "model vtd\nram 0 0x1000\nwrite32 0x10 7\nread32 0x10 == 7\n",
        )],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "PASS s.viommu (1 checks)\n1 passed, 0 failed\n");
    assert_eq!(err, "");
}

#[test]
fn verbose_prints_every_passed_check() {
    let (code, out, _) = replay(
        true,
        &[(
            "s.viommu",
            "model vtd\nram 0 0x1000\nwrite32 0x10 7\nread32 0x10 == 7\nread8 0x10 != 0\n",
        )],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "ok 4\nok 5\nPASS s.viommu (2 checks)\n2 passed, 0 failed\n"
    );
}

#[test]
fn failed_check_prints_expected_and_got_exit_1() {
    let script = "model vtd\nram 0 0x1000\nread32 0x10 == 7\nread32 0x10 == 0\n";
    let (code, out, _) = replay(false, &[("s.viommu", script)]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "FAIL 3: expected 0x7, got 0x0\nFAIL s.viommu (1 passed, 1 failed)\n1 passed, 1 failed\n"
    );
    // With -v the passed check is listed too, in line order.
    let (_, out, _) = replay(true, &[("s.viommu", script)]);
    assert!(
        out.starts_with("FAIL 3: expected 0x7, got 0x0\nok 4\n"),
        "{out}"
    );
}

#[test]
fn failed_masked_check_shows_the_value_under_the_mask() {
    let (code, out, _) = replay(
        false,
        &[(
            "s.viommu",
            "model vtd\nram 0 0x1000\nwrite32 0x10 0x1234\nread32 0x10 & 0xff == 0x7\nread32 0x10 & 0xff00 != 0x1200\n",
        )],
    );
    assert_eq!(code, 1);
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL 4")).collect();
    assert_eq!(fails, ["FAIL 4: expected 0x7 (under mask 0xff), got 0x34"]);
    assert!(
        out.contains("FAIL 5: expected not 0x1200 (under mask 0xff00), got 0x1200\n"),
        "{out}"
    );
}

#[test]
fn script_error_counts_the_checks_before_it_and_the_totals_still_close_exit_2() {
    let (code, out, err) = replay(
        false,
        &[(
            "s.viommu",
            "model vtd\nram 0 0x1000\nread32 0x10 == 0\nread32 0x10 == 1\nram 0 0x1000\nread32 0x10 == 0\n",
        )],
    );
    assert_eq!(code, 2);
    assert_eq!(
        out,
        "FAIL 4: expected 0x1, got 0x0\nFAIL s.viommu (1 passed, 1 failed)\n1 passed, 1 failed\n"
    );
    assert!(err.contains("s.viommu: script error at line 5: "), "{err}");
}

#[test]
fn syntax_error_anywhere_runs_nothing_exit_2() {
    // A script is parsed whole before it runs: a line that does not parse
    // is reported and no check of the script is made.
    let (code, out, err) = replay(
        false,
        &[(
            "s.viommu",
            "model vtd\nram 0 0x1000\nread32 0x10 == 0\nfrobnicate\n",
        )],
    );
    assert_eq!(code, 2);
    assert_eq!(
        out,
        "FAIL s.viommu (0 passed, 0 failed)\n0 passed, 0 failed\n"
    );
    assert!(err.contains("line 4: unknown directive"), "{err}");
}

#[test]
fn several_scripts_one_line_each_totals_over_all_worst_exit_status() {
    let ok = "model vtd\nram 0 0x1000\nread32 0 == 0\nread32 4 == 0\n";
    let fail = "model vtd\nram 0 0x1000\nread32 0 == 1\n";
    let bad = "model vtd\nram 0 0x1000\nread32 0 == 0\nmodel vtd\n";
    let (code, out, _) = replay(false, &[("a", ok), ("b", fail), ("c", ok)]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        "PASS a (2 checks)\nFAIL 3: expected 0x1, got 0x0\nFAIL b (0 passed, 1 failed)\nPASS c (2 checks)\n4 passed, 1 failed\n"
    );
    // A script error in the middle: the others still run, the totals count
    // the checks made before the error, and the status is 2.
    let (code, out, _) = replay(false, &[("a", ok), ("c", bad), ("b", fail)]);
    assert_eq!(code, 2);
    assert_eq!(
        out,
        "PASS a (2 checks)\nFAIL c (1 passed, 0 failed)\nFAIL 3: expected 0x1, got 0x0\nFAIL b (0 passed, 1 failed)\n3 passed, 1 failed\n"
    );
}

#[test]
fn unreadable_file_fails_its_line_exit_2_totals_still_close() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut runner = Runner::new(Options::default(), &mut out, &mut err);
    assert!(runner.file("/nonexistent/x.viommu".as_ref()).is_none());
    runner.script("a", "model vtd\nram 0 0x1000\nread32 0 == 0\n");
    let outcome = runner.finish();
    assert_eq!(outcome.exit_code, 2);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "FAIL /nonexistent/x.viommu (0 passed, 0 failed)\nPASS a (1 checks)\n1 passed, 0 failed\n"
    );
    assert!(
        String::from_utf8(err)
            .unwrap()
            .contains("/nonexistent/x.viommu")
    );
}

#[test]
fn run_script_alone_prints_only_what_happens_during_the_run() {
    // The library's single-script entry point (the fuzz target's): failed
    // checks and decisions, no per-script or closing line.
    let mut out = Vec::new();
    let r = run_script(
        "model vtd\nram 0 0x1000\nread32 0x10 == 7\nread32 0x10 == 0\n",
        &mut out,
    );
    assert_eq!(exit_code(&r), 1);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "FAIL 3: expected 0x7, got 0x0\n"
    );
    assert_eq!(r.unwrap().passed, 1);
    let r = run_script("model vtd\nfrob\n", &mut Vec::new());
    assert_eq!(exit_code(&r), 2);
    assert_eq!(r.unwrap_err().line, 2);
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
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("decision 16 refuse: "), "{out}");
    assert!(
        lines[0].len() > "decision 16 refuse: ".len(),
        "reason missing: {out}"
    );
    // The decision comes as it happens, before the script's line.
    assert_eq!(
        lines[1..],
        ["PASS s.viommu (1 checks)", "1 passed, 0 failed"]
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
    assert!(out.ends_with("(4 checks)\n4 passed, 0 failed\n"), "{out}");
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
