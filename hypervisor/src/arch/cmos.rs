//! The host's battery-backed clock (MC146818 CMOS RTC), read once at boot so that guest
//! RTCs start at the real date.

use super::instructions::{inb, outb};

fn read(register: u8) -> u8 {
    // SAFETY: index/data ports of the CMOS RTC on every PC; host code owns them, reads
    // have no side effects besides the index (NMI stays enabled: bit 7 clear).
    unsafe {
        outb(0x70, register & 0x7f);
        inb(0x71)
    }
}

fn from_bcd(v: u8) -> u64 {
    u64::from(v >> 4) * 10 + u64::from(v & 0xf)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// Seconds since 1970-01-01 UTC according to the CMOS clock (assumed to keep UTC, as
/// Linux hosts set it), or 0 if it reads as nonsense.
pub fn epoch_seconds() -> u64 {
    // Wait for the end of an update cycle (register A bit 7), bounded.
    for _ in 0..1_000_000 {
        if read(0x0a) & 0x80 == 0 {
            break;
        }
    }
    let b = read(0x0b);
    let bcd = b & 0x04 == 0;
    let conv = |v: u8| if bcd { from_bcd(v) } else { u64::from(v) };
    let (sec, min) = (conv(read(0x00)), conv(read(0x02)));
    let hour_raw = read(0x04);
    let mut hour = conv(hour_raw & 0x7f);
    if b & 0x02 == 0 && hour_raw & 0x80 != 0 {
        hour = (hour % 12) + 12;
    }
    let (day, month, year) = (conv(read(0x07)), conv(read(0x08)), conv(read(0x09)));
    let century = match conv(read(0x32)) {
        c @ 19..=99 => c,
        _ => 20,
    };
    let year = century * 100 + year;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return 0;
    }
    days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 25) * 86_400, 1_795_564_800);
        assert_eq!(from_bcd(0x59), 59);
    }
}
