//! The boot configuration, saved in the arena at cold boot so that a recovery boot can
//! rebuild the same memory layout and find the same guest images without the multiboot2
//! information (DESIGN 6: "the cold-boot path minus the multiboot2 parsing").
//!
//! Plain fixed-size data with a checksum: a recovery boot trusts it only if the checksum
//! matches, and then every length is also bound-checked before use.
//!
//! It also keeps what cold boot learnt from the firmware's ACPI tables and a recovery
//! needs again ([`PlatformRecord`]: the watchdog's I/O APIC pin, the power-off method),
//! so that a recovery boot never parses firmware tables a wild write may have destroyed
//! (campaign finding 7).
//!
//! A second copy of the whole record lives outside the arena (beside the recovery anchor,
//! read-only after cold boot); [`reconcile`] repairs either one from the other.

use crate::acpi::{Polarity, PowerOff};
use crate::bootinfo::MAX_REGIONS;
use crate::bootinfo::{BootInfo, RegionKind, MAX_CMDLINE, MAX_MODULES, MAX_MODULE_STRING};
use crate::memory::Range;
use crate::watchdog::Route;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RegionRecord {
    pub base: u64,
    pub len: u64,
    /// 1 if usable RAM.
    pub usable: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleRecord {
    pub start: u64,
    pub end: u64,
    pub string_len: u32,
    pub _pad: u32,
    pub string: [u8; MAX_MODULE_STRING],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootRecord {
    pub cmdline_len: u32,
    pub region_count: u32,
    pub module_count: u32,
    /// 1 if the boot loader passed an RSDP.
    pub rsdp_present: u32,
    pub cmdline: [u8; MAX_CMDLINE],
    pub regions: [RegionRecord; MAX_REGIONS],
    pub modules: [ModuleRecord; MAX_MODULES],
    /// The multiboot2 information's range (still reserved in the layout).
    pub mbi: [u64; 2],
    pub rsdt: u64,
    /// 0 when there is no XSDT.
    pub xsdt: u64,
    /// The TSC frequency measured at cold boot (a recovery boot does not measure again).
    pub tsc_hz: u64,
    /// Wall-clock seconds since 1970 at TSC value `epoch_tsc` (for guest RTCs).
    pub epoch: u64,
    pub epoch_tsc: u64,
    /// What cold boot found in the firmware tables.
    pub platform: PlatformRecord,
    /// FNV-1a of everything above.
    pub checksum: u64,
}

/// What cold boot took from the ACPI tables, for the recovery boot: where the PIT's
/// IRQ 0 reaches an I/O APIC (MADT, ACPI 6.5 §5.2.12) and how to enter S5 (FADT PM1
/// control blocks and the DSDT's `\_S5` package, ACPI 6.5 §4.8.3.2.1 and §7.4.2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlatformRecord {
    /// 1 when the watchdog was armed at cold boot (the three fields below are its route).
    pub watchdog: u32,
    /// The I/O APIC input pin the PIT's IRQ 0 arrives on.
    pub watchdog_pin: u32,
    /// Physical address of that I/O APIC's registers.
    pub watchdog_ioapic: u64,
    /// 0: active high, 1: active low.
    pub watchdog_polarity: u32,
    /// 1 when ACPI gave a power-off method (the four fields below).
    pub power_off: u32,
    pub pm1a_cnt: u32,
    /// 0 when there is no PM1b control block (ACPI 6.5 §5.2.9: a zero block address
    /// means it is not supported).
    pub pm1b_cnt: u32,
    pub slp_typ_a: u32,
    pub slp_typ_b: u32,
}

/// I/O APIC inputs an entry can name: IOAPICVER's "maximum redirection entry" is 8 bits
/// (82093AA datasheet §3.2.2), so at most 256.
const MAX_IOAPIC_PINS: u32 = 256;
/// SLP_TYPx is a 3-bit field of PM1x_CNT (ACPI 6.5 §4.8.3.2.1).
const MAX_SLP_TYP: u32 = 0b111;

impl PlatformRecord {
    /// The record of what cold boot found.
    pub fn new(watchdog: Option<Route>, power_off: Option<PowerOff>) -> Self {
        let mut r = PlatformRecord::default();
        if let Some(w) = watchdog {
            r.watchdog = 1;
            r.watchdog_pin = w.pin;
            r.watchdog_ioapic = w.ioapic;
            r.watchdog_polarity = u32::from(w.polarity == Polarity::ActiveLow);
        }
        if let Some(p) = power_off {
            r.power_off = 1;
            r.pm1a_cnt = u32::from(p.pm1a_cnt);
            r.pm1b_cnt = p.pm1b_cnt.map_or(0, u32::from);
            r.slp_typ_a = u32::from(p.slp_typ_a);
            r.slp_typ_b = u32::from(p.slp_typ_b);
        }
        r
    }

    /// The watchdog's route as cold boot found it: `Ok(None)` when it was not armed then;
    /// an error names a value no MADT could have given (the checksum matched, so this
    /// would be a bug, but the values reach hardware registers: checked anyway).
    ///
    /// # Errors
    /// What is wrong with the recorded route.
    pub fn watchdog_route(&self) -> Result<Option<Route>, &'static str> {
        match self.watchdog {
            0 => return Ok(None),
            1 => {}
            _ => return Err("bad presence flag"),
        }
        // The MADT's I/O APIC address is 32 bits (ACPI 6.5 §5.2.12.3); IOREGSEL and IOWIN
        // are 32-bit registers 0x10 apart.
        if self.watchdog_ioapic == 0
            || self.watchdog_ioapic > u64::from(u32::MAX)
            || !self.watchdog_ioapic.is_multiple_of(16)
        {
            return Err("I/O APIC address out of range");
        }
        if self.watchdog_pin >= MAX_IOAPIC_PINS {
            return Err("pin out of range");
        }
        let polarity = match self.watchdog_polarity {
            0 => Polarity::ActiveHigh,
            1 => Polarity::ActiveLow,
            _ => return Err("bad polarity"),
        };
        Ok(Some(Route {
            ioapic: self.watchdog_ioapic,
            pin: self.watchdog_pin,
            polarity,
        }))
    }

    /// The power-off method as cold boot found it, if any and if its values fit the
    /// registers they go to (16-bit I/O ports, 3-bit SLP_TYP).
    pub fn power_off(&self) -> Option<PowerOff> {
        let port = |p: u32| u16::try_from(p).ok().filter(|&p| p != 0);
        if self.power_off != 1 || self.slp_typ_a > MAX_SLP_TYP || self.slp_typ_b > MAX_SLP_TYP {
            return None;
        }
        Some(PowerOff {
            pm1a_cnt: port(self.pm1a_cnt)?,
            pm1b_cnt: match self.pm1b_cnt {
                0 => None,
                p => Some(port(p)?),
            },
            slp_typ_a: self.slp_typ_a as u16,
            slp_typ_b: self.slp_typ_b as u16,
        })
    }
}

