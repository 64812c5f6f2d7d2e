//! The nested engine: the guest's stage-1 tables go to the host as nested
//! HWPTs over a stage 2 that maps guest RAM.
//!
//! - **Stage 2.** Guest RAM, mapped once GPA -> host memory in the VM's RAM
//!   IOAS ([`RamIoas`]), under a NEST_PARENT HWPT (with dirty tracking when
//!   the host has it and the VMM asks). Devices the existing parents cannot
//!   take (another physical IOMMU) get a parent of their own. Parents are
//!   shared by every engine over the same [`RamIoas`] (one engine per
//!   guest IOMMU instance): a second vSMMU on the same host SMMU gets its
//!   own vIOMMU over the first one's stage 2.
//! - **Contexts.** Per guest translation context (a VT-d PASID entry, an
//!   SMMUv3 STE) a nested HWPT carrying the vendor data, attached with
//!   replace so a device is never left without a domain; the old HWPT is
//!   destroyed only after the replace succeeded. SMMUv3 abort and bypass
//!   HWPTs are allocated up front with the vIOMMU.
//! - **PASIDs.** VT-d PASIDs pass through: each PASID the guest sets up
//!   gets its own nested HWPT attached to that PASID (QEMU nests PASID 0
//!   only). SMMUv3 substreams live in the guest's CD table and need no
//!   per-PASID attach.
//! - **SMMUv3 objects.** A vIOMMU per stage-2 parent and a vDEVICE per
//!   device (virt_id = the guest StreamID), created when the first device
//!   binds.
//! - **Invalidations.** Queued between two sync points and sent in as few
//!   `IOMMU_HWPT_INVALIDATE` calls as the targets allow (one per target;
//!   QEMU sends one entry per call). Each entry carries the model's tag, so
//!   a partial completion names the command the guest must get its
//!   architected error for, and which ones were never sent.
//! - **Events.** vEVENTQ records and IOPF fault groups are read and handed
//!   to the model as typed events; lost events are detected (the kernel's
//!   marker, or a gap in sequence numbers), and a queue that cannot be
//!   read (its file closed) is reported as an event too, never dropped. Each fault group is answered
//!   exactly once; one the guest never answers is answered INVALID after a
//!   timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitvec::vec::BitVec;
use thiserror::Error;

use crate::host::objects::{BoundDevice, FaultQueue, Hwpt, SharedHost, Vdevice, Veventq, Viommu};
use crate::host::{
    DevId, FaultGroup, FaultQueueId, HostCaps, HostError, HwInfo, HwptAlloc, HwptData, HwptFlags,
    InvalidateTarget, InvalidationBatch, PageResponse, PageResponseCode, PtId, VEvent, VeventqType,
    ViommuType, VtdS1Flags, VtdS1Invalidation,
};
use crate::ram::RamIoas;
use crate::types::{IovaRange, Pasid};

/// STE double-word 0 fields the kernel accepts in a nested vSTE (V, Cfg,
/// S1Fmt, S1ContextPtr, S1CDMax: `STRTAB_STE_0_NESTING_ALLOWED` in
/// `drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.h`; IHI 0070 section 5.2).
pub const SMMUV3_STE0_NESTING_ALLOWED: u64 = 0xf80f_ffff_ffff_ffff;
/// STE double-word 1 fields the kernel accepts (S1DSS, S1CIR, S1COR,
/// S1CSH, S1STALLD, EATS: `STRTAB_STE_1_NESTING_ALLOWED`).
pub const SMMUV3_STE1_NESTING_ALLOWED: u64 = 0x3800_00ff;
/// vSTE word 0 of an abort STE: V=1, Cfg=0b000 (IHI 0070 section 5.2).
const SMMUV3_STE0_ABORT: u64 = 0x1;
/// vSTE word 0 of a bypass STE: V=1, Cfg=0b100.
const SMMUV3_STE0_BYPASS: u64 = 0x1 | (0b100 << 1);

/// Entries per `IOMMU_HWPT_INVALIDATE` call: the kernel copies the array
/// entry by entry and takes any length, but a bounded call keeps one guest
/// from holding the iommufd for long.
pub const MAX_INVALIDATIONS_PER_CALL: usize = 1024;

/// vEVENTQ records read per poll: a guest that never drains its event
/// queue cannot make the VMM loop on a flood.
pub const MAX_EVENTS_PER_POLL: usize = 256;

/// Fault groups waiting for the guest's answer: a device that raises page
/// requests faster than the guest answers them is answered INVALID past
/// this (the PCIe outstanding page request allocation is far smaller).
pub const MAX_PENDING_FAULTS: usize = 4096;

