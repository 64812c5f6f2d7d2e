//! One test per normative statement of virtio 1.3 section 5.13 that binds
//! the device (named after its clause), golden request bytes, limits,
//! snapshots and passthrough behaviour.

use std::sync::{Arc, Mutex};

use iommufd_sim::profile::HostProfile;
use nesting_core::host::{Errno, HostOp};
use nesting_core::passthrough::Place;
use nesting_core::types::{Access, Gpa, Iova};
use zerocopy::IntoBytes;

use crate::config::DeviceOptions;
use crate::device::VirtioIommu;
use crate::mock::{MockDriver, config};
use crate::protocol::*;
use crate::request::{Decoded, Request, decode, encode};
use crate::shadow_tests::{Rig, rig_with};
use crate::translate::Translation;

const R: u32 = 1;
const W: u32 = 2;
const RW: u32 = 3;
const MMIO_F: u32 = 4;

fn drv() -> MockDriver {
    MockDriver::new(&[])
}

fn gpa(d: &MockDriver, ep: u32, iova: u64, acc: Access) -> Option<u64> {
    d.dev.translate(ep, iova, acc).gpa()
}

// ---------------------------------------------------------------------------
// Golden bytes (include/uapi/linux/virtio_iommu.h layouts).

#[test]
fn golden_map_request_bytes_match_linux_layout() {
    let req = Request::Map(MapBody {
        domain: 1.into(),
        virt_start: 0x1000.into(),
        virt_end: 0x1fff.into(),
        phys_start: 0xa000.into(),
        flags: R.into(),
    });
    let want: [u8; 36] = [
        3, 0, 0, 0, // head: VIRTIO_IOMMU_T_MAP
        1, 0, 0, 0, // domain
        0, 0x10, 0, 0, 0, 0, 0, 0, // virt_start
        0xff, 0x1f, 0, 0, 0, 0, 0, 0, // virt_end
        0, 0xa0, 0, 0, 0, 0, 0, 0, // phys_start
        1, 0, 0, 0, // flags: READ
    ];
    assert_eq!(encode(&req), want);
    assert_eq!(decode(&want), Decoded::Request(req));
}

#[test]
fn golden_sizes_match_linux_structs_minus_tail() {
    // sizeof(struct virtio_iommu_req_*) - sizeof(tail).
    assert_eq!(ReqHead::SIZE + AttachBody::SIZE, 20);
    assert_eq!(ReqHead::SIZE + DetachBody::SIZE, 20);
    assert_eq!(ReqHead::SIZE + MapBody::SIZE, 36);
    assert_eq!(ReqHead::SIZE + UnmapBody::SIZE, 28);
    assert_eq!(ReqHead::SIZE + ProbeBody::SIZE, 72);
    assert_eq!(ConfigSpace::SIZE, 40);
    assert_eq!(FaultRecord::SIZE, 24);
}

#[test]
fn golden_attach_bytes_execute_and_tail_written_at_writable_start() {
    let mut d = drv();
    let bytes = [1u8, 0, 0, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (len, back) = d.send_raw(&bytes, 4);
    assert_eq!((len, back), (4, vec![0, 0, 0, 0]));
    assert_eq!(d.dev.lock().state.tables.domain_of(8), Some(7));
}

#[test]
fn golden_fault_record_bytes() {
    let f = crate::event::Fault::new(FaultReason::Mapping, 8, 0x1234_5000, Access::WRITE);
    let want: [u8; 24] = [
        2, 0, 0, 0, // reason MAPPING, reserved
        0x02, 0x01, 0, 0, // flags WRITE | ADDRESS
        8, 0, 0, 0, // endpoint
        0, 0, 0, 0, // reserved1
        0, 0x50, 0x34, 0x12, 0, 0, 0, 0, // address
    ];
    assert_eq!(f.bytes(), want);
}

// ---------------------------------------------------------------------------
// 5.13.3.2 Device Requirements: Feature bits

#[test]
fn feature_bits_device_should_offer_map_unmap() {
    let f = Features::from_bits_retain(drv().dev.device_features());
    assert!(f.contains(Features::MAP_UNMAP | Features::VERSION_1));
    assert!(f.contains(Features::INPUT_RANGE | Features::DOMAIN_RANGE | Features::PROBE));
    assert!(f.contains(Features::MMIO | Features::BYPASS_CONFIG));
}

#[test]
fn feature_bits_new_devices_should_not_offer_bypass_nor_both() {
    let modern = Features::from_bits_retain(drv().dev.device_features());
    assert!(!modern.contains(Features::BYPASS));
    let legacy = VirtioIommu::<vm_memory::GuestMemoryMmap>::new(
        &config(&[]),
        DeviceOptions {
            legacy_bypass: true,
            ..DeviceOptions::default()
        },
    )
    .unwrap();
    let f = Features::from_bits_retain(legacy.device_features());
    assert!(f.contains(Features::BYPASS) && !f.contains(Features::BYPASS_CONFIG));
}

#[test]
fn feature_bits_legacy_bypass_accepted_when_driver_asks() {
    let dev = Arc::new(
        VirtioIommu::new(
            &config(&[]),
            DeviceOptions {
                legacy_bypass: true,
                ..DeviceOptions::default()
            },
        )
        .unwrap(),
    );
    let d = MockDriver::with_device(dev.clone(), false);
    assert_eq!(
        gpa(&d, 3, 0x5000, Access::READ),
        None,
        "not negotiated: no bypass"
    );
    dev.ack_features(dev.device_features()).unwrap();
    assert_eq!(gpa(&d, 3, 0x5000, Access::READ), Some(0x5000));
}

#[test]
fn feature_bits_set_the_spec_forbids_is_refused() {
    let d = drv();
    let offered = d.dev.device_features();
    // A bit not offered (F_BYPASS on a modern device).
    assert!(
        d.dev
            .ack_features(offered | u64::from(Features::BYPASS.bits() as u32))
            .is_err()
    );
    // No VIRTIO_F_VERSION_1: no legacy interface.
    assert!(
        d.dev
            .ack_features(offered & !Features::VERSION_1.bits())
            .is_err()
    );
    assert!(d.dev.ack_features(Features::VERSION_1.bits()).is_ok());
}

#[test]
fn feature_bits_map_unmap_not_negotiated_map_is_unsupp() {
    let dev = Arc::new(VirtioIommu::new(&config(&[]), DeviceOptions::default()).unwrap());
    dev.ack_features(Features::VERSION_1.bits()).unwrap();
    let mut d = MockDriver::with_device(dev, false);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, R), Status::Unsupp);
    assert_eq!(d.unmap(1, 0, 0xfff), Status::Unsupp);
}

