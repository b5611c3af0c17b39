//! Unit tests of the Linux loader, on fake bzImages built byte by byte: a boot sector and
//! setup sectors holding just the setup header, then a recognisable "protected-mode
//! kernel".

use super::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A bzImage under construction; every header field can be set.
#[derive(Clone)]
struct Fake {
    setup_sects: u8,
    boot_flag: u16,
    magic: [u8; 4],
    version: u16,
    jump: [u8; 2],
    kernel_version: Option<&'static str>,
    loadflags: u8,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    relocatable: bool,
    min_alignment: u8,
    xloadflags: u16,
    cmdline_size: u32,
    setup_data: u64,
    pref_address: u64,
    init_size: u32,
    /// Length of the protected-mode part.
    kernel_len: usize,
}

impl Fake {
    /// A modern 64-bit kernel, shaped like a distribution one: protocol 2.15, relocatable,
    /// 2 MiB alignment, preferred address 16 MiB, 8 MiB init_size.
    fn modern() -> Self {
        Self {
            setup_sects: 3,
            boot_flag: 0xaa55,
            magic: *b"HdrS",
            version: 0x020f,
            jump: [0xeb, 0x6a], // header ends at 0x26c, as in 2.15 kernels
            kernel_version: Some("6.1.0-fake (tests@lazarus) #1 SMP"),
            loadflags: LOADED_HIGH,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable: true,
            min_alignment: 21,
            xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
            cmdline_size: 2047,
            setup_data: 0,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
            kernel_len: 0x3000,
        }
    }

    fn setup_len(&self) -> usize {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            self.setup_sects
        };
        (usize::from(sects) + 1) * 512
    }

    fn build(&self) -> Vec<u8> {
        let setup_len = self.setup_len();
        let mut image = vec![0u8; setup_len + self.kernel_len];
        // Things a real image has around the header that must not reach the zero page:
        // the boot sector's code, the sentinel at 0x1ef, and setup code after the header.
        image[..0x1f0].fill(0xcc);
        image[0x1ef] = 0xff;
        let end = 0x202 + usize::from(self.jump[1]);
        if end < setup_len {
            image[end.max(0x26c)..setup_len].fill(0x90);
        }
        image[0x1f1] = self.setup_sects;
        image[0x1f2..0x1f4].copy_from_slice(&1u16.to_le_bytes()); // root_flags
        image[0x1fa..0x1fc].copy_from_slice(&0xffffu16.to_le_bytes()); // vid_mode
        image[0x1fe..0x200].copy_from_slice(&self.boot_flag.to_le_bytes());
        image[0x200..0x202].copy_from_slice(&self.jump);
        image[0x202..0x206].copy_from_slice(&self.magic);
        image[0x206..0x208].copy_from_slice(&self.version.to_le_bytes());
        image[0x211] = self.loadflags;
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        image[0x224..0x226].copy_from_slice(&0xde00u16.to_le_bytes()); // heap_end_ptr
        image[0x22c..0x230].copy_from_slice(&self.initrd_addr_max.to_le_bytes());
        image[0x230..0x234].copy_from_slice(&self.kernel_alignment.to_le_bytes());
        image[0x234] = u8::from(self.relocatable);
        image[0x235] = self.min_alignment;
        image[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&self.cmdline_size.to_le_bytes());
        image[0x250..0x258].copy_from_slice(&self.setup_data.to_le_bytes());
        image[0x258..0x260].copy_from_slice(&self.pref_address.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&self.init_size.to_le_bytes());
        image[0x264..0x268].copy_from_slice(&0x4000u32.to_le_bytes()); // handover_offset
        if let Some(version) = self.kernel_version {
            let at = 0x400;
            image[0x20e..0x210].copy_from_slice(&((at - 0x200) as u16).to_le_bytes());
            image[at..at + version.len()].copy_from_slice(version.as_bytes());
            image[at + version.len()] = 0;
        }
        for (i, byte) in image[setup_len..].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        image
    }

    fn header(&self) -> SetupHeader {
        parse(&self.build()).expect("fake kernel parses")
    }
}

fn place_ok(fake: &Fake, initrd_len: usize, cmdline: &str, ram: u64) -> Placement {
    let header = fake.header();
    place(&header, fake.build().len(), initrd_len, cmdline, ram).expect("placement")
}

fn u16_at(bytes: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
}

// ---- parse ----

