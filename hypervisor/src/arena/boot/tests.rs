use super::*;
use crate::bootinfo::{MemoryRegion, Module, Rsdp};
use crate::watchdog::Route;
use std::boxed::Box;
use std::vec::Vec;

const TSC_HZ: u64 = 2_000_000_000;
const EPOCH: u64 = 1_700_000_000;
const EPOCH_TSC: u64 = 5_000_000;

fn boot_info() -> BootInfo {
    let mut regions = heapless::Vec::new();
    for (base, len, kind) in [
        (0, 0x9_fc00, RegionKind::Usable),
        (0x9_fc00, 0x400, RegionKind::Reserved),
        (0x10_0000, 0x7fee_0000, RegionKind::Usable),
        (0x7ffe_0000, 0x2_0000, RegionKind::AcpiReclaimable),
        (0xfffc_0000, 0x4_0000, RegionKind::Reserved),
    ] {
        regions.push(MemoryRegion { base, len, kind }).unwrap();
    }
    let mut modules = heapless::Vec::new();
    for (start, end, string) in [
        (
            0x0200_0000,
            0x0240_0000,
            "/boot/bzImage vm=web console=ttyS0",
        ),
        (0x0240_0000, 0x0280_0000, "/boot/initramfs.img"),
        (0x0280_0000, 0x0280_0000, ""),
    ] {
        modules
            .push(Module {
                start,
                end,
                string: heapless::String::try_from(string).unwrap(),
            })
            .unwrap();
    }
    BootInfo {
        mbi: (0x1_0000, 0x1_0800),
        cmdline: heapless::String::try_from("arena=64M serial=0x3f8 vm=web,ram=256M").unwrap(),
        bootloader: heapless::String::try_from("GRUB 2.12").unwrap(),
        regions,
        modules,
        rsdp: Some(Rsdp {
            revision: 2,
            rsdt: 0x7ffe_1000,
            xsdt: Some(0x7ffe_2000),
        }),
        efi_memory_map: None,
        efi_boot_services_not_exited: false,
    }
}

/// What cold boot finds in Bochs's firmware tables: IRQ 0 overridden to GSI 2 of the I/O
/// APIC at 0xfec00000, active high; S5 through PM1a_CNT at 0xb004 with SLP_TYPa 0.
fn route() -> Route {
    Route {
        ioapic: 0xfec0_0000,
        pin: 2,
        polarity: Polarity::ActiveHigh,
    }
}

fn power() -> PowerOff {
    PowerOff {
        pm1a_cnt: 0xb004,
        pm1b_cnt: None,
        slp_typ_a: 0,
        slp_typ_b: 0,
    }
}

fn platform() -> PlatformRecord {
    PlatformRecord::new(Some(route()), Some(power()))
}

fn record() -> Box<BootRecord> {
    // SAFETY: BootRecord is made of integers and arrays of integers only; all-zero bytes
    // are a valid value (and the record in a fresh arena starts that way).
    unsafe { Box::<BootRecord>::new_zeroed().assume_init() }
}

fn saved(boot: &BootInfo) -> Box<BootRecord> {
    let mut r = record();
    r.save(boot, TSC_HZ, EPOCH, EPOCH_TSC, platform());
    r
}

fn bytes_mut(r: &mut BootRecord) -> &mut [u8] {
    // SAFETY: BootRecord is repr(C) plain data without implicit padding (its checksum
    // relies on that too), so all its bytes are initialised and any value is valid.
    unsafe {
        core::slice::from_raw_parts_mut(
            (r as *mut BootRecord).cast::<u8>(),
            core::mem::size_of::<BootRecord>(),
        )
    }
}

#[test]
fn saved_record_is_intact_and_gives_back_what_was_saved() {
    let boot = boot_info();
    let r = saved(&boot);
    assert!(r.is_intact());
    assert_eq!(r.cmdline(), boot.cmdline.as_str());
    let regions: Vec<_> = r.regions().collect();
    let expected: Vec<_> = boot
        .regions
        .iter()
        .map(|m| (m.base, m.len, m.kind == RegionKind::Usable))
        .collect();
    assert_eq!(regions, expected);
    let modules: Vec<_> = r.modules().collect();
    let expected: Vec<_> = boot
        .modules
        .iter()
        .map(|m| (Range::new(m.start, m.end), m.string.as_str()))
        .collect();
    assert_eq!(modules, expected);
    assert_eq!(r.rsdp(), Some((0x7ffe_1000, Some(0x7ffe_2000))));
    assert_eq!(r.mbi, [0x1_0000, 0x1_0800]);
    assert_eq!(r.tsc_hz, TSC_HZ);
}

