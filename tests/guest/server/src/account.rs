//! Where the server's time goes, for `tests/guest/bench`: with
//! `VIOMMU_ACCOUNT=1` the server counts, per boot (one server process
//! serves one QEMU run),
//!
//! - per function (the IOMMU's, each endpoint), the vfio-user messages it
//!   handled by kind and the time spent in their handlers, and the CPU
//!   time of the thread serving it (`/proc/self/task/TID/schedstat`):
//!   socket I/O, the `vfio_user` crate's decoding and replies, and the
//!   handlers. CPU minus handler time is the server's side of the
//!   transport;
//! - the model's own time, called with its lock held: per register read
//!   and write, per queue kick (VT-d IQT, SMMU CMDQ_PROD, a virtio
//!   notification; with the virtio requests those served) and per
//!   translation the endpoints' views asked of it (their cache misses);
//! - the endpoints' commands (translation, copies and all).
//!
//! A snapshot of every counter is one line on stderr,
//! `ACCOUNT mark=M key=N/NS ... key.cpu=NS`: at each write of an
//! endpoint's SCRATCH register (mark = the value written; the bench's
//! guest program writes one before and after each timed loop, so the
//! bench takes the difference) and when the server exits (`mark=exit`).
//!
//! Off (the default) it costs one relaxed load per message and per model
//! call; on, an `Instant::now` pair per timed call.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};

/// The environment variable that turns accounting on (`1`).
pub const ENV: &str = "VIOMMU_ACCOUNT";

/// A vfio-user function the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// The IOMMU's function (VT-d or SMMUv3 registers, virtio-iommu).
    Iommu,
    /// The first DMA test endpoint.
    Endpoint,
    /// The second DMA test endpoint.
    Endpoint2,
}

impl Function {
    const ALL: [Function; 3] = [Function::Iommu, Function::Endpoint, Function::Endpoint2];

    fn key(self) -> &'static str {
        match self {
            Function::Iommu => "iommu",
            Function::Endpoint => "ep",
            Function::Endpoint2 => "ep2",
        }
    }
}

/// A vfio-user message, as the backend sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// `VFIO_USER_REGION_READ` (BARs and config space).
    RegionRead,
    /// `VFIO_USER_REGION_WRITE`.
    RegionWrite,
    /// `VFIO_USER_DMA_MAP`.
    DmaMap,
    /// `VFIO_USER_DMA_UNMAP`.
    DmaUnmap,
    /// `VFIO_USER_DEVICE_SET_IRQS`, `VFIO_USER_DEVICE_RESET`.
    Other,
}

impl Message {
    const ALL: [Message; 5] = [
        Message::RegionRead,
        Message::RegionWrite,
        Message::DmaMap,
        Message::DmaUnmap,
        Message::Other,
    ];

    fn key(self) -> &'static str {
        match self {
            Message::RegionRead => "read",
            Message::RegionWrite => "write",
            Message::DmaMap => "map",
            Message::DmaUnmap => "unmap",
            Message::Other => "other",
        }
    }
}

/// What the server timed that is not a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// The model's register read (virtio: device configuration).
    ModelRead,
    /// The model's register write other than a queue kick.
    ModelWrite,
    /// The model serving a queue: VT-d IQT and SMMU CMDQ_PROD writes,
    /// virtio notifications.
    ModelQueue,
    /// A translation the model made for an endpoint.
    ModelTranslate,
    /// An endpoint's command (FILL, COPY, TRANSLATE), translation included.
    EndpointCommand,
}

impl Work {
    const ALL: [Work; 5] = [
        Work::ModelRead,
        Work::ModelWrite,
        Work::ModelQueue,
        Work::ModelTranslate,
        Work::EndpointCommand,
    ];

    fn key(self) -> &'static str {
        match self {
            Work::ModelRead => "model.read",
            Work::ModelWrite => "model.write",
            Work::ModelQueue => "model.queue",
            Work::ModelTranslate => "model.translate",
            Work::EndpointCommand => "dma.cmd",
        }
    }
}

/// A count and the nanoseconds they took.
#[derive(Debug)]
struct Counter {
    n: AtomicU64,
    ns: AtomicU64,
}

impl Counter {
    const fn new() -> Self {
        Counter {
            n: AtomicU64::new(0),
            ns: AtomicU64::new(0),
        }
    }

