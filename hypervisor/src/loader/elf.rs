//! The parts of the ELF64 format the loader reads, decoded without trusting the file.
//!
//! A guest image arrives as a GRUB module, that is, as bytes nobody has checked. Nothing
//! here casts the file to a `#[repr(C)]` struct (the module need not be aligned, and a
//! struct view makes it too easy to read past the end); every field is read through a
//! bounds-checked accessor that fails instead of panicking, and every size and offset
//! stays a `u64` until it has been checked against the file. Deciding what is
//! acceptable for a VM is left to the parent module; this one only answers "what does the
//! file say".

/// Size of the ELF64 file header.
pub const FILE_HEADER_SIZE: usize = 64;
/// Size of one ELF64 program header (a table may use larger entries, never smaller).
pub const PROGRAM_HEADER_SIZE: u64 = 56;

pub const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
pub const CLASS_64: u8 = 2;
pub const DATA_LITTLE_ENDIAN: u8 = 1;
pub const TYPE_EXEC: u16 = 2;
pub const MACHINE_X86_64: u16 = 62;
pub const SEGMENT_LOAD: u32 = 1;
/// `e_phnum` value meaning "too many to count here, see section header 0", which a guest
/// image has no business needing.
pub const PHNUM_EXTENDED: u16 = 0xffff;

const IDENT_CLASS: usize = 4;
const IDENT_DATA: usize = 5;

/// The fields of the file header the loader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub class: u8,
    pub data: u8,
    pub kind: u16,
    pub machine: u16,
    pub entry: u64,
    pub phoff: u64,
    pub phentsize: u16,
    pub phnum: u16,
}

/// One program header, as found in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramHeader {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Whether `bytes` starts with the ELF magic number (false if it is shorter than that).
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.get(..MAGIC.len()) == Some(&MAGIC[..])
}

/// Decodes the file header; `None` if `bytes` is shorter than one. Only the identification
/// bytes are meaningful until class and data encoding have been checked to be ELF64
/// little-endian, which is all this decodes.
pub fn file_header(bytes: &[u8]) -> Option<FileHeader> {
    let header = bytes.get(..FILE_HEADER_SIZE)?;
    Some(FileHeader {
        class: header[IDENT_CLASS],
        data: header[IDENT_DATA],
        kind: u16_at(header, 16)?,
        machine: u16_at(header, 18)?,
        entry: u64_at(header, 24)?,
        phoff: u64_at(header, 32)?,
        phentsize: u16_at(header, 54)?,
        phnum: u16_at(header, 56)?,
    })
}

/// Decodes program header `index` of the table described by `header`; `None` if that
/// entry does not lie entirely inside `bytes` or entries are too small to hold one.
pub fn program_header(bytes: &[u8], header: &FileHeader, index: u16) -> Option<ProgramHeader> {
    let entry_size = u64::from(header.phentsize);
    if entry_size < PROGRAM_HEADER_SIZE {
        return None;
    }
    let start = entry_size
        .checked_mul(u64::from(index))?
        .checked_add(header.phoff)?;
    let end = start.checked_add(PROGRAM_HEADER_SIZE)?;
    let entry = bytes.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
    Some(ProgramHeader {
        kind: u32_at(entry, 0)?,
        flags: u32_at(entry, 4)?,
        offset: u64_at(entry, 8)?,
        paddr: u64_at(entry, 24)?,
        filesz: u64_at(entry, 32)?,
        memsz: u64_at(entry, 40)?,
    })
}

/// Whether the whole program header table lies inside a file of `len` bytes.
pub fn program_headers_fit(header: &FileHeader, len: usize) -> bool {
    if header.phnum > 0 && u64::from(header.phentsize) < PROGRAM_HEADER_SIZE {
        return false;
    }
    u64::from(header.phentsize)
        .checked_mul(u64::from(header.phnum))
        .and_then(|size| size.checked_add(header.phoff))
        .is_some_and(|end| end <= len as u64)
}

fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array_at(bytes, offset).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at(bytes, offset).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    array_at(bytes, offset).map(u64::from_le_bytes)
}
