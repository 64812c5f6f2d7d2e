//! Regression tests for defects found in review: each test is named after
//! what it checks. Passthrough ones use a recording fake host that can be
//! told to fail, or the shadow engine on the simulated host.

use nesting_core::types::Access;

use crate::mock::MockDriver;
use crate::protocol::Status;
use crate::translate::Translation;

const RW: u32 = 3;

#[test]
fn translate_full_space_mapping_at_iova_0_saturates_len() {
    // Linux's identity domain without BYPASS_CONFIG: MAP [0, u64::MAX].
    let mut d = MockDriver::new(&[]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0, u64::MAX, 0, RW), Status::Ok);
    let t = d.dev.translate(8, 0, Access::READ);
    assert_eq!(
        t,
        Translation::Mapped {
            gpa: 0,
            len: u64::MAX
        }
    );
    let t = d.dev.translate(8, u64::MAX, Access::READ);
    assert_eq!(
        t,
        Translation::Mapped {
            gpa: u64::MAX,
            len: 1
        }
    );
}

#[test]
fn translate_msi_region_covering_whole_space_saturates_len() {
    let mut d = MockDriver::new(&["resv=0x0-0xffffffffffffffff:msi"]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    let t = d.dev.translate(8, 0, Access::WRITE);
    assert_eq!(
        t,
        Translation::Mapped {
            gpa: 0,
            len: u64::MAX
        }
    );
}

#[test]
fn translate_walk_with_checked_add_ends_at_top_of_space() {
    // What a consumer walking a buffer does with a saturated length: it
    // reaches the top in a bounded number of steps.
    let mut d = MockDriver::new(&[]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0, u64::MAX, 0, RW), Status::Ok);
    let mut iova = Some(0u64);
    let mut steps = 0;
    while let Some(at) = iova {
        let Translation::Mapped { len, .. } = d.dev.translate(8, at, Access::READ) else {
            panic!("fault at {at:#x}");
        };
        assert!(len >= 1);
        iova = at.checked_add(len);
        steps += 1;
        assert!(steps <= 2, "walk does not terminate");
    }
}
