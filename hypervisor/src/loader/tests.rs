//! Unit tests of the ELF loader, on images built byte by byte so that every field,
//! including the malformed ones, is under the test's control.

use super::*;

const MIB: u64 = 1 << 20;
const RAM: u64 = 16 * MIB;
const MIN: u64 = MIB;
const PT_NOTE: u32 = 4;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// One program header to write, with its payload (placed by the builder unless
/// `offset` is given).
#[derive(Clone)]
struct Ph {
    kind: u32,
    flags: u32,
    paddr: u64,
    memsz: u64,
    data: Vec<u8>,
    /// Overrides the file offset the builder would pick.
    offset: Option<u64>,
    /// Overrides `p_filesz` (which is otherwise `data.len()`).
    filesz: Option<u64>,
}

impl Ph {
    fn load(paddr: u64, data: &[u8], memsz: u64) -> Self {
        Self {
            kind: elf::SEGMENT_LOAD,
            flags: PF_R | PF_X,
            paddr,
            memsz,
            data: data.to_vec(),
            offset: None,
            filesz: None,
        }
    }

    fn other(kind: u32) -> Self {
        Self {
            kind,
            flags: PF_R,
            paddr: 0,
            memsz: 0,
            data: Vec::new(),
            offset: None,
            filesz: None,
        }
    }
}

/// An ELF64 executable under construction; every header field can be overridden.
#[derive(Clone)]
struct Builder {
    class: u8,
    data: u8,
    kind: u16,
    machine: u16,
    entry: u64,
    phentsize: u16,
    phoff: Option<u64>,
    phnum: Option<u16>,
    headers: Vec<Ph>,
}

impl Builder {
    /// A valid image: code at 1 MiB, entry at its start.
    fn new() -> Self {
        Self {
            class: elf::CLASS_64,
            data: elf::DATA_LITTLE_ENDIAN,
            kind: elf::TYPE_EXEC,
            machine: elf::MACHINE_X86_64,
            entry: MIN,
            phentsize: elf::PROGRAM_HEADER_SIZE as u16,
            phoff: None,
            phnum: None,
            headers: vec![Ph::load(MIN, b"\xf4\xeb\xfd", 3)],
        }
    }

    fn with(mut self, ph: Ph) -> Self {
        self.headers.push(ph);
        self
    }

    fn headers(mut self, headers: Vec<Ph>) -> Self {
        self.headers = headers;
        self
    }

    fn entry(mut self, entry: u64) -> Self {
        self.entry = entry;
        self
    }

    fn build(&self) -> Vec<u8> {
        let phoff = elf::FILE_HEADER_SIZE as u64;
        // Room for whole entries even when `phentsize` claims they are smaller.
        let stride = u64::from(self.phentsize).max(elf::PROGRAM_HEADER_SIZE);
        let table = stride * self.headers.len() as u64;
        let mut payload_at = phoff + table;
        let mut file = vec![0u8; payload_at as usize];

        file[..4].copy_from_slice(&elf::MAGIC);
        file[4] = self.class;
        file[5] = self.data;
        file[6] = 1; // EI_VERSION
        put(&mut file, 16, &self.kind.to_le_bytes());
        put(&mut file, 18, &self.machine.to_le_bytes());
        put(&mut file, 20, &1u32.to_le_bytes()); // e_version
        put(&mut file, 24, &self.entry.to_le_bytes());
        put(&mut file, 32, &self.phoff.unwrap_or(phoff).to_le_bytes());
        put(&mut file, 52, &(elf::FILE_HEADER_SIZE as u16).to_le_bytes());
        put(&mut file, 54, &self.phentsize.to_le_bytes());
        let phnum = self.phnum.unwrap_or(self.headers.len() as u16);
        put(&mut file, 56, &phnum.to_le_bytes());

        for (i, ph) in self.headers.iter().enumerate() {
            let offset = ph.offset.unwrap_or(payload_at);
            if ph.offset.is_none() {
                file.extend_from_slice(&ph.data);
                payload_at += ph.data.len() as u64;
            }
            let at = (phoff + u64::from(self.phentsize) * i as u64) as usize;
            let filesz = ph.filesz.unwrap_or(ph.data.len() as u64);
            put(&mut file, at, &ph.kind.to_le_bytes());
            put(&mut file, at + 4, &ph.flags.to_le_bytes());
            put(&mut file, at + 8, &offset.to_le_bytes());
            put(&mut file, at + 16, &ph.paddr.to_le_bytes()); // p_vaddr = p_paddr
            put(&mut file, at + 24, &ph.paddr.to_le_bytes());
            put(&mut file, at + 32, &filesz.to_le_bytes());
            put(&mut file, at + 40, &ph.memsz.to_le_bytes());
            put(&mut file, at + 48, &0x1000u64.to_le_bytes());
        }
        file
    }
}

