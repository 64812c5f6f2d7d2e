//! `guest-dma-test`: runs inside the harness's Linux guest
//! (tests/guest/run) and drives the DMA test endpoint that
//! `viommu-guest-server` serves through QEMU's vfio-user-pci.
//!
//! ```text
//! guest-dma-test [SCENARIO...]      (default: dma-passthrough)
//! ```
//! Prints `ok NAME: detail` or `FAIL NAME: detail` per check, then
//! `N passed, N failed`; exits 1 on any failure.
//!
//! Scenarios:
//! - `dma-passthrough`: no IOMMU in the guest. BAR0 is mapped from sysfs
//!   `resource0`, buffers are locked pages whose physical addresses come
//!   from `/proc/self/pagemap`, and the endpoint's IOVAs are those
//!   physical addresses.
//! - `virtio-iommu-fault`: the endpoint sits behind our virtio-iommu
//!   (ACPI VIOT). Linux's driver registers the IOMMU and gives the
//!   endpoint a translated default domain with nothing mapped, so DMA to a
//!   buffer's physical address is refused by the model, and the fault the
//!   model writes on its event queue is what the driver logs.
//! - `virtio-iommu`, `vtd-legacy`, `vtd-scalable-fs`, `vtd-scalable-ss`:
//!   the scenario matrix (`matrix.rs`): two endpoints behind our
//!   virtio-iommu or our VT-d unit in one of its modes; the mode the
//!   driver chose, default domains, VFIO map / DMA / unmap / fault, two
//!   endpoints in one domain (type1 and iommufd), blocking and unbind /
//!   rebind, and a guest reboot counted in the endpoint's SCRATCH register.
//! - `smmuv3`, `smmuv3-s2`: the same matrix on arm64 behind our SMMUv3
//!   (`smmu.rs`), whose registers are BAR0 of a function named by the
//!   device tree: stage-1 and stage-2 SMMUs; `smmuv3-64k`,
//!   `smmuv3-64k-s2` the same on a kernel with 64 KiB pages.
//! - `probe-bars` (the run script's probe boot for VT-d and SMMUv3):
//!   prints BAR0 of every function of the harness's vendor.
//! - `bench` (not a test scenario; `tests/guest/bench`): timed VFIO
//!   map/DMA/unmap loops behind whatever IOMMU the guest has.

mod bench;
mod iommufd;
mod matrix;
mod smmu;
mod sys;
mod translated;
mod two;
mod vfio;

use std::process::ExitCode;

use sys::{Config, Mmio, PinnedPage, REGS, page};

/// The endpoint's IDs (tests/guest/server/src/config.rs).
const VENDOR: u16 = 0x1af4;
const DEVICE: u16 = 0x10f0;

/// BAR0 registers (tests/guest/server/src/dma.rs).
mod reg {
    pub const ID: usize = 0x00;
    pub const VERSION: usize = 0x04;
    pub const CMD: usize = 0x08;
    pub const STATUS: usize = 0x0c;
    pub const SRC_LO: usize = 0x10;
    pub const SRC_HI: usize = 0x14;
    pub const DST_LO: usize = 0x18;
    pub const DST_HI: usize = 0x1c;
    pub const LEN: usize = 0x20;
    pub const PATTERN: usize = 0x24;
    pub const VECTOR: usize = 0x28;
    pub const SEQ: usize = 0x2c;
    pub const FAULT_LO: usize = 0x30;
    pub const FAULT_HI: usize = 0x34;
    pub const MAX_LEN: usize = 0x38;
    /// Kept across function resets and guest reboots (cleared only when
    /// the server starts): the matrix scenarios count boots in it.
    pub const SCRATCH: usize = 0x3c;
    /// TRANSLATE's answer: where a write to DST goes.
    pub const RESULT_LO: usize = 0x40;
    pub const RESULT_HI: usize = 0x44;
}

