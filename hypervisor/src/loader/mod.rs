//! Loading ELF executables into guest RAM.
//!
//! Test guests (and, later, other simple guests) come as ELF64 executables in GRUB
//! modules. The image is untrusted input to the most privileged code on the machine, so
//! the work is split in two: [`parse`] decides, with checked arithmetic throughout, whether
//! the image is something Lazarus is willing to load for a VM of a given size, and says
//! exactly why not otherwise; [`load`] then only copies what `parse` accepted and has
//! nothing left to check. Splitting them also lets a VM be refused before any memory is
//! set aside for it.
//!
//! The rules, and why:
//!
//! * Only `PT_LOAD` entries matter; notes, `PT_GNU_STACK` and the like are ignored, and a
//!   `PT_LOAD` with no memory size loads nothing and is skipped.
//! * A segment goes to its physical address (`p_paddr`): the guest starts with guest RAM
//!   identity-mapped, so its physical layout is the one that counts, and for the test
//!   guests it equals the virtual one anyway. For the same reason the entry point is taken
//!   as a guest-physical address and must fall inside a loaded segment.
//! * Segments must lie in `[min_gpa, ram)`: below `min_gpa` are the page tables and start
//!   information Lazarus writes for the guest, and nothing exists above the VM's RAM.
//! * Segments must not overlap, since which copy would win is an accident of order.
//! * At most [`MAX_SEGMENTS`] segments, so the result needs no allocation.
//!
//! Segment numbers in errors are indices into the program header table, as `readelf -l`
//! numbers them, so that an operator can find the culprit.

mod elf;
pub mod linux;

use core::fmt;

/// The most loadable segments an image may have.
pub const MAX_SEGMENTS: usize = 16;

/// One loadable segment, validated by [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address of the segment's first byte.
    pub gpa: u64,
    /// Where the segment's initialised bytes start in the file.
    pub file_offset: u64,
    /// How many bytes come from the file.
    pub file_size: u64,
    /// How many bytes the segment occupies in guest RAM; those past `file_size` are zero.
    pub mem_size: u64,
    /// `p_flags` as in the file (`PF_X` = 1, `PF_W` = 2, `PF_R` = 4).
    pub flags: u32,
}

/// An ELF executable accepted by [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// Guest-physical address of the first instruction.
    pub entry: u64,
    /// The loadable segments, in program-header order.
    pub segments: heapless::Vec<Segment, MAX_SEGMENTS>,
}

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than an ELF64 file header.
    TooShort,
    /// No ELF magic number.
    NotElf,
    Not64Bit,
    NotLittleEndian,
    /// `e_type` is not `ET_EXEC` (relocatable, shared object, core...).
    NotExecutable,
    /// `e_machine` is not `EM_X86_64`.
    WrongMachine,
    /// The program header table is malformed: outside the file, entries too small, an
    /// extended count, or a segment with more file bytes than memory bytes.
    BadProgramHeaders,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// The segment's bytes extend past the end of the file.
    SegmentOutsideFile {
        index: usize,
    },
    /// The segment `[gpa, end)` does not fit in guest RAM (`end` saturates at `u64::MAX`).
    SegmentOutsideRam {
        index: usize,
        gpa: u64,
        end: u64,
    },
    /// The segment starts below the lowest address a guest image may use.
    SegmentBelow {
        index: usize,
        gpa: u64,
        min: u64,
    },
    /// Segments `a` and `b` (`a < b`) share guest-physical bytes.
    Overlap {
        a: usize,
        b: usize,
    },
    /// The entry point lies in no loadable segment.
    EntryNotInSegment(u64),
    NoLoadableSegment,
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort => write!(
                f,
                "too short for an ELF file (an ELF64 header is {} bytes)",
                elf::FILE_HEADER_SIZE
            ),
            Self::NotElf => write!(f, "not an ELF file (no \\x7fELF magic number)"),
            Self::Not64Bit => write!(f, "not a 64-bit ELF file (ELFCLASS64 expected)"),
            Self::NotLittleEndian => write!(f, "not a little-endian ELF file"),
            Self::NotExecutable => write!(
                f,
                "not an ELF executable (e_type is not ET_EXEC; PIEs are not supported)"
            ),
            Self::WrongMachine => write!(f, "not an x86-64 ELF file (e_machine is not EM_X86_64)"),
            Self::BadProgramHeaders => write!(f, "malformed ELF program header table"),
            Self::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} loadable ELF segments")
            }
            Self::SegmentOutsideFile { index } => {
                write!(f, "ELF segment {index} extends past the end of the file")
            }
            Self::SegmentOutsideRam { index, gpa, end } => write!(
                f,
                "ELF segment {index} at [{gpa:#x}, {end:#x}) does not fit in the VM's RAM"
            ),
            Self::SegmentBelow { index, gpa, min } => write!(
                f,
                "ELF segment {index} at {gpa:#x} lies below {min:#x}, where guest images start"
            ),
            Self::Overlap { a, b } => write!(f, "ELF segments {a} and {b} overlap"),
            Self::EntryNotInSegment(entry) => {
                write!(
                    f,
                    "ELF entry point {entry:#x} is not inside a loadable segment"
                )
            }
            Self::NoLoadableSegment => write!(f, "no loadable ELF segment"),
        }
    }
}

