//! The translation cache for emulated devices, and the vm-memory view
//! built on it.
//!
//! A model's `translate` first asks the [`Iotlb`]; on a miss it walks the
//! guest's tables and inserts the leaf it found. Guest invalidation
//! commands remove entries by everything, domain, ASID/PASID, requester or
//! IOVA range. The cache is safe for concurrent `lookup`s from device
//! threads while the model processes commands: lookups take no lock (each
//! entry is a seqlock over atomics), and a walk that raced with an
//! invalidation cannot insert a stale entry (see [`Generation`]).
//!
//! Entries are keyed by (requester, PASID, privilege, page) and carry the
//! page size, so a 2 MiB superpage is one entry. The cache is bounded: a
//! full set evicts an entry before inserting, so a guest cannot make it
//! grow without limit.
//!
//! [`IommuView`] exposes one requester's translations through vm-memory's
//! [`vm_memory::iommu::Iommu`] trait, so a VMM's emulated device can use an
//! IOVA-addressed [`vm_memory::IommuMemory`] as its `GuestMemory`.

mod view;

use std::sync::atomic::{AtomicU64, Ordering, fence};

use serde::{Deserialize, Serialize};

use crate::types::{Access, Gpa, Iova, IovaRange, PageSize, Pasid, RequesterId};

pub use view::{IommuView, MAX_PAGES_PER_ACCESS, Translate, TranslateFault};

/// The default capacity, in entries: 16 K pages is 64 MiB of 4 KiB
/// mappings (far more with superpages), more than the working set of an
/// emulated device's rings and buffers, at 640 KiB of host memory, and small
/// enough that an invalidation scanning the whole cache stays in the tens of
/// microseconds.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// A cached translation: one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// IOVA of the page's first byte (aligned to `size`).
    pub iova: Iova,
    /// Guest physical address of the page's first byte (aligned to `size`).
    pub gpa: Gpa,
    /// The page size.
    pub size: PageSize,
    /// The permissions the walk granted. [`Access::PRIV`] set means the
    /// walk was made for a privileged (supervisor) request and the entry
    /// serves privileged requests only; clear, user requests only.
    pub access: Access,
}

impl Translation {
    /// The guest physical address of `iova`, which must lie in this page.
    pub fn gpa_of(&self, iova: Iova) -> Gpa {
        Gpa(self.gpa.raw() | iova.offset_in(self.size.bytes()))
    }

    /// Whether `iova` lies in this page.
    pub fn contains(&self, iova: Iova) -> bool {
        iova.align_down(self.size.bytes()) == self.iova
    }
}

/// What an entry was derived from, for invalidations by domain and ASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IotlbTag {
    /// VT-d domain ID, SMMUv3 VMID, or virtio-iommu domain.
    pub domain: u32,
    /// VT-d PASID of a PASID-granular (first-stage) translation, or SMMUv3
    /// ASID; `None` for domain-granular translations.
    pub asid: Option<u32>,
}

/// An invalidation of cached translations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbInvalidation {
    /// Everything (VT-d global IOTLB invalidation, SMMUv3 CMD_TLBI_NSNH_ALL).
    All,
    /// Every entry of a domain.
    Domain {
        /// The domain.
        domain: u32,
    },
    /// Every entry of one ASID (or PASID) in a domain.
    Asid {
        /// The domain.
        domain: u32,
        /// The ASID or PASID.
        asid: u32,
    },
    /// Entries of a domain overlapping `[iova, iova + len)`; with `asid`
    /// only those of that ASID, without it those of every ASID and the
    /// domain-granular ones.
    Range {
        /// The domain.
        domain: u32,
        /// The ASID or PASID, if the invalidation is ASID-granular.
        asid: Option<u32>,
        /// First address.
        iova: Iova,
        /// Length in bytes (saturating at the top of the address space).
        len: u64,
    },
    /// Every entry of a requester (its context changed or it detached).
    Requester {
        /// The requester.
        rid: RequesterId,
    },
    /// Every entry of one PASID of a requester.
    Pasid {
        /// The requester.
        rid: RequesterId,
        /// The PASID.
        pasid: Pasid,
    },
}

/// The cache's state as seen before a table walk. An insert made with an
/// older generation than the current one is dropped: an invalidation ran
/// while the walk was reading tables, and what it read may be stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(u64);

