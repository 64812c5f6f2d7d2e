//! The register file (IHI 0070 chapter 6, "Memory map and registers"),
//! declared as data: every register is one [`RegDesc`] row with its
//! offset, width, reset value, writable mask and the condition under
//! which software writes are ignored ([`Lock`]). [`RegisterFile`] applies
//! those to MMIO accesses; what a write starts (enables, queue
//! processing, the GBPA and GERRORN protocols) is the model's business.
//!
//! The ID registers are computed from the options ([`idr0`] and the
//! functions after it); registers of
//! features the options leave out (the PRI queue without `pri`, the MSI
//! configuration without `msi`) are absent and read as zero.
//!
//! Two 64 KiB pages: page 0 at offset 0 holds every register except the
//! event and PRI queue index registers, which live in page 1 at 0x10000
//! (IHI 0070 6.1, "Memory map").

use nesting_core::bits::Field;
use nesting_core::host::info::idr as idf;

use crate::options::{Smmuv3Config, Smmuv3Granules, StreamTableLevel};

/// Register offsets (IHI 0070 6.1, "Memory map").
pub mod off {
    /// SMMU_IDR0.
    pub const IDR0: u64 = 0x00;
    /// SMMU_IDR1.
    pub const IDR1: u64 = 0x04;
    /// SMMU_IDR2.
    pub const IDR2: u64 = 0x08;
    /// SMMU_IDR3.
    pub const IDR3: u64 = 0x0c;
    /// SMMU_IDR4.
    pub const IDR4: u64 = 0x10;
    /// SMMU_IDR5.
    pub const IDR5: u64 = 0x14;
    /// SMMU_IIDR.
    pub const IIDR: u64 = 0x18;
    /// SMMU_AIDR.
    pub const AIDR: u64 = 0x1c;
    /// SMMU_CR0.
    pub const CR0: u64 = 0x20;
    /// SMMU_CR0ACK.
    pub const CR0ACK: u64 = 0x24;
    /// SMMU_CR1.
    pub const CR1: u64 = 0x28;
    /// SMMU_CR2.
    pub const CR2: u64 = 0x2c;
    /// SMMU_STATUSR.
    pub const STATUSR: u64 = 0x40;
    /// SMMU_GBPA.
    pub const GBPA: u64 = 0x44;
    /// SMMU_AGBPA.
    pub const AGBPA: u64 = 0x48;
    /// SMMU_IRQ_CTRL.
    pub const IRQ_CTRL: u64 = 0x50;
    /// SMMU_IRQ_CTRLACK.
    pub const IRQ_CTRLACK: u64 = 0x54;
    /// SMMU_GERROR.
    pub const GERROR: u64 = 0x60;
    /// SMMU_GERRORN.
    pub const GERRORN: u64 = 0x64;
    /// SMMU_GERROR_IRQ_CFG0.
    pub const GERROR_IRQ_CFG0: u64 = 0x68;
    /// SMMU_GERROR_IRQ_CFG1.
    pub const GERROR_IRQ_CFG1: u64 = 0x70;
    /// SMMU_GERROR_IRQ_CFG2.
    pub const GERROR_IRQ_CFG2: u64 = 0x74;
    /// SMMU_STRTAB_BASE.
    pub const STRTAB_BASE: u64 = 0x80;
    /// SMMU_STRTAB_BASE_CFG.
    pub const STRTAB_BASE_CFG: u64 = 0x88;
    /// SMMU_CMDQ_BASE.
    pub const CMDQ_BASE: u64 = 0x90;
    /// SMMU_CMDQ_PROD.
    pub const CMDQ_PROD: u64 = 0x98;
    /// SMMU_CMDQ_CONS.
    pub const CMDQ_CONS: u64 = 0x9c;
    /// SMMU_EVENTQ_BASE.
    pub const EVTQ_BASE: u64 = 0xa0;
    /// SMMU_EVENTQ_IRQ_CFG0.
    pub const EVTQ_IRQ_CFG0: u64 = 0xb0;
    /// SMMU_EVENTQ_IRQ_CFG1.
    pub const EVTQ_IRQ_CFG1: u64 = 0xb8;
    /// SMMU_EVENTQ_IRQ_CFG2.
    pub const EVTQ_IRQ_CFG2: u64 = 0xbc;
    /// SMMU_PRIQ_BASE.
    pub const PRIQ_BASE: u64 = 0xc0;
    /// SMMU_PRIQ_IRQ_CFG0.
    pub const PRIQ_IRQ_CFG0: u64 = 0xd0;
    /// SMMU_PRIQ_IRQ_CFG1.
    pub const PRIQ_IRQ_CFG1: u64 = 0xd8;
    /// SMMU_PRIQ_IRQ_CFG2.
    pub const PRIQ_IRQ_CFG2: u64 = 0xdc;
    /// Start of register page 1.
    pub const PAGE1: u64 = 0x1_0000;
    /// SMMU_EVENTQ_PROD (page 1).
    pub const EVTQ_PROD: u64 = PAGE1 + 0xa8;
    /// SMMU_EVENTQ_CONS (page 1).
    pub const EVTQ_CONS: u64 = PAGE1 + 0xac;
    /// SMMU_PRIQ_PROD (page 1).
    pub const PRIQ_PROD: u64 = PAGE1 + 0xc8;
    /// SMMU_PRIQ_CONS (page 1).
    pub const PRIQ_CONS: u64 = PAGE1 + 0xcc;
    /// Size of the register space a VMM maps: two 64 KiB pages.
    pub const SIZE: u64 = 2 * PAGE1;
}

