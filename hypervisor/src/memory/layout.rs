//! The cold-boot decision of where every class of hypervisor memory lives.
//!
//! This runs once, before any allocator exists, and its answer is meant to hold for the
//! life of the machine: the arena must sit at the same physical address after every
//! microreboot, so its placement depends only on the firmware map and the boot-time
//! occupants, never on anything a later boot might change. Placing the arena top-down
//! and everything else bottom-up keeps them from competing, and keeps the arena out of
//! the way of the large low run that guests and the heap grow into.
//!
//! Firmware maps are untrusted input: entries may be unsorted, overlap, disagree with
//! each other or be unaligned. The planner resolves disagreement towards "not ours"
//! (reserved wins over usable) and rounds usable memory inward and occupied memory
//! outward, so a mistake can only cost a page, never hand out a byte someone else uses.
//!
//! Everything that must be reachable through the boot page tables (which identity-map
//! only the first 4 GiB) is placed below 4 GiB.

use core::fmt::{self, Write as _};

use super::{FrameAllocator, Range, RangeSet, PAGE_SIZE};

/// Refuse to boot with less free RAM than this after all reservations.
pub const MIN_FREE_FOR_GUESTS: u64 = 32 << 20;

/// How many separate free ranges [`Layout::free`] can track.
pub const FREE_RANGES: usize = 64;

/// How many separate usable ranges the planner can track while it works.
pub const PLAN_RANGES: usize = 128;

/// How many separate module ranges [`Layout::modules`] remembers for printing.
pub const MODULE_RANGES: usize = 32;

/// How many separate firmware ranges [`Layout::firmware`] remembers for printing.
pub const FIRMWARE_RANGES: usize = 64;

/// How many separate low-memory ranges [`Layout::low_memory`] remembers for printing.
pub const LOW_MEMORY_RANGES: usize = 8;

const LOW_MEMORY: Range = Range::new(0, 1 << 20);
const FOUR_GIB: u64 = 1 << 32;
const BELOW_4GIB: Range = Range::new(0, FOUR_GIB);
const ARENA_ALIGN: u64 = 2 << 20;

/// What a byte of physical memory is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryClass {
    /// The running hypervisor: .text, .rodata, .data, .bss and the boot stacks.
    Image,
    /// The read-only boot-time copy of the image used to microreboot.
    Pristine,
    /// State that must survive a microreboot, at a location fixed at cold boot.
    Arena,
    /// Rebuilt on every boot: heap, host page tables, stacks.
    Transient,
    /// The pool guest RAM and page tables are taken from.
    Free,
    /// GRUB modules (guest kernels and initrds).
    Modules,
    /// The multiboot2 information structure.
    BootInfo,
    /// Usable RAM below 1 MiB, left to real-mode firmware habits and never handed out.
    LowMemory,
    /// Ranges the firmware reports as reserved, ACPI, NVS or bad.
    Firmware,
}

impl MemoryClass {
    /// Every class, in declaration order.
    pub const ALL: [MemoryClass; 9] = [
        Self::Image,
        Self::Pristine,
        Self::Arena,
        Self::Transient,
        Self::Free,
        Self::Modules,
        Self::BootInfo,
        Self::LowMemory,
        Self::Firmware,
    ];

    /// A short lower-case name for logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Pristine => "pristine",
            Self::Arena => "arena",
            Self::Transient => "transient",
            Self::Free => "free",
            Self::Modules => "modules",
            Self::BootInfo => "boot info",
            Self::LowMemory => "low memory",
            Self::Firmware => "firmware",
        }
    }
}

impl fmt::Display for MemoryClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Everything the planner needs to know about the machine and the boot.
#[derive(Clone, Copy, Debug)]
pub struct LayoutRequest<'a> {
    /// The firmware memory map as `(base, len, usable)`; may be unsorted, overlapping and
    /// unaligned.
    pub regions: &'a [(u64, u64, bool)],
    /// The whole loaded image, including .bss and stacks.
    pub image: Range,
    /// Bytes of .text + .rodata + .data the pristine copy holds (it adds a header page).
    pub pristine_payload: u64,
    /// The GRUB modules.
    pub modules: &'a [Range],
    /// The multiboot2 information structure.
    pub boot_info: Range,
    /// Bytes of heap wanted.
    pub heap_size: u64,
    /// Bytes of arena wanted.
    pub arena_size: u64,
}

/// How much usable RAM a boot needs, part by part, as reported in
/// [`LayoutError::TooLittleMemory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Needs {
    /// The loaded image, page-rounded.
    pub image: u64,
    /// GRUB modules and the multiboot2 information, page-rounded, not counting any part
    /// shared with the image.
    pub modules: u64,
    /// The pristine copy (header page included).
    pub pristine: u64,
    /// The arena.
    pub arena: u64,
    /// The heap.
    pub heap: u64,
    /// The minimum left for guests, [`MIN_FREE_FOR_GUESTS`].
    pub guests: u64,
}

