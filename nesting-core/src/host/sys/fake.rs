//! The test twin of `real`: same signatures, no kernel.
//!
//! Every call is recorded in a per-thread log ([`take_calls`]); ioctls
//! consume scripted replies in order ([`reply`], [`reply_buf`],
//! [`fail_next`]) and succeed untouched when none is queued; reads consume
//! scripted byte chunks ([`push_read`]) and return 0 (an empty event queue)
//! when none is queued. State is thread-local, so parallel tests do not see
//! each other.

use std::any::{Any, type_name};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::raw::c_int;

use iommufd_bindings::iommufd as k;
use iommufd_ioctls::IommuFd;

use super::{DeviceArg, IoctlArg, IoctlBufArg, Payload, prepare};

type ReplyFn<T, P> = Box<dyn FnOnce(&mut T, &mut [P]) -> Result<c_int, i32>>;
type ArgFn<T> = Box<dyn FnOnce(&mut T) -> Result<c_int, i32>>;

enum Reply {
    /// A `ReplyFn<T, P>` or an `ArgFn<T>` for the argument type it expects.
    Fn {
        f: Box<dyn Any>,
        expects: &'static str,
    },
    /// Fail whatever ioctl comes next.
    Errno(i32),
}

enum ReadReply {
    Bytes(Vec<u8>),
    Errno(i32),
}

/// One recorded system call.
pub enum Call {
    /// An ioctl, with its argument and buffer as they were passed in.
    Ioctl {
        /// File descriptor.
        fd: RawFd,
        /// Request number.
        req: u64,
        /// The argument structure (a `T`).
        arg: Box<dyn Any>,
        /// The buffer contents (a `Vec<P>`, empty `Vec<()>` without buffer).
        buf: Box<dyn Any>,
        /// Who the real layer has issue it: `"own"` or `"iommufd-ioctls"`
        /// ([`super::Via::name`]).
        via: &'static str,
    },
    /// A `read`.
    Read {
        /// File descriptor.
        fd: RawFd,
        /// Buffer length.
        len: usize,
    },
    /// A `write`.
    Write {
        /// File descriptor.
        fd: RawFd,
        /// Bytes written.
        bytes: Vec<u8>,
    },
    /// An `adopt_fd`.
    Adopt {
        /// The number the "kernel" returned.
        raw: u32,
        /// The descriptor standing in for it.
        fd: RawFd,
    },
}

impl Call {
    /// The request number of an ioctl, `None` for other calls.
    pub fn req(&self) -> Option<u64> {
        match self {
            Call::Ioctl { req, .. } => Some(*req),
            _ => None,
        }
    }

    /// Who the real layer has issue an ioctl (`"own"`,
    /// `"iommufd-ioctls"`), `None` for other calls.
    pub fn via(&self) -> Option<&'static str> {
        match self {
            Call::Ioctl { via, .. } => Some(via),
            _ => None,
        }
    }

    /// The ioctl argument as a `T`. Panics (failing the test) otherwise.
    pub fn arg<T: 'static>(&self) -> &T {
        match self {
            Call::Ioctl { arg, .. } => arg
                .downcast_ref()
                .unwrap_or_else(|| panic!("{self:?} is not a {}", type_name::<T>())),
            _ => panic!("{self:?} is not an ioctl"),
        }
    }

    /// The ioctl buffer as `P`s. Panics (failing the test) otherwise.
    pub fn buf<P: 'static>(&self) -> &[P] {
        match self {
            Call::Ioctl { buf, .. } => buf
                .downcast_ref::<Vec<P>>()
                .unwrap_or_else(|| panic!("{self:?} has no [{}] buffer", type_name::<P>())),
            _ => panic!("{self:?} is not an ioctl"),
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Ioctl { fd, req, .. } => write!(f, "ioctl(fd {fd}, {req:#x})"),
            Call::Read { fd, len } => write!(f, "read(fd {fd}, {len})"),
            Call::Write { fd, bytes } => write!(f, "write(fd {fd}, {bytes:02x?})"),
            Call::Adopt { raw, fd } => write!(f, "adopt({raw}) -> fd {fd}"),
        }
    }
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    replies: VecDeque<Reply>,
    reads: VecDeque<ReadReply>,
    writes: VecDeque<i32>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Scripts the reply to the next ioctl, which must take a `T` (and any
/// buffer, left untouched).
pub fn reply<T: 'static>(f: impl FnOnce(&mut T) -> Result<c_int, i32> + 'static) {
    let f: ArgFn<T> = Box::new(f);
    with(|s| {
        s.replies.push_back(Reply::Fn {
            f: Box::new(f),
            expects: type_name::<T>(),
        })
    });
}

/// Scripts the reply to the next ioctl, which must take a `T` and a `[P]`
/// buffer (the reply sees and may fill the buffer, as the kernel would).
pub fn reply_buf<T: 'static, P: 'static>(
    f: impl FnOnce(&mut T, &mut [P]) -> Result<c_int, i32> + 'static,
) {
    let f: ReplyFn<T, P> = Box::new(f);
    with(|s| {
        s.replies.push_back(Reply::Fn {
            f: Box::new(f),
            expects: type_name::<T>(),
        })
    });
}

/// Makes the next ioctl fail with `errno`, leaving its argument untouched.
pub fn fail_next(errno: i32) {
    with(|s| s.replies.push_back(Reply::Errno(errno)));
}

