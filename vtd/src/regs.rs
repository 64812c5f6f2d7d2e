//! The register file (VT-d chapter 11, "Register Descriptions"), declared
//! as data: every register is one [`RegDesc`] row with its offset, width,
//! reset value, writable mask and write-1-to-clear mask. [`RegisterFile`]
//! applies those masks to MMIO writes; what a write *starts* (commands,
//! invalidations, queue processing) is the model's business (`lib.rs`).
//!
//! The layout depends on the configuration: CAP.FRO places the fault
//! recording registers, ECAP.IRO the IOTLB registers, CAP.NFR says how many
//! fault records exist, and the page request registers exist only when
//! ECAP.PRS is set.

use crate::options::{VtdAddressWidth, VtdConfig, VtdMode};
use nesting_core::bits::Field;
use nesting_core::host::info::{cap, ecap};

use crate::prq::{PQ_OFFSET, prs};

/// Register offsets of the architected block (VT-d 11.4, register map).
pub mod off {
    /// Version (11.4 VER_REG).
    pub const VER: u64 = 0x00;
    /// Capability (11.4 CAP_REG).
    pub const CAP: u64 = 0x08;
    /// Extended capability (11.4 ECAP_REG).
    pub const ECAP: u64 = 0x10;
    /// Global command (11.4 GCMD_REG).
    pub const GCMD: u64 = 0x18;
    /// Global status (11.4 GSTS_REG).
    pub const GSTS: u64 = 0x1c;
    /// Root table address (11.4 RTADDR_REG).
    pub const RTADDR: u64 = 0x20;
    /// Context command (11.4 CCMD_REG).
    pub const CCMD: u64 = 0x28;
    /// Fault status (11.4 FSTS_REG).
    pub const FSTS: u64 = 0x34;
    /// Fault event control (11.4 FECTL_REG).
    pub const FECTL: u64 = 0x38;
    /// Fault event data (11.4 FEDATA_REG).
    pub const FEDATA: u64 = 0x3c;
    /// Fault event address (11.4 FEADDR_REG).
    pub const FEADDR: u64 = 0x40;
    /// Fault event upper address (11.4 FEUADDR_REG).
    pub const FEUADDR: u64 = 0x44;
    /// Advanced fault log (11.4 AFLOG_REG); the model has no advanced fault
    /// logging (CAP.AFL=0), so it reads as zero.
    pub const AFLOG: u64 = 0x58;
    /// Invalidation queue head (11.4 IQH_REG).
    pub const IQH: u64 = 0x80;
    /// Invalidation queue tail (11.4 IQT_REG).
    pub const IQT: u64 = 0x88;
    /// Invalidation queue address (11.4 IQA_REG).
    pub const IQA: u64 = 0x90;
    /// Invalidation completion status (11.4 ICS_REG).
    pub const ICS: u64 = 0x9c;
    /// Invalidation event control (11.4 IECTL_REG).
    pub const IECTL: u64 = 0xa0;
    /// Invalidation event data (11.4 IEDATA_REG).
    pub const IEDATA: u64 = 0xa4;
    /// Invalidation event address (11.4 IEADDR_REG).
    pub const IEADDR: u64 = 0xa8;
    /// Invalidation event upper address (11.4 IEUADDR_REG).
    pub const IEUADDR: u64 = 0xac;
    /// Invalidation queue error record (11.4.9.9).
    pub const IQER: u64 = 0xb0;
    /// Page request queue head (11.4 PQH_REG).
    pub const PQH: u64 = 0xc0;
    /// Page request queue tail (11.4 PQT_REG).
    pub const PQT: u64 = 0xc8;
    /// Page request queue address (11.4 PQA_REG).
    pub const PQA: u64 = 0xd0;
    /// Page request status (11.4 PRS_REG).
    pub const PRS: u64 = 0xdc;
    /// Page request event control (11.4 PECTL_REG).
    pub const PECTL: u64 = 0xe0;
    /// Page request event data (11.4 PEDATA_REG).
    pub const PEDATA: u64 = 0xe4;
    /// Page request event address (11.4 PEADDR_REG).
    pub const PEADDR: u64 = 0xe8;
    /// Page request event upper address (11.4 PEUADDR_REG).
    pub const PEUADDR: u64 = 0xec;
}

