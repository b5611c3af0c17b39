use super::*;

const CH0: u16 = 0x40;
const CH2: u16 = 0x42;
const MODE: u16 = 0x43;

/// Linux's divisor for HZ: PIT_TICK_RATE / HZ, rounded to nearest.
fn latch_for(hz: u64) -> u16 {
    ((PIT_HZ + hz / 2) / hz) as u16
}

/// Guest time of PIT tick `t` (the first nanosecond at which it is reached).
fn at(t: u64) -> u64 {
    ticks_to_ns(t)
}

fn outb(pit: &mut Pit, port: u16, value: u8, now_ns: u64) {
    let mut ev = DeviceEvents::default();
    pit.write(port, 1, u32::from(value), now_ns, &mut ev);
    assert_eq!(ev, DeviceEvents::default(), "port writes raise nothing");
}

fn inb(pit: &mut Pit, port: u16, now_ns: u64) -> u8 {
    let mut ev = DeviceEvents::default();
    let v = pit.read(port, 1, now_ns, &mut ev);
    assert!(v <= 0xff);
    assert_eq!(ev, DeviceEvents::default(), "port reads raise nothing");
    v as u8
}

/// Linux's `pit_read()`-style latched read of a channel in low/high access.
fn latched_count(pit: &mut Pit, channel: u8, now_ns: u64) -> u16 {
    outb(pit, MODE, channel << 6, now_ns);
    let lo = inb(pit, CH0 + u16::from(channel), now_ns);
    let hi = inb(pit, CH0 + u16::from(channel), now_ns);
    u16::from_le_bytes([lo, hi])
}

/// Programs channel 0 the way Linux's i8253 clockevent does for periodic mode:
/// control word (channel 0, low/high, mode 2 or 3), then the divisor low and high.
fn program_periodic(pit: &mut Pit, mode: u8, divisor: u16, now_ns: u64) {
    outb(pit, MODE, 0x30 | (mode << 1), now_ns);
    outb(pit, CH0, divisor as u8, now_ns);
    outb(pit, CH0, (divisor >> 8) as u8, now_ns);
}

/// A read-back status byte: output, null count, access mode, mode, BCD.
fn status(out: u8, null: u8, access: u8, mode: u8, bcd: u8) -> u8 {
    out << 7 | null << 6 | access << 4 | mode << 1 | bcd
}

fn tick(pit: &mut Pit, now_ns: u64) -> (u64, bool) {
    let mut ev = DeviceEvents::default();
    let missed = pit.tick(now_ns, &mut ev);
    let pulsed = ev.raise == 1 << IRQ && ev.lower == 1 << IRQ;
    if !pulsed {
        assert_eq!(ev, DeviceEvents::default());
    }
    (missed, pulsed)
}

#[test]
fn tick_conversions_are_exact_inverses() {
    assert_eq!(ns_to_ticks(0), 0);
    assert_eq!(ns_to_ticks(1_000_000_000), PIT_HZ);
    for t in [0u64, 1, 2, 1193, 65_536, PIT_HZ, 123_456_789_012] {
        let ns = ticks_to_ns(t);
        assert_eq!(ns_to_ticks(ns), t, "tick {t}");
        if ns > 0 {
            assert!(ns_to_ticks(ns - 1) < t, "tick {t} is reached first at {ns}");
        }
    }
    assert_eq!(ticks_to_ns(u64::MAX), u64::MAX);
    assert_eq!(ns_to_ticks(u64::MAX), 22_010_322_987_356_910);
}

#[test]
fn power_on_state_is_valid_and_bios_like() {
    let mut pit = Pit::new();
    assert_eq!(pit, Pit::default());
    assert_eq!(pit.validate(), Ok(()));
    // Channel 0: mode 3, 65536, IRQ 0 at 18.2 Hz from VM start.
    assert_eq!(pit.next_irq0_ns(), Some(at(65_536)));
    // Channel 2's gate is low: its count does not move.
    assert_eq!(latched_count(&mut pit, 2, 0), 0);
    assert_eq!(latched_count(&mut pit, 2, 5_000_000), 0);
    // Port 0x61: gate low, output high (mode 3 with the gate low).
    assert_eq!(inb(&mut pit, PORT_61, 5_000_000) & 0x21, 0x20);
    assert_eq!(Pit::PORTS, &[(0x40, 0x43), (0x61, 0x61)]);
}