nesting_core::bitfield! {
    /// SMMU_IDR0 (IHI 0070 6.3.1), fields from nesting-core's shared
    /// declarations.
    pub struct Idr0(u64);
    /// Stage 2 translation.
    S2P (idf::IDR0_S2P): bool => s2p, with_s2p;
    /// Stage 1 translation.
    S1P (idf::IDR0_S1P): bool => s1p, with_s1p;
    /// Translation table formats.
    TTF (idf::IDR0_TTF): u8 => ttf, with_ttf;
    /// Coherent access to tables and queues.
    COHACC (idf::IDR0_COHACC): bool => cohacc, with_cohacc;
    /// Hardware translation table update.
    HTTU (idf::IDR0_HTTU): u8 => httu, with_httu;
    /// ATS.
    ATS (idf::IDR0_ATS): bool => ats, with_ats;
    /// 16-bit ASIDs.
    ASID16 (idf::IDR0_ASID16): bool => asid16, with_asid16;
    /// MSIs.
    MSI (idf::IDR0_MSI): bool => msi, with_msi;
    /// WFE wake-up events.
    SEV (idf::IDR0_SEV): bool => sev, with_sev;
    /// PRI.
    PRI (idf::IDR0_PRI): bool => pri, with_pri;
    /// 16-bit VMIDs.
    VMID16 (idf::IDR0_VMID16): bool => vmid16, with_vmid16;
    /// Two-level CD tables.
    CD2L (idf::IDR0_CD2L): bool => cd2l, with_cd2l;
    /// Table endianness.
    TTENDIAN (idf::IDR0_TTENDIAN): u8 => ttendian, with_ttendian;
    /// Stall model.
    STALL_MODEL (idf::IDR0_STALL_MODEL): u8 => stall_model, with_stall_model;
    /// Stream table formats.
    ST_LEVEL (idf::IDR0_ST_LEVEL): u8 => st_level, with_st_level;
}

nesting_core::bitfield! {
    /// SMMU_IDR1 (IHI 0070 6.3.2).
    pub struct Idr1(u64);
    /// StreamID bits.
    SIDSIZE (idf::IDR1_SIDSIZE): u8 => sidsize, with_sidsize;
    /// SubstreamID bits.
    SSIDSIZE (idf::IDR1_SSIDSIZE): u8 => ssidsize, with_ssidsize;
    /// log2 of the largest PRI queue.
    PRIQS (idf::IDR1_PRIQS): u8 => priqs, with_priqs;
    /// log2 of the largest event queue.
    EVENTQS (idf::IDR1_EVENTQS): u8 => eventqs, with_eventqs;
    /// log2 of the largest command queue.
    CMDQS (idf::IDR1_CMDQS): u8 => cmdqs, with_cmdqs;
}

nesting_core::bitfield! {
    /// SMMU_IDR3 (IHI 0070 6.3.4).
    pub struct Idr3(u64);
    /// Hierarchical attribute disable.
    HAD (idf::IDR3_HAD): bool => had, with_had;
    /// Range invalidation.
    RIL (idf::IDR3_RIL): bool => ril, with_ril;
    /// Break-before-make behaviour level.
    BBML (idf::IDR3_BBML): u8 => bbml, with_bbml;
}

