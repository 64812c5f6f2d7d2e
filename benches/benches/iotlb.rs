//! The translation cache: a hit (goal: under 20 ns) and a miss, the cost
//! an emulated device pays per DMA page before any table walk.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nesting_core::iotlb::{Iotlb, IotlbInvalidation, IotlbTag, Translation};
use nesting_core::types::{Access, Bdf, Gpa, Iova, PageSize, RequesterId};

fn filled() -> Iotlb {
    let tlb = Iotlb::default();
    let tag = IotlbTag {
        domain: 1,
        asid: None,
    };
    // 4 devices x 2048 pages: half the default capacity, a realistic, not
    // an empty, table.
    for dev in 0..4u16 {
        for p in 0..2048u64 {
            let t = Translation {
                iova: Iova(p << 12),
                gpa: Gpa((p + 0x100) << 12),
                size: PageSize::SIZE_4K,
                access: Access::RW,
            };
            tlb.insert(tlb.generation(), RequesterId::Pci(Bdf(dev)), None, tag, t);
        }
    }
    tlb
}

fn iotlb(c: &mut Criterion) {
    let tlb = filled();
    let rid = RequesterId::Pci(Bdf(3));
    let mut i = 0u64;
    let hits = (0..2048u64)
        .filter(|&p| tlb.lookup(rid, None, Iova(p << 12), Access::READ).is_some())
        .count();
    assert!(
        hits > 2000,
        "only {hits} of 2048 pages cached: not a hit benchmark"
    );
    // A device hitting the few pages of its rings: the entry stays in the
    // CPU cache, as in steady-state DMA.
    c.bench_function("iotlb/hit-hot-page", |b| {
        b.iter(|| black_box(tlb.lookup(rid, None, black_box(Iova(0x5010)), Access::READ)))
    });
    // Lookups spread over 2048 pages: mostly CPU cache misses.
    c.bench_function("iotlb/hit", |b| {
        b.iter(|| {
            i = (i + 1) & 2047;
            black_box(tlb.lookup(rid, None, black_box(Iova((i << 12) | 0x10)), Access::READ))
        })
    });
    c.bench_function("iotlb/miss", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(tlb.lookup(
                rid,
                None,
                black_box(Iova((i + 0x10_0000) << 12)),
                Access::READ,
            ))
        })
    });
    c.bench_function("iotlb/range-invalidate-one-page", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            tlb.invalidate(IotlbInvalidation::Range {
                domain: 1,
                asid: None,
                iova: Iova(i << 12),
                len: 4096,
            })
        })
    });
    // A guest unmapping 2 MiB of 4 KiB pages (VT-d AM=9, an SMMU range
    // TLBI, a virtio-iommu UNMAP): 512 pages' sets probed, not the whole
    // cache. The pages are not cached, so every iteration does the same
    // work on the same half-full cache.
    c.bench_function("iotlb/range-invalidate-2m", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            tlb.invalidate(IotlbInvalidation::Range {
                domain: 1,
                asid: None,
                iova: Iova((0x10_0000 + (i << 9)) << 12),
                len: 2 << 20,
            })
        })
    });
}

criterion_group!(benches, iotlb);
criterion_main!(benches);
