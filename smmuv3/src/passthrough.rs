//! Passthrough devices of an SMMU, nested on the host's SMMUv3 through
//! iommufd (nesting-core's registry and nested engine).
//!
//! ```text
//!   guest MMIO -> Smmuv3::mmio_write -> CMDQ -> each command offered here
//!        TLBI_NH_* / NSNH_ALL / CFGI_CD* / ATC_INV: queued (one entry each)
//!        CFGI_STE(_RANGE): queue sent, then the STE re-read and installed
//!        CMD_SYNC: queue sent in one IOMMU_HWPT_INVALIDATE; only then is
//!                  the sync completed (CONS, MSIPOLL write, SEV, IRQ)
//! ```
//!
//! The SMMU owns its backend ([`Smmuv3::enable_passthrough`]), so a VMM
//! makes one call per guest access, and a CMD_SYNC completes only after
//! the host returned for every command before it.
//!
//! - **Objects**, in the kernel's order (nesting-core's engine): a
//!   NEST_PARENT HWPT over the RAM IOAS, shared with every other SMMU
//!   instance on the same host SMMU; per instance and host SMMU a vIOMMU
//!   with its vEVENTQ and its abort and bypass HWPTs made ahead; per
//!   device a vDEVICE whose virtual ID is the guest's StreamID, made when
//!   the device is added, so before its first stage-1 attach. A changed
//!   STE gets a new nested HWPT attached with replace before the old one
//!   is destroyed: the stream never aborts in between.
//! - **vSTE**: SMMUEN = 0 follows GBPA (abort or bypass HWPT). With
//!   SMMUEN = 1 a missing or ILLEGAL STE (C_BAD_STREAMID, C_BAD_STE, V =
//!   0) is the abort HWPT, Config bypass the bypass HWPT, Config stage 1
//!   a nested HWPT carrying words 0 and 1 masked to what the kernel takes
//!   (`arm_smmu_validate_vste`: V, Config, S1Fmt, S1ContextPtr, S1CDMax;
//!   EATS, S1DSS, S1CIR/COR/CSH, S1STALLD); a Linux guest's SHCFG and STRW
//!   are dropped. The guest's whole CD table (every SubstreamID) goes to
//!   the host through S1ContextPtr and S1CDMax, so PASIDs pass through.
//! - **Invalidations**: TLBI_NH_*, TLBI_NSNH_ALL, and for passthrough
//!   StreamIDs CFGI_CD, CFGI_CD_ALL and ATC_INV, go out together in one
//!   `IOMMU_HWPT_INVALIDATE` at the next CMD_SYNC, or earlier at a
//!   CFGI_STE (which must see them done before it re-installs). A
//!   SID-based command for a StreamID that is no passthrough device (an
//!   emulated one, or none) is the model's alone. A partial completion
//!   stops CMDQ_CONS at the failing command with CERROR_ILL and
//!   GERROR.CMDQ_ERR; so does a vSTE the host refuses (the stream is
//!   aborted). Commands without a StreamID reach both the model's own
//!   translation cache (emulated devices) and the host.
//! - **Host capabilities** clamp the guest's: SSIDSIZE, OAS, RIL, HTTU,
//!   PRI and the granules are lowered to the host's when a device is
//!   added before the guest read an ID register; once it has, they are
//!   frozen and a device needing them lower is refused with the ladder's
//!   reason. ATS is per device: EATS is cleared for a device whose host
//!   reports no ATS.
//! - **Events**: the VMM calls [`Smmuv3::poll_host_events`] when the host
//!   may have events (the vEVENTQ's file is readable, or on a timer);
//!   each vEVENTQ record (the kernel already put the guest's StreamID in
//!   it) is copied into the guest's event queue, and lost host events (the
//!   kernel's marker or a sequence gap) set the guest queue's overflow
//!   flag; so does a vEVENTQ that cannot be read any more (its file
//!   closed), which the VMM also gets as an error. The vEVENTQ is as deep as the largest event queue the guest
//!   can configure ([`VEVENTQ_DEPTH`]), so it only overflows when the
//!   guest's would.
//! - **MSIs**: the host maps its MSI doorbell at its software MSI window
//!   in stage 2; the guest's stage 1 must map that window 1:1 (an IORT RMR
//!   or device-tree `iommu-addresses` region), which
//!   [`Smmuv3::passthrough_msi_window`] gives the VMM. A host that reports
//!   no window, or guest RAM that covers it, refuses the device.
//! - Not forwarded: stage-2 TLB invalidations (the guest has no stage 2),
//!   PRI responses, stalls (the engine runs without IOPF).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use nesting_core::host::HostError;
use nesting_core::host::info::{HostCaps, HwInfo, idr};
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::ladder::{self, Check, Decision, DecisionKind, HostView};
use nesting_core::nested::{NestedConfig, NestedContext, NestedError, NestedEvent};
use nesting_core::passthrough::{Backing, HostFailure, Place, Plan, Registry, Step};
use nesting_core::ram::RamIoas;
use nesting_core::types::{Iova, IovaRange};
use thiserror::Error;
use vm_memory::GuestMemory;

