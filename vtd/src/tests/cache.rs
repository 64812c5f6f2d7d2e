//! The translation cache (nesting-core's IOTLB) behind `translate`:
//! entries live until the guest invalidates them (6.5), in every scope.

use std::sync::Arc;

use nesting_core::iotlb::Translate;
use nesting_core::types::{Access, Bdf, Iova, RequesterId};
use vm_memory::{Bytes, GuestAddress};

use super::Harness;
use crate::SharedVtd;
use crate::mock::{
    FsTables, LegacyTables, PasidSetup, Queue, ScalableTables, SlTables, desc, flpte,
    probe_like_linux,
};

const SID: u16 = 0x0010;
const DID: u16 = 5;

fn legacy() -> (Harness, SlTables, Queue, LegacyTables) {
    let mut h = Harness::new(&["mode=legacy"]);
    let t = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    t.set_context(&h.mem, &mut h.alloc, SID, DID, 0, 2, sl.root, false);
    let p = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    (h, sl, p.queue, t)
}

#[test]
fn cached_translation_survives_table_change_until_page_invalidation() {
    let (mut h, sl, mut q, _) = legacy();
    sl.map(&h.mem, &mut h.alloc, 0x1000, 0x2000, 12, true, true);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Ok(0x2000));
    assert_eq!(h.vtd.iotlb().len(), 1);
    // The guest remaps without invalidating: the cached entry is used
    // (6.5: software must invalidate after changing a present entry).
    sl.map(&h.mem, &mut h.alloc, 0x1000, 0x3000, 12, true, true);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Ok(0x2000));
    assert!(q.submit(
        &mut h.vtd,
        &h.mem,
        &[desc::iotlb_page(DID, 0x1000, 0, false)]
    ));
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Ok(0x3000));
}

#[test]
fn page_invalidation_of_other_domain_or_range_keeps_entry() {
    let (mut h, sl, mut q, _) = legacy();
    sl.map(&h.mem, &mut h.alloc, 0x1000, 0x2000, 12, true, true);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Ok(0x2000));
    assert!(q.submit(
        &mut h.vtd,
        &h.mem,
        &[
            desc::iotlb_page(DID + 1, 0x1000, 0, false),
            desc::iotlb_page(DID, 0x8000, 0, false)
        ]
    ));
    assert_eq!(h.vtd.iotlb().len(), 1);
    assert!(q.submit(&mut h.vtd, &h.mem, &[desc::iotlb_domain(DID)]));
    assert_eq!(h.vtd.iotlb().len(), 0);
}

#[test]
fn device_context_invalidation_with_function_mask_drops_siblings() {
    let (mut h, sl, mut q, t) = legacy();
    sl.map(&h.mem, &mut h.alloc, 0x1000, 0x2000, 12, true, true);
    t.set_context(&h.mem, &mut h.alloc, SID | 4, DID, 0, 2, sl.root, false);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Ok(0x2000));
    assert_eq!(h.gpa(SID | 4, None, 0x1000, Access::READ), Ok(0x2000));
    assert_eq!(h.vtd.iotlb().len(), 2);
    assert!(q.submit(&mut h.vtd, &h.mem, &[desc::cc_device(DID, SID, 0)]));
    assert_eq!(h.vtd.iotlb().len(), 1);
    // FM=1 masks function bit 2: 00:02.0 covers 00:02.4.
    assert!(q.submit(&mut h.vtd, &h.mem, &[desc::cc_device(DID, SID, 1)]));
    assert_eq!(h.vtd.iotlb().len(), 0);
}

#[test]
fn first_stage_read_then_write_walks_again_to_set_dirty() {
    let mut h = Harness::new(&[]);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = t.set_context(&h.mem, &mut h.alloc, SID, 0, 0);
    let fs = FsTables::new(&h.mem, &mut h.alloc, 4);
    fs.map(
        &h.mem,
        &mut h.alloc,
        0x1000,
        0x5000,
        12,
        flpte::RW | flpte::US,
    );
    t.set_pasid(
        &h.mem,
        &mut h.alloc,
        dir,
        0,
        &PasidSetup::first_stage(DID, fs.root, 4, false, false),
    );
    probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::READ), Ok(0x5000));
    assert_eq!(fs.entries(&h.mem, 0x1000)[3] & flpte::D, 0);
    assert_eq!(h.gpa(SID, None, 0x1000, Access::WRITE), Ok(0x5000));
    assert_ne!(fs.entries(&h.mem, 0x1000)[3] & flpte::D, 0);
}

