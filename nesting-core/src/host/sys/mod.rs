//! The system-call layer of the real backend: the only `unsafe` code of the
//! project.
//!
//! Three thin, safe functions over `ioctl(2)`, `read(2)` and `write(2)`, one
//! that takes ownership of a file descriptor the kernel returned, and the
//! ioctl numbers. The argument types are sealed: only the kernel structures
//! listed here can be handed to the kernel, and a structure that makes the
//! kernel follow a pointer can only be passed together with the buffer that
//! pointer must designate ([`ioctl_with_buf`] sets the pointer itself after
//! checking the buffer is large enough for what the structure announces).
//!
//! Under `cfg(test)` the [`fake`] twin replaces [`real`] with the same
//! signatures: it records every call and replays the kernel's scripted
//! answers, so that the backend logic is tested without `/dev/iommu`.

use std::fmt;
use std::io;
use std::mem::size_of_val;

use iommufd_bindings::iommufd as k;
use vfio_bindings::bindings::vfio as v;

#[cfg(test)]
pub mod fake;
#[cfg(not(test))]
mod real;

#[cfg(test)]
pub use fake::{adopt_fd, ioctl_with_buf, ioctl_with_mut, own_inherited_fd, read_into, write_all};
#[cfg(not(test))]
pub use real::{adopt_fd, ioctl_with_buf, ioctl_with_mut, own_inherited_fd, read_into, write_all};

/// Descriptor numbers already taken by [`take_inherited_fd`].
static INHERITED: std::sync::Mutex<std::collections::BTreeSet<std::os::fd::RawFd>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Takes ownership of a descriptor inherited from the parent process, such
/// as `/dev/iommu` or a VFIO cdev opened by libvirt and passed to a VMM
/// that may not open them itself. EBADF if the number is negative or not
/// open; EBUSY if this process already took it (two owners would close it
/// twice).
pub fn take_inherited_fd(raw: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let mut taken = INHERITED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if taken.contains(&raw) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    let fd = own_inherited_fd(raw)?;
    taken.insert(raw);
    Ok(fd)
}

mod sealed {
    /// Implemented only in this module: keeps arbitrary types away from the
    /// kernel.
    pub trait Sealed {}
}

/// A kernel ioctl argument without a pointer the kernel follows (or whose
/// pointer is disabled by its flags, see [`IoctlArg::check`]).
pub trait IoctlArg: sealed::Sealed + Copy + fmt::Debug + 'static {
    /// Rejects values that would make the kernel follow a pointer.
    fn check(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A kernel ioctl argument with one user pointer, passed with its buffer.
pub trait IoctlBufArg: sealed::Sealed + Copy + fmt::Debug + 'static {
    /// Bytes the kernel may access through the pointer, as the length and
    /// count fields of the argument currently say.
    fn extent(&self) -> io::Result<usize>;
    /// Points the argument at the buffer.
    fn set_ptr(&mut self, ptr: u64);
}

/// Data the kernel may read or write through a user pointer: integers only,
/// so that every bit pattern the kernel writes is a valid value.
pub trait Payload: sealed::Sealed + Copy + fmt::Debug + 'static {}

macro_rules! sealed_impl {
    ($trait:ident: $($t:ty),* $(,)?) => {
        $(
            impl sealed::Sealed for $t {}
            impl $trait for $t {}
        )*
    };
}

sealed_impl!(IoctlArg:
    k::iommu_destroy,
    k::iommu_ioas_alloc,
    // `user_va` is pinned and handed to devices for DMA, never dereferenced
    // by the CPU on our behalf: what it designates is the caller's contract
    // (`MapSource::UserVa`), as with every VMM's guest memory.
    k::iommu_ioas_map,
    k::iommu_ioas_map_file,
    k::iommu_ioas_copy,
    k::iommu_ioas_unmap,
    k::iommu_hwpt_set_dirty_tracking,
    k::iommu_vdevice_alloc,
    k::iommu_veventq_alloc,
    k::iommu_fault_alloc,
    v::vfio_device_attach_iommufd_pt,
    v::vfio_device_detach_iommufd_pt,
);

