//! Unit tests: one per kernel rule, named `what_condition_result`.

use std::io::Write;
use std::os::fd::AsFd;

use nesting_core::host::info::{VtdCap, cap, ecap};
use nesting_core::host::{
    HwInfo, PageFaultFlags, PageResponse, PageResponseCode, VtdS1Flags, VtdS1Invalidation,
};

use super::*;
use crate::profile::HostProfile;

const RW: Access = Access::RW;
const R: Access = Access::READ;

fn sim(p: HostProfile) -> SimIommufd {
    SimIommufd::with_host(p.spec())
}

fn bind(s: &SimIommufd, unit: u32) -> DevId {
    let src = s.add_device(unit);
    s.bind_device(src).unwrap()
}

fn errno<T: std::fmt::Debug>(r: HostResult<T>) -> Errno {
    r.unwrap_err().errno
}

fn fixed(i: u64) -> IovaPlacement {
    IovaPlacement::Fixed(Iova(i))
}

fn map(s: &SimIommufd, ioas: IoasId, iova: u64, va: u64, len: u64) -> HostResult<Iova> {
    s.ioas_map(ioas, fixed(iova), MapSource::UserVa(va), len, RW)
}

fn paging(s: &SimIommufd, dev: DevId, ioas: IoasId, flags: HwptFlags) -> HostResult<HwptId> {
    s.hwpt_alloc(&HwptAlloc {
        dev,
        parent: PtId::Ioas(ioas),
        flags,
        fault: None,
        data: HwptData::None,
    })
}

fn vtd_s1(addr_width: u32, flags: VtdS1Flags) -> HwptData {
    HwptData::VtdS1 {
        flags,
        pgtbl_addr: 0x1000,
        addr_width,
    }
}

fn nested(s: &SimIommufd, dev: DevId, parent: PtId, data: HwptData) -> HostResult<HwptId> {
    s.hwpt_alloc(&HwptAlloc {
        dev,
        parent,
        flags: HwptFlags::empty(),
        fault: None,
        data,
    })
}

fn range(a: u64, b: u64) -> IovaRange {
    IovaRange::new(Iova(a), Iova(b)).unwrap()
}

/// A VT-d world: device attached to a NEST_PARENT HWPT on an IOAS.
fn vtd_parent(p: HostProfile) -> (SimIommufd, DevId, IoasId, HwptId) {
    let s = sim(p);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let parent = paging(&s, d, ioas, HwptFlags::NEST_PARENT).unwrap();
    (s, d, ioas, parent)
}

/// An SMMUv3 world with a vIOMMU on a NEST_PARENT HWPT.
fn smmu_viommu() -> (SimIommufd, DevId, IoasId, ViommuId) {
    let (s, d, ioas, parent) = vtd_parent(HostProfile::Smmuv3Nest);
    let v = s.viommu_alloc(d, parent, ViommuType::ArmSmmuv3).unwrap();
    (s, d, ioas, v)
}

fn ste_s1() -> HwptData {
    // V=1, Cfg=S1_TRANS (5 << 1), S1ContextPtr at 0x10000.
    HwptData::Smmuv3 {
        ste: [1 | (5 << 1) | 0x10000, 0],
    }
}

// ---------------------------------------------------------------- IOAS MAP

#[test]
fn map_without_read_or_write_einval() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    let r = s.ioas_map(
        ioas,
        fixed(0x1000),
        MapSource::UserVa(0x1000),
        0x1000,
        Access::EXEC,
    );
    assert_eq!(errno(r), Errno::EINVAL);
}

#[test]
fn map_length_u64_max_eoverflow() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(errno(map(&s, ioas, 0, 0x1000, u64::MAX)), Errno::EOVERFLOW);
}

#[test]
fn map_zero_length_einval() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(errno(map(&s, ioas, 0x1000, 0x1000, 0)), Errno::EINVAL);
}

#[test]
fn map_unknown_ioas_enoent() {
    let s = sim(HostProfile::None);
    assert_eq!(
        errno(map(&s, IoasId(7), 0x1000, 0x1000, 0x1000)),
        Errno::ENOENT
    );
}

#[test]
fn map_user_va_wrapping_eoverflow() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(map(&s, ioas, 0x1000, u64::MAX - 0xfff, 0x2000)),
        Errno::EOVERFLOW
    );
}

#[test]
fn map_fixed_onto_used_range_eexist() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x10000, 0x100000, 0x4000).unwrap();
    assert_eq!(
        errno(map(&s, ioas, 0x12000, 0x200000, 0x4000)),
        Errno::EEXIST
    );
    assert_eq!(s.mappings(ioas).len(), 1);
}

#[test]
fn map_without_domain_byte_aligned_succeeds() {
    // iopt_init_table: "iova_alignment = 1" until a domain joins.
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(s.ioas_iova_ranges(ioas).unwrap().alignment, 1);
    map(&s, ioas, 0x1234, 0x5234, 0x10).unwrap();
    assert_eq!(s.mappings(ioas)[0].range, range(0x1234, 0x1243));
}

#[test]
fn map_misaligned_iova_with_domain_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(s.ioas_iova_ranges(ioas).unwrap().alignment, 4096);
    assert_eq!(errno(map(&s, ioas, 0x1800, 0x1000, 0x1000)), Errno::EINVAL);
    assert_eq!(errno(map(&s, ioas, 0x2000, 0x1000, 0x800)), Errno::EINVAL);
    // The user VA's page offset must be aligned too (iopt_insert_area).
    assert_eq!(errno(map(&s, ioas, 0x2000, 0x1010, 0x1000)), Errno::EINVAL);
}

#[test]
fn map_large_page_unit_alignment_64k() {
    let s = SimIommufd::with_host(SimHostSpec::parse("smmuv3-nest,pgsize=0x10000").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(s.kernel_page_size(), 0x10000);
    assert_eq!(s.ioas_iova_ranges(ioas).unwrap().alignment, 0x10000);
    assert_eq!(
        errno(map(&s, ioas, 0x11000, 0x10000, 0x10000)),
        Errno::EINVAL
    );
    map(&s, ioas, 0x20000, 0x10000, 0x10000).unwrap();
}

#[test]
fn map_fixed_in_msi_window_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(
        errno(map(&s, ioas, 0xfee0_0000, 0x1000, 0x1000)),
        Errno::EINVAL
    );
}

#[test]
fn map_fixed_outside_aperture_einval() {
    let s =
        SimIommufd::with_host(SimHostSpec::parse("vtd-nest,aperture=0x1000-0xffffffff").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(
        errno(map(&s, ioas, 0x1_0000_0000, 0x1000, 0x1000)),
        Errno::EINVAL
    );
    assert_eq!(errno(map(&s, ioas, 0, 0x1000, 0x1000)), Errno::EINVAL);
}

#[test]
fn map_any_aligns_to_user_va_and_skips_zero() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    let a = s
        .ioas_map(
            ioas,
            IovaPlacement::Any,
            MapSource::UserVa(0x4020_0000),
            0x20_0000,
            RW,
        )
        .unwrap();
    assert!(a.is_aligned(0x20_0000) && a.0 != 0);
    let b = s
        .ioas_map(
            ioas,
            IovaPlacement::Any,
            MapSource::UserVa(0x7000),
            0x1000,
            RW,
        )
        .unwrap();
    assert_eq!(b, Iova(0x1000), "first page-aligned hole from PAGE_SIZE");
}

#[test]
fn map_any_without_domain_keeps_page_offset() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    let a = s
        .ioas_map(ioas, IovaPlacement::Any, MapSource::UserVa(0x5010), 0x10, R)
        .unwrap();
    assert_eq!(a.0 % 4096, 0x10);
    assert_eq!(s.translate(ioas, a), Some((SimBacking::UserVa(0x5010), R)));
}

#[test]
fn map_any_respects_allow_iovas() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    s.ioas_allow_iovas(ioas, &[range(0x100_0000, 0x1ff_ffff)])
        .unwrap();
    let a = s
        .ioas_map(
            ioas,
            IovaPlacement::Any,
            MapSource::UserVa(0x1000),
            0x1000,
            RW,
        )
        .unwrap();
    assert_eq!(a, Iova(0x100_0000));
    // FIXED placement is not restricted by the allowed ranges.
    map(&s, ioas, 0x1000, 0x1000, 0x1000).unwrap();
}

