//! A driver-side mock (feature `test-utils`): probes and resets the SMMU
//! the way Linux's arm-smmu-v3 driver does
//! (`drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c`:
//! `arm_smmu_device_hw_probe`, `arm_smmu_init_structures`,
//! `arm_smmu_device_reset`), builds stream tables, CD tables and
//! translation tables as it and io-pgtable-arm do, issues commands with a
//! CMD_SYNC (MSIPOLL or SEV polling, as Linux chooses) and consumes the
//! event and PRI queues. For this crate's tests and for other crates'.
//!
//! Everything panics on misuse: it is test code, driven by tests, never
//! by a guest.

use std::collections::BTreeMap;

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use vm_memory::GuestMemory;

use crate::Smmuv3;
use crate::cd::Cd;
use crate::cmdq::{Cmd, Opcode};
use crate::event::EventRecord;
use crate::priq::PriEntry;
use crate::regs::{Idr0, Idr1, Idr5, cr0, gbpa, irq_ctrl, off, queue_ptr};
use crate::strtab::{L1Std, Ste, SteMode};
use crate::walk::{Granule, TableConfig};
use crate::wire::{read_qwords, write_qwords};

/// A bump allocator of zeroed guest memory.
#[derive(Clone, Debug)]
pub struct PageAlloc {
    next: u64,
    end: u64,
}

impl PageAlloc {
    /// Allocates from `[start, start + len)`.
    pub fn new(start: u64, len: u64) -> PageAlloc {
        PageAlloc {
            next: start,
            end: start + len,
        }
    }

    /// `bytes` of zeroed memory aligned to `align` (a power of two).
    pub fn alloc<M: GuestMemory + ?Sized>(&mut self, mem: &M, bytes: u64, align: u64) -> u64 {
        let p = (self.next + align - 1) & !(align - 1);
        assert!(p + bytes <= self.end, "mock pool exhausted");
        self.next = p + bytes;
        mem.write_bytes_at(Gpa(p), &vec![0u8; bytes as usize])
            .expect("pool in guest RAM");
        p
    }

    /// A zeroed 4 KiB page.
    pub fn page<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> u64 {
        self.alloc(mem, 4096, 4096)
    }
}

fn rd<M: GuestMemory + ?Sized>(mem: &M, a: u64) -> u64 {
    mem.read_u64_le(Gpa(a)).expect("table in RAM")
}

fn wr<M: GuestMemory + ?Sized>(mem: &M, a: u64, v: u64) {
    mem.write_u64_le(Gpa(a), v).expect("table in RAM");
}

/// Leaf descriptor bits as io-pgtable-arm sets them (`arm_lpae_prot_to_pte`).
pub mod pte {
    /// Stage 1 and 2: access flag.
    pub const AF: u64 = 1 << 10;
    /// Inner shareable.
    pub const SH_IS: u64 = 3 << 8;
    /// Stage 1: not global.
    pub const NG: u64 = 1 << 11;
    /// Stage 1: AP\[1\], EL0 (unprivileged) access.
    pub const AP_UNPRIV: u64 = 1 << 6;
    /// Stage 1: AP\[2\], read-only.
    pub const AP_RDONLY: u64 = 1 << 7;
    /// Dirty bit modifier.
    pub const DBM: u64 = 1 << 51;
    /// Contiguous hint.
    pub const CONT: u64 = 1 << 52;
    /// Stage 1: privileged execute-never.
    pub const PXN: u64 = 1 << 53;
    /// Stage 1: unprivileged execute-never; stage 2: execute-never.
    pub const XN: u64 = 1 << 54;
    /// Stage 2: S2AP read.
    pub const S2_READ: u64 = 1 << 6;
    /// Stage 2: S2AP write.
    pub const S2_WRITE: u64 = 1 << 7;
    /// Stage 2: MemAttr normal write-back.
    pub const S2_NORMAL: u64 = 0xf << 2;

    /// A stage-1 leaf for `IOMMU_READ`/`IOMMU_WRITE`/`IOMMU_PRIV`: nG,
    /// AF, inner shareable; read-only without write; DBM for writable
    /// leaves with hardware dirty tracking (then also read-only until
    /// written, which is how Linux leaves them clean).
    pub const fn s1(write: bool, privileged: bool, hd: bool) -> u64 {
        let mut v = NG | AF | SH_IS;
        if !write {
            v |= AP_RDONLY;
        } else if hd {
            v |= DBM | AP_RDONLY;
        }
        if !privileged {
            v |= AP_UNPRIV;
        }
        v
    }

    /// A stage-2 leaf: AF, normal memory, S2AP from `read`/`write`.
    pub const fn s2(read: bool, write: bool) -> u64 {
        let mut v = AF | SH_IS | S2_NORMAL;
        if read {
            v |= S2_READ;
        }
        if write {
            v |= S2_WRITE;
        }
        v
    }
}

