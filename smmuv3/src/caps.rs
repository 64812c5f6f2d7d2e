//! What the configuration makes the SMMU implement, in the form the
//! decoders and walkers check against (the ID registers of [`crate::regs`]
//! say the same to the guest).

use crate::options::{Smmuv3Config, Smmuv3Granules, StreamTableLevel};
use crate::walk::Granule;

/// The implemented features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Stage 1 (IDR0.S1P).
    pub s1p: bool,
    /// Stage 2 (IDR0.S2P).
    pub s2p: bool,
    /// StreamID bits (IDR1.SIDSIZE).
    pub sidsize: u8,
    /// SubstreamID bits (IDR1.SSIDSIZE).
    pub ssidsize: u8,
    /// Granules (IDR5.GRAN*).
    pub gran: Smmuv3Granules,
    /// Output address size in bits (IDR5.OAS).
    pub oas: u32,
    /// IDR0.HTTU: 0 none, 1 access flag, 2 access flag and dirty state.
    pub httu: u8,
    /// ATS (IDR0.ATS).
    pub ats: bool,
    /// PRI (IDR0.PRI).
    pub pri: bool,
    /// MSIs (IDR0.MSI).
    pub msi: bool,
    /// Range invalidation (IDR3.RIL).
    pub ril: bool,
    /// Two-level stream tables (IDR0.ST_LEVEL).
    pub st2l: bool,
}

impl Caps {
    /// The features of a configuration.
    pub fn new(c: &Smmuv3Config) -> Caps {
        Caps {
            s1p: c.stages.s1(),
            s2p: c.stages.s2(),
            sidsize: c.sidsize,
            ssidsize: c.ssidsize,
            gran: c.gran,
            oas: u32::from(c.oas),
            httu: c.httu.idr0(),
            ats: c.ats,
            pri: c.pri,
            msi: c.msi,
            ril: c.ril,
            st2l: c.stlevel == StreamTableLevel::TwoLevel,
        }
    }

    /// Whether a granule is implemented.
    pub fn has_granule(&self, g: Granule) -> bool {
        let bit = match g {
            Granule::G4K => Smmuv3Granules::G4K,
            Granule::G16K => Smmuv3Granules::G16K,
            Granule::G64K => Smmuv3Granules::G64K,
        };
        self.gran.contains(bit)
    }

    /// The largest output size a walk with granule `g` produces: 52-bit
    /// output addresses exist only with the 64 KiB granule (Arm ARM
    /// FEAT_LPA; the model has no FEAT_LPA2).
    pub fn max_oa_bits(&self, g: Granule) -> u32 {
        if g == Granule::G64K {
            self.oas
        } else {
            self.oas.min(48)
        }
    }

    /// The output size a PS/IPS field selects, capped at what the SMMU
    /// implements for granule `g` (IHI 0070 5.4 CD.IPS and 5.2 STE.S2PS:
    /// "a value greater than SMMU_IDR5.OAS is treated as OAS"; reserved
    /// encodings likewise).
    pub fn effective_ps(&self, field: u8, g: Granule) -> u32 {
        let bits = nesting_core::host::info::idr::OAS_BITS
            .get(usize::from(field))
            .copied()
            .unwrap_or(u32::MAX);
        bits.min(self.max_oa_bits(g))
    }

    /// Whether the SMMU updates access flags (HTTU >= 1).
    pub fn hw_access(&self) -> bool {
        self.httu >= 1
    }

    /// Whether the SMMU updates dirty state (HTTU >= 2).
    pub fn hw_dirty(&self) -> bool {
        self.httu >= 2
    }
}
