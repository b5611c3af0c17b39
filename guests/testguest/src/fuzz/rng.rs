//! The fuzzer's random numbers: SplitMix64 (Steele, Lea, Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014), one independent stream per operation.
//!
//! Operation N's stream is seeded from the run's seed and N alone, so any operation can
//! be regenerated without the ones before it: `fuzz-from=K` starts at K at no cost, and
//! the same seed and N always give the same operation, on any machine.

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub struct Rng(u64);

impl Rng {
    /// The stream of operation `op` of the run with `seed` (`salt` separates the streams
    /// of the stopping operation and of the safe ones).
    pub fn for_op(seed: u64, op: u64, salt: u64) -> Self {
        Rng(mix(seed.wrapping_add(mix(op.wrapping_add(GOLDEN) ^ salt))))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True once in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// A 64-bit value from the classes that find bugs: zero, all ones, single bits,
    /// small numbers, 32-bit values, canonical and non-canonical addresses, anything.
    pub fn value(&mut self) -> u64 {
        let r = self.next();
        match self.below(10) {
            0 => 0,
            1 => u64::MAX,
            2 => 1 << (r % 64),
            3 => r & 0xff,
            4 => r & 0xffff_ffff,
            5 => canonical(r),
            6 => non_canonical(r),
            7 => !(1 << (r % 64)),
            _ => r,
        }
    }
}

/// `r` made canonical for 48-bit linear addresses (bits 63:47 equal).
pub fn canonical(r: u64) -> u64 {
    (((r << 16) as i64) >> 16) as u64
}

/// `r` made non-canonical for 48- and 57-bit linear addresses: bit 63 differs from bit 56
/// and bit 47.
pub fn non_canonical(r: u64) -> u64 {
    if r >> 63 == 0 {
        (r | 1 << 63) & !(1 << 56) & !(1 << 47)
    } else {
        (r & !(1 << 63)) | 1 << 56 | 1 << 47
    }
}
