use super::*;

/// Where the crafted MBIs pretend to lie.
const PHYS: u64 = 0x0001_0000;

const CMDLINE: u32 = 1;
const BOOTLOADER_NAME: u32 = 2;
const BASIC_MEMINFO: u32 = 4;
const APM: u32 = 10;
const LOAD_BASE_ADDR: u32 = 21;

const AVAILABLE: u32 = 1;
const RESERVED: u32 = 2;
const ACPI_RECLAIMABLE: u32 = 3;
const ACPI_NVS: u32 = 4;
const DEFECTIVE: u32 = 5;

const EFI_LOADER_CODE: u32 = 1;
const EFI_BOOT_SERVICES_DATA: u32 = 4;
const EFI_RUNTIME_SERVICES_DATA: u32 = 6;
const EFI_CONVENTIONAL: u32 = 7;
const EFI_ACPI_RECLAIM: u32 = 9;

#[repr(C, align(8))]
struct Aligned([u8; 8192]);

/// Builds an MBI tag by tag, padding each to 8 bytes as the specification requires.
struct Mbi {
    buf: Box<Aligned>,
    len: usize,
}

impl Mbi {
    fn new() -> Self {
        Self {
            buf: Box::new(Aligned([0; 8192])),
            len: HEADER_LEN,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.0[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        self
    }

    fn pad(&mut self) -> &mut Self {
        self.len = self.len.next_multiple_of(8);
        self
    }

    /// A tag whose size field says `size`, whatever the body's real length.
    fn tag_sized(&mut self, typ: u32, size: u32, body: &[u8]) -> &mut Self {
        self.put(&typ.to_le_bytes())
            .put(&size.to_le_bytes())
            .put(body)
            .pad()
    }

    fn tag(&mut self, typ: u32, body: &[u8]) -> &mut Self {
        self.tag_sized(typ, (TAG_HEADER_LEN + body.len()) as u32, body)
    }

    fn string_tag(&mut self, typ: u32, text: &[u8]) -> &mut Self {
        let body = [text, &[0]].concat();
        self.tag(typ, &body)
    }

    fn cmdline(&mut self, text: &str) -> &mut Self {
        self.string_tag(CMDLINE, text.as_bytes())
    }

    fn bootloader(&mut self, name: &str) -> &mut Self {
        self.string_tag(BOOTLOADER_NAME, name.as_bytes())
    }

    fn module_raw(&mut self, start: u32, end: u32, text: &[u8]) -> &mut Self {
        let body = [&start.to_le_bytes()[..], &end.to_le_bytes(), text, &[0]].concat();
        self.tag(tag::MODULE, &body)
    }

    fn module(&mut self, start: u32, end: u32, text: &str) -> &mut Self {
        self.module_raw(start, end, text.as_bytes())
    }

    fn mmap(&mut self, entries: &[(u64, u64, u32)]) -> &mut Self {
        let mut body = Vec::new();
        body.extend_from_slice(&MMAP_ENTRY_LEN.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        for &(base, len, typ) in entries {
            body.extend_from_slice(&base.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(&typ.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
        }
        self.tag(tag::MEMORY_MAP, &body)
    }

    /// The basic map every well-formed MBI here needs: 639K low, 127M high.
    fn simple_mmap(&mut self) -> &mut Self {
        self.mmap(&[(0, 0x9fc00, AVAILABLE), (0x10_0000, 0x7f0_0000, AVAILABLE)])
    }

    /// EFI descriptors `(type, physical start, pages)`, each `desc_size` bytes long.
    fn efi_mmap(&mut self, desc_size: u32, descs: &[(u32, u64, u64)]) -> &mut Self {
        let mut body = Vec::new();
        body.extend_from_slice(&desc_size.to_le_bytes());
        body.extend_from_slice(&EFI_DESCRIPTOR_VERSION.to_le_bytes());
        for &(typ, phys, pages) in descs {
            let mut desc = vec![0u8; desc_size as usize];
            desc[0..4].copy_from_slice(&typ.to_le_bytes());
            desc[8..16].copy_from_slice(&phys.to_le_bytes());
            desc[24..32].copy_from_slice(&pages.to_le_bytes());
            body.extend_from_slice(&desc);
        }
        self.tag(tag::EFI_MEMORY_MAP, &body)
    }

    fn end(&mut self) -> &mut Self {
        self.tag(tag::END, &[])
    }

    fn set_total_size(&mut self, total_size: u32) -> &mut Self {
        self.buf.0[..4].copy_from_slice(&total_size.to_le_bytes());
        self
    }

    /// The first `len` bytes of the buffer, whatever the header says.
    fn bytes(&self, len: usize) -> &[u8] {
        &self.buf.0[..len]
    }

    /// The MBI with its total size set to what was built.
    fn finish(&mut self) -> &[u8] {
        let len = self.len;
        self.set_total_size(len as u32);
        self.bytes(len)
    }

    fn parse(&mut self) -> Result<BootInfo, BootInfoError> {
        parse(self.finish(), PHYS)
    }
}

/// An RSDP with valid checksums: ACPI 1.0 style without `xsdt`, ACPI 2.0+ style with.
fn rsdp_bytes(revision: u8, rsdt: u32, xsdt: Option<u64>) -> Vec<u8> {
    let mut rsdp = Vec::new();
    rsdp.extend_from_slice(b"RSD PTR ");
    rsdp.push(0);
    rsdp.extend_from_slice(b"LAZRUS");
    rsdp.push(revision);
    rsdp.extend_from_slice(&rsdt.to_le_bytes());
    rsdp[8] = 0u8.wrapping_sub(checksum(&rsdp));
    if let Some(xsdt) = xsdt {
        rsdp.extend_from_slice(&(RSDP_V2_LEN as u32).to_le_bytes());
        rsdp.extend_from_slice(&xsdt.to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        rsdp[32] = 0u8.wrapping_sub(checksum(&rsdp));
    }
    rsdp
}

fn region(base: u64, len: u64, kind: RegionKind) -> MemoryRegion {
    MemoryRegion { base, len, kind }
}

fn module(start: u64, end: u64, text: &str) -> Module {
    Module {
        start,
        end,
        string: heapless::String::try_from(text).unwrap(),
    }
}

#[test]
fn grub_on_bios() {
    let mut mbi = Mbi::new();
    mbi.cmdline("/boot/lazarus.elf log=debug heap=8M")
        .bootloader("GRUB 2.12-1ubuntu7")
        .tag(BASIC_MEMINFO, &[0x7f, 0x02, 0, 0, 0x00, 0xfc, 0x01, 0])
        .module(0x0020_0000, 0x0021_2345, "/boot/recovery.elf")
        .module(0x0030_0000, 0x0030_1000, "/boot/guest.bin console=ttyS0")
        .tag(APM, &[0; 20])
        // Unsorted, with every type, as some firmware reports it.
        .mmap(&[
            (0x10_0000, 0x7ee_0000, AVAILABLE),
            (0, 0x9_fc00, AVAILABLE),
            (0x9_fc00, 0x400, RESERVED),
            (0xf_0000, 0x1_0000, RESERVED),
            (0x7fe_0000, 0x1_0000, ACPI_RECLAIMABLE),
            (0x7ff_0000, 0x1_0000, ACPI_NVS),
            (0x1_0000_0000, 0x1000, DEFECTIVE),
            (0xfffc_0000, 0x4_0000, 20),
        ])
        .tag(tag::ACPI_OLD, &rsdp_bytes(0, 0x07fe_1000, None))
        .tag(LOAD_BASE_ADDR, &[0, 0, 0x20, 0])
        .end();
    let len = mbi.len as u64;
    let info = mbi.parse().unwrap();

    assert_eq!(info.mbi, (PHYS, PHYS + len));
    assert_eq!(info.cmdline, "/boot/lazarus.elf log=debug heap=8M");
    assert_eq!(info.bootloader, "GRUB 2.12-1ubuntu7");
    assert_eq!(
        info.regions,
        [
            region(0, 0x9_fc00, RegionKind::Usable),
            region(0x9_fc00, 0x400, RegionKind::Reserved),
            region(0xf_0000, 0x1_0000, RegionKind::Reserved),
            region(0x10_0000, 0x7ee_0000, RegionKind::Usable),
            region(0x7fe_0000, 0x1_0000, RegionKind::AcpiReclaimable),
            region(0x7ff_0000, 0x1_0000, RegionKind::AcpiNvs),
            region(0xfffc_0000, 0x4_0000, RegionKind::Reserved),
            region(0x1_0000_0000, 0x1000, RegionKind::Defective),
        ]
    );
    assert_eq!(info.usable_bytes(), 0x9_fc00 + 0x7ee_0000);
    assert_eq!(
        info.modules,
        [
            module(0x20_0000, 0x21_2345, "/boot/recovery.elf"),
            module(0x30_0000, 0x30_1000, "/boot/guest.bin console=ttyS0"),
        ]
    );
    assert_eq!(
        info.rsdp,
        Some(Rsdp {
            revision: 0,
            rsdt: 0x07fe_1000,
            xsdt: None
        })
    );
    assert_eq!(info.efi_memory_map, None);
    assert!(!info.efi_boot_services_not_exited);
}

/// The tags GRUB passes on UEFI, with the 48-byte descriptors real firmware uses.
fn efi_mbi(boot_services_running: bool) -> Mbi {
    let mut mbi = Mbi::new();
    mbi.cmdline("log=info")
        .bootloader("GRUB 2.12")
        .simple_mmap()
        .tag(tag::ACPI_OLD, &rsdp_bytes(2, 0x7fb7_e014, None))
        .tag(
            tag::ACPI_NEW,
            &rsdp_bytes(2, 0x7fb7_e014, Some(0x7fb7_e0e8)),
        )
        .efi_mmap(
            48,
            &[
                (EFI_BOOT_SERVICES_DATA, 0, 1),
                (EFI_CONVENTIONAL, 0x1000, 0x9f),
                (EFI_LOADER_CODE, 0x10_0000, 0x100),
                (EFI_CONVENTIONAL, 0x20_0000, 0x7e00),
                (EFI_ACPI_RECLAIM, 0x7fb7_e000, 4),
                (EFI_RUNTIME_SERVICES_DATA, 0x7fbf_0000, 0x10),
            ],
        );
    if boot_services_running {
        mbi.tag(tag::EFI_BOOT_SERVICES, &[]);
    }
    mbi.end();
    mbi
}

#[test]
fn grub_on_efi() {
    let info = efi_mbi(false).parse().unwrap();
    assert_eq!(info.cmdline, "log=info");
    assert_eq!(info.bootloader, "GRUB 2.12");
    assert_eq!(info.regions.len(), 2);
    assert!(info.modules.is_empty());
    // The ACPI 2.0 tag wins over the ACPI 1.0 one that GRUB passes as well.
    assert_eq!(
        info.rsdp,
        Some(Rsdp {
            revision: 2,
            rsdt: 0x7fb7_e014,
            xsdt: Some(0x7fb7_e0e8)
        })
    );
    assert_eq!(
        info.efi_memory_map,
        Some(EfiMemoryMap {
            descriptors: 6,
            usable_bytes: (0x9f + 0x7e00) * 4096,
        })
    );
    assert!(!info.efi_boot_services_not_exited);
}

#[test]
fn efi_map_is_reported_while_boot_services_run() {
    // The crate's own accessor would hide the map in this case.
    let info = efi_mbi(true).parse().unwrap();
    assert!(info.efi_boot_services_not_exited);
    assert_eq!(info.efi_memory_map.unwrap().descriptors, 6);
}

#[test]
fn efi_map_with_spec_sized_descriptors() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap()
        .efi_mmap(
            40,
            &[(EFI_CONVENTIONAL, 0, 2), (EFI_CONVENTIONAL, 0x2000, 3)],
        )
        .end();
    assert_eq!(
        mbi.parse().unwrap().efi_memory_map,
        Some(EfiMemoryMap {
            descriptors: 2,
            usable_bytes: 5 * 4096
        })
    );
}

#[test]
fn minimal() {
    let mut mbi = Mbi::new();
    mbi.mmap(&[]).end();
    let info = mbi.parse().unwrap();
    assert_eq!(info.mbi, (PHYS, PHYS + 32));
    assert!(info.cmdline.is_empty());
    assert!(info.bootloader.is_empty());
    assert!(info.regions.is_empty());
    assert!(info.modules.is_empty());
    assert_eq!(info.rsdp, None);
    assert_eq!(info.usable_bytes(), 0);
}

#[test]
fn empty_strings() {
    let mut mbi = Mbi::new();
    mbi.cmdline("")
        .bootloader("")
        .module(0x1000, 0x1000, "")
        .simple_mmap()
        .end();
    let info = mbi.parse().unwrap();
    assert!(info.cmdline.is_empty());
    assert_eq!(info.modules, [module(0x1000, 0x1000, "")]);
}

#[test]
fn bytes_after_total_size_are_ignored() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap().end();
    let len = mbi.len;
    mbi.finish();
    mbi.put(&[0xff; 64]);
    let info = parse(mbi.bytes(len + 64), PHYS).unwrap();
    assert_eq!(info.mbi, (PHYS, PHYS + len as u64));
}

#[test]
fn overlapping_regions_are_kept_and_counted_once() {
    let mut mbi = Mbi::new();
    mbi.mmap(&[
        (0x2000, 0x3000, AVAILABLE),
        (0x1000, 0x2000, AVAILABLE),
        (0x1000, 0x1000, RESERVED),
        (0x8000, 0x1000, AVAILABLE),
        (0x8000, 0x800, AVAILABLE),
        (0x4000, 0x0, AVAILABLE),
    ])
    .end();
    let info = mbi.parse().unwrap();
    assert_eq!(
        info.regions,
        [
            // Equal bases keep the bootloader's order.
            region(0x1000, 0x2000, RegionKind::Usable),
            region(0x1000, 0x1000, RegionKind::Reserved),
            region(0x2000, 0x3000, RegionKind::Usable),
            region(0x4000, 0, RegionKind::Usable),
            region(0x8000, 0x1000, RegionKind::Usable),
            region(0x8000, 0x800, RegionKind::Usable),
        ]
    );
    // 0x1000..0x5000 and 0x8000..0x9000.
    assert_eq!(info.usable_bytes(), 0x5000);
}

#[test]
fn region_ending_just_below_the_top_of_the_address_space() {
    // The end of a region must be representable, so the last byte itself is out of reach.
    let mut mbi = Mbi::new();
    mbi.mmap(&[(u64::MAX - 0xfff, 0xfff, AVAILABLE)]).end();
    let info = mbi.parse().unwrap();
    assert_eq!(info.regions[0].end(), u64::MAX);
    assert_eq!(info.usable_bytes(), 0xfff);
}

#[test]
fn capacities_are_usable_to_the_last_entry() {
    let entries: Vec<_> = (0..MAX_REGIONS as u64)
        .map(|i| (i * 0x1000, 0x1000, AVAILABLE))
        .collect();
    let mut mbi = Mbi::new();
    mbi.mmap(&entries);
    for i in 0..MAX_MODULES as u32 {
        mbi.module(i * 0x1000, i * 0x1000 + 1, "m");
    }
    mbi.cmdline(&"x".repeat(MAX_CMDLINE)).end();
    let info = mbi.parse().unwrap();
    assert_eq!(info.regions.len(), MAX_REGIONS);
    assert_eq!(info.modules.len(), MAX_MODULES);
    assert_eq!(info.cmdline.len(), MAX_CMDLINE);
}

#[test]
fn long_bootloader_name_is_shortened_at_a_char_boundary() {
    // 63 ASCII bytes and a 2-byte character that would straddle the capacity.
    let name = format!("{}é and more", "x".repeat(63));
    let mut mbi = Mbi::new();
    mbi.bootloader(&name).simple_mmap().end();
    let info = mbi.parse().unwrap();
    assert_eq!(info.bootloader.as_str(), "x".repeat(63));
}

// ---------------------------------------------------------------------------------------
// Malformed boot information

/// Random corruption must come back as an error (or a parse), never as a panic inside
/// the `multiboot2` crate or here.
#[test]
fn corrupted_mbis_never_panic() {
    let mut good = Mbi::new();
    good.cmdline("log=debug")
        .bootloader("GRUB")
        .module(0x20_0000, 0x21_0000, "/boot/recovery.elf")
        .simple_mmap()
        .tag(tag::ACPI_OLD, &rsdp_bytes(0, 0x1000, None))
        .tag(tag::ACPI_NEW, &rsdp_bytes(2, 0x1000, Some(0x2000)))
        .efi_mmap(
            48,
            &[(EFI_CONVENTIONAL, 0, 1), (EFI_LOADER_CODE, 0x1000, 1)],
        )
        .tag(tag::EFI_BOOT_SERVICES, &[])
        .end();
    let good = good.finish().to_vec();
    assert!(parse(&good, PHYS).is_ok());
    let (mut parsed, mut refused) = (0, 0);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut buf = Box::new(Aligned([0; 8192]));
    for _ in 0..20_000 {
        buf.0[..good.len()].copy_from_slice(&good);
        for _ in 0..1 + random() % 4 {
            let at = (random() % good.len() as u64) as usize;
            buf.0[at] = random() as u8;
        }
        let len = good.len() - (random() % 3 * 8) as usize;
        match parse(&buf.0[..len], PHYS) {
            Ok(_) => parsed += 1,
            Err(_) => refused += 1,
        }
    }
    // Both outcomes must have been exercised for the test to mean anything.
    assert!(
        parsed > 1000 && refused > 1000,
        "{parsed} parsed, {refused} refused"
    );
}

#[test]
fn buffer_shorter_than_header() {
    let buf = Aligned([0; 8192]);
    for len in [0, 1, 4, 7] {
        assert_eq!(
            parse(&buf.0[..len], PHYS),
            Err(BootInfoError::TooShort { len })
        );
    }
}

#[test]
fn total_size_beyond_buffer() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap().end();
    let len = mbi.len;
    mbi.set_total_size(len as u32 + 8);
    assert_eq!(
        parse(mbi.bytes(len), PHYS),
        Err(BootInfoError::TotalSizeExceedsBuffer {
            total_size: len as u32 + 8,
            len
        })
    );
    // Only the header is there.
    assert_eq!(
        parse(mbi.bytes(8), PHYS),
        Err(BootInfoError::TotalSizeExceedsBuffer {
            total_size: len as u32 + 8,
            len: 8
        })
    );
    mbi.set_total_size(u32::MAX);
    assert!(matches!(
        parse(mbi.bytes(len), PHYS),
        Err(BootInfoError::TotalSizeExceedsBuffer { .. })
    ));
}

#[test]
fn total_size_too_small() {
    let mut mbi = Mbi::new();
    mbi.end();
    for total_size in [0, 8, 15] {
        mbi.set_total_size(total_size);
        assert_eq!(
            parse(mbi.bytes(16), PHYS),
            Err(BootInfoError::TotalSizeTooSmall { total_size })
        );
    }
    // Header and end tag alone are fine (apart from lacking a memory map).
    assert_eq!(mbi.parse(), Err(BootInfoError::NoMemoryMap));
}

#[test]
fn total_size_not_multiple_of_8() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap().end();
    let len = mbi.len;
    mbi.set_total_size(len as u32 - 4);
    assert_eq!(
        parse(mbi.bytes(len), PHYS),
        Err(BootInfoError::TotalSizeUnaligned {
            total_size: len as u32 - 4
        })
    );
}

#[test]
fn misaligned_buffer() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap().end();
    let good = mbi.finish().to_vec();
    for shift in [1, 4] {
        let mut buf = Box::new(Aligned([0; 8192]));
        buf.0[shift..shift + good.len()].copy_from_slice(&good);
        let bytes = &buf.0[shift..shift + good.len()];
        assert_eq!(
            parse(bytes, PHYS),
            Err(BootInfoError::Misaligned {
                addr: bytes.as_ptr() as usize
            })
        );
    }
}

#[test]
fn tag_overrunning_total_size() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap();
    let offset = mbi.len;
    mbi.tag_sized(CMDLINE, 64, b"short\0");
    let total_size = mbi.len as u32;
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::TagOverrun {
            offset,
            typ: CMDLINE,
            size: 64,
            total_size
        })
    );

    // Overrunning only with its padding.
    let mut mbi = Mbi::new();
    mbi.simple_mmap();
    let offset = mbi.len;
    mbi.tag_sized(CMDLINE, 9, b"");
    let total_size = mbi.len as u32;
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::TagOverrun {
            offset,
            typ: CMDLINE,
            size: 9,
            total_size
        })
    );

    // A size that would overflow 32-bit arithmetic.
    let mut mbi = Mbi::new();
    mbi.tag_sized(APM, u32::MAX, &[0; 8]).end();
    assert!(matches!(
        mbi.parse(),
        Err(BootInfoError::TagOverrun {
            offset: 8,
            size: u32::MAX,
            ..
        })
    ));
}

