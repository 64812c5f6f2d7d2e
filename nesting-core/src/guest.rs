//! What a guest IOMMU model needs from a host to back its passthrough
//! devices, in terms the ladder ([`crate::ladder`]) can weigh without
//! knowing the model.
//!
//! Each model crate implements [`GuestIommu`] for its configuration: it
//! states the page-table format its stage-1 tables are in (which host
//! hardware could walk them), how the VMM learns of new mappings, the
//! smallest page and the IOVA space it maps, and runs its own checks of a
//! host's hardware information (`IOMMU_GET_HW_INFO`) for nesting. The
//! ladder decides from that alone.

use std::fmt;

use crate::host::info::{HostInfo, HwInfo};
use crate::types::IovaRange;

/// One check of a guest's needs against a host, as the ladder reports
/// it ([`crate::ladder::Decision::checks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short stable name (used by tests and scripts).
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// One line: what was compared.
    pub detail: String,
}

impl Check {
    /// A check called `name` that `passed`, comparing what `detail` says.
    pub fn new(name: &'static str, passed: bool, detail: String) -> Check {
        Check {
            name,
            passed,
            detail,
        }
    }

    /// A failed check.
    pub fn fail(name: &'static str, detail: String) -> Check {
        Check::new(name, false, detail)
    }
}

/// The kind of host IOMMU hardware (`enum iommu_hw_info_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwType {
    /// No hardware information.
    None,
    /// Intel VT-d.
    IntelVtd,
    /// Arm SMMUv3.
    ArmSmmuv3,
    /// Another type.
    Other,
}

impl HwType {
    /// The type of `hw`.
    pub fn of(hw: &HwInfo) -> HwType {
        match hw {
            HwInfo::None => HwType::None,
            HwInfo::IntelVtd { .. } => HwType::IntelVtd,
            HwInfo::ArmSmmuv3 { .. } => HwType::ArmSmmuv3,
            HwInfo::Other { .. } => HwType::Other,
        }
    }

    /// The name [`HwInfo::kind_name`] gives it.
    pub fn name(self) -> &'static str {
        match self {
            HwType::None => "none",
            HwType::IntelVtd => "intel-vtd",
            HwType::ArmSmmuv3 => "arm-smmuv3",
            HwType::Other => "other",
        }
    }
}

impl fmt::Display for HwType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whose hardware could walk the guest's stage-1 tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage1 {
    /// Tables in the format of this host IOMMU type, which nests them on
    /// its own stage 2.
    WalkedBy(HwType),
    /// The guest has no page-table format a physical IOMMU walks; why.
    NoFormat(&'static str),
}

/// How the VMM learns of the mappings a guest makes: shadowing mirrors
/// them, so it sees each one or cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapNotice {
    /// Every mapping is a request to the model (virtio-iommu MAP).
    Requests,
    /// The guest invalidates after making an entry present only when the
    /// model asks it to (VT-d caching mode): the check says whether it
    /// does, named as the model names it.
    Invalidation(Check),
    /// The guest never says when it maps; the check says why.
    Never(Check),
}

/// The IOVA space a guest maps, as a shadowing host must provide it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IovaSpace {
    /// The guest may map any address of these ranges and cannot be told
    /// of host holes: the host must map all of them.
    Fixed(Vec<IovaRange>),
    /// The guest maps inside `range`, which the model may clip to what the
    /// host maps and in which it can announce up to `max_holes` holes.
    Announced {
        /// The range the guest is offered (virtio-iommu `input_range`).
        range: IovaRange,
        /// Holes the model has room to announce.
        max_holes: usize,
        /// What bounds `max_holes`, for the check's detail.
        room: String,
    },
}

impl IovaSpace {
    /// The ranges a device joining a shadowed domain must map.
    pub fn ranges(&self) -> Vec<IovaRange> {
        match self {
            IovaSpace::Fixed(r) => r.clone(),
            IovaSpace::Announced { range, .. } => vec![*range],
        }
    }
}

/// What shadowing the guest's mappings into a host IOAS needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowNeeds {
    /// How the VMM sees the guest's mappings.
    pub map_notice: MapNotice,
    /// The guest's smallest page, in bytes: the host's must not be larger.
    pub page_size: u64,
    /// The IOVA space the guest maps.
    pub iova: IovaSpace,
}

/// A guest IOMMU model's configuration as the ladder sees it.
pub trait GuestIommu: fmt::Debug {
    /// The model name as scripts write it (`vtd`, `smmuv3`,
    /// `virtio-iommu`).
    fn model_name(&self) -> &'static str;

    /// Whose hardware walks the guest's stage-1 tables.
    fn stage1(&self) -> Stage1;

    /// The model's nest checks, after the ladder's own check that the host
    /// is of the [`Stage1::WalkedBy`] type: what the guest must be
    /// configured for to nest, and, on a host of that type, that every
    /// capability the guest presents is one the host's nested stage 1
    /// honours. Each names the spec section or kernel rule it enforces.
    fn nest_checks(&self, host: &HostInfo) -> Vec<Check>;

    /// What shadowing needs.
    fn shadow_needs(&self) -> ShadowNeeds;
}