/// GCMD_REG / GSTS_REG bits (11.4 GCMD_REG, 11.4 GSTS_REG). The command and status bit of
/// each function share a position.
pub mod gcmd {
    nesting_core::bitfield! {
        /// A GCMD_REG (or GSTS_REG) value.
        pub struct Gcmd(u64) in mod;
        /// Translation enable (persistent; status TES).
        TE [31]: bool => te, with_te;
        /// Set root table pointer (one-shot; status RTPS).
        SRTP [30]: bool => srtp, with_srtp;
        /// Write buffer flush (one-shot; status WBFS).
        WBF [27]: bool => wbf, with_wbf;
        /// Queued invalidation enable (persistent; status QIES).
        QIE [26]: bool => qie, with_qie;
        /// Compatibility format interrupt (persistent; status CFIS).
        CFI [23]: bool => cfi, with_cfi;
    }
}

/// RTADDR_REG fields (11.4 RTADDR_REG).
pub mod rtaddr {
    nesting_core::bitfield! {
        /// An RTADDR_REG value.
        pub struct Rtaddr(u64) in mod;
        /// Root table address, 4 KiB aligned.
        RTA [63:12]: address => rta, with_rta;
        /// Translation table mode: 00 legacy, 01 scalable, others reserved.
        TTM [11:10]: u8 => ttm, with_ttm;
    }
}

/// CCMD_REG fields (11.4 CCMD_REG).
pub mod ccmd {
    use nesting_core::types::Bdf;

    nesting_core::bitfield! {
        /// A CCMD_REG value.
        pub struct Ccmd(u64) in mod;
        /// Invalidate context-cache (set by software, cleared on completion).
        ICC [63]: bool => icc, with_icc;
        /// Invalidation request granularity.
        CIRG [62:61]: u8 => cirg, with_cirg;
        /// Actual invalidation granularity.
        CAIG [60:59]: u8 => caig, with_caig;
        /// Function mask.
        FM [33:32]: u8 => fm, with_fm;
        /// Source-id of the device (device-selective invalidation).
        SID [31:16]: Bdf => sid, with_sid;
        /// Domain-id.
        DID [15:0]: u16 => did, with_did;
    }
}

/// IOTLB_REG fields (11.4 IOTLB_REG), at ECAP.IRO + 8.
pub mod iotlb_reg {
    nesting_core::bitfield! {
        /// An IOTLB_REG value.
        pub struct IotlbReg(u64) in mod;
        /// Invalidate IOTLB (set by software, cleared on completion).
        IVT [63]: bool => ivt, with_ivt;
        /// Invalidation request granularity.
        IIRG [61:60]: u8 => iirg, with_iirg;
        /// Actual invalidation granularity.
        IAIG [58:57]: u8 => iaig, with_iaig;
        /// Drain reads.
        DR [49]: bool => dr, with_dr;
        /// Drain writes.
        DW [48]: bool => dw, with_dw;
        /// Domain-id.
        DID [47:32]: u16 => did, with_did;
    }
}

/// IVA_REG fields (11.4 IVA_REG), at ECAP.IRO.
pub mod iva {
    nesting_core::bitfield! {
        /// An IVA_REG value.
        pub struct Iva(u64) in mod;
        /// Page address.
        ADDR [63:12]: address => addr, with_addr;
        /// Invalidation hint (leaf-only).
        IH [6]: bool => ih, with_ih;
        /// Address mask: 2^AM pages.
        AM [5:0]: u8 => am, with_am;
    }
}

