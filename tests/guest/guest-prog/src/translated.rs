//! VFIO checks through a guest IOMMU (our virtio-iommu or our VT-d unit):
//! endpoints bound to vfio-pci and driven from user space with buffers
//! mapped at chosen IOVAs, and where the guest sees the IOMMU's report of
//! each refused DMA. The scenarios that run them are in `matrix.rs`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sys::{self, Mmio, REGS, page};
use crate::{
    CMD_MEM_BME, Cmd, Endpoint, Report, ST_OK, ST_READ_FAULT, ST_WRITE_FAULT, copy_cmd, diff,
    fill_cmd, pattern_byte, vfio,
};

/// IOVAs the guest chooses: outside its 512 MiB of RAM (q35: from 0;
/// Arm `virt`: from 1 GiB, so there above 4 GiB), so an access can only
/// reach the buffers through the IOMMU's translation.
#[cfg(not(target_arch = "aarch64"))]
pub const IOVA_SRC: u64 = 0x4000_0000;
#[cfg(target_arch = "aarch64")]
pub const IOVA_SRC: u64 = 0x1_0000_0000;
pub const IOVA_DST: u64 = IOVA_SRC + 0x10_0000;
/// Two pages: the buffers' pages are not physically contiguous, so a
/// transfer spanning them exercises per-page translation.
fn vfio_len() -> usize {
    2 * page()
}

/// One DMA test endpoint as the guest names it.
pub struct Ep {
    /// Its sysfs directory.
    pub path: PathBuf,
    /// `0000:BB:DD.F`.
    pub name: String,
    /// Requester ID (bus << 8 | dev << 3 | fn): VT-d's source ID, and the
    /// virtio-iommu endpoint ID (the harness's VIOT maps them 1:1).
    pub rid: u16,
}

impl Ep {
    pub fn new(path: PathBuf) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rid = parse_rid(&name).unwrap_or(0);
        Ep { path, name, rid }
    }
}

/// `SSSS:BB:DD.F` to `BB << 8 | DD << 3 | F`.
fn parse_rid(name: &str) -> Option<u16> {
    let mut parts = name.rsplitn(3, ':');
    let (df, bus) = (parts.next()?, parts.next()?);
    let (d, f) = df.split_once('.')?;
    let bus = u16::from_str_radix(bus, 16).ok()?;
    let d = u16::from_str_radix(d, 16).ok()?;
    let f = u16::from_str_radix(f, 16).ok()?;
    Some(bus << 8 | d << 3 | f)
}

/// Linux prints IOMMU faults through printk rate limits
/// (DEFAULT_RATELIMIT_INTERVAL 5 s, DEFAULT_RATELIMIT_BURST 10 calls):
/// the DMAR fault handler (dmar_fault(), one shared state) spends three
/// per fault (the status line, the record, and the loop's last pass that
/// finds no more records), virtio-iommu's one. A fault caused past the
/// budget would be handled but not logged, so the checks wait for the
/// next window instead.
pub struct Pacer {
    per_fault: u32,
    window: Option<(Instant, u32)>,
}

const RATELIMIT_INTERVAL: Duration = Duration::from_secs(5);
const RATELIMIT_BURST: u32 = 10;
/// Slack for the kernel starting its window a little after we note it
/// (its window begins when its fault handler runs, after the DMA).
const RATELIMIT_SLACK: Duration = Duration::from_secs(1);

impl Pacer {
    pub fn new(per_fault: u32) -> Self {
        Pacer {
            per_fault,
            window: None,
        }
    }

