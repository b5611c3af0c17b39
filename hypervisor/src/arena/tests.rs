use super::*;
use std::boxed::Box;
use std::format;
use std::vec::Vec;

pub(super) const BASE: u64 = 0x1f60_0000;
pub(super) const SIZE: u64 = 8 << 20;

/// A fresh arena root on the heap, laid out at [`BASE`] with [`SIZE`] bytes.
pub(super) fn arena() -> Box<ArenaRoot> {
    // SAFETY: every field of ArenaRoot is an integer, an array of integers or an atomic,
    // for which all-zero bytes are a valid value.
    let mut root = unsafe { Box::<ArenaRoot>::new_zeroed().assume_init() };
    root.init(BASE, SIZE).unwrap();
    root
}

/// Adds a VM the way VM creation does: pages from the arena, RAM outside it.
fn add_vm(root: &mut ArenaRoot, name: &str, ram_start: u64) -> usize {
    let slot = root.free_slot().unwrap();
    let mut vm = VmRecord::EMPTY;
    vm.id = root.next_vm_id;
    root.next_vm_id += 1;
    assert!(set_text(&mut vm.name, name));
    vm.config.ram_start = ram_start;
    vm.config.ram_size = 16 << 20;
    vm.vcpu.vmcs = root.alloc_page().unwrap();
    vm.vcpu.xsave = root.alloc_page().unwrap();
    vm.ept_root = root.alloc_page().unwrap();
    vm.seal_config();
    vm.set_state(VmState::Runnable);
    root.vms[slot] = vm;
    slot
}

fn valid() -> Box<ArenaRoot> {
    let mut root = arena();
    add_vm(&mut root, "alpha", 0x0100_0000);
    add_vm(&mut root, "beta", 0x0200_0000);
    root.validate(BASE, SIZE).unwrap();
    root
}

#[test]
fn fresh_arena_is_valid_and_reserves_its_root() {
    let root = arena();
    root.validate(BASE, SIZE).unwrap();
    assert_eq!(root.pages.used(), ArenaRoot::root_pages());
    assert!(!root.owns_page(BASE), "the root is not a pool page");
}

#[test]
fn pages_come_from_inside_the_arena() {
    let mut root = arena();
    let p = root.alloc_page().unwrap();
    assert_eq!(p, BASE + ArenaRoot::root_pages() * 4096);
    assert!(root.owns_page(p));
    root.free_page(p).unwrap();
    assert!(!root.owns_page(p));
    assert!(root.free_page(p).is_err());
    assert!(root.free_page(BASE + SIZE).is_err());
    assert!(root.free_page(p + 1).is_err());
}

#[test]
fn too_small_arena_is_refused() {
    // SAFETY: as in `arena()`.
    let mut root = unsafe { Box::<ArenaRoot>::new_zeroed().assume_init() };
    assert!(matches!(
        root.init(BASE, 4096),
        Err(ArenaError::TooSmall { .. })
    ));
}

#[test]
fn rejects_wrong_magic_version_size_and_checksum() {
    let mut r = valid();
    r.header.magic ^= 1;
    assert!(matches!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadMagic(_))
    ));

    let mut r = valid();
    r.header.layout_version += 1;
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadVersion(LAYOUT_VERSION + 1))
    );

    let mut r = valid();
    r.header.root_size -= 8;
    assert!(matches!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadRootSize { .. })
    ));

    let mut r = valid();
    r.header.size += 4096; // a fixed field changed without the checksum
    assert_eq!(r.validate(BASE, SIZE), Err(ArenaError::BadChecksum));

    let r = valid();
    assert!(matches!(
        r.validate(BASE + 0x20_0000, SIZE),
        Err(ArenaError::Moved { .. })
    ));
}

#[test]
fn generation_and_recovery_count_may_change() {
    let mut r = valid();
    r.header.generation += 5;
    r.header.recovery_count += 2;
    r.validate(BASE, SIZE).unwrap();
}

