//! The PC's two 8259A interrupt controllers (master 0x20-0x21, slave 0xa0-0xa1, slave
//! cascaded on master input 2) and the chipset's edge/level control registers (ELCR,
//! 0x4d0-0x4d1).
//!
//! Why the PIC and not an APIC: a guest without a local APIC or IO-APIC (the first
//! Linux guests) takes every device interrupt through the 8259A pair, and Linux's
//! `init_8259A` programs it with the full initialization sequence, masks lines with
//! OCW1, acknowledges with specific EOIs (OCW2), and reads IRR and ISR (OCW3) to tell
//! spurious interrupts from real ones. So the chip follows the datasheet: ICW1-ICW4
//! (single or cascade, vector base, auto-EOI, special fully nested mode), OCW2's EOI
//! and rotation commands, OCW3's register select, poll mode and special mask mode,
//! fixed or rotating priority, edge or level triggering.
//!
//! How it meets the CPU: nothing here injects anything. The hypervisor asks
//! [`Pic::pending_vector`] whether INTR is asserted and with which vector, and when it
//! injects that vector it calls [`Pic::acknowledge`], the two INTA cycles. Device
//! models change input lines through [`Pic::set_irq`] or [`Pic::apply`].
//!
//! Choices where the hardware is loose or timing-dependent:
//! - An edge-triggered request is latched in IRR on the rising edge and stays there
//!   until acknowledged, even if the line falls first. The datasheet wants the line
//!   held until INTA, but device models here pulse their lines within one exit, and
//!   an edge must not be lost for that.
//! - The slave's INT output reaches master input 2 as a level: master IRR bit 2 is
//!   "the slave has a request it would deliver now", recomputed after every change. So
//!   a slave request is never lost between the two chips, and master IR2 ignores ELCR
//!   (its bit is reserved anyway). ISA IRQ 2 has no line of its own (on the AT bus it
//!   became IRQ 9); `set_irq(2, _)` is ignored.
//! - Nothing is deliverable while a chip is in the middle of its initialization
//!   sequence, and vectors are always in 8086 format (ICW4 bit 0 is kept but not
//!   used: no x86 guest runs the PIC in MCS-80 mode).
//! - ICW1 clears IMR (as the datasheet says), and also ISR and the edge latches (as a
//!   re-initialization is meant to start from nothing).
//! - Spurious interrupts: because every change is applied atomically, INTR is never
//!   asserted without a request, so the master's spurious IRQ 7 cannot occur and
//!   `acknowledge` returns None when `pending_vector` does. The slave's spurious IRQ 15
//!   (master selects input 2, slave has nothing) is kept for a state restored
//!   inconsistent: the slave's vector 7 is returned and its ISR is left alone.
//! - Level mode comes from ELCR (the chipset's per-line register, which is what
//!   Linux uses) or from ICW1's LTIM bit (all lines of that chip), either one.
//!
//! Accesses wider than a byte are split into byte accesses at consecutive ports, as
//! the ISA bus does; bytes at unclaimed ports read as 0xff and are not written.

use super::{BadState, DeviceEvents, Named};

pub const MASTER_COMMAND: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_COMMAND: u16 = 0xa0;
pub const SLAVE_DATA: u16 = 0xa1;
pub const ELCR_MASTER: u16 = 0x4d0;
pub const ELCR_SLAVE: u16 = 0x4d1;

/// Master input the slave is wired to.
const CASCADE_IR: u8 = 2;
/// ELCR bits that exist: IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge.
const ELCR_MASTER_BITS: u8 = 0xf8;
const ELCR_SLAVE_BITS: u8 = 0xde;

const ICW1_IC4: u8 = 0x01;
const ICW1_SNGL: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
const ICW1_INIT: u8 = 0x10;
const ICW4_8086: u8 = 0x01;
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;
const ICW4_BITS: u8 = 0x1f;

const OCW3_RIS: u8 = 0x01;
const OCW3_RR: u8 = 0x02;
const OCW3_POLL: u8 = 0x04;
const OCW3_SELECT: u8 = 0x08;
const OCW3_SMM: u8 = 0x20;
const OCW3_ESMM: u8 = 0x40;

/// `init_step` values: the initialization word a data-port write is taken as.
const READY: u8 = 0;
const EXPECT_ICW2: u8 = 2;
const EXPECT_ICW3: u8 = 3;
const EXPECT_ICW4: u8 = 4;

