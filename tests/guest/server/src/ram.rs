//! Guest RAM as the vfio-user client shares it: each `VFIO_USER_DMA_MAP`
//! carrying a file descriptor becomes one vm-memory region mapped from
//! that file, and `VFIO_USER_DMA_UNMAP` removes the regions of its range.
//!
//! vfio-user protocol (QEMU docs/interop/vfio-user.rst,
//! `VFIO_USER_DMA_MAP`): "If a DMA region being added can be directly
//! mapped by the server, a file descriptor must be sent as part of the
//! message meta-data"; without one the server would have to use
//! `VFIO_USER_DMA_READ/WRITE`, which the rust-vmm crate does not offer.
//! Such regions (QEMU's ROMs, which are not in the shared memory backend)
//! are recorded as unbacked: DMA there fails as it does to unmapped
//! addresses. So are regions the client maps read-only: the server maps
//! guest RAM shared and writable, and must not let a device write memory
//! the client did not allow it to.

use std::fs::File;
use std::io;
use std::sync::Arc;

use log::{info, warn};
use thiserror::Error;
use vfio_user::{DmaMapFlags, DmaUnmapFlags};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion,
};

/// Most regions the client may have mapped at once. QEMU maps one region
/// per RAM section (a handful on q35); the bound keeps a client from
/// growing the server's region list without limit.
pub const MAX_REGIONS: usize = 1024;

/// Errors of guest RAM bookkeeping.
#[derive(Debug, Error)]
pub enum RamError {
    /// The region overlaps one already mapped, or could not be added.
    #[error("cannot add DMA region {address:#x}+{size:#x}")]
    Insert {
        /// Guest address.
        address: u64,
        /// Size.
        size: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestRegionCollectionError,
    },
    /// The region's size does not fit the host's address space.
    #[error("DMA region size {size:#x} does not fit in memory")]
    Size {
        /// Size.
        size: u64,
    },
    /// Too many regions are mapped.
    #[error("more than {MAX_REGIONS} DMA regions")]
    TooMany,
    /// An unmap cuts a mapped region in two.
    #[error("unmap {address:#x}+{size:#x} splits a mapped region")]
    Split {
        /// Guest address.
        address: u64,
        /// Size.
        size: u64,
    },
}

/// What happened to a `dma_map` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOutcome {
    /// The region is mapped and DMA can reach it.
    Mapped,
    /// The region is known but not reachable by DMA (no file descriptor,
    /// read-only, or the file could not be mapped).
    Unbacked,
}

/// The guest RAM the client has shared.
#[derive(Debug, Default)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    unbacked: Vec<(u64, u64)>,
}

impl GuestRam {
    /// The current regions, as a vm-memory backend.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Number of mapped (DMA-reachable) regions.
    pub fn mapped_regions(&self) -> usize {
        self.mem.num_regions()
    }

    /// Applies a `VFIO_USER_DMA_MAP` message as every function's
    /// `ServerBackend::dma_map` receives it; `who` names the function in
    /// the log.
    pub fn map_message(
        &mut self,
        who: &str,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let writable = flags.contains(DmaMapFlags::WRITE);
        let outcome = self
            .map(address, size, offset, fd, writable)
            .map_err(invalid)?;
        info!("{who}: dma_map {address:#x}+{size:#x} {flags:?}: {outcome:?}");
        Ok(())
    }

    /// Applies a `VFIO_USER_DMA_UNMAP` message (see [`GuestRam::map_message`]).
    pub fn unmap_message(
        &mut self,
        who: &str,
        flags: DmaUnmapFlags,
        address: u64,
        size: u64,
    ) -> io::Result<()> {
        let all = flags.contains(DmaUnmapFlags::UNMAP_ALL);
        let n = self.unmap(address, size, all).map_err(invalid)?;
        info!("{who}: dma_unmap {address:#x}+{size:#x} {flags:?}: {n} region(s)");
        Ok(())
    }

    /// Handles a `VFIO_USER_DMA_MAP` of `[address, address + size)` backed
    /// by `fd` at `offset`, with the client's `writable` permission.
    pub fn map(
        &mut self,
        address: u64,
        size: u64,
        offset: u64,
        fd: Option<File>,
        writable: bool,
    ) -> Result<MapOutcome, RamError> {
        if self.mem.num_regions() + self.unbacked.len() >= MAX_REGIONS {
            return Err(RamError::TooMany);
        }
        let len = usize::try_from(size).map_err(|_| RamError::Size { size })?;
        let region = match (fd, writable) {
            (Some(file), true) => MmapRegion::from_file(FileOffset::new(file, offset), len)
                .map_err(|e| warn!("dma_map {address:#x}+{size:#x}: mmap failed: {e}"))
                .ok()
                .and_then(|m| GuestRegionMmap::new(m, GuestAddress(address))),
            (None, _) => {
                info!("dma_map {address:#x}+{size:#x}: no file descriptor, not DMA-reachable");
                None
            }
            (Some(_), false) => {
                info!("dma_map {address:#x}+{size:#x}: read-only, not DMA-reachable");
                None
            }
        };
        let Some(region) = region else {
            self.unbacked.push((address, size));
            return Ok(MapOutcome::Unbacked);
        };
        self.mem = self
            .mem
            .insert_region(Arc::new(region))
            .map_err(|source| RamError::Insert {
                address,
                size,
                source,
            })?;
        Ok(MapOutcome::Mapped)
    }

