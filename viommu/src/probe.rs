//! `viommu probe`: describe the host IOMMU behind a device and say whether
//! a passthrough device of a given guest model would be nested, shadowed or
//! refused, with the checks that decided it.
//!
//! The same sequence runs on the simulated and the real host: bind the
//! device, `IOMMU_GET_HW_INFO`, attach it to a scratch IOAS to learn the
//! usable IOVA ranges and alignment (the kernel reports them only for an IOAS
//! with devices attached), then run the ladder.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::models::GuestModel;
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::SimHostSpec;
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::host::{
    DeviceSource, HostError, Iommufd, PtId, sysfs_iommu_unit, sysfs_iommu_unit_of_fd,
    take_inherited_fd,
};
use nesting_core::ladder::{self, Decision, HostView};
use thiserror::Error;

/// Where the host comes from.
#[derive(Debug)]
pub enum HostArg {
    /// The simulated host with a profile (`sim:PROFILE[,KEY=VALUE...]`).
    Sim(SimHostSpec),
    /// The real iommufd, with a VFIO cdev device.
    Real {
        /// Usually `/dev/iommu`.
        iommu: FileArg,
        /// `/dev/vfio/devices/vfioN`.
        device: FileArg,
    },
}

/// A file given on the command line: a path to open, or `fd:N`, a
/// descriptor inherited from the parent (libvirt passes `/dev/iommu` and
/// VFIO devices this way to a VMM that may not open them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileArg {
    /// Open this path.
    Path(PathBuf),
    /// Take ownership of this inherited descriptor.
    Fd(i32),
}

impl FileArg {
    fn parse(s: &str) -> Result<FileArg, ProbeUsageError> {
        match s.strip_prefix("fd:") {
            Some(n) => n
                .parse()
                .map(FileArg::Fd)
                .map_err(|_| ProbeUsageError::BadFd(s.to_string())),
            None => Ok(FileArg::Path(s.into())),
        }
    }
}

impl std::fmt::Display for FileArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileArg::Path(p) => write!(f, "{}", p.display()),
            FileArg::Fd(n) => write!(f, "fd:{n}"),
        }
    }
}

/// What `probe` was asked.
#[derive(Debug)]
pub struct ProbeArgs {
    /// The host.
    pub host: HostArg,
    /// The guest model configuration.
    pub model: GuestModel,
}

/// Bad command line: exit status 2.
#[derive(Debug, Error)]
pub enum ProbeUsageError {
    /// A flag is missing its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// An unknown flag or stray argument.
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
    /// `--model` missing.
    #[error("--model vtd|smmuv3|virtio-iommu is required")]
    NoModel,
    /// A real host needs `--device`.
    #[error("--host {0} needs --device /dev/vfio/devices/vfioN")]
    NoDevice(String),
    /// `--device` only goes with a real host.
    #[error("--device only applies to a real host (--host /dev/iommu)")]
    DeviceWithSim,
    /// `fd:N` with N not a number.
    #[error("bad descriptor {0:?}: expected fd:N")]
    BadFd(String),
    /// A bad `sim:` profile.
    #[error("--host: {0}")]
    Profile(#[from] iommufd_sim::profile::ProfileError),
    /// A bad model option.
    #[error("--model: {0}")]
    Model(#[from] crate::models::ModelError),
}

/// The host failed while probing: exit status 1.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// Opening `/dev/iommu` or the device.
    #[error("opening {file}")]
    Open {
        /// The file.
        file: FileArg,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host call.
    #[error("probing the host")]
    Host(#[from] HostError),
}

/// Usage text.
pub const USAGE: &str = "usage: viommu probe [--host sim:PROFILE[,KEY=VALUE...] | --host /dev/iommu|fd:N --device /dev/vfio/devices/vfioN|fd:N] --model vtd|smmuv3|virtio-iommu [MODEL-KEY=VALUE...]
fd:N takes an inherited, already-open descriptor (as libvirt passes them)
profiles: vtd-nest (default), vtd-nonest, smmuv3-nest, smmuv3-s2only, none; keys cap=, ecap=, idr0=..idr5=, pgsize=, aperture=START-LAST";

/// Parses `probe`'s arguments (after the word `probe`).
pub fn parse_args(args: &[String]) -> Result<ProbeArgs, ProbeUsageError> {
    let mut host: Option<String> = None;
    let mut device: Option<String> = None;
    let mut model: Option<String> = None;
    let mut opts: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--host" => {
                host = Some(
                    it.next()
                        .ok_or(ProbeUsageError::MissingValue("--host"))?
                        .clone(),
                )
            }
            "--device" => {
                device = Some(
                    it.next()
                        .ok_or(ProbeUsageError::MissingValue("--device"))?
                        .into(),
                )
            }
            "--model" => {
                model = Some(
                    it.next()
                        .ok_or(ProbeUsageError::MissingValue("--model"))?
                        .clone(),
                )
            }
            s if model.is_some() && s.contains('=') && !s.starts_with('-') => opts.push(s),
            s => return Err(ProbeUsageError::Unexpected(s.to_string())),
        }
    }
    let model = GuestModel::from_options(model.as_deref().ok_or(ProbeUsageError::NoModel)?, &opts)?;
    let host = host.unwrap_or_else(|| "sim:vtd-nest".to_string());
    let host = match host.strip_prefix("sim:") {
        Some(spec) => {
            if device.is_some() {
                return Err(ProbeUsageError::DeviceWithSim);
            }
            HostArg::Sim(SimHostSpec::parse(spec)?)
        }
        None => HostArg::Real {
            device: FileArg::parse(
                &device.ok_or_else(|| ProbeUsageError::NoDevice(host.clone()))?,
            )?,
            iommu: FileArg::parse(&host)?,
        },
    };
    Ok(ProbeArgs { host, model })
}

