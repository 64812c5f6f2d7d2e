//! A driver-side mock (feature `test-utils`): sets the device up as the
//! Linux driver does (features, both queues, event buffers posted) and
//! sends requests laid out as Linux lays them out (one chain: the request
//! device-readable, the tail, or properties and tail, device-writable).

use std::sync::Arc;

use nesting_core::mem::GuestMemoryExt;
use nesting_core::options::ModelOptions;
use nesting_core::types::Gpa;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use zerocopy::FromBytes;

use crate::config::DeviceOptions;
use crate::device::VirtioIommu;
use crate::driver::SplitRing;
use crate::options::VirtioIommuConfig;
use crate::protocol::{
    AttachBody, DetachBody, EVENT_QUEUE, FaultRecord, MapBody, ProbeBody, REQUEST_QUEUE, ReqTail,
    Status, UnmapBody,
};
use crate::request::{Request, encode};

/// Guest RAM the mock uses: rings and buffers below 1 MiB, the rest free
/// for mapping targets.
pub const MOCK_RAM: u64 = 16 << 20;
/// Ring size of both queues.
pub const MOCK_QUEUE_SIZE: u16 = 64;
/// Event buffers the mock posts (Linux fills the whole queue).
pub const MOCK_EVENT_BUFFERS: u16 = 16;

/// Where the mock writes each request's device-readable part.
pub const MOCK_REQUEST_BUFFER: u64 = 0x8_0000;
/// Where the mock puts each request's device-writable part (the tail, or
/// PROBE's properties then the tail).
pub const MOCK_RESPONSE_BUFFER: u64 = 0x9_0000;
const REQ_BUF: u64 = MOCK_REQUEST_BUFFER;
const RESP_BUF: u64 = MOCK_RESPONSE_BUFFER;
const EVT_BUF: u64 = 0xa_0000;

/// The device model of `opts` (REPLAY.md model options).
pub fn config(opts: &[&str]) -> VirtioIommuConfig {
    VirtioIommuConfig::from_options(opts)
        .unwrap_or_else(|e| panic!("bad mock options {opts:?}: {e}"))
}

/// [`MOCK_RAM`] bytes of guest RAM from GPA 0.
pub fn mock_memory() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MOCK_RAM as usize)]).expect("ram"))
}

/// A guest driver and its memory.
pub struct MockDriver {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The device.
    pub dev: Arc<VirtioIommu<GuestMemoryMmap>>,
    /// The byte the device-writable part of a request holds before the
    /// device answers (0 by default): a test that looks for the answer
    /// while the request is in flight sets one no status has.
    pub response_fill: u8,
    req: SplitRing,
    evt: SplitRing,
}

impl MockDriver {
    /// A device of `opts` with the driver having negotiated every offered
    /// feature, set up both queues and posted event buffers.
    pub fn new(opts: &[&str]) -> MockDriver {
        let dev = VirtioIommu::new(&config(opts), DeviceOptions::default()).expect("device");
        Self::with_device(Arc::new(dev), true)
    }

    /// Drives `dev`; `negotiate` acknowledges every offered feature.
    pub fn with_device(dev: Arc<VirtioIommu<GuestMemoryMmap>>, negotiate: bool) -> MockDriver {
        Self::with_memory(dev, mock_memory(), negotiate)
    }

    /// Drives `dev` over `mem` (at least [`MOCK_RAM`] from GPA 0).
    pub fn with_memory(
        dev: Arc<VirtioIommu<GuestMemoryMmap>>,
        mem: Arc<GuestMemoryMmap>,
        negotiate: bool,
    ) -> MockDriver {
        dev.set_memory(mem.clone());
        if negotiate {
            dev.ack_features(dev.device_features()).expect("features");
        }
        let (req, next) = SplitRing::at(0x1_0000, MOCK_QUEUE_SIZE);
        let (evt, _) = SplitRing::at(next, MOCK_QUEUE_SIZE);
        for (q, r) in [(REQUEST_QUEUE, &req), (EVENT_QUEUE, &evt)] {
            dev.setup_queue(q, r.size, r.desc, r.avail, r.used)
                .expect("queue");
        }
        let mut d = MockDriver {
            mem,
            dev,
            response_fill: 0,
            req,
            evt,
        };
        d.post_event_buffers(MOCK_EVENT_BUFFERS);
        d
    }

    /// The request queue's ring (its used ring is where completions show).
    pub fn request_ring(&self) -> &SplitRing {
        &self.req
    }

    /// Posts `n` 24-byte event buffers and notifies the event queue.
    pub fn post_event_buffers(&mut self, n: u16) {
        for i in 0..n {
            let at = EVT_BUF + 0x20 * u64::from(i % MOCK_EVENT_BUFFERS);
            self.evt
                .publish(&*self.mem, &[], &[(at, FaultRecord::SIZE as u32)])
                .expect("event buffer");
        }
        self.dev.notify(EVENT_QUEUE).expect("event notify");
    }

    /// Publishes a raw request chain and notifies; the used element is
    /// consumed.
    pub fn mem_publish_raw(&mut self, out: &[(u64, u32)], inp: &[(u64, u32)]) -> u32 {
        self.req.publish(&*self.mem, out, inp).expect("publish");
        self.dev.notify(REQUEST_QUEUE).expect("notify");
        self.req
            .pop_used(&*self.mem)
            .expect("used")
            .map_or(0, |(_, len)| len)
    }

