//! Host profiles of the simulated host: what a physical IOMMU reports, with
//! overrides, parsed from `PROFILE[,key=value...]` (the `host` directive of
//! `REPLAY.md` and `viommu probe --host sim:...`).

use nesting_core::host::info::{
    HostCaps, HostInfo, HwInfo, VtdCap, VtdEcap, VtdErrata, cap, ecap, idr,
};
use nesting_core::ladder::HostView;
use nesting_core::types::{Iova, IovaRange, parse_u64};
use thiserror::Error;

/// A profile could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProfileError {
    /// The profile name is not one of [`HostProfile::NAMES`].
    #[error(
        "unknown host profile {0:?} (known: vtd-nest, vtd-nonest, smmuv3-nest, smmuv3-s2only, none)"
    )]
    UnknownProfile(String),
    /// An override key is not known.
    #[error("unknown host key {0:?} (known: cap, ecap, idr0..idr5, pgsize, aperture)")]
    UnknownKey(String),
    /// An override does not apply to this profile's IOMMU type.
    #[error("host key {key:?} does not apply to a {kind} host")]
    KeyNotApplicable {
        /// The key.
        key: String,
        /// The profile's IOMMU type.
        kind: &'static str,
    },
    /// A value did not parse.
    #[error("bad value {value:?} for host key {key:?}: {why}")]
    BadValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// The named profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostProfile {
    /// VT-d in scalable mode with first- and second-stage and nesting,
    /// 20-bit PASIDs, 48-bit addresses.
    VtdNest,
    /// The same VT-d without nesting.
    VtdNonest,
    /// SMMUv3 with stage 1 and 2, S2FWB, 4K/16K/64K, 16-bit SIDs, 20-bit
    /// SSIDs, range invalidation.
    Smmuv3Nest,
    /// SMMUv3 with stage 2 only.
    Smmuv3S2only,
    /// No hardware information; IOAS mapping still works.
    None,
}

impl HostProfile {
    /// Profile names as written in scripts.
    pub const NAMES: [&'static str; 5] = [
        "vtd-nest",
        "vtd-nonest",
        "smmuv3-nest",
        "smmuv3-s2only",
        "none",
    ];

    /// Every profile.
    pub const ALL: [HostProfile; 5] = [
        HostProfile::VtdNest,
        HostProfile::VtdNonest,
        HostProfile::Smmuv3Nest,
        HostProfile::Smmuv3S2only,
        HostProfile::None,
    ];

    /// The profile called `name`.
    pub fn from_name(name: &str) -> Option<HostProfile> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|p| *p == self).unwrap_or(4)]
    }

    /// The host this profile describes, before overrides.
    pub fn spec(self) -> SimHostSpec {
        match self {
            HostProfile::VtdNest => vtd_spec(true),
            HostProfile::VtdNonest => vtd_spec(false),
            HostProfile::Smmuv3Nest => smmuv3_spec(true),
            HostProfile::Smmuv3S2only => smmuv3_spec(false),
            HostProfile::None => SimHostSpec {
                info: HostInfo::default(),
                page_size: 4096,
                aperture: range(0, (1 << 48) - 1),
                reserved: vec![],
            },
        }
    }
}

/// One simulated physical IOMMU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimHostSpec {
    /// What `IOMMU_GET_HW_INFO` reports for devices behind it.
    pub info: HostInfo,
    /// Smallest page size of its domains: IOVAs and lengths must be
    /// aligned to it.
    pub page_size: u64,
    /// The IOVA space its page tables can address.
    pub aperture: IovaRange,
    /// Reserved regions (MSI windows) carved out of the aperture.
    pub reserved: Vec<IovaRange>,
}

