//! The guest's serial port: a 16550A UART as COM1 (ports 0x3f8-0x3ff, ISA IRQ 4).
//!
//! Why a full 16550A rather than "a port that prints": Linux's 8250 driver decides what
//! the chip is (its `autoconfig` probe) before it uses it. It checks that IER holds
//! what was written, that the loopback mode reflects MCR into MSR, that enabling the
//! FIFOs sets IIR bits 7:6, and that no extended (16650/16750/Xscale) registers answer;
//! only a chip that passes all of that as a 16550A gets FIFO and interrupt-driven
//! operation. At start-up the driver also checks that a THRE interrupt reappears each
//! time IER bit 1 is set while the transmitter is idle; a UART that fails gets a
//! polling timer instead. So the registers follow the datasheet, including the parts
//! no one uses for console output.
//!
//! Why transmission takes no time: the guest's bytes go to the hypervisor's console
//! (`DeviceEvents::serial_out`), which has no baud rate worth imitating. A byte written
//! to THR leaves at once, so LSR.THRE and LSR.TEMT are always set, and the THRE
//! interrupt (when IER bit 1 enables it) is pending again as soon as the write returns:
//! on the chip, THR empties into the shift register a moment after the write, so the
//! driver sees the same sequence, only faster. The divisor latch and LCR's framing bits
//! are kept for the guest to read back and change nothing: bytes go out and come in
//! whole, so a guest that never programs the port (LCR is 0 after reset, which would
//! mean 5-bit characters) still prints.
//!
//! The interrupt line. On a PC the UART's INTR pin reaches the PIC through a gate that
//! MCR.OUT2 opens, so the ISA line is "an interrupt is pending and OUT2 is set". In
//! loopback mode the chip forces its modem outputs, OUT2 among them, inactive, which
//! closes the gate: no IRQ in loopback (IIR still shows what is pending). The line is
//! recomputed after every access and only changes are reported (`raise_irq`/`lower_irq`
//! of [`IRQ`]), with the last reported level kept in the state, so a copy of the device
//! and the PIC always agree on it.
//!
//! Receive: [`Uart::receive`] is how the hypervisor types into the guest. There is
//! no bit time, so the character-timeout interrupt (IIR 0x0C, "fewer bytes than the
//! trigger level and none arrived lately") is reported as soon as a byte waits below
//! the trigger level; at or above it, IIR says "data available" (0x04). Linux reads
//! until LSR.DR clears either way.
//!
//! Accesses wider than a byte are split into byte accesses at consecutive ports, as
//! the ISA bus does; bytes outside 0x3f8-0x3ff read as 0xff and are not written.

use super::{BadState, DeviceEvents, Named};

/// First port of COM1.
pub const BASE: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const IRQ: u8 = 4;
/// Receive FIFO depth of a 16550A.
pub const FIFO_SIZE: usize = 16;

// Register offsets from BASE (DLAB = LCR bit 7 selects the divisor latch at 0 and 1).
const RBR_THR_DLL: u16 = 0;
const IER_DLM: u16 = 1;
const IIR_FCR: u16 = 2;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_RLSI: u8 = 0x04;
const IER_MSI: u8 = 0x08;
/// IER bits 7:4 are not implemented on a 16550A and read as 0 (Linux checks this to
/// rule out Xscale and other extended chips).
const IER_MASK: u8 = 0x0f;

const IIR_MODEM: u8 = 0x00;
const IIR_NONE: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RX_DATA: u8 = 0x04;
const IIR_LINE: u8 = 0x06;
const IIR_RX_TIMEOUT: u8 = 0x0c;
const IIR_FIFOS_ON: u8 = 0xc0;

const FCR_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_DMA_MODE: u8 = 0x08;
const FCR_TRIGGER: u8 = 0xc0;
/// What FCR keeps: bits 1 and 2 clear the FIFOs and read as nothing; bits 4 and 5 are
/// not implemented on a 16550A (a 16750 would use bit 5 for 64-byte FIFOs).
const FCR_KEPT: u8 = FCR_ENABLE | FCR_DMA_MODE | FCR_TRIGGER;