/// What [`reconcile`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootRepair {
    /// Both intact and the same.
    Intact,
    /// The arena's record was damaged (or differed from the copy): rewritten from the copy.
    RestoredFromCopy,
    /// The copy was damaged: rewritten from the arena's record.
    CopyRestored,
    /// Both damaged: nothing to start a recovery boot from.
    BothDamaged,
}

/// Checks the arena's boot record `original` and its `copy` and repairs the damaged one
/// from the other. When both are intact but differ (each rewritten whole with a valid
/// checksum, which nothing does after cold boot), the copy wins: it is read-only.
pub fn reconcile(original: &mut BootRecord, copy: &mut BootRecord) -> BootRepair {
    match (original.is_intact(), copy.is_intact()) {
        (true, true) if original.checksum == copy.checksum => BootRepair::Intact,
        (_, true) => {
            *original = *copy;
            BootRepair::RestoredFromCopy
        }
        (true, false) => {
            *copy = *original;
            BootRepair::CopyRestored
        }
        (false, false) => BootRepair::BothDamaged,
    }
}

impl BootRecord {
    /// Fills the record from the cold boot's findings and seals it.
    pub fn save(
        &mut self,
        boot: &BootInfo,
        tsc_hz: u64,
        epoch: u64,
        epoch_tsc: u64,
        platform: PlatformRecord,
    ) {
        let cmdline = boot.cmdline.as_bytes();
        self.cmdline = [0; MAX_CMDLINE];
        self.cmdline[..cmdline.len()].copy_from_slice(cmdline);
        self.cmdline_len = cmdline.len() as u32;
        self.region_count = boot.regions.len() as u32;
        for (slot, r) in self.regions.iter_mut().zip(&boot.regions) {
            *slot = RegionRecord {
                base: r.base,
                len: r.len,
                usable: u32::from(r.kind == RegionKind::Usable),
                _pad: 0,
            };
        }
        self.module_count = boot.modules.len() as u32;
        for (slot, m) in self.modules.iter_mut().zip(&boot.modules) {
            let bytes = m.string.as_bytes();
            slot.start = m.start;
            slot.end = m.end;
            slot.string = [0; MAX_MODULE_STRING];
            slot.string[..bytes.len()].copy_from_slice(bytes);
            slot.string_len = bytes.len() as u32;
            slot._pad = 0;
        }
        self.mbi = [boot.mbi.0, boot.mbi.1];
        self.rsdp_present = u32::from(boot.rsdp.is_some());
        self.rsdt = boot.rsdp.map_or(0, |r| u64::from(r.rsdt));
        self.xsdt = boot.rsdp.and_then(|r| r.xsdt).unwrap_or(0);
        self.tsc_hz = tsc_hz;
        self.epoch = epoch;
        self.epoch_tsc = epoch_tsc;
        self.platform = platform;
        self.checksum = self.compute_checksum();
    }

