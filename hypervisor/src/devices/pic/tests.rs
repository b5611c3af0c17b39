//! The 8259A pair as Linux drives it: probe and initialization, masking, priorities,
//! nesting, EOIs, the cascade, trigger modes, auto-EOI, OCW3 reads and polling.

use super::*;
use std::vec::Vec;

fn outb(pic: &mut Pic, port: u16, value: u8) {
    let mut ev = DeviceEvents::default();
    pic.write(port, 1, u32::from(value), 0, &mut ev);
    assert_eq!(
        ev,
        DeviceEvents::default(),
        "the PIC has no outputs of its own"
    );
    assert_eq!(pic.validate(), Ok(()));
}

fn inb(pic: &mut Pic, port: u16) -> u8 {
    let mut ev = DeviceEvents::default();
    let value = pic.read(port, 1, 0, &mut ev);
    assert!(value <= 0xff);
    assert_eq!(pic.validate(), Ok(()));
    value as u8
}

fn raise(pic: &mut Pic, irq: u8) {
    pic.set_irq(irq, true);
    assert_eq!(pic.validate(), Ok(()));
}

fn lower(pic: &mut Pic, irq: u8) {
    pic.set_irq(irq, false);
    assert_eq!(pic.validate(), Ok(()));
}

/// A short edge, as the PIT and other edge devices give.
fn pulse(pic: &mut Pic, irq: u8) {
    raise(pic, irq);
    lower(pic, irq);
}

/// Linux's `probe_8259A()` and `init_8259A()` on x86_64: vectors 0x30-0x3f (the ISA
/// vectors above the first external vector 0x20, rounded to 16), slave on IR2, then
/// the cached masks restored. Returns whether the probe found a PIC.
fn linux_init(pic: &mut Pic, auto_eoi: bool, master_mask: u8, slave_mask: u8) -> bool {
    outb(pic, SLAVE_DATA, 0xff);
    outb(pic, MASTER_DATA, 0xfb);
    let found = inb(pic, MASTER_DATA) == 0xfb;

    outb(pic, MASTER_DATA, 0xff);
    outb(pic, MASTER_COMMAND, 0x11);
    outb(pic, MASTER_DATA, 0x30);
    outb(pic, MASTER_DATA, 1 << 2);
    outb(pic, MASTER_DATA, if auto_eoi { 0x03 } else { 0x01 });
    outb(pic, SLAVE_COMMAND, 0x11);
    outb(pic, SLAVE_DATA, 0x38);
    outb(pic, SLAVE_DATA, 2);
    outb(pic, SLAVE_DATA, 0x01);
    outb(pic, MASTER_DATA, master_mask);
    outb(pic, SLAVE_DATA, slave_mask);
    found
}

/// Linux's `mask_and_ack_8259A()` followed by the unmask after the handler: mask the
/// line, specific EOI to its chip (and to master IR2 for a slave line), unmask.
fn linux_ack(pic: &mut Pic, irq: u8) {
    let (mut master_mask, mut slave_mask) = (inb(pic, MASTER_DATA), inb(pic, SLAVE_DATA));
    if irq >= 8 {
        slave_mask |= 1 << (irq - 8);
        outb(pic, SLAVE_DATA, slave_mask);
        outb(pic, SLAVE_COMMAND, 0x60 + (irq & 7));
        outb(pic, MASTER_COMMAND, 0x60 + 2);
        outb(pic, SLAVE_DATA, slave_mask & !(1 << (irq - 8)));
    } else {
        master_mask |= 1 << irq;
        outb(pic, MASTER_DATA, master_mask);
        outb(pic, MASTER_COMMAND, 0x60 + irq);
        outb(pic, MASTER_DATA, master_mask & !(1 << irq));
    }
}

/// Takes interrupts until none is pending, EOIing each with `eoi` before the next.
fn drain(pic: &mut Pic, mut eoi: impl FnMut(&mut Pic, u8)) -> Vec<u8> {
    let mut vectors = Vec::new();
    while let Some(vector) = pic.pending_vector() {
        assert_eq!(pic.acknowledge(), Some(vector));
        assert_eq!(pic.validate(), Ok(()));
        vectors.push(vector);
        eoi(pic, vector);
        assert!(vectors.len() <= 16, "no end");
    }
    assert_eq!(pic.acknowledge(), None);
    vectors
}

