//! Intel 8254 programmable interval timer (ports 0x40-0x43) and the PC's port 0x61 (NMI
//! status and control, speaker, PIT channel 2 gate and output).
//!
//! Linux needs the PIT twice: at boot it measures the TSC against channel 2 (gated by
//! port 0x61 bit 0, polled through port 0x61 bit 5 or by reading the count), and until a
//! better timer takes over, channel 0 drives IRQ 0 (mode 2 for periodic ticks, mode 4 for
//! one-shot events, mode 0 when it shuts the timer down).
//!
//! # Time is derived, never ticked
//!
//! A real 8254 decrements its counters on every edge of a 1,193,182 Hz clock. Emulating
//! that would need an exit per tick or a catch-up loop, and a counter that "ticks" stops
//! ticking while the hypervisor is dead. Instead each channel records what it was loaded
//! with, in which mode, and the PIT clock tick at which it was loaded; every read computes
//! the current count and output from the guest time passed in (`now_ns`). The state is
//! therefore a pure function of "what the guest programmed and when", which is exactly
//! what survives a hypervisor reboot: after recovery the counters are where they would
//! have been, however long the VM was not scheduled.
//!
//! Times are converted to PIT clock ticks counted from VM start ([`ns_to_ticks`]), with
//! integer arithmetic and 128-bit intermediates (no floating point: the hypervisor is
//! built soft-float). Everything inside a channel is in whole ticks, so no rounding error
//! accumulates, and [`ticks_to_ns`] is its exact inverse for deadlines: the first
//! nanosecond at which a tick has been reached.
//!
//! # Channel 0 interrupts
//!
//! IRQ 0 is edge-triggered at the PIC, so what matters is when channel 0's output rises.
//! Rather than tick, the PIT tells the caller when the next rising edge is due
//! ([`Pit::next_irq0_ns`]); the caller arms a timer and calls [`Pit::tick`], which pulses
//! IRQ 0 once and moves past `now`, however many periods were missed (a VM that was not
//! scheduled for a second must not receive a storm of a thousand stale ticks; Linux
//! accounts for lost ticks itself from its clocksource). The PIT remembers up to which
//! tick edges have been delivered, which is also derived state that survives a reboot.
//!
//! An edge is reported by setting IRQ 0 in both `raise` and `lower` of [`DeviceEvents`]
//! (assert, then deassert: a pulse).
//!
//! # What is emulated
//!
//! - Control word (port 0x43): channel, access mode (latch, low byte, high byte, low then
//!   high), modes 0-5 (6 and 7 are aliases of 2 and 3, and the status byte reports the
//!   mode bits as written), BCD counting.
//! - Counter latch command (a latched count stays until it has been read completely; a
//!   second latch command before that is ignored) and read-back command (count and status
//!   latches, several channels at once; a latched status is read before a latched count).
//! - Separate low/high flip-flops for reads and writes, reset by a control word.
//! - Gates: channels 0 and 1 are tied high, as on a PC; channel 2's is port 0x61 bit 0.
//!   Modes 0 and 4 pause while the gate is low; modes 2 and 3 stop with the output high
//!   and restart from the full count on the rising edge; modes 1 and 5 start (or
//!   restart) on the rising edge.
//! - Port 0x61: bits 0-3 (channel 2 gate, speaker data, parity and I/O-check disables)
//!   are stored; bit 4 toggles every 18 PIT ticks (15.09 us, the PC/AT refresh request
//!   that old delay loops poll); bit 5 is channel 2's output; bits 6-7 (I/O-check and
//!   parity error) read 0 because nothing ever raises an NMI.
//! - Accesses wider than a byte are split into byte accesses to consecutive ports, as on
//!   the ISA bus; ports outside the PIT read 0xff and ignore writes. Port 0x43 is
//!   write-only and reads 0xff.
//!
//! # Simplifications (none visible to Linux)
//!
//! - A count is loaded at the tick it is written, not on the next clock edge, so mode 0's
//!   output rises N ticks after the write (the chip takes N+1); mode 4 and 5 pulse their
//!   output low for the tick the count reaches zero and rise one tick later.
//! - Mode 3 loads a count written while counting at the end of the current period, not of
//!   the current half-period, and the count read back for an odd divisor is approximate
//!   (it counts down by two in each half: N-1, N-3, ...); the output waveform is exact
//!   (high for (N+1)/2 ticks, low for (N-1)/2).
//! - In modes 2 and 3 a count of 1 (illegal on the chip) behaves as 2.
//! - In BCD mode a count with digits above 9 is taken digit by digit modulo 10000.
//! - A control word clears any latched count or status of its channel, like the chip's
//!   control logic reset.
//! - The speaker is silent and channel 1 drives nothing (refresh is bit 4 of port 0x61,
//!   derived from the same clock).
//!
//! # Power-on state
//!
//! [`Pit::new`] is the state a PC BIOS leaves: channel 0 in mode 3 with count 65536
//! (18.2 Hz IRQ 0), channel 1 in mode 2 with count 18 (refresh), channel 2 in mode 3 with
//! its gate low, all counting from VM start. Linux reprograms channel 0 before it unmasks
//! IRQ 0.