#[test]
fn tag_smaller_than_its_header_or_fixed_part() {
    for (typ, size, min) in [
        (APM, 0, 8),
        (CMDLINE, 4, 8),
        (tag::END, 0, 8),
        (tag::MODULE, 12, 16),
        (tag::MEMORY_MAP, 8, 16),
        (tag::EFI_MEMORY_MAP, 12, 16),
        (tag::ACPI_OLD, 20, 28),
        (tag::ACPI_NEW, 28, 44),
    ] {
        let mut mbi = Mbi::new();
        mbi.tag_sized(typ, size, &[0; 48]).simple_mmap().end();
        assert_eq!(
            mbi.parse(),
            Err(BootInfoError::TagTooShort {
                offset: 8,
                typ,
                size,
                min
            }),
            "type {typ}"
        );
    }
}

#[test]
fn missing_end_tag() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap().cmdline("log=debug");
    assert_eq!(mbi.parse(), Err(BootInfoError::MissingEndTag));
}

#[test]
fn end_tag_not_last() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap();
    let offset = mbi.len;
    mbi.end().cmdline("log=debug").end();
    let total_size = mbi.len as u32;
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::EndTagNotLast { offset, total_size })
    );

    // Zero padding after the end tag is not allowed either.
    let mut mbi = Mbi::new();
    mbi.simple_mmap().end().put(&[0; 8]);
    assert!(matches!(
        mbi.parse(),
        Err(BootInfoError::EndTagNotLast { .. })
    ));
}