    /// How long to wait at `now` before a fault so that its messages
    /// fit a rate-limit window (zero: none).
    fn wait_at(&self, now: Instant) -> Duration {
        match self.window {
            Some((begin, used))
                if now < begin + RATELIMIT_INTERVAL + RATELIMIT_SLACK
                    && used + self.per_fault > RATELIMIT_BURST =>
            {
                (begin + RATELIMIT_INTERVAL + RATELIMIT_SLACK).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    /// Counts a fault caused at `now` (after any wait).
    fn record_at(&mut self, now: Instant) {
        self.window = match self.window {
            Some((b, u)) if now < b + RATELIMIT_INTERVAL + RATELIMIT_SLACK => {
                Some((b, u + self.per_fault))
            }
            _ => Some((now, self.per_fault)),
        };
    }

    /// Called before a DMA that faults: waits if its messages would be
    /// rate-limited.
    pub fn before_fault(&mut self) {
        let wait = self.wait_at(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.record_at(Instant::now());
    }
}

/// Where the guest sees an IOMMU's report of a refused DMA.
pub trait FaultLog {
    /// Called before the DMA.
    fn arm(&mut self);
    /// The report of a refused access by `ep` at `iova`, if there is one.
    fn find(&mut self, ep: &Ep, iova: u64, write: bool) -> Result<String, String>;
    /// The report of a refused write by `ep`, attached to a blocking
    /// domain, at `iova`.
    fn find_blocked(&mut self, ep: &Ep, iova: u64) -> Result<String, String> {
        self.find(ep, iova, true)
    }
    /// After VFIO enabled MSI-X vector 0 of `ep` (`dev`): whatever the
    /// harness must do so that QEMU delivers the vector's message as the
    /// IOMMU would (nothing on x86, where MSIs are not translated).
    fn route_endpoint_msi(&mut self, _ep: &Ep, _dev: &vfio::Device) -> Result<String, String> {
        Ok("MSIs bypass translation".into())
    }
}

/// virtio-iommu: the driver logs each fault record of the event queue
/// (virtio 1.3 5.13.6.9; `viommu_fault_handler`:
/// `"fault from EP <id> at <address>"`).
pub struct VirtioLog {
    kmsg: Option<sys::Kmsg>,
    pacer: Pacer,
}

impl VirtioLog {
    pub fn new() -> Self {
        VirtioLog {
            kmsg: None,
            pacer: Pacer::new(1),
        }
    }
}

impl FaultLog for VirtioLog {
    fn arm(&mut self) {
        self.pacer.before_fault();
        self.kmsg = sys::Kmsg::open_at_end().ok();
    }
    fn find(&mut self, ep: &Ep, iova: u64, _write: bool) -> Result<String, String> {
        let want = format!("fault from EP {} at {iova:#x}", ep.rid);
        self.kmsg
            .as_mut()
            .and_then(|k| k.wait_for(&want, Duration::from_secs(3)))
            .ok_or(format!("no kernel message with {want:?}"))
    }
}

/// Which translation the VT-d unit's faults must come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Legacy mode: second-stage tables, legacy fault reasons (< 0x30).
    Legacy,
    /// Scalable mode, first-stage tables.
    First,
    /// Scalable mode, second-stage tables.
    Second,
}

/// VT-d faults as Linux's DMAR fault handler logs them.
pub struct VtdLog {
    kmsg: Option<sys::Kmsg>,
    pacer: Pacer,
    stage: Stage,
}

impl VtdLog {
    pub fn new(stage: Stage) -> Self {
        VtdLog {
            kmsg: None,
            pacer: Pacer::new(3),
            stage,
        }
    }
}

/// Scalable-mode fault reasons (VT-d 7.1.3 table 26 ff.) that only a
/// first-stage walk reports, and those only a second-stage walk reports.
const FIRST_STAGE_REASONS: &[u8] = &[0x70, 0x71, 0x72, 0x73, 0x80, 0x81, 0x90];
const SECOND_STAGE_REASONS: &[u8] = &[0x78, 0x79, 0x7a, 0x7b, 0x7c, 0x84];

/// Whether a fault `reason` fits the translation `stage` in use.
fn reason_fits(stage: Stage, reason: u8) -> bool {
    match stage {
        Stage::Legacy => reason < 0x30,
        Stage::First => reason >= 0x30 && !SECOND_STAGE_REASONS.contains(&reason),
        Stage::Second => reason >= 0x30 && !FIRST_STAGE_REASONS.contains(&reason),
    }
}

impl VtdLog {
    /// The fault line for `ep` at `iova` and its reason.
    fn line(&mut self, ep: &Ep, iova: u64) -> Result<(String, Option<u8>), String> {
        // The record holds the page of the address (FI, bits 63:12).
        let page = iova & !0xfff;
        let want = format!("Request device [{}] fault addr {page:#x}", ep.name);
        let line = self
            .kmsg
            .as_mut()
            .and_then(|k| k.wait_for(&want, Duration::from_secs(3)))
            .ok_or(format!("no kernel message with {want:?}"))?;
        // "... [fault reason 0xNN] text"
        let reason = line
            .split_once("fault reason 0x")
            .and_then(|(_, r)| u8::from_str_radix(r.get(..2)?, 16).ok());
        Ok((line, reason))
    }
}

/// Fault reasons about the root, context, PASID-directory or PASID-table
/// entry rather than a page table: legacy 1-3 and 8-0xB (VT-d 7.1.2),
/// scalable 0x30-0x5F (7.1.3).
fn entry_reason(reason: u8) -> bool {
    matches!(reason, 0x1..=0x3 | 0x8..=0xb | 0x30..=0x5f)
}

impl FaultLog for VtdLog {
    fn arm(&mut self) {
        self.pacer.before_fault();
        self.kmsg = sys::Kmsg::open_at_end().ok();
    }
    fn find_blocked(&mut self, ep: &Ep, iova: u64) -> Result<String, String> {
        let (line, reason) = self.line(ep, iova)?;
        if reason.is_some_and(entry_reason) && line.contains("DMA Write") {
            Ok(line)
        } else {
            Err(format!(
                "{line:?}: not a write fault about a cleared context / PASID entry"
            ))
        }
    }
    fn find(&mut self, ep: &Ep, iova: u64, write: bool) -> Result<String, String> {
        let kind = if write { "DMA Write" } else { "DMA Read" };
        let (line, reason) = self.line(ep, iova)?;
        if !line.contains(kind) {
            Err(format!("{line:?} is not a {kind}"))
        } else if !reason.is_some_and(|r| reason_fits(self.stage, r)) {
            Err(format!("{line:?}: reason is not one of {:?}", self.stage))
        } else {
            Ok(line)
        }
    }
}

/// A refusal of `cmd` by `ep`: the status, the fault address, and the
/// IOMMU's report of it.
#[allow(clippy::too_many_arguments)]
pub fn expect_fault<B: crate::Bar>(
    r: &mut Report,
    log: &mut dyn FaultLog,
    name: &str,
    ep: &Ep,
    dev: &Endpoint<B>,
    cmd: &Cmd,
    status: u32,
    iova: u64,
) {
    log.arm();
    let o = dev.run(cmd);
    r.check(
        name,
        o.status == status && o.fault == iova,
        format!("{o:?}, want status {status} at {iova:#x}"),
    );
    let found = log.find(ep, iova, status == ST_WRITE_FAULT);
    r.check(
        &format!("{name}/reported"),
        found.is_ok(),
        found.unwrap_or_else(|e| e),
    );
}

/// Enables memory decoding and bus mastering through VFIO and takes MSI-X
/// vector 0 (routed as `log`'s IOMMU needs).
pub fn enable(
    r: &mut Report,
    log: &mut dyn FaultLog,
    name: &str,
    ep: &Ep,
    d: &vfio::Device,
) -> Option<vfio::EventFd> {
    let cmd = d.config_read16(4).unwrap_or(0);
    let bme = d.config_write16(4, cmd | CMD_MEM_BME);
    let irq = d.msix_vector0();
    let routed = match &irq {
        Ok(_) => log.route_endpoint_msi(ep, d),
        Err(e) => Err(format!("MSI-X vector 0: {e}")),
    };
    r.check(
        name,
        bme.is_ok() && routed.is_ok(),
        format!("command {cmd:#06x}: {bme:?}; MSI-X vector 0: {routed:?}"),
    );
    irq.ok().filter(|_| routed.is_ok())
}

/// Map / DMA / unmap / fault of one endpoint in its own type1 container:
/// buffers at IOVAs above RAM (one read-only), fill and copy with MSI-X
/// completion, then a write to the read-only mapping, DMA after unmap and
/// a read of the unmapped range refused and reported.
pub fn single(r: &mut Report, log: &mut dyn FaultLog, ep: &Ep) {
    let bound = vfio::bind_vfio_pci(&ep.path);
    if !r.check("vfio/bind", bound.is_ok(), format!("{bound:?}")) {
        return;
    }
    let v = match vfio::Vfio::open(&ep.path) {
        Ok(v) => v,
        Err(e) => {
            r.check("vfio/container", false, e.to_string());
            return;
        }
    };
    r.check(
        "vfio/container",
        true,
        format!(
            "group {:?} in a type1v2 container",
            sys::iommu_group(&ep.path)
        ),
    );
    let vfio::Vfio { dev, container } = v;
    let irq = enable(r, log, "vfio/bus-master-msix", ep, &dev);
    let (Some(irq), Ok(mut src), Ok(dst)) =
        (irq, vfio::Buf::new(vfio_len()), vfio::Buf::new(vfio_len()))
    else {
        return;
    };
    let len = vfio_len() as u64;
    let maps = (
        container.map(src.va(), IOVA_SRC, len, false),
        container.map(dst.va(), IOVA_DST, len, true),
    );
    if !r.check(
        "vfio/map",
        maps.0.is_ok() && maps.1.is_ok(),
        format!("src {IOVA_SRC:#x} read-only, dst {IOVA_DST:#x} read-write: {maps:?}"),
    ) {
        return;
    }
    let d = Endpoint {
        bar: dev,
        vector: 0,
    };
    transfers(r, &d, &irq, &mut src, &dst);
    refusals(r, log, ep, &d, &container, &dst);
}

fn transfers(
    r: &mut Report,
    ep: &Endpoint<vfio::Device>,
    irq: &vfio::EventFd,
    src: &mut vfio::Buf,
    dst: &vfio::Buf,
) {
    let p = 0x6b5a_4b3c;
    let o = ep.run(&fill_cmd(IOVA_DST, vfio_len() as u32, p));
    let want: Vec<u8> = (0..vfio_len()).map(|i| pattern_byte(p, i)).collect();
    let got = dst.snapshot();
    r.check(
        "dma/fill-iova",
        o.status == ST_OK && got == want,
        format!(
            "{:#x} bytes at IOVA {IOVA_DST:#x}: {o:?}; {}",
            vfio_len(),
            diff(&got, &want)
        ),
    );
    let n = irq.wait(2000);
    r.check(
        "irq/msix-completion",
        matches!(n, Ok(k) if k >= 1),
        format!("eventfd of vector 0: {n:?}"),
    );
    randomize(src, 0x9e37_79b9_7f4a_7c15);
    let o = ep.run(&copy_cmd(IOVA_SRC + 3, IOVA_DST + 5, vfio_len() as u32 - 8));
    let (s, got) = (src.snapshot(), dst.snapshot());
    let ok = o.status == ST_OK && got[5..vfio_len() - 3] == s[3..vfio_len() - 5];
    r.check(
        "dma/copy-iova",
        ok,
        format!(
            "IOVA {:#x} -> {:#x}: {o:?}; {}",
            IOVA_SRC + 3,
            IOVA_DST + 5,
            diff(&got[5..vfio_len() - 3], &s[3..vfio_len() - 5])
        ),
    );
    let n = irq.wait(2000);
    r.check(
        "irq/msix-second",
        matches!(n, Ok(k) if k >= 1),
        format!("{n:?}"),
    );
}

/// Fills `buf` with xorshift bytes from `seed`.
pub fn randomize(buf: &mut vfio::Buf, seed: u64) {
    let mut x = seed;
    for i in 0..buf.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.set(i, x as u8);
    }
}

fn refusals(
    r: &mut Report,
    log: &mut dyn FaultLog,
    ep: &Ep,
    d: &Endpoint<vfio::Device>,
    container: &vfio::Container,
    dst: &vfio::Buf,
) {
    // virtio 1.3 5.13.6.5: a MAP without VIRTIO_IOMMU_MAP_F_WRITE does
    // not let the device write; VT-d: a mapping without write permission
    // (first-stage R/W clear, second-stage W clear).
    let cmd = fill_cmd(IOVA_SRC, 16, 0);
    let name = "dma/write-readonly-refused";
    expect_fault(r, log, name, ep, d, &cmd, ST_WRITE_FAULT, IOVA_SRC);
    let before = dst.snapshot();
    let unmapped = container.unmap(IOVA_DST, vfio_len() as u64);
    r.check(
        "vfio/unmap",
        matches!(unmapped, Ok(n) if n == vfio_len() as u64),
        format!("{unmapped:?}"),
    );
    let at = IOVA_DST + page() as u64;
    let cmd = fill_cmd(at, 64, 0xffff_ffff);
    let name = "dma/after-unmap-refused";
    expect_fault(r, log, name, ep, d, &cmd, ST_WRITE_FAULT, at);
    let untouched = dst.snapshot() == before;
    r.check(
        "dma/after-unmap-untouched",
        untouched,
        "the unmapped buffer kept its bytes",
    );
    let cmd = copy_cmd(IOVA_DST, IOVA_SRC, 4);
    let name = "dma/read-unmapped-refused";
    expect_fault(r, log, name, ep, d, &cmd, ST_READ_FAULT, IOVA_DST);
}

/// Unbind and rebind: the endpoint's container is closed with a mapping
/// still in place (VFIO hands the group back to its default domain: the
/// driver rewrites and invalidates the context / PASID entry, or sends a
/// virtio-iommu ATTACH to the default domain), the endpoint is unbound
/// from vfio-pci, and DMA to the old IOVA by the unbound endpoint (its BAR
/// from sysfs) must not reach memory. Rebound, a new container maps the
/// same IOVA and DMA works again.
pub fn unbind_rebind(r: &mut Report, log: &mut dyn FaultLog, ep: &Ep) {
    let Ok(buf) = vfio::Buf::new(page()) else {
        r.check("rebind/buffer", false, "mmap failed");
        return;
    };
    let first = map_and_fill(&ep.path, &buf, 0x0102_0304);
    if !r.check("rebind/before", first.is_ok(), first.unwrap_or_else(|e| e)) {
        return;
    }
    let unbound = vfio::unbind(&ep.path);
    let driver = vfio::driver(&ep.path);
    r.check(
        "rebind/unbind",
        unbound.is_ok() && driver.is_none(),
        format!("{unbound:?}, driver now {driver:?}"),
    );
    let (bar, cfg) = match (Mmio::map(&ep.path, 0, REGS), sys::Config::open(&ep.path)) {
        (Ok(b), Ok(c)) => (b, c),
        (b, c) => {
            let e = format!("resource0: {:?}, config: {:?}", b.err(), c.err());
            r.check("rebind/unbound-bar", false, e);
            return;
        }
    };
    let command = cfg.read16(4).unwrap_or(0);
    let set = cfg.write16(4, command | CMD_MEM_BME);
    r.check(
        "rebind/unbound-bus-master",
        set.is_ok(),
        format!(
            "command {command:#06x} -> {:#06x}",
            cfg.read16(4).unwrap_or(0)
        ),
    );
    let before = buf.snapshot();
    let d = Endpoint {
        bar,
        vector: u32::MAX,
    };
    let cmd = fill_cmd(IOVA_DST, 64, 0xbad0_bad0);
    let name = "rebind/unbound-dma-refused";
    expect_fault(r, log, name, ep, &d, &cmd, ST_WRITE_FAULT, IOVA_DST);
    r.check(
        "rebind/unbound-untouched",
        buf.snapshot() == before,
        "the buffer once mapped at the IOVA kept its bytes",
    );
    // Back to the command register it had; vfio-pci enables what it
    // needs when it opens the device.
    let _ = cfg.write16(4, command);
    drop(d);
    let bound = vfio::bind_vfio_pci(&ep.path);
    r.check("rebind/bind", bound.is_ok(), format!("{bound:?}"));
    let again = map_and_fill(&ep.path, &buf, 0x0a0b_0c0d);
    r.check("rebind/after", again.is_ok(), again.unwrap_or_else(|e| e));
}

/// A new container for `dev` (bound to vfio-pci): `buf` mapped at
/// IOVA_DST, a FILL of it by the endpoint checked byte for byte. The
/// container is closed on return with the mapping still in place.
fn map_and_fill(dev: &std::path::Path, buf: &vfio::Buf, pattern: u32) -> Result<String, String> {
    let bound = vfio::bind_vfio_pci(dev);
    bound.map_err(|e| format!("bind: {e}"))?;
    let v = vfio::Vfio::open(dev).map_err(|e| format!("container: {e}"))?;
    let cmd = v.dev.config_read16(4).map_err(|e| e.to_string())?;
    v.dev
        .config_write16(4, cmd | CMD_MEM_BME)
        .map_err(|e| e.to_string())?;
    v.map(buf.va(), IOVA_DST, buf.len() as u64, true)
        .map_err(|e| format!("map: {e}"))?;
    let d = Endpoint {
        bar: v.dev,
        vector: u32::MAX,
    };
    let o = d.run(&fill_cmd(IOVA_DST, buf.len() as u32, pattern));
    let want: Vec<u8> = (0..buf.len()).map(|i| pattern_byte(pattern, i)).collect();
    let got = buf.snapshot();
    if o.status == ST_OK && got == want {
        Ok(format!(
            "FILL at IOVA {IOVA_DST:#x} in a new container: {o:?}; {}",
            diff(&got, &want)
        ))
    } else {
        Err(format!("{o:?}; {}", diff(&got, &want)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rid_pci_name_bus_dev_fn() {
        assert_eq!(parse_rid("0000:00:05.0"), Some(0x28));
        assert_eq!(parse_rid("0000:00:06.0"), Some(0x30));
        assert_eq!(parse_rid("0000:01:1f.7"), Some(0x1ff));
        assert_eq!(parse_rid("garbage"), None);
    }

    #[test]
    fn reason_fits_stage_of_translation() {
        assert!(reason_fits(Stage::Legacy, 0x05));
        assert!(!reason_fits(Stage::Legacy, 0x71));
        assert!(reason_fits(Stage::First, 0x71));
        assert!(reason_fits(Stage::First, 0x85));
        assert!(!reason_fits(Stage::First, 0x79));
        assert!(reason_fits(Stage::Second, 0x79));
        assert!(reason_fits(Stage::Second, 0x85));
        assert!(!reason_fits(Stage::Second, 0x71));
        assert!(!reason_fits(Stage::Second, 0x05));
    }

    #[test]
    fn entry_reason_root_context_pasid_not_page_tables() {
        assert!(entry_reason(0x02));
        assert!(entry_reason(0x59));
        assert!(entry_reason(0x41));
        assert!(!entry_reason(0x05));
        assert!(!entry_reason(0x71));
        assert!(!entry_reason(0x85));
    }

    #[test]
    fn pacer_vtd_three_faults_per_window_then_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(3);
        for _ in 0..3 {
            assert_eq!(p.wait_at(t0), Duration::ZERO);
            p.record_at(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        let w = p.wait_at(t1);
        assert_eq!(
            w,
            RATELIMIT_INTERVAL + RATELIMIT_SLACK - Duration::from_secs(1)
        );
        // After the window, a new one starts with this fault.
        let t2 = t1 + w;
        assert_eq!(p.wait_at(t2), Duration::ZERO);
        p.record_at(t2);
        assert_eq!(p.window, Some((t2, 3)));
    }

    #[test]
    fn pacer_virtio_ten_faults_per_window() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1);
        for _ in 0..10 {
            assert_eq!(p.wait_at(t0), Duration::ZERO);
            p.record_at(t0);
        }
        assert!(p.wait_at(t0) > Duration::ZERO);
    }
}
