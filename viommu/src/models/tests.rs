use nesting_core::options::{ModelOptions, OptionError};
use nesting_core::types::{Iova, IovaRange, PageSizes};
use smmuv3::options::{Httu, Smmuv3Granules, Smmuv3Stages, StreamTableLevel};
use virtio_iommu::options::{Endpoints, IdRange, ResvKind, ResvRegion};
use vtd::options::{SPS_2M, VTD_ARCH_REGS_END, VtdAddressWidth, VtdMode};

use super::*;

fn opt_err(e: OptionError) -> Result<GuestModel, ModelError> {
    Err(ModelError::Options(e))
}

fn parse(model: &str, opts: &str) -> Result<GuestModel, ModelError> {
    let toks: Vec<&str> = opts.split_whitespace().collect();
    GuestModel::from_options(model, &toks)
}

fn vtd(opts: &str) -> VtdConfig {
    match parse("vtd", opts) {
        Ok(GuestModel::Vtd(c)) => c,
        other => panic!("vtd {opts}: {other:?}"),
    }
}

fn smmu(opts: &str) -> Smmuv3Config {
    match parse("smmuv3", opts) {
        Ok(GuestModel::Smmuv3(c)) => c,
        other => panic!("smmuv3 {opts}: {other:?}"),
    }
}

fn virtio(opts: &str) -> VirtioIommuConfig {
    match parse("virtio-iommu", opts) {
        Ok(GuestModel::VirtioIommu(c)) => c,
        other => panic!("virtio-iommu {opts}: {other:?}"),
    }
}

/// Parses `options()` back, as `viommu replay --defaults` output would be.
fn reparse(m: &GuestModel) -> GuestModel {
    let toks: Vec<String> = m
        .options()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let toks: Vec<&str> = toks.iter().map(String::as_str).collect();
    GuestModel::from_options(m.model_name(), &toks).unwrap()
}

#[test]
fn defaults_every_model_match_default_impls() {
    assert_eq!(
        GuestModel::defaults("vtd"),
        Ok(GuestModel::Vtd(VtdConfig::default()))
    );
    assert_eq!(
        GuestModel::defaults("smmuv3"),
        Ok(GuestModel::Smmuv3(Smmuv3Config::default()))
    );
    assert_eq!(
        GuestModel::defaults("virtio-iommu"),
        Ok(GuestModel::VirtioIommu(VirtioIommuConfig::default()))
    );
    for name in MODEL_NAMES {
        assert_eq!(GuestModel::defaults(name).unwrap().model_name(), name);
    }
}

#[test]
fn defaults_vtd_registers_clear_of_architected_block() {
    let c = VtdConfig::default();
    assert!(c.fro >= VTD_ARCH_REGS_END && c.iro >= VTD_ARCH_REGS_END);
    let fault_end = c.fro + 16 * u64::from(c.nfr);
    assert!(
        fault_end <= c.iro,
        "fault records {:#x}..{fault_end:#x} vs iro {:#x}",
        c.fro,
        c.iro
    );
    // Below PERFCAP_REG (0x300, VT-d 11.4).
    assert!(c.iro + 16 <= 0x300);
}

#[test]
fn defaults_virtio_granule_is_4k() {
    let c = VirtioIommuConfig::default();
    assert_eq!(c.page_size_mask.smallest().map(|p| p.bytes()), Some(4096));
}

#[test]
fn vtd_every_key_parses() {
    let c = vtd(
        "mode=scalable aw=57 cm=0 flts=1 slts=1 nest=1 pasid_bits=0x10 qi=1 nfr=4 fro=0x400 iro=0x3f0 sps=1 prs=1",
    );
    assert_eq!(
        c,
        VtdConfig {
            mode: VtdMode::Scalable,
            aw: VtdAddressWidth::Bits57,
            cm: false,
            flts: true,
            slts: true,
            nest: true,
            pasid_bits: 16,
            qi: true,
            nfr: 4,
            fro: 0x400,
            iro: 0x3f0,
            sps: SPS_2M,
            prs: true,
        }
    );
    assert_eq!(vtd("aw=39").aw.levels(), 3);
}

#[test]
fn vtd_legacy_alone_turns_scalable_features_off() {
    let c = vtd("mode=legacy");
    assert_eq!(c, VtdConfig::legacy_defaults());
    assert!(!c.flts && !c.slts && !c.prs && c.pasid_bits == 0);
}

#[test]
fn smmuv3_every_key_parses() {
    let c = smmu(
        "stages=nested sidsize=32 ssidsize=0 gran=64K,4k oas=52 ril=0 ats=1 pri=1 httu=1 msi=0 stlevel=linear",
    );
    assert_eq!(
        c,
        Smmuv3Config {
            stages: Smmuv3Stages::Nested,
            sidsize: 32,
            ssidsize: 0,
            gran: Smmuv3Granules::G4K | Smmuv3Granules::G64K,
            oas: 52,
            ril: false,
            ats: true,
            pri: true,
            httu: Httu::Access,
            msi: false,
            stlevel: StreamTableLevel::Linear,
        }
    );
    assert_eq!(c.page_sizes(), PageSizes(0x1_1000));
}

