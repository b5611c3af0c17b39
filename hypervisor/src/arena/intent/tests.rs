use super::*;
use crate::arena::{ArenaError, PageError};

use crate::arena::tests::{arena, BASE, SIZE};

/// A live VM made the way `vm create` makes one, through the intent.
fn create(root: &mut ArenaRoot, name: &str, ram_start: u64, tables: usize) -> usize {
    let slot = root.free_slot().unwrap();
    root.begin_create(slot, name);
    let mut vm = VmRecord::EMPTY;
    assert!(set_text(&mut vm.name, name));
    vm.config.ram_start = ram_start;
    vm.config.ram_size = 16 << 20;
    vm.vcpu.vmcs = root.alloc_create_page().unwrap();
    vm.vcpu.xsave = root.alloc_create_page().unwrap();
    vm.ept_root = root.alloc_create_page().unwrap();
    for _ in 1..tables {
        root.alloc_create_page().unwrap();
    }
    vm.seal_config();
    vm.set_state(VmState::Runnable);
    root.vms[slot] = vm;
    root.commit_create();
    slot
}

#[test]
fn pages_are_recorded_as_they_are_taken_and_a_commit_forgets_them() {
    let mut root = arena();
    let used = root.pages.used();
    assert_eq!(root.alloc_create_page(), None, "no creation under way");
    root.begin_create(0, "alpha");
    let a = root.alloc_create_page().unwrap();
    let b = root.alloc_create_page().unwrap();
    assert_eq!(root.create.recorded(), &[a, b]);
    assert_eq!(root.create.slot_in_progress(), Some(0));
    assert_eq!(root.create.name(), "alpha");
    assert!(root.owns_page(a) && root.owns_page(b));
    assert_eq!(root.pages.used(), used + 2);
    root.commit_create();
    assert_eq!(root.create, CreateIntent::IDLE);
    assert_eq!(root.undo_create(), None, "nothing to undo once committed");
    assert_eq!(
        root.pages.used(),
        used + 2,
        "a committed VM keeps its pages"
    );
}

#[test]
fn an_interrupted_creation_gives_back_every_page_and_its_slot() {
    let mut root = arena();
    create(&mut root, "alpha", 0x0100_0000, 3);
    let used = root.pages.used();
    // beta: pages taken, record written (not yet runnable), then the failure.
    root.begin_create(1, "beta");
    let mut vm = VmRecord::EMPTY;
    set_text(&mut vm.name, "beta");
    vm.vcpu.vmcs = root.alloc_create_page().unwrap();
    vm.vcpu.xsave = root.alloc_create_page().unwrap();
    vm.ept_root = root.alloc_create_page().unwrap();
    root.alloc_create_page().unwrap();
    root.vms[1] = vm;
    let undone = root.undo_create().unwrap();
    assert_eq!(text(&undone.name), "beta");
    assert_eq!((undone.pages_freed, undone.slot_freed), (4, true));
    assert_eq!(root.pages.used(), used, "back to what it was");
    assert_eq!(root.vms[1].state, VmState::Free as u32);
    assert_eq!(root.vms[1].name(), "");
    assert_eq!(root.create, CreateIntent::IDLE);
    root.validate(BASE, SIZE).unwrap();
    assert_eq!(root.undo_create(), None, "idempotent: a retried recovery");
    assert_eq!(root.free_slot(), Some(1), "the slot can be used again");
}

#[test]
fn a_creation_interrupted_after_its_vm_was_marked_runnable_is_undone_all_the_same() {
    let mut root = arena();
    let used = root.pages.used();
    root.begin_create(0, "gamma");
    let mut vm = VmRecord::EMPTY;
    set_text(&mut vm.name, "gamma");
    vm.vcpu.vmcs = root.alloc_create_page().unwrap();
    vm.set_state(VmState::Runnable);
    root.vms[0] = vm;
    assert!(root.undo_create().unwrap().slot_freed);
    assert_eq!(root.pages.used(), used);
    assert_eq!(root.find_vm("gamma"), None);
}

