//! Shared by the VT-d fuzz targets: a unit of one of a few configurations
//! and guest RAM filled from the input.

use nesting_core::options::ModelOptions;
use vtd::VtdConfig;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM size: 16 pages, enough for a root table, context tables,
/// PASID structures, four levels of page tables and a queue.
pub const RAM: usize = 16 * 4096;

/// One of the configurations that exercise different decoders.
pub fn config(sel: u8) -> VtdConfig {
    let opts: &[&str] = match sel % 5 {
        0 => &["mode=legacy"],
        1 => &["mode=legacy", "aw=39", "sps=0", "nfr=1"],
        2 => &[],
        3 => &["flts=1", "slts=1", "nest=1", "aw=57", "prs=1"],
        _ => &["flts=0", "slts=1", "pasid_bits=4"],
    };
    VtdConfig::from_options(opts).expect("fixed options parse")
}

/// RAM at 0 holding `bytes` (zero-padded).
pub fn ram(bytes: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("ram");
    let n = bytes.len().min(RAM);
    mem.write_slice(&bytes[..n], GuestAddress(0)).expect("in ram");
    mem
}

/// Reads a little-endian u64 from `data` at `at` (zero past the end).
pub fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}
