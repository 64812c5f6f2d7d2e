//! Our SMMUv3 as Linux's arm-smmu-v3 driver sees it: the device-tree node
//! whose `reg` is BAR0 of the register function (1af4:10f2), the probe,
//! which stage the driver uses, the event queue's MSI, and the events the
//! driver logs for refused DMA (`arm_smmu_dump_event`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys::{self, Config, Mmio, REGS};
use crate::translated::{Ep, FaultLog, Pacer};
use crate::{CMD_MEM_BME, Cmd, Endpoint, OP_TRANSLATE, Report, ST_OK, VENDOR, reg, vfio};

/// The SMMUv3 register function (tests/guest/server/src/smmu_fn.rs).
pub const SMMU_DEVICE: u16 = 0x10f2;
/// Both register pages (IHI 0070: page 1 is 64 KiB above page 0).
const SMMU_REGS: usize = 0x20000;

/// Register offsets (IHI 0070 chapter 6; page-1 registers at 0x10000+).
mod off {
    pub const IDR0: usize = 0x00;
    pub const CR0: usize = 0x20;
    pub const CR0ACK: usize = 0x24;
    pub const GERROR: usize = 0x60;
    pub const GERRORN: usize = 0x64;
    pub const GERROR_IRQ_CFG0: usize = 0x68;
    pub const GERROR_IRQ_CFG1: usize = 0x70;
    pub const STRTAB_BASE_CFG: usize = 0x88;
    pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
    pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
    pub const EVENTQ_PROD: usize = 0x100a8;
    pub const EVENTQ_CONS: usize = 0x100ac;
}

/// SMMU_CR0 / CR0ACK: SMMUEN, EVENTQEN, CMDQEN.
const CR0_SMMUEN_EVTQ_CMDQ: u32 = 0b1101;
/// IDR0.S2P (bit 0), IDR0.S1P (bit 1).
const IDR0_S2P: u32 = 1 << 0;
const IDR0_S1P: u32 = 1 << 1;
/// Linux's `ARM_SMMU_FEAT_TRANS_S1` and `_S2` (arm-smmu-v3.h), in the
/// `features` word its probe logs.
const FEAT_TRANS_S1: u64 = 1 << 9;
const FEAT_TRANS_S2: u64 = 1 << 10;
/// Linux's software MSI window of arm-smmu-v3 (`MSI_IOVA_BASE`, 1 MiB):
/// VFIO maps the MSI doorbell there in every unmanaged domain.
const SW_MSI: std::ops::Range<u64> = 0x0800_0000..0x0810_0000;
/// GICv3 ITS: GITS_TRANSLATER is at offset 0x10040 of the ITS (IHI 0069,
/// "ITS register map": the translation register frame follows the control
/// frame).
const GITS_TRANSLATER: u64 = 0x1_0040;

/// Which translation stage the harness's SMMU implements (the server's
/// `--smmu-option stages=`), which is the stage Linux must use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmmuStage {
    /// Stage 1 only (the model's default): Linux's DMA domains are
    /// stage-1 (CD tables, ASIDs).
    S1,
    /// Stage 2 only (`stages=s2`): Linux's domains are stage-2 (VMIDs).
    S2,
}

fn read64(regs: &Mmio, off: usize) -> u64 {
    u64::from(regs.read(off)) | u64::from(regs.read(off + 4)) << 32
}

/// A big-endian device-tree cell pair as a 64-bit number.
fn cells64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// The first node under `dir` whose name starts with `prefix`.
fn dt_node(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    v.into_iter().next()
}

/// The SMMU's device-tree node, a child of the root whose `compatible`
/// names "arm,smmu-v3" (whatever the node's name; the library's builder
/// calls it `iommu@BASE`): (its path, the base its `reg` names).
fn smmu_node() -> Option<(PathBuf, u64)> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/sys/firmware/devicetree/base")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            std::fs::read(p.join("compatible")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|name| name == b"arm,smmu-v3".as_slice())
            })
        })
        .collect();
    nodes.sort();
    let node = nodes.into_iter().next()?;
    let reg = std::fs::read(node.join("reg")).ok()?;
    Some((node.clone(), cells64(&reg)?))
}

/// GITS_TRANSLATER of the GICv3 ITS, from the device tree.
fn its_doorbell() -> Option<u64> {
    let intc = dt_node(Path::new("/sys/firmware/devicetree/base"), "intc@")?;
    let its = dt_node(&intc, "its@")?;
    let reg = std::fs::read(its.join("reg")).ok()?;
    Some(cells64(&reg)? + GITS_TRANSLATER)
}

