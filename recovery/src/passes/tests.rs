use super::*;
use hypervisor::arena::{
    set_text, ArenaError, ArenaRoot, Journal, Phase, VmRecord, VmState, REASON_LEN,
};
use hypervisor::vmx::controls::{primary, ControlSet};
use hypervisor::vmx::fields::{FakeVmcs, InstructionError};
use std::boxed::Box;
use std::format;
use std::string::String;
use std::vec::Vec;

const BASE: u64 = 0x1f60_0000;
const SIZE: u64 = 8 << 20;

fn arena() -> Box<ArenaRoot> {
    // SAFETY: every field of ArenaRoot is an integer, an array of integers or an atomic,
    // for which all-zero bytes are a valid value.
    let mut root = unsafe { Box::<ArenaRoot>::new_zeroed().assume_init() };
    root.init(BASE, SIZE).unwrap();
    root
}

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

#[test]
fn handling_exits_roll_back_and_half_committed_ones_are_left_to_roll_forward() {
    let mut root = arena();
    let a = add_vm(&mut root, "alpha", 0x0100_0000);
    let b = add_vm(&mut root, "beta", 0x0200_0000);
    let c = add_vm(&mut root, "gamma", 0x0300_0000);
    root.vms[a].vcpu.journal.phase = Phase::Handling as u32;
    root.vms[a].vcpu.launched = 1;
    root.vms[b].vcpu.journal.phase = Phase::Committing as u32;
    root.vms[c].vcpu.journal.phase = Phase::Committed as u32;
    let r = roll_back_exits(&mut root);
    assert_eq!(r.rolled_back, 1);
    assert_eq!(r.forward_slots, 1 << b);
    assert_eq!(r.rolled_back_slots, 1 << a);
    assert_eq!(root.vms[a].vcpu.journal.phase, Phase::InGuest as u32);
    assert_eq!(root.vms[a].vcpu.launched, 0, "every VMCS was cleared");
    assert_eq!(root.vms[b].state(), Some(VmState::Runnable));
    assert_eq!(root.vms[b].vcpu.journal.phase, Phase::Committing as u32);
    assert_eq!(root.vms[c].state(), Some(VmState::Runnable));
    // A second pass (a retried recovery) finds nothing more to do.
    assert_eq!(roll_back_exits(&mut root).rolled_back, 0);
}

#[test]
fn held_arena_lock_is_released_once() {
    let root = arena();
    root.lock.acquire(0, 1);
    assert_eq!(release_locks(&root), 1);
    assert_eq!(release_locks(&root), 0);
}

// ---------------------------------------------------------------------------------------
// Helpers for the tests below.

/// The stop reason `check_vms` gives for `e`, cut as `set_stop_reason` cuts it.
fn corrupt_reason(e: ArenaError) -> String {
    let mut s = format!("recovery: state corrupt: {e}");
    s.truncate(REASON_LEN - 1);
    s
}

/// Three valid runnable VMs in slots 0, 1, 2.
fn three_vms() -> Box<ArenaRoot> {
    let mut root = arena();
    add_vm(&mut root, "alpha", 0x0100_0000);
    add_vm(&mut root, "beta", 0x0200_0000);
    add_vm(&mut root, "gamma", 0x0300_0000);
    root.validate(BASE, SIZE).unwrap();
    root
}

fn assert_untouched(root: &ArenaRoot, slot: usize) {
    assert_eq!(
        root.vms[slot].state(),
        Some(VmState::Runnable),
        "slot {slot}"
    );
    assert_eq!(root.vms[slot].stop_reason(), "", "slot {slot}");
}

// ---------------------------------------------------------------------------------------
// release_locks

#[test]
fn free_arena_lock_is_not_counted_and_a_released_lock_can_be_taken_again() {
    let root = arena();
    assert_eq!(release_locks(&root), 0);
    root.lock.acquire(3, 7);
    assert_eq!(root.lock.holder(), Some(3));
    assert_eq!(release_locks(&root), 1);
    assert_eq!(root.lock.holder(), None);
    root.lock.acquire(0, 8);
    assert_eq!(root.lock.holder(), Some(0));
}

// ---------------------------------------------------------------------------------------
// roll_back_exits

#[test]
fn rolled_back_exit_keeps_its_journal_for_the_guest_state_check() {
    let mut root = arena();
    let a = add_vm(&mut root, "alpha", 0x0100_0000);
    root.vms[a].vcpu.journal = Journal {
        phase: Phase::Handling as u32,
        exit_reason: 30,
        exit_seq: 1234,
        rip_at_exit: 0xffff_ffff_8100_0010,
        exit_digest: 0,
    };
    let r = roll_back_exits(&mut root);
    assert_eq!(
        r,
        RollBack {
            rolled_back: 1,
            rolled_back_slots: 1 << a,
            forward_slots: 0,
        }
    );
    let j = root.vms[a].vcpu.journal;
    assert_eq!(j.phase, Phase::InGuest as u32);
    assert_eq!((j.exit_reason, j.exit_seq), (30, 1234));
    assert_eq!(j.rip_at_exit, 0xffff_ffff_8100_0010);
    assert_untouched(&root, a);
}

#[test]
fn every_rolled_back_slot_is_marked() {
    let mut root = arena();
    let slots: Vec<usize> = (0..6)
        .map(|i| add_vm(&mut root, &format!("vm{i}"), 0x0100_0000 * (i as u64 + 1)))
        .collect();
    for &s in &[slots[0], slots[3], slots[5]] {
        root.vms[s].vcpu.journal.phase = Phase::Handling as u32;
    }
    // A stopped VM's handled exit rolls back too (its journal must be consistent if it
    // is ever reset), and it is counted.
    root.vms[slots[5]].set_state(VmState::Stopped);
    let r = roll_back_exits(&mut root);
    assert_eq!(r.rolled_back, 3);
    assert_eq!(r.forward_slots, 0);
    assert_eq!(
        r.rolled_back_slots,
        (1 << slots[0]) | (1 << slots[3]) | (1 << slots[5])
    );
    for &s in &slots {
        assert_eq!(root.vms[s].vcpu.journal.phase, Phase::InGuest as u32);
    }
}

#[test]
fn half_committed_exit_of_a_resumable_vm_only_is_rolled_forward() {
    let mut root = arena();
    let waiting = add_vm(&mut root, "waiting", 0x0100_0000);
    let halted = add_vm(&mut root, "halted", 0x0200_0000);
    let stopped = add_vm(&mut root, "stopped", 0x0300_0000);
    let off = add_vm(&mut root, "off", 0x0400_0000);
    root.vms[waiting].set_state(VmState::Waiting);
    root.vms[halted].set_state(VmState::Halted);
    root.vms[stopped].set_state(VmState::Stopped);
    root.vms[stopped].set_stop_reason(format_args!("triple fault"));
    root.vms[off].set_state(VmState::Off);
    for slot in [waiting, halted, stopped, off] {
        root.vms[slot].vcpu.journal.phase = Phase::Committing as u32;
        root.vms[slot].vcpu.journal.exit_seq = 42;
    }
    let r = roll_back_exits(&mut root);
    assert_eq!(
        r,
        RollBack {
            rolled_back: 0,
            rolled_back_slots: 0,
            forward_slots: 1 << waiting,
        },
        "only a VM that will run again needs its commit finished"
    );
    for slot in [waiting, halted, stopped, off] {
        assert_eq!(root.vms[slot].vcpu.journal.phase, Phase::Committing as u32);
    }
    assert_eq!(root.vms[waiting].state(), Some(VmState::Waiting));
    assert_eq!(root.vms[stopped].stop_reason(), "triple fault");
    // A retried recovery finds the same.
    assert_eq!(roll_back_exits(&mut root), r);
}

