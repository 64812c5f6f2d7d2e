//! The VT-d model's register page as BAR0 of a vfio-user function. The
//! ACPI DMAR table the harness passes to QEMU names that BAR's address as
//! the DRHD unit's base, so the guest's intel-iommu driver programs our
//! model through it.
//!
//! The function itself is a plain PCI function (1af4:10f1, from QEMU's
//! experimental-use range; class 0x0806, IOMMU) with the register page in
//! BAR0 and an MSI-X table in BAR2. Guest RAM reaches the model through
//! the function's `dma_map`s, and the endpoint's DMA is translated by the
//! same unit.
//!
//! Interrupts: the unit signals its events as MSIs to the address and data
//! the driver programmed (FEADDR/FEDATA for faults, IEADDR/IEDATA,
//! PEADDR/PEDATA). A vfio-user server cannot write an arbitrary MSI; it
//! can only signal its function's MSI-X vectors, whose messages QEMU takes
//! from the function's MSI-X table. So each event source has a vector
//! ([`vector_of`]) and the guest side of the harness copies the unit's
//! message registers into that vector's table entry and enables MSI-X:
//! the same message then reaches the same CPU vector. An event whose
//! vector the guest has not set up is logged and dropped (the fault stays
//! in the fault recording registers).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use log::{debug, warn};
use nesting_core::iotlb::{
    Generation, Iotlb, IotlbInvalidation, Translate, TranslateFault, Translation,
};
use nesting_core::options::{ModelOptions, OptionError};
use nesting_core::types::{Access, Iova, Pasid, RequesterId};
use vfio_user::{IrqInfo, ServerRegion};
use vm_memory::GuestMemoryMmap;
use vtd::VtdConfig;
use vtd::{InterruptSource, TranslateResult, Vtd};

use crate::account::{ACCOUNTS, Work};
use crate::irq::MsixVectors;
use crate::record::{self, Dma, RecMem, SharedRecorder};
use crate::reg_fn::{RegisterBackend, RegisterUnit};
use crate::regfile::RegSpec;

/// Device ID of the VT-d register function (1af4:10f0..10ff is QEMU's
/// experimental range; 10f0 is the DMA endpoint).
pub const VTD_DEVICE_ID: u16 = 0x10f1;
/// BAR0: the register page. The model's registers end below 0x1000 with
/// the harness's configuration (fault records at CAP.FRO 0x220, IOTLB
/// registers at ECAP.IRO 0x2a0), and the driver reserves the span it
/// computes from them ("DMAR: Can't reserve memory" otherwise).
pub const VTD_BAR_SIZE: u64 = 0x1000;

/// BAR2: the MSI-X table (QEMU emulates it) and PBA.
pub const VTD_MSIX_BAR_SIZE: u64 = 0x1000;
/// One MSI-X vector per VT-d event source.
pub const VTD_MSIX_VECTORS: u32 = 3;

/// The MSI-X vector standing for `source`'s MSI.
pub fn vector_of(source: InterruptSource) -> u32 {
    match source {
        InterruptSource::Fault => 0,
        InterruptSource::InvalidationCompletion => 1,
        InterruptSource::PageRequest => 2,
    }
}

static CONFIG: &[RegSpec] = &[
    RegSpec::ro("VENDOR", 0x00, 2, 0x1af4),
    RegSpec::ro("DEVICE", 0x02, 2, VTD_DEVICE_ID as u32),
    RegSpec::rw("COMMAND", 0x04, 2, 0, 0x0406),
    // Capabilities List.
    RegSpec::ro("STATUS", 0x06, 2, 1 << 4),
    // Class 0x08 (base system peripheral), subclass 0x06 (IOMMU).
    RegSpec::ro("CLASS_REV", 0x08, 4, 0x0806_0001),
    RegSpec::rw("CACHE_LINE", 0x0c, 1, 0, 0xff),
    RegSpec::rw("BAR0", 0x10, 4, 0, 0xffff_f000),
    RegSpec::rw("BAR2", 0x18, 4, 0, 0xffff_f000),
    RegSpec::ro("SUBSYS_VENDOR", 0x2c, 2, 0x1af4),
    RegSpec::ro("SUBSYS", 0x2e, 2, VTD_DEVICE_ID as u32),
    RegSpec::ro("CAP_PTR", 0x34, 1, 0x40),
    RegSpec::rw("INT_LINE", 0x3c, 1, 0, 0xff),
    // MSI-X (PCI Local Bus 3.0, 6.8.2): table size N - 1, table at BAR2
    // offset 0, PBA at BAR2 offset 0x800.
    RegSpec::ro("MSIX_HEAD", 0x40, 2, 0x11),
    RegSpec::rw("MSIX_CTRL", 0x42, 2, VTD_MSIX_VECTORS - 1, 0xc000),
    RegSpec::ro("MSIX_TABLE", 0x44, 4, 2),
    RegSpec::ro("MSIX_PBA", 0x48, 4, 0x800 | 2),
];

