//! The configuration a guest IOMMU model presents: the `model` directive's
//! options of `REPLAY.md` ("Model options"), parsed into typed configs.
//!
//! Every key has a default chosen as "what a guest driver finds on a typical
//! modern host"; each default is justified on its `Default` impl. A few
//! defaults depend on another key so that the short forms `mode=legacy`
//! (VT-d) and `stages=s2` (SMMUv3) are valid on their own: the
//! scalable-mode-only keys then default to off. Giving such a key
//! explicitly with a value the mode cannot have is a
//! [`GuestConfigError::Contradiction`].
//!
//! [`GuestModel::options`] lists every key with its value, in `REPLAY.md`
//! order, and parses back to the same configuration.

use std::fmt;

use bitflags::bitflags;
use thiserror::Error;

use crate::host::info::idr;
use crate::host::profile::parse_u64;
use crate::types::{Iova, IovaRange, PageSizes, Pasid};

#[cfg(test)]
mod tests;

/// A model configuration could not be built from its options.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GuestConfigError {
    /// The model name is not `vtd`, `smmuv3` or `virtio-iommu`.
    #[error("unknown model {0:?} (known: vtd, smmuv3, virtio-iommu)")]
    UnknownModel(String),
    /// A token is not of the form `key=value`.
    #[error("option {token:?} is not key=value")]
    NotKeyValue {
        /// The token.
        token: String,
    },
    /// The key is not an option of this model.
    #[error("unknown {model} option {key:?}")]
    UnknownKey {
        /// The model.
        model: &'static str,
        /// The key as written.
        key: String,
    },
    /// A key that is not repeatable was given twice.
    #[error("option {key} given more than once")]
    Duplicate {
        /// The key.
        key: &'static str,
    },
    /// The value does not parse as the key's type.
    #[error("bad value {value:?} for {key}: expected {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value as written.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// A number parsed but lies outside what the architecture allows.
    #[error("{key}={value} is out of range (at most {max})")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value.
        value: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// Two options cannot hold together.
    #[error("{key}={value} contradicts {other}: {why}")]
    Contradiction {
        /// The key found to conflict.
        key: &'static str,
        /// Its value.
        value: String,
        /// The other key(s) and value(s) it conflicts with.
        other: &'static str,
        /// Why, with the spec section.
        why: &'static str,
    },
    /// A VT-d register block offset (`fro`, `iro`) cannot be encoded or
    /// overlaps other registers.
    #[error("{key}={offset:#x}: {why}")]
    RegisterLayout {
        /// `fro` or `iro`.
        key: &'static str,
        /// The byte offset.
        offset: u64,
        /// What is wrong, with the spec section.
        why: &'static str,
    },
}

/// The configuration of one guest IOMMU model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestModel {
    /// Intel VT-d.
    Vtd(VtdConfig),
    /// Arm SMMUv3.
    Smmuv3(Smmuv3Config),
    /// virtio-iommu.
    VirtioIommu(VirtioIommuConfig),
}

/// Model names as scripts write them.
pub const MODEL_NAMES: [&str; 3] = ["vtd", "smmuv3", "virtio-iommu"];

impl GuestModel {
    /// Parses `key=value` options for `model` (`vtd`, `smmuv3`,
    /// `virtio-iommu`). Keys left out take their defaults.
    pub fn from_options(model: &str, opts: &[&str]) -> Result<GuestModel, GuestConfigError> {
        let mut pairs = Vec::with_capacity(opts.len());
        for tok in opts {
            let (k, v) = tok
                .split_once('=')
                .ok_or_else(|| GuestConfigError::NotKeyValue {
                    token: (*tok).to_string(),
                })?;
            pairs.push((k, v));
        }
        match model {
            "vtd" => VtdConfig::from_pairs(&pairs).map(GuestModel::Vtd),
            "smmuv3" => Smmuv3Config::from_pairs(&pairs).map(GuestModel::Smmuv3),
            "virtio-iommu" => VirtioIommuConfig::from_pairs(&pairs).map(GuestModel::VirtioIommu),
            _ => Err(GuestConfigError::UnknownModel(model.to_string())),
        }
    }

    /// The default configuration of `model`.
    pub fn defaults(model: &str) -> Result<GuestModel, GuestConfigError> {
        Self::from_options(model, &[])
    }

    /// Every key with its value, in `REPLAY.md` order; `resv` appears once
    /// per region and not at all when there is none. Joined as `key=value`
    /// tokens they parse back to `self`.
    pub fn options(&self) -> Vec<(String, String)> {
        match self {
            GuestModel::Vtd(c) => c.options(),
            GuestModel::Smmuv3(c) => c.options(),
            GuestModel::VirtioIommu(c) => c.options(),
        }
    }

    /// The model name as scripts write it.
    pub fn model_name(&self) -> &'static str {
        match self {
            GuestModel::Vtd(_) => MODEL_NAMES[0],
            GuestModel::Smmuv3(_) => MODEL_NAMES[1],
            GuestModel::VirtioIommu(_) => MODEL_NAMES[2],
        }
    }
}

