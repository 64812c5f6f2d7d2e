//! The stream table: level-1 descriptors and stream table entries (IHI
//! 0070 "Stream table lookup"; 5.1, "Level 1 Stream Table
//! Descriptor"; 5.2, "Stream Table Entry"), located and decoded into a
//! checked [`SteConfig`]. Decoding is total: every bit pattern either
//! decodes or is C_BAD_STE.

use nesting_core::bits::FieldValue;
use vm_memory::GuestMemory;

use crate::caps::Caps;
use crate::regs::strtab_base::StrtabBase;
use crate::regs::strtab_base_cfg::StrtabBaseCfg;
use crate::walk::{Granule, TableConfig};
use crate::wire::{Qwords, read_qwords};

/// Bytes per stream table entry.
pub const STE_SIZE: u64 = 64;
/// Bytes per level-1 stream table descriptor.
pub const L1STD_SIZE: u64 = 8;

const _: () = assert!(size_of::<Qwords<8>>() == STE_SIZE as usize);
const _: () = assert!(size_of::<Qwords<1>>() == L1STD_SIZE as usize);

/// STE.Config (IHI 0070 5.2): what the stream does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteMode {
    /// 0b0xx: abort every transaction, record nothing.
    Abort,
    /// 0b100: bypass both stages.
    Bypass,
    /// 0b101: stage 1 translates, stage 2 bypassed.
    S1,
    /// 0b110: stage 1 bypassed, stage 2 translates.
    S2,
    /// 0b111: both stages (nested).
    Nested,
}

impl FieldValue for SteMode {
    const BITS: u32 = 3;
    fn from_raw(raw: u64) -> Self {
        match raw {
            4 => SteMode::Bypass,
            5 => SteMode::S1,
            6 => SteMode::S2,
            7 => SteMode::Nested,
            _ => SteMode::Abort,
        }
    }
    fn into_raw(self) -> u64 {
        match self {
            SteMode::Abort => 0,
            SteMode::Bypass => 4,
            SteMode::S1 => 5,
            SteMode::S2 => 6,
            SteMode::Nested => 7,
        }
    }
}

nesting_core::bitfield! {
    /// A stream table entry (IHI 0070 5.2), bits numbered across its
    /// eight 64-bit words.
    pub struct Ste([u64; 8]);
    /// Valid.
    V [0]: bool => v, with_v;
    /// Config.
    CONFIG [3:1]: SteMode => config, with_config;
    /// CD table format: 0b00 linear, 0b01 two-level with 4 KiB leaves,
    /// 0b10 two-level with 64 KiB leaves.
    S1FMT [5:4]: u8 => s1fmt, with_s1fmt;
    /// CD table (or level-1 CD table) address, bits 51:6.
    S1CONTEXTPTR [51:6]: address => s1_context_ptr, with_s1_context_ptr;
    /// log2 of the number of CDs.
    S1CDMAX [63:59]: u8 => s1cdmax, with_s1cdmax;
    /// Default substream: 0b00 terminate, 0b01 bypass stage 1, 0b10 CD 0.
    S1DSS [65:64]: u8 => s1dss, with_s1dss;
    /// Stall disable for stage-1 faults.
    S1STALLD [91]: bool => s1stalld, with_s1stalld;
    /// ATS: 0b00 off, 0b01 full, 0b10 split-stage.
    EATS [93:92]: u8 => eats, with_eats;
    /// StreamWorld: 0b00 NS-EL1.
    STRW [95:94]: u8 => strw, with_strw;
    /// Instruction/data override: 0b10 data, 0b11 instruction.
    INSTCFG [115:114]: u8 => instcfg, with_instcfg;
    /// Privilege override: 0b10 unprivileged, 0b11 privileged.
    PRIVCFG [113:112]: u8 => privcfg, with_privcfg;
    /// Stage 2 VMID.
    S2VMID [143:128]: u16 => s2vmid, with_s2vmid;
    /// Stage 2 T0SZ.
    S2T0SZ [165:160]: u8 => s2t0sz, with_s2t0sz;
    /// Stage 2 starting level.
    S2SL0 [167:166]: u8 => s2sl0, with_s2sl0;
    /// Stage 2 granule (TG0 encoding).
    S2TG [175:174]: u8 => s2tg, with_s2tg;
    /// Stage 2 output size.
    S2PS [178:176]: u8 => s2ps, with_s2ps;
    /// Stage 2 tables are AArch64.
    S2AA64 [179]: bool => s2aa64, with_s2aa64;
    /// Stage 2 tables are big-endian.
    S2ENDI [180]: bool => s2endi, with_s2endi;
    /// Stage 2 access flag faults disabled.
    S2AFFD [181]: bool => s2affd, with_s2affd;
    /// Stage-1 table walks to Device memory fault at stage 2.
    S2PTW [182]: bool => s2ptw, with_s2ptw;
    /// Stage 2 hardware dirty state update.
    S2HD [183]: bool => s2hd, with_s2hd;
    /// Stage 2 hardware access flag update.
    S2HA [184]: bool => s2ha, with_s2ha;
    /// Stall stage-2 faults.
    S2S [185]: bool => s2s, with_s2s;
    /// Record stage-2 faults.
    S2R [186]: bool => s2r, with_s2r;
    /// Stage 2 table base, bits 51:4.
    S2TTB [243:196]: address => s2ttb, with_s2ttb;
}

