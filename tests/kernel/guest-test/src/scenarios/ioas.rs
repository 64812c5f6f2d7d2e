//! IOAS scenarios: map, map_file, unmap (whole, refused partial), copy,
//! iova_ranges, allow_iovas, and the pinning questions.

use libc::{EEXIST, EINVAL, ENOENT};
use nesting_core::host::{IoasId, IovaPlacement, MapSource, PtId};
use nesting_core::types::{Access, Iova, IovaRange};

use crate::mem::Mem;
use crate::rig::Rig;
use crate::trace::Trace;

/// A fixed IOVA in the mock aperture (which starts at 16 MiB).
const BASE: u64 = 0x100_0000;
const K4: u64 = 4096;

fn fixed(iova: u64) -> IovaPlacement {
    IovaPlacement::Fixed(Iova(iova))
}

fn range(first: u64, last: u64) -> IovaRange {
    IovaRange {
        first: Iova(first),
        last: Iova(last),
    }
}

/// Map, unmap and their refusals on one IOAS with a mock device.
pub fn map_unmap(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let Ok(ioas) = t.id("ioas_alloc", h.ioas_alloc()) else {
        return;
    };
    t.dbg("iova_ranges without domain", h.ioas_iova_ranges(ioas));
    let a = MapSource::UserVa(m.a.va());
    let whole = h.ioas_map(ioas, fixed(BASE), a, m.a.len(), Access::RW);
    t.dbg("map before any domain", whole);
    t.val("pinned without domain", r.pinned_pages());
    let Ok(_dev) = t.id("mock_device", r.add_device(PtId::Ioas(ioas), false)) else {
        return;
    };
    t.val("pinned with domain", r.pinned_pages());
    t.dbg("iova_ranges with mock domain", h.ioas_iova_ranges(ioas));
    let (rw, any, free) = (Access::RW, IovaPlacement::Any, BASE + 0x10_0000);
    let b_half = MapSource::UserVa(m.b.va() + 2048);
    // (label, placement, source, length, access)
    let maps = [
        ("map overlapping", fixed(BASE + 4 * K4), a, 4 * K4, rw),
        ("map any", any, a, 4 * K4, Access::READ),
        ("map unaligned length", fixed(free), a, 100, rw),
        ("map zero length", fixed(free), a, 0, rw),
        ("map without access", fixed(free), a, K4, Access::empty()),
        ("map below aperture", fixed(0x10_0000), a, K4, rw),
        ("map above aperture", fixed(1 << 32), a, K4, rw),
        ("map unaligned iova", fixed(BASE + 0x10_0800), a, K4, rw),
        (
            "map half-page user address",
            fixed(BASE + 0x20_0800),
            b_half,
            2048,
            rw,
        ),
    ];
    for (label, place, src, len, access) in maps {
        t.dbg(label, h.ioas_map(ioas, place, src, len, access));
    }
    t.val("pinned after maps", r.pinned_pages());
    // (label, IOVA, length)
    let unmaps = [
        ("unmap partial middle", BASE + 4 * K4, 4 * K4),
        ("unmap cutting the end", BASE, 8 * K4),
        ("unmap cutting the start", BASE + 8 * K4, 8 * K4),
        ("unmap whole", BASE, m.a.len()),
        ("unmap again", BASE, m.a.len()),
        ("unmap unaligned", BASE + 1, K4),
        ("unmap all", 0, u64::MAX),
        ("unmap all when empty", 0, u64::MAX),
    ];
    for (label, iova, len) in unmaps {
        t.dbg(label, h.ioas_unmap(ioas, Iova(iova), len));
    }
    t.val("pinned after unmap", r.pinned_pages());
    map_unmap_expectations(t);
}

fn map_unmap_expectations(t: &mut Trace) {
    t.expect("map overlapping", Err(EEXIST));
    t.expect("map unaligned length", Err(EINVAL));
    t.expect("map zero length", Err(EINVAL));
    t.expect("unmap partial middle", Err(ENOENT));
    t.expect("unmap cutting the end", Err(ENOENT));
    t.expect("unmap whole", Ok("65536"));
    t.expect("unmap again", Err(ENOENT));
    t.expect("pinned without domain", Ok("0"));
    t.expect("pinned with domain", Ok("16"));
    t.expect("pinned after unmap", Ok("0"));
}