nesting_core::bitfield! {
    /// SMMU_IDR5 (IHI 0070 6.3.6).
    pub struct Idr5(u64);
    /// Output address size.
    OAS (idf::IDR5_OAS): u8 => oas, with_oas;
    /// 4 KiB granule.
    GRAN4K (idf::IDR5_GRAN4K): bool => gran4k, with_gran4k;
    /// 16 KiB granule.
    GRAN16K (idf::IDR5_GRAN16K): bool => gran16k, with_gran16k;
    /// 64 KiB granule.
    GRAN64K (idf::IDR5_GRAN64K): bool => gran64k, with_gran64k;
    /// Most outstanding stalls.
    STALL_MAX (idf::IDR5_STALL_MAX): u16 => stall_max, with_stall_max;
}

/// Largest queue the model takes, in log2 entries (IDR1.CMDQS, EVENTQS,
/// PRIQS): 2^19 is the architectural maximum, and every queue drain is
/// bounded by it.
pub const MAX_QUEUE_LOG2: u8 = 19;

/// Most stalled transactions outstanding at once (IDR5.STALL_MAX); a
/// fault that would stall beyond it terminates instead, so a guest cannot
/// make the model hold unbounded state.
pub const MAX_STALLS: u16 = 64;

/// IDR0.TTF: AArch64 tables only.
pub const TTF_AARCH64: u8 = 0b10;
/// IDR0.TTENDIAN: little-endian tables only.
pub const TTENDIAN_LE: u8 = 0b10;
/// IDR0.STALL_MODEL: stall and terminate models both supported.
pub const STALL_AND_TERMINATE: u8 = 0b00;

/// SMMU_AIDR: SMMUv3.2 (the revision that added range invalidation).
pub const AIDR: u64 = 0x02;
/// SMMU_IIDR: no implementer code, so no host driver erratum matches.
pub const IIDR: u64 = 0;

/// IDR0 of a configuration (IHI 0070 6.3.1).
pub fn idr0(c: &Smmuv3Config) -> u64 {
    let st_level = match c.stlevel {
        StreamTableLevel::Linear => 0,
        StreamTableLevel::TwoLevel => 1,
    };
    Idr0(0)
        .with_s2p(c.stages.s2())
        .with_s1p(c.stages.s1())
        .with_ttf(TTF_AARCH64)
        // Tables and queues are read through vm-memory, coherently.
        .with_cohacc(true)
        .with_httu(c.httu.idr0())
        .with_ats(c.ats)
        .with_asid16(c.stages.s1())
        .with_msi(c.msi)
        .with_sev(true)
        .with_pri(c.pri)
        .with_vmid16(c.stages.s2())
        .with_cd2l(c.stages.s1())
        .with_ttendian(TTENDIAN_LE)
        .with_stall_model(STALL_AND_TERMINATE)
        .with_st_level(st_level)
        .0
}

/// IDR1 of a configuration (IHI 0070 6.3.2). No preset tables or queues
/// and absolute base addresses, as Linux requires.
pub fn idr1(c: &Smmuv3Config) -> u64 {
    Idr1(0)
        .with_sidsize(c.sidsize)
        .with_ssidsize(c.ssidsize)
        .with_priqs(if c.pri { MAX_QUEUE_LOG2 } else { 0 })
        .with_eventqs(MAX_QUEUE_LOG2)
        .with_cmdqs(MAX_QUEUE_LOG2)
        .0
}

/// IDR3.BBML: level 2. IHI 0070 6.3.4: "BBML is 0b01 or 0b10 in an
/// implementation of SMMUv3.2 or later" (SMMU_AIDR says 3.2). Level 2
/// is what the model does: a change of block size or output address
/// without break-before-make never raises F_TLB_CONFLICT, a lookup
/// returns the old or the new translation until the invalidation.
pub const BBML_LEVEL2: u8 = 0b10;

/// IDR3 of a configuration (IHI 0070 6.3.4).
pub fn idr3(c: &Smmuv3Config) -> u64 {
    Idr3(0)
        .with_had(c.stages.s1())
        .with_ril(c.ril)
        .with_bbml(BBML_LEVEL2)
        .0
}

