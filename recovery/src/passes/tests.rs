use super::*;
use hypervisor::arena::{set_text, ArenaRoot, Phase, VmRecord, VmState};
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
fn handling_exits_roll_back_and_half_committed_ones_stop_their_vm() {
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
    assert_eq!(r.stopped, 1);
    assert_eq!(r.rolled_back_slots, 1 << a);
    assert_eq!(root.vms[a].vcpu.journal.phase, Phase::InGuest as u32);
    assert_eq!(root.vms[a].vcpu.launched, 0, "every VMCS was cleared");
    assert_eq!(root.vms[b].state(), Some(VmState::Stopped));
    assert!(root.vms[b].stop_reason().starts_with("recovery: "));
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
