//! Snapshot and restore.

use nesting_core::types::Access;

use super::{S1Setup, SID};
use crate::snapshot::{SNAPSHOT_VERSION, Snapshot, SnapshotError};
use crate::{Smmuv3, TranslateResult};

#[test]
fn restored_smmu_translates_and_continues_queues() {
    let mut s = S1Setup::new(&[]);
    s.map(0x1000, 0xa000);
    s.h.translate(SID, None, 0x9000, Access::READ);
    let snap = s.h.smmu.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: crate::snapshot::Smmuv3Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    s.h.smmu = Smmuv3::restore(&back).unwrap();
    assert_eq!(s.h.gpa(SID, None, 0x1234, Access::READ), Some(0xa234));
    // The queues continue where they were: the earlier event is there.
    assert!(s.next_event().is_some());
    assert!(s.issue(&[crate::mock::cmd::tlbi_nh_all(0)]));
    assert_eq!(s.h.smmu.snapshot().registers, s.h.smmu.snapshot().registers);
}

#[test]
fn restore_keeps_stalls() {
    let mut s = S1Setup::new(&[]);
    let ste = crate::mock::cdtable_ste(s.cd_table.0, 0, false, false).with_s1stalld(false);
    s.drv
        .install_ste(&mut s.h.smmu, &s.h.mem, &mut s.h.alloc, SID, ste);
    let cd = crate::mock::s1_cd(super::ASID, &s.pt, 5, true).with_s(true);
    s.drv.install_cd(
        &mut s.h.smmu,
        &s.h.mem,
        &mut s.h.alloc,
        s.cd_table,
        SID,
        0,
        cd,
    );
    assert!(matches!(
        s.h.translate(SID, None, 0x1000, Access::READ),
        TranslateResult::Stalled { .. }
    ));
    let snap = s.h.smmu.snapshot();
    assert_eq!(snap.stalls.len(), 1);
    let r = Smmuv3::restore(&snap).unwrap();
    assert_eq!(r.snapshot().stalls, snap.stalls);
}

#[test]
fn bad_snapshots_are_refused() {
    let s = S1Setup::new(&[]);
    let good = s.h.smmu.snapshot();
    let mut v = good.clone();
    v.version = SNAPSHOT_VERSION + 1;
    assert!(matches!(
        Smmuv3::restore(&v),
        Err(SnapshotError::Version { .. })
    ));
    let mut v = good.clone();
    v.options.push("frob=1".into());
    assert!(matches!(Smmuv3::restore(&v), Err(SnapshotError::Config(_))));
    let mut v = good.clone();
    v.registers.push((0x4444, 1));
    assert!(matches!(
        Smmuv3::restore(&v),
        Err(SnapshotError::UnknownRegister { offset: 0x4444 })
    ));
    let mut v = good;
    v.registers.retain(|(o, _)| *o != crate::regs::off::CR0);
    assert!(matches!(
        Smmuv3::restore(&v),
        Err(SnapshotError::MissingRegister { .. })
    ));
}