fn put(file: &mut [u8], at: usize, bytes: &[u8]) {
    file[at..at + bytes.len()].copy_from_slice(bytes);
}

fn parse_ok(builder: &Builder) -> ElfImage {
    parse(&builder.build(), RAM, MIN).expect("a valid image")
}

fn parse_err(builder: &Builder) -> ElfError {
    parse(&builder.build(), RAM, MIN).expect_err("an invalid image")
}

/// A realistic image: code, read-only data, data with .bss, and a non-loadable header.
fn three_segments() -> Builder {
    let mut data = Ph::load(MIN + 0x2000, &[7; 16], 0x3000);
    data.flags = PF_R | PF_W;
    let mut rodata = Ph::load(MIN + 0x1000, b"hello", 5);
    rodata.flags = PF_R;
    Builder::new()
        .with(rodata)
        .with(Ph::other(PT_GNU_STACK))
        .with(data)
        .entry(MIN + 1)
}

#[test]
fn parses_a_valid_image() {
    let image = parse_ok(&three_segments());
    assert_eq!(image.entry, MIN + 1);
    assert_eq!(image.segments.len(), 3);
    let file = three_segments().build();
    let code = image.segments[0];
    assert_eq!(code.gpa, MIN);
    assert_eq!((code.file_size, code.mem_size), (3, 3));
    assert_eq!(code.flags, PF_R | PF_X);
    assert_eq!(&file[code.file_offset as usize..][..3], b"\xf4\xeb\xfd");
    let data = image.segments[2];
    assert_eq!(data.gpa, MIN + 0x2000);
    assert_eq!((data.file_size, data.mem_size), (16, 0x3000));
    assert_eq!(data.flags, PF_R | PF_W);
}

#[test]
fn ignores_non_load_headers_and_empty_load_segments() {
    let mut empty = Ph::load(0, b"", 0);
    empty.offset = Some(u64::MAX);
    let image = parse_ok(&Builder::new().with(Ph::other(PT_NOTE)).with(empty));
    assert_eq!(image.segments.len(), 1);
}

#[test]
fn accepts_segments_touching_the_bounds_and_each_other() {
    let low = Ph::load(MIN, b"ab", 0x1000);
    let high = Ph::load(MIN + 0x1000, b"cd", RAM - MIN - 0x1000);
    let image = parse_ok(&Builder::new().headers(vec![low, high]));
    assert_eq!(image.segments.len(), 2);
}

#[test]
fn entry_may_be_anywhere_in_a_segments_memory() {
    let builder = Builder::new()
        .headers(vec![Ph::load(MIN, b"x", 0x100)])
        .entry(MIN + 0xff);
    assert_eq!(parse_ok(&builder).entry, MIN + 0xff);
}

#[test]
fn too_short() {
    assert_eq!(parse(&[], RAM, MIN), Err(ElfError::TooShort));
    assert_eq!(parse(b"\x7fEL", RAM, MIN), Err(ElfError::TooShort));
    let file = Builder::new().build();
    assert_eq!(parse(&file[..63], RAM, MIN), Err(ElfError::TooShort));
}

#[test]
fn not_elf() {
    let mut file = Builder::new().build();
    file[1] = b'e';
    assert_eq!(parse(&file, RAM, MIN), Err(ElfError::NotElf));
    assert_eq!(parse(b"#!/bin/sh", RAM, MIN), Err(ElfError::NotElf));
}

