//! Translation structure formats (chapter 9): field positions and
//! reserved bits of the entries, against golden values.

use crate::tables::{
    ContextEntry, PasidDirEntry, PasidEntry, Pgtt, RootHalf, SmContextEntry, TranslationType,
};

#[test]
fn entry_reserved_masks_are_the_spec_layouts() {
    assert_eq!(RootHalf::RESERVED, [0xffe]);
    assert_eq!(ContextEntry::RESERVED, [0xff0, 0xffff_ffff_ff00_0080]);
    assert_eq!(
        SmContextEntry::RESERVED,
        [0x1e0, 0xffff_ffff_ffe0_0000, u64::MAX, u64::MAX]
    );
    assert_eq!(PasidDirEntry::RESERVED, [0xffc]);
    assert_eq!(
        PasidEntry::RESERVED,
        [
            0xe20,
            0x7f_0000,
            0xf00,
            u64::MAX,
            u64::MAX,
            u64::MAX,
            u64::MAX,
            u64::MAX
        ]
    );
}

#[test]
fn context_entry_fields_decode_golden() {
    // TT=01, SLPTPTR 0x12345000, AW=2 (48-bit), DID 0xbeef.
    let ctx = ContextEntry {
        lo: 0x1234_5000 | 0b0111,
        hi: 0xbeef << 8 | 2,
    };
    assert!(ctx.present() && ctx.fpd());
    assert_eq!(ctx.tt(), TranslationType::DeviceTlb);
    assert_eq!(ctx.slptptr(), 0x1234_5000);
    assert_eq!((ctx.aw(), ctx.did()), (2, 0xbeef));
    assert!(!ctx.reserved(48));
    assert!(ctx.reserved(28));
}

#[test]
fn sm_context_entry_fields_decode_golden() {
    // P, DTE, PASIDE, PDTS=1, directory at 0x5000; RID_PASID 0xabcde,
    // RID_PRIV.
    let ctx = SmContextEntry {
        q: [0x5000 | 1 << 9 | 0b1101, 1 << 20 | 0xa_bcde, 0, 0],
    };
    assert!(ctx.present() && ctx.dte() && ctx.paside() && !ctx.pre());
    assert_eq!(ctx.pasid_dir(), 0x5000);
    assert_eq!(ctx.max_pasids(), (1 << 8) * 64);
    assert_eq!(ctx.rid_pasid(), 0xa_bcde);
    assert!(ctx.rid_priv());
}

#[test]
fn pasid_entry_fields_decode_golden() {
    let mut q = [0u64; 8];
    // PGTT=011 nested, AW=3, SSPTPTR 0x7000, DID 0x1234; SRE, FSPM=1, EAFE,
    // FSPTPTR 0x9000.
    q[0] = 0x7000 | 0b011 << 6 | 3 << 2 | 1;
    q[1] = 0x1234;
    q[2] = 0x9000 | 1 << 7 | 1 << 2 | 1;
    let e = PasidEntry { q };
    assert_eq!(e.pgtt(), Pgtt::Nested);
    assert_eq!((e.aw(), e.did(), e.fspm()), (3, 0x1234, 1));
    assert_eq!((e.ssptptr(), e.fsptptr()), (0x7000, 0x9000));
    assert!(e.sre() && !e.ere() && !e.wpe() && e.eafe());
    assert!(!e.reserved(48));
    let e = PasidEntry {
        q: [q[0] | 1 << 9, q[1], q[2], 0, 0, 0, 0, 0],
    };
    assert!(e.reserved(48), "SSADE is reserved without ECAP.SSADS");
}

#[test]
fn unknown_translation_types_keep_their_code() {
    let ctx = ContextEntry::default().with_tt(TranslationType::Unknown(3));
    assert_eq!(ctx.tt(), TranslationType::Unknown(3));
    let e = PasidEntry::default().with_pgtt(Pgtt::Unknown(7));
    assert_eq!(e.pgtt(), Pgtt::Unknown(7));
}