#[test]
fn parses_a_modern_kernel() {
    let image = Fake::modern().build();
    let header = parse(&image).unwrap();
    assert_eq!(
        header,
        SetupHeader {
            setup_sects: 3,
            version: 0x020f,
            header_end: 0x26c,
            kernel_version: 0x200,
            loadflags: LOADED_HIGH,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable: true,
            min_alignment: 21,
            xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
            cmdline_size: 2047,
            pref_address: 0x100_0000,
            init_size: 0x80_0000,
        }
    );
    assert_eq!(header.setup_len(), 4 * 512);
    assert!(header.can_be_loaded_above_4g());
    assert_eq!(header.cmdline_max(), 2047);
    assert_eq!(
        version_string(&image, &header),
        Some("6.1.0-fake (tests@lazarus) #1 SMP")
    );
}

#[test]
fn refuses_short_images() {
    assert_eq!(parse(&[]), Err(LinuxError::TooShort));
    let image = Fake::modern().build();
    assert_eq!(parse(&image[..0x263]), Err(LinuxError::TooShort));
}

#[test]
fn refuses_images_without_the_boot_flag() {
    let mut fake = Fake::modern();
    fake.boot_flag = 0x55aa;
    assert_eq!(
        parse(&fake.build()),
        Err(LinuxError::NotBzImage(Magic::BootFlag))
    );
}

#[test]
fn refuses_images_without_hdrs() {
    let mut fake = Fake::modern();
    fake.magic = *b"HdrZ";
    assert_eq!(
        parse(&fake.build()),
        Err(LinuxError::NotBzImage(Magic::HdrS))
    );
    // An ELF file is not a bzImage either.
    let mut elf = vec![0u8; 0x1000];
    elf[..4].copy_from_slice(b"\x7fELF");
    assert_eq!(parse(&elf), Err(LinuxError::NotBzImage(Magic::BootFlag)));
}

#[test]
fn refuses_protocols_before_2_12() {
    let mut fake = Fake::modern();
    fake.version = 0x020b;
    assert_eq!(
        parse(&fake.build()),
        Err(LinuxError::ProtocolTooOld {
            version: 0x020b,
            needed: 0x020c
        })
    );
    fake.version = 0x020c;
    assert_eq!(parse(&fake.build()).unwrap().version, 0x020c);
}

#[test]
fn refuses_a_malformed_header_jump() {
    let jump_error = |jump: [u8; 2]| {
        let mut fake = Fake::modern();
        fake.jump = jump;
        parse(&fake.build())
    };
    // Not a short jump.
    assert_eq!(
        jump_error([0xe9, 0x6a]),
        Err(LinuxError::BadHeaderJump {
            opcode: 0xe9,
            offset: 0x6a
        })
    );
    // Backwards.
    assert_eq!(
        jump_error([0xeb, 0xfe]),
        Err(LinuxError::BadHeaderJump {
            opcode: 0xeb,
            offset: 0xfe
        })
    );
    // A header ending before init_size.
    assert_eq!(
        jump_error([0xeb, 0x61]),
        Err(LinuxError::BadHeaderJump {
            opcode: 0xeb,
            offset: 0x61
        })
    );
    // The shortest and longest acceptable headers.
    assert_eq!(jump_error([0xeb, 0x62]).unwrap().header_end, 0x264);
    assert_eq!(jump_error([0xeb, 0x7f]).unwrap().header_end, 0x281);
}

#[test]
fn refuses_zimages() {
    let mut fake = Fake::modern();
    fake.loadflags = CAN_USE_HEAP;
    assert_eq!(parse(&fake.build()), Err(LinuxError::NotLoadedHigh));
}

#[test]
fn refuses_kernels_without_the_64_bit_entry() {
    let mut fake = Fake::modern();
    fake.xloadflags = XLF_CAN_BE_LOADED_ABOVE_4G;
    assert_eq!(parse(&fake.build()), Err(LinuxError::No64BitEntry));
}

#[test]
fn refuses_truncated_kernels() {
    let fake = Fake::modern();
    let image = fake.build();
    let setup_len = fake.setup_len();
    for len in [0x400, setup_len, setup_len + 0x200] {
        assert_eq!(
            parse(&image[..len]),
            Err(LinuxError::Truncated { setup_len, len }),
            "{len}"
        );
    }
    assert!(parse(&image[..setup_len + 0x201]).is_ok());
}

#[test]
fn refuses_a_relocatable_kernel_with_a_bad_alignment() {
    let mut fake = Fake::modern();
    for alignment in [0, 0x30_0000] {
        fake.kernel_alignment = alignment;
        assert_eq!(
            parse(&fake.build()),
            Err(LinuxError::BadKernelAlignment(alignment))
        );
    }
    // A kernel that is not relocatable has no use for its alignment.
    fake.relocatable = false;
    assert!(parse(&fake.build()).is_ok());
}

