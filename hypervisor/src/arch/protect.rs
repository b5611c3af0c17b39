//! Read-only pages for what nothing may write after cold boot: the hypervisor's code and
//! read-only data, the recovery anchor (and the boot record's copy beside it) and the
//! pristine copy; and unmapped guard pages below the stacks (`arch::stacks`).
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
//! and only clears the bits again (idempotent).
//!
//! The page walk is written against [`Tables`], so the same code edits the running tables
//! ([`Live`]) and a model of them in the unit tests.

#[cfg(target_os = "none")]
use super::instructions::control_registers;

/// Page-table entry bits (SDM Vol. 3A §4.5, Tables 4-15 to 4-20).
pub const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// PWT, PCD: the memory type bits a split keeps.
const CACHE_BITS: u64 = (1 << 3) | (1 << 4);
/// Page size: a PDE that maps a 2 MiB page instead of pointing at a table.
const PAGE_SIZE: u64 = 1 << 7;
const EXECUTE_DISABLE: u64 = 1 << 63;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;
/// CR0.WP: supervisor writes honour read-only pages (SDM Vol. 3A §2.5).
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
const CR0_WP: u64 = 1 << 16;

const PAGE: u64 = 4096;
const LARGE_PAGE: u64 = 2 << 20;
/// 2 MiB pages that can be split: the image's (code, stacks and their guard pages) and
/// the pristine copy's need two or three.
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

/// The paging structures, reached by physical address: the running ones on the machine
/// ([`Live`]), a model in unit tests. Indices are entry numbers (0-511).
pub trait Tables {
    /// The PML4's address (CR3's).
    fn root(&self) -> u64;
    fn read(&self, table: u64, index: u64) -> u64;
    fn write(&mut self, table: u64, index: u64, value: u64);
    /// A zeroed page table for a split, or None when none is left.
    fn new_table(&mut self) -> Option<u64>;
}

/// Where 4 KiB page `page` is mapped: the page table and the index of its entry,
/// splitting its 2 MiB page first if it is one (SDM Vol. 3A §4.5, Figure 4-8: PML4,
/// PDPT, page directory, page table, each indexed by 9 bits of the address).
///
/// # Errors
/// [`ProtectError`] when the page is not mapped by 2 MiB or 4 KiB pages, or no table is
/// left for a split.
pub fn page_entry(t: &mut impl Tables, page: u64) -> Result<(u64, u64), ProtectError> {
    let indices = [(page >> 39) & 511, (page >> 30) & 511, (page >> 21) & 511];
    let mut table = t.root() & ADDRESS;
    for &index in &indices[..2] {
        let entry = t.read(table, index);
        if entry & PRESENT == 0 || entry & PAGE_SIZE != 0 {
            return Err(ProtectError::NotMapped(page));
        }
        table = entry & ADDRESS;
    }
    let entry = t.read(table, indices[2]);
    if entry & PRESENT == 0 {
        return Err(ProtectError::NotMapped(page));
    }
    let page_table = if entry & PAGE_SIZE != 0 {
        split(t, table, indices[2], entry, page)?
    } else {
        entry & ADDRESS
    };
    Ok((page_table, (page >> 12) & 511))
}

/// Replaces the 2 MiB page of entry `index` of page directory `pd` (whose value is
/// `entry`) with a page table of the same mappings; returns the table's address.
fn split(
    t: &mut impl Tables,
    pd: u64,
    index: u64,
    entry: u64,
    page: u64,
) -> Result<u64, ProtectError> {
    let table = t
        .new_table()
        .ok_or(ProtectError::NoTable(page & !(LARGE_PAGE - 1)))?;
    for (i, value) in (0..).zip(split_entries(entry)) {
        t.write(table, i, value);
    }
    // The new table maps exactly what the 2 MiB page did, so swapping the PDE changes no
    // translation (the stale 2 MiB TLB entry is dropped by the caller's flush).
    t.write(pd, index, table | (entry & (PRESENT | WRITABLE)));
    Ok(table)
}