impl Needs {
    /// The sum of all parts.
    #[must_use]
    pub fn total(&self) -> u64 {
        [
            self.image,
            self.modules,
            self.pristine,
            self.arena,
            self.heap,
            self.guests,
        ]
        .iter()
        .fold(0, |sum, part| sum.saturating_add(*part))
    }
}

/// Why no layout could be planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The memory map has no usable RAM above 1 MiB.
    NoUsableMemory,
    /// Usable RAM (above 1 MiB) is smaller than what the boot needs.
    TooLittleMemory {
        /// Usable RAM above 1 MiB, in bytes.
        usable: u64,
        /// Bytes needed: `breakdown.total()`.
        needed: u64,
        /// What the bytes are needed for.
        breakdown: Needs,
    },
    /// The loaded image is not entirely in usable RAM.
    ImageNotInUsableRam(Range),
    /// A module is not entirely in usable RAM.
    ModuleNotInUsableRam(Range),
    /// The memory map has more separate ranges than the planner can track.
    TooFragmented,
    /// There is enough RAM in total, but no free range below 4 GiB can hold this part.
    NoRoomBelow4GiB {
        /// Which part: "arena", "pristine copy" or "heap".
        what: &'static str,
        /// Its size in bytes.
        size: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoUsableMemory => {
                f.write_str("the firmware memory map reports no usable RAM above 1 MiB")
            }
            Self::TooLittleMemory {
                usable,
                needed,
                breakdown: b,
            } => {
                write!(
                    f,
                    "only {} of usable RAM, Lazarus needs at least {} (image {}",
                    format_size(usable),
                    format_size(needed),
                    format_size(b.image)
                )?;
                if b.modules != 0 {
                    write!(f, ", modules {}", format_size(b.modules))?;
                }
                write!(
                    f,
                    ", pristine {}, arena {}, heap {}, guests {})",
                    format_size(b.pristine),
                    format_size(b.arena),
                    format_size(b.heap),
                    format_size(b.guests)
                )
            }
            Self::ImageNotInUsableRam(r) => {
                write!(f, "the hypervisor image at {r} is not in usable RAM")
            }
            Self::ModuleNotInUsableRam(r) => {
                write!(f, "the boot module at {r} is not in usable RAM")
            }
            Self::TooFragmented => write!(
                f,
                "the memory map is too fragmented (over {PLAN_RANGES} separate usable \
                 ranges, or over {FREE_RANGES} free ones)"
            ),
            Self::NoRoomBelow4GiB { what, size } => write!(
                f,
                "no free range below 4 GiB can hold the {} {what}",
                format_size(size)
            ),
        }
    }
}

/// Where everything lives, as decided at cold boot.
///
/// Every range is page aligned. `pristine`, `arena`, `heap` and the ranges `free` starts
/// with are disjoint from each other and from `image`, `modules` and `boot_info`; together
/// with the parts of those three that lie in usable RAM, they are exactly the usable RAM
/// above 1 MiB. `pristine`, `arena` and `heap` are below 4 GiB.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The loaded image, page-rounded outward.
    pub image: Range,
    /// The pristine copy: header page plus the page-rounded payload.
    pub pristine: Range,
    /// The arena (page-rounded size, below 4 GiB).
    pub arena: Range,
    /// The heap (page-rounded size, below 4 GiB).
    pub heap: Range,
    /// Usable RAM above 1 MiB, page aligned, in bytes.
    pub usable_total: u64,
    /// Everything left: the pool for guest RAM and page tables.
    pub free: FrameAllocator<FREE_RANGES>,
    /// The GRUB modules, page-rounded outward.
    pub modules: RangeSet<MODULE_RANGES>,
    /// The multiboot2 information, page-rounded outward.
    pub boot_info: Range,
    /// Usable RAM below 1 MiB. For printing only: past its capacity, ranges are left out.
    pub low_memory: RangeSet<LOW_MEMORY_RANGES>,
    /// Ranges the firmware does not let us use, exactly as reported. For printing only:
    /// past its capacity, ranges are left out.
    pub firmware: RangeSet<FIRMWARE_RANGES>,
}