#[test]
fn committed_and_in_guest_journals_are_untouched_but_launched_is_cleared() {
    let mut root = arena();
    let a = add_vm(&mut root, "alpha", 0x0100_0000);
    let b = add_vm(&mut root, "beta", 0x0200_0000);
    root.vms[a].vcpu.journal = Journal {
        phase: Phase::Committed as u32,
        exit_reason: 12,
        exit_seq: 9,
        rip_at_exit: 0x1000,
        exit_digest: 0,
    };
    root.vms[b].vcpu.journal = Journal {
        phase: Phase::InGuest as u32,
        exit_reason: 1,
        exit_seq: 10,
        rip_at_exit: 0x2000,
        exit_digest: 0,
    };
    let (ja, jb) = (root.vms[a].vcpu.journal, root.vms[b].vcpu.journal);
    root.vms[a].vcpu.launched = 1;
    root.vms[b].vcpu.launched = 1;
    assert_eq!(roll_back_exits(&mut root), RollBack::default());
    assert_eq!(root.vms[a].vcpu.journal, ja);
    assert_eq!(root.vms[b].vcpu.journal, jb);
    assert_eq!(root.vms[a].vcpu.launched, 0, "every VMCS was cleared");
    assert_eq!(root.vms[b].vcpu.launched, 0, "every VMCS was cleared");
    assert_untouched(&root, a);
    assert_untouched(&root, b);
}

#[test]
fn free_slots_and_unreadable_journals_are_left_alone() {
    let mut root = arena();
    let a = add_vm(&mut root, "alpha", 0x0100_0000);
    // Stale data in a free slot: not a VM, so nothing to roll back.
    root.vms[5].vcpu.journal.phase = Phase::Handling as u32;
    root.vms[5].vcpu.launched = 1;
    // An invalid phase is check_vms's business.
    root.vms[a].vcpu.journal.phase = 9;
    root.vms[a].vcpu.launched = 1;
    assert_eq!(roll_back_exits(&mut root), RollBack::default());
    assert_eq!(root.vms[5].vcpu.journal.phase, Phase::Handling as u32);
    assert_eq!(root.vms[5].vcpu.launched, 1);
    assert_eq!(root.vms[a].vcpu.journal.phase, 9);
    assert_eq!(root.vms[a].vcpu.launched, 0);
    assert_untouched(&root, a);
}

#[test]
fn roll_back_is_idempotent() {
    let mut root = three_vms();
    root.vms[0].vcpu.journal.phase = Phase::Handling as u32;
    root.vms[1].vcpu.journal.phase = Phase::Committing as u32;
    root.vms[2].vcpu.journal.phase = Phase::Committed as u32;
    let first = roll_back_exits(&mut root);
    assert_eq!((first.rolled_back, first.forward_slots), (1, 1 << 1));
    let snapshot: Vec<_> = root
        .vms
        .iter()
        .map(|vm| (vm.state, vm.vcpu.journal, vm.vcpu.launched, vm.stop_reason))
        .collect();
    let second = roll_back_exits(&mut root);
    assert_eq!((second.rolled_back, second.forward_slots), (0, 1 << 1));
    let again: Vec<_> = root
        .vms
        .iter()
        .map(|vm| (vm.state, vm.vcpu.journal, vm.vcpu.launched, vm.stop_reason))
        .collect();
    assert_eq!(snapshot, again);
}

// ---------------------------------------------------------------------------------------
// check_vms

#[test]
fn valid_vms_are_not_stopped() {
    let mut root = three_vms();
    assert_eq!(check_vms(&mut root), 0);
    for slot in 0..3 {
        assert_untouched(&root, slot);
    }
    assert!(root.vms[3..].iter().all(|vm| !live(vm)));
}

#[test]
fn each_corruption_validate_vm_detects_stops_only_that_vm() {
    type Corrupt = fn(&mut ArenaRoot);
    let cases: &[(&str, Corrupt, ArenaError)] = &[
        (
            "name",
            |r| r.vms[1].name[0] = b'B',
            ArenaError::BadVmName { slot: 1 },
        ),
        (
            "config checksum",
            |r| r.vms[1].config.entry ^= 1,
            ArenaError::BadVmConfig { slot: 1 },
        ),
        (
            "journal phase",
            |r| r.vms[1].vcpu.journal.phase = 4,
            ArenaError::BadJournal { slot: 1 },
        ),
        (
            "device state",
            |r| r.vms[1].devices.pit.channels[0].mode = 9,
            ArenaError::BadDevice {
                slot: 1,
                device: "pit",
                what: "channel mode out of range",
            },
        ),
        (
            "RAM size zero",
            |r| {
                r.vms[1].config.ram_size = 0;
                r.vms[1].seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "RAM start misaligned",
            |r| {
                // Kept clear of gamma's RAM so that only the alignment is wrong.
                r.vms[1].config.ram_start += 0x800;
                r.vms[1].config.ram_size = 1 << 20;
                r.vms[1].seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "RAM overlapping the arena",
            |r| {
                r.vms[1].config.ram_start = BASE + SIZE - 0x1000;
                r.vms[1].seal_config();
            },
            ArenaError::RamOutOfBounds { slot: 1 },
        ),
        (
            "VMCS page",
            |r| r.vms[1].vcpu.vmcs = 0x1000,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "VMCS",
                addr: 0x1000,
            },
        ),
        (
            "XSAVE page",
            |r| r.vms[1].vcpu.xsave = BASE,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "XSAVE area",
                addr: BASE,
            },
        ),
        (
            "EPT page",
            |r| r.vms[1].ept_root = BASE + SIZE - 0x1000,
            ArenaError::PageNotOwned {
                slot: 1,
                what: "EPT root",
                addr: BASE + SIZE - 0x1000,
            },
        ),
    ];
    for &(what, corrupt, expected) in cases {
        let mut root = three_vms();
        corrupt(&mut root);
        assert_eq!(root.validate_vm(1), Err(expected), "{what}");
        assert_eq!(check_vms(&mut root), 1, "{what}");
        assert_eq!(root.vms[1].state(), Some(VmState::Stopped), "{what}");
        assert_eq!(
            root.vms[1].stop_reason(),
            corrupt_reason(expected),
            "{what}"
        );
        assert_untouched(&root, 0);
        assert_untouched(&root, 2);
        // Stopped, the record stays invalid and is stopped again by a retried recovery,
        // but not counted twice.
        assert_eq!(check_vms(&mut root), 0, "{what}");
        assert_eq!(root.vms[1].state(), Some(VmState::Stopped), "{what}");
    }
}

#[test]
fn corrupt_vm_that_was_already_stopped_is_not_counted() {
    let mut root = three_vms();
    root.vms[2].set_state(VmState::Stopped);
    root.vms[2].set_stop_reason(format_args!("powered off by the operator"));
    root.vms[2].vcpu.journal.phase = 77;
    assert_eq!(check_vms(&mut root), 0);
    assert_eq!(root.vms[2].state(), Some(VmState::Stopped));
    assert_eq!(
        root.vms[2].stop_reason(),
        corrupt_reason(ArenaError::BadJournal { slot: 2 })
    );
}

#[test]
fn unreadable_state_is_stopped_and_keeps_its_slot() {
    let mut root = three_vms();
    root.vms[1].state = 77;
    // Garbage in a free slot's state is a record that cannot be trusted either.
    root.vms[9].state = 0xdead;
    assert_eq!(check_vms(&mut root), 2);
    assert_eq!(root.vms[1].state(), Some(VmState::Stopped));
    assert_eq!(
        root.vms[1].stop_reason(),
        "recovery: state corrupt: vm slot 1: invalid state 77"
    );
    assert_eq!(root.vms[9].state(), Some(VmState::Stopped));
    assert_eq!(
        root.vms[9].stop_reason(),
        "recovery: state corrupt: vm slot 9: invalid state 57005"
    );
    assert_eq!(
        root.free_slot(),
        Some(3),
        "neither slot is handed out again"
    );
    assert_untouched(&root, 0);
    assert_untouched(&root, 2);
}

