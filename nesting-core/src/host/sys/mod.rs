//! The system-call layer of the real backend: the only `unsafe` code of the
//! project.
//!
//! Thin, safe functions over `ioctl(2)`, `read(2)` and `write(2)`, one that
//! takes ownership of a file descriptor the kernel returned, and the ioctl
//! numbers. The argument types are sealed: only the kernel structures
//! listed here can be handed to the kernel, each names its request
//! ([`IoctlArg::REQ`]), and a structure that makes the kernel follow a
//! pointer can only be passed together with the buffer that pointer must
//! designate ([`ioctl_buf`] sets the pointer itself after checking the
//! buffer is large enough for what the structure announces).
//!
//! Requests on the iommufd go through the `iommufd-ioctls` crate where it
//! wraps them ([`IoctlArg::VIA`]), after our checks; the others, and every
//! VFIO cdev request, are issued here. `docs/host-ioctls.md` says which and
//! why.
//!
//! Under `cfg(test)` the [`fake`] twin replaces [`real`] with the same
//! signatures: it records every call and replays the kernel's scripted
//! answers, so that the backend logic is tested without `/dev/iommu`.

use std::fmt;
use std::io;
use std::mem::size_of_val;
use std::os::fd::{AsRawFd, BorrowedFd};

use iommufd_bindings::iommufd as k;
use iommufd_ioctls::{IommuFd, IommufdError};
use vfio_bindings::bindings::vfio as v;

#[cfg(test)]
pub mod fake;
#[cfg(not(test))]
mod real;

#[cfg(test)]
pub use fake::{
    adopt_fd, device_ioctl, ioctl, ioctl_buf, own_inherited_fd, read_into, veventq_alloc, write_all,
};
#[cfg(not(test))]
pub use real::{
    adopt_fd, device_ioctl, ioctl, ioctl_buf, own_inherited_fd, read_into, veventq_alloc, write_all,
};

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

/// The descriptor of an iommufd-ioctls `IommuFd`, borrowed for as long as
/// the `IommuFd` is (the crate implements only `AsRawFd`).
pub fn iommufd_fd(fd: &IommuFd) -> BorrowedFd<'_> {
    // SAFETY: `IommuFd` owns its descriptor (a private `File`, from
    // `/dev/iommu` or handed over by `new_from_fd`) and closes it only when
    // dropped (iommufd-ioctls 0.4 `iommufd_ioctls.rs`: no other method
    // closes or replaces it); the returned borrow is tied to `&IommuFd`, so
    // the descriptor stays open for all of its lifetime.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// A vfio-ioctls device handed to the backend without giving it up: the
/// backend keeps a clone of the `Arc`, so the device (and its cdev file)
/// lives until both the VMM and the backend let go of it.
///
/// Build the [`super::DeviceSource`] with [`super::DeviceSource::vfio`].
#[cfg(feature = "vfio-ioctls")]
#[derive(Clone)]
pub struct VfioCdev(pub std::sync::Arc<vfio_ioctls::VfioDevice>);

#[cfg(feature = "vfio-ioctls")]
impl fmt::Debug for VfioCdev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VfioCdev")
            .field(&self.0.as_raw_fd())
            .finish()
    }
}

#[cfg(feature = "vfio-ioctls")]
impl std::os::fd::AsFd for VfioCdev {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `VfioDevice` owns its device file (a private
        // `ManuallyDrop<File>`) and closes it only in its `Drop` (vfio-ioctls
        // 0.10 `vfio_device.rs`); `self` holds an `Arc` of it, so that drop
        // cannot run while the returned borrow of `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.0.as_raw_fd()) }
    }
}

/// Who issues a request on the iommufd in the real layer.
pub enum Via<T> {
    /// Our own `ioctl(2)`: iommufd-ioctls 0.4 has no wrapper for the
    /// request, or its wrapper would lose something (docs/host-ioctls.md).
    Own,
    /// iommufd-ioctls' wrapper, called after our checks.
    IommufdIoctls(fn(&IommuFd, &mut T) -> Result<(), IommufdError>),
}

impl<T> Via<T> {
    /// The route's name, for the call log of the test twin.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn name(&self) -> &'static str {
        match self {
            Via::Own => "own",
            Via::IommufdIoctls(_) => "iommufd-ioctls",
        }
    }
}

