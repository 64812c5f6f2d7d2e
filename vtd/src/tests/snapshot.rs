//! Snapshot and restore.

use nesting_core::types::Access;

use super::Harness;
use crate::Vtd;
use crate::mock::{LegacyTables, SlTables, desc, probe_like_linux};
use crate::nesting::VtdEvent;
use crate::regs::off;
use crate::snapshot::{Snapshot, SnapshotError, VtdSnapshot};

#[test]
fn snapshot_round_trips_through_json_and_keeps_translating() {
    let mut h = Harness::new(&["mode=legacy", "nfr=4"]);
    let t = LegacyTables::new(&h.mem, &mut h.alloc);
    let sl = SlTables::new(&h.mem, &mut h.alloc, 4);
    sl.map(&h.mem, &mut h.alloc, 0x1000, 0x2000, 12, true, false);
    t.set_context(&h.mem, &mut h.alloc, 0x10, 1, 0, 2, sl.root, false);
    let mut q = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root).queue;
    let _ = h.translate(0x10, None, 0x1000, Access::WRITE); // fault record 0
    let snap = h.vtd.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: VtdSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    let mut restored = Vtd::restore(&back).unwrap();
    assert_eq!(restored.take_events(), vec![VtdEvent::Resync]);
    for d in h.vtd.registers().descs() {
        assert_eq!(
            restored.mmio_read(d.offset, d.width.bytes() as u32),
            h.vtd.mmio_read(d.offset, d.width.bytes() as u32),
            "{}",
            d.name
        );
    }
    h.vtd = restored;
    assert_eq!(h.gpa(0x10, None, 0x1000, Access::READ), Ok(0x2000));
    // The fault log continues at record 1, the queue at the saved tail.
    let _ = h.translate(0x10, None, 0x1000, Access::WRITE);
    assert_eq!(h.read64(0x230), 0x1000);
    assert!(q.submit(&mut h.vtd, &h.mem, &[desc::iotlb_global()]));
    assert_eq!(h.read64(off::IQH), q.tail());
}

#[test]
fn restore_rejects_foreign_or_inconsistent_snapshots() {
    let h = Harness::new(&[]);
    let good = h.vtd.snapshot();
    let mut s = good.clone();
    s.version = 99;
    assert!(matches!(
        Vtd::restore(&s),
        Err(SnapshotError::Version { found: 99, .. })
    ));
    let mut s = good.clone();
    s.options.push("bogus=1".into());
    assert!(matches!(Vtd::restore(&s), Err(SnapshotError::Config(_))));
    let mut s = good.clone();
    s.registers.push((0xff8, 1));
    assert!(matches!(
        Vtd::restore(&s),
        Err(SnapshotError::UnknownRegister { offset: 0xff8 })
    ));
    let mut s = good.clone();
    s.registers.retain(|(o, _)| *o != off::FSTS);
    assert!(matches!(
        Vtd::restore(&s),
        Err(SnapshotError::MissingRegister { .. })
    ));
    let mut s = good;
    s.options = vec!["mode=legacy".into(), "nfr=2".into()];
    assert!(
        matches!(Vtd::restore(&s), Err(SnapshotError::UnknownRegister { .. })),
        "layout differs"
    );
}

#[test]
fn enveloped_bytes_restore_and_name_the_model() {
    let mut h = Harness::new(&["mode=legacy"]);
    let t = LegacyTables::new(&h.mem, &mut h.alloc);
    let _ = probe_like_linux(&mut h.vtd, &h.mem, &mut h.alloc, t.root);
    let bytes = h.vtd.to_bytes().unwrap();
    let env = nesting_core::snapshot::Envelope::from_bytes(&bytes).unwrap();
    assert_eq!((env.model.as_str(), env.version), ("vtd", 1));
    let back = Vtd::from_bytes(&bytes).unwrap();
    assert_eq!(back.snapshot().registers, h.vtd.snapshot().registers);
    // What a VMM stored before envelopes: the bare state.
    let bare = serde_json::to_vec(&h.vtd.snapshot()).unwrap();
    assert_eq!(Vtd::from_bytes(&bare).unwrap().snapshot(), h.vtd.snapshot());
}
