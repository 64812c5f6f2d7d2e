//! Scenarios through a guest IOMMU: the endpoint bound to vfio-pci and
//! driven from user space with buffers mapped at chosen IOVAs, behind our
//! virtio-iommu (`virtio-iommu-vfio`) or our VT-d unit (`vtd-vfio`).

use crate::sys::{self, Mmio, PAGE};
use crate::{
    CMD_MEM_BME, Cmd, DEVICE, Endpoint, Report, ST_OK, ST_READ_FAULT, ST_WRITE_FAULT, VENDOR,
    copy_cmd, diff, fill_cmd, pattern_byte, vfio,
};

/// IOVAs the guest chooses: above its 512 MiB of RAM, so an access can
/// only reach the buffers through the IOMMU's translation.
const IOVA_SRC: u64 = 0x4000_0000;
const IOVA_DST: u64 = 0x4010_0000;
/// Two pages: the buffers' pages are not physically contiguous, so a
/// transfer spanning them exercises per-page translation.
const VFIO_LEN: usize = 2 * PAGE;
/// Endpoint ID of 00:05.0 in the harness's VIOT.
const ENDPOINT_ID: u32 = 0x28;

pub fn virtio_iommu_vfio(r: &mut Report) {
    vfio_scenario(r, &mut KernelLog(None));
}

/// The VT-d register function (tests/guest/server/src/vtd_fn.rs).
const VTD_DEVICE: u16 = 0x10f1;

