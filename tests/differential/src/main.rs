//! `smmuv3-differential`: runs `.viommu` SMMUv3 scenarios and generated
//! cases on our model and on QEMU's arm-smmuv3, prints every
//! disagreement (one line each, `DIFF NAME:LINE ...`) with its triage,
//! and ends with `N passed, N failed` (a scenario fails on an unexpected
//! disagreement or a harness error). Exit status 0 when nothing failed,
//! 1 otherwise, 2 when QEMU cannot be started at all.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use smmuv3_differential::generate;
use smmuv3_differential::qemu::{QemuSpec, is_wrapper, ram_file_path};
use smmuv3_differential::run::{self, Report, RunError};
use smmuv3_differential::scenario::Scenario;

#[derive(Parser, Debug)]
#[command(about = "Differential test of the SMMUv3 model against QEMU's arm-smmuv3")]
struct Args {
    /// QEMU to run: the repository's scripts/qemu wrapper (default) or a
    /// qemu-system-aarch64 (QEMU >= 10.1, for iommu-testdev).
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Generated cases per QEMU stage setting (stage=1, 2, nested).
    #[arg(long, default_value_t = 100)]
    cases: u32,
    /// Seed of the generated cases (the same seed gives the same cases).
    #[arg(long, default_value_t = 0x5eed_0012)]
    seed: u64,
    /// Write every generated case that fails into this directory.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Also print skipped directives.
    #[arg(short, long)]
    verbose: bool,
    /// Do not check the scripts' own expectations about our model (for
    /// generated cases kept with --save, whose expectations are dummies).
    #[arg(long)]
    no_checks: bool,
    /// Scenario scripts; default: tests/differential/scenarios/*.viommu.
    scripts: Vec<PathBuf>,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn default_scripts() -> Vec<PathBuf> {
    let dir = manifest_dir().join("scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "viommu"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[derive(Default)]
struct Totals {
    passed: usize,
    failed: usize,
    expected: usize,
    unexpected: usize,
    dma_agreed: usize,
    skipped: usize,
    /// Scenarios that could not run (a harness or QEMU error).
    errors: usize,
}

fn spec_for(s: &Scenario, program: &Path, latest_machine: bool) -> QemuSpec {
    QemuSpec {
        program: program.to_path_buf(),
        wrapper: is_wrapper(program),
        stage: s.stage,
        ram: s.ram,
        devfns: s.devfns(),
        latest_machine,
        ram_file: ram_file_path(),
    }
}

fn source_line(s: &Scenario, line: usize) -> &str {
    if line == 0 {
        return "(end of scenario)";
    }
    s.text.lines().nth(line - 1).map_or("", str::trim)
}

/// Prints a scenario's outcome; returns whether it passed.
fn print_report(s: &Scenario, r: &Report, verbose: bool, t: &mut Totals) -> bool {
    for d in &r.diffs {
        let status = match d.departure {
            Some(dep) => {
                t.expected += 1;
                format!(
                    "expected: {} (docs/smmuv3-differential.md#{})",
                    dep.key, dep.doc
                )
            }
            None => {
                t.unexpected += 1;
                "UNEXPECTED".to_string()
            }
        };
        println!(
            "DIFF {}:{} `{}`: {} -- {status}",
            s.name,
            d.line,
            source_line(s, d.line),
            d.text()
        );
        if let Some(e) = &d.evidence {
            println!("  evidence: {e}");
        }
    }
    if verbose {
        for (line, why) in &r.skipped {
            println!("skip {}:{line}: {why}", s.name);
        }
    }
    t.skipped += r.skipped.len();
    t.dma_agreed += r.dma_agreed;
    let expected = r.diffs.len() - r.unexpected();
    let ok = r.unexpected() == 0;
    println!(
        "{} {} ({} steps, {} DMA agreed, {} expected departures, {} unexpected, {} skipped)",
        if ok { "PASS" } else { "FAIL" },
        s.name,
        r.steps,
        r.dma_agreed,
        expected,
        r.unexpected(),
        r.skipped.len()
    );
    ok
}

fn run_one(s: &Scenario, spec: &QemuSpec, args: &Args, t: &mut Totals) -> Result<bool, RunError> {
    let r = run::run(s, spec)?;
    let ok = print_report(s, &r, args.verbose, t);
    if ok {
        t.passed += 1;
    } else {
        t.failed += 1;
    }
    Ok(ok)
}

/// The one place virt's machine-level override shows: stage=1 asked for
/// on the latest virt, IDR0's stage bits read.
const STAGE_OVERRIDE_PROBE: &str = "\
model smmuv3 stages=s1
ram 0x40000000 0x1000
# virt >= 9.2 sets arm-smmuv3.stage=nested itself: -global stage=1 is lost.
mmio-read32 0x0 & 0x3 == 0x2
";

/// The built-in probe and the scripts, parsed; `true` marks a scenario
/// run on the latest `virt`.
fn load(args: &Args, t: &mut Totals) -> Vec<(Scenario, bool)> {
    let scripts = if args.scripts.is_empty() {
        default_scripts()
    } else {
        args.scripts.clone()
    };
    let mut scenarios = Vec::new();
    match Scenario::parse("builtin:virt-stage-override", STAGE_OVERRIDE_PROBE) {
        Ok(s) => scenarios.push((s, true)),
        Err(e) => {
            println!("ERROR builtin probe: {e}");
            t.errors += 1;
        }
    }
    for path in &scripts {
        let name = path
            .strip_prefix(manifest_dir())
            .unwrap_or(path)
            .display()
            .to_string();
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Scenario::parse(&name, &text).map_err(|e| e.to_string()))
        {
            Ok(mut s) => {
                s.checks = !args.no_checks;
                scenarios.push((s, false));
            }
            Err(e) => {
                println!("ERROR {name}: {e}");
                t.errors += 1;
            }
        }
    }
    scenarios
}

/// The generated cases; a failing one is saved when `--save` says where.
fn run_generated(args: &Args, program: &Path, t: &mut Totals) {
    for case in generate::cases(args.seed, args.cases) {
        let s = match Scenario::parse(&case.name, &case.text) {
            Ok(mut s) => {
                s.checks = false;
                s
            }
            Err(e) => {
                println!("ERROR {}: generated an invalid script: {e}", case.name);
                t.errors += 1;
                continue;
            }
        };
        match run_one(&s, &spec_for(&s, program, false), args, t) {
            Ok(true) => {}
            Ok(false) => save(args, &s),
            Err(e) => {
                println!("ERROR {}: {e}", s.name);
                t.errors += 1;
                save(args, &s);
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let program = args
        .qemu
        .clone()
        .unwrap_or_else(|| manifest_dir().join("../../scripts/qemu"));
    let mut t = Totals::default();
    let mut started = false;
    for (s, latest) in &load(&args, &mut t) {
        match run_one(s, &spec_for(s, &program, *latest), &args, &mut t) {
            Ok(_) => started = true,
            Err(e) => {
                println!("ERROR {}: {e}", s.name);
                t.errors += 1;
                if !started && matches!(e, RunError::Qemu(_)) {
                    println!("{} passed, {} failed", t.passed, t.failed + t.errors);
                    println!("QEMU could not run the first scenario: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    run_generated(&args, &program, &mut t);
    println!(
        "# {} DMA writes agreed, {} expected departures, {} unexpected disagreements, {} directives skipped",
        t.dma_agreed, t.expected, t.unexpected, t.skipped
    );
    let failed = t.failed + t.errors;
    println!("{} passed, {failed} failed", t.passed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn save(args: &Args, s: &Scenario) {
    let Some(dir) = &args.save else {
        println!("  (rerun with --save DIR to keep the script of {})", s.name);
        return;
    };
    let path = dir.join(format!("{}.viommu", s.name.replace([':', '/'], "-")));
    let text = format!(
        "# {} (seed {:#x}): its `=> fault` expectations are dummies, run it with\n\
         # cargo run -p smmuv3-differential -- --cases 0 --no-checks FILE\n{}",
        s.name, args.seed, s.text
    );
    match std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => println!("  saved {}", path.display()),
        Err(e) => println!("  could not save {}: {e}", path.display()),
    }
}
