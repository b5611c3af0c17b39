//! The run loop: pick a VM, deliver its interrupts, enter it, read the exit, hand it to
//! the handlers, commit, and act on the outcome.

use super::*;

/// A hypervisor failure in the VMX layer: VMX instructions and VM entries must not fail
/// (DESIGN 5), so this ends in the failure hook.
pub(super) fn vmx_failure(what: &str, vm: &VmRecord, error: VmxError) -> ! {
    failure::fail(&Failure::Vmx {
        what,
        vm: vm.name(),
        error,
    })
}

impl Vms {
    /// Runs one VM entry and handles the exit it ends with. Returns false when no VM
    /// can run (the caller idles).
    pub fn step(&mut self) -> bool {
        if let Some(line) = crate::inject::machine::take_line() {
            log::warn!("{line}");
        }
        crate::watchdog::pet();
        if crate::triggers::no_entry() {
            // Trigger `no-entry`: the loop goes on (the heartbeat, the console) but never
            // enters a VM again, until the watchdog sees it.
            return false;
        }
        let now = rdtsc();
        let slot = match self.current {
            Some(s)
                if now < self.slice_end && self.root.vms[s].state() == Some(VmState::Runnable) =>
            {
                s
            }
            _ => match self.wake_and_pick(now) {
                Some(next) => {
                    self.switch_to(next);
                    self.last = Some(next);
                    self.slice_end = now + SLICE_TSC;
                    next
                }
                None => {
                    if self.scrub_due(now) {
                        scrub_one_page(true);
                    }
                    return false;
                }
            },
        };
        let remaining = self.slice_end.saturating_sub(now);
        let caps = self.caps;
        let vm = &mut self.root.vms[slot];
        if let Err(e) = deliver_interrupts(vm, &caps) {
            vmx_failure("interrupt delivery", vm, e);
        }
        let timer = scheduler::timer_value(remaining, caps.timer_rate);
        if let Err(e) = vmx::CurrentVmcs.write(VmcsField::PreemptionTimerValue, u64::from(timer)) {
            vmx_failure("VMWRITE of the preemption timer", vm, e);
        }
        if crate::triggers::take_vmcs_host() {
            corrupt_host_state(vm);
        }
        if self.triggers && vm.bad_entry == arena::suspect::BAD_ENTRY_ON {
            break_guest_pat(vm);
        }
        vm.vcpu.journal.phase = Phase::InGuest as u32;
        self.root.running = slot as u32 + 1;
        let vm = &mut self.root.vms[slot];
        let entered = rdtsc();
        crate::watchdog::vm_entered();
        crate::inject::machine::before_entry();
        // SAFETY: this VM's VMCS is current (switch_to / reset_guest) and fully set up; its
        // registers live in the arena record, which nothing else touches while it runs.
        let result = unsafe { vmentry::enter(&mut vm.vcpu.regs, vm.vcpu.launched != 0) };
        let exited = rdtsc();
        match result {
            EntryResult::Exited => {
                crate::inject::machine::after_exit();
                vm.vcpu.launched = 1;
            }
            EntryResult::FailInvalid => vmx_failure("VM entry", vm, VmxError::VmFailInvalid),
            EntryResult::FailValid => {
                let error = vmx::CurrentVmcs
                    .read(VmcsField::InstructionError)
                    .unwrap_or(0) as u32;
                vmx_failure(
                    "VM entry",
                    vm,
                    VmxError::VmFailValid(crate::vmx::fields::InstructionError::from_number(error)),
                )
            }
        }
        let now_ns = guest_ns(vm, &caps);
        let exit = match read_exit(&vmx::CurrentVmcs, &vm.vcpu.regs, now_ns) {
            Ok(exit) => exit,
            Err(e) => vmx_failure("VMREAD of the exit information", vm, e),
        };
        // With the exception bitmap empty (`vmx::host::Controls`), an exception-or-NMI exit
        // that is not an NMI is as impossible as an exit the controls cannot produce
        // (campaign: `unexpected exception vector 68 in guest` stopped two VMs).
        let unexpected = !caps.controls.can_exit_for(exit.exit.reason)
            || (exit.exit.reason == ExitReason::ExceptionOrNmi
                && !is_nmi(exit.exit.interruption_info));
        if exit.entry_failed || unexpected {
            // A VM entry that fails on guest state means Lazarus's own state went wrong:
            // every value a guest can write is checked where it enters (`vm::rules`).
            // An exit the controls cannot produce means the VMCS's controls were changed
            // under the VM (campaign findings 11, 12). Both are hypervisor failures:
            // recovery rewrites the controls, and the exit, not handled, is rolled back.
            failure::fail(&Failure::Exit {
                vm: vm.name(),
                reason: exit.exit.reason,
                qualification: exit.exit.qualification,
                entry_failed: exit.entry_failed,
            });
        }
        let exit = exit.exit;
        if exit.reason == ExitReason::ExceptionOrNmi && is_nmi(exit.interruption_info) {
            crate::watchdog::on_guest_nmi_exit();
        }
        let j = &mut vm.vcpu.journal;
        j.phase = Phase::Handling as u32;
        j.exit_seq += 1;
        j.exit_reason = u32::from(exit.reason.basic());
        j.rip_at_exit = exit.rip;
        j.exit_digest = exit.digest();
        let mut exit = exit;
        if crate::triggers::take_exit_flip() {
            log::warn!(
                "trigger: exit-flip: flipping bit 6 of exit {}'s guest RIP in vm {}",
                vm.vcpu.journal.exit_seq,
                vm.name()
            );
            exit.rip ^= 1 << 6;
        }
        vm.stats.exits += 1;
        vm.stats.by_reason[exit.reason.index()] += 1;
        if exit.reason == ExitReason::ExternalInterrupt {
            acknowledge_external(exit.interruption_info);
        }
        let host = RealHost {
            caps: &caps,
            triggers: self.triggers,
        };
        let effect = exits::handle(&exit, vm, &Ram::of(vm), &host);
        let checking = rdtsc();
        confirm_decision(&exit, vm, &effect, &host);
        vm.stats.check_tsc += rdtsc().saturating_sub(checking);
        if crate::triggers::take_mid_exit() {
            panic!(
                "trigger: deliberate panic in the middle of exit {} ({}) of vm {}",
                vm.vcpu.journal.exit_seq,
                exit.reason.name(),
                vm.name()
            );
        }
        let mut ram = Ram::of(vm);
        let trigger = effect.trigger;
        let arm_injector = effect.arm_injector;
        // The commit changes the VM table: under the arena lock (recovery force-releases
        // it if the holder dies).
        self.root
            .lock
            .acquire(0, self.root.header.generation as u32);
        self.root
            .commit
            .save(slot, vm.vcpu.journal.exit_seq, &exit, &effect);
        vm.vcpu.journal.phase = Phase::Committing as u32;
        if crate::triggers::take_mid_commit() {
            panic!(
                "trigger: deliberate panic in the commit of exit {} ({}) of vm {}",
                vm.vcpu.journal.exit_seq,
                exit.reason.name(),
                vm.name()
            );
        }
        let unclaimed_before = vm.stats.unclaimed_io;
        let msrs_before = vm.vcpu.msrs;
        let xcr0_before = vm.vcpu.xcr0;
        let outcome = match commit(
            effect,
            &exit,
            vm,
            &mut vmx::CurrentVmcs,
            &mut ram,
            &mut SerialSink,
        ) {
            Ok(outcome) => outcome,
            Err(e) => vmx_failure("commit of a VM exit", vm, e),
        };
        self.root.commit.clear();
        self.root.lock.release();
        vm.stats.exit_tsc += rdtsc().saturating_sub(exited);
        if vm.vcpu.msrs != msrs_before {
            load_swapped_msrs(&vm.vcpu.msrs, &self.caps);
        }
        let unclaimed = vm.stats.unclaimed_io;
        // Rate-limited: the first eight, then every power of two.
        if unclaimed != unclaimed_before && (unclaimed <= 8 || unclaimed.is_power_of_two()) {
            let port = (exit.qualification >> 16) & 0xffff;
            let dir = if exit.qualification & 8 != 0 {
                "in"
            } else {
                "out"
            };
            log::info!(
                "vm {}: unclaimed port {port:#x} ({dir}); {unclaimed} unclaimed accesses so far",
                vm.name()
            );
        }
        if vm.vcpu.xcr0 != xcr0_before && xsave_enabled() {
            // XSETBV takes effect at once: the guest's next XSAVE/XRSTOR depends on it.
            // SAFETY: the handler checked the value against the CPU's supported set.
            unsafe { vmx::xsetbv(vm.vcpu.xcr0) };
        }
        // The whole step (entry, guest time, exit handling) is charged to the VM.
        vm.stats.guest_tsc += rdtsc().saturating_sub(now);
        self.apply(slot, outcome);
        if let Some(plan) = arm_injector {
            // A plan already armed keeps its place; the guest sees 0 either way (the
            // console reports the refusal, a test guest reads the `inject:` line).
            if crate::inject::machine::arm(plan) {
                log::warn!(
                    "inject: vm {} armed {} seed={}",
                    self.root.vms[slot].name(),
                    plan.fault.name(),
                    plan.seed
                );
            }
        }
        if let Some((trigger, count)) = trigger {
            self.fire_from_guest(slot, trigger, count);
        }
        self.root.running = 0;
        let due = self.scrub_due(rdtsc());
        scrub_one_page(due);
        if self.root.recovery.pending_print != 0 {
            self.finish_recovery(entered);
        }
        if let Some(start) = self.cold_boot.take() {
            // Documented in the README ("Recovery"); the benchmark reads it.
            log::info!(
                "boot: first VM entry {} cycles after the cold boot's first instruction",
                entered.saturating_sub(start)
            );
        }
        true
    }

