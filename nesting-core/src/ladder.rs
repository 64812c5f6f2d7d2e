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
//! Everything here is a pure function of the guest configuration and what
//! the host reported; nothing touches the host.

use std::fmt;

use crate::bits::Field;
use crate::guest::{
    GuestModel, RESV_MEM_PROPERTY_SIZE, Smmuv3Config, Smmuv3Granules, Smmuv3Stages,
    VirtioIommuConfig, VtdAddressWidth, VtdConfig, VtdMode,
};
use crate::host::info::{HostCaps, HostInfo, HwInfo, VtdErrata, cap, ecap, idr};
use crate::types::{Iova, IovaRange};

#[cfg(test)]
mod tests;

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

/// One check of the ladder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short stable name (used by tests and scripts).
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// One line: what was compared.
    pub detail: String,
}

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
    /// Nested VT-d with `flts=1 slts=1`: the guest may program PASID
    /// entries with second-stage (or nested) translation, which a nested
    /// HWPT cannot carry (the host supplies the second stage). The VT-d
    /// passthrough backend leaves each such PASID blocked and records a
    /// fault for it (0x5B, unless FPD); first-stage and pass-through
    /// PASIDs of the same device nest as usual. Shadowing them beside
    /// nested PASIDs is not implemented.
    pub second_stage_pasids_blocked: bool,
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

/// VT-d 3.15 "Handling Requests to Interrupt Address Range": requests to
/// 0xfee0_0000..=0xfeef_ffff are never translated on x86, so a VT-d guest
/// never uses them for DMA and the host may keep them reserved.
pub const VTD_INTERRUPT_RANGE: IovaRange = IovaRange {
    first: Iova(0xfee0_0000),
    last: Iova(0xfeef_ffff),
};

/// SMMU_IIDR fields (IHI 0070 6.3.13), used for the kernel's errata list.
mod iidr {
    use super::Field;
    /// Revision.
    pub const REVISION: Field = Field::bits(15, 12);
    /// Variant.
    pub const VARIANT: Field = Field::bits(19, 16);
    /// ProductID.
    pub const PRODUCT_ID: Field = Field::bits(31, 20);
    /// Implementer (JEP106): Arm.
    pub const IMPLEMENTER: Field = Field::bits(11, 0);
    /// `IIDR_IMPLEMENTER_ARM` (arm-smmu-v3.c).
    pub const ARM: u64 = 0x43b;
    /// `IIDR_PRODUCTID_ARM_MMU_600`.
    pub const MMU_600: u64 = 0x483;
    /// `IIDR_PRODUCTID_ARM_MMU_700`.
    pub const MMU_700: u64 = 0x487;
}

/// IDR0.TTF bit for the AArch64 format (IHI 0070 6.3.1; `IDR0_TTF_AARCH64`).
const TTF_AARCH64: u64 = 0b10;
/// IDR0.TTENDIAN value for big-endian only (IHI 0070 6.3.1).
const TTENDIAN_BE_ONLY: u64 = 0b11;

/// Decides how to back one passthrough device.
pub fn decide(guest: &GuestModel, host: &HostView) -> Decision {
    decide_domain(guest, std::slice::from_ref(host))
}

