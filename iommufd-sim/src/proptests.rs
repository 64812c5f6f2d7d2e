//! Random MAP / MAP_FILE / UNMAP / COPY sequences against a small reference
//! model of the kernel's interval rules and pin accounting.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use proptest::prelude::*;

use super::*;
use crate::profile::HostProfile;

const PAGE: u64 = 4096;
/// The VT-d profile's MSI window (reserved once a device is attached).
const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// A reference area.
#[derive(Clone, Debug)]
struct MArea {
    len: u64,
    pages: u64,
    /// Source address of the first byte (user VA, or file offset).
    src: u64,
    file: bool,
    writable: bool,
    access: Access,
}

/// Two IOASes, each with a device attached (so pages are pinned and the
/// alignment is 4 KiB).
#[derive(Clone, Debug, Default)]
struct Model {
    ioas: [BTreeMap<u64, MArea>; 2],
    next_pages: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Map {
        ioas: usize,
        iova: Option<u64>,
        va: u64,
        len: u64,
        access: Access,
    },
    MapFile {
        ioas: usize,
        iova: u64,
        offset: u64,
        len: u64,
        access: Access,
    },
    Unmap {
        ioas: usize,
        iova: u64,
        len: u64,
    },
    Copy {
        dst: usize,
        dst_iova: u64,
        src: usize,
        src_iova: u64,
        len: u64,
        access: Access,
    },
    Inject(Box<Op>),
}

fn overlaps(m: &BTreeMap<u64, MArea>, first: u64, last: u64) -> bool {
    m.iter().any(|(i, a)| *i <= last && first < i + a.len)
}

