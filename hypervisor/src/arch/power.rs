//! Turning the machine off: the `shutdown` console command, the VT-x-missing path and
//! the fatal-configuration path all end here, so that emulators exit on their own and a
//! real machine powers down instead of hanging.
//!
//! The method is ACPI S5 (FADT PM1 control registers, SLP_TYP from the DSDT's `\_S5`).
//! Only when ACPI yields no method are the emulator ports tried (QEMU's PIIX4/ICH9 PM
//! block at 0x604, Bochs's at 0xb004, then the Bochs "Shutdown" port 0x8900).

use super::instructions::{halt_forever, outb, outw};
use crate::acpi::{self, PhysMemory, PowerOff};

/// Physical memory as the boot page tables map it: identity, first 4 GiB.
pub struct IdentityMapped;

/// The end of the boot identity map (see the 32-bit entry code).
pub const IDENTITY_MAPPED_END: u64 = 4 << 30;

impl PhysMemory for IdentityMapped {
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > IDENTITY_MAPPED_END {
            return None;
        }
        // SAFETY: [addr, end) lies inside the identity map installed at boot, which maps all
        // of it readable; firmware tables are never written while the hypervisor runs.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// Where the firmware keeps the RSDP when the boot loader did not pass one:
/// the first KiB of the EBDA and 0xE0000-0xFFFFF (ACPI 6.5 §5.2.5.1).
pub fn scan_for_rsdp() -> Option<u64> {
    let mem = IdentityMapped;
    // The EBDA segment is stored at 0x40E in the BIOS data area.
    let ebda = mem
        .read(0x40e, 2)
        .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])) << 4);
    if let Some(ebda) = ebda.filter(|e| (0x80000..0xa0000).contains(e)) {
        if let Some(found) = mem
            .read(ebda, 1024)
            .and_then(|b| acpi::find_rsdp_in(b, ebda))
        {
            return Some(found);
        }
    }
    mem.read(0xe0000, 0x20000)
        .and_then(|b| acpi::find_rsdp_in(b, 0xe0000))
}

/// Reads the RSDT and XSDT addresses from a validated RSDP at `addr`.
pub fn rsdp_at(addr: u64) -> Option<(u32, Option<u64>)> {
    // 36 bytes: the ACPI 2.0+ RSDP; a 1.0 RSDP is 20 and the parser looks only at those.
    let bytes = IdentityMapped.read(addr, 36)?;
    acpi::rsdp_from_bytes(bytes)
        .ok()
        .map(|(_, rsdt, xsdt)| (rsdt, xsdt))
}

/// Finds the ACPI power-off method from the RSDP fields.
pub fn method(rsdt: u32, xsdt: Option<u64>) -> Result<PowerOff, acpi::AcpiError> {
    acpi::power_off_method(rsdt, xsdt, &IdentityMapped)
}

/// Enters S5 with `method` if given, then the emulator fallbacks; halts if still running.
pub fn power_off(method: Option<PowerOff>) -> ! {
    super::serial::flush();
    // SAFETY (all port writes): these are the ACPI PM1 control ports the FADT names, with the
    // SLP_TYP the DSDT gives for S5; or, without ACPI, ports that on PC emulators are the PM1
    // control register (0x604, 0xb004) or the Bochs debug port (0x8900). The machine is about
    // to stop either way.
    unsafe {
        if let Some(m) = method {
            if let Some(b) = m.pm1b_cnt {
                outw(b, m.pm1b_value());
            }
            outw(m.pm1a_cnt, m.pm1a_value());
        } else {
            outw(0x604, 0x2000);
            outw(0xb004, 0x2000);
            for &byte in b"Shutdown" {
                outb(0x8900, byte);
            }
        }
    }
    // Give the chipset a moment; S5 is not instantaneous on real hardware.
    for _ in 0..10_000_000 {
        super::instructions::pause();
    }
    log::error!("shutdown: the machine did not power off; halted");
    halt_forever()
}
