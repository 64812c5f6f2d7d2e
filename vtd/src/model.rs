//! The unit: register writes and what they start (11.4 GCMD_REG global
//! command; VT-d "Register-based Invalidation Interface"; 6.5.2 queued
//! invalidation), event interrupts (VT-d "Non-Recoverable Fault Event",
//! "Hardware Generation of Invalidation Completion Events"), and
//! translation with fault recording.

use std::sync::Arc;

use crate::options::VtdConfig;
use nesting_core::iotlb::{Iotlb, IotlbTag, Translation};
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Bdf, Gpa, Iova, PageSize, Pasid, RequesterId};
use vm_memory::GuestMemory;

use crate::ats::DeviceTlbInvalidation;
use crate::fault::{AddressType, FaultLog, FaultReason, FaultRecord, LogOutcome};
use crate::limits::{MAX_QUEUE_DESCRIPTORS, MAX_SYNC_READS_PER_WRITE};
use crate::nesting::{
    ContextScope, EventQueue, IotlbScope, VtdEvent, cache_event, cache_invalidations, device_event,
};
use crate::passthrough::PassthroughBackend;
use crate::prq::{self, PageRequest, PageRequestOutcome};
use crate::queue::{self, Decoded, Descriptor, iqei};
use crate::regs::{
    ICS_IWC, IQ_OFFSET, RegisterFile, WriteEffect, ccmd, ectl, fsts, gcmd, iotlb_reg, iqa, iqer,
    iva, off, rtaddr,
};
use crate::shadow::{self, Format, TableView};
use crate::tables::read_qwords;
use crate::translate::{self, Caps, Located, Outcome, Request, RootPointer, Tables};

/// Which event an interrupt signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptSource {
    /// Fault event (FECTL/FEDATA/FEADDR, VT-d "Non-Recoverable Fault Event").
    Fault,
    /// Invalidation completion event (IECTL/IEDATA/IEADDR, VT-d "Hardware
    /// Generation of Invalidation Completion Events").
    InvalidationCompletion,
    /// Page request event (PECTL/PEDATA/PEADDR, VT-d "Recoverable Fault Reporting").
    PageRequest,
}

/// An MSI the unit raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// Which event.
    pub source: InterruptSource,
    /// Message address (upper and lower address registers).
    pub addr: u64,
    /// Message data.
    pub data: u32,
}

type Callback = Arc<dyn Fn(Interrupt) + Send + Sync>;
type DevTlbCallback = Arc<dyn Fn(&DeviceTlbInvalidation) + Send + Sync>;

/// The result of [`Vtd::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateResult {
    /// Translated: the page, with the permissions the walk granted (a
    /// translation served from the cache may grant less than the tables
    /// would; see [`Vtd::translate`]).
    Mapped(Translation),
    /// Blocked; `recorded` says whether a fault record was written (not
    /// with FPD, nor when the log overflowed).
    Fault {
        /// Why.
        reason: FaultReason,
        /// Whether the fault was recorded.
        recorded: bool,
    },
}

/// One VT-d DMA remapping unit.
pub struct Vtd {
    cfg: VtdConfig,
    caps: Caps,
    regs: RegisterFile,
    root: RootPointer,
    faults: FaultLog,
    events: EventQueue,
    irq: Option<Callback>,
    dev_tlb: Option<DevTlbCallback>,
    iotlb: Arc<Iotlb>,
    descriptors_processed: u64,
    /// Totals for [`Vtd::stats`].
    pub(crate) counters: crate::stats::Counters,
    /// The passthrough devices, once enabled ([`crate::passthrough`]):
    /// driven at every sync point, before the guest sees a completion.
    pub(crate) passthrough: Option<Box<PassthroughBackend>>,
    /// Events are queued without a backend too.
    keep_events: bool,
    /// Guest-memory reads the passthrough backend may still make for the
    /// MMIO write (or device addition) under way
    /// ([`crate::limits::MAX_SYNC_READS_PER_WRITE`]), shared with the
    /// budgeted memory it reads through.
    sync_reads: Arc<std::sync::atomic::AtomicU64>,
    /// What [`Vtd::sync_reads_left`] starts from at each write (tests
    /// lower it to reach it).
    pub(crate) sync_read_budget: u64,
}

