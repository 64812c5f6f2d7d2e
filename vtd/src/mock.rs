//! A driver-side mock (feature `test-utils`): builds root, context, PASID
//! and page tables and drives the invalidation queue the way Linux's
//! intel-iommu driver does (`drivers/iommu/intel/iommu.c`, `pasid.c`,
//! `dmar.c`), for this crate's tests and for other crates' tests.
//!
//! Everything panics on misuse: it is test code, driven by tests, never by
//! a guest.

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Bdf, Gpa};
use vm_memory::GuestMemory;

use crate::Vtd;
use crate::regs::{fsts, gcmd, off};

/// A bump allocator of zeroed 4 KiB guest pages.
#[derive(Clone, Debug)]
pub struct PageAlloc {
    next: u64,
    end: u64,
}

impl PageAlloc {
    /// Allocates from `[start, start + len)`, page aligned.
    pub fn new(start: u64, len: u64) -> PageAlloc {
        PageAlloc {
            next: start,
            end: start + len,
        }
    }

    /// A zeroed page.
    pub fn page<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> u64 {
        self.pages(mem, 1)
    }

    /// `n` contiguous zeroed pages.
    pub fn pages<M: GuestMemory + ?Sized>(&mut self, mem: &M, n: u64) -> u64 {
        let p = self.next;
        assert!(p + 4096 * n <= self.end, "mock page pool exhausted");
        self.next += 4096 * n;
        mem.write_bytes_at(Gpa(p), &vec![0u8; 4096 * n as usize])
            .expect("page pool in guest RAM");
        p
    }
}

fn rd<M: GuestMemory + ?Sized>(mem: &M, a: u64) -> u64 {
    mem.read_u64_le(Gpa(a)).expect("table in RAM")
}

fn wr<M: GuestMemory + ?Sized>(mem: &M, a: u64, v: u64) {
    mem.write_u64_le(Gpa(a), v).expect("table in RAM");
}

fn index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & 0x1ff
}

/// Second-stage tables (VT-d "Second-Stage Paging Entries") as Linux's
/// `pfn_to_dma_pte` builds them: non-leaf entries R|W, leaves with the
/// requested R/W and PS for superpages.
#[derive(Clone, Copy, Debug)]
pub struct SlTables {
    /// Root table.
    pub root: u64,
    /// Levels (3..=5).
    pub levels: u32,
}

