//! Several SMMUs in one VM, and the shared form used by device threads.

use std::sync::Arc;

use nesting_core::iotlb::IommuView;
use nesting_core::types::{Access, RequesterId, StreamId};
use vm_memory::{Bytes, GuestAddress, IommuMemory};

use super::{Harness, S1Setup, SID};
use crate::SharedSmmuv3;
use crate::mock::{Driver, cmd};

#[test]
fn two_instances_have_independent_state() {
    let mut a = S1Setup::new(&[]);
    a.map(0x1000, 0xa000);
    // A second SMMU over the same guest memory, its own tables and pool.
    let mut b = Harness::new(&["sidsize=8", "stlevel=linear"]);
    b.mem = a.h.mem.clone();
    b.alloc = crate::mock::PageAlloc::new(super::POOL + (8 << 20), 4 << 20);
    let mut db = Driver::probe(&mut b.smmu, &b.mem, &mut b.alloc).unwrap();
    assert_eq!(a.h.gpa(SID, None, 0x1000, Access::READ), Some(0xa000));
    // The same StreamID on the other SMMU has no STE.
    assert!(b.gpa(SID, None, 0x1000, Access::READ).is_none());
    // Invalidations on one leave the other's cache alone.
    a.map(0x1000, 0xb000);
    assert!(db.issue(&mut b.smmu, &b.mem, &[cmd::tlbi_nsnh_all()]));
    assert_eq!(a.h.gpa(SID, None, 0x1000, Access::READ), Some(0xa000));
    assert_eq!(a.h.read32(crate::regs::off::CR0ACK), 0b1101);
    assert!(!Arc::ptr_eq(a.h.smmu.iotlb(), b.smmu.iotlb()));
}

#[test]
fn iommu_view_dma_goes_through_shared_smmu_and_follows_tlbi() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    s.map(0x2000, 0xb000);
    let mem = s.h.mem.clone();
    mem.write_obj(0x1122_3344u32, GuestAddress(0xa010)).unwrap();
    let smmu = std::mem::replace(&mut s.h.smmu, crate::Smmuv3::new(super::config(&[])));
    let shared = Arc::new(SharedSmmuv3::new(smmu, mem.clone()));
    let view = IommuView::new(
        shared.clone(),
        RequesterId::Stream(StreamId(SID)),
        None,
        false,
    );
    let dma = IommuMemory::new(mem.clone(), view, true, ());
    let v: u32 = dma.read_obj(GuestAddress(0x1010)).unwrap();
    assert_eq!(v, 0x1122_3344);
    dma.write_obj(0x55u8, GuestAddress(0x2004)).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0xb004)).unwrap(), 0x55);
    // Unmapped: refused.
    assert!(dma.read_obj::<u32>(GuestAddress(0x3000)).is_err());
    // The guest remaps 0x1000 and invalidates: the view follows.
    s.pt.map(
        &mem,
        &mut s.h.alloc,
        0x1000,
        0xb000,
        3,
        crate::mock::pte::s1(true, false, false),
    );
    {
        let mut g = shared.lock();
        assert!(
            s.drv
                .issue(&mut g, &mem, &[cmd::tlbi_nh_va(0, super::ASID, 0x1000)])
        );
    }
    assert_eq!(dma.read_obj::<u8>(GuestAddress(0x1004)).unwrap(), 0x55);
    // CMDQ_CONS reads are served from the mirror.
    assert_eq!(
        shared.mmio_read(crate::regs::off::CMDQ_CONS, 4),
        u64::from(s.drv.cmdq.ptr)
    );
}

#[test]
fn iommu_view_drops_bypass_translation_when_smmu_is_enabled() {
    let h = Harness::new(&[]);
    let mem = h.mem.clone();
    mem.write_obj(0x11u8, GuestAddress(0x1000)).unwrap();
    mem.write_obj(0x22u8, GuestAddress(0xa000)).unwrap();
    let shared = Arc::new(SharedSmmuv3::new(h.smmu, mem.clone()));
    let view = IommuView::new(
        shared.clone(),
        RequesterId::Stream(StreamId(SID)),
        None,
        false,
    );
    let dma = IommuMemory::new(mem.clone(), view, true, ());
    // SMMUEN = 0: bypass.
    assert_eq!(dma.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x11);
    // The driver probes and maps 0x1000 -> 0xa000 for the stream.
    let mut alloc = h.alloc;
    {
        let mut g = shared.lock();
        let mut d = Driver::probe(&mut g, &mem, &mut alloc).unwrap();
        let pt =
            crate::mock::PageTable::stage1(&mem, &mut alloc, crate::walk::Granule::G4K, 48, 48);
        pt.map(
            &mem,
            &mut alloc,
            0x1000,
            0xa000,
            3,
            crate::mock::pte::s1(true, false, false),
        );
        let cdt = Driver::cd_table(&mem, &mut alloc, 0, true);
        let ste = crate::mock::cdtable_ste(cdt.0, 0, false, false);
        d.install_ste(&mut g, &mem, &mut alloc, SID, ste);
        let cd = crate::mock::s1_cd(super::ASID, &pt, 5, false);
        d.install_cd(&mut g, &mem, &mut alloc, cdt, SID, 0, cd);
    }
    assert_eq!(dma.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0x22);
}