#[test]
fn overlapping_ram_stops_only_the_later_vm() {
    let mut root = three_vms();
    root.vms[2].config.ram_start = 0x0100_8000 & !0xfff; // inside alpha's RAM
    root.vms[2].seal_config();
    root.validate_vm(2).unwrap();
    assert_eq!(check_vms(&mut root), 1);
    assert_eq!(root.vms[2].state(), Some(VmState::Stopped));
    assert_eq!(
        root.vms[2].stop_reason(),
        corrupt_reason(ArenaError::RamOverlap { a: 0, b: 2 })
    );
    assert_eq!(
        root.vms[2].stop_reason(),
        "recovery: state corrupt: vm slots 0 and 2: guest RAM overlaps"
    );
    assert_untouched(&root, 0);
    assert_untouched(&root, 1);
    // A retried recovery leaves it stopped and does not count it again.
    assert_eq!(check_vms(&mut root), 0);
}

#[test]
fn duplicate_name_stops_only_the_later_vm() {
    let mut root = three_vms();
    set_text(&mut root.vms[2].name, "beta");
    root.vms[2].seal_config();
    root.validate_vm(2).unwrap();
    assert_eq!(check_vms(&mut root), 1);
    assert_eq!(root.vms[2].state(), Some(VmState::Stopped));
    assert_eq!(
        root.vms[2].stop_reason(),
        "recovery: state corrupt: vm slots 1 and 2: same name"
    );
    assert_untouched(&root, 0);
    assert_untouched(&root, 1);
}

#[test]
fn conflict_with_a_vm_that_cannot_run_stops_nothing_more() {
    // The later VM is halted: it is not resumable, so it is left as it is.
    let mut root = three_vms();
    root.vms[2].config.ram_start = 0x0200_0000;
    root.vms[2].seal_config();
    root.vms[2].set_state(VmState::Halted);
    assert_eq!(check_vms(&mut root), 0);
    assert_eq!(root.vms[2].state(), Some(VmState::Halted));
    assert_untouched(&root, 1);

    // The later VM is corrupt as well: stopped once, for its own corruption.
    let mut root = three_vms();
    root.vms[2].config.ram_start = 0x0200_0000;
    root.vms[2].seal_config();
    root.vms[2].vcpu.journal.phase = 8;
    assert_eq!(check_vms(&mut root), 1);
    assert_eq!(
        root.vms[2].stop_reason(),
        corrupt_reason(ArenaError::BadJournal { slot: 2 })
    );
    assert_untouched(&root, 1);
}

#[test]
fn stale_records_in_free_slots_do_not_conflict() {
    let mut root = three_vms();
    let mut stale = root.vms[0];
    stale.set_state(VmState::Free);
    root.vms[7] = stale; // same name, same RAM, but free
    assert_eq!(check_vms(&mut root), 0);
    assert_eq!(root.vms[7].state(), Some(VmState::Free));
    for slot in 0..3 {
        assert_untouched(&root, slot);
    }
}

#[test]
fn every_conflicting_vm_is_stopped_however_many_conflicts_there_are() {
    // Slots 0-11 share one RAM range (66 pairs), slots 12 and 13 share another.
    let mut root = arena();
    for i in 0..14u64 {
        let ram = if i < 12 { 0x0100_0000 } else { 0x4000_0000 };
        add_vm(&mut root, &format!("vm{i}"), ram);
    }
    assert_eq!(root.conflicts().count(), 66 + 1);
    assert_eq!(check_vms(&mut root), 11 + 1);
    assert_eq!(root.vms[12].state(), Some(VmState::Runnable));
    assert_eq!(
        root.vms[13].state(),
        Some(VmState::Stopped),
        "slot 13 shares slot 12's RAM"
    );
}

// ---------------------------------------------------------------------------------------
// stop_inflight

#[test]
fn inflight_vm_is_stopped_when_it_can_run() {
    for state in [VmState::Runnable, VmState::Waiting] {
        let mut root = three_vms();
        root.vms[1].set_state(state);
        assert_eq!(stop_inflight(&mut root, 1, 3), 1, "{state:?}");
        assert_eq!(root.vms[1].state(), Some(VmState::Stopped));
        assert_eq!(
            root.vms[1].stop_reason(),
            "recovery: its exit was in flight in 3 failed recoveries"
        );
        assert_untouched(&root, 0);
        assert_untouched(&root, 2);
        // Only once.
        assert_eq!(stop_inflight(&mut root, 1, 4), 0);
        assert_eq!(
            root.vms[1].stop_reason(),
            "recovery: its exit was in flight in 3 failed recoveries"
        );
    }
}

#[test]
fn inflight_slot_that_cannot_run_or_does_not_exist_is_ignored() {
    let mut root = three_vms();
    root.vms[0].set_state(VmState::Halted);
    root.vms[1].set_state(VmState::Off);
    root.vms[2].set_state(VmState::Stopped);
    root.vms[2].set_stop_reason(format_args!("vm stop"));
    for slot in [0, 1, 2, 3] {
        assert_eq!(stop_inflight(&mut root, slot, 3), 0, "slot {slot}");
    }
    assert_eq!(root.vms[0].state(), Some(VmState::Halted));
    assert_eq!(root.vms[1].state(), Some(VmState::Off));
    assert_eq!(root.vms[2].stop_reason(), "vm stop");
    assert_eq!(root.vms[3].state(), Some(VmState::Free));
    // No exit in flight, and slots past the table.
    assert_eq!(
        stop_inflight(&mut root, hypervisor::arena::recovery::NO_SLOT, 3),
        0
    );
    assert_eq!(stop_inflight(&mut root, MAX_VMS as u32, 3), 0);
}

// ---------------------------------------------------------------------------------------
// rederive_scheduler

#[test]
fn scheduler_counts_runnable_and_waiting_vms_only() {
    let mut root = arena();
    assert_eq!(rederive_scheduler(&root), 0);
    let states = [
        VmState::Runnable,
        VmState::Waiting,
        VmState::Halted,
        VmState::Stopped,
        VmState::Off,
        VmState::Runnable,
    ];
    for (i, state) in states.into_iter().enumerate() {
        let slot = add_vm(&mut root, &format!("vm{i}"), 0x0100_0000 * (i as u64 + 1));
        root.vms[slot].set_state(state);
    }
    // A slot whose state is garbage is not schedulable.
    root.vms[10].state = 99;
    assert_eq!(rederive_scheduler(&root), 3);
}

// ---------------------------------------------------------------------------------------
// check_consoles

fn set_console(vm: &mut VmRecord, bytes: &[u8]) {
    vm.console[..bytes.len()].copy_from_slice(bytes);
    vm.console_len = bytes.len() as u32;
}

#[test]
fn console_length_past_the_buffer_is_reset() {
    let mut root = three_vms();
    set_console(&mut root.vms[0], b"partial line");
    root.vms[0].console_len = CONSOLE_LINE as u32 + 1;
    root.vms[1].console_len = u32::MAX;
    assert_eq!(check_consoles(&mut root), 2);
    assert_eq!(root.vms[0].console_len, 0);
    assert_eq!(root.vms[1].console_len, 0);
    assert_eq!(check_consoles(&mut root), 0);
}

#[test]
fn full_clean_console_buffer_is_kept() {
    let mut root = three_vms();
    let line = [b'x'; CONSOLE_LINE];
    set_console(&mut root.vms[0], &line);
    assert_eq!(check_consoles(&mut root), 0);
    assert_eq!(root.vms[0].console_len as usize, CONSOLE_LINE);
    assert_eq!(root.vms[0].console, line);
}

