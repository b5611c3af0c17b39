//! The physical frame allocator behind guest RAM and page tables.
//!
//! It hands out page-granular runs rather than single frames because guests want large
//! contiguous blocks and page-table pages are the only single-frame users. First fit at
//! the lowest address keeps the high memory in big pieces for later, larger requests.
//! The allocator remembers which memory it was given as well as which is currently free,
//! so a stray `free` of hypervisor memory or a double free is caught at the call instead
//! of turning into two owners of the same frame later.

use core::fmt;

use super::{Full, Range, RangeSet, PAGE_SIZE};

/// Why memory could not be given to or returned to a [`FrameAllocator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The range is empty or its bounds are not page aligned.
    Misaligned(Range),
    /// Part of the range was never managed by this allocator.
    NotManaged(Range),
    /// Part of the range is already free.
    DoubleFree(Range),
    /// Part of the range is already managed (on [`FrameAllocator::add`]).
    AlreadyManaged(Range),
    /// Part of the range is not free (on [`FrameAllocator::take`]).
    NotFree(Range),
    /// Recording the range needs more separate ranges than the allocator can hold.
    Full,
}

impl From<Full> for FrameError {
    fn from(_: Full) -> Self {
        Self::Full
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned(r) => write!(f, "{r} is empty or not page aligned"),
            Self::NotManaged(r) => write!(f, "{r} does not belong to this allocator"),
            Self::DoubleFree(r) => write!(f, "{r} is already free"),
            Self::NotFree(r) => write!(f, "{r} is not free"),
            Self::AlreadyManaged(r) => write!(f, "{r} is already managed"),
            Self::Full => f.write_str("too many separate free ranges"),
        }
    }
}

/// First-fit page allocator over up to `N` separate ranges.
#[derive(Clone, Debug, Default)]
pub struct FrameAllocator<const N: usize> {
    /// Every byte this allocator was ever given.
    managed: RangeSet<N>,
    /// The part of `managed` not currently handed out.
    free: RangeSet<N>,
}

