//! The virtio-iommu model as the harness serves it: [`VirtioIommu`] over
//! [`RecMem`] guest memory, behind the transport's [`VirtioDevice`] hooks
//! and the endpoints' [`Translate`] seam, recording what the guest makes
//! it do when a recorder is given ([`crate::record`]).
//!
//! What becomes script lines (docs/REPLAY.md "Virtio"):
//! - FEATURES_OK: `features == OFFERED` then `ack-features DRIVER`;
//! - device configuration accesses: `config-readN OFF == VAL`,
//!   `config-writeN OFF VAL`;
//! - a queue enabled: `queue Q size= desc= avail= used=`; its rings are
//!   the replay tool's memory from then on (it writes its own descriptors
//!   there), so they are never written nor checked;
//! - a notification: each chain the device took from the available ring,
//!   as it read it, becomes `submit Q out=GPA:LEN,... in=GPA:LEN,...` (one
//!   chain per `submit`, as the replay tool publishes them); the buffers
//!   the device read are `write-bytes` before, what it wrote (status
//!   bytes, probe properties, fault events) checks after, then
//!   `used Q == N`. A chain is recorded when the device takes it, not
//!   when the driver publishes or notifies: Linux posts its event buffers
//!   without a notification, and the device takes one when a fault
//!   comes; and a vCPU may publish more while a notification is served.
//!   Replaying a chain's `submit` just before the operation that took it
//!   gives the device the same buffers in the same order;
//! - an endpoint's DMA: `translate EP IOVA r|w|rw => GPA|fault`, a fault
//!   followed by checks of the event written and `used 1 == N`;
//! - a device reset after the driver ran starts the next boot's script.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use log::warn;
use nesting_core::iotlb::{Iotlb, Translate, TranslateFault, Translation};
use nesting_core::types::{Access, EndpointId, Iova, Pasid, RequesterId};
use virtio_iommu::VirtioIommu;
use vm_memory::GuestMemoryMmap;

use crate::account::{ACCOUNTS, Work};
use crate::record::{self, AccessLog, Dma, MemAccess, RecMem, SharedRecorder, bytes_seen};
use crate::virtio_pci::VirtioDevice;

/// `VIRTQ_DESC_F_NEXT`.
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const DESC_F_WRITE: u16 = 2;
/// The event queue's index (virtio 1.3 5.13.2).
const EVENT_QUEUE: u16 = 1;

/// The driver's rings of one enabled queue, and how far the recording
/// has read its available ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ring {
    size: u16,
    desc: u64,
    avail: u64,
    next_avail: u16,
}

/// One published chain: device-readable then device-writable buffers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Chain {
    out: Vec<(u64, u32)>,
    inp: Vec<(u64, u32)>,
}

impl Chain {
    fn submit_line(&self, q: u16) -> String {
        let list = |b: &[(u64, u32)]| {
            b.iter()
                .map(|(a, l)| format!("{a:#x}:{l:#x}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut s = format!("submit {q}");
        if !self.out.is_empty() {
            s += &format!(" out={}", list(&self.out));
        }
        if !self.inp.is_empty() {
            s += &format!(" in={}", list(&self.inp));
        }
        s
    }
}

/// The chain whose head is `head`, following NEXT at most `size` times
/// (a loop in the guest's descriptors ends there), with the descriptor
/// bytes the device read during the operation.
fn read_chain(
    accesses: &[MemAccess],
    mem: &GuestMemoryMmap,
    ring: &Ring,
    head: u16,
) -> Option<Chain> {
    let mut chain = Chain::default();
    let mut idx = head % ring.size.max(1);
    for _ in 0..ring.size {
        let at = ring.desc.checked_add(16 * u64::from(idx))?;
        let d = bytes_seen(accesses, mem, at, 16)?;
        let word = |i: usize, n: usize| {
            d.get(i..i + n).map_or(0, |b| {
                b.iter().rev().fold(0u64, |v, x| v << 8 | u64::from(*x))
            })
        };
        let (addr, len) = (word(0, 8), word(8, 4) as u32);
        let (flags, next) = (word(12, 2) as u16, word(14, 2) as u16);
        if flags & DESC_F_WRITE != 0 {
            chain.inp.push((addr, len));
        } else {
            chain.out.push((addr, len));
        }
        if flags & DESC_F_NEXT == 0 {
            return Some(chain);
        }
        idx = next % ring.size.max(1);
    }
    Some(chain)
}

/// The virtio-iommu device of the harness.
pub struct RecordedVirtio {
    dev: VirtioIommu<RecMem>,
    log: Arc<AccessLog>,
    mem: RwLock<Arc<GuestMemoryMmap>>,
    rings: Mutex<[Option<Ring>; 2]>,
    recorder: Option<SharedRecorder>,
}

impl std::fmt::Debug for RecordedVirtio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordedVirtio")
            .field("recording", &self.recorder.is_some())
            .finish_non_exhaustive()
    }
}

impl RecordedVirtio {
    /// Serves `dev`, recording with `recorder` if given.
    pub fn new(dev: VirtioIommu<RecMem>, recorder: Option<SharedRecorder>) -> Self {
        let log = recorder
            .as_ref()
            .map_or_else(|| Arc::new(AccessLog::default()), |r| record::lock(r).log());
        RecordedVirtio {
            dev,
            log,
            mem: RwLock::new(Arc::new(GuestMemoryMmap::default())),
            rings: Mutex::new([None, None]),
            recorder,
        }
    }

