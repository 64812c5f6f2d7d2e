use super::common::status::*;
use super::*;
use std::sync::Mutex;

/// A device that records what the transport asks of it.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    refuse_features: bool,
    refuse_queues: bool,
    config: Mutex<[u8; 8]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Ack(u64),
    Setup(u16, u16, u64, u64, u64),
    Notify(u16),
    Reset,
    SystemReset,
}

const FEATURES: u64 = 1 << 32 | 1 << 2 | 1 << 4;

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn push(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u16 {
        23
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn max_queue_size(&self) -> u16 {
        256
    }
    fn device_features(&self) -> u64 {
        FEATURES
    }
    fn ack_features(&self, features: u64) -> bool {
        self.push(Call::Ack(features));
        !self.refuse_features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config.lock().unwrap();
        for (o, b) in (offset as usize..).zip(data.iter_mut()) {
            *b = c.get(o).copied().unwrap_or(0);
        }
    }
    fn write_config(&self, offset: u64, data: &[u8]) {
        let mut c = self.config.lock().unwrap();
        for (o, b) in (offset as usize..).zip(data) {
            if let Some(s) = c.get_mut(o) {
                *s = *b;
            }
        }
    }
    fn setup_queue(&self, index: u16, size: u16, desc: u64, driver: u64, device: u64) -> bool {
        self.push(Call::Setup(index, size, desc, driver, device));
        !self.refuse_queues
    }
    fn notify(&self, index: u16) {
        self.push(Call::Notify(index));
    }
    fn reset(&self) {
        self.push(Call::Reset);
    }
    fn system_reset(&self) {
        self.push(Call::SystemReset);
    }
}

struct Rig {
    dev: Arc<Recorder>,
    pci: VirtioPci<Recorder>,
    signalled: Arc<Mutex<Vec<u16>>>,
}

fn rig_with(dev: Recorder) -> Rig {
    let dev = Arc::new(dev);
    let signalled = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&signalled);
    let sink: VectorSink = Arc::new(move |v| {
        s.lock().unwrap().push(v);
        true
    });
    Rig {
        pci: VirtioPci::new(Arc::clone(&dev), 3, sink),
        dev,
        signalled,
    }
}

fn rig() -> Rig {
    rig_with(Recorder::default())
}

impl Rig {
    fn w(&mut self, off: u64, v: u64, width: usize) {
        self.pci.bar0_write(off, &v.to_le_bytes()[..width]).unwrap();
    }
    fn r(&mut self, off: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.pci.bar0_read(off, &mut b[..width]).unwrap();
        u64::from_le_bytes(b)
    }
    fn cfg(&mut self, off: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.pci.config_read(off, &mut b[..width]).unwrap();
        u64::from_le_bytes(b)
    }
    fn cfg_w(&mut self, off: u64, v: u64, width: usize) {
        self.pci
            .config_write(off, &v.to_le_bytes()[..width])
            .unwrap();
    }
    fn status(&mut self) -> u8 {
        self.r(0x14, 1) as u8
    }
    /// 3.1.1 steps 1-6 as Linux's virtio_pci_modern does them.
    fn negotiate(&mut self, features: u64) {
        self.w(0x14, 0, 1);
        self.w(0x14, u64::from(ACKNOWLEDGE), 1);
        self.w(0x14, u64::from(ACKNOWLEDGE | DRIVER), 1);
        self.w(0x08, 0, 4);
        self.w(0x0c, features & 0xffff_ffff, 4);
        self.w(0x08, 1, 4);
        self.w(0x0c, features >> 32, 4);
        self.w(0x14, u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK), 1);
    }
    fn setup_queue(&mut self, q: u16, size: u16, vector: u16, base: u64) {
        self.w(0x16, u64::from(q), 2);
        self.w(0x18, u64::from(size), 2);
        self.w(0x1a, u64::from(vector), 2);
        for (off, addr) in [(0x20, base), (0x28, base + 0x1000), (0x30, base + 0x2000)] {
            self.w(off, addr & 0xffff_ffff, 4);
            self.w(off + 4, addr >> 32, 4);
        }
        self.w(0x1c, 1, 2);
    }
}

/// The virtio capabilities found by walking the list from 0x34:
/// (cfg_type, bar, offset, length).
fn virtio_caps(r: &mut Rig) -> Vec<(u8, u8, u32, u32)> {
    let mut caps = Vec::new();
    let mut at = r.cfg(0x34, 1);
    for _ in 0..16 {
        if at == 0 {
            break;
        }
        let id = r.cfg(at, 1);
        if id == 0x09 {
            caps.push((
                r.cfg(at + 3, 1) as u8,
                r.cfg(at + 4, 1) as u8,
                r.cfg(at + 8, 4) as u32,
                r.cfg(at + 12, 4) as u32,
            ));
        }
        at = r.cfg(at + 1, 1);
    }
    caps
}