// ---------------------------------------------------------------------------
// 5.13.4 Device configuration layout

#[test]
fn device_configuration_layout_device_must_set_one_page_size_bit() {
    let mut c = config(&[]);
    c.page_size_mask = nesting_core::types::PageSizes(0);
    assert!(VirtioIommu::<vm_memory::GuestMemoryMmap>::new(&c, DeviceOptions::default()).is_err());
}

#[test]
fn device_configuration_layout_fields_read_little_endian() {
    let d = MockDriver::new(&[
        "page_size_mask=0x201000",
        "input_range=0x1000-0xffff_ffff",
        "domain_range=2-100",
        "probe_size=0x100",
        "bypass=1",
    ]);
    let mut b = [0u8; 40];
    d.dev.read_config(0, &mut b);
    let want = ConfigSpace {
        page_size_mask: 0x20_1000.into(),
        input_range: Range64 {
            start: 0x1000.into(),
            end: 0xffff_ffff.into(),
        },
        domain_range: Range32 {
            start: 2.into(),
            end: 100.into(),
        },
        probe_size: 0x100.into(),
        bypass: 1,
        reserved: [0; 3],
    };
    assert_eq!(b, want.as_bytes());
    let mut tail = [0xffu8; 4];
    d.dev.read_config(38, &mut tail);
    assert_eq!(tail, [0, 0, 0, 0], "reserved and beyond read as zero");
}

#[test]
fn device_configuration_layout_driver_writes_bypass_only_with_bypass_config() {
    let dev = Arc::new(
        VirtioIommu::<vm_memory::GuestMemoryMmap>::new(&config(&[]), DeviceOptions::default())
            .unwrap(),
    );
    dev.ack_features(Features::VERSION_1.bits() | Features::MAP_UNMAP.bits())
        .unwrap();
    dev.write_config(CONFIG_BYPASS_OFFSET, &[1]);
    let mut b = [0u8];
    dev.read_config(CONFIG_BYPASS_OFFSET, &mut b);
    assert_eq!(b[0], 0, "not negotiated: write ignored");
    let d = drv();
    d.dev.write_config(0, &[0xff; 8]);
    d.dev.write_config(CONFIG_BYPASS_OFFSET, &[1]);
    d.dev.read_config(0, &mut [0u8; 8]);
    let mut m = [0u8; 8];
    d.dev.read_config(0, &mut m);
    assert_eq!(u64::from_le_bytes(m), !0xfff, "page_size_mask not writable");
    d.dev.read_config(CONFIG_BYPASS_OFFSET, &mut b);
    assert_eq!(b[0], 1);
    assert_eq!(gpa(&d, 5, 0x7000, Access::RW), Some(0x7000));
}

#[test]
fn device_configuration_layout_device_must_not_present_bypass_other_than_0_or_1() {
    let d = drv();
    d.dev.write_config(CONFIG_BYPASS_OFFSET, &[2]);
    let mut b = [9u8];
    d.dev.read_config(CONFIG_BYPASS_OFFSET, &mut b);
    assert_eq!(b[0], 0);
}

#[test]
fn device_configuration_layout_bypass_may_start_at_1_and_survives_device_reset() {
    let d = MockDriver::new(&["bypass=1"]);
    d.dev.write_config(CONFIG_BYPASS_OFFSET, &[0]);
    d.dev.reset();
    let mut b = [9u8];
    d.dev.read_config(CONFIG_BYPASS_OFFSET, &mut b);
    assert_eq!(b[0], 0, "SHOULD NOT change on device reset");
    d.dev.system_reset();
    d.dev.read_config(CONFIG_BYPASS_OFFSET, &mut b);
    assert_eq!(b[0], 1, "SHOULD be restored on system reset");
}

// ---------------------------------------------------------------------------
// 5.13.5 Device initialization

#[test]
fn device_initialization_reset_detaches_every_endpoint() {
    let mut d = drv();
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, RW), Status::Ok);
    d.dev.reset();
    assert!(d.dev.lock().state.tables.domain(1).is_none());
    assert_eq!(gpa(&d, 8, 0, Access::READ), None);
}

// ---------------------------------------------------------------------------
// 5.13.6.2 Device Requirements: Device operations

#[test]
fn device_operations_should_set_status_ok_on_success() {
    assert_eq!(drv().attach(1, 8), Status::Ok);
}

#[test]
fn device_operations_unrecognized_type_not_written_used_length_zero() {
    let mut d = drv();
    let (len, back) = d.send_raw(&[0x42, 0, 0, 0, 1, 2, 3, 4], 4);
    assert_eq!(len, 0);
    assert_eq!(back, vec![0; 4]);
}

#[test]
fn device_operations_too_small_to_find_tail_returns_buffers_unwritten() {
    let mut d = drv();
    assert_eq!(d.send_raw(&[1, 0], 4).0, 0, "no head");
    assert_eq!(d.send_raw(&[1, 0, 0, 0], 0).0, 0, "no tail");
    assert_eq!(d.send_raw(&[], 4).0, 0, "nothing readable");
}

#[test]
fn device_operations_short_request_body_is_inval() {
    let mut d = drv();
    let (len, back) = d.send_raw(&[3, 0, 0, 0, 1, 0, 0, 0], 4);
    assert_eq!((len, back[0]), (4, u8::from(Status::Inval)));
}

#[test]
fn device_operations_must_ignore_head_reserved_and_zero_tail_reserved() {
    let mut d = drv();
    let mut bytes = encode(&Request::Attach(AttachBody {
        domain: 1.into(),
        endpoint: 8.into(),
        ..AttachBody::default()
    }));
    bytes[1..4].copy_from_slice(&[0xaa, 0xbb, 0xcc]);
    let (len, back) = d.send_raw(&bytes, 4);
    assert_eq!(len, 4);
    assert_eq!(back, vec![0, 0, 0, 0]);
}