#[test]
fn end_tag_of_wrong_size() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap();
    let offset = mbi.len;
    mbi.tag(tag::END, &[0; 8]);
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::MalformedTag {
            offset,
            typ: tag::END,
            reason: "end tag is not 8 bytes"
        })
    );
}

#[test]
fn no_memory_map() {
    let mut mbi = Mbi::new();
    mbi.cmdline("log=debug")
        .module(0x1000, 0x2000, "m")
        .efi_mmap(48, &[(EFI_CONVENTIONAL, 0, 1)])
        .end();
    assert_eq!(mbi.parse(), Err(BootInfoError::NoMemoryMap));
}

#[test]
fn too_many_regions() {
    let entries: Vec<_> = (0..=MAX_REGIONS as u64)
        .map(|i| (i * 0x1000, 0x1000, AVAILABLE))
        .collect();
    let mut mbi = Mbi::new();
    mbi.mmap(&entries).end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::TooManyRegions {
            count: MAX_REGIONS + 1
        })
    );
}

#[test]
fn too_many_modules() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap();
    for i in 0..MAX_MODULES as u32 + 2 {
        mbi.module(i * 0x1000, i * 0x1000 + 0x800, "m");
    }
    mbi.end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::TooManyModules {
            count: MAX_MODULES + 2
        })
    );
}

