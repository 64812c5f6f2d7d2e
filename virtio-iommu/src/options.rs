//! The `model virtio-iommu` options of `REPLAY.md`: what the device
//! offers and presents (virtio 1.3 5.13.3, 5.13.4), and the defaults a
//! driver finds behind QEMU's `virtio-iommu-pci`.

use nesting_core::options::{
    ModelOptions, OptionError, Pairs, bad, contradiction, flag, kv, parse_bool, parse_num,
    parse_range, parse_small,
};
use nesting_core::types::{Iova, IovaRange, PageSizes};

use crate::protocol::ProbeResvMem;

/// Subtype of a reserved region announced through PROBE (virtio 1.3
/// 5.13.6.6.2, `VIRTIO_IOMMU_RESV_MEM_T_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResvKind {
    /// `RESERVED`: accesses are not translated and fault.
    Reserved,
    /// `MSI`: the MSI doorbell window, translated by the platform.
    Msi,
}

/// A reserved region the model announces for every endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvRegion {
    /// The addresses, inclusive.
    pub range: IovaRange,
    /// Its subtype.
    pub kind: ResvKind,
}

/// An inclusive range of 32-bit IDs (endpoints, domains).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First ID.
    pub first: u32,
    /// Last ID (inclusive).
    pub last: u32,
}

impl IdRange {
    /// Whether `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        self.first <= id && id <= self.last
    }
}

/// The endpoints the device manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Every endpoint ID.
    All,
    /// Only these, sorted and merged.
    List(Vec<IdRange>),
}

impl Endpoints {
    /// Whether the device manages endpoint `id`.
    pub fn contains(&self, id: u32) -> bool {
        match self {
            Endpoints::All => true,
            Endpoints::List(l) => l.iter().any(|r| r.contains(id)),
        }
    }
}

/// A guest virtio-iommu device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtioIommuConfig {
    /// `page_size_mask`: supported page sizes; the lowest set bit is the
    /// driver's granule.
    pub page_size_mask: PageSizes,
    /// `input_range`: virtual addresses the device translates.
    pub input_range: IovaRange,
    /// `domain_range`: domain IDs the device accepts.
    pub domain_range: IdRange,
    /// `bypass`: config `bypass` field at reset.
    pub bypass: bool,
    /// `probe_size`: PROBE buffer size; 0 = no `VIRTIO_IOMMU_F_PROBE`.
    pub probe_size: u32,
    /// `resv`: reserved regions announced for every endpoint.
    pub resv: Vec<ResvRegion>,
    /// `endpoints`: the endpoint IDs the device manages.
    pub endpoints: Endpoints,
}

impl Default for VirtioIommuConfig {
    /// What Linux finds behind QEMU's `virtio-iommu-pci` on a 4 KiB host:
    /// - `page_size_mask=0xffff_ffff_ffff_f000`: Linux takes the lowest set
    ///   bit as its granule (4 KiB, the smallest any host IOMMU maps); every
    ///   larger power of two set lets `iommu_map()` send one MAP per
    ///   naturally aligned block instead of one per 4 KiB, 2 MiB or 1 GiB
    ///   page (QEMU's default is the same host page mask).
    /// - `input_range=0-0xffff_ffff_ffff_ffff`: the whole space; the ladder
    ///   clips it to what the host can map.
    /// - `domain_range=0-0xffff_ffff`: every 32-bit domain ID.
    /// - `bypass=0`: deny DMA until the driver attaches the endpoint
    ///   (QEMU boots with bypass for firmware; a test device should start
    ///   isolated, and Linux writes the field itself).
    /// - `probe_size=0x200`: QEMU's and enough for 20 RESV_MEM properties.
    /// - no `resv`; `endpoints=all`.
    fn default() -> Self {
        VirtioIommuConfig {
            page_size_mask: PageSizes(!0xfff),
            input_range: IovaRange {
                first: Iova(0),
                last: Iova(u64::MAX),
            },
            domain_range: IdRange {
                first: 0,
                last: u32::MAX,
            },
            bypass: false,
            probe_size: 0x200,
            resv: Vec::new(),
            endpoints: Endpoints::All,
        }
    }
}

impl VirtioIommuConfig {
    fn from_pairs(pairs: &Pairs<'_>) -> Result<Self, OptionError> {
        let mut c = VirtioIommuConfig::default();
        for (k, v) in pairs.iter() {
            c.apply(k, v)?;
        }
        // virtio 1.3 5.13.6.6: the device writes properties into the
        // driver's probe buffer of probe_size bytes; no PROBE, no RESV_MEM.
        let need = ProbeResvMem::SIZE * c.resv.len();
        if need > c.probe_size as usize {
            return Err(contradiction(
                "probe_size",
                c.probe_size,
                "resv",
                "the RESV_MEM properties (24 bytes each) do not fit the probe buffer (virtio 5.13.6.6)",
            ));
        }
        Ok(c)
    }