#[test]
fn setup_sects_zero_means_four() {
    let mut fake = Fake::modern();
    fake.setup_sects = 0;
    let image = fake.build();
    let header = parse(&image).unwrap();
    assert_eq!(header.setup_sects, 0);
    assert_eq!(header.setup_len(), 5 * 512);
    let p = place(&header, image.len(), 0, "", 32 * MIB).unwrap();
    assert_eq!(p.kernel_len, 0x3000);

    let mut guest = vec![0u8; 32 * MIB as usize];
    load(&image, &[], "", &header, &p, &mut guest);
    let at = p.kernel_gpa as usize;
    assert_eq!(&guest[at..at + 0x3000], &image[5 * 512..]);
}

#[test]
fn version_string_is_bounded_by_the_setup_code() {
    let mut fake = Fake::modern();
    fake.kernel_version = None;
    let image = fake.build();
    assert_eq!(version_string(&image, &parse(&image).unwrap()), None);

    let fake = Fake::modern();
    let mut image = fake.build();
    let header = parse(&image).unwrap();
    // Pointing past the setup code.
    image[0x20e..0x210].copy_from_slice(&0x1000u16.to_le_bytes());
    assert_eq!(version_string(&image, &parse(&image).unwrap()), None);
    // No NUL before the end of the setup code.
    let mut image = fake.build();
    image[0x400..header.setup_len()].fill(b'x');
    assert_eq!(version_string(&image, &header), None);
    // Not UTF-8.
    let mut image = fake.build();
    image[0x400] = 0xff;
    assert_eq!(version_string(&image, &header), None);
}

// ---- place ----

#[test]
fn places_a_modern_kernel_at_its_preferred_address() {
    let ram = 64 * MIB;
    let p = place_ok(&Fake::modern(), 5000, "console=ttyS0", ram);
    assert_eq!(
        p,
        Placement {
            kernel_gpa: 16 * MIB,
            kernel_len: 0x3000,
            entry: 16 * MIB + 0x200,
            boot_params: 0x1_0000,
            cmdline: 0x1_1000,
            // As high as possible: page-aligned, ending at or below the end of RAM.
            initrd_gpa: ram - 2 * 4 * KIB,
            initrd_len: 5000,
            reserved_end: 24 * MIB,
            ram,
        }
    );
}

#[test]
fn rounds_the_preferred_address_up_to_the_alignment() {
    let mut fake = Fake::modern();
    fake.pref_address = 0x100_1000;
    assert_eq!(place_ok(&fake, 0, "", 64 * MIB).kernel_gpa, 18 * MIB);
    // A kernel built for 1 MiB with 2 MiB alignment runs at 2 MiB.
    fake.pref_address = MIB;
    assert_eq!(place_ok(&fake, 0, "", 64 * MIB).kernel_gpa, 2 * MIB);
    // One with a 4 KiB alignment runs where it wants.
    fake.kernel_alignment = 0x1000;
    assert_eq!(place_ok(&fake, 0, "", 64 * MIB).kernel_gpa, MIB);
}

#[test]
fn keeps_relocatable_kernels_out_of_low_memory() {
    let mut fake = Fake::modern();
    // No preferred address: the usual 16 MiB.
    fake.pref_address = 0;
    assert_eq!(place_ok(&fake, 0, "", 64 * MIB).kernel_gpa, 16 * MIB);
    // A preferred address in low memory: 1 MiB, aligned.
    fake.pref_address = 0x1_0000;
    fake.kernel_alignment = 0x1000;
    assert_eq!(place_ok(&fake, 0, "", 64 * MIB).kernel_gpa, MIB);
}

#[test]
fn loads_a_kernel_that_is_not_relocatable_at_its_preferred_address() {
    let mut fake = Fake::modern();
    fake.relocatable = false;
    fake.kernel_alignment = 0;
    fake.pref_address = 0x100_1000; // not aligned: no matter
    let p = place_ok(&fake, 0, "", 64 * MIB);
    assert_eq!(p.kernel_gpa, 0x100_1000);
    assert_eq!(p.entry, 0x100_1200);
    assert_eq!(p.reserved_end, 0x100_1000 + 0x80_0000);

    fake.pref_address = 0xf_f000;
    let header = fake.header();
    assert_eq!(
        place(&header, fake.build().len(), 0, "", 64 * MIB),
        Err(LinuxError::NotRelocatable {
            pref_address: 0xf_f000
        })
    );
}