#[test]
fn power_on_state_delivers_nothing() {
    let mut pic = Pic::new();
    assert_eq!(pic, Pic::default());
    assert_eq!(pic.validate(), Ok(()));
    assert_eq!(pic.imr(), 0xffff);
    raise(&mut pic, 0);
    raise(&mut pic, 12);
    assert_eq!(pic.pending_vector(), None);
    assert_eq!(pic.acknowledge(), None);
    assert_eq!(pic.irr(), 0x1001, "requests wait in IRR");
    // Unmasked, the BIOS vector bases show.
    outb(&mut pic, MASTER_DATA, 0xfa);
    assert_eq!(pic.pending_vector(), Some(0x08));
    outb(&mut pic, MASTER_DATA, 0xfb);
    outb(&mut pic, SLAVE_DATA, 0xef);
    assert_eq!(pic.pending_vector(), Some(0x74));
}

#[test]
fn linux_probe_and_init_then_a_timer_interrupt() {
    let mut pic = Pic::new();
    assert!(
        linux_init(&mut pic, false, 0xfa, 0xff),
        "probe reads the mask back"
    );
    assert_eq!(pic.imr(), 0xfffa);
    assert_eq!(pic.irr(), 0);
    assert_eq!(pic.pending_vector(), None);

    pulse(&mut pic, 0);
    assert_eq!(pic.pending_vector(), Some(0x30));
    assert_eq!(pic.acknowledge(), Some(0x30));
    assert_eq!(pic.isr(), 0x0001);
    assert_eq!(pic.irr(), 0);
    assert_eq!(pic.pending_vector(), None);

    pulse(&mut pic, 0);
    assert_eq!(pic.pending_vector(), None, "IRQ 0 in service blocks itself");
    linux_ack(&mut pic, 0);
    assert_eq!(pic.isr(), 0);
    assert_eq!(
        pic.acknowledge(),
        Some(0x30),
        "the tick that came meanwhile"
    );
}

#[test]
fn masked_requests_wait_in_irr() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0xff, 0xff);
    pulse(&mut pic, 4);
    assert_eq!(pic.irr(), 0x0010);
    assert_eq!(pic.pending_vector(), None);
    outb(&mut pic, MASTER_DATA, 0xef);
    assert_eq!(pic.pending_vector(), Some(0x34));
    outb(&mut pic, MASTER_DATA, 0xff);
    assert_eq!(pic.pending_vector(), None, "masking again withdraws INTR");
    assert_eq!(inb(&mut pic, MASTER_DATA), 0xff);
}

#[test]
fn fixed_priority_puts_the_slave_between_irq1_and_irq3() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0x00);
    for irq in (0..16).rev().filter(|&irq| irq != 2) {
        pulse(&mut pic, irq);
    }
    let order = drain(&mut pic, |pic, vector| {
        let irq = vector - 0x30;
        if irq >= 8 {
            outb(pic, SLAVE_COMMAND, 0x20);
        }
        outb(pic, MASTER_COMMAND, 0x20);
        assert_eq!(pic.isr(), 0, "IRQ {irq} ended");
    });
    let expected: Vec<u8> = [0, 1, 8, 9, 10, 11, 12, 13, 14, 15, 3, 4, 5, 6, 7]
        .iter()
        .map(|irq| 0x30 + irq)
        .collect();
    assert_eq!(order, expected);
}

#[test]
fn higher_priority_nests_lower_priority_waits() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0x00);
    pulse(&mut pic, 4);
    assert_eq!(pic.acknowledge(), Some(0x34));
    pulse(&mut pic, 5);
    assert_eq!(pic.pending_vector(), None, "IRQ 5 waits for IRQ 4");
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), Some(0x33), "IRQ 3 interrupts IRQ 4");
    assert_eq!(pic.isr(), 0x0018);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(
        pic.isr(),
        0x0010,
        "non-specific EOI ends the highest: IRQ 3"
    );
    assert_eq!(pic.pending_vector(), None);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x35));
    outb(&mut pic, MASTER_COMMAND, 0x65);
    assert_eq!(pic.isr(), 0);
    // A specific EOI for a level not in service changes nothing.
    outb(&mut pic, MASTER_COMMAND, 0x66);
    assert_eq!(pic.isr(), 0);
}