use super::{size_mask, BadState, DeviceEvents, Named};

/// The PIT's input clock, in Hz (every PC).
pub const PIT_HZ: u64 = 1_193_182;
/// The ISA IRQ line channel 0's output drives.
pub const IRQ: u8 = 0;
/// First I/O port of the 8254: counters at 0x40-0x42, control word at 0x43.
pub const PIT_BASE: u16 = 0x40;
/// NMI status and control / speaker port.
pub const PORT_61: u16 = 0x61;
/// Port 0x61 bits the guest can write (gate 2, speaker data, parity and I/O-check disable).
const PORT_61_WRITABLE: u8 = 0x0f;
/// Port 0x61 bit 4: refresh request, toggling with time.
const PORT_61_REFRESH: u8 = 1 << 4;
/// Port 0x61 bit 5: channel 2's output.
const PORT_61_OUT2: u8 = 1 << 5;
/// PIT ticks per half-period of the refresh-request bit (PC/AT DRAM refresh, 15.09 us).
const REFRESH_TICKS: u64 = 18;

const NS_PER_S: u128 = 1_000_000_000;

// Access modes (control word bits 5:4).
const ACCESS_LATCH: u8 = 0;
const ACCESS_LO: u8 = 1;
const ACCESS_HI: u8 = 2;
const ACCESS_LOHI: u8 = 3;

// Channel phases.

/// A control word was written and no count yet (or, in mode 0, only the first byte of a
/// two-byte count): the counting element holds `hold` and does not count.
const PHASE_IDLE: u8 = 0;
/// Modes 1 and 5: a count was written; waiting for a rising gate edge to load it.
const PHASE_ARMED: u8 = 1;
/// The counting element was loaded with `reload` at `start` and counts (while `running`).
const PHASE_COUNTING: u8 = 2;

/// `switch_at` when no count is waiting to be loaded at the end of a period.
const NO_SWITCH: u64 = u64::MAX;

/// Guest time in nanoseconds to PIT clock ticks since VM start (rounded down).
pub fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / NS_PER_S) as u64
}

