//! An interval map over the 64-bit IOVA space with inclusive ends, so a
//! mapping may end at `u64::MAX`. Each span carries the GPA of its first
//! byte; splitting a span offsets the GPA of the part that is cut off.
//!
//! The spans live in a [`SortedChunks`], a compact ordered set that other
//! per-mapping tables (virtio-iommu's domains) use too: a domain may hold
//! a million mappings, and each costs its record's size, not twice that.

use std::collections::BTreeMap;

use crate::types::Access;

/// A contiguous IOVA range mapped to contiguous GPAs with one permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First IOVA.
    pub first: u64,
    /// Last IOVA (inclusive).
    pub last: u64,
    /// GPA of `first`.
    pub gpa: u64,
    /// Permissions.
    pub access: Access,
}

impl Span {
    /// Length in bytes (saturating: a span of the whole space is
    /// `u64::MAX` long, one byte short, which no guest can map anyway).
    pub fn len(&self) -> u64 {
        (self.last - self.first).saturating_add(1)
    }

    /// Always false: a span holds at least one byte (its ends are
    /// inclusive).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The part of this span inside `[first, last]`, if any.
    pub fn clip(&self, first: u64, last: u64) -> Option<Span> {
        let f = self.first.max(first);
        let l = self.last.min(last);
        (f <= l).then(|| Span {
            first: f,
            last: l,
            gpa: self.gpa.wrapping_add(f - self.first),
            access: self.access,
        })
    }

    /// Whether `next` continues this span in both IOVA and GPA with the same
    /// permissions.
    pub fn continues_into(&self, next: &Span) -> bool {
        self.last.checked_add(1) == Some(next.first)
            && self.gpa.checked_add(self.len()) == Some(next.gpa)
            && self.access == next.access
    }
}

/// An element of a [`SortedChunks`]: ordered by a 64-bit key it carries.
pub trait Keyed: Copy {
    /// The key (for a span or a mapping: its first IOVA).
    fn key(&self) -> u64;
}

impl Keyed for Span {
    fn key(&self) -> u64 {
        self.first
    }
}

/// Most elements of one chunk: a chunk is a sorted array, so an insert
/// moves half a chunk on average; 128 keeps that a few hundred bytes
/// while the per-chunk overhead (an ordered-map entry and a vector
/// header) stays under a byte per element.
const CHUNK_MAX: usize = 128;

/// Elements a full chunk grows by: the most capacity a chunk holds
/// unused, so memory stays within a few percent of the elements' size.
const CHUNK_GROW: usize = 8;

/// A chunk smaller than this after a removal is merged into a neighbour.
const CHUNK_MIN: usize = CHUNK_MAX / 4;

/// Elements with distinct keys, in key order: an ordered map from each
/// chunk's first key to a sorted array of up to `CHUNK_MAX` elements.
/// Compared with a `BTreeMap<u64, T>` it stores each element once (no
/// separate key, no node half empty): about `size_of::<T>()` bytes per
/// element whatever the insertion order, against 1.5 to 2 times that. A
/// chunk filled at one end (ascending or descending inserts, as DMA
/// allocators do) is left full; other splits are halves. Lookups are
/// logarithmic; an insert or removal also moves up to a chunk.
#[derive(Clone)]
pub struct SortedChunks<T> {
    chunks: BTreeMap<u64, Vec<T>>,
    len: usize,
}

