//! `viommu`: probe a host IOMMU, replay scenario scripts.

use std::io::Write;
use std::process::ExitCode;

use viommu::{probe, replay};

const USAGE: &str = "usage: viommu probe [...]  (viommu probe --help)
       viommu replay FILE...
       viommu replay --defaults vtd|smmuv3|virtio-iommu";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("probe") => run_probe(&args[1..]),
        Some("replay") => run_replay(&args[1..]),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    ExitCode::from(code)
}

fn run_probe(args: &[String]) -> u8 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", probe::USAGE);
        return 0;
    }
    let parsed = match probe::parse_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("viommu probe: {e}\n{}", probe::USAGE);
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    match probe::run(&parsed, &mut out) {
        Ok(_) => 0,
        Err(e) => {
            let _ = out.flush();
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("viommu probe: {msg}");
            1
        }
    }
}

fn run_replay(args: &[String]) -> u8 {
    match args {
        [flag, model] if flag == "--defaults" => match replay::defaults_text(model) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("viommu replay: {e}");
                2
            }
        },
        [] => {
            eprintln!("{USAGE}");
            2
        }
        files => {
            let mut worst = 0;
            let mut total = replay::Summary::default();
            let mut out = std::io::stdout().lock();
            for f in files {
                if files.len() > 1 {
                    let _ = writeln!(out, "== {f}");
                }
                let text = match std::fs::read_to_string(f) {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = out.flush();
                        eprintln!("viommu replay: {f}: {e}");
                        worst = 2;
                        continue;
                    }
                };
                let result = replay::run_script(&text, &mut out);
                match &result {
                    Ok(s) => {
                        total.passed += s.passed;
                        total.failed += s.failed;
                    }
                    Err(e) => {
                        let _ = out.flush();
                        eprintln!("viommu replay: {f}: script error at {e}");
                    }
                }
                worst = worst.max(replay::exit_code(&result));
            }
            if files.len() > 1 {
                // The last line is always the totals (REPLAY.md).
                let _ = writeln!(out, "{} passed, {} failed", total.passed, total.failed);
            }
            worst as u8
        }
    }
}