#[test]
fn device_operations_should_not_let_unattached_non_bypass_endpoints_access_memory() {
    let mut d = drv();
    assert_eq!(
        d.dev.translate(8, 0x1000, Access::READ),
        Translation::Fault(FaultReason::Domain)
    );
    let ev = d.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].reason, 1);
}

#[test]
fn device_operations_request_in_unreadable_memory_is_ioerr() {
    let mut d = drv();
    let head = 0x8_0000;
    nesting_core::mem::GuestMemoryExt::write_bytes_at(&*d.mem, Gpa(head), &[1, 0, 0, 0]).unwrap();
    let body = 0x10_0000_0000u64; // not guest RAM
    let resp = 0x9_0000;
    assert_eq!(d.mem_publish_raw(&[(head, 4), (body, 16)], &[(resp, 4)]), 4);
    let mut b = [0u8; 1];
    nesting_core::mem::GuestMemoryExt::read_bytes_at(&*d.mem, Gpa(resp), &mut b).unwrap();
    assert_eq!(b[0], u8::from(Status::IoErr));
}

#[test]
fn device_operations_domain_outside_domain_range_is_range() {
    let mut d = MockDriver::new(&["domain_range=1-10"]);
    assert_eq!(d.attach(11, 8), Status::Range);
    assert_eq!(d.attach(0, 8), Status::Range);
    assert_eq!(d.attach(10, 8), Status::Ok);
}

// ---------------------------------------------------------------------------
// 5.13.6.3.2 Device Requirements: ATTACH request

#[test]
fn attach_reserved_not_zero_must_be_inval() {
    let mut d = drv();
    let s = d.send(&Request::Attach(AttachBody {
        domain: 1.into(),
        endpoint: 8.into(),
        flags: 0.into(),
        reserved: [0, 0, 1, 0],
    }));
    assert_eq!(s, Status::Inval);
}

#[test]
fn attach_unrecognized_flag_must_be_inval() {
    let mut d = drv();
    assert_eq!(d.attach_flags(1, 8, 2), Status::Inval);
    // BYPASS is only recognized with BYPASS_CONFIG negotiated.
    let dev = Arc::new(VirtioIommu::new(&config(&[]), DeviceOptions::default()).unwrap());
    dev.ack_features(Features::VERSION_1.bits() | Features::MAP_UNMAP.bits())
        .unwrap();
    let mut d2 = MockDriver::with_device(dev, false);
    assert_eq!(d2.attach_flags(1, 8, 1), Status::Inval);
}

#[test]
fn attach_endpoint_missing_must_be_noent() {
    let mut d = MockDriver::new(&["endpoints=8,16-31"]);
    assert_eq!(d.attach(1, 9), Status::NoEnt);
    assert_eq!(d.attach(1, 20), Status::Ok);
}

#[test]
fn attach_second_endpoint_to_domain_shares_its_mappings() {
    let mut d = drv();
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x20_0000, RW), Status::Ok);
    assert_eq!(d.attach(1, 16), Status::Ok);
    assert_eq!(gpa(&d, 16, 0x1800, Access::WRITE), Some(0x20_0800));
}

#[test]
fn attach_bypass_flag_inconsistent_with_domain_should_be_inval() {
    let mut d = drv();
    assert_eq!(d.attach_flags(1, 8, 1), Status::Ok);
    assert_eq!(d.attach(1, 16), Status::Inval);
    assert_eq!(d.attach(2, 16), Status::Ok);
    assert_eq!(d.attach_flags(2, 24, 1), Status::Inval);
    assert_eq!(gpa(&d, 8, 0xdead_0000, Access::RW), Some(0xdead_0000));
}

#[test]
fn attach_endpoint_in_other_domain_is_detached_first() {
    let mut d = drv();
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, R), Status::Ok);
    assert_eq!(d.attach(2, 8), Status::Ok);
    // Domain 1 emptied: it ceased to exist with its mappings.
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x10_0000, R), Status::NoEnt);
    assert_eq!(gpa(&d, 8, 0, Access::READ), None);
    // Re-use of ID 1 starts empty.
    assert_eq!(d.attach(1, 16), Status::Ok);
    assert!(
        d.dev
            .lock()
            .state
            .tables
            .domain(1)
            .unwrap()
            .mappings
            .is_empty()
    );
}

#[test]
fn attach_device_that_does_not_reject_must_attach() {
    let mut d = drv();
    assert_eq!(d.attach(5, 8), Status::Ok);
    assert_eq!(d.attach(5, 8), Status::Ok, "again: still attached");
    assert_eq!(d.dev.lock().state.tables.domain_of(8), Some(5));
}

#[test]
fn attach_over_domain_limit_is_nomem() {
    let mut d = drv();
    {
        let mut g = d.dev.lock();
        for i in 0..crate::domain::MAX_DOMAINS as u32 {
            g.state.tables.attach(0x1000_0000 + i, i, false);
        }
    }
    assert_eq!(d.attach(0x100_0000, 8), Status::NoMem);
    assert_eq!(d.dev.limit_refusals(), 1, "counted (and logged)");
    assert_eq!(
        d.attach(3, 8),
        Status::Ok,
        "existing domains still joinable"
    );
}

// ---------------------------------------------------------------------------
// 5.13.6.4.2 Device Requirements: DETACH request

#[test]
fn detach_must_ignore_reserved() {
    let mut d = drv();
    assert_eq!(d.attach(1, 8), Status::Ok);
    let s = d.send(&Request::Detach(DetachBody {
        domain: 1.into(),
        endpoint: 8.into(),
        reserved: [0xff; 8],
    }));
    assert_eq!(s, Status::Ok);
}

#[test]
fn detach_endpoint_missing_must_be_noent() {
    let mut d = MockDriver::new(&["endpoints=8"]);
    assert_eq!(d.detach(1, 9), Status::NoEnt);
}

#[test]
fn detach_domain_missing_or_not_attached_may_be_inval() {
    let mut d = drv();
    assert_eq!(d.detach(1, 8), Status::Inval);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.detach(2, 8), Status::Inval);
}

