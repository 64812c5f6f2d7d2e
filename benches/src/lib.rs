//! Criterion benchmarks live in `benches/benches/`; this library holds what
//! several of them set up the same way.

use std::sync::Arc;

use iommufd_sim::SimIommufd;
use iommufd_sim::profile::HostProfile;
use nesting_core::host::PtId;
use nesting_core::host::objects::{BoundDevice, Ioas, SharedHost};
use nesting_core::ladder::HostView;
use nesting_core::ram::{GuestRam, RamBacking, RamIoas, RamRegion};
use nesting_core::types::Gpa;
use virtio_iommu::mock::{MockDriver, config, mock_memory};
use virtio_iommu::{DeviceOptions, Status, VirtioIommu};

/// A simulated host of `profile` with 1 GiB of guest RAM at GPA 0 mapped
/// into a RAM IOAS, as the engines expect it.
pub fn sim_with_ram(profile: HostProfile) -> (Arc<SimIommufd>, SharedHost, Arc<RamIoas>) {
    let sim = Arc::new(SimIommufd::with_host(profile.spec()));
    let host: SharedHost = sim.clone();
    let ram = GuestRam::new(vec![RamRegion {
        gpa: Gpa(0),
        len: 1 << 30,
        backing: RamBacking::UserVa(0x7000_0000_0000),
    }])
    .expect("one region is a valid guest RAM description");
    let ram = Arc::new(RamIoas::new(&host, ram).expect("the simulated host maps guest RAM"));
    (sim, host, ram)
}

/// A virtio-iommu driver with endpoint 8 attached to domain 1; with
/// `passthrough`, endpoint 8 is a passthrough device shadowed into a
/// SimIommufd IOAS (returned too).
pub fn virtio_iommu_driver(passthrough: bool) -> (MockDriver, Option<Arc<SimIommufd>>) {
    if !passthrough {
        let mut d = MockDriver::new(&[]);
        assert_eq!(d.attach(1, 8), Status::Ok);
        return (d, None);
    }
    let sim = Arc::new(SimIommufd::with_host(HostProfile::VtdNonest.spec()));
    let host: SharedHost = sim.clone();
    let mem = mock_memory();
    let ram = Arc::new(RamIoas::new(&host, GuestRam::from_guest_memory(&*mem).unwrap()).unwrap());
    let mut bound = BoundDevice::bind(&host, sim.add_device(0)).unwrap();
    let probe = Ioas::alloc(&host).unwrap();
    bound.attach(None, PtId::Ioas(probe.id())).unwrap();
    let ranges = host.ioas_iova_ranges(probe.id()).unwrap();
    let view = HostView {
        info: host.hw_info(bound.id()).unwrap(),
        iova_ranges: ranges.ranges,
        page_size: ranges.alignment,
        unit: None,
    };
    bound.detach(None).unwrap();
    drop(probe);
    let dev = Arc::new(VirtioIommu::new(&config(&[]), DeviceOptions::default()).unwrap());
    dev.set_passthrough_host(host, ram).unwrap();
    dev.add_passthrough(8, bound, &view)
        .map_err(|(e, _)| e)
        .unwrap();
    let mut d = MockDriver::with_memory(dev, mem, true);
    assert_eq!(d.attach(1, 8), Status::Ok);
    (d, Some(sim))
}

/// A counting global allocator: a bench binary that installs it
/// (`#[global_allocator]`) reads how many heap bytes are live, to measure
/// the memory a data structure holds (bytes before and after inserting N
/// entries, divided by N). Bytes are counted as requested, not as the
/// system allocator rounds them.
pub mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicIsize, Ordering};

    static LIVE: AtomicIsize = AtomicIsize::new(0);

    /// The system allocator, counting live bytes.
    pub struct Counting;

    /// Heap bytes live now (allocated and not yet freed).
    pub fn live_bytes() -> isize {
        LIVE.load(Ordering::Relaxed)
    }

    fn add(n: usize) {
        LIVE.fetch_add(n as isize, Ordering::Relaxed);
    }

    fn sub(n: usize) {
        LIVE.fetch_sub(n as isize, Ordering::Relaxed);
    }

    // SAFETY: every call is passed unchanged to `System`, which upholds
    // the `GlobalAlloc` contract; the counter is a side effect.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc` is `System`'s.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as for `alloc`.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator, i.e. from `System`,
            // with `layout`.
            unsafe { System.dealloc(ptr, layout) };
            sub(layout.size());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: `ptr` came from `System` with `layout`; the caller's
            // contract for `realloc` is `System`'s.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                sub(layout.size());
                add(new_size);
            }
            p
        }
    }
}
