//! The PRI queue (IHI 0070 chapter 8, "Page request queue"; "PRI
//! queue overflow"): page requests of emulated PCIe devices with PRI,
//! recorded for the guest, which answers with CMD_PRI_RESP (delivered to
//! the VMM through [`Smmuv3::set_pri_response_callback`]).

use vm_memory::GuestMemory;

use crate::cmdq::PriResponse;
use crate::irq::IrqSource;
use crate::model::Smmuv3;
use crate::queue::Queue;
use crate::regs::{MAX_QUEUE_LOG2, cr0, gerror, off, queue_ptr};
use crate::wire::{Qwords, write_qwords};

/// Bytes per PRI queue entry.
pub const PRIQ_ENTRY_SIZE: u64 = 16;
const _: () = assert!(size_of::<Qwords<2>>() == PRIQ_ENTRY_SIZE as usize);

nesting_core::bitfield! {
    /// A PRI queue entry (IHI 0070 "PRI queue entry format"), bits
    /// numbered across its two 64-bit words.
    pub struct PriEntry([u64; 2]);
    /// StreamID.
    SID [31:0]: u32 => sid, with_sid;
    /// SubstreamID (PASID).
    SSID [51:32]: u32 => ssid, with_ssid;
    /// Privileged request.
    PRIV [58]: bool => privileged, with_privileged;
    /// Execute requested.
    EXEC [59]: bool => exec, with_exec;
    /// Read requested.
    READ [60]: bool => read, with_read;
    /// Write requested.
    WRITE [61]: bool => write, with_write;
    /// Last request of its group.
    LAST [62]: bool => last, with_last;
    /// SubstreamID valid.
    SSV [63]: bool => ssv, with_ssv;
    /// Page request group index.
    PRG_INDEX [72:64]: u16 => prg_index, with_prg_index;
    /// Page address, bits 63:12.
    ADDR [127:76]: address => addr, with_addr;
}

/// A PCIe page request of an emulated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// StreamID.
    pub sid: u32,
    /// PASID, if the request carries one.
    pub ssid: Option<u32>,
    /// Page address.
    pub addr: u64,
    /// Read access requested.
    pub read: bool,
    /// Write access requested.
    pub write: bool,
    /// Execute access requested.
    pub exec: bool,
    /// Privileged.
    pub privileged: bool,
    /// Last request of the page request group.
    pub last: bool,
    /// Page request group index (9 bits).
    pub prg_index: u16,
}

impl PageRequest {
    /// The queue entry.
    pub fn encode(&self) -> PriEntry {
        PriEntry::default()
            .with_sid(self.sid)
            .with_ssv(self.ssid.is_some())
            .with_ssid(self.ssid.unwrap_or(0))
            .with_privileged(self.privileged)
            .with_exec(self.exec)
            .with_read(self.read)
            .with_write(self.write)
            .with_last(self.last)
            .with_prg_index(self.prg_index)
            .with_addr(self.addr)
    }
}

/// What became of a page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequestOutcome {
    /// In the PRI queue; the guest will answer with CMD_PRI_RESP.
    Queued,
    /// Not queued, and the SMMU answered the group itself (the request
    /// was the group's last): the VMM delivers this response to the
    /// device.
    AutoResponse(PriResponse),
    /// Not queued; not the last of its group, so no response is due.
    Dropped,
}

impl Smmuv3 {
    fn priq(&self) -> Queue {
        Queue::from_base(
            self.regs.get(off::PRIQ_BASE),
            MAX_QUEUE_LOG2,
            PRIQ_ENTRY_SIZE,
        )
    }

    /// Records a page request (IHI 0070 8). Without IDR0.PRI or with the
    /// queue disabled the request is refused: a last request is answered
    /// with Response Failure. "PRI queue overflow": a full queue loses the request, toggles
    /// PRIQ_PROD.OVFLG if no overflow is outstanding, and answers a last
    /// request with Success so that the device retries its translation.
    /// An aborted queue write sets GERROR.PRIQ_ABT_ERR and is answered
    /// like an overflow.
    pub fn page_request<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        r: &PageRequest,
    ) -> PageRequestOutcome {
        let answer = |resp| {
            if r.last {
                PageRequestOutcome::AutoResponse(resp)
            } else {
                PageRequestOutcome::Dropped
            }
        };
        if !self.caps.pri || !cr0::PRIQEN.is_set(self.regs.get(off::CR0ACK)) {
            return answer(PriResponse::Fail);
        }
        let q = self.priq();
        let prod_raw = self.regs.get(off::PRIQ_PROD);
        let cons_raw = self.regs.get(off::PRIQ_CONS);
        let (prod, cons) = (q.normalize(prod_raw), q.normalize(cons_raw));
        if q.is_full(prod, cons) {
            let ovf = queue_ptr::OVF.is_set(prod_raw);
            if ovf == queue_ptr::OVF.is_set(cons_raw) {
                self.regs.set(
                    off::PRIQ_PROD,
                    queue_ptr::OVF.set(prod_raw, u64::from(!ovf)),
                );
                self.signal(mem, IrqSource::PriQueue);
            }
            return answer(PriResponse::Success);
        }
        let ok = q
            .slot(prod)
            .is_some_and(|at| write_qwords(mem, at, r.encode().0).is_ok());
        if !ok {
            self.global_error(mem, gerror::PRIQ_ABT_ERR);
            return answer(PriResponse::Success);
        }
        let next = u64::from(q.next(prod));
        self.regs
            .set(off::PRIQ_PROD, queue_ptr::WRAP_INDEX.set(prod_raw, next));
        self.signal(mem, IrqSource::PriQueue);
        PageRequestOutcome::Queued
    }
}