/// The errno an iommufd-ioctls error carries: every wrapper we call reports
/// the kernel's errno (`vmm_sys_util::errno::Error::last()` right after the
/// ioctl); the crate's other errors carry none and become EIO.
pub fn crate_errno(e: IommufdError) -> io::Error {
    use IommufdError as E;
    match e {
        E::IommuDestroy(s)
        | E::IommuIoasAlloc(s)
        | E::IommuIoasMap(s)
        | E::IommuIoasMapFile(s)
        | E::IommuIoasUnmap(s)
        | E::IommuHwptAlloc(s)
        | E::IommuViommuAlloc(s)
        | E::IommuVdeviceAlloc(s)
        | E::IommuGetHwInfo(s)
        | E::IommuHwptInvalidate(s)
        | E::IommuVeventqAlloc(s)
        | E::VeventqNonBlocking(s)
        | E::IommuHwQueueAlloc(s) => io::Error::from_raw_os_error(s.errno()),
        E::OpenIommufd(e) | E::AttachHwpt(e) => e,
        _ => io::Error::from_raw_os_error(libc::EIO),
    }
}

mod sealed {
    /// Implemented only in this module: keeps arbitrary types away from the
    /// kernel.
    pub trait Sealed {}
}

/// A kernel ioctl argument for the iommufd without a pointer the kernel
/// follows.
pub trait IoctlArg: sealed::Sealed + Copy + fmt::Debug + 'static {
    /// The request this structure goes with.
    const REQ: u64;
    /// Who issues it in the real layer.
    const VIA: Via<Self>;
}

/// A kernel ioctl argument for the iommufd with one user pointer, passed
/// with its buffer.
pub trait IoctlBufArg: sealed::Sealed + Copy + fmt::Debug + 'static {
    /// The request this structure goes with.
    const REQ: u64;
    /// Who issues it in the real layer.
    const VIA: Via<Self>;
    /// Bytes the kernel may access through the pointer, as the length and
    /// count fields of the argument currently say.
    fn extent(&self) -> io::Result<usize>;
    /// Points the argument at the buffer.
    fn set_ptr(&mut self, ptr: u64);
}

