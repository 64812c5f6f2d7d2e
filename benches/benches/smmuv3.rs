//! SMMUv3 model: translate hit, stage-1 4-level walk miss, nested stage 1
//! over stage 2 miss, and command throughput for TLBI_NH_VA + CMD_SYNC
//! streams.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nesting_core::options::ModelOptions;
use nesting_core::types::{Access, Iova};
use smmuv3::caps::Caps;
use smmuv3::cfgcache::ConfigCache;
use smmuv3::mock::{Driver, PageAlloc, PageTable, cdtable_ste, cmd, pte, s1_cd, with_s2};
use smmuv3::regs::off;
use smmuv3::strtab::{SteMode, StreamTable};
use smmuv3::translate::{Outcome, Purpose, Request, resolve};
use smmuv3::walk::Granule;
use smmuv3::wire::write_qwords;
use smmuv3::{Smmuv3, Smmuv3Config, TranslateResult};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const SID: u32 = 0x10;
const BASE: u64 = 1 << 30;

struct Setup {
    mem: GuestMemoryMmap,
    smmu: Smmuv3,
    drv: Driver,
}

fn setup(opts: &[&str]) -> (Setup, PageAlloc) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    let mut a = PageAlloc::new(16 << 20, 16 << 20);
    let mut smmu = Smmuv3::new(Smmuv3Config::from_options(opts).unwrap());
    let drv = Driver::probe(&mut smmu, &mem, &mut a).unwrap();
    (Setup { mem, smmu, drv }, a)
}

/// Stage-1 stream, 4-level 4 KiB tables mapping 256 pages at 1 GiB.
fn stage1() -> Setup {
    let (mut s, mut a) = setup(&[]);
    let pt = PageTable::stage1(&s.mem, &mut a, Granule::G4K, 48, 48);
    for p in 0..256u64 {
        pt.map(
            &s.mem,
            &mut a,
            BASE + (p << 12),
            p << 12,
            3,
            pte::s1(true, false, false),
        );
    }
    let cdt = Driver::cd_table(&s.mem, &mut a, 0, true);
    let ste = cdtable_ste(cdt.0, 0, false, false);
    s.drv.install_ste(&mut s.smmu, &s.mem, &mut a, SID, ste);
    let cd = s1_cd(5, &pt, 5, false);
    s.drv
        .install_cd(&mut s.smmu, &s.mem, &mut a, cdt, SID, 0, cd);
    s
}

/// Nested stream: stage 1 as above with its CD and tables at IPAs, stage
/// 2 4-level (48-bit IPA from level 0) mapping them with 4 KiB pages.
fn nested() -> Setup {
    let (mut s, mut a) = setup(&["stages=nested"]);
    let s2 = PageTable::stage2(&s.mem, &mut a, Granule::G4K, 48, 2, 48);
    let pool = 16u64 << 20;
    let ipa_off = 1u64 << 40;
    for p in 0..512u64 {
        let pa = pool + (p << 12);
        s2.map(&s.mem, &mut a, pa + ipa_off, pa, 3, pte::s2(true, true));
    }
    for p in 0..256u64 {
        s2.map(
            &s.mem,
            &mut a,
            BASE + (p << 12),
            p << 12,
            3,
            pte::s2(true, true),
        );
    }
    let s1 = PageTable::stage1(&s.mem, &mut a, Granule::G4K, 48, 48).with_ipa_offset(ipa_off);
    for p in 0..256u64 {
        let attrs = pte::s1(true, false, false);
        s1.map(&s.mem, &mut a, BASE + (p << 12), BASE + (p << 12), 3, attrs);
    }
    let (cdt, _) = Driver::cd_table(&s.mem, &mut a, 0, true);
    write_qwords(&s.mem, cdt, s1_cd(5, &s1, 5, false).0).unwrap();
    let ste = with_s2(cdtable_ste(cdt + ipa_off, 0, false, false), 4, &s2, 5)
        .with_config(SteMode::Nested);
    s.drv.install_ste(&mut s.smmu, &s.mem, &mut a, SID, ste);
    s
}

