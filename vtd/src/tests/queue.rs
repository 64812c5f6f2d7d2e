//! Invalidation: register-based (VT-d "Register-based Invalidation Interface")
//! and queued (6.5.2), every descriptor type and error.

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;

use super::Harness;
use crate::mock::{Queue, desc, probe_like_linux};
use crate::nesting::{ContextScope, IotlbScope, PasidScope, VtdEvent};
use crate::queue::{Decoded, Descriptor, decode, dev_tlb_range, iqei};
use crate::regs::{ICS_IWC, ccmd, ectl, fsts, gcmd, iotlb_reg, iqer, off};

/// A probed unit with its queue; the probe's events are drained.
fn probed(opts: &[&str]) -> (Harness, Queue) {
    let mut h = Harness::new(opts);
    let root = h.alloc.page(&h.mem);
    let p = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, root);
    h.vtd.take_events();
    (h, p.queue)
}

#[test]
fn linux_probe_scalable_emits_root_global_flushes_and_te() {
    let mut h = Harness::new(&[]);
    let root = h.alloc.page(&h.mem);
    let p = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, root);
    assert!(p.queue.wide);
    assert_eq!(h.read64(off::IQH), 4 * 32);
    assert_eq!(
        h.vtd.take_events(),
        vec![
            VtdEvent::RootTable { addr: root, ttm: 1 },
            VtdEvent::Context(ContextScope::Global),
            VtdEvent::PasidCache(PasidScope::Global),
            VtdEvent::Iotlb(IotlbScope::Global),
            VtdEvent::TranslationEnabled(true),
        ]
    );
    assert_eq!(h.vtd.descriptors_processed(), 4);
}

#[test]
fn every_descriptor_type_produces_its_event() {
    let (mut h, mut q) = probed(&["prs=1"]);
    let all = [
        desc::cc_device(3, 0x0108, 1),
        desc::iotlb_domain(3),
        desc::iotlb_page(3, 0x20_0000, 9, true),
        desc::pasid_cache(1, 3, 5),
        desc::pasid_cache(0, 3, 0),
        desc::pasid_iotlb(3, 5, None),
        desc::pasid_iotlb(3, 5, Some((0x1000, 0, false))),
        desc::dev_tlb(0x0108, 0x7000, true),
        desc::pasid_dev_tlb(0x0108, 5, 0, true),
        desc::iec_global(),
        desc::page_group_response(0x0108, Some(5), 0, 7),
    ];
    assert!(q.submit(&mut h.vtd, &h.mem, &all));
    let ev = h.vtd.take_events();
    assert_eq!(
        ev,
        vec![
            VtdEvent::Context(ContextScope::Device {
                did: 3,
                sid: 0x0108,
                fm: 1
            }),
            VtdEvent::Iotlb(IotlbScope::Domain { did: 3 }),
            VtdEvent::Iotlb(IotlbScope::Pages {
                did: 3,
                addr: 0x20_0000,
                am: 9,
                ih: true
            }),
            VtdEvent::PasidCache(PasidScope::Pasid { did: 3, pasid: 5 }),
            VtdEvent::PasidCache(PasidScope::Domain { did: 3 }),
            VtdEvent::Iotlb(IotlbScope::Pasid { did: 3, pasid: 5 }),
            VtdEvent::Iotlb(IotlbScope::PasidPages {
                did: 3,
                pasid: 5,
                addr: 0x1000,
                am: 0,
                ih: false
            }),
            VtdEvent::DeviceTlb {
                sid: 0x0108,
                pasid: None,
                addr: 0,
                len: 0x10000
            },
            VtdEvent::DeviceTlb {
                sid: 0x0108,
                pasid: Some(5),
                addr: 0,
                len: u64::MAX
            },
            VtdEvent::PageGroupResponse {
                rid: 0x0108,
                pasid: Some(5),
                index: 7,
                code: 0
            },
        ]
    );
    assert_eq!(
        IotlbScope::Pages {
            did: 3,
            addr: 0x20_0000,
            am: 9,
            ih: true
        }
        .range(),
        Some((0x20_0000, 0x20_0000))
    );
}

#[test]
fn dev_tlb_size_encoding_follows_lowest_zero_bit() {
    assert_eq!(dev_tlb_range(0x5000, false), (0x5000, 0x1000));
    assert_eq!(dev_tlb_range(0x0000, true), (0, 0x2000));
    assert_eq!(
        dev_tlb_range(0x1000 | 0x2000 | 0x8000, true),
        (0x8000, 0x8000)
    );
    assert_eq!(dev_tlb_range(!0xfff, true), (0, u64::MAX));
}