#[test]
fn smmuv3_stage2_alone_has_no_substreams() {
    assert_eq!(smmu("stages=s2").ssidsize, 0);
}

#[test]
fn virtio_every_key_parses() {
    let c = virtio(
        "page_size_mask=0x1_0000 input_range=0x1000-0xffff_ffff domain_range=1-0xff bypass=1 probe_size=64 \
         resv=0x800_0000-0x80f_ffff:msi resv=0-0xfff:reserved endpoints=16,8,0x100-0x1ff,9",
    );
    assert_eq!(c.page_size_mask, PageSizes(0x10000));
    assert_eq!(
        c.input_range,
        IovaRange {
            first: Iova(0x1000),
            last: Iova(0xffff_ffff)
        }
    );
    assert_eq!(
        c.domain_range,
        IdRange {
            first: 1,
            last: 0xff
        }
    );
    assert!(c.bypass);
    assert_eq!(c.probe_size, 64);
    assert_eq!(
        c.resv,
        vec![
            ResvRegion {
                range: IovaRange {
                    first: Iova(0x800_0000),
                    last: Iova(0x80f_ffff)
                },
                kind: ResvKind::Msi
            },
            ResvRegion {
                range: IovaRange {
                    first: Iova(0),
                    last: Iova(0xfff)
                },
                kind: ResvKind::Reserved
            },
        ]
    );
    let ids = |first, last| IdRange { first, last };
    assert_eq!(
        c.endpoints,
        Endpoints::List(vec![ids(8, 9), ids(16, 16), ids(0x100, 0x1ff)])
    );
    assert!(c.endpoints.contains(0x180) && !c.endpoints.contains(10));
    assert!(Endpoints::All.contains(u32::MAX));
}

#[test]
fn options_defaults_round_trip_to_same_config() {
    for name in MODEL_NAMES {
        let m = GuestModel::defaults(name).unwrap();
        assert_eq!(reparse(&m), m, "{name}");
    }
}

#[test]
fn options_variants_round_trip_to_same_config() {
    let cases = [
        (
            "vtd",
            "mode=legacy aw=39 cm=0 qi=0 nfr=256 fro=0x1000 iro=0x230 sps=0",
        ),
        ("vtd", "aw=57 slts=1 nest=1 pasid_bits=8 prs=1"),
        ("smmuv3", "stages=s2 gran=16k oas=32 stlevel=linear"),
        (
            "virtio-iommu",
            "resv=0x10-0x20:msi resv=0x30-0x40:reserved endpoints=1,3-5 bypass=1",
        ),
    ];
    for (model, opts) in cases {
        let m = parse(model, opts).unwrap();
        assert_eq!(reparse(&m), m, "{model} {opts}");
    }
}