#[test]
fn map_any_without_room_enospc() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    s.ioas_allow_iovas(ioas, &[range(0x10000, 0x11fff)])
        .unwrap();
    let r = s.ioas_map(
        ioas,
        IovaPlacement::Any,
        MapSource::UserVa(0x1000),
        0x4000,
        RW,
    );
    assert_eq!(errno(r), Errno::ENOSPC);
}

#[test]
fn map_file_translates_to_file_offset() {
    let path = std::env::temp_dir().join(format!("sim-map-file-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&[0u8; 16]).unwrap();
    let key = SimFileKey::of(f.as_fd()).unwrap();
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    let src = MapSource::File {
        fd: f.as_fd(),
        offset: 0x3000,
    };
    let iova = s.ioas_map(ioas, fixed(0x10000), src, 0x2000, RW).unwrap();
    assert_eq!(s.calls(HostOp::IoasMapFile), 1);
    let (b, _) = s.translate(ioas, Iova(iova.0 + 0x1234)).unwrap();
    assert_eq!(
        b,
        SimBacking::File {
            file: key,
            offset: 0x4234
        }
    );
    drop(f);
    let _ = std::fs::remove_file(path);
}

/// A temporary file of `len` bytes, removed on drop.
struct TempFile(std::fs::File, std::path::PathBuf);

impl TempFile {
    fn new(tag: &str, len: u64) -> TempFile {
        let path = std::env::temp_dir().join(format!("sim-{tag}-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        TempFile(f, path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.1);
    }
}

/// Seen on Linux 7.2 (tests/kernel): a memfd of 64 KiB, 16 KiB mapped from
/// offset 60 KiB into an IOAS with a mock domain fails with EINVAL.
#[test]
fn map_file_past_end_with_domain_einval() {
    let f = TempFile::new("past-end", 0x10000);
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    let dev = bind(&s, 0);
    s.attach(dev, None, PtId::Ioas(ioas)).unwrap();
    let src = |offset| MapSource::File {
        fd: f.0.as_fd(),
        offset,
    };
    assert_eq!(
        errno(s.ioas_map(ioas, fixed(0x10000), src(0xf000), 0x4000, RW)),
        Errno::EINVAL
    );
    assert!(s.mappings(ioas).is_empty());
    // The last page of the file is still mappable, part of a page too.
    s.ioas_map(ioas, fixed(0x10000), src(0xf000), 0x1000, RW)
        .unwrap();
    assert_eq!(s.pinned_pages(), 1);
}

/// Without a domain nothing is pinned, so the mapping is accepted and the
/// first attach (which pins) fails instead.
#[test]
fn map_file_past_end_without_domain_fails_at_first_attach() {
    let f = TempFile::new("past-end-attach", 0x2000);
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    let src = MapSource::File {
        fd: f.0.as_fd(),
        offset: 0x1000,
    };
    s.ioas_map(ioas, fixed(0x10000), src, 0x2000, RW).unwrap();
    let dev = bind(&s, 0);
    assert_eq!(errno(s.attach(dev, None, PtId::Ioas(ioas))), Errno::EINVAL);
    assert_eq!(s.attachment(dev, None), None);
    s.ioas_unmap(ioas, Iova(0), u64::MAX).unwrap();
    s.attach(dev, None, PtId::Ioas(ioas)).unwrap();
}

// -------------------------------------------------------------- IOAS UNMAP

#[test]
fn unmap_cutting_first_mapping_enoent_nothing_changed() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x10000, 0x1000, 0x4000).unwrap();
    assert_eq!(
        errno(s.ioas_unmap(ioas, Iova(0x11000), 0x1000)),
        Errno::ENOENT
    );
    assert_eq!(s.mappings(ioas).len(), 1);
}

#[test]
fn unmap_cutting_last_mapping_enoent_after_unmapping_earlier() {
    // iopt_unmap_iova_range removes areas in order and fails on the one
    // crossing the end: the earlier ones are gone.
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x10000, 0x1000, 0x1000).unwrap();
    map(&s, ioas, 0x11000, 0x1000, 0x4000).unwrap();
    assert_eq!(
        errno(s.ioas_unmap(ioas, Iova(0x10000), 0x2000)),
        Errno::ENOENT
    );
    let m = s.mappings(ioas);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].range.first, Iova(0x11000));
}

#[test]
fn unmap_whole_mappings_returns_bytes() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x10000, 0x1000, 0x1000).unwrap();
    map(&s, ioas, 0x20000, 0x1000, 0x3000).unwrap();
    assert_eq!(s.ioas_unmap(ioas, Iova(0x8000), 0x20000).unwrap(), 0x4000);
    assert!(s.mappings(ioas).is_empty());
}

#[test]
fn unmap_all_returns_bytes_even_when_empty() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(s.ioas_unmap(ioas, Iova(0), u64::MAX).unwrap(), 0);
    map(&s, ioas, 0x10000, 0x1000, 0x3000).unwrap();
    map(&s, ioas, 0x40000, 0x1000, 0x1000).unwrap();
    assert_eq!(s.ioas_unmap(ioas, Iova(0), u64::MAX).unwrap(), 0x4000);
}

#[test]
fn unmap_nothing_mapped_enoent() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(s.ioas_unmap(ioas, Iova(0x1000), 0x1000)),
        Errno::ENOENT
    );
}

#[test]
fn unmap_zero_length_einval() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(errno(s.ioas_unmap(ioas, Iova(0x1000), 0)), Errno::EINVAL);
}

#[test]
fn unmap_length_max_not_at_zero_eoverflow() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(s.ioas_unmap(ioas, Iova(0x1000), u64::MAX)),
        Errno::EOVERFLOW
    );
    assert_eq!(
        errno(s.ioas_unmap(ioas, Iova(0x1000), u64::MAX - 0x10)),
        Errno::EOVERFLOW
    );
}

// --------------------------------------------------------------- IOAS COPY

#[test]
fn copy_subrange_of_map_succeeds_and_shares_pins() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let (a, b) = (s.ioas_alloc().unwrap(), s.ioas_alloc().unwrap());
    s.attach(d, None, PtId::Ioas(a)).unwrap();
    let d2 = bind(&s, 0);
    s.attach(d2, None, PtId::Ioas(b)).unwrap();
    map(&s, a, 0x10000, 0x100000, 0x4000).unwrap();
    assert_eq!(s.pinned_pages(), 4);
    s.ioas_copy(b, fixed(0x80000), a, Iova(0x11000), 0x2000, RW)
        .unwrap();
    assert_eq!(s.pinned_pages(), 4, "COPY shares the iopt_pages");
    assert_eq!(s.mappings(b)[0].backing, SimBacking::UserVa(0x101000));
}

#[test]
fn copy_spanning_two_maps_creates_two_mappings() {
    let s = sim(HostProfile::None);
    let (a, b) = (s.ioas_alloc().unwrap(), s.ioas_alloc().unwrap());
    map(&s, a, 0x10000, 0x100000, 0x2000).unwrap();
    map(&s, a, 0x12000, 0x900000, 0x2000).unwrap();
    s.ioas_copy(b, fixed(0x40000), a, Iova(0x11000), 0x2000, R)
        .unwrap();
    let m = s.mappings(b);
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].backing, SimBacking::UserVa(0x900000));
}

#[test]
fn copy_over_hole_enoent() {
    let s = sim(HostProfile::None);
    let (a, b) = (s.ioas_alloc().unwrap(), s.ioas_alloc().unwrap());
    map(&s, a, 0x10000, 0x100000, 0x1000).unwrap();
    map(&s, a, 0x12000, 0x900000, 0x1000).unwrap();
    let r = s.ioas_copy(b, fixed(0x40000), a, Iova(0x10000), 0x3000, R);
    assert_eq!(errno(r), Errno::ENOENT);
}

