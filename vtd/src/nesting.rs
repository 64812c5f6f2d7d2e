//! What the unit tells its passthrough backend ([`crate::passthrough`]).
//!
//! Every guest action that can change what a passthrough device must see
//! becomes a [`VtdEvent`]: translation enabled or disabled, a new root
//! table, and every invalidation the guest issues (register-based or
//! queued), with its scope. The backend takes them at each sync point (an
//! invalidation wait, a register-based invalidation, the end of a register
//! write) and:
//!
//! - **shadows** (caching mode, VT-d 6.1): on each IOTLB / PASID-based
//!   IOTLB event it re-reads the affected range with
//!   [`crate::Vtd::table_view`] (a whole domain after domain-selective
//!   ones) and mirrors the result (in caching mode the guest invalidates
//!   after making entries valid, so the invalidation is how shadowing
//!   learns of maps);
//! - **nests**: on context / PASID-cache events it re-reads the PASID
//!   entry ([`crate::Vtd::pasid_entry`]) and (re)builds the stage-1 HWPT
//!   from it; IOTLB events become batched stage-1 invalidation entries.
//!
//! The queue of pending events is bounded ([`MAX_PENDING_EVENTS`]); if it
//! overflows, it collapses into one [`VtdEvent::Resync`], after which the
//! backend treats everything as changed.

use std::collections::VecDeque;

use nesting_core::iotlb::IotlbInvalidation;
use nesting_core::types::{Bdf, Iova, RequesterId};

use crate::queue::{self, CcGranularity, Descriptor, IotlbGranularity, PcGranularity};

/// Most events kept for a nesting layer that has not drained them: a
/// guest can issue invalidations much faster than a consumer that never
/// runs drains them, and this bounds the memory that costs (one queued
/// invalidation queue's worth: 2^15 descriptors).
pub const MAX_PENDING_EVENTS: usize = 1 << 15;

/// Scope of a context-cache invalidation (VT-d "Context Command Register", 6.5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextScope {
    /// Every context entry.
    Global,
    /// Entries of one domain.
    Domain {
        /// Domain-id.
        did: u16,
    },
    /// Entries of one device (and its function-mask siblings).
    Device {
        /// Domain-id.
        did: u16,
        /// Source-id.
        sid: u16,
        /// Function mask: 0 none, 1..3 = mask bits 2:0 of the function.
        fm: u8,
    },
}

/// Scope of an IOTLB invalidation (VT-d "IOTLB Registers", VT-d "IOTLB
/// Invalidate Descriptor", VT-d "PASID-based-IOTLB Invalidate Descriptor").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbScope {
    /// Everything.
    Global,
    /// One domain, every PASID.
    Domain {
        /// Domain-id.
        did: u16,
    },
    /// Pages of one domain (domain-granular translations).
    Pages {
        /// Domain-id.
        did: u16,
        /// First address, aligned to the range.
        addr: u64,
        /// 2^am 4 KiB pages.
        am: u8,
        /// Invalidation hint: only leaf entries changed.
        ih: bool,
    },
    /// Every translation of one PASID in one domain.
    Pasid {
        /// Domain-id.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// Pages of one PASID in one domain.
    PasidPages {
        /// Domain-id.
        did: u16,
        /// PASID.
        pasid: u32,
        /// First address, aligned to the range.
        addr: u64,
        /// 2^am 4 KiB pages.
        am: u8,
        /// Invalidation hint.
        ih: bool,
    },
}

impl IotlbScope {
    /// The address range of a page-selective scope, as (first, length).
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            IotlbScope::Pages { addr, am, .. } | IotlbScope::PasidPages { addr, am, .. } => {
                let len = 4096u64 << am.min(51);
                Some((addr & !(len - 1), len))
            }
            _ => None,
        }
    }
}

/// Scope of a PASID-cache invalidation (VT-d "PASID-cache Invalidate Descriptor").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidScope {
    /// Every PASID entry.
    Global,
    /// Every PASID entry of a domain.
    Domain {
        /// Domain-id.
        did: u16,
    },
    /// One PASID of one domain.
    Pasid {
        /// Domain-id.
        did: u16,
        /// PASID.
        pasid: u32,
    },
}