#[test]
fn not_64_bit() {
    let mut builder = Builder::new();
    builder.class = 1;
    assert_eq!(parse_err(&builder), ElfError::Not64Bit);
}

#[test]
fn not_little_endian() {
    let mut builder = Builder::new();
    builder.data = 2;
    assert_eq!(parse_err(&builder), ElfError::NotLittleEndian);
}

#[test]
fn not_executable() {
    for kind in [0, 1, 3, 4] {
        let mut builder = Builder::new();
        builder.kind = kind;
        assert_eq!(
            parse_err(&builder),
            ElfError::NotExecutable,
            "e_type {kind}"
        );
    }
}

#[test]
fn wrong_machine() {
    let mut builder = Builder::new();
    builder.machine = 3; // EM_386
    assert_eq!(parse_err(&builder), ElfError::WrongMachine);
}

#[test]
fn bad_program_headers() {
    let cases: Vec<(&str, Builder)> = vec![
        ("table past the end of the file", {
            let mut b = Builder::new();
            b.phoff = Some(1 << 20);
            b
        }),
        ("table offset overflows", {
            let mut b = Builder::new();
            b.phoff = Some(u64::MAX - 8);
            b
        }),
        ("more entries than the file holds", {
            let mut b = Builder::new();
            b.phnum = Some(2);
            b
        }),
        ("entries too small", {
            let mut b = Builder::new();
            b.phentsize = 32;
            b
        }),
        ("extended entry count", {
            let mut b = Builder::new();
            b.phnum = Some(elf::PHNUM_EXTENDED);
            b
        }),
        ("more file bytes than memory bytes", {
            Builder::new().headers(vec![Ph::load(MIN, b"abcd", 2)])
        }),
    ];
    for (what, builder) in cases {
        assert_eq!(parse_err(&builder), ElfError::BadProgramHeaders, "{what}");
    }
}

#[test]
fn larger_program_header_entries_are_fine() {
    let mut builder = three_segments();
    builder.phentsize = 64;
    assert_eq!(parse_ok(&builder).segments.len(), 3);
}

#[test]
fn too_many_segments() {
    let segments = |n: u64| -> Vec<Ph> {
        (0..n)
            .map(|i| Ph::load(MIN + i * 0x1000, b"s", 0x1000))
            .collect()
    };
    let sixteen = Builder::new().headers(segments(16));
    assert_eq!(parse_ok(&sixteen).segments.len(), MAX_SEGMENTS);
    let seventeen = Builder::new().headers(segments(17));
    assert_eq!(parse_err(&seventeen), ElfError::TooManySegments);
}

#[test]
fn segment_outside_file() {
    let mut past_end = Ph::load(MIN + 0x1000, b"", 0x10_0000);
    past_end.offset = Some(0x40);
    past_end.filesz = Some(0x10_0000);
    let builder = Builder::new().with(Ph::other(PT_NOTE)).with(past_end);
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentOutsideFile { index: 2 }
    );

    let mut overflowing = Ph::load(MIN + 0x1000, b"", 0x10);
    overflowing.offset = Some(u64::MAX);
    overflowing.filesz = Some(2);
    let builder = Builder::new().with(overflowing);
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentOutsideFile { index: 1 }
    );
}

#[test]
fn segment_outside_ram() {
    let builder = Builder::new().with(Ph::load(RAM - 0x10, b"", 0x20));
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentOutsideRam {
            index: 1,
            gpa: RAM - 0x10,
            end: RAM + 0x10
        }
    );

    let builder = Builder::new().with(Ph::load(RAM, b"", 1));
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentOutsideRam {
            index: 1,
            gpa: RAM,
            end: RAM + 1
        }
    );

    let wrapping = Ph::load(u64::MAX - 0xf, b"", 0x20);
    let builder = Builder::new().with(wrapping);
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentOutsideRam {
            index: 1,
            gpa: u64::MAX - 0xf,
            end: u64::MAX
        }
    );
}

