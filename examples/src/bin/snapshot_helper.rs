//! Writes a VT-d unit's snapshot in one process and restores it in
//! another (`tests/snapshot.rs` runs both):
//!
//! - `snapshot-helper write FILE`: a unit the guest driver programmed
//!   (legacy tables, Linux's probe), its enveloped bytes written to FILE;
//! - `snapshot-helper check FILE`: guest RAM rebuilt as the source had it
//!   (a VMM migrates RAM itself), the unit restored from FILE, its
//!   registers and a translation checked.

use std::process::ExitCode;

use nesting_core::snapshot::Snapshot;
use nesting_core::types::{Access, Bdf, Iova};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vtd::mock::{LegacyTables, PageAlloc, SlTables, probe_like_linux};
use vtd::regs::off;
use vtd::{TranslateResult, Vtd, VtdConfig};

const SID: u16 = 0x10;

/// The guest's tables: IOVA 0x1000 -> GPA 0x2000 for SID. Deterministic,
/// so both processes lay them out alike.
fn guest() -> (GuestMemoryMmap<()>, PageAlloc, u64) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("RAM");
    let mut alloc = PageAlloc::new(16 << 20, 16 << 20);
    let t = LegacyTables::new(&mem, &mut alloc);
    let sl = SlTables::new(&mem, &mut alloc, 4);
    sl.map(&mem, &mut alloc, 0x1000, 0x2000, 12, true, true);
    t.set_context(&mem, &mut alloc, SID, 1, 0, 2, sl.root, false);
    (mem, alloc, t.root)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cmd), Some(file)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: snapshot-helper write|check FILE");
        return ExitCode::from(2);
    };
    let (mem, mut alloc, root) = guest();
    match cmd.as_str() {
        "write" => {
            let mut unit = Vtd::new(VtdConfig::legacy_defaults());
            probe_like_linux(&mut unit, &mem, &mut alloc, root);
            let bytes = unit.to_bytes().expect("snapshot");
            std::fs::write(file, bytes).expect("write");
            println!("wrote GSTS={:#x}", unit.mmio_read(off::GSTS, 4));
        }
        "check" => {
            let bytes = std::fs::read(file).expect("read");
            let mut unit = match Vtd::from_bytes(&bytes) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("restore: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let gsts = unit.mmio_read(off::GSTS, 4);
            let rtaddr = unit.mmio_read(off::RTADDR, 8);
            let t = unit.translate(&mem, Bdf(SID), None, Iova(0x1234), Access::WRITE);
            let TranslateResult::Mapped(t) = t else {
                eprintln!("restored unit does not translate: {t:?}");
                return ExitCode::FAILURE;
            };
            println!(
                "restored GSTS={gsts:#x} RTADDR={rtaddr:#x} 0x1234 -> {:#x}",
                t.gpa_of(Iova(0x1234)).0
            );
            if rtaddr != root || t.gpa_of(Iova(0x1234)).0 != 0x2234 {
                return ExitCode::FAILURE;
            }
        }
        _ => return ExitCode::from(2),
    }
    ExitCode::SUCCESS
}
