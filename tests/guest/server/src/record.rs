//! Recording a guest's traffic with a model as a `.viommu` script
//! (docs/REPLAY.md), so that what a real Linux driver did replays without
//! QEMU (`viommu replay`, and `cargo test` over `tests/replay/recorded/`).
//!
//! With `VIOMMU_RECORD=PATH` in its environment the server records every
//! operation the guest makes the model do, in the order the model did
//! them (one lock, [`SharedRecorder`], is held around each):
//!
//! - the header: `model ...` with the options of the model the harness
//!   runs, and `ram GPA SIZE` for each region the client `dma_map`ped
//!   (declared before the first operation that follows its mapping);
//! - before each operation, `write-bytes` of the guest memory the model
//!   READ during it (tables, invalidation descriptors, requests), only for
//!   bytes that differ from what the replay's memory holds by then: the
//!   recorder keeps an image of that memory ([`Image`]: what earlier
//!   `write-bytes` set plus what the model itself wrote). Bytes the model
//!   wrote earlier in the same operation are its own, not the guest's;
//! - the operation itself (`mmio-write64`, `translate ... => GPA|fault`,
//!   `submit`, ...), with its result as a check where it has one;
//! - after it, `read8/16/32/64 ... ==` checks of every byte the model
//!   WROTE (invalidation-wait status, accessed/dirty flags, virtio status
//!   bytes and properties, fault events), with the values it wrote, taken
//!   the moment it wrote them: the guest runs on while the server works
//!   (QEMU posts vfio-user region writes) and may change them at once.
//!
//! The model's memory accesses are seen through [`RecMem`], a
//! [`GuestMemory`](vm_memory::GuestMemory) over the real guest RAM that logs each access (the
//! models take any `M: GuestMemory`). Ring memory of virtqueues is left
//! out ([`Recorder::exclude`]): the replay tool writes its own descriptors
//! there.
//!
//! A reset of the unit (VT-d function reset, virtio status 0 after the
//! driver ran) starts a new, self-contained script: boot 2 goes to PATH
//! with `-boot2` before `.viommu`, and so on.
//!
//! Writing the script is best effort: an I/O error is logged once and the
//! recording stops; the guest never notices.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::{error, info, warn};
use nesting_core::options::ModelOptions;
use nesting_core::types::Access;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

mod mem;

pub use mem::{AccessLog, LoggedSlices, MemAccess, RecMem, bytes_seen};

/// The environment variable naming the script to record.
pub const RECORD_ENV: &str = "VIOMMU_RECORD";

/// Longest `write-bytes` line, in bytes: a page table becomes a handful of
/// lines a reader can still follow.
const WRITE_BYTES_CHUNK: usize = 64;
/// Runs of changed bytes closer than this are written as one line (the
/// bytes between are the image's, so rewriting them changes nothing).
const WRITE_BYTES_GAP: u64 = 8;
/// The replay's guest memory as the script has built it so far: zero
/// where nothing was written. Sparse, by 4 KiB page.
#[derive(Debug, Default)]
pub struct Image {
    pages: HashMap<u64, Box<[u8; 4096]>>,
}

impl Image {
    /// The byte at `gpa`.
    pub fn get(&self, gpa: u64) -> u8 {
        self.pages
            .get(&(gpa >> 12))
            .map_or(0, |p| p[(gpa & 0xfff) as usize])
    }

    /// Sets the byte at `gpa`.
    pub fn set(&mut self, gpa: u64, v: u8) {
        if v == 0 && !self.pages.contains_key(&(gpa >> 12)) {
            return;
        }
        let page = self
            .pages
            .entry(gpa >> 12)
            .or_insert_with(|| Box::new([0; 4096]));
        page[(gpa & 0xfff) as usize] = v;
    }
}

/// A DMA access of an endpoint, as a `translate` line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dma {
    /// Requester: PCI requester ID (VT-d) or endpoint ID (virtio-iommu).
    pub sid: u32,
    /// PASID, for requests with one.
    pub pasid: Option<u32>,
    /// The address the device asked for.
    pub iova: u64,
    /// Read, write or both.
    pub access: Access,
}

