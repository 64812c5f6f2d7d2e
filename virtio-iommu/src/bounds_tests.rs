//! Bounded work per guest action (issue 16): the guest-memory reads and
//! writes and the host calls one notification, config write or DMA
//! translation can cause stay within the named bounds of
//! [`crate::limits`], for queues full of valid requests, chains at and past
//! the segment limit (indirect tables included), available indexes
//! anywhere (wrap-around storms) and huge unmap ranges.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::HostOp;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::mem::GuestMemoryExt;
use nesting_core::ram::{GuestRam, RamIoas};
use nesting_core::testing::CountingMemory;
use nesting_core::types::{Access, Gpa};
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use crate::config::DeviceOptions;
use crate::device::{MAX_QUEUE_SIZE, VirtioIommu};
use crate::driver::SplitRing;
use crate::limits::{
    HOST_CALLS_PER_ENDPOINT, HOST_CALLS_PER_MAPPING, MAX_CHAINS_PER_NOTIFY, MAX_READS_PER_CHAIN,
    MAX_READS_PER_NOTIFY, MAX_READS_PER_TRANSLATION, MAX_WRITES_PER_CHAIN, MAX_WRITES_PER_NOTIFY,
    MAX_WRITES_PER_TRANSLATION, max_host_calls_per_notify,
};
use crate::mock::{config, mock_memory};
use crate::protocol::{
    AttachBody, DetachBody, EVENT_QUEUE, MapBody, ProbeBody, REQUEST_QUEUE, ReqTail, UnmapBody,
};
use crate::request::{Request, encode};

type Counted = CountingMemory<GuestMemoryMmap>;

/// A device on counting memory, features negotiated, both queues of
/// [`MAX_QUEUE_SIZE`] entries; with `passthrough`, endpoint 8 is a
/// passthrough device on a simulated host.
struct Bench {
    mem: Arc<GuestMemoryMmap>,
    counted: Arc<Counted>,
    dev: VirtioIommu<Counted>,
    req: SplitRing,
    evt: SplitRing,
    sim: Arc<SimIommufd>,
}

const REQ_BUFS: u64 = 0x10_0000;
const RESP_BUFS: u64 = 0x40_0000;
const RW: u32 = 3;

fn bench(passthrough: bool) -> Bench {
    let mem = mock_memory();
    let counted = Arc::new(CountingMemory::new((*mem).clone()));
    let dev = VirtioIommu::new(&config(&[]), DeviceOptions::default()).unwrap();
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    if passthrough {
        let host: SharedHost = sim.clone();
        let ram = GuestRam::from_guest_memory(&*mem).unwrap();
        let ram = Arc::new(RamIoas::new(&host, ram).unwrap());
        let mut bound = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
        let view = crate::shadow_tests::read_view(&sim, &mut bound);
        dev.set_passthrough_host(host, ram).unwrap();
        dev.add_passthrough(8, bound, &view)
            .map_err(|(e, _)| e)
            .unwrap();
    }
    dev.set_memory(counted.clone());
    dev.ack_features(dev.device_features()).unwrap();
    let (req, next) = SplitRing::at(0x1_0000, MAX_QUEUE_SIZE);
    let (evt, _) = SplitRing::at(next, MAX_QUEUE_SIZE);
    for (q, r) in [(REQUEST_QUEUE, &req), (EVENT_QUEUE, &evt)] {
        dev.setup_queue(q, r.size, r.desc, r.avail, r.used).unwrap();
    }
    Bench {
        mem,
        counted,
        dev,
        req,
        evt,
        sim,
    }
}

fn host_calls(sim: &SimIommufd) -> u64 {
    HostOp::ALL.iter().map(|op| sim.calls(*op)).sum()
}

fn attach(domain: u32, endpoint: u32) -> Request {
    Request::Attach(AttachBody {
        domain: domain.into(),
        endpoint: endpoint.into(),
        flags: 0.into(),
        reserved: [0; 4],
    })
}

fn map(domain: u32, first: u64, len: u64, phys: u64) -> Request {
    Request::Map(MapBody {
        domain: domain.into(),
        virt_start: first.into(),
        virt_end: (first + len - 1).into(),
        phys_start: phys.into(),
        flags: RW.into(),
    })
}

fn unmap(domain: u32, first: u64, last: u64) -> Request {
    Request::Unmap(UnmapBody {
        domain: domain.into(),
        virt_start: first.into(),
        virt_end: last.into(),
        reserved: [0; 4],
    })
}

impl Bench {
    /// Publishes `reqs` as Linux lays them out (each in its own buffers),
    /// without notifying.
    fn publish(&mut self, reqs: &[Request]) {
        for (i, r) in reqs.iter().enumerate() {
            let bytes = encode(r);
            let rb = REQ_BUFS + 0x100 * i as u64;
            let wb = RESP_BUFS + 0x400 * i as u64;
            let wlen = match r {
                Request::Probe(_) => 0x200 + ReqTail::SIZE as u32,
                _ => ReqTail::SIZE as u32,
            };
            self.mem.write_bytes_at(Gpa(rb), &bytes).unwrap();
            self.req
                .publish(&*self.mem, &[(rb, bytes.len() as u32)], &[(wb, wlen)])
                .unwrap();
        }
    }