/// Something a nesting layer must react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdEvent {
    /// GCMD.TE changed (11.4 GCMD_REG): with translation off, DMA is untranslated.
    TranslationEnabled(bool),
    /// GCMD.SRTP latched a new root table (11.4 GCMD_REG).
    RootTable {
        /// Root table address.
        addr: u64,
        /// RTADDR.TTM.
        ttm: u8,
    },
    /// Context-cache invalidation.
    Context(ContextScope),
    /// PASID-cache invalidation.
    PasidCache(PasidScope),
    /// IOTLB or PASID-based IOTLB invalidation.
    Iotlb(IotlbScope),
    /// Device-TLB or PASID-based device-TLB invalidation (VT-d "Device-TLB Invalidate Descriptor",
    /// 6.5.2.6): forward to a passthrough device's ATS cache.
    DeviceTlb {
        /// Source-id of the device.
        sid: u16,
        /// PASID, for the PASID-based form.
        pasid: Option<u32>,
        /// First address.
        addr: u64,
        /// Length in bytes (`u64::MAX`: everything).
        len: u64,
    },
    /// Page group response (VT-d "Page Group Response Descriptor") for a page
    /// request the model forwarded.
    PageGroupResponse {
        /// Requester.
        rid: u16,
        /// PASID, if the request had one.
        pasid: Option<u32>,
        /// Page request group index.
        index: u16,
        /// Response code (0 success, 1 invalid, 0xf failure).
        code: u8,
    },
    /// Events were lost: re-read everything.
    Resync,
}

/// The bounded queue of events.
#[derive(Clone, Debug, Default)]
pub struct EventQueue {
    q: VecDeque<VtdEvent>,
}

impl EventQueue {
    /// Queues one event, collapsing the queue into [`VtdEvent::Resync`] at
    /// [`MAX_PENDING_EVENTS`].
    pub fn push(&mut self, e: VtdEvent) {
        if self.q.len() >= MAX_PENDING_EVENTS {
            nesting_core::guest_log!(
                Warn,
                "vtd: {MAX_PENDING_EVENTS} undrained nesting events, collapsing to resync"
            );
            self.q.clear();
            self.q.push_back(VtdEvent::Resync);
        }
        if self.q.back() != Some(&VtdEvent::Resync) || e != VtdEvent::Resync {
            self.q.push_back(e);
        }
    }

    /// Takes every queued event.
    pub fn drain(&mut self) -> Vec<VtdEvent> {
        self.q.drain(..).collect()
    }