/// IDR5 of a configuration (IHI 0070 6.3.6).
pub fn idr5(c: &Smmuv3Config) -> u64 {
    let oas = idf::OAS_BITS
        .iter()
        .position(|b| *b == u32::from(c.oas))
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(5);
    Idr5(0)
        .with_oas(oas)
        .with_gran4k(c.gran.contains(Smmuv3Granules::G4K))
        .with_gran16k(c.gran.contains(Smmuv3Granules::G16K))
        .with_gran64k(c.gran.contains(Smmuv3Granules::G64K))
        .with_stall_max(MAX_STALLS)
        .0
}

/// Cr0 fields.
pub mod cr0 {
    nesting_core::bitfield! {
        /// SMMU_CR0 and SMMU_CR0ACK (IHI 0070 SMMU_CR0, SMMU_CR0ACK).
        pub struct Cr0(u64) in mod;
        /// SMMU enable: translation.
        SMMUEN [0]: bool => smmuen, with_smmuen;
        /// PRI queue enable.
        PRIQEN [1]: bool => priqen, with_priqen;
        /// Event queue enable.
        EVTQEN [2]: bool => evtqen, with_evtqen;
        /// Command queue enable.
        CMDQEN [3]: bool => cmdqen, with_cmdqen;
        /// Check ATS translated transactions against STE.EATS.
        ATSCHK [4]: bool => atschk, with_atschk;
    }
}

/// SMMU_CR1 (IHI 0070 SMMU_CR1): table and queue cacheability, 12 bits.
pub const CR1_MASK: u64 = 0xfff;

/// Cr2 fields.
pub mod cr2 {
    nesting_core::bitfield! {
        /// SMMU_CR2 (IHI 0070 SMMU_CR2).
        pub struct Cr2(u64) in mod;
        /// EL2-E2H translation regime (only with IDR0.HYP, which the model
        /// does not report).
        E2H [0]: bool => e2h;
        /// Record C_BAD_STREAMID for invalid StreamIDs.
        RECINVSID [1]: bool => recinvsid, with_recinvsid;
        /// Private TLB maintenance (no broadcast TLBI).
        PTM [2]: bool => ptm, with_ptm;
    }
}

/// Gbpa fields.
pub mod gbpa {
    nesting_core::bitfield! {
        /// SMMU_GBPA (IHI 0070, SMMU_GBPA): global bypass attributes.
        pub struct Gbpa(u64) in mod;
        /// Memory attribute override.
        MEMATTR [3:0]: u8 => memattr;
        /// Memory type override enable.
        MTCFG [4]: bool => mtcfg;
        /// Allocation override.
        ALLOCCFG [11:8]: u8 => alloccfg;
        /// Shareability override.
        SHCFG [13:12]: u8 => shcfg, with_shcfg;
        /// Privilege override.
        PRIVCFG [17:16]: u8 => privcfg;
        /// Instruction/data override.
        INSTCFG [19:18]: u8 => instcfg;
        /// Abort every transaction while SMMUEN is 0.
        ABORT [20]: bool => abort, with_abort;
        /// Update request: software sets it with the new fields, the SMMU
        /// clears it once they apply.
        UPDATE [31]: bool => update, with_update;
    }
}

/// GBPA fields software sets (all but Update).
pub const GBPA_FIELDS: u64 = gbpa::MEMATTR.mask()
    | gbpa::MTCFG.mask()
    | gbpa::ALLOCCFG.mask()
    | gbpa::SHCFG.mask()
    | gbpa::PRIVCFG.mask()
    | gbpa::INSTCFG.mask()
    | gbpa::ABORT.mask();

/// GBPA at reset: bypass, incoming shareability (SHCFG = 0b01).
pub const GBPA_RESET: u64 = 1 << 12;

/// IrqCtrl fields.
pub mod irq_ctrl {
    nesting_core::bitfield! {
        /// SMMU_IRQ_CTRL and SMMU_IRQ_CTRLACK (IHI 0070, SMMU_IRQ_CTRL).
        pub struct IrqCtrl(u64) in mod;
        /// Global error interrupt enable.
        GERROR_IRQEN [0]: bool => gerror_irqen, with_gerror_irqen;
        /// PRI queue interrupt enable.
        PRIQ_IRQEN [1]: bool => priq_irqen, with_priq_irqen;
        /// Event queue interrupt enable.
        EVTQ_IRQEN [2]: bool => evtq_irqen, with_evtq_irqen;
    }
}

