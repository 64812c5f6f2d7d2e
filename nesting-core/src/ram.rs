//! Guest RAM as the host IOMMU sees it, and the RAM IOAS.
//!
//! Guest RAM is mapped once, GPA -> host memory, into one IOAS: the RAM
//! IOAS. The shadow engine copies each guest mapping out of it with
//! `IOMMU_IOAS_COPY`, so the kernel pins and accounts each page once however
//! many domains and devices use it; the nested engine uses it as stage 2
//! under a NEST_PARENT HWPT. One RAM IOAS serves the whole VM, and so do
//! its NEST_PARENT HWPTs: every nested engine over it (one per guest IOMMU
//! instance) finds the stage-2 parents the others made
//! ([`RamIoas::nest_parents`]), so several vSMMUs on one host SMMU share
//! one stage 2 (and its VMID, `arm_vsmmu_init`: "vsmmu->vmid =
//! s2_parent->s2_cfg.vmid").

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::host::objects::{Hwpt, Ioas, SharedHost};
use crate::host::{HostError, HwptFlags, IovaPlacement, MapSource};
use crate::types::{Access, Gpa, Iova};

/// What backs a region of guest RAM in this process.
#[derive(Clone, Debug)]
pub enum RamBacking {
    /// Anonymous memory at this user virtual address.
    UserVa(u64),
    /// A file (typically a memfd shared with the VMM's other processes)
    /// from this byte offset. Mapped with `IOMMU_IOAS_MAP_FILE`, which
    /// survives a change of the owning process.
    File {
        /// The file.
        file: Arc<std::fs::File>,
        /// Offset of the region's first byte.
        offset: u64,
    },
}

/// One region of guest RAM.
#[derive(Clone, Debug)]
pub struct RamRegion {
    /// First guest physical address.
    pub gpa: Gpa,
    /// Length in bytes.
    pub len: u64,
    /// Its backing.
    pub backing: RamBacking,
}

impl RamRegion {
    /// Whether `[gpa, gpa + len)` lies wholly inside this region.
    pub fn contains(&self, gpa: Gpa, len: u64) -> bool {
        gpa >= self.gpa
            && gpa
                .raw()
                .checked_add(len)
                .is_some_and(|end| end <= self.gpa.raw() + self.len)
    }
}

/// Failure to describe guest RAM.
#[derive(Debug, Error)]
pub enum RamError {
    /// Two regions overlap.
    #[error("guest RAM regions overlap at {gpa:#x}")]
    Overlap {
        /// Where.
        gpa: u64,
    },
    /// A region is empty or wraps the address space.
    #[error("guest RAM region at {gpa:#x} of {len:#x} bytes is empty or wraps")]
    BadRegion {
        /// Start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// vm-memory could not give a host address.
    #[error("no host address for guest RAM at {gpa:#x}")]
    NoHostAddress {
        /// Start of the region.
        gpa: u64,
    },
    /// The host refused to map guest RAM.
    #[error("mapping guest RAM at {gpa:#x} into the RAM IOAS")]
    Host {
        /// Start of the region.
        gpa: u64,
        /// The host's error.
        #[source]
        source: HostError,
    },
}

/// Guest RAM: sorted, non-overlapping regions.
#[derive(Clone, Debug, Default)]
pub struct GuestRam {
    regions: Vec<RamRegion>,
}

impl GuestRam {
    /// Builds the description from regions (any order).
    pub fn new(mut regions: Vec<RamRegion>) -> Result<Self, RamError> {
        regions.sort_by_key(|r| r.gpa);
        for r in &regions {
            if r.len == 0 || r.gpa.raw().checked_add(r.len - 1).is_none() {
                return Err(RamError::BadRegion {
                    gpa: r.gpa.raw(),
                    len: r.len,
                });
            }
        }
        for w in regions.windows(2) {
            if w[0].gpa.raw() + w[0].len > w[1].gpa.raw() {
                return Err(RamError::Overlap {
                    gpa: w[1].gpa.raw(),
                });
            }
        }
        Ok(GuestRam { regions })
    }

    /// Describes a vm-memory guest memory: file-backed regions by file and
    /// offset, anonymous ones by host address.
    pub fn from_guest_memory<M: GuestMemoryBackend>(mem: &M) -> Result<Self, RamError> {
        let mut regions = Vec::new();
        for r in mem.iter() {
            let gpa = Gpa(r.start_addr().0);
            let len = r.len();
            let backing = match r.file_offset() {
                Some(fo) => RamBacking::File {
                    file: fo.arc().clone(),
                    offset: fo.start(),
                },
                None => {
                    let va = r
                        .get_host_address(vm_memory::MemoryRegionAddress(0))
                        .map_err(|_| RamError::NoHostAddress { gpa: gpa.raw() })?;
                    RamBacking::UserVa(va as u64)
                }
            };
            regions.push(RamRegion { gpa, len, backing });
        }
        GuestRam::new(regions)
    }

    /// The regions, ascending.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// The region holding `[gpa, gpa + len)` entirely, if any.
    pub fn region_of(&self, gpa: Gpa, len: u64) -> Option<&RamRegion> {
        let i = self
            .regions
            .partition_point(|r| r.gpa <= gpa)
            .checked_sub(1)?;
        let r = &self.regions[i];
        r.contains(gpa, len).then_some(r)
    }

