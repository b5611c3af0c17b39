use super::*;

/// 2026-11-25 03:45:06 UTC, a Wednesday.
const EPOCH: u64 = 1_795_578_306;
const S: u64 = NS_PER_S;

fn read(rtc: &mut Rtc, reg: u8, now_ns: u64) -> u8 {
    let mut ev = DeviceEvents::default();
    rtc.write(INDEX_PORT, 1, u32::from(reg), now_ns, &mut ev);
    let v = rtc.read(DATA_PORT, 1, now_ns, &mut ev);
    assert_eq!(ev, DeviceEvents::default());
    v as u8
}

fn write(rtc: &mut Rtc, reg: u8, value: u8, now_ns: u64) {
    let mut ev = DeviceEvents::default();
    rtc.write(INDEX_PORT, 1, u32::from(reg), now_ns, &mut ev);
    rtc.write(DATA_PORT, 1, u32::from(value), now_ns, &mut ev);
    assert_eq!(ev, DeviceEvents::default());
}

/// Seconds, minutes, hours, day of week, day of month, month, year, century.
fn clock(rtc: &mut Rtc, now_ns: u64) -> [u8; 8] {
    [
        REG_SECONDS,
        REG_MINUTES,
        REG_HOURS,
        REG_DAY_OF_WEEK,
        REG_DAY_OF_MONTH,
        REG_MONTH,
        REG_YEAR,
        REG_CENTURY,
    ]
    .map(|reg| read(rtc, reg, now_ns))
}

fn tick(rtc: &mut Rtc, now_ns: u64) -> bool {
    let mut ev = DeviceEvents::default();
    let raised = rtc.tick(now_ns, &mut ev);
    if raised {
        assert_eq!((ev.raise, ev.lower), (1 << IRQ, 1 << IRQ));
    } else {
        assert_eq!(ev, DeviceEvents::default());
    }
    raised
}

#[test]
fn known_epoch_reads_in_bcd() {
    let mut rtc = Rtc::new(EPOCH);
    assert_eq!(rtc.validate(), Ok(()));
    assert_eq!(
        clock(&mut rtc, 0),
        [0x06, 0x45, 0x03, 0x04, 0x25, 0x11, 0x26, 0x20]
    );
    // Within the same second nothing changes; the next second does.
    assert_eq!(read(&mut rtc, REG_SECONDS, S - 1), 0x06);
    assert_eq!(read(&mut rtc, REG_SECONDS, S), 0x07);
    // 54 s later: 03:46:00.
    assert_eq!(clock(&mut rtc, 54 * S + 5)[..3], [0x00, 0x46, 0x03]);
    assert_eq!(read(&mut rtc, REG_A, 55 * S), 0x26);
    assert_eq!(read(&mut rtc, REG_B, 55 * S), 0x02);
    assert_eq!(read(&mut rtc, REG_D, 55 * S), D_VRT);
}

#[test]
fn known_epoch_reads_in_binary() {
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, B_DM_BINARY | B_24H, 0);
    assert_eq!(clock(&mut rtc, 0), [6, 45, 3, 4, 25, 11, 26, 20]);
    assert_eq!(
        clock(&mut rtc, 3600 * S * 20),
        [6, 45, 23, 4, 25, 11, 26, 20]
    );
    assert_eq!(
        clock(&mut rtc, 3600 * S * 21),
        [6, 45, 0, 5, 26, 11, 26, 20]
    );
}

#[test]
fn twelve_hour_mode() {
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, 0, 0); // BCD, 12-hour
    let hour_at = |rtc: &mut Rtc, h: u64| read(rtc, REG_HOURS, (h * 3600 - 3 * 3600) * S);
    assert_eq!(hour_at(&mut rtc, 3), 0x03);
    assert_eq!(hour_at(&mut rtc, 11), 0x11);
    assert_eq!(hour_at(&mut rtc, 12), 0x92, "noon is 12 PM");
    assert_eq!(hour_at(&mut rtc, 15), 0x83);
    assert_eq!(hour_at(&mut rtc, 23), 0x91);
    assert_eq!(hour_at(&mut rtc, 24), 0x12, "midnight is 12 AM");
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, B_DM_BINARY, 0); // binary, 12-hour
    assert_eq!(hour_at(&mut rtc, 3), 3);
    assert_eq!(hour_at(&mut rtc, 15), 0x83);
    assert_eq!(hour_at(&mut rtc, 22), 0x8a);
    assert_eq!(hour_at(&mut rtc, 24), 12);
}

