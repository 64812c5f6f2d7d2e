//! `bench`: the timed workload of `tests/guest/bench`. The endpoint is
//! bound to vfio-pci and a type1v2 container maps, DMAs to and unmaps a
//! buffer in a loop; each loop is timed with `clock_gettime(CLOCK_MONOTONIC)`
//! and printed as `BENCH name ops=N secs=S ops_per_sec=R`.
//!
//! Whichever IOMMU the guest has (ours behind our vfio-user server, or
//! QEMU's own, which turns the guest's mappings into vfio-user DMA_MAP
//! messages), the guest does exactly the same system calls, so the loops
//! compare the IOMMUs under one workload. Iterations come from the kernel
//! command line's `guest_bench_iters=N` (default 200; the 2 MiB loops run
//! a quarter as many).
//!
//! One exception: QEMU's own SMMUv3 refuses a vfio-user function behind it
//! (QEMU 11: "requires iommu MAP notifier which is not currently
//! supported"), so `qemu-smmuv3` runs the loops with QEMU's `iommu-testdev`
//! (1b36:0005) as the endpoint: the same map and unmap calls, and for the
//! DMA loops its synchronous 4 KiB write-then-read at the IOVA (checked by
//! the device against the buffer's physical address) instead of our FILL.

use std::time::Instant;

use crate::sys::{self, page};
use crate::{CMD_MEM_BME, DEVICE, Endpoint, Report, ST_OK, VENDOR, fill_cmd, vfio};

/// Outside the guest's RAM: reachable only through translation.
const IOVA: u64 = crate::translated::IOVA_SRC;
/// QEMU's iommu-testdev (docs/specs/iommu-testdev.rst).
const TESTDEV: (u16, u16) = (0x1b36, 0x0005);
/// Its BAR0 registers and results.
mod itd {
    pub const TRIGGER: u64 = 0x00;
    pub const GVA_LO: u64 = 0x04;
    pub const GVA_HI: u64 = 0x08;
    pub const LEN: u64 = 0x0c;
    pub const RESULT: u64 = 0x10;
    pub const DBELL: u64 = 0x14;
    pub const ATTRS: u64 = 0x18;
    pub const GPA_LO: u64 = 0x1c;
    pub const GPA_HI: u64 = 0x20;
    /// DMA_RESULT: the write-then-read matched.
    pub const OK: u32 = 0;
}

/// The device the loops drive through VFIO.
enum Dev {
    /// Our DMA test endpoint: a polled FILL of the page.
    Endpoint(Endpoint<vfio::Device>),
    /// QEMU's iommu-testdev: a write-then-read of the page, which it
    /// checks against `phys`, the page's guest physical address.
    TestDev { dev: vfio::Device, phys: u64 },
}

impl Dev {
    /// One 4 KiB DMA write at `iova` (the last page of `buf`, at `last`);
    /// an error says what went wrong.
    fn dma(&self, iova: u64, buf: &vfio::Buf, last: usize, i: u32) -> Result<(), String> {
        match self {
            Dev::Endpoint(ep) => {
                let pattern = 0x5a00_0000 | i;
                let o = ep.run(&fill_cmd(iova, page() as u32, pattern));
                let byte = buf.get(last);
                if o.status != ST_OK || byte != pattern.to_le_bytes()[0] {
                    return Err(format!("DMA {o:?}, byte {byte:#04x}"));
                }
                Ok(())
            }
            Dev::TestDev { dev, phys } => {
                let w = |off: u64, v: u32| dev.write32(off, v).map_err(|e| e.to_string());
                w(itd::GVA_LO, iova as u32)?;
                w(itd::GVA_HI, (iova >> 32) as u32)?;
                w(itd::GPA_LO, *phys as u32)?;
                w(itd::GPA_HI, (*phys >> 32) as u32)?;
                w(itd::LEN, page() as u32)?;
                w(itd::ATTRS, 0)?;
                w(itd::DBELL, 1)?;
                dev.read32(itd::TRIGGER).map_err(|e| e.to_string())?;
                match dev.read32(itd::RESULT) {
                    Ok(itd::OK) => Ok(()),
                    other => Err(format!("iommu-testdev result {other:x?}")),
                }
            }
        }
    }
}
impl Dev {
    /// Writes `mark` to our endpoint's SCRATCH register and reads it
    /// back (the write has then been handled): with accounting on, the
    /// server prints a snapshot of its counters there (`ACCOUNT
    /// mark=...`), and the bench takes the difference of a loop's two.
    /// QEMU's test device has no server behind it.
    fn mark(&self, mark: u32) {
        if let Dev::Endpoint(ep) = self {
            let at = crate::reg::SCRATCH as u64;
            if ep.bar.write32(at, mark).is_ok() {
                let _ = ep.bar.read32(at);
            }
        }
    }
}

/// The server-side marks of the first loop; each loop has the next two.
const FIRST_MARK: u32 = 0x100;
const HUGE: usize = 2 << 20;
const DEFAULT_ITERS: u32 = 200;
/// Upper bound whatever the command line says (keeps one boot short).
const MAX_ITERS: u32 = 100_000;

fn iterations() -> u32 {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("guest_bench_iters="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ITERS)
        .clamp(1, MAX_ITERS)
}

