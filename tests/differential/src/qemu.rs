//! QEMU's side: `qemu-system-aarch64 -machine virt,iommu=smmuv3` under
//! qtest, with one `iommu-testdev` per StreamID the scenario uses.
//!
//! Facts from QEMU's source (11.x), used here as facts only:
//! - `hw/arm/virt.c`: the machine-wide SMMUv3 is at 0x0905_0000 (two
//!   64 KiB pages); RAM starts at 0x4000_0000; PCI config space is the
//!   high ECAM at 0x40_1000_0000; the 32-bit MMIO window starts at
//!   0x1000_0000. Since virt-9.2 the machine sets the SMMU's `stage`
//!   property to `nested` itself, so `-global arm-smmuv3.stage=1` is
//!   silently overridden (IDR0.S2P = 1 anyway); virt-9.1 leaves the
//!   property alone, which is how the harness gets stage-1-only and
//!   stage-2-only SMMUs at the same address.
//! - `hw/arm/smmu-common.c`: the StreamID of a PCI device is its
//!   requester ID (bus << 8 | devfn); the root bus is bus 0 and devfn 0
//!   is the host bridge, so StreamIDs 1..=255 are devices on bus 0.
//! - `hw/misc/iommu-testdev.c`, `include/hw/misc/iommu-testdev.h`: BAR0
//!   registers GVA_LO/HI (0x04/0x08), LEN (0x0c), RESULT (0x10),
//!   DBELL (0x14, bit 0 arms), ATTRS (0x18), GPA_LO/HI (0x1c/0x20);
//!   reading TRIGGERING (0x00) runs the armed DMA synchronously: it
//!   writes LEN bytes of 0x12345678 through the IOMMU at GVA, reads
//!   them back from GPA untranslated and sets RESULT to 0 (they match),
//!   0xdead0002 (the translated write failed: an IOMMU fault) or
//!   0xdead0004 (they differ: the write landed elsewhere). The device
//!   only writes: every DMA is a write.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::qtest::{Qtest, QtestError};

/// The SMMU's register base on `virt`.
pub const SMMU_BASE: u64 = 0x0905_0000;
/// Where `virt`'s RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;
/// virt's high PCIe ECAM.
const ECAM_BASE: u64 = 0x40_1000_0000;
/// virt's 32-bit PCI MMIO window, where the harness puts the BARs.
const MMIO_WINDOW: u64 = 0x1000_0000;
/// iommu-testdev's BAR0 size.
const BAR_SIZE: u64 = 0x1000;

/// PCI config space: command register and BAR0.
const PCI_COMMAND: u64 = 0x04;
const PCI_BAR0: u64 = 0x10;
/// Memory space and bus master enable.
const PCI_COMMAND_MEM_MASTER: u16 = 0x6;

/// iommu-testdev BAR0 registers.
mod itd {
    pub const TRIGGER: u64 = 0x00;
    pub const GVA_LO: u64 = 0x04;
    pub const GVA_HI: u64 = 0x08;
    pub const LEN: u64 = 0x0c;
    pub const RESULT: u64 = 0x10;
    pub const DBELL: u64 = 0x14;
    pub const ATTRS: u64 = 0x18;
    pub const GPA_LO: u64 = 0x1c;
    pub const GPA_HI: u64 = 0x20;
    /// DBELL: arm the DMA.
    pub const ARM: u32 = 1;
    /// ATTRS: Non-secure space, valid (as QEMU's own qtest sets it).
    pub const ATTRS_NS: u32 = 0xa;
    pub const RESULT_OK: u32 = 0;
    pub const RESULT_TX_FAIL: u32 = 0xdead_0002;
    pub const RESULT_MISMATCH: u32 = 0xdead_0004;
}

/// The value iommu-testdev writes, as bytes in memory.
pub const DMA_PATTERN: [u8; 4] = 0x1234_5678u32.to_le_bytes();

/// Which stages QEMU's SMMU implements (its `stage` property).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QemuStage {
    /// `stage=1`.
    S1,
    /// `stage=2`.
    S2,
    /// `stage=nested`.
    Nested,
}

impl QemuStage {
    /// The property value.
    pub fn name(self) -> &'static str {
        match self {
            QemuStage::S1 => "1",
            QemuStage::S2 => "2",
            QemuStage::Nested => "nested",
        }
    }
}