use crate::Smmuv3;
use crate::cmdq::Command;
use crate::host::Refused;
use crate::options::{Httu, Smmuv3Config, Smmuv3Granules};
use crate::regs::{MAX_QUEUE_LOG2, gbpa, off};
use crate::strtab::{Ste, SteLookup, SteMode};
use crate::wire::read_qwords;

/// Depth of each vEVENTQ: the largest guest event queue (IDR1.EVENTQS =
/// [`MAX_QUEUE_LOG2`]), which is also the kernel's limit
/// (`VEVENTQ_MAX_DEPTH`, iommufd/eventq.c: "An arbitrary upper bound for
/// veventq_depth that fits all existing HWs", 1 << 19).
pub const VEVENTQ_DEPTH: u32 = 1 << MAX_QUEUE_LOG2;

/// The registry's shadow spaces: a nested SMMU has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoSpace {}

/// Failure of the passthrough backend when a device is added or polled
/// (host failures while the guest runs become guest-visible errors).
#[derive(Debug, Error)]
pub enum PassthroughError {
    /// The StreamID already has a passthrough device.
    #[error("StreamID {sid:#x} is already a passthrough device")]
    Duplicate {
        /// StreamID.
        sid: u32,
    },
    /// The ladder (or the MSI window check) refused the device; the
    /// decision says why.
    #[error("refused: {}", decision.reason)]
    Refused {
        /// The decision.
        decision: Box<Decision>,
    },
    /// [`Smmuv3::enable_passthrough`] was not called.
    #[error("passthrough is not enabled on this SMMU")]
    NotEnabled,
    /// The host refused the device.
    #[error("host")]
    Host(#[from] HostFailure),
    /// Reading the host's events failed.
    #[error("reading host events")]
    Events(#[source] NestedError),
}

impl From<HostError> for PassthroughError {
    fn from(e: HostError) -> Self {
        PassthroughError::Host(e.into())
    }
}

/// Totals since creation, for a VMM's statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// `IOMMU_HWPT_INVALIDATE` calls made.
    pub invalidate_calls: u64,
    /// Commands those calls carried that the host handled.
    pub invalidations: u64,
    /// Commands refused (CERROR_ILL): a failed invalidation or vSTE.
    pub refused: u64,
    /// Host event records copied into the guest's event queue.
    pub events: u64,
    /// Times host events were lost (guest EVTQ overflow flagged).
    pub lost: u64,
}

/// One passthrough device.
#[derive(Clone, Debug)]
struct PtDevice {
    view: HostView,
    /// The host lets the device use ATS.
    ats: bool,
    /// The host's MSI window for it.
    msi: IovaRange,
}

/// The passthrough devices of one SMMU.
#[derive(Debug)]
pub struct PassthroughBackend {
    pub(crate) reg: Registry<NoSpace>,
    ram: Arc<RamIoas>,
    devices: BTreeMap<u32, PtDevice>,
    /// Commands queued for the host since the last flush: tags are their
    /// queue positions.
    queued: usize,
    /// The first command the host refused since the last sync.
    refused: Option<u32>,
    stats: BackendStats,
}

/// The host's software MSI window for a device: the hole iommufd leaves
/// in the usable IOVA ranges (`IOMMU_IOAS_IOVA_RANGES` excludes the
/// reserved regions; arm-smmu-v3 reserves `MSI_IOVA_BASE`, 0x8000000, of
/// `MSI_IOVA_LENGTH`, 0x100000, as `IOMMU_RESV_SW_MSI`, where iommufd maps
/// the doorbell, `iommufd_sw_msi_install`). The first hole is taken:
/// iommufd does not say a hole's type.
pub fn host_msi_window(view: &HostView) -> Option<IovaRange> {
    let mut ranges = view.iova_ranges.clone();
    ranges.sort_by_key(|r| r.first);
    ranges.windows(2).find_map(|w| {
        let first = w[0].last.0.checked_add(1)?;
        let last = w[1].first.0.checked_sub(1)?;
        (first <= last).then_some(IovaRange {
            first: Iova(first),
            last: Iova(last),
        })
    })
}

/// What the guest may be offered on this host: the guest's configuration
/// with SSIDSIZE, OAS, RIL, HTTU, PRI and granules lowered to the host's
/// (IDR1.SSIDSIZE, IDR5.OAS, IDR3.RIL, IDR0.HTTU, IDR0.PRI,
/// IDR5.GRAN*; IHI 0070 6.3). Non-SMMUv3 hosts leave it as it is (the
/// ladder refuses them).
pub fn clamp_to_host(guest: &Smmuv3Config, view: &HostView) -> Smmuv3Config {
    let HwInfo::ArmSmmuv3 { idr: r, .. } = &view.info.hw else {
        return guest.clone();
    };
    let (idr0, idr1, idr3, idr5) = (
        u64::from(r[0]),
        u64::from(r[1]),
        u64::from(r[3]),
        u64::from(r[5]),
    );
    let mut c = guest.clone();
    let ssid = u8::try_from(idr::IDR1_SSIDSIZE.get(idr1)).unwrap_or(u8::MAX);
    c.ssidsize = c.ssidsize.min(ssid);
    let host_oas = idr::OAS_BITS
        .get(usize::try_from(idr::IDR5_OAS.get(idr5)).unwrap_or(usize::MAX))
        .and_then(|b| u8::try_from(*b).ok());
    if let Some(o) = host_oas {
        c.oas = c.oas.min(o);
    }
    c.ril &= idr::IDR3_RIL.is_set(idr3);
    c.pri &= idr::IDR0_PRI.is_set(idr0);
    c.httu = match idr::IDR0_HTTU.get(idr0).min(u64::from(c.httu.idr0())) {
        0 => Httu::None,
        1 => Httu::Access,
        _ => Httu::AccessDirty,
    };
    let mut gran = Smmuv3Granules::empty();
    gran.set(Smmuv3Granules::G4K, idr::IDR5_GRAN4K.is_set(idr5));
    gran.set(Smmuv3Granules::G16K, idr::IDR5_GRAN16K.is_set(idr5));
    gran.set(Smmuv3Granules::G64K, idr::IDR5_GRAN64K.is_set(idr5));
    if !(c.gran & gran).is_empty() {
        c.gran &= gran;
    }
    c
}

/// IHI 0070 3.9: ATS needs IDR0.ATS; iommufd reports
/// `IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED` for a device that cannot use it.
fn host_ats(view: &HostView) -> bool {
    let idr0 = view.info.smmuv3_idr().map_or(0, |r| u64::from(r[0]));
    idr::IDR0_ATS.is_set(idr0) && !view.info.caps.contains(HostCaps::PCI_ATS_NOT_SUPPORTED)
}

fn refuse(mut checks: Vec<Check>, failed: Check) -> Decision {
    let reason = format!("{}: {}", failed.name, failed.detail);
    checks.push(failed);
    Decision {
        kind: DecisionKind::Refuse,
        checks,
        reason,
        adjust: Default::default(),
    }
}

impl PassthroughBackend {
    /// A backend over the VM's iommufd and RAM IOAS.
    pub fn new(host: SharedHost, ram: Arc<RamIoas>) -> PassthroughBackend {
        let mut reg = Registry::new(host, ram.clone());
        reg.set_nested_config(NestedConfig {
            veventq_depth: VEVENTQ_DEPTH,
            ..NestedConfig::default()
        });
        PassthroughBackend {
            reg,
            ram,
            devices: BTreeMap::new(),
            queued: 0,
            refused: None,
            stats: BackendStats::default(),
        }
    }