#[test]
fn segment_below_the_minimum() {
    let builder = Builder::new().with(Ph::load(MIN - 1, b"", 1));
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentBelow {
            index: 1,
            gpa: MIN - 1,
            min: MIN
        }
    );
    let builder = Builder::new().headers(vec![Ph::load(0, b"x", 1)]).entry(0);
    assert_eq!(
        parse_err(&builder),
        ElfError::SegmentBelow {
            index: 0,
            gpa: 0,
            min: MIN
        }
    );
}

#[test]
fn overlapping_segments() {
    // The code segment occupies [MIN, MIN + 3).
    let cases: [(&str, u64, u64); 4] = [
        ("overlapping its end", MIN + 2, 0x10),
        ("identical", MIN, 3),
        ("contained", MIN + 1, 1),
        ("containing", MIN, 0x1000),
    ];
    for (what, gpa, memsz) in cases {
        let builder = Builder::new()
            .with(Ph::other(PT_NOTE))
            .with(Ph::load(gpa, b"", memsz));
        assert_eq!(
            parse_err(&builder),
            ElfError::Overlap { a: 0, b: 2 },
            "{what}"
        );
    }
    // Overlap with a later segment is reported against the earliest one it meets.
    let builder = Builder::new().headers(vec![
        Ph::load(MIN, b"", 0x100),
        Ph::load(MIN + 0x1000, b"", 0x100),
        Ph::load(MIN + 0x1080, b"", 0x100),
    ]);
    assert_eq!(parse_err(&builder), ElfError::Overlap { a: 1, b: 2 });
    // A later segment overlapping the start of an earlier one.
    let builder = Builder::new()
        .with(Ph::load(MIN + 0x1000, b"", 0x100))
        .with(Ph::load(MIN + 0xf00, b"", 0x101));
    assert_eq!(parse_err(&builder), ElfError::Overlap { a: 1, b: 2 });
}

#[test]
fn entry_not_in_segment() {
    for entry in [0, MIN - 1, MIN + 3, u64::MAX] {
        let builder = Builder::new().entry(entry);
        assert_eq!(
            parse_err(&builder),
            ElfError::EntryNotInSegment(entry),
            "entry {entry:#x}"
        );
    }
}

#[test]
fn no_loadable_segment() {
    let builder = Builder::new().headers(vec![Ph::other(PT_NOTE), Ph::other(PT_GNU_STACK)]);
    assert_eq!(parse_err(&builder), ElfError::NoLoadableSegment);
    let builder = Builder::new().headers(Vec::new());
    assert_eq!(parse_err(&builder), ElfError::NoLoadableSegment);
}

#[test]
fn load_copies_file_bytes_and_zero_fills_the_rest() {
    let file = three_segments().build();
    let image = parse(&file, RAM, MIN).unwrap();
    let mut guest = vec![0xaa_u8; RAM as usize];
    load(&image, &file, &mut guest);

    let at = |gpa: u64, len: usize| &guest[gpa as usize..gpa as usize + len];
    assert_eq!(at(MIN, 3), b"\xf4\xeb\xfd");
    assert_eq!(at(MIN + 0x1000, 5), b"hello");
    assert_eq!(at(MIN + 0x2000, 16), &[7; 16]);
    assert!(at(MIN + 0x2000 + 16, 0x3000 - 16).iter().all(|&b| b == 0));
    // Nothing outside the segments is touched.
    assert!(at(0, MIN as usize).iter().all(|&b| b == 0xaa));
    assert!(at(MIN + 3, 0x1000 - 3).iter().all(|&b| b == 0xaa));
    assert!(at(MIN + 0x1005, 0x1000 - 5).iter().all(|&b| b == 0xaa));
    assert!(guest[(MIN + 0x5000) as usize..].iter().all(|&b| b == 0xaa));
}

#[test]
fn load_of_a_pure_bss_segment() {
    let file = Builder::new()
        .with(Ph::load(MIN + 0x1000, b"", 0x800))
        .build();
    let image = parse(&file, RAM, MIN).unwrap();
    let mut guest = vec![0x55_u8; RAM as usize];
    load(&image, &file, &mut guest);
    let bss = &guest[(MIN + 0x1000) as usize..][..0x800];
    assert!(bss.iter().all(|&b| b == 0));
}