impl SlTables {
    /// An empty table.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, a: &mut PageAlloc, levels: u32) -> SlTables {
        SlTables {
            root: a.page(mem),
            levels,
        }
    }

    /// Maps `iova` to `gpa` with a page of `1 << shift` bytes (12, 21, 30).
    #[allow(clippy::too_many_arguments)]
    pub fn map<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        iova: u64,
        gpa: u64,
        shift: u32,
        read: bool,
        write: bool,
    ) {
        let leaf_level = (shift - 12) / 9 + 1;
        let mut table = self.root;
        for level in (leaf_level + 1..=self.levels).rev() {
            let slot = table + 8 * index(iova, level);
            let e = rd(mem, slot);
            table = if e & 3 == 0 {
                let t = a.page(mem);
                wr(mem, slot, t | 3);
                t
            } else {
                e & 0x000f_ffff_ffff_f000
            };
        }
        let mut leaf = gpa | u64::from(read) | (u64::from(write) << 1);
        if leaf_level > 1 {
            leaf |= 1 << 7;
        }
        wr(mem, table + 8 * index(iova, leaf_level), leaf);
    }

    /// Clears the leaf of `iova` at `shift`.
    pub fn unmap<M: GuestMemory + ?Sized>(&self, mem: &M, iova: u64, shift: u32) {
        let leaf_level = (shift - 12) / 9 + 1;
        let mut table = self.root;
        for level in (leaf_level + 1..=self.levels).rev() {
            let e = rd(mem, table + 8 * index(iova, level));
            if e & 3 == 0 {
                return;
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        wr(mem, table + 8 * index(iova, leaf_level), 0);
    }
}

/// First-stage entry bits as Linux's `DMA_FL_PTE_*` (iommu.h).
pub mod flpte {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Read/write.
    pub const RW: u64 = 1 << 1;
    /// User.
    pub const US: u64 = 1 << 2;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Page size.
    pub const PS: u64 = 1 << 7;
    /// Execute disable.
    pub const XD: u64 = 1 << 63;
}

/// First-stage (x86) tables.
#[derive(Clone, Copy, Debug)]
pub struct FsTables {
    /// Root (PML4 or PML5).
    pub root: u64,
    /// 4 or 5.
    pub levels: u32,
}

impl FsTables {
    /// An empty table.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, a: &mut PageAlloc, levels: u32) -> FsTables {
        FsTables {
            root: a.page(mem),
            levels,
        }
    }

    /// Maps `iova` to `gpa` with a `1 << shift` page; `leaf_flags` are the
    /// leaf's flags (P is added); non-leaf entries are P|RW|US like
    /// Linux's.
    pub fn map<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        iova: u64,
        gpa: u64,
        shift: u32,
        leaf_flags: u64,
    ) {
        let leaf_level = (shift - 12) / 9 + 1;
        let mut table = self.root;
        for level in (leaf_level + 1..=self.levels).rev() {
            let slot = table + 8 * index(iova, level);
            let e = rd(mem, slot);
            table = if e & flpte::P == 0 {
                let t = a.page(mem);
                wr(mem, slot, t | flpte::P | flpte::RW | flpte::US);
                t
            } else {
                e & 0x000f_ffff_ffff_f000
            };
        }
        let mut leaf = gpa | flpte::P | leaf_flags;
        if leaf_level > 1 {
            leaf |= flpte::PS;
        }
        wr(mem, table + 8 * index(iova, leaf_level), leaf);
    }

    /// The raw entries from the root down to the leaf of `iova`.
    pub fn entries<M: GuestMemory + ?Sized>(&self, mem: &M, iova: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut table = self.root;
        for level in (1..=self.levels).rev() {
            let e = rd(mem, table + 8 * index(iova, level));
            out.push(e);
            if e & flpte::P == 0 || e & flpte::PS != 0 {
                break;
            }
            table = e & 0x000f_ffff_ffff_f000;
        }
        out
    }
}

/// Legacy-mode root and context tables (9.1, 9.3), as `iommu.c`'s
/// `domain_context_mapping_one` fills them.
#[derive(Clone, Copy, Debug)]
pub struct LegacyTables {
    /// Root table.
    pub root: u64,
}

impl LegacyTables {
    /// An empty root table.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, a: &mut PageAlloc) -> LegacyTables {
        LegacyTables { root: a.page(mem) }
    }

    /// The context table of `bus`, allocated on first use.
    pub fn context_table<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        bus: u8,
    ) -> u64 {
        let slot = self.root + 16 * u64::from(bus);
        let e = rd(mem, slot);
        if e & 1 != 0 {
            return e & !0xfff;
        }
        let t = a.page(mem);
        wr(mem, slot, t | 1);
        t
    }

    /// Writes the context entry of `sid`: `tt` 0 (translated) or 2
    /// (pass-through), `aw` 1..=3, domain `did`, tables `slptptr`.
    #[allow(clippy::too_many_arguments)]
    pub fn set_context<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        sid: u16,
        did: u16,
        tt: u64,
        aw: u64,
        slptptr: u64,
        fpd: bool,
    ) {
        let sid = Bdf(sid);
        let ct = self.context_table(mem, a, sid.bus());
        let slot = ct + 16 * u64::from(sid.devfn());
        wr(mem, slot + 8, aw | (u64::from(did) << 8));
        wr(mem, slot, slptptr | (tt << 2) | (u64::from(fpd) << 1) | 1);
    }
}

/// Scalable-mode tables (9.2, 9.4, 9.5, 9.6) as `iommu.c` and `pasid.c`
/// build them.
#[derive(Clone, Copy, Debug)]
pub struct ScalableTables {
    /// Root table.
    pub root: u64,
}

/// A PASID table entry as `pasid.c`'s `intel_pasid_setup_*` writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidSetup {
    /// The eight quadwords.
    pub q: [u64; 8],
}

