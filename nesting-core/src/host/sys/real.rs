//! The real system calls.
//!
//! Requests on the iommufd take iommufd-ioctls' `IommuFd` and go through the
//! crate's wrapper where [`IoctlArg::VIA`] names one: the wrappers are safe
//! functions that trust the pointers in their argument, so ours run first
//! (the sealed argument types, [`IoctlArg`]'s absent pointers and
//! [`prepare`]'s buffer check), exactly as before our own `ioctl(2)`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_int;

use iommufd_bindings::iommufd as k;
use iommufd_ioctls::IommuFd;

use super::{DeviceArg, IoctlArg, IoctlBufArg, Payload, Via, crate_errno, prepare};

fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, T::REQ, arg)` on the iommufd, for an argument without a
/// followed pointer.
pub fn ioctl<T: IoctlArg>(fd: &IommuFd, arg: &mut T) -> io::Result<()> {
    match T::VIA {
        // The crate issues `T::REQ` with `arg` by exclusive reference
        // (`ioctl_with_mut_ref`; `destroy_iommu_object` builds its own
        // `iommu_destroy` from `arg.id`), on its own descriptor: the same
        // call as below. `arg` carries no pointer (`IoctlArg`).
        Via::IommufdIoctls(f) => f(fd, arg).map_err(crate_errno),
        Via::Own => {
            // SAFETY: `arg` is an exclusive reference to a live, properly
            // aligned `#[repr(C)]` kernel structure of the type `T::REQ`
            // expects (the sealed `IoctlArg` pairs them, and the layout tests
            // check the structures against the uAPI header). The kernel reads
            // and writes at most `arg.size` bytes of it, which the callers
            // set to `size_of::<T>()`, and follows no pointer in it. `fd` is
            // open for the call: `IommuFd` closes it only when dropped.
            let ret = unsafe { libc::ioctl(fd.as_raw_fd(), T::REQ as _, std::ptr::from_mut(arg)) };
            cvt(ret).map(drop)
        }
    }
}

/// `ioctl(fd, T::REQ, arg)` on the iommufd, where `arg` points the kernel
/// at `buf`.
pub fn ioctl_buf<T: IoctlBufArg, P: Payload>(
    fd: &IommuFd,
    arg: &mut T,
    buf: &mut [P],
) -> io::Result<()> {
    prepare(arg, buf)?;
    match T::VIA {
        // As in `ioctl`; the one user pointer of `arg` now designates `buf`,
        // which `prepare` checked, exclusively borrowed for the call.
        Via::IommufdIoctls(f) => f(fd, arg).map_err(crate_errno),
        Via::Own => {
            // SAFETY: as in `ioctl` for `arg` itself. Its one user pointer
            // now designates `buf`, which `prepare` checked is at least as
            // large as the extent the argument announces to the kernel;
            // `buf` is exclusively borrowed for the duration of the call and
            // made of integers only (`Payload`), so any bytes the kernel
            // stores there are valid values.
            let ret = unsafe { libc::ioctl(fd.as_raw_fd(), T::REQ as _, std::ptr::from_mut(arg)) };
            cvt(ret).map(drop)
        }
    }
}

/// `IOMMU_VEVENTQ_ALLOC` through iommufd-ioctls' `alloc_veventq`, which
/// takes ownership of the returned descriptor and makes it non-blocking.
pub fn veventq_alloc(fd: &IommuFd, arg: &mut k::iommu_veventq_alloc) -> io::Result<OwnedFd> {
    // `iommu_veventq_alloc` carries no pointer; the crate passes it by
    // exclusive reference and adopts `out_veventq_fd`, which the kernel
    // installed for us alone.
    let (_, file) = fd.alloc_veventq(arg).map_err(crate_errno)?;
    Ok(file.into())
}

/// `ioctl(dev, T::REQ, arg)` on a VFIO cdev, for an argument without a
/// followed pointer.
pub fn device_ioctl<T: DeviceArg>(dev: BorrowedFd<'_>, arg: &mut T) -> io::Result<()> {
    arg.check()?;
    // SAFETY: `arg` is an exclusive reference to a live, properly aligned
    // `#[repr(C)]` VFIO structure of the type `T::REQ` expects (sealed
    // `DeviceArg`, layouts checked against the uAPI header). The kernel
    // reads and writes at most `arg.argsz` bytes of it, which the callers
    // set to `size_of::<T>()`, and follows no pointer in it
    // (`DeviceArg::check`). `dev` is borrowed, so open, for the call.
    cvt(unsafe { libc::ioctl(dev.as_raw_fd(), T::REQ as _, std::ptr::from_mut(arg)) }).map(drop)
}

/// One `read(2)` into `buf`; returns the byte count (0: nothing pending, the
/// way iommufd's event queues answer when empty).
pub fn read_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, exclusively borrowed byte buffer of
        // `buf.len()` bytes, and `read` writes at most that many.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// `write(2)` of all of `buf`, continuing after short writes.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid byte buffer of `buf.len()` bytes, which
        // `write` only reads.
        let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Takes ownership of a file descriptor number that a successful ioctl just
/// returned (`out_fault_fd`).
pub fn adopt_fd(raw: u32) -> io::Result<OwnedFd> {
    let raw = i32::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel installed this descriptor in our table as the
    // result of the ioctl that returned it and handed it to us alone; no
    // other owner exists, and it is adopted exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Takes ownership of a descriptor this process inherited from its parent
/// (the fd-passing convention of management stacks such as libvirt), after
/// checking that the number is an open descriptor.
pub fn own_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD reads the descriptor flags of `raw` and touches no
    // memory; on a number that is not open it fails with EBADF.
    cvt(unsafe { libc::fcntl(raw, libc::F_GETFD) })?;
    // SAFETY: `raw` is open (checked above). By the fd-passing convention
    // the parent handed it to this process for the caller to own, and
    // `take_inherited_fd` (the only caller) adopts each number at most once
    // per process, so no other `OwnedFd` or `File` owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