/// Failure of a nested engine operation.
#[derive(Debug, Error)]
pub enum NestedError {
    /// A host call failed.
    #[error("host failure")]
    Host {
        /// The host's error.
        #[source]
        source: HostError,
    },
    /// No device with that guest ID was added.
    #[error("no nested device with guest id {vsid:#x}")]
    NoDevice {
        /// The guest ID.
        vsid: u64,
    },
    /// A guest ID used twice.
    #[error("guest id {vsid:#x} already has a nested device")]
    Duplicate {
        /// The guest ID.
        vsid: u64,
    },
    /// The context does not fit the device's host IOMMU (a VT-d context
    /// for an SMMUv3 device, a per-PASID attach on SMMUv3, ...).
    #[error("{what} is not possible for a device behind this host IOMMU")]
    Unsupported {
        /// What was asked.
        what: &'static str,
    },
    /// A fault response for a group that is not waiting for one (answered
    /// already, or never raised).
    #[error("no page request group with cookie {cookie:#x} awaits an answer")]
    NotPending {
        /// The group's cookie.
        cookie: u32,
    },
}

impl From<HostError> for NestedError {
    fn from(source: HostError) -> Self {
        NestedError::Host { source }
    }
}

/// What the VMM asks of the nested engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestedConfig {
    /// Allocate stage-2 parents with dirty tracking where the host has it
    /// (for live migration).
    pub dirty_tracking: bool,
    /// Deliver I/O page faults (PRI/stall) of nested HWPTs to the model.
    pub iopf: bool,
    /// Depth of each SMMUv3 vEVENTQ (0: no vEVENTQ).
    pub veventq_depth: u32,
    /// How long a page request group may wait for the guest's answer.
    pub fault_timeout: Duration,
}

impl Default for NestedConfig {
    fn default() -> Self {
        NestedConfig {
            dirty_tracking: false,
            iopf: false,
            veventq_depth: 64,
            // The PCIe PRI has no completion timeout of its own; Linux's
            // host driver gives up on a group after seconds, so answering
            // INVALID after 10 s keeps the device from hanging forever.
            fault_timeout: Duration::from_secs(10),
        }
    }
}

/// A guest translation context for one device (or one of its PASIDs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NestedContext {
    /// DMA is refused.
    Abort,
    /// DMA goes through stage 2 only: IOVA = GPA.
    Bypass,
    /// VT-d first-stage tables (a scalable-mode PASID entry with PGTT
    /// first-stage or nested).
    VtdS1 {
        /// SRE / EAFE / WPE.
        flags: VtdS1Flags,
        /// GPA of the first-stage root (FSPTPTR).
        pgtbl_addr: u64,
        /// 48 or 57.
        addr_width: u32,
    },
    /// An SMMUv3 STE's first two double-words as the guest wrote them; the
    /// engine keeps only the fields the kernel accepts.
    Smmuv3 {
        /// STE words 0 and 1.
        ste: [u64; 2],
    },
}

/// One invalidation entry for the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// A VT-d stage-1 invalidation.
    VtdS1(VtdS1Invalidation),
    /// An SMMUv3 command.
    Smmuv3([u64; 2]),
}

/// An entry the host did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidationFailure {
    /// The model's tag of the failing entry.
    pub tag: u64,
    /// Why.
    pub error: HostError,
    /// Tags of the entries queued after it for the same target, which the
    /// host never processed.
    pub unsent: Vec<u64>,
}

/// What [`NestedEngine::flush`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// `IOMMU_HWPT_INVALIDATE` calls made.
    pub calls: u64,
    /// Entries the host handled.
    pub handled: u64,
    /// At most one failure per target.
    pub failures: Vec<InvalidationFailure>,
}

/// An event from the host for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NestedEvent {
    /// An SMMUv3 event record of a nested device (the kernel has replaced
    /// the physical StreamID by the guest's).
    Smmuv3 {
        /// The record (`struct iommu_vevent_arm_smmuv3`: four
        /// little-endian u64).
        record: Vec<u8>,
    },
    /// Events were lost before this point (queue overflow).
    Lost,
    /// Reading a host queue (a vEVENTQ, the fault queue) failed: its file
    /// was closed or the read refused, so events it held may be lost. It
    /// comes after everything read before the failure, which is never
    /// dropped; the model tells its guest as it tells of [`Self::Lost`],
    /// and the VMM of the failure.
    QueueFailed {
        /// The host's error.
        error: HostError,
    },
    /// A page request group of a device; answer with
    /// [`NestedEngine::respond`].
    PageRequest {
        /// The device's guest ID.
        vsid: u64,
        /// The faults of the group.
        group: FaultGroup,
    },
}