/// Translation tables built in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct PageTable {
    /// The geometry (the walker's own description of it).
    pub cfg: TableConfig,
    /// Added to every table address written into a descriptor (and to
    /// the root): the IPA of the pool, for stage-1 tables of a nested
    /// stream whose stage 2 maps `pa + ipa_offset` to `pa`.
    pub ipa_offset: u64,
    root_pa: u64,
}

impl PageTable {
    /// Empty stage-1 tables of `granule` for `ia_bits`-bit input.
    pub fn stage1<M: GuestMemory + ?Sized>(
        mem: &M,
        a: &mut PageAlloc,
        granule: Granule,
        ia_bits: u32,
        oa_bits: u32,
    ) -> PageTable {
        let cfg = TableConfig::stage1(granule, 64 - ia_bits, 0, oa_bits).expect("valid T0SZ");
        Self::with_cfg(mem, a, cfg)
    }

    /// Empty stage-2 tables; `sl0` as STE.S2SL0 encodes the start level.
    pub fn stage2<M: GuestMemory + ?Sized>(
        mem: &M,
        a: &mut PageAlloc,
        granule: Granule,
        ia_bits: u32,
        sl0: u8,
        oa_bits: u32,
    ) -> PageTable {
        let cfg =
            TableConfig::stage2(granule, 64 - ia_bits, sl0, 0, oa_bits).expect("valid S2 geometry");
        Self::with_cfg(mem, a, cfg)
    }

    fn with_cfg<M: GuestMemory + ?Sized>(
        mem: &M,
        a: &mut PageAlloc,
        mut cfg: TableConfig,
    ) -> PageTable {
        let bytes = (8u64 << cfg.start_bits()).max(64);
        let align = bytes.max(1 << cfg.granule.shift());
        let root = a.alloc(mem, bytes.max(1 << cfg.granule.shift()), align);
        cfg.ttb = root;
        PageTable {
            cfg,
            ipa_offset: 0,
            root_pa: root,
        }
    }

    /// The same tables with table addresses in IPA space (`pa + offset`).
    /// Only before anything is mapped.
    pub fn with_ipa_offset(mut self, offset: u64) -> PageTable {
        self.ipa_offset = offset;
        self.cfg.ttb = self.root_pa + offset;
        self
    }

    /// The root as software programs it (TTB0 / S2TTB).
    pub fn root(&self) -> u64 {
        self.cfg.ttb
    }

    /// The STE.S2SL0 / starting level encoding of a stage-2 table.
    pub fn sl0(&self) -> u8 {
        match (self.cfg.granule, self.cfg.start_level) {
            (Granule::G4K, 2) | (Granule::G16K | Granule::G64K, 3) => 0,
            (Granule::G4K, 1) | (Granule::G16K | Granule::G64K, 2) => 1,
            _ => 2,
        }
    }

    /// Maps the `1 << level_shift(level)` bytes at `iova` to `oa`, with
    /// leaf attribute bits `attrs` (see [`pte`]); builds missing tables.
    #[allow(clippy::too_many_arguments)]
    pub fn map<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        iova: u64,
        oa: u64,
        level: u32,
        attrs: u64,
    ) {
        let slot = self.slot(mem, a, iova, level);
        let kind = if level == 3 { 0b11 } else { 0b01 };
        wr(mem, slot, oa | attrs | kind);
    }

    /// Writes a raw descriptor in the slot of `iova` at `level`.
    pub fn set_raw<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        iova: u64,
        level: u32,
        d: u64,
    ) {
        let slot = self.slot(mem, a, iova, level);
        wr(mem, slot, d);
    }

    /// The descriptor of `iova` at `level` (0 if its tables are missing).
    pub fn get<M: GuestMemory + ?Sized>(&self, mem: &M, iova: u64, level: u32) -> u64 {
        self.find(mem, iova, level).map_or(0, |slot| rd(mem, slot))
    }

    fn index(&self, iova: u64, level: u32) -> u64 {
        let g = self.cfg.granule;
        let bits = if level == self.cfg.start_level {
            self.cfg.start_bits()
        } else {
            g.stride()
        };
        (iova >> g.level_shift(level)) & ((1u64 << bits) - 1)
    }

    fn find<M: GuestMemory + ?Sized>(&self, mem: &M, iova: u64, level: u32) -> Option<u64> {
        let mut table = self.root_pa;
        for l in self.cfg.start_level..level {
            let d = rd(mem, table + 8 * self.index(iova, l));
            if d & 3 != 3 {
                return None;
            }
            table = (d & 0x0000_ffff_ffff_f000) - self.ipa_offset;
        }
        Some(table + 8 * self.index(iova, level))
    }

    fn slot<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        a: &mut PageAlloc,
        iova: u64,
        level: u32,
    ) -> u64 {
        let page = 1u64 << self.cfg.granule.shift();
        let mut table = self.root_pa;
        for l in self.cfg.start_level..level {
            let at = table + 8 * self.index(iova, l);
            let d = rd(mem, at);
            table = if d & 3 == 3 {
                (d & 0x0000_ffff_ffff_f000 & !(page - 1)) - self.ipa_offset
            } else {
                let t = a.alloc(mem, page, page);
                wr(mem, at, (t + self.ipa_offset) | 0b11);
                t
            };
        }
        table + 8 * self.index(iova, level)
    }
}