#[test]
fn detach_must_ensure_endpoint_cannot_access_domain_mappings() {
    let mut d = drv();
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.attach(1, 16), Status::Ok);
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, RW), Status::Ok);
    assert_eq!(d.detach(1, 8), Status::Ok);
    assert_eq!(gpa(&d, 8, 0, Access::READ), None);
    assert_eq!(
        gpa(&d, 16, 0, Access::READ),
        Some(0x10_0000),
        "domain lives on"
    );
}

// ---------------------------------------------------------------------------
// 5.13.6.5.2 Device Requirements: MAP request

fn attached() -> MockDriver {
    let mut d = drv();
    assert_eq!(d.attach(1, 8), Status::Ok);
    d
}

#[test]
fn map_unaligned_should_be_range() {
    let mut d = attached();
    assert_eq!(d.map(1, 0x800, 0x17ff, 0x10_0000, R), Status::Range);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x10_0800, R), Status::Range);
    assert_eq!(d.map(1, 0x1000, 0x1ffe, 0x10_0000, R), Status::Range);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x10_0000, R), Status::Ok);
}

#[test]
fn map_existing_mapping_in_range_should_be_inval() {
    let mut d = attached();
    assert_eq!(d.map(1, 0x1000, 0x2fff, 0x10_0000, R), Status::Ok);
    assert_eq!(d.map(1, 0x2000, 0x3fff, 0x20_0000, R), Status::Inval);
    assert_eq!(d.map(1, 0x0, 0x1fff, 0x20_0000, R), Status::Inval);
    assert_eq!(d.map(1, 0x0, 0xffff, 0x20_0000, R), Status::Inval);
}

#[test]
fn map_unrecognized_flag_must_be_inval() {
    let mut d = attached();
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, 8), Status::Inval);
    assert_eq!(d.map(1, 0, 0xfff, 0xfee0_0000, R | W | MMIO_F), Status::Ok);
    let dev = Arc::new(VirtioIommu::new(&config(&[]), DeviceOptions::default()).unwrap());
    dev.ack_features(Features::VERSION_1.bits() | Features::MAP_UNMAP.bits())
        .unwrap();
    let mut d2 = MockDriver::with_device(dev, false);
    assert_eq!(d2.attach(1, 8), Status::Ok);
    assert_eq!(d2.map(1, 0, 0xfff, 0xfee0_0000, W | MMIO_F), Status::Inval);
}

#[test]
fn map_domain_missing_should_be_noent() {
    assert_eq!(drv().map(1, 0, 0xfff, 0, R), Status::NoEnt);
}

#[test]
fn map_bypass_domain_should_be_inval() {
    let mut d = drv();
    assert_eq!(d.attach_flags(1, 8, 1), Status::Ok);
    assert_eq!(d.map(1, 0, 0xfff, 0, R), Status::Inval);
}

#[test]
fn map_must_not_allow_writes_without_write_flag() {
    let mut d = attached();
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, R), Status::Ok);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x20_0000, W), Status::Ok);
    assert_eq!(gpa(&d, 8, 0x10, Access::READ), Some(0x10_0010));
    assert_eq!(gpa(&d, 8, 0x10, Access::WRITE), None);
    assert_eq!(gpa(&d, 8, 0x1010, Access::WRITE), Some(0x20_0010));
    assert_eq!(gpa(&d, 8, 0x1010, Access::READ), None, "write-only");
    let ev = d.events();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].reason, 2);
    assert_eq!(
        ev[0].flags.get(),
        (FaultFlags::WRITE | FaultFlags::ADDRESS).bits()
    );
}

#[test]
fn map_outside_input_range_is_range() {
    let mut d = MockDriver::new(&["input_range=0x1000-0xffff_ffff"]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, R), Status::Range);
    assert_eq!(
        d.map(1, 0xffff_f000, 0x1_0000_0fff, 0x10_0000, R),
        Status::Range
    );
    assert_eq!(d.map(1, 0xffff_f000, 0xffff_ffff, 0x10_0000, R), Status::Ok);
}

#[test]
fn map_end_before_start_is_inval_and_top_of_space_is_allowed() {
    let mut d = attached();
    assert_eq!(d.map(1, 0x2000, 0xfff, 0, R), Status::Inval);
    assert_eq!(d.map(1, u64::MAX - 0xfff, u64::MAX, 0, R), Status::Ok);
    assert_eq!(d.map(1, 0x1000, 0x1fff, (1 << 52) - 0x1000, R), Status::Ok);
    assert_eq!(
        d.map(1, 0x2000, 0x3fff, u64::MAX - 0xfff, R),
        Status::Range,
        "phys wraps"
    );
    assert_eq!(d.map(1, 0x4000, 0x4fff, u64::MAX - 0xfff, R), Status::Ok);
}

#[test]
fn map_linux_identity_domain_of_whole_input_range_is_ok() {
    // viommu_domain_map_identity() without BYPASS_CONFIG: one MAP of the
    // aperture at IOVA = GPA, READ | WRITE.
    let mut d = attached();
    assert_eq!(d.map(1, 0, u64::MAX, 0, RW), Status::Ok);
    assert_eq!(gpa(&d, 8, 0xdead_b000, Access::WRITE), Some(0xdead_b000));
    assert_eq!(d.unmap(1, 0, u64::MAX), Status::Ok);
}

#[test]
fn map_physical_range_outside_guest_space_is_fault() {
    let dev = Arc::new(
        VirtioIommu::new(
            &config(&[]),
            DeviceOptions {
                phys_bits: 52,
                ..DeviceOptions::default()
            },
        )
        .unwrap(),
    );
    let mut d = MockDriver::with_device(dev, true);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(
        d.map(1, 0x1000, 0x2fff, (1 << 52) - 0x1000, R),
        Status::Fault
    );
    assert_eq!(d.map(1, 0x1000, 0x1fff, 1 << 52, R), Status::Fault);
}

