//! Queued invalidation (VT-d 6.5.2): descriptor formats and their decoder.
//!
//! Decoding is total: every 128- or 256-bit pattern decodes to a
//! [`Descriptor`] or to [`Decoded::Invalid`] with the IQER.IQEI code the
//! unit reports for it (11.4.9.9: 3 = invalid descriptor type, 4 =
//! reserved field violation for a valid type).

use crate::options::{VtdConfig, VtdMode};
use nesting_core::bits::Field;

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

/// Descriptor type: bits 3:0 plus type[6:4] in bits 11:9 (6.5.2).
const TYPE_LO: Field = Field::bits(3, 0);
const TYPE_HI: Field = Field::bits(11, 9);
/// Granularity, bits 5:4 of most descriptors.
const G: Field = Field::bits(5, 4);
/// Domain-id, bits 31:16.
const DID: Field = Field::bits(31, 16);
/// PASID, bits 51:32.
const PASID: Field = Field::bits(51, 32);
/// Address in the second quadword, bits 63:12.
const ADDR: Field = Field::bits(63, 12);
/// Address mask, second quadword bits 5:0.
const AM: Field = Field::bits(5, 0);
/// Invalidation hint, second quadword bit 6.
const IH: Field = Field::bit(6);

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
    (TYPE_LO.get(q0) | (TYPE_HI.get(q0) << 4)) as u8
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
    let [q0, q1] = q;
    let scalable = cfg.mode == VtdMode::Scalable;
    match descriptor_type(q0) {
        1 => decode_cc(q0, q1),
        2 => decode_iotlb(q0, q1),
        3 => decode_dtlb(q0, q1),
        4 => check(
            q0 & (Field::bits(8, 5).mask()
                | Field::bits(26, 12).mask()
                | Field::bits(63, 48).mask())
                != 0
                || q1 != 0,
            Descriptor::InterruptEntryCache,
        ),
        5 => decode_wait(q0, q1),
        6 if scalable => decode_piotlb(q0, q1),
        7 if scalable => decode_pc(q0, q1),
        8 if scalable => decode_pdtlb(q0, q1),
        9 if cfg.prs => decode_pgrp(q0, q1),
        _ => Decoded::Invalid(iqei::TYPE),
    }
}

