//! The PS/2 keyboard controller (8042) at ports 0x60 (data) and 0x64 (status and
//! command), with no keyboard and no mouse plugged in.
//!
//! Why a controller with nothing behind it: a PC guest expects one. Its output port
//! drives the CPU reset line, which is how Linux reboots by default (command 0xFE),
//! and Linux's i8042 driver probes it at boot: a missing or silent controller costs
//! timeouts of half a second per command. So the controller answers its own commands
//! at once: configuration byte (CTR) read and write, self test (0xAA -> 0x55), port
//! tests (0xAB, 0xA9 -> 0x00), port enable and disable, output port read and write,
//! and the loop-back commands (0xD2, 0xD3) Linux uses to find the AUX port and to
//! check that IRQ 12 is delivered.
//!
//! Why bytes for a device get a timeout: with nothing plugged in, a real controller
//! gives up on the transmission, sets the status timeout bit and puts 0xFE in the
//! output buffer. That is what the model does, immediately, for bytes written to the
//! keyboard (port 0x60 outside a command) and to the mouse (command 0xD4): Linux's
//! PS/2 layer takes 0xFE as a NAK, so the keyboard and mouse probes fail at once
//! instead of each waiting for its timeout.
//!
//! Interrupts: the output buffer raises IRQ 1 (keyboard and controller bytes) or IRQ 12
//! (mouse bytes) while it is full and the CTR enables that interrupt; the level is
//! recomputed after every access and only changes are reported, with the last
//! reported levels kept in the state. The PIC sees the rising edge of each byte.
//!
//! Choices: the output buffer holds one byte and a new byte replaces an unread one
//! (the controller's firmware would wait; no guest issues a second command without
//! reading the answer to the first). A20 cannot be turned off in a VM here, so the
//! output port's A20 bit always reads 1 and commands 0xDD/0xDF do nothing. Unknown
//! commands are ignored, as the 8042 firmware does.
//!
//! Accesses wider than a byte are split into byte accesses at consecutive ports, as
//! the ISA bus does; bytes at unclaimed ports read as 0xff and are not written.

use super::{BadState, DeviceEvents, Named};

pub const DATA: u16 = 0x60;
pub const COMMAND: u16 = 0x64;
/// Interrupt of keyboard and controller bytes.
pub const KBD_IRQ: u8 = 1;
/// Interrupt of mouse (AUX) bytes.
pub const AUX_IRQ: u8 = 12;

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
/// Last write was to the command port.
const STATUS_CMD: u8 = 0x08;
/// Keyboard not inhibited (keylock off): always, there is no lock.
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX: u8 = 0x20;
const STATUS_TIMEOUT: u8 = 0x40;
/// Status bits kept in the state (IBF is never set: every byte is taken at once).
const STATUS_KEPT: u8 = STATUS_OBF | STATUS_SYS | STATUS_CMD | STATUS_AUX | STATUS_TIMEOUT;

const CTR_KBDINT: u8 = 0x01;
const CTR_AUXINT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBDDIS: u8 = 0x10;
const CTR_AUXDIS: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;

const OUT_RESET: u8 = 0x01;
const OUT_A20: u8 = 0x02;

const CMD_READ_RAM: u8 = 0x20;
const CMD_WRITE_RAM: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_KBD_LOOP: u8 = 0xd2;
const CMD_AUX_LOOP: u8 = 0xd3;
const CMD_AUX_SEND: u8 = 0xd4;
const CMD_A20_OFF: u8 = 0xdd;
const CMD_A20_ON: u8 = 0xdf;
/// 0xF0-0xFF pulse the output port bits 3:0 that are 0 in the command.
const CMD_PULSE: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// What a controller returns for a byte no device took.
const NO_DEVICE: u8 = 0xfe;

/// The controller's state. Plain bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct I8042 {
    /// The controller's internal RAM as commands 0x20-0x3F / 0x60-0x7F see it; byte 0
    /// is the configuration byte (CTR).
    ram: [u8; 32],
    /// Status bits [`STATUS_KEPT`].
    status: u8,
    /// The output buffer (what port 0x60 reads; the last byte again once read).
    output: u8,
    /// A command waiting for its data byte on port 0x60, or 0.
    pending: u8,
    output_port: u8,
    /// Reported levels: bit 0 IRQ 1, bit 1 IRQ 12.
    irq_lines: u8,
}

impl Named for I8042 {
    const NAME: &'static str = "i8042";
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    pub const PORTS: &'static [(u16, u16)] = &[(DATA, DATA), (COMMAND, COMMAND)];

    /// The controller as a BIOS leaves it: self test passed (system flag set), keyboard
    /// interrupt on with scan code translation, mouse port disabled, output buffer
    /// empty, reset line and A20 high.
    pub const fn new() -> Self {
        let mut ram = [0; 32];
        ram[0] = CTR_XLATE | CTR_AUXDIS | CTR_SYS | CTR_KBDINT;
        I8042 {
            ram,
            status: STATUS_SYS,
            output: 0,
            pending: 0,
            output_port: 0xcf,
            irq_lines: 0,
        }
    }

