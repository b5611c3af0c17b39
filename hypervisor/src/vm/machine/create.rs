//! Turning VMX on, laying out the arena, and creating (and resetting) VMs: guest RAM,
//! EPT, the guest's initial memory image and the VMCS.

use super::*;

/// Why VMX could not be started.
pub enum StartError {
    NoRegionPage,
    Vmxon(VmxError),
    Arena(arena::ArenaError),
    NoBitmapPages,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRegionPage => f.write_str("no page for the VMXON region"),
            Self::Vmxon(e) => write!(f, "VMXON failed: {e}"),
            Self::Arena(e) => write!(f, "arena: {e}"),
            Self::NoBitmapPages => f.write_str("arena: no pages for the I/O and MSR bitmaps"),
        }
    }
}

/// Why a VM could not be created (one console line each).
pub enum CreateError {
    Exists,
    NoModule(usize),
    TableFull,
    NoMemory { needed: u64, largest: u64 },
    Elf(crate::loader::ElfError),
    Linux(linux::LinuxError),
    ArenaFull,
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exists => f.write_str("a VM with this name exists"),
            Self::NoModule(i) => write!(f, "there is no boot module {i}"),
            Self::TableFull => write!(f, "the VM table is full ({MAX_VMS} VMs)"),
            Self::NoMemory { needed, largest } => write!(
                f,
                "not enough free memory: needs {} in one piece, the largest free piece is {}",
                format_size(*needed),
                format_size(*largest)
            ),
            Self::Elf(e) => write!(f, "ELF: {e}"),
            Self::Linux(e) => write!(f, "kernel: {e}"),
            Self::ArenaFull => f.write_str("the arena has no free pages (raise arena=)"),
        }
    }
}

impl Vms {
    /// Turns VMX on for this CPU (region from `free`), lays out the arena and its shared
    /// bitmaps. Returns None (after a logged error) if any step fails.
    pub fn start(
        arena: Range,
        free: &mut FrameAllocator<FREE_RANGES>,
        caps: Caps,
        modules: &[Range],
        epoch: u64,
    ) -> Result<Vms, StartError> {
        let region = free.allocate(PAGE, PAGE).ok_or(StartError::NoRegionPage)?;
        zero_page(region.start);
        vmx::enable_xsave();
        // SAFETY: `region` was just allocated for this purpose and zeroed; cpu::probe found
        // VMX available and enabled.
        unsafe { vmx::vmxon(region.start, caps.vmcs_revision) }.map_err(StartError::Vmxon)?;
        // SAFETY: the layout reserved [arena.start, arena.end) for the arena alone; it is
        // identity-mapped and page-aligned. Zeroing first makes every field valid (the root
        // is plain integers), then `init` checks the size and fills it in.
        let root = unsafe {
            core::ptr::write_bytes(arena.start as *mut u8, 0, core::mem::size_of::<ArenaRoot>());
            &mut *(arena.start as *mut ArenaRoot)
        };
        root.init(arena.start, arena.len())
            .map_err(StartError::Arena)?;
        // Every port and every MSR access exits: no device claims a port yet, and MSRs are
        // emulated (all-ones bitmaps, SDM Vol. 3C §25.6.4 and §25.6.9).
        root.io_bitmaps[0] = alloc_filled(root, 0xff).unwrap_or(0);
        root.io_bitmaps[1] = alloc_filled(root, 0xff).unwrap_or(0);
        root.msr_bitmap = alloc_filled(root, 0xff).unwrap_or(0);
        if root.io_bitmaps.contains(&0) || root.msr_bitmap == 0 {
            return Err(StartError::NoBitmapPages);
        }
        log::info!(
            "arena: {} at {:#x}, root {} ({} pages), {} pages free",
            format_size(arena.len()),
            arena.start,
            format_size(core::mem::size_of::<ArenaRoot>() as u64),
            ArenaRoot::root_pages(),
            root.pages.pages() - root.pages.used()
        );
        Ok(Vms::over(root, caps, modules, epoch))
    }