#[test]
fn linux_periodic_setup_mode2_for_hz_1000() {
    let divisor = latch_for(1000);
    assert_eq!(divisor, 1193);
    let mut pit = Pit::new();
    let t0 = 7_654_321; // any time
    program_periodic(&mut pit, 2, divisor, at(t0));
    assert_eq!(pit.validate(), Ok(()));
    // IRQ 0 every 1193 PIT ticks from the load.
    let d = u64::from(divisor);
    assert_eq!(pit.next_irq0_ns(), Some(at(t0 + d)));
    // Read-back status: output high, count loaded, low/high, mode 2, binary.
    outb(&mut pit, MODE, 0xe2, at(t0 + 10));
    assert_eq!(inb(&mut pit, CH0, at(t0 + 10)), status(1, 0, 3, 2, 0));
    for k in 1..=5 {
        let (missed, pulsed) = tick(&mut pit, at(t0 + k * d));
        assert!(pulsed, "period {k}");
        assert_eq!(missed, 0);
        assert_eq!(pit.next_irq0_ns(), Some(at(t0 + (k + 1) * d)));
    }
}

#[test]
fn linux_periodic_setup_mode3_for_hz_100() {
    let divisor = latch_for(100);
    assert_eq!(divisor, 11_932);
    let mut pit = Pit::new();
    let t0 = 1000;
    program_periodic(&mut pit, 3, divisor, at(t0));
    let d = u64::from(divisor);
    assert_eq!(pit.next_irq0_ns(), Some(at(t0 + d)));
    // Nothing is due just before the edge.
    assert_eq!(tick(&mut pit, at(t0 + d) - 1), (0, false));
    assert_eq!(tick(&mut pit, at(t0 + d)), (0, true));
    assert_eq!(pit.next_irq0_ns(), Some(at(t0 + 2 * d)));
}

#[test]
fn mode2_count_decreases_with_time_and_wraps() {
    let mut pit = Pit::new();
    let d = 1193u64;
    program_periodic(&mut pit, 2, d as u16, at(0));
    assert_eq!(latched_count(&mut pit, 0, at(0)), 1193);
    assert_eq!(latched_count(&mut pit, 0, at(1)), 1192);
    assert_eq!(latched_count(&mut pit, 0, at(1000)), 193);
    assert_eq!(latched_count(&mut pit, 0, at(1192)), 1);
    // Reload at the end of the period.
    assert_eq!(latched_count(&mut pit, 0, at(1193)), 1193);
    assert_eq!(latched_count(&mut pit, 0, at(1193 + 500)), 693);
    // The output is low only for the tick at count 1 (read-back status bit 7).
    let out_bit = |pit: &mut Pit, t: u64| {
        outb(pit, MODE, 0xe2, at(t));
        inb(pit, CH0, at(t)) >> 7
    };
    assert_eq!(out_bit(&mut pit, d * 3 - 2), 1);
    assert_eq!(out_bit(&mut pit, d * 3 - 1), 0);
    assert_eq!(out_bit(&mut pit, d * 3), 1);
    // Long after: still periodic.
    let far = 1_000_000 * d + 17;
    assert_eq!(latched_count(&mut pit, 0, at(far)), 1193 - 17);
    assert_eq!(out_bit(&mut pit, far), 1);
}

#[test]
fn mode3_counts_by_two_and_outputs_a_square_wave() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 3, 1000, at(0));
    let status_out = |pit: &mut Pit, t: u64| {
        outb(pit, MODE, 0xe2, at(t));
        inb(pit, CH0, at(t)) >> 7
    };
    assert_eq!(latched_count(&mut pit, 0, at(0)), 1000);
    assert_eq!(latched_count(&mut pit, 0, at(1)), 998);
    assert_eq!(status_out(&mut pit, 499), 1);
    assert_eq!(latched_count(&mut pit, 0, at(499)), 2);
    // Second half: low, counting down from the top again.
    assert_eq!(status_out(&mut pit, 500), 0);
    assert_eq!(latched_count(&mut pit, 0, at(500)), 1000);
    assert_eq!(latched_count(&mut pit, 0, at(999)), 2);
    assert_eq!(status_out(&mut pit, 999), 0);
    assert_eq!(status_out(&mut pit, 1000), 1);
    // Odd divisor: high one tick longer than low.
    program_periodic(&mut pit, 3, 5, at(2000));
    let levels: Vec<u8> = (2000..2010).map(|t| status_out(&mut pit, t)).collect();
    assert_eq!(levels, [1, 1, 1, 0, 0, 1, 1, 1, 0, 0]);
}