const LCR_DLAB: u8 = 0x80;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_DELTAS: u8 = MSR_DCTS | MSR_DDSR | MSR_TERI | MSR_DDCD;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// The UART's registers and receive FIFO. Plain bytes, no padding: it lives in the
/// arena and is copied per VM exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    /// Receive FIFO, a ring of `rx_count` bytes from `rx_head`. With FIFOs off it
    /// holds at most one byte: the receive holding register.
    rx_fifo: [u8; FIFO_SIZE],
    rx_head: u8,
    rx_count: u8,
    /// The last byte read from RBR: what RBR reads when nothing is waiting.
    rbr: u8,
    ier: u8,
    /// FIFO control as written, bits [`FCR_KEPT`] only; 0 when FIFOs are off.
    fcr: u8,
    lcr: u8,
    mcr: u8,
    /// LSR error bits that stay until LSR is read (only OE: no parity, framing or break
    /// errors on a line that is not there).
    lsr_errors: u8,
    /// MSR bits 3:0, the changes of the modem inputs since MSR was last read.
    msr_deltas: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// 1 when a THRE interrupt is pending (only while IER bit 1 is set).
    thre_pending: u8,
    /// The IRQ 4 level last reported through `DeviceEvents` (0 or 1).
    irq_line: u8,
}

impl Named for Uart {
    const NAME: &'static str = "uart";
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart {
    /// The ports COM1 claims.
    pub const PORTS: &'static [(u16, u16)] = &[(BASE, BASE + 7)];

    /// The chip after a master reset: no interrupts enabled, FIFOs off, 8-bit divisor
    /// 1 (115200 baud: any value would do, nothing is timed), modem outputs off.
    pub const fn new() -> Self {
        Uart {
            rx_fifo: [0; FIFO_SIZE],
            rx_head: 0,
            rx_count: 0,
            rbr: 0,
            ier: 0,
            fcr: 0,
            lcr: 0,
            mcr: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            scr: 0,
            dll: 1,
            dlm: 0,
            thre_pending: 0,
            irq_line: 0,
        }
    }

    /// A guest read of `size` bytes at `port`.
    pub fn read(&mut self, port: u16, size: u8, _now_ns: u64, ev: &mut DeviceEvents) -> u32 {
        let mut value = 0;
        for i in 0..super::access_width(size) {
            let p = port.wrapping_add(i);
            let byte = match p.checked_sub(BASE) {
                Some(offset) if offset < 8 => self.read_register(offset),
                _ => 0xff,
            };
            value |= u32::from(byte) << (8 * i);
        }
        self.update_irq(ev);
        value
    }

    /// A guest write of the low `size` bytes of `value` at `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, _now_ns: u64, ev: &mut DeviceEvents) {
        for i in 0..super::access_width(size) {
            let p = port.wrapping_add(i);
            if let Some(offset) = p.checked_sub(BASE).filter(|&o| o < 8) {
                self.write_register(offset, (value >> (8 * i)) as u8, ev);
            }
        }
        self.update_irq(ev);
    }

    /// A byte arrives on the line (the hypervisor typing into the guest). Returns false
    /// when the byte is lost: the receiver was full (overrun, LSR.OE set; with FIFOs on
    /// the new byte is dropped, with FIFOs off it replaces the unread one, as on the
    /// chip), or the UART is in loopback mode, where the line input is disconnected.
    pub fn receive(&mut self, byte: u8, ev: &mut DeviceEvents) -> bool {
        let stored = self.mcr & MCR_LOOP == 0 && self.push_rx(byte);
        self.update_irq(ev);
        stored
    }