    /// Creates every VM the boot modules describe (their strings, by module index). Each
    /// mistake gets one error line; the other VMs are still created.
    pub fn create_all(&mut self, strings: &[&str], free: &mut FrameAllocator<FREE_RANGES>) {
        // On the heap (transient): the specs are large and the boot stack is not.
        let mut specs: alloc::vec::Vec<(usize, config::ModuleSpec)> = alloc::vec::Vec::new();
        for (index, string) in strings.iter().enumerate() {
            match config::parse(string) {
                Ok(spec) => specs.push((index, spec)),
                Err(e) => log::error!("vm: module {index} (\"{string}\"): {e}"),
            }
        }
        let (plans, errors) = config::plan(&specs);
        for e in &errors {
            log::error!("vm {}: not created: {e}", e.name());
        }
        for plan in &plans {
            if let Err(e) = self.create(plan, free) {
                log::error!("vm {}: not created: {e}", plan.name);
            }
        }
    }

    /// Creates one VM, as a transaction (`arena::intent`): from its first arena page to
    /// its record being runnable, a failure makes recovery undo it.
    pub fn create(
        &mut self,
        plan: &VmPlan,
        free: &mut FrameAllocator<FREE_RANGES>,
    ) -> Result<usize, CreateError> {
        if self.root.find_vm(&plan.name).is_some() {
            return Err(CreateError::Exists);
        }
        let slot = self.root.free_slot().ok_or(CreateError::TableFull)?;
        let entry = self.entry_of(plan)?;
        let ram = free
            .allocate(plan.mem, 2 << 20)
            .ok_or(CreateError::NoMemory {
                needed: plan.mem,
                largest: free.largest_free(),
            })?;
        let mut vm = record_for(plan, self.root.next_vm_id, ram, entry);
        self.root.begin_create(slot, &plan.name);
        if self.take_vm_pages(&mut vm).is_none() {
            // Give back everything taken for this VM: its RAM and its arena pages.
            let _ = free.free(ram);
            self.root.undo_create();
            return Err(CreateError::ArenaFull);
        }
        self.root.vms[slot] = vm;
        if crate::triggers::take_mid_create() {
            panic!(
                "trigger: deliberate panic in the middle of creating vm {} ({} arena pages taken)",
                plan.name, self.root.create.count
            );
        }
        if let Err(e) = self.reset_guest(slot) {
            vmx_failure("VMCS setup", &self.root.vms[slot], e);
        }
        self.root.vms[slot].set_state(VmState::Runnable);
        // The id is spent with the commit: an undone creation leaves no trace.
        self.root.next_vm_id += 1;
        self.root.commit_create();
        let vm = &self.root.vms[slot];
        log::info!(
            "vm {}: created: id={} mem={} ram=[{:#x}, {:#x}) entry={:#x} args=\"{}\"",
            vm.name(),
            vm.id,
            format_size(plan.mem),
            ram.start,
            ram.end,
            entry,
            vm.args()
        );
        Ok(slot)
    }

    /// The guest's entry point, from its image (which must load into `plan.mem`).
    fn entry_of(&self, plan: &VmPlan) -> Result<u64, CreateError> {
        let module = *self
            .modules
            .get(plan.image)
            .ok_or(CreateError::NoModule(plan.image))?;
        Ok(match plan.role {
            Role::Elf => {
                crate::loader::parse(module_bytes(module), plan.mem, ELF_MIN_GPA)
                    .map_err(CreateError::Elf)?
                    .entry
            }
            Role::Kernel | Role::Initrd => {
                let image = module_bytes(module);
                let header = linux::parse(image).map_err(CreateError::Linux)?;
                let initrd = plan
                    .initrd
                    .and_then(|i| self.modules.get(i))
                    .map_or(0, |m| m.len() as usize);
                linux::place(&header, image.len(), initrd, &plan.args, plan.mem)
                    .map_err(CreateError::Linux)?
                    .entry
            }
        })
    }

    /// Takes the arena pages of the VM being created (VMCS, XSAVE area, EPT tables
    /// mapping its RAM), each recorded in the creation intent. None if the arena ran out
    /// (what was taken stays recorded, for `ArenaRoot::undo_create`).
    fn take_vm_pages(&mut self, vm: &mut VmRecord) -> Option<()> {
        let vmcs = self.root.alloc_create_page()?;
        zero_page(vmcs);
        vm.vcpu.vmcs = vmcs;
        let xsave = self.root.alloc_create_page()?;
        zero_page(xsave);
        vm.vcpu.xsave = xsave;
        let caps = self.caps.ept;
        let mapping = ram_mapping(vm);
        let mut tables = ArenaTables::creating(&mut *self.root);
        let ept = Ept::new(&mut tables)
            .and_then(|ept| ept.map(&mut tables, &mapping, &caps).map(|()| ept))
            .ok()?;
        vm.ept_root = ept.pml4;
        Some(())
    }