#[test]
fn console_control_bytes_are_replaced() {
    let mut root = three_vms();
    set_console(&mut root.vms[1], b"ok\tgo\x1b[31m\x00\x07\x7f\x80\xffend~ ");
    // Past the length: not part of the line, not looked at.
    root.vms[1].console[40] = 0x1b;
    set_console(&mut root.vms[2], b"all printable: ~!@#$%^&*()\t");
    assert_eq!(check_consoles(&mut root), 1);
    let vm = &root.vms[1];
    assert_eq!(
        &vm.console[..vm.console_len as usize],
        b"ok\tgo?[31m?????end~ "
    );
    assert_eq!(vm.console[40], 0x1b);
    assert_eq!(
        &root.vms[2].console[..root.vms[2].console_len as usize],
        b"all printable: ~!@#$%^&*()\t"
    );
    assert_eq!(check_consoles(&mut root), 0, "repaired once");
}

#[test]
fn length_and_bytes_both_bad_count_once_and_free_slots_are_skipped() {
    let mut root = three_vms();
    set_console(&mut root.vms[0], b"\x01\x02");
    root.vms[0].console_len = 500;
    root.vms[6].console_len = 500; // a free slot
    root.vms[6].console[0] = 0;
    assert_eq!(check_consoles(&mut root), 1);
    assert_eq!(root.vms[0].console_len, 0);
    assert_eq!(root.vms[6].console_len, 500);
}

// ---------------------------------------------------------------------------------------
// rewrite_vmcs

fn known_controls() -> Controls {
    Controls {
        set: ControlSet {
            pin: 0x29,
            proc: 0x8401_6172,
            proc2: 0x10a2,
            exit: 0x3_6dff,
            entry: 0x93ff & !ENTRY_IA32E_MODE_GUEST,
        },
        io_bitmaps: [0x1f70_0000, 0x1f70_1000],
        msr_bitmap: 0x1f70_2000,
        eptp: 0x1f70_305e,
        vpid: Some(4),
        cr0_mask: 0x6000_0021,
        cr4_mask: 0x2000,
        tsc_offset: 0u64.wrapping_sub(123_456),
        interrupt_window: false,
        ia32e_guest: false,
    }
}

fn known_host() -> HostState {
    HostState {
        cr0: 0x8001_0033,
        cr3: 0x20_0000,
        cr4: 0x2020,
        cs: 8,
        tr: 0x18,
        tr_base: 0x23_0000,
        gdtr_base: 0x23_1000,
        idtr_base: 0x23_2000,
        efer: 0x500,
        pat: 0x0007_0406_0007_0406,
        rip: 0x20_1234,
    }
}

/// A VMCS left by a dying instance: every host and control field garbage.
fn garbage_vmcs(entry: u64) -> FakeVmcs {
    use VmcsField as F;
    let mut v = FakeVmcs::new();
    for field in [
        F::HostCr0,
        F::HostCr3,
        F::HostCr4,
        F::HostCsSelector,
        F::HostSsSelector,
        F::HostDsSelector,
        F::HostEsSelector,
        F::HostFsSelector,
        F::HostGsSelector,
        F::HostTrSelector,
        F::HostFsBase,
        F::HostGsBase,
        F::HostTrBase,
        F::HostGdtrBase,
        F::HostIdtrBase,
        F::HostIa32Efer,
        F::HostIa32Pat,
        F::HostRip,
        F::PinBasedControls,
        F::PrimaryProcBasedControls,
        F::SecondaryProcBasedControls,
        F::ExitControls,
        F::ExceptionBitmap,
        F::IoBitmapA,
        F::IoBitmapB,
        F::MsrBitmap,
        F::EptPointer,
        F::VmcsLinkPointer,
        F::Cr0GuestHostMask,
        F::Cr4GuestHostMask,
        F::TscOffset,
        F::Vpid,
    ] {
        v.poke(field, 0xdead_beef_dead_beef);
    }
    v.poke(F::EntryControls, entry);
    v.poke(F::GuestRip, 0xffff_ffff_8100_0000);
    v.poke(F::GuestCr3, 0x1234_5000);
    v
}

fn assert_rewritten(v: &FakeVmcs, c: &Controls, h: &HostState, entry: u64, proc: u64) {
    use VmcsField as F;
    let expect = [
        (F::HostCr0, h.cr0),
        (F::HostCr3, h.cr3),
        (F::HostCr4, h.cr4),
        (F::HostCsSelector, u64::from(h.cs)),
        (F::HostSsSelector, 0),
        (F::HostDsSelector, 0),
        (F::HostEsSelector, 0),
        (F::HostFsSelector, 0),
        (F::HostGsSelector, 0),
        (F::HostTrSelector, u64::from(h.tr)),
        (F::HostFsBase, 0),
        (F::HostGsBase, 0),
        (F::HostTrBase, h.tr_base),
        (F::HostGdtrBase, h.gdtr_base),
        (F::HostIdtrBase, h.idtr_base),
        (F::HostIa32Efer, h.efer),
        (F::HostIa32Pat, h.pat),
        (F::HostRip, h.rip),
        (F::PinBasedControls, u64::from(c.set.pin)),
        (F::PrimaryProcBasedControls, proc),
        (F::SecondaryProcBasedControls, u64::from(c.set.proc2)),
        (F::ExitControls, u64::from(c.set.exit)),
        (F::EntryControls, entry),
        (F::ExceptionBitmap, 0),
        (F::IoBitmapA, c.io_bitmaps[0]),
        (F::IoBitmapB, c.io_bitmaps[1]),
        (F::MsrBitmap, c.msr_bitmap),
        (F::EptPointer, c.eptp),
        (F::VmcsLinkPointer, u64::MAX),
        (F::Cr0GuestHostMask, c.cr0_mask),
        (F::Cr4GuestHostMask, c.cr4_mask),
        (F::TscOffset, c.tsc_offset),
        (F::Vpid, u64::from(c.vpid.unwrap())),
    ];
    for (field, value) in expect {
        assert_eq!(v.read(field).unwrap(), value, "{field}");
        assert!(v.was_written(field), "{field}");
    }
    // Guest state is not the rewrite's business.
    assert_eq!(v.read(F::GuestRip).unwrap(), 0xffff_ffff_8100_0000);
    assert_eq!(v.read(F::GuestCr3).unwrap(), 0x1234_5000);
    assert!(!v.was_written(F::GuestRip));
    assert!(!v.was_written(F::GuestCr3));
}

#[test]
fn rewrite_restores_host_and_control_fields_keeping_ia32e_mode_set() {
    let (c, h) = (known_controls(), known_host());
    // The guest is in long mode; the known-good configuration says otherwise.
    let mut v = garbage_vmcs(0xffff_ffff);
    rewrite_vmcs(&mut v, &c, &h).unwrap();
    let entry = u64::from(c.set.entry | ENTRY_IA32E_MODE_GUEST);
    assert_rewritten(&v, &c, &h, entry, u64::from(c.set.proc));
}

#[test]
fn rewrite_keeps_ia32e_mode_clear_and_takes_the_interrupt_window_from_the_controls() {
    let h = known_host();
    let c = Controls {
        ia32e_guest: true,
        interrupt_window: true,
        ..known_controls()
    };
    // The guest is not in long mode: the entry control stays clear whatever the
    // configuration says.
    let mut v = garbage_vmcs(0xffff_ffff & !u64::from(ENTRY_IA32E_MODE_GUEST));
    rewrite_vmcs(&mut v, &c, &h).unwrap();
    let proc = u64::from(c.set.proc | primary::INTERRUPT_WINDOW_EXITING);
    assert_rewritten(&v, &c, &h, u64::from(c.set.entry), proc);

    // The window bit left set in the VMCS goes when the controls say it is closed.
    let mut v = garbage_vmcs(u64::from(ENTRY_IA32E_MODE_GUEST));
    v.poke(
        VmcsField::PrimaryProcBasedControls,
        u64::from(c.set.proc | primary::INTERRUPT_WINDOW_EXITING),
    );
    let closed = Controls {
        interrupt_window: false,
        ..c
    };
    rewrite_vmcs(&mut v, &closed, &h).unwrap();
    assert_rewritten(
        &v,
        &closed,
        &h,
        u64::from(c.set.entry | ENTRY_IA32E_MODE_GUEST),
        u64::from(c.set.proc),
    );
}

