//! Guest memory access: checked little-endian reads and writes through
//! vm-memory.
//!
//! Every table, queue and request a model decodes lives in guest memory and
//! is little-endian on all three architectures (VT-d: spec section 9
//! "Translation Structure Formats"; SMMUv3: IHI 0070 section 3.3; virtio:
//! section 1.4 "Structure Specifications"). These helpers turn a missing
//! page or a wrapped address into a [`MemError`] the model maps to its
//! architected fault, never into a panic.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Le16, Le32, Le64};

use crate::types::Gpa;

/// Failure to access guest memory.
#[derive(Debug, Error)]
pub enum MemError {
    /// The access touched an address that is not guest RAM.
    #[error("guest memory access of {len} bytes at {gpa:#x} failed")]
    Access {
        /// First address accessed.
        gpa: u64,
        /// Length of the access.
        len: usize,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

macro_rules! le_accessors {
    ($(($read:ident, $write:ident, $t:ty, $le:ty)),* $(,)?) => {
        $(
            #[doc = concat!("Reads a little-endian `", stringify!($t), "` at `gpa`.")]
            fn $read(&self, gpa: Gpa) -> Result<$t, MemError> {
                let v: $le = self.read_obj_at(gpa)?;
                Ok(v.into())
            }

            #[doc = concat!("Writes a little-endian `", stringify!($t), "` at `gpa`.")]
            fn $write(&self, gpa: Gpa, val: $t) -> Result<(), MemError> {
                self.write_obj_at(gpa, <$le>::from(val))
            }
        )*
    };
}

/// Checked little-endian access to guest memory, for any vm-memory
/// [`GuestMemory`].
pub trait GuestMemoryExt {
    /// Reads a plain-old-data object at `gpa`.
    fn read_obj_at<T: vm_memory::ByteValued>(&self, gpa: Gpa) -> Result<T, MemError>;
    /// Writes a plain-old-data object at `gpa`.
    fn write_obj_at<T: vm_memory::ByteValued>(&self, gpa: Gpa, val: T) -> Result<(), MemError>;
    /// Fills `buf` from guest memory at `gpa`.
    fn read_bytes_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError>;
    /// Writes `buf` into guest memory at `gpa`.
    fn write_bytes_at(&self, gpa: Gpa, buf: &[u8]) -> Result<(), MemError>;

    /// Reads one byte at `gpa`.
    fn read_u8(&self, gpa: Gpa) -> Result<u8, MemError> {
        self.read_obj_at(gpa)
    }
    /// Writes one byte at `gpa`.
    fn write_u8(&self, gpa: Gpa, val: u8) -> Result<(), MemError> {
        self.write_obj_at(gpa, val)
    }

    le_accessors!(
        (read_u16_le, write_u16_le, u16, Le16),
        (read_u32_le, write_u32_le, u32, Le32),
        (read_u64_le, write_u64_le, u64, Le64),
    );
}

fn access_err(gpa: Gpa, len: usize) -> impl FnOnce(GuestMemoryError) -> MemError {
    move |source| MemError::Access {
        gpa: gpa.raw(),
        len,
        source,
    }
}

impl<M: GuestMemory + ?Sized> GuestMemoryExt for M {
    fn read_obj_at<T: vm_memory::ByteValued>(&self, gpa: Gpa) -> Result<T, MemError> {
        self.read_obj(GuestAddress(gpa.raw()))
            .map_err(access_err(gpa, std::mem::size_of::<T>()))
    }

    fn write_obj_at<T: vm_memory::ByteValued>(&self, gpa: Gpa, val: T) -> Result<(), MemError> {
        self.write_obj(val, GuestAddress(gpa.raw()))
            .map_err(access_err(gpa, std::mem::size_of::<T>()))
    }

    fn read_bytes_at(&self, gpa: Gpa, buf: &mut [u8]) -> Result<(), MemError> {
        self.read_slice(buf, GuestAddress(gpa.raw()))
            .map_err(access_err(gpa, buf.len()))
    }

    fn write_bytes_at(&self, gpa: Gpa, buf: &[u8]) -> Result<(), MemError> {
        self.write_slice(buf, GuestAddress(gpa.raw()))
            .map_err(access_err(gpa, buf.len()))
    }
}

/// Guest memory whose reads stop after a budget: every read past it
/// fails as an access to memory that is not there. A model wraps the
/// memory a guest-driven loop reads through it, so that the loop's reads
/// are bounded by construction whatever the guest's tables say; what the
/// loop could not read gets the answer an unreadable table gets
/// (blocked, faulted, not mirrored), never more access than the guest
/// gave. Writes are not limited. It offers no `physical_memory`, so code
/// that would read guest regions directly takes the budgeted path.
///
/// The budget is a shared counter ([`ReadBudget::shared`]), so code that
/// holds it elsewhere sees what is left while the reads go on and can
/// stop a loop early instead of failing read after read.
#[derive(Debug)]
pub struct ReadBudget<'a, M: ?Sized> {
    inner: &'a M,
    left: std::sync::Arc<std::sync::atomic::AtomicU64>,
    refused: std::cell::Cell<u64>,
}

impl<'a, M: GuestMemory + ?Sized> ReadBudget<'a, M> {
    /// At most `reads` reads of `inner`.
    pub fn new(inner: &'a M, reads: u64) -> Self {
        Self::shared(inner, std::sync::Arc::new(reads.into()))
    }