/// FSTS_REG bits (11.4 FSTS_REG).
pub mod fsts {
    nesting_core::bitfield! {
        /// An FSTS_REG value.
        pub struct Fsts(u64) in mod;
        /// Primary fault overflow (RW1C).
        PFO [0]: bool => pfo, with_pfo;
        /// Primary pending fault (RO: some fault record has F set).
        PPF [1]: bool => ppf, with_ppf;
        /// Invalidation queue error (RW1C).
        IQE [4]: bool => iqe, with_iqe;
        /// Invalidation completion error (RW1C).
        ICE [5]: bool => ice, with_ice;
        /// Invalidation time-out error (RW1C).
        ITE [6]: bool => ite, with_ite;
        /// Fault record index (RO).
        FRI [15:8]: u8 => fri, with_fri;
    }

    /// The status fields whose setting is a fault event condition
    /// (VT-d "Non-Recoverable Fault Event": PFO, PPF, IQE, ICE, ITE; PRO lives in PRS_REG).
    pub const EVENT_MASK: u64 = PFO.mask() | PPF.mask() | IQE.mask() | ICE.mask() | ITE.mask();
}

/// FECTL/IECTL/PECTL bits (11.4 FECTL_REG, 11.4 IECTL_REG, 11.4 PECTL_REG).
pub mod ectl {
    nesting_core::bitfield! {
        /// An FECTL_REG, IECTL_REG or PECTL_REG value.
        pub struct Ectl(u64) in mod;
        /// Interrupt mask.
        IM [31]: bool => im, with_im;
        /// Interrupt pending.
        IP [30]: bool => ip, with_ip;
    }
}

/// IQA_REG fields (11.4 IQA_REG).
pub mod iqa {
    nesting_core::bitfield! {
        /// An IQA_REG value.
        pub struct Iqa(u64) in mod;
        /// Queue base, 4 KiB aligned.
        IQA [63:12]: address => base, with_base;
        /// Descriptor width: 0 = 128-bit, 1 = 256-bit.
        DW [11]: bool => dw, with_dw;
        /// Queue size: 2^QS 4 KiB pages.
        QS [2:0]: u8 => qs, with_qs;
    }
}

/// IQH/IQT queue offset (11.4 IQH_REG, 11.4 IQT_REG): bits 18:4, in bytes.
pub const IQ_OFFSET: Field = Field::bits(18, 4);

/// ICS_REG: invalidation wait descriptor complete (11.4 ICS_REG, RW1C).
pub const ICS_IWC: Field = Field::bit(0);

/// IQER_REG fields (11.4.9.9).
pub mod iqer {
    use nesting_core::types::Bdf;

    nesting_core::bitfield! {
        /// An IQER_REG value.
        pub struct Iqer(u64) in mod;
        /// Invalidation queue error info.
        IQEI [3:0]: u8 => iqei, with_iqei;
        /// Invalidation time-out error source-id.
        ITESID [47:32]: Bdf => itesid, with_itesid;
        /// Invalidation completion error source-id.
        ICESID [63:48]: Bdf => icesid, with_icesid;
    }
}

/// PQA_REG fields (11.4 PQA_REG), present with ECAP.PRS.
pub mod pqa {
    nesting_core::bitfield! {
        /// A PQA_REG value.
        pub struct Pqa(u64) in mod;
        /// Page request queue base, 4 KiB aligned.
        PQA [63:12]: address => base, with_base;
        /// Queue size: 2^PQS 4 KiB pages.
        PQS [2:0]: u8 => pqs, with_pqs;
    }
}

use crate::fault::record::frcd;

pub use nesting_core::regs::{RegDesc, RegWidth, WriteEffect};

const fn reg(name: &'static str, offset: u64, width: RegWidth, reset: u64) -> RegDesc {
    RegDesc::ro(name, offset, width, reset, ())
}

const fn rw(d: RegDesc, writable: u64) -> RegDesc {
    d.rw(writable)
}

const fn w1c(d: RegDesc, mask: u64) -> RegDesc {
    d.w1c(mask)
}

use RegWidth::{W32, W64};

