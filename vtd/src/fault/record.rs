//! What a fault record says (VT-d 7.2.3 fault reasons, the PCIe address
//! type) and the layout of one fault recording register (11.4 FRCD_REG).

use nesting_core::bits::FieldValue;

/// A fault reason (VT-d 7.2.3 "Fault Conditions and Remapping Hardware Behavior
/// for Various Requests"). Decoding is total: codes the model never produces
/// decode to `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// 0x1: root-entry present bit clear (legacy).
    RootNotPresent,
    /// 0x2: context-entry present bit clear (legacy).
    ContextNotPresent,
    /// 0x3: invalid context entry: unsupported AW or TT (legacy).
    ContextInvalid,
    /// 0x4: input address beyond the context's AGAW (legacy).
    AddressBeyondAgaw,
    /// 0x5: write to a page without write permission (legacy).
    Write,
    /// 0x6: read of a page without read permission (legacy).
    Read,
    /// 0x7: error accessing a second-stage paging entry (legacy).
    PagingEntryAccess,
    /// 0x8: error accessing the root table (legacy).
    RootTableAccess,
    /// 0x9: error accessing the context table (legacy).
    ContextTableAccess,
    /// 0xA: non-zero reserved field in a present root entry (legacy).
    RootReserved,
    /// 0xB: non-zero reserved field in a present context entry (legacy).
    ContextReserved,
    /// 0xC: non-zero reserved field in a second-stage entry (legacy).
    PagingEntryReserved,
    /// 0xD: the context entry's translation type blocks the request: a
    /// translation request or translated request with TT other than 01b
    /// (device-TLB enabled).
    TranslationTypeBlocked,
    /// 0xE: the translation's output lies in the interrupt address range
    /// 0xFEEx_xxxx (legacy, condition LGN.4).
    InterruptAddress,
    /// 0x30: invalid root table address / table mode (RTADDR.TTM).
    SmInvalidRootTable,
    /// 0x31: request with PASID while the root table is in legacy mode.
    SmTtmLegacyWithPasid,
    /// 0x32: page request while the root table is in legacy mode.
    SmTtmLegacyPageRequest,
    /// 0x38: error accessing a scalable-mode root entry.
    SmRootAccess,
    /// 0x39: scalable-mode root entry present bit clear.
    SmRootNotPresent,
    /// 0x3A: non-zero reserved field in a scalable-mode root entry.
    SmRootReserved,
    /// 0x40: error accessing a scalable-mode context entry.
    SmContextAccess,
    /// 0x41: scalable-mode context entry present bit clear.
    SmContextNotPresent,
    /// 0x42: non-zero reserved field in a scalable-mode context entry.
    SmContextReserved,
    /// 0x43: invalid scalable-mode context entry.
    SmContextInvalid,
    /// 0x44: translation request or translated request while the
    /// scalable-mode context entry's DTE (device-TLB enable) is clear.
    SmDteClear,
    /// 0x45: request with PASID but the context's PASIDE is clear.
    SmPasidDisabled,
    /// 0x46: PASID beyond the context's PASID directory size.
    SmPasidTooLarge,
    /// 0x47: page request while the scalable-mode context entry's PRE
    /// (page request enable) is clear.
    SmPreClear,
    /// 0x48: the context entry's RID_PASID is beyond its PASID directory.
    SmRidPasidError,
    /// 0x50: error accessing a PASID directory entry.
    PasidDirAccess,
    /// 0x51: PASID directory entry present bit clear.
    PasidDirNotPresent,
    /// 0x52: non-zero reserved field in a PASID directory entry.
    PasidDirReserved,
    /// 0x58: error accessing a PASID table entry.
    PasidEntryAccess,
    /// 0x59: PASID table entry present bit clear.
    PasidEntryNotPresent,
    /// 0x5A: non-zero reserved field in a PASID table entry.
    PasidEntryReserved,
    /// 0x5B: invalid PASID table entry (PGTT, AW, unsupported mode).
    PasidEntryInvalid,
    /// 0x5C: execute request but the PASID entry's ERE is clear.
    PasidEreClear,
    /// 0x5D: supervisor request but the PASID entry's SRE is clear.
    PasidSreClear,
    /// 0x70: error accessing a first-stage paging entry.
    FsEntryAccess,
    /// 0x71: first-stage paging entry present bit clear.
    FsEntryNotPresent,
    /// 0x72: non-zero reserved field in a first-stage paging entry.
    FsEntryReserved,
    /// 0x73: error accessing the first-stage table root (FSPTPTR).
    FsRootAccess,
    /// 0x74: nested: first-stage table address beyond the second stage's
    /// address width.
    NestedFsAddressBeyond,
    /// 0x75: nested: no read permission in the second stage for the
    /// first-stage root table.
    NestedFsRootRead,
    /// 0x76: nested: no read permission in the second stage for a
    /// first-stage table.
    NestedFsTableRead,
    /// 0x77: nested: no write permission in the second stage for a
    /// first-stage accessed/dirty update.
    NestedFsTableWrite,
    /// 0x78: error accessing a second-stage paging entry.
    SsEntryAccess,
    /// 0x79: second-stage entry not present (no R and no W).
    SsEntryNotPresent,
    /// 0x7A: non-zero reserved field in a second-stage paging entry.
    SsEntryReserved,
    /// 0x7B: invalid second-stage table pointer.
    SsRootInvalid,
    /// 0x80: non-canonical input address for first-stage translation.
    FsNonCanonical,
    /// 0x81: user request to a supervisor page (U/S clear).
    FsUserSupervisor,
    /// 0x82: execute request to a page with XD set.
    FsExecute,
    /// 0x83: input address beyond the PASID entry's address width.
    SmAddressBeyond,
    /// 0x84: output address beyond the host address width.
    SmOutputBeyond,
    /// 0x85: write request without write permission (scalable mode).
    SmWrite,
    /// 0x86: read request without read permission (scalable mode).
    SmRead,
    /// 0x87: interrupt address range 0xFEEx_xxxx (scalable mode,
    /// condition SGN.8): a translation's output in the range, or (model
    /// choice) a request with PASID to it.
    SmInterruptAddress,
    /// Any other code.
    Unknown(u8),
}

