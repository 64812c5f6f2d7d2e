//! The device's configuration: what it offers (feature bits, virtio 1.3
//! 5.13.3) and presents (configuration layout, 5.13.4), built from the
//! VMM's [`VirtioIommuConfig`] and, for passthrough endpoints, adjusted to
//! the host the ladder looked at.

use nesting_core::ladder::{Decision, DecisionKind};
use nesting_core::types::IovaRange;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zerocopy::IntoBytes;

use crate::options::{Endpoints, ResvKind, ResvRegion, VirtioIommuConfig};
use crate::protocol::{
    CONFIG_BYPASS_OFFSET, ConfigSpace, Features, PROBE_T_RESV_MEM, ProbeProperty, ProbeResvMem,
    RESV_MEM_T_MSI, RESV_MEM_T_RESERVED, Range32, Range64,
};

/// Largest `probe_size` the device accepts from the VMM: the device writes
/// that many bytes per PROBE request, and the Linux driver allocates them
/// per endpoint. QEMU uses 512; 64 KiB is room for 2730 RESV_MEM properties.
pub const MAX_PROBE_SIZE: u32 = 64 * 1024;

/// The VMM's configuration cannot make a device.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// virtio 1.3 5.13.4: "The device MUST set at least one bit in
    /// page_size_mask".
    #[error(
        "page_size_mask {mask:#x} has no page size the host can map (host page {host_page:#x})"
    )]
    NoPageSize {
        /// The mask asked for.
        mask: u64,
        /// The host's smallest page, 0 without passthrough.
        host_page: u64,
    },
    /// `probe_size` above [`MAX_PROBE_SIZE`].
    #[error("probe_size {0:#x} is above the device's limit")]
    ProbeSizeTooLarge(u32),
    /// The RESV_MEM properties do not fit `probe_size`.
    #[error("{regions} RESV_MEM properties do not fit probe_size {probe_size:#x}")]
    ProbeTooSmall {
        /// Regions to announce.
        regions: usize,
        /// The probe buffer size.
        probe_size: u32,
    },
    /// The ladder refused the passthrough device.
    #[error("passthrough device refused: {reason}")]
    Refused {
        /// The ladder's reason.
        reason: String,
    },
    /// An inverted `domain_range` or `input_range` (only a snapshot can
    /// carry one; the option parser refuses them).
    #[error("domain_range {first:#x}-{last:#x} or the input range is inverted")]
    DomainRange {
        /// First ID.
        first: u32,
        /// Last ID.
        last: u32,
    },
    /// 5.13.6.8.1.2: "The device SHOULD NOT present more than one
    /// VIRTIO_IOMMU_RESV_MEM_T_MSI property per endpoint" nor "multiple
    /// RESV_MEM properties that overlap each other".
    #[error("resv regions: {why}")]
    Resv {
        /// Which rule.
        why: &'static str,
    },
}

/// One RESV_MEM region announced by PROBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResvMem {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// `VIRTIO_IOMMU_RESV_MEM_T_*`.
    pub subtype: u8,
}

impl ResvMem {
    /// The property's bytes.
    pub fn property(&self) -> ProbeResvMem {
        ProbeResvMem {
            head: ProbeProperty {
                type_: PROBE_T_RESV_MEM.into(),
                // 5.13.6.7.2: "The device MUST write the size of a property
                // without the struct virtio_iommu_probe_property header".
                length: ((ProbeResvMem::SIZE - ProbeProperty::SIZE) as u16).into(),
            },
            subtype: self.subtype,
            reserved: [0; 3],
            start: self.start.into(),
            end: self.end.into(),
        }
    }

    /// Whether the region overlaps `[first, last]`.
    pub fn overlaps(&self, first: u64, last: u64) -> bool {
        self.start <= last && first <= self.end
    }
}