/// One way of a set: a seqlock over five words, all atomics, so lookups
/// take no lock and need no `unsafe`. `seq` is odd while a writer owns the
/// slot; readers retry (a bounded number of times) or count a miss.
#[derive(Debug, Default)]
struct Slot {
    seq: AtomicU64,
    /// Requester kind (2 bits) << 54 | privilege << 53 | (PASID + 1) << 32
    /// | raw requester ID; 0 = empty.
    who: AtomicU64,
    /// IOVA page base | log2(page size).
    page: AtomicU64,
    /// GPA page base | access bits.
    gpa: AtomicU64,
    /// Domain << 32 | (has ASID) << 31 ... see [`pack_tag`].
    tag: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Raw {
    who: u64,
    page: u64,
    gpa: u64,
    tag: u64,
}

fn pack_who(rid: RequesterId, pasid: Option<Pasid>, privileged: bool) -> u64 {
    let kind: u64 = match rid {
        RequesterId::Pci(_) => 1,
        RequesterId::Stream(_) => 2,
        RequesterId::Endpoint(_) => 3,
    };
    let pasid = pasid.map_or(0, |p| u64::from(p.raw()) + 1);
    (kind << 54) | (u64::from(privileged) << 53) | (pasid << 32) | u64::from(rid.raw())
}

/// The requester part of a packed `who` (kind and ID).
const WHO_RID: u64 = (3 << 54) | 0xffff_ffff;
/// The requester and PASID part of a packed `who`.
const WHO_RID_PASID: u64 = WHO_RID | (0x1f_ffff << 32);

fn pack_tag(tag: IotlbTag) -> u64 {
    // ASIDs and PASIDs are at most 20 bits wide (PCIe PASID; SMMUv3 ASIDs
    // are 16), so bit 31 can mark presence; a wider value is folded, which
    // can only make an ASID invalidation remove more, never less.
    let asid = tag
        .asid
        .map_or(0, |a| (1 << 31) | u64::from(a & 0x7fff_ffff));
    (u64::from(tag.domain) << 32) | asid
}

fn tag_domain(tag: u64) -> u32 {
    (tag >> 32) as u32
}

fn tag_asid(tag: u64) -> Option<u32> {
    (tag & (1 << 31) != 0).then_some((tag & 0x7fff_ffff) as u32)
}

/// Attempts a reader makes at a slot a writer holds before calling it a
/// miss (the caller then walks; correctness never depends on a hit).
const READ_RETRIES: u32 = 8;

impl Slot {
    fn read(&self) -> Option<Raw> {
        self.read_if(|_, _| true)
    }

    /// Reads the slot if its key words pass `want` (checked before the
    /// value words are read, so a mismatching way costs three loads).
    #[inline]
    fn read_if(&self, want: impl Fn(u64, u64) -> bool) -> Option<Raw> {
        for _ in 0..READ_RETRIES {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let who = self.who.load(Ordering::Relaxed);
            let page = self.page.load(Ordering::Relaxed);
            if !want(who, page) {
                // A torn read can only make a matching entry look
                // mismatched, which is a miss: the caller walks.
                return None;
            }
            let raw = Raw {
                who,
                page,
                gpa: self.gpa.load(Ordering::Relaxed),
                tag: self.tag.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return Some(raw);
            }
        }
        None
    }

    /// Takes the slot for writing; returns the sequence to release with.
    fn lock(&self) -> u64 {
        loop {
            let s = self.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                return s + 2;
            }
            std::hint::spin_loop();
        }
    }

    fn unlock(&self, next: u64) {
        self.seq.store(next, Ordering::Release);
    }

    fn current(&self) -> Raw {
        Raw {
            who: self.who.load(Ordering::Relaxed),
            page: self.page.load(Ordering::Relaxed),
            gpa: self.gpa.load(Ordering::Relaxed),
            tag: self.tag.load(Ordering::Relaxed),
        }
    }

    fn store(&self, r: Raw) {
        self.who.store(r.who, Ordering::Relaxed);
        self.page.store(r.page, Ordering::Relaxed);
        self.gpa.store(r.gpa, Ordering::Relaxed);
        self.tag.store(r.tag, Ordering::Relaxed);
    }
}

