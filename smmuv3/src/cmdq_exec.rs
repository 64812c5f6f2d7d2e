//! Command queue consumption and command execution (IHI 0070
//! "Command and Event queues"; chapter 4; 7.1, "Command queue errors").
//!
//! The queue is drained from CMDQ_CONS to CMDQ_PROD when CMDQ_PROD is
//! written, when CMDQEN is set and when software acknowledges
//! GERROR.CMDQ_ERR. A drain reads at most one queue's worth of commands
//! (2^LOG2SIZE), so a guest rewriting PROD cannot keep it going. An error
//! stops the queue at the command that caused it: CMDQ_CONS points at it,
//! CMDQ_CONS.ERR says why, GERROR.CMDQ_ERR is activated, and nothing more
//! is consumed until software acknowledges it.

use nesting_core::iotlb::IotlbInvalidation;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::Gpa;
use vm_memory::GuestMemory;

use crate::cmdq::{CMD_SIZE, Cerror, Command, ResumeAction, SyncSignal};
use crate::host::Refused;
use crate::irq::{Interrupt, IrqSource, Signal};
use crate::model::{PriResponseNotice, Smmuv3};
use crate::queue::Queue;
use crate::regs::{MAX_QUEUE_LOG2, cr0, gerror, off, queue_ptr};
use crate::stall::{StallOutcome, StallResolution};
use crate::tlb::{Kind, STAGE1_KINDS, Scope, VMID_KINDS, invalidations};

/// Commands read from guest memory at once.
const FETCH_BATCH: usize = 64;

/// CMD_CFGI_STE_RANGE over more StreamIDs than this drops the whole
/// translation cache instead of visiting each stream.
const CFGI_RANGE_PER_STREAM: u32 = 8;

/// Where the drain stands with respect to the host backend.
#[derive(Clone, Copy, Debug)]
struct Offered {
    /// Position of the first command offered since the last sync.
    first: Option<u32>,
}

impl Smmuv3 {
    fn cmdq(&self) -> Queue {
        Queue::from_base(self.regs.get(off::CMDQ_BASE), MAX_QUEUE_LOG2, CMD_SIZE)
    }

    /// Drains the command queue (see the module documentation).
    pub(crate) fn process_cmdq<M: GuestMemory + ?Sized>(&mut self, mem: &M) {
        if !cr0::CMDQEN.is_set(self.regs.get(off::CR0ACK)) || self.error_active(gerror::CMDQ_ERR) {
            return;
        }
        let q = self.cmdq();
        let prod = q.normalize(self.regs.get(off::CMDQ_PROD));
        let mut cons = q.normalize(self.regs.get(off::CMDQ_CONS));
        let mut offered = Offered { first: None };
        let mut budget = q.entries();
        let mut buf = [[0u64; 2]; FETCH_BATCH];
        while budget > 0 && !q.is_empty(prod, cons) {
            let n = q.contiguous(prod, cons).min(budget).min(FETCH_BATCH as u32) as usize;
            let Some(batch) = buf.get_mut(..n) else {
                return;
            };
            let fetched = fetch(mem, &q, cons, batch);
            for raw in batch.iter().take(fetched) {
                budget -= 1;
                if !self.consume(mem, &q, cons, *raw, &mut offered) {
                    return;
                }
                cons = q.next(cons);
            }
            if fetched < n {
                // IHI 0070 7.1 CERROR_ABT: the fetch of a command aborted;
                // CONS stays at it.
                self.cmdq_error(mem, cons, Cerror::Abt);
                return;
            }
        }
        if offered.first.is_some()
            && let Err(r) = self.host_sync(mem)
        {
            let at = self.refused_at(&q, &offered, r, cons);
            self.cmdq_error(mem, at, Cerror::Ill);
            return;
        }
        self.set_cons(cons, None);
    }

