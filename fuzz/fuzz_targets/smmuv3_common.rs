//! Shared by the SMMUv3 fuzz targets: one of a few configurations, guest
//! RAM filled from the input, and a model reused across runs (reset, not
//! rebuilt: building one allocates its translation cache).
#![allow(dead_code)]

use std::cell::RefCell;

use nesting_core::options::ModelOptions;
use smmuv3::{Smmuv3, Smmuv3Config};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM size: 64 KiB, enough for a stream table, CDs, four levels of
/// 4 KiB tables for each stage and the queues.
pub const RAM: usize = 64 * 1024;

/// The option sets, covering every stage, table format, granule and
/// feature switch.
const CONFIGS: [&[&str]; 6] = [
    &[],
    &["stages=nested", "ats=1", "pri=1", "sidsize=8", "ssidsize=8"],
    &["stages=s2", "ssidsize=0", "gran=64k", "oas=40", "stlevel=linear", "msi=0"],
    &["stages=nested", "gran=16k", "httu=0", "ril=0", "sidsize=4", "stlevel=linear"],
    &["httu=1", "gran=4k", "oas=52", "ssidsize=4", "sidsize=12"],
    &["stages=nested", "gran=4k,64k", "oas=52", "ats=1", "msi=0"],
];

/// Configuration `sel` (modulo the number of sets).
pub fn config(sel: u8) -> Smmuv3Config {
    Smmuv3Config::from_options(CONFIGS[usize::from(sel) % CONFIGS.len()])
        .expect("fixed options parse")
}

thread_local! {
    static MEM: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("ram");
    static MODELS: RefCell<Vec<Option<Smmuv3>>> = RefCell::new((0..CONFIGS.len()).map(|_| None).collect());
}

/// Runs `f` with RAM holding `bytes` (zero-padded) and a reset model of
/// configuration `sel`.
pub fn with_model<R>(sel: u8, bytes: &[u8], f: impl FnOnce(&GuestMemoryMmap, &mut Smmuv3) -> R) -> R {
    MEM.with(|mem| {
        let n = bytes.len().min(RAM);
        mem.write_slice(&bytes[..n], GuestAddress(0)).expect("in ram");
        static ZEROS: [u8; RAM] = [0; RAM];
        mem.write_slice(&ZEROS[n..], GuestAddress(n as u64)).expect("in ram");
        MODELS.with(|m| {
            let mut models = m.borrow_mut();
            let i = usize::from(sel) % CONFIGS.len();
            let slot = &mut models[i];
            let smmu = slot.get_or_insert_with(|| Smmuv3::new(config(sel)));
            smmu.reset();
            f(mem, smmu)
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
