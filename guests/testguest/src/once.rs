//! Statics that are handed out once, as `&'static mut`.
//!
//! The guest has no allocator, yet it needs long-lived memory that the CPU or the
//! hypervisor uses behind the compiler's back: descriptor tables, page tables, stacks, the
//! work buffer. Each lives in a `static` (so in .bss, zeroed by `_start`), and a flag makes
//! sure only one mutable reference to it ever exists, which is what keeps this sound
//! without `static mut`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

pub struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reachable only through the single reference `take` hands out,
// which can move to another thread only if `T: Send`.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    pub const fn new(value: T) -> Self {
        Self {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The value, the first time only; `None` afterwards.
    // A `&mut` from `&self` is the point: the flag, not the borrow, makes it unique.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag was clear and is now set, so no other reference was or will be
        // created.
        Some(unsafe { &mut *self.value.get() })
    }
}
