//! Commands (IHI 0070 chapter 4, "Commands") and the command queue
//! ("Command and Event queues"; 7.1, "Command queue errors").
//!
//! [`Cmd`] is the 16-byte wire form with one typed accessor per field;
//! [`Command::decode`] is total: every bit pattern decodes to a command
//! or to [`Illegal`], which the queue reports as CERROR_ILL. Execution
//! (`Smmuv3::process_cmdq`) is in the private `cmdq_exec` module.

use nesting_core::bits::FieldValue;

use crate::caps::Caps;
use crate::tlb::Span;
use crate::wire::Qwords;

/// Bytes per command.
pub const CMD_SIZE: u64 = 16;
const _: () = assert!(size_of::<Qwords<2>>() == CMD_SIZE as usize);

/// Command opcodes (IHI 0070 "Command opcodes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// CMD_PREFETCH_CONFIG.
    PrefetchConfig,
    /// CMD_PREFETCH_ADDR.
    PrefetchAddr,
    /// CMD_CFGI_STE.
    CfgiSte,
    /// CMD_CFGI_STE_RANGE (CMD_CFGI_ALL is Range = 31).
    CfgiSteRange,
    /// CMD_CFGI_CD.
    CfgiCd,
    /// CMD_CFGI_CD_ALL.
    CfgiCdAll,
    /// CMD_TLBI_NH_ALL.
    TlbiNhAll,
    /// CMD_TLBI_NH_ASID.
    TlbiNhAsid,
    /// CMD_TLBI_NH_VA.
    TlbiNhVa,
    /// CMD_TLBI_NH_VAA.
    TlbiNhVaa,
    /// CMD_TLBI_EL3_ALL.
    TlbiEl3All,
    /// CMD_TLBI_EL3_VA.
    TlbiEl3Va,
    /// CMD_TLBI_EL2_ALL.
    TlbiEl2All,
    /// CMD_TLBI_EL2_ASID.
    TlbiEl2Asid,
    /// CMD_TLBI_EL2_VA.
    TlbiEl2Va,
    /// CMD_TLBI_EL2_VAA.
    TlbiEl2Vaa,
    /// CMD_TLBI_S12_VMALL.
    TlbiS12Vmall,
    /// CMD_TLBI_S2_IPA.
    TlbiS2Ipa,
    /// CMD_TLBI_NSNH_ALL.
    TlbiNsnhAll,
    /// CMD_ATC_INV.
    AtcInv,
    /// CMD_PRI_RESP.
    PriResp,
    /// CMD_RESUME.
    Resume,
    /// CMD_STALL_TERM.
    StallTerm,
    /// CMD_SYNC.
    Sync,
    /// Anything else.
    Unknown(u8),
}

const OPCODES: [(u8, Opcode); 24] = [
    (0x01, Opcode::PrefetchConfig),
    (0x02, Opcode::PrefetchAddr),
    (0x03, Opcode::CfgiSte),
    (0x04, Opcode::CfgiSteRange),
    (0x05, Opcode::CfgiCd),
    (0x06, Opcode::CfgiCdAll),
    (0x10, Opcode::TlbiNhAll),
    (0x11, Opcode::TlbiNhAsid),
    (0x12, Opcode::TlbiNhVa),
    (0x13, Opcode::TlbiNhVaa),
    (0x18, Opcode::TlbiEl3All),
    (0x1a, Opcode::TlbiEl3Va),
    (0x20, Opcode::TlbiEl2All),
    (0x21, Opcode::TlbiEl2Asid),
    (0x22, Opcode::TlbiEl2Va),
    (0x23, Opcode::TlbiEl2Vaa),
    (0x28, Opcode::TlbiS12Vmall),
    (0x2a, Opcode::TlbiS2Ipa),
    (0x30, Opcode::TlbiNsnhAll),
    (0x40, Opcode::AtcInv),
    (0x41, Opcode::PriResp),
    (0x44, Opcode::Resume),
    (0x45, Opcode::StallTerm),
    (0x46, Opcode::Sync),
];