#[test]
fn slave_interrupts_come_through_master_irq2() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0xfb, 0xef); // cascade and IRQ 12 unmasked
    pulse(&mut pic, 12);
    assert_eq!(pic.irr(), 0x1004, "the slave's request shows on master IR2");
    assert_eq!(pic.pending_vector(), Some(0x3c));
    assert_eq!(pic.acknowledge(), Some(0x3c));
    assert_eq!(pic.isr(), 0x1004);
    assert_eq!(pic.irr(), 0);

    // IRQ 9 is higher than 12 on the slave, but master IR2 is in service.
    outb(&mut pic, SLAVE_DATA, 0xed);
    pulse(&mut pic, 9);
    assert_eq!(pic.irr(), 0x0204);
    assert_eq!(pic.pending_vector(), None);
    linux_ack(&mut pic, 12);
    assert_eq!(pic.isr(), 0);
    assert_eq!(pic.acknowledge(), Some(0x39));
    linux_ack(&mut pic, 9);

    // Masking the cascade input on the master blocks every slave line.
    outb(&mut pic, MASTER_DATA, 0xff);
    pulse(&mut pic, 12);
    assert_eq!(pic.pending_vector(), None);
    outb(&mut pic, MASTER_DATA, 0xfb);
    assert_eq!(pic.pending_vector(), Some(0x3c));
    // Masking the line on the slave takes the request off master IR2.
    outb(&mut pic, SLAVE_DATA, 0xff);
    assert_eq!(pic.irr() & 0x0004, 0);
    assert_eq!(pic.pending_vector(), None);
}

#[test]
fn irq2_has_no_line_of_its_own() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0x00);
    raise(&mut pic, 2);
    raise(&mut pic, 16);
    assert_eq!(pic.irr(), 0);
    assert_eq!(pic.pending_vector(), None);
}

#[test]
fn edge_lines_latch_level_lines_follow() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0x00);
    outb(&mut pic, ELCR_MASTER, 0xff);
    outb(&mut pic, ELCR_SLAVE, 0xff);
    assert_eq!(inb(&mut pic, ELCR_MASTER), 0xf8, "IRQ 0-2 are always edge");
    assert_eq!(
        inb(&mut pic, ELCR_SLAVE),
        0xde,
        "IRQ 8 and 13 are always edge"
    );
    outb(&mut pic, ELCR_MASTER, 0x20); // IRQ 5 level
    outb(&mut pic, ELCR_SLAVE, 0x04); // IRQ 10 level

    // Edge: a pulse is latched; a line that stays high asks once.
    raise(&mut pic, 4);
    lower(&mut pic, 4);
    assert_eq!(pic.acknowledge(), Some(0x34));
    outb(&mut pic, MASTER_COMMAND, 0x20);
    raise(&mut pic, 4);
    assert_eq!(pic.acknowledge(), Some(0x34));
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.pending_vector(), None, "no new edge, no new request");
    lower(&mut pic, 4);

    // Level: the request is the line; it lasts while the line is high.
    raise(&mut pic, 5);
    lower(&mut pic, 5);
    assert_eq!(pic.pending_vector(), None, "a level request that went away");
    raise(&mut pic, 5);
    assert_eq!(pic.acknowledge(), Some(0x35));
    assert_eq!(pic.irr() & 0x0020, 0x0020, "IRR keeps following the line");
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x35), "still high after EOI: again");
    lower(&mut pic, 5);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.pending_vector(), None);

    raise(&mut pic, 10);
    assert_eq!(pic.pending_vector(), Some(0x3a));
    lower(&mut pic, 10);
    assert_eq!(
        pic.pending_vector(),
        None,
        "a slave level request that went away"
    );

    // Switching a high line to level mode makes it a request at once.
    raise(&mut pic, 6);
    assert_eq!(pic.acknowledge(), Some(0x36));
    outb(&mut pic, MASTER_COMMAND, 0x20);
    outb(&mut pic, ELCR_MASTER, 0x60);
    assert_eq!(pic.pending_vector(), Some(0x36));
}