#[test]
fn copy_writable_from_readonly_map_eperm() {
    let s = sim(HostProfile::None);
    let (a, b) = (s.ioas_alloc().unwrap(), s.ioas_alloc().unwrap());
    s.ioas_map(a, fixed(0x10000), MapSource::UserVa(0x1000), 0x1000, R)
        .unwrap();
    let r = s.ioas_copy(b, fixed(0x10000), a, Iova(0x10000), 0x1000, RW);
    assert_eq!(errno(r), Errno::EPERM);
}

// ------------------------------------------------------------------ PINNING

#[test]
fn pins_only_while_ioas_has_domain() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x10000, 0x100000, 0x3000).unwrap();
    assert_eq!(s.pinned_pages(), 0);
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(s.pinned_pages(), 3);
    s.detach(d, None).unwrap();
    assert_eq!(s.pinned_pages(), 0);
}

#[test]
fn map_same_va_twice_pins_twice() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    map(&s, ioas, 0x10000, 0x100000, 0x2000).unwrap();
    map(&s, ioas, 0x20000, 0x100000, 0x2000).unwrap();
    assert_eq!(s.pinned_pages(), 4);
    s.ioas_unmap(ioas, Iova(0x10000), 0x2000).unwrap();
    assert_eq!(s.pinned_pages(), 2);
}

// ------------------------------------------------- ALLOW_IOVAS, IOVA_RANGES

#[test]
fn allow_iovas_single_byte_range_einval() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(s.ioas_allow_iovas(ioas, &[range(0x1000, 0x1000)])),
        Errno::EINVAL
    );
}

#[test]
fn allow_iovas_overlapping_einval() {
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    let r = s.ioas_allow_iovas(ioas, &[range(0x1000, 0x4fff), range(0x4000, 0x8fff)]);
    assert_eq!(errno(r), Errno::EINVAL);
}

#[test]
fn allow_iovas_over_reserved_eaddrinuse() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    let r = s.ioas_allow_iovas(ioas, &[range(0xfe00_0000, 0xfeff_ffff)]);
    assert_eq!(errno(r), Errno(libc::EADDRINUSE));
}

#[test]
fn iova_ranges_exclude_msi_window_of_attached_device() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        s.ioas_iova_ranges(ioas).unwrap().ranges,
        vec![range(0, u64::MAX)]
    );
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    let r = s.ioas_iova_ranges(ioas).unwrap();
    assert_eq!(
        r.ranges,
        vec![range(0, 0xfedf_ffff), range(0xfef0_0000, (1 << 48) - 1)]
    );
    assert_eq!(r.alignment, 4096);
}

// ------------------------------------------------------------------- ATTACH

#[test]
fn attach_with_mapping_in_msi_window_eaddrinuse() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0xfee0_0000, 0x1000, 0x1000).unwrap();
    assert_eq!(
        errno(s.attach(d, None, PtId::Ioas(ioas))),
        Errno(libc::EADDRINUSE)
    );
    assert_eq!(s.attachment(d, None), None);
    assert!(
        s.hwpt(HwptId(3)).is_none(),
        "the automatic HWPT was aborted"
    );
}

#[test]
fn attach_with_mapping_beyond_aperture_eaddrinuse() {
    let s = SimIommufd::with_host(SimHostSpec::parse("vtd-nest,aperture=0-0xffffffff").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x1_0000_0000, 0x1000, 0x1000).unwrap();
    assert_eq!(
        errno(s.attach(d, None, PtId::Ioas(ioas))),
        Errno(libc::EADDRINUSE)
    );
}

#[test]
fn attach_larger_page_unit_over_unaligned_mapping_eaddrinuse() {
    let s = SimIommufd::with_host(SimHostSpec::parse("smmuv3-nest,pgsize=0x10000").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x11000, 0x10000, 0x1000).unwrap();
    assert_eq!(
        errno(s.attach(d, None, PtId::Ioas(ioas))),
        Errno(libc::EADDRINUSE)
    );
}

#[test]
fn attach_ioas_makes_auto_hwpt_freed_on_detach() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(s.attachment(d, None), Some(PtId::Ioas(ioas)));
    let h = s.attached_hwpt(d, None).unwrap();
    assert_eq!(h, HwptId(3), "IDs: device 1, IOAS 2, HWPT 3");
    assert!(s.hwpt(h).unwrap().auto_domain);
    assert_eq!(errno(s.destroy(ObjectId::Hwpt(h))), Errno::EBUSY);
    s.detach(d, None).unwrap();
    assert!(s.hwpt(h).is_none());
    s.destroy(ObjectId::Ioas(ioas)).unwrap();
}

#[test]
fn attach_when_attached_counts_as_replace() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let (a, b) = (s.ioas_alloc().unwrap(), s.ioas_alloc().unwrap());
    s.attach(d, None, PtId::Ioas(a)).unwrap();
    s.attach(d, None, PtId::Ioas(b)).unwrap();
    assert_eq!((s.calls(HostOp::Attach), s.calls(HostOp::Replace)), (1, 1));
    assert_eq!(s.attachment(d, None), Some(PtId::Ioas(b)));
    s.destroy(ObjectId::Ioas(a)).unwrap();
}

#[test]
fn attach_to_viommu_einval() {
    let (s, d, _, v) = smmu_viommu();
    assert_eq!(errno(s.attach(d, None, PtId::Viommu(v))), Errno::EINVAL);
}

#[test]
fn attach_unknown_pt_enoent() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    assert_eq!(
        errno(s.attach(d, None, PtId::Hwpt(HwptId(40)))),
        Errno::ENOENT
    );
}

#[test]
fn attach_smmu_domain_of_other_unit_einval() {
    let s = sim(HostProfile::Smmuv3Nest);
    s.add_iommu(HostProfile::Smmuv3Nest.spec());
    let (d0, d1) = (bind(&s, 0), bind(&s, 1));
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d0, ioas, HwptFlags::empty()).unwrap();
    assert_eq!(errno(s.attach(d1, None, PtId::Hwpt(h))), Errno::EINVAL);
    // Through the IOAS the kernel skips the incompatible automatic domain.
    s.attach(d1, None, PtId::Ioas(ioas)).unwrap();
    assert_eq!(s.iommu_of(d1), Some(1));
}

#[test]
fn detach_when_detached_succeeds() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    s.detach(d, None).unwrap();
}

// -------------------------------------------------------------------- PASID

fn pasid(n: u32) -> Option<Pasid> {
    Pasid::new(n)
}

#[test]
fn pasid_attach_non_pasid_hwpt_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::empty()).unwrap();
    assert_eq!(errno(s.attach(d, pasid(5), PtId::Hwpt(h))), Errno::EINVAL);
    // An IOAS attach builds a domain without ALLOC_PASID: refused too.
    assert_eq!(
        errno(s.attach(d, pasid(5), PtId::Ioas(ioas))),
        Errno::EINVAL
    );
}

#[test]
fn pasid_attach_pasid_hwpt_succeeds() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::PASID).unwrap();
    s.attach(d, pasid(5), PtId::Hwpt(h)).unwrap();
    assert_eq!(s.attachment(d, pasid(5)), Some(PtId::Hwpt(h)));
    // RID on a non-PASID HWPT while PASIDs are attached: iommufd_hwpt_pasid_compat.
    let plain = paging(&s, d, ioas, HwptFlags::empty()).unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(plain))), Errno::EINVAL);
}

