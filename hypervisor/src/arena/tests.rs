use super::*;
use std::boxed::Box;

const BASE: u64 = 0x1f60_0000;
const SIZE: u64 = 8 << 20;

fn arena() -> Box<ArenaRoot> {
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