    /// The registry: where each stream is, the nested engine.
    pub fn registry(&self) -> &Registry<NoSpace> {
        &self.reg
    }

    /// The nested engine, once a device was added.
    pub fn nested(&self) -> Option<&nesting_core::nested::NestedEngine> {
        self.reg.nested()
    }

    /// Totals since creation.
    pub fn stats(&self) -> BackendStats {
        self.stats
    }

    /// The passthrough StreamIDs.
    pub fn streams(&self) -> impl Iterator<Item = u32> + '_ {
        self.devices.keys().copied()
    }

    /// The host's MSI window for passthrough device `sid`.
    pub fn msi_window(&self, sid: u32) -> Option<IovaRange> {
        self.devices.get(&sid).map(|d| d.msi)
    }

    /// Decides for `view` with the guest's configuration `guest` (already
    /// clamped where allowed): the ladder's nest checks, with ATS taken
    /// per device, then the MSI window.
    fn decide(&self, guest: &Smmuv3Config, view: &HostView) -> Decision {
        let mut per_device = guest.clone();
        per_device.ats &= host_ats(view);
        let d = ladder::decide(&per_device, view);
        if d.kind != DecisionKind::Nested {
            // A guest SMMUv3's mappings cannot be shadowed (ladder.rs,
            // map-invalidation): nothing but nesting backs the device.
            return match d.kind {
                DecisionKind::Shadow => {
                    let c = Check::fail("nesting", format!("cannot nest: {}", d.reason));
                    refuse(d.checks, c)
                }
                _ => d,
            };
        }
        let Some(msi) = host_msi_window(view) else {
            let c = Check::fail(
                "host-msi-window",
                "the host reports no software MSI window for the device (no hole in \
                 IOMMU_IOAS_IOVA_RANGES): its MSIs cannot reach the host doorbell through \
                 the guest's stage 1"
                    .to_string(),
            );
            return refuse(d.checks, c);
        };
        let covered =
            self.ram.ram().regions().iter().any(|r| {
                r.gpa.raw() <= msi.last.0 && msi.first.0 < r.gpa.raw().saturating_add(r.len)
            });
        if covered {
            let c = Check::fail(
                "host-msi-window",
                format!(
                    "guest RAM covers the host MSI window {msi}: stage 2 cannot map the doorbell there"
                ),
            );
            return refuse(d.checks, c);
        }
        d
    }

