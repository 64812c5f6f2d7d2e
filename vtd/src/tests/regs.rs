//! Register semantics: reset values, masks, RW1C, one-shot command bits,
//! CAP/ECAP from the options.

use nesting_core::host::info::{cap, ecap};

use super::Harness;
use crate::regs::{ectl, fsts, gcmd, off};

#[test]
fn reset_values_scalable_defaults_match_spec_layout() {
    let h = Harness::new(&[]);
    assert_eq!(h.read32(off::VER), 0x30);
    assert_eq!(h.read32(off::GCMD), 0);
    assert_eq!(h.read32(off::GSTS), 0);
    assert_eq!(h.read64(off::RTADDR), 0);
    assert_eq!(h.read32(off::FSTS), 0);
    // 11.4 FECTL_REG / 11.4 IECTL_REG: IM is set at reset.
    assert_eq!(h.read32(off::FECTL), 0x8000_0000);
    assert_eq!(h.read32(off::IECTL), 0x8000_0000);
    assert_eq!(h.read64(off::IQH), 0);
    assert_eq!(h.read64(off::IQA), 0);
}

#[test]
fn cap_default_options_encode_every_field() {
    let h = Harness::new(&[]);
    let c = h.read64(off::CAP);
    assert_eq!(cap::SAGAW.get(c), 0b0110, "39 and 48 bit");
    assert_eq!(cap::MGAW.get(c), 47);
    assert_eq!(cap::CM.get(c), 1);
    assert_eq!(cap::FRO.get(c) * 16, 0x220);
    assert_eq!(cap::NFR.get(c) + 1, 8);
    assert_eq!(cap::SLLPS.get(c), 0b11);
    assert_eq!(cap::PSI.get(c), 1);
    assert_eq!(cap::ND.get(c), 6);
    assert_eq!(cap::FS1GP.get(c), 1);
    assert_eq!(cap::FS5LP.get(c), 0);
    assert_eq!(cap::MAMV.get(c), crate::regs::MAMV);
    let e = h.read64(off::ECAP);
    assert_eq!(ecap::IRO.get(e) * 16, 0x2a0);
    assert_eq!(ecap::SMTS.get(e), 1);
    assert_eq!(ecap::FSTS.get(e), 1);
    assert_eq!(ecap::SSTS.get(e), 0);
    assert_eq!(ecap::QI.get(e), 1);
    assert_eq!(ecap::PASID.get(e), 1);
    assert_eq!(ecap::PSS.get(e), 19);
    assert_eq!(ecap::PRS.get(e), 0);
    assert_eq!(ecap::PT.get(e), 1);
}

#[test]
fn cap_legacy_options_clear_scalable_features() {
    let h = Harness::new(&[
        "mode=legacy",
        "aw=57",
        "cm=0",
        "nfr=1",
        "fro=0x400",
        "iro=0x500",
        "sps=1",
    ]);
    let c = h.read64(off::CAP);
    assert_eq!(cap::SAGAW.get(c), 0b1110);
    assert_eq!(cap::MGAW.get(c), 56);
    assert_eq!(cap::CM.get(c), 0);
    assert_eq!(cap::FRO.get(c), 0x40);
    assert_eq!(cap::NFR.get(c), 0);
    assert_eq!(cap::SLLPS.get(c), 1);
    assert_eq!(cap::FS1GP.get(c), 0);
    let e = h.read64(off::ECAP);
    assert_eq!(ecap::IRO.get(e), 0x50);
    assert_eq!(
        ecap::SMTS.get(e) | ecap::FSTS.get(e) | ecap::PASID.get(e),
        0
    );
    assert_eq!(h.read32(off::VER), 0x10);
}

#[test]
fn read_only_registers_ignore_writes() {
    let mut h = Harness::new(&[]);
    let c = h.read64(off::CAP);
    h.write64(off::CAP, !c);
    h.write32(off::GSTS, 0xffff_ffff);
    h.write64(off::IQH, 0x1230);
    assert_eq!(h.read64(off::CAP), c);
    assert_eq!(h.read32(off::GSTS), 0);
    assert_eq!(h.read64(off::IQH), 0);
}