nesting_core::bitfield! {
    /// A level-1 stream table descriptor (IHI 0070 5.1).
    pub struct L1Std(u64);
    /// log2 of the level-2 table's STE count, plus one; 0 invalid.
    SPAN [4:0]: u8 => span, with_span;
    /// Level-2 table address, bits 51:6.
    L2PTR [51:6]: address => l2ptr, with_l2ptr;
}

/// S1DSS values (IHI 0070 5.2 STE.S1DSS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultSubstream {
    /// Transactions without a SubstreamID are terminated (F_STREAM_DISABLED).
    Terminate,
    /// They bypass stage 1.
    Bypass,
    /// They use CD 0; a SubstreamID of 0 is then illegal.
    Ssid0,
}

/// CD table format (IHI 0070 5.2 STE.S1Fmt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdTableFormat {
    /// One table of 2^S1CDMax CDs.
    Linear,
    /// Level-1 descriptors over level-2 tables of 2^`split` CDs.
    TwoLevel {
        /// SubstreamID bits a level-2 table resolves (6 or 10).
        split: u32,
    },
}

/// The stage-1 part of a stream table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S1Ste {
    /// CD table (or level-1 CD table) address; an IPA when nested.
    pub cd_table: u64,
    /// Table format.
    pub fmt: CdTableFormat,
    /// log2 of the number of CDs (0: one CD, no SubstreamIDs).
    pub cdmax: u8,
    /// What transactions without a SubstreamID do.
    pub dss: DefaultSubstream,
    /// Stage-1 stalls disabled.
    pub stalld: bool,
}

/// The stage-2 part of a stream table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Ste {
    /// The table.
    pub table: TableConfig,
    /// VMID.
    pub vmid: u16,
    /// Record stage-2 faults.
    pub record: bool,
    /// Stall on stage-2 faults.
    pub stall: bool,
}

/// ATS setting (IHI 0070 5.2 STE.EATS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eats {
    /// ATS translation requests are refused (F_BAD_ATS_TREQ).
    Off,
    /// Full ATS: responses carry physical addresses.
    Full,
    /// Split-stage ATS: responses carry IPAs; translated transactions go
    /// through stage 2.
    Split,
}

/// A checked stream table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteConfig {
    /// What the stream does.
    pub mode: SteMode,
    /// Stage 1, when translated.
    pub s1: Option<S1Ste>,
    /// Stage 2, when translated.
    pub s2: Option<S2Ste>,
    /// VMID tagging the stream's TLB entries (S2VMID with stage 2
    /// implemented, else 0).
    pub vmid: u16,
    /// ATS.
    pub eats: Eats,
    /// STE.INSTCFG override.
    pub instcfg: u8,
    /// STE.PRIVCFG override.
    pub privcfg: u8,
}

/// Where a StreamID's entry is, or why it has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteLookup {
    /// The entry's address.
    At(u64),
    /// C_BAD_STREAMID: beyond the table or under an invalid level-1
    /// descriptor.
    BadStreamId,
    /// F_STE_FETCH: a level-1 descriptor read missed guest memory.
    FetchFault {
        /// Its address.
        addr: u64,
    },
}

/// The stream table as STRTAB_BASE and STRTAB_BASE_CFG describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTable {
    /// Table (or level-1 table) address.
    pub base: u64,
    /// StreamID bits covered (LOG2SIZE, capped at SIDSIZE).
    pub log2size: u32,
    /// `Some(split)` for a two-level table.
    pub split: Option<u32>,
}