    /// Decides for device `sid` and backs it at once with what the
    /// guest's STE (or GBPA) says. A refused device is handed back.
    pub(crate) fn add_device<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        sid: u32,
        device: BoundDevice,
        view: HostView,
    ) -> Result<Decision, (PassthroughError, BoundDevice)> {
        if self.reg.contains(sid) {
            return Err((PassthroughError::Duplicate { sid }, device));
        }
        let frozen = smmu.idr_read.load(std::sync::atomic::Ordering::Relaxed);
        let guest = match frozen {
            // The guest has read the ID registers: they stay as read.
            true => smmu.config().clone(),
            false => clamp_to_host(smmu.config(), &view),
        };
        let decision = self.decide(&guest, &view);
        if decision.kind != DecisionKind::Nested {
            let decision = Box::new(decision);
            return Err((PassthroughError::Refused { decision }, device));
        }
        let ats = host_ats(&view);
        let Some(msi) = host_msi_window(&view) else {
            let decision = Box::new(decision);
            return Err((PassthroughError::Refused { decision }, device));
        };
        if !frozen && guest != *smmu.config() {
            smmu.reconfigure(guest);
        }
        let pt = PtDevice { view, ats, msi };
        let initial = place_of(wanted(smmu, mem, sid, ats));
        if let Err((e, dev)) = self
            .reg
            .add_device(sid, device, Backing::Nested, &pt.view, initial)
        {
            return Err((e.into(), dev));
        }
        self.devices.insert(sid, pt);
        Ok(decision)
    }

    /// Removes device `sid`: detached, its vDEVICE and HWPTs destroyed,
    /// handed back blocked. `None` if it is not one (or the host did not
    /// let go of it, logged).
    pub(crate) fn remove_device(&mut self, sid: u32) -> Option<BoundDevice> {
        self.devices.remove(&sid)?;
        self.reg.remove_device(sid)
    }

    // -- commands ----------------------------------------------------------

    /// The command at queue position `index`; whether the backend owes host
    /// work for it (a sync is then needed before CMDQ_CONS passes it).
    pub(crate) fn command<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &Smmuv3,
        mem: &M,
        index: u32,
        raw: [u64; 2],
        cmd: &Command,
    ) -> bool {
        if self.devices.is_empty() {
            return false;
        }
        if self.refused.is_some() {
            // The queue stops at the refused command; what follows is
            // consumed again once the guest acknowledged the error.
            return true;
        }
        match *cmd {
            // arm_vsmmu_convert_user_cmd: TLBI_NH_{VA,VAA,ALL,ASID} get the
            // vIOMMU's VMID, TLBI_NSNH_ALL becomes TLBI_NH_ALL of it.
            Command::TlbiNhAll { .. }
            | Command::TlbiNhAsid { .. }
            | Command::TlbiNhVa { .. }
            | Command::TlbiNhVaa { .. }
            | Command::TlbiNsnhAll => self.queue(None, raw, index),
            // "case CMDQ_OP_ATC_INV: case CMDQ_OP_CFGI_CD: case
            // CMDQ_OP_CFGI_CD_ALL: ... if (arm_vsmmu_vsid_to_sid(vsmmu,
            // vsid, &sid)) return -EIO;": only StreamIDs with a vDEVICE.
            // Others (emulated devices, or none: Linux sends CFGI_CD
            // before CFGI_STE) are the model's alone.
            Command::CfgiCd { sid, .. } | Command::CfgiCdAll { sid } => {
                self.queue(Some(sid), raw, index)
            }
            Command::AtcInv(inv) => self.queue(Some(inv.sid), raw, index),
            Command::CfgiSte { sid } => {
                self.flush();
                self.reinstall(smmu, mem, sid, index);
            }
            Command::CfgiSteRange { first, log2 } => {
                self.flush();
                // IHI 0070 CMD_CFGI_STE_RANGE: the 2^(Range + 1) StreamIDs
                // of the aligned block holding StreamID.
                let size = 1u64.checked_shl(log2).unwrap_or(u64::MAX);
                let lo = u64::from(first) & !size.wrapping_sub(1);
                let sids: Vec<u32> = self
                    .devices
                    .keys()
                    .copied()
                    .filter(|s| u64::from(*s) >= lo && u64::from(*s) - lo < size)
                    .collect();
                for sid in sids {
                    self.reinstall(smmu, mem, sid, index);
                }
            }
            _ => {}
        }
        true
    }

    fn queue(&mut self, vsid: Option<u32>, raw: [u64; 2], index: u32) {
        if let Some(s) = vsid
            && !self.devices.contains_key(&s)
        {
            return;
        }
        let Some(engine) = self.reg.nested_mut() else {
            return;
        };
        self.queued += engine.queue_smmuv3(vsid.map(u64::from), raw, u64::from(index));
    }

    /// Sends what is queued (one `IOMMU_HWPT_INVALIDATE` per vIOMMU);
    /// notes the first command the host did not complete.
    fn flush(&mut self) {
        if self.queued == 0 {
            return;
        }
        self.queued = 0;
        let Some(engine) = self.reg.nested_mut() else {
            return;
        };
        let report = engine.flush();
        self.stats.invalidate_calls += report.calls;
        self.stats.invalidations += report.handled;
        if let Some(f) = report.failures.first() {
            nesting_core::guest_log!(
                Warn,
                "smmuv3 passthrough: the host failed the command at {:#x} ({}); {} unsent",
                f.tag,
                f.error,
                f.unsent.len()
            );
            self.refused
                .get_or_insert(u32::try_from(f.tag).unwrap_or(u32::MAX));
        }
    }

    /// Re-reads `sid`'s STE and installs what it says; a host refusal
    /// aborts the stream and refuses the command at `index`.
    fn reinstall<M: GuestMemory + ?Sized>(&mut self, smmu: &Smmuv3, mem: &M, sid: u32, index: u32) {
        let Some(d) = self.devices.get(&sid) else {
            return;
        };
        let to = place_of(wanted(smmu, mem, sid, d.ats));
        if !self.place(sid, to) {
            self.refused.get_or_insert(index);
        }
    }

    /// Moves `sid`'s stream; on a host refusal it is aborted instead.
    /// Returns whether it went where asked.
    fn place(&mut self, sid: u32, to: Place<NoSpace>) -> bool {
        if self.reg.place((sid, None)) == to {
            return true;
        }
        let plan = Plan {
            steps: vec![Step::Place {
                req: (sid, None),
                to,
            }],
        };
        let Err(e) = self.reg.stage(&plan) else {
            return true;
        };
        nesting_core::guest_log!(Warn, "smmuv3 passthrough {sid:#x}: installing the STE: {e}");
        let block = Plan {
            steps: vec![Step::Place {
                req: (sid, None),
                to: Place::Blocked,
            }],
        };
        if let Err(e) = self.reg.stage(&block) {
            nesting_core::guest_log!(
                Warn,
                "smmuv3 passthrough {sid:#x}: aborting after a refusal: {e}"
            );
        }
        false
    }

    /// A sync point: every queued command is sent; `Err` names the first
    /// one the host did not complete.
    pub(crate) fn sync<M: GuestMemory + ?Sized>(
        &mut self,
        _smmu: &Smmuv3,
        _mem: &M,
    ) -> Result<(), Refused> {
        self.flush();
        match self.refused.take() {
            Some(index) => {
                self.stats.refused += 1;
                Err(Refused { index })
            }
            None => Ok(()),
        }
    }

    /// Every passthrough stream follows the SMMU's state again (SMMUEN or
    /// GBPA changed). A host refusal aborts the stream (logged): no
    /// command is there to refuse.
    pub(crate) fn rescan<M: GuestMemory + ?Sized>(&mut self, smmu: &Smmuv3, mem: &M) {
        self.flush();
        let sids: Vec<(u32, bool)> = self.devices.iter().map(|(s, d)| (*s, d.ats)).collect();
        for (sid, ats) in sids {
            let to = place_of(wanted(smmu, mem, sid, ats));
            self.place(sid, to);
        }
    }

    /// Every passthrough stream follows GBPA (after a reset, SMMUEN = 0:
    /// no STE is read).
    pub(crate) fn follow_gbpa(&mut self, smmu: &Smmuv3) {
        self.queued = 0;
        self.refused = None;
        let ctx = gbpa_context(smmu);
        let sids: Vec<u32> = self.devices.keys().copied().collect();
        for sid in sids {
            self.place(sid, place_of(ctx));
        }
    }

    /// Reads the host's events (see the module documentation).
    pub(crate) fn poll(&mut self) -> Result<Vec<NestedEvent>, PassthroughError> {
        match self.reg.nested_mut() {
            Some(e) => e
                .poll_events(Instant::now())
                .map_err(PassthroughError::Events),
            None => Ok(Vec::new()),
        }
    }
}