    /// Executes one command; `false` stops the drain (an error was
    /// reported).
    fn consume<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        q: &Queue,
        at: u32,
        raw: [u64; 2],
        offered: &mut Offered,
    ) -> bool {
        let cmd = match Command::decode(raw, &self.caps) {
            Ok(c) => c,
            Err(why) => {
                nesting_core::guest_log!(
                    Debug,
                    "smmuv3: CERROR_ILL at {at:#x}: {why:?} ({raw:#x?})"
                );
                self.cmdq_error(mem, at, Cerror::Ill);
                return false;
            }
        };
        self.commands += 1;
        match cmd {
            Command::Sync {
                cs,
                msi_addr,
                msi_data,
            } => {
                let ok = self.complete_sync(mem, q, at, offered, (cs, msi_addr, msi_data));
                offered.first = None;
                ok
            }
            Command::Prefetch { .. } => true,
            other => {
                self.execute(&other);
                if self.forward(mem, at, raw, &other) && offered.first.is_none() {
                    offered.first = Some(at);
                }
                true
            }
        }
    }

    /// Every host operation owed for the commands offered since the last
    /// sync has returned: the seam's first, then the passthrough backend's
    /// (its invalidations go out in one call here). The first refusal
    /// wins.
    fn host_sync<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<(), Refused> {
        let seam = match &mut self.host {
            Some(h) => h.sync(),
            None => Ok(()),
        };
        let own = match self.passthrough.take() {
            Some(mut p) => {
                let r = p.sync(self, mem);
                self.passthrough = Some(p);
                r
            }
            None => Ok(()),
        };
        seam.and(own)
    }

    /// Where the queue stops for a host refusal: the refused command if it
    /// is one offered since the last sync, else `fallback` (a backend
    /// naming some other position gets the stop at the sync itself).
    fn refused_at(&self, q: &Queue, offered: &Offered, r: Refused, fallback: u32) -> u32 {
        let Some(first) = offered.first else {
            return fallback;
        };
        let dist = |from: u32, to: u32| to.wrapping_sub(from) & q.ptr_mask();
        if dist(first, r.index) < dist(first, fallback) {
            r.index & q.ptr_mask()
        } else {
            fallback
        }
    }

    /// CMD_SYNC (IHI 0070 CMD_SYNC): completes once every earlier command has
    /// (ATC invalidations answered, host operations returned); then
    /// CMDQ_CONS moves past it and the completion is signalled.
    fn complete_sync<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        q: &Queue,
        at: u32,
        offered: &Offered,
        (cs, msi_addr, msi_data): (SyncSignal, u64, u32),
    ) -> bool {
        // 7.1 CERROR_ATC_INV_SYNC: a CMD_SYNC cannot complete after an
        // ATC invalidation timed out; CONS stays at the sync.
        if self.atc_timeout {
            self.atc_timeout = false;
            self.cmdq_error(mem, at, Cerror::AtcInvSync);
            return false;
        }
        if let Err(r) = self.host_sync(mem) {
            let stop = self.refused_at(q, offered, r, at);
            self.cmdq_error(mem, stop, Cerror::Ill);
            return false;
        }
        self.set_cons(q.next(at), None);
        match cs {
            SyncSignal::None => {}
            SyncSignal::Irq if self.caps.msi => {
                if !self.msi_write(mem, IrqSource::CmdSync, msi_addr, msi_data) {
                    self.global_error(mem, gerror::MSI_CMDQ_ABT_ERR);
                }
            }
            SyncSignal::Irq => {
                self.deliver(Interrupt {
                    source: IrqSource::CmdSync,
                    signal: Signal::Wired,
                });
            }
            SyncSignal::Sev => {
                self.deliver(Interrupt {
                    source: IrqSource::CmdSync,
                    signal: Signal::Sev,
                });
            }
        }
        true
    }

    fn set_cons(&mut self, cons: u32, err: Option<Cerror>) {
        let mut v = queue_ptr::WRAP_INDEX.set(self.regs.get(off::CMDQ_CONS), u64::from(cons));
        if let Some(e) = err {
            v = queue_ptr::ERR.set(v, u64::from(e.code()));
        }
        self.regs.set(off::CMDQ_CONS, v);
        self.publish_cons();
    }

    /// Stops the queue at `at` with `err` (IHI 0070 7.1).
    fn cmdq_error<M: GuestMemory + ?Sized>(&mut self, mem: &M, at: u32, err: Cerror) {
        self.set_cons(at, Some(err));
        self.global_error(mem, gerror::CMDQ_ERR);
    }

    /// Applies a command to the model's own state.
    fn execute(&mut self, cmd: &Command) {
        match *cmd {
            Command::CfgiSte { .. }
            | Command::CfgiCdAll { .. }
            | Command::CfgiSteRange { .. }
            | Command::CfgiCd { .. } => self.execute_cfgi(cmd),
            Command::AtcInv(inv) => {
                if !self.notify_atc(&inv) {
                    self.atc_timeout = true;
                }
            }
            Command::PriResp {
                sid,
                ssid,
                prg_index,
                resp,
            } => self.notify_pri(&PriResponseNotice {
                sid,
                ssid,
                prg_index,
                resp,
            }),
            Command::Resume { sid, stag, action } => self.resume(sid, stag, action),
            Command::StallTerm { sid } => {
                for s in self.stalls.remove_stream(sid) {
                    self.notify_stall(&StallResolution {
                        stall: s,
                        outcome: StallOutcome::Terminate { abort: s.abort },
                    });
                }
            }
            Command::Prefetch { .. } | Command::Sync { .. } => {}
            _ => self.execute_tlbi(cmd),
        }
    }

    /// Configuration invalidations (IHI 0070 4.3): the cached STEs and
    /// CDs they name, and every translation of the streams involved.
    fn execute_cfgi(&mut self, cmd: &Command) {
        match *cmd {
            Command::CfgiSte { sid } => {
                self.cfg_cache.drop_streams(sid, 1);
                self.drop_scope(Scope::Stream { sid });
            }
            Command::CfgiCdAll { sid } => {
                self.cfg_cache.drop_cds_of(sid);
                self.drop_scope(Scope::Stream { sid });
            }
            Command::CfgiSteRange { first, log2 } => {
                self.cfg_cache.drop_streams(first, 1u64 << log2);
                self.cfgi_range(first, log2);
            }
            Command::CfgiCd { sid, ssid, leaf } => {
                self.cfg_cache.drop_cd(sid, ssid, leaf);
                self.drop_scope(Scope::Substream { sid, ssid });
                // CD 0 also serves transactions without a SubstreamID.
                if ssid == 0 {
                    self.drop_scope(Scope::Stream { sid });
                }
            }
            _ => {}
        }
    }

    /// TLB invalidations (IHI 0070 4.4), by the tags of [`crate::tlb`].
    fn execute_tlbi(&mut self, cmd: &Command) {
        let ril = self.caps.ril;
        let scope = match *cmd {
            Command::TlbiNhAll { vmid } => Scope::Vmid {
                kinds: STAGE1_KINDS,
                vmid,
            },
            Command::TlbiNhAsid { vmid, asid } => Scope::Asid { vmid, asid },
            Command::TlbiNhVa { vmid, asid, addr } => Scope::Range {
                kinds: STAGE1_KINDS,
                vmid,
                asid: Some(asid),
                span: addr.span(ril),
            },
            Command::TlbiNhVaa { vmid, addr } => Scope::Range {
                kinds: STAGE1_KINDS,
                vmid,
                asid: None,
                span: addr.span(ril),
            },
            Command::TlbiS12Vmall { vmid } => Scope::Vmid {
                kinds: VMID_KINDS,
                vmid,
            },
            // CMD_TLBI_S2_IPA removes stage-2-only entries; combined
            // stage 1+2 entries need CMD_TLBI_NH_* or S12_VMALL (Linux
            // follows an S2 unmap of a nesting parent with TLBI_NH_ALL).
            Command::TlbiS2Ipa { vmid, addr } => Scope::Range {
                kinds: Kind::S2.bit(),
                vmid,
                asid: None,
                span: addr.span(ril),
            },
            Command::TlbiNsnhAll => Scope::All,
            _ => return,
        };
        // CDs of nested streams were fetched through stage 2: a stage-2
        // invalidation may make them stale.
        if matches!(
            cmd,
            Command::TlbiS12Vmall { .. } | Command::TlbiS2Ipa { .. } | Command::TlbiNsnhAll
        ) {
            self.cfg_cache.clear_cds();
        }
        self.drop_scope(scope);
    }

    /// CMD_RESUME (IHI 0070 CMD_RESUME): a tag that names no stalled
    /// transaction of the stream is ignored.
    fn resume(&mut self, sid: u32, stag: u16, action: ResumeAction) {
        let Some(s) = self.stalls.remove(sid, stag) else {
            return;
        };
        let outcome = match action {
            ResumeAction::Retry => StallOutcome::Retry,
            ResumeAction::Abort => StallOutcome::Terminate { abort: true },
            ResumeAction::Terminate => StallOutcome::Terminate { abort: s.abort },
        };
        self.notify_stall(&StallResolution { stall: s, outcome });
    }

    fn cfgi_range(&mut self, first: u32, log2: u32) {
        if log2 > CFGI_RANGE_PER_STREAM {
            self.invalidate_all();
            return;
        }
        for i in 0..(1u32 << log2) {
            self.drop_scope(Scope::Stream {
                sid: first.wrapping_add(i),
            });
        }
    }

    fn drop_scope(&mut self, scope: Scope) {
        if scope == Scope::All {
            self.invalidate_all();
            return;
        }
        let mut out: Vec<IotlbInvalidation> = std::mem::take(&mut self.scratch);
        out.clear();
        invalidations(scope, self.kinds, &mut out);
        for inv in &out {
            self.iotlb.invalidate(*inv);
        }
        self.scratch = out;
    }
}