#[test]
fn module_ending_before_it_starts() {
    let mut mbi = Mbi::new();
    mbi.simple_mmap()
        .module(0x1000, 0x2000, "fine")
        .module(0x5000, 0x4fff, "backwards")
        .end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::ModuleEndBeforeStart {
            index: 1,
            start: 0x5000,
            end: 0x4fff
        })
    );
}

#[test]
fn strings_that_are_not_utf8() {
    let mut mbi = Mbi::new();
    mbi.string_tag(CMDLINE, b"log=\xffdebug")
        .simple_mmap()
        .end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringNotUtf8(StringField::Cmdline))
    );

    let mut mbi = Mbi::new();
    mbi.simple_mmap()
        .module(0x1000, 0x2000, "ok")
        .module_raw(0x2000, 0x3000, b"/boot/\xc3(.bin")
        .end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringNotUtf8(StringField::Module(1)))
    );

    let mut mbi = Mbi::new();
    mbi.string_tag(BOOTLOADER_NAME, b"\x80").simple_mmap().end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringNotUtf8(StringField::BootloaderName))
    );
}

#[test]
fn strings_without_nul() {
    let mut mbi = Mbi::new();
    mbi.tag(CMDLINE, b"log=debug").simple_mmap().end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringNotTerminated(StringField::Cmdline))
    );

    let mut mbi = Mbi::new();
    let body = [&0x1000u32.to_le_bytes()[..], &0x2000u32.to_le_bytes()].concat();
    mbi.simple_mmap().tag(tag::MODULE, &body).end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringNotTerminated(StringField::Module(0)))
    );
}

