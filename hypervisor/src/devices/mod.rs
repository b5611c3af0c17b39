//! Device models: the legacy PC devices a stock Linux kernel needs, one file each.
//!
//! A device is a plain-data state struct (`#[repr(C)]`, `Copy`, no pointers: it lives in
//! the arena, DESIGN 3) plus functions that act on it. VM exits are transactions
//! (DESIGN 4), so an exit handler applies a port access to a *copy* of the VM's devices
//! and the commit stores the copy back: a failure before the commit leaves the devices
//! exactly as they were, and re-executing the access gives the same result.
//!
//! Everything a device does to the outside world goes through [`DeviceEvents`]: interrupt
//! lines raised and lowered, bytes sent out of a serial port, a reset request. Time is
//! the guest's, in nanoseconds since the VM started, passed in by the caller.

use core::fmt;

/// One port access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortAccess {
    pub port: u16,
    /// 1, 2 or 4 bytes.
    pub size: u8,
    /// The value written (low `size` bytes), or None for a read.
    pub write: Option<u32>,
}

/// What devices did during one access or one timer tick, for the caller to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceEvents {
    /// ISA IRQ lines (0-15) asserted: bit n = IRQ n. Edge-triggered devices assert then
    /// deassert; the PIC latches the edge.
    pub raise: u16,
    /// ISA IRQ lines deasserted.
    pub lower: u16,
    /// Bytes the guest sent out of its serial port (COM1).
    pub serial_out: heapless::Vec<u8, 16>,
    /// The guest asked for a reset (i8042 command 0xFE, or port 0xCF9).
    pub reset: bool,
}

impl DeviceEvents {
    pub fn raise_irq(&mut self, irq: u8) {
        self.raise |= 1 << irq;
        self.lower &= !(1 << irq);
    }

    pub fn lower_irq(&mut self, irq: u8) {
        self.lower |= 1 << irq;
        self.raise &= !(1 << irq);
    }
}

/// Mask for an access of `size` bytes.
pub fn size_mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// What a port read returns when no device claims the port: all ones.
pub fn unclaimed_read(size: u8) -> u32 {
    size_mask(size)
}

/// A device's name, for logs and statistics.
pub trait Named {
    const NAME: &'static str;
}

/// Error for a state that fails its bound checks (at recovery, DESIGN 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadState {
    pub device: &'static str,
    pub what: &'static str,
}

impl fmt::Display for BadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.what)
    }
}
