//! Regression tests for defects found in review: each test is named after
//! what it checks. Passthrough ones run on the simulated host, told to
//! fail where a test needs it.

use iommufd_sim::profile::HostProfile;
use nesting_core::host::{Errno, HostOp};
use nesting_core::mem::GuestMemoryExt;
use nesting_core::passthrough::Place;
use nesting_core::types::{Access, Gpa, Iova, IovaRange};

use crate::MAX_CHAIN_SEGMENTS;
use crate::config::{ConfigError, DeviceConfig, DeviceOptions};
use crate::device::DeviceError;
use crate::mock::{MockDriver, config};
use crate::protocol::{AttachBody, RESV_MEM_T_RESERVED, Status};
use crate::request::{Request, encode};
use crate::shadow_tests::{Rig, RigSpec, rig_of, rig_with};
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

// ---------------------------------------------------------------------------
// Passthrough endpoints moved while the host fails.

fn passthrough(opts: &[&str]) -> Rig {
    rig_with(HostProfile::VtdNonest.spec(), opts).unwrap()
}

fn read_bypass(d: &MockDriver) -> u8 {
    let mut b = [0u8; 1];
    d.dev.read_config(BYPASS_OFFSET, &mut b);
    b[0]
}

/// Offset of `bypass` in struct virtio_iommu_config (5.13.4).
const BYPASS_OFFSET: u64 = 36;

#[test]
fn reset_with_failing_block_empties_domain_space_and_reattach_rebuilds_it() {
    let mut r = passthrough(&[]);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.drv.map(1, 0x10000, 0x10fff, 0x20000, RW), Status::Ok);
    r.sim.fail_nth(HostOp::Detach, 1, Errno::EIO);
    r.drv.dev.reset();
    let stuck = r.ioas().expect("block failed: still attached");
    assert_eq!(r.space_maps(1), None, "the device gave the space up");
    assert!(r.sim.mappings(stuck).is_empty(), "emptied");
    // The driver comes back and reuses domain 1 without mapping anything.
    r.drv = MockDriver::with_memory(r.drv.dev.clone(), r.drv.mem.clone(), true);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.place(8), Place::Shadow(1));
    assert_eq!(r.space_maps(1), Some(vec![]), "no stale mapping");
    assert_eq!(r.host_at(0x10000), None);
}

#[test]
fn bypass_write_with_failing_block_keeps_bypass_and_identity_space() {
    let mut r = passthrough(&["bypass=1"]);
    assert_eq!(read_bypass(&r.drv), 1);
    assert_eq!(r.place(8), Place::Identity);
    r.sim.fail_nth(HostOp::Detach, 1, Errno::EIO);
    r.drv.dev.write_config(BYPASS_OFFSET, &[0]);
    assert_eq!(read_bypass(&r.drv), 1, "the write did not take effect");
    assert_eq!(r.place(8), Place::Identity);
    assert_eq!(r.ioas(), Some(r.ram_ioas));
    // ATTACH and DETACH move it from and back to identity.
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.place(8), Place::Shadow(1));
    assert_eq!(r.drv.detach(1, 8), Status::Ok);
    assert_eq!(r.place(8), Place::Identity);
    assert_eq!(r.space_maps(1), None, "no space left behind");
    // A later write that the host accepts takes effect.
    r.drv.dev.write_config(BYPASS_OFFSET, &[0]);
    assert_eq!(read_bypass(&r.drv), 0);
    assert_eq!(r.place(8), Place::Blocked);
    assert_eq!(r.ioas(), None, "blocked");
}

#[test]
fn ack_features_refused_when_host_cannot_move_endpoint_to_bypass() {
    // Legacy F_BYPASS: negotiating it puts unattached endpoints in bypass.
    let r = rig_of(RigSpec {
        device: DeviceOptions {
            legacy_bypass: true,
            ..DeviceOptions::default()
        },
        negotiate: false,
        ..RigSpec::default()
    })
    .unwrap();
    let dev = &r.drv.dev;
    r.sim.fail_nth(HostOp::Attach, 1, Errno::EIO);
    assert!(dev.ack_features(dev.device_features()).is_err());
    assert_eq!(r.place(8), Place::Blocked, "still blocked");
    assert_eq!(r.ioas(), None);
    dev.ack_features(dev.device_features()).unwrap();
    assert_eq!(r.place(8), Place::Identity);
    assert_eq!(r.ioas(), Some(r.ram_ioas));
}