fn place_of(ctx: NestedContext) -> Place<NoSpace> {
    match ctx {
        NestedContext::Abort => Place::Blocked,
        c => Place::Nested(c),
    }
}

/// IHI 0070 SMMU_GBPA: with SMMUEN = 0 transactions abort (ABORT = 1) or
/// bypass.
fn gbpa_context(smmu: &Smmuv3) -> NestedContext {
    match gbpa::ABORT.is_set(smmu.registers().get(off::GBPA)) {
        true => NestedContext::Abort,
        false => NestedContext::Bypass,
    }
}

/// What stream `sid` must be on the host: GBPA with SMMUEN = 0
/// (SMMU_GBPA.ABORT), else its STE (IHI 0070 5.2).
fn wanted<M: GuestMemory + ?Sized>(smmu: &Smmuv3, mem: &M, sid: u32, ats: bool) -> NestedContext {
    if !smmu.enabled() {
        return gbpa_context(smmu);
    }
    let SteLookup::At(addr) = smmu.stream_table().locate(mem, sid) else {
        return NestedContext::Abort;
    };
    let Ok(words) = read_qwords::<M, 8>(mem, addr) else {
        return NestedContext::Abort;
    };
    let mut ste = Ste(words);
    // 5.2: an STE the SMMU would take as ILLEGAL (C_BAD_STE) aborts.
    let Ok(cfg) = ste.decode(&smmu.caps) else {
        return NestedContext::Abort;
    };
    match cfg.mode {
        SteMode::Bypass => NestedContext::Bypass,
        SteMode::S1 => {
            // 5.2 STE.EATS = 0b00: ATS translation requests are refused;
            // what the device gets when its host has no ATS.
            if !ats {
                ste = ste.with_eats(0);
            }
            NestedContext::Smmuv3 {
                ste: [ste.0[0], ste.0[1]],
            }
        }
        // A stage-1-only guest has no stage-2 STE that decodes; anything
        // else aborts.
        SteMode::Abort | SteMode::S2 | SteMode::Nested => NestedContext::Abort,
    }
}