#[test]
fn pasid_attach_unit_without_pasid_eopnotsupp() {
    let s = sim(HostProfile::Smmuv3S2only);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::empty()).unwrap();
    // S2-only SMMU: ALLOC_PASID needs stage 1.
    assert_eq!(
        errno(paging(&s, d, ioas, HwptFlags::PASID)),
        Errno::EOPNOTSUPP
    );
    let _ = h;
    let s = SimIommufd::with_host(SimHostSpec::parse("vtd-nest,ecap=0x1f0e0ec000000").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::PASID).unwrap();
    assert_eq!(
        errno(s.attach(d, pasid(5), PtId::Hwpt(h))),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn pasid_attach_beyond_width_einval() {
    let s = SimIommufd::with_host(SimHostSpec::parse("smmuv3-nest,idr1=0x90").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::PASID).unwrap();
    // idr1.SSIDSIZE = 2 -> PASIDs 0..3.
    s.attach(d, pasid(3), PtId::Hwpt(h)).unwrap();
    assert_eq!(errno(s.attach(d, pasid(4), PtId::Hwpt(h))), Errno::EINVAL);
}

// ------------------------------------------------------------ HWPT (paging)

#[test]
fn hwpt_nest_parent_on_vtd_without_nest_eopnotsupp() {
    let s = sim(HostProfile::VtdNonest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(paging(&s, d, ioas, HwptFlags::NEST_PARENT)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn hwpt_nest_parent_on_smmu_s2only_eopnotsupp() {
    let s = sim(HostProfile::Smmuv3S2only);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(paging(&s, d, ioas, HwptFlags::NEST_PARENT)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn hwpt_nest_parent_on_mmu600_r0_erratum_eopnotsupp() {
    let mut spec = HostProfile::Smmuv3Nest.spec();
    if let HwInfo::ArmSmmuv3 { iidr, .. } = &mut spec.info.hw {
        *iidr = 0x4830_043b; // MMU-600, variant 0
    }
    let s = SimIommufd::with_host(spec);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(paging(&s, d, ioas, HwptFlags::NEST_PARENT)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn hwpt_nest_parent_with_pasid_on_smmu_eopnotsupp() {
    let s = sim(HostProfile::Smmuv3Nest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let r = paging(&s, d, ioas, HwptFlags::NEST_PARENT | HwptFlags::PASID);
    assert_eq!(errno(r), Errno::EOPNOTSUPP);
}

#[test]
fn hwpt_dirty_tracking_without_cap_eopnotsupp() {
    let s = SimIommufd::with_host(SimHostSpec::parse("vtd-nest,ecap=0x1f0e0ec000000").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(paging(&s, d, ioas, HwptFlags::DIRTY_TRACKING)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn hwpt_fault_with_nest_parent_eopnotsupp() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let r = paging(
        &s,
        d,
        ioas,
        HwptFlags::NEST_PARENT | HwptFlags::FAULT_ID_VALID,
    );
    assert_eq!(errno(r), Errno::EOPNOTSUPP);
}

#[test]
fn hwpt_alloc_unknown_parent_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    assert_eq!(
        errno(paging(&s, d, IoasId(99), HwptFlags::empty())),
        Errno::EINVAL
    );
}

#[test]
fn hwpt_alloc_unknown_device_enoent() {
    let s = sim(HostProfile::VtdNest);
    let ioas = s.ioas_alloc().unwrap();
    assert_eq!(
        errno(paging(&s, DevId(99), ioas, HwptFlags::empty())),
        Errno::ENOENT
    );
}

#[test]
fn hwpt_alloc_unknown_fault_queue_enoent() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let r = s.hwpt_alloc(&HwptAlloc {
        dev: d,
        parent: PtId::Ioas(ioas),
        flags: HwptFlags::FAULT_ID_VALID,
        fault: Some(FaultQueueId(77)),
        data: HwptData::None,
    });
    assert_eq!(errno(r), Errno::ENOENT);
}

#[test]
fn hwpt_raw_data_none_with_bytes_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let raw = HwptData::Raw {
        data_type: 0,
        bytes: vec![1],
    };
    assert_eq!(errno(nested(&s, d, PtId::Ioas(ioas), raw)), Errno::EINVAL);
}

#[test]
fn hwpt_paging_with_vendor_data_eopnotsupp() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let r = nested(&s, d, PtId::Ioas(ioas), vtd_s1(48, VtdS1Flags::empty()));
    assert_eq!(errno(r), Errno::EOPNOTSUPP);
}

// --------------------------------------------------------------- VT-d nested

#[test]
fn vtd_nested_on_non_parent_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::empty()).unwrap();
    let r = nested(&s, d, PtId::Hwpt(h), vtd_s1(48, VtdS1Flags::empty()));
    assert_eq!(errno(r), Errno::EINVAL);
}

#[test]
fn vtd_nested_on_auto_domain_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    let auto = s.attached_hwpt(d, None).unwrap();
    let r = nested(&s, d, PtId::Hwpt(auto), vtd_s1(48, VtdS1Flags::empty()));
    assert_eq!(errno(r), Errno::EINVAL);
}

#[test]
fn vtd_nested_with_smmu_data_eopnotsupp() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    assert_eq!(
        errno(nested(&s, d, PtId::Hwpt(parent), ste_s1())),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn vtd_nested_raw_short_struct_einval() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let raw = HwptData::Raw {
        data_type: 1,
        bytes: vec![0; 20],
    };
    assert_eq!(errno(nested(&s, d, PtId::Hwpt(parent), raw)), Errno::EINVAL);
}

#[test]
fn vtd_nested_bad_addr_width_fails_at_attach_einval() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(39, VtdS1Flags::empty())).unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(h))), Errno::EINVAL);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::empty())).unwrap();
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
    assert_eq!(s.hwpt(h).unwrap().parent, PtId::Hwpt(parent));
}

#[test]
fn vtd_nested_57_bits_needs_fs5lp() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(57, VtdS1Flags::empty())).unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(h))), Errno::EINVAL);

    let mut spec = HostProfile::VtdNest.spec();
    if let HwInfo::IntelVtd { cap: c, .. } = &mut spec.info.hw {
        *c = VtdCap(c.0).with(cap::FS5LP, 1);
    }
    let s = SimIommufd::with_host(spec);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let parent = paging(&s, d, ioas, HwptFlags::NEST_PARENT).unwrap();
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(57, VtdS1Flags::empty())).unwrap();
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
}

#[test]
fn vtd_nested_eafe_without_eafs_einval() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::EAFE)).unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(h))), Errno::EINVAL);
}

#[test]
fn vtd_nested_sre_without_srs_einval() {
    let mut spec = HostProfile::VtdNest.spec();
    if let HwInfo::IntelVtd { ecap: e, .. } = &mut spec.info.hw {
        *e = e.with(ecap::SRS, 0);
    }
    let s = SimIommufd::with_host(spec);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let parent = paging(&s, d, ioas, HwptFlags::NEST_PARENT).unwrap();
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::SRE)).unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(h))), Errno::EINVAL);
}

#[test]
fn vtd_nested_unknown_flag_bits_accepted() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let flags = VtdS1Flags::from_bits_retain(1 << 40) | VtdS1Flags::SRE;
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, flags)).unwrap();
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
}

#[test]
fn destroy_parent_of_nested_ebusy() {
    let (s, d, ioas, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::empty())).unwrap();
    assert_eq!(errno(s.destroy(ObjectId::Hwpt(parent))), Errno::EBUSY);
    assert_eq!(errno(s.destroy(ObjectId::Ioas(ioas))), Errno::EBUSY);
    s.destroy(ObjectId::Hwpt(h)).unwrap();
    s.destroy(ObjectId::Hwpt(parent)).unwrap();
    s.destroy(ObjectId::Ioas(ioas)).unwrap();
}

// ---------------------------------------------------------- VT-d invalidate

fn inv(addr: u64, npages: u64) -> VtdS1Invalidation {
    VtdS1Invalidation {
        addr,
        npages,
        leaf: false,
    }
}

#[test]
fn vtd_invalidate_stops_at_misaligned_entry_reports_handled() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::empty())).unwrap();
    let batch = InvalidationBatch::VtdS1(vec![
        inv(0x1000, 1),
        inv(0x2000, 2),
        inv(0x3010, 1),
        inv(0, 1),
    ]);
    let out = s.hwpt_invalidate(InvalidateTarget::Hwpt(h), &batch);
    assert_eq!(out.handled, 2);
    assert_eq!(out.result.unwrap_err().errno, Errno::EINVAL);
    assert_eq!(s.invalidation_entries(), 2);
}

#[test]
fn vtd_invalidate_npages_max_with_addr_einval() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::empty())).unwrap();
    let ok = InvalidationBatch::VtdS1(vec![inv(0, u64::MAX)]);
    assert_eq!(s.hwpt_invalidate(InvalidateTarget::Hwpt(h), &ok).handled, 1);
    let bad = InvalidationBatch::VtdS1(vec![inv(0x1000, u64::MAX)]);
    let out = s.hwpt_invalidate(InvalidateTarget::Hwpt(h), &bad);
    assert_eq!(
        (out.handled, out.result.unwrap_err().errno),
        (0, Errno::EINVAL)
    );
}