#[test]
fn restore_with_failing_host_returns_err() {
    let mut a = passthrough(&[]);
    assert_eq!(a.drv.attach(1, 8), Status::Ok);
    assert_eq!(a.drv.map(1, 0x10000, 0x10fff, 0x20000, RW), Status::Ok);
    let snap = a.drv.dev.snapshot();
    let b = passthrough(&[]);
    b.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    let res = b.drv.dev.restore(&snap);
    assert!(
        matches!(
            res,
            Err(nesting_core::snapshot::SnapshotError::Passthrough { endpoint: 8, .. })
        ),
        "{res:?}"
    );
    assert_eq!(b.space_maps(1), None, "nothing built");
    // Without the failure it rebuilds the domain's host space.
    b.drv.dev.restore(&snap).unwrap();
    assert_eq!(b.place(8), Place::Shadow(1));
    assert_eq!(b.space_maps(1), Some(vec![(0x10000, 0x1000, 0x20000)]));
}

// ---------------------------------------------------------------------------
// Host IOVA holes in PROBE.

/// The RESV_MEM properties of a PROBE answer, as `(start, end, subtype)`.
fn resv_props(props: &[u8]) -> Vec<(u64, u64, u8)> {
    props
        .chunks_exact(24)
        .take_while(|c| c[0] == 1)
        .map(|c| {
            let q = |at: usize| u64::from_le_bytes(c[at..at + 8].try_into().unwrap());
            (q(8), q(16), c[4])
        })
        .collect()
}

#[test]
fn probe_host_hole_partly_under_vmm_region_announces_the_rest() {
    // The VtdNonest host's hole is the MSI window 0xfee00000-0xfeefffff.
    let mut r = passthrough(&["resv=0xfed00000-0xfee0ffff:reserved"]);
    let d = &mut r.drv;
    let (_, st, props) = d.probe(8, 0x200);
    assert_eq!(st, Status::Ok);
    assert_eq!(
        resv_props(&props),
        vec![
            (0xfed0_0000, 0xfee0_ffff, RESV_MEM_T_RESERVED),
            (0xfee1_0000, 0xfeef_ffff, RESV_MEM_T_RESERVED),
        ]
    );
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(
        d.map(1, 0xfee1_0000, 0xfee1_0fff, 0x20000, RW),
        Status::Range
    );
}

fn vmm_config(opts: &[&str]) -> DeviceConfig {
    DeviceConfig::new(&config(opts), DeviceOptions::default()).unwrap()
}

fn holes(list: &[(u64, u64)]) -> Vec<IovaRange> {
    list.iter()
        .map(|&(first, last)| IovaRange {
            first: Iova(first),
            last: Iova(last),
        })
        .collect()
}

#[test]
fn host_pieces_merge_holes_and_subtract_vmm_regions() {
    let c = vmm_config(&["resv=0x3000-0x3fff:msi", "resv=0x6000-0x6fff:reserved"]);
    let h = holes(&[
        (0x5000, 0x8fff),
        (0x1000, 0x2fff),
        (0x2000, 0x4fff), // overlaps the first, touches the next
        (0xffff_ffff_ffff_f000, u64::MAX),
    ]);
    let got: Vec<(u64, u64)> = c.host_pieces(&h).iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(
        got,
        vec![
            (0x1000, 0x2fff),
            (0x4000, 0x5fff),
            (0x7000, 0x8fff),
            (0xffff_ffff_ffff_f000, u64::MAX),
        ]
    );
    // A VMM region at the top of the space swallows the hole's end.
    let c = vmm_config(&["resv=0xffff_ffff_ffff_0000-0xffffffffffffffff:reserved"]);
    let h = holes(&[(0xffff_ffff_fffe_0000, u64::MAX)]);
    let got: Vec<(u64, u64)> = c.host_pieces(&h).iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(got, vec![(0xffff_ffff_fffe_0000, 0xffff_ffff_fffe_ffff)]);
}