    /// How many bytes [`receive`](Self::receive) would take now without an overrun,
    /// for a caller that would rather hold input back than lose it.
    pub fn rx_space(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            0
        } else {
            self.rx_capacity() - usize::from(self.rx_count)
        }
    }

    /// The level of IRQ 4 as last reported.
    pub fn irq_asserted(&self) -> bool {
        self.irq_line != 0
    }

    /// Bound and consistency checks for recovery.
    pub fn validate(&self) -> Result<(), BadState> {
        let bad = |what| {
            Err(BadState {
                device: Self::NAME,
                what,
            })
        };
        if usize::from(self.rx_head) >= FIFO_SIZE {
            return bad("receive FIFO head out of range");
        }
        if usize::from(self.rx_count) > self.rx_capacity() {
            return bad("receive FIFO count over capacity");
        }
        if self.fcr & !FCR_KEPT != 0 || (self.fcr & FCR_ENABLE == 0 && self.fcr != 0) {
            return bad("FCR bits that cannot be set");
        }
        if self.ier & !IER_MASK != 0 {
            return bad("IER bits 7:4 set");
        }
        if self.mcr & !MCR_MASK != 0 {
            return bad("MCR bits 7:5 set");
        }
        if self.lsr_errors & !LSR_OE != 0 {
            return bad("LSR error bits other than OE");
        }
        if self.msr_deltas & !MSR_DELTAS != 0 {
            return bad("MSR delta bits out of range");
        }
        if self.thre_pending > 1 || (self.thre_pending == 1 && self.ier & IER_THRI == 0) {
            return bad("THRE interrupt pending while disabled");
        }
        if self.irq_line > 1 || (self.irq_line == 1) != self.line_level() {
            return bad("IRQ line differs from the registers");
        }
        Ok(())
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn fifos_on(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifos_on() {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Bytes in the receive FIFO at which "data available" replaces "timeout".
    fn trigger_level(&self) -> u8 {
        match self.fcr >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        }
    }

    fn read_register(&mut self, offset: u16) -> u8 {
        match offset {
            RBR_THR_DLL if self.dlab() => self.dll,
            RBR_THR_DLL => self.pop_rx(),
            IER_DLM if self.dlab() => self.dlm,
            IER_DLM => self.ier,
            IIR_FCR => {
                let id = self.interrupt_id();
                // Reading IIR acknowledges a THRE interrupt, but only when IIR shows it.
                if id == IIR_THRE {
                    self.thre_pending = 0;
                }
                if self.fifos_on() {
                    id | IIR_FIFOS_ON
                } else {
                    id
                }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => {
                let lsr = self.lsr();
                self.lsr_errors = 0;
                lsr
            }
            MSR => {
                let msr = self.modem_inputs() | self.msr_deltas;
                self.msr_deltas = 0;
                msr
            }
            _ => self.scr,
        }
    }

    fn write_register(&mut self, offset: u16, value: u8, ev: &mut DeviceEvents) {
        match offset {
            RBR_THR_DLL if self.dlab() => self.dll = value,
            RBR_THR_DLL => self.transmit(value, ev),
            IER_DLM if self.dlab() => self.dlm = value,
            IER_DLM => self.write_ier(value),
            IIR_FCR => self.write_fcr(value),
            LCR => self.lcr = value,
            MCR => self.write_mcr(value),
            // LSR and MSR are read-only (writing them is a factory test on the chip).
            LSR | MSR => {}
            _ => self.scr = value,
        }
    }

    fn transmit(&mut self, byte: u8, ev: &mut DeviceEvents) {
        if self.mcr & MCR_LOOP != 0 {
            self.push_rx(byte);
        } else if ev.serial_out.push(byte).is_err() {
            log::warn!("uart: serial output full in one access batch, byte dropped");
        }
        // Writing THR clears a THRE interrupt; the byte leaves at once, so THR is empty
        // again and the interrupt is pending anew if it is enabled.
        self.thre_pending = u8::from(self.ier & IER_THRI != 0);
    }

    fn write_ier(&mut self, value: u8) {
        let old = self.ier;
        self.ier = value & IER_MASK;
        if self.ier & IER_THRI == 0 {
            self.thre_pending = 0;
        } else if old & IER_THRI == 0 {
            // Enabling the THRE interrupt while THR is empty (always, here) makes it
            // pending: Linux's start-up test and its transmit start rely on this.
            self.thre_pending = 1;
        }
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE;
        if enable != self.fcr & FCR_ENABLE {
            // Switching FIFO mode on or off resets both FIFOs.
            self.clear_rx();
        }
        if enable == 0 {
            // The other bits are only programmed together with bit 0.
            self.fcr = 0;
            return;
        }
        if value & FCR_CLEAR_RX != 0 {
            self.clear_rx();
        }
        // Clearing the transmit FIFO (bit 2) has nothing to do: it is always empty.
        self.fcr = value & FCR_KEPT;
    }

    fn write_mcr(&mut self, value: u8) {
        let before = self.modem_inputs();
        self.mcr = value & MCR_MASK;
        let after = self.modem_inputs();
        let changed = before ^ after;
        // DCTS, DDSR and DDCD flag any change of CTS, DSR and DCD; TERI only the
        // trailing edge of RI.
        self.msr_deltas |= (changed & (MSR_CTS | MSR_DSR | MSR_DCD)) >> 4;
        if before & !after & MSR_RI != 0 {
            self.msr_deltas |= MSR_TERI;
        }
    }

    /// MSR bits 7:4. Outside loopback, a terminal that is always ready: CTS, DSR and DCD
    /// asserted, no ring. In loopback, the modem outputs wired back: RTS to CTS, DTR to
    /// DSR, OUT1 to RI, OUT2 to DCD.
    fn modem_inputs(&self) -> u8 {
        if self.mcr & MCR_LOOP == 0 {
            return MSR_CTS | MSR_DSR | MSR_DCD;
        }
        let mut msr = 0;
        if self.mcr & MCR_RTS != 0 {
            msr |= MSR_CTS;
        }
        if self.mcr & MCR_DTR != 0 {
            msr |= MSR_DSR;
        }
        if self.mcr & MCR_OUT1 != 0 {
            msr |= MSR_RI;
        }
        if self.mcr & MCR_OUT2 != 0 {
            msr |= MSR_DCD;
        }
        msr
    }

    fn lsr(&self) -> u8 {
        let mut lsr = LSR_THRE | LSR_TEMT | self.lsr_errors;
        if self.rx_count > 0 {
            lsr |= LSR_DR;
        }
        lsr
    }

    fn clear_rx(&mut self) {
        self.rx_head = 0;
        self.rx_count = 0;
    }

    fn push_rx(&mut self, byte: u8) -> bool {
        if usize::from(self.rx_count) >= self.rx_capacity() {
            self.lsr_errors |= LSR_OE;
            if !self.fifos_on() {
                self.rx_fifo[usize::from(self.rx_head)] = byte;
            }
            return false;
        }
        let tail = (usize::from(self.rx_head) + usize::from(self.rx_count)) % FIFO_SIZE;
        self.rx_fifo[tail] = byte;
        self.rx_count += 1;
        true
    }

    fn pop_rx(&mut self) -> u8 {
        if self.rx_count > 0 {
            self.rbr = self.rx_fifo[usize::from(self.rx_head)];
            self.rx_head = ((usize::from(self.rx_head) + 1) % FIFO_SIZE) as u8;
            self.rx_count -= 1;
        }
        self.rbr
    }

    /// IIR bits 3:0: the highest-priority enabled interrupt that is pending.
    fn interrupt_id(&self) -> u8 {
        if self.ier & IER_RLSI != 0 && self.lsr_errors != 0 {
            IIR_LINE
        } else if self.ier & IER_RDI != 0 && self.rx_count > 0 {
            if self.fifos_on() && self.rx_count < self.trigger_level() {
                IIR_RX_TIMEOUT
            } else {
                IIR_RX_DATA
            }
        } else if self.ier & IER_THRI != 0 && self.thre_pending != 0 {
            IIR_THRE
        } else if self.ier & IER_MSI != 0 && self.msr_deltas != 0 {
            IIR_MODEM
        } else {
            IIR_NONE
        }
    }

    fn line_level(&self) -> bool {
        self.interrupt_id() != IIR_NONE && self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
    }

    fn update_irq(&mut self, ev: &mut DeviceEvents) {
        let level = self.line_level();
        if level != (self.irq_line != 0) {
            self.irq_line = u8::from(level);
            if level {
                ev.raise_irq(IRQ);
            } else {
                ev.lower_irq(IRQ);
            }
        }
    }
}

#[cfg(test)]
mod tests;
