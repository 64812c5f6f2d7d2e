//! `viommu replay`: runs `.viommu` scenario scripts (the contract is
//! `REPLAY.md`, copied into `docs/REPLAY.md` of this repository).
//!
//! The runner owns what is model-independent: guest RAM, the simulated
//! host, passthrough decisions, host checks, output and exit status. Model
//! directives (registers, virtio, `translate`) go to a [`ReplayModel`],
//! which each model crate provides.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use crate::models::GuestModel;
use iommufd_sim::profile::{HostProfile, SimHostSpec};
use iommufd_sim::{SimBacking, SimIommufd};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::host::{DevId, HostBackend, HostOp, PtId};
use nesting_core::ladder::{self, Decision, HostView};
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::types::{Access, Iova};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

mod output;
pub mod parse;
pub mod smmuv3;
pub mod virtio;
pub mod vtd;

pub use output::{Options, Outcome, Runner, ScriptRun};
pub use parse::{Directive, ScriptError, Width};
use parse::{Expect, Line, TranslateExpect, parse_script};

/// Most guest RAM one script may declare: scripts come from anywhere, and
/// the runner must not be made to reserve unbounded address space.
pub const MAX_SCRIPT_RAM: u64 = 64 << 30;

/// What the models' side of a directive reports.
#[derive(Debug, PartialEq, Eq)]
pub enum ModelError {
    /// The model does not implement this directive (yet).
    Unsupported,
    /// The script misused the model (e.g. `ack-features` refused): a
    /// script error with this reason.
    Script(String),
}

/// The environment a model works in during replay.
pub struct Env<'a> {
    /// Guest RAM.
    pub mem: &'a GuestMemoryMmap,
    /// The simulated host.
    pub host: &'a Arc<SimIommufd>,
}

/// A passthrough device the runner bound on the simulated host.
pub struct Passthrough<'a> {
    /// The endpoint (SID) the script named.
    pub sid: u32,
    /// The bound device.
    pub device: BoundDevice,
    /// What its host IOMMU offers.
    pub view: HostView,
    /// The VM's iommufd.
    pub host: SharedHost,
    /// Guest RAM mapped once (IOVA = GPA), for the engines.
    pub ram: &'a Arc<RamIoas>,
}

