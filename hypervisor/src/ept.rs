//! Extended page tables (EPT): the guest-physical to host-physical translation of one VM.
//!
//! A guest must never reach memory outside its own RAM. EPT is how that is enforced: the
//! processor translates every guest-physical address through these tables, and an
//! address they do not map causes an EPT violation, which the hypervisor turns into
//! "VM stopped". So the tables map exactly the VM's RAM ranges, nothing else.
//!
//! The tables live in the preserved arena, in pages handed out by its page allocator and
//! reached by physical address through [`TableMemory`] (this module never dereferences a
//! pointer itself, which is also why it runs and is tested on the host). They are
//! derivable from the VM table, which records the VM's RAM as [`Mapping`]s, so recovery
//! does not have to trust them: [`Ept::verify`] checks that they map exactly those ranges
//! with well-formed entries in pages the VM owns, and when it fails the owner throws them
//! away (by its own record of the pages, not by walking them) and builds new ones with
//! [`Ept::new`] and [`Ept::map`].
//!
//! Layout choices, all enforced by [`Ept::verify`]:
//! - a 4-level walk, so guest-physical addresses are below 2^48;
//! - host-physical addresses are below 2^48 too: all of Lazarus's identity-mapped memory
//!   is, and treating address bits 51:48 as reserved keeps the checks independent of the
//!   processor's physical-address width N (SDM: bits 51:N are reserved);
//! - non-leaf entries allow read, write and execute, so permissions are those of the leaf;
//! - every leaf is write-back with the guest PAT ignored;
//! - the largest page that alignment and the processor allow: 1 GiB, 2 MiB, else 4 KiB;
//! - no bit is ever set that is not described here, except the accessed and dirty flags
//!   the processor sets itself when they are enabled in the EPTP.
//!
//! # SDM references
//! Section and table numbers are those of the recent combined Intel 64 and IA-32
//! Architectures Software Developer's Manual (order number 325462, the 2023-2024
//! editions), Volume 3: §29.3.2 "EPT translation mechanism" and its Tables 29-1 to 29-6
//! (entry formats: 29-1 PML4E, 29-2 PDPTE mapping a 1 GiB page, 29-3 PDPTE referencing a
//! page directory, 29-4 PDE mapping a 2 MiB page, 29-5 PDE referencing a page table,
//! 29-6 PTE), §29.3.3.1 (EPT misconfigurations), §29.3.5 (accessed and dirty flags),
//! §29.3.7 (EPT and memory typing), §25.6.11 (the extended-page-table pointer) and
//! Appendix A.10 (IA32_VMX_EPT_VPID_CAP). Older editions number the same material
//! differently (for example §28.2.2 and §24.6.11).

use core::fmt;

/// Guest-physical addresses are below this: a 4-level walk translates bits 47:0 (§29.3.2).
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses (pages and tables) are below this (see the module documentation).
pub const HPA_LIMIT: u64 = 1 << 48;

/// A page mapped by an EPT page-table entry (Table 29-6).
pub const SIZE_4K: u64 = 1 << 12;
/// A page mapped by an EPT page-directory entry with bit 7 set (Table 29-4).
pub const SIZE_2M: u64 = 1 << 21;
/// A page mapped by an EPT PDPTE with bit 7 set (Table 29-2).
pub const SIZE_1G: u64 = 1 << 30;

// ---- Entry format (§29.3.2, Tables 29-1 to 29-6) ----

