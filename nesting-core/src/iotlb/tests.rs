use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};

use super::*;
use crate::types::{Bdf, EndpointId};

fn rid(n: u16) -> RequesterId {
    RequesterId::Pci(Bdf(n))
}

fn page(iova: u64, gpa: u64, size: PageSize, access: Access) -> Translation {
    Translation {
        iova: Iova(iova),
        gpa: Gpa(gpa),
        size,
        access,
    }
}

const TAG: IotlbTag = IotlbTag {
    domain: 1,
    asid: None,
};

#[test]
fn lookup_after_insert_hits_with_offset_and_size() {
    let tlb = Iotlb::new(64);
    let g = tlb.generation();
    assert!(tlb.insert(
        g,
        rid(8),
        None,
        TAG,
        page(0x20_0000, 0x4000_0000, PageSize::SIZE_2M, Access::RW)
    ));
    let t = tlb
        .lookup(rid(8), None, Iova(0x21_2345), Access::READ)
        .unwrap();
    assert_eq!(t.size, PageSize::SIZE_2M);
    assert_eq!(t.gpa_of(Iova(0x21_2345)), Gpa(0x4001_2345));
    assert!(
        tlb.lookup(rid(9), None, Iova(0x21_2345), Access::READ)
            .is_none()
    );
    assert!(
        tlb.lookup(rid(8), Pasid::new(1), Iova(0x21_2345), Access::READ)
            .is_none()
    );
}

#[test]
fn lookup_without_permission_misses() {
    let tlb = Iotlb::new(64);
    tlb.insert(
        tlb.generation(),
        rid(1),
        None,
        TAG,
        page(0x1000, 0x5000, PageSize::SIZE_4K, Access::READ),
    );
    assert!(
        tlb.lookup(rid(1), None, Iova(0x1000), Access::WRITE)
            .is_none()
    );
    assert!(
        tlb.lookup(rid(1), None, Iova(0x1000), Access::READ)
            .is_some()
    );
}

#[test]
fn privileged_and_user_entries_are_separate() {
    let tlb = Iotlb::new(64);
    let sup = Access::RW | Access::PRIV;
    tlb.insert(
        tlb.generation(),
        rid(1),
        None,
        TAG,
        page(0x1000, 0x5000, PageSize::SIZE_4K, sup),
    );
    assert!(
        tlb.lookup(rid(1), None, Iova(0x1000), Access::READ)
            .is_none()
    );
    assert!(
        tlb.lookup(rid(1), None, Iova(0x1000), Access::READ | Access::PRIV)
            .is_some()
    );
}

#[test]
fn insert_with_stale_generation_is_dropped() {
    let tlb = Iotlb::new(64);
    let g = tlb.generation();
    tlb.invalidate(IotlbInvalidation::Domain { domain: 7 });
    assert!(!tlb.insert(
        g,
        rid(1),
        None,
        TAG,
        page(0, 0, PageSize::SIZE_4K, Access::RW)
    ));
    assert!(tlb.is_empty());
}

#[test]
fn capacity_is_bounded() {
    let tlb = Iotlb::new(32);
    for i in 0..10_000u64 {
        tlb.insert(
            tlb.generation(),
            rid(1),
            None,
            TAG,
            page(i << 12, i << 12, PageSize::SIZE_4K, Access::RW),
        );
    }
    assert!(
        tlb.len() <= tlb.capacity(),
        "{} > {}",
        tlb.len(),
        tlb.capacity()
    );
    assert!(tlb.capacity() < 64);
}

#[test]
fn invalidations_remove_exactly_what_they_name() {
    let tlb = Iotlb::new(1024);
    let ins = |r: u16, pasid: Option<u32>, domain: u32, asid: Option<u32>, iova: u64| {
        tlb.insert(
            tlb.generation(),
            rid(r),
            pasid.and_then(Pasid::new),
            IotlbTag { domain, asid },
            page(iova, iova, PageSize::SIZE_4K, Access::RW),
        );
    };
    let has = |r: u16, pasid: Option<u32>, iova: u64| {
        tlb.lookup(rid(r), pasid.and_then(Pasid::new), Iova(iova), Access::READ)
            .is_some()
    };
    ins(1, None, 1, None, 0x1000);
    ins(1, None, 1, None, 0x2000);
    ins(2, Some(5), 1, Some(5), 0x1000);
    ins(3, None, 2, None, 0x1000);

    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Range {
            domain: 1,
            asid: None,
            iova: Iova(0x2000),
            len: 0x1000
        }),
        1
    );
    assert!(!has(1, None, 0x2000) && has(1, None, 0x1000));

    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Asid { domain: 1, asid: 5 }),
        1
    );
    assert!(!has(2, Some(5), 0x1000) && has(1, None, 0x1000));

    ins(2, Some(5), 1, Some(5), 0x1000);
    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Pasid {
            rid: rid(2),
            pasid: Pasid::new(5).unwrap()
        }),
        1
    );
    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Requester { rid: rid(3) }),
        1
    );
    assert!(has(1, None, 0x1000));
    assert_eq!(tlb.invalidate(IotlbInvalidation::Domain { domain: 1 }), 1);
    assert!(tlb.is_empty());
}