/// A model as replay drives it. Every method defaults to
/// [`ModelError::Unsupported`]; each model crate overrides what it has.
#[allow(unused_variables)]
pub trait ReplayModel {
    /// Register read.
    fn mmio_read(&mut self, env: &Env<'_>, width: Width, offset: u64) -> Result<u64, ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Register write; returns after the write's synchronous effects.
    fn mmio_write(
        &mut self,
        env: &Env<'_>,
        width: Width,
        offset: u64,
        value: u64,
    ) -> Result<(), ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Device feature bits offered.
    fn features(&mut self) -> Result<u64, ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Driver acknowledges features (FEATURES_OK).
    fn ack_features(&mut self, value: u64) -> Result<(), ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Config space read.
    fn config_read(&mut self, width: Width, offset: u64) -> Result<u64, ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Config space write.
    fn config_write(&mut self, width: Width, offset: u64, value: u64) -> Result<(), ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Sets up a split virtqueue.
    fn queue(
        &mut self,
        env: &Env<'_>,
        q: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Publishes one chain and notifies.
    fn submit(
        &mut self,
        env: &Env<'_>,
        q: u16,
        out: &[parse::Buf],
        inp: &[parse::Buf],
    ) -> Result<(), ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Used-ring entries produced on `q` so far.
    fn used(&mut self, env: &Env<'_>, q: u16) -> Result<u64, ModelError> {
        Err(ModelError::Unsupported)
    }
    /// Takes a passthrough device and backs it through nesting-core
    /// (shadowed or nested), deciding with the ladder or, for a device
    /// added after the guest driver started, the hotplug rules. Returns
    /// the decision the runner prints; a refused device is dropped
    /// (unbound). A model without passthrough support hands the device
    /// back with [`ModelError::Unsupported`] and the runner decides alone.
    fn passthrough(
        &mut self,
        env: &Env<'_>,
        dev: Passthrough<'_>,
    ) -> Result<Decision, (ModelError, BoundDevice)> {
        Err((ModelError::Unsupported, dev.device))
    }
    /// A DMA access: `Ok(Some(gpa))` translated, `Ok(None)` refused.
    fn translate(
        &mut self,
        env: &Env<'_>,
        sid: u32,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<Option<u64>, ModelError> {
        Err(ModelError::Unsupported)
    }
}

/// A model whose crate has no replay support yet: every model directive is
/// a script error naming it.
struct Unimplemented;
impl ReplayModel for Unimplemented {}

/// Builds the replay model for a configuration.
fn make_model(cfg: &GuestModel) -> Box<dyn ReplayModel> {
    match cfg {
        GuestModel::VirtioIommu(c) => Box::new(virtio::VirtioReplay::new(c)),
        GuestModel::Vtd(c) => Box::new(vtd::VtdReplay::new(c)),
        GuestModel::Smmuv3(c) => Box::new(smmuv3::Smmuv3Replay::new(c)),
        // Every model has replay support now; a model added later starts
        // here.
        #[allow(unreachable_patterns)]
        _ => Box::new(Unimplemented),
    }
}

/// Totals of one script run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Checks that held.
    pub passed: usize,
    /// Checks that failed.
    pub failed: usize,
}

impl Summary {
    /// Adds another run's counts.
    pub fn add(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// `N passed, N failed`, the closing line of a run (REPLAY.md).
impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

struct Session<'o> {
    out: &'o mut dyn Write,
    options: Options,
    summary: Summary,
    model: Option<(GuestModel, Box<dyn ReplayModel>)>,
    mem: GuestMemoryMmap,
    ram_total: u64,
    host_spec: Option<SimHostSpec>,
    host: Option<Arc<SimIommufd>>,
    /// Passthrough devices by SID, bound to the simulated host: their
    /// host IDs, and the devices no model took.
    passthrough: BTreeMap<u32, DevId>,
    held: BTreeMap<u32, BoundDevice>,
    /// The RAM IOAS, made at the first passthrough device.
    ram: Option<Arc<RamIoas>>,
    /// Host calls the runner itself made (the RAM IOAS) since the last
    /// counter reset: `host-calls` counts what the guest caused.
    setup_calls: BTreeMap<HostOp, u64>,
}

/// Runs one script, writing to `out` what happens while it runs (REPLAY.md,
/// "Output and exit status"): a `FAIL LINE: expected X, got Y` line per
/// failed check, with [`Options::verbose`] an `ok LINE` line per passed
/// check, and the `decision ...` line of each passthrough device. A script
/// error stops the run; the checks made before it are counted. The
/// per-script and closing lines are the caller's ([`Runner`]), which knows
/// the script's name and the other scripts.
pub fn replay_script(text: &str, options: Options, out: &mut dyn Write) -> ScriptRun {
    let lines = match parse_script(text) {
        Ok(lines) => lines,
        Err(e) => {
            return ScriptRun {
                summary: Summary::default(),
                error: Some(e),
            };
        }
    };
    let mut s = Session {
        out,
        options,
        summary: Summary::default(),
        model: None,
        mem: GuestMemoryMmap::default(),
        ram_total: 0,
        host_spec: None,
        host: None,
        passthrough: BTreeMap::new(),
        held: BTreeMap::new(),
        ram: None,
        setup_calls: BTreeMap::new(),
    };
    let error = lines.iter().find_map(|line| s.step(line).err());
    ScriptRun {
        summary: s.summary,
        error,
    }
}

/// Runs one script with the default [`Options`] (failed checks and
/// decisions only) and returns its totals, or the script error that
/// stopped it.
pub fn run_script(text: &str, out: &mut dyn Write) -> Result<Summary, ScriptError> {
    replay_script(text, Options::default(), out).into_result()
}

/// Exit status for a run: 0 all passed, 1 a check failed, 2 script error.
pub fn exit_code(result: &Result<Summary, ScriptError>) -> i32 {
    match result {
        Ok(s) if s.failed == 0 => 0,
        Ok(_) => 1,
        Err(_) => 2,
    }
}

/// The default options of a model, one `key=value` per line, as
/// `viommu replay --defaults MODEL` prints them.
pub fn defaults_text(model: &str) -> Result<String, String> {
    let cfg = GuestModel::defaults(model).map_err(|e| e.to_string())?;
    Ok(cfg
        .options()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect())
}

impl Session<'_> {
    fn check(
        &mut self,
        line: usize,
        ok: bool,
        expected: impl FnOnce() -> String,
        got: impl FnOnce() -> String,
    ) {
        if ok {
            self.summary.passed += 1;
            if self.options.verbose {
                let _ = writeln!(self.out, "ok {line}");
            }
        } else {
            self.summary.failed += 1;
            let _ = writeln!(
                self.out,
                "FAIL {line}: expected {}, got {}",
                expected(),
                got()
            );
        }
    }

    /// A value check; a masked check shows the value under the mask,
    /// which is what was compared.
    fn check_value(&mut self, line: usize, expect: &Expect, actual: u64) {
        self.check(
            line,
            expect.holds(actual),
            || expect.describe(),
            || format!("{:#x}", expect.compared(actual)),
        );
    }

    fn host(&mut self) -> Arc<SimIommufd> {
        if let Some(h) = &self.host {
            return h.clone();
        }
        let spec = self
            .host_spec
            .clone()
            .unwrap_or_else(|| self.default_host().spec());
        let host = Arc::new(SimIommufd::with_host(spec.clone()));
        self.host_spec = Some(spec);
        self.host = Some(host.clone());
        host
    }

    /// Without a `host` directive, passthrough devices sit behind the host
    /// IOMMU that matches the model's architecture, with nesting.
    fn default_host(&self) -> HostProfile {
        match self.model.as_ref().map(|(c, _)| c) {
            Some(GuestModel::Smmuv3(_)) => HostProfile::Smmuv3Nest,
            _ => HostProfile::VtdNest,
        }
    }

    fn model_call<T>(
        &mut self,
        line: usize,
        what: &str,
        f: impl FnOnce(&mut dyn ReplayModel, &Env<'_>) -> Result<T, ModelError>,
    ) -> Result<T, ScriptError> {
        let host = self.host();
        let Some((cfg, model)) = self.model.as_mut() else {
            return Err(ScriptError::new(
                line,
                "use before setup: no `model` directive yet",
            ));
        };
        let env = Env {
            mem: &self.mem,
            host: &host,
        };
        f(model.as_mut(), &env).map_err(|e| match e {
            ModelError::Unsupported => ScriptError::new(
                line,
                format!(
                    "directive {what} is not supported by model {}",
                    cfg.model_name()
                ),
            ),
            ModelError::Script(reason) => ScriptError::new(line, reason),
        })
    }

    fn need_ram(&self, line: usize, gpa: u64, len: usize) -> Result<(), ScriptError> {
        let ok = len == 0 || GuestMemoryBackend::check_range(&self.mem, GuestAddress(gpa), len);
        if ok {
            Ok(())
        } else {
            Err(ScriptError::new(
                line,
                format!("use before setup: {gpa:#x}+{len:#x} is not in a `ram` region"),
            ))
        }
    }

    fn step(&mut self, line: &Line) -> Result<(), ScriptError> {
        let n = line.number;
        if self.model.is_none() && !matches!(line.directive, Directive::Model { .. }) {
            return Err(ScriptError::new(n, "the first directive must be `model`"));
        }
        match &line.directive {
            Directive::Model { name, opts } => {
                if self.model.is_some() {
                    return Err(ScriptError::new(n, "`model` given twice"));
                }
                let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
                let cfg = GuestModel::from_options(name, &opts)
                    .map_err(|e| ScriptError::new(n, e.to_string()))?;
                let model = make_model(&cfg);
                self.model = Some((cfg, model));
            }
            Directive::Ram { gpa, size } => self.add_ram(n, *gpa, *size)?,
            Directive::Host { spec } => {
                if self.host.is_some() {
                    return Err(ScriptError::new(
                        n,
                        "`host` must come before passthrough devices and host checks, once",
                    ));
                }
                self.host_spec =
                    Some(SimHostSpec::parse(spec).map_err(|e| ScriptError::new(n, e.to_string()))?);
            }
            Directive::Passthrough { sid, expect } => {
                self.passthrough(n, *sid, expect.as_deref())?
            }
            Directive::Write { width, gpa, value } => {
                let bytes = value.to_le_bytes();
                self.write_mem(n, *gpa, &bytes[..width.bytes()])?;
            }
            Directive::WriteBytes { gpa, bytes } => self.write_mem(n, *gpa, bytes)?,
            Directive::Read { width, gpa, expect } => {
                let mut buf = [0u8; 8];
                self.read_mem(n, *gpa, &mut buf[..width.bytes()])?;
                self.check_value(n, expect, u64::from_le_bytes(buf));
            }
            Directive::MmioWrite {
                width,
                offset,
                value,
            } => self.model_call(n, "mmio-write", |m, env| {
                m.mmio_write(env, *width, *offset, *value)
            })?,
            Directive::MmioRead {
                width,
                offset,
                expect,
            } => {
                let v =
                    self.model_call(n, "mmio-read", |m, env| m.mmio_read(env, *width, *offset))?;
                self.check_value(n, expect, v);
            }
            Directive::Features { expect } => {
                let v = self.model_call(n, "features", |m, _| m.features())?;
                self.check_value(n, expect, v);
            }
            Directive::AckFeatures { value } => {
                self.model_call(n, "ack-features", |m, _| m.ack_features(*value))?
            }
            Directive::ConfigRead {
                width,
                offset,
                expect,
            } => {
                let v = self.model_call(n, "config-read", |m, _| m.config_read(*width, *offset))?;
                self.check_value(n, expect, v);
            }
            Directive::ConfigWrite {
                width,
                offset,
                value,
            } => self.model_call(n, "config-write", |m, _| {
                m.config_write(*width, *offset, *value)
            })?,
            Directive::Queue {
                q,
                size,
                desc,
                avail,
                used,
            } => self.model_call(n, "queue", |m, env| {
                m.queue(env, *q, *size, *desc, *avail, *used)
            })?,
            Directive::Submit { q, out, inp } => {
                self.model_call(n, "submit", |m, env| m.submit(env, *q, out, inp))?
            }
            Directive::Used { q, expect } => {
                let v = self.model_call(n, "used", |m, env| m.used(env, *q))?;
                self.check_value(n, expect, v);
            }
            Directive::Translate {
                sid,
                pasid,
                iova,
                access,
                expect,
            } => {
                let got = self.model_call(n, "translate", |m, env| {
                    m.translate(env, *sid, *pasid, *iova, *access)
                })?;
                let ok = match (expect, got) {
                    (TranslateExpect::Gpa(g), Some(a)) => *g == a,
                    (TranslateExpect::Fault, None) => true,
                    _ => false,
                };
                let show = |r: Option<u64>| r.map_or("fault".to_string(), |g| format!("{g:#x}"));
                let want = match expect {
                    TranslateExpect::Gpa(g) => Some(*g),
                    TranslateExpect::Fault => None,
                };
                self.check(n, ok, || show(want), || show(got));
            }
            Directive::HostMapped { iova, len, gpa } => self.host_mapped(n, *iova, *len, *gpa)?,
            Directive::HostUnmapped { iova, len } => self.host_unmapped(n, *iova, *len)?,
            Directive::HostNestedVtd {
                sid,
                pasid,
                pgtbl,
                aw,
            } => self.host_nested_vtd(n, *sid, *pasid, *pgtbl, *aw)?,
            Directive::HostNestedSmmuv3 { sid, ste0, ste1 } => {
                self.host_nested_smmuv3(n, *sid, *ste0, *ste1)?
            }
            Directive::HostInvalidations { expect } => {
                let v = self.host().invalidation_entries();
                self.check_value(n, expect, v);
            }
            Directive::HostCalls { op, expect } => {
                let host = self.host();
                let ops = host_call_ops(op)
                    .ok_or_else(|| ScriptError::new(n, format!("unknown host call {op:?}")))?;
                let v = ops
                    .iter()
                    .map(|o| host.calls(*o) - self.setup_calls.get(o).copied().unwrap_or(0))
                    .sum();
                self.check_value(n, expect, v);
            }
            Directive::HostResetCounters => {
                self.host().reset_counters();
                self.setup_calls.clear();
            }
        }
        Ok(())
    }

    fn add_ram(&mut self, n: usize, gpa: u64, size: u64) -> Result<(), ScriptError> {
        if size == 0 || gpa.checked_add(size - 1).is_none() {
            return Err(ScriptError::new(
                n,
                format!("bad ram region {gpa:#x}+{size:#x}"),
            ));
        }
        self.ram_total = self.ram_total.saturating_add(size);
        if self.ram_total > MAX_SCRIPT_RAM {
            return Err(ScriptError::new(
                n,
                format!("more than {MAX_SCRIPT_RAM:#x} bytes of ram"),
            ));
        }
        if self.host.is_some() {
            return Err(ScriptError::new(
                n,
                "`ram` must precede passthrough devices and host checks",
            ));
        }
        let size_usize =
            usize::try_from(size).map_err(|_| ScriptError::new(n, "ram region too large"))?;
        let region = MmapRegion::new(size_usize)
            .map_err(|e| ScriptError::new(n, format!("cannot allocate ram: {e}")))
            .and_then(|r| {
                GuestRegionMmap::new(r, GuestAddress(gpa))
                    .ok_or_else(|| ScriptError::new(n, "ram region wraps the address space"))
            })?;
        self.mem = self
            .mem
            .insert_region(Arc::new(region))
            .map_err(|e| ScriptError::new(n, format!("ram region {gpa:#x}+{size:#x}: {e}")))?;
        Ok(())
    }

    fn write_mem(&mut self, n: usize, gpa: u64, bytes: &[u8]) -> Result<(), ScriptError> {
        self.need_ram(n, gpa, bytes.len())?;
        use vm_memory::Bytes;
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|e| ScriptError::new(n, format!("write at {gpa:#x}: {e}")))
    }

    fn read_mem(&mut self, n: usize, gpa: u64, buf: &mut [u8]) -> Result<(), ScriptError> {
        self.need_ram(n, gpa, buf.len())?;
        use vm_memory::Bytes;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| ScriptError::new(n, format!("read at {gpa:#x}: {e}")))
    }

    fn passthrough(&mut self, n: usize, sid: u32, expect: Option<&str>) -> Result<(), ScriptError> {
        if self.passthrough.contains_key(&sid) {
            return Err(ScriptError::new(
                n,
                format!("passthrough {sid:#x} given twice"),
            ));
        }
        let host = self.host();
        let shared: SharedHost = host.clone();
        let source = host.add_device(0);
        let device = BoundDevice::bind(&shared, source)
            .map_err(|e| ScriptError::new(n, format!("simulated host: {e}")))?;
        let info = host
            .hw_info(device.id())
            .map_err(|e| ScriptError::new(n, format!("simulated host: {e}")))?;
        let spec = self
            .host_spec
            .clone()
            .unwrap_or_else(|| self.default_host().spec());
        let mut view = spec.host_view();
        view.info = info;
        view.unit = host.iommu_of(device.id());
        let ram = self.ram_ioas(n)?;
        self.passthrough.insert(sid, device.id());
        let dev = Passthrough {
            sid,
            device,
            view: view.clone(),
            host: shared,
            ram: &ram,
        };
        let env = Env {
            mem: &self.mem,
            host: &host,
        };
        let Some((cfg, model)) = self.model.as_mut() else {
            return Err(ScriptError::new(
                n,
                "use before setup: no `model` directive yet",
            ));
        };
        let decision = match model.passthrough(&env, dev) {
            Ok(d) => d,
            Err((ModelError::Unsupported, device)) => {
                self.held.insert(sid, device);
                ladder::decide(cfg.guest(), &view)
            }
            Err((ModelError::Script(reason), _)) => return Err(ScriptError::new(n, reason)),
        };
        let kind = decision.kind.to_string();
        let _ = writeln!(self.out, "decision {sid} {kind}: {}", decision.reason);
        if let Some(want) = expect {
            self.check(n, want == kind, || want.to_string(), || kind.clone());
        }
        Ok(())
    }

    /// The RAM IOAS over the script's guest RAM, made once; its host calls
    /// are the runner's, not the guest's, and `host-calls` leaves them out.
    fn ram_ioas(&mut self, n: usize) -> Result<Arc<RamIoas>, ScriptError> {
        if let Some(r) = &self.ram {
            return Ok(r.clone());
        }
        let host = self.host();
        let before: Vec<(HostOp, u64)> =
            HostOp::ALL.iter().map(|&op| (op, host.calls(op))).collect();
        let shared: SharedHost = host.clone();
        let ram = GuestRam::from_guest_memory(&self.mem)
            .and_then(|r| RamIoas::new(&shared, r))
            .map_err(|e| ScriptError::new(n, format!("guest RAM on the simulated host: {e}")))?;
        for (op, b) in before {
            *self.setup_calls.entry(op).or_default() += host.calls(op) - b;
        }
        let ram = Arc::new(ram);
        self.ram = Some(ram.clone());
        Ok(ram)
    }

    /// The IOASes passthrough devices are attached to (directly or through
    /// a paging HWPT).
    fn device_ioases(&mut self) -> Vec<nesting_core::host::IoasId> {
        let host = self.host();
        let mut out = Vec::new();
        for &dev in self.passthrough.values() {
            let pt = host.attachment(dev, None);
            let ioas = match pt {
                Some(PtId::Ioas(i)) => Some(i),
                Some(PtId::Hwpt(h)) => host.hwpt(h).map(|h| h.ioas),
                _ => None,
            };
            if let Some(i) = ioas.filter(|i| !out.contains(i)) {
                out.push(i);
            }
        }
        out
    }

    fn host_mapped(&mut self, n: usize, iova: u64, len: u64, gpa: u64) -> Result<(), ScriptError> {
        let Ok(ilen) = usize::try_from(len) else {
            return Err(ScriptError::new(n, "length too large"));
        };
        self.need_ram(n, gpa, ilen)?;
        let host = self.host();
        let ioases = self.device_ioases();
        let page = self.host_spec.as_ref().map_or(4096, |s| s.page_size);
        let mut first_bad = None;
        let ok = !ioases.is_empty()
            && ioases.iter().any(|ioas| {
                let mut off = 0;
                while off < len {
                    let want = self
                        .mem
                        .get_host_address(GuestAddress(gpa + off))
                        .ok()
                        .map(|p| p as u64);
                    let got = host.translate(*ioas, Iova(iova + off));
                    let good = matches!((want, &got), (Some(w), Some((SimBacking::UserVa(v), acc)))
                        if *v == w && acc.intersects(Access::RW));
                    if !good {
                        first_bad.get_or_insert(iova + off);
                        return false;
                    }
                    off += page;
                }
                true
            });
        self.check(
            n,
            ok,
            || format!("{iova:#x}+{len:#x} mapped to the host memory of gpa {gpa:#x}"),
            || match (ioases.is_empty(), first_bad) {
                (true, _) => "no passthrough device attached to an IOAS".to_string(),
                (false, Some(b)) => format!("iova {b:#x} not mapped there"),
                (false, None) => "not mapped".to_string(),
            },
        );
        Ok(())
    }

    fn host_unmapped(&mut self, n: usize, iova: u64, len: u64) -> Result<(), ScriptError> {
        let host = self.host();
        let range = nesting_core::types::IovaRange::from_len(Iova(iova), len)
            .ok_or_else(|| ScriptError::new(n, "empty or wrapping range"))?;
        let mut hit = None;
        for ioas in self.device_ioases() {
            if let Some(m) = host
                .mappings(ioas)
                .into_iter()
                .find(|m| m.range.overlaps(&range))
            {
                hit = Some(m.range);
                break;
            }
        }
        self.check(
            n,
            hit.is_none(),
            || format!("nothing mapped in {range}"),
            || format!("{} mapped", hit.map(|r| r.to_string()).unwrap_or_default()),
        );
        Ok(())
    }

    fn nested_data(
        &mut self,
        n: usize,
        sid: u32,
        pasid: Option<u32>,
    ) -> Result<Option<nesting_core::host::HwptData>, ScriptError> {
        let host = self.host();
        let dev = self.passthrough.get(&sid).copied().ok_or_else(|| {
            ScriptError::new(
                n,
                format!("use before setup: {sid:#x} is not a passthrough device"),
            )
        })?;
        let pasid = match pasid {
            Some(p) => Some(
                nesting_core::types::Pasid::new(p)
                    .ok_or_else(|| ScriptError::new(n, "pasid wider than 20 bits"))?,
            ),
            None => None,
        };
        Ok(match host.attachment(dev, pasid) {
            Some(PtId::Hwpt(h)) => host.hwpt(h).map(|h| h.data),
            _ => None,
        })
    }

    fn host_nested_vtd(
        &mut self,
        n: usize,
        sid: u32,
        pasid: Option<u32>,
        pgtbl: u64,
        aw: u32,
    ) -> Result<(), ScriptError> {
        use nesting_core::host::HwptData;
        let data = self.nested_data(n, sid, pasid)?;
        let ok = matches!(&data, Some(HwptData::VtdS1 { pgtbl_addr, addr_width, .. }) if *pgtbl_addr == pgtbl && *addr_width == aw);
        self.check(
            n,
            ok,
            || format!("vtd-s1 pgtbl={pgtbl:#x} aw={aw}"),
            || format!("{data:?}"),
        );
        Ok(())
    }

    fn host_nested_smmuv3(
        &mut self,
        n: usize,
        sid: u32,
        ste0: u64,
        ste1: u64,
    ) -> Result<(), ScriptError> {
        use nesting_core::host::HwptData;
        let data = self.nested_data(n, sid, None)?;
        let ok = matches!(&data, Some(HwptData::Smmuv3 { ste }) if *ste == [ste0, ste1]);
        self.check(
            n,
            ok,
            || format!("smmuv3 ste0={ste0:#x} ste1={ste1:#x}"),
            || format!("{data:?}"),
        );
        Ok(())
    }
}

/// The host ops a `host-calls` name counts. `ioas_map` counts every call
/// that installs mappings (MAP, MAP_FILE, COPY) and `attach` both first
/// attaches and replacements, since a script checks how many host calls a
/// guest change costs, not which variant the engine chose.
fn host_call_ops(name: &str) -> Option<Vec<HostOp>> {
    match name {
        "ioas_map" => Some(vec![HostOp::IoasMap, HostOp::IoasMapFile, HostOp::IoasCopy]),
        "attach" => Some(vec![HostOp::Attach, HostOp::Replace]),
        other => HostOp::from_name(other).map(|op| vec![op]),
    }
}