/// Bit 0: read access (bit 0 in every one of Tables 29-1 to 29-6).
const READ: u64 = 1 << 0;
/// Bit 1: write access (Tables 29-1 to 29-6).
const WRITE: u64 = 1 << 1;
/// Bit 2: execute access (Tables 29-1 to 29-6). Bits 2:0 all clear make the entry not
/// present (§29.3.2).
const EXECUTE: u64 = 1 << 2;
const RWX: u64 = READ | WRITE | EXECUTE;
/// Bits 5:3 of a leaf: the EPT memory type (Tables 29-2, 29-4, 29-6).
const MEMORY_TYPE_SHIFT: u32 = 3;
const MEMORY_TYPE_MASK: u64 = 0b111 << MEMORY_TYPE_SHIFT;
/// Memory type 6 is write-back (§29.3.7, same encoding as the MTRR memory types).
const MEMORY_TYPE_WB: u64 = 6;
/// Bit 6 of a leaf: ignore the guest PAT memory type (Tables 29-2, 29-4, 29-6).
const IGNORE_PAT: u64 = 1 << 6;
/// Bit 7 of a PDPTE or PDE: set, the entry maps a 1 GiB or 2 MiB page (Tables 29-2,
/// 29-4); clear, it references the next table (Tables 29-3, 29-5). Reserved in a PML4E
/// (Table 29-1, bits 7:3) and ignored in a PTE (Table 29-6).
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bit 8: accessed flag, set by the processor when the EPTP enables accessed and dirty
/// flags (§29.3.5; Tables 29-1 to 29-6).
const ACCESSED: u64 = 1 << 8;
/// Bit 9 of a leaf: dirty flag, likewise (§29.3.5; Tables 29-2, 29-4, 29-6).
const DIRTY: u64 = 1 << 9;
/// Bits 47:12: the physical address of the next table or of the page; the tables give
/// bits (N-1):12, narrowed further for large pages below.
const ADDRESS_MASK: u64 = 0x0000_ffff_ffff_f000;
/// Bits 51:48: reserved whenever N is 48 (bits 51:N, Tables 29-1 to 29-6); this module
/// keeps them clear whatever N is.
const HIGH_RESERVED: u64 = 0x000f_0000_0000_0000;
/// Bits 7:3 of a non-leaf entry: reserved in a PML4E (Table 29-1); bits 6:3 reserved and
/// bit 7 clear in a PDPTE or PDE that references a table (Tables 29-3, 29-5).
const TABLE_LOW_RESERVED: u64 = 0b1_1111 << 3;
/// Bits 29:12 of a PDPTE mapping a 1 GiB page are reserved (Table 29-2).
const LEAF_1G_RESERVED: u64 = 0x3fff_f000;
/// Bits 20:12 of a PDE mapping a 2 MiB page are reserved (Table 29-4).
const LEAF_2M_RESERVED: u64 = 0x001f_f000;

// ---- EPTP format (§25.6.11) ----

/// Bits 2:0: memory type of the EPT paging structures; 6 is write-back (§25.6.11).
const EPTP_MEMORY_TYPE_WB: u64 = 6;
/// Bits 5:3: the page-walk length minus one; 3 selects a 4-level walk (§25.6.11).
const EPTP_WALK_LENGTH_4: u64 = 3 << 3;
/// Bit 6: enables accessed and dirty flags for EPT (§25.6.11).
const EPTP_ACCESSED_DIRTY: u64 = 1 << 6;

// ---- IA32_VMX_EPT_VPID_CAP (Appendix A.10) ----

/// Bit 16: EPT PDEs may map 2 MiB pages (A.10).
const CAP_LARGE_2M: u64 = 1 << 16;
/// Bit 17: EPT PDPTEs may map 1 GiB pages (A.10).
const CAP_LARGE_1G: u64 = 1 << 17;
/// Bit 21: accessed and dirty flags for EPT are supported (A.10).
const CAP_ACCESSED_DIRTY: u64 = 1 << 21;

/// Where the tables live: pages handed out by the arena's page allocator, accessed by
/// physical address.
pub trait TableMemory {
    /// A new zeroed 4 KiB page for a table, by host-physical address; None when out of pages.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The table at host-physical `phys` (a page previously returned by `alloc_table`).
    fn table(&mut self, phys: u64) -> &mut [u64; 512];
    /// Read-only view, for lookups and verification.
    fn table_ref(&self, phys: u64) -> &[u64; 512];
}

/// What a guest may do with a mapped page. Every valid access includes `read`: EPT
/// cannot express write-only (§29.3.3.1), and execute-only is not needed for RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Access {
    /// Read only.
    pub const R: Self = Self::new(true, false, false);
    /// Read and write.
    pub const RW: Self = Self::new(true, true, false);
    /// Read and execute.
    pub const RX: Self = Self::new(true, false, true);
    /// Everything: ordinary guest RAM.
    pub const RWX: Self = Self::new(true, true, true);

    #[must_use]
    pub const fn new(read: bool, write: bool, execute: bool) -> Self {
        Self {
            read,
            write,
            execute,
        }
    }

    /// Bits 2:0 of an entry (Tables 29-1 to 29-6).
    const fn bits(self) -> u64 {
        let mut bits = 0;
        if self.read {
            bits |= READ;
        }
        if self.write {
            bits |= WRITE;
        }
        if self.execute {
            bits |= EXECUTE;
        }
        bits
    }

    const fn from_entry(entry: u64) -> Self {
        Self::new(entry & READ != 0, entry & WRITE != 0, entry & EXECUTE != 0)
    }
}

