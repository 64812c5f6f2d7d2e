//! The kernel's mock IOMMU driver (`drivers/iommu/iommufd/selftest.c`,
//! built with `CONFIG_IOMMUFD_TEST`), so that the simulator can run the
//! same operation sequences as the kernel test (tests/kernel) does against
//! mock devices: its paging and nested domains (`IOMMU_HWPT_DATA_SELFTEST`),
//! its vIOMMU type and both of its user invalidation formats.
//!
//! A unit whose `HwInfo` is `Other` of type `IOMMU_HW_INFO_TYPE_SELFTEST`
//! is served by this driver (see [`super::driver::UnitKind`]).

use nesting_core::host::{Errno, HwptData, HwptFlags, InvalidationBatch, ViommuType};

use super::driver::{HWPT_DATA_NONE, Handled};

/// `IOMMU_HWPT_DATA_SELFTEST`.
pub(super) const HWPT_DATA_SELFTEST: u32 = 0xdead;
/// `IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`.
const HWPT_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_VIOMMU_TYPE_SELFTEST`.
const VIOMMU_TYPE_SELFTEST: u32 = 0xdead_beef;
/// `IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`.
const VIOMMU_INVALIDATE_DATA_SELFTEST: u32 = 0xdead_beef;
/// `struct iommu_hwpt_selftest`: `iotlb`, `pagetable_type`; the first
/// version ended after `iotlb`.
const HWPT_SELFTEST_LEN: usize = 8;
const HWPT_SELFTEST_MIN: usize = 4;
/// `struct iommu_hwpt_invalidate_selftest`: `flags`, `iotlb_id`.
const HWPT_INV_LEN: usize = 8;
/// `struct iommu_viommu_invalidate_selftest`: `flags`, `vdev_id`, `cache_id`.
const VIOMMU_INV_LEN: usize = 12;
/// `IOMMU_TEST_INVALIDATE_FLAG_ALL`.
const INVALIDATE_FLAG_ALL: u32 = 1;
/// `MOCK_NESTED_DOMAIN_IOTLB_ID_MAX`.
const NESTED_IOTLB_ID_MAX: u32 = 3;
/// `MOCK_DEV_CACHE_ID_MAX`.
const DEV_CACHE_ID_MAX: u32 = 3;

/// include/linux/iommu.h, `__iommu_copy_struct_from_user`: a type other
/// than the driver's, a length below the first version's or above the
/// driver's structure is EINVAL (longer user structures are *not* accepted
/// with a zero tail here). Returns the bytes zero-extended to `len`.
fn copy_struct(data: &HwptData, ty: u32, min: usize, len: usize) -> Result<Vec<u8>, Errno> {
    let HwptData::Raw { data_type, bytes } = data else {
        return Err(Errno::EINVAL);
    };
    if *data_type != ty || bytes.len() < min || bytes.len() > len {
        return Err(Errno::EINVAL);
    }
    let mut out = bytes.clone();
    out.resize(len, 0);
    Ok(out)
}

/// selftest.c, `mock_domain_alloc_paging_flags`.
pub(super) fn alloc_paging(flags: HwptFlags, data: &HwptData) -> Result<(), Errno> {
    let paging_flags = HwptFlags::DIRTY_TRACKING | HwptFlags::NEST_PARENT | HwptFlags::PASID;
    // "if ((flags & ~PAGING_FLAGS) || (has_dirty_flag && no_dirty_ops)) return ERR_PTR(-EOPNOTSUPP);"
    // (the core already refused DIRTY_TRACKING without the capability)
    if !paging_flags.contains(flags) {
        return Err(Errno::EOPNOTSUPP);
    }
    let ty = match data {
        HwptData::None => return Ok(()),
        HwptData::Raw { data_type, .. } => *data_type,
        _ => return Err(Errno::EOPNOTSUPP),
    };
    // "if (user_data && (user_data->type != IOMMU_HWPT_DATA_SELFTEST &&
    //      user_data->type != IOMMU_HWPT_DATA_NONE)) return ERR_PTR(-EOPNOTSUPP);"
    if ty != HWPT_DATA_SELFTEST && ty != HWPT_DATA_NONE {
        return Err(Errno::EOPNOTSUPP);
    }
    copy_struct(
        data,
        HWPT_DATA_SELFTEST,
        HWPT_SELFTEST_MIN,
        HWPT_SELFTEST_LEN,
    )
    .map(drop)
}

/// selftest.c, `mock_domain_alloc_nested` / `mock_viommu_alloc_domain_nested`
/// -> `__mock_domain_alloc_nested` (the core has checked the parent).
pub(super) fn alloc_nested(flags: HwptFlags, data: &HwptData) -> Result<(), Errno> {
    // "if (flags & ~IOMMU_HWPT_ALLOC_PASID) return ERR_PTR(-EOPNOTSUPP);"
    if !(flags - HwptFlags::PASID).is_empty() {
        return Err(Errno::EOPNOTSUPP);
    }
    // "if (user_data->type != IOMMU_HWPT_DATA_SELFTEST) return ERR_PTR(-EOPNOTSUPP);"
    let ty = match data {
        HwptData::Raw { data_type, .. } => *data_type,
        _ => return Err(Errno::EOPNOTSUPP),
    };
    if ty != HWPT_DATA_SELFTEST {
        return Err(Errno::EOPNOTSUPP);
    }
    copy_struct(
        data,
        HWPT_DATA_SELFTEST,
        HWPT_SELFTEST_MIN,
        HWPT_SELFTEST_LEN,
    )
    .map(drop)
}

/// selftest.c, `mock_get_viommu_size`: only the selftest type.
pub(super) fn viommu_supported(kind: ViommuType) -> Result<(), Errno> {
    if kind == ViommuType::Other(VIOMMU_TYPE_SELFTEST) {
        Ok(())
    } else {
        Err(Errno::EOPNOTSUPP)
    }
}

fn ne_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_ne_bytes(a)
}

/// `(data_type, entry_len, bytes)` of a batch; the typed VT-d and SMMUv3
/// batches are other data types, which the mock refuses.
fn raw(batch: &InvalidationBatch) -> Option<(u32, usize, &[u8])> {
    match batch {
        InvalidationBatch::Raw {
            data_type,
            entry_len,
            bytes,
        } => Some((*data_type, *entry_len as usize, bytes)),
        _ => None,
    }
}

/// selftest.c, `mock_domain_cache_invalidate_user` (nested HWPT): each
/// entry through `iommu_copy_struct_from_user_array` (its length must be
/// exactly 8: the structure has one version), then a flags check
/// (EOPNOTSUPP) and an IOTLB index check (EINVAL); stops at the first bad
/// entry, reporting those handled before it.
pub(super) fn hwpt_invalidate(batch: &InvalidationBatch) -> Handled {
    let Some((ty, len, bytes)) = raw(batch) else {
        return (0, Err(Errno::EINVAL));
    };
    // "if (array->type != IOMMU_HWPT_INVALIDATE_DATA_SELFTEST) { rc = -EINVAL; goto out; }"
    if ty != HWPT_INVALIDATE_DATA_SELFTEST {
        return (0, Err(Errno::EINVAL));
    }
    let n = batch.len();
    for i in 0..n {
        if len != HWPT_INV_LEN {
            return (i as u32, Err(Errno::EINVAL));
        }
        let e = bytes.get(i * len..(i + 1) * len).unwrap_or_default();
        let (flags, iotlb_id) = (ne_u32(e, 0), ne_u32(e, 4));
        // "if (inv.flags & ~IOMMU_TEST_INVALIDATE_FLAG_ALL) { rc = -EOPNOTSUPP; break; }"
        if flags & !INVALIDATE_FLAG_ALL != 0 {
            return (i as u32, Err(Errno::EOPNOTSUPP));
        }
        // "if (inv.iotlb_id > MOCK_NESTED_DOMAIN_IOTLB_ID_MAX) { rc = -EINVAL; break; }"
        if iotlb_id > NESTED_IOTLB_ID_MAX {
            return (i as u32, Err(Errno::EINVAL));
        }
    }
    (n as u32, Ok(()))
}

/// selftest.c, `mock_viommu_cache_invalidate`: a zero-length array of the
/// right type validates the type; otherwise the whole array is copied
/// (`iommu_copy_struct_from_full_user_array`: EINVAL for another type,
/// shorter entries zero-extended, longer ones must end in zeros, E2BIG),
/// then each entry is checked: flags (EOPNOTSUPP), cache index (EINVAL),
/// a vDEVICE of that virtual ID (EINVAL).
pub(super) fn viommu_invalidate(
    batch: &InvalidationBatch,
    vdev_known: impl Fn(u64) -> bool,
) -> Handled {
    let Some((ty, len, bytes)) = raw(batch) else {
        return (0, Err(Errno::EINVAL));
    };
    let n = batch.len();
    if n == 0 && ty == VIOMMU_INVALIDATE_DATA_SELFTEST {
        return (0, Ok(()));
    }
    if ty != VIOMMU_INVALIDATE_DATA_SELFTEST || n == 0 {
        return (0, Err(Errno::EINVAL));
    }
    let mut cmds = Vec::with_capacity(n);
    for i in 0..n {
        let e = bytes.get(i * len..(i + 1) * len).unwrap_or_default();
        if e.len() > VIOMMU_INV_LEN && e[VIOMMU_INV_LEN..].iter().any(|b| *b != 0) {
            return (0, Err(Errno(libc::E2BIG)));
        }
        let mut c = [0u8; VIOMMU_INV_LEN];
        let k = e.len().min(VIOMMU_INV_LEN);
        c[..k].copy_from_slice(&e[..k]);
        cmds.push(c);
    }
    for (i, c) in cmds.iter().enumerate() {
        let (flags, vdev_id, cache_id) = (ne_u32(c, 0), ne_u32(c, 4), ne_u32(c, 8));
        if flags & !INVALIDATE_FLAG_ALL != 0 {
            return (i as u32, Err(Errno::EOPNOTSUPP));
        }
        if cache_id > DEV_CACHE_ID_MAX {
            return (i as u32, Err(Errno::EINVAL));
        }
        // "dev = iommufd_viommu_find_dev(viommu, vdev_id); if (!dev) { rc = -EINVAL; ..."
        if !vdev_known(u64::from(vdev_id)) {
            return (i as u32, Err(Errno::EINVAL));
        }
    }
    (n as u32, Ok(()))
}
