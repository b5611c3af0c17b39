//! The arithmetic of the `work` mode, kept apart from anything machine-specific.
//!
//! The point of the workload is that a test watching the console can tell, line by line,
//! whether the guest's memory and execution survived whatever the hypervisor went through
//! in the meantime (a microreboot, above all). That only works if the test knows the right
//! answer without trusting the guest, so the pattern of iteration `n` depends on `n` alone
//! and the checksum is cheap to recompute anywhere: [`pattern_checksum`] is the function a
//! harness reimplements, and `main.rs` documents it in full.
//!
//! The buffer is filled with 64-bit words rather than bytes only for speed; the checksum
//! runs over the bytes in address order (little-endian words), which is what a harness
//! written against the documentation will do.

/// Bytes in the work buffer.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// 64-bit words in the work buffer.
pub const BUFFER_WORDS: usize = BUFFER_BYTES / 8;

/// Xorshift64 steps in one round of `burn=` work: about as many as one fill.
pub const BURN_ROUND_STEPS: u64 = BUFFER_WORDS as u64;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Marsaglia's xorshift64 (shifts 13, 7, 17); each step's new state is its output.
#[derive(Clone, Copy, Debug)]
pub struct XorShift64(u64);

impl XorShift64 {
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_word(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// 64-bit FNV-1a over a stream of bytes.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Fnv1a {
    pub const fn new() -> Self {
        Self(FNV_OFFSET_BASIS)
    }

    /// Feeds the eight bytes of `word` in little-endian order.
    pub fn word(&mut self, word: u64) {
        for byte in word.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
    }

    pub const fn finish(self) -> u64 {
        self.0
    }
}

/// The checksum iteration `n` must find in its buffer: the reference that `fill` agrees
/// with and a test harness reimplements. The guest itself never needs it.
#[allow(dead_code)]
pub fn pattern_checksum(n: u64) -> u64 {
    let mut rng = XorShift64::new(n);
    let mut hash = Fnv1a::new();
    for _ in 0..BUFFER_WORDS {
        hash.word(rng.next_word());
    }
    hash.finish()
}

/// Writes iteration `n`'s pattern into `buffer` and returns the checksum of what was
/// written, which equals [`pattern_checksum`]`(n)` for a buffer of [`BUFFER_WORDS`].
pub fn fill(buffer: &mut [u64], n: u64) -> u64 {
    let mut rng = XorShift64::new(n);
    let mut hash = Fnv1a::new();
    for slot in buffer.iter_mut() {
        let word = rng.next_word();
        *slot = word;
        hash.word(word);
    }
    hash.finish()
}

/// The checksum of what `buffer` holds now.
pub fn checksum(buffer: &[u64]) -> u64 {
    let mut hash = Fnv1a::new();
    for &word in buffer {
        hash.word(word);
    }
    hash.finish()
}

/// Pure CPU work: `rounds` times [`BURN_ROUND_STEPS`] xorshift64 steps from `seed`.
/// Returns the final state so that the caller can keep the work from being optimised out.
pub fn burn(rounds: u64, seed: u64) -> u64 {
    let mut rng = XorShift64::new(seed | 1);
    let mut last = 0;
    for _ in 0..rounds.saturating_mul(BURN_ROUND_STEPS) {
        last = rng.next_word();
    }
    last
}
