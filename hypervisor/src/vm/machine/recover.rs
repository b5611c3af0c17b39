//! The machine side of a recovery boot: VMX on again, the arena adopted as the dead
//! instance left it, and the steps of the repair passes that execute VMX instructions or
//! walk arena pages. The passes themselves, and their order, are in the `recovery` crate
//! (DESIGN 6); each step here does one thing and reports what it changed.

use super::create::controls_for;
use super::*;
use crate::vmx::fields::InstructionError;

impl Vms {
    /// A recovery boot's counterpart of [`Vms::start`]: VMX on (region from `free`), and
    /// the arena at `arena` taken as it is, after its header, page bitmap and shared
    /// bitmaps pass validation. The VM records are checked by the repair passes.
    pub fn adopt(
        arena: Range,
        free: &mut FrameAllocator<FREE_RANGES>,
        caps: Caps,
        modules: &[Range],
        epoch: u64,
    ) -> Result<Vms, StartError> {
        let region = free.allocate(PAGE, PAGE).ok_or(StartError::NoRegionPage)?;
        zero_page(region.start);
        // SAFETY: the layout reserved the arena; it is identity-mapped and the root is
        // plain integers, so any content is a valid value. Nothing else uses it now.
        let root = unsafe { &mut *(arena.start as *mut ArenaRoot) };
        root.validate_header(arena.start, arena.len())
            .map_err(StartError::Arena)?;
        save_live_guest_state(root, caps.limits.xcr0);
        vmx::enable_xsave();
        // SAFETY: as in `start`. A failure path that could not run VMXOFF (it failed
        // itself) leaves the CPU in VMX operation: VMXON then fails with error 15, and
        // VMXOFF followed by VMXON starts afresh.
        let on = unsafe { vmx::vmxon(region.start, caps.vmcs_revision) };
        if let Err(VmxError::VmFailValid(InstructionError::VmxonInRoot)) = on {
            // SAFETY: the CPU is in VMX root operation (that is what error 15 says).
            unsafe {
                let _ = vmx::vmxoff();
                vmx::vmxon(region.start, caps.vmcs_revision).map_err(StartError::Vmxon)?;
            }
        } else {
            on.map_err(StartError::Vmxon)?;
        }
        Ok(Vms::over(root, caps, modules, epoch))
    }

    pub fn root(&self) -> &ArenaRoot {
        self.root
    }

    pub fn root_mut(&mut self) -> &mut ArenaRoot {
        self.root
    }

    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// The physical address of the arena's lock (for the fault injector's lock faults).
    pub fn arena_lock_addr(&self) -> u64 {
        &self.root.lock as *const arena::ArenaLock as u64
    }

    /// Takes every live VM's RAM out of `free` (the rebuilt allocator starts with all of
    /// it free). A VM whose RAM is not wholly free cannot be trusted with it: it is
    /// stopped and its slot released, so its range is not handed out twice. Returns how
    /// many VMs that stopped.
    pub fn adopt_ram(&mut self, free: &mut FrameAllocator<FREE_RANGES>) -> u32 {
        let mut dropped = 0;
        for vm in self
            .root
            .vms
            .iter_mut()
            .filter(|vm| vm.state != VmState::Free as u32)
        {
            let ram = Range::new(
                vm.config.ram_start,
                vm.config.ram_start.saturating_add(vm.config.ram_size),
            );
            if let Err(e) = free.take(ram) {
                log::error!(
                    "vm {}: RAM {ram} cannot be re-adopted ({e}); the VM is dropped",
                    vm.name()
                );
                *vm = VmRecord::EMPTY;
                dropped += 1;
            }
        }
        dropped
    }

    /// Verifies the VM's EPT against its one mapping (all of its RAM at guest-physical 0),
    /// through arena pages only.
    pub fn verify_ept(&mut self, slot: usize) -> Result<(), crate::ept::EptError> {
        let vm = &self.root.vms[slot];
        let mapping = ram_mapping(vm);
        let ept = Ept { pml4: vm.ept_root };
        let tables = ArenaTables::of(&mut *self.root);
        let owned = |page: u64| tables.root.owns_page(page);
        ept.verify(&tables, &[mapping], &owned)
    }

    /// Builds the VM's EPT afresh in new arena pages (the old tables are not trusted, so
    /// they are left allocated rather than freed). False if the arena has no room.
    pub fn rebuild_ept(&mut self, slot: usize) -> bool {
        let mapping = ram_mapping(&self.root.vms[slot]);
        let mut tables = ArenaTables::of(&mut *self.root);
        let caps = self.caps.ept;
        let built = Ept::new(&mut tables)
            .and_then(|ept| ept.map(&mut tables, &mapping, &caps).map(|()| ept));
        match built {
            Ok(ept) => {
                self.root.vms[slot].ept_root = ept.pml4;
                true
            }
            Err(_) => false,
        }
    }