/// The platform device of `node` (`/sys/bus/platform/devices/ADDR.smmuv3`).
fn platform_device(node: &Path) -> Option<PathBuf> {
    let name = node.file_name()?.to_string_lossy().into_owned();
    let (kind, addr) = name.split_once('@')?;
    let dev = PathBuf::from(format!("/sys/bus/platform/devices/{addr}.{kind}"));
    dev.exists().then_some(dev)
}

/// The SMMU as the driver set it up, and its event and global-error MSIs
/// routed to the driver; returns its register pages.
pub fn unit(r: &mut Report, stage: SmmuStage) -> Option<Mmio> {
    let Some(func) = sys::find_function(VENDOR, SMMU_DEVICE) else {
        r.check("smmu/function", false, "no SMMUv3 register function");
        return None;
    };
    let bar = sys::bar_address(&func, 0).unwrap_or(0);
    let node = smmu_node();
    let base = node.as_ref().map_or(0, |n| n.1);
    r.check(
        "smmu/node-at-bar",
        base != 0 && base == bar,
        format!("device-tree node {node:?}, BAR0 {bar:#x}"),
    );
    let (node, _) = node?;
    probe(r, &node, &func)?;
    let regs = match Mmio::map(&func, 0, SMMU_REGS) {
        Ok(m) => m,
        Err(e) => {
            r.check("smmu/registers", false, format!("resource0: {e}"));
            return None;
        }
    };
    let ack = regs.read(off::CR0ACK);
    r.check(
        "smmu/enabled",
        ack & CR0_SMMUEN_EVTQ_CMDQ == CR0_SMMUEN_EVTQ_CMDQ && regs.read(off::CR0) == ack,
        format!(
            "CR0ACK {ack:#x} (SMMUEN, EVENTQEN, CMDQEN), CR0 {:#x}",
            regs.read(off::CR0)
        ),
    );
    stage_check(r, &regs, stage);
    let routed = route_msis(&func, &regs);
    r.check(
        "smmu/event-msi-routed",
        routed.is_ok(),
        routed.unwrap_or_else(|e| e),
    );
    Some(regs)
}

/// The driver bound the node: at boot (the BAR decoded by then), or after
/// the harness enabled the function's memory decoding and asked the
/// platform bus to probe the node again (the first probe read all-ones
/// from a BAR that did not decode yet).
fn probe(r: &mut Report, node: &Path, func: &Path) -> Option<()> {
    let Some(dev) = platform_device(node) else {
        r.check(
            "smmu/probe",
            false,
            format!("no platform device for {node:?}"),
        );
        return None;
    };
    let bound = |d: &Path| d.join("driver").exists();
    let how = if bound(&dev) {
        "bound at boot".to_string()
    } else {
        let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
        let again = Config::open(func)
            .and_then(|c| {
                let cmd = c.read16(4)?;
                c.write16(4, cmd | 0x2)
            })
            .and_then(|()| {
                std::fs::write("/sys/bus/platform/drivers_probe", name.unwrap_or_default())
            });
        format!("not bound at boot; memory decoding on and drivers_probe: {again:?}")
    };
    let iommus = sys::iommus();
    let ok = bound(&dev) && iommus.iter().any(|n| n.starts_with("smmu3."));
    r.check("smmu/probe", ok, format!("{}: {how}", dev.display()));
    r.check(
        "iommu/registered",
        ok,
        format!("/sys/class/iommu: {iommus:?}"),
    );
    ok.then_some(())
}

/// The stage the SMMU offers (IDR0.S1P/S2P as read through the BAR) and
/// the one Linux found (the `features` word of its probe message:
/// `arm_smmu_device_hw_probe` sets TRANS_S1 / TRANS_S2 from them, and its
/// domains are stage 1 whenever it has TRANS_S1).
fn stage_check(r: &mut Report, regs: &Mmio, stage: SmmuStage) {
    let idr0 = regs.read(off::IDR0);
    let (s1p, s2p) = (idr0 & IDR0_S1P != 0, idr0 & IDR0_S2P != 0);
    let klog = sys::kernel_log();
    let features = klog.iter().find_map(|l| {
        let (_, rest) = l.split_once("(features 0x")?;
        u64::from_str_radix(rest.get(..8)?, 16).ok()
    });
    let f = features.unwrap_or(0);
    let (t1, t2) = (f & FEAT_TRANS_S1 != 0, f & FEAT_TRANS_S2 != 0);
    let ok = features.is_some()
        && match stage {
            SmmuStage::S1 => s1p && !s2p && t1 && !t2,
            SmmuStage::S2 => s2p && !s1p && t2 && !t1,
        };
    let cfg = regs.read(off::STRTAB_BASE_CFG);
    r.check(
        "smmu/stage",
        ok,
        format!(
            "want {stage:?}: IDR0 {idr0:#x} (S1P {}, S2P {}), Linux features {} \
             (TRANS_S1 {t1}, TRANS_S2 {t2}); STRTAB_BASE_CFG {cfg:#x} ({})",
            u8::from(s1p),
            u8::from(s2p),
            features.map_or("not logged".into(), |f| format!("{f:#x}")),
            if (cfg >> 16) & 3 == 1 {
                "2-level"
            } else {
                "linear"
            },
        ),
    );
}