    /// The model.
    pub fn device(&self) -> &VirtioIommu<RecMem> {
        &self.dev
    }

    /// Hands the device the guest RAM the client shares now.
    pub fn set_memory(&self, mem: Arc<GuestMemoryMmap>) {
        if let Some(mut rec) = self.rec() {
            rec.set_memory(Arc::clone(&mem));
        }
        *self.mem.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&mem);
        self.dev
            .set_memory(Arc::new(RecMem::new(mem, Arc::clone(&self.log))));
    }

    fn memory(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&self.mem.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn rings(&self) -> MutexGuard<'_, [Option<Ring>; 2]> {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rec(&self) -> Option<MutexGuard<'_, record::Recorder>> {
        self.recorder.as_ref().map(record::lock)
    }

    /// `used Q == N` for queue `q`, if the script set it up.
    fn used_line(&self, q: u16) -> Option<String> {
        let set_up = self
            .rings()
            .get(usize::from(q))
            .is_some_and(Option::is_some);
        set_up.then(|| format!("used {q} == {}", self.dev.used_count(q).unwrap_or(0)))
    }

    /// Used-ring entries produced so far, per queue.
    fn used_counts(&self) -> [u16; 2] {
        [0, 1].map(|q| self.dev.used_count(q).unwrap_or(0))
    }

    /// `submit` lines for the chains the device took during an operation
    /// (as many per queue as used entries it added since `before`: it uses
    /// every chain it takes at once), read as the device read them, in
    /// ring order.
    fn consumed(
        &self,
        mem: &GuestMemoryMmap,
        accesses: &[MemAccess],
        before: [u16; 2],
    ) -> Vec<String> {
        let after = self.used_counts();
        let mut rings = self.rings();
        let mut lines = Vec::new();
        for (q, ring) in rings.iter_mut().enumerate() {
            let Some(ring) = ring else {
                continue;
            };
            let taken = after[q].wrapping_sub(before[q]).min(ring.size);
            for _ in 0..taken {
                let slot = ring.avail + 4 + 2 * u64::from(ring.next_avail % ring.size.max(1));
                let head = bytes_seen(accesses, mem, slot, 2).map_or(0, |b| {
                    u16::from_le_bytes([
                        b.first().copied().unwrap_or(0),
                        b.get(1).copied().unwrap_or(0),
                    ])
                });
                match read_chain(accesses, mem, ring, head) {
                    Some(c) => lines.push(c.submit_line(q as u16)),
                    None => warn!("recording: queue {q}: unreadable chain at head {head}"),
                }
                ring.next_avail = ring.next_avail.wrapping_add(1);
            }
        }
        lines
    }

    /// The device serving a notification of queue `index`, timed, with
    /// the requests it served (used-ring entries it added) counted.
    fn notify_counted(&self, index: u16) {
        if !ACCOUNTS.enabled() {
            return VirtioDevice::notify(&self.dev, index);
        }
        let before = self.dev.used_count(index).unwrap_or(0);
        ACCOUNTS.timed(Work::ModelQueue, || {
            VirtioDevice::notify(&self.dev, index);
        });
        let after = self.dev.used_count(index).unwrap_or(0);
        ACCOUNTS.requests(u64::from(after.wrapping_sub(before)));
    }

    fn reset_with(&self, reset: impl FnOnce(&VirtioIommu<RecMem>)) {
        let rec = self.rec();
        if let Some(mut rec) = rec {
            rec.reset();
            *self.rings() = [None, None];
            reset(&self.dev);
        } else {
            reset(&self.dev);
        }
    }
}

impl VirtioDevice for RecordedVirtio {
    fn device_type(&self) -> u16 {
        VirtioDevice::device_type(&self.dev)
    }

    fn num_queues(&self) -> u16 {
        VirtioDevice::num_queues(&self.dev)
    }

    fn max_queue_size(&self) -> u16 {
        VirtioDevice::max_queue_size(&self.dev)
    }

    fn device_features(&self) -> u64 {
        self.dev.device_features()
    }

