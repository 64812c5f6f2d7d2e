//! Fault reporting on the event queue (virtio 1.3 5.13.6.9).
//!
//! A fault is written into the next buffer the driver posted on the event
//! queue. While the driver has posted none, faults wait in a bounded
//! backlog; when it is full the newest fault is dropped and counted ("If no
//! buffer is available, the device can either wait for one to be consumed,
//! or drop the event").

use std::collections::VecDeque;

use nesting_core::types::Access;
use serde::{Deserialize, Serialize};
use zerocopy::IntoBytes;

use crate::protocol::{FaultFlags, FaultReason, FaultRecord};

/// Most faults kept while the driver has posted no event buffer. Linux
/// fills the whole event queue at probe time and reposts each buffer as it
/// consumes it, so a backlog only builds up before DRIVER_OK or when a
/// device faults in a storm; 64 keeps the first faults of a storm (the
/// informative ones) without letting a faulting device grow device memory.
pub const MAX_QUEUED_EVENTS: usize = 64;

/// One fault report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// `VIRTIO_IOMMU_FAULT_R_*`.
    pub reason: u8,
    /// `VIRTIO_IOMMU_FAULT_F_*`.
    pub flags: u32,
    /// The endpoint that faulted.
    pub endpoint: u32,
    /// The faulting address.
    pub address: u64,
}

/// The fault flags virtio 1.3 5.13.6.9 defines; the others go out zero.
const DEFINED_FLAGS: FaultFlags = FaultFlags::READ
    .union(FaultFlags::WRITE)
    .union(FaultFlags::ADDRESS);

impl Fault {
    /// A fault of `endpoint` accessing `address` with `access`.
    pub fn new(reason: FaultReason, endpoint: u32, address: u64, access: Access) -> Fault {
        // 5.13.6.9: only READ, WRITE and ADDRESS are defined; a fetch is
        // a read (see FaultFlags::EXEC for Linux's extra bit).
        let mut flags = FaultFlags::ADDRESS;
        flags.set(
            FaultFlags::READ,
            access.intersects(Access::READ | Access::EXEC),
        );
        flags.set(FaultFlags::WRITE, access.contains(Access::WRITE));
        Fault {
            reason: reason.into(),
            flags: flags.bits(),
            endpoint,
            address,
        }
    }

    /// The wire record (5.13.6.9 device requirements: "The device SHOULD
    /// set reserved and reserved1 to zero"; undefined flags zero).
    pub fn record(&self) -> FaultRecord {
        FaultRecord {
            reason: self.reason,
            flags: (self.flags & DEFINED_FLAGS.bits()).into(),
            endpoint: self.endpoint.into(),
            address: self.address.into(),
            ..FaultRecord::default()
        }
    }

    /// The record's bytes.
    pub fn bytes(&self) -> [u8; FaultRecord::SIZE] {
        let mut out = [0u8; FaultRecord::SIZE];
        out.copy_from_slice(self.record().as_bytes());
        out
    }
}

/// Faults waiting for an event buffer, and what was lost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    backlog: VecDeque<Fault>,
    dropped: u64,
    delivered: u64,
}

impl EventLog {
    /// Queues a fault; drops it (and counts it) when the backlog is full.
    pub fn push(&mut self, f: Fault) {
        if self.backlog.len() >= MAX_QUEUED_EVENTS {
            self.dropped += 1;
            nesting_core::guest_log!(
                Warn,
                "virtio-iommu: event backlog full, dropping fault of endpoint {:#x} at {:#x}",
                f.endpoint,
                f.address
            );
            return;
        }
        self.backlog.push_back(f);
    }

    /// The oldest waiting fault.
    pub fn front(&self) -> Option<&Fault> {
        self.backlog.front()
    }

    /// Removes the oldest fault after it was delivered.
    pub fn delivered_front(&mut self) {
        if self.backlog.pop_front().is_some() {
            self.delivered += 1;
        }
    }

    /// Drops the oldest fault without delivering it (its buffer was
    /// unusable).
    pub fn drop_front(&mut self) {
        if self.backlog.pop_front().is_some() {
            self.dropped += 1;
        }
    }

    /// Faults waiting.
    pub fn pending(&self) -> usize {
        self.backlog.len()
    }

    /// Faults dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Faults written to the event queue so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Checks a restored log against the bound.
    pub fn validated(self) -> Option<EventLog> {
        (self.backlog.len() <= MAX_QUEUED_EVENTS).then_some(self)
    }
}