#[test]
fn strings_too_long() {
    let long = "y".repeat(MAX_CMDLINE + 1);
    let mut mbi = Mbi::new();
    mbi.cmdline(&long).simple_mmap().end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringTooLong {
            field: StringField::Cmdline,
            len: MAX_CMDLINE + 1,
            capacity: MAX_CMDLINE
        })
    );

    let mut mbi = Mbi::new();
    mbi.simple_mmap()
        .module(0x1000, 0x2000, &long[..MAX_MODULE_STRING + 5])
        .end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::StringTooLong {
            field: StringField::Module(0),
            len: MAX_MODULE_STRING + 5,
            capacity: MAX_MODULE_STRING
        })
    );
}

#[test]
fn memory_map_with_foreign_entry_size() {
    let mut mbi = Mbi::new();
    let mut body = Vec::new();
    body.extend_from_slice(&32u32.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&[0; 32]);
    mbi.tag(tag::MEMORY_MAP, &body).end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::MalformedTag {
            offset: 8,
            typ: tag::MEMORY_MAP,
            reason: "memory map entries are not 24 bytes"
        })
    );
}

#[test]
fn memory_map_with_partial_entry() {
    let mut mbi = Mbi::new();
    let mut body = Vec::new();
    body.extend_from_slice(&MMAP_ENTRY_LEN.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(&[0; 24 + 16]);
    mbi.tag(tag::MEMORY_MAP, &body).end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::MalformedTag {
            offset: 8,
            typ: tag::MEMORY_MAP,
            reason: "memory map is not a whole number of entries"
        })
    );
}

