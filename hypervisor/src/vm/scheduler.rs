//! Which VM runs next. Round robin over the runnable VMs, each for a time slice enforced
//! by the VMX-preemption timer, so a guest that never exits on its own still gives the
//! CPU back (DESIGN 4). The choice is derived from the VM table alone (nothing else
//! needs to survive a microreboot).

use crate::arena::{VmRecord, VmState, MAX_VMS};

/// TSC ticks a VM may run before the next one gets the CPU.
pub const SLICE_TSC: u64 = 1 << 22;

/// The next runnable slot after `previous` (wrapping), or None if nothing can run.
pub fn next_runnable(vms: &[VmRecord; MAX_VMS], previous: Option<usize>) -> Option<usize> {
    let start = previous.map_or(0, |p| p + 1);
    (0..MAX_VMS)
        .map(|i| (start + i) % MAX_VMS)
        .find(|&slot| vms[slot].state() == Some(VmState::Runnable))
}

/// Preemption-timer value for `remaining` TSC ticks at the given rate (the timer counts
/// down once every 2^rate ticks; SDM Vol. 3C §26.5.1), at least 1.
pub fn timer_value(remaining: u64, rate: u8) -> u32 {
    (remaining >> rate).clamp(1, u64::from(u32::MAX)) as u32
}

/// A VM's share of the CPU in percent, from TSC ticks spent on it and in total.
pub fn share_percent(vm_tsc: u64, total_tsc: u64) -> u64 {
    if total_tsc == 0 {
        0
    } else {
        ((u128::from(vm_tsc) * 100) / u128::from(total_tsc)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(states: &[VmState]) -> [VmRecord; MAX_VMS] {
        let mut t = [VmRecord::EMPTY; MAX_VMS];
        for (slot, s) in states.iter().enumerate() {
            t[slot].set_state(*s);
        }
        t
    }

    #[test]
    fn round_robin_skips_what_cannot_run() {
        let t = table(&[
            VmState::Runnable,
            VmState::Halted,
            VmState::Runnable,
            VmState::Stopped,
        ]);
        assert_eq!(next_runnable(&t, None), Some(0));
        assert_eq!(next_runnable(&t, Some(0)), Some(2));
        assert_eq!(next_runnable(&t, Some(2)), Some(0));
        let t = table(&[VmState::Off, VmState::Halted]);
        assert_eq!(next_runnable(&t, None), None);
        let t = table(&[VmState::Runnable]);
        assert_eq!(next_runnable(&t, Some(0)), Some(0), "a lone VM runs again");
    }

    #[test]
    fn timer_and_share() {
        assert_eq!(timer_value(1 << 22, 5), 1 << 17);
        assert_eq!(timer_value(0, 5), 1);
        assert_eq!(timer_value(u64::MAX, 0), u32::MAX);
        assert_eq!(share_percent(1, 3), 33);
        assert_eq!(share_percent(0, 0), 0);
        assert_eq!(share_percent(u64::MAX, u64::MAX), 100);
    }
}
