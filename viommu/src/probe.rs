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

use crate::models::{GuestModel, MODEL_NAMES};
use clap::Parser;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::SimHostSpec;
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::host::{
    DeviceSource, HostError, Iommufd, PtId, sysfs_iommu_unit, sysfs_iommu_unit_of_fd,
    take_inherited_fd,
};
use nesting_core::ladder::{self, Decision, DecisionKind, HostView};
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

/// Profiles and keys of the simulated host, for `--help`.
const HOST_HELP: &str = "Simulated host profiles: vtd-nest (default), vtd-nonest, smmuv3-nest, \
smmuv3-s2only, none; keys override what the host reports: cap=, ecap= (VT-d), idr0=..idr5= \
(SMMUv3), pgsize=, aperture=START-LAST.
fd:N takes an inherited, already-open descriptor (as libvirt passes them).
Exit status: 0 decided (and, with --expect, as expected), 1 the host failed or the decision \
is not the expected one, 2 bad arguments.";

/// `viommu probe`'s command line.
#[derive(Clone, Debug, clap::Args)]
#[command(after_help = HOST_HELP)]
pub struct ProbeCommand {
    /// The host: sim:PROFILE[,KEY=VALUE...] for the simulated host, or
    /// /dev/iommu (or fd:N) for the real iommufd, with --device
    #[arg(long, value_name = "HOST", default_value = "sim:vtd-nest")]
    pub host: String,
    /// The VFIO cdev device on a real host: /dev/vfio/devices/vfioN or fd:N
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// The guest IOMMU model
    #[arg(long, value_name = "MODEL", value_parser = PossibleValuesParser::new(MODEL_NAMES))]
    pub model: String,
    /// The model's options, as a script's model directive takes them
    /// (docs/REPLAY.md, "Model options")
    #[arg(value_name = "MODEL-KEY=VALUE")]
    pub options: Vec<String>,
    /// Exit with status 1 unless the decision is KIND
    #[arg(
        long,
        value_name = "KIND",
        value_parser = PossibleValuesParser::new(["nested", "shadow", "refuse"])
            .try_map(|s| decision_kind(&s).ok_or(format!("unknown decision {s:?}")))
    )]
    pub expect: Option<DecisionKind>,
}

/// Every decision, by the name `decision:` prints.
const DECISION_KINDS: [DecisionKind; 3] = [
    DecisionKind::Nested,
    DecisionKind::Shadow,
    DecisionKind::Refuse,
];

/// The decision `name` names.
fn decision_kind(name: &str) -> Option<DecisionKind> {
    DECISION_KINDS.into_iter().find(|k| k.to_string() == name)
}

impl ProbeCommand {
    /// The host and model the command line names, checked.
    pub fn resolve(&self) -> Result<ProbeArgs, ProbeUsageError> {
        let opts: Vec<&str> = self.options.iter().map(String::as_str).collect();
        let model = GuestModel::from_options(&self.model, &opts)?;
        let host = match self.host.strip_prefix("sim:") {
            Some(spec) => {
                if self.device.is_some() {
                    return Err(ProbeUsageError::DeviceWithSim);
                }
                HostArg::Sim(SimHostSpec::parse(spec)?)
            }
            None => HostArg::Real {
                device: FileArg::parse(
                    self.device
                        .as_deref()
                        .ok_or_else(|| ProbeUsageError::NoDevice(self.host.clone()))?,
                )?,
                iommu: FileArg::parse(&self.host)?,
            },
        };
        Ok(ProbeArgs { host, model })
    }
}

/// Bad command line: exit status 2.
#[derive(Debug, Error)]
pub enum ProbeUsageError {
    /// The arguments do not parse (unknown flag, missing value, no
    /// `--model`).
    #[error(transparent)]
    Arguments(#[from] clap::Error),
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

/// The command line as `viommu probe` parses it, for callers that hold
/// the arguments after the word `probe`.
#[derive(Debug, clap::Parser)]
#[command(name = "viommu probe")]
struct ProbeCli {
    #[command(flatten)]
    command: ProbeCommand,
}

/// Parses `probe`'s arguments (after the word `probe`), as the binary
/// does.
pub fn parse_args(args: &[String]) -> Result<ProbeArgs, ProbeUsageError> {
    let argv = std::iter::once("viommu probe").chain(args.iter().map(String::as_str));
    ProbeCli::try_parse_from(argv)?.command.resolve()
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
