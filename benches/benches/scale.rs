//! A million mappings (issue 16): the cost of one 4 KiB MAP and one UNMAP
//! with 1e3, 1e4, 1e5 and 1e6 live 4 KiB mappings, for
//! - virtio-iommu, emulated endpoint: requests through the device as
//!   Linux's driver sends them ([`virtio_iommu::mock::MockDriver`]);
//! - virtio-iommu, passthrough endpoint shadowed into a `SimIommufd` IOAS
//!   (each MAP and UNMAP one host call);
//! - VT-d caching mode, a legacy `cm=1` unit with a shadowed device: each
//!   map and unmap is a page-table write, a page-selective IOTLB
//!   invalidation and a wait (one host call, done before the wait).
//!
//! Goal: growth no worse than logarithmic, the 1e6 figure at most twice
//! the 1e3 one. Live mappings sit on every other page of an IOVA range;
//! the timed MAPs and UNMAPs use 64 of the free pages between them, spread
//! over the whole range, in batches of up to 64 (the other half of each
//! pair runs untimed). Each state is built once, growing from one size to
//! the next, outside the timed loops. `SCALE_MAX=N` stops at N live
//! mappings. Memory per mapping is `scale_memory`.
//!
//! Figures in us per operation, two cores shared with other work: the
//! lowest median of five runs, then the range of the medians (the load
//! varied a lot; the lowest is the least disturbed).
//!
//! | per op                 | 1e3             | 1e4             | 1e5             | 1e6             |
//! |------------------------|-----------------|-----------------|-----------------|-----------------|
//! | virtio emulated MAP    | 0.99 (0.99-3.0) | 1.03 (1.0-2.4)  | 1.03 (1.0-2.6)  | 1.05 (1.1-2.4)  |
//! | virtio emulated UNMAP  | 1.08 (1.1-2.4)  | 1.04 (1.0-2.2)  | 1.05 (1.1-3.0)  | 1.08 (1.1-3.6)  |
//! | virtio shadowed MAP    | 2.48 (2.5-6.5)  | 2.60 (2.6-8.5)  | 3.45 (3.5-6.3)  | 2.95 (3.0-8.2)  |
//! | virtio shadowed UNMAP  | 2.50 (2.5-6.1)  | 2.63 (2.6-6.5)  | 2.96 (3.0-5.8)  | 2.93 (2.9-7.0)  |
//! | VT-d cm=1 map          | 2.00 (2.0-4.3)  | 2.14 (2.1-5.5)  | 2.52 (2.5-5.9)  | 2.31 (2.3-10.4) |
//! | VT-d cm=1 unmap        | 1.88 (1.9-3.5)  | 1.95 (2.0-4.3)  | 2.04 (2.0-6.8)  | 2.11 (2.1-7.6)  |
//!
//! Before (the simulated host copied its whole state, every mapping
//! included, on each call): virtio shadowed MAP 16.4 us at 1e3 and 156 us
//! at 1e4, VT-d map 10.9 and 160 us; 1e5 and 1e6 were out of reach.
//! virtio emulated was already flat (1.1-1.4 us at 1e3 to 1e6).
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::options::ModelOptions;
use nesting_core::ram::{GuestRam, RamIoas};
use virtio_iommu::Status;
use virtio_iommu::mock::MockDriver;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd::mock::{LegacyTables, PageAlloc, Queue, SlTables, desc, probe_like_linux};
use vtd::{Vtd, VtdConfig};

const PAGE: u64 = 4096;
/// Where the live mappings start: above 4 GiB, clear of the interrupt
/// range and the mock drivers' rings.
const BASE: u64 = 1 << 32;
const SIZES: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
/// Free pages the timed operations cycle over.
const SLOTS: u64 = 64;
const RW: u32 = 3;

/// The IOVA of live mapping `i`: every other page.
fn live_iova(i: u64) -> u64 {
    BASE + 2 * i * PAGE
}

/// The IOVA of timed slot `j` with `n` live mappings: the free page after
/// live mapping `j * n / SLOTS`.
fn slot_iova(j: u64, n: u64) -> u64 {
    live_iova(j * n / SLOTS) + PAGE
}

/// The page of `pages` pages that mapping `i` targets: a stride that
/// keeps neighbours in IOVA apart in GPA, as a DMA API's pages are.
fn scattered(i: u64, pages: u64) -> u64 {
    (i.wrapping_mul(7919)) % pages
}

/// One layer under test: a 4 KiB map and unmap.
trait Layer {
    fn map(&mut self, iova: u64, gpa: u64);
    fn unmap(&mut self, iova: u64);
    /// GPA of the `k`th target page.
    fn gpa(&self, k: u64) -> u64;
}

/// virtio-iommu through the request queue.
struct VirtioLayer {
    d: MockDriver,
}

/// The mock's RAM above its rings: 15 MiB of target pages.
const VIRTIO_TARGET: u64 = 1 << 20;
const VIRTIO_PAGES: u64 = (virtio_iommu::mock::MOCK_RAM - VIRTIO_TARGET) / PAGE;

impl Layer for VirtioLayer {
    fn map(&mut self, iova: u64, gpa: u64) {
        assert_eq!(self.d.map(1, iova, iova + PAGE - 1, gpa, RW), Status::Ok);
    }
    fn unmap(&mut self, iova: u64) {
        assert_eq!(self.d.unmap(1, iova, iova + PAGE - 1), Status::Ok);
    }
    fn gpa(&self, k: u64) -> u64 {
        VIRTIO_TARGET + scattered(k, VIRTIO_PAGES) * PAGE
    }
}

