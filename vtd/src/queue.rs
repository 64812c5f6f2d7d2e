//! Queued invalidation (VT-d 6.5.2): descriptor formats and their decoder.
//!
//! Decoding is total: every 128- or 256-bit pattern decodes to a
//! [`Descriptor`] or to [`Decoded::Invalid`] with the IQER.IQEI code the
//! unit reports for it (11.4.9.9: 3 = invalid descriptor type, 4 =
//! reserved field violation for a valid type).

use crate::options::{VtdConfig, VtdMode};
use nesting_core::types::Bdf;

use crate::regs::MAMV;

/// IQER.IQEI values (11.4.9.9).
pub mod iqei {
    /// Invalid tail pointer (beyond the queue, or not 256-bit aligned with
    /// 256-bit descriptors).
    pub const TAIL: u8 = 1;
    /// Fetching the descriptor failed.
    pub const FETCH: u8 = 2;
    /// Invalid descriptor type.
    pub const TYPE: u8 = 3;
    /// Reserved field violation in a descriptor of a valid type.
    pub const RESERVED: u8 = 4;
    /// Descriptor width (IQA.DW) not supported.
    pub const WIDTH: u8 = 5;
}

/// Wire form of a 128-bit descriptor (a 256-bit descriptor's low half;
/// its high half is reserved for every type the unit implements).
pub type DescriptorWire = crate::tables::Qwords<2>;
const _: () = assert!(size_of::<DescriptorWire>() == 16);

nesting_core::bitfield! {
    /// What every descriptor shares: its type (6.5.2).
    pub struct DscHeader([u64; 2]);
    /// Descriptor type, bits 3:0.
    TYPE_LO [3:0]: u8 => type_lo;
    /// Descriptor type[6:4], bits 11:9.
    TYPE_HI [11:9]: u8 => type_hi;
}

impl DscHeader {
    /// The type code: type bits 6:4 above bits 3:0.
    pub fn type_code(&self) -> u8 {
        self.type_lo() | (self.type_hi() << 4)
    }
}

nesting_core::bitfield! {
    /// Context-cache invalidate descriptor, type 1 (6.5.2.1).
    pub struct ContextCacheDsc([u64; 2]);
    /// Granularity: 01 global, 10 domain, 11 device.
    G [5:4]: u8 => g;
    /// Domain-id.
    DID [31:16]: u16 => did;
    /// Source-id of the device (device-selective).
    SID [47:32]: Bdf => sid;
    /// Function mask.
    FM [49:48]: u8 => fm;
    reserved [8:6], [15:12], [63:50], [127:64];
}

nesting_core::bitfield! {
    /// IOTLB invalidate descriptor, type 2 (VT-d "IOTLB Invalidate Descriptor").
    pub struct IotlbDsc([u64; 2]);
    /// Granularity: 01 global, 10 domain, 11 page-selective.
    G [5:4]: u8 => g;
    /// Drain writes.
    DW [6]: bool => dw;
    /// Drain reads.
    DR [7]: bool => dr;
    /// Domain-id.
    DID [31:16]: u16 => did;
    /// Address mask: 2^AM pages.
    AM [69:64]: u8 => am;
    /// Invalidation hint (leaf entries only).
    IH [70]: bool => ih;
    /// Page address, bits 127:76 (address bits 63:12).
    ADDR [127:76]: address => addr;
    reserved [8], [15:12], [63:32], [75:71];
}

nesting_core::bitfield! {
    /// Device-TLB invalidate descriptor, type 3 (VT-d "Device-TLB Invalidate
    /// Descriptor").
    pub struct DevTlbDsc([u64; 2]);
    /// PFSID[3:0].
    PFSID_LO [15:12]: u8 => pfsid_lo;
    /// Max invalidations pending.
    MIP [20:16]: u8 => mip;
    /// Source-id of the device.
    SID [47:32]: Bdf => sid;
    /// PFSID[15:4].
    PFSID_HI [63:52]: u16 => pfsid_hi;
    /// Size: the range is encoded in the low address bits.
    S [64]: bool => s;
    /// Address, bits 127:76 (address bits 63:12).
    ADDR [127:76]: address => addr;
    reserved [8:4], [31:21], [51:48], [75:65];
}

impl DevTlbDsc {
    /// Physical function source-id: PFSID bits 15:4 above bits 3:0.
    pub fn pfsid(&self) -> u16 {
        u16::from(self.pfsid_lo()) | (self.pfsid_hi() << 4)
    }
}

