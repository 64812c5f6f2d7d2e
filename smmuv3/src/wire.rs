//! The wire form of every structure the SMMU reads or writes in guest
//! memory: little-endian 64-bit words (the model reports
//! SMMU_IDR0.TTENDIAN = little-endian, and its in-memory structures and
//! queues are little-endian). Stream table entries, context descriptors,
//! commands, event records and PRI queue entries are `N`-word
//! [`Qwords`]; each structure asserts its size where it is declared.
//!
//! Guest memory is reached only through vm-memory. Translation table
//! updates (access flag, dirty state) are single-copy atomic
//! compare-and-swaps on the descriptor, as IHI 0070 requires of
//! hardware updates.

use std::sync::atomic::{AtomicU64, Ordering};

use nesting_core::mem::{GuestMemoryExt, MemError};
use nesting_core::types::Gpa;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, Permissions, VolatileMemory};
use zerocopy::little_endian::U64 as Le64;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// `N` little-endian 64-bit words as they lie in guest memory.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Qwords<const N: usize>(pub [Le64; N]);

impl<const N: usize> Qwords<N> {
    /// The words as native integers.
    pub fn get(&self) -> [u64; N] {
        self.0.map(|q| q.get())
    }

    /// The wire form of native words.
    pub fn new(words: [u64; N]) -> Self {
        Qwords(words.map(Le64::new))
    }
}

/// Reads `N` little-endian words at `gpa`.
pub fn read_qwords<M: GuestMemory + ?Sized, const N: usize>(
    mem: &M,
    gpa: u64,
) -> Result<[u64; N], MemError> {
    let mut wire = Qwords::<N>::new_zeroed();
    mem.read_bytes_at(Gpa(gpa), wire.as_mut_bytes())?;
    Ok(wire.get())
}

/// Writes `N` words little-endian at `gpa`.
pub fn write_qwords<M: GuestMemory + ?Sized, const N: usize>(
    mem: &M,
    gpa: u64,
    words: [u64; N],
) -> Result<(), MemError> {
    mem.write_bytes_at(Gpa(gpa), Qwords::new(words).as_bytes())
}

/// Reads the one word at `gpa` (a translation table descriptor).
pub fn read_u64<M: GuestMemory + ?Sized>(mem: &M, gpa: u64) -> Option<u64> {
    read_qwords::<M, 1>(mem, gpa).ok().map(|[w]| w)
}

/// Why a descriptor update did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasError {
    /// The address is not (8-byte aligned) guest RAM: an external abort.
    Abort,
    /// The descriptor changed since it was read: walk again.
    Changed,
}

/// Replaces the descriptor at `gpa` by `new` if it still holds `old`, in
/// one atomic access (IHI 0070 "Translation table entries and Access/Dirty flags": hardware updates are atomic with
/// respect to other agents). Marks the page dirty for migration.
pub fn cas_u64<M: GuestMemory + ?Sized>(
    mem: &M,
    gpa: u64,
    old: u64,
    new: u64,
) -> Result<(), CasError> {
    if !gpa.is_multiple_of(8) {
        return Err(CasError::Abort);
    }
    let mut slices = mem
        .get_slices(GuestAddress(gpa), 8, Permissions::ReadWrite)
        .map_err(|_| CasError::Abort)?;
    let Some(Ok(slice)) = slices.next() else {
        return Err(CasError::Abort);
    };
    if slice.len() != 8 {
        return Err(CasError::Abort);
    }
    let cell = slice
        .get_atomic_ref::<AtomicU64>(0)
        .map_err(|_| CasError::Abort)?;
    // Descriptors are little-endian; the host's native order may not be.
    let result = cell.compare_exchange(
        old.to_le(),
        new.to_le(),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    slice.bitmap().mark_dirty(0, 8);
    result.map(|_| ()).map_err(|_| CasError::Changed)
}

/// Whether `[gpa, gpa + len)` is guest RAM (an MSI to RAM is a memory
/// write; anywhere else it goes to the VMM).
pub fn is_ram<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, len: usize) -> bool {
    mem.check_range(GuestAddress(gpa), len, Permissions::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap()
    }

    #[test]
    fn qwords_roundtrip_little_endian() {
        let m = mem();
        write_qwords(&m, 0x100, [0x0102_0304_0506_0708, 9]).unwrap();
        let mut raw = [0u8; 2];
        m.read_bytes_at(Gpa(0x100), &mut raw).unwrap();
        assert_eq!(raw, [8, 7]);
        assert_eq!(
            read_qwords::<_, 2>(&m, 0x100).unwrap(),
            [0x0102_0304_0506_0708, 9]
        );
    }

    #[test]
    fn cas_matching_old_value_updates() {
        let m = mem();
        write_qwords(&m, 0x40, [3]).unwrap();
        assert_eq!(cas_u64(&m, 0x40, 3, 0x403), Ok(()));
        assert_eq!(read_u64(&m, 0x40), Some(0x403));
    }

    #[test]
    fn cas_changed_value_reports_changed() {
        let m = mem();
        write_qwords(&m, 0x40, [5]).unwrap();
        assert_eq!(cas_u64(&m, 0x40, 3, 0x403), Err(CasError::Changed));
        assert_eq!(read_u64(&m, 0x40), Some(5));
    }

    #[test]
    fn cas_outside_ram_or_misaligned_is_abort() {
        let m = mem();
        assert_eq!(cas_u64(&m, 0x4000, 0, 1), Err(CasError::Abort));
        assert_eq!(cas_u64(&m, 0x44, 0, 1), Err(CasError::Abort));
        assert_eq!(cas_u64(&m, u64::MAX - 7, 0, 1), Err(CasError::Abort));
    }

    #[test]
    fn is_ram_checks_whole_range() {
        let m = mem();
        assert!(is_ram(&m, 0x1ffc, 4));
        assert!(!is_ram(&m, 0x1ffe, 4));
    }
}
