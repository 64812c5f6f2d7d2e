//! ATS for emulated PCIe devices (IHI 0070 "Support for PCI Express,
//! PASIDs, PRI and ATS"): translation requests answered from the
//! stream's configuration, translated transactions checked against
//! STE.EATS when CR0.ATSCHK is set, and CMD_ATC_INV delivered to the
//! device's ATC through the VMM.

use nesting_core::types::Access;
use vm_memory::GuestMemory;

use crate::cd::override_attrs;
use crate::event::{Event, EventId};
use crate::model::{Smmuv3, TranslateResult, to_translation};
use crate::regs::{cr0, off};
use crate::strtab::{Eats, S2Ste, SteConfig, SteMode};
use crate::tlb::{Kind, tag};
use crate::translate::{
    Fault, Outcome, Purpose, Request, Resolved, fault_of_walk, fetch_ste, resolve_with,
};
use crate::walk::{Direct, Walk, WalkReq, walk};

/// A CMD_ATC_INV for a device's ATC (IHI 0070 CMD_ATC_INV).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtcInvalidation {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if SSV.
    pub ssid: Option<u32>,
    /// Every SubstreamID of the stream (Global).
    pub global: bool,
    /// Address, 4 KiB aligned.
    pub addr: u64,
    /// 2^Size 4 KiB pages, aligned; 52 or more: everything.
    pub size: u8,
}

impl AtcInvalidation {
    /// The addresses covered: `(first, len)`; the whole space for Size >= 52.
    pub fn range(&self) -> (u64, u64) {
        if self.size >= 52 {
            return (0, u64::MAX);
        }
        let len = 1u64 << (12 + u32::from(self.size));
        (self.addr & !(len - 1), len)
    }
}

/// An ATS translation request of an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtsRequest {
    /// StreamID.
    pub sid: u32,
    /// PASID, if the request carries one.
    pub ssid: Option<u32>,
    /// Untranslated address.
    pub addr: u64,
    /// What the device intends: READ, WRITE (without the PCIe no-write
    /// hint), EXEC, PRIV.
    pub access: Access,
}

/// The SMMU's answer to a translation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtsResponse {
    /// PCIe Unsupported Request: ATS is off for the stream, the SMMU is
    /// disabled, or its configuration is broken (an event says why).
    UnsupportedRequest,
    /// A translation completion: `granted` may be empty (R = W = 0: the
    /// translation faulted, nothing recorded; the device may issue a page
    /// request). `addr` is physical, or an IPA for split-stage ATS.
    Translated {
        /// Translated address of the region's first byte.
        addr: u64,
        /// Untranslated address of the region's first byte.
        input: u64,
        /// log2 of the region size.
        shift: u32,
        /// READ, WRITE, EXEC granted.
        granted: Access,
    },
}