/// Reads the commands at `cons` into `batch`; returns how many were read
/// (fewer than asked when one is not in guest memory).
fn fetch<M: GuestMemory + ?Sized>(mem: &M, q: &Queue, cons: u32, batch: &mut [[u64; 2]]) -> usize {
    let Some(at) = q.slot(cons) else { return 0 };
    let mut bytes = [0u8; FETCH_BATCH * CMD_SIZE as usize];
    let len = batch.len() * CMD_SIZE as usize;
    let Some(buf) = bytes.get_mut(..len) else {
        return 0;
    };
    if mem.read_bytes_at(Gpa(at), buf).is_ok() {
        for (cmd, b) in batch.iter_mut().zip(buf.chunks_exact(16)) {
            let w = |i: usize| {
                let mut q = [0u8; 8];
                q.copy_from_slice(b.get(i * 8..i * 8 + 8).unwrap_or(&[0; 8]));
                u64::from_le_bytes(q)
            };
            *cmd = [w(0), w(1)];
        }
        return batch.len();
    }
    // Some command is outside guest memory: read one by one up to it.
    for (i, cmd) in batch.iter_mut().enumerate() {
        let addr = at + (i as u64) * CMD_SIZE;
        match crate::wire::read_qwords::<M, 2>(mem, addr) {
            Ok(w) => *cmd = w,
            Err(_) => return i,
        }
    }
    batch.len()
}
