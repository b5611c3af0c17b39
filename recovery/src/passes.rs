//! The repair passes of a recovery boot (DESIGN 6), each a small named function over the
//! arena (and, for the VMCS passes, over [`VmcsAccess`], so they run against
//! `FakeVmcs` in unit tests). Each returns what it changed, for the `recovery` line.
//!
//! The machine-side steps (VMXON, VMPTRLD, INVEPT, EPT walks over arena pages) are in
//! `hypervisor::vm::machine` and are sequenced by [`crate::recover`].

use core::fmt;

use hypervisor::arena::intent::RESET_NONE;
use hypervisor::arena::recovery::MAX_ATTEMPTS;
use hypervisor::arena::suspect::{BAD_ENTRY_ON, SUSPECT_FAILURES, SUSPECT_WINDOW_SECONDS};
use hypervisor::arena::{
    ArenaRoot, Phase, SuspectRecord, VmRecord, VmState, CONSOLE_LINE, MAX_VMS,
};
use hypervisor::vmx::event;
use hypervisor::vmx::fields::{VmcsAccess, VmcsField, VmxError};
use hypervisor::vmx::host::{Controls, HostState, ENTRY_IA32E_MODE_GUEST};

/// Whether the slot holds a VM (any state but free).
pub fn live(vm: &VmRecord) -> bool {
    vm.state != VmState::Free as u32
}

/// Whether the VM can run again (runnable, or waiting for an interrupt).
pub fn resumable(vm: &VmRecord) -> bool {
    vm.resumable()
}

/// Stops a VM whose state recovery cannot trust. The reason starts with "recovery:" so
/// `vm list` says why, and `vm reset` refuses such a VM (its RAM range is suspect too).
pub fn stop(vm: &mut VmRecord, why: fmt::Arguments) {
    vm.set_state(VmState::Stopped);
    vm.set_stop_reason(format_args!("recovery: {why}"));
}

/// Force-releases every arena lock (the dead instance may have held one). Returns how
/// many were held.
pub fn release_locks(root: &ArenaRoot) -> u32 {
    u32::from(root.lock.force_release().is_some())
}

/// What rolling back the exit journals did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RollBack {
    /// Exits that were being handled, now rolled back: the guest re-executes them.
    pub rolled_back: u32,
    /// Bit `slot` set for each rolled-back VM (its IDT-vectoring information, if valid,
    /// must be re-delivered).
    pub rolled_back_slots: u32,
    /// Bit `slot` set for each resumable VM whose exit was half committed (phase
    /// `Committing`): it cannot be rolled back, only forward, from the commit log (or the
    /// VM is stopped).
    pub forward_slots: u32,
}

/// Undoes the VM creation a failure interrupted, if any (`hypervisor::arena::intent`):
/// its arena pages are freed and its slot emptied ([`ArenaRoot::undo_create`]; its RAM
/// was never taken from the rebuilt allocator), and its name is kept for the
/// recovery's report. Runs before any pass reads the VM table, so none sees the half-made
/// VM. Returns 1 if it undid one.
pub fn undo_creation(root: &mut ArenaRoot) -> u32 {
    match root.undo_create() {
        Some(undone) => {
            root.transactions.undone = undone.name;
            1
        }
        None => 0,
    }
}

/// The resets a failure interrupted, and what recovery does with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resets {
    /// Bit `slot` set for each VM whose reset is to be completed (redone from the start;
    /// its intent stays set until that is done).
    pub complete: u32,
    /// Bit `slot` set for each VM whose reset cannot be: its record is corrupt, its RAM
    /// conflicts with another VM's, or this recovery stopped it. Its intent is cleared
    /// and the VM is stopped.
    pub abandoned: u32,
    /// VMs this pass stopped (the others were stopped already).
    pub stopped: u32,
}

/// Decides, for every VM with a reset intent set (`hypervisor::arena::intent`), whether
/// recovery completes its reset: only when its record passes validation, its RAM
/// overlaps no other VM's (a reset writes all of it), and `stopped` (the VMs this
/// recovery stopped, [`stopped_this_recovery`]) does not hold it. The others are stopped.
pub fn interrupted_resets(root: &mut ArenaRoot, stopped: u32) -> Resets {
    let mut r = Resets::default();
    for slot in 0..MAX_VMS {
        let vm = &root.vms[slot];
        if !live(vm) || vm.reset == RESET_NONE {
            continue;
        }
        let trusted = root.validate_vm(slot).is_ok()
            && stopped & (1 << slot) == 0
            && !root.conflicts().any(|e| conflict_involves(&e, slot));
        if trusted {
            r.complete |= 1 << slot;
            continue;
        }
        let vm = &mut root.vms[slot];
        vm.reset = RESET_NONE;
        r.abandoned |= 1 << slot;
        if vm.state() != Some(VmState::Stopped) {
            stop(
                vm,
                format_args!("its interrupted reset could not be completed"),
            );
            r.stopped += 1;
        }
    }
    r
}

