//! `viommu-guest-server`: serves the harness's PCI functions to QEMU's
//! `vfio-user-pci` devices, one UNIX socket per function, and exits when
//! the clients disconnect.
//!
//! ```text
//! viommu-guest-server --socket PATH [--bdf BB:DD.F]
//!         [--socket2 PATH [--bdf2 BB:DD.F]]
//!         [--virtio-iommu PATH [--iommu-bdf BB:DD.F]]
//!         [--vtd PATH [--vtd-mode legacy|scalable-fs|scalable-ss]]
//!         [--smmu PATH [--smmu-bdf BB:DD.F] [--smmu-option KEY=VALUE]...]
//! viommu-guest-server --write-viot FILE [--bdf BB:DD.F] [--bdf2 BB:DD.F] [--iommu-bdf BB:DD.F]
//! viommu-guest-server --write-dmar FILE --vtd-base ADDR [--bdf BB:DD.F] [--bdf2 BB:DD.F]
//! viommu-guest-server --write-smmu-dtb FILE --smmu-base ADDR --its-phandle N [--smmu-bdf BB:DD.F]
//!         [--bdf BB:DD.F] [--bdf2 BB:DD.F]
//! ```
//! `--socket` serves the DMA test endpoint; `--bdf` is where the guest sees
//! it (default 00:05.0). `--socket2` serves a second DMA test endpoint
//! (same BAR interface) at `--bdf2` (default 00:06.0), translated by the
//! same IOMMU as the first: VT-d source ID and virtio-iommu endpoint ID
//! are its requester ID. `--write-viot` and `--write-dmar` name both
//! endpoints when `--bdf2` is given. Alone, an endpoint's DMA is
//! untranslated (IOVA = GPA). With
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
//! With `--smmu`, the SMMUv3 model's two register pages are BAR0 of a
//! function (default 00:03.0, `--smmu-bdf`) on that socket and the SMMU
//! translates the endpoints' DMA (StreamID = requester ID). Each
//! `--smmu-option` is a model option as `.viommu` scripts write it
//! (`stages=s2`, `gran=64k`; REPLAY.md "Model options"); the others keep
//! the model's defaults. `--write-smmu-dtb` writes, with the library's
//! device-tree builders, a tree (the SMMU node with its `reg` at ADDR, the
//! BAR's address, its `msi-parent` the ITS of phandle N, and the PCIe
//! host's `iommu-map` naming the endpoints) that the harness merges into
//! QEMU's own `virt` tree.
//!
//! A reset of the VT-d function (QEMU resets every function on a system
//! reset, a guest reboot included) is a power-on reset of the whole unit;
//! a reset of the virtio-iommu function resets the virtio device. The
//! server keeps serving across reboots and exits when QEMU disconnects.
//! A reset of the SMMUv3 function is a reset of the SMMU.
//! With `VIOMMU_RECORD=PATH`, the guest's traffic with the IOMMU model
//! (VT-d, SMMUv3 or virtio-iommu) is recorded as a `.viommu` script at PATH, and
//! after each reset of the unit at PATH with `-bootN` before `.viommu`
//! (see the library's `record` module).
//!
//! Log level from `VIOMMU_GUEST_LOG` (error, warn, info, debug, trace;
//! default info), on stderr. With `VIOMMU_ACCOUNT=1` (`tests/guest/bench`)
//! the server counts its messages, its threads' CPU time and the model's
//! own time, and prints a snapshot (`ACCOUNT mark=...`) on stderr at each
//! write of an endpoint's SCRATCH register and at exit (see the library's
//! `account` module).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use log::{LevelFilter, Log, Metadata, Record, error, info};
use nesting_core::iotlb::Translate;
use nesting_core::options::ModelOptions;
use nesting_core::types::{Bdf, EndpointId, RequesterId};
use smmuv3::{Smmuv3, Smmuv3Config};
use viommu_guest_server::account::{self, ACCOUNTS, Accounted, Function};
use viommu_guest_server::backend::{EndpointBackend, irqs, regions};
use viommu_guest_server::passthrough::Passthrough;
use viommu_guest_server::record::Recorder;
use viommu_guest_server::smmu_fn::{self, HarnessSmmu, SmmuBackend, SmmuNode};
use viommu_guest_server::virtio_backend::{self, VirtioBackend};
use viommu_guest_server::virtio_pci::iommu::connect_interrupts;
use viommu_guest_server::virtio_record::RecordedVirtio;
use viommu_guest_server::vtd_fn::{self, HarnessVtd, VtdBackend, VtdMode};
use virtio_iommu::VirtioIommuConfig;
use virtio_iommu::acpi::{Viot, ViotIommu, ViotPciRange};
use virtio_iommu::{DeviceOptions, VirtioIommu};
use vtd::Vtd;
use vtd::VtdConfig;
use vtd::acpi::{Dmar, Drhd};

