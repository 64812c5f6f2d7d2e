//! A modern virtio-pci transport (virtio 1.3 section 4.1) for a vfio-user
//! function: the PCI capabilities ([`caps`]), the common configuration
//! (4.1.4.3), notifications (4.1.4.4), the ISR status (4.1.4.5), the
//! device-specific configuration (4.1.4.6), the PCI configuration access
//! window (4.1.4.9) and MSI-X vector routing (4.1.5.1.2).
//!
//! The device behind it implements [`VirtioDevice`]; the virtio-iommu
//! model's `VirtioIommu` has exactly these hooks. Interrupts the device
//! raises go through an [`IrqRouter`], which the device may call with its
//! own lock held (it never calls back into the device).
//!
//! There is no legacy interface: the device must offer
//! VIRTIO_F_VERSION_1, and the PCI device ID is 0x1040 + the virtio ID
//! (4.1.2.1: "Non-transitional devices SHOULD have a PCI Device ID in the
//! range 0x1040 to 0x107f").

pub mod caps;
pub mod common;
pub mod iommu;

use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use log::{debug, warn};
use thiserror::Error;

use crate::regfile::{RegFile, RegFileError};
use caps::{
    BAR0_SIZE, COMMON_LEN, COMMON_OFFSET, DEVICE_LEN, DEVICE_OFFSET, ISR_OFFSET, NOTIFY_MULTIPLIER,
    NOTIFY_OFFSET, PCI_CFG_DATA,
};
pub use common::{CommonConfig, QueueState};

/// `VIRTIO_MSI_NO_VECTOR` (4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue interrupt (4.1.4.5).
pub const ISR_QUEUE: u8 = 1 << 0;
/// ISR bit: a configuration change (4.1.4.5).
pub const ISR_CONFIG: u8 = 1 << 1;

/// The device side of the transport: what virtio 1.3 chapter 2 and 3 ask
/// of a device, independent of PCI.
pub trait VirtioDevice: Send + Sync {
    /// Virtio device ID (5: e.g. 23 for the IOMMU device).
    fn device_type(&self) -> u16;
    /// Number of virtqueues.
    fn num_queues(&self) -> u16;
    /// Largest queue size the device accepts.
    fn max_queue_size(&self) -> u16;
    /// Feature bits offered.
    fn device_features(&self) -> u64;
    /// FEATURES_OK with `features` acknowledged; `false` refuses them.
    fn ack_features(&self, features: u64) -> bool;
    /// Reads device configuration.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration.
    fn write_config(&self, offset: u64, data: &[u8]);
    /// Enables queue `index` with the driver's ring addresses; `false` if
    /// the device cannot use them.
    fn setup_queue(&self, index: u16, size: u16, desc: u64, driver: u64, device: u64) -> bool;
    /// The driver notified queue `index`.
    fn notify(&self, index: u16);
    /// Device reset (status written 0).
    fn reset(&self);
    /// Reset of the whole platform (a function reset stands for it in the
    /// harness); by default a device reset.
    fn system_reset(&self) {
        self.reset();
    }
}

/// Delivers MSI-X vector `vector` (returns whether it was delivered).
pub type VectorSink = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// Why a device raises an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Used buffer notification for a queue (2.7.7.2).
    Queue(u16),
    /// Configuration change notification (4.1.4.3, 2.5.1).
    Config,
}

/// Maps interrupt causes to MSI-X vectors and the ISR status.
pub struct IrqRouter {
    isr: AtomicU8,
    generation: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Mutex<Vec<u16>>,
    sink: VectorSink,
}

impl std::fmt::Debug for IrqRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqRouter")
            .field("isr", &self.isr)
            .field("generation", &self.generation)
            .field("config_vector", &self.config_vector)
            .finish_non_exhaustive()
    }
}

impl IrqRouter {
    fn new(queues: u16, sink: VectorSink) -> Self {
        IrqRouter {
            isr: AtomicU8::new(0),
            generation: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: Mutex::new(vec![NO_VECTOR; usize::from(queues)]),
            sink,
        }
    }

    fn vectors(&self) -> std::sync::MutexGuard<'_, Vec<u16>> {
        self.queue_vectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Raises `cause`: sets the ISR bit, bumps `config_generation` for a
    /// configuration change (4.1.4.3.1: "The device MUST change
    /// config_generation if any part of the device configuration has
    /// changed"), and signals the routed vector, if any.
    pub fn raise(&self, cause: Cause) {
        let vector = match cause {
            Cause::Queue(q) => {
                self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
                self.vectors()
                    .get(usize::from(q))
                    .copied()
                    .unwrap_or(NO_VECTOR)
            }
            Cause::Config => {
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
                self.config_vector.load(Ordering::Acquire)
            }
        };
        if vector != NO_VECTOR && !(self.sink)(vector) {
            debug!("{cause:?}: vector {vector} not delivered");
        }
    }