#[test]
fn map_over_mapping_limit_is_nomem() {
    let mut d = attached();
    {
        let mut g = d.dev.lock();
        for i in 0..crate::domain::MAX_MAPPINGS_PER_DOMAIN as u64 {
            let m = crate::domain::Mapping {
                iova_first: i << 12,
                iova_last: (i << 12) | 0xfff,
                gpa: 0,
                flags: R,
            };
            g.state.tables.insert_mapping(1, m);
        }
    }
    let top = (crate::domain::MAX_MAPPINGS_PER_DOMAIN as u64) << 12;
    assert_eq!(d.map(1, top, top | 0xfff, 0, R), Status::NoMem);
    assert_eq!(d.dev.limit_refusals(), 1, "counted (and logged)");
    assert_eq!(d.unmap(1, 0, 0xfff), Status::Ok);
    assert_eq!(d.map(1, top, top | 0xfff, 0, R), Status::Ok);
}

// ---------------------------------------------------------------------------
// 5.13.6.6.2 Device Requirements: UNMAP request

#[test]
fn unmap_reserved_not_zero_is_ignored() {
    let mut d = attached();
    assert_eq!(d.map(1, 0, 0xfff, 0x10_0000, R), Status::Ok);
    let s = d.send(&Request::Unmap(UnmapBody {
        domain: 1.into(),
        virt_start: 0.into(),
        virt_end: 0xfff.into(),
        reserved: [1, 2, 3, 4],
    }));
    assert_eq!(s, Status::Ok);
    assert_eq!(gpa(&d, 8, 0, Access::READ), None);
}

#[test]
fn unmap_domain_missing_should_be_noent() {
    assert_eq!(drv().unmap(3, 0, 0xfff), Status::NoEnt);
}

#[test]
fn unmap_bypass_domain_should_be_inval() {
    let mut d = drv();
    assert_eq!(d.attach_flags(1, 8, 1), Status::Ok);
    assert_eq!(d.unmap(1, 0, 0xfff), Status::Inval);
}

#[test]
fn unmap_split_should_be_range_and_remove_nothing() {
    let mut d = attached();
    // Spec example (4): a = map(0, 9); unmap(0, 4) fails.
    assert_eq!(d.map(1, 0, 0x9fff, 0x10_0000, R), Status::Ok);
    assert_eq!(d.map(1, 0xa000, 0xafff, 0x20_0000, R), Status::Ok);
    assert_eq!(d.unmap(1, 0, 0x4fff), Status::Range);
    assert_eq!(d.unmap(1, 0x5000, 0xafff), Status::Range);
    assert_eq!(
        gpa(&d, 8, 0xa000, Access::READ),
        Some(0x20_0000),
        "nothing removed"
    );
    assert_eq!(gpa(&d, 8, 0x0, Access::READ), Some(0x10_0000));
}

#[test]
fn unmap_partly_unmapped_range_should_remove_all_covered_and_be_ok() {
    // The spec's examples (1), (2), (3), (5), (6), (7), in pages.
    let p = |n: u64| n << 12;
    type Case<'a> = (&'a [(u64, u64)], (u64, u64), &'a [u64], &'a [u64]);
    let cases: &[Case] = &[
        (&[], (0, 4), &[], &[]),
        (&[(0, 9)], (0, 9), &[], &[0]),
        (&[(0, 4), (5, 9)], (0, 9), &[], &[0, 5]),
        (&[(0, 4), (5, 9)], (0, 4), &[5], &[0]),
        (&[(0, 4)], (0, 9), &[], &[0]),
        (&[(0, 4), (10, 14)], (0, 14), &[], &[0, 10]),
    ];
    for (maps, (a, b), kept, gone) in cases {
        let mut d = attached();
        for (s, e) in *maps {
            assert_eq!(d.map(1, p(*s), p(*e + 1) - 1, 0x10_0000, R), Status::Ok);
        }
        assert_eq!(d.unmap(1, p(*a), p(*b + 1) - 1), Status::Ok, "{maps:?}");
        for k in *kept {
            assert!(gpa(&d, 8, p(*k), Access::READ).is_some());
        }
        for g in *gone {
            assert!(gpa(&d, 8, p(*g), Access::READ).is_none());
        }
    }
}

// ---------------------------------------------------------------------------
// 5.13.6.7.2 Device Requirements: PROBE request

fn resv_driver() -> MockDriver {
    MockDriver::new(&[
        "probe_size=0x80",
        "resv=0xfee00000-0xfeefffff:msi",
        "resv=0x10000-0x1ffff:reserved",
    ])
}

#[test]
fn probe_must_ignore_reserved() {
    let mut d = resv_driver();
    let mut bytes = encode(&Request::Probe(ProbeBody {
        endpoint: 8.into(),
        reserved: [0x5a; 64],
    }));
    bytes.truncate(72);
    let (len, back) = d.send_raw(&bytes, 0x84);
    assert_eq!(len, 0x84);
    assert_eq!(back[0x80], 0);
}

#[test]
fn probe_endpoint_missing_should_be_noent() {
    let mut d = MockDriver::new(&["endpoints=8"]);
    assert_eq!(d.probe(9, 0x200).1, Status::NoEnt);
}

#[test]
fn probe_without_feature_not_written_used_length_zero() {
    let mut d = MockDriver::new(&["probe_size=0"]);
    let f = Features::from_bits_retain(d.dev.device_features());
    assert!(!f.contains(Features::PROBE));
    let (len, status, props) = d.probe(8, 0x40);
    assert_eq!((len, status), (0, Status::Ok));
    assert!(props.iter().all(|b| *b == 0));
}

#[test]
fn probe_property_layout_length_reserved_and_zero_fill() {
    let mut d = resv_driver();
    let (len, status, props) = d.probe(8, 0x80);
    assert_eq!((len, status), (0x84, Status::Ok));
    let want_msi: [u8; 24] = [
        1, 0, 20, 0, // type RESV_MEM, length 20 (without header)
        1, 0, 0, 0, // subtype MSI, reserved zero
        0, 0, 0xe0, 0xfe, 0, 0, 0, 0, // start
        0xff, 0xff, 0xef, 0xfe, 0, 0, 0, 0, // end
    ];
    assert_eq!(props[..24], want_msi);
    // The next property starts exactly length + 4 bytes later.
    assert_eq!(props[24..28], [1, 0, 20, 0]);
    assert_eq!(props[28], RESV_MEM_T_RESERVED);
    assert!(props[48..].iter().all(|b| *b == 0), "rest zero-filled");
}

