//! Decoding and executing requests (virtio 1.3 5.13.6.3 to 5.13.6.8).
//!
//! Decoding is total over the bytes of the device-readable part; execution
//! returns the architected status for every guest mistake and touches the
//! host only for passthrough endpoints, host first, so that a host failure
//! leaves the guest-visible state unchanged.

use std::borrow::Cow;

use nesting_core::iotlb::IotlbInvalidation;
use nesting_core::passthrough::{Place, Plan, StageError};
use nesting_core::types::{EndpointId, Iova, RequesterId};
use zerocopy::{FromBytes, IntoBytes};

use crate::config::ResvMem;
use crate::domain::Mapping;
use crate::nesting;
use crate::protocol::{
    AttachBody, AttachFlags, DetachBody, Features, MapBody, MapFlags, ProbeBody, ReqHead,
    RequestType, Status, UnmapBody,
};
use crate::state::State;

fn requester(endpoint: u32) -> IotlbInvalidation {
    IotlbInvalidation::Requester {
        rid: RequesterId::Endpoint(EndpointId(endpoint)),
    }
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// ATTACH.
    Attach(AttachBody),
    /// DETACH.
    Detach(DetachBody),
    /// MAP.
    Map(MapBody),
    /// UNMAP.
    Unmap(UnmapBody),
    /// PROBE.
    Probe(ProbeBody),
}

/// What the readable part of a chain holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Shorter than a head: the type is unknown, so is the tail.
    NoHead,
    /// A type the device does not know.
    UnknownType(u8),
    /// A known type whose body is cut short.
    Short(RequestType),
    /// A complete request.
    Request(Request),
}

/// Bytes of the device-readable part the device ever looks at: the largest
/// head plus body (PROBE). Anything after is ignored.
pub const MAX_READABLE: usize = ReqHead::SIZE + ProbeBody::SIZE;

fn body<T: FromBytes>(rest: &[u8], t: RequestType, f: fn(T) -> Request) -> Decoded {
    match T::read_from_prefix(rest) {
        Ok((b, _)) => Decoded::Request(f(b)),
        Err(_) => Decoded::Short(t),
    }
}

/// Decodes the device-readable bytes of one request.
pub fn decode(readable: &[u8]) -> Decoded {
    let Ok((head, rest)) = ReqHead::read_from_prefix(readable) else {
        return Decoded::NoHead;
    };
    // 5.13.6.2: "The device MUST ignore field reserved of struct
    // virtio_iommu_req_head".
    match RequestType::from(head.type_) {
        t @ RequestType::Attach => body(rest, t, Request::Attach),
        t @ RequestType::Detach => body(rest, t, Request::Detach),
        t @ RequestType::Map => body(rest, t, Request::Map),
        t @ RequestType::Unmap => body(rest, t, Request::Unmap),
        t @ RequestType::Probe => body(rest, t, Request::Probe),
        RequestType::Unknown(raw) => Decoded::UnknownType(raw),
    }
}