#[test]
fn range_invalidation_hits_a_superpage_it_overlaps() {
    let tlb = Iotlb::new(64);
    tlb.insert(
        tlb.generation(),
        rid(1),
        None,
        TAG,
        page(0x4000_0000, 0, PageSize::SIZE_1G, Access::RW),
    );
    let inv = IotlbInvalidation::Range {
        domain: 1,
        asid: None,
        iova: Iova(0x5000_0000),
        len: 0x1000,
    };
    assert_eq!(tlb.invalidate(inv), 1);
}

/// In the default cache a 2 MiB range of 4 KiB pages is invalidated by
/// probing its pages' sets at both page sizes in use (not by a scan):
/// what it overlaps goes, the next 2 MiB stays.
#[test]
fn probed_range_invalidation_removes_every_page_size_it_overlaps() {
    let tlb = Iotlb::default();
    let base = 0x4000_0000u64;
    let put = |iova: u64, size: PageSize| {
        assert!(tlb.insert(
            tlb.generation(),
            rid(1),
            None,
            TAG,
            page(iova, iova + 0x1_0000_0000, size, Access::RW),
        ));
    };
    put(base, PageSize::SIZE_2M);
    for p in 0..512u64 {
        put(base + (2 << 20) + (p << 12), PageSize::SIZE_4K);
        put(base + (4 << 20) + (p << 12), PageSize::SIZE_4K);
    }
    let range = |at: u64| IotlbInvalidation::Range {
        domain: 1,
        asid: None,
        iova: Iova(at),
        len: 2 << 20,
    };
    assert_eq!(tlb.invalidate(range(base)), 1);
    assert_eq!(tlb.invalidate(range(base + (2 << 20))), 512);
    assert_eq!(tlb.len(), 512);
    let hit = |iova: u64| tlb.lookup(rid(1), None, Iova(iova), Access::READ).is_some();
    assert!(!hit(base + 0x1000) && !hit(base + (2 << 20)));
    assert!(hit(base + (4 << 20)) && hit(base + (6 << 20) - 0x1000));
}

#[test]
fn range_invalidation_at_top_of_space_saturates() {
    let tlb = Iotlb::new(64);
    tlb.insert(
        tlb.generation(),
        rid(1),
        None,
        TAG,
        page(!0xfff, 0, PageSize::SIZE_4K, Access::RW),
    );
    let inv = IotlbInvalidation::Range {
        domain: 1,
        asid: None,
        iova: Iova(u64::MAX - 0x10),
        len: u64::MAX,
    };
    assert_eq!(tlb.invalidate(inv), 1);
}

#[test]
fn requester_kinds_do_not_alias() {
    let tlb = Iotlb::new(64);
    tlb.insert(
        tlb.generation(),
        RequesterId::Endpoint(EndpointId(8)),
        None,
        TAG,
        page(0, 0, PageSize::SIZE_4K, Access::RW),
    );
    assert!(
        tlb.lookup(RequesterId::Pci(Bdf(8)), None, Iova(0), Access::READ)
            .is_none()
    );
}

/// (domain, IOVA page base) -> (gpa, size, access).
type Tables = BTreeMap<(u32, u64), (u64, PageSize, Access)>;

/// A guest's page tables, reduced to what a walk returns: page -> leaf.
#[derive(Debug, Default)]
struct ToyModel {
    /// (domain of the requester, IOVA page base) -> (gpa, size, access)
    tables: Mutex<Tables>,
    /// requester -> domain
    domains: BTreeMap<u16, u32>,
    iotlb: Iotlb,
    walks: AtomicU64,
}

