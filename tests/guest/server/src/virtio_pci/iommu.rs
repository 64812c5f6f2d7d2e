//! The virtio-iommu model (crate `virtio-iommu`) behind the virtio-pci
//! transport: each transport hook is one `VirtioIommu` call, and the
//! model's interrupts go through the transport's [`IrqRouter`].

use std::sync::Arc;

use log::warn;
use virtio_iommu::protocol::{NUM_QUEUES, VIRTIO_ID_IOMMU};
use virtio_iommu::{Interrupt, MAX_QUEUE_SIZE, VirtioIommu};
use vm_memory::GuestMemory;

use super::{Cause, IrqRouter, VirtioDevice};

impl<M: GuestMemory + Send + Sync> VirtioDevice for VirtioIommu<M> {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_IOMMU as u16
    }

    fn num_queues(&self) -> u16 {
        NUM_QUEUES as u16
    }

    fn max_queue_size(&self) -> u16 {
        MAX_QUEUE_SIZE
    }

    fn device_features(&self) -> u64 {
        VirtioIommu::device_features(self)
    }

    fn ack_features(&self, features: u64) -> bool {
        VirtioIommu::ack_features(self, features)
            .inspect_err(|e| warn!("virtio-iommu: {e}"))
            .is_ok()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        VirtioIommu::read_config(self, offset, data);
    }

    fn write_config(&self, offset: u64, data: &[u8]) {
        VirtioIommu::write_config(self, offset, data);
    }

    fn setup_queue(&self, index: u16, size: u16, desc: u64, driver: u64, device: u64) -> bool {
        VirtioIommu::setup_queue(self, index, size, desc, driver, device)
            .inspect_err(|e| warn!("virtio-iommu: queue {index}: {e}"))
            .is_ok()
    }

    fn notify(&self, index: u16) {
        if let Err(e) = VirtioIommu::notify(self, index) {
            warn!("virtio-iommu: notify {index}: {e}");
        }
    }

    fn reset(&self) {
        VirtioIommu::reset(self);
    }

    fn system_reset(&self) {
        VirtioIommu::system_reset(self);
    }
}

