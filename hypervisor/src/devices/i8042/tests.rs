//! The controller as Linux's i8042 driver and reboot code use it.

use super::*;

/// A controller on a bus, with IRQ 1 and IRQ 12 levels as the PIC would see them and
/// the reset requests seen.
struct Kbc {
    kbc: I8042,
    irq1: bool,
    irq12: bool,
    edges: usize,
    resets: usize,
}

impl Kbc {
    fn new() -> Self {
        Kbc {
            kbc: I8042::new(),
            irq1: false,
            irq12: false,
            edges: 0,
            resets: 0,
        }
    }

    fn inb(&mut self, port: u16) -> u8 {
        let mut ev = DeviceEvents::default();
        let value = self.kbc.read(port, 1, 0, &mut ev);
        self.collect(ev);
        assert!(value <= 0xff);
        value as u8
    }

    fn outb(&mut self, port: u16, value: u8) {
        let mut ev = DeviceEvents::default();
        self.kbc.write(port, 1, u32::from(value), 0, &mut ev);
        self.collect(ev);
    }

    fn collect(&mut self, ev: DeviceEvents) {
        assert_eq!((ev.raise | ev.lower) & !(1 << KBD_IRQ | 1 << AUX_IRQ), 0);
        for (irq, level) in [(KBD_IRQ, &mut self.irq1), (AUX_IRQ, &mut self.irq12)] {
            if ev.raise & (1 << irq) != 0 {
                assert!(!*level, "IRQ {irq} raised twice");
                *level = true;
                self.edges += 1;
            }
            if ev.lower & (1 << irq) != 0 {
                assert!(*level, "IRQ {irq} lowered twice");
                *level = false;
            }
        }
        assert_eq!((self.irq1, self.irq12), self.kbc.irqs_asserted());
        assert!(ev.serial_out.is_empty());
        self.resets += usize::from(ev.reset);
        assert_eq!(self.kbc.validate(), Ok(()));
    }

    fn status(&mut self) -> u8 {
        self.inb(COMMAND)
    }

    /// Linux's `i8042_flush()`: read while the output buffer is full, at most 16 bytes.
    fn flush(&mut self) -> usize {
        let mut count = 0;
        while self.status() & 0x01 != 0 {
            assert!(count < 16, "controller jammed");
            self.inb(DATA);
            count += 1;
        }
        count
    }

    /// Linux's `__i8042_command()`: the command, its parameters, then its results,
    /// each step after checking the status bit it would wait for (the model never makes
    /// it wait). None where Linux would time out.
    fn command(&mut self, command: u8, params: &[u8], results: usize) -> Option<Vec<u8>> {
        assert_eq!(self.status() & 0x02, 0, "input buffer free");
        self.outb(COMMAND, command);
        for &param in params {
            assert_eq!(self.status() & 0x02, 0, "input buffer free");
            self.outb(DATA, param);
        }
        let mut out = Vec::new();
        for _ in 0..results {
            let status = self.status();
            if status & 0x01 == 0 {
                return None;
            }
            if command == 0xd3 && status & 0x20 == 0 {
                return None; // AUX loop answered from the keyboard side
            }
            out.push(self.inb(DATA));
        }
        Some(out)
    }
}

#[test]
fn power_on_state() {
    let mut kbc = Kbc::new();
    assert_eq!(kbc.kbc, I8042::default());
    assert_eq!(
        kbc.status(),
        0x14,
        "system flag, not inhibited, nothing to read"
    );
    assert_eq!(kbc.command(0x20, &[], 1), Some(vec![0x65]));
    assert_eq!(kbc.command(0xd0, &[], 1), Some(vec![0xcf]));
    assert_eq!(
        kbc.edges, 2,
        "each answer raised IRQ 1 (enabled at power-on)"
    );
    assert_eq!(kbc.resets, 0);
}

