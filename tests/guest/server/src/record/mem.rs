//! The model's view of guest memory while recording: [`RecMem`] hands
//! every access to the real guest RAM and notes it in an [`AccessLog`]:
//! reads with the bytes as they were, writes with the bytes the model
//! wrote (staged, see [`LoggedSlices`]).

use std::iter::FusedIterator;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryResult,
    Permissions, VolatileSlice,
};

/// Most bytes one access may log. A model reads tables and requests (at
/// most a page or a few at a time); a larger access is logged up to this
/// and counted as truncated rather than copied whole.
const MAX_LOGGED_ACCESS: usize = 1 << 16;

/// One guest-memory access a model made during an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemAccess {
    /// A read of `bytes` at `gpa` (the bytes as they were then).
    Read {
        /// Guest physical address.
        gpa: u64,
        /// What the model read.
        bytes: Vec<u8>,
    },
    /// A write of `bytes` at `gpa`: the values as the model left them,
    /// taken as soon as it wrote them (see [`LoggedSlices`]).
    Write {
        /// Guest physical address.
        gpa: u64,
        /// What the model wrote.
        bytes: Vec<u8>,
    },
}

/// Bytes of staging memory for one operation's writes (see
/// [`LoggedSlices`]): a model writes a few descriptors' status words,
/// table entries or virtio responses (a PROBE answer is 512 bytes) per
/// operation. Writes beyond it go straight to guest memory.
const STAGING: usize = 1 << 20;

/// The accesses of the operation running now. Logging is on only inside
/// [`Recorder::op`](super::Recorder::op).
#[derive(Debug)]
pub struct AccessLog {
    on: AtomicBool,
    entries: Mutex<Vec<MemAccess>>,
    staging: GuestMemoryMmap,
    staged: AtomicUsize,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            on: AtomicBool::new(false),
            entries: Mutex::new(Vec::new()),
            // Without staging memory every write goes straight to the
            // guest (and is read back at once).
            staging: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), STAGING)])
                .unwrap_or_default(),
            staged: AtomicUsize::new(0),
        }
    }
}

impl AccessLog {
    /// A slice of staging memory for a write of `count` bytes at `gpa`,
    /// holding the guest's bytes there now; `None` when the operation's
    /// staging memory is used up.
    fn stage(
        &self,
        mem: &GuestMemoryMmap,
        gpa: GuestAddress,
        count: usize,
    ) -> Option<(usize, VolatileSlice<'_, ()>)> {
        let off = self.staged.fetch_add(count, Ordering::AcqRel);
        if off.checked_add(count)? > STAGING {
            return None;
        }
        let slice = self
            .staging
            .get_slice(GuestAddress(off as u64), count)
            .ok()?;
        let mut now = vec![0u8; count];
        mem.read_slice(&mut now, gpa).ok()?;
        slice.copy_from(&now);
        Some((off, slice))
    }

    /// A staged write is done: its bytes go to the guest and the log.
    fn commit(&self, mem: &GuestMemoryMmap, gpa: u64, off: usize, len: usize) {
        let mut bytes = vec![0u8; len];
        if self
            .staging
            .read_slice(&mut bytes, GuestAddress(off as u64))
            .is_err()
        {
            return;
        }
        if mem.write_slice(&bytes, GuestAddress(gpa)).is_ok() && self.on() {
            self.entries().push(MemAccess::Write { gpa, bytes });
        }
    }

    fn entries(&self) -> MutexGuard<'_, Vec<MemAccess>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn start(&self) {
        self.entries().clear();
        self.staged.store(0, Ordering::Release);
        self.on.store(true, Ordering::Release);
    }

    pub(super) fn take(&self) -> Vec<MemAccess> {
        self.on.store(false, Ordering::Release);
        std::mem::take(&mut *self.entries())
    }

    fn on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// A read about to happen: the bytes as they are now.
    fn read(&self, mem: &GuestMemoryMmap, addr: GuestAddress, count: usize) {
        if !self.on() || count == 0 {
            return;
        }
        let mut bytes = vec![0u8; count.min(MAX_LOGGED_ACCESS)];
        // An access the memory cannot serve fails in the model too; it
        // leaves nothing to replay.
        if mem.read_slice(&mut bytes, addr).is_ok() {
            self.entries().push(MemAccess::Read { gpa: addr.0, bytes });
        }
    }

    /// A write that just happened: the bytes as the model left them.
    fn written(&self, mem: &GuestMemoryMmap, gpa: u64, len: usize) {
        if !self.on() || len == 0 {
            return;
        }
        let mut bytes = vec![0u8; len.min(MAX_LOGGED_ACCESS)];
        if mem.read_slice(&mut bytes, GuestAddress(gpa)).is_ok() {
            self.entries().push(MemAccess::Write { gpa, bytes });
        }
    }
}

