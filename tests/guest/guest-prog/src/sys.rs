//! The guest's view of the endpoint through Linux: sysfs to find the
//! function, its BAR0 mapped from `resource0`, its config space through
//! the sysfs `config` file, and pinned buffers whose physical addresses
//! come from `/proc/self/pagemap`. All `unsafe` of the program is here.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of a register page the program maps from a BAR (every BAR of the
/// harness's functions is at least this big).
pub const REGS: usize = 4096;

/// The kernel's page size: 4 KiB on x86-64, 4 or 64 KiB on arm64 (fixed
/// when the kernel is built). Buffers, pinned pages, `/proc/self/pagemap`
/// and VFIO mappings (the IOMMU domain's smallest page is the kernel's)
/// go by it.
pub fn page() -> usize {
    static SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf reads a constant of the C library; no memory is
    // touched.
    *SIZE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// The first PCI function in sysfs with `vendor:device`.
pub fn find_function(vendor: u16, device: u16) -> Option<PathBuf> {
    let read_id = |p: &Path, f: &str| {
        fs::read_to_string(p.join(f))
            .ok()
            .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
    };
    let mut entries: Vec<_> = fs::read_dir("/sys/bus/pci/devices")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    entries
        .into_iter()
        .find(|p| read_id(p, "vendor") == Some(vendor) && read_id(p, "device") == Some(device))
}

fn read_hex16(p: &Path) -> Option<u16> {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
}

/// Device ID of a function.
pub fn device_id(dev: &Path) -> Option<u16> {
    read_hex16(&dev.join("device"))
}

/// Every PCI function of `vendor`, in sysfs order.
pub fn functions(vendor: u16) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir("/sys/bus/pci/devices")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| read_hex16(&p.join("vendor")) == Some(vendor));
    v.sort();
    v
}

/// Start address of BAR `n` from the sysfs `resource` file.
pub fn bar_address(dev: &Path, n: usize) -> Option<u64> {
    let text = fs::read_to_string(dev.join("resource")).ok()?;
    let line = text.lines().nth(n)?;
    let start = line.split_whitespace().next()?;
    u64::from_str_radix(start.trim_start_matches("0x"), 16).ok()
}

/// A function's configuration space through sysfs.
pub struct Config(File);

impl Config {
    /// Opens `dev`'s `config` file for reading and writing.
    pub fn open(dev: &Path) -> io::Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join("config"))
            .map(Config)
    }

    /// Reads the 16-bit register at `off`.
    pub fn read16(&self, off: u64) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.0.read_exact_at(&mut b, off)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes the 16-bit register at `off`.
    pub fn write16(&self, off: u64, v: u16) -> io::Result<()> {
        self.0.write_all_at(&v.to_le_bytes(), off)
    }
}

/// A BAR mapped from sysfs `resourceN`, accessed with 32-bit volatile
/// loads and stores.
pub struct Mmio {
    base: *mut u32,
    len: usize,
    _file: File,
}

impl Mmio {
    /// Maps `len` bytes of `dev`'s BAR `n`.
    pub fn map(dev: &Path, n: usize, len: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev.join(format!("resource{n}")))?;
        // SAFETY: a new shared mapping of the BAR file, at an address the
        // kernel picks; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmio {
            base: p.cast(),
            len,
            _file: file,
        })
    }

    fn reg(&self, off: usize) -> *mut u32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "register {off:#x} outside the BAR"
        );
        // In bounds: checked above.
        self.base.wrapping_byte_add(off)
    }

    /// Loads the register at `off`.
    pub fn read(&self, off: usize) -> u32 {
        // SAFETY: `reg` is an aligned address inside the live mapping.
        unsafe { self.reg(off).read_volatile() }
    }

    /// Stores `v` to the register at `off`.
    pub fn write(&self, off: usize, v: u32) {
        // SAFETY: `reg` is an aligned address inside the live mapping.
        unsafe { self.reg(off).write_volatile(v) }
    }
}