impl ToyModel {
    fn walk(&self, rid: RequesterId, iova: Iova) -> Option<(u32, Translation)> {
        self.walks.fetch_add(1, Ordering::Relaxed);
        let RequesterId::Pci(b) = rid else {
            return None;
        };
        let domain = *self.domains.get(&b.0)?;
        let tables = self.tables.lock().unwrap();
        for size in [PageSize::SIZE_4K, PageSize::SIZE_2M] {
            let base = iova.align_down(size.bytes()).raw();
            if let Some(&(gpa, s, access)) = tables.get(&(domain, base))
                && s == size
            {
                return Some((domain, page(base, gpa, size, access)));
            }
        }
        None
    }

    fn cached(&self, rid: RequesterId, iova: Iova, access: Access) -> Option<Translation> {
        if let Some(t) = self.iotlb.lookup(rid, None, iova, access) {
            return Some(t);
        }
        let g = self.iotlb.generation();
        let (domain, t) = self.walk(rid, iova)?;
        if !t.access.permits(access) {
            return None;
        }
        self.iotlb
            .insert(g, rid, None, IotlbTag { domain, asid: None }, t);
        Some(t)
    }
}

impl Translate for ToyModel {
    fn translate(
        &self,
        rid: RequesterId,
        _pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> Result<Translation, TranslateFault> {
        self.cached(rid, iova, access)
            .ok_or(TranslateFault { rid, iova })
    }

    fn iotlb(&self) -> &Iotlb {
        &self.iotlb
    }
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        domain: u32,
        slot: u64,
        big: bool,
        gpa: u64,
        write: bool,
        inv: u8,
    },
    Unmap {
        domain: u32,
        slot: u64,
        inv: u8,
    },
    Invalidate(u8, u32),
    Translate {
        dev: u16,
        slot: u64,
        off: u64,
        write: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..2u32,
            0..16u64,
            any::<bool>(),
            0..64u64,
            any::<bool>(),
            0..3u8
        )
            .prop_map(|(domain, slot, big, gpa, write, inv)| Op::Map {
                domain,
                slot,
                big,
                gpa,
                write,
                inv
            }),
        (0..2u32, 0..16u64, 0..3u8).prop_map(|(domain, slot, inv)| Op::Unmap { domain, slot, inv }),
        (0..3u8, 0..2u32).prop_map(|(k, d)| Op::Invalidate(k, d)),
        (0..4u16, 0..16u64, 0..0x20_0000u64, any::<bool>()).prop_map(|(dev, slot, off, write)| {
            Op::Translate {
                dev,
                slot,
                off,
                write,
            }
        }),
    ]
}

/// The guest changes one 2 MiB slot of a domain's tables (a 2 MiB page,
/// a 4 KiB page at its start, or nothing), then invalidates it in one of
/// three ways.
fn change(
    model: &ToyModel,
    domain: u32,
    slot: u64,
    leaf: Option<(u64, PageSize, Access)>,
    inv: u8,
) {
    let base = slot << 21;
    {
        let mut t = model.tables.lock().unwrap();
        t.retain(|&(d, iova), _| d != domain || iova >> 21 != slot);
        if let Some(l) = leaf {
            t.insert((domain, base), l);
        }
    }
    let i = match inv {
        0 => IotlbInvalidation::All,
        1 => IotlbInvalidation::Domain { domain },
        _ => IotlbInvalidation::Range {
            domain,
            asid: None,
            iova: Iova(base),
            len: 1 << 21,
        },
    };
    model.iotlb.invalidate(i);
}

