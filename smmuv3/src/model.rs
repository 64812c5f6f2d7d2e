//! The SMMU: register writes and what they start (IHI 0070
//! SMMU_CR0 with CR0ACK, the GBPA update protocol, IRQ_CTRL with
//! IRQ_CTRLACK, the GERROR/GERRORN toggle protocol, queue index
//! registers), and translation of emulated devices' transactions with
//! event recording, stalls and the translation cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use nesting_core::iotlb::{Iotlb, Translation};
use nesting_core::types::{Access, Gpa, Iova, PageSize, Pasid};
use vm_memory::GuestMemory;

use crate::ats::AtcInvalidation;
use crate::caps::Caps;
use crate::cfgcache::ConfigCache;
use crate::cmdq::{Command, PriResponse};
use crate::event::{EventId, Recorded};
use crate::host::HostCommands;
use crate::irq::Interrupt;
use crate::options::Smmuv3Config;
use crate::regs::{GBPA_FIELDS, RegisterFile, WriteEffect, cr0, gbpa, gerror, off};
use crate::stall::{StallResolution, StallTable};
use crate::strtab::StreamTable;
use crate::tlb::{Kind, requester};
use crate::translate::{Fault, Outcome, Purpose, Request, Resolved, resolve};

type IrqCallback = Arc<dyn Fn(Interrupt) -> bool + Send + Sync>;
type AtcCallback = Arc<dyn Fn(&AtcInvalidation) -> bool + Send + Sync>;
type PriCallback = Arc<dyn Fn(&PriResponseNotice) + Send + Sync>;
type StallCallback = Arc<dyn Fn(&StallResolution) + Send + Sync>;

/// A CMD_PRI_RESP the guest issued, for the VMM to deliver to its
/// emulated device (IHI 0070 CMD_PRI_RESP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriResponseNotice {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if the response carries one.
    pub ssid: Option<u32>,
    /// Page request group index.
    pub prg_index: u16,
    /// The response.
    pub resp: PriResponse,
}

#[derive(Default)]
pub(crate) struct Callbacks {
    pub irq: Option<IrqCallback>,
    pub atc: Option<AtcCallback>,
    pub pri: Option<PriCallback>,
    pub stall: Option<StallCallback>,
}

/// The result of [`Smmuv3::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateResult {
    /// Translated: the page (or larger region) and what the request's
    /// privilege may do through it.
    Mapped(Translation),
    /// Terminated. `event` is what was (or, with `recorded` false, would
    /// have been) reported; `abort` false means RAZ/WI (CD.A = 0): reads
    /// return zeros and writes are dropped.
    Fault {
        /// The event type, `None` for a silent abort.
        event: Option<EventId>,
        /// Whether the event reached the event queue.
        recorded: bool,
        /// Abort (true) or RAZ/WI (false).
        abort: bool,
    },
    /// Stalled (IHI 0070 "Stall model"): the event with this tag
    /// is in the event queue; the transaction waits for the guest's
    /// CMD_RESUME or CMD_STALL_TERM, which reach the VMM through
    /// [`Smmuv3::set_stall_callback`].
    Stalled {
        /// Stall tag.
        stag: u16,
    },
}

/// One emulated Arm SMMUv3.
pub struct Smmuv3 {
    pub(crate) cfg: Smmuv3Config,
    pub(crate) caps: Caps,
    pub(crate) regs: RegisterFile,
    pub(crate) iotlb: Arc<Iotlb>,
    /// IOTLB tag kinds inserted since the last full invalidation.
    pub(crate) kinds: u8,
    pub(crate) stalls: StallTable,
    /// An ATC invalidation timed out since the last CMD_SYNC.
    pub(crate) atc_timeout: bool,
    pub(crate) host: Option<Box<dyn HostCommands + Send>>,
    /// The passthrough backend ([`Smmuv3::enable_passthrough`]).
    pub(crate) passthrough: Option<Box<crate::passthrough::PassthroughBackend>>,
    /// The guest read an ID register: what they say is frozen (a
    /// passthrough device needing them lowered is refused).
    pub(crate) idr_read: AtomicBool,
    pub(crate) cb: Callbacks,
    /// CMDQ_CONS as last published (see [`Smmuv3::cmdq_cons_mirror`]).
    pub(crate) cons_mirror: Arc<AtomicU32>,
    pub(crate) commands: u64,
    /// Totals for [`Smmuv3::stats`].
    pub(crate) counters: crate::stats::Counters,
    /// Reused buffer of IOTLB invalidations.
    pub(crate) scratch: Vec<nesting_core::iotlb::IotlbInvalidation>,
    /// Decoded STEs and CDs.
    pub(crate) cfg_cache: ConfigCache,
}