/// One 8259A.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input line levels, for edge detection and level-mode IRR.
    lines: u8,
    /// This chip's ELCR (1 = level-triggered).
    elcr: u8,
    /// ICW2 & 0xf8.
    vector_base: u8,
    icw1: u8,
    icw3: u8,
    icw4: u8,
    /// [`READY`] or the ICW the next data-port write is.
    init_step: u8,
    /// The input with the lowest priority (7 unless rotated).
    lowest: u8,
    /// OCW3 register select: 1 = ISR is read at the command port, 0 = IRR.
    read_isr: u8,
    /// 1 after an OCW3 poll command, until the next read.
    poll: u8,
    special_mask: u8,
    rotate_on_aeoi: u8,
}

/// The master/slave pair as wired in a PC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Named for Pic {
    const NAME: &'static str = "pic";
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Chip {
    const fn new(vector_base: u8, icw3: u8) -> Self {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0xff,
            lines: 0,
            elcr: 0,
            vector_base,
            icw1: ICW1_INIT | ICW1_IC4,
            icw3,
            icw4: ICW4_8086,
            init_step: READY,
            lowest: 7,
            read_isr: 0,
            poll: 0,
            special_mask: 0,
            rotate_on_aeoi: 0,
        }
    }

    fn level_mask(&self) -> u8 {
        if self.icw1 & ICW1_LTIM != 0 {
            0xff
        } else {
            self.elcr
        }
    }

    /// 0 is the highest priority, 7 the lowest.
    fn priority(&self, ir: u8) -> u8 {
        ir.wrapping_sub(self.lowest).wrapping_sub(1) & 7
    }

    /// The highest-priority input among `bits`.
    fn highest(&self, bits: u8) -> Option<u8> {
        (0..8)
            .filter(|ir| bits & (1 << ir) != 0)
            .min_by_key(|&ir| self.priority(ir))
    }

    /// The input this chip would signal on INT now. `nested` holds inputs that may be
    /// requested again while in service (special fully nested mode's slave inputs).
    fn request(&self, nested: u8) -> Option<u8> {
        if self.init_step != READY {
            return None;
        }
        let ir = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask != 0 {
            // Special mask mode: a masked level in service blocks nothing.
            in_service &= !self.imr;
        }
        match self.highest(in_service) {
            Some(s) if self.priority(s) < self.priority(ir) => None,
            Some(s) if s == ir && nested & (1 << ir) == 0 => None,
            _ => Some(ir),
        }
    }

    /// The INTA sequence (or a poll read) for input `ir`.
    fn acknowledge(&mut self, ir: u8) {
        let bit = 1 << ir;
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
        if self.icw4 & ICW4_AEOI == 0 {
            self.isr |= bit;
        } else if self.rotate_on_aeoi != 0 {
            self.lowest = ir;
        }
    }

    fn set_line(&mut self, ir: u8, level: bool) {
        let bit = 1 << ir;
        let rising = level && self.lines & bit == 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.level_mask() & bit != 0 {
            self.irr = (self.irr & !bit) | (self.lines & bit);
        } else if rising {
            self.irr |= bit;
        }
    }

    fn write_elcr(&mut self, value: u8) {
        self.elcr = value;
        let level = self.level_mask();
        self.irr = (self.irr & !level) | (self.lines & level);
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_INIT != 0 {
            self.icw1 = value;
            self.init_step = EXPECT_ICW2;
            self.imr = 0;
            self.isr = 0;
            // The edge latches restart: an edge input must rise again.
            self.irr = self.lines & self.level_mask();
            self.lowest = 7;
            self.read_isr = 0;
            self.poll = 0;
            self.special_mask = 0;
            self.rotate_on_aeoi = 0;
            if value & ICW1_IC4 == 0 {
                self.icw4 = 0;
            }
        } else if value & OCW3_SELECT != 0 {
            if value & OCW3_ESMM != 0 {
                self.special_mask = u8::from(value & OCW3_SMM != 0);
            }
            if value & OCW3_RR != 0 {
                self.read_isr = value & OCW3_RIS;
            }
            self.poll = u8::from(value & OCW3_POLL != 0);
        } else {
            self.write_ocw2(value);
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Non-specific EOI, with or without rotation.
            0b001 | 0b101 => {
                if let Some(ir) = self.highest(self.isr) {
                    self.isr &= !(1 << ir);
                    if value >> 5 == 0b101 {
                        self.lowest = ir;
                    }
                }
            }
            // Specific EOI, with or without rotation.
            0b011 => self.isr &= !(1 << level),
            0b111 => {
                self.isr &= !(1 << level);
                self.lowest = level;
            }
            0b100 => self.rotate_on_aeoi = 1,
            0b000 => self.rotate_on_aeoi = 0,
            // Set priority.
            0b110 => self.lowest = level,
            // 0b010: no operation.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            EXPECT_ICW2 => {
                self.vector_base = value & 0xf8;
                self.init_step = if self.icw1 & ICW1_SNGL == 0 {
                    EXPECT_ICW3
                } else {
                    self.after_icw3()
                };
            }
            EXPECT_ICW3 => {
                self.icw3 = value;
                self.init_step = self.after_icw3();
            }
            EXPECT_ICW4 => {
                self.icw4 = value & ICW4_BITS;
                self.init_step = READY;
            }
            _ => self.imr = value,
        }
    }

    fn after_icw3(&self) -> u8 {
        if self.icw1 & ICW1_IC4 != 0 {
            EXPECT_ICW4
        } else {
            READY
        }
    }

    /// A read in poll mode: acknowledges the highest request like INTA and returns
    /// bit 7 = a request was there, bits 2:0 = its input.
    fn poll_read(&mut self, nested: u8) -> u8 {
        self.poll = 0;
        match self.request(nested) {
            Some(ir) => {
                self.acknowledge(ir);
                0x80 | ir
            }
            None => 0,
        }
    }

    fn read_command(&mut self, nested: u8) -> u8 {
        if self.poll != 0 {
            self.poll_read(nested)
        } else if self.read_isr != 0 {
            self.isr
        } else {
            self.irr
        }
    }

    fn read_data(&mut self, nested: u8) -> u8 {
        if self.poll != 0 {
            self.poll_read(nested)
        } else {
            self.imr
        }
    }

    fn validate(&self, elcr_bits: u8) -> Result<(), &'static str> {
        if !matches!(
            self.init_step,
            READY | EXPECT_ICW2 | EXPECT_ICW3 | EXPECT_ICW4
        ) {
            return Err("initialization step out of range");
        }
        if self.lowest > 7 {
            return Err("priority rotation out of range");
        }
        if self.read_isr > 1 || self.poll > 1 || self.special_mask > 1 || self.rotate_on_aeoi > 1 {
            return Err("mode flag not 0 or 1");
        }
        if self.vector_base & 7 != 0 {
            return Err("vector base not a multiple of 8");
        }
        if self.elcr & !elcr_bits != 0 {
            return Err("ELCR bit for an always-edge IRQ");
        }
        if self.icw4 & !ICW4_BITS != 0 {
            return Err("ICW4 bits 7:5 set");
        }
        let level = self.level_mask();
        if (self.irr ^ self.lines) & level != 0 {
            return Err("level-triggered IRR differs from the line");
        }
        Ok(())
    }
}