/// VER_REG value: architecture version 1.0 for a legacy-only unit, 3.0
/// for one with scalable mode (the revision that introduced it).
pub fn version(cfg: &VtdConfig) -> u64 {
    match cfg.mode {
        VtdMode::Legacy => 0x10,
        VtdMode::Scalable => 0x30,
    }
}

/// Number of domains field: 2^(4 + 2*6) = 65536, the full 16-bit DID
/// space (11.4 CAP_REG ND).
const ND_64K: u64 = 6;

/// Largest address mask a page-selective invalidation may carry: 2^18
/// 4 KiB pages = 1 GiB, the largest page (11.4 CAP_REG MAMV).
pub const MAMV: u64 = 18;

/// CAP_REG computed from the configuration (VT-d 11.4 CAP_REG).
pub fn capability(cfg: &VtdConfig) -> u64 {
    // SAGAW bit 1 = 39-bit (3-level), bit 2 = 48-bit (4-level), bit 3 =
    // 57-bit (5-level); a unit supporting a depth supports the shallower
    // ones (Linux picks the deepest it needs among SAGAW).
    let sagaw: u64 = match cfg.aw {
        VtdAddressWidth::Bits39 => 0b0010,
        VtdAddressWidth::Bits48 => 0b0110,
        VtdAddressWidth::Bits57 => 0b1110,
    };
    let fields = [
        (cap::ND, ND_64K),
        (cap::CM, u64::from(cfg.cm)),
        (cap::SAGAW, sagaw),
        (cap::MGAW, u64::from(cfg.aw.bits()) - 1),
        (cap::FRO, cfg.fro / 16),
        (cap::SLLPS, u64::from(cfg.sps)),
        (cap::PSI, 1),
        (cap::NFR, u64::from(cfg.nfr) - 1),
        (cap::MAMV, MAMV),
        (cap::DWD, 1),
        (cap::DRD, 1),
        (cap::FS1GP, u64::from(cfg.first_stage_1g())),
        (
            cap::FS5LP,
            u64::from(cfg.flts && cfg.aw == VtdAddressWidth::Bits57),
        ),
    ];
    fields.iter().fold(0, |acc, (f, v)| f.set(acc, *v))
}

/// ECAP_REG computed from the configuration (VT-d 11.4 ECAP_REG).
pub fn extended_capability(cfg: &VtdConfig) -> u64 {
    let scalable = cfg.mode == VtdMode::Scalable;
    let fields = [
        // Page walks snoop: the model reads guest memory coherently.
        (ecap::C, 1),
        (ecap::QI, u64::from(cfg.qi)),
        // Device-TLBs need queued invalidation (11.4 ECAP_REG DT).
        (ecap::DT, u64::from(cfg.qi)),
        (ecap::PT, 1),
        (ecap::IRO, cfg.iro / 16),
        (ecap::NEST, u64::from(cfg.nest)),
        (ecap::PRS, u64::from(cfg.prs)),
        // First-stage execute and supervisor requests, and the extended
        // accessed flag, come with first-stage translation.
        (ecap::ERS, u64::from(cfg.flts)),
        (ecap::SRS, u64::from(cfg.flts)),
        (ecap::EAFS, u64::from(cfg.flts)),
        (ecap::PSS, u64::from(cfg.pasid_bits.saturating_sub(1))),
        (ecap::PASID, u64::from(cfg.pasid_bits > 0)),
        (ecap::SMTS, u64::from(scalable)),
        (ecap::SSTS, u64::from(cfg.slts)),
        (ecap::FSTS, u64::from(cfg.flts)),
        (ecap::SMPWCS, u64::from(scalable)),
    ];
    fields.iter().fold(0, |acc, (f, v)| f.set(acc, *v))
}