    /// FNV-1a-style over 64-bit words rather than bytes: a recovery boot computes it,
    /// and a word at a time is eight times fewer steps.
    fn compute_checksum(&self) -> u64 {
        const WORDS: usize = core::mem::offset_of!(BootRecord, checksum) / 8;
        const _: () = assert!(core::mem::offset_of!(BootRecord, checksum) % 8 == 0);
        // SAFETY: BootRecord is repr(C), 8-aligned (it holds u64s), made of integers and
        // byte arrays with explicit padding fields and no implicit padding (every part is
        // a multiple of 8 bytes), so the words before `checksum` are initialised data.
        let words =
            unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u64>(), WORDS) };
        words.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &w| {
            (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// Whether the record is intact: checksum and every count within bounds.
    pub fn is_intact(&self) -> bool {
        self.checksum == self.compute_checksum()
            && self.cmdline_len as usize <= MAX_CMDLINE
            && self.region_count as usize <= MAX_REGIONS
            && self.module_count as usize <= MAX_MODULES
            && self.modules[..self.module_count as usize]
                .iter()
                .all(|m| m.string_len as usize <= MAX_MODULE_STRING && m.start <= m.end)
    }

    /// The hypervisor command line ("" if it is not UTF-8).
    pub fn cmdline(&self) -> &str {
        let len = (self.cmdline_len as usize).min(MAX_CMDLINE);
        core::str::from_utf8(&self.cmdline[..len]).unwrap_or("")
    }

    /// The firmware memory map as `(base, len, usable)`.
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
        let n = (self.region_count as usize).min(MAX_REGIONS);
        self.regions[..n]
            .iter()
            .map(|r| (r.base, r.len, r.usable != 0))
    }

    /// The boot modules: their memory and their strings.
    pub fn modules(&self) -> impl Iterator<Item = (Range, &str)> + '_ {
        let n = (self.module_count as usize).min(MAX_MODULES);
        self.modules[..n].iter().map(|m| {
            let len = (m.string_len as usize).min(MAX_MODULE_STRING);
            (
                Range::new(m.start, m.end),
                core::str::from_utf8(&m.string[..len]).unwrap_or(""),
            )
        })
    }

    /// The RSDT and XSDT addresses, if the boot loader passed an RSDP.
    pub fn rsdp(&self) -> Option<(u32, Option<u64>)> {
        (self.rsdp_present != 0).then(|| (self.rsdt as u32, (self.xsdt != 0).then_some(self.xsdt)))
    }

    /// Wall-clock seconds now, from the cold boot's reading and the TSC since.
    pub fn epoch_at(&self, tsc: u64) -> u64 {
        match self.tsc_hz {
            0 => self.epoch,
            hz => self.epoch + tsc.saturating_sub(self.epoch_tsc) / hz,
        }
    }
}

#[cfg(test)]
mod tests;