#[test]
fn refuses_a_ram_too_small_for_the_kernel() {
    let fake = Fake::modern();
    let header = fake.header();
    let len = fake.build().len();
    // 16 MiB + 8 MiB of init_size: 24 MiB is just enough.
    assert!(place(&header, len, 0, "", 24 * MIB).is_ok());
    for ram in [24 * MIB - 1, 16 * MIB, 4 * MIB, 0] {
        assert_eq!(
            place(&header, len, 0, "", ram),
            Err(LinuxError::KernelDoesNotFit {
                needed: 24 * MIB,
                ram
            })
        );
    }
}

#[test]
fn reserves_the_whole_file_when_it_exceeds_init_size() {
    let mut fake = Fake::modern();
    fake.init_size = 0x1000;
    let p = place_ok(&fake, 0, "", 64 * MIB);
    assert_eq!(p.reserved_end, 16 * MIB + 0x3000);
}

#[test]
fn keeps_the_kernel_below_4_gib_unless_allowed() {
    let mut fake = Fake::modern();
    fake.relocatable = false;
    fake.pref_address = 4 * GIB - MIB;
    fake.xloadflags = XLF_KERNEL_64;
    let header = fake.header();
    let len = fake.build().len();
    assert_eq!(
        place(&header, len, 0, "", 8 * GIB),
        Err(LinuxError::KernelAbove4G {
            end: 4 * GIB - MIB + 0x80_0000
        })
    );
    fake.xloadflags = XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G;
    let p = place_ok(&fake, 0, "", 8 * GIB);
    assert_eq!(p.kernel_gpa, 4 * GIB - MIB);
}

#[test]
fn refuses_a_command_line_too_long_for_the_kernel() {
    let mut fake = Fake::modern();
    fake.cmdline_size = 10;
    let header = fake.header();
    let len = fake.build().len();
    assert!(place(&header, len, 0, "0123456789", 64 * MIB).is_ok());
    assert_eq!(
        place(&header, len, 0, "0123456789a", 64 * MIB),
        Err(LinuxError::CmdlineTooLong { len: 11, max: 10 })
    );
}

#[test]
fn refuses_a_command_line_longer_than_a_page() {
    let mut fake = Fake::modern();
    fake.cmdline_size = 1_000_000;
    let header = fake.header();
    let len = fake.build().len();
    let line = "x".repeat(4096);
    assert!(place(&header, len, 0, &line[..4095], 64 * MIB).is_ok());
    assert_eq!(
        place(&header, len, 0, &line, 64 * MIB),
        Err(LinuxError::CmdlineTooLong {
            len: 4096,
            max: 4095
        })
    );
}

#[test]
fn refuses_a_command_line_with_a_nul() {
    let header = Fake::modern().header();
    let len = Fake::modern().build().len();
    assert_eq!(
        place(&header, len, 0, "root=/dev/vda\0init=/bin/sh", 64 * MIB),
        Err(LinuxError::CmdlineContainsNul)
    );
}

#[test]
fn places_the_initrd_below_initrd_addr_max() {
    // The example of boot.rst: a 131072-byte ramdisk and initrd_addr_max 0x37FFFFFF
    // "can start at 0x37FE0000".
    let mut fake = Fake::modern();
    fake.initrd_addr_max = 0x37ff_ffff;
    let p = place_ok(&fake, 131_072, "", 2 * GIB);
    assert_eq!(p.initrd_gpa, 0x37fe_0000);
    assert_eq!(p.initrd_len, 131_072);
    // With a RAM smaller than that, at the top of RAM.
    let p = place_ok(&fake, 131_072, "", 512 * MIB);
    assert_eq!(p.initrd_gpa, 512 * MIB - 131_072);
    // A 64-bit kernel's usual 2 GiB limit holds even in a VM with 8 GiB and a kernel that
    // may have its initrd above 4 GiB.
    let p = place_ok(&Fake::modern(), 131_072, "", 8 * GIB);
    assert_eq!(p.initrd_gpa, 2 * GIB - 131_072);
}

#[test]
fn aligns_the_initrd_to_a_page() {
    let p = place_ok(&Fake::modern(), 4097, "", 64 * MIB + 100);
    assert_eq!(p.initrd_gpa % 4096, 0);
    assert_eq!(p.initrd_gpa, 64 * MIB - 4096);
    assert!(p.initrd_gpa + p.initrd_len <= 64 * MIB + 100);
}

