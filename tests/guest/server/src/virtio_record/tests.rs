//! The virtio-iommu recording driven the way Linux's virtio-iommu driver
//! drives the device (feature negotiation, config reads, two queues,
//! ATTACH and MAP requests, event buffers posted without a notification),
//! endpoint DMA through it, and the recorded text replayed.

use std::sync::{Arc, Mutex};

use nesting_core::iotlb::Translate;
use nesting_core::types::{Access, EndpointId, Iova, RequesterId};
use virtio_iommu::VirtioIommuConfig;
use virtio_iommu::driver::SplitRing;
use virtio_iommu::{DeviceOptions, VirtioIommu};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::record::Recorder;

const EP: u32 = 0x28;
const REQ: u64 = 0x4_0000;
const RESP: u64 = 0x4_1000;
const EVT: u64 = 0x5_0000;

struct Rig {
    dev: RecordedVirtio,
    mem: Arc<GuestMemoryMmap>,
    req: SplitRing,
    evt: SplitRing,
    out: Arc<Mutex<Vec<u8>>>,
}

fn rig() -> Rig {
    let cfg = VirtioIommuConfig::default();
    let model = VirtioIommu::new(&cfg, DeviceOptions::default()).unwrap();
    let (rec, out) = Recorder::in_memory(&cfg);
    let dev = RecordedVirtio::new(model, Some(Arc::new(Mutex::new(rec))));
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    dev.set_memory(Arc::clone(&mem));
    // virtio 3.1.1: features, then the device configuration, then queues.
    assert!(VirtioDevice::ack_features(&dev, dev.device_features()));
    let mut b = [0u8; 8];
    VirtioDevice::read_config(&dev, 0, &mut b);
    assert_ne!(u64::from_le_bytes(b), 0, "page_size_mask");
    let (req, end) = SplitRing::at(0x1_0000, 16);
    let (evt, _) = SplitRing::at(end, 16);
    for (q, r) in [(0u16, &req), (1, &evt)] {
        assert!(VirtioDevice::setup_queue(
            &dev, q, r.size, r.desc, r.avail, r.used
        ));
    }
    Rig {
        dev,
        mem,
        req,
        evt,
        out,
    }
}

impl Rig {
    fn text(&self) -> String {
        String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
    }

    /// One request (`body` after the 4-byte head of `kind`) and its
    /// 4-byte tail, notified; returns the status byte.
    fn request(&mut self, kind: u8, body: &[u8]) -> u8 {
        let mut req = vec![kind, 0, 0, 0];
        req.extend_from_slice(body);
        self.mem.write_slice(&req, GuestAddress(REQ)).unwrap();
        self.mem
            .write_slice(&[0xff; 4], GuestAddress(RESP))
            .unwrap();
        self.req
            .publish(&*self.mem, &[(REQ, req.len() as u32)], &[(RESP, 4)])
            .unwrap();
        VirtioDevice::notify(&self.dev, 0);
        self.mem.read_obj(GuestAddress(RESP)).unwrap()
    }

    fn dma(&self, iova: u64, access: Access) -> Option<u64> {
        Translate::translate(
            &self.dev,
            RequesterId::Endpoint(EndpointId(EP)),
            None,
            Iova(iova),
            access,
        )
        .ok()
        .map(|t| t.gpa_of(Iova(iova)).raw())
    }
}

fn replay(text: &str) -> usize {
    let mut out = Vec::new();
    let s = viommu::replay::run_script(text, &mut out)
        .unwrap_or_else(|e| panic!("script error {e}\n{text}"));
    let out = String::from_utf8_lossy(&out);
    assert_eq!(s.failed, 0, "{out}\n--- script ---\n{text}");
    s.passed
}

/// ATTACH (5.13.6.3) and MAP (5.13.6.5) body bytes.
fn attach(domain: u32) -> Vec<u8> {
    let mut b = domain.to_le_bytes().to_vec();
    b.extend_from_slice(&EP.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b
}

fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut b = domain.to_le_bytes().to_vec();
    for v in [start, end, phys] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&flags.to_le_bytes());
    b
}

#[test]
fn virtio_requests_dma_and_fault_event_replay_with_checks() {
    let mut r = rig();
    assert_eq!(r.request(1, &attach(1)), 0, "ATTACH S_OK");
    assert_eq!(
        r.request(3, &map(1, 0x4000_0000, 0x4000_1fff, 0x8_0000, 1)),
        0
    );
    // Linux posts its event buffers without a notification.
    for i in 0..2 {
        r.evt
            .publish(&*r.mem, &[], &[(EVT + 0x20 * i, 0x18)])
            .unwrap();
    }
    assert_eq!(r.dma(0x4000_1010, Access::READ), Some(0x8_1010));
    assert_eq!(r.dma(0x4000_0000, Access::WRITE), None, "read-only mapping");
    let event: u64 = r.mem.read_obj(GuestAddress(EVT + 16)).unwrap();
    assert_eq!(event, 0x4000_0000, "fault address in the event");
    let text = r.text();
    assert!(text.contains("\nmodel virtio-iommu "), "{text}");
    assert!(text.contains("\nack-features 0x"), "{text}");
    assert!(
        text.contains("\nconfig-read64 0x0 == 0xfffffffffffff000\n"),
        "{text}"
    );
    assert!(
        text.contains("\nsubmit 0 out=0x40000:0x24 in=0x41000:0x4\n"),
        "{text}"
    );
    assert!(text.contains("\nread32 0x41000 == 0x0\n"), "{text}");
    // The buffer the fault used is published just before the translate
    // that took it, then the event is checked.
    let fault = "submit 1 in=0x50000:0x18\ntranslate 0x28 0x40000000 w => fault\nused 1 == 1\n";
    assert!(text.contains(fault), "{text}");
    assert!(text.contains("\nread64 0x50010 == 0x40000000\n"), "{text}");
    assert!(
        !text.contains("0x50020"),
        "the unused buffer is not recorded: {text}"
    );
    let checks = replay(&text);
    assert!(checks >= 12, "{checks} checks\n{text}");
}

/// A request whose bytes the replay already holds (the same ATTACH again
/// from the same buffer) is a `submit` without `write-bytes`.
#[test]
fn virtio_repeated_request_emits_no_write_bytes() {
    let mut r = rig();
    assert_eq!(r.request(1, &attach(1)), 0);
    let before = r.text().len();
    assert_eq!(r.request(1, &attach(1)), 0);
    let again = r.text()[before..].to_string();
    assert!(!again.contains("write-bytes"), "{again}");
    assert!(again.starts_with("submit 0 "), "{again}");
    replay(&r.text());
}

/// A device reset after the driver ran starts boot 2's script, which
/// replays on its own.
#[test]
fn virtio_reset_after_use_starts_new_script() {
    let mut r = rig();
    assert_eq!(r.request(1, &attach(1)), 0);
    VirtioDevice::reset(&r.dev);
    assert!(VirtioDevice::ack_features(&r.dev, r.dev.device_features()));
    let text = r.text();
    let at = text.find("# Recorded").unwrap();
    let second = text[at + 1..]
        .find("# Recorded")
        .map(|i| at + 1 + i)
        .unwrap();
    assert!(text[second..].contains("boot 2 of the run"), "{text}");
    replay(&text[..second]);
    replay(&text[second..]);
}