// ---------------------------------------------------------------------------
// The SMMU's side.

impl Smmuv3 {
    /// Enables passthrough devices on this SMMU, over the VM's iommufd
    /// and RAM IOAS. Several SMMUs of a VM each call it with the same RAM
    /// IOAS: they share its stage 2 and each get their own vIOMMU.
    pub fn enable_passthrough(&mut self, host: SharedHost, ram: Arc<RamIoas>) {
        if self.passthrough.is_none() {
            self.passthrough = Some(Box::new(PassthroughBackend::new(host, ram)));
        }
    }

    /// Takes passthrough device `sid` (bound to the VM's iommufd, `view`
    /// what the host said of it): decides with the ladder and backs it at
    /// once as the guest's STE (or GBPA) says. A refused device is handed
    /// back with the reason.
    pub fn add_passthrough<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sid: u32,
        device: BoundDevice,
        view: HostView,
    ) -> Result<Decision, (PassthroughError, BoundDevice)> {
        let Some(mut backend) = self.passthrough.take() else {
            return Err((PassthroughError::NotEnabled, device));
        };
        let res = backend.add_device(self, mem, sid, device, view);
        self.passthrough = Some(backend);
        res
    }

    /// Removes passthrough device `sid` (hot-unplug) and hands it back.
    pub fn remove_passthrough(&mut self, sid: u32) -> Option<BoundDevice> {
        self.passthrough.as_mut()?.remove_device(sid)
    }

    /// The passthrough backend, once enabled.
    pub fn passthrough(&self) -> Option<&PassthroughBackend> {
        self.passthrough.as_deref()
    }

    /// The host MSI window passthrough device `sid`'s MSIs go through: the
    /// VMM describes it to the guest as a 1:1 reserved region of the
    /// stream (ACPI IORT RMR, or a device-tree `iommu-addresses`
    /// reserved-memory node), so the guest's stage 1 maps it.
    pub fn passthrough_msi_window(&self, sid: u32) -> Option<IovaRange> {
        self.passthrough.as_ref()?.msi_window(sid)
    }

    /// Copies what the host reported for passthrough devices into the
    /// guest's event queue; returns how many records were written. Call
    /// it when the host may have events (see the [`crate::passthrough`]
    /// documentation). A host event queue that cannot be read (its file
    /// closed) is an `Err`, after every record read was written and the
    /// guest's event queue flagged as overflowed: events are never lost
    /// without the guest and the VMM being told.
    pub fn poll_host_events<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<usize, PassthroughError> {
        let Some(mut backend) = self.passthrough.take() else {
            return Ok(0);
        };
        let res = backend.poll();
        let mut written = 0;
        let mut failed = None;
        if let Ok(events) = &res {
            for ev in events {
                match ev {
                    NestedEvent::Smmuv3 { record } => {
                        let rec = record_words(record);
                        if self.record_raw(mem, rec) == crate::event::Recorded::Yes {
                            written += 1;
                        }
                        backend.stats.events += 1;
                    }
                    NestedEvent::Lost => {
                        self.evtq_overflow(mem);
                        backend.stats.lost += 1;
                    }
                    // A vEVENTQ that cannot be read may have held events:
                    // the guest is told as of an overflow (IHI 0070 "Event
                    // queue overflow"), the VMM by the error.
                    NestedEvent::QueueFailed { error } => {
                        nesting_core::guest_log!(
                            Warn,
                            "smmuv3 passthrough: a host event queue cannot be read ({error}); reported to the guest as an event queue overflow"
                        );
                        self.evtq_overflow(mem);
                        backend.stats.lost += 1;
                        failed.get_or_insert(*error);
                    }
                    NestedEvent::PageRequest { .. } => {}
                }
            }
        }
        self.passthrough = Some(backend);
        match failed {
            Some(source) => Err(PassthroughError::Events(NestedError::Host { source })),
            None => res.map(|_| written),
        }
    }

    /// Re-derives every passthrough stream (SMMUEN or GBPA changed).
    pub(crate) fn passthrough_rescan<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        if let Some(mut p) = self.passthrough.take() {
            p.rescan(self, mem);
            self.passthrough = Some(p);
        }
    }

    /// Lowers what the ID registers say to `cfg` (host clamping before the
    /// guest read them); every other register keeps its value.
    pub(crate) fn reconfigure(&mut self, cfg: Smmuv3Config) {
        let mut regs = crate::regs::RegisterFile::new(&cfg);
        for d in self.regs.descs() {
            if d.offset > off::AIDR {
                regs.set(d.offset, self.regs.get(d.offset));
            }
        }
        self.caps = crate::caps::Caps::new(&cfg);
        self.regs = regs;
        self.cfg = cfg;
        self.cfg_cache.clear();
    }
}

/// `struct iommu_vevent_arm_smmuv3`: four little-endian u64 (shorter
/// records are zero-extended).
fn record_words(bytes: &[u8]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (w, c) in out.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        *w = u64::from_le_bytes(b);
    }
    out
}