/// How to start QEMU for one scenario.
#[derive(Clone, Debug)]
pub struct QemuSpec {
    /// The `scripts/qemu` wrapper (or a qemu-system-aarch64).
    pub program: PathBuf,
    /// `scripts/qemu` takes the target as its first argument.
    pub wrapper: bool,
    /// The SMMU's stages.
    pub stage: QemuStage,
    /// RAM size in bytes (a multiple of 1 MiB).
    pub ram: u64,
    /// devfns (= StreamIDs) that get an iommu-testdev.
    pub devfns: Vec<u8>,
    /// Use the latest `virt` with `-global arm-smmuv3.stage=...` even for
    /// stage 1 or 2 (to show that the machine overrides it).
    pub latest_machine: bool,
    /// The file backing QEMU's RAM (`memory-backend-file,share=on`), which
    /// the harness reads and writes directly.
    pub ram_file: PathBuf,
}

impl QemuSpec {
    /// The command line.
    pub fn args(&self) -> Vec<String> {
        let machine = if self.stage == QemuStage::Nested || self.latest_machine {
            "virt"
        } else {
            "virt-9.1"
        };
        let mut a: Vec<String> = Vec::new();
        if self.wrapper {
            a.push("aarch64".into());
        }
        for s in [
            "-object",
            &format!(
                "memory-backend-file,id=ram,size={}M,mem-path={},share=on",
                self.ram >> 20,
                self.ram_file.display()
            ),
            "-machine",
            &format!("{machine},iommu=smmuv3,acpi=off,gic-version=3,memory-backend=ram"),
            "-global",
            &format!("arm-smmuv3.stage={}", self.stage.name()),
            "-accel",
            "qtest",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            &format!("{}M", self.ram >> 20),
            "-nodefaults",
            "-display",
            "none",
            "-qtest",
            "stdio",
            "-qtest-log",
            "/dev/null",
        ] {
            a.push(s.to_string());
        }
        for d in &self.devfns {
            a.push("-device".into());
            // Every function multifunction=on, so any set of functions of
            // one slot is accepted.
            a.push(format!(
                "iommu-testdev,addr={:x}.{:x},multifunction=on",
                d >> 3,
                d & 7
            ));
        }
        a
    }
}

/// What one iommu-testdev DMA did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaResult {
    /// The bytes landed at the GPA given.
    AtGpa,
    /// The translated write failed (the SMMU refused it).
    Fault,
    /// The write succeeded but not at the GPA given.
    Elsewhere,
    /// Any other RESULT value (a harness error).
    Other(u32),
}