#[test]
fn date_rollover_at_month_year_and_leap_days() {
    // (epoch of 23:59:59 on the day, date fields then, date fields a second later)
    let cases: [(u64, [u8; 4], [u8; 4]); 6] = [
        // 2026-01-31 -> 2026-02-01
        (
            1_769_903_999,
            [0x31, 0x01, 0x26, 0x20],
            [0x01, 0x02, 0x26, 0x20],
        ),
        // 2026-12-31 -> 2027-01-01
        (
            1_798_761_599,
            [0x31, 0x12, 0x26, 0x20],
            [0x01, 0x01, 0x27, 0x20],
        ),
        // 2028-02-28 -> 2028-02-29 (leap year)
        (
            1_835_395_199,
            [0x28, 0x02, 0x28, 0x20],
            [0x29, 0x02, 0x28, 0x20],
        ),
        // 2000-02-28 -> 2000-02-29 (divisible by 400: leap)
        (
            951_782_399,
            [0x28, 0x02, 0x00, 0x20],
            [0x29, 0x02, 0x00, 0x20],
        ),
        // 2100-02-28 -> 2100-03-01 (divisible by 100: not leap)
        (
            4_107_542_399,
            [0x28, 0x02, 0x00, 0x21],
            [0x01, 0x03, 0x00, 0x21],
        ),
        // 2099-12-31 -> 2100-01-01: the century register carries
        (
            4_102_444_799,
            [0x31, 0x12, 0x99, 0x20],
            [0x01, 0x01, 0x00, 0x21],
        ),
    ];
    for (epoch, before, after) in cases {
        let mut rtc = Rtc::new(epoch);
        let date = |rtc: &mut Rtc, now| {
            let c = clock(rtc, now);
            [c[4], c[5], c[6], c[7]]
        };
        assert_eq!(clock(&mut rtc, 0)[..3], [0x59, 0x59, 0x23], "{epoch}");
        assert_eq!(date(&mut rtc, 0), before, "{epoch}");
        assert_eq!(clock(&mut rtc, S)[..3], [0x00, 0x00, 0x00], "{epoch}");
        assert_eq!(date(&mut rtc, S), after, "{epoch}");
    }
    // 2028-02-29 rolls into March.
    let mut rtc = Rtc::new(1_835_395_199 + SECS_PER_DAY);
    assert_eq!(clock(&mut rtc, S)[4..6], [0x01, 0x03]);
}

