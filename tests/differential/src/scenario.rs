//! A differential scenario: a `.viommu` script (`docs/REPLAY.md`),
//! parsed by `viommu::replay`'s own parser, restricted to what both
//! sides can run.
//!
//! - `model smmuv3 [key=value ...]` comes first. Our model starts from
//!   [`QEMU_PROFILE`], the options that describe what QEMU's SMMU
//!   implements; the script's keys override it. `stages=` also picks
//!   QEMU's `stage` property.
//! - `ram GPA SIZE` must lie in QEMU's RAM window (from 0x4000_0000):
//!   addresses inside tables and registers are not relocatable, so the
//!   scenario is written in QEMU's physical address map and our model
//!   gets the same map.
//! - Memory (`writeN`, `write-bytes`, `readN`), registers (`mmio-*`)
//!   and `translate SID IOVA ACCESS => ...` as in `REPLAY.md`. A
//!   `translate` is an iommu-testdev DMA on QEMU, which always writes,
//!   so both sides are asked for a write whatever ACCESS says; its
//!   expected result is the script's claim about our model, checked too.
//! - Anything else (virtio, host, passthrough directives) is refused.

use std::collections::BTreeSet;

use nesting_core::options::ModelOptions;
use smmuv3::Smmuv3Config;
use smmuv3::options::Smmuv3Stages;
use thiserror::Error;
use viommu::replay::Directive;
use viommu::replay::parse::{Line, parse_script};

use crate::qemu::{QemuStage, RAM_BASE};

/// Our model's options that match QEMU's `arm-smmuv3` (emulated path,
/// `hw/arm/smmuv3.c` `smmuv3_init_regs`): 16-bit StreamIDs, no
/// SubstreamIDs, all three granules, 44-bit OAS, range invalidation, no
/// ATS/PRI/HTTU/MSI, two-level stream tables.
pub const QEMU_PROFILE: &[&str] = &[
    "sidsize=16",
    "ssidsize=0",
    "gran=4k,16k,64k",
    "oas=44",
    "ril=1",
    "ats=0",
    "pri=0",
    "httu=0",
    "msi=0",
    "stlevel=2lvl",
];

/// The first devfn an iommu-testdev can take (slot 1, function 0).
pub const FIRST_DEVFN: u8 = 8;

/// The smallest QEMU RAM the harness asks for.
const MIN_RAM: u64 = 16 << 20;
/// The largest: both sides' RAM is compared at the end.
const MAX_RAM: u64 = 1 << 30;

/// Why a script is not a differential scenario.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The parser refused it.
    #[error(transparent)]
    Parse(#[from] viommu::replay::ScriptError),
    /// Not usable here.
    #[error("line {line}: {reason}")]
    Unsupported {
        /// Line.
        line: usize,
        /// Why.
        reason: String,
    },
}

fn unsupported(line: usize, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Unsupported {
        line,
        reason: reason.into(),
    }
}

/// A checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// A name for output (the file, or the generated case).
    pub name: String,
    /// The text (printed for failing generated cases).
    pub text: String,
    /// Directives after `model`.
    pub lines: Vec<Line>,
    /// Our model's configuration.
    pub config: Smmuv3Config,
    /// QEMU's stages.
    pub stage: QemuStage,
    /// RAM size from [`RAM_BASE`] (both sides).
    pub ram: u64,
    /// The script's `ram` regions (compared at the end).
    pub regions: Vec<(u64, u64)>,
    /// StreamIDs that issue DMA.
    pub sids: BTreeSet<u32>,
    /// Whether the script's own expectations about our model are checked
    /// (generated cases make none).
    pub checks: bool,
}

