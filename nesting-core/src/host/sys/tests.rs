//! ioctl numbers and structure layouts, checked against numbers derived by
//! hand from the Linux 7.2 uAPI headers (`include/uapi/linux/iommufd.h`,
//! `include/uapi/linux/vfio.h`), so that a bindings crate drifting from the
//! kernel fails here rather than in a guest.

use std::mem::{align_of, offset_of, size_of};
use std::os::fd::AsFd;

use super::*;

// `_IO(';', nr)` = 0x3b00 | nr. iommufd.h: IOMMUFD_CMD_BASE = 0x80 and the
// commands follow in enum order; vfio.h: VFIO_BASE = 100, so BIND (+18) is
// 118 = 0x76, ATTACH (+19) 0x77, DETACH (+20) 0x78.
#[test]
fn ioctl_numbers_match_uapi_header_values() {
    let expected: [(u64, u64); 20] = [
        (nr::IOMMU_DESTROY, 0x3b80),
        (nr::IOMMU_IOAS_ALLOC, 0x3b81),
        (nr::IOMMU_IOAS_ALLOW_IOVAS, 0x3b82),
        (nr::IOMMU_IOAS_COPY, 0x3b83),
        (nr::IOMMU_IOAS_IOVA_RANGES, 0x3b84),
        (nr::IOMMU_IOAS_MAP, 0x3b85),
        (nr::IOMMU_IOAS_UNMAP, 0x3b86),
        (nr::IOMMU_HWPT_ALLOC, 0x3b89),
        (nr::IOMMU_GET_HW_INFO, 0x3b8a),
        (nr::IOMMU_HWPT_SET_DIRTY_TRACKING, 0x3b8b),
        (nr::IOMMU_HWPT_GET_DIRTY_BITMAP, 0x3b8c),
        (nr::IOMMU_HWPT_INVALIDATE, 0x3b8d),
        (nr::IOMMU_FAULT_QUEUE_ALLOC, 0x3b8e),
        (nr::IOMMU_IOAS_MAP_FILE, 0x3b8f),
        (nr::IOMMU_VIOMMU_ALLOC, 0x3b90),
        (nr::IOMMU_VDEVICE_ALLOC, 0x3b91),
        (nr::IOMMU_VEVENTQ_ALLOC, 0x3b93),
        (nr::VFIO_DEVICE_BIND_IOMMUFD, 0x3b76),
        (nr::VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77),
        (nr::VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78),
    ];
    for (i, (got, want)) in expected.into_iter().enumerate() {
        assert_eq!(got, want, "entry {i}: {got:#x} != {want:#x}");
    }
}

#[test]
fn io_macro_packs_type_and_nr_only() {
    assert_eq!(nr::io(b';', 0x85), 0x3b85);
    assert_eq!(nr::io(0, 0), 0);
}

// Flag and enum values the backend writes or decodes.
#[test]
fn uapi_constants_match_header_values() {
    assert_eq!(k::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA, 1);
    assert_eq!(k::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE, 2);
    assert_eq!(k::iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE, 4);
    assert_eq!(k::iommu_hwpt_data_type_IOMMU_HWPT_DATA_VTD_S1, 1);
    assert_eq!(k::iommu_hwpt_data_type_IOMMU_HWPT_DATA_ARM_SMMUV3, 2);
    assert_eq!(k::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_INTEL_VTD, 1);
    assert_eq!(k::iommu_hw_info_type_IOMMU_HW_INFO_TYPE_ARM_SMMUV3, 2);
    assert_eq!(
        k::iommu_hwpt_invalidate_data_type_IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
        0
    );
    assert_eq!(
        k::iommu_hwpt_invalidate_data_type_IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3,
        1
    );
    assert_eq!(
        k::iommu_hwpt_vtd_s1_invalidate_flags_IOMMU_VTD_INV_FLAGS_LEAF,
        1
    );
    assert_eq!(k::iommu_viommu_type_IOMMU_VIOMMU_TYPE_ARM_SMMUV3, 1);
    assert_eq!(k::iommu_veventq_type_IOMMU_VEVENTQ_TYPE_ARM_SMMUV3, 1);
    assert_eq!(k::iommu_veventq_flag_IOMMU_VEVENTQ_FLAG_LOST_EVENTS, 1);
    assert_eq!(k::iommu_hwpt_pgfault_flags_IOMMU_PGFAULT_FLAGS_LAST_PAGE, 2);
    assert_eq!(k::iommufd_page_response_code_IOMMUFD_PAGE_RESP_INVALID, 1);
    assert_eq!(
        k::iommufd_hwpt_set_dirty_tracking_flags_IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
        1
    );
    assert_eq!(
        k::iommufd_hwpt_get_dirty_bitmap_flags_IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
        1
    );
    assert_eq!(v::VFIO_DEVICE_ATTACH_PASID, 1);
    assert_eq!(v::VFIO_DEVICE_DETACH_PASID, 1);
}