impl FieldValue for Opcode {
    const BITS: u32 = 8;
    fn from_raw(raw: u64) -> Self {
        let op = u8::from_raw(raw);
        OPCODES
            .iter()
            .find(|(code, _)| *code == op)
            .map_or(Opcode::Unknown(op), |(_, o)| *o)
    }
    fn into_raw(self) -> u64 {
        match self {
            Opcode::Unknown(v) => u64::from(v),
            op => OPCODES
                .iter()
                .find(|(_, o)| *o == op)
                .map_or(0, |(code, _)| u64::from(*code)),
        }
    }
}

nesting_core::bitfield! {
    /// A command (IHI 0070 chapter 4), bits numbered across its two
    /// 64-bit words. Field names are those of the commands that use them.
    pub struct Cmd([u64; 2]);
    /// Opcode.
    OP [7:0]: Opcode => op, with_op;
    /// CMD_ATC_INV: invalidate every SubstreamID.
    GLOBAL [9]: bool => global, with_global;
    /// Secure stream (Secure queues only).
    SSEC [10]: bool => ssec, with_ssec;
    /// SubstreamID valid.
    SSV [11]: bool => ssv, with_ssv;
    /// SubstreamID.
    SSID [31:12]: u32 => ssid, with_ssid;
    /// StreamID.
    SID [63:32]: u32 => sid, with_sid;
    /// TLBI range: number of blocks, minus one.
    NUM [16:12]: u8 => num, with_num;
    /// TLBI range: block size scale.
    SCALE [24:20]: u8 => scale, with_scale;
    /// TLBI: VMID.
    VMID [47:32]: u16 => vmid, with_vmid;
    /// TLBI: ASID.
    ASID [63:48]: u16 => asid, with_asid;
    /// CMD_RESUME action (0b00 terminate, 0b01 retry, 0b10 abort);
    /// CMD_SYNC completion signal (0b00 none, 0b01 IRQ, 0b10 SEV).
    ACTION_CS [13:12]: u8 => action_cs, with_action_cs;
    /// CMD_SYNC: MSI shareability.
    MSH [23:22]: u8 => msh, with_msh;
    /// CMD_SYNC: MSI memory attributes.
    MSIATTR [27:24]: u8 => msiattr, with_msiattr;
    /// CMD_SYNC: MSI data.
    MSIDATA [63:32]: u32 => msidata, with_msidata;
    /// CFGI/TLBI: leaf only.
    LEAF [64]: bool => leaf, with_leaf;
    /// CMD_CFGI_STE_RANGE: 2^(Range + 1) StreamIDs.
    RANGE [68:64]: u8 => range, with_range;
    /// CMD_ATC_INV: 2^Size 4 KiB pages.
    ATC_SIZE [69:64]: u8 => atc_size, with_atc_size;
    /// CMD_PRI_RESP: page request group index.
    PRG_INDEX [72:64]: u16 => prg_index, with_prg_index;
    /// CMD_RESUME: stall tag.
    STAG [79:64]: u16 => stag, with_stag;
    /// TLBI: level hint.
    TTL [73:72]: u8 => ttl, with_ttl;
    /// TLBI: range granule (0: not a range).
    TG [75:74]: u8 => tg, with_tg;
    /// CMD_PRI_RESP: response (0b00 deny, 0b01 fail, 0b10 success).
    PRI_RESP [77:76]: u8 => pri_resp, with_pri_resp;
    /// TLBI VA, CMD_ATC_INV and CMD_PREFETCH_ADDR address, bits 63:12.
    ADDR [127:76]: address => addr, with_addr;
    /// CMD_TLBI_S2_IPA address, bits 51:12.
    IPA [115:76]: address => ipa, with_ipa;
    /// CMD_SYNC MSI address, bits 51:2.
    MSIADDR [115:66]: address => msiaddr, with_msiaddr;
}