#[derive(Debug)]
struct Parent {
    /// Devices whose vDEVICE and contexts depend on the objects below are
    /// removed before the parent (see [`NestedEngine::remove_device`]).
    hwpt: Arc<Hwpt>,
    smmu: Option<SmmuObjects>,
    kind: Kind,
}

#[derive(Debug)]
struct SmmuObjects {
    abort: Hwpt,
    bypass: Hwpt,
    veventq: Option<Veventq>,
    /// Sequence number of the last event read.
    last_seq: Option<u32>,
    viommu: Arc<Viommu>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Vtd,
    Smmuv3,
}

#[derive(Debug)]
struct Installed {
    ctx: NestedContext,
    /// The nested HWPT, if the context has one of its own.
    hwpt: Option<Hwpt>,
}

/// Fields drop in order: the device is detached before the HWPTs it was
/// attached to and its vDEVICE are destroyed.
#[derive(Debug)]
struct Device {
    dev: BoundDevice,
    contexts: HashMap<Option<Pasid>, Installed>,
    vdevice: Option<Vdevice>,
    parent: usize,
    pasid_capable: bool,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    vsid: u64,
    since: Instant,
}

#[derive(Debug)]
struct Queued {
    target: InvalidateTarget,
    entry: Invalidation,
    tag: u64,
}

/// The nested engine of one VM.
#[derive(Debug)]
pub struct NestedEngine {
    host: SharedHost,
    ram: Arc<RamIoas>,
    cfg: NestedConfig,
    // Devices before parents: dropped first.
    devices: BTreeMap<u64, Device>,
    parents: Vec<Parent>,
    fault: Option<FaultQueue>,
    pending: HashMap<u32, Pending>,
    queue: Vec<Queued>,
}

/// The flags of a stage-2 parent for `device`.
fn parent_flags(device: &Device, kind: Kind, dirty: bool) -> HwptFlags {
    let mut flags = HwptFlags::NEST_PARENT;
    if dirty {
        flags |= HwptFlags::DIRTY_TRACKING;
    }
    if device.pasid_capable && kind == Kind::Vtd {
        flags |= HwptFlags::PASID;
    }
    flags
}

fn kind_of(hw: &HwInfo) -> Option<Kind> {
    match hw {
        HwInfo::IntelVtd { .. } => Some(Kind::Vtd),
        HwInfo::ArmSmmuv3 { .. } => Some(Kind::Smmuv3),
        _ => None,
    }
}

/// Whether an error of attaching to an existing parent means "this parent
/// cannot take the device" (try another), not a failure of the host.
fn incompatible(e: &NestedError) -> bool {
    matches!(e, NestedError::Host { source } if [libc::EINVAL, libc::EOPNOTSUPP, libc::EBUSY].contains(&source.errno.0))
}

impl NestedEngine {
    /// An engine over the VM's RAM IOAS. Allocates the fault queue when
    /// `cfg.iopf` is set; stage-2 parents come with the first device.
    pub fn new(
        host: &SharedHost,
        ram: &Arc<RamIoas>,
        cfg: NestedConfig,
    ) -> Result<Self, NestedError> {
        let fault = if cfg.iopf {
            Some(FaultQueue::alloc(host)?)
        } else {
            None
        };
        Ok(NestedEngine {
            host: host.clone(),
            ram: ram.clone(),
            cfg,
            devices: BTreeMap::new(),
            parents: Vec::new(),
            fault,
            pending: HashMap::new(),
            queue: Vec::new(),
        })
    }

    /// Number of stage-2 parents (one per group of devices that can share
    /// one).
    pub fn parents(&self) -> usize {
        self.parents.len()
    }

    /// The stage-2 parents this engine uses (some possibly shared with
    /// other engines over the same RAM IOAS).
    pub fn stage2_parents(&self) -> Vec<crate::host::HwptId> {
        self.parents.iter().map(|p| p.hwpt.id()).collect()
    }

    /// The vIOMMUs (SMMUv3), one per stage-2 parent.
    pub fn viommus(&self) -> Vec<crate::host::ViommuId> {
        self.parents
            .iter()
            .filter_map(|p| p.smmu.as_ref().map(|s| s.viommu.id()))
            .collect()
    }