/// Gerror fields.
pub mod gerror {
    nesting_core::bitfield! {
        /// SMMU_GERROR and SMMU_GERRORN (IHI 0070, SMMU_GERROR): an error is
        /// active while its GERROR and GERRORN bits differ.
        pub struct Gerror(u64) in mod;
        /// Command queue error (CMDQ_CONS.ERR says which).
        CMDQ_ERR [0]: bool => cmdq_err;
        /// Event queue write aborted.
        EVTQ_ABT_ERR [2]: bool => evtq_abt_err;
        /// PRI queue write aborted.
        PRIQ_ABT_ERR [3]: bool => priq_abt_err;
        /// CMD_SYNC MSI write aborted.
        MSI_CMDQ_ABT_ERR [4]: bool => msi_cmdq_abt_err;
        /// Event queue MSI write aborted.
        MSI_EVTQ_ABT_ERR [5]: bool => msi_evtq_abt_err;
        /// PRI queue MSI write aborted.
        MSI_PRIQ_ABT_ERR [6]: bool => msi_priq_abt_err;
        /// GERROR MSI write aborted.
        MSI_GERROR_ABT_ERR [7]: bool => msi_gerror_abt_err;
        /// Service failure mode.
        SFM_ERR [8]: bool => sfm_err;
    }
}

/// Every GERROR error bit (IHI 0070, SMMU_GERROR; Linux `GERROR_ERR_MASK`).
pub const GERROR_ERRORS: u64 = 0x1fd;

/// IrqCfg0 fields.
pub mod irq_cfg0 {
    nesting_core::bitfield! {
        /// SMMU_*_IRQ_CFG0 (IHI 0070, SMMU_GERROR_IRQ_CFG0): MSI address.
        pub struct IrqCfg0(u64) in mod;
        /// MSI address, bits 51:2.
        ADDR [51:2]: address => addr, with_addr;
    }
}

/// IrqCfg2 fields.
pub mod irq_cfg2 {
    nesting_core::bitfield! {
        /// SMMU_*_IRQ_CFG2 (IHI 0070, SMMU_GERROR_IRQ_CFG2): MSI attributes.
        pub struct IrqCfg2(u64) in mod;
        /// Memory attributes of the MSI write.
        MEMATTR [3:0]: u8 => memattr;
        /// Shareability of the MSI write.
        SH [5:4]: u8 => sh;
    }
}

/// StrtabBase fields.
pub mod strtab_base {
    nesting_core::bitfield! {
        /// SMMU_STRTAB_BASE (IHI 0070, SMMU_STRTAB_BASE).
        pub struct StrtabBase(u64) in mod;
        /// Stream table (or level-1 table) address, bits 51:6.
        ADDR [51:6]: address => addr, with_addr;
        /// Read-allocate hint.
        RA [62]: bool => ra, with_ra;
    }
}

/// StrtabBaseCfg fields.
pub mod strtab_base_cfg {
    nesting_core::bitfield! {
        /// SMMU_STRTAB_BASE_CFG (IHI 0070, SMMU_STRTAB_BASE_CFG).
        pub struct StrtabBaseCfg(u64) in mod;
        /// log2 of the number of StreamIDs the table covers.
        LOG2SIZE [5:0]: u8 => log2size, with_log2size;
        /// StreamID bits a level-2 table resolves (6, 8 or 10).
        SPLIT [10:6]: u8 => split, with_split;
        /// 0 linear, 1 two-level.
        FMT [17:16]: u8 => fmt, with_fmt;
    }
}

/// QueueBase fields.
pub mod queue_base {
    nesting_core::bitfield! {
        /// SMMU_CMDQ_BASE, SMMU_EVENTQ_BASE, SMMU_PRIQ_BASE (IHI 0070,
        /// SMMU_CMDQ_BASE).
        pub struct QueueBase(u64) in mod;
        /// log2 of the number of entries.
        LOG2SIZE [4:0]: u8 => log2size, with_log2size;
        /// Queue address, bits 51:5.
        ADDR [51:5]: address => addr, with_addr;
        /// Read- (command queue) or write-allocate (output queues) hint.
        ALLOC [62]: bool => alloc, with_alloc;
    }
}

