//! The 16550A as Linux's 8250 driver sees it: register semantics, the autoconfig probe,
//! console output, THRE and receive interrupts, and the IRQ 4 line.

use super::*;
use std::vec::Vec;

const RBR: u16 = 0;
const THR: u16 = 0;
const DLL: u16 = 0;
const IER: u16 = 1;
const DLM: u16 = 1;
const IIR: u16 = 2;
const FCR: u16 = 2;
const SCR: u16 = 7;

/// A UART on a bus: byte accesses by register offset, the IRQ 4 level as a PIC would
/// see it from the reported changes, and everything sent.
struct Com {
    uart: Uart,
    irq: bool,
    irq_changes: usize,
    sent: Vec<u8>,
}

impl Com {
    fn new() -> Self {
        Com {
            uart: Uart::new(),
            irq: false,
            irq_changes: 0,
            sent: Vec::new(),
        }
    }

    fn inb(&mut self, offset: u16) -> u8 {
        let mut ev = DeviceEvents::default();
        let value = self.uart.read(BASE + offset, 1, 0, &mut ev);
        self.collect(ev);
        assert!(value <= 0xff);
        value as u8
    }

    fn outb(&mut self, offset: u16, value: u8) {
        let mut ev = DeviceEvents::default();
        self.uart
            .write(BASE + offset, 1, u32::from(value), 0, &mut ev);
        self.collect(ev);
    }

    fn receive(&mut self, byte: u8) -> bool {
        let mut ev = DeviceEvents::default();
        let stored = self.uart.receive(byte, &mut ev);
        self.collect(ev);
        stored
    }

    fn collect(&mut self, ev: DeviceEvents) {
        assert_eq!(
            (ev.raise | ev.lower) & !(1 << IRQ),
            0,
            "only IRQ 4 is touched"
        );
        assert!(!ev.reset);
        if ev.raise != 0 {
            assert!(!self.irq, "raised twice");
            self.irq = true;
            self.irq_changes += 1;
        }
        if ev.lower != 0 {
            assert!(self.irq, "lowered twice");
            self.irq = false;
            self.irq_changes += 1;
        }
        assert_eq!(self.irq, self.uart.irq_asserted());
        self.sent.extend_from_slice(&ev.serial_out);
        assert_eq!(self.uart.validate(), Ok(()));
    }
}

#[test]
fn power_on_registers() {
    let mut com = Com::new();
    assert_eq!(com.uart, Uart::default());
    assert_eq!(com.inb(IER), 0);
    assert_eq!(com.inb(IIR), 0x01);
    assert_eq!(com.inb(LCR), 0);
    assert_eq!(com.inb(MCR), 0);
    assert_eq!(com.inb(LSR), 0x60);
    assert_eq!(com.inb(MSR), 0xb0);
    assert!(!com.irq);
}

#[test]
fn scratch_register_holds_any_byte() {
    let mut com = Com::new();
    for value in [0x00, 0xa5, 0x5a, 0xff] {
        com.outb(SCR, value);
        assert_eq!(com.inb(SCR), value);
    }
}

#[test]
fn ier_keeps_only_its_low_nibble() {
    let mut com = Com::new();
    com.outb(IER, 0xff);
    assert_eq!(com.inb(IER), 0x0f);
    com.outb(IER, 0x40);
    assert_eq!(com.inb(IER), 0x00);
}

#[test]
fn dlab_switches_offsets_0_and_1_to_the_divisor_latch() {
    let mut com = Com::new();
    com.outb(IER, 0x05);
    com.outb(LCR, 0x83);
    assert_eq!((com.inb(DLL), com.inb(DLM)), (1, 0), "power-on divisor");
    com.outb(DLL, 0x0c);
    com.outb(DLM, 0x02);
    assert_eq!((com.inb(DLL), com.inb(DLM)), (0x0c, 0x02));
    assert!(com.sent.is_empty(), "a DLL write is not a transmission");
    com.outb(LCR, 0x03);
    assert_eq!(com.inb(IER), 0x05, "IER untouched by DLM writes");
    com.outb(THR, b'x');
    assert_eq!(com.sent, b"x");
    com.outb(LCR, 0x83);
    assert_eq!(
        (com.inb(DLL), com.inb(DLM)),
        (0x0c, 0x02),
        "THR write left DLL alone"
    );
    // IIR, LCR, MCR, LSR and SCR do not depend on DLAB.
    assert_eq!(com.inb(IIR), 0x01);
    assert_eq!(com.inb(LCR), 0x83);
    assert_eq!(com.inb(LSR), 0x60);
}

