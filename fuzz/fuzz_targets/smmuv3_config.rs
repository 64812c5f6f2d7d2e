//! SMMUv3 stream table entries and context descriptors (IHI 0070 5.1 to
//! 5.4): any 64 bytes decode or are C_BAD_STE / C_BAD_CD without
//! panicking, and what decodes describes walkable tables: a starting
//! level that resolves between one bit and sixteen concatenated tables,
//! input sizes the SMMU implements.
#![no_main]

#[path = "smmuv3_common.rs"]
mod smmuv3_common;

use libfuzzer_sys::fuzz_target;
use smmuv3::caps::Caps;
use smmuv3::cd::{Cd, select_region};
use smmuv3::strtab::{L1Std, Ste};
use smmuv3::walk::TableConfig;

fn check(t: &TableConfig, caps: &Caps) {
    assert!(t.start_level <= 3);
    assert!((25..=48).contains(&t.ia_bits));
    let bits = t.start_bits();
    assert!(bits >= 1 && bits <= t.granule.stride() + 4);
    assert!(t.oa_bits <= caps.oas && t.oa_bits >= 32);
    assert!(caps.has_granule(t.granule));
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let caps = Caps::new(&smmuv3_common::config(sel));
    for chunk in rest.chunks(64).take(32) {
        let words: [u64; 8] = std::array::from_fn(|i| smmuv3_common::u64_at(chunk, 8 * i));
        let _ = L1Std(words[0]).l2ptr();
        let Ok(ste) = Ste(words).decode(&caps) else { continue };
        assert!(ste.s1.is_none() || caps.s1p);
        assert!(ste.s2.is_none() || caps.s2p);
        if let Some(s2) = ste.s2 {
            check(&s2.table, &caps);
            assert!(s2.table.ia_bits <= caps.max_oa_bits(s2.table.granule));
        }
        if let Some(s1) = ste.s1 {
            assert!(s1.cdmax <= caps.ssidsize);
            // The same bytes as a CD of this stream.
            if let Ok(cd) = Cd(words).decode(&caps, &s1) {
                for r in cd.regions.iter().filter_map(|r| r.table) {
                    check(&r, &caps);
                }
                for va in [0, words[1], words[2], u64::MAX, words[3] | 1 << 55] {
                    if let Some(t) = select_region(&cd, va) {
                        check(&t, &caps);
                    }
                }
            }
        }
    }
});