/// The slices of an access handed to the model. A write is staged: the
/// model writes into staging memory, and when it is done with the slice
/// (asks for the next one, or drops the iterator: vm-memory's `Bytes`
/// writes a slice before asking for the next) the bytes go to guest
/// memory and into the log. So the log has exactly what the model wrote,
/// even if a vCPU changes it at once: QEMU posts vfio-user region writes,
/// so the guest runs on while the server works, and Linux clears an
/// invalidation wait's status word as soon as it sees it. A write the
/// staging memory cannot take goes straight to guest memory and is read
/// back when the model is done with it.
pub struct LoggedSlices<'a, I> {
    inner: Option<I>,
    staged: Option<(VolatileSlice<'a, ()>, usize)>,
    mem: &'a GuestMemoryMmap,
    log: &'a AccessLog,
    write: bool,
    at: u64,
    pending: Option<Pending>,
}

/// A slice handed out whose bytes are not logged yet.
#[derive(Clone, Copy, Debug)]
enum Pending {
    /// Written straight to guest memory at `gpa`.
    Direct { gpa: u64, len: usize },
    /// Staged at `off` for guest memory at `gpa`.
    Staged { gpa: u64, off: usize, len: usize },
}

impl<I> LoggedSlices<'_, I> {
    fn settle(&mut self) {
        match self.pending.take() {
            Some(Pending::Direct { gpa, len }) => self.log.written(self.mem, gpa, len),
            Some(Pending::Staged { gpa, off, len }) => self.log.commit(self.mem, gpa, off, len),
            None => {}
        }
    }
}

impl<'a, I> Iterator for LoggedSlices<'a, I>
where
    I: Iterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>,
{
    type Item = GuestMemoryResult<VolatileSlice<'a, ()>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.settle();
        if let Some((slice, off)) = self.staged.take() {
            self.pending = Some(Pending::Staged {
                gpa: self.at,
                off,
                len: slice.len(),
            });
            self.at = self.at.saturating_add(slice.len() as u64);
            return Some(Ok(slice));
        }
        let item = self.inner.as_mut()?.next();
        if let Some(Ok(slice)) = &item {
            if self.write && self.log.on() {
                self.pending = Some(Pending::Direct {
                    gpa: self.at,
                    len: slice.len(),
                });
            }
            self.at = self.at.saturating_add(slice.len() as u64);
        }
        item
    }
}

impl<'a, I> FusedIterator for LoggedSlices<'a, I> where
    I: FusedIterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>
{
}

impl<'a, I> GuestMemorySliceIterator<'a, ()> for LoggedSlices<'a, I> where
    I: FusedIterator<Item = GuestMemoryResult<VolatileSlice<'a, ()>>>
{
}

impl<I> Drop for LoggedSlices<'_, I> {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Guest RAM as a model sees it while recording: every access goes to the
/// real memory and is noted in the [`AccessLog`] when logging is on.
#[derive(Clone, Debug)]
pub struct RecMem {
    mem: Arc<GuestMemoryMmap>,
    log: Arc<AccessLog>,
}

impl RecMem {
    /// `mem`, logging into `log`.
    pub fn new(mem: Arc<GuestMemoryMmap>, log: Arc<AccessLog>) -> Self {
        RecMem { mem, log }
    }

    /// The real memory.
    pub fn inner(&self) -> &Arc<GuestMemoryMmap> {
        &self.mem
    }
}

impl GuestMemory for RecMem {
    type PhysicalMemory = GuestMemoryMmap;
    type Bitmap = <GuestMemoryMmap as GuestMemory>::Bitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        GuestMemory::check_range(&*self.mem, addr, count, access)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if access.allow(Permissions::Read) {
            self.log.read(&self.mem, addr, count);
        }
        let staged = (access == Permissions::Write
            && self.log.on()
            && count > 0
            && GuestMemory::check_range(&*self.mem, addr, count, access))
        .then(|| self.log.stage(&self.mem, addr, count))
        .flatten();
        if let Some((off, slice)) = staged {
            return Ok(LoggedSlices {
                inner: None,
                staged: Some((slice, off)),
                mem: &self.mem,
                log: &self.log,
                write: true,
                at: addr.0,
                pending: None,
            });
        }
        let inner = GuestMemory::get_slices(&*self.mem, addr, count, access)?;
        Ok(LoggedSlices {
            inner: Some(inner),
            staged: None,
            mem: &self.mem,
            log: &self.log,
            write: access.allow(Permissions::Write),
            at: addr.0,
            pending: None,
        })
    }
}

/// The bytes of `[gpa, gpa + len)` as the model first read them during
/// the operation, or as the memory holds them now where it did not.
pub fn bytes_seen(
    accesses: &[MemAccess],
    mem: &GuestMemoryMmap,
    gpa: u64,
    len: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(gpa)).ok()?;
    let end = gpa.saturating_add(len as u64);
    let mut done = vec![false; len];
    for a in accesses {
        let MemAccess::Read { gpa: at, bytes } = a else {
            continue;
        };
        for (addr, b) in (*at..).zip(bytes) {
            if addr >= gpa && addr < end {
                let i = (addr - gpa) as usize;
                if !done[i] {
                    out[i] = *b;
                    done[i] = true;
                }
            }
        }
    }
    Some(out)
}
