//! The recovery anchor: the one place, at a fixed link-time address, where a failing
//! instance finds the pristine copy and the arena (DESIGN 3: "recorded where the recovery
//! entry can find it").
//!
//! It lives in `.stacks` (see `linker.ld`), which a microreboot neither copies nor zeroes,
//! so it survives both; cold boot writes it once and seals it with a checksum. Its layout
//! is read by the trampoline's assembly (`failpath.rs`), so the field offsets are fixed.

/// "LZANCHOR".
pub const ANCHOR_MAGIC: u64 = u64::from_le_bytes(*b"LZANCHOR");

/// Offsets the trampoline reads (bytes).
pub const OFFSET_PAYLOAD: usize = 8;
pub const OFFSET_LEN: usize = 16;
pub const OFFSET_SUM: usize = 24;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Anchor {
    pub magic: u64,
    /// Physical address of the pristine payload (the copy of `.text .rodata .data`).
    pub payload: u64,
    /// Its length in bytes (a multiple of 8).
    pub len: u64,
    /// [`pristine_checksum`] of the payload.
    pub sum: u64,
    pub arena_base: u64,
    pub arena_size: u64,
    /// [`Anchor::compute_checksum`] of the fields above.
    pub checksum: u64,
    pub _reserved: u64,
}

const _: () = assert!(core::mem::offset_of!(Anchor, payload) == OFFSET_PAYLOAD);
const _: () = assert!(core::mem::offset_of!(Anchor, len) == OFFSET_LEN);
const _: () = assert!(core::mem::offset_of!(Anchor, sum) == OFFSET_SUM);
const _: () = assert!(core::mem::size_of::<Anchor>() == 64);

/// The payload checksum: the wrapping sum of its 64-bit words. Weak against an
/// adversary, but any single flipped bit changes it (by plus or minus a power of two),
/// and it costs one instruction a word in the trampoline, which computes it on every
/// recovery without calling any code it is about to replace.
pub fn pristine_checksum(words: impl IntoIterator<Item = u64>) -> u64 {
    hypervisor::scrub::word_sum(words)
}

impl Anchor {
    pub fn new(payload: u64, len: u64, sum: u64, arena_base: u64, arena_size: u64) -> Self {
        let mut a = Anchor {
            magic: ANCHOR_MAGIC,
            payload,
            len,
            sum,
            arena_base,
            arena_size,
            checksum: 0,
            _reserved: 0,
        };
        a.checksum = a.compute_checksum();
        a
    }

    fn compute_checksum(&self) -> u64 {
        [
            self.magic,
            self.payload,
            self.len,
            self.sum,
            self.arena_base,
            self.arena_size,
        ]
        .iter()
        .fold(0x6c61_7a61_7275_7321, |h: u64, &w| {
            (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// Whether the anchor is what cold boot wrote: magic, checksum, and sane values
    /// (`expected_len` is the payload length of this image).
    pub fn is_intact(&self, expected_len: u64) -> bool {
        self.damage(expected_len).is_none()
    }

    /// What is wrong with the anchor, if anything (for the halt line that says why no
    /// recovery is possible). All zero is an anchor cold boot never wrote.
    pub fn damage(&self, expected_len: u64) -> Option<&'static str> {
        if *self == Anchor::default() {
            Some("never written (VMX never started)")
        } else if self.magic != ANCHOR_MAGIC {
            Some("magic wrong")
        } else if self.checksum != self.compute_checksum() {
            Some("checksum wrong")
        } else if self.len != expected_len
            || !self.len.is_multiple_of(64)
            || !self.payload.is_multiple_of(4096)
            || !self.arena_base.is_multiple_of(4096)
            || self.arena_size == 0
        {
            Some("values do not fit this image")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_a_word_sum_and_catches_single_bit_flips() {
        let words = [1u64, 2, u64::MAX, 0xdead_beef];
        let h = pristine_checksum(words);
        assert_eq!(
            h,
            1u64.wrapping_add(2)
                .wrapping_add(u64::MAX)
                .wrapping_add(0xdead_beef)
        );
        for word in 0..words.len() {
            for bit in 0..64 {
                let mut flipped = words;
                flipped[word] ^= 1 << bit;
                assert_ne!(pristine_checksum(flipped), h, "word {word} bit {bit}");
            }
        }
    }

    #[test]
    fn damage_names_what_is_wrong() {
        let a = Anchor::new(0x40_0000, 0x4_0000, 0x1234, 0x7f00_0000, 0x80_0000);
        assert_eq!(a.damage(0x4_0000), None);
        assert_eq!(
            Anchor::default().damage(0x4_0000),
            Some("never written (VMX never started)")
        );
        let mut b = a;
        b.magic ^= 1;
        assert_eq!(b.damage(0x4_0000), Some("magic wrong"));
        let mut b = a;
        b.sum ^= 1 << 40;
        assert_eq!(b.damage(0x4_0000), Some("checksum wrong"));
        assert_eq!(a.damage(0x5_0000), Some("values do not fit this image"));
    }

    #[test]
    fn anchor_is_rejected_when_any_field_changes() {
        let a = Anchor::new(0x40_0000, 0x4_0000, 0x1234, 0x7f00_0000, 0x80_0000);
        assert!(a.is_intact(0x4_0000));
        assert!(!a.is_intact(0x4_1000), "another image's payload length");
        let mut b = a;
        b.arena_base += 0x1000;
        assert!(!b.is_intact(0x4_0000));
        let mut c = a;
        c.magic = 0;
        assert!(!c.is_intact(0x4_0000));
        assert!(!Anchor::default().is_intact(0));
    }
}
