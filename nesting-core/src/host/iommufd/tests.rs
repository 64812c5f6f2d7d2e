//! Tests of the real backend against the fake kernel of `sys`.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::super::{VtdS1Flags, VtdS1Invalidation};
use super::sys::fake::{self, Call};
use super::sys::nr;
use super::*;

fn backend() -> Iommufd {
    fake::reset();
    Iommufd::open_path("/dev/null").unwrap()
}

fn ok<T: 'static>(f: impl FnOnce(&mut T) + 'static) {
    fake::reply(move |a: &mut T| {
        f(a);
        Ok(0)
    });
}

fn bind(be: &Iommufd, id: u32) -> DevId {
    ok(move |a: &mut v::vfio_device_bind_iommufd| a.out_devid = id);
    let dev = be
        .bind_device(DeviceSource::Path("/dev/null".into()))
        .unwrap();
    fake::take_calls();
    dev
}

fn only_call() -> Call {
    let mut calls = fake::take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.remove(0)
}

fn err(op: HostOp, errno: i32) -> HostError {
    HostError::new(op, Errno(errno))
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn iommufd_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Iommufd>();
}

#[test]
fn open_path_missing_file_reports_enoent() {
    let e = Iommufd::open_path("/nonexistent/iommu").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn bind_device_fd_packs_argsz_and_iommufd() {
    let be = backend();
    let dev_fd = OwnedFd::from(File::open("/dev/null").unwrap());
    let dev_raw = dev_fd.as_raw_fd();
    ok(|a: &mut v::vfio_device_bind_iommufd| a.out_devid = 7);

    let dev = be.bind_device(DeviceSource::Fd(dev_fd)).unwrap();

    assert_eq!(dev, DevId(7));
    let call = only_call();
    assert_eq!(call.req(), Some(nr::VFIO_DEVICE_BIND_IOMMUFD));
    assert!(matches!(call, Call::Ioctl { fd, .. } if fd == dev_raw));
    let arg = call.arg::<v::vfio_device_bind_iommufd>();
    assert_eq!((arg.argsz, arg.flags), (24, 0));
    assert_eq!(arg.iommufd, be.as_fd().as_raw_fd());
}

#[test]
fn bind_device_simulated_enodev_without_call() {
    let be = backend();
    let e = be
        .bind_device(DeviceSource::Simulated { index: 0 })
        .unwrap_err();
    assert_eq!(e, err(HostOp::BindDevice, libc::ENODEV));
    assert!(fake::take_calls().is_empty());
}

#[test]
fn bind_device_kernel_error_reports_errno() {
    let be = backend();
    fake::fail_next(libc::EBUSY);
    let e = be
        .bind_device(DeviceSource::Path("/dev/null".into()))
        .unwrap_err();
    assert_eq!(e, err(HostOp::BindDevice, libc::EBUSY));
}

#[test]
fn bind_device_missing_path_reports_open_errno() {
    let be = backend();
    let e = be
        .bind_device(DeviceSource::Path("/nonexistent/vfio0".into()))
        .unwrap_err();
    assert_eq!(e, err(HostOp::BindDevice, libc::ENOENT));
}

#[test]
fn unbind_device_twice_second_enoent() {
    let be = backend();
    let dev = bind(&be, 3);
    be.unbind_device(dev).unwrap();
    assert_eq!(
        be.unbind_device(dev).unwrap_err(),
        err(HostOp::UnbindDevice, libc::ENOENT)
    );
}

fn hw_info_reply(kind: u32, data: Vec<u8>, data_len: u32) {
    fake::reply_buf(move |a: &mut k::iommu_hw_info, buf: &mut [u8]| {
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        a.__bindgen_anon_1.out_data_type = kind;
        a.data_len = data_len;
        a.out_capabilities = 0b1001;
        a.out_max_pasid_log2 = 20;
        Ok(0)
    });
}

#[test]
fn hw_info_vtd_decodes_cap_ecap_errata() {
    let be = backend();
    let mut data = vec![0u8; 24];
    put(&mut data, 0, &1u32.to_ne_bytes());
    put(&mut data, 8, &0x00d2_0086_6f05_0462u64.to_ne_bytes());
    put(&mut data, 16, &0x0000_0f05_0df0_e7fau64.to_ne_bytes());
    hw_info_reply(1, data, 24);

    let info = be.hw_info(DevId(1)).unwrap();

    assert_eq!(
        info.hw,
        HwInfo::IntelVtd {
            cap: VtdCap(0x00d2_0086_6f05_0462),
            ecap: VtdEcap(0x0000_0f05_0df0_e7fa),
            errata: VtdErrata::ERRATA_772415_SPR17,
        }
    );
    assert_eq!(
        info.caps,
        HostCaps::DIRTY_TRACKING | HostCaps::PCI_ATS_NOT_SUPPORTED
    );
    assert_eq!(info.max_pasid_log2, 20);
    let call = only_call();
    let arg = call.arg::<k::iommu_hw_info>();
    assert_eq!((arg.size, arg.dev_id, arg.flags), (40, 1, 0));
    assert_eq!(arg.data_len as usize, HW_INFO_BUF_LEN);
}

#[test]
fn hw_info_smmuv3_decodes_idr_iidr_aidr() {
    let be = backend();
    let mut data = vec![0u8; 40];
    for i in 0..6u32 {
        put(&mut data, 8 + 4 * i as usize, &(0x100 + i).to_ne_bytes());
    }
    put(&mut data, 32, &0x43b_u32.to_ne_bytes());
    put(&mut data, 36, &2u32.to_ne_bytes());
    hw_info_reply(2, data, 40);

    let info = be.hw_info(DevId(1)).unwrap();

    assert_eq!(
        info.hw,
        HwInfo::ArmSmmuv3 {
            idr: [0x100, 0x101, 0x102, 0x103, 0x104, 0x105],
            iidr: 0x43b,
            aidr: 2,
            flags: 0,
        }
    );
}

#[test]
fn hw_info_none_type_decodes_none() {
    let be = backend();
    hw_info_reply(0, Vec::new(), 0);
    assert_eq!(be.hw_info(DevId(1)).unwrap().hw, HwInfo::None);
}

#[test]
fn hw_info_other_type_truncated_to_reported_len() {
    let be = backend();
    hw_info_reply(3, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 8);
    assert_eq!(
        be.hw_info(DevId(1)).unwrap().hw,
        HwInfo::Other {
            kind: 3,
            data: vec![1, 2, 3, 4, 5, 6, 7, 8],
        }
    );
}

#[test]
fn hw_info_reported_len_above_buffer_asks_again_with_room() {
    let be = backend();
    hw_info_reply(0x99, vec![0xaa; HW_INFO_BUF_LEN], 100);
    hw_info_reply(0x99, vec![0xbb; 100], 100);

    let info = be.hw_info(DevId(1)).unwrap();

    assert_eq!(
        info.hw,
        HwInfo::Other {
            kind: 0x99,
            data: vec![0xbb; 100],
        }
    );
    let calls = fake::take_calls();
    assert_eq!(calls[1].arg::<k::iommu_hw_info>().data_len, 100);
}

#[test]
fn hw_info_reported_len_beyond_cap_truncated_to_buffer() {
    let be = backend();
    hw_info_reply(0x99, vec![0xaa; HW_INFO_BUF_LEN], 1 << 20);
    let info = be.hw_info(DevId(1)).unwrap();
    assert_eq!(
        info.hw,
        HwInfo::Other {
            kind: 0x99,
            data: vec![0xaa; HW_INFO_BUF_LEN],
        }
    );
    assert_eq!(fake::take_calls().len(), 1);
}

#[test]
fn hw_info_error_reports_get_hw_info_errno() {
    let be = backend();
    fake::fail_next(libc::ENOENT);
    assert_eq!(
        be.hw_info(DevId(9)).unwrap_err(),
        err(HostOp::GetHwInfo, libc::ENOENT)
    );
}

#[test]
fn ioas_alloc_returns_kernel_id() {
    let be = backend();
    ok(|a: &mut k::iommu_ioas_alloc| a.out_ioas_id = 4);
    assert_eq!(be.ioas_alloc().unwrap(), IoasId(4));
    let call = only_call();
    assert_eq!(call.req(), Some(nr::IOMMU_IOAS_ALLOC));
    assert_eq!(call.arg::<k::iommu_ioas_alloc>().size, 12);
}

#[test]
fn ioas_map_fixed_read_write_sets_all_flags() {
    let be = backend();
    let iova = be
        .ioas_map(
            IoasId(2),
            IovaPlacement::Fixed(Iova(0x10_0000)),
            MapSource::UserVa(0x7f00_0000_0000),
            0x2000,
            Access::RW,
        )
        .unwrap();

    assert_eq!(iova, Iova(0x10_0000));
    let call = only_call();
    assert_eq!(call.req(), Some(nr::IOMMU_IOAS_MAP));
    assert_eq!(
        *call.arg::<k::iommu_ioas_map>(),
        k::iommu_ioas_map {
            size: 40,
            flags: 1 | 2 | 4,
            ioas_id: 2,
            __reserved: 0,
            user_va: 0x7f00_0000_0000,
            length: 0x2000,
            iova: 0x10_0000,
        }
    );
}

#[test]
fn ioas_map_any_read_only_returns_kernel_iova() {
    let be = backend();
    ok(|a: &mut k::iommu_ioas_map| a.iova = 0xfee0_0000);
    let iova = be
        .ioas_map(
            IoasId(2),
            IovaPlacement::Any,
            MapSource::UserVa(0x1000),
            0x1000,
            Access::READ | Access::EXEC,
        )
        .unwrap();
    assert_eq!(iova, Iova(0xfee0_0000));
    assert_eq!(only_call().arg::<k::iommu_ioas_map>().flags, 4);
}

#[test]
fn ioas_map_file_passes_fd_and_offset() {
    let be = backend();
    let file = File::open("/dev/null").unwrap();
    be.ioas_map(
        IoasId(2),
        IovaPlacement::Fixed(Iova(0x4000)),
        MapSource::File {
            fd: file.as_fd(),
            offset: 0x20_0000,
        },
        0x1000,
        Access::WRITE,
    )
    .unwrap();
    let call = only_call();
    assert_eq!(call.req(), Some(nr::IOMMU_IOAS_MAP_FILE));
    let arg = call.arg::<k::iommu_ioas_map_file>();
    assert_eq!(arg.fd, file.as_raw_fd());
    assert_eq!(
        (arg.start, arg.length, arg.iova, arg.flags),
        (0x20_0000, 0x1000, 0x4000, 1 | 2)
    );
}

#[test]
fn ioas_map_kernel_eexist_reports_ioas_map_op() {
    let be = backend();
    fake::fail_next(libc::EEXIST);
    let e = be
        .ioas_map(
            IoasId(2),
            IovaPlacement::Fixed(Iova(0)),
            MapSource::UserVa(0x1000),
            0x1000,
            Access::READ,
        )
        .unwrap_err();
    assert_eq!(e, err(HostOp::IoasMap, libc::EEXIST));
}

#[test]
fn ioas_unmap_returns_kernel_length() {
    let be = backend();
    ok(|a: &mut k::iommu_ioas_unmap| a.length = 0x3000);
    assert_eq!(be.ioas_unmap(IoasId(1), Iova(0), u64::MAX).unwrap(), 0x3000);
    let call = only_call();
    let arg = call.arg::<k::iommu_ioas_unmap>();
    assert_eq!((arg.ioas_id, arg.iova, arg.length), (1, 0, u64::MAX));
}

#[test]
fn ioas_unmap_nothing_mapped_reports_enoent() {
    let be = backend();
    fake::fail_next(libc::ENOENT);
    assert_eq!(
        be.ioas_unmap(IoasId(1), Iova(0x1000), 0x1000).unwrap_err(),
        err(HostOp::IoasUnmap, libc::ENOENT)
    );
}

#[test]
fn ioas_copy_packs_source_and_destination() {
    let be = backend();
    ok(|a: &mut k::iommu_ioas_copy| a.dst_iova = 0x9000);
    let iova = be
        .ioas_copy(
            IoasId(5),
            IovaPlacement::Any,
            IoasId(6),
            Iova(0x1000),
            0x2000,
            Access::READ,
        )
        .unwrap();
    assert_eq!(iova, Iova(0x9000));
    let call = only_call();
    let arg = call.arg::<k::iommu_ioas_copy>();
    assert_eq!(
        (
            arg.flags,
            arg.dst_ioas_id,
            arg.src_ioas_id,
            arg.src_iova,
            arg.length
        ),
        (4, 5, 6, 0x1000, 0x2000)
    );
}

fn ranges_reply(total: u32, ok_when_fits: bool) {
    fake::reply_buf(
        move |a: &mut k::iommu_ioas_iova_ranges, buf: &mut [k::iommu_iova_range]| {
            for (i, r) in buf.iter_mut().enumerate().take(total as usize) {
                let base = (i as u64) << 32;
                *r = k::iommu_iova_range {
                    start: base,
                    last: base + 0xfff,
                };
            }
            let fits = total as usize <= buf.len();
            a.num_iovas = total;
            a.out_iova_alignment = 0x1000;
            if fits && ok_when_fits {
                Ok(0)
            } else {
                Err(libc::EMSGSIZE)
            }
        },
    );
}

#[test]
fn iova_ranges_buffer_too_small_asks_again_with_reported_count() {
    let be = backend();
    ranges_reply(10, true);
    ranges_reply(10, true);

    let r = be.ioas_iova_ranges(IoasId(1)).unwrap();

    assert_eq!(r.alignment, 0x1000);
    assert_eq!(r.ranges.len(), 10);
    assert_eq!(
        r.ranges[9],
        IovaRange::new(Iova(9 << 32), Iova((9 << 32) + 0xfff)).unwrap()
    );
    let calls = fake::take_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].arg::<k::iommu_ioas_iova_ranges>().num_iovas, 8);
    assert_eq!(calls[1].arg::<k::iommu_ioas_iova_ranges>().num_iovas, 10);
}