#[test]
fn count_zero_means_65536() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, 0, at(0));
    assert_eq!(pit.next_irq0_ns(), Some(at(65_536)));
    assert_eq!(latched_count(&mut pit, 0, at(0)), 0);
    assert_eq!(latched_count(&mut pit, 0, at(1)), 0xffff);
    assert_eq!(latched_count(&mut pit, 0, at(65_535)), 1);
}

#[test]
fn latched_value_stays_until_read_fully() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, 0, at(0));
    outb(&mut pit, MODE, 0x00, at(0x1234)); // latch channel 0: count 0x10000 - 0x1234
                                            // A second latch before the first is read is ignored.
    outb(&mut pit, MODE, 0x00, at(0x2000));
    assert_eq!(inb(&mut pit, CH0, at(0x3000)), 0xcc);
    outb(&mut pit, MODE, 0x00, at(0x3000)); // still ignored: one byte left
    assert_eq!(inb(&mut pit, CH0, at(0x4000)), 0xed);
    // Fully read: reads follow the counter again (low then high, live).
    assert_eq!(inb(&mut pit, CH0, at(0x5000)), 0x00);
    assert_eq!(inb(&mut pit, CH0, at(0x5100)), 0xaf);
    // A new latch captures the current count.
    assert_eq!(latched_count(&mut pit, 0, at(0x6001)), 0x9fff);
}

#[test]
fn low_only_and_high_only_access() {
    let mut pit = Pit::new();
    // Channel 0, low byte only, mode 2: count 0x80.
    outb(&mut pit, MODE, 0x14, at(0));
    outb(&mut pit, CH0, 0x80, at(0));
    assert_eq!(pit.next_irq0_ns(), Some(at(0x80)));
    assert_eq!(inb(&mut pit, CH0, at(0x10)), 0x70);
    assert_eq!(inb(&mut pit, CH0, at(0x11)), 0x6f);
    outb(&mut pit, MODE, 0x00, at(0x20));
    assert_eq!(inb(&mut pit, CH0, at(0x30)), 0x60);
    // High byte only: count 0x0200.
    outb(&mut pit, MODE, 0x24, at(0x100));
    outb(&mut pit, CH0, 0x02, at(0x100));
    assert_eq!(pit.next_irq0_ns(), Some(at(0x300)));
    assert_eq!(inb(&mut pit, CH0, at(0x101)), 0x01);
    assert_eq!(inb(&mut pit, CH0, at(0x200)), 0x01);
    assert_eq!(inb(&mut pit, CH0, at(0x201)), 0x00);
}

#[test]
fn write_flip_flop_and_read_flip_flop_are_separate() {
    let mut pit = Pit::new();
    outb(&mut pit, MODE, 0x34, at(0));
    // Read the low byte only, then write both bytes: the write flip-flop is untouched.
    let _ = inb(&mut pit, CH0, at(0));
    outb(&mut pit, CH0, 0x00, at(10));
    outb(&mut pit, CH0, 0x10, at(10));
    assert_eq!(pit.next_irq0_ns(), Some(at(10 + 0x1000)));
    // The read flip-flop is at the high byte.
    assert_eq!(inb(&mut pit, CH0, at(10)), 0x10);
    assert_eq!(inb(&mut pit, CH0, at(11)), 0xff);
    // A control word resets both.
    outb(&mut pit, MODE, 0x34, at(20));
    outb(&mut pit, CH0, 0x00, at(20));
    outb(&mut pit, CH0, 0x20, at(20));
    assert_eq!(latched_count(&mut pit, 0, at(20)), 0x2000);
}

