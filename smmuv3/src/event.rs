//! Event records and the event queue (IHI 0070 chapter 7, "Events and
//! errors"; "Event queue recorded faults and events"; "Event
//! records"; "Event queue overflow").
//!
//! Each [`Event`] encodes into the 32-byte record of its type: only the
//! fields that type defines are written, every other bit is zero.

use nesting_core::bits::FieldValue;
use nesting_core::types::Access;
use vm_memory::GuestMemory;

use crate::irq::IrqSource;
use crate::model::Smmuv3;
use crate::queue::Queue;
use crate::regs::{MAX_QUEUE_LOG2, cr0, gerror, off, queue_ptr};
use crate::walk::{FaultClass, FaultKind};
use crate::wire::{Qwords, write_qwords};

/// Bytes per event record.
pub const EVENT_SIZE: u64 = 32;
const _: () = assert!(size_of::<Qwords<4>>() == EVENT_SIZE as usize);

/// Event type codes (IHI 0070 "Event records").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventId {
    /// F_UUT: unsupported upstream transaction.
    Uut,
    /// C_BAD_STREAMID.
    BadStreamId,
    /// F_STE_FETCH.
    SteFetch,
    /// C_BAD_STE.
    BadSte,
    /// F_BAD_ATS_TREQ.
    BadAtsTreq,
    /// F_STREAM_DISABLED.
    StreamDisabled,
    /// F_TRANSL_FORBIDDEN.
    TranslForbidden,
    /// C_BAD_SUBSTREAMID.
    BadSubstreamId,
    /// F_CD_FETCH.
    CdFetch,
    /// C_BAD_CD.
    BadCd,
    /// F_WALK_EABT.
    WalkEabt,
    /// F_TRANSLATION.
    Translation,
    /// F_ADDR_SIZE.
    AddrSize,
    /// F_ACCESS.
    Access,
    /// F_PERMISSION.
    Permission,
    /// Any other code.
    Unknown(u8),
}

impl FieldValue for EventId {
    const BITS: u32 = 8;
    fn from_raw(raw: u64) -> Self {
        match raw {
            0x01 => EventId::Uut,
            0x02 => EventId::BadStreamId,
            0x03 => EventId::SteFetch,
            0x04 => EventId::BadSte,
            0x05 => EventId::BadAtsTreq,
            0x06 => EventId::StreamDisabled,
            0x07 => EventId::TranslForbidden,
            0x08 => EventId::BadSubstreamId,
            0x09 => EventId::CdFetch,
            0x0a => EventId::BadCd,
            0x0b => EventId::WalkEabt,
            0x10 => EventId::Translation,
            0x11 => EventId::AddrSize,
            0x12 => EventId::Access,
            0x13 => EventId::Permission,
            other => EventId::Unknown(u8::from_raw(other)),
        }
    }
    fn into_raw(self) -> u64 {
        match self {
            EventId::Uut => 0x01,
            EventId::BadStreamId => 0x02,
            EventId::SteFetch => 0x03,
            EventId::BadSte => 0x04,
            EventId::BadAtsTreq => 0x05,
            EventId::StreamDisabled => 0x06,
            EventId::TranslForbidden => 0x07,
            EventId::BadSubstreamId => 0x08,
            EventId::CdFetch => 0x09,
            EventId::BadCd => 0x0a,
            EventId::WalkEabt => 0x0b,
            EventId::Translation => 0x10,
            EventId::AddrSize => 0x11,
            EventId::Access => 0x12,
            EventId::Permission => 0x13,
            EventId::Unknown(v) => u64::from(v),
        }
    }
}

impl EventId {
    /// The event of a walk fault.
    pub fn of_fault(k: FaultKind) -> EventId {
        match k {
            FaultKind::Translation => EventId::Translation,
            FaultKind::AddressSize => EventId::AddrSize,
            FaultKind::AccessFlag => EventId::Access,
            FaultKind::Permission => EventId::Permission,
            FaultKind::ExternalAbort { .. } => EventId::WalkEabt,
        }
    }