/// The SMMU raises event-queue and global-error interrupts as MSIs to
/// SMMU_EVENTQ_IRQ_CFG0/1 and SMMU_GERROR_IRQ_CFG0/1, which Linux
/// programmed from the ITS (`msi-parent`). A vfio-user server can only
/// signal its function's MSI-X vectors, so the harness copies each
/// message into the vector the server signals for it (0: event queue,
/// 1: global errors) and enables MSI-X and bus mastering.
fn route_msis(func: &Path, regs: &Mmio) -> Result<String, String> {
    let msgs = [
        (
            read64(regs, off::EVENTQ_IRQ_CFG0),
            regs.read(off::EVENTQ_IRQ_CFG1),
        ),
        (
            read64(regs, off::GERROR_IRQ_CFG0),
            regs.read(off::GERROR_IRQ_CFG1),
        ),
    ];
    if msgs[0].0 == 0 {
        return Err(format!(
            "EVENTQ_IRQ_CFG0 is 0: the driver set up no MSI ({msgs:x?})"
        ));
    }
    let table = Mmio::map(func, 2, REGS).map_err(|e| format!("resource2: {e}"))?;
    for (i, (addr, data)) in msgs.iter().enumerate() {
        // MSI-X table entry (PCI Local Bus 3.0, 6.8.2.6-9): address low,
        // high, data, vector control (bit 0 mask).
        table.write(16 * i, *addr as u32);
        table.write(16 * i + 4, (*addr >> 32) as u32);
        table.write(16 * i + 8, *data);
        table.write(16 * i + 12, 0);
    }
    let cfg = Config::open(func).map_err(|e| format!("config: {e}"))?;
    let set = (|| {
        let cmd = cfg.read16(4)?;
        cfg.write16(4, cmd | CMD_MEM_BME)?;
        let ctrl = cfg.read16(0x42)?;
        cfg.write16(0x42, ctrl | 0x8000)
    })();
    set.map_err(|e| format!("config: {e}"))?;
    Ok(format!(
        "EVENTQ_IRQ_CFG0/1 {:#x}/{:#x} -> MSI-X vector 0, GERROR_IRQ_CFG0/1 {:#x}/{:#x} -> vector 1",
        msgs[0].0, msgs[0].1, msgs[1].0, msgs[1].1
    ))
}

/// At the end of a boot: no global error is active (GERROR == GERRORN,
/// IHI 0070 SMMU_GERROR) and the driver consumed every event it was sent
/// (EVENTQ_CONS == EVENTQ_PROD: its event thread ran for each).
pub fn end_checks(r: &mut Report, regs: &Mmio) {
    let (g, gn) = (regs.read(off::GERROR), regs.read(off::GERRORN));
    r.check(
        "smmu/no-global-errors",
        g == gn,
        format!("GERROR {g:#x}, GERRORN {gn:#x}"),
    );
    let (p, c) = (regs.read(off::EVENTQ_PROD), regs.read(off::EVENTQ_CONS));
    r.check(
        "smmu/events-consumed",
        p & 0x7fff_ffff == c & 0x7fff_ffff,
        format!("EVENTQ_PROD {p:#x}, EVENTQ_CONS {c:#x}"),
    );
}

/// SMMUv3 events as Linux's arm-smmu-v3 driver logs them
/// (`arm_smmu_dump_event`): "event: F_TRANSLATION client: 0000:00:05.0
/// sid: 0x28 ssid: 0x0 iova: 0x40101000 ipa: 0x0", then "unpriv data write
/// s1 ...". Each event also advances SMMU_EVENTQ_PROD, read from the
/// register page before and after the DMA.
pub struct SmmuLog {
    kmsg: Option<sys::Kmsg>,
    pacer: Pacer,
    stage: SmmuStage,
    regs: Mmio,
    prod: u32,
}

impl SmmuLog {
    /// Over the register pages `unit` mapped. The driver's event thread
    /// spends one print budget (printk's 10 per 5 s) per event.
    pub fn new(stage: SmmuStage, regs: Mmio) -> Self {
        SmmuLog {
            kmsg: None,
            pacer: Pacer::new(1),
            stage,
            prod: 0,
            regs,
        }
    }