/// Queues bytes for the next `read_into` (a longer chunk than the reader's
/// buffer is returned over several reads).
pub fn push_read(bytes: Vec<u8>) {
    with(|s| s.reads.push_back(ReadReply::Bytes(bytes)));
}

/// Makes the next `read_into` fail with `errno`.
pub fn push_read_err(errno: i32) {
    with(|s| s.reads.push_back(ReadReply::Errno(errno)));
}

/// Makes the next `write_all` fail with `errno`.
pub fn push_write_err(errno: i32) {
    with(|s| s.writes.push_back(errno));
}

/// Returns and clears the call log.
pub fn take_calls() -> Vec<Call> {
    with(|s| std::mem::take(&mut s.calls))
}

/// Forgets every scripted reply and recorded call.
pub fn reset() {
    with(|s| *s = State::default());
}

fn dispatch<T: Copy + 'static, P: Copy + 'static>(
    (fd, req, via): (RawFd, u64, &'static str),
    arg: &mut T,
    buf: &mut [P],
) -> io::Result<()> {
    let (reply, fd) = with(|s| {
        s.calls.push(Call::Ioctl {
            fd,
            req,
            arg: Box::new(*arg),
            buf: Box::new(buf.to_vec()),
            via,
        });
        (s.replies.pop_front(), fd.as_raw_fd())
    });
    let result = match reply {
        None => Ok(0),
        Some(Reply::Errno(e)) => Err(e),
        Some(Reply::Fn { f, expects }) => match f.downcast::<ReplyFn<T, P>>() {
            Ok(f) => f(arg, buf),
            Err(f) => match f.downcast::<ArgFn<T>>() {
                Ok(f) => f(arg),
                Err(_) => panic!(
                    "ioctl {req:#x} on fd {fd} passes a {} with [{}], the next reply expects a {expects}",
                    type_name::<T>(),
                    type_name::<P>()
                ),
            },
        },
    };
    result.map(drop).map_err(io::Error::from_raw_os_error)
}

/// Fake iommufd `ioctl` for an argument without a followed pointer.
pub fn ioctl<T: IoctlArg>(fd: &IommuFd, arg: &mut T) -> io::Result<()> {
    dispatch::<T, ()>((fd.as_raw_fd(), T::REQ, T::VIA.name()), arg, &mut [])
}

/// Fake iommufd `ioctl` with a buffer.
pub fn ioctl_buf<T: IoctlBufArg, P: Payload>(
    fd: &IommuFd,
    arg: &mut T,
    buf: &mut [P],
) -> io::Result<()> {
    prepare(arg, buf)?;
    dispatch((fd.as_raw_fd(), T::REQ, T::VIA.name()), arg, buf)
}

/// Fake `IOMMU_VEVENTQ_ALLOC`: the ioctl (routed through iommufd-ioctls),
/// then the adoption of `out_veventq_fd`, as two calls.
pub fn veventq_alloc(fd: &IommuFd, arg: &mut k::iommu_veventq_alloc) -> io::Result<OwnedFd> {
    let route = (
        fd.as_raw_fd(),
        super::nr::IOMMU_VEVENTQ_ALLOC,
        "iommufd-ioctls",
    );
    dispatch::<_, ()>(route, arg, &mut [])?;
    adopt_fd(arg.out_veventq_fd)
}

/// Fake VFIO cdev `ioctl`.
pub fn device_ioctl<T: DeviceArg>(dev: BorrowedFd<'_>, arg: &mut T) -> io::Result<()> {
    arg.check()?;
    dispatch::<T, ()>((dev.as_raw_fd(), T::REQ, "own"), arg, &mut [])
}

/// Fake `read`.
pub fn read_into(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    with(|s| {
        s.calls.push(Call::Read {
            fd: fd.as_raw_fd(),
            len: buf.len(),
        });
        match s.reads.pop_front() {
            None => Ok(0),
            Some(ReadReply::Errno(e)) => Err(io::Error::from_raw_os_error(e)),
            Some(ReadReply::Bytes(mut b)) => {
                let n = b.len().min(buf.len());
                buf[..n].copy_from_slice(&b[..n]);
                if b.len() > n {
                    s.reads.push_front(ReadReply::Bytes(b.split_off(n)));
                }
                Ok(n)
            }
        }
    })
}

/// Fake `write`.
pub fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<()> {
    with(|s| {
        s.calls.push(Call::Write {
            fd: fd.as_raw_fd(),
            bytes: buf.to_vec(),
        });
        match s.writes.pop_front() {
            None => Ok(()),
            Some(e) => Err(io::Error::from_raw_os_error(e)),
        }
    })
}

/// Fake adoption: a fresh descriptor of `/dev/null` stands in for `raw`.
pub fn adopt_fd(raw: u32) -> io::Result<OwnedFd> {
    let fd = OwnedFd::from(File::open("/dev/null")?);
    with(|s| {
        s.calls.push(Call::Adopt {
            raw,
            fd: fd.as_raw_fd(),
        })
    });
    Ok(fd)
}

/// Test twin of the real `own_inherited_fd`: checks the number is open
/// through `/proc/self/fd` and hands back a descriptor of `/dev/null`
/// instead of adopting the number (tests must not close descriptors the
/// test harness owns).
pub fn own_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if std::fs::metadata(format!("/proc/self/fd/{raw}")).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(OwnedFd::from(File::open("/dev/null")?))
}