#[test]
fn calendar_matches_counting_days_one_by_one() {
    let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
    for days in 0..(250 * 366) {
        assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
        assert_eq!(days_from_civil(y, m, d), days);
        d += 1;
        if d > month_days(y, m) {
            d = 1;
            m += 1;
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
    }
    assert_eq!(civil_from_days(MAX_EPOCH / SECS_PER_DAY), (9999, 12, 31));
    // Year boundaries over many 400-year cycles (the estimate is never a year late).
    for year in 1970..20_000 {
        let first = days_from_civil(year, 1, 1);
        assert_eq!(civil_from_days(first), (year, 1, 1));
        assert_eq!(
            civil_from_days(first + 364),
            (year, 12, if is_leap(year) { 30 } else { 31 })
        );
    }
    // Far beyond the clock's range, still exact and quick.
    let far = days_from_civil(1_000_000_000, 12, 31);
    assert_eq!(civil_from_days(far), (1_000_000_000, 12, 31));
    assert_eq!(civil_from_days(far + 1), (1_000_000_001, 1, 1));
    assert_eq!(DateTime::from_epoch(u64::MAX).second, (u64::MAX % 60) as u8);
    assert_eq!(
        DateTime::from_epoch(0).weekday,
        5,
        "1970-01-01 was a Thursday"
    );
    assert_eq!(
        DateTime::from_epoch(EPOCH),
        DateTime {
            year: 2026,
            month: 11,
            day: 25,
            hour: 3,
            minute: 45,
            second: 6,
            weekday: 4,
        }
    );
}

#[test]
fn uip_is_set_for_the_last_244_us_of_each_second() {
    let mut rtc = Rtc::new(EPOCH);
    let uip = |rtc: &mut Rtc, now| read(rtc, REG_A, now) & A_UIP != 0;
    assert!(!uip(&mut rtc, 0));
    assert!(!uip(&mut rtc, S - UIP_NS - 1));
    assert!(uip(&mut rtc, S - UIP_NS));
    assert!(uip(&mut rtc, S - 1));
    assert!(!uip(&mut rtc, S));
    assert!(uip(&mut rtc, 5 * S + S - 100_000));
    // A writer cannot set UIP, and the rest of register A reads back.
    write(&mut rtc, REG_A, 0xa6, 6 * S);
    assert_eq!(read(&mut rtc, REG_A, 6 * S), 0x26);
    // Linux's wait loop: poll UIP every 10 us from just inside the window; it falls,
    // and the seconds read right after belong to the new second.
    let mut now = 7 * S + S - 200_000;
    let mut polls = 0;
    while uip(&mut rtc, now) {
        now += 10_000;
        polls += 1;
        assert!(polls < 100);
    }
    assert_eq!(now, 8 * S);
    assert_eq!(read(&mut rtc, REG_SECONDS, now), 0x14);
    // While SET holds the clock, UIP is clear.
    write(&mut rtc, REG_B, B_SET | B_24H, 9 * S);
    assert!(!uip(&mut rtc, 9 * S + S - 1000));
}

#[test]
fn linux_get_time_sequence() {
    // mc146818_get_time: wait for UIP to clear, read the fields and register B, check
    // UIP again.
    let mut rtc = Rtc::new(EPOCH);
    let mut now = 3 * S - 100_000; // inside the UIP window
    while read(&mut rtc, REG_A, now) & A_UIP != 0 {
        now += 1_000_000; // mdelay(1)
    }
    let fields = clock(&mut rtc, now);
    let control = read(&mut rtc, REG_B, now);
    assert_eq!(read(&mut rtc, REG_A, now) & A_UIP, 0);
    assert_eq!(control & B_DM_BINARY, 0, "BCD");
    assert_eq!(fields, [0x09, 0x45, 0x03, 0x04, 0x25, 0x11, 0x26, 0x20]);
}

#[test]
fn register_c_flags_are_derived_and_cleared_by_reading() {
    let mut rtc = Rtc::new(EPOCH);
    // Nothing has happened yet at VM start.
    assert_eq!(read(&mut rtc, REG_C, 0), 0);
    // 1024 Hz periodic rate (register A = 0x26): PF after 1/1024 s, UF after a second.
    assert_eq!(read(&mut rtc, REG_C, 500_000), 0);
    assert_eq!(read(&mut rtc, REG_C, 1_000_000), C_PF);
    assert_eq!(read(&mut rtc, REG_C, 1_000_001), 0, "read clears");
    assert_eq!(read(&mut rtc, REG_C, S + 1), C_PF | C_UF);
    assert_eq!(read(&mut rtc, REG_C, S + 2), 0);
    // No interrupt is enabled, so IRQF stays clear, and nothing is due on IRQ 8.
    assert_eq!(rtc.next_irq8_ns(), None);
    // Writes to C and D are ignored.
    write(&mut rtc, REG_C, 0xff, S + 3);
    write(&mut rtc, REG_D, 0x00, S + 3);
    assert_eq!(read(&mut rtc, REG_C, S + 4), 0);
    assert_eq!(read(&mut rtc, REG_D, S + 4), D_VRT);
    // With the rate off, only UF.
    write(&mut rtc, REG_A, 0x20, S + 5);
    assert_eq!(read(&mut rtc, REG_C, 3 * S), C_UF);
    // Flags gathered before a register change are kept until read.
    write(&mut rtc, REG_B, B_24H | B_DM_BINARY, 4 * S + 10);
    assert_eq!(read(&mut rtc, REG_C, 4 * S + 20), C_UF);
    assert_eq!(rtc.validate(), Ok(()));
}

#[test]
fn update_interrupt_on_irq8() {
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, B_UIE | B_24H, 100);
    assert_eq!(rtc.next_irq8_ns(), Some(S));
    assert!(!tick(&mut rtc, S - 1));
    assert!(tick(&mut rtc, S));
    // Raised until register C is read: no second edge.
    assert_eq!(rtc.next_irq8_ns(), None);
    assert!(!tick(&mut rtc, 5 * S));
    assert_eq!(read(&mut rtc, REG_C, 5 * S + 7), C_IRQF | C_PF | C_UF);
    assert_eq!(rtc.next_irq8_ns(), Some(6 * S));
    assert!(tick(&mut rtc, 6 * S + 3));
    assert_eq!(rtc.validate(), Ok(()));
}

