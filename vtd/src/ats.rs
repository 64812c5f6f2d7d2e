//! Device-TLBs (VT-d chapter "Support For Device-TLBs"; PCIe Address
//! Translation Services): what the unit answers to an ATS-capable
//! device's translation requests (AT=01b), how it treats translated
//! requests (AT=10b), and the device-TLB invalidations a VMM forwards to
//! its emulated ATS devices.
//!
//! # Translation requests
//!
//! [`crate::Vtd::translation_request`] resolves a request the way VT-d
//! "Handling of Translation Requests" describes, and returns the
//! completion the device gets:
//!
//! - The context must allow device-TLBs: legacy context-entry TT = 01b,
//!   or the scalable-mode context entry's DTE. Otherwise the completion
//!   is Unsupported Request and fault 0xD (legacy) or 0x44 (scalable) is
//!   recorded (subject to FPD).
//! - Conditions a page request could resolve (entry not present,
//!   insufficient permission, address not mapped by the tables' width or
//!   not canonical) are not faults: the completion is successful with
//!   R=W=0 and nothing is recorded.
//! - Root, context, PASID-directory and PASID-entry present bits clear,
//!   PASID checks (PASIDE, size, RID_PASID), SRE/ERE clear, requests
//!   with PASID to the interrupt range, and translations whose output lies
//!   in the interrupt range (0xE legacy, 0x87 scalable): Unsupported
//!   Request, fault recorded.
//! - Errors of the structures themselves (access errors, reserved bits,
//!   invalid entries, output beyond the host address width): Completer
//!   Abort, fault recorded.
//!
//! A successful completion carries the translated address of the whole
//! page (or superpage: the S bit encodes its size), R and W (W only when
//! the request's NW was clear; first-stage translations set the dirty
//! flag before granting it), and for requests with PASID Exe (execute
//! allowed and requested) and Priv (the privilege the translation is
//! for). U and N are clear except for the interrupt range (see
//! [`resolve_translation_request`]).
//!
//! # Translated requests
//!
//! [`crate::Vtd::translate_translated`] passes a translated request
//! through untranslated when the context allows device-TLBs, and blocks
//! it with the same faults as above otherwise; translated requests to the
//! interrupt range are Unsupported Requests without a fault record.
//!
//! # Device-TLB invalidations
//!
//! The guest invalidates device-TLBs with device-TLB and PASID-based
//! device-TLB invalidation descriptors. A VMM with emulated ATS devices
//! registers [`crate::Vtd::set_device_tlb_callback`]: it receives each one
//! as a [`DeviceTlbInvalidation`] while the queue is processed, before any
//! later invalidation wait descriptor completes, so an emulated device
//! that drops its cached translations inside the callback satisfies the
//! ordering the guest's wait relies on.

use nesting_core::iotlb::Translation;
use nesting_core::types::{Access, Bdf, Gpa, Iova, PageSize, Pasid};
use vm_memory::GuestMemory;

use crate::fault::{AddressType, FaultReason, FaultRecord};
use crate::queue::{Descriptor, dev_tlb_range};
use crate::translate::{self, Caps, Outcome, Request, RootPointer};
use crate::{TranslateResult, Vtd};

/// One ATS translation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TranslationRequest {
    /// Requester.
    pub sid: Bdf,
    /// PASID of the request's PASID prefix, if any.
    pub pasid: Option<Pasid>,
    /// Untranslated address (the page it lies in is translated).
    pub addr: u64,
    /// NW (no write): the device asks for read-only access.
    pub no_write: bool,
    /// ER (execute requested) of the PASID prefix; ignored without PASID.
    pub exec: bool,
    /// PR (privileged mode requested) of the PASID prefix; ignored
    /// without PASID.
    pub privileged: bool,
}