proptest! {
    /// A guest that invalidates after every change sees, through the cache,
    /// exactly what an uncached walk returns.
    #[test]
    fn cached_translate_equals_uncached_walk(
        ops in proptest::collection::vec(op(), 1..120),
        large in any::<bool>(),
    ) {
        // Two requesters per domain; a tiny cache so eviction happens too,
        // or the default one, where a 2 MiB range invalidation probes its
        // pages' sets instead of scanning every slot.
        let capacity = if large { DEFAULT_CAPACITY } else { 20 };
        let model = ToyModel {
            domains: [(0, 0), (1, 0), (2, 1), (3, 1)].into_iter().collect(),
            iotlb: Iotlb::new(capacity),
            ..Default::default()
        };
        for op in ops {
            match op {
                Op::Map { domain, slot, big, gpa, write, inv } => {
                    let size = if big { PageSize::SIZE_2M } else { PageSize::SIZE_4K };
                    let access = if write { Access::RW } else { Access::READ };
                    change(&model, domain, slot, Some((gpa << 21, size, access)), inv);
                }
                Op::Unmap { domain, slot, inv } => change(&model, domain, slot, None, inv),
                Op::Invalidate(k, domain) => {
                    let i = match k {
                        0 => IotlbInvalidation::All,
                        1 => IotlbInvalidation::Domain { domain },
                        _ => IotlbInvalidation::Requester { rid: rid(domain as u16) },
                    };
                    model.iotlb.invalidate(i);
                }
                Op::Translate { dev, slot, off, write } => {
                    let iova = Iova((slot << 21) + off);
                    let access = if write { Access::WRITE } else { Access::READ };
                    let walked = model
                        .walk(rid(dev), iova)
                        .filter(|(_, t)| t.access.permits(access))
                        .map(|(_, t)| t.gpa_of(iova));
                    let cached = model.cached(rid(dev), iova, access).map(|t| t.gpa_of(iova));
                    prop_assert_eq!(cached, walked);
                }
            }
            prop_assert!(model.iotlb.len() <= model.iotlb.capacity());
        }
    }
}

