//! Tests of the mock IOMMU driver and of the rules the kernel test
//! (tests/kernel, Linux 7.2 with `CONFIG_IOMMUFD_TEST`) showed the
//! simulator lacked. The expected values are the kernel's, as recorded by
//! that test.

use nesting_core::host::info::{HostCaps, HwInfo};
use nesting_core::types::Pasid;

use super::*;
use crate::profile::{HostProfile, SimHostSpec};

const RW: Access = Access::RW;

/// The mock IOMMU as `tests/kernel` describes it.
fn mock_sim() -> SimIommufd {
    let mut data = 0u32.to_ne_bytes().to_vec();
    data.extend_from_slice(&0xdead_beefu32.to_ne_bytes());
    SimIommufd::with_host(SimHostSpec {
        info: HostInfo {
            hw: HwInfo::Other {
                kind: driver::HW_INFO_TYPE_SELFTEST,
                data,
            },
            caps: HostCaps::DIRTY_TRACKING | HostCaps::PCI_ATS_NOT_SUPPORTED,
            max_pasid_log2: 20,
        },
        page_size: 2048,
        aperture: IovaRange {
            first: Iova(1 << 24),
            last: Iova((1 << 31) - 1),
        },
        reserved: vec![],
    })
}

fn selftest(iotlb: u32) -> HwptData {
    let mut bytes = iotlb.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    HwptData::Raw {
        data_type: mock::HWPT_DATA_SELFTEST,
        bytes,
    }
}

fn req(dev: DevId, parent: PtId, flags: HwptFlags, data: HwptData) -> HwptAlloc {
    HwptAlloc {
        dev,
        parent,
        flags,
        fault: None,
        data,
    }
}

/// A mock device attached to a fresh IOAS and a NEST_PARENT HWPT.
fn world() -> (SimIommufd, DevId, IoasId, HwptId) {
    let s = mock_sim();
    let d = s.bind_device(s.add_device(0)).unwrap();
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    let parent = s
        .hwpt_alloc(&req(
            d,
            PtId::Ioas(ioas),
            HwptFlags::NEST_PARENT,
            HwptData::None,
        ))
        .unwrap();
    (s, d, ioas, parent)
}

fn errno<T: std::fmt::Debug>(r: HostResult<T>) -> i32 {
    r.unwrap_err().errno.0
}

fn entries(e: &[&[u32]], entry_len: u32) -> InvalidationBatch {
    InvalidationBatch::Raw {
        data_type: 0xdead_beef,
        entry_len,
        bytes: e
            .iter()
            .flat_map(|v| v.iter().flat_map(|x| x.to_ne_bytes()))
            .collect(),
    }
}

fn outcome(o: InvalidateOutcome) -> (u32, i32) {
    (o.handled, o.result.map_or_else(|e| e.errno.0, |()| 0))
}

#[test]
fn mock_paging_takes_selftest_data_refuses_other_types() {
    let (s, d, ioas, _) = world();
    let io = PtId::Ioas(ioas);
    s.hwpt_alloc(&req(d, io, HwptFlags::empty(), selftest(0)))
        .unwrap();
    let other = HwptData::Raw {
        data_type: 0x1234,
        bytes: vec![0; 8],
    };
    assert_eq!(
        errno(s.hwpt_alloc(&req(d, io, HwptFlags::empty(), other))),
        libc::EOPNOTSUPP
    );
    let bad_flag = HwptFlags::from_bits_retain(1 << 20);
    assert_eq!(
        errno(s.hwpt_alloc(&req(d, io, bad_flag, HwptData::None))),
        libc::EOPNOTSUPP
    );
}

#[test]
fn mock_nested_alloc_refusals_match_kernel() {
    let (s, d, ioas, parent) = world();
    let plain = s
        .hwpt_alloc(&req(
            d,
            PtId::Ioas(ioas),
            HwptFlags::empty(),
            HwptData::None,
        ))
        .unwrap();
    let on = |p, flags, data| s.hwpt_alloc(&req(d, PtId::Hwpt(p), flags, data));
    on(parent, HwptFlags::empty(), selftest(0)).unwrap();
    assert_eq!(
        errno(on(plain, HwptFlags::empty(), selftest(0))),
        libc::EINVAL
    );
    let other = HwptData::Raw {
        data_type: 0x1234,
        bytes: vec![0; 8],
    };
    assert_eq!(
        errno(on(parent, HwptFlags::empty(), other)),
        libc::EOPNOTSUPP
    );
    let short = HwptData::Raw {
        data_type: mock::HWPT_DATA_SELFTEST,
        bytes: vec![0; 2],
    };
    assert_eq!(errno(on(parent, HwptFlags::empty(), short)), libc::EINVAL);
    assert_eq!(
        errno(on(parent, HwptFlags::DIRTY_TRACKING, selftest(0))),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(on(parent, HwptFlags::empty(), HwptData::None)),
        libc::EOPNOTSUPP
    );
}