/// Address width of the harness's VT-d unit (the model's default).
const VTD_ADDRESS_WIDTH: u8 = 48;
/// QEMU's Arm `virt` machine (hw/arm/virt.c): the PCIe host node of the
/// tree it builds (`-machine dumpdtb=FILE`), a child of the root.
const VIRT_PCIE_NODE: &str = "pcie@10000000";

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
    socket2: Option<PathBuf>,
    bdf2: Option<Bdf>,
    virtio_iommu: Option<PathBuf>,
    iommu_bdf: Bdf,
    write_viot: Option<PathBuf>,
    vtd: Option<PathBuf>,
    write_dmar: Option<PathBuf>,
    vtd_base: u64,
    vtd_mode: Option<VtdMode>,
    smmu: Option<PathBuf>,
    smmu_bdf: Bdf,
    smmu_options: Vec<String>,
    write_smmu_dtb: Option<PathBuf>,
    smmu_base: Option<u64>,
    its_phandle: Option<u32>,
}

/// A number as `fdtget -t u` prints it (decimal), or hex with `0x`.
fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_bdf(s: &str) -> Option<Bdf> {
    let (bus, rest) = s.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = u8::from_str_radix(func, 16).ok().filter(|f| *f < 8)?;
    Some(Bdf::new(bus, dev, func))
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        socket: None,
        bdf: Bdf::new(0, 5, 0),
        socket2: None,
        bdf2: None,
        virtio_iommu: None,
        iommu_bdf: Bdf::new(0, 4, 0),
        write_viot: None,
        vtd: None,
        write_dmar: None,
        vtd_base: 0,
        vtd_mode: None,
        smmu: None,
        smmu_bdf: Bdf::new(0, 3, 0),
        smmu_options: Vec::new(),
        write_smmu_dtb: None,
        smmu_base: None,
        its_phandle: None,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => a.socket = Some(PathBuf::from(value()?)),
            "--socket2" => a.socket2 = Some(PathBuf::from(value()?)),
            "--bdf2" => {
                let v = value()?;
                a.bdf2 = Some(parse_bdf(&v).ok_or(format!("bad --bdf2 {v}"))?);
            }
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
            "--smmu" => a.smmu = Some(PathBuf::from(value()?)),
            "--smmu-bdf" => {
                let v = value()?;
                a.smmu_bdf = parse_bdf(&v).ok_or(format!("bad --smmu-bdf {v}"))?;
            }
            "--smmu-option" => a.smmu_options.push(value()?),
            "--write-smmu-dtb" => a.write_smmu_dtb = Some(PathBuf::from(value()?)),
            "--its-phandle" => {
                let v = value()?;
                a.its_phandle = Some(parse_u32(&v).ok_or(format!("bad --its-phandle {v}"))?);
            }
            "--smmu-base" => {
                let v = value()?;
                a.smmu_base = Some(
                    u64::from_str_radix(v.trim_start_matches("0x"), 16)
                        .map_err(|_| format!("bad --smmu-base {v}"))?,
                );
            }
            "--iommu-bdf" => {
                let v = value()?;
                a.iommu_bdf = parse_bdf(&v).ok_or(format!("bad --iommu-bdf {v}"))?;
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if a.socket.is_none()
        && a.write_viot.is_none()
        && a.write_dmar.is_none()
        && a.write_smmu_dtb.is_none()
    {
        return Err(
            "--socket PATH, --write-viot FILE, --write-dmar FILE or --write-smmu-dtb FILE \
             is required"
                .into(),
        );
    }
    if a.write_smmu_dtb.is_some() && (a.smmu_base.is_none() || a.its_phandle.is_none()) {
        return Err("--write-smmu-dtb needs --smmu-base ADDR and --its-phandle N".into());
    }
    if a.socket2.is_some() && a.socket.is_none() {
        return Err("--socket2 needs --socket".into());
    }
    if a.socket2.is_some() && a.bdf2.is_none() {
        a.bdf2 = Some(Bdf::new(0, 6, 0));
    }
    if a.bdf2 == Some(a.bdf) {
        return Err("--bdf2 must differ from --bdf".into());
    }
    let iommus = [a.vtd.is_some(), a.virtio_iommu.is_some(), a.smmu.is_some()];
    if iommus.iter().filter(|x| **x).count() > 1 {
        return Err("--vtd, --virtio-iommu and --smmu exclude each other".into());
    }
    if endpoint_bdfs(&a).contains(&a.smmu_bdf) {
        return Err("--smmu-bdf must differ from the endpoints' BDFs".into());
    }
    smmu_config(&a)?;
    Ok(a)
}

/// Serves the endpoint on `socket`, its DMA translated by `model` as `rid`,
/// its messages counted as `function`'s.
fn serve_endpoint<T: Translate>(
    socket: &Path,
    model: Arc<T>,
    rid: RequesterId,
    function: Function,
) -> bool {
    let server = match vfio_user::Server::new(socket, true, irqs(), regions()) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen on {}: {e}", socket.display());
            return false;
        }
    };
    info!("DMA test endpoint ({rid}) on {}", socket.display());
    let mut backend = Accounted::new(function, EndpointBackend::new(model, rid));
    let served = server.run(&mut backend);
    ACCOUNTS.serving_done(function);
    match served {
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

/// Serves a second endpoint on a thread (see [`serve_endpoint`]).
fn spawn_endpoint<T: Translate + Send + Sync + 'static>(
    socket: &Path,
    model: &Arc<T>,
    rid: RequesterId,
) -> std::thread::JoinHandle<bool> {
    let (socket, model) = (socket.to_path_buf(), Arc::clone(model));
    std::thread::spawn(move || serve_endpoint(&socket, model, rid, Function::Endpoint2))
}

