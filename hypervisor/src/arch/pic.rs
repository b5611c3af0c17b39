//! The legacy 8259 PIC pair and the local APIC's end-of-interrupt register: just enough
//! to keep host interrupt controllers quiet. Host code never takes interrupts (DESIGN 4);
//! an external interrupt that arrives while a guest runs causes a VM exit that
//! acknowledges it ("acknowledge interrupt on exit"), and this module sends the EOI.

use super::instructions::outb;

const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
/// Vectors the PICs are remapped to, clear of the CPU exceptions (0-31).
pub const PIC1_BASE: u8 = 0x20;
pub const PIC2_BASE: u8 = 0x28;
/// The xAPIC EOI register (SDM Vol. 3A §11.8.5), at the architectural default base.
const LAPIC_EOI: u64 = 0xfee0_00b0;

/// Remaps both PICs above the exception vectors and masks every line (8259A datasheet:
/// ICW1-ICW4, then OCW1).
pub fn remap_and_mask() {
    // SAFETY: the PIC ports are architectural on PC-compatible machines; only this module
    // programs them, once, with interrupts masked.
    unsafe {
        outb(PIC1_CMD, 0x11);
        outb(PIC2_CMD, 0x11);
        outb(PIC1_DATA, PIC1_BASE);
        outb(PIC2_DATA, PIC2_BASE);
        outb(PIC1_DATA, 4);
        outb(PIC2_DATA, 2);
        outb(PIC1_DATA, 1);
        outb(PIC2_DATA, 1);
        outb(PIC1_DATA, 0xff);
        outb(PIC2_DATA, 0xff);
    }
}

/// Ends every interrupt the PICs hold in service: a dead instance may have acknowledged
/// one (a VM exit) and failed before its EOI, which would block that line and all lower
/// priority ones for good. Reads the ISR (OCW3 0x0b) and sends non-specific EOIs until
/// it is clear; returns how many EOIs were needed.
pub fn acknowledge_in_service() -> u32 {
    let mut eois = 0;
    for (cmd, cascade) in [(PIC2_CMD, true), (PIC1_CMD, false)] {
        for _ in 0..8 {
            // SAFETY: OCW3 selects the ISR for the next read of the command port; a
            // non-specific EOI clears the highest-priority in-service bit (8259A datasheet).
            let isr = unsafe {
                outb(cmd, 0x0b);
                super::instructions::inb(cmd)
            };
            if isr == 0 {
                break;
            }
            // SAFETY: as above.
            unsafe { outb(cmd, 0x20) };
            eois += 1;
        }
        if cascade && eois > 0 {
            // The slave's interrupt is in service at the master's cascade input too.
            // SAFETY: as above.
            unsafe { outb(PIC1_CMD, 0x20) };
        }
    }
    eois
}

/// Ends the interrupt `vector` that a VM exit acknowledged.
pub fn end_of_interrupt(vector: u8) {
    // SAFETY: EOI commands to the controller that delivered `vector`: the PICs for their
    // remapped ranges, else the local APIC, whose EOI register lies in the identity map.
    unsafe {
        match vector {
            PIC1_BASE..=0x27 => outb(PIC1_CMD, 0x20),
            PIC2_BASE..=0x2f => {
                outb(PIC2_CMD, 0x20);
                outb(PIC1_CMD, 0x20);
            }
            _ => core::ptr::write_volatile(LAPIC_EOI as *mut u32, 0),
        }
    }
}