const ID_VDMA: u32 = u32::from_le_bytes(*b"VDMA");
const OP_FILL: u32 = 1;
const OP_COPY: u32 = 2;
/// Translates a 4-byte write at DST into RESULT, moving nothing.
const OP_TRANSLATE: u32 = 3;
const ST_OK: u32 = 1;
const ST_READ_FAULT: u32 = 2;
const ST_WRITE_FAULT: u32 = 3;
const ST_NO_BUS_MASTER: u32 = 4;
const ST_BAD_LENGTH: u32 = 5;
const ST_BAD_OPCODE: u32 = 6;
/// PCI Command register bits: Memory Space, Bus Master.
const CMD_MEM_BME: u16 = 0x0006;
/// A guest physical address no RAM backs (64 GiB; the guest has 512 MiB).
const NOWHERE: u64 = 0x10_0000_0000;

/// Counts and prints checks.
#[derive(Default)]
struct Report {
    passed: u32,
    failed: u32,
    /// Put before every check's name (`boot2/` after a guest reboot).
    prefix: String,
}

impl Report {
    fn check(&mut self, name: &str, ok: bool, detail: impl AsRef<str>) -> bool {
        let (detail, p) = (detail.as_ref(), &self.prefix);
        if ok {
            self.passed += 1;
            println!("ok {p}{name}: {detail}");
        } else {
            self.failed += 1;
            println!("FAIL {p}{name}: {detail}");
        }
        ok
    }
}

/// One DMA command's inputs.
struct Cmd {
    op: u32,
    src: u64,
    dst: u64,
    len: u32,
    pattern: u32,
}

/// What the endpoint reported for a command.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    status: u32,
    fault: u64,
    seq_advanced: bool,
}

/// 32-bit register access to BAR0, by sysfs mmap or through VFIO.
pub(crate) trait Bar {
    fn read(&self, off: usize) -> u32;
    fn write(&self, off: usize, v: u32);
}

impl<B: Bar> Bar for &B {
    fn read(&self, off: usize) -> u32 {
        (*self).read(off)
    }
    fn write(&self, off: usize, v: u32) {
        (*self).write(off, v)
    }
}

impl Bar for Mmio {
    fn read(&self, off: usize) -> u32 {
        Mmio::read(self, off)
    }
    fn write(&self, off: usize, v: u32) {
        Mmio::write(self, off, v)
    }
}

impl Bar for vfio::Device {
    /// A failed access reads as all-ones, as a PCI master abort does.
    fn read(&self, off: usize) -> u32 {
        self.read32(off as u64).unwrap_or(u32::MAX)
    }
    fn write(&self, off: usize, v: u32) {
        if let Err(e) = self.write32(off as u64, v) {
            println!("# BAR0 write {off:#x}: {e}");
        }
    }
}

struct Endpoint<B: Bar> {
    bar: B,
    vector: u32,
}

impl<B: Bar> Endpoint<B> {
    fn run(&self, c: &Cmd) -> Outcome {
        let b = &self.bar;
        let seq = b.read(reg::SEQ);
        b.write(reg::SRC_LO, c.src as u32);
        b.write(reg::SRC_HI, (c.src >> 32) as u32);
        b.write(reg::DST_LO, c.dst as u32);
        b.write(reg::DST_HI, (c.dst >> 32) as u32);
        b.write(reg::LEN, c.len);
        b.write(reg::PATTERN, c.pattern);
        b.write(reg::VECTOR, self.vector);
        b.write(reg::CMD, c.op);
        // vfio-user region writes are non-posted, so the command is done
        // when the store returns; the read of SEQ also flushes it.
        let now = b.read(reg::SEQ);
        Outcome {
            status: b.read(reg::STATUS),
            fault: u64::from(b.read(reg::FAULT_LO)) | (u64::from(b.read(reg::FAULT_HI)) << 32),
            seq_advanced: now == seq.wrapping_add(1),
        }
    }
}

fn fill_cmd(dst: u64, len: u32, pattern: u32) -> Cmd {
    Cmd {
        op: OP_FILL,
        src: 0,
        dst,
        len,
        pattern,
    }
}

fn copy_cmd(src: u64, dst: u64, len: u32) -> Cmd {
    Cmd {
        op: OP_COPY,
        src,
        dst,
        len,
        pattern: 0,
    }
}