#[test]
fn iova_ranges_count_beyond_limit_reports_emsgsize() {
    let be = backend();
    ranges_reply(u32::MAX, false);
    assert_eq!(
        be.ioas_iova_ranges(IoasId(1)).unwrap_err(),
        err(HostOp::IoasIovaRanges, libc::EMSGSIZE)
    );
    assert_eq!(fake::take_calls().len(), 1);
}

#[test]
fn iova_ranges_always_too_small_gives_up_after_tries() {
    let be = backend();
    for _ in 0..IOVA_RANGES_TRIES {
        ranges_reply(9, false);
    }
    assert_eq!(
        be.ioas_iova_ranges(IoasId(1)).unwrap_err(),
        err(HostOp::IoasIovaRanges, libc::EMSGSIZE)
    );
}

#[test]
fn iova_ranges_inverted_range_skipped() {
    let be = backend();
    fake::reply_buf(
        |a: &mut k::iommu_ioas_iova_ranges, buf: &mut [k::iommu_iova_range]| {
            buf[0] = k::iommu_iova_range { start: 5, last: 1 };
            buf[1] = k::iommu_iova_range { start: 0, last: 9 };
            a.num_iovas = 2;
            a.out_iova_alignment = 0;
            Ok(0)
        },
    );
    let r = be.ioas_iova_ranges(IoasId(1)).unwrap();
    assert_eq!(r.ranges, vec![IovaRange::new(Iova(0), Iova(9)).unwrap()]);
    assert_eq!(r.alignment, 1);
}

