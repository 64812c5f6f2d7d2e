use super::*;
use crate::passthrough::Passthrough;
use nesting_core::iotlb::{Iotlb, TranslateFault, Translation};
use nesting_core::types::{Access, Bdf, Gpa, Iova, PageSize, Pasid};
use vm_memory::Bytes;

const RAM: u64 = 0x10_0000;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

fn rid() -> RequesterId {
    RequesterId::Pci(Bdf::new(0, 5, 0))
}

/// A model that adds `shift` to every IOVA and refuses the page at
/// `refused`, checking the requester: stands in for VT-d/virtio-iommu.
#[derive(Debug)]
struct Shifted {
    shift: u64,
    refused: u64,
    iotlb: Iotlb,
    faults: std::sync::atomic::AtomicUsize,
}

fn shifted(shift: u64, refused: u64) -> Shifted {
    Shifted {
        shift,
        refused,
        iotlb: Iotlb::new(64),
        faults: Default::default(),
    }
}

impl Translate for Shifted {
    fn translate(
        &self,
        r: RequesterId,
        _pasid: Option<Pasid>,
        iova: Iova,
        _access: Access,
    ) -> Result<Translation, TranslateFault> {
        let page = iova.align_down(0x1000);
        if r != rid() || page.raw() == self.refused {
            self.faults
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(TranslateFault { rid: r, iova });
        }
        Ok(Translation {
            iova: page,
            gpa: Gpa(page.raw() + self.shift),
            size: PageSize::SIZE_4K,
            access: Access::READ | Access::WRITE,
        })
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}

fn endpoint<T: Translate>(model: T) -> (DmaEndpoint<T>, GuestMemoryMmap, MsixVectors) {
    let mem = ram();
    let mut ep = DmaEndpoint::new(Arc::new(model), rid());
    ep.set_ram(&mem);
    (ep, mem, MsixVectors::new(4))
}

fn w32<T: Translate>(ep: &mut DmaEndpoint<T>, irqs: &mut MsixVectors, off: u64, v: u32) {
    ep.write(off, &v.to_le_bytes(), true, irqs).unwrap();
}

fn r32<T: Translate>(ep: &DmaEndpoint<T>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    ep.read(off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn program<T: Translate>(
    ep: &mut DmaEndpoint<T>,
    irqs: &mut MsixVectors,
    src: u64,
    dst: u64,
    len: u32,
) {
    w32(ep, irqs, 0x10, src as u32);
    w32(ep, irqs, 0x14, (src >> 32) as u32);
    w32(ep, irqs, 0x18, dst as u32);
    w32(ep, irqs, 0x1c, (dst >> 32) as u32);
    w32(ep, irqs, 0x20, len);
}

#[test]
fn id_register_reads_vdma() {
    let (ep, _, _) = endpoint(Passthrough::default());
    assert_eq!(r32(&ep, 0), 0x414d_4456);
    assert_eq!(r32(&ep, 0x38), MAX_LEN);
}

#[test]
fn fill_writes_pattern_and_counts() {
    let (mut ep, mem, mut irqs) = endpoint(Passthrough::default());
    program(&mut ep, &mut irqs, 0, 0x2001, 7);
    w32(&mut ep, &mut irqs, 0x24, 0x4433_2211);
    w32(&mut ep, &mut irqs, 0x08, 1);
    assert_eq!(r32(&ep, 0x0c), Status::Ok as u32);
    assert_eq!(r32(&ep, 0x2c), 1);
    let mut got = [0u8; 9];
    mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, [0, 0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0x33, 0]);
}

#[test]
fn copy_across_pages_moves_bytes() {
    let (mut ep, mem, mut irqs) = endpoint(Passthrough::default());
    let data: Vec<u8> = (0..0x1800u32).map(|i| (i * 7) as u8).collect();
    mem.write_slice(&data, GuestAddress(0x3800)).unwrap();
    program(&mut ep, &mut irqs, 0x3800, 0x8400, 0x1800);
    w32(&mut ep, &mut irqs, 0x08, 2);
    assert_eq!(r32(&ep, 0x0c), Status::Ok as u32);
    let mut got = vec![0u8; 0x1800];
    mem.read_slice(&mut got, GuestAddress(0x8400)).unwrap();
    assert_eq!(got, data);
}

#[test]
fn dma_goes_through_the_model() {
    let model = shifted(0x4_0000, u64::MAX);
    let (mut ep, mem, mut irqs) = endpoint(model);
    program(&mut ep, &mut irqs, 0, 0x1000, 4);
    w32(&mut ep, &mut irqs, 0x24, 0xdead_beef);
    w32(&mut ep, &mut irqs, 0x08, 1);
    assert_eq!(r32(&ep, 0x0c), Status::Ok as u32);
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x4_1000)).unwrap(),
        0xdead_beef
    );
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
}

