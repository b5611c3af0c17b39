//! Recovery: what happens after the hypervisor has failed.
//!
//! The microreboot (pristine copy, arena validation, repair passes; DESIGN 6) is built
//! here. Until it exists, a failure is reported and the CPU halts: the report (the
//! `hypervisor failure` line and register dump) is printed by `hypervisor::failure`
//! before this hook runs, and this hook says plainly that nothing was recovered.
#![cfg_attr(not(test), no_std)]

use hypervisor::failure::Failure;

/// The failure hook `boot` installs. Never returns.
pub fn on_failure(_failure: &Failure) -> ! {
    log::error!("halted: recovery is not implemented yet");
    hypervisor::arch::instructions::halt_forever()
}