#[test]
fn a_page_recorded_but_not_yet_taken_is_left_free() {
    let mut root = arena();
    let used = root.pages.used();
    root.begin_create(0, "delta");
    root.alloc_create_page().unwrap();
    // The failure came between recording the next page and setting its bit.
    let next = root.pages.first_free().unwrap();
    root.create.pages[1] = BASE + next * PAGE;
    root.create.count = 2;
    let undone = root.undo_create().unwrap();
    assert_eq!(undone.pages_freed, 1);
    assert!(!undone.slot_freed, "no record was written");
    assert_eq!(root.pages.used(), used);
    root.pages.validate().unwrap();
}

#[test]
fn a_corrupt_intent_frees_nothing_that_belongs_to_others() {
    let mut root = arena();
    let alpha = create(&mut root, "alpha", 0x0100_0000, 1);
    let vm = root.vms[alpha];
    let used = root.pages.used();
    root.begin_create(alpha, "alpha2");
    root.create.pages[..6].copy_from_slice(&[
        vm.vcpu.vmcs,
        vm.vcpu.xsave,
        vm.ept_root,
        root.io_bitmaps[0],
        BASE,        // the root itself
        BASE + SIZE, // past the end
    ]);
    root.create.count = 6;
    let undone = root.undo_create().unwrap();
    assert_eq!((undone.pages_freed, undone.slot_freed), (0, false));
    assert_eq!(root.pages.used(), used);
    assert_eq!(root.vms[alpha].name(), "alpha", "another VM's slot is kept");
    // A count past the array and a slot past the table are bounded.
    root.begin_create(0, "x");
    root.create.count = u32::MAX;
    root.create.slot = 99;
    assert_eq!(root.create.recorded().len(), CREATE_PAGES);
    assert_eq!(root.create.slot_in_progress(), None);
    assert!(!root.undo_create().unwrap().slot_freed);
    // An unreadable phase: dropped, nothing freed.
    root.begin_create(0, "y");
    root.alloc_create_page().unwrap();
    root.create.phase = 7;
    let used = root.pages.used();
    assert_eq!(root.undo_create(), None);
    assert_eq!(root.create, CreateIntent::IDLE);
    assert_eq!(root.pages.used(), used);
}

#[test]
fn the_intent_holds_the_largest_creation_and_refuses_more() {
    let mut root = arena();
    root.begin_create(0, "big");
    for _ in 0..CREATE_PAGES {
        assert!(root.alloc_create_page().is_some());
    }
    assert_eq!(root.alloc_create_page(), None);
    assert_eq!(root.undo_create().unwrap().pages_freed, CREATE_PAGES as u32);
    assert_eq!(root.pages.used(), ArenaRoot::root_pages());
}

#[test]
fn an_arena_without_free_pages_records_no_page() {
    let mut root = arena();
    while root.alloc_page().is_some() {}
    root.begin_create(0, "full");
    assert_eq!(root.alloc_create_page(), None);
    assert_eq!(
        root.create.count, 0,
        "nothing recorded when nothing could be taken"
    );
    assert!(matches!(
        root.pages.take(0),
        Err(PageError::AlreadyAllocated(0))
    ));
}

#[test]
fn a_reset_intent_outside_the_known_values_is_a_corrupt_record() {
    let mut root = arena();
    let slot = create(&mut root, "alpha", 0x0100_0000, 1);
    for ok in [RESET_NONE, RESET_OPERATOR, RESET_GUEST] {
        root.vms[slot].reset = ok;
        assert_eq!(root.validate_vm(slot), Ok(()));
    }
    root.vms[slot].reset = 3;
    assert_eq!(
        root.validate_vm(slot),
        Err(ArenaError::BadReset { slot, raw: 3 })
    );
}
