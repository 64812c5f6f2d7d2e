//! `viommu-guest-server`: serves the DMA test endpoint to one vfio-user
//! client (QEMU's `vfio-user-pci`) and exits when the client disconnects.
//!
//! ```text
//! viommu-guest-server --socket PATH [--bdf BB:DD.F]
//! ```
//! `--bdf` is where the guest sees the function (default 00:05.0): the
//! requester ID its DMA carries. Log level from `VIOMMU_GUEST_LOG`
//! (error, warn, info, debug, trace; default info), on stderr.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use log::{LevelFilter, Log, Metadata, Record, error, info};
use nesting_core::types::{Bdf, RequesterId};
use viommu_guest_server::backend::{EndpointBackend, irqs, regions};
use viommu_guest_server::passthrough::Passthrough;

/// A stderr logger: one line per record, with the level and module.
struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, r: &Record<'_>) {
        eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

struct Args {
    socket: PathBuf,
    bdf: Bdf,
}

fn parse_bdf(s: &str) -> Option<Bdf> {
    let (bus, rest) = s.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some(Bdf::new(bus, dev, func))
}

fn parse_args() -> Result<Args, String> {
    let mut socket = None;
    let mut bdf = Bdf::new(0, 5, 0);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = it.next().map(PathBuf::from),
            "--bdf" => {
                let v = it.next().unwrap_or_default();
                bdf = parse_bdf(&v).ok_or(format!("bad --bdf {v}"))?;
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket PATH is required")?,
        bdf,
    })
}

fn main() -> ExitCode {
    let level = match std::env::var("VIOMMU_GUEST_LOG").as_deref() {
        Ok("error") => LevelFilter::Error,
        Ok("warn") => LevelFilter::Warn,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "viommu-guest-server: {e}\nusage: viommu-guest-server --socket PATH [--bdf BB:DD.F]"
            );
            return ExitCode::from(2);
        }
    };
    let server = match vfio_user::Server::new(&args.socket, true, irqs(), regions()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen on {}: {e}", args.socket.display());
            return ExitCode::FAILURE;
        }
    };
    info!(
        "DMA test endpoint (requester {}) on {}",
        args.bdf,
        args.socket.display()
    );
    let mut backend =
        EndpointBackend::new(Arc::new(Passthrough::default()), RequesterId::Pci(args.bdf));
    match server.run(&mut backend) {
        Ok(()) => {
            info!("client disconnected");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("server stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