    /// Events recorded since `arm`.
    fn events(&self) -> u32 {
        let now = self.regs.read(off::EVENTQ_PROD) & 0x7fff_ffff;
        now.wrapping_sub(self.prod & 0x7fff_ffff)
    }
}

impl FaultLog for SmmuLog {
    fn arm(&mut self) {
        self.pacer.before_fault();
        self.kmsg = sys::Kmsg::open_at_end().ok();
        self.prod = self.regs.read(off::EVENTQ_PROD);
    }

    fn find(&mut self, ep: &Ep, iova: u64, write: bool) -> Result<String, String> {
        let n = self.events();
        let want = format!(
            "client: {} sid: {:#x} ssid: 0x0 iova: {iova:#x} ",
            ep.name, ep.rid
        );
        let Some(k) = self.kmsg.as_mut() else {
            return Err("/dev/kmsg did not open".into());
        };
        let line = k.wait_for(&want, Duration::from_secs(3)).ok_or(format!(
            "no kernel message with {want:?} ({n} event(s) recorded)"
        ))?;
        let detail = k.next(Duration::from_secs(1)).unwrap_or_default();
        let rw = if write { " write " } else { " read " };
        let st = match self.stage {
            SmmuStage::S1 => " s1 ",
            SmmuStage::S2 => " s2 ",
        };
        let kind = line.contains("event: F_TRANSLATION") || line.contains("event: F_PERMISSION");
        if n == 1 && kind && detail.contains(rw) && detail.contains(st) {
            Ok(format!("{line} / {detail}"))
        } else {
            Err(format!(
                "{line:?} / {detail:?}: want one translation or permission fault, \
                 {rw:?}, {st:?} ({n} event(s) recorded)"
            ))
        }
    }

    /// Linux's blocking domain is an STE with Config = abort
    /// (`arm_smmu_make_abort_ste`): IHI 0070 STE.Config 0b000 "abort all
    /// incoming transactions", with no event. So the DMA is refused and
    /// SMMU_EVENTQ_PROD does not move; an SMMU still using a cached STE of
    /// the default domain would record a translation fault instead.
    fn find_blocked(&mut self, _ep: &Ep, iova: u64) -> Result<String, String> {
        match self.events() {
            0 => Ok(format!(
                "no event recorded for the write at {iova:#x} (EVENTQ_PROD {:#x})",
                self.prod
            )),
            n => Err(format!("{n} event(s) recorded: not an abort STE")),
        }
    }

    /// QEMU delivers the endpoint's MSI-X message itself, to the address
    /// in its MSI-X table, without translation; behind an SMMU that
    /// address is an IOVA in Linux's software MSI window, where VFIO
    /// mapped the ITS doorbell into the endpoint's domain
    /// (`iommu_dma_prepare_msi`). The endpoint's TRANSLATE command asks
    /// our SMMU where that MSI write goes; it must be GITS_TRANSLATER, and
    /// the harness writes that address into the table entry, so QEMU
    /// delivers what the SMMU would have.
    fn route_endpoint_msi(&mut self, ep: &Ep, dev: &vfio::Device) -> Result<String, String> {
        let table = Mmio::map(&ep.path, 2, REGS).map_err(|e| format!("resource2: {e}"))?;
        let iova = u64::from(table.read(0)) | u64::from(table.read(4)) << 32;
        if !SW_MSI.contains(&iova) {
            return Err(format!(
                "MSI-X entry 0 address {iova:#x} is outside Linux's MSI window {SW_MSI:#x?}"
            ));
        }
        let d = Endpoint {
            bar: dev,
            vector: u32::MAX,
        };
        let o = d.run(&Cmd {
            op: OP_TRANSLATE,
            src: 0,
            dst: iova,
            len: 4,
            pattern: 0,
        });
        let gpa = u64::from(dev.read32(reg::RESULT_LO as u64).unwrap_or(0))
            | u64::from(dev.read32(reg::RESULT_HI as u64).unwrap_or(0)) << 32;
        let doorbell = its_doorbell().unwrap_or(0);
        if o.status != ST_OK || gpa != doorbell {
            return Err(format!(
                "MSI IOVA {iova:#x} translates to {gpa:#x} ({o:?}), want GITS_TRANSLATER {doorbell:#x}"
            ));
        }
        table.write(0, gpa as u32);
        table.write(4, (gpa >> 32) as u32);
        Ok(format!(
            "MSI IOVA {iova:#x} -> {gpa:#x} (GITS_TRANSLATER) through the SMMU; table entry 0 now {gpa:#x}"
        ))
    }
}