#[test]
fn region_wrapping_around() {
    let mut mbi = Mbi::new();
    mbi.mmap(&[(0, 0x1000, AVAILABLE), (u64::MAX - 0xfff, 0x1001, RESERVED)])
        .end();
    assert_eq!(
        mbi.parse(),
        Err(BootInfoError::RegionWraps {
            base: u64::MAX - 0xfff,
            len: 0x1001
        })
    );
}

#[test]
fn malformed_efi_memory_maps() {
    for (desc_size, version, extra, reason) in [
        (
            32,
            1,
            0,
            "EFI descriptor size is below 40 or not a multiple of 8",
        ),
        (
            44,
            1,
            0,
            "EFI descriptor size is below 40 or not a multiple of 8",
        ),
        (
            0,
            1,
            0,
            "EFI descriptor size is below 40 or not a multiple of 8",
        ),
        (48, 2, 0, "EFI descriptor version is not 1"),
        (
            48,
            1,
            8,
            "EFI memory map is not a whole number of descriptors",
        ),
    ] {
        let mut body = Vec::new();
        body.extend_from_slice(&(desc_size as u32).to_le_bytes());
        body.extend_from_slice(&(version as u32).to_le_bytes());
        body.extend_from_slice(&vec![0; 2 * 48 + extra]);
        let mut mbi = Mbi::new();
        mbi.tag(tag::EFI_MEMORY_MAP, &body).simple_mmap().end();
        assert_eq!(
            mbi.parse(),
            Err(BootInfoError::MalformedTag {
                offset: 8,
                typ: tag::EFI_MEMORY_MAP,
                reason
            }),
            "desc_size {desc_size}, version {version}"
        );
    }
}