/// The VT-d configurations the harness runs Linux against
/// (`viommu-guest-server --vtd-mode`). Linux 7.2 (drivers/iommu/intel/
/// iommu.c, `intel_iommu_domain_alloc_paging_flags`) prefers a
/// first-stage domain whenever the unit is in scalable mode and offers
/// ECAP.FSTS, and falls back to second stage otherwise; legacy mode
/// (ECAP.SMTS clear) has second-stage tables only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdMode {
    /// Legacy root/context tables, no caching mode (CAP.CM=0): Linux does
    /// not invalidate when it maps.
    Legacy,
    /// Scalable mode with first-stage tables only (FSTS=1, SSTS=0),
    /// caching mode off: Linux's DMA domains are first-stage.
    ScalableFs,
    /// Scalable mode with second-stage tables only (FSTS=0, SSTS=1) and
    /// caching mode on (CM=1): Linux's domains are second-stage, and it
    /// invalidates on every map.
    ScalableSs,
}

impl VtdMode {
    /// The `--vtd-mode` value: `legacy`, `scalable-fs` or `scalable-ss`.
    pub fn parse(s: &str) -> Option<VtdMode> {
        match s {
            "legacy" => Some(VtdMode::Legacy),
            "scalable-fs" => Some(VtdMode::ScalableFs),
            "scalable-ss" => Some(VtdMode::ScalableSs),
            _ => None,
        }
    }

    /// The model's options for this mode, as `.viommu` scripts write
    /// them (REPLAY.md "Model options"); every other option keeps the
    /// model's default.
    pub fn options(self) -> &'static [&'static str] {
        match self {
            VtdMode::Legacy => &["mode=legacy", "cm=0"],
            VtdMode::ScalableFs => &["mode=scalable", "flts=1", "slts=0", "cm=0"],
            VtdMode::ScalableSs => &["mode=scalable", "flts=0", "slts=1", "cm=1"],
        }
    }

    /// The model configuration of this mode.
    pub fn config(self) -> Result<VtdConfig, OptionError> {
        VtdConfig::from_options(self.options())
    }
}

/// The unit and the cache generation last passed on to the views.
struct Unit {
    vtd: Vtd,
    seen: Generation,
}

/// A VT-d unit whose guest memory follows the client's `dma_map`s, shared
/// by the register function and the endpoints it translates for.
///
/// A reset of the register function is a power-on reset of the unit
/// ([`HarnessVtd::reset`]): the unit is made anew from its configuration.
/// Endpoints' [`IommuView`](nesting_core::iotlb::IommuView)s follow the
/// generation of [`Translate::iotlb`], which must outlive any one unit, so
/// that cache is the harness's own: it holds no entries and moves to a new
/// generation whenever the unit's cache does (an invalidation) or the unit
/// is reset.
///
/// With a [`Recorder`](crate::record::Recorder), every register access,
/// translation and reset is recorded ([`crate::record`]); the recorder's
/// lock is taken before the unit's and held around the whole operation,
/// so the script has them in the order the unit saw them.
pub struct HarnessVtd {
    unit: Mutex<Unit>,
    views: Iotlb,
    mem: RwLock<Arc<GuestMemoryMmap>>,
    msix: Arc<Mutex<MsixVectors>>,
    recorder: Option<SharedRecorder>,
}

impl std::fmt::Debug for HarnessVtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessVtd").finish_non_exhaustive()
    }
}

/// Routes `unit`'s MSIs to the register function's MSI-X vectors.
fn with_interrupts(mut unit: Vtd, msix: &Arc<Mutex<MsixVectors>>) -> Vtd {
    let m = Arc::clone(msix);
    unit.set_interrupt_callback(move |irq| {
        let vector = vector_of(irq.source);
        let sent = m
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .signal(vector);
        if sent {
            debug!("VT-d {:?} event on MSI-X vector {vector}", irq.source);
        } else {
            warn!(
                "VT-d {:?} event to {:#x}/{:#x}: MSI-X vector {vector} not set up, dropped",
                irq.source, irq.addr, irq.data
            );
        }
    });
    unit
}

