//! The physical 8254 PIT's channel 0 as the watchdog's clock: a rate generator whose
//! output, IRQ 0, the I/O APIC turns into an NMI. (Guests never see this PIT: theirs is the
//! device model in `crate::devices::pit`. Channel 2 is the TSC calibration's, in `tsc`.)
//!
//! Intel 8254 datasheet: control word at port 0x43 (bits 7:6 counter, 5:4 read/write
//! LSB then MSB, 3:1 mode, 0 binary), counter 0 at port 0x40; in mode 2 ("rate
//! generator") OUT goes low for one input clock every N clocks, so IRQ 0 sees one rising
//! edge per period, and the count reloads by itself.

use super::instructions::outb;
use super::tsc::PIT_HZ;

const CHANNEL0: u16 = 0x40;
const CONTROL: u16 = 0x43;
/// Counter 0 (bits 7:6 = 00), LSB then MSB (11), mode 2 (010), binary (0).
const CHANNEL0_MODE2: u8 = 0b0011_0100;

/// The count for `hz` periods per second, rounded to the nearest (a count of 0 means
/// 65536 to the 8254, so the result is clamped to 2..=65535).
pub const fn divisor(hz: u32) -> u16 {
    let hz = if hz == 0 { 1 } else { hz as u64 };
    let d = (PIT_HZ + hz / 2) / hz;
    if d < 2 {
        2
    } else if d > 0xffff {
        0xffff
    } else {
        d as u16
    }
}

/// Starts channel 0 as a rate generator at (about) `hz` periods per second.
pub fn start_rate_generator(hz: u32) {
    let count = divisor(hz);
    // SAFETY: ports 0x40 and 0x43 are the PIT's counter 0 and control word on every PC;
    // the host owns the physical PIT (guests get an emulated one) and nothing else uses
    // counter 0, whose IRQ 0 the 8259 keeps masked.
    unsafe {
        outb(CONTROL, CHANNEL0_MODE2);
        outb(CHANNEL0, count as u8);
        outb(CHANNEL0, (count >> 8) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors() {
        assert_eq!(divisor(100), 11932);
        assert_eq!(divisor(1000), 1193);
        assert_eq!(divisor(0), 0xffff);
        assert_eq!(
            divisor(10),
            0xffff,
            "below 18.2 Hz the 16-bit count saturates"
        );
        assert_eq!(divisor(1_000_000), 2);
        assert_eq!(CHANNEL0_MODE2, 0x34);
    }
}
