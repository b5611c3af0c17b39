//! The only lock type allowed in the arena.
//!
//! A lock in preserved memory outlives the instance that took it: after a microreboot
//! nobody will ever release a lock the dead instance held. So an arena lock records its
//! owner (which CPU, which boot generation) and recovery can enumerate and force-release
//! every one of them (DESIGN 3).

use core::sync::atomic::{AtomicU32, Ordering};

/// Value of `owner` when free.
const FREE: u32 = 0;

#[repr(C)]
#[derive(Debug, Default)]
pub struct ArenaLock {
    /// 0 when free, else 1 + the holding CPU's index.
    owner: AtomicU32,
    /// Boot generation of the holder, for diagnostics after a failure.
    generation: AtomicU32,
}

impl ArenaLock {
    pub const fn new() -> Self {
        Self {
            owner: AtomicU32::new(FREE),
            generation: AtomicU32::new(0),
        }
    }

    /// Spins until the lock is taken by `cpu`.
    pub fn acquire(&self, cpu: u32, generation: u32) {
        while self
            .owner
            .compare_exchange_weak(FREE, cpu + 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        self.generation.store(generation, Ordering::Relaxed);
    }

    pub fn release(&self) {
        self.owner.store(FREE, Ordering::Release);
    }

    /// The holding CPU, if any.
    pub fn holder(&self) -> Option<u32> {
        match self.owner.load(Ordering::Relaxed) {
            FREE => None,
            n => Some(n - 1),
        }
    }

    /// Releases the lock whoever holds it; returns the previous holder. For recovery only.
    pub fn force_release(&self) -> Option<u32> {
        match self.owner.swap(FREE, Ordering::AcqRel) {
            FREE => None,
            n => Some(n - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_release_and_force() {
        let l = ArenaLock::new();
        assert_eq!(l.holder(), None);
        l.acquire(2, 7);
        assert_eq!(l.holder(), Some(2));
        assert_eq!(l.force_release(), Some(2));
        assert_eq!(l.holder(), None);
        assert_eq!(l.force_release(), None);
        l.acquire(0, 1);
        l.release();
        assert_eq!(l.holder(), None);
    }
}