impl std::fmt::Debug for Vtd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vtd")
            .field("cfg", &self.cfg)
            .field("root", &self.root)
            .field("faults", &self.faults)
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Vtd {
    /// A unit at reset.
    pub fn new(cfg: VtdConfig) -> Vtd {
        Vtd {
            caps: Caps::new(&cfg),
            regs: RegisterFile::new(&cfg),
            root: RootPointer::default(),
            faults: FaultLog::default(),
            events: EventQueue::default(),
            irq: None,
            dev_tlb: None,
            iotlb: Arc::new(Iotlb::default()),
            descriptors_processed: 0,
            counters: crate::stats::Counters::default(),
            passthrough: None,
            keep_events: false,
            sync_reads: Arc::new(MAX_SYNC_READS_PER_WRITE.into()),
            sync_read_budget: MAX_SYNC_READS_PER_WRITE,
            cfg,
        }
    }

    /// Back to the state of [`Vtd::new`] (a system reset): registers at
    /// their reset values (11.4: translation and queued invalidation off),
    /// the latched root table pointer, the fault log and the invalidation
    /// count cleared, the translation cache emptied. Callbacks, statistics
    /// and the passthrough backend stay; the backend's devices see
    /// translation turned off before this returns, as a GCMD write
    /// clearing TE would show them.
    pub fn reset<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        let was_enabled = self.translation_enabled();
        self.regs = RegisterFile::new(&self.cfg);
        self.root = RootPointer::default();
        self.faults = FaultLog::default();
        self.descriptors_processed = 0;
        self.iotlb
            .invalidate(nesting_core::iotlb::IotlbInvalidation::All);
        if was_enabled {
            self.emit(VtdEvent::TranslationEnabled(false));
        }
        if let Err(r) = self.sync_host(mem) {
            self.report_invalidation_timeout(r.sid);
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VtdConfig {
        &self.cfg
    }

    /// Sets the function that delivers the unit's MSIs.
    pub fn set_interrupt_callback(&mut self, f: impl Fn(Interrupt) + Send + Sync + 'static) {
        self.irq = Some(Arc::new(f));
    }

    /// Sets the function that receives every device-TLB and PASID-based
    /// device-TLB invalidation the guest queues ([`crate::ats`]): a VMM
    /// with emulated ATS devices drops the cached translations it covers
    /// before returning. It runs while the queue is processed, so every
    /// later invalidation wait descriptor completes after it. The same
    /// invalidations are also queued as [`VtdEvent::DeviceTlb`] for a
    /// nesting layer.
    pub fn set_device_tlb_callback(
        &mut self,
        f: impl Fn(&DeviceTlbInvalidation) + Send + Sync + 'static,
    ) {
        self.dev_tlb = Some(Arc::new(f));
    }

    pub(crate) fn caps_root(&self) -> (Caps, RootPointer) {
        (self.caps, self.root)
    }

    /// The register file (read-only view, for tests and snapshots).
    pub fn registers(&self) -> &RegisterFile {
        &self.regs
    }

    /// The translation cache (nesting-core's IOTLB): shared with
    /// [`crate::SharedVtd`] and vm-memory views so that device threads hit
    /// it without taking the model's lock.
    pub fn iotlb(&self) -> &Arc<Iotlb> {
        &self.iotlb
    }

    /// The latched root table pointer: (address, TTM).
    pub fn root_pointer(&self) -> (u64, u8) {
        (self.root.addr, self.root.ttm)
    }

    /// The index the next primary fault will be recorded at.
    pub fn fault_next(&self) -> u16 {
        self.faults.next_index()
    }

    pub(crate) fn restore_register(&mut self, offset: u64, value: u64) {
        self.regs.set(offset, value);
    }

    pub(crate) fn restore_internal(
        &mut self,
        root_addr: u64,
        ttm: u8,
        fault_next: u16,
        processed: u64,
    ) {
        self.root = RootPointer {
            addr: root_addr & rtaddr::RTA.mask(),
            ttm: ttm & 3,
        };
        self.faults.set_next_index(fault_next, self.cfg.nfr);
        self.descriptors_processed = processed;
    }

    /// A new guest action: the passthrough backend may read
    /// [`MAX_SYNC_READS_PER_WRITE`] more entries for it.
    pub(crate) fn start_sync_budget(&mut self) {
        self.sync_reads
            .store(self.sync_read_budget, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads the passthrough backend may still make for the action under
    /// way: loops over guest tables stop when it is spent, rather than
    /// failing read after read.
    pub(crate) fn sync_reads_left(&self) -> u64 {
        self.sync_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The shared budget counter.
    pub(crate) fn sync_reads(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.sync_reads.clone()
    }

    /// Queues `ev` whoever consumes events (a restored unit's
    /// [`VtdEvent::Resync`]: the backend enabled later reads every table).
    pub(crate) fn push_event(&mut self, ev: VtdEvent) {
        for inv in cache_invalidations(&ev) {
            self.iotlb.invalidate(inv);
        }
        self.events.push(ev);
    }

    /// Invalidation descriptors executed since reset.
    pub fn descriptors_processed(&self) -> u64 {
        self.descriptors_processed
    }

    /// Takes the events queued since the last sync point
    /// ([`crate::nesting`]). The unit's own passthrough backend consumes
    /// them at each sync point; without one, they are queued only after
    /// [`Vtd::keep_events`] (for tools and tests that watch them).
    pub fn take_events(&mut self) -> Vec<VtdEvent> {
        self.events.drain()
    }

    /// Queues every event for [`Vtd::take_events`] even without a
    /// passthrough backend.
    pub fn keep_events(&mut self, on: bool) {
        self.keep_events = on;
    }

    /// Whether translation is enabled (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        gcmd::TE.is_set(self.regs.get(off::GSTS))
    }

    /// A register read of `size` bytes (4 or 8) at `offset`. Other sizes
    /// and unimplemented offsets read as zero.
    pub fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        match size {
            4 | 8 if offset.is_multiple_of(u64::from(size)) => {
                self.regs.read(offset, u64::from(size))
            }
            _ => {
                nesting_core::guest_log!(Debug, "vtd: unsupported {size}-byte read at {offset:#x}");
                0
            }
        }
    }

    /// A register write of `size` bytes (4 or 8) at `offset`; returns
    /// after everything the write starts has completed (commands,
    /// invalidations, queue processing up to the new tail), the host work
    /// of passthrough devices included.
    pub fn mmio_write<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        offset: u64,
        size: u32,
        value: u64,
    ) {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            nesting_core::guest_log!(Debug, "vtd: unsupported {size}-byte write at {offset:#x}");
            return;
        }
        self.start_sync_budget();
        for e in self.regs.write(offset, u64::from(size), value) {
            self.after_write(mem, &e);
        }
        // What the write started that no wait or register completion
        // covered (a new root table, translation enabled, descriptors
        // after the last wait) reaches the host before the write returns.
        if let Err(r) = self.sync_host(mem) {
            self.report_invalidation_timeout(r.sid);
        }
    }

    fn after_write<M: GuestMemory + ?Sized>(&mut self, mem: &M, e: &WriteEffect) {
        let iotlb = self.cfg.iro + 8;
        let frcd_hi = e.offset >= self.cfg.fro
            && e.offset < self.cfg.fro + 16 * u64::from(self.cfg.nfr)
            && (e.offset - self.cfg.fro) % 16 == 8;
        match e.offset {
            off::GCMD => self.global_command(mem, e),
            off::CCMD if ccmd::ICC.is_set(e.new) => self.context_command(mem),
            o if o == iotlb && iotlb_reg::IVT.is_set(e.new) => self.iotlb_command(mem),
            off::IQT if self.cfg.qi => self.process_queue(mem),
            off::FSTS => {
                // 6.5.2.10: clearing IQE or ITE lets hardware fetch again
                // from IQH.
                let cleared = |f: nesting_core::bits::Field| f.is_set(e.old) && !f.is_set(e.new);
                if cleared(fsts::IQE) || cleared(fsts::ITE) {
                    self.process_queue(mem);
                }
                self.settle_fault_ip();
            }
            off::FECTL => self.unmask(off::FECTL, e, InterruptSource::Fault),
            // VT-d "Hardware Generation of Invalidation Completion Events": IP clears with IWC.
            off::ICS if self.cfg.qi && !ICS_IWC.is_set(e.new) => {
                self.regs.set_field(off::IECTL, ectl::IP, 0);
            }
            off::IECTL if self.cfg.qi => {
                self.unmask(off::IECTL, e, InterruptSource::InvalidationCompletion)
            }
            off::PECTL if self.cfg.prs => self.unmask(off::PECTL, e, InterruptSource::PageRequest),
            // VT-d "Recoverable Fault Reporting": the page request event's IP clears with PPR.
            off::PRS if self.cfg.prs && !prq::prs::PPR.is_set(e.new) => {
                self.regs.set_field(off::PECTL, ectl::IP, 0);
            }
            _ if frcd_hi => {
                FaultLog::refresh_ppf(&mut self.regs, self.cfg.fro, self.cfg.nfr);
                self.settle_fault_ip();
            }
            _ => {}
        }
    }

    /// Applies an event to the translation cache and queues it for a
    /// nesting layer.
    fn emit(&mut self, ev: VtdEvent) {
        for inv in cache_invalidations(&ev) {
            self.iotlb.invalidate(inv);
        }
        // Queued for the passthrough backend's next sync point, or for
        // whoever asked to see them; otherwise nobody consumes them.
        if self.passthrough.is_some() || self.keep_events {
            self.events.push(ev);
        }
    }

    // -- interrupts (fault, invalidation completion, page request events) --

    fn raise(&self, source: InterruptSource) {
        let (addr, uaddr, data) = match source {
            InterruptSource::Fault => (off::FEADDR, off::FEUADDR, off::FEDATA),
            InterruptSource::InvalidationCompletion => (off::IEADDR, off::IEUADDR, off::IEDATA),
            InterruptSource::PageRequest => (off::PEADDR, off::PEUADDR, off::PEDATA),
        };
        let irq = Interrupt {
            source,
            addr: (self.regs.get(uaddr) << 32) | self.regs.get(addr),
            data: self.regs.get(data) as u32,
        };
        nesting_core::guest_log!(Trace, "vtd: interrupt {irq:?}");
        if let Some(cb) = &self.irq {
            cb(irq);
        }
    }

    /// An interrupt condition on the event whose control register is `ctl`:
    /// with IM set, IP is set instead (VT-d "Non-Recoverable Fault Event", VT-d
    /// "Hardware Generation of Invalidation Completion Events").
    fn signal(&mut self, ctl: u64, source: InterruptSource) {
        if ectl::IM.is_set(self.regs.get(ctl)) {
            self.regs.set_field(ctl, ectl::IP, 1);
        } else {
            self.regs.set_field(ctl, ectl::IP, 0);
            self.raise(source);
        }
    }

    /// VT-d "Non-Recoverable Fault Event": software clearing IM with IP set delivers the pending
    /// interrupt and clears IP.
    fn unmask(&mut self, ctl: u64, e: &WriteEffect, source: InterruptSource) {
        let v = self.regs.get(ctl);
        if ectl::IM.is_set(e.old) && !ectl::IM.is_set(e.new) && ectl::IP.is_set(v) {
            self.regs.set_field(ctl, ectl::IP, 0);
            self.raise(source);
        }
    }

    /// VT-d "Non-Recoverable Fault Event": IP clears once software has serviced
    /// every status condition.
    fn settle_fault_ip(&mut self) {
        if self.regs.get(off::FSTS) & fsts::EVENT_MASK == 0 {
            self.regs.set_field(off::FECTL, ectl::IP, 0);
        }
    }

    /// A fault status field was set; `before` is FSTS before. VT-d
    /// "Non-Recoverable Fault Event": an interrupt condition arises only if no
    /// status field was already pending service.
    fn fault_status_set(&mut self, before: u64) {
        if before & fsts::EVENT_MASK == 0 {
            self.signal(off::FECTL, InterruptSource::Fault);
        }
    }

    // -- global command (11.4 GCMD_REG) ----------------------------------

    fn global_command<M: GuestMemory + ?Sized>(&mut self, mem: &M, e: &WriteEffect) {
        let cmd = e.written;
        // GCMD is write-only: it reads as zero.
        self.regs.set(off::GCMD, 0);
        let mut sts = self.regs.get(off::GSTS);
        // One-shot SRTP: latch RTADDR; RTPS reports completion.
        if gcmd::SRTP.is_set(cmd) {
            let rta = rtaddr::Rtaddr(self.regs.get(off::RTADDR));
            self.root = RootPointer {
                addr: rta.rta(),
                ttm: rta.ttm(),
            };
            sts = gcmd::SRTP.set(sts, 1);
            self.emit(VtdEvent::RootTable {
                addr: self.root.addr,
                ttm: self.root.ttm,
            });
        }
        // One-shot WBF: the model has no write buffer; the flush completes
        // at once, so WBFS reads 0.
        sts = gcmd::WBF.set(sts, 0);
        // Persistent CFI: mirrored in CFIS.
        sts = gcmd::CFI.set(sts, gcmd::CFI.get(cmd));
        let te = gcmd::TE.is_set(cmd);
        if te != gcmd::TE.is_set(sts) {
            sts = gcmd::TE.set(sts, u64::from(te));
            self.emit(VtdEvent::TranslationEnabled(te));
        }
        let qie = gcmd::QIE.is_set(cmd) && self.cfg.qi;
        let was = gcmd::QIE.is_set(sts);
        sts = gcmd::QIE.set(sts, u64::from(qie));
        self.regs.set(off::GSTS, sts);
        if was && !qie {
            // 11.4 IQH_REG: IQH is reset when queued invalidation is disabled.
            self.regs.set(off::IQH, 0);
        } else if qie && !was {
            self.process_queue(mem);
        }
    }

    // -- register-based invalidation (CCMD_REG, IOTLB_REG) -----------------

    fn qi_enabled(&self) -> bool {
        gcmd::QIE.is_set(self.regs.get(off::GSTS))
    }

    fn context_command<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        let v = self.regs.get(off::CCMD);
        // VT-d "Register-based Invalidation Interface": with queued
        // invalidation enabled, register-based invalidation must not be used;
        // the unit ignores it (the command completes with CAIG=0, "not
        // performed").
        let caig = if self.qi_enabled() {
            nesting_core::guest_log!(Warn, "vtd: CCMD write while queued invalidation is enabled");
            0
        } else {
            let cmd = ccmd::Ccmd(v);
            let scope = match cmd.cirg() {
                1 => Some(ContextScope::Global),
                2 => Some(ContextScope::Domain { did: cmd.did() }),
                3 => Some(ContextScope::Device {
                    did: cmd.did(),
                    sid: cmd.sid().0,
                    fm: cmd.fm(),
                }),
                _ => None,
            };
            scope.map_or(0, |s| {
                self.emit(VtdEvent::Context(s));
                self.register_completion(mem, ccmd::CIRG.get(v))
            })
        };
        let v = ccmd::ICC.set(ccmd::CAIG.set(v, caig), 0);
        self.regs.set(off::CCMD, v);
    }

    fn iotlb_command<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        let at = self.cfg.iro + 8;
        let v = self.regs.get(at);
        let iva = iva::Iva(self.regs.get(self.cfg.iro));
        let reg = iotlb_reg::IotlbReg(v);
        let did = reg.did();
        let iaig = if self.qi_enabled() {
            nesting_core::guest_log!(
                Warn,
                "vtd: IOTLB_REG write while queued invalidation is enabled"
            );
            0
        } else {
            let scope = match reg.iirg() {
                1 => Some(IotlbScope::Global),
                2 => Some(IotlbScope::Domain { did }),
                // VT-d "IOTLB Registers": AM above CAP.MAMV is not performed.
                3 if u64::from(iva.am()) <= crate::regs::MAMV => Some(IotlbScope::Pages {
                    did,
                    addr: iva.addr(),
                    am: iva.am(),
                    ih: iva.ih(),
                }),
                _ => None,
            };
            scope.map_or(0, |s| {
                self.emit(VtdEvent::Iotlb(s));
                self.register_completion(mem, iotlb_reg::IIRG.get(v))
            })
        };
        let v = iotlb_reg::IVT.set(iotlb_reg::IAIG.set(v, iaig), 0);
        self.regs.set(at, v);
    }

    /// The actual granularity a register-based invalidation completes
    /// with, once the host work it covers returned: `granularity`, or 0
    /// ("not performed", 11.4 CCMD_REG CAIG and IOTLB_REG IAIG) when the
    /// host did not carry it out.
    fn register_completion<M: GuestMemory + ?Sized>(&mut self, mem: &M, granularity: u64) -> u64 {
        match self.sync_host(mem) {
            Ok(()) => granularity,
            Err(r) => {
                nesting_core::guest_log!(
                    Warn,
                    "vtd: register-based invalidation not performed on the host for {:#06x}",
                    r.sid
                );
                0
            }
        }
    }

    // -- queued invalidation (6.5.2) --------------------------------------

    fn queue_error(&mut self, code: u8) {
        let before = self.regs.get(off::FSTS);
        self.regs.set_field(off::IQER, iqer::IQEI, u64::from(code));
        self.regs.set(off::FSTS, fsts::IQE.set(before, 1));
        nesting_core::guest_log!(Debug, "vtd: invalidation queue error, IQEI {code}");
        self.fault_status_set(before);
    }

    /// Fetches and executes descriptors from IQH up to IQT (6.5.2).
    fn process_queue<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        let status = self.regs.get(off::FSTS);
        // 6.5.2.10: no fetching while IQE or ITE is pending.
        if !self.qi_enabled() || fsts::IQE.is_set(status) || fsts::ITE.is_set(status) {
            return;
        }
        let a = self.regs.get(off::IQA);
        let wide = iqa::DW.is_set(a);
        let desc = if wide { 32 } else { 16 };
        let size = 4096u64 << iqa::QS.get(a);
        let base = iqa::IQA.mask() & a;
        let tail = IQ_OFFSET.mask() & self.regs.get(off::IQT);
        // 11.4 IQA_REG DW: 256-bit descriptors exist only with scalable mode.
        if wide && !self.caps_scalable() {
            return self.queue_error(iqei::WIDTH);
        }
        // 11.4 IQT_REG: the tail must lie in the queue, on a descriptor.
        if tail >= size || !tail.is_multiple_of(desc) {
            return self.queue_error(iqei::TAIL);
        }
        let mut head = IQ_OFFSET.mask() & self.regs.get(off::IQH);
        for _ in 0..MAX_QUEUE_DESCRIPTORS {
            if head == tail {
                break;
            }
            let fetched = base
                .checked_add(head)
                .and_then(|at| read_qwords::<M, 2>(mem, at).ok());
            let Some(q) = fetched else {
                return self.queue_error(iqei::FETCH);
            };
            match queue::decode(q, &self.cfg) {
                // 6.5.2.10: the head stays on the bad descriptor.
                Decoded::Invalid(code) => return self.queue_error(code),
                // 6.5.2.8: a wait completes only after every descriptor
                // before it has, the host work of passthrough devices
                // included. When the host did not carry it out, the wait
                // is aborted, never completed: 6.5.2.10 ITE ("hardware
                // aborts any inv_wait_dsc commands pending in hardware"),
                // and nothing after it is fetched until software clears
                // ITE.
                Decoded::Ok(d @ Descriptor::Wait { .. }) => {
                    if let Err(r) = self.sync_host(mem) {
                        self.descriptors_processed += 1;
                        self.regs.set(off::IQH, (head + desc) % size);
                        return self.report_invalidation_timeout(r.sid);
                    }
                    self.execute(mem, d);
                }
                Decoded::Ok(d) => self.execute(mem, d),
            }
            self.descriptors_processed += 1;
            head = (head + desc) % size;
            self.regs.set(off::IQH, head);
        }
    }

    fn caps_scalable(&self) -> bool {
        self.cfg.mode == crate::options::VtdMode::Scalable
    }

    fn execute<M: GuestMemory + ?Sized>(&mut self, mem: &M, d: Descriptor) {
        match d {
            Descriptor::Wait {
                interrupt,
                status_write,
                data,
                addr,
                ..
            } => self.wait(mem, interrupt, status_write, data, addr),
            // Interrupt remapping is not modelled: nothing is cached.
            Descriptor::InterruptEntryCache => {}
            d => {
                if let (Some(inv), Some(cb)) =
                    (DeviceTlbInvalidation::from_descriptor(&d), &self.dev_tlb)
                {
                    cb(&inv);
                }
                if let Some(ev) = cache_event(d).or_else(|| device_event(d)) {
                    self.emit(ev);
                }
            }
        }
    }

    /// 6.5.2.8: every earlier descriptor has completed (they complete
    /// synchronously here, host work included, which also satisfies FN
    /// and PD); then the status write and the completion event.
    fn wait<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        interrupt: bool,
        status_write: bool,
        data: u32,
        addr: u64,
    ) {
        if status_write && mem.write_u32_le(Gpa(addr), data).is_err() {
            // A DMA write to no memory is dropped, as on a real platform.
            nesting_core::guest_log!(
                Warn,
                "vtd: invalidation wait status write to {addr:#x} failed"
            );
        }
        if interrupt {
            // VT-d "Hardware Generation of Invalidation Completion Events": no
            // new event while IWC is still set.
            if ICS_IWC.is_set(self.regs.get(off::ICS)) {
                return;
            }
            self.regs.set(off::ICS, ICS_IWC.mask());
            self.signal(off::IECTL, InterruptSource::InvalidationCompletion);
        }
    }

    // -- errors reported by a nesting layer ---------------------------------

    /// A device-TLB invalidation for `sid` timed out on the host
    /// (6.5.2.10 ITE): sets FSTS.ITE and IQER.ITESID, raises a fault
    /// event; the queue stops until software clears ITE.
    pub fn report_invalidation_timeout(&mut self, sid: u16) {
        let before = self.regs.get(off::FSTS);
        if !fsts::ITE.is_set(before) {
            self.regs.set_field(off::IQER, iqer::ITESID, u64::from(sid));
        }
        self.regs.set(off::FSTS, fsts::ITE.set(before, 1));
        self.fault_status_set(before);
    }

    /// A device-TLB invalidation completion for `sid` was invalid
    /// (6.5.2.10 ICE): sets FSTS.ICE and IQER.ICESID, raises a fault event.
    pub fn report_invalidation_completion_error(&mut self, sid: u16) {
        let before = self.regs.get(off::FSTS);
        if !fsts::ICE.is_set(before) {
            self.regs.set_field(off::IQER, iqer::ICESID, u64::from(sid));
        }
        self.regs.set(off::FSTS, fsts::ICE.set(before, 1));
        self.fault_status_set(before);
    }

    /// Records a fault on behalf of a passthrough device (the host IOMMU
    /// reported it); returns whether it was recorded.
    pub fn report_fault(&mut self, rec: &FaultRecord) -> bool {
        self.log_fault(rec)
    }

    fn log_fault(&mut self, rec: &FaultRecord) -> bool {
        self.log_fault_at(rec, AddressType::Untranslated)
    }

    pub(crate) fn log_fault_at(&mut self, rec: &FaultRecord, at: AddressType) -> bool {
        let before = self.regs.get(off::FSTS);
        match self
            .faults
            .log(&mut self.regs, self.cfg.fro, self.cfg.nfr, rec, at)
        {
            LogOutcome::Recorded { .. } => {
                self.fault_status_set(before);
                true
            }
            LogOutcome::Overflow => {
                self.counters.faults_dropped += 1;
                self.fault_status_set(before);
                false
            }
            LogOutcome::Dropped => {
                self.counters.faults_dropped += 1;
                false
            }
        }
    }

    // -- page requests ----------------------------------------------------

    /// A page request of a PRI-capable device (VT-d "Handling of Page
    /// Requests"). Without ECAP.PRS the unit answers the last request of a
    /// group itself with "invalid request". When the root table is in
    /// legacy mode (fault 0x32), the device's scalable-mode root or
    /// context entry cannot be used, or its context entry has PRE clear
    /// (0x47), the request is answered the same way and the fault is
    /// recorded as a page request (FRCD T2=1) unless the context entry
    /// has FPD set (with translation disabled: answered, not recorded). When the queue is full the unit sets PRS.PRO and
    /// answers "success" (the device then retries its translation);
    /// otherwise the request is queued at PQT and the page request event
    /// raised if PPR was clear.
    pub fn page_request<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &PageRequest,
    ) -> PageRequestOutcome {
        let respond = |code: u8| PageRequestOutcome::Responded {
            response: req.last.then_some(code),
        };
        // With translation disabled nothing is remapped, so there is no
        // page to fault in: answered, not recorded.
        if !self.cfg.prs || !self.translation_enabled() {
            return respond(prq::response::INVALID);
        }
        if let Err((reason, fpd)) =
            translate::page_requests_allowed(mem, &self.caps, self.root, req.sid)
        {
            if !fpd {
                self.log_fault(&FaultRecord {
                    source_id: req.sid,
                    pasid: req.pasid,
                    address: req.addr & !0xfff,
                    write: req.write,
                    page_request: true,
                    exec: req.exec,
                    privileged: req.privileged,
                    reason,
                });
            }
            return respond(prq::response::INVALID);
        }
        let status = self.regs.get(off::PRS);
        let a = self.regs.get(off::PQA);
        let size = 4096u64 << iqa::QS.get(a);
        let tail = prq::PQ_OFFSET.mask() & self.regs.get(off::PQT);
        let head = prq::PQ_OFFSET.mask() & self.regs.get(off::PQH);
        let next = (tail + prq::DESCRIPTOR_SIZE) % size;
        // VT-d "Handling of Page Requests": with PRO set, or no free slot, the
        // request is not queued.
        if prq::prs::PRO.is_set(status) || next == head || tail >= size {
            self.regs.set(off::PRS, prq::prs::PRO.set(status, 1));
            return respond(prq::response::SUCCESS);
        }
        let at = (iqa::IQA.mask() & a).checked_add(tail);
        if at.is_none_or(|at| prq::write_descriptor(mem, at, req).is_err()) {
            nesting_core::guest_log!(
                Warn,
                "vtd: page request queue at {a:#x} is not in guest memory"
            );
            return respond(prq::response::SUCCESS);
        }
        self.regs.set(off::PQT, next);
        self.regs.set(off::PRS, prq::prs::PPR.set(status, 1));
        if !prq::prs::PPR.is_set(status) {
            self.signal(off::PECTL, InterruptSource::PageRequest);
        }
        PageRequestOutcome::Queued
    }

    // -- translation (chapter 3) ------------------------------------------

    /// Translates one DMA request of `sid` (with `pasid`, for requests
    /// with PASID) at `iova`, through the translation cache. Faults are
    /// recorded (VT-d "Primary Fault Logging") unless fault processing is disabled, and raise the
    /// fault event.
    ///
    /// First-stage translations made for a read are cached without write
    /// permission, so the first write walks again and sets the dirty flag (VT-d
    /// 3.6 "First-Stage Translation", accessed/dirty flags); everything else is
    /// cached with what the walk granted.
    pub fn translate<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sid: Bdf,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Access,
    ) -> TranslateResult {
        let rid = RequesterId::Pci(sid);
        if let Some(t) = self.iotlb.lookup(rid, pasid, iova, access) {
            return TranslateResult::Mapped(t);
        }
        self.iotlb.count_miss();
        let generation = self.iotlb.generation();
        let req = Request {
            sid: sid.0,
            pasid: pasid.map(|p| p.raw()),
            iova: iova.0,
            access,
        };
        match self.walk(mem, &req) {
            Outcome::Mapped { leaf, origin } => {
                let size = PageSize::new(1u64 << leaf.shift).unwrap_or(PageSize::SIZE_4K);
                let mut granted = leaf.perms | (access & Access::PRIV);
                if origin.pasid.is_some() && !access.contains(Access::WRITE) {
                    granted.remove(Access::WRITE);
                }
                let t = Translation {
                    iova: Iova(iova.0 & !size.mask()),
                    gpa: Gpa(leaf.base),
                    size,
                    access: granted,
                };
                if self.translation_enabled() {
                    let tag = IotlbTag {
                        domain: u32::from(origin.did),
                        asid: origin.pasid,
                    };
                    self.iotlb.insert(generation, rid, pasid, tag, t);
                }
                TranslateResult::Mapped(t)
            }
            Outcome::Fault { reason, fpd } => {
                self.counters.faults += 1;
                let recorded = !fpd
                    && self.log_fault(&FaultRecord {
                        source_id: req.sid,
                        pasid: req.pasid,
                        address: req.iova & !0xfff,
                        write: access.contains(Access::WRITE),
                        page_request: false,
                        exec: access.contains(Access::EXEC),
                        privileged: access.contains(Access::PRIV),
                        reason,
                    });
                TranslateResult::Fault { reason, recorded }
            }
        }
    }

    /// Resolves a request without recording faults: what a shadowing
    /// layer uses to mirror the guest's tables after an invalidation.
    pub fn walk<M: GuestMemory + ?Sized>(&self, mem: &M, req: &Request) -> Outcome {
        if !self.translation_enabled() {
            // 11.4 GCMD_REG TE: with translation disabled, requests are not
            // remapped.
            return Outcome::Mapped {
                leaf: crate::walk::Leaf {
                    base: req.iova & !0xfff,
                    shift: 12,
                    perms: Access::READ | Access::WRITE | Access::EXEC,
                },
                origin: translate::Origin {
                    did: 0,
                    pasid: None,
                },
            };
        }
        translate::resolve(mem, &self.caps, self.root, req)
    }

    /// The mappings `sid` (with `pasid`, or RID_PASID) sees in
    /// `[first, last]`, enumerated from its tables with at most `budget`
    /// entry reads: what a shadowing layer mirrors after an invalidation
    /// ([`crate::shadow`]).
    pub fn table_view<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        sid: Bdf,
        pasid: Option<u32>,
        first: u64,
        last: u64,
        budget: usize,
    ) -> TableView {
        if !self.translation_enabled() {
            return TableView::Identity;
        }
        match translate::tables_for(mem, &self.caps, self.root, sid.0, pasid) {
            Err(r) => TableView::Blocked(r),
            Ok(Tables::Identity) => TableView::Identity,
            Ok(Tables::Nested(..)) => TableView::Nested,
            Ok(Tables::Second(p)) => shadow::enumerate(mem, Format::Second(p), first, last, budget),
            Ok(Tables::First(p)) => shadow::enumerate(mem, Format::First(p), first, last, budget),
        }
    }

    /// The PASID table entry a request of `sid` with `pasid` (or, with
    /// `None`, RID_PASID) uses, for a nesting layer building a stage-1
    /// HWPT from it. `None` in legacy mode or when the tables fault.
    pub fn pasid_entry<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        sid: Bdf,
        pasid: Option<u32>,
    ) -> Option<Located> {
        if self.root.ttm != 1 || !self.caps_scalable() {
            return None;
        }
        translate::locate_pasid_entry(mem, &self.caps, self.root.addr, sid.0, pasid).ok()
    }
}