/// A successful translation completion's data entry (PCIe "Translation
/// Completion Data Entry").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtsTranslation {
    /// Translated address of the range's first byte.
    pub translated: u64,
    /// Size of the range in bytes: a power of two, at least 4 KiB; the
    /// untranslated range is the request's address aligned down to it.
    pub size: u64,
    /// R: read access allowed.
    pub read: bool,
    /// W: write access allowed.
    pub write: bool,
    /// Exe: execute allowed (requests with PASID).
    pub exec: bool,
    /// Priv: the translation is for privileged mode (requests with PASID).
    pub privileged: bool,
    /// U: untranslated access only: the device must not cache the
    /// translation and must use untranslated requests in the range.
    pub untranslated_only: bool,
    /// N: non-snooped accesses.
    pub no_snoop: bool,
}

nesting_core::bitfield! {
    /// A translation completion data entry (PCIe "Translation Completion
    /// Data Entry").
    pub struct CompletionEntry(u64);
    /// R: read access allowed.
    R [0]: bool => r, with_r;
    /// W: write access allowed.
    W [1]: bool => w, with_w;
    /// U: untranslated access only.
    U [2]: bool => u, with_u;
    /// Exe: execute allowed.
    EXE [3]: bool => exe, with_exe;
    /// Priv: privileged-mode translation.
    PRIV [4]: bool => privileged, with_privileged;
    /// N: non-snooped accesses.
    N [10]: bool => n, with_n;
    /// S: the range's size is encoded in the address bits.
    S [11]: bool => s, with_s;
    /// Translated address, bits 63:12.
    ADDR [63:12]: address => addr, with_addr;
}

impl AtsTranslation {
    /// The translated address of `addr` (an address of the range).
    pub fn translate(&self, addr: u64) -> u64 {
        self.translated | (addr & self.size.wrapping_sub(1))
    }

    /// The 64-bit completion data entry: translated address in bits 63:12
    /// with the size encoded by S (bit 11) as the lowest clear address bit
    /// above bit 12, N bit 10, Priv bit 4, Exe bit 3, U bit 2, W bit 1, R
    /// bit 0.
    pub fn encode(&self) -> u64 {
        let size = self.size.max(4096);
        let mut addr = self.translated & !(size - 1);
        if size > 4096 {
            // Ones from bit 12 up to the bit below the size's bit.
            addr |= (size >> 1) - 1;
        }
        CompletionEntry::default()
            .with_addr(addr)
            .with_s(size > 4096)
            .with_r(self.read)
            .with_w(self.write)
            .with_u(self.untranslated_only)
            .with_exe(self.exec)
            .with_privileged(self.privileged)
            .with_n(self.no_snoop)
            .0
    }

    /// Decodes a completion data entry; never fails (an all-ones address
    /// with S set decodes to the whole address space).
    pub fn decode(raw: u64) -> AtsTranslation {
        let e = CompletionEntry(raw);
        let (translated, size) = dev_tlb_range(e.addr(), e.s());
        AtsTranslation {
            translated,
            size,
            read: e.r(),
            write: e.w(),
            exec: e.exe(),
            privileged: e.privileged(),
            untranslated_only: e.u(),
            no_snoop: e.n(),
        }
    }
}

/// The completion of a translation request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtsCompletion {
    /// Successful completion with one data entry (R=W=0 when no
    /// translation exists: the device may then issue a page request).
    Success(AtsTranslation),
    /// Completion status Unsupported Request.
    UnsupportedRequest,
    /// Completion status Completer Abort.
    CompleterAbort,
}

/// What [`crate::Vtd::translation_request`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtsResponse {
    /// The completion to send to the device.
    pub completion: AtsCompletion,
    /// The fault condition, for unsuccessful completions.
    pub fault: Option<FaultReason>,
    /// Whether a fault record was written (not with FPD, nor when the
    /// primary fault log overflowed).
    pub recorded: bool,
}

/// How a fault condition met by a translation request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFaultClass {
    /// No translation: successful completion with R=W=0, not recorded.
    NoTranslation,
    /// Unsupported Request, recorded.
    Unsupported,
    /// Completer Abort, recorded.
    Abort,
}

