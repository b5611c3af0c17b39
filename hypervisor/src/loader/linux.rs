//! Loading Linux bzImages for the 64-bit boot protocol.
//!
//! Lazarus boots a Linux guest the way `Documentation/arch/x86/boot.rst` calls the
//! "64-bit Boot Protocol": no real-mode setup code runs. The hypervisor copies the
//! protected-mode kernel into guest RAM, builds the zero page (`struct boot_params` of
//! `arch/x86/include/uapi/asm/bootparam.h`) with an e820 map, the command line and the
//! initrd, and enters the kernel at its 64-bit entry point (load address + 0x200) in long
//! mode with RSI holding the zero page's guest-physical address. This module is the pure
//! part of that: the page tables, GDT and registers are the caller's.
//!
//! As with the ELF loader, the image is untrusted input to the most privileged code on the
//! machine: every field is read through a bounds-checked accessor, every sum is checked,
//! and the work is split so that [`parse`] and [`place`] decide everything (and say why
//! not), while [`boot_params`] and [`load`] only write what they accepted.
//!
//! # Guest-physical layout
//!
//! | range | contents |
//! |---|---|
//! | `[0x500, 0x10000)` | the hypervisor's page tables and GDT for the guest (not written here) |
//! | `[0x10000, 0x11000)` | the zero page ([`BOOT_PARAMS_GPA`]) |
//! | `[0x11000, 0x12000)` | the command line, NUL-terminated ([`CMDLINE_GPA`]) |
//! | `[kernel_gpa, reserved_end)` | the protected-mode kernel and the rest of its `init_size` |
//! | `[initrd_gpa, +initrd_len)` | the initrd, page-aligned, as high as allowed |
//!
//! The kernel goes to its preferred address. boot.rst says a relocatable kernel runs at
//! `align_up(load_address, kernel_alignment)`, but the decompressor also never runs below
//! the address it was built for (`pref_address`, the build's `LOAD_PHYSICAL_ADDR`): loaded
//! lower, it would move itself up to `pref_address` and use `init_size` bytes from there,
//! memory this loader would not have set aside. So a relocatable kernel is loaded at
//! `pref_address` rounded up to `kernel_alignment` (and at least 1 MiB, "high memory"; a
//! kernel with no `pref_address` at 16 MiB, the usual `CONFIG_PHYSICAL_START`), where its
//! runtime start equals its load address. A kernel that is not relocatable "will
//! unconditionally move itself and to run at" `pref_address`, so it is loaded exactly
//! there. Either way `[kernel_gpa, kernel_gpa + init_size)` is the kernel's until it has
//! read its memory map, must fit in RAM, and stays clear of everything else.
//!
//! The initrd goes as high as it may: its last byte at or below both the end of RAM and
//! `initrd_addr_max` ("the maximum address that may be occupied by the initial
//! ramdisk/ramfs contents"), and above the kernel's `init_size` region. `initrd_addr_max`
//! is honoured even when `xloadflags` has `XLF_CAN_BE_LOADED_ABOVE_4G`: being a 32-bit
//! field, it also keeps the initrd below 4 GiB, which every kernel accepts, so the flag is
//! never needed for it. (The `ext_ramdisk_*` fields are still written from the high halves,
//! which are then zero.)
//!
//! # The e820 map
//!
//! | range | type |
//! |---|---|
//! | `[0, 0x9fc00)` | RAM |
//! | `[0x9fc00, 0xa0000)` | reserved (where a PC has its EBDA) |
//! | `[0xf0000, 0x100000)` | reserved (where a PC has its BIOS ROM) |
//! | `[0x100000, ram)` | RAM |
//!
//! The low 64 KiB, which holds the hypervisor's boot page tables and GDT for the guest, and
//! the zero page and command line above it, are reported as RAM, as PC firmware reports the
//! low memory its own boot data lives in. That is deliberate: Linux needs those structures
//! only until it has its own (the decompressor switches to its own GDT and page tables
//! before decompressing, and the kernel copies the zero page and command line in its first
//! C code), and nothing of the hypervisor's stays there after entry. Linux keeps its hands
//! off that memory anyway: it always reserves page 0, and by default (`X86_RESERVE_LOW`)
//! the whole first 64 KiB, whatever the map says. Reserving it in the map as well would buy
//! nothing, while Linux does want some RAM below 1 MiB, for the real-mode trampoline that
//! starts application processors.