impl StreamTable {
    /// From the registers. IHI 0070 (SMMU_STRTAB_BASE_CFG): LOG2SIZE above
    /// SIDSIZE behaves as SIDSIZE; a reserved FMT, or two-level without
    /// IDR0.ST_LEVEL, is taken as linear, and a reserved SPLIT as 8 (both
    /// CONSTRAINED UNPREDICTABLE choices the spec allows).
    pub fn from_regs(base: u64, cfg: u64, caps: &Caps) -> StreamTable {
        let c = StrtabBaseCfg(cfg);
        let log2size = u32::from(c.log2size().min(caps.sidsize));
        let split = (c.fmt() == 1 && caps.st2l).then(|| match c.split() {
            6 => 6,
            10 => 10,
            _ => 8,
        });
        StreamTable {
            base: StrtabBase(base).addr(),
            log2size,
            split,
        }
    }

    /// Locates `sid`'s entry (IHI 0070 "Stream table lookup").
    pub fn locate<M: GuestMemory + ?Sized>(&self, mem: &M, sid: u32) -> SteLookup {
        if u64::from(sid) >> self.log2size != 0 {
            return SteLookup::BadStreamId;
        }
        let Some(split) = self.split else {
            return SteLookup::At(self.base + STE_SIZE * u64::from(sid));
        };
        let l1 = self.base + L1STD_SIZE * u64::from(sid >> split);
        let Ok([raw]) = read_qwords::<M, 1>(mem, l1) else {
            return SteLookup::FetchFault { addr: l1 };
        };
        let d = L1Std(raw);
        // IHI 0070 5.1 L1STD.Span: 0 is invalid; values above SPLIT + 1
        // are reserved and treated as invalid. A level-2 table holds
        // 2^(Span - 1) entries; StreamIDs beyond it are C_BAD_STREAMID.
        let span = u32::from(d.span());
        if span == 0 || span > split + 1 {
            return SteLookup::BadStreamId;
        }
        let index = sid & ((1 << split) - 1);
        if index >> (span - 1) != 0 {
            return SteLookup::BadStreamId;
        }
        SteLookup::At(d.l2ptr() + STE_SIZE * u64::from(index))
    }
}

/// Why an STE is C_BAD_STE, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadSte {
    /// V = 0.
    Invalid,
    /// A stage the SMMU does not implement.
    StageNotImplemented,
    /// S1Fmt reserved or two-level without IDR0.CD2L.
    S1Fmt,
    /// S1CDMax beyond IDR1.SSIDSIZE.
    S1CdMax,
    /// S1DSS reserved.
    S1Dss,
    /// STRW names an EL2 regime without IDR0.HYP.
    Strw,
    /// S2AA64 = 0 (AArch32 tables; IDR0.TTF is AArch64 only).
    S2Aa64,
    /// S2ENDI = 1 (IDR0.TTENDIAN is little-endian only).
    S2Endi,
    /// S2TG reserved or not implemented.
    S2Granule,
    /// S2T0SZ out of range or inconsistent with S2SL0.
    S2Geometry,
    /// S2TTB beyond the effective S2PS.
    S2Ttb,
    /// EATS reserved, or split-stage without both stages.
    Eats,
}

impl Ste {
    /// Decodes and checks the entry (IHI 0070 5.2, every "ILLEGAL" of the
    /// fields the configuration makes meaningful, in field order).
    pub fn decode(&self, caps: &Caps) -> Result<SteConfig, BadSte> {
        // 5.2 STE.V: an STE with V = 0 is invalid (C_BAD_STE).
        if !self.v() {
            return Err(BadSte::Invalid);
        }
        let mode = self.config();
        let (s1_on, s2_on) = match mode {
            SteMode::S1 => (true, false),
            SteMode::S2 => (false, true),
            SteMode::Nested => (true, true),
            SteMode::Abort | SteMode::Bypass => (false, false),
        };
        // 5.2 STE.Config: enabling a stage the SMMU does not implement
        // (SMMU_IDR0.S1P or S2P = 0) is ILLEGAL.
        if (s1_on && !caps.s1p) || (s2_on && !caps.s2p) {
            return Err(BadSte::StageNotImplemented);
        }
        let s1 = if s1_on {
            Some(self.decode_s1(caps)?)
        } else {
            None
        };
        let s2 = if s2_on {
            Some(self.decode_s2(caps)?)
        } else {
            None
        };
        let eats = self.decode_eats(caps, mode)?;
        Ok(SteConfig {
            mode,
            s1,
            s2,
            vmid: if caps.s2p { self.s2vmid() } else { 0 },
            eats,
            instcfg: self.instcfg(),
            privcfg: self.privcfg(),
        })
    }