impl SimHostSpec {
    /// Parses `PROFILE[,key=value...]` (or with blanks instead of commas).
    pub fn parse(text: &str) -> Result<SimHostSpec, ProfileError> {
        let mut parts = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty());
        let name = parts.next().unwrap_or("");
        let profile = HostProfile::from_name(name)
            .ok_or_else(|| ProfileError::UnknownProfile(name.to_string()))?;
        let mut spec = profile.spec();
        for kv in parts {
            let (k, v) = kv.split_once('=').ok_or(ProfileError::BadValue {
                key: kv.to_string(),
                value: String::new(),
                why: "expected key=value",
            })?;
            spec.apply(k, v)?;
        }
        Ok(spec)
    }

    /// Applies one override.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), ProfileError> {
        let bad = |why| ProfileError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            why,
        };
        let kind = self.info.hw.kind_name();
        let not_applicable = || ProfileError::KeyNotApplicable {
            key: key.to_string(),
            kind,
        };
        match key {
            "cap" | "ecap" => {
                let n = parse_u64(value).ok_or_else(|| bad("not a number"))?;
                let HwInfo::IntelVtd { cap, ecap, .. } = &mut self.info.hw else {
                    return Err(not_applicable());
                };
                if key == "cap" {
                    *cap = VtdCap(n);
                } else {
                    *ecap = VtdEcap(n);
                }
                self.info.max_pasid_log2 = vtd_pasid_bits(*ecap);
                self.info
                    .caps
                    .set(HostCaps::DIRTY_TRACKING, ecap.has(ecap::SSADS));
            }
            k if k.len() == 4 && k.starts_with("idr") => {
                let i = usize::from(k.as_bytes()[3].wrapping_sub(b'0'));
                if i > 5 {
                    return Err(ProfileError::UnknownKey(key.to_string()));
                }
                let n = parse_u64(value)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad("not a 32-bit number"))?;
                let HwInfo::ArmSmmuv3 { idr: regs, .. } = &mut self.info.hw else {
                    return Err(not_applicable());
                };
                regs[i] = n;
                self.info.max_pasid_log2 = smmu_pasid_bits(regs);
            }
            "pgsize" => {
                let n = parse_u64(value).ok_or_else(|| bad("not a number"))?;
                if !n.is_power_of_two() || n < 4096 {
                    return Err(bad("a power of two of at least 4096"));
                }
                self.page_size = n;
            }
            "aperture" => {
                let (a, b) = value
                    .split_once('-')
                    .ok_or_else(|| bad("expected START-LAST"))?;
                let (a, b) = parse_u64(a)
                    .zip(parse_u64(b))
                    .ok_or_else(|| bad("not a number"))?;
                self.aperture =
                    IovaRange::new(Iova(a), Iova(b)).ok_or_else(|| bad("LAST < START"))?;
            }
            _ => return Err(ProfileError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// What the ladder is told about a device behind this unit: its
    /// hardware information, the usable IOVA ranges and page size an IOAS
    /// would report, no unit number.
    pub fn host_view(&self) -> HostView {
        HostView {
            info: self.info.clone(),
            iova_ranges: self.usable_ranges(),
            page_size: self.page_size,
            unit: None,
        }
    }

    /// The usable IOVA ranges: the aperture minus the reserved regions.
    pub fn usable_ranges(&self) -> Vec<IovaRange> {
        let mut out = vec![self.aperture];
        for r in &self.reserved {
            out = out
                .into_iter()
                .flat_map(|a| {
                    if !a.overlaps(r) {
                        return vec![a];
                    }
                    let mut pieces = vec![];
                    if a.first < r.first {
                        pieces.push(IovaRange {
                            first: a.first,
                            last: Iova(r.first.0 - 1),
                        });
                    }
                    if r.last < a.last {
                        pieces.push(IovaRange {
                            first: Iova(r.last.0 + 1),
                            last: a.last,
                        });
                    }
                    pieces
                })
                .collect();
        }
        out
    }
}

fn range(a: u64, b: u64) -> IovaRange {
    IovaRange {
        first: Iova(a),
        last: Iova(b),
    }
}