#[test]
fn keeps_the_initrd_clear_of_the_kernel_init_size() {
    let fake = Fake::modern();
    let header = fake.header();
    let len = fake.build().len();
    // reserved_end is 24 MiB; up to 32 MiB there are 8 MiB for the initrd.
    let ram = 32 * MIB;
    let p = place(&header, len, (8 * MIB) as usize, "", ram).unwrap();
    assert_eq!(p.initrd_gpa, 24 * MIB);
    assert_eq!(
        place(&header, len, (8 * MIB) as usize + 1, "", ram),
        Err(LinuxError::InitrdDoesNotFit {
            size: 8 * MIB + 1,
            room: 8 * MIB
        })
    );
    // An unaligned init_size end rounds the room down to whole pages.
    let mut fake = Fake::modern();
    fake.init_size = 0x80_0001;
    let header = fake.header();
    assert_eq!(
        place(&header, len, (8 * MIB) as usize, "", ram),
        Err(LinuxError::InitrdDoesNotFit {
            size: 8 * MIB,
            room: 8 * MIB - 4096
        })
    );
    assert_eq!(
        place(&header, len, (8 * MIB - 4096) as usize, "", ram)
            .unwrap()
            .initrd_gpa,
        24 * MIB + 4096
    );
}

#[test]
fn refuses_an_initrd_when_initrd_addr_max_is_below_the_kernel() {
    let mut fake = Fake::modern();
    fake.initrd_addr_max = 0xff_ffff; // 16 MiB - 1, where the kernel starts
    let header = fake.header();
    assert_eq!(
        place(&header, fake.build().len(), 1, "", 64 * MIB),
        Err(LinuxError::InitrdDoesNotFit { size: 1, room: 0 })
    );
}

#[test]
fn no_initrd_means_zeros() {
    let p = place_ok(&Fake::modern(), 0, "", 64 * MIB);
    assert_eq!((p.initrd_gpa, p.initrd_len), (0, 0));
    let image = Fake::modern().build();
    let page = boot_params(&image, &parse(&image).unwrap(), &p);
    assert_eq!(u32_at(&page, 0x218), 0);
    assert_eq!(u32_at(&page, 0x21c), 0);
}

// ---- the zero page ----

#[test]
fn zero_page_fields_are_at_their_offsets() {
    let mut fake = Fake::modern();
    // Bits a loader must not pass on, and a setup_data pointer that means nothing here.
    fake.loadflags = LOADED_HIGH | (1 << 1) | (1 << 5) | KEEP_SEGMENTS | CAN_USE_HEAP;
    fake.setup_data = 0xdead_beef_0000;
    let image = fake.build();
    let header = parse(&image).unwrap();
    let ram = 64 * MIB;
    let p = place(&header, image.len(), 5000, "console=ttyS0", ram).unwrap();
    let page = boot_params(&image, &header, &p);

    // Before the header: nothing, not even the image's sentinel or boot sector.
    assert!(page[..0x1e8].iter().all(|&b| b == 0));
    assert_eq!(page[0x1ef], 0, "sentinel");
    // The header as in the image, except for what a loader writes.
    let written = [0x210..0x212, 0x218..0x220, 0x228..0x22c, 0x250..0x258];
    for off in 0x1f1..0x26c {
        if !written.iter().any(|r| r.contains(&off)) {
            assert_eq!(page[off], image[off], "header byte {off:#x}");
        }
    }
    assert_eq!(page[0x1f1], 3, "setup_sects");
    assert_eq!(u16_at(&page, 0x1fe), 0xaa55, "boot_flag");
    assert_eq!(&page[0x202..0x206], b"HdrS");
    assert_eq!(u16_at(&page, 0x206), 0x020f, "version");
    assert_eq!(u32_at(&page, 0x214), 0x10_0000, "code32_start, untouched");
    assert_eq!(u32_at(&page, 0x260), 0x80_0000, "init_size");
    // After the header (the image has setup code there): zeros.
    assert!(page[0x26c..0x290].iter().all(|&b| b == 0));

    assert_eq!(page[0x210], 0xff, "type_of_loader");
    assert_eq!(page[0x211], LOADED_HIGH, "loadflags");
    assert_eq!(u32_at(&page, 0x228), 0x1_1000, "cmd_line_ptr");
    assert_eq!(u32_at(&page, 0x0c8), 0, "ext_cmd_line_ptr");
    assert_eq!(u32_at(&page, 0x218) as u64, p.initrd_gpa, "ramdisk_image");
    assert_eq!(u32_at(&page, 0x21c), 5000, "ramdisk_size");
    assert_eq!(u32_at(&page, 0x0c0), 0, "ext_ramdisk_image");
    assert_eq!(u32_at(&page, 0x0c4), 0, "ext_ramdisk_size");
    assert_eq!(u64_at(&page, 0x250), 0, "setup_data");

    assert_eq!(page[0x1e8], 4, "e820_entries");
    let map = e820_map(ram);
    for (i, entry) in map.iter().enumerate() {
        let at = 0x2d0 + 20 * i;
        assert_eq!(u64_at(&page, at), entry.addr);
        assert_eq!(u64_at(&page, at + 8), entry.size);
        assert_eq!(u32_at(&page, at + 16), entry.kind);
    }
    // Nothing after the table.
    assert!(page[0x2d0 + 20 * map.len()..].iter().all(|&b| b == 0));
}

