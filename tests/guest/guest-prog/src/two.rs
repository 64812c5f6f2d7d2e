//! Two endpoints in one domain: through one type1 container, and through
//! one iommufd IOAS (where the kernel shows which hardware page table each
//! endpoint got, and a bound but unattached device shows the blocking
//! domain).

use crate::sys::page;
use crate::translated::{Ep, FaultLog, IOVA_DST, IOVA_SRC, expect_fault, randomize};
use crate::{
    CMD_MEM_BME, Endpoint, Report, ST_OK, ST_WRITE_FAULT, copy_cmd, diff, fill_cmd, pattern_byte,
    vfio,
};

/// Two pages: one for each endpoint.
fn len() -> usize {
    2 * page()
}

type Pair = [Endpoint<vfio::Device>; 2];

/// The two endpoints, completing on MSI-X `vector` (`u32::MAX`: none).
fn pair(d0: vfio::Device, d1: vfio::Device, vector: u32) -> Pair {
    [Endpoint { bar: d0, vector }, Endpoint { bar: d1, vector }]
}

/// Binds both endpoints to vfio-pci.
fn bind_both(r: &mut Report, name: &str, eps: &[Ep; 2]) -> bool {
    let bound: Vec<_> = eps.iter().map(|e| vfio::bind_vfio_pci(&e.path)).collect();
    r.check(name, bound.iter().all(Result::is_ok), format!("{bound:?}"))
}

/// Endpoint `i` fills page `i` of `buf` (mapped at IOVA_DST) with its own
/// pattern through the one mapping; both pages are checked.
fn fill_halves(r: &mut Report, name: &str, d: &Pair, buf: &vfio::Buf, pats: [u32; 2]) {
    let half = page() as u32;
    let outs: Vec<_> = (0..2)
        .map(|i| {
            d[i].run(&fill_cmd(
                IOVA_DST + u64::from(half) * i as u64,
                half,
                pats[i],
            ))
        })
        .collect();
    let got = buf.snapshot();
    let want: Vec<u8> = (0..len())
        .map(|i| pattern_byte(pats[i / page()], i % page()))
        .collect();
    r.check(
        name,
        outs.iter().all(|o| o.status == ST_OK) && got == want,
        format!(
            "ep1 page 0, ep2 page 1 of IOVA {IOVA_DST:#x}: {outs:?}; {}",
            diff(&got, &want)
        ),
    );
}

/// After the one unmap, a write by each endpoint to its page is refused
/// and reported with its own source ID.
fn refused_after_unmap(
    r: &mut Report,
    log: &mut dyn FaultLog,
    prefix: &str,
    eps: &[Ep; 2],
    d: &Pair,
) {
    for (i, (e, dev)) in eps.iter().zip(d).enumerate() {
        let at = IOVA_DST + page() as u64 * i as u64;
        let cmd = fill_cmd(at, 64, 0xdead_beef);
        let name = format!("{prefix}/ep{}-after-unmap-refused", i + 1);
        expect_fault(r, log, &name, e, dev, &cmd, ST_WRITE_FAULT, at);
    }
}