/// Byte `i` of `pattern` repeated from offset 0 of the filled range.
fn pattern_byte(pattern: u32, i: usize) -> u8 {
    pattern.to_le_bytes()[i % 4]
}

/// Describes the first difference between `got` and `want`.
fn diff(got: &[u8], want: &[u8]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        None => format!("{} bytes match", want.len()),
        Some(i) => format!("byte {i}: got {:#04x}, want {:#04x}", got[i], want[i]),
    }
}

fn dma_passthrough(r: &mut Report) {
    let Some((_dev, ep, cfg)) = open_endpoint(r) else {
        return;
    };
    let (id, ver, max) = (
        ep.bar.read(reg::ID),
        ep.bar.read(reg::VERSION),
        ep.bar.read(reg::MAX_LEN),
    );
    if !r.check(
        "endpoint/registers",
        id == ID_VDMA && ver == 1 && max >= page() as u32,
        format!("ID {id:#x}, VERSION {ver}, MAX_LEN {max:#x}"),
    ) {
        return;
    }
    let pages = (PinnedPage::new(), PinnedPage::new());
    let (mut src, mut dst) = match pages {
        (Ok(s), Ok(d)) => (s, d),
        (s, d) => {
            r.check(
                "buffers/pagemap",
                false,
                format!("{:?} {:?}", s.err(), d.err()),
            );
            return;
        }
    };
    r.check(
        "buffers/pagemap",
        true,
        format!("src at {:#x}, dst at {:#x}", src.phys(), dst.phys()),
    );
    bus_master_checks(r, &ep, &cfg, &dst);
    transfer_checks(r, &ep, &mut src, &mut dst);
    refusal_checks(r, &ep, &mut dst);
}

/// PCI Local Bus 3.0, 6.2.2: with Bus Master Enable clear the device
/// issues no DMA; set it, and DMA runs.
fn bus_master_checks(r: &mut Report, ep: &Endpoint<Mmio>, cfg: &Config, dst: &PinnedPage) {
    let cmd = cfg.read16(4).unwrap_or(0);
    let _ = cfg.write16(4, cmd & !0x0004);
    let o = ep.run(&fill_cmd(dst.phys(), 16, 0x5a5a_5a5a));
    let untouched = dst.snapshot()[..16].iter().all(|b| *b == 0);
    r.check(
        "dma/no-bus-master",
        o.status == ST_NO_BUS_MASTER && o.seq_advanced && untouched,
        format!("{o:?}, memory untouched: {untouched}"),
    );
    let set = cfg.write16(4, cmd | CMD_MEM_BME);
    let now = cfg.read16(4).unwrap_or(0);
    r.check(
        "config/bus-master",
        set.is_ok() && now & CMD_MEM_BME == CMD_MEM_BME,
        format!("command {cmd:#06x} -> {now:#06x}"),
    );
}

fn transfer_checks(
    r: &mut Report,
    ep: &Endpoint<Mmio>,
    src: &mut PinnedPage,
    dst: &mut PinnedPage,
) {
    let p = 0xa5c3_5a3c;
    let o = ep.run(&fill_cmd(dst.phys(), page() as u32, p));
    let want: Vec<u8> = (0..page()).map(|i| pattern_byte(p, i)).collect();
    let got = dst.snapshot();
    r.check(
        "dma/fill-page",
        o.status == ST_OK && got == want,
        format!("{o:?}; {}", diff(&got, &want)),
    );

    dst.fill(0xee);
    let (off, len, p) = (100usize, 1000usize, 0x0403_0201);
    let o = ep.run(&fill_cmd(dst.phys() + off as u64, len as u32, p));
    let want: Vec<u8> = (0..page())
        .map(|i| {
            if (off..off + len).contains(&i) {
                pattern_byte(p, i - off)
            } else {
                0xee
            }
        })
        .collect();
    let got = dst.snapshot();
    r.check(
        "dma/fill-range",
        o.status == ST_OK && got == want,
        format!("{len} bytes at +{off}: {o:?}; {}", diff(&got, &want)),
    );

    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..page() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        src.set(i, x as u8);
    }
    dst.fill(0);
    let o = ep.run(&copy_cmd(src.phys(), dst.phys(), page() as u32));
    let (got, want) = (dst.snapshot(), src.snapshot());
    r.check(
        "dma/copy-page",
        o.status == ST_OK && got == want,
        format!("{o:?}; {}", diff(&got, &want)),
    );

    dst.fill(0);
    let (so, doff, len) = (17usize, 300usize, 2000usize);
    let o = ep.run(&copy_cmd(
        src.phys() + so as u64,
        dst.phys() + doff as u64,
        len as u32,
    ));
    let s = src.snapshot();
    let want: Vec<u8> = (0..page())
        .map(|i| {
            if (doff..doff + len).contains(&i) {
                s[i - doff + so]
            } else {
                0
            }
        })
        .collect();
    let got = dst.snapshot();
    r.check(
        "dma/copy-range",
        o.status == ST_OK && got == want,
        format!("{len} bytes +{so} -> +{doff}: {o:?}; {}", diff(&got, &want)),
    );
}