    fn add(&self, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.n.fetch_add(1, Relaxed);
        self.ns.fetch_add(ns, Relaxed);
    }

    fn get(&self) -> (u64, u64) {
        (self.n.load(Relaxed), self.ns.load(Relaxed))
    }
}

/// [`FunctionAccount::cpu_at_exit`] of a function still being served.
const SERVING: u64 = u64::MAX;

/// One function's messages and serving thread.
#[derive(Debug)]
struct FunctionAccount {
    messages: [Counter; Message::ALL.len()],
    /// The serving thread's ID (0: not seen yet).
    tid: AtomicU64,
    /// Its CPU time when it stopped serving ([`SERVING`]: not yet).
    cpu_at_exit: AtomicU64,
}

impl FunctionAccount {
    const fn new() -> Self {
        FunctionAccount {
            messages: [const { Counter::new() }; Message::ALL.len()],
            tid: AtomicU64::new(0),
            cpu_at_exit: AtomicU64::new(SERVING),
        }
    }
}

/// Every counter of one server.
#[derive(Debug)]
pub struct Accounts {
    enabled: AtomicBool,
    functions: [FunctionAccount; Function::ALL.len()],
    work: [Counter; Work::ALL.len()],
    /// Virtio requests (used-ring entries) the notifications served.
    requests: AtomicU64,
}

/// The server's accounts.
pub static ACCOUNTS: Accounts = Accounts::new();

impl Default for Accounts {
    fn default() -> Self {
        Self::new()
    }
}

impl Accounts {
    /// All zero, off.
    pub const fn new() -> Self {
        Accounts {
            enabled: AtomicBool::new(false),
            functions: [const { FunctionAccount::new() }; Function::ALL.len()],
            work: [const { Counter::new() }; Work::ALL.len()],
            requests: AtomicU64::new(0),
        }
    }

    /// Turns counting on.
    pub fn enable(&self) {
        self.enabled.store(true, Relaxed);
    }

    /// Whether counting is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// A start time when counting is on.
    pub fn start(&self) -> Option<Instant> {
        self.enabled().then(Instant::now)
    }

    /// Runs `f`, timed as `work` when counting is on.
    pub fn timed<R>(&self, work: Work, f: impl FnOnce() -> R) -> R {
        let Some(t) = self.start() else {
            return f();
        };
        let r = f();
        self.work[work as usize].add(t);
        r
    }

    /// Counts a message of `function` whose handler started at `since`,
    /// and learns the serving thread the first time.
    pub fn message(&self, function: Function, message: Message, since: Instant) {
        let f = &self.functions[function as usize];
        f.messages[message as usize].add(since);
        if f.tid.load(Relaxed) == 0 {
            f.tid.store(thread_id().unwrap_or(0), Relaxed);
        }
    }

    /// Adds `n` virtio requests served.
    pub fn requests(&self, n: u64) {
        if self.enabled() {
            self.requests.fetch_add(n, Relaxed);
        }
    }

    /// The calling thread stopped serving `function`: keeps its CPU time
    /// (its `/proc` entry goes with it).
    pub fn serving_done(&self, function: Function) {
        if self.enabled()
            && let Some(ns) = cpu_ns("/proc/thread-self/schedstat")
        {
            self.functions[function as usize]
                .cpu_at_exit
                .store(ns, Relaxed);
        }
    }

    /// CPU time of the thread serving `function`, nanoseconds.
    fn cpu(&self, function: Function) -> Option<u64> {
        let f = &self.functions[function as usize];
        match f.cpu_at_exit.load(Relaxed) {
            SERVING => match f.tid.load(Relaxed) {
                0 => None,
                tid => cpu_ns(&format!("/proc/self/task/{tid}/schedstat")),
            },
            ns => Some(ns),
        }
    }

    /// One `ACCOUNT mark=MARK ...` line: every counter that is not zero.
    pub fn snapshot(&self, mark: &str) -> String {
        let mut s = format!("ACCOUNT mark={mark}");
        for function in Function::ALL {
            let f = &self.functions[function as usize];
            for message in Message::ALL {
                let (n, ns) = f.messages[message as usize].get();
                if n != 0 {
                    let _ = write!(s, " {}.{}={n}/{ns}", function.key(), message.key());
                }
            }
            if let Some(ns) = self.cpu(function) {
                let _ = write!(s, " {}.cpu={ns}", function.key());
            }
        }
        for work in Work::ALL {
            let (n, ns) = self.work[work as usize].get();
            if n != 0 {
                let _ = write!(s, " {}={n}/{ns}", work.key());
            }
        }
        let requests = self.requests.load(Relaxed);
        if requests != 0 {
            let _ = write!(s, " model.requests={requests}");
        }
        s
    }