#[test]
fn mock_hwpt_invalidate_stops_at_bad_entry_reporting_handled() {
    let (s, d, _, parent) = world();
    let n = s
        .hwpt_alloc(&req(d, PtId::Hwpt(parent), HwptFlags::empty(), selftest(0)))
        .unwrap();
    let t = InvalidateTarget::Hwpt(n);
    let inv = |b: InvalidationBatch| outcome(s.hwpt_invalidate(t, &b));
    assert_eq!(
        inv(entries(&[&[0, 0], &[0, 1], &[1, 0], &[0, 3]], 8)),
        (4, 0)
    );
    assert_eq!(
        inv(entries(&[&[0, 0], &[0, 1], &[0, 4], &[0, 2]], 8)),
        (2, libc::EINVAL)
    );
    assert_eq!(
        inv(entries(&[&[0, 0], &[2, 1], &[0, 2]], 8)),
        (1, libc::EOPNOTSUPP)
    );
    assert_eq!(inv(entries(&[], 8)), (0, 0));
    // One structure version: shorter and longer entries are EINVAL.
    assert_eq!(inv(entries(&[&[0, 0]], 4)), (0, libc::EINVAL));
    assert_eq!(
        inv(entries(&[&[0, 0, 0, 0], &[0, 0, 0, 0]], 16)),
        (0, libc::EINVAL)
    );
    let wrong = InvalidationBatch::Raw {
        data_type: 0x1234,
        entry_len: 8,
        bytes: vec![0; 8],
    };
    assert_eq!(inv(wrong), (0, libc::EINVAL));
}

#[test]
fn mock_viommu_nested_attach_needs_vdevice_then_invalidates_by_vdev_id() {
    let (s, d, _, parent) = world();
    let vi = s
        .viommu_alloc(d, parent, ViommuType::Other(0xdead_beef))
        .unwrap();
    assert_eq!(
        errno(s.viommu_alloc(d, parent, ViommuType::Other(0x1234))),
        libc::EOPNOTSUPP
    );
    let n = s
        .hwpt_alloc(&req(d, PtId::Viommu(vi), HwptFlags::empty(), selftest(0)))
        .unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(n))), libc::ENOENT);
    s.vdevice_alloc(vi, d, 0x99).unwrap();
    s.attach(d, None, PtId::Hwpt(n)).unwrap();
    let t = InvalidateTarget::Viommu(vi);
    let inv = |b: InvalidationBatch| outcome(s.hwpt_invalidate(t, &b));
    assert_eq!(
        inv(entries(&[&[0, 0x99, 0], &[1, 0x99, 0], &[0, 0x99, 3]], 12)),
        (3, 0)
    );
    assert_eq!(
        inv(entries(&[&[0, 0x99, 0], &[0, 0x42, 1]], 12)),
        (1, libc::EINVAL)
    );
    assert_eq!(inv(entries(&[&[0, 0x99, 4]], 12)), (0, libc::EINVAL));
    assert_eq!(
        inv(entries(&[&[0, 0x99, 0], &[4, 0x99, 0]], 12)),
        (1, libc::EOPNOTSUPP)
    );
    assert_eq!(inv(entries(&[], 12)), (0, 0));
    // Shorter entries are zero-extended, longer ones need a zero tail.
    assert_eq!(inv(entries(&[&[0, 0x99]], 8)), (1, 0));
    assert_eq!(inv(entries(&[&[0, 0x99, 0, 1]], 16)), (0, libc::E2BIG));
}