/// QEMU's RAM as a file both QEMU and the harness map: reads and writes
/// are plain file I/O at `gpa - RAM_BASE`. Removed when dropped.
struct RamFile {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RamFile {
    fn create(path: &Path, size: u64) -> Result<RamFile, QtestError> {
        let io = |source| QtestError::Spawn {
            program: format!("RAM file {}", path.display()),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        file.set_len(size).map_err(io)?;
        Ok(RamFile {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// The file offset of `[gpa, gpa + len)`, if it is RAM.
    fn offset(&self, gpa: u64, len: usize) -> Option<u64> {
        let off = gpa.checked_sub(RAM_BASE)?;
        (off.checked_add(len as u64)? <= self.size).then_some(off)
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A RAM file path unique to this process and call.
pub fn ram_file_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "smmuv3-differential-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// QEMU running one scenario.
pub struct QemuSide {
    qt: Qtest,
    devfns: Vec<u8>,
    ram: RamFile,
}

impl QemuSide {
    /// Starts QEMU and enables every iommu-testdev's BAR.
    pub fn start(spec: &QemuSpec) -> Result<QemuSide, QtestError> {
        let ram = RamFile::create(&spec.ram_file, spec.ram)?;
        let qt = Qtest::spawn(&spec.program, &spec.args())?;
        let mut q = QemuSide {
            qt,
            devfns: spec.devfns.clone(),
            ram,
        };
        for (i, d) in spec.devfns.iter().enumerate() {
            let cfg = ECAM_BASE + (u64::from(*d) << 12);
            let bar = MMIO_WINDOW + BAR_SIZE * i as u64;
            q.qt.writel(cfg + PCI_BAR0, u32::try_from(bar).unwrap_or(0))?;
            q.qt.writew(cfg + PCI_COMMAND, PCI_COMMAND_MEM_MASTER)?;
        }
        Ok(q)
    }

    /// A register read at `offset` from the SMMU's base.
    pub fn mmio_read(&mut self, offset: u64, size: u32) -> Result<u64, QtestError> {
        match size {
            8 => self.qt.readq(SMMU_BASE + offset),
            _ => self.qt.readl(SMMU_BASE + offset).map(u64::from),
        }
    }

    /// A register write at `offset` from the SMMU's base.
    pub fn mmio_write(&mut self, offset: u64, size: u32, v: u64) -> Result<(), QtestError> {
        match size {
            8 => self.qt.writeq(SMMU_BASE + offset, v),
            _ => self.qt.writel(
                SMMU_BASE + offset,
                u32::try_from(v & 0xffff_ffff).unwrap_or(0),
            ),
        }
    }

    /// Guest memory: RAM from the shared file, anything else through
    /// qtest.
    pub fn read_mem(&mut self, gpa: u64, len: usize) -> Result<Vec<u8>, QtestError> {
        match self.ram.offset(gpa, len) {
            Some(off) => {
                let mut b = vec![0u8; len];
                self.ram
                    .file
                    .read_exact_at(&mut b, off)
                    .map_err(|source| self.ram_error(source))?;
                Ok(b)
            }
            None => self.qt.read(gpa, len),
        }
    }

    /// Guest memory.
    pub fn write_mem(&mut self, gpa: u64, bytes: &[u8]) -> Result<(), QtestError> {
        match self.ram.offset(gpa, bytes.len()) {
            Some(off) => self
                .ram
                .file
                .write_all_at(bytes, off)
                .map_err(|source| self.ram_error(source)),
            None => self.qt.write(gpa, bytes),
        }
    }

    fn ram_error(&self, source: std::io::Error) -> QtestError {
        QtestError::Spawn {
            program: format!("RAM file {}", self.ram.path.display()),
            source,
        }
    }

    /// Zero-fills guest memory (virt leaves its device tree at the start
    /// of RAM when it boots no kernel).
    pub fn zero_mem(&mut self, gpa: u64, len: u64) -> Result<(), QtestError> {
        self.qt.memset(gpa, len, 0)
    }

    /// Whether StreamID `sid` has an iommu-testdev.
    pub fn has_device(&self, sid: u32) -> bool {
        u8::try_from(sid).is_ok_and(|d| self.devfns.contains(&d))
    }

    /// A 4-byte DMA write by the device of StreamID `sid` at `iova`,
    /// checked at `gpa`.
    pub fn dma_write(&mut self, sid: u32, iova: u64, gpa: u64) -> Result<DmaResult, QtestError> {
        let Some(i) = self.devfns.iter().position(|d| u32::from(*d) == sid) else {
            return Ok(DmaResult::Other(0));
        };
        let bar = MMIO_WINDOW + BAR_SIZE * i as u64;
        let lo = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(0);
        let hi = |v: u64| u32::try_from(v >> 32).unwrap_or(0);
        for (reg, v) in [
            (itd::GVA_LO, lo(iova)),
            (itd::GVA_HI, hi(iova)),
            (itd::GPA_LO, lo(gpa)),
            (itd::GPA_HI, hi(gpa)),
            (itd::LEN, DMA_PATTERN.len() as u32),
            (itd::ATTRS, itd::ATTRS_NS),
            (itd::DBELL, itd::ARM),
        ] {
            self.qt.writel(bar + reg, v)?;
        }
        self.qt.readl(bar + itd::TRIGGER)?;
        Ok(match self.qt.readl(bar + itd::RESULT)? {
            itd::RESULT_OK => DmaResult::AtGpa,
            itd::RESULT_TX_FAIL => DmaResult::Fault,
            itd::RESULT_MISMATCH => DmaResult::Elsewhere,
            other => DmaResult::Other(other),
        })
    }
}

/// Whether `program` looks like the repository's `scripts/qemu` wrapper
/// (which takes the target architecture first).
pub fn is_wrapper(program: &Path) -> bool {
    program.file_name().is_some_and(|n| n == "qemu")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stage: QemuStage) -> QemuSpec {
        QemuSpec {
            program: PathBuf::from("scripts/qemu"),
            wrapper: true,
            stage,
            ram: 64 << 20,
            devfns: vec![0x10, 0x11],
            latest_machine: false,
            ram_file: PathBuf::from("/dev/shm/x"),
        }
    }

    #[test]
    fn stage1_uses_virt_9_1_and_the_global() {
        let a = spec(QemuStage::S1).args();
        assert_eq!(a[0], "aarch64");
        assert!(a.contains(
            &"virt-9.1,iommu=smmuv3,acpi=off,gic-version=3,memory-backend=ram".to_string()
        ));
        assert!(a.contains(
            &"memory-backend-file,id=ram,size=64M,mem-path=/dev/shm/x,share=on".to_string()
        ));
        assert!(a.contains(&"arm-smmuv3.stage=1".to_string()));
        assert!(a.contains(&"64M".to_string()));
    }

    #[test]
    fn nested_uses_latest_virt_and_devices_at_their_devfn() {
        let a = spec(QemuStage::Nested).args();
        assert!(
            a.contains(&"virt,iommu=smmuv3,acpi=off,gic-version=3,memory-backend=ram".to_string())
        );
        assert!(a.contains(&"iommu-testdev,addr=2.0,multifunction=on".to_string()));
        assert!(a.contains(&"iommu-testdev,addr=2.1,multifunction=on".to_string()));
    }
}