/// The class of a fault condition for a translation request.
pub fn classify(reason: FaultReason) -> RequestFaultClass {
    use FaultReason::*;
    match reason {
        // The page is not mapped, or not with the requested permission,
        // or the address lies outside what the tables translate: a page
        // request may resolve it.
        AddressBeyondAgaw | Write | Read | SsEntryNotPresent | FsEntryNotPresent
        | FsNonCanonical | FsUserSupervisor | FsExecute | SmAddressBeyond | SmWrite | SmRead
        | NestedFsRootRead | NestedFsTableRead | NestedFsTableWrite => {
            RequestFaultClass::NoTranslation
        }
        // Present bits clear and explicit blocking: the device may not
        // use the tables at all.
        RootNotPresent
        | ContextNotPresent
        | TranslationTypeBlocked
        | SmTtmLegacyWithPasid
        | SmRootNotPresent
        | SmContextNotPresent
        | SmDteClear
        | SmPasidDisabled
        | SmPasidTooLarge
        | SmRidPasidError
        | PasidDirNotPresent
        | PasidEntryNotPresent
        | PasidEreClear
        | PasidSreClear
        | InterruptAddress
        | SmInterruptAddress => RequestFaultClass::Unsupported,
        // Errors of the structures: access errors, reserved fields,
        // invalid programming.
        _ => RequestFaultClass::Abort,
    }
}

/// The outcome of resolving a translation request, before fault logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Completed without a fault condition.
    Complete(AtsTranslation),
    /// A fault condition; `fpd` when fault processing was disabled by an
    /// entry already accepted.
    Fault {
        /// Why.
        reason: FaultReason,
        /// Fault processing disabled.
        fpd: bool,
    },
}

const PAGE: u64 = 4096;

fn identity(addr: u64, read: bool, write: bool, untranslated_only: bool) -> AtsTranslation {
    AtsTranslation {
        translated: addr & !(PAGE - 1),
        size: PAGE,
        read,
        write,
        untranslated_only,
        ..AtsTranslation::default()
    }
}

/// Resolves a translation request against the tables rooted at `root`
/// (`enabled`: GSTS.TES).
///
/// - With translation disabled the model answers U=1 (untranslated
///   access only, R=W=1): the device's untranslated requests are then
///   not remapped. (Model choice: the spec text for this case was not
///   available when this was written; see docs/vtd-spec-citations.md.)
/// - A request without PASID to the interrupt address range
///   0xFEEx_xxxx gets R=0, W=1, U=1: interrupts stay untranslated
///   writes. With PASID it is translated like any other address, and
///   an output in the range faults (0x87) like an untranslated request.
/// - For requests with PASID and PR=1 on a unit without supervisor
///   request support (ECAP.SRS=0) the completion has R=W=Exe=0 and
///   Priv=1.
pub fn resolve_translation_request<M: GuestMemory + ?Sized>(
    mem: &M,
    caps: &Caps,
    root: RootPointer,
    enabled: bool,
    req: &TranslationRequest,
) -> RequestOutcome {
    if !enabled {
        return RequestOutcome::Complete(identity(req.addr, true, true, true));
    }
    if req.pasid.is_none() && req.addr >> 20 == 0xfee {
        return RequestOutcome::Complete(identity(req.addr, false, true, true));
    }
    if let Err((reason, fpd)) = translate::device_tlb_allowed(mem, caps, root, req.sid.0) {
        return RequestOutcome::Fault { reason, fpd };
    }
    let with_pasid = req.pasid.is_some();
    // ECAP.SRS (and ERS) come with first-stage translation in this model.
    if with_pasid && req.privileged && !caps.flts {
        return RequestOutcome::Complete(AtsTranslation {
            privileged: true,
            ..identity(req.addr, false, false, false)
        });
    }
    let mut access = Access::empty();
    if with_pasid && req.privileged {
        access |= Access::PRIV;
    }
    let exec = with_pasid && req.exec && caps.flts;
    let mut r = Request {
        sid: req.sid.0,
        pasid: req.pasid.map(|p| p.raw()),
        iova: req.addr,
        access: if exec { access | Access::EXEC } else { access },
    };
    let mut outcome = translate::resolve(mem, caps, root, &r);
    // XD in the first-stage tables: the translation is granted without
    // execute permission.
    if exec
        && matches!(
            outcome,
            Outcome::Fault {
                reason: FaultReason::FsExecute,
                ..
            }
        )
    {
        r.access = access;
        outcome = translate::resolve(mem, caps, root, &r);
    }
    let (leaf, origin) = match outcome {
        Outcome::Mapped { leaf, origin } => (leaf, origin),
        Outcome::Fault { reason, fpd } => {
            if classify(reason) == RequestFaultClass::NoTranslation {
                return RequestOutcome::Complete(identity(req.addr, false, false, false));
            }
            return RequestOutcome::Fault { reason, fpd };
        }
    };
    let mut write = !req.no_write && leaf.perms.contains(Access::WRITE);
    // First-stage (PASID-granular) translations: the dirty flag is set
    // before write permission is granted (VT-d "Accessed, Extended
    // Accessed, and Dirty Flags" for translation requests).
    if write && origin.pasid.is_some() {
        let w = Request {
            access: r.access | Access::WRITE,
            ..r
        };
        write = matches!(
            translate::resolve(mem, caps, root, &w),
            Outcome::Mapped { .. }
        );
    }
    let size = 1u64 << leaf.shift.min(63);
    RequestOutcome::Complete(AtsTranslation {
        translated: leaf.base & !(size - 1),
        size,
        read: leaf.perms.contains(Access::READ),
        write,
        exec: exec && r.access.contains(Access::EXEC) && leaf.perms.contains(Access::EXEC),
        privileged: with_pasid && req.privileged,
        untranslated_only: false,
        no_snoop: false,
    })
}

