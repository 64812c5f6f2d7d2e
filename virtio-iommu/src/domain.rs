//! Domains, their mappings and the endpoints attached to them: the state
//! ATTACH, DETACH, MAP and UNMAP change (virtio 1.3 5.13.6.3 to 5.13.6.6)
//! and `translate` reads.
//!
//! This module is the bookkeeping only; request decoding and the checks
//! that depend on negotiated features live in `request.rs`.

use std::collections::{BTreeMap, BTreeSet};

use nesting_core::shadow::{Keyed, SortedChunks};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::{MapFlags, Status};

/// Most domains a guest may create. Every domain costs device memory and,
/// when it holds passthrough endpoints, a host IOAS; Linux creates one per
/// IOMMU group plus one bypass domain, so 65536 covers one domain per
/// endpoint of a full PCI segment. Exceeding it gets `S_NOMEM`.
pub const MAX_DOMAINS: usize = 1 << 16;

/// Most mappings one domain may hold. Linux's DMA API sends one MAP per
/// `dma_map_*` call (4 KiB granule); 2^20 mappings is 4 GiB mapped page by
/// page (issue 16: a million live mappings), as many as a shadowed domain
/// holds (`nesting_core::shadow::MAX_GUEST_SPANS`). Exceeding it gets
/// `S_NOMEM`.
pub const MAX_MAPPINGS_PER_DOMAIN: usize = 1 << 20;

/// Most mappings across all domains (about 64 MiB of bookkeeping at most),
/// so that many domains cannot multiply the per-domain bound. Exceeding it
/// gets `S_NOMEM`.
pub const MAX_MAPPINGS_TOTAL: usize = 1 << 20;

/// One MAP request's mapping: `[iova_first, iova_last]` to `gpa..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// First IOVA.
    pub iova_first: u64,
    /// Last IOVA (inclusive).
    pub iova_last: u64,
    /// Guest-physical address of `iova_first`.
    pub gpa: u64,
    /// `VIRTIO_IOMMU_MAP_F_*` bits as the driver sent them.
    pub flags: u32,
}

impl Mapping {
    /// The flags as a typed set.
    pub fn map_flags(&self) -> MapFlags {
        MapFlags::from_bits_retain(self.flags)
    }

    /// Length in bytes (`u64::MAX` saturates a full-space mapping).
    pub fn len(&self) -> u64 {
        (self.iova_last - self.iova_first).saturating_add(1)
    }

    /// Never empty; for clippy.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Keyed for Mapping {
    fn key(&self) -> u64 {
        self.iova_first
    }
}

/// A domain's mappings by first IOVA, each stored once in a sorted chunk
/// (about 32 bytes a mapping, where a `BTreeMap<u64, Mapping>` took 78;
/// issue 16: a million mappings). Snapshots see them as that map: first
/// IOVA to mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mappings {
    store: SortedChunks<Mapping>,
    /// Read from a snapshot where a mapping is filed under another key
    /// than its first IOVA: [`Tables::validated`] refuses it.
    misfiled: bool,
}

impl Mappings {
    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Every mapping, by first IOVA.
    pub fn values(&self) -> impl Iterator<Item = &Mapping> {
        self.store.iter()
    }

    /// The mapping starting at the greatest first IOVA at or below `iova`.
    pub fn at_or_before(&self, iova: u64) -> Option<&Mapping> {
        self.store.at_or_before(iova)
    }

    /// The mappings starting in `[first, last]`, ascending.
    pub fn starting_in(&self, first: u64, last: u64) -> impl Iterator<Item = &Mapping> {
        self.store.range(first, last)
    }
}

impl Serialize for Mappings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.store.iter().map(|m| (m.iova_first, m)))
    }
}

impl<'de> Deserialize<'de> for Mappings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<u64, Mapping>::deserialize(d)?;
        let misfiled = map.iter().any(|(k, m)| *k != m.iova_first);
        let mut store = SortedChunks::new();
        for m in map.into_values() {
            store.insert(m);
        }
        Ok(Mappings { store, misfiled })
    }
}

/// One domain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// Created with `VIRTIO_IOMMU_ATTACH_F_BYPASS`.
    pub bypass: bool,
    /// Attached endpoints.
    pub endpoints: BTreeSet<u32>,
    /// Mappings by first IOVA; never overlapping.
    pub mappings: Mappings,
}

impl Domain {
    /// The mapping holding `iova`, if any.
    pub fn lookup(&self, iova: u64) -> Option<&Mapping> {
        self.mappings
            .at_or_before(iova)
            .filter(|m| iova <= m.iova_last)
    }

    /// Whether any mapping overlaps `[first, last]`.
    pub fn overlaps(&self, first: u64, last: u64) -> bool {
        self.lookup(first).is_some() || self.mappings.starting_in(first, last).next().is_some()
    }

    /// The mappings an UNMAP of `[first, last]` removes, or `Err(S_RANGE)`
    /// if it would split one (virtio 1.3 5.13.6.6.2: "If a mapping affected
    /// by the range is not covered in its entirety by the range ... the
    /// device SHOULD set the request status to VIRTIO_IOMMU_S_RANGE, and
    /// SHOULD NOT remove any mapping").
    pub fn unmap_set(&self, first: u64, last: u64) -> Result<Vec<Mapping>, Status> {
        if let Some(m) = self.lookup(first)
            && m.iova_first < first
        {
            return Err(Status::Range);
        }
        let mut out = Vec::new();
        for m in self.mappings.starting_in(first, last) {
            if m.iova_last > last {
                return Err(Status::Range);
            }
            out.push(*m);
        }
        Ok(out)
    }
}