/// The STE Linux writes for a CD table (`arm_smmu_make_cdtable_ste`):
/// stage 1, S1DSS = SSID0 with substreams, S1STALLD (stalls supported,
/// not enabled for the master), EATS full when `ats`.
pub fn cdtable_ste(cd_table: u64, cdmax: u8, two_level: bool, ats: bool) -> Ste {
    let fmt = if cdmax > 0 && two_level { 2 } else { 0 };
    Ste::default()
        .with_v(true)
        .with_config(SteMode::S1)
        .with_s1_context_ptr(cd_table)
        .with_s1cdmax(cdmax)
        .with_s1fmt(fmt)
        .with_s1dss(if cdmax > 0 { 2 } else { 0 })
        .with_s1stalld(true)
        .with_eats(u8::from(ats))
}

/// The stage-2 fields Linux writes (`arm_smmu_make_s2_domain_ste`):
/// VMID, VTCR from the table, S2AA64, S2R, S2PTW, S2TTB.
pub fn with_s2(ste: Ste, vmid: u16, t: &PageTable, ps: u8) -> Ste {
    ste.with_s2vmid(vmid)
        .with_s2t0sz(tsz(t))
        .with_s2sl0(t.sl0())
        .with_s2tg(t.cfg.granule.tg0())
        .with_s2ps(ps)
        .with_s2aa64(true)
        .with_s2r(true)
        .with_s2ptw(true)
        .with_s2ttb(t.root())
}

fn tsz(t: &PageTable) -> u8 {
    u8::try_from(64 - t.cfg.ia_bits).expect("TxSZ fits")
}

/// A stage-2-only STE.
pub fn s2_ste(vmid: u16, t: &PageTable, ps: u8) -> Ste {
    with_s2(
        Ste::default().with_v(true).with_config(SteMode::S2),
        vmid,
        t,
        ps,
    )
}

/// The CD Linux writes (`arm_smmu_make_s1_cd`): TTB0 region of `t`, EPD1,
/// AA64, R, A, ASET, the ASID, HA|HD with hardware dirty tracking.
pub fn s1_cd(asid: u16, t: &PageTable, ips: u8, hd: bool) -> Cd {
    Cd::default()
        .with_t0sz(tsz(t))
        .with_tg0(t.cfg.granule.tg0())
        .with_epd1(true)
        .with_v(true)
        .with_ips(ips)
        .with_aa64(true)
        .with_r(true)
        .with_a(true)
        .with_aset(true)
        .with_asid(asid)
        .with_ha(hd)
        .with_hd(hd)
        .with_ttb0(t.root())
}

/// Builds commands.
pub mod cmd {
    use super::*;

    fn op(o: Opcode) -> Cmd {
        Cmd::default().with_op(o)
    }