    /// Reads of `inner` taken from the counter `left`.
    pub fn shared(inner: &'a M, left: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        ReadBudget {
            inner,
            left,
            refused: std::cell::Cell::new(0),
        }
    }

    /// Reads still allowed.
    pub fn left(&self) -> u64 {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }
}

impl<M: GuestMemory + ?Sized> GuestMemory for ReadBudget<'_, M> {
    type PhysicalMemory = M::PhysicalMemory;
    type Bitmap = M::Bitmap;

    fn check_range(
        &self,
        addr: GuestAddress,
        count: usize,
        access: vm_memory::Permissions,
    ) -> bool {
        self.inner.check_range(addr, count, access)
    }

    fn get_slices<'b>(
        &'b self,
        addr: GuestAddress,
        count: usize,
        access: vm_memory::Permissions,
    ) -> vm_memory::GuestMemoryResult<
        impl vm_memory::guest_memory::GuestMemorySliceIterator<
            'b,
            vm_memory::bitmap::BS<'b, Self::Bitmap>,
        >,
    > {
        if access.allow(vm_memory::Permissions::Read) {
            let took = self.left.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |l| l.checked_sub(1),
            );
            if took.is_err() {
                self.refused.set(self.refused.get().saturating_add(1));
                return Err(GuestMemoryError::InvalidGuestAddress(addr));
            }
        }
        self.inner.get_slices(addr, count, access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x2000)]).unwrap()
    }

    #[test]
    fn le_roundtrip_u16_u32_u64() {
        let m = mem();
        m.write_u64_le(Gpa(0x1000), 0x0102_0304_0506_0708).unwrap();
        let mut raw = [0u8; 8];
        m.read_bytes_at(Gpa(0x1000), &mut raw).unwrap();
        assert_eq!(raw, [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(m.read_u32_le(Gpa(0x1004)).unwrap(), 0x0102_0304);
        assert_eq!(m.read_u16_le(Gpa(0x1000)).unwrap(), 0x0708);
        assert_eq!(m.read_u8(Gpa(0x1007)).unwrap(), 1);
    }

    #[test]
    fn read_outside_ram_is_error_not_panic() {
        let m = mem();
        let err = m.read_u64_le(Gpa(0x0)).unwrap_err();
        assert!(err.to_string().contains("0x0"));
        assert!(m.read_u32_le(Gpa(u64::MAX - 1)).is_err());
    }

    #[test]
    fn read_budget_refuses_reads_past_it_not_writes() {
        let m = mem();
        let b = ReadBudget::new(&m, 2);
        assert!(b.read_u64_le(Gpa(0x1000)).is_ok());
        assert!(b.read_u32_le(Gpa(0x1008)).is_ok());
        assert!(b.read_u8(Gpa(0x1000)).is_err());
        assert!(b.write_u32_le(Gpa(0x1000), 5).is_ok());
        assert_eq!((b.left(), b.refused()), (0, 1));
        assert_eq!(m.read_u32_le(Gpa(0x1000)).unwrap(), 5);
    }

    #[test]
    fn access_straddling_end_of_ram_is_error() {
        let m = mem();
        assert!(m.read_u64_le(Gpa(0x2ffc)).is_err());
        assert!(m.write_u32_le(Gpa(0x2ffc), 1).is_ok());
    }
}
