//! The virtio-iommu device against arbitrary guest behaviour: arbitrary
//! request bytes, descriptor chains with arbitrary addresses and lengths,
//! garbage written over the rings themselves, config writes, resets and
//! DMA translations. The device must never panic, and what it keeps
//! (domains, mappings, waiting faults) stays within its named limits.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nesting_core::mem::GuestMemoryExt;
use nesting_core::options::ModelOptions;
use nesting_core::types::{Access, Gpa};
use virtio_iommu::driver::SplitRing;
use virtio_iommu::{DeviceOptions, MAX_QUEUED_EVENTS, VirtioIommu, VirtioIommuConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: small, so that arbitrary addresses often land in it.
const RAM: u64 = 0x1_0000;
/// Most steps per input: libFuzzer inputs are bounded, so is this.
const MAX_STEPS: usize = 256;

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from(self.u16()?) | (u32::from(self.u16()?) << 16))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    /// An address: mostly inside RAM, sometimes anywhere.
    fn addr(&mut self) -> Option<u64> {
        let sel = self.u8()?;
        Some(match sel & 3 {
            0 => self.u64()?,
            _ => u64::from(self.u16()?) % RAM,
        })
    }
}

/// The device for configuration byte `flags`: made once per
/// configuration and reused (its system reset is a full device reset;
/// making one allocates its translation cache), and a second one to
/// restore snapshots into. `None` if the options are refused.
struct Devices {
    dev: VirtioIommu<GuestMemoryMmap>,
    again: VirtioIommu<GuestMemoryMmap>,
}

fn new_device(flags: u8) -> Option<VirtioIommu<GuestMemoryMmap>> {
    let probe = ["probe_size=0", "probe_size=0x40", "probe_size=0x200"][usize::from(flags % 3)];
    let bypass = if flags & 4 != 0 {
        "bypass=1"
    } else {
        "bypass=0"
    };
    let mut opts = vec![probe, bypass, "domain_range=0-15"];
    if flags & 8 != 0 {
        opts.push("endpoints=0-7");
    }
    if flags & 16 != 0 && probe != "probe_size=0" {
        opts.push("resv=0x8000-0x8fff:msi");
    }
    let Ok(cfg) = VirtioIommuConfig::from_options(&opts) else {
        return None;
    };
    let legacy = flags & 32 != 0;
    VirtioIommu::new(
        &cfg,
        DeviceOptions {
            legacy_bypass: legacy,
            ..DeviceOptions::default()
        },
    )
    .ok()
}

/// Configurations: the bits of the flags byte [`new_device`] reads.
const CONFIGS: usize = 64;

thread_local! {
    static MEM: Arc<GuestMemoryMmap> =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("ram"));
    static DEVICES: RefCell<Vec<Option<Option<Devices>>>> =
        RefCell::new((0..CONFIGS).map(|_| None).collect());
}

/// Runs `f` with zeroed RAM and the device of the configuration the
/// input's first byte names, after a system reset.
fn with_device(c: &mut Cursor<'_>, f: impl FnOnce(&mut Cursor<'_>, &Devices, &GuestMemoryMmap)) {
    let Some(flags) = c.u8() else { return };
    MEM.with(|mem| {
        static ZEROS: [u8; RAM as usize] = [0; RAM as usize];
        mem.write_slice(&ZEROS, GuestAddress(0)).expect("in ram");
        DEVICES.with(|d| {
            let mut all = d.borrow_mut();
            let slot = all[usize::from(flags) % CONFIGS].get_or_insert_with(|| {
                let dev = new_device(flags)?;
                dev.set_memory(mem.clone());
                let again = new_device(flags)?;
                Some(Devices { dev, again })
            });
            let Some(devs) = slot else { return };
            devs.dev.system_reset();
            f(c, devs, mem);
        })
    })
}

fn step(
    c: &mut Cursor<'_>,
    dev: &VirtioIommu<GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    rings: &mut [SplitRing; 2],
) -> Option<()> {
    match c.u8()? % 9 {
        // Request bytes or anything else (rings included) into memory.
        0 => {
            let at = c.addr()?;
            let n = usize::from(c.u8()?);
            let data = c.bytes(n).to_vec();
            let _ = mem.write_bytes_at(Gpa(at), &data);
        }
        // A chain of up to 4 buffers with arbitrary addresses/lengths.
        1 | 2 => {
            let q = usize::from(c.u8()? & 1);
            let n = usize::from(c.u8()? % 5);
            let mut out = Vec::new();
            let mut inp = Vec::new();
            for i in 0..n {
                let b = (c.addr()?, u32::from(c.u16()?));
                if i < n / 2 { out.push(b) } else { inp.push(b) }
            }
            let _ = rings[q].publish(mem, &out, &inp);
            let _ = dev.notify(q as u16);
        }
        3 => {
            let _ = dev.notify(u16::from(c.u8()? & 1));
        }
        4 => {
            let ep = u32::from(c.u8()? % 10);
            let iova = c.addr()?;
            let acc = match c.u8()? % 3 {
                0 => Access::READ,
                1 => Access::WRITE,
                _ => Access::RW | Access::EXEC,
            };
            let _ = dev.translate(ep, iova, acc);
        }
        5 => {
            let off = u64::from(c.u8()? % 48);
            let v = c.u64()?;
            let w = [1usize, 2, 4, 8][usize::from(c.u8()? % 4)];
            dev.write_config(off, &v.to_le_bytes()[..w]);
            let mut b = [0u8; 8];
            dev.read_config(off, &mut b[..w]);
        }
        6 => {
            let _ = dev.ack_features(c.u64()? | dev.device_features() & c.u64()?);
        }
        7 => {
            // Set a queue up again at arbitrary (possibly bad) addresses.
            let q = c.u8()? & 1;
            let size = [1u16, 2, 8, 16, 3][usize::from(c.u8()? % 5)];
            let (d, a, u) = (c.addr()?, c.addr()?, c.addr()?);
            if dev.setup_queue(u16::from(q), size, d, a, u).is_ok() {
                rings[usize::from(q)] = SplitRing::new(size, d, a, u);
            }
        }
        _ => {
            if c.u8()? & 7 == 0 {
                dev.reset();
                let snap = dev.snapshot();
                let _ = dev.restore(&snap);
            }
        }
    }
    Some(())
}

fuzz_target!(|data: &[u8]| {
    with_device(&mut Cursor(data), run);
});

fn run(c: &mut Cursor<'_>, devs: &Devices, mem: &GuestMemoryMmap) {
    let dev = &devs.dev;
    let _ = dev.ack_features(dev.device_features());
    let (r0, next) = SplitRing::at(0x1000, 16);
    let (r1, _) = SplitRing::at(next, 16);
    let mut rings = [r0, r1];
    for (q, r) in rings.iter().enumerate() {
        dev.setup_queue(q as u16, r.size, r.desc, r.avail, r.used)
            .unwrap();
    }
    for _ in 0..MAX_STEPS {
        if step(c, dev, mem, &mut rings).is_none() {
            break;
        }
    }
    assert!(dev.pending_events() <= MAX_QUEUED_EVENTS);
    let snap = dev.snapshot();
    assert!(snap.tables.total_mappings() <= virtio_iommu::MAX_MAPPINGS_TOTAL);
    // A snapshot of any reachable state restores (into a device of the
    // same configuration, as a migration destination would).
    devs.again.restore(&snap).unwrap();
    assert_eq!(devs.again.snapshot(), snap);
}