/// The address part of a TLBI by address (IHI 0070 "Address-based
/// TLB invalidation", and the range form of SMMUv3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiAddr {
    /// Address (VA or IPA), 4 KiB aligned.
    pub addr: u64,
    /// Leaf entries only (a hint; the model removes more).
    pub leaf: bool,
    /// Level hint.
    pub ttl: u8,
    /// Range granule: 0 single address, 1 4 KiB, 2 16 KiB, 3 64 KiB.
    pub tg: u8,
    /// NUM: blocks minus one.
    pub num: u8,
    /// SCALE.
    pub scale: u8,
}

impl TlbiAddr {
    /// The addresses covered. Without TG (or without IDR3.RIL, when the
    /// range fields are RES0) every translation holding `addr` goes; with
    /// it, `(NUM + 1) * 2^SCALE` granules from `addr` aligned to the
    /// granule.
    pub fn span(&self, ril: bool) -> Span {
        if !ril || self.tg == 0 {
            return Span {
                addr: self.addr,
                len: 1,
            };
        }
        let g = 10 + 2 * u32::from(self.tg);
        let addr = self.addr & !((1u64 << g) - 1);
        let blocks = u64::from(self.num) + 1;
        let len = blocks
            .checked_shl(u32::from(self.scale) + g)
            .filter(|l| l >> (u32::from(self.scale) + g) == blocks)
            .unwrap_or(u64::MAX);
        Span { addr, len }
    }
}

/// CMD_SYNC completion signal (IHI 0070 CMD_SYNC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncSignal {
    /// SIG_NONE.
    None,
    /// SIG_IRQ: an MSI with the command's MSIAddress/MSIData (or the
    /// wired CMD_SYNC interrupt without IDR0.MSI).
    Irq,
    /// SIG_SEV: a wake-up event.
    Sev,
}

/// CMD_RESUME action (IHI 0070 CMD_RESUME).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeAction {
    /// Terminate the transaction (abort or RAZ/WI, as configured).
    Terminate,
    /// Retry it.
    Retry,
    /// Abort it.
    Abort,
}

/// CMD_PRI_RESP response (IHI 0070 CMD_PRI_RESP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriResponse {
    /// Deny: PCIe "Invalid Request".
    Deny,
    /// Fail: PCIe "Response Failure".
    Fail,
    /// Success.
    Success,
}

/// A decoded command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// CMD_PREFETCH_CONFIG / CMD_PREFETCH_ADDR: a hint, no effect.
    Prefetch {
        /// StreamID.
        sid: u32,
    },
    /// CMD_CFGI_STE.
    CfgiSte {
        /// StreamID.
        sid: u32,
    },
    /// CMD_CFGI_STE_RANGE (CMD_CFGI_ALL).
    CfgiSteRange {
        /// First StreamID.
        first: u32,
        /// log2 of the number of StreamIDs (Range + 1).
        log2: u32,
    },
    /// CMD_CFGI_CD.
    CfgiCd {
        /// StreamID.
        sid: u32,
        /// SubstreamID.
        ssid: u32,
        /// Only the CD, not the level-1 descriptor leading to it.
        leaf: bool,
    },
    /// CMD_CFGI_CD_ALL.
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// CMD_TLBI_NH_ALL.
    TlbiNhAll {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_NH_ASID.
    TlbiNhAsid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_NH_VA.
    TlbiNhVa {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
        /// Address.
        addr: TlbiAddr,
    },
    /// CMD_TLBI_NH_VAA.
    TlbiNhVaa {
        /// VMID.
        vmid: u16,
        /// Address.
        addr: TlbiAddr,
    },
    /// CMD_TLBI_S12_VMALL.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_S2_IPA.
    TlbiS2Ipa {
        /// VMID.
        vmid: u16,
        /// Address.
        addr: TlbiAddr,
    },
    /// CMD_TLBI_NSNH_ALL.
    TlbiNsnhAll,
    /// CMD_ATC_INV.
    AtcInv(crate::ats::AtcInvalidation),
    /// CMD_PRI_RESP.
    PriResp {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if SSV.
        ssid: Option<u32>,
        /// Page request group index.
        prg_index: u16,
        /// Response.
        resp: PriResponse,
    },
    /// CMD_RESUME.
    Resume {
        /// StreamID.
        sid: u32,
        /// Stall tag.
        stag: u16,
        /// Action.
        action: ResumeAction,
    },
    /// CMD_STALL_TERM.
    StallTerm {
        /// StreamID.
        sid: u32,
    },
    /// CMD_SYNC.
    Sync {
        /// Completion signal.
        cs: SyncSignal,
        /// MSI address (SIG_IRQ with IDR0.MSI).
        msi_addr: u64,
        /// MSI data.
        msi_data: u32,
    },
}