#[test]
fn allow_iovas_packs_ranges() {
    let be = backend();
    let ranges = [
        IovaRange::from_len(Iova(0x1000), 0x1000).unwrap(),
        IovaRange::new(Iova(1 << 40), Iova(u64::MAX)).unwrap(),
    ];
    be.ioas_allow_iovas(IoasId(3), &ranges).unwrap();
    let call = only_call();
    assert_eq!(call.req(), Some(nr::IOMMU_IOAS_ALLOW_IOVAS));
    assert_eq!(call.arg::<k::iommu_ioas_allow_iovas>().num_iovas, 2);
    assert_eq!(
        call.buf::<k::iommu_iova_range>(),
        [
            k::iommu_iova_range {
                start: 0x1000,
                last: 0x1fff
            },
            k::iommu_iova_range {
                start: 1 << 40,
                last: u64::MAX
            },
        ]
    );
}

fn hwpt_req(data: HwptData) -> HwptAlloc {
    HwptAlloc {
        dev: DevId(1),
        parent: PtId::Hwpt(HwptId(2)),
        flags: HwptFlags::empty(),
        fault: None,
        data,
    }
}

#[test]
fn hwpt_alloc_vtd_s1_packs_vendor_data() {
    let be = backend();
    ok(|a: &mut k::iommu_hwpt_alloc| a.out_hwpt_id = 11);
    let req = hwpt_req(HwptData::VtdS1 {
        flags: VtdS1Flags::SRE | VtdS1Flags::WPE,
        pgtbl_addr: 0x1234_5000,
        addr_width: 48,
    });

    assert_eq!(be.hwpt_alloc(&req).unwrap(), HwptId(11));

    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_alloc>();
    assert_eq!((arg.size, arg.dev_id, arg.pt_id, arg.flags), (48, 1, 2, 0));
    assert_eq!((arg.data_type, arg.data_len), (1, 24));
    assert_eq!(
        call.buf::<k::iommu_hwpt_vtd_s1>(),
        [k::iommu_hwpt_vtd_s1 {
            flags: 0b101,
            pgtbl_addr: 0x1234_5000,
            addr_width: 48,
            __reserved: 0,
        }]
    );
}