    /// Whether `[gpa, gpa + len)` is entirely guest RAM (possibly across
    /// adjacent regions).
    pub fn is_ram(&self, gpa: Gpa, len: u64) -> bool {
        let Some(end) = gpa.raw().checked_add(len) else {
            return false;
        };
        let mut at = gpa.raw();
        while at < end {
            match self.region_of(Gpa(at), 1) {
                Some(r) => at = r.gpa.raw() + r.len,
                None => return false,
            }
        }
        true
    }
}

/// The RAM IOAS: all guest RAM mapped at IOVA = GPA, read-write.
#[derive(Debug)]
pub struct RamIoas {
    ioas: Arc<Ioas>,
    ram: GuestRam,
    /// The NEST_PARENT HWPTs over this IOAS, with the flags they were
    /// allocated with. Weak: a parent lives as long as an engine uses it
    /// (the engines hold it strongly), and is destroyed with the last.
    parents: Mutex<Vec<(HwptFlags, Weak<Hwpt>)>>,
}

impl RamIoas {
    /// Allocates the IOAS and maps every region (MAP for anonymous memory,
    /// MAP_FILE for file-backed memory). On failure nothing is left behind:
    /// the IOAS is destroyed with its mappings.
    pub fn new(host: &SharedHost, ram: GuestRam) -> Result<Self, RamError> {
        let first = ram.regions.first().map_or(0, |r| r.gpa.raw());
        let ioas = Ioas::alloc(host).map_err(|source| RamError::Host { gpa: first, source })?;
        for r in &ram.regions {
            let place = IovaPlacement::Fixed(Iova(r.gpa.raw()));
            let res = match &r.backing {
                RamBacking::UserVa(va) => {
                    ioas.map(place, MapSource::UserVa(*va), r.len, Access::RW)
                }
                RamBacking::File { file, offset } => ioas.map(
                    place,
                    MapSource::File {
                        fd: file.as_fd(),
                        offset: *offset,
                    },
                    r.len,
                    Access::RW,
                ),
            };
            res.map_err(|source| RamError::Host {
                gpa: r.gpa.raw(),
                source,
            })?;
        }
        Ok(RamIoas {
            ioas: Arc::new(ioas),
            ram,
            parents: Mutex::new(Vec::new()),
        })
    }

    /// The live NEST_PARENT HWPTs over this IOAS allocated with exactly
    /// `flags`, oldest first: a nested engine tries them before allocating
    /// a stage 2 of its own.
    pub fn nest_parents(&self, flags: HwptFlags) -> Vec<Arc<Hwpt>> {
        let mut list = self.parents.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|(_, w)| w.strong_count() > 0);
        list.iter()
            .filter(|(f, _)| *f == flags)
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    }

    /// Records a NEST_PARENT HWPT made over this IOAS with `flags`, for
    /// the other engines to share.
    pub fn add_nest_parent(&self, flags: HwptFlags, hwpt: &Arc<Hwpt>) {
        let mut list = self.parents.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|(_, w)| w.strong_count() > 0);
        list.push((flags, Arc::downgrade(hwpt)));
    }

    /// The IOAS (IOVA = GPA).
    pub fn ioas(&self) -> &Arc<Ioas> {
        &self.ioas
    }

    /// The guest RAM it maps.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn region(gpa: u64, len: u64, va: u64) -> RamRegion {
        RamRegion {
            gpa: Gpa(gpa),
            len,
            backing: RamBacking::UserVa(va),
        }
    }

    #[test]
    fn guest_ram_overlap_is_refused() {
        let e = GuestRam::new(vec![region(0x1000, 0x2000, 0), region(0x2000, 0x1000, 0)]);
        assert!(matches!(e, Err(RamError::Overlap { gpa: 0x2000 })));
        assert!(matches!(
            GuestRam::new(vec![region(0, 0, 0)]),
            Err(RamError::BadRegion { .. })
        ));
    }

    #[test]
    fn guest_ram_lookup_and_is_ram_across_adjacent_regions() {
        let ram = GuestRam::new(vec![
            region(0x4000, 0x1000, 0x10_0000),
            region(0x0, 0x2000, 0x20_0000),
            region(0x2000, 0x1000, 0x30_0000),
        ])
        .unwrap();
        assert_eq!(ram.region_of(Gpa(0x1800), 0x800).unwrap().gpa, Gpa(0));
        assert!(
            ram.region_of(Gpa(0x1800), 0x1000).is_none(),
            "crosses a region boundary"
        );
        assert!(ram.is_ram(Gpa(0x1800), 0x1000));
        assert!(!ram.is_ram(Gpa(0x2800), 0x1000), "0x3000 is a hole");
        assert!(!ram.is_ram(Gpa(u64::MAX), 2));
    }

    #[test]
    fn from_guest_memory_uses_host_addresses() {
        let mem: GuestMemoryMmap<()> = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x4000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        let ram = GuestRam::from_guest_memory(&mem).unwrap();
        assert_eq!(ram.regions().len(), 2);
        let want = mem.get_host_address(GuestAddress(0x10_0000)).unwrap() as u64;
        assert!(matches!(ram.regions()[1].backing, RamBacking::UserVa(va) if va == want));
    }
}