/// Why a command is CERROR_ILL (IHI 0070 7.1, "Command queue errors").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Illegal {
    /// An opcode the architecture does not define.
    UnknownOpcode(u8),
    /// A command of a feature the SMMU does not implement (stage 1 or 2,
    /// EL2/EL3 regimes, ATS, PRI).
    NotImplemented(Opcode),
    /// SSec = 1 on the Non-secure command queue.
    Secure,
    /// A reserved value of an enumerated field.
    Reserved(Opcode),
}

impl Command {
    /// Decodes `raw` (IHI 0070 chapter 4, "Commands", and 7.1: an unknown
    /// opcode, a command of a feature the SMMU lacks, or a reserved value
    /// of an enumerated field is CERROR_ILL).
    pub fn decode(raw: [u64; 2], caps: &Caps) -> Result<Command, Illegal> {
        let c = Cmd(raw);
        // Command field SSec: only the Secure command queue may set it.
        if c.ssec() {
            return Err(Illegal::Secure);
        }
        match c.op() {
            Opcode::PrefetchConfig | Opcode::PrefetchAddr => Ok(Command::Prefetch { sid: c.sid() }),
            Opcode::CfgiSte => Ok(Command::CfgiSte { sid: c.sid() }),
            Opcode::CfgiSteRange => {
                let log2 = u32::from(c.range()) + 1;
                let first = if log2 >= 32 {
                    0
                } else {
                    c.sid() & !((1u32 << log2) - 1)
                };
                Ok(Command::CfgiSteRange { first, log2 })
            }
            Opcode::CfgiCd => Ok(Command::CfgiCd {
                sid: c.sid(),
                ssid: c.ssid(),
                leaf: c.leaf(),
            }),
            Opcode::CfgiCdAll => Ok(Command::CfgiCdAll { sid: c.sid() }),
            Opcode::Unknown(v) => Err(Illegal::UnknownOpcode(v)),
            op @ (Opcode::AtcInv
            | Opcode::PriResp
            | Opcode::Resume
            | Opcode::StallTerm
            | Opcode::Sync) => decode_device(&c, op, caps),
            op => decode_tlbi(&c, op, caps),
        }
    }
}

/// The TLB invalidations (IHI 0070 4.4, "TLB invalidation").
fn decode_tlbi(c: &Cmd, op: Opcode, caps: &Caps) -> Result<Command, Illegal> {
    let ill = Illegal::NotImplemented(op);
    Ok(match op {
        // CMD_TLBI_NH_* need stage 1, CMD_TLBI_S2_IPA and
        // CMD_TLBI_S12_VMALL stage 2 (SMMU_IDR0.S1P/S2P).
        Opcode::TlbiNhAll | Opcode::TlbiNhAsid | Opcode::TlbiNhVa | Opcode::TlbiNhVaa
            if !caps.s1p =>
        {
            return Err(ill);
        }
        Opcode::TlbiNhAll => Command::TlbiNhAll {
            vmid: vmid(c, caps),
        },
        Opcode::TlbiNhAsid => Command::TlbiNhAsid {
            vmid: vmid(c, caps),
            asid: c.asid(),
        },
        Opcode::TlbiNhVa => Command::TlbiNhVa {
            vmid: vmid(c, caps),
            asid: c.asid(),
            addr: tlbi_addr(c, c.addr()),
        },
        Opcode::TlbiNhVaa => Command::TlbiNhVaa {
            vmid: vmid(c, caps),
            addr: tlbi_addr(c, c.addr()),
        },
        Opcode::TlbiS12Vmall | Opcode::TlbiS2Ipa if !caps.s2p => return Err(ill),
        Opcode::TlbiS12Vmall => Command::TlbiS12Vmall { vmid: c.vmid() },
        Opcode::TlbiS2Ipa => Command::TlbiS2Ipa {
            vmid: c.vmid(),
            addr: tlbi_addr(c, c.ipa()),
        },
        Opcode::TlbiNsnhAll => Command::TlbiNsnhAll,
        // CMD_TLBI_EL2_* need SMMU_IDR0.HYP and CMD_TLBI_EL3_* a Secure
        // command queue; this SMMU has neither.
        _ => return Err(ill),
    })
}