    /// The four translation-related faults that CD.R/STE.S2R filter and
    /// CD.S/STE.S2S may stall (IHI 0070 "Fault configuration").
    pub fn is_translation_related(self) -> bool {
        matches!(
            self,
            EventId::Translation | EventId::AddrSize | EventId::Access | EventId::Permission
        )
    }
}

/// CLASS encodings (IHI 0070 "Event records", F_TRANSLATION and after).
fn class_raw(c: FaultClass) -> u8 {
    match c {
        FaultClass::Cd => 0b00,
        FaultClass::Tt => 0b01,
        FaultClass::In => 0b10,
    }
}

nesting_core::bitfield! {
    /// An event record (IHI 0070 "Event records"), bits numbered across its four
    /// 64-bit words.
    pub struct EventRecord([u64; 4]);
    /// Event type.
    TYPE [7:0]: EventId => id, with_id;
    /// SubstreamID valid.
    SSV [11]: bool => ssv, with_ssv;
    /// SubstreamID.
    SSID [31:12]: u32 => ssid, with_ssid;
    /// StreamID.
    SID [63:32]: u32 => sid, with_sid;
    /// Stall tag.
    STAG [79:64]: u16 => stag, with_stag;
    /// The transaction is stalled.
    STALL [95]: bool => stall, with_stall;
    /// Privileged.
    PNU [97]: bool => pnu, with_pnu;
    /// Instruction.
    IND [98]: bool => ind, with_ind;
    /// Read (1) or write (0).
    RNW [99]: bool => rnw, with_rnw;
    /// A stage-2 fault.
    S2 [103]: bool => s2, with_s2;
    /// What stage 2 was translating: CD, TT or IN.
    CLASS [105:104]: u8 => class, with_class;
    /// The transaction's input address.
    INPUT_ADDR [191:128]: u64 => input_addr, with_input_addr;
    /// Stage-2 faults: the faulting IPA, bits 51:12.
    IPA [243:204]: address => ipa, with_ipa;
    /// Fetch faults: the physical address fetched, bits 51:3.
    FETCH_ADDR [243:195]: address => fetch_addr, with_fetch_addr;
}

/// One event, before encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Type.
    pub id: EventId,
    /// StreamID.
    pub sid: u32,
    /// SubstreamID of the transaction.
    pub ssid: Option<u32>,
    /// Stall tag, for a stalled transaction.
    pub stag: Option<u16>,
    /// The transaction's access (RnW, InD, PnU).
    pub access: Access,
    /// Stage-2 fault context (S2, CLASS, IPA).
    pub s2: Option<(FaultClass, u64)>,
    /// Input address.
    pub addr: u64,
    /// Fetch address (F_STE_FETCH, F_CD_FETCH, F_WALK_EABT).
    pub fetch: u64,
}

impl Event {
    /// A configuration event of a stream (only word 0 is meaningful).
    pub fn config(id: EventId, sid: u32, ssid: Option<u32>) -> Event {
        Event {
            id,
            sid,
            ssid,
            stag: None,
            access: Access::empty(),
            s2: None,
            addr: 0,
            fetch: 0,
        }
    }

    /// The record of this event: the fields its type defines.
    pub fn encode(&self) -> EventRecord {
        let mut r = EventRecord::default()
            .with_id(self.id)
            .with_sid(self.sid)
            .with_ssv(self.ssid.is_some())
            .with_ssid(self.ssid.unwrap_or(0));
        let txn = |r: EventRecord| {
            r.with_rnw(!self.access.contains(Access::WRITE))
                .with_ind(self.access.contains(Access::EXEC))
                .with_pnu(self.access.contains(Access::PRIV))
                .with_input_addr(self.addr)
        };
        match self.id {
            EventId::SteFetch | EventId::CdFetch => {
                r = r.with_fetch_addr(self.fetch);
            }
            EventId::Uut | EventId::BadAtsTreq | EventId::TranslForbidden => r = txn(r),
            EventId::WalkEabt => {
                // A stage-1 walk abort happened fetching a table (TT).
                let r2 = match self.s2 {
                    Some(_) => self.with_s2(txn(r)),
                    None => txn(r).with_class(class_raw(FaultClass::Tt)),
                };
                r = r2.with_fetch_addr(self.fetch);
            }
            id if id.is_translation_related() => {
                r = self.with_s2(txn(r));
                if let Some(stag) = self.stag {
                    r = r.with_stall(true).with_stag(stag);
                }
                if let Some((_, ipa)) = self.s2 {
                    r = r.with_ipa(ipa);
                }
            }
            _ => {}
        }
        r
    }