/// A device-TLB invalidation the guest issued (VT-d "Device-TLB
/// Invalidate Descriptor" and "PASID-based Device-TLB Invalidate
/// Descriptor"), decoded for the VMM's emulated ATS device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTlbInvalidation {
    /// Source-id of the device whose device-TLB is invalidated.
    pub sid: u16,
    /// Physical function source-id (the PF's, for a virtual function).
    pub pfsid: u16,
    /// PASID, for the PASID-based form.
    pub pasid: Option<u32>,
    /// The descriptor's address field (bits 63:12).
    pub addr: u64,
    /// The descriptor's S (size) bit.
    pub size_bit: bool,
    /// PASID-based form: G (every address of the PASID).
    pub global: bool,
    /// Max invalidations pending (Linux's QDEP).
    pub mip: u8,
    /// First byte of the invalidated range (decoded from `addr`, S and G).
    pub first: u64,
    /// Length of the range in bytes (`u64::MAX`: every address).
    pub len: u64,
}

impl DeviceTlbInvalidation {
    /// Whether the invalidation covers `addr` of `pasid` (`None`: requests
    /// without PASID). A device-TLB invalidation without PASID covers
    /// translations of requests without PASID; a PASID-based one those of
    /// its PASID.
    pub fn covers(&self, pasid: Option<u32>, addr: u64) -> bool {
        self.pasid == pasid && (self.len == u64::MAX || addr.wrapping_sub(self.first) < self.len)
    }

    /// Decodes a device-TLB or PASID-based device-TLB invalidation
    /// descriptor; `None` for other descriptors.
    pub fn from_descriptor(d: &Descriptor) -> Option<DeviceTlbInvalidation> {
        match *d {
            Descriptor::DeviceTlb {
                sid,
                pfsid,
                mip,
                addr,
                s,
            } => {
                let (first, len) = dev_tlb_range(addr, s);
                Some(DeviceTlbInvalidation {
                    sid,
                    pfsid,
                    pasid: None,
                    addr,
                    size_bit: s,
                    global: false,
                    mip,
                    first,
                    len,
                })
            }
            Descriptor::PasidDeviceTlb {
                sid,
                pfsid,
                mip,
                pasid,
                global,
                addr,
                s,
            } => {
                let (first, len) = if global {
                    (0, u64::MAX)
                } else {
                    dev_tlb_range(addr, s)
                };
                Some(DeviceTlbInvalidation {
                    sid,
                    pfsid,
                    pasid: Some(pasid),
                    addr,
                    size_bit: s,
                    global,
                    mip,
                    first,
                    len,
                })
            }
            _ => None,
        }
    }
}

