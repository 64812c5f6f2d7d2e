//! The RAM IOAS on the simulated host.

use std::sync::Arc;

use iommufd_sim::profile::HostProfile;
use iommufd_sim::{SimBacking, SimIommufd};
use nesting_core::host::objects::SharedHost;
use nesting_core::host::{Errno, HostOp};
use nesting_core::ram::{GuestRam, RamBacking, RamError, RamIoas, RamRegion};
use nesting_core::types::{Access, Gpa, Iova};

fn region(gpa: u64, len: u64, va: u64) -> RamRegion {
    RamRegion {
        gpa: Gpa(gpa),
        len,
        backing: RamBacking::UserVa(va),
    }
}

#[test]
fn ram_ioas_maps_every_region_at_gpa() {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![
        region(0, 0x10_0000, 0x7000_0000_0000),
        region(0x1_0000_0000, 0x2000, 0x7100_0000_0000),
    ])
    .unwrap();
    let r = RamIoas::new(&host, ram).unwrap();
    let (b, acc) = sim.translate(r.ioas().id(), Iova(0x1_0000_1000)).unwrap();
    assert_eq!(b, SimBacking::UserVa(0x7100_0000_1000));
    assert_eq!(acc, Access::RW);
}

#[test]
fn ram_ioas_host_failure_names_region_and_leaves_nothing() {
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    sim.fail_nth(HostOp::IoasMap, 2, Errno::ENOMEM);
    let ram = GuestRam::new(vec![
        region(0, 0x1000, 0x7000_0000_0000),
        region(0x10_0000, 0x1000, 0x7100_0000_0000),
    ])
    .unwrap();
    let e = RamIoas::new(&host, ram).unwrap_err();
    assert!(matches!(e, RamError::Host { gpa: 0x10_0000, .. }), "{e:?}");
    // The IOAS was destroyed on the way out.
    assert_eq!(sim.calls(HostOp::Destroy), 1);
}