use core::fmt;
use core::ops::Range;

/// The oldest boot protocol accepted: 2.12 introduced `xloadflags`, whose `XLF_KERNEL_64`
/// bit is the only way a kernel says it has the 64-bit entry point.
pub const MIN_PROTOCOL: u16 = 0x020c;

/// Guest-physical address of the zero page (`struct boot_params`, one 4 KiB page); the
/// kernel finds it through RSI.
pub const BOOT_PARAMS_GPA: u64 = 0x1_0000;
/// Guest-physical address of the command line, in the page after the zero page.
pub const CMDLINE_GPA: u64 = 0x1_1000;
/// The longest command line Lazarus passes, without its NUL: one page including the NUL.
/// A kernel's own limit (`cmdline_size`) may be lower.
pub const CMDLINE_MAX: usize = 4095;
/// The lowest address a kernel is loaded at: "high memory", where boot.rst says bzImage
/// kernels go, above the real-mode area and the legacy holes.
pub const KERNEL_MIN_GPA: u64 = 0x10_0000;
/// Where a relocatable kernel with no preferred address goes (the usual
/// `CONFIG_PHYSICAL_START`, and `pref_address` of distribution kernels).
pub const KERNEL_DEFAULT_GPA: u64 = 0x100_0000;
/// Offset of the 64-bit entry point from the start of the loaded kernel (boot.rst,
/// "64-bit Boot Protocol"; the legacy 64-bit entry that `XLF_KERNEL_64` advertises).
pub const ENTRY_64_OFFSET: u64 = 0x200;

/// Size of the zero page.
pub const BOOT_PARAMS_SIZE: usize = 4096;
const PAGE_SIZE: u64 = 4096;
/// boot.rst: "a sector refers to 512 bytes".
const SECTOR_SIZE: usize = 512;
/// boot.rst, `setup_sects`: "If this field is 0, the real value is 4."
const SETUP_SECTS_IF_ZERO: u8 = 4;
const FOUR_GIB: u64 = 1 << 32;

// The setup header (boot.rst "The Real-Mode Kernel Header"; bootparam.h `struct
// setup_header`). The offsets are from the start of the image, and equally from the start
// of the zero page, where the header is copied to the same place (`boot_params.hdr`).
const OFF_SETUP_HEADER: usize = 0x1f1;
const OFF_SETUP_SECTS: usize = 0x1f1;
const OFF_BOOT_FLAG: usize = 0x1fe;
const OFF_JUMP: usize = 0x200;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20e;
const OFF_TYPE_OF_LOADER: usize = 0x210;
const OFF_LOADFLAGS: usize = 0x211;
const OFF_RAMDISK_IMAGE: usize = 0x218;
const OFF_RAMDISK_SIZE: usize = 0x21c;
const OFF_CMD_LINE_PTR: usize = 0x228;
const OFF_INITRD_ADDR_MAX: usize = 0x22c;
const OFF_KERNEL_ALIGNMENT: usize = 0x230;
const OFF_RELOCATABLE_KERNEL: usize = 0x234;
const OFF_MIN_ALIGNMENT: usize = 0x235;
const OFF_XLOADFLAGS: usize = 0x236;
const OFF_CMDLINE_SIZE: usize = 0x238;
const OFF_SETUP_DATA: usize = 0x250;
const OFF_PREF_ADDRESS: usize = 0x258;
const OFF_INIT_SIZE: usize = 0x260;
/// End of the last field read (`init_size`, 0x260/4): the image must be this long, and its
/// header must reach this far.
const SETUP_HEADER_MIN_END: usize = 0x264;
/// The header ends where the short jump at 0x200 lands ("0x0202 + byte value at offset
/// 0x0201"), so at most 0x202 + 127; boot.rst: "setup_header is permanently limited to 144
/// bytes" (0x1f1 + 144, the same bound). It must end before `edd_mbr_sig_buffer` (0x290),
/// where the hole for it in `struct boot_params` ends.
const SETUP_HEADER_MAX_END: usize = 0x281;

// Zero-page fields outside the setup header (bootparam.h `struct boot_params`).
const OFF_EXT_RAMDISK_IMAGE: usize = 0x0c0;
const OFF_EXT_RAMDISK_SIZE: usize = 0x0c4;
const OFF_EXT_CMD_LINE_PTR: usize = 0x0c8;
const OFF_E820_ENTRIES: usize = 0x1e8;
const OFF_E820_TABLE: usize = 0x2d0;
/// `struct boot_e820_entry` is packed: `__u64 addr; __u64 size; __u32 type;`.
const E820_ENTRY_SIZE: usize = 20;