/// All domains and which endpoint is in which.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    domains: BTreeMap<u32, Domain>,
    /// Endpoint -> the domain it is attached to.
    attached: BTreeMap<u32, u32>,
    total_mappings: usize,
}

/// What an ATTACH changed, for the passthrough layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachEffect {
    /// The domain the endpoint left, if any, and whether it ceased to exist.
    pub left: Option<(u32, bool)>,
    /// Whether the target domain was created by this request.
    pub created: bool,
}

impl Tables {
    /// The domain `id`.
    pub fn domain(&self, id: u32) -> Option<&Domain> {
        self.domains.get(&id)
    }

    /// Every domain, by ID.
    pub fn domains(&self) -> impl Iterator<Item = (u32, &Domain)> {
        self.domains.iter().map(|(k, v)| (*k, v))
    }

    /// The domain `endpoint` is attached to.
    pub fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.attached.get(&endpoint).copied()
    }

    /// Number of mappings across all domains.
    pub fn total_mappings(&self) -> usize {
        self.total_mappings
    }

    /// Whether a new domain could be created now.
    pub fn can_create_domain(&self) -> bool {
        self.domains.len() < MAX_DOMAINS
    }

    /// Attaches `endpoint` to `domain`, creating the domain, after
    /// detaching the endpoint from the domain it was in (5.13.6.3.2: "the
    /// device SHOULD first detach it from that domain"). The caller has
    /// checked bypass consistency and limits.
    pub fn attach(&mut self, endpoint: u32, domain: u32, bypass: bool) -> AttachEffect {
        let left = match self.attached.get(&endpoint).copied() {
            Some(old) if old == domain => {
                return AttachEffect {
                    left: None,
                    created: false,
                };
            }
            Some(old) => Some((old, self.detach(endpoint, old))),
            None => None,
        };
        let created = !self.domains.contains_key(&domain);
        let d = self.domains.entry(domain).or_insert_with(|| Domain {
            bypass,
            ..Domain::default()
        });
        d.endpoints.insert(endpoint);
        self.attached.insert(endpoint, domain);
        AttachEffect { left, created }
    }

    /// Detaches `endpoint` from `domain`; returns whether the domain
    /// ceased to exist (5.13.6.4: "After all endpoints have been
    /// successfully detached from a domain, it ceases to exist"), dropping
    /// its mappings. The caller has checked that the endpoint is in it.
    pub fn detach(&mut self, endpoint: u32, domain: u32) -> bool {
        self.attached.remove(&endpoint);
        let Some(d) = self.domains.get_mut(&domain) else {
            return false;
        };
        d.endpoints.remove(&endpoint);
        if !d.endpoints.is_empty() {
            return false;
        }
        if let Some(d) = self.domains.remove(&domain) {
            self.total_mappings -= d.mappings.len();
        }
        true
    }

    /// Whether `domain` may take one more mapping.
    pub fn has_room(&self, domain: u32) -> bool {
        self.total_mappings < MAX_MAPPINGS_TOTAL
            && self
                .domains
                .get(&domain)
                .is_some_and(|d| d.mappings.len() < MAX_MAPPINGS_PER_DOMAIN)
    }

    /// Inserts a mapping the caller validated.
    pub fn insert_mapping(&mut self, domain: u32, m: Mapping) {
        if let Some(d) = self.domains.get_mut(&domain)
            && d.mappings.store.insert(m).is_none()
        {
            self.total_mappings += 1;
        }
    }

    /// Removes the mappings starting at `firsts`.
    pub fn remove_mappings(&mut self, domain: u32, removed: &[Mapping]) {
        if let Some(d) = self.domains.get_mut(&domain) {
            for m in removed {
                if d.mappings.store.remove(m.iova_first).is_some() {
                    self.total_mappings -= 1;
                }
            }
        }
    }

    /// Rebuilds the derived counters and indexes after a restore; `None`
    /// if the snapshot is inconsistent.
    pub fn validated(self) -> Option<Tables> {
        let mut t = Tables {
            domains: self.domains,
            attached: BTreeMap::new(),
            total_mappings: 0,
        };
        for (id, d) in &t.domains {
            if d.endpoints.is_empty()
                || d.mappings.len() > MAX_MAPPINGS_PER_DOMAIN
                || d.mappings.misfiled
            {
                return None;
            }
            let mut prev_last: Option<u64> = None;
            for m in d.mappings.values() {
                let ordered = prev_last.is_none_or(|p| p < m.iova_first);
                if m.iova_last < m.iova_first || !ordered {
                    return None;
                }
                prev_last = Some(m.iova_last);
            }
            t.total_mappings += d.mappings.len();
            for e in &d.endpoints {
                if t.attached.insert(*e, *id).is_some() {
                    return None;
                }
            }
        }
        (t.domains.len() <= MAX_DOMAINS && t.total_mappings <= MAX_MAPPINGS_TOTAL).then_some(t)
    }
}
