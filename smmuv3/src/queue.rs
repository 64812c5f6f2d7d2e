//! Circular queue geometry and index arithmetic shared by the command,
//! event and PRI queues (IHI 0070 "SMMU circular queues").
//!
//! A queue of 2^LOG2SIZE entries is addressed by PROD and CONS values made
//! of an index (the low LOG2SIZE bits) and a wrap bit just above it. The
//! queue is empty when both are equal, full when the indices are equal
//! and the wrap bits differ.

use crate::regs::queue_base::QueueBase;
use crate::regs::queue_ptr;

/// Where a queue lives and how big it is, from its BASE register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Address of entry 0.
    pub base: u64,
    /// log2 of the number of entries.
    pub log2: u8,
    /// Bytes per entry.
    pub entry: u64,
}

impl Queue {
    /// The queue a BASE register value describes. IHI 0070 (SMMU_CMDQ_BASE
    /// LOG2SIZE): a size above the implemented maximum `max_log2` behaves
    /// as the maximum. The base must be aligned to the queue size; its
    /// bits below that alignment are treated as zero (a CONSTRAINED
    /// UNPREDICTABLE choice the spec allows).
    pub fn from_base(raw: u64, max_log2: u8, entry: u64) -> Queue {
        let b = QueueBase(raw);
        let log2 = b.log2size().min(max_log2);
        let bytes = entry << log2;
        let align = bytes.max(32) - 1;
        Queue {
            base: b.addr() & !align,
            log2,
            entry,
        }
    }

    /// Number of entries.
    pub fn entries(&self) -> u32 {
        1 << self.log2
    }

    /// The PROD/CONS bits meaningful for this size: index and wrap.
    pub fn ptr_mask(&self) -> u32 {
        (2u32 << self.log2) - 1
    }

    /// `raw` with every bit above the wrap bit cleared.
    pub fn normalize(&self, raw: u64) -> u32 {
        queue_ptr::QueuePtr(raw).wrap_index() & self.ptr_mask()
    }

    /// The index part of a pointer.
    pub fn index(&self, ptr: u32) -> u32 {
        ptr & (self.entries() - 1)
    }

    /// The wrap bit of a pointer.
    pub fn wrap(&self, ptr: u32) -> bool {
        ptr & self.entries() != 0
    }

    /// The pointer after `ptr`, wrapping and toggling the wrap bit.
    pub fn next(&self, ptr: u32) -> u32 {
        (ptr.wrapping_add(1)) & self.ptr_mask()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self, prod: u32, cons: u32) -> bool {
        prod & self.ptr_mask() == cons & self.ptr_mask()
    }

    /// Whether the queue is full.
    pub fn is_full(&self, prod: u32, cons: u32) -> bool {
        self.index(prod) == self.index(cons) && self.wrap(prod) != self.wrap(cons)
    }

    /// Address of the entry `ptr` points at (`None` on overflow).
    pub fn slot(&self, ptr: u32) -> Option<u64> {
        self.base
            .checked_add(u64::from(self.index(ptr)) * self.entry)
    }

    /// How many entries follow `cons` up to `prod` without wrapping the
    /// index (what one contiguous read can fetch).
    pub fn contiguous(&self, prod: u32, cons: u32) -> u32 {
        if self.is_empty(prod, cons) {
            return 0;
        }
        let (p, c) = (self.index(prod), self.index(cons));
        if p > c { p - c } else { self.entries() - c }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(log2: u64) -> Queue {
        Queue::from_base(0x10_0000 | log2, 19, 16)
    }

    #[test]
    fn from_base_caps_log2size_at_maximum() {
        let q = Queue::from_base(0x10_0000 | 31, 19, 16);
        assert_eq!(q.log2, 19);
    }

    #[test]
    fn from_base_misaligned_base_is_truncated_to_queue_size() {
        let q = Queue::from_base(0x10_0060 | 3, 19, 16);
        assert_eq!(q.base, 0x10_0000);
    }

    #[test]
    fn empty_and_full_follow_the_wrap_bit() {
        let q = q(2);
        assert!(q.is_empty(0, 0));
        assert!(q.is_empty(4 | 1, 4 | 1));
        assert!(q.is_full(4, 0));
        assert!(q.is_full(1, 4 | 1));
        assert!(!q.is_full(3, 0));
    }

    #[test]
    fn next_wraps_index_and_toggles_wrap() {
        let q = q(2);
        assert_eq!(q.next(3), 4);
        assert_eq!(q.next(7), 0);
    }

    #[test]
    fn contiguous_stops_at_end_of_ring() {
        let q = q(2);
        assert_eq!(q.contiguous(4 | 1, 2), 2);
        assert_eq!(q.contiguous(3, 1), 2);
        assert_eq!(q.contiguous(1, 1), 0);
        assert_eq!(q.contiguous(1, 4 | 1), 3);
    }

    #[test]
    fn normalize_drops_bits_above_wrap() {
        let q = q(2);
        assert_eq!(q.normalize(0x8100_0007), 7);
        assert_eq!(q.normalize(0xf), 7);
    }

    #[test]
    fn slot_is_base_plus_index_times_entry() {
        let q = q(2);
        assert_eq!(q.slot(4 | 3), Some(0x10_0000 + 3 * 16));
    }
}