#[test]
fn ltim_makes_every_line_of_a_chip_level_triggered() {
    let mut pic = Pic::new();
    outb(&mut pic, MASTER_COMMAND, 0x19);
    outb(&mut pic, MASTER_DATA, 0x20);
    outb(&mut pic, MASTER_DATA, 0x04);
    outb(&mut pic, MASTER_DATA, 0x01);
    outb(&mut pic, MASTER_DATA, 0x00);
    raise(&mut pic, 3);
    lower(&mut pic, 3);
    assert_eq!(pic.pending_vector(), None);
    raise(&mut pic, 3);
    assert_eq!(pic.pending_vector(), Some(0x23));
}

#[test]
fn auto_eoi_leaves_nothing_in_service() {
    let mut pic = Pic::new();
    linux_init(&mut pic, true, 0x00, 0x00);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), Some(0x30));
    assert_eq!(pic.isr(), 0);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), Some(0x30), "no EOI needed");

    // Fixed priority without rotation: IRQ 1 before IRQ 3, again and again.
    pulse(&mut pic, 3);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), Some(0x31));
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), Some(0x31));
    assert_eq!(pic.acknowledge(), Some(0x33));

    // Rotate in auto-EOI mode: the line just served goes to the back.
    outb(&mut pic, MASTER_COMMAND, 0x80);
    pulse(&mut pic, 3);
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), Some(0x31));
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), Some(0x33), "IRQ 1 is now lowest");
    assert_eq!(pic.acknowledge(), Some(0x31));
    outb(&mut pic, MASTER_COMMAND, 0x00);
}

#[test]
fn ocw3_selects_irr_or_isr_and_data_reads_imr() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0xf0, 0xff);
    pulse(&mut pic, 1);
    pulse(&mut pic, 3);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x0a, "IRR after init");
    assert_eq!(pic.acknowledge(), Some(0x31));
    // Linux's spurious check: ISR, then back to IRR.
    outb(&mut pic, MASTER_COMMAND, 0x0b);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02, "the selection stays");
    assert_eq!(inb(&mut pic, MASTER_DATA), 0xf0, "the data port reads IMR");
    outb(&mut pic, MASTER_COMMAND, 0x0a);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x08);
    // OCW3 without RR keeps the selection.
    outb(&mut pic, MASTER_COMMAND, 0x0b);
    outb(&mut pic, MASTER_COMMAND, 0x08);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x02);
}

#[test]
fn poll_mode_acknowledges_by_reading() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0xfb, 0xbf); // cascade and IRQ 14 unmasked
    outb(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x00, "nothing requested");
    pulse(&mut pic, 14);
    outb(&mut pic, MASTER_COMMAND, 0x0c);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x82, "master: input 2");
    outb(&mut pic, SLAVE_COMMAND, 0x0c);
    assert_eq!(
        inb(&mut pic, SLAVE_DATA),
        0x86,
        "slave: input 6, through either port"
    );
    assert_eq!(pic.isr(), 0x4004);
    assert_eq!(
        inb(&mut pic, SLAVE_DATA),
        0xbf,
        "one read only, then IMR again"
    );
    assert_eq!(pic.pending_vector(), None);
    outb(&mut pic, SLAVE_COMMAND, 0x20);
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.isr(), 0);
    // An OCW3 without P cancels a poll command not yet read.
    pulse(&mut pic, 14);
    outb(&mut pic, MASTER_COMMAND, 0x0c);
    outb(&mut pic, MASTER_COMMAND, 0x08);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x04, "IRR, not a poll");
}

#[test]
fn rotation_commands_move_the_lowest_priority() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0xff);
    // Rotate on non-specific EOI: IRQ 1, once served, becomes the lowest.
    pulse(&mut pic, 1);
    assert_eq!(pic.acknowledge(), Some(0x31));
    outb(&mut pic, MASTER_COMMAND, 0xa0);
    pulse(&mut pic, 1);
    pulse(&mut pic, 7);
    assert_eq!(pic.acknowledge(), Some(0x37), "7 now outranks 1");
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x31));
    // Rotate on specific EOI: IRQ 1 ends and becomes the lowest, so 3 outranks 0.
    outb(&mut pic, MASTER_COMMAND, 0xe1);
    assert_eq!(pic.isr(), 0);
    pulse(&mut pic, 0);
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), Some(0x33));
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(pic.acknowledge(), Some(0x30));
    outb(&mut pic, MASTER_COMMAND, 0x20);
    // Set priority: 7 lowest is the fixed order again.
    outb(&mut pic, MASTER_COMMAND, 0xc7);
    pulse(&mut pic, 6);
    pulse(&mut pic, 0);
    assert_eq!(pic.acknowledge(), Some(0x30));
    // No-operation leaves everything.
    let before = pic;
    outb(&mut pic, MASTER_COMMAND, 0x40);
    assert_eq!(pic, before);
}