nesting_core::bitfield! {
    /// Interrupt entry cache invalidate descriptor, type 4 (VT-d "Interrupt
    /// Entry Cache Invalidate Descriptor"; interrupt remapping is not modelled).
    pub struct IecDsc([u64; 2]);
    /// Granularity: 0 global, 1 index-selective.
    G [4]: bool => g;
    /// Index mask.
    IM [31:27]: u8 => im;
    /// Interrupt index.
    IIDX [47:32]: u16 => iidx;
    reserved [8:5], [26:12], [63:48], [127:64];
}

nesting_core::bitfield! {
    /// Invalidation wait descriptor, type 5 (6.5.2.8).
    pub struct WaitDsc([u64; 2]);
    /// IF: raise the invalidation completion event.
    IF [4]: bool => interrupt;
    /// SW: write the status data at the status address.
    SW [5]: bool => status_write;
    /// FN: fence.
    FN [6]: bool => fence;
    /// PD: drain page requests.
    PD [7]: bool => page_drain;
    /// Status data.
    STATUS_DATA [63:32]: u32 => status_data;
    /// Status address, bits 127:66 (dword aligned).
    STATUS_ADDR [127:66]: address => status_addr;
    reserved [8], [31:12], [65:64];
}

nesting_core::bitfield! {
    /// PASID-based-IOTLB invalidate descriptor, type 6 (VT-d
    /// "PASID-based-IOTLB Invalidate Descriptor").
    pub struct PasidIotlbDsc([u64; 2]);
    /// Granularity: 10 every page of the PASID, 11 page-selective.
    G [5:4]: u8 => g;
    /// Domain-id.
    DID [31:16]: u16 => did;
    /// PASID.
    PASID [51:32]: u32 => pasid;
    /// Address mask.
    AM [69:64]: u8 => am;
    /// Invalidation hint.
    IH [70]: bool => ih;
    /// Page address, bits 127:76.
    ADDR [127:76]: address => addr;
    reserved [8:6], [15:12], [63:52], [75:71];
}

nesting_core::bitfield! {
    /// PASID-cache invalidate descriptor, type 7 (VT-d "PASID-cache
    /// Invalidate Descriptor").
    pub struct PasidCacheDsc([u64; 2]);
    /// Granularity: 00 domain, 01 PASID, 11 global.
    G [5:4]: u8 => g;
    /// Domain-id.
    DID [31:16]: u16 => did;
    /// PASID.
    PASID [51:32]: u32 => pasid;
    reserved [8:6], [15:12], [63:52], [127:64];
}

nesting_core::bitfield! {
    /// PASID-based-device-TLB invalidate descriptor, type 8 (VT-d
    /// "PASID-based-Device-TLB Invalidate Descriptor").
    pub struct PasidDevTlbDsc([u64; 2]);
    /// Max invalidations pending.
    MIP [8:4]: u8 => mip;
    /// PFSID[3:0].
    PFSID_LO [15:12]: u8 => pfsid_lo;
    /// Source-id of the device.
    SID [31:16]: Bdf => sid;
    /// PASID.
    PASID [51:32]: u32 => pasid;
    /// PFSID[15:4].
    PFSID_HI [63:52]: u16 => pfsid_hi;
    /// G: every address of the PASID.
    G [64]: bool => global;
    /// Size bit.
    S [75]: bool => s;
    /// Address, bits 127:76.
    ADDR [127:76]: address => addr;
    reserved [74:65];
}

impl PasidDevTlbDsc {
    /// Physical function source-id: PFSID bits 15:4 above bits 3:0.
    pub fn pfsid(&self) -> u16 {
        u16::from(self.pfsid_lo()) | (self.pfsid_hi() << 4)
    }
}

nesting_core::bitfield! {
    /// Page group response descriptor, type 9 (VT-d "Page Group Response
    /// Descriptor").
    pub struct PageGroupResponseDsc([u64; 2]);
    /// PASID present.
    PP [4]: bool => pasid_present;
    /// Response code.
    CODE [15:12]: u8 => code;
    /// Requester-id.
    RID [31:16]: Bdf => rid;
    /// PASID.
    PASID [51:32]: u32 => pasid;
    /// Page request group index.
    PRG_INDEX [75:67]: u16 => prg_index;
    reserved [8:5], [63:52];
}

/// Context-cache invalidation granularity (6.5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcGranularity {
    /// 01: global.
    Global,
    /// 10: domain-selective.
    Domain,
    /// 11: device-selective.
    Device,
}