/// `IOMMU_IOAS_MAP_FILE` of a memfd.
pub fn map_file(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let Ok(ioas) = t.id("ioas_alloc", h.ioas_alloc()) else {
        return;
    };
    if t.id("mock_device", r.add_device(PtId::Ioas(ioas), false))
        .is_err()
    {
        return;
    }
    let f = |offset| MapSource::File { fd: m.fd(), offset };
    t.dbg(
        "map_file whole",
        h.ioas_map(ioas, fixed(BASE), f(0), 64 << 10, Access::RW),
    );
    t.val("pinned after map_file", r.pinned_pages());
    t.dbg(
        "map_file at offset, any iova",
        h.ioas_map(ioas, IovaPlacement::Any, f(4 * K4), 4 * K4, Access::RW),
    );
    t.dbg(
        "map_file past end of file",
        h.ioas_map(
            ioas,
            fixed(BASE + 0x10_0000),
            f(60 << 10),
            4 * K4,
            Access::RW,
        ),
    );
    t.dbg(
        "map_file offset overflow",
        h.ioas_map(
            ioas,
            fixed(BASE + 0x10_0000),
            f(u64::MAX - K4 + 1),
            2 * K4,
            Access::RW,
        ),
    );
    t.dbg(
        "map_file unaligned offset at aligned iova",
        h.ioas_map(ioas, fixed(BASE + 0x10_0000), f(100), K4, Access::RW),
    );
    t.dbg(
        "map_file overlapping",
        h.ioas_map(ioas, fixed(BASE), f(0), K4, Access::RW),
    );
    t.dbg(
        "unmap file mapping",
        h.ioas_unmap(ioas, Iova(BASE), 64 << 10),
    );
    t.dbg("unmap all", h.ioas_unmap(ioas, Iova(0), u64::MAX));
    t.val("pinned after unmap", r.pinned_pages());

    t.expect("map_file whole", Ok("Iova(16777216)"));
    t.expect("pinned after map_file", Ok("16"));
    t.expect("map_file overlapping", Err(EEXIST));
    t.expect("unmap file mapping", Ok("65536"));
}

/// `IOMMU_IOAS_COPY`, including the sub-range question.
pub fn copy(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let (Ok(src), Ok(dst)) = (
        t.id("ioas_alloc src", h.ioas_alloc()),
        t.id("ioas_alloc dst", h.ioas_alloc()),
    ) else {
        return;
    };
    for (label, ioas) in [("mock_device src", src), ("mock_device dst", dst)] {
        if t.id(label, r.add_device(PtId::Ioas(ioas), false)).is_err() {
            return;
        }
    }
    let a = MapSource::UserVa(m.a.va());
    let b = MapSource::UserVa(m.b.va());
    let (alen, blen) = (m.a.len(), m.b.len());
    t.dbg("map a", h.ioas_map(src, fixed(BASE), a, alen, Access::RW));
    let after_a = fixed(BASE + alen);
    t.dbg(
        "map b after a",
        h.ioas_map(src, after_a, b, blen, Access::RW),
    );
    t.val("pinned after maps", r.pinned_pages());
    let any = IovaPlacement::Any;
    let (rw, ro) = (Access::RW, Access::READ);
    let b_last_page = BASE + alen + blen - K4;
    // (label, destination IOAS, placement, source IOVA, length, access)
    let sharing = [
        ("copy whole mapping", dst, fixed(0x200_0000), BASE, alen, rw),
        (
            "copy sub-range of one mapping",
            dst,
            fixed(0x300_0000),
            BASE + 4 * K4,
            4 * K4,
            rw,
        ),
        (
            "copy spanning two mappings",
            dst,
            any,
            BASE + 12 * K4,
            8 * K4,
            ro,
        ),
    ];
    let refused_and_self = [
        (
            "copy from unmapped range",
            dst,
            fixed(0x400_0000),
            0x500_0000,
            K4,
            rw,
        ),
        (
            "copy range with a hole",
            dst,
            fixed(0x400_0000),
            b_last_page,
            2 * K4,
            rw,
        ),
        ("copy onto used iova", dst, fixed(0x200_0000), BASE, K4, rw),
        (
            "copy unaligned length",
            dst,
            fixed(0x400_0000),
            BASE,
            100,
            rw,
        ),
        ("copy within one ioas", src, fixed(0x600_0000), BASE, K4, rw),
    ];
    for (label, to, place, from, len, access) in sharing {
        t.dbg(label, h.ioas_copy(to, place, src, Iova(from), len, access));
    }
    t.val("pinned after copies", r.pinned_pages());
    for (label, to, place, from, len, access) in refused_and_self {
        t.dbg(label, h.ioas_copy(to, place, src, Iova(from), len, access));
    }
    let unmap =
        |t: &mut Trace, label, ioas, iova, len| t.dbg(label, h.ioas_unmap(ioas, Iova(iova), len));
    unmap(t, "unmap part of sub-range copy", dst, 0x300_0000, 2 * K4);
    unmap(t, "unmap sub-range copy", dst, 0x300_0000, 4 * K4);
    unmap(t, "unmap source", src, 0, u64::MAX);
    t.val("pinned with only copies left", r.pinned_pages());
    unmap(t, "unmap copies", dst, 0, u64::MAX);
    t.val("pinned at end", r.pinned_pages());
    copy_expectations(t);
}