#[test]
fn rejects_corrupt_vm_records() {
    let mut r = valid();
    r.vms[0].state = 77;
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadVmState { slot: 0, raw: 77 })
    );

    let mut r = valid();
    r.vms[1].config.ram_size += 4096; // config changed without resealing
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadVmConfig { slot: 1 })
    );

    let mut r = valid();
    r.vms[0].name[0] = b'A';
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadVmName { slot: 0 })
    );

    let mut r = valid();
    r.vms[0].vcpu.journal.phase = 9;
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::BadJournal { slot: 0 })
    );
}

#[test]
fn rejects_out_of_bounds_entries() {
    // A VMCS pointer outside the arena.
    let mut r = valid();
    r.vms[0].vcpu.vmcs = 0x1000;
    assert!(matches!(
        r.validate(BASE, SIZE),
        Err(ArenaError::PageNotOwned {
            slot: 0,
            what: "VMCS",
            ..
        })
    ));

    // An EPT root that is an arena page but not allocated.
    let mut r = valid();
    let stray = BASE + SIZE - 4096;
    r.vms[1].ept_root = stray;
    assert!(matches!(
        r.validate(BASE, SIZE),
        Err(ArenaError::PageNotOwned {
            slot: 1,
            what: "EPT root",
            ..
        })
    ));

    // An XSAVE pointer into the root.
    let mut r = valid();
    r.vms[0].vcpu.xsave = BASE;
    assert!(matches!(
        r.validate(BASE, SIZE),
        Err(ArenaError::PageNotOwned {
            what: "XSAVE area",
            ..
        })
    ));

    // Guest RAM inside the arena.
    let mut r = valid();
    r.vms[0].config.ram_start = BASE;
    r.vms[0].seal_config();
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::RamOutOfBounds { slot: 0 })
    );

    // Guest RAM wrapping around the address space.
    let mut r = valid();
    r.vms[0].config.ram_start = u64::MAX - 4095;
    r.vms[0].seal_config();
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::RamOutOfBounds { slot: 0 })
    );

    // Two VMs sharing RAM.
    let mut r = valid();
    r.vms[1].config.ram_start = 0x0100_8000;
    r.vms[1].seal_config();
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::RamOverlap { a: 0, b: 1 })
    );
}

#[test]
fn rejects_duplicate_names_and_bitmap_drift() {
    let mut r = valid();
    set_text(&mut r.vms[1].name, "alpha");
    r.vms[1].seal_config();
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::DuplicateName { a: 0, b: 1 })
    );

    let mut r = valid();
    let p = r.alloc_page().unwrap();
    r.free_page(p).unwrap();
    r.pages.reserve(ArenaRoot::root_pages() + 100, 1).unwrap();
    r.validate(BASE, SIZE).unwrap();
}

#[test]
fn names() {
    assert!(valid_name("web-1_a"));
    assert!(!valid_name(""));
    assert!(!valid_name("lazarus"));
    assert!(!valid_name("Web"));
    assert!(!valid_name("a-name-that-is-too-long"));
    assert!(!valid_name("sp ace"));
}

#[test]
fn stop_reason_is_truncated_not_overflowed() {
    let mut vm = VmRecord::EMPTY;
    let long = "x".repeat(500);
    vm.set_stop_reason(format_args!("{long}"));
    assert_eq!(vm.stop_reason().len(), REASON_LEN - 1);
    vm.set_stop_reason(format_args!("EPT violation at {:#x}", 0x1234));
    assert_eq!(vm.stop_reason(), "EPT violation at 0x1234");
}

#[test]
fn lookups() {
    let r = valid();
    assert_eq!(r.find_vm("beta"), Some(1));
    assert_eq!(r.find_vm("gamma"), None);
    assert_eq!(r.free_slot(), Some(2));
}

// ---------------------------------------------------------------------------------------
// validate_header on its own

/// The page bitmap as the words it is made of (`#[repr(C)]`: `pages`, `used`, then the
/// bits), to corrupt it the way a stray write would.
fn bitmap_words(root: &mut ArenaRoot) -> &mut [u64] {
    const N: usize = core::mem::size_of::<PageBitmap>() / 8;
    const _: () = assert!(N == 2 + MAX_PAGES / 64);
    // SAFETY: PageBitmap is repr(C) and made of u64s only (two counters and an array),
    // so it is N initialised, aligned u64s, any value of which is valid; the borrow of
    // `root` keeps it exclusive.
    unsafe { core::slice::from_raw_parts_mut((&mut root.pages as *mut PageBitmap).cast(), N) }
}

