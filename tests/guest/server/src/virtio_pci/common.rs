//! The common configuration structure (virtio 1.3 4.1.4.3): feature
//! negotiation, device status, MSI-X vectors and the per-queue registers
//! multiplexed by `queue_select`.
//!
//! Accesses are decoded byte by byte against a field table, so any width
//! and offset a driver uses has a defined effect: a read returns the bytes
//! of the fields it covers, a write merges its bytes into each field it
//! touches and then applies the field.

use super::NO_VECTOR;

/// Device status bits (2.1).
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u8 = 1;
    /// DRIVER.
    pub const DRIVER: u8 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u8 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u8 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    /// FAILED.
    pub const FAILED: u8 = 128;
}

/// The fields of `struct virtio_pci_common_cfg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    QueueDescLo,
    QueueDescHi,
    QueueDriverLo,
    QueueDriverHi,
    QueueDeviceLo,
    QueueDeviceHi,
    QueueNotifConfigData,
    QueueReset,
}

/// (field, offset, width) as 4.1.4.3 lays them out. The admin queue
/// fields (0x3c, 0x3e) read as zero: VIRTIO_F_ADMIN_VQ is not offered.
const FIELDS: &[(Field, u64, usize)] = &[
    (Field::DeviceFeatureSelect, 0x00, 4),
    (Field::DeviceFeature, 0x04, 4),
    (Field::DriverFeatureSelect, 0x08, 4),
    (Field::DriverFeature, 0x0c, 4),
    (Field::ConfigMsixVector, 0x10, 2),
    (Field::NumQueues, 0x12, 2),
    (Field::DeviceStatus, 0x14, 1),
    (Field::ConfigGeneration, 0x15, 1),
    (Field::QueueSelect, 0x16, 2),
    (Field::QueueSize, 0x18, 2),
    (Field::QueueMsixVector, 0x1a, 2),
    (Field::QueueEnable, 0x1c, 2),
    (Field::QueueNotifyOff, 0x1e, 2),
    (Field::QueueDescLo, 0x20, 4),
    (Field::QueueDescHi, 0x24, 4),
    (Field::QueueDriverLo, 0x28, 4),
    (Field::QueueDriverHi, 0x2c, 4),
    (Field::QueueDeviceLo, 0x30, 4),
    (Field::QueueDeviceHi, 0x34, 4),
    (Field::QueueNotifConfigData, 0x38, 2),
    (Field::QueueReset, 0x3a, 2),
];

/// One virtqueue's transport registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    /// `queue_size`.
    pub size: u16,
    /// `queue_msix_vector`.
    pub vector: u16,
    /// `queue_enable`.
    pub enabled: bool,
    /// `queue_desc`.
    pub desc: u64,
    /// `queue_driver` (available ring).
    pub driver: u64,
    /// `queue_device` (used ring).
    pub device: u64,
}

/// What a write asks the transport to do next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Status 0 was written: reset the device.
    pub reset: bool,
    /// FEATURES_OK was set with these driver features.
    pub features_ok: Option<u64>,
    /// 1 was written to `queue_enable` of this queue.
    pub enable_queue: Option<u16>,
    /// `config_msix_vector` now routes to this vector.
    pub config_vector: Option<u16>,
    /// `queue_msix_vector` of a queue now routes to this vector.
    pub queue_vector: Option<(u16, u16)>,
}

/// The common configuration's state.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    queue_select: u16,
    max_size: u16,
    queues: Vec<QueueState>,
}

fn le_bytes(v: u64, width: usize) -> [u8; 8] {
    let mut b = v.to_le_bytes();
    b.iter_mut().skip(width).for_each(|x| *x = 0);
    b
}

impl CommonConfig {
    /// `queues` queues of at most `max_size` entries, at reset.
    pub fn new(queues: u16, max_size: u16) -> Self {
        let mut c = CommonConfig {
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            max_size,
            queues: vec![QueueState::default(); usize::from(queues)],
        };
        c.reset();
        c
    }