#[test]
fn hwpt_alloc_smmuv3_on_viommu_packs_ste() {
    let be = backend();
    let mut req = hwpt_req(HwptData::Smmuv3 {
        ste: [0x1111, 0x2222],
    });
    req.parent = PtId::Viommu(ViommuId(8));
    be.hwpt_alloc(&req).unwrap();
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_alloc>();
    assert_eq!((arg.pt_id, arg.data_type, arg.data_len), (8, 2, 16));
    assert_eq!(
        call.buf::<k::iommu_hwpt_arm_smmuv3>()[0].ste,
        [0x1111, 0x2222]
    );
}

#[test]
fn hwpt_alloc_paging_with_fault_sets_fault_id_valid() {
    let be = backend();
    let mut req = hwpt_req(HwptData::None);
    req.parent = PtId::Ioas(IoasId(3));
    req.flags = HwptFlags::NEST_PARENT;
    req.fault = Some(FaultQueueId(6));
    be.hwpt_alloc(&req).unwrap();
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_alloc>();
    assert_eq!(arg.flags, 1 | 4);
    assert_eq!((arg.fault_id, arg.data_type, arg.data_len), (6, 0, 0));
}

#[test]
fn hwpt_alloc_raw_passes_type_and_bytes() {
    let be = backend();
    be.hwpt_alloc(&hwpt_req(HwptData::Raw {
        data_type: 0xdead,
        bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
    }))
    .unwrap();
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_alloc>();
    assert_eq!((arg.data_type, arg.data_len), (0xdead, 8));
    assert_eq!(call.buf::<u8>(), [1, 2, 3, 4, 5, 6, 7, 8]);
}

fn vtd_batch(n: u64) -> InvalidationBatch {
    InvalidationBatch::VtdS1(
        (0..n)
            .map(|i| VtdS1Invalidation {
                addr: i << 12,
                npages: 1,
                leaf: i % 2 == 0,
            })
            .collect(),
    )
}

#[test]
fn invalidate_vtd_failure_reports_kernel_handled_count() {
    let be = backend();
    fake::reply_buf(
        |a: &mut k::iommu_hwpt_invalidate, _: &mut [k::iommu_hwpt_vtd_s1_invalidate]| {
            a.entry_num = 1;
            Err(libc::EIO)
        },
    );

    let out = be.hwpt_invalidate(InvalidateTarget::Hwpt(HwptId(4)), &vtd_batch(3));

    assert_eq!(out.handled, 1);
    assert_eq!(out.result, Err(err(HostOp::HwptInvalidate, libc::EIO)));
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_invalidate>();
    assert_eq!(
        (arg.hwpt_id, arg.data_type, arg.entry_len, arg.entry_num),
        (4, 0, 24, 3)
    );
    let entries = call.buf::<k::iommu_hwpt_vtd_s1_invalidate>();
    assert_eq!((entries[0].flags, entries[1].flags), (1, 0));
    assert_eq!(entries[2].addr, 0x2000);
}

#[test]
fn invalidate_smmuv3_success_handles_all() {
    let be = backend();
    let out = be.hwpt_invalidate(
        InvalidateTarget::Viommu(ViommuId(9)),
        &InvalidationBatch::Smmuv3(vec![[0x12, 0x34], [0x56, 0x78]]),
    );
    assert_eq!((out.handled, out.result), (2, Ok(())));
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_invalidate>();
    assert_eq!((arg.hwpt_id, arg.data_type, arg.entry_len), (9, 1, 16));
    assert_eq!(
        call.buf::<k::iommu_viommu_arm_smmuv3_invalidate>()[1].cmd,
        [0x56, 0x78]
    );
}

#[test]
fn invalidate_kernel_count_above_request_clamped() {
    let be = backend();
    fake::reply_buf(
        |a: &mut k::iommu_hwpt_invalidate, _: &mut [k::iommu_hwpt_vtd_s1_invalidate]| {
            a.entry_num = 1000;
            Ok(0)
        },
    );
    let out = be.hwpt_invalidate(InvalidateTarget::Hwpt(HwptId(4)), &vtd_batch(2));
    assert_eq!(out.handled, 2);
}