/// Ways per set: four entries sharing an IOVA page may be cached at once
/// (e.g. the same IOVA used by four requesters or PASIDs).
const WAYS: usize = 4;

/// A range is invalidated by probing the sets of its pages (of every page
/// size in use) when they are at most this fraction of the cache's sets;
/// a larger one scans the whole cache. Probing a page costs a hash and a
/// set's four slots, plus its share of sorting the sets; a scan costs every
/// slot, which for the default cache is about 70 µs: a 2 MiB range of
/// 4 KiB pages (512 probes) is several times cheaper probed.
const RANGE_PROBE_FRACTION: u64 = 4;

/// Totals of one cache since it was made, for a VMM's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IotlbStats {
    /// Lookups answered from the cache ([`Iotlb::lookup`]).
    pub hits: u64,
    /// Translations the model had to walk for ([`Iotlb::count_miss`]).
    pub misses: u64,
    /// Invalidations applied ([`Iotlb::invalidate`]).
    pub invalidations: u64,
}

/// The counters, on a cache line of their own: a hit writes one, and
/// lookups on other threads read the cache's other fields.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
}

/// Adds one to a statistic with a relaxed load and store rather than a
/// read-modify-write: the hit path stays free of locked instructions. Two
/// threads bumping at the same instant can lose one count; a statistic,
/// never used for a decision.
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// The translation cache: a set-associative table indexed by IOVA page
/// alone, so a range invalidation of a domain (which names no requester)
/// finds its entries by probing, not scanning.
#[derive(Debug)]
pub struct Iotlb {
    slots: Vec<Slot>,
    set_mask: u64,
    /// Bit n set: some entry of page size 2^n may be cached.
    shifts: AtomicU64,
    generation: AtomicU64,
    /// Inserts begun and finished (counted before the generation check and
    /// after the slot is unlocked): see [`Iotlb::invalidate`].
    inserts_begun: AtomicU64,
    inserts_done: AtomicU64,
    /// `inserts_done` as read at the start of the last complete scan of an
    /// [`IotlbInvalidation::All`]: every insert it counts was visited by
    /// that scan.
    clean_at: AtomicU64,
    /// Round-robin victim choice when a set is full.
    victim: AtomicU64,
    counters: Counters,
}

impl Default for Iotlb {
    fn default() -> Self {
        Iotlb::new(DEFAULT_CAPACITY)
    }
}

fn set_of(page_base: u64, shift: u32, set_mask: u64) -> u64 {
    let h = ((page_base >> shift) ^ u64::from(shift).rotate_left(40))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 20) & set_mask
}