/// Decides for several devices sharing one guest domain: they nest only
/// if each nests and all sit behind the same physical IOMMU; they shadow
/// into one IOAS that every one of them can map.
pub fn decide_domain(guest: &GuestModel, hosts: &[HostView]) -> Decision {
    let Some(first) = hosts.first() else {
        let checks = vec![fail("devices", "the domain has no device".to_string())];
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
    guest: &GuestModel,
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
            checks.push(fail(
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

fn check(name: &'static str, passed: bool, detail: String) -> Check {
    Check {
        name,
        passed,
        detail,
    }
}

fn fail(name: &'static str, detail: String) -> Check {
    check(name, false, detail)
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

fn nested(guest: &GuestModel, host: &HostView, checks: Vec<Check>) -> Decision {
    let mut adjust = Adjustments::default();
    if let (GuestModel::Vtd(c), HwInfo::IntelVtd { errata, .. }) = (guest, &host.info.hw) {
        adjust.skip_readonly_s2 = errata.contains(VtdErrata::ERRATA_772415_SPR17);
        adjust.second_stage_pasids_blocked = c.flts && c.slts;
    }
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
    check("same-iommu", passed, detail)
}

// ---------------------------------------------------------------------------
// Nest checks.

fn nest_checks(guest: &GuestModel, host: &HostView) -> Vec<Check> {
    match guest {
        GuestModel::Vtd(c) => vtd_nest_checks(c, &host.info),
        GuestModel::Smmuv3(c) => smmuv3_nest_checks(c, &host.info),
        // virtio 1.3 5.13: the driver sends MAP/UNMAP requests; there is
        // no page-table format for a physical IOMMU to walk.
        GuestModel::VirtioIommu(_) => vec![fail(
            "stage1-format",
            "virtio-iommu has no page-table format a physical IOMMU could walk".to_string(),
        )],
    }
}

fn host_type(guest: &'static str, want: &'static str, info: &HostInfo) -> Check {
    let have = info.hw.kind_name();
    check(
        "host-type",
        have == want,
        format!("guest {guest} needs host type {want}, host is {have}"),
    )
}

fn yes(b: bool) -> u8 {
    u8::from(b)
}

fn vtd_nest_checks(c: &VtdConfig, info: &HostInfo) -> Vec<Check> {
    let mut out = vec![host_type("vtd", "intel-vtd", info)];
    // iommufd nests only a first-stage table (IOMMU_HWPT_DATA_VTD_S1,
    // intel/nested.c) installed in a scalable-mode PASID entry with
    // PGTT=nested (VT-d 9.6); legacy context entries have no such type.
    out.push(check(
        "guest-scalable",
        c.mode == VtdMode::Scalable,
        format!(
            "guest mode={}",
            match c.mode {
                VtdMode::Legacy => "legacy",
                VtdMode::Scalable => "scalable",
            }
        ),
    ));
    // VT-d 3.6: first-stage tables use the x86 paging format, the format
    // the host's nested stage 1 walks; second-stage tables cannot be
    // nested under another stage 2.
    out.push(check(
        "guest-first-stage",
        c.flts,
        format!("guest flts={}", yes(c.flts)),
    ));
    let Some((hcap, hecap)) = info.vtd() else {
        return out;
    };
    let bit = |name, f: Field, what: &str| {
        check(
            name,
            hecap.has(f),
            format!("host ECAP.{what}={}", hecap.get(f)),
        )
    };
    // iommu.h nested_supported(): sm_supported() (ECAP.SMTS) && ECAP.NEST;
    // VT-d 11.4.3 NEST.
    out.push(bit("host-smts", ecap::SMTS, "SMTS"));
    out.push(bit("host-nest", ecap::NEST, "NEST"));
    // VT-d 3.8 nested translation walks the guest's first-stage table:
    // ECAP.FSTS (pasid.c checks ecap_flts for first-stage entries).
    out.push(bit("host-fsts", ecap::FSTS, "FSTS"));
    // iommu.c intel_iommu_domain_alloc_second_stage(): in scalable mode the
    // nesting parent needs ECAP.SSTS ("!ecap_slts -> -EOPNOTSUPP").
    out.push(bit("host-ssts", ecap::SSTS, "SSTS"));
    // iommu.c: with ERRATA_772415_SPR17 the nesting parent is made
    // writable (PT_FEAT_VTDSS_FORCE_WRITEABLE): nesting still works.
    let errata = matches!(info.hw, HwInfo::IntelVtd { errata, .. } if errata.contains(VtdErrata::ERRATA_772415_SPR17));
    let detail = match errata {
        true => {
            "erratum 772415: stage-2 read-only mappings become writable; skip read-only regions"
        }
        false => "no stage-2 read-only erratum",
    };
    out.push(check("s2-readonly", true, detail.to_string()));
    // pasid.c intel_pasid_setup_nested(): stage-1 address width is 4-level
    // (48) or 5-level (57), and "5-level paging not supported" without
    // CAP.FS5LP. Guests with aw 39/48 use 4-level first-stage tables.
    let needs5 = c.aw == VtdAddressWidth::Bits57;
    out.push(check(
        "fs-5level",
        !needs5 || hcap.has(cap::FS5LP),
        format!(
            "guest aw={} uses {}-level first-stage tables; host CAP.FS5LP={}",
            c.aw.bits(),
            if needs5 { 5 } else { 4 },
            hcap.get(cap::FS5LP)
        ),
    ));
    // VT-d 3.8: the guest's first-stage output (GPA, up to CAP.MGAW+1 bits
    // as the guest sees it) is the host stage 2's input, limited by the
    // host's MGAW.
    let host_mgaw = hcap.get(cap::MGAW) + 1;
    out.push(check(
        "s2-input-width",
        u64::from(c.aw.bits()) <= host_mgaw,
        format!(
            "guest address width {} <= host MGAW {host_mgaw}",
            c.aw.bits()
        ),
    ));
    // VT-d 11.4.3 PSS: the guest may use any PASID below 2^pasid_bits;
    // nested.c intel_nested_set_dev_pasid() needs pasid_supported() and
    // the host's PASID table holds at most 2^max_pasid_log2 entries.
    out.push(check(
        "pasid-width",
        c.pasid_bits <= info.max_pasid_log2,
        format!(
            "guest pasid_bits={} <= host max_pasid_log2={}",
            c.pasid_bits, info.max_pasid_log2
        ),
    ));
    // VT-d 11.4.2 FS1GP: a first-stage PS=1 PDPE is reserved (faults)
    // without it; iommu.c checks cap_fl1gp_support for first-stage
    // domains. The guest advertises it through sps with flts=1.
    let g1 = c.first_stage_1g();
    out.push(check(
        "fs-1g-pages",
        !g1 || hcap.has(cap::FS1GP),
        format!(
            "guest first-stage 1 GiB pages: {}; host CAP.FS1GP={}",
            yes(g1),
            hcap.get(cap::FS1GP)
        ),
    ));
    // VT-d 6.1: with slts=1 the guest may program second-stage-only PASIDs,
    // which cannot be nested (a stage 2 under a stage 2). They can be
    // shadowed only if the guest invalidates on map, i.e. CAP.CM=1.
    let mixed = c.flts && c.slts;
    out.push(check(
        "slts-with-flts",
        !mixed || c.cm,
        match mixed {
            true => format!(
                "guest slts=1: second-stage-only PASIDs are shadowed, needs cm=1 (cm={})",
                yes(c.cm)
            ),
            false => format!("guest slts={}: no second-stage-only PASIDs", yes(c.slts)),
        },
    ));
    // VT-d 7.4: page requests on nested PASIDs are reported by the host
    // IOMMU (ECAP.PRS) and forwarded (nested.c iopf_for_domain_set).
    out.push(check(
        "prs",
        !c.prs || hecap.has(ecap::PRS),
        format!(
            "guest prs={}; host ECAP.PRS={}",
            yes(c.prs),
            hecap.get(ecap::PRS)
        ),
    ));
    out
}

fn smmuv3_nest_checks(c: &Smmuv3Config, info: &HostInfo) -> Vec<Check> {
    let mut out = vec![host_type("smmuv3", "arm-smmuv3", info)];
    // IHI 0070 3.3.2: the host keeps stage 2 for the VM; a guest that uses
    // stage 2 itself would need a third stage.
    out.push(check(
        "guest-stage1-only",
        c.stages == Smmuv3Stages::S1,
        format!("guest stages={}", c.stages.name()),
    ));
    let HwInfo::ArmSmmuv3 {
        idr: r, iidr: iid, ..
    } = &info.hw
    else {
        return out;
    };
    let (idr0, idr1, idr3, idr5) = (
        u64::from(r[0]),
        u64::from(r[1]),
        u64::from(r[3]),
        u64::from(r[5]),
    );
    // arm-smmu-v3.c: ARM_SMMU_FEAT_NESTING = FEAT_TRANS_S1 && FEAT_TRANS_S2
    // (IHI 0070 6.3.1 IDR0.S1P, IDR0.S2P).
    out.push(check(
        "host-s1p",
        idr::IDR0_S1P.is_set(idr0),
        format!("host IDR0.S1P={}", idr::IDR0_S1P.get(idr0)),
    ));
    out.push(check(
        "host-s2p",
        idr::IDR0_S2P.is_set(idr0),
        format!("host IDR0.S2P={}", idr::IDR0_S2P.get(idr0)),
    ));
    // arm-smmu-v3.c: "AArch64 table format not supported" (IDR0.TTF bit 1).
    let ttf = idr::IDR0_TTF.get(idr0);
    out.push(check(
        "host-ttf-aarch64",
        ttf & TTF_AARCH64 != 0,
        format!("host IDR0.TTF={ttf:#b}"),
    ));
    // IHI 0070 6.3.1 TTENDIAN: the guest's tables are little-endian.
    let endian = idr::IDR0_TTENDIAN.get(idr0);
    out.push(check(
        "host-endianness",
        endian != TTENDIAN_BE_ONLY,
        format!("host IDR0.TTENDIAN={endian:#b}"),
    ));
    // arm-smmu-v3-iommufd.c arm_smmu_get_viommu_size(): the VM must not be
    // able to bypass the cache: the device is CANWBS or the SMMU has
    // S2FWB. CANWBS comes from firmware and is not in hw_info, so only
    // IDR3.FWB counts here.
    out.push(check(
        "host-coherency",
        idr::IDR3_FWB.is_set(idr3),
        format!(
            "host IDR3.FWB={} (CANWBS is not reported by hw_info)",
            idr::IDR3_FWB.get(idr3)
        ),
    ));
    out.push(smmu_errata(u64::from(*iid)));
    // IHI 0070 5.4 CD.TG0: the host walks the guest's tables, a granule it
    // lacks is C_BAD_CD (IDR5.GRAN4K/16K/64K).
    let mut host_gran = Smmuv3Granules::empty();
    host_gran.set(Smmuv3Granules::G4K, idr::IDR5_GRAN4K.is_set(idr5));
    host_gran.set(Smmuv3Granules::G16K, idr::IDR5_GRAN16K.is_set(idr5));
    host_gran.set(Smmuv3Granules::G64K, idr::IDR5_GRAN64K.is_set(idr5));
    out.push(check(
        "granules",
        host_gran.contains(c.gran),
        format!(
            "guest gran={} within host gran={}",
            c.gran.to_list(),
            host_gran.to_list()
        ),
    ));
    // IHI 0070 6.3.6 IDR5.OAS: the guest's stage-1 output (IPA) is the host
    // stage 2's input.
    let host_oas = idr::OAS_BITS
        .get(idr::IDR5_OAS.get(idr5) as usize)
        .copied()
        .unwrap_or(48);
    out.push(check(
        "oas",
        u32::from(c.oas) <= host_oas,
        format!("guest oas={} <= host OAS {host_oas}", c.oas),
    ));
    // IHI 0070 5.2 STE.S1CDMax <= IDR1.SSIDSIZE: the host walks the guest's
    // CD table indexed by SubstreamID.
    let host_ssid = idr::IDR1_SSIDSIZE.get(idr1);
    out.push(check(
        "ssid-width",
        u64::from(c.ssidsize) <= host_ssid,
        format!(
            "guest ssidsize={} <= host IDR1.SSIDSIZE={host_ssid}",
            c.ssidsize
        ),
    ));
    // IHI 0070 4.4.1: range invalidations (TG/NUM/SCALE) need IDR3.RIL;
    // the guest's commands go to the host queue (arm_vsmmu_cache_invalidate).
    out.push(check(
        "range-invalidation",
        !c.ril || idr::IDR3_RIL.is_set(idr3),
        format!(
            "guest ril={}; host IDR3.RIL={}",
            yes(c.ril),
            idr::IDR3_RIL.get(idr3)
        ),
    ));
    // IHI 0070 3.9: ATS needs IDR0.ATS; iommufd reports
    // IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED when the device cannot use it.
    let host_ats =
        idr::IDR0_ATS.is_set(idr0) && !info.caps.contains(HostCaps::PCI_ATS_NOT_SUPPORTED);
    out.push(check(
        "ats",
        !c.ats || host_ats,
        format!(
            "guest ats={}; host IDR0.ATS={} usable={}",
            yes(c.ats),
            idr::IDR0_ATS.get(idr0),
            yes(host_ats)
        ),
    ));
    out
}

/// arm-smmu-v3.c arm_smmu_device_iidr_probe(): MMU-600 before r2 (erratum
/// 1209401) and MMU-700 before r1p1 (errata 2268618, 2812531) drop
/// ARM_SMMU_FEAT_NESTING.
fn smmu_errata(raw: u64) -> Check {
    let arm = iidr::IMPLEMENTER.get(raw) == iidr::ARM;
    let (product, variant, revision) = (
        iidr::PRODUCT_ID.get(raw),
        iidr::VARIANT.get(raw),
        iidr::REVISION.get(raw),
    );
    let broken = arm
        && ((product == iidr::MMU_600 && variant < 2)
            || (product == iidr::MMU_700 && (variant < 1 || revision < 1)));
    check(
        "host-errata",
        !broken,
        format!(
            "host IIDR={raw:#x}: product {product:#x} r{variant}p{revision}, nesting errata: {}",
            yes(broken)
        ),
    )
}

// ---------------------------------------------------------------------------
// Shadow checks.

/// Appends the shadow checks for `host` (possibly several hosts combined)
/// and returns what the model must adjust.
fn shadow_checks(guest: &GuestModel, host: &HostView, out: &mut Vec<Check>) -> Adjustments {
    match guest {
        GuestModel::Vtd(c) => vtd_shadow(c, host, out),
        GuestModel::Smmuv3(_) => {
            // IHI 0070 3.21 / Arm ARM D8.13 (break-before-make): the SMMU
            // caches no invalid entry, so a guest SMMUv3 driver makes an
            // entry valid without any invalidation; the VMM never learns of
            // new mappings and cannot shadow them.
            out.push(fail(
                "map-invalidation",
                "a guest SMMUv3 sends no invalidation when it maps, so its mappings cannot be shadowed".to_string(),
            ));
            Adjustments::default()
        }
        GuestModel::VirtioIommu(c) => virtio_shadow(c, host, out),
    }
}

fn page_size_check(guest_page: u64, host: &HostView) -> Check {
    check(
        "page-size",
        host.page_size != 0 && host.page_size <= guest_page,
        format!(
            "host page size {:#x} <= guest page size {guest_page:#x}",
            host.page_size
        ),
    )
}

fn vtd_shadow(c: &VtdConfig, host: &HostView, out: &mut Vec<Check>) -> Adjustments {
    // VT-d 6.1 "Caching mode": only with CAP.CM=1 must software invalidate
    // after making a not-present entry present, so only then does the VMM
    // see every map.
    out.push(check(
        "caching-mode",
        c.cm,
        format!("guest cm={}", yes(c.cm)),
    ));
    // VT-d 3.6/3.7: the guest's smallest page is 4 KiB.
    out.push(page_size_check(4096, host));
    // VT-d 3.15: the interrupt address range is never translated, so the
    // guest needs [0, 2^aw - 1] except 0xfee00000-0xfeefffff.
    let needed = vtd_needed(c.aw);
    let missing = subtract(&needed, &host.iova_ranges);
    out.push(check(
        "iova-coverage",
        missing.is_empty(),
        match missing.first() {
            None => format!(
                "host IOAS covers [0, {:#x}] except the interrupt range",
                c.aw.last_address()
            ),
            Some(m) => format!(
                "host IOAS cannot map {m} ({} gap(s)) of the guest's {}-bit space",
                missing.len(),
                c.aw.bits()
            ),
        },
    ));
    Adjustments {
        ioas_page_size: Some(host.page_size),
        ..Adjustments::default()
    }
}

fn vtd_needed(aw: VtdAddressWidth) -> Vec<IovaRange> {
    let space = IovaRange {
        first: Iova(0),
        last: Iova(aw.last_address()),
    };
    subtract(&[space], &[VTD_INTERRUPT_RANGE])
}

fn virtio_shadow(c: &VirtioIommuConfig, host: &HostView, out: &mut Vec<Check>) -> Adjustments {
    // virtio 1.3 5.13.4: the driver's granule is the lowest set bit of
    // page_size_mask; every guest size must be a multiple of the host's.
    let guest_page = 1u64 << c.page_size_mask.0.trailing_zeros().min(63);
    out.push(page_size_check(guest_page, host));
    // virtio 1.3 5.13.4: input_range bounds the addresses the driver maps;
    // clip it to the span the host can map.
    let host_ranges = normalize(&host.iova_ranges);
    let clipped = match (host_ranges.first(), host_ranges.last()) {
        (Some(lo), Some(hi)) => IovaRange::new(
            c.input_range.first.max(lo.first),
            c.input_range.last.min(hi.last),
        ),
        _ => None,
    };
    out.push(check(
        "input-range",
        clipped.is_some(),
        match clipped {
            Some(r) => format!("guest input range {} clipped to {r}", c.input_range),
            None => format!(
                "guest input range {} misses every host IOVA range",
                c.input_range
            ),
        },
    ));
    let Some(clipped) = clipped else {
        return Adjustments::default();
    };
    // virtio 1.3 5.13.6.6.2: holes inside the range are announced as
    // RESV_MEM (RESERVED) in the PROBE reply, which must fit probe_size
    // next to the guest's own regions.
    let holes = subtract(&[clipped], &host_ranges);
    let needed = (holes.len() + c.resv.len()) as u64 * u64::from(RESV_MEM_PROPERTY_SIZE);
    out.push(check(
        "reserved-regions",
        holes.is_empty() || needed <= u64::from(c.probe_size),
        format!(
            "{} host hole(s) to announce, {needed} bytes of RESV_MEM in probe_size {:#x}",
            holes.len(),
            c.probe_size
        ),
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
    check(
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
fn ioas_ranges(guest: &GuestModel, before: &HostView, new: &HostView) -> Check {
    let span = match guest {
        GuestModel::Vtd(c) => vtd_needed(c.aw),
        GuestModel::VirtioIommu(c) => vec![c.input_range],
        GuestModel::Smmuv3(_) => vec![],
    };
    let promised = intersect(&normalize(&span), &normalize(&before.iova_ranges));
    let missing = subtract(&promised, &new.iova_ranges);
    check(
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
