//! Read-only pages for what nothing may write after cold boot: the hypervisor's code and
//! read-only data, the recovery anchor and the pristine copy.
//!
//! Why: a campaign run (docs/campaign/findings.md, finding 6) had a wild write land in the
//! pristine copy; the next failure found its checksum wrong and the trampoline had to
//! halt. With these pages read-only and CR0.WP set, such a write faults at once instead:
//! a detected failure, recovered from an intact copy. The few legitimate writers (the
//! trampoline's image restore, the scrub's repair of the pristine copy, the fault
//! injector and the `code-flip` trigger) clear CR0.WP around their write
//! ([`with_writes_allowed`]).
//!
//! The boot tables (`boot/src/entry.rs`) map the first 4 GiB with 2 MiB pages, so a 2 MiB
//! page holding something to protect is first split into 4 KiB pages, with a page table
//! from [`TABLES`]. The tables live in `.stacks`, which a microreboot neither copies nor
//! zeroes, like the boot tables that point to them: a recovery boot finds the split done
//! and only sets the bits again (idempotent).

#[cfg(target_os = "none")]
use super::instructions::control_registers;

/// Page-table entry bits (SDM Vol. 3A §4.5, Tables 4-15 to 4-20).
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// PWT, PCD: the memory type bits a split keeps.
const CACHE_BITS: u64 = (1 << 3) | (1 << 4);
/// Page size: a PDE that maps a 2 MiB page instead of pointing at a table.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
const PAGE_SIZE: u64 = 1 << 7;
const EXECUTE_DISABLE: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// CR0.WP: supervisor writes honour read-only pages (SDM Vol. 3A §2.5).
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
const CR0_WP: u64 = 1 << 16;

const PAGE: u64 = 4096;
const LARGE_PAGE: u64 = 2 << 20;
/// 2 MiB pages that can be split: the image's and the pristine copy's need two or three.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
const MAX_SPLITS: usize = 6;

#[cfg(target_os = "none")]
#[repr(C, align(4096))]
struct PageTable([u64; 512]);

/// Page tables for split 2 MiB pages, and how many are in use (both zeroed at cold boot
/// only; see the module doc).
#[cfg(target_os = "none")]
#[unsafe(link_section = ".stacks")]
static mut TABLES: [PageTable; MAX_SPLITS] = [const { PageTable([0; 512]) }; MAX_SPLITS];
#[cfg(target_os = "none")]
#[unsafe(link_section = ".stacks")]
static mut TABLES_USED: usize = 0;

/// Why a range could not be made read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectError {
    /// Not mapped by the boot tables' 2 MiB or 4 KiB identity pages.
    NotMapped(u64),
    /// All [`MAX_SPLITS`] page tables are in use.
    NoTable(u64),
}

impl core::fmt::Display for ProtectError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotMapped(a) => write!(f, "{a:#x} is not identity-mapped by the boot tables"),
            Self::NoTable(a) => write!(f, "no page table left to split the 2 MiB page at {a:#x}"),
        }
    }
}

/// The 4 KiB pages of `[start, end)`, by address (partial pages included).
pub fn pages(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start & !(PAGE - 1);
    (first..end).step_by(PAGE as usize)
}

/// The entries of a page table that maps the 2 MiB page `pde` mapped, page for page with
/// the same permissions and memory type.
pub fn split_entries(pde: u64) -> impl Iterator<Item = u64> {
    let base = pde & ADDRESS & !(LARGE_PAGE - 1);
    let bits = pde & (PRESENT | WRITABLE | CACHE_BITS | EXECUTE_DISABLE);
    (0..512).map(move |i| (base + i * PAGE) | bits)
}

/// Makes every page of `[start, end)` read-only for the hypervisor, and turns CR0.WP on.
///
/// # Errors
/// [`ProtectError`] when a page is not mapped by the boot tables, or more 2 MiB pages
/// would need splitting than there are tables; pages done before stay read-only.
#[cfg(target_os = "none")]
pub fn write_protect(start: u64, end: u64) -> Result<(), ProtectError> {
    for page in pages(start, end) {
        let pte = page_entry(page)?;
        // SAFETY: `pte` is this page's entry in the running tables (found by `page_entry`);
        // clearing its write bit only makes later writes fault.
        unsafe { core::ptr::write_volatile(pte, core::ptr::read_volatile(pte) & !WRITABLE) };
    }
    // SAFETY: reloading CR3 with its own value flushes the (non-global) TLB entries, so
    // the cleared write bits take effect; setting CR0.WP makes them bind ring 0 too.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr3",
            "mov cr3, {t}",
            "mov {t}, cr0",
            "or {t}, {wp}",
            "mov cr0, {t}",
            t = out(reg) _,
            wp = in(reg) CR0_WP,
            options(nostack)
        );
    }
    Ok(())
}