#[test]
fn periodic_interrupt_coalesces_missed_ticks() {
    let mut rtc = Rtc::new(EPOCH);
    // Rate 15: 2 Hz. Enable PIE.
    write(&mut rtc, REG_A, 0x2f, 0);
    write(&mut rtc, REG_B, B_PIE | B_24H, 0);
    assert_eq!(rtc.next_irq8_ns(), Some(S / 2));
    assert!(tick(&mut rtc, S / 2));
    assert_eq!(read(&mut rtc, REG_C, S / 2 + 1), C_IRQF | C_PF);
    assert_eq!(rtc.next_irq8_ns(), Some(S));
    // Late by ten periods: one interrupt.
    assert!(tick(&mut rtc, 6 * S));
    assert!(!tick(&mut rtc, 6 * S));
    assert_eq!(read(&mut rtc, REG_C, 6 * S), C_IRQF | C_PF | C_UF);
    assert_eq!(rtc.next_irq8_ns(), Some(6 * S + S / 2));
    // Rate 6 (1024 Hz): the deadline is the first nanosecond of the 32 kHz tick.
    write(&mut rtc, REG_A, 0x26, 7 * S);
    let _ = read(&mut rtc, REG_C, 7 * S);
    assert_eq!(rtc.next_irq8_ns(), Some(7 * S + 976_563));
    // An enabled flag already set is due at once.
    write(&mut rtc, REG_B, B_24H, 7 * S + 2_000_000);
    assert_eq!(rtc.next_irq8_ns(), None);
    write(&mut rtc, REG_B, B_PIE | B_24H, 7 * S + 3_000_000);
    assert_eq!(rtc.next_irq8_ns(), Some(7 * S + 3_000_000));
}

#[test]
fn alarm_flag_and_interrupt() {
    let mut rtc = Rtc::new(EPOCH); // 03:45:06
    write(&mut rtc, REG_A, 0x20, 0); // no periodic flag, to keep C simple
    write(&mut rtc, REG_ALARM_HOURS, 0x03, 0);
    write(&mut rtc, REG_ALARM_MINUTES, 0x45, 0);
    write(&mut rtc, REG_ALARM_SECONDS, 0x10, 0);
    assert_eq!(read(&mut rtc, REG_ALARM_SECONDS, 0), 0x10);
    write(&mut rtc, REG_B, B_AIE | B_24H, 0);
    assert_eq!(rtc.next_irq8_ns(), Some(4 * S));
    assert_eq!(read(&mut rtc, REG_C, 3 * S), C_UF);
    assert!(tick(&mut rtc, 4 * S));
    assert_eq!(read(&mut rtc, REG_C, 4 * S), C_IRQF | C_AF | C_UF);
    // Next match: tomorrow at the same time.
    assert_eq!(rtc.next_irq8_ns(), Some((4 + SECS_PER_DAY) * S));
    // Don't-care hours and minutes: every minute at :30.
    write(&mut rtc, REG_ALARM_HOURS, 0xc0, 5 * S);
    write(&mut rtc, REG_ALARM_MINUTES, 0xff, 5 * S);
    write(&mut rtc, REG_ALARM_SECONDS, 0x30, 5 * S);
    assert_eq!(rtc.next_irq8_ns(), Some(24 * S));
    let _ = read(&mut rtc, REG_C, 30 * S);
    assert_eq!(rtc.next_irq8_ns(), Some(84 * S));
    // All don't-care: every second.
    write(&mut rtc, REG_ALARM_SECONDS, 0xc0, 31 * S);
    assert_eq!(rtc.next_irq8_ns(), Some(32 * S));
    // An impossible alarm never fires (flags without AIE do not count either).
    write(&mut rtc, REG_ALARM_SECONDS, 0x61, 31 * S);
    let _ = read(&mut rtc, REG_C, 31 * S);
    assert_eq!(rtc.next_irq8_ns(), None);
    assert_eq!(read(&mut rtc, REG_C, 1000 * S), C_UF);
}