/// The first guest time in nanoseconds at which [`ns_to_ticks`] reaches `ticks`
/// (saturating at `u64::MAX`).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    let hz = u128::from(PIT_HZ);
    let ns = (u128::from(ticks) * NS_PER_S).div_ceil(hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn to_bcd(value: u32) -> u16 {
    let v = value % 10_000;
    ((v / 1000) << 12 | (v / 100 % 10) << 8 | (v / 10 % 10) << 4 | (v % 10)) as u16
}

fn from_bcd(raw: u16) -> u32 {
    let d = |shift: u32| u32::from((raw >> shift) & 0xf);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

/// One counter of the 8254. Counts are in ticks as numbers (binary), whatever the
/// channel's BCD setting: BCD only changes how they are written and read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PitChannel {
    /// PIT tick (since VM start) at which the counting element was loaded with `reload`;
    /// elapsed ticks are counted from it while `running`.
    pub start: u64,
    /// Ticks elapsed since the load when counting was suspended (gate low); the elapsed
    /// count while not `running`.
    pub frozen: u64,
    /// Modes 2 and 3: elapsed ticks (a multiple of the period) at which `cr` replaces
    /// `reload`, because a count was written while counting; `u64::MAX` if none.
    pub switch_at: u64,
    /// The count the counting element was loaded with: 1..=65536 (1..=10000 in BCD).
    pub reload: u32,
    /// The count register: the last count written (same range), 0 if none since the
    /// control word.
    pub cr: u32,
    /// The counting element's value while it does not count (idle or armed).
    pub hold: u16,
    /// The latched count, as it is read (BCD-encoded in BCD mode).
    pub latch: u16,
    /// Bytes of `latch` still to be read; 0 when no count is latched.
    pub latch_bytes: u8,
    /// 1 when `status` is latched and not yet read.
    pub status_latched: u8,
    /// The latched status byte.
    pub status: u8,
    /// Mode bits 3:1 of the control word, as written (0-7).
    pub mode: u8,
    /// Access mode: 1 low byte, 2 high byte, 3 low then high.
    pub access: u8,
    /// 1 for BCD counting.
    pub bcd: u8,
    /// 0: idle (control word written, no count yet), 1: armed (modes 1 and 5, count
    /// written, waiting for a gate edge), 2: counting.
    pub phase: u8,
    /// 1 while counting, 0 while suspended by the gate (or not counting at all).
    pub running: u8,
    /// The gate input level.
    pub gate: u8,
    /// 1 when the next byte written is the high byte of a two-byte count.
    pub write_hi: u8,
    /// The low byte of a two-byte count, written and waiting for its high byte.
    pub write_lo: u8,
    /// 1 when the next byte read is the high byte of a two-byte count.
    pub read_hi: u8,
    /// The status byte's null-count bit: 1 from a count write (or control word) until the
    /// count is loaded into the counting element.
    pub null_count: u8,
}

impl PitChannel {
    /// A channel counting `count` in `mode` (low/high access, binary) since VM start.
    const fn power_on(mode: u8, count: u32, gate: bool) -> Self {
        PitChannel {
            start: 0,
            frozen: 0,
            switch_at: NO_SWITCH,
            reload: count,
            cr: count,
            hold: 0,
            latch: 0,
            latch_bytes: 0,
            status_latched: 0,
            status: 0,
            mode,
            access: ACCESS_LOHI,
            bcd: 0,
            phase: PHASE_COUNTING,
            running: gate as u8,
            gate: gate as u8,
            write_hi: 0,
            write_lo: 0,
            read_hi: 0,
            null_count: 0,
        }
    }

    /// The mode that governs behaviour: 6 and 7 are 2 and 3.
    fn eff_mode(&self) -> u8 {
        if self.mode >= 6 {
            self.mode - 4
        } else {
            self.mode
        }
    }

    /// The counter's modulus: 65536 binary, 10000 BCD.
    fn modulus(&self) -> u64 {
        if self.bcd != 0 {
            10_000
        } else {
            65_536
        }
    }

    /// A count as written (raw 16 bits) to a number of ticks: 0 is the maximum.
    fn count_from_raw(&self, raw: u16) -> u32 {
        let v = if self.bcd != 0 {
            from_bcd(raw) % 10_000
        } else {
            u32::from(raw)
        };
        if v == 0 {
            self.modulus() as u32
        } else {
            v
        }
    }

    /// Ticks elapsed since the load, at PIT tick `now`.
    fn elapsed(&self, now: u64) -> u64 {
        if self.running != 0 {
            now.saturating_sub(self.start)
        } else {
            self.frozen
        }
    }

    /// The count in effect and the ticks elapsed since it was loaded, at tick `now`
    /// (taking a pending end-of-period load into account).
    fn current(&self, now: u64) -> (u64, u64) {
        let e = self.elapsed(now);
        if self.switch_at != NO_SWITCH && e >= self.switch_at {
            (u64::from(self.cr), e - self.switch_at)
        } else {
            (u64::from(self.reload), e)
        }
    }

    /// Modes 2 and 3 need a period of at least 2.
    fn period(n: u64) -> u64 {
        n.max(2)
    }

    /// Applies a pending end-of-period load once its time has come. Changes no observable
    /// value: it only moves the origin, so that later arithmetic starts from it.
    fn settle(&mut self, now: u64) {
        if self.phase == PHASE_COUNTING
            && self.running != 0
            && self.switch_at != NO_SWITCH
            && self.elapsed(now) >= self.switch_at
        {
            self.start = self.start.saturating_add(self.switch_at);
            self.reload = self.cr;
            self.switch_at = NO_SWITCH;
            self.null_count = 0;
        }
    }

    /// Loads `count` into the counting element at tick `now` and starts counting (if the
    /// gate allows, for the modes the gate suspends).
    fn start_counting(&mut self, count: u32, now: u64) {
        self.reload = count;
        self.phase = PHASE_COUNTING;
        self.switch_at = NO_SWITCH;
        self.null_count = 0;
        self.start = now;
        self.frozen = 0;
        self.running = match self.eff_mode() {
            1 | 5 => 1,
            _ => self.gate,
        };
    }

    /// The counter's value (binary, below the modulus) at tick `now`.
    fn count(&self, now: u64) -> u32 {
        if self.phase != PHASE_COUNTING {
            return u32::from(self.hold);
        }
        let (n, e) = self.current(now);
        let m = self.modulus();
        let v = match self.eff_mode() {
            2 => {
                let p = Self::period(n);
                p - e % p
            }
            3 => {
                let p = Self::period(n);
                let phase = e % p;
                let high = p.div_ceil(2);
                let q = if phase < high { phase } else { phase - high };
                (p & !1) - 2 * q
            }
            _ => (n % m + m - e % m) % m,
        };
        (v % m) as u32
    }

    /// The output level at tick `now`.
    fn out(&self, now: u64) -> bool {
        match self.phase {
            PHASE_IDLE => self.eff_mode() != 0,
            PHASE_ARMED => true,
            _ => {
                let (n, e) = self.current(now);
                match self.eff_mode() {
                    0 | 1 => e >= n,
                    4 | 5 => e != n,
                    2 => {
                        let p = Self::period(n);
                        self.running == 0 || e % p != p - 1
                    }
                    _ => {
                        let p = Self::period(n);
                        self.running == 0 || e % p < p.div_ceil(2)
                    }
                }
            }
        }
    }

    /// The value a read returns (BCD-encoded in BCD mode).
    fn read_value(&self, now: u64) -> u16 {
        let v = self.count(now);
        if self.bcd != 0 {
            to_bcd(v)
        } else {
            v as u16
        }
    }

    /// The read-back status byte at tick `now` (call `settle` first).
    fn status_byte(&self, now: u64) -> u8 {
        (u8::from(self.out(now)) << 7)
            | (self.null_count << 6)
            | (self.access << 4)
            | (self.mode << 1)
            | self.bcd
    }

    fn latch_count(&mut self, now: u64) {
        if self.latch_bytes == 0 {
            self.latch = self.read_value(now);
            self.latch_bytes = if self.access == ACCESS_LOHI { 2 } else { 1 };
        }
    }

    fn latch_status(&mut self, now: u64) {
        if self.status_latched == 0 {
            self.settle(now);
            self.status = self.status_byte(now);
            self.status_latched = 1;
        }
    }

    /// Picks the byte of `value` a read returns under the access mode and flip-flop.
    fn pick_byte(&mut self, value: u16) -> u8 {
        let [lo, hi] = value.to_le_bytes();
        match self.access {
            ACCESS_LO => lo,
            ACCESS_HI => hi,
            _ => {
                let high = self.read_hi != 0;
                self.read_hi ^= 1;
                if high {
                    hi
                } else {
                    lo
                }
            }
        }
    }

    fn read_port(&mut self, now: u64) -> u8 {
        if self.status_latched != 0 {
            self.status_latched = 0;
            return self.status;
        }
        if self.latch_bytes != 0 {
            self.latch_bytes -= 1;
            return self.pick_byte(self.latch);
        }
        let v = self.read_value(now);
        self.pick_byte(v)
    }

    fn control(&mut self, value: u8, now: u64) {
        let access = (value >> 4) & 3;
        if access == ACCESS_LATCH {
            self.latch_count(now);
            return;
        }
        self.settle(now);
        self.hold = self.count(now) as u16;
        self.access = access;
        self.mode = (value >> 1) & 7;
        self.bcd = value & 1;
        // The counter's value is kept, but must fit the new modulus.
        self.hold = (u64::from(self.hold) % self.modulus()) as u16;
        self.phase = PHASE_IDLE;
        self.running = 0;
        self.frozen = 0;
        self.switch_at = NO_SWITCH;
        self.cr = 0;
        self.null_count = 1;
        self.write_hi = 0;
        self.write_lo = 0;
        self.read_hi = 0;
        self.latch_bytes = 0;
        self.status_latched = 0;
    }

    fn write_port(&mut self, value: u8, now: u64) {
        match self.access {
            ACCESS_LO => self.load(u16::from(value), now),
            ACCESS_HI => self.load(u16::from(value) << 8, now),
            _ => {
                if self.write_hi == 0 {
                    self.write_lo = value;
                    self.write_hi = 1;
                    // Mode 0: the first byte stops the count and sets the output low.
                    if self.eff_mode() == 0 && self.phase == PHASE_COUNTING {
                        self.settle(now);
                        self.hold = self.count(now) as u16;
                        self.phase = PHASE_IDLE;
                        self.running = 0;
                        self.frozen = 0;
                    }
                } else {
                    self.write_hi = 0;
                    self.load(u16::from_le_bytes([self.write_lo, value]), now);
                }
            }
        }
    }

    /// A complete count was written.
    fn load(&mut self, raw: u16, now: u64) {
        let count = self.count_from_raw(raw);
        self.settle(now);
        self.cr = count;
        self.null_count = 1;
        match self.eff_mode() {
            0 | 4 => self.start_counting(count, now),
            1 | 5 => {
                if self.phase == PHASE_IDLE {
                    self.phase = PHASE_ARMED;
                }
            }
            _ => {
                if self.phase != PHASE_COUNTING {
                    self.start_counting(count, now);
                } else if self.running != 0 && self.switch_at == NO_SWITCH {
                    // Loaded when the current period ends.
                    let p = Self::period(u64::from(self.reload));
                    let e = self.elapsed(now);
                    self.switch_at = (e / p).saturating_add(1).saturating_mul(p);
                }
                // With the gate low, the rising edge loads the count register.
            }
        }
    }

    fn set_gate(&mut self, gate: bool, now: u64) {
        let gate = u8::from(gate);
        if gate == self.gate {
            return;
        }
        self.settle(now);
        self.gate = gate;
        match self.eff_mode() {
            0 | 4 => {
                if self.phase == PHASE_COUNTING {
                    if gate != 0 {
                        self.start = now.saturating_sub(self.frozen);
                        self.running = 1;
                    } else {
                        self.frozen = self.elapsed(now);
                        self.running = 0;
                    }
                }
            }
            1 | 5 => {
                if gate != 0 && self.phase != PHASE_IDLE {
                    self.start_counting(self.cr, now);
                }
            }
            _ => {
                if self.phase == PHASE_COUNTING {
                    if gate != 0 {
                        self.start_counting(self.cr, now);
                    } else {
                        self.frozen = self.elapsed(now);
                        self.running = 0;
                        self.switch_at = NO_SWITCH;
                    }
                }
            }
        }
    }

    /// The first tick after `t` at which the output rises, if it will without further
    /// input.
    fn next_edge_after(&self, t: u64) -> Option<u64> {
        if self.phase != PHASE_COUNTING || self.running == 0 {
            return None;
        }
        let reload = u64::from(self.reload);
        let once = |edge: u64| (edge > t).then_some(edge);
        match self.eff_mode() {
            0 | 1 => once(self.start.saturating_add(reload)),
            4 | 5 => once(self.start.saturating_add(reload).saturating_add(1)),
            _ => {
                let p = Self::period(reload);
                let next = |origin: u64, p: u64| {
                    let k = periodic_edges(origin, p, t).saturating_add(1);
                    origin.saturating_add(k.saturating_mul(p))
                };
                if self.switch_at == NO_SWITCH {
                    return Some(next(self.start, p));
                }
                let switch = self.start.saturating_add(self.switch_at);
                if t < switch {
                    Some(next(self.start, p))
                } else {
                    Some(next(switch, Self::period(u64::from(self.cr))))
                }
            }
        }
    }

    /// How many rising output edges fall in the ticks (a, b].
    fn edges_between(&self, a: u64, b: u64) -> u64 {
        if self.phase != PHASE_COUNTING || self.running == 0 || b <= a {
            return 0;
        }
        let reload = u64::from(self.reload);
        let once = |edge: u64| u64::from(a < edge && edge <= b);
        match self.eff_mode() {
            0 | 1 => once(self.start.saturating_add(reload)),
            4 | 5 => once(self.start.saturating_add(reload).saturating_add(1)),
            _ => {
                let p = Self::period(reload);
                if self.switch_at == NO_SWITCH {
                    return periodic_edges(self.start, p, b) - periodic_edges(self.start, p, a);
                }
                let before = self.switch_at / p;
                let first = |x: u64| periodic_edges(self.start, p, x).min(before);
                let switch = self.start.saturating_add(self.switch_at);
                let p2 = Self::period(u64::from(self.cr));
                let second = |x: u64| periodic_edges(switch, p2, x);
                (first(b) - first(a)) + (second(b) - second(a))
            }
        }
    }

    fn validate(&self, index: usize) -> Result<(), &'static str> {
        let m = self.modulus();
        let flags = [
            self.bcd,
            self.status_latched,
            self.running,
            self.gate,
            self.write_hi,
            self.read_hi,
            self.null_count,
        ];
        if flags.iter().any(|&f| f > 1) {
            return Err("channel flag out of range");
        }
        if self.mode > 7 {
            return Err("channel mode out of range");
        }
        if !(ACCESS_LO..=ACCESS_LOHI).contains(&self.access) {
            return Err("channel access mode out of range");
        }
        if self.phase > PHASE_COUNTING {
            return Err("channel phase out of range");
        }
        if self.latch_bytes > 2 || (self.access != ACCESS_LOHI && self.latch_bytes > 1) {
            return Err("channel latch out of range");
        }
        if self.write_hi != 0 && self.access != ACCESS_LOHI {
            return Err("channel write flip-flop set without low/high access");
        }
        if u64::from(self.hold) >= m || u64::from(self.cr) > m {
            return Err("channel count out of range");
        }
        if index < 2 && self.gate != 1 {
            return Err("channel 0 or 1 gate not high");
        }
        let mode = self.eff_mode();
        match self.phase {
            PHASE_COUNTING => {
                if self.reload == 0 || u64::from(self.reload) > m {
                    return Err("channel reload count out of range");
                }
                let gated = matches!(mode, 0 | 2 | 3 | 4);
                if (gated && self.running != self.gate) || (!gated && self.running != 1) {
                    return Err("channel running flag inconsistent with gate");
                }
                if self.switch_at != NO_SWITCH {
                    let p = Self::period(u64::from(self.reload));
                    if !matches!(mode, 2 | 3)
                        || self.running == 0
                        || self.cr == 0
                        || self.switch_at == 0
                        || !self.switch_at.is_multiple_of(p)
                    {
                        return Err("channel pending load inconsistent");
                    }
                }
            }
            phase => {
                if self.running != 0 || self.switch_at != NO_SWITCH {
                    return Err("idle channel counting");
                }
                if phase == PHASE_ARMED && (!matches!(mode, 1 | 5) || self.cr == 0) {
                    return Err("armed channel not in mode 1 or 5");
                }
            }
        }
        Ok(())
    }
}

