//! The device a VMM plugs into its virtio transport: feature negotiation,
//! configuration space, the two virtqueues, interrupts, passthrough
//! endpoints, reset.

use std::sync::{Arc, Mutex, MutexGuard};

use nesting_core::host::objects::{BoundDevice, SharedHost};
use nesting_core::iotlb::{Iotlb, IotlbInvalidation};
use nesting_core::ladder::{self, Adjustments, Check, Decision, DecisionKind, HostView};
use nesting_core::mem::GuestMemoryExt;
use nesting_core::passthrough::{Place, Plan, StageError};
use nesting_core::ram::RamIoas;
use nesting_core::types::Gpa;
use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory};

use crate::config::{self, ConfigError, DeviceConfig, DeviceOptions, ResvMem};
use crate::domain::Tables;
use crate::event::EventLog;
use crate::nesting::{Passthrough, PassthroughError};
use crate::options::VirtioIommuConfig;
use crate::protocol::{EVENT_QUEUE, Features, NUM_QUEUES, REQUEST_QUEUE};
use crate::queue::{self, QueueError};
use crate::state::{Probed, State};

/// Largest virtqueue the device offers (`queue_num_max`): Linux sizes its
/// event buffers and in-flight requests by it; QEMU offers 256.
pub const MAX_QUEUE_SIZE: u16 = 256;

/// Entries of the device's IOTLB (translations cached for `translate`):
/// 4096 pages of 4 KiB cover 16 MiB of DMA buffers per working set, more
/// with 2 MiB and 1 GiB entries; a miss only costs a lookup under the lock.
pub const IOTLB_ENTRIES: usize = 4096;

/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (virtio 1.3 2.7.6): "If flags is 1, the
/// device SHOULD NOT send a notification" (without VIRTIO_F_EVENT_IDX).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// What the device asks the VMM's transport to signal. The device's
/// configuration never changes on its own (only the driver writes
/// `bypass`), so there is no configuration-change interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// The device used buffers of this queue (virtio 1.3 2.7.7.2: used
    /// buffer notification).
    Queue(u16),
}

/// The interrupt callback: the VMM raises the MSI-X vector or INTx/MMIO
/// interrupt of its transport for the cause. Called with the device's lock
/// held: it must not call back into the device.
pub type InterruptCallback = Arc<dyn Fn(Interrupt) + Send + Sync>;

