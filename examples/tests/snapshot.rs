//! A snapshot written by one process restores in a fresh one.

use std::process::Command;

#[test]
fn snapshot_written_by_one_process_restores_in_another() {
    let file = std::env::temp_dir().join(format!("viommu-vtd-{}.snap", std::process::id()));
    let helper = env!("CARGO_BIN_EXE_snapshot-helper");
    let write = Command::new(helper)
        .arg("write")
        .arg(&file)
        .output()
        .unwrap();
    assert!(write.status.success(), "{write:?}");
    let check = Command::new(helper)
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(check.status.success(), "{check:?}");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("0x1234 -> 0x2234"), "{out}");
    // The GSTS the source's driver left (translation and queue enabled).
    let src = String::from_utf8_lossy(&write.stdout);
    let gsts = src.trim().trim_start_matches("wrote ");
    assert!(out.contains(gsts), "{src} / {out}");
}