impl fmt::Display for GuestModel {
    /// `model KEY=VALUE ...`, the form of the `model` directive.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.model_name())?;
        for (k, v) in self.options() {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Parsing helpers shared by the three models.

/// Looks `key` up in a model's key list, so errors can name it statically.
fn known_key(
    model: &'static str,
    keys: &[&'static str],
    key: &str,
) -> Result<&'static str, GuestConfigError> {
    keys.iter()
        .copied()
        .find(|k| *k == key)
        .ok_or_else(|| GuestConfigError::UnknownKey {
            model,
            key: key.to_string(),
        })
}

/// Rejects keys outside `keys` and repeats of non-repeatable keys.
fn check_keys(
    model: &'static str,
    keys: &[&'static str],
    repeatable: &[&str],
    pairs: &[(&str, &str)],
) -> Result<(), GuestConfigError> {
    let mut seen: Vec<&'static str> = Vec::new();
    for (k, _) in pairs {
        let k = known_key(model, keys, k)?;
        if seen.contains(&k) && !repeatable.contains(&k) {
            return Err(GuestConfigError::Duplicate { key: k });
        }
        seen.push(k);
    }
    Ok(())
}

fn find<'a>(pairs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> GuestConfigError {
    GuestConfigError::BadValue {
        key,
        value: value.to_string(),
        expected,
    }
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, GuestConfigError> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(bad(key, v, "0 or 1")),
    }
}

fn parse_num(key: &'static str, v: &str) -> Result<u64, GuestConfigError> {
    parse_u64(v).ok_or_else(|| bad(key, v, "a number (decimal or 0x hex)"))
}

fn parse_max(key: &'static str, v: &str, max: u64) -> Result<u64, GuestConfigError> {
    let n = parse_num(key, v)?;
    if n > max {
        return Err(GuestConfigError::OutOfRange { key, value: n, max });
    }
    Ok(n)
}

/// `START-END`, inclusive, `END >= START`.
fn parse_range(key: &'static str, v: &str) -> Result<(u64, u64), GuestConfigError> {
    let (a, b) = v.split_once('-').ok_or_else(|| bad(key, v, "START-END"))?;
    let (a, b) = parse_u64(a)
        .zip(parse_u64(b))
        .ok_or_else(|| bad(key, v, "START-END with numbers"))?;
    if b < a {
        return Err(bad(key, v, "START-END with END >= START"));
    }
    Ok((a, b))
}

fn flag(b: bool) -> String {
    u8::from(b).to_string()
}

fn kv(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn contradiction(
    key: &'static str,
    value: impl ToString,
    other: &'static str,
    why: &'static str,
) -> GuestConfigError {
    GuestConfigError::Contradiction {
        key,
        value: value.to_string(),
        other,
        why,
    }
}

// ---------------------------------------------------------------------------
// VT-d

/// VT-d translation mode the model supports (ECAP.SMTS, VT-d 11.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VtdMode {
    /// Legacy mode only: root/context tables, second-stage translation.
    Legacy,
    /// Scalable mode (ECAP.SMTS=1): PASID tables, first/second stage.
    Scalable,
}

/// Guest address width: the page-table depth the model supports
/// (CAP.SAGAW and CAP.MGAW, VT-d 11.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VtdAddressWidth {
    /// 39 bits, 3-level tables.
    Bits39,
    /// 48 bits, 4-level tables.
    Bits48,
    /// 57 bits, 5-level tables.
    Bits57,
}

impl VtdAddressWidth {
    /// Width in bits.
    pub const fn bits(self) -> u32 {
        match self {
            VtdAddressWidth::Bits39 => 39,
            VtdAddressWidth::Bits48 => 48,
            VtdAddressWidth::Bits57 => 57,
        }
    }

    /// Page-table levels.
    pub const fn levels(self) -> u32 {
        match self {
            VtdAddressWidth::Bits39 => 3,
            VtdAddressWidth::Bits48 => 4,
            VtdAddressWidth::Bits57 => 5,
        }
    }

    /// The last address of the space, `2^bits - 1`.
    pub const fn last_address(self) -> u64 {
        u64::MAX >> (64 - self.bits())
    }
}

/// CAP.SLLPS bit for 2 MiB second-stage pages (VT-d 11.4.2).
pub const SPS_2M: u8 = 1 << 0;
/// CAP.SLLPS bit for 1 GiB second-stage pages (VT-d 11.4.2).
pub const SPS_1G: u8 = 1 << 1;

/// VT-d register offsets below this are architected for every unit the
/// model presents (VT-d 11.4, register map: VER_REG at 0x0 through
/// PEUADDR_REG at 0xec..0xef), so the fault-recording and IOTLB registers
/// must start at or above it. The MTRR block (0x100..0x21f) exists only when
/// ECAP.MTS is set, which the model never advertises, so offsets there are
/// free: QEMU, for one, puts the IOTLB registers at 0xf0 and the fault
/// records at 0x220.
pub const VTD_ARCH_REGS_END: u64 = 0xf0;