/// The port operations of Linux's 8250 `autoconfig()` and `autoconfig_16550a()`
/// (including the loopback test that COM1-3 normally skip, and the FIFO size count),
/// with the conclusions the driver draws from them.
#[test]
fn linux_autoconfig_finds_a_16550a_with_16_byte_fifos() {
    let mut com = Com::new();

    // Existence: IER holds 0 and 0x0f.
    let saved_ier = com.inb(IER);
    com.outb(IER, 0);
    let scratch2 = com.inb(IER) & 0x0f;
    com.outb(IER, 0x0f);
    let scratch3 = com.inb(IER) & 0x0f;
    com.outb(IER, saved_ier);
    assert_eq!((scratch2, scratch3), (0, 0x0f), "IER test");

    let save_mcr = com.inb(MCR);
    let save_lcr = com.inb(LCR);

    // Loopback: MCR = LOOP | OUT2 | RTS must read back as DCD | CTS.
    com.outb(MCR, 0x10 | 0x0a);
    let status = com.inb(MSR) & 0xf0;
    com.outb(MCR, save_mcr);
    assert_eq!(status, 0x90, "loopback test");

    // Clear a would-be EFR, then the FIFO test: IIR bits 7:6 = 3 means 16550A.
    com.outb(LCR, 0xbf);
    com.outb(2, 0);
    com.outb(LCR, 0);
    com.outb(FCR, 0x01);
    assert_eq!(com.inb(IIR) >> 6, 3, "FIFO bits in IIR");

    // No EFR with DLAB set (ST16C650V1) or with LCR = 0xbf (16650 and later).
    com.outb(LCR, 0x80);
    assert_ne!(com.inb(2), 0, "EFR with DLAB");
    com.outb(LCR, 0xbf);
    assert_ne!(com.inb(2), 0, "EFR with LCR = 0xbf");

    // Not a National Semiconductor SuperIO: register 2 in bank 2 does not follow
    // MCR's loopback bit.
    com.outb(LCR, 0);
    let status1 = com.inb(MCR);
    com.outb(LCR, 0xe0);
    let status2 = com.inb(2);
    assert_eq!((status2 ^ status1) & 0x10, 0);
    com.outb(LCR, 0);
    com.outb(MCR, status1 ^ 0x10);
    com.outb(LCR, 0xe0);
    let status2 = com.inb(2);
    com.outb(LCR, 0);
    com.outb(MCR, status1);
    assert_eq!((status2 ^ status1) & 0x10, 0, "NS16550A test");

    // Not a 16750: IIR bit 5 never reflects FCR bit 5.
    com.outb(LCR, 0);
    com.outb(FCR, 0x21);
    let status1 = com.inb(IIR) >> 5;
    com.outb(FCR, 0x01);
    com.outb(LCR, 0x80);
    com.outb(FCR, 0x21);
    let status2 = com.inb(IIR) >> 5;
    com.outb(FCR, 0x01);
    com.outb(LCR, 0);
    assert_eq!((status1, status2), (6, 6), "16750 test");

    // Not an Xscale: IER bit 6 (UUE) does not stick.
    let iersave = com.inb(IER);
    com.outb(IER, iersave & !0x40);
    assert_eq!(com.inb(IER) & 0x40, 0);
    com.outb(IER, iersave | 0x40);
    assert_eq!(com.inb(IER) & 0x40, 0, "UUE test");
    com.outb(IER, iersave);

    // FIFO size: 256 bytes sent in loopback, count what can be read back.
    let old_lcr = com.inb(LCR);
    com.outb(LCR, 0);
    let old_fcr = com.inb(FCR);
    let old_mcr = com.inb(MCR);
    com.outb(FCR, 0x07);
    com.outb(MCR, 0x10);
    com.outb(LCR, 0x80);
    let old_dl = (com.inb(DLL), com.inb(DLM));
    com.outb(DLL, 1);
    com.outb(DLM, 0);
    com.outb(LCR, 0x03);
    for byte in 0..=255u8 {
        com.outb(THR, byte);
    }
    let mut count = 0;
    while com.inb(LSR) & 0x01 != 0 && count < 256 {
        assert_eq!(
            com.inb(RBR),
            count as u8,
            "the first bytes sent stay in the FIFO"
        );
        count += 1;
    }
    com.outb(FCR, old_fcr);
    com.outb(MCR, old_mcr);
    com.outb(LCR, 0x80);
    com.outb(DLL, old_dl.0);
    com.outb(DLM, old_dl.1);
    com.outb(LCR, old_lcr);
    assert_eq!(count, 16, "FIFO size");

    // Reset: restore LCR and MCR, clear and disable the FIFOs, read RBR, clear IER.
    com.outb(LCR, save_lcr);
    com.outb(MCR, save_mcr);
    com.outb(FCR, 0x01);
    com.outb(FCR, 0x07);
    com.outb(FCR, 0x00);
    com.inb(RBR);
    com.outb(IER, 0);

    assert!(
        com.sent.is_empty(),
        "loopback bytes never reach the console"
    );
    assert_eq!(com.irq_changes, 0, "the probe raises no interrupt");
    assert_eq!(com.inb(IIR), 0x01);
    assert_eq!(com.inb(LSR), 0x60);
}

