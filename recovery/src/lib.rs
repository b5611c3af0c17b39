//! Recovery: what happens after the hypervisor has failed (DESIGN 6).
//!
//! - [`anchor`]: where a dying instance finds the pristine copy and the arena.
//! - `failpath` (bare metal only): the failure path in the dying instance, ending in the
//!   trampoline that restores the image from the pristine copy and enters the recovery
//!   boot; and the cold-boot step that takes the pristine copy.
//! - [`passes`]: the repair passes, each a small function with its own unit tests.
//! - [`repair`] (bare metal only): the passes in order, with the machine steps between them.
//!
//! The recovery boot itself (hardware back up, layout rebuilt from the arena's boot
//! record) is in `boot`, beside the cold boot it mirrors.
#![cfg_attr(not(test), no_std)]

pub mod anchor;
#[cfg(target_os = "none")]
mod failpath;
pub mod passes;

#[cfg(target_os = "none")]
pub use failpath::{
    anchor_address, arena, boot_copy_range, on_failure, reconcile_boot_record, save_boot_copy,
    scrub_regions, take_pristine,
};

#[cfg(target_os = "none")]
pub use machine::repair;

#[cfg(target_os = "none")]
mod machine {
    use hypervisor::arch::{instructions, vmx::CurrentVmcs};
    use hypervisor::arena::{Repairs, MAX_VMS};
    use hypervisor::failure::{self, Failure};
    use hypervisor::vm::machine::{host_state, Vms};

    use crate::passes;

    /// Runs the repair passes of DESIGN 6 over the adopted arena, in order. A VM whose
    /// state fails a check is stopped (and counted); a failure of the machine itself
    /// (INVEPT) is a hypervisor failure, which retries the recovery.
    ///
    /// The VMs stopped are those of this recovery, whichever attempt stopped them (an
    /// earlier one may have stopped a suspect and then failed on the next VM): they are
    /// counted and printed with its `recovery` line.
    pub fn repair(vms: &mut Vms) -> Repairs {
        let before = vms.root().resumable_mask();
        let mut r = passes_in_order(vms, before);
        let root = vms.root_mut();
        let slots = passes::stopped_this_recovery(root, before);
        r.stopped += (slots & !before).count_ones();
        root.recovery.stopped_slots = slots;
        r
    }

    fn passes_in_order(vms: &mut Vms, before: u32) -> Repairs {
        let mut r = Repairs::default();
        let root = vms.root_mut();
        r.locks = passes::release_locks(root);
        passes::undo_creation(root);
        let mut rolled = passes::roll_back_exits(root);
        r.rolled_back = rolled.rolled_back;
        let culprits = passes::stop_culprits(root, instructions::rdtsc());
        r.devices += culprits.repaired;
        r.stopped += culprits.stopped;
        r.stopped += passes::check_vms(root);
        r.devices += passes::check_consoles(root);
        if root.recovery.fail_next_recovery != 0 {
            root.recovery.fail_next_recovery -= 1;
            panic!("trigger: deliberate panic during recovery, after the first repair passes");
        }
        vms.reset_scheduler();
        let reset = complete_resets(vms, before, &mut r);
        // A VM reset afresh has no exit to roll back or forward.
        rolled.rolled_back_slots &= !reset;
        rolled.forward_slots &= !reset;
        for slot in resumable_slots(vms) {
            match vms.verify_ept(slot) {
                Ok(()) => r.ept_verified += 1,
                Err(e) if vms.rebuild_ept(slot) => {
                    log::warn!("recovery: vm slot {slot}: EPT rebuilt ({e})");
                    r.ept_rebuilt += 1;
                }
                Err(e) => {
                    let vm = &mut vms.root_mut().vms[slot];
                    passes::stop(
                        vm,
                        format_args!("EPT corrupt ({e}) and no room to rebuild it"),
                    );
                    r.stopped += 1;
                }
            }
        }
        if let Err(error) = vms.invalidate_translations() {
            failure::fail(&Failure::Vmx {
                what: "INVEPT/INVVPID during recovery",
                vm: "-",
                error,
            });
        }
        let host = host_state();
        let cr_fixed = vms.caps().cr_fixed;
        for slot in resumable_slots(vms) {
            let controls = vms.controls_of(slot);
            let rolled_back = rolled.rolled_back_slots & (1 << slot) != 0;
            let forward = rolled.forward_slots & (1 << slot) != 0;
            let result = vms
                .load_vmcs(slot)
                .map_err(passes::BadGuest::Vmcs)
                .and_then(|()| {
                    passes::rewrite_vmcs(&mut CurrentVmcs, &controls, &host)?;
                    if forward {
                        if !vms.roll_forward(slot) {
                            return Err(passes::BadGuest::HalfCommitted);
                        }
                        r.committed += 1;
                    }
                    let vm = &vms.root().vms[slot];
                    passes::check_guest_state(&CurrentVmcs, vm, rolled_back, cr_fixed)?;
                    Ok(if rolled_back {
                        passes::redeliver(&mut CurrentVmcs)?
                    } else {
                        0
                    })
                });
            match result {
                Ok(redelivered) => {
                    r.vmcs += 1;
                    r.interrupts += redelivered;
                }
                Err(bad) => {
                    let vm = &mut vms.root_mut().vms[slot];
                    passes::stop(vm, format_args!("{bad}"));
                    r.stopped += 1;
                }
            }
        }
        r.timers = vms.catch_up_timers();
        r.runnable = passes::rederive_scheduler(vms.root());
        r
    }

    /// Completes the resets a failure interrupted (`passes::interrupted_resets` decides
    /// which): each is redone from the start, its VM reloaded from its module. Returns
    /// the slots reset; they are kept for the recovery's report.
    fn complete_resets(vms: &mut Vms, before: u32, r: &mut Repairs) -> u32 {
        let root = vms.root_mut();
        let stopped = passes::stopped_this_recovery(root, before);
        let resets = passes::interrupted_resets(root, stopped);
        r.stopped += resets.stopped;
        root.transactions.resets_abandoned |= resets.abandoned;
        let mut done = 0;
        for slot in (0..MAX_VMS).filter(|s| resets.complete & (1 << s) != 0) {
            match vms.complete_reset(slot) {
                Ok(()) => done |= 1 << slot,
                Err(e) => {
                    let root = vms.root_mut();
                    root.transactions.resets_abandoned |= 1 << slot;
                    let vm = &mut root.vms[slot];
                    vm.reset = hypervisor::arena::intent::RESET_NONE;
                    passes::stop(vm, format_args!("its interrupted reset failed: {e}"));
                    r.stopped += 1;
                }
            }
        }
        vms.root_mut().transactions.resets_completed |= done;
        done
    }

    fn resumable_slots(vms: &Vms) -> heapless::Vec<usize, MAX_VMS> {
        (0..MAX_VMS)
            .filter(|&slot| passes::resumable(&vms.root().vms[slot]))
            .collect()
    }
}
