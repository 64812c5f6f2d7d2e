//! What the IOMMU drivers decide: domain formats, nested data, attach
//! compatibility and user invalidation, for Intel VT-d
//! (`drivers/iommu/intel/iommu.c`, `nested.c`, `pasid.c`) and Arm SMMUv3
//! (`drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3.c`, `arm-smmu-v3-iommufd.c`).

use nesting_core::host::info::{HostInfo, HwInfo, cap, ecap, idr};
use nesting_core::host::{Errno, HwptData, HwptFlags, InvalidationBatch, ViommuType, VtdS1Flags};

use super::driver::{HWPT_DATA_NONE, Handled, UnitKind};
use super::state::{Nested, Paging, Stage};
use crate::profile::SimHostSpec;

/// `IOMMU_HWPT_DATA_VTD_S1` (`enum iommu_hwpt_data_type`).
pub(super) const HWPT_DATA_VTD_S1: u32 = 1;
/// `IOMMU_HWPT_DATA_ARM_SMMUV3`.
pub(super) const HWPT_DATA_ARM_SMMUV3: u32 = 2;
/// `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`.
pub(super) const INV_DATA_VTD_S1: u32 = 0;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`.
pub(super) const INV_DATA_ARM_SMMUV3: u32 = 1;
/// `sizeof(struct iommu_hwpt_vtd_s1)`.
const VTD_S1_LEN: usize = 24;
/// `sizeof(struct iommu_hwpt_arm_smmuv3)`.
const SMMU_STE_LEN: usize = 16;
/// `sizeof(struct iommu_hwpt_vtd_s1_invalidate)`.
pub(super) const VTD_INV_LEN: u32 = 24;
/// `sizeof(struct iommu_viommu_arm_smmuv3_invalidate)`.
pub(super) const SMMU_CMD_LEN: u32 = 16;
/// `IOMMU_VTD_INV_FLAGS_LEAF`.
const VTD_INV_FLAGS_LEAF: u64 = 1;
/// `VTD_PAGE_SIZE`.
const VTD_PAGE_SIZE: u64 = 4096;
/// `ADDR_WIDTH_4LEVEL` / `ADDR_WIDTH_5LEVEL` (intel/iommu.h).
const ADDR_WIDTH_4LEVEL: u32 = 48;
const ADDR_WIDTH_5LEVEL: u32 = 57;

/// STE and command fields (arm-smmu-v3.h).
mod ste {
    use nesting_core::bits::Field;
    pub const V: Field = Field::bit(0);
    pub const CFG: Field = Field::bits(3, 1);
    pub const S1FMT: Field = Field::bits(5, 4);
    pub const S1CTXPTR: Field = Field::bits(51, 6);
    pub const S1CDMAX: Field = Field::bits(63, 59);
    pub const S1DSS: Field = Field::bits(1, 0);
    pub const S1CIR: Field = Field::bits(3, 2);
    pub const S1COR: Field = Field::bits(5, 4);
    pub const S1CSH: Field = Field::bits(7, 6);
    pub const S1STALLD: Field = Field::bit(27);
    pub const EATS: Field = Field::bits(29, 28);
    pub const CFG_ABORT: u64 = 0;
    pub const CFG_BYPASS: u64 = 4;
    pub const CFG_S1_TRANS: u64 = 5;
    pub const EATS_ABT: u64 = 0;
    pub const EATS_TRANS: u64 = 1;
    /// `STRTAB_STE_0_NESTING_ALLOWED`.
    pub const NESTING_ALLOWED_0: u64 =
        V.mask() | CFG.mask() | S1FMT.mask() | S1CTXPTR.mask() | S1CDMAX.mask();
    /// `STRTAB_STE_1_NESTING_ALLOWED`.
    pub const NESTING_ALLOWED_1: u64 =
        S1DSS.mask() | S1CIR.mask() | S1COR.mask() | S1CSH.mask() | S1STALLD.mask() | EATS.mask();
    /// `CMDQ_0_OP`.
    pub const CMDQ_0_OP: Field = Field::bits(7, 0);
    /// `CMDQ_CFGI_0_SID` (also `CMDQ_ATC_0_SID`).
    pub const CMDQ_0_SID: Field = Field::bits(63, 32);
}

/// `enum arm_smmu_cmdq_opcode` values a vIOMMU accepts.
mod op {
    pub const CFGI_CD: u64 = 0x05;
    pub const CFGI_CD_ALL: u64 = 0x06;
    pub const TLBI_NH_ALL: u64 = 0x10;
    pub const TLBI_NH_ASID: u64 = 0x11;
    pub const TLBI_NH_VA: u64 = 0x12;
    pub const TLBI_NH_VAA: u64 = 0x13;
    pub const TLBI_NSNH_ALL: u64 = 0x30;
    pub const ATC_INV: u64 = 0x40;
}

/// SMMU_IIDR fields (IHI 0070, 6.3.13) and the products with nesting
/// errata (arm-smmu-v3.c, `arm_smmu_device_iidr_probe`).
mod iidr {
    use nesting_core::bits::Field;
    pub const IMPLEMENTER: Field = Field::bits(11, 0);
    pub const REVISION: Field = Field::bits(15, 12);
    pub const VARIANT: Field = Field::bits(19, 16);
    pub const PRODUCTID: Field = Field::bits(31, 20);
    pub const IMPLEMENTER_ARM: u64 = 0x43b;
    pub const PRODUCTID_MMU_600: u64 = 0x483;
    pub const PRODUCTID_MMU_700: u64 = 0x487;
}

/// The VT-d predicates of intel/iommu.h (`sm_supported`, `nested_supported`,
/// `ssads_supported`, `pasid_supported`), with `intel_iommu_sm` on.
#[derive(Clone, Copy, Debug, Default)]
struct Vtd {
    sm: bool,
    flts: bool,
    slts: bool,
    nested: bool,
    ssads: bool,
    pasid: bool,
    fl5lp: bool,
    srs: bool,
    eafs: bool,
}

fn vtd(info: &HostInfo) -> Option<Vtd> {
    let (c, e) = info.vtd()?;
    let sm = e.has(ecap::SMTS);
    Some(Vtd {
        sm,
        flts: e.has(ecap::FSTS),
        slts: e.has(ecap::SSTS),
        nested: sm && e.has(ecap::NEST),
        ssads: sm && e.has(ecap::SSADS) && e.has(ecap::SMPWCS),
        pasid: sm && e.has(ecap::PASID),
        fl5lp: c.has(cap::FS5LP),
        srs: e.has(ecap::SRS),
        eafs: e.has(ecap::EAFS),
    })
}

/// SMMUv3 features (arm-smmu-v3.c, `arm_smmu_device_hw_probe`).
#[derive(Clone, Copy, Debug, Default)]
struct Smmu {
    s1: bool,
    nesting: bool,
    s2fwb: bool,
}

fn smmu(info: &HostInfo) -> Option<Smmu> {
    let HwInfo::ArmSmmuv3 {
        idr: r, iidr: id, ..
    } = &info.hw
    else {
        return None;
    };
    let (idr0, idr3) = (u64::from(r[0]), u64::from(r[3]));
    let s1 = idr::IDR0_S1P.is_set(idr0);
    // "if ((smmu->features & ARM_SMMU_FEAT_TRANS_S1) &&
    //      (smmu->features & ARM_SMMU_FEAT_TRANS_S2)) smmu->features |= ARM_SMMU_FEAT_NESTING;"
    let mut nesting = s1 && idr::IDR0_S2P.is_set(idr0);
    let id = u64::from(*id);
    if iidr::IMPLEMENTER.get(id) == iidr::IMPLEMENTER_ARM {
        let (variant, revision) = (iidr::VARIANT.get(id), iidr::REVISION.get(id));
        match iidr::PRODUCTID.get(id) {
            // "Arm erratum 1209401": "if (variant < 2) ... &= ~ARM_SMMU_FEAT_NESTING"
            iidr::PRODUCTID_MMU_600 if variant < 2 => nesting = false,
            // "Arm errata 2268618, 2812531": "if (variant < 1 || revision < 1)"
            iidr::PRODUCTID_MMU_700 if variant < 1 || revision < 1 => nesting = false,
            _ => {}
        }
    }
    Some(Smmu {
        s1,
        nesting,
        s2fwb: idr::IDR3_FWB.is_set(idr3),
    })
}

/// The driver's `domain_alloc_paging_flags` (FAULT_ID_VALID already
/// removed by the core): which format the domain gets, or why not.
pub(super) fn domain_alloc_paging(
    info: &HostInfo,
    flags: HwptFlags,
    data: bool,
) -> Result<Stage, Errno> {
    if let Some(v) = vtd(info) {
        // intel/iommu.c, intel_iommu_domain_alloc_paging_flags:
        // "if (user_data) return ERR_PTR(-EOPNOTSUPP);"
        if data {
            return Err(Errno::EOPNOTSUPP);
        }
        // intel_iommu_domain_alloc_first_stage: "if (flags & ~IOMMU_HWPT_ALLOC_PASID)"
        // and "if (!sm_supported(iommu) || !ecap_flts(iommu->ecap))" -> try second stage.
        if (flags - HwptFlags::PASID).is_empty() && v.sm && v.flts {
            return Ok(Stage::First);
        }
        // intel_iommu_domain_alloc_second_stage
        if (flags.contains(HwptFlags::NEST_PARENT) && !v.nested)
            || (flags.contains(HwptFlags::DIRTY_TRACKING) && !v.ssads)
        {
            return Err(Errno::EOPNOTSUPP);
        }
        // "Legacy mode always supports second stage"
        if v.sm && !v.slts {
            return Err(Errno::EOPNOTSUPP);
        }
        return Ok(Stage::Second);
    }
    if let Some(s) = smmu(info) {
        // arm-smmu-v3.c, arm_smmu_domain_alloc_paging_flags
        if data {
            return Err(Errno::EOPNOTSUPP);
        }
        let nest = HwptFlags::NEST_PARENT;
        let s1_flags = [
            HwptFlags::DIRTY_TRACKING,
            HwptFlags::DIRTY_TRACKING | HwptFlags::PASID,
            HwptFlags::PASID,
        ];
        return match flags {
            // "case 0: Prefer S1 if available"
            f if f.is_empty() => Ok(if s.s1 { Stage::First } else { Stage::Second }),
            // "case IOMMU_HWPT_ALLOC_NEST_PARENT: if (!(smmu->features & ARM_SMMU_FEAT_NESTING))"
            f if f == nest && s.nesting => Ok(Stage::Second),
            f if s1_flags.contains(&f) && s.s1 => Ok(Stage::First),
            _ => Err(Errno::EOPNOTSUPP),
        };
    }
    // A unit without hardware information: plain paging domains only.
    if data || flags.contains(HwptFlags::NEST_PARENT) {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(Stage::Generic)
}

/// The VT-d stage-1 description of nested data (`struct iommu_hwpt_vtd_s1`).
struct VtdS1 {
    flags: u64,
    addr_width: u32,
}

/// `iommu_copy_struct_from_user(&vtd, user_data, IOMMU_HWPT_DATA_VTD_S1, __reserved)`:
/// type mismatch or a length other than the structure's is EINVAL.
fn vtd_s1_of(data: &HwptData) -> Result<VtdS1, Errno> {
    match data {
        HwptData::VtdS1 {
            flags, addr_width, ..
        } => Ok(VtdS1 {
            flags: flags.bits(),
            addr_width: *addr_width,
        }),
        HwptData::Raw { data_type, bytes }
            if *data_type == HWPT_DATA_VTD_S1 && bytes.len() == VTD_S1_LEN =>
        {
            Ok(VtdS1 {
                flags: le_u64(bytes, 0),
                addr_width: le_u32(bytes, 16),
            })
        }
        _ => Err(Errno::EINVAL),
    }
}

fn data_type(data: &HwptData) -> u32 {
    match data {
        HwptData::None => HWPT_DATA_NONE,
        HwptData::VtdS1 { .. } => HWPT_DATA_VTD_S1,
        HwptData::Smmuv3 { .. } => HWPT_DATA_ARM_SMMUV3,
        HwptData::Raw { data_type, .. } => *data_type,
    }
}

/// intel/nested.c, `intel_iommu_domain_alloc_nested`. The stage-1 fields
/// are *not* checked here: `intel_pasid_setup_nested` checks them when a
/// device is attached.
pub(super) fn vtd_alloc_nested(
    info: &HostInfo,
    flags: HwptFlags,
    parent: Stage,
    data: &HwptData,
) -> Result<(), Errno> {
    let v = vtd(info).unwrap_or_default();
    // "if (!nested_supported(iommu) || flags & ~IOMMU_HWPT_ALLOC_PASID) return ERR_PTR(-EOPNOTSUPP);"
    if !v.nested || !(flags - HwptFlags::PASID).is_empty() {
        return Err(Errno::EOPNOTSUPP);
    }
    // "if (user_data->type != IOMMU_HWPT_DATA_VTD_S1) return ERR_PTR(-EOPNOTSUPP);"
    if data_type(data) != HWPT_DATA_VTD_S1 {
        return Err(Errno::EOPNOTSUPP);
    }
    // "if (!intel_domain_is_ss_paging(s2_domain) || !s2_domain->nested_parent) return ERR_PTR(-EINVAL);"
    if parent != Stage::Second {
        return Err(Errno::EINVAL);
    }
    vtd_s1_of(data).map(|_| ())
}

/// arm-smmu-v3-iommufd.c, `arm_vsmmu_alloc_domain_nested` and
/// `arm_smmu_validate_vste`.
pub(super) fn smmu_alloc_domain_nested(flags: HwptFlags, data: &HwptData) -> Result<(), Errno> {
    // "if (flags) return ERR_PTR(-EOPNOTSUPP);"
    if !flags.is_empty() {
        return Err(Errno::EOPNOTSUPP);
    }
    let s = smmu_ste_of(data)?;
    // "if (!(arg->ste[0] & cpu_to_le64(STRTAB_STE_0_V))) { memset(...); return 0; }"
    if !ste::V.is_set(s[0]) {
        return Ok(());
    }
    // "EIO is reserved for invalid STE data."
    if s[0] & !ste::NESTING_ALLOWED_0 != 0 || s[1] & !ste::NESTING_ALLOWED_1 != 0 {
        return Err(Errno::EIO);
    }
    let cfg = ste::CFG.get(s[0]);
    if ![ste::CFG_ABORT, ste::CFG_BYPASS, ste::CFG_S1_TRANS].contains(&cfg) {
        return Err(Errno::EIO);
    }
    // "Only Full ATS or ATS UR is supported"
    let eats = ste::EATS.get(s[1]);
    if eats != ste::EATS_ABT && eats != ste::EATS_TRANS {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// `iommu_copy_struct_from_user(&arg, user_data, IOMMU_HWPT_DATA_ARM_SMMUV3, ste)`.
fn smmu_ste_of(data: &HwptData) -> Result<[u64; 2], Errno> {
    match data {
        HwptData::Smmuv3 { ste } => Ok(*ste),
        HwptData::Raw { data_type, bytes }
            if *data_type == HWPT_DATA_ARM_SMMUV3 && bytes.len() == SMMU_STE_LEN =>
        {
            Ok([le_u64(bytes, 0), le_u64(bytes, 8)])
        }
        _ => Err(Errno::EINVAL),
    }
}

/// The STE config a nested domain installs (`arm_smmu_make_nested_domain_ste`:
/// a non-valid vSTE becomes an abort STE).
fn smmu_cfg(data: &HwptData) -> u64 {
    match smmu_ste_of(data) {
        Ok(s) if ste::V.is_set(s[0]) => ste::CFG.get(s[0]),
        _ => ste::CFG_ABORT,
    }
}

/// The device side of an attach.
pub(super) struct AttachTarget<'a> {
    /// PASID, 0 for the RID.
    pub pasid: u32,
    pub dev_unit: u32,
    pub dev_info: &'a HostInfo,
    pub dev_spec: &'a SimHostSpec,
    /// PASIDs of the device are attached.
    pub has_pasids: bool,
}

/// Whether a domain built for `dom_unit` may serve a device of the target
/// unit: SMMUv3 needs the same instance (`smmu_domain->smmu != smmu`,
/// `arm_smmu_attach_dev`); VT-d accepts another unit with the same
/// capabilities (`paging_domain_compatible`), modelled as an identical
/// profile.
fn compatible(t: &AttachTarget<'_>, dom_unit: u32, dom_spec: &SimHostSpec) -> Result<(), Errno> {
    if dom_unit == t.dev_unit {
        return Ok(());
    }
    // selftest.c registers one mock iommu_device for every mock device, and
    // its attach_dev checks nothing of the domain's origin.
    if UnitKind::of(&dom_spec.info) == UnitKind::Mock && UnitKind::of(t.dev_info) == UnitKind::Mock
    {
        return Ok(());
    }
    let same_kind = UnitKind::of(&dom_spec.info) == UnitKind::of(t.dev_info);
    if same_kind && UnitKind::of(t.dev_info) != UnitKind::Smmuv3 && dom_spec == t.dev_spec {
        return Ok(());
    }
    Err(Errno::EINVAL)
}

/// iommu.c, `iommu_attach_device_pasid`: "if ((device->dev->iommu->max_pasids > 0) &&
/// (pasid >= device->dev->iommu->max_pasids)) ret = -EINVAL;", then the
/// driver's `set_dev_pasid` refuses a unit without PASID support with
/// EOPNOTSUPP (`intel_iommu_set_dev_pasid`: "if (!pasid_supported(iommu) ...)").
fn pasid_checks(t: &AttachTarget<'_>) -> Result<(), Errno> {
    let bits = u32::from(t.dev_info.max_pasid_log2);
    if bits > 0 && u64::from(t.pasid) >= 1u64 << bits.min(32) {
        return Err(Errno::EINVAL);
    }
    let vtd_pasid = vtd(t.dev_info).is_none_or(|v| v.pasid);
    if bits == 0 || !vtd_pasid {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

/// Attaching a paging domain: the driver's `attach_dev` / `set_dev_pasid`.
pub(super) fn attach_paging(
    t: &AttachTarget<'_>,
    p: &Paging,
    dom_spec: &SimHostSpec,
) -> Result<(), Errno> {
    let kind = UnitKind::of(t.dev_info);
    if t.pasid == 0 {
        compatible(t, p.unit, dom_spec)?;
        // arm_smmu_attach_dev: "} else if (arm_smmu_ssids_in_use(&master->cd_table)) return -EBUSY;"
        if kind == UnitKind::Smmuv3 && p.stage != Stage::First && t.has_pasids {
            return Err(Errno::EBUSY);
        }
        return Ok(());
    }
    // iommu_attach_device_pasid: "if (!domain_iommu_ops_compatible(ops, domain) ...) return -EINVAL;"
    if UnitKind::of(&dom_spec.info) != kind {
        return Err(Errno::EINVAL);
    }
    pasid_checks(t)?;
    compatible(t, p.unit, dom_spec)?;
    // arm_smmu_s1_set_dev_pasid: "if (smmu_domain->stage != ARM_SMMU_DOMAIN_S1) return -EINVAL;"
    if kind == UnitKind::Smmuv3 && p.stage != Stage::First {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Attaching a nested domain: VT-d `intel_nested_attach_dev` /
/// `intel_nested_set_dev_pasid`, SMMUv3 `arm_smmu_attach_dev_nested`.
pub(super) fn attach_nested(
    t: &AttachTarget<'_>,
    n: &Nested,
    parent: &Paging,
    parent_spec: &SimHostSpec,
    vdev_known: bool,
) -> Result<(), Errno> {
    if UnitKind::of(&parent_spec.info) == UnitKind::Smmuv3 {
        // arm_smmu_nested_ops has no set_dev_pasid: iommu_attach_device_pasid
        // "if (!domain->ops->set_dev_pasid ...) return -EOPNOTSUPP;"
        if t.pasid != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        // "if (nested_domain->vsmmu->smmu != master->smmu) return -EINVAL;"
        if n.unit != t.dev_unit {
            return Err(Errno::EINVAL);
        }
        // "if (arm_smmu_ssids_in_use(&master->cd_table)) return -EBUSY;"
        if t.has_pasids {
            return Err(Errno::EBUSY);
        }
        // arm_smmu_attach_prepare_vmaster: a translating vSTE needs a vDEVICE
        // (iommufd_viommu_get_vdev_id -> -ENOENT).
        if smmu_cfg(&n.data) == ste::CFG_S1_TRANS && !vdev_known {
            return Err(Errno::ENOENT);
        }
        return Ok(());
    }
    if UnitKind::of(&parent_spec.info) == UnitKind::Mock {
        // domain_nested_ops has set_dev_pasid (mock_domain_set_dev_pasid_nop).
        if t.pasid != 0 {
            pasid_checks(t)?;
        }
        compatible(t, parent.unit, parent_spec)?;
        // mock_domain_nop_attach: a nested domain of a vIOMMU needs the
        // device's vDEVICE there (iommufd_viommu_get_vdev_id -> -ENOENT).
        if n.viommu.is_some() && !vdev_known {
            return Err(Errno::ENOENT);
        }
        return Ok(());
    }
    if t.pasid != 0 {
        if UnitKind::of(t.dev_info) != UnitKind::Vtd {
            return Err(Errno::EINVAL);
        }
        pasid_checks(t)?;
    }
    // "ret = paging_domain_compatible(&dmar_domain->s2_domain->domain, dev);"
    compatible(t, parent.unit, parent_spec)?;
    vtd_setup_nested(t.dev_info, &n.data)
}

/// intel/pasid.c, `intel_pasid_setup_nested`: the stage-1 description is
/// checked against the unit when a device is attached. Unknown flag bits
/// are ignored (`pasid_pte_config_nested` reads SRE, WPE and EAFE only).
fn vtd_setup_nested(info: &HostInfo, data: &HwptData) -> Result<(), Errno> {
    let v = vtd(info).unwrap_or_default();
    let s1 = vtd_s1_of(data)?;
    match s1.addr_width {
        ADDR_WIDTH_4LEVEL => {}
        // "if (!cap_fl5lp_support(iommu->cap)) return -EINVAL;"
        ADDR_WIDTH_5LEVEL if v.fl5lp => {}
        // "Invalid stage-1 address width"
        _ => return Err(Errno::EINVAL),
    }
    let flags = VtdS1Flags::from_bits_retain(s1.flags);
    // "if ((s1_cfg->flags & IOMMU_VTD_S1_SRE) && !ecap_srs(iommu->ecap)) return -EINVAL;"
    if flags.contains(VtdS1Flags::SRE) && !v.srs {
        return Err(Errno::EINVAL);
    }
    // "if ((s1_cfg->flags & IOMMU_VTD_S1_EAFE) && !ecap_eafs(iommu->ecap)) return -EINVAL;"
    if flags.contains(VtdS1Flags::EAFE) && !v.eafs {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The driver's `get_viommu_size` deciding whether a vIOMMU of `kind` can
/// exist on this unit (viommu.c, `iommufd_viommu_alloc_ioctl`: 0 means
/// EOPNOTSUPP).
pub(super) fn viommu_supported(info: &HostInfo, kind: ViommuType) -> Result<(), Errno> {
    // Only arm-smmu-v3 (and AMD) implement vIOMMUs; intel_iommu_ops has no
    // get_viommu_size.
    let s = smmu(info).ok_or(Errno::EOPNOTSUPP)?;
    // arm_smmu_get_viommu_size: "if (!(smmu->features & ARM_SMMU_FEAT_NESTING)) return 0;"
    // "if (!arm_smmu_master_canwbs(master) && !(smmu->features & ARM_SMMU_FEAT_S2FWB)) return 0;"
    // (simulated devices have no IORT CANWBS), and only the plain SMMUv3
    // type without an implementation extension.
    if !s.nesting || !s.s2fwb || kind != ViommuType::ArmSmmuv3 {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

/// intel/nested.c, `intel_nested_cache_invalidate_user`: stops at the first
/// bad entry and reports how many it handled.
pub(super) fn vtd_invalidate(batch: &InvalidationBatch) -> Handled {
    let entries: Vec<(u64, u64, u64, u32)> = match batch {
        InvalidationBatch::VtdS1(v) => v
            .iter()
            .map(|e| {
                (
                    e.addr,
                    e.npages,
                    if e.leaf { VTD_INV_FLAGS_LEAF } else { 0 },
                    0,
                )
            })
            .collect(),
        InvalidationBatch::Raw {
            data_type,
            entry_len,
            bytes,
        } if *data_type == INV_DATA_VTD_S1 => {
            // iommu_copy_struct_from_user_array: "if (src_data->len < min_len ||
            // data_len < src_data->len) return -EINVAL;" at the first entry.
            if *entry_len != VTD_INV_LEN && !bytes.is_empty() {
                return (0, Err(Errno::EINVAL));
            }
            bytes
                .chunks_exact(VTD_INV_LEN as usize)
                .map(|c| {
                    (
                        le_u64(c, 0),
                        le_u64(c, 8),
                        u64::from(le_u32(c, 16)),
                        le_u32(c, 20),
                    )
                })
                .collect()
        }
        // "if (array->type != IOMMU_HWPT_INVALIDATE_DATA_VTD_S1) { ret = -EINVAL; goto out; }"
        _ => return (0, Err(Errno::EINVAL)),
    };
    for (i, (addr, npages, flags, reserved)) in entries.into_iter().enumerate() {
        let i = i as u32;
        // "if ((inv_entry.flags & ~IOMMU_VTD_INV_FLAGS_LEAF) || inv_entry.__reserved) ret = -EOPNOTSUPP;"
        if flags & !VTD_INV_FLAGS_LEAF != 0 || reserved != 0 {
            return (i, Err(Errno::EOPNOTSUPP));
        }
        // "if (!IS_ALIGNED(inv_entry.addr, VTD_PAGE_SIZE) ||
        //      ((inv_entry.npages == U64_MAX) && inv_entry.addr)) ret = -EINVAL;"
        if addr % VTD_PAGE_SIZE != 0 || (npages == u64::MAX && addr != 0) {
            return (i, Err(Errno::EINVAL));
        }
    }
    (batch.len() as u32, Ok(()))
}

/// arm-smmu-v3-iommufd.c, `arm_vsmmu_cache_invalidate`: the whole array is
/// copied first (`iommu_copy_struct_from_full_user_array`: EINVAL for a
/// wrong type or *zero entries*), then each command is converted; an
/// unknown opcode or an unknown vSID (no vDEVICE) is EIO at that entry.
pub(super) fn smmu_invalidate(
    batch: &InvalidationBatch,
    vsid_known: impl Fn(u64) -> bool,
) -> Handled {
    let cmds: Vec<[u64; 2]> = match batch {
        InvalidationBatch::Smmuv3(v) => v.clone(),
        InvalidationBatch::Raw {
            data_type,
            entry_len,
            bytes,
        } if *data_type == INV_DATA_ARM_SMMUV3 => match raw_cmds(*entry_len, bytes) {
            Ok(v) => v,
            Err(e) => return (0, Err(e)),
        },
        _ => return (0, Err(Errno::EINVAL)),
    };
    if cmds.is_empty() {
        return (0, Err(Errno::EINVAL));
    }
    for (i, c) in cmds.iter().enumerate() {
        let ok = match ste::CMDQ_0_OP.get(c[0]) {
            op::TLBI_NSNH_ALL
            | op::TLBI_NH_VA
            | op::TLBI_NH_VAA
            | op::TLBI_NH_ALL
            | op::TLBI_NH_ASID => true,
            // "if (arm_vsmmu_vsid_to_sid(vsmmu, vsid, &sid)) return -EIO;"
            op::ATC_INV | op::CFGI_CD | op::CFGI_CD_ALL => vsid_known(ste::CMDQ_0_SID.get(c[0])),
            _ => false,
        };
        if !ok {
            return (i as u32, Err(Errno::EIO));
        }
    }
    (cmds.len() as u32, Ok(()))
}

/// `copy_struct_from_user` per entry when `entry_len` is not 16: shorter
/// entries are zero-extended, longer ones must end in zeros (E2BIG).
fn raw_cmds(entry_len: u32, bytes: &[u8]) -> Result<Vec<[u64; 2]>, Errno> {
    let n = entry_len as usize;
    if n == 0 {
        return Ok(vec![]);
    }
    let mut out = Vec::with_capacity(bytes.len() / n);
    for c in bytes.chunks_exact(n) {
        if c.len() > SMMU_CMD_LEN as usize && c[SMMU_CMD_LEN as usize..].iter().any(|b| *b != 0) {
            return Err(Errno(libc::E2BIG));
        }
        let mut buf = [0u8; 16];
        let k = c.len().min(16);
        buf[..k].copy_from_slice(&c[..k]);
        out.push([le_u64(&buf, 0), le_u64(&buf, 8)]);
    }
    Ok(out)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}
