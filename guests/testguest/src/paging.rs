//! Changes to the page tables Lazarus starts the guest with.
//!
//! Those tables identity-map guest RAM and nothing else, which is right for ordinary work
//! but not for two test modes. `wild-write` and `wild-read` must reach guest-physical
//! addresses outside RAM (that is their point) and possibly above the canonical 47-bit
//! range, so rather than extending the identity map they map the target through a fixed
//! window in the otherwise unused top PML4 slot. `user-hypercall` must run code at ring 3,
//! so every present entry gets the user bit.
//!
//! The tables are reached through their physical addresses, which works because they live
//! in guest RAM (Lazarus's below 64 KiB, ours in .bss) and guest RAM is identity-mapped.

use crate::cpu;
use crate::once::TakeOnce;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
const ENTRIES: usize = 512;
const LARGE_PAGE: u64 = 2 << 20;

/// Highest guest-physical address plus one that a page-table entry can hold.
pub const PHYSICAL_LIMIT: u64 = 1 << 52;

/// Virtual address of the window: PML4 slot 511, PDPT slot 0, PD slots 0 and 1.
const WINDOW_BASE: u64 = 0xffff_ff80_0000_0000;
const WINDOW_PML4_SLOT: usize = 511;

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

static WINDOW_PDPT: TakeOnce<Table> = TakeOnce::new(Table([0; ENTRIES]));
static WINDOW_PD: TakeOnce<Table> = TakeOnce::new(Table([0; ENTRIES]));

/// Maps the two 2 MiB pages of guest-physical memory starting at the one holding `gpa`
/// (so that an 8-byte access at `gpa` never runs off the end) and returns the virtual
/// address at which `gpa` appears. `None` if the window is already in use or `gpa` is not
/// below [`PHYSICAL_LIMIT`].
pub fn map_window(gpa: u64) -> Option<u64> {
    if gpa >= PHYSICAL_LIMIT {
        return None;
    }
    let pdpt = WINDOW_PDPT.take()?;
    let pd = WINDOW_PD.take()?;
    let frame = gpa & !(LARGE_PAGE - 1);
    pd.0[0] = frame | PRESENT | WRITABLE | HUGE;
    if frame + LARGE_PAGE < PHYSICAL_LIMIT {
        pd.0[1] = (frame + LARGE_PAGE) | PRESENT | WRITABLE | HUGE;
    }
    pdpt.0[0] = pd as *const Table as u64 | PRESENT | WRITABLE;
    let pml4 = (cpu::read_cr3() & ADDRESS_MASK) as *mut u64;
    // SAFETY: CR3 holds the PML4 of the identity-mapped start-up tables, inside guest RAM;
    // slot 511 maps nothing the guest uses (guest RAM is far below 512 GiB).
    unsafe {
        pml4.add(WINDOW_PML4_SLOT)
            .write_volatile(pdpt as *const Table as u64 | PRESENT | WRITABLE)
    };
    cpu::flush_tlb();
    Some(WINDOW_BASE + (gpa - frame))
}

/// Sets the user bit in every present entry of the current page tables, at every level,
/// so that ring 3 can reach all that ring 0 can.
pub fn make_all_user_accessible() {
    mark_user(cpu::read_cr3() & ADDRESS_MASK, 4);
    cpu::flush_tlb();
}

fn mark_user(table: u64, level: u32) {
    let entries = table as *mut u64;
    for index in 0..ENTRIES {
        // SAFETY: `table` is the PML4 from CR3 or a table a present non-leaf entry points
        // to; all of them live in identity-mapped guest RAM and nothing else refers to
        // them while the guest's single CPU runs this.
        let entry = unsafe { entries.add(index).read_volatile() };
        if entry & PRESENT == 0 {
            continue;
        }
        // SAFETY: as above.
        unsafe { entries.add(index).write_volatile(entry | USER) };
        // PS marks a leaf in a PDPT or PD; a PML4 entry always points to a table.
        let leaf = level == 1 || (level < 4 && entry & HUGE != 0);
        if !leaf {
            mark_user(entry & ADDRESS_MASK, level - 1);
        }
    }
}