    fn apply(&mut self, key: &'static str, v: &str) -> Result<(), OptionError> {
        match key {
            "page_size_mask" => {
                // virtio 1.3 5.13.4: the device MUST set at least one bit.
                let m = parse_num(key, v)?;
                if m == 0 {
                    return Err(bad(key, v, "a non-zero mask"));
                }
                self.page_size_mask = PageSizes(m);
            }
            "input_range" => {
                let (a, b) = parse_range(key, v)?;
                self.input_range = IovaRange {
                    first: Iova(a),
                    last: Iova(b),
                };
            }
            "domain_range" => {
                let (a, b) = parse_range(key, v)?;
                let (first, last) = u32::try_from(a)
                    .ok()
                    .zip(u32::try_from(b).ok())
                    .ok_or_else(|| bad(key, v, "32-bit domain IDs"))?;
                self.domain_range = IdRange { first, last };
            }
            "bypass" => self.bypass = parse_bool(key, v)?,
            "probe_size" => self.probe_size = parse_small(key, v, u32::MAX.into())?,
            "resv" => self.resv.push(parse_resv(v)?),
            "endpoints" => self.endpoints = parse_endpoints(v)?,
            _ => unreachable!("key list and match agree"),
        }
        Ok(())
    }

    fn to_options(&self) -> Vec<(String, String)> {
        let r = |first: u64, last: u64| format!("{first:#x}-{last:#x}");
        let mut out = vec![
            kv("page_size_mask", format!("{:#x}", self.page_size_mask.0)),
            kv(
                "input_range",
                r(self.input_range.first.0, self.input_range.last.0),
            ),
            kv(
                "domain_range",
                r(
                    self.domain_range.first.into(),
                    self.domain_range.last.into(),
                ),
            ),
            kv("bypass", flag(self.bypass)),
            kv("probe_size", format!("{:#x}", self.probe_size)),
        ];
        for region in &self.resv {
            let kind = match region.kind {
                ResvKind::Reserved => "reserved",
                ResvKind::Msi => "msi",
            };
            out.push(kv("resv", format!("{}:{kind}", region.range)));
        }
        let endpoints = match &self.endpoints {
            Endpoints::All => "all".to_string(),
            Endpoints::List(l) => l
                .iter()
                .map(|e| match e.first == e.last {
                    true => format!("{:#x}", e.first),
                    false => format!("{:#x}-{:#x}", e.first, e.last),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        out.push(kv("endpoints", endpoints));
        out
    }
}

/// `START-END:reserved|msi`.
fn parse_resv(v: &str) -> Result<ResvRegion, OptionError> {
    let (range, kind) = v
        .rsplit_once(':')
        .ok_or_else(|| bad("resv", v, "START-END:reserved or START-END:msi"))?;
    let kind = match kind {
        "reserved" => ResvKind::Reserved,
        "msi" => ResvKind::Msi,
        _ => return Err(bad("resv", v, "START-END:reserved or START-END:msi")),
    };
    let (a, b) = parse_range("resv", range)?;
    Ok(ResvRegion {
        range: IovaRange {
            first: Iova(a),
            last: Iova(b),
        },
        kind,
    })
}

/// `all` or a comma list of IDs and `START-END` ranges, sorted and merged.
fn parse_endpoints(v: &str) -> Result<Endpoints, OptionError> {
    if v == "all" {
        return Ok(Endpoints::All);
    }
    let mut list = Vec::new();
    for part in v.split(',') {
        let (a, b) = match part.contains('-') {
            true => parse_range("endpoints", part)?,
            false => {
                let n = parse_num("endpoints", part)?;
                (n, n)
            }
        };
        let (first, last) = u32::try_from(a)
            .ok()
            .zip(u32::try_from(b).ok())
            .ok_or_else(|| bad("endpoints", v, "32-bit endpoint IDs"))?;
        list.push(IdRange { first, last });
    }
    list.sort_by_key(|r| r.first);
    let mut merged: Vec<IdRange> = Vec::with_capacity(list.len());
    for r in list {
        match merged.last_mut() {
            Some(m) if u64::from(r.first) <= u64::from(m.last) + 1 => m.last = m.last.max(r.last),
            _ => merged.push(r),
        }
    }
    Ok(Endpoints::List(merged))
}

impl ModelOptions for VirtioIommuConfig {
    const MODEL: &'static str = "virtio-iommu";
    const KEYS: &'static [&'static str] = &[
        "page_size_mask",
        "input_range",
        "domain_range",
        "bypass",
        "probe_size",
        "resv",
        "endpoints",
    ];

    fn from_options(tokens: &[&str]) -> Result<Self, OptionError> {
        Self::from_pairs(&Pairs::parse(Self::MODEL, Self::KEYS, &["resv"], tokens)?)
    }

    fn options(&self) -> Vec<(String, String)> {
        self.to_options()
    }
}
