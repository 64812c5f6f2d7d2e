//! Faults (VT-d chapter 7): the fault reasons of legacy and scalable mode (VT-d
//! 7.2.3 "Fault Conditions and Remapping Hardware Behavior for Various
//! Requests", the "Fault Reason" encodings Linux's `dmar.c` decodes), primary
//! fault logging into the circular fault recording registers (VT-d "Primary
//! Fault Logging"), and the record format (11.4 FRCD_REG).

use nesting_core::types::Bdf;

pub(crate) mod record;

pub use record::{AddressType, FaultReason, frcd};

use crate::regs::{RegisterFile, fsts, off};

/// The request a fault is recorded for (11.4 FRCD_REG record fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Requester (source-id).
    pub source_id: u16,
    /// PASID, when the request carried one.
    pub pasid: Option<u32>,
    /// Input address of the request (the record keeps bits 63:12).
    pub address: u64,
    /// Whether the request was a write (T1=0) or a read (T1=1).
    pub write: bool,
    /// Whether the faulting request was a page request (T2=1, T1=0: the
    /// type field T1:T2 is 00 write, 01 page request, 10 read, 11 atomic).
    pub page_request: bool,
    /// Execute requested.
    pub exec: bool,
    /// Privileged (supervisor) request.
    pub privileged: bool,
    /// Why.
    pub reason: FaultReason,
}

impl FaultRecord {
    /// The record of an untranslated request as the two quadwords of a
    /// fault recording register.
    pub fn encode(&self) -> [u64; 2] {
        self.encode_at(AddressType::Untranslated)
    }

    /// The record of a request of address type `at`.
    pub fn encode_at(&self, at: AddressType) -> [u64; 2] {
        let mut r = frcd::Frcd::default()
            .with_fi(self.address)
            .with_sid(Bdf(self.source_id))
            .with_fr(self.reason)
            .with_exe(self.exec)
            .with_privileged(self.privileged)
            .with_at(at);
        r = if self.page_request {
            r.with_t2(true)
        } else {
            r.with_t1(!self.write)
        };
        if let Some(p) = self.pasid {
            r = r.with_pp(true).with_pv(p);
        }
        r.with_f(true).0
    }

    /// Decodes the two quadwords of a fault recording register (whatever F).
    pub fn decode(raw: [u64; 2]) -> FaultRecord {
        let r = frcd::Frcd(raw);
        FaultRecord {
            source_id: r.sid().0,
            pasid: r.pp().then(|| r.pv()),
            address: r.fi(),
            write: !r.t1(),
            page_request: r.t2() && !r.t1(),
            exec: r.exe(),
            privileged: r.privileged(),
            reason: r.fr(),
        }
    }
}

/// Outcome of trying to log one fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutcome {
    /// Written into fault recording register `index`.
    Recorded {
        /// Which record.
        index: u16,
    },
    /// The next record was still pending: PFO set, fault dropped.
    Overflow,
    /// PFO was already set: fault dropped without any status change.
    Dropped,
}

/// Primary fault logging state (VT-d "Primary Fault Logging"): the hardware's next-record index
/// into the circular fault recording registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultLog {
    next: u16,
}

impl FaultLog {
    /// The index the next fault will be recorded at.
    pub fn next_index(&self) -> u16 {
        self.next
    }

    /// Restores the next-record index (snapshot restore), wrapped to `nfr`.
    pub fn set_next_index(&mut self, next: u16, nfr: u16) {
        self.next = next % nfr.max(1);
    }

    /// Logs a fault into the registers (VT-d "Primary Fault Logging"): if PFO is set the fault is
    /// dropped; if the record at the next index still holds a fault (F=1)
    /// PFO is set and the fault dropped; otherwise the record is written
    /// with F=1, PPF is set and, if PPF was clear, FRI points at it.
    pub fn log(
        &mut self,
        regs: &mut RegisterFile,
        fro: u64,
        nfr: u16,
        rec: &FaultRecord,
        at: AddressType,
    ) -> LogOutcome {
        let status = regs.get(off::FSTS);
        // VT-d "Primary Fault Logging": "If the Primary Fault Overflow (PFO) field is Set,
        // hardware does not record the fault."
        if fsts::PFO.is_set(status) {
            return LogOutcome::Dropped;
        }
        let index = self.next % nfr.max(1);
        let base = fro + 16 * u64::from(index);
        // VT-d "Primary Fault Logging": a record whose F field is still Set is not overwritten;
        // hardware sets PFO instead.
        if frcd::F.is_set(regs.get(base + 8)) {
            regs.set(off::FSTS, fsts::PFO.set(status, 1));
            return LogOutcome::Overflow;
        }
        let [lo, hi] = rec.encode_at(at);
        regs.set(base, lo);
        regs.set(base + 8, hi);
        let mut status = status;
        if !fsts::PPF.is_set(status) {
            status = fsts::FRI.set(status, u64::from(index));
        }
        regs.set(off::FSTS, fsts::PPF.set(status, 1));
        self.next = (index + 1) % nfr.max(1);
        LogOutcome::Recorded { index }
    }

    /// Recomputes PPF after software cleared F bits (11.4 FSTS_REG: PPF is Set
    /// while any fault recording register has F Set), and moves FRI to the
    /// first pending record at or after the old FRI.
    pub fn refresh_ppf(regs: &mut RegisterFile, fro: u64, nfr: u16) {
        let status = regs.get(off::FSTS);
        let fri = u16::from(fsts::Fsts(status).fri());
        let n = nfr.max(1);
        let pending = (0..n)
            .map(|k| (fri + k) % n)
            .find(|i| frcd::F.is_set(regs.get(fro + 16 * u64::from(*i) + 8)));
        let status = match pending {
            Some(i) => fsts::FRI.set(fsts::PPF.set(status, 1), u64::from(i)),
            None => fsts::PPF.set(status, 0),
        };
        regs.set(off::FSTS, status);
    }
}