impl std::fmt::Debug for Smmuv3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smmuv3")
            .field("cfg", &self.cfg)
            .field("stalls", &self.stalls)
            .finish_non_exhaustive()
    }
}

impl Smmuv3 {
    /// An SMMU at reset.
    pub fn new(cfg: Smmuv3Config) -> Smmuv3 {
        Smmuv3 {
            caps: Caps::new(&cfg),
            regs: RegisterFile::new(&cfg),
            iotlb: Arc::new(Iotlb::default()),
            kinds: 0,
            stalls: StallTable::default(),
            atc_timeout: false,
            host: None,
            passthrough: None,
            idr_read: AtomicBool::new(false),
            cb: Callbacks::default(),
            cons_mirror: Arc::new(AtomicU32::new(0)),
            commands: 0,
            counters: crate::stats::Counters::default(),
            scratch: Vec::with_capacity(8),
            cfg_cache: ConfigCache::default(),
            cfg,
        }
    }

    /// Back to the reset state (a system reset): registers at reset, the
    /// translation cache and stalls dropped, passthrough streams as GBPA
    /// says. Callbacks and the host backend stay.
    pub fn reset(&mut self) {
        self.regs.reset();
        if let Some(mut p) = self.passthrough.take() {
            p.follow_gbpa(self);
            self.passthrough = Some(p);
        }
        self.invalidate_all();
        self.cfg_cache.clear();
        self.stalls = StallTable::default();
        self.atc_timeout = false;
        self.commands = 0;
        self.cons_mirror.store(0, Ordering::Release);
    }

    /// The configuration.
    pub fn config(&self) -> &Smmuv3Config {
        &self.cfg
    }

    /// The register file (read-only view).
    pub fn registers(&self) -> &RegisterFile {
        &self.regs
    }

    /// The translation cache, shared with [`crate::SharedSmmuv3`] and
    /// vm-memory views so device threads hit it without the model's lock.
    pub fn iotlb(&self) -> &Arc<Iotlb> {
        &self.iotlb
    }

    /// CMDQ_CONS as the model last wrote it, readable without the model:
    /// a VMM may serve the guest's CMDQ_CONS polling from it, and it never
    /// passes a CMD_SYNC before the sync's host operations returned.
    pub fn cmdq_cons_mirror(&self) -> Arc<AtomicU32> {
        self.cons_mirror.clone()
    }

    /// Commands executed since reset.
    pub fn commands_processed(&self) -> u64 {
        self.commands
    }

    /// Sets the function that delivers interrupts: MSIs whose address is
    /// not guest RAM (return `false` if nothing takes the write: the SMMU
    /// then reports GERROR.MSI_*_ABT_ERR), wired interrupts and CMD_SYNC
    /// wake-up events (their return value is ignored).
    pub fn set_interrupt_callback(
        &mut self,
        f: impl Fn(Interrupt) -> bool + Send + Sync + 'static,
    ) {
        self.cb.irq = Some(Arc::new(f));
    }

    /// Sets the function that receives each CMD_ATC_INV for the VMM's
    /// emulated ATS devices; it returns `false` if the device did not
    /// complete the invalidation (the next CMD_SYNC then fails with
    /// CERROR_ATC_INV_SYNC). It runs while the queue is processed, so the
    /// following CMD_SYNC completes after it.
    pub fn set_atc_callback(
        &mut self,
        f: impl Fn(&AtcInvalidation) -> bool + Send + Sync + 'static,
    ) {
        self.cb.atc = Some(Arc::new(f));
    }

    /// Sets the function that receives each CMD_PRI_RESP.
    pub fn set_pri_response_callback(
        &mut self,
        f: impl Fn(&PriResponseNotice) + Send + Sync + 'static,
    ) {
        self.cb.pri = Some(Arc::new(f));
    }