#[test]
fn vtd_invalidate_raw_unknown_flag_eopnotsupp() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::empty())).unwrap();
    let mut bytes = vec![0u8; 48];
    bytes[24 + 16] = 2; // second entry: flags bit 1
    let batch = InvalidationBatch::Raw {
        data_type: 0,
        entry_len: 24,
        bytes,
    };
    let out = s.hwpt_invalidate(InvalidateTarget::Hwpt(h), &batch);
    assert_eq!(
        (out.handled, out.result.unwrap_err().errno),
        (1, Errno::EOPNOTSUPP)
    );
}

#[test]
fn invalidate_paging_hwpt_einval() {
    let (s, _, _, parent) = vtd_parent(HostProfile::VtdNest);
    let out = s.hwpt_invalidate(
        InvalidateTarget::Hwpt(parent),
        &InvalidationBatch::VtdS1(vec![inv(0, 1)]),
    );
    assert_eq!(out.result.unwrap_err().errno, Errno::EINVAL);
}

#[test]
fn invalidate_entry_longer_than_page_einval() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    let h = nested(&s, d, PtId::Hwpt(parent), vtd_s1(48, VtdS1Flags::empty())).unwrap();
    let batch = InvalidationBatch::Raw {
        data_type: 0,
        entry_len: 8192,
        bytes: vec![0; 8192],
    };
    let out = s.hwpt_invalidate(InvalidateTarget::Hwpt(h), &batch);
    assert_eq!(out.result.unwrap_err().errno, Errno::EINVAL);
}

// -------------------------------------------------------------- SMMUv3 side

