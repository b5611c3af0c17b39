//! What the bootloader tells us about the machine, copied out of the multiboot2 boot
//! information (MBI) into plain data.
//!
//! The MBI lives in memory the hypervisor will later hand out, so nothing may keep
//! pointing into it: everything needed later is copied into fixed-capacity containers
//! (there is no heap yet), and only this module knows the `multiboot2` crate, so the
//! rest of the hypervisor neither depends on it nor on its lifetimes.
//!
//! The MBI is the one input we cannot re-read or ask again for, and a wrong memory map
//! means handing out memory that belongs to firmware. Parsing is therefore strict: a
//! structure that is in any way inconsistent is refused with an error that says exactly
//! what is wrong, rather than being half-used or silently truncated. The one exception is
//! the boot loader's name, which is only ever displayed and is shortened (with a warning)
//! if it does not fit.
//!
//! The `multiboot2` crate does the parsing, but it trusts the lengths it is given and
//! several of its accessors panic on tags whose sizes it does not expect. So the tag
//! list is first walked by hand here, checking the overall size, every tag's size and
//! the end tag, and the size of each tag we later hand to the crate; only then is the
//! crate asked for the contents. The ACPI RSDP tags are decoded by hand because the crate
//! does not expose the RSDT address of the newer RSDP and would accept RSDPs of a length
//! it does not expect only to panic on them.

use core::fmt;

use multiboot2::{
    BootInformation, BootInformationHeader, EFIMemoryAreaType, EFIMemoryMapTag, LoadError,
    MemoryAreaType, StringError,
};

/// How many memory-map entries fit into [`BootInfo::regions`].
pub const MAX_REGIONS: usize = 128;
/// How many modules fit into [`BootInfo::modules`].
pub const MAX_MODULES: usize = 32;
/// Capacity of [`BootInfo::cmdline`], in bytes.
pub const MAX_CMDLINE: usize = 1024;
/// Capacity of [`BootInfo::bootloader`], in bytes.
pub const MAX_BOOTLOADER_NAME: usize = 64;
/// Capacity of [`Module::string`], in bytes.
pub const MAX_MODULE_STRING: usize = 256;

/// The MBI and every tag in it start on an 8-byte boundary.
const ALIGN: usize = 8;
/// `total_size` and `reserved`.
const HEADER_LEN: usize = 8;
/// `type` and `size`.
const TAG_HEADER_LEN: usize = 8;
/// The smallest possible MBI: the header and an end tag.
const MIN_TOTAL_SIZE: u32 = 16;

/// The tag types we look at.
mod tag {
    pub const END: u32 = 0;
    pub const MODULE: u32 = 3;
    pub const MEMORY_MAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
    pub const EFI_MEMORY_MAP: u32 = 17;
    pub const EFI_BOOT_SERVICES: u32 = 18;
}

/// Bytes of one basic memory-map entry.
const MMAP_ENTRY_LEN: u32 = 24;
/// Bytes of an EFI memory descriptor of version 1 (the only version there is).
const EFI_DESCRIPTOR_LEN: u32 = 40;
const EFI_DESCRIPTOR_VERSION: u32 = 1;
const EFI_PAGE_SIZE: u64 = 4096;
/// Bytes of the ACPI 1.0 RSDP, and of the ACPI 2.0+ RSDP.
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;

/// What a range of physical memory may be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM.
    Usable,
    /// Must not be touched. Also used for types the multiboot2 specification does not define.
    Reserved,
    /// Holds ACPI tables; becomes free RAM once they have been read.
    AcpiReclaimable,
    /// ACPI non-volatile storage, to be preserved across sleep states.
    AcpiNvs,
    /// RAM the firmware found to be faulty.
    Defective,
}

/// One entry of the bootloader's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Physical start address.
    pub base: u64,
    /// Length in bytes; `base + len` does not overflow.
    pub len: u64,
    /// What the range may be used for.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// The first address after the region.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// A boot module the bootloader loaded into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Physical address of the first byte.
    pub start: u64,
    /// Physical address after the last byte.
    pub end: u64,
    /// The module's string (usually its path and arguments).
    pub string: heapless::String<MAX_MODULE_STRING>,
}

