//! Snapshot and restore, one API for every model: a [`Snapshot`] trait
//! each model implements, one error type ([`SnapshotError`]) and one
//! versioned envelope ([`Envelope`]) a VMM stores as bytes.
//!
//! ```text
//!   { "model": "vtd", "version": 1, "payload": { ...the model's state... } }
//! ```
//!
//! The envelope is JSON (serde_json): the models' states are small
//! (registers, queue positions, a virtio-iommu's mappings) and a VMM's
//! migration stream carries the bytes as they are. `model` names the
//! implementation that wrote it, so a VT-d snapshot is never loaded into
//! an SMMU; `version` is that model's payload format, which a reader
//! checks before it decodes the payload.
//!
//! What a snapshot holds is each model's own documentation (`vtd::snapshot`,
//! `smmuv3::snapshot`, `virtio_iommu::snapshot`). What none holds:
//!
//! - translation caches (a restored model starts with them empty, which
//!   every architecture allows);
//! - callbacks (interrupts, device-TLB invalidations): set them again;
//! - passthrough devices and every host object: they belong to the host
//!   the VM runs on. The destination VMM binds its devices and adds them
//!   to the restored model again (`add_passthrough`), as at hot-plug; a
//!   virtio-iommu takes them before its state is loaded
//!   (`VirtioIommu::restore`), since its domains decide where they go.
//!
//! ```
//! use nesting_core::snapshot::{Envelope, SnapshotError};
//!
//! // A VMM can look at what it holds before picking the model to load it.
//! let bytes = br#"{"model":"vtd","version":1,"payload":{}}"#;
//! let env = Envelope::from_bytes(bytes).unwrap();
//! assert_eq!((env.model.as_str(), env.version), ("vtd", 1));
//! assert!(matches!(Envelope::from_bytes(b"garbage"), Err(SnapshotError::Encoding(_))));
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::options::ModelOptions;
use crate::regs::RegisterFile;

/// A boxed cause (a model's configuration error, a host failure).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A snapshot that cannot be written or restored. Every model's restore
/// returns it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes are not an envelope, or its payload is not the model's
    /// state.
    #[error("snapshot encoding")]
    Encoding(#[source] serde_json::Error),
    /// The snapshot was written by another model.
    #[error("snapshot of model {found:?}, expected {expected:?}")]
    Model {
        /// The model restoring.
        expected: &'static str,
        /// The model the envelope names.
        found: String,
    },
    /// A payload format this build does not read.
    #[error("{model} snapshot format {found}, this build reads {oldest} to {newest}")]
    Version {
        /// The model restoring.
        model: &'static str,
        /// The version found.
        found: u32,
        /// The oldest format it reads.
        oldest: u32,
        /// The format it writes.
        newest: u32,
    },
    /// The saved configuration is not one the model accepts.
    #[error("snapshot configuration")]
    Config(#[source] Cause),
    /// A saved register does not exist in the configuration's layout.
    #[error("snapshot register at {offset:#x} is not in the model's layout")]
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
    /// A part of the state is inconsistent or over a bound the model keeps.
    #[error("snapshot state: {what}")]
    Invalid {
        /// What is wrong.
        what: &'static str,
    },
    /// The host could not rebuild a passthrough endpoint's address space
    /// (the model must not run: fail the migration or reset it).
    #[error("snapshot: passthrough endpoint {endpoint:#x}")]
    Passthrough {
        /// The endpoint.
        endpoint: u32,
        /// The host's failure.
        #[source]
        source: Cause,
    },
}

/// What a VMM stores: which model wrote it, its format and its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The model ([`Snapshot::MODEL`]).
    pub model: String,
    /// The payload's format ([`Snapshot::VERSION`] when written).
    pub version: u32,
    /// The model's state.
    pub payload: serde_json::Value,
}

impl Envelope {
    /// Parses stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, SnapshotError> {
        serde_json::from_slice(bytes).map_err(SnapshotError::Encoding)
    }

    /// The bytes to store.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        serde_json::to_vec(self).map_err(SnapshotError::Encoding)
    }
}

