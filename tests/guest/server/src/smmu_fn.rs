//! The SMMUv3 model's two 64 KiB register pages as BAR0 of a vfio-user
//! function. The device tree the harness passes to QEMU's Arm `virt`
//! machine (`-dtb`) has an `arm,smmu-v3` node whose `reg` is that BAR's
//! address ([`dtb_fragment`]) and an `iommu-map` on the PCIe host naming
//! the endpoints, so the guest's arm-smmu-v3 driver programs our model
//! through it.
//!
//! The function itself is a plain PCI function (1af4:10f2, from QEMU's
//! experimental-use range; class 0x0806, IOMMU) with page 0 at BAR0
//! offset 0, page 1 at 0x10000 (IHI 0070 "SMMU programming interface":
//! the registers of page 1 sit 64 KiB above their page-0 namesakes) and
//! an MSI-X table in BAR2. Guest RAM reaches the model through the
//! function's `dma_map`s, and the endpoints' DMA is translated by the same
//! SMMU, StreamID = PCI requester ID.
//!
//! Interrupts: with IDR0.MSI the SMMU signals its event queue, PRI queue
//! and global errors as MSIs to the address and data the driver programmed
//! (SMMU_EVENTQ_IRQ_CFG0/1, ...; Linux allocates them from the GICv3 ITS
//! named by the node's `msi-parent`). A vfio-user server cannot write an
//! arbitrary MSI; it can only signal its function's MSI-X vectors, whose
//! messages QEMU takes from the function's MSI-X table. So each source has
//! a vector ([`vector_of`]) and the guest side of the harness copies the
//! SMMU's message registers into that vector's table entry and enables
//! MSI-X; the node's `msi-parent` names the function's own requester ID as
//! the ITS DeviceID, which is the DeviceID QEMU gives the function's MSI-X
//! writes. CMD_SYNC completions need no interrupt: Linux's MSIPOLL has the
//! SMMU write the sync's own slot in guest RAM, which the model does.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use log::{debug, warn};
use nesting_core::iotlb::{Iotlb, Translate, TranslateFault, Translation};
use nesting_core::types::{Access, Bdf, Iova, Pasid, RequesterId};
use smmuv3::fdt::{FdtError, IommuMapEntry, SmmuInterrupts, write_iommu_map, write_smmuv3_node};
use smmuv3::{Interrupt, IrqSource, Signal, Smmuv3, Smmuv3Config, TranslateResult};
use vfio_user::{IrqInfo, ServerRegion};
use vm_fdt::FdtWriter;
use vm_memory::GuestMemoryMmap;

use crate::account::{ACCOUNTS, Work};
use crate::irq::MsixVectors;
use crate::record::{self, Dma, RecMem, SharedRecorder};
use crate::reg_fn::{RegisterBackend, RegisterUnit};
use crate::regfile::RegSpec;

/// Device ID of the SMMUv3 register function (1af4:10f0..10ff is QEMU's
/// experimental range; 10f0 is the DMA endpoint, 10f1 the VT-d unit).
pub const SMMU_DEVICE_ID: u16 = 0x10f2;
/// BAR0: both register pages. Linux's driver refuses a `reg` smaller
/// than 128 KiB ("MMIO region too small") unless the firmware says the
/// SMMU has page 0 only (a Cavium erratum).
pub const SMMU_BAR_SIZE: u64 = smmuv3::regs::off::SIZE;
/// BAR2: the MSI-X table (QEMU emulates it) and PBA.
pub const SMMU_MSIX_BAR_SIZE: u64 = 0x1000;
/// One MSI-X vector per SMMU interrupt source that has a message.
pub const SMMU_MSIX_VECTORS: u32 = 3;

/// The MSI-X vector standing for `source`'s MSI; CMD_SYNC completions
/// have none (Linux polls them, MSIPOLL or CMDQ_CONS).
pub fn vector_of(source: IrqSource) -> Option<u32> {
    match source {
        IrqSource::EventQueue => Some(0),
        IrqSource::GlobalError => Some(1),
        IrqSource::PriQueue => Some(2),
        IrqSource::CmdSync => None,
    }
}