    fn decode_s1(&self, caps: &Caps) -> Result<S1Ste, BadSte> {
        let cdmax = self.s1cdmax();
        // 5.2 STE.S1CDMax: a value greater than SMMU_IDR1.SSIDSIZE is
        // ILLEGAL.
        if cdmax > caps.ssidsize {
            return Err(BadSte::S1CdMax);
        }
        // 5.2 STE.S1Fmt (meaningful with S1CDMax != 0): 0b11 is reserved;
        // two-level formats need SMMU_IDR0.CD2L (set with stage 1 here).
        let fmt = match (cdmax, self.s1fmt()) {
            (0, _) | (_, 0) => CdTableFormat::Linear,
            (_, 1) => CdTableFormat::TwoLevel { split: 6 },
            (_, 2) => CdTableFormat::TwoLevel { split: 10 },
            _ => return Err(BadSte::S1Fmt),
        };
        // 5.2 STE.S1DSS (meaningful with S1CDMax != 0): 0b11 is reserved.
        let dss = match self.s1dss() {
            0 => DefaultSubstream::Terminate,
            1 => DefaultSubstream::Bypass,
            2 => DefaultSubstream::Ssid0,
            _ if cdmax == 0 => DefaultSubstream::Terminate,
            _ => return Err(BadSte::S1Dss),
        };
        // 5.2 STE.STRW: EL2 and EL2-E2H need SMMU_IDR0.HYP (not
        // implemented); 0b01 is reserved.
        if self.strw() != 0 {
            return Err(BadSte::Strw);
        }
        Ok(S1Ste {
            cd_table: self.s1_context_ptr(),
            fmt,
            cdmax,
            dss,
            stalld: self.s1stalld(),
        })
    }

    fn decode_s2(&self, caps: &Caps) -> Result<S2Ste, BadSte> {
        // 5.2 STE.S2AA64: AArch32 tables need SMMU_IDR0.TTF bit 0.
        if !self.s2aa64() {
            return Err(BadSte::S2Aa64);
        }
        // 5.2 STE.S2ENDI: big-endian tables need SMMU_IDR0.TTENDIAN to
        // allow them.
        if self.s2endi() {
            return Err(BadSte::S2Endi);
        }
        // 5.2 STE.S2TG: a reserved or unimplemented granule is ILLEGAL.
        let granule = Granule::from_tg0(self.s2tg())
            .filter(|g| caps.has_granule(*g))
            .ok_or(BadSte::S2Granule)?;
        let oa_bits = caps.effective_ps(self.s2ps(), granule);
        // 5.2 STE.S2TTB: "it is ILLEGAL for the address in this field to
        // be outside the range described by the effective STE.S2PS value"
        // (and outside 48 bits with a granule below 64 KiB, which the
        // effective size already caps); 3.4.3 likewise.
        if self.s2ttb() >> oa_bits != 0 {
            return Err(BadSte::S2Ttb);
        }
        let t0sz = u32::from(self.s2t0sz());
        let mut table = TableConfig::stage2(granule, t0sz, self.s2sl0(), self.s2ttb(), oa_bits)
            .ok_or(BadSte::S2Geometry)?;
        // "Address sizes": the IPA size may not exceed what the SMMU
        // outputs.
        if table.ia_bits > caps.max_oa_bits(granule) {
            return Err(BadSte::S2Geometry);
        }
        // 5.2 STE.S2HA/S2HD: IGNORED unless SMMU_IDR0.HTTU allows them;
        // dirty state needs the access flag update too.
        table.ha = self.s2ha() && caps.hw_access();
        table.hd = table.ha && self.s2hd() && caps.hw_dirty();
        table.affd = self.s2affd();
        table.ptw = self.s2ptw();
        table.lpa = caps.max_oa_bits(granule) >= 52;
        Ok(S2Ste {
            table,
            vmid: self.s2vmid(),
            record: self.s2r(),
            stall: self.s2s(),
        })
    }

    fn decode_eats(&self, caps: &Caps, mode: SteMode) -> Result<Eats, BadSte> {
        // 5.2 STE.EATS: IGNORED without SMMU_IDR0.ATS; 0b11 is reserved,
        // and split-stage ATS (0b10) needs both stages enabled.
        if !caps.ats {
            return Ok(Eats::Off);
        }
        match (self.eats(), mode) {
            (0, _) => Ok(Eats::Off),
            (1, _) => Ok(Eats::Full),
            (2, SteMode::Nested) => Ok(Eats::Split),
            _ => Err(BadSte::Eats),
        }
    }
}