    /// The nested HWPT of a device's context, if it has one of its own.
    pub fn hwpt_of(&self, vsid: u64, pasid: Option<Pasid>) -> Option<crate::host::HwptId> {
        self.devices
            .get(&vsid)?
            .contexts
            .get(&pasid)?
            .hwpt
            .as_ref()
            .map(|h| h.id())
    }

    /// The host device of a guest ID.
    pub fn device(&self, vsid: u64) -> Option<DevId> {
        self.devices.get(&vsid).map(|d| d.dev.id())
    }

    /// The context installed for a device or PASID.
    pub fn context(&self, vsid: u64, pasid: Option<Pasid>) -> Option<NestedContext> {
        self.devices.get(&vsid)?.contexts.get(&pasid).map(|i| i.ctx)
    }

    /// Adds a passthrough device under the guest ID `vsid` (VT-d source-id,
    /// SMMUv3 StreamID) in context `initial` (VT-d with translation off:
    /// [`NestedContext::Bypass`]; SMMUv3: what GBPA says). The device joins
    /// the first stage-2 parent that can take it, or gets a new one. On
    /// failure nothing changes and the device is handed back, except that
    /// PASIDs it still had attached from before are detached first (and
    /// if one cannot be, that is the failure).
    pub fn add_device(
        &mut self,
        vsid: u64,
        dev: BoundDevice,
        initial: NestedContext,
    ) -> Result<(), (NestedError, BoundDevice)> {
        if self.devices.contains_key(&vsid) {
            return Err((NestedError::Duplicate { vsid }, dev));
        }
        // A device joins with no PASID of its past attached: one left
        // attached (a detach the host refused when it left its last engine
        // or domain) would reach what that context reached. If it cannot
        // be detached now, the device is refused.
        let mut dev = dev;
        let stale: Vec<Pasid> = dev.attached_pasids().collect();
        for p in stale {
            if let Err(e) = dev.detach(Some(p)) {
                return Err((e.into(), dev));
            }
        }
        let info = match self.host.hw_info(dev.id()) {
            Ok(i) => i,
            Err(e) => return Err((e.into(), dev)),
        };
        let Some(kind) = kind_of(&info.hw) else {
            return Err((NestedError::Unsupported { what: "nesting" }, dev));
        };
        let mut device = Device {
            dev,
            contexts: HashMap::new(),
            vdevice: None,
            parent: 0,
            pasid_capable: info.max_pasid_log2 > 0,
        };
        for p in 0..self.parents.len() {
            if self.parents[p].kind != kind {
                continue;
            }
            match self.join(p, vsid, &mut device, initial) {
                Ok(()) => {
                    self.devices.insert(vsid, device);
                    return Ok(());
                }
                Err(e) if incompatible(&e) => continue,
                Err(e) => return Err((e, device.dev)),
            }
        }
        let dirty = self.cfg.dirty_tracking && info.caps.contains(HostCaps::DIRTY_TRACKING);
        let flags = parent_flags(&device, kind, dirty);
        // A stage 2 another engine over the same RAM IOAS made (another
        // guest IOMMU instance): shared when the device's host IOMMU takes
        // it (arm_vsmmu_init: "if (s2_parent->smmu != smmu) return
        // -EINVAL;").
        let mine: Vec<crate::host::HwptId> = self.parents.iter().map(|p| p.hwpt.id()).collect();
        let shared = self.ram.nest_parents(flags);
        for hwpt in shared.into_iter().filter(|h| !mine.contains(&h.id())) {
            match self.try_parent(hwpt, vsid, &mut device, kind, initial) {
                Ok(()) => {
                    self.devices.insert(vsid, device);
                    return Ok(());
                }
                Err(e) if incompatible(&e) => continue,
                Err(e) => return Err((e, device.dev)),
            }
        }
        let hwpt = match self.alloc_parent(&device, flags) {
            Ok(h) => h,
            Err(e) => return Err((e, device.dev)),
        };
        match self.try_parent(hwpt.clone(), vsid, &mut device, kind, initial) {
            Ok(()) => {
                self.ram.add_nest_parent(flags, &hwpt);
                self.devices.insert(vsid, device);
                Ok(())
            }
            Err(e) => Err((e, device.dev)),
        }
    }