    /// CMD_CFGI_STE.
    pub fn cfgi_ste(sid: u32) -> [u64; 2] {
        op(Opcode::CfgiSte).with_sid(sid).with_leaf(true).0
    }
    /// CMD_CFGI_ALL as Linux builds it (CFGI_STE_RANGE, Range 31).
    pub fn cfgi_all() -> [u64; 2] {
        op(Opcode::CfgiSteRange).with_range(31).0
    }
    /// CMD_CFGI_CD.
    pub fn cfgi_cd(sid: u32, ssid: u32) -> [u64; 2] {
        op(Opcode::CfgiCd)
            .with_sid(sid)
            .with_ssid(ssid)
            .with_leaf(true)
            .0
    }
    /// CMD_CFGI_CD_ALL.
    pub fn cfgi_cd_all(sid: u32) -> [u64; 2] {
        op(Opcode::CfgiCdAll).with_sid(sid).0
    }
    /// CMD_TLBI_NH_ALL.
    pub fn tlbi_nh_all(vmid: u16) -> [u64; 2] {
        op(Opcode::TlbiNhAll).with_vmid(vmid).0
    }
    /// CMD_TLBI_NH_ASID.
    pub fn tlbi_nh_asid(vmid: u16, asid: u16) -> [u64; 2] {
        op(Opcode::TlbiNhAsid).with_vmid(vmid).with_asid(asid).0
    }
    /// CMD_TLBI_NH_VA for one address (no range).
    pub fn tlbi_nh_va(vmid: u16, asid: u16, va: u64) -> [u64; 2] {
        op(Opcode::TlbiNhVa)
            .with_vmid(vmid)
            .with_asid(asid)
            .with_addr(va)
            .0
    }
    /// CMD_TLBI_NH_VA, range form: `(num + 1) << scale` granules of `tg`.
    pub fn tlbi_nh_va_range(vmid: u16, asid: u16, va: u64, tg: u8, num: u8, scale: u8) -> [u64; 2] {
        Cmd(tlbi_nh_va(vmid, asid, va))
            .with_tg(tg)
            .with_num(num)
            .with_scale(scale)
            .0
    }
    /// CMD_TLBI_NH_VAA.
    pub fn tlbi_nh_vaa(vmid: u16, va: u64) -> [u64; 2] {
        op(Opcode::TlbiNhVaa).with_vmid(vmid).with_addr(va).0
    }
    /// CMD_TLBI_S12_VMALL.
    pub fn tlbi_s12_vmall(vmid: u16) -> [u64; 2] {
        op(Opcode::TlbiS12Vmall).with_vmid(vmid).0
    }
    /// CMD_TLBI_S2_IPA.
    pub fn tlbi_s2_ipa(vmid: u16, ipa: u64) -> [u64; 2] {
        op(Opcode::TlbiS2Ipa).with_vmid(vmid).with_ipa(ipa).0
    }
    /// CMD_TLBI_NSNH_ALL.
    pub fn tlbi_nsnh_all() -> [u64; 2] {
        op(Opcode::TlbiNsnhAll).0
    }
    /// CMD_ATC_INV.
    pub fn atc_inv(sid: u32, ssid: Option<u32>, addr: u64, size: u8) -> [u64; 2] {
        op(Opcode::AtcInv)
            .with_sid(sid)
            .with_ssv(ssid.is_some())
            .with_ssid(ssid.unwrap_or(0))
            .with_addr(addr)
            .with_atc_size(size)
            .0
    }
    /// CMD_PRI_RESP.
    pub fn pri_resp(sid: u32, ssid: Option<u32>, grpid: u16, resp: u8) -> [u64; 2] {
        op(Opcode::PriResp)
            .with_sid(sid)
            .with_ssv(ssid.is_some())
            .with_ssid(ssid.unwrap_or(0))
            .with_prg_index(grpid)
            .with_pri_resp(resp)
            .0
    }
    /// CMD_RESUME (`action`: 0 terminate, 1 retry, 2 abort).
    pub fn resume(sid: u32, stag: u16, action: u8) -> [u64; 2] {
        op(Opcode::Resume)
            .with_sid(sid)
            .with_action_cs(action)
            .with_stag(stag)
            .0
    }
    /// CMD_STALL_TERM.
    pub fn stall_term(sid: u32) -> [u64; 2] {
        op(Opcode::StallTerm).with_sid(sid).0
    }
    /// CMD_SYNC (`cs`: 0 none, 1 IRQ, 2 SEV) with Linux's MSH/MSIATTR.
    pub fn sync(cs: u8, msi_addr: u64, msi_data: u32) -> [u64; 2] {
        op(Opcode::Sync)
            .with_action_cs(cs)
            .with_msh(3)
            .with_msiattr(0xf)
            .with_msidata(msi_data)
            .with_msiaddr(msi_addr)
            .0
    }
}

/// One of the driver's queues.
#[derive(Clone, Copy, Debug)]
pub struct DriverQueue {
    /// Base address.
    pub base: u64,
    /// log2 of the entry count.
    pub log2: u8,
    /// The driver's shadow index (PROD for the command queue, CONS for the
    /// output queues), with wrap bit.
    pub ptr: u32,
}

impl DriverQueue {
    fn new<M: GuestMemory + ?Sized>(
        mem: &M,
        a: &mut PageAlloc,
        log2: u8,
        entry: u64,
    ) -> DriverQueue {
        let bytes = entry << log2;
        DriverQueue {
            base: a.alloc(mem, bytes, bytes.max(32)),
            log2,
            ptr: 0,
        }
    }

    /// The BASE register value (`q_base`: address, allocate hint, size).
    pub fn base_reg(&self) -> u64 {
        self.base | (1 << 62) | u64::from(self.log2)
    }

    fn mask(&self) -> u32 {
        (2 << self.log2) - 1
    }

    fn slot(&self, ptr: u32, entry: u64) -> u64 {
        self.base + u64::from(ptr & ((1 << self.log2) - 1)) * entry
    }
}