#[test]
fn invalidate_enotty_reports_zero_handled() {
    let be = backend();
    fake::fail_next(libc::ENOTTY);
    let out = be.hwpt_invalidate(InvalidateTarget::Hwpt(HwptId(4)), &vtd_batch(2));
    assert_eq!(out.handled, 0);
    assert_eq!(out.result, Err(err(HostOp::HwptInvalidate, libc::ENOTTY)));
}

#[test]
fn invalidate_raw_partial_entry_einval_without_call() {
    let be = backend();
    let out = be.hwpt_invalidate(
        InvalidateTarget::Hwpt(HwptId(4)),
        &InvalidationBatch::Raw {
            data_type: 0xdeadbeef,
            entry_len: 8,
            bytes: vec![0; 12],
        },
    );
    assert_eq!(out.handled, 0);
    assert_eq!(out.result, Err(err(HostOp::HwptInvalidate, libc::EINVAL)));
    assert!(fake::take_calls().is_empty());
}

#[test]
fn invalidate_raw_whole_entries_passes_bytes() {
    let be = backend();
    let out = be.hwpt_invalidate(
        InvalidateTarget::Hwpt(HwptId(4)),
        &InvalidationBatch::Raw {
            data_type: 0xdeadbeef,
            entry_len: 8,
            bytes: (0..16).collect(),
        },
    );
    assert_eq!((out.handled, out.result), (2, Ok(())));
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_invalidate>();
    assert_eq!(
        (arg.data_type, arg.entry_len, arg.entry_num),
        (0xdeadbeef, 8, 2)
    );
    assert_eq!(call.buf::<u8>().len(), 16);
}

#[test]
fn dirty_tracking_enable_sets_flag() {
    let be = backend();
    be.hwpt_set_dirty_tracking(HwptId(5), true).unwrap();
    be.hwpt_set_dirty_tracking(HwptId(5), false).unwrap();
    let calls = fake::take_calls();
    assert_eq!(calls[0].req(), Some(nr::IOMMU_HWPT_SET_DIRTY_TRACKING));
    assert_eq!(calls[0].arg::<k::iommu_hwpt_set_dirty_tracking>().flags, 1);
    assert_eq!(calls[1].arg::<k::iommu_hwpt_set_dirty_tracking>().flags, 0);
    assert_eq!(
        calls[1].arg::<k::iommu_hwpt_set_dirty_tracking>().hwpt_id,
        5
    );
}

#[test]
fn dirty_bitmap_kernel_words_become_bit_per_page() {
    let be = backend();
    fake::reply_buf(
        |a: &mut k::iommu_hwpt_get_dirty_bitmap, words: &mut [u64]| {
            assert_eq!(words, [0, 0]);
            words[0] = 1;
            words[1] = (1 << 1) | (1 << 5) | (1 << 63);
            assert_eq!(a.length / a.page_size, 70);
            Ok(0)
        },
    );
    let range = IovaRange::from_len(Iova(0x10_0000), 70 * 0x1000).unwrap();

    let bits = be
        .hwpt_get_dirty_bitmap(HwptId(5), range, 0x1000, true)
        .unwrap();

    assert_eq!(bits.len(), 70);
    assert_eq!(bits.iter_ones().collect::<Vec<_>>(), vec![0, 65, 69]);
    let call = only_call();
    let arg = call.arg::<k::iommu_hwpt_get_dirty_bitmap>();
    assert_eq!(
        (arg.hwpt_id, arg.flags, arg.iova, arg.length, arg.page_size),
        (5, 1, 0x10_0000, 70 * 0x1000, 0x1000)
    );
}

#[test]
fn dirty_bitmap_unaligned_range_einval_without_call() {
    let be = backend();
    let range = IovaRange::from_len(Iova(0x800), 0x1000).unwrap();
    assert_eq!(
        be.hwpt_get_dirty_bitmap(HwptId(5), range, 0x1000, false)
            .unwrap_err(),
        err(HostOp::GetDirtyBitmap, libc::EINVAL)
    );
    let range = IovaRange::from_len(Iova(0), 0x3000).unwrap();
    assert_eq!(
        be.hwpt_get_dirty_bitmap(HwptId(5), range, 0x3000, false)
            .unwrap_err(),
        err(HostOp::GetDirtyBitmap, libc::EINVAL)
    );
    assert!(fake::take_calls().is_empty());
}

#[test]
fn dirty_bitmap_range_to_top_of_space_eoverflow() {
    let be = backend();
    let range = IovaRange::new(Iova(0), Iova(u64::MAX)).unwrap();
    assert_eq!(
        be.hwpt_get_dirty_bitmap(HwptId(5), range, 0x1000, false)
            .unwrap_err(),
        err(HostOp::GetDirtyBitmap, libc::EOVERFLOW)
    );
}

#[test]
fn viommu_alloc_smmuv3_packs_type_dev_parent() {
    let be = backend();
    ok(|a: &mut k::iommu_viommu_alloc| a.out_viommu_id = 12);
    let id = be
        .viommu_alloc(DevId(1), HwptId(2), ViommuType::ArmSmmuv3)
        .unwrap();
    assert_eq!(id, ViommuId(12));
    let call = only_call();
    let arg = call.arg::<k::iommu_viommu_alloc>();
    assert_eq!(
        (arg.size, arg.type_, arg.dev_id, arg.hwpt_id, arg.data_len),
        (40, 1, 1, 2, 0)
    );
}