/// The page-table entry that maps 4 KiB page `page`, splitting its 2 MiB page first if
/// it is one.
#[cfg(target_os = "none")]
fn page_entry(page: u64) -> Result<*mut u64, ProtectError> {
    let indices = [(page >> 39) & 511, (page >> 30) & 511, (page >> 21) & 511];
    let mut table = control_registers()[2] & ADDRESS;
    for index in &indices[..2] {
        // SAFETY: `table` is a paging structure of the running CR3 (identity-mapped, below
        // 4 GiB); reading an entry has no side effect.
        let entry = unsafe { core::ptr::read_volatile((table as *const u64).add(*index as usize)) };
        if entry & PRESENT == 0 || entry & PAGE_SIZE != 0 {
            return Err(ProtectError::NotMapped(page));
        }
        table = entry & ADDRESS;
    }
    // SAFETY: entry `indices[2]` of the page directory reached above.
    let pde = unsafe { (table as *mut u64).add(indices[2] as usize) };
    // SAFETY: as above; one CPU, interrupts masked while the tables change.
    let entry = unsafe { core::ptr::read_volatile(pde) };
    if entry & PRESENT == 0 {
        return Err(ProtectError::NotMapped(page));
    }
    let table = if entry & PAGE_SIZE != 0 {
        split(pde, entry, page)?
    } else {
        entry & ADDRESS
    };
    // SAFETY: `table` is a page table (4 KiB, identity-mapped); index below 512.
    Ok(unsafe { (table as *mut u64).add(((page >> 12) & 511) as usize) })
}

/// Replaces the 2 MiB page of `pde` (whose value is `entry`) with a page table of the
/// same mappings; returns the table's address.
#[cfg(target_os = "none")]
fn split(pde: *mut u64, entry: u64, page: u64) -> Result<u64, ProtectError> {
    // SAFETY: TABLES and TABLES_USED are touched only here, on the one CPU, at boot.
    let used = unsafe { core::ptr::read(&raw const TABLES_USED) };
    if used == MAX_SPLITS {
        return Err(ProtectError::NoTable(page & !(LARGE_PAGE - 1)));
    }
    // SAFETY: as above; table `used` is not referenced by any paging structure yet.
    let tables = &raw mut TABLES;
    // SAFETY: as above.
    let table = unsafe { &mut (*tables)[used] };
    for (slot, value) in table.0.iter_mut().zip(split_entries(entry)) {
        *slot = value;
    }
    let address = table.0.as_ptr() as u64;
    // SAFETY: the new table maps exactly what the 2 MiB page did, so swapping the PDE
    // changes no translation (the stale 2 MiB TLB entry is dropped by the CR3 reload in
    // `write_protect`); its address is identity-mapped and 4 KiB-aligned.
    unsafe {
        core::ptr::write(&raw mut TABLES_USED, used + 1);
        core::ptr::write_volatile(pde, address | (entry & (PRESENT | WRITABLE)));
    }
    Ok(address)
}

/// Runs `f` with CR0.WP clear, so that it may write read-only pages: for the few writers
/// the module doc names. Interrupts should be masked (they are, in the hypervisor).
#[cfg(target_os = "none")]
pub fn with_writes_allowed<R>(f: impl FnOnce() -> R) -> R {
    let cr0 = control_registers()[0];
    // SAFETY: clearing CR0.WP only lets ring 0 write read-only pages; it is restored below.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) cr0 & !CR0_WP, options(nostack)) };
    let result = f();
    // SAFETY: restores CR0 as it was.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) cr0, options(nostack)) };
    result
}

/// Off the bare machine (unit tests) there is nothing to protect.
#[cfg(not(target_os = "none"))]
pub fn with_writes_allowed<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_partial_pages_at_both_ends() {
        let v: std::vec::Vec<u64> = pages(0x1_0800, 0x3_0001).collect();
        assert_eq!(v.first(), Some(&0x1_0000));
        assert_eq!(v.last(), Some(&0x3_0000));
        assert_eq!(v.len(), 33);
        assert_eq!(pages(0x5000, 0x5000).count(), 0);
    }

    #[test]
    fn a_split_maps_the_same_memory_with_the_same_bits() {
        let pde = 0x0120_0000 | PRESENT | WRITABLE | PAGE_SIZE | PCD_FOR_TEST | EXECUTE_DISABLE;
        let e: std::vec::Vec<u64> = split_entries(pde).collect();
        assert_eq!(e.len(), 512);
        assert_eq!(
            e[0],
            0x0120_0000 | PRESENT | WRITABLE | PCD_FOR_TEST | EXECUTE_DISABLE
        );
        assert_eq!(e[511] & ADDRESS, 0x0120_0000 + 511 * PAGE);
        assert!(
            e.iter().all(|v| v & PAGE_SIZE == 0),
            "4 KiB entries have no PS bit"
        );
    }

    const PCD_FOR_TEST: u64 = 1 << 4;
}