/// Where the ACPI tables are, from a checksum-verified copy of the RSDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// The RSDP's revision field: 0 for ACPI 1.0, 2 or more for later versions.
    pub revision: u8,
    /// Physical address of the RSDT.
    pub rsdt: u32,
    /// Physical address of the XSDT, if the RSDP has one (ACPI 2.0+, non-zero).
    pub xsdt: Option<u64>,
}

/// A summary of the firmware's EFI memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EfiMemoryMap {
    /// Number of descriptors in the map.
    pub descriptors: usize,
    /// Bytes of `EfiConventionalMemory`, the only type that is free whether or not the
    /// boot services have been exited.
    pub usable_bytes: u64,
}

/// Everything the hypervisor uses from the boot information.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Physical start and end (exclusive) of the MBI itself.
    pub mbi: (u64, u64),
    /// The command line tag, empty if there was none.
    pub cmdline: heapless::String<MAX_CMDLINE>,
    /// The boot loader's name, empty if there was none.
    pub bootloader: heapless::String<MAX_BOOTLOADER_NAME>,
    /// The basic memory map, sorted by base address (stable, so entries with the same base
    /// keep the bootloader's order). Overlapping entries are kept as they were reported.
    pub regions: heapless::Vec<MemoryRegion, MAX_REGIONS>,
    /// The modules, in the bootloader's order.
    pub modules: heapless::Vec<Module, MAX_MODULES>,
    /// The RSDP from the new (ACPI 2.0+) tag if there is one, else from the old one.
    pub rsdp: Option<Rsdp>,
    /// The EFI memory map tag, if present.
    pub efi_memory_map: Option<EfiMemoryMap>,
    /// Whether the bootloader left the EFI boot services running.
    pub efi_boot_services_not_exited: bool,
}

impl BootInfo {
    /// Bytes of usable RAM in the memory map; ranges reported more than once count once.
    pub fn usable_bytes(&self) -> u64 {
        let mut total = 0u64;
        let mut covered_to = 0u64;
        for region in self.regions.iter().filter(|r| r.kind == RegionKind::Usable) {
            let start = region.base.max(covered_to);
            let end = region.end();
            if end > start {
                total += end - start;
                covered_to = end;
            }
        }
        total
    }
}

/// Which string of the MBI an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringField {
    /// The command line tag.
    Cmdline,
    /// The boot loader name tag.
    BootloaderName,
    /// The string of the module with this index (counting from 0).
    Module(usize),
}

impl fmt::Display for StringField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cmdline => f.write_str("command line"),
            Self::BootloaderName => f.write_str("boot loader name"),
            Self::Module(index) => write!(f, "string of module {index}"),
        }
    }
}

