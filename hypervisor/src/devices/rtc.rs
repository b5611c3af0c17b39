//! Motorola MC146818 real-time clock and CMOS RAM (index port 0x70, data port 0x71).
//!
//! Linux reads the RTC once at boot to set the system clock (and `hwclock` reads or sets
//! it later); it reads register D to see that the clock is there, waits for register A's
//! update-in-progress bit to fall before reading the time, and reads register C to
//! acknowledge interrupts. Nothing else in CMOS matters to it, but the whole 128 bytes
//! behave as RAM so that whatever a guest stores there stays.
//!
//! # Time is derived, never ticked
//!
//! The chip counts seconds and carries them into minutes, hours, days, months and years.
//! Here the state holds an epoch base instead: `base_secs` seconds since 1970-01-01 UTC
//! at guest time `base_ns`. Reading a time register converts `base_secs` plus the whole
//! seconds elapsed since `base_ns` to a calendar date ([`civil_from_days`], integer
//! arithmetic, proleptic Gregorian calendar) and encodes the field as the guest asked:
//! BCD unless register B's DM bit is set, 24-hour unless register B bit 1 is clear
//! (12-hour, bit 7 = PM). Nothing has to run for the clock to advance, so it keeps the
//! right time across a hypervisor reboot and while the VM is not scheduled.
//!
//! The update-in-progress bit (register A bit 7) is derived the same way: it reads set
//! during the last 244 us (1/4096 s) of every second, before the instant at which the
//! fields change, so a guest's "wait for UIP to fall" loop ends and its reads that follow
//! within 244 us see consistent fields. The update itself is instantaneous.
//!
//! # Setting the clock
//!
//! The clock is *halted* while register B's SET bit is set or register A's divider is in
//! reset (DV2:DV1 = 11): when it halts, the current time is copied into the CMOS time
//! registers, reads and writes then act on those bytes, and when it runs again (the last
//! of SET and the divider reset is cleared) the fields are converted back into a new
//! epoch base starting at that instant. This is what Linux's `mc146818_set_time` does
//! (SET, divider reset, write the fields, restore B, restore A). A time register written
//! while the clock runs takes effect at once and keeps the phase within the second.
//! Fields are taken at face value: a day past the end of its month carries into the next,
//! the month is clamped to 1-12, a date before 1970 becomes 1970-01-01 00:00:00 and one
//! after 9999 becomes [`MAX_EPOCH`]. The day of the week is always derived from the date
//! (a written value is ignored once the clock runs). The year is the century register
//! (0x32, in the same BCD or binary format) times 100 plus register 9.
//!
//! # Interrupts and register C
//!
//! The flags of register C are derived from time as well: UF is set by every update
//! (second boundary, clock running), PF by every tick of the periodic rate selected in
//! register A (whether or not PIE is set, as on the chip; 32.768 kHz time base, aligned
//! with the second), and AF by an update that matches the alarm registers (1, 3, 5; a
//! value of 0xC0-0xFF matches anything, an out-of-range value never matches). The state
//! keeps the flags gathered so far and the time from which more are still to be computed;
//! reading register C returns them, with IRQF when one of them is enabled in register B,
//! and clears them.
//!
//! IRQ 8 (edge-triggered at the PIC, the line held until register C is read) follows
//! the same model as the PIT's IRQ 0: [`Rtc::next_irq8_ns`] says when an enabled flag
//! will next be set, [`Rtc::tick`] pulses IRQ 8 when it is due, and no further IRQ 8 comes
//! until the guest reads register C. Missed periodic ticks are therefore coalesced into
//! one interrupt, as on the chip when software is slow to acknowledge. Linux cloud kernels
//! never enable these interrupts; a caller that does not wire `next_irq8_ns` and `tick`
//! simply delivers no IRQ 8, while the flags still read correctly.
//!
//! # Not emulated
//!
//! Daylight-saving adjustment (DSE is stored, ignored), the square-wave output (SQWE is
//! stored), divider settings other than reset (every one runs the clock at the normal
//! rate), and the ~2 ms during which a real chip's time registers are inaccessible after
//! UIP rises. Port 0x70 is write-only on the chip; reading it here returns the last value
//! written (register index and NMI-disable bit 7, which is stored but has no effect: the
//! hypervisor does not deliver NMIs to guests from these sources).
//!
//! Accesses wider than a byte are split into byte accesses to consecutive ports, as on
//! the ISA bus (a 16-bit write to 0x70 selects a register and writes it); ports outside
//! 0x70-0x71 read 0xff and ignore writes.