#[test]
fn config_space_ids_are_modern_virtio_iommu() {
    let mut r = rig();
    assert_eq!(r.cfg(0, 2), 0x1af4);
    assert_eq!(r.cfg(2, 2), 0x1040 + 23);
    assert!(r.cfg(8, 1) >= 1, "4.1.2.1: revision 1 or higher");
    assert!(r.cfg(0x2e, 2) >= 0x40);
}

#[test]
fn capability_list_names_every_structure() {
    let mut r = rig();
    let caps = virtio_caps(&mut r);
    assert_eq!(
        caps,
        vec![
            (1, 0, 0x0000, 0x40),
            (2, 0, 0x3000, 0x1000),
            (3, 0, 0x1000, 1),
            (4, 0, 0x2000, 0x1000),
            (5, 0, 0, 0),
        ]
    );
    assert_eq!(r.cfg(0x50 + 16, 4), 4, "notify_off_multiplier");
    assert_eq!(r.cfg(0x50 + 2, 1), 20, "notify cap_len");
    // The list ends with MSI-X (3 vectors: table size 2).
    assert_eq!(r.cfg(0x98, 1), 0x11);
    assert_eq!(r.cfg(0x9a, 2) & 0x7ff, 2);
}

#[test]
fn device_feature_select_returns_each_half() {
    let mut r = rig();
    assert_eq!(r.r(0x04, 4), FEATURES & 0xffff_ffff);
    r.w(0x00, 1, 4);
    assert_eq!(r.r(0x04, 4), FEATURES >> 32);
    r.w(0x00, 7, 4);
    assert_eq!(r.r(0x04, 4), 0);
}

#[test]
fn negotiation_acks_driver_features_and_keeps_features_ok() {
    let mut r = rig();
    r.negotiate(FEATURES);
    assert!(r.dev.calls().contains(&Call::Ack(FEATURES)));
    assert_eq!(r.status() & FEATURES_OK, FEATURES_OK);
    assert_eq!(r.pci.common().driver_features(), FEATURES);
}

#[test]
fn refused_features_leave_features_ok_clear() {
    let mut r = rig_with(Recorder {
        refuse_features: true,
        ..Recorder::default()
    });
    r.negotiate(FEATURES);
    assert_eq!(r.status() & FEATURES_OK, 0);
}

#[test]
fn queue_enable_passes_ring_addresses_to_device() {
    let mut r = rig();
    r.negotiate(FEATURES);
    r.setup_queue(1, 64, 2, 0x1_2345_0000);
    assert!(r.dev.calls().contains(&Call::Setup(
        1,
        64,
        0x1_2345_0000,
        0x1_2345_1000,
        0x1_2345_2000
    )));
    assert_eq!(r.r(0x1c, 2), 1);
    assert_eq!(r.r(0x1a, 2), 2);
    assert_eq!(r.r(0x1e, 2), 1, "queue_notify_off is the index");
}

#[test]
fn writes_to_an_enabled_queue_are_ignored() {
    let mut r = rig();
    r.negotiate(FEATURES);
    r.setup_queue(0, 64, 0, 0x10000);
    r.w(0x18, 16, 2);
    r.w(0x20, 0xdead_0000, 4);
    assert_eq!(r.r(0x18, 2), 64);
    assert_eq!(r.r(0x20, 4), 0x10000);
}

#[test]
fn queue_size_is_max_at_reset_and_zero_for_missing_queue() {
    let mut r = rig();
    assert_eq!(r.r(0x18, 2), 256);
    r.w(0x16, 5, 2);
    assert_eq!(r.r(0x18, 2), 0);
    assert_eq!(r.r(0x12, 2), 2, "num_queues");
}

#[test]
fn notify_reaches_device_only_after_driver_ok() {
    let mut r = rig();
    r.negotiate(FEATURES);
    r.setup_queue(0, 64, 0, 0x10000);
    r.w(0x3000, 0, 2);
    assert!(!r.dev.calls().contains(&Call::Notify(0)));
    r.w(
        0x14,
        u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        1,
    );
    r.w(0x3000, 0, 2);
    assert!(r.dev.calls().contains(&Call::Notify(0)));
    // Queue 1 is not enabled: its notification is dropped.
    r.w(0x3004, 1, 2);
    assert!(!r.dev.calls().contains(&Call::Notify(1)));
}

#[test]
fn vector_out_of_range_reads_no_vector() {
    let mut r = rig();
    r.w(0x10, 3, 2);
    assert_eq!(r.r(0x10, 2), u64::from(NO_VECTOR));
    r.w(0x10, 2, 2);
    assert_eq!(r.r(0x10, 2), 2);
    r.w(0x1a, 9, 2);
    assert_eq!(r.r(0x1a, 2), u64::from(NO_VECTOR));
}

#[test]
fn queue_interrupt_signals_vector_and_sets_isr_until_read() {
    let mut r = rig();
    r.negotiate(FEATURES);
    r.setup_queue(0, 64, 1, 0x10000);
    r.pci.irq_router().raise(Cause::Queue(0));
    assert_eq!(*r.signalled.lock().unwrap(), vec![1]);
    assert_eq!(r.r(0x1000, 1), u64::from(ISR_QUEUE));
    assert_eq!(r.r(0x1000, 1), 0, "4.1.4.5.1: read clears");
}

