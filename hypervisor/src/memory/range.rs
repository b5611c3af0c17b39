//! Address ranges and fixed-capacity sets of them.
//!
//! Everything the layout planner and the frame allocator do reduces to set algebra on
//! half-open physical ranges. Half-open bounds make adjacency exact (`a.end == b.start`)
//! and let an empty range be an ordinary value instead of a special case. The set keeps
//! its ranges sorted and coalesced at all times, so "how many pieces" is a real measure
//! of fragmentation and the fixed capacity is spent only on genuinely separate runs.
//! Every mutation either succeeds completely or leaves the set untouched, so a `Full`
//! error never leaves half-applied state behind.

use core::fmt;

/// A half-open physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Range {
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
}

impl Range {
    /// The range `[start, end)`; an `end` below `start` gives the empty range at `start`.
    #[must_use]
    pub const fn new(start: u64, end: u64) -> Self {
        let end = if end < start { start } else { end };
        Self { start, end }
    }

    /// The range of `len` bytes at `base`, cut short at the top of the address space.
    #[must_use]
    pub const fn from_base_len(base: u64, len: u64) -> Self {
        Self::new(base, base.saturating_add(len))
    }

    /// Number of bytes in the range.
    #[must_use]
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no byte.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether `addr` lies in the range.
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether every byte of `other` lies in this range (always true for an empty `other`).
    #[must_use]
    pub const fn contains_range(&self, other: Range) -> bool {
        other.is_empty() || (self.start <= other.start && other.end <= self.end)
    }

    /// Whether the two ranges share at least one byte.
    #[must_use]
    pub const fn overlaps(&self, other: Range) -> bool {
        !self.is_empty() && !other.is_empty() && self.start < other.end && other.start < self.end
    }

    /// The bytes common to both ranges (empty when they do not overlap).
    #[must_use]
    pub fn intersection(&self, other: Range) -> Range {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        if start < end {
            Range { start, end }
        } else {
            Range { start, end: start }
        }
    }

    /// The largest range inside this one whose bounds are multiples of `align`
    /// (empty if there is none). An `align` of 0 is taken as 1.
    #[must_use]
    pub fn align_in(&self, align: u64) -> Range {
        let align = align.max(1);
        match self.start.checked_next_multiple_of(align) {
            Some(start) => Range::new(start, self.end - self.end % align),
            None => Range::new(self.end, self.end),
        }
    }

    /// The smallest range holding this one whose bounds are multiples of `align`; the end
    /// stops at the last multiple of `align` if rounding up would leave the address space.
    /// An empty range stays empty. An `align` of 0 is taken as 1.
    #[must_use]
    pub fn align_out(&self, align: u64) -> Range {
        let align = align.max(1);
        if self.is_empty() {
            return *self;
        }
        let start = self.start - self.start % align;
        let end = self
            .end
            .checked_next_multiple_of(align)
            .unwrap_or(u64::MAX - u64::MAX % align);
        Range::new(start, end)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// A [`RangeSet`] operation needed more separate ranges than the set can hold; the set
/// is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("range set capacity exhausted")
    }
}

/// A sorted, coalesced set of disjoint ranges with fixed capacity N.
///
/// Invariant: the ranges are non-empty, sorted by address, and neither overlap nor touch
/// (touching ranges are merged), so `len()` counts truly separate runs.
#[derive(Clone, PartialEq, Eq)]
pub struct RangeSet<const N: usize> {
    ranges: heapless::Vec<Range, N>,
}

impl<const N: usize> Default for RangeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Debug for RangeSet<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.ranges.iter()).finish()
    }
}

