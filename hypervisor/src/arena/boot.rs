//! The boot configuration, saved in the arena at cold boot so that a recovery boot can
//! rebuild the same memory layout and find the same guest images without the multiboot2
//! information (DESIGN 6: "the cold-boot path minus the multiboot2 parsing").
//!
//! Plain fixed-size data with a checksum: a recovery boot trusts it only if the checksum
//! matches, and then every length is also bound-checked before use.

use crate::bootinfo::MAX_REGIONS;
use crate::bootinfo::{BootInfo, RegionKind, MAX_CMDLINE, MAX_MODULES, MAX_MODULE_STRING};
use crate::memory::Range;

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
    /// FNV-1a of everything above.
    pub checksum: u64,
}

impl BootRecord {
    /// Fills the record from the cold boot's findings and seals it.
    pub fn save(&mut self, boot: &BootInfo, tsc_hz: u64, epoch: u64, epoch_tsc: u64) {
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