impl PasidSetup {
    /// `intel_pasid_setup_first_level`: PGTT=001, FSPTPTR, FSPM, DID,
    /// page snoop, optionally SRE and WPE.
    pub fn first_stage(did: u16, fsptptr: u64, levels: u32, sre: bool, wpe: bool) -> PasidSetup {
        let mut p = PasidSetup::default();
        p.q[0] = (1 << 6) | 1;
        p.q[1] = u64::from(did) | (1 << 23);
        p.q[2] = fsptptr | (u64::from(levels == 5) << 2) | u64::from(sre) | (u64::from(wpe) << 4);
        p
    }

    /// `intel_pasid_setup_second_level`: PGTT=010, SSPTPTR, AW, DID.
    pub fn second_stage(did: u16, ssptptr: u64, aw: u64) -> PasidSetup {
        let mut p = PasidSetup::default();
        p.q[0] = ssptptr | (aw << 2) | (2 << 6) | 1;
        p.q[1] = u64::from(did) | (1 << 23);
        p
    }

    /// `intel_pasid_setup_pass_through`: PGTT=100, DID.
    pub fn pass_through(did: u16) -> PasidSetup {
        let mut p = PasidSetup::default();
        p.q[0] = (4 << 6) | 1;
        p.q[1] = u64::from(did) | (1 << 23);
        p
    }

    /// `intel_pasid_setup_nested`: PGTT=011 with both table pointers.
    pub fn nested(did: u16, fsptptr: u64, levels: u32, ssptptr: u64, aw: u64) -> PasidSetup {
        let mut p = PasidSetup::first_stage(did, fsptptr, levels, false, false);
        p.q[0] = ssptptr | (aw << 2) | (3 << 6) | 1;
        p
    }
}

impl ScalableTables {
    /// An empty root table.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, a: &mut PageAlloc) -> ScalableTables {
        ScalableTables { root: a.page(mem) }
    }

    /// Makes the context entry of `sid` present with a PASID directory of
    /// `2^(pdts+7)` entries, PASIDE and RID_PASID `rid_pasid`; returns the
    /// directory.
    pub fn set_context<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        sid: u16,
        pdts: u64,
        rid_pasid: u32,
    ) -> u64 {
        let sid = Bdf(sid);
        let devfn = sid.devfn();
        let slot = self.root + 16 * u64::from(sid.bus()) + if devfn < 128 { 0 } else { 8 };
        let mut e = rd(mem, slot);
        if e & 1 == 0 {
            e = a.page(mem) | 1;
            wr(mem, slot, e);
        }
        let ce = (e & !0xfff) + 32 * u64::from(devfn & 0x7f);
        let dir_pages = ((8u64 << (pdts + 7)) / 4096).max(1);
        let dir = a.pages(mem, dir_pages);
        wr(mem, ce + 8, u64::from(rid_pasid));
        // P, PASIDE (bit 3), PDTS.
        wr(mem, ce, dir | (pdts << 9) | (1 << 3) | 1);
        dir
    }

    /// Sets or clears the DTE (device-TLB enable, bit 2) of the present
    /// context entry of `sid`, as `context_entry_set_pasid_table` does for
    /// a device with `ats_supported`.
    pub fn set_dte<M: GuestMemory + ?Sized>(&self, mem: &M, sid: u16, on: bool) {
        let sid = Bdf(sid);
        let devfn = sid.devfn();
        let slot = self.root + 16 * u64::from(sid.bus()) + if devfn < 128 { 0 } else { 8 };
        let ce = (rd(mem, slot) & !0xfff) + 32 * u64::from(devfn & 0x7f);
        let v = rd(mem, ce);
        wr(mem, ce, if on { v | 1 << 2 } else { v & !(1 << 2) });
    }

    /// Writes the PASID entry of `pasid` under directory `dir`, allocating
    /// its PASID table.
    pub fn set_pasid<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        dir: u64,
        pasid: u32,
        e: &PasidSetup,
    ) {
        let slot = dir + 8 * u64::from(pasid >> 6);
        let mut d = rd(mem, slot);
        if d & 1 == 0 {
            d = a.page(mem) | 1;
            wr(mem, slot, d);
        }
        let pe = (d & !0xfff) + 64 * u64::from(pasid & 0x3f);
        for (i, q) in e.q.iter().enumerate().rev() {
            wr(mem, pe + 8 * i as u64, *q);
        }
    }
}