impl<T: Keyed> SortedChunks<T> {
    /// An empty set.
    pub const fn new() -> Self {
        SortedChunks {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All elements, ascending.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.chunks.values().flat_map(|c| c.iter())
    }

    /// The key of the chunk that holds (or would hold) `key`.
    fn chunk_of(&self, key: u64) -> Option<u64> {
        self.chunks
            .range(..=key)
            .next_back()
            .or_else(|| self.chunks.iter().next())
            .map(|(k, _)| *k)
    }

    /// The element with the greatest key at or below `key`.
    pub fn at_or_before(&self, key: u64) -> Option<&T> {
        let (_, c) = self.chunks.range(..=key).next_back()?;
        let i = c.partition_point(|e| e.key() <= key);
        c.get(i.checked_sub(1)?)
    }

    /// The element of key `key`.
    pub fn get(&self, key: u64) -> Option<&T> {
        self.at_or_before(key).filter(|e| e.key() == key)
    }

    /// The elements with keys in `[first, last]`, ascending.
    pub fn range(&self, first: u64, last: u64) -> impl Iterator<Item = &T> {
        let start = self.chunk_of(first).unwrap_or(first);
        let mut chunks = self.chunks.range(start..);
        let head = chunks.next().map_or(&[][..], |(_, c)| {
            &c[c.partition_point(|e| e.key() < first)..]
        });
        head.iter()
            .chain(chunks.flat_map(|(_, c)| c.iter()))
            .take_while(move |e| e.key() <= last)
    }

    /// Inserts `elem`; returns the element of the same key it replaced.
    pub fn insert(&mut self, elem: T) -> Option<T> {
        let key = elem.key();
        let Some(ck) = self.chunk_of(key) else {
            self.chunks.insert(key, chunk_of_one(elem));
            self.len = 1;
            return None;
        };
        let chunk = self.chunks.get_mut(&ck)?;
        let i = chunk.partition_point(|e| e.key() < key);
        if let Some(e) = chunk.get_mut(i).filter(|e| e.key() == key) {
            return Some(std::mem::replace(e, elem));
        }
        if chunk.len() == chunk.capacity() {
            chunk.reserve_exact(CHUNK_GROW);
        }
        chunk.insert(i, elem);
        self.len += 1;
        let full = chunk.len() > CHUNK_MAX;
        let ck = if i == 0 { self.rekey(ck) } else { ck };
        if full {
            self.split(ck, i);
        }
        None
    }

    /// Removes the element of key `key`.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        let (&ck, chunk) = self.chunks.range_mut(..=key).next_back()?;
        let i = chunk.partition_point(|e| e.key() < key);
        if chunk.get(i).is_none_or(|e| e.key() != key) {
            return None;
        }
        let elem = chunk.remove(i);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(&ck);
            return Some(elem);
        }
        if chunk.capacity() - chunk.len() > 2 * CHUNK_GROW {
            chunk.shrink_to(chunk.len() + CHUNK_GROW);
        }
        let small = chunk.len() < CHUNK_MIN;
        let ck = if i == 0 { self.rekey(ck) } else { ck };
        if small {
            self.merge(ck);
        }
        Some(elem)
    }

    /// Files the chunk at `ck` under its (new) first key; returns it.
    fn rekey(&mut self, ck: u64) -> u64 {
        let Some(chunk) = self.chunks.remove(&ck) else {
            return ck;
        };
        let key = chunk.first().map_or(ck, T::key);
        self.chunks.insert(key, chunk);
        key
    }

    /// Splits the over-full chunk at `ck`, into which an element went at
    /// index `at`: the new element alone when it went at either end (the
    /// rest stays a full chunk), else two halves.
    fn split(&mut self, ck: u64, at: usize) {
        let Some(chunk) = self.chunks.get_mut(&ck) else {
            return;
        };
        let mid = match at {
            0 => 1,
            i if i + 1 == chunk.len() => i,
            _ => chunk.len() / 2,
        };
        let mut tail = Vec::with_capacity(chunk.len() - mid + CHUNK_GROW);
        tail.extend(chunk.drain(mid..));
        chunk.shrink_to(chunk.len() + CHUNK_GROW);
        if let Some(first) = tail.first() {
            self.chunks.insert(first.key(), tail);
        }
    }

    /// Merges the small chunk at `ck` into its previous (else next)
    /// neighbour when the two fit in one chunk.
    fn merge(&mut self, ck: u64) {
        let Some(len) = self.chunks.get(&ck).map(Vec::len) else {
            return;
        };
        let prev = self
            .chunks
            .range(..ck)
            .next_back()
            .map(|(k, c)| (*k, c.len()));
        let next = self
            .chunks
            .range(ck + 1..)
            .next()
            .map(|(k, c)| (*k, c.len()));
        let (into, from) = match (prev, next) {
            (Some((p, n)), _) if n + len <= CHUNK_MAX => (p, ck),
            (_, Some((nk, n))) if n + len <= CHUNK_MAX => (ck, nk),
            _ => return,
        };
        let Some(moved) = self.chunks.remove(&from) else {
            return;
        };
        if let Some(dest) = self.chunks.get_mut(&into) {
            dest.reserve_exact(moved.len());
            dest.extend(moved);
        }
    }
}

impl<T: Keyed> Default for SortedChunks<T> {
    fn default() -> Self {
        SortedChunks::new()
    }
}