fn translate(c: &mut Criterion) {
    let mut s = stage1();
    let iova = Iova(BASE + 0x5000);
    let r = s.smmu.translate(&s.mem, SID, None, iova, Access::RW);
    assert!(matches!(r, TranslateResult::Mapped(_)), "{r:?}");
    c.bench_function("smmuv3 translate hit", |b| {
        b.iter(|| {
            black_box(
                s.smmu
                    .translate(&s.mem, SID, None, black_box(iova), Access::RW),
            )
        })
    });
    let req = Request {
        sid: SID,
        ssid: None,
        addr: iova.0,
        access: Access::RW,
    };
    assert!(matches!(s.smmu.walk(&s.mem, &req), Outcome::Mapped(_)));
    c.bench_function(
        "smmuv3 translate miss stage-1 4-level (config cached)",
        |b| b.iter(|| black_box(s.smmu.walk(&s.mem, black_box(&req)))),
    );
    let (caps, st) = cold(&s.smmu);
    c.bench_function(
        "smmuv3 translate miss stage-1 4-level (STE+CD fetched)",
        |b| b.iter(|| black_box(cold_walk(&s.mem, &caps, &st, black_box(&req)))),
    );
    let mut n = nested();
    let r = n.smmu.walk(&n.mem, &req);
    assert!(matches!(r, Outcome::Mapped(_)), "{r:?}");
    c.bench_function(
        "smmuv3 translate miss nested 4+4-level (config cached)",
        |b| b.iter(|| black_box(n.smmu.walk(&n.mem, black_box(&req)))),
    );
    let (caps, st) = cold(&n.smmu);
    c.bench_function(
        "smmuv3 translate miss nested 4+4-level (STE+CD fetched)",
        |b| b.iter(|| black_box(cold_walk(&n.mem, &caps, &st, black_box(&req)))),
    );
}

fn cold(smmu: &Smmuv3) -> (Caps, StreamTable) {
    let caps = Caps::new(smmu.config());
    let st = StreamTable::from_regs(
        smmu.mmio_read(off::STRTAB_BASE, 8),
        smmu.mmio_read(off::STRTAB_BASE_CFG, 4),
        &caps,
    );
    (caps, st)
}

/// A walk that reads and decodes the STE and CD every time.
fn cold_walk(mem: &GuestMemoryMmap, caps: &Caps, st: &StreamTable, req: &Request) -> Outcome {
    let mut none = ConfigCache::disabled();
    resolve(mem, caps, st, req, Purpose::Transaction, &mut none)
}

/// A 256-entry command queue holding four batches of 63 TLBI_NH_VA and a
/// CMD_SYNC (SIG_SEV): one PROD write consumes all 256 commands.
fn commands(c: &mut Criterion) {
    let mut s = stage1();
    for p in 0..256u64 {
        s.smmu
            .translate(&s.mem, SID, None, Iova(BASE + (p << 12)), Access::READ);
    }
    let base = s.drv.cmdq.base;
    for i in 0..256u64 {
        let cmd = if i % 64 == 63 {
            cmd::sync(2, 0, 0)
        } else {
            cmd::tlbi_nh_va(0, 5, BASE + ((i % 256) << 12))
        };
        write_qwords(&s.mem, base + 16 * i, cmd).unwrap();
    }
    let cons = s.smmu.mmio_read(off::CMDQ_CONS, 4);
    s.smmu.mmio_write(&s.mem, off::CMDQ_CONS, 4, cons);
    let mut prod = cons & 0x1ff;
    let mut g = c.benchmark_group("smmuv3 command queue");
    g.throughput(Throughput::Elements(256));
    g.bench_function("256 commands (TLBI_NH_VA x63 + CMD_SYNC) x4", |b| {
        b.iter(|| {
            prod ^= 0x100;
            s.smmu.mmio_write(&s.mem, off::CMDQ_PROD, 4, prod);
        })
    });
    g.finish();
    assert_eq!(
        s.smmu.mmio_read(off::CMDQ_CONS, 4) & 0xfffff,
        prod,
        "no command error"
    );
}

criterion_group!(benches, translate, commands);
criterion_main!(benches);
