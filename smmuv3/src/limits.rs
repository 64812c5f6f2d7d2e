//! The bounds on the work one guest action can cause (issue 16), next
//! to the caps they follow from. `docs/guest-limits.md` tables them with
//! the caps of every model; `tests/bounds.rs` asserts them.
//!
//! A guest acts on the SMMU by an MMIO write ([`crate::Smmuv3::mmio_write`]:
//! a CMDQ_PROD write drains the command queue, CR0 and GBPA writes move
//! the passthrough streams) and by the DMA of its emulated devices
//! ([`crate::Smmuv3::translate`]).

use crate::regs::MAX_QUEUE_LOG2;
use crate::walk::MAX_UPDATE_RETRIES;

const RETRIES: u64 = MAX_UPDATE_RETRIES as u64;

/// Most commands one CMDQ_PROD write (or CMDQEN, or GERROR.CMDQ_ERR
/// acknowledged) consumes: one queue's worth, the largest queue being
/// 2^[`MAX_QUEUE_LOG2`] entries; a guest rewriting PROD during the drain
/// cannot extend it.
pub const MAX_COMMANDS_PER_WRITE: u64 = 1 << MAX_QUEUE_LOG2;

/// Most reads of one stage-2 walk: four levels of descriptors and the
/// atomic update of the leaf's access flag (HTTU), each attempt; an
/// update that finds the descriptor changed walks again, at most
/// [`MAX_UPDATE_RETRIES`] times. Self-referencing tables cannot add to
/// it: a walk is bounded by its levels.
pub const MAX_READS_PER_S2_WALK: u64 = RETRIES * (4 + 1);

/// Most reads of one stage-1 walk of a nested stream: four descriptors
/// and the leaf's update, each at an IPA first translated by a stage-2
/// walk, per attempt.
pub const MAX_READS_PER_S1_WALK: u64 = RETRIES * 5 * (1 + MAX_READS_PER_S2_WALK);

/// Most guest-memory reads of one translation: the level-1 stream table
/// descriptor and the STE, the level-1 CD descriptor and the CD (each an
/// IPA behind a stage-2 walk for a nested stream), the stage-1 walk and
/// the stage-2 walk of its output.
pub const MAX_READS_PER_TRANSLATION: u64 =
    2 + 2 * (1 + MAX_READS_PER_S2_WALK) + MAX_READS_PER_S1_WALK + MAX_READS_PER_S2_WALK;

/// Most writes of one stage-2 walk: the leaf's update, per attempt.
pub const MAX_WRITES_PER_S2_WALK: u64 = RETRIES;

/// Most guest-memory writes of one translation: the hardware updates of
/// every walk above, and the event record (or stall record) of a fault
/// with its MSI.
pub const MAX_WRITES_PER_TRANSLATION: u64 = 2 * MAX_WRITES_PER_S2_WALK
    + RETRIES * (5 * MAX_WRITES_PER_S2_WALK + 1)
    + MAX_WRITES_PER_S2_WALK
    + 2;

/// Most reads one command costs besides its fetch: CFGI_STE and
/// CFGI_STE_RANGE re-read the STE (level-1 descriptor and STE) of each
/// passthrough stream they cover.
pub const STE_READS: u64 = 2;

/// Most guest-memory reads of one MMIO write of an SMMU with `devices`
/// passthrough streams: each command fetched once (one read per batch of
/// contiguous commands, or per command where the batch cannot be read
/// whole), and its STE re-reads; a CR0 or GBPA write re-reads every
/// passthrough STE once more.
pub const fn max_reads_per_mmio_write(devices: u64) -> u64 {
    MAX_COMMANDS_PER_WRITE * (1 + STE_READS * devices) + STE_READS * devices
}

/// Most guest-memory writes of one MMIO write: a CMD_SYNC's MSI (or
/// MSIPOLL) write per command, and a GERROR MSI.
pub const MAX_WRITES_PER_MMIO_WRITE: u64 = MAX_COMMANDS_PER_WRITE + 1;

/// Most host calls moving one passthrough stream to another vSTE: a
/// nested HWPT allocated, the replace, the old HWPT destroyed, and when
/// the host refuses, the abort HWPT attached instead (and the roll-back
/// of what was done).
pub const HOST_CALLS_PER_STREAM: u64 = 8;

/// Most host calls of one command of an SMMU with `devices` passthrough
/// streams behind `viommus` vIOMMUs: a CMD_SYNC or CFGI_STE sends what is
/// queued, one `IOMMU_HWPT_INVALIDATE` per vIOMMU (split at
/// [`nesting_core::nested::MAX_INVALIDATIONS_PER_CALL`] entries, which one
/// queue's worth of commands adds up to at most
/// `MAX_COMMANDS_PER_WRITE / MAX_INVALIDATIONS_PER_CALL` more calls per
/// write); CFGI_STE(_RANGE) moves every stream it covers.
pub const fn max_host_calls_per_command(devices: u64, viommus: u64) -> u64 {
    viommus + HOST_CALLS_PER_STREAM * devices
}

/// Most host calls of one MMIO write.
pub const fn max_host_calls_per_mmio_write(devices: u64, viommus: u64) -> u64 {
    (MAX_COMMANDS_PER_WRITE + 1) * max_host_calls_per_command(devices, viommus)
        + viommus * MAX_COMMANDS_PER_WRITE / nesting_core::nested::MAX_INVALIDATIONS_PER_CALL as u64
}