/// A VFIO cdev ioctl argument (issued on the device file, always by us:
/// vfio-ioctls 0.10 issues these only on the files of its own
/// `VfioDevice`s).
pub trait DeviceArg: sealed::Sealed + Copy + fmt::Debug + 'static {
    /// The request this structure goes with.
    const REQ: u64;
    /// Rejects values that would make the kernel follow a pointer.
    fn check(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Data the kernel may read or write through a user pointer: integers only,
/// so that every bit pattern the kernel writes is a valid value.
pub trait Payload: sealed::Sealed + Copy + fmt::Debug + 'static {}

macro_rules! payload {
    ($($t:ty),* $(,)?) => {
        $(
            impl sealed::Sealed for $t {}
            impl Payload for $t {}
        )*
    };
}

/// `iommufd_arg!(type => REQUEST, own)` or
/// `iommufd_arg!(type => REQUEST, |fd, arg| crate_call)`.
macro_rules! iommufd_arg {
    ($t:ty => $req:ident, own) => {
        iommufd_arg!(@impl $t => $req, Via::Own);
    };
    ($t:ty => $req:ident, |$fd:ident, $a:ident| $call:expr) => {
        iommufd_arg!(@impl $t => $req, Via::IommufdIoctls(|$fd, $a| $call));
    };
    (@impl $t:ty => $req:ident, $via:expr) => {
        impl sealed::Sealed for $t {}
        impl IoctlArg for $t {
            const REQ: u64 = nr::$req;
            const VIA: Via<Self> = $via;
        }
    };
}

// IOAS_MAP and IOAS_MAP_FILE stay ours: iommufd-ioctls passes them by
// shared reference (`ioctl_with_ref`), but the kernel writes the chosen IOVA
// back (`iommufd_ioas_map`: `cmd->iova = iova; iommufd_ucmd_respond`), a
// write through a `&T` that also loses the IOVA of `IovaPlacement::Any`.
// `user_va` is pinned and handed to devices for DMA, never dereferenced by
// the CPU on our behalf: what it designates is the caller's contract
// (`MapSource::UserVa`), as with every VMM's guest memory.
iommufd_arg!(k::iommu_destroy => IOMMU_DESTROY, |fd, a| fd.destroy_iommu_object(a.id));
iommufd_arg!(k::iommu_ioas_alloc => IOMMU_IOAS_ALLOC, |fd, a| fd.alloc_iommu_ioas(a));
iommufd_arg!(k::iommu_ioas_map => IOMMU_IOAS_MAP, own);
iommufd_arg!(k::iommu_ioas_map_file => IOMMU_IOAS_MAP_FILE, own);
iommufd_arg!(k::iommu_ioas_copy => IOMMU_IOAS_COPY, own);
iommufd_arg!(k::iommu_ioas_unmap => IOMMU_IOAS_UNMAP, |fd, a| fd.unmap_iommu_ioas(a));
iommufd_arg!(k::iommu_hwpt_set_dirty_tracking => IOMMU_HWPT_SET_DIRTY_TRACKING, own);
iommufd_arg!(k::iommu_vdevice_alloc => IOMMU_VDEVICE_ALLOC, |fd, a| fd.alloc_iommu_vdevice(a));
iommufd_arg!(k::iommu_fault_alloc => IOMMU_FAULT_QUEUE_ALLOC, own);

// IOMMU_VEVENTQ_ALLOC returns a descriptor: it has its own entry point,
// `veventq_alloc`, through iommufd-ioctls' `alloc_veventq`, which adopts the
// descriptor and makes it non-blocking.

payload!(
    u8,
    u64,
    k::iommu_iova_range,
    k::iommu_hwpt_vtd_s1,
    k::iommu_hwpt_arm_smmuv3,
    k::iommu_hwpt_vtd_s1_invalidate,
    k::iommu_viommu_arm_smmuv3_invalidate,
);

macro_rules! device_arg {
    ($($t:ty => $req:ident),* $(,)?) => {
        $(
            impl sealed::Sealed for $t {}
            impl DeviceArg for $t {
                const REQ: u64 = nr::$req;
            }
        )*
    };
}

device_arg!(
    v::vfio_device_attach_iommufd_pt => VFIO_DEVICE_ATTACH_IOMMUFD_PT,
    v::vfio_device_detach_iommufd_pt => VFIO_DEVICE_DETACH_IOMMUFD_PT,
);

impl sealed::Sealed for v::vfio_device_bind_iommufd {}
impl DeviceArg for v::vfio_device_bind_iommufd {
    const REQ: u64 = nr::VFIO_DEVICE_BIND_IOMMUFD;
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

/// `buf_arg!(type => REQUEST, via, pointer field, |s| extent)`, `via` being
/// `own` or `|fd, arg| crate_call`.
macro_rules! buf_arg {
    ($t:ty => $req:ident, own, $ptr:ident, |$s:ident| $extent:expr) => {
        buf_arg!(@impl $t => $req, Via::Own, $ptr, |$s| $extent);
    };
    ($t:ty => $req:ident, |$fd:ident, $a:ident| $call:expr, $ptr:ident, |$s:ident| $extent:expr) => {
        buf_arg!(@impl $t => $req, Via::IommufdIoctls(|$fd, $a| $call), $ptr, |$s| $extent);
    };
    (@impl $t:ty => $req:ident, $via:expr, $ptr:ident, |$s:ident| $extent:expr) => {
        impl sealed::Sealed for $t {}
        impl IoctlBufArg for $t {
            const REQ: u64 = nr::$req;
            const VIA: Via<Self> = $via;
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

buf_arg!(
    k::iommu_hw_info => IOMMU_GET_HW_INFO,
    |fd, a| fd.get_hw_info(a),
    data_uptr,
    |s| Ok(s.data_len as usize)
);
buf_arg!(
    k::iommu_ioas_iova_ranges => IOMMU_IOAS_IOVA_RANGES,
    own,
    allowed_iovas,
    |s| mul(u64::from(s.num_iovas), RANGE_LEN)
);
buf_arg!(
    k::iommu_ioas_allow_iovas => IOMMU_IOAS_ALLOW_IOVAS,
    own,
    allowed_iovas,
    |s| mul(u64::from(s.num_iovas), RANGE_LEN)
);
buf_arg!(
    k::iommu_hwpt_alloc => IOMMU_HWPT_ALLOC,
    |fd, a| fd.alloc_iommu_hwpt(a),
    data_uptr,
    |s| Ok(s.data_len as usize)
);
buf_arg!(
    k::iommu_viommu_alloc => IOMMU_VIOMMU_ALLOC,
    |fd, a| fd.alloc_iommu_viommu(a),
    data_uptr,
    |s| Ok(s.data_len as usize)
);
buf_arg!(
    k::iommu_hwpt_invalidate => IOMMU_HWPT_INVALIDATE,
    |fd, a| fd.invalidate_hwpt(a),
    data_uptr,
    |s| mul(u64::from(s.entry_len), u64::from(s.entry_num))
);
// The kernel writes one bit per `1 << __ffs(page_size)` bytes of `length`
// (drivers/iommu/iommufd/iova_bitmap.c), so a page size that is not a power
// of two would make it write more bits than `length / page_size`.
buf_arg!(
    k::iommu_hwpt_get_dirty_bitmap => IOMMU_HWPT_GET_DIRTY_BITMAP,
    own,
    data,
    |s| {
        if !s.page_size.is_power_of_two() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let bits = s.length.div_ceil(s.page_size);
        mul(bits.div_ceil(64), 8)
    }
);

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
    /// `IOMMU_VEVENTQ_ALLOC` (issued by iommufd-ioctls' `alloc_veventq`
    /// with its own number; the test twin and the tests use ours).
    #[cfg_attr(not(test), allow(dead_code))]
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