impl Dma {
    /// `translate SID [pasid=N] IOVA r|w|rw => GPA|fault`.
    pub fn line(&self, result: Option<u64>) -> String {
        let acc = match (
            self.access.contains(Access::READ),
            self.access.contains(Access::WRITE),
        ) {
            (true, true) => "rw",
            (false, true) => "w",
            _ => "r",
        };
        let pasid = self
            .pasid
            .map(|p| format!(" pasid={p:#x}"))
            .unwrap_or_default();
        let to = result.map_or("fault".to_string(), |g| format!("{g:#x}"));
        format!(
            "translate {:#x}{pasid} {:#x} {acc} => {to}",
            self.sid, self.iova
        )
    }

    fn key(&self) -> (u32, Option<u32>, u64, Access) {
        (self.sid, self.pasid, self.iova >> 12, self.access)
    }
}

/// Address ranges `[start, end)`.
type Ranges = Vec<(u64, u64)>;

/// Counts of what a script holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Directive lines written (comments and header excluded).
    pub lines: u64,
    /// Of which checks (`==` lines and `translate`).
    pub checks: u64,
    /// Operations recorded.
    pub ops: u64,
}

/// The recorder of one server: the script of the current boot.
#[derive(Debug)]
pub struct Recorder {
    base: PathBuf,
    model: String,
    boot: u32,
    out: Option<Box<dyn WriteDebug>>,
    failed: bool,
    stats: Stats,
    image: Image,
    declared: Vec<(u64, u64)>,
    excluded: Vec<(u64, u64)>,
    last_dma: Option<(u32, Option<u32>, u64, Access)>,
    log: Arc<AccessLog>,
    sink: Option<Arc<Mutex<Vec<u8>>>>,
    ram: Arc<GuestMemoryMmap>,
    undeclared: Ranges,
}

/// A script destination that can be debug-printed.
trait WriteDebug: Write + Send + std::fmt::Debug {}
impl<T: Write + Send + std::fmt::Debug> WriteDebug for T {}

/// A recorder shared by the functions of one server.
pub type SharedRecorder = Arc<Mutex<Recorder>>;

/// Locks a shared recorder.
pub fn lock(r: &SharedRecorder) -> MutexGuard<'_, Recorder> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A `#[derive(Debug)]` handle on an in-memory script, for tests.
#[derive(Debug)]
struct MemSink(Arc<Mutex<Vec<u8>>>);

impl Write for MemSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Recorder {
    /// Records `model`'s traffic into `path` (boot 1) and the next boots'
    /// paths ([`boot_path`]).
    pub fn new(path: PathBuf, model: &impl ModelOptions) -> Self {
        Recorder {
            base: path,
            model: format!("model {}", model.directive()),
            boot: 1,
            out: None,
            failed: false,
            stats: Stats::default(),
            image: Image::default(),
            declared: Vec::new(),
            excluded: Vec::new(),
            last_dma: None,
            log: Arc::new(AccessLog::default()),
            sink: None,
            ram: Arc::new(GuestMemoryMmap::default()),
            undeclared: Vec::new(),
        }
    }

    /// The guest RAM the model sees now (the client's `dma_map`s): the
    /// script's `ram` lines, written with its header.
    pub fn set_memory(&mut self, mem: Arc<GuestMemoryMmap>) {
        self.ram = mem;
    }