#[test]
fn rsdp_without_xsdt_and_no_rsdp_round_trip() {
    let mut boot = boot_info();
    boot.rsdp = Some(Rsdp {
        revision: 0,
        rsdt: 0x000f_6a10,
        xsdt: None,
    });
    let r = saved(&boot);
    assert!(r.is_intact());
    assert_eq!(r.rsdp(), Some((0x000f_6a10, None)));

    boot.rsdp = None;
    let r = saved(&boot);
    assert!(r.is_intact());
    assert_eq!(r.rsdp(), None);
}

#[test]
fn empty_boot_information_round_trips() {
    let boot = BootInfo {
        mbi: (0, 0),
        cmdline: heapless::String::new(),
        bootloader: heapless::String::new(),
        regions: heapless::Vec::new(),
        modules: heapless::Vec::new(),
        rsdp: None,
        efi_memory_map: None,
        efi_boot_services_not_exited: false,
    };
    let r = saved(&boot);
    assert!(r.is_intact());
    assert_eq!(r.cmdline(), "");
    assert_eq!(r.regions().count(), 0);
    assert_eq!(r.modules().count(), 0);
    assert_eq!(r.rsdp(), None);
}

#[test]
fn fullest_boot_information_round_trips() {
    let mut boot = boot_info();
    boot.cmdline.clear();
    while boot.cmdline.push('c').is_ok() {}
    boot.regions.clear();
    for i in 0..MAX_REGIONS as u64 {
        boot.regions
            .push(MemoryRegion {
                base: i << 20,
                len: 1 << 20,
                kind: if i % 2 == 0 {
                    RegionKind::Usable
                } else {
                    RegionKind::Defective
                },
            })
            .unwrap();
    }
    boot.modules.clear();
    for i in 0..MAX_MODULES as u64 {
        let mut string = heapless::String::new();
        while string.push(char::from(b'a' + i as u8 % 26)).is_ok() {}
        boot.modules
            .push(Module {
                start: i << 24,
                end: (i << 24) + 4096,
                string,
            })
            .unwrap();
    }
    let r = saved(&boot);
    assert!(r.is_intact());
    assert_eq!(r.cmdline().len(), MAX_CMDLINE);
    assert_eq!(r.regions().count(), MAX_REGIONS);
    assert_eq!(
        r.regions().last(),
        Some(((MAX_REGIONS as u64 - 1) << 20, 1 << 20, false))
    );
    let modules: Vec<_> = r.modules().collect();
    assert_eq!(modules.len(), MAX_MODULES);
    for (m, b) in modules.iter().zip(&boot.modules) {
        assert_eq!(m.0, Range::new(b.start, b.end));
        assert_eq!(m.1, b.string.as_str());
    }
}

#[test]
fn saving_again_replaces_the_previous_configuration() {
    let mut r = saved(&boot_info());
    let mut boot = boot_info();
    boot.cmdline = heapless::String::try_from("short").unwrap();
    boot.modules.truncate(1);
    boot.modules[0].string = heapless::String::try_from("/k").unwrap();
    boot.regions.truncate(2);
    r.save(&boot, TSC_HZ, EPOCH, EPOCH_TSC, platform());
    assert!(r.is_intact());
    assert_eq!(r.cmdline(), "short");
    assert_eq!(r.regions().count(), 2);
    assert_eq!(
        r.modules().map(|(_, s)| s).collect::<Vec<_>>(),
        ["/k"],
        "no bytes of the longer string are left"
    );
    assert!(r.modules[0].string[2..].iter().all(|&b| b == 0));
    assert!(r.cmdline[5..].iter().all(|&b| b == 0));
}