    /// Back to the reset state. 4.1.4.3.2: "The device MUST present a 0 in
    /// queue_enable on reset" and the maximum in `queue_size`.
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        let max = self.max_size;
        for q in &mut self.queues {
            *q = QueueState {
                size: max,
                vector: NO_VECTOR,
                ..QueueState::default()
            };
        }
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Whether the driver set DRIVER_OK (and the device does not need a
    /// reset).
    pub fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Queue `index`, if it exists.
    pub fn queue(&self, index: u16) -> Option<&QueueState> {
        self.queues.get(usize::from(index))
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub(super) fn refuse_features(&mut self) {
        self.status &= !status::FEATURES_OK;
    }

    pub(super) fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
    }

    pub(super) fn set_enabled(&mut self, index: u16) {
        if let Some(q) = self.queues.get_mut(usize::from(index)) {
            q.enabled = true;
        }
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn value(&self, f: Field, dev_features: u64, generation: u8) -> u64 {
        let q = self.selected().copied().unwrap_or(QueueState {
            vector: NO_VECTOR,
            ..QueueState::default()
        });
        let half = |v: u64, sel: u32| match sel {
            0 => v & 0xffff_ffff,
            1 => v >> 32,
            _ => 0,
        };
        match f {
            Field::DeviceFeatureSelect => u64::from(self.device_feature_select),
            Field::DeviceFeature => half(dev_features, self.device_feature_select),
            Field::DriverFeatureSelect => u64::from(self.driver_feature_select),
            Field::DriverFeature => half(self.driver_features, self.driver_feature_select),
            Field::ConfigMsixVector => u64::from(self.config_vector),
            Field::NumQueues => self.queues.len() as u64,
            Field::DeviceStatus => u64::from(self.status),
            Field::ConfigGeneration => u64::from(generation),
            Field::QueueSelect => u64::from(self.queue_select),
            // 4.1.4.3.2: "present a 0 in queue_size if the virtqueue
            // corresponding to the current queue_select is unavailable".
            Field::QueueSize => u64::from(q.size),
            Field::QueueMsixVector => u64::from(q.vector),
            Field::QueueEnable => u64::from(q.enabled),
            Field::QueueNotifyOff | Field::QueueNotifConfigData => u64::from(self.queue_select),
            Field::QueueDescLo => q.desc & 0xffff_ffff,
            Field::QueueDescHi => q.desc >> 32,
            Field::QueueDriverLo => q.driver & 0xffff_ffff,
            Field::QueueDriverHi => q.driver >> 32,
            Field::QueueDeviceLo => q.device & 0xffff_ffff,
            Field::QueueDeviceHi => q.device >> 32,
            Field::QueueReset => 0,
        }
    }

    /// Reads `data.len()` bytes at `offset` of the structure.
    pub fn read(&self, offset: u64, data: &mut [u8], dev_features: u64, generation: u8) {
        for (off, byte) in (offset..).zip(data.iter_mut()) {
            *byte = FIELDS
                .iter()
                .find(|(_, at, w)| off >= *at && off - at < *w as u64)
                .map_or(0, |&(f, at, w)| {
                    let bytes = le_bytes(self.value(f, dev_features, generation), w);
                    bytes.get((off - at) as usize).copied().unwrap_or(0)
                });
        }
    }

    /// Writes `data` at `offset`; `vectors` is the number of MSI-X
    /// vectors. Returns what the transport must do about it.
    pub fn write(&mut self, offset: u64, data: &[u8], vectors: u16) -> Effects {
        let mut fx = Effects::default();
        let end = offset.saturating_add(data.len() as u64);
        for &(f, at, w) in FIELDS {
            let fend = at + w as u64;
            if end <= at || offset >= fend {
                continue;
            }
            let mut bytes = le_bytes(self.value(f, 0, 0), w);
            for (off, b) in (offset..).zip(data) {
                if off >= at
                    && off < fend
                    && let Some(slot) = bytes.get_mut((off - at) as usize)
                {
                    *slot = *b;
                }
            }
            self.apply(f, u64::from_le_bytes(bytes), vectors, &mut fx);
        }
        fx
    }

    fn queue_mut(&mut self) -> Option<&mut QueueState> {
        // 4.1.4.3.2: "The driver MUST NOT write to queue_desc,
        // queue_driver, queue_device, queue_size, or queue_msix_vector
        // after enabling the queue"; the device keeps the enabled queue's
        // values.
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled)
    }

    fn apply(&mut self, f: Field, v: u64, vectors: u16, fx: &mut Effects) {
        let lo = |old: u64| (old & !0xffff_ffff) | (v & 0xffff_ffff);
        let hi = |old: u64| (old & 0xffff_ffff) | (v << 32);
        // 4.1.5.1.2: a vector the device cannot use reads back as
        // NO_VECTOR.
        let vector = if v < u64::from(vectors) {
            v as u16
        } else {
            NO_VECTOR
        };
        match f {
            Field::DeviceFeatureSelect => self.device_feature_select = v as u32,
            Field::DriverFeatureSelect => self.driver_feature_select = v as u32,
            Field::DriverFeature => match self.driver_feature_select {
                0 => self.driver_features = lo(self.driver_features),
                1 => self.driver_features = hi(self.driver_features),
                _ => {}
            },
            Field::ConfigMsixVector => {
                self.config_vector = vector;
                fx.config_vector = Some(vector);
            }
            Field::DeviceStatus => self.write_status(v as u8, fx),
            Field::QueueSelect => self.queue_select = v as u16,
            Field::QueueSize => {
                let max = self.max_size;
                if let Some(q) = self.queue_mut() {
                    q.size = (v as u16).min(max);
                }
            }
            Field::QueueMsixVector => {
                let sel = self.queue_select;
                if let Some(q) = self.queue_mut() {
                    q.vector = vector;
                    fx.queue_vector = Some((sel, vector));
                }
            }
            Field::QueueEnable => {
                // 4.1.4.3.2: "The driver MUST NOT write a 0 to
                // queue_enable"; only 1 on a disabled queue has an effect.
                if v == 1 && self.queue_mut().is_some() {
                    fx.enable_queue = Some(self.queue_select);
                }
            }
            Field::QueueDescLo => self
                .queue_mut()
                .into_iter()
                .for_each(|q| q.desc = lo(q.desc)),
            Field::QueueDescHi => self
                .queue_mut()
                .into_iter()
                .for_each(|q| q.desc = hi(q.desc)),
            Field::QueueDriverLo => self
                .queue_mut()
                .into_iter()
                .for_each(|q| q.driver = lo(q.driver)),
            Field::QueueDriverHi => self
                .queue_mut()
                .into_iter()
                .for_each(|q| q.driver = hi(q.driver)),
            Field::QueueDeviceLo => self
                .queue_mut()
                .into_iter()
                .for_each(|q| q.device = lo(q.device)),
            Field::QueueDeviceHi => self
                .queue_mut()
                .into_iter()
                .for_each(|q| q.device = hi(q.device)),
            Field::DeviceFeature
            | Field::NumQueues
            | Field::ConfigGeneration
            | Field::QueueNotifyOff
            | Field::QueueNotifConfigData
            | Field::QueueReset => {}
        }
    }

    /// 2.1: writing 0 resets; otherwise the driver only sets bits, and
    /// the device decides FEATURES_OK (3.1.1).
    fn write_status(&mut self, v: u8, fx: &mut Effects) {
        if v == 0 {
            fx.reset = true;
            return;
        }
        let newly = v & !self.status;
        // DEVICE_NEEDS_RESET is the device's to set; the driver cannot.
        self.status =
            (v & !status::DEVICE_NEEDS_RESET) | (self.status & status::DEVICE_NEEDS_RESET);
        if newly & status::FEATURES_OK != 0 {
            fx.features_ok = Some(self.driver_features);
        }
    }
}