#[test]
fn pasid_iotlb_invalidation_drops_only_that_pasid() {
    let mut h = Harness::new(&[]);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = t.set_context(&h.mem, &mut h.alloc, SID, 0, 0);
    let fs = FsTables::new(&h.mem, &mut h.alloc, 4);
    fs.map(
        &h.mem,
        &mut h.alloc,
        0x1000,
        0x5000,
        12,
        flpte::RW | flpte::US,
    );
    for p in [1, 2] {
        t.set_pasid(
            &h.mem,
            &mut h.alloc,
            dir,
            p,
            &PasidSetup::first_stage(DID, fs.root, 4, false, false),
        );
    }
    let mut q = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root).queue;
    assert!(h.gpa(SID, Some(1), 0x1000, Access::READ).is_ok());
    assert!(h.gpa(SID, Some(2), 0x1000, Access::READ).is_ok());
    assert_eq!(h.vtd.iotlb().len(), 2);
    assert!(q.submit(
        &mut h.vtd,
        &h.mem,
        &[desc::pasid_iotlb(DID, 1, Some((0x1000, 0, false)))]
    ));
    assert_eq!(h.vtd.iotlb().len(), 1);
    assert!(q.submit(&mut h.vtd, &h.mem, &[desc::pasid_cache(1, DID, 2)]));
    assert_eq!(h.vtd.iotlb().len(), 0);
}

#[test]
fn translation_disabled_is_not_cached() {
    let mut h = Harness::new(&["mode=legacy"]);
    assert!(h.gpa(SID, None, 0x1000, Access::READ).is_ok());
    assert!(h.vtd.iotlb().is_empty());
}

#[test]
fn shared_unit_serves_vm_memory_view() {
    let (mut h, sl, _q, _) = legacy();
    sl.map(&h.mem, &mut h.alloc, 0x7000, 0x20_0000, 12, true, true);
    h.mem
        .write_obj(0x1122_3344u32, GuestAddress(0x20_0010))
        .unwrap();
    let mem = h.mem.clone();
    let unit = std::mem::replace(&mut h.vtd, crate::Vtd::new(super::config(&[])));
    let shared = Arc::new(SharedVtd::new(unit, mem));
    let rid = RequesterId::Pci(Bdf(SID));
    let t = shared
        .translate(rid, None, Iova(0x7010), Access::READ)
        .unwrap();
    assert_eq!(t.gpa_of(Iova(0x7010)).0, 0x20_0010);
    assert!(
        shared
            .translate(rid, None, Iova(0x9000), Access::READ)
            .is_err()
    );
    assert_eq!(
        shared.mmio_read(crate::regs::off::FSTS, 4) & 2,
        2,
        "fault recorded"
    );
}

#[test]
fn emulated_device_dma_through_vm_memory_view_follows_invalidations() {
    use nesting_core::iotlb::IommuView;
    use vm_memory::IommuMemory;
    let (mut h, sl, mut q, _) = legacy();
    sl.map(&h.mem, &mut h.alloc, 0x10_0000, 0x3000, 12, true, true);
    sl.map(&h.mem, &mut h.alloc, 0x10_1000, 0x4000, 12, true, false);
    let mem = h.mem.clone();
    let unit = std::mem::replace(&mut h.vtd, crate::Vtd::new(super::config(&[])));
    let shared = Arc::new(SharedVtd::new(unit, mem.clone()));
    let rid = RequesterId::Pci(Bdf(SID));
    let dma = IommuMemory::new(
        mem.clone(),
        IommuView::new(shared.clone(), rid, None, false),
        true,
        (),
    );
    dma.write_obj(0xdead_beefu32, GuestAddress(0x10_0010))
        .unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x3010)).unwrap(),
        0xdead_beef
    );
    assert!(
        dma.write_obj(1u32, GuestAddress(0x10_1000)).is_err(),
        "read-only page"
    );
    assert!(
        dma.read_obj::<u32>(GuestAddress(0x10_2000)).is_err(),
        "unmapped: fault"
    );
    // The guest moves the page and invalidates it; the device follows.
    sl.map(&mem, &mut h.alloc, 0x10_0000, 0x5000, 12, true, true);
    assert!(q.submit(
        &mut shared.lock(),
        &mem,
        &[desc::iotlb_page(DID, 0x10_0000, 0, false)]
    ));
    dma.write_obj(0x1234_5678u32, GuestAddress(0x10_0010))
        .unwrap();
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(0x5010)).unwrap(),
        0x1234_5678
    );
}