/// The stream table as the driver built it.
#[derive(Clone, Debug)]
pub enum DriverStrtab {
    /// Linear: `1 << log2` STEs.
    Linear {
        /// Base.
        base: u64,
        /// log2 of the entry count.
        log2: u8,
    },
    /// Two-level with SPLIT 8: level-2 tables made on demand.
    TwoLevel {
        /// Level-1 table.
        l1: u64,
        /// LOG2SIZE.
        log2: u8,
        /// Level-2 tables by level-1 index.
        l2: BTreeMap<u32, u64>,
    },
}

/// Linux's `STRTAB_SPLIT`.
pub const STRTAB_SPLIT: u8 = 8;

/// Why the probe gave up, with Linux's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// "unknown/unsupported TT endianness!"
    Endianness,
    /// "no translation support!"
    NoTranslation,
    /// "AArch64 table format not supported!"
    NoAarch64,
    /// "embedded implementation not supported"
    Embedded,
    /// "command queue size <= 64 entries not supported"
    SmallCmdq,
    /// A CR0ACK or IRQ_CTRLACK poll, or the GBPA update, never completed.
    Timeout,
}

/// Linux's driver state for one SMMU.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The command queue.
    pub cmdq: DriverQueue,
    /// The event queue.
    pub evtq: DriverQueue,
    /// The PRI queue, with IDR0.PRI.
    pub priq: Option<DriverQueue>,
    /// The stream table.
    pub strtab: DriverStrtab,
    /// CMD_SYNC completion by MSI write into the sync's own slot
    /// (IDR0.MSI on a coherent SMMU), else SEV and CMDQ_CONS polling.
    pub msipoll: bool,
    /// StreamID bits.
    pub sid_bits: u8,
    /// SubstreamID bits.
    pub ssid_bits: u8,
    /// CR0 as last written.
    pub enables: u64,
}

/// Polls a register until `done` (Linux's `readl_relaxed_poll_timeout`;
/// the model answers synchronously, so a few reads suffice).
fn poll(smmu: &Smmuv3, offset: u64, done: impl Fn(u64) -> bool) -> Result<(), ProbeError> {
    (0..4)
        .any(|_| done(smmu.mmio_read(offset, 4)))
        .then_some(())
        .ok_or(ProbeError::Timeout)
}

/// Queue sizes the mock allocates (log2 entries). Linux takes the
/// largest the SMMU offers; tests use small queues (at least the 128
/// entries Linux needs: one 64-command batch plus a CMD_SYNC).
#[derive(Clone, Copy, Debug)]
pub struct QueueSizes {
    /// Command queue.
    pub cmdq: u8,
    /// Event queue.
    pub evtq: u8,
    /// PRI queue.
    pub priq: u8,
}

impl Default for QueueSizes {
    fn default() -> Self {
        QueueSizes {
            cmdq: 8,
            evtq: 7,
            priq: 7,
        }
    }
}

impl Driver {
    /// Probes and resets `smmu` as Linux does, with default queue sizes.
    pub fn probe<M: GuestMemory + ?Sized>(
        smmu: &mut Smmuv3,
        mem: &M,
        a: &mut PageAlloc,
    ) -> Result<Driver, ProbeError> {
        Self::probe_with(smmu, mem, a, QueueSizes::default())
    }

    /// `arm_smmu_device_hw_probe`, `arm_smmu_init_structures` and
    /// `arm_smmu_device_reset`.
    pub fn probe_with<M: GuestMemory + ?Sized>(
        smmu: &mut Smmuv3,
        mem: &M,
        a: &mut PageAlloc,
        sizes: QueueSizes,
    ) -> Result<Driver, ProbeError> {
        let idr0 = Idr0(smmu.mmio_read(off::IDR0, 4));
        if idr0.ttendian() != 0 && idr0.ttendian() != 2 {
            return Err(ProbeError::Endianness);
        }
        if !idr0.s1p() && !idr0.s2p() {
            return Err(ProbeError::NoTranslation);
        }
        if idr0.ttf() & 2 == 0 {
            return Err(ProbeError::NoAarch64);
        }
        let idr1_raw = smmu.mmio_read(off::IDR1, 4);
        if idr1_raw & (7 << 28) != 0 {
            return Err(ProbeError::Embedded);
        }
        let idr1 = Idr1(idr1_raw);
        let cmdq_log2 = sizes.cmdq.min(idr1.cmdqs());
        if cmdq_log2 <= 6 {
            return Err(ProbeError::SmallCmdq);
        }
        let _idr5 = Idr5(smmu.mmio_read(off::IDR5, 4));
        let sid_bits = idr1.sidsize();
        let two_level = idr0.st_level() == 1 && sid_bits > STRTAB_SPLIT;
        let mut d = Driver {
            cmdq: DriverQueue::new(mem, a, cmdq_log2, 16),
            evtq: DriverQueue::new(mem, a, sizes.evtq.min(idr1.eventqs()), 32),
            priq: idr0
                .pri()
                .then(|| DriverQueue::new(mem, a, sizes.priq.min(idr1.priqs()), 16)),
            strtab: Self::init_strtab(mem, a, sid_bits, two_level),
            msipoll: idr0.msi() && idr0.cohacc(),
            sid_bits,
            ssid_bits: idr1.ssidsize(),
            enables: 0,
        };
        d.reset(smmu, mem, idr0)?;
        Ok(d)
    }