/// `rwx`, with `-` for what is not allowed.
impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |on: bool, c: char| if on { c } else { '-' };
        write!(
            f,
            "{}{}{}",
            flag(self.read, 'r'),
            flag(self.write, 'w'),
            flag(self.execute, 'x')
        )
    }
}

/// Guest-physical `[gpa, gpa + len)` backed by host-physical `[hpa, hpa + len)`, always
/// write-back. All three numbers are multiples of 4 KiB and `len` is not zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub gpa: u64,
    pub hpa: u64,
    pub len: u64,
    pub access: Access,
}

/// The EPT features of the processor that change how tables are built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EptCaps {
    /// 2 MiB pages (IA32_VMX_EPT_VPID_CAP bit 16).
    pub large_2m: bool,
    /// 1 GiB pages (IA32_VMX_EPT_VPID_CAP bit 17).
    pub large_1g: bool,
    /// Accessed and dirty flags (IA32_VMX_EPT_VPID_CAP bit 21).
    pub accessed_dirty: bool,
}

impl EptCaps {
    /// From the value of IA32_VMX_EPT_VPID_CAP (MSR 0x48c, Appendix A.10).
    #[must_use]
    pub const fn from_ept_vpid_cap(cap: u64) -> Self {
        Self {
            large_2m: cap & CAP_LARGE_2M != 0,
            large_1g: cap & CAP_LARGE_1G != 0,
            accessed_dirty: cap & CAP_ACCESSED_DIRTY != 0,
        }
    }
}

/// Why tables could not be built, or why they are not to be trusted.
///
/// A `level` is that of the table holding the entry: 4 is the PML4, 3 a page-directory-
/// pointer table, 2 a page directory, 1 a page table. A `gpa` in [`EptError::Corrupt`] is
/// the first guest-physical address the faulty entry covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EptError {
    /// The page allocator has no page left for a table.
    OutOfTables,
    /// A mapping is empty or not 4 KiB aligned.
    Misaligned { gpa: u64, hpa: u64, len: u64 },
    /// `gpa` is already mapped (or two expected mappings share it).
    Overlap { gpa: u64 },
    /// A mapping reaches beyond [`GPA_LIMIT`] or [`HPA_LIMIT`].
    AddressTooHigh { gpa: u64, hpa: u64, len: u64 },
    /// A mapping's access does not include read.
    InvalidAccess { gpa: u64, access: Access },
    /// The root or a page from the allocator is not a 4 KiB aligned address below
    /// [`HPA_LIMIT`].
    BadTablePage { phys: u64 },
    /// An entry is malformed or points outside the VM's table pages.
    Corrupt {
        gpa: u64,
        level: u8,
        reason: &'static str,
    },
    /// Well-formed tables that translate `gpa` differently from what was expected: to
    /// `found` instead of `expected` (host address of `gpa` itself and access; `None` for
    /// unmapped).
    Unexpected {
        gpa: u64,
        expected: Option<(u64, Access)>,
        found: Option<(u64, Access)>,
    },
}

impl fmt::Display for EptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutOfTables => f.write_str("out of pages for EPT tables"),
            Self::Misaligned { gpa, hpa, len } => write!(
                f,
                "mapping gpa {gpa:#x} -> hpa {hpa:#x} len {len:#x} is empty or not 4 KiB aligned"
            ),
            Self::Overlap { gpa } => write!(f, "gpa {gpa:#x} is already mapped"),
            Self::AddressTooHigh { gpa, hpa, len } => write!(
                f,
                "mapping gpa {gpa:#x} -> hpa {hpa:#x} len {len:#x} reaches beyond 2^48"
            ),
            Self::InvalidAccess { gpa, access } => write!(
                f,
                "mapping at gpa {gpa:#x} has access {access}, which does not allow reads"
            ),
            Self::BadTablePage { phys } => write!(
                f,
                "EPT table page {phys:#x} is not 4 KiB aligned below 2^48"
            ),
            Self::Corrupt { gpa, level, reason } => write!(
                f,
                "EPT corrupt at gpa {gpa:#x}, {} entry: {reason}",
                level_name(level)
            ),
            Self::Unexpected {
                gpa,
                expected,
                found,
            } => write!(
                f,
                "EPT maps gpa {gpa:#x} to {} where {} was expected",
                Target(found),
                Target(expected)
            ),
        }
    }
}