/// What Linux's i8042 driver does at boot, from `i8042_controller_check()` to the
/// keyboard and mouse probes: it finds a controller with an AUX port, and neither a
/// keyboard nor a mouse, without waiting on any timeout.
#[test]
fn linux_probe_finds_a_controller_and_no_devices() {
    let mut kbc = Kbc::new();

    // i8042_controller_check: the flush ends.
    kbc.flush();
    // i8042_controller_selftest.
    assert_eq!(kbc.command(0xaa, &[], 1), Some(vec![0x55]));

    // i8042_controller_init: a stable CTR read, keyboard disabled, CTR written back.
    let first = kbc.command(0x20, &[], 1).unwrap()[0];
    let second = kbc.command(0x20, &[], 1).unwrap()[0];
    assert_eq!(first, second);
    let mut ctr = (first | 0x10) & !0x01;
    assert_ne!(kbc.status() & 0x10, 0, "no keylock warning");
    assert_ne!(ctr & 0x40, 0, "translated mode, as the BIOS left it");
    assert_eq!(kbc.command(0x60, &[ctr], 0), Some(vec![]));
    assert_eq!(kbc.flush(), 0);
    assert_eq!(kbc.command(0x20, &[], 1), Some(vec![ctr]));

    // i8042_check_mux: the loop returns every byte, so the third is no MUX version.
    kbc.flush();
    for byte in [0xf0, 0x56, 0xa4] {
        assert_eq!(kbc.command(0xd3, &[byte], 1), Some(vec![byte]));
    }

    // i8042_check_aux: loop test, then the AUX enable bit follows 0xA7 and 0xA8.
    kbc.flush();
    assert_eq!(kbc.command(0xd3, &[0x5a], 1), Some(vec![0x5a]));
    assert_eq!(kbc.command(0xa7, &[], 0), Some(vec![]));
    assert_ne!(kbc.command(0x20, &[], 1).unwrap()[0] & 0x20, 0);
    assert_eq!(kbc.command(0xa8, &[], 0), Some(vec![]));
    assert_eq!(kbc.command(0x20, &[], 1).unwrap()[0] & 0x20, 0);

    // AUX IRQ delivery test: AUX interrupt on, a looped byte left for the handler.
    ctr = (ctr | 0x02) & !0x20;
    kbc.command(0x60, &[ctr], 0);
    assert!(!kbc.irq12);
    kbc.command(0xd3, &[0xa5], 0);
    assert!(kbc.irq12, "IRQ 12 delivered");
    let status = kbc.status();
    assert_eq!(status & 0x21, 0x21, "mouse byte waiting");
    assert_eq!(kbc.inb(DATA), 0xa5);
    assert!(!kbc.irq12);
    ctr &= !0x02;
    ctr |= 0x20;
    kbc.command(0x60, &[ctr], 0);

    // Ports enabled with their interrupts.
    ctr = (ctr | 0x03) & !0x30;
    kbc.command(0x60, &[ctr], 0);

    // atkbd: GET ID to the keyboard gets an immediate NAK with a timeout.
    kbc.outb(DATA, 0xf2);
    assert!(kbc.irq1);
    let status = kbc.status();
    assert_eq!(status & 0x61, 0x41, "keyboard byte with timeout");
    assert_eq!(kbc.inb(DATA), 0xfe);
    assert!(!kbc.irq1);

    // psmouse: GET ID through 0xD4 gets the same from the mouse side.
    kbc.command(0xd4, &[0xf2], 0);
    assert!(kbc.irq12);
    let status = kbc.status();
    assert_eq!(status & 0x61, 0x61, "mouse byte with timeout");
    assert_eq!(kbc.inb(DATA), 0xfe);
    assert!(!kbc.irq12);
    assert_eq!(kbc.resets, 0);
}

#[test]
fn port_tests_pass() {
    let mut kbc = Kbc::new();
    assert_eq!(kbc.command(0xab, &[], 1), Some(vec![0x00]));
    assert_eq!(kbc.command(0xa9, &[], 1), Some(vec![0x00]));
}

#[test]
fn enable_and_disable_commands_set_ctr_bits() {
    let mut kbc = Kbc::new();
    let ctr = |kbc: &mut Kbc| kbc.command(0x20, &[], 1).unwrap()[0];
    kbc.command(0xad, &[], 0);
    assert_eq!(ctr(&mut kbc) & 0x30, 0x30);
    kbc.command(0xae, &[], 0);
    assert_eq!(ctr(&mut kbc) & 0x30, 0x20);
    kbc.command(0xa8, &[], 0);
    assert_eq!(ctr(&mut kbc) & 0x30, 0x00);
    kbc.command(0xa7, &[], 0);
    assert_eq!(ctr(&mut kbc) & 0x30, 0x20);
}

#[test]
fn ctr_system_flag_shows_in_status() {
    let mut kbc = Kbc::new();
    kbc.command(0x60, &[0x00], 0);
    assert_eq!(kbc.status() & 0x04, 0);
    kbc.command(0x60, &[0x04], 0);
    assert_eq!(kbc.status() & 0x04, 0x04);
    kbc.command(0x60, &[0x00], 0);
    kbc.command(0xaa, &[], 1);
    assert_eq!(kbc.status() & 0x04, 0x04, "a passed self test sets it");
}

#[test]
fn status_tells_which_port_was_written_last() {
    let mut kbc = Kbc::new();
    kbc.outb(COMMAND, 0xae);
    assert_eq!(kbc.status() & 0x08, 0x08);
    kbc.outb(DATA, 0xf4);
    assert_eq!(kbc.status() & 0x08, 0x00);
}

#[test]
fn internal_ram_reads_back() {
    let mut kbc = Kbc::new();
    kbc.command(0x7f, &[0x12], 0);
    assert_eq!(kbc.command(0x3f, &[], 1), Some(vec![0x12]));
    assert_eq!(kbc.command(0x20, &[], 1), Some(vec![0x65]), "CTR untouched");
}