#[test]
fn probe_room_counts_host_pieces_against_probe_size() {
    // Two properties fit; a VMM region inside one hole makes three.
    let c = vmm_config(&["probe_size=48", "resv=0x3000-0x3fff:reserved"]);
    let pieces = c.host_pieces(&holes(&[(0x1000, 0x8fff)]));
    assert!(matches!(
        c.check_probe_room(pieces.len()),
        Err(ConfigError::ProbeTooSmall { regions: 3, .. })
    ));
}

#[test]
fn passthrough_endpoint_whose_probe_cannot_hold_its_holes_is_refused() {
    // The host's one hole (0xfee00000-0xfeefffff) is within the ladder's
    // room, but the VMM's region inside it splits it in two pieces.
    let e = rig_with(
        HostProfile::VtdNonest.spec(),
        &["probe_size=48", "resv=0xfee80000-0xfee8ffff:reserved"],
    )
    .err()
    .unwrap();
    let DeviceError::Refused(d) = e else {
        panic!("{e}");
    };
    assert!(d.has_failed("device-config"), "{d}");
    assert!(d.reason.contains("3 RESV_MEM properties"), "{}", d.reason);
}

// ---------------------------------------------------------------------------
// Descriptor chains.

/// An ATTACH of endpoint 8 to domain 1 split into one-byte readable
/// buffers and `writable` one-byte writable ones; returns the used length.
fn attach_in_segments(d: &mut MockDriver, writable: usize) -> u32 {
    const REQ: u64 = 0xc_0000;
    const TAIL: u64 = 0xd_0000;
    let req = encode(&Request::Attach(AttachBody {
        domain: 1.into(),
        endpoint: 8.into(),
        reserved: [0; 4],
        flags: 0.into(),
    }));
    d.mem.write_bytes_at(Gpa(REQ), &req).unwrap();
    let out: Vec<(u64, u32)> = (0..req.len() as u64).map(|i| (REQ + i, 1)).collect();
    let inp: Vec<(u64, u32)> = (0..writable as u64).map(|i| (TAIL + i, 1)).collect();
    d.send_chain(&out, &inp)
}

#[test]
fn chain_at_segment_cap_is_answered() {
    let mut d = MockDriver::new(&[]);
    // 20 readable + 12 writable buffers.
    assert_eq!(attach_in_segments(&mut d, MAX_CHAIN_SEGMENTS - 20), 4);
    assert_eq!(d.detach(1, 8), Status::Ok, "the ATTACH was executed");
}

#[test]
fn chain_over_segment_cap_is_returned_with_used_length_zero() {
    let mut d = MockDriver::new(&[]);
    assert_eq!(attach_in_segments(&mut d, MAX_CHAIN_SEGMENTS - 19), 0);
    assert_eq!(d.detach(1, 8), Status::Inval, "the ATTACH was not executed");
}

// ---------------------------------------------------------------------------
// Spec details (virtio 1.3 5.13.6.3.2, 5.13.6.9).

#[test]
fn reserved_region_access_is_reported_as_r_mapping() {
    use crate::protocol::FaultReason;
    let mut d = MockDriver::new(&[
        "resv=0x1_0000-0x1_ffff:reserved",
        "resv=0xfee00000-0xfeefffff:msi",
    ]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    for (iova, access) in [(0x1_0000, Access::WRITE), (0xfee0_0000, Access::READ)] {
        assert_eq!(
            d.dev.translate(8, iova, access),
            Translation::Fault(FaultReason::Mapping)
        );
    }
    let reasons: Vec<u8> = d.events().iter().map(|e| e.reason).collect();
    assert_eq!(reasons, vec![2, 2], "VIRTIO_IOMMU_FAULT_R_MAPPING");
}

#[test]
fn attach_unknown_endpoint_is_noent_even_with_domain_out_of_range() {
    let mut d = MockDriver::new(&["domain_range=0-15", "endpoints=8,16"]);
    assert_eq!(d.attach(16, 0x7777), Status::NoEnt);
    assert_eq!(d.attach(16, 8), Status::Range);
}

#[test]
fn fault_for_instruction_fetch_sets_read_not_linux_exec_flag() {
    use crate::protocol::FaultFlags;
    let mut d = MockDriver::new(&[]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    let _ = d.dev.translate(8, 0x5000, Access::EXEC);
    let ev = d.events();
    assert_eq!(
        ev[0].flags.get(),
        (FaultFlags::READ | FaultFlags::ADDRESS).bits()
    );
}