impl<const N: usize> RangeSet<N> {
    /// An empty set.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
        }
    }

    /// Adds every byte of `range`, merging with ranges it overlaps or touches.
    ///
    /// # Errors
    /// [`Full`] if the range is separate from all others and the set is at capacity.
    pub fn insert(&mut self, range: Range) -> Result<(), Full> {
        if range.is_empty() {
            return Ok(());
        }
        // Ranges [first, last) overlap or touch `range`.
        let first = self.ranges.partition_point(|r| r.end < range.start);
        let last = first + self.ranges[first..].partition_point(|r| r.start <= range.end);
        if first == last {
            return self.ranges.insert(first, range).map_err(|_| Full);
        }
        let merged = Range::new(
            range.start.min(self.ranges[first].start),
            range.end.max(self.ranges[last - 1].end),
        );
        self.replace(first, last, &[merged]);
        Ok(())
    }

    /// Removes every byte of `range`, trimming or splitting the ranges it overlaps.
    ///
    /// # Errors
    /// [`Full`] if `range` lies strictly inside one range (so it would split in two) and
    /// the set is at capacity.
    pub fn remove(&mut self, range: Range) -> Result<(), Full> {
        if range.is_empty() {
            return Ok(());
        }
        // Ranges [first, last) overlap `range`.
        let first = self.ranges.partition_point(|r| r.end <= range.start);
        let last = first + self.ranges[first..].partition_point(|r| r.start < range.end);
        if first == last {
            return Ok(());
        }
        let mut rest = [Range::default(); 2];
        let mut kept = 0;
        let head = self.ranges[first];
        if head.start < range.start {
            rest[kept] = Range::new(head.start, range.start);
            kept += 1;
        }
        let tail = self.ranges[last - 1];
        if range.end < tail.end {
            rest[kept] = Range::new(range.end, tail.end);
            kept += 1;
        }
        if self.ranges.len() - (last - first) + kept > N {
            return Err(Full);
        }
        self.replace(first, last, &rest[..kept]);
        Ok(())
    }

    /// Replaces `ranges[first..last]` with `with`; the caller has checked capacity.
    fn replace(&mut self, first: usize, last: usize, with: &[Range]) {
        let old_len = self.ranges.len();
        let new_len = old_len - (last - first) + with.len();
        if new_len > old_len {
            for _ in old_len..new_len {
                // Cannot fail: the caller checked `new_len <= N`.
                let _ = self.ranges.push(Range::default());
            }
            self.ranges.copy_within(last..old_len, first + with.len());
        } else {
            self.ranges.copy_within(last..old_len, first + with.len());
            self.ranges.truncate(new_len);
        }
        self.ranges[first..first + with.len()].copy_from_slice(with);
    }

    /// Total number of bytes in the set.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(Range::len).sum()
    }

    /// The ranges, lowest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range> + ExactSizeIterator + '_ {
        self.ranges.iter().copied()
    }

    /// The ranges as a slice, lowest first.
    #[must_use]
    pub fn as_slice(&self) -> &[Range] {
        &self.ranges
    }

    /// Number of separate ranges.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the set holds no byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Maximum number of separate ranges.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// Whether `addr` is in the set.
    #[must_use]
    pub fn contains(&self, addr: u64) -> bool {
        self.contains_range(Range::new(addr, addr.saturating_add(1)))
    }

    /// Whether every byte of `range` is in the set (always true for an empty range).
    /// Because touching ranges are merged, a range covered by the set lies inside a
    /// single element.
    #[must_use]
    pub fn contains_range(&self, range: Range) -> bool {
        if range.is_empty() {
            return true;
        }
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges.get(i).is_some_and(|r| r.contains_range(range))
    }

    /// Whether any byte of `range` is in the set.
    #[must_use]
    pub fn intersects(&self, range: Range) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges.get(i).is_some_and(|r| r.overlaps(range))
    }
}

impl<'a, const N: usize> IntoIterator for &'a RangeSet<N> {
    type Item = Range;
    type IntoIter = core::iter::Copied<core::slice::Iter<'a, Range>>;

