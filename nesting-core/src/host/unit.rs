//! Which physical IOMMU a VFIO device sits behind, from sysfs.
//!
//! The ladder nests the devices of one guest domain only when they share a
//! physical IOMMU instance (see `ladder::decide_domain`), and servers carry
//! several units with identical registers, so the instance must come from
//! the device's place in the system: its sysfs node links to its IOMMU
//! (`/sys/bus/pci/devices/BDF/iommu -> ../../virtual/iommu/dmar1`, or an
//! `smmu3.0x...` node on Arm). `GET_HW_INFO` does not say.

use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// IOMMU sysfs nodes in the order first seen: a unit's number is its index,
/// stable for the life of the process.
static UNITS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn number(node: PathBuf) -> u32 {
    let mut units = UNITS.lock().unwrap_or_else(PoisonError::into_inner);
    let i = match units.iter().position(|u| *u == node) {
        Some(i) => i,
        None => {
            units.push(node);
            units.len() - 1
        }
    };
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The unit behind the device whose sysfs directory is `device_dir`.
fn unit_of_device_dir(device_dir: &Path) -> Option<u32> {
    let node = std::fs::canonicalize(device_dir.join("iommu")).ok()?;
    Some(number(node))
}

/// The unit behind a VFIO cdev (`/dev/vfio/devices/vfioN`), below the
/// sysfs root `sys` (normally `/sys`).
pub fn sysfs_iommu_unit_in(sys: &Path, cdev: &Path) -> Option<u32> {
    let name = cdev.file_name()?;
    unit_of_device_dir(&sys.join("class/vfio-dev").join(name).join("device"))
}

/// The unit behind a VFIO cdev path, or `None` when sysfs does not say
/// (no such device, no IOMMU): the ladder then refuses to nest devices
/// together.
pub fn sysfs_iommu_unit(cdev: &Path) -> Option<u32> {
    sysfs_iommu_unit_in(Path::new("/sys"), cdev)
}

/// The unit behind an already-open VFIO cdev descriptor (as libvirt passes
/// them), found through its character device number.
pub fn sysfs_iommu_unit_of_fd(fd: BorrowedFd<'_>) -> Option<u32> {
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let rdev = file.metadata().ok()?.rdev();
    // glibc's gnu_dev_major / gnu_dev_minor encoding of dev_t.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    unit_of_device_dir(
        &Path::new("/sys/dev/char")
            .join(format!("{major}:{minor}"))
            .join("device"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_numbered_by_iommu_node_from_a_fake_sysfs() {
        let root = std::env::temp_dir().join(format!("viommu-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dmar = |n: u32| root.join(format!("devices/virtual/iommu/dmar{n}"));
        for (vfio, unit) in [("vfio0", 0), ("vfio1", 1), ("vfio2", 0)] {
            std::fs::create_dir_all(dmar(unit)).unwrap();
            let dev = root.join(format!("devices/pci0000:00/{vfio}"));
            std::fs::create_dir_all(&dev).unwrap();
            std::os::unix::fs::symlink(dmar(unit), dev.join("iommu")).unwrap();
            let class = root.join("class/vfio-dev").join(vfio);
            std::fs::create_dir_all(&class).unwrap();
            std::os::unix::fs::symlink(&dev, class.join("device")).unwrap();
        }
        let u = |n: &str| sysfs_iommu_unit_in(&root, Path::new(&format!("/dev/vfio/devices/{n}")));
        let (a, b, c) = (u("vfio0"), u("vfio1"), u("vfio2"));
        assert!(a.is_some() && b.is_some());
        assert_eq!(a, c, "same dmar0");
        assert_ne!(a, b, "dmar0 vs dmar1");
        assert_eq!(u("vfio9"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_file_that_is_no_vfio_device_has_no_unit() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        assert_eq!(sysfs_iommu_unit_of_fd(f.as_fd()), None);
    }
}
