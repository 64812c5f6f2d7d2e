//! Criterion benchmarks live in `benches/benches/`; this library holds what
//! several of them set up the same way.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::objects::SharedHost;
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::types::Gpa;

/// A simulated host of `profile` with 1 GiB of guest RAM at GPA 0 mapped
/// into a RAM IOAS, as the engines expect it.
pub fn sim_with_ram(profile: HostProfile) -> (Arc<SimIommufd>, SharedHost, Arc<RamIoas>) {
    let sim = Arc::new(SimIommufd::with_host(profile.spec()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(0),
        len: 1 << 30,
        backing: RamBacking::UserVa(0x7000_0000_0000),
    }])
    .expect("one region is a valid guest RAM description");
    let ram = Arc::new(RamIoas::new(&host, ram).expect("the simulated host maps guest RAM"));
    (sim, host, ram)
}