/// `boot_flag`: "Contains 0xAA55".
const BOOT_FLAG: u16 = 0xaa55;
/// `header`: "Contains the magic number "HdrS" (0x53726448)".
const HDRS: [u8; 4] = *b"HdrS";
/// `jump`: "an x86 jump instruction, 0xEB followed by a signed offset relative to byte
/// 0x202".
const JMP_SHORT: u8 = 0xeb;
/// `type_of_loader` for a boot loader without an assigned id ("enter 0xFF here").
const TYPE_OF_LOADER_UNDEFINED: u8 = 0xff;

/// `loadflags` bit 0 (bootparam.h `LOADED_HIGH`): the protected-mode code goes at 1 MiB
/// or above, i.e. a bzImage.
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit 6 (`KEEP_SEGMENTS`), obsolete; cleared in the zero page.
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `loadflags` bit 7 (`CAN_USE_HEAP`): `heap_end_ptr` is valid. Only the real-mode setup
/// code has a heap, and it does not run, so this is cleared in the zero page.
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `xloadflags` bit 0 (`XLF_KERNEL_64`): the kernel has the 64-bit entry at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1 (`XLF_CAN_BE_LOADED_ABOVE_4G`).
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// e820 type of usable RAM (`E820_TYPE_RAM` of `enum e820_type`,
/// `arch/x86/include/asm/e820/types.h`).
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (`E820_TYPE_RESERVED`).
pub const E820_RESERVED: u32 = 2;
/// The most e820 entries [`e820_map`] produces (the zero page has room for 128,
/// `E820_MAX_ENTRIES_ZEROPAGE`).
pub const E820_MAX: usize = 8;

/// The setup-header fields Lazarus uses, as read from the image by [`parse`] (names and
/// meanings as in boot.rst).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// `setup_sects` (0x1f1) as in the image; 0 means 4, see [`SetupHeader::setup_len`].
    pub setup_sects: u8,
    /// `version` (0x206), `(major << 8) | minor`.
    pub version: u16,
    /// Where the setup header ends in the image (and the zero page): the target of the
    /// jump at 0x200.
    pub header_end: usize,
    /// `kernel_version` (0x20e): offset of the version string, less 0x200; 0 if none.
    pub kernel_version: u16,
    /// `loadflags` (0x211) as in the image.
    pub loadflags: u8,
    /// `initrd_addr_max` (0x22c): the highest address the initrd may occupy.
    pub initrd_addr_max: u32,
    /// `kernel_alignment` (0x230).
    pub kernel_alignment: u32,
    /// `relocatable_kernel` (0x234) is nonzero.
    pub relocatable: bool,
    /// `min_alignment` (0x235), a power of two (informational: Lazarus always loads at
    /// `kernel_alignment`).
    pub min_alignment: u8,
    /// `xloadflags` (0x236).
    pub xloadflags: u16,
    /// `cmdline_size` (0x238): the longest command line, without its NUL.
    pub cmdline_size: u32,
    /// `pref_address` (0x258).
    pub pref_address: u64,
    /// `init_size` (0x260): memory the kernel needs from its start address until it has
    /// looked at its memory map.
    pub init_size: u32,
}

impl SetupHeader {
    /// Size of the real-mode part (boot sector + setup code), which is where the
    /// protected-mode kernel starts in the file: `(setup_sects + 1) * 512`, with a
    /// `setup_sects` of 0 counting as 4.
    pub fn setup_len(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            SETUP_SECTS_IF_ZERO
        } else {
            self.setup_sects
        };
        // At most 256 * 512: no overflow.
        (usize::from(sects) + 1) * SECTOR_SIZE
    }

    /// Whether `xloadflags` allows the kernel, zero page, command line and initrd above
    /// 4 GiB.
    pub fn can_be_loaded_above_4g(&self) -> bool {
        self.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0
    }

    /// The longest command line, without its NUL, that this kernel gets from Lazarus.
    pub fn cmdline_max(&self) -> usize {
        usize::try_from(self.cmdline_size).map_or(CMDLINE_MAX, |size| size.min(CMDLINE_MAX))
    }
}