const TABLE: [(FaultReason, u8); 58] = {
    use FaultReason::*;
    [
        (RootNotPresent, 0x1),
        (ContextNotPresent, 0x2),
        (ContextInvalid, 0x3),
        (AddressBeyondAgaw, 0x4),
        (Write, 0x5),
        (Read, 0x6),
        (PagingEntryAccess, 0x7),
        (RootTableAccess, 0x8),
        (ContextTableAccess, 0x9),
        (RootReserved, 0xa),
        (ContextReserved, 0xb),
        (PagingEntryReserved, 0xc),
        (TranslationTypeBlocked, 0xd),
        (InterruptAddress, 0xe),
        (SmInvalidRootTable, 0x30),
        (SmTtmLegacyWithPasid, 0x31),
        (SmTtmLegacyPageRequest, 0x32),
        (SmRootAccess, 0x38),
        (SmRootNotPresent, 0x39),
        (SmRootReserved, 0x3a),
        (SmContextAccess, 0x40),
        (SmContextNotPresent, 0x41),
        (SmContextReserved, 0x42),
        (SmContextInvalid, 0x43),
        (SmDteClear, 0x44),
        (SmPasidDisabled, 0x45),
        (SmPasidTooLarge, 0x46),
        (SmPreClear, 0x47),
        (SmRidPasidError, 0x48),
        (PasidDirAccess, 0x50),
        (PasidDirNotPresent, 0x51),
        (PasidDirReserved, 0x52),
        (PasidEntryAccess, 0x58),
        (PasidEntryNotPresent, 0x59),
        (PasidEntryReserved, 0x5a),
        (PasidEntryInvalid, 0x5b),
        (PasidEreClear, 0x5c),
        (PasidSreClear, 0x5d),
        (FsEntryAccess, 0x70),
        (FsEntryNotPresent, 0x71),
        (FsEntryReserved, 0x72),
        (FsRootAccess, 0x73),
        (NestedFsAddressBeyond, 0x74),
        (NestedFsRootRead, 0x75),
        (NestedFsTableRead, 0x76),
        (NestedFsTableWrite, 0x77),
        (SsEntryAccess, 0x78),
        (SsEntryNotPresent, 0x79),
        (SsEntryReserved, 0x7a),
        (SsRootInvalid, 0x7b),
        (FsNonCanonical, 0x80),
        (FsUserSupervisor, 0x81),
        (FsExecute, 0x82),
        (SmAddressBeyond, 0x83),
        (SmOutputBeyond, 0x84),
        (SmWrite, 0x85),
        (SmRead, 0x86),
        (SmInterruptAddress, 0x87),
    ]
};

