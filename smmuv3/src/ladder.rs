//! What an SMMUv3 needs from a host to back its passthrough devices, as
//! nesting-core's ladder weighs it ([`GuestIommu`]): the host SMMU
//! features a nested stage 1 needs, compared with `IOMMU_GET_HW_INFO` (the
//! host's IDR0-5 and IIDR), and why its mappings cannot be shadowed.

use nesting_core::bits::Field;
use nesting_core::guest::{GuestIommu, HwType, IovaSpace, MapNotice, ShadowNeeds, Stage1};
use nesting_core::host::info::{HostCaps, HostInfo, HwInfo, idr};
use nesting_core::ladder::Check;
use nesting_core::types::{Iova, IovaRange};

use crate::options::{Smmuv3Config, Smmuv3Granules, Smmuv3Stages};

/// SMMU_IIDR fields (IHI 0070 6.3.13), used for the kernel's errata list.
mod iidr {
    use super::Field;
    /// Revision.
    pub const REVISION: Field = Field::bits(15, 12);
    /// Variant.
    pub const VARIANT: Field = Field::bits(19, 16);
    /// ProductID.
    pub const PRODUCT_ID: Field = Field::bits(31, 20);
    /// Implementer (JEP106): Arm.
    pub const IMPLEMENTER: Field = Field::bits(11, 0);
    /// `IIDR_IMPLEMENTER_ARM` (arm-smmu-v3.c).
    pub const ARM: u64 = 0x43b;
    /// `IIDR_PRODUCTID_ARM_MMU_600`.
    pub const MMU_600: u64 = 0x483;
    /// `IIDR_PRODUCTID_ARM_MMU_700`.
    pub const MMU_700: u64 = 0x487;
}

/// IDR0.TTF bit for the AArch64 format (IHI 0070 6.3.1; `IDR0_TTF_AARCH64`).
const TTF_AARCH64: u64 = 0b10;
/// IDR0.TTENDIAN value for big-endian only (IHI 0070 6.3.1).
const TTENDIAN_BE_ONLY: u64 = 0b11;

impl GuestIommu for Smmuv3Config {
    fn model_name(&self) -> &'static str {
        "smmuv3"
    }

    /// IHI 0070 5.4: the guest's context descriptors point at AArch64
    /// stage-1 tables, which a host SMMUv3 nests
    /// (`IOMMU_HWPT_DATA_ARM_SMMUV3`).
    fn stage1(&self) -> Stage1 {
        Stage1::WalkedBy(HwType::ArmSmmuv3)
    }

    fn nest_checks(&self, host: &HostInfo) -> Vec<Check> {
        nest_checks(self, host)
    }

    fn shadow_needs(&self) -> ShadowNeeds {
        ShadowNeeds {
            // IHI 0070 3.21 / Arm ARM D8.13 (break-before-make): the SMMU
            // caches no invalid entry, so a guest SMMUv3 driver makes an
            // entry valid without any invalidation; the VMM never learns
            // of new mappings and cannot shadow them.
            map_notice: MapNotice::Never(Check::fail(
                "map-invalidation",
                "a guest SMMUv3 sends no invalidation when it maps, so its mappings cannot be shadowed"
                    .to_string(),
            )),
            page_size: self.page_sizes().smallest().map_or(4096, |p| p.bytes()),
            iova: IovaSpace::Fixed(vec![IovaRange {
                first: Iova(0),
                last: Iova(u64::MAX >> (64 - u32::from(self.oas))),
            }]),
        }
    }
}

fn yes(b: bool) -> u8 {
    u8::from(b)
}