    /// Resets the VM in slot `slot` as a transaction (`arena::intent`): its reset intent
    /// (`kind`: [`arena::intent::RESET_OPERATOR`] or [`arena::intent::RESET_GUEST`]) is
    /// set before the first step and cleared after the last, so that recovery completes
    /// a reset a failure interrupted ([`Vms::complete_reset`]). The VM is runnable after
    /// it; an operator's reset also forgets its stop reason, the failures it was in
    /// flight at and a test's `bad-entry` (a guest's own reboot keeps them: it could
    /// otherwise launder them).
    pub(super) fn reset_vm(&mut self, slot: usize, kind: u32) -> Result<(), VmxError> {
        self.root.vms[slot].reset = kind;
        self.reset_guest(slot)?;
        let vm = &mut self.root.vms[slot];
        vm.set_state(VmState::Runnable);
        if kind == arena::intent::RESET_OPERATOR {
            vm.set_stop_reason(format_args!(""));
            vm.suspect = arena::SuspectRecord::EMPTY;
            vm.bad_entry = 0;
        }
        vm.reset = arena::intent::RESET_NONE;
        Ok(())
    }

    /// Recovery: redoes, from the start, the reset of the VM in slot `slot` that a
    /// failure interrupted (its record says which kind; recovery has checked the record).
    pub fn complete_reset(&mut self, slot: usize) -> Result<(), VmxError> {
        let kind = self.root.vms[slot].reset;
        self.reset_vm(slot, kind)
    }

    /// Puts the VM in slot `slot` in its initial state: RAM zeroed and reloaded from its
    /// module, page tables, GDT and start info written, registers cleared, VMCS set up.
    pub(super) fn reset_guest(&mut self, slot: usize) -> Result<(), VmxError> {
        let index = self.root.vms[slot].config.module_index as usize;
        let module = self
            .modules
            .get(index)
            .copied()
            .map_or(&[][..], module_bytes);
        let vm = &mut self.root.vms[slot];
        let initrd = match vm.config.initrd_module {
            arena::NO_MODULE => &[][..],
            i => self
                .modules
                .get(i as usize)
                .copied()
                .map_or(&[][..], module_bytes),
        };
        let mut ram = Ram::of(vm);
        let (low, high) = ram.bytes().split_at_mut(vm.config.ram_size as usize / 2);
        zero_petting(low);
        if vm.reset != arena::intent::RESET_NONE && crate::triggers::take_mid_reset() {
            panic!(
                "trigger: deliberate panic in the middle of resetting vm {} (half its RAM cleared)",
                vm.name()
            );
        }
        zero_petting(high);
        vm.vcpu.regs = GuestRegisters::default();
        if vm.config.kind == arena::KIND_LINUX {
            // Checked when the VM was created; the module cannot have changed since.
            let cmdline = vm.args();
            if let Ok(header) = linux::parse(module) {
                if let Ok(p) = linux::place(
                    &header,
                    module.len(),
                    initrd.len(),
                    cmdline,
                    vm.config.ram_size,
                ) {
                    linux::load(module, initrd, cmdline, &header, &p, ram.bytes());
                }
            }
            // 64-bit boot protocol: RSI = the zero page (boot.rst, "64-bit BOOT PROTOCOL").
            vm.vcpu.regs.rsi = linux::BOOT_PARAMS_GPA;
        } else {
            if let Ok(image) = crate::loader::parse(module, vm.config.ram_size, ELF_MIN_GPA) {
                crate::loader::load(&image, module, ram.bytes());
            }
            vm.vcpu.regs.rdi = abi::START_INFO_GPA;
        }
        crate::watchdog::pet_long_work();
        write_guest_tables(&mut ram, vm);
        vm.vcpu.journal = arena::Journal::default();
        vm.vcpu.xcr0 = 1;
        vm.vcpu.fpu_saved = 0;
        vm.vcpu.msrs = arena::SwappedMsrs::default();
        vm.vcpu.cr8 = 0;
        vm.vcpu.debug = arena::DebugRegisters::INIT;
        vm.devices = crate::devices::Devices::new(self.epoch);
        vm.clock_start = rdtsc();
        vm.window_open = 0;
        zero_page(vm.vcpu.xsave);
        // SAFETY: the VMCS page belongs to this VM; VMCLEAR initialises it (after the
        // revision id is written) and VMPTRLD makes it current on this CPU.
        unsafe {
            core::ptr::write_volatile(vm.vcpu.vmcs as *mut u32, self.caps.vmcs_revision);
            vmx::vmclear(vm.vcpu.vmcs)?;
            vmx::vmptrld(vm.vcpu.vmcs)?;
        }
        vm.vcpu.launched = 0;
        let eptp = Ept { pml4: vm.ept_root }.eptp(&self.caps.ept);
        setup_vmcs(
            &mut vmx::CurrentVmcs,
            vm,
            &self.caps,
            eptp,
            self.root.io_bitmaps,
            self.root.msr_bitmap,
        )?;
        // Give the CPU back to the VM that was current: its VMCS, and (untouched) its FPU
        // state still live in the registers. If the reset VM itself was current, nothing
        // is: the next switch loads it from scratch, with the initial FPU state.
        match self.current {
            Some(previous) if previous != slot => {
                // SAFETY: that VM's VMCS page, initialised when it was created.
                unsafe { vmx::vmptrld(self.root.vms[previous].vcpu.vmcs)? };
            }
            _ => {
                self.current = None;
                self.root.fpu_owner = 0;
            }
        }
        Ok(())
    }
}