/// The commands about devices and completion (IHI 0070 4.5 to 4.7:
/// CMD_ATC_INV, CMD_PRI_RESP, CMD_RESUME, CMD_STALL_TERM, CMD_SYNC).
fn decode_device(c: &Cmd, op: Opcode, caps: &Caps) -> Result<Command, Illegal> {
    let ill = Illegal::NotImplemented(op);
    let reserved = Illegal::Reserved(op);
    let ssid = c.ssv().then_some(c.ssid());
    Ok(match op {
        // CMD_ATC_INV needs SMMU_IDR0.ATS.
        Opcode::AtcInv if !caps.ats => return Err(ill),
        Opcode::AtcInv => Command::AtcInv(crate::ats::AtcInvalidation {
            sid: c.sid(),
            ssid,
            global: c.global(),
            addr: c.addr(),
            size: c.atc_size(),
        }),
        // CMD_PRI_RESP needs SMMU_IDR0.PRI; Resp 0b11 is reserved.
        Opcode::PriResp if !caps.pri => return Err(ill),
        Opcode::PriResp => Command::PriResp {
            sid: c.sid(),
            ssid,
            prg_index: c.prg_index(),
            resp: match c.pri_resp() {
                0 => PriResponse::Deny,
                1 => PriResponse::Fail,
                2 => PriResponse::Success,
                _ => return Err(reserved),
            },
        },
        // CMD_RESUME: Action 0b11 is reserved.
        Opcode::Resume => Command::Resume {
            sid: c.sid(),
            stag: c.stag(),
            action: match c.action_cs() {
                0 => ResumeAction::Terminate,
                1 => ResumeAction::Retry,
                2 => ResumeAction::Abort,
                _ => return Err(reserved),
            },
        },
        Opcode::StallTerm => Command::StallTerm { sid: c.sid() },
        // CMD_SYNC: CS 0b11 is reserved.
        Opcode::Sync => Command::Sync {
            cs: match c.action_cs() {
                0 => SyncSignal::None,
                1 => SyncSignal::Irq,
                2 => SyncSignal::Sev,
                _ => return Err(reserved),
            },
            msi_addr: c.msiaddr(),
            msi_data: c.msidata(),
        },
        _ => return Err(ill),
    })
}

/// The VMID of a TLBI_NH command: ignored (0) without stage 2, which is
/// also what every stage-1 translation is tagged with then.
fn vmid(c: &Cmd, caps: &Caps) -> u16 {
    if caps.s2p { c.vmid() } else { 0 }
}

fn tlbi_addr(c: &Cmd, addr: u64) -> TlbiAddr {
    TlbiAddr {
        addr,
        leaf: c.leaf(),
        ttl: c.ttl(),
        tg: c.tg(),
        num: c.num(),
        scale: c.scale(),
    }
}

/// CMDQ_CONS.ERR codes (IHI 0070 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cerror {
    /// CERROR_ILL: an illegal command.
    Ill,
    /// CERROR_ABT: fetching the command aborted.
    Abt,
    /// CERROR_ATC_INV_SYNC: an ATC invalidation before this CMD_SYNC
    /// timed out.
    AtcInvSync,
}

impl Cerror {
    /// The ERR field value.
    pub fn code(self) -> u8 {
        match self {
            Cerror::Ill => 1,
            Cerror::Abt => 2,
            Cerror::AtcInvSync => 3,
        }
    }
}