/// Which magic number a non-bzImage lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// `boot_flag`, 0xAA55 at 0x1fe.
    BootFlag,
    /// `header`, "HdrS" at 0x202.
    HdrS,
}

/// Why a kernel, command line or initrd was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// Shorter than the boot sector and setup header.
    TooShort,
    /// No 0xAA55 boot flag or no "HdrS" signature.
    NotBzImage(Magic),
    /// `version` is older than [`MIN_PROTOCOL`].
    ProtocolTooOld { version: u16, needed: u16 },
    /// The jump at 0x200, which gives the setup header's length, is not a short jump to
    /// the end of a header that holds the fields Lazarus reads.
    BadHeaderJump { opcode: u8, offset: u8 },
    /// `loadflags` lacks `LOADED_HIGH`: a zImage, loaded at 0x10000.
    NotLoadedHigh,
    /// `xloadflags` lacks `XLF_KERNEL_64`.
    No64BitEntry,
    /// The file ends before its protected-mode kernel reaches past the 64-bit entry point
    /// (0x200 bytes in).
    Truncated { setup_len: usize, len: usize },
    /// A relocatable kernel's `kernel_alignment` is not a power of two.
    BadKernelAlignment(u32),
    /// The kernel is not relocatable and its `pref_address` is below
    /// [`KERNEL_MIN_GPA`].
    NotRelocatable { pref_address: u64 },
    /// The command line is longer than the kernel's `cmdline_size` or than
    /// [`CMDLINE_MAX`].
    CmdlineTooLong { len: usize, max: usize },
    /// The command line contains a NUL byte, which would cut it short.
    CmdlineContainsNul,
    /// The kernel's `init_size` region would end at `needed` (saturating), past the end
    /// of the VM's `ram` bytes.
    KernelDoesNotFit { needed: u64, ram: u64 },
    /// The kernel's `init_size` region would end above 4 GiB and `xloadflags` lacks
    /// `XLF_CAN_BE_LOADED_ABOVE_4G`.
    KernelAbove4G { end: u64 },
    /// The initrd of `size` bytes does not fit in the `room` bytes between the kernel's
    /// `init_size` region and the lower of the end of RAM and `initrd_addr_max`.
    InitrdDoesNotFit { size: u64, room: u64 },
}

impl fmt::Display for LinuxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort => write!(
                f,
                "too short for a Linux bzImage (the boot sector and setup header take \
                 {SETUP_HEADER_MIN_END:#x} bytes)"
            ),
            Self::NotBzImage(Magic::BootFlag) => write!(
                f,
                "not a bzImage (no 0xAA55 boot flag at offset {OFF_BOOT_FLAG:#x})"
            ),
            Self::NotBzImage(Magic::HdrS) => {
                write!(
                    f,
                    "not a bzImage (no HdrS signature at offset {OFF_HEADER:#x})"
                )
            }
            Self::ProtocolTooOld { version, needed } => write!(
                f,
                "boot protocol {} is too old (Lazarus needs {} or later for the 64-bit entry)",
                Protocol(version),
                Protocol(needed)
            ),
            Self::BadHeaderJump { opcode, offset } => write!(
                f,
                "malformed setup header: the jump at {OFF_JUMP:#x} ({opcode:02x} {offset:02x}) \
                 must be a short jump ending the header between {SETUP_HEADER_MIN_END:#x} \
                 and {SETUP_HEADER_MAX_END:#x}"
            ),
            Self::NotLoadedHigh => write!(
                f,
                "not a bzImage (loadflags LOADED_HIGH is clear: a zImage, which loads at 0x10000)"
            ),
            Self::No64BitEntry => write!(
                f,
                "the kernel has no 64-bit entry point (xloadflags XLF_KERNEL_64 is clear; \
                 a 32-bit kernel?)"
            ),
            Self::Truncated { setup_len, len } => write!(
                f,
                "truncated bzImage: {len} bytes, too few for {setup_len} bytes of setup code \
                 (setup_sects) and a protected-mode kernel with its 64-bit entry at +0x200"
            ),
            Self::BadKernelAlignment(alignment) => write!(
                f,
                "kernel_alignment {alignment:#x} of a relocatable kernel is not a power of two"
            ),
            Self::NotRelocatable { pref_address } => write!(
                f,
                "the kernel is not relocatable and its pref_address {pref_address:#x} is \
                 below {KERNEL_MIN_GPA:#x}, where Lazarus cannot load it"
            ),
            Self::CmdlineTooLong { len, max } => write!(
                f,
                "the command line is {len} bytes long; this kernel takes at most {max}"
            ),
            Self::CmdlineContainsNul => write!(f, "the command line contains a NUL byte"),
            Self::KernelDoesNotFit { needed, ram } => write!(
                f,
                "the kernel does not fit in guest RAM: it needs RAM up to {needed:#x} \
                 (load address + init_size), the VM has {ram:#x} bytes"
            ),
            Self::KernelAbove4G { end } => write!(
                f,
                "the kernel would end at {end:#x}, above 4 GiB, and xloadflags lacks \
                 XLF_CAN_BE_LOADED_ABOVE_4G"
            ),
            Self::InitrdDoesNotFit { size, room } => write!(
                f,
                "the initrd ({size} bytes) does not fit: {room} bytes are free between the \
                 kernel's init_size and the end of RAM or initrd_addr_max"
            ),
        }
    }
}