    /// Reads and clears the ISR status (4.1.4.5.1: "The device MUST reset
    /// ISR status to 0 on driver read").
    fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    fn generation(&self) -> u8 {
        self.generation.load(Ordering::Acquire)
    }

    fn reset(&self) {
        self.isr.store(0, Ordering::Release);
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        self.vectors().iter_mut().for_each(|v| *v = NO_VECTOR);
    }
}

/// Errors of a transport access (the client's offsets, never the guest's
/// values: those get their architected effect).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransportError {
    /// The access lies outside the region.
    #[error("BAR0 access of {len} bytes at {offset:#x} outside the region")]
    OutOfRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// A configuration space access failed.
    #[error("configuration space access")]
    Config(#[from] RegFileError),
}

/// The transport of one virtio-pci function.
pub struct VirtioPci<D: VirtioDevice> {
    device: Arc<D>,
    config: RegFile,
    common: CommonConfig,
    irq: Arc<IrqRouter>,
    msix_vectors: u16,
}

impl<D: VirtioDevice> std::fmt::Debug for VirtioPci<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("common", &self.common)
            .field("irq", &self.irq)
            .finish_non_exhaustive()
    }
}

impl<D: VirtioDevice> VirtioPci<D> {
    /// The transport for `device` with `msix_vectors` vectors delivered by
    /// `sink`.
    pub fn new(device: Arc<D>, msix_vectors: u16, sink: VectorSink) -> Self {
        let queues = device.num_queues();
        let max = device.max_queue_size();
        VirtioPci {
            config: caps::config_space(device.device_type(), msix_vectors.max(1)),
            common: CommonConfig::new(queues, max),
            irq: Arc::new(IrqRouter::new(queues, sink)),
            msix_vectors,
            device,
        }
    }

    /// The router the device raises interrupts through.
    pub fn irq_router(&self) -> Arc<IrqRouter> {
        Arc::clone(&self.irq)
    }

    /// The common configuration state (for tests and logs).
    pub fn common(&self) -> &CommonConfig {
        &self.common
    }

    /// Function reset (`VFIO_USER_DEVICE_RESET`, sent by QEMU on every
    /// system reset): the transport back to its reset state and the device
    /// to its state after a system reset.
    pub fn system_reset(&mut self) {
        self.device.system_reset();
        self.irq.reset();
        self.common.reset();
    }

    /// A configuration space read.
    pub fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TransportError> {
        self.config.read(offset, data)?;
        // A read through the window has the side effects of a BAR read
        // (reading the ISR clears it).
        self.pci_cfg_window(offset, data.len(), |t, o, buf| t.bar0_read(o, buf), data)
    }