    /// The `trigger` hypercall, after its exit was committed: the failure happens with
    /// this VM's exit in flight. So `recovery-fail` with a count of 2 makes two recovery
    /// attempts fail and the third stop this VM (DESIGN 6's policy for repeated recovery
    /// failures); a count of 3 exhausts the attempts and the hypervisor halts.
    fn fire_from_guest(&mut self, slot: usize, trigger: crate::triggers::Trigger, count: u32) {
        use crate::triggers::Trigger;
        let vm = &self.root.vms[slot];
        log::warn!(
            "trigger: vm {} fires '{}' (count {count})",
            vm.name(),
            trigger.name()
        );
        match trigger {
            Trigger::RecoveryFail => self.root.recovery.fail_next_recovery = count,
            Trigger::CorruptVm => self.root.vms[slot].config_checksum ^= 1,
            Trigger::ArenaHeader => crate::triggers::overwrite_header(&mut self.root.header),
            Trigger::BadEntry => self.root.vms[slot].bad_entry = arena::suspect::BAD_ENTRY_ON,
            Trigger::BootRecord => crate::triggers::overwrite_boot_record(&mut self.root.boot),
            Trigger::Deadlock => crate::triggers::deadlock(&self.root.lock),
            _ => {}
        }
        crate::triggers::fire(trigger);
    }