/// Lookups from other threads never return a translation older than the
/// last invalidation that completed before they started.
#[test]
fn concurrent_lookups_never_see_invalidated_entries() {
    let model = Arc::new(ToyModel {
        domains: [(1, 1)].into_iter().collect(),
        ..Default::default()
    });
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    model
        .tables
        .lock()
        .unwrap()
        .insert((1, 0x1000), (0, PageSize::SIZE_4K, Access::RW));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (model, published, stop) = (model.clone(), published.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) && n < 200_000 {
                    let floor = published.load(Ordering::Acquire);
                    let t = model.cached(rid(1), Iova(0x1000), Access::READ).unwrap();
                    let version = t.gpa.raw() >> 12;
                    assert!(
                        version >= floor,
                        "saw version {version} after {floor} was published"
                    );
                    n += 1;
                }
            })
        })
        .collect();
    for v in 1..2000u64 {
        model
            .tables
            .lock()
            .unwrap()
            .insert((1, 0x1000), (v << 12, PageSize::SIZE_4K, Access::RW));
        model.iotlb.invalidate(IotlbInvalidation::Range {
            domain: 1,
            asid: None,
            iova: Iova(0x1000),
            len: 0x1000,
        });
        published.store(v, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn iommu_memory_reads_and_writes_through_the_view() {
    let phys: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
    let mut model = ToyModel::default();
    model.domains.insert(8, 1);
    {
        let mut t = model.tables.lock().unwrap();
        // IOVA 0x10_0000 -> GPA 0x3000 (4K, RW); IOVA 0x10_1000 -> 0x1000 (RO).
        t.insert((1, 0x10_0000), (0x3000, PageSize::SIZE_4K, Access::RW));
        t.insert((1, 0x10_1000), (0x1000, PageSize::SIZE_4K, Access::READ));
    }
    let model = Arc::new(model);
    let view = IommuView::new(model.clone(), rid(8), None, false);
    let mem = IommuMemory::new(phys.clone(), view, true, ());

    // A write crossing into the read-only page is refused whole.
    assert!(mem.write_slice(&[1u8; 8], GuestAddress(0x10_0ffc)).is_err());
    // Within the RW page it lands at the translated GPA.
    mem.write_obj(0xdead_beef_u32, GuestAddress(0x10_0010))
        .unwrap();
    assert_eq!(
        phys.read_obj::<u32>(GuestAddress(0x3010)).unwrap(),
        0xdead_beef
    );
    // Reads across both pages work.
    phys.write_obj(0x55u8, GuestAddress(0x1000)).unwrap();
    let mut buf = [0u8; 2];
    mem.read_slice(&mut buf, GuestAddress(0x10_0fff)).unwrap();
    assert_eq!(buf[1], 0x55);
    // Unmapped IOVA.
    assert!(mem.read_obj::<u8>(GuestAddress(0x20_0000)).is_err());

    // The guest remaps and invalidates: the view follows.
    model
        .tables
        .lock()
        .unwrap()
        .insert((1, 0x10_0000), (0x8000, PageSize::SIZE_4K, Access::RW));
    model
        .iotlb
        .invalidate(IotlbInvalidation::Domain { domain: 1 });
    mem.write_obj(0x77u8, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(phys.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0x77);
}

#[test]
fn view_refuses_huge_ranges_without_walking_them_all() {
    let phys: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let mut model = ToyModel::default();
    model.domains.insert(8, 1);
    let model = Arc::new(model);
    let view = IommuView::new(model.clone(), rid(8), None, false);
    let r = vm_memory::iommu::Iommu::translate(
        &view,
        GuestAddress(0),
        usize::MAX / 2,
        vm_memory::Permissions::Read,
    );
    assert!(r.is_err());
    assert!(model.walks.load(Ordering::Relaxed) <= MAX_PAGES_PER_ACCESS + 1);
    drop(phys);
}

#[test]
fn stats_count_hits_misses_and_invalidations() {
    let tlb = Iotlb::new(64);
    let rid = RequesterId::Pci(crate::types::Bdf(8));
    let t = Translation {
        iova: Iova(0x1000),
        gpa: Gpa(0x5000),
        size: PageSize::SIZE_4K,
        access: Access::RW,
    };
    assert!(tlb.lookup(rid, None, Iova(0x1000), Access::READ).is_none());
    tlb.count_miss();
    let tag = IotlbTag {
        domain: 1,
        asid: None,
    };
    assert!(tlb.insert(tlb.generation(), rid, None, tag, t));
    assert!(tlb.peek(rid, None, Iova(0x1000), Access::READ).is_some());
    assert!(tlb.lookup(rid, None, Iova(0x1008), Access::READ).is_some());
    tlb.invalidate(IotlbInvalidation::All);
    let s = tlb.stats();
    assert_eq!(
        (s.hits, s.misses, s.invalidations),
        (1, 1, 1),
        "peek is no hit"
    );
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"hits":1,"misses":1,"invalidations":1}"#
    );
}

#[test]
fn invalidate_all_after_an_idle_period_still_removes_later_inserts() {
    let tlb = Iotlb::new(64);
    let t = page(0x1000, 0x5000, PageSize::SIZE_4K, Access::RW);
    assert_eq!(
        tlb.invalidate(IotlbInvalidation::All),
        0,
        "empty from the start"
    );
    assert!(tlb.insert(tlb.generation(), rid(1), None, TAG, t));
    assert_eq!(tlb.invalidate(IotlbInvalidation::All), 1);
    // Nothing inserted since: the idle invalidation still bumps the
    // generation, so a walk begun before it caches nothing.
    let before = tlb.generation();
    assert_eq!(tlb.invalidate(IotlbInvalidation::All), 0);
    assert!(!tlb.insert(before, rid(1), None, TAG, t));
    assert!(tlb.is_empty());
    // An insert after it is removed by the next one.
    assert!(tlb.insert(tlb.generation(), rid(2), None, TAG, t));
    assert_eq!(tlb.invalidate(IotlbInvalidation::Domain { domain: 9 }), 0);
    assert_eq!(tlb.invalidate(IotlbInvalidation::All), 1);
    assert!(tlb.is_empty());
    assert_eq!(tlb.stats().invalidations, 5);
}

#[test]
fn any_invalidation_of_a_cache_emptied_by_all_removes_later_inserts() {
    let tlb = Iotlb::new(64);
    let t = page(0x1000, 0x5000, PageSize::SIZE_4K, Access::RW);
    assert!(tlb.insert(tlb.generation(), rid(1), None, TAG, t));
    // Not empty: a requester invalidation scans and removes it.
    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Requester { rid: rid(1) }),
        1
    );
    // Empty, but no All scan says so: the next one scans, then idle
    // invalidations of any kind skip.
    assert_eq!(tlb.invalidate(IotlbInvalidation::All), 0);
    let before = tlb.generation();
    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Requester { rid: rid(1) }),
        0
    );
    assert!(!tlb.insert(before, rid(1), None, TAG, t), "stale walk");
    assert!(tlb.insert(tlb.generation(), rid(1), None, TAG, t));
    assert_eq!(
        tlb.invalidate(IotlbInvalidation::Requester { rid: rid(2) }),
        0
    );
    assert_eq!(tlb.invalidate(IotlbInvalidation::Domain { domain: 1 }), 1);
    assert!(tlb.is_empty());
}