impl Model {
    /// MAP / MAP_FILE / COPY of prepared slices at a fixed IOVA.
    fn place(
        &mut self,
        ioas: usize,
        iova: u64,
        len: u64,
        elms: Vec<MArea>,
        access: Access,
    ) -> Result<u64, Errno> {
        if !len.is_multiple_of(PAGE) || len == 0 || !iova.is_multiple_of(PAGE) {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        if (iova <= MSI.1 && MSI.0 <= last) || last >= 1 << 48 {
            return Err(Errno::EINVAL);
        }
        if overlaps(&self.ioas[ioas], iova, last) {
            return Err(Errno::EEXIST);
        }
        let mut at = iova;
        let mut out = vec![];
        for e in elms {
            if access.contains(Access::WRITE) && !e.writable {
                return Err(Errno::EPERM);
            }
            if !e.src.is_multiple_of(PAGE) {
                return Err(Errno::EINVAL);
            }
            let len = e.len;
            out.push((at, MArea { access, ..e }));
            at += len;
        }
        self.ioas[ioas].extend(out);
        Ok(iova)
    }

    fn map(
        &mut self,
        ioas: usize,
        iova: u64,
        src: u64,
        len: u64,
        access: Access,
        file: bool,
    ) -> Result<u64, Errno> {
        if !access.intersects(Access::RW) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        self.next_pages += 1;
        let e = MArea {
            len,
            pages: self.next_pages,
            src,
            file,
            writable: access.contains(Access::WRITE),
            access,
        };
        self.place(ioas, iova, len, vec![e], access)
    }

    fn unmap(&mut self, ioas: usize, iova: u64, len: u64) -> Result<u64, Errno> {
        // ioas.c, iommufd_ioas_unmap: "if (cmd->iova == 0 && cmd->length ==
        // U64_MAX)" unmaps everything and succeeds even when empty.
        if iova == 0 && len == u64::MAX {
            let m = &mut self.ioas[ioas];
            let n = m.values().map(|a| a.len).sum();
            m.clear();
            return Ok(n);
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        let m = &mut self.ioas[ioas];
        let hits: Vec<(u64, u64)> = m
            .iter()
            .filter(|(i, a)| **i <= last && iova < *i + a.len)
            .map(|(i, a)| (*i, *i + a.len - 1))
            .collect();
        let mut n = 0;
        for (f, l) in hits {
            if f < iova || l > last {
                return Err(Errno::ENOENT);
            }
            m.remove(&f);
            n += l - f + 1;
        }
        if n == 0 { Err(Errno::ENOENT) } else { Ok(n) }
    }

    fn copy(
        &mut self,
        dst: usize,
        dst_iova: u64,
        src: usize,
        src_iova: u64,
        len: u64,
        access: Access,
    ) -> Result<u64, Errno> {
        if !access.intersects(Access::RW) {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let last = src_iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        let m = &self.ioas[src];
        let mut cur = src_iova;
        let mut elms = vec![];
        loop {
            let (i, a) = m
                .range(..=cur)
                .next_back()
                .filter(|(i, a)| *i + a.len > cur)
                .ok_or(Errno::ENOENT)?;
            if !elms.is_empty() && *i != cur {
                return Err(Errno::ENOENT);
            }
            let end = last.min(i + a.len - 1);
            elms.push(MArea {
                len: end - cur + 1,
                src: a.src + (cur - i),
                ..a.clone()
            });
            if end == last {
                break;
            }
            cur = end + 1;
        }
        self.place(dst, dst_iova, len, elms, access)
    }

    /// Pages of each `iopt_pages`, counted once: the page index of a
    /// source address is relative to the first MAP's page-aligned base,
    /// which keeps the same absolute page numbers.
    fn pinned(&self) -> u64 {
        let mut pages: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for m in &self.ioas {
            for a in m.values() {
                let set = pages.entry(a.pages).or_default();
                for p in a.src / PAGE..=(a.src + a.len - 1) / PAGE {
                    set.insert(p);
                }
            }
        }
        pages.values().map(|s| s.len() as u64).sum()
    }

    fn mappings(&self, ioas: usize, file: SimFileKey) -> Vec<SimMapping> {
        self.ioas[ioas]
            .iter()
            .map(|(i, a)| SimMapping {
                range: IovaRange::from_len(Iova(*i), a.len).unwrap(),
                backing: if a.file {
                    SimBacking::File {
                        file,
                        offset: a.src,
                    }
                } else {
                    SimBacking::UserVa(a.src)
                },
                access: a.access,
            })
            .collect()
    }
}

struct Rig {
    s: SimIommufd,
    ioas: [IoasId; 2],
    file: std::fs::File,
    key: SimFileKey,
}

fn rig() -> Rig {
    let s = SimIommufd::with_host(HostProfile::VtdNest.spec());
    let mut ioas = [IoasId(0); 2];
    for slot in &mut ioas {
        let d = s.bind_device(s.add_device(0)).unwrap();
        *slot = s.ioas_alloc().unwrap();
        s.attach(d, None, PtId::Ioas(*slot)).unwrap();
    }
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let key = SimFileKey::of(file.as_fd()).unwrap();
    Rig { s, ioas, file, key }
}

/// Runs `op` on the simulator.
fn run_sim(r: &Rig, op: &Op) -> Result<u64, Errno> {
    let s = &r.s;
    let e = |x: HostError| x.errno;
    match op {
        Op::Map {
            ioas,
            iova,
            va,
            len,
            access,
        } => {
            let place = iova.map_or(IovaPlacement::Any, |i| IovaPlacement::Fixed(Iova(i)));
            s.ioas_map(r.ioas[*ioas], place, MapSource::UserVa(*va), *len, *access)
                .map(|i| i.0)
                .map_err(e)
        }
        Op::MapFile {
            ioas,
            iova,
            offset,
            len,
            access,
        } => {
            let src = MapSource::File {
                fd: r.file.as_fd(),
                offset: *offset,
            };
            s.ioas_map(
                r.ioas[*ioas],
                IovaPlacement::Fixed(Iova(*iova)),
                src,
                *len,
                *access,
            )
            .map(|i| i.0)
            .map_err(e)
        }
        Op::Unmap { ioas, iova, len } => s.ioas_unmap(r.ioas[*ioas], Iova(*iova), *len).map_err(e),
        Op::Copy {
            dst,
            dst_iova,
            src,
            src_iova,
            len,
            access,
        } => s
            .ioas_copy(
                r.ioas[*dst],
                IovaPlacement::Fixed(Iova(*dst_iova)),
                r.ioas[*src],
                Iova(*src_iova),
                *len,
                *access,
            )
            .map(|i| i.0)
            .map_err(e),
        Op::Inject(inner) => {
            let hop = match **inner {
                Op::Map { .. } => HostOp::IoasMap,
                Op::MapFile { .. } => HostOp::IoasMapFile,
                Op::Unmap { .. } => HostOp::IoasUnmap,
                _ => HostOp::IoasCopy,
            };
            s.fail_nth(hop, 1, Errno::EAGAIN);
            run_sim(r, inner)
        }
    }
}

/// Runs `op` on the model; `sim_result` resolves automatic placement.
fn run_model(m: &mut Model, op: &Op, sim_result: Result<u64, Errno>) -> Result<u64, Errno> {
    match op {
        Op::Map {
            ioas,
            iova: Some(i),
            va,
            len,
            access,
        } => m.map(*ioas, *i, *va, *len, *access, false),
        Op::Map {
            ioas,
            iova: None,
            va,
            len,
            access,
        } => match sim_result {
            // Whatever IOVA the kernel picked must be a valid fixed one.
            Ok(i) => m.map(*ioas, i, *va, *len, *access, false),
            // iommufd_ioas_map / iopt_alloc_area_pages / iopt_alloc_iova:
            // a source address aligned below PAGE_SIZE is refused.
            Err(_)
                if !access.intersects(Access::RW)
                    || *len == 0
                    || len % PAGE != 0
                    || va % PAGE != 0 =>
            {
                Err(Errno::EINVAL)
            }
            Err(_) => Err(Errno::ENOSPC),
        },
        Op::MapFile {
            ioas,
            iova,
            offset,
            len,
            access,
        } => m.map(*ioas, *iova, *offset, *len, *access, true),
        Op::Unmap { ioas, iova, len } => m.unmap(*ioas, *iova, *len),
        Op::Copy {
            dst,
            dst_iova,
            src,
            src_iova,
            len,
            access,
        } => m.copy(*dst, *dst_iova, *src, *src_iova, *len, *access),
        Op::Inject(_) => Err(Errno::EAGAIN),
    }
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        Just(Access::READ),
        Just(Access::WRITE),
        Just(Access::RW),
        Just(Access::EXEC)
    ]
}

fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u64..64).prop_map(|n| n * 0x800),
        1 => Just(MSI.0 - 0x1000),
        1 => Just((1u64 << 48) - 0x1000),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(0x800),
        Just(0x1000),
        Just(0x2000),
        Just(0x3000),
        Just(0x6000)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let ioas = 0usize..2;
    let base = prop_oneof![
        4 => (ioas.clone(), iova(), 0u64..16, len(), access()).prop_map(|(ioas, iova, v, len, access)| Op::Map {
            ioas,
            iova: Some(iova),
            va: 0x10_0000 + v * 0x800,
            len,
            access
        }),
        1 => (ioas.clone(), 0u64..16, len(), access()).prop_map(|(ioas, v, len, access)| Op::Map {
            ioas,
            iova: None,
            va: 0x10_0000 + v * 0x800,
            len,
            access
        }),
        1 => (ioas.clone(), iova(), 0u64..8, len(), access()).prop_map(|(ioas, iova, o, len, access)| Op::MapFile {
            ioas,
            iova,
            offset: o * 0x800,
            len,
            access
        }),
        3 => (ioas.clone(), iova(), len()).prop_map(|(ioas, iova, len)| Op::Unmap { ioas, iova, len }),
        1 => ioas.clone().prop_map(|ioas| Op::Unmap { ioas, iova: 0, len: u64::MAX }),
        3 => (ioas.clone(), iova(), ioas.clone(), iova(), len(), access()).prop_map(
            |(dst, dst_iova, src, src_iova, len, access)| Op::Copy { dst, dst_iova, src, src_iova, len, access }
        ),
    ];
    prop_oneof![9 => base.clone(), 1 => base.prop_map(|o| Op::Inject(Box::new(o)))]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mapping_ops_match_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        let r = rig();
        let mut m = Model::default();
        for op in &ops {
            let before = r.s.snapshot();
            let got = run_sim(&r, op);
            let want = run_model(&mut m, op, got);
            prop_assert_eq!(got, want, "op {:?}", op);
            if matches!(op, Op::Inject(_)) {
                prop_assert_eq!(r.s.snapshot(), before);
            }
            for i in 0..2 {
                prop_assert_eq!(r.s.mappings(r.ioas[i]), m.mappings(i, r.key), "ioas {} after {:?}", i, op);
            }
            prop_assert_eq!(r.s.pinned_pages(), m.pinned(), "pins after {:?}", op);
        }
    }
}