/// Two endpoints in one domain: both bound to vfio-pci, both groups in
/// ONE type1 container (vfio_iommu_type1 attaches the second group to the
/// first group's domain when the IOMMU accepts it, so both endpoints'
/// context / PASID entries, or virtio-iommu ATTACHes, name one domain),
/// buffers mapped once, DMA from both through the same IOVAs, a fault
/// from each with its own source ID, one unmap refusing both.
pub fn type1(r: &mut Report, log: &mut dyn FaultLog, eps: &[Ep; 2]) {
    if !bind_both(r, "two/bind", eps) {
        return;
    }
    let Some((c, d)) = one_container(r, eps) else {
        return;
    };
    let irqs = [
        crate::translated::enable(r, log, "two/ep1-bus-master-msix", &eps[0], &d[0].bar),
        crate::translated::enable(r, log, "two/ep2-bus-master-msix", &eps[1], &d[1].bar),
    ];
    let (Ok(mut src), Ok(dst)) = (vfio::Buf::new(len()), vfio::Buf::new(len())) else {
        return;
    };
    let maps = (
        c.map(src.va(), IOVA_SRC, len() as u64, false),
        c.map(dst.va(), IOVA_DST, len() as u64, true),
    );
    if !r.check(
        "two/map-once",
        maps.0.is_ok() && maps.1.is_ok(),
        format!("src {IOVA_SRC:#x} read-only, dst {IOVA_DST:#x} read-write: {maps:?}"),
    ) {
        return;
    }
    fill_halves(r, "two/fill-both", &d, &dst, [0x1111_2222, 0x3333_4444]);
    let n = irqs.each_ref().map(|e| e.as_ref().map(|e| e.wait(2000)));
    r.check(
        "two/msix-each",
        n.iter().all(|k| matches!(k, Some(Ok(k)) if *k >= 1)),
        format!("vector 0 of each: {n:?}"),
    );
    copy_and_faults(r, log, eps, &d, &mut src, &dst);
    let before = dst.snapshot();
    let unmapped = c.unmap(IOVA_DST, len() as u64);
    r.check(
        "two/unmap-once",
        matches!(unmapped, Ok(n) if n == len() as u64),
        format!("{unmapped:?}"),
    );
    refused_after_unmap(r, log, "two", eps, &d);
    r.check(
        "two/after-unmap-untouched",
        dst.snapshot() == before,
        "the unmapped buffer kept its bytes",
    );
}

/// Both endpoints' groups in one new type1 container.
fn one_container(r: &mut Report, eps: &[Ep; 2]) -> Option<(vfio::Container, Pair)> {
    let groups: Vec<_> = eps
        .iter()
        .map(|e| crate::sys::iommu_group(&e.path))
        .collect();
    let c = match vfio::Container::new() {
        Ok(c) => c,
        Err(e) => {
            r.check("two/one-container", false, e.to_string());
            return None;
        }
    };
    match (c.attach(&eps[0].path), c.attach(&eps[1].path)) {
        (Ok(d0), Ok(d1)) => {
            r.check(
                "two/one-container",
                groups[0].is_some() && groups[0] != groups[1],
                format!("groups {groups:?} (distinct) in one type1v2 container"),
            );
            Some((c, pair(d0, d1, 0)))
        }
        (a, b) => {
            let e = format!("{:?} / {:?}", a.err(), b.err());
            r.check("two/one-container", false, e);
            None
        }
    }
}

/// Endpoint 2 copies over endpoint 1's page; each endpoint's write to the
/// read-only IOVA is refused and reported with its own source ID.
fn copy_and_faults(
    r: &mut Report,
    log: &mut dyn FaultLog,
    eps: &[Ep; 2],
    d: &Pair,
    src: &mut vfio::Buf,
    dst: &vfio::Buf,
) {
    randomize(src, 0x2545_f491_4f6c_dd1d);
    let o = d[1].run(&copy_cmd(IOVA_SRC, IOVA_DST, page() as u32));
    let (s, got) = (src.snapshot(), dst.snapshot());
    r.check(
        "two/ep2-copy-over-ep1",
        o.status == ST_OK && got[..page()] == s[..page()],
        format!(
            "ep2 copies IOVA {IOVA_SRC:#x} -> {IOVA_DST:#x}: {o:?}; {}",
            diff(&got[..page()], &s[..page()])
        ),
    );
    for (i, (e, dev)) in eps.iter().zip(d).enumerate() {
        let at = IOVA_SRC + 0x40 * i as u64;
        let cmd = fill_cmd(at, 16, 0);
        let name = format!("two/ep{}-write-readonly-refused", i + 1);
        expect_fault(r, log, &name, e, dev, &cmd, ST_WRITE_FAULT, at);
    }
}