/// Edges at `origin + j * p` for j >= 1 that are at or before `x`.
fn periodic_edges(origin: u64, p: u64, x: u64) -> u64 {
    if x < origin {
        0
    } else {
        (x - origin) / p
    }
}

/// The PIT and port 0x61, as kept in the arena.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pit {
    /// Counters 0, 1 and 2.
    pub channels: [PitChannel; 3],
    /// PIT tick up to which channel 0's IRQ 0 edges have been delivered (or skipped).
    pub irq0_done: u64,
    /// Port 0x61 bits 3:0 as last written (bit 0 is channel 2's gate).
    pub port61: u8,
}

impl Named for Pit {
    const NAME: &'static str = "pit";
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// The ports the PIT claims, as inclusive (first, last) ranges.
    pub const PORTS: &'static [(u16, u16)] = &[(PIT_BASE, PIT_BASE + 3), (PORT_61, PORT_61)];

    /// The state after a PC BIOS (see the module documentation), at VM start.
    pub const fn new() -> Self {
        Pit {
            channels: [
                PitChannel::power_on(3, 65_536, true),
                PitChannel::power_on(2, 18, true),
                PitChannel::power_on(3, 65_536, false),
            ],
            irq0_done: 0,
            port61: 0,
        }
    }

    /// A port read of `size` bytes at guest time `now_ns`.
    pub fn read(&mut self, port: u16, size: u8, now_ns: u64, _ev: &mut DeviceEvents) -> u32 {
        let now = ns_to_ticks(now_ns);
        let mut value = 0u32;
        for i in 0..size.min(4) {
            let byte = self.read_byte(port.wrapping_add(u16::from(i)), now);
            value |= u32::from(byte) << (8 * i);
        }
        value & size_mask(size)
    }