impl Scenario {
    /// Parses and checks `text`.
    pub fn parse(name: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let mut lines = parse_script(text)?;
        let first = lines
            .first()
            .ok_or_else(|| unsupported(1, "empty script"))?
            .clone();
        let Directive::Model { name: model, opts } = &first.directive else {
            return Err(unsupported(
                first.number,
                "the first directive must be `model`",
            ));
        };
        if model != "smmuv3" {
            return Err(unsupported(first.number, "only `model smmuv3` scripts"));
        }
        let config = model_config(opts).map_err(|e| unsupported(first.number, e))?;
        let stage = match config.stages {
            Smmuv3Stages::S1 => QemuStage::S1,
            Smmuv3Stages::S2 => QemuStage::S2,
            Smmuv3Stages::Nested => QemuStage::Nested,
        };
        lines.remove(0);
        let mut regions = Vec::new();
        let mut sids = BTreeSet::new();
        for l in &lines {
            match &l.directive {
                Directive::Ram { gpa, size } => {
                    let end = gpa.checked_add(*size).unwrap_or(u64::MAX);
                    if *gpa < RAM_BASE || end > RAM_BASE + MAX_RAM {
                        return Err(unsupported(
                            l.number,
                            format!(
                                "RAM must lie in QEMU virt's RAM window [{RAM_BASE:#x}, {:#x})",
                                RAM_BASE + MAX_RAM
                            ),
                        ));
                    }
                    regions.push((*gpa, *size));
                }
                Directive::Translate { sid, .. } => {
                    sids.insert(*sid);
                }
                Directive::Write { .. }
                | Directive::WriteBytes { .. }
                | Directive::Read { .. }
                | Directive::MmioWrite { .. }
                | Directive::MmioRead { .. } => {}
                other => {
                    return Err(unsupported(
                        l.number,
                        format!("not a differential directive: {other:?}"),
                    ));
                }
            }
        }
        let end = regions.iter().map(|(g, s)| g + s).max().unwrap_or(RAM_BASE);
        let ram = (end - RAM_BASE).div_ceil(1 << 20).max(MIN_RAM >> 20) << 20;
        Ok(Scenario {
            name: name.to_string(),
            text: text.to_string(),
            lines,
            config,
            stage,
            ram,
            regions,
            sids,
            checks: true,
        })
    }

    /// devfns of the iommu-testdevs QEMU needs: StreamIDs 8..=255, devices
    /// on bus 0 outside slot 0 (00.0 is the host bridge, a single-function
    /// device, so no other function of slot 0 can exist). Other StreamIDs
    /// cannot be issued on QEMU.
    pub fn devfns(&self) -> Vec<u8> {
        self.sids
            .iter()
            .filter_map(|s| u8::try_from(*s).ok())
            .filter(|d| *d >= FIRST_DEVFN)
            .collect()
    }
}

/// [`QEMU_PROFILE`] with the script's options on top.
fn model_config(opts: &[String]) -> Result<Smmuv3Config, String> {
    let given: Vec<&str> = opts.iter().map(String::as_str).collect();
    let key = |t: &str| {
        t.split_once('=')
            .map_or(t.to_string(), |(k, _)| k.to_string())
    };
    let mut tokens: Vec<&str> = QEMU_PROFILE
        .iter()
        .copied()
        .filter(|p| !given.iter().any(|g| key(g) == key(p)))
        .collect();
    tokens.extend(&given);
    Smmuv3Config::from_options(&tokens).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smmuv3::options::Httu;

    #[test]
    fn profile_applies_and_script_keys_override() {
        let s = Scenario::parse(
            "t",
            "model smmuv3 stages=nested httu=2\nram 0x40000000 0x100000\ntranslate 0x10 0 w => fault\n",
        )
        .unwrap();
        assert_eq!(s.stage, QemuStage::Nested);
        assert_eq!(s.config.oas, 44);
        assert!(!s.config.msi);
        assert_eq!(s.config.httu, Httu::AccessDirty);
        assert_eq!(s.ram, MIN_RAM);
        assert_eq!(s.devfns(), vec![0x10]);
    }

    #[test]
    fn ram_outside_qemu_window_is_refused() {
        let e = Scenario::parse("t", "model smmuv3\nram 0 0x1000\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn virtio_directive_is_refused() {
        let e = Scenario::parse("t", "model smmuv3\nused 0 == 1\n").unwrap_err();
        assert!(
            e.to_string().contains("not a differential directive"),
            "{e}"
        );
    }

    #[test]
    fn other_model_is_refused() {
        assert!(Scenario::parse("t", "model vtd\n").is_err());
    }
}