impl Smmuv3 {
    /// Answers an ATS translation request (IHI 0070 "ATS
    /// Interface"). Translation-related faults are not recorded (the
    /// response carries no permission); configuration errors are, and get
    /// Unsupported Request, as does an STE with EATS = 0 (F_BAD_ATS_TREQ).
    /// A write request gets write permission only after the dirty state
    /// is updated, since the device will write without asking again.
    pub fn translation_request<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        r: &AtsRequest,
    ) -> AtsResponse {
        if !self.caps.ats || !self.enabled() {
            return AtsResponse::UnsupportedRequest;
        }
        let req = Request {
            sid: r.sid,
            ssid: r.ssid,
            addr: r.addr,
            access: r.access,
        };
        let st = self.stream_table();
        let ste = match fetch_ste(mem, &self.caps, &st, &req, &mut self.cfg_cache) {
            Ok(s) => s,
            Err(f) => {
                self.report(mem, &req, &f);
                return AtsResponse::UnsupportedRequest;
            }
        };
        let purpose = match (ste.mode, ste.eats) {
            (SteMode::Abort, _) => return AtsResponse::UnsupportedRequest,
            (SteMode::Bypass, _) => Purpose::Transaction,
            (_, Eats::Off) => {
                let mut ev = Event::config(EventId::BadAtsTreq, r.sid, r.ssid);
                ev.access = r.access;
                ev.addr = r.addr;
                self.report(mem, &req, &Fault::config_event(ev));
                return AtsResponse::UnsupportedRequest;
            }
            (_, Eats::Full) => Purpose::Transaction,
            (_, Eats::Split) => Purpose::AtsStage1Only,
        };
        let access = override_attrs(r.access, ste.instcfg, ste.privcfg);
        let cache = &mut self.cfg_cache;
        match resolve_with(mem, &self.caps, &ste, &req, access, purpose, cache) {
            Outcome::Mapped(m) => AtsResponse::Translated {
                addr: m.oa,
                input: m.iova,
                shift: m.shift,
                granted: m.granted,
            },
            Outcome::Fault(f) => self.ats_fault(mem, &req, &f),
        }
    }

    /// A translation request that faulted: a translation-related fault is
    /// not recorded and answered with no permission (the device may issue
    /// a page request); anything else is recorded and Unsupported Request.
    fn ats_fault<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request,
        f: &Fault,
    ) -> AtsResponse {
        if f.event.is_none_or(|e| e.id.is_translation_related()) {
            return AtsResponse::Translated {
                addr: 0,
                input: req.addr & !0xfff,
                shift: 12,
                granted: Access::empty(),
            };
        }
        self.report(mem, req, f);
        AtsResponse::UnsupportedRequest
    }

    /// A translated transaction (PCIe AT = Translated) of an emulated ATS
    /// device at `addr`. With CR0.ATSCHK = 1 the stream must allow ATS
    /// (STE.EATS != 0), else F_TRANSL_FORBIDDEN; split-stage ATS sends the
    /// address (an IPA) through stage 2; otherwise it is used as is
    /// (IHI 0070 "ATS Interface", SMMU_CR0.ATSCHK). With SMMUEN = 0, GBPA applies.
    pub fn translate_translated<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sid: u32,
        addr: u64,
        access: Access,
    ) -> TranslateResult {
        let req = Request {
            sid,
            ssid: None,
            addr,
            access,
        };
        if !self.enabled() {
            return self.translate(mem, sid, None, nesting_core::types::Iova(addr), access);
        }
        let check = cr0::ATSCHK.is_set(self.regs.get(off::CR0ACK));
        let st = self.stream_table();
        let ste = match fetch_ste(mem, &self.caps, &st, &req, &mut self.cfg_cache) {
            Ok(s) => Some(s),
            Err(f) if check => return self.report(mem, &req, &f),
            Err(_) => None,
        };
        let eats = ste.map_or(Eats::Full, |s| s.eats);
        let bypass = ste.is_some_and(|s| s.mode == SteMode::Bypass);
        if check && eats == Eats::Off && !bypass {
            let mut ev = Event::config(EventId::TranslForbidden, sid, None);
            ev.access = access;
            ev.addr = addr;
            return self.report(mem, &req, &Fault::config_event(ev));
        }
        if let Some(s) = ste
            && s.eats == Eats::Split
            && let Some(s2) = s.s2
        {
            return self.translated_through_stage2(mem, &req, &s, &s2);
        }
        let m = Resolved {
            iova: addr & !0xfff,
            oa: addr & !0xfff,
            shift: 12,
            granted: Access::READ | Access::WRITE | Access::EXEC,
            tag: tag(Kind::Bypass, 0, None),
            kind: Kind::Bypass,
            cacheable: false,
        };
        TranslateResult::Mapped(to_translation(&m, access))
    }

    /// A translated transaction of a split-stage ATS stream: its address
    /// is an IPA, translated by stage 2 (never cached: the device's ATC
    /// holds the stage-1 part).
    fn translated_through_stage2<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request,
        ste: &SteConfig,
        s2: &S2Ste,
    ) -> TranslateResult {
        let w = WalkReq {
            addr: req.addr,
            access: req.access,
            table_walk: false,
        };
        match walk(mem, &s2.table, &mut Direct, &w) {
            Walk::Mapped(l) => {
                let m = Resolved {
                    iova: req.addr & !((1u64 << l.shift) - 1),
                    oa: l.oa,
                    shift: l.shift,
                    granted: l.granted,
                    tag: tag(Kind::S2, s2.vmid, None),
                    kind: Kind::S2,
                    cacheable: false,
                };
                TranslateResult::Mapped(to_translation(&m, req.access))
            }
            Walk::Fault(f) => {
                let fault = fault_of_walk(req, req.access, &f, ste);
                self.report(mem, req, &fault)
            }
        }
    }
}