#[test]
fn console_bytes_leave_at_once() {
    let mut com = Com::new();
    com.outb(LCR, 0x03);
    for &byte in b"Linux version" {
        assert_eq!(com.inb(LSR) & 0x60, 0x60, "THRE and TEMT before the write");
        com.outb(THR, byte);
        assert_eq!(com.inb(LSR) & 0x60, 0x60, "THRE and TEMT right after it");
    }
    assert_eq!(com.sent, b"Linux version");
    assert_eq!(com.irq_changes, 0, "no interrupt with IER = 0");
}

#[test]
fn bytes_go_out_whole_whatever_the_framing() {
    let mut com = Com::new();
    com.outb(THR, 0xc1); // LCR = 0 after reset: 5 data bits on a real line
    com.outb(LCR, 0x02); // 7 data bits
    com.outb(THR, 0xff);
    assert_eq!(com.sent, [0xc1, 0xff]);
    assert!(com.receive(0xfe));
    assert_eq!(com.inb(RBR), 0xfe);
}

#[test]
fn thre_interrupt_armed_by_ier_cleared_by_iir_read_and_rearmed() {
    let mut com = Com::new();
    com.outb(MCR, 0x0b); // DTR, RTS, OUT2: the PC's interrupt gate open
    com.outb(FCR, 0x01);
    assert!(!com.irq);

    com.outb(IER, 0x02);
    assert!(com.irq, "enabling THRI with THR empty raises the line");
    assert_eq!(com.inb(IIR), 0xc2);
    assert!(!com.irq, "reading IIR while it shows THRE acknowledges it");
    assert_eq!(com.inb(IIR), 0xc1);

    com.outb(THR, b'a');
    assert!(com.irq, "THR empties at once: THRE pending again");
    assert_eq!(com.sent, b"a");
    com.outb(THR, b'b');
    assert!(
        com.irq,
        "writing THR cleared it, the transmission set it again"
    );
    assert_eq!(com.inb(IIR), 0xc2);
    assert!(!com.irq);

    // Rewriting IER with THRI already set does not re-arm; clearing and setting does.
    com.outb(IER, 0x03);
    assert!(!com.irq);
    assert_eq!(com.inb(IIR), 0xc1);
    com.outb(IER, 0x01);
    com.outb(IER, 0x03);
    assert!(com.irq);
    com.outb(IER, 0x01);
    assert!(!com.irq, "disabling THRI withdraws the interrupt");
    assert_eq!(com.inb(IIR), 0xc1);
}