fn refusal_checks(r: &mut Report, ep: &Endpoint<Mmio>, dst: &mut PinnedPage) {
    let o = ep.run(&fill_cmd(NOWHERE + 0x10, 64, 0x1111_1111));
    r.check(
        "dma/write-outside-ram",
        o.status == ST_WRITE_FAULT && o.fault == NOWHERE + 0x10,
        format!("{o:?}"),
    );

    dst.fill(0x77);
    let o = ep.run(&copy_cmd(NOWHERE, dst.phys(), 256));
    let untouched = dst.snapshot().iter().all(|b| *b == 0x77);
    r.check(
        "dma/read-outside-ram",
        o.status == ST_READ_FAULT && o.fault == NOWHERE && untouched,
        format!("{o:?}, destination untouched: {untouched}"),
    );

    let o = ep.run(&fill_cmd(dst.phys(), 0, 0));
    r.check(
        "dma/zero-length",
        o.status == ST_BAD_LENGTH,
        format!("{o:?}"),
    );
    let o = ep.run(&Cmd {
        op: 0x99,
        src: 0,
        dst: dst.phys(),
        len: 4,
        pattern: 0,
    });
    r.check(
        "dma/bad-opcode",
        o.status == ST_BAD_OPCODE && o.seq_advanced,
        format!("{o:?}"),
    );
}

/// Maps BAR0 and the config space of the endpoint, after the
/// `endpoint/found` check.
fn open_endpoint(r: &mut Report) -> Option<(std::path::PathBuf, Endpoint<Mmio>, Config)> {
    let Some(dev) = sys::find_function(VENDOR, DEVICE) else {
        let e = format!("no {VENDOR:04x}:{DEVICE:04x} in /sys/bus/pci/devices");
        r.check("endpoint/found", false, e);
        return None;
    };
    let bdf = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar0 = sys::bar_address(&dev, 0).unwrap_or(0);
    r.check("endpoint/found", true, format!("{bdf}, BAR0 at {bar0:#x}"));
    match (Mmio::map(&dev, 0, REGS), Config::open(&dev)) {
        (Ok(bar), Ok(cfg)) => Some((
            dev,
            Endpoint {
                bar,
                vector: u32::MAX,
            },
            cfg,
        )),
        (b, c) => {
            let e = format!("resource0: {:?}, config: {:?}", b.err(), c.err());
            r.check("endpoint/map", false, e);
            None
        }
    }
}

/// A pinned page filled with `byte`, or a failed `buffers/pagemap` check.
pub(crate) fn pinned_filled(r: &mut Report, byte: u8) -> Option<PinnedPage> {
    match PinnedPage::new() {
        Ok(mut p) => {
            p.fill(byte);
            Some(p)
        }
        Err(e) => {
            r.check("buffers/pagemap", false, e.to_string());
            None
        }
    }
}