/// Invalidation descriptors as `dmar.c`/`cache.c` build them.
pub mod desc {
    /// Context-cache invalidate, global (`QI_CC_TYPE`, granularity 1).
    pub fn cc_global() -> [u64; 2] {
        [0x1 | (1 << 4), 0]
    }
    /// Context-cache invalidate, device-selective.
    pub fn cc_device(did: u16, sid: u16, fm: u8) -> [u64; 2] {
        [
            0x1 | (3 << 4)
                | (u64::from(did) << 16)
                | (u64::from(sid) << 32)
                | (u64::from(fm) << 48),
            0,
        ]
    }
    /// IOTLB invalidate, global with drains (`qi_flush_iotlb`).
    pub fn iotlb_global() -> [u64; 2] {
        [0x2 | (1 << 4) | (1 << 6) | (1 << 7), 0]
    }
    /// IOTLB invalidate, domain-selective.
    pub fn iotlb_domain(did: u16) -> [u64; 2] {
        [
            0x2 | (2 << 4) | (1 << 6) | (1 << 7) | (u64::from(did) << 16),
            0,
        ]
    }
    /// IOTLB invalidate, page-selective.
    pub fn iotlb_page(did: u16, addr: u64, am: u8, ih: bool) -> [u64; 2] {
        [
            0x2 | (3 << 4) | (1 << 6) | (1 << 7) | (u64::from(did) << 16),
            addr | (u64::from(ih) << 6) | u64::from(am),
        ]
    }
    /// PASID-cache invalidate (`QI_PC_TYPE`): granularity 0, 1 or 3.
    pub fn pasid_cache(g: u64, did: u16, pasid: u32) -> [u64; 2] {
        [
            0x7 | (g << 4) | (u64::from(did) << 16) | (u64::from(pasid) << 32),
            0,
        ]
    }
    /// PASID-based IOTLB invalidate (`QI_EIOTLB_TYPE`): `page` selects
    /// granularity 3 (page-selective) over 2 (all of the PASID).
    pub fn pasid_iotlb(did: u16, pasid: u32, page: Option<(u64, u8, bool)>) -> [u64; 2] {
        let g = if page.is_some() { 3 } else { 2 };
        let (addr, am, ih) = page.unwrap_or((0, 0, false));
        [
            0x6 | (g << 4) | (u64::from(did) << 16) | (u64::from(pasid) << 32),
            addr | (u64::from(ih) << 6) | u64::from(am),
        ]
    }
    /// Device-TLB invalidate (`qi_flush_dev_iotlb`).
    pub fn dev_tlb(sid: u16, addr: u64, size: bool) -> [u64; 2] {
        [0x3 | (u64::from(sid) << 32), addr | u64::from(size)]
    }
    /// PASID-based device-TLB invalidate.
    pub fn pasid_dev_tlb(sid: u16, pasid: u32, addr: u64, global: bool) -> [u64; 2] {
        [
            0x8 | (u64::from(sid) << 16) | (u64::from(pasid) << 32),
            addr | u64::from(global),
        ]
    }
    /// Device-TLB invalidate as `qi_desc_dev_iotlb` builds it: PFSID in
    /// bits 15:12 and 63:52, QDEP (MIP) in 20:16, and for `mask` > 0 the
    /// address with ones below bit `12 + mask - 1` and S set.
    pub fn dev_tlb_linux(sid: u16, pfsid: u16, qdep: u8, addr: u64, mask: u32) -> [u64; 2] {
        let qw1 = if mask > 0 {
            ((addr | ((1u64 << (12 + mask - 1)) - 1)) & !0xfff) | 1
        } else {
            addr & !0xfff
        };
        let pf = (u64::from(pfsid & 0xf) << 12) | (u64::from(pfsid & 0xfff0) << 48);
        let qdep = if qdep >= 32 { 0 } else { u64::from(qdep) };
        [0x3 | (qdep << 16) | (u64::from(sid) << 32) | pf, qw1]
    }
    /// PASID-based device-TLB invalidate as `qi_desc_dev_iotlb_pasid`
    /// builds it: SID in 31:16, QDEP in 8:4, PASID in 51:32, and for
    /// `size_order` > 0 ones below the size bit, the size bit clear, S
    /// (bit 11) set.
    pub fn pasid_dev_tlb_linux(
        sid: u16,
        pfsid: u16,
        pasid: u32,
        qdep: u8,
        addr: u64,
        size_order: u32,
    ) -> [u64; 2] {
        let pf = (u64::from(pfsid & 0xf) << 12) | (u64::from(pfsid & 0xfff0) << 48);
        let mut qw1 = addr & !0xfff;
        if size_order > 0 {
            qw1 |= ((1u64 << (size_order + 12)) - 1) & !0xfff;
            qw1 &= !(1u64 << (12 + size_order - 1));
            qw1 |= 1 << 11;
        }
        [
            0x8 | (u64::from(qdep & 0x1f) << 4)
                | (u64::from(sid) << 16)
                | (u64::from(pasid & 0xfffff) << 32)
                | pf,
            qw1,
        ]
    }
    /// Interrupt entry cache invalidate, global.
    pub fn iec_global() -> [u64; 2] {
        [0x4, 0]
    }
    /// Invalidation wait with status write (`QI_IWD_STATUS_WRITE`) of
    /// `data` at `addr`, optionally with IF and FN.
    pub fn wait(addr: u64, data: u32, interrupt: bool, fence: bool) -> [u64; 2] {
        [
            0x5 | (u64::from(interrupt) << 4)
                | (1 << 5)
                | (u64::from(fence) << 6)
                | (u64::from(data) << 32),
            addr,
        ]
    }
    /// Page group response.
    pub fn page_group_response(rid: u16, pasid: Option<u32>, code: u8, index: u16) -> [u64; 2] {
        [
            0x9 | (u64::from(pasid.is_some()) << 4)
                | (u64::from(code) << 12)
                | (u64::from(rid) << 16)
                | (u64::from(pasid.unwrap_or(0)) << 32),
            u64::from(index) << 3,
        ]
    }
}