/// A new VM's record (not yet runnable): its identity and configuration, sealed.
fn record_for(plan: &VmPlan, id: u32, ram: Range, entry: u64) -> VmRecord {
    let mut vm = VmRecord::EMPTY;
    vm.id = id;
    arena::set_text(&mut vm.name, &plan.name);
    vm.config.module_index = plan.image as u32;
    vm.config.initrd_module = plan.initrd.map_or(arena::NO_MODULE, |i| i as u32);
    vm.config.kind = if plan.role == Role::Elf {
        arena::KIND_ELF
    } else {
        arena::KIND_LINUX
    };
    vm.config.on_triple_fault = match plan.on_triple_fault {
        TripleFault::Stop => arena::ON_TRIPLE_FAULT_STOP,
        TripleFault::Reset => arena::ON_TRIPLE_FAULT_RESET,
    };
    vm.config.on_reboot = match plan.on_reboot {
        TripleFault::Stop => arena::ON_REBOOT_STOP,
        TripleFault::Reset => arena::ON_REBOOT_RESET,
    };
    vm.config.ram_start = ram.start;
    vm.config.ram_size = plan.mem;
    vm.config.entry = entry;
    arena::set_text(&mut vm.config.args, &plan.args);
    vm.seal_config();
    vm
}

/// Zeroes a VM's RAM in 1 MiB pieces, telling the watchdog after each: all of it at once
/// (up to 8 GiB; 128 MiB takes seconds in Bochs) would outlast both of its limits. Each
/// piece is long work that legitimately keeps the VMs waiting
/// ([`crate::watchdog::pet_long_work`]), not only a heartbeat: other VMs may be runnable
/// meanwhile (`vm create`, `vm reset`, a guest's reboot), and they are not entered.
fn zero_petting(bytes: &mut [u8]) {
    for piece in bytes.chunks_mut(1 << 20) {
        piece.fill(0);
        crate::watchdog::pet_long_work();
    }
}

/// The code and data selectors a guest starts with (see `write_guest_tables`).
pub(super) fn selectors(vm: &VmRecord) -> (u16, u16) {
    if vm.config.kind == arena::KIND_LINUX {
        (0x10, 0x18)
    } else {
        (0x08, 0x10)
    }
}