    /// A configuration space write.
    pub fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        self.config.write(offset, data)?;
        let mut copy = data.to_vec();
        self.pci_cfg_window(
            offset,
            data.len(),
            |t, bar_off, buf| t.bar0_write(bar_off, buf),
            &mut copy,
        )
    }

    /// 4.1.4.9: an access to `pci_cfg_data` is an access of `cap.length`
    /// bytes at `cap.offset` in BAR `cap.bar`. "The device MUST ignore any
    /// accesses to pci_cfg_data if cap.bar is not ... cap.offset ... not
    /// aligned ... or cap.length not 1, 2 or 4" (4.1.4.9.2 paraphrased:
    /// only naturally aligned 1, 2 and 4 byte accesses to a valid BAR).
    fn pci_cfg_window(
        &mut self,
        offset: u64,
        len: usize,
        op: impl FnOnce(&mut Self, u64, &mut [u8]) -> Result<(), TransportError>,
        data: &mut [u8],
    ) -> Result<(), TransportError> {
        let window = u64::from(PCI_CFG_DATA)..u64::from(PCI_CFG_DATA) + 4;
        if offset != window.start || !(1..=4).contains(&len) {
            return Ok(());
        }
        let bar = self.config.get("PCI_CFG_BAR");
        let bar_off = u64::from(self.config.get("PCI_CFG_OFFSET"));
        let length = self.config.get("PCI_CFG_LENGTH") as usize;
        let aligned = matches!(length, 1 | 2 | 4) && bar_off.is_multiple_of(length as u64);
        if bar != 0 || !aligned || length != len {
            debug!("pci_cfg access ignored: bar {bar}, offset {bar_off:#x}, length {length}");
            return Ok(());
        }
        let Some(buf) = data.get_mut(..length) else {
            return Ok(());
        };
        op(self, bar_off, buf)
    }

    fn check(offset: u64, len: usize) -> Result<(), TransportError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= BAR0_SIZE => Ok(()),
            _ => Err(TransportError::OutOfRange { offset, len }),
        }
    }

    /// A BAR0 read.
    pub fn bar0_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), TransportError> {
        Self::check(offset, data.len())?;
        data.fill(0);
        let (region, off) = region_of(offset);
        match region {
            Region::Common => {
                let dev_features = self.device.device_features();
                let generation = self.irq.generation();
                self.common.read(off, data, dev_features, generation);
            }
            Region::Isr if off == 0 => {
                if let Some(b) = data.first_mut() {
                    *b = self.irq.take_isr();
                }
            }
            Region::Device => self.device.read_config(off, data),
            Region::Isr | Region::Notify | Region::None => {}
        }
        Ok(())
    }

    /// A BAR0 write.
    pub fn bar0_write(&mut self, offset: u64, data: &[u8]) -> Result<(), TransportError> {
        Self::check(offset, data.len())?;
        let (region, off) = region_of(offset);
        match region {
            Region::Common => {
                let effects = self.common.write(off, data, self.msix_vectors);
                self.apply(effects);
            }
            Region::Device => self.device.write_config(off, data),
            Region::Notify => self.notify(off),
            Region::Isr | Region::None => {}
        }
        Ok(())
    }

    /// 4.1.4.4: the driver notifies queue `n` by writing at
    /// `queue_notify_off * notify_off_multiplier`; here `queue_notify_off`
    /// is the queue index.
    fn notify(&mut self, off: u64) {
        let index = off / u64::from(NOTIFY_MULTIPLIER);
        let Ok(index) = u16::try_from(index) else {
            return;
        };
        // 2.1.2 / 3.1.1: the device acts on notifications once the driver
        // set DRIVER_OK; an enabled queue is required to have rings.
        let ready = self.common.driver_ok()
            && self
                .common
                .queue(index)
                .is_some_and(|q: &QueueState| q.enabled);
        if ready {
            self.device.notify(index);
        } else {
            debug!("notify of queue {index} ignored (not ready)");
        }
    }

    fn apply(&mut self, effects: common::Effects) {
        if effects.reset {
            self.device.reset();
            self.irq.reset();
            self.common.reset();
            return;
        }
        if let Some(features) = effects.features_ok
            && !self.device.ack_features(features)
        {
            // 3.1.1 step 6: the driver re-reads the status; a device that
            // does not accept the features leaves FEATURES_OK clear.
            self.common.refuse_features();
        }
        if let Some(q) = effects.enable_queue {
            self.enable_queue(q);
        }
        if let Some(v) = effects.config_vector {
            self.irq.config_vector.store(v, Ordering::Release);
        }
        if let Some((q, v)) = effects.queue_vector
            && let Some(slot) = self.irq.vectors().get_mut(usize::from(q))
        {
            *slot = v;
        }
    }

    fn enable_queue(&mut self, index: u16) {
        let Some(q) = self.common.queue(index).copied() else {
            return;
        };
        if self
            .device
            .setup_queue(index, q.size, q.desc, q.driver, q.device)
        {
            self.common.set_enabled(index);
        } else {
            // 2.1.2: "The device SHOULD set DEVICE_NEEDS_RESET when it
            // enters an error state that a reset is needed", and notify
            // the driver with a configuration change.
            warn!("queue {index}: rings refused by the device; DEVICE_NEEDS_RESET");
            self.common.needs_reset();
            self.irq.raise(Cause::Config);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Common,
    Isr,
    Device,
    Notify,
    None,
}

fn region_of(offset: u64) -> (Region, u64) {
    let within = |base: u64, len: u64| offset >= base && offset - base < len;
    if within(COMMON_OFFSET, COMMON_LEN) {
        (Region::Common, offset - COMMON_OFFSET)
    } else if within(ISR_OFFSET, 1) {
        (Region::Isr, offset - ISR_OFFSET)
    } else if within(DEVICE_OFFSET, DEVICE_LEN) {
        (Region::Device, offset - DEVICE_OFFSET)
    } else if within(NOTIFY_OFFSET, caps::NOTIFY_LEN) {
        (Region::Notify, offset - NOTIFY_OFFSET)
    } else {
        (Region::None, offset)
    }
}

#[cfg(test)]
mod tests;
