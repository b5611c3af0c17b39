//! The arena's page allocator. Its bitmap lives inside the arena (in the root), so after
//! a microreboot the new instance knows exactly which arena pages hold VMCSs, EPT tables
//! and XSAVE areas without having to trust anything else the dead instance left.

use core::fmt;

/// Largest arena, in pages (1 GiB: the `arena=` maximum).
pub const MAX_PAGES: usize = 1 << 18;
const WORDS: usize = MAX_PAGES / 64;

#[repr(C)]
pub struct PageBitmap {
    /// Pages managed (the arena's size / 4 KiB).
    pages: u64,
    /// Pages currently allocated.
    used: u64,
    /// Bit i set: page i of the arena is allocated.
    bits: [u64; WORDS],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageError {
    /// The index is past the arena's end.
    OutOfRange(u64),
    /// Freeing a page that is not allocated.
    NotAllocated(u64),
    /// Taking a page that is already allocated.
    AlreadyAllocated(u64),
    /// The counters disagree with the bitmap.
    Inconsistent { counted: u64, recorded: u64 },
}

impl fmt::Display for PageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange(i) => write!(f, "arena page {i} is out of range"),
            Self::NotAllocated(i) => write!(f, "arena page {i} is not allocated"),
            Self::AlreadyAllocated(i) => write!(f, "arena page {i} is already allocated"),
            Self::Inconsistent { counted, recorded } => {
                write!(
                    f,
                    "arena page bitmap has {counted} pages set but records {recorded}"
                )
            }
        }
    }
}

impl PageBitmap {
    /// Starts managing `pages` pages, all free.
    pub fn init(&mut self, pages: u64) {
        self.pages = pages.min(MAX_PAGES as u64);
        self.used = 0;
        self.bits = [0; WORDS];
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn is_allocated(&self, index: u64) -> bool {
        index < self.pages && self.bits[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Marks `[first, first + count)` allocated (for the root itself).
    pub fn reserve(&mut self, first: u64, count: u64) -> Result<(), PageError> {
        for i in first..first + count {
            if i >= self.pages {
                return Err(PageError::OutOfRange(i));
            }
            if !self.is_allocated(i) {
                self.bits[(i / 64) as usize] |= 1 << (i % 64);
                self.used += 1;
            }
        }
        Ok(())
    }

    /// Allocates one page (the lowest free one, [`PageBitmap::first_free`]); returns its
    /// index.
    pub fn allocate(&mut self) -> Option<u64> {
        let index = self.first_free()?;
        self.take(index).ok()?;
        Some(index)
    }

    /// The page [`PageBitmap::allocate`] would hand out next, without taking it: a caller
    /// that must record a page before it is taken (the creation intent, `intent.rs`)
    /// learns it here, records it, then [`PageBitmap::take`]s it.
    pub fn first_free(&self) -> Option<u64> {
        let (w, word) = self
            .bits
            .iter()
            .enumerate()
            .find(|(_, &word)| word != u64::MAX)?;
        let index = w as u64 * 64 + u64::from(word.trailing_ones());
        (index < self.pages).then_some(index)
    }

    /// Marks the free page `index` allocated.
    pub fn take(&mut self, index: u64) -> Result<(), PageError> {
        if index >= self.pages {
            return Err(PageError::OutOfRange(index));
        }
        if self.is_allocated(index) {
            return Err(PageError::AlreadyAllocated(index));
        }
        self.bits[(index / 64) as usize] |= 1 << (index % 64);
        self.used += 1;
        Ok(())
    }

    pub fn free(&mut self, index: u64) -> Result<(), PageError> {
        if index >= self.pages {
            return Err(PageError::OutOfRange(index));
        }
        if !self.is_allocated(index) {
            return Err(PageError::NotAllocated(index));
        }
        self.bits[(index / 64) as usize] &= !(1 << (index % 64));
        self.used -= 1;
        Ok(())
    }

    /// Checks that the counters match the bitmap and nothing past the end is set.
    pub fn validate(&self) -> Result<(), PageError> {
        if self.pages > MAX_PAGES as u64 {
            return Err(PageError::OutOfRange(self.pages));
        }
        // Bits past `pages` must be clear; only the words in range are counted (a recovery
        // boot runs this, and the bitmap is sized for the largest arena).
        let full = (self.pages / 64) as usize;
        let tail = self.pages % 64;
        let tail_mask = (1u64 << tail) - 1;
        let mut in_range: u64 = self.bits[..full]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let mut stray = 0;
        if let Some(&w) = self.bits.get(full) {
            in_range += u64::from((w & tail_mask).count_ones());
            stray += u64::from((w & !tail_mask).count_ones());
        }
        for &w in self.bits.iter().skip(full + 1).filter(|&&w| w != 0) {
            stray += u64::from(w.count_ones());
        }
        let counted = in_range + stray;
        if counted != in_range || counted != self.used {
            return Err(PageError::Inconsistent {
                counted,
                recorded: self.used,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    fn bitmap(pages: u64) -> Box<PageBitmap> {
        let mut b = Box::new(PageBitmap {
            pages: 0,
            used: 0,
            bits: [0; WORDS],
        });
        b.init(pages);
        b
    }

    #[test]
    fn allocate_free_exhaust() {
        let mut b = bitmap(130);
        b.reserve(0, 3).unwrap();
        assert_eq!(b.allocate(), Some(3));
        assert_eq!(b.used(), 4);
        b.free(3).unwrap();
        assert_eq!(b.free(3), Err(PageError::NotAllocated(3)));
        assert_eq!(b.free(130), Err(PageError::OutOfRange(130)));
        let mut got = 0;
        while b.allocate().is_some() {
            got += 1;
        }
        assert_eq!(got, 127);
        assert_eq!(b.used(), 130);
        b.validate().unwrap();
    }

    #[test]
    fn first_free_is_what_allocate_takes_and_take_refuses_a_taken_page() {
        let mut b = bitmap(70);
        b.reserve(0, 65).unwrap();
        assert_eq!(b.first_free(), Some(65));
        assert_eq!(b.first_free(), Some(65), "looking takes nothing");
        b.take(65).unwrap();
        assert_eq!(b.take(65), Err(PageError::AlreadyAllocated(65)));
        assert_eq!(b.take(70), Err(PageError::OutOfRange(70)));
        assert_eq!(b.allocate(), Some(66));
        assert_eq!(b.used(), 67);
        b.validate().unwrap();
        while b.allocate().is_some() {}
        assert_eq!(b.first_free(), None, "full");
    }

    #[test]
    fn validate_catches_drift() {
        let mut b = bitmap(64);
        b.allocate();
        b.used = 5;
        assert!(matches!(b.validate(), Err(PageError::Inconsistent { .. })));
        let mut b = bitmap(10);
        b.bits[0] |= 1 << 20; // past the end
        b.used = 1;
        assert!(b.validate().is_err());
    }
}
