//! The operation sequences run on both hosts.

use crate::mem::Mem;
use crate::rig::Rig;
use crate::trace::Trace;

pub mod ioas;
pub mod objects;
pub mod vsmmu;
pub mod vtd;

/// A scenario: drives a host, recording into the trace.
pub type Scenario = fn(&dyn Rig, &mut Trace, &Mem);

/// Every scenario, by name.
pub const ALL: &[(&str, Scenario)] = &[
    ("ioas-map-unmap", ioas::map_unmap),
    ("ioas-map-file", ioas::map_file),
    ("ioas-copy", ioas::copy),
    ("ioas-pinning", ioas::pinning),
    ("ioas-allow-iovas", ioas::allow_iovas),
    ("ioas-edges", ioas::edges),
    ("hw-info", objects::hw_info),
    ("hwpt", objects::hwpt),
    ("viommu", objects::viommu),
    ("vsmmu", vsmmu::vsmmu),
    ("fault", objects::fault),
    ("pasid", objects::pasid),
    ("dirty", objects::dirty),
];
