//! Unit tests, one file per spec area; the shared harness is here.

use std::sync::{Arc, Mutex};

use nesting_core::options::ModelOptions;
use nesting_core::types::{Access, Iova};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::event::{EventId, EventRecord};
use crate::mock::{Driver, PageAlloc, PageTable, cdtable_ste, pte, s1_cd};
use crate::options::Smmuv3Config;
use crate::walk::Granule;
use crate::{Interrupt, Smmuv3, TranslateResult};

mod ats;
mod bounds;
mod cache;
mod cmdq;
mod events;
mod failing_host;
mod host;
mod instances;
mod passthrough;
mod priq;
mod proptests;
mod regs;
mod snapshot;
mod stall;
mod translate;
mod walk;

/// Guest RAM of the tests: 32 MiB at 0; tables come from the pool at
/// 16 MiB.
pub(crate) const RAM: u64 = 32 << 20;
pub(crate) const POOL: u64 = 16 << 20;

pub(crate) fn config(opts: &[&str]) -> Smmuv3Config {
    Smmuv3Config::from_options(opts).unwrap()
}

pub(crate) fn ram() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
}

/// An SMMU, its guest memory, a page pool and the interrupts it raised.
pub(crate) struct Harness {
    pub mem: GuestMemoryMmap<()>,
    pub smmu: Smmuv3,
    pub alloc: PageAlloc,
    pub irqs: Arc<Mutex<Vec<Interrupt>>>,
}

impl Harness {
    pub fn new(opts: &[&str]) -> Harness {
        let mut smmu = Smmuv3::new(config(opts));
        let irqs = Arc::new(Mutex::new(Vec::new()));
        let sink = irqs.clone();
        smmu.set_interrupt_callback(move |i| {
            sink.lock().unwrap().push(i);
            true
        });
        Harness {
            mem: ram(),
            smmu,
            alloc: PageAlloc::new(POOL, RAM - POOL),
            irqs,
        }
    }

    pub fn read32(&self, off: u64) -> u64 {
        self.smmu.mmio_read(off, 4)
    }

    pub fn read64(&self, off: u64) -> u64 {
        self.smmu.mmio_read(off, 8)
    }

    pub fn write32(&mut self, off: u64, v: u64) {
        self.smmu.mmio_write(&self.mem, off, 4, v);
    }

    pub fn write64(&mut self, off: u64, v: u64) {
        self.smmu.mmio_write(&self.mem, off, 8, v);
    }

    /// Probes like Linux.
    pub fn probe(&mut self) -> Driver {
        Driver::probe(&mut self.smmu, &self.mem, &mut self.alloc).expect("Linux probe succeeds")
    }

    pub fn translate(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> TranslateResult {
        self.smmu
            .translate(&self.mem, sid, ssid, Iova(iova), access)
    }

    /// The translated address, or `None` on a fault.
    pub fn gpa(&mut self, sid: u32, ssid: Option<u32>, iova: u64, access: Access) -> Option<u64> {
        match self.translate(sid, ssid, iova, access) {
            TranslateResult::Mapped(t) => Some(t.gpa_of(Iova(iova)).0),
            _ => None,
        }
    }

    /// The fault's event type (panics on a translation).
    pub fn fault(
        &mut self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Option<EventId> {
        match self.translate(sid, ssid, iova, access) {
            TranslateResult::Fault { event, .. } => event,
            other => panic!("expected a fault, got {other:?}"),
        }
    }
}

/// A probed SMMU with one stage-1 stream: `SID` uses CD 0 (ASID `ASID`)
/// with 4-level 4 KiB tables.
pub(crate) struct S1Setup {
    pub h: Harness,
    pub drv: Driver,
    pub pt: PageTable,
    pub cd_table: (u64, bool),
}

pub(crate) const SID: u32 = 0x10;
pub(crate) const ASID: u16 = 5;

impl S1Setup {
    pub fn new(opts: &[&str]) -> S1Setup {
        Self::with(opts, Granule::G4K, 48, 0)
    }

    /// With `granule`, `ia_bits` input and `cdmax` SubstreamID bits.
    pub fn with(opts: &[&str], granule: Granule, ia_bits: u32, cdmax: u8) -> S1Setup {
        let mut h = Harness::new(opts);
        let mut drv = h.probe();
        let pt = PageTable::stage1(&h.mem, &mut h.alloc, granule, ia_bits, 48);
        let cd_table = Driver::cd_table(&h.mem, &mut h.alloc, cdmax, true);
        let hd = h.smmu.config().httu == crate::options::Httu::AccessDirty;
        let ste = cdtable_ste(cd_table.0, cdmax, cd_table.1, false);
        drv.install_ste(&mut h.smmu, &h.mem, &mut h.alloc, SID, ste);
        let cd = s1_cd(ASID, &pt, 5, hd);
        drv.install_cd(&mut h.smmu, &h.mem, &mut h.alloc, cd_table, SID, 0, cd);
        S1Setup {
            h,
            drv,
            pt,
            cd_table,
        }
    }

    /// Maps a 4 KiB page (level 3) read/write, unprivileged.
    pub fn map(&mut self, iova: u64, pa: u64) {
        self.map_attrs(iova, pa, 3, pte::s1(true, false, false));
    }

    pub fn map_attrs(&mut self, iova: u64, pa: u64, level: u32, attrs: u64) {
        self.pt
            .map(&self.h.mem, &mut self.h.alloc, iova, pa, level, attrs);
    }

    /// Issues commands with a CMD_SYNC.
    pub fn issue(&mut self, cmds: &[[u64; 2]]) -> bool {
        self.drv.issue(&mut self.h.smmu, &self.h.mem, cmds)
    }

    pub fn next_event(&mut self) -> Option<EventRecord> {
        self.drv.next_event(&mut self.h.smmu, &self.h.mem)
    }
}
