//! Snapshot and restore of an SMMU (live migration, save/restore): the
//! configuration as its `model smmuv3` options, every register, the
//! stalled transactions and the pending ATC invalidation timeout.
//!
//! The translation cache is not saved: it is a cache, and a restored SMMU
//! starts with it empty (always architecturally allowed). Callbacks and
//! the host backend are not state: set them again.
//!
//! [`Smmuv3`] implements nesting-core's [`Snapshot`]: `smmu.to_bytes()` is
//! what a VMM stores (model `"smmuv3"`, format [`SNAPSHOT_VERSION`]), and
//! `Smmuv3::from_bytes(&bytes)` the SMMU it restores. Passthrough devices
//! are not in it: after restoring, enable passthrough and add each device
//! again ([`Smmuv3::enable_passthrough`], [`Smmuv3::add_passthrough`]),
//! which installs each stream as the restored STE says.

use serde::{Deserialize, Serialize};

pub use nesting_core::snapshot::{Snapshot, SnapshotError};
use nesting_core::snapshot::{
    check_version, restore_options, restore_registers, save_options, save_registers,
};

use crate::Smmuv3;
use crate::options::Smmuv3Config;
use crate::stall::{Stall, StallTable};

/// Format version of [`Smmuv3Snapshot`]; bumped on incompatible changes.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The saved state of an SMMU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smmuv3Snapshot {
    /// [`SNAPSHOT_VERSION`] at save time.
    pub version: u32,
    /// The configuration, as `key=value` options.
    pub options: Vec<String>,
    /// Every register, as (offset, value).
    pub registers: Vec<(u64, u64)>,
    /// Stalled transactions.
    pub stalls: Vec<Stall>,
    /// The next stall tag tried.
    pub next_stag: u16,
    /// An ATC invalidation timed out since the last CMD_SYNC.
    pub atc_timeout: bool,
    /// Commands executed (statistics).
    pub commands: u64,
}

impl Snapshot for Smmuv3 {
    const MODEL: &'static str = "smmuv3";
    const VERSION: u32 = SNAPSHOT_VERSION;
    type State = Smmuv3Snapshot;

    /// The SMMU's state.
    fn snapshot(&self) -> Smmuv3Snapshot {
        let options = save_options(self.config());
        let registers = save_registers(self.regs.file());
        Smmuv3Snapshot {
            version: SNAPSHOT_VERSION,
            options,
            registers,
            stalls: self.stalls.held().to_vec(),
            next_stag: self.stalls.next_tag(),
            atc_timeout: self.atc_timeout,
            commands: self.commands,
        }
    }

    /// An SMMU in the saved state (without callbacks or host backend).
    fn restore(s: &Smmuv3Snapshot) -> Result<Smmuv3, SnapshotError> {
        check_version::<Smmuv3>(s.version)?;
        let cfg: Smmuv3Config = restore_options(&s.options)?;
        let mut unit = Smmuv3::new(cfg);
        for (offset, value) in restore_registers(unit.regs.file(), &s.registers)? {
            unit.regs.set(offset, value);
        }
        unit.stalls = StallTable::restore(&s.stalls, s.next_stag);
        unit.atc_timeout = s.atc_timeout;
        unit.commands = s.commands;
        unit.publish_cons();
        Ok(unit)
    }
}