impl HarnessVtd {
    /// Shares `unit`; guest memory is empty until [`Self::set_memory`].
    pub fn new(unit: Vtd) -> Self {
        let msix = Arc::new(Mutex::new(MsixVectors::new(VTD_MSIX_VECTORS)));
        let vtd = with_interrupts(unit, &msix);
        let seen = vtd.iotlb().generation();
        HarnessVtd {
            unit: Mutex::new(Unit { vtd, seen }),
            views: Iotlb::new(1),
            mem: RwLock::new(Arc::new(GuestMemoryMmap::default())),
            msix,
            recorder: None,
        }
    }

    /// Records the unit's traffic with `recorder`.
    pub fn with_recorder(mut self, recorder: SharedRecorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Unit> {
        self.unit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the views' generation if the unit's cache moved since.
    fn follow(&self, u: &mut Unit) {
        let now = u.vtd.iotlb().generation();
        if now != u.seen {
            u.seen = now;
            self.views.invalidate(IotlbInvalidation::All);
        }
    }

    fn memory(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&self.mem.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The unit's configuration.
    pub fn config(&self) -> VtdConfig {
        self.lock().vtd.config().clone()
    }

    /// After a register write: the views follow the unit's cache (a unit
    /// without passthrough devices queues no events).
    fn after_write(&self, u: &mut Unit) {
        self.follow(u);
    }
}

impl Translate for HarnessVtd {
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        let RequesterId::Pci(bdf) = rid else {
            return Err(TranslateFault { rid, iova });
        };
        let mem = self.memory();
        let fault = TranslateFault { rid, iova };
        let Some(rec) = &self.recorder else {
            // The unit looks its own cache up first.
            let mut u = self.lock();
            let r = ACCOUNTS.timed(Work::ModelTranslate, || {
                u.vtd.translate(&*mem, bdf, pasid, iova, access)
            });
            return match r {
                TranslateResult::Mapped(t) => Ok(t),
                TranslateResult::Fault { .. } => Err(fault),
            };
        };
        let mut rec = record::lock(rec);
        let view = RecMem::new(Arc::clone(&mem), rec.log());
        let mut u = self.lock();
        let dma = Dma {
            sid: u32::from(bdf.0),
            pasid: pasid.map(|p| p.raw()),
            iova: iova.raw(),
            access,
        };
        let mut out = Err(fault);
        rec.translate(
            &mem,
            dma,
            || {
                let r = ACCOUNTS.timed(Work::ModelTranslate, || {
                    u.vtd.translate(&view, bdf, pasid, iova, access)
                });
                out = match r {
                    TranslateResult::Mapped(t) => Ok(t),
                    TranslateResult::Fault { .. } => Err(fault),
                };
                out.as_ref().ok().map(|t| t.gpa_of(iova).raw())
            },
            |_, _| (Vec::new(), Vec::new()),
        );
        out
    }

    fn iotlb(&self) -> &Iotlb {
        &self.views
    }
}

/// Regions: BAR0 (registers), BAR2 (MSI-X) and config space.
pub fn regions() -> Vec<ServerRegion> {
    crate::backend::pci_regions(VTD_BAR_SIZE, VTD_MSIX_BAR_SIZE, 256)
}

/// MSI-X only, one vector per event source.
pub fn irqs() -> Vec<IrqInfo> {
    crate::backend::msix_irqs(VTD_MSIX_VECTORS)
}

/// The register function's backend.
pub type VtdBackend = RegisterBackend<HarnessVtd>;

impl RegisterUnit for HarnessVtd {
    const NAME: &'static str = "vtd";
    const BAR_SIZE: u64 = VTD_BAR_SIZE;
    const CONFIG: &'static [RegSpec] = CONFIG;

    /// Register read of `size` bytes (4 or 8).
    fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        let read = |u: &mut Unit| ACCOUNTS.timed(Work::ModelRead, || u.vtd.mmio_read(offset, size));
        let Some(rec) = &self.recorder else {
            return read(&mut self.lock());
        };
        let mut rec = record::lock(rec);
        let v = read(&mut self.lock());
        rec.line(&format!("mmio-read{} {offset:#x} == {v:#x}", size * 8));
        v
    }

    /// Register write, with its synchronous effects.
    fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        let mem = self.memory();
        // A write of the invalidation queue's tail runs the queue.
        let work = match offset {
            vtd::regs::off::IQT => Work::ModelQueue,
            _ => Work::ModelWrite,
        };
        let Some(rec) = &self.recorder else {
            let mut u = self.lock();
            ACCOUNTS.timed(work, || u.vtd.mmio_write(&*mem, offset, size, value));
            self.after_write(&mut u);
            return;
        };
        let mut rec = record::lock(rec);
        let view = RecMem::new(Arc::clone(&mem), rec.log());
        let mut u = self.lock();
        rec.op(
            &mem,
            || ACCOUNTS.timed(work, || u.vtd.mmio_write(&view, offset, size, value)),
            |_, _| vec![format!("mmio-write{} {offset:#x} {value:#x}", size * 8)],
        );
        self.after_write(&mut u);
    }