#[test]
fn alarm_in_twelve_hour_mode() {
    let mut rtc = Rtc::new(EPOCH); // 03:45:06
    write(&mut rtc, REG_A, 0x20, 0);
    write(&mut rtc, REG_B, B_AIE, 0); // BCD, 12-hour
    write(&mut rtc, REG_ALARM_HOURS, 0x83, 0); // 3 PM
    write(&mut rtc, REG_ALARM_MINUTES, 0x00, 0);
    write(&mut rtc, REG_ALARM_SECONDS, 0x00, 0);
    // 15:00:00 is 11 h 14 min 54 s away.
    assert_eq!(rtc.next_irq8_ns(), Some((11 * 3600 + 14 * 60 + 54) * S));
}

#[test]
fn nmi_bit_and_index_port() {
    let mut rtc = Rtc::new(EPOCH);
    let mut ev = DeviceEvents::default();
    rtc.write(INDEX_PORT, 1, 0x80 | u32::from(REG_B), 0, &mut ev);
    assert_eq!(rtc.nmi_disabled, 1);
    assert_eq!(rtc.index, REG_B);
    assert_eq!(rtc.read(INDEX_PORT, 1, 0, &mut ev), 0x8b);
    assert_eq!(rtc.read(DATA_PORT, 1, 0, &mut ev), 0x02);
    rtc.write(INDEX_PORT, 1, 0x0d, 0, &mut ev);
    assert_eq!(rtc.nmi_disabled, 0);
    assert_eq!(rtc.read(DATA_PORT, 1, 0, &mut ev), 0x80);
    // The index does not move on data accesses.
    assert_eq!(rtc.read(DATA_PORT, 1, 0, &mut ev), 0x80);
    assert_eq!(ev, DeviceEvents::default());
    assert_eq!(rtc.validate(), Ok(()));
}

#[test]
fn cmos_ram_is_read_write_and_preserved() {
    let mut rtc = Rtc::new(EPOCH);
    let ram = (0x0e..0x80u8).filter(|&r| r != REG_CENTURY);
    for r in ram.clone() {
        write(&mut rtc, r, r ^ 0x5a, 0);
    }
    for r in [REG_ALARM_SECONDS, REG_ALARM_MINUTES, REG_ALARM_HOURS] {
        write(&mut rtc, r, 0x40 + r, 0);
    }
    // As if carried across a hypervisor reboot in the arena: a plain copy.
    let mut rtc = core::convert::identity(rtc);
    for r in ram {
        assert_eq!(read(&mut rtc, r, 10 * S), r ^ 0x5a, "register {r:#x}");
    }
    for r in [REG_ALARM_SECONDS, REG_ALARM_MINUTES, REG_ALARM_HOURS] {
        assert_eq!(read(&mut rtc, r, 10 * S), 0x40 + r);
    }
    // The clock kept running meanwhile.
    assert_eq!(read(&mut rtc, REG_SECONDS, 10 * S), 0x16);
    assert_eq!(rtc.validate(), Ok(()));
}