#[test]
fn wait_with_interrupt_sets_iwc_and_raises_completion() {
    let (mut h, mut q) = probed(&[]);
    h.write32(off::IEDATA, 0x51);
    h.write32(off::IEADDR, 0xfee0_1000);
    h.write32(off::IECTL, 0);
    let status = h.alloc.page(&h.mem);
    q.push(&h.mem, desc::wait(status, 0xabcd, true, true));
    h.write32(off::IQT, q.tail());
    assert_eq!(h.mem.read_u32_le(Gpa(status)).unwrap(), 0xabcd);
    assert!(ICS_IWC.is_set(h.read32(off::ICS)));
    {
        let irqs = h.irqs.lock().unwrap();
        assert_eq!(irqs.len(), 1);
        assert_eq!((irqs[0].addr, irqs[0].data), (0xfee0_1000, 0x51));
    }
    // IWC still set: a second IF wait raises nothing.
    q.push(&h.mem, desc::wait(status, 1, true, false));
    h.write32(off::IQT, q.tail());
    assert_eq!(h.irq_count(), 1);
    h.write32(off::ICS, 1);
    q.push(&h.mem, desc::wait(status, 2, true, false));
    h.write32(off::IQT, q.tail());
    assert_eq!(h.irq_count(), 2);
}

#[test]
fn masked_completion_event_sets_ip_until_unmasked() {
    let (mut h, mut q) = probed(&[]);
    let status = h.alloc.page(&h.mem);
    q.push(&h.mem, desc::wait(status, 1, true, false));
    h.write32(off::IQT, q.tail());
    assert!(ectl::IP.is_set(h.read32(off::IECTL)));
    assert_eq!(h.irq_count(), 0);
    h.write32(off::IECTL, 0);
    assert_eq!(h.irq_count(), 1);
}

#[test]
fn invalid_type_sets_iqe_keeps_head_and_resumes_after_clear() {
    let (mut h, mut q) = probed(&[]);
    h.write32(off::FECTL, 0);
    let head = h.read64(off::IQH);
    let bad_slot = q.free;
    q.push(&h.mem, [0xf, 0]);
    let status = q.status;
    q.push(&h.mem, desc::wait(status, 9, false, false));
    h.write32(off::IQT, q.tail());
    let s = h.read32(off::FSTS);
    assert!(fsts::IQE.is_set(s));
    assert_eq!(iqer::IQEI.get(h.read64(off::IQER)), u64::from(iqei::TYPE));
    assert_eq!(h.read64(off::IQH), head, "head stops on the bad descriptor");
    assert_eq!(h.irq_count(), 1, "IQE raises a fault event");
    // Linux's qi_check_fault: overwrite the bad descriptor with a wait,
    // clear IQE; the unit resumes from IQH.
    let at = q.base + bad_slot * 32;
    let w = desc::wait(status, 8, false, false);
    h.mem.write_u64_le(Gpa(at), w[0]).unwrap();
    h.mem.write_u64_le(Gpa(at + 8), w[1]).unwrap();
    h.write32(off::FSTS, fsts::IQE.mask());
    assert_eq!(h.read64(off::IQH), q.tail());
    assert_eq!(h.mem.read_u32_le(Gpa(status)).unwrap(), 9);
}

#[test]
fn reserved_field_and_granularity_are_iqei_4() {
    for bad in [
        [0x1, 0],                 // context-cache with granularity 0
        [0x2 | (1 << 4), 1 << 8], // IOTLB with reserved bit in q1
        [0x2 | (3 << 4), 63],     // AM above MAMV
        [0x7 | (2 << 4), 0],      // PASID-cache granularity 2
        [0x6 | (1 << 4), 0],      // PASID-IOTLB granularity 1
        [0x5 | (1 << 20), 0],     // wait with reserved bits
    ] {
        let (mut h, mut q) = probed(&[]);
        q.push(&h.mem, bad);
        h.write32(off::IQT, q.tail());
        assert!(fsts::IQE.is_set(h.read32(off::FSTS)), "{bad:x?}");
        assert_eq!(
            iqer::IQEI.get(h.read64(off::IQER)),
            u64::from(iqei::RESERVED),
            "{bad:x?}"
        );
    }
}

#[test]
fn pasid_descriptors_are_invalid_types_in_legacy_mode() {
    let (mut h, mut q) = probed(&["mode=legacy"]);
    q.push(&h.mem, desc::pasid_cache(3, 0, 0));
    h.write32(off::IQT, q.tail());
    assert_eq!(iqer::IQEI.get(h.read64(off::IQER)), u64::from(iqei::TYPE));
}