/// intel/iommu.c sets the unit's `max_pasids` only with
/// `pasid_supported()`: scalable mode (ECAP.SMTS) and ECAP.PASID.
fn vtd_pasid_bits(e: VtdEcap) -> u8 {
    if e.has(ecap::PASID) && e.has(ecap::SMTS) {
        (e.get(ecap::PSS) + 1) as u8
    } else {
        0
    }
}

fn smmu_pasid_bits(idr: &[u32; 6]) -> u8 {
    if idr::IDR0_S1P.is_set(idr[0].into()) {
        idr::IDR1_SSIDSIZE.get(idr[1].into()) as u8
    } else {
        0
    }
}

/// A server-class VT-d unit (VT-d 4.1 register layout).
fn vtd_spec(nest: bool) -> SimHostSpec {
    let cap = VtdCap(0)
        .with(cap::ND, 6)
        .with(cap::SAGAW, 0b00100)
        .with(cap::MGAW, 47)
        .with(cap::FRO, 0x22)
        .with(cap::SLLPS, 0b11)
        .with(cap::PSI, 1)
        .with(cap::NFR, 7)
        .with(cap::MAMV, 18)
        .with(cap::DWD, 1)
        .with(cap::DRD, 1)
        .with(cap::FS1GP, 1);
    let ecap = VtdEcap(0)
        .with(ecap::C, 0)
        .with(ecap::QI, 1)
        .with(ecap::DT, 1)
        .with(ecap::IR, 1)
        .with(ecap::EIM, 1)
        .with(ecap::PT, 1)
        .with(ecap::SC, 1)
        .with(ecap::IRO, 0x50)
        .with(ecap::MHMV, 0xf)
        .with(ecap::NEST, u64::from(nest))
        .with(ecap::PRS, 1)
        .with(ecap::ERS, 0)
        .with(ecap::SRS, 1)
        .with(ecap::NWFS, 1)
        .with(ecap::PSS, 19)
        .with(ecap::PASID, 1)
        .with(ecap::DIT, 1)
        .with(ecap::PDS, 1)
        .with(ecap::SMTS, 1)
        .with(ecap::SSADS, 1)
        .with(ecap::SSTS, 1)
        .with(ecap::FSTS, 1)
        .with(ecap::SMPWCS, 1)
        .with(ecap::RPS, 1);
    SimHostSpec {
        info: HostInfo {
            hw: HwInfo::IntelVtd {
                cap,
                ecap,
                errata: VtdErrata::empty(),
            },
            caps: HostCaps::DIRTY_TRACKING | HostCaps::PCI_PASID_EXEC | HostCaps::PCI_PASID_PRIV,
            max_pasid_log2: vtd_pasid_bits(ecap),
        },
        page_size: 4096,
        aperture: range(0, (1 << 48) - 1),
        // The interrupt address range is never translated on x86 (VT-d 3.15,
        // "Handling Requests to Interrupt Address Range"); Linux reports it as
        // an IOMMU_RESV_MSI region.
        reserved: vec![range(0xfee0_0000, 0xfeef_ffff)],
    }
}