/// QueuePtr fields.
pub mod queue_ptr {
    nesting_core::bitfield! {
        /// SMMU_*_PROD and SMMU_*_CONS (IHI 0070 "SMMU circular
        /// queues"): an index below LOG2SIZE bits and the wrap bit above it;
        /// the high bits carry CMDQ_CONS.ERR and the overflow flags.
        pub struct QueuePtr(u64) in mod;
        /// Index and wrap bit together (the architectural maximum: 2^19
        /// entries, wrap at bit 19).
        WRAP_INDEX [19:0]: u32 => wrap_index, with_wrap_index;
        /// CMDQ_CONS.ERR: the error of the command CONS points at.
        ERR [30:24]: u8 => err, with_err;
        /// EVENTQ/PRIQ_PROD.OVFLG and _CONS.OVACKFLG.
        OVF [31]: bool => ovf, with_ovf;
    }
}

pub use nesting_core::regs::{RegWidth, WriteEffect};

/// When software writes to a register are ignored (IHI 0070, the
/// accessibility of each register: writes IGNORED while an enable is set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    /// Always writable (within the writable mask).
    Never,
    /// CR0ACK.SMMUEN is 1 (CR2, STRTAB_BASE, STRTAB_BASE_CFG).
    SmmuEnabled,
    /// SMMUEN or any queue enable is 1 in CR0ACK (CR1).
    AnyEnabled,
    /// CR0ACK.CMDQEN is 1 (CMDQ_BASE, CMDQ_CONS).
    Cmdq,
    /// CR0ACK.EVTQEN is 1 (EVENTQ_BASE, EVENTQ_PROD).
    Evtq,
    /// CR0ACK.PRIQEN is 1 (PRIQ_BASE, PRIQ_PROD).
    Priq,
    /// IRQ_CTRLACK.GERROR_IRQEN is 1 (GERROR_IRQ_CFG0-2).
    GerrorIrq,
    /// IRQ_CTRLACK.EVTQ_IRQEN is 1 (EVENTQ_IRQ_CFG0-2).
    EvtqIrq,
    /// IRQ_CTRLACK.PRIQ_IRQEN is 1 (PRIQ_IRQ_CFG0-2).
    PriqIrq,
}

/// One register, as data, with when its writes are ignored.
pub type RegDesc = nesting_core::regs::RegDesc<Lock>;

use RegWidth::{W32, W64};

const fn ro(name: &'static str, offset: u64, width: RegWidth, reset: u64) -> RegDesc {
    RegDesc::ro(name, offset, width, reset, Lock::Never)
}

const fn rw(
    name: &'static str,
    offset: u64,
    width: RegWidth,
    writable: u64,
    lock: Lock,
) -> RegDesc {
    RegDesc::ro(name, offset, width, 0, lock).rw(writable)
}

/// Index and wrap bits of a PROD/CONS register.
const PTR: u64 = queue_ptr::WRAP_INDEX.mask();
/// PROD/CONS with the overflow flag.
const PTR_OVF: u64 = PTR | queue_ptr::OVF.mask();
/// Writable bits of a queue base register.
const QBASE: u64 = queue_base::LOG2SIZE.mask() | queue_base::ADDR.mask() | queue_base::ALLOC.mask();