    fn init_strtab<M: GuestMemory + ?Sized>(
        mem: &M,
        a: &mut PageAlloc,
        sid_bits: u8,
        two_level: bool,
    ) -> DriverStrtab {
        if two_level {
            // STRTAB_MAX_L1_ENTRIES is 2^17.
            let l1_bits = (sid_bits - STRTAB_SPLIT).min(17);
            let bytes = 8u64 << l1_bits;
            DriverStrtab::TwoLevel {
                l1: a.alloc(mem, bytes, bytes.max(64)),
                log2: l1_bits + STRTAB_SPLIT,
                l2: BTreeMap::new(),
            }
        } else {
            let bytes = 64u64 << sid_bits;
            DriverStrtab::Linear {
                base: a.alloc(mem, bytes, bytes.max(64)),
                log2: sid_bits,
            }
        }
    }

    fn write_reg_sync(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &(impl GuestMemory + ?Sized),
        val: u64,
        reg: u64,
        ack: u64,
    ) -> Result<(), ProbeError> {
        smmu.mmio_write(mem, reg, 4, val);
        poll(smmu, ack, |v| v == val)
    }

    /// `arm_smmu_update_gbpa`: wait for Update clear, write the new fields
    /// with Update, wait for Update clear again.
    pub fn update_gbpa<M: GuestMemory + ?Sized>(
        &self,
        smmu: &mut Smmuv3,
        mem: &M,
        set: u64,
        clr: u64,
    ) -> Result<(), ProbeError> {
        poll(smmu, off::GBPA, |v| !gbpa::UPDATE.is_set(v))?;
        let reg = (smmu.mmio_read(off::GBPA, 4) & !clr) | set;
        smmu.mmio_write(mem, off::GBPA, 4, reg | gbpa::UPDATE.mask());
        poll(smmu, off::GBPA, |v| !gbpa::UPDATE.is_set(v))
    }