/// The endpoints' BDFs: the first, and the second when given.
fn endpoint_bdfs(a: &Args) -> Vec<Bdf> {
    std::iter::once(a.bdf).chain(a.bdf2).collect()
}

/// Serves every endpoint, the first on this thread, all translated by
/// `model` with the requester ID `rid` makes of each BDF.
fn serve_endpoints<T: Translate + Send + Sync + 'static>(
    a: &Args,
    socket: &Path,
    model: &Arc<T>,
    rid: impl Fn(Bdf) -> RequesterId,
) -> bool {
    let second = match (&a.socket2, a.bdf2) {
        (Some(s), Some(b)) => Some(spawn_endpoint(s, model, rid(b))),
        _ => None,
    };
    let ok = serve_endpoint(socket, Arc::clone(model), rid(a.bdf), Function::Endpoint);
    second.is_none_or(|t| t.join().unwrap_or(false)) && ok
}

/// Serves the IOMMU's function until the client goes, then keeps the
/// serving thread's CPU time (see [`account`]).
fn serve_iommu(
    server: &vfio_user::Server,
    backend: &mut dyn vfio_user::ServerBackend,
) -> Result<(), vfio_user::Error> {
    let served = server.run(backend);
    ACCOUNTS.serving_done(Function::Iommu);
    served
}

/// The virtio-iommu model the guest drives, with defaults for a test
/// device (no bypass: DMA is refused until the driver attaches), recorded
/// when `VIOMMU_RECORD` asks for it.
fn virtio_iommu() -> Result<Arc<RecordedVirtio>, String> {
    let cfg = VirtioIommuConfig::default();
    let dev = VirtioIommu::new(&cfg, DeviceOptions::default())
        .map_err(|e| format!("virtio-iommu model: {e}"))?;
    let recorder = Recorder::from_env(&cfg);
    Ok(Arc::new(RecordedVirtio::new(dev, recorder)))
}