/// IOTLB invalidation granularity (VT-d "IOTLB Invalidate Descriptor").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbGranularity {
    /// 01: global.
    Global,
    /// 10: domain-selective.
    Domain,
    /// 11: page-selective within a domain.
    Page,
}

/// PASID-cache invalidation granularity (VT-d "PASID-cache Invalidate Descriptor").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcGranularity {
    /// 00: every PASID of a domain.
    Domain,
    /// 01: one PASID of a domain.
    Pasid,
    /// 11: global.
    Global,
}

/// One invalidation descriptor (VT-d 6.5.2.1 to 6.5.2.8, the descriptors of
/// "Queued Invalidation Interface"; VT-d "Page Group Response Descriptor").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// Type 1: context-cache invalidate.
    ContextCache {
        /// Granularity.
        g: CcGranularity,
        /// Domain-id.
        did: u16,
        /// Source-id.
        sid: u16,
        /// Function mask.
        fm: u8,
    },
    /// Type 2: IOTLB invalidate.
    Iotlb {
        /// Granularity.
        g: IotlbGranularity,
        /// Domain-id.
        did: u16,
        /// Page address.
        addr: u64,
        /// Address mask.
        am: u8,
        /// Invalidation hint.
        ih: bool,
    },
    /// Type 3: device-TLB invalidate.
    DeviceTlb {
        /// Source-id of the device.
        sid: u16,
        /// Physical function source-id (of the PF, for a VF; else the
        /// device's own).
        pfsid: u16,
        /// Max invalidations pending (Linux's QDEP).
        mip: u8,
        /// Address (with the size encoding of `s`).
        addr: u64,
        /// Size bit: the range is encoded in the low address bits.
        s: bool,
    },
    /// Type 4: interrupt entry cache invalidate (interrupt remapping is
    /// not modelled; accepted and completed).
    InterruptEntryCache,
    /// Type 5: invalidation wait.
    Wait {
        /// IF: raise the invalidation completion event.
        interrupt: bool,
        /// SW: write `data` at `addr`.
        status_write: bool,
        /// FN: fence.
        fence: bool,
        /// PD: drain page requests.
        page_drain: bool,
        /// Status data.
        data: u32,
        /// Status address (dword aligned).
        addr: u64,
    },
    /// Type 6: PASID-based IOTLB invalidate.
    PasidIotlb {
        /// Page-selective (G=11) rather than every page of the PASID
        /// (G=10).
        page: bool,
        /// Domain-id.
        did: u16,
        /// PASID.
        pasid: u32,
        /// Page address.
        addr: u64,
        /// Address mask.
        am: u8,
        /// Invalidation hint.
        ih: bool,
    },
    /// Type 7: PASID-cache invalidate.
    PasidCache {
        /// Granularity.
        g: PcGranularity,
        /// Domain-id.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// Type 8: PASID-based device-TLB invalidate.
    PasidDeviceTlb {
        /// Source-id of the device.
        sid: u16,
        /// Physical function source-id.
        pfsid: u16,
        /// Max invalidations pending.
        mip: u8,
        /// PASID.
        pasid: u32,
        /// Every address (G).
        global: bool,
        /// Address (with the size encoding of `s`).
        addr: u64,
        /// Size bit.
        s: bool,
    },
    /// Type 9: page group response.
    PageGroupResponse {
        /// Requester.
        rid: u16,
        /// PASID, if present.
        pasid: Option<u32>,
        /// Response code.
        code: u8,
        /// Page request group index.
        index: u16,
    },
}

/// The outcome of decoding one descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid descriptor.
    Ok(Descriptor),
    /// Not executable: IQE with this IQEI.
    Invalid(u8),
}

/// The type code of a descriptor's first quadword.
pub fn descriptor_type(q0: u64) -> u8 {
    DscHeader([q0, 0]).type_code()
}

fn check(reserved: bool, d: Descriptor) -> Decoded {
    if reserved {
        Decoded::Invalid(iqei::RESERVED)
    } else {
        Decoded::Ok(d)
    }
}

/// Decodes one descriptor (the first two quadwords; the upper half of a
/// 256-bit descriptor is reserved for every type the model implements and
/// ignored).
pub fn decode(q: [u64; 2], cfg: &VtdConfig) -> Decoded {
    let scalable = cfg.mode == VtdMode::Scalable;
    match DscHeader(q).type_code() {
        1 => decode_cc(ContextCacheDsc(q)),
        2 => decode_iotlb(IotlbDsc(q)),
        3 => decode_dtlb(DevTlbDsc(q)),
        4 => check(IecDsc(q).reserved_set(), Descriptor::InterruptEntryCache),
        5 => decode_wait(WaitDsc(q)),
        6 if scalable => decode_piotlb(PasidIotlbDsc(q)),
        7 if scalable => decode_pc(PasidCacheDsc(q)),
        8 if scalable => decode_pdtlb(PasidDevTlbDsc(q)),
        9 if cfg.prs => decode_pgrp(PageGroupResponseDsc(q)),
        _ => Decoded::Invalid(iqei::TYPE),
    }
}