#[test]
fn hwpt_alloc_with_fault_queue_implies_fault_id_valid() {
    let (s, d, _, parent) = world();
    let fq = s.fault_queue_alloc().unwrap();
    let mut r = req(d, PtId::Hwpt(parent), HwptFlags::empty(), selftest(0));
    r.fault = Some(FaultQueueId(0xffff));
    assert_eq!(errno(s.hwpt_alloc(&r)), libc::ENOENT);
    r.fault = Some(fq);
    let h = s.hwpt_alloc(&r).unwrap();
    assert_eq!(s.hwpt(h).unwrap().fault, Some(fq));
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
    s.inject_page_fault(d, None, Iova(0x100_0000), RW, 1)
        .unwrap();
    assert_eq!(s.fault_read(fq).unwrap().len(), 1);
}

#[test]
fn dirty_bitmap_page_size_not_power_of_two_einval() {
    let s = SimIommufd::with_host(HostProfile::VtdNest.spec());
    let d = s.bind_device(s.add_device(0)).unwrap();
    let ioas = s.ioas_alloc().unwrap();
    let h = s
        .hwpt_alloc(&req(
            d,
            PtId::Ioas(ioas),
            HwptFlags::DIRTY_TRACKING,
            HwptData::None,
        ))
        .unwrap();
    let r = IovaRange {
        first: Iova(0x10000),
        last: Iova(0x10000 + 3000 * 4 - 1),
    };
    assert_eq!(
        errno(s.hwpt_get_dirty_bitmap(h, r, 3000, false)),
        libc::EINVAL
    );
}

#[test]
fn mock_pasid_attach_needs_pasid_compatible_rid_domain() {
    let (s, d, ioas, _) = world();
    let a = s
        .hwpt_alloc(&req(d, PtId::Ioas(ioas), HwptFlags::PASID, HwptData::None))
        .unwrap();
    let p1 = Pasid::new(1);
    assert_eq!(errno(s.attach(d, p1, PtId::Hwpt(a))), libc::EINVAL);
    s.attach(d, None, PtId::Hwpt(a)).unwrap();
    s.attach(d, p1, PtId::Hwpt(a)).unwrap();
    assert_eq!(s.attached_hwpt(d, p1), Some(a));
    let iova = s
        .ioas_map(
            ioas,
            IovaPlacement::Any,
            MapSource::UserVa(0x10_0000),
            0x1000,
            RW,
        )
        .unwrap();
    assert!(iova.0 >= 1 << 24, "allocated inside the mock aperture");
}

/// `iopt_alloc_iova` caps the alignment of an automatic IOVA at
/// `HPAGE_SIZE` with CONFIG_TRANSPARENT_HUGEPAGE, at `PAGE_SIZE` without
/// (the kernel test's guest kernel placed 64 KiB from a 16 KiB-aligned
/// address at 0x1000).
#[test]
fn map_any_alignment_capped_by_transparent_hugepage_config() {
    let va = 0x7f00_0000_4000;
    for (thp, want) in [(true, 0x4000), (false, 0x1000)] {
        let s = SimIommufd::with_host(HostProfile::VtdNonest.spec());
        s.set_transparent_hugepage(thp);
        let ioas = s.ioas_alloc().unwrap();
        let iova = s
            .ioas_map(ioas, IovaPlacement::Any, MapSource::UserVa(va), 0x10000, RW)
            .unwrap();
        assert_eq!(iova, Iova(want), "thp {thp}");
    }
}

/// The backend closes a fault queue's file before `IOMMU_DESTROY`; the
/// kernel refuses while a HWPT delivers to the queue (EBUSY) and the
/// queue is unreadable from then on (kernel test: ENOENT), until destroyed.
#[test]
fn refused_fault_queue_destroy_leaves_it_unreadable() {
    let (s, d, _, parent) = world();
    let fq = s.fault_queue_alloc().unwrap();
    let mut r = req(d, PtId::Hwpt(parent), HwptFlags::empty(), selftest(0));
    r.fault = Some(fq);
    let h = s.hwpt_alloc(&r).unwrap();
    assert_eq!(errno(s.destroy(ObjectId::FaultQueue(fq))), libc::EBUSY);
    assert_eq!(errno(s.fault_read(fq)), libc::ENOENT);
    let resp = PageResponse {
        cookie: 0,
        code: nesting_core::host::PageResponseCode::Success,
    };
    assert_eq!(errno(s.fault_respond(fq, resp)), libc::ENOENT);
    s.destroy(ObjectId::Hwpt(h)).unwrap();
    s.destroy(ObjectId::FaultQueue(fq)).unwrap();
    // A new queue may reuse the number and is readable.
    let fq2 = s.fault_queue_alloc().unwrap();
    assert_eq!(s.fault_read(fq2).unwrap().len(), 0);
}
