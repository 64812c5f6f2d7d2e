//! What the simulated drivers share with the iommufd core and each other:
//! which driver serves a unit, the data type every driver accepts, and the
//! shape of a driver's answer to a user invalidation. The drivers
//! ([`super::vendor`] for VT-d and SMMUv3, [`super::mock`] for the kernel's
//! mock IOMMU) depend on this module and not on each other; the core
//! (`attach`, `viommu`) picks the driver by [`UnitKind`].

use nesting_core::host::Errno;
use nesting_core::host::info::{HostInfo, HwInfo};

/// `IOMMU_HW_INFO_TYPE_SELFTEST` (iommufd_test.h): a unit reporting it is
/// the kernel's mock IOMMU.
pub(super) const HW_INFO_TYPE_SELFTEST: u32 = 0xfeed_beef;

/// `enum iommu_hwpt_data_type` (include/uapi/linux/iommufd.h):
/// `IOMMU_HWPT_DATA_NONE`.
pub(super) const HWPT_DATA_NONE: u32 = 0;

/// Which driver serves a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UnitKind {
    Vtd,
    Smmuv3,
    /// The kernel's mock IOMMU ([`super::mock`]).
    Mock,
    Generic,
}

impl UnitKind {
    pub fn of(info: &HostInfo) -> UnitKind {
        match info.hw {
            HwInfo::Other { kind, .. } if kind == HW_INFO_TYPE_SELFTEST => UnitKind::Mock,
            HwInfo::IntelVtd { .. } => UnitKind::Vtd,
            HwInfo::ArmSmmuv3 { .. } => UnitKind::Smmuv3,
            HwInfo::None | HwInfo::Other { .. } => UnitKind::Generic,
        }
    }
}

/// Outcome of a driver's invalidation: entries handled and result.
pub type Handled = (u32, Result<(), Errno>);
