use super::*;

/// A 64-bit guest: paging, PAE, long mode, 64-bit code.
fn long_mode() -> Mode {
    Mode {
        cr0: cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
        cr3: 0x1000,
        cr4: cr4::PAE,
        efer: efer::LME | efer::LMA | efer::SCE,
        cs_long: true,
    }
}

/// A real-mode guest (unrestricted guest): nothing on.
fn real_mode() -> Mode {
    Mode {
        cr0: cr0::ET,
        cr3: 0,
        cr4: 0,
        efer: 0,
        cs_long: false,
    }
}

#[test]
fn canonical_addresses_at_48_and_57_bits() {
    for (addr, ok) in [
        (0, true),
        (0x0000_7fff_ffff_ffff, true),
        (0xffff_8000_0000_0000, true),
        (0x0000_8000_0000_0000, false),
        (0xfff7_8000_0000_0000, false),
        (0x8000_0000_0000_0000, false),
        (u64::MAX, true),
    ] {
        assert_eq!(canonical(addr, 48), ok, "{addr:#x}");
    }
    assert!(canonical(0x00ff_ffff_ffff_ffff, 57));
    assert!(!canonical(0x00ff_ffff_ffff_ffff, 48));
    assert!(!canonical(0x0100_0000_0000_0000, 57));
}

#[test]
fn pat_accepts_only_memory_types_0_1_4_5_6_7() {
    assert!(valid_pat(0x0007_0406_0007_0406), "the power-on PAT");
    assert!(valid_pat(0x0504_0100_0706_0504));
    for bad in [2u64, 3, 8, 0x80] {
        assert!(!valid_pat(bad), "{bad}");
        assert!(
            !valid_pat(0x0007_0406_0007_0406 | bad << 56),
            "{bad} in byte 7"
        );
    }
}

#[test]
fn xcr0_rules() {
    let all = xcr0::X87 | xcr0::SSE | xcr0::AVX | xcr0::AVX512 | xcr0::PKRU;
    for good in [0b1, 0b11, 0b111, 0b1110_0111, 0x2e7] {
        assert!(valid_xcr0(good, all), "{good:#x}");
    }
    for bad in [
        0,           // x87 off
        0b110,       // x87 off
        0b101,       // AVX without SSE
        0x27,        // opmask alone
        0x47,        // ZMM_Hi256 alone
        0b1110_0011, // AVX-512 without AVX
        0b1_0001,    // BNDCSR without BNDREGS
        0x1 << 17 | 1,
    ] {
        assert!(!valid_xcr0(bad, all | 0x6_0018), "{bad:#x}");
    }
    assert!(!valid_xcr0(0x207, 0b111), "PKRU not offered");
}

/// A host CPUID for leaf 0Dh: AVX at 576 + 256, AVX-512 at 1088..2688, PKRU at 2688,
/// AMX tile data far past one page.
fn xsave_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    match (leaf, subleaf) {
        (0xd, 2) => [256, 576, 0, 0],
        (0xd, 5) => [64, 1088, 0, 0],
        (0xd, 6) => [512, 1152, 0, 0],
        (0xd, 7) => [1024, 1664, 0, 0],
        (0xd, 9) => [8, 2688, 0, 0],
        (0xd, 17) => [64, 2752, 0, 0],
        (0xd, 18) => [8192, 2816, 0, 0],
        (0x8000_0008, 0) => [0x3027, 0, 0, 0],
        _ => [0; 4],
    }
}

#[test]
fn guest_xcr0_keeps_what_fits_one_page_and_is_exposed() {
    let host = 0x6_02e7; // x87 SSE AVX AVX-512 PKRU TILECFG TILEDATA
    let (mask, size) = guest_xcr0(host, &xsave_cpuid);
    assert_eq!(mask, 0x2e7, "AMX is not exposed");
    assert_eq!(size, 2696);
    // Partial AVX-512 on the host: none of it.
    assert_eq!(guest_xcr0(0x67, &xsave_cpuid).0, 0b111);
    // x87 and SSE only.
    assert_eq!(guest_xcr0(0b11, &xsave_cpuid), (0b11, 576));
    // A component whose state would not fit the page is dropped, with its group.
    let big = |leaf: u32, sub: u32| match (leaf, sub) {
        (0xd, 7) => [2048, 3000, 0, 0],
        _ => xsave_cpuid(leaf, sub),
    };
    assert_eq!(guest_xcr0(0x2e7, &big).0, 0x207);
}

