//! What the examples share: the sequence a VMM runs to learn what the host
//! says of a passthrough device before the ladder decides.
//!
//! The examples (`cargo run --example NAME` from the workspace root):
//!
//! - `vtd`: a VT-d unit in scalable mode;
//! - `smmuv3`: an SMMUv3 with its IORT and device-tree node;
//! - `virtio_iommu`: a virtio-iommu driven through its virtqueues.
//!
//! Each creates the model, forwards the guest driver's MMIO or virtqueue
//! notifications, gives an emulated device IOMMU-translated memory through
//! vm-memory's `IommuMemory`, attaches a passthrough device through the
//! ladder (and shows one refused), delivers interrupts, prints the model's
//! stats and snapshots and restores it, on the simulated host.

use nesting_core::host::PtId;
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::ladder::HostView;

/// What the host says of `dev`: its IOMMU's hardware information and, from
/// a scratch IOAS it is attached to for the question, the IOVA ranges and
/// page size an IOAS can map for it. `unit` is the host IOMMU it is behind
/// (a real VMM: `nesting_core::host::sysfs_iommu_unit`).
pub fn host_view(host: &SharedHost, dev: &mut BoundDevice, unit: Option<u32>) -> HostView {
    let ioas = Ioas::alloc(host).expect("IOAS");
    dev.attach(None, PtId::Ioas(ioas.id())).expect("attach");
    let ranges = host.ioas_iova_ranges(ioas.id()).expect("ranges");
    dev.detach(None).expect("detach");
    HostView {
        info: host.hw_info(dev.id()).expect("hw info"),
        iova_ranges: ranges.ranges,
        page_size: ranges.alignment,
        unit,
    }
}