/// Encodes a request's readable part (head and body), as the Linux driver
/// lays it out.
pub fn encode(req: &Request) -> Vec<u8> {
    let (t, body): (RequestType, &[u8]) = match req {
        Request::Attach(b) => (RequestType::Attach, b.as_bytes()),
        Request::Detach(b) => (RequestType::Detach, b.as_bytes()),
        Request::Map(b) => (RequestType::Map, b.as_bytes()),
        Request::Unmap(b) => (RequestType::Unmap, b.as_bytes()),
        Request::Probe(b) => (RequestType::Probe, b.as_bytes()),
    };
    let head = ReqHead {
        type_: t.into(),
        reserved: [0; 3],
    };
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

impl State {
    /// Executes a decoded request; PROBE writes its properties into
    /// `props` (`probe_size` bytes, zero-filled by the caller).
    pub(crate) fn execute(&mut self, req: &Request, props: &mut [u8]) -> Status {
        let status = match req {
            Request::Attach(b) => self.attach(b),
            Request::Detach(b) => self.detach(b),
            Request::Map(b) => self.map(b),
            Request::Unmap(b) => self.unmap(b),
            Request::Probe(b) => self.probe(b, props),
        };
        match status {
            Ok(()) => Status::Ok,
            Err(s) => {
                nesting_core::guest_log!(Debug, "virtio-iommu: {req:?} -> {s:?}");
                s
            }
        }
    }

    fn negotiated(&self, f: Features) -> bool {
        self.features.contains(f)
    }

    /// Whether an endpoint attached to no domain is in bypass mode
    /// (5.13.6: BYPASS_CONFIG offered and `bypass` is 1, "even if the
    /// driver does not accept" the feature; or F_BYPASS negotiated).
    pub(crate) fn unattached_bypass(&self) -> bool {
        (self.cfg.offered().contains(Features::BYPASS_CONFIG) && self.bypass)
            || self.negotiated(Features::BYPASS)
    }

    fn check_domain_range(&self, domain: u32) -> Result<(), Status> {
        // 5.13.6: with DOMAIN_RANGE, domain_range "describes the values
        // supported in a domain field"; outside it is out of range.
        let (first, last) = self.cfg.domain_range;
        if domain < first || domain > last {
            return Err(Status::Range);
        }
        Ok(())
    }

    /// Where the guest's view puts a passthrough endpoint on the host: in
    /// its domain's space, at identity (a bypass domain, or unattached in
    /// bypass mode), or blocked.
    pub(crate) fn place_of(&self, endpoint: u32) -> Place<u32> {
        match self.tables.domain_of(endpoint) {
            Some(d) if self.tables.domain(d).is_some_and(|d| d.bypass) => Place::Identity,
            Some(d) => Place::Shadow(d),
            None if self.unattached_bypass() => Place::Identity,
            None => Place::Blocked,
        }
    }

    /// Moves a passthrough endpoint to `to` on the host (a new domain
    /// space filled with the domain's mappings first), from wherever it
    /// actually is. Host first: on failure nothing changed. Nothing to do
    /// for an emulated endpoint.
    fn move_host(&mut self, endpoint: u32, to: Place<u32>) -> Result<(), StageError> {
        let Some(pt) = self.passthrough.as_mut() else {
            return Ok(());
        };
        if !pt.contains(endpoint) {
            return Ok(());
        }
        let mut plan = Plan::new();
        pt.push_move(&mut plan, endpoint, to, &self.tables);
        pt.stage(&plan)
    }

    fn attach(&mut self, b: &AttachBody) -> Result<(), Status> {
        let (domain, endpoint) = (b.domain.get(), b.endpoint.get());
        // 5.13.6.3.2: "If the reserved field of an ATTACH request is not
        // zero, the device MUST reject the request and set status to
        // VIRTIO_IOMMU_S_INVAL."
        if b.reserved != [0; 4] {
            return Err(Status::Inval);
        }
        // 5.13.6.3.2: "If the device does not recognize a flags bit, it
        // MUST reject the request and set status to VIRTIO_IOMMU_S_INVAL."
        // BYPASS is only defined with BYPASS_CONFIG negotiated.
        let flags = AttachFlags::from_bits_retain(b.flags.get());
        let known = match self.negotiated(Features::BYPASS_CONFIG) {
            true => AttachFlags::BYPASS,
            false => AttachFlags::empty(),
        };
        if !known.contains(flags) {
            return Err(Status::Inval);
        }
        // 5.13.6.3.2: "If the endpoint identified by endpoint doesn't
        // exist, the device MUST reject the request and set status to
        // VIRTIO_IOMMU_S_NOENT." Before the domain's range: the MUST wins
        // over the range check (an unknown endpoint is S_NOENT whatever
        // the domain).
        if !self.cfg.manages(endpoint) {
            return Err(Status::NoEnt);
        }
        self.check_domain_range(domain)?;
        let bypass = flags.contains(AttachFlags::BYPASS);
        match self.tables.domain(domain) {
            // 5.13.6.3.2: "If the domain already exists and the
            // VIRTIO_IOMMU_ATTACH_F_BYPASS flag is not consistent with that
            // domain, the device SHOULD reject the request and set status
            // to VIRTIO_IOMMU_S_INVAL."
            Some(d) if d.bypass != bypass => return Err(Status::Inval),
            Some(_) => {}
            // Limit: MAX_DOMAINS.
            None if !self.tables.can_create_domain() => {
                self.limit_refused("MAX_DOMAINS", domain);
                return Err(Status::NoMem);
            }
            None => {}
        }
        if self.tables.domain_of(endpoint) == Some(domain) {
            return Ok(());
        }
        let to = match bypass {
            true => Place::Identity,
            false => Place::Shadow(domain),
        };
        self.move_host(endpoint, to)
            .map_err(|e| nesting::status(&e, true))?;
        // 5.13.6.3.2: "the device SHOULD first detach it from that domain
        // and attach it to the one identified by domain".
        self.tables.attach(endpoint, domain, bypass);
        self.inv.push(requester(endpoint));
        Ok(())
    }

    fn detach(&mut self, b: &DetachBody) -> Result<(), Status> {
        let (domain, endpoint) = (b.domain.get(), b.endpoint.get());
        // 5.13.6.4.2: "If the endpoint identified by endpoint doesn't
        // exist, then the device MUST reject the request and set status to
        // VIRTIO_IOMMU_S_NOENT."
        if !self.cfg.manages(endpoint) {
            return Err(Status::NoEnt);
        }
        // 5.13.6.4.2: "If the domain identified by domain doesn't exist, or
        // if the endpoint identified by endpoint isn't attached to this
        // domain, then the device MAY set the request status to
        // VIRTIO_IOMMU_S_INVAL."
        if self.tables.domain_of(endpoint) != Some(domain) {
            return Err(Status::Inval);
        }
        let to = match self.unattached_bypass() {
            true => Place::Identity,
            false => Place::Blocked,
        };
        self.move_host(endpoint, to)
            .map_err(|e| nesting::status(&e, false))?;
        // 5.13.6.4.2: "The device MUST ensure that after being detached
        // from a domain, the endpoint cannot access any mapping from that
        // domain."
        self.tables.detach(endpoint, domain);
        self.inv.push(requester(endpoint));
        Ok(())
    }

    /// Checks common to MAP and UNMAP: feature, domain, bypass, order.
    fn map_target(&self, domain: u32, first: u64, last: u64) -> Result<(), Status> {
        // 5.13.6.5: "This request is only available when
        // VIRTIO_IOMMU_F_MAP_UNMAP has been negotiated."
        if !self.negotiated(Features::MAP_UNMAP) {
            return Err(Status::Unsupp);
        }
        self.check_domain_range(domain)?;
        // 5.13.6.5.2/5.13.6.6.2: "If domain does not exist, the device
        // SHOULD reject the request and set status to VIRTIO_IOMMU_S_NOENT."
        let d = self.tables.domain(domain).ok_or(Status::NoEnt)?;
        // "If the domain is a bypass domain, the device SHOULD reject the
        // request and set status to VIRTIO_IOMMU_S_INVAL."
        if d.bypass {
            return Err(Status::Inval);
        }
        // 5.13.6.5.1: "virt_end MUST be strictly greater than virt_start"
        // (equal is a one-byte range, valid only with a one-byte granule,
        // which the alignment check decides).
        if last < first {
            return Err(Status::Inval);
        }
        Ok(())
    }

    /// The RESV_MEM regions a mapping in `domain` must avoid: the VMM's,
    /// and the host holes of every passthrough endpoint attached to it.
    fn domain_resv(&self, domain: u32) -> impl Iterator<Item = &ResvMem> {
        let holes = self.passthrough.iter().flat_map(move |p| {
            p.all_holes()
                .filter(move |(ep, _)| self.tables.domain_of(*ep) == Some(domain))
                .flat_map(|(_, h)| h.iter())
        });
        self.cfg.resv.iter().chain(holes)
    }

    /// Every check of a MAP request, in the order the spec lists them.
    fn check_map(
        &self,
        domain: u32,
        first: u64,
        last: u64,
        phys: u64,
        flags: MapFlags,
    ) -> Result<(), Status> {
        // 5.13.6.5.2: "If the device doesn't recognize a flags bit, it MUST
        // reject the request and set status to VIRTIO_IOMMU_S_INVAL."
        // MMIO is only defined with VIRTIO_IOMMU_F_MMIO negotiated.
        let mut known = MapFlags::READ | MapFlags::WRITE;
        if self.negotiated(Features::MMIO) {
            known |= MapFlags::MMIO;
        }
        if self.negotiated(Features::MAP_UNMAP) && !known.contains(flags) {
            return Err(Status::Inval);
        }
        self.map_target(domain, first, last)?;
        // 5.13.6.5.2: "If virt_start, phys_start or (virt_end + 1) is not
        // aligned on the page granularity, the device SHOULD reject the
        // request and set status to VIRTIO_IOMMU_S_RANGE." (virt_end + 1
        // wraps to 0 at the top of the space, which is aligned.)
        let g = self.cfg.granule();
        let aligned = |v: u64| v & (g - 1) == 0;
        if !aligned(first) || !aligned(phys) || !aligned(last.wrapping_add(1)) {
            return Err(Status::Range);
        }
        // 5.13.6: "Any mapping request to virtual addresses outside of this
        // range fails." The physical end must not wrap.
        let (lo, hi) = self.cfg.input_range;
        if first < lo || last > hi || phys.checked_add(last - first).is_none() {
            return Err(Status::Range);
        }
        // 5.13.6.5: the physical range "should be within the
        // guest-physical address space": a bad address.
        if phys + (last - first) > self.cfg.options.phys_last() {
            return Err(Status::Fault);
        }
        // 5.13.6.8.1.2: "The device SHOULD reject a MAP request that
        // overlaps a RESV_MEM region."
        if self.domain_resv(domain).any(|r| r.overlaps(first, last)) {
            return Err(Status::Range);
        }
        // 5.13.6.5.2: "If a mapping already exists in the requested range,
        // the device SHOULD reject the request and set status to
        // VIRTIO_IOMMU_S_INVAL."
        if self
            .tables
            .domain(domain)
            .is_some_and(|d| d.overlaps(first, last))
        {
            return Err(Status::Inval);
        }
        // Limits: MAX_MAPPINGS_PER_DOMAIN, MAX_MAPPINGS_TOTAL (the only
        // S_NOMEM of this check; `map` counts and logs it).
        if !self.tables.has_room(domain) {
            return Err(Status::NoMem);
        }
        Ok(())
    }

    fn map(&mut self, b: &MapBody) -> Result<(), Status> {
        let (domain, first, last, phys) = (
            b.domain.get(),
            b.virt_start.get(),
            b.virt_end.get(),
            b.phys_start.get(),
        );
        let flags = MapFlags::from_bits_retain(b.flags.get());
        if let Err(s) = self.check_map(domain, first, last, phys, flags) {
            if s == Status::NoMem {
                self.limit_refused("MAX_MAPPINGS_PER_DOMAIN/MAX_MAPPINGS_TOTAL", domain);
            }
            return Err(s);
        }
        let m = Mapping {
            iova_first: first,
            iova_last: last,
            gpa: phys,
            flags: flags.bits(),
        };
        if let Some(pt) = self.passthrough.as_mut() {
            let plan = pt.map_plan(domain, &m);
            pt.stage(&plan).map_err(|e| nesting::status(&e, false))?;
        }
        self.tables.insert_mapping(domain, m);
        Ok(())
    }

    fn unmap(&mut self, b: &UnmapBody) -> Result<(), Status> {
        let (domain, first, last) = (b.domain.get(), b.virt_start.get(), b.virt_end.get());
        // 5.13.6.6.2: reserved MAY be rejected; the device ignores it, as
        // Linux's driver and QEMU do.
        self.map_target(domain, first, last)?;
        let removed = match self.tables.domain(domain) {
            Some(d) => d.unmap_set(first, last)?,
            None => return Err(Status::NoEnt),
        };
        // 5.13.6.6.2: "If part of the range or the full range is not
        // covered by an existing mapping, then the device SHOULD remove all
        // mappings affected by the range and set the request status to
        // VIRTIO_IOMMU_S_OK."
        // One plan, so one host sync however many mappings it covers.
        if let Some(pt) = self.passthrough.as_mut() {
            let plan = pt.unmap_plan(domain, &removed);
            pt.stage(&plan).map_err(|e| nesting::status(&e, false))?;
        }
        self.tables.remove_mappings(domain, &removed);
        self.inv.push(IotlbInvalidation::Range {
            domain,
            asid: None,
            iova: Iova(first),
            len: (last - first).saturating_add(1),
        });
        Ok(())
    }

    /// The RESV_MEM properties of `endpoint`: the VMM's regions, then,
    /// for a passthrough endpoint, its own host's holes outside them
    /// (5.13.6.8.1.2; see `DeviceConfig::host_pieces`) inside the input
    /// range. An emulated endpoint has no host hole.
    pub(crate) fn endpoint_resv(&self, endpoint: u32) -> Cow<'_, [ResvMem]> {
        let holes = self
            .passthrough
            .as_ref()
            .map_or(&[][..], |p| p.holes(endpoint));
        if holes.is_empty() {
            return Cow::Borrowed(&self.cfg.resv);
        }
        let mut out = self.cfg.resv.clone();
        out.extend(self.cfg.in_input_range(holes));
        Cow::Owned(out)
    }

    fn probe(&mut self, b: &ProbeBody, props: &mut [u8]) -> Result<(), Status> {
        let endpoint = b.endpoint.get();
        // 5.13.6.7.2: "If the endpoint identified by endpoint doesn't
        // exist, then the device SHOULD reject the request and set status
        // to VIRTIO_IOMMU_S_NOENT."
        if !self.cfg.manages(endpoint) {
            return Err(Status::NoEnt);
        }
        // 5.13.6.7.2: "When two properties follow each other, the device
        // MUST put the second property exactly (length + 4) bytes after the
        // beginning of the first one"; the rest stays zero ("SHOULD fill
        // the remaining bytes of properties with zeroes").
        let mut at = 0usize;
        for r in self.endpoint_resv(endpoint).iter() {
            let bytes = r.property();
            let Some(slot) = props.get_mut(at..at + crate::protocol::ProbeResvMem::SIZE) else {
                return Err(Status::DevErr);
            };
            slot.copy_from_slice(bytes.as_bytes());
            at += crate::protocol::ProbeResvMem::SIZE;
        }
        // Answered: a device hot-plugged behind this endpoint later could
        // not have its host holes announced (the driver probes once).
        self.probed.record(endpoint);
        Ok(())
    }
}