static CONFIG: &[RegSpec] = &[
    RegSpec::ro("VENDOR", 0x00, 2, 0x1af4),
    RegSpec::ro("DEVICE", 0x02, 2, SMMU_DEVICE_ID as u32),
    RegSpec::rw("COMMAND", 0x04, 2, 0, 0x0406),
    // Capabilities List.
    RegSpec::ro("STATUS", 0x06, 2, 1 << 4),
    // Class 0x08 (base system peripheral), subclass 0x06 (IOMMU).
    RegSpec::ro("CLASS_REV", 0x08, 4, 0x0806_0001),
    RegSpec::rw("CACHE_LINE", 0x0c, 1, 0, 0xff),
    // 32-bit memory BARs; the low bits of the size read back as zero.
    RegSpec::rw("BAR0", 0x10, 4, 0, !(SMMU_BAR_SIZE as u32 - 1)),
    RegSpec::rw("BAR2", 0x18, 4, 0, !(SMMU_MSIX_BAR_SIZE as u32 - 1)),
    RegSpec::ro("SUBSYS_VENDOR", 0x2c, 2, 0x1af4),
    RegSpec::ro("SUBSYS", 0x2e, 2, SMMU_DEVICE_ID as u32),
    RegSpec::ro("CAP_PTR", 0x34, 1, 0x40),
    RegSpec::rw("INT_LINE", 0x3c, 1, 0, 0xff),
    // MSI-X (PCI Local Bus 3.0, 6.8.2): table size N - 1, table at BAR2
    // offset 0, PBA at BAR2 offset 0x800.
    RegSpec::ro("MSIX_HEAD", 0x40, 2, 0x11),
    RegSpec::rw("MSIX_CTRL", 0x42, 2, SMMU_MSIX_VECTORS - 1, 0xc000),
    RegSpec::ro("MSIX_TABLE", 0x44, 4, 2),
    RegSpec::ro("MSIX_PBA", 0x48, 4, 0x800 | 2),
];

/// Routes the SMMU's interrupts to the register function's MSI-X vectors.
/// Every MSI write is taken (`true`): on the platform it is a write to the
/// ITS doorbell, which completes whether or not an interrupt results; the
/// replay runner takes them the same way, so a recording does not depend
/// on whether the guest had set its vectors up yet.
fn with_interrupts(mut unit: Smmuv3, msix: &Arc<Mutex<MsixVectors>>) -> Smmuv3 {
    let m = Arc::clone(msix);
    unit.set_interrupt_callback(move |irq: Interrupt| {
        let Some(vector) = vector_of(irq.source) else {
            return true;
        };
        let sent = m
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .signal(vector);
        match (sent, irq.signal) {
            (true, _) => debug!("SMMUv3 {:?} on MSI-X vector {vector}", irq.source),
            (false, Signal::Msi { addr, data }) => warn!(
                "SMMUv3 {:?} MSI to {addr:#x}/{data:#x}: MSI-X vector {vector} not set up, dropped",
                irq.source
            ),
            (false, s) => warn!(
                "SMMUv3 {:?} interrupt ({s:?}): MSI-X vector {vector} not set up, dropped",
                irq.source
            ),
        }
        true
    });
    unit
}

/// An SMMU whose guest memory follows the client's `dma_map`s, shared by
/// the register function and the endpoints it translates for.
///
/// A reset of the register function is a reset of the SMMU
/// ([`Smmuv3::reset`]: registers, translation and configuration caches);
/// its translation cache is the one endpoints' views follow, and it is
/// kept across resets (emptied by them).
///
/// With a [`Recorder`](crate::record::Recorder), every register access,
/// translation and reset is recorded ([`crate::record`]); the recorder's
/// lock is taken before the SMMU's and held around the whole operation.
pub struct HarnessSmmu {
    unit: Mutex<Smmuv3>,
    iotlb: Arc<Iotlb>,
    mem: RwLock<Arc<GuestMemoryMmap>>,
    msix: Arc<Mutex<MsixVectors>>,
    recorder: Option<SharedRecorder>,
}

impl std::fmt::Debug for HarnessSmmu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessSmmu").finish_non_exhaustive()
    }
}