#[test]
fn viommu_on_vtd_eopnotsupp() {
    let (s, d, _, parent) = vtd_parent(HostProfile::VtdNest);
    assert_eq!(
        errno(s.viommu_alloc(d, parent, ViommuType::ArmSmmuv3)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn viommu_on_non_nest_parent_einval() {
    let s = sim(HostProfile::Smmuv3Nest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::empty()).unwrap();
    assert_eq!(
        errno(s.viommu_alloc(d, h, ViommuType::ArmSmmuv3)),
        Errno::EINVAL
    );
}

#[test]
fn viommu_without_s2fwb_eopnotsupp() {
    let s = SimIommufd::with_host(SimHostSpec::parse("smmuv3-nest,idr3=0x400").unwrap());
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::NEST_PARENT).unwrap();
    assert_eq!(
        errno(s.viommu_alloc(d, h, ViommuType::ArmSmmuv3)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn viommu_default_type_eopnotsupp() {
    let (s, d, _, parent) = vtd_parent(HostProfile::Smmuv3Nest);
    assert_eq!(
        errno(s.viommu_alloc(d, parent, ViommuType::Other(0))),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn vdevice_virt_id_used_twice_eexist() {
    let (s, d, _, v) = smmu_viommu();
    let d2 = bind(&s, 0);
    s.vdevice_alloc(v, d, 0x10).unwrap();
    assert_eq!(errno(s.vdevice_alloc(v, d2, 0x10)), Errno::EEXIST);
    assert_eq!(
        errno(s.vdevice_alloc(v, d, 0x11)),
        Errno::EEXIST,
        "one vDEVICE per device"
    );
    assert_eq!(errno(s.destroy(ObjectId::Viommu(v))), Errno::EBUSY);
}

#[test]
fn vdevice_other_unit_einval() {
    let (s, _, _, v) = smmu_viommu();
    let u = s.add_iommu(HostProfile::Smmuv3Nest.spec());
    let d = bind(&s, u);
    assert_eq!(errno(s.vdevice_alloc(v, d, 1)), Errno::EINVAL);
}

#[test]
fn unbind_tombstones_vdevice_id() {
    let (s, d, _, v) = smmu_viommu();
    let vd = s.vdevice_alloc(v, d, 3).unwrap();
    s.unbind_device(d).unwrap();
    assert_eq!(errno(s.destroy(ObjectId::Vdevice(vd))), Errno::ENOENT);
    let ioas = s.ioas_alloc().unwrap();
    assert!(ioas.0 != vd.0, "tombstoned IDs are never reused");
    s.destroy(ObjectId::Viommu(v)).unwrap();
}

#[test]
fn smmu_ste_disallowed_bits_eio() {
    let (s, d, _, v) = smmu_viommu();
    let bad = HwptData::Smmuv3 {
        ste: [1 | (5 << 1), 1 << 19],
    };
    assert_eq!(errno(nested(&s, d, PtId::Viommu(v), bad)), Errno::EIO);
}

/// arm-smmu-v3-iommufd.c, `arm_smmu_validate_vste`: every field of
/// `STRTAB_STE_0/1_NESTING_ALLOWED` may be set (EATS only to TRANS), and
/// any bit outside them fails with EIO, in either word.
#[test]
fn smmu_ste_every_allowed_field_accepted_every_other_bit_eio() {
    let (s, d, _, v) = smmu_viommu();
    // V, Cfg=S1_TRANS, S1Fmt=3, S1ContextPtr all ones, S1CDMax=31.
    let w0 = 1 | (5 << 1) | (3 << 4) | (((1u64 << 46) - 1) << 6) | (0x1f << 59);
    // S1DSS=2, S1CIR, S1COR, S1CSH all ones, S1STALLD, EATS=TRANS.
    let w1 = 2 | (3 << 2) | (3 << 4) | (3 << 6) | (1 << 27) | (1 << 28);
    nested(&s, d, PtId::Viommu(v), HwptData::Smmuv3 { ste: [w0, w1] }).unwrap();
    for bit in 52..59 {
        let bad = HwptData::Smmuv3 {
            ste: [w0 | (1 << bit), w1],
        };
        assert_eq!(
            errno(nested(&s, d, PtId::Viommu(v), bad)),
            Errno::EIO,
            "word 0 bit {bit}"
        );
    }
    for bit in (8..27).chain(30..64) {
        let bad = HwptData::Smmuv3 {
            ste: [w0, w1 | (1 << bit)],
        };
        assert_eq!(
            errno(nested(&s, d, PtId::Viommu(v), bad)),
            Errno::EIO,
            "word 1 bit {bit}"
        );
    }
}

#[test]
fn smmu_ste_s2_config_eio() {
    let (s, d, _, v) = smmu_viommu();
    let bad = HwptData::Smmuv3 {
        ste: [1 | (6 << 1), 0],
    };
    assert_eq!(errno(nested(&s, d, PtId::Viommu(v), bad)), Errno::EIO);
}

#[test]
fn smmu_ste_eats_s1chk_eio() {
    let (s, d, _, v) = smmu_viommu();
    let bad = HwptData::Smmuv3 {
        ste: [1 | (5 << 1), 2 << 28],
    };
    assert_eq!(errno(nested(&s, d, PtId::Viommu(v), bad)), Errno::EIO);
}

#[test]
fn smmu_ste_not_valid_accepted() {
    let (s, d, _, v) = smmu_viommu();
    let h = nested(
        &s,
        d,
        PtId::Viommu(v),
        HwptData::Smmuv3 { ste: [0, u64::MAX] },
    )
    .unwrap();
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
    assert_eq!(s.hwpt(h).unwrap().parent, PtId::Viommu(v));
}

#[test]
fn smmu_nested_translate_attach_without_vdevice_enoent() {
    let (s, d, _, v) = smmu_viommu();
    let h = nested(&s, d, PtId::Viommu(v), ste_s1()).unwrap();
    assert_eq!(errno(s.attach(d, None, PtId::Hwpt(h))), Errno::ENOENT);
    s.vdevice_alloc(v, d, 0x42).unwrap();
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
}

#[test]
fn smmu_nested_on_vtd_parent_hwpt_eopnotsupp() {
    let (s, d, _, _) = smmu_viommu();
    let ioas = s.ioas_alloc().unwrap();
    let parent = paging(&s, d, ioas, HwptFlags::NEST_PARENT).unwrap();
    assert_eq!(
        errno(nested(&s, d, PtId::Hwpt(parent), ste_s1())),
        Errno::EOPNOTSUPP
    );
}

fn cmd(op: u64, sid: u64) -> [u64; 2] {
    [op | (sid << 32), 0]
}

#[test]
fn smmu_invalidate_translates_vsid_and_stops_at_unknown_eio() {
    let (s, d, _, v) = smmu_viommu();
    s.vdevice_alloc(v, d, 7).unwrap();
    let batch =
        InvalidationBatch::Smmuv3(vec![cmd(0x12, 0), cmd(0x05, 7), cmd(0x40, 8), cmd(0x11, 0)]);
    let out = s.hwpt_invalidate(InvalidateTarget::Viommu(v), &batch);
    assert_eq!(
        (out.handled, out.result.unwrap_err().errno),
        (2, Errno::EIO)
    );
}

#[test]
fn smmu_invalidate_unknown_opcode_eio() {
    let (s, _, _, v) = smmu_viommu();
    let batch = InvalidationBatch::Smmuv3(vec![cmd(0x30, 0), cmd(0x03, 0)]);
    let out = s.hwpt_invalidate(InvalidateTarget::Viommu(v), &batch);
    assert_eq!(
        (out.handled, out.result.unwrap_err().errno),
        (1, Errno::EIO)
    );
}

#[test]
fn smmu_invalidate_empty_batch_einval() {
    let (s, _, _, v) = smmu_viommu();
    let out = s.hwpt_invalidate(
        InvalidateTarget::Viommu(v),
        &InvalidationBatch::Smmuv3(vec![]),
    );
    assert_eq!(
        (out.handled, out.result.unwrap_err().errno),
        (0, Errno::EINVAL)
    );
}

// ------------------------------------------------------------------ EVENTQ

#[test]
fn veventq_zero_depth_einval() {
    let (s, _, _, v) = smmu_viommu();
    assert_eq!(
        errno(s.veventq_alloc(v, VeventqType::ArmSmmuv3, 0)),
        Errno::EINVAL
    );
}

#[test]
fn veventq_same_type_twice_eexist() {
    let (s, _, _, v) = smmu_viommu();
    s.veventq_alloc(v, VeventqType::ArmSmmuv3, 4).unwrap();
    assert_eq!(
        errno(s.veventq_alloc(v, VeventqType::ArmSmmuv3, 4)),
        Errno::EEXIST
    );
}

#[test]
fn veventq_overflow_reports_lost_marker_with_sequence() {
    let (s, _, _, v) = smmu_viommu();
    let q = s.veventq_alloc(v, VeventqType::ArmSmmuv3, 2).unwrap();
    for i in 0..4u8 {
        s.inject_vevent(v, vec![i; 32]).unwrap();
    }
    let got = s.veventq_read(q, 16).unwrap();
    assert_eq!(
        got,
        vec![
            VEvent::Event {
                sequence: 0,
                data: vec![0; 32]
            },
            VEvent::Event {
                sequence: 1,
                data: vec![1; 32]
            },
            // The marker was requeued for the 4th event: sequence 3.
            VEvent::Lost { sequence: 3 },
        ]
    );
    // Room again: the next event follows.
    s.inject_vevent(v, vec![9; 32]).unwrap();
    assert_eq!(
        s.veventq_read(q, 1).unwrap(),
        vec![VEvent::Event {
            sequence: 4,
            data: vec![9; 32]
        }]
    );
}

#[test]
fn veventq_lost_marker_replaced_by_next_event_leaves_gap() {
    let (s, _, _, v) = smmu_viommu();
    let q = s.veventq_alloc(v, VeventqType::ArmSmmuv3, 1).unwrap();
    s.inject_vevent(v, vec![1]).unwrap();
    s.inject_vevent(v, vec![2]).unwrap(); // lost, seq 1
    assert_eq!(s.veventq_read(q, 1).unwrap().len(), 1);
    s.inject_vevent(v, vec![3]).unwrap(); // replaces the marker at the tail
    assert_eq!(
        s.veventq_read(q, 8).unwrap(),
        vec![VEvent::Event {
            sequence: 2,
            data: vec![3]
        }]
    );
}

#[test]
fn inject_vevent_without_queue_eopnotsupp() {
    let (s, _, _, v) = smmu_viommu();
    assert_eq!(s.inject_vevent(v, vec![1]), Err(Errno::EOPNOTSUPP));
}

fn fault_world() -> (SimIommufd, DevId, FaultQueueId, HwptId) {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let fq = s.fault_queue_alloc().unwrap();
    let h = s
        .hwpt_alloc(&HwptAlloc {
            dev: d,
            parent: PtId::Ioas(ioas),
            flags: HwptFlags::FAULT_ID_VALID | HwptFlags::PASID,
            fault: Some(fq),
            data: HwptData::None,
        })
        .unwrap();
    s.attach(d, pasid(1), PtId::Hwpt(h)).unwrap();
    (s, d, fq, h)
}

#[test]
fn fault_group_one_response_then_unknown_cookie_einval() {
    let (s, d, fq, h) = fault_world();
    s.inject_page_fault(d, pasid(1), Iova(0x5000), Access::WRITE, 3)
        .unwrap();
    let groups = s.fault_read(fq).unwrap();
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g.faults.len(), 3);
    assert!(
        g.faults[2]
            .flags
            .contains(PageFaultFlags::LAST_PAGE | PageFaultFlags::PASID_VALID)
    );
    assert_eq!(g.cookie(), Some(1));
    let resp = PageResponse {
        cookie: 1,
        code: PageResponseCode::Success,
    };
    s.fault_respond(fq, resp).unwrap();
    assert_eq!(errno(s.fault_respond(fq, resp)), Errno::EINVAL);
    assert_eq!(errno(s.destroy(ObjectId::FaultQueue(fq))), Errno::EBUSY);
    let _ = h;
}

#[test]
fn fault_response_before_read_einval() {
    let (s, d, fq, _) = fault_world();
    s.inject_page_fault(d, pasid(1), Iova(0x5000), Access::READ, 1)
        .unwrap();
    let r = s.fault_respond(
        fq,
        PageResponse {
            cookie: 1,
            code: PageResponseCode::Invalid,
        },
    );
    assert_eq!(errno(r), Errno::EINVAL);
}

#[test]
fn fault_detach_answers_pending_groups() {
    let (s, d, fq, _) = fault_world();
    s.inject_page_fault(d, pasid(1), Iova(0x5000), Access::READ, 1)
        .unwrap();
    s.detach(d, pasid(1)).unwrap();
    assert!(s.fault_read(fq).unwrap().is_empty());
}

#[test]
fn inject_fault_without_fault_queue_eopnotsupp() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    let r = s.inject_page_fault(d, None, Iova(0), Access::READ, 1);
    assert_eq!(r, Err(Errno::EOPNOTSUPP));
}

// ------------------------------------------------------------------- DIRTY

#[test]
fn dirty_tracking_without_flag_eopnotsupp() {
    let (s, _, _, parent) = vtd_parent(HostProfile::VtdNest);
    assert_eq!(
        errno(s.hwpt_set_dirty_tracking(parent, true)),
        Errno::EOPNOTSUPP
    );
}

#[test]
fn dirty_bitmap_reports_then_clears() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::DIRTY_TRACKING).unwrap();
    s.attach(d, None, PtId::Hwpt(h)).unwrap();
    map(&s, ioas, 0x10000, 0x100000, 0x4000).unwrap();
    assert!(!s.mark_dirty(h, Iova(0x11000)), "tracking off");
    s.hwpt_set_dirty_tracking(h, true).unwrap();
    assert!(s.mark_dirty(h, Iova(0x11234)));
    assert!(!s.mark_dirty(h, Iova(0x20000)), "not mapped");
    let r = range(0x10000, 0x13fff);
    let bits = s.hwpt_get_dirty_bitmap(h, r, 0x1000, true).unwrap();
    assert_eq!(bits.iter_ones().collect::<Vec<_>>(), vec![1]);
    let bits = s.hwpt_get_dirty_bitmap(h, r, 0x1000, false).unwrap();
    assert_eq!(bits.count_ones(), 1);
    assert_eq!(
        s.hwpt_get_dirty_bitmap(h, r, 0x1000, false)
            .unwrap()
            .count_ones(),
        0
    );
}

#[test]
fn dirty_bitmap_misaligned_range_einval() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::DIRTY_TRACKING).unwrap();
    let r = s.hwpt_get_dirty_bitmap(h, range(0x10800, 0x13fff), 0x1000, false);
    assert_eq!(errno(r), Errno::EINVAL);
    let r = s.hwpt_get_dirty_bitmap(h, range(0x10000, 0x13fff), 0, false);
    assert_eq!(errno(r), Errno::EINVAL);
}

// ------------------------------------------------------- OBJECTS, DESTROY

#[test]
fn ids_start_at_one_lowest_free_reused() {
    let s = sim(HostProfile::None);
    let a = s.ioas_alloc().unwrap();
    let b = s.ioas_alloc().unwrap();
    assert_eq!((a.0, b.0), (1, 2));
    s.destroy(ObjectId::Ioas(a)).unwrap();
    assert_eq!(s.ioas_alloc().unwrap().0, 1);
}

#[test]
fn destroy_unknown_enoent() {
    let s = sim(HostProfile::None);
    assert_eq!(errno(s.destroy(ObjectId::Ioas(IoasId(5)))), Errno::ENOENT);
}

#[test]
fn destroy_uses_raw_id_whatever_the_variant() {
    // IOMMU_DESTROY takes a bare ID: the kernel destroys whatever it names.
    let s = sim(HostProfile::None);
    let ioas = s.ioas_alloc().unwrap();
    s.destroy(ObjectId::Hwpt(HwptId(ioas.0))).unwrap();
    assert_eq!(errno(s.ioas_iova_ranges(ioas)), Errno::ENOENT);
}

#[test]
fn destroy_device_id_ebusy() {
    let s = sim(HostProfile::None);
    let d = bind(&s, 0);
    assert_eq!(errno(s.destroy(ObjectId::Ioas(IoasId(d.0)))), Errno::EBUSY);
}

#[test]
fn map_on_hwpt_id_enoent() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    let h = paging(&s, d, ioas, HwptFlags::empty()).unwrap();
    assert_eq!(
        errno(map(&s, IoasId(h.0), 0x1000, 0x1000, 0x1000)),
        Errno::ENOENT
    );
}