/// A guest VT-d unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// `mode`: legacy or scalable (ECAP.SMTS).
    pub mode: VtdMode,
    /// `aw`: guest address width (CAP.SAGAW/MGAW).
    pub aw: VtdAddressWidth,
    /// `cm`: caching mode (CAP.CM): software invalidates on every change,
    /// maps included (VT-d 6.1).
    pub cm: bool,
    /// `flts`: first-stage translation (ECAP.FSTS).
    pub flts: bool,
    /// `slts`: second-stage translation in scalable mode (ECAP.SSTS).
    pub slts: bool,
    /// `nest`: nested translation (ECAP.NEST).
    pub nest: bool,
    /// `pasid_bits`: PASID width; 0 = no PASID (ECAP.PASID, ECAP.PSS).
    pub pasid_bits: u8,
    /// `qi`: queued invalidation (ECAP.QI).
    pub qi: bool,
    /// `nfr`: number of fault-recording registers, 1..=256 (CAP.NFR + 1).
    pub nfr: u16,
    /// `fro`: byte offset of the fault-recording registers (CAP.FRO * 16).
    pub fro: u64,
    /// `iro`: byte offset of the IOTLB registers (ECAP.IRO * 16).
    pub iro: u64,
    /// `sps`: second-stage superpages, CAP.SLLPS bits ([`SPS_2M`],
    /// [`SPS_1G`]).
    pub sps: u8,
    /// `prs`: page requests (ECAP.PRS).
    pub prs: bool,
}

impl Default for VtdConfig {
    /// What Linux finds on a current server VT-d unit (and QEMU with
    /// `x-scalable-mode=on,x-flts=on`):
    /// - `mode=scalable`: every VT-d 3.0+ part; legacy is for old guests.
    /// - `aw=48`: 4-level tables, what Linux uses unless 5-level paging is
    ///   on; 57 needs FS5LP on the host to nest.
    /// - `cm=1`: caching mode is what makes a vIOMMU shadowable (the guest
    ///   then invalidates on map, VT-d 6.1); every VMM sets it.
    /// - `flts=1 slts=0`: the guest programs first-stage (x86 format)
    ///   tables, the only format iommufd nests (`IOMMU_HWPT_DATA_VTD_S1`);
    ///   with `slts=0` Linux cannot pick second-stage for any PASID.
    /// - `nest=0`: a guest never needs nesting itself (it would be a third
    ///   stage).
    /// - `pasid_bits=20`: the PCIe maximum, as hardware reports.
    /// - `qi=1`: required by scalable mode (VT-d 11.4.3, SMTS).
    /// - `nfr=8`, `fro=0x220`: eight 16-byte fault records right after the
    ///   architected registers (VT-d 11.4: MTRR_PHYSMASK9 ends at 0x21f),
    ///   0x220..0x29f.
    /// - `iro=0x2a0`: IVA_REG/IOTLB_REG right after the fault records,
    ///   0x2a0..0x2af, below the optional PERFCAP block at 0x300. (QEMU's
    ///   0x200 would overlap MTRR_PHYSBASE8.)
    /// - `sps=0x3`: 2 MiB and 1 GiB second-stage pages, as every server
    ///   part.
    /// - `prs=0`: page requests need a PRI-capable device and host fault
    ///   forwarding; off unless a test wants them.
    fn default() -> Self {
        VtdConfig {
            mode: VtdMode::Scalable,
            aw: VtdAddressWidth::Bits48,
            cm: true,
            flts: true,
            slts: false,
            nest: false,
            pasid_bits: 20,
            qi: true,
            nfr: 8,
            fro: 0x220,
            iro: 0x2a0,
            sps: SPS_2M | SPS_1G,
            prs: false,
        }
    }
}

impl VtdConfig {
    /// Keys in `REPLAY.md` order.
    pub const KEYS: [&'static str; 13] = [
        "mode",
        "aw",
        "cm",
        "flts",
        "slts",
        "nest",
        "pasid_bits",
        "qi",
        "nfr",
        "fro",
        "iro",
        "sps",
        "prs",
    ];

    /// Defaults for legacy mode: the scalable-mode-only features
    /// (first/second-stage selection, PASIDs, page requests) off.
    pub fn legacy_defaults() -> Self {
        VtdConfig {
            mode: VtdMode::Legacy,
            flts: false,
            slts: false,
            nest: false,
            pasid_bits: 0,
            prs: false,
            ..VtdConfig::default()
        }
    }

    /// Whether the model advertises first-stage 1 GiB pages (CAP.FS1GP).
    /// There is no separate key: the model mirrors the 1 GiB bit of `sps`
    /// for first-stage when `flts=1`.
    pub fn first_stage_1g(&self) -> bool {
        self.flts && self.sps & SPS_1G != 0
    }

    fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, GuestConfigError> {
        check_keys("vtd", &Self::KEYS, &[], pairs)?;
        let mut c = match find(pairs, "mode") {
            None | Some("scalable") => VtdConfig::default(),
            Some("legacy") => VtdConfig::legacy_defaults(),
            Some(v) => return Err(bad("mode", v, "legacy or scalable")),
        };
        for (k, v) in pairs {
            c.apply(known_key("vtd", &Self::KEYS, k)?, v)?;
        }
        c.validate()?;
        Ok(c)
    }

    fn apply(&mut self, key: &'static str, v: &str) -> Result<(), GuestConfigError> {
        match key {
            "mode" => {}
            "aw" => {
                self.aw = match parse_num(key, v)? {
                    39 => VtdAddressWidth::Bits39,
                    48 => VtdAddressWidth::Bits48,
                    57 => VtdAddressWidth::Bits57,
                    _ => return Err(bad(key, v, "39, 48 or 57")),
                }
            }
            "cm" => self.cm = parse_bool(key, v)?,
            "flts" => self.flts = parse_bool(key, v)?,
            "slts" => self.slts = parse_bool(key, v)?,
            "nest" => self.nest = parse_bool(key, v)?,
            // PCIe PASIDs are at most 20 bits (ECAP.PSS, VT-d 11.4.3).
            "pasid_bits" => self.pasid_bits = parse_max(key, v, Pasid::MAX_BITS.into())? as u8,
            "qi" => self.qi = parse_bool(key, v)?,
            "nfr" => {
                // CAP.NFR is 8 bits holding the count minus one (VT-d 11.4.2).
                let n = parse_max(key, v, 256)?;
                if n == 0 {
                    return Err(bad(key, v, "1..=256 fault-recording registers"));
                }
                self.nfr = n as u16;
            }
            "fro" => self.fro = parse_num(key, v)?,
            "iro" => self.iro = parse_num(key, v)?,
            // CAP.SLLPS: bit 0 = 2 MiB, bit 1 = 1 GiB; bits 2-3 reserved
            // (VT-d 11.4.2).
            "sps" => self.sps = parse_max(key, v, u64::from(SPS_2M | SPS_1G))? as u8,
            "prs" => self.prs = parse_bool(key, v)?,
            _ => unreachable!("key list and match agree"),
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), GuestConfigError> {
        let legacy = self.mode == VtdMode::Legacy;
        let n = |b: bool| u8::from(b).to_string();
        // (violated, key, value, other, why)
        let rules = [
            // VT-d 11.4.3 FSTS, SSTS, PASID, PRS: first stage, scalable-mode
            // second stage, PASIDs and page requests exist only with
            // ECAP.SMTS=1 (scalable mode).
            (
                legacy && self.flts,
                "flts",
                n(self.flts),
                "mode=legacy",
                "first-stage translation needs scalable mode (VT-d 11.4.3 FSTS)",
            ),
            (
                legacy && self.slts,
                "slts",
                n(self.slts),
                "mode=legacy",
                "ECAP.SSTS is scalable-mode second stage; legacy has its own tables (VT-d 11.4.3)",
            ),
            (
                legacy && self.pasid_bits > 0,
                "pasid_bits",
                self.pasid_bits.to_string(),
                "mode=legacy",
                "PASIDs need scalable mode (VT-d 11.4.3 PASID)",
            ),
            (
                legacy && self.prs,
                "prs",
                n(self.prs),
                "mode=legacy",
                "page requests need scalable mode (VT-d 11.4.3 PRS)",
            ),
            // VT-d 11.4.3 NEST: implementations reporting NEST report both
            // FSTS and SSTS.
            (
                self.nest && !(self.flts && self.slts),
                "nest",
                n(self.nest),
                "flts=0 or slts=0",
                "nested translation needs first and second stage (VT-d 11.4.3 NEST)",
            ),
            // VT-d 11.4.3 SMTS: scalable mode reports FSTS or SSTS.
            (
                !legacy && !self.flts && !self.slts,
                "mode",
                "scalable".to_string(),
                "flts=0 slts=0",
                "scalable mode translates with first or second stage (VT-d 11.4.3 SMTS)",
            ),
            // VT-d 11.4.3 SMTS: implementations reporting SMTS report QI;
            // register-based invalidation is legacy-only (VT-d 6.5).
            (
                !legacy && !self.qi,
                "qi",
                n(self.qi),
                "mode=scalable",
                "scalable mode requires queued invalidation (VT-d 11.4.3 SMTS, 6.5)",
            ),
            // VT-d 7.5: page group responses go through the invalidation
            // queue.
            (
                self.prs && !self.qi,
                "prs",
                n(self.prs),
                "qi=0",
                "page responses go through the invalidation queue (VT-d 7.5)",
            ),
        ];
        if let Some((_, key, value, other, why)) = rules.into_iter().find(|r| r.0) {
            return Err(contradiction(key, value, other, why));
        }
        self.validate_registers()
    }

    /// VT-d 11.4.2 FRO and 11.4.3 IRO: offsets in 16-byte units in a
    /// 10-bit field; the blocks must not overlap each other or the
    /// architected registers (VT-d 11.4 register map).
    fn validate_registers(&self) -> Result<(), GuestConfigError> {
        use crate::host::info::{cap, ecap};
        let layout = |key, offset, why| GuestConfigError::RegisterLayout { key, offset, why };
        for (key, off, field) in [("fro", self.fro, cap::FRO), ("iro", self.iro, ecap::IRO)] {
            if off % 16 != 0 {
                return Err(layout(
                    key,
                    off,
                    "not 16-byte aligned (encoded in 16-byte units)",
                ));
            }
            if off / 16 > field.max() {
                return Err(layout(
                    key,
                    off,
                    "does not fit the 10-bit offset field (max 0x3ff0)",
                ));
            }
            if off < VTD_ARCH_REGS_END {
                return Err(layout(
                    key,
                    off,
                    "overlaps the architected registers below 0xf0 (VT-d 11.4)",
                ));
            }
        }
        let fault_end = self.fro + 16 * u64::from(self.nfr);
        let iotlb_end = self.iro + 16;
        if self.fro < iotlb_end && self.iro < fault_end {
            return Err(layout(
                "iro",
                self.iro,
                "IOTLB registers overlap the fault-recording registers",
            ));
        }
        Ok(())
    }

    fn options(&self) -> Vec<(String, String)> {
        let mode = match self.mode {
            VtdMode::Legacy => "legacy",
            VtdMode::Scalable => "scalable",
        };
        vec![
            kv("mode", mode),
            kv("aw", self.aw.bits()),
            kv("cm", flag(self.cm)),
            kv("flts", flag(self.flts)),
            kv("slts", flag(self.slts)),
            kv("nest", flag(self.nest)),
            kv("pasid_bits", self.pasid_bits),
            kv("qi", flag(self.qi)),
            kv("nfr", self.nfr),
            kv("fro", format!("{:#x}", self.fro)),
            kv("iro", format!("{:#x}", self.iro)),
            kv("sps", format!("{:#x}", self.sps)),
            kv("prs", flag(self.prs)),
        ]
    }
}

// ---------------------------------------------------------------------------
// SMMUv3

/// Translation stages the model implements (IDR0.S1P/S2P, IHI 0070 6.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Smmuv3Stages {
    /// Stage 1 only.
    S1,
    /// Stage 2 only.
    S2,
    /// Both stages (the guest may nest its own guests).
    Nested,
}

