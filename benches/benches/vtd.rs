//! VT-d model: translate hit and miss for 4-level second-stage (legacy)
//! and first-stage (scalable) tables, queued invalidation descriptors
//! processed per second, and ATS translation requests (device-TLB fills).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nesting_core::options::ModelOptions;
use nesting_core::types::{Access, Bdf, Iova};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd::VtdConfig;
use vtd::mock::{
    FsTables, LegacyTables, PageAlloc, PasidSetup, Queue, ScalableTables, SlTables, desc, flpte,
    probe_like_linux,
};
use vtd::translate::{Outcome, Request};
use vtd::{AtsCompletion, TranslateResult, TranslationRequest, Vtd};

const SID: u16 = 0x10;

fn config(opts: &[&str]) -> VtdConfig {
    VtdConfig::from_options(opts).unwrap()
}

struct Setup {
    mem: GuestMemoryMmap,
    vtd: Vtd,
    queue: Queue,
}

fn mem() -> (GuestMemoryMmap, PageAlloc) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    (mem, PageAlloc::new(8 << 20, 8 << 20))
}

/// Legacy unit, 4-level second-stage tables mapping 256 pages at 1 GiB;
/// context translation type `tt` (0 untranslated only, 1 device-TLBs).
fn legacy_tt(tt: u64) -> Setup {
    let (mem, mut a) = mem();
    let mut vtd = Vtd::new(config(&["mode=legacy"]));
    let t = LegacyTables::new(&mem, &mut a);
    let sl = SlTables::new(&mem, &mut a, 4);
    for p in 0..256u64 {
        sl.map(&mem, &mut a, (1 << 30) + (p << 12), p << 12, 12, true, true);
    }
    t.set_context(&mem, &mut a, SID, 1, tt, 2, sl.root, false);
    let queue = probe_like_linux(&mut vtd, &mem, &mut a, t.root).queue;
    Setup { mem, vtd, queue }
}

fn legacy() -> Setup {
    legacy_tt(0)
}

/// Scalable unit, 4-level first-stage tables (RID_PASID) mapping the same;
/// `dte`: device-TLBs enabled in the context entry.
fn scalable_dte(dte: bool) -> Setup {
    let (mem, mut a) = mem();
    let mut vtd = Vtd::new(config(&[]));
    let t = ScalableTables::new(&mem, &mut a);
    let dir = t.set_context(&mem, &mut a, SID, 0, 0);
    t.set_dte(&mem, SID, dte);
    let fs = FsTables::new(&mem, &mut a, 4);
    for p in 0..256u64 {
        // A and D preset, as Linux sets them on first-stage leaves.
        let flags = flpte::RW | flpte::US | flpte::A | flpte::D;
        fs.map(&mem, &mut a, (1 << 30) + (p << 12), p << 12, 12, flags);
    }
    t.set_pasid(
        &mem,
        &mut a,
        dir,
        0,
        &PasidSetup::first_stage(1, fs.root, 4, false, false),
    );
    let queue = probe_like_linux(&mut vtd, &mem, &mut a, t.root).queue;
    Setup { mem, vtd, queue }
}

fn scalable() -> Setup {
    scalable_dte(false)
}

fn translate(c: &mut Criterion) {
    for (name, mut s) in [("second-stage", legacy()), ("first-stage", scalable())] {
        let iova = Iova((1 << 30) + 0x5000);
        let r = s.vtd.translate(&s.mem, Bdf(SID), None, iova, Access::RW);
        assert!(matches!(r, TranslateResult::Mapped(_)), "{name}: {r:?}");
        c.bench_function(&format!("vtd translate hit 4-level {name}"), |b| {
            b.iter(|| {
                black_box(
                    s.vtd
                        .translate(&s.mem, Bdf(SID), None, black_box(iova), Access::RW),
                )
            })
        });
        let req = Request {
            sid: SID,
            pasid: None,
            iova: iova.0,
            access: Access::RW,
        };
        assert!(matches!(s.vtd.walk(&s.mem, &req), Outcome::Mapped { .. }));
        c.bench_function(&format!("vtd translate miss (walk) 4-level {name}"), |b| {
            b.iter(|| black_box(s.vtd.walk(&s.mem, black_box(&req))))
        });
    }
}

fn queue(c: &mut Criterion) {
    let mut s = legacy();
    // 254 page-selective IOTLB invalidations plus the wait: a full
    // 128-bit queue (one slot stays free) per submission.
    let batch: Vec<[u64; 2]> = (0..254u64)
        .map(|p| desc::iotlb_page(1, (1 << 30) + (p << 12), 0, false))
        .collect();
    let mut g = c.benchmark_group("vtd queued invalidation");
    g.throughput(Throughput::Elements(255));
    g.bench_function("255 descriptors (page IOTLB + wait)", |b| {
        b.iter(|| assert!(s.queue.submit(&mut s.vtd, &s.mem, &batch)))
    });
    g.finish();
}

fn ats(c: &mut Criterion) {
    for (name, mut s) in [
        ("second-stage", legacy_tt(1)),
        ("first-stage", scalable_dte(true)),
    ] {
        let req = TranslationRequest {
            sid: Bdf(SID),
            pasid: None,
            addr: (1 << 30) + 0x5000,
            no_write: false,
            exec: false,
            privileged: false,
        };
        let r = s.vtd.translation_request(&s.mem, &req);
        assert!(
            matches!(r.completion, AtsCompletion::Success(t) if t.write),
            "{name}: {r:?}"
        );
        c.bench_function(
            &format!("vtd ATS translation request 4-level {name}"),
            |b| b.iter(|| black_box(s.vtd.translation_request(&s.mem, black_box(&req)))),
        );
    }
}

criterion_group!(benches, translate, queue, ats);
criterion_main!(benches);