/// The full register layout of an SMMU with this configuration.
pub fn layout(c: &Smmuv3Config) -> Vec<RegDesc> {
    let mut cr0 = cr0::SMMUEN.mask() | cr0::EVTQEN.mask() | cr0::CMDQEN.mask();
    let mut irq = irq_ctrl::GERROR_IRQEN.mask() | irq_ctrl::EVTQ_IRQEN.mask();
    if c.pri {
        cr0 |= cr0::PRIQEN.mask();
        irq |= irq_ctrl::PRIQ_IRQEN.mask();
    }
    if c.ats {
        cr0 |= cr0::ATSCHK.mask();
    }
    let mut v = vec![
        ro("SMMU_IDR0", off::IDR0, W32, idr0(c)),
        ro("SMMU_IDR1", off::IDR1, W32, idr1(c)),
        ro("SMMU_IDR2", off::IDR2, W32, 0),
        ro("SMMU_IDR3", off::IDR3, W32, idr3(c)),
        ro("SMMU_IDR4", off::IDR4, W32, 0),
        ro("SMMU_IDR5", off::IDR5, W32, idr5(c)),
        ro("SMMU_IIDR", off::IIDR, W32, IIDR),
        ro("SMMU_AIDR", off::AIDR, W32, AIDR),
        rw("SMMU_CR0", off::CR0, W32, cr0, Lock::Never),
        ro("SMMU_CR0ACK", off::CR0ACK, W32, 0),
        rw("SMMU_CR1", off::CR1, W32, CR1_MASK, Lock::AnyEnabled),
        rw(
            "SMMU_CR2",
            off::CR2,
            W32,
            cr2::RECINVSID.mask() | cr2::PTM.mask(),
            Lock::SmmuEnabled,
        ),
        ro("SMMU_STATUSR", off::STATUSR, W32, 0),
        // Written through the update protocol (the model), not the mask.
        ro("SMMU_GBPA", off::GBPA, W32, GBPA_RESET),
        ro("SMMU_AGBPA", off::AGBPA, W32, 0),
        rw("SMMU_IRQ_CTRL", off::IRQ_CTRL, W32, irq, Lock::Never),
        ro("SMMU_IRQ_CTRLACK", off::IRQ_CTRLACK, W32, 0),
        ro("SMMU_GERROR", off::GERROR, W32, 0),
        rw(
            "SMMU_GERRORN",
            off::GERRORN,
            W32,
            GERROR_ERRORS,
            Lock::Never,
        ),
    ];
    v.extend(table_and_queue_regs());
    if c.msi {
        v.extend(msi_regs(
            "SMMU_GERROR_IRQ_CFG",
            [
                off::GERROR_IRQ_CFG0,
                off::GERROR_IRQ_CFG1,
                off::GERROR_IRQ_CFG2,
            ],
            Lock::GerrorIrq,
        ));
        v.extend(msi_regs(
            "SMMU_EVENTQ_IRQ_CFG",
            [off::EVTQ_IRQ_CFG0, off::EVTQ_IRQ_CFG1, off::EVTQ_IRQ_CFG2],
            Lock::EvtqIrq,
        ));
    }
    if c.pri {
        v.extend([
            rw("SMMU_PRIQ_BASE", off::PRIQ_BASE, W64, QBASE, Lock::Priq),
            rw("SMMU_PRIQ_PROD", off::PRIQ_PROD, W32, PTR_OVF, Lock::Priq),
            rw("SMMU_PRIQ_CONS", off::PRIQ_CONS, W32, PTR_OVF, Lock::Never),
        ]);
        if c.msi {
            v.extend(msi_regs(
                "SMMU_PRIQ_IRQ_CFG",
                [off::PRIQ_IRQ_CFG0, off::PRIQ_IRQ_CFG1, off::PRIQ_IRQ_CFG2],
                Lock::PriqIrq,
            ));
        }
    }
    v
}

/// The stream table, command queue and event queue registers.
fn table_and_queue_regs() -> [RegDesc; 8] {
    [
        rw(
            "SMMU_STRTAB_BASE",
            off::STRTAB_BASE,
            W64,
            strtab_base::ADDR.mask() | strtab_base::RA.mask(),
            Lock::SmmuEnabled,
        ),
        rw(
            "SMMU_STRTAB_BASE_CFG",
            off::STRTAB_BASE_CFG,
            W32,
            strtab_base_cfg::LOG2SIZE.mask()
                | strtab_base_cfg::SPLIT.mask()
                | strtab_base_cfg::FMT.mask(),
            Lock::SmmuEnabled,
        ),
        rw("SMMU_CMDQ_BASE", off::CMDQ_BASE, W64, QBASE, Lock::Cmdq),
        rw("SMMU_CMDQ_PROD", off::CMDQ_PROD, W32, PTR, Lock::Never),
        rw("SMMU_CMDQ_CONS", off::CMDQ_CONS, W32, PTR, Lock::Cmdq),
        rw("SMMU_EVENTQ_BASE", off::EVTQ_BASE, W64, QBASE, Lock::Evtq),
        rw("SMMU_EVENTQ_PROD", off::EVTQ_PROD, W32, PTR_OVF, Lock::Evtq),
        rw(
            "SMMU_EVENTQ_CONS",
            off::EVTQ_CONS,
            W32,
            PTR_OVF,
            Lock::Never,
        ),
    ]
}

/// The three MSI configuration registers of one interrupt (address, data,
/// attributes).
fn msi_regs(name: &'static str, offs: [u64; 3], lock: Lock) -> [RegDesc; 3] {
    let [o0, o1, o2] = offs;
    let attrs = irq_cfg2::MEMATTR.mask() | irq_cfg2::SH.mask();
    // The names carry no index: one row per register is what matters.
    [
        rw(name, o0, W64, irq_cfg0::ADDR.mask(), lock),
        rw(name, o1, W32, 0xffff_ffff, lock),
        rw(name, o2, W32, attrs, lock),
    ]
}