#[test]
fn bind_twice_ebusy_unknown_enodev() {
    let s = sim(HostProfile::None);
    let src = s.add_device(0);
    let DeviceSource::Simulated { index } = src else {
        unreachable!()
    };
    s.bind_device(src).unwrap();
    assert_eq!(
        errno(s.bind_device(DeviceSource::Simulated { index })),
        Errno::EBUSY
    );
    assert_eq!(
        errno(s.bind_device(DeviceSource::Simulated { index: 9 })),
        Errno::ENODEV
    );
    let bad_unit = s.add_device(5);
    assert_eq!(errno(s.bind_device(bad_unit)), Errno::ENODEV);
}

#[test]
fn unbind_detaches_and_frees_auto_domain() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    let ioas = s.ioas_alloc().unwrap();
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    s.unbind_device(d).unwrap();
    assert_eq!(s.iommu_of(d), None);
    s.destroy(ObjectId::Ioas(ioas)).unwrap();
}

#[test]
fn hw_info_reports_unit() {
    let s = sim(HostProfile::VtdNest);
    let d = bind(&s, 0);
    assert_eq!(s.hw_info(d).unwrap(), HostProfile::VtdNest.spec().info);
    assert_eq!(errno(s.hw_info(DevId(9))), Errno::ENOENT);
}

// ---------------------------------------------------------------- INJECTION

/// A world where every op has something valid to act on.
struct World {
    s: SimIommufd,
    d: DevId,
    d2: DevId,
    ioas: IoasId,
    spare_ioas: IoasId,
    parent: HwptId,
    dirty: HwptId,
    v: ViommuId,
    q: VeventqId,
    fq: FaultQueueId,
    spare: u32,
}

fn world() -> World {
    let s = sim(HostProfile::Smmuv3Nest);
    let (d, d2, d3) = (bind(&s, 0), bind(&s, 0), bind(&s, 0));
    let ioas = s.ioas_alloc().unwrap();
    let spare_ioas = s.ioas_alloc().unwrap();
    map(&s, ioas, 0x10000, 0x100000, 0x4000).unwrap();
    let parent = paging(&s, d, ioas, HwptFlags::NEST_PARENT).unwrap();
    let dirty = paging(&s, d, ioas, HwptFlags::DIRTY_TRACKING).unwrap();
    let v = s.viommu_alloc(d, parent, ViommuType::ArmSmmuv3).unwrap();
    let q = s.veventq_alloc(v, VeventqType::ArmSmmuv3, 8).unwrap();
    s.inject_vevent(v, vec![1; 32]).unwrap();
    let fq = s.fault_queue_alloc().unwrap();
    let fh = s
        .hwpt_alloc(&HwptAlloc {
            dev: d3,
            parent: PtId::Ioas(ioas),
            flags: HwptFlags::FAULT_ID_VALID,
            fault: Some(fq),
            data: HwptData::None,
        })
        .unwrap();
    s.attach(d3, None, PtId::Hwpt(fh)).unwrap();
    s.inject_page_fault(d3, None, Iova(0x10000), Access::READ, 2)
        .unwrap();
    assert_eq!(s.fault_read(fq).unwrap()[0].cookie(), Some(1));
    let DeviceSource::Simulated { index: spare } = s.add_device(0) else {
        unreachable!()
    };
    s.attach(d, None, PtId::Ioas(ioas)).unwrap();
    s.reset_counters();
    World {
        s,
        d,
        d2,
        ioas,
        spare_ioas,
        parent,
        dirty,
        v,
        q,
        fq,
        spare,
    }
}

/// One valid call of `op` on a world.
fn call(w: &World, op: HostOp) -> Result<(), Errno> {
    let s = &w.s;
    let e = |r: HostError| r.errno;
    match op {
        HostOp::BindDevice => s
            .bind_device(DeviceSource::Simulated { index: w.spare })
            .map(|_| ())
            .map_err(e),
        HostOp::UnbindDevice => s.unbind_device(w.d).map_err(e),
        HostOp::GetHwInfo => s.hw_info(w.d).map(|_| ()).map_err(e),
        HostOp::IoasAlloc => s.ioas_alloc().map(|_| ()).map_err(e),
        HostOp::IoasMap => map(s, w.ioas, 0x40000, 0x1000, 0x1000)
            .map(|_| ())
            .map_err(e),
        HostOp::IoasMapFile => {
            let f = std::fs::File::open("/proc/self/exe").map_err(|x| Errno::from_io(&x))?;
            let src = MapSource::File {
                fd: f.as_fd(),
                offset: 0,
            };
            s.ioas_map(w.ioas, fixed(0x50000), src, 0x1000, R)
                .map(|_| ())
                .map_err(e)
        }
        HostOp::IoasUnmap => s
            .ioas_unmap(w.ioas, Iova(0x10000), 0x4000)
            .map(|_| ())
            .map_err(e),
        HostOp::IoasCopy => s
            .ioas_copy(w.ioas, fixed(0x60000), w.ioas, Iova(0x11000), 0x1000, RW)
            .map(|_| ())
            .map_err(e),
        HostOp::IoasIovaRanges => s.ioas_iova_ranges(w.ioas).map(|_| ()).map_err(e),
        HostOp::IoasAllowIovas => s
            .ioas_allow_iovas(w.ioas, &[range(0x100000, 0x1fffff)])
            .map_err(e),
        HostOp::HwptAlloc => paging(s, w.d, w.ioas, HwptFlags::empty())
            .map(|_| ())
            .map_err(e),
        HostOp::HwptInvalidate => {
            let b = InvalidationBatch::Smmuv3(vec![cmd(0x12, 0)]);
            s.hwpt_invalidate(InvalidateTarget::Viommu(w.v), &b)
                .result
                .map_err(e)
        }
        HostOp::SetDirtyTracking => s.hwpt_set_dirty_tracking(w.dirty, true).map_err(e),
        HostOp::GetDirtyBitmap => s
            .hwpt_get_dirty_bitmap(w.dirty, range(0x10000, 0x13fff), 0x1000, false)
            .map(|_| ())
            .map_err(e),
        HostOp::ViommuAlloc => s
            .viommu_alloc(w.d, w.parent, ViommuType::ArmSmmuv3)
            .map(|_| ())
            .map_err(e),
        HostOp::VdeviceAlloc => s.vdevice_alloc(w.v, w.d, 5).map(|_| ()).map_err(e),
        HostOp::VeventqAlloc => s
            .veventq_alloc(w.v, VeventqType::Other(9), 4)
            .map(|_| ())
            .map_err(e),
        HostOp::VeventqRead => s.veventq_read(w.q, 4).map(|_| ()).map_err(e),
        HostOp::FaultQueueAlloc => s.fault_queue_alloc().map(|_| ()).map_err(e),
        HostOp::FaultRead => s.fault_read(w.fq).map(|_| ()).map_err(e),
        HostOp::FaultRespond => {
            let resp = PageResponse {
                cookie: 1,
                code: PageResponseCode::Success,
            };
            s.fault_respond(w.fq, resp).map_err(e)
        }
        HostOp::Attach => s.attach(w.d2, None, PtId::Ioas(w.ioas)).map_err(e),
        HostOp::Replace => s.attach(w.d, None, PtId::Hwpt(w.dirty)).map_err(e),
        HostOp::Detach => s.detach(w.d, None).map_err(e),
        HostOp::Destroy => s.destroy(ObjectId::Ioas(w.spare_ioas)).map_err(e),
    }
}