/// An SMMUv3.2-class unit.
fn smmuv3_spec(s1: bool) -> SimHostSpec {
    let idr0 = idr::IDR0_S2P.set(0, 1)
        | idr::IDR0_S1P.set(0, u64::from(s1))
        | idr::IDR0_TTF.set(0, 2)
        | idr::IDR0_COHACC.set(0, 1)
        | idr::IDR0_HTTU.set(0, 2)
        | idr::IDR0_ATS.set(0, 1)
        | idr::IDR0_ASID16.set(0, 1)
        | idr::IDR0_VMID16.set(0, 1)
        | idr::IDR0_CD2L.set(0, 1)
        | idr::IDR0_TTENDIAN.set(0, 2)
        | idr::IDR0_ST_LEVEL.set(0, 1);
    let idr1 = idr::IDR1_SIDSIZE.set(0, 16) | idr::IDR1_SSIDSIZE.set(0, 20);
    let idr3 = idr::IDR3_FWB.set(0, 1) | idr::IDR3_RIL.set(0, 1);
    let idr5 = idr::IDR5_OAS.set(0, 5)
        | idr::IDR5_GRAN4K.set(0, 1)
        | idr::IDR5_GRAN16K.set(0, 1)
        | idr::IDR5_GRAN64K.set(0, 1);
    let regs = [idr0 as u32, idr1 as u32, 0, idr3 as u32, 0, idr5 as u32];
    SimHostSpec {
        info: HostInfo {
            hw: HwInfo::ArmSmmuv3 {
                idr: regs,
                iidr: 0x0000_043b,
                aidr: 2,
                flags: 0,
            },
            caps: HostCaps::DIRTY_TRACKING,
            max_pasid_log2: smmu_pasid_bits(&regs),
        },
        page_size: 4096,
        aperture: range(0, (1 << 48) - 1),
        // arm-smmu-v3 reserves a software-managed MSI window at
        // MSI_IOVA_BASE (0x8000000) of MSI_IOVA_LENGTH (0x100000).
        reserved: vec![range(0x800_0000, 0x80f_ffff)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_profile_with_overrides() {
        let s = SimHostSpec::parse("vtd-nest,pgsize=0x10000,aperture=0x1000-0xffff_ffff").unwrap();
        assert_eq!(s.page_size, 0x10000);
        assert_eq!(s.aperture, range(0x1000, 0xffff_ffff));
        let (_, e) = s.info.vtd().unwrap();
        assert!(e.has(ecap::NEST));
        assert_eq!(s.info.max_pasid_log2, 20);
    }

    #[test]
    fn vtd_nonest_has_no_nest_bit() {
        let (_, e) = HostProfile::VtdNonest.spec().info.vtd().unwrap();
        assert!(!e.has(ecap::NEST));
        assert!(e.has(ecap::FSTS) && e.has(ecap::SMTS));
    }

    #[test]
    fn smmuv3_profiles_stage_bits() {
        let n = HostProfile::Smmuv3Nest.spec().info.smmuv3_idr().unwrap();
        let s = HostProfile::Smmuv3S2only.spec().info.smmuv3_idr().unwrap();
        assert!(idr::IDR0_S1P.is_set(n[0].into()) && idr::IDR0_S2P.is_set(n[0].into()));
        assert!(!idr::IDR0_S1P.is_set(s[0].into()) && idr::IDR0_S2P.is_set(s[0].into()));
        assert_eq!(idr::IDR1_SSIDSIZE.get(n[1].into()), 20);
        assert_eq!(HostProfile::Smmuv3S2only.spec().info.max_pasid_log2, 0);
    }

    #[test]
    fn ecap_override_recomputes_pasid_width() {
        let s = SimHostSpec::parse("vtd-nest ecap=0").unwrap();
        assert_eq!(s.info.max_pasid_log2, 0);
        assert!(!s.info.caps.contains(HostCaps::DIRTY_TRACKING));
    }

    #[test]
    fn override_of_wrong_vendor_is_refused() {
        assert!(matches!(
            SimHostSpec::parse("smmuv3-nest,cap=1"),
            Err(ProfileError::KeyNotApplicable { .. })
        ));
        assert!(matches!(
            SimHostSpec::parse("vtd-nest,idr0=1"),
            Err(ProfileError::KeyNotApplicable { .. })
        ));
        assert!(matches!(
            SimHostSpec::parse("vtd-nest,idr7=1"),
            Err(ProfileError::UnknownKey(_))
        ));
        assert!(matches!(
            SimHostSpec::parse("amd"),
            Err(ProfileError::UnknownProfile(_))
        ));
        assert!(SimHostSpec::parse("none,pgsize=4097").is_err());
    }

    #[test]
    fn usable_ranges_exclude_msi_window() {
        let r = HostProfile::VtdNest.spec().usable_ranges();
        assert_eq!(
            r,
            vec![range(0, 0xfedf_ffff), range(0xfef0_0000, (1 << 48) - 1)]
        );
    }
}