/// Asserts size, alignment and field offsets of a kernel structure.
macro_rules! layout {
    ($t:ty, size $size:expr, align $align:expr, { $($field:ident @ $off:expr),* $(,)? }) => {{
        assert_eq!(size_of::<$t>(), $size, "sizeof({})", stringify!($t));
        assert_eq!(align_of::<$t>(), $align, "alignof({})", stringify!($t));
        $(
            assert_eq!(
                offset_of!($t, $field), $off,
                "offsetof({}, {})", stringify!($t), stringify!($field)
            );
        )*
    }};
}

#[test]
fn iommufd_ioas_structs_match_uapi_layout() {
    layout!(k::iommu_destroy, size 8, align 4, { size @ 0, id @ 4 });
    layout!(k::iommu_ioas_alloc, size 12, align 4, { size @ 0, flags @ 4, out_ioas_id @ 8 });
    layout!(k::iommu_iova_range, size 16, align 8, { start @ 0, last @ 8 });
    layout!(k::iommu_ioas_iova_ranges, size 32, align 8, {
        size @ 0, ioas_id @ 4, num_iovas @ 8, __reserved @ 12,
        allowed_iovas @ 16, out_iova_alignment @ 24,
    });
    layout!(k::iommu_ioas_allow_iovas, size 24, align 8, {
        size @ 0, ioas_id @ 4, num_iovas @ 8, __reserved @ 12, allowed_iovas @ 16,
    });
    layout!(k::iommu_ioas_map, size 40, align 8, {
        size @ 0, flags @ 4, ioas_id @ 8, __reserved @ 12,
        user_va @ 16, length @ 24, iova @ 32,
    });
    layout!(k::iommu_ioas_map_file, size 40, align 8, {
        size @ 0, flags @ 4, ioas_id @ 8, fd @ 12, start @ 16, length @ 24, iova @ 32,
    });
    layout!(k::iommu_ioas_copy, size 40, align 8, {
        size @ 0, flags @ 4, dst_ioas_id @ 8, src_ioas_id @ 12,
        length @ 16, dst_iova @ 24, src_iova @ 32,
    });
    layout!(k::iommu_ioas_unmap, size 24, align 8, {
        size @ 0, ioas_id @ 4, iova @ 8, length @ 16,
    });
}

#[test]
fn iommufd_hwpt_structs_match_uapi_layout() {
    layout!(k::iommu_hwpt_vtd_s1, size 24, align 8, {
        flags @ 0, pgtbl_addr @ 8, addr_width @ 16, __reserved @ 20,
    });
    layout!(k::iommu_hwpt_arm_smmuv3, size 16, align 8, { ste @ 0 });
    layout!(k::iommu_hwpt_alloc, size 48, align 8, {
        size @ 0, flags @ 4, dev_id @ 8, pt_id @ 12, out_hwpt_id @ 16, __reserved @ 20,
        data_type @ 24, data_len @ 28, data_uptr @ 32, fault_id @ 40, __reserved2 @ 44,
    });
    layout!(k::iommu_hwpt_set_dirty_tracking, size 16, align 4, {
        size @ 0, flags @ 4, hwpt_id @ 8, __reserved @ 12,
    });
    layout!(k::iommu_hwpt_get_dirty_bitmap, size 48, align 8, {
        size @ 0, hwpt_id @ 4, flags @ 8, __reserved @ 12,
        iova @ 16, length @ 24, page_size @ 32, data @ 40,
    });
    layout!(k::iommu_hwpt_vtd_s1_invalidate, size 24, align 8, {
        addr @ 0, npages @ 8, flags @ 16, __reserved @ 20,
    });
    layout!(k::iommu_viommu_arm_smmuv3_invalidate, size 16, align 8, { cmd @ 0 });
    layout!(k::iommu_hwpt_invalidate, size 32, align 8, {
        size @ 0, hwpt_id @ 4, data_uptr @ 8, data_type @ 16,
        entry_len @ 20, entry_num @ 24, __reserved @ 28,
    });
}

