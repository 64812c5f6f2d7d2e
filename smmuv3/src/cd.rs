//! Context descriptors and CD tables (IHI 0070 "StreamIDs to
//! Context Descriptors"; 5.3, "Level 1 Context Descriptor"; 5.4,
//! "Context Descriptor"), decoded into a checked [`CdConfig`], and the
//! stage-1 region an input address selects (TTB0 or TTB1).

use nesting_core::types::Access;

use crate::caps::Caps;
use crate::strtab::{CdTableFormat, S1Ste};
use crate::walk::{Granule, TableConfig};
use crate::wire::Qwords;

/// Bytes per context descriptor.
pub const CD_SIZE: u64 = 64;
/// Bytes per level-1 CD table descriptor.
pub const L1CD_SIZE: u64 = 8;

const _: () = assert!(size_of::<Qwords<8>>() == CD_SIZE as usize);

nesting_core::bitfield! {
    /// A context descriptor (IHI 0070 5.4), bits numbered across its
    /// eight 64-bit words.
    pub struct Cd([u64; 8]);
    /// TTB0 region size: 64 - T0SZ input bits.
    T0SZ [5:0]: u8 => t0sz, with_t0sz;
    /// TTB0 granule (TG0 encoding).
    TG0 [7:6]: u8 => tg0, with_tg0;
    /// TTB0 walks disabled: addresses in its region fault.
    EPD0 [14]: bool => epd0, with_epd0;
    /// Big-endian tables.
    ENDI [15]: bool => endi, with_endi;
    /// TTB1 region size.
    T1SZ [21:16]: u8 => t1sz, with_t1sz;
    /// TTB1 granule (TG1 encoding).
    TG1 [23:22]: u8 => tg1, with_tg1;
    /// TTB1 walks disabled.
    EPD1 [30]: bool => epd1, with_epd1;
    /// Valid.
    V [31]: bool => v, with_v;
    /// Intermediate (or physical) output size.
    IPS [34:32]: u8 => ips, with_ips;
    /// Access flag faults disabled.
    AFFD [35]: bool => affd, with_affd;
    /// Writable implies execute-never.
    WXN [36]: bool => wxn, with_wxn;
    /// Top byte ignored, TTB0 region.
    TBI0 [38]: bool => tbi0, with_tbi0;
    /// Top byte ignored, TTB1 region.
    TBI1 [39]: bool => tbi1, with_tbi1;
    /// AArch64 tables.
    AA64 [41]: bool => aa64, with_aa64;
    /// Hardware dirty state update.
    HD [42]: bool => hd, with_hd;
    /// Hardware access flag update.
    HA [43]: bool => ha, with_ha;
    /// Stall faults (stall model).
    S [44]: bool => s, with_s;
    /// Record faults.
    R [45]: bool => r, with_r;
    /// Abort (rather than RAZ/WI) terminated transactions.
    A [46]: bool => a, with_a;
    /// Shared ASID set.
    ASET [47]: bool => aset, with_aset;
    /// ASID.
    ASID [63:48]: u16 => asid, with_asid;
    /// Hierarchical attributes disabled, TTB0 region.
    HAD0 [65]: bool => had0, with_had0;
    /// TTB0, bits 51:4.
    TTB0 [115:68]: address => ttb0, with_ttb0;
    /// Hierarchical attributes disabled, TTB1 region.
    HAD1 [129]: bool => had1, with_had1;
    /// TTB1, bits 51:4.
    TTB1 [179:132]: address => ttb1, with_ttb1;
}

nesting_core::bitfield! {
    /// A level-1 CD table descriptor (IHI 0070 5.3).
    pub struct L1Cd(u64);
    /// Valid.
    V [0]: bool => v, with_v;
    /// Level-2 CD table address, bits 51:12.
    L2PTR [51:12]: address => l2ptr, with_l2ptr;
}

/// Why a CD is C_BAD_CD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadCd {
    /// V = 0.
    Invalid,
    /// AA64 = 0 (IDR0.TTF is AArch64 only).
    Aa64,
    /// ENDI = 1 (little-endian tables only).
    Endi,
    /// A reserved or unimplemented granule in an enabled region.
    Granule,
    /// TxSZ out of range in an enabled region.
    Tsz,
    /// S = 1 while STE.S1STALLD = 1.
    Stall,
    /// TTBx of an enabled region beyond the effective IPS.
    Ttb,
    /// HA or HD set beyond what SMMU_IDR0.HTTU implements.
    Httu,
}

/// One of the two stage-1 regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The table, or `None` if the region's walks are disabled (EPDx).
    pub table: Option<TableConfig>,
    /// Top byte ignored.
    pub tbi: bool,
}

/// A checked context descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdConfig {
    /// ASID tagging the translations.
    pub asid: u16,
    /// TTB0 (low addresses) and TTB1 (high addresses) regions.
    pub regions: [Region; 2],
    /// Record stage-1 faults.
    pub record: bool,
    /// Stall stage-1 faults.
    pub stall: bool,
    /// Abort (true) or RAZ/WI (false) terminated transactions.
    pub abort: bool,
}