impl Layout {
    /// Every classified range, lowest address first (ties in [`MemoryClass::ALL`] order).
    ///
    /// `Free` ranges are what [`Layout::free`] holds at the time of the call, so memory
    /// handed out after planning no longer shows up.
    #[must_use]
    pub fn classes(&self) -> Classes<'_> {
        Classes {
            layout: self,
            last: None,
        }
    }

    fn sources(&self) -> [(MemoryClass, &[Range]); 9] {
        use core::slice::from_ref;
        [
            (MemoryClass::Image, from_ref(&self.image)),
            (MemoryClass::Pristine, from_ref(&self.pristine)),
            (MemoryClass::Arena, from_ref(&self.arena)),
            (MemoryClass::Transient, from_ref(&self.heap)),
            (MemoryClass::Free, self.free.free_ranges().as_slice()),
            (MemoryClass::Modules, self.modules.as_slice()),
            (MemoryClass::BootInfo, from_ref(&self.boot_info)),
            (MemoryClass::LowMemory, self.low_memory.as_slice()),
            (MemoryClass::Firmware, self.firmware.as_slice()),
        ]
    }
}

/// Iterator over a [`Layout`]'s classified ranges in address order; see
/// [`Layout::classes`].
#[derive(Clone, Debug)]
pub struct Classes<'a> {
    layout: &'a Layout,
    /// Sort key (start, class index, index within class) of the last range yielded.
    last: Option<(u64, usize, usize)>,
}

impl Iterator for Classes<'_> {
    type Item = (MemoryClass, Range);

    fn next(&mut self) -> Option<Self::Item> {
        // A selection step per item: a few hundred comparisons at most, no storage.
        let sources = self.layout.sources();
        let mut best: Option<((u64, usize, usize), MemoryClass, Range)> = None;
        for (c, (class, ranges)) in sources.iter().enumerate() {
            for (i, range) in ranges.iter().enumerate() {
                let key = (range.start, c, i);
                if range.is_empty() || self.last.is_some_and(|last| key <= last) {
                    continue;
                }
                if best.is_none_or(|(k, _, _)| key < k) {
                    best = Some((key, *class, *range));
                }
            }
        }
        let (key, class, range) = best?;
        self.last = Some(key);
        Some((class, range))
    }
}

/// A byte count in the largest binary unit it reaches: exact ("8 MiB") when it is a whole
/// number of that unit, else to one decimal ("1.5 GiB"). Honours width and alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatSize(pub u64);

/// Formats a byte count for people; see [`FormatSize`].
#[must_use]
pub const fn format_size(bytes: u64) -> FormatSize {
    FormatSize(bytes)
}

impl fmt::Display for FormatSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 5] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1, "B"),
        ];
        let bytes = self.0;
        let mut i = UNITS
            .iter()
            .position(|&(unit, _)| bytes >= unit)
            .unwrap_or(UNITS.len() - 1);
        let mut text = heapless::String::<32>::new();
        if bytes.is_multiple_of(UNITS[i].0) {
            write!(text, "{} {}", bytes / UNITS[i].0, UNITS[i].1)?;
        } else {
            let tenths =
                |unit: u64| (u128::from(bytes) * 10 + u128::from(unit) / 2) / u128::from(unit);
            let mut t = tenths(UNITS[i].0);
            // 1023.96 MiB reads better as 1.0 GiB than as 1024.0 MiB.
            if t >= 10240 && i > 0 {
                i -= 1;
                t = tenths(UNITS[i].0);
            }
            write!(text, "{}.{} {}", t / 10, t % 10, UNITS[i].1)?;
        }
        f.pad(&text)
    }
}

fn round_to_pages(bytes: u64) -> u64 {
    bytes
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX - u64::MAX % PAGE_SIZE)
}

fn fragmented<T>(_: T) -> LayoutError {
    LayoutError::TooFragmented
}

/// Takes `size` bytes from `pool` at the lowest address inside `window`.
fn take_lowest(
    pool: &mut RangeSet<PLAN_RANGES>,
    size: u64,
    window: Range,
) -> Result<Option<Range>, LayoutError> {
    let found = pool
        .iter()
        .map(|r| r.intersection(window))
        .find(|r| !r.is_empty() && r.len() >= size);
    let Some(hole) = found else {
        return Ok(None);
    };
    let block = Range::from_base_len(hole.start, size);
    pool.remove(block).map_err(fragmented)?;
    Ok(Some(block))
}

/// Takes `size` bytes from the top of the highest free range below 4 GiB that can hold
/// them, 2 MiB aligned if that still fits in the range, else page aligned.
fn take_top_below_4gib(
    pool: &mut RangeSet<PLAN_RANGES>,
    size: u64,
) -> Result<Option<Range>, LayoutError> {
    let found = pool
        .iter()
        .rev()
        .map(|r| r.intersection(BELOW_4GIB))
        .find(|r| !r.is_empty() && r.len() >= size);
    let Some(hole) = found else {
        return Ok(None);
    };
    let top_start = hole.end - size;
    let aligned_start = top_start - top_start % ARENA_ALIGN;
    let start = if aligned_start >= hole.start {
        aligned_start
    } else {
        top_start
    };
    let block = Range::from_base_len(start, size);
    pool.remove(block).map_err(fragmented)?;
    Ok(Some(block))
}