#[test]
fn options_keys_follow_replay_order() {
    let keys = |m: &str| -> Vec<String> {
        GuestModel::defaults(m)
            .unwrap()
            .options()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(keys("vtd"), VtdConfig::KEYS);
    assert_eq!(keys("smmuv3"), Smmuv3Config::KEYS);
    // `resv` is absent when there are no regions.
    let v: Vec<&str> = VirtioIommuConfig::KEYS
        .iter()
        .copied()
        .filter(|k| *k != "resv")
        .collect();
    assert_eq!(keys("virtio-iommu"), v);
}

#[test]
fn display_defaults_prints_model_directive() {
    let s = GuestModel::defaults("smmuv3").unwrap().to_string();
    assert_eq!(
        s,
        "smmuv3 stages=s1 sidsize=16 ssidsize=20 gran=4k,16k,64k oas=48 ril=1 ats=0 pri=0 httu=2 msi=1 stlevel=2lvl"
    );
}

#[test]
fn parse_unknown_model_is_error() {
    assert_eq!(
        parse("amd-vi", ""),
        Err(ModelError::UnknownModel("amd-vi".into()))
    );
}

#[test]
fn parse_token_without_equals_is_error() {
    assert_eq!(
        parse("vtd", "cm"),
        opt_err(OptionError::NotKeyValue { token: "cm".into() })
    );
}

#[test]
fn parse_unknown_key_names_key() {
    assert_eq!(
        parse("smmuv3", "aw=48"),
        opt_err(OptionError::UnknownKey {
            model: "smmuv3",
            key: "aw".into()
        })
    );
}

#[test]
fn parse_repeated_key_is_error_except_resv() {
    assert_eq!(
        parse("vtd", "cm=1 cm=0"),
        opt_err(OptionError::Duplicate { key: "cm" })
    );
    assert!(parse("virtio-iommu", "resv=0-1:msi resv=2-3:msi").is_ok());
}

#[test]
fn parse_bad_values_name_key() {
    let cases = [
        ("vtd", "mode=extended", "mode"),
        ("vtd", "aw=40", "aw"),
        ("vtd", "cm=2", "cm"),
        ("vtd", "nfr=0", "nfr"),
        ("vtd", "fro=zero", "fro"),
        ("smmuv3", "stages=s3", "stages"),
        ("smmuv3", "gran=8k", "gran"),
        ("smmuv3", "gran=", "gran"),
        ("smmuv3", "oas=50", "oas"),
        ("smmuv3", "stlevel=3lvl", "stlevel"),
        ("smmuv3", "httu=3", "httu"),
        ("smmuv3", "msi=2", "msi"),
        ("virtio-iommu", "page_size_mask=0", "page_size_mask"),
        ("virtio-iommu", "input_range=0x2000-0x1000", "input_range"),
        ("virtio-iommu", "input_range=0x2000", "input_range"),
        (
            "virtio-iommu",
            "domain_range=0-0x1_0000_0000",
            "domain_range",
        ),
        ("virtio-iommu", "resv=0-0xfff:io", "resv"),
        ("virtio-iommu", "resv=0-0xfff", "resv"),
        ("virtio-iommu", "endpoints=1,x", "endpoints"),
        ("virtio-iommu", "endpoints=0-0x1_0000_0000", "endpoints"),
    ];
    for (model, opts, key) in cases {
        match parse(model, opts) {
            Err(ModelError::Options(OptionError::BadValue { key: k, .. })) => {
                assert_eq!(k, key, "{opts}")
            }
            other => panic!("{model} {opts}: {other:?}"),
        }
    }
}

#[test]
fn parse_out_of_range_names_key_and_limit() {
    let cases = [
        ("vtd", "pasid_bits=21", "pasid_bits", 21, 20),
        ("vtd", "nfr=257", "nfr", 257, 256),
        ("vtd", "sps=4", "sps", 4, 3),
        ("smmuv3", "sidsize=33", "sidsize", 33, 32),
        ("smmuv3", "ssidsize=21", "ssidsize", 21, 20),
        (
            "virtio-iommu",
            "probe_size=0x1_0000_0000",
            "probe_size",
            1 << 32,
            u64::from(u32::MAX),
        ),
    ];
    for (model, opts, key, value, max) in cases {
        assert_eq!(
            parse(model, opts),
            opt_err(OptionError::OutOfRange { key, value, max }),
            "{model} {opts}"
        );
    }
}

#[test]
fn parse_contradictions_name_key() {
    let cases = [
        ("vtd", "mode=legacy flts=1", "flts"),
        ("vtd", "mode=legacy slts=1", "slts"),
        ("vtd", "mode=legacy pasid_bits=8", "pasid_bits"),
        ("vtd", "mode=legacy prs=1", "prs"),
        ("vtd", "nest=1", "nest"),
        ("vtd", "nest=1 flts=0 slts=1", "nest"),
        ("vtd", "flts=0 slts=0", "mode"),
        ("vtd", "qi=0", "qi"),
        ("vtd", "mode=legacy qi=0 prs=0", ""),
        ("smmuv3", "stages=s2 ssidsize=8", "ssidsize"),
        ("smmuv3", "pri=1", "pri"),
        ("smmuv3", "pri=1 ats=1", ""),
        ("virtio-iommu", "probe_size=0 resv=0-1:msi", "probe_size"),
        (
            "virtio-iommu",
            "probe_size=24 resv=0-1:msi resv=2-3:msi",
            "probe_size",
        ),
    ];
    for (model, opts, key) in cases {
        match parse(model, opts) {
            Err(ModelError::Options(OptionError::Contradiction { key: k, .. })) => {
                assert_eq!(k, key, "{opts}")
            }
            Ok(_) if key.is_empty() => {}
            other => panic!("{model} {opts}: {other:?}"),
        }
    }
}

#[test]
fn parse_register_layout_errors_name_key() {
    let cases = [
        ("fro=0x228", "fro"),
        ("iro=0x2a8", "iro"),
        ("fro=0x4000", "fro"),
        ("iro=0xe0", "iro"),
        ("fro=0x80", "fro"),
        ("iro=0x250", "iro"),
        ("fro=0x300 iro=0x2f0 nfr=1", ""),
        ("nfr=9", "iro"),
    ];
    for (opts, key) in cases {
        match parse("vtd", opts) {
            Err(ModelError::Options(OptionError::Unpresentable { key: k, .. })) => {
                assert_eq!(k, key, "{opts}")
            }
            Ok(_) if key.is_empty() => {}
            other => panic!("vtd {opts}: {other:?}"),
        }
    }
}

#[test]
fn error_messages_name_key_and_value() {
    let e = parse("vtd", "pasid_bits=21").unwrap_err().to_string();
    assert_eq!(e, "pasid_bits=21 is out of range (at most 20)");
    let e = parse("vtd", "mode=legacy flts=1").unwrap_err().to_string();
    assert!(e.starts_with("flts=1 contradicts mode=legacy"), "{e}");
    let e = parse("vtd", "iro=0xe0").unwrap_err().to_string();
    assert!(e.starts_with("iro=0xe0: overlaps"), "{e}");
    // QEMU's layout: IOTLB registers at 0xf0, fault records at 0x220.
    assert!(parse("vtd", "iro=0xf0 fro=0x220").is_ok());
}