use super::{size_mask, BadState, DeviceEvents, Named};

/// The ISA IRQ line of the RTC.
pub const IRQ: u8 = 8;
/// Index port: bits 6:0 select a register, bit 7 disables NMIs.
pub const INDEX_PORT: u16 = 0x70;
/// Data port: reads and writes the selected register.
pub const DATA_PORT: u16 = 0x71;
/// The latest time the clock can hold: 9999-12-31 23:59:59 UTC.
pub const MAX_EPOCH: u64 = 253_402_300_799;

// Register indices (the data port reads and writes the register the index selects).

/// Seconds, 0-59.
pub const REG_SECONDS: u8 = 0x00;
/// Alarm seconds (0xC0-0xFF: any).
pub const REG_ALARM_SECONDS: u8 = 0x01;
/// Minutes, 0-59.
pub const REG_MINUTES: u8 = 0x02;
/// Alarm minutes (0xC0-0xFF: any).
pub const REG_ALARM_MINUTES: u8 = 0x03;
/// Hours: 0-23, or 1-12 with bit 7 = PM.
pub const REG_HOURS: u8 = 0x04;
/// Alarm hours (0xC0-0xFF: any).
pub const REG_ALARM_HOURS: u8 = 0x05;
/// Day of the week, 1 = Sunday.
pub const REG_DAY_OF_WEEK: u8 = 0x06;
/// Day of the month, 1-31.
pub const REG_DAY_OF_MONTH: u8 = 0x07;
/// Month, 1-12.
pub const REG_MONTH: u8 = 0x08;
/// Year within the century, 0-99.
pub const REG_YEAR: u8 = 0x09;
/// Register A: UIP, divider, periodic rate.
pub const REG_A: u8 = 0x0a;
/// Register B: SET, interrupt enables, data mode, hour format, DSE.
pub const REG_B: u8 = 0x0b;
/// Register C: interrupt flags, cleared by reading.
pub const REG_C: u8 = 0x0c;
/// Register D: valid RAM and time.
pub const REG_D: u8 = 0x0d;
/// Century (the PC/AT and ACPI convention).
pub const REG_CENTURY: u8 = 0x32;

/// Register A: update in progress (read-only).
pub const A_UIP: u8 = 0x80;
/// Register A: DV2 and DV1 both set hold the divider in reset.
const A_DIVIDER_RESET: u8 = 0x60;
/// Register A: periodic rate select RS3:RS0.
const A_RATE: u8 = 0x0f;

/// Register B: halt the clock to set it.
pub const B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
pub const B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
pub const B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
pub const B_UIE: u8 = 0x10;
/// Register B: square-wave output enable (stored only).
pub const B_SQWE: u8 = 0x08;
/// Register B: data mode binary (clear: BCD).
pub const B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour format (clear: 12-hour).
pub const B_24H: u8 = 0x02;
/// Register B: daylight-saving enable (stored only).
pub const B_DSE: u8 = 0x01;

/// Register C: an enabled flag is set (the interrupt request).
pub const C_IRQF: u8 = 0x80;
/// Register C: periodic flag (lines up with `B_PIE`, as AF and UF with theirs).
pub const C_PF: u8 = 0x40;
/// Register C: alarm flag.
pub const C_AF: u8 = 0x20;
/// Register C: update-ended flag.
pub const C_UF: u8 = 0x10;
const C_FLAGS: u8 = C_PF | C_AF | C_UF;

/// Register D: valid RAM and time (the battery is good).
pub const D_VRT: u8 = 0x80;

/// Register A after a PC BIOS: 32.768 kHz time base, 1024 Hz periodic rate.
const POWER_ON_A: u8 = 0x26;
/// Register B after a PC BIOS: BCD, 24-hour, no interrupts.
const POWER_ON_B: u8 = B_24H;

const NS_PER_S: u64 = 1_000_000_000;
/// UIP reads set for this long before each update: 1/4096 s, rounded.
pub const UIP_NS: u64 = 244_141;
/// The RTC's time base, in Hz.
const TIME_BASE_HZ: u64 = 32_768;
const SECS_PER_DAY: u64 = 86_400;

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn month_days(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Leap years among 1..=year.
fn leaps_through(year: u64) -> u64 {
    year / 4 - year / 100 + year / 400
}

/// Days from 1970-01-01 to January 1 of `year` (at least 1970).
fn days_before_year(year: u64) -> u64 {
    365 * (year - 1970) + leaps_through(year - 1) - leaps_through(1969)
}

/// Days from 1970-01-01 to `year`-`month`-`day` (year at least 1970, month 1-12, day at
/// least 1; a day past the end of the month carries on into the next).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let before_month: u64 = (1..month).map(|m| month_days(year, m)).sum();
    days_before_year(year) + before_month + day - 1
}