impl Pic {
    pub const PORTS: &'static [(u16, u16)] = &[
        (MASTER_COMMAND, MASTER_DATA),
        (SLAVE_COMMAND, SLAVE_DATA),
        (ELCR_MASTER, ELCR_SLAVE),
    ];

    /// What the firmware leaves before any operating system runs: both chips
    /// initialized for a PC (cascade on IR2, 8086 mode, normal EOI) with the BIOS's
    /// vector bases 0x08 and 0x70, every input masked, all lines edge-triggered. A
    /// guest that never programs the PIC gets no interrupts.
    pub const fn new() -> Self {
        Pic {
            master: Chip::new(0x08, 1 << CASCADE_IR),
            slave: Chip::new(0x70, CASCADE_IR),
        }
    }

    /// A guest read of `size` bytes at `port`.
    pub fn read(&mut self, port: u16, size: u8, _now_ns: u64, _ev: &mut DeviceEvents) -> u32 {
        let mut value = 0;
        for i in 0..super::access_width(size) {
            let byte = self.read_byte(port.wrapping_add(i));
            value |= u32::from(byte) << (8 * i);
        }
        self.sync_cascade();
        value
    }

    /// A guest write of the low `size` bytes of `value` at `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, _now_ns: u64, _ev: &mut DeviceEvents) {
        for i in 0..super::access_width(size) {
            self.write_byte(port.wrapping_add(i), (value >> (8 * i)) as u8);
        }
        self.sync_cascade();
    }

    /// ISA line `irq` (0-15) is now at `level`. Lines 0-7 are master inputs, 8-15 slave
    /// inputs 0-7; line 2 is the cascade and is ignored here.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IR => log::debug!("pic: ISA IRQ 2 has no input of its own, ignored"),
            0..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => log::debug!("pic: no ISA IRQ {irq}"),
        }
        self.sync_cascade();
    }

    /// Applies the lines a device access raised, then those it lowered: a line in both
    /// sets was pulsed, which an edge-triggered input latches and a level-triggered
    /// one forgets.
    pub fn apply(&mut self, ev: &DeviceEvents) {
        for irq in 0..16 {
            if ev.raise & (1 << irq) != 0 {
                self.set_irq(irq, true);
            }
        }
        for irq in 0..16 {
            if ev.lower & (1 << irq) != 0 {
                self.set_irq(irq, false);
            }
        }
    }

    /// The vector the CPU would receive now, if INTR is asserted: the master's
    /// highest-priority unmasked request not blocked by an interrupt in service, and
    /// for the cascade input the slave's.
    pub fn pending_vector(&self) -> Option<u8> {
        let ir = self.master.request(self.master_nested())?;
        if ir == CASCADE_IR && self.cascaded() {
            Some(match self.slave.request(0) {
                Some(s) => self.slave.vector_base | s,
                None => self.slave.vector_base | 7,
            })
        } else {
            Some(self.master.vector_base | ir)
        }
    }

    /// The interrupt acknowledge cycles: the request moves from IRR to ISR (or, in
    /// auto-EOI mode, is done with at once) on the master and, through the cascade, on
    /// the slave. Returns the vector, or None if INTR is not asserted.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let ir = self.master.request(self.master_nested())?;
        self.master.acknowledge(ir);
        let vector = if ir == CASCADE_IR && self.cascaded() {
            match self.slave.request(0) {
                Some(s) => {
                    self.slave.acknowledge(s);
                    self.slave.vector_base | s
                }
                // Spurious: the slave answers with its IR7 vector and sets nothing.
                None => self.slave.vector_base | 7,
            }
        } else {
            self.master.vector_base | ir
        };
        self.sync_cascade();
        Some(vector)
    }

    /// Interrupt request registers, slave in bits 15:8.
    pub fn irr(&self) -> u16 {
        u16::from(self.slave.irr) << 8 | u16::from(self.master.irr)
    }

    /// In-service registers, slave in bits 15:8.
    pub fn isr(&self) -> u16 {
        u16::from(self.slave.isr) << 8 | u16::from(self.master.isr)
    }

    /// Interrupt mask registers, slave in bits 15:8.
    pub fn imr(&self) -> u16 {
        u16::from(self.slave.imr) << 8 | u16::from(self.master.imr)
    }

    /// Bound and consistency checks for recovery.
    pub fn validate(&self) -> Result<(), BadState> {
        let bad = |what| BadState {
            device: Self::NAME,
            what,
        };
        self.master.validate(ELCR_MASTER_BITS).map_err(bad)?;
        self.slave.validate(ELCR_SLAVE_BITS).map_err(bad)?;
        let cascade = 1 << CASCADE_IR;
        let slave_int = u8::from(self.slave.request(0).is_some()) << CASCADE_IR;
        if self.master.irr & cascade != slave_int || self.master.lines & cascade != slave_int {
            return Err(bad("master input 2 differs from the slave's output"));
        }
        Ok(())
    }

    /// Whether the master takes its vector for input 2 from the slave: the master
    /// was told it has a slave there (cascade mode, ICW3 bit 2).
    fn cascaded(&self) -> bool {
        self.master.icw1 & ICW1_SNGL == 0 && self.master.icw3 & (1 << CASCADE_IR) != 0
    }

    /// Master inputs that special fully nested mode lets through while in service.
    fn master_nested(&self) -> u8 {
        if self.master.icw4 & ICW4_SFNM != 0 && self.cascaded() {
            1 << CASCADE_IR
        } else {
            0
        }
    }

    /// Drives master input 2 from the slave's INT output.
    fn sync_cascade(&mut self) {
        let bit = 1 << CASCADE_IR;
        if self.slave.request(0).is_some() {
            self.master.lines |= bit;
            self.master.irr |= bit;
        } else {
            self.master.lines &= !bit;
            self.master.irr &= !bit;
        }
    }

    fn read_byte(&mut self, port: u16) -> u8 {
        let nested = self.master_nested();
        match port {
            MASTER_COMMAND => self.master.read_command(nested),
            MASTER_DATA => self.master.read_data(nested),
            SLAVE_COMMAND => self.slave.read_command(0),
            SLAVE_DATA => self.slave.read_data(0),
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) {
        match port {
            MASTER_COMMAND => self.master.write_command(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_COMMAND => self.slave.write_command(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.write_elcr(value & ELCR_MASTER_BITS),
            ELCR_SLAVE => self.slave.write_elcr(value & ELCR_SLAVE_BITS),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
