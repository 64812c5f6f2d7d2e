//! Runs every bundled scenario script under `tests/replay/` (and the
//! recorded ones under `tests/replay/recorded/`, when present) through the
//! replay runner: each must finish without a script error or a failed check.

use std::path::{Path, PathBuf};

use viommu::replay::{Options, Runner, exit_code, run_script};

/// Every bundled script, recorded ones included.
fn bundled() -> Vec<PathBuf> {
    scripts(&Path::new(env!("CARGO_MANIFEST_DIR")).join("replay"))
}

fn scripts(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(scripts(&p));
        } else if p.extension().is_some_and(|x| x == "viommu") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn bundled_scenarios_all_pass() {
    let files = bundled();
    assert!(!files.is_empty(), "no scenario scripts under tests/replay");
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut out = Vec::new();
        let result = run_script(&text, &mut out);
        let out = String::from_utf8_lossy(&out);
        let passed_something = result.as_ref().is_ok_and(|s| s.passed > 0);
        if exit_code(&result) != 0 || !passed_something {
            failures.push(format!("{}: {result:?}\n{out}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The README's main job (`viommu replay tests/replay/*.viommu
/// tests/replay/recorded/*.viommu`) prints one line per script, the
/// passthrough decisions, and the totals: no line per passed check.
#[test]
fn full_replay_prints_one_line_per_script_and_the_totals() {
    let files = bundled();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut runner = Runner::new(Options::default(), &mut out, &mut err);
    for f in &files {
        runner.file(f);
    }
    let outcome = runner.finish();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(outcome.exit_code, 0, "{out}");
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("decision "))
        .collect();
    assert_eq!(lines.len(), files.len() + 1, "{out}");
    for (line, f) in lines.iter().zip(&files) {
        let head = format!("PASS {} (", f.display());
        assert!(
            line.starts_with(&head) && line.ends_with(" checks)"),
            "{line}"
        );
    }
    let total = outcome.total;
    assert!(total.passed > 1000 && total.failed == 0, "{total}");
    assert_eq!(lines.last(), Some(&total.to_string().as_str()));
}