fn decode_cc(q0: u64, q1: u64) -> Decoded {
    let g = match G.get(q0) {
        1 => CcGranularity::Global,
        2 => CcGranularity::Domain,
        3 => CcGranularity::Device,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    let rsvd = Field::bits(8, 6).mask() | Field::bits(15, 12).mask() | Field::bits(63, 50).mask();
    check(
        q0 & rsvd != 0 || q1 != 0,
        Descriptor::ContextCache {
            g,
            did: DID.get(q0) as u16,
            sid: Field::bits(47, 32).get(q0) as u16,
            fm: Field::bits(49, 48).get(q0) as u8,
        },
    )
}

fn decode_iotlb(q0: u64, q1: u64) -> Decoded {
    let g = match G.get(q0) {
        1 => IotlbGranularity::Global,
        2 => IotlbGranularity::Domain,
        3 => IotlbGranularity::Page,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    let am = AM.get(q1);
    let rsvd0 = Field::bit(8).mask() | Field::bits(15, 12).mask() | Field::bits(63, 32).mask();
    // VT-d "IOTLB Invalidate Descriptor": AM above CAP.MAMV is a programming error.
    let bad_am = g == IotlbGranularity::Page && am > MAMV;
    check(
        q0 & rsvd0 != 0 || q1 & Field::bits(11, 7).mask() != 0 || bad_am,
        Descriptor::Iotlb {
            g,
            did: DID.get(q0) as u16,
            addr: ADDR.mask() & q1,
            am: am as u8,
            ih: IH.is_set(q1),
        },
    )
}

/// PFSID of the device-TLB descriptors: bits 15:12 hold PFSID[3:0],
/// bits 63:52 PFSID[15:4].
fn pfsid(q0: u64) -> u16 {
    (Field::bits(15, 12).get(q0) | (Field::bits(63, 52).get(q0) << 4)) as u16
}

fn decode_dtlb(q0: u64, q1: u64) -> Decoded {
    let rsvd0 = Field::bits(8, 4).mask() | Field::bits(31, 21).mask() | Field::bits(51, 48).mask();
    check(
        q0 & rsvd0 != 0 || q1 & Field::bits(11, 1).mask() != 0,
        Descriptor::DeviceTlb {
            sid: Field::bits(47, 32).get(q0) as u16,
            pfsid: pfsid(q0),
            mip: Field::bits(20, 16).get(q0) as u8,
            addr: ADDR.mask() & q1,
            s: Field::bit(0).is_set(q1),
        },
    )
}

fn decode_wait(q0: u64, q1: u64) -> Decoded {
    check(
        q0 & (Field::bit(8).mask() | Field::bits(31, 12).mask()) != 0
            || q1 & Field::bits(1, 0).mask() != 0,
        Descriptor::Wait {
            interrupt: Field::bit(4).is_set(q0),
            status_write: Field::bit(5).is_set(q0),
            fence: Field::bit(6).is_set(q0),
            page_drain: Field::bit(7).is_set(q0),
            data: Field::bits(63, 32).get(q0) as u32,
            addr: Field::bits(63, 2).mask() & q1,
        },
    )
}

fn decode_piotlb(q0: u64, q1: u64) -> Decoded {
    // VT-d "PASID-based-IOTLB Invalidate Descriptor": G=10 all pages of the
    // PASID, G=11 page-selective; 00 and 01 are reserved.
    let page = match G.get(q0) {
        2 => false,
        3 => true,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    let am = AM.get(q1);
    let rsvd0 = Field::bits(8, 6).mask() | Field::bits(15, 12).mask() | Field::bits(63, 52).mask();
    check(
        q0 & rsvd0 != 0 || q1 & Field::bits(11, 7).mask() != 0 || (page && am > MAMV),
        Descriptor::PasidIotlb {
            page,
            did: DID.get(q0) as u16,
            pasid: PASID.get(q0) as u32,
            addr: ADDR.mask() & q1,
            am: am as u8,
            ih: IH.is_set(q1),
        },
    )
}

fn decode_pc(q0: u64, q1: u64) -> Decoded {
    let g = match G.get(q0) {
        0 => PcGranularity::Domain,
        1 => PcGranularity::Pasid,
        3 => PcGranularity::Global,
        _ => return Decoded::Invalid(iqei::RESERVED),
    };
    let rsvd0 = Field::bits(8, 6).mask() | Field::bits(15, 12).mask() | Field::bits(63, 52).mask();
    check(
        q0 & rsvd0 != 0 || q1 != 0,
        Descriptor::PasidCache {
            g,
            did: DID.get(q0) as u16,
            pasid: PASID.get(q0) as u32,
        },
    )
}

fn decode_pdtlb(q0: u64, q1: u64) -> Decoded {
    check(
        q1 & Field::bits(10, 1).mask() != 0,
        Descriptor::PasidDeviceTlb {
            sid: DID.get(q0) as u16,
            pfsid: pfsid(q0),
            mip: Field::bits(8, 4).get(q0) as u8,
            pasid: PASID.get(q0) as u32,
            global: Field::bit(0).is_set(q1),
            addr: ADDR.mask() & q1,
            s: Field::bit(11).is_set(q1),
        },
    )
}

fn decode_pgrp(q0: u64, q1: u64) -> Decoded {
    let pasid = Field::bit(4).is_set(q0).then(|| PASID.get(q0) as u32);
    check(
        q0 & (Field::bits(8, 5).mask() | Field::bits(63, 52).mask()) != 0,
        Descriptor::PageGroupResponse {
            rid: DID.get(q0) as u16,
            pasid,
            code: Field::bits(15, 12).get(q0) as u8,
            index: Field::bits(11, 3).get(q1) as u16,
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