    /// Handles a `VFIO_USER_DMA_UNMAP` of `[address, address + size)`;
    /// `all` is `VFIO_DMA_UNMAP_FLAG_ALL`. Returns how many regions went.
    pub fn unmap(&mut self, address: u64, size: u64, all: bool) -> Result<usize, RamError> {
        if all {
            let n = self.mem.num_regions() + self.unbacked.len();
            *self = GuestRam::default();
            return Ok(n);
        }
        let end = address.saturating_add(size);
        let inside = |start: u64, len: u64| start >= address && start.saturating_add(len) <= end;
        let overlaps = |start: u64, len: u64| start < end && start.saturating_add(len) > address;
        let mut keep = Vec::new();
        let mut removed = 0;
        for r in self.mem.iter() {
            let (start, len) = (r.start_addr().0, r.len());
            if inside(start, len) {
                removed += 1;
            } else if overlaps(start, len) {
                return Err(RamError::Split { address, size });
            } else {
                keep.push(GuestRegionMmap::with_arc(r.get_mmap(), r.start_addr()));
            }
        }
        let before = self.unbacked.len();
        self.unbacked.retain(|&(s, l)| !inside(s, l));
        removed += before - self.unbacked.len();
        let keep: Vec<_> = keep.into_iter().flatten().map(Arc::new).collect();
        self.mem = if keep.is_empty() {
            GuestMemoryMmap::default()
        } else {
            GuestMemoryMmap::from_arc_regions(keep).map_err(|source| RamError::Insert {
                address,
                size,
                source,
            })?
        };
        Ok(removed)
    }
}

/// A refused client request, as the vfio-user server answers it.
pub fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    /// A temporary file of `len` bytes standing in for QEMU's memfd.
    fn backing(len: usize) -> File {
        let path = std::env::temp_dir().join(format!(
            "viommu-guest-ram-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.write_all(&vec![0u8; len]).unwrap();
        f
    }

    #[test]
    fn map_with_fd_makes_memory_reachable_at_offset() {
        let f = backing(0x3000);
        let mut ram = GuestRam::default();
        let out = ram.map(0x10_0000, 0x2000, 0x1000, Some(f), true).unwrap();
        assert_eq!(out, MapOutcome::Mapped);
        ram.memory()
            .write_obj(0xabu8, GuestAddress(0x10_1fff))
            .unwrap();
        assert!(
            ram.memory()
                .read_obj::<u8>(GuestAddress(0x10_2000))
                .is_err()
        );
    }

    #[test]
    fn map_without_fd_is_unbacked() {
        let mut ram = GuestRam::default();
        let out = ram.map(0xc0000, 0x20000, 0, None, true).unwrap();
        assert_eq!(out, MapOutcome::Unbacked);
        assert!(!ram.memory().check_range(GuestAddress(0xc0000), 1));
    }

    #[test]
    fn map_read_only_is_unbacked() {
        let mut ram = GuestRam::default();
        let out = ram.map(0, 0x1000, 0, Some(backing(0x1000)), false).unwrap();
        assert_eq!(out, MapOutcome::Unbacked);
        assert_eq!(ram.mapped_regions(), 0);
    }

    #[test]
    fn map_overlapping_is_error() {
        let mut ram = GuestRam::default();
        ram.map(0, 0x2000, 0, Some(backing(0x2000)), true).unwrap();
        let r = ram.map(0x1000, 0x2000, 0, Some(backing(0x2000)), true);
        assert!(matches!(r, Err(RamError::Insert { .. })));
    }

    #[test]
    fn unmap_removes_contained_regions_only() {
        let mut ram = GuestRam::default();
        ram.map(0, 0x1000, 0, Some(backing(0x1000)), true).unwrap();
        ram.map(0x1000, 0x1000, 0, Some(backing(0x1000)), true)
            .unwrap();
        ram.map(0x4000, 0x1000, 0, None, true).unwrap();
        assert_eq!(ram.unmap(0x1000, 0x4000, false).unwrap(), 2);
        assert_eq!(ram.mapped_regions(), 1);
        assert!(ram.memory().check_range(GuestAddress(0), 0x1000));
        assert!(!ram.memory().check_range(GuestAddress(0x1000), 1));
    }

    #[test]
    fn unmap_splitting_a_region_is_error() {
        let mut ram = GuestRam::default();
        ram.map(0, 0x2000, 0, Some(backing(0x2000)), true).unwrap();
        assert!(matches!(
            ram.unmap(0x1000, 0x1000, false),
            Err(RamError::Split { .. })
        ));
        assert_eq!(ram.mapped_regions(), 1);
    }

    #[test]
    fn unmap_all_empties() {
        let mut ram = GuestRam::default();
        ram.map(0, 0x1000, 0, Some(backing(0x1000)), true).unwrap();
        assert_eq!(ram.unmap(0, 0, true).unwrap(), 1);
        assert_eq!(ram.mapped_regions(), 0);
    }
}