const USED: usize = 1;
const BITS: usize = 2;

#[test]
fn header_checks_name_what_is_wrong() {
    let mut r = valid();
    r.header.magic = 0x1234;
    assert_eq!(
        r.validate_header(BASE, SIZE),
        Err(ArenaError::BadMagic(0x1234))
    );

    let mut r = valid();
    r.header.layout_version = LAYOUT_VERSION - 1;
    assert_eq!(
        r.validate_header(BASE, SIZE),
        Err(ArenaError::BadVersion(LAYOUT_VERSION - 1))
    );

    let mut r = valid();
    let expected = core::mem::size_of::<ArenaRoot>() as u32;
    r.header.root_size = expected + 64;
    assert_eq!(
        r.validate_header(BASE, SIZE),
        Err(ArenaError::BadRootSize {
            recorded: expected + 64,
            expected
        })
    );

    for corrupt in [
        |h: &mut ArenaHeader| h.base ^= 0x1000,
        |h: &mut ArenaHeader| h.size ^= 1 << 40,
        |h: &mut ArenaHeader| h.fixed_checksum ^= 1,
    ] {
        let mut r = valid();
        corrupt(&mut r.header);
        assert_eq!(r.validate_header(BASE, SIZE), Err(ArenaError::BadChecksum));
    }
}

#[test]
fn a_damaged_header_is_restored_from_base_and_size_and_keeps_its_counters() {
    let intact = valid();
    let mut r = valid();
    assert!(!r.header.restore_fixed(BASE, SIZE), "nothing to restore");
    assert_eq!(r.header, intact.header);
    for corrupt in [
        |h: &mut ArenaHeader| h.magic ^= 1 << 7,
        |h: &mut ArenaHeader| h.layout_version = h.layout_version.wrapping_add(0x3b9a),
        |h: &mut ArenaHeader| h.root_size ^= 1,
        |h: &mut ArenaHeader| h.base ^= 1 << 33,
        |h: &mut ArenaHeader| h.size = 0,
        |h: &mut ArenaHeader| h.fixed_checksum = 0,
    ] {
        let mut r = valid();
        r.header.generation = 7;
        r.header.recovery_count = 3;
        corrupt(&mut r.header);
        assert!(r.validate_header(BASE, SIZE).is_err());
        assert!(r.header.restore_fixed(BASE, SIZE));
        r.validate(BASE, SIZE).unwrap();
        assert_eq!((r.header.generation, r.header.recovery_count), (7, 3));
    }
}

#[test]
fn header_is_checked_against_where_the_arena_is_expected() {
    let r = valid();
    r.validate_header(BASE, SIZE).unwrap();
    let moved = Err(ArenaError::Moved {
        recorded_base: BASE,
        recorded_size: SIZE,
    });
    assert_eq!(r.validate_header(BASE + 0x1000, SIZE), moved);
    assert_eq!(r.validate_header(BASE, SIZE + 0x1000), moved);
    assert_eq!(r.validate_header(BASE, SIZE - 0x1000), moved);
    assert_eq!(r.validate_header(0, 0), moved);
}

#[test]
fn header_check_ignores_the_vm_table() {
    let mut r = valid();
    r.vms[0].state = 99;
    r.vms[1].vcpu.vmcs = 0;
    r.validate_header(BASE, SIZE).unwrap();
}

#[test]
fn bitmap_of_another_size_is_rejected() {
    let mut r = valid();
    r.pages.init(SIZE / 4096 - 1);
    assert_eq!(
        r.validate_header(BASE, SIZE),
        Err(ArenaError::Pages(PageError::OutOfRange(SIZE / 4096 - 1)))
    );
}

