//! Runs every bundled scenario script under `tests/replay/` (and the
//! recorded ones under `tests/replay/recorded/`, when present) through the
//! replay runner: each must finish without a script error or a failed check.

use std::path::{Path, PathBuf};

use viommu::replay::{exit_code, run_script};

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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay");
    let files = scripts(&dir);
    assert!(
        !files.is_empty(),
        "no scenario scripts under {}",
        dir.display()
    );
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