    /// Replaces the guest memory the unit reads tables from.
    fn set_memory(&self, mem: Arc<GuestMemoryMmap>) {
        if let Some(rec) = &self.recorder {
            record::lock(rec).set_memory(Arc::clone(&mem));
        }
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = mem;
    }

    /// Power-on reset of the unit (registers, latched root pointer, fault
    /// log, caches): VT-d has no reset of its own, a unit follows its
    /// platform's. In the harness the register function is the unit's only
    /// presence on the platform, and QEMU resets it
    /// (`VFIO_USER_DEVICE_RESET`) on every system reset, so its reset
    /// stands for the platform's.
    fn reset(&self) {
        let rec = self.recorder.as_ref().map(record::lock);
        let mut u = self.lock();
        if let Some(mut rec) = rec {
            rec.reset();
        }
        let cfg = u.vtd.config().clone();
        u.vtd = with_interrupts(Vtd::new(cfg), &self.msix);
        u.seen = u.vtd.iotlb().generation();
        self.views.invalidate(IotlbInvalidation::All);
    }

    fn msix(&self) -> &Mutex<MsixVectors> {
        &self.msix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nesting_core::types::Bdf;
    use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;
    use vfio_user::ServerBackend;
    use vtd::VtdConfig;

    fn backend() -> (VtdBackend, Arc<HarnessVtd>) {
        let unit = Arc::new(HarnessVtd::new(Vtd::new(VtdConfig::default())));
        (VtdBackend::new(Arc::clone(&unit)), unit)
    }

    #[test]
    fn bar0_reads_version_and_capability() {
        let (mut b, _) = backend();
        let mut d = [0u8; 4];
        b.region_read(0, 0, &mut d).unwrap();
        assert!(u32::from_le_bytes(d) & 0xff >= 0x10, "VER_REG 1.0 or later");
        let mut q = [0u8; 8];
        b.region_read(0, 0x08, &mut q).unwrap();
        assert_ne!(u64::from_le_bytes(q), 0, "CAP_REG");
    }

    #[test]
    fn bar0_odd_sizes_are_refused() {
        let (mut b, _) = backend();
        let mut d = [0u8; 2];
        assert!(b.region_read(0, 0, &mut d).is_err());
        assert!(b.region_write(0, 0xffc, &[0; 8]).is_err());
    }

    #[test]
    fn translation_before_enable_is_identity() {
        let (_, unit) = backend();
        let t = unit
            .translate(
                RequesterId::Pci(Bdf::new(0, 5, 0)),
                None,
                Iova(0x5000),
                Access::READ,
            )
            .unwrap();
        assert_eq!(t.gpa.raw(), 0x5000);
    }

    /// Legacy unit with an empty root table at 0x1000, translation on.
    fn enabled_legacy_unit() -> Arc<HarnessVtd> {
        let unit = Arc::new(HarnessVtd::new(Vtd::new(VtdMode::Legacy.config().unwrap())));
        let ram = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)]).unwrap();
        unit.set_memory(Arc::new(ram));
        unit.mmio_write(0x20, 8, 0x1000);
        unit.mmio_write(0x18, 4, 1 << 30);
        unit.mmio_write(0x18, 4, 1 << 31);
        unit
    }

    #[test]
    fn modes_parse_and_configure_as_documented() {
        let legacy = VtdMode::parse("legacy").unwrap().config().unwrap();
        assert_eq!(legacy.mode, vtd::options::VtdMode::Legacy);
        assert!(!legacy.cm);
        let fs = VtdMode::parse("scalable-fs").unwrap().config().unwrap();
        assert_eq!(fs.mode, vtd::options::VtdMode::Scalable);
        assert!(fs.flts && !fs.slts && !fs.cm);
        let ss = VtdMode::parse("scalable-ss").unwrap().config().unwrap();
        assert!(!ss.flts && ss.slts && ss.cm);
        assert_eq!(VtdMode::parse("scalable"), None);
        for m in [VtdMode::Legacy, VtdMode::ScalableFs, VtdMode::ScalableSs] {
            assert_eq!(m.config().unwrap().aw.bits(), 48, "the DMAR's width");
        }
    }

    #[test]
    fn mode_sets_ecap_bits_linux_reads() {
        // ECAP.SMTS is bit 43, FSTS bit 47, SSTS bit 46; CAP.CM bit 7.
        let unit = HarnessVtd::new(Vtd::new(VtdMode::ScalableSs.config().unwrap()));
        let ecap = unit.mmio_read(0x10, 8);
        assert_eq!((ecap >> 43 & 1, ecap >> 47 & 1, ecap >> 46 & 1), (1, 0, 1));
        assert_eq!(unit.mmio_read(0x08, 8) >> 7 & 1, 1);
        let unit = HarnessVtd::new(Vtd::new(VtdMode::Legacy.config().unwrap()));
        assert_eq!(unit.mmio_read(0x10, 8) >> 43 & 1, 0);
        assert_eq!(unit.mmio_read(0x08, 8) >> 7 & 1, 0);
    }

    #[test]
    fn function_reset_returns_unit_to_power_on() {
        let unit = enabled_legacy_unit();
        let rid = RequesterId::Pci(Bdf::new(0, 5, 0));
        assert_eq!(unit.mmio_read(0x1c, 4) >> 30, 0b11, "GSTS.TES|RTPS");
        assert!(
            unit.translate(rid, None, Iova(0x5000), Access::READ)
                .is_err()
        );
        let before = unit.iotlb().generation();
        let mut b = VtdBackend::new(Arc::clone(&unit));
        b.reset().unwrap();
        assert_eq!(unit.mmio_read(0x1c, 4), 0, "GSTS at reset");
        assert_eq!(unit.mmio_read(0x20, 8), 0, "RTADDR at reset");
        assert_ne!(unit.iotlb().generation(), before, "views drop their caches");
        let t = unit
            .translate(rid, None, Iova(0x5000), Access::READ)
            .unwrap();
        assert_eq!(t.gpa.raw(), 0x5000, "translation off again");
    }

    #[test]
    fn unit_invalidation_moves_view_generation() {
        let unit = enabled_legacy_unit();
        let before = unit.iotlb().generation();
        // IOTLB_REG (ECAP.IRO + 8): IVT with global granularity.
        let iotlb_reg = unit.config().iro + 8;
        unit.mmio_write(iotlb_reg, 8, 1 << 63 | 1 << 60);
        assert_ne!(unit.iotlb().generation(), before);
    }

    #[test]
    fn each_event_source_has_its_own_vector() {
        let v = [
            InterruptSource::Fault,
            InterruptSource::InvalidationCompletion,
            InterruptSource::PageRequest,
        ]
        .map(vector_of);
        assert_eq!(v, [0, 1, 2]);
        assert!(v.iter().all(|&x| x < VTD_MSIX_VECTORS));
        assert_eq!(
            irqs()[VFIO_PCI_MSIX_IRQ_INDEX as usize].count,
            VTD_MSIX_VECTORS
        );
    }

    #[test]
    fn msix_capability_names_bar2() {
        let (mut b, _) = backend();
        let mut d = [0u8; 4];
        b.region_read(7, 0x34, &mut d).unwrap();
        assert_eq!(d[0], 0x40);
        b.region_read(7, 0x40, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 0x0002_0011, "MSI-X, 3 vectors");
        b.region_read(7, 0x44, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 2, "table in BAR2 at 0");
    }

    #[test]
    fn config_space_identifies_function() {
        let (mut b, _) = backend();
        let mut d = [0u8; 4];
        b.region_read(7, 0, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d), 0x10f1_1af4);
        b.region_read(7, 8, &mut d).unwrap();
        assert_eq!(u32::from_le_bytes(d) >> 16, 0x0806);
    }
}