#[test]
fn refused_write_reports_fault_address_and_writes_nothing() {
    let (mut ep, mem, mut irqs) = endpoint(shifted(0, 0x6000));
    program(&mut ep, &mut irqs, 0, 0x5800, 0x1000);
    w32(&mut ep, &mut irqs, 0x24, 0xffff_ffff);
    w32(&mut ep, &mut irqs, 0x08, 1);
    assert_eq!(r32(&ep, 0x0c), Status::WriteFault as u32);
    assert_eq!(r32(&ep, 0x30), 0x6000);
    assert_eq!(r32(&ep, 0x34), 0);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5800)).unwrap(), 0);
}

#[test]
fn read_outside_ram_is_read_fault() {
    let (mut ep, _, mut irqs) = endpoint(Passthrough::default());
    let far = 0x1_2345_6000;
    program(&mut ep, &mut irqs, far, 0, 16);
    w32(&mut ep, &mut irqs, 0x08, 2);
    assert_eq!(r32(&ep, 0x0c), Status::ReadFault as u32);
    assert_eq!(r32(&ep, 0x30), 0x2345_6000);
    assert_eq!(r32(&ep, 0x34), 1);
}

#[test]
fn bus_master_clear_refuses_dma() {
    let (mut ep, mem, mut irqs) = endpoint(Passthrough::default());
    program(&mut ep, &mut irqs, 0, 0x1000, 4);
    w32(&mut ep, &mut irqs, 0x24, 0x0101_0101);
    ep.write(0x08, &1u32.to_le_bytes(), false, &mut irqs)
        .unwrap();
    assert_eq!(r32(&ep, 0x0c), Status::NoBusMaster as u32);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
}

#[test]
fn bad_length_and_opcode_are_reported() {
    let (mut ep, _, mut irqs) = endpoint(Passthrough::default());
    program(&mut ep, &mut irqs, 0, 0, 0);
    w32(&mut ep, &mut irqs, 0x08, 1);
    assert_eq!(r32(&ep, 0x0c), Status::BadLength as u32);
    program(&mut ep, &mut irqs, 0, 0, MAX_LEN + 1);
    w32(&mut ep, &mut irqs, 0x08, 1);
    assert_eq!(r32(&ep, 0x0c), Status::BadLength as u32);
    program(&mut ep, &mut irqs, 0, u64::MAX - 1, 4);
    w32(&mut ep, &mut irqs, 0x08, 1);
    assert_eq!(r32(&ep, 0x0c), Status::BadLength as u32);
    program(&mut ep, &mut irqs, 0, 0, 4);
    w32(&mut ep, &mut irqs, 0x08, 9);
    assert_eq!(r32(&ep, 0x0c), Status::BadOpcode as u32);
    assert_eq!(r32(&ep, 0x2c), 4);
}

#[test]
fn completion_signals_programmed_vector() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use vfio_bindings::bindings::vfio::{
        VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX,
    };
    let (mut ep, _, mut irqs) = endpoint(Passthrough::default());
    let (a, mut b) = UnixStream::pair().unwrap();
    let flags = VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD;
    irqs.set_irqs(
        VFIO_PCI_MSIX_IRQ_INDEX,
        flags,
        0,
        1,
        vec![std::fs::File::from(std::os::fd::OwnedFd::from(a))],
    )
    .unwrap();
    program(&mut ep, &mut irqs, 0, 0x1000, 4);
    w32(&mut ep, &mut irqs, 0x28, 0);
    w32(&mut ep, &mut irqs, 0x08, 1);
    let mut got = [0u8; 8];
    b.read_exact(&mut got).unwrap();
    assert_eq!(u64::from_ne_bytes(got), 1);
}

