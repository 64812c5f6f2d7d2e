//! IOAS mappings: `drivers/iommu/iommufd/ioas.c` (argument checks and the
//! errno of each refusal) over `io_pagetable.c` (IOVA allocation, areas,
//! domains, reserved ranges) and `pages.c` (pinning).

use nesting_core::host::{Errno, IovaPlacement, IovaRanges};
use nesting_core::types::{Access, IovaRange};

use super::state::{Area, Ioas, Owner, PagesBase, State};

/// One slice of an `iopt_pages` to place (`struct iopt_pages_list`).
#[derive(Clone, Debug)]
pub(super) struct PagesElm {
    pub pages: u64,
    pub base: PagesBase,
    pub writable: bool,
    pub start_byte: u64,
    pub length: u64,
    /// Size of the file behind a file-backed `iopt_pages`, as it was when
    /// mapped (the kernel reads `i_size` when it pins).
    pub file_size: Option<u64>,
}

impl PagesElm {
    /// The address the slice starts at in its source, used to guess the
    /// IOVA alignment (`iopt_alloc_area_pages`: `start_byte + uptr` or
    /// `start_byte + pages->start`).
    fn source_addr(&self) -> u64 {
        match self.base {
            PagesBase::User(b) | PagesBase::File(_, b) => b.wrapping_add(self.start_byte),
        }
    }
}