/// A boot protocol version printed as boot.rst writes them ("2.12").
struct Protocol(u16);

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 >> 8, self.0 & 0xff)
    }
}

/// Reads and checks the setup header of a bzImage: a bzImage (boot flag, "HdrS",
/// `LOADED_HIGH`), of protocol [`MIN_PROTOCOL`] or later, with the 64-bit entry point, a
/// sane header length and alignment, and a protected-mode kernel after its setup code.
pub fn parse(image: &[u8]) -> Result<SetupHeader, LinuxError> {
    if image.len() < SETUP_HEADER_MIN_END {
        return Err(LinuxError::TooShort);
    }
    let byte = |off: usize| image.get(off).copied().ok_or(LinuxError::TooShort);

    if read_u16(image, OFF_BOOT_FLAG).ok_or(LinuxError::TooShort)? != BOOT_FLAG {
        return Err(LinuxError::NotBzImage(Magic::BootFlag));
    }
    if image.get(OFF_HEADER..OFF_HEADER + HDRS.len()) != Some(&HDRS[..]) {
        return Err(LinuxError::NotBzImage(Magic::HdrS));
    }
    let version = read_u16(image, OFF_VERSION).ok_or(LinuxError::TooShort)?;
    if version < MIN_PROTOCOL {
        return Err(LinuxError::ProtocolTooOld {
            version,
            needed: MIN_PROTOCOL,
        });
    }

    let opcode = byte(OFF_JUMP)?;
    let offset = byte(OFF_JUMP + 1)?;
    // At most 0x202 + 0xff: no overflow. A short jump's offset is signed, and a backwards
    // one cannot end a header.
    let header_end = OFF_JUMP + 2 + usize::from(offset);
    if opcode != JMP_SHORT
        || offset >= 0x80
        || !(SETUP_HEADER_MIN_END..=SETUP_HEADER_MAX_END).contains(&header_end)
        || header_end > image.len()
    {
        return Err(LinuxError::BadHeaderJump { opcode, offset });
    }

    let loadflags = byte(OFF_LOADFLAGS)?;
    if loadflags & LOADED_HIGH == 0 {
        return Err(LinuxError::NotLoadedHigh);
    }
    let xloadflags = read_u16(image, OFF_XLOADFLAGS).ok_or(LinuxError::TooShort)?;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry);
    }

    let header = SetupHeader {
        setup_sects: byte(OFF_SETUP_SECTS)?,
        version,
        header_end,
        kernel_version: read_u16(image, OFF_KERNEL_VERSION).ok_or(LinuxError::TooShort)?,
        loadflags,
        initrd_addr_max: read_u32(image, OFF_INITRD_ADDR_MAX).ok_or(LinuxError::TooShort)?,
        kernel_alignment: read_u32(image, OFF_KERNEL_ALIGNMENT).ok_or(LinuxError::TooShort)?,
        relocatable: byte(OFF_RELOCATABLE_KERNEL)? != 0,
        min_alignment: byte(OFF_MIN_ALIGNMENT)?,
        xloadflags,
        cmdline_size: read_u32(image, OFF_CMDLINE_SIZE).ok_or(LinuxError::TooShort)?,
        pref_address: read_u64(image, OFF_PREF_ADDRESS).ok_or(LinuxError::TooShort)?,
        init_size: read_u32(image, OFF_INIT_SIZE).ok_or(LinuxError::TooShort)?,
    };
    kernel_len(&header, image.len())?;
    if header.relocatable && !header.kernel_alignment.is_power_of_two() {
        return Err(LinuxError::BadKernelAlignment(header.kernel_alignment));
    }
    Ok(header)
}

