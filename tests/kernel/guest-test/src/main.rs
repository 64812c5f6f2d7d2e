//! The kernel test's guest side: runs every scenario against the real
//! iommufd backend over the guest kernel's `/dev/iommu` (mock devices of
//! `CONFIG_IOMMUFD_TEST`) and against `SimIommufd` describing the same mock
//! IOMMU, then compares the two step by step.
//!
//! Output, one line per check: `ok NAME: detail` or `FAIL NAME: detail`;
//! lines starting with `#` are information (every kernel step with its
//! result, for the findings document). `tests/kernel/run` counts the lines.

use std::process::ExitCode;

mod api;
mod mem;
mod rig;
mod scenarios;
mod shared;
mod testcmd;
mod trace;
mod vfio;

use mem::Mem;
use rig::{KernelRig, SimRig};
use trace::Trace;

/// Tallies and prints checks.
#[derive(Debug, Default)]
struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn line(&mut self, name: &str, pass: bool, detail: &str) {
        if pass {
            self.passed += 1;
            println!("ok {name}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL {name}: {detail}");
        }
    }
}

fn run_scenario(rep: &mut Report, mem: &Mem, name: &str, f: scenarios::Scenario) {
    let kernel = match KernelRig::open() {
        Ok(k) => k,
        Err(e) => {
            rep.line(&format!("{name}/open"), false, &format!("/dev/iommu: {e}"));
            return;
        }
    };
    let mut tk = Trace::default();
    f(&kernel, &mut tk, mem);
    drop(kernel);
    let mut ts = Trace::default();
    f(&SimRig::default(), &mut ts, mem);
    compare(rep, name, &tk, &ts);
}

/// Prints the kernel's steps and checks and whether the simulator took the
/// same steps with the same results.
fn compare(rep: &mut Report, name: &str, tk: &Trace, ts: &Trace) {
    for (label, outcome) in &tk.steps {
        println!("# {name}: {label}: {outcome}");
    }
    for c in &tk.checks {
        rep.line(&format!("{name}/{}", c.name), c.pass, &c.detail);
    }
    match tk.first_difference(ts) {
        None => rep.line(
            &format!("{name}/sim-matches-kernel"),
            true,
            &format!("{} steps", tk.steps.len()),
        ),
        Some(d) => {
            for ((l, k), (_, s)) in tk.steps.iter().zip(&ts.steps) {
                if k != s {
                    println!("# {name}: differs at `{l}`: kernel {k}, sim {s}");
                }
            }
            rep.line(&format!("{name}/sim-matches-kernel"), false, &d);
        }
    }
}

fn main() -> ExitCode {
    let mut rep = Report::default();
    let mem = match Mem::new() {
        Ok(m) => m,
        Err(e) => {
            rep.line("setup/memory", false, &e.to_string());
            return ExitCode::FAILURE;
        }
    };
    let mut only: Vec<String> = std::env::args().skip(1).collect();
    // `--sim`: print the simulator's steps only (runs anywhere, no kernel).
    if only.first().is_some_and(|a| a == "--sim") {
        only.remove(0);
        for (name, f) in scenarios::ALL {
            if only.is_empty() || only.iter().any(|o| o == name) {
                let mut t = Trace::default();
                f(&SimRig::default(), &mut t, &mem);
                for (label, outcome) in &t.steps {
                    println!("# {name}: {label}: {outcome}");
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    for (name, f) in scenarios::ALL {
        if only.is_empty() || only.iter().any(|o| o == name) {
            run_scenario(&mut rep, &mem, name, *f);
        }
    }
    if only.is_empty() || only.iter().any(|o| o == "api") {
        for c in api::run() {
            rep.line(&c.name, c.pass, &c.detail);
        }
    }
    if only.is_empty() || only.iter().any(|o| o == "vfio") {
        let out = vfio::run(&mem);
        for c in out.checks {
            rep.line(&c.name, c.pass, &c.detail);
        }
        if let Some((tk, ts)) = out.traces {
            compare(&mut rep, "vfio-vtd", &tk, &ts);
        }
    }
    // After `vfio`, which leaves the edu device unbound.
    if only.is_empty() || only.iter().any(|o| o == "shared") {
        for c in shared::run() {
            rep.line(&c.name, c.pass, &c.detail);
        }
    }
    println!("# guest-test: {} passed, {} failed", rep.passed, rep.failed);
    if rep.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scenarios drive the simulator to the end without panicking,
    /// and the simulator meets the expectations written for the kernel.
    #[test]
    fn scenarios_on_sim_meet_kernel_expectations() {
        let mem = Mem::new().unwrap();
        for (name, f) in scenarios::ALL {
            let mut t = Trace::default();
            f(&SimRig::default(), &mut t, &mem);
            for c in t.checks {
                assert!(c.pass, "{name}/{}: {}", c.name, c.detail);
            }
        }
    }
}
