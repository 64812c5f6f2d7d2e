//! The scenario matrix (tests/guest/run): one scenario per guest IOMMU
//! (`virtio-iommu`, `vtd-legacy`, `vtd-scalable-fs`, `vtd-scalable-ss`),
//! two DMA test endpoints behind it, and in each:
//!
//! - boot 1: the IOMMU as the driver set it up (for VT-d, which mode it
//!   chose), both endpoints' default DMA domains and DMA by physical
//!   address from the unbound endpoints refused and reported; map / DMA /
//!   unmap / fault through VFIO; two endpoints in one domain (one type1
//!   container, then one iommufd IOAS where both report the same HWPT);
//!   unbind and rebind; then SCRATCH := 1 and init reboots the guest;
//! - boot 2 (SCRATCH was 1; check names start with `boot2/`): the IOMMU,
//!   the default domains and map / DMA / unmap / fault again, SCRATCH := 2,
//!   and init powers off.

use crate::smmu::{self, SmmuLog, SmmuStage};
use crate::sys::{self, Config, Mmio, REGS};
use crate::translated::{self, Ep, FaultLog, Stage, VirtioLog, VtdLog};
use crate::{
    CMD_MEM_BME, DEVICE, Endpoint, Report, ST_WRITE_FAULT, VENDOR, fill_cmd, pinned_filled, reg,
};

/// Which IOMMU the guest has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iommu {
    /// Our virtio-iommu at a virtio-pci function, named by the VIOT.
    Virtio,
    /// Our VT-d unit at the BAR of a function, named by the DMAR.
    Vtd(VtdMode),
    /// Our SMMUv3 at the BAR of a function, named by the device tree.
    Smmu(SmmuStage),
}

/// The VT-d setup a scenario asks for (`--vtd-mode` of the server and the
/// kernel command line) and the driver must really have chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdMode {
    /// `intel_iommu=on,sm_off`, no caching mode: legacy root/context
    /// tables and second-stage page tables.
    Legacy,
    /// Scalable mode; the unit has first-stage translation, which Linux
    /// then uses for DMA domains.
    ScalableFs,
    /// Scalable mode with second-stage translation only, caching mode on.
    ScalableSs,
}

/// init reboots the guest when the program leaves this file.
const REBOOT_FLAG: &str = "/tmp/guest-test-reboot";
/// The VT-d register function (tests/guest/server/src/vtd_fn.rs).
const VTD_DEVICE: u16 = 0x10f1;

pub fn run(r: &mut Report, iommu: Iommu) {
    let Some((eps, boot)) = endpoints_and_boot(r) else {
        return;
    };
    let Some((mut log, want_type, regs)) = iommu_up(r, iommu) else {
        return;
    };
    let log = log.as_mut();
    default_domain(r, log, &eps, want_type);
    translated::single(r, log, &eps[0]);
    if boot == 0 {
        crate::two::type1(r, log, &eps);
        crate::two::iommufd(r, log, &eps);
        translated::unbind_rebind(r, log, &eps[0]);
    }
    match regs {
        Some(Unit::Vtd(regs)) => {
            // The driver's fault handler ran for every fault: it clears
            // each record's F bit and FSTS.PPF (VT-d 7.2.1, 11.4.9, W1C).
            let left = VtdFaultRecords(regs).pending();
            r.check(
                "vtd/faults-cleared-by-driver",
                left.is_empty(),
                format!("pending records: {left:?}"),
            );
        }
        Some(Unit::Smmu(regs)) => smmu::end_checks(r, &regs),
        None => {}
    }
    end_of_boot(r, &eps[0], boot);
}

/// The two endpoints, and which boot this is from endpoint 1's SCRATCH
/// (0: the first; 1: the second, whose checks get the `boot2/` prefix).
fn endpoints_and_boot(r: &mut Report) -> Option<([Ep; 2], u32)> {
    let eps: Vec<Ep> = sys::functions(VENDOR)
        .into_iter()
        .filter(|p| sys::device_id(p) == Some(DEVICE))
        .map(Ep::new)
        .collect();
    let names: Vec<String> = eps.iter().map(|e| e.name.clone()).collect();
    let Ok(eps) = <[Ep; 2]>::try_from(eps.into_iter().take(2).collect::<Vec<_>>()) else {
        let e = format!("want 2 endpoints: {names:?}");
        r.check("endpoint/found", false, e);
        return None;
    };
    let boot = match read_scratch(&eps[0]) {
        Ok(n) => n,
        Err(e) => {
            r.check("reboot/scratch", false, e);
            return None;
        }
    };
    if boot == 1 {
        r.prefix = "boot2/".into();
    }
    let rids = format!("requester IDs {:#x} {:#x}", eps[0].rid, eps[1].rid);
    r.check("endpoint/found", true, format!("{names:?}, {rids}"));
    let known = r.check(
        "reboot/scratch",
        boot <= 1,
        format!("SCRATCH {boot}: boot {}", boot + 1),
    );
    known.then_some((eps, boot))
}