fn copy_expectations(t: &mut Trace) {
    t.expect("copy whole mapping", Ok("Iova(33554432)"));
    // Question 1 (docs/kernel-findings.md): the uAPI comment says COPY
    // takes whole mappings; iopt_get_pages takes the area *containing* the
    // start. The kernel accepts the sub-range and the copy is a mapping of
    // its own (unmapping half of it is refused).
    t.expect("copy sub-range of one mapping", Ok("Iova(50331648)"));
    t.expect("copy spanning two mappings", Ok("Iova(16777216)"));
    t.expect("unmap part of sub-range copy", Err(ENOENT));
    t.expect("unmap sub-range copy", Ok("16384"));
    t.expect("pinned after copies", Ok("20"));
    t.expect("copy from unmapped range", Err(ENOENT));
    t.expect("copy onto used iova", Err(EEXIST));
    t.expect("pinned at end", Ok("0"));
}

/// The same pages in two IOASes, by MAP twice and by MAP + COPY: pin
/// counts (per page, from the kernel) and pinned-page accounting.
pub fn pinning(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let (Ok(one), Ok(two)) = (
        t.id("ioas_alloc 1", h.ioas_alloc()),
        t.id("ioas_alloc 2", h.ioas_alloc()),
    ) else {
        return;
    };
    for (label, ioas) in [("mock_device 1", one), ("mock_device 2", two)] {
        if t.id(label, r.add_device(PtId::Ioas(ioas), false)).is_err() {
            return;
        }
    }
    let (va, len) = (m.b.va(), m.b.len());
    let b = MapSource::UserVa(va);
    t.dbg(
        "map into 1",
        h.ioas_map(one, fixed(BASE), b, len, Access::RW),
    );
    t.val("pinned after one map", r.pinned_pages());
    let once = r.pin_count(va, len);
    t.dbg(
        "map into 2",
        h.ioas_map(two, fixed(BASE), b, len, Access::RW),
    );
    t.val("pinned after two maps", r.pinned_pages());
    let twice_map = r.pin_count(va, len);
    t.dbg("unmap 2", h.ioas_unmap(two, Iova(BASE), len));
    t.dbg(
        "copy 1 into 2",
        h.ioas_copy(two, fixed(BASE), one, Iova(BASE), len, Access::RW),
    );
    t.val("pinned after map and copy", r.pinned_pages());
    let twice_copy = r.pin_count(va, len);
    t.dbg("unmap 1", h.ioas_unmap(one, Iova(BASE), len));
    t.val("pinned with only the copy", r.pinned_pages());

    t.expect("pinned after one map", Ok("4"));
    t.expect("pinned after two maps", Ok("8"));
    t.expect("pinned after map and copy", Ok("4"));
    t.expect("pinned with only the copy", Ok("4"));
    if let (Some(once), Some(map), Some(copy)) = (once, twice_map, twice_copy) {
        let want = (Ok(1), Ok(2), Ok(1));
        t.check(
            "pin count per page: one map 1, two maps 2, map+copy 1",
            (once, map, copy) == want,
            format!("one map {once:?}, two maps {map:?}, map+copy {copy:?}"),
        );
    }
}

/// `IOMMU_IOAS_ALLOW_IOVAS` and `IOMMU_IOAS_IOVA_RANGES`.
pub fn allow_iovas(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let Ok(ioas) = t.id("ioas_alloc", h.ioas_alloc()) else {
        return;
    };
    if t.id("mock_device", r.add_device(PtId::Ioas(ioas), false))
        .is_err()
    {
        return;
    }
    let a = MapSource::UserVa(m.a.va());
    let allowed = range(0x200_0000, 0x2ff_ffff);
    t.dbg("allow one range", h.ioas_allow_iovas(ioas, &[allowed]));
    t.dbg("iova_ranges after allow", h.ioas_iova_ranges(ioas));
    t.dbg(
        "map any inside allowed",
        h.ioas_map(ioas, IovaPlacement::Any, a, 4 * K4, Access::RW),
    );
    t.dbg(
        "map fixed outside allowed",
        h.ioas_map(ioas, fixed(BASE), a, 4 * K4, Access::RW),
    );
    t.dbg(
        "map fixed inside allowed",
        h.ioas_map(ioas, fixed(0x280_0000), a, 4 * K4, Access::RW),
    );
    t.dbg(
        "allow range excluding a mapping",
        h.ioas_allow_iovas(ioas, &[range(0x300_0000, 0x3ff_ffff)]),
    );
    t.dbg(
        "allow overlapping ranges",
        h.ioas_allow_iovas(
            ioas,
            &[range(0x200_0000, 0x2ff_ffff), range(0x280_0000, 0x380_0000)],
        ),
    );
    t.dbg(
        "allow inverted range",
        h.ioas_allow_iovas(
            ioas,
            &[IovaRange {
                first: Iova(0x300_0000),
                last: Iova(0x200_0000),
            }],
        ),
    );
    t.dbg("allow everything again", h.ioas_allow_iovas(ioas, &[]));
    t.dbg("iova_ranges at end", h.ioas_iova_ranges(ioas));
    t.dbg("unmap all", h.ioas_unmap(ioas, Iova(0), u64::MAX));
    t.expect("allow one range", Ok("()"));
    t.expect("allow everything again", Ok("()"));
}

