//! An interval map over the 64-bit IOVA space with inclusive ends, so a
//! mapping may end at `u64::MAX`. Each span carries the GPA of its first
//! byte; splitting a span offsets the GPA of the part that is cut off.

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

/// Non-overlapping spans keyed by first IOVA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanMap {
    spans: BTreeMap<u64, Span>,
}

impl SpanMap {
    /// An empty map.
    pub fn new() -> Self {
        SpanMap::default()
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no spans.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// All spans, ascending.
    pub fn iter(&self) -> impl Iterator<Item = &Span> {
        self.spans.values()
    }

    /// The spans overlapping `[first, last]`, ascending, unclipped.
    pub fn overlapping(&self, first: u64, last: u64) -> Vec<Span> {
        let mut out = Vec::new();
        // The span starting at or before `first` may reach into the range.
        if let Some((_, s)) = self.spans.range(..=first).next_back()
            && s.last >= first
        {
            out.push(*s);
        }
        if first < u64::MAX {
            for (_, s) in self.spans.range(first + 1..) {
                if s.first > last {
                    break;
                }
                out.push(*s);
            }
        }
        out
    }

    /// Removes everything inside `[first, last]`, splitting spans that
    /// cross its ends.
    pub fn remove(&mut self, first: u64, last: u64) {
        for s in self.overlapping(first, last) {
            self.spans.remove(&s.first);
            if s.first < first
                && let Some(head) = s.clip(s.first, first - 1)
            {
                self.spans.insert(head.first, head);
            }
            if s.last > last
                && let Some(tail) = s.clip(last + 1, s.last)
            {
                self.spans.insert(tail.first, tail);
            }
        }
    }

    /// Inserts `span`, replacing whatever it overlaps.
    pub fn insert(&mut self, span: Span) {
        self.remove(span.first, span.last);
        self.spans.insert(span.first, span);
    }

    /// Removes exactly the span starting at `first`.
    pub fn take(&mut self, first: u64) -> Option<Span> {
        self.spans.remove(&first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn continues_into_needs_iova_gpa_and_access() {
        let a = span(0, 0xfff, 0x5000);
        assert!(a.continues_into(&span(0x1000, 0x1fff, 0x6000)));
        assert!(!a.continues_into(&span(0x1000, 0x1fff, 0x7000)));
        let mut ro = span(0x1000, 0x1fff, 0x6000);
        ro.access = Access::READ;
        assert!(!a.continues_into(&ro));
    }
}