fn decode_cc(d: ContextCacheDsc) -> Decoded {
    let g = match d.g() {
        1 => CcGranularity::Global,
        2 => CcGranularity::Domain,
        3 => CcGranularity::Device,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    check(
        d.reserved_set(),
        Descriptor::ContextCache {
            g,
            did: d.did(),
            sid: d.sid().0,
            fm: d.fm(),
        },
    )
}

fn decode_iotlb(d: IotlbDsc) -> Decoded {
    let g = match d.g() {
        1 => IotlbGranularity::Global,
        2 => IotlbGranularity::Domain,
        3 => IotlbGranularity::Page,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    // VT-d "IOTLB Invalidate Descriptor": AM above CAP.MAMV is a programming error.
    let bad_am = g == IotlbGranularity::Page && u64::from(d.am()) > MAMV;
    check(
        d.reserved_set() || bad_am,
        Descriptor::Iotlb {
            g,
            did: d.did(),
            addr: d.addr(),
            am: d.am(),
            ih: d.ih(),
        },
    )
}

fn decode_dtlb(d: DevTlbDsc) -> Decoded {
    check(
        d.reserved_set(),
        Descriptor::DeviceTlb {
            sid: d.sid().0,
            pfsid: d.pfsid(),
            mip: d.mip(),
            addr: d.addr(),
            s: d.s(),
        },
    )
}

fn decode_wait(d: WaitDsc) -> Decoded {
    check(
        d.reserved_set(),
        Descriptor::Wait {
            interrupt: d.interrupt(),
            status_write: d.status_write(),
            fence: d.fence(),
            page_drain: d.page_drain(),
            data: d.status_data(),
            addr: d.status_addr(),
        },
    )
}

fn decode_piotlb(d: PasidIotlbDsc) -> Decoded {
    // VT-d "PASID-based-IOTLB Invalidate Descriptor": G=10 all pages of the
    // PASID, G=11 page-selective; 00 and 01 are reserved.
    let page = match d.g() {
        2 => false,
        3 => true,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    check(
        d.reserved_set() || (page && u64::from(d.am()) > MAMV),
        Descriptor::PasidIotlb {
            page,
            did: d.did(),
            pasid: d.pasid(),
            addr: d.addr(),
            am: d.am(),
            ih: d.ih(),
        },
    )
}

fn decode_pc(d: PasidCacheDsc) -> Decoded {
    let g = match d.g() {
        0 => PcGranularity::Domain,
        1 => PcGranularity::Pasid,
        3 => PcGranularity::Global,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    check(
        d.reserved_set(),
        Descriptor::PasidCache {
            g,
            did: d.did(),
            pasid: d.pasid(),
        },
    )
}

fn decode_pdtlb(d: PasidDevTlbDsc) -> Decoded {
    check(
        d.reserved_set(),
        Descriptor::PasidDeviceTlb {
            sid: d.sid().0,
            pfsid: d.pfsid(),
            mip: d.mip(),
            pasid: d.pasid(),
            global: d.global(),
            addr: d.addr(),
            s: d.s(),
        },
    )
}

fn decode_pgrp(d: PageGroupResponseDsc) -> Decoded {
    check(
        d.reserved_set(),
        Descriptor::PageGroupResponse {
            rid: d.rid().0,
            pasid: d.pasid_present().then(|| d.pasid()),
            code: d.code(),
            index: d.prg_index(),
        },
    )
}

/// The byte range a device-TLB invalidation covers (VT-d "Device-TLB Invalidate
/// Descriptor": with S=1 the lowest clear bit of the address above bit 11 gives
/// the size; all ones above bit 11 means every address).
pub fn dev_tlb_range(addr: u64, s: bool) -> (u64, u64) {
    if !s {
        return (addr & !0xfff, 4096);
    }
    let above = addr >> 12;
    let ones = above.trailing_ones();
    // Bits 63:12 all ones (or all but the top one) cover everything.
    if ones >= 51 {
        return (0, u64::MAX);
    }
    let len = 4096u64 << (ones + 1);
    (addr & !(len - 1), len)
}