/// Linux's `QI_DONE` status value.
pub const QI_DONE: u32 = 2;

/// Times [`Queue::submit`] submits a batch again after an invalidation
/// time-out before it gives up (Linux retries without bound).
pub const MAX_SUBMIT_RETRIES: u32 = 16;

/// The invalidation queue as `dmar.c` runs it: `qi_submit_sync` writes
/// descriptors then a wait descriptor with status write, bumps IQT with
/// one 32-bit write and polls the status.
#[derive(Clone, Debug)]
pub struct Queue {
    /// Queue base.
    pub base: u64,
    /// 256-bit descriptors (scalable mode).
    pub wide: bool,
    /// IQA.QS.
    pub qs: u64,
    /// Next free slot (index).
    pub free: u64,
    /// Status dword.
    pub status: u64,
}

impl Queue {
    /// Allocates the queue (`__dmar_enable_qi`: QS=1 with 256-bit
    /// descriptors, QS=0 otherwise) and its status dword.
    pub fn new<M: GuestMemory + ?Sized>(mem: &M, a: &mut PageAlloc, wide: bool) -> Queue {
        let qs = u64::from(wide);
        Queue {
            base: a.pages(mem, 1 << qs),
            wide,
            qs,
            free: 0,
            status: a.page(mem),
        }
    }

    fn slots(&self) -> u64 {
        (4096 << self.qs) / self.stride()
    }

    fn stride(&self) -> u64 {
        if self.wide { 32 } else { 16 }
    }

    /// IQA value.
    pub fn iqa(&self) -> u64 {
        self.base | (u64::from(self.wide) << 11) | self.qs
    }

    /// Writes one descriptor at the free slot without moving the tail.
    pub fn push<M: GuestMemory + ?Sized>(&mut self, mem: &M, d: [u64; 2]) {
        let at = self.base + self.free * self.stride();
        wr(mem, at, d[0]);
        wr(mem, at + 8, d[1]);
        if self.wide {
            wr(mem, at + 16, 0);
            wr(mem, at + 24, 0);
        }
        self.free = (self.free + 1) % self.slots();
    }

    /// The IQT value for the current free slot.
    pub fn tail(&self) -> u64 {
        self.free * self.stride()
    }

