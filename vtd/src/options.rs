//! The `model vtd` options of `REPLAY.md`: the unit's configuration, its
//! defaults and the rules that tie its keys together (VT-d 11.4.2
//! Capability Register, 11.4.3 Extended Capability Register).
//!
//! Every key has a default chosen as "what a guest driver finds on a
//! typical modern host", justified on the `Default` impl. `mode=legacy` on
//! its own is valid: the scalable-mode-only keys then default to off, and
//! giving one of them explicitly with a value legacy mode cannot have is an
//! [`OptionError::Contradiction`].

use nesting_core::host::info::{cap, ecap};
use nesting_core::options::{
    ModelOptions, OptionError, Pairs, bad, contradiction, flag, kv, parse_bool, parse_num,
    parse_small,
};
use nesting_core::types::Pasid;

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

    fn from_pairs(pairs: &Pairs<'_>) -> Result<Self, OptionError> {
        let mut c = match pairs.get("mode") {
            None | Some("scalable") => VtdConfig::default(),
            Some("legacy") => VtdConfig::legacy_defaults(),
            Some(v) => return Err(bad("mode", v, "legacy or scalable")),
        };
        for (k, v) in pairs.iter() {
            c.apply(k, v)?;
        }
        c.validate()?;
        Ok(c)
    }

    fn apply(&mut self, key: &'static str, v: &str) -> Result<(), OptionError> {
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
            "pasid_bits" => self.pasid_bits = parse_small(key, v, Pasid::MAX_BITS.into())?,
            "qi" => self.qi = parse_bool(key, v)?,
            "nfr" => {
                // CAP.NFR is 8 bits holding the count minus one (VT-d 11.4.2).
                let n = parse_small(key, v, 256)?;
                if n == 0 {
                    return Err(bad(key, v, "1..=256 fault-recording registers"));
                }
                self.nfr = n;
            }
            "fro" => self.fro = parse_num(key, v)?,
            "iro" => self.iro = parse_num(key, v)?,
            // CAP.SLLPS: bit 0 = 2 MiB, bit 1 = 1 GiB; bits 2-3 reserved
            // (VT-d 11.4.2).
            "sps" => self.sps = parse_small(key, v, (SPS_2M | SPS_1G).into())?,
            "prs" => self.prs = parse_bool(key, v)?,
            _ => unreachable!("key list and match agree"),
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), OptionError> {
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
    fn validate_registers(&self) -> Result<(), OptionError> {
        let layout = |key, offset: u64, why| OptionError::Unpresentable {
            key,
            value: format!("{offset:#x}"),
            why,
        };
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

    fn to_options(&self) -> Vec<(String, String)> {
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

impl ModelOptions for VtdConfig {
    const MODEL: &'static str = "vtd";
    const KEYS: &'static [&'static str] = &[
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

    fn from_options(tokens: &[&str]) -> Result<Self, OptionError> {
        Self::from_pairs(&Pairs::parse(Self::MODEL, Self::KEYS, &[], tokens)?)
    }

    fn options(&self) -> Vec<(String, String)> {
        self.to_options()
    }
}