/// The date (year, month 1-12, day 1-31) `days` days after 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 400 Gregorian years have 146097 days, and any span of whole years is within two
    // days of its average length: one year less than the average estimate is never too
    // late, and at most two steps forward reach the right year.
    let mut year = 1970 + (days * 400 / 146_097).saturating_sub(1);
    while days_before_year(year + 1) <= days {
        year += 1;
    }
    let mut rest = days - days_before_year(year);
    let mut month = 1;
    while rest >= month_days(year, month) {
        rest -= month_days(year, month);
        month += 1;
    }
    (year, month, rest + 1)
}

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: u64,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday ... 7 = Saturday, as the RTC counts.
    pub weekday: u8,
}

impl DateTime {
    /// The calendar fields of `secs` seconds since 1970-01-01 00:00:00 UTC.
    pub fn from_epoch(secs: u64) -> Self {
        let days = secs / SECS_PER_DAY;
        let tod = secs % SECS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
            // 1970-01-01 was a Thursday (5 counting Sunday as 1).
            weekday: ((days + 4) % 7 + 1) as u8,
        }
    }
}

/// Seconds since 1970 of a date and time taken at face value (see the module
/// documentation), clamped to 0..=MAX_EPOCH.
fn epoch_from_fields(year: u64, month: u64, day: u64, hour: u64, minute: u64, second: u64) -> u64 {
    if year < 1970 {
        return 0;
    }
    if year > 9999 {
        return MAX_EPOCH;
    }
    let days = days_from_civil(year, month.clamp(1, 12), day.max(1));
    let secs = days * SECS_PER_DAY + hour * 3600 + minute * 60 + second;
    secs.min(MAX_EPOCH)
}

fn to_bcd(v: u8) -> u8 {
    (v / 10 % 10) << 4 | (v % 10)
}

/// BCD to binary, each nibble taken at face value (0xA0 is 100).
fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0xf)
}

/// The RTC and CMOS RAM, as kept in the arena.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rtc {
    /// Guest time at which the clock read exactly `base_secs` (the start of that second).
    pub base_ns: u64,
    /// Seconds since 1970-01-01 00:00:00 UTC at `base_ns`.
    pub base_secs: u64,
    /// Register C flags are gathered in `c_flags` up to this guest time; those after it
    /// are computed from time when needed.
    pub flags_since_ns: u64,
    /// The 128 bytes of CMOS. Registers A and B live at 0x0a and 0x0b (A without UIP);
    /// 0x0c and 0x0d are always 0 (C and D are computed). The time registers (0x00,
    /// 0x02, 0x04, 0x06-0x09, 0x32) hold the time only while the clock is halted; the
    /// alarm registers and everything else are plain RAM.
    pub cmos: [u8; 128],
    /// The selected register (bits 6:0 of the last index write).
    pub index: u8,
    /// Bit 7 of the last index write: NMIs disabled.
    pub nmi_disabled: u8,
    /// Register C flags (PF, AF, UF) set before `flags_since_ns` and not yet read.
    pub c_flags: u8,
    /// 1 once IRQ 8 was pulsed, until register C is read.
    pub irq_raised: u8,
}

impl Named for Rtc {
    const NAME: &'static str = "rtc";
}

impl Rtc {
    /// The ports the RTC claims, as inclusive (first, last) ranges.
    pub const PORTS: &'static [(u16, u16)] = &[(INDEX_PORT, DATA_PORT)];

    /// The state a PC BIOS leaves (BCD, 24-hour, 1024 Hz rate selected, no interrupts,
    /// the rest of CMOS zero), with the clock reading `epoch_seconds` (seconds since
    /// 1970-01-01 00:00:00 UTC, clamped to [`MAX_EPOCH`]) at VM start.
    pub const fn new(epoch_seconds: u64) -> Self {
        let mut cmos = [0u8; 128];
        cmos[REG_A as usize] = POWER_ON_A;
        cmos[REG_B as usize] = POWER_ON_B;
        Rtc {
            base_ns: 0,
            base_secs: if epoch_seconds > MAX_EPOCH {
                MAX_EPOCH
            } else {
                epoch_seconds
            },
            flags_since_ns: 0,
            cmos,
            index: 0,
            nmi_disabled: 0,
            c_flags: 0,
            irq_raised: 0,
        }
    }