impl Smmuv3Stages {
    /// Whether stage 1 is implemented.
    pub fn s1(self) -> bool {
        self != Smmuv3Stages::S2
    }

    /// Whether stage 2 is implemented.
    pub fn s2(self) -> bool {
        self != Smmuv3Stages::S1
    }

    /// The option value: `s1`, `s2` or `nested`.
    pub fn name(self) -> &'static str {
        match self {
            Smmuv3Stages::S1 => "s1",
            Smmuv3Stages::S2 => "s2",
            Smmuv3Stages::Nested => "nested",
        }
    }
}

bitflags! {
    /// Translation granules (IDR5.GRAN4K/16K/64K, IHI 0070 6.3.6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Smmuv3Granules: u8 {
        /// 4 KiB.
        const G4K = 1 << 0;
        /// 16 KiB.
        const G16K = 1 << 1;
        /// 64 KiB.
        const G64K = 1 << 2;
    }
}

impl Smmuv3Granules {
    const NAMES: [(&'static str, Smmuv3Granules); 3] = [
        ("4k", Smmuv3Granules::G4K),
        ("16k", Smmuv3Granules::G16K),
        ("64k", Smmuv3Granules::G64K),
    ];

    /// The granules as `4k,16k,64k`.
    pub fn to_list(self) -> String {
        Self::NAMES
            .iter()
            .filter(|(_, g)| self.contains(*g))
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Stream table format (IDR0.ST_LEVEL, IHI 0070 6.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableLevel {
    /// Linear stream table only.
    Linear,
    /// Two-level stream tables supported.
    TwoLevel,
}

/// A guest SMMUv3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smmuv3Config {
    /// `stages`: s1, s2 or nested (both).
    pub stages: Smmuv3Stages,
    /// `sidsize`: StreamID bits, 0..=32 (IDR1.SIDSIZE).
    pub sidsize: u8,
    /// `ssidsize`: SubstreamID bits, 0..=20 (IDR1.SSIDSIZE).
    pub ssidsize: u8,
    /// `gran`: translation granules (IDR5).
    pub gran: Smmuv3Granules,
    /// `oas`: output address size in bits, one of
    /// [`idr::OAS_BITS`] (IDR5.OAS).
    pub oas: u8,
    /// `ril`: range invalidation (IDR3.RIL).
    pub ril: bool,
    /// `ats`: ATS (IDR0.ATS).
    pub ats: bool,
    /// `stlevel`: stream table format (IDR0.ST_LEVEL).
    pub stlevel: StreamTableLevel,
}

impl Default for Smmuv3Config {
    /// What Linux finds on a current Arm server SMMU (and QEMU's
    /// `arm-smmuv3,accel=on`):
    /// - `stages=s1`: the guest translates with stage 1, the only stage
    ///   iommufd nests (the host keeps stage 2).
    /// - `sidsize=16`: one StreamID per PCI requester ID.
    /// - `ssidsize=20`: PCIe PASID width, for guest SVA.
    /// - `gran=4k,16k,64k`: all granules, so 4K, 16K and 64K guests all
    ///   run.
    /// - `oas=48`: the common server physical address size.
    /// - `ril=1`: SMMUv3.2 range invalidation cuts guest command traffic.
    /// - `ats=0`: ATS needs an ATS-capable device and host; opt in.
    /// - `stlevel=2lvl`: what Linux wants with 16-bit StreamIDs.
    fn default() -> Self {
        Smmuv3Config {
            stages: Smmuv3Stages::S1,
            sidsize: 16,
            ssidsize: 20,
            gran: Smmuv3Granules::all(),
            oas: 48,
            ril: true,
            ats: false,
            stlevel: StreamTableLevel::TwoLevel,
        }
    }
}

impl Smmuv3Config {
    /// Keys in `REPLAY.md` order.
    pub const KEYS: [&'static str; 8] = [
        "stages", "sidsize", "ssidsize", "gran", "oas", "ril", "ats", "stlevel",
    ];

    /// Granule sizes in bytes as a [`PageSizes`] mask.
    pub fn page_sizes(&self) -> PageSizes {
        let mut m = 0;
        for (g, size) in [
            (Smmuv3Granules::G4K, 1u64 << 12),
            (Smmuv3Granules::G16K, 1 << 14),
            (Smmuv3Granules::G64K, 1 << 16),
        ] {
            if self.gran.contains(g) {
                m |= size;
            }
        }
        PageSizes(m)
    }

    fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, GuestConfigError> {
        check_keys("smmuv3", &Self::KEYS, &[], pairs)?;
        let mut c = Smmuv3Config::default();
        // IHI 0070 6.3.2: substreams select context descriptors, which are
        // stage 1; a stage-2-only SMMU defaults to no SubstreamIDs.
        if find(pairs, "stages") == Some("s2") {
            c.ssidsize = 0;
        }
        for (k, v) in pairs {
            c.apply(known_key("smmuv3", &Self::KEYS, k)?, v)?;
        }
        if !c.stages.s1() && c.ssidsize > 0 {
            return Err(contradiction(
                "ssidsize",
                c.ssidsize,
                "stages=s2",
                "SubstreamIDs select stage-1 context descriptors (IHI 0070 5.4, 6.3.2)",
            ));
        }
        Ok(c)
    }

    fn apply(&mut self, key: &'static str, v: &str) -> Result<(), GuestConfigError> {
        match key {
            "stages" => {
                self.stages = match v {
                    "s1" => Smmuv3Stages::S1,
                    "s2" => Smmuv3Stages::S2,
                    "nested" => Smmuv3Stages::Nested,
                    _ => return Err(bad(key, v, "s1, s2 or nested")),
                }
            }
            // IHI 0070 6.3.2: SIDSIZE at most 32, SSIDSIZE at most 20.
            "sidsize" => self.sidsize = parse_max(key, v, 32)? as u8,
            "ssidsize" => self.ssidsize = parse_max(key, v, Pasid::MAX_BITS.into())? as u8,
            "gran" => {
                let mut g = Smmuv3Granules::empty();
                for part in v.split(',') {
                    let (_, bit) = Smmuv3Granules::NAMES
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(part))
                        .ok_or_else(|| bad(key, v, "a non-empty list of 4k, 16k, 64k"))?;
                    g |= *bit;
                }
                self.gran = g;
            }
            "oas" => {
                let n = parse_num(key, v)?;
                if !idr::OAS_BITS.iter().any(|b| u64::from(*b) == n) {
                    return Err(bad(key, v, "32, 36, 40, 42, 44, 48 or 52"));
                }
                self.oas = n as u8;
            }
            "ril" => self.ril = parse_bool(key, v)?,
            "ats" => self.ats = parse_bool(key, v)?,
            "stlevel" => {
                self.stlevel = match v {
                    "linear" => StreamTableLevel::Linear,
                    "2lvl" => StreamTableLevel::TwoLevel,
                    _ => return Err(bad(key, v, "linear or 2lvl")),
                }
            }
            _ => unreachable!("key list and match agree"),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(String, String)> {
        let stlevel = match self.stlevel {
            StreamTableLevel::Linear => "linear",
            StreamTableLevel::TwoLevel => "2lvl",
        };
        vec![
            kv("stages", self.stages.name()),
            kv("sidsize", self.sidsize),
            kv("ssidsize", self.ssidsize),
            kv("gran", self.gran.to_list()),
            kv("oas", self.oas),
            kv("ril", flag(self.ril)),
            kv("ats", flag(self.ats)),
            kv("stlevel", stlevel),
        ]
    }
}

// ---------------------------------------------------------------------------
// virtio-iommu

/// Subtype of a reserved region announced through PROBE (virtio 1.3
/// 5.13.6.6.2, `VIRTIO_IOMMU_RESV_MEM_T_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResvKind {
    /// `RESERVED`: accesses are not translated and fault.
    Reserved,
    /// `MSI`: the MSI doorbell window, translated by the platform.
    Msi,
}

/// A reserved region the model announces for every endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    /// The addresses, inclusive.
    pub range: IovaRange,
    /// Its subtype.
    pub kind: ResvKind,
}

/// An inclusive range of 32-bit IDs (endpoints, domains).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First ID.
    pub first: u32,
    /// Last ID (inclusive).
    pub last: u32,
}

impl IdRange {
    /// Whether `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        self.first <= id && id <= self.last
    }
}