/// Why the boot information was refused. Offsets count from the start of the MBI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The buffer cannot even hold the 8-byte header.
    TooShort {
        /// Length of the buffer.
        len: usize,
    },
    /// The MBI does not start on an 8-byte boundary.
    Misaligned {
        /// Address of the buffer.
        addr: usize,
    },
    /// `total_size` claims more bytes than the buffer holds.
    TotalSizeExceedsBuffer {
        /// The header's `total_size`.
        total_size: u32,
        /// Length of the buffer.
        len: usize,
    },
    /// `total_size` leaves no room for the header and an end tag.
    TotalSizeTooSmall {
        /// The header's `total_size`.
        total_size: u32,
    },
    /// `total_size` is not a multiple of 8.
    TotalSizeUnaligned {
        /// The header's `total_size`.
        total_size: u32,
    },
    /// A tag is smaller than its header or than the fixed part its type requires.
    TagTooShort {
        /// Where the tag starts.
        offset: usize,
        /// The tag's type.
        typ: u32,
        /// The tag's size field.
        size: u32,
        /// The least size a tag of this type can have.
        min: u32,
    },
    /// A tag (with its padding) extends beyond `total_size`.
    TagOverrun {
        /// Where the tag starts.
        offset: usize,
        /// The tag's type.
        typ: u32,
        /// The tag's size field.
        size: u32,
        /// The header's `total_size`.
        total_size: u32,
    },
    /// The end tag is followed by more bytes within `total_size`.
    EndTagNotLast {
        /// Where the end tag starts.
        offset: usize,
        /// The header's `total_size`.
        total_size: u32,
    },
    /// The tags run up to `total_size` without an end tag.
    MissingEndTag,
    /// A tag's contents are inconsistent.
    MalformedTag {
        /// Where the tag starts.
        offset: usize,
        /// The tag's type.
        typ: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// There is no basic memory map, so there is no way to know which memory is free.
    NoMemoryMap,
    /// The memory map has more entries than [`MAX_REGIONS`].
    TooManyRegions {
        /// Number of entries in the memory map.
        count: usize,
    },
    /// A memory-map entry extends beyond the 64-bit address space.
    RegionWraps {
        /// The entry's base.
        base: u64,
        /// The entry's length.
        len: u64,
    },
    /// There are more modules than [`MAX_MODULES`].
    TooManyModules {
        /// Number of module tags.
        count: usize,
    },
    /// A module ends before it starts.
    ModuleEndBeforeStart {
        /// The module's index, counting from 0.
        index: usize,
        /// Its start address.
        start: u64,
        /// Its end address.
        end: u64,
    },
    /// A string has no terminating NUL within its tag.
    StringNotTerminated(StringField),
    /// A string is not valid UTF-8.
    StringNotUtf8(StringField),
    /// A string does not fit its fixed-capacity copy.
    StringTooLong {
        /// Which string.
        field: StringField,
        /// Its length in bytes.
        len: usize,
        /// How many bytes fit.
        capacity: usize,
    },
    /// An ACPI RSDP tag does not hold a valid RSDP.
    BadRsdp {
        /// The tag's type (14 or 15).
        typ: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `multiboot2` crate refused a structure the checks here accepted.
    Rejected(&'static str),
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort { len } => write!(
                f,
                "boot information is only {len} bytes long, shorter than its {HEADER_LEN}-byte header"
            ),
            Self::Misaligned { addr } => {
                write!(f, "boot information at {addr:#x} is not {ALIGN}-byte aligned")
            }
            Self::TotalSizeExceedsBuffer { total_size, len } => write!(
                f,
                "boot information claims a total size of {total_size} bytes but only {len} are available"
            ),
            Self::TotalSizeTooSmall { total_size } => write!(
                f,
                "boot information total size {total_size} is below the minimum of {MIN_TOTAL_SIZE} bytes"
            ),
            Self::TotalSizeUnaligned { total_size } => write!(
                f,
                "boot information total size {total_size} is not a multiple of {ALIGN}"
            ),
            Self::TagTooShort {
                offset,
                typ,
                size,
                min,
            } => write!(
                f,
                "tag of type {typ} at offset {offset:#x} has size {size}, below the {min} bytes it needs"
            ),
            Self::TagOverrun {
                offset,
                typ,
                size,
                total_size,
            } => write!(
                f,
                "tag of type {typ} at offset {offset:#x} with size {size} runs past the total size of {total_size}"
            ),
            Self::EndTagNotLast { offset, total_size } => write!(
                f,
                "end tag at offset {offset:#x} is followed by more data up to the total size of {total_size}"
            ),
            Self::MissingEndTag => f.write_str("boot information has no end tag"),
            Self::MalformedTag {
                offset,
                typ,
                reason,
            } => write!(f, "tag of type {typ} at offset {offset:#x}: {reason}"),
            Self::NoMemoryMap => f.write_str(
                "boot information has no memory map (tag type 6), so free memory is unknown",
            ),
            Self::TooManyRegions { count } => write!(
                f,
                "memory map has {count} entries, more than the {MAX_REGIONS} supported"
            ),
            Self::RegionWraps { base, len } => write!(
                f,
                "memory map entry at {base:#x} with length {len:#x} runs past the end of the address space"
            ),
            Self::TooManyModules { count } => write!(
                f,
                "bootloader passed {count} modules, more than the {MAX_MODULES} supported"
            ),
            Self::ModuleEndBeforeStart { index, start, end } => write!(
                f,
                "module {index} ends at {end:#x}, before its start at {start:#x}"
            ),
            Self::StringNotTerminated(field) => {
                write!(f, "{field} is not terminated by a NUL byte")
            }
            Self::StringNotUtf8(field) => write!(f, "{field} is not valid UTF-8"),
            Self::StringTooLong {
                field,
                len,
                capacity,
            } => write!(
                f,
                "{field} is {len} bytes long, more than the {capacity} supported"
            ),
            Self::BadRsdp { typ, reason } => write!(f, "ACPI RSDP tag (type {typ}): {reason}"),
            Self::Rejected(reason) => {
                write!(f, "multiboot2 parser refused the boot information: {reason}")
            }
        }
    }
}