impl Drop for Mmio {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map` created.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// One locked page of anonymous memory and its guest physical address.
pub struct PinnedPage {
    addr: *mut u8,
    phys: u64,
}

impl PinnedPage {
    /// A zeroed page, populated and locked so its physical page stays.
    pub fn new() -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut page = PinnedPage {
            addr: p.cast(),
            phys: 0,
        };
        page.fill(0);
        page.phys = phys_of(page.addr as u64)?;
        Ok(page)
    }

    /// The guest physical address of the page.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Sets every byte to `v`.
    pub fn fill(&mut self, v: u8) {
        for i in 0..page() {
            self.set(i, v);
        }
    }

    /// Writes byte `i`.
    pub fn set(&mut self, i: usize, v: u8) {
        assert!(i < page());
        // SAFETY: `i` is inside the live page; volatile because a device
        // reads the page behind the compiler's back.
        unsafe { self.addr.add(i).write_volatile(v) }
    }

    /// The page's bytes as memory holds them now (volatile reads: the
    /// device wrote them behind the compiler's back).
    pub fn snapshot(&self) -> Vec<u8> {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: every index is inside the live page.
        (0..page())
            .map(|i| unsafe { self.addr.add(i).read_volatile() })
            .collect()
    }
}

impl Drop for PinnedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page `new` mapped.
        unsafe { libc::munmap(self.addr.cast(), page()) };
    }
}

/// Physical address of the resident page holding `va`
/// (Documentation/admin-guide/mm/pagemap.rst: bit 63 present, bits 0-54
/// the page frame number, shown to CAP_SYS_ADMIN only).
pub fn phys_of(va: u64) -> io::Result<u64> {
    let f = File::open("/proc/self/pagemap")?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, va / page() as u64 * 8)?;
    let e = u64::from_le_bytes(b);
    let pfn = e & ((1 << 55) - 1);
    if e >> 63 == 0 || pfn == 0 {
        return Err(io::Error::other(format!(
            "page {va:#x} not present or PFN hidden ({e:#x})"
        )));
    }
    Ok(pfn * page() as u64 + va % page() as u64)
}

/// The message of a `/dev/kmsg` record ("prio,seq,usec,flags;message",
/// then dictionary lines such as " DEVICE=+platform:..." after a newline):
/// the message line alone.
fn kmsg_message(rec: &str) -> &str {
    let msg = rec.split_once(';').map_or(rec, |(_, m)| m);
    msg.split('\n').next().unwrap_or(msg).trim_end()
}

/// The kernel log from now on (`/dev/kmsg`, non-blocking).
pub struct Kmsg(File);

impl Kmsg {
    /// Opens `/dev/kmsg` positioned after the last record.
    pub fn open_at_end() -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        f.seek(SeekFrom::End(0))?;
        Ok(Kmsg(f))
    }

    /// The first new record containing `needle`, waiting up to `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: std::time::Duration) -> Option<String> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        while std::time::Instant::now() < deadline {
            match self.0.read(&mut buf) {
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = kmsg_message(&rec);
                    if msg.contains(needle) {
                        return Some(msg.to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                // EPIPE: records were overwritten; keep reading.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// The next record, waiting up to `timeout`.
    pub fn next(&mut self, timeout: std::time::Duration) -> Option<String> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        while std::time::Instant::now() < deadline {
            match self.0.read(&mut buf) {
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    return Some(kmsg_message(&rec).to_string());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

/// The IOMMU group of `dev` and its default domain type
/// (`/sys/kernel/iommu_groups/N/type`).
pub fn iommu_group(dev: &Path) -> Option<(String, String)> {
    let link = fs::read_link(dev.join("iommu_group")).ok()?;
    let n = link.file_name()?.to_string_lossy().into_owned();
    let t = fs::read_to_string(format!("/sys/kernel/iommu_groups/{n}/type")).unwrap_or_default();
    Some((n, t.trim().to_string()))
}

/// Names under `/sys/class/iommu`.
pub fn iommus() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/sys/class/iommu")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every message of the kernel log still in its buffer, from the first
/// (`/dev/kmsg` read from its start until it has no more records).
pub fn kernel_log() -> Vec<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Bounded: the buffer holds a finite number of records; the bound
    // only guards against a writer racing us forever.
    for _ in 0..100_000 {
        match f.read(&mut buf) {
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                out.push(kmsg_message(&rec).to_string());
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(_) => break,
        }
    }
    out
}

/// A 64-bit value from a sysfs file holding hex digits.
pub fn read_hex64(p: &Path) -> Option<u64> {
    fs::read_to_string(p)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
}