sealed_impl!(Payload:
    u8,
    u64,
    k::iommu_iova_range,
    k::iommu_hwpt_vtd_s1,
    k::iommu_hwpt_arm_smmuv3,
    k::iommu_hwpt_vtd_s1_invalidate,
    k::iommu_viommu_arm_smmuv3_invalidate,
);

impl sealed::Sealed for v::vfio_device_bind_iommufd {}
impl IoctlArg for v::vfio_device_bind_iommufd {
    /// `token_uuid_ptr` is read by the kernel only with
    /// `VFIO_DEVICE_BIND_FLAG_TOKEN`, which this layer does not pass.
    fn check(&self) -> io::Result<()> {
        if self.flags & v::VFIO_DEVICE_BIND_FLAG_TOKEN != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

fn mul(a: u64, b: u64) -> io::Result<usize> {
    to_usize(
        a.checked_mul(b)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?,
    )
}

const RANGE_LEN: u64 = size_of::<k::iommu_iova_range>() as u64;

macro_rules! buf_arg {
    ($t:ty, $ptr:ident, |$s:ident| $extent:expr) => {
        impl sealed::Sealed for $t {}
        impl IoctlBufArg for $t {
            fn extent(&self) -> io::Result<usize> {
                let $s = self;
                $extent
            }
            fn set_ptr(&mut self, ptr: u64) {
                self.$ptr = ptr;
            }
        }
    };
}

buf_arg!(k::iommu_hw_info, data_uptr, |s| Ok(s.data_len as usize));
buf_arg!(k::iommu_ioas_iova_ranges, allowed_iovas, |s| mul(
    u64::from(s.num_iovas),
    RANGE_LEN
));
buf_arg!(k::iommu_ioas_allow_iovas, allowed_iovas, |s| mul(
    u64::from(s.num_iovas),
    RANGE_LEN
));
buf_arg!(k::iommu_hwpt_alloc, data_uptr, |s| Ok(s.data_len as usize));
buf_arg!(
    k::iommu_viommu_alloc,
    data_uptr,
    |s| Ok(s.data_len as usize)
);
buf_arg!(k::iommu_hwpt_invalidate, data_uptr, |s| mul(
    u64::from(s.entry_len),
    u64::from(s.entry_num)
));
// The kernel writes one bit per `1 << __ffs(page_size)` bytes of `length`
// (drivers/iommu/iommufd/iova_bitmap.c), so a page size that is not a power
// of two would make it write more bits than `length / page_size`.
buf_arg!(k::iommu_hwpt_get_dirty_bitmap, data, |s| {
    if !s.page_size.is_power_of_two() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let bits = s.length.div_ceil(s.page_size);
    mul(bits.div_ceil(64), 8)
});

/// Checks that `buf` holds what `arg` announces and points `arg` at it.
/// Shared by [`real`] and [`fake`] so that the tests exercise it.
fn prepare<T: IoctlBufArg, P: Payload>(arg: &mut T, buf: &mut [P]) -> io::Result<()> {
    if arg.extent()? > size_of_val(buf) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    arg.set_ptr(buf.as_mut_ptr() as u64);
    Ok(())
}

/// `out_data_type` of `IOMMU_GET_HW_INFO`, which shares a union with
/// `in_data_type`.
pub fn hw_info_out_type(info: &k::iommu_hw_info) -> u32 {
    // SAFETY: both members of the union are `__u32`, so whichever the kernel
    // or the caller wrote last, the four bytes are a valid `u32`.
    unsafe { info.__bindgen_anon_1.out_data_type }
}

/// ioctl request numbers.
///
/// iommufd and VFIO define theirs with `_IO(type, nr)`, which carries no
/// direction or size: `(type << 8) | nr` (include/uapi/asm-generic/ioctl.h
/// with `_IOC_NONE` = 0 and `_IOC_TYPESHIFT` = 8).
pub mod nr {
    use super::{k, v};

    /// `_IO(ty, nr)`.
    pub const fn io(ty: u8, nr: u32) -> u64 {
        ((ty as u64) << k::_IOC_TYPESHIFT) | (nr as u64) << k::_IOC_NRSHIFT
    }

    const fn iommu(cmd: u32) -> u64 {
        io(k::IOMMUFD_TYPE, cmd)
    }

    /// `IOMMU_DESTROY`.
    pub const IOMMU_DESTROY: u64 = iommu(k::IOMMUFD_CMD_DESTROY);
    /// `IOMMU_IOAS_ALLOC`.
    pub const IOMMU_IOAS_ALLOC: u64 = iommu(k::IOMMUFD_CMD_IOAS_ALLOC);
    /// `IOMMU_IOAS_ALLOW_IOVAS`.
    pub const IOMMU_IOAS_ALLOW_IOVAS: u64 = iommu(k::IOMMUFD_CMD_IOAS_ALLOW_IOVAS);
    /// `IOMMU_IOAS_COPY`.
    pub const IOMMU_IOAS_COPY: u64 = iommu(k::IOMMUFD_CMD_IOAS_COPY);
    /// `IOMMU_IOAS_IOVA_RANGES`.
    pub const IOMMU_IOAS_IOVA_RANGES: u64 = iommu(k::IOMMUFD_CMD_IOAS_IOVA_RANGES);
    /// `IOMMU_IOAS_MAP`.
    pub const IOMMU_IOAS_MAP: u64 = iommu(k::IOMMUFD_CMD_IOAS_MAP);
    /// `IOMMU_IOAS_UNMAP`.
    pub const IOMMU_IOAS_UNMAP: u64 = iommu(k::IOMMUFD_CMD_IOAS_UNMAP);
    /// `IOMMU_HWPT_ALLOC`.
    pub const IOMMU_HWPT_ALLOC: u64 = iommu(k::IOMMUFD_CMD_HWPT_ALLOC);
    /// `IOMMU_GET_HW_INFO`.
    pub const IOMMU_GET_HW_INFO: u64 = iommu(k::IOMMUFD_CMD_GET_HW_INFO);
    /// `IOMMU_HWPT_SET_DIRTY_TRACKING`.
    pub const IOMMU_HWPT_SET_DIRTY_TRACKING: u64 = iommu(k::IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING);
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP`.
    pub const IOMMU_HWPT_GET_DIRTY_BITMAP: u64 = iommu(k::IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP);
    /// `IOMMU_HWPT_INVALIDATE`.
    pub const IOMMU_HWPT_INVALIDATE: u64 = iommu(k::IOMMUFD_CMD_HWPT_INVALIDATE);
    /// `IOMMU_FAULT_QUEUE_ALLOC`.
    pub const IOMMU_FAULT_QUEUE_ALLOC: u64 = iommu(k::IOMMUFD_CMD_FAULT_QUEUE_ALLOC);
    /// `IOMMU_IOAS_MAP_FILE`.
    pub const IOMMU_IOAS_MAP_FILE: u64 = iommu(k::IOMMUFD_CMD_IOAS_MAP_FILE);
    /// `IOMMU_VIOMMU_ALLOC`.
    pub const IOMMU_VIOMMU_ALLOC: u64 = iommu(k::IOMMUFD_CMD_VIOMMU_ALLOC);
    /// `IOMMU_VDEVICE_ALLOC`.
    pub const IOMMU_VDEVICE_ALLOC: u64 = iommu(k::IOMMUFD_CMD_VDEVICE_ALLOC);
    /// `IOMMU_VEVENTQ_ALLOC`.
    pub const IOMMU_VEVENTQ_ALLOC: u64 = iommu(k::IOMMUFD_CMD_VEVENTQ_ALLOC);

    /// `VFIO_DEVICE_BIND_IOMMUFD`: `_IO(VFIO_TYPE, VFIO_BASE + 18)`.
    pub const VFIO_DEVICE_BIND_IOMMUFD: u64 = io(v::VFIO_TYPE, v::VFIO_BASE + 18);
    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: `_IO(VFIO_TYPE, VFIO_BASE + 19)`.
    pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: u64 = io(v::VFIO_TYPE, v::VFIO_BASE + 19);
    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`: `_IO(VFIO_TYPE, VFIO_BASE + 20)`.
    pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: u64 = io(v::VFIO_TYPE, v::VFIO_BASE + 20);
}

#[cfg(test)]
mod tests;