#[test]
fn bad_tail_is_iqei_1_and_fetch_error_is_iqei_2() {
    let (mut h, q) = probed(&[]);
    // 128-bit aligned but not 256-bit aligned.
    h.write32(off::IQT, q.tail() + 16);
    assert_eq!(iqer::IQEI.get(h.read64(off::IQER)), u64::from(iqei::TAIL));

    let mut h = Harness::new(&["mode=legacy"]);
    // Queue outside RAM.
    h.write64(off::IQA, 0x10_0000_0000);
    h.write32(off::GCMD, gcmd::QIE.mask());
    h.write32(off::IQT, 16);
    assert_eq!(iqer::IQEI.get(h.read64(off::IQER)), u64::from(iqei::FETCH));
}

#[test]
fn wide_descriptors_on_legacy_unit_are_iqei_5() {
    let mut h = Harness::new(&["mode=legacy"]);
    let q = h.alloc.page(&h.mem);
    h.write64(off::IQA, q | (1 << 11));
    h.write32(off::GCMD, gcmd::QIE.mask());
    h.write32(off::IQT, 32);
    assert_eq!(iqer::IQEI.get(h.read64(off::IQER)), u64::from(iqei::WIDTH));
}

#[test]
fn ite_stops_fetching_until_cleared() {
    let (mut h, mut q) = probed(&[]);
    h.vtd.report_invalidation_timeout(0x0108);
    let head = h.read64(off::IQH);
    q.push(&h.mem, desc::iotlb_global());
    h.write32(off::IQT, q.tail());
    assert_eq!(h.read64(off::IQH), head);
    h.write32(off::FSTS, fsts::ITE.mask());
    h.write32(off::IQT, q.tail());
    assert_eq!(h.read64(off::IQH), q.tail());
}

#[test]
fn disabling_qi_resets_head() {
    let (mut h, _q) = probed(&[]);
    assert_ne!(h.read64(off::IQH), 0);
    h.write32(off::GCMD, gcmd::TE.mask());
    assert_eq!(h.read64(off::IQH), 0);
    assert!(!gcmd::QIE.is_set(h.read32(off::GSTS)));
}

#[test]
fn queue_wraps_around_its_end() {
    let (mut h, mut q) = probed(&["mode=legacy"]);
    // 256 slots of 16 bytes: 300 submissions of 2 descriptors wrap.
    for _ in 0..150 {
        assert!(q.submit(&mut h.vtd, &h.mem, &[desc::iotlb_global()]));
    }
    assert_eq!(h.read64(off::IQH), q.tail());
    assert_eq!(h.vtd.descriptors_processed(), 3 + 300);
}

#[test]
fn register_based_context_and_iotlb_invalidation_report_granularity() {
    let mut h = Harness::new(&["mode=legacy", "qi=0"]);
    // Linux's __iommu_flush_context: ICC | CIRG=device | FM | SID | DID.
    h.write64(
        off::CCMD,
        (1 << 63) | (3 << 61) | (1 << 32) | (0x0108 << 16) | 4,
    );
    let v = h.read64(off::CCMD);
    assert!(!ccmd::ICC.is_set(v));
    assert_eq!(ccmd::CAIG.get(v), 3);
    // __iommu_flush_iotlb: IVA then IOTLB with IVT | PSI | DR | DW | DID.
    h.write64(0x2a0, 0x40_0000 | 2);
    h.write64(
        0x2a8,
        (1 << 63) | (3 << 60) | (1 << 49) | (1 << 48) | (4 << 32),
    );
    let v = h.read64(0x2a8);
    assert!(!iotlb_reg::IVT.is_set(v));
    assert_eq!(iotlb_reg::IAIG.get(v), 3);
    assert_eq!(
        h.vtd.take_events(),
        vec![
            VtdEvent::Context(ContextScope::Device {
                did: 4,
                sid: 0x0108,
                fm: 1
            }),
            VtdEvent::Iotlb(IotlbScope::Pages {
                did: 4,
                addr: 0x40_0000,
                am: 2,
                ih: false
            }),
        ]
    );
}

#[test]
fn register_invalidation_reserved_granularity_reports_zero() {
    let mut h = Harness::new(&["mode=legacy", "qi=0"]);
    h.write64(off::CCMD, 1 << 63);
    assert_eq!(ccmd::CAIG.get(h.read64(off::CCMD)), 0);
    h.write64(0x2a8, 1 << 63);
    assert_eq!(iotlb_reg::IAIG.get(h.read64(0x2a8)), 0);
    assert!(h.vtd.take_events().is_empty());
}