    /// Enables the `trigger` hypercall (`triggers=on`).
    pub fn enable_triggers(&mut self) {
        self.triggers = true;
    }

    /// Remembers when the cold boot started (see [`Vms::step`]).
    pub fn note_cold_boot(&mut self, tsc: u64) {
        self.cold_boot = Some(tsc);
    }

    /// The first VM entry after a recovery happened at TSC `entered`: the recovery is
    /// complete. Prints the failure report and the `recovery` line, which waited until
    /// now so that the console did not delay the VMs.
    pub fn finish_recovery(&mut self, entered: u64) {
        let r = &mut self.root.recovery;
        r.pending_print = 0;
        r.current.t_entry = entered;
        let record = r.complete();
        let stopped = core::mem::take(&mut r.stopped_slots);
        r.print_report();
        let tx = core::mem::replace(&mut self.root.transactions, arena::TransactionReport::EMPTY);
        for (slot, vm) in self.root.vms.iter().enumerate() {
            if (stopped | tx.resets_abandoned) & (1 << slot) != 0 {
                log::error!("vm {}: stopped: {}", vm.name(), vm.stop_reason());
            }
        }
        print_transactions(&tx, &self.root.vms);
        log::info!("{}", record);
    }

    pub(super) fn apply(&mut self, slot: usize, outcome: Outcome) {
        let vm = &mut self.root.vms[slot];
        match outcome {
            Outcome::Resume => return,
            Outcome::Yield => {}
            Outcome::Halt => {
                vm.set_state(VmState::Halted);
                log::info!("vm {}: halted", vm.name());
            }
            Outcome::Wait => vm.set_state(VmState::Waiting),
            Outcome::PowerOff => {
                vm.set_state(VmState::Off);
                log::info!("vm {}: powered off", vm.name());
            }
            Outcome::Stop(reason) => {
                vm.set_state(VmState::Stopped);
                vm.set_stop_reason(format_args!("{reason}"));
                log::error!("vm {}: stopped: {reason}", vm.name());
            }
            Outcome::Reboot if vm.config.on_reboot == arena::ON_REBOOT_STOP => {
                vm.set_state(VmState::Stopped);
                vm.set_stop_reason(format_args!("the guest reset itself (on_reboot=stop)"));
                log::info!(
                    "vm {}: stopped: the guest reset itself (on_reboot=stop)",
                    vm.name()
                );
            }
            Outcome::Reset | Outcome::Reboot => {
                if outcome == Outcome::Reset {
                    log::warn!(
                        "vm {}: triple fault; resetting (on_triple_fault=reset)",
                        vm.name()
                    );
                } else {
                    log::info!("vm {}: rebooting (reset requested by the guest)", vm.name());
                }
                if let Err(e) = self.reset_vm(slot, arena::intent::RESET_GUEST) {
                    vmx_failure("reset", &self.root.vms[slot], e);
                }
            }
        }
        // Anything but Resume ends the slice.
        self.slice_end = 0;
    }