/// A model whose state can be saved and restored.
///
/// [`Snapshot::snapshot`] and [`Snapshot::restore`] work on the model's
/// state as a value; [`Snapshot::to_bytes`] and [`Snapshot::from_bytes`]
/// on the enveloped bytes a VMM stores.
pub trait Snapshot: Sized {
    /// The model's name in an envelope.
    const MODEL: &'static str;
    /// The payload format written.
    const VERSION: u32;
    /// The oldest payload format still read.
    const OLDEST_VERSION: u32 = Self::VERSION;
    /// The model's state.
    type State: Serialize + DeserializeOwned;

    /// The model's state now.
    fn snapshot(&self) -> Self::State;

    /// A model in the saved state, without callbacks or passthrough
    /// devices (set and add them again).
    fn restore(state: &Self::State) -> Result<Self, SnapshotError>;

    /// The model's state in an envelope, as bytes.
    fn to_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload = serde_json::to_value(self.snapshot()).map_err(SnapshotError::Encoding)?;
        Envelope {
            model: Self::MODEL.to_string(),
            version: Self::VERSION,
            payload,
        }
        .to_bytes()
    }

    /// The state stored in `bytes`: an envelope of this model and a
    /// format it reads. Bytes without an envelope are read as a bare
    /// payload (what a VMM that serialized the state itself stored before
    /// envelopes existed), at the version the payload names.
    fn state_from_bytes(bytes: &[u8]) -> Result<Self::State, SnapshotError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(SnapshotError::Encoding)?;
        let env = match serde_json::from_value::<Envelope>(value.clone()) {
            Ok(env) => env,
            Err(_) => Envelope {
                model: Self::MODEL.to_string(),
                version: bare_version(&value).unwrap_or(Self::VERSION),
                payload: value,
            },
        };
        if env.model != Self::MODEL {
            return Err(SnapshotError::Model {
                expected: Self::MODEL,
                found: env.model,
            });
        }
        if !(Self::OLDEST_VERSION..=Self::VERSION).contains(&env.version) {
            return Err(SnapshotError::Version {
                model: Self::MODEL,
                found: env.version,
                oldest: Self::OLDEST_VERSION,
                newest: Self::VERSION,
            });
        }
        serde_json::from_value(env.payload).map_err(SnapshotError::Encoding)
    }

    /// A model restored from `bytes` ([`Snapshot::state_from_bytes`],
    /// then [`Snapshot::restore`]).
    fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        Self::restore(&Self::state_from_bytes(bytes)?)
    }
}

/// The `version` field of a bare payload (every model's state has one).
fn bare_version(value: &serde_json::Value) -> Option<u32> {
    value.get("version")?.as_u64()?.try_into().ok()
}

/// Checks a state's own `version` field against what `T` reads: the
/// check each model's [`Snapshot::restore`] makes first.
pub fn check_version<T: Snapshot>(found: u32) -> Result<(), SnapshotError> {
    if (T::OLDEST_VERSION..=T::VERSION).contains(&found) {
        return Ok(());
    }
    Err(SnapshotError::Version {
        model: T::MODEL,
        found,
        oldest: T::OLDEST_VERSION,
        newest: T::VERSION,
    })
}