#[test]
fn probe_properties_smaller_than_probe_size_should_be_inval_without_property() {
    let mut d = resv_driver();
    let req = encode(&Request::Probe(ProbeBody {
        endpoint: 8.into(),
        reserved: [0; 64],
    }));
    let (len, back) = d.send_raw(&req, 0x40 + 4);
    assert_eq!(len, 0x44);
    assert!(back[..0x40].iter().all(|b| *b == 0));
    assert_eq!(back[0x40], u8::from(Status::Inval));
}

// ---------------------------------------------------------------------------
// 5.13.6.8.1.2 Device Requirements: Property RESV_MEM

#[test]
fn resv_mem_should_not_present_two_msi_or_overlapping_regions() {
    let two_msi = config(&["resv=0x1000-0x1fff:msi", "resv=0x3000-0x3fff:msi"]);
    assert!(
        VirtioIommu::<vm_memory::GuestMemoryMmap>::new(&two_msi, DeviceOptions::default()).is_err()
    );
    let overlap = config(&["resv=0x1000-0x2fff:reserved", "resv=0x2000-0x3fff:msi"]);
    assert!(
        VirtioIommu::<vm_memory::GuestMemoryMmap>::new(&overlap, DeviceOptions::default()).is_err()
    );
}

#[test]
fn resv_mem_map_overlapping_region_should_be_rejected() {
    let mut d = resv_driver();
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x1_0000, 0x1_0fff, 0x10_0000, R), Status::Range);
    assert_eq!(
        d.map(1, 0xfee0_0000, 0xfee0_0fff, 0x10_0000, R),
        Status::Range
    );
    assert_eq!(d.map(1, 0x2_0000, 0x2_0fff, 0x10_0000, R), Status::Ok);
}

#[test]
fn resv_mem_access_faults_or_reaches_only_msi_doorbell() {
    let mut d = resv_driver();
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(gpa(&d, 8, 0xfee0_0040, Access::WRITE), Some(0xfee0_0040));
    assert_eq!(
        d.dev.translate(8, 0x1_0000, Access::READ),
        Translation::Fault(FaultReason::Mapping)
    );
    assert_eq!(d.events()[0].reason, 2, "VIRTIO_IOMMU_FAULT_R_MAPPING");
}

// ---------------------------------------------------------------------------
// 5.13.6.9.2 Device Requirements: Fault reporting

#[test]
fn fault_reporting_reserved_and_undefined_flags_zero_valid_endpoint_and_address() {
    let mut d = attached();
    let _ = d
        .dev
        .translate(8, 0x4242_1000, Access::READ | Access::EXEC | Access::PRIV);
    let ev = d.events();
    let raw = ev[0].as_bytes();
    assert_eq!(raw[1..4], [0, 0, 0]);
    assert_eq!(raw[12..16], [0, 0, 0, 0]);
    assert_eq!(
        ev[0].flags.get(),
        (FaultFlags::READ | FaultFlags::ADDRESS).bits(),
        "an instruction fetch is reported as a read; EXEC is not a 1.3 flag"
    );
    assert_eq!(ev[0].endpoint.get(), 8);
    assert_eq!(ev[0].address.get(), 0x4242_1000);
}

#[test]
fn fault_reporting_buffer_too_small_not_split_over_buffers() {
    let mut d = MockDriver::new(&[]);
    // Drain the posted 24-byte buffers with faults.
    for i in 0..crate::mock::MOCK_EVENT_BUFFERS {
        let _ = d.dev.translate(8, u64::from(i) << 12, Access::READ);
    }
    assert_eq!(
        d.events().len(),
        usize::from(crate::mock::MOCK_EVENT_BUFFERS)
    );
    d.mem_publish_event(&[(0xb_0000, 8)]);
    d.mem_publish_event(&[(0xb_0100, 16)]);
    let _ = d.dev.translate(8, 0x9000, Access::READ);
    assert!(
        d.events().is_empty(),
        "returned with length 0, not split over buffers"
    );
    assert_eq!(d.dev.dropped_events(), 1);
}

#[test]
fn fault_backlog_bounded_while_no_buffer_and_drops_counted() {
    let mut d = MockDriver::new(&[]);
    for i in 0..u64::from(crate::mock::MOCK_EVENT_BUFFERS) + crate::MAX_QUEUED_EVENTS as u64 + 5 {
        let _ = d.dev.translate(8, i << 12, Access::READ);
    }
    assert_eq!(d.dev.pending_events(), crate::MAX_QUEUED_EVENTS);
    assert_eq!(d.dev.dropped_events(), 5);
    let first = d.events();
    assert_eq!(first.len(), usize::from(crate::mock::MOCK_EVENT_BUFFERS));
    d.post_event_buffers(16);
    let more = d.events();
    assert_eq!(
        more.len(),
        16,
        "backlog flushed into the new buffers in order"
    );
    assert_eq!(
        more[0].address.get(),
        u64::from(crate::mock::MOCK_EVENT_BUFFERS) << 12
    );
}

#[test]
fn fault_interrupt_raised_for_event_queue() {
    let d = drv();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    d.dev
        .set_interrupt(Arc::new(move |i| s2.lock().unwrap().push(i)));
    let _ = d.dev.translate(8, 0, Access::READ);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![crate::Interrupt::Queue(EVENT_QUEUE)]
    );
}

// ---------------------------------------------------------------------------
// Snapshot

#[test]
fn snapshot_roundtrip_through_serde_restores_translations_and_queues() {
    let mut d = MockDriver::new(&["bypass=1"]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x30_0000, RW), Status::Ok);
    let snap = d.dev.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: crate::Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    let dev2 = Arc::new(VirtioIommu::from_snapshot(&back).unwrap());
    dev2.set_memory(d.mem.clone());
    assert_eq!(
        dev2.translate(8, 0x1004, Access::WRITE).gpa(),
        Some(0x30_0004)
    );
    assert_eq!(dev2.translate(9, 0x1004, Access::WRITE).gpa(), Some(0x1004));
    assert_eq!(dev2.snapshot(), snap);
}