    /// Makes `hwpt` a parent of this engine (for SMMUv3 with its vIOMMU,
    /// vEVENTQ, abort and bypass HWPTs) and puts `device` under it; on
    /// failure the engine is as before.
    fn try_parent(
        &mut self,
        hwpt: Arc<Hwpt>,
        vsid: u64,
        device: &mut Device,
        kind: Kind,
        initial: NestedContext,
    ) -> Result<(), NestedError> {
        let smmu = match kind {
            Kind::Vtd => None,
            Kind::Smmuv3 => Some(self.new_smmu_objects(device.dev.id(), &hwpt)?),
        };
        self.parents.push(Parent { hwpt, smmu, kind });
        let p = self.parents.len() - 1;
        if let Err(e) = self.join(p, vsid, device, initial) {
            self.parents.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Allocates a stage-2 parent over the RAM IOAS for `device`.
    fn alloc_parent(&self, device: &Device, flags: HwptFlags) -> Result<Arc<Hwpt>, NestedError> {
        let req = HwptAlloc {
            dev: device.dev.id(),
            parent: PtId::Ioas(self.ram.ioas().id()),
            flags,
            fault: None,
            data: HwptData::None,
        };
        Ok(Arc::new(
            Hwpt::alloc(&self.host, &req)?.with_parent(self.ram.ioas().clone()),
        ))
    }

    fn new_smmu_objects(&self, dev: DevId, hwpt: &Arc<Hwpt>) -> Result<SmmuObjects, NestedError> {
        let viommu = Arc::new(Viommu::alloc(&self.host, dev, hwpt, ViommuType::ArmSmmuv3)?);
        let veventq = match self.cfg.veventq_depth {
            0 => None,
            depth => Some(Veventq::alloc(
                &self.host,
                &viommu,
                VeventqType::ArmSmmuv3,
                depth,
            )?),
        };
        let alloc = |ste0: u64| -> Result<Hwpt, NestedError> {
            let req = HwptAlloc {
                dev,
                parent: PtId::Viommu(viommu.id()),
                flags: HwptFlags::empty(),
                fault: None,
                data: HwptData::Smmuv3 { ste: [ste0, 0] },
            };
            Ok(Hwpt::alloc(&self.host, &req)?.with_parent(viommu.clone()))
        };
        Ok(SmmuObjects {
            abort: alloc(SMMUV3_STE0_ABORT)?,
            bypass: alloc(SMMUV3_STE0_BYPASS)?,
            veventq,
            last_seq: None,
            viommu,
        })
    }

    /// Puts `device` under parent `p`: its vDEVICE (SMMUv3) and its initial
    /// context. Undone on failure.
    fn join(
        &mut self,
        p: usize,
        vsid: u64,
        device: &mut Device,
        initial: NestedContext,
    ) -> Result<(), NestedError> {
        device.parent = p;
        if let Some(smmu) = &self.parents[p].smmu {
            device.vdevice = Some(Vdevice::alloc(
                &self.host,
                &smmu.viommu,
                device.dev.id(),
                vsid,
            )?);
        }
        if let Err(e) = self.install_on(device, None, initial) {
            device.vdevice = None;
            return Err(e);
        }
        Ok(())
    }

    /// Installs a context for a device (`pasid: None`) or one of its
    /// PASIDs, replacing the one installed: a new nested HWPT is allocated
    /// and attached with replace before the old one is destroyed, so the
    /// device always has a domain. The same context again costs nothing.
    /// On failure the old context stays.
    pub fn install(
        &mut self,
        vsid: u64,
        pasid: Option<Pasid>,
        ctx: NestedContext,
    ) -> Result<(), NestedError> {
        let mut device = self
            .devices
            .remove(&vsid)
            .ok_or(NestedError::NoDevice { vsid })?;
        let res = self.install_on(&mut device, pasid, ctx);
        self.devices.insert(vsid, device);
        res
    }

    fn install_on(
        &self,
        device: &mut Device,
        pasid: Option<Pasid>,
        ctx: NestedContext,
    ) -> Result<(), NestedError> {
        let ctx = match ctx {
            NestedContext::Smmuv3 { ste } => NestedContext::Smmuv3 {
                ste: [
                    ste[0] & SMMUV3_STE0_NESTING_ALLOWED,
                    ste[1] & SMMUV3_STE1_NESTING_ALLOWED,
                ],
            },
            c => c,
        };
        if device.contexts.get(&pasid).is_some_and(|i| i.ctx == ctx) {
            return Ok(());
        }
        let parent = &self.parents[device.parent];
        let (target, hwpt) = match (parent.kind, ctx, &parent.smmu) {
            (Kind::Smmuv3, _, _) if pasid.is_some() => {
                return Err(NestedError::Unsupported {
                    what: "a per-PASID attach (SMMUv3 substreams live in the guest's CD table)",
                });
            }
            (Kind::Vtd, NestedContext::Abort, _) => {
                device.dev.detach(pasid)?;
                device.contexts.insert(pasid, Installed { ctx, hwpt: None });
                return Ok(());
            }
            (Kind::Vtd, NestedContext::Bypass, _) => (parent.hwpt.id(), None),
            (
                Kind::Vtd,
                NestedContext::VtdS1 {
                    flags,
                    pgtbl_addr,
                    addr_width,
                },
                _,
            ) => {
                let data = HwptData::VtdS1 {
                    flags,
                    pgtbl_addr,
                    addr_width,
                };
                let h = self.alloc_nested(device, PtId::Hwpt(parent.hwpt.id()), data)?;
                (h.id(), Some(h.with_parent(parent.hwpt.clone())))
            }
            (Kind::Smmuv3, NestedContext::Abort, Some(s)) => (s.abort.id(), None),
            (Kind::Smmuv3, NestedContext::Bypass, Some(s)) => (s.bypass.id(), None),
            (Kind::Smmuv3, NestedContext::Smmuv3 { ste }, Some(s)) => {
                let h = self.alloc_nested(
                    device,
                    PtId::Viommu(s.viommu.id()),
                    HwptData::Smmuv3 { ste },
                )?;
                (h.id(), Some(h.with_parent(s.viommu.clone())))
            }
            _ => {
                return Err(NestedError::Unsupported {
                    what: "this context",
                });
            }
        };
        // On failure `hwpt` is dropped (destroyed) and the old context,
        // still attached, stays.
        device.dev.attach(pasid, PtId::Hwpt(target))?;
        device.contexts.insert(pasid, Installed { ctx, hwpt });
        Ok(())
    }

    fn alloc_nested(
        &self,
        device: &Device,
        parent: PtId,
        data: HwptData,
    ) -> Result<Hwpt, NestedError> {
        let mut flags = HwptFlags::empty();
        if device.pasid_capable && self.parents[device.parent].kind == Kind::Vtd {
            flags |= HwptFlags::PASID;
        }
        let fault = self.fault.as_ref().map(|f| f.id());
        if fault.is_some() {
            flags |= HwptFlags::FAULT_ID_VALID;
        }
        let req = HwptAlloc {
            dev: device.dev.id(),
            parent,
            flags,
            fault,
            data,
        };
        Ok(Hwpt::alloc(&self.host, &req)?)
    }

    /// Removes a PASID's context: the PASID is detached (blocked).
    pub fn remove_pasid(&mut self, vsid: u64, pasid: Pasid) -> Result<(), NestedError> {
        let device = self
            .devices
            .get_mut(&vsid)
            .ok_or(NestedError::NoDevice { vsid })?;
        device.dev.detach(Some(pasid))?;
        device.contexts.remove(&Some(pasid));
        Ok(())
    }

    /// Removes a device: every PASID and the RID detached, its HWPTs and
    /// vDEVICE destroyed, and the bound device handed back (blocked).
    /// Page requests of the device still waiting are answered INVALID. A
    /// detach the host refuses is logged; the bound device remembers what
    /// is still attached, which its next engine ([`NestedEngine::add_device`])
    /// or its drop detaches.
    pub fn remove_device(&mut self, vsid: u64) -> Result<BoundDevice, NestedError> {
        let mut device = self
            .devices
            .remove(&vsid)
            .ok_or(NestedError::NoDevice { vsid })?;
        let stale: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.vsid == vsid)
            .map(|(c, _)| *c)
            .collect();
        for cookie in stale {
            let _ = self.respond(cookie, PageResponseCode::Invalid);
        }
        let pasids: Vec<Option<Pasid>> = device.contexts.keys().copied().collect();
        for pasid in pasids
            .iter()
            .filter(|p| p.is_some())
            .chain(std::iter::once(&None))
        {
            if let Err(e) = device.dev.detach(*pasid) {
                log::warn!("detaching {} {pasid:?}: {e}", device.dev.id());
            }
        }
        device.contexts.clear();
        device.vdevice = None;
        Ok(device.dev)
    }

    /// Queues a VT-d stage-1 invalidation for the nested HWPT of a device's
    /// PASID (or RID). Returns false, queuing nothing, when that context
    /// has no nested HWPT (nothing of the guest's is cached on the host).
    pub fn queue_vtd(
        &mut self,
        vsid: u64,
        pasid: Option<Pasid>,
        inv: VtdS1Invalidation,
        tag: u64,
    ) -> bool {
        let Some(h) = self
            .devices
            .get(&vsid)
            .and_then(|d| d.contexts.get(&pasid))
            .and_then(|i| i.hwpt.as_ref())
        else {
            return false;
        };
        self.queue.push(Queued {
            target: InvalidateTarget::Hwpt(h.id()),
            entry: Invalidation::VtdS1(inv),
            tag,
        });
        true
    }

    /// Queues an SMMUv3 command: for the vIOMMU of device `vsid`, or with
    /// `None` for every vIOMMU (TLB invalidations by ASID or VMID name no
    /// StreamID). Returns how many vIOMMUs it was queued for.
    pub fn queue_smmuv3(&mut self, vsid: Option<u64>, cmd: [u64; 2], tag: u64) -> usize {
        let targets: Vec<InvalidateTarget> = match vsid {
            Some(v) => self
                .devices
                .get(&v)
                .and_then(|d| self.parents[d.parent].smmu.as_ref())
                .map(|s| InvalidateTarget::Viommu(s.viommu.id()))
                .into_iter()
                .collect(),
            None => self
                .parents
                .iter()
                .filter_map(|p| p.smmu.as_ref())
                .map(|s| InvalidateTarget::Viommu(s.viommu.id()))
                .collect(),
        };
        for &target in &targets {
            self.queue.push(Queued {
                target,
                entry: Invalidation::Smmuv3(cmd),
                tag,
            });
        }
        targets.len()
    }

    /// Entries queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Sends the queued invalidations: one call per target (split only past
    /// [`MAX_INVALIDATIONS_PER_CALL`]), entries in the order queued.
    pub fn flush(&mut self) -> FlushReport {
        let mut by_target: Vec<(InvalidateTarget, Vec<(Invalidation, u64)>)> = Vec::new();
        for q in std::mem::take(&mut self.queue) {
            match by_target.iter_mut().find(|(t, _)| *t == q.target) {
                Some((_, v)) => v.push((q.entry, q.tag)),
                None => by_target.push((q.target, vec![(q.entry, q.tag)])),
            }
        }
        let mut report = FlushReport::default();
        for (target, entries) in by_target {
            self.flush_target(target, &entries, &mut report);
        }
        report
    }

    fn flush_target(
        &self,
        target: InvalidateTarget,
        entries: &[(Invalidation, u64)],
        report: &mut FlushReport,
    ) {
        for (c, chunk) in entries.chunks(MAX_INVALIDATIONS_PER_CALL).enumerate() {
            let batch = match chunk.first() {
                Some((Invalidation::VtdS1(_), _)) => InvalidationBatch::VtdS1(
                    chunk
                        .iter()
                        .filter_map(|(e, _)| match e {
                            Invalidation::VtdS1(v) => Some(*v),
                            Invalidation::Smmuv3(_) => None,
                        })
                        .collect(),
                ),
                _ => InvalidationBatch::Smmuv3(
                    chunk
                        .iter()
                        .filter_map(|(e, _)| match e {
                            Invalidation::Smmuv3(c) => Some(*c),
                            Invalidation::VtdS1(_) => None,
                        })
                        .collect(),
                ),
            };
            report.calls += 1;
            let out = self.host.hwpt_invalidate(target, &batch);
            let handled = (out.handled as usize).min(chunk.len());
            report.handled += handled as u64;
            if let Err(error) = out.result {
                let failed = c * MAX_INVALIDATIONS_PER_CALL + handled;
                let tag = entries.get(failed).map_or(u64::MAX, |(_, t)| *t);
                let unsent = entries.iter().skip(failed + 1).map(|(_, t)| *t).collect();
                report
                    .failures
                    .push(InvalidationFailure { tag, error, unsent });
                return;
            }
        }
    }

    /// Reads what the host reported: SMMUv3 vEVENTQ records (with lost
    /// events detected) and page request groups, without blocking. A queue
    /// that cannot be read is reported in the list
    /// ([`NestedEvent::QueueFailed`]) after what was read before it, and
    /// the other queues are still read: nothing read is dropped, and a
    /// failure is never silent. (`Err` is kept for the API; host failures
    /// are events now.)
    pub fn poll_events(&mut self, now: Instant) -> Result<Vec<NestedEvent>, NestedError> {
        let mut out = Vec::new();
        for p in &mut self.parents {
            let Some(smmu) = p.smmu.as_mut() else {
                continue;
            };
            let Some(q) = &smmu.veventq else { continue };
            let read = match self.host.veventq_read(q.id(), MAX_EVENTS_PER_POLL) {
                Ok(r) => r,
                Err(error) => {
                    out.push(NestedEvent::QueueFailed { error });
                    continue;
                }
            };
            for ev in read {
                let seq = match &ev {
                    VEvent::Event { sequence, .. } | VEvent::Lost { sequence } => *sequence,
                };
                // Sequence numbers count up and wrap at 2^31 (struct
                // iommufd_vevent_header); a gap means events were dropped.
                let gap = smmu
                    .last_seq
                    .is_some_and(|l| (l.wrapping_add(1) & 0x7fff_ffff) != seq);
                smmu.last_seq = Some(seq);
                match ev {
                    VEvent::Lost { .. } => out.push(NestedEvent::Lost),
                    VEvent::Event { data, .. } => {
                        if gap {
                            out.push(NestedEvent::Lost);
                        }
                        out.push(NestedEvent::Smmuv3 { record: data });
                    }
                }
            }
        }
        if let Some(q) = self.fault.as_ref().map(|f| f.id()) {
            self.read_faults(q, now, &mut out);
        }
        Ok(out)
    }

    /// Reads the fault queue into `out`; a failed read or answer is
    /// reported there too.
    fn read_faults(&mut self, q: FaultQueueId, now: Instant, out: &mut Vec<NestedEvent>) {
        let groups = match self.host.fault_read(q) {
            Ok(g) => g,
            Err(error) => return out.push(NestedEvent::QueueFailed { error }),
        };
        for group in groups {
            let Some(cookie) = group.cookie() else {
                continue;
            };
            let dev = group.faults.last().map(|f| f.dev);
            let vsid = self
                .devices
                .iter()
                .find(|(_, d)| Some(d.dev.id()) == dev)
                .map(|(v, _)| *v);
            match vsid {
                Some(vsid) if self.pending.len() < MAX_PENDING_FAULTS => {
                    self.pending.insert(cookie, Pending { vsid, since: now });
                    out.push(NestedEvent::PageRequest { vsid, group });
                }
                _ => {
                    // A device we no longer track, or too many groups
                    // waiting: answer at once so the device does not hang.
                    let resp = PageResponse {
                        cookie,
                        code: PageResponseCode::Invalid,
                    };
                    if let Err(error) = self.host.fault_respond(q, resp) {
                        out.push(NestedEvent::QueueFailed { error });
                    }
                }
            }
        }
    }

    /// Answers a page request group; each group is answered exactly once.
    pub fn respond(&mut self, cookie: u32, code: PageResponseCode) -> Result<(), NestedError> {
        let q = self
            .fault
            .as_ref()
            .map(|f| f.id())
            .ok_or(NestedError::NotPending { cookie })?;
        if self.pending.remove(&cookie).is_none() {
            return Err(NestedError::NotPending { cookie });
        }
        self.host.fault_respond(q, PageResponse { cookie, code })?;
        Ok(())
    }

    /// Answers INVALID every group waiting longer than the timeout; returns
    /// their cookies.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let timeout = self.cfg.fault_timeout;
        let old: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) >= timeout)
            .map(|(c, _)| *c)
            .collect();
        for &cookie in &old {
            if let Err(e) = self.respond(cookie, PageResponseCode::Invalid) {
                crate::guest_log!(Warn, "timing out page request {cookie:#x}: {e}");
            }
        }
        old
    }

    /// Page request groups waiting for the guest.
    pub fn pending_faults(&self) -> usize {
        self.pending.len()
    }

    /// Starts or stops dirty tracking on every stage-2 parent allocated
    /// with it.
    pub fn set_dirty_tracking(&self, enable: bool) -> Result<(), NestedError> {
        for p in &self.parents {
            if self.cfg.dirty_tracking {
                self.host.hwpt_set_dirty_tracking(p.hwpt.id(), enable)?;
            }
        }
        Ok(())
    }

    /// The GPA pages of `range` written by any nested device since the last
    /// read (one bit per `page_size` bytes), cleared unless `no_clear`.
    pub fn read_dirty(
        &self,
        range: IovaRange,
        page_size: u64,
        no_clear: bool,
    ) -> Result<BitVec<u64>, NestedError> {
        let mut acc: Option<BitVec<u64>> = None;
        for p in &self.parents {
            let bits = self
                .host
                .hwpt_get_dirty_bitmap(p.hwpt.id(), range, page_size, no_clear)?;
            acc = Some(match acc {
                None => bits,
                Some(a) => a | bits,
            });
        }
        Ok(acc.unwrap_or_default())
    }
}