/// Linux's mc146818_set_time on x86: set SET, put the divider in reset, write the fields
/// (BCD here), restore register B, then register A.
#[test]
fn set_time_like_linux() {
    let mut rtc = Rtc::new(EPOCH);
    let t = 100 * S + 123_456_789;
    let control = read(&mut rtc, REG_B, t);
    write(&mut rtc, REG_B, control | B_SET, t);
    let freq = read(&mut rtc, REG_A, t);
    write(&mut rtc, REG_A, freq | 0x70, t);
    // While halted, the registers hold the time of the halt and do not move.
    assert_eq!(read(&mut rtc, REG_SECONDS, t + S / 2), 0x46);
    // 2030-06-15 12:34:56
    for (reg, v) in [
        (REG_YEAR, 0x30),
        (REG_MONTH, 0x06),
        (REG_DAY_OF_MONTH, 0x15),
        (REG_HOURS, 0x12),
        (REG_MINUTES, 0x34),
        (REG_SECONDS, 0x56),
        (REG_CENTURY, 0x20),
    ] {
        write(&mut rtc, reg, v, t + S);
    }
    assert_eq!(read(&mut rtc, REG_SECONDS, t + 2 * S), 0x56);
    write(&mut rtc, REG_B, control, t + 2 * S);
    // Still halted: the divider is in reset.
    assert_eq!(read(&mut rtc, REG_SECONDS, t + 3 * S), 0x56);
    let start = t + 4 * S;
    write(&mut rtc, REG_A, freq, start);
    assert_eq!(rtc.validate(), Ok(()));
    assert_eq!(
        clock(&mut rtc, start),
        [0x56, 0x34, 0x12, 0x07, 0x15, 0x06, 0x30, 0x20],
        "2030-06-15 was a Saturday"
    );
    assert_eq!(read(&mut rtc, REG_SECONDS, start + S - 1), 0x56);
    assert_eq!(read(&mut rtc, REG_SECONDS, start + S), 0x57);
    assert_eq!(rtc.epoch_at(start), 1_907_757_296);
    // UIP follows the new second boundary.
    assert_eq!(read(&mut rtc, REG_A, start + S - 1000) & A_UIP, A_UIP);
}

#[test]
fn set_time_in_binary_twelve_hour_mode() {
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, B_SET | B_DM_BINARY, 0);
    // The snapshot is in the current format: 3 AM binary.
    assert_eq!(read(&mut rtc, REG_HOURS, 0), 3);
    write(&mut rtc, REG_HOURS, 0x80 | 11, 0); // 11 PM
    write(&mut rtc, REG_DAY_OF_MONTH, 31, 0);
    write(&mut rtc, REG_MONTH, 12, 0);
    write(&mut rtc, REG_YEAR, 99, 0);
    write(&mut rtc, REG_CENTURY, 20, 0);
    write(&mut rtc, REG_MINUTES, 59, 0);
    write(&mut rtc, REG_SECONDS, 59, 0);
    write(&mut rtc, REG_B, B_DM_BINARY, 10);
    assert_eq!(rtc.epoch_at(10), 4_102_444_799);
    assert_eq!(read(&mut rtc, REG_HOURS, 10), 0x8b);
    assert_eq!(clock(&mut rtc, 10 + S), [0, 0, 12, 6, 1, 1, 0, 21]);
}

#[test]
fn out_of_range_fields_are_taken_at_face_value() {
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, B_SET | B_24H | B_DM_BINARY, 0);
    write(&mut rtc, REG_MONTH, 2, 0);
    write(&mut rtc, REG_DAY_OF_MONTH, 30, 0); // 2026-02-30 is 2026-03-02
    write(&mut rtc, REG_B, B_24H | B_DM_BINARY, 0);
    assert_eq!(clock(&mut rtc, 0)[4..6], [2, 3]);
    // Before 1970: clamped to the epoch.
    write(&mut rtc, REG_B, B_SET | B_24H | B_DM_BINARY, 0);
    write(&mut rtc, REG_CENTURY, 19, 0);
    write(&mut rtc, REG_YEAR, 60, 0);
    write(&mut rtc, REG_B, B_24H | B_DM_BINARY, 0);
    assert_eq!(rtc.epoch_at(0), 0);
    assert_eq!(Rtc::new(u64::MAX).epoch_at(0), MAX_EPOCH);
    assert_eq!(rtc.validate(), Ok(()));
}