    /// Wakes the waiting VMs whose interrupt is due, then picks the next VM round robin.
    pub(super) fn wake_and_pick(&mut self, now: u64) -> Option<usize> {
        let caps = self.caps;
        for vm in self
            .root
            .vms
            .iter_mut()
            .filter(|vm| vm.state() == Some(VmState::Waiting))
        {
            let now_ns = guest_ns_at(vm, &caps, now);
            let due = vm.devices.pic.pending_vector().is_some()
                || vm.devices.next_deadline().is_some_and(|d| d <= now_ns);
            if due {
                vm.set_state(VmState::Runnable);
            }
        }
        scheduler::next_runnable(&self.root.vms, self.last)
    }

    /// Whether an image page is due by time: at least one every 5 ms, whatever the VM
    /// exits do. Exits alone do not pace the scrub well enough: with every VM waiting
    /// there are none (campaign finding 1), and guests spinning in guest mode exit only
    /// at the end of their slice, a dozen times a second, which made a full pass take a
    /// minute (finding 10). 200 pages a second cover the image in under half a second.
    fn scrub_due(&mut self, now: u64) -> bool {
        if now < self.next_timed_scrub {
            return false;
        }
        let interval = if self.caps.tsc_hz == 0 {
            SLICE_TSC / 16
        } else {
            self.caps.tsc_hz / 200
        };
        self.next_timed_scrub = now + interval;
        true
    }

    /// Makes `next`'s VMCS current and its MSRs live.
    pub(super) fn switch_to(&mut self, next: usize) {
        if self.current == Some(next) {
            return;
        }
        if let Some(p) = self.current.filter(|&p| p != next) {
            let vm = &mut self.root.vms[p];
            save_guest_registers(vm, self.caps.limits.xcr0);
            // From here the registers may hold either VM's state: recovery must not save
            // them into `p`'s record (see `fpu_owner`).
            self.root.fpu_owner = 0;
            let vm = &mut self.root.vms[p];
            // SWAPGS changes IA32_KERNEL_GS_BASE without an exit: keep the live value.
            // SAFETY: the MSR exists on every x86-64 CPU; reading it has no side effect.
            vm.vcpu.msrs.kernel_gs_base =
                unsafe { crate::arch::instructions::rdmsr(exits::msr::IA32_KERNEL_GS_BASE) };
        }
        if let Err(error) = self.root.validate_vm(next) {
            failure::fail(&Failure::Arena {
                what: "VM record before its VM entry",
                error,
            });
        }
        let vm = &mut self.root.vms[next];
        // SAFETY: the VMCS page belongs to this VM and was initialised by reset_guest.
        if let Err(e) = unsafe { vmx::vmptrld(vm.vcpu.vmcs) } {
            vmx_failure("VMPTRLD", vm, e);
        }
        restore_guest_registers(vm, self.caps.limits.xcr0);
        load_swapped_msrs(&vm.vcpu.msrs, &self.caps);
        self.current = Some(next);
        self.root.fpu_owner = next as u32 + 1;
    }
}