/// `serial8250_do_startup()`: the THRE re-assertion test and the TXEN test. Linux
/// marks the port buggy (and polls it from a timer) unless both see THRE in IIR.
#[test]
fn linux_startup_thre_tests_find_no_bug() {
    let mut com = Com::new();
    // Clear FIFOs and interrupts, as the driver does first.
    com.outb(FCR, 0x01);
    com.outb(FCR, 0x07);
    com.outb(FCR, 0x00);
    com.inb(LSR);
    com.inb(RBR);
    com.inb(IIR);
    com.inb(MSR);
    assert_ne!(com.inb(LSR), 0xff);

    assert_ne!(com.inb(LSR) & 0x20, 0);
    com.outb(IER, 0x02);
    let iir1 = com.inb(IIR);
    com.outb(IER, 0);
    com.outb(IER, 0x02);
    let iir = com.inb(IIR);
    com.outb(IER, 0);
    assert_eq!(iir1 & 0x01, 0, "THRE shows after enabling THRI");
    assert_eq!(iir & 0x01, 0, "and again after re-enabling it");

    com.outb(LCR, 0x03);
    com.outb(MCR, 0x0b);
    com.outb(IER, 0x02);
    let lsr = com.inb(LSR);
    let iir = com.inb(IIR);
    com.outb(IER, 0);
    assert!(!(lsr & 0x40 != 0 && iir & 0x01 != 0), "TXEN test");
    assert!(!com.irq);
}

#[test]
fn out2_gates_the_irq_line() {
    let mut com = Com::new();
    com.outb(IER, 0x02);
    assert!(!com.irq, "pending, but OUT2 is off");
    assert_eq!(com.inb(IIR), 0x02, "IIR shows it all the same");
    com.outb(IER, 0x00);
    com.outb(IER, 0x02);
    com.outb(MCR, 0x08);
    assert!(com.irq);
    com.outb(MCR, 0x00);
    assert!(!com.irq);
    com.outb(MCR, 0x08);
    assert!(com.irq);
    com.outb(MCR, 0x18);
    assert!(!com.irq, "loopback forces OUT2 inactive");
    com.outb(MCR, 0x08);
    assert!(com.irq);
}

#[test]
fn received_bytes_raise_timeout_then_data_available() {
    let mut com = Com::new();
    com.outb(MCR, 0x08);
    com.outb(FCR, 0xc7); // FIFOs on, cleared, trigger level 14
    com.outb(IER, 0x01);
    assert!(!com.irq);
    assert_eq!(com.inb(LSR) & 0x01, 0);

    assert!(com.receive(b'0'));
    assert!(com.irq);
    assert_eq!(com.inb(LSR) & 0x01, 0x01);
    assert_eq!(
        com.inb(IIR),
        0xcc,
        "below the trigger level: character timeout"
    );
    assert!(com.irq, "reading IIR does not acknowledge received data");
    for byte in b'1'..=b'=' {
        assert!(com.receive(byte));
    }
    assert_eq!(com.inb(IIR), 0xc4, "14 bytes: data available");

    let mut got = Vec::new();
    while com.inb(LSR) & 0x01 != 0 {
        got.push(com.inb(RBR));
    }
    assert_eq!(got, (b'0'..=b'=').collect::<Vec<_>>());
    assert!(!com.irq, "an empty FIFO ends the interrupt");
    assert_eq!(com.inb(IIR), 0xc1);
    assert_eq!(com.inb(RBR), b'=', "an empty RBR reads the last byte again");
}

#[test]
fn receive_without_fifos_uses_data_available() {
    let mut com = Com::new();
    com.outb(MCR, 0x08);
    com.outb(IER, 0x01);
    assert!(com.receive(b'k'));
    assert_eq!(com.inb(IIR), 0x04);
    assert_eq!(com.uart.rx_space(), 0);
    assert_eq!(com.inb(RBR), b'k');
    assert_eq!(com.inb(IIR), 0x01);
    assert!(!com.irq);
}