    fn into_iter(self) -> Self::IntoIter {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end)
    }

    fn ranges<const N: usize>(set: &RangeSet<N>) -> Vec<(u64, u64)> {
        set.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn range_basics() {
        let a = r(0x1000, 0x3000);
        assert_eq!(a.len(), 0x2000);
        assert!(!a.is_empty());
        assert!(a.contains(0x1000) && a.contains(0x2fff) && !a.contains(0x3000));
        assert!(a.overlaps(r(0x2fff, 0x4000)));
        assert!(
            !a.overlaps(r(0x3000, 0x4000)),
            "touching is not overlapping"
        );
        assert!(
            !a.overlaps(r(0x2000, 0x2000)),
            "an empty range overlaps nothing"
        );
        assert!(a.contains_range(r(0x1000, 0x3000)) && !a.contains_range(r(0xfff, 0x2000)));
        assert_eq!(r(5, 3), r(5, 5), "inverted bounds give an empty range");
        assert!(r(5, 3).is_empty());
        assert_eq!(
            Range::from_base_len(u64::MAX - 1, 10),
            r(u64::MAX - 1, u64::MAX)
        );
        assert_eq!(a.intersection(r(0x2000, 0x9000)), r(0x2000, 0x3000));
        assert!(a.intersection(r(0x5000, 0x9000)).is_empty());
        assert_eq!(format!("{a}"), "[0x1000, 0x3000)");
    }

    #[test]
    fn range_alignment() {
        assert_eq!(r(0x1001, 0x5fff).align_in(0x1000), r(0x2000, 0x5000));
        assert_eq!(r(0x1000, 0x2000).align_in(0x1000), r(0x1000, 0x2000));
        assert!(r(0x1001, 0x1fff).align_in(0x1000).is_empty());
        assert!(r(u64::MAX - 5, u64::MAX).align_in(0x1000).is_empty());
        assert_eq!(r(0x1001, 0x5fff).align_out(0x1000), r(0x1000, 0x6000));
        assert_eq!(r(0x1000, 0x2000).align_out(0x1000), r(0x1000, 0x2000));
        assert_eq!(
            r(u64::MAX - 5, u64::MAX).align_out(0x1000),
            r(u64::MAX - 0xfff, u64::MAX - 0xfff),
            "rounding past the top stops at the last multiple"
        );
        assert!(r(0x1800, 0x1800).align_out(0x1000).is_empty());
        assert_eq!(r(3, 10).align_in(0), r(3, 10));
    }

    #[test]
    fn insert_keeps_sorted_and_merges() {
        let mut set = RangeSet::<8>::new();
        set.insert(r(0x5000, 0x6000)).unwrap();
        set.insert(r(0x1000, 0x2000)).unwrap();
        set.insert(r(0x9000, 0xa000)).unwrap();
        assert_eq!(
            ranges(&set),
            [(0x1000, 0x2000), (0x5000, 0x6000), (0x9000, 0xa000)]
        );
        // Touching merges.
        set.insert(r(0x2000, 0x3000)).unwrap();
        assert_eq!(
            ranges(&set),
            [(0x1000, 0x3000), (0x5000, 0x6000), (0x9000, 0xa000)]
        );
        // Overlapping several merges them all.
        set.insert(r(0x2800, 0x9800)).unwrap();
        assert_eq!(ranges(&set), [(0x1000, 0xa000)]);
        // Contained and empty ranges change nothing.
        set.insert(r(0x4000, 0x5000)).unwrap();
        set.insert(r(0x20000, 0x20000)).unwrap();
        assert_eq!(ranges(&set), [(0x1000, 0xa000)]);
        assert_eq!(set.total(), 0x9000);
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn remove_trims_and_splits() {
        let mut set = RangeSet::<8>::new();
        set.insert(r(0x1000, 0x9000)).unwrap();
        set.insert(r(0x10000, 0x20000)).unwrap();
        // Split.
        set.remove(r(0x3000, 0x4000)).unwrap();
        assert_eq!(
            ranges(&set),
            [(0x1000, 0x3000), (0x4000, 0x9000), (0x10000, 0x20000)]
        );
        // Trim a head and a tail, swallow one range whole.
        set.remove(r(0x2000, 0x11000)).unwrap();
        assert_eq!(ranges(&set), [(0x1000, 0x2000), (0x11000, 0x20000)]);
        // Removing what is not there is fine.
        set.remove(r(0x5000, 0x6000)).unwrap();
        set.remove(r(0x20000, 0x30000)).unwrap();
        assert_eq!(ranges(&set), [(0x1000, 0x2000), (0x11000, 0x20000)]);
        // Exact removal.
        set.remove(r(0x1000, 0x2000)).unwrap();
        assert_eq!(ranges(&set), [(0x11000, 0x20000)]);
        set.remove(r(0, u64::MAX)).unwrap();
        assert!(set.is_empty());
        assert_eq!(set.total(), 0);
    }

    #[test]
    fn capacity_is_enforced_without_damage() {
        let mut set = RangeSet::<2>::new();
        set.insert(r(0x1000, 0x2000)).unwrap();
        set.insert(r(0x5000, 0x8000)).unwrap();
        assert_eq!(set.insert(r(0x3000, 0x4000)), Err(Full));
        assert_eq!(
            set.remove(r(0x6000, 0x7000)),
            Err(Full),
            "a split needs room"
        );
        assert_eq!(ranges(&set), [(0x1000, 0x2000), (0x5000, 0x8000)]);
        // Merging and trimming need no room even when full.
        set.insert(r(0x2000, 0x5000)).unwrap();
        assert_eq!(ranges(&set), [(0x1000, 0x8000)]);
        set.insert(r(0x9000, 0xa000)).unwrap();
        set.remove(r(0x7000, 0x9800)).unwrap();
        assert_eq!(ranges(&set), [(0x1000, 0x7000), (0x9800, 0xa000)]);
        assert_eq!(set.capacity(), 2);
    }

    #[test]
    fn membership_queries() {
        let mut set = RangeSet::<4>::new();
        set.insert(r(0x1000, 0x3000)).unwrap();
        set.insert(r(0x3000, 0x4000)).unwrap();
        set.insert(r(0x8000, 0x9000)).unwrap();
        assert!(
            set.contains_range(r(0x1000, 0x4000)),
            "merged neighbours count as one"
        );
        assert!(!set.contains_range(r(0x3000, 0x8001)));
        assert!(set.contains_range(r(0x7000, 0x7000)));
        assert!(set.contains(0x8fff) && !set.contains(0x9000) && !set.contains(0));
        assert!(set.intersects(r(0x3fff, 0x8000)));
        assert!(!set.intersects(r(0x4000, 0x8000)));
        assert_eq!((&set).into_iter().count(), 2);
        assert_eq!(set.as_slice()[1], r(0x8000, 0x9000));
    }

    #[test]
    fn random_operations_match_a_bitmap() {
        // A small deterministic PRNG; compare the set against a per-unit model.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut set = RangeSet::<64>::new();
        let mut model = [false; 256];
        for _ in 0..4000 {
            let a = next() % 256;
            let b = (a + next() % 24).min(256);
            let insert = next() % 2 == 0;
            let result = if insert {
                set.insert(r(a, b))
            } else {
                set.remove(r(a, b))
            };
            if result.is_ok() {
                for unit in &mut model[a as usize..b as usize] {
                    *unit = insert;
                }
            }
            let mut expected = Vec::new();
            let mut i = 0;
            while i < 256 {
                if model[i] {
                    let s = i;
                    while i < 256 && model[i] {
                        i += 1;
                    }
                    expected.push((s as u64, i as u64));
                } else {
                    i += 1;
                }
            }
            assert_eq!(ranges(&set), expected);
        }
    }
}