impl HarnessSmmu {
    /// Shares `unit`; guest memory is empty until [`Self::set_memory`].
    pub fn new(unit: Smmuv3) -> Self {
        let msix = Arc::new(Mutex::new(MsixVectors::new(SMMU_MSIX_VECTORS)));
        let unit = with_interrupts(unit, &msix);
        HarnessSmmu {
            iotlb: Arc::clone(unit.iotlb()),
            unit: Mutex::new(unit),
            mem: RwLock::new(Arc::new(GuestMemoryMmap::default())),
            msix,
            recorder: None,
        }
    }

    /// Records the SMMU's traffic with `recorder`.
    pub fn with_recorder(mut self, recorder: SharedRecorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Smmuv3> {
        self.unit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn memory(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&self.mem.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The SMMU's configuration.
    pub fn config(&self) -> Smmuv3Config {
        self.lock().config().clone()
    }
}

impl Translate for HarnessSmmu {
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        let RequesterId::Stream(sid) = rid else {
            return Err(TranslateFault { rid, iova });
        };
        let (sid, ssid) = (sid.0, pasid.map(Pasid::raw));
        let mem = self.memory();
        let fault = TranslateFault { rid, iova };
        let outcome = |r: TranslateResult| match r {
            TranslateResult::Mapped(t) => Ok(t),
            TranslateResult::Fault { .. } | TranslateResult::Stalled { .. } => Err(fault),
        };
        let Some(rec) = &self.recorder else {
            let mut u = self.lock();
            return outcome(ACCOUNTS.timed(Work::ModelTranslate, || {
                u.translate(&*mem, sid, ssid, iova, access)
            }));
        };
        let mut rec = record::lock(rec);
        let view = RecMem::new(Arc::clone(&mem), rec.log());
        let mut u = self.lock();
        let dma = Dma {
            sid,
            pasid: ssid,
            iova: iova.raw(),
            access,
        };
        let mut out = Err(fault);
        rec.translate(
            &mem,
            dma,
            || {
                out = outcome(ACCOUNTS.timed(Work::ModelTranslate, || {
                    u.translate(&view, sid, ssid, iova, access)
                }));
                out.as_ref().ok().map(|t| t.gpa_of(iova).raw())
            },
            |_, _| (Vec::new(), Vec::new()),
        );
        out
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}

/// The StreamID of a PCI function behind the harness's SMMU: its
/// requester ID (the `iommu-map` of [`dtb_fragment`] is the identity).
pub fn stream_of(bdf: Bdf) -> RequesterId {
    RequesterId::Stream(nesting_core::types::StreamId(u32::from(bdf.0)))
}

/// Where the SMMU node goes and what it names, for [`dtb_fragment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmmuNode {
    /// The register function's BAR0 address: the node's `reg`.
    pub base: u64,
    /// The register function's requester ID: the ITS DeviceID of the
    /// SMMU's MSIs (its MSI-X writes carry it).
    pub function_rid: u16,
    /// The requester IDs of the endpoints behind the SMMU.
    pub endpoints: Vec<u16>,
    /// Phandle of the GICv3 ITS node in QEMU's tree (its `phandle`
    /// property, read from QEMU's tree by the harness).
    pub its_phandle: u32,
    /// Name of the PCIe host controller node, a child of the root in
    /// QEMU's tree.
    pub pcie_node: String,
}

/// The SMMU node's phandle. QEMU numbers its own from 0x8000 up, so this
/// one cannot collide with any in the tree it is merged into.
pub const SMMU_PHANDLE: u32 = 0x5a00;

/// A device tree to merge into QEMU's own (from `-machine
/// virt,dumpdtb=FILE`; the harness decompiles both with `dtc` and lets it
/// merge the second definition of `/` into the first), written by the
/// library's device-tree builders (`smmuv3::fdt`), so the guest's Linux
/// checks them: the SMMU node at the function's BAR, with `msi-parent`
/// naming the function's own requester ID as the ITS DeviceID and no
/// wired interrupts (a vfio-user function can raise none; the driver uses
/// MSIs), and the PCIe host's `iommu-map`. Only the endpoints are in the
/// map: a requester ID it does not cover has no IOMMU (Linux's
/// `of_map_id`), and the register function must not sit behind the SMMU
/// it implements. The binding is Linux's
/// Documentation/devicetree/bindings/iommu/arm,smmu-v3.yaml.
pub fn dtb_fragment(n: &SmmuNode) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    // QEMU's virt root has two address and size cells, as the builders
    // expect of the node they write into.
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    let irqs = SmmuInterrupts {
        msi_parent: Some((n.its_phandle, u32::from(n.function_rid))),
        ..SmmuInterrupts::default()
    };
    write_smmuv3_node(&mut fdt, n.base, SMMU_PHANDLE, &irqs)?;
    // No endpoints, no map: Linux refuses an empty `iommu-map` ("Bad
    // iommu-map length") where a missing one means no IOMMU.
    if n.endpoints.is_empty() {
        fdt.end_node(root)?;
        return Ok(fdt.finish()?);
    }
    let pcie = fdt.begin_node(&n.pcie_node)?;
    let map: Vec<IommuMapEntry> = n
        .endpoints
        .iter()
        .map(|&rid| IommuMapEntry {
            rid_base: u32::from(rid),
            iommu: SMMU_PHANDLE,
            sid_base: u32::from(rid),
            length: 1,
        })
        .collect();
    write_iommu_map(&mut fdt, &map)?;
    fdt.end_node(pcie)?;
    fdt.end_node(root)?;
    Ok(fdt.finish()?)
}

/// Regions: BAR0 (both register pages), BAR2 (MSI-X) and config space.
pub fn regions() -> Vec<ServerRegion> {
    crate::backend::pci_regions(SMMU_BAR_SIZE, SMMU_MSIX_BAR_SIZE, 256)
}

/// MSI-X only, one vector per interrupt source.
pub fn irqs() -> Vec<IrqInfo> {
    crate::backend::msix_irqs(SMMU_MSIX_VECTORS)
}

/// The register function's backend.
pub type SmmuBackend = RegisterBackend<HarnessSmmu>;

impl RegisterUnit for HarnessSmmu {
    const NAME: &'static str = "smmuv3";
    const BAR_SIZE: u64 = SMMU_BAR_SIZE;
    const CONFIG: &'static [RegSpec] = CONFIG;