#[test]
fn writable_masks_drop_reserved_bits() {
    let mut h = Harness::new(&[]);
    h.write64(off::RTADDR, u64::MAX);
    assert_eq!(h.read64(off::RTADDR), !0x3ff);
    h.write32(off::FEADDR, 0xffff_ffff);
    assert_eq!(h.read32(off::FEADDR), 0xffff_fffc);
    h.write64(off::IQT, u64::MAX);
    assert_eq!(h.read64(off::IQT), 0x7fff0);
}

#[test]
fn halves_of_64_bit_register_written_by_32_bit_accesses() {
    let mut h = Harness::new(&[]);
    h.write32(off::RTADDR, 0x1234_5000);
    h.write32(off::RTADDR + 4, 0x8);
    assert_eq!(h.read64(off::RTADDR), 0x8_1234_5000);
    assert_eq!(h.read32(off::RTADDR + 4), 0x8);
}

#[test]
fn eight_byte_read_of_two_32_bit_registers_combines() {
    let mut h = Harness::new(&[]);
    h.write32(off::FEDATA, 0x44);
    // FECTL (0x38, IM set at reset) and FEDATA (0x3c).
    assert_eq!(h.read64(off::FECTL), 0x44_8000_0000);
    // An 8-byte write splits the same way.
    h.write64(off::FECTL, 0x55_0000_0000);
    assert_eq!((h.read32(off::FECTL), h.read32(off::FEDATA)), (0, 0x55));
}

#[test]
fn unaligned_or_odd_sized_access_reads_zero_and_writes_nothing() {
    let mut h = Harness::new(&[]);
    assert_eq!(h.vtd.mmio_read(off::CAP + 2, 4), 0);
    assert_eq!(h.vtd.mmio_read(off::CAP, 2), 0);
    h.vtd.mmio_write(&h.mem, off::FEDATA + 1, 4, 0xff);
    h.vtd.mmio_write(&h.mem, off::FEDATA, 1, 0xff);
    assert_eq!(h.read32(off::FEDATA), 0);
    assert_eq!(h.vtd.mmio_read(0xf00, 4), 0, "unimplemented offset");
}

#[test]
fn gcmd_reads_zero_and_srtp_is_one_shot_with_rtps() {
    let mut h = Harness::new(&[]);
    h.write64(off::RTADDR, 0x10_0000 | (1 << 10));
    h.write32(off::GCMD, gcmd::SRTP.mask());
    assert_eq!(h.read32(off::GCMD), 0);
    assert!(gcmd::SRTP.is_set(h.read32(off::GSTS)));
    // A later command without SRTP keeps RTPS: the pointer stays latched.
    h.write32(off::GCMD, gcmd::TE.mask());
    let s = h.read32(off::GSTS);
    assert!(gcmd::SRTP.is_set(s) && gcmd::TE.is_set(s));
}

#[test]
fn gcmd_persistent_bits_follow_every_write() {
    let mut h = Harness::new(&[]);
    h.write32(
        off::GCMD,
        gcmd::TE.mask() | gcmd::QIE.mask() | gcmd::CFI.mask(),
    );
    let s = h.read32(off::GSTS);
    assert!(gcmd::TE.is_set(s) && gcmd::QIE.is_set(s) && gcmd::CFI.is_set(s));
    // Linux writes its whole gcmd shadow each time; clearing TE alone
    // disables translation only.
    h.write32(off::GCMD, gcmd::QIE.mask());
    let s = h.read32(off::GSTS);
    assert!(!gcmd::TE.is_set(s) && gcmd::QIE.is_set(s) && !gcmd::CFI.is_set(s));
}

#[test]
fn gcmd_wbf_completes_at_once() {
    let mut h = Harness::new(&[]);
    h.write32(off::GCMD, gcmd::WBF.mask());
    assert!(!gcmd::WBF.is_set(h.read32(off::GSTS)));
}

#[test]
fn gcmd_qie_ignored_without_qi() {
    let mut h = Harness::new(&["mode=legacy", "qi=0"]);
    h.write32(off::GCMD, gcmd::QIE.mask());
    assert!(!gcmd::QIE.is_set(h.read32(off::GSTS)));
    assert_eq!(h.read64(off::IQA), 0, "no IQA register without QI");
}

