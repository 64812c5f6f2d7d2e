//! Fault processing disable (FPD) and which faults it suppresses.

use nesting_core::mem::GuestMemoryExt;
use nesting_core::types::{Access, Gpa};

use super::Harness;
use crate::TranslateResult;
use crate::fault::FaultReason;
use crate::mock::{PasidSetup, ScalableTables, probe_like_linux};

const SID: u16 = 0x0308;

/// A scalable unit whose context entry for `SID` has FPD set; returns the
/// harness and the context entry's address.
fn scalable_fpd() -> (Harness, ScalableTables, u64, u64) {
    let mut h = Harness::new(&[]);
    let t = ScalableTables::new(&h.mem, &mut h.alloc);
    let dir = t.set_context(&h.mem, &mut h.alloc, SID, 0, 0);
    let ce = (h.mem.read_u64_le(Gpa(t.root + 16 * 3)).unwrap() & !0xfff) + 32 * 8;
    let q0 = h.mem.read_u64_le(Gpa(ce)).unwrap();
    h.mem.write_u64_le(Gpa(ce), q0 | 1 << 1).unwrap();
    probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    (h, t, dir, ce)
}

#[test]
fn fpd_suppresses_qualified_faults() {
    let (mut h, _t, _dir, _ce) = scalable_fpd();
    // RID_PASID 0: the PASID directory entry is not present (0x51).
    let r = h.translate(SID, None, 0x1000, Access::READ);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::PasidDirNotPresent,
            recorded: false
        }
    );
    assert_eq!(h.read32(crate::regs::off::FSTS), 0);
}

#[test]
fn fpd_does_not_suppress_pasid_table_access_errors() {
    let (mut h, t, dir, ce) = scalable_fpd();
    t.set_pasid(&h.mem, &mut h.alloc, dir, 0, &PasidSetup::pass_through(1));
    // The PASID directory moved outside guest RAM (below the 48-bit HAW).
    let q0 = h.mem.read_u64_le(Gpa(ce)).unwrap();
    h.mem
        .write_u64_le(Gpa(ce), (q0 & 0xfff) | 0x10_0000_0000)
        .unwrap();
    let r = h.translate(SID, None, 0x1000, Access::READ);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::PasidDirAccess,
            recorded: true
        }
    );
    // The PASID table outside RAM: 0x58, recorded too.
    h.mem.write_u64_le(Gpa(ce), q0).unwrap();
    h.mem.write_u64_le(Gpa(dir), 0x10_0000_0000 | 1).unwrap();
    let r = h.translate(SID, None, 0x1000, Access::READ);
    assert_eq!(
        r,
        TranslateResult::Fault {
            reason: FaultReason::PasidEntryAccess,
            recorded: true
        }
    );
}

#[test]
fn fault_record_encodes_golden_frcd_and_decodes_back() {
    use crate::fault::{AddressType, FaultRecord};
    let rec = FaultRecord {
        source_id: 0x0230,
        pasid: Some(0x1_2345),
        address: 0xdead_b000,
        write: false,
        page_request: false,
        exec: true,
        privileged: true,
        reason: FaultReason::SmRead,
    };
    // FI, SID, T1 (read), EXE, PRIV, PP, FR 0x86, PV, AT 10b, F.
    let raw = [0xdead_b000, 0xe123_4586_e000_0230];
    assert_eq!(rec.encode_at(AddressType::Translated), raw);
    assert_eq!(FaultRecord::decode(raw), rec);
    assert_eq!(AddressType::of_record(raw), AddressType::Translated);
}