/// A configuration as the `key=value` tokens a snapshot keeps (the
/// model's `model` directive arguments).
pub fn save_options<C: ModelOptions>(cfg: &C) -> Vec<String> {
    cfg.options()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// The configuration saved by [`save_options`].
pub fn restore_options<C: ModelOptions>(saved: &[String]) -> Result<C, SnapshotError> {
    let tokens: Vec<&str> = saved.iter().map(String::as_str).collect();
    C::from_options(&tokens).map_err(|e| SnapshotError::Config(e.into()))
}

/// Every register of `regs` as (offset, value), in layout order.
pub fn save_registers<A: Copy>(regs: &RegisterFile<A>) -> Vec<(u64, u64)> {
    regs.descs()
        .iter()
        .enumerate()
        .map(|(i, d)| (d.offset, regs.value(i)))
        .collect()
}

/// The saved registers matched against the layout of `regs` (a file of
/// the restored configuration): (offset, value) in layout order, every
/// register of the layout exactly once. A saved register the layout lacks
/// or a register of the layout not saved is an error, so a snapshot never
/// half-restores.
pub fn restore_registers<A: Copy>(
    regs: &RegisterFile<A>,
    saved: &[(u64, u64)],
) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let by_offset: BTreeMap<u64, u64> = saved.iter().copied().collect();
    let layout: BTreeSet<u64> = regs.descs().iter().map(|d| d.offset).collect();
    if let Some(offset) = by_offset.keys().find(|o| !layout.contains(o)) {
        return Err(SnapshotError::UnknownRegister { offset: *offset });
    }
    regs.descs()
        .iter()
        .map(|d| {
            by_offset
                .get(&d.offset)
                .map(|v| (d.offset, *v))
                .ok_or(SnapshotError::MissingRegister { offset: d.offset })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of one register, format 2; format 1 had no `extra`.
    #[derive(Debug, PartialEq)]
    struct Toy {
        reg: u64,
        extra: u8,
    }

    #[derive(Serialize, Deserialize)]
    struct ToyState {
        version: u32,
        reg: u64,
        #[serde(default)]
        extra: u8,
    }

    impl Snapshot for Toy {
        const MODEL: &'static str = "toy";
        const VERSION: u32 = 2;
        const OLDEST_VERSION: u32 = 1;
        type State = ToyState;

        fn snapshot(&self) -> ToyState {
            ToyState {
                version: Self::VERSION,
                reg: self.reg,
                extra: self.extra,
            }
        }

        fn restore(s: &ToyState) -> Result<Toy, SnapshotError> {
            check_version::<Toy>(s.version)?;
            Ok(Toy {
                reg: s.reg,
                extra: s.extra,
            })
        }
    }

    #[test]
    fn bytes_round_trip_through_the_envelope() {
        let toy = Toy { reg: 7, extra: 3 };
        let bytes = toy.to_bytes().unwrap();
        let env = Envelope::from_bytes(&bytes).unwrap();
        assert_eq!((env.model.as_str(), env.version), ("toy", 2));
        assert_eq!(Toy::from_bytes(&bytes).unwrap(), toy);
    }

    #[test]
    fn another_models_snapshot_is_refused() {
        let bytes = br#"{"model":"vtd","version":1,"payload":{"version":1,"reg":1}}"#;
        assert!(matches!(
            Toy::from_bytes(bytes),
            Err(SnapshotError::Model { expected: "toy", found }) if found == "vtd"
        ));
    }

    #[test]
    fn unknown_version_is_refused_before_decoding() {
        let bytes = br#"{"model":"toy","version":3,"payload":"anything"}"#;
        assert!(matches!(
            Toy::from_bytes(bytes),
            Err(SnapshotError::Version {
                found: 3,
                oldest: 1,
                newest: 2,
                ..
            })
        ));
    }

    #[test]
    fn old_format_and_bare_payload_still_read() {
        let old = br#"{"model":"toy","version":1,"payload":{"version":1,"reg":5}}"#;
        assert_eq!(Toy::from_bytes(old).unwrap(), Toy { reg: 5, extra: 0 });
        let bare = br#"{"version":1,"reg":6}"#;
        assert_eq!(Toy::from_bytes(bare).unwrap(), Toy { reg: 6, extra: 0 });
        let bad = br#"{"version":0,"reg":6}"#;
        assert!(matches!(
            Toy::from_bytes(bad),
            Err(SnapshotError::Version { found: 0, .. })
        ));
    }

    #[test]
    fn payload_of_the_wrong_shape_is_an_encoding_error() {
        let bytes = br#"{"model":"toy","version":2,"payload":{"reg":"x"}}"#;
        assert!(matches!(
            Toy::from_bytes(bytes),
            Err(SnapshotError::Encoding(_))
        ));
    }
}