#[test]
fn fsts_w1c_clears_only_written_ones_and_ppf_is_read_only() {
    let mut h = Harness::new(&[]);
    h.vtd.report_invalidation_timeout(0x10);
    h.vtd.report_invalidation_completion_error(0x20);
    let s = h.read32(off::FSTS);
    assert!(fsts::ITE.is_set(s) && fsts::ICE.is_set(s));
    h.write32(off::FSTS, fsts::ITE.mask() | fsts::PPF.mask());
    let s = h.read32(off::FSTS);
    assert!(!fsts::ITE.is_set(s) && fsts::ICE.is_set(s) && !fsts::PPF.is_set(s));
    // Writing 0 leaves it.
    h.write32(off::FSTS, 0);
    assert!(fsts::ICE.is_set(h.read32(off::FSTS)));
}

#[test]
fn fectl_ip_is_read_only_and_im_writable() {
    let mut h = Harness::new(&[]);
    h.write32(off::FECTL, ectl::IP.mask());
    assert_eq!(h.read32(off::FECTL), 0);
    h.write32(off::FECTL, ectl::IM.mask());
    assert_eq!(h.read32(off::FECTL), ectl::IM.mask());
}

#[test]
fn iqer_records_ite_and_ice_source_ids() {
    let mut h = Harness::new(&[]);
    h.vtd.report_invalidation_timeout(0x0810);
    h.vtd.report_invalidation_completion_error(0x0920);
    let v = h.read64(off::IQER);
    assert_eq!(crate::regs::iqer::ITESID.get(v), 0x0810);
    assert_eq!(crate::regs::iqer::ICESID.get(v), 0x0920);
}

#[test]
fn page_request_registers_exist_only_with_prs() {
    let mut h = Harness::new(&["prs=1"]);
    assert_eq!(h.read32(off::PECTL), 0x8000_0000);
    h.write32(off::PEDATA, 5);
    assert_eq!(h.read32(off::PEDATA), 5);
    h.write32(off::PECTL, 0);
    assert_eq!(h.read32(off::PECTL), 0);
    let mut h = Harness::new(&[]);
    h.write32(off::PECTL, 0);
    assert_eq!(h.read32(off::PECTL), 0);
    h.write32(off::PEDATA, 5);
    assert_eq!(h.read32(off::PEDATA), 0);
}

#[test]
fn layout_rows_do_not_overlap() {
    let h = Harness::new(&["nfr=256", "fro=0x1000", "iro=0x2a0"]);
    let mut rows: Vec<_> = h.vtd.registers().descs().to_vec();
    rows.sort_by_key(|d| d.offset);
    for w in rows.windows(2) {
        assert!(
            w[0].offset + w[0].width.bytes() <= w[1].offset,
            "{:?} overlaps {:?}",
            w[0],
            w[1]
        );
    }
    assert_eq!(rows.len(), 13 + 9 + 2 + 512);
}

#[test]
fn command_register_fields_read_typed() {
    use crate::regs::{ccmd, iotlb_reg, iva};
    use nesting_core::types::Bdf;
    // ICC, CIRG=11 (device), FM=2, SID 01:00.1, DID 7.
    let c = ccmd::Ccmd(1 << 63 | 3 << 61 | 2 << 32 | 0x0101 << 16 | 7);
    assert!(c.icc());
    assert_eq!((c.cirg(), c.fm(), c.did()), (3, 2, 7));
    assert_eq!(
        (c.sid(), c.sid().bus(), c.sid().devfn()),
        (Bdf(0x0101), 1, 1)
    );
    let r = iotlb_reg::IotlbReg(1 << 63 | 3 << 60 | 0xbeef << 32);
    assert_eq!((r.ivt(), r.iirg(), r.did()), (true, 3, 0xbeef));
    let a = iva::Iva(0x20_0000 | 1 << 6 | 9);
    assert_eq!((a.addr(), a.ih(), a.am()), (0x20_0000, true, 9));
    assert_eq!(ccmd::Ccmd(0).with_caig(3).0, ccmd::CAIG.mask());
}