/// Binds the virtio-iommu function's socket and serves it on a thread.
fn spawn_virtio_iommu(
    socket: &Path,
    dev: &Arc<RecordedVirtio>,
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
    let backend = VirtioBackend::new(Arc::clone(dev), Box::new(move |m| d.set_memory(m)));
    connect_interrupts(dev.device(), backend.transport().irq_router());
    let mut backend = Accounted::new(Function::Iommu, backend);
    Ok(std::thread::spawn(move || {
        match serve_iommu(&server, &mut backend) {
            Ok(()) => {
                info!("virtio-iommu: client disconnected");
                true
            }
            Err(e) => {
                error!("virtio-iommu server stopped: {e}");
                false
            }
        }
    }))
}

/// The VIOT body (virtio_iommu::acpi): the virtio-pci IOMMU at
/// `--iommu-bdf`, one PCI range per endpoint, endpoint ID = requester ID.
fn viot_for(a: &Args) -> Result<Vec<u8>, String> {
    let mut viot = Viot::default();
    let iommu = viot.add_iommu(ViotIommu::Pci {
        segment: 0,
        bdf: a.iommu_bdf,
    });
    viot.pci_ranges = endpoint_bdfs(a)
        .into_iter()
        .map(|b| ViotPciRange::by_requester_id(iommu, 0, b, b))
        .collect();
    viot.body().map_err(|e| format!("VIOT: {e}"))
}

/// The DMAR body (vtd::acpi): one DRHD at `--vtd-base`, without
/// INCLUDE_PCI_ALL, naming every endpoint. (QEMU's own devices, such as
/// q35's AHCI, do not translate their DMA through our model and must stay
/// outside.) No interrupt remapping is claimed: the model has none.
fn dmar_for(a: &Args) -> Result<Vec<u8>, String> {
    let mut dmar = Dmar::new(VTD_ADDRESS_WIDTH);
    dmar.drhds
        .push(Drhd::for_devices(a.vtd_base, 0, &endpoint_bdfs(a)));
    dmar.body().map_err(|e| format!("DMAR: {e}"))
}

/// The SMMU's configuration: the model's defaults with `--smmu-option`s.
fn smmu_config(a: &Args) -> Result<Smmuv3Config, String> {
    let opts: Vec<&str> = a.smmu_options.iter().map(String::as_str).collect();
    Smmuv3Config::from_options(&opts).map_err(|e| format!("--smmu-option: {e}"))
}

/// The device tree of the SMMU at `--smmu-base` (see
/// [`smmu_fn::dtb_fragment`]).
fn smmu_dtb_for(a: &Args) -> Result<Vec<u8>, String> {
    smmu_fn::dtb_fragment(&SmmuNode {
        base: a.smmu_base.unwrap_or(0),
        function_rid: a.smmu_bdf.0,
        endpoints: endpoint_bdfs(a).iter().map(|b| b.0).collect(),
        its_phandle: a.its_phandle.unwrap_or(0),
        pcie_node: VIRT_PCIE_NODE.into(),
    })
    .map_err(|e| format!("SMMU device tree: {e}"))
}

/// Binds the SMMUv3 register function's socket and serves it on a thread.
fn spawn_smmu(
    socket: &Path,
    unit: &Arc<HarnessSmmu>,
) -> Result<std::thread::JoinHandle<bool>, String> {
    let server = vfio_user::Server::new(socket, true, smmu_fn::irqs(), smmu_fn::regions())
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    info!("SMMUv3 registers on {}", socket.display());
    let mut backend = Accounted::new(Function::Iommu, SmmuBackend::new(Arc::clone(unit)));
    Ok(std::thread::spawn(move || {
        match serve_iommu(&server, &mut backend) {
            Ok(()) => {
                info!("smmuv3: client disconnected");
                true
            }
            Err(e) => {
                error!("SMMUv3 server stopped: {e}");
                false
            }
        }
    }))
}

/// Serves the SMMU on `smmu_socket` and the endpoints behind it.
fn run_smmu(a: &Args, socket: &Path, smmu_socket: &Path) -> Result<bool, String> {
    let cfg = smmu_config(a)?;
    info!("SMMUv3: {}", cfg.directive());
    let recorder = Recorder::from_env(&cfg);
    let mut unit = HarnessSmmu::new(Smmuv3::new(cfg));
    if let Some(r) = recorder {
        unit = unit.with_recorder(r);
    }
    let unit = Arc::new(unit);
    let smmu = spawn_smmu(smmu_socket, &unit)?;
    let ok = serve_endpoints(a, socket, &unit, smmu_fn::stream_of);
    Ok(smmu.join().unwrap_or(false) && ok)
}