#[test]
fn read_back_status_and_count() {
    let mut pit = Pit::new();
    // Channel 2: low/high, mode 0, binary. Null count until the count is written.
    outb(&mut pit, MODE, 0xb0, at(0));
    outb(&mut pit, MODE, 0xe8, at(0)); // read-back status of channel 2
    assert_eq!(inb(&mut pit, CH2, at(0)), status(0, 1, 3, 0, 0));
    outb(&mut pit, PORT_61, 0x01, at(0)); // gate on
    outb(&mut pit, CH2, 100, at(0));
    outb(&mut pit, CH2, 0, at(0));
    // Count and status of channels 0 and 2 at once.
    outb(&mut pit, MODE, 0xca, at(40));
    // Status first, then the count; later latches do not disturb them.
    outb(&mut pit, MODE, 0xc8, at(90));
    assert_eq!(inb(&mut pit, CH2, at(150)), status(0, 0, 3, 0, 0));
    assert_eq!(inb(&mut pit, CH2, at(150)), 60);
    assert_eq!(inb(&mut pit, CH2, at(150)), 0);
    // Channel 2 is counting; its output rose at 100.
    outb(&mut pit, MODE, 0xe8, at(150));
    assert_eq!(inb(&mut pit, CH2, at(150)), status(1, 0, 3, 0, 0));
    // Channel 0 (power-on mode 3, 65536) was latched at tick 40 as well.
    assert_eq!(inb(&mut pit, CH0, at(500)), status(1, 0, 3, 3, 0));
    assert_eq!(
        u16::from_le_bytes([inb(&mut pit, CH0, at(500)), inb(&mut pit, CH0, at(500))]),
        0u16.wrapping_sub(80)
    );
    // Read-back of the count only leaves no status behind.
    outb(&mut pit, MODE, 0xd2, at(600));
    let lo = inb(&mut pit, CH0, at(700));
    let hi = inb(&mut pit, CH0, at(700));
    assert_eq!(u16::from_le_bytes([lo, hi]), 0u16.wrapping_sub(1200));
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn null_count_in_mode2_until_end_of_period() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, 1000, at(0));
    // New count while counting: loaded when the current period ends, at 1000.
    outb(&mut pit, CH0, 0xf4, at(300));
    outb(&mut pit, CH0, 0x01, at(300)); // 500
    outb(&mut pit, MODE, 0xe2, at(999));
    assert_eq!(inb(&mut pit, CH0, at(999)) & 0x40, 0x40);
    assert_eq!(latched_count(&mut pit, 0, at(999)), 1);
    assert_eq!(latched_count(&mut pit, 0, at(1000)), 500);
    outb(&mut pit, MODE, 0xe2, at(1000));
    assert_eq!(inb(&mut pit, CH0, at(1000)) & 0x40, 0);
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn count_written_while_counting_takes_effect_at_period_end() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, 1000, at(0));
    assert_eq!(tick(&mut pit, at(1000)), (0, true));
    outb(&mut pit, CH0, 0xf4, at(1300));
    outb(&mut pit, CH0, 0x01, at(1300)); // 500, from 2000
    assert_eq!(pit.validate(), Ok(()));
    assert_eq!(pit.next_irq0_ns(), Some(at(2000)));
    assert_eq!(latched_count(&mut pit, 0, at(1999)), 1);
    assert_eq!(latched_count(&mut pit, 0, at(2100)), 400);
    // Edges at 2000, 2500, 3000, 3500: catch up three missed ones at 3600.
    assert_eq!(tick(&mut pit, at(3600)), (3, true));
    assert_eq!(pit.next_irq0_ns(), Some(at(4000)));
    assert_eq!(latched_count(&mut pit, 0, at(4100)), 400);
}

#[test]
fn pending_count_catch_up_without_settling() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, 1000, at(0));
    outb(&mut pit, CH0, 0xf4, at(10));
    outb(&mut pit, CH0, 0x01, at(10));
    // The next edge (1000) is the last of the old period; then every 500.
    assert_eq!(pit.next_irq0_ns(), Some(at(1000)));
    // Jump over both: edges at 1000, 1500, 2000 are due.
    assert_eq!(tick(&mut pit, at(2200)), (2, true));
    assert_eq!(pit.next_irq0_ns(), Some(at(2500)));
}