#[test]
fn zero_page_splits_high_addresses_into_the_ext_fields() {
    let image = Fake::modern().build();
    let header = parse(&image).unwrap();
    let mut p = place(&header, image.len(), 0, "", 64 * MIB).unwrap();
    // place() never puts anything above 4 GiB, but the fields are written generically.
    p.initrd_gpa = 0x1_2345_6000;
    p.initrd_len = 0x2_0000_1000;
    p.cmdline = 0x3_0000_0040;
    let page = boot_params(&image, &header, &p);
    assert_eq!(u32_at(&page, 0x218), 0x2345_6000);
    assert_eq!(u32_at(&page, 0x0c0), 1);
    assert_eq!(u32_at(&page, 0x21c), 0x1000);
    assert_eq!(u32_at(&page, 0x0c4), 2);
    assert_eq!(u32_at(&page, 0x228), 0x40);
    assert_eq!(u32_at(&page, 0x0c8), 3);
}

#[test]
fn zero_page_copies_only_as_much_header_as_the_jump_says() {
    let mut fake = Fake::modern();
    fake.jump = [0xeb, 0x66]; // a 2.11-sized header, ending at 0x268
    let image = fake.build();
    let header = parse(&image).unwrap();
    let p = place(&header, image.len(), 0, "", 64 * MIB).unwrap();
    let page = boot_params(&image, &header, &p);
    assert_eq!(u32_at(&page, 0x264), 0x4000, "handover_offset copied");
    let mut fake = Fake::modern();
    fake.jump = [0xeb, 0x62]; // ending right after init_size
    let image = fake.build();
    let header = parse(&image).unwrap();
    let page = boot_params(&image, &header, &p);
    assert_eq!(u32_at(&page, 0x260), 0x80_0000, "init_size copied");
    assert_eq!(u32_at(&page, 0x264), 0, "handover_offset not copied");
}

// ---- e820 ----

#[test]
fn e820_map_of_a_normal_vm() {
    let ram = 64 * MIB;
    let map = e820_map(ram);
    assert_eq!(
        &map[..],
        &[
            E820Entry {
                addr: 0,
                size: 0x9_fc00,
                kind: E820_RAM
            },
            E820Entry {
                addr: 0x9_fc00,
                size: 0x400,
                kind: E820_RESERVED
            },
            E820Entry {
                addr: 0xf_0000,
                size: 0x1_0000,
                kind: E820_RESERVED
            },
            E820Entry {
                addr: 0x10_0000,
                size: ram - 0x10_0000,
                kind: E820_RAM
            },
        ]
    );
    // The kernel, zero page, command line and initrd all lie in RAM entries.
    let p = place_ok(&Fake::modern(), 5000, "x", ram);
    let in_ram = |start: u64, len: u64| {
        map.iter()
            .any(|e| e.kind == E820_RAM && start >= e.addr && start + len <= e.addr + e.size)
    };
    assert!(in_ram(p.boot_params, 4096));
    assert!(in_ram(p.cmdline, 4096));
    assert!(in_ram(p.kernel_gpa, p.reserved_end - p.kernel_gpa));
    assert!(in_ram(p.initrd_gpa, p.initrd_len));
}

#[test]
fn e820_map_of_odd_ram_sizes() {
    assert_eq!(e820_map(8 * GIB)[3].size, 8 * GIB - MIB);
    assert_eq!(e820_map(MIB).len(), 3);
    let map = e820_map(0x8_0000);
    assert_eq!(
        &map[..],
        &[E820Entry {
            addr: 0,
            size: 0x8_0000,
            kind: E820_RAM
        }]
    );
    assert!(e820_map(0).is_empty());
    assert_eq!(e820_map(u64::MAX)[3].size, u64::MAX - MIB);
}

// ---- load ----