/// A device-level failure (never caused by a malformed request, which gets
/// a status instead).
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The configuration cannot make a device.
    #[error("virtio-iommu configuration")]
    Config(#[from] ConfigError),
    /// FEATURES_OK refused: the driver's feature set is not one the device
    /// can operate with.
    #[error("driver features {driver:#x} refused: {why}")]
    Features {
        /// What the driver acknowledged.
        driver: u64,
        /// Why, with the spec section.
        why: &'static str,
    },
    /// A queue index other than 0 (request) or 1 (event).
    #[error("virtio-iommu has no queue {0}")]
    NoQueue(u16),
    /// The queue's size or ring addresses are not usable.
    #[error("queue {queue} set-up refused")]
    QueueSetup {
        /// The queue.
        queue: u16,
        /// virtio-queue's reason.
        #[source]
        source: virtio_queue::Error,
    },
    /// A queue cannot be processed; the device needs a reset.
    #[error("virtqueue failure")]
    Queue(#[from] QueueError),
    /// No guest memory was given before a queue was used.
    #[error("no guest memory set")]
    NoMemory,
    /// The host refused what a passthrough endpoint needed: its device,
    /// or a move the driver's change (FEATURES_OK, restore) called for.
    #[error("passthrough endpoint {endpoint:#x}")]
    Passthrough {
        /// The endpoint.
        endpoint: u32,
        /// The host's failure.
        #[source]
        source: PassthroughError,
    },
    /// The ladder (or the device's own configuration rules) refused a
    /// passthrough endpoint; the decision lists the failed checks.
    #[error("passthrough endpoint refused: {}", .0.reason)]
    Refused(Box<Decision>),
    /// The endpoint is a passthrough endpoint already.
    #[error("endpoint {0:#x} is a passthrough endpoint already")]
    AlreadyPassthrough(u32),
    /// A passthrough endpoint was added without a host.
    #[error("no passthrough host set")]
    NoHost,
    /// The passthrough host was set already.
    #[error("the passthrough host is set already")]
    HostAlreadySet,
}

pub(crate) struct Inner<M> {
    pub state: State,
    pub queues: [Queue; NUM_QUEUES],
    pub mem: Option<Arc<M>>,
    pub irq: Option<InterruptCallback>,
}

impl<M: GuestMemory> Inner<M> {
    /// Signals a used-buffer notification for queue `q` unless the driver
    /// suppressed it (virtio 1.3 2.7.10: VIRTQ_AVAIL_F_NO_INTERRUPT, which
    /// Linux sets on its callback-less request queue).
    pub fn signal_used(&mut self, q: u16, mem: &M) {
        let Some(queue) = self.queues.get_mut(usize::from(q)) else {
            return;
        };
        // virtio-queue leaves the flag to the device (VIRTIO_F_EVENT_IDX is
        // not offered, so it is the only suppression). Read after the used
        // ring writes; a ring whose flags cannot be read still gets the
        // interrupt: a spurious one is harmless, a lost one is not.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let flags = mem.read_u16_le(Gpa(queue.avail_ring())).unwrap_or(0);
        if flags & VIRTQ_AVAIL_F_NO_INTERRUPT != 0 {
            return;
        }
        if let Some(cb) = &self.irq {
            cb(Interrupt::Queue(q));
        }
    }
}

/// The virtio-iommu device.
///
/// All methods take `&self`: the device locks its state, so the VMM's
/// transport thread (config, queues) and its device threads
/// ([`VirtioIommu::translate`]) can share it behind an `Arc`.
pub struct VirtioIommu<M: GuestMemory> {
    pub(crate) inner: Mutex<Inner<M>>,
    /// Translations cached for [`VirtioIommu::translate`] and the
    /// `nesting_core::iotlb::IommuView`s over the device; read without the
    /// lock, invalidated under it.
    pub(crate) iotlb: Iotlb,
}

impl<M: GuestMemory> std::fmt::Debug for VirtioIommu<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioIommu").finish_non_exhaustive()
    }
}

fn new_queues() -> [Queue; NUM_QUEUES] {
    // MAX_QUEUE_SIZE is a power of two, which is all Queue::new checks.
    [0, 1].map(|_| Queue::new(MAX_QUEUE_SIZE).unwrap_or_else(|_| unreachable!()))
}

impl<M: GuestMemory> VirtioIommu<M> {
    /// A device presenting `cfg` (the `model virtio-iommu` options of
    /// `REPLAY.md`), with no passthrough endpoint.
    pub fn new(cfg: &VirtioIommuConfig, options: DeviceOptions) -> Result<Self, DeviceError> {
        let cfg = DeviceConfig::new(cfg, options)?;
        Ok(Self::from_config(cfg))
    }