/// One side of [`EptError::Unexpected`], for display.
struct Target(Option<(u64, Access)>);

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((hpa, access)) => write!(f, "hpa {hpa:#x} {access}"),
            None => f.write_str("nothing"),
        }
    }
}

const fn level_name(level: u8) -> &'static str {
    match level {
        4 => "PML4",
        3 => "PDPT",
        2 => "PD",
        1 => "PT",
        _ => "unknown-level",
    }
}

/// Bit position of the first address bit a table at `level` translates (§29.3.2: a
/// PML4E covers bits 47:39, a PDPTE 38:30, a PDE 29:21, a PTE 20:12).
const fn level_shift(level: u8) -> u32 {
    12 + 9 * (level as u32 - 1)
}

/// How much guest-physical memory one entry of a table at `level` covers.
const fn level_size(level: u8) -> u64 {
    1 << level_shift(level)
}

/// Which entry of a table at `level` translates `gpa`.
const fn index(gpa: u64, level: u8) -> usize {
    ((gpa >> level_shift(level)) & 0x1ff) as usize
}

/// An entry as the walk uses it (the checks of [`Ept::verify`] come separately).
enum Entry {
    /// Bits 2:0 clear (§29.3.2).
    Absent,
    /// References the next table, at this host-physical address.
    Table(u64),
    /// Maps a page of `level_size(level)` at host-physical `base`.
    Leaf { base: u64, access: Access },
}

const fn is_leaf(entry: u64, level: u8) -> bool {
    level == 1 || (level != 4 && entry & PAGE_SIZE_BIT != 0)
}

const fn decode(entry: u64, level: u8) -> Entry {
    if entry & RWX == 0 {
        Entry::Absent
    } else if is_leaf(entry, level) {
        Entry::Leaf {
            base: entry & ADDRESS_MASK & !(level_size(level) - 1),
            access: Access::from_entry(entry),
        }
    } else {
        Entry::Table(entry & ADDRESS_MASK)
    }
}

/// A leaf entry mapping `hpa` (aligned to the page size of `level`) write-back.
const fn leaf_entry(hpa: u64, access: Access, level: u8) -> u64 {
    let size = if level > 1 { PAGE_SIZE_BIT } else { 0 };
    hpa | access.bits() | (MEMORY_TYPE_WB << MEMORY_TYPE_SHIFT) | IGNORE_PAT | size
}

/// A non-leaf entry referencing the table at `phys` (Tables 29-1, 29-3, 29-5).
const fn table_entry(phys: u64) -> u64 {
    phys | RWX
}

const fn is_table_page(phys: u64) -> bool {
    phys.is_multiple_of(SIZE_4K) && phys < HPA_LIMIT
}

/// The entry a walk for some gpa stops at: a leaf, or the not-present entry that ends it.
struct Slot {
    table: u64,
    index: usize,
    level: u8,
    entry: u64,
}

/// Rejects what no EPT can map: empty or misaligned, beyond 48 bits, not readable.
fn check_mapping(m: &Mapping) -> Result<(), EptError> {
    if m.len == 0 || !(m.gpa | m.hpa | m.len).is_multiple_of(SIZE_4K) {
        return Err(EptError::Misaligned {
            gpa: m.gpa,
            hpa: m.hpa,
            len: m.len,
        });
    }
    let below = |start: u64, limit: u64| start.checked_add(m.len).is_some_and(|end| end <= limit);
    if !below(m.gpa, GPA_LIMIT) || !below(m.hpa, HPA_LIMIT) {
        return Err(EptError::AddressTooHigh {
            gpa: m.gpa,
            hpa: m.hpa,
            len: m.len,
        });
    }
    if !m.access.read {
        return Err(EptError::InvalidAccess {
            gpa: m.gpa,
            access: m.access,
        });
    }
    Ok(())
}

/// How many `size`-aligned blocks `[start, end)` touches (`start < end <= GPA_LIMIT`).
const fn blocks(start: u64, end: u64, size: u64) -> u64 {
    (end.next_multiple_of(size) - start / size * size) / size
}