#[test]
fn every_error_has_a_one_line_message() {
    let errors = [
        ElfError::TooShort,
        ElfError::NotElf,
        ElfError::Not64Bit,
        ElfError::NotLittleEndian,
        ElfError::NotExecutable,
        ElfError::WrongMachine,
        ElfError::BadProgramHeaders,
        ElfError::TooManySegments,
        ElfError::SegmentOutsideFile { index: 3 },
        ElfError::SegmentOutsideRam {
            index: 1,
            gpa: 0x100000,
            end: 0x2000000,
        },
        ElfError::SegmentBelow {
            index: 0,
            gpa: 0x1000,
            min: 0x100000,
        },
        ElfError::Overlap { a: 1, b: 2 },
        ElfError::EntryNotInSegment(0xdead),
        ElfError::NoLoadableSegment,
    ];
    let mut seen = std::collections::HashSet::new();
    for error in errors {
        let text = error.to_string();
        assert!(
            !text.is_empty() && !text.contains('\n'),
            "{error:?}: {text:?}"
        );
        assert!(seen.insert(text), "{error:?} shares its message");
    }
    assert_eq!(
        ElfError::SegmentOutsideRam {
            index: 1,
            gpa: 0x100000,
            end: 0x2000000
        }
        .to_string(),
        "ELF segment 1 at [0x100000, 0x2000000) does not fit in the VM's RAM"
    );
}

/// Whatever `parse` accepts, it accepts for good reasons: the guarantees `load` relies on.
fn check_accepted(image: &ElfImage, file: &[u8], ram: u64, min: u64) {
    assert!(!image.segments.is_empty() && image.segments.len() <= MAX_SEGMENTS);
    for (i, s) in image.segments.iter().enumerate() {
        assert!(s.file_size <= s.mem_size && s.mem_size > 0);
        assert!(s.file_offset + s.file_size <= file.len() as u64);
        assert!(s.gpa >= min && s.gpa + s.mem_size <= ram);
        for t in &image.segments[i + 1..] {
            assert!(!overlap(s, t));
        }
    }
    assert!(image.segments.iter().any(|s| contains(s, image.entry)));
}

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn corrupted_images_never_panic() {
    const RAM_SMALL: u64 = 2 * MIB;
    let original = three_segments().build();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut guest = vec![0u8; RAM_SMALL as usize];
    let mut accepted = 0;
    for _ in 0..20_000 {
        let mut file = original.clone();
        // Mostly header bytes, where the interesting fields are, sometimes anywhere.
        for _ in 0..1 + rng.below(4) {
            let span = if rng.below(4) == 0 {
                file.len()
            } else {
                elf::FILE_HEADER_SIZE + 4 * elf::PROGRAM_HEADER_SIZE as usize
            };
            let at = rng.below(span.min(file.len()));
            file[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                2 => file[at] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
        }
        if rng.below(8) == 0 {
            file.truncate(rng.below(file.len() + 1));
        }
        if let Ok(image) = parse(&file, RAM_SMALL, MIN) {
            check_accepted(&image, &file, RAM_SMALL, MIN);
            load(&image, &file, &mut guest);
            accepted += 1;
        }
    }
    // The corruption must not be so heavy that the accepting paths go untested.
    assert!(accepted > 100, "only {accepted} corrupted images parsed");
}

#[test]
fn every_truncation_is_refused_cleanly() {
    let file = three_segments().build();
    for len in 0..file.len() {
        assert!(parse(&file[..len], RAM, MIN).is_err(), "length {len}");
    }
    assert!(parse(&file, RAM, MIN).is_ok());
}

#[test]
fn extreme_ram_and_minimum() {
    let file = Builder::new().build();
    assert!(parse(&file, u64::MAX, 0).is_ok());
    assert_eq!(
        parse(&file, 0, 0),
        Err(ElfError::SegmentOutsideRam {
            index: 0,
            gpa: MIN,
            end: MIN + 3
        })
    );
    assert_eq!(
        parse(&file, RAM, u64::MAX),
        Err(ElfError::SegmentBelow {
            index: 0,
            gpa: MIN,
            min: u64::MAX
        })
    );
}
