//! Unit tests, one file per spec area; the shared harness is here.

use std::sync::{Arc, Mutex};

use nesting_core::options::ModelOptions;
use nesting_core::types::{Access, Bdf, Iova, Pasid};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::mock::PageAlloc;
use crate::options::VtdConfig;
use crate::{Interrupt, TranslateResult, Vtd};

mod ats;
mod bounds;
mod cache;
mod faults;
mod legacy;
mod passthrough;
mod proptests;
mod prq;
mod queue;
mod regs;
mod scalable;
mod snapshot;
mod tables;

/// Guest RAM of the tests: 32 MiB at 0; tables come from the pool at
/// 16 MiB.
pub(crate) const RAM: u64 = 32 << 20;
pub(crate) const POOL: u64 = 16 << 20;

pub(crate) struct Harness {
    pub mem: GuestMemoryMmap<()>,
    pub vtd: Vtd,
    pub alloc: PageAlloc,
    pub irqs: Arc<Mutex<Vec<Interrupt>>>,
}

pub(crate) fn config(opts: &[&str]) -> VtdConfig {
    VtdConfig::from_options(opts).unwrap()
}

impl Harness {
    pub fn new(opts: &[&str]) -> Harness {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let mut vtd = Vtd::new(config(opts));
        // Tests look at the unit's events.
        vtd.keep_events(true);
        let irqs = Arc::new(Mutex::new(Vec::new()));
        let sink = irqs.clone();
        vtd.set_interrupt_callback(move |i| sink.lock().unwrap().push(i));
        Harness {
            mem,
            vtd,
            alloc: PageAlloc::new(POOL, RAM - POOL),
            irqs,
        }
    }

    pub fn read32(&self, off: u64) -> u64 {
        self.vtd.mmio_read(off, 4)
    }

    pub fn read64(&self, off: u64) -> u64 {
        self.vtd.mmio_read(off, 8)
    }

    pub fn write32(&mut self, off: u64, v: u64) {
        self.vtd.mmio_write(&self.mem, off, 4, v);
    }

    pub fn write64(&mut self, off: u64, v: u64) {
        self.vtd.mmio_write(&self.mem, off, 8, v);
    }

    pub fn translate(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> TranslateResult {
        let pasid = pasid.map(|p| Pasid::new(p).unwrap());
        self.vtd
            .translate(&self.mem, Bdf(sid), pasid, Iova(iova), access)
    }

    /// The GPA of a translation, or the fault reason code.
    pub fn gpa(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, u8> {
        match self.translate(sid, pasid, iova, access) {
            TranslateResult::Mapped(t) => Ok(t.gpa_of(Iova(iova)).0),
            TranslateResult::Fault { reason, .. } => Err(reason.code()),
        }
    }

    pub fn irq_count(&self) -> usize {
        self.irqs.lock().unwrap().len()
    }
}