    fn reset<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        idr0: Idr0,
    ) -> Result<(), ProbeError> {
        if cr0::SMMUEN.is_set(smmu.mmio_read(off::CR0, 4)) {
            self.update_gbpa(smmu, mem, gbpa::ABORT.mask(), 0)?;
        }
        self.write_reg_sync(smmu, mem, 0, off::CR0, off::CR0ACK)?;
        // CR1: tables and queues inner shareable, write-back.
        smmu.mmio_write(
            mem,
            off::CR1,
            4,
            (3 << 10) | (1 << 8) | (1 << 6) | (3 << 4) | (1 << 2) | 1,
        );
        // CR2: PTM | RECINVSID.
        smmu.mmio_write(mem, off::CR2, 4, 0b110);
        let (base, cfg) = match &self.strtab {
            DriverStrtab::Linear { base, log2 } => (*base, u64::from(*log2)),
            DriverStrtab::TwoLevel { l1, log2, .. } => (
                *l1,
                (1 << 16) | (u64::from(STRTAB_SPLIT) << 6) | u64::from(*log2),
            ),
        };
        smmu.mmio_write(mem, off::STRTAB_BASE, 8, base | (1 << 62));
        smmu.mmio_write(mem, off::STRTAB_BASE_CFG, 4, cfg);
        smmu.mmio_write(mem, off::CMDQ_BASE, 8, self.cmdq.base_reg());
        smmu.mmio_write(mem, off::CMDQ_PROD, 4, 0);
        smmu.mmio_write(mem, off::CMDQ_CONS, 4, 0);
        self.enables = cr0::CMDQEN.mask();
        self.write_reg_sync(smmu, mem, self.enables, off::CR0, off::CR0ACK)?;
        assert!(
            self.issue(smmu, mem, &[cmd::cfgi_all()]),
            "CFGI_ALL completes"
        );
        assert!(
            self.issue(smmu, mem, &[cmd::tlbi_nsnh_all()]),
            "TLBI_NSNH_ALL completes"
        );
        smmu.mmio_write(mem, off::EVTQ_BASE, 8, self.evtq.base_reg());
        smmu.mmio_write(mem, off::EVTQ_PROD, 4, 0);
        smmu.mmio_write(mem, off::EVTQ_CONS, 4, 0);
        self.enables |= cr0::EVTQEN.mask();
        self.write_reg_sync(smmu, mem, self.enables, off::CR0, off::CR0ACK)?;
        if let Some(q) = &self.priq {
            smmu.mmio_write(mem, off::PRIQ_BASE, 8, q.base_reg());
            smmu.mmio_write(mem, off::PRIQ_PROD, 4, 0);
            smmu.mmio_write(mem, off::PRIQ_CONS, 4, 0);
            self.enables |= cr0::PRIQEN.mask();
            self.write_reg_sync(smmu, mem, self.enables, off::CR0, off::CR0ACK)?;
        }
        if idr0.ats() {
            self.enables |= cr0::ATSCHK.mask();
            self.write_reg_sync(smmu, mem, self.enables, off::CR0, off::CR0ACK)?;
        }
        self.setup_irqs(smmu, mem, idr0)?;
        self.enables |= cr0::SMMUEN.mask();
        self.write_reg_sync(smmu, mem, self.enables, off::CR0, off::CR0ACK)
    }

    /// `arm_smmu_setup_irqs`: interrupts off, MSI addresses cleared (the
    /// mock uses wired interrupts), then the enables.
    fn setup_irqs<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        idr0: Idr0,
    ) -> Result<(), ProbeError> {
        self.write_reg_sync(smmu, mem, 0, off::IRQ_CTRL, off::IRQ_CTRLACK)?;
        smmu.mmio_write(mem, off::GERROR_IRQ_CFG0, 8, 0);
        smmu.mmio_write(mem, off::EVTQ_IRQ_CFG0, 8, 0);
        let mut en = irq_ctrl::EVTQ_IRQEN.mask() | irq_ctrl::GERROR_IRQEN.mask();
        if idr0.pri() {
            smmu.mmio_write(mem, off::PRIQ_IRQ_CFG0, 8, 0);
            en |= irq_ctrl::PRIQ_IRQEN.mask();
        }
        self.write_reg_sync(smmu, mem, en, off::IRQ_CTRL, off::IRQ_CTRLACK)
    }

    /// Queues `cmds` and a CMD_SYNC (`arm_smmu_cmdq_issue_cmdlist` with
    /// sync), rings CMDQ_PROD and waits for the sync as Linux does.
    /// Returns whether the sync completed.
    pub fn issue<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        cmds: &[[u64; 2]],
    ) -> bool {
        let sync_at = self.queue_cmds(mem, cmds);
        let slot = self.cmdq.slot(sync_at, 16);
        let sync = if self.msipoll {
            cmd::sync(1, slot, 0)
        } else {
            cmd::sync(2, 0, 0)
        };
        write_qwords(mem, slot, sync).expect("queue in RAM");
        self.cmdq.ptr = (sync_at + 1) & self.cmdq.mask();
        smmu.mmio_write(mem, off::CMDQ_PROD, 4, u64::from(self.cmdq.ptr));
        self.sync_done(smmu, mem, sync_at, slot)
    }

    /// Queues `cmds` and rings CMDQ_PROD, without a CMD_SYNC.
    pub fn issue_no_sync<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        cmds: &[[u64; 2]],
    ) {
        self.cmdq.ptr = self.queue_cmds(mem, cmds);
        smmu.mmio_write(mem, off::CMDQ_PROD, 4, u64::from(self.cmdq.ptr));
    }

    /// Writes `cmds` from the shadow PROD on; returns the next position.
    fn queue_cmds<M: GuestMemory + ?Sized>(&self, mem: &M, cmds: &[[u64; 2]]) -> u32 {
        let mut p = self.cmdq.ptr;
        for c in cmds {
            write_qwords(mem, self.cmdq.slot(p, 16), *c).expect("queue in RAM");
            p = (p + 1) & self.cmdq.mask();
        }
        p
    }

    /// Whether the CMD_SYNC at `at` completed: the MSIPOLL word cleared,
    /// or CMDQ_CONS past it (`arm_smmu_cmdq_poll_until_sync`).
    pub fn sync_done<M: GuestMemory + ?Sized>(
        &self,
        smmu: &Smmuv3,
        mem: &M,
        at: u32,
        slot: u64,
    ) -> bool {
        if self.msipoll {
            return mem.read_u32_le(Gpa(slot)).expect("queue in RAM") == 0;
        }
        let cons = u32::try_from(smmu.mmio_read(off::CMDQ_CONS, 4) & 0xfffff).unwrap_or(0);
        let mask = self.cmdq.mask();
        // Past `at` in queue order, and not beyond the producer.
        let d = |x: u32| x.wrapping_sub(at) & mask;
        d(cons) != 0 && d(cons) <= d(self.cmdq.ptr)
    }

    /// The address of `sid`'s STE, making its level-2 table if needed
    /// (`arm_smmu_init_l2_strtab`: SPAN = SPLIT + 1).
    pub fn ste_addr<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        a: &mut PageAlloc,
        sid: u32,
    ) -> u64 {
        match &mut self.strtab {
            DriverStrtab::Linear { base, .. } => *base + 64 * u64::from(sid),
            DriverStrtab::TwoLevel { l1, l2, .. } => {
                let i = sid >> STRTAB_SPLIT;
                let l1 = *l1;
                let table = *l2.entry(i).or_insert_with(|| {
                    let t = a.alloc(mem, 64 << STRTAB_SPLIT, 4096);
                    let d = L1Std::default().with_span(STRTAB_SPLIT + 1).with_l2ptr(t);
                    wr(mem, l1 + 8 * u64::from(i), d.0);
                    t
                });
                table + 64 * u64::from(sid & ((1 << STRTAB_SPLIT) - 1))
            }
        }
    }

    /// Writes `sid`'s STE and invalidates it (CFGI_STE + CMD_SYNC).
    pub fn install_ste<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        a: &mut PageAlloc,
        sid: u32,
        ste: Ste,
    ) {
        let at = self.ste_addr(mem, a, sid);
        write_qwords(mem, at, ste.0).expect("STE in RAM");
        assert!(self.issue(smmu, mem, &[cmd::cfgi_ste(sid)]));
    }

    /// A CD table for `1 << cdmax` SubstreamIDs as Linux allocates it:
    /// linear up to 1024 CDs (or without CD2L), else two-level with 1024
    /// CDs per leaf. Returns (table address, two-level).
    pub fn cd_table<M: GuestMemory + ?Sized>(
        mem: &M,
        a: &mut PageAlloc,
        cdmax: u8,
        cd2l: bool,
    ) -> (u64, bool) {
        if !cd2l || cdmax <= 10 {
            let bytes = 64u64 << cdmax;
            (a.alloc(mem, bytes, bytes.max(64)), false)
        } else {
            let bytes = 8u64 << (cdmax - 10);
            (a.alloc(mem, bytes, bytes.max(64)), true)
        }
    }

    /// Writes CD `ssid` into a CD table made by [`Driver::cd_table`]
    /// (making its level-2 table if needed), then CFGI_CD + CMD_SYNC.
    #[allow(clippy::too_many_arguments)]
    pub fn install_cd<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        a: &mut PageAlloc,
        table: (u64, bool),
        sid: u32,
        ssid: u32,
        cd: Cd,
    ) {
        let at = if table.1 {
            let l1 = table.0 + 8 * u64::from(ssid >> 10);
            let mut d = rd(mem, l1);
            if d & 1 == 0 {
                d = a.alloc(mem, 64 << 10, 4096) | 1;
                wr(mem, l1, d);
            }
            (d & 0x000f_ffff_ffff_f000) + 64 * u64::from(ssid & 0x3ff)
        } else {
            table.0 + 64 * u64::from(ssid)
        };
        write_qwords(mem, at, cd.0).expect("CD in RAM");
        assert!(self.issue(smmu, mem, &[cmd::cfgi_cd(sid, ssid)]));
    }

    /// The next event record, consumed (`arm_smmu_evtq_thread`: CONS
    /// advanced, OVACKFLG made equal to OVFLG).
    pub fn next_event<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
    ) -> Option<EventRecord> {
        let q = self.evtq;
        let words: [u64; 4] = self.next_entry(smmu, mem, q, 32, off::EVTQ_PROD, off::EVTQ_CONS)?;
        Some(EventRecord(words))
    }

    /// The next PRI queue entry, consumed.
    pub fn next_page_request<M: GuestMemory + ?Sized>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
    ) -> Option<PriEntry> {
        let q = self.priq?;
        let words: [u64; 2] = self.next_entry(smmu, mem, q, 16, off::PRIQ_PROD, off::PRIQ_CONS)?;
        Some(PriEntry(words))
    }

    fn next_entry<M: GuestMemory + ?Sized, const N: usize>(
        &mut self,
        smmu: &mut Smmuv3,
        mem: &M,
        q: DriverQueue,
        entry: u64,
        prod_reg: u64,
        cons_reg: u64,
    ) -> Option<[u64; N]> {
        let prod_raw = smmu.mmio_read(prod_reg, 4);
        let prod = u32::try_from(prod_raw & u64::from(q.mask())).unwrap_or(0);
        let ovf = prod_raw & queue_ptr::OVF.mask();
        if prod == q.ptr {
            // Empty: still acknowledge an overflow.
            smmu.mmio_write(mem, cons_reg, 4, u64::from(q.ptr) | ovf);
            return None;
        }
        let words = read_qwords::<M, N>(mem, q.slot(q.ptr, entry)).expect("queue in RAM");
        let next = (q.ptr + 1) & q.mask();
        smmu.mmio_write(mem, cons_reg, 4, u64::from(next) | ovf);
        if cons_reg == off::EVTQ_CONS {
            self.evtq.ptr = next;
        } else if let Some(p) = &mut self.priq {
            p.ptr = next;
        }
        Some(words)
    }
}