impl Cd {
    /// Decodes and checks the descriptor (IHI 0070 5.4, each ILLEGAL
    /// setting of the fields this model makes meaningful, in field
    /// order).
    pub fn decode(&self, caps: &Caps, ste: &S1Ste) -> Result<CdConfig, BadCd> {
        // 5.4 CD.V: a CD with V = 0 is invalid (C_BAD_CD).
        if !self.v() {
            return Err(BadCd::Invalid);
        }
        // 5.4 CD.AA64: AArch32 tables need SMMU_IDR0.TTF bit 0.
        if !self.aa64() {
            return Err(BadCd::Aa64);
        }
        // 5.4 CD.ENDI: big-endian tables need SMMU_IDR0.TTENDIAN to allow
        // them.
        if self.endi() {
            return Err(BadCd::Endi);
        }
        // 5.4 CD.HA/HD: "It is ILLEGAL to set HA if SMMU_IDR0.HTTU ==
        // 0b00. It is ILLEGAL to set HD if SMMU_IDR0.HTTU == 0b00 or 0b01."
        if (self.ha() && !caps.hw_access()) || (self.hd() && !caps.hw_dirty()) {
            return Err(BadCd::Httu);
        }
        let r0 = self.region(caps, 0)?;
        let r1 = self.region(caps, 1)?;
        // 5.4 CD.S: S = 1 is ILLEGAL when STE.S1STALLD = 1.
        if self.s() && ste.stalld {
            return Err(BadCd::Stall);
        }
        Ok(CdConfig {
            asid: self.asid(),
            regions: [r0, r1],
            record: self.r(),
            stall: self.s(),
            abort: self.a(),
        })
    }

    /// Region `i` (0: TTB0, 1: TTB1). 5.4 CD.TGx and CD.TxSZ: in an
    /// enabled region, a reserved or unimplemented granule and a TxSZ
    /// outside 16..=39 (no IDR5.VAX, no IDR3.STT) are ILLEGAL.
    fn region(&self, caps: &Caps, i: usize) -> Result<Region, BadCd> {
        let (epd, tg, tsz, ttb, tbi, had) = if i == 0 {
            let g = Granule::from_tg0(self.tg0());
            let t = (self.t0sz(), self.ttb0(), self.tbi0(), self.had0());
            (self.epd0(), g, t.0, t.1, t.2, t.3)
        } else {
            let g = Granule::from_tg1(self.tg1());
            let t = (self.t1sz(), self.ttb1(), self.tbi1(), self.had1());
            (self.epd1(), g, t.0, t.1, t.2, t.3)
        };
        if epd {
            return Ok(Region { table: None, tbi });
        }
        let granule = tg.filter(|g| caps.has_granule(*g)).ok_or(BadCd::Granule)?;
        let oa = caps.effective_ps(self.ips(), granule);
        let mut t = TableConfig::stage1(granule, u32::from(tsz), ttb, oa).ok_or(BadCd::Tsz)?;
        // 5.4 CD.TTB0/TTB1: "it is ILLEGAL for the address in this field
        // to be outside the range described by the CD's effective IPS
        // value" (or outside 48 bits with a granule below 64 KiB, which
        // the effective size already caps); 3.4.3 likewise. Not an
        // Address Size fault: the CD itself is bad.
        if ttb >> oa != 0 {
            return Err(BadCd::Ttb);
        }
        // 5.4 CD.HA/HD (legal here, see `decode`): {HD, HA} = 0b10 is
        // reserved and behaves as both clear.
        t.ha = self.ha() && caps.hw_access();
        t.hd = t.ha && self.hd() && caps.hw_dirty();
        t.affd = self.affd();
        t.wxn = self.wxn();
        t.had = had;
        t.lpa = caps.max_oa_bits(granule) >= 52;
        Ok(Region {
            table: Some(t),
            tbi,
        })
    }
}

/// Which region a stage-1 input address selects, and the address the
/// walk uses (Arm ARM "VA range": bit 55 selects TTB1; the bits
/// above the region's size, except a top byte it ignores, must all equal
/// bit 55, else Translation fault).
pub fn select_region(cd: &CdConfig, va: u64) -> Option<TableConfig> {
    let high = (va >> 55) & 1 == 1;
    let region = cd.regions[usize::from(high)];
    let table = region.table?;
    let top = if region.tbi { 55 } else { 63 };
    let check_bits = top + 1 - table.ia_bits;
    let upper = (va >> table.ia_bits) & ((1u64 << check_bits) - 1);
    let want = if high { (1u64 << check_bits) - 1 } else { 0 };
    (upper == want).then_some(table)
}

/// Where CD `index` of a stream lies, or why it cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CdStep {
    /// Read the level-1 descriptor at this (table) address first.
    Level1 {
        /// Address of the level-1 descriptor.
        at: u64,
        /// Index within the level-2 table.
        index: u64,
    },
    /// The CD is at this address.
    Cd(u64),
}

/// The first step to CD `index` (IHI 0070 "StreamIDs to Context Descriptors").
pub fn cd_step(ste: &S1Ste, index: u32) -> CdStep {
    match ste.fmt {
        CdTableFormat::Linear => CdStep::Cd(ste.cd_table + CD_SIZE * u64::from(index)),
        CdTableFormat::TwoLevel { split } => CdStep::Level1 {
            at: ste.cd_table + L1CD_SIZE * u64::from(index >> split),
            index: u64::from(index & ((1 << split) - 1)),
        },
    }
}

/// The attributes of an incoming transaction after the STE overrides
/// (IHI 0070 5.2 STE.INSTCFG, STE.PRIVCFG): 0b10 forces data or
/// unprivileged, 0b11 instruction or privileged; writes are always data.
pub fn override_attrs(access: Access, instcfg: u8, privcfg: u8) -> Access {
    let mut a = access;
    match privcfg {
        2 => a.remove(Access::PRIV),
        3 => a.insert(Access::PRIV),
        _ => {}
    }
    match instcfg {
        2 => a.remove(Access::EXEC),
        3 if !a.contains(Access::WRITE) => a.insert(Access::EXEC),
        _ => {}
    }
    if a.contains(Access::WRITE) {
        a.remove(Access::EXEC);
    }
    a
}