/// The full register layout of a unit with this configuration.
pub fn layout(cfg: &VtdConfig) -> Vec<RegDesc> {
    let ectl_reset = ectl::IM.mask();
    let msi_addr = 0xffff_fffc;
    let mut v = vec![
        reg("VER_REG", off::VER, W32, version(cfg)),
        reg("CAP_REG", off::CAP, W64, capability(cfg)),
        reg("ECAP_REG", off::ECAP, W64, extended_capability(cfg)),
        // Write-only: reads return 0; the model acts on the written value.
        rw(
            reg("GCMD_REG", off::GCMD, W32, 0),
            gcmd::TE.mask()
                | gcmd::SRTP.mask()
                | gcmd::WBF.mask()
                | gcmd::QIE.mask()
                | gcmd::CFI.mask(),
        ),
        reg("GSTS_REG", off::GSTS, W32, 0),
        rw(
            reg("RTADDR_REG", off::RTADDR, W64, 0),
            rtaddr::RTA.mask() | rtaddr::TTM.mask(),
        ),
        rw(
            reg("CCMD_REG", off::CCMD, W64, 0),
            ccmd::ICC.mask()
                | ccmd::CIRG.mask()
                | ccmd::FM.mask()
                | ccmd::SID.mask()
                | ccmd::DID.mask(),
        ),
        w1c(
            reg("FSTS_REG", off::FSTS, W32, 0),
            fsts::PFO.mask() | fsts::IQE.mask() | fsts::ICE.mask() | fsts::ITE.mask(),
        ),
        rw(
            reg("FECTL_REG", off::FECTL, W32, ectl_reset),
            ectl::IM.mask(),
        ),
        rw(reg("FEDATA_REG", off::FEDATA, W32, 0), 0xffff_ffff),
        rw(reg("FEADDR_REG", off::FEADDR, W32, 0), msi_addr),
        rw(reg("FEUADDR_REG", off::FEUADDR, W32, 0), 0xffff_ffff),
        reg("AFLOG_REG", off::AFLOG, W64, 0),
    ];
    if cfg.qi {
        v.extend([
            reg("IQH_REG", off::IQH, W64, 0),
            rw(reg("IQT_REG", off::IQT, W64, 0), IQ_OFFSET.mask()),
            rw(
                reg("IQA_REG", off::IQA, W64, 0),
                iqa::IQA.mask() | iqa::DW.mask() | iqa::QS.mask(),
            ),
            w1c(reg("ICS_REG", off::ICS, W32, 0), ICS_IWC.mask()),
            rw(
                reg("IECTL_REG", off::IECTL, W32, ectl_reset),
                ectl::IM.mask(),
            ),
            rw(reg("IEDATA_REG", off::IEDATA, W32, 0), 0xffff_ffff),
            rw(reg("IEADDR_REG", off::IEADDR, W32, 0), msi_addr),
            rw(reg("IEUADDR_REG", off::IEUADDR, W32, 0), 0xffff_ffff),
            reg("IQER_REG", off::IQER, W64, 0),
        ]);
    }
    if cfg.prs {
        v.extend(page_request_regs(msi_addr, ectl_reset));
    }
    v.push(rw(
        reg("IVA_REG", cfg.iro, W64, 0),
        iva::ADDR.mask() | iva::IH.mask() | iva::AM.mask(),
    ));
    v.push(rw(
        reg("IOTLB_REG", cfg.iro + 8, W64, 0),
        iotlb_reg::IVT.mask()
            | iotlb_reg::IIRG.mask()
            | iotlb_reg::DR.mask()
            | iotlb_reg::DW.mask()
            | iotlb_reg::DID.mask(),
    ));
    for i in 0..u64::from(cfg.nfr) {
        let base = cfg.fro + 16 * i;
        v.push(reg("FRCD_REG.lo", base, W64, 0));
        v.push(w1c(reg("FRCD_REG.hi", base + 8, W64, 0), frcd::F.mask()));
    }
    v
}