    /// Register read of `size` bytes (4 or 8) at `offset` from page 0.
    fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        let read = |u: &mut Smmuv3| ACCOUNTS.timed(Work::ModelRead, || u.mmio_read(offset, size));
        let Some(rec) = &self.recorder else {
            return read(&mut self.lock());
        };
        let mut rec = record::lock(rec);
        let v = read(&mut self.lock());
        rec.line(&format!("mmio-read{} {offset:#x} == {v:#x}", size * 8));
        v
    }

    /// Register write, with its synchronous effects (enables, the GBPA
    /// update, the command queue up to the new CMDQ_PROD).
    fn mmio_write(&self, offset: u64, size: u32, value: u64) {
        let mem = self.memory();
        // A write of the command queue's producer index runs the queue.
        let work = match offset {
            smmuv3::regs::off::CMDQ_PROD => Work::ModelQueue,
            _ => Work::ModelWrite,
        };
        let Some(rec) = &self.recorder else {
            let mut u = self.lock();
            ACCOUNTS.timed(work, || u.mmio_write(&*mem, offset, size, value));
            return;
        };
        let mut rec = record::lock(rec);
        let view = RecMem::new(Arc::clone(&mem), rec.log());
        let mut u = self.lock();
        rec.op(
            &mem,
            || ACCOUNTS.timed(work, || u.mmio_write(&view, offset, size, value)),
            |_, _| vec![format!("mmio-write{} {offset:#x} {value:#x}", size * 8)],
        );
    }

    /// Replaces the guest memory the SMMU reads tables and queues from.
    fn set_memory(&self, mem: Arc<GuestMemoryMmap>) {
        if let Some(rec) = &self.recorder {
            record::lock(rec).set_memory(Arc::clone(&mem));
        }
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = mem;
    }

    /// Reset of the SMMU (IHI 0070: registers take their reset values; an
    /// SMMU has no reset of its own but its system's). In the harness the
    /// register function is the SMMU's only presence on the platform, and
    /// QEMU resets it (`VFIO_USER_DEVICE_RESET`) on every system reset,
    /// so its reset stands for the system's.
    fn reset(&self) {
        let rec = self.recorder.as_ref().map(record::lock);
        let mut u = self.lock();
        if let Some(mut rec) = rec {
            rec.reset();
        }
        u.reset();
    }

    fn msix(&self) -> &Mutex<MsixVectors> {
        &self.msix
    }
}

#[cfg(test)]
mod tests;