#[test]
fn any_single_bit_flip_is_detected() {
    let r = saved(&boot_info());
    let mut flipped = r.clone();
    let len = core::mem::size_of::<BootRecord>();
    assert_eq!(
        len,
        core::mem::offset_of!(BootRecord, checksum) + 8,
        "nothing after the checksum escapes it"
    );
    for byte in 0..len {
        for bit in 0..8 {
            bytes_mut(&mut flipped)[byte] ^= 1 << bit;
            assert!(!flipped.is_intact(), "byte {byte} bit {bit}");
            bytes_mut(&mut flipped)[byte] ^= 1 << bit;
        }
    }
    assert!(flipped.is_intact());
}

#[test]
fn zeroed_record_is_not_intact() {
    assert!(!record().is_intact());
}

#[test]
fn counts_past_their_arrays_are_refused_even_with_a_matching_checksum() {
    let good = saved(&boot_info());
    let reseal = |r: &mut BootRecord| r.checksum = r.compute_checksum();
    let cases: [fn(&mut BootRecord); 5] = [
        |r| r.cmdline_len = MAX_CMDLINE as u32 + 1,
        |r| r.region_count = MAX_REGIONS as u32 + 1,
        |r| r.module_count = MAX_MODULES as u32 + 1,
        |r| r.modules[1].string_len = MAX_MODULE_STRING as u32 + 1,
        |r| r.modules[0].end = r.modules[0].start - 1,
    ];
    for (i, corrupt) in cases.into_iter().enumerate() {
        let mut r = good.clone();
        corrupt(&mut r);
        reseal(&mut r);
        assert!(!r.is_intact(), "case {i}");
    }
    // A module past the count is not looked at.
    let mut r = good.clone();
    r.modules[MAX_MODULES - 1].string_len = u32::MAX;
    reseal(&mut r);
    assert!(r.is_intact());
}

#[test]
fn accessors_stay_in_bounds_on_a_corrupt_record() {
    let mut r = saved(&boot_info());
    r.cmdline_len = u32::MAX;
    r.region_count = u32::MAX;
    r.module_count = u32::MAX;
    r.modules[0].string_len = u32::MAX;
    assert!(!r.is_intact());
    assert_eq!(r.cmdline().len(), MAX_CMDLINE);
    assert_eq!(r.regions().count(), MAX_REGIONS);
    assert_eq!(r.modules().count(), MAX_MODULES);
    r.cmdline[0] = 0xff;
    assert_eq!(r.cmdline(), "", "not UTF-8");
}

#[test]
fn wall_clock_advances_with_the_tsc() {
    let r = saved(&boot_info());
    assert_eq!(r.epoch_at(EPOCH_TSC), EPOCH);
    assert_eq!(r.epoch_at(EPOCH_TSC + TSC_HZ - 1), EPOCH);
    assert_eq!(r.epoch_at(EPOCH_TSC + TSC_HZ), EPOCH + 1);
    assert_eq!(r.epoch_at(EPOCH_TSC + 3600 * TSC_HZ + 7), EPOCH + 3600);
    assert_eq!(r.epoch_at(0), EPOCH, "a TSC before the reading");

    let mut boot_r = record();
    boot_r.save(&boot_info(), 0, EPOCH, EPOCH_TSC, platform());
    assert_eq!(boot_r.epoch_at(u64::MAX), EPOCH, "no TSC frequency");
}

#[test]
fn the_watchdog_route_and_the_power_off_method_round_trip() {
    let r = saved(&boot_info());
    assert_eq!(r.platform.watchdog_route(), Ok(Some(route())));
    assert_eq!(r.platform.power_off(), Some(power()));

    let low = Route {
        ioapic: 0xfec0_1000,
        pin: 23,
        polarity: Polarity::ActiveLow,
    };
    let both = PowerOff {
        pm1a_cnt: 0x404,
        pm1b_cnt: Some(0x408),
        slp_typ_a: 5,
        slp_typ_b: 7,
    };
    let p = PlatformRecord::new(Some(low), Some(both));
    assert_eq!(p.watchdog_route(), Ok(Some(low)));
    assert_eq!(p.power_off(), Some(both));

    let none = PlatformRecord::new(None, None);
    assert_eq!(none.watchdog_route(), Ok(None), "not armed at cold boot");
    assert_eq!(none.power_off(), None);
}