#[test]
fn injected_failure_at_every_op_changes_nothing_and_next_call_works() {
    for op in HostOp::ALL {
        let w = world();
        w.s.fail_nth(op, 1, Errno::EIO);
        let before = w.s.snapshot();
        assert_eq!(call(&w, op), Err(Errno::EIO), "{op}");
        assert_eq!(w.s.snapshot(), before, "{op} changed state");
        assert_eq!(w.s.calls(op), 1, "{op}");
        assert_eq!(call(&w, op), Ok(()), "{op} after injection");
        assert_eq!(w.s.calls(op), 2, "{op}");
    }
}

#[test]
fn fail_nth_counts_calls_from_now() {
    let s = sim(HostProfile::None);
    s.fail_nth(HostOp::IoasAlloc, 3, Errno::ENOMEM);
    s.ioas_alloc().unwrap();
    s.ioas_alloc().unwrap();
    assert_eq!(errno(s.ioas_alloc()), Errno::ENOMEM);
    assert_eq!(s.ioas_alloc().unwrap().0, 3);
    assert_eq!(s.calls(HostOp::IoasAlloc), 4);
    s.reset_counters();
    assert_eq!(s.calls(HostOp::IoasAlloc), 0);
}

#[test]
fn call_hook_sees_every_call_before_its_effect() {
    use std::sync::{Arc, Mutex};
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    sim.set_call_hook(Some(Arc::new(move |op| log.lock().unwrap().push(op))));
    let host: nesting_core::host::objects::SharedHost = sim.clone();
    sim.fail_nth(HostOp::IoasAlloc, 1, Errno(libc::ENOMEM));
    assert!(host.ioas_alloc().is_err());
    let ioas = host.ioas_alloc().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![HostOp::IoasAlloc, HostOp::IoasAlloc]
    );
    sim.set_call_hook(None);
    host.destroy(nesting_core::host::ObjectId::Ioas(ioas))
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// A device bound by the VMM's own VFIO code, as vfio-ioctls does.
fn owner_bound(s: &SimIommufd) -> (DeviceSource, DevId) {
    let src = s.add_device(0);
    let DeviceSource::Simulated { index } = src else {
        unreachable!()
    };
    let dev = s.bind_as_owner(DeviceSource::Simulated { index }).unwrap();
    (DeviceSource::Simulated { index }, dev)
}

#[test]
fn bound_source_adopts_owner_binding_same_id() {
    let s = sim(HostProfile::VtdNest);
    let (src, dev) = owner_bound(&s);
    assert_eq!(
        s.calls(HostOp::BindDevice),
        0,
        "the owner's bind is not ours"
    );

    let got = s.bind_device(src.bound(dev)).unwrap();

    assert_eq!(got, dev);
    assert_eq!(s.calls(HostOp::BindDevice), 1);
    s.hw_info(dev).unwrap();
}

#[test]
fn bound_source_backend_unbind_leaves_owner_binding() {
    let s = sim(HostProfile::VtdNest);
    let (src, dev) = owner_bound(&s);
    s.bind_device(src.bound(dev)).unwrap();
    let ioas = s.ioas_alloc().unwrap();
    s.attach(dev, None, PtId::Ioas(ioas)).unwrap();

    s.unbind_device(dev).unwrap();

    // Still bound, and attached: the backend released its hold only.
    s.hw_info(dev).unwrap();
    assert_eq!(s.attachment(dev, None), Some(PtId::Ioas(ioas)));
    assert_eq!(errno(s.unbind_device(dev)), Errno::ENOENT);
    s.unbind_as_owner(dev).unwrap();
    assert_eq!(errno(s.hw_info(dev)), Errno::ENOENT);
}

#[test]
fn bound_source_owner_closing_first_keeps_binding_until_backend_lets_go() {
    let s = sim(HostProfile::VtdNest);
    let (src, dev) = owner_bound(&s);
    s.bind_device(src.bound(dev)).unwrap();

    s.unbind_as_owner(dev).unwrap();
    s.hw_info(dev).unwrap();
    s.unbind_device(dev).unwrap();

    assert_eq!(errno(s.hw_info(dev)), Errno::ENOENT);
}

#[test]
fn bound_source_wrong_id_enoent_twice_eexist() {
    let s = sim(HostProfile::VtdNest);
    let (src, dev) = owner_bound(&s);
    let DeviceSource::Simulated { index } = src else {
        unreachable!()
    };
    let again = || DeviceSource::Simulated { index };

    assert_eq!(
        errno(s.bind_device(again().bound(DevId(dev.0 + 40)))),
        Errno::ENOENT
    );
    s.bind_device(again().bound(dev)).unwrap();
    assert_eq!(errno(s.bind_device(again().bound(dev))), Errno::EEXIST);
}

#[test]
fn bound_source_of_backend_binding_eexist_path_einval() {
    let s = sim(HostProfile::VtdNest);
    let src = s.add_device(0);
    let DeviceSource::Simulated { index } = src else {
        unreachable!()
    };
    let dev = s.bind_device(src).unwrap();

    assert_eq!(
        errno(s.bind_device(DeviceSource::Simulated { index }.bound(dev))),
        Errno::EEXIST
    );
    assert_eq!(
        errno(s.bind_device(DeviceSource::Path("/dev/null".into()).bound(dev))),
        Errno::EINVAL
    );
    // The owner holds nothing here.
    assert_eq!(errno(s.unbind_as_owner(dev)), Errno::ENOENT);
}

#[test]
fn bound_device_adopted_drop_detaches_ours_keeps_binding() {
    use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
    let s = Arc::new(sim(HostProfile::VtdNest));
    let host: SharedHost = s.clone();
    let (src, dev) = owner_bound(&s);
    let ioas = Ioas::alloc(&host).unwrap();
    let mut bound = BoundDevice::bind(&host, src.bound(dev)).unwrap();
    bound.attach(None, PtId::Ioas(ioas.id())).unwrap();

    drop(bound);

    // Detached from the IOAS it attached, which can now go; the owner's
    // binding stays, and the owner can attach it again.
    assert_eq!(s.attachment(dev, None), None);
    s.hw_info(dev).unwrap();
    s.attach(dev, None, PtId::Ioas(ioas.id())).unwrap();
    s.detach(dev, None).unwrap();
    drop(ioas);
    s.unbind_as_owner(dev).unwrap();
}