    fn ack_features(&self, features: u64) -> bool {
        let rec = self.rec();
        let ok = VirtioDevice::ack_features(&self.dev, features);
        if let Some(mut rec) = rec {
            if ok {
                rec.line(&format!("features == {:#x}", self.dev.device_features()));
                rec.line(&format!("ack-features {features:#x}"));
            } else {
                rec.comment(&format!("FEATURES_OK refused for {features:#x}"));
            }
        }
        ok
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let rec = self.rec();
        ACCOUNTS.timed(Work::ModelRead, || self.dev.read_config(offset, data));
        let Some(mut rec) = rec else {
            return;
        };
        match data.len() {
            1 | 2 | 4 | 8 => {
                let mut b = [0u8; 8];
                b[..data.len()].copy_from_slice(data);
                let v = u64::from_le_bytes(b);
                rec.line(&format!(
                    "config-read{} {offset:#x} == {v:#x}",
                    data.len() * 8
                ));
            }
            _ => {
                for (off, v) in (offset..).zip(data.iter()) {
                    rec.line(&format!("config-read8 {off:#x} == {v:#x}"));
                }
            }
        }
    }

    fn write_config(&self, offset: u64, data: &[u8]) {
        let rec = self.rec();
        ACCOUNTS.timed(Work::ModelWrite, || self.dev.write_config(offset, data));
        if let Some(mut rec) = rec {
            let lines: Vec<String> = match data.len() {
                1 | 2 | 4 | 8 => {
                    let mut b = [0u8; 8];
                    b[..data.len()].copy_from_slice(data);
                    let v = u64::from_le_bytes(b);
                    vec![format!("config-write{} {offset:#x} {v:#x}", data.len() * 8)]
                }
                _ => (offset..)
                    .zip(data.iter())
                    .map(|(o, v)| format!("config-write8 {o:#x} {v:#x}"))
                    .collect(),
            };
            lines.iter().for_each(|l| rec.line(l));
        }
    }

    fn setup_queue(&self, index: u16, size: u16, desc: u64, driver: u64, device: u64) -> bool {
        let rec = self.rec();
        let ok = VirtioDevice::setup_queue(&self.dev, index, size, desc, driver, device);
        if let Some(mut rec) = rec
            && ok
        {
            rec.line(&format!(
                "queue {index} size={size} desc={desc:#x} avail={driver:#x} used={device:#x}"
            ));
            let n = u64::from(size);
            rec.exclude(desc, 16 * n);
            rec.exclude(driver, 6 + 2 * n);
            rec.exclude(device, 6 + 8 * n);
            if let Some(slot) = self.rings().get_mut(usize::from(index)) {
                *slot = Some(Ring {
                    size,
                    desc,
                    avail: driver,
                    next_avail: 0,
                });
            }
        }
        ok
    }

    fn notify(&self, index: u16) {
        let Some(mut rec) = self.rec() else {
            self.notify_counted(index);
            return;
        };
        let mem = self.memory();
        let before = self.used_counts();
        rec.op(
            &mem,
            || self.notify_counted(index),
            |_, accesses| {
                let mut lines = self.consumed(&mem, accesses, before);
                if !lines.is_empty() {
                    lines.extend(self.used_line(index));
                }
                lines
            },
        );
    }

    fn reset(&self) {
        self.reset_with(VirtioIommu::reset);
    }

    fn system_reset(&self) {
        self.reset_with(VirtioIommu::system_reset);
    }
}

impl Translate for RecordedVirtio {
    fn translate(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        let (Some(mut rec), RequesterId::Endpoint(EndpointId(ep)), None) = (self.rec(), rid, pasid)
        else {
            return ACCOUNTS.timed(Work::ModelTranslate, || {
                Translate::translate(&self.dev, rid, pasid, iova, access)
            });
        };
        let mem = self.memory();
        let dma = Dma {
            sid: ep,
            pasid: None,
            iova: iova.raw(),
            access,
        };
        let mut out = Err(TranslateFault { rid, iova });
        let before = self.used_counts();
        rec.translate(
            &mem,
            dma,
            || {
                out = ACCOUNTS.timed(Work::ModelTranslate, || {
                    Translate::translate(&self.dev, rid, pasid, iova, access)
                });
                out.as_ref().ok().map(|t| t.gpa_of(iova).raw())
            },
            |r, accesses| {
                let taken = self.consumed(&mem, accesses, before);
                let after = match r {
                    None => self.used_line(EVENT_QUEUE).into_iter().collect(),
                    Some(_) => Vec::new(),
                };
                (taken, after)
            },
        );
        out
    }

    fn iotlb(&self) -> &Iotlb {
        Translate::iotlb(&self.dev)
    }
}

#[cfg(test)]
mod tests;