/// The kernel's version string ("6.1.0-18-amd64 (debian-kernel@...) #1 SMP ..."), if the
/// header points to one (`kernel_version`: "a pointer to a NUL-terminated human-readable
/// kernel version number string, less 0x200") inside the setup code and it is UTF-8.
pub fn version_string<'a>(image: &'a [u8], header: &SetupHeader) -> Option<&'a str> {
    if header.kernel_version == 0 {
        return None;
    }
    let start = usize::from(header.kernel_version).checked_add(0x200)?;
    let setup = image.get(..header.setup_len().min(image.len()))?;
    let rest = setup.get(start..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    core::str::from_utf8(&rest[..len]).ok()
}

/// Where everything goes in guest RAM; every range lies within the VM's RAM and none
/// overlaps another or the hypervisor's low area below [`BOOT_PARAMS_GPA`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Guest-physical address of the protected-mode kernel (also its runtime start).
    pub kernel_gpa: u64,
    /// Bytes of the protected-mode kernel copied there: the file after its setup code.
    pub kernel_len: u64,
    /// The 64-bit entry point, `kernel_gpa + 0x200`.
    pub entry: u64,
    /// The zero page ([`BOOT_PARAMS_GPA`]); RSI at entry.
    pub boot_params: u64,
    /// The command line ([`CMDLINE_GPA`]).
    pub cmdline: u64,
    /// Guest-physical address of the initrd, page-aligned; 0 when there is none.
    pub initrd_gpa: u64,
    /// Length of the initrd; 0 when there is none.
    pub initrd_len: u64,
    /// End of the memory the kernel owns from `kernel_gpa`:
    /// `kernel_gpa + max(init_size, kernel_len)` (the maximum only matters for a file
    /// longer than its own `init_size`). The caller identity-maps
    /// `[kernel_gpa, reserved_end)`, as the protocol asks.
    pub reserved_end: u64,
    /// The VM's RAM size this placement was made for (the e820 map describes it).
    pub ram: u64,
}

/// Decides where the kernel, initrd, zero page and command line go in a VM of `ram`
/// bytes (see the module documentation for the rules), for a kernel whose header is
/// `header` in an image of `image_len` bytes, an initrd of `initrd_len` bytes (0 for
/// none) and the command line `cmdline`.
pub fn place(
    header: &SetupHeader,
    image_len: usize,
    initrd_len: usize,
    cmdline: &str,
    ram: u64,
) -> Result<Placement, LinuxError> {
    let max = header.cmdline_max();
    if cmdline.len() > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(LinuxError::CmdlineContainsNul);
    }

    let kernel_len = kernel_len(header, image_len)?;
    let kernel_gpa = kernel_address(header, ram)?;
    let footprint = kernel_len.max(u64::from(header.init_size));
    let reserved_end = kernel_gpa.checked_add(footprint);
    let reserved_end = match reserved_end {
        Some(end) if end <= ram => end,
        _ => {
            return Err(LinuxError::KernelDoesNotFit {
                needed: kernel_gpa.saturating_add(footprint),
                ram,
            })
        }
    };
    if reserved_end > FOUR_GIB && !header.can_be_loaded_above_4g() {
        return Err(LinuxError::KernelAbove4G { end: reserved_end });
    }
    // Inside the copied kernel (kernel_len > 0x200), so below reserved_end: no overflow.
    let entry = kernel_gpa + ENTRY_64_OFFSET;

    let initrd_len = initrd_len as u64;
    let initrd_gpa = if initrd_len == 0 {
        0
    } else {
        // initrd_addr_max is the highest byte the initrd may occupy.
        let ceiling = ram.min(u64::from(header.initrd_addr_max) + 1);
        let floor = align_up(reserved_end, PAGE_SIZE).unwrap_or(u64::MAX);
        let room = ceiling.saturating_sub(floor);
        if initrd_len > room {
            return Err(LinuxError::InitrdDoesNotFit {
                size: initrd_len,
                room,
            });
        }
        // ceiling - initrd_len >= floor, a multiple of the page size, so aligning down
        // stays at or above floor.
        align_down(ceiling - initrd_len, PAGE_SIZE)
    };

    Ok(Placement {
        kernel_gpa,
        kernel_len,
        entry,
        boot_params: BOOT_PARAMS_GPA,
        cmdline: CMDLINE_GPA,
        initrd_gpa,
        initrd_len,
        reserved_end,
        ram,
    })
}