#[test]
fn load_writes_everything_and_nothing_else() {
    let mut fake = Fake::modern();
    fake.pref_address = 2 * MIB;
    fake.init_size = MIB as u32;
    let image = fake.build();
    let header = parse(&image).unwrap();
    let ram = 4 * MIB;
    let initrd: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8 + 1).collect();
    let cmdline = "console=ttyS0 root=/dev/ram0";
    let p = place(&header, image.len(), initrd.len(), cmdline, ram).unwrap();
    let mut guest = vec![0xaau8; ram as usize];
    load(&image, &initrd, cmdline, &header, &p, &mut guest);

    let kernel = p.kernel_gpa as usize..(p.kernel_gpa + p.kernel_len) as usize;
    assert_eq!(&guest[kernel.clone()], &image[header.setup_len()..]);
    let initrd_range = p.initrd_gpa as usize..(p.initrd_gpa + p.initrd_len) as usize;
    assert_eq!(&guest[initrd_range.clone()], &initrd[..]);
    assert_eq!(
        &guest[0x1_1000..0x1_1000 + cmdline.len()],
        cmdline.as_bytes()
    );
    assert!(guest[0x1_1000 + cmdline.len()..0x1_2000]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(
        &guest[0x1_0000..0x1_1000],
        &boot_params(&image, &header, &p)[..]
    );

    // Everything else, the hypervisor's low area included, is as it was.
    let written = [kernel, initrd_range, 0x1_0000..0x1_2000];
    for (gpa, &byte) in guest.iter().enumerate() {
        if !written.iter().any(|r| r.contains(&gpa)) {
            assert_eq!(byte, 0xaa, "byte at {gpa:#x}");
        }
    }
}

#[test]
#[should_panic]
fn load_refuses_a_mismatched_initrd() {
    let image = Fake::modern().build();
    let header = parse(&image).unwrap();
    let p = place(&header, image.len(), 100, "", 64 * MIB).unwrap();
    let mut guest = vec![0u8; 64 * MIB as usize];
    load(&image, &[0; 99], "", &header, &p, &mut guest);
}

// ---- errors ----

#[test]
fn errors_read_as_one_line() {
    let errors = [
        LinuxError::TooShort,
        LinuxError::NotBzImage(Magic::BootFlag),
        LinuxError::NotBzImage(Magic::HdrS),
        LinuxError::ProtocolTooOld {
            version: 0x020a,
            needed: MIN_PROTOCOL,
        },
        LinuxError::BadHeaderJump {
            opcode: 0xe9,
            offset: 0x10,
        },
        LinuxError::NotLoadedHigh,
        LinuxError::No64BitEntry,
        LinuxError::Truncated {
            setup_len: 2048,
            len: 1024,
        },
        LinuxError::BadKernelAlignment(3),
        LinuxError::NotRelocatable { pref_address: 0 },
        LinuxError::CmdlineTooLong { len: 300, max: 255 },
        LinuxError::CmdlineContainsNul,
        LinuxError::KernelDoesNotFit {
            needed: 0x180_0000,
            ram: 0x100_0000,
        },
        LinuxError::KernelAbove4G { end: 0x1_0010_0000 },
        LinuxError::InitrdDoesNotFit {
            size: 100,
            room: 10,
        },
    ];
    for error in errors {
        let text = error.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    }
    assert_eq!(
        LinuxError::NotBzImage(Magic::HdrS).to_string(),
        "not a bzImage (no HdrS signature at offset 0x202)"
    );
    assert_eq!(
        LinuxError::ProtocolTooOld {
            version: 0x020a,
            needed: MIN_PROTOCOL
        }
        .to_string(),
        "boot protocol 2.10 is too old (Lazarus needs 2.12 or later for the 64-bit entry)"
    );
}

