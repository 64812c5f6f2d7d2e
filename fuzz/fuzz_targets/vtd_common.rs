//! Shared by the VT-d fuzz targets: a unit of one of a few configurations
//! and guest RAM filled from the input, both reused across runs (the unit
//! reset, not rebuilt: building one allocates its translation cache, and
//! mapping RAM costs a system call and page faults each time).
#![allow(dead_code)]

use std::cell::RefCell;

use nesting_core::options::ModelOptions;
use vtd::{Vtd, VtdConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM size: 16 pages, enough for a root table, context tables,
/// PASID structures, four levels of page tables and a queue.
pub const RAM: usize = 16 * 4096;

/// One of the configurations that exercise different decoders.
pub fn config(sel: u8) -> VtdConfig {
    VtdConfig::from_options(CONFIGS[usize::from(sel) % CONFIGS.len()]).expect("fixed options parse")
}

/// The option sets: both table modes, address widths, superpages, fault
/// recording registers, nesting, page requests and PASID sizes.
const CONFIGS: [&[&str]; 5] = [
    &["mode=legacy"],
    &["mode=legacy", "aw=39", "sps=0", "nfr=1"],
    &[],
    &["flts=1", "slts=1", "nest=1", "aw=57", "prs=1"],
    &["flts=0", "slts=1", "pasid_bits=4"],
];

thread_local! {
    static MEM: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("ram");
    static UNITS: RefCell<Vec<Option<Vtd>>> = RefCell::new((0..CONFIGS.len()).map(|_| None).collect());
}

/// Runs `f` with RAM holding `bytes` (zero-padded) and a unit of
/// configuration `sel` at reset (callbacks a target set stay: a target
/// sets the same ones each run).
pub fn with_unit<R>(sel: u8, bytes: &[u8], f: impl FnOnce(&GuestMemoryMmap, &mut Vtd) -> R) -> R {
    MEM.with(|mem| {
        let n = bytes.len().min(RAM);
        mem.write_slice(&bytes[..n], GuestAddress(0)).expect("in ram");
        static ZEROS: [u8; RAM] = [0; RAM];
        mem.write_slice(&ZEROS[n..], GuestAddress(n as u64)).expect("in ram");
        UNITS.with(|u| {
            let mut units = u.borrow_mut();
            let slot = &mut units[usize::from(sel) % CONFIGS.len()];
            let unit = slot.get_or_insert_with(|| Vtd::new(config(sel)));
            unit.reset(mem);
            f(mem, unit)
        })
    })
}

/// Reads a little-endian u64 from `data` at `at` (zero past the end).
pub fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}