/// Length of the protected-mode kernel in an image of `image_len` bytes: everything after
/// the setup code, which must at least reach past the 64-bit entry point at +0x200.
fn kernel_len(header: &SetupHeader, image_len: usize) -> Result<u64, LinuxError> {
    let setup_len = header.setup_len();
    match image_len.checked_sub(setup_len) {
        Some(len) if len as u64 > ENTRY_64_OFFSET => Ok(len as u64),
        _ => Err(LinuxError::Truncated {
            setup_len,
            len: image_len,
        }),
    }
}

/// Where the kernel is loaded (module documentation, "Guest-physical layout"), in a VM of
/// `ram` bytes (for the error only).
fn kernel_address(header: &SetupHeader, ram: u64) -> Result<u64, LinuxError> {
    if !header.relocatable {
        if header.pref_address < KERNEL_MIN_GPA {
            return Err(LinuxError::NotRelocatable {
                pref_address: header.pref_address,
            });
        }
        return Ok(header.pref_address);
    }
    let base = match header.pref_address {
        0 => KERNEL_DEFAULT_GPA,
        pref => pref.max(KERNEL_MIN_GPA),
    };
    if !header.kernel_alignment.is_power_of_two() {
        return Err(LinuxError::BadKernelAlignment(header.kernel_alignment));
    }
    align_up(base, u64::from(header.kernel_alignment)).ok_or(LinuxError::KernelDoesNotFit {
        needed: u64::MAX,
        ram,
    })
}

/// One entry of the e820 memory map (bootparam.h `struct boot_e820_entry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map of a VM with `ram` bytes of RAM from guest-physical 0 (module
/// documentation, "The e820 map"), each range cut to `[0, ram)` and left out if that
/// leaves nothing.
pub fn e820_map(ram: u64) -> heapless::Vec<E820Entry, E820_MAX> {
    const LAYOUT: [(u64, u64, u32); 4] = [
        (0, 0x9_fc00, E820_RAM),
        (0x9_fc00, 0xa_0000, E820_RESERVED),
        (0xf_0000, 0x10_0000, E820_RESERVED),
        (0x10_0000, u64::MAX, E820_RAM),
    ];
    let mut map = heapless::Vec::new();
    for (start, end, kind) in LAYOUT {
        let end = end.min(ram);
        if start < end {
            // Cannot fail: LAYOUT has fewer entries than E820_MAX.
            let _ = map.push(E820Entry {
                addr: start,
                size: end - start,
                kind,
            });
        }
    }
    map
}