    /// INVEPT and INVVPID of everything: no translation cached by the dead instance's
    /// entries survives (SDM Vol. 3C §29.4.3).
    pub fn invalidate_translations(&self) -> Result<(), VmxError> {
        // SAFETY: VMX is on (adopt); these only drop cached translations.
        unsafe {
            vmx::invept_all()?;
            if self.caps.vpid {
                vmx::invvpid_all()?;
            }
        }
        Ok(())
    }

    /// VMCLEAR and VMPTRLD the VM's VMCS: its contents (flushed by the failure path's
    /// VMCLEAR) become current, and the next entry is a VMLAUNCH.
    pub fn load_vmcs(&mut self, slot: usize) -> Result<(), VmxError> {
        let vm = &mut self.root.vms[slot];
        // SAFETY: the VMCS page is this VM's arena page (validate_vm checked ownership).
        unsafe {
            vmx::vmclear(vm.vcpu.vmcs)?;
            vmx::vmptrld(vm.vcpu.vmcs)?;
        }
        vm.vcpu.launched = 0;
        // The FPU state is not this VM's: the next switch must load it.
        self.current = None;
        Ok(())
    }

    /// Finishes the VM's half-done commit from the commit log (its VMCS must be current:
    /// `load_vmcs`). Applying the logged effect again from the start gives the same guest
    /// state; the outcome (halt, reset, ...) is not acted on, so the VM simply runs on.
    /// False if the log does not hold this exit intact (or the commit failed).
    pub fn roll_forward(&mut self, slot: usize) -> bool {
        let vm = &mut self.root.vms[slot];
        let Some((exit, effect)) = self.root.commit.load(slot, vm.vcpu.journal.exit_seq) else {
            return false;
        };
        let mut ram = Ram::of(vm);
        let vmcs = &mut vmx::CurrentVmcs;
        if commit(effect, &exit, vm, vmcs, &mut ram, &mut SerialSink).is_err() {
            return false;
        }
        self.root.commit.clear();
        true
    }

    /// The controls the VM's VMCS must hold (from the boot's capabilities and the record).
    pub fn controls_of(&self, slot: usize) -> Controls {
        let vm = &self.root.vms[slot];
        let eptp = Ept { pml4: vm.ept_root }.eptp(&self.caps.ept);
        controls_for(
            vm,
            &self.caps,
            eptp,
            self.root.io_bitmaps,
            self.root.msr_bitmap,
            vm.window_open != 0,
            true,
        )
    }

    /// Re-arms the virtual timers: each VM's device models catch up on the periods that
    /// passed while the hypervisor was down. Returns how many periods that was.
    pub fn catch_up_timers(&mut self) -> u32 {
        let caps = self.caps;
        let mut missed = 0u64;
        for vm in self
            .root
            .vms
            .iter_mut()
            .filter(|vm| matches!(vm.state(), Some(VmState::Runnable | VmState::Waiting)))
        {
            let mut ev = crate::devices::DeviceEvents::default();
            let m = vm.devices.tick(guest_ns(vm, &caps), &mut ev);
            vm.stats.timer_missed += m;
            missed += m;
        }
        missed.min(u64::from(u32::MAX)) as u32
    }

    /// The VM table's view of what is in flight, for the scheduler: nothing is current.
    pub fn reset_scheduler(&mut self) {
        self.current = None;
        self.last = None;
        self.slice_end = 0;
        self.root.running = 0;
    }
}

/// The FPU/SSE/AVX registers, the debug registers and the swapped MSRs still hold the
/// state of the VM that was current when the hypervisor failed (the host never touches
/// them, and a microreboot does not reset them): save them into its record before
/// anything else can. `all`: the XSAVE components switched between VMs.
fn save_live_guest_state(root: &mut ArenaRoot, all: u64) {
    let Some(slot) = (root.fpu_owner as usize).checked_sub(1) else {
        return;
    };
    root.fpu_owner = 0;
    let Some(vm) = root.vms.get(slot) else {
        return;
    };
    if vm.state == VmState::Free as u32 || !root.owns_page(vm.vcpu.xsave) {
        return;
    }
    let vm = &mut root.vms[slot];
    save_guest_registers(vm, all);
    // SAFETY: the MSR exists on every x86-64 CPU; reading it has no side effect.
    vm.vcpu.msrs.kernel_gs_base =
        unsafe { crate::arch::instructions::rdmsr(exits::msr::IA32_KERNEL_GS_BASE) };
}
