//! How the model's translations are tagged in nesting-core's IOTLB, and
//! which cached translations each TLB and configuration invalidation
//! removes (IHI 0070 "TLB tagging, VMIDs, ASIDs and participation
//! in broadcast TLB maintenance"; "TLB invalidation";
//! "Configuration structure invalidation").
//!
//! The IOTLB is keyed by StreamID and SubstreamID, and an entry holds the
//! whole translation of its stream's current configuration. Its tag says
//! what the TLB entries it stands for were tagged with:
//! `domain = kind << 16 | VMID`, `asid = Some(ASID)` for non-global
//! stage-1 translations. An invalidation removes every entry a TLB
//! holding such entries would have to drop; entries keyed by stream also
//! go when that stream's configuration is invalidated, since their key no
//! longer names what the tables say.

use nesting_core::iotlb::{IotlbInvalidation, IotlbTag};
use nesting_core::types::{Iova, Pasid, RequesterId, StreamId};

/// What a cached translation was made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Stage 1 only, non-global (ASID- and VMID-tagged).
    S1 = 0,
    /// Stage 1 only, global (VMID-tagged, any ASID).
    S1Global = 1,
    /// Stage 2 only (IOVA is the IPA).
    S2 = 2,
    /// Stage 1 over stage 2, non-global.
    Nested = 3,
    /// Stage 1 over stage 2, global.
    NestedGlobal = 4,
    /// STE bypass (or stage-1 bypass without stage 2): only a
    /// configuration change removes it.
    Bypass = 5,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::S1,
        Kind::S1Global,
        Kind::S2,
        Kind::Nested,
        Kind::NestedGlobal,
        Kind::Bypass,
    ];

    /// This kind's bit in a set of kinds.
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The stage-1 kinds (removed by TLBI_NH_*).
    pub const STAGE1: [Kind; 4] = [Kind::S1, Kind::S1Global, Kind::Nested, Kind::NestedGlobal];
}

/// The IOTLB tag of a translation.
pub fn tag(kind: Kind, vmid: u16, asid: Option<u16>) -> IotlbTag {
    IotlbTag {
        domain: (u32::from(kind as u8) << 16) | u32::from(vmid),
        asid: asid.map(u32::from),
    }
}

/// The IOTLB requester of a StreamID.
pub fn requester(sid: u32) -> RequesterId {
    RequesterId::Stream(StreamId(sid))
}

/// An address range a TLBI removes: `[addr, addr + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First address.
    pub addr: u64,
    /// Length in bytes (saturating).
    pub len: u64,
}

/// What to remove from the IOTLB, in the model's own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything.
    All,
    /// Every entry of these kinds in a VMID.
    Vmid {
        /// Kinds, as a bit set.
        kinds: u8,
        /// VMID.
        vmid: u16,
    },
    /// Non-global stage-1 entries of one ASID in a VMID.
    Asid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// Entries of these kinds overlapping an address range; with `asid`,
    /// only that ASID's non-global entries and every global one.
    Range {
        /// Kinds, as a bit set.
        kinds: u8,
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: Option<u16>,
        /// The range.
        span: Span,
    },
    /// Every entry of a stream.
    Stream {
        /// StreamID.
        sid: u32,
    },
    /// Every entry of a stream's SubstreamID.
    Substream {
        /// StreamID.
        sid: u32,
        /// SubstreamID.
        ssid: u32,
    },
}

/// Appends the IOTLB invalidations of `scope` to `out`, skipping kinds
/// not in `present` (nothing of them was cached since the last full
/// invalidation).
pub fn invalidations(scope: Scope, present: u8, out: &mut Vec<IotlbInvalidation>) {
    let kinds_of = |kinds: u8| {
        Kind::ALL
            .into_iter()
            .filter(move |k| kinds & present & k.bit() != 0)
    };
    match scope {
        Scope::All => out.push(IotlbInvalidation::All),
        Scope::Vmid { kinds, vmid } => {
            out.extend(kinds_of(kinds).map(|k| IotlbInvalidation::Domain {
                domain: tag(k, vmid, None).domain,
            }))
        }
        Scope::Asid { vmid, asid } => {
            out.extend(kinds_of(Kind::S1.bit() | Kind::Nested.bit()).map(|k| {
                IotlbInvalidation::Asid {
                    domain: tag(k, vmid, None).domain,
                    asid: u32::from(asid),
                }
            }))
        }
        Scope::Range {
            kinds,
            vmid,
            asid,
            span,
        } => out.extend(kinds_of(kinds).map(|k| {
            let global = matches!(k, Kind::S1Global | Kind::NestedGlobal);
            IotlbInvalidation::Range {
                domain: tag(k, vmid, None).domain,
                asid: if global { None } else { asid.map(u32::from) },
                iova: Iova(span.addr),
                len: span.len,
            }
        })),
        Scope::Stream { sid } => out.push(IotlbInvalidation::Requester {
            rid: requester(sid),
        }),
        Scope::Substream { sid, ssid } => match Pasid::new(ssid) {
            Some(pasid) => out.push(IotlbInvalidation::Pasid {
                rid: requester(sid),
                pasid,
            }),
            None => out.push(IotlbInvalidation::Requester {
                rid: requester(sid),
            }),
        },
    }
}

/// The kind bits of the stage-1 kinds.
pub const STAGE1_KINDS: u8 =
    Kind::S1.bit() | Kind::S1Global.bit() | Kind::Nested.bit() | Kind::NestedGlobal.bit();

/// Every kind a VMID tags (TLBI_S12_VMALL).
pub const VMID_KINDS: u8 = STAGE1_KINDS | Kind::S2.bit();

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(scope: Scope) -> Vec<IotlbInvalidation> {
        let mut v = Vec::new();
        invalidations(scope, 0xff, &mut v);
        v
    }

    #[test]
    fn tag_packs_kind_above_vmid() {
        let t = tag(Kind::Nested, 0x1234, Some(7));
        assert_eq!(t.domain, 0x3_1234);
        assert_eq!(t.asid, Some(7));
    }

    #[test]
    fn asid_scope_spares_global_and_stage2_entries() {
        let v = inv(Scope::Asid { vmid: 1, asid: 5 });
        assert_eq!(v.len(), 2);
        assert!(
            v.iter()
                .all(|i| matches!(i, IotlbInvalidation::Asid { asid: 5, .. }))
        );
    }

    #[test]
    fn range_with_asid_removes_global_entries_of_any_asid() {
        let span = Span {
            addr: 0x1000,
            len: 0x1000,
        };
        let v = inv(Scope::Range {
            kinds: STAGE1_KINDS,
            vmid: 0,
            asid: Some(3),
            span,
        });
        assert_eq!(v.len(), 4);
        let global = tag(Kind::S1Global, 0, None).domain;
        assert!(v.contains(&IotlbInvalidation::Range {
            domain: global,
            asid: None,
            iova: Iova(0x1000),
            len: 0x1000
        }));
    }

    #[test]
    fn absent_kinds_are_skipped() {
        let mut v = Vec::new();
        invalidations(
            Scope::Vmid {
                kinds: VMID_KINDS,
                vmid: 2,
            },
            Kind::S2.bit(),
            &mut v,
        );
        assert_eq!(v.len(), 1);
    }
}