/// Builds the zero page for a kernel placed by [`place`]: zeros, then the image's setup
/// header copied to 0x1f1 up to its end (boot.rst, "64-bit Boot Protocol": the setup
/// header "should be loaded into struct boot_params and examined", its end being "0x0202
/// + byte value at offset 0x0201"), then the fields a boot loader writes:
///
/// * `type_of_loader` = 0xff (no assigned id);
/// * `loadflags` = `LOADED_HIGH` only: `CAN_USE_HEAP` and `KEEP_SEGMENTS` clear (no
///   real-mode heap, obsolete flag), `QUIET_FLAG` clear (early messages wanted), and the
///   kernel-internal `KASLR_FLAG` clear;
/// * `cmd_line_ptr` / `ext_cmd_line_ptr`, `ramdisk_image` / `ext_ramdisk_image`,
///   `ramdisk_size` / `ext_ramdisk_size`: low and high 32 bits;
/// * `setup_data` = 0: the list is empty, and a pointer that came with the image means
///   nothing in this VM;
/// * `e820_entries` and `e820_table`.
///
/// Nothing else: no screen, EDD, EFI or ACPI information (the sentinel at 0x1ef stays 0,
/// since only the header is copied).
///
/// # Panics
/// If `header` was not parsed from `image`: that is a bug in the caller, not bad input.
pub fn boot_params(image: &[u8], header: &SetupHeader, p: &Placement) -> [u8; BOOT_PARAMS_SIZE] {
    let mut page = [0u8; BOOT_PARAMS_SIZE];
    let hdr = OFF_SETUP_HEADER..header.header_end;
    page[hdr.clone()].copy_from_slice(&image[hdr]);

    page[OFF_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED;
    page[OFF_LOADFLAGS] = LOADED_HIGH;
    let (lo, hi) = split(p.cmdline);
    put_u32(&mut page, OFF_CMD_LINE_PTR, lo);
    put_u32(&mut page, OFF_EXT_CMD_LINE_PTR, hi);
    let (lo, hi) = split(p.initrd_gpa);
    put_u32(&mut page, OFF_RAMDISK_IMAGE, lo);
    put_u32(&mut page, OFF_EXT_RAMDISK_IMAGE, hi);
    let (lo, hi) = split(p.initrd_len);
    put_u32(&mut page, OFF_RAMDISK_SIZE, lo);
    put_u32(&mut page, OFF_EXT_RAMDISK_SIZE, hi);
    page[OFF_SETUP_DATA..OFF_SETUP_DATA + 8].fill(0);

    let map = e820_map(p.ram);
    // At most E820_MAX (8) entries: fits the u8 count and the 128-entry table.
    page[OFF_E820_ENTRIES] = map.len() as u8;
    for (i, entry) in map.iter().enumerate() {
        let at = OFF_E820_TABLE + i * E820_ENTRY_SIZE;
        page[at..at + 8].copy_from_slice(&entry.addr.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&entry.size.to_le_bytes());
        page[at + 16..at + 20].copy_from_slice(&entry.kind.to_le_bytes());
    }
    page
}

/// Copies everything into guest RAM (`guest`, indexed by guest-physical address): the
/// protected-mode kernel (the image after its `(setup_sects or 4) + 1` sectors of
/// real-mode code) at `kernel_gpa`, the initrd at `initrd_gpa`, the command line with its
/// NUL at [`CMDLINE_GPA`] (the rest of its page zeroed) and the zero page at
/// [`BOOT_PARAMS_GPA`]. Nothing else is written; in particular not the hypervisor's low
/// area below [`BOOT_PARAMS_GPA`] and not the rest of the kernel's `init_size`.
///
/// # Panics
/// If the arguments are not the ones `p` was computed from by [`parse`] and [`place`], or
/// `guest` is shorter than the `ram` given to [`place`]: bugs in the caller, not bad input.
pub fn load(
    image: &[u8],
    initrd: &[u8],
    cmdline: &str,
    header: &SetupHeader,
    p: &Placement,
    guest: &mut [u8],
) {
    let kernel = &image[header.setup_len()..];
    assert_eq!(
        kernel.len() as u64,
        p.kernel_len,
        "image does not match placement"
    );
    assert_eq!(
        initrd.len() as u64,
        p.initrd_len,
        "initrd does not match placement"
    );
    assert!(
        cmdline.len() <= CMDLINE_MAX,
        "command line not checked by place"
    );

    guest[range(p.kernel_gpa, p.kernel_len)].copy_from_slice(kernel);
    guest[range(p.initrd_gpa, p.initrd_len)].copy_from_slice(initrd);
    let line = &mut guest[range(p.cmdline, PAGE_SIZE)];
    line.fill(0);
    line[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
    guest[range(p.boot_params, BOOT_PARAMS_SIZE as u64)]
        .copy_from_slice(&boot_params(image, header, p));
}

/// `[start, start + len)` as slice indices, for ranges [`place`] has checked against the
/// VM's RAM.
fn range(start: u64, len: u64) -> Range<usize> {
    let start = usize::try_from(start).expect("checked by place");
    let len = usize::try_from(len).expect("checked by place");
    start..start.checked_add(len).expect("checked by place")
}

fn read_u16(bytes: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(read_array(bytes, off)?))
}

fn read_u32(bytes: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(read_array(bytes, off)?))
}

fn read_u64(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(read_array(bytes, off)?))
}

fn read_array<const N: usize>(bytes: &[u8], off: usize) -> Option<[u8; N]> {
    bytes.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn put_u32(page: &mut [u8; BOOT_PARAMS_SIZE], off: usize, value: u32) {
    page[off..off + 4].copy_from_slice(&value.to_le_bytes());
}

/// Low and high 32 bits.
fn split(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

/// `value` rounded up to a multiple of `align` (a power of two); `None` on overflow.
fn align_up(value: u64, align: u64) -> Option<u64> {
    let mask = align - 1;
    Some(value.checked_add(mask)? & !mask)
}

fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

#[cfg(test)]
mod tests;