#[test]
fn rewrite_reports_a_vmcs_it_cannot_access() {
    let unsupported = Err(VmxError::VmFailValid(
        InstructionError::UnsupportedComponent,
    ));
    let mut v = garbage_vmcs(0);
    v.set_unsupported(VmcsField::EntryControls);
    assert_eq!(
        rewrite_vmcs(&mut v, &known_controls(), &known_host()),
        unsupported
    );
    let mut v = garbage_vmcs(0);
    v.set_unsupported(VmcsField::HostRip);
    assert_eq!(
        rewrite_vmcs(&mut v, &known_controls(), &known_host()),
        unsupported
    );
}

// ---------------------------------------------------------------------------------------
// check_guest_state

/// IA32_VMX_CR0_FIXED0/1 and IA32_VMX_CR4_FIXED0/1 as a typical processor reports them.
const CR_FIXED: [u64; 4] = [0x8000_0021, 0xffff_ffff, 0x2000, 0x3727ff];
const EFER_LME_LMA: u64 = 0x500;
const RIP: u64 = 0xffff_ffff_8100_2345;

/// A 64-bit guest's state as a VM exit leaves it.
fn long_mode_guest() -> FakeVmcs {
    use VmcsField as F;
    let mut v = FakeVmcs::new();
    v.poke(F::GuestRip, RIP);
    v.poke(F::GuestRflags, 0x246);
    v.poke(F::GuestCr0, 0x8005_0033);
    v.poke(F::GuestCr4, 0x0000_26f0);
    v.poke(F::GuestIa32Efer, EFER_LME_LMA | 1);
    v.poke(F::EntryControls, u64::from(0x11ff | ENTRY_IA32E_MODE_GUEST));
    v
}

fn vm_at(rip: u64) -> VmRecord {
    let mut vm = VmRecord::EMPTY;
    vm.vcpu.journal.rip_at_exit = rip;
    vm
}

#[test]
fn valid_guest_state_passes() {
    let v = long_mode_guest();
    assert_eq!(check_guest_state(&v, &vm_at(RIP), true, CR_FIXED), Ok(()));
    assert_eq!(check_guest_state(&v, &vm_at(0), false, CR_FIXED), Ok(()));

    // A real-mode guest (unrestricted guest): PE and PG clear, no long mode.
    use VmcsField as F;
    let mut v = FakeVmcs::new();
    v.poke(F::GuestRip, 0xfff0);
    v.poke(F::GuestRflags, 0x2);
    v.poke(F::GuestCr0, 0x20);
    v.poke(F::GuestCr4, 0x2000);
    v.poke(F::GuestIa32Efer, 0);
    v.poke(F::EntryControls, 0x11ff);
    assert_eq!(
        check_guest_state(&v, &vm_at(0xfff0), true, CR_FIXED),
        Ok(())
    );
}

#[test]
fn rip_must_be_canonical() {
    for rip in [
        0x0000_8000_0000_0000,
        0xffff_7fff_ffff_ffff,
        0x8000_0000_0000_0000,
    ] {
        let mut v = long_mode_guest();
        v.poke(VmcsField::GuestRip, rip);
        assert_eq!(
            check_guest_state(&v, &vm_at(rip), false, CR_FIXED),
            Err(BadGuest::RipNotCanonical(rip)),
            "{rip:#x}"
        );
    }
    for rip in [0, 0x0000_7fff_ffff_ffff, 0xffff_8000_0000_0000, u64::MAX] {
        let mut v = long_mode_guest();
        v.poke(VmcsField::GuestRip, rip);
        assert_eq!(
            check_guest_state(&v, &vm_at(rip), true, CR_FIXED),
            Ok(()),
            "{rip:#x}"
        );
    }
}

#[test]
fn rip_must_match_the_journal_only_for_a_rolled_back_exit() {
    let v = long_mode_guest();
    let vm = vm_at(RIP - 2);
    assert_eq!(
        check_guest_state(&v, &vm, true, CR_FIXED),
        Err(BadGuest::RipMoved {
            saved: RIP - 2,
            vmcs: RIP
        })
    );
    // A committed exit advanced RIP: the journal's is the old one.
    assert_eq!(check_guest_state(&v, &vm, false, CR_FIXED), Ok(()));
}

#[test]
fn rflags_needs_bit_1_and_no_reserved_bits() {
    let mut v = long_mode_guest();
    v.poke(VmcsField::GuestRflags, 0x244);
    assert_eq!(
        check_guest_state(&v, &vm_at(RIP), true, CR_FIXED),
        Err(BadGuest::Rflags(0x244))
    );
    for bit in [3, 5, 15, 22, 31, 32, 63] {
        let rflags = 0x246 | 1u64 << bit;
        let mut v = long_mode_guest();
        v.poke(VmcsField::GuestRflags, rflags);
        assert_eq!(
            check_guest_state(&v, &vm_at(RIP), true, CR_FIXED),
            Err(BadGuest::Rflags(rflags)),
            "bit {bit}"
        );
    }
    // IF, DF, AC, ID: ordinary flags.
    let mut v = long_mode_guest();
    v.poke(
        VmcsField::GuestRflags,
        0x2 | 1 << 9 | 1 << 10 | 1 << 18 | 1 << 21,
    );
    assert_eq!(check_guest_state(&v, &vm_at(RIP), true, CR_FIXED), Ok(()));
}

#[test]
fn cr0_must_respect_the_fixed_bits_except_pe_and_pg() {
    let check = |cr0: u64, fixed: [u64; 4]| {
        let mut v = long_mode_guest();
        v.poke(VmcsField::GuestCr0, cr0);
        // Not long mode, so that CR0.PG clear is a consistent guest.
        v.poke(VmcsField::GuestIa32Efer, 0);
        v.poke(VmcsField::EntryControls, 0x11ff);
        check_guest_state(&v, &vm_at(RIP), true, fixed)
    };
    // NE (bit 5) is fixed to 1.
    assert_eq!(
        check(0x8000_0011, CR_FIXED),
        Err(BadGuest::Cr0(0x8000_0011))
    );
    // PE and PG may be clear (unrestricted guest).
    assert_eq!(check(0x20, CR_FIXED), Ok(()));
    assert_eq!(check(0x21, CR_FIXED), Ok(()));
    assert_eq!(check(0x8000_0021, CR_FIXED), Ok(()));
    // A bit fixed to 0 by FIXED1 (here: a processor that does not allow CR0.EM).
    let [f0, _, g0, g1] = CR_FIXED;
    let no_em = [f0, 0xffff_ffff & !(1 << 2), g0, g1];
    assert_eq!(check(0x8000_0035, no_em), Err(BadGuest::Cr0(0x8000_0035)));
    assert_eq!(check(0x8000_0031, no_em), Ok(()));
}

#[test]
fn cr0_high_bits_violate_fixed1() {
    let mut v = long_mode_guest();
    let cr0 = 0x8005_0033 | 1 << 32;
    v.poke(VmcsField::GuestCr0, cr0);
    assert_eq!(
        check_guest_state(&v, &vm_at(RIP), true, CR_FIXED),
        Err(BadGuest::Cr0(cr0))
    );
}