/// What recovery did to a creation and to resets that a failure interrupted
/// (`arena::intent`), with the recovery's other lines.
fn print_transactions(tx: &arena::TransactionReport, vms: &[VmRecord]) {
    if !tx.undone().is_empty() {
        log::error!(
            "vm {}: not created: interrupted by a hypervisor failure; undone",
            tx.undone()
        );
    }
    for (slot, vm) in vms.iter().enumerate() {
        if tx.resets_completed & (1 << slot) != 0 {
            log::info!("vm {}: its interrupted reset was completed", vm.name());
        }
    }
}

/// Checks the exit and the handler's decision before they are committed (campaign
/// finding 14: a flipped frame pointer made the run loop read a shifted, garbage exit,
/// and the VM was stopped for an exception it never had). The exit must still match the
/// digest taken when it was read; and a drastic decision (stopping, resetting or halting
/// the VM) is computed a second time, which the handlers, pure functions of what they
/// are given, must repeat exactly. Either failing is a hypervisor failure: nothing is
/// committed yet, so recovery re-executes the exit.
fn confirm_decision(exit: &Exit, vm: &VmRecord, effect: &exits::Effect, host: &RealHost) {
    let failed = |what| {
        failure::fail(&Failure::Check {
            what,
            vm: vm.name(),
        })
    };
    if exit.digest() != vm.vcpu.journal.exit_digest {
        failed("the VM exit changed between its read and its commit");
    }
    if effect.is_drastic() && !exits::handle(exit, vm, &Ram::of(vm), host).same_decision(effect) {
        failed("the exit handler decided differently when asked again");
    }
}

/// Every few VM exits (or when `force`d by time), compares one page of the image's code and read-only data with the
/// pristine copy (`crate::scrub`): a change is a hypervisor failure; a change in the copy
/// is repaired, or reported once if it cannot be.
fn scrub_one_page(force: bool) {
    use crate::scrub::Verdict;
    match crate::scrub::machine::after_exit(force) {
        None => {}
        Some((address, Verdict::ImageChanged)) => failure::fail(&Failure::Image { address }),
        Some((address, Verdict::PristineRepaired)) => log::warn!(
            "scrub: the pristine copy differed from the image at {address:#x}; repaired from the image"
        ),
        Some((address, Verdict::PristineDamaged)) => {
            log::error!(
                "scrub: the pristine copy is damaged (near {address:#x}) and could not be repaired: a recovery would halt; scrubbing stops"
            );
            crate::scrub::machine::stop();
        }
    }
}

/// Trigger `vmcs-host`: clears CR4.VMXE in the host-state area of the current VMCS, which
/// VM entry must refuse (SDM Vol. 3C §27.2.2: host CR4 must hold the bits fixed to 1 in
/// VMX operation) with VMfailValid "invalid host-state field".
fn corrupt_host_state(vm: &VmRecord) {
    log::warn!(
        "trigger: vmcs-host: clearing CR4.VMXE in vm {}'s host state",
        vm.name()
    );
    let cr4 = vmx::CurrentVmcs.read(VmcsField::HostCr4).unwrap_or(0);
    let _ = vmx::CurrentVmcs.write(VmcsField::HostCr4, cr4 & !(1 << 13));
}

/// Trigger `bad-entry`, before each VM entry of a VM it is on for: an invalid memory
/// type in the guest IA32_PAT field of the current VMCS ([`crate::triggers::broken_pat`]),
/// which VM entry must refuse (SDM Vol. 3C §27.3.1.1).
fn break_guest_pat(vm: &VmRecord) {
    log::warn!(
        "trigger: bad-entry: an invalid guest IA32_PAT in vm {}'s VMCS",
        vm.name()
    );
    let pat = vmx::CurrentVmcs.read(VmcsField::GuestIa32Pat).unwrap_or(0);
    let _ = vmx::CurrentVmcs.write(VmcsField::GuestIa32Pat, crate::triggers::broken_pat(pat));
}

/// The exit as read from the current VMCS.
pub(super) struct ReadExit {
    exit: Exit,
    entry_failed: bool,
}