#[test]
fn bitmap_counter_drift_is_rejected() {
    let mut r = valid();
    let used = r.pages.used();
    for wrong in [used - 1, used + 1, 0, u64::MAX] {
        bitmap_words(&mut r)[USED] = wrong;
        assert_eq!(
            r.validate_header(BASE, SIZE),
            Err(ArenaError::Pages(PageError::Inconsistent {
                counted: used,
                recorded: wrong
            })),
            "used {wrong}"
        );
    }
    bitmap_words(&mut r)[USED] = used;
    r.validate_header(BASE, SIZE).unwrap();

    // A page allocated behind the counter's back.
    let mut r = valid();
    let i = SIZE / 4096 - 1;
    bitmap_words(&mut r)[BITS + (i / 64) as usize] |= 1 << (i % 64);
    assert_eq!(
        r.validate_header(BASE, SIZE),
        Err(ArenaError::Pages(PageError::Inconsistent {
            counted: used + 1,
            recorded: used
        }))
    );
}

#[test]
fn stray_bits_past_the_page_count_are_rejected() {
    // SIZE is 2048 pages, a whole number of words: the first stray bit is bit 0 of the
    // word after the last; then one in the middle and one in the very last word.
    let pages = SIZE / 4096;
    for index in [pages, pages + 63, pages + 64 + 17, MAX_PAGES as u64 - 1] {
        for count_it in [false, true] {
            let mut r = valid();
            let used = r.pages.used();
            let words = bitmap_words(&mut r);
            words[BITS + (index / 64) as usize] |= 1 << (index % 64);
            if count_it {
                // Counted as well, so that only the position is wrong.
                words[USED] += 1;
            }
            assert!(
                !r.pages.is_allocated(index),
                "past the end is never allocated"
            );
            let recorded = used + u64::from(count_it);
            assert_eq!(
                r.validate_header(BASE, SIZE),
                Err(ArenaError::Pages(PageError::Inconsistent {
                    counted: used + 1,
                    recorded
                })),
                "page {index}, counted {count_it}"
            );
            assert!(r.validate(BASE, SIZE).is_err());
        }
    }
}

#[test]
fn stray_bits_in_the_last_partial_word_are_rejected() {
    // 2053 pages: the last word holds 5 pages and 59 bits that must stay clear.
    let size = SIZE + 5 * 4096;
    // SAFETY: as in `arena()`.
    let mut r = unsafe { Box::<ArenaRoot>::new_zeroed().assume_init() };
    r.init(BASE, size).unwrap();
    let pages = size / 4096;
    r.pages.reserve(pages - 1, 1).unwrap(); // the last page is fine
    r.validate_header(BASE, size).unwrap();
    let used = r.pages.used();
    for index in [pages, pages + 1, (pages / 64 + 1) * 64 - 1] {
        let word = BITS + (index / 64) as usize;
        let bit = 1u64 << (index % 64);
        bitmap_words(&mut r)[word] |= bit;
        bitmap_words(&mut r)[USED] = used + 1;
        assert_eq!(
            r.validate_header(BASE, size),
            Err(ArenaError::Pages(PageError::Inconsistent {
                counted: used + 1,
                recorded: used + 1
            })),
            "page {index}"
        );
        bitmap_words(&mut r)[word] &= !bit;
        bitmap_words(&mut r)[USED] = used;
        r.validate_header(BASE, size).unwrap();
    }
}

#[test]
fn full_bitmap_validates() {
    let mut r = valid();
    while r.alloc_page().is_some() {}
    assert_eq!(r.pages.used(), SIZE / 4096);
    r.validate(BASE, SIZE).unwrap();
}

#[test]
fn shared_bitmaps_must_be_arena_pages() {
    let mut r = valid();
    r.io_bitmaps = [r.alloc_page().unwrap(), r.alloc_page().unwrap()];
    r.msr_bitmap = r.alloc_page().unwrap();
    r.validate_header(BASE, SIZE).unwrap();
    let good = (r.io_bitmaps, r.msr_bitmap);

    let not_owned = |what, addr| {
        Err(ArenaError::PageNotOwned {
            slot: MAX_VMS,
            what,
            addr,
        })
    };
    let free = BASE + SIZE - 4096;
    r.io_bitmaps[0] = free;
    assert_eq!(
        r.validate_header(BASE, SIZE),
        not_owned("I/O bitmap A", free)
    );
    r.io_bitmaps = good.0;
    r.io_bitmaps[1] = BASE; // the root
    assert_eq!(
        r.validate_header(BASE, SIZE),
        not_owned("I/O bitmap B", BASE)
    );
    r.io_bitmaps = good.0;
    r.msr_bitmap = good.1 + 8; // not page-aligned
    assert_eq!(
        r.validate_header(BASE, SIZE),
        not_owned("MSR bitmap", good.1 + 8)
    );
    r.msr_bitmap = good.1;
    r.validate_header(BASE, SIZE).unwrap();
}

