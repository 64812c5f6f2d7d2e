//! Snapshot and restore of a unit (live migration, save/restore): the
//! configuration as its `model vtd` options, every register, the latched
//! root table pointer and the fault log's next-record index.
//!
//! [`Vtd`] implements nesting-core's [`Snapshot`]: `unit.to_bytes()` is
//! what a VMM stores (model `"vtd"`, format [`SNAPSHOT_VERSION`]), and
//! `Vtd::from_bytes(&bytes)` the unit it restores; `snapshot()` and
//! `restore()` work on the [`VtdSnapshot`] value. Passthrough devices are
//! not in it: after restoring, enable passthrough and add each device
//! again ([`Vtd::enable_passthrough`], [`Vtd::add_passthrough`]); the
//! unit's first nesting event then rebuilds their host state from the
//! tables.
//!
//! The translation cache is not saved: it is a cache, and a restored unit
//! starts empty (always architecturally allowed). Pending nesting events
//! are not saved either; a restored unit queues [`VtdEvent::Resync`] so a
//! nesting layer rebuilds from the tables.

use serde::{Deserialize, Serialize};

pub use nesting_core::snapshot::{Snapshot, SnapshotError};
use nesting_core::snapshot::{
    check_version, restore_options, restore_registers, save_options, save_registers,
};

use crate::Vtd;
use crate::nesting::VtdEvent;
use crate::options::VtdConfig;

/// Format version of [`VtdSnapshot`]; bumped on incompatible changes.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The saved state of a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtdSnapshot {
    /// [`SNAPSHOT_VERSION`] at save time.
    pub version: u32,
    /// The configuration, as `key=value` options.
    pub options: Vec<String>,
    /// Every register, as (offset, value).
    pub registers: Vec<(u64, u64)>,
    /// Latched root table address.
    pub root_addr: u64,
    /// Latched RTADDR.TTM.
    pub root_ttm: u8,
    /// Next fault recording register index.
    pub fault_next: u16,
    /// Descriptors processed (statistics).
    pub descriptors_processed: u64,
}

impl Snapshot for Vtd {
    const MODEL: &'static str = "vtd";
    const VERSION: u32 = SNAPSHOT_VERSION;
    type State = VtdSnapshot;

    /// The unit's state.
    fn snapshot(&self) -> VtdSnapshot {
        let options = save_options(self.config());
        let registers = save_registers(self.registers().file());
        let (root_addr, root_ttm) = self.root_pointer();
        VtdSnapshot {
            version: SNAPSHOT_VERSION,
            options,
            registers,
            root_addr,
            root_ttm,
            fault_next: self.fault_next(),
            descriptors_processed: self.descriptors_processed(),
        }
    }

    /// A unit in the saved state (without an interrupt callback: set it
    /// again). Its first nesting event is [`VtdEvent::Resync`].
    fn restore(s: &VtdSnapshot) -> Result<Vtd, SnapshotError> {
        check_version::<Vtd>(s.version)?;
        let cfg: VtdConfig = restore_options(&s.options)?;
        let mut unit = Vtd::new(cfg);
        for (offset, value) in restore_registers(unit.registers().file(), &s.registers)? {
            unit.restore_register(offset, value);
        }
        unit.restore_internal(
            s.root_addr,
            s.root_ttm,
            s.fault_next,
            s.descriptors_processed,
        );
        unit.push_event(VtdEvent::Resync);
        Ok(unit)
    }
}