/// Probes one device on `host` and decides for `model`; `unit` is the
/// physical IOMMU instance it sits behind, where known (see
/// `nesting_core::host::sysfs_iommu_unit`).
pub fn probe_device(
    host: &SharedHost,
    source: DeviceSource,
    unit: Option<u32>,
    model: &GuestModel,
) -> Result<(HostView, Decision), HostError> {
    let mut dev = BoundDevice::bind(host, source)?;
    let info = host.hw_info(dev.id())?;
    let ioas = Ioas::alloc(host)?;
    dev.attach(None, PtId::Ioas(ioas.id()))?;
    let ranges = host.ioas_iova_ranges(ioas.id());
    dev.detach(None)?;
    let ranges = ranges?;
    let view = HostView {
        info,
        iova_ranges: ranges.ranges,
        page_size: ranges.alignment.max(4096),
        unit,
    };
    let decision = ladder::decide(model.guest(), &view);
    Ok((view, decision))
}

/// Runs `probe`, printing the host description, `decision: ...` and the
/// checks.
pub fn run(args: &ProbeArgs, out: &mut dyn Write) -> Result<Decision, ProbeError> {
    let (host, source, unit): (SharedHost, DeviceSource, Option<u32>) = match &args.host {
        HostArg::Sim(spec) => {
            let sim = Arc::new(SimIommufd::with_host(spec.clone()));
            let source = sim.add_device(0);
            (sim, source, Some(0))
        }
        HostArg::Real { iommu, device } => {
            let open_err = |file: &FileArg| {
                let file = file.clone();
                move |source| ProbeError::Open { file, source }
            };
            let backend = match iommu {
                FileArg::Path(p) => Iommufd::open_path(p),
                FileArg::Fd(n) => take_inherited_fd(*n).map(Iommufd::from_fd),
            }
            .map_err(open_err(iommu))?;
            let (source, unit) = match device {
                FileArg::Path(p) => (DeviceSource::Path(p.clone()), sysfs_iommu_unit(p)),
                FileArg::Fd(n) => {
                    let fd = take_inherited_fd(*n).map_err(open_err(device))?;
                    let unit = sysfs_iommu_unit_of_fd(fd.as_fd());
                    (DeviceSource::Fd(fd), unit)
                }
            };
            (Arc::new(backend), source, unit)
        }
    };
    let (view, decision) = probe_device(&host, source, unit, &args.model)?;
    let _ = writeln!(out, "{}", view.info);
    match view.unit {
        Some(u) => writeln!(out, "host iommu unit: {u}"),
        None => writeln!(out, "host iommu unit: unknown"),
    }
    .ok();
    let _ = writeln!(out, "host page size: {:#x}", view.page_size);
    for r in &view.iova_ranges {
        let _ = writeln!(out, "host iova range: {r}");
    }
    let _ = writeln!(out, "guest model: {}", args.model.model_name());
    let _ = write!(out, "{decision}");
    Ok(decision)
}