#[test]
fn snapshot_bytes_are_enveloped_and_restore_translations() {
    use nesting_core::snapshot::{Envelope, Snapshot as _};
    let mut d = MockDriver::new(&["bypass=1"]);
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x30_0000, RW), Status::Ok);
    let bytes = d.dev.to_bytes().unwrap();
    let env = Envelope::from_bytes(&bytes).unwrap();
    assert_eq!((env.model.as_str(), env.version), ("virtio-iommu", 1));
    let dev2 = Arc::new(VirtioIommu::<vm_memory::GuestMemoryMmap>::from_bytes(&bytes).unwrap());
    dev2.set_memory(d.mem.clone());
    assert_eq!(
        dev2.translate(8, 0x1004, Access::WRITE).gpa(),
        Some(0x30_0004)
    );
}

#[test]
fn snapshot_inconsistent_is_refused() {
    let d = attached();
    let mut snap = d.dev.snapshot();
    snap.features |= Features::BYPASS.bits();
    assert!(VirtioIommu::<vm_memory::GuestMemoryMmap>::from_snapshot(&snap).is_err());
    let mut snap = d.dev.snapshot();
    snap.version = 99;
    assert!(VirtioIommu::<vm_memory::GuestMemoryMmap>::from_snapshot(&snap).is_err());
}

// ---------------------------------------------------------------------------
// Passthrough endpoints, through the registry on the simulated host.

fn passthrough_rig(opts: &[&str]) -> Rig {
    rig_with(HostProfile::VtdNonest.spec(), opts).unwrap()
}

#[test]
fn passthrough_config_clipped_to_host_and_holes_announced() {
    let mut r = passthrough_rig(&[]);
    let d = &mut r.drv;
    let mut b = [0u8; 24];
    d.dev.read_config(0, &mut b);
    let mask = u64::from_le_bytes(b[0..8].try_into().unwrap());
    let end = u64::from_le_bytes(b[16..24].try_into().unwrap());
    assert_eq!(mask, !0xfff);
    assert_eq!(end, (1 << 48) - 1, "clipped to the host aperture");
    let (_, status, props) = d.probe(8, 0x200);
    assert_eq!(status, Status::Ok);
    assert_eq!(props[0..2], [1, 0], "host hole announced as RESV_MEM");
    assert_eq!(props[4], RESV_MEM_T_RESERVED);
    let (_, _, emulated) = d.probe(9, 0x200);
    assert!(
        emulated.iter().all(|b| *b == 0),
        "emulated endpoints have no host hole"
    );
}

#[test]
fn passthrough_map_unmap_reach_host_before_completion() {
    let mut r = passthrough_rig(&[]);
    assert_eq!(r.place(8), Place::Blocked, "blocked until attached");
    assert_eq!(r.sim.attachment(r.dev_id, None), None);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.place(8), Place::Shadow(1));
    assert_eq!(r.drv.map(1, 0x1000, 0x2fff, 0x40_0000, RW), Status::Ok);
    assert_eq!(r.space_maps(1), Some(vec![(0x1000, 0x2000, 0x40_0000)]));
    assert_eq!(r.drv.unmap(1, 0, 0xffff), Status::Ok);
    assert_eq!(r.space_maps(1), Some(vec![]));
    assert_eq!(r.drv.detach(1, 8), Status::Ok);
    assert_eq!(r.space_maps(1), None, "space gone with its last endpoint");
}

#[test]
fn passthrough_host_failure_is_nomem_or_deverr_and_state_unchanged() {
    let mut r = passthrough_rig(&[]);
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    r.sim.fail_nth(HostOp::IoasCopy, 1, Errno::ENOMEM);
    assert_eq!(r.drv.map(1, 0x1000, 0x1fff, 0x40_0000, RW), Status::NoMem);
    assert_eq!(
        gpa(&r.drv, 8, 0x1000, Access::READ),
        None,
        "guest view unchanged"
    );
    assert_eq!(r.drv.map(1, 0x1000, 0x1fff, 0x40_0000, RW), Status::Ok);
    r.sim.fail_nth(HostOp::IoasUnmap, 1, Errno::EIO);
    assert_eq!(r.drv.unmap(1, 0x1000, 0x1fff), Status::DevErr);
    assert_eq!(gpa(&r.drv, 8, 0x1000, Access::READ), Some(0x40_0000));
    assert_eq!(r.space_maps(1).map(|m| m.len()), Some(1));
    // Domain 2's new space cannot be made.
    r.sim.fail_nth(HostOp::IoasAlloc, 1, Errno::EIO);
    assert_eq!(r.drv.attach(2, 8), Status::DevErr);
    assert_eq!(r.drv.dev.lock().state.tables.domain_of(8), Some(1));
    assert_eq!(r.place(8), Place::Shadow(1));
    assert_eq!(r.space_maps(2), None);
}

#[test]
fn passthrough_joining_domain_replays_its_mappings_and_bypass_uses_identity() {
    let mut r = passthrough_rig(&[]);
    assert_eq!(r.drv.attach(1, 9), Status::Ok);
    assert_eq!(r.drv.map(1, 0x1000, 0x1fff, 0x40_0000, R), Status::Ok);
    assert_eq!(r.space_maps(1), None, "emulated only: no host space");
    assert_eq!(r.drv.attach(1, 8), Status::Ok);
    assert_eq!(r.space_maps(1), Some(vec![(0x1000, 0x1000, 0x40_0000)]));
    assert_eq!(r.drv.attach_flags(2, 8, 1), Status::Ok);
    assert_eq!(r.place(8), Place::Identity);
    assert_eq!(r.ioas(), Some(r.ram_ioas));
    assert_eq!(
        r.space_maps(1),
        None,
        "host space left with its last passthrough endpoint"
    );
}

#[test]
fn passthrough_refused_by_ladder_when_host_cannot_map_input_range() {
    let e = rig_with(
        HostProfile::VtdNonest.spec(),
        &["input_range=0x1_0000_0000_0000-0x2_0000_0000_0000"],
    )
    .err()
    .unwrap();
    assert!(matches!(e, crate::DeviceError::Refused(_)), "{e}");
}