#[test]
fn output_port_keeps_a20_on() {
    let mut kbc = Kbc::new();
    // Linux's boot code enables A20 this way: 0xD1, 0xDF, then a null pulse 0xFF.
    kbc.command(0xd1, &[0xdf], 0);
    kbc.command(0xff, &[], 0);
    assert_eq!(kbc.command(0xd0, &[], 1), Some(vec![0xdf]));
    kbc.command(0xd1, &[0xdd], 0);
    assert_eq!(
        kbc.command(0xd0, &[], 1),
        Some(vec![0xdf]),
        "A20 cannot go off"
    );
    kbc.command(0xdd, &[], 0);
    kbc.command(0xdf, &[], 0);
    assert_eq!(kbc.command(0xd0, &[], 1), Some(vec![0xdf]));
    assert_eq!(kbc.resets, 0);
}

#[test]
fn command_fe_resets() {
    let mut kbc = Kbc::new();
    // Linux's keyboard reboot: wait for the input buffer, pulse the reset line.
    assert_eq!(kbc.status() & 0x02, 0);
    kbc.outb(COMMAND, 0xfe);
    assert_eq!(kbc.resets, 1);
    kbc.outb(COMMAND, 0xf0);
    assert_eq!(kbc.resets, 2, "any pulse with bit 0 low");
    kbc.outb(COMMAND, 0xfd);
    assert_eq!(kbc.resets, 2, "bit 0 high: not pulsed");
}

#[test]
fn output_port_bit0_low_resets() {
    let mut kbc = Kbc::new();
    kbc.command(0xd1, &[0xce], 0);
    assert_eq!(kbc.resets, 1);
    kbc.command(0xd1, &[0xcf], 0);
    assert_eq!(kbc.resets, 1);
}

#[test]
fn keyboard_bytes_time_out_and_interrupt_only_when_enabled() {
    let mut kbc = Kbc::new();
    kbc.command(0x60, &[0x64], 0); // keyboard interrupt off
    kbc.outb(DATA, 0xff);
    assert!(!kbc.irq1);
    assert_eq!(kbc.status() & 0x41, 0x41);
    // Turning the interrupt on with the byte still there raises the line.
    kbc.outb(COMMAND, 0x60);
    kbc.outb(DATA, 0x65);
    assert!(kbc.irq1);
    assert_eq!(kbc.inb(DATA), 0xfe);
    assert!(!kbc.irq1);
    assert_eq!(kbc.status() & 0x61, 0, "timeout cleared with the byte");
    assert_eq!(
        kbc.inb(DATA),
        0xfe,
        "an empty buffer reads the last byte again"
    );
    assert!(!kbc.irq1);
}

#[test]
fn a_new_command_abandons_one_waiting_for_data() {
    let mut kbc = Kbc::new();
    kbc.outb(COMMAND, 0x60);
    kbc.outb(COMMAND, 0xaa);
    assert_eq!(kbc.inb(DATA), 0x55);
    kbc.outb(DATA, 0x00);
    assert_eq!(kbc.inb(DATA), 0xfe, "went to the keyboard, not the CTR");
    assert_eq!(kbc.command(0x20, &[], 1), Some(vec![0x65]));
}

#[test]
fn a_mouse_byte_replaces_an_unread_keyboard_byte() {
    let mut kbc = Kbc::new();
    kbc.command(0x60, &[0x47], 0); // both interrupts
    kbc.command(0xd2, &[0x11], 0);
    assert!(kbc.irq1);
    kbc.command(0xd3, &[0x22], 0);
    assert!(!kbc.irq1 && kbc.irq12);
    assert_eq!(kbc.inb(DATA), 0x22);
    assert!(!kbc.irq12);
}

#[test]
fn wide_accesses_are_split_into_bytes() {
    let mut kbc = Kbc::new();
    let mut ev = DeviceEvents::default();
    kbc.kbc.write(COMMAND, 1, 0xaa, 0, &mut ev);
    assert_eq!(
        kbc.kbc.read(DATA, 2, 0, &mut ev),
        0xff55,
        "0x61 is not the controller"
    );
    assert_eq!(kbc.kbc.read(COMMAND - 1, 2, 0, &mut ev), 0x1cff);
    kbc.kbc.write(COMMAND - 2, 4, 0x00ab_0000, 0, &mut ev);
    assert_eq!(kbc.kbc.read(DATA, 1, 0, &mut ev), 0x00);
    assert_eq!(kbc.kbc.validate(), Ok(()));
}

#[test]
fn state_is_plain_bytes_without_padding() {
    assert_eq!(core::mem::size_of::<I8042>(), 32 + 5);
    assert_eq!(core::mem::align_of::<I8042>(), 1);
}

#[test]
fn validate_catches_inconsistent_state() {
    let good = I8042::new();
    assert_eq!(good.validate(), Ok(()));
    let cases: [fn(&mut I8042); 5] = [
        |k| k.status |= 0x02,
        |k| k.status |= STATUS_TIMEOUT,
        |k| k.pending = CMD_SELF_TEST,
        |k| k.output_port = 0xcd,
        |k| k.irq_lines = 2,
    ];
    for (i, corrupt) in cases.iter().enumerate() {
        let mut kbc = good;
        corrupt(&mut kbc);
        let err = kbc.validate().expect_err(&format!("case {i}"));
        assert_eq!(err.device, "i8042");
    }
}