pub(super) fn read_exit(
    v: &impl VmcsAccess,
    regs: &GuestRegisters,
    now_ns: u64,
) -> Result<ReadExit, VmxError> {
    use VmcsField as F;
    let (reason, entry_failed) = ExitReason::from_raw(v.read(F::ExitReason)? as u32);
    let mut exit = Exit {
        reason,
        qualification: v.read(F::ExitQualification)?,
        instruction_len: v.read(F::ExitInstructionLength)?,
        guest_physical: v.read(F::GuestPhysicalAddress)?,
        rip: v.read(F::GuestRip)?,
        rsp: v.read(F::GuestRsp)?,
        rflags: v.read(F::GuestRflags)?,
        cpl: ((v.read(F::GuestSsAccessRights)? >> 5) & 3) as u8,
        cr0: v.read(F::GuestCr0)?,
        cr3: v.read(F::GuestCr3)?,
        cr4: v.read(F::GuestCr4)?,
        cr0_shadow: v.read(F::Cr0ReadShadow)?,
        cr4_shadow: v.read(F::Cr4ReadShadow)?,
        efer: v.read(F::GuestIa32Efer)?,
        cs_access_rights: v.read(F::GuestCsAccessRights)?,
        entry_controls: v.read(F::EntryControls)?,
        interruption_info: v.read(F::ExitInterruptionInfo)? as u32,
        vmcs_msr_value: 0,
        now_ns,
    };
    if reason == ExitReason::Rdmsr {
        if let Some(field) = exits::vmcs_msr_field(regs.rcx as u32) {
            exit.vmcs_msr_value = v.read(field)?;
        } else if regs.rcx as u32 == exits::msr::IA32_KERNEL_GS_BASE {
            // SAFETY: the MSR exists on every x86-64 CPU; reading it has no side effect.
            exit.vmcs_msr_value =
                unsafe { crate::arch::instructions::rdmsr(exits::msr::IA32_KERNEL_GS_BASE) };
        }
    }
    Ok(ReadExit { exit, entry_failed })
}

/// Whether a VM-exit interruption-information field describes an NMI (a watchdog tick).
pub(super) fn is_nmi(info: u32) -> bool {
    let info = crate::vmx::exit::InterruptionInfo::from_raw(info);
    info.valid && info.kind == crate::vmx::exit::InterruptionKind::Nmi
}

/// Sends the EOI for an interrupt acknowledged by a VM exit (interruption info valid).
pub(super) fn acknowledge_external(info: u32) {
    if info & (1 << 31) != 0 {
        crate::arch::pic::end_of_interrupt(info as u8);
    }
}

/// Loads the MSRs the VMCS does not switch (SDM Vol. 4, indices in `exits::msr`).
pub(super) fn load_swapped_msrs(m: &arena::SwappedMsrs, caps: &Caps) {
    use exits::msr::*;
    // SAFETY: these MSRs exist on every x86-64 CPU; the host never uses SYSCALL or SWAPGS,
    // so guest values in them cannot affect it.
    unsafe {
        wrmsr(IA32_STAR, m.star);
        wrmsr(IA32_LSTAR, m.lstar);
        wrmsr(IA32_CSTAR, m.cstar);
        wrmsr(IA32_FMASK, m.sfmask);
        wrmsr(IA32_KERNEL_GS_BASE, m.kernel_gs_base);
        if caps.tsc_aux {
            wrmsr(IA32_TSC_AUX, m.tsc_aux);
        }
    }
}

/// Saves the guest state that is live in the registers while `vm` is current and that
/// the VMCS does not switch (the host never touches it): FPU/SSE/AVX and the debug
/// registers DR0-DR3, DR6.
///
/// The FPU state is saved under an XCR0 of `all`, the union of the components any VM
/// may enable, whatever the VM's own XCR0: XSAVE saves only components enabled in XCR0,
/// and SSE registers work with XCR0 = 1, so saving under the guest's XCR0 would leave
/// its XMM registers behind for the next VM to read. Saving and restoring every
/// component also keeps XSTATE_BV within what XRSTOR accepts when the guest later
/// lowers its XCR0 (SDM Vol. 1 §13.8.1: XRSTOR #GPs on an XSTATE_BV bit outside XCR0).
pub(super) fn save_guest_registers(vm: &mut VmRecord, all: u64) {
    let (dr, dr6) = crate::arch::instructions::debug_registers();
    vm.vcpu.debug = arena::DebugRegisters { dr, dr6 };
    if vm.vcpu.xsave == 0 || !xsave_enabled() {
        return;
    }
    // SAFETY: `all` is a valid XCR0 (GuestLimits::derive keeps the component groups
    // whole); the XSAVE area is this VM's arena page, large enough for `all`.
    unsafe {
        vmx::xsetbv(all);
        vmx::xsave(vm.vcpu.xsave, all);
    }
    vm.vcpu.fpu_saved = 1;
}