/// Options a VMM sets that scripts do not (they are not part of
/// `REPLAY.md`'s model options).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOptions {
    /// Offer the legacy `VIRTIO_IOMMU_F_BYPASS` instead of
    /// `VIRTIO_IOMMU_F_BYPASS_CONFIG`, for drivers older than the config
    /// field (virtio 1.3 5.13.3.2: devices SHOULD NOT offer both).
    pub legacy_bypass: bool,
    /// Width of the guest-physical address space: a MAP whose physical
    /// range reaches past `2^phys_bits - 1` gets `VIRTIO_IOMMU_S_FAULT`
    /// (5.13.6.5: the physical range "should be within the guest-physical
    /// address space"). 1..=64.
    pub phys_bits: u8,
}

impl Default for DeviceOptions {
    /// Modern bypass; no physical address limit (64 bits), as QEMU: a
    /// Linux guest without BYPASS_CONFIG builds identity domains by mapping
    /// the whole input range at IOVA = GPA, which a narrower limit would
    /// refuse. A VMM that knows its guest-physical width sets it.
    fn default() -> Self {
        DeviceOptions {
            legacy_bypass: false,
            phys_bits: 64,
        }
    }
}

impl DeviceOptions {
    /// The last guest-physical address.
    pub fn phys_last(&self) -> u64 {
        u64::MAX >> (64 - u32::from(self.phys_bits.clamp(1, 64)))
    }
}

/// The device's resolved configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// `page_size_mask` presented.
    pub page_size_mask: u64,
    /// `input_range` presented.
    pub input_range: (u64, u64),
    /// `domain_range` presented.
    pub domain_range: (u32, u32),
    /// `probe_size` presented; 0 = no PROBE feature.
    pub probe_size: u32,
    /// `bypass` at system reset.
    pub bypass_at_reset: bool,
    /// RESV_MEM regions of every endpoint (the VMM's). A passthrough
    /// endpoint's PROBE adds its own host's holes (kept with the endpoint,
    /// not here: they are the host's, and per endpoint).
    pub resv: Vec<ResvMem>,
    /// Managed endpoints as inclusive ranges; `None` = all.
    pub endpoints: Option<Vec<(u32, u32)>>,
    /// VMM options.
    pub options: DeviceOptions,
}

impl DeviceConfig {
    /// The configuration of `cfg` with `options`.
    pub fn new(cfg: &VirtioIommuConfig, options: DeviceOptions) -> Result<Self, ConfigError> {
        let resv = cfg
            .resv
            .iter()
            .map(|r| ResvMem {
                start: r.range.first.raw(),
                end: r.range.last.raw(),
                subtype: match r.kind {
                    ResvKind::Reserved => RESV_MEM_T_RESERVED,
                    ResvKind::Msi => RESV_MEM_T_MSI,
                },
            })
            .collect();
        let endpoints = match &cfg.endpoints {
            Endpoints::All => None,
            Endpoints::List(l) => Some(l.iter().map(|r| (r.first, r.last)).collect()),
        };
        let c = DeviceConfig {
            page_size_mask: cfg.page_size_mask.0,
            input_range: (cfg.input_range.first.raw(), cfg.input_range.last.raw()),
            domain_range: (cfg.domain_range.first, cfg.domain_range.last),
            probe_size: cfg.probe_size,
            bypass_at_reset: cfg.bypass,
            resv,
            endpoints,
            options,
        };
        c.validate(0)?;
        Ok(c)
    }

    /// Checks what the device can present.
    pub fn validate(&self, host_page: u64) -> Result<(), ConfigError> {
        if self.page_size_mask == 0 {
            return Err(ConfigError::NoPageSize {
                mask: self.page_size_mask,
                host_page,
            });
        }
        if self.probe_size > MAX_PROBE_SIZE {
            return Err(ConfigError::ProbeSizeTooLarge(self.probe_size));
        }
        self.check_probe_room(0)?;
        if self
            .resv
            .iter()
            .filter(|r| r.subtype == RESV_MEM_T_MSI)
            .count()
            > 1
        {
            return Err(ConfigError::Resv {
                why: "more than one MSI region",
            });
        }
        for (i, a) in self.resv.iter().enumerate() {
            if a.end < a.start
                || self.resv[i + 1..]
                    .iter()
                    .any(|b| a.overlaps(b.start, b.end))
            {
                return Err(ConfigError::Resv {
                    why: "overlapping or inverted regions",
                });
            }
        }
        if self.domain_range.0 > self.domain_range.1 || self.input_range.0 > self.input_range.1 {
            return Err(ConfigError::DomainRange {
                first: self.domain_range.0,
                last: self.domain_range.1,
            });
        }
        Ok(())
    }