impl Vtd {
    /// Answers an ATS translation request of an emulated device with a
    /// device-TLB (see the [module docs](self) for every case). Faults
    /// that end in an unsuccessful completion are recorded (primary fault
    /// logging with AT = translation request, subject to FPD) and raise
    /// the fault event; conditions a page request could resolve complete
    /// successfully with R=W=0 and are not recorded.
    ///
    /// Translations are not kept in the unit's translation cache: the
    /// device caches the completion until the guest invalidates its
    /// device-TLB ([`Vtd::set_device_tlb_callback`]).
    pub fn translation_request<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &TranslationRequest,
    ) -> AtsResponse {
        let (caps, root) = self.caps_root();
        let enabled = self.translation_enabled();
        match resolve_translation_request(mem, &caps, root, enabled, req) {
            RequestOutcome::Complete(t) => AtsResponse {
                completion: AtsCompletion::Success(t),
                fault: None,
                recorded: false,
            },
            RequestOutcome::Fault { reason, fpd } => {
                let with_pasid = req.pasid.is_some();
                let rec = FaultRecord {
                    source_id: req.sid.0,
                    pasid: req.pasid.map(|p| p.raw()),
                    address: req.addr & !(PAGE - 1),
                    write: !req.no_write,
                    page_request: false,
                    exec: with_pasid && req.exec,
                    privileged: with_pasid && req.privileged,
                    reason,
                };
                let recorded = !fpd && self.log_fault_at(&rec, AddressType::TranslationRequest);
                let completion = match classify(reason) {
                    RequestFaultClass::Abort => AtsCompletion::CompleterAbort,
                    _ => AtsCompletion::UnsupportedRequest,
                };
                AtsResponse {
                    completion,
                    fault: Some(reason),
                    recorded,
                }
            }
        }
    }

    /// A translated request (AT = 10b) of `sid` at `addr`: its address
    /// is already translated (from an earlier [`Vtd::translation_request`]),
    /// so it passes through untranslated when the context allows
    /// device-TLBs (legacy TT = 01b, scalable DTE = 1); otherwise it is
    /// blocked and the fault (0xD, 0x44, or the context lookup's) is
    /// recorded with AT = translated, subject to FPD. With translation
    /// disabled requests are not remapped.
    pub fn translate_translated<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sid: Bdf,
        addr: u64,
        access: Access,
    ) -> TranslateResult {
        let pass = TranslateResult::Mapped(Translation {
            iova: Iova(addr & !(PAGE - 1)),
            gpa: Gpa(addr & !(PAGE - 1)),
            size: PageSize::SIZE_4K,
            access: Access::READ | Access::WRITE,
        });
        if !self.translation_enabled() {
            return pass;
        }
        let (caps, root) = self.caps_root();
        // VT-d "Handling Requests to Interrupt Address Range": translated
        // requests to the range are treated as Unsupported Request; no
        // fault is recorded.
        if addr >> 20 == 0xfee {
            let reason = match root.ttm {
                0 => FaultReason::InterruptAddress,
                _ => FaultReason::SmInterruptAddress,
            };
            return TranslateResult::Fault {
                reason,
                recorded: false,
            };
        }
        match translate::device_tlb_allowed(mem, &caps, root, sid.0) {
            Ok(()) => pass,
            Err((reason, fpd)) => {
                let rec = FaultRecord {
                    source_id: sid.0,
                    pasid: None,
                    address: addr & !(PAGE - 1),
                    write: access.contains(Access::WRITE),
                    page_request: false,
                    exec: false,
                    privileged: false,
                    reason,
                };
                let recorded = !fpd && self.log_fault_at(&rec, AddressType::Translated);
                TranslateResult::Fault { reason, recorded }
            }
        }
    }
}
