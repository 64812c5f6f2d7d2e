//! The decisions of the real intel-iommu driver (running on QEMU's VT-d,
//! which has no nesting and no first stage) against `SimIommufd`'s VT-d
//! model given the same `GET_HW_INFO`, through a real VFIO device.

use nesting_core::host::{
    HwptAlloc, HwptData, HwptFlags, InvalidateTarget, InvalidationBatch, IovaPlacement, MapSource,
    ObjectId, PtId, ViommuType, VtdS1Flags, VtdS1Invalidation,
};
use nesting_core::types::{Access, Iova, Pasid};

use crate::mem::Mem;
use crate::rig::Rig;
use crate::trace::Trace;

/// HWPT allocation, attach, PASID, dirty tracking, vIOMMU, invalidation
/// and mapping refusals on the real device.
pub fn vtd(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let Ok(ioas) = t.id("ioas_alloc", h.ioas_alloc()) else {
        return;
    };
    let Ok(d) = t.id("bind and attach", r.add_device(PtId::Ioas(ioas), false)) else {
        return;
    };
    t.dbg("iova_ranges", h.ioas_iova_ranges(ioas));
    let s1 = HwptData::VtdS1 {
        flags: VtdS1Flags::empty(),
        pgtbl_addr: 0x1000,
        addr_width: 48,
    };
    let io = PtId::Ioas(ioas);
    let req = |parent, flags, data| HwptAlloc {
        dev: d.dev,
        parent,
        flags,
        fault: None,
        data,
    };
    let none = HwptData::None;
    let Ok(paging) = t.id(
        "paging",
        h.hwpt_alloc(&req(io, HwptFlags::empty(), none.clone())),
    ) else {
        return;
    };
    let unknown = HwptFlags::from_bits_retain(1 << 20);
    let allocs = [
        ("nest parent", io, HwptFlags::NEST_PARENT, none.clone()),
        (
            "dirty tracking",
            io,
            HwptFlags::DIRTY_TRACKING,
            none.clone(),
        ),
        ("pasid flag", io, HwptFlags::PASID, none.clone()),
        ("unknown flag", io, unknown, none),
        (
            "paging with vtd s1 data",
            io,
            HwptFlags::empty(),
            s1.clone(),
        ),
        (
            "nested on non-parent",
            PtId::Hwpt(paging),
            HwptFlags::empty(),
            s1,
        ),
    ];
    for (label, parent, flags, data) in allocs {
        t.id(label, h.hwpt_alloc(&req(parent, flags, data))).ok();
    }
    t.id("attach paging", r.attach(d, None, PtId::Hwpt(paging)))
        .ok();
    let p1 = Pasid::new(1);
    t.id("attach pasid 1", r.attach(d, p1, PtId::Hwpt(paging)))
        .ok();
    t.dbg("dirty tracking on", h.hwpt_set_dirty_tracking(paging, true));
    t.id(
        "viommu smmuv3",
        h.viommu_alloc(d.dev, paging, ViommuType::ArmSmmuv3),
    )
    .ok();
    let batch = InvalidationBatch::VtdS1(vec![VtdS1Invalidation {
        addr: 0,
        npages: u64::MAX,
        leaf: false,
    }]);
    let o = h.hwpt_invalidate(InvalidateTarget::Hwpt(paging), &batch);
    t.rec("invalidate paging", o.result, |()| {
        format!("handled {}", o.handled)
    })
    .ok();
    t.id("destroy attached paging", h.destroy(ObjectId::Hwpt(paging)))
        .ok();
    t.id("back to ioas", r.attach(d, None, io)).ok();
    let a = MapSource::UserVa(m.a.va());
    let maps = [
        (
            "map in msi window",
            IovaPlacement::Fixed(Iova(0xfee0_0000)),
            4096,
        ),
        ("map half page", IovaPlacement::Fixed(Iova(0x10_0000)), 2048),
        ("map any", IovaPlacement::Any, m.a.len()),
    ];
    for (label, at, len) in maps {
        t.dbg(label, h.ioas_map(ioas, at, a, len, Access::RW));
    }
    t.dbg("unmap all", h.ioas_unmap(ioas, Iova(0), u64::MAX));
    t.id("destroy paging", h.destroy(ObjectId::Hwpt(paging)))
        .ok();
    t.id("destroy ioas in use", h.destroy(ObjectId::Ioas(ioas)))
        .ok();
    t.dbg("unbind", h.unbind_device(d.dev));
    t.expect("nest parent", Err(libc::EOPNOTSUPP));
    t.expect("paging", Ok(""));
}