    /// Publishes one event buffer made of the given writable pieces.
    pub fn mem_publish_event(&mut self, inp: &[(u64, u32)]) {
        self.evt.publish(&*self.mem, &[], inp).expect("publish");
        self.dev.notify(EVENT_QUEUE).expect("event notify");
    }

    /// Fault records the device wrote since the last call.
    pub fn events(&mut self) -> Vec<FaultRecord> {
        let mut out = Vec::new();
        while let Some((id, len)) = self.evt.pop_used(&*self.mem).expect("used ring") {
            let desc = self.evt.desc + 16 * u64::from(id);
            let addr = self.mem.read_u64_le(Gpa(desc)).expect("desc");
            let mut b = [0u8; FaultRecord::SIZE];
            self.mem.read_bytes_at(Gpa(addr), &mut b).expect("event");
            if len as usize == FaultRecord::SIZE {
                out.push(FaultRecord::read_from_bytes(&b).expect("size"));
            }
        }
        out
    }

    /// Sends raw readable bytes with a device-writable part of
    /// `writable` bytes (filled with [`MockDriver::response_fill`] first);
    /// returns the used length and the writable bytes.
    pub fn send_raw(&mut self, readable: &[u8], writable: u32) -> (u32, Vec<u8>) {
        self.mem
            .write_bytes_at(Gpa(REQ_BUF), readable)
            .expect("request");
        let fill = vec![self.response_fill; writable as usize];
        self.mem
            .write_bytes_at(Gpa(RESP_BUF), &fill)
            .expect("response");
        let out: &[(u64, u32)] = match readable.is_empty() {
            true => &[],
            false => &[(REQ_BUF, readable.len() as u32)],
        };
        let inp: &[(u64, u32)] = match writable {
            0 => &[],
            w => &[(RESP_BUF, w)],
        };
        self.req.publish(&*self.mem, out, inp).expect("publish");
        self.dev.notify(REQUEST_QUEUE).expect("notify");
        let (_, len) = self
            .req
            .pop_used(&*self.mem)
            .expect("used")
            .expect("request used");
        let mut back = vec![0u8; writable as usize];
        self.mem
            .read_bytes_at(Gpa(RESP_BUF), &mut back)
            .expect("response");
        (len, back)
    }

    /// Publishes one request chain of the given buffers (`out`
    /// device-readable, `inp` device-writable; addresses and lengths as
    /// the caller lays them out), notifies, and returns the used length.
    pub fn send_chain(&mut self, out: &[(u64, u32)], inp: &[(u64, u32)]) -> u32 {
        self.req.publish(&*self.mem, out, inp).expect("publish");
        self.dev.notify(REQUEST_QUEUE).expect("notify");
        let (_, len) = self
            .req
            .pop_used(&*self.mem)
            .expect("used")
            .expect("request used");
        len
    }

    /// Sends a request as Linux does; returns the tail's status.
    pub fn send(&mut self, req: &Request) -> Status {
        let (len, back) = self.send_raw(&encode(req), ReqTail::SIZE as u32);
        if len == 0 {
            // What Linux does with a zero used length (viommu_sync_req).
            return Status::IoErr;
        }
        Status::from(back[0])
    }

    /// ATTACH `endpoint` to `domain` with `flags`.
    pub fn attach_flags(&mut self, domain: u32, endpoint: u32, flags: u32) -> Status {
        self.send(&Request::Attach(AttachBody {
            domain: domain.into(),
            endpoint: endpoint.into(),
            flags: flags.into(),
            reserved: [0; 4],
        }))
    }

    /// ATTACH `endpoint` to `domain`.
    pub fn attach(&mut self, domain: u32, endpoint: u32) -> Status {
        self.attach_flags(domain, endpoint, 0)
    }

    /// DETACH `endpoint` from `domain`.
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> Status {
        self.send(&Request::Detach(DetachBody {
            domain: domain.into(),
            endpoint: endpoint.into(),
            reserved: [0; 8],
        }))
    }

    /// MAP `[first, last]` of `domain` to `phys` with `flags`.
    pub fn map(&mut self, domain: u32, first: u64, last: u64, phys: u64, flags: u32) -> Status {
        self.send(&Request::Map(MapBody {
            domain: domain.into(),
            virt_start: first.into(),
            virt_end: last.into(),
            phys_start: phys.into(),
            flags: flags.into(),
        }))
    }

    /// UNMAP `[first, last]` of `domain`.
    pub fn unmap(&mut self, domain: u32, first: u64, last: u64) -> Status {
        self.send(&Request::Unmap(UnmapBody {
            domain: domain.into(),
            virt_start: first.into(),
            virt_end: last.into(),
            reserved: [0; 4],
        }))
    }

    /// PROBE `endpoint` with a `probe_size`-byte property buffer; returns
    /// the used length, the status and the properties.
    pub fn probe(&mut self, endpoint: u32, probe_size: u32) -> (u32, Status, Vec<u8>) {
        let req = encode(&Request::Probe(ProbeBody {
            endpoint: endpoint.into(),
            reserved: [0; 64],
        }));
        let (len, mut back) = self.send_raw(&req, probe_size + ReqTail::SIZE as u32);
        let status = back.get(probe_size as usize).copied().unwrap_or(0);
        back.truncate(probe_size as usize);
        (len, Status::from(status), back)
    }
}