fn conflict_involves(e: &hypervisor::arena::ArenaError, slot: usize) -> bool {
    use hypervisor::arena::ArenaError as E;
    matches!(*e, E::RamOverlap { a, b } | E::DuplicateName { a, b } if a == slot || b == slot)
}

/// Rolls back every uncommitted VM exit: a journal in `Handling` returns to `InGuest`, and
/// since nothing of the exit reached the guest (the commit is the only writer), the new
/// instance re-enters at the same instruction and the exit happens again. A journal in
/// `Committing` means a half-applied exit: it is left for [`crate::repair`] to finish from
/// the commit log. Every VMCS was cleared by the failure path, so every vCPU's next entry
/// is a VMLAUNCH.
pub fn roll_back_exits(root: &mut ArenaRoot) -> RollBack {
    let mut r = RollBack::default();
    for (slot, vm) in root.vms.iter_mut().enumerate().filter(|(_, vm)| live(vm)) {
        vm.vcpu.launched = 0;
        match Phase::from_raw(vm.vcpu.journal.phase) {
            Some(Phase::Handling) => {
                vm.vcpu.journal.phase = Phase::InGuest as u32;
                r.rolled_back += 1;
                r.rolled_back_slots |= 1 << slot;
            }
            Some(Phase::Committing) if resumable(vm) => r.forward_slots |= 1 << slot,
            _ => {}
        }
    }
    r
}

/// Stops every VM whose record fails validation (state, name, configuration checksum,
/// journal, device models, RAM range, arena pages), and the later of any two VMs that
/// conflict (overlapping RAM, same name). Returns how many were stopped. A record whose
/// state itself is unreadable is stopped too: its slot stays taken so its RAM is never
/// handed out twice.
pub fn check_vms(root: &mut ArenaRoot) -> u32 {
    let mut stopped = 0;
    for slot in 0..MAX_VMS {
        if let Err(e) = root.validate_vm(slot) {
            let vm = &mut root.vms[slot];
            let already = vm.state() == Some(VmState::Stopped);
            stop(vm, format_args!("state corrupt: {e}"));
            stopped += u32::from(!already);
        }
    }
    // Every pair of 16 slots can conflict: room for all 120.
    let conflicts: heapless::Vec<_, { MAX_VMS * (MAX_VMS - 1) / 2 }> = root.conflicts().collect();
    for e in conflicts {
        let b = match e {
            hypervisor::arena::ArenaError::RamOverlap { b, .. }
            | hypervisor::arena::ArenaError::DuplicateName { b, .. } => b,
            _ => continue,
        };
        if resumable(&root.vms[b]) {
            stop(&mut root.vms[b], format_args!("state corrupt: {e}"));
            stopped += 1;
        }
    }
    stopped
}

/// Stops the VM whose exit was in flight at the failure (the policy after repeated
/// recovery failures: that exit is the likeliest culprit). Returns 1 if it stopped one.
pub fn stop_inflight(root: &mut ArenaRoot, slot: u32, attempts: u32) -> u32 {
    match root.vms.get_mut(slot as usize) {
        Some(vm) if resumable(vm) => {
            stop(
                vm,
                format_args!("its exit was in flight in {attempts} failed recoveries"),
            );
            1
        }
        _ => 0,
    }
}

/// Bound-checks each live VM's record of the failures it was in flight at
/// ([`SuspectRecord::is_sane`] at TSC `now`, with the suspect window of `window` ticks)
/// and its `bad-entry` trigger flag: a record that cannot be believed starts afresh, a
/// flag that is neither off nor on is turned off. Returns how many VMs were repaired.
pub fn check_suspects(root: &mut ArenaRoot, now: u64, window: u64) -> u32 {
    let mut repaired = 0;
    for vm in root.vms.iter_mut().filter(|vm| live(vm)) {
        let mut fixed = false;
        if !vm.suspect.is_sane(now, window) {
            vm.suspect = SuspectRecord::EMPTY;
            fixed = true;
        }
        if vm.bad_entry != 0 && vm.bad_entry != BAD_ENTRY_ON {
            vm.bad_entry = 0;
            fixed = true;
        }
        repaired += u32::from(fixed);
    }
    repaired
}