    /// Number queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// The stage-1 description a nested HWPT gets for a guest PASID entry
/// (iommufd's `struct iommu_hwpt_vtd_s1`): only first-stage entries nest
/// (PGTT=001; the host supplies the second stage). `None` for every other
/// translation type, which a nesting layer shadows or refuses instead.
pub fn stage1_hwpt(entry: &crate::tables::PasidEntry) -> Option<nesting_core::host::HwptData> {
    use crate::tables::Pgtt;
    use nesting_core::host::{HwptData, VtdS1Flags};
    if entry.pgtt() != Pgtt::FirstStage {
        return None;
    }
    // 9.6 FSPM: 0 = 4-level (48-bit), 1 = 5-level (57-bit).
    let addr_width = match entry.fspm() {
        0 => 48,
        1 => 57,
        _ => return None,
    };
    let mut flags = VtdS1Flags::empty();
    for (on, flag) in [
        (entry.sre(), VtdS1Flags::SRE),
        (entry.wpe(), VtdS1Flags::WPE),
        (entry.eafe(), VtdS1Flags::EAFE),
    ] {
        if on {
            flags |= flag;
        }
    }
    Some(HwptData::VtdS1 {
        flags,
        pgtbl_addr: entry.fsptptr(),
        addr_width,
    })
}

/// The stage-1 invalidation entry (iommufd's
/// `struct iommu_hwpt_vtd_s1_invalidate`) an IOTLB event becomes for the
/// nested HWPT of its PASID: page-selective scopes keep their range and
/// invalidation hint; wider scopes invalidate everything.
pub fn stage1_invalidation(scope: &IotlbScope) -> nesting_core::host::VtdS1Invalidation {
    use nesting_core::host::VtdS1Invalidation;
    match *scope {
        IotlbScope::Pages { ih, .. } | IotlbScope::PasidPages { ih, .. } => {
            let (addr, len) = scope.range().unwrap_or((0, u64::MAX));
            VtdS1Invalidation {
                addr,
                npages: len / 4096,
                leaf: ih,
            }
        }
        _ => VtdS1Invalidation {
            addr: 0,
            npages: u64::MAX,
            leaf: false,
        },
    }
}

// ---------------------------------------------------------------------------
// From descriptors to events, and what each drops from the IOTLB.

/// What an event removes from the translation cache (6.5: each
/// invalidation removes at least the entries its scope names; the cache
/// may remove more).
pub(crate) fn cache_invalidations(ev: &VtdEvent) -> Vec<IotlbInvalidation> {
    use IotlbInvalidation as I;
    match *ev {
        VtdEvent::TranslationEnabled(_) | VtdEvent::RootTable { .. } | VtdEvent::Resync => {
            vec![I::All]
        }
        VtdEvent::Context(ContextScope::Global)
        | VtdEvent::PasidCache(PasidScope::Global)
        | VtdEvent::Iotlb(IotlbScope::Global) => vec![I::All],
        VtdEvent::Context(ContextScope::Domain { did })
        | VtdEvent::PasidCache(PasidScope::Domain { did })
        | VtdEvent::Iotlb(IotlbScope::Domain { did }) => vec![I::Domain {
            domain: u32::from(did),
        }],
        VtdEvent::Context(ContextScope::Device { sid, fm, .. }) => function_siblings(sid, fm)
            .map(|s| I::Requester {
                rid: RequesterId::Pci(Bdf(s)),
            })
            .collect(),
        VtdEvent::PasidCache(PasidScope::Pasid { did, pasid })
        | VtdEvent::Iotlb(IotlbScope::Pasid { did, pasid }) => vec![I::Asid {
            domain: u32::from(did),
            asid: pasid,
        }],
        VtdEvent::Iotlb(
            scope @ (IotlbScope::Pages { did, .. } | IotlbScope::PasidPages { did, .. }),
        ) => {
            let asid = match scope {
                IotlbScope::PasidPages { pasid, .. } => Some(pasid),
                _ => None,
            };
            let (first, len) = scope.range().unwrap_or((0, u64::MAX));
            vec![I::Range {
                domain: u32::from(did),
                asid,
                iova: Iova(first),
                len,
            }]
        }
        VtdEvent::DeviceTlb { .. } | VtdEvent::PageGroupResponse { .. } => Vec::new(),
    }
}

/// The source-ids a device-selective context invalidation covers
/// (11.4 CCMD_REG FM): 01 masks bit 2 of the function number, 10 bits 2:1, 11
/// bits 2:0.
pub(crate) fn function_siblings(sid: u16, fm: u8) -> impl Iterator<Item = u16> {
    let mask: u16 = match fm {
        1 => 0b100,
        2 => 0b110,
        3 => 0b111,
        _ => 0,
    };
    let base = sid & !mask;
    (0..8u16)
        .filter(move |f| f & !mask == 0)
        .map(move |f| base | f)
}

/// The event of a translation-cache invalidation descriptor (context-cache,
/// PASID-cache, IOTLB and PASID-based-IOTLB invalidate descriptors, VT-d
/// 6.5.2.1 and the three "... Invalidate Descriptor" sections after it).
pub(crate) fn cache_event(d: Descriptor) -> Option<VtdEvent> {
    Some(match d {
        Descriptor::ContextCache { g, did, sid, fm } => VtdEvent::Context(match g {
            CcGranularity::Global => ContextScope::Global,
            CcGranularity::Domain => ContextScope::Domain { did },
            CcGranularity::Device => ContextScope::Device { did, sid, fm },
        }),
        Descriptor::Iotlb {
            g,
            did,
            addr,
            am,
            ih,
        } => VtdEvent::Iotlb(match g {
            IotlbGranularity::Global => IotlbScope::Global,
            IotlbGranularity::Domain => IotlbScope::Domain { did },
            IotlbGranularity::Page => IotlbScope::Pages { did, addr, am, ih },
        }),
        Descriptor::PasidIotlb {
            page: true,
            did,
            pasid,
            addr,
            am,
            ih,
        } => VtdEvent::Iotlb(IotlbScope::PasidPages {
            did,
            pasid,
            addr,
            am,
            ih,
        }),
        Descriptor::PasidIotlb { did, pasid, .. } => {
            VtdEvent::Iotlb(IotlbScope::Pasid { did, pasid })
        }
        Descriptor::PasidCache { g, did, pasid } => VtdEvent::PasidCache(match g {
            PcGranularity::Global => PasidScope::Global,
            PcGranularity::Domain => PasidScope::Domain { did },
            PcGranularity::Pasid => PasidScope::Pasid { did, pasid },
        }),
        _ => return None,
    })
}

/// The event of a device-side descriptor (VT-d "Device-TLB Invalidate
/// Descriptor", 6.5.2.6, VT-d "Page Group Response Descriptor").
pub(crate) fn device_event(d: Descriptor) -> Option<VtdEvent> {
    Some(match d {
        Descriptor::DeviceTlb { sid, addr, s, .. } => {
            let (addr, len) = queue::dev_tlb_range(addr, s);
            VtdEvent::DeviceTlb {
                sid,
                pasid: None,
                addr,
                len,
            }
        }
        Descriptor::PasidDeviceTlb {
            sid,
            pasid,
            global,
            addr,
            s,
            ..
        } => {
            let (addr, len) = if global {
                (0, u64::MAX)
            } else {
                queue::dev_tlb_range(addr, s)
            };
            VtdEvent::DeviceTlb {
                sid,
                pasid: Some(pasid),
                addr,
                len,
            }
        }
        Descriptor::PageGroupResponse {
            rid,
            pasid,
            code,
            index,
        } => VtdEvent::PageGroupResponse {
            rid,
            pasid,
            index,
            code,
        },
        _ => return None,
    })
}