/// Makes `vm`'s FPU state (under XCR0 = `all`, see [`save_guest_registers`]), its own
/// XCR0 and its debug registers live. A zeroed area restores the init state.
pub(super) fn restore_guest_registers(vm: &mut VmRecord, all: u64) {
    let d = vm.vcpu.debug;
    // DR6 bits 63:32 are reserved (#GP if set): an arena record is not trusted with them.
    // SAFETY: see `set_debug_registers`; DR6 is masked to 32 bits.
    unsafe { crate::arch::instructions::set_debug_registers(d.dr, d.dr6 & 0xffff_ffff) };
    if vm.vcpu.xsave == 0 || !xsave_enabled() {
        return;
    }
    let xcr0 = if crate::vm::rules::valid_xcr0(vm.vcpu.xcr0, all) {
        vm.vcpu.xcr0
    } else {
        1
    };
    // SAFETY: `all` and `xcr0` are valid XCR0 values (checked above); the area is the
    // VM's own page, written by XSAVE under `all` or zeroed (XSTATE_BV = 0: init state).
    unsafe {
        vmx::xsetbv(all);
        vmx::xrstor(vm.vcpu.xsave, all);
        vmx::xsetbv(xcr0);
    }
}

pub(super) fn xsave_enabled() -> bool {
    crate::arch::instructions::control_registers()[3] & (1 << 18) != 0
}

/// Guest time: nanoseconds since the VM started, from the host TSC.
pub(super) fn guest_ns(vm: &VmRecord, caps: &Caps) -> u64 {
    guest_ns_at(vm, caps, rdtsc())
}

/// Guest time at host TSC value `tsc`.
pub(super) fn guest_ns_at(vm: &VmRecord, caps: &Caps, tsc: u64) -> u64 {
    crate::arch::tsc::ticks_to_ns(tsc.saturating_sub(vm.clock_start), caps.tsc_hz)
}

/// Before a VM entry: fire due timers, then inject the PIC's pending interrupt if the
/// guest can take it, or ask for an exit as soon as it can (interrupt-window exiting).
pub(super) fn deliver_interrupts(vm: &mut VmRecord, caps: &Caps) -> Result<(), VmxError> {
    use crate::vm::interrupts::{decide, Delivery};
    use crate::vmx::controls::primary::INTERRUPT_WINDOW_EXITING;
    let mut ev = crate::devices::DeviceEvents::default();
    vm.stats.timer_missed += vm.devices.tick(guest_ns(vm, caps), &mut ev);
    let pending = vm.devices.pic.pending_vector().is_some();
    if !pending && vm.window_open == 0 {
        return Ok(());
    }
    let v = &mut vmx::CurrentVmcs;
    let rflags = v.read(VmcsField::GuestRflags)?;
    let blocking = v.read(VmcsField::GuestInterruptibilityState)? as u32;
    let queued = v.read(VmcsField::EntryInterruptionInfo)? & (1 << 31) != 0;
    let want_window = match decide(pending, rflags, blocking, queued) {
        Delivery::Nothing => false,
        Delivery::OpenWindow => true,
        Delivery::Inject => {
            // The injection is written before the PIC acknowledges: a failure between the
            // two leaves the interrupt both queued and pending (delivered twice, which a
            // guest tolerates as a spurious repeat), never acknowledged and lost.
            if let Some(vector) = vm.devices.pic.pending_vector() {
                crate::vmx::event::inject_external_interrupt(vector).write_to(v)?;
                vm.devices.pic.acknowledge();
                vm.stats.interrupts += 1;
            }
            false
        }
    };
    if want_window != (vm.window_open != 0) {
        if want_window {
            v.set_bits(
                VmcsField::PrimaryProcBasedControls,
                u64::from(INTERRUPT_WINDOW_EXITING),
            )?;
        } else {
            v.clear_bits(
                VmcsField::PrimaryProcBasedControls,
                u64::from(INTERRUPT_WINDOW_EXITING),
            )?;
        }
        vm.window_open = u32::from(want_window);
    }
    Ok(())
}