/// Parses and copies out the MBI.
///
/// `bytes` is the whole MBI as it lies in memory (the caller reads `total_size` first;
/// bytes beyond it are ignored), `phys` its physical address.
pub fn parse(bytes: &[u8], phys: u64) -> Result<BootInfo, BootInfoError> {
    let mbi = validate(bytes)?;
    let info = load(mbi)?;

    let mut boot = BootInfo {
        mbi: (phys, phys.saturating_add(mbi.len() as u64)),
        cmdline: heapless::String::new(),
        bootloader: heapless::String::new(),
        regions: heapless::Vec::new(),
        modules: heapless::Vec::new(),
        rsdp: None,
        efi_memory_map: None,
        efi_boot_services_not_exited: false,
    };

    if let Some(tag) = info.command_line_tag() {
        let text = string(tag.cmdline(), StringField::Cmdline)?;
        boot.cmdline = copy(text, StringField::Cmdline)?;
    }
    if let Some(tag) = info.boot_loader_name_tag() {
        let name = string(tag.name(), StringField::BootloaderName)?;
        boot.bootloader = copy_truncated(name);
    }
    boot.regions = regions(&info)?;
    boot.modules = modules(&info)?;
    boot.rsdp = rsdp(&info)?;
    // Not `efi_memory_map_tag()`: that hides the map whenever the boot services are still
    // running, and we want to report the map either way.
    boot.efi_memory_map = info.get_tag::<EFIMemoryMapTag>().map(|tag| EfiMemoryMap {
        descriptors: tag.memory_areas().len(),
        usable_bytes: tag
            .memory_areas()
            .filter(|desc| desc.ty == EFIMemoryAreaType::CONVENTIONAL)
            .fold(0u64, |sum, desc| {
                sum.saturating_add(desc.page_count.saturating_mul(EFI_PAGE_SIZE))
            }),
    });
    boot.efi_boot_services_not_exited = info
        .tags()
        .any(|tag| tag.header().typ.get() == tag::EFI_BOOT_SERVICES);

    Ok(boot)
}

/// Checks everything the `multiboot2` crate relies on but does not check, or checks by
/// panicking, and returns the MBI trimmed to its `total_size`.
fn validate(bytes: &[u8]) -> Result<&[u8], BootInfoError> {
    if bytes.len() < HEADER_LEN {
        return Err(BootInfoError::TooShort { len: bytes.len() });
    }
    if !bytes.as_ptr().addr().is_multiple_of(ALIGN) {
        return Err(BootInfoError::Misaligned {
            addr: bytes.as_ptr().addr(),
        });
    }
    let total_size = u32_at(bytes, 0);
    let len = total_size as usize;
    if len > bytes.len() {
        return Err(BootInfoError::TotalSizeExceedsBuffer {
            total_size,
            len: bytes.len(),
        });
    }
    if total_size < MIN_TOTAL_SIZE {
        return Err(BootInfoError::TotalSizeTooSmall { total_size });
    }
    if !len.is_multiple_of(ALIGN) {
        return Err(BootInfoError::TotalSizeUnaligned { total_size });
    }
    let mbi = &bytes[..len];

    // Both `offset` and `len` are multiples of 8, so a tag header always fits.
    let mut offset = HEADER_LEN;
    while offset < len {
        let typ = u32_at(mbi, offset);
        let size = u32_at(mbi, offset + 4);
        let min = min_tag_size(typ);
        if size < min {
            return Err(BootInfoError::TagTooShort {
                offset,
                typ,
                size,
                min,
            });
        }
        let padded = (size as usize).next_multiple_of(ALIGN);
        if padded > len - offset {
            return Err(BootInfoError::TagOverrun {
                offset,
                typ,
                size,
                total_size,
            });
        }
        check_tag(offset, typ, &mbi[offset..offset + size as usize])?;
        if typ == tag::END {
            if offset + padded != len {
                return Err(BootInfoError::EndTagNotLast { offset, total_size });
            }
            return Ok(mbi);
        }
        offset += padded;
    }
    Err(BootInfoError::MissingEndTag)
}

