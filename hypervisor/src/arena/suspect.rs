//! Which VM keeps being in flight when the hypervisor fails (issue 11: recovery must not
//! become a denial-of-service amplifier).
//!
//! A VM whose state breaks every VM entry (or that makes the hypervisor fail some other
//! way, again and again) would otherwise be recovered forever: a recovery completes at
//! the first VM entry of *any* VM, so the bad VM fails again at its next turn and the good
//! VMs get what is left of the CPU between recoveries. So every failure is charged to the
//! VM in flight at it (`ArenaRoot::running`: the VM entered last, whose entry or exit was
//! being handled), in that VM's own record, whether the recovery then succeeds or not;
//! and a VM in flight at [`SUSPECT_FAILURES`] failures within [`SUSPECT_WINDOW_SECONDS`]
//! is stopped by the next recovery, the others run on.
//!
//! The numbers: 3 failures, because two could be bad luck (a VM is in flight at any
//! failure with a chance of one in the number of busy VMs) and DESIGN 6 already blames
//! the in-flight VM after three failed attempts; 10 seconds, because a recovery takes
//! milliseconds (a VM that breaks every entry fails three times in well under a second,
//! even in Bochs) while unrelated failures, even in a fault-injection campaign, come far
//! less often than three a window to the same VM. The window opens at a VM's first
//! failure and closes 10 s later; the next failure opens a new one, so a VM that runs a
//! whole window without failing starts afresh. Windows are fixed, not sliding: at most
//! two failures a window are forgiven, and a VM is stopped at the latest by its fourth
//! failure within any 10 s (a third can fall just after a window closed, into a new one).
//!
//! Time is host TSC ticks at the rate measured at cold boot (the arena's boot record,
//! `BootRecord::tsc_hz`, the same value as `Caps::tsc_hz`), clamped to a plausible range
//! because the failure path reads it without checking the boot record's checksum.
//!
//! Everything here is read back by a new instance that trusts nothing: the counters are
//! plain integers, [`SuspectRecord::is_sane`] says whether they can be believed, and a
//! record that cannot is started afresh (the repair pass `check_suspects`).

use super::recovery::NO_SLOT;
use super::{ArenaRoot, Cause, VmState, MAX_VMS};

/// Failures with a VM in flight, within one window, at which the VM is stopped.
pub const SUSPECT_FAILURES: u32 = 3;
/// The window, in seconds of host TSC time.
pub const SUSPECT_WINDOW_SECONDS: u64 = 10;
/// The TSC rates a window is computed for: anything outside is taken as the nearest end.
pub const MIN_TSC_HZ: u64 = 1_000_000;
pub const MAX_TSC_HZ: u64 = 10_000_000_000;
/// `VmRecord::bad_entry` when the test trigger `bad-entry` is on for the VM.
pub const BAD_ENTRY_ON: u32 = 1;

/// The window in TSC ticks at `tsc_hz` (clamped to [`MIN_TSC_HZ`]..=[`MAX_TSC_HZ`]).
pub fn window_ticks(tsc_hz: u64) -> u64 {
    SUSPECT_WINDOW_SECONDS * tsc_hz.clamp(MIN_TSC_HZ, MAX_TSC_HZ)
}

/// The failures a VM was in flight at, in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SuspectRecord {
    /// Failures in the window (0: no window open).
    pub count: u32,
    pub _pad: u32,
    /// Host TSC at the window's first failure and at its latest.
    pub first: u64,
    pub last: u64,
}

impl SuspectRecord {
    pub const EMPTY: Self = Self {
        count: 0,
        _pad: 0,
        first: 0,
        last: 0,
    };

    /// Counts a failure at TSC `now` with this VM in flight: a window that has ended (or
    /// a record that cannot be believed) starts afresh. Returns the count in the window.
    pub fn note(&mut self, now: u64, window: u64) -> u32 {
        if self.count > 0 && self.is_sane(now, window) && now - self.first < window {
            self.count += 1;
            self.last = now;
        } else {
            *self = Self {
                count: 1,
                first: now,
                last: now,
                ..Self::EMPTY
            };
        }
        self.count
    }

    /// Whether the record can be believed at TSC `now`: no window open, or a count of at
    /// most [`SUSPECT_FAILURES`] whose first and latest failures are in order, not in the
    /// future, and less than a window apart.
    pub fn is_sane(&self, now: u64, window: u64) -> bool {
        match self.count {
            0 => true,
            n => {
                n <= SUSPECT_FAILURES
                    && self.first <= self.last
                    && self.last <= now
                    && self.last - self.first < window
            }
        }
    }

    /// Whether the VM has been in flight at [`SUSPECT_FAILURES`] failures within the window
    /// (for a record [`is_sane`](Self::is_sane) said can be believed).
    pub fn exhausted(&self) -> bool {
        self.count >= SUSPECT_FAILURES
    }
}

impl ArenaRoot {
    /// The suspect window in TSC ticks, from the boot record's TSC rate.
    pub fn suspect_window(&self) -> u64 {
        window_ticks(self.boot.tsc_hz)
    }

    /// The slot of the VM in flight (`running`), if it names a live VM.
    pub fn inflight(&self) -> Option<usize> {
        let slot = (self.running as usize).checked_sub(1)?;
        self.vms
            .get(slot)
            .filter(|vm| vm.state != VmState::Free as u32)
            .map(|_| slot)
    }

    /// Bit `slot` set for each VM that can run (runnable or waiting).
    pub fn resumable_mask(&self) -> u32 {
        (0..MAX_VMS)
            .filter(|&s| self.vms[s].resumable())
            .fold(0, |m, s| m | 1 << s)
    }

    /// Bit `slot` set for each stopped VM.
    pub fn stopped_mask(&self) -> u32 {
        (0..MAX_VMS)
            .filter(|&s| self.vms[s].state() == Some(VmState::Stopped))
            .fold(0, |m, s| m | 1 << s)
    }

    /// The failure path's bookkeeping of one failure detected at TSC `now`: the VM in
    /// flight is charged with it and becomes the recovery's suspect, and `running` is
    /// cleared (until the recovered instance enters a VM, no VM is in flight: a failure
    /// during the recovery boot is not the stale VM's). Returns the recovery attempt
    /// against the suspect ([`super::RecoveryState::begin`]).
    pub fn note_failure(&mut self, cause: Cause, vector: u8, now: u64) -> u32 {
        let inflight = self.inflight();
        self.running = 0;
        let window = self.suspect_window();
        if let Some(slot) = inflight {
            self.vms[slot].suspect.note(now, window);
        }
        let slot = inflight.map_or(NO_SLOT, |s| s as u32);
        let attempt = self.recovery.begin(cause, vector, now, slot);
        if self.recovery.current.attempts == 1 {
            self.recovery.resumable_at_failure = self.resumable_mask();
        }
        attempt
    }
}

#[cfg(test)]
mod tests;