#[test]
fn fifo_overrun_drops_the_new_byte_and_sets_oe() {
    let mut com = Com::new();
    com.outb(MCR, 0x08);
    com.outb(FCR, 0x01);
    com.outb(IER, 0x05); // received data and line status
    for byte in 0..16 {
        assert_eq!(com.uart.rx_space(), 16 - usize::from(byte));
        assert!(com.receive(byte));
    }
    assert_eq!(com.uart.rx_space(), 0);
    assert!(!com.receive(99), "the 17th byte is lost");
    assert_eq!(com.inb(IIR), 0xc6, "line status outranks received data");
    assert_eq!(com.inb(LSR), 0x63, "DR, OE, THRE, TEMT");
    assert_eq!(com.inb(LSR), 0x61, "reading LSR clears OE");
    assert_eq!(com.inb(IIR), 0xc4);
    for byte in 0..16 {
        assert_eq!(com.inb(RBR), byte);
    }
    assert_eq!(com.inb(IIR), 0xc1);
    assert!(!com.irq);
}

#[test]
fn overrun_without_fifos_keeps_the_newer_byte() {
    let mut com = Com::new();
    assert!(com.receive(1));
    assert!(!com.receive(2));
    assert_eq!(com.inb(LSR), 0x63);
    assert_eq!(com.inb(RBR), 2);
    assert_eq!(com.inb(LSR), 0x60);
}

#[test]
fn interrupt_priority_follows_the_datasheet() {
    let mut com = Com::new();
    com.outb(MCR, 0x08);
    com.outb(FCR, 0x01); // trigger level 1
                         // Modem status pending: DCTS and DDSR from entering loopback with RTS and DTR off,
                         // then back out.
    com.outb(MCR, 0x18);
    com.outb(MCR, 0x08);
    // Received data and an overrun: fill the FIFO and one more.
    for byte in 0..17 {
        com.receive(byte);
    }
    com.outb(IER, 0x0f);
    assert!(com.irq);
    assert_eq!(com.inb(IIR), 0xc6, "line status first");
    com.inb(LSR);
    assert_eq!(com.inb(IIR), 0xc4, "then received data");
    for _ in 0..16 {
        com.inb(RBR);
    }
    assert_eq!(com.inb(IIR), 0xc2, "then THRE, acknowledged by this read");
    assert_eq!(com.inb(IIR), 0xc0, "then modem status");
    assert!(com.irq);
    assert_eq!(com.inb(MSR) & 0x0f, 0x03, "DCTS, DDSR");
    assert_eq!(com.inb(IIR), 0xc1);
    assert!(!com.irq);
}

#[test]
fn loopback_returns_bytes_and_reflects_mcr_in_msr() {
    let mut com = Com::new();
    com.outb(FCR, 0x01);
    com.outb(MCR, 0x10);
    assert_eq!(com.inb(MSR) & 0xf0, 0x00);
    for (mcr, msr) in [
        (0x01, 0x20),
        (0x02, 0x10),
        (0x04, 0x40),
        (0x08, 0x80),
        (0x0f, 0xf0),
    ] {
        com.outb(MCR, 0x10 | mcr);
        assert_eq!(com.inb(MSR) & 0xf0, msr, "MCR {mcr:#x}");
    }
    com.outb(THR, b'L');
    assert!(com.sent.is_empty(), "loopback bytes stay inside");
    assert_eq!(com.inb(LSR) & 0x61, 0x61);
    assert_eq!(com.inb(RBR), b'L');
    assert!(
        !com.receive(b'x'),
        "the line input is disconnected in loopback"
    );
    assert_eq!(com.uart.rx_space(), 0);
    assert_eq!(com.inb(LSR) & 0x01, 0);

    // Pending interrupts do not reach IRQ 4 in loopback, even with OUT2 set.
    com.outb(IER, 0x01);
    com.outb(THR, b'M');
    assert_eq!(com.inb(IIR), 0xc4);
    assert!(!com.irq);
    com.outb(MCR, 0x08);
    assert!(com.irq, "leaving loopback opens the gate");
    com.outb(MCR, 0x0b);
    assert_eq!(com.inb(MSR) & 0xf0, 0xb0, "outside loopback: CTS, DSR, DCD");
}

