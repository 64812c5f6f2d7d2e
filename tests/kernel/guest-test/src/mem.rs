//! Test memory: page-aligned anonymous buffers (populated, without
//! transparent huge pages, so that per-page pin counts are observable) and
//! memfds.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd};

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
pub struct Buf {
    addr: *mut u8,
    len: usize,
}

impl Buf {
    /// `len` bytes, page-aligned, every page written once.
    pub fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks;
        // no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut buf = Buf {
            addr: p.cast(),
            len,
        };
        // SAFETY: advice on the mapping just created, `len` bytes long. A
        // failure (no THP support) is harmless: then there are no huge pages.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        for (i, b) in buf.bytes_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        Ok(buf)
    }

    /// The user virtual address.
    pub fn va(&self) -> u64 {
        self.addr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// The contents.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive while `self`
        // is; device DMA into it has completed when callers read it.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// The contents, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; no borrow of it
        // outlives `self`.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the call creates a new
    // descriptor that we own at once.
    let fd = unsafe { libc::memfd_create(c"guest-test".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and has no other owner.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len)?;
    Ok(f)
}

/// Memory shared by the kernel and the simulator runs of every scenario,
/// so that both see the same addresses (IOVA alignment follows them).
#[derive(Debug)]
pub struct Mem {
    /// 64 KiB.
    pub a: Buf,
    /// 16 KiB.
    pub b: Buf,
    /// A 64 KiB memfd.
    pub file: File,
}

impl Mem {
    /// Allocates everything.
    pub fn new() -> io::Result<Self> {
        Ok(Mem {
            a: Buf::new(64 << 10)?,
            b: Buf::new(16 << 10)?,
            file: memfd(64 << 10)?,
        })
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