impl Iotlb {
    /// A cache of about `capacity` entries (rounded up to a power of two
    /// number of four-way sets).
    pub fn new(capacity: usize) -> Iotlb {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        Iotlb {
            slots: (0..sets * WAYS).map(|_| Slot::default()).collect(),
            set_mask: sets as u64 - 1,
            shifts: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            inserts_begun: AtomicU64::new(0),
            inserts_done: AtomicU64::new(0),
            clean_at: AtomicU64::new(0),
            victim: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// Totals since the cache was made.
    pub fn stats(&self) -> IotlbStats {
        IotlbStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            invalidations: self.counters.invalidations.load(Ordering::Relaxed),
        }
    }

    /// Counts a translation the model walks for because [`Iotlb::lookup`]
    /// missed. Models call it once per walked translation, so that hits
    /// and misses add up to translations even when a shared wrapper looked
    /// the address up before taking the model's lock.
    pub fn count_miss(&self) {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries cached now.
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.read().is_some_and(|r| r.who != 0))
            .count()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take this before walking tables on a miss, and pass it to
    /// [`Iotlb::insert`].
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    fn set(&self, page_base: u64, shift: u32) -> &[Slot] {
        let first = (set_of(page_base, shift, self.set_mask) as usize) * WAYS;
        self.slots.get(first..first + WAYS).unwrap_or(&[])
    }

    /// The cached translation of `iova` for a request with `access`, if one
    /// is cached and grants it. A cached entry that does not grant the
    /// access is a miss: the caller walks again (the guest may have added
    /// permissions without invalidating, which the architectures allow).
    /// A hit counts in [`Iotlb::stats`].
    #[inline]
    pub fn lookup(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Option<Translation> {
        let t = self.peek(rid, pasid, iova, access);
        if t.is_some() {
            bump(&self.counters.hits);
        }
        t
    }

    /// [`Iotlb::lookup`] without counting a hit: for a caller that reads
    /// back the entry its own walk just inserted (the walk counted).
    pub fn peek(
        &self,
        rid: RequesterId,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Option<Translation> {
        let who = pack_who(rid, pasid, access.contains(Access::PRIV));
        let mut shifts = self.shifts.load(Ordering::Acquire);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            let base = iova.raw() & !((1u64 << shift) - 1);
            let page = base | u64::from(shift);
            for slot in self.set(base, shift) {
                let Some(r) = slot.read_if(|w, p| w == who && p == page) else {
                    continue;
                };
                let granted = Access::from_bits_truncate((r.gpa & 0xff) as u8);
                if !granted.permits(access) {
                    return None;
                }
                return Some(Translation {
                    iova: Iova(base),
                    gpa: Gpa(r.gpa & !0xfff),
                    size: PageSize::new(1u64 << shift)?,
                    access: granted,
                });
            }
        }
        None
    }

    /// Caches `t` for requests of `rid`/`pasid` with the privilege of
    /// `t.access`, unless an invalidation ran since `at` was taken. Returns
    /// whether the entry was cached.
    pub fn insert(
        &self,
        at: Generation,
        rid: RequesterId,
        pasid: Option<Pasid>,
        tag: IotlbTag,
        t: Translation,
    ) -> bool {
        let shift = t.size.shift();
        let base = t.iova.align_down(t.size.bytes()).raw();
        let raw = Raw {
            who: pack_who(rid, pasid, t.access.contains(Access::PRIV)),
            page: base | u64::from(shift),
            gpa: t.gpa.align_down(t.size.bytes()).raw() | u64::from(t.access.bits()),
            tag: pack_tag(tag),
        };
        let set = self.set(base, shift);
        // The way already holding this key, else an empty one, else a
        // round-robin victim.
        let way = set
            .iter()
            .position(|s| {
                s.read()
                    .is_some_and(|r| r.who == raw.who && r.page == raw.page)
            })
            .or_else(|| {
                set.iter()
                    .position(|s| s.read().is_some_and(|r| r.who == 0))
            })
            .unwrap_or_else(|| self.victim.fetch_add(1, Ordering::Relaxed) as usize % WAYS);
        let Some(slot) = set.get(way) else {
            return false;
        };
        self.inserts_begun.fetch_add(1, Ordering::SeqCst);
        let next = slot.lock();
        // Checked while holding the slot: an invalidation bumps the
        // generation before it visits the slots, so either this insert sees
        // the new generation, or the invalidation visits the slot after it.
        let fresh = self.generation.load(Ordering::SeqCst) == at.0;
        if fresh {
            slot.store(raw);
        }
        slot.unlock(next);
        self.inserts_done.fetch_add(1, Ordering::SeqCst);
        if fresh {
            self.shifts.fetch_or(1u64 << shift, Ordering::AcqRel);
        }
        fresh
    }

    /// Removes the entries `inv` names. Returns how many were removed.
    pub fn invalidate(&self, inv: IotlbInvalidation) -> usize {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        let removed = match self.empty_since_last_scan() {
            Ok(()) => 0,
            Err(done) => match inv {
                IotlbInvalidation::All => {
                    let removed = self.clear_matching(0..self.slots.len(), inv);
                    self.clean_at.fetch_max(done, Ordering::SeqCst);
                    removed
                }
                IotlbInvalidation::Range { iova, len, .. } => match self.range_sets(iova, len) {
                    Some(sets) => sets
                        .iter()
                        .map(|&set| self.clear_matching(set * WAYS..set * WAYS + WAYS, inv))
                        .sum(),
                    None => self.clear_matching(0..self.slots.len(), inv),
                },
                _ => self.clear_matching(0..self.slots.len(), inv),
            },
        };
        if inv == IotlbInvalidation::All {
            // Nothing of any size is cached any more; keep lookups at one
            // probe per size actually in use.
            self.shifts.store(0, Ordering::Release);
        }
        removed
    }

    /// `Ok` when nothing can be cached that an invalidation begun (its
    /// generation bumped) before this call must remove: nothing was
    /// inserted since the start of the last complete scan of an
    /// [`IotlbInvalidation::All`]. Then no invalidation visits the slots (a
    /// reset, or a guest's invalidations, of an idle cache cost no scan of
    /// every slot). Otherwise the count of finished inserts, which an
    /// `All` scan begun now records in `clean_at` once complete.
    ///
    /// Sound with concurrent inserts (all orderings here are SeqCst, so
    /// the counters and the generation have one order). Reading `done`
    /// then `begun` equal means no insert was under way at the read of
    /// `done`; one begun later checks the generation after the caller
    /// bumped it, so it stores only a translation walked after the
    /// invalidation began. An insert counted in `clean_at` stored its
    /// entry before that scan read the counter, so the scan removed it.
    fn empty_since_last_scan(&self) -> Result<(), u64> {
        let done = self.inserts_done.load(Ordering::SeqCst);
        let begun = self.inserts_begun.load(Ordering::SeqCst);
        if done == begun && done == self.clean_at.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(done)
        }
    }

    /// The sets a small range's entries can be in, or `None` when the range
    /// is large enough that scanning everything is cheaper.
    fn range_sets(&self, iova: Iova, len: u64) -> Option<Vec<usize>> {
        let last = iova.raw().saturating_add(len.max(1) - 1);
        let mut sets = Vec::new();
        let mut budget = (self.set_mask + 1) / RANGE_PROBE_FRACTION;
        let mut shifts = self.shifts.load(Ordering::Acquire);
        while shifts != 0 {
            let shift = shifts.trailing_zeros();
            shifts &= shifts - 1;
            let (first_page, last_page) = (iova.raw() >> shift, last >> shift);
            let pages = (last_page - first_page).saturating_add(1);
            if pages > budget {
                return None;
            }
            budget -= pages;
            for p in first_page..=last_page {
                sets.push(set_of(p << shift, shift, self.set_mask) as usize);
            }
        }
        sets.sort_unstable();
        sets.dedup();
        Some(sets)
    }

    fn clear_matching(&self, slots: std::ops::Range<usize>, inv: IotlbInvalidation) -> usize {
        let mut removed = 0;
        for slot in self.slots.get(slots).unwrap_or(&[]) {
            // Cheap unlocked check first; most slots do not match.
            if !slot.read().is_none_or(|r| r.who != 0 && matches(&r, inv)) {
                continue;
            }
            let next = slot.lock();
            let r = slot.current();
            if r.who != 0 && matches(&r, inv) {
                slot.store(Raw {
                    who: 0,
                    page: 0,
                    gpa: 0,
                    tag: 0,
                });
                removed += 1;
            }
            slot.unlock(next);
        }
        removed
    }
}

/// Whether the cached entry `r` is one `inv` removes.
fn matches(r: &Raw, inv: IotlbInvalidation) -> bool {
    let domain = tag_domain(r.tag);
    match inv {
        IotlbInvalidation::All => true,
        IotlbInvalidation::Domain { domain: d } => domain == d,
        IotlbInvalidation::Asid { domain: d, asid } => {
            domain == d && tag_asid(r.tag) == Some(asid & 0x7fff_ffff)
        }
        IotlbInvalidation::Range {
            domain: d,
            asid,
            iova,
            len,
        } => {
            let shift = (r.page & 0xfff) as u32;
            let first = r.page & !0xfff;
            let page = IovaRange {
                first: Iova(first),
                last: Iova(first | ((1u64 << shift.min(63)) - 1)),
            };
            let range = IovaRange {
                first: iova,
                last: Iova(iova.raw().saturating_add(len.max(1) - 1)),
            };
            domain == d
                && (asid.is_none() || tag_asid(r.tag) == asid.map(|a| a & 0x7fff_ffff))
                && page.overlaps(&range)
        }
        IotlbInvalidation::Requester { rid } => {
            r.who & WHO_RID == pack_who(rid, None, false) & WHO_RID
        }
        IotlbInvalidation::Pasid { rid, pasid } => {
            r.who & WHO_RID_PASID == pack_who(rid, Some(pasid), false) & WHO_RID_PASID
        }
    }
}

#[cfg(test)]
mod tests;