/// PQH/PQT/PQA/PRS/PECTL/PEDATA/PEADDR/PEUADDR (11.4, page request registers), present when
/// ECAP.PRS is set.
fn page_request_regs(msi_addr: u64, ectl_reset: u64) -> [RegDesc; 8] {
    [
        rw(reg("PQH_REG", off::PQH, W64, 0), PQ_OFFSET.mask()),
        // Software initializes PQT (Linux writes 0 at set-up); hardware
        // advances it.
        rw(reg("PQT_REG", off::PQT, W64, 0), PQ_OFFSET.mask()),
        rw(
            reg("PQA_REG", off::PQA, W64, 0),
            pqa::PQA.mask() | pqa::PQS.mask(),
        ),
        // PPR and PRO, both RW1C.
        w1c(
            reg("PRS_REG", off::PRS, W32, 0),
            prs::PPR.mask() | prs::PRO.mask(),
        ),
        rw(
            reg("PECTL_REG", off::PECTL, W32, ectl_reset),
            ectl::IM.mask(),
        ),
        rw(reg("PEDATA_REG", off::PEDATA, W32, 0), 0xffff_ffff),
        rw(reg("PEADDR_REG", off::PEADDR, W32, 0), msi_addr),
        rw(reg("PEUADDR_REG", off::PEUADDR, W32, 0), 0xffff_ffff),
    ]
}

/// The unit's register file: the layout of [`layout`] and its values,
/// with VT-d's access rules (11.4 "Register Descriptions").
#[derive(Clone, Debug)]
pub struct RegisterFile(nesting_core::regs::RegisterFile);

impl RegisterFile {
    /// A register file at reset.
    pub fn new(cfg: &VtdConfig) -> Self {
        RegisterFile(nesting_core::regs::RegisterFile::new(layout(cfg)))
    }

    /// The declarations, in layout order.
    pub fn descs(&self) -> &[RegDesc] {
        self.0.descs()
    }

    /// The shared register file underneath (declarations and raw values).
    pub fn file(&self) -> &nesting_core::regs::RegisterFile {
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

    /// A software read of `size` (4 or 8) bytes at `offset`. Unimplemented
    /// offsets read as zero (VT-d "Register Descriptions": reserved registers read 0). An
    /// 8-byte read of two adjacent 32-bit registers returns both; a 4-byte
    /// read of a 64-bit register returns the addressed half.
    pub fn read(&self, offset: u64, size: u64) -> u64 {
        match size {
            8 => match self.0.locate(offset) {
                Some((i, 0)) if self.0.desc(i).map(|d| d.width) == Some(W64) => self.0.value(i),
                _ => {
                    let hi = offset.checked_add(4).map_or(0, |o| self.read(o, 4));
                    self.read(offset, 4) | (hi << 32)
                }
            },
            _ => match self.0.locate(offset) {
                Some((i, pos)) if pos % 4 == 0 => (self.0.value(i) >> (pos * 8)) & 0xffff_ffff,
                _ => 0,
            },
        }
    }

    /// A software write of `size` (4 or 8) bytes at `offset`, applying the
    /// writable and write-1-to-clear masks. Returns what changed, one entry
    /// per register touched (an 8-byte write may cover two 32-bit
    /// registers). Writes to read-only or unimplemented offsets change
    /// nothing but are still reported, so the model can act on the written
    /// value of write-only registers (GCMD).
    pub fn write(&mut self, offset: u64, size: u64, value: u64) -> Vec<WriteEffect> {
        let mut out = Vec::with_capacity(2);
        match (size, self.0.locate(offset)) {
            (8, Some((i, 0))) if self.0.desc(i).map(|d| d.width) == Some(W64) => {
                out.extend(self.0.apply(i, u64::MAX, value, false));
            }
            (8, _) => {
                out.extend(self.write32(offset, value & 0xffff_ffff));
                if let Some(hi) = offset.checked_add(4) {
                    out.extend(self.write32(hi, value >> 32));
                }
            }
            _ => out.extend(self.write32(offset, value & 0xffff_ffff)),
        }
        out
    }

    fn write32(&mut self, offset: u64, value: u64) -> Option<WriteEffect> {
        let (i, pos) = self.0.locate(offset)?;
        if pos % 4 != 0 {
            return None;
        }
        let shift = pos * 8;
        self.0.apply(i, 0xffff_ffff << shift, value << shift, false)
    }
}
