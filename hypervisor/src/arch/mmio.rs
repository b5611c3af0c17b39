//! Memory-mapped device registers (the local APIC and the I/O APIC): 32-bit volatile
//! access, and the one page-table edit the hypervisor makes after boot, which maps a
//! device's 2 MiB page uncacheable.
//!
//! The boot page tables (`boot/src/entry.rs`) identity-map the first 4 GiB with 2 MiB
//! write-back pages, device space included. On real hardware the firmware's MTRRs make
//! the APIC range (0xFEC00000 and up) uncacheable, and an MTRR type of UC wins over a
//! write-back page type (SDM Vol. 3A §12.5.2.2, "Selecting Memory Types for Pentium Pro
//! and Pentium II Processors"), but nothing obliges firmware to do so; MMIO must be UC
//! (SDM Vol. 3A §11.4.1 asks for the APIC register page to be strong uncacheable). So
//! [`make_uncacheable`] sets PCD and PWT in the page-directory entry, which (with the PAT
//! bit clear) selects PAT entry 3, UC in the power-on PAT (SDM Vol. 3A §12.12.3, "Selecting
//! a Memory Type from the PAT"; Lazarus never reprograms IA32_PAT). Bochs does not model
//! caches and is indifferent either way.

use super::instructions::{control_registers, invlpg};
use super::power::IDENTITY_MAPPED_END;

/// Page-table entry bits (SDM Vol. 3A §4.5, Tables 4-15 to 4-18).
const PRESENT: u64 = 1 << 0;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
/// Page size: the entry maps a page instead of pointing at a table.
const PAGE_SIZE: u64 = 1 << 7;
/// Bits 51:12 of an entry: the physical address of the next table.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Why a device page could not be made uncacheable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The address lies above the boot identity map.
    NotIdentityMapped(u64),
    /// The paging structures do not map it with a 2 MiB page (a 1 GiB page, 4 KiB pages,
    /// or nothing): the boot tables were replaced by something this function does not know.
    Not2MiBPage(u64),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotIdentityMapped(a) => {
                write!(f, "{a:#x} lies above the identity-mapped 4 GiB")
            }
            Self::Not2MiBPage(a) => write!(f, "{a:#x} is not mapped by a 2 MiB page"),
        }
    }
}

/// The page-directory entry index path of `addr`: PML4, PDPT and PD indices.
const fn indices(addr: u64) -> [usize; 3] {
    [
        ((addr >> 39) & 511) as usize,
        ((addr >> 30) & 511) as usize,
        ((addr >> 21) & 511) as usize,
    ]
}

/// Maps the 2 MiB page holding physical address `phys` uncacheable (PCD and PWT set in its
/// page-directory entry) and drops its TLB entry. Idempotent.
///
/// No cache flush is needed: device registers are never cached by the CPU in the first
/// place on a correctly configured machine, and the write-back alias only existed in the
/// page tables.
///
/// # Errors
/// [`MapError`] if `phys` is not mapped by the boot tables' 2 MiB identity pages.
pub fn make_uncacheable(phys: u64) -> Result<(), MapError> {
    if phys >= IDENTITY_MAPPED_END {
        return Err(MapError::NotIdentityMapped(phys));
    }
    let [pml4_i, pdpt_i, pd_i] = indices(phys);
    let mut table = control_registers()[2] & ADDRESS;
    for index in [pml4_i, pdpt_i] {
        // SAFETY: `table` is a paging structure of the running CR3 (the boot tables live in
        // the identity map, below 4 GiB); reading an entry has no side effect.
        let entry = unsafe { core::ptr::read_volatile((table as *const u64).add(index)) };
        if entry & PRESENT == 0 || entry & PAGE_SIZE != 0 {
            return Err(MapError::Not2MiBPage(phys));
        }
        table = entry & ADDRESS;
    }
    // SAFETY: `table` is the page directory reached above; entry `pd_i` is 8-aligned.
    let pde = unsafe { (table as *mut u64).add(pd_i) };
    // SAFETY: as above; only this CPU runs, with interrupts masked.
    let entry = unsafe { core::ptr::read_volatile(pde) };
    if entry & PRESENT == 0 || entry & PAGE_SIZE == 0 {
        return Err(MapError::Not2MiBPage(phys));
    }
    if entry & (PCD | PWT) != PCD | PWT {
        // SAFETY: setting PCD and PWT changes only the memory type of a page that holds
        // device registers (the caller's claim); the address it maps stays the same.
        unsafe {
            core::ptr::write_volatile(pde, entry | PCD | PWT);
            invlpg(phys & !((2 << 20) - 1));
        }
    }
    Ok(())
}

/// Reads the 32-bit device register at physical address `addr`.
///
/// # Safety
/// `addr` must be a 4-byte aligned register of a memory-mapped device inside the identity
/// map, whose read has no side effect the caller has not accounted for.
#[inline]
pub unsafe fn read32(addr: u64) -> u32 {
    // SAFETY: the caller's obligations above.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// Writes the 32-bit device register at physical address `addr`.
///
/// # Safety
/// As for [`read32`], and the caller must know what the write does to the device.
#[inline]
pub unsafe fn write32(addr: u64, value: u32) {
    // SAFETY: the caller's obligations above.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_path_of_the_apic_pages() {
        // 0xFEE00000: PML4 0, PDPT 3 (the fourth GiB), PD 503.
        assert_eq!(indices(0xfee0_0000), [0, 3, 503]);
        assert_eq!(indices(0xfec0_0000), [0, 3, 502]);
        assert_eq!(indices(0x20_0000), [0, 0, 1]);
    }
}