fn chunk_of_one<T>(elem: T) -> Vec<T> {
    let mut v = Vec::with_capacity(CHUNK_GROW);
    v.push(elem);
    v
}

/// Equal when they hold the same elements, however chunked.
impl<T: Keyed + PartialEq> PartialEq for SortedChunks<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<T: Keyed + Eq> Eq for SortedChunks<T> {}

impl<T: Keyed + std::fmt::Debug> std::fmt::Debug for SortedChunks<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// How a [`SpanMap`] stores a span: [`Span`] itself, or a smaller record
/// ([`PackedSpan`]) where nothing borrows the spans.
pub trait SpanRecord: Keyed + From<Span> {
    /// The span.
    fn span(&self) -> Span;
}

impl SpanRecord for Span {
    fn span(&self) -> Span {
        *self
    }
}

/// A [`Span`] in 25 bytes instead of 32 (no padding after the access
/// byte): the engine's host runs, which are only ever copied out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct PackedSpan {
    first: u64,
    last: u64,
    gpa: u64,
    access: u8,
}

impl From<Span> for PackedSpan {
    fn from(s: Span) -> Self {
        PackedSpan {
            first: s.first,
            last: s.last,
            gpa: s.gpa,
            access: s.access.bits(),
        }
    }
}

impl Keyed for PackedSpan {
    fn key(&self) -> u64 {
        self.first
    }
}

impl SpanRecord for PackedSpan {
    fn span(&self) -> Span {
        Span {
            first: self.first,
            last: self.last,
            gpa: self.gpa,
            access: Access::from_bits_retain(self.access),
        }
    }
}

/// Non-overlapping spans keyed by first IOVA, stored as `R`.
#[derive(Clone)]
pub struct SpanMap<R = Span> {
    spans: SortedChunks<R>,
}

impl<R: SpanRecord> Default for SpanMap<R> {
    fn default() -> Self {
        SpanMap {
            spans: SortedChunks::new(),
        }
    }
}

impl<R: SpanRecord + PartialEq> PartialEq for SpanMap<R> {
    fn eq(&self, other: &Self) -> bool {
        self.spans == other.spans
    }
}

impl<R: SpanRecord + Eq> Eq for SpanMap<R> {}

impl<R: SpanRecord + std::fmt::Debug> std::fmt::Debug for SpanMap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanMap")
            .field("spans", &self.spans)
            .finish()
    }
}

impl<R: SpanRecord> SpanMap<R> {
    /// Number of spans.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no spans.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// All spans, ascending, by value.
    pub fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        self.spans.iter().map(R::span)
    }

    /// The spans overlapping `[first, last]`, ascending, unclipped.
    pub fn overlapping(&self, first: u64, last: u64) -> Vec<Span> {
        let mut out = Vec::new();
        // The span starting at or before `first` may reach into the range.
        if let Some(s) = self.spans.at_or_before(first).map(R::span)
            && s.last >= first
        {
            out.push(s);
        }
        if first < u64::MAX {
            out.extend(self.spans.range(first + 1, last).map(R::span));
        }
        out
    }

    /// Removes everything inside `[first, last]`, splitting spans that
    /// cross its ends.
    pub fn remove(&mut self, first: u64, last: u64) {
        for s in self.overlapping(first, last) {
            self.spans.remove(s.first);
            if s.first < first
                && let Some(head) = s.clip(s.first, first - 1)
            {
                self.spans.insert(head.into());
            }
            if s.last > last
                && let Some(tail) = s.clip(last + 1, s.last)
            {
                self.spans.insert(tail.into());
            }
        }
    }

    /// Inserts `span`, replacing whatever it overlaps.
    pub fn insert(&mut self, span: Span) {
        self.remove(span.first, span.last);
        self.spans.insert(span.into());
    }

    /// Removes exactly the span starting at `first`.
    pub fn take(&mut self, first: u64) -> Option<Span> {
        self.spans.remove(first).map(|r| r.span())
    }
}

impl SpanMap<Span> {
    /// An empty map.
    pub const fn new() -> Self {
        SpanMap {
            spans: SortedChunks::new(),
        }
    }