    /// A port write of `size` bytes at guest time `now_ns`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, now_ns: u64, _ev: &mut DeviceEvents) {
        let now = ns_to_ticks(now_ns);
        let value = value & size_mask(size);
        for i in 0..size.min(4) {
            let byte = (value >> (8 * i)) as u8;
            self.write_byte(port.wrapping_add(u16::from(i)), byte, now);
        }
    }

    fn read_byte(&mut self, port: u16, now: u64) -> u8 {
        match port {
            0x40..=0x42 => self.channels[usize::from(port - PIT_BASE)].read_port(now),
            PORT_61 => {
                let refresh = if (now / REFRESH_TICKS) & 1 != 0 {
                    PORT_61_REFRESH
                } else {
                    0
                };
                let out2 = if self.channels[2].out(now) {
                    PORT_61_OUT2
                } else {
                    0
                };
                self.port61 | refresh | out2
            }
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8, now: u64) {
        match port {
            0x40..=0x42 => self.channels[usize::from(port - PIT_BASE)].write_port(value, now),
            0x43 => self.control(value, now),
            PORT_61 => {
                self.port61 = value & PORT_61_WRITABLE;
                self.channels[2].set_gate(value & 1 != 0, now);
            }
            _ => {}
        }
    }

    fn control(&mut self, value: u8, now: u64) {
        let select = value >> 6;
        if select != 3 {
            self.channels[usize::from(select)].control(value, now);
            return;
        }
        // Read-back: bit 5 clear latches counts, bit 4 clear latches status, bits 3:1
        // select channels 2, 1, 0.
        for (i, channel) in self.channels.iter_mut().enumerate() {
            if value & (2 << i) == 0 {
                continue;
            }
            if value & 0x20 == 0 {
                channel.latch_count(now);
            }
            if value & 0x10 == 0 {
                channel.latch_status(now);
            }
        }
    }

    /// Guest time at which channel 0's output next rises (an IRQ 0 edge not yet
    /// delivered by [`Pit::tick`]): every period in modes 2 and 3, once in modes 0 and 4.
    /// None if no edge will come without the guest reprogramming channel 0.
    pub fn next_irq0_ns(&self) -> Option<u64> {
        self.channels[0]
            .next_edge_after(self.irq0_done)
            .map(ticks_to_ns)
    }

    /// Delivers channel 0's interrupt if it is due at `now_ns`: pulses IRQ 0 once in `ev`,
    /// however many edges passed, and moves past `now_ns`. Returns how many edges were
    /// missed (0 when exactly one was due, or none).
    pub fn tick(&mut self, now_ns: u64, ev: &mut DeviceEvents) -> u64 {
        let now = ns_to_ticks(now_ns);
        let channel = &mut self.channels[0];
        match channel.next_edge_after(self.irq0_done) {
            Some(edge) if edge <= now => {}
            _ => return 0,
        }
        let edges = channel.edges_between(self.irq0_done, now);
        channel.settle(now);
        self.irq0_done = now;
        // An edge: assert then deassert (see the module documentation).
        ev.raise |= 1 << IRQ;
        ev.lower |= 1 << IRQ;
        edges.saturating_sub(1)
    }

    /// Bound checks for recovery: every field within its range and consistent with the
    /// others, so that no later computation can misbehave.
    pub fn validate(&self) -> Result<(), BadState> {
        let bad = |what| BadState {
            device: Self::NAME,
            what,
        };
        for (i, channel) in self.channels.iter().enumerate() {
            channel.validate(i).map_err(bad)?;
        }
        if self.port61 & !PORT_61_WRITABLE != 0 {
            return Err(bad("port 0x61 has read-only bits stored"));
        }
        if self.channels[2].gate != self.port61 & 1 {
            return Err(bad("channel 2 gate differs from port 0x61 bit 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