    pub(crate) fn from_config(cfg: DeviceConfig) -> Self {
        let bypass = cfg.bypass_at_reset;
        VirtioIommu {
            inner: Mutex::new(Inner {
                state: State {
                    cfg,
                    features: Features::empty(),
                    features_ok: false,
                    bypass,
                    tables: Tables::default(),
                    events: EventLog::default(),
                    passthrough: None,
                    probed: Probed::default(),
                    inv: Vec::new(),
                    limit_refusals: 0,
                    faults: 0,
                },
                queues: new_queues(),
                mem: None,
                irq: None,
            }),
            iotlb: Iotlb::new(IOTLB_ENTRIES),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        // A panic elsewhere cannot leave the state half-updated in a way
        // that matters more than losing the device: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every cached translation (bypass rule, reset, restore).
    pub(crate) fn invalidate_all(&self, st: &mut State) {
        st.inv.clear();
        self.iotlb.invalidate(IotlbInvalidation::All);
    }

    /// Sets (or replaces, after memory hot-plug) the guest memory.
    pub fn set_memory(&self, mem: Arc<M>) {
        self.lock().mem = Some(mem);
    }

    /// Sets the interrupt callback.
    pub fn set_interrupt(&self, cb: InterruptCallback) {
        self.lock().irq = Some(cb);
    }

    /// Gives the device the VM's iommufd and its RAM IOAS (guest RAM at
    /// IOVA = GPA), once, before [`VirtioIommu::add_passthrough`]: the
    /// device keeps its passthrough endpoints' host objects over them.
    pub fn set_passthrough_host(
        &self,
        host: SharedHost,
        ram: Arc<RamIoas>,
    ) -> Result<(), DeviceError> {
        let mut g = self.lock();
        if g.state.passthrough.is_some() {
            return Err(DeviceError::HostAlreadySet);
        }
        g.state.passthrough = Some(Passthrough::new(host, ram));
        Ok(())
    }

    /// Adds passthrough endpoint `endpoint`: `device`, the VFIO device
    /// behind it bound to the VM's iommufd, whose host IOMMU `view`
    /// describes. The ladder decides: virtio-iommu is always shadowed, or
    /// refused when the host cannot map what the device presents. Before
    /// the driver negotiated features the device's page sizes and input
    /// range shrink to the host's; afterwards (hot-plug) they must hold as
    /// the driver read them. The host's IOVA holes are the endpoint's own:
    /// its PROBE announces them (an emulated endpoint's does not), so after
    /// FEATURES_OK an endpoint with holes is accepted only while its PROBE
    /// can still do so (PROBE negotiated, the endpoint not probed yet).
    /// The endpoint starts where the guest's view puts it: blocked, at
    /// identity (bypass), or in its domain's host space when the guest had
    /// attached it already.
    ///
    /// Returns the decision. A refusal is [`DeviceError::Refused`] with the
    /// checks that failed; a host failure [`DeviceError::Passthrough`];
    /// either way nothing changed and the device is handed back.
    pub fn add_passthrough(
        &self,
        endpoint: u32,
        device: BoundDevice,
        view: &HostView,
    ) -> Result<Decision, (DeviceError, BoundDevice)> {
        let mut g = self.lock();
        let st = &mut g.state;
        match &st.passthrough {
            None => return Err((DeviceError::NoHost, device)),
            Some(pt) if pt.contains(endpoint) => {
                return Err((DeviceError::AlreadyPassthrough(endpoint), device));
            }
            Some(_) => {}
        }
        let Admission {
            next,
            holes,
            decision,
        } = match st.plan_host(endpoint, view) {
            Ok(p) => p,
            Err(refusal) => return Err((DeviceError::Refused(refusal), device)),
        };
        st.admit(endpoint, device, view, holes)?;
        st.cfg = next;
        log::info!(
            "virtio-iommu: passthrough endpoint {endpoint:#x}: {}",
            decision.reason
        );
        Ok(decision)
    }

    /// Removes passthrough endpoint `endpoint` (hot-unplug) and hands its
    /// device back, detached from whatever it was attached to (a failed
    /// detach is logged; dropping the device unbinds it). The host space
    /// it leaves empty is destroyed. The same ID can then be added again
    /// ([`VirtioIommu::add_passthrough`]). `None`: not a passthrough
    /// endpoint.
    ///
    /// The guest's view is unchanged (the driver detaches the endpoint or
    /// not; the configuration it read stays as it was). The endpoint no
    /// longer counts as probed: a device plugged there next is a new one,
    /// which the driver probes when it appears.
    pub fn remove_passthrough(&self, endpoint: u32) -> Option<BoundDevice> {
        let mut g = self.lock();
        let dev = g.state.passthrough.as_mut()?.remove(endpoint)?;
        // A device plugged here next is a new one, which the driver
        // probes when it appears.
        g.state.probed.forget(endpoint);
        self.invalidate_all(&mut g.state);
        log::info!("virtio-iommu: passthrough endpoint {endpoint:#x} removed");
        Some(dev)
    }

    /// Feature bits offered (64 bits; bit 32 is VIRTIO_F_VERSION_1).
    pub fn device_features(&self) -> u64 {
        self.lock().state.cfg.offered().bits()
    }

    /// The driver's FEATURES_OK with `driver` acknowledged. Refuses (the
    /// transport then leaves FEATURES_OK clear) a set with bits the device
    /// did not offer (virtio 1.3 3.1.1: "the driver MUST NOT accept a
    /// feature which the device did not offer") or without
    /// VIRTIO_F_VERSION_1 (the device has no legacy interface, 6.1).
    pub fn ack_features(&self, driver: u64) -> Result<(), DeviceError> {
        let mut g = self.lock();
        let offered = g.state.cfg.offered();
        let f = Features::from_bits_retain(driver);
        let why = if !offered.contains(f) {
            Some("acknowledges a feature the device did not offer (virtio 1.3 3.1.1)")
        } else if !f.contains(Features::VERSION_1) {
            Some(
                "VIRTIO_F_VERSION_1 not accepted; the device has no legacy interface (virtio 1.3 7.1)",
            )
        } else {
            None
        };
        if let Some(why) = why {
            return Err(DeviceError::Features { driver, why });
        }
        // F_BYPASS changes where unattached passthrough endpoints are: a
        // host that cannot move them refuses FEATURES_OK, nothing changed.
        let (was, was_ok) = (g.state.features, g.state.features_ok);
        let moved = g.state.change_rule(
            |st| {
                st.features = f;
                st.features_ok = true;
            },
            |st| {
                st.features = was;
                st.features_ok = was_ok;
            },
        );
        self.invalidate_all(&mut g.state);
        moved.map_err(|(endpoint, e)| DeviceError::Passthrough {
            endpoint,
            source: e.into(),
        })
    }

    /// Reads device configuration space (`data.len()` bytes at `offset`).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let g = self.lock();
        let space = g.state.cfg.space(g.state.bypass);
        config::read_space(&space, offset, data);
    }

    /// Writes device configuration space. Only `bypass` is writable, and
    /// only with VIRTIO_IOMMU_F_BYPASS_CONFIG negotiated (virtio 1.3
    /// 5.13.4.1: "the driver MAY write to bypass. The driver MUST NOT write
    /// to any other device configuration field"); other writes are ignored.
    pub fn write_config(&self, offset: u64, data: &[u8]) {
        let mut g = self.lock();
        let Some(v) = config::bypass_byte(offset, data) else {
            nesting_core::guest_log!(Debug, "virtio-iommu: ignored config write at {offset:#x}");
            return;
        };
        if !g.state.features.contains(Features::BYPASS_CONFIG) {
            nesting_core::guest_log!(
                Debug,
                "virtio-iommu: bypass write without BYPASS_CONFIG ignored"
            );
            return;
        }
        // 5.13.4.1: "The driver MUST NOT write a value different than 0 or
        // 1 to bypass"; the device keeps presenting 0 or 1 (5.13.4.2).
        if v > 1 {
            nesting_core::guest_log!(Warn, "virtio-iommu: bypass write of {v:#x} ignored");
            return;
        }
        // Unattached passthrough endpoints follow the rule on the host. If
        // the host cannot move one (e.g. block fails on 1 -> 0), the write
        // does not take effect and `bypass` keeps the value the host
        // matches: the driver reads back what is enforced, and no endpoint
        // keeps identity access to all guest RAM while the guest believes
        // it blocked (5.13.6.2). (DEVICE_NEEDS_RESET, 2.1.2, is the
        // transport's status bit, which this API cannot set from a config
        // write, and Linux does not read bypass back; the error log is the
        // VMM's signal.)
        let old = g.state.bypass;
        if let Err((ep, e)) = g
            .state
            .change_rule(|st| st.bypass = v == 1, |st| st.bypass = old)
        {
            nesting_core::guest_log!(
                Error,
                "virtio-iommu: bypass write of {v} not applied: passthrough endpoint {ep:#x}: {e}"
            );
        }
        self.invalidate_all(&mut g.state);
    }

    /// Sets up virtqueue `index` (0 request, 1 event) as a split ring of
    /// `size` entries and enables it.
    pub fn setup_queue(
        &self,
        index: u16,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), DeviceError> {
        let mut g = self.lock();
        let q = g
            .queues
            .get_mut(usize::from(index))
            .ok_or(DeviceError::NoQueue(index))?;
        let err = |source| DeviceError::QueueSetup {
            queue: index,
            source,
        };
        let mut fresh = Queue::new(MAX_QUEUE_SIZE).map_err(err)?;
        fresh.try_set_size(size).map_err(err)?;
        fresh
            .try_set_desc_table_address(GuestAddress(desc))
            .map_err(err)?;
        fresh
            .try_set_avail_ring_address(GuestAddress(avail))
            .map_err(err)?;
        fresh
            .try_set_used_ring_address(GuestAddress(used))
            .map_err(err)?;
        fresh.set_ready(true);
        *q = fresh;
        Ok(())
    }

    /// The driver notified queue `index`: requests are executed and
    /// answered, or waiting faults are written into the new event buffers.
    /// Returns after the device has used every buffer it could.
    pub fn notify(&self, index: u16) -> Result<(), DeviceError> {
        let mut g = self.lock();
        let mem = g.mem.clone().ok_or(DeviceError::NoMemory)?;
        let inner = &mut *g;
        let used = match index {
            REQUEST_QUEUE => {
                let q = &mut inner.queues[usize::from(REQUEST_QUEUE)];
                queue::drain_requests(&mut inner.state, q, &*mem, &self.iotlb)?
            }
            EVENT_QUEUE => {
                let q = &mut inner.queues[usize::from(EVENT_QUEUE)];
                queue::deliver_events(&mut inner.state.events, q, &*mem)?
            }
            other => return Err(DeviceError::NoQueue(other)),
        };
        if used > 0 {
            inner.signal_used(index, &mem);
        }
        Ok(())
    }

    /// Used-ring entries the device has produced on queue `index` since it
    /// was set up (wrapping at 2^16, as the ring index does).
    pub fn used_count(&self, index: u16) -> Option<u16> {
        let g = self.lock();
        g.queues.get(usize::from(index)).map(|q| q.next_used())
    }

    /// Requests refused (S_NOMEM) because a limit was reached
    /// ([`crate::MAX_DOMAINS`], [`crate::MAX_MAPPINGS_PER_DOMAIN`],
    /// [`crate::MAX_MAPPINGS_TOTAL`]); each refusal is also logged,
    /// rate-limited.
    pub fn limit_refusals(&self) -> u64 {
        self.lock().state.limit_refusals
    }

    /// Faults dropped because no event buffer was available and the
    /// backlog was full.
    pub fn dropped_events(&self) -> u64 {
        self.lock().state.events.dropped()
    }

    /// Faults waiting for an event buffer.
    pub fn pending_events(&self) -> usize {
        self.lock().state.events.pending()
    }

    /// Device reset (the driver wrote 0 to the device status): features,
    /// queues, domains and waiting faults are cleared (5.13.5: "When the
    /// device is reset, endpoints are not attached to any domain").
    /// `bypass` keeps its value (5.13.4.2: "SHOULD NOT change on device
    /// reset"); passthrough endpoints go back to blocked or bypass.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.queues = new_queues();
        g.state.reset();
        self.invalidate_all(&mut g.state);
    }

