//! `viommu`: probe a host IOMMU, replay scenario scripts.
//!
//! The command line is parsed with clap (usage errors exit with status 2);
//! the work is the library's. Logs go to stderr through env_logger,
//! filtered by `RUST_LOG` (errors only by default).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::{CommandFactory, Parser, Subcommand};
use viommu::models::MODEL_NAMES;
use viommu::{probe, replay};

/// Guest IOMMUs for Rust VMMs, backed by iommufd: see how a passthrough
/// device would be backed on a host, replay .viommu scenario scripts.
#[derive(Debug, Parser)]
#[command(name = "viommu", version, arg_required_else_help = true)]
#[command(after_help = "Logging: RUST_LOG=debug (or warn, info, trace; errors only by default).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Describe the host IOMMU behind a device and decide whether a
    /// passthrough device behind the guest model would be nested, shadowed
    /// or refused, with the checks that decided it
    Probe(probe::ProbeCommand),
    /// Run .viommu scenario scripts (docs/REPLAY.md)
    Replay(ReplayCommand),
}

/// Exit status and output of `viommu replay`, for `--help`.
const REPLAY_HELP: &str = "Prints every failed check (FAIL LINE: expected X, got Y), each \
passthrough decision, one PASS FILE (N checks) or FAIL FILE (N passed, N failed) line per \
script and, last, N passed, N failed over all scripts.
Exit status: 0 every check held, 1 a check failed, 2 a script error (on stderr with its line \
and reason) or bad arguments.";

#[derive(Debug, clap::Args)]
#[command(after_help = REPLAY_HELP)]
struct ReplayCommand {
    /// Print every passed check too (ok LINE)
    #[arg(short, long)]
    verbose: bool,
    /// Print the model's default options, one KEY=VALUE per line, instead
    /// of replaying
    #[arg(
        long,
        value_name = "MODEL",
        value_parser = PossibleValuesParser::new(MODEL_NAMES),
        conflicts_with_all = ["files", "verbose"]
    )]
    defaults: Option<String>,
    /// Scenario scripts (a file named like an option goes after --)
    #[arg(value_name = "FILE", required_unless_present = "defaults")]
    files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Probe(cmd) => run_probe(cmd),
        Command::Replay(cmd) => run_replay(cmd),
    };
    ExitCode::from(code)
}

/// A usage error found after parsing (a model option, a host profile):
/// reported as clap reports its own, with `viommu probe`'s usage, and exit
/// status 2.
fn probe_usage_error(e: probe::ProbeUsageError) -> ! {
    let mut cmd = Cli::command();
    let probe = cmd
        .find_subcommand_mut("probe")
        .map(|c| c.clone().bin_name("viommu probe"));
    probe
        .unwrap_or(cmd)
        .error(clap::error::ErrorKind::ValueValidation, e)
        .exit()
}

fn run_probe(cmd: &probe::ProbeCommand) -> u8 {
    let args = cmd.resolve().unwrap_or_else(|e| probe_usage_error(e));
    log::debug!("probe: {:?}", args.host);
    let mut out = std::io::stdout().lock();
    let decision = match probe::run(&args, &mut out) {
        Ok(d) => d,
        Err(e) => {
            let _ = out.flush();
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("viommu probe: {msg}");
            return 1;
        }
    };
    let _ = out.flush();
    match cmd.expect {
        Some(want) if want != decision.kind => {
            eprintln!("viommu probe: decision {}, expected {want}", decision.kind);
            1
        }
        _ => 0,
    }
}

fn run_replay(cmd: &ReplayCommand) -> u8 {
    if let Some(model) = &cmd.defaults {
        return match replay::defaults_text(model) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("viommu replay: {e}");
                2
            }
        };
    }
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let options = replay::Options {
        verbose: cmd.verbose,
    };
    let mut runner = replay::Runner::new(options, &mut out, &mut err);
    for f in &cmd.files {
        log::debug!("replaying {}", f.display());
        runner.file(f);
    }
    let outcome = runner.finish();
    u8::try_from(outcome.exit_code).unwrap_or(2)
}