/// What `addr` translates to: its physical address and whether it is writable, or None
/// when a paging structure on the way is not present (a guard page, unmapped memory).
pub fn translate(t: &impl Tables, addr: u64) -> Option<(u64, bool)> {
    let mut table = t.root() & ADDRESS;
    let mut writable = true;
    for (level, shift) in [39u32, 30, 21, 12].into_iter().enumerate() {
        let entry = t.read(table, (addr >> shift) & 511);
        if entry & PRESENT == 0 {
            return None;
        }
        writable &= entry & WRITABLE != 0;
        let size = 1u64 << shift;
        if level == 3 || (level > 0 && entry & PAGE_SIZE != 0) {
            return Some((
                (entry & ADDRESS & !(size - 1)) | (addr & (size - 1)),
                writable,
            ));
        }
        table = entry & ADDRESS;
    }
    None
}

/// Clears `bits` in the entries of every 4 KiB page of `[start, end)` (splitting 2 MiB
/// pages as needed). The caller flushes the TLB.
///
/// # Errors
/// As [`page_entry`]; pages done before stay changed.
pub fn clear_bits(
    t: &mut impl Tables,
    start: u64,
    end: u64,
    bits: u64,
) -> Result<(), ProtectError> {
    for page in pages(start, end) {
        let (table, index) = page_entry(t, page)?;
        let entry = t.read(table, index);
        t.write(table, index, entry & !bits);
    }
    Ok(())
}

/// Makes every page of `[start, end)` read-only for the hypervisor, and turns CR0.WP on.
///
/// # Errors
/// [`ProtectError`] when a page is not mapped by the boot tables, or more 2 MiB pages
/// would need splitting than there are tables; pages done before stay read-only.
#[cfg(target_os = "none")]
pub fn write_protect(start: u64, end: u64) -> Result<(), ProtectError> {
    let result = clear_bits(&mut Live, start, end, WRITABLE);
    flush_tlb();
    // SAFETY: setting CR0.WP makes the read-only pages bind ring 0 too.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr0",
            "or {t}, {wp}",
            "mov cr0, {t}",
            t = out(reg) _,
            wp = in(reg) CR0_WP,
            options(nostack)
        );
    }
    result
}

/// Unmaps every page of `[start, end)` (its entries lose the present bit): any access
/// then faults (#PF). For the guard pages below the stacks (`arch::stacks`).
///
/// # Errors
/// As [`write_protect`].
#[cfg(target_os = "none")]
pub fn unmap(start: u64, end: u64) -> Result<(), ProtectError> {
    let result = clear_bits(&mut Live, start, end, PRESENT);
    flush_tlb();
    result
}

/// What the running page tables make of `addr` (see [`translate`]).
#[cfg(target_os = "none")]
pub fn translate_live(addr: u64) -> Option<(u64, bool)> {
    translate(&Live, addr)
}

/// Reloads CR3 with its own value: the (non-global) TLB entries are flushed, so changed
/// entries take effect (SDM Vol. 3A §4.10.4.1).
#[cfg(target_os = "none")]
fn flush_tlb() {
    // SAFETY: the same CR3 again: no translation changes but those the tables say.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr3",
            "mov cr3, {t}",
            t = out(reg) _,
            options(nostack)
        );
    }
}

/// The running paging structures (identity-mapped, below 4 GiB), with [`TABLES`] for
/// splits. One CPU, interrupts masked while they change.
#[cfg(target_os = "none")]
pub struct Live;

#[cfg(target_os = "none")]
impl Tables for Live {
    fn root(&self) -> u64 {
        control_registers()[2]
    }

    fn read(&self, table: u64, index: u64) -> u64 {
        // SAFETY: `table` is a paging structure reached from CR3 (identity-mapped, 4 KiB,
        // index below 512); reading an entry has no side effect.
        unsafe { core::ptr::read_volatile((table as *const u64).add(index as usize)) }
    }

    fn write(&mut self, table: u64, index: u64, value: u64) {
        // SAFETY: as for `read`; the callers above only split a 2 MiB page into the same
        // mappings or clear the writable or present bit of a page that nothing may write
        // or touch (their callers' claim).
        unsafe { core::ptr::write_volatile((table as *mut u64).add(index as usize), value) }
    }