#[test]
fn special_mask_mode_lets_lower_levels_in() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0xff);
    pulse(&mut pic, 3);
    assert_eq!(pic.acknowledge(), Some(0x33));
    outb(&mut pic, MASTER_DATA, 0x08); // mask the level in service
    pulse(&mut pic, 5);
    assert_eq!(
        pic.pending_vector(),
        None,
        "normal mask mode: IRQ 3 still blocks"
    );
    outb(&mut pic, MASTER_COMMAND, 0x68); // set special mask mode
    assert_eq!(pic.acknowledge(), Some(0x35));
    outb(&mut pic, MASTER_COMMAND, 0x65);
    outb(&mut pic, MASTER_COMMAND, 0x48); // reset special mask mode
    pulse(&mut pic, 5);
    assert_eq!(pic.pending_vector(), None);
    outb(&mut pic, MASTER_COMMAND, 0x63);
    assert_eq!(pic.acknowledge(), Some(0x35));
}

#[test]
fn special_fully_nested_mode_lets_higher_slave_lines_through() {
    for sfnm in [false, true] {
        let mut pic = Pic::new();
        linux_init(&mut pic, false, 0x00, 0x00);
        if sfnm {
            outb(&mut pic, MASTER_COMMAND, 0x11);
            outb(&mut pic, MASTER_DATA, 0x30);
            outb(&mut pic, MASTER_DATA, 0x04);
            outb(&mut pic, MASTER_DATA, 0x11);
            outb(&mut pic, MASTER_DATA, 0x00);
        }
        pulse(&mut pic, 12);
        assert_eq!(pic.acknowledge(), Some(0x3c));
        pulse(&mut pic, 9);
        pulse(&mut pic, 13);
        let expected = if sfnm { Some(0x39) } else { None };
        assert_eq!(pic.pending_vector(), expected, "SFNM {sfnm}");
        pulse(&mut pic, 3);
        assert_eq!(
            pic.pending_vector(),
            expected,
            "IRQ 3 stays behind IR2 either way"
        );
    }
}

#[test]
fn icw1_starts_over() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0xff);
    raise(&mut pic, 1);
    pulse(&mut pic, 4);
    assert_eq!(pic.acknowledge(), Some(0x31));
    outb(&mut pic, MASTER_COMMAND, 0x0b);
    outb(&mut pic, MASTER_COMMAND, 0x11);
    assert_eq!(pic.imr() & 0xff, 0, "IMR cleared");
    assert_eq!(pic.isr() & 0xff, 0, "ISR cleared");
    assert_eq!(pic.irr() & 0xff, 0, "edge latches cleared");
    pulse(&mut pic, 4);
    assert_eq!(
        pic.pending_vector(),
        None,
        "nothing delivered mid-initialization"
    );
    outb(&mut pic, MASTER_DATA, 0x50);
    outb(&mut pic, MASTER_DATA, 0x04);
    outb(&mut pic, MASTER_DATA, 0x01);
    assert_eq!(pic.acknowledge(), Some(0x54), "new vector base");
    assert_eq!(
        inb(&mut pic, MASTER_COMMAND),
        0x00,
        "register select back to IRR"
    );
    outb(&mut pic, MASTER_COMMAND, 0x20);
    assert_eq!(
        pic.pending_vector(),
        None,
        "IRQ 1 stayed high: it needs a new edge"
    );
    lower(&mut pic, 1);
    raise(&mut pic, 1);
    assert_eq!(pic.pending_vector(), Some(0x51));
}

#[test]
fn without_icw4_or_cascade_the_sequence_is_shorter() {
    // Single mode, no ICW4: ICW1, ICW2, then operational (IMR writes).
    let mut pic = Pic::new();
    outb(&mut pic, MASTER_COMMAND, 0x12);
    outb(&mut pic, MASTER_DATA, 0x40);
    outb(&mut pic, MASTER_DATA, 0x00);
    assert_eq!(pic.imr() & 0xff, 0x00);
    // Master input 2 is still the slave's output, but the master supplies the vector.
    outb(&mut pic, SLAVE_DATA, 0xfe);
    pulse(&mut pic, 8);
    assert_eq!(pic.acknowledge(), Some(0x42));
    assert_eq!(pic.isr(), 0x0004, "the slave was not asked");
}