impl FaultReason {
    /// The architected code (FRCD.FR).
    pub fn code(self) -> u8 {
        if let FaultReason::Unknown(c) = self {
            return c;
        }
        TABLE
            .iter()
            .find(|(r, _)| *r == self)
            .map_or(0, |(_, c)| *c)
    }

    /// Decodes a code; never fails.
    pub fn from_code(code: u8) -> FaultReason {
        TABLE
            .iter()
            .find(|(_, c)| *c == code)
            .map_or(FaultReason::Unknown(code), |(r, _)| *r)
    }
}

/// The fault reason field (FRCD_REG FR) reads as a [`FaultReason`].
impl FieldValue for FaultReason {
    const BITS: u32 = u8::BITS;
    fn from_raw(raw: u64) -> Self {
        FaultReason::from_code(u8::from_raw(raw))
    }
    fn into_raw(self) -> u64 {
        u64::from(self.code())
    }
}

/// The address type of a faulting request (FRCD_REG AT field, the PCIe
/// AT field of the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// 00b: untranslated request.
    Untranslated,
    /// 01b: translation request (ATS).
    TranslationRequest,
    /// 10b: translated request.
    Translated,
    /// 11b: reserved.
    Unknown(u8),
}

impl AddressType {
    /// The two-bit encoding.
    pub fn code(self) -> u8 {
        match self {
            AddressType::Untranslated => 0,
            AddressType::TranslationRequest => 1,
            AddressType::Translated => 2,
            AddressType::Unknown(c) => c & 3,
        }
    }

    /// Decodes the two-bit field; never fails.
    pub fn from_code(code: u8) -> AddressType {
        match code & 3 {
            0 => AddressType::Untranslated,
            1 => AddressType::TranslationRequest,
            2 => AddressType::Translated,
            c => AddressType::Unknown(c),
        }
    }

    /// The address type of a raw fault record.
    pub fn of_record(raw: [u64; 2]) -> AddressType {
        frcd::Frcd(raw).at()
    }
}

/// The address type field (FRCD_REG AT) reads as an [`AddressType`].
impl FieldValue for AddressType {
    const BITS: u32 = 2;
    fn from_raw(raw: u64) -> Self {
        AddressType::from_code(u8::from_raw(raw))
    }
    fn into_raw(self) -> u64 {
        u64::from(self.code())
    }
}

/// Fault recording register fields (11.4 FRCD_REG): one 128-bit record,
/// bits numbered across its low and high quadwords as the spec numbers
/// them.
pub mod frcd {
    use nesting_core::types::Bdf;

    use super::{AddressType, FaultReason};

    nesting_core::bitfield! {
        /// A fault record (the low and high quadwords of one FRCD_REG).
        pub struct Frcd([u64; 2]) in mod;
        /// Fault info: page address of the request, bits 63:12.
        FI [63:12]: address => fi, with_fi;
        /// Source-id of the request.
        SID [79:64]: Bdf => sid, with_sid;
        /// Type bit 2 (T2).
        T2 [92]: bool => t2, with_t2;
        /// Privilege mode requested.
        PRIV [93]: bool => privileged, with_privileged;
        /// Execute permission requested.
        EXE [94]: bool => exe, with_exe;
        /// PASID present.
        PP [95]: bool => pp, with_pp;
        /// Fault reason.
        FR [103:96]: FaultReason => fr, with_fr;
        /// PASID value.
        PV [123:104]: u32 => pv, with_pv;
        /// Address type.
        AT [125:124]: AddressType => at, with_at;
        /// Type bit 1 (T1): 0 write, 1 read.
        T1 [126]: bool => t1, with_t1;
        /// Fault (RW1C).
        F [127]: bool => f, with_f;
    }
}