    /// A recorder writing every boot's script into one buffer (tests):
    /// boots are separated by their header comment.
    pub fn in_memory(model: &impl ModelOptions) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut r = Recorder::new(PathBuf::from("memory.viommu"), model);
        r.sink = Some(Arc::clone(&buf));
        (r, buf)
    }

    /// The recorder `VIOMMU_RECORD` asks for, shared, if any.
    pub fn from_env(model: &impl ModelOptions) -> Option<SharedRecorder> {
        let path = std::env::var_os(RECORD_ENV).filter(|p| !p.is_empty())?;
        info!(
            "recording the guest's traffic with the model into {}",
            Path::new(&path).display()
        );
        Some(Arc::new(Mutex::new(Recorder::new(
            PathBuf::from(path),
            model,
        ))))
    }

    /// The log the model's [`RecMem`] writes into.
    pub fn log(&self) -> Arc<AccessLog> {
        Arc::clone(&self.log)
    }

    /// What the current script holds.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The path of the current boot's script.
    pub fn path(&self) -> PathBuf {
        boot_path(&self.base, self.boot)
    }

    /// The unit was reset: if the current script holds anything, the next
    /// operation starts a new script (the next boot's), from empty memory.
    pub fn reset(&mut self) {
        if self.stats.lines == 0 {
            return;
        }
        self.close();
        self.boot += 1;
        self.stats = Stats::default();
        self.image = Image::default();
        self.declared.clear();
        self.undeclared.clear();
        self.excluded.clear();
        self.last_dma = None;
    }

    fn close(&mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
            let s = self.stats;
            info!(
                "recorded {}: {} lines, {} checks, {} operations",
                self.path().display(),
                s.lines,
                s.checks,
                s.ops
            );
        }
    }

    /// Memory the replay tool owns (virtqueue rings): neither its reads
    /// nor its writes are recorded.
    pub fn exclude(&mut self, gpa: u64, len: u64) {
        self.excluded.push((gpa, gpa.saturating_add(len)));
    }

    fn excluded(&self, gpa: u64) -> bool {
        self.excluded.iter().any(|&(s, e)| gpa >= s && gpa < e)
    }

    fn open(&mut self) -> Option<&mut Box<dyn WriteDebug>> {
        if self.failed {
            return None;
        }
        if self.out.is_none() {
            let out: Box<dyn WriteDebug> = match &self.sink {
                Some(buf) => Box::new(MemSink(Arc::clone(buf))),
                None => match File::create(self.path()) {
                    Ok(f) => Box::new(BufWriter::new(f)),
                    Err(e) => {
                        error!("recording: cannot create {}: {e}", self.path().display());
                        self.failed = true;
                        return None;
                    }
                },
            };
            self.out = Some(out);
            let head = format!(
                "# Recorded by viommu-guest-server (tests/guest/server) from a real guest \
                 driving the model, boot {} of the run, {}.\n\
                 # Replay: viommu replay FILE (every check must pass).\n{}\n",
                self.boot,
                utc_date(),
                self.model
            );
            self.write_raw(&head);
            // The runner takes `ram` only before the first model directive
            // (REPLAY.md: `ram` must precede use), so the regions mapped
            // now are the script's RAM. QEMU maps guest RAM before the
            // guest runs; firmware's later remapping of the legacy areas
            // is over before a driver touches the unit.
            let ram = Arc::clone(&self.ram);
            for r in ram.iter() {
                let (start, len) = (r.start_addr().0, r.len());
                self.declared.push((start, start.saturating_add(len)));
                self.write_raw(&format!("ram {start:#x} {len:#x}\n"));
            }
        }
        self.out.as_mut()
    }

    fn write_raw(&mut self, s: &str) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        if let Err(e) = out.write_all(s.as_bytes()) {
            error!(
                "recording: writing {}: {e}; recording stops",
                self.path().display()
            );
            self.failed = true;
            self.out = None;
        }
    }

    /// Writes one directive line.
    pub fn line(&mut self, line: &str) {
        if self.open().is_none() {
            return;
        }
        self.stats.lines += 1;
        if line.contains("==") || line.starts_with("translate ") {
            self.stats.checks += 1;
        }
        self.last_dma = None;
        self.write_raw(line);
        self.write_raw("\n");
        // Each line reaches the file at once: the harness may stop the
        // server (SIGTERM) right after QEMU exits.
        self.flush();
    }

    /// Writes a comment line.
    pub fn comment(&mut self, text: &str) {
        if self.open().is_some() {
            self.write_raw(&format!("# {text}\n"));
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            error!(
                "recording: flushing {}: {e}; recording stops",
                self.path().display()
            );
            self.failed = true;
            self.out = None;
        }
    }

    /// Opens the script (declaring the RAM) and notes regions of `mem`
    /// mapped after the header: the replay cannot have them, so the script
    /// says so once per range (an access there may diverge).
    fn declare_ram(&mut self, mem: &GuestMemoryMmap) {
        if self.open().is_none() {
            return;
        }
        for r in mem.iter() {
            let (start, end) = (r.start_addr().0, r.start_addr().0.saturating_add(r.len()));
            for (s, e) in uncovered(&self.declared, start, end) {
                if self.undeclared.contains(&(s, e)) {
                    continue;
                }
                self.undeclared.push((s, e));
                warn!("recording: RAM {s:#x}..{e:#x} mapped after the script's header");
                self.comment(&format!(
                    "RAM {s:#x}..{e:#x} mapped after the header: not declared"
                ));
            }
        }
    }

    /// Runs one operation of the model over `mem` (the real memory its
    /// [`RecMem`] wraps) and records it: `write-bytes` for what it read,
    /// the lines `describe` gives (from its result and the accesses it
    /// made), then checks of what it wrote.
    pub fn op<R>(
        &mut self,
        mem: &GuestMemoryMmap,
        run: impl FnOnce() -> R,
        describe: impl FnOnce(&R, &[MemAccess]) -> Vec<String>,
    ) -> R {
        self.declare_ram(mem);
        self.log.start();
        let r = run();
        let accesses = self.log.take();
        let lines = describe(&r, &accesses);
        self.emit(&accesses, &lines, None);
        r
    }

    /// A DMA access of an endpoint: like [`Recorder::op`], with the
    /// `translate` line between the lines `around` gives (from the result
    /// and the accesses: e.g. the event buffers a fault used before, and
    /// the event queue's used count after). A translation repeating the
    /// previous line (same requester, page and access, translated, nothing
    /// else to say) is not written again.
    pub fn translate(
        &mut self,
        mem: &GuestMemoryMmap,
        dma: Dma,
        run: impl FnOnce() -> Option<u64>,
        around: impl FnOnce(Option<u64>, &[MemAccess]) -> (Vec<String>, Vec<String>),
    ) -> Option<u64> {
        self.declare_ram(mem);
        self.log.start();
        let r = run();
        let accesses = self.log.take();
        let (mut lines, after) = around(r, &accesses);
        lines.push(dma.line(r));
        lines.extend(after);
        let key = r.filter(|_| lines.len() == 1).map(|_| dma.key());
        self.emit(&accesses, &lines, key);
        r
    }

    fn emit(
        &mut self,
        accesses: &[MemAccess],
        lines: &[String],
        dma: Option<(u32, Option<u32>, u64, Access)>,
    ) {
        let (changed, written) = self.diff(accesses);
        if dma.is_some() && dma == self.last_dma && changed.is_empty() && written.is_empty() {
            return;
        }
        for l in self.write_bytes_lines(&changed) {
            self.line(&l);
        }
        for l in lines {
            self.line(l);
        }
        for l in self.written_checks(&written) {
            self.line(&l);
        }
        self.stats.ops += 1;
        self.last_dma = dma;
        self.flush();
    }

    /// The bytes the model read that the replay lacks (the image takes
    /// them), and the last value the model wrote at each address.
    fn diff(&mut self, accesses: &[MemAccess]) -> (Vec<(u64, u8)>, BTreeMap<u64, u8>) {
        let mut changed: Vec<(u64, u8)> = Vec::new();
        let mut written: BTreeMap<u64, u8> = BTreeMap::new();
        for a in accesses {
            match a {
                MemAccess::Read { gpa, bytes } => {
                    for (a, &b) in (*gpa..).zip(bytes) {
                        if self.excluded(a) || written.contains_key(&a) || self.image.get(a) == b {
                            continue;
                        }
                        self.image.set(a, b);
                        changed.push((a, b));
                    }
                }
                MemAccess::Write { gpa, bytes } => {
                    for (a, &b) in (*gpa..).zip(bytes) {
                        if !self.excluded(a) {
                            written.insert(a, b);
                        }
                    }
                }
            }
        }
        changed.sort_unstable_by_key(|c| c.0);
        changed.dedup_by_key(|c| c.0);
        (changed, written)
    }

    /// `write-bytes` lines for `changed` (sorted by address).
    fn write_bytes_lines(&self, changed: &[(u64, u8)]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < changed.len() {
            let start = changed[i].0;
            let mut end = start + 1;
            let mut j = i + 1;
            while j < changed.len()
                && changed[j].0 - end <= WRITE_BYTES_GAP
                && changed[j].0 + 1 - start <= WRITE_BYTES_CHUNK as u64
            {
                end = changed[j].0 + 1;
                j += 1;
            }
            let mut hex = String::with_capacity(2 * (end - start) as usize);
            for a in start..end {
                let _ = write!(hex, "{:02x}", self.image.get(a));
            }
            out.push(format!("write-bytes {start:#x} {hex}"));
            i = j;
        }
        out
    }

    /// Checks of what the model wrote, in the widest aligned units of each
    /// run of written bytes; the image takes the values. A unit left zero
    /// where the replay's memory already held zero is not checked (a
    /// zeroed buffer would be a check per 8 bytes), except the last unit
    /// of a run.
    fn written_checks(&mut self, written: &BTreeMap<u64, u8>) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = written.iter().map(|(a, b)| (*a, *b)).peekable();
        while let Some(&(start, _)) = it.peek() {
            let mut run = Vec::new();
            while let Some(&(a, b)) = it.peek() {
                if a != start + run.len() as u64 {
                    break;
                }
                run.push(b);
                it.next();
            }
            let end = start + run.len() as u64;
            let mut at = start;
            while at < end {
                let width = [8u64, 4, 2, 1]
                    .into_iter()
                    .find(|w| at.is_multiple_of(*w) && at + w <= end)
                    .unwrap_or(1);
                let i = (at - start) as usize;
                let bytes = run.get(i..i + width as usize).unwrap_or(&[]);
                let unchanged = (at..at + width).all(|a| self.image.get(a) == 0);
                let mut b = [0u8; 8];
                b[..bytes.len()].copy_from_slice(bytes);
                let v = u64::from_le_bytes(b);
                for (a, x) in (at..).zip(bytes) {
                    self.image.set(a, *x);
                }
                if v != 0 || !unchanged || at + width >= end {
                    out.push(format!("read{} {at:#x} == {v:#x}", width * 8));
                }
                at += width;
            }
        }
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

/// The script of boot `boot`: `base` itself for boot 1, else `base` with
/// `-bootN` before its `.viommu` extension (or at its end).
pub fn boot_path(base: &Path, boot: u32) -> PathBuf {
    if boot <= 1 {
        return base.to_path_buf();
    }
    let s = base.to_string_lossy();
    match s.strip_suffix(".viommu") {
        Some(stem) => PathBuf::from(format!("{stem}-boot{boot}.viommu")),
        None => PathBuf::from(format!("{s}-boot{boot}")),
    }
}

/// The parts of `[start, end)` no range of `declared` covers.
fn uncovered(declared: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut parts = vec![(start, end)];
    for &(ds, de) in declared {
        parts = parts
            .into_iter()
            .flat_map(|(s, e)| {
                let mut keep = Vec::new();
                if e <= ds || s >= de {
                    keep.push((s, e));
                } else {
                    if s < ds {
                        keep.push((s, ds));
                    }
                    if e > de {
                        keep.push((de, e));
                    }
                }
                keep
            })
            .collect();
    }
    parts
}

/// Today's date (UTC) as YYYY-MM-DD, for the script header.
fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests;