#[test]
fn spurious_irq15_when_the_slave_has_nothing() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0x00);
    // Only an inconsistent restored state gets here: master IR2 up, slave idle.
    pic.master.irr |= 1 << 2;
    pic.master.lines |= 1 << 2;
    assert!(pic.validate().is_err());
    assert_eq!(pic.pending_vector(), Some(0x3f));
    assert_eq!(pic.acknowledge(), Some(0x3f));
    assert_eq!(
        pic.isr(),
        0x0004,
        "master IR2 in service, slave ISR untouched"
    );
    assert_eq!(pic.validate(), Ok(()), "the cascade line is resynchronized");
}

#[test]
fn apply_takes_the_lines_from_device_events() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0x00, 0x00);
    outb(&mut pic, ELCR_MASTER, 0x10); // IRQ 4 level, as a UART line is kept
    let mut ev = DeviceEvents::default();
    ev.raise_irq(4);
    ev.raise_irq(12);
    pic.apply(&ev);
    assert_eq!(pic.irr(), 0x1014);
    let mut ev = DeviceEvents::default();
    ev.lower_irq(4);
    ev.lower_irq(12);
    pic.apply(&ev);
    assert_eq!(
        pic.irr(),
        0x1004,
        "the level line dropped, the edge stays latched"
    );
    assert_eq!(pic.validate(), Ok(()));

    // A line in both sets was pulsed: raised, then lowered.
    let mut ev = DeviceEvents::default();
    ev.raise_irq(0);
    ev.lower_irq(0);
    ev.raise_irq(4);
    ev.lower_irq(4);
    pic.apply(&ev);
    assert_eq!(
        pic.irr(),
        0x1005,
        "the edge pulse latched, the level pulse is gone"
    );
    assert_eq!(pic.acknowledge(), Some(0x30));
    assert_eq!(pic.validate(), Ok(()));
}

#[test]
fn wide_accesses_are_split_into_bytes() {
    let mut pic = Pic::new();
    linux_init(&mut pic, false, 0xf0, 0xff);
    pulse(&mut pic, 1);
    let mut ev = DeviceEvents::default();
    assert_eq!(
        pic.read(MASTER_COMMAND, 2, 0, &mut ev),
        0xf002,
        "IRR, then IMR"
    );
    assert_eq!(pic.read(MASTER_DATA, 4, 0, &mut ev), 0xffff_fff0);
    pic.write(ELCR_MASTER, 2, 0x0420, 0, &mut ev);
    assert_eq!(pic.read(ELCR_MASTER, 2, 0, &mut ev), 0x0420);
    pic.write(MASTER_COMMAND, 2, 0xee0b, 0, &mut ev); // OCW3 read ISR, IMR 0xee
    assert_eq!(pic.imr() & 0xff, 0xee);
    assert_eq!(inb(&mut pic, MASTER_COMMAND), 0x00);
    assert_eq!(ev, DeviceEvents::default());
}

#[test]
fn state_is_plain_bytes_without_padding() {
    assert_eq!(core::mem::size_of::<Pic>(), 2 * 15);
    assert_eq!(core::mem::align_of::<Pic>(), 1);
}

#[test]
fn validate_catches_inconsistent_state() {
    let mut good = Pic::new();
    linux_init(&mut good, false, 0x00, 0x00);
    assert_eq!(good.validate(), Ok(()));
    let cases: [fn(&mut Pic); 8] = [
        |p| p.master.init_step = 1,
        |p| p.slave.lowest = 8,
        |p| p.master.vector_base = 0x31,
        |p| p.master.elcr = 0x01,
        |p| p.slave.poll = 2,
        |p| p.slave.icw4 = 0x20,
        |p| {
            p.slave.elcr = 0x02;
            p.slave.irr = 0x02; // level line low but requested
        },
        |p| {
            p.slave.irr = 0x01; // slave requests, master IR2 does not show it
        },
    ];
    for (i, corrupt) in cases.iter().enumerate() {
        let mut pic = good;
        corrupt(&mut pic);
        let err = pic.validate().expect_err(&format!("case {i}"));
        assert_eq!(err.device, "pic");
    }
}