fn virtio_iommu_fault(r: &mut Report) {
    matrix::virtio_registered(r);
    let Some((dev, ep, cfg)) = open_endpoint(r) else {
        return;
    };
    let group = sys::iommu_group(&dev);
    let translated = group.as_ref().is_some_and(|(_, t)| t.starts_with("DMA"));
    r.check(
        "iommu/endpoint-domain",
        translated,
        format!("group, default domain type: {group:?}"),
    );
    let cmd = cfg.read16(4).unwrap_or(0);
    let set = cfg.write16(4, cmd | CMD_MEM_BME);
    r.check(
        "config/bus-master",
        set.is_ok(),
        format!("command {cmd:#06x}"),
    );
    let Some(page) = pinned_filled(r, 0x33) else {
        return;
    };
    let mut kmsg = sys::Kmsg::open_at_end();
    // The buffer's physical address is not an IOVA the default domain
    // maps: the model refuses the write and reports a mapping fault.
    let o = ep.run(&fill_cmd(page.phys(), 64, 0x5555_5555));
    let untouched = page.snapshot().iter().all(|b| *b == 0x33);
    r.check(
        "dma/unmapped-refused",
        o.status == ST_WRITE_FAULT && o.fault == page.phys() && untouched,
        format!(
            "IOVA {:#x}: {o:?}, memory untouched: {untouched}",
            page.phys()
        ),
    );
    // virtio 1.3 5.13.6.9: the device reports the fault on the event
    // queue; Linux's viommu_fault_handler logs "page fault from EP <id> at
    // <address> [W]".
    let want = format!("fault from EP {} at {:#x}", 0x28, page.phys());
    let line = match kmsg.as_mut() {
        Ok(k) => k.wait_for(&want, std::time::Duration::from_secs(3)),
        Err(_) => None,
    };
    r.check(
        "iommu/fault-reported",
        line.is_some(),
        line.unwrap_or_else(|| format!("no kernel message with {want:?} ({:?})", kmsg.err())),
    );
}

/// Prints BAR0 of every function of the harness's vendor, for the run
/// script's probe boot.
fn probe_bars(r: &mut Report) {
    let mut n = 0;
    for dev in sys::functions(VENDOR) {
        if let (Some(id), Some(bar)) = (sys::device_id(&dev), sys::bar_address(&dev, 0)) {
            println!("# bar {VENDOR:04x}:{id:04x} {bar:#x}");
            n += 1;
        }
    }
    r.check("probe/bars", n > 0, format!("{n} functions"));
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        args.push("dma-passthrough".into());
    }
    let mut r = Report::default();
    for a in &args {
        println!("# scenario {a}");
        match a.as_str() {
            "dma-passthrough" => dma_passthrough(&mut r),
            "virtio-iommu-fault" => virtio_iommu_fault(&mut r),
            "virtio-iommu" => matrix::run(&mut r, matrix::Iommu::Virtio),
            "vtd-legacy" => matrix::run(&mut r, matrix::Iommu::Vtd(matrix::VtdMode::Legacy)),
            "vtd-scalable-fs" => {
                matrix::run(&mut r, matrix::Iommu::Vtd(matrix::VtdMode::ScalableFs))
            }
            "vtd-scalable-ss" => {
                matrix::run(&mut r, matrix::Iommu::Vtd(matrix::VtdMode::ScalableSs))
            }
            "smmuv3" => matrix::run(&mut r, matrix::Iommu::Smmu(smmu::SmmuStage::S1)),
            "smmuv3-s2" => matrix::run(&mut r, matrix::Iommu::Smmu(smmu::SmmuStage::S2)),
            "smmuv3-64k" | "smmuv3-64k-s2" => {
                let stage = if a.ends_with("-s2") {
                    smmu::SmmuStage::S2
                } else {
                    smmu::SmmuStage::S1
                };
                let p = page();
                r.check(
                    "kernel/page-size",
                    p == 0x10000,
                    format!("{p:#x}-byte pages, want 64 KiB"),
                );
                matrix::run(&mut r, matrix::Iommu::Smmu(stage));
            }
            "probe-bars" => probe_bars(&mut r),
            "bench" => bench::bench(&mut r),
            other => {
                r.check(&format!("scenario/{other}"), false, "unknown scenario");
            }
        }
    }
    println!("{} passed, {} failed", r.passed, r.failed);
    if r.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