/// Decides where the image's companions go and what is left for guests.
///
/// # Errors
/// See [`LayoutError`]; each variant names what was wrong with the machine or request.
pub fn plan(req: &LayoutRequest) -> Result<Layout, LayoutError> {
    // What the firmware calls RAM, minus everything it also calls something else.
    let mut reported = RangeSet::<PLAN_RANGES>::new();
    let mut firmware = RangeSet::<FIRMWARE_RANGES>::new();
    for &(base, len, usable) in req.regions {
        if usable {
            reported
                .insert(Range::from_base_len(base, len))
                .map_err(fragmented)?;
        }
    }
    for &(base, len, usable) in req.regions {
        if !usable {
            let range = Range::from_base_len(base, len);
            reported.remove(range).map_err(fragmented)?;
            // Printing only: a full set just shows fewer ranges.
            let _ = firmware.insert(range);
        }
    }

    // Whole pages only, and nothing below 1 MiB.
    let mut usable = RangeSet::<PLAN_RANGES>::new();
    let mut low_memory = RangeSet::<LOW_MEMORY_RANGES>::new();
    for range in &reported {
        let range = range.align_in(PAGE_SIZE);
        usable.insert(range).map_err(fragmented)?;
        let _ = low_memory.insert(range.intersection(LOW_MEMORY));
    }
    usable.remove(LOW_MEMORY).map_err(fragmented)?;
    if usable.is_empty() {
        return Err(LayoutError::NoUsableMemory);
    }
    let usable_total = usable.total();

    // What the boot already occupies.
    if !reported.contains_range(req.image) {
        return Err(LayoutError::ImageNotInUsableRam(req.image));
    }
    if let Some(module) = req.modules.iter().find(|m| !reported.contains_range(**m)) {
        return Err(LayoutError::ModuleNotInUsableRam(*module));
    }
    let image = req.image.align_out(PAGE_SIZE);
    let boot_info = req.boot_info.align_out(PAGE_SIZE);
    let mut pool = usable.clone();
    pool.remove(image).map_err(fragmented)?;
    let after_image = pool.total();
    let mut modules = RangeSet::<MODULE_RANGES>::new();
    for module in req.modules {
        let module = module.align_out(PAGE_SIZE);
        pool.remove(module).map_err(fragmented)?;
        let _ = modules.insert(module);
    }
    pool.remove(boot_info).map_err(fragmented)?;

    let pristine_size = PAGE_SIZE.saturating_add(round_to_pages(req.pristine_payload));
    let arena_size = round_to_pages(req.arena_size);
    let heap_size = round_to_pages(req.heap_size);
    let breakdown = Needs {
        image: usable_total - after_image,
        modules: after_image - pool.total(),
        pristine: pristine_size,
        arena: arena_size,
        heap: heap_size,
        guests: MIN_FREE_FOR_GUESTS,
    };
    let needed = breakdown.total();
    if needed > usable_total {
        return Err(LayoutError::TooLittleMemory {
            usable: usable_total,
            needed,
            breakdown,
        });
    }

    // The arena first, so its address depends on nothing the other sizes could change.
    let arena =
        take_top_below_4gib(&mut pool, arena_size)?.ok_or(LayoutError::NoRoomBelow4GiB {
            what: "arena",
            size: arena_size,
        })?;
    let above_image = Range::new(image.end, FOUR_GIB);
    let pristine = match take_lowest(&mut pool, pristine_size, above_image)? {
        Some(range) => Some(range),
        None => take_lowest(&mut pool, pristine_size, BELOW_4GIB)?,
    }
    .ok_or(LayoutError::NoRoomBelow4GiB {
        what: "pristine copy",
        size: pristine_size,
    })?;
    let heap =
        take_lowest(&mut pool, heap_size, BELOW_4GIB)?.ok_or(LayoutError::NoRoomBelow4GiB {
            what: "heap",
            size: heap_size,
        })?;

    let mut free_set = RangeSet::<FREE_RANGES>::new();
    for range in &pool {
        free_set.insert(range).map_err(fragmented)?;
    }
    let free = FrameAllocator::from_free(&free_set).map_err(fragmented)?;

    Ok(Layout {
        image,
        pristine,
        arena,
        heap,
        usable_total,
        free,
        modules,
        boot_info,
        low_memory,
        firmware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn r(start: u64, end: u64) -> Range {
        Range::new(start, end)
    }

    fn request<'a>(regions: &'a [(u64, u64, bool)], modules: &'a [Range]) -> LayoutRequest<'a> {
        LayoutRequest {
            regions,
            image: r(0x10_0000, 0x1a_3000),
            pristine_payload: 0x7_4000,
            modules,
            boot_info: r(0x6a_0008, 0x6a_0ff0),
            heap_size: 4 * MIB,
            arena_size: 8 * MIB,
        }
    }

    /// Checks what every layout must satisfy: the owned classes and the free pool are
    /// page aligned, pairwise disjoint, and exactly cover the usable RAM above 1 MiB;
    /// the boot-critical ones are below 4 GiB; and enough is left for guests.
    fn check_invariants(layout: &Layout, req: &LayoutRequest) {
        let mut pieces = vec![layout.image, layout.pristine, layout.arena, layout.heap];
        pieces.push(layout.boot_info);
        pieces.extend(layout.modules.iter());
        pieces.extend(layout.free.free_ranges().iter());
        pieces.retain(|p| !p.is_empty());
        for p in &pieces {
            assert_eq!(p.start % PAGE_SIZE, 0, "{p} not aligned");
            assert_eq!(p.end % PAGE_SIZE, 0, "{p} not aligned");
        }
        for (i, a) in pieces.iter().enumerate() {
            for b in &pieces[i + 1..] {
                assert!(!a.overlaps(*b), "{a} overlaps {b}");
            }
        }
        // Everything reserved or free is usable RAM above 1 MiB, and it adds up.
        let mut usable = RangeSet::<PLAN_RANGES>::new();
        for &(base, len, ok) in req.regions {
            if ok {
                usable.insert(Range::from_base_len(base, len)).unwrap();
            }
        }
        for &(base, len, ok) in req.regions {
            if !ok {
                usable.remove(Range::from_base_len(base, len)).unwrap();
            }
        }
        for p in [layout.pristine, layout.arena, layout.heap] {
            assert!(usable.contains_range(p), "{p} outside usable RAM");
            assert!(p.start >= MIB && p.end <= FOUR_GIB, "{p} misplaced");
        }
        for p in layout.free.free_ranges().iter() {
            assert!(usable.contains_range(p), "free {p} outside usable RAM");
            assert!(p.start >= MIB, "free {p} in low memory");
        }
        usable.remove(Range::new(0, MIB)).unwrap();
        let covered: u64 = pieces
            .iter()
            .flat_map(|p| usable.iter().map(|u| u.intersection(*p).len()))
            .sum();
        assert_eq!(covered, layout.usable_total);
        assert!(layout.free.free_bytes() >= MIN_FREE_FOR_GUESTS);
        assert_eq!(
            layout.pristine.len(),
            PAGE_SIZE + round_to_pages(req.pristine_payload)
        );
        assert_eq!(layout.arena.len(), round_to_pages(req.arena_size));
        assert_eq!(layout.heap.len(), round_to_pages(req.heap_size));
        // The class listing is sorted and every free range appears in it.
        let listed: Vec<_> = layout.classes().collect();
        assert!(listed.windows(2).all(|w| w[0].1.start <= w[1].1.start));
        let listed_free: Vec<_> = listed
            .iter()
            .filter(|(c, _)| *c == MemoryClass::Free)
            .map(|(_, r)| *r)
            .collect();
        assert_eq!(listed_free, layout.free.free_ranges().as_slice());
    }

    /// Bochs (and SeaBIOS QEMU) with 512 MiB.
    const BOCHS: &[(u64, u64, bool)] = &[
        (0, 0x9_fc00, true),
        (0x9_fc00, 0x400, false),
        (0xf_0000, 0x1_0000, false),
        (0x10_0000, 0x1ff0_0000, true),
        (0xfffc_0000, 0x4_0000, false),
    ];

    #[test]
    fn bochs_map() {
        let modules = [r(0x1a_4000, 0x5a_4000), r(0x5a_4000, 0x6a_0000)];
        let req = request(BOCHS, &modules);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);

        assert_eq!(layout.usable_total, 511 * MIB);
        assert_eq!(layout.image, r(0x10_0000, 0x1a_3000));
        assert_eq!(layout.boot_info, r(0x6a_0000, 0x6a_1000));
        // The one-page gap before the modules is too small for the pristine copy.
        assert_eq!(layout.pristine, r(0x6a_1000, 0x71_6000));
        assert_eq!(layout.arena, r(0x1f80_0000, 0x2000_0000));
        assert_eq!(layout.heap, r(0x71_6000, 0xb1_6000));
        assert_eq!(
            layout.free.free_ranges().as_slice(),
            &[r(0x1a_3000, 0x1a_4000), r(0xb1_6000, 0x1f80_0000)]
        );
        assert_eq!(layout.low_memory.as_slice(), &[r(0, 0x9_f000)]);

        let classes: Vec<_> = layout.classes().map(|(c, _)| c).collect();
        use MemoryClass::*;
        assert_eq!(
            classes,
            [
                LowMemory, Firmware, Firmware, Image, Free, Modules, BootInfo, Pristine, Transient,
                Free, Arena, Firmware
            ]
        );
    }

    #[test]
    fn modules_are_excluded() {
        // A module in the middle of RAM, unaligned, splits the pool.
        let modules = [r(0x1000_0100, 0x1040_0000)];
        let req = request(BOCHS, &modules);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.modules.as_slice(), &[r(0x1000_0000, 0x1040_0000)]);
        assert!(!layout
            .free
            .free_ranges()
            .intersects(r(0x1000_0000, 0x1040_0000)));
        // Allocating all free memory never returns module pages.
        let mut free = layout.free.clone();
        while let Some(block) = free.allocate(MIB, PAGE_SIZE) {
            assert!(!block.overlaps(modules[0]));
        }
        // A module outside usable RAM is refused.
        let bad = [r(0x9_f000, 0xa_1000)];
        assert_eq!(
            plan(&request(BOCHS, &bad)).unwrap_err(),
            LayoutError::ModuleNotInUsableRam(bad[0])
        );
    }

    /// OVMF under QEMU with 2 GiB below 4 GiB and 2 GiB above, in GRUB's order
    /// (shuffled a little), with the usual NVS islands and an unaligned entry.
    const OVMF: &[(u64, u64, bool)] = &[
        (0x0, 0xa_0000, true),
        (0x80_0000, 0x8000, false),
        (0x10_0000, 0x70_0000, true),
        (0x80_8000, 0x3000, true),
        (0x80_b000, 0x1000, false),
        (0x80_c000, 0x5000, true),
        (0x81_1000, 0xef000, false),
        (0x90_0000, 0x7dfe_f000, true),
        (0x7e8e_f000, 0x28_0000, false),
        (0x7eb6_f000, 0x1_0000, false),
        (0x7eb7_f000, 0x8_0000, false),
        (0x7ebf_f000, 0x137_9000, true),
        (0x7ff7_8000, 0x8_8000, false),
        (0xb000_0000, 0x1000_0000, false),
        (0xffc0_0000, 0x40_0000, false),
        (0x1_0000_0000, 0x8000_0000, true),
        (0x1_7fff_f200, 0x0e00, true),
    ];

    #[test]
    fn ovmf_fragmented_map() {
        let modules = [r(0x100_0000, 0x200_0000)];
        let req = LayoutRequest {
            regions: OVMF,
            image: r(0x10_0000, 0x30_0000),
            pristine_payload: MIB,
            modules: &modules,
            boot_info: r(0x7e00_0000, 0x7e00_2345),
            heap_size: 4 * MIB,
            arena_size: 8 * MIB,
        };
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);

        // The top range below 4 GiB is [0x7ebff000, 0x7ff78000): room for a 2 MiB-aligned
        // arena below its end.
        assert_eq!(layout.arena, r(0x7f60_0000, 0x7fe0_0000));
        assert_eq!(layout.pristine, r(0x30_0000, 0x40_1000));
        // The small islands cannot hold 4 MiB; the heap goes to the start of the big range.
        assert_eq!(layout.heap, r(0x90_0000, 0xd0_0000));
        let free = layout.free.free_ranges();
        assert!(free.contains_range(r(0x80_8000, 0x80_b000)));
        assert!(free.contains_range(r(0x1_0000_0000, 0x1_8000_0000)));
        assert!(!free.intersects(r(0x80_0000, 0x80_8000)), "NVS is not free");
        assert!(
            !free.intersects(r(0x7e00_0000, 0x7e00_3000)),
            "boot info is not free"
        );
        // Adjacent reserved entries are shown as one.
        assert_eq!(layout.firmware.len(), 7);
    }

    #[test]
    fn reserved_wins_over_usable() {
        let regions = [
            (0x10_0000, 511 * MIB, true),
            (0x640_0000, MIB, false),   // inside usable RAM
            (0x20_0000, MIB, true),     // duplicate of part of the first entry
            (0x1ff8_0000, MIB, false),  // straddles the end of RAM
            (0x9_0000, 0x7_8000, true), // low memory overlapping reserved below
            (0xa_0000, 0x6_0000, false),
        ];
        let req = request(&regions, &[]);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.usable_total, 511 * MIB - MIB - MIB / 2);
        assert!(!layout
            .free
            .free_ranges()
            .intersects(r(0x640_0000, 0x650_0000)));
        // The top of RAM is now 0x1ff80000; the arena is 2 MiB aligned below it.
        assert_eq!(layout.arena, r(0x1f60_0000, 0x1fe0_0000));
        assert_eq!(layout.low_memory.as_slice(), &[r(0x9_0000, 0xa_0000)]);
    }

    #[test]
    fn too_little_memory_reports_the_numbers() {
        let regions = [(0, 0x9_fc00, true), (0x10_0000, 40 * MIB, true)];
        let req = LayoutRequest {
            regions: &regions,
            image: r(0x10_0000, 0x20_0000),
            pristine_payload: MIB - PAGE_SIZE,
            modules: &[],
            boot_info: r(0x30_0000, 0x30_0100),
            heap_size: 4 * MIB,
            arena_size: 8 * MIB,
        };
        let err = plan(&req).unwrap_err();
        let breakdown = Needs {
            image: MIB,
            modules: PAGE_SIZE,
            pristine: MIB,
            arena: 8 * MIB,
            heap: 4 * MIB,
            guests: 32 * MIB,
        };
        assert_eq!(
            err,
            LayoutError::TooLittleMemory {
                usable: 40 * MIB,
                needed: 46 * MIB + PAGE_SIZE,
                breakdown,
            }
        );
        assert_eq!(
            err.to_string(),
            "only 40 MiB of usable RAM, Lazarus needs at least 46.0 MiB (image 1 MiB, \
             modules 4 KiB, pristine 1 MiB, arena 8 MiB, heap 4 MiB, guests 32 MiB)"
        );

        // Without boot data in usable RAM the message matches the design's example.
        let modules = [r(0x30_0000, 0x90_0000)];
        let req = LayoutRequest {
            modules: &modules,
            boot_info: r(0x9_f000, 0x9_f100),
            ..req
        };
        let err = plan(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "only 40 MiB of usable RAM, Lazarus needs at least 52 MiB (image 1 MiB, \
             modules 6 MiB, pristine 1 MiB, arena 8 MiB, heap 4 MiB, guests 32 MiB)"
        );

        // Exactly enough: boots, with exactly the guest minimum left.
        let regions = [(0x10_0000, 52 * MIB, true)];
        let req = LayoutRequest {
            regions: &regions,
            ..req
        };
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.free.free_bytes(), MIN_FREE_FOR_GUESTS);
    }

    #[test]
    fn image_outside_usable_ram() {
        let mut req = request(BOCHS, &[]);
        req.image = r(0xfffc_0000, 0xfffd_0000);
        assert_eq!(
            plan(&req).unwrap_err(),
            LayoutError::ImageNotInUsableRam(r(0xfffc_0000, 0xfffd_0000))
        );
        // Straddling the end of RAM is just as wrong.
        req.image = r(0x1ff0_0000, 0x2010_0000);
        assert!(matches!(
            plan(&req),
            Err(LayoutError::ImageNotInUsableRam(_))
        ));
        assert_eq!(
            LayoutError::ImageNotInUsableRam(r(0xfffc_0000, 0xfffd_0000)).to_string(),
            "the hypervisor image at [0xfffc0000, 0xfffd0000) is not in usable RAM"
        );
    }

    #[test]
    fn arena_below_4gib_on_an_8gib_machine() {
        let regions = [
            (0, 0x9_fc00, true),
            (0x10_0000, 3 * GIB - MIB, true),
            (0xfeff_c000, 0x4000, false),
            (0xffff_0000, 0x1_0000, false),
            (0x1_0000_0000, 5 * GIB, true),
        ];
        let req = request(&regions, &[]);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.usable_total, 8 * GIB - MIB);
        assert_eq!(layout.arena, r(3 * GIB - 8 * MIB, 3 * GIB));
        assert!(layout
            .free
            .free_ranges()
            .contains_range(r(4 * GIB, 9 * GIB)));

        // One entry straddling 4 GiB: the arena ends at 4 GiB.
        let regions = [(0x10_0000, 8 * GIB, true)];
        let req = request(&regions, &[]);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.arena, r(4 * GIB - 8 * MIB, 4 * GIB));
    }

    #[test]
    fn arena_alignment_and_range_choice() {
        // The top range has slack: 2 MiB aligned, below its end.
        let regions = [
            (0x10_0000, 64 * MIB, true),
            (0x3000_1000, 10 * MIB + 4 * KIB, true),
        ];
        let layout = plan(&request(&regions, &[])).unwrap();
        assert_eq!(layout.arena, r(0x3020_0000, 0x30a0_0000));

        // No slack for 2 MiB alignment: page aligned, at the very top.
        let regions = [(0x10_0000, 64 * MIB, true), (0x3000_1000, 8 * MIB, true)];
        let layout = plan(&request(&regions, &[])).unwrap();
        assert_eq!(layout.arena, r(0x3000_1000, 0x3080_1000));

        // The highest range is too small: the next one down holds the arena.
        let regions = [(0x10_0000, 64 * MIB, true), (0x7f00_0000, 4 * MIB, true)];
        let req = request(&regions, &[]);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.arena, r(0x380_0000, 0x400_0000));
        assert!(layout
            .free
            .free_ranges()
            .contains_range(r(0x7f00_0000, 0x7f40_0000)));
    }

    #[test]
    fn no_room_below_4gib() {
        let regions = [(0x10_0000, 40 * MIB, true), (4 * GIB, 4 * GIB, true)];
        let mut req = request(&regions, &[]);
        req.arena_size = 64 * MIB;
        let err = plan(&req).unwrap_err();
        assert_eq!(
            err,
            LayoutError::NoRoomBelow4GiB {
                what: "arena",
                size: 64 * MIB
            }
        );
        assert_eq!(
            err.to_string(),
            "no free range below 4 GiB can hold the 64 MiB arena"
        );
    }

    #[test]
    fn no_usable_memory() {
        assert_eq!(
            plan(&request(&[], &[])).unwrap_err(),
            LayoutError::NoUsableMemory
        );
        let low_only = [(0, 0x9_fc00, true), (0x10_0000, 0x100, true)];
        assert_eq!(
            plan(&request(&low_only, &[])).unwrap_err(),
            LayoutError::NoUsableMemory
        );
        let all_reserved = [(0x10_0000, GIB, true), (0, 2 * GIB, false)];
        assert_eq!(
            plan(&request(&all_reserved, &[])).unwrap_err(),
            LayoutError::NoUsableMemory
        );
    }

    #[test]
    fn too_fragmented() {
        // 200 separate one-page holes above the image and the pool cannot track them.
        let regions: Vec<_> = (0..200u64)
            .map(|i| (0x1000_0000 + i * 0x2000, 0x1000, true))
            .chain([(0x10_0000, 128 * MIB, true)])
            .collect();
        assert_eq!(
            plan(&request(&regions, &[])).unwrap_err(),
            LayoutError::TooFragmented
        );
        // 100 holes fit the planner but not the 64-range free pool.
        let regions: Vec<_> = (0..100u64)
            .map(|i| (0x1000_0000 + i * 0x2000, 0x1000, true))
            .chain([(0x10_0000, 128 * MIB, true)])
            .collect();
        assert_eq!(
            plan(&request(&regions, &[])).unwrap_err(),
            LayoutError::TooFragmented
        );
    }

    #[test]
    fn pristine_falls_back_below_the_image() {
        // The image sits at the top of RAM below 4 GiB, with nothing above it.
        let regions = [(0x10_0000, 63 * MIB, true)];
        let mut req = request(&regions, &[]);
        req.image = r(0x3f0_0000, 0x400_0000);
        req.boot_info = r(0x3ef_f000, 0x3ef_f100);
        let layout = plan(&req).unwrap();
        check_invariants(&layout, &req);
        assert_eq!(layout.pristine.start, 0x10_0000);
    }

    #[test]
    fn sizes_format_for_people() {
        let cases = [
            (0, "0 B"),
            (512, "512 B"),
            (1536, "1.5 KiB"),
            (512 * KIB, "512 KiB"),
            (8 * MIB, "8 MiB"),
            (3 * GIB / 2, "1.5 GiB"),
            (GIB + 4 * KIB, "1.0 GiB"),
            (MIB - 1, "1.0 MiB"),
            (2 * MIB + MIB / 10, "2.1 MiB"),
            (5 << 40, "5 TiB"),
            (u64::MAX, "16777216.0 TiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(format_size(bytes).to_string(), text, "{bytes}");
        }
        assert_eq!(format!("{:>8}|", format_size(8 * MIB)), "   8 MiB|");
        assert_eq!(format!("{:<8}|", MemoryClass::Arena), "arena   |");
    }

    #[test]
    fn class_names() {
        let names: Vec<_> = MemoryClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "image",
                "pristine",
                "arena",
                "transient",
                "free",
                "modules",
                "boot info",
                "low memory",
                "firmware"
            ]
        );
    }

    #[test]
    fn other_messages_are_one_line() {
        for e in [
            LayoutError::NoUsableMemory,
            LayoutError::TooFragmented,
            LayoutError::ModuleNotInUsableRam(r(0, 0x1000)),
        ] {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains('\n'), "{text}");
        }
    }
}
