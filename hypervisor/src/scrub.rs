//! The image scrub: a slow, continuous comparison of the hypervisor's code and read-only
//! data with the pristine copy.
//!
//! A flipped bit in `.text` or `.rodata` may lie dormant until its instruction runs,
//! possibly much later, and then do anything: corrupt a VM, or garble the console while
//! the watchdog still sees progress. The scrub compares one page every few VM exits, so
//! the whole image is covered in about a second of busy VMs. A page that differs from the
//! pristine copy is a hypervisor failure (the recovery restores the image from the copy),
//! unless the copy is what changed: then the copy's checksum no longer matches, and the
//! page is copied back into it from the image instead (see [`Verdict`]).

/// Bytes compared per call.
pub const PAGE: u64 = 4096;
/// VM exits between two pages compared.
pub const EXITS_PER_PAGE: u32 = 8;

/// Where a scrub runs: the live image's immutable part and the pristine copy of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regions {
    /// Start of `.text` in the running image.
    pub live: u64,
    /// Bytes of `.text` and `.rodata` (page-aligned).
    pub len: u64,
    /// The same bytes in the pristine copy.
    pub pristine: u64,
}

/// The scrub's position, and its pacing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub offset: u64,
    pub exits: u32,
}

impl Cursor {
    /// Counts a VM exit; returns the offset of the page to compare now, if it is time
    /// (`force`: now, whatever the count: the run loop's timed pace).
    pub fn tick(&mut self, len: u64, force: bool) -> Option<u64> {
        if len == 0 {
            return None;
        }
        self.exits += 1;
        if self.exits < EXITS_PER_PAGE && !force {
            return None;
        }
        self.exits = 0;
        let page = self.offset;
        self.offset = (self.offset + PAGE) % len;
        Some(page)
    }
}

/// The pristine payload's checksum: the wrapping sum of its 64-bit words (any single
/// flipped bit changes it). The microreboot trampoline computes the same in assembly.
pub fn word_sum(words: impl IntoIterator<Item = u64>) -> u64 {
    words.into_iter().fold(0u64, u64::wrapping_add)
}

/// The first word offset (in bytes) where `live` and `pristine` differ.
pub fn first_difference(live: &[u64], pristine: &[u64]) -> Option<usize> {
    live.iter()
        .zip(pristine)
        .position(|(a, b)| a != b)
        .map(|i| i * 8)
}

/// What a difference means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The pristine copy is intact: the running image changed. A hypervisor failure.
    ImageChanged,
    /// The pristine copy's checksum no longer matches, and copying the image's page into
    /// it makes it match again: the copy was what changed, and it is repaired.
    PristineRepaired,
    /// Neither: the copy is damaged beyond this page. A recovery could not restore the
    /// image, so this is reported (and the next failure will halt).
    PristineDamaged,
}

#[cfg(target_os = "none")]
pub mod machine {
    //! The scrub on the real machine: pointers into the image and the pristine copy.
    use core::sync::atomic::{AtomicU64, Ordering};

    use super::{first_difference, Cursor, Regions, Verdict, PAGE};

    static LIVE: AtomicU64 = AtomicU64::new(0);
    static LEN: AtomicU64 = AtomicU64::new(0);
    static PRISTINE: AtomicU64 = AtomicU64::new(0);
    static EXPECTED_SUM: AtomicU64 = AtomicU64::new(0);
    static PAYLOAD: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    /// Only the run loop takes it (once per VM exit): never contended.
    static CURSOR: spin::Mutex<Cursor> = spin::Mutex::new(Cursor {
        offset: 0,
        exits: 0,
    });

    /// Arms the scrub over `regions`; `payload` (address, length) and `sum` describe the
    /// whole pristine payload and its checksum (`recovery::anchor`), with `checksum` the
    /// function that computes it.
    pub fn start(regions: Regions, payload: (u64, u64), sum: u64) {
        LIVE.store(regions.live, Ordering::Relaxed);
        PRISTINE.store(regions.pristine, Ordering::Relaxed);
        PAYLOAD[0].store(payload.0, Ordering::Relaxed);
        PAYLOAD[1].store(payload.1, Ordering::Relaxed);
        EXPECTED_SUM.store(sum, Ordering::Relaxed);
        LEN.store(regions.len, Ordering::Relaxed);
    }

    /// Stops scrubbing (the pristine copy cannot be trusted to compare against).
    pub fn stop() {
        LEN.store(0, Ordering::Relaxed);
    }

    // The compiler's bulk-memory routines (compiler_builtins): only their addresses are
    // taken here.
    unsafe extern "C" {
        fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
        fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
        fn memset(dst: *mut u8, byte: i32, n: usize) -> *mut u8;
        fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
        fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32;
    }