/// The least size of a tag of type `typ` that the `multiboot2` crate, or this module,
/// can read without running off the tag.
fn min_tag_size(typ: u32) -> u32 {
    let fixed = match typ {
        // Two `u32`s: module start and end, or entry size and version.
        tag::MODULE | tag::MEMORY_MAP | tag::EFI_MEMORY_MAP => 8,
        tag::ACPI_OLD => RSDP_V1_LEN,
        tag::ACPI_NEW => RSDP_V2_LEN,
        _ => 0,
    };
    (TAG_HEADER_LEN + fixed) as u32
}

/// Checks the inner layout of the tags whose `multiboot2` accessors assert on it.
fn check_tag(offset: usize, typ: u32, tag: &[u8]) -> Result<(), BootInfoError> {
    let malformed = |reason| BootInfoError::MalformedTag {
        offset,
        typ,
        reason,
    };
    let entries_len = tag.len().saturating_sub(16) as u32;
    match typ {
        tag::END if tag.len() != TAG_HEADER_LEN => Err(malformed("end tag is not 8 bytes")),
        tag::MEMORY_MAP => {
            if u32_at(tag, 8) != MMAP_ENTRY_LEN {
                Err(malformed("memory map entries are not 24 bytes"))
            } else if !entries_len.is_multiple_of(MMAP_ENTRY_LEN) {
                Err(malformed("memory map is not a whole number of entries"))
            } else {
                Ok(())
            }
        }
        tag::EFI_MEMORY_MAP => {
            let desc_size = u32_at(tag, 8);
            if desc_size < EFI_DESCRIPTOR_LEN || !desc_size.is_multiple_of(ALIGN as u32) {
                Err(malformed(
                    "EFI descriptor size is below 40 or not a multiple of 8",
                ))
            } else if u32_at(tag, 12) != EFI_DESCRIPTOR_VERSION {
                Err(malformed("EFI descriptor version is not 1"))
            } else if !entries_len.is_multiple_of(desc_size) {
                Err(malformed(
                    "EFI memory map is not a whole number of descriptors",
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Hands the validated MBI to the `multiboot2` crate.
fn load(mbi: &[u8]) -> Result<BootInformation<'_>, BootInfoError> {
    // SAFETY: `validate` checked that `mbi` starts on an 8-byte boundary and that its
    // header's total_size equals `mbi.len()`, so every byte the crate reads through this
    // pointer lies inside `mbi`. The returned value borrows `mbi` (see the signature), so
    // the memory stays valid and, being behind a shared reference, unchanged for as long
    // as the crate can look at it.
    let loaded = unsafe { BootInformation::load(mbi.as_ptr().cast::<BootInformationHeader>()) };
    loaded.map_err(|error| {
        log::error!("multiboot2: {error}");
        match error {
            LoadError::NoEndTag => BootInfoError::MissingEndTag,
            LoadError::Memory(_) => BootInfoError::Rejected("inconsistent memory layout"),
        }
    })
}

fn string(text: Result<&str, StringError>, field: StringField) -> Result<&str, BootInfoError> {
    text.map_err(|error| match error {
        StringError::MissingNul(_) => BootInfoError::StringNotTerminated(field),
        StringError::Utf8(_) => BootInfoError::StringNotUtf8(field),
    })
}

fn copy<const N: usize>(
    text: &str,
    field: StringField,
) -> Result<heapless::String<N>, BootInfoError> {
    heapless::String::try_from(text).map_err(|_| BootInfoError::StringTooLong {
        field,
        len: text.len(),
        capacity: N,
    })
}

/// Copies as much of `text` as fits, cutting at a character boundary.
fn copy_truncated<const N: usize>(text: &str) -> heapless::String<N> {
    let cut = &text[..text.floor_char_boundary(N)];
    if cut.len() < text.len() {
        log::warn!("boot loader name shortened to {N} bytes: {text}");
    }
    let mut out = heapless::String::new();
    // Cannot fail: `cut` is at most N bytes.
    let _ = out.push_str(cut);
    out
}

fn regions(
    info: &BootInformation<'_>,
) -> Result<heapless::Vec<MemoryRegion, MAX_REGIONS>, BootInfoError> {
    let areas = info
        .memory_map_tag()
        .ok_or(BootInfoError::NoMemoryMap)?
        .memory_areas();
    if areas.len() > MAX_REGIONS {
        return Err(BootInfoError::TooManyRegions { count: areas.len() });
    }
    let mut regions = heapless::Vec::new();
    for area in areas {
        let (base, len) = (area.start_address(), area.size());
        if base.checked_add(len).is_none() {
            return Err(BootInfoError::RegionWraps { base, len });
        }
        let kind = match area.typ() {
            MemoryAreaType::Available => RegionKind::Usable,
            MemoryAreaType::AcpiAvailable => RegionKind::AcpiReclaimable,
            MemoryAreaType::ReservedHibernate => RegionKind::AcpiNvs,
            MemoryAreaType::Defective => RegionKind::Defective,
            _ => RegionKind::Reserved,
        };
        // Cannot fail: the count was checked above.
        let _ = regions.push(MemoryRegion { base, len, kind });
    }
    sort_by_base(&mut regions);
    Ok(regions)
}

/// A stable insertion sort: `core` has no stable sort without `alloc`, and the map is short.
fn sort_by_base(regions: &mut [MemoryRegion]) {
    for i in 1..regions.len() {
        let mut j = i;
        while j > 0 && regions[j - 1].base > regions[j].base {
            regions.swap(j - 1, j);
            j -= 1;
        }
    }
}

fn modules(
    info: &BootInformation<'_>,
) -> Result<heapless::Vec<Module, MAX_MODULES>, BootInfoError> {
    let count = info.module_tags().count();
    if count > MAX_MODULES {
        return Err(BootInfoError::TooManyModules { count });
    }
    let mut modules = heapless::Vec::new();
    for (index, tag) in info.module_tags().enumerate() {
        let (start, end) = (u64::from(tag.start_address()), u64::from(tag.end_address()));
        if end < start {
            return Err(BootInfoError::ModuleEndBeforeStart { index, start, end });
        }
        let field = StringField::Module(index);
        let text = string(tag.cmdline(), field)?;
        let module = Module {
            start,
            end,
            string: copy(text, field)?,
        };
        // Cannot fail: the count was checked above.
        let _ = modules.push(module);
    }
    Ok(modules)
}

/// Decodes and verifies every RSDP tag, preferring the ACPI 2.0+ one.
fn rsdp(info: &BootInformation<'_>) -> Result<Option<Rsdp>, BootInfoError> {
    let mut old = None;
    let mut new = None;
    for tag in info.tags() {
        let typ = tag.header().typ.get();
        if typ == tag::ACPI_OLD || typ == tag::ACPI_NEW {
            let rsdp = decode_rsdp(typ, tag.payload())?;
            let slot = if typ == tag::ACPI_NEW {
                &mut new
            } else {
                &mut old
            };
            slot.get_or_insert(rsdp);
        }
    }
    Ok(new.or(old))
}

/// Decodes the RSDP copy in the payload of tag type 14 or 15, which `validate` made sure
/// is long enough for the RSDP version the tag type promises.
fn decode_rsdp(typ: u32, rsdp: &[u8]) -> Result<Rsdp, BootInfoError> {
    let bad = |reason| BootInfoError::BadRsdp { typ, reason };
    if &rsdp[..8] != b"RSD PTR " {
        return Err(bad("signature is not 'RSD PTR '"));
    }
    if checksum(&rsdp[..RSDP_V1_LEN]) != 0 {
        return Err(bad("checksum over the first 20 bytes does not add up to 0"));
    }
    let revision = rsdp[15];
    let rsdt = u32_at(rsdp, 16);
    if typ == tag::ACPI_OLD {
        return Ok(Rsdp {
            revision,
            rsdt,
            xsdt: None,
        });
    }
    let length = u32_at(rsdp, 20) as usize;
    if !(RSDP_V2_LEN..=rsdp.len()).contains(&length) {
        return Err(bad("length field is below 36 or beyond the tag"));
    }
    if checksum(&rsdp[..length]) != 0 {
        return Err(bad("extended checksum does not add up to 0"));
    }
    let xsdt = u64_at(rsdp, 24);
    Ok(Rsdp {
        revision,
        rsdt,
        xsdt: (xsdt != 0).then_some(xsdt),
    })
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// The little-endian `u32` at `at`; the caller has checked that it is in bounds.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// The little-endian `u64` at `at`; the caller has checked that it is in bounds.
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests;