/// The register file of one SMMU: the layout of [`layout`] and its
/// values, with the SMMU's access rules.
#[derive(Clone, Debug)]
pub struct RegisterFile(nesting_core::regs::RegisterFile<Lock>);

impl RegisterFile {
    /// A register file at reset.
    pub fn new(c: &Smmuv3Config) -> Self {
        RegisterFile(nesting_core::regs::RegisterFile::new(layout(c)))
    }

    /// Every register to its reset value.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// The declarations, in layout order.
    pub fn descs(&self) -> &[RegDesc] {
        self.0.descs()
    }

    /// The shared register file underneath (declarations and raw values).
    pub fn file(&self) -> &nesting_core::regs::RegisterFile<Lock> {
        &self.0
    }

    /// Raw value of the register at `offset` (0 if there is none).
    pub fn get(&self, offset: u64) -> u64 {
        self.0.get(offset)
    }

    /// Hardware update of the register at `offset` (ignored if none).
    pub fn set(&mut self, offset: u64, value: u64) {
        self.0.set(offset, value);
    }

    /// Hardware update of one field.
    pub fn set_field(&mut self, offset: u64, f: Field, value: u64) {
        self.0.set_field(offset, f, value);
    }

    /// The register holding `offset` with the access's bit position in
    /// it, for a `size`-byte access: a 32-bit access to a 32-bit register
    /// or either half of a 64-bit one, or a 64-bit access to a 64-bit
    /// register. Anything else has no register (IHI 0070 "Register
    /// access": other access sizes are CONSTRAINED UNPREDICTABLE; this
    /// model makes them RAZ/WI).
    fn locate(&self, offset: u64, size: u64) -> Option<(usize, u32)> {
        let (i, pos) = self.0.locate(offset)?;
        match (self.0.desc(i)?.width, size, pos) {
            (W32, 4, 0) | (W64, 8, 0) | (W64, 4, 0) => Some((i, 0)),
            (W64, 4, 4) => Some((i, 32)),
            _ => None,
        }
    }

    fn locked(&self, lock: Lock) -> bool {
        let ack = self.get(off::CR0ACK);
        let irq = self.get(off::IRQ_CTRLACK);
        match lock {
            Lock::Never => false,
            Lock::SmmuEnabled => cr0::SMMUEN.is_set(ack),
            Lock::AnyEnabled => {
                let any = cr0::SMMUEN.mask()
                    | cr0::CMDQEN.mask()
                    | cr0::EVTQEN.mask()
                    | cr0::PRIQEN.mask();
                ack & any != 0
            }
            Lock::Cmdq => cr0::CMDQEN.is_set(ack),
            Lock::Evtq => cr0::EVTQEN.is_set(ack),
            Lock::Priq => cr0::PRIQEN.is_set(ack),
            Lock::GerrorIrq => irq_ctrl::GERROR_IRQEN.is_set(irq),
            Lock::EvtqIrq => irq_ctrl::EVTQ_IRQEN.is_set(irq),
            Lock::PriqIrq => irq_ctrl::PRIQ_IRQEN.is_set(irq),
        }
    }

    /// A software read of `size` (4 or 8) bytes at `offset`; RAZ where
    /// there is no register for that access.
    pub fn read(&self, offset: u64, size: u64) -> u64 {
        match self.locate(offset, size) {
            Some((i, shift)) => {
                let v = self.0.value(i) >> shift;
                if size == 4 { v & 0xffff_ffff } else { v }
            }
            None => 0,
        }
    }

    /// A software write of `size` (4 or 8) bytes at `offset`, applying
    /// the writable mask unless the register's lock holds. Returns the
    /// effect for the register the access addressed (also when nothing
    /// changed, so the model can act on what was written), or `None`
    /// where there is no register for that access (WI).
    pub fn write(&mut self, offset: u64, size: u64, value: u64) -> Option<WriteEffect> {
        let (i, shift) = self.locate(offset, size)?;
        let lock = self.0.desc(i)?.attr;
        let covered = if size == 8 {
            u64::MAX
        } else {
            0xffff_ffff << shift
        };
        let written = (value << shift) & covered;
        let locked = self.locked(lock);
        self.0.apply(i, covered, written, locked)
    }
}
