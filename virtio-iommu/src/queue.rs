//! The request and event virtqueues over virtio-queue's split rings
//! (virtio 1.3 2.7, 5.13.2).
//!
//! A request is one descriptor chain: the device-readable part holds the
//! head and body, the device-writable part the tail (and, for PROBE, the
//! properties before it). The device reads at most [`MAX_READABLE`] bytes
//! and writes only the tail (and properties), so a chain's size never
//! drives an allocation; a chain of more than [`MAX_CHAIN_SEGMENTS`]
//! buffers is returned unused. Every drain is bounded by the ring size.

use nesting_core::iotlb::Iotlb;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;
use zerocopy::IntoBytes;

use crate::event::EventLog;
use crate::protocol::{FaultRecord, Features, ReqTail, RequestType, Status};
use crate::request::{Decoded, MAX_READABLE, Request, decode};
use crate::state::State;

/// A virtqueue could not be used at all (the device then needs a reset;
/// individual bad chains are answered, not errors).
#[derive(Debug, Error)]
pub enum QueueError {
    /// virtio-queue refused the ring (not ready, bad addresses, or an
    /// available index more than a ring ahead).
    #[error("virtqueue {queue} is unusable")]
    Ring {
        /// The queue index.
        queue: u16,
        /// What virtio-queue reported.
        #[source]
        source: virtio_queue::Error,
    },
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    len: u32,
}

/// A chain split into its readable and writable buffers.
#[derive(Debug, Default)]
struct Chain {
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    writable_len: u64,
}

/// Reads up to `buf.len()` bytes from the readable buffers; returns how
/// many were read and whether guest memory refused the rest.
fn read_prefix<M: GuestMemory>(mem: &M, segs: &[Seg], buf: &mut [u8]) -> (usize, bool) {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        if mem
            .read_bytes_at(Gpa(s.addr), &mut buf[done..done + n])
            .is_err()
        {
            return (done, true);
        }
        done += n;
    }
    (done, false)
}

/// Writes `data` at byte `offset` of the writable buffers.
fn write_at<M: GuestMemory>(mem: &M, segs: &[Seg], offset: u64, data: &[u8]) -> Option<()> {
    let mut skip = offset;
    let mut data = data;
    for s in segs {
        if data.is_empty() {
            break;
        }
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len());
        let at = s.addr.checked_add(skip)?;
        mem.write_bytes_at(Gpa(at), &data[..n]).ok()?;
        data = &data[n..];
        skip = 0;
    }
    data.is_empty().then_some(())
}

/// Most buffers the device takes in one chain. Linux sends a request as
/// two (the readable request, the writable tail or PROBE properties plus
/// tail) and posts one-buffer event buffers; a driver splitting every
/// buffer at 4 KiB pages needs at most 2 readable (MAX_READABLE bytes) and
/// 18 writable (MAX_PROBE_SIZE plus the tail) ones. Past this the chain
/// is returned unused (used length 0): VIRTIO_F_INDIRECT_DESC is not
/// offered but virtio-queue follows indirect tables, whose length the
/// guest picks, so without the cap a chain's walk and the segment vectors
/// would grow with guest input.
pub const MAX_CHAIN_SEGMENTS: usize = 32;

/// Collects a chain's buffers; `None` past [`MAX_CHAIN_SEGMENTS`].
/// virtio-queue also bounds the walk (the chain's TTL is the ring size).
fn collect<M>(chain: virtio_queue::DescriptorChain<M>) -> Option<Chain>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut c = Chain::default();
    for (i, d) in chain.enumerate() {
        if i == MAX_CHAIN_SEGMENTS {
            nesting_core::guest_log!(
                Warn,
                "virtio-iommu: descriptor chain over {MAX_CHAIN_SEGMENTS} buffers returned unused"
            );
            return None;
        }
        let seg = Seg {
            addr: d.addr().0,
            len: d.len(),
        };
        if d.is_write_only() {
            c.writable_len = c.writable_len.saturating_add(u64::from(d.len()));
            c.writable.push(seg);
        } else {
            c.readable.push(seg);
        }
    }
    Some(c)
}

