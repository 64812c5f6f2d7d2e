//! What a shadowing layer reads (caching mode, VT-d 6.1): the mappings a
//! requester's tables hold in an address range, enumerated table by table
//! instead of page by page, so that re-reading a 1 GiB invalidation range
//! or a whole domain after a domain-selective invalidation costs what the
//! tables hold, not what the address space spans.
//!
//! Enumeration reads tables only: it sets no accessed/dirty flags and
//! records no faults (entries with reserved bits set are skipped, as a DMA
//! through them would fault). Its work is bounded by an entry budget.

use crate::options::{SPS_1G, SPS_2M};
use nesting_core::bits::Field;
use nesting_core::types::Access;
use vm_memory::GuestMemory;

use crate::fault::FaultReason;
use crate::tables::{above_haw, read_qwords};
use crate::walk::{FsParams, SsParams, fl, sl};

/// Most table entries one enumeration reads: 2^20 entries (8 MiB of
/// tables, 2048 full page-table pages) bounds the work a guest can cause
/// per invalidation; a larger enumeration reports `complete: false` and
/// the caller continues from where it stopped.
pub const MAX_ENTRIES_PER_ENUMERATION: usize = 1 << 20;

/// Fewest entries one enumeration reads (one per level, plus one), so
/// that every call makes progress.
pub const MIN_BUDGET: usize = 6;

/// One mapping: a page of `1 << shift` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Input address of the page.
    pub iova: u64,
    /// Output (guest physical) address of the page.
    pub gpa: u64,
    /// log2 of the page size.
    pub shift: u32,
    /// READ/WRITE granted to an untranslated, user-mode request.
    pub perms: Access,
}

/// What a requester's DMA sees in a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableView {
    /// Pass-through: every address maps to itself.
    Identity,
    /// Every DMA faults with this reason before reaching page tables.
    Blocked(FaultReason),
    /// Nested translation: mirror through a nested HWPT, not a shadow.
    Nested,
    /// The mappings found.
    Mappings {
        /// Pages overlapping the range, in address order.
        list: Vec<Mapping>,
        /// False if the entry budget ran out; `resume` is where to go on.
        complete: bool,
        /// First address not enumerated when incomplete.
        resume: u64,
    },
}

const fn level_shift(level: u32) -> u32 {
    12 + 9 * (level - 1)
}

/// The table format being enumerated.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// Second-stage (VT-d "Second-Stage Paging Entries").
    Second(SsParams),
    /// First-stage (VT-d "First-Stage Paging Entries"), as seen by user-mode requests.
    First(FsParams),
}

impl Format {
    fn root(&self) -> u64 {
        match self {
            Format::Second(p) => p.root,
            Format::First(p) => p.root,
        }
    }

    fn levels(&self) -> u32 {
        match self {
            Format::Second(p) => p.levels,
            Format::First(p) => p.levels,
        }
    }

    /// Decodes one entry: `None` if absent or unusable; otherwise its
    /// permissions and whether it is a leaf.
    fn decode(&self, e: u64, level: u32) -> Option<(Access, bool)> {
        match self {
            Format::Second(p) => {
                let mut perms = Access::empty();
                perms.set(Access::READ, sl::R.is_set(e));
                perms.set(Access::WRITE, sl::W.is_set(e));
                let leaf = level == 1 || sl::PS.is_set(e);
                let big_ok = match level {
                    2 => p.sps & SPS_2M != 0,
                    3 => p.sps & SPS_1G != 0,
                    _ => level == 1,
                };
                let mut rsvd = above_haw(p.haw) | sl::SNP.mask();
                if leaf && level > 1 {
                    rsvd |= Field::bits(level_shift(level) - 1, 12).mask();
                }
                let ok = !perms.is_empty() && e & rsvd == 0 && (!leaf || big_ok);
                ok.then_some((perms, leaf))
            }
            Format::First(p) => {
                let leaf = level == 1 || fl::PS.is_set(e);
                let big_ok = level == 1 || level == 2 || (level == 3 && p.fs1gp);
                let mut rsvd = above_haw(p.haw);
                if leaf && level > 1 {
                    rsvd |= Field::bits(level_shift(level) - 1, 13).mask();
                }
                // User-mode requests need U/S at every level.
                let ok = fl::P.is_set(e) && fl::US.is_set(e) && e & rsvd == 0 && (!leaf || big_ok);
                let mut perms = Access::READ;
                perms.set(Access::WRITE, fl::RW.is_set(e));
                ok.then_some((perms, leaf))
            }
        }
    }
}

struct Walker<'m, M: ?Sized> {
    mem: &'m M,
    fmt: Format,
    budget: usize,
    out: Vec<Mapping>,
    resume: Option<u64>,
}

impl<M: GuestMemory + ?Sized> Walker<'_, M> {
    /// Visits the entries of `table` (at `level`, covering from `base`)
    /// that overlap `[first, last]`. Recursion depth is the level count
    /// (at most five).
    fn visit(&mut self, table: u64, level: u32, base: u64, first: u64, last: u64, perms: Access) {
        let shift = level_shift(level);
        let span_mask = (1u64 << shift) - 1;
        let lo = (first.max(base) - base) >> shift;
        let hi = ((last - base) >> shift).min(511);
        for idx in lo..=hi {
            let entry_base = base + (idx << shift);
            if self.resume.is_some() {
                return;
            }
            if self.budget == 0 {
                self.resume = Some(entry_base.max(first));
                return;
            }
            self.budget -= 1;
            let Ok([e]) = read_qwords::<M, 1>(self.mem, table + 8 * idx) else {
                continue;
            };
            let Some((p, leaf)) = self.fmt.decode(e, level) else {
                continue;
            };
            let perms = perms & p;
            if leaf {
                if !perms.is_empty() {
                    self.out.push(Mapping {
                        iova: entry_base,
                        gpa: e & Field::bits(51, shift).mask(),
                        shift,
                        perms,
                    });
                }
            } else if level > 1 {
                let next = e & Field::bits(51, 12).mask();
                let sub_last = last.min(entry_base | span_mask);
                self.visit(next, level - 1, entry_base, first, sub_last, perms);
            }
        }
    }
}

/// Enumerates the mappings of `fmt` overlapping `[first, last]` (input
/// addresses below the format's address width; first-stage addresses in
/// the lower canonical half), reading at most `budget` entries.
pub fn enumerate<M: GuestMemory + ?Sized>(
    mem: &M,
    fmt: Format,
    first: u64,
    last: u64,
    budget: usize,
) -> TableView {
    let levels = fmt.levels().clamp(1, 5);
    let width = level_shift(levels) + 9;
    let top = (1u64 << width.min(63)) - 1;
    let last = match fmt {
        // First stage: the lower half only (bit width-1 clear).
        Format::First(_) => last.min(top >> 1),
        Format::Second(_) => last.min(top),
    };
    let mut w = Walker {
        mem,
        fmt,
        // At least one entry per level plus one: every call then reaches
        // a leaf-level entry, so resuming always makes progress.
        budget: budget.clamp(MIN_BUDGET, MAX_ENTRIES_PER_ENUMERATION),
        out: Vec::new(),
        resume: None,
    };
    if first <= last {
        w.visit(
            fmt.root() & Field::bits(51, 12).mask(),
            levels,
            0,
            first,
            last,
            Access::READ | Access::WRITE,
        );
    }
    TableView::Mappings {
        list: w.out,
        complete: w.resume.is_none(),
        resume: w.resume.unwrap_or(0),
    }
}