/// Writes the GDT, identity-map page tables (2 MiB pages over all of RAM) and start
/// info that an ELF guest expects (`abi::StartInfo`).
pub(super) fn write_guest_tables(ram: &mut Ram, vm: &VmRecord) {
    let size = vm.config.ram_size;
    let put = |ram: &mut Ram, gpa: u64, value: u64| {
        ram.write(gpa, &value.to_le_bytes());
    };
    // GDT: null, 64-bit code (0x08), data (0x10) for ELF guests; for Linux the boot
    // protocol's __BOOT_CS (0x10, code) and __BOOT_DS (0x18, data).
    let (code, data) = selectors(vm);
    put(ram, GUEST_GDT, 0);
    put(ram, GUEST_GDT + 8, 0);
    put(ram, GUEST_GDT + u64::from(code), 0x00af_9a00_0000_ffff);
    put(ram, GUEST_GDT + u64::from(data), 0x00cf_9200_0000_ffff);
    // Present | writable (| page size for 2 MiB leaves), SDM Vol. 3A §4.5.
    let pds = size.div_ceil(1 << 30);
    put(ram, GUEST_PML4, GUEST_PDPT | 0x3);
    for i in 0..pds {
        put(ram, GUEST_PDPT + 8 * i, (GUEST_PD + PAGE * i) | 0x3);
    }
    for j in 0..size.div_ceil(2 << 20) {
        put(ram, GUEST_PD + 8 * j, (j << 21) | 0x83);
    }
    if vm.config.kind == arena::KIND_LINUX {
        return;
    }
    let mut info = abi::StartInfo {
        magic: abi::START_INFO_MAGIC,
        mem_size: size,
        vm_id: u64::from(vm.id),
        name: [0; 32],
        args: [0; 256],
    };
    info.name[..vm.name().len()].copy_from_slice(vm.name().as_bytes());
    let args = vm.args().as_bytes();
    info.args[..args.len()].copy_from_slice(args);
    // SAFETY: StartInfo is repr(C) plain integers and byte arrays: viewing it as bytes is sound.
    let bytes = unsafe {
        core::slice::from_raw_parts(
            (&info as *const abi::StartInfo).cast::<u8>(),
            core::mem::size_of::<abi::StartInfo>(),
        )
    };
    ram.write(abi::START_INFO_GPA, bytes);
}