impl<const N: usize> FrameAllocator<N> {
    /// An allocator with no memory.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            managed: RangeSet::new(),
            free: RangeSet::new(),
        }
    }

    /// An allocator owning, and with free, exactly the page-aligned parts of `set`.
    ///
    /// # Errors
    /// [`Full`] cannot happen in practice (aligning never adds ranges) but is kept honest.
    pub fn from_free(set: &RangeSet<N>) -> Result<Self, Full> {
        let mut free = RangeSet::new();
        for range in set {
            free.insert(range.align_in(PAGE_SIZE))?;
        }
        Ok(Self {
            managed: free.clone(),
            free,
        })
    }

    /// Gives the page-aligned part of `range` to the allocator, as free memory.
    ///
    /// # Errors
    /// [`FrameError::AlreadyManaged`] if it overlaps memory the allocator already has,
    /// [`FrameError::Full`] if there is no room to record it.
    pub fn add(&mut self, range: Range) -> Result<(), FrameError> {
        let range = range.align_in(PAGE_SIZE);
        if self.managed.intersects(range) {
            return Err(FrameError::AlreadyManaged(range));
        }
        let before = self.managed.clone();
        self.managed.insert(range)?;
        if let Err(full) = self.free.insert(range) {
            self.managed = before;
            return Err(full.into());
        }
        Ok(())
    }

    /// Allocates `size` bytes (rounded up to whole pages) aligned to `align` (at least a
    /// page; must be a power of two) at the lowest address that fits.
    #[must_use]
    pub fn allocate(&mut self, size: u64, align: u64) -> Option<Range> {
        self.allocate_below(size, align, u64::MAX)
    }

    /// Like [`allocate`](Self::allocate), but the whole block ends at or below `limit`.
    #[must_use]
    pub fn allocate_below(&mut self, size: u64, align: u64, limit: u64) -> Option<Range> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let size = size.checked_next_multiple_of(PAGE_SIZE)?;
        let align = align.max(PAGE_SIZE);
        let mut i = 0;
        while i < self.free.len() {
            let hole = self.free.as_slice()[i];
            i += 1;
            let Some(start) = hole.start.checked_next_multiple_of(align) else {
                continue;
            };
            let Some(end) = start.checked_add(size) else {
                continue;
            };
            if end > limit {
                // Holes are sorted: every later candidate starts even higher.
                return None;
            }
            if end <= hole.end {
                let block = Range::new(start, end);
                // Carving from the middle of a hole needs one more slot; if the set is
                // full, a later hole might still be taken from its start.
                if self.free.remove(block).is_ok() {
                    return Some(block);
                }
            }
        }
        None
    }

    /// Takes exactly `range` out of the free pool: for memory already in use when the
    /// allocator is rebuilt (a recovery boot re-adopting the VMs' RAM).
    ///
    /// # Errors
    /// [`FrameError::Misaligned`] for an empty or unaligned range, [`FrameError::NotFree`]
    /// if any of it is not free, [`FrameError::Full`] if splitting a hole needs a slot
    /// the pool does not have. On error nothing changes.
    pub fn take(&mut self, range: Range) -> Result<(), FrameError> {
        if range.is_empty()
            || !range.start.is_multiple_of(PAGE_SIZE)
            || !range.end.is_multiple_of(PAGE_SIZE)
        {
            return Err(FrameError::Misaligned(range));
        }
        if !self.free.contains_range(range) {
            return Err(FrameError::NotFree(range));
        }
        self.free.remove(range)?;
        Ok(())
    }

    /// Returns `range` to the free pool.
    ///
    /// # Errors
    /// [`FrameError::Misaligned`] for an empty or unaligned range,
    /// [`FrameError::NotManaged`] for memory that never belonged to this allocator,
    /// [`FrameError::DoubleFree`] if any of it is already free, [`FrameError::Full`] if
    /// the free pool cannot record it. On error nothing changes.
    pub fn free(&mut self, range: Range) -> Result<(), FrameError> {
        if range.is_empty()
            || !range.start.is_multiple_of(PAGE_SIZE)
            || !range.end.is_multiple_of(PAGE_SIZE)
        {
            return Err(FrameError::Misaligned(range));
        }
        if !self.managed.contains_range(range) {
            return Err(FrameError::NotManaged(range));
        }
        if self.free.intersects(range) {
            return Err(FrameError::DoubleFree(range));
        }
        self.free.insert(range)?;
        Ok(())
    }

    /// Bytes currently free.
    #[must_use]
    pub fn free_bytes(&self) -> u64 {
        self.free.total()
    }

    /// Bytes in the largest free range (the biggest block `allocate` can satisfy with
    /// page alignment).
    #[must_use]
    pub fn largest_free(&self) -> u64 {
        self.free.iter().map(|r| r.len()).max().unwrap_or(0)
    }

    /// Bytes this allocator manages, free or not.
    #[must_use]
    pub fn managed_bytes(&self) -> u64 {
        self.managed.total()
    }

    /// The free ranges, lowest first.
    #[must_use]
    pub fn free_ranges(&self) -> &RangeSet<N> {
        &self.free
    }

    /// Every range this allocator manages, lowest first.
    #[must_use]
    pub fn managed_ranges(&self) -> &RangeSet<N> {
        &self.managed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end)
    }

    fn allocator(ranges: &[(u64, u64)]) -> FrameAllocator<32> {
        let mut a = FrameAllocator::new();
        for &(s, e) in ranges {
            a.add(r(s, e)).unwrap();
        }
        a
    }

    #[test]
    fn first_fit_lowest_address_and_page_rounding() {
        let mut a = allocator(&[(0x10_0000, 0x10_3000), (0x20_0000, 0x40_0000)]);
        assert_eq!(
            a.allocate(1, 1),
            Some(r(0x10_0000, 0x10_1000)),
            "rounded to a page"
        );
        assert_eq!(a.allocate(0x2000, PAGE_SIZE), Some(r(0x10_1000, 0x10_3000)));
        // The first range is exhausted; the next request comes from the second.
        assert_eq!(a.allocate(0x1001, PAGE_SIZE), Some(r(0x20_0000, 0x20_2000)));
        assert_eq!(
            a.allocate(0, PAGE_SIZE),
            None,
            "zero-sized requests are refused"
        );
    }

    #[test]
    fn alignment_is_honoured() {
        let mut a = allocator(&[(0x1000, 0x100_0000)]);
        let big = a.allocate(0x1000, 2 * MIB).unwrap();
        assert_eq!(big, r(2 * MIB, 2 * MIB + 0x1000));
        // The gap below the aligned block is still free and used first.
        assert_eq!(a.allocate(0x1000, PAGE_SIZE), Some(r(0x1000, 0x2000)));
        // Alignments below a page are raised to a page; non powers of two are refused.
        assert_eq!(a.allocate(0x1000, 16), Some(r(0x2000, 0x3000)));
        assert_eq!(a.allocate(0x1000, 3 * PAGE_SIZE), None);
        for _ in 0..20 {
            let b = a.allocate(0x5000, 0x10000).unwrap();
            assert_eq!(b.start % 0x10000, 0);
            assert_eq!(b.len(), 0x5000);
        }
    }

    #[test]
    fn allocate_below_respects_the_limit() {
        let mut a = allocator(&[(0x10_0000, 0x20_0000), (0x1_0000_0000, 0x2_0000_0000)]);
        assert_eq!(a.allocate_below(2 * MIB, PAGE_SIZE, 0x1_0000_0000), None);
        assert_eq!(
            a.allocate_below(MIB, PAGE_SIZE, 0x20_0000),
            Some(r(0x10_0000, 0x20_0000))
        );
        assert_eq!(
            a.allocate(2 * MIB, PAGE_SIZE),
            Some(r(0x1_0000_0000, 0x1_0020_0000))
        );
    }

    #[test]
    fn exhaustion() {
        let mut a = allocator(&[(0, 0x4000)]);
        assert!(a.allocate(0x5000, PAGE_SIZE).is_none());
        for i in 0..4 {
            assert_eq!(
                a.allocate(PAGE_SIZE, PAGE_SIZE),
                Some(r(i * 0x1000, (i + 1) * 0x1000))
            );
        }
        assert_eq!(a.allocate(PAGE_SIZE, PAGE_SIZE), None);
        assert_eq!(a.free_bytes(), 0);
        assert_eq!(a.largest_free(), 0);
        assert_eq!(a.managed_bytes(), 0x4000);
        assert_eq!(
            a.allocate(u64::MAX, PAGE_SIZE),
            None,
            "no overflow on huge sizes"
        );
    }

    #[test]
    fn free_coalesces() {
        let mut a = allocator(&[(0x1000, 0x9000)]);
        let x = a.allocate(0x2000, PAGE_SIZE).unwrap();
        let y = a.allocate(0x2000, PAGE_SIZE).unwrap();
        let z = a.allocate(0x2000, PAGE_SIZE).unwrap();
        assert_eq!(a.free_bytes(), 0x2000);
        a.free(y).unwrap();
        assert_eq!(a.free_ranges().len(), 2);
        assert_eq!(a.largest_free(), 0x2000);
        a.free(x).unwrap();
        a.free(z).unwrap();
        assert_eq!(a.free_ranges().as_slice(), &[r(0x1000, 0x9000)]);
        assert_eq!(a.largest_free(), 0x8000);
        assert_eq!(a.allocate(0x8000, PAGE_SIZE), Some(r(0x1000, 0x9000)));
    }

    #[test]
    fn bad_frees_are_rejected_without_change() {
        let mut a = allocator(&[(0x1000, 0x9000)]);
        let x = a.allocate(0x2000, PAGE_SIZE).unwrap();
        a.free(x).unwrap();
        assert_eq!(a.free(x), Err(FrameError::DoubleFree(x)));
        let y = a.allocate(0x4000, PAGE_SIZE).unwrap();
        // Half of this was never handed out.
        let straddling = r(y.end - 0x1000, y.end + 0x1000);
        assert_eq!(a.free(straddling), Err(FrameError::DoubleFree(straddling)));
        let foreign = r(0x10_0000, 0x10_1000);
        assert_eq!(a.free(foreign), Err(FrameError::NotManaged(foreign)));
        let edge = r(0, 0x2000);
        assert_eq!(a.free(edge), Err(FrameError::NotManaged(edge)));
        assert_eq!(
            a.free(r(0x1800, 0x2000)),
            Err(FrameError::Misaligned(r(0x1800, 0x2000)))
        );
        assert_eq!(
            a.free(r(0x2000, 0x2000)),
            Err(FrameError::Misaligned(r(0x2000, 0x2000)))
        );
        assert_eq!(a.free_bytes(), 0x4000);
        a.free(y).unwrap();
        assert_eq!(a.free_bytes(), 0x8000);
    }

    #[test]
    fn add_rejects_overlap_and_aligns() {
        let mut a = FrameAllocator::<4>::new();
        a.add(r(0x1800, 0x5800)).unwrap();
        assert_eq!(a.free_ranges().as_slice(), &[r(0x2000, 0x5000)]);
        assert_eq!(
            a.add(r(0x4000, 0x8000)),
            Err(FrameError::AlreadyManaged(r(0x4000, 0x8000)))
        );
        a.add(r(0x5000, 0x8000)).unwrap();
        assert_eq!(a.managed_ranges().as_slice(), &[r(0x2000, 0x8000)]);
        let mut set = RangeSet::<4>::new();
        set.insert(r(0x1234, 0x9000)).unwrap();
        let b = FrameAllocator::from_free(&set).unwrap();
        assert_eq!(b.free_ranges().as_slice(), &[r(0x2000, 0x9000)]);
        assert_eq!(b.managed_bytes(), 0x7000);
    }

    #[test]
    fn full_free_list_fails_cleanly() {
        let mut a = FrameAllocator::<2>::new();
        a.add(r(0, 0x10000)).unwrap();
        let blocks: Vec<_> = (0..16)
            .map(|_| a.allocate(PAGE_SIZE, PAGE_SIZE).unwrap())
            .collect();
        a.free(blocks[2]).unwrap();
        a.free(blocks[5]).unwrap();
        assert_eq!(a.free(blocks[9]), Err(FrameError::Full));
        a.free(blocks[3]).unwrap();
        a.free(blocks[4]).unwrap();
        assert_eq!(a.free_ranges().as_slice(), &[r(0x2000, 0x6000)]);
    }

    #[test]
    fn take_removes_exactly_a_free_range() {
        let mut set = RangeSet::<8>::new();
        set.insert(Range::new(0x10_0000, 0x90_0000)).unwrap();
        let mut a = FrameAllocator::from_free(&set).unwrap();
        let ram = Range::new(0x20_0000, 0x40_0000);
        assert_eq!(a.take(ram), Ok(()));
        assert_eq!(a.free_bytes(), 0x80_0000 - 0x20_0000);
        assert_eq!(a.take(ram), Err(FrameError::NotFree(ram)));
        let unaligned = Range::new(0x50_0001, 0x60_0000);
        assert_eq!(a.take(unaligned), Err(FrameError::Misaligned(unaligned)));
        // What was taken can be given back, and the next allocation skips nothing else.
        assert_eq!(a.free(ram), Ok(()));
        assert_eq!(a.free_bytes(), 0x80_0000);
    }
}
