//! The I/O APIC: its redirection table, through the indirect register pair IOREGSEL /
//! IOWIN (Intel 82093AA I/O Advanced Programmable Interrupt Controller datasheet, §3.0
//! "Register Description": IOREGSEL at offset 0x00, IOWIN at 0x10; registers 0x00
//! IOAPICID, 0x01 IOAPICVER, 0x10 + 2n / 0x11 + 2n the low / high half of redirection
//! entry n, §3.2.4 "IOREDTBL").
//!
//! The watchdog is its only user: one entry sends the PIT's IRQ 0 to the boot CPU as an
//! NMI, every other entry stays masked (the host takes no device interrupts, DESIGN 4).
//! The register page is mapped uncacheable before it is touched ([`super::mmio`]).

use super::mmio::{self, MapError};
use crate::acpi::Polarity;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const IOAPICVER: u32 = 0x01;
const IOREDTBL: u32 = 0x10;

/// One redirection table entry (82093AA datasheet §3.2.4, Figure 3-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectionEntry(pub u64);

impl RedirectionEntry {
    /// Bits 10:8, delivery mode 100b: NMI (the vector is ignored).
    const DELIVERY_NMI: u64 = 0b100 << 8;
    // Bit 11, destination mode, stays 0: physical (the destination is an APIC ID).
    /// Bit 13, interrupt input pin polarity: 1 is active low.
    const ACTIVE_LOW: u64 = 1 << 13;
    // Bit 15, trigger mode, stays 0: edge. The datasheet (§3.2.4, delivery mode NMI)
    // requires edge triggering for NMI delivery.
    /// Bit 16: masked.
    pub const MASKED: u64 = 1 << 16;
    /// Bits 63:56: destination APIC ID (physical mode).
    const DESTINATION_SHIFT: u32 = 56;

    /// An unmasked, edge-triggered NMI to the CPU with APIC ID `apic_id`, for an input
    /// of the given polarity.
    #[must_use]
    pub const fn nmi(apic_id: u8, polarity: Polarity) -> Self {
        let low = match polarity {
            Polarity::ActiveHigh => 0,
            Polarity::ActiveLow => Self::ACTIVE_LOW,
        };
        Self(((apic_id as u64) << Self::DESTINATION_SHIFT) | Self::DELIVERY_NMI | low)
    }

    /// The same entry masked.
    #[must_use]
    pub const fn masked(self) -> Self {
        Self(self.0 | Self::MASKED)
    }

    pub const fn is_masked(self) -> bool {
        self.0 & Self::MASKED != 0
    }
}

/// An I/O APIC whose register page is mapped uncacheable.
#[derive(Clone, Copy, Debug)]
pub struct IoApic {
    base: u64,
}

impl IoApic {
    /// The I/O APIC at physical address `base` (from the MADT).
    ///
    /// # Errors
    /// [`MapError`] if its page is not in the boot identity map's 2 MiB pages.
    pub fn at(base: u64) -> Result<Self, MapError> {
        mmio::make_uncacheable(base)?;
        Ok(Self { base })
    }

    /// Number of redirection entries: IOAPICVER bits 23:16 hold the highest entry's index.
    pub fn pins(&self) -> u32 {
        ((self.read(IOAPICVER) >> 16) & 0xff) + 1
    }

    pub fn entry(&self, pin: u32) -> RedirectionEntry {
        let low = self.read(IOREDTBL + 2 * pin);
        let high = self.read(IOREDTBL + 2 * pin + 1);
        RedirectionEntry((u64::from(high) << 32) | u64::from(low))
    }

    /// Writes entry `pin`: the half holding the mask bit last when unmasking, first when
    /// masking, so the entry is never live half-written.
    pub fn set_entry(&self, pin: u32, entry: RedirectionEntry) {
        let (low, high) = (entry.0 as u32, (entry.0 >> 32) as u32);
        if entry.is_masked() {
            self.write(IOREDTBL + 2 * pin, low);
            self.write(IOREDTBL + 2 * pin + 1, high);
        } else {
            self.write(IOREDTBL + 2 * pin, low | RedirectionEntry::MASKED as u32);
            self.write(IOREDTBL + 2 * pin + 1, high);
            self.write(IOREDTBL + 2 * pin, low);
        }
    }

    /// Masks entry `pin` (its other bits are kept).
    pub fn mask(&self, pin: u32) {
        let low = self.read(IOREDTBL + 2 * pin);
        self.write(IOREDTBL + 2 * pin, low | RedirectionEntry::MASKED as u32);
    }

    fn read(&self, register: u32) -> u32 {
        // SAFETY: `base` is the I/O APIC's register page (from the MADT, mapped UC by `at`);
        // selecting a register and reading the window have no other side effect. The pair is
        // not atomic: callers run on one CPU with interrupts masked, and the NMI handler
        // touches the I/O APIC only on the failure path, after which nothing returns here.
        unsafe {
            mmio::write32(self.base + IOREGSEL, register);
            mmio::read32(self.base + IOWIN)
        }
    }

    fn write(&self, register: u32, value: u32) {
        // SAFETY: as for `read`; the values written are redirection entries built above.
        unsafe {
            mmio::write32(self.base + IOREGSEL, register);
            mmio::write32(self.base + IOWIN, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmi_entries() {
        let e = RedirectionEntry::nmi(0, Polarity::ActiveHigh);
        assert_eq!(e.0, 0x0000_0000_0000_0400);
        assert!(!e.is_masked());
        let e = RedirectionEntry::nmi(3, Polarity::ActiveLow);
        assert_eq!(e.0, 0x0300_0000_0000_2400);
        assert_eq!(e.masked().0, 0x0300_0000_0001_2400);
        assert!(e.masked().is_masked());
    }
}