#[test]
fn iommufd_hw_info_structs_match_uapi_layout() {
    layout!(k::iommu_hw_info_vtd, size 24, align 8, {
        flags @ 0, __reserved @ 4, cap_reg @ 8, ecap_reg @ 16,
    });
    layout!(k::iommu_hw_info_arm_smmuv3, size 40, align 4, {
        flags @ 0, __reserved @ 4, idr @ 8, iidr @ 32, aidr @ 36,
    });
    layout!(k::iommu_hw_info_tegra241_cmdqv, size 8, align 4, {
        flags @ 0, version @ 4, log2vcmdqs @ 5, log2vsids @ 6,
    });
    layout!(k::iommu_hw_info_amd, size 16, align 8, { efr @ 0, efr2 @ 8 });
    layout!(k::iommu_hw_info, size 40, align 8, {
        size @ 0, flags @ 4, dev_id @ 8, data_len @ 12, data_uptr @ 16,
        __bindgen_anon_1 @ 24, out_max_pasid_log2 @ 28, __reserved @ 29,
        out_capabilities @ 32,
    });
}

#[test]
fn iommufd_event_structs_match_uapi_layout() {
    layout!(k::iommu_hwpt_pgfault, size 40, align 8, {
        flags @ 0, dev_id @ 4, pasid @ 8, grpid @ 12, perm @ 16, __reserved @ 20,
        addr @ 24, length @ 32, cookie @ 36,
    });
    layout!(k::iommu_hwpt_page_response, size 8, align 4, { cookie @ 0, code @ 4 });
    layout!(k::iommu_fault_alloc, size 16, align 4, {
        size @ 0, flags @ 4, out_fault_id @ 8, out_fault_fd @ 12,
    });
    layout!(k::iommufd_vevent_header, size 8, align 4, { flags @ 0, sequence @ 4 });
    layout!(k::iommu_vevent_arm_smmuv3, size 32, align 8, { evt @ 0 });
    layout!(k::iommu_veventq_alloc, size 32, align 4, {
        size @ 0, flags @ 4, viommu_id @ 8, type_ @ 12, veventq_depth @ 16,
        out_veventq_id @ 20, out_veventq_fd @ 24, __reserved @ 28,
    });
}

#[test]
fn iommufd_viommu_structs_match_uapi_layout() {
    layout!(k::iommu_viommu_alloc, size 40, align 8, {
        size @ 0, flags @ 4, type_ @ 8, dev_id @ 12, hwpt_id @ 16,
        out_viommu_id @ 20, data_len @ 24, __reserved @ 28, data_uptr @ 32,
    });
    layout!(k::iommu_vdevice_alloc, size 24, align 8, {
        size @ 0, viommu_id @ 4, dev_id @ 8, out_vdevice_id @ 12, virt_id @ 16,
    });
}

#[test]
fn vfio_cdev_structs_match_uapi_layout() {
    layout!(v::vfio_device_bind_iommufd, size 24, align 8, {
        argsz @ 0, flags @ 4, iommufd @ 8, out_devid @ 12, token_uuid_ptr @ 16,
    });
    layout!(v::vfio_device_attach_iommufd_pt, size 16, align 4, {
        argsz @ 0, flags @ 4, pt_id @ 8, pasid @ 12,
    });
    layout!(v::vfio_device_detach_iommufd_pt, size 12, align 4, {
        argsz @ 0, flags @ 4, pasid @ 8,
    });
}

fn devnull() -> std::fs::File {
    std::fs::File::open("/dev/null").unwrap()
}

fn devnull_iommufd() -> IommuFd {
    IommuFd::new_from_fd(devnull())
}

#[test]
fn ioctl_with_buf_buffer_smaller_than_extent_einval_without_call() {
    fake::reset();
    let mut arg = k::iommu_ioas_iova_ranges {
        num_iovas: 2,
        ..Default::default()
    };
    let mut buf = [k::iommu_iova_range::default(); 1];
    let f = devnull_iommufd();
    let e = ioctl_buf(&f, &mut arg, &mut buf).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(fake::take_calls().is_empty());
}

#[test]
fn ioctl_with_buf_sets_pointer_to_buffer() {
    fake::reset();
    let mut arg = k::iommu_hw_info {
        data_len: 8,
        ..Default::default()
    };
    let mut buf = [0u8; 8];
    let f = devnull_iommufd();
    ioctl_buf(&f, &mut arg, &mut buf).unwrap();
    assert_eq!(arg.data_uptr, buf.as_ptr() as u64);
}

