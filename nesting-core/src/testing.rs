//! Test helpers the model crates share (feature `test-utils`): guest
//! memory that counts what a model reads and writes, and a logger that
//! counts the lines a thread logs. The per-action bounds of
//! `docs/guest-limits.md` are asserted with them.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::bitmap::BS;
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryResult, Permissions};

/// Guest memory that counts every access a model makes through it: one
/// read or write per `get_slices` call, whatever its length (vm-memory's
/// `Bytes` makes one per object or slice read or written; a
/// read-modify-write counts once as each). It offers no
/// `physical_memory`, so code that would read guest regions directly
/// takes the counted path.
#[derive(Debug, Default)]
pub struct CountingMemory<M> {
    inner: M,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl<M> CountingMemory<M> {
    /// Counts accesses to `inner`.
    pub fn new(inner: M) -> Self {
        CountingMemory {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// The memory counted.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Reads since creation or the last [`CountingMemory::reset`].
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Writes since creation or the last [`CountingMemory::reset`].
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Zeroes both counters.
    pub fn reset(&self) {
        self.reads.store(0, Ordering::Relaxed);
        self.writes.store(0, Ordering::Relaxed);
    }
}

impl<M: GuestMemory> GuestMemory for CountingMemory<M> {
    type PhysicalMemory = M::PhysicalMemory;
    type Bitmap = M::Bitmap;

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.inner.check_range(addr, count, access)
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> GuestMemoryResult<impl GuestMemorySliceIterator<'a, BS<'a, Self::Bitmap>>> {
        if access.allow(Permissions::Read) {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        if access.allow(Permissions::Write) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.get_slices(addr, count, access)
    }

    // No `physical_memory`: a reader that would read the regions directly
    // (vtd's `EntryReader`) then goes through `get_slices`, and is counted.
}

thread_local! {
    static LINES: Cell<u64> = const { Cell::new(0) };
}

/// A logger counting the lines each thread logs, at every level: a test
/// floods a model from its own thread and reads its count, whatever other
/// tests of the process log meanwhile.
#[derive(Debug)]
pub struct LogCounter(());

static COUNTER: LogCounter = LogCounter(());
static INSTALLED: OnceLock<bool> = OnceLock::new();

impl LogCounter {
    /// Installs the counter as the process's logger, every level enabled
    /// (once; later calls return the same counter). Panics if another
    /// logger was installed first.
    pub fn install() -> &'static LogCounter {
        let ok = *INSTALLED.get_or_init(|| {
            let ok = log::set_logger(&COUNTER).is_ok();
            if ok {
                log::set_max_level(log::LevelFilter::Trace);
            }
            ok
        });
        assert!(ok, "another logger is installed");
        &COUNTER
    }

    /// Lines the calling thread has logged since the counter was
    /// installed.
    pub fn lines(&self) -> u64 {
        LINES.with(Cell::get)
    }
}

impl log::Log for LogCounter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, _: &log::Record<'_>) {
        LINES.with(|c| c.set(c.get() + 1));
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::GuestMemoryExt;
    use crate::types::Gpa;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn counting_memory_counts_each_access_once() {
        let m = CountingMemory::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap(),
        );
        m.write_u64_le(Gpa(0x10), 7).unwrap();
        assert_eq!(m.read_u64_le(Gpa(0x10)).unwrap(), 7);
        let mut buf = [0u8; 0x1000];
        m.read_bytes_at(Gpa(0x800), &mut buf).unwrap();
        assert_eq!((m.reads(), m.writes()), (2, 1));
        // A failed access counts too: the model asked for it.
        assert!(m.read_u32_le(Gpa(0x4000)).is_err());
        assert_eq!(m.reads(), 3);
        m.reset();
        assert_eq!((m.reads(), m.writes()), (0, 0));
    }

    #[test]
    fn log_counter_counts_this_thread_only() {
        let c = LogCounter::install();
        let before = c.lines();
        log::warn!("one");
        log::trace!("two");
        std::thread::spawn(|| log::warn!("elsewhere"))
            .join()
            .unwrap();
        assert_eq!(c.lines() - before, 2);
    }
}
