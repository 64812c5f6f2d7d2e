//! `viommu`: probe a host IOMMU, replay scenario scripts.

use std::io::Write;
use std::process::ExitCode;

use viommu::{probe, replay};

const USAGE: &str = "usage: viommu probe [...]  (viommu probe --help)
       viommu replay [-v] FILE...
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
        args => {
            let verbose = matches!(args.first().map(String::as_str), Some("-v" | "--verbose"));
            let files = if verbose { &args[1..] } else { args };
            if files.is_empty() {
                eprintln!("{USAGE}");
                return 2;
            }
            let mut out = std::io::stdout().lock();
            let mut err = std::io::stderr().lock();
            let mut runner = replay::Runner::new(replay::Options { verbose }, &mut out, &mut err);
            for f in files {
                runner.file(std::path::Path::new(f));
            }
            runner.finish().exit_code as u8
        }
    }
}