/// ioas.c, `iommufd_ioas_map` / `iommufd_ioas_map_file` / `iommufd_ioas_copy`:
/// the checks shared before the IOAS is looked up.
pub(super) fn check_map_args(iova: IovaPlacement, len: u64, access: Access) -> Result<(), Errno> {
    let iova = match iova {
        IovaPlacement::Fixed(i) => i.0,
        IovaPlacement::Any => 0,
    };
    // "if (cmd->iova >= ULONG_MAX || cmd->length >= ULONG_MAX) return -EOVERFLOW;"
    if iova == u64::MAX || len == u64::MAX {
        return Err(Errno::EOVERFLOW);
    }
    // "if (!(cmd->flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE))) return -EINVAL;"
    if !access.intersects(Access::RW) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl State {
    /// pages.c, `iopt_alloc_user_pages` + `iopt_alloc_pages`.
    pub fn alloc_user_pages(
        &mut self,
        uptr: u64,
        len: u64,
        writable: bool,
    ) -> Result<PagesElm, Errno> {
        let page = self.page_size();
        // "if (check_add_overflow((unsigned long)uptr, length, &end)) return ERR_PTR(-EOVERFLOW);"
        uptr.checked_add(len).ok_or(Errno::EOVERFLOW)?;
        let down = uptr - uptr % page;
        self.alloc_pages(PagesBase::User(down), uptr - down, len, writable)
    }

    /// io_pagetable.c, `iopt_map_file_pages` + pages.c, `iopt_alloc_file_pages`.
    pub fn alloc_file_pages(
        &mut self,
        (file, file_size): (super::SimFileKey, u64),
        start: u64,
        len: u64,
        writable: bool,
    ) -> Result<PagesElm, Errno> {
        // "if (!length) return -EINVAL;"
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        // "if (check_add_overflow(start, length - 1, &last)) return -EOVERFLOW;"
        start.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        let start_byte = start % self.page_size();
        let mut elm = self.alloc_pages(
            PagesBase::File(file, start - start_byte),
            start_byte,
            len,
            writable,
        )?;
        elm.file_size = Some(file_size);
        Ok(elm)
    }

    /// pages.c, `iopt_alloc_pages`: "if (length > SIZE_MAX - PAGE_SIZE ||
    /// length == 0) return ERR_PTR(-EINVAL);"
    fn alloc_pages(
        &mut self,
        base: PagesBase,
        start_byte: u64,
        length: u64,
        writable: bool,
    ) -> Result<PagesElm, Errno> {
        if length > u64::MAX - self.page_size() || length == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(PagesElm {
            pages: self.new_pages(),
            base,
            writable,
            start_byte,
            length,
            file_size: None,
        })
    }

    /// io_pagetable.c, `iopt_get_pages`: the slices of the areas covering
    /// `[iova, iova + len)`, which must be mapped without holes. The first
    /// area may start before `iova` and the last may end after it
    /// (`iopt_area_contig_init` looks up the area *containing* `iova`), so a
    /// COPY may take a sub-range of an earlier MAP.
    pub fn get_pages(&self, ioas: u32, iova: u64, len: u64) -> Result<Vec<PagesElm>, Errno> {
        // "if (!length) return -EINVAL;"
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        // "if (check_add_overflow(iova, length - 1, &last_iova)) return -EOVERFLOW;"
        let last = iova.checked_add(len - 1).ok_or(Errno::EOVERFLOW)?;
        let io = self.ioas(ioas)?;
        let mut out = Vec::new();
        let mut cur = iova;
        loop {
            // "if (!iopt_area_contig_done(&iter)) rc = -ENOENT;"
            let area = area_containing(io, cur).ok_or(Errno::ENOENT)?;
            if out.is_empty() || area.iova == cur {
                let end = last.min(area.last());
                out.push(PagesElm {
                    pages: area.pages,
                    base: area.base,
                    writable: area.writable,
                    start_byte: area.start_byte + (cur - area.iova),
                    length: end - cur + 1,
                    file_size: area.file_size,
                });
                if end == last {
                    return Ok(out);
                }
                cur = end + 1;
            } else {
                return Err(Errno::ENOENT);
            }
        }
    }

    /// io_pagetable.c, `iopt_map_pages` -> `iopt_alloc_area_pages` and
    /// `iopt_insert_area`: places the slices one after the other.
    pub fn map_pages(
        &mut self,
        ioas: u32,
        elms: &[PagesElm],
        length: u64,
        place: IovaPlacement,
        access: Access,
    ) -> Result<u64, Errno> {
        let page = self.page_size();
        let io = self.ioas(ioas)?;
        let align = self.iova_alignment(io);
        // "if ((length & (iopt->iova_alignment - 1)) || !length) rc = -EINVAL;"
        if length & (align - 1) != 0 || length == 0 {
            return Err(Errno::EINVAL);
        }
        let first = elms.first().ok_or(Errno::EINVAL)?;
        let iova = match place {
            // "Use the first entry to guess the ideal IOVA alignment"
            IovaPlacement::Any => self.alloc_iova(io, first.source_addr(), length)?,
            IovaPlacement::Fixed(i) => {
                check_iova(io, align, i.0, length)?;
                i.0
            }
        };
        let mut areas = Vec::with_capacity(elms.len());
        let mut at = iova;
        for e in elms {
            // iopt_insert_area: "if ((iommu_prot & IOMMU_WRITE) && !pages->writable) return -EPERM;"
            if access.contains(Access::WRITE) && !e.writable {
                return Err(Errno::EPERM);
            }
            // "area->page_offset = start_byte % PAGE_SIZE;
            //  if (area->page_offset & (iopt->iova_alignment - 1)) return -EINVAL;"
            if (e.start_byte % page) & (align - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            // "if (check_add_overflow(iova, length - 1, &area->node.last)) return -EOVERFLOW;"
            at.checked_add(e.length - 1).ok_or(Errno::EOVERFLOW)?;
            areas.push(Area {
                iova: at,
                len: e.length,
                pages: e.pages,
                base: e.base,
                writable: e.writable,
                start_byte: e.start_byte,
                access: access & Access::RW,
                file_size: e.file_size,
            });
            at = at.wrapping_add(e.length);
        }
        // An IOAS with a domain pins at once (iopt_fill_domains_pages).
        if !io.domains.is_empty() {
            areas.iter().try_for_each(|a| check_pinnable(a, page))?;
        }
        let io = self.ioas_mut(ioas)?;
        for a in areas {
            io.areas.insert(a.iova, a);
        }
        Ok(iova)
    }

    /// io_pagetable.c, `iopt_alloc_iova`: the first hole of the allowed
    /// ranges (whole space from PAGE_SIZE to ULONG_MAX - PAGE_SIZE without
    /// any) that is neither reserved nor mapped, aligned to the source
    /// address's natural alignment (capped at the THP size) plus its page
    /// offset. Never returns IOVA 0.
    fn alloc_iova(&self, io: &Ioas, addr: u64, length: u64) -> Result<u64, Errno> {
        let page = self.page_size();
        let page_offset = addr % page;
        // "if (length == 0 || length >= ULONG_MAX / 2) return -EOVERFLOW;"
        if length == 0 || length >= u64::MAX / 2 {
            return Err(Errno::EOVERFLOW);
        }
        let natural = length.next_power_of_two();
        let mut align = if addr == 0 {
            natural
        } else {
            natural.min(1u64 << addr.trailing_zeros())
        };
        // "if (iova_alignment >= max_alignment) iova_alignment = max_alignment;"
        align = align.min(self.max_iova_alignment());
        // "if (iova_alignment < iopt->iova_alignment) return -EINVAL;"
        if align < self.iova_alignment(io) {
            return Err(Errno::EINVAL);
        }
        let bounds = IovaRange {
            first: page.into(),
            last: (u64::MAX - page).into(),
        };
        let allowed = if io.allowed.is_empty() {
            vec![bounds]
        } else {
            clip(merge(io.allowed.clone()), bounds)
        };
        let used = merge(
            io.reserved
                .iter()
                .map(|(_, r)| *r)
                .chain(io.areas.values().map(Area::range))
                .collect(),
        );
        for a in allowed {
            let Some(start) = fit(a.first.0, a.last.0, length, align, page_offset) else {
                continue;
            };
            for hole in holes(&used, start, a.last.0) {
                if let Some(iova) = fit(hole.first.0, hole.last.0, length, align, page_offset) {
                    return Ok(iova);
                }
            }
        }
        Err(Errno::ENOSPC)
    }

    /// ioas.c, `iommufd_ioas_unmap` over io_pagetable.c,
    /// `iopt_unmap_iova_range`. Areas are removed in IOVA order, so an area
    /// crossing the end of the range fails the call with ENOENT *after*
    /// the areas before it are gone; the caller commits that partial state
    /// as the kernel does.
    pub fn unmap(&mut self, ioas: u32, iova: u64, len: u64) -> (u64, Result<u64, Errno>) {
        if let Err(e) = self.ioas(ioas) {
            return (0, Err(e));
        }
        // "if (cmd->iova == 0 && cmd->length == U64_MAX)" -> iopt_unmap_all:
        // "If the IOVAs are empty then unmap all succeeds".
        if iova == 0 && len == u64::MAX {
            let n = self.unmap_range(ioas, 0, u64::MAX);
            return (n.0, n.1.map(|()| n.0));
        }
        // "if (cmd->iova >= ULONG_MAX || cmd->length >= ULONG_MAX) rc = -EOVERFLOW;"
        if iova == u64::MAX || len == u64::MAX {
            return (0, Err(Errno::EOVERFLOW));
        }
        // iopt_unmap_iova: "if (!length) return -EINVAL;"
        if len == 0 {
            return (0, Err(Errno::EINVAL));
        }
        let Some(last) = iova.checked_add(len - 1) else {
            return (0, Err(Errno::EOVERFLOW));
        };
        let (n, rc) = self.unmap_range(ioas, iova, last);
        match rc {
            Err(e) => (n, Err(e)),
            // "if (!unmapped) rc = -ENOENT;"
            Ok(()) if n == 0 => (0, Err(Errno::ENOENT)),
            Ok(()) => (n, Ok(n)),
        }
    }

    /// The loop of `iopt_unmap_iova_range`: "if (area_first < start ||
    /// area_last > last) rc = -ENOENT".
    fn unmap_range(&mut self, ioas: u32, start: u64, last: u64) -> (u64, Result<(), Errno>) {
        let domains = self
            .ioas(ioas)
            .map(|io| io.domains.clone())
            .unwrap_or_default();
        let Ok(io) = self.ioas_mut(ioas) else {
            return (0, Err(Errno::ENOENT));
        };
        let mut unmapped = 0u64;
        let mut gone = Vec::new();
        let mut rc = Ok(());
        let hits: Vec<(u64, u64)> = areas_in(io, start, last)
            .map(|a| (a.iova, a.last()))
            .collect();
        for (first, a_last) in hits {
            if first < start || a_last > last {
                rc = Err(Errno::ENOENT);
                break;
            }
            io.areas.remove(&first);
            unmapped += a_last - first + 1;
            gone.push((first, a_last));
        }
        // The domains lose their PTEs, dirty bits included.
        for d in domains {
            if let Ok(p) = self.paging_mut(d) {
                for &(f, l) in &gone {
                    p.dirty.retain(|x| *x < f || *x > l);
                }
            }
        }
        (unmapped, rc)
    }

    /// ioas.c, `iommufd_ioas_iova_ranges`: the holes of `reserved_itree`
    /// (allowed ranges do not restrict them) and `iopt->iova_alignment`.
    pub fn iova_ranges(&self, ioas: u32) -> Result<IovaRanges, Errno> {
        let io = self.ioas(ioas)?;
        let used = merge(io.reserved.iter().map(|(_, r)| *r).collect());
        Ok(IovaRanges {
            ranges: holes(&used, 0, u64::MAX),
            alignment: self.iova_alignment(io),
        })
    }

    /// ioas.c, `iommufd_ioas_allow_iovas` -> `iommufd_ioas_load_iovas` and
    /// io_pagetable.c, `iopt_set_allow_iova`.
    pub fn allow_iovas(&mut self, ioas: u32, ranges: &[IovaRange]) -> Result<(), Errno> {
        self.ioas(ioas)?;
        let mut new: Vec<IovaRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            // "if (range.start >= range.last) return -EINVAL;" (a one-byte
            // range is refused too)
            // "if (interval_tree_iter_first(itree, range.start, range.last)) return -EINVAL;"
            if r.first >= r.last || new.iter().any(|n| n.overlaps(r)) {
                return Err(Errno::EINVAL);
            }
            new.push(*r);
        }
        let io = self.ioas_mut(ioas)?;
        // "if (iopt_reserved_iter_first(iopt, allowed->node.start, allowed->node.last)) return -EADDRINUSE;"
        if new
            .iter()
            .any(|a| io.reserved.iter().any(|(_, r)| r.overlaps(a)))
        {
            return Err(Errno(libc::EADDRINUSE));
        }
        io.allowed = new;
        Ok(())
    }

    /// io_pagetable.c, `iopt_reserve_iova`: "if (iopt_area_iter_first(iopt,
    /// start, last) || iopt_allowed_iter_first(iopt, start, last)) return
    /// -EADDRINUSE;"
    pub fn reserve_iova(&mut self, ioas: u32, r: IovaRange, owner: Owner) -> Result<(), Errno> {
        let io = self.ioas_mut(ioas)?;
        if areas_in(io, r.first.0, r.last.0).next().is_some()
            || io.allowed.iter().any(|a| a.overlaps(&r))
        {
            return Err(Errno(libc::EADDRINUSE));
        }
        io.reserved.push((owner, r));
        Ok(())
    }

    /// io_pagetable.c, `iopt_table_enforce_dev_resv_regions`: the device's
    /// reserved regions become reserved IOVA of the IOAS.
    pub fn enforce_dev_resv(&mut self, ioas: u32, dev: u32) -> Result<(), Errno> {
        let unit = self.dev(dev)?.unit;
        for r in self.unit_spec(unit).reserved.clone() {
            self.reserve_iova(ioas, r, Owner::Dev(dev))?;
        }
        Ok(())
    }

    /// `iopt_remove_reserved_iova(iopt, dev)`.
    pub fn remove_dev_resv(&mut self, ioas: u32, dev: u32) {
        if let Ok(io) = self.ioas_mut(ioas) {
            io.reserved.retain(|(o, _)| *o != Owner::Dev(dev));
        }
    }

    /// io_pagetable.c, `iopt_table_add_domain`: a new domain of `unit`
    /// joins the IOAS.
    pub fn add_domain(&mut self, ioas: u32, hwpt: u32, unit: u32) -> Result<(), Errno> {
        let page = self.page_size();
        let spec = self.unit_spec(unit).clone();
        let io = self.ioas(ioas)?;
        let cur = self.iova_alignment(io);
        let new_align = spec.page_size.max(cur);
        // "if (new_iova_alignment > PAGE_SIZE) rc = -EINVAL;"
        if new_align > page {
            return Err(Errno::EINVAL);
        }
        // iopt_check_iova_alignment: "All existing area's conform to an
        // increased page size", else -EADDRINUSE.
        let mask = new_align - 1;
        if new_align != cur
            && io.areas.values().any(|a| {
                a.iova & mask != 0 || a.len & mask != 0 || (a.start_byte % page) & mask != 0
            })
        {
            return Err(Errno(libc::EADDRINUSE));
        }
        // The first domain pins every area (iopt_fill_domain ->
        // pfn_reader_user_pin); later ones copy from the pinned pages.
        if io.domains.is_empty() {
            io.areas
                .values()
                .try_for_each(|a| check_pinnable(a, page))?;
        }
        // "No area exists that is outside the allowed domain aperture"
        let ap = spec.aperture;
        if ap.first.0 != 0 {
            let r = IovaRange {
                first: 0.into(),
                last: (ap.first.0 - 1).into(),
            };
            self.reserve_iova(ioas, r, Owner::Domain(hwpt))?;
        }
        if ap.last.0 != u64::MAX {
            let r = IovaRange {
                first: (ap.last.0 + 1).into(),
                last: u64::MAX.into(),
            };
            self.reserve_iova(ioas, r, Owner::Domain(hwpt))?;
        }
        self.ioas_mut(ioas)?.domains.push(hwpt);
        Ok(())
    }
}

/// Whether the kernel can pin an area's pages. For a file, pages.c
/// `pin_memfd_pages` pins whole pages from the area's first to its last
/// with mm/gup.c `memfd_pin_folios`, which refuses "if (end >=
/// i_size_read(file_inode(memfd))) return -EINVAL;": a mapping whose last
/// page reaches past the end of the file fails when it is pinned, at MAP
/// time if the IOAS has a domain, else when the first domain is attached.
fn check_pinnable(a: &Area, page: u64) -> Result<(), Errno> {
    let (Some(size), PagesBase::File(_, base)) = (a.file_size, a.base) else {
        return Ok(());
    };
    let last_index = (a.start_byte + (a.len - 1)) / page;
    let end = base
        .checked_add((last_index + 1) * page - 1)
        .ok_or(Errno::EINVAL)?;
    if end >= size {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// io_pagetable.c, `iopt_check_iova` for a FIXED_IOVA placement.
fn check_iova(io: &Ioas, align: u64, iova: u64, length: u64) -> Result<(), Errno> {
    // "if ((iova & (iopt->iova_alignment - 1))) return -EINVAL;"
    if iova & (align - 1) != 0 {
        return Err(Errno::EINVAL);
    }
    // "if (check_add_overflow(iova, length - 1, &last)) return -EOVERFLOW;"
    let last = iova.checked_add(length - 1).ok_or(Errno::EOVERFLOW)?;
    let r = IovaRange {
        first: iova.into(),
        last: last.into(),
    };
    // "No reserved IOVA intersects the range" -> -EINVAL
    if io.reserved.iter().any(|(_, x)| x.overlaps(&r)) {
        return Err(Errno::EINVAL);
    }
    // "Check that there is not already a mapping in the range" -> -EEXIST
    if areas_in(io, iova, last).next().is_some() {
        return Err(Errno::EEXIST);
    }
    Ok(())
}

/// The area containing `iova`.
pub(super) fn area_containing(io: &Ioas, iova: u64) -> Option<&Area> {
    io.areas
        .range(..=iova)
        .next_back()
        .map(|(_, a)| a)
        .filter(|a| a.last() >= iova)
}

/// Areas intersecting `[first, last]`, ascending.
fn areas_in(io: &Ioas, first: u64, last: u64) -> impl Iterator<Item = &Area> {
    let before = area_containing(io, first).filter(|a| a.iova < first);
    before
        .into_iter()
        .chain(io.areas.range(first..=last).map(|(_, a)| a))
}

/// io_pagetable.c, `__alloc_iova_check_range`: the aligned start of a
/// `length`-byte block in `[start, last]`, if there is room.
fn fit(start: u64, last: u64, length: u64, align: u64, page_offset: u64) -> Option<u64> {
    // "ALIGN_UP()" with overflow check, then "aligned_start |= page_offset"
    let aligned = start.checked_add(align - 1)? & !(align - 1);
    let aligned = aligned | page_offset;
    // "if (aligned_start >= last || last - aligned_start < length - 1) return false;"
    if aligned >= last || last - aligned < length - 1 {
        return None;
    }
    Some(aligned)
}

/// Sorts and merges overlapping or adjacent ranges (the spans an
/// `interval_tree_span_iter` reports as used).
pub(super) fn merge(mut v: Vec<IovaRange>) -> Vec<IovaRange> {
    v.sort_by_key(|r| r.first);
    let mut out: Vec<IovaRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(p) if r.first.0 <= p.last.0.saturating_add(1) => {
                p.last = p.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// Merged ranges clipped to `bounds`.
fn clip(v: Vec<IovaRange>, bounds: IovaRange) -> Vec<IovaRange> {
    v.into_iter()
        .filter(|r| r.overlaps(&bounds))
        .map(|r| IovaRange {
            first: r.first.max(bounds.first),
            last: r.last.min(bounds.last),
        })
        .collect()
}

/// The holes of merged `used` ranges inside `[first, last]`.
pub(super) fn holes(used: &[IovaRange], first: u64, last: u64) -> Vec<IovaRange> {
    let mut out = Vec::new();
    let mut cur = Some(first);
    for u in used {
        let Some(c) = cur else { break };
        if u.last.0 < c {
            continue;
        }
        if u.first.0 > last {
            break;
        }
        if u.first.0 > c {
            out.push(IovaRange {
                first: c.into(),
                last: (u.first.0 - 1).into(),
            });
        }
        cur = u.last.0.checked_add(1);
    }
    if let Some(c) = cur
        && c <= last
    {
        out.push(IovaRange {
            first: c.into(),
            last: last.into(),
        });
    }
    out
}
