//! Regression tests for defects found in review: each test is named after
//! what it checks. Passthrough ones use a recording fake host that can be
//! told to fail, or the shadow engine on the simulated host.

use std::sync::Arc;

use iommufd_sim::profile::HostProfile;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Gpa};

use crate::MAX_CHAIN_SEGMENTS;
use crate::config::{ConfigError, DeviceConfig, DeviceOptions, ResvMem};
use crate::device::{DeviceError, VirtioIommu};
use crate::mock::{MockDriver, config};
use crate::nesting::{HostFailure, SpaceId};
use crate::protocol::{AttachBody, RESV_MEM_T_RESERVED, Status};
use crate::request::{Request, encode};
use crate::tests::FakeHost;
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

fn passthrough(opts: &[&str]) -> (MockDriver, FakeHost) {
    let dev = Arc::new(VirtioIommu::new(&config(opts), DeviceOptions::default()).unwrap());
    let host = FakeHost::default();
    dev.set_passthrough_host(Box::new(host.clone())).unwrap();
    let view = HostProfile::VtdNonest.spec().host_view();
    dev.add_passthrough(8, &view).unwrap();
    (MockDriver::with_device(dev, true), host)
}

fn fail_next(host: &FakeHost) {
    host.0.lock().unwrap().fail_next = Some(HostFailure::Device);
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
    let (mut d, host) = passthrough(&[]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x20000, RW), Status::Ok);
    fail_next(&host);
    d.dev.reset();
    {
        let l = host.0.lock().unwrap();
        assert_eq!(l.attached[&8], Some(SpaceId::Domain(1)), "block failed");
        assert!(
            !l.spaces.contains_key(&SpaceId::Domain(1)),
            "the device gave the space up"
        );
    }
    // The driver comes back and reuses domain 1 without mapping anything.
    let mut d2 = MockDriver::with_device(d.dev.clone(), true);
    assert_eq!(d2.attach(1, 8), Status::Ok);
    let l = host.0.lock().unwrap();
    assert_eq!(l.attached[&8], Some(SpaceId::Domain(1)));
    assert_eq!(l.spaces[&SpaceId::Domain(1)], vec![], "no stale mapping");
}

#[test]
fn bypass_write_with_failing_block_keeps_bypass_and_identity_space() {
    let (mut d, host) = passthrough(&["bypass=1"]);
    assert_eq!(read_bypass(&d), 1);
    fail_next(&host);
    d.dev.write_config(BYPASS_OFFSET, &[0]);
    assert_eq!(read_bypass(&d), 1, "the write did not take effect");
    assert_eq!(host.0.lock().unwrap().attached[&8], Some(SpaceId::Identity));
    // ATTACH and DETACH move it through the identity space it is in; no
    // leak of the identity space when it leaves it.
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert!(
        !host
            .0
            .lock()
            .unwrap()
            .spaces
            .contains_key(&SpaceId::Identity)
    );
    assert_eq!(d.detach(1, 8), Status::Ok);
    assert_eq!(host.0.lock().unwrap().attached[&8], Some(SpaceId::Identity));
    // A later write that the host accepts takes effect.
    d.dev.write_config(BYPASS_OFFSET, &[0]);
    assert_eq!(read_bypass(&d), 0);
    let l = host.0.lock().unwrap();
    assert_eq!(l.attached[&8], None, "blocked");
    assert!(!l.spaces.contains_key(&SpaceId::Identity), "space released");
}

#[test]
fn ack_features_refused_when_host_cannot_move_endpoint_to_bypass() {
    // Legacy F_BYPASS: negotiating it puts unattached endpoints in bypass.
    let legacy = DeviceOptions {
        legacy_bypass: true,
        ..DeviceOptions::default()
    };
    let dev: Arc<VirtioIommu<vm_memory::GuestMemoryMmap>> =
        Arc::new(VirtioIommu::new(&config(&[]), legacy).unwrap());
    let host = FakeHost::default();
    dev.set_passthrough_host(Box::new(host.clone())).unwrap();
    let view = HostProfile::VtdNonest.spec().host_view();
    dev.add_passthrough(8, &view).unwrap();
    fail_next(&host);
    assert!(dev.ack_features(dev.device_features()).is_err());
    assert_eq!(host.0.lock().unwrap().attached[&8], None, "still blocked");
    dev.ack_features(dev.device_features()).unwrap();
    assert_eq!(host.0.lock().unwrap().attached[&8], Some(SpaceId::Identity));
}

#[test]
fn restore_with_failing_host_returns_err() {
    let (mut d, _) = passthrough(&[]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x10000, 0x10fff, 0x20000, RW), Status::Ok);
    let snap = d.dev.snapshot();
    let (d2, host2) = passthrough(&[]);
    fail_next(&host2);
    assert!(matches!(
        d2.dev.restore(&snap),
        Err(DeviceError::Passthrough { endpoint: 8, .. })
    ));
    // Without the failure it rebuilds the domain's host space.
    d2.dev.restore(&snap).unwrap();
    let l = host2.0.lock().unwrap();
    assert_eq!(l.attached[&8], Some(SpaceId::Domain(1)));
    assert_eq!(
        l.spaces[&SpaceId::Domain(1)],
        vec![(0x10000, 0x1000, 0x20000)]
    );
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
    let (mut d, _) = passthrough(&["resv=0xfed00000-0xfee0ffff:reserved"]);
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

fn with_holes(opts: &[&str], holes: &[(u64, u64)]) -> DeviceConfig {
    let mut c = DeviceConfig::new(&config(opts), DeviceOptions::default()).unwrap();
    c.host_resv = holes
        .iter()
        .map(|&(start, end)| ResvMem {
            start,
            end,
            subtype: RESV_MEM_T_RESERVED,
        })
        .collect();
    c
}

#[test]
fn host_pieces_merge_holes_and_subtract_vmm_regions() {
    let c = with_holes(
        &["resv=0x3000-0x3fff:msi", "resv=0x6000-0x6fff:reserved"],
        &[
            (0x5000, 0x8fff),
            (0x1000, 0x2fff),
            (0x2000, 0x4fff), // overlaps the first, touches the next
            (0xffff_ffff_ffff_f000, u64::MAX),
        ],
    );
    let got: Vec<(u64, u64)> = c.host_pieces().iter().map(|r| (r.start, r.end)).collect();
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
    let c = with_holes(
        &["resv=0xffff_ffff_ffff_0000-0xffffffffffffffff:reserved"],
        &[(0xffff_ffff_fffe_0000, u64::MAX)],
    );
    let got: Vec<(u64, u64)> = c.host_pieces().iter().map(|r| (r.start, r.end)).collect();
    assert_eq!(got, vec![(0xffff_ffff_fffe_0000, 0xffff_ffff_fffe_ffff)]);
}

#[test]
fn validate_counts_host_pieces_against_probe_size() {
    // Two properties fit; a VMM region inside one hole makes three.
    let c = with_holes(
        &["probe_size=48", "resv=0x3000-0x3fff:reserved"],
        &[(0x1000, 0x8fff)],
    );
    assert!(matches!(
        c.validate(0),
        Err(ConfigError::ProbeTooSmall { regions: 3, .. })
    ));
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