    /// Prints a snapshot on stderr when counting is on.
    pub fn mark(&self, mark: &str) {
        if self.enabled() {
            eprintln!("{}", self.snapshot(mark));
        }
    }
}

/// A function's backend whose messages [`ACCOUNTS`] counts.
pub struct Accounted<B> {
    function: Function,
    inner: B,
}

impl<B: ServerBackend> Accounted<B> {
    /// Counts `inner`'s messages as `function`'s.
    pub fn new(function: Function, inner: B) -> Self {
        Accounted { function, inner }
    }

    fn count<R>(&mut self, message: Message, f: impl FnOnce(&mut B) -> R) -> R {
        let start = ACCOUNTS.start();
        let r = f(&mut self.inner);
        if let Some(t) = start {
            ACCOUNTS.message(self.function, message, t);
        }
        r
    }
}

impl<B: ServerBackend> ServerBackend for Accounted<B> {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.count(Message::RegionRead, |b| b.region_read(region, offset, data))
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.count(Message::RegionWrite, |b| {
            b.region_write(region, offset, data)
        })
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        self.count(Message::DmaMap, |b| {
            b.dma_map(flags, offset, address, size, fd)
        })
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        self.count(Message::DmaUnmap, |b| b.dma_unmap(flags, address, size))
    }

    fn reset(&mut self) -> io::Result<()> {
        self.count(Message::Other, ServerBackend::reset)
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        self.count(Message::Other, |b| {
            b.set_irqs(index, flags, start, count, fds)
        })
    }
}

/// Turns [`ACCOUNTS`] on when `VIOMMU_ACCOUNT=1`.
pub fn enable_from_env() {
    if std::env::var(ENV).is_ok_and(|v| v == "1") {
        ACCOUNTS.enable();
    }
}

/// The calling thread's ID, from `/proc/thread-self` (`PID/task/TID`).
fn thread_id() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// The first field of a `schedstat` file: time spent on a CPU, in
/// nanoseconds (Documentation/scheduler/sched-stats.rst).
fn cpu_ns(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_counts_nothing_and_prints_only_the_mark() {
        let a = Accounts::new();
        assert_eq!(a.timed(Work::ModelRead, || 7), 7);
        a.requests(3);
        assert!(a.start().is_none());
        assert_eq!(a.snapshot("1"), "ACCOUNT mark=1");
    }

    #[test]
    fn on_counts_work_messages_requests_and_the_serving_thread() {
        let a = Accounts::new();
        a.enable();
        a.timed(Work::ModelQueue, || ());
        a.timed(Work::ModelQueue, || ());
        a.requests(5);
        a.message(Function::Iommu, Message::RegionWrite, Instant::now());
        let s = a.snapshot("exit");
        assert!(s.starts_with("ACCOUNT mark=exit "), "{s}");
        assert!(s.contains(" iommu.write=1/"), "{s}");
        assert!(s.contains(" model.queue=2/"), "{s}");
        assert!(s.contains(" model.requests=5"), "{s}");
        assert!(!s.contains("ep."), "no endpoint message: {s}");
        // This thread served the IOMMU function: its CPU time is there,
        // live, then as it was when it stopped serving. (The kernel adds
        // a thread's running slice when it ends, so a short-lived thread
        // may read 0.)
        assert!(s.contains(" iommu.cpu="), "{s}");
        a.serving_done(Function::Iommu);
        assert_ne!(a.functions[0].cpu_at_exit.load(Relaxed), SERVING);
        assert!(a.snapshot("x").contains(" iommu.cpu="));
    }

    #[test]
    fn snapshot_fields_parse_as_count_and_nanoseconds() {
        let a = Accounts::new();
        a.enable();
        a.timed(Work::ModelTranslate, std::thread::yield_now);
        let s = a.snapshot("256");
        let field = s
            .split_whitespace()
            .find_map(|w| w.strip_prefix("model.translate="))
            .unwrap();
        let (n, ns) = field.split_once('/').unwrap();
        assert_eq!(n, "1");
        assert!(ns.parse::<u64>().is_ok(), "{s}");
    }
}