/// Two endpoints in one domain through iommufd: both VFIO cdevs bound to
/// one iommufd (blocked until attached: see [`blocked`]) and attached to
/// one IOAS, where the kernel reuses a compatible hardware page table, so
/// both must report the same HWPT ID (one iommu_domain of the guest
/// driver); a buffer mapped once in the IOAS is filled by both, and after
/// one unmap DMA from each is refused and reported with its own source ID.
pub fn iommufd(r: &mut Report, log: &mut dyn FaultLog, eps: &[Ep; 2]) {
    if !bind_both(r, "iommufd/bind", eps) {
        return;
    }
    let fd = match crate::iommufd::Iommufd::new() {
        Ok(f) => f,
        Err(e) => {
            r.check("iommufd/ioas", false, format!("/dev/iommu: {e}"));
            return;
        }
    };
    let d = match (fd.bind(&eps[0].path), fd.bind(&eps[1].path)) {
        (Ok(a), Ok(b)) => pair(a, b, u32::MAX),
        (a, b) => {
            let e = format!("{:?} / {:?}", a.err(), b.err());
            r.check("iommufd/bind-cdev", false, e);
            return;
        }
    };
    for e in &d {
        let cmd = e.bar.config_read16(4).unwrap_or(0);
        let _ = e.bar.config_write16(4, cmd | CMD_MEM_BME);
    }
    blocked(r, log, &eps[0], &d[0]);
    if !attach_both(r, &fd, &d) {
        return;
    }
    let Ok(buf) = vfio::Buf::new(len()) else {
        r.check("iommufd/buffer", false, "mmap failed");
        return;
    };
    let mapped = fd.map(&buf, IOVA_DST);
    if !r.check(
        "iommufd/map-once",
        mapped.is_ok(),
        format!("{:#x} bytes at IOVA {IOVA_DST:#x}: {mapped:?}", len()),
    ) {
        return;
    }
    fill_halves(r, "iommufd/fill-both", &d, &buf, [0x5151_6262, 0x7373_8484]);
    let unmapped = fd.unmap(IOVA_DST, len() as u64);
    r.check(
        "iommufd/unmap-once",
        matches!(unmapped, Ok(n) if n == len() as u64),
        format!("{unmapped:?}"),
    );
    refused_after_unmap(r, log, "iommufd", eps, &d);
}

/// Attaches both bound devices to the IOAS: the kernel must put them on
/// one HWPT.
fn attach_both(r: &mut Report, fd: &crate::iommufd::Iommufd, d: &Pair) -> bool {
    match (fd.attach(&d[0].bar), fd.attach(&d[1].bar)) {
        (Ok(h0), Ok(h1)) => r.check(
            "iommufd/one-hwpt",
            h0 == h1 && h0 != fd.ioas,
            format!(
                "IOAS {}: ep1 attached to HWPT {h0}, ep2 to HWPT {h1}",
                fd.ioas
            ),
        ),
        (a, b) => {
            let e = format!("{:?} / {:?}", a.err(), b.err());
            r.check("iommufd/one-hwpt", false, e)
        }
    }
}

/// A device bound to an iommufd but not attached is blocked: Linux
/// attached its group to a blocking domain, which for VT-d clears the
/// context entry (legacy) or the RID_PASID entry (scalable) and
/// invalidates it. DMA must be refused, for VT-d with a fault about that
/// entry rather than about a page table (a model still using a cached
/// entry of the default domain would walk the default domain's tables).
/// virtio-iommu in Linux 7.2 has no blocking domain: the kernel attaches
/// an empty paging domain instead, so there the fault is a mapping fault.
fn blocked(r: &mut Report, log: &mut dyn FaultLog, ep: &Ep, d: &Endpoint<vfio::Device>) {
    let cmd = fill_cmd(IOVA_DST, 64, 0x0b10_c4ed);
    log.arm();
    let o = d.run(&cmd);
    r.check(
        "iommufd/blocked-before-attach",
        o.status == ST_WRITE_FAULT && o.fault == IOVA_DST,
        format!("bound, not attached: {o:?}"),
    );
    let found = log.find_blocked(ep, IOVA_DST);
    r.check(
        "iommufd/blocked-before-attach/reported",
        found.is_ok(),
        found.unwrap_or_else(|e| e),
    );
}