/// Binds the VT-d register function's socket and serves it on a thread.
fn spawn_vtd(
    socket: &Path,
    unit: &Arc<HarnessVtd>,
) -> Result<std::thread::JoinHandle<bool>, String> {
    let server = vfio_user::Server::new(socket, true, vtd_fn::irqs(), vtd_fn::regions())
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    info!("VT-d registers on {}", socket.display());
    let mut backend = Accounted::new(Function::Iommu, VtdBackend::new(Arc::clone(unit)));
    Ok(std::thread::spawn(move || {
        match serve_iommu(&server, &mut backend) {
            Ok(()) => {
                info!("vtd: client disconnected");
                true
            }
            Err(e) => {
                error!("VT-d server stopped: {e}");
                false
            }
        }
    }))
}

fn run(a: &Args) -> Result<bool, String> {
    let write = |path: &PathBuf, body: Vec<u8>| {
        std::fs::write(path, body).map_err(|e| format!("{}: {e}", path.display()))
    };
    if let Some(path) = &a.write_viot {
        write(path, viot_for(a)?)?;
    }
    if let Some(path) = &a.write_dmar {
        write(path, dmar_for(a)?)?;
    }
    if let Some(path) = &a.write_smmu_dtb {
        write(path, smmu_dtb_for(a)?)?;
    }
    let Some(socket) = &a.socket else {
        return Ok(true);
    };
    if let Some(smmu_socket) = &a.smmu {
        return run_smmu(a, socket, smmu_socket);
    }
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
        let recorder = Recorder::from_env(&cfg);
        let mut unit = HarnessVtd::new(Vtd::new(cfg));
        if let Some(r) = recorder {
            unit = unit.with_recorder(r);
        }
        let unit = Arc::new(unit);
        let vtd = spawn_vtd(vtd_socket, &unit)?;
        let ok = serve_endpoints(a, socket, &unit, RequesterId::Pci);
        return Ok(vtd.join().unwrap_or(false) && ok);
    }
    let Some(viommu_socket) = &a.virtio_iommu else {
        let model = Arc::new(Passthrough::default());
        return Ok(serve_endpoints(a, socket, &model, RequesterId::Pci));
    };
    let dev = virtio_iommu()?;
    let virtio = spawn_virtio_iommu(viommu_socket, &dev)?;
    let rid = |b: Bdf| RequesterId::Endpoint(EndpointId(u32::from(b.0)));
    let ok = serve_endpoints(a, socket, &dev, rid);
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
    account::enable_from_env();
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("viommu-guest-server: {e} (see the crate docs for usage)");
            return ExitCode::from(2);
        }
    };
    let outcome = run(&args);
    if args.socket.is_some() {
        ACCOUNTS.mark("exit");
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn socket2_defaults_bdf2_to_06() {
        let a = args("--socket a --socket2 b").unwrap();
        assert_eq!(a.bdf2, Some(Bdf::new(0, 6, 0)));
        assert_eq!(
            endpoint_bdfs(&a),
            vec![Bdf::new(0, 5, 0), Bdf::new(0, 6, 0)]
        );
        assert!(args("--socket2 b").is_err(), "a second needs a first");
        assert!(args("--socket a --socket2 b --bdf2 00:05.0").is_err());
    }

    #[test]
    fn vtd_mode_value_is_checked() {
        let a = args("--socket a --vtd v --vtd-mode scalable-ss").unwrap();
        assert_eq!(a.vtd_mode, Some(VtdMode::ScalableSs));
        assert!(args("--socket a --vtd v --vtd-mode nested").is_err());
    }

    #[test]
    fn smmu_options_are_model_options_and_exclude_other_iommus() {
        let a = args("--socket a --smmu s --smmu-option stages=s2").unwrap();
        assert_eq!(
            smmu_config(&a).unwrap().stages,
            smmuv3::options::Smmuv3Stages::S2
        );
        assert!(args("--socket a --smmu s --smmu-option stages=s3").is_err());
        assert!(args("--socket a --smmu s --vtd v").is_err());
        assert!(args("--socket a --smmu s --smmu-bdf 00:05.0").is_err());
        assert!(
            args("--write-smmu-dtb f --its-phandle 1").is_err(),
            "needs --smmu-base"
        );
        assert!(
            args("--write-smmu-dtb f --smmu-base 0").is_err(),
            "needs --its-phandle"
        );
    }

    #[test]
    fn smmu_dtb_names_both_endpoints_and_the_function() {
        let a =
            args("--write-smmu-dtb f --smmu-base 0x10000000 --its-phandle 0x8006 --bdf2 00:06.0")
                .unwrap();
        let dtb = smmu_dtb_for(&a).unwrap();
        let has = |cells: &[u32]| {
            let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
            dtb.windows(bytes.len()).any(|w| w == bytes.as_slice())
        };
        assert!(has(&[0xd00d_feed]), "an FDT blob");
        assert!(
            has(&[0, 0x1000_0000, 0, 0x20000]),
            "reg: both pages at the BAR"
        );
        assert!(
            has(&[0x8006, 0x18]),
            "msi-parent: the ITS, the function's RID"
        );
        let p = smmu_fn::SMMU_PHANDLE;
        assert!(
            has(&[0x28, p, 0x28, 1, 0x30, p, 0x30, 1]),
            "iommu-map: both endpoints"
        );
        assert!(
            args("--write-smmu-dtb f --smmu-base 0 --its-phandle 0")
                .ok()
                .and_then(|a| smmu_dtb_for(&a).ok())
                .is_none(),
            "phandle 0 is reserved"
        );
    }

    #[test]
    fn viot_names_both_endpoints_with_bdf2() {
        let one = viot_for(&args("--write-viot f --bdf 00:05.0").unwrap()).unwrap();
        let two = viot_for(&args("--write-viot f --bdf 00:05.0 --bdf2 00:06.0").unwrap()).unwrap();
        assert_eq!(one[0], 2, "IOMMU node and one range");
        assert_eq!(two[0], 3, "IOMMU node and two ranges");
        // The second range node: endpoint 0x30 (00:06.0), bdf 0x30..0x30.
        let node = &two[12 + 16 + 24..];
        assert_eq!(node[0], 1);
        assert_eq!(u32::from_le_bytes(node[4..8].try_into().unwrap()), 0x30);
        assert_eq!(&node[12..16], &[0x30, 0, 0x30, 0]);
    }

    #[test]
    fn dmar_names_both_endpoints_with_bdf2() {
        let a = args("--write-dmar f --vtd-base febe1000 --bdf2 00:06.0").unwrap();
        let body = dmar_for(&a).unwrap();
        assert_eq!(
            u16::from_le_bytes([body[14], body[15]]),
            32,
            "DRHD with two scopes"
        );
        assert_eq!(&body[28..36], &[1, 8, 0, 0, 0, 0, 5, 0]);
        assert_eq!(&body[36..44], &[1, 8, 0, 0, 0, 0, 6, 0]);
    }

    /// The bytes the harness's matrix scenarios pass to QEMU, as the
    /// server's own builders wrote them before the libraries took over
    /// (captured from that build's --write-viot and --write-dmar).
    #[test]
    fn harness_tables_keep_their_bytes() {
        let viot = args("--write-viot f --bdf 00:05.0 --bdf2 00:06.0 --iommu-bdf 00:04.0").unwrap();
        #[rustfmt::skip]
        let want: [u8; 76] = [
            3, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            3, 0, 0x10, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0x18, 0, 0x28, 0, 0, 0, 0, 0, 0, 0, 0x28, 0, 0x28, 0, 0x30, 0, 0, 0, 0, 0, 0, 0,
            1, 0, 0x18, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0x30, 0, 0x30, 0, 0x30, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(viot_for(&viot).unwrap(), want);
        let dmar =
            args("--write-dmar f --vtd-base 0xfebe1000 --bdf 00:05.0 --bdf2 00:06.0").unwrap();
        #[rustfmt::skip]
        let want: [u8; 44] = [
            0x2f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0x10, 0xbe, 0xfe, 0, 0, 0, 0,
            1, 8, 0, 0, 0, 0, 5, 0,
            1, 8, 0, 0, 0, 0, 6, 0,
        ];
        assert_eq!(dmar_for(&dmar).unwrap(), want);
    }
}
