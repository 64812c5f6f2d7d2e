//! The bounds on the work one guest action can cause (issue 16), next
//! to the caps they follow from. `docs/guest-limits.md` tables them with
//! the caps of every model; `bounds_tests.rs` asserts them.
//!
//! A guest acts on the device by a queue notification
//! ([`crate::VirtioIommu::notify`]), a config write (`bypass`), and the
//! DMA of its emulated endpoints ([`crate::VirtioIommu::translate`], which
//! reads no guest memory: the mappings are the device's own).

use crate::device::MAX_QUEUE_SIZE;
use crate::domain::MAX_MAPPINGS_PER_DOMAIN;
use crate::queue::MAX_CHAIN_SEGMENTS;

/// Most chains one notification uses: one ring's worth
/// ([`MAX_QUEUE_SIZE`]); virtio-queue refuses an available index more
/// than a ring ahead, and a driver publishing during the drain cannot
/// extend it.
pub const MAX_CHAINS_PER_NOTIFY: u64 = MAX_QUEUE_SIZE as u64;

/// Most guest-memory reads of one chain: the available index and ring
/// entry, its descriptors (up to [`MAX_CHAIN_SEGMENTS`] and the one past
/// it that gets the chain returned unused, an indirect table's descriptor
/// included), and the request from its readable buffers (one read per
/// buffer, at most one per segment).
pub const MAX_READS_PER_CHAIN: u64 =
    2 + (MAX_CHAIN_SEGMENTS as u64 + 2) + MAX_CHAIN_SEGMENTS as u64;

/// Most guest-memory writes of one chain: the properties and tail into
/// its writable buffers (one write per buffer each), the used element and
/// the used index.
pub const MAX_WRITES_PER_CHAIN: u64 = 2 * MAX_CHAIN_SEGMENTS as u64 + 2;

/// Most guest-memory reads of one notification: every chain's, and the
/// available ring's flags for the used-buffer notification.
pub const MAX_READS_PER_NOTIFY: u64 = MAX_CHAINS_PER_NOTIFY * MAX_READS_PER_CHAIN + 1;

/// Most guest-memory writes of one notification.
pub const MAX_WRITES_PER_NOTIFY: u64 = MAX_CHAINS_PER_NOTIFY * MAX_WRITES_PER_CHAIN;

/// Most host calls one guest mapping costs in a request: its
/// `IOAS_COPY`, the `IOAS_MAP` it falls back to, the unmap of a run it
/// replaces, and as many again to roll back a plan the host refused.
pub const HOST_CALLS_PER_MAPPING: u64 = 6;

/// Most host calls moving one passthrough endpoint costs: a new host
/// space (`IOAS_ALLOC`, its IOVA ranges), the attach or replace, the
/// detach and destroys of what it left, and the roll-back of each.
pub const HOST_CALLS_PER_ENDPOINT: u64 = 16;

/// Most host calls of one request of a device with `endpoints`
/// passthrough endpoints: an ATTACH that makes a domain's host space
/// fills it with every mapping of the domain (at most
/// [`MAX_MAPPINGS_PER_DOMAIN`]) and moves one endpoint; a MAP adds one
/// mapping; an UNMAP removes at most the domain's mappings; a `bypass`
/// config write moves every endpoint.
pub const fn max_host_calls_per_request(endpoints: u64) -> u64 {
    HOST_CALLS_PER_MAPPING * MAX_MAPPINGS_PER_DOMAIN as u64 + HOST_CALLS_PER_ENDPOINT * endpoints
}

/// Most host calls of one notification.
pub const fn max_host_calls_per_notify(endpoints: u64) -> u64 {
    MAX_CHAINS_PER_NOTIFY * max_host_calls_per_request(endpoints)
}

/// Most guest-memory reads of one translation of an emulated endpoint:
/// none for the mapping (the device's own tables); a refused access
/// writes its fault into the next posted event buffer (one chain) and
/// checks whether to notify.
pub const MAX_READS_PER_TRANSLATION: u64 = MAX_READS_PER_CHAIN + 1;

/// Most guest-memory writes of one translation: the fault record into one
/// event buffer's chain.
pub const MAX_WRITES_PER_TRANSLATION: u64 = MAX_WRITES_PER_CHAIN;