#[test]
fn tick_catches_up_missed_periods_without_a_storm() {
    let mut pit = Pit::new();
    let d = 1193u64;
    program_periodic(&mut pit, 2, d as u16, at(0));
    assert_eq!(tick(&mut pit, 0), (0, false));
    assert_eq!(tick(&mut pit, at(d)), (0, true));
    // Late by a few ticks: still one edge.
    assert_eq!(tick(&mut pit, at(2 * d + 5)), (0, true));
    assert_eq!(pit.next_irq0_ns(), Some(at(3 * d)));
    // Descheduled for 10.5 periods: edges 3..=12 are due, one IRQ, nine missed.
    let now = at(12 * d + d / 2);
    assert_eq!(tick(&mut pit, now), (9, true));
    assert_eq!(tick(&mut pit, now), (0, false));
    let next = pit.next_irq0_ns().unwrap();
    assert!(next > now);
    assert_eq!(next, at(13 * d));
    // A huge jump (an hour) is handled in constant time.
    let hour = 3_600_000_000_000u64;
    let (missed, pulsed) = tick(&mut pit, hour);
    assert!(pulsed);
    assert_eq!(missed, ns_to_ticks(hour) / d - 13);
    assert!(pit.next_irq0_ns().unwrap() > hour);
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn mode0_interrupts_once() {
    let mut pit = Pit::new();
    // Linux's clockevent shutdown: mode 0, count 0.
    outb(&mut pit, MODE, 0x30, at(100));
    assert_eq!(pit.next_irq0_ns(), None);
    outb(&mut pit, CH0, 0, at(100));
    assert_eq!(pit.next_irq0_ns(), None, "no count until both bytes");
    outb(&mut pit, CH0, 0x10, at(100));
    assert_eq!(pit.next_irq0_ns(), Some(at(100 + 0x1000)));
    assert_eq!(tick(&mut pit, at(100 + 0x1000)), (0, true));
    assert_eq!(pit.next_irq0_ns(), None);
    // The counter keeps counting (wrapping) but the output stays high.
    assert_eq!(latched_count(&mut pit, 0, at(100 + 0x1001)), 0xffff);
    assert_eq!(tick(&mut pit, at(10_000)), (0, false));
    assert_eq!(pit.next_irq0_ns(), None);
    // A new count re-arms it.
    outb(&mut pit, CH0, 0x00, at(20_000));
    outb(&mut pit, CH0, 0x01, at(20_000));
    assert_eq!(pit.next_irq0_ns(), Some(at(20_000 + 0x100)));
}

#[test]
fn mode4_one_shot_as_linux_programs_it() {
    let mut pit = Pit::new();
    // Linux's oneshot: control word 0x38, then per event the delta low and high.
    outb(&mut pit, MODE, 0x38, at(0));
    assert_eq!(pit.next_irq0_ns(), None);
    outb(&mut pit, CH0, 0x2c, at(50));
    outb(&mut pit, CH0, 0x01, at(50)); // 300
                                       // The output pulses low when the count reaches 0 and rises a tick later.
    assert_eq!(pit.next_irq0_ns(), Some(at(50 + 300 + 1)));
    assert_eq!(tick(&mut pit, at(351)), (0, true));
    assert_eq!(pit.next_irq0_ns(), None);
    // The next event.
    outb(&mut pit, CH0, 0x64, at(400));
    outb(&mut pit, CH0, 0x00, at(400));
    assert_eq!(pit.next_irq0_ns(), Some(at(501)));
    // Reprogrammed before it fired: only the new deadline counts.
    outb(&mut pit, CH0, 0xe8, at(450));
    outb(&mut pit, CH0, 0x03, at(450));
    assert_eq!(pit.next_irq0_ns(), Some(at(450 + 1000 + 1)));
    assert_eq!(tick(&mut pit, at(600)), (0, false));
    assert_eq!(tick(&mut pit, at(5000)), (0, true));
    assert_eq!(pit.validate(), Ok(()));
}

/// arch/x86/kernel/tsc.c, pit_calibrate_tsc(): gate on and speaker off through port
/// 0x61, channel 2 mode 0 (control 0xb0), the latch count low then high, then poll port
/// 0x61 bit 5 until the output goes high.
#[test]
fn linux_pit_calibrate_tsc_sequence() {
    let mut pit = Pit::new();
    let t0 = 123_456;
    let latch: u16 = (PIT_HZ / (1000 / 10)) as u16; // 10 ms
    let v = inb(&mut pit, PORT_61, at(t0));
    outb(&mut pit, PORT_61, (v & !0x02) | 0x01, at(t0));
    outb(&mut pit, MODE, 0xb0, at(t0));
    outb(&mut pit, CH2, latch as u8, at(t0));
    outb(&mut pit, CH2, (latch >> 8) as u8, at(t0));
    // Poll every 1000 ns of guest time.
    let mut now = at(t0);
    let mut polls = 0u64;
    while inb(&mut pit, PORT_61, now) & 0x20 == 0 {
        now += 1000;
        polls += 1;
        assert!(polls < 1_000_000, "bit 5 never rose");
    }
    let elapsed_ticks = ns_to_ticks(now) - t0;
    assert!(
        elapsed_ticks >= u64::from(latch),
        "rose early: {elapsed_ticks}"
    );
    assert!(
        elapsed_ticks <= u64::from(latch) + 2,
        "rose late: {elapsed_ticks}"
    );
    // Bit 0 (gate) reads back, bit 1 (speaker) is off.
    assert_eq!(inb(&mut pit, PORT_61, now) & 0x23, 0x21);
    // Channel 0 is untouched and nothing else is due on IRQ 0 early.
    assert_eq!(pit.next_irq0_ns(), Some(at(65_536)));
    assert_eq!(pit.validate(), Ok(()));
}

/// arch/x86/kernel/tsc.c, quick_pit_calibrate(): gate on, channel 2 mode 0 from 0xffff,
/// then read the count (low/high, unlatched) and watch the high byte fall by one every
/// 256 ticks.
#[test]
fn linux_quick_pit_calibrate_sequence() {
    let mut pit = Pit::new();
    let v = inb(&mut pit, PORT_61, 0);
    outb(&mut pit, PORT_61, (v & !0x02) | 0x01, 0);
    outb(&mut pit, MODE, 0xb0, 0);
    outb(&mut pit, CH2, 0xff, 0);
    outb(&mut pit, CH2, 0xff, 0);
    let msb_at = |pit: &mut Pit, t: u64| {
        let _lo = inb(pit, CH2, at(t));
        inb(pit, CH2, at(t))
    };
    assert_eq!(msb_at(&mut pit, 1), 0xff);
    for k in 1..200u64 {
        assert_eq!(
            msb_at(&mut pit, k * 256 + 10),
            0xff - k as u8,
            "after {k} x 256 ticks"
        );
    }
    // 0xffff ticks after the load the output rises.
    assert_eq!(inb(&mut pit, PORT_61, at(0xfffe)) & 0x20, 0);
    assert_eq!(inb(&mut pit, PORT_61, at(0xffff)) & 0x20, 0x20);
}

#[test]
fn gate_suspends_and_resumes_mode0() {
    let mut pit = Pit::new();
    outb(&mut pit, MODE, 0xb0, at(0));
    outb(&mut pit, CH2, 0xe8, at(0));
    outb(&mut pit, CH2, 0x03, at(0)); // 1000, gate low: does not count
    assert_eq!(latched_count(&mut pit, 2, at(500)), 1000);
    outb(&mut pit, PORT_61, 0x01, at(500));
    assert_eq!(latched_count(&mut pit, 2, at(900)), 600);
    outb(&mut pit, PORT_61, 0x00, at(900));
    assert_eq!(latched_count(&mut pit, 2, at(5000)), 600);
    assert_eq!(inb(&mut pit, PORT_61, at(5000)) & 0x20, 0);
    outb(&mut pit, PORT_61, 0x01, at(10_000));
    assert_eq!(inb(&mut pit, PORT_61, at(10_599)) & 0x20, 0);
    assert_eq!(inb(&mut pit, PORT_61, at(10_600)) & 0x20, 0x20);
    assert_eq!(latched_count(&mut pit, 2, at(10_601)), 0xffff);
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn mode0_first_byte_stops_count_and_lowers_output() {
    let mut pit = Pit::new();
    outb(&mut pit, PORT_61, 0x01, 0);
    outb(&mut pit, MODE, 0xb0, 0);
    outb(&mut pit, CH2, 10, 0);
    outb(&mut pit, CH2, 0, 0);
    assert_eq!(inb(&mut pit, PORT_61, at(20)) & 0x20, 0x20);
    outb(&mut pit, CH2, 0x00, at(30)); // first byte
    assert_eq!(inb(&mut pit, PORT_61, at(40)) & 0x20, 0);
    assert_eq!(
        latched_count(&mut pit, 2, at(40)),
        latched_count(&mut pit, 2, at(80))
    );
    outb(&mut pit, CH2, 0x01, at(100)); // 256
    assert_eq!(latched_count(&mut pit, 2, at(110)), 246);
}

#[test]
fn gate_in_modes_2_and_3_restarts_the_count() {
    let mut pit = Pit::new();
    outb(&mut pit, MODE, 0xb4, 0); // channel 2, mode 2
    outb(&mut pit, CH2, 100, 0);
    outb(&mut pit, CH2, 0, 0);
    assert_eq!(
        latched_count(&mut pit, 2, at(50)),
        100,
        "gate low: not counting"
    );
    outb(&mut pit, PORT_61, 0x01, at(50));
    assert_eq!(latched_count(&mut pit, 2, at(80)), 70);
    outb(&mut pit, PORT_61, 0x00, at(80));
    assert_eq!(
        inb(&mut pit, PORT_61, at(90)) & 0x20,
        0x20,
        "output high while gated off"
    );
    outb(&mut pit, PORT_61, 0x01, at(200));
    assert_eq!(
        latched_count(&mut pit, 2, at(200)),
        100,
        "reloaded on the rising edge"
    );
    assert_eq!(latched_count(&mut pit, 2, at(298)), 2);
    assert_eq!(inb(&mut pit, PORT_61, at(299)) & 0x20, 0);
    assert_eq!(inb(&mut pit, PORT_61, at(300)) & 0x20, 0x20);
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn modes_1_and_5_start_on_a_gate_edge() {
    let mut pit = Pit::new();
    outb(&mut pit, PORT_61, 0x01, 0);
    outb(&mut pit, MODE, 0xb2, 0); // channel 2, mode 1
    outb(&mut pit, CH2, 50, 0);
    outb(&mut pit, CH2, 0, 0);
    // The gate is already high: no trigger yet, output high.
    assert_eq!(inb(&mut pit, PORT_61, at(10)) & 0x20, 0x20);
    outb(&mut pit, PORT_61, 0x00, at(10));
    outb(&mut pit, PORT_61, 0x01, at(20));
    assert_eq!(
        inb(&mut pit, PORT_61, at(21)) & 0x20,
        0,
        "one-shot pulse low"
    );
    assert_eq!(latched_count(&mut pit, 2, at(30)), 40);
    assert_eq!(inb(&mut pit, PORT_61, at(70)) & 0x20, 0x20);
    // Mode 5: strobe one tick low at terminal count after the trigger.
    outb(&mut pit, MODE, 0xba, at(100));
    outb(&mut pit, CH2, 10, at(100));
    outb(&mut pit, CH2, 0, at(100));
    outb(&mut pit, PORT_61, 0x00, at(100));
    outb(&mut pit, PORT_61, 0x01, at(110));
    assert_eq!(inb(&mut pit, PORT_61, at(119)) & 0x20, 0x20);
    assert_eq!(inb(&mut pit, PORT_61, at(120)) & 0x20, 0);
    assert_eq!(inb(&mut pit, PORT_61, at(121)) & 0x20, 0x20);
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn bcd_counting() {
    let mut pit = Pit::new();
    outb(&mut pit, MODE, 0x35, at(0)); // channel 0, low/high, mode 2, BCD
    outb(&mut pit, CH0, 0x00, at(0));
    outb(&mut pit, CH0, 0x10, at(0)); // 1000 decimal
    assert_eq!(pit.next_irq0_ns(), Some(at(1000)));
    assert_eq!(latched_count(&mut pit, 0, at(1)), 0x0999);
    assert_eq!(latched_count(&mut pit, 0, at(1000 + 123)), 0x0877);
    // Count 0 in BCD is 10000.
    outb(&mut pit, MODE, 0x35, at(5000));
    outb(&mut pit, CH0, 0, at(5000));
    outb(&mut pit, CH0, 0, at(5000));
    assert_eq!(pit.next_irq0_ns(), Some(at(15_000)));
    assert_eq!(latched_count(&mut pit, 0, at(5001)), 0x9999);
    outb(&mut pit, MODE, 0xe2, at(5001));
    assert_eq!(inb(&mut pit, CH0, at(5001)), status(1, 0, 3, 2, 1));
    assert_eq!(pit.validate(), Ok(()));
}

#[test]
fn port_61_bits() {
    let mut pit = Pit::new();
    outb(&mut pit, PORT_61, 0xff, 0);
    assert_eq!(pit.port61, 0x0f);
    let v = inb(&mut pit, PORT_61, at(0));
    assert_eq!(v & 0xcf, 0x0f, "bits 6-7 read 0, bits 0-3 read back");
    // Refresh request toggles every 18 ticks.
    let refresh = |pit: &mut Pit, t: u64| inb(pit, PORT_61, at(t)) & 0x10;
    assert_eq!(refresh(&mut pit, 0), 0);
    assert_eq!(refresh(&mut pit, 17), 0);
    assert_eq!(refresh(&mut pit, 18), 0x10);
    assert_eq!(refresh(&mut pit, 35), 0x10);
    assert_eq!(refresh(&mut pit, 36), 0);
    let mut seen = [false; 2];
    for i in 0..20 {
        seen[usize::from(refresh(&mut pit, 1000 + i * 7) >> 4)] = true;
    }
    assert_eq!(seen, [true, true]);
}

#[test]
fn wide_accesses_are_split_into_bytes() {
    let mut pit = Pit::new();
    let mut ev = DeviceEvents::default();
    outb(&mut pit, MODE, 0x34, 0);
    // A 16-bit write to 0x40 writes 0x40 then 0x41 (channel 1), not both bytes of ch 0.
    pit.write(CH0, 2, 0x2010, 0, &mut ev);
    outb(&mut pit, CH0, 0x00, 0);
    assert_eq!(pit.next_irq0_ns(), Some(at(0x10)));
    // A 16-bit read of 0x43 reads 0x43 (0xff) and 0x44 (not the PIT: 0xff).
    assert_eq!(pit.read(MODE, 2, 0, &mut ev), 0xffff);
    // A 32-bit read of port 0x61 reads 0x61 then three unclaimed ports.
    assert_eq!(pit.read(PORT_61, 4, 0, &mut ev) >> 8, 0x00ff_ffff);
    assert_eq!(ev, DeviceEvents::default());
}

/// drivers/clocksource/i8253.c, pit_read(): latch channel 0 (control word 0x00), read low
/// then high.
#[test]
fn linux_pit_clocksource_read() {
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, latch_for(250), 0);
    let mut last = latched_count(&mut pit, 0, at(1));
    for t in (2..1193 * 4).step_by(97) {
        let c = latched_count(&mut pit, 0, at(t));
        let expect = 4773 - (t % 4773) as u16;
        assert_eq!(c, expect);
        assert!(
            c < last || t % 4773 < 97,
            "count goes down except at reload"
        );
        last = c;
    }
}

#[test]
fn validate_catches_corruption() {
    let good = Pit::new();
    let check = |f: fn(&mut Pit)| {
        let mut pit = good;
        f(&mut pit);
        let err = pit.validate().unwrap_err();
        assert_eq!(err.device, "pit");
        err.what
    };
    check(|p| p.channels[0].access = 0);
    check(|p| p.channels[0].mode = 8);
    check(|p| p.channels[1].phase = 3);
    check(|p| p.channels[0].gate = 0);
    check(|p| p.channels[2].running = 1);
    check(|p| p.channels[0].reload = 0);
    check(|p| p.channels[0].reload = 65_537);
    check(|p| p.channels[0].latch_bytes = 3);
    check(|p| p.channels[0].switch_at = 7);
    check(|p| {
        p.channels[0].bcd = 1;
    });
    check(|p| p.port61 = 0x10);
    check(|p| p.port61 = 0x01);
    check(|p| p.channels[0].status_latched = 2);
}

#[test]
fn transactions_replay_identically() {
    // The same access on the same state at the same time gives the same result: the
    // property VM-exit transactions rely on.
    let mut pit = Pit::new();
    program_periodic(&mut pit, 2, 1193, at(0));
    let saved = pit;
    let mut a = saved;
    let mut b = saved;
    let mut ev = DeviceEvents::default();
    let ra = a.read(CH0, 1, at(777), &mut ev);
    let rb = b.read(CH0, 1, at(777), &mut ev);
    assert_eq!((ra, a), (rb, b));
}

/// A small deterministic generator for the fuzz-style tests.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn random_accesses_keep_the_state_valid() {
    let mut seed = 0x1a2a_5a7e;
    let mut pit = Pit::new();
    let mut now = 0u64;
    let mut ev = DeviceEvents::default();
    for step in 0..200_000 {
        now += lcg(&mut seed) % 50_000;
        let r = lcg(&mut seed);
        let byte = (r >> 8) as u32 & 0xff;
        match r % 8 {
            0 => pit.write(MODE, 1, byte, now, &mut ev),
            1 | 2 => pit.write(CH0 + (r >> 16) as u16 % 3, 1, byte, now, &mut ev),
            3 => pit.write(PORT_61, 1, byte, now, &mut ev),
            4 | 5 => {
                let port = [CH0, CH0 + 1, CH2, PORT_61][(r >> 16) as usize % 4];
                assert!(pit.read(port, 1, now, &mut ev) <= 0xff);
            }
            _ => {
                let before = pit.next_irq0_ns();
                let mut tick_ev = DeviceEvents::default();
                pit.tick(now, &mut tick_ev);
                assert_eq!(tick_ev.raise != 0, before.is_some_and(|t| t <= now));
                assert!(pit.next_irq0_ns().is_none_or(|t| t > now), "step {step}");
            }
        }
        assert_eq!(pit.validate(), Ok(()), "step {step}: {pit:?}");
    }
}