/// A file mapping reaching past the end of the file, made before any
/// domain: accepted, then the first attach has to pin it and fails.
fn file_past_eof_then_attach(r: &dyn Rig, t: &mut Trace, m: &Mem, ioas: IoasId) {
    let h = r.host();
    let f = MapSource::File {
        fd: m.fd(),
        offset: 60 << 10,
    };
    let at = fixed(BASE + 0x10_0000);
    let map = h.ioas_map(ioas, at, f, 4 * K4, Access::RW);
    t.dbg("map_file past end without domain", map);
    let dev = r.add_device(PtId::Ioas(ioas), false);
    t.id("mock_device on ioas with unpinnable file mapping", dev)
        .ok();
    let unmap = h.ioas_unmap(ioas, Iova(BASE + 0x10_0000), 4 * K4);
    t.dbg("unmap unpinnable file mapping", unmap);
}

/// Edge cases of the kernel's IOAS code that the simulator's documentation
/// makes claims about: an unmap cut at its end removes the mappings before
/// the cut; a file mapping past EOF fails when first pinned; COPY keeps the
/// source pages' writability; pins follow the IOAS's domains.
pub fn edges(r: &dyn Rig, t: &mut Trace, m: &Mem) {
    let h = r.host();
    let (Ok(one), Ok(two)) = (
        t.id("ioas_alloc 1", h.ioas_alloc()),
        t.id("ioas_alloc 2", h.ioas_alloc()),
    ) else {
        return;
    };
    file_past_eof_then_attach(r, t, m, one);
    let Ok(d) = t.id("mock_device", r.add_device(PtId::Ioas(one), false)) else {
        return;
    };
    // Two adjacent mappings; an unmap that covers the first and cuts the
    // second.
    let a = MapSource::UserVa(m.a.va());
    t.dbg(
        "map first",
        h.ioas_map(one, fixed(BASE), a, 4 * K4, Access::RW),
    );
    t.dbg(
        "map second",
        h.ioas_map(
            one,
            fixed(BASE + 4 * K4),
            MapSource::UserVa(m.a.va() + 4 * K4),
            4 * K4,
            Access::RW,
        ),
    );
    t.dbg(
        "unmap covering first, cutting second",
        h.ioas_unmap(one, Iova(BASE), 6 * K4),
    );
    t.dbg("first still mapped", h.ioas_unmap(one, Iova(BASE), 4 * K4));
    t.dbg(
        "second still mapped",
        h.ioas_unmap(one, Iova(BASE + 4 * K4), 4 * K4),
    );
    // COPY asking for WRITE from read-only pages.
    t.dbg(
        "map read-only",
        h.ioas_map(one, fixed(BASE), a, 4 * K4, Access::READ),
    );
    t.dbg(
        "copy read-only pages as writable",
        h.ioas_copy(two, fixed(BASE), one, Iova(BASE), 4 * K4, Access::RW),
    );
    t.dbg(
        "copy read-only pages as readable",
        h.ioas_copy(two, fixed(BASE), one, Iova(BASE), 4 * K4, Access::READ),
    );
    t.val("pinned, ioas 2 without domain", r.pinned_pages());
    // The device moves to IOAS 2: IOAS 1 has no domain left.
    t.id(
        "replace device to ioas 2",
        r.attach(d, None, PtId::Ioas(two)),
    )
    .ok();
    t.val("pinned after replace", r.pinned_pages());
    t.dbg(
        "iova_ranges of ioas 1 without domain",
        h.ioas_iova_ranges(one),
    );
    t.id("back to ioas 1", r.attach(d, None, PtId::Ioas(one)))
        .ok();
    t.val("pinned after moving back", r.pinned_pages());

    t.expect("map_file past end without domain", Ok("Iova(17825792)"));
    t.expect(
        "mock_device on ioas with unpinnable file mapping",
        Err(EINVAL),
    );
    t.expect("unmap covering first, cutting second", Err(ENOENT));
    // The refused unmap has removed the mapping before the cut.
    t.expect("first still mapped", Err(ENOENT));
    t.expect("second still mapped", Ok("16384"));
    t.expect("copy read-only pages as writable", Err(libc::EPERM));
}
