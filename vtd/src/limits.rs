//! The bounds on the work one guest action can cause (issue 16), next
//! to the caps they follow from. `docs/guest-limits.md` tables them with
//! the caps of every model; `tests/bounds.rs` asserts them.
//!
//! A guest acts on the unit in three ways: an MMIO write
//! ([`crate::Vtd::mmio_write`]), a DMA translation of an emulated device
//! ([`crate::Vtd::translate`], and the ATS and page-request paths built on
//! it), and the passthrough work an MMIO write starts at its sync points
//! ([`crate::passthrough`]).

/// Most 128-bit descriptors one queue can hold: IQA.QS is 3 bits, 2^7
/// pages of 256 descriptors (11.4 IQA_REG). One tail write processes at
/// most this many, so the drain is bounded even if the guest rewrites the
/// tail.
pub const MAX_QUEUE_DESCRIPTORS: u64 = 256 << 7;

/// Most guest-memory reads of one translation: the root and context
/// entries, the PASID directory and PASID entries, five first-stage
/// entries each behind a five-level second-stage walk of its table's
/// address (nested, VT-d "Nested Translation"), and the five-level
/// second-stage walk of the output. Page-table cycles cannot add to it:
/// every walk is bounded by its level count, not by what the entries say.
/// The accessed and dirty flags a first-stage walk sets (VT-d 3.6) are
/// written through the second stage too: five more second-stage walks.
pub const MAX_READS_PER_TRANSLATION: u64 = 4 + 5 * (1 + 5) + 5 + 5 * 5;

/// Most guest-memory writes of one translation: the accessed (and, for
/// the leaf, dirty) flags of the five first-stage entries walked (VT-d
/// 3.6), each a single write.
pub const MAX_WRITES_PER_TRANSLATION: u64 = 5;

/// Most reads of one ATS translation request ([`crate::Vtd::translation_request`]):
/// the context entry's device-TLB check, then up to three walks (the
/// request, again without execute after an XD fault, and once more for
/// write to set the dirty flag before write is granted).
pub const MAX_READS_PER_TRANSLATION_REQUEST: u64 = 2 + 3 * MAX_READS_PER_TRANSLATION;

/// Most writes of one ATS translation request: the flags of its walks.
pub const MAX_WRITES_PER_TRANSLATION_REQUEST: u64 = 3 * MAX_WRITES_PER_TRANSLATION;

/// Most reads of one page request ([`crate::Vtd::page_request`]): the
/// root and context entries (PRE).
pub const MAX_READS_PER_PAGE_REQUEST: u64 = 2;

/// Most writes of one page request: its descriptor at PQT.
pub const MAX_WRITES_PER_PAGE_REQUEST: u64 = 1;

/// Most guest-memory reads the passthrough backend makes for one guest
/// action (an MMIO write with all the sync points it reaches, or a device
/// added): the contexts and PASID tables it re-reads and the page tables
/// it mirrors. Twice what one invalidation range may read
/// ([`crate::passthrough::MAX_ROUNDS_PER_RANGE`] rounds of
/// [`crate::shadow::MAX_ENTRIES_PER_ENUMERATION`] entries, 2^26: a fully
/// populated 256 GiB of 4 KiB pages), so a guest's real tables always fit
/// and one read whole leaves room for the rest. Enforced, not assumed: the
/// backend reads through a [`nesting_core::mem::ReadBudget`], so tables
/// pointing everywhere cannot pass it; past it, reads fail as unreadable
/// memory does (the requesters they concern stay blocked, their mappings
/// unmirrored, logged), never granting more than the guest mapped.
pub const MAX_SYNC_READS_PER_WRITE: u64 = 1 << 27;

const _: () = assert!(
    MAX_SYNC_READS_PER_WRITE
        >= 2 * (crate::passthrough::MAX_ROUNDS_PER_RANGE as u64)
            * (crate::shadow::MAX_ENTRIES_PER_ENUMERATION as u64)
);

/// Most guest-memory reads of one MMIO write: one per descriptor of the
/// largest queue, and the passthrough backend's budget. Writes: the
/// status writes of the wait descriptors, at most one per descriptor.
pub const MAX_READS_PER_MMIO_WRITE: u64 = MAX_QUEUE_DESCRIPTORS + MAX_SYNC_READS_PER_WRITE;

/// Most host calls one mapping read from the guest's tables costs at a
/// sync point: its `IOAS_COPY`, the `IOAS_MAP` it falls back to, the
/// unmap of the run it replaces, and as many again to roll back a plan the
/// host refused.
pub const HOST_CALLS_PER_MAPPING: u64 = 6;

/// Most host calls one invalidation descriptor costs at a sync point
/// besides its mappings: the unmap of its range in a shadow space (and
/// its roll-back), or, for a nested unit, the `IOMMU_HWPT_INVALIDATE` of
/// the flush a context change makes before it replaces HWPTs.
pub const HOST_CALLS_PER_DESCRIPTOR: u64 = 2;

/// Most host calls placing one requester costs at a sync point: a new
/// shadow space (`IOAS_ALLOC`, its IOVA ranges, a PASID-capable HWPT),
/// the RID moved to a PASID-capable HWPT first, the attach or replace, the
/// detach and destroys of what it left, a nested HWPT rebuilt after a
/// failed invalidation, and the roll-back of each.
pub const HOST_CALLS_PER_REQUESTER: u64 = 24;

/// Most host calls of one sync point of a unit whose passthrough devices
/// have `requesters` requesters (RIDs and PASIDs, at most
/// 1 + [`crate::passthrough::MAX_NESTED_PASIDS_PER_DEVICE`] per device),
/// for `descriptors` invalidation descriptors since the last sync point.
/// One MMIO write reaches at most one sync point per wait descriptor, one
/// for a register-based invalidation, and one at its end.
pub const fn max_host_calls_per_sync(requesters: u64, descriptors: u64) -> u64 {
    HOST_CALLS_PER_MAPPING * crate::passthrough::MAX_MAPPINGS_PER_SYNC as u64
        + HOST_CALLS_PER_DESCRIPTOR * descriptors
        + HOST_CALLS_PER_REQUESTER * requesters
}