#[test]
fn cr4_must_respect_the_fixed_bits() {
    let check = |cr4: u64| {
        let mut v = long_mode_guest();
        v.poke(VmcsField::GuestCr4, cr4);
        check_guest_state(&v, &vm_at(RIP), true, CR_FIXED)
    };
    // VMXE (bit 13) is fixed to 1.
    assert_eq!(check(0x06f0), Err(BadGuest::Cr4(0x06f0)));
    // LA57 (12), SMXE (14) and bits FIXED1 leaves out are fixed to 0.
    for bit in [12, 14, 15, 19, 22, 32, 63] {
        let cr4 = 0x26f0 | 1u64 << bit;
        assert_eq!(check(cr4), Err(BadGuest::Cr4(cr4)), "bit {bit}");
    }
    assert_eq!(check(0x2000), Ok(()));
    assert_eq!(check(0x3727ff), Ok(()));
}

#[test]
fn efer_lma_must_match_the_ia32e_entry_control() {
    let entry_ia32e = u64::from(0x11ff | ENTRY_IA32E_MODE_GUEST);
    for (efer, entry, ok) in [
        (EFER_LME_LMA, entry_ia32e, true),
        (EFER_LME_LMA, 0x11ff, false),
        (0x100, entry_ia32e, false), // LME without LMA: paging not on yet
        (0, entry_ia32e, false),
        (0x100, 0x11ff, true),
        (0, 0x11ff, true),
    ] {
        let mut v = long_mode_guest();
        v.poke(VmcsField::GuestIa32Efer, efer);
        v.poke(VmcsField::EntryControls, entry);
        let expected = if ok {
            Ok(())
        } else {
            Err(BadGuest::LongModeMismatch)
        };
        assert_eq!(
            check_guest_state(&v, &vm_at(RIP), true, CR_FIXED),
            expected,
            "efer {efer:#x} entry {entry:#x}"
        );
    }
}

#[test]
fn unreadable_guest_state_is_reported() {
    let mut v = long_mode_guest();
    v.set_unsupported(VmcsField::GuestCr4);
    assert_eq!(
        check_guest_state(&v, &vm_at(RIP), true, CR_FIXED),
        Err(BadGuest::Vmcs(VmxError::VmFailValid(
            InstructionError::UnsupportedComponent
        )))
    );
}

#[test]
fn bad_guest_reasons_read_as_one_line() {
    let cases = [
        (
            BadGuest::RipNotCanonical(0x8000_0000_0000),
            "guest RIP 0x800000000000 is not canonical",
        ),
        (
            BadGuest::RipMoved {
                saved: 0x1000,
                vmcs: 0x1002,
            },
            "guest RIP 0x1002 differs from the journal's 0x1000",
        ),
        (BadGuest::Rflags(0x8), "guest RFLAGS 0x8 invalid"),
        (
            BadGuest::Cr0(0x11),
            "guest CR0 0x11 violates the VMX fixed bits",
        ),
        (
            BadGuest::Cr4(0x20),
            "guest CR4 0x20 violates the VMX fixed bits",
        ),
        (
            BadGuest::LongModeMismatch,
            "guest EFER.LMA disagrees with the entry controls",
        ),
    ];
    for (bad, text) in cases {
        assert_eq!(format!("{bad}"), text);
    }
    assert!(format!("{}", BadGuest::Vmcs(VmxError::VmFailInvalid)).starts_with("VMCS unreadable: "));
}

// ---------------------------------------------------------------------------------------
// redeliver

fn interrupted(info: u64, error: u64, len: u64) -> FakeVmcs {
    let mut v = FakeVmcs::new();
    v.poke(VmcsField::IdtVectoringInfo, info);
    v.poke(VmcsField::IdtVectoringErrorCode, error);
    v.poke(VmcsField::ExitInstructionLength, len);
    v
}

#[test]
fn interrupted_exception_is_redelivered_with_its_error_code() {
    // A #PF whose delivery caused the exit (bit 12, NMI unblocking, is not for entry).
    let mut v = interrupted(0x8000_1b0e, 2, 3);
    assert_eq!(redeliver(&mut v), Ok(1));
    assert_eq!(
        v.read(VmcsField::EntryInterruptionInfo).unwrap(),
        0x8000_0b0e
    );
    assert_eq!(v.read(VmcsField::EntryExceptionErrorCode).unwrap(), 2);
    assert!(!v.was_written(VmcsField::EntryInstructionLength));
}

#[test]
fn interrupted_external_interrupt_and_nmi_are_redelivered() {
    for info in [0x8000_0030, 0x8000_0202] {
        let mut v = interrupted(info, 0x55, 4);
        assert_eq!(redeliver(&mut v), Ok(1), "{info:#x}");
        assert_eq!(v.read(VmcsField::EntryInterruptionInfo).unwrap(), info);
        assert!(!v.was_written(VmcsField::EntryExceptionErrorCode));
        assert!(!v.was_written(VmcsField::EntryInstructionLength));
    }
}

#[test]
fn interrupted_software_event_is_redelivered_with_its_instruction_length() {
    // INT 0x80 (software interrupt), INT3 (software exception), ICEBP (privileged).
    for (info, len) in [(0x8000_0480, 2), (0x8000_0603, 1), (0x8000_0501, 1)] {
        let mut v = interrupted(info, 0, len);
        assert_eq!(redeliver(&mut v), Ok(1), "{info:#x}");
        assert_eq!(v.read(VmcsField::EntryInterruptionInfo).unwrap(), info);
        assert_eq!(v.read(VmcsField::EntryInstructionLength).unwrap(), len);
        assert!(!v.was_written(VmcsField::EntryExceptionErrorCode));
    }
}

#[test]
fn nothing_is_redelivered_without_valid_vectoring_info() {
    for info in [0, 0x0000_0b0e, 0x7fff_ffff] {
        let mut v = interrupted(info, 2, 3);
        assert_eq!(redeliver(&mut v), Ok(0), "{info:#x}");
        assert!(!v.was_written(VmcsField::EntryInterruptionInfo));
        assert!(!v.was_written(VmcsField::EntryExceptionErrorCode));
        assert!(!v.was_written(VmcsField::EntryInstructionLength));
    }
}

#[test]
fn queued_injection_is_not_overwritten() {
    let mut v = interrupted(0x8000_0b0e, 2, 3);
    v.poke(VmcsField::EntryInterruptionInfo, 0x8000_0030);
    assert_eq!(redeliver(&mut v), Ok(0));
    assert_eq!(
        v.read(VmcsField::EntryInterruptionInfo).unwrap(),
        0x8000_0030
    );
    assert!(!v.was_written(VmcsField::EntryInterruptionInfo));
    assert!(!v.was_written(VmcsField::EntryExceptionErrorCode));

    // A stale, invalid injection (bit 31 clear) does not count as queued.
    let mut v = interrupted(0x8000_0b0e, 2, 3);
    v.poke(VmcsField::EntryInterruptionInfo, 0x0000_0030);
    assert_eq!(redeliver(&mut v), Ok(1));
    assert_eq!(
        v.read(VmcsField::EntryInterruptionInfo).unwrap(),
        0x8000_0b0e
    );
}

#[test]
fn redeliver_reports_a_vmcs_it_cannot_access() {
    let mut v = interrupted(0x8000_0b0e, 2, 3);
    v.set_unsupported(VmcsField::IdtVectoringInfo);
    assert_eq!(
        redeliver(&mut v),
        Err(VmxError::VmFailValid(
            InstructionError::UnsupportedComponent
        ))
    );
    assert!(!v.was_written(VmcsField::EntryInterruptionInfo));
}

// ---------------------------------------------------------------------------------------
// check_suspects, stop_suspects, stop_culprits (issue 11)