#[test]
fn recorded_values_that_no_firmware_table_gives_are_refused() {
    let good = platform();
    type Corrupt = fn(&mut PlatformRecord);
    let cases: [(Corrupt, &str); 5] = [
        (|p| p.watchdog = 2, "bad presence flag"),
        (|p| p.watchdog_ioapic = 0, "I/O APIC address out of range"),
        (
            |p| p.watchdog_ioapic = 0x1_fec0_0000,
            "I/O APIC address out of range",
        ),
        (|p| p.watchdog_pin = 256, "pin out of range"),
        (|p| p.watchdog_polarity = 2, "bad polarity"),
    ];
    for (corrupt, why) in cases {
        let mut p = good;
        corrupt(&mut p);
        assert_eq!(p.watchdog_route(), Err(why));
    }
    let power_cases: [fn(&mut PlatformRecord); 5] = [
        |p| p.power_off = 2,
        |p| p.pm1a_cnt = 0,
        |p| p.pm1a_cnt = 0x1_0000,
        |p| p.pm1b_cnt = 0x1_0000,
        |p| p.slp_typ_a = 8,
    ];
    for (i, corrupt) in power_cases.into_iter().enumerate() {
        let mut p = good;
        corrupt(&mut p);
        assert_eq!(p.power_off(), None, "case {i}");
    }
}

#[test]
fn reconcile_leaves_two_intact_records_alone() {
    let (mut original, mut copy) = (saved(&boot_info()), saved(&boot_info()));
    assert_eq!(reconcile(&mut original, &mut copy), BootRepair::Intact);
    assert_eq!(bytes_mut(&mut original), bytes_mut(&mut copy));
}

#[test]
fn reconcile_restores_a_damaged_original_from_the_copy() {
    let (mut original, mut copy) = (saved(&boot_info()), saved(&boot_info()));
    crate::triggers::overwrite_boot_record(&mut original);
    assert!(!original.is_intact(), "the trigger's damage is seen");
    assert_eq!(
        reconcile(&mut original, &mut copy),
        BootRepair::RestoredFromCopy
    );
    assert!(original.is_intact());
    assert_eq!(original.tsc_hz, TSC_HZ);
    assert_eq!(bytes_mut(&mut original), bytes_mut(&mut copy));
    assert_eq!(reconcile(&mut original, &mut copy), BootRepair::Intact);

    // A wild write over many bytes (a count gone wrong) is the same.
    bytes_mut(&mut original)[100..5000].fill(0xa5);
    assert_eq!(
        reconcile(&mut original, &mut copy),
        BootRepair::RestoredFromCopy
    );
    assert_eq!(original.cmdline(), boot_info().cmdline.as_str());
}

#[test]
fn reconcile_restores_a_damaged_copy_from_the_original() {
    let (mut original, mut copy) = (saved(&boot_info()), saved(&boot_info()));
    bytes_mut(&mut copy)[40] ^= 0x08;
    assert_eq!(
        reconcile(&mut original, &mut copy),
        BootRepair::CopyRestored
    );
    assert!(copy.is_intact());
    assert_eq!(bytes_mut(&mut original), bytes_mut(&mut copy));
    // A copy never written (all zero) is damaged too.
    let mut blank = record();
    assert_eq!(
        reconcile(&mut original, &mut blank),
        BootRepair::CopyRestored
    );
    assert!(blank.is_intact());
}

#[test]
fn reconcile_gives_up_when_both_are_damaged() {
    let (mut original, mut copy) = (saved(&boot_info()), saved(&boot_info()));
    crate::triggers::overwrite_boot_record(&mut original);
    bytes_mut(&mut copy)[8] ^= 1;
    let before = (original.clone(), copy.clone());
    assert_eq!(reconcile(&mut original, &mut copy), BootRepair::BothDamaged);
    assert_eq!(
        (original.checksum, copy.checksum, original.tsc_hz),
        (before.0.checksum, before.1.checksum, before.0.tsc_hz),
        "neither is touched"
    );
}

#[test]
fn two_intact_records_that_differ_are_settled_by_the_copy() {
    let mut original = saved(&boot_info());
    let mut copy = record();
    copy.save(&boot_info(), TSC_HZ + 1, EPOCH, EPOCH_TSC, platform());
    assert_eq!(
        reconcile(&mut original, &mut copy),
        BootRepair::RestoredFromCopy
    );
    assert_eq!(original.tsc_hz, TSC_HZ + 1);
}
