//! The object sequence of an SMMUv3 passthrough backend (smmuv3's
//! `passthrough` over nesting-core's nested engine), run against the
//! kernel with the selftest types: the mock driver implements vIOMMU,
//! vDEVICE, vEVENTQ and HWPT_INVALIDATE for its own data types, not
//! `IOMMU_VIOMMU_TYPE_ARM_SMMUV3`, so what runs here is iommufd's core
//! rules the backend relies on, not the arm-smmu-v3 driver's.

use nesting_core::host::{
    HwptData, HwptFlags, InvalidateTarget, InvalidationBatch, ObjectId, PtId, VeventqType,
    ViommuType,
};

use super::objects::{alloc, inv, selftest_data};
use crate::mem::Mem;
use crate::rig::Rig;
use crate::testcmd as tc;
use crate::trace::Trace;

/// The backend's vEVENTQ depth (smmuv3::passthrough::VEVENTQ_DEPTH): the
/// kernel's `VEVENTQ_MAX_DEPTH`.
const VEVENTQ_DEPTH: u32 = 1 << 19;

/// Two vSMMU instances over one NEST_PARENT (each its own vIOMMU and
/// vDEVICE with the same virtual StreamID), nested HWPTs made ahead and
/// replaced before the old one is destroyed, a 64-entry invalidation in
/// one call, the vEVENTQ depth, and the shared parent outliving one
/// instance.
pub fn vsmmu(r: &dyn Rig, t: &mut Trace, _m: &Mem) {
    let h = r.host();
    let Ok(ioas) = t.id("ioas_alloc", h.ioas_alloc()) else {
        return;
    };
    let (Ok(d1), Ok(d2)) = (
        t.id("mock_device 1", r.add_device(PtId::Ioas(ioas), false)),
        t.id("mock_device 2", r.add_device(PtId::Ioas(ioas), false)),
    ) else {
        return;
    };
    let io = (d1.dev, PtId::Ioas(ioas));
    let nest = HwptFlags::NEST_PARENT;
    let Ok(parent) = alloc(t, h, "shared nest parent", io, nest, HwptData::None) else {
        return;
    };
    let st = ViommuType::Other(tc::VIOMMU_TYPE_SELFTEST);
    let (Ok(v1), Ok(v2)) = (
        t.id("viommu instance 1", h.viommu_alloc(d1.dev, parent, st)),
        t.id(
            "viommu instance 2, same parent",
            h.viommu_alloc(d2.dev, parent, st),
        ),
    ) else {
        return;
    };
    let qt = VeventqType::Other(tc::VEVENTQ_TYPE_SELFTEST);
    let q1 = t.id("veventq max depth", h.veventq_alloc(v1, qt, VEVENTQ_DEPTH));
    t.id(
        "veventq beyond max depth",
        h.veventq_alloc(v2, qt, VEVENTQ_DEPTH + 1),
    )
    .ok();
    let data = selftest_data(tc::IOTLB_DEFAULT);
    let on_v1 = (d1.dev, PtId::Viommu(v1));
    let on_v2 = (d2.dev, PtId::Viommu(v2));
    let e = HwptFlags::empty();
    let (Ok(a), Ok(b)) = (
        alloc(t, h, "nested made ahead A", on_v1, e, data.clone()),
        alloc(t, h, "nested made ahead B", on_v1, e, data.clone()),
    ) else {
        return;
    };
    let Ok(n2) = alloc(t, h, "nested on instance 2", on_v2, e, data) else {
        return;
    };
    t.id(
        "instance 2: attach before vdevice",
        r.attach(d2, None, PtId::Hwpt(n2)),
    )
    .ok();
    let vd1 = t.id(
        "vdevice 0x10 on instance 1",
        h.vdevice_alloc(v1, d1.dev, 0x10),
    );
    let vd2 = t.id(
        "vdevice 0x10 on instance 2",
        h.vdevice_alloc(v2, d2.dev, 0x10),
    );
    t.id(
        "instance 2: attach after vdevice",
        r.attach(d2, None, PtId::Hwpt(n2)),
    )
    .ok();
    t.id("attach A", r.attach(d1, None, PtId::Hwpt(a))).ok();
    t.id("replace A with B", r.attach(d1, None, PtId::Hwpt(b)))
        .ok();
    t.id("destroy A after the replace", h.destroy(ObjectId::Hwpt(a)))
        .ok();
    t.id("destroy B while attached", h.destroy(ObjectId::Hwpt(b)))
        .ok();
    // struct iommu_viommu_invalidate_selftest { flags, vdev_id, cache_id }.
    let bytes: Vec<u8> = (0..64u32)
        .flat_map(|i| [0u32, 0x10, i % 4])
        .flat_map(u32::to_ne_bytes)
        .collect();
    let batch = InvalidationBatch::Raw {
        data_type: tc::INVALIDATE_DATA_SELFTEST,
        entry_len: 12,
        bytes,
    };
    inv(
        t,
        "64 entries in one call",
        h,
        InvalidateTarget::Viommu(v1),
        &batch,
    );
    // Instance 1 goes (hot-unplug of its last device): the parent stays
    // while instance 2 uses it.
    t.id(
        "instance 1 back to ioas",
        r.attach(d1, None, PtId::Ioas(ioas)),
    )
    .ok();
    let mut gone = vec![("destroy B", ObjectId::Hwpt(b))];
    if let Ok(v) = vd1 {
        gone.push(("destroy vdevice 1", ObjectId::Vdevice(v)));
    }
    if let Ok(q) = q1 {
        gone.push(("destroy veventq 1", ObjectId::Veventq(q)));
    }
    gone.push(("destroy viommu 1", ObjectId::Viommu(v1)));
    gone.push(("destroy shared parent in use", ObjectId::Hwpt(parent)));
    for (label, id) in gone {
        t.id(label, h.destroy(id)).ok();
    }
    t.id(
        "instance 2 back to ioas",
        r.attach(d2, None, PtId::Ioas(ioas)),
    )
    .ok();
    let mut rest = vec![("destroy nested 2", ObjectId::Hwpt(n2))];
    if let Ok(v) = vd2 {
        rest.push(("destroy vdevice 2", ObjectId::Vdevice(v)));
    }
    rest.push(("destroy viommu 2", ObjectId::Viommu(v2)));
    rest.push(("destroy shared parent", ObjectId::Hwpt(parent)));
    for (label, id) in rest {
        t.id(label, h.destroy(id)).ok();
    }
    t.expect("viommu instance 2, same parent", Ok(""));
    t.expect("veventq max depth", Ok(""));
    t.expect("veventq beyond max depth", Err(libc::EINVAL));
    t.expect("vdevice 0x10 on instance 2", Ok(""));
    t.expect("replace A with B", Ok(""));
    t.expect("destroy A after the replace", Ok(""));
    t.expect("destroy B while attached", Err(libc::EBUSY));
    t.expect("64 entries in one call", Ok("handled 64 ok"));
    t.expect("destroy shared parent in use", Err(libc::EBUSY));
    t.expect("destroy shared parent", Ok(""));
}