/// Routes the model's interrupts through `router`.
pub fn connect_interrupts<M: GuestMemory + Send + Sync>(
    dev: &VirtioIommu<M>,
    router: Arc<IrqRouter>,
) {
    dev.set_interrupt(Arc::new(move |cause| {
        router.raise(match cause {
            Interrupt::Queue(q) => Cause::Queue(q),
            // Whatever else the model signals is about its configuration
            // (the model may have no such cause: its config changes only
            // when the driver writes it).
            #[allow(unreachable_patterns)]
            _ => Cause::Config,
        });
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio_pci::VirtioPci;
    use crate::virtio_pci::common::status::*;
    use nesting_core::options::ModelOptions;
    use std::sync::Mutex;
    use virtio_iommu::DeviceOptions;
    use virtio_iommu::VirtioIommuConfig;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const DESC: u64 = 0x1_0000;
    const AVAIL: u64 = 0x1_1000;
    const USED: u64 = 0x1_2000;
    const REQ: u64 = 0x2_0000;
    const RESP: u64 = 0x2_1000;

    struct Rig {
        pci: VirtioPci<VirtioIommu<GuestMemoryMmap>>,
        dev: Arc<VirtioIommu<GuestMemoryMmap>>,
        mem: Arc<GuestMemoryMmap>,
        signalled: Arc<Mutex<Vec<u16>>>,
    }

    fn rig() -> Rig {
        let cfg = VirtioIommuConfig::from_options(&["endpoints=40"]).unwrap();
        let dev = Arc::new(VirtioIommu::new(&cfg, DeviceOptions::default()).unwrap());
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        dev.set_memory(Arc::clone(&mem));
        let signalled = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&signalled);
        let pci = VirtioPci::new(
            Arc::clone(&dev),
            2,
            Arc::new(move |v| {
                s.lock().unwrap().push(v);
                true
            }),
        );
        connect_interrupts(&dev, pci.irq_router());
        Rig {
            pci,
            dev,
            mem,
            signalled,
        }
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
    }

    /// Linux's virtio_pci_modern probe and virtio-iommu setup through the
    /// transport, then one ATTACH on the request queue: the model answers
    /// through the used ring and the queue's MSI-X vector.
    #[test]
    fn linux_style_init_and_attach_through_transport() {
        let mut r = rig();
        // 3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
        r.w(0x14, 0, 1);
        r.w(0x14, u64::from(ACKNOWLEDGE | DRIVER), 1);
        let mut offered = 0u64;
        for sel in 0..2 {
            r.w(0x00, sel, 4);
            offered |= r.r(0x04, 4) << (32 * sel);
        }
        assert_eq!(offered, r.dev.device_features());
        for sel in 0..2u64 {
            r.w(0x08, sel, 4);
            r.w(0x0c, (offered >> (32 * sel)) & 0xffff_ffff, 4);
        }
        r.w(0x14, u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK), 1);
        assert_eq!(r.r(0x14, 1) as u8 & FEATURES_OK, FEATURES_OK);
        // 5.13.4: page_size_mask (offset 0) through the device window.
        assert_ne!(r.r(0x2000, 8), 0);
        // Request queue 0: 16 entries, vector 1.
        r.w(0x10, 0, 2);
        r.w(0x16, 0, 2);
        r.w(0x18, 16, 2);
        r.w(0x1a, 1, 2);
        for (off, a) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
            r.w(off, a, 4);
            r.w(off + 4, 0, 4);
        }
        r.w(0x1c, 1, 2);
        assert_eq!(r.r(0x1c, 2), 1);
        r.w(
            0x14,
            u64::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
            1,
        );

        // 5.13.6.3: ATTACH domain 1, endpoint 40 (head, body, tail).
        let mut req = vec![1u8, 0, 0, 0];
        req.extend_from_slice(&1u32.to_le_bytes());
        req.extend_from_slice(&40u32.to_le_bytes());
        req.extend_from_slice(&[0; 8]);
        let m = &r.mem;
        m.write_slice(&req, GuestAddress(REQ)).unwrap();
        m.write_slice(&[0xff; 4], GuestAddress(RESP)).unwrap();
        // 2.7.5: descriptor 0 readable -> 1 writable.
        m.write_obj(REQ, GuestAddress(DESC)).unwrap();
        m.write_obj(req.len() as u32, GuestAddress(DESC + 8))
            .unwrap();
        m.write_obj(1u16, GuestAddress(DESC + 12)).unwrap(); // NEXT
        m.write_obj(1u16, GuestAddress(DESC + 14)).unwrap();
        m.write_obj(RESP, GuestAddress(DESC + 16)).unwrap();
        m.write_obj(4u32, GuestAddress(DESC + 24)).unwrap();
        m.write_obj(2u16, GuestAddress(DESC + 28)).unwrap(); // WRITE
        // 2.7.6: avail ring entry 0 = head 0, idx 1.
        m.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        m.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        // 4.1.4.4: notify queue 0 at 0 * multiplier.
        r.w(0x3000, 0, 2);

        let m = &r.mem;
        assert_eq!(m.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(RESP)).unwrap(),
            0,
            "VIRTIO_IOMMU_S_OK"
        );
        assert_eq!(*r.signalled.lock().unwrap(), vec![1]);
        assert_eq!(r.r(0x1000, 1), 1, "ISR queue bit");

        // A function reset (QEMU's system reset) resets the device: status
        // 0, the request queue gone with what it had used.
        assert_eq!(r.dev.used_count(0), Some(1));
        r.pci.system_reset();
        assert_eq!(r.r(0x14, 1), 0, "device status");
        assert_eq!(r.dev.used_count(0), Some(0));
    }
}