/// The endpoints the device manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Every endpoint ID.
    All,
    /// Only these, sorted and merged.
    List(Vec<IdRange>),
}

impl Endpoints {
    /// Whether the device manages endpoint `id`.
    pub fn contains(&self, id: u32) -> bool {
        match self {
            Endpoints::All => true,
            Endpoints::List(l) => l.iter().any(|r| r.contains(id)),
        }
    }
}

/// Size of one RESV_MEM property in a PROBE reply: 4-byte property header
/// plus subtype, reserved bytes, start and end (virtio 1.3 5.13.6.6.2).
pub const RESV_MEM_PROPERTY_SIZE: u32 = 24;

/// A guest virtio-iommu device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioIommuConfig {
    /// `page_size_mask`: supported page sizes; the lowest set bit is the
    /// driver's granule.
    pub page_size_mask: PageSizes,
    /// `input_range`: virtual addresses the device translates.
    pub input_range: IovaRange,
    /// `domain_range`: domain IDs the device accepts.
    pub domain_range: IdRange,
    /// `bypass`: config `bypass` field at reset.
    pub bypass: bool,
    /// `probe_size`: PROBE buffer size; 0 = no `VIRTIO_IOMMU_F_PROBE`.
    pub probe_size: u32,
    /// `resv`: reserved regions announced for every endpoint.
    pub resv: Vec<ResvRegion>,
    /// `endpoints`: the endpoint IDs the device manages.
    pub endpoints: Endpoints,
}