#[test]
fn vdevice_alloc_packs_virt_id() {
    let be = backend();
    ok(|a: &mut k::iommu_vdevice_alloc| a.out_vdevice_id = 13);
    let id = be.vdevice_alloc(ViommuId(12), DevId(1), 0x88).unwrap();
    assert_eq!(id, VdeviceId(13));
    let call = only_call();
    let arg = call.arg::<k::iommu_vdevice_alloc>();
    assert_eq!((arg.viommu_id, arg.dev_id, arg.virt_id), (12, 1, 0x88));
}

fn vevent(seq: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = flags.to_ne_bytes().to_vec();
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(payload);
    b
}

fn smmu_queue(be: &Iommufd) -> (VeventqId, i32) {
    ok(|a: &mut k::iommu_veventq_alloc| {
        a.out_veventq_id = 20;
        a.out_veventq_fd = 99;
    });
    let q = be
        .veventq_alloc(ViommuId(12), VeventqType::ArmSmmuv3, 64)
        .unwrap();
    let calls = fake::take_calls();
    let arg = calls[0].arg::<k::iommu_veventq_alloc>();
    assert_eq!((arg.viommu_id, arg.type_, arg.veventq_depth), (12, 1, 64));
    let fd = match calls[1] {
        Call::Adopt { raw: 99, fd } => fd,
        ref c => panic!("expected adopt of fd 99, got {c:?}"),
    };
    (q, fd)
}

#[test]
fn veventq_read_smmuv3_records_in_order() {
    let be = backend();
    let (q, fd) = smmu_queue(&be);
    let mut bytes = vevent(0, 0, &[0x10; 32]);
    bytes.extend(vevent(1, 0, &[0x11; 32]));
    fake::push_read(bytes);

    let events = be.veventq_read(q, 4).unwrap();

    assert_eq!(
        events,
        vec![
            VEvent::Event {
                sequence: 0,
                data: vec![0x10; 32]
            },
            VEvent::Event {
                sequence: 1,
                data: vec![0x11; 32]
            },
        ]
    );
    assert!(matches!(only_call(), Call::Read { fd: f, len: 160 } if f == fd));
}

#[test]
fn veventq_read_lost_header_reports_lost() {
    let be = backend();
    let (q, _) = smmu_queue(&be);
    let mut bytes = vevent(0, 0, &[0; 32]);
    bytes.extend(vevent(5, 1, &[]));
    fake::push_read(bytes);
    fake::push_read(vevent(6, 0, &[1; 32]));

    let first = be.veventq_read(q, 4).unwrap();
    let second = be.veventq_read(q, 4).unwrap();

    assert_eq!(first[1], VEvent::Lost { sequence: 5 });
    assert_eq!(
        second,
        vec![VEvent::Event {
            sequence: 6,
            data: vec![1; 32]
        }]
    );
}

#[test]
fn veventq_read_sequence_gap_reports_lost_before_event() {
    let be = backend();
    let (q, _) = smmu_queue(&be);
    let mut bytes = vevent(0, 0, &[0; 32]);
    bytes.extend(vevent(3, 0, &[3; 32]));
    fake::push_read(bytes);

    let events = be.veventq_read(q, 4).unwrap();

    assert_eq!(events.len(), 3);
    assert_eq!(events[1], VEvent::Lost { sequence: 2 });
    assert!(matches!(events[2], VEvent::Event { sequence: 3, .. }));
}

#[test]
fn vevent_sequence_wrap_at_int_max_no_loss() {
    let mut next = i32::MAX as u32;
    let mut bytes = vevent(i32::MAX as u32, 0, &[0; 4]);
    bytes.extend(vevent(0, 0, &[0; 4]));
    let events = parse_vevents(&bytes, 4, &mut next);
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| matches!(e, VEvent::Event { .. })));
    assert_eq!(next, 1);
}

#[test]
fn vevent_truncated_record_reports_lost() {
    let mut next = 0;
    let mut bytes = vevent(0, 0, &[0; 32]);
    bytes.extend(vevent(1, 0, &[0; 10]));
    let events = parse_vevents(&bytes, 32, &mut next);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], VEvent::Lost { sequence: 1 });
}

#[test]
fn veventq_read_empty_queue_returns_nothing() {
    let be = backend();
    let (q, _) = smmu_queue(&be);
    assert_eq!(be.veventq_read(q, 4).unwrap(), vec![]);
    fake::push_read_err(libc::EAGAIN);
    assert_eq!(be.veventq_read(q, 4).unwrap(), vec![]);
}

#[test]
fn veventq_read_error_reports_errno() {
    let be = backend();
    let (q, _) = smmu_queue(&be);
    fake::push_read_err(libc::EFAULT);
    assert_eq!(
        be.veventq_read(q, 4).unwrap_err(),
        err(HostOp::VeventqRead, libc::EFAULT)
    );
}

#[test]
fn veventq_read_large_max_bounded_buffer() {
    let be = backend();
    let (q, _) = smmu_queue(&be);
    be.veventq_read(q, usize::MAX).unwrap();
    assert!(matches!(only_call(), Call::Read { len, .. } if len == VEVENTQ_READ_MAX_BYTES));
}

