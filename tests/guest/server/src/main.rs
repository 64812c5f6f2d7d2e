//! `viommu-guest-server`: serves the harness's PCI functions to QEMU's
//! `vfio-user-pci` devices, one UNIX socket per function, and exits when
//! the clients disconnect.
//!
//! ```text
//! viommu-guest-server --socket PATH [--bdf BB:DD.F]
//!         [--virtio-iommu PATH [--iommu-bdf BB:DD.F]]
//!         [--vtd PATH [--vtd-mode legacy|scalable-fs|scalable-ss]]
//! viommu-guest-server --write-viot FILE [--bdf BB:DD.F] [--iommu-bdf BB:DD.F]
//! viommu-guest-server --write-dmar FILE --vtd-base ADDR [--bdf BB:DD.F]
//! ```
//! `--socket` serves the DMA test endpoint; `--bdf` is where the guest sees
//! it (default 00:05.0). Alone, its DMA is untranslated (IOVA = GPA). With
//! `--virtio-iommu`, a virtio-iommu function (default 00:04.0) is served on
//! the second socket and translates the endpoint's DMA, the endpoint ID
//! being the endpoint's requester ID. `--write-viot` writes the VIOT body
//! (for QEMU's `-acpitable sig=VIOT,data=FILE`) describing that topology.
//! With `--vtd`, the VT-d model's register page is BAR0 of a function on
//! that socket and the unit translates the endpoint's DMA (source ID =
//! requester ID); `--write-dmar` writes the DMAR body whose one DRHD has
//! its base at ADDR (the BAR's address, hex) and the endpoint (on bus 0)
//! as its only device.
//!
//! `--vtd-mode` picks the VT-d unit's configuration (Linux 7.2 uses
//! first-stage tables whenever the unit is in scalable mode and offers
//! ECAP.FSTS, second-stage otherwise):
//! - `legacy`: legacy-mode root/context tables (ECAP.SMTS clear), no
//!   caching mode (`model vtd mode=legacy cm=0`); second-stage tables.
//! - `scalable-fs`: scalable mode offering first-stage tables only,
//!   caching mode off (`mode=scalable flts=1 slts=0 cm=0`): Linux's DMA
//!   domains are first-stage.
//! - `scalable-ss`: scalable mode offering second-stage tables only,
//!   caching mode on (`mode=scalable flts=0 slts=1 cm=1`): Linux's domains
//!   are second-stage and it invalidates on every map.
//!
//! Without `--vtd-mode` the unit has the model's defaults (scalable mode,
//! first-stage tables, caching mode on).
//!
//! A reset of the VT-d function (QEMU resets every function on a system
//! reset, a guest reboot included) is a power-on reset of the whole unit;
//! a reset of the virtio-iommu function resets the virtio device. The
//! server keeps serving across reboots and exits when QEMU disconnects.
//! Log level from `VIOMMU_GUEST_LOG` (error, warn, info, debug, trace;
//! default info), on stderr.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use log::{LevelFilter, Log, Metadata, Record, error, info};
use nesting_core::guest::{VirtioIommuConfig, VtdConfig};
use nesting_core::iotlb::Translate;
use nesting_core::types::{Bdf, EndpointId, RequesterId};
use viommu_guest_server::acpi::{PciRange, dmar_body, viot_body};
use viommu_guest_server::backend::{EndpointBackend, irqs, regions};
use viommu_guest_server::passthrough::Passthrough;
use viommu_guest_server::virtio_backend::{self, VirtioBackend};
use viommu_guest_server::virtio_pci::iommu::connect_interrupts;
use viommu_guest_server::vtd_fn::{self, HarnessVtd, VtdBackend, VtdMode};
use virtio_iommu::{DeviceOptions, VirtioIommu};
use vm_memory::GuestMemoryMmap;
use vtd::Vtd;

/// Address width of the harness's VT-d unit (the model's default).
const VTD_ADDRESS_WIDTH: u8 = 48;

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
    socket: Option<PathBuf>,
    bdf: Bdf,
    virtio_iommu: Option<PathBuf>,
    iommu_bdf: Bdf,
    write_viot: Option<PathBuf>,
    vtd: Option<PathBuf>,
    write_dmar: Option<PathBuf>,
    vtd_base: u64,
    vtd_mode: Option<VtdMode>,
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
    let mut a = Args {
        socket: None,
        bdf: Bdf::new(0, 5, 0),
        virtio_iommu: None,
        iommu_bdf: Bdf::new(0, 4, 0),
        write_viot: None,
        vtd: None,
        write_dmar: None,
        vtd_base: 0,
        vtd_mode: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => a.socket = Some(PathBuf::from(value()?)),
            "--virtio-iommu" => a.virtio_iommu = Some(PathBuf::from(value()?)),
            "--write-viot" => a.write_viot = Some(PathBuf::from(value()?)),
            "--vtd" => a.vtd = Some(PathBuf::from(value()?)),
            "--write-dmar" => a.write_dmar = Some(PathBuf::from(value()?)),
            "--vtd-base" => {
                let v = value()?;
                a.vtd_base = u64::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|_| format!("bad --vtd-base {v}"))?;
            }
            "--vtd-mode" => {
                let v = value()?;
                a.vtd_mode = Some(VtdMode::parse(&v).ok_or(format!(
                    "bad --vtd-mode {v} (legacy, scalable-fs or scalable-ss)"
                ))?);
            }
            "--bdf" => {
                let v = value()?;
                a.bdf = parse_bdf(&v).ok_or(format!("bad --bdf {v}"))?;
            }
            "--iommu-bdf" => {
                let v = value()?;
                a.iommu_bdf = parse_bdf(&v).ok_or(format!("bad --iommu-bdf {v}"))?;
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if a.socket.is_none() && a.write_viot.is_none() && a.write_dmar.is_none() {
        return Err("--socket PATH, --write-viot FILE or --write-dmar FILE is required".into());
    }
    if a.vtd.is_some() && a.virtio_iommu.is_some() {
        return Err("--vtd and --virtio-iommu exclude each other".into());
    }
    Ok(a)
}