impl Default for VirtioIommuConfig {
    /// What Linux finds behind QEMU's `virtio-iommu-pci` on a 4 KiB host:
    /// - `page_size_mask=0xffff_ffff_ffff_f000`: Linux takes the lowest set
    ///   bit as its granule (4 KiB, the smallest any host IOMMU maps); every
    ///   larger power of two set lets `iommu_map()` send one MAP per
    ///   naturally aligned block instead of one per 4 KiB, 2 MiB or 1 GiB
    ///   page (QEMU's default is the same host page mask).
    /// - `input_range=0-0xffff_ffff_ffff_ffff`: the whole space; the ladder
    ///   clips it to what the host can map.
    /// - `domain_range=0-0xffff_ffff`: every 32-bit domain ID.
    /// - `bypass=0`: deny DMA until the driver attaches the endpoint
    ///   (QEMU boots with bypass for firmware; a test device should start
    ///   isolated, and Linux writes the field itself).
    /// - `probe_size=0x200`: QEMU's and enough for 20 RESV_MEM properties.
    /// - no `resv`; `endpoints=all`.
    fn default() -> Self {
        VirtioIommuConfig {
            page_size_mask: PageSizes(!0xfff),
            input_range: IovaRange {
                first: Iova(0),
                last: Iova(u64::MAX),
            },
            domain_range: IdRange {
                first: 0,
                last: u32::MAX,
            },
            bypass: false,
            probe_size: 0x200,
            resv: Vec::new(),
            endpoints: Endpoints::All,
        }
    }
}

impl VirtioIommuConfig {
    /// Keys in `REPLAY.md` order.
    pub const KEYS: [&'static str; 7] = [
        "page_size_mask",
        "input_range",
        "domain_range",
        "bypass",
        "probe_size",
        "resv",
        "endpoints",
    ];

