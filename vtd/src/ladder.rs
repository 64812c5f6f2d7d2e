//! What a VT-d unit needs from a host to back its passthrough devices,
//! as nesting-core's ladder weighs it ([`GuestIommu`]): the host VT-d
//! features a nested first stage needs, compared with `IOMMU_GET_HW_INFO`
//! (the host's CAP and ECAP registers), and what shadowing needs.

use nesting_core::bits::Field;
use nesting_core::guest::{GuestIommu, HwType, IovaSpace, MapNotice, ShadowNeeds, Stage1};
use nesting_core::host::info::{HostInfo, HwInfo, VtdErrata, cap, ecap};
use nesting_core::ladder::Check;
use nesting_core::types::{Iova, IovaRange};

use crate::options::{VtdAddressWidth, VtdConfig, VtdMode};
use crate::translate::INTERRUPT_RANGE;

impl GuestIommu for VtdConfig {
    fn model_name(&self) -> &'static str {
        "vtd"
    }

    /// VT-d 3.6: first-stage tables use the x86 paging format, which a
    /// host VT-d nests (`IOMMU_HWPT_DATA_VTD_S1`).
    fn stage1(&self) -> Stage1 {
        Stage1::WalkedBy(HwType::IntelVtd)
    }

    fn nest_checks(&self, host: &HostInfo) -> Vec<Check> {
        nest_checks(self, host)
    }

    fn shadow_needs(&self) -> ShadowNeeds {
        ShadowNeeds {
            // VT-d 6.1 "Caching mode": only with CAP.CM=1 must software
            // invalidate after making a not-present entry present, so only
            // then does the VMM see every map.
            map_notice: MapNotice::Invalidation(Check::new(
                "caching-mode",
                self.cm,
                format!("guest cm={}", yes(self.cm)),
            )),
            // VT-d 3.6/3.7: the guest's smallest page is 4 KiB.
            page_size: 4096,
            // VT-d 3.15: the interrupt address range is never translated,
            // so the guest needs [0, 2^aw - 1] except 0xfee00000-0xfeefffff.
            iova: IovaSpace::Fixed(needed(self.aw)),
        }
    }
}

fn yes(b: bool) -> u8 {
    u8::from(b)
}

/// The guest's IOVA space: `[0, 2^aw - 1]` without the interrupt range.
fn needed(aw: VtdAddressWidth) -> Vec<IovaRange> {
    let below = IovaRange {
        first: Iova(0),
        last: Iova(INTERRUPT_RANGE.first.0 - 1),
    };
    let above = INTERRUPT_RANGE
        .last
        .checked_add(1)
        .and_then(|first| IovaRange::new(first, Iova(aw.last_address())));
    std::iter::once(below).chain(above).collect()
}

fn nest_checks(c: &VtdConfig, info: &HostInfo) -> Vec<Check> {
    let mut out = Vec::new();
    // iommufd nests only a first-stage table (IOMMU_HWPT_DATA_VTD_S1,
    // intel/nested.c) installed in a scalable-mode PASID entry with
    // PGTT=nested (VT-d 9.6); legacy context entries have no such type.
    out.push(Check::new(
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
    out.push(Check::new(
        "guest-first-stage",
        c.flts,
        format!("guest flts={}", yes(c.flts)),
    ));
    let Some((hcap, hecap)) = info.vtd() else {
        return out;
    };
    let bit = |name, f: Field, what: &str| {
        Check::new(
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
    out.push(Check::new("s2-readonly", true, detail.to_string()));
    // pasid.c intel_pasid_setup_nested(): stage-1 address width is 4-level
    // (48) or 5-level (57), and "5-level paging not supported" without
    // CAP.FS5LP. Guests with aw 39/48 use 4-level first-stage tables.
    let needs5 = c.aw == VtdAddressWidth::Bits57;
    out.push(Check::new(
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
    out.push(Check::new(
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
    out.push(Check::new(
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
    out.push(Check::new(
        "fs-1g-pages",
        !g1 || hcap.has(cap::FS1GP),
        format!(
            "guest first-stage 1 GiB pages: {}; host CAP.FS1GP={}",
            yes(g1),
            hcap.get(cap::FS1GP)
        ),
    ));
    // VT-d 6.1: with slts=1 the guest may program second-stage-only PASIDs,
    // which cannot be nested (a stage 2 under a stage 2): the passthrough
    // backend leaves each such PASID blocked and records a fault for it
    // (0x5B unless FPD), while first-stage and pass-through PASIDs of the
    // same device nest. The ladder accepts that only from a guest in
    // caching mode, which is told of every entry it makes present.
    let mixed = c.flts && c.slts;
    out.push(Check::new(
        "slts-with-flts",
        !mixed || c.cm,
        match mixed {
            true => format!(
                "guest slts=1: second-stage-only PASIDs cannot nest and stay blocked, accepted with cm=1 (cm={})",
                yes(c.cm)
            ),
            false => format!("guest slts={}: no second-stage-only PASIDs", yes(c.slts)),
        },
    ));
    // VT-d 7.4: page requests on nested PASIDs are reported by the host
    // IOMMU (ECAP.PRS) and forwarded (nested.c iopf_for_domain_set).
    out.push(Check::new(
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
