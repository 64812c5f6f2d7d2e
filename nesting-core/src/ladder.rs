//! The nest -> shadow -> refuse decision for a passthrough device behind a
//! guest IOMMU model (David Gibson's rule):
//!
//! 1. Ask the host for the exact capabilities, page-table format included,
//!    that the vIOMMU presents. If the host supplies them, **nest**: the
//!    guest's stage-1 tables are walked by the physical IOMMU on top of a
//!    host stage 2.
//! 2. Otherwise use a kernel-managed IOAS, after verifying that it can map
//!    every IOVA range the guest needs with a page size equal to or smaller
//!    than the guest's, and **shadow** the guest's mappings into it.
//! 3. Otherwise **refuse**, listing every check that failed.
//!
//! Everything here is a pure function of what the guest model states it
//! needs ([`GuestIommu`]: its stage-1 format, its own checks of the host's
//! hardware information, what shadowing it needs) and what the host
//! reported; nothing touches the host, and no model is named.

use std::fmt;

use crate::guest::{GuestIommu, HwType, IovaSpace, MapNotice, Stage1};
use crate::host::info::{HostInfo, HwInfo, VtdErrata};
use crate::types::{Iova, IovaRange};

/// What the host offers for one passthrough device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    /// `IOMMU_GET_HW_INFO` for the device.
    pub info: HostInfo,
    /// IOVA ranges an IOAS can map for it (`IOMMU_IOAS_IOVA_RANGES`).
    pub iova_ranges: Vec<IovaRange>,
    /// Smallest page size of its domains (IOAS mapping alignment).
    pub page_size: u64,
    /// The physical IOMMU instance, if known.
    pub unit: Option<u32>,
}

/// The outcome of the ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionKind {
    /// The guest's stage-1 tables are nested on a host stage 2.
    Nested,
    /// The guest's mappings are shadowed into a host IOAS.
    Shadow,
    /// The device cannot be backed.
    Refuse,
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecisionKind::Nested => "nested",
            DecisionKind::Shadow => "shadow",
            DecisionKind::Refuse => "refuse",
        })
    }
}

pub use crate::guest::Check;

/// What the model must adjust to the decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adjustments {
    /// virtio-iommu: the device's `input_range` clipped to the span the
    /// host IOAS can map.
    pub input_range: Option<IovaRange>,
    /// Host holes inside the guest's IOVA space that the model must
    /// announce (virtio-iommu: PROBE `RESV_MEM` properties, subtype
    /// RESERVED).
    pub reserved: Vec<IovaRange>,
    /// Shadow: the alignment of every IOAS mapping (the largest host page
    /// size in the domain).
    pub ioas_page_size: Option<u64>,
    /// Nested VT-d on a host with erratum 772415: the kernel maps the
    /// nesting parent writable, so read-only guest memory is not
    /// write-protected from the device; the VMM should leave read-only
    /// regions out of the stage-2 IOAS.
    pub skip_readonly_s2: bool,
}

/// The ladder's answer with its evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub kind: DecisionKind,
    /// Every check evaluated, nest checks first.
    pub checks: Vec<Check>,
    /// One-line summary for `decision SID <kind>: <reason>`.
    pub reason: String,
    /// What the model must adjust.
    pub adjust: Adjustments,
}

impl Decision {
    /// The one-line summary.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// Whether a check called `name` was evaluated and failed.
    pub fn has_failed(&self, name: &str) -> bool {
        self.failed().any(|c| c.name == name)
    }
}

impl fmt::Display for Decision {
    /// `decision: KIND`, `reason: ...`, then one line per check, each
    /// line ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.kind)?;
        writeln!(f, "reason: {}", self.reason)?;
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {}: {}", c.name, c.detail)?;
        }
        Ok(())
    }
}

/// Decides how to back one passthrough device.
pub fn decide(guest: &dyn GuestIommu, host: &HostView) -> Decision {
    decide_domain(guest, std::slice::from_ref(host))
}

/// Decides for several devices sharing one guest domain: they nest only
/// if each nests and all sit behind the same physical IOMMU; they shadow
/// into one IOAS that every one of them can map.
pub fn decide_domain(guest: &dyn GuestIommu, hosts: &[HostView]) -> Decision {
    let Some(first) = hosts.first() else {
        let checks = vec![Check::fail(
            "devices",
            "the domain has no device".to_string(),
        )];
        return finish(
            DecisionKind::Refuse,
            checks,
            Adjustments::default(),
            "no device to back",
        );
    };
    let mut checks = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut own = nest_checks(guest, h);
        if hosts.len() > 1 {
            own.iter_mut()
                .for_each(|c| c.detail = format!("device {i}: {}", c.detail));
        }
        checks.extend(own);
    }
    if hosts.len() > 1 {
        checks.extend(hosts[1..].iter().map(|h| same_iommu(first, h)));
    }
    if checks.iter().all(|c| c.passed) {
        return nested(guest, first, checks);
    }
    let nest_failed = checks.len();
    let view = combined(hosts);
    let adjust = shadow_checks(guest, &view, &mut checks);
    conclude(checks, nest_failed, adjust)
}

