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

/// One port access. Port ranges (`PORTS` of each device) are inclusive `(first, last)`.
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
    /// ISA IRQ lines (0-15) asserted: bit n = IRQ n.
    pub raise: u16,
    /// ISA IRQ lines deasserted. A line in both sets was pulsed: asserted, then
    /// deasserted (the PIC applies `raise` first, so an edge-triggered input latches it).
    pub lower: u16,
    /// Bytes the guest sent out of its serial port (COM1).
    pub serial_out: heapless::Vec<u8, 16>,
    /// The guest asked for a reset (i8042 command 0xFE, or port 0xCF9).
    pub reset: bool,
}

impl DeviceEvents {
    /// Asserts line `irq`. A later [`DeviceEvents::lower_irq`] in the same access makes
    /// it a pulse, not a cancellation.
    pub fn raise_irq(&mut self, irq: u8) {
        self.raise |= 1 << irq;
    }

    pub fn lower_irq(&mut self, irq: u8) {
        self.lower |= 1 << irq;
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

/// Bytes in an access of `size` (1, 2 or 4; anything else counts as 4, like
/// [`size_mask`]). Devices split wider accesses into byte accesses to consecutive ports,
/// as the ISA bus does.
pub fn access_width(size: u8) -> u16 {
    match size {
        1 => 1,
        2 => 2,
        _ => 4,
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

pub mod i8042;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod uart;

/// Whether `port` lies in one of the claimed ranges.
fn claims(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges
        .iter()
        .any(|&(first, last)| (first..=last).contains(&port))
}

/// All the device models of one VM: a plain-data block in the VM's arena record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Devices {
    pub uart: uart::Uart,
    pub pic: pic::Pic,
    pub pit: pit::Pit,
    pub rtc: rtc::Rtc,
    pub i8042: i8042::I8042,
    pub pci: pci::PciHost,
}

impl Devices {
    /// Power-on state; the RTC starts at `epoch_seconds` (seconds since 1970, UTC).
    pub const fn new(epoch_seconds: u64) -> Self {
        Self {
            uart: uart::Uart::new(),
            pic: pic::Pic::new(),
            pit: pit::Pit::new(),
            rtc: rtc::Rtc::new(epoch_seconds),
            i8042: i8042::I8042::new(),
            pci: pci::PciHost::new(),
        }
    }

    /// Performs `access` if a device claims the port (the value read, or 0 for a write);
    /// None if no device does. Interrupt lines the access changed reach the PIC.
    pub fn access(&mut self, a: PortAccess, now_ns: u64, ev: &mut DeviceEvents) -> Option<u32> {
        macro_rules! dispatch {
            ($dev:expr, $ty:ty) => {
                if claims(<$ty>::PORTS, a.port) {
                    let value = match a.write {
                        None => $dev.read(a.port, a.size, now_ns, ev),
                        Some(v) => {
                            $dev.write(a.port, a.size, v & size_mask(a.size), now_ns, ev);
                            0
                        }
                    };
                    self.pic.apply(ev);
                    return Some(value);
                }
            };
        }
        dispatch!(self.uart, uart::Uart);
        dispatch!(self.pic, pic::Pic);
        dispatch!(self.pit, pit::Pit);
        dispatch!(self.rtc, rtc::Rtc);
        dispatch!(self.i8042, i8042::I8042);
        dispatch!(self.pci, pci::PciHost);
        None
    }

    /// Fires the timers whose time has come (PIT channel 0 -> IRQ 0 at the PIC). Returns
    /// how many timer periods were missed and caught up.
    pub fn tick(&mut self, now_ns: u64, ev: &mut DeviceEvents) -> u64 {
        let missed = self.pit.tick(now_ns, ev);
        self.pic.apply(ev);
        missed
    }

    /// When a timer next needs attention, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pit.next_irq0_ns()
    }

    /// A byte typed on the VM's console: into the UART's receive FIFO (false if full).
    pub fn receive(&mut self, byte: u8, ev: &mut DeviceEvents) -> bool {
        let taken = self.uart.receive(byte, ev);
        self.pic.apply(ev);
        taken
    }

    /// Bound checks of every device (recovery, DESIGN 6).
    pub fn validate(&self) -> Result<(), BadState> {
        self.uart.validate()?;
        self.pic.validate()?;
        self.pit.validate()?;
        self.rtc.validate()?;
        self.i8042.validate()?;
        self.pci.validate()
    }
}