/// Handles one request chain; returns the used length.
fn handle<M: GuestMemory>(state: &mut State, mem: &M, c: &Chain) -> u32 {
    let mut buf = [0u8; MAX_READABLE];
    let (n, unreadable) = read_prefix(mem, &c.readable, &mut buf);
    let decoded = decode(&buf[..n]);
    let probe_size = u64::from(state.cfg.probe_size);
    let ty = match decoded {
        // 5.13.6: "When the device fails to parse a request, for instance
        // if a request is too small for its type and the device cannot find
        // the tail, ... it returns the buffers without writing to them."
        Decoded::NoHead => return 0,
        // 5.13.6.2: "If a request type is not recognized, the device SHOULD
        // NOT write the buffer and SHOULD set the used length to zero."
        Decoded::UnknownType(_) => return 0,
        Decoded::Short(t) => t,
        Decoded::Request(r) => request_type(&r),
    };
    // 5.13.6.7.2: "If the device does not offer the VIRTIO_IOMMU_F_PROBE
    // feature, and if the driver sends a VIRTIO_IOMMU_T_PROBE request, then
    // the device SHOULD NOT write the buffer and SHOULD set the used length
    // to zero."
    if ty == RequestType::Probe && !state.features.contains(Features::PROBE) {
        return 0;
    }
    let tail_at = match ty {
        RequestType::Probe => probe_size,
        _ => 0,
    };
    let tail_size = ReqTail::SIZE as u64;
    if c.writable_len < tail_at + tail_size {
        // 5.13.6.7.2: "If the properties list is smaller than probe_size,
        // the device SHOULD NOT write any property. It SHOULD reject the
        // request and set status to VIRTIO_IOMMU_S_INVAL." The driver finds
        // the tail at the end of its buffer.
        if ty == RequestType::Probe && c.writable_len >= tail_size {
            let at = c.writable_len - tail_size;
            return finish(mem, c, at, &[], Status::Inval);
        }
        return 0;
    }
    if unreadable {
        // Part of the readable buffers is not guest memory: a transport
        // error the driver can still be told about.
        return finish(mem, c, tail_at, &[], Status::IoErr);
    }
    let mut props = vec![
        0u8;
        if ty == RequestType::Probe {
            probe_size as usize
        } else {
            0
        }
    ];
    let status = match decoded {
        Decoded::Request(r) => state.execute(&r, &mut props),
        // Malformed: the body is shorter than its type's.
        _ => Status::Inval,
    };
    if status != Status::Ok {
        props.iter_mut().for_each(|b| *b = 0);
    }
    finish(mem, c, tail_at, &props, status)
}

fn request_type(r: &Request) -> RequestType {
    match r {
        Request::Attach(_) => RequestType::Attach,
        Request::Detach(_) => RequestType::Detach,
        Request::Map(_) => RequestType::Map,
        Request::Unmap(_) => RequestType::Unmap,
        Request::Probe(_) => RequestType::Probe,
    }
}

/// Writes properties (at 0) and the tail (at `tail_at`); returns the used
/// length, 0 if guest memory refused the write.
fn finish<M: GuestMemory>(mem: &M, c: &Chain, tail_at: u64, props: &[u8], status: Status) -> u32 {
    // 5.13.6.2: "SHOULD set field reserved of struct virtio_iommu_req_tail
    // to zero".
    let tail = ReqTail {
        status: status.into(),
        reserved: [0; 3],
    };
    let ok = write_at(mem, &c.writable, 0, props).is_some()
        && write_at(mem, &c.writable, tail_at, tail.as_bytes()).is_some();
    match ok {
        true => u32::try_from(tail_at + ReqTail::SIZE as u64).unwrap_or(0),
        false => 0,
    }
}

/// Drains the request queue: every available chain is answered and
/// returned. Returns how many chains were used.
pub(crate) fn drain_requests<M: GuestMemory>(
    state: &mut State,
    q: &mut Queue,
    mem: &M,
    iotlb: &Iotlb,
) -> Result<u16, QueueError> {
    let mut used = 0u16;
    // Bounded: at most one ring's worth per notification (virtio-queue
    // also refuses an available index more than a ring ahead).
    for _ in 0..q.size() {
        let chain = {
            let mut iter = q.iter(mem).map_err(|source| QueueError::Ring {
                queue: crate::protocol::REQUEST_QUEUE,
                source,
            })?;
            iter.next()
        };
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        let len = match collect(chain) {
            Some(c) => handle(state, mem, &c),
            None => 0,
        };
        // Cached translations the request removed are gone before the
        // driver can see it complete.
        for inv in state.inv.drain(..) {
            iotlb.invalidate(inv);
        }
        q.add_used(mem, head, len)
            .map_err(|source| QueueError::Ring {
                queue: crate::protocol::REQUEST_QUEUE,
                source,
            })?;
        used += 1;
    }
    Ok(used)
}

/// Writes waiting faults into posted event buffers. Returns how many
/// buffers were used.
pub(crate) fn deliver_events<M: GuestMemory>(
    events: &mut EventLog,
    q: &mut Queue,
    mem: &M,
) -> Result<u16, QueueError> {
    let mut used = 0u16;
    let err = |source| QueueError::Ring {
        queue: crate::protocol::EVENT_QUEUE,
        source,
    };
    for _ in 0..q.size() {
        let Some(fault) = events.front().copied() else {
            break;
        };
        let chain = q.iter(mem).map_err(err)?.next();
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        // An over-long chain goes back unused; the fault waits for the
        // next buffer.
        let Some(c) = collect(chain) else {
            q.add_used(mem, head, 0).map_err(err)?;
            used += 1;
            continue;
        };
        // 5.13.6.9.2: "If a buffer is too small to contain the fault
        // report, the device SHOULD NOT use multiple buffers to describe
        // it." There is no older format to fall back to: the buffer goes
        // back empty and the fault is dropped.
        let len = if c.writable_len < FaultRecord::SIZE as u64 {
            events.drop_front();
            0
        } else if write_at(mem, &c.writable, 0, &fault.bytes()).is_some() {
            events.delivered_front();
            FaultRecord::SIZE as u32
        } else {
            events.drop_front();
            0
        };
        q.add_used(mem, head, len).map_err(err)?;
        used += 1;
    }
    Ok(used)
}
