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

use std::time::Instant;

use crate::sys::{self, PAGE};
use crate::{CMD_MEM_BME, DEVICE, Endpoint, Report, ST_OK, VENDOR, fill_cmd, vfio};

/// Above the guest's 512 MiB of RAM: reachable only through translation.
const IOVA: u64 = 0x4000_0000;
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
    let Some(dev) = sys::find_function(VENDOR, DEVICE) else {
        r.check("endpoint/found", false, "no endpoint");
        return;
    };
    let group = sys::iommu_group(&dev);
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
    let (Ok(small), Ok(huge)) = (vfio::Buf::new(PAGE), vfio::Buf::new(HUGE)) else {
        r.check("bench/buffers", false, "mmap failed");
        return;
    };
    // Completion is polled (SEQ/STATUS after the non-posted CMD write):
    // no MSI-X, so the loops time the IOMMU, not interrupt delivery.
    let ep = Endpoint {
        bar: v,
        vector: u32::MAX,
    };
    let n = iterations();
    let quarter = (n / 4).max(1);
    let c = &container;
    run(r, &ep, c, "map-unmap-4k", &small, n, false);
    run(r, &ep, c, "map-dma-unmap-4k", &small, n, true);
    run(r, &ep, c, "map-unmap-2m", &huge, quarter, false);
    run(r, &ep, c, "map-dma-unmap-2m", &huge, quarter, true);
}

/// `iters` times: MAP `buf` at IOVA, optionally FILL its last page by DMA
/// (checked: status and a byte), UNMAP. Prints one BENCH line and records
/// one check that every step of every iteration succeeded.
fn run(
    r: &mut Report,
    ep: &Endpoint<vfio::Device>,
    container: &vfio::Container,
    name: &str,
    buf: &vfio::Buf,
    iters: u32,
    dma: bool,
) {
    let len = buf.len();
    let last = (len - PAGE) as u64;
    let mut errors = Vec::new();
    let start = Instant::now();
    for i in 0..iters {
        if let Err(e) = container.map(buf.va(), IOVA, len as u64, true) {
            errors.push(format!("iteration {i}: map: {e}"));
            break;
        }
        if dma {
            let pattern = 0x5a00_0000 | i;
            let o = ep.run(&fill_cmd(IOVA + last, PAGE as u32, pattern));
            let byte = buf.get(last as usize);
            if o.status != ST_OK || byte != pattern.to_le_bytes()[0] {
                errors.push(format!("iteration {i}: DMA {o:?}, byte {byte:#04x}"));
            }
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