fn rsdp_error(typ: u32, rsdp: &[u8]) -> BootInfoError {
    let mut mbi = Mbi::new();
    mbi.simple_mmap().tag(typ, rsdp).end();
    mbi.parse().unwrap_err()
}

#[test]
fn broken_rsdps() {
    let bad = |typ, reason| BootInfoError::BadRsdp { typ, reason };

    let mut rsdp = rsdp_bytes(0, 0x1000, None);
    rsdp[0] = b'X';
    assert_eq!(
        rsdp_error(tag::ACPI_OLD, &rsdp),
        bad(tag::ACPI_OLD, "signature is not 'RSD PTR '")
    );

    let mut rsdp = rsdp_bytes(0, 0x1000, None);
    rsdp[16] ^= 1;
    assert_eq!(
        rsdp_error(tag::ACPI_OLD, &rsdp),
        bad(
            tag::ACPI_OLD,
            "checksum over the first 20 bytes does not add up to 0"
        )
    );

    let mut rsdp = rsdp_bytes(2, 0x1000, Some(0x2000));
    rsdp[24] ^= 1;
    assert_eq!(
        rsdp_error(tag::ACPI_NEW, &rsdp),
        bad(tag::ACPI_NEW, "extended checksum does not add up to 0")
    );

    let mut rsdp = rsdp_bytes(2, 0x1000, Some(0x2000));
    rsdp[8] ^= 1;
    assert_eq!(
        rsdp_error(tag::ACPI_NEW, &rsdp),
        bad(
            tag::ACPI_NEW,
            "checksum over the first 20 bytes does not add up to 0"
        )
    );

    for length in [20u32, 35, 37, 0xffff_ffff] {
        let mut rsdp = rsdp_bytes(2, 0x1000, Some(0x2000));
        rsdp[20..24].copy_from_slice(&length.to_le_bytes());
        assert_eq!(
            rsdp_error(tag::ACPI_NEW, &rsdp),
            bad(tag::ACPI_NEW, "length field is below 36 or beyond the tag"),
            "length {length}"
        );
    }

    // A broken old RSDP is refused even when a good new one is present.
    let mut old = rsdp_bytes(2, 0x1000, None);
    old[9] ^= 1;
    let mut mbi = Mbi::new();
    mbi.simple_mmap()
        .tag(tag::ACPI_NEW, &rsdp_bytes(2, 0x1000, Some(0x2000)))
        .tag(tag::ACPI_OLD, &old)
        .end();
    assert!(matches!(
        mbi.parse(),
        Err(BootInfoError::BadRsdp {
            typ: tag::ACPI_OLD,
            ..
        })
    ));
}

