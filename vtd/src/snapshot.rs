//! Snapshot and restore of a unit (live migration, save/restore): the
//! configuration as its `model vtd` options, every register, the latched
//! root table pointer and the fault log's next-record index.
//!
//! The translation cache is not saved: it is a cache, and a restored unit
//! starts empty (always architecturally allowed). Pending nesting events
//! are not saved either; a restored unit queues [`VtdEvent::Resync`] so a
//! nesting layer rebuilds from the tables.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use nesting_core::options::{ModelOptions, OptionError};

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

/// A snapshot could not be restored.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Saved by an incompatible version.
    #[error("snapshot version {found}, expected {SNAPSHOT_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The saved options do not make a VT-d configuration.
    #[error("snapshot configuration")]
    Config(#[source] OptionError),
    /// A saved register does not exist in the configuration's layout.
    #[error("snapshot register at {offset:#x} is not in the unit's layout")]
    UnknownRegister {
        /// Its offset.
        offset: u64,
    },
    /// A register of the layout is missing from the snapshot.
    #[error("snapshot lacks the register at {offset:#x}")]
    MissingRegister {
        /// Its offset.
        offset: u64,
    },
}

impl Vtd {
    /// The unit's state.
    pub fn snapshot(&self) -> VtdSnapshot {
        let options = self
            .config()
            .options()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let registers = self
            .registers()
            .descs()
            .iter()
            .map(|d| (d.offset, self.registers().get(d.offset)))
            .collect();
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
    pub fn restore(s: &VtdSnapshot) -> Result<Vtd, SnapshotError> {
        if s.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: s.version });
        }
        let opts: Vec<&str> = s.options.iter().map(String::as_str).collect();
        let cfg = VtdConfig::from_options(&opts).map_err(SnapshotError::Config)?;
        let mut unit = Vtd::new(cfg);
        let layout: Vec<u64> = unit.registers().descs().iter().map(|d| d.offset).collect();
        for (offset, _) in &s.registers {
            if !layout.contains(offset) {
                return Err(SnapshotError::UnknownRegister { offset: *offset });
            }
        }
        for offset in layout {
            let value = s
                .registers
                .iter()
                .find(|(o, _)| *o == offset)
                .map(|(_, v)| *v)
                .ok_or(SnapshotError::MissingRegister { offset })?;
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