/// Serves the endpoint on `socket`, its DMA translated by `model` as `rid`.
fn serve_endpoint<T: Translate>(socket: &Path, model: Arc<T>, rid: RequesterId) -> bool {
    let server = match vfio_user::Server::new(socket, true, irqs(), regions()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen on {}: {e}", socket.display());
            return false;
        }
    };
    info!("DMA test endpoint ({rid}) on {}", socket.display());
    let mut backend = EndpointBackend::new(model, rid);
    match server.run(&mut backend) {
        Ok(()) => {
            info!("endpoint: client disconnected");
            true
        }
        Err(e) => {
            error!("endpoint server stopped: {e}");
            false
        }
    }
}

/// The virtio-iommu model the guest drives, with defaults for a test
/// device (no bypass: DMA is refused until the driver attaches).
fn virtio_iommu() -> Result<Arc<VirtioIommu<GuestMemoryMmap>>, String> {
    VirtioIommu::new(&VirtioIommuConfig::default(), DeviceOptions::default())
        .map(Arc::new)
        .map_err(|e| format!("virtio-iommu model: {e}"))
}

/// Binds the virtio-iommu function's socket and serves it on a thread.
fn spawn_virtio_iommu(
    socket: &Path,
    dev: &Arc<VirtioIommu<GuestMemoryMmap>>,
) -> Result<std::thread::JoinHandle<bool>, String> {
    let server = vfio_user::Server::new(
        socket,
        true,
        virtio_backend::irqs(),
        virtio_backend::regions(),
    )
    .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    info!("virtio-iommu on {}", socket.display());
    let d = Arc::clone(dev);
    let mut backend = VirtioBackend::new(Arc::clone(dev), Box::new(move |m| d.set_memory(m)));
    connect_interrupts(dev, backend.transport().irq_router());
    Ok(std::thread::spawn(move || match server.run(&mut backend) {
        Ok(()) => {
            info!("virtio-iommu: client disconnected");
            true
        }
        Err(e) => {
            error!("virtio-iommu server stopped: {e}");
            false
        }
    }))
}

fn write_viot(path: &PathBuf, a: &Args) -> Result<(), String> {
    let range = PciRange {
        endpoint_start: u32::from(a.bdf.0),
        bdf_start: a.bdf.0,
        bdf_end: a.bdf.0,
    };
    let body = viot_body(a.iommu_bdf.0, &[range]).map_err(|e| e.to_string())?;
    std::fs::write(path, body).map_err(|e| format!("{}: {e}", path.display()))
}

/// Binds the VT-d register function's socket and serves it on a thread.
fn spawn_vtd(
    socket: &Path,
    unit: &Arc<HarnessVtd>,
) -> Result<std::thread::JoinHandle<bool>, String> {
    let server = vfio_user::Server::new(socket, true, vtd_fn::irqs(), vtd_fn::regions())
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    info!("VT-d registers on {}", socket.display());
    let mut backend = VtdBackend::new(Arc::clone(unit));
    Ok(std::thread::spawn(move || match server.run(&mut backend) {
        Ok(()) => {
            info!("vtd: client disconnected");
            true
        }
        Err(e) => {
            error!("VT-d server stopped: {e}");
            false
        }
    }))
}

fn run(a: &Args) -> Result<bool, String> {
    if let Some(path) = &a.write_viot {
        write_viot(path, a)?;
    }
    if let Some(path) = &a.write_dmar {
        let dev = (a.bdf.devfn() >> 3, a.bdf.devfn() & 7);
        let body = dmar_body(VTD_ADDRESS_WIDTH, a.vtd_base, &[dev]);
        std::fs::write(path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let Some(socket) = &a.socket else {
        return Ok(true);
    };
    if let Some(vtd_socket) = &a.vtd {
        // Without a mode, the model's defaults (scalable mode, first
        // stage, caching mode, 48-bit); the width must match the DMAR's
        // Host Address Width.
        let cfg = match a.vtd_mode {
            Some(m) => m.config().map_err(|e| format!("VT-d mode {m:?}: {e}"))?,
            None => VtdConfig::default(),
        };
        if cfg.aw.bits() != u32::from(VTD_ADDRESS_WIDTH) {
            return Err(format!("VT-d width {} is not the DMAR's", cfg.aw.bits()));
        }
        let unit = Arc::new(HarnessVtd::new(Vtd::new(cfg)));
        let vtd = spawn_vtd(vtd_socket, &unit)?;
        let ok = serve_endpoint(socket, unit, RequesterId::Pci(a.bdf));
        return Ok(vtd.join().unwrap_or(false) && ok);
    }
    let Some(viommu_socket) = &a.virtio_iommu else {
        let model = Arc::new(Passthrough::default());
        return Ok(serve_endpoint(socket, model, RequesterId::Pci(a.bdf)));
    };
    let dev = virtio_iommu()?;
    let virtio = spawn_virtio_iommu(viommu_socket, &dev)?;
    let rid = RequesterId::Endpoint(EndpointId(u32::from(a.bdf.0)));
    let ok = serve_endpoint(socket, dev, rid);
    Ok(virtio.join().unwrap_or(false) && ok)
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
            eprintln!("viommu-guest-server: {e} (see the crate docs for usage)");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