    fn new_table(&mut self) -> Option<u64> {
        // SAFETY: TABLES and TABLES_USED are touched only here, on the one CPU, at boot.
        let used = unsafe { core::ptr::read(&raw const TABLES_USED) };
        if used == MAX_SPLITS {
            return None;
        }
        // SAFETY: as above; table `used` is not referenced by any paging structure yet.
        let table = unsafe { &raw mut TABLES[used] };
        // SAFETY: as above.
        unsafe { core::ptr::write(&raw mut TABLES_USED, used + 1) };
        Some(table as u64)
    }
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

/// A model of the boot page tables for unit tests: the first 4 GiB identity-mapped with
/// 2 MiB pages (PML4 -> PDPT -> four page directories), as `boot/src/entry.rs` builds them.
#[cfg(test)]
pub mod model {
    use super::{Tables, PAGE_SIZE, PRESENT, WRITABLE};
    use std::collections::HashMap;

    pub struct Model {
        tables: HashMap<u64, [u64; 512]>,
        next: u64,
        /// Tables a split may still take.
        pub spare: usize,
    }

    impl Model {
        pub fn identity_4g() -> Self {
            let mut m = Model {
                tables: HashMap::new(),
                next: 0x1_0000_0000,
                spare: 6,
            };
            let pml4 = m.alloc();
            let pdpt = m.alloc();
            m.write(pml4, 0, pdpt | PRESENT | WRITABLE);
            for gib in 0..4 {
                let pd = m.alloc();
                m.write(pdpt, gib, pd | PRESENT | WRITABLE);
                for i in 0..512 {
                    let base = (gib << 30) | (i << 21);
                    m.write(pd, i, base | PRESENT | WRITABLE | PAGE_SIZE);
                }
            }
            m
        }

        fn alloc(&mut self) -> u64 {
            let t = self.next;
            self.next += 4096;
            self.tables.insert(t, [0; 512]);
            t
        }
    }

    impl Tables for Model {
        fn root(&self) -> u64 {
            0x1_0000_0000
        }
        fn read(&self, table: u64, index: u64) -> u64 {
            self.tables[&table][index as usize]
        }
        fn write(&mut self, table: u64, index: u64, value: u64) {
            self.tables.get_mut(&table).expect("a table")[index as usize] = value;
        }
        fn new_table(&mut self) -> Option<u64> {
            self.spare = self.spare.checked_sub(1)?;
            Some(self.alloc())
        }
    }
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

    #[test]
    fn unmapping_one_page_splits_its_2m_page_and_changes_nothing_else() {
        let mut m = model::Model::identity_4g();
        let page = 0x0025_e000;
        assert_eq!(translate(&m, page), Some((page, true)));
        clear_bits(&mut m, page, page + 1, PRESENT).unwrap();
        assert_eq!(translate(&m, page), None);
        assert_eq!(translate(&m, page + 0xfff), None);
        for addr in [
            page - 1,
            page + 0x1000,
            0x20_0000,
            0x3f_ffff,
            0x40_0000,
            0x1234,
        ] {
            assert_eq!(translate(&m, addr), Some((addr, true)), "{addr:#x}");
        }
        assert_eq!(m.spare, 5, "one split");
        clear_bits(&mut m, 0x20_0000, 0x20_2000, WRITABLE).unwrap();
        assert_eq!(translate(&m, 0x20_1fff), Some((0x20_1fff, false)));
        assert_eq!(m.spare, 5, "the same 2 MiB page: no second split");
    }

    #[test]
    fn no_table_left_and_unmapped_memory_are_errors() {
        let mut m = model::Model::identity_4g();
        m.spare = 0;
        assert_eq!(
            clear_bits(&mut m, 0x60_1000, 0x60_2000, PRESENT),
            Err(ProtectError::NoTable(0x60_0000))
        );
        assert_eq!(
            page_entry(&mut m, 0x1_2000_0000),
            Err(ProtectError::NotMapped(0x1_2000_0000)),
            "above 4 GiB"
        );
    }
}