    fn from_pairs(pairs: &[(&str, &str)]) -> Result<Self, GuestConfigError> {
        check_keys("virtio-iommu", &Self::KEYS, &["resv"], pairs)?;
        let mut c = VirtioIommuConfig::default();
        for (k, v) in pairs {
            c.apply(known_key("virtio-iommu", &Self::KEYS, k)?, v)?;
        }
        // virtio 1.3 5.13.6.6: the device writes properties into the
        // driver's probe buffer of probe_size bytes; no PROBE, no RESV_MEM.
        let need = RESV_MEM_PROPERTY_SIZE as usize * c.resv.len();
        if need > c.probe_size as usize {
            return Err(contradiction(
                "probe_size",
                c.probe_size,
                "resv",
                "the RESV_MEM properties (24 bytes each) do not fit the probe buffer (virtio 5.13.6.6)",
            ));
        }
        Ok(c)
    }

    fn apply(&mut self, key: &'static str, v: &str) -> Result<(), GuestConfigError> {
        match key {
            "page_size_mask" => {
                // virtio 1.3 5.13.4: the device MUST set at least one bit.
                let m = parse_num(key, v)?;
                if m == 0 {
                    return Err(bad(key, v, "a non-zero mask"));
                }
                self.page_size_mask = PageSizes(m);
            }
            "input_range" => {
                let (a, b) = parse_range(key, v)?;
                self.input_range = IovaRange {
                    first: Iova(a),
                    last: Iova(b),
                };
            }
            "domain_range" => {
                let (a, b) = parse_range(key, v)?;
                let (first, last) = u32::try_from(a)
                    .ok()
                    .zip(u32::try_from(b).ok())
                    .ok_or_else(|| bad(key, v, "32-bit domain IDs"))?;
                self.domain_range = IdRange { first, last };
            }
            "bypass" => self.bypass = parse_bool(key, v)?,
            "probe_size" => self.probe_size = parse_max(key, v, u32::MAX.into())? as u32,
            "resv" => self.resv.push(parse_resv(v)?),
            "endpoints" => self.endpoints = parse_endpoints(v)?,
            _ => unreachable!("key list and match agree"),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(String, String)> {
        let r = |first: u64, last: u64| format!("{first:#x}-{last:#x}");
        let mut out = vec![
            kv("page_size_mask", format!("{:#x}", self.page_size_mask.0)),
            kv(
                "input_range",
                r(self.input_range.first.0, self.input_range.last.0),
            ),
            kv(
                "domain_range",
                r(
                    self.domain_range.first.into(),
                    self.domain_range.last.into(),
                ),
            ),
            kv("bypass", flag(self.bypass)),
            kv("probe_size", format!("{:#x}", self.probe_size)),
        ];
        for region in &self.resv {
            let kind = match region.kind {
                ResvKind::Reserved => "reserved",
                ResvKind::Msi => "msi",
            };
            out.push(kv("resv", format!("{}:{kind}", region.range)));
        }
        let endpoints = match &self.endpoints {
            Endpoints::All => "all".to_string(),
            Endpoints::List(l) => l
                .iter()
                .map(|e| match e.first == e.last {
                    true => format!("{:#x}", e.first),
                    false => format!("{:#x}-{:#x}", e.first, e.last),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        out.push(kv("endpoints", endpoints));
        out
    }
}

/// `START-END:reserved|msi`.
fn parse_resv(v: &str) -> Result<ResvRegion, GuestConfigError> {
    let (range, kind) = v
        .rsplit_once(':')
        .ok_or_else(|| bad("resv", v, "START-END:reserved or START-END:msi"))?;
    let kind = match kind {
        "reserved" => ResvKind::Reserved,
        "msi" => ResvKind::Msi,
        _ => return Err(bad("resv", v, "START-END:reserved or START-END:msi")),
    };
    let (a, b) = parse_range("resv", range)?;
    Ok(ResvRegion {
        range: IovaRange {
            first: Iova(a),
            last: Iova(b),
        },
        kind,
    })
}

/// `all` or a comma list of IDs and `START-END` ranges, sorted and merged.
fn parse_endpoints(v: &str) -> Result<Endpoints, GuestConfigError> {
    if v == "all" {
        return Ok(Endpoints::All);
    }
    let mut list = Vec::new();
    for part in v.split(',') {
        let (a, b) = match part.contains('-') {
            true => parse_range("endpoints", part)?,
            false => {
                let n = parse_num("endpoints", part)?;
                (n, n)
            }
        };
        let (first, last) = u32::try_from(a)
            .ok()
            .zip(u32::try_from(b).ok())
            .ok_or_else(|| bad("endpoints", v, "32-bit endpoint IDs"))?;
        list.push(IdRange { first, last });
    }
    list.sort_by_key(|r| r.first);
    let mut merged: Vec<IdRange> = Vec::with_capacity(list.len());
    for r in list {
        match merged.last_mut() {
            Some(m) if u64::from(r.first) <= u64::from(m.last) + 1 => m.last = m.last.max(r.last),
            _ => merged.push(r),
        }
    }
    Ok(Endpoints::List(merged))
}