/// Parses and validates an ELF64 executable for a VM with `ram` bytes of guest RAM whose
/// segments must lie in [min_gpa, ram).
pub fn parse(bytes: &[u8], ram: u64, min_gpa: u64) -> Result<ElfImage, ElfError> {
    if bytes.len() < elf::MAGIC.len() {
        return Err(ElfError::TooShort);
    }
    if !elf::has_magic(bytes) {
        return Err(ElfError::NotElf);
    }
    let header = elf::file_header(bytes).ok_or(ElfError::TooShort)?;
    if header.class != elf::CLASS_64 {
        return Err(ElfError::Not64Bit);
    }
    if header.data != elf::DATA_LITTLE_ENDIAN {
        return Err(ElfError::NotLittleEndian);
    }
    if header.kind != elf::TYPE_EXEC {
        return Err(ElfError::NotExecutable);
    }
    if header.machine != elf::MACHINE_X86_64 {
        return Err(ElfError::WrongMachine);
    }
    if header.phnum == elf::PHNUM_EXTENDED || !elf::program_headers_fit(&header, bytes.len()) {
        return Err(ElfError::BadProgramHeaders);
    }

    let mut segments = heapless::Vec::<Segment, MAX_SEGMENTS>::new();
    // Program-header index of each entry of `segments`, for error messages.
    let mut indices = heapless::Vec::<usize, MAX_SEGMENTS>::new();
    for index in 0..header.phnum {
        let ph = elf::program_header(bytes, &header, index).ok_or(ElfError::BadProgramHeaders)?;
        if ph.kind != elf::SEGMENT_LOAD || ph.memsz == 0 {
            continue;
        }
        let index = usize::from(index);
        if ph.filesz > ph.memsz {
            return Err(ElfError::BadProgramHeaders);
        }
        let file_end = ph.offset.checked_add(ph.filesz);
        if file_end.is_none_or(|end| end > bytes.len() as u64) {
            return Err(ElfError::SegmentOutsideFile { index });
        }
        if ph.paddr < min_gpa {
            return Err(ElfError::SegmentBelow {
                index,
                gpa: ph.paddr,
                min: min_gpa,
            });
        }
        let end = ph.paddr.checked_add(ph.memsz);
        if end.is_none_or(|end| end > ram) {
            return Err(ElfError::SegmentOutsideRam {
                index,
                gpa: ph.paddr,
                end: ph.paddr.saturating_add(ph.memsz),
            });
        }
        let segment = Segment {
            gpa: ph.paddr,
            file_offset: ph.offset,
            file_size: ph.filesz,
            mem_size: ph.memsz,
            flags: ph.flags,
        };
        if let Some(earlier) = segments.iter().position(|s| overlap(s, &segment)) {
            return Err(ElfError::Overlap {
                a: indices[earlier],
                b: index,
            });
        }
        segments
            .push(segment)
            .map_err(|_| ElfError::TooManySegments)?;
        // Cannot fail: `indices` holds exactly one entry per entry of `segments`.
        let _ = indices.push(index);
    }

    if segments.is_empty() {
        return Err(ElfError::NoLoadableSegment);
    }
    if !segments.iter().any(|s| contains(s, header.entry)) {
        return Err(ElfError::EntryNotInSegment(header.entry));
    }
    Ok(ElfImage {
        entry: header.entry,
        segments,
    })
}

/// Copies the segments into guest memory: `guest` is the VM's RAM as a byte slice indexed
/// by guest-physical address; zero-fills mem_size beyond file_size.
///
/// # Panics
/// If `image` was not parsed from these `bytes` with a `ram` no larger than `guest.len()`:
/// that is a bug in the caller, not bad input.
pub fn load(image: &ElfImage, bytes: &[u8], guest: &mut [u8]) {
    for segment in &image.segments {
        let source = range(segment.file_offset, segment.file_size);
        let target = range(segment.gpa, segment.mem_size);
        let (initialised, zeroed) = guest[target].split_at_mut(source.len());
        initialised.copy_from_slice(&bytes[source]);
        zeroed.fill(0);
    }
}

/// `[start, start + len)` as slice indices. Only for values `parse` has checked against a
/// slice, so neither the sum nor the conversion can fail.
fn range(start: u64, len: u64) -> core::ops::Range<usize> {
    let start = usize::try_from(start).expect("checked by parse");
    let len = usize::try_from(len).expect("checked by parse");
    start..start + len
}

/// Whether two segments share a byte. Their ends do not overflow (`parse` checked them
/// against the RAM size).
fn overlap(a: &Segment, b: &Segment) -> bool {
    a.gpa < b.gpa + b.mem_size && b.gpa < a.gpa + a.mem_size
}

fn contains(segment: &Segment, address: u64) -> bool {
    address >= segment.gpa && address - segment.gpa < segment.mem_size
}

#[cfg(test)]
mod tests;