/// Decides for a device hot-plugged into a domain whose devices
/// (`existing`) were decided `current`. The new device must fit that
/// decision: nested needs the same physical IOMMU and an exact match;
/// shadow needs it to share the IOAS (page size and ranges). Otherwise it
/// is refused, and nothing about the existing devices changes. With no
/// existing device this is [`decide`].
pub fn decide_hotplug(
    guest: &dyn GuestIommu,
    existing: &[HostView],
    current: DecisionKind,
    new: &HostView,
) -> Decision {
    let Some(first) = existing.first() else {
        return decide(guest, new);
    };
    let mut checks = Vec::new();
    match current {
        DecisionKind::Nested => {
            checks.extend(nest_checks(guest, new));
            checks.extend(existing.iter().map(|h| same_iommu(h, new)));
            if checks.iter().all(|c| c.passed) {
                return nested(guest, first, checks);
            }
            let why = summary(&checks);
            finish(
                DecisionKind::Refuse,
                checks,
                Adjustments::default(),
                &format!("cannot join the nested domain ({why})"),
            )
        }
        DecisionKind::Shadow => {
            let before = combined(existing);
            let mut all = existing.to_vec();
            all.push(new.clone());
            let adjust = shadow_checks(guest, &combined(&all), &mut checks);
            checks.push(ioas_page_size(&before, new));
            checks.push(ioas_ranges(guest, &before, new));
            if checks.iter().all(|c| c.passed) {
                let reason = format!(
                    "joins the shadowed domain's IOAS ({:#x}-byte pages)",
                    before.page_size
                );
                return finish(DecisionKind::Shadow, checks, adjust, &reason);
            }
            let why = summary(&checks);
            finish(
                DecisionKind::Refuse,
                checks,
                Adjustments::default(),
                &format!("cannot share the domain's IOAS ({why})"),
            )
        }
        DecisionKind::Refuse => {
            checks.push(Check::fail(
                "existing-kind",
                "the domain's devices were refused; there is nothing to join".to_string(),
            ));
            finish(
                DecisionKind::Refuse,
                checks,
                Adjustments::default(),
                "the domain was refused",
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Assembling decisions.

/// iommufd's VT-d nesting parent on a host with erratum 772415 (SPR17) is
/// made writable (intel/iommu.c, PT_FEAT_VTDSS_FORCE_WRITEABLE): stage 2
/// cannot write-protect read-only guest memory.
fn stage2_readonly_unprotected(info: &HostInfo) -> bool {
    matches!(info.hw, HwInfo::IntelVtd { errata, .. } if errata.contains(VtdErrata::ERRATA_772415_SPR17))
}

fn finish(kind: DecisionKind, checks: Vec<Check>, adjust: Adjustments, reason: &str) -> Decision {
    Decision {
        kind,
        checks,
        reason: reason.to_string(),
        adjust,
    }
}

/// `name: detail` of the first failure, plus the names of the others.
fn summary(checks: &[Check]) -> String {
    let mut failed = checks.iter().filter(|c| !c.passed);
    let Some(first) = failed.next() else {
        return "all checks passed".to_string();
    };
    let rest: Vec<&str> = failed.map(|c| c.name).collect();
    match rest.is_empty() {
        true => format!("{}: {}", first.name, first.detail),
        false => format!("{}: {}; also {}", first.name, first.detail, rest.join(", ")),
    }
}

fn nested(guest: &dyn GuestIommu, host: &HostView, checks: Vec<Check>) -> Decision {
    let adjust = Adjustments {
        skip_readonly_s2: stage2_readonly_unprotected(&host.info),
        ..Adjustments::default()
    };
    let reason = format!(
        "host {} supplies the guest {}'s stage-1 format and every capability it presents",
        host.info.hw.kind_name(),
        guest.model_name()
    );
    finish(DecisionKind::Nested, checks, adjust, &reason)
}

/// `checks[..nest_len]` are the (failed) nest checks, the rest shadow.
fn conclude(checks: Vec<Check>, nest_len: usize, adjust: Adjustments) -> Decision {
    let nest = summary(&checks[..nest_len]);
    let shadow = &checks[nest_len..];
    if shadow.iter().all(|c| c.passed) {
        let pg = adjust.ioas_page_size.unwrap_or(0);
        let mut reason = format!(
            "cannot nest ({nest}); the host IOAS maps the guest's IOVA space with {pg:#x}-byte pages"
        );
        if let Some(r) = adjust.input_range {
            let n = adjust.reserved.len();
            reason += &format!("; input range {r}, {n} host hole(s) announced as RESV_MEM");
        }
        return finish(DecisionKind::Shadow, checks, adjust, &reason);
    }
    let reason = format!("cannot nest ({nest}); cannot shadow ({})", summary(shadow));
    finish(
        DecisionKind::Refuse,
        checks,
        Adjustments::default(),
        &reason,
    )
}

/// One view of several hosts for a shared IOAS: the ranges all of them can
/// map and the largest page size.
fn combined(hosts: &[HostView]) -> HostView {
    let mut ranges = hosts
        .first()
        .map(|h| normalize(&h.iova_ranges))
        .unwrap_or_default();
    for h in hosts.iter().skip(1) {
        ranges = intersect(&ranges, &normalize(&h.iova_ranges));
    }
    HostView {
        info: hosts.first().map(|h| h.info.clone()).unwrap_or_default(),
        iova_ranges: ranges,
        page_size: hosts.iter().map(|h| h.page_size).max().unwrap_or(0),
        unit: None,
    }
}

/// iommufd: a nested HWPT and its vIOMMU belong to one physical IOMMU
/// (`iommufd_viommu_alloc` takes the device's IOMMU; a nested domain
/// attaches only to devices of that instance, `paging_domain_compatible` in
/// intel/nested.c, `arm_vsmmu_init` in arm-smmu-v3-iommufd.c). Servers carry
/// several identical units, so identical hardware information proves
/// nothing: with a unit unknown the check fails closed (the devices may
/// still be shadowed). [`HostView::unit`] comes from
/// `SimIommufd::iommu_of` on the simulated host and from
/// [`crate::host::sysfs_iommu_unit`] on a real one.
fn same_iommu(a: &HostView, b: &HostView) -> Check {
    let (passed, detail) = match (a.unit, b.unit) {
        (Some(x), Some(y)) => (x == y, format!("physical IOMMU unit {x} vs {y}")),
        _ => (
            false,
            "physical IOMMU unit unknown: cannot show the devices share one".to_string(),
        ),
    };
    Check::new("same-iommu", passed, detail)
}

// ---------------------------------------------------------------------------
// Nest checks.

fn nest_checks(guest: &dyn GuestIommu, host: &HostView) -> Vec<Check> {
    let mut out = Vec::new();
    match guest.stage1() {
        Stage1::WalkedBy(want) => {
            let have = HwType::of(&host.info.hw);
            out.push(Check::new(
                "host-type",
                have == want,
                format!(
                    "guest {} needs host type {want}, host is {have}",
                    guest.model_name()
                ),
            ));
        }
        Stage1::NoFormat(why) => out.push(Check::fail("stage1-format", why.to_string())),
    }
    out.extend(guest.nest_checks(&host.info));
    out
}

// ---------------------------------------------------------------------------
// Shadow checks.

/// Appends the shadow checks for `host` (possibly several hosts combined)
/// and returns what the model must adjust.
fn shadow_checks(guest: &dyn GuestIommu, host: &HostView, out: &mut Vec<Check>) -> Adjustments {
    let needs = guest.shadow_needs();
    match needs.map_notice {
        MapNotice::Requests => {}
        MapNotice::Invalidation(c) => out.push(c),
        // Nothing else matters when the VMM never sees a mapping.
        MapNotice::Never(c) => {
            out.push(c);
            return Adjustments::default();
        }
    }
    out.push(page_size_check(needs.page_size, host));
    match &needs.iova {
        IovaSpace::Fixed(space) => {
            out.push(coverage_check(space, host));
            Adjustments {
                ioas_page_size: Some(host.page_size),
                ..Adjustments::default()
            }
        }
        IovaSpace::Announced {
            range,
            max_holes,
            room,
        } => announced(*range, *max_holes, room, host, out),
    }
}

fn page_size_check(guest_page: u64, host: &HostView) -> Check {
    Check::new(
        "page-size",
        host.page_size != 0 && host.page_size <= guest_page,
        format!(
            "host page size {:#x} <= guest page size {guest_page:#x}",
            host.page_size
        ),
    )
}

/// A guest that cannot be told of host holes needs every address of its
/// space mappable.
fn coverage_check(space: &[IovaRange], host: &HostView) -> Check {
    let missing = subtract(space, &host.iova_ranges);
    let span = |r: &[IovaRange]| {
        r.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Check::new(
        "iova-coverage",
        missing.is_empty(),
        match missing.first() {
            None => format!("host IOAS covers the guest's IOVA space {}", span(space)),
            Some(m) => format!(
                "host IOAS cannot map {m} ({} gap(s)) of the guest's IOVA space {}",
                missing.len(),
                span(space)
            ),
        },
    )
}

/// A guest offered `range` sees it clipped to the span the host maps, with
/// the host's holes inside announced (up to `max_holes`).
fn announced(
    range: IovaRange,
    max_holes: usize,
    room: &str,
    host: &HostView,
    out: &mut Vec<Check>,
) -> Adjustments {
    let host_ranges = normalize(&host.iova_ranges);
    let clipped = match (host_ranges.first(), host_ranges.last()) {
        (Some(lo), Some(hi)) => IovaRange::new(range.first.max(lo.first), range.last.min(hi.last)),
        _ => None,
    };
    out.push(Check::new(
        "input-range",
        clipped.is_some(),
        match clipped {
            Some(r) => format!("guest input range {range} clipped to {r}"),
            None => format!("guest input range {range} misses every host IOVA range"),
        },
    ));
    let Some(clipped) = clipped else {
        return Adjustments::default();
    };
    let holes = subtract(&[clipped], &host_ranges);
    out.push(Check::new(
        "reserved-regions",
        holes.len() <= max_holes,
        format!("{} host hole(s) to announce; {room}", holes.len()),
    ));
    Adjustments {
        input_range: Some(clipped),
        reserved: holes,
        ioas_page_size: Some(host.page_size),
        ..Adjustments::default()
    }
}

/// iommufd io_pagetable.c iopt_check_iova_alignment(): attaching a domain
/// with a larger page size than the IOAS's areas are aligned to fails with
/// EADDRINUSE.
fn ioas_page_size(before: &HostView, new: &HostView) -> Check {
    Check::new(
        "ioas-page-size",
        new.page_size <= before.page_size,
        format!(
            "new device page size {:#x} <= IOAS alignment {:#x}",
            new.page_size, before.page_size
        ),
    )
}

/// iommufd io_pagetable.c iopt_table_enforce_dev_resv_regions(): a device
/// whose reserved regions overlap existing mappings cannot attach, so it
/// must map everything the guest was already given.
fn ioas_ranges(guest: &dyn GuestIommu, before: &HostView, new: &HostView) -> Check {
    let span = guest.shadow_needs().iova.ranges();
    let promised = intersect(&normalize(&span), &normalize(&before.iova_ranges));
    let missing = subtract(&promised, &new.iova_ranges);
    Check::new(
        "ioas-ranges",
        missing.is_empty(),
        match missing.first() {
            None => "new device maps every range the domain already uses".to_string(),
            Some(m) => format!(
                "new device cannot map {m} ({} gap(s)) the domain already uses",
                missing.len()
            ),
        },
    )
}

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------
// Range arithmetic on inclusive ranges.

/// Sorted, with overlapping and adjacent ranges merged.
fn normalize(ranges: &[IovaRange]) -> Vec<IovaRange> {
    let mut v = ranges.to_vec();
    v.sort_by_key(|r| r.first);
    let mut out: Vec<IovaRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(m) if m.last.0 == u64::MAX || r.first.0 <= m.last.0 + 1 => {
                m.last = m.last.max(r.last)
            }
            _ => out.push(r),
        }
    }
    out
}

/// Addresses in both lists.
fn intersect(a: &[IovaRange], b: &[IovaRange]) -> Vec<IovaRange> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if let Some(r) = IovaRange::new(x.first.max(y.first), x.last.min(y.last)) {
                out.push(r);
            }
        }
    }
    normalize(&out)
}

/// Addresses of `a` not in any range of `b`.
fn subtract(a: &[IovaRange], b: &[IovaRange]) -> Vec<IovaRange> {
    let holes = normalize(b);
    let mut out = Vec::new();
    for r in normalize(a) {
        let mut cursor = Some(r.first);
        for h in holes.iter().filter(|h| h.overlaps(&r)) {
            let Some(start) = cursor else { break };
            if start < h.first {
                out.push(IovaRange {
                    first: start,
                    last: Iova(h.first.0 - 1),
                });
            }
            cursor = h.last.checked_add(1).filter(|next| *next <= r.last);
        }
        if let Some(start) = cursor {
            out.push(IovaRange {
                first: start,
                last: r.last,
            });
        }
    }
    out
}