    /// Called once per VM exit by the run loop (and, with `force`, when a page is due by
    /// time): every call, the first bytes of the bulk-memory routines; every few exits
    /// or when forced, one page. Returns the address of a changed word and what the
    /// change means.
    pub fn after_exit(force: bool) -> Option<(u64, Verdict)> {
        if let Some(found) = check_hot() {
            return Some(found);
        }
        let len = LEN.load(Ordering::Relaxed);
        let offset = CURSOR.lock().tick(len, force)?;
        compare(offset, PAGE)
    }

    /// Compares `bytes` at `offset` into the scrubbed region with the pristine copy;
    /// the caller keeps them inside one page of the region (`judge` repairs that page).
    fn compare(offset: u64, bytes: u64) -> Option<(u64, Verdict)> {
        let live = LIVE.load(Ordering::Relaxed);
        let pristine = PRISTINE.load(Ordering::Relaxed);
        let words = (bytes / 8) as usize;
        // SAFETY: the range lies inside the image's `.text .rodata` and the pristine copy
        // of them (identity-mapped, set by `start`); reading them has no side effect.
        let (a, b) = unsafe {
            (
                core::slice::from_raw_parts((live + offset) as *const u64, words),
                core::slice::from_raw_parts((pristine + offset) as *const u64, words),
            )
        };
        let at = first_difference(a, b)?;
        let page = offset & !(PAGE - 1);
        Some((
            live + offset + at as u64,
            judge(live + page, pristine + page),
        ))
    }

    /// Every VM's state is copied through `memcpy` and friends, on every exit: a flipped
    /// bit in them corrupts VMs long before the page-by-page scrub comes round (campaign
    /// finding 4), so their first `HOT_BYTES` (each routine is shorter) are compared at
    /// every exit, 160 words.
    fn check_hot() -> Option<(u64, Verdict)> {
        const HOT_BYTES: u64 = 256;
        let (live, len) = (LIVE.load(Ordering::Relaxed), LEN.load(Ordering::Relaxed));
        [
            memcpy as *const () as u64,
            memmove as *const () as u64,
            memset as *const () as u64,
            memcmp as *const () as u64,
            bcmp as *const () as u64,
        ]
        .into_iter()
        .find_map(|routine| {
            let start = routine & !7;
            let offset = start.wrapping_sub(live);
            let page = offset & !(PAGE - 1);
            // Within the scrubbed region, and not past the routine's page.
            let bytes = HOT_BYTES.min(page + PAGE - offset);
            if start < live || offset + bytes > len {
                return None;
            }
            compare(offset, bytes)
        })
    }

    /// Decides which side changed, repairing the pristine copy when it is the one.
    fn judge(live_page: u64, pristine_page: u64) -> Verdict {
        if payload_sum() == EXPECTED_SUM.load(Ordering::Relaxed) {
            return Verdict::ImageChanged;
        }
        // SAFETY: the pristine page is the layout's pristine class (owned; read-only
        // except in this CR0.WP window); the live page is readable. Copying the image's
        // page is the repair being tried.
        crate::arch::protect::with_writes_allowed(|| unsafe {
            core::ptr::copy_nonoverlapping(
                live_page as *const u8,
                pristine_page as *mut u8,
                PAGE as usize,
            )
        });
        if payload_sum() == EXPECTED_SUM.load(Ordering::Relaxed) {
            Verdict::PristineRepaired
        } else {
            Verdict::PristineDamaged
        }
    }

    fn payload_sum() -> u64 {
        let (addr, len) = (
            PAYLOAD[0].load(Ordering::Relaxed),
            PAYLOAD[1].load(Ordering::Relaxed),
        );
        // SAFETY: the whole pristine payload, as `start` was told (identity-mapped).
        let words = unsafe { core::slice::from_raw_parts(addr as *const u64, (len / 8) as usize) };
        super::word_sum(words.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_visits_every_page_and_wraps() {
        let mut c = Cursor::default();
        let len = 3 * PAGE;
        let pages: std::vec::Vec<u64> = (0..EXITS_PER_PAGE * 7)
            .filter_map(|_| c.tick(len, false))
            .collect();
        assert_eq!(pages, [0, PAGE, 2 * PAGE, 0, PAGE, 2 * PAGE, 0]);
        assert_eq!(Cursor::default().tick(0, true), None, "nothing to scrub");
        let mut c = Cursor::default();
        assert_eq!(c.tick(len, true), Some(0), "forced: at once");
        assert_eq!(c.tick(len, false), None, "the count starts again");
    }

    #[test]
    fn the_first_difference_is_found_by_byte_offset() {
        let a = [1u64, 2, 3, 4];
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&a, &[1, 2, 7, 4]), Some(16));
    }
}