/// Stops every VM that can run and was in flight at [`SUSPECT_FAILURES`] hypervisor
/// failures within the suspect window (issue 11: whether or not those recoveries
/// succeeded, it is what keeps the hypervisor failing). Returns how many it stopped.
pub fn stop_suspects(root: &mut ArenaRoot) -> u32 {
    let mut stopped = 0;
    for vm in root.vms.iter_mut() {
        if resumable(vm) && vm.suspect.exhausted() {
            stop(
                vm,
                format_args!(
                    "in flight at {SUSPECT_FAILURES} hypervisor failures within {SUSPECT_WINDOW_SECONDS} s"
                ),
            );
            stopped += 1;
        }
    }
    stopped
}

/// What [`stop_culprits`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Culprits {
    /// VMs whose failure record or `bad-entry` flag was out of bounds and was reset.
    pub repaired: u32,
    /// VMs stopped.
    pub stopped: u32,
}

/// The policy against VMs that keep the hypervisor failing (DESIGN 6 and issue 11), at
/// TSC `now`: failure records checked ([`check_suspects`]), every VM in flight at too many
/// failures within the window stopped ([`stop_suspects`]), and the recovery's suspect
/// stopped once [`MAX_ATTEMPTS`] attempts against it have been made ([`stop_inflight`];
/// a VM both would stop gets the window's reason).
pub fn stop_culprits(root: &mut ArenaRoot, now: u64) -> Culprits {
    let window = root.suspect_window();
    let repaired = check_suspects(root, now, window);
    let mut stopped = stop_suspects(root);
    let attempts = root.recovery.suspect_attempts;
    if attempts >= MAX_ATTEMPTS {
        let slot = root.recovery.inflight_slot;
        stopped += stop_inflight(root, slot, attempts - 1);
    }
    Culprits { repaired, stopped }
}

/// Bit `slot` set for each VM the recovery in progress stopped, once this attempt's
/// passes are done: those that could run when this attempt began (`before`) and cannot
/// now, and those that could run at the recovery's first failure and were stopped by an
/// earlier attempt (which then failed, for instance at the next VM's entry).
pub fn stopped_this_recovery(root: &ArenaRoot, before: u32) -> u32 {
    let earlier = root.recovery.resumable_at_failure & !before & root.stopped_mask();
    earlier | (before & !root.resumable_mask())
}

/// Re-derives scheduler state from the VM table: the transient scheduler starts empty
/// and picks among the resumable VMs. Returns how many there are.
pub fn rederive_scheduler(root: &ArenaRoot) -> u32 {
    root.vms.iter().filter(|vm| resumable(vm)).count() as u32
}

/// Bound-checks the per-VM console line buffers: a length past the buffer is reset and
/// bytes that `append_console` never stores are replaced. Returns how many buffers
/// were repaired. (Device models are checked by `check_vms` through `validate_vm`.)
pub fn check_consoles(root: &mut ArenaRoot) -> u32 {
    let mut repaired = 0;
    for vm in root.vms.iter_mut().filter(|vm| live(vm)) {
        let mut fixed = false;
        if vm.console_len as usize > CONSOLE_LINE {
            vm.console_len = 0;
            fixed = true;
        }
        let len = vm.console_len as usize;
        for b in &mut vm.console[..len] {
            if !(*b == b'\t' || (0x20..=0x7e).contains(b)) {
                *b = b'?';
                fixed = true;
            }
        }
        repaired += u32::from(fixed);
    }
    repaired
}

/// Rewrites the host-state and control fields of the current VMCS from the known-good
/// configuration, keeping the one control bit that is guest state (IA-32e mode guest).
pub fn rewrite_vmcs(
    v: &mut impl VmcsAccess,
    controls: &Controls,
    host: &HostState,
) -> Result<(), VmxError> {
    let ia32e = v.read(VmcsField::EntryControls)? & u64::from(ENTRY_IA32E_MODE_GUEST) != 0;
    Controls {
        ia32e_guest: ia32e,
        ..*controls
    }
    .write(v)?;
    host.write(v)
}

/// Why a VM's saved guest state cannot be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadGuest {
    Vmcs(VmxError),
    RipNotCanonical(u64),
    RipMoved {
        saved: u64,
        vmcs: u64,
    },
    Rflags(u64),
    Cr0(u64),
    Cr4(u64),
    LongModeMismatch,
    /// Its exit was half committed and the commit log cannot finish it.
    HalfCommitted,
}

