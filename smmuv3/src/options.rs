//! The `model smmuv3` options of `REPLAY.md`: the SMMU's configuration,
//! from which its ID registers are computed (IHI 0070 6.3.1 SMMU_IDR0
//! onwards), its defaults and the rules that tie its keys together.

use bitflags::bitflags;
use nesting_core::host::info::idr;
use nesting_core::options::{
    ModelOptions, OptionError, Pairs, bad, contradiction, flag, kv, parse_bool, parse_small,
};
use nesting_core::types::{PageSizes, Pasid};

/// Hardware translation table update (IDR0.HTTU, IHI 0070 6.3.1; 3.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Httu {
    /// Software manages the access flag and dirty state.
    None,
    /// The SMMU sets the access flag.
    Access,
    /// The SMMU sets the access flag and manages dirty state.
    AccessDirty,
}

impl Httu {
    /// The IDR0.HTTU encoding, which is also the option's value.
    pub fn idr0(self) -> u8 {
        match self {
            Httu::None => 0,
            Httu::Access => 1,
            Httu::AccessDirty => 2,
        }
    }
}

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
    /// `pri`: page requests (IDR0.PRI).
    pub pri: bool,
    /// `httu`: hardware translation table update (IDR0.HTTU).
    pub httu: Httu,
    /// `msi`: MSIs for events, errors and CMD_SYNC (IDR0.MSI).
    pub msi: bool,
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
    /// - `pri=0`: page requests need a PRI-capable device and host fault
    ///   forwarding; opt in.
    /// - `httu=2`: access flag and dirty state updated by the SMMU, as
    ///   every SMMUv3.2 server part (MMU-700) does; a nested guest needs
    ///   the host's IDR0.HTTU to be at least as high.
    /// - `msi=1`: events, global errors and CMD_SYNC completions as MSIs
    ///   (Linux then polls CMD_SYNC through MSIPOLL), as on every server
    ///   SMMU with a GICv3 ITS.
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
            pri: false,
            httu: Httu::AccessDirty,
            msi: true,
            stlevel: StreamTableLevel::TwoLevel,
        }
    }
}

impl Smmuv3Config {
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

    fn from_pairs(pairs: &Pairs<'_>) -> Result<Self, OptionError> {
        let mut c = Smmuv3Config::default();
        // IHI 0070 6.3.2: substreams select context descriptors, which are
        // stage 1; a stage-2-only SMMU defaults to no SubstreamIDs.
        if pairs.get("stages") == Some("s2") {
            c.ssidsize = 0;
        }
        for (k, v) in pairs.iter() {
            c.apply(k, v)?;
        }
        // IHI 0070 8: page requests are made by endpoints whose ATS
        // translation requests failed; PCIe's PRI is part of ATS.
        if c.pri && !c.ats {
            return Err(contradiction(
                "pri",
                flag(c.pri),
                "ats=0",
                "page requests follow failed ATS translation requests (IHI 0070 8)",
            ));
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

    fn apply(&mut self, key: &'static str, v: &str) -> Result<(), OptionError> {
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
            "sidsize" => self.sidsize = parse_small(key, v, 32)?,
            "ssidsize" => self.ssidsize = parse_small(key, v, Pasid::MAX_BITS.into())?,
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
                let n = parse_small(key, v, 52)?;
                if !idr::OAS_BITS.iter().any(|b| *b == u32::from(n)) {
                    return Err(bad(key, v, "32, 36, 40, 42, 44, 48 or 52"));
                }
                self.oas = n;
            }
            "ril" => self.ril = parse_bool(key, v)?,
            "ats" => self.ats = parse_bool(key, v)?,
            "pri" => self.pri = parse_bool(key, v)?,
            "httu" => {
                self.httu = match v {
                    "0" => Httu::None,
                    "1" => Httu::Access,
                    "2" => Httu::AccessDirty,
                    _ => return Err(bad(key, v, "0, 1 or 2")),
                }
            }
            "msi" => self.msi = parse_bool(key, v)?,
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

    fn to_options(&self) -> Vec<(String, String)> {
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
            kv("pri", flag(self.pri)),
            kv("httu", self.httu.idr0()),
            kv("msi", flag(self.msi)),
            kv("stlevel", stlevel),
        ]
    }
}

impl ModelOptions for Smmuv3Config {
    const MODEL: &'static str = "smmuv3";
    const KEYS: &'static [&'static str] = &[
        "stages", "sidsize", "ssidsize", "gran", "oas", "ril", "ats", "pri", "httu", "msi",
        "stlevel",
    ];

    fn from_options(tokens: &[&str]) -> Result<Self, OptionError> {
        Self::from_pairs(&Pairs::parse(Self::MODEL, Self::KEYS, &[], tokens)?)
    }

    fn options(&self) -> Vec<(String, String)> {
        self.to_options()
    }
}