/// Host and control state of the VMCS, and the initial guest state of an ELF guest
/// (64-bit mode, flat segments; SDM Vol. 3C §25.4-25.8 for the fields, §27.3 for the
/// checks they must pass).
pub(super) fn setup_vmcs(
    v: &mut impl VmcsAccess,
    vm: &VmRecord,
    caps: &Caps,
    eptp: u64,
    io_bitmaps: [u64; 2],
    msr_bitmap: u64,
) -> Result<(), VmxError> {
    use VmcsField as F;
    controls_for(vm, caps, eptp, io_bitmaps, msr_bitmap, false, true).write(v)?;
    host_state().write(v)?;
    // Guest state: 64-bit mode, CPL 0, flat segments, paging on (page tables at GUEST_PML4).
    let [f0, f1, g0, g1] = caps.cr_fixed;
    let guest_cr0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
    let guest_cr4: u64 = 1 << 5;
    let code_ar = 0xa09b; // present, S, execute/read accessed, L, G (SDM Vol. 3C §25.4.1)
    let data_ar = 0xc093; // present, S, read/write accessed, D/B, G
    let guest: [(F, u64); 37] = [
        (F::GuestCr0, exits::cr0_real(guest_cr0, f0, f1)),
        (F::Cr0ReadShadow, guest_cr0),
        (F::GuestCr3, GUEST_PML4),
        (F::GuestCr4, exits::cr4_real(guest_cr4, g0, g1)),
        (F::Cr4ReadShadow, guest_cr4),
        (F::GuestIa32Efer, (1 << 8) | (1 << 10)),
        (F::GuestIa32Pat, 0x0007_0406_0007_0406),
        (F::GuestIa32Debugctl, 0),
        (F::GuestDr7, 0x400),
        (
            F::GuestRsp,
            if vm.config.kind == arena::KIND_LINUX {
                linux::BOOT_PARAMS_GPA
            } else {
                vm.config.ram_size
            },
        ),
        (F::GuestRip, vm.config.entry),
        (F::GuestRflags, 0x2),
        (F::GuestCsSelector, u64::from(selectors(vm).0)),
        (F::GuestCsBase, 0),
        (F::GuestCsLimit, 0xffff_ffff),
        (F::GuestCsAccessRights, code_ar),
        (F::GuestSsSelector, u64::from(selectors(vm).1)),
        (F::GuestSsBase, 0),
        (F::GuestSsLimit, 0xffff_ffff),
        (F::GuestSsAccessRights, data_ar),
        (F::GuestLdtrSelector, 0),
        (F::GuestLdtrAccessRights, 1 << 16),
        (F::GuestTrSelector, 0),
        (F::GuestTrBase, 0),
        (F::GuestTrLimit, 0x67),
        (F::GuestTrAccessRights, 0x8b), // present, 64-bit busy TSS
        (F::GuestGdtrBase, GUEST_GDT),
        (F::GuestGdtrLimit, 31),
        (F::GuestIdtrBase, 0),
        (F::GuestIdtrLimit, 0),
        (F::GuestInterruptibilityState, 0),
        (F::GuestActivityState, 0),
        (F::GuestPendingDebugExceptions, 0),
        (F::GuestIa32SysenterCs, 0),
        (F::GuestIa32SysenterEsp, 0),
        (F::GuestIa32SysenterEip, 0),
        (F::EntryInterruptionInfo, 0),
    ];
    for (field, value) in guest {
        v.write(field, value)?;
    }
    for (sel, base, limit, ar) in [
        (
            F::GuestDsSelector,
            F::GuestDsBase,
            F::GuestDsLimit,
            F::GuestDsAccessRights,
        ),
        (
            F::GuestEsSelector,
            F::GuestEsBase,
            F::GuestEsLimit,
            F::GuestEsAccessRights,
        ),
        (
            F::GuestFsSelector,
            F::GuestFsBase,
            F::GuestFsLimit,
            F::GuestFsAccessRights,
        ),
        (
            F::GuestGsSelector,
            F::GuestGsBase,
            F::GuestGsLimit,
            F::GuestGsAccessRights,
        ),
    ] {
        v.write(sel, u64::from(selectors(vm).1))?;
        v.write(base, 0)?;
        v.write(limit, 0xffff_ffff)?;
        v.write(ar, data_ar)?;
    }
    Ok(())
}

/// The controls of `vm`'s VMCS: the boot's control set, the shared bitmaps, its EPT and
/// VPID, and the two bits that change at run time (interrupt window, IA-32e guest).
pub(super) fn controls_for(
    vm: &VmRecord,
    caps: &Caps,
    eptp: u64,
    io_bitmaps: [u64; 2],
    msr_bitmap: u64,
    interrupt_window: bool,
    ia32e_guest: bool,
) -> Controls {
    Controls {
        set: caps.controls,
        io_bitmaps,
        msr_bitmap,
        eptp,
        vpid: caps.vpid.then_some(vm.id as u16),
        cr0_mask: caps.limits.cr0_mask,
        cr4_mask: caps.limits.cr4_mask,
        // The guest's TSC starts at 0 when the VM does (TSC offsetting, SDM Vol. 3C §26.6.5).
        tsc_offset: 0u64.wrapping_sub(vm.clock_start),
        interrupt_window,
        ia32e_guest,
    }
}

/// This CPU's host state: its control registers, descriptor tables, TSS, EFER and PAT, and
/// the exit landing.
pub fn host_state() -> HostState {
    let [cr0, _, cr3, cr4] = crate::arch::instructions::control_registers();
    let (gdtr, idtr) = (
        x86_64::instructions::tables::sgdt(),
        x86_64::instructions::tables::sidt(),
    );
    // SAFETY (rdmsr): IA32_EFER and IA32_PAT exist on every CPU with VMX.
    let (efer, pat) = unsafe { (rdmsr(0xc000_0080), rdmsr(0x277)) };
    HostState {
        cr0,
        cr3,
        cr4,
        cs: crate::arch::gdt::KERNEL_CODE_SELECTOR,
        tr: crate::arch::gdt::TSS_SELECTOR,
        tr_base: crate::arch::gdt::tss_base(0),
        gdtr_base: gdtr.base.as_u64(),
        idtr_base: idtr.base.as_u64(),
        efer,
        pat,
        rip: vmentry::exit_landing(),
    }
}