#[test]
fn veventq_alloc_unknown_type_eopnotsupp_without_call() {
    let be = backend();
    assert_eq!(
        be.veventq_alloc(ViommuId(1), VeventqType::Other(77), 8)
            .unwrap_err(),
        err(HostOp::VeventqAlloc, libc::EOPNOTSUPP)
    );
    assert!(fake::take_calls().is_empty());
}

#[test]
fn veventq_alloc_sized_other_type_reads_given_payload() {
    let be = backend();
    ok(|a: &mut k::iommu_veventq_alloc| a.out_veventq_id = 21);
    let q = be
        .veventq_alloc_sized(ViommuId(1), VeventqType::Other(77), 8, 12)
        .unwrap();
    fake::take_calls();
    fake::push_read(vevent(0, 0, &[7; 12]));
    assert_eq!(
        be.veventq_read(q, 1).unwrap(),
        vec![VEvent::Event {
            sequence: 0,
            data: vec![7; 12]
        }]
    );
    assert!(matches!(only_call(), Call::Read { len: 20, .. }));
}

#[test]
fn veventq_read_unknown_queue_enoent() {
    let be = backend();
    assert_eq!(
        be.veventq_read(VeventqId(3), 1).unwrap_err(),
        err(HostOp::VeventqRead, libc::ENOENT)
    );
}

fn pgfault(flags: u32, cookie: u32, addr: u64, perm: u32) -> Vec<u8> {
    let f = k::iommu_hwpt_pgfault {
        flags,
        dev_id: 1,
        pasid: 5,
        grpid: 2,
        perm,
        __reserved: 0,
        addr,
        length: 0x1000,
        cookie,
    };
    let mut b = vec![0u8; PGFAULT_LEN];
    put(&mut b, 0, &f.flags.to_ne_bytes());
    put(&mut b, 4, &f.dev_id.to_ne_bytes());
    put(&mut b, 8, &f.pasid.to_ne_bytes());
    put(&mut b, 12, &f.grpid.to_ne_bytes());
    put(&mut b, 16, &f.perm.to_ne_bytes());
    put(&mut b, 24, &f.addr.to_ne_bytes());
    put(&mut b, 32, &f.length.to_ne_bytes());
    put(&mut b, 36, &f.cookie.to_ne_bytes());
    b
}

fn fault_queue(be: &Iommufd) -> FaultQueueId {
    ok(|a: &mut k::iommu_fault_alloc| {
        a.out_fault_id = 30;
        a.out_fault_fd = 98;
    });
    let q = be.fault_queue_alloc().unwrap();
    let calls = fake::take_calls();
    assert_eq!(calls[0].req(), Some(nr::IOMMU_FAULT_QUEUE_ALLOC));
    assert!(matches!(calls[1], Call::Adopt { raw: 98, .. }));
    q
}

#[test]
fn fault_read_groups_by_last_page() {
    let be = backend();
    let q = fault_queue(&be);
    let mut bytes = pgfault(1, 5, 0x1000, 1);
    bytes.extend(pgfault(1 | 2, 5, 0x2000, 2 | 8));
    bytes.extend(pgfault(2, 6, 0x3000, 4));
    fake::push_read(bytes);

    let groups = be.fault_read(q).unwrap();

    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].faults.len(), 2);
    assert_eq!(groups[0].cookie(), Some(5));
    let f = groups[0].faults[1];
    assert_eq!(
        f,
        PageFault {
            flags: PageFaultFlags::PASID_VALID | PageFaultFlags::LAST_PAGE,
            dev: DevId(1),
            pasid: 5,
            grpid: 2,
            perm: Access::WRITE | Access::PRIV,
            addr: Iova(0x2000),
            length: 0x1000,
            cookie: 5,
        }
    );
    assert_eq!(groups[1].faults[0].perm, Access::EXEC);
    let calls = fake::take_calls();
    assert!(matches!(calls[0], Call::Read { len, .. } if len == FAULT_READ_RECORDS * 40));
    assert_eq!(calls.len(), 2, "reads until the queue is empty");
}

#[test]
fn fault_read_cookie_change_without_last_page_splits_group() {
    let mut bytes = pgfault(0, 5, 0x1000, 1);
    bytes.extend(pgfault(0, 6, 0x2000, 1));
    let groups = parse_faults(&bytes);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[1].cookie(), Some(6));
}

#[test]
fn fault_read_first_group_too_big_doubles_buffer() {
    let be = backend();
    let q = fault_queue(&be);
    fake::push_read_err(libc::EINVAL);
    fake::push_read(pgfault(2, 5, 0x1000, 1));

    let groups = be.fault_read(q).unwrap();

    assert_eq!(groups.len(), 1);
    let lens: Vec<usize> = fake::take_calls()
        .iter()
        .map(|c| match c {
            Call::Read { len, .. } => *len,
            c => panic!("{c:?}"),
        })
        .collect();
    assert_eq!(lens, vec![64 * 40, 128 * 40, 128 * 40]);
}

#[test]
fn fault_read_error_after_groups_keeps_groups() {
    let be = backend();
    let q = fault_queue(&be);
    fake::push_read(pgfault(2, 5, 0x1000, 1));
    fake::push_read_err(libc::EFAULT);
    assert_eq!(be.fault_read(q).unwrap().len(), 1);
}

#[test]
fn fault_read_error_first_reports_errno() {
    let be = backend();
    let q = fault_queue(&be);
    fake::push_read_err(libc::EFAULT);
    assert_eq!(
        be.fault_read(q).unwrap_err(),
        err(HostOp::FaultRead, libc::EFAULT)
    );
}