    fn with_s2(&self, r: EventRecord) -> EventRecord {
        match self.s2 {
            Some((class, _)) => r.with_s2(true).with_class(class_raw(class)),
            None => r.with_class(class_raw(FaultClass::In)),
        }
    }
}

/// What happened to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Written to the event queue.
    Yes,
    /// Lost: the queue is disabled, full (overflow flagged) or its write
    /// aborted (GERROR.EVTQ_ABT_ERR).
    No,
}

impl Smmuv3 {
    fn evtq(&self) -> Queue {
        Queue::from_base(self.regs.get(off::EVTQ_BASE), MAX_QUEUE_LOG2, EVENT_SIZE)
    }

    /// Writes `ev` at EVENTQ_PROD (IHI 0070 "Event queue recorded faults and events") and raises the event
    /// queue interrupt. "Event queue overflow": a full queue loses
    /// the event and toggles PROD.OVFLG if no overflow is outstanding
    /// (OVFLG == CONS.OVACKFLG). With EVENTQ disabled (CR0.EVENTQEN
    /// = 0) events are discarded. An aborted write sets
    /// GERROR.EVTQ_ABT_ERR.
    pub(crate) fn record_event<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        ev: &Event,
    ) -> Recorded {
        nesting_core::guest_log!(Debug, "smmuv3: event {ev:x?}");
        self.record_raw(mem, ev.encode().0)
    }

    /// Writes a 32-byte record at EVENTQ_PROD as [`Self::record_event`]
    /// does (a passthrough device's record comes from the host as bytes).
    pub(crate) fn record_raw<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        record: [u64; 4],
    ) -> Recorded {
        if !cr0::EVTQEN.is_set(self.regs.get(off::CR0ACK)) {
            self.counters.events_dropped += 1;
            return Recorded::No;
        }
        let q = self.evtq();
        let prod_raw = self.regs.get(off::EVTQ_PROD);
        let cons_raw = self.regs.get(off::EVTQ_CONS);
        let (prod, cons) = (q.normalize(prod_raw), q.normalize(cons_raw));
        if q.is_full(prod, cons) {
            self.counters.events_dropped += 1;
            self.evtq_overflow(mem);
            return Recorded::No;
        }
        let ok = q
            .slot(prod)
            .is_some_and(|at| write_qwords(mem, at, record).is_ok());
        if !ok {
            self.counters.events_dropped += 1;
            self.global_error(mem, gerror::EVTQ_ABT_ERR);
            return Recorded::No;
        }
        let next = u64::from(q.next(prod));
        self.regs
            .set(off::EVTQ_PROD, queue_ptr::WRAP_INDEX.set(prod_raw, next));
        self.signal(mem, IrqSource::EventQueue);
        Recorded::Yes
    }

    /// IHI 0070 "Event queue overflow": events were lost; PROD.OVFLG
    /// toggles unless an overflow is already outstanding (OVFLG !=
    /// CONS.OVACKFLG), and the event queue interrupt is raised.
    pub(crate) fn evtq_overflow<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        if !cr0::EVTQEN.is_set(self.regs.get(off::CR0ACK)) {
            return;
        }
        let prod_raw = self.regs.get(off::EVTQ_PROD);
        let cons_raw = self.regs.get(off::EVTQ_CONS);
        let ovf = queue_ptr::OVF.is_set(prod_raw);
        if ovf == queue_ptr::OVF.is_set(cons_raw) {
            let toggled = queue_ptr::OVF.set(prod_raw, u64::from(!ovf));
            self.regs.set(off::EVTQ_PROD, toggled);
            self.signal(mem, IrqSource::EventQueue);
        }
    }
}