// ---------------------------------------------------------------------------
// IOTLB and the vm-memory view

#[test]
fn iotlb_cached_translation_dropped_by_unmap_and_detach() {
    let mut d = attached();
    assert_eq!(d.map(1, 0x20_0000, 0x3f_ffff, 0x40_0000, RW), Status::Ok);
    assert_eq!(gpa(&d, 8, 0x20_1000, Access::READ), Some(0x40_1000));
    // A 2 MiB-aligned mapping of 2 MiB is cached as one 2 MiB page.
    let rid = nesting_core::types::RequesterId::Endpoint(nesting_core::types::EndpointId(8));
    let p = d
        .dev
        .iotlb
        .lookup(rid, None, Iova(0x3f_f000), Access::READ)
        .unwrap();
    assert_eq!(p.size, nesting_core::types::PageSize::SIZE_2M);
    assert_eq!(d.unmap(1, 0x20_0000, 0x3f_ffff), Status::Ok);
    assert_eq!(gpa(&d, 8, 0x20_1000, Access::READ), None);
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x40_0000, R), Status::Ok);
    assert_eq!(gpa(&d, 8, 0x1000, Access::READ), Some(0x40_0000));
    assert_eq!(d.detach(1, 8), Status::Ok);
    assert_eq!(gpa(&d, 8, 0x1000, Access::READ), None);
}

#[test]
fn iotlb_entry_without_permission_is_a_miss_that_faults() {
    let mut d = attached();
    assert_eq!(d.map(1, 0x1000, 0x1fff, 0x40_0000, R), Status::Ok);
    assert_eq!(gpa(&d, 8, 0x1000, Access::READ), Some(0x40_0000));
    assert_eq!(gpa(&d, 8, 0x1000, Access::WRITE), None);
    assert_eq!(d.events().len(), 1);
}

#[test]
fn iotlb_bypass_change_invalidates_identity_entries() {
    let d = MockDriver::new(&["bypass=1"]);
    assert_eq!(gpa(&d, 8, 0x1000, Access::READ), Some(0x1000));
    d.dev.write_config(CONFIG_BYPASS_OFFSET, &[0]);
    assert_eq!(gpa(&d, 8, 0x1000, Access::READ), None);
}

#[test]
fn iommu_view_reads_guest_memory_through_the_device() {
    use vm_memory::iommu::Iommu;
    let mut d = attached();
    assert_eq!(d.map(1, 0x10_0000, 0x10_1fff, 0x40_0000, RW), Status::Ok);
    let rid = nesting_core::types::RequesterId::Endpoint(nesting_core::types::EndpointId(8));
    let view = nesting_core::iotlb::IommuView::new(d.dev.clone(), rid, None, false);
    let ranges: Vec<_> = view
        .translate(
            vm_memory::GuestAddress(0x10_0ff0),
            0x20,
            vm_memory::Permissions::Write,
        )
        .unwrap()
        .collect();
    assert_eq!(ranges.first().map(|r| r.base.0), Some(0x40_0ff0));
    assert_eq!(d.unmap(1, 0x10_0000, 0x10_1fff), Status::Ok);
    assert!(
        view.translate(
            vm_memory::GuestAddress(0x10_0ff0),
            0x20,
            vm_memory::Permissions::Write
        )
        .is_err()
    );
}

#[test]
fn passthrough_hotplug_after_features_must_fit_what_the_driver_read() {
    let r = passthrough_rig(&[]);
    let mut spec = HostProfile::VtdNonest.spec();
    spec.aperture.last = Iova((1 << 39) - 1);
    let smaller = spec.host_view();
    let Err((e, _)) = r.plug(9, &smaller) else {
        panic!("a host narrower than the input range the driver read was accepted");
    };
    assert!(matches!(e, crate::DeviceError::Refused(_)), "{e}");
    assert_eq!(r.place(9), Place::Blocked);
    let view = HostProfile::VtdNonest.spec().host_view();
    let (id, _) = r.plug(10, &view).map_err(|(e, _)| e).unwrap();
    assert_eq!(r.place(10), Place::Blocked, "joins blocked");
    assert_eq!(r.sim.attachment(id, None), None);
}

#[test]
fn passthrough_host_set_once() {
    let r = passthrough_rig(&[]);
    let host: nesting_core::host::objects::SharedHost = r.sim.clone();
    let ram = nesting_core::ram::GuestRam::from_guest_memory(&*r.drv.mem).unwrap();
    let ram = Arc::new(nesting_core::ram::RamIoas::new(&host, ram).unwrap());
    assert!(matches!(
        r.drv.dev.set_passthrough_host(host, ram),
        Err(crate::DeviceError::HostAlreadySet)
    ));
}

#[test]
fn passthrough_endpoint_incompatible_with_domain_is_unsupp() {
    let mut r = passthrough_rig(&[]);
    r.sim.fail_nth(HostOp::Attach, 1, Errno::EINVAL);
    assert_eq!(r.drv.attach(1, 8), Status::Unsupp);
    assert_eq!(r.drv.dev.lock().state.tables.domain_of(8), None);
    assert_eq!(r.place(8), Place::Blocked);
    assert_eq!(r.sim.attachment(r.dev_id, None), None);
    assert_eq!(r.space_maps(1), None);
}

#[test]
fn used_buffer_interrupt_suppressed_when_driver_sets_no_interrupt() {
    let mut d = drv();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    d.dev
        .set_interrupt(Arc::new(move |i| s2.lock().unwrap().push(i)));
    assert_eq!(d.attach(1, 8), Status::Ok);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![crate::Interrupt::Queue(REQUEST_QUEUE)]
    );
    // VIRTQ_AVAIL_F_NO_INTERRUPT in the request queue's avail flags, as
    // Linux sets it on its callback-less request queue.
    let (ring, _) = crate::driver::SplitRing::at(0x1_0000, crate::mock::MOCK_QUEUE_SIZE);
    nesting_core::mem::GuestMemoryExt::write_u16_le(&*d.mem, Gpa(ring.avail), 1).unwrap();
    assert_eq!(d.attach(2, 8), Status::Ok);
    assert_eq!(seen.lock().unwrap().len(), 1, "no interrupt");
}