// ---------------------------------------------------------------------------------------
// validate_vm on its own

#[test]
fn validate_vm_concerns_one_slot_only() {
    let mut r = valid();
    r.vms[0].vcpu.journal.phase = 4;
    assert_eq!(r.validate_vm(0), Err(ArenaError::BadJournal { slot: 0 }));
    assert_eq!(r.validate_vm(1), Ok(()));
    for slot in 2..MAX_VMS {
        assert_eq!(r.validate_vm(slot), Ok(()), "free slot {slot}");
    }
}

#[test]
fn free_slot_contents_are_not_checked_but_its_state_is() {
    let mut r = valid();
    let mut stale = r.vms[0];
    stale.name = [0xff; NAME_LEN];
    stale.config_checksum ^= 1;
    stale.vcpu.vmcs = 0x1000;
    stale.vcpu.journal.phase = 9;
    stale.set_state(VmState::Free);
    r.vms[5] = stale;
    assert_eq!(r.validate_vm(5), Ok(()));
    r.vms[5].state = 6;
    assert_eq!(
        r.validate_vm(5),
        Err(ArenaError::BadVmState { slot: 5, raw: 6 })
    );
}

#[test]
fn every_live_state_is_validated() {
    for state in [
        VmState::Runnable,
        VmState::Halted,
        VmState::Stopped,
        VmState::Off,
        VmState::Waiting,
    ] {
        let mut r = valid();
        r.vms[1].set_state(state);
        assert_eq!(r.validate_vm(1), Ok(()), "{state:?}");
        r.vms[1].config.module_index += 1;
        assert_eq!(
            r.validate_vm(1),
            Err(ArenaError::BadVmConfig { slot: 1 }),
            "{state:?}"
        );
    }
}