pub fn vtd_vfio(r: &mut Report) {
    // DMAR (VT-d 8.1): header 36 bytes, 12 bytes of fields, then the DRHD
    // whose Register Base Address is at its offset 8.
    let dmar = std::fs::read("/sys/firmware/acpi/tables/DMAR").unwrap_or_default();
    let base = dmar
        .get(56..64)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let Some(unit) = sys::find_function(VENDOR, VTD_DEVICE) else {
        r.check("vtd/function", false, "no VT-d register function");
        return;
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
    let regs = match Mmio::map(&unit, 0, PAGE) {
        Ok(m) => m,
        Err(e) => {
            r.check("vtd/registers", false, e.to_string());
            return;
        }
    };
    // GSTS (11.4.5): TES bit 31, QIES bit 26, RTPS bit 30.
    let gsts = regs.read(0x1c);
    r.check(
        "vtd/translation-enabled",
        gsts & (1 << 31) != 0,
        format!("GSTS {gsts:#x}"),
    );
    let routed = route_fault_msi(&unit, &regs);
    r.check(
        "vtd/fault-msi-routed",
        routed.is_ok(),
        routed.unwrap_or_else(|e| e.to_string()),
    );
    vfio_scenario(r, &mut VtdLog(None));
    // The driver's fault handler ran for every fault: it clears each
    // record's F bit and FSTS.PPF (VT-d 7.2.1, 11.4.9, W1C).
    let left = VtdFaultRecords(regs).pending();
    r.check(
        "vtd/faults-cleared-by-driver",
        left.is_empty(),
        format!("pending records: {left:?}"),
    );
}

/// VT-d raises its fault event as the MSI in FEADDR/FEUADDR/FEDATA
/// (11.4.9.2-4), which Linux's driver programmed. A vfio-user server can
/// only signal its function's MSI-X vectors, so the harness copies that
/// message into MSI-X table entry 0 of the register function (the vector
/// the server signals for fault events) and enables MSI-X.
fn route_fault_msi(unit: &std::path::Path, regs: &Mmio) -> std::io::Result<String> {
    let (data, addr, uaddr) = (regs.read(0x3c), regs.read(0x40), regs.read(0x44));
    let table = Mmio::map(unit, 2, PAGE)?;
    // MSI-X table entry (PCI Local Bus 3.0, 6.8.2.6-9): address low, high,
    // data, vector control (bit 0 mask).
    table.write(0, addr);
    table.write(4, uaddr);
    table.write(8, data);
    table.write(12, 0);
    let cfg = sys::Config::open(unit)?;
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

/// VT-d faults as Linux's DMAR fault handler logs them.
struct VtdLog(Option<sys::Kmsg>);

impl FaultLog for VtdLog {
    fn arm(&mut self) {
        self.0 = sys::Kmsg::open_at_end().ok();
    }
    fn find(&mut self, iova: u64, write: bool) -> Result<String, String> {
        let kind = if write { "DMA Write" } else { "DMA Read" };
        let want = format!("Request device [0000:00:05.0] fault addr {iova:#x}");
        let line = self
            .0
            .as_mut()
            .and_then(|k| k.wait_for(&want, std::time::Duration::from_secs(3)))
            .ok_or(format!("no kernel message with {want:?}"))?;
        if line.contains(kind) {
            Ok(line)
        } else {
            Err(format!("{line:?} is not a {kind}"))
        }
    }
}

fn vfio_scenario(r: &mut Report, log: &mut dyn FaultLog) {
    let Some(dev) = sys::find_function(VENDOR, DEVICE) else {
        r.check("endpoint/found", false, "no endpoint");
        return;
    };
    let group = sys::iommu_group(&dev);
    let translated = group.as_ref().is_some_and(|(_, t)| t.starts_with("DMA"));
    r.check(
        "iommu/endpoint-domain",
        translated,
        format!("group, default domain type: {group:?}"),
    );
    let bound = vfio::bind_vfio_pci(&dev);
    if !r.check("vfio/bind", bound.is_ok(), format!("{bound:?}")) {
        return;
    }
    let v = match vfio::Vfio::open(&dev) {
        Ok(v) => v,
        Err(e) => {
            r.check("vfio/container", false, e.to_string());
            return;
        }
    };
    r.check(
        "vfio/container",
        true,
        format!("group {:?} in a type1v2 container", sys::iommu_group(&dev)),
    );
    let cmd = v.config_read16(4).unwrap_or(0);
    let bme = v.config_write16(4, cmd | CMD_MEM_BME);
    let irq = v.msix_vector0();
    r.check(
        "vfio/bus-master-msix",
        bme.is_ok() && irq.is_ok(),
        format!(
            "command {cmd:#06x}: {bme:?}; MSI-X vector 0: {:?}",
            irq.as_ref().err()
        ),
    );
    let (Ok(irq), Ok(mut src), Ok(dst)) = (irq, vfio::Buf::new(VFIO_LEN), vfio::Buf::new(VFIO_LEN))
    else {
        return;
    };
    let len = VFIO_LEN as u64;
    let maps = (
        v.map(src.va(), IOVA_SRC, len, false),
        v.map(dst.va(), IOVA_DST, len, true),
    );
    if !r.check(
        "vfio/map",
        maps.0.is_ok() && maps.1.is_ok(),
        format!("src {IOVA_SRC:#x} read-only, dst {IOVA_DST:#x} read-write: {maps:?}"),
    ) {
        return;
    }
    let ep = Endpoint { bar: v, vector: 0 };
    vfio_transfers(r, &ep, &irq, &mut src, &dst);
    vfio_refusals(r, log, &ep, &dst);
}

fn vfio_transfers(
    r: &mut Report,
    ep: &Endpoint<vfio::Vfio>,
    irq: &vfio::EventFd,
    src: &mut vfio::Buf,
    dst: &vfio::Buf,
) {
    let p = 0x6b5a_4b3c;
    let o = ep.run(&fill_cmd(IOVA_DST, VFIO_LEN as u32, p));
    let want: Vec<u8> = (0..VFIO_LEN).map(|i| pattern_byte(p, i)).collect();
    let got = dst.snapshot();
    r.check(
        "dma/fill-iova",
        o.status == ST_OK && got == want,
        format!(
            "{VFIO_LEN:#x} bytes at IOVA {IOVA_DST:#x}: {o:?}; {}",
            diff(&got, &want)
        ),
    );
    let n = irq.wait(2000);
    r.check(
        "irq/msix-completion",
        matches!(n, Ok(k) if k >= 1),
        format!("eventfd of vector 0: {n:?}"),
    );

    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..VFIO_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        src.set(i, x as u8);
    }
    let o = ep.run(&copy_cmd(IOVA_SRC + 3, IOVA_DST + 5, VFIO_LEN as u32 - 8));
    let (s, got) = (src.snapshot(), dst.snapshot());
    let ok = o.status == ST_OK && got[5..VFIO_LEN - 3] == s[3..VFIO_LEN - 5];
    r.check(
        "dma/copy-iova",
        ok,
        format!(
            "IOVA {:#x} -> {:#x}: {o:?}; {}",
            IOVA_SRC + 3,
            IOVA_DST + 5,
            diff(&got[5..VFIO_LEN - 3], &s[3..VFIO_LEN - 5])
        ),
    );
    let n = irq.wait(2000);
    r.check(
        "irq/msix-second",
        matches!(n, Ok(k) if k >= 1),
        format!("{n:?}"),
    );
}

/// Where the guest sees an IOMMU's report of a refused DMA.
trait FaultLog {
    /// Called before the DMA.
    fn arm(&mut self);
    /// The report of a refused access at `iova`, if there is one.
    fn find(&mut self, iova: u64, write: bool) -> Result<String, String>;
}

/// virtio-iommu: the driver logs each fault record of the event queue.
struct KernelLog(Option<sys::Kmsg>);

impl FaultLog for KernelLog {
    fn arm(&mut self) {
        self.0 = sys::Kmsg::open_at_end().ok();
    }
    fn find(&mut self, iova: u64, _write: bool) -> Result<String, String> {
        let want = format!("fault from EP {ENDPOINT_ID} at {iova:#x}");
        self.0
            .as_mut()
            .and_then(|k| k.wait_for(&want, std::time::Duration::from_secs(3)))
            .ok_or(format!("no kernel message with {want:?}"))
    }
}

/// VT-d primary fault logging (7.2.1): the fault recording registers,
/// read from the unit's register page.
struct VtdFaultRecords(Mmio);

impl VtdFaultRecords {
    fn read64(&self, off: usize) -> u64 {
        u64::from(self.0.read(off)) | u64::from(self.0.read(off + 4)) << 32
    }
}

impl VtdFaultRecords {
    /// The fault records with F set, and FSTS if any fault is pending.
    fn pending(&self) -> Vec<String> {
        // CAP (11.4.2): NFR bits 47:40 (records - 1), FRO bits 33:24
        // (offset / 16).
        let cap = self.read64(0x08);
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
            if at + 16 > PAGE {
                break;
            }
            let (lo, hi) = (self.read64(at), self.read64(at + 8));
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

/// A refusal of `cmd`: the status, the fault address, and the IOMMU's
/// report of it.
fn expect_fault(
    r: &mut Report,
    log: &mut dyn FaultLog,
    name: &str,
    ep: &Endpoint<vfio::Vfio>,
    cmd: &Cmd,
    status: u32,
    iova: u64,
) {
    log.arm();
    let o = ep.run(cmd);
    r.check(
        name,
        o.status == status && o.fault == iova,
        format!("{o:?}, want status {status} at {iova:#x}"),
    );
    let found = log.find(iova, status == ST_WRITE_FAULT);
    r.check(
        &format!("{name}/reported"),
        found.is_ok(),
        found.unwrap_or_else(|e| e),
    );
}

fn vfio_refusals(
    r: &mut Report,
    log: &mut dyn FaultLog,
    ep: &Endpoint<vfio::Vfio>,
    dst: &vfio::Buf,
) {
    // virtio 1.3 5.13.6.5: a MAP without VIRTIO_IOMMU_MAP_F_WRITE does
    // not let the device write.
    expect_fault(
        r,
        log,
        "dma/write-readonly-refused",
        ep,
        &fill_cmd(IOVA_SRC, 16, 0),
        ST_WRITE_FAULT,
        IOVA_SRC,
    );
    let before = dst.snapshot();
    let unmapped = ep.bar.unmap(IOVA_DST, VFIO_LEN as u64);
    r.check(
        "vfio/unmap",
        matches!(unmapped, Ok(n) if n == VFIO_LEN as u64),
        format!("{unmapped:?}"),
    );
    expect_fault(
        r,
        log,
        "dma/after-unmap-refused",
        ep,
        &fill_cmd(IOVA_DST + PAGE as u64, 64, 0xffff_ffff),
        ST_WRITE_FAULT,
        IOVA_DST + PAGE as u64,
    );
    let untouched = dst.snapshot() == before;
    r.check(
        "dma/after-unmap-untouched",
        untouched,
        "the unmapped buffer kept its bytes",
    );
    expect_fault(
        r,
        log,
        "dma/read-unmapped-refused",
        ep,
        &copy_cmd(IOVA_DST, IOVA_SRC, 4),
        ST_READ_FAULT,
        IOVA_DST,
    );
}