    /// Notifies `q` through the counting memory; returns (reads, writes,
    /// host calls, chains used).
    fn notify(&mut self, q: u16) -> (u64, u64, u64, u16) {
        let used = self.dev.used_count(q).unwrap();
        self.counted.reset();
        self.sim.reset_counters();
        let _ = self.dev.notify(q);
        let n = self.dev.used_count(q).unwrap().wrapping_sub(used);
        (
            self.counted.reads(),
            self.counted.writes(),
            host_calls(&self.sim),
            n,
        )
    }

    fn drain_used(&mut self) {
        while self.req.pop_used(&*self.mem).unwrap().is_some() {}
    }
}

/// Every kind of valid request, a ring's worth at once: the reads and
/// writes of the notification are within a chain's bound each.
#[test]
fn notify_of_a_full_ring_of_valid_requests_is_bounded() {
    let mut b = bench(false);
    let mut reqs = vec![attach(1, 1)];
    for i in 0..250u64 {
        reqs.push(match i % 5 {
            0 | 1 => map(1, i << 12, 0x1000, 0x80_0000 + (i << 12)),
            2 => Request::Probe(ProbeBody {
                endpoint: 1.into(),
                reserved: [0; 64],
            }),
            3 => unmap(1, 0, u64::MAX),
            _ => attach(1 + (i as u32 % 3), 1 + (i as u32 % 7)),
        });
    }
    reqs.push(Request::Detach(DetachBody {
        domain: 1.into(),
        endpoint: 1.into(),
        reserved: [0; 8],
    }));
    assert!(reqs.len() < usize::from(MAX_QUEUE_SIZE));
    b.publish(&reqs);
    let (reads, writes, calls, used) = b.notify(REQUEST_QUEUE);
    assert_eq!(usize::from(used), reqs.len());
    assert!(
        reads <= u64::from(used) * MAX_READS_PER_CHAIN + 1,
        "{reads}"
    );
    assert!(reads <= MAX_READS_PER_NOTIFY);
    assert!(writes <= u64::from(used) * MAX_WRITES_PER_CHAIN, "{writes}");
    assert!(writes <= MAX_WRITES_PER_NOTIFY);
    assert_eq!(calls, 0);
}