#[test]
fn config_change_bumps_generation_and_signals_config_vector() {
    let mut r = rig();
    r.w(0x10, 0, 2);
    let g = r.r(0x15, 1);
    r.pci.irq_router().raise(Cause::Config);
    assert_eq!(r.r(0x15, 1), (g + 1) & 0xff);
    assert_eq!(*r.signalled.lock().unwrap(), vec![0]);
    assert_eq!(r.r(0x1000, 1), u64::from(ISR_CONFIG));
}

#[test]
fn unrouted_interrupt_only_sets_isr() {
    let mut r = rig();
    r.pci.irq_router().raise(Cause::Queue(1));
    assert!(r.signalled.lock().unwrap().is_empty());
    assert_eq!(r.r(0x1000, 1), u64::from(ISR_QUEUE));
}

#[test]
fn status_zero_resets_device_and_transport() {
    let mut r = rig();
    r.negotiate(FEATURES);
    r.setup_queue(0, 64, 1, 0x10000);
    r.w(0x14, 0, 1);
    assert_eq!(r.dev.calls().last(), Some(&Call::Reset));
    assert_eq!(r.status(), 0);
    r.w(0x16, 0, 2);
    assert_eq!(r.r(0x1c, 2), 0);
    assert_eq!(r.r(0x1a, 2), u64::from(NO_VECTOR));
    r.pci.irq_router().raise(Cause::Queue(0));
    assert!(
        r.signalled.lock().unwrap().is_empty(),
        "vector routing reset"
    );
}

/// A function reset (QEMU's on every system reset) is a system reset of
/// the device and resets the transport like status 0.
#[test]
fn function_reset_system_resets_device_and_transport() {
    let mut r = rig();
    r.negotiate(FEATURES);
    r.setup_queue(0, 64, 1, 0x10000);
    r.pci.system_reset();
    assert_eq!(r.dev.calls().last(), Some(&Call::SystemReset));
    assert_eq!(r.status(), 0);
    r.w(0x16, 0, 2);
    assert_eq!(r.r(0x1c, 2), 0, "queue disabled");
    assert_eq!(r.r(0x18, 2), 256, "queue size back to the maximum");
}

#[test]
fn refused_rings_set_device_needs_reset() {
    let mut r = rig_with(Recorder {
        refuse_queues: true,
        ..Recorder::default()
    });
    r.negotiate(FEATURES);
    r.w(0x10, 0, 2);
    r.setup_queue(0, 64, 1, 0x10000);
    assert_eq!(r.status() & DEVICE_NEEDS_RESET, DEVICE_NEEDS_RESET);
    assert_eq!(r.r(0x1c, 2), 0);
    assert_eq!(*r.signalled.lock().unwrap(), vec![0], "config interrupt");
}

#[test]
fn driver_cannot_set_device_needs_reset() {
    let mut r = rig();
    r.w(0x14, u64::from(ACKNOWLEDGE | DEVICE_NEEDS_RESET), 1);
    assert_eq!(r.status(), ACKNOWLEDGE);
}

#[test]
fn device_config_window_reaches_device() {
    let mut r = rig();
    r.w(0x2004, 0xaabb, 2);
    assert_eq!(r.r(0x2004, 2), 0xaabb);
    assert_eq!(r.dev.config.lock().unwrap()[4], 0xbb);
}

#[test]
fn pci_cfg_window_accesses_bar0() {
    let mut r = rig();
    // Point the window at device_feature (select 0) and read it.
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 4, 0, 1);
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 8, 0x04, 4);
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 12, 4, 4);
    assert_eq!(
        r.cfg(u64::from(caps::PCI_CFG_DATA), 4),
        FEATURES & 0xffff_ffff
    );
    // A write through the window: device_feature_select = 1.
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 8, 0x00, 4);
    r.cfg_w(u64::from(caps::PCI_CFG_DATA), 1, 4);
    assert_eq!(r.r(0x00, 4), 1);
}

#[test]
fn pci_cfg_window_ignores_misaligned_or_other_bar() {
    let mut r = rig();
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 8, 0x06, 4);
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 12, 4, 4);
    assert_eq!(r.cfg(u64::from(caps::PCI_CFG_DATA), 4), 0);
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 4, 2, 1);
    r.cfg_w(u64::from(caps::PCI_CFG_CAP) + 8, 0x04, 4);
    assert_eq!(r.cfg(u64::from(caps::PCI_CFG_DATA), 4), 0);
}

#[test]
fn bar0_access_outside_is_error() {
    let mut r = rig();
    let mut b = [0u8; 4];
    assert!(r.pci.bar0_read(0x3ffe, &mut b).is_err());
    assert!(r.pci.bar0_write(u64::MAX, &b).is_err());
}

#[test]
fn odd_width_common_access_merges_bytes() {
    let mut r = rig();
    // One byte of the high half of queue_desc.
    r.w(0x24 + 1, 0x12, 1);
    assert_eq!(r.r(0x20, 8), 0x0000_1200_0000_0000);
}