#[test]
fn register_invalidation_ignored_while_qi_enabled() {
    let (mut h, _q) = probed(&["mode=legacy"]);
    h.write64(off::CCMD, (1 << 63) | (1 << 61));
    assert_eq!(ccmd::CAIG.get(h.read64(off::CCMD)), 0);
    assert!(h.vtd.take_events().is_empty());
}

#[test]
fn decode_is_total_over_types() {
    let cfg = super::config(&["prs=1"]);
    for ty in 0..128u64 {
        let q0 = (ty & 0xf) | ((ty >> 4) << 9);
        match decode([q0 | (1 << 4), 0], &cfg) {
            Decoded::Ok(d) => assert!((1..=9).contains(&ty), "{ty}: {d:?}"),
            Decoded::Invalid(code) => assert!(code == iqei::TYPE || code == iqei::RESERVED),
        }
    }
    assert!(matches!(
        decode(desc::wait(0x1000, 3, true, false), &cfg),
        Decoded::Ok(Descriptor::Wait {
            interrupt: true,
            status_write: true,
            data: 3,
            addr: 0x1000,
            ..
        })
    ));
}

#[test]
fn queue_at_top_of_address_space_is_fetch_error_not_overflow() {
    let mut h = Harness::new(&["mode=legacy"]);
    h.write64(off::IQA, 0xffff_ffff_ffff_f007);
    h.write32(off::GCMD, gcmd::QIE.mask());
    h.write64(off::IQH, 0);
    h.write32(off::IQT, 0x7_fff0);
    assert_eq!(iqer::IQEI.get(h.read64(off::IQER)), u64::from(iqei::FETCH));
}

#[test]
fn extreme_ranges_do_not_overflow() {
    assert_eq!(dev_tlb_range(!0xfff & !(1 << 63), true), (0, u64::MAX));
    assert_eq!(dev_tlb_range(u64::MAX, true), (0, u64::MAX));
    let s = IotlbScope::Pages {
        did: 0,
        addr: u64::MAX,
        am: 63,
        ih: false,
    };
    assert_eq!(s.range(), Some((0x8000_0000_0000_0000, 1 << 63)));
}

#[test]
fn register_access_at_top_offset_reads_zero() {
    let mut h = Harness::new(&[]);
    assert_eq!(h.vtd.mmio_read(u64::MAX - 7, 8), 0);
    h.vtd.mmio_write(&h.mem, u64::MAX - 7, 8, u64::MAX);
}

#[test]
fn descriptor_reserved_masks_are_the_spec_layouts() {
    use crate::queue::{
        ContextCacheDsc, DevTlbDsc, IecDsc, IotlbDsc, PageGroupResponseDsc, PasidCacheDsc,
        PasidDevTlbDsc, PasidIotlbDsc, WaitDsc,
    };
    let all = [
        (ContextCacheDsc::RESERVED, [0xfffc_0000_0000_f1c0, u64::MAX]),
        (IotlbDsc::RESERVED, [0xffff_ffff_0000_f100, 0xf80]),
        (DevTlbDsc::RESERVED, [0x000f_0000_ffe0_01f0, 0xffe]),
        (IecDsc::RESERVED, [0xffff_0000_07ff_f1e0, u64::MAX]),
        (WaitDsc::RESERVED, [0xffff_f100, 0x3]),
        (PasidIotlbDsc::RESERVED, [0xfff0_0000_0000_f1c0, 0xf80]),
        (PasidCacheDsc::RESERVED, [0xfff0_0000_0000_f1c0, u64::MAX]),
        (PasidDevTlbDsc::RESERVED, [0, 0x7fe]),
        (PageGroupResponseDsc::RESERVED, [0xfff0_0000_0000_01e0, 0]),
    ];
    for (i, (got, want)) in all.into_iter().enumerate() {
        assert_eq!(got, want, "descriptor {i}");
    }
}

#[test]
fn pasid_device_tlb_source_id_is_bits_31_16() {
    use crate::queue::PasidDevTlbDsc;
    use nesting_core::types::Bdf;
    // SID 0x0108, PFSID 0xabc5 (bits 63:52 = 0xabc, 15:12 = 5), MIP 3,
    // PASID 0x12345; G with an all-ones address.
    let d = PasidDevTlbDsc([0xabc1_2345_0108_5038, !0x7fe]);
    assert_eq!(d.sid(), Bdf(0x0108));
    assert_eq!(d.pfsid(), 0xabc5);
    assert_eq!((d.mip(), d.pasid()), (3, 0x1_2345));
    assert!(d.global() && d.s());
    assert_eq!(d.addr(), !0xfff);
}