    /// A port read of `size` bytes at guest time `now_ns`.
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64, _ev: &mut DeviceEvents) -> u32 {
        let mut value = 0u32;
        for i in 0..size.min(4) {
            let byte = match port.wrapping_add(u16::from(i)) {
                INDEX_PORT => self.index | (self.nmi_disabled << 7),
                DATA_PORT => self.read_register(self.index, now_ns),
                _ => 0xff,
            };
            value |= u32::from(byte) << (8 * i);
        }
        value & size_mask(size)
    }

    /// A port write of `size` bytes at guest time `now_ns`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64, _ev: &mut DeviceEvents) {
        let value = value & size_mask(size);
        for i in 0..size.min(4) {
            let byte = (value >> (8 * i)) as u8;
            match port.wrapping_add(u16::from(i)) {
                INDEX_PORT => {
                    self.index = byte & 0x7f;
                    self.nmi_disabled = byte >> 7;
                }
                DATA_PORT => self.write_register(self.index, byte, now_ns),
                _ => {}
            }
        }
    }

    /// The seconds since 1970 the clock reads at `now_ns` (while it runs).
    pub fn epoch_at(&self, now_ns: u64) -> u64 {
        self.base_secs + now_ns.saturating_sub(self.base_ns) / NS_PER_S
    }

    fn reg(&self, reg: u8) -> u8 {
        self.cmos[usize::from(reg)]
    }

    fn halted(&self) -> bool {
        self.reg(REG_B) & B_SET != 0 || self.reg(REG_A) & A_DIVIDER_RESET == A_DIVIDER_RESET
    }

    /// The divider runs (periodic interrupts count) unless it is held in reset.
    fn divider_running(&self) -> bool {
        self.reg(REG_A) & A_DIVIDER_RESET != A_DIVIDER_RESET
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_DM_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = if hour.is_multiple_of(12) {
            12
        } else {
            hour % 12
        };
        self.encode(h12) | if hour >= 12 { 0x80 } else { 0 }
    }

    fn decode_hours(&self, v: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(v);
        }
        let pm = if v & 0x80 != 0 { 12 } else { 0 };
        self.decode(v & 0x7f) % 12 + pm
    }

    fn is_time_register(reg: u8) -> bool {
        matches!(
            reg,
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK..=REG_YEAR | REG_CENTURY
        )
    }

    /// A time register's value for `secs` seconds since 1970, in the current format.
    fn time_register(&self, reg: u8, secs: u64) -> u8 {
        let t = DateTime::from_epoch(secs);
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hours(t.hour),
            REG_DAY_OF_WEEK => self.encode(t.weekday),
            REG_DAY_OF_MONTH => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode((t.year % 100) as u8),
            _ => self.encode((t.year / 100 % 100) as u8),
        }
    }

    /// Copies the running clock's time at `now_ns` into the CMOS time registers.
    fn snapshot(&mut self, now_ns: u64) {
        let secs = self.epoch_at(now_ns);
        for reg in [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_DAY_OF_WEEK,
            REG_DAY_OF_MONTH,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ] {
            self.cmos[usize::from(reg)] = self.time_register(reg, secs);
        }
    }

    /// The time the CMOS time registers hold, as seconds since 1970.
    fn epoch_from_registers(&self) -> u64 {
        let year = u64::from(self.decode(self.reg(REG_CENTURY))) * 100
            + u64::from(self.decode(self.reg(REG_YEAR)));
        epoch_from_fields(
            year,
            u64::from(self.decode(self.reg(REG_MONTH))),
            u64::from(self.decode(self.reg(REG_DAY_OF_MONTH))),
            u64::from(self.decode_hours(self.reg(REG_HOURS))),
            u64::from(self.decode(self.reg(REG_MINUTES))),
            u64::from(self.decode(self.reg(REG_SECONDS))),
        )
    }

    fn uip(&self, now_ns: u64) -> bool {
        !self.halted() && now_ns.saturating_sub(self.base_ns) % NS_PER_S >= NS_PER_S - UIP_NS
    }

    /// The periodic interrupt's period in 32.768 kHz ticks, if one is selected and the
    /// divider runs.
    fn periodic_ticks(&self) -> Option<u64> {
        let rs = self.reg(REG_A) & A_RATE;
        if rs == 0 || !self.divider_running() {
            return None;
        }
        // Rates 1 and 2 repeat rates 8 and 9 (256 and 128 Hz) with a 32.768 kHz base.
        let shift = if rs <= 2 { rs + 6 } else { rs - 1 };
        Some(1 << shift)
    }

    /// 32.768 kHz ticks since `base_ns`.
    fn base_ticks(&self, ns: u64) -> u64 {
        let d = ns.saturating_sub(self.base_ns);
        (u128::from(d) * u128::from(TIME_BASE_HZ) / u128::from(NS_PER_S)) as u64
    }

    /// The flags that events in the guest-time interval (a, b] set, under the current
    /// register settings.
    fn events(&self, a: u64, b: u64) -> u8 {
        if b <= a {
            return 0;
        }
        let mut flags = 0;
        if !self.halted() {
            let sa = self.epoch_at(a);
            let sb = self.epoch_at(b);
            if sb > sa {
                flags |= C_UF;
                if self.next_alarm(sa).is_some_and(|s| s <= sb) {
                    flags |= C_AF;
                }
            }
        }
        if let Some(p) = self.periodic_ticks() {
            if self.base_ticks(b) / p > self.base_ticks(a) / p {
                flags |= C_PF;
            }
        }
        flags
    }

    /// Moves the flags set up to `now_ns` into `c_flags`, before a register change that
    /// would alter how later ones are computed.
    fn fold(&mut self, now_ns: u64) {
        self.c_flags |= self.events(self.flags_since_ns, now_ns);
        self.flags_since_ns = self.flags_since_ns.max(now_ns);
    }

    /// An alarm register: None for "don't care" (0xC0-0xFF), Some(None) for a value that
    /// can never match, else Some(Some(value)).
    fn alarm_field(&self, reg: u8, limit: u8) -> Option<Option<u8>> {
        let v = self.reg(reg);
        if v & 0xc0 == 0xc0 {
            return None;
        }
        let x = if reg == REG_ALARM_HOURS {
            self.decode_hours(v)
        } else {
            self.decode(v)
        };
        Some((x < limit).then_some(x))
    }

    /// The first second of the day at or after `from` (seconds into the day) that matches
    /// the alarm, if any.
    fn first_alarm_of_day(&self, from: u64) -> Option<u64> {
        let hours = self.alarm_field(REG_ALARM_HOURS, 24);
        let minutes = self.alarm_field(REG_ALARM_MINUTES, 60);
        let seconds = self.alarm_field(REG_ALARM_SECONDS, 60);
        if [hours, minutes, seconds].contains(&Some(None)) {
            return None;
        }
        let fits = |field: Option<Option<u8>>, v: u64| field.is_none_or(|x| x == Some(v as u8));
        let (h0, m0, s0) = (from / 3600, from / 60 % 60, from % 60);
        for h in (h0..24).filter(|&h| fits(hours, h)) {
            let m_from = if h == h0 { m0 } else { 0 };
            for m in (m_from..60).filter(|&m| fits(minutes, m)) {
                let s_from = if h == h0 && m == m0 { s0 } else { 0 };
                let s = match seconds {
                    Some(Some(s)) if u64::from(s) >= s_from => u64::from(s),
                    Some(_) => continue,
                    None => s_from,
                };
                return Some(h * 3600 + m * 60 + s);
            }
        }
        None
    }

    /// The first second after `after` (seconds since 1970) whose update sets AF.
    fn next_alarm(&self, after: u64) -> Option<u64> {
        let t = after + 1;
        let day = t - t % SECS_PER_DAY;
        if let Some(s) = self.first_alarm_of_day(t % SECS_PER_DAY) {
            return Some(day + s);
        }
        self.first_alarm_of_day(0).map(|s| day + SECS_PER_DAY + s)
    }

    fn read_register(&mut self, reg: u8, now_ns: u64) -> u8 {
        match reg {
            _ if Self::is_time_register(reg) => {
                if self.halted() {
                    self.reg(reg)
                } else {
                    self.time_register(reg, self.epoch_at(now_ns))
                }
            }
            REG_A => self.reg(REG_A) | if self.uip(now_ns) { A_UIP } else { 0 },
            REG_C => {
                let flags = self.c_flags | self.events(self.flags_since_ns, now_ns);
                let irqf = if flags & self.reg(REG_B) & C_FLAGS != 0 {
                    C_IRQF
                } else {
                    0
                };
                self.c_flags = 0;
                self.flags_since_ns = self.flags_since_ns.max(now_ns);
                self.irq_raised = 0;
                flags | irqf
            }
            REG_D => D_VRT,
            _ => self.reg(reg),
        }
    }

    fn write_register(&mut self, reg: u8, value: u8, now_ns: u64) {
        match reg {
            REG_C | REG_D => {}
            _ if Self::is_time_register(reg) => {
                self.fold(now_ns);
                if self.halted() {
                    self.cmos[usize::from(reg)] = value;
                } else {
                    // Takes effect at once, keeping the phase within the second.
                    let phase = now_ns.saturating_sub(self.base_ns) % NS_PER_S;
                    self.snapshot(now_ns);
                    self.cmos[usize::from(reg)] = value;
                    self.base_secs = self.epoch_from_registers();
                    self.base_ns = now_ns - phase;
                }
            }
            REG_A | REG_B => {
                self.fold(now_ns);
                let was_halted = self.halted();
                let value = if reg == REG_A { value & !A_UIP } else { value };
                self.cmos[usize::from(reg)] = value;
                match (was_halted, self.halted()) {
                    (false, true) => self.snapshot(now_ns),
                    (true, false) => {
                        self.base_secs = self.epoch_from_registers();
                        self.base_ns = now_ns;
                    }
                    _ => {}
                }
            }
            REG_ALARM_SECONDS | REG_ALARM_MINUTES | REG_ALARM_HOURS => {
                self.fold(now_ns);
                self.cmos[usize::from(reg)] = value;
            }
            _ => self.cmos[usize::from(reg)] = value,
        }
    }

    /// Guest time at which IRQ 8 is next due: when a flag enabled in register B is next
    /// set (now, if one already is). None while IRQ 8 is raised and register C unread, or
    /// when no enabled event will come.
    pub fn next_irq8_ns(&self) -> Option<u64> {
        if self.irq_raised != 0 {
            return None;
        }
        let enabled = self.reg(REG_B) & C_FLAGS;
        if self.c_flags & enabled != 0 {
            return Some(self.flags_since_ns);
        }
        let from = self.flags_since_ns;
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if !self.halted() {
            let elapsed_secs = from.saturating_sub(self.base_ns) / NS_PER_S;
            if enabled & C_UF != 0 {
                consider(
                    self.base_ns
                        .saturating_add((elapsed_secs + 1).saturating_mul(NS_PER_S)),
                );
            }
            if enabled & C_AF != 0 {
                if let Some(s) = self.next_alarm(self.base_secs + elapsed_secs) {
                    let after_base = (s - self.base_secs).saturating_mul(NS_PER_S);
                    consider(self.base_ns.saturating_add(after_base));
                }
            }
        }
        if enabled & C_PF != 0 {
            if let Some(p) = self.periodic_ticks() {
                let tick = (self.base_ticks(from) / p + 1) * p;
                let ns =
                    (u128::from(tick) * u128::from(NS_PER_S)).div_ceil(u128::from(TIME_BASE_HZ));
                consider(
                    self.base_ns
                        .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX)),
                );
            }
        }
        next
    }

    /// Pulses IRQ 8 in `ev` if it is due at `now_ns` (see [`Rtc::next_irq8_ns`]). Returns
    /// whether it did.
    pub fn tick(&mut self, now_ns: u64, ev: &mut DeviceEvents) -> bool {
        match self.next_irq8_ns() {
            Some(t) if t <= now_ns => {
                self.irq_raised = 1;
                // An edge: assert then deassert (a pulse).
                ev.raise |= 1 << IRQ;
                ev.lower |= 1 << IRQ;
                true
            }
            _ => false,
        }
    }

    /// Bound checks for recovery.
    pub fn validate(&self) -> Result<(), BadState> {
        let bad = |what| {
            Err(BadState {
                device: Self::NAME,
                what,
            })
        };
        if self.index > 0x7f {
            return bad("register index out of range");
        }
        if self.nmi_disabled > 1 || self.irq_raised > 1 {
            return bad("flag out of range");
        }
        if self.c_flags & !C_FLAGS != 0 {
            return bad("register C flags out of range");
        }
        if self.reg(REG_A) & A_UIP != 0 {
            return bad("register A stores UIP");
        }
        if self.reg(REG_C) != 0 || self.reg(REG_D) != 0 {
            return bad("registers C and D stored");
        }
        if self.base_secs > MAX_EPOCH {
            return bad("time beyond year 9999");
        }
        if self.base_ns > self.flags_since_ns {
            return bad("flags gathered from before the time base");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