/// VT-d caching mode: page-table write, page-selective invalidation, wait.
struct VtdLayer {
    vtd: Vtd,
    mem: GuestMemoryMmap,
    alloc: PageAlloc,
    sl: SlTables,
    queue: Queue,
    _sim: Arc<SimIommufd>,
}

/// VT-d guest RAM: 64 MiB, tables allocated from 8 MiB up, DMA targets in
/// the first 8 MiB.
const VTD_RAM: u64 = 64 << 20;
const VTD_TARGET_PAGES: u64 = (8 << 20) / PAGE;
const SID: u16 = 0x10;

impl Layer for VtdLayer {
    fn map(&mut self, iova: u64, gpa: u64) {
        self.sl
            .map(&self.mem, &mut self.alloc, iova, gpa, 12, true, true);
        let inv = [desc::iotlb_page(1, iova, 0, false)];
        assert!(self.queue.submit(&mut self.vtd, &self.mem, &inv));
    }
    fn unmap(&mut self, iova: u64) {
        self.sl.unmap(&self.mem, iova, 12);
        let inv = [desc::iotlb_page(1, iova, 0, false)];
        assert!(self.queue.submit(&mut self.vtd, &self.mem, &inv));
    }
    fn gpa(&self, k: u64) -> u64 {
        scattered(k, VTD_TARGET_PAGES) * PAGE
    }
}

fn virtio_emulated() -> VirtioLayer {
    let mut d = MockDriver::new(&[]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    VirtioLayer { d }
}

fn virtio_shadowed() -> VirtioLayer {
    let (d, _) = viommu_benches::virtio_iommu_driver(true);
    VirtioLayer { d }
}

fn vtd_shadowed() -> VtdLayer {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), VTD_RAM as usize)]).unwrap();
    let mut alloc = PageAlloc::new(8 << 20, VTD_RAM - (8 << 20));
    let mut vtd = Vtd::new(VtdConfig::from_options(&["mode=legacy", "cm=1"]).unwrap());
    let spec = HostProfile::VtdNonest.spec();
    let sim = Arc::new(SimIommufd::with_host(spec.clone()));
    let host: SharedHost = sim.clone();
    let ram = Arc::new(RamIoas::new(&host, GuestRam::from_guest_memory(&mem).unwrap()).unwrap());
    vtd.enable_passthrough(host.clone(), ram);
    let dev = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    vtd.add_passthrough(&mem, SID, dev, spec.host_view())
        .map_err(|(e, _)| e)
        .unwrap();
    let t = LegacyTables::new(&mem, &mut alloc);
    let sl = SlTables::new(&mem, &mut alloc, 4);
    t.set_context(&mem, &mut alloc, SID, 1, 0, 2, sl.root, false);
    let queue = probe_like_linux(&mut vtd, &mem, &mut alloc, t.root).queue;
    VtdLayer {
        vtd,
        mem,
        alloc,
        sl,
        queue,
        _sim: sim,
    }
}

/// Times `timed` over batches of slots, running `other` untimed after each
/// batch so the number of live mappings stays put.
fn time_batches<L: Layer>(
    l: &mut L,
    n: u64,
    iters: u64,
    timed: fn(&mut L, u64, u64),
    other: fn(&mut L, u64, u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let k = (iters - done).min(SLOTS);
        let start = Instant::now();
        for j in 0..k {
            timed(l, slot_iova(j, n), j);
        }
        total += start.elapsed();
        for j in 0..k {
            other(l, slot_iova(j, n), j);
        }
        done += k;
    }
    total
}

fn map_slot<L: Layer>(l: &mut L, iova: u64, j: u64) {
    let gpa = l.gpa(j);
    l.map(iova, gpa);
}

fn unmap_slot<L: Layer>(l: &mut L, iova: u64, _j: u64) {
    l.unmap(iova);
}

fn scale_layer<L: Layer>(c: &mut Criterion, name: &str, mut l: L) {
    let mut g = c.benchmark_group(format!("scale {name}"));
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
    let mut live = 0;
    for n in sizes() {
        let setup = Instant::now();
        while live < n {
            let gpa = l.gpa(live);
            l.map(live_iova(live), gpa);
            live += 1;
        }
        println!(
            "scale {name}: {n} live mappings set up in {:?}",
            setup.elapsed()
        );
        g.bench_with_input(BenchmarkId::new("map 4 KiB", n), &n, |b, &n| {
            b.iter_custom(|iters| time_batches(&mut l, n, iters, map_slot, unmap_slot))
        });
        g.bench_with_input(BenchmarkId::new("unmap 4 KiB", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                // Each timed unmap needs its slot mapped first, untimed.
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let k = (iters - done).min(SLOTS);
                    for j in 0..k {
                        map_slot(&mut l, slot_iova(j, n), j);
                    }
                    let start = Instant::now();
                    for j in 0..k {
                        l.unmap(slot_iova(j, n));
                    }
                    total += start.elapsed();
                    done += k;
                }
                total
            })
        });
    }
    g.finish();
    black_box(l);
}

/// [`SIZES`], up to `SCALE_MAX` live mappings when set (a quicker run).
fn sizes() -> Vec<u64> {
    let max = std::env::var("SCALE_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    SIZES.into_iter().filter(|n| *n <= max).collect()
}

fn scale(c: &mut Criterion) {
    scale_layer(c, "virtio-iommu emulated", virtio_emulated());
    scale_layer(c, "virtio-iommu shadowed", virtio_shadowed());
    scale_layer(c, "vtd shadowed (cm=1)", vtd_shadowed());
}

criterion_group!(benches, scale);
criterion_main!(benches);