use hypervisor::arena::recovery::MAX_ATTEMPTS;
use hypervisor::arena::suspect::{SUSPECT_FAILURES, SUSPECT_WINDOW_SECONDS};
use hypervisor::arena::{Cause, SuspectRecord};

/// Bochs's TSC rate: the window is 500 million ticks.
const HZ: u64 = 50_000_000;
const WINDOW: u64 = SUSPECT_WINDOW_SECONDS * HZ;
const SUSPECT_REASON: &str = "recovery: in flight at 3 hypervisor failures within 10 s";

fn three_vms_timed() -> Box<ArenaRoot> {
    let mut root = three_vms();
    root.boot.tsc_hz = HZ;
    root
}

fn failures(count: u32, first: u64, last: u64) -> SuspectRecord {
    SuspectRecord {
        count,
        first,
        last,
        ..SuspectRecord::EMPTY
    }
}

#[test]
fn believable_suspect_records_and_flags_are_kept() {
    let mut root = three_vms_timed();
    root.vms[0].suspect = failures(2, 100, 200);
    root.vms[1].bad_entry = hypervisor::arena::suspect::BAD_ENTRY_ON;
    let before = (root.vms[0].suspect, root.vms[1].bad_entry);
    assert_eq!(check_suspects(&mut root, 1000, WINDOW), 0);
    assert_eq!((root.vms[0].suspect, root.vms[1].bad_entry), before);
}

#[test]
fn unbelievable_suspect_records_and_flags_are_reset_and_counted_once_per_vm() {
    let now = 10 * WINDOW;
    let mut root = three_vms_timed();
    root.vms[0].suspect = failures(SUSPECT_FAILURES + 1, now - 5, now - 1);
    root.vms[0].bad_entry = 7;
    root.vms[1].suspect = failures(3, now - 5, now + 1);
    root.vms[2].suspect = failures(3, now - WINDOW - 1, now - 1);
    // A free slot's leftovers are not looked at.
    root.vms[3].suspect = failures(99, 9, 1);
    assert_eq!(check_suspects(&mut root, now, WINDOW), 3);
    for slot in 0..3 {
        assert_eq!(root.vms[slot].suspect, SuspectRecord::EMPTY, "slot {slot}");
    }
    assert_eq!(root.vms[0].bad_entry, 0);
    assert_eq!(root.vms[3].suspect.count, 99);
    // Reset records stop nobody.
    assert_eq!(stop_suspects(&mut root), 0);
}

#[test]
fn a_vm_in_flight_at_too_many_failures_is_stopped_alone() {
    for state in [VmState::Runnable, VmState::Waiting] {
        let mut root = three_vms_timed();
        root.vms[1].set_state(state);
        root.vms[1].suspect = failures(SUSPECT_FAILURES, 100, 300);
        root.vms[2].suspect = failures(SUSPECT_FAILURES - 1, 100, 300);
        assert_eq!(stop_suspects(&mut root), 1, "{state:?}");
        assert_eq!(root.vms[1].state(), Some(VmState::Stopped));
        assert_eq!(root.vms[1].stop_reason(), SUSPECT_REASON);
        assert_untouched(&root, 0);
        assert_untouched(&root, 2);
        assert_eq!(stop_suspects(&mut root), 0, "only once");
    }
}

#[test]
fn a_vm_that_cannot_run_is_not_stopped_for_its_failures() {
    let mut root = three_vms_timed();
    root.vms[0].set_state(VmState::Halted);
    root.vms[1].set_state(VmState::Stopped);
    root.vms[1].set_stop_reason(format_args!("stopped by the operator"));
    for slot in 0..2 {
        root.vms[slot].suspect = failures(SUSPECT_FAILURES, 1, 2);
    }
    assert_eq!(stop_suspects(&mut root), 0);
    assert_eq!(root.vms[0].state(), Some(VmState::Halted));
    assert_eq!(root.vms[1].stop_reason(), "stopped by the operator");
}

#[test]
fn culprits_the_window_reason_wins_over_the_attempts_one() {
    let mut root = three_vms_timed();
    root.recovery.inflight_slot = 1;
    root.recovery.suspect_attempts = MAX_ATTEMPTS;
    root.vms[1].suspect = failures(SUSPECT_FAILURES, 10, 20);
    assert_eq!(
        stop_culprits(&mut root, 1000),
        Culprits {
            repaired: 0,
            stopped: 1
        }
    );
    assert_eq!(root.vms[1].stop_reason(), SUSPECT_REASON);
}

#[test]
fn culprits_a_failing_recovery_still_stops_its_suspect_after_max_attempts() {
    // `recovery-fail`: the suspect was in flight at the first failure only.
    let mut root = three_vms_timed();
    root.recovery.inflight_slot = 2;
    root.vms[2].suspect = failures(1, 10, 10);
    root.recovery.suspect_attempts = MAX_ATTEMPTS - 1;
    assert_eq!(stop_culprits(&mut root, 1000).stopped, 0);
    root.recovery.suspect_attempts = MAX_ATTEMPTS;
    assert_eq!(stop_culprits(&mut root, 1000).stopped, 1);
    assert_eq!(
        root.vms[2].stop_reason(),
        "recovery: its exit was in flight in 2 failed recoveries"
    );
    assert_untouched(&root, 0);
    assert_untouched(&root, 1);
}

#[test]
fn culprits_an_unbelievable_count_is_repaired_not_acted_on() {
    let mut root = three_vms_timed();
    root.vms[0].suspect = failures(SUSPECT_FAILURES, 10, 5000);
    assert_eq!(
        stop_culprits(&mut root, 1000),
        Culprits {
            repaired: 1,
            stopped: 0
        }
    );
    assert_untouched(&root, 0);
}

// ---------------------------------------------------------------------------------------
// The whole policy over a run of failures: failure path (`note_failure`), repair
// (`stop_culprits`, `stopped_this_recovery`) and the first VM entry (the scheduler's pick)

/// What a run of failures came to.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// (recovery boots, VMs stopped) of each completed recovery.
    recoveries: Vec<(u32, u32)>,
    /// Failures charged to each slot, in order.
    failures: Vec<usize>,
    halted: bool,
}

/// Runs VMs whose every entry fails (`bad`): slot `first_bad` fails first, then each
/// recovery's first VM entry (the lowest resumable slot) either fails (a bad VM) or
/// completes it (then the next bad VM in slot order, if any, fails at its turn). `ms` is
/// the TSC time a recovery and a slice take. Ends when no bad VM can run any more.
fn run_bad_vms(root: &mut ArenaRoot, bad: &[usize], first_bad: usize, ms: u64) -> Outcome {
    let mut out = Outcome::default();
    let mut now = 1_000;
    let mut in_flight = Some(first_bad);
    while let Some(slot) = in_flight {
        out.failures.push(slot);
        root.running = slot as u32 + 1;
        root.note_failure(Cause::Vmx, 0, now);
        if root.recovery.exhausted() {
            out.halted = true;
            return out;
        }
        now += ms * HZ / 1000;
        let before = root.resumable_mask();
        stop_culprits(root, now);
        let stopped = stopped_this_recovery(root, before);
        root.recovery.stopped_slots = stopped;
        let first = hypervisor::vm::scheduler::next_runnable(&root.vms, None);
        in_flight = first.filter(|s| bad.contains(s));
        if in_flight.is_none() {
            out.recoveries
                .push((root.recovery.current.attempts, stopped.count_ones()));
            root.recovery.complete();
            // The good VM runs its slice; then the next bad VM that can run fails.
            now += ms * HZ / 1000;
            in_flight = bad.iter().copied().find(|&s| resumable(&root.vms[s]));
        }
    }
    out
}