    /// All spans, ascending.
    pub fn iter(&self) -> impl Iterator<Item = &Span> {
        self.spans.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn span(first: u64, last: u64, gpa: u64) -> Span {
        Span {
            first,
            last,
            gpa,
            access: Access::RW,
        }
    }

    #[test]
    fn remove_middle_splits_and_offsets_gpa() {
        let mut m = SpanMap::new();
        m.insert(span(0x1000, 0x4fff, 0x10_0000));
        m.remove(0x2000, 0x2fff);
        let v: Vec<_> = m.iter().copied().collect();
        assert_eq!(
            v,
            vec![
                span(0x1000, 0x1fff, 0x10_0000),
                span(0x3000, 0x4fff, 0x10_2000)
            ]
        );
    }

    #[test]
    fn insert_over_two_spans_replaces_the_overlap() {
        let mut m = SpanMap::new();
        m.insert(span(0x0, 0xfff, 0));
        m.insert(span(0x2000, 0x2fff, 0x2000));
        m.insert(span(0x800, 0x27ff, 0x9000));
        let v: Vec<_> = m.iter().copied().collect();
        assert_eq!(
            v,
            vec![
                span(0x0, 0x7ff, 0),
                span(0x800, 0x27ff, 0x9000),
                span(0x2800, 0x2fff, 0x2800)
            ]
        );
    }

    #[test]
    fn top_of_address_space_is_representable() {
        let mut m = SpanMap::new();
        m.insert(span(u64::MAX - 0xfff, u64::MAX, 0));
        assert_eq!(m.overlapping(u64::MAX, u64::MAX).len(), 1);
        m.remove(0, u64::MAX);
        assert!(m.is_empty());
    }

    #[test]
    fn packed_span_roundtrips() {
        let s = Span {
            first: 0x1000,
            last: 0x1fff,
            gpa: 0xfee0_0000,
            access: Access::READ,
        };
        assert_eq!(PackedSpan::from(s).span(), s);
        assert_eq!(size_of::<PackedSpan>(), 25);
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Elem(u64, u32);

    impl Keyed for Elem {
        fn key(&self) -> u64 {
            self.0
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Keys from a small space so that replaces and hits are common;
        // runs of ascending keys fill chunks at their ends.
        prop_oneof![
            3 => (0..2000u64, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            1 => (0..2000u64).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn sorted_chunks_behave_as_an_ordered_map(
            ops in proptest::collection::vec(op(), 0..1500),
            probes in proptest::collection::vec((0..2100u64, 0..2100u64), 8),
        ) {
            let mut m = SortedChunks::new();
            let mut r = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(
                        m.insert(Elem(k, v)),
                        r.insert(k, Elem(k, v))
                    ),
                    Op::Remove(k) => prop_assert_eq!(m.remove(k), r.remove(&k)),
                }
            }
            prop_assert_eq!(m.len(), r.len());
            prop_assert!(m.iter().eq(r.values()));
            for (a, b) in probes {
                let (lo, hi) = (a.min(b), a.max(b));
                prop_assert_eq!(m.at_or_before(a), r.range(..=a).next_back().map(|(_, e)| e));
                prop_assert_eq!(m.get(a), r.get(&a));
                prop_assert!(m.range(lo, hi).eq(r.range(lo..=hi).map(|(_, e)| e)));
            }
            // Chunk invariants: keyed by their first element, sorted,
            // never empty nor over full.
            for (k, c) in &m.chunks {
                prop_assert!(!c.is_empty() && c.len() <= CHUNK_MAX);
                prop_assert_eq!(c[0].key(), *k);
                prop_assert!(c.windows(2).all(|w| w[0].key() < w[1].key()));
            }
        }
    }

    #[test]
    fn ascending_inserts_leave_full_chunks() {
        let mut m = SortedChunks::new();
        for k in 0..10 * CHUNK_MAX as u64 {
            m.insert(Elem(k, 0));
        }
        assert_eq!(m.chunks.len(), 10);
        let mut m = SortedChunks::new();
        for k in (0..10 * CHUNK_MAX as u64).rev() {
            m.insert(Elem(k, 0));
        }
        assert_eq!(m.chunks.len(), 10);
    }

    #[test]
    fn continues_into_needs_iova_gpa_and_access() {
        let a = span(0, 0xfff, 0x5000);
        assert!(a.continues_into(&span(0x1000, 0x1fff, 0x6000)));
        assert!(!a.continues_into(&span(0x1000, 0x1fff, 0x7000)));
        let mut ro = span(0x1000, 0x1fff, 0x6000);
        ro.access = Access::READ;
        assert!(!a.continues_into(&ro));
    }
}
