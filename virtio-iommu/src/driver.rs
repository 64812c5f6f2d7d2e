//! The driver's side of a split virtqueue (virtio 1.3 2.7): what the
//! replay tool and tests use to hand the device descriptor chains exactly
//! as a guest driver does (descriptor table, available ring with release
//! ordering, used ring).

use std::sync::atomic::{Ordering, fence};

use nesting_core::mem::{GuestMemoryExt, MemError};
use nesting_core::types::Gpa;
use vm_memory::GuestMemory;

/// `VIRTQ_DESC_F_NEXT`.
const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
const DESC_F_WRITE: u16 = 2;

/// A driver-side split ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRing {
    /// Ring size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl SplitRing {
    /// A ring at the given addresses (the driver's memory is assumed
    /// zeroed).
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Self {
        SplitRing {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// A ring laid out from `base`: descriptors, then the available ring,
    /// then the used ring on the next 4 KiB boundary. Returns it and the
    /// first address after it.
    pub fn at(base: u64, size: u16) -> (Self, u64) {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n + 0xfff) & !0xfff;
        let end = (used + 6 + 8 * n + 0xfff) & !0xfff;
        (SplitRing::new(size, desc, avail, used), end)
    }

    /// Writes one chain (`out` device-readable buffers, then `inp`
    /// device-writable ones) and publishes it; returns its head index.
    pub fn publish<M: GuestMemory>(
        &mut self,
        mem: &M,
        out: &[(u64, u32)],
        inp: &[(u64, u32)],
    ) -> Result<u16, MemError> {
        let head = self.next_desc;
        let total = out.len() + inp.len();
        let bufs = out
            .iter()
            .map(|b| (b, 0))
            .chain(inp.iter().map(|b| (b, DESC_F_WRITE)));
        for (i, ((addr, len), wflag)) in bufs.enumerate() {
            let idx = self.next_desc;
            let next = (idx + 1) % self.size.max(1);
            let flags = wflag | if i + 1 < total { DESC_F_NEXT } else { 0 };
            let at = Gpa(self.desc + 16 * u64::from(idx));
            mem.write_u64_le(at, *addr)?;
            mem.write_u32_le(Gpa(at.0 + 8), *len)?;
            mem.write_u16_le(Gpa(at.0 + 12), flags)?;
            mem.write_u16_le(Gpa(at.0 + 14), next)?;
            self.next_desc = next;
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size.max(1));
        mem.write_u16_le(Gpa(slot), head)?;
        // The ring entry is visible before the index that publishes it.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_u16_le(Gpa(self.avail + 2), self.avail_idx)?;
        Ok(head)
    }

    /// The device's used index.
    pub fn used_idx<M: GuestMemory>(&self, mem: &M) -> Result<u16, MemError> {
        mem.read_u16_le(Gpa(self.used + 2))
    }

    /// The next used element not seen yet: `(id, len)`.
    pub fn pop_used<M: GuestMemory>(&mut self, mem: &M) -> Result<Option<(u32, u32)>, MemError> {
        if self.used_idx(mem)? == self.used_seen {
            return Ok(None);
        }
        fence(Ordering::Acquire);
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size.max(1));
        let id = mem.read_u32_le(Gpa(at))?;
        let len = mem.read_u32_le(Gpa(at + 4))?;
        self.used_seen = self.used_seen.wrapping_add(1);
        Ok(Some((id, len)))
    }
}