    /// A guest read of `size` bytes at `port`.
    pub fn read(&mut self, port: u16, size: u8, _now_ns: u64, ev: &mut DeviceEvents) -> u32 {
        let mut value = 0;
        for i in 0..super::access_width(size) {
            let byte = match port.wrapping_add(i) {
                DATA => self.read_data(),
                COMMAND => self.status | STATUS_UNLOCKED,
                _ => 0xff,
            };
            value |= u32::from(byte) << (8 * i);
        }
        self.update_irqs(ev);
        value
    }

    /// A guest write of the low `size` bytes of `value` at `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, _now_ns: u64, ev: &mut DeviceEvents) {
        for i in 0..super::access_width(size) {
            let byte = (value >> (8 * i)) as u8;
            match port.wrapping_add(i) {
                DATA => {
                    self.status &= !STATUS_CMD;
                    self.data(byte, ev);
                }
                COMMAND => {
                    self.status |= STATUS_CMD;
                    self.command(byte, ev);
                }
                _ => {}
            }
        }
        self.update_irqs(ev);
    }

    /// Reported levels of IRQ 1 and IRQ 12.
    pub fn irqs_asserted(&self) -> (bool, bool) {
        (self.irq_lines & 1 != 0, self.irq_lines & 2 != 0)
    }

    /// Bound and consistency checks for recovery.
    pub fn validate(&self) -> Result<(), BadState> {
        let bad = |what| {
            Err(BadState {
                device: Self::NAME,
                what,
            })
        };
        if self.status & !STATUS_KEPT != 0 {
            return bad("status bits that are never kept");
        }
        if self.status & STATUS_OBF == 0 && self.status & (STATUS_AUX | STATUS_TIMEOUT) != 0 {
            return bad("output buffer flags without a byte");
        }
        if !matches!(self.pending, 0 | CMD_WRITE_RAM..=0x7f | CMD_WRITE_OUTPUT..=CMD_AUX_SEND) {
            return bad("pending command that takes no data");
        }
        if self.output_port & OUT_A20 == 0 {
            return bad("A20 off");
        }
        if self.irq_lines != self.lines() {
            return bad("IRQ lines differ from the output buffer");
        }
        Ok(())
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn put(&mut self, byte: u8, aux: bool, timeout: bool) {
        self.output = byte;
        self.status &= !(STATUS_AUX | STATUS_TIMEOUT);
        self.status |= STATUS_OBF;
        if aux {
            self.status |= STATUS_AUX;
        }
        if timeout {
            self.status |= STATUS_TIMEOUT;
        }
    }

    fn read_data(&mut self) -> u8 {
        self.status &= !(STATUS_OBF | STATUS_AUX | STATUS_TIMEOUT);
        self.output
    }

    fn command(&mut self, command: u8, ev: &mut DeviceEvents) {
        // A new command abandons one still waiting for its data byte.
        self.pending = 0;
        match command {
            CMD_READ_RAM..=0x3f => self.put(self.ram[usize::from(command & 0x1f)], false, false),
            CMD_WRITE_RAM..=0x7f | CMD_WRITE_OUTPUT..=CMD_AUX_SEND => self.pending = command,
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUXDIS,
            CMD_AUX_TEST | CMD_KBD_TEST => self.put(PORT_TEST_OK, false, false),
            CMD_SELF_TEST => {
                self.status |= STATUS_SYS;
                self.put(SELF_TEST_OK, false, false);
            }
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBDDIS,
            CMD_READ_OUTPUT => self.put(self.output_port, false, false),
            CMD_A20_OFF | CMD_A20_ON => {}
            CMD_PULSE..=0xff => {
                if command & OUT_RESET == 0 {
                    ev.reset = true;
                }
            }
            _ => log::debug!("i8042: command {command:#04x} ignored"),
        }
    }

    fn data(&mut self, byte: u8, ev: &mut DeviceEvents) {
        let command = self.pending;
        self.pending = 0;
        match command {
            0 => self.put(NO_DEVICE, false, true), // to the keyboard, which is not there
            CMD_WRITE_RAM..=0x7f => {
                self.ram[usize::from(command & 0x1f)] = byte;
                if command == CMD_WRITE_RAM {
                    // The CTR's system flag is copied to the status register.
                    self.status = (self.status & !STATUS_SYS) | (byte & CTR_SYS);
                }
            }
            CMD_WRITE_OUTPUT => {
                self.output_port = byte | OUT_A20;
                if byte & OUT_RESET == 0 {
                    ev.reset = true;
                }
            }
            CMD_KBD_LOOP => self.put(byte, false, false),
            CMD_AUX_LOOP => self.put(byte, true, false),
            _ => self.put(NO_DEVICE, true, true), // CMD_AUX_SEND: no mouse either
        }
    }

    fn lines(&self) -> u8 {
        if self.status & STATUS_OBF == 0 {
            return 0;
        }
        if self.status & STATUS_AUX == 0 {
            u8::from(self.ctr() & CTR_KBDINT != 0)
        } else {
            u8::from(self.ctr() & CTR_AUXINT != 0) << 1
        }
    }

    fn update_irqs(&mut self, ev: &mut DeviceEvents) {
        let lines = self.lines();
        let changed = lines ^ self.irq_lines;
        for (bit, irq) in [(1, KBD_IRQ), (2, AUX_IRQ)] {
            if changed & bit != 0 {
                if lines & bit != 0 {
                    ev.raise_irq(irq);
                } else {
                    ev.lower_irq(irq);
                }
            }
        }
        self.irq_lines = lines;
    }
}

#[cfg(test)]
mod tests;