#[test]
fn limits_follow_the_guest_cpuid() {
    // Leaf 1: PAE, PSE, TSC, DE, PGE, FXSR, SSE in EDX; XSAVE, PCID in ECX; no MCE, no VME.
    let edx1 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 13) | (1 << 24) | (1 << 25);
    let ecx1 = (1 << 26) | (1 << 17);
    let leaf1 = [0, 0, ecx1, edx1];
    let leaf7 = [0, 1 | (1 << 7) | (1 << 20), 0, 0]; // FSGSBASE, SMEP, SMAP
    let fixed = [0x8000_0021, 0xffff_ffff, 0x2000, 0x3f_ffff];
    let leaves = |l1: [u32; 4], l7: [u32; 4]| {
        move |leaf: u32, _: &GuestLimits| if leaf == 1 { l1 } else { l7 }
    };
    let limits = GuestLimits::derive(0b111, xsave_cpuid, fixed, leaves(leaf1, leaf7));
    let expected = (1 << 2)
        | (1 << 3)
        | (1 << 4)
        | (1 << 5)
        | (1 << 7)
        | (1 << 8)
        | (1 << 9)
        | (1 << 10)
        | (1 << 16)
        | (1 << 17)
        | (1 << 18)
        | (1 << 20)
        | (1 << 21);
    assert_eq!(limits.cr4, expected, "{:#x}", limits.cr4);
    assert_eq!(limits.cr4 & (1 << 13), 0, "VMXE");
    assert_eq!(limits.linear_bits, 48);
    assert_eq!(limits.xcr0, 0b111);
    // PKU offered: PKE too; bits the host's CR4_FIXED1 lacks never.
    let leaf7 = [0, 0, 1 << 3, 0];
    assert_ne!(allowed_cr4(leaf1, leaf7) & (1 << 22), 0);
    let limits = GuestLimits::derive(0b111, xsave_cpuid, fixed, leaves(leaf1, leaf7));
    assert_eq!(limits.cr4 & (1 << 22), 0);
    // The masks: CR0's fixed bits but PE and PG, with CD and NW; every CR4 bit not allowed.
    assert_eq!(limits.cr0_mask, (1 << 5) | (1 << 29) | (1 << 30));
    assert_eq!(limits.cr4_mask, !limits.cr4);
    assert_ne!(limits.cr4_mask & (1 << 13), 0, "VMXE owned");
}

#[test]
fn cr0_writes_hardware_refuses() {
    let m = long_mode();
    let base = m.cr0;
    assert_eq!(cr0_write(base, &m), Some(base));
    assert_eq!(cr0_write(base | 1 << 32, &m), None, "bit 32");
    assert_eq!(cr0_write(base | cr0::NW, &m), None, "NW without CD");
    assert_eq!(
        cr0_write(base | cr0::NW | cr0::CD, &m),
        Some(base | cr0::NW | cr0::CD)
    );
    assert_eq!(cr0_write(base & !cr0::PE, &m), None, "PG without PE");
    assert_eq!(
        cr0_write(base & !cr0::PG, &m),
        None,
        "PG cleared in 64-bit mode"
    );
    // Compatibility mode may leave long mode, unless PCIDE is set.
    let compat = Mode {
        cs_long: false,
        ..m
    };
    assert_eq!(cr0_write(base & !cr0::PG, &compat), Some(base & !cr0::PG));
    let pcid = Mode {
        cr4: cr4::PAE | cr4::PCIDE,
        ..compat
    };
    assert_eq!(cr0_write(base & !cr0::PG, &pcid), None);
    // Reserved low bits are ignored, ET reads as 1.
    assert_eq!(
        cr0_write(cr0::PE | 1 << 6, &real_mode()),
        Some(cr0::PE | cr0::ET)
    );
}

#[test]
fn activating_long_mode_needs_pae() {
    let m = Mode {
        cr0: cr0::PE | cr0::ET,
        efer: efer::LME,
        ..real_mode()
    };
    assert_eq!(cr0_write(m.cr0 | cr0::PG, &m), None);
    let pae = Mode { cr4: cr4::PAE, ..m };
    assert_eq!(cr0_write(m.cr0 | cr0::PG, &pae), Some(m.cr0 | cr0::PG));
}

#[test]
fn cr4_writes_hardware_refuses() {
    let m = long_mode();
    let allowed = cr4::PAE | cr4::PCIDE | (1 << 7) | (1 << 9) | (1 << 18);
    assert!(cr4_write(cr4::PAE | (1 << 7), &m, allowed));
    assert!(
        !cr4_write(cr4::PAE | (1 << 13), &m, allowed),
        "VMXE not offered"
    );
    assert!(!cr4_write(cr4::PAE | 1 << 32, &m, allowed), "bit 32");
    assert!(!cr4_write(0, &m, allowed), "PAE cleared in IA-32e mode");
    assert!(
        cr4_write(0, &real_mode(), allowed),
        "PAE cleared outside it"
    );
    assert!(
        !cr4_write(cr4::PAE | cr4::LA57, &m, allowed | cr4::LA57),
        "LA57 in IA-32e mode"
    );
    assert!(cr4_write(cr4::PAE | cr4::PCIDE, &m, allowed));
    assert!(
        !cr4_write(cr4::PCIDE, &real_mode(), allowed),
        "PCIDE outside IA-32e mode"
    );
    let tagged = Mode { cr3: 0x1005, ..m };
    assert!(
        !cr4_write(cr4::PAE | cr4::PCIDE, &tagged, allowed),
        "CR3[11:0] != 0"
    );
}

#[test]
fn efer_writes_hardware_refuses() {
    let m = long_mode();
    assert!(efer_write(m.efer | efer::NXE, &m));
    assert!(!efer_write(m.efer | 1 << 12, &m), "reserved bit");
    assert!(
        !efer_write(m.efer & !efer::LME, &m),
        "LME cleared with paging on"
    );
    let r = real_mode();
    assert!(efer_write(efer::LME, &r), "LME set with paging off");
}