#[test]
fn writing_a_time_register_while_running() {
    let mut rtc = Rtc::new(EPOCH);
    let t = 2 * S + 400_000_000; // 03:45:08.4
    write(&mut rtc, REG_MINUTES, 0x50, t);
    assert_eq!(clock(&mut rtc, t)[..3], [0x08, 0x50, 0x03]);
    // The phase within the second is kept: the next update is still at 3 s.
    assert_eq!(read(&mut rtc, REG_SECONDS, 3 * S - 1), 0x08);
    assert_eq!(read(&mut rtc, REG_SECONDS, 3 * S), 0x09);
    assert_eq!(rtc.validate(), Ok(()));
}

#[test]
fn wide_accesses_are_split_into_bytes() {
    let mut rtc = Rtc::new(EPOCH);
    let mut ev = DeviceEvents::default();
    // A 16-bit write to 0x70: index 0x20, then data 0xab.
    rtc.write(INDEX_PORT, 2, 0xab20, 0, &mut ev);
    assert_eq!(read(&mut rtc, 0x20, 0), 0xab);
    // A 16-bit read: index then data.
    assert_eq!(rtc.read(INDEX_PORT, 2, 0, &mut ev), 0xab20);
    // A 32-bit read at 0x71: data, then three unclaimed ports.
    assert_eq!(rtc.read(DATA_PORT, 4, 0, &mut ev), 0xffff_ffab);
    assert_eq!(Rtc::PORTS, &[(0x70, 0x71)]);
}

#[test]
fn validate_catches_corruption() {
    let good = Rtc::new(EPOCH);
    assert_eq!(good.validate(), Ok(()));
    let check = |f: fn(&mut Rtc)| {
        let mut rtc = good;
        f(&mut rtc);
        assert_eq!(rtc.validate().unwrap_err().device, "rtc");
    };
    check(|r| r.index = 0x80);
    check(|r| r.nmi_disabled = 2);
    check(|r| r.irq_raised = 2);
    check(|r| r.c_flags = 0x80);
    check(|r| r.cmos[usize::from(REG_A)] |= A_UIP);
    check(|r| r.cmos[usize::from(REG_C)] = 1);
    check(|r| r.base_secs = MAX_EPOCH + 1);
    check(|r| r.base_ns = 5);
}

#[test]
fn transactions_replay_identically() {
    let mut rtc = Rtc::new(EPOCH);
    write(&mut rtc, REG_B, B_UIE | B_24H, 0);
    let saved = rtc;
    let (mut a, mut b) = (saved, saved);
    assert_eq!(read(&mut a, REG_C, 3 * S), read(&mut b, REG_C, 3 * S));
    assert_eq!(a, b);
}

fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn random_accesses_keep_the_state_valid() {
    let mut seed = 0x5eed;
    let mut rtc = Rtc::new(EPOCH);
    let mut now = 0u64;
    let mut ev = DeviceEvents::default();
    let registers = [
        0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x0a, 0x0b, 0x0c, 0x0d, 0x32, 0x40,
    ];
    for step in 0..100_000 {
        now += lcg(&mut seed) % 300_000_000;
        let r = lcg(&mut seed);
        let reg = registers[(r >> 8) as usize % registers.len()];
        // Mostly sensible register A values, so that the clock runs most of the time.
        let value = match reg {
            REG_A => [0x26, 0x2f, 0x20, 0x76, 0x23][(r >> 16) as usize % 5],
            _ => (r >> 16) as u8,
        };
        match r % 4 {
            0 => write(&mut rtc, reg, value, now),
            1 => {
                let _ = read(&mut rtc, reg, now);
            }
            2 => {
                let _ = rtc.read(INDEX_PORT, 2, now, &mut ev);
            }
            _ => {
                let before = rtc.next_irq8_ns();
                assert_eq!(tick(&mut rtc, now), before.is_some_and(|t| t <= now));
                if before.is_some_and(|t| t <= now) {
                    assert_eq!(rtc.next_irq8_ns(), None);
                }
            }
        }
        assert_eq!(rtc.validate(), Ok(()), "step {step}: {rtc:?}");
    }
}