impl fmt::Display for BadGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmcs(e) => write!(f, "VMCS unreadable: {e}"),
            Self::RipNotCanonical(r) => write!(f, "guest RIP {r:#x} is not canonical"),
            Self::RipMoved { saved, vmcs } => write!(
                f,
                "guest RIP {vmcs:#x} differs from the journal's {saved:#x}"
            ),
            Self::Rflags(r) => write!(f, "guest RFLAGS {r:#x} invalid"),
            Self::Cr0(c) => write!(f, "guest CR0 {c:#x} violates the VMX fixed bits"),
            Self::Cr4(c) => write!(f, "guest CR4 {c:#x} violates the VMX fixed bits"),
            Self::LongModeMismatch => {
                f.write_str("guest EFER.LMA disagrees with the entry controls")
            }
            Self::HalfCommitted => {
                f.write_str("its exit was half committed and the commit log cannot finish it")
            }
        }
    }
}

impl From<VmxError> for BadGuest {
    fn from(e: VmxError) -> Self {
        Self::Vmcs(e)
    }
}

/// Checks the guest state in the current VMCS against what the arena says and against
/// the VM-entry checks a corrupt value would fail (SDM Vol. 3C §27.3.1): RIP canonical
/// and, for a rolled-back exit, equal to the journal's; RFLAGS bit 1 set and reserved
/// bits clear; CR0/CR4 within the fixed bits (PE and PG free: unrestricted guest);
/// EFER.LMA equal to the IA-32e-mode-guest entry control.
pub fn check_guest_state(
    v: &impl VmcsAccess,
    vm: &VmRecord,
    rolled_back: bool,
    cr_fixed: [u64; 4],
) -> Result<(), BadGuest> {
    use VmcsField as F;
    let rip = v.read(F::GuestRip)?;
    let canonical = ((rip as i64) << 16 >> 16) as u64 == rip;
    if !canonical {
        return Err(BadGuest::RipNotCanonical(rip));
    }
    if rolled_back && rip != vm.vcpu.journal.rip_at_exit {
        return Err(BadGuest::RipMoved {
            saved: vm.vcpu.journal.rip_at_exit,
            vmcs: rip,
        });
    }
    let rflags = v.read(F::GuestRflags)?;
    // Reserved: bits 3, 5, 15 and 63:22 must be 0; bit 1 must be 1 (§27.3.1.4).
    let reserved = (1 << 3) | (1 << 5) | (1 << 15) | !((1u64 << 22) - 1);
    if rflags & 2 == 0 || rflags & reserved != 0 {
        return Err(BadGuest::Rflags(rflags));
    }
    let [f0, f1, g0, g1] = cr_fixed;
    let cr0 = v.read(F::GuestCr0)?;
    let must0 = f0 & !((1 << 0) | (1 << 31));
    if cr0 & must0 != must0 || cr0 & !f1 != 0 {
        return Err(BadGuest::Cr0(cr0));
    }
    let cr4 = v.read(F::GuestCr4)?;
    if cr4 & g0 != g0 || cr4 & !g1 != 0 {
        return Err(BadGuest::Cr4(cr4));
    }
    let lma = v.read(F::GuestIa32Efer)? & (1 << 10) != 0;
    let ia32e = v.read(F::EntryControls)? & u64::from(ENTRY_IA32E_MODE_GUEST) != 0;
    if lma != ia32e {
        return Err(BadGuest::LongModeMismatch);
    }
    Ok(())
}

/// Re-delivers the event a rolled-back exit interrupted: if the IDT-vectoring information
/// is valid and no injection is already queued, it becomes the VM-entry interruption
/// information (SDM Vol. 3C §28.2.4). Returns 1 if an event was re-delivered.
pub fn redeliver(v: &mut impl VmcsAccess) -> Result<u32, VmxError> {
    use VmcsField as F;
    if v.read(F::EntryInterruptionInfo)? & (1 << 31) != 0 {
        return Ok(0);
    }
    let info = v.read(F::IdtVectoringInfo)? as u32;
    let error = v.read(F::IdtVectoringErrorCode)? as u32;
    let len = v.read(F::ExitInstructionLength)? as u32;
    match event::reinject(info, error, len) {
        Some(injection) => {
            injection.write_to(v)?;
            Ok(1)
        }
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests;
