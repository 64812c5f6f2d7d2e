//! What a virtio-iommu needs from a host to back its passthrough
//! endpoints, as nesting-core's ladder weighs it ([`GuestIommu`]): it has
//! no page-table format a physical IOMMU could walk, so it never nests;
//! every mapping is a MAP request, so it always can be shadowed where the
//! host maps its page size and its input range, whose holes PROBE
//! announces.

use nesting_core::guest::{GuestIommu, IovaSpace, MapNotice, ShadowNeeds, Stage1};
use nesting_core::host::info::HostInfo;
use nesting_core::ladder::Check;

use crate::options::VirtioIommuConfig;
use crate::protocol::ProbeResvMem;

impl GuestIommu for VirtioIommuConfig {
    fn model_name(&self) -> &'static str {
        "virtio-iommu"
    }

    /// virtio 1.3 5.13: the driver sends MAP/UNMAP requests; there is no
    /// page-table format for a physical IOMMU to walk.
    fn stage1(&self) -> Stage1 {
        Stage1::NoFormat("virtio-iommu has no page-table format a physical IOMMU could walk")
    }

    fn nest_checks(&self, _host: &HostInfo) -> Vec<Check> {
        Vec::new()
    }

    fn shadow_needs(&self) -> ShadowNeeds {
        // virtio 1.3 5.13.6.6.2: holes inside the input range are announced
        // as RESV_MEM (RESERVED) in the PROBE reply, which must fit
        // probe_size next to the VMM's own regions.
        let room = self.probe_size as usize / ProbeResvMem::SIZE;
        let max_holes = room.saturating_sub(self.resv.len());
        ShadowNeeds {
            map_notice: MapNotice::Requests,
            // virtio 1.3 5.13.4: the driver's granule is the lowest set bit
            // of page_size_mask; every guest size must be a multiple of the
            // host's.
            page_size: 1u64 << self.page_size_mask.0.trailing_zeros().min(63),
            // virtio 1.3 5.13.4: input_range bounds the addresses the
            // driver maps; the device clips it to the span the host maps.
            iova: IovaSpace::Announced {
                range: self.input_range,
                max_holes,
                room: format!(
                    "room for {max_holes} ({} bytes of RESV_MEM in probe_size {:#x}, {} region(s) of the VMM)",
                    ProbeResvMem::SIZE,
                    self.probe_size,
                    self.resv.len()
                ),
            },
        }
    }
}
