//! How fast the time-stamp counter runs, measured once at boot against the PIT, so that
//! guest time (nanoseconds for the device models) can be derived from the TSC alone.
//!
//! The method is the classic one (and Linux's): PIT channel 2 in mode 0, gated by port
//! 0x61 bit 0, counts down from a known value at 1,193,182 Hz; its output (port 0x61
//! bit 5) goes high at zero. Reading the TSC before and after gives ticks per interval.

use super::instructions::{inb, outb, rdtsc};

/// The PIT's input clock (Intel 8254 datasheet; every PC).
pub const PIT_HZ: u64 = 1_193_182;
/// Count for the measurement: about 50 ms.
const COUNT: u16 = 59_659;

/// Measures the TSC frequency in Hz. Returns None if the PIT output never rose (no PIT).
pub fn calibrate() -> Option<u64> {
    // SAFETY: ports 0x61 and 0x42/0x43 are the PIT channel 2 gate and counter on every
    // PC; host code owns them (guests get emulated ones) and interrupts are masked.
    unsafe {
        let control = inb(0x61);
        // Gate on, speaker off.
        outb(0x61, (control & !0x02) | 0x01);
        // Channel 2, lobyte/hibyte, mode 0, binary.
        outb(0x43, 0xb0);
        outb(0x42, COUNT as u8);
        outb(0x42, (COUNT >> 8) as u8);
        let start = rdtsc();
        let mut polls: u64 = 0;
        while inb(0x61) & 0x20 == 0 {
            polls += 1;
            if polls > 50_000_000 {
                outb(0x61, control);
                return None;
            }
        }
        let end = rdtsc();
        outb(0x61, control);
        Some(ticks_to_hz(end.wrapping_sub(start), u64::from(COUNT)))
    }
}

/// TSC ticks measured over `pit_counts` PIT periods, as a frequency.
pub fn ticks_to_hz(ticks: u64, pit_counts: u64) -> u64 {
    ((u128::from(ticks) * u128::from(PIT_HZ)) / u128::from(pit_counts.max(1))) as u64
}

/// Converts TSC ticks to nanoseconds at `hz`.
pub fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    ((u128::from(ticks) * 1_000_000_000) / u128::from(hz.max(1))) as u64
}

/// Converts nanoseconds to TSC ticks at `hz`.
pub fn ns_to_ticks(ns: u64, hz: u64) -> u64 {
    ((u128::from(ns) * u128::from(hz)) / 1_000_000_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        // 50 ms of a 2 GHz TSC.
        assert_eq!(ticks_to_hz(100_000_000, 59_659), 2_000_003_352);
        assert_eq!(ticks_to_ns(3_000_000_000, 3_000_000_000), 1_000_000_000);
        assert_eq!(ns_to_ticks(1_000_000, 50_000_000), 50_000);
        let hz = 2_394_000_000;
        assert_eq!(ns_to_ticks(ticks_to_ns(1_000_000_000, hz), hz), 999_999_999);
    }
}
