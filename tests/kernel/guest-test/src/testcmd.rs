//! The kernel's selftest ioctl, `IOMMU_TEST_CMD`
//! (`drivers/iommu/iommufd/iommufd_test.h`, built with
//! `CONFIG_IOMMUFD_TEST`): mock devices behind a mock IOMMU, usable without
//! VFIO, and the hooks that make them fault, report events or dirty pages.

use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `IOMMUFD_TYPE` (`';'`).
const IOMMUFD_TYPE: u64 = b';' as u64;
/// `IOMMUFD_CMD_BASE + 32`.
const IOMMUFD_CMD_TEST: u64 = 0x80 + 32;
/// `IOMMU_TEST_CMD`: `_IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32)`.
pub const IOMMU_TEST_CMD: u64 = (IOMMUFD_TYPE << 8) | IOMMUFD_CMD_TEST;

/// Test ops (the anonymous enum at the top of `iommufd_test.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// `IOMMU_TEST_OP_MD_CHECK_REFS`.
    MdCheckRefs = 4,
    /// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`.
    MockDomainReplace = 10,
    /// `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`.
    MockDomainFlags = 12,
    /// `IOMMU_TEST_OP_DIRTY`.
    Dirty = 13,
    /// `IOMMU_TEST_OP_TRIGGER_IOPF`.
    TriggerIopf = 15,
    /// `IOMMU_TEST_OP_TRIGGER_VEVENT`.
    TriggerVevent = 17,
    /// `IOMMU_TEST_OP_PASID_ATTACH`.
    PasidAttach = 18,
    /// `IOMMU_TEST_OP_PASID_REPLACE`.
    PasidReplace = 19,
    /// `IOMMU_TEST_OP_PASID_DETACH`.
    PasidDetach = 20,
    /// `IOMMU_TEST_OP_PASID_CHECK_HWPT`.
    PasidCheckHwpt = 21,
}

/// `MOCK_FLAGS_DEVICE_PASID`: the mock device supports PASIDs.
pub const MOCK_FLAGS_DEVICE_PASID: u32 = 1 << 2;
/// `MOCK_APERTURE_START`.
pub const MOCK_APERTURE_START: u64 = 1 << 24;
/// `MOCK_APERTURE_LAST`.
pub const MOCK_APERTURE_LAST: u64 = (1 << 31) - 1;
/// `MOCK_PAGE_SIZE`: the mock domain's smallest page.
pub const MOCK_PAGE_SIZE: u64 = 2048;
/// `MOCK_PASID_WIDTH`.
pub const MOCK_PASID_WIDTH: u8 = 20;
/// `IOMMU_HW_INFO_TYPE_SELFTEST`.
pub const HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;
/// `IOMMU_HW_INFO_SELFTEST_REGVAL`.
pub const HW_INFO_SELFTEST_REGVAL: u32 = 0xdead_beef;
/// `IOMMU_HWPT_DATA_SELFTEST`.
pub const HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `IOMMU_TEST_IOTLB_DEFAULT`.
pub const IOTLB_DEFAULT: u32 = 0xbad_beef;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`.
pub const INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_TEST_INVALIDATE_FLAG_ALL`.
pub const INVALIDATE_FLAG_ALL: u32 = 1;
/// `MOCK_NESTED_DOMAIN_IOTLB_ID_MAX`.
pub const IOTLB_ID_MAX: u32 = 3;
/// `IOMMU_VIOMMU_TYPE_SELFTEST`.
pub const VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_VEVENTQ_TYPE_SELFTEST`.
pub const VEVENTQ_TYPE_SELFTEST: u32 = 0xbeef_beef;

/// `struct iommu_test_cmd`: a 16-byte header, a 48-byte union of per-op
/// arguments (its largest member is `dirty`: a `__u32`, padding and five
/// `__aligned_u64`) at offset 16, and `__u32 last` at offset 64; 72 bytes
/// with tail padding. The union is kept as bytes with typed accessors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IommuTestCmd {
    size: u32,
    op: u32,
    id: u32,
    reserved: u32,
    args: [u64; 6],
    last: u32,
    pad: u32,
}

const _: () = assert!(size_of::<IommuTestCmd>() == 72);
const _: () = assert!(offset_of!(IommuTestCmd, args) == 16);
const _: () = assert!(offset_of!(IommuTestCmd, last) == 64);

impl IommuTestCmd {
    /// A command for `op` on object `id`.
    pub fn new(op: Op, id: u32) -> Self {
        IommuTestCmd {
            size: size_of::<Self>() as u32,
            op: op as u32,
            id,
            ..Default::default()
        }
    }

    /// Sets the `__u32` at byte `off` of the union.
    pub fn set_u32(&mut self, off: usize, v: u32) -> &mut Self {
        let word = &mut self.args[off / 8];
        let shift = (off % 8) * 8;
        *word = (*word & !(0xffff_ffff << shift)) | (u64::from(v) << shift);
        self
    }

    /// Sets the `__u64` at byte `off` (a multiple of 8) of the union.
    pub fn set_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.args[off / 8] = v;
        self
    }

    /// The `__u32` at byte `off` of the union.
    pub fn u32_at(&self, off: usize) -> u32 {
        (self.args[off / 8] >> ((off % 8) * 8)) as u32
    }

    /// Issues the command on an iommufd; the errno on failure.
    pub fn run(&mut self, iommufd: BorrowedFd<'_>) -> Result<(), i32> {
        // SAFETY: `self` is a live, exclusively borrowed `#[repr(C)]`
        // structure laid out as `struct iommu_test_cmd` (asserted above);
        // the kernel reads and writes at most `size` bytes of it. Pointers
        // the selected op makes the kernel follow (`uptr` fields) are set by
        // the callers in this crate to buffers they keep alive and large
        // enough across the call.
        let r = unsafe { libc::ioctl(iommufd.as_raw_fd(), IOMMU_TEST_CMD as _, self as *mut Self) };
        if r < 0 {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cmd_layout_matches_header() {
        assert_eq!(size_of::<IommuTestCmd>(), 72);
        assert_eq!(IOMMU_TEST_CMD, 0x3ba0);
    }

    #[test]
    fn set_u32_upper_half_keeps_lower() {
        let mut c = IommuTestCmd::new(Op::MockDomainFlags, 1);
        c.set_u32(0, 7).set_u32(4, 9).set_u64(8, u64::MAX);
        assert_eq!((c.u32_at(0), c.u32_at(4)), (7, 9));
        assert_eq!((c.u32_at(8), c.u32_at(12)), (u32::MAX, u32::MAX));
    }
}