#[test]
fn dirty_bitmap_extent_non_power_of_two_page_einval() {
    let arg = k::iommu_hwpt_get_dirty_bitmap {
        length: 0x3000,
        page_size: 0x3000,
        ..Default::default()
    };
    assert_eq!(arg.extent().unwrap_err().raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn dirty_bitmap_extent_rounds_up_to_u64_words() {
    let arg = k::iommu_hwpt_get_dirty_bitmap {
        length: 65 * 0x1000,
        page_size: 0x1000,
        ..Default::default()
    };
    assert_eq!(arg.extent().unwrap(), 16);
}

#[test]
fn invalidate_extent_max_counts_is_product() {
    let arg = k::iommu_hwpt_invalidate {
        entry_len: u32::MAX,
        entry_num: u32::MAX,
        ..Default::default()
    };
    // u32::MAX^2 fits in u64 (and usize on 64-bit hosts): the buffer
    // length check in `prepare`, not an overflow, rejects such a call.
    assert_eq!(
        arg.extent().unwrap() as u64,
        u64::from(u32::MAX) * u64::from(u32::MAX)
    );
}

#[test]
fn bind_with_token_flag_rejected() {
    fake::reset();
    let mut arg = v::vfio_device_bind_iommufd {
        flags: v::VFIO_DEVICE_BIND_FLAG_TOKEN,
        ..Default::default()
    };
    let f = devnull();
    let e = device_ioctl(f.as_fd(), &mut arg).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(fake::take_calls().is_empty());
}

#[test]
fn hw_info_out_type_reads_union() {
    let mut info = k::iommu_hw_info::default();
    info.__bindgen_anon_1.out_data_type = 2;
    assert_eq!(hw_info_out_type(&info), 2);
}

#[test]
fn take_inherited_fd_negative_or_closed_is_ebadf() {
    assert_eq!(
        super::take_inherited_fd(-1).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    assert_eq!(
        super::take_inherited_fd(1_000_000)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EBADF)
    );
}

#[test]
fn take_inherited_fd_twice_is_ebusy() {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open("/dev/null").unwrap();
    let raw = f.as_raw_fd();
    let _owned = super::take_inherited_fd(raw).unwrap();
    assert_eq!(
        super::take_inherited_fd(raw).unwrap_err().raw_os_error(),
        Some(libc::EBUSY)
    );
}

#[test]
fn crate_errno_keeps_kernel_errno_else_eio() {
    use vmm_sys_util::errno::Error as SysError;
    let kernel = IommufdError::IommuIoasAlloc(SysError::new(libc::ENOSPC));
    assert_eq!(crate_errno(kernel).raw_os_error(), Some(libc::ENOSPC));
    let kernel = IommufdError::IommuHwptInvalidate(SysError::new(libc::EIO));
    assert_eq!(crate_errno(kernel).raw_os_error(), Some(libc::EIO));
    let none = IommufdError::HwQueueUnsupported;
    assert_eq!(crate_errno(none).raw_os_error(), Some(libc::EIO));
}

/// The crate's wrappers, called as `real` calls them, on a file that is
/// no iommufd: the kernel answers ENOTTY before reading the argument, and
/// the errno arrives intact.
#[test]
fn crate_routes_on_dev_null_report_enotty() {
    fn errno_of<T: IoctlArg + Default>() -> Option<i32> {
        let Via::IommufdIoctls(f) = T::VIA else {
            panic!("{} is not routed through iommufd-ioctls", T::REQ)
        };
        let e = f(&devnull_iommufd(), &mut T::default()).unwrap_err();
        crate_errno(e).raw_os_error()
    }
    assert_eq!(errno_of::<k::iommu_ioas_alloc>(), Some(libc::ENOTTY));
    assert_eq!(errno_of::<k::iommu_ioas_unmap>(), Some(libc::ENOTTY));
    assert_eq!(errno_of::<k::iommu_destroy>(), Some(libc::ENOTTY));
    assert_eq!(errno_of::<k::iommu_vdevice_alloc>(), Some(libc::ENOTTY));
}

/// Every request routed through the crate: its number there is ours (a
/// crate release renumbering one would fail here).
#[test]
fn crate_request_numbers_match_ours() {
    // `c_ulong` is `u64` on 64-bit Linux only.
    #[allow(clippy::useless_conversion)]
    fn num(f: fn() -> std::os::raw::c_ulong) -> u64 {
        u64::from(f())
    }
    let pairs = [
        (num(iommufd_ioctls::IOMMU_DESTROY), nr::IOMMU_DESTROY),
        (num(iommufd_ioctls::IOMMU_IOAS_ALLOC), nr::IOMMU_IOAS_ALLOC),
        (num(iommufd_ioctls::IOMMU_IOAS_UNMAP), nr::IOMMU_IOAS_UNMAP),
        (num(iommufd_ioctls::IOMMU_HWPT_ALLOC), nr::IOMMU_HWPT_ALLOC),
        (
            num(iommufd_ioctls::IOMMUFD_GET_HW_INFO),
            nr::IOMMU_GET_HW_INFO,
        ),
        (
            num(iommufd_ioctls::IOMMUFD_HWPT_INVALIDATE),
            nr::IOMMU_HWPT_INVALIDATE,
        ),
        (
            num(iommufd_ioctls::IOMMU_VIOMMU_ALLOC),
            nr::IOMMU_VIOMMU_ALLOC,
        ),
        (
            num(iommufd_ioctls::IOMMU_VDEVICE_ALLOC),
            nr::IOMMU_VDEVICE_ALLOC,
        ),
        (
            num(iommufd_ioctls::IOMMU_VEVENTQ_ALLOC),
            nr::IOMMU_VEVENTQ_ALLOC,
        ),
    ];
    for (theirs, ours) in pairs {
        assert_eq!(theirs, ours, "{theirs:#x} != {ours:#x}");
    }
}

/// The route of every argument type, as docs/host-ioctls.md tables it.
#[test]
fn routes_match_the_comparison_table() {
    let crate_ = "iommufd-ioctls";
    let routes = [
        (k::iommu_destroy::REQ, k::iommu_destroy::VIA.name(), crate_),
        (
            k::iommu_ioas_alloc::REQ,
            k::iommu_ioas_alloc::VIA.name(),
            crate_,
        ),
        (k::iommu_ioas_map::REQ, k::iommu_ioas_map::VIA.name(), "own"),
        (
            k::iommu_ioas_map_file::REQ,
            k::iommu_ioas_map_file::VIA.name(),
            "own",
        ),
        (
            k::iommu_ioas_copy::REQ,
            k::iommu_ioas_copy::VIA.name(),
            "own",
        ),
        (
            k::iommu_ioas_unmap::REQ,
            k::iommu_ioas_unmap::VIA.name(),
            crate_,
        ),
        (
            k::iommu_hwpt_set_dirty_tracking::REQ,
            k::iommu_hwpt_set_dirty_tracking::VIA.name(),
            "own",
        ),
        (
            k::iommu_vdevice_alloc::REQ,
            k::iommu_vdevice_alloc::VIA.name(),
            crate_,
        ),
        (
            k::iommu_fault_alloc::REQ,
            k::iommu_fault_alloc::VIA.name(),
            "own",
        ),
        (k::iommu_hw_info::REQ, k::iommu_hw_info::VIA.name(), crate_),
        (
            k::iommu_ioas_iova_ranges::REQ,
            k::iommu_ioas_iova_ranges::VIA.name(),
            "own",
        ),
        (
            k::iommu_ioas_allow_iovas::REQ,
            k::iommu_ioas_allow_iovas::VIA.name(),
            "own",
        ),
        (
            k::iommu_hwpt_alloc::REQ,
            k::iommu_hwpt_alloc::VIA.name(),
            crate_,
        ),
        (
            k::iommu_viommu_alloc::REQ,
            k::iommu_viommu_alloc::VIA.name(),
            crate_,
        ),
        (
            k::iommu_hwpt_invalidate::REQ,
            k::iommu_hwpt_invalidate::VIA.name(),
            crate_,
        ),
        (
            k::iommu_hwpt_get_dirty_bitmap::REQ,
            k::iommu_hwpt_get_dirty_bitmap::VIA.name(),
            "own",
        ),
    ];
    for (req, got, want) in routes {
        assert_eq!(got, want, "request {req:#x}");
    }
}

#[test]
fn iommufd_fd_borrows_the_crate_descriptor() {
    let f = devnull_iommufd();
    assert_eq!(iommufd_fd(&f).as_raw_fd(), f.as_raw_fd());
}
