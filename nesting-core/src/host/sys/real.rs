//! The real system calls.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::c_int;

use super::{IoctlArg, IoctlBufArg, Payload, prepare};

fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `ioctl(fd, req, arg)` for an argument without a followed pointer.
pub fn ioctl_with_mut<T: IoctlArg>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<c_int> {
    arg.check()?;
    // SAFETY: `arg` is an exclusive reference to a live, properly aligned
    // `#[repr(C)]` kernel structure of the type this request expects (the
    // backend pairs each request with its structure, and the layout tests
    // check those structures against the uAPI header). The kernel reads and
    // writes at most `arg.size`/`argsz` bytes of it, which the callers set to
    // `size_of::<T>()`, and follows no pointer in it (`IoctlArg::check`).
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, std::ptr::from_mut(arg)) })
}

/// `ioctl(fd, req, arg)` where `arg` points the kernel at `buf`.
pub fn ioctl_with_buf<T: IoctlBufArg, P: Payload>(
    fd: BorrowedFd<'_>,
    req: u64,
    arg: &mut T,
    buf: &mut [P],
) -> io::Result<c_int> {
    prepare(arg, buf)?;
    // SAFETY: as in `ioctl_with_mut` for `arg` itself. Its one user pointer
    // now designates `buf`, which `prepare` checked is at least as large as
    // the extent the argument announces to the kernel; `buf` is exclusively
    // borrowed for the duration of the call and made of integers only
    // (`Payload`), so any bytes the kernel stores there are valid values.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, std::ptr::from_mut(arg)) })
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
/// returned (`out_veventq_fd`, `out_fault_fd`).
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