#[test]
fn fault_respond_writes_page_response() {
    let be = backend();
    let q = fault_queue(&be);
    be.fault_respond(
        q,
        PageResponse {
            cookie: 0x1234,
            code: PageResponseCode::Invalid,
        },
    )
    .unwrap();
    let mut want = 0x1234u32.to_ne_bytes().to_vec();
    want.extend(1u32.to_ne_bytes());
    assert!(matches!(only_call(), Call::Write { bytes, .. } if bytes == want));
}

#[test]
fn fault_respond_kernel_einval_reports_fault_respond() {
    let be = backend();
    let q = fault_queue(&be);
    fake::push_write_err(libc::EINVAL);
    let e = be
        .fault_respond(
            q,
            PageResponse {
                cookie: 1,
                code: PageResponseCode::Success,
            },
        )
        .unwrap_err();
    assert_eq!(e, err(HostOp::FaultRespond, libc::EINVAL));
}

#[test]
fn attach_twice_second_counts_as_replace() {
    let be = backend();
    let dev = bind(&be, 3);
    be.attach(dev, None, PtId::Ioas(IoasId(2))).unwrap();
    fake::fail_next(libc::EBUSY);

    let e = be.attach(dev, None, PtId::Hwpt(HwptId(4))).unwrap_err();

    assert_eq!(e, err(HostOp::Replace, libc::EBUSY));
    let calls = fake::take_calls();
    assert_eq!(calls[0].req(), Some(nr::VFIO_DEVICE_ATTACH_IOMMUFD_PT));
    assert_eq!(
        *calls[1].arg::<v::vfio_device_attach_iommufd_pt>(),
        v::vfio_device_attach_iommufd_pt {
            argsz: 16,
            flags: 0,
            pt_id: 4,
            pasid: 0,
        }
    );
}

#[test]
fn attach_pasid_sets_flag_and_pasid() {
    let be = backend();
    let dev = bind(&be, 3);
    fake::fail_next(libc::EINVAL);
    let pasid = Pasid::new(0x42).unwrap();

    let e = be
        .attach(dev, Some(pasid), PtId::Hwpt(HwptId(4)))
        .unwrap_err();

    assert_eq!(e, err(HostOp::Attach, libc::EINVAL));
    let call = only_call();
    let arg = call.arg::<v::vfio_device_attach_iommufd_pt>();
    assert_eq!((arg.flags, arg.pt_id, arg.pasid), (1, 4, 0x42));
}

#[test]
fn detach_then_attach_counts_as_attach() {
    let be = backend();
    let dev = bind(&be, 3);
    let pasid = Pasid::new(7).unwrap();
    be.attach(dev, Some(pasid), PtId::Ioas(IoasId(2))).unwrap();
    be.detach(dev, Some(pasid)).unwrap();
    fake::fail_next(libc::EIO);

    let e = be
        .attach(dev, Some(pasid), PtId::Ioas(IoasId(2)))
        .unwrap_err();

    assert_eq!(e.op, HostOp::Attach);
    let calls = fake::take_calls();
    assert_eq!(calls[1].req(), Some(nr::VFIO_DEVICE_DETACH_IOMMUFD_PT));
    assert_eq!(
        *calls[1].arg::<v::vfio_device_detach_iommufd_pt>(),
        v::vfio_device_detach_iommufd_pt {
            argsz: 12,
            flags: 1,
            pasid: 7,
        }
    );
}

#[test]
fn attach_unknown_device_enoent_without_call() {
    let be = backend();
    assert_eq!(
        be.attach(DevId(9), None, PtId::Ioas(IoasId(1)))
            .unwrap_err(),
        err(HostOp::Attach, libc::ENOENT)
    );
    assert!(fake::take_calls().is_empty());
}

#[test]
fn destroy_busy_object_reports_ebusy() {
    let be = backend();
    fake::fail_next(libc::EBUSY);
    assert_eq!(
        be.destroy(ObjectId::Hwpt(HwptId(4))).unwrap_err(),
        err(HostOp::Destroy, libc::EBUSY)
    );
    let call = only_call();
    assert_eq!(call.req(), Some(nr::IOMMU_DESTROY));
    assert_eq!(
        *call.arg::<k::iommu_destroy>(),
        k::iommu_destroy { size: 8, id: 4 }
    );
}

#[test]
fn destroy_veventq_closes_fd_before_destroy() {
    let be = Arc::new(backend());
    let (q, _) = smmu_queue(&be);
    let seen = Arc::clone(&be);
    fake::reply(move |a: &mut k::iommu_destroy| {
        assert_eq!(a.id, 20);
        // The queue (and its file) is gone when the kernel is asked.
        assert_eq!(seen.veventq_read(q, 1).unwrap_err().errno, Errno::ENOENT);
        Ok(0)
    });

    be.destroy(ObjectId::Veventq(q)).unwrap();

    assert_eq!(fake::take_calls().len(), 1);
}

#[test]
fn destroy_fault_queue_forgets_fd() {
    let be = backend();
    let q = fault_queue(&be);
    be.destroy(ObjectId::FaultQueue(q)).unwrap();
    assert_eq!(
        be.fault_read(q).unwrap_err(),
        err(HostOp::FaultRead, libc::ENOENT)
    );
}

#[test]
fn debug_lists_table_sizes() {
    let be = backend();
    bind(&be, 1);
    let s = format!("{be:?}");
    assert!(s.contains("devices: 1"), "{s}");
}