    /// Keeps the page sizes the host IOAS can map: multiples of its
    /// alignment `host_page` (QEMU intersects with the host's page sizes
    /// the same way). Refused when none is left.
    pub fn restrict_page_sizes(&mut self, host_page: u64) -> Result<(), ConfigError> {
        let host_sizes = match host_page {
            0 => u64::MAX,
            p => !(p.checked_next_power_of_two().unwrap_or(1 << 63) - 1),
        };
        let mask = self.page_size_mask & host_sizes;
        if mask == 0 {
            return Err(ConfigError::NoPageSize {
                mask: self.page_size_mask,
                host_page,
            });
        }
        self.page_size_mask = mask;
        Ok(())
    }

    /// The guest configuration the ladder judges.
    pub fn as_guest(&self) -> VirtioIommuConfig {
        let mut c = VirtioIommuConfig {
            page_size_mask: nesting_core::types::PageSizes(self.page_size_mask),
            input_range: self.input(),
            probe_size: self.probe_size,
            bypass: self.bypass_at_reset,
            ..VirtioIommuConfig::default()
        };
        c.domain_range.first = self.domain_range.0;
        c.domain_range.last = self.domain_range.1;
        c.resv = self
            .resv
            .iter()
            .map(|r| ResvRegion {
                range: IovaRange {
                    first: r.start.into(),
                    last: r.end.into(),
                },
                kind: match r.subtype {
                    RESV_MEM_T_MSI => ResvKind::Msi,
                    _ => ResvKind::Reserved,
                },
            })
            .collect();
        c
    }

    /// Checks that a PROBE answer with the VMM's regions and `extra` more
    /// (an endpoint's host holes) fits `probe_size`.
    pub fn check_probe_room(&self, extra: usize) -> Result<(), ConfigError> {
        let regions = self.resv.len() + extra;
        if regions * ProbeResvMem::SIZE > self.probe_size as usize && regions > 0 {
            return Err(ConfigError::ProbeTooSmall {
                regions,
                probe_size: self.probe_size,
            });
        }
        Ok(())
    }

    /// Adjusts the configuration to the ladder's decision for a host
    /// behind a passthrough endpoint: the input range is clipped to the
    /// host's IOVA ranges (the host's holes inside it are the endpoint's,
    /// [`DeviceConfig::host_pieces`]). A refusal is an error with the
    /// ladder's reasons.
    pub fn apply_host(&mut self, decision: &Decision, host_page: u64) -> Result<(), ConfigError> {
        if decision.kind != DecisionKind::Shadow {
            return Err(ConfigError::Refused {
                reason: decision.reason.clone(),
            });
        }
        let mut next = self.clone();
        if let Some(r) = decision.adjust.input_range {
            next.input_range = (
                next.input_range.0.max(r.first.raw()),
                next.input_range.1.min(r.last.raw()),
            );
        }
        next.validate(host_page)?;
        *self = next;
        Ok(())
    }