#[test]
fn validate_vm_rejects_each_corruption() {
    type Corrupt = fn(&mut VmRecord);
    let cases: &[(&str, Corrupt, ArenaError)] = &[
        (
            "state",
            |vm| vm.state = 6,
            ArenaError::BadVmState { slot: 1, raw: 6 },
        ),
        (
            "empty name",
            |vm| {
                vm.name = [0; NAME_LEN];
                vm.seal_config();
            },
            ArenaError::BadVmName { slot: 1 },
        ),
        (
            "reserved name",
            |vm| {
                set_text(&mut vm.name, "lazarus");
                vm.seal_config();
            },
            ArenaError::BadVmName { slot: 1 },
        ),
        (
            "name without a NUL",
            |vm| {
                vm.name = [b'a'; NAME_LEN];
                vm.seal_config();
            },
            ArenaError::BadVmName { slot: 1 },
        ),
        (
            "config checksum",
            |vm| vm.config_checksum = vm.config_checksum.rotate_left(1),
            ArenaError::BadVmConfig { slot: 1 },
        ),
        (
            "config args",
            |vm| vm.config.args[ARGS_LEN - 1] = b'x',
            ArenaError::BadVmConfig { slot: 1 },
        ),
        ("id", |vm| vm.id += 1, ArenaError::BadVmConfig { slot: 1 }),
        (
            "journal phase",
            |vm| vm.vcpu.journal.phase = u32::MAX,
            ArenaError::BadJournal { slot: 1 },
        ),
        (
            "device state",
            |vm| vm.devices.pit.channels[1].mode = 8,
            ArenaError::BadDevice {
                slot: 1,
                device: "pit",
                what: "channel mode out of range",
            },
        ),
        (
            "RAM size zero",
            |vm| {
                vm.config.ram_size = 0;
                vm.seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "RAM start misaligned",
            |vm| {
                vm.config.ram_start += 8;
                vm.seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "RAM running into the arena",
            |vm| {
                vm.config.ram_start = BASE - 0x1000;
                vm.config.ram_size = 0x2000;
                vm.seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "RAM starting in the arena's last page",
            |vm| {
                vm.config.ram_start = BASE + SIZE - 0x1000;
                vm.seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "RAM around the arena",
            |vm| {
                vm.config.ram_start = BASE - 0x10_0000;
                vm.config.ram_size = SIZE + 0x20_0000;
                vm.seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "VMCS not an arena page",
            |vm| vm.vcpu.vmcs = 0,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "VMCS",
                addr: 0,
            },
        ),
        (
            "VMCS misaligned",
            |vm| vm.vcpu.vmcs += 0x10,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "VMCS",
                addr: BASE + (ArenaRoot::root_pages() + 3) * 4096 + 0x10,
            },
        ),
        (
            "XSAVE area past the arena",
            |vm| vm.vcpu.xsave = BASE + SIZE,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "XSAVE area",
                addr: BASE + SIZE,
            },
        ),
        (
            "EPT root in the root",
            |vm| vm.ept_root = BASE + 4096,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "EPT root",
                addr: BASE + 4096,
            },
        ),
    ];
    for &(what, corrupt, expected) in cases {
        let mut r = valid();
        corrupt(&mut r.vms[1]);
        assert_eq!(r.validate_vm(1), Err(expected), "{what}");
        assert_eq!(r.validate_vm(0), Ok(()), "{what}");
        assert_eq!(r.validate(BASE, SIZE), Err(expected), "{what}");
    }
}

#[test]
fn ram_next_to_the_arena_is_fine() {
    let mut r = valid();
    r.vms[0].config.ram_start = BASE - (16 << 20); // ends where the arena starts
    r.vms[0].seal_config();
    r.vms[1].config.ram_start = BASE + SIZE; // starts where it ends
    r.vms[1].seal_config();
    r.validate(BASE, SIZE).unwrap();
}

#[test]
fn freed_page_is_no_longer_the_vms() {
    let mut r = valid();
    let xsave = r.vms[0].vcpu.xsave;
    r.free_page(xsave).unwrap();
    assert_eq!(
        r.validate_vm(0),
        Err(ArenaError::PageNotOwned {
            slot: 0,
            what: "XSAVE area",
            addr: xsave
        })
    );
}

// ---------------------------------------------------------------------------------------
// conflicts

fn conflicts(r: &ArenaRoot) -> Vec<ArenaError> {
    r.conflicts().collect()
}

#[test]
fn no_conflicts_between_separate_vms() {
    let mut r = valid();
    // Adjacent RAM does not overlap.
    r.vms[1].config.ram_start = 0x0100_0000 + (16 << 20);
    r.vms[1].seal_config();
    assert_eq!(conflicts(&r), []);
    assert_eq!(conflicts(&arena()), []);
}

#[test]
fn every_conflicting_pair_is_listed_with_the_later_slot_second() {
    let mut r = arena();
    add_vm(&mut r, "alpha", 0x0100_0000);
    add_vm(&mut r, "beta", 0x0200_0000);
    add_vm(&mut r, "gamma", 0x0100_0000 + (8 << 20)); // overlaps alpha and beta
    add_vm(&mut r, "beta", 0x0800_0000); // beta's name
    add_vm(&mut r, "epsilon", 0x0900_0000);
    assert_eq!(
        conflicts(&r),
        [
            ArenaError::RamOverlap { a: 0, b: 2 },
            ArenaError::RamOverlap { a: 1, b: 2 },
            ArenaError::DuplicateName { a: 1, b: 3 },
        ]
    );
    // Every slot still validates on its own: conflicts are between records.
    for slot in 0..MAX_VMS {
        assert_eq!(r.validate_vm(slot), Ok(()), "slot {slot}");
    }
    assert_eq!(
        r.validate(BASE, SIZE),
        Err(ArenaError::RamOverlap { a: 0, b: 2 })
    );
}

#[test]
fn overlap_is_reported_before_a_shared_name() {
    let mut r = valid();
    set_text(&mut r.vms[1].name, "alpha");
    r.vms[1].config.ram_start = 0x0100_0000;
    r.vms[1].seal_config();
    assert_eq!(conflicts(&r), [ArenaError::RamOverlap { a: 0, b: 1 }]);
}

#[test]
fn stopped_vms_conflict_and_free_slots_do_not() {
    let mut r = valid();
    // A stopped VM keeps its RAM and its name.
    r.vms[0].set_state(VmState::Stopped);
    add_vm(&mut r, "alpha", 0x0300_0000);
    assert_eq!(conflicts(&r), [ArenaError::DuplicateName { a: 0, b: 2 }]);

    // A free slot's stale record overlaps nothing.
    let mut r = valid();
    let mut stale = r.vms[0];
    stale.set_state(VmState::Free);
    r.vms[4] = stale;
    assert_eq!(conflicts(&r), []);

    // A record whose state is unreadable still holds its RAM.
    r.vms[4].state = 42;
    assert_eq!(conflicts(&r), [ArenaError::RamOverlap { a: 0, b: 4 }]);
}

#[test]
fn conflicts_cover_every_pair_of_a_full_table() {
    let mut r = arena();
    for i in 0..MAX_VMS {
        add_vm(&mut r, "same", 0x0100_0000 + i as u64 * 0x1000);
    }
    let all = conflicts(&r);
    assert_eq!(all.len(), MAX_VMS * (MAX_VMS - 1) / 2);
    assert!(all
        .iter()
        .all(|e| matches!(e, ArenaError::RamOverlap { a, b } if a < b)));
}

#[test]
fn errors_read_as_one_line() {
    let cases = [
        (
            ArenaError::BadVmState { slot: 3, raw: 9 },
            "vm slot 3: invalid state 9",
        ),
        (
            ArenaError::RamOverlap { a: 0, b: 2 },
            "vm slots 0 and 2: guest RAM overlaps",
        ),
        (
            ArenaError::DuplicateName { a: 1, b: 2 },
            "vm slots 1 and 2: same name",
        ),
        (
            ArenaError::PageNotOwned {
                slot: 1,
                what: "VMCS",
                addr: 0x1000,
            },
            "vm slot 1: VMCS at 0x1000 is not an allocated arena page",
        ),
        (
            ArenaError::BadDevice {
                slot: 4,
                device: "pit",
                what: "channel mode out of range",
            },
            "vm slot 4: pit: channel mode out of range",
        ),
        (
            ArenaError::Pages(PageError::Inconsistent {
                counted: 5,
                recorded: 4,
            }),
            "arena page bitmap has 5 pages set but records 4",
        ),
    ];
    for (e, text) in cases {
        assert_eq!(format!("{e}"), text);
    }
}

#[test]
fn commit_log_gives_back_only_an_intact_entry_of_the_same_exit() {
    use crate::vm::exits::{Effect, Exit};
    use crate::vmx::exit::ExitReason;
    let mut root = arena();
    let exit = Exit {
        rip: 0x1234,
        instruction_len: 2,
        ..crate::vm::exits::tests::exit(ExitReason::Io)
    };
    let regs = crate::vmx::fields::GuestRegisters {
        rax: 0x55,
        ..Default::default()
    };
    let mut effect = Effect::new(&regs);
    effect.rip_advance = 2;
    root.commit.save(3, 77, &exit, &effect);
    let (e, f) = root.commit.load(3, 77).expect("intact");
    assert_eq!((e.rip, f.rip_advance, f.regs.rax), (0x1234, 2, 0x55));
    assert!(root.commit.load(2, 77).is_none(), "another VM");
    assert!(root.commit.load(3, 76).is_none(), "another exit");
    root.commit.words[5] ^= 1 << 9;
    assert!(root.commit.load(3, 77).is_none(), "a flipped bit");
    root.commit.words[5] ^= 1 << 9;
    assert!(root.commit.load(3, 77).is_some());
    root.commit.clear();
    assert!(
        root.commit.load(3, 77).is_none(),
        "cleared after the commit"
    );
}