#[test]
fn a_bad_vm_entered_after_a_good_one_is_stopped_by_its_third_recovery() {
    // The amplifier: every recovery completes at alpha's entry, then beta fails again.
    let mut root = three_vms_timed();
    let out = run_bad_vms(&mut root, &[1], 1, 50);
    assert_eq!(
        out,
        Outcome {
            recoveries: vec![(1, 0), (1, 0), (1, 1)],
            failures: vec![1, 1, 1],
            halted: false
        }
    );
    assert_eq!(root.vms[1].stop_reason(), SUSPECT_REASON);
    assert_untouched(&root, 0);
    assert_untouched(&root, 2);
}

#[test]
fn a_bad_vm_entered_first_is_stopped_by_the_third_attempt_of_one_recovery() {
    let mut root = three_vms_timed();
    let out = run_bad_vms(&mut root, &[0], 0, 50);
    assert_eq!(out.recoveries, vec![(3, 1)]);
    assert!(!out.halted);
    assert_eq!(root.vms[0].stop_reason(), SUSPECT_REASON);
    assert_untouched(&root, 1);
    assert_untouched(&root, 2);
}

#[test]
fn two_bad_vms_are_both_stopped_in_one_recovery_without_a_halt() {
    // Both marked at once; beta fails first. Each recovery boot's first entry is alpha's
    // or beta's until both are stopped: six boots, two VMs stopped, gamma runs on.
    for first in [0, 1] {
        let mut root = three_vms_timed();
        let out = run_bad_vms(&mut root, &[0, 1], first, 50);
        assert!(!out.halted, "first={first}: {out:?}");
        assert_eq!(out.recoveries, vec![(6, 2)], "first={first}");
        assert_eq!(out.failures.len(), 6);
        for slot in [0, 1] {
            assert_eq!(root.vms[slot].state(), Some(VmState::Stopped));
            assert_eq!(
                out.failures.iter().filter(|&&s| s == slot).count(),
                3,
                "slot {slot} charged three times"
            );
        }
        assert!(
            root.vms[0].stop_reason() == SUSPECT_REASON
                && root.vms[1].stop_reason() == SUSPECT_REASON
        );
        assert_untouched(&root, 2);
    }
}

#[test]
fn bad_vms_slower_than_the_window_are_not_stopped_by_it() {
    // A VM in flight at a failure every 6 s: never 3 within 10 s.
    let mut root = three_vms_timed();
    let mut now = 0;
    for _ in 0..10 {
        root.running = 2;
        root.note_failure(Cause::Panic, 0, now);
        assert_eq!(stop_culprits(&mut root, now + 1).stopped, 0);
        root.recovery.complete();
        now += 6 * HZ;
    }
    assert_untouched(&root, 1);
}

#[test]
fn vms_stopped_by_an_earlier_attempt_are_reported_with_the_recovery() {
    let mut root = three_vms_timed();
    root.recovery.resumable_at_failure = 0b111;
    // Attempt 3 stopped alpha, then failed; this attempt began with beta and gamma.
    root.vms[0].set_state(VmState::Stopped);
    let before = root.resumable_mask();
    root.vms[1].set_state(VmState::Stopped);
    assert_eq!(stopped_this_recovery(&root, before), 0b011);
    // A VM that was already stopped at the first failure is not this recovery's.
    root.recovery.resumable_at_failure = 0b110;
    assert_eq!(stopped_this_recovery(&root, before), 0b010);
    // Corrupt high bits name no VM.
    root.recovery.resumable_at_failure = u32::MAX;
    assert_eq!(stopped_this_recovery(&root, before), 0b011);
}

// ---------------------------------------------------------------------------------------
// Transactions (hypervisor::arena::intent): an interrupted creation is undone, an
// interrupted reset completed.

use hypervisor::arena::intent::{RESET_GUEST, RESET_NONE, RESET_OPERATOR};

#[test]
fn an_interrupted_creation_is_undone_and_named_for_the_report() {
    let mut root = arena();
    add_vm(&mut root, "alpha", 0x0100_0000);
    let used = root.pages.used();
    root.begin_create(1, "delta");
    let mut vm = VmRecord::EMPTY;
    set_text(&mut vm.name, "delta");
    vm.vcpu.vmcs = root.alloc_create_page().unwrap();
    vm.vcpu.xsave = root.alloc_create_page().unwrap();
    vm.ept_root = root.alloc_create_page().unwrap();
    root.vms[1] = vm;
    assert_eq!(undo_creation(&mut root), 1);
    assert_eq!(root.transactions.undone(), "delta");
    assert_eq!(root.pages.used(), used, "every page it took is free again");
    assert_eq!(root.free_slot(), Some(1));
    // The passes after it see no trace of the half-made VM.
    assert_eq!(check_vms(&mut root), 0);
    assert_eq!(rederive_scheduler(&root), 1);
    // A retried recovery undoes nothing more and keeps the name for the report.
    assert_eq!(undo_creation(&mut root), 0);
    assert_eq!(root.transactions.undone(), "delta");
}

#[test]
fn without_a_creation_under_way_nothing_is_undone() {
    let mut root = arena();
    add_vm(&mut root, "alpha", 0x0100_0000);
    let used = root.pages.used();
    assert_eq!(undo_creation(&mut root), 0);
    assert_eq!(root.transactions.undone(), "");
    assert_eq!(root.pages.used(), used);
}

#[test]
fn interrupted_resets_of_sound_vms_are_completed_whatever_their_state() {
    let mut root = three_vms();
    root.vms[0].reset = RESET_OPERATOR;
    root.vms[1].reset = RESET_GUEST;
    root.vms[2].set_state(VmState::Off);
    root.vms[2].reset = RESET_OPERATOR;
    let r = interrupted_resets(&mut root, 0);
    assert_eq!(
        r,
        Resets {
            complete: 0b111,
            abandoned: 0,
            stopped: 0
        }
    );
    for slot in 0..3 {
        assert_ne!(
            root.vms[slot].reset, RESET_NONE,
            "kept until the reset is redone"
        );
    }
    assert_eq!(
        root.vms[2].state(),
        Some(VmState::Off),
        "the reset makes it runnable"
    );
}

#[test]
fn a_reset_is_not_completed_over_a_corrupt_record_a_conflict_or_a_stopped_culprit() {
    let mut root = three_vms();
    for slot in 0..3 {
        root.vms[slot].reset = RESET_GUEST;
    }
    // alpha: corrupt (check_vms stops it first); beta: stopped by this recovery;
    // gamma: its RAM overlaps alpha's.
    root.vms[0].config_checksum ^= 1;
    assert_eq!(check_vms(&mut root), 1);
    stop(
        &mut root.vms[1],
        format_args!("in flight at 3 hypervisor failures within 10 s"),
    );
    root.vms[2].config.ram_start = root.vms[0].config.ram_start;
    root.vms[2].seal_config();
    let r = interrupted_resets(&mut root, 1 << 1);
    assert_eq!(r.complete, 0);
    assert_eq!(r.abandoned, 0b111);
    assert_eq!(r.stopped, 1, "only gamma was still running");
    for slot in 0..3 {
        assert_eq!(root.vms[slot].reset, RESET_NONE);
        assert_eq!(root.vms[slot].state(), Some(VmState::Stopped));
    }
    assert_eq!(
        root.vms[2].stop_reason(),
        "recovery: its interrupted reset could not be completed"
    );
    assert!(
        root.vms[1].stop_reason().contains("in flight at 3"),
        "reason kept"
    );
    assert_eq!(interrupted_resets(&mut root, 0), Resets::default());
}

#[test]
fn free_slots_and_vms_without_a_reset_are_left_alone() {
    let mut root = three_vms();
    root.vms[5].reset = RESET_OPERATOR; // a free slot: stale
    let r = interrupted_resets(&mut root, 0);
    assert_eq!(r, Resets::default());
    for slot in 0..3 {
        assert_untouched(&root, slot);
    }
}