/// Seconds since boot as the guest kernel counts them: when init started
/// the program, i.e. the guest's own view of its boot time.
fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

pub fn bench(r: &mut Report) {
    println!("BENCH-INFO uptime-at-bench-start secs={}", uptime());
    let found = sys::find_function(VENDOR, DEVICE)
        .map(|d| (d, false))
        .or_else(|| sys::find_function(TESTDEV.0, TESTDEV.1).map(|d| (d, true)));
    let Some((dev, testdev)) = found else {
        r.check("endpoint/found", false, "no endpoint and no iommu-testdev");
        return;
    };
    let group = sys::iommu_group(&dev);
    println!(
        "BENCH-INFO device {} (iommu-testdev: {testdev})",
        dev.display()
    );
    println!("BENCH-INFO group-and-default-domain {group:?}");
    println!("BENCH-INFO iommus {:?}", sys::iommus());
    let bound = vfio::bind_vfio_pci(&dev);
    if !r.check("vfio/bind", bound.is_ok(), format!("{bound:?}")) {
        return;
    }
    let vfio::Vfio { dev: v, container } = match vfio::Vfio::open(&dev) {
        Ok(v) => v,
        Err(e) => {
            r.check("vfio/container", false, e.to_string());
            return;
        }
    };
    let cmd = v.config_read16(4).unwrap_or(0);
    let bme = v.config_write16(4, cmd | CMD_MEM_BME);
    if !r.check("vfio/bus-master", bme.is_ok(), format!("{bme:?}")) {
        return;
    }
    let (Ok(small), Ok(huge)) = (vfio::Buf::new(page()), vfio::Buf::new(HUGE)) else {
        r.check("bench/buffers", false, "mmap failed");
        return;
    };
    let n = iterations();
    let quarter = (n / 4).max(1);
    let c = &container;
    // Completion is polled (SEQ/STATUS after the non-posted CMD write, or
    // the test device's synchronous trigger): no MSI-X, so the loops time
    // the IOMMU, not interrupt delivery.
    let make = |v: vfio::Device, buf: &vfio::Buf| -> Result<Dev, String> {
        if !testdev {
            return Ok(Dev::Endpoint(Endpoint {
                bar: v,
                vector: u32::MAX,
            }));
        }
        let last = (buf.va() + (buf.len() - page()) as u64) as usize;
        let phys = sys::phys_of(last as u64).map_err(|e| format!("pagemap: {e}"))?;
        Ok(Dev::TestDev { dev: v, phys })
    };
    // The test device needs each buffer's physical address: its pages are
    // resident (MAP_POPULATE) and pinned while mapped.
    let small_dev = match make(v, &small) {
        Ok(d) => d,
        Err(e) => {
            r.check("bench/buffers", false, e);
            return;
        }
    };
    let mut marks = FIRST_MARK..;
    let mut run = |dev: &Dev, name: &str, buf: &vfio::Buf, iters: u32, dma: bool| {
        let (start, end) = (marks.next().unwrap_or(0), marks.next().unwrap_or(0));
        if let Dev::Endpoint(_) = dev {
            println!("BENCH-MARKS {name} start={start} end={end}");
        }
        dev.mark(start);
        run(r, dev, c, name, buf, iters, dma);
        dev.mark(end);
    };
    run(&small_dev, "map-unmap-4k", &small, n, false);
    run(&small_dev, "map-dma-unmap-4k", &small, n, true);
    let v = match small_dev {
        Dev::Endpoint(ep) => ep.bar,
        Dev::TestDev { dev, .. } => dev,
    };
    let huge_dev = match make(v, &huge) {
        Ok(d) => d,
        Err(e) => {
            r.check("bench/buffers", false, e);
            return;
        }
    };
    run(&huge_dev, "map-unmap-2m", &huge, quarter, false);
    run(&huge_dev, "map-dma-unmap-2m", &huge, quarter, true);
}

/// `iters` times: MAP `buf` at IOVA, optionally FILL its last page by DMA
/// (checked: status and a byte), UNMAP. Prints one BENCH line and records
/// one check that every step of every iteration succeeded.
fn run(
    r: &mut Report,
    dev: &Dev,
    container: &vfio::Container,
    name: &str,
    buf: &vfio::Buf,
    iters: u32,
    dma: bool,
) {
    let len = buf.len();
    let last = (len - page()) as u64;
    let mut errors = Vec::new();
    let start = Instant::now();
    for i in 0..iters {
        if let Err(e) = container.map(buf.va(), IOVA, len as u64, true) {
            errors.push(format!("iteration {i}: map: {e}"));
            break;
        }
        if dma && let Err(e) = dev.dma(IOVA + last, buf, last as usize, i) {
            errors.push(format!("iteration {i}: {e}"));
        }
        match container.unmap(IOVA, len as u64) {
            Ok(n) if n == len as u64 => {}
            other => errors.push(format!("iteration {i}: unmap: {other:?}")),
        }
        if !errors.is_empty() {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if r.check(
        &format!("bench/{name}"),
        errors.is_empty(),
        errors.first().map_or("every iteration ok", String::as_str),
    ) {
        println!(
            "BENCH {name} ops={iters} secs={secs:.4} ops_per_sec={:.1}",
            f64::from(iters) / secs
        );
    }
}