    /// Sets the function told how each stalled transaction ends (CMD_RESUME,
    /// CMD_STALL_TERM).
    pub fn set_stall_callback(&mut self, f: impl Fn(&StallResolution) + Send + Sync + 'static) {
        self.cb.stall = Some(Arc::new(f));
    }

    /// Installs the passthrough backend's command seam.
    pub fn set_host_commands(&mut self, host: Box<dyn HostCommands + Send>) {
        self.host = Some(host);
    }

    /// Removes the passthrough backend's command seam.
    pub fn take_host_commands(&mut self) -> Option<Box<dyn HostCommands + Send>> {
        self.host.take()
    }

    /// Whether translation is enabled (CR0ACK.SMMUEN).
    pub fn enabled(&self) -> bool {
        cr0::SMMUEN.is_set(self.regs.get(off::CR0ACK))
    }

    pub(crate) fn stream_table(&self) -> StreamTable {
        StreamTable::from_regs(
            self.regs.get(off::STRTAB_BASE),
            self.regs.get(off::STRTAB_BASE_CFG),
            &self.caps,
        )
    }

    // -- MMIO --------------------------------------------------------------

    /// A register read of `size` bytes (4 or 8) at `offset` from the start
    /// of page 0. Other sizes, misaligned offsets and offsets without a
    /// register read as zero.
    pub fn mmio_read(&self, offset: u64, size: u32) -> u64 {
        if offset <= off::AIDR {
            self.idr_read.store(true, Ordering::Relaxed);
        }
        match size {
            4 | 8 if offset.is_multiple_of(u64::from(size)) => {
                self.regs.read(offset, u64::from(size))
            }
            _ => 0,
        }
    }