// ---- hostile input ----

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Whatever the header says, parse and place refuse or succeed without panicking, and
/// what they accept stays within RAM, clear of the low area, and loads.
#[test]
fn hostile_headers_never_panic_or_escape_ram() {
    let base = Fake::modern().build();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let interesting = [
        0u64,
        1,
        0x1ff,
        0x1000,
        MIB,
        16 * MIB,
        0x7fff_ffff,
        0xffff_ffff,
        4 * GIB,
        u64::MAX - 0x1000,
        u64::MAX,
    ];
    let mut guest = vec![0u8; 32 * MIB as usize];
    let (mut placed, mut loaded) = (0, 0);
    for round in 0..20_000 {
        let mut image = base.clone();
        // Scramble a few header bytes, or overwrite a field with an edge value.
        for _ in 0..(rng.next() % 4 + 1) {
            let off = 0x1f1 + (rng.next() % (0x270 - 0x1f1)) as usize;
            if rng.next().is_multiple_of(2) {
                image[off] = rng.next() as u8;
            } else {
                let value = interesting[(rng.next() % interesting.len() as u64) as usize];
                let width = [1, 2, 4, 8][(rng.next() % 4) as usize];
                let end = (off + width).min(image.len());
                image[off..end].copy_from_slice(&value.to_le_bytes()[..end - off]);
            }
        }
        // Keep it a plausible bzImage most of the time so that place() gets exercised.
        if round % 4 != 0 {
            image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
            image[0x202..0x206].copy_from_slice(b"HdrS");
        }
        let cut = if round % 8 == 0 {
            (rng.next() % image.len() as u64) as usize
        } else {
            image.len()
        };
        let image = &image[..cut];
        let Ok(header) = parse(image) else { continue };
        let ram = [4 * MIB, 32 * MIB, 8 * GIB, u64::MAX][(rng.next() % 4) as usize];
        let initrd_len = (rng.next() % (64 * MIB)) as usize;
        let Ok(p) = place(&header, image.len(), initrd_len, "console=ttyS0", ram) else {
            continue;
        };
        assert!(p.kernel_gpa >= KERNEL_MIN_GPA);
        assert!(p.kernel_gpa + p.kernel_len <= p.reserved_end);
        assert!(p.reserved_end <= ram);
        assert!(p.entry < p.kernel_gpa + p.kernel_len);
        if p.initrd_len > 0 {
            assert!(p.initrd_gpa >= p.reserved_end);
            assert!(p.initrd_gpa + p.initrd_len <= ram);
            assert!(p.initrd_gpa + p.initrd_len <= u64::from(header.initrd_addr_max) + 1);
        }
        let _ = boot_params(image, &header, &p);
        placed += 1;
        if ram <= guest.len() as u64 {
            loaded += 1;
            let initrd = vec![0x5a; initrd_len];
            load(
                image,
                &initrd,
                "console=ttyS0",
                &header,
                &p,
                &mut guest[..ram as usize],
            );
        }
    }
    // The generator must get past the checks often enough to test what follows them.
    assert!(
        placed > 1000 && loaded > 100,
        "{placed} placed, {loaded} loaded"
    );
}

// ---- the real thing ----

/// Parses a real kernel, `target/guests/vmlinuz` of the workspace (made by
/// `scripts/guests`) or the file named by `LAZARUS_VMLINUZ`, prints its header, and loads
/// it with the `initrd.gz` next to it (or 16 MiB of zeros) into a 256 MiB VM. Run with
/// `cargo test -p lazarus-hypervisor real_kernel -- --ignored --nocapture`.
#[test]
#[ignore = "needs a real bzImage (scripts/guests)"]
fn real_kernel() {
    let path = std::env::var("LAZARUS_VMLINUZ").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/guests/vmlinuz").to_string()
    });
    let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let initrd_path = std::path::Path::new(&path).with_file_name("initrd.gz");
    let initrd = std::fs::read(&initrd_path).unwrap_or_else(|_| vec![0; 16 << 20]);
    let header = parse(&image).unwrap_or_else(|e| panic!("{path}: {e}"));
    println!("{path}: {} bytes", image.len());
    println!("  version string:   {:?}", version_string(&image, &header));
    println!("  protocol:         {}", Protocol(header.version));
    println!(
        "  setup_sects:      {} (setup {} bytes)",
        header.setup_sects,
        header.setup_len()
    );
    println!("  header_end:       {:#x}", header.header_end);
    println!("  loadflags:        {:#04x}", header.loadflags);
    println!("  xloadflags:       {:#06x}", header.xloadflags);
    println!("  relocatable:      {}", header.relocatable);
    println!("  kernel_alignment: {:#x}", header.kernel_alignment);
    println!("  min_alignment:    {}", header.min_alignment);
    println!("  pref_address:     {:#x}", header.pref_address);
    println!(
        "  init_size:        {:#x} ({} MiB)",
        header.init_size,
        header.init_size.div_ceil(1 << 20)
    );
    println!("  cmdline_size:     {}", header.cmdline_size);
    println!("  initrd_addr_max:  {:#x}", header.initrd_addr_max);

    let cmdline = "console=ttyS0";
    let ram = 256 * MIB;
    let p = place(&header, image.len(), initrd.len(), cmdline, ram)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    println!(
        "  placement in {} MiB with a {}-byte initrd ({}): {p:#x?}",
        ram >> 20,
        initrd.len(),
        initrd_path.display()
    );
    let smallest = (1..=ram >> 21)
        .map(|n| n * 2 * MIB)
        .find(|&ram| place(&header, image.len(), initrd.len(), cmdline, ram).is_ok());
    println!("  smallest RAM (a multiple of 2 MiB) that takes them: {smallest:#x?}");
    let mut guest = vec![0u8; ram as usize];
    load(&image, &initrd, cmdline, &header, &p, &mut guest);
    let zero_page = &guest[BOOT_PARAMS_GPA as usize..][..BOOT_PARAMS_SIZE];
    assert_eq!(&zero_page[0x202..0x206], b"HdrS");
    assert_eq!(u32_at(zero_page, 0x218) as u64, p.initrd_gpa);
}