#[test]
fn modem_status_deltas_and_interrupt() {
    let mut com = Com::new();
    com.outb(MCR, 0x08);
    com.outb(IER, 0x08);
    assert!(!com.irq);
    com.outb(MCR, 0x1d); // loopback, DTR, OUT1, OUT2: CTS drops, RI rises
    assert_eq!(com.inb(IIR), 0x00);
    assert_eq!(com.inb(MSR), 0xe0 | 0x01, "DSR, RI, DCD; DCTS");
    assert_eq!(com.inb(IIR), 0x01, "reading MSR clears the deltas");
    com.outb(MCR, 0x19); // RI falls: trailing edge
    assert_eq!(com.inb(MSR), 0xa0 | 0x04);
    com.outb(MCR, 0x08);
    assert!(com.irq);
    assert_eq!(com.inb(MSR), 0xb0 | 0x01);
    assert!(!com.irq);
}

#[test]
fn fcr_clears_and_switches_fifos() {
    let mut com = Com::new();
    com.outb(FCR, 0x01);
    com.receive(1);
    com.receive(2);
    com.outb(FCR, 0x03);
    assert_eq!(com.inb(LSR) & 0x01, 0, "bit 1 clears the receive FIFO");
    assert_eq!(com.inb(IIR), 0xc1, "bits 1 and 2 do not stay set");
    com.receive(3);
    com.outb(FCR, 0x00);
    assert_eq!(com.inb(LSR) & 0x01, 0, "turning FIFOs off clears them");
    assert_eq!(com.inb(IIR), 0x01);
    com.receive(4);
    com.outb(FCR, 0xc0);
    assert_eq!(com.inb(IIR), 0x01, "without bit 0 nothing is programmed");
    assert_eq!(com.inb(RBR), 4);
}

#[test]
fn wide_accesses_are_split_into_bytes() {
    let mut com = Com::new();
    let mut ev = DeviceEvents::default();
    com.uart.write(BASE + 3, 2, 0x0b03, 0, &mut ev);
    assert_eq!(com.inb(LCR), 0x03);
    assert_eq!(com.inb(MCR), 0x0b);
    com.outb(SCR, 0x5a);
    assert_eq!(com.uart.read(BASE + 6, 2, 0, &mut ev), 0x5ab0);
    assert_eq!(
        com.uart.read(BASE + 6, 4, 0, &mut ev),
        0xffff_5ab0,
        "0x400-0x401 float"
    );
    com.uart.write(BASE + 7, 4, 0x1111_1100, 0, &mut ev);
    assert_eq!(com.inb(SCR), 0x00);
    com.uart.write(BASE, 4, 0x0000_0041, 0, &mut ev);
    assert_eq!(&ev.serial_out[..], b"A");
    assert_eq!(ev.raise | ev.lower, 0);
}

#[test]
fn full_serial_out_drops_bytes_without_failing() {
    let mut uart = Uart::new();
    let mut ev = DeviceEvents::default();
    for byte in 0..20u32 {
        uart.write(BASE, 1, byte, 0, &mut ev);
    }
    assert_eq!(ev.serial_out.len(), 16);
    assert_eq!(uart.validate(), Ok(()));
}

#[test]
fn state_is_plain_bytes_without_padding() {
    assert_eq!(core::mem::size_of::<Uart>(), FIFO_SIZE + 14);
    assert_eq!(core::mem::align_of::<Uart>(), 1);
}

#[test]
fn validate_catches_inconsistent_state() {
    let good = Uart::new();
    assert_eq!(good.validate(), Ok(()));
    let cases: [fn(&mut Uart); 9] = [
        |u| u.rx_head = 16,
        |u| u.rx_count = 2, // FIFOs off: one byte at most
        |u| {
            u.fcr = FCR_ENABLE;
            u.rx_count = 17;
        },
        |u| u.fcr = 0xc0,
        |u| u.ier = 0x10,
        |u| u.mcr = 0x20,
        |u| u.thre_pending = 1, // with IER = 0
        |u| u.irq_line = 1,     // nothing pending
        |u| {
            u.mcr = MCR_OUT2;
            u.ier = IER_THRI;
            u.thre_pending = 1; // pending and gated through, but the line is low
        },
    ];
    for (i, corrupt) in cases.iter().enumerate() {
        let mut uart = good;
        corrupt(&mut uart);
        let err = uart.validate().expect_err(&format!("case {i}"));
        assert_eq!(err.device, "uart");
    }
}