/// Chains at and past the segment limit, direct and through an indirect
/// table of a whole ring's worth of descriptors: each costs at most a
/// chain's reads, and one past the limit is returned unused.
#[test]
fn notify_of_over_long_chains_reads_at_most_a_chain_each() {
    let mut b = bench(false);
    let seg = crate::queue::MAX_CHAIN_SEGMENTS;
    // Direct chains of MAX_CHAIN_SEGMENTS + 1 one-byte buffers.
    let bufs: Vec<(u64, u32)> = (0..=seg as u64).map(|i| (REQ_BUFS + i, 1)).collect();
    for _ in 0..4 {
        b.req.publish(&*b.mem, &bufs, &[]).unwrap();
    }
    // An indirect chain: its head points at a table of 256 descriptors,
    // each chained to the next.
    let table = 0x30_0000;
    for i in 0..256u64 {
        let at = table + 16 * i;
        b.mem.write_u64_le(Gpa(at), REQ_BUFS).unwrap();
        b.mem.write_u32_le(Gpa(at + 8), 16).unwrap();
        b.mem
            .write_u16_le(Gpa(at + 12), if i < 255 { 1 } else { 0 })
            .unwrap();
        b.mem.write_u16_le(Gpa(at + 14), (i + 1) as u16).unwrap();
    }
    let head = b.req.publish(&*b.mem, &[(table, 16 * 256)], &[]).unwrap();
    // VIRTQ_DESC_F_INDIRECT on the head.
    let flags_at = b.req.desc + 16 * u64::from(head) + 12;
    b.mem.write_u16_le(Gpa(flags_at), 4).unwrap();
    let (reads, writes, _, used) = b.notify(REQUEST_QUEUE);
    assert_eq!(used, 5);
    assert!(
        reads <= u64::from(used) * MAX_READS_PER_CHAIN + 1,
        "{reads}"
    );
    // Returned unused: a used element and index each, nothing else.
    assert_eq!(writes, 2 * u64::from(used));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Wrap-around storm: the driver writes any available index (more
    /// than a ring ahead, behind, around 2^16) and notifies, again and
    /// again, over a ring of garbage descriptors: each notification is
    /// bounded, and none panics.
    #[test]
    fn notify_with_any_available_index_is_bounded(
        idxs in prop::collection::vec(any::<u16>(), 1..24),
        garbage in prop::collection::vec(any::<u64>(), 512),
    ) {
        let mut b = bench(false);
        for (i, g) in garbage.iter().enumerate() {
            b.mem.write_u64_le(Gpa(b.req.desc + 8 * i as u64), *g).unwrap();
        }
        for idx in idxs {
            b.mem.write_u16_le(Gpa(b.req.avail + 2), idx).unwrap();
            let (reads, writes, _, used) = b.notify(REQUEST_QUEUE);
            prop_assert!(u64::from(used) <= MAX_CHAINS_PER_NOTIFY);
            prop_assert!(reads <= MAX_READS_PER_NOTIFY, "{reads}");
            prop_assert!(writes <= MAX_WRITES_PER_NOTIFY);
        }
    }
}

/// Faults of an emulated endpoint: each translation writes at most one
/// event buffer's worth, and a ring of event buffers posted at once takes
/// the backlog within the notification's bounds.
#[test]
fn faults_and_event_buffers_are_bounded() {
    let mut b = bench(false);
    b.publish(&[attach(1, 1)]);
    b.notify(REQUEST_QUEUE);
    for i in 0..3 {
        b.evt
            .publish(&*b.mem, &[], &[(0x50_0000 + 0x40 * i, 0x40)])
            .unwrap();
    }
    b.notify(EVENT_QUEUE);
    for i in 0..200u64 {
        b.counted.reset();
        let _ = b.dev.translate(1, i << 12, Access::WRITE);
        assert!(b.counted.reads() <= MAX_READS_PER_TRANSLATION);
        assert!(b.counted.writes() <= MAX_WRITES_PER_TRANSLATION);
    }
    for i in 0..u64::from(MAX_QUEUE_SIZE) - 4 {
        b.evt
            .publish(&*b.mem, &[], &[(0x50_0000 + 0x40 * i, 0x40)])
            .unwrap();
    }
    let (reads, writes, _, used) = b.notify(EVENT_QUEUE);
    assert!(used > 0 && u64::from(used) <= MAX_CHAINS_PER_NOTIFY);
    assert!(reads <= MAX_READS_PER_NOTIFY, "{reads}");
    assert!(writes <= MAX_WRITES_PER_NOTIFY);
}

/// A passthrough endpoint moved back and forth between a domain with 64
/// mappings (its host space made and filled each time) and another,
/// and unmaps of the whole IOVA space, a ring's worth in one
/// notification: the host calls stay within what the mappings and moves
/// involved allow, and within the notification's bound.
#[test]
fn notify_of_passthrough_requests_is_bounded_by_mappings_and_moves() {
    let mut b = bench(true);
    let mut reqs = vec![attach(1, 9)];
    for i in 0..64u64 {
        reqs.push(map(1, i << 13, 0x1000, 0x80_0000 + (i << 12)));
    }
    b.publish(&reqs);
    b.notify(REQUEST_QUEUE);
    b.drain_used();
    let mut reqs = Vec::new();
    for i in 0..120u32 {
        reqs.push(attach(1 + i % 2, 8));
        if i % 10 == 9 {
            reqs.push(unmap(2, 0, u64::MAX));
        }
    }
    b.publish(&reqs);
    let (reads, _, calls, used) = b.notify(REQUEST_QUEUE);
    assert_eq!(usize::from(used), reqs.len());
    assert!(reads <= u64::from(used) * MAX_READS_PER_CHAIN + 1);
    let per_request = HOST_CALLS_PER_MAPPING * 64 + HOST_CALLS_PER_ENDPOINT;
    assert!(calls <= u64::from(used) * per_request, "{calls}");
    assert!(calls <= max_host_calls_per_notify(1));
    // Every move into domain 1 refilled its space: the work is real.
    assert!(calls >= 60 * 64, "{calls}");
}

/// A driver flooding what the device logs (over-long chains, bad
/// `bypass` writes, accesses of unmanaged endpoints) gets at most a burst
/// of lines per call site per interval, not a line per action.
#[test]
fn guest_triggered_log_lines_are_rate_limited() {
    use nesting_core::ratelimit::{LOG_BURST, LOG_INTERVAL};
    let counter = nesting_core::testing::LogCounter::install();
    let mut b = bench(false);
    let seg = crate::queue::MAX_CHAIN_SEGMENTS;
    let bufs: Vec<(u64, u32)> = (0..=seg as u64).map(|i| (REQ_BUFS + i, 1)).collect();
    let t0 = std::time::Instant::now();
    let before = counter.lines();
    for i in 0..2000u32 {
        b.req.publish(&*b.mem, &bufs, &[]).unwrap();
        b.notify(REQUEST_QUEUE);
        b.drain_used();
        b.dev.write_config(0x24, &[7]);
        let _ = b.dev.translate(0x1000 + i, 0, Access::READ);
    }
    let lines = counter.lines() - before;
    let windows = t0.elapsed().as_secs() / LOG_INTERVAL.as_secs() + 1;
    assert!(lines >= 3, "{lines}");
    assert!(lines <= 4 * u64::from(LOG_BURST) * windows, "{lines} lines");
}