#[test]
fn rsdp_variants() {
    // A longer RSDP than ACPI 2.0 defines, whose length covers the extra bytes.
    let mut rsdp = rsdp_bytes(3, 0x1000, Some(0x2000));
    rsdp.extend_from_slice(&[7, 0, 0, 0]);
    rsdp[20..24].copy_from_slice(&40u32.to_le_bytes());
    rsdp[32] = 0;
    rsdp[32] = 0u8.wrapping_sub(checksum(&rsdp));
    let mut mbi = Mbi::new();
    mbi.simple_mmap().tag(tag::ACPI_NEW, &rsdp).end();
    assert_eq!(
        mbi.parse().unwrap().rsdp,
        Some(Rsdp {
            revision: 3,
            rsdt: 0x1000,
            xsdt: Some(0x2000)
        })
    );

    // An XSDT address of 0 means there is none.
    let mut mbi = Mbi::new();
    mbi.simple_mmap()
        .tag(tag::ACPI_NEW, &rsdp_bytes(2, 0x1000, Some(0)))
        .end();
    assert_eq!(mbi.parse().unwrap().rsdp.unwrap().xsdt, None);
}

#[test]
fn error_messages_are_single_lines() {
    let errors = [
        BootInfoError::TooShort { len: 4 },
        BootInfoError::Misaligned { addr: 0x1004 },
        BootInfoError::TotalSizeExceedsBuffer {
            total_size: 64,
            len: 32,
        },
        BootInfoError::TotalSizeTooSmall { total_size: 8 },
        BootInfoError::TotalSizeUnaligned { total_size: 20 },
        BootInfoError::TagTooShort {
            offset: 8,
            typ: 3,
            size: 12,
            min: 16,
        },
        BootInfoError::TagOverrun {
            offset: 8,
            typ: 1,
            size: 64,
            total_size: 32,
        },
        BootInfoError::EndTagNotLast {
            offset: 16,
            total_size: 40,
        },
        BootInfoError::MissingEndTag,
        BootInfoError::MalformedTag {
            offset: 8,
            typ: 6,
            reason: "memory map entries are not 24 bytes",
        },
        BootInfoError::NoMemoryMap,
        BootInfoError::TooManyRegions { count: 129 },
        BootInfoError::RegionWraps {
            base: u64::MAX,
            len: 2,
        },
        BootInfoError::TooManyModules { count: 33 },
        BootInfoError::ModuleEndBeforeStart {
            index: 1,
            start: 0x5000,
            end: 0x4fff,
        },
        BootInfoError::StringNotTerminated(StringField::Cmdline),
        BootInfoError::StringNotUtf8(StringField::Module(2)),
        BootInfoError::StringTooLong {
            field: StringField::BootloaderName,
            len: 70,
            capacity: 64,
        },
        BootInfoError::BadRsdp {
            typ: 15,
            reason: "extended checksum does not add up to 0",
        },
        BootInfoError::Rejected("inconsistent memory layout"),
    ];
    for error in errors {
        let message = error.to_string();
        assert!(!message.is_empty() && !message.contains('\n'), "{message}");
    }
    assert_eq!(
        BootInfoError::TagOverrun {
            offset: 0x48,
            typ: 1,
            size: 64,
            total_size: 96
        }
        .to_string(),
        "tag of type 1 at offset 0x48 with size 64 runs past the total size of 96"
    );
    assert_eq!(
        BootInfoError::StringNotUtf8(StringField::Module(2)).to_string(),
        "string of module 2 is not valid UTF-8"
    );
    assert_eq!(
        BootInfoError::NoMemoryMap.to_string(),
        "boot information has no memory map (tag type 6), so free memory is unknown"
    );
}