#[test]
fn reset_clears_registers() {
    let (mut ep, _, mut irqs) = endpoint(Passthrough::default());
    program(&mut ep, &mut irqs, 0, 0x1000, 4);
    w32(&mut ep, &mut irqs, 0x08, 1);
    ep.reset();
    assert_eq!(r32(&ep, 0x0c), Status::Idle as u32);
    assert_eq!(r32(&ep, 0x20), 0);
    assert_eq!(r32(&ep, 0x28), NO_VECTOR);
}

#[test]
fn refused_transfer_faults_once_and_copies_nothing() {
    let model = Arc::new(shifted(0, 0x7000));
    let mem = ram();
    let mut ep = DmaEndpoint::new(Arc::clone(&model), rid());
    ep.set_ram(&mem);
    let mut irqs = MsixVectors::new(4);
    mem.write_slice(&[9u8; 0x3000], GuestAddress(0x5000))
        .unwrap();
    // Source pages 0x5000..0x8000 cross the refused page 0x7000.
    program(&mut ep, &mut irqs, 0x5000, 0x10000, 0x3000);
    w32(&mut ep, &mut irqs, 0x08, 2);
    assert_eq!(r32(&ep, 0x0c), Status::ReadFault as u32);
    assert_eq!(r32(&ep, 0x30), 0x7000);
    assert_eq!(model.faults.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10000)).unwrap(), 0);
}

#[test]
fn scratch_survives_reset_and_starts_zero() {
    let (mut ep, _, mut irqs) = endpoint(Passthrough::default());
    assert_eq!(r32(&ep, 0x3c), 0);
    w32(&mut ep, &mut irqs, 0x3c, 0xb007_0002);
    assert_eq!(r32(&ep, 0x3c), 0xb007_0002);
    w32(&mut ep, &mut irqs, 0x28, 1);
    ep.reset();
    assert_eq!(r32(&ep, 0x3c), 0xb007_0002, "kept across a function reset");
    assert_eq!(r32(&ep, 0x28), NO_VECTOR, "the others are reset");
}

#[test]
fn translate_reports_target_without_writing() {
    let (mut ep, mem, mut irqs) = endpoint(shifted(0x4_0000, 0x6000));
    program(&mut ep, &mut irqs, 0, 0x1040, 0);
    w32(&mut ep, &mut irqs, 0x08, 3);
    assert_eq!(r32(&ep, 0x0c), Status::Ok as u32);
    assert_eq!(r32(&ep, 0x40), 0x4_1040, "RESULT_LO");
    assert_eq!(r32(&ep, 0x44), 0, "RESULT_HI");
    assert_eq!(r32(&ep, 0x2c), 1, "counted as a command");
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x4_1040)).unwrap(), 0);
}

#[test]
fn translate_refused_is_write_fault_and_clears_result() {
    let (mut ep, _, mut irqs) = endpoint(shifted(0, 0x6000));
    program(&mut ep, &mut irqs, 0, 0x1000, 0);
    w32(&mut ep, &mut irqs, 0x08, 3);
    assert_eq!(r32(&ep, 0x40), 0x1000);
    program(&mut ep, &mut irqs, 0, 0x6040, 0);
    w32(&mut ep, &mut irqs, 0x08, 3);
    assert_eq!(r32(&ep, 0x0c), Status::WriteFault as u32);
    assert_eq!(r32(&ep, 0x30), 0x6040, "FAULT");
    assert_eq!(r32(&ep, 0x40), 0, "no result");
    ep.write(0x08, &3u32.to_le_bytes(), false, &mut irqs)
        .unwrap();
    assert_eq!(r32(&ep, 0x0c), Status::NoBusMaster as u32);
}