/// The extended page tables of one VM, known by the host-physical address of their PML4.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ept {
    /// Host-physical address of the PML4.
    pub pml4: u64,
}

impl Ept {
    /// Empty tables: a zeroed PML4 from `mem`.
    ///
    /// # Errors
    /// [`EptError::OutOfTables`], or [`EptError::BadTablePage`] if `mem` hands out a page
    /// that cannot be a table.
    pub fn new(mem: &mut impl TableMemory) -> Result<Ept, EptError> {
        Ok(Ept {
            pml4: new_table(mem)?,
        })
    }

    /// Maps `[gpa, gpa+len) -> [hpa, ...)` using the largest pages alignment and `caps`
    /// allow (1 GiB, 2 MiB, else 4 KiB), allocating tables from `mem` as needed.
    ///
    /// All or nothing: on error nothing of `m` is mapped (tables allocated on the way stay
    /// linked, possibly empty, and are still reported by [`Ept::for_each_table`]). When
    /// the tables are live, undoing a partial mapping needs an INVEPT like any unmapping.
    ///
    /// # Errors
    /// [`EptError::Misaligned`], [`EptError::AddressTooHigh`], [`EptError::InvalidAccess`]
    /// for a mapping no EPT can hold; [`EptError::Overlap`] with the first gpa already
    /// mapped; [`EptError::OutOfTables`]; [`EptError::BadTablePage`] for a bad root or a
    /// bad page from `mem`.
    pub fn map(
        &self,
        mem: &mut impl TableMemory,
        m: &Mapping,
        caps: &EptCaps,
    ) -> Result<(), EptError> {
        if !is_table_page(self.pml4) {
            return Err(EptError::BadTablePage { phys: self.pml4 });
        }
        check_mapping(m)?;
        let end = m.gpa + m.len;
        if let Some(gpa) = self.first_mapped(mem, m.gpa, end) {
            return Err(EptError::Overlap { gpa });
        }
        let mut done = 0;
        while done < m.len {
            match self.place(
                mem,
                m.gpa + done,
                m.hpa + done,
                m.len - done,
                m.access,
                caps,
            ) {
                Ok(size) => done += size,
                Err(error) => {
                    self.unmap_placed(mem, m.gpa, m.gpa + done);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Walks the tables: `Some((hpa, access, page_size))` if `gpa` is mapped, with `hpa`
    /// the host-physical address of `gpa` itself.
    #[must_use]
    pub fn translate(&self, mem: &impl TableMemory, gpa: u64) -> Option<(u64, Access, u64)> {
        if gpa >= GPA_LIMIT || !is_table_page(self.pml4) {
            return None;
        }
        let slot = self.slot(mem, gpa);
        match decode(slot.entry, slot.level) {
            Entry::Leaf { base, access } => {
                let size = level_size(slot.level);
                Some((base + (gpa & (size - 1)), access, size))
            }
            Entry::Absent | Entry::Table(_) => None,
        }
    }

    /// The EPT pointer for the VMCS: write-back paging structures, 4-level walk, accessed
    /// and dirty flags when `caps.accessed_dirty` (§25.6.11). Bits 11:7 stay clear.
    #[must_use]
    pub fn eptp(&self, caps: &EptCaps) -> u64 {
        let accessed_dirty = if caps.accessed_dirty {
            EPTP_ACCESSED_DIRTY
        } else {
            0
        };
        (self.pml4 & ADDRESS_MASK) | EPTP_MEMORY_TYPE_WB | EPTP_WALK_LENGTH_4 | accessed_dirty
    }

    /// Checks that the tables map exactly `expected` (no more, no less, same permissions
    /// and host addresses, write-back), that every entry is well formed (no reserved bit,
    /// nothing this module would not write, apart from accessed and dirty flags), and
    /// that every table page, the root included, is one `owned` accepts. Used at recovery
    /// to decide whether to trust the tables or rebuild them.
    ///
    /// Only pages `owned` accepts are read. The verdict is about translations, so a leaf
    /// may span several expected mappings when they are contiguous in both address
    /// spaces. A table page reached twice is caught when it would loop back to a table
    /// above it, or when its entries cannot be right in both places; what remains
    /// (a page shared by two places where it maps nothing, or where `expected` itself maps
    /// the same host memory twice) translates correctly and shows up as a double free
    /// when the owner frees what [`Ept::for_each_table`] reports.
    ///
    /// # Errors
    /// The first problem found: [`EptError::Corrupt`] for a malformed entry or a page not
    /// owned, [`EptError::Unexpected`] for a wrong, extra or missing translation, and the
    /// errors of [`Ept::map`] for an `expected` that is itself invalid or overlapping.
    pub fn verify(
        &self,
        mem: &impl TableMemory,
        expected: &[Mapping],
        owned: &dyn Fn(u64) -> bool,
    ) -> Result<(), EptError> {
        for (i, m) in expected.iter().enumerate() {
            check_mapping(m)?;
            for other in &expected[..i] {
                if m.gpa < other.gpa + other.len && other.gpa < m.gpa + m.len {
                    return Err(EptError::Overlap {
                        gpa: m.gpa.max(other.gpa),
                    });
                }
            }
        }
        let corrupt = |reason| EptError::Corrupt {
            gpa: 0,
            level: 4,
            reason,
        };
        if !is_table_page(self.pml4) {
            return Err(corrupt("root table address misaligned or too high"));
        }
        if !owned(self.pml4) {
            return Err(corrupt("root table not owned by this EPT"));
        }
        let mut verifier = Verifier {
            mem,
            expected,
            owned,
            covered: 0,
        };
        verifier.table(&[self.pml4], 4, 0)?;
        // Leaves cover disjoint guest ranges and each lies inside `expected`, whose ranges
        // are disjoint: equal sizes mean nothing is missing.
        let total: u64 = expected.iter().map(|m| m.len).sum();
        if verifier.covered == total {
            return Ok(());
        }
        let missing = expected
            .iter()
            .filter_map(|m| Some((self.first_unmapped(mem, m.gpa, m.gpa + m.len)?, m)))
            .min_by_key(|&(gpa, _)| gpa);
        Err(match missing {
            Some((gpa, m)) => EptError::Unexpected {
                gpa,
                expected: Some((m.hpa + (gpa - m.gpa), m.access)),
                found: None,
            },
            None => corrupt("mapped size does not add up"),
        })
    }

    /// Every table page reachable from the root, the root first, so the owner can free or
    /// account them: calls `f` for each. Meant for tables [`Ept::map`] built or
    /// [`Ept::verify`] accepted: it follows whatever the entries point to.
    pub fn for_each_table(&self, mem: &impl TableMemory, f: &mut dyn FnMut(u64)) {
        visit(mem, self.pml4, 4, f);
    }

    /// How many table pages, the root included, [`Ept::new`] and [`Ept::map`] of each of
    /// `mappings` will need at most, to reserve arena space up front. An upper bound: it
    /// counts tables shared by several mappings once per mapping.
    #[must_use]
    pub fn tables_needed(mappings: &[Mapping], caps: &EptCaps) -> usize {
        let mut total: u64 = 1;
        for m in mappings {
            let start = m.gpa.min(GPA_LIMIT);
            let end = m.gpa.saturating_add(m.len).min(GPA_LIMIT);
            if start >= end {
                continue;
            }
            // Tables holding entries smaller than `size`: one in every `size` block the
            // range touches, except that when pages of `size` can be used (allowed, and
            // gpa and hpa equally aligned) the blocks it covers whole take one such page
            // each, so only the partial blocks at its ends need a table.
            let below = |size: u64, large: bool| {
                let touched = blocks(start, end, size);
                if large && (m.gpa ^ m.hpa) & (size - 1) == 0 {
                    let first_whole = start.next_multiple_of(size);
                    let end_whole = end / size * size;
                    touched - end_whole.saturating_sub(first_whole) / size
                } else {
                    touched
                }
            };
            let pdpts = blocks(start, end, level_size(4));
            total = total
                .saturating_add(pdpts)
                .saturating_add(below(SIZE_1G, caps.large_1g))
                .saturating_add(below(SIZE_2M, caps.large_2m));
        }
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// Where the walk for `gpa` stops. The root must be a table page and `gpa` below
    /// [`GPA_LIMIT`].
    fn slot(&self, mem: &impl TableMemory, gpa: u64) -> Slot {
        let mut table = self.pml4;
        let mut level = 4;
        loop {
            let index = index(gpa, level);
            let entry = mem.table_ref(table)[index];
            match decode(entry, level) {
                Entry::Table(next) if level > 1 => {
                    table = next;
                    level -= 1;
                }
                _ => {
                    return Slot {
                        table,
                        index,
                        level,
                        entry,
                    }
                }
            }
        }
    }

    /// The first mapped gpa in `[start, end)`, skipping unmapped space a whole entry at a time.
    fn first_mapped(&self, mem: &impl TableMemory, start: u64, end: u64) -> Option<u64> {
        self.first_where(mem, start, end, true)
    }

    /// The first unmapped gpa in `[start, end)`.
    fn first_unmapped(&self, mem: &impl TableMemory, start: u64, end: u64) -> Option<u64> {
        self.first_where(mem, start, end, false)
    }

    fn first_where(
        &self,
        mem: &impl TableMemory,
        start: u64,
        end: u64,
        mapped: bool,
    ) -> Option<u64> {
        let mut gpa = start;
        while gpa < end {
            let slot = self.slot(mem, gpa);
            if matches!(decode(slot.entry, slot.level), Entry::Leaf { .. }) == mapped {
                return Some(gpa);
            }
            let size = level_size(slot.level);
            gpa = gpa / size * size + size;
        }
        None
    }

    /// Maps the largest page that fits at `gpa`; returns its size.
    fn place(
        &self,
        mem: &mut impl TableMemory,
        gpa: u64,
        hpa: u64,
        remaining: u64,
        access: Access,
        caps: &EptCaps,
    ) -> Result<u64, EptError> {
        for (level, allowed) in [(3, caps.large_1g), (2, caps.large_2m), (1, true)] {
            let size = level_size(level);
            if !allowed
                || remaining < size
                || !gpa.is_multiple_of(size)
                || !hpa.is_multiple_of(size)
            {
                continue;
            }
            let (table, index) = self.table_for(mem, gpa, level)?;
            match decode(mem.table_ref(table)[index], level) {
                Entry::Absent => {
                    mem.table(table)[index] = leaf_entry(hpa, access, level);
                    return Ok(size);
                }
                // An empty table left by a failed map: fill it with smaller pages.
                Entry::Table(_) => {}
                Entry::Leaf { .. } => return Err(EptError::Overlap { gpa }),
            }
        }
        // Cannot happen: a checked mapping always fits a 4 KiB page, and a page-table
        // entry is never a table.
        Err(EptError::Corrupt {
            gpa,
            level: 1,
            reason: "no page size fits",
        })
    }

    /// The table at `level` on the walk for `gpa`, and the entry index in it, creating
    /// the tables above it as needed.
    fn table_for(
        &self,
        mem: &mut impl TableMemory,
        gpa: u64,
        level: u8,
    ) -> Result<(u64, usize), EptError> {
        let mut table = self.pml4;
        let mut at = 4;
        while at > level {
            let index = index(gpa, at);
            table = match decode(mem.table_ref(table)[index], at) {
                Entry::Table(next) => next,
                Entry::Absent => {
                    let next = new_table(mem)?;
                    mem.table(table)[index] = table_entry(next);
                    next
                }
                Entry::Leaf { .. } => return Err(EptError::Overlap { gpa }),
            };
            at -= 1;
        }
        Ok((table, index(gpa, level)))
    }

    /// Clears the leaves [`Ept::place`] wrote for `[start, end)`.
    fn unmap_placed(&self, mem: &mut impl TableMemory, start: u64, end: u64) {
        let mut gpa = start;
        while gpa < end {
            let slot = self.slot(mem, gpa);
            if matches!(decode(slot.entry, slot.level), Entry::Leaf { .. }) {
                mem.table(slot.table)[slot.index] = 0;
            }
            let size = level_size(slot.level);
            gpa = gpa / size * size + size;
        }
    }
}

/// A zeroed table page from `mem`.
fn new_table(mem: &mut impl TableMemory) -> Result<u64, EptError> {
    let phys = mem.alloc_table().ok_or(EptError::OutOfTables)?;
    if !is_table_page(phys) {
        return Err(EptError::BadTablePage { phys });
    }
    // The allocator promises a zeroed page; a stale entry here would map guest memory.
    mem.table(phys).fill(0);
    Ok(phys)
}

fn visit(mem: &impl TableMemory, table: u64, level: u8, f: &mut dyn FnMut(u64)) {
    f(table);
    if level == 1 {
        return;
    }
    for &entry in mem.table_ref(table) {
        if let Entry::Table(next) = decode(entry, level) {
            visit(mem, next, level - 1, f);
        }
    }
}

/// The state of one [`Ept::verify`] walk.
struct Verifier<'a, M: TableMemory> {
    mem: &'a M,
    expected: &'a [Mapping],
    owned: &'a dyn Fn(u64) -> bool,
    /// Bytes mapped by the leaves seen so far.
    covered: u64,
}

impl<M: TableMemory> Verifier<'_, M> {
    /// Checks the table at the end of `path` (root first), at `level`, covering
    /// guest-physical memory from `base`.
    fn table(&mut self, path: &[u64], level: u8, base: u64) -> Result<(), EptError> {
        let Some(&phys) = path.last() else {
            return Ok(());
        };
        let entries = self.mem.table_ref(phys);
        for (i, &entry) in entries.iter().enumerate() {
            if entry == 0 {
                // Most entries (a recovery boot checks every one): nothing to check.
                continue;
            }
            let gpa = base + i as u64 * level_size(level);
            let corrupt = |reason| EptError::Corrupt { gpa, level, reason };
            if entry & RWX == 0 {
                if entry != 0 {
                    return Err(corrupt("not-present entry with other bits set"));
                }
                continue;
            }
            if is_leaf(entry, level) {
                self.leaf(entry, level, gpa)?;
                continue;
            }
            if entry & (HIGH_RESERVED | TABLE_LOW_RESERVED) != 0 {
                return Err(corrupt("reserved bit set"));
            }
            if entry & RWX != RWX {
                return Err(corrupt("table entry without read, write and execute"));
            }
            if entry & !(RWX | ACCESSED | ADDRESS_MASK) != 0 {
                return Err(corrupt("bit set that the hypervisor never sets"));
            }
            let next = entry & ADDRESS_MASK;
            if !(self.owned)(next) {
                return Err(corrupt("table page not owned by this EPT"));
            }
            if path.contains(&next) {
                return Err(corrupt("table refers back to a table above it"));
            }
            let mut deeper = [0; 4];
            deeper[..path.len()].copy_from_slice(path);
            deeper[path.len()] = next;
            self.table(&deeper[..=path.len()], level - 1, gpa)?;
        }
        Ok(())
    }

    /// Checks a leaf entry at `level` mapping from `gpa`, and that it matches `expected`.
    fn leaf(&mut self, entry: u64, level: u8, gpa: u64) -> Result<(), EptError> {
        let corrupt = |reason| EptError::Corrupt { gpa, level, reason };
        let (low_reserved, size_bit) = match level {
            3 => (LEAF_1G_RESERVED, PAGE_SIZE_BIT),
            2 => (LEAF_2M_RESERVED, PAGE_SIZE_BIT),
            _ => (0, 0),
        };
        if entry & (HIGH_RESERVED | low_reserved) != 0 {
            return Err(corrupt("reserved bit set"));
        }
        if (entry & MEMORY_TYPE_MASK) >> MEMORY_TYPE_SHIFT != MEMORY_TYPE_WB {
            return Err(corrupt("memory type is not write-back"));
        }
        if entry & IGNORE_PAT == 0 {
            return Err(corrupt("ignore-PAT bit clear"));
        }
        let known =
            RWX | MEMORY_TYPE_MASK | IGNORE_PAT | size_bit | ACCESSED | DIRTY | ADDRESS_MASK;
        if entry & !known != 0 {
            return Err(corrupt("bit set that the hypervisor never sets"));
        }
        let size = level_size(level);
        let base = entry & ADDRESS_MASK;
        let access = Access::from_entry(entry);
        let end = gpa + size;
        let mut at = gpa;
        while at < end {
            let found = Some((base + (at - gpa), access));
            let Some(m) = self
                .expected
                .iter()
                .find(|m| m.gpa <= at && at < m.gpa + m.len)
            else {
                return Err(EptError::Unexpected {
                    gpa: at,
                    expected: None,
                    found,
                });
            };
            let want = Some((m.hpa + (at - m.gpa), m.access));
            if want != found {
                return Err(EptError::Unexpected {
                    gpa: at,
                    expected: want,
                    found,
                });
            }
            at = end.min(m.gpa + m.len);
        }
        self.covered += size;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