fn nest_checks(c: &Smmuv3Config, info: &HostInfo) -> Vec<Check> {
    let mut out = Vec::new();
    // IHI 0070 3.3.2: the host keeps stage 2 for the VM; a guest that uses
    // stage 2 itself would need a third stage.
    out.push(Check::new(
        "guest-stage1-only",
        c.stages == Smmuv3Stages::S1,
        format!("guest stages={}", c.stages.name()),
    ));
    let HwInfo::ArmSmmuv3 {
        idr: r, iidr: iid, ..
    } = &info.hw
    else {
        return out;
    };
    let (idr0, idr1, idr3, idr5) = (
        u64::from(r[0]),
        u64::from(r[1]),
        u64::from(r[3]),
        u64::from(r[5]),
    );
    // arm-smmu-v3.c: ARM_SMMU_FEAT_NESTING = FEAT_TRANS_S1 && FEAT_TRANS_S2
    // (IHI 0070 6.3.1 IDR0.S1P, IDR0.S2P).
    out.push(Check::new(
        "host-s1p",
        idr::IDR0_S1P.is_set(idr0),
        format!("host IDR0.S1P={}", idr::IDR0_S1P.get(idr0)),
    ));
    out.push(Check::new(
        "host-s2p",
        idr::IDR0_S2P.is_set(idr0),
        format!("host IDR0.S2P={}", idr::IDR0_S2P.get(idr0)),
    ));
    // arm-smmu-v3.c: "AArch64 table format not supported" (IDR0.TTF bit 1).
    let ttf = idr::IDR0_TTF.get(idr0);
    out.push(Check::new(
        "host-ttf-aarch64",
        ttf & TTF_AARCH64 != 0,
        format!("host IDR0.TTF={ttf:#b}"),
    ));
    // IHI 0070 6.3.1 TTENDIAN: the guest's tables are little-endian.
    let endian = idr::IDR0_TTENDIAN.get(idr0);
    out.push(Check::new(
        "host-endianness",
        endian != TTENDIAN_BE_ONLY,
        format!("host IDR0.TTENDIAN={endian:#b}"),
    ));
    // arm-smmu-v3-iommufd.c arm_smmu_get_viommu_size(): the VM must not be
    // able to bypass the cache: the device is CANWBS or the SMMU has
    // S2FWB. CANWBS comes from firmware and is not in hw_info, so only
    // IDR3.FWB counts here.
    out.push(Check::new(
        "host-coherency",
        idr::IDR3_FWB.is_set(idr3),
        format!(
            "host IDR3.FWB={} (CANWBS is not reported by hw_info)",
            idr::IDR3_FWB.get(idr3)
        ),
    ));
    out.push(smmu_errata(u64::from(*iid)));
    // IHI 0070 5.4 CD.TG0: the host walks the guest's tables, a granule it
    // lacks is C_BAD_CD (IDR5.GRAN4K/16K/64K).
    let mut host_gran = Smmuv3Granules::empty();
    host_gran.set(Smmuv3Granules::G4K, idr::IDR5_GRAN4K.is_set(idr5));
    host_gran.set(Smmuv3Granules::G16K, idr::IDR5_GRAN16K.is_set(idr5));
    host_gran.set(Smmuv3Granules::G64K, idr::IDR5_GRAN64K.is_set(idr5));
    out.push(Check::new(
        "granules",
        host_gran.contains(c.gran),
        format!(
            "guest gran={} within host gran={}",
            c.gran.to_list(),
            host_gran.to_list()
        ),
    ));
    // IHI 0070 6.3.6 IDR5.OAS: the guest's stage-1 output (IPA) is the host
    // stage 2's input.
    let host_oas = idr::OAS_BITS
        .get(idr::IDR5_OAS.get(idr5) as usize)
        .copied()
        .unwrap_or(48);
    out.push(Check::new(
        "oas",
        u32::from(c.oas) <= host_oas,
        format!("guest oas={} <= host OAS {host_oas}", c.oas),
    ));
    // IHI 0070 5.2 STE.S1CDMax <= IDR1.SSIDSIZE: the host walks the guest's
    // CD table indexed by SubstreamID.
    let host_ssid = idr::IDR1_SSIDSIZE.get(idr1);
    out.push(Check::new(
        "ssid-width",
        u64::from(c.ssidsize) <= host_ssid,
        format!(
            "guest ssidsize={} <= host IDR1.SSIDSIZE={host_ssid}",
            c.ssidsize
        ),
    ));
    // IHI 0070 4.4.1: range invalidations (TG/NUM/SCALE) need IDR3.RIL;
    // the guest's commands go to the host queue (arm_vsmmu_cache_invalidate).
    out.push(Check::new(
        "range-invalidation",
        !c.ril || idr::IDR3_RIL.is_set(idr3),
        format!(
            "guest ril={}; host IDR3.RIL={}",
            yes(c.ril),
            idr::IDR3_RIL.get(idr3)
        ),
    ));
    // IHI 0070 3.9: ATS needs IDR0.ATS; iommufd reports
    // IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED when the device cannot use it.
    let host_ats =
        idr::IDR0_ATS.is_set(idr0) && !info.caps.contains(HostCaps::PCI_ATS_NOT_SUPPORTED);
    out.push(Check::new(
        "ats",
        !c.ats || host_ats,
        format!(
            "guest ats={}; host IDR0.ATS={} usable={}",
            yes(c.ats),
            idr::IDR0_ATS.get(idr0),
            yes(host_ats)
        ),
    ));
    // IHI 0070 8: page requests of a nested device reach the host SMMU's
    // PRI queue (IDR0.PRI) and are forwarded from there.
    out.push(Check::new(
        "pri",
        !c.pri || idr::IDR0_PRI.is_set(idr0),
        format!(
            "guest pri={}; host IDR0.PRI={}",
            yes(c.pri),
            idr::IDR0_PRI.get(idr0)
        ),
    ));
    // IHI 0070 3.13: the host SMMU walks the guest's stage-1 tables and so
    // performs the updates the guest was promised (IDR0.HTTU: 1 access
    // flag, 2 access flag and dirty state).
    let host_httu = idr::IDR0_HTTU.get(idr0);
    out.push(Check::new(
        "httu",
        u64::from(c.httu.idr0()) <= host_httu,
        format!("guest httu={} <= host IDR0.HTTU={host_httu}", c.httu.idr0()),
    ));
    out
}

/// arm-smmu-v3.c arm_smmu_device_iidr_probe(): MMU-600 before r2 (erratum
/// 1209401) and MMU-700 before r1p1 (errata 2268618, 2812531) drop
/// ARM_SMMU_FEAT_NESTING.
fn smmu_errata(raw: u64) -> Check {
    let arm = iidr::IMPLEMENTER.get(raw) == iidr::ARM;
    let (product, variant, revision) = (
        iidr::PRODUCT_ID.get(raw),
        iidr::VARIANT.get(raw),
        iidr::REVISION.get(raw),
    );
    let broken = arm
        && ((product == iidr::MMU_600 && variant < 2)
            || (product == iidr::MMU_700 && (variant < 1 || revision < 1)));
    Check::new(
        "host-errata",
        !broken,
        format!(
            "host IIDR={raw:#x}: product {product:#x} r{variant}p{revision}, nesting errata: {}",
            yes(broken)
        ),
    )
}