    /// An endpoint's host IOVA `holes` as its PROBE presents them
    /// (5.13.6.8.1.2: "The device SHOULD NOT present multiple RESV_MEM
    /// properties that overlap each other for the same endpoint"): merged
    /// where they overlap or touch, minus the VMM's own regions (which win,
    /// being the platform's word on that range), as RESERVED pieces in
    /// address order. Together with `resv` they cover every hole, so every
    /// MAP refused for a host hole hits an announced region. Bounded: holes
    /// come from the host's IOVA ranges, regions from the VMM's
    /// configuration.
    pub fn host_pieces(&self, holes: &[IovaRange]) -> Vec<ResvMem> {
        let mut holes: Vec<(u64, u64)> = holes
            .iter()
            .map(|h| (h.first.raw(), h.last.raw()))
            .collect();
        holes.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(holes.len());
        for (a, b) in holes {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut vmm: Vec<(u64, u64)> = self.resv.iter().map(|r| (r.start, r.end)).collect();
        vmm.sort_unstable();
        let mut out = Vec::new();
        let piece = |start, end| ResvMem {
            start,
            end,
            subtype: RESV_MEM_T_RESERVED,
        };
        for (a, b) in merged {
            // `cur`: the first address of the hole not yet emitted nor
            // covered; None once the top of the space is passed.
            let mut cur = Some(a);
            for &(ra, rb) in vmm.iter().filter(|r| r.0 <= b && a <= r.1) {
                let Some(c) = cur else { break };
                if ra > c {
                    out.push(piece(c, ra - 1));
                }
                cur = rb.checked_add(1).map(|n| c.max(n));
            }
            if let Some(c) = cur.filter(|c| *c <= b) {
                out.push(piece(c, b));
            }
        }
        out
    }

    /// The parts of `pieces` inside the input range: what an endpoint's
    /// PROBE announces of its host holes now (the range only shrinks, as
    /// endpoints are added before the driver reads it, and a restore may
    /// present the source's).
    pub fn in_input_range(&self, pieces: &[ResvMem]) -> Vec<ResvMem> {
        let (lo, hi) = self.input_range;
        pieces
            .iter()
            .filter(|p| p.overlaps(lo, hi))
            .map(|p| ResvMem {
                start: p.start.max(lo),
                end: p.end.min(hi),
                subtype: p.subtype,
            })
            .collect()
    }

    /// Feature bits the device offers.
    pub fn offered(&self) -> Features {
        let mut f = Features::VERSION_1
            | Features::INPUT_RANGE
            | Features::DOMAIN_RANGE
            | Features::MAP_UNMAP
            | Features::MMIO;
        // 5.13.3.2: "New devices SHOULD NOT offer VIRTIO_IOMMU_F_BYPASS.
        // Devices SHOULD NOT offer both".
        f |= match self.options.legacy_bypass {
            true => Features::BYPASS,
            false => Features::BYPASS_CONFIG,
        };
        if self.probe_size > 0 {
            f |= Features::PROBE;
        }
        f
    }

    /// Whether the device manages `endpoint`.
    pub fn manages(&self, endpoint: u32) -> bool {
        match &self.endpoints {
            None => true,
            Some(l) => l.iter().any(|(a, b)| *a <= endpoint && endpoint <= *b),
        }
    }

    /// The granule: lowest set bit of `page_size_mask` (5.13.6: "The least
    /// significant bit set defines the page granularity").
    pub fn granule(&self) -> u64 {
        1u64 << self.page_size_mask.trailing_zeros().min(63)
    }

    /// The input range as an [`IovaRange`].
    pub fn input(&self) -> IovaRange {
        IovaRange {
            first: self.input_range.0.into(),
            last: self.input_range.1.into(),
        }
    }

    /// The configuration structure with the current `bypass` value.
    pub fn space(&self, bypass: bool) -> ConfigSpace {
        ConfigSpace {
            page_size_mask: self.page_size_mask.into(),
            input_range: Range64 {
                start: self.input_range.0.into(),
                end: self.input_range.1.into(),
            },
            domain_range: Range32 {
                start: self.domain_range.0.into(),
                end: self.domain_range.1.into(),
            },
            probe_size: self.probe_size.into(),
            // 5.13.4.2: "The device MUST NOT present a value different than
            // 0 or 1 in bypass".
            bypass: u8::from(bypass),
            reserved: [0; 3],
        }
    }
}

/// Reads `data.len()` bytes of the configuration space at `offset`; bytes
/// beyond the structure read as zero.
pub fn read_space(space: &ConfigSpace, offset: u64, data: &mut [u8]) {
    let bytes = space.as_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| bytes.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// The byte a config write of `data` at `offset` puts into `bypass`, if it
/// covers it.
pub fn bypass_byte(offset: u64, data: &[u8]) -> Option<u8> {
    let rel = CONFIG_BYPASS_OFFSET.checked_sub(offset)?;
    data.get(usize::try_from(rel).ok()?).copied()
}
