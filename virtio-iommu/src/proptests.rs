//! Random request sequences against a small reference model of virtio 1.3
//! 5.13.6 (ATTACH/DETACH/MAP/UNMAP and translation), through the real
//! queues: every status and every translation must agree.

use std::collections::{BTreeMap, BTreeSet};

use nesting_core::types::Access;
use proptest::prelude::*;

use crate::mock::MockDriver;
use crate::protocol::Status;
use crate::request::decode;

const PAGE: u64 = 0x1000;
/// Endpoints 0..=2 are managed; 3 is not.
const MANAGED: u32 = 2;

#[derive(Clone, Debug)]
enum Op {
    Attach {
        domain: u32,
        ep: u32,
        bypass: bool,
    },
    Detach {
        domain: u32,
        ep: u32,
    },
    Map {
        domain: u32,
        page: u64,
        pages: u64,
        gpa_page: u64,
        flags: u32,
    },
    Unmap {
        domain: u32,
        page: u64,
        pages: u64,
    },
    Translate {
        ep: u32,
        page: u64,
        write: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4u32, 0..4u32, prop::bool::weighted(0.2)).prop_map(|(domain, ep, bypass)| Op::Attach {
            domain,
            ep,
            bypass
        }),
        (0..4u32, 0..4u32).prop_map(|(domain, ep)| Op::Detach { domain, ep }),
        (0..4u32, 0..16u64, 1..4u64, 0..64u64, 0..9u32).prop_map(
            |(domain, page, pages, gpa_page, flags)| Op::Map {
                domain,
                page,
                pages,
                gpa_page,
                flags
            }
        ),
        (0..4u32, 0..16u64, 1..8u64).prop_map(|(domain, page, pages)| Op::Unmap {
            domain,
            page,
            pages
        }),
        (0..4u32, 0..20u64, any::<bool>()).prop_map(|(ep, page, write)| Op::Translate {
            ep,
            page,
            write
        }),
    ]
}

#[derive(Default, Debug)]
struct RefDomain {
    bypass: bool,
    endpoints: BTreeSet<u32>,
    /// (first page, last page, gpa page, flags)
    maps: Vec<(u64, u64, u64, u32)>,
}

#[derive(Default, Debug)]
struct Reference {
    domains: BTreeMap<u32, RefDomain>,
    of: BTreeMap<u32, u32>,
}

impl Reference {
    fn leave(&mut self, ep: u32) {
        if let Some(d) = self.of.remove(&ep) {
            let dom = self.domains.get_mut(&d).unwrap();
            dom.endpoints.remove(&ep);
            if dom.endpoints.is_empty() {
                self.domains.remove(&d);
            }
        }
    }

    fn apply(&mut self, op: &Op) -> Option<Status> {
        Some(match *op {
            Op::Attach { domain, ep, bypass } => {
                if ep > MANAGED {
                    Status::NoEnt
                } else if self
                    .domains
                    .get(&domain)
                    .is_some_and(|d| d.bypass != bypass)
                {
                    Status::Inval
                } else {
                    if self.of.get(&ep) != Some(&domain) {
                        self.leave(ep);
                        let d = self.domains.entry(domain).or_insert_with(|| RefDomain {
                            bypass,
                            ..RefDomain::default()
                        });
                        d.endpoints.insert(ep);
                        self.of.insert(ep, domain);
                    }
                    Status::Ok
                }
            }
            Op::Detach { domain, ep } => {
                if ep > MANAGED {
                    Status::NoEnt
                } else if self.of.get(&ep) != Some(&domain) {
                    Status::Inval
                } else {
                    self.leave(ep);
                    Status::Ok
                }
            }
            Op::Map {
                domain,
                page,
                pages,
                gpa_page,
                flags,
            } => {
                let last = page + pages - 1;
                match self.domains.get_mut(&domain) {
                    _ if flags & !7 != 0 => Status::Inval,
                    None => Status::NoEnt,
                    Some(d) if d.bypass => Status::Inval,
                    Some(d) if d.maps.iter().any(|m| m.0 <= last && page <= m.1) => Status::Inval,
                    Some(d) => {
                        d.maps.push((page, last, gpa_page, flags));
                        Status::Ok
                    }
                }
            }
            Op::Unmap {
                domain,
                page,
                pages,
            } => {
                let last = page + pages - 1;
                match self.domains.get_mut(&domain) {
                    None => Status::NoEnt,
                    Some(d) if d.bypass => Status::Inval,
                    Some(d) => {
                        let splits = d
                            .maps
                            .iter()
                            .any(|m| (m.0 < page && m.1 >= page) || (m.0 <= last && m.1 > last));
                        if splits {
                            Status::Range
                        } else {
                            d.maps.retain(|m| !(page <= m.0 && m.1 <= last));
                            Status::Ok
                        }
                    }
                }
            }
            Op::Translate { .. } => return None,
        })
    }

    fn translate(&self, ep: u32, page: u64, write: bool) -> Option<u64> {
        let d = self.domains.get(self.of.get(&ep)?)?;
        if d.bypass {
            return Some(page * PAGE + 8);
        }
        let m = d.maps.iter().find(|m| m.0 <= page && page <= m.1)?;
        let ok = if write { m.3 & 2 != 0 } else { m.3 & 1 != 0 };
        ok.then_some((m.2 + page - m.0) * PAGE + 8)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_requests_match_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut d = MockDriver::new(&["endpoints=0-2"]);
        let mut r = Reference::default();
        for op in &ops {
            match *op {
                Op::Attach { domain, ep, bypass } => {
                    let s = d.attach_flags(domain, ep, u32::from(bypass));
                    prop_assert_eq!(Some(s), r.apply(op), "{:?}", op);
                }
                Op::Detach { domain, ep } => {
                    prop_assert_eq!(Some(d.detach(domain, ep)), r.apply(op), "{:?}", op);
                }
                Op::Map { domain, page, pages, gpa_page, flags } => {
                    let s = d.map(domain, page * PAGE, (page + pages) * PAGE - 1, gpa_page * PAGE, flags);
                    prop_assert_eq!(Some(s), r.apply(op), "{:?}", op);
                }
                Op::Unmap { domain, page, pages } => {
                    let s = d.unmap(domain, page * PAGE, (page + pages) * PAGE - 1);
                    prop_assert_eq!(Some(s), r.apply(op), "{:?}", op);
                }
                Op::Translate { ep, page, write } => {
                    let acc = if write { Access::WRITE } else { Access::READ };
                    let got = d.dev.translate(ep, page * PAGE + 8, acc).gpa();
                    prop_assert_eq!(got, r.translate(ep, page, write), "{:?}", op);
                }
            }
        }
        // Faults never grow the backlog past its bound.
        prop_assert!(d.dev.pending_events() <= crate::MAX_QUEUED_EVENTS);
    }

    #[test]
    fn decoding_arbitrary_bytes_is_total(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_request_bytes_never_panic_and_answer_or_return_unused(
        bytes in prop::collection::vec(any::<u8>(), 0..80),
        writable in 0u32..0x300,
    ) {
        let mut d = MockDriver::new(&[]);
        let (len, _) = d.send_raw(&bytes, writable);
        prop_assert!(len == 0 || len == 4 || len == 0x204 || len == writable);
    }
}