    /// `qi_submit_sync`: descriptors plus a wait with status write, one
    /// tail write; returns whether the status reached `QI_DONE`. As in
    /// Linux's `qi_check_fault`, an invalidation time-out (FSTS.ITE: the
    /// unit aborted the wait) is cleared and the batch submitted again,
    /// up to [`MAX_SUBMIT_RETRIES`] times.
    pub fn submit<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        descs: &[[u64; 2]],
    ) -> bool {
        for _ in 0..=MAX_SUBMIT_RETRIES {
            if self.submit_once(vtd, mem, descs) {
                return true;
            }
            let status = vtd.mmio_read(off::FSTS, 4);
            if !fsts::ITE.is_set(status) {
                return false;
            }
            // qi_check_fault: write 1 to clear ITE; the unit fetches again
            // from IQH, the aborted wait included; then restart.
            vtd.mmio_write(mem, off::FSTS, 4, fsts::ITE.mask());
        }
        false
    }

    /// One `qi_submit_sync` attempt, without the retry after a time-out.
    pub fn submit_once<M: GuestMemory + ?Sized>(
        &mut self,
        vtd: &mut Vtd,
        mem: &M,
        descs: &[[u64; 2]],
    ) -> bool {
        // One slot stays free: a full ring would have tail == head.
        assert!(
            descs.len() + 1 < self.slots() as usize,
            "batch larger than the queue"
        );
        mem.write_u32_le(Gpa(self.status), 1)
            .expect("status in RAM");
        for d in descs {
            self.push(mem, *d);
        }
        self.push(mem, desc::wait(self.status, QI_DONE, false, false));
        vtd.mmio_write(mem, off::IQT, 4, self.tail());
        mem.read_u32_le(Gpa(self.status)).expect("status in RAM") == QI_DONE
    }
}

/// What [`probe_like_linux`] leaves behind.
#[derive(Debug)]
pub struct Probed {
    /// The invalidation queue.
    pub queue: Queue,
    /// CAP as read.
    pub cap: u64,
    /// ECAP as read.
    pub ecap: u64,
}

/// The sequence Linux 7.2 runs at boot (`intel_iommu_init`): read CAP and
/// ECAP; `dmar_enable_qi` (IQT=0, IQA, GCMD.QIE, wait QIES);
/// `iommu_set_root_entry` (RTADDR, GCMD.SRTP, wait RTPS) followed by the
/// global context-cache, PASID-cache (scalable) and IOTLB invalidations
/// through the queue; then `iommu_enable_translation` (GCMD.TE, wait TES).
/// Panics if any wait would not finish.
pub fn probe_like_linux<M: GuestMemory + ?Sized>(
    vtd: &mut Vtd,
    mem: &M,
    a: &mut PageAlloc,
    root: u64,
) -> Probed {
    let cap = vtd.mmio_read(off::CAP, 8);
    let ecap = vtd.mmio_read(off::ECAP, 8);
    let smts = (ecap >> 43) & 1 == 1;
    assert!(ecap & 2 != 0, "Linux needs ECAP.QI for this sequence");
    let mut queue = Queue::new(mem, a, smts);
    let mut gcmd_v: u64 = 0;
    vtd.mmio_write(mem, off::IQT, 4, 0);
    vtd.mmio_write(mem, off::IQA, 8, queue.iqa());
    gcmd_v |= gcmd::QIE.mask();
    vtd.mmio_write(mem, off::GCMD, 4, gcmd_v);
    assert!(gcmd::QIE.is_set(vtd.mmio_read(off::GSTS, 4)), "QIES");
    vtd.mmio_write(mem, off::RTADDR, 8, root | (u64::from(smts) << 10));
    vtd.mmio_write(mem, off::GCMD, 4, gcmd_v | gcmd::SRTP.mask());
    assert!(gcmd::SRTP.is_set(vtd.mmio_read(off::GSTS, 4)), "RTPS");
    let mut flush = vec![desc::cc_global()];
    if smts {
        flush.push(desc::pasid_cache(3, 0, 0));
    }
    flush.push(desc::iotlb_global());
    assert!(
        queue.submit(vtd, mem, &flush),
        "global invalidation completes"
    );
    gcmd_v |= gcmd::TE.mask();
    vtd.mmio_write(mem, off::GCMD, 4, gcmd_v);
    assert!(gcmd::TE.is_set(vtd.mmio_read(off::GSTS, 4)), "TES");
    Probed { queue, cap, ecap }
}