    /// A register write of `size` bytes (4 or 8) at `offset`; returns
    /// after everything it starts has completed (enables, command
    /// processing up to the new CMDQ_PROD). Other sizes, misaligned
    /// offsets and offsets without a register are ignored.
    pub fn mmio_write<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        offset: u64,
        size: u32,
        value: u64,
    ) {
        if !matches!(size, 4 | 8) || !offset.is_multiple_of(u64::from(size)) {
            return;
        }
        if let Some(e) = self.regs.write(offset, u64::from(size), value) {
            self.after_write(mem, &e);
        }
    }

    fn after_write<M: GuestMemory + ?Sized>(&mut self, mem: &M, e: &WriteEffect) {
        match e.offset {
            off::CR0 => self.control(mem, e),
            off::GBPA => self.gbpa_update(mem, e),
            off::IRQ_CTRL => {
                // IRQ_CTRLACK follows IRQ_CTRL once the change takes effect,
                // which is at once here.
                self.regs.set(off::IRQ_CTRLACK, e.new);
            }
            off::GERRORN => self.gerror_ack(mem, e),
            off::CMDQ_PROD | off::CMDQ_CONS => {
                self.normalize_ptr(e.offset, off::CMDQ_BASE);
                if e.offset == off::CMDQ_CONS {
                    self.publish_cons();
                }
                self.process_cmdq(mem);
            }
            off::EVTQ_PROD | off::EVTQ_CONS => self.normalize_ptr(e.offset, off::EVTQ_BASE),
            off::PRIQ_PROD | off::PRIQ_CONS => self.normalize_ptr(e.offset, off::PRIQ_BASE),
            // A new stream table: no cached STE or CD holds.
            off::STRTAB_BASE | off::STRTAB_BASE_CFG if e.new != e.old => self.cfg_cache.clear(),
            _ => {}
        }
    }

    /// IHI 0070 "SMMU circular queues": PROD/CONS bits above the wrap bit of the queue's
    /// current size are RES0; the model keeps them clear (the overflow
    /// flags and CMDQ_CONS.ERR stay).
    fn normalize_ptr(&mut self, ptr: u64, base: u64) {
        let q =
            crate::queue::Queue::from_base(self.regs.get(base), crate::regs::MAX_QUEUE_LOG2, 16);
        let raw = self.regs.get(ptr);
        let v = crate::regs::queue_ptr::WRAP_INDEX.set(raw, u64::from(q.normalize(raw)));
        self.regs.set(ptr, v);
    }

    /// SMMU_CR0 (IHI 0070 SMMU_CR0): each enable takes effect, then CR0ACK
    /// reflects it (SMMU_CR0ACK: updated once the change CR0 asked for has
    /// taken effect).
    fn control<M: GuestMemory + ?Sized>(&mut self, mem: &M, e: &WriteEffect) {
        let before = self.regs.get(off::CR0ACK);
        self.regs.set(off::CR0ACK, e.new);
        if cr0::SMMUEN.is_set(before) != cr0::SMMUEN.is_set(e.new) {
            // Translation turned on or off: nothing cached so far holds,
            // and passthrough streams follow their STEs (or GBPA) now.
            self.invalidate_all();
            self.cfg_cache.clear();
            self.passthrough_rescan(mem);
        }
        if cr0::CMDQEN.is_set(e.new) && !cr0::CMDQEN.is_set(before) {
            self.process_cmdq(mem);
        }
    }

    /// SMMU_GBPA: a write with Update = 1 sets the other fields and the
    /// SMMU clears Update once they apply (at once here); a write with
    /// Update = 0 is ignored.
    fn gbpa_update<M: GuestMemory + ?Sized>(&mut self, mem: &M, e: &WriteEffect) {
        if gbpa::UPDATE.is_set(e.written) {
            self.regs.set(off::GBPA, e.written & GBPA_FIELDS);
            if !self.enabled() {
                self.passthrough_rescan(mem);
            }
        }
    }

    /// SMMU_GERRORN: software acknowledges errors by making GERRORN equal
    /// GERROR. IHI 0070 7.1: once CMDQ_ERR is acknowledged the command
    /// queue resumes at CMDQ_CONS.
    fn gerror_ack<M: GuestMemory + ?Sized>(&mut self, mem: &M, e: &WriteEffect) {
        let g = self.regs.get(off::GERROR);
        let was_active = (g ^ e.old) & gerror::CMDQ_ERR.mask() != 0;
        if was_active && !self.error_active(gerror::CMDQ_ERR) {
            self.process_cmdq(mem);
        }
    }

    pub(crate) fn publish_cons(&self) {
        let cons = u32::try_from(self.regs.get(off::CMDQ_CONS) & 0xffff_ffff).unwrap_or(0);
        self.cons_mirror.store(cons, Ordering::Release);
    }

    /// Drops every cached translation. Skipped when nothing was handed out
    /// since the last time (every translation given out, cached or not,
    /// notes its kind), which keeps resets and repeated NSNH_ALLs cheap.
    pub(crate) fn invalidate_all(&mut self) {
        if self.kinds != 0 {
            self.iotlb
                .invalidate(nesting_core::iotlb::IotlbInvalidation::All);
            self.kinds = 0;
        }
    }

    // -- translation ---------------------------------------------------

    /// Translates one transaction of StreamID `sid` (with SubstreamID
    /// `ssid`) at `iova`, through the translation cache. Faults are
    /// reported as the configuration asks (event records, stalls).
    pub fn translate<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        sid: u32,
        ssid: Option<u32>,
        iova: Iova,
        access: Access,
    ) -> TranslateResult {
        let rid = requester(sid);
        let pasid = ssid.and_then(Pasid::new);
        let keyable = ssid.is_none() || pasid.is_some();
        if keyable && let Some(t) = self.iotlb.lookup(rid, pasid, iova, access) {
            return TranslateResult::Mapped(t);
        }
        self.iotlb.count_miss();
        if !self.enabled() {
            // Views built on the IOTLB keep this identity translation until
            // the next invalidation (SMMUEN going to 1 is one).
            self.kinds |= Kind::Bypass.bit();
            return self.global_bypass(iova, access);
        }
        let generation = self.iotlb.generation();
        let req = Request {
            sid,
            ssid,
            addr: iova.0,
            access,
        };
        let st = self.stream_table();
        let cache = &mut self.cfg_cache;
        match resolve(mem, &self.caps, &st, &req, Purpose::Transaction, cache) {
            Outcome::Mapped(r) => {
                let t = to_translation(&r, access);
                // The kind is noted even when not cached: IommuView range
                // caches follow the IOTLB's invalidations.
                self.kinds |= r.kind.bit();
                if r.cacheable && keyable {
                    self.iotlb.insert(generation, rid, pasid, r.tag, t);
                }
                TranslateResult::Mapped(t)
            }
            Outcome::Fault(f) => {
                self.counters.faults += 1;
                self.report(mem, &req, &f)
            }
        }
    }

    /// IHI 0070 SMMU_GBPA: with SMMUEN = 0 transactions abort (ABORT = 1)
    /// or bypass, and nothing is recorded.
    fn global_bypass(&self, iova: Iova, access: Access) -> TranslateResult {
        if gbpa::ABORT.is_set(self.regs.get(off::GBPA)) {
            return TranslateResult::Fault {
                event: None,
                recorded: false,
                abort: true,
            };
        }
        let size = PageSize::SIZE_4K;
        TranslateResult::Mapped(Translation {
            iova: iova.align_down(size.bytes()),
            gpa: Gpa(iova.align_down(size.bytes()).0),
            size,
            access: Access::READ | Access::WRITE | Access::EXEC | (access & Access::PRIV),
        })
    }

    /// Records a fault as configured: stalled (the event carries the stall
    /// tag; if it cannot be recorded or no tag is free the transaction is
    /// terminated instead, IHI 0070 "Stall model"), or terminated with the event
    /// recorded when R/S2R (or a configuration error) asks.
    pub(crate) fn report<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        req: &Request,
        f: &Fault,
    ) -> TranslateResult {
        let Some(mut ev) = f.event else {
            return TranslateResult::Fault {
                event: None,
                recorded: false,
                abort: f.abort,
            };
        };
        if f.stall
            && let Some(stag) = self.stalls.add(req, f.abort)
        {
            ev.stag = Some(stag);
            if self.record_event(mem, &ev) == Recorded::Yes {
                return TranslateResult::Stalled { stag };
            }
            self.stalls.remove(req.sid, stag);
            ev.stag = None;
        }
        let recorded = f.record && self.record_event(mem, &ev) == Recorded::Yes;
        TranslateResult::Fault {
            event: Some(ev.id),
            recorded,
            abort: f.abort,
        }
    }

    /// Resolves a transaction without caching the translation or
    /// recording a fault (the configuration cache is used and filled):
    /// what a test or a nesting layer uses to see what the tables say.
    pub fn walk<M: GuestMemory + ?Sized>(&mut self, mem: &M, req: &Request) -> Outcome {
        let st = self.stream_table();
        let cache = &mut self.cfg_cache;
        resolve(mem, &self.caps, &st, req, Purpose::Transaction, cache)
    }

    pub(crate) fn notify_pri(&self, n: &PriResponseNotice) {
        if let Some(f) = &self.cb.pri {
            f(n);
        }
    }

    pub(crate) fn notify_stall(&self, r: &StallResolution) {
        if let Some(f) = &self.cb.stall {
            f(r);
        }
    }

    pub(crate) fn notify_atc(&self, inv: &AtcInvalidation) -> bool {
        self.cb.atc.as_ref().is_none_or(|f| f(inv))
    }

    /// Offers a command to the host seam and the passthrough backend;
    /// whether either took it (a sync is then owed before CMDQ_CONS
    /// passes it).
    pub(crate) fn forward<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        index: u32,
        raw: [u64; 2],
        cmd: &Command,
    ) -> bool {
        let mut taken = false;
        if let Some(h) = &mut self.host {
            h.command(index, cmd);
            taken = true;
        }
        if let Some(mut p) = self.passthrough.take() {
            taken |= p.command(self, mem, index, raw, cmd);
            self.passthrough = Some(p);
        }
        taken
    }
}

/// The cached form of a resolved translation.
pub(crate) fn to_translation(r: &Resolved, access: Access) -> Translation {
    let size = PageSize::new(1u64 << r.shift.min(63)).unwrap_or(PageSize::SIZE_4K);
    Translation {
        iova: Iova(r.iova),
        gpa: Gpa(r.oa),
        size,
        access: r.granted | (access & Access::PRIV),
    }
}