    /// System reset: a device reset that also restores `bypass` to its
    /// initial value (5.13.4.2: "SHOULD be restored to its initial value on
    /// system reset").
    pub fn system_reset(&self) {
        let mut g = self.lock();
        g.queues = new_queues();
        // The reset moves passthrough endpoints by the restored rule.
        g.state.bypass = g.state.cfg.bypass_at_reset;
        g.state.reset();
        self.invalidate_all(&mut g.state);
    }
}

/// What adding a passthrough endpoint would do, once the ladder and the
/// device's own rules accepted it.
struct Admission {
    /// The configuration the device presents with it.
    next: DeviceConfig,
    /// Its host holes as its PROBE announces them.
    holes: Vec<ResvMem>,
    /// The ladder's decision (with the hot-plug checks, after FEATURES_OK).
    decision: Decision,
}

/// A refusal decision: `checks` plus the failed check `name`.
fn refusal(mut checks: Vec<Check>, name: &'static str, detail: String) -> Decision {
    checks.push(Check {
        name,
        passed: false,
        detail: detail.clone(),
    });
    Decision {
        kind: DecisionKind::Refuse,
        checks,
        reason: detail,
        adjust: Adjustments::default(),
    }
}

impl State {
    /// What adding passthrough endpoint `endpoint` behind `view` would
    /// do: the configuration the device would present, the endpoint's
    /// host holes, the ladder's decision; or the refusal.
    fn plan_host(&self, endpoint: u32, view: &HostView) -> Result<Admission, Box<Decision>> {
        if !self.cfg.manages(endpoint) {
            let why = format!("endpoint {endpoint:#x} is not managed by this virtio-iommu");
            return Err(Box::new(refusal(Vec::new(), "endpoint", why)));
        }
        // The page sizes first: those the VMM asked for that the host IOAS
        // can map; the ladder then judges the device as it will present.
        let mut next = self.cfg.clone();
        if let Err(e) = next.restrict_page_sizes(view.page_size) {
            return Err(Box::new(refusal(
                Vec::new(),
                "page-size-mask",
                e.to_string(),
            )));
        }
        let mut decision = ladder::decide(&next.as_guest(), view);
        if decision.kind != DecisionKind::Shadow {
            return Err(Box::new(decision));
        }
        let fitted = next
            .apply_host(&decision, view.page_size)
            .map(|()| next.host_pieces(&decision.adjust.reserved))
            .and_then(|holes| next.check_probe_room(holes.len()).map(|()| holes));
        let holes = match fitted {
            Ok(h) => h,
            Err(e) => {
                let checks = std::mem::take(&mut decision.checks);
                return Err(Box::new(refusal(checks, "device-config", e.to_string())));
            }
        };
        if self.features_ok {
            let checks = self.hotplug_checks(endpoint, &next, &holes);
            let failed: Vec<&str> = checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.detail.as_str())
                .collect();
            if !failed.is_empty() {
                let reason = format!(
                    "hot-plugged endpoint {endpoint:#x} refused: {}",
                    failed.join("; ")
                );
                decision.checks.extend(checks);
                return Err(Box::new(Decision {
                    kind: DecisionKind::Refuse,
                    checks: decision.checks,
                    reason,
                    adjust: Adjustments::default(),
                }));
            }
            decision.checks.extend(checks);
        }
        Ok(Admission {
            next,
            holes,
            decision,
        })
    }

    /// Whether an endpoint hot-plugged after FEATURES_OK fits what the
    /// driver already read. The driver reads `page_size_mask` and
    /// `input_range` once, at initialization (Linux's viommu_probe), so
    /// they must stay as they are; the endpoint's host holes reach the
    /// driver only through its own PROBE (5.13.6.8: RESV_MEM is a property
    /// of one endpoint), which it sends once when the device appears
    /// (viommu_probe_device): they can be announced when PROBE was
    /// negotiated and the driver has not probed that endpoint yet. QEMU
    /// accepts a hot-plugged device in that case too. Each check's detail
    /// names what changes or what cannot be announced, and why.
    fn hotplug_checks(&self, endpoint: u32, next: &DeviceConfig, holes: &[ResvMem]) -> Vec<Check> {
        let (old, new) = (self.cfg.page_size_mask, next.page_size_mask);
        let mask = Check::new(
            "hotplug-page-size-mask",
            old == new,
            match old == new {
                true => format!("page_size_mask {old:#x} the driver read still holds"),
                false => {
                    format!("page_size_mask the driver read would change: {old:#x} -> {new:#x}")
                }
            },
        );
        let ((a, b), (c, d)) = (self.cfg.input_range, next.input_range);
        let range = Check::new(
            "hotplug-input-range",
            (a, b) == (c, d),
            match (a, b) == (c, d) {
                true => format!("input_range {a:#x}-{b:#x} the driver read still holds"),
                false => format!(
                    "input_range the driver read would change: {a:#x}-{b:#x} -> {c:#x}-{d:#x}"
                ),
            },
        );
        let list = holes
            .iter()
            .map(|h| format!("{:#x}-{:#x}", h.start, h.end))
            .collect::<Vec<_>>()
            .join(", ");
        let why = if holes.is_empty() {
            None
        } else if !self.features.contains(Features::PROBE) {
            Some("VIRTIO_IOMMU_F_PROBE was not negotiated, so the driver reads no reserved region of any endpoint".to_string())
        } else if self.probed.contains(endpoint) {
            Some(format!(
                "the driver already probed endpoint {endpoint:#x} and does not probe it again"
            ))
        } else {
            None
        };
        let holes = Check::new(
            "hotplug-reserved-regions",
            why.is_none(),
            match (holes.is_empty(), why) {
                (true, _) => "no host hole to announce".to_string(),
                (false, None) => format!(
                    "host hole(s) {list} announced by endpoint {endpoint:#x}'s PROBE, not sent yet"
                ),
                (false, Some(w)) => format!("host hole(s) {list} cannot be announced: {w}"),
            },
        );
        vec![mask, range, holes]
    }

    /// Takes `device` behind `endpoint` where the guest's view puts it:
    /// blocked or at identity at once, or (the guest attached the endpoint
    /// already) into its domain's host space, filled with the domain's
    /// mappings. On a host failure nothing changed and the device is
    /// handed back.
    fn admit(
        &mut self,
        endpoint: u32,
        device: BoundDevice,
        view: &HostView,
        holes: Vec<ResvMem>,
    ) -> Result<(), (DeviceError, BoundDevice)> {
        let failed = |e: PassthroughError| DeviceError::Passthrough {
            endpoint,
            source: e,
        };
        let to = self.place_of(endpoint);
        let Some(pt) = self.passthrough.as_mut() else {
            return Err((DeviceError::NoHost, device));
        };
        pt.add(endpoint, device, view, to == Place::Identity, holes)
            .map_err(|(e, d)| (failed(e.into()), d))?;
        if !matches!(to, Place::Shadow(_)) {
            return Ok(());
        }
        let mut plan = Plan::new();
        pt.push_move(&mut plan, endpoint, to, &self.tables);
        let Err(e) = pt.stage(&plan) else {
            return Ok(());
        };
        match pt.remove(endpoint) {
            Some(device) => Err((failed(e.into()), device)),
            None => {
                // The registry hands a shadowed device back always (only
                // its nested engine can keep one); were it lost, the
                // endpoint is not added either.
                log::error!("virtio-iommu: passthrough endpoint {endpoint:#x}: lost: {e}");
                Ok(())
            }
        }
    }

    /// Puts every passthrough endpoint where the guest's view now puts it
    /// (after a change of the bypass rule, of the features, or a restore),
    /// in one plan: all of them move, or none and the host is as it was.
    /// A failure names the endpoint its step concerns.
    pub(crate) fn settle(&mut self) -> Result<(), (u32, StageError)> {
        let Some(pt) = self.passthrough.as_ref() else {
            return Ok(());
        };
        let plan = pt.settle(|ep| self.place_of(ep), &self.tables);
        let Some(pt) = self.passthrough.as_mut() else {
            return Ok(());
        };
        pt.stage(&plan)
            .map_err(|e| (pt.endpoint_of(&plan, e.step()), e))
    }

    /// Applies `change` to the state and moves the passthrough endpoints
    /// accordingly; when the host refuses, `undo` puts the state back (the
    /// host was left as it was). Returns the failure.
    pub(crate) fn change_rule(
        &mut self,
        change: impl FnOnce(&mut State),
        undo: impl FnOnce(&mut State),
    ) -> Result<(), (u32, StageError)> {
        change(self);
        let Err(failed) = self.settle() else {
            return Ok(());
        };
        undo(self);
        Err(failed)
    }

    /// Device reset of the guest-visible state; passthrough endpoints
    /// go back to blocked or identity and every domain space is dropped
    /// (emptied first where an endpoint could not leave it).
    pub(crate) fn reset(&mut self) {
        self.tables = Tables::default();
        self.features = Features::empty();
        self.features_ok = false;
        self.events = EventLog::default();
        self.probed = Probed::default();
        let identity = self.unattached_bypass();
        if let Some(pt) = self.passthrough.as_mut() {
            // Failures are logged; a reset cannot be refused.
            let _ = pt.evacuate(identity);
        }
    }
}