/// An IOMMU's registers, for the checks at the end of a boot.
enum Unit {
    Vtd(Mmio),
    Smmu(Mmio),
}

/// What the IOMMU checks need: where its faults are reported, the default
/// domain type its mode implies, and (VT-d, SMMUv3) its registers.
type IommuUp = (Box<dyn FaultLog>, &'static str, Option<Unit>);

/// The IOMMU as the driver set it up.
fn iommu_up(r: &mut Report, iommu: Iommu) -> Option<IommuUp> {
    let mode = match iommu {
        Iommu::Virtio => {
            virtio_registered(r);
            return Some((Box::new(VirtioLog::new()), "DMA-FQ", None));
        }
        Iommu::Vtd(mode) => mode,
        Iommu::Smmu(stage) => {
            // Our arm64 kernel is built with IOMMU_DEFAULT_DMA_STRICT
            // (arm64 defconfig): strict DMA domains.
            let log = SmmuLog::new(stage, smmu::unit(r, stage)?);
            let end = Mmio::map(&sys::find_function(VENDOR, smmu::SMMU_DEVICE)?, 0, 0x20000)
                .ok()
                .map(Unit::Smmu);
            return Some((Box::new(log), "DMA", end));
        }
    };
    let regs = vtd_unit(r, mode)?;
    let stage = match mode {
        VtdMode::Legacy => Stage::Legacy,
        VtdMode::ScalableFs => Stage::First,
        VtdMode::ScalableSs => Stage::Second,
    };
    // Caching mode with second-stage tables makes Linux strict ("IOMMU
    // batching disallowed due to virtualization"): a DMA domain, not
    // DMA-FQ.
    let t = if mode == VtdMode::ScalableSs {
        "DMA"
    } else {
        "DMA-FQ"
    };
    Some((Box::new(VtdLog::new(stage)), t, Some(Unit::Vtd(regs))))
}

/// SCRATCH := boot + 1; after the first boot, asks init to reboot.
fn end_of_boot(r: &mut Report, ep: &Ep, boot: u32) {
    let next = boot + 1;
    let wrote = write_scratch(ep, next);
    r.check(
        "reboot/scratch-written",
        wrote.as_ref().is_ok_and(|v| *v == next),
        format!("SCRATCH := {next}: read back {wrote:?}"),
    );
    if boot == 0 && wrote.is_ok_and(|v| v == next) {
        match std::fs::write(REBOOT_FLAG, "") {
            Ok(()) => println!("# boot 1 done: init reboots the guest"),
            Err(e) => {
                r.check("reboot/flag", false, e.to_string());
            }
        }
    }
}

/// Maps `ep`'s BAR0 from sysfs with memory decoding on.
fn sysfs_bar(ep: &Ep) -> Result<(Mmio, Config), String> {
    let cfg = Config::open(&ep.path).map_err(|e| format!("config: {e}"))?;
    let cmd = cfg.read16(4).map_err(|e| format!("config: {e}"))?;
    if cmd & 0x2 == 0 {
        cfg.write16(4, cmd | 0x2)
            .map_err(|e| format!("config: {e}"))?;
    }
    let bar = Mmio::map(&ep.path, 0, REGS).map_err(|e| format!("resource0: {e}"))?;
    Ok((bar, cfg))
}

/// The SCRATCH register: 0 on the first boot after the server started.
fn read_scratch(ep: &Ep) -> Result<u32, String> {
    let (bar, _) = sysfs_bar(ep)?;
    let id = bar.read(reg::ID);
    if id != crate::ID_VDMA {
        return Err(format!("BAR0 ID {id:#x} is not the endpoint's"));
    }
    Ok(bar.read(reg::SCRATCH))
}

/// Writes SCRATCH and reads it back.
fn write_scratch(ep: &Ep, v: u32) -> Result<u32, String> {
    let (bar, _) = sysfs_bar(ep)?;
    bar.write(reg::SCRATCH, v);
    Ok(bar.read(reg::SCRATCH))
}

/// The virtio-iommu function (modern virtio ID 23) is registered as an
/// IOMMU under its PCI name.
pub fn virtio_registered(r: &mut Report) {
    let iommus = sys::iommus();
    let viommu = sys::find_function(VENDOR, 0x1040 + 23)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let registered = viommu.as_ref().is_some_and(|n| iommus.contains(n));
    r.check(
        "iommu/registered",
        registered,
        format!("virtio-iommu function {viommu:?}, /sys/class/iommu: {iommus:?}"),
    );
}

/// The default DMA domain at boot: each endpoint (no driver) sits alone
/// in an IOMMU group whose default domain is translated, of the type the
/// driver's mode implies; DMA from each to a buffer's physical address
/// (nothing maps it in a default domain no driver used) is refused by the
/// model, reported with the endpoint's own source ID, and leaves memory
/// untouched.
fn default_domain(r: &mut Report, log: &mut dyn FaultLog, eps: &[Ep; 2], want: &str) {
    let groups: Vec<_> = eps.iter().map(|e| sys::iommu_group(&e.path)).collect();
    for (i, g) in groups.iter().enumerate() {
        let name = ["iommu/endpoint-domain", "iommu/endpoint2-domain"][i];
        r.check(
            name,
            g.as_ref().is_some_and(|(_, t)| t == want),
            format!(
                "{}: group, default domain type {g:?}, want {want}",
                eps[i].name
            ),
        );
    }
    let Some(page) = pinned_filled(r, 0x33) else {
        return;
    };
    for (i, ep) in eps.iter().enumerate() {
        let (bar, cfg) = match sysfs_bar(ep) {
            Ok(b) => b,
            Err(e) => {
                r.check("dma/unmapped-refused", false, e);
                continue;
            }
        };
        let cmd = cfg.read16(4).unwrap_or(0);
        let _ = cfg.write16(4, cmd | CMD_MEM_BME);
        let d = Endpoint {
            bar,
            vector: u32::MAX,
        };
        let at = page.phys() + 0x40 * i as u64;
        let cmd_fill = fill_cmd(at, 64, 0x5555_5555);
        let name = ["dma/unmapped-refused", "dma/ep2-unmapped-refused"][i];
        translated::expect_fault(r, log, name, ep, &d, &cmd_fill, ST_WRITE_FAULT, at);
        // Bus mastering off again, as the kernel left it.
        let _ = cfg.write16(4, cmd);
    }
    let untouched = page.snapshot().iter().all(|b| *b == 0x33);
    r.check(
        "dma/unmapped-untouched",
        untouched,
        format!("the page at {:#x} kept its bytes", page.phys()),
    );
}

/// The VT-d unit as the driver set it up, and its fault event routed to
/// the driver; returns its register page.
fn vtd_unit(r: &mut Report, mode: VtdMode) -> Option<Mmio> {
    // DMAR (VT-d 8.1): header 36 bytes, 12 bytes of fields, then the DRHD
    // whose Register Base Address is at its offset 8.
    let dmar = std::fs::read("/sys/firmware/acpi/tables/DMAR").unwrap_or_default();
    let base = dmar
        .get(56..64)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let Some(unit) = sys::find_function(VENDOR, VTD_DEVICE) else {
        r.check("vtd/function", false, "no VT-d register function");
        return None;
    };
    let bar = sys::bar_address(&unit, 0).unwrap_or(0);
    r.check(
        "vtd/drhd-at-bar",
        base != 0 && base == bar,
        format!("DRHD base {base:#x}, BAR0 {bar:#x}"),
    );
    let iommus = sys::iommus();
    r.check(
        "iommu/registered",
        iommus.iter().any(|n| n.starts_with("dmar")),
        format!("/sys/class/iommu: {iommus:?}"),
    );
    let regs = match Mmio::map(&unit, 0, REGS) {
        Ok(m) => m,
        Err(e) => {
            r.check("vtd/registers", false, e.to_string());
            return None;
        }
    };
    // GSTS (11.4.5): TES bit 31.
    let gsts = regs.read(0x1c);
    r.check(
        "vtd/translation-enabled",
        gsts & (1 << 31) != 0,
        format!("GSTS {gsts:#x}"),
    );
    vtd_mode(r, &regs, mode);
    let routed = route_fault_msi(&unit, &regs);
    r.check(
        "vtd/fault-msi-routed",
        routed.is_ok(),
        routed.unwrap_or_else(|e| e.to_string()),
    );
    Some(regs)
}

fn read64(regs: &Mmio, off: usize) -> u64 {
    u64::from(regs.read(off)) | u64::from(regs.read(off + 4)) << 32
}

/// Which mode the driver really runs the unit in: the Translation Table
/// Mode it wrote to RTADDR (11.4.6: bits 11:10, 00 legacy, 01 scalable),
/// the CAP/ECAP it read (sysfs intel-iommu/cap, ecap: CM bit 7; SMTS 43,
/// SLTS 46, FLTS 47) and what Linux's first_level_by_default() and
/// intel_iommu_init() make of them, and the kernel's own log lines.
fn vtd_mode(r: &mut Report, regs: &Mmio, mode: VtdMode) {
    let ttm = (read64(regs, 0x20) >> 10) & 3;
    let sysfs = std::path::Path::new("/sys/class/iommu/dmar0/intel-iommu");
    let cap = sys::read_hex64(&sysfs.join("cap")).unwrap_or(0);
    let ecap = sys::read_hex64(&sysfs.join("ecap")).unwrap_or(0);
    let bit = |v: u64, b: u32| (v >> b) & 1 == 1;
    let (cm, smts, slts, flts) = (bit(cap, 7), bit(ecap, 43), bit(ecap, 46), bit(ecap, 47));
    let scalable = ttm == 1;
    // drivers/iommu/intel/iommu.c first_level_by_default().
    let first_level = scalable && if flts ^ slts { flts } else { true };
    let klog = sys::kernel_log();
    let logged = |s: &str| klog.iter().any(|l| l.contains(s));
    let sm_off = logged("Scalable mode is disallowed");
    let strict = logged("IOMMU batching disallowed due to virtualization");
    let ok = match mode {
        VtdMode::Legacy => ttm == 0 && sm_off && !cm,
        VtdMode::ScalableFs => scalable && smts && flts && first_level,
        VtdMode::ScalableSs => scalable && smts && slts && !flts && !first_level && cm && strict,
    };
    let table = if first_level {
        "first-stage"
    } else {
        "second-stage"
    };
    r.check(
        "vtd/mode",
        ok,
        format!(
            "want {mode:?}: RTADDR.TTM {ttm:#b} ({}), {table} tables; CAP {cap:#x} (CM {}), \
             ECAP {ecap:#x} (SMTS {} SLTS {} FLTS {}); log: sm_off {sm_off}, strict {strict}",
            if scalable { "scalable" } else { "legacy" },
            u8::from(cm),
            u8::from(smts),
            u8::from(slts),
            u8::from(flts),
        ),
    );
}

/// VT-d raises its fault event as the MSI in FEADDR/FEUADDR/FEDATA
/// (11.4.9.2-4), which Linux's driver programmed. A vfio-user server can
/// only signal its function's MSI-X vectors, so the harness copies that
/// message into MSI-X table entry 0 of the register function (the vector
/// the server signals for fault events) and enables MSI-X.
fn route_fault_msi(unit: &std::path::Path, regs: &Mmio) -> std::io::Result<String> {
    let (data, addr, uaddr) = (regs.read(0x3c), regs.read(0x40), regs.read(0x44));
    let table = Mmio::map(unit, 2, REGS)?;
    // MSI-X table entry (PCI Local Bus 3.0, 6.8.2.6-9): address low, high,
    // data, vector control (bit 0 mask).
    table.write(0, addr);
    table.write(4, uaddr);
    table.write(8, data);
    table.write(12, 0);
    let cfg = Config::open(unit)?;
    // An MSI is a memory write by the function: Bus Master Enable must be
    // set for it to leave (QEMU drops it otherwise, as hardware would).
    let cmd = cfg.read16(4)?;
    cfg.write16(4, cmd | CMD_MEM_BME)?;
    // MSI-X capability at 0x40: Message Control bit 15 enables.
    let ctrl = cfg.read16(0x42)?;
    cfg.write16(0x42, ctrl | 0x8000)?;
    Ok(format!(
        "FEADDR {uaddr:#x}:{addr:#x} FEDATA {data:#x} -> MSI-X vector 0"
    ))
}

/// VT-d primary fault logging (7.2.1): the fault recording registers,
/// read from the unit's register page.
struct VtdFaultRecords(Mmio);

impl VtdFaultRecords {
    /// The fault records with F set, and FSTS if any fault is pending.
    fn pending(&self) -> Vec<String> {
        // CAP (11.4.2): NFR bits 47:40 (records - 1), FRO bits 33:24
        // (offset / 16).
        let cap = read64(&self.0, 0x08);
        let nfr = ((cap >> 40) & 0xff) + 1;
        let fro = ((cap >> 24) & 0x3ff) * 16;
        let mut out = Vec::new();
        let fsts = self.0.read(0x34);
        // FSTS: PFO bit 0, PPF bit 1.
        if fsts & 0x3 != 0 {
            out.push(format!("FSTS {fsts:#x}"));
        }
        for i in 0..nfr {
            let at = (fro + i * 16) as usize;
            if at + 16 > REGS {
                break;
            }
            let (lo, hi) = (read64(&self.0, at), read64(&self.0, at + 8));
            // FRCD (11.4.14): F bit 127, T1 bit 126 (1 = read), FR bits
            // 103:96, SID bits 79:64, FI bits 63:12.
            if hi >> 63 == 1 {
                let rw = if (hi >> 62) & 1 == 1 { "R" } else { "W" };
                let (fr, sid, fi) = ((hi >> 32) & 0xff, hi & 0xffff, lo & !0xfff);
                out.push(format!("#{i}: sid {sid:#x} {rw} {fi:#x} reason {fr:#x}"));
            }
        }
        out
    }
}
