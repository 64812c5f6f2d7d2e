//! The server over the vfio-user protocol, without QEMU: the rust-vmm
//! crate's `Client` plays the VMM, shares "guest RAM" as a file descriptor
//! (as QEMU shares its memfd) and drives the endpoint through region
//! accesses.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use nesting_core::types::{Bdf, RequesterId};
use vfio_user::Client;
use viommu_guest_server::backend::{EndpointBackend, irqs, regions};
use viommu_guest_server::passthrough::Passthrough;

const RAM: u64 = 0x10_0000;

fn socket_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("viommu-guest-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn ram_file(name: &str) -> File {
    let path = std::env::temp_dir().join(format!("viommu-guest-{}-{name}.ram", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(&vec![0u8; RAM as usize]).unwrap();
    f
}

fn serve(path: &Path) -> JoinHandle<bool> {
    let server = vfio_user::Server::new(path, true, irqs(), regions()).unwrap();
    let mut backend = EndpointBackend::new(
        Arc::new(Passthrough::default()),
        RequesterId::Pci(Bdf::new(0, 5, 0)),
    );
    std::thread::spawn(move || server.run(&mut backend).is_ok())
}

fn w32(c: &mut Client, off: u64, v: u32) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

fn r32(c: &mut Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn fill(c: &mut Client, dst: u64, len: u32, pattern: u32) -> u32 {
    w32(c, 0x18, dst as u32);
    w32(c, 0x1c, (dst >> 32) as u32);
    w32(c, 0x20, len);
    w32(c, 0x24, pattern);
    w32(c, 0x08, 1);
    r32(c, 0x0c)
}

#[test]
fn client_maps_ram_and_commands_fill_then_unmap_refuses() {
    let path = socket_path("fill");
    let server = serve(&path);
    let mut c = Client::new(&path).unwrap();
    let ram = ram_file("fill");

    let mut cfg = [0u8; 4];
    c.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(u32::from_le_bytes(cfg), 0x10f0_1af4);
    assert_eq!(r32(&mut c, 0), u32::from_le_bytes(*b"VDMA"));

    c.dma_map(0, 0, RAM, ram.as_raw_fd()).unwrap();
    c.region_write(7, 4, &[0x06, 0x00]).unwrap();
    assert_eq!(fill(&mut c, 0x8000, 8, 0x0403_0201), 1, "Ok");
    let mut got = [0u8; 10];
    ram.read_exact_at(&mut got, 0x7fff).unwrap();
    assert_eq!(got, [0, 1, 2, 3, 4, 1, 2, 3, 4, 0]);

    c.dma_unmap(0, RAM).unwrap();
    assert_eq!(fill(&mut c, 0x9000, 8, 0xffff_ffff), 3, "WriteFault");
    assert_eq!(r32(&mut c, 0x30), 0x9000);
    let mut after = [0u8; 8];
    ram.read_exact_at(&mut after, 0x9000).unwrap();
    assert_eq!(after, [0; 8]);

    c.shutdown().unwrap();
    assert!(server.join().unwrap());
}

#[test]
fn client_sees_virtio_iommu_function_and_its_features() {
    use viommu_guest_server::virtio_backend::{self, VirtioBackend};
    use virtio_iommu::VirtioIommuConfig;
    use virtio_iommu::{DeviceOptions, VirtioIommu};

    let path = socket_path("virtio");
    let dev = Arc::new(
        VirtioIommu::<vm_memory::GuestMemoryMmap>::new(
            &VirtioIommuConfig::default(),
            DeviceOptions::default(),
        )
        .unwrap(),
    );
    let server = vfio_user::Server::new(
        &path,
        true,
        virtio_backend::irqs(),
        virtio_backend::regions(),
    )
    .unwrap();
    let d = Arc::clone(&dev);
    let mut backend = VirtioBackend::new(Arc::clone(&dev), Box::new(move |m| d.set_memory(m)));
    let t = std::thread::spawn(move || server.run(&mut backend).is_ok());
    let mut c = Client::new(&path).unwrap();

    let mut cfg = [0u8; 4];
    c.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(u32::from_le_bytes(cfg), 0x1057_1af4);
    // First capability: vendor-specific, COMMON_CFG in BAR0 at 0.
    c.region_read(7, 0x40, &mut cfg).unwrap();
    assert_eq!(cfg[0], 0x09);
    assert_eq!(cfg[3], 1);
    // device_feature, select 1: VIRTIO_F_VERSION_1 (bit 32).
    c.region_write(0, 0x00, &1u32.to_le_bytes()).unwrap();
    let mut f = [0u8; 4];
    c.region_read(0, 0x04, &mut f).unwrap();
    assert_eq!(u32::from_le_bytes(f) & 1, 1);
    // A RAM mapping reaches the model (no error, nothing to observe yet).
    let ram = ram_file("virtio");
    c.dma_map(0, 0, RAM, ram.as_raw_fd()).unwrap();

    c.shutdown().unwrap();
    assert!(t.join().unwrap());
}
