//! VMs on the real machine: VMX on, the arena laid out, VMs created from GRUB modules,
//! and the loop that runs them. Everything here executes privileged instructions or
//! dereferences physical addresses; the decisions it acts on are made by the pure
//! modules beside it (`config`, `exits`, `hypercall`, `scheduler`, `crate::ept`,
//! `crate::loader`), which are unit-tested on the host.

use core::fmt::{self, Write};

use super::config::{self, Role, TripleFault, VmPlan};
use super::exits::{self, Exit, GuestMemory, Host, Outcome};
use super::scheduler::{self, SLICE_TSC};
use super::{commit, ConsoleSink, GuestMemoryMut};
use crate::arch::instructions::{rdmsr, rdtsc, wrmsr};
use crate::arch::vmentry::{self, EntryResult};
use crate::arch::{serial, vmx};
use crate::arena::{self, ArenaRoot, Phase, VmRecord, VmState, MAX_VMS};
use crate::ept::{Access, Ept, EptCaps, Mapping, TableMemory};
use crate::failure::{self, Failure};
use crate::loader::linux;
use crate::memory::{format_size, FrameAllocator, Range, FREE_RANGES};
use crate::vmx::exit::ExitReason;
use crate::vmx::fields::{GuestRegisters, VmcsAccess, VmcsField, VmxError};

const PAGE: u64 = 4096;
/// Guest-physical layout of an ELF VM (see `abi::StartInfo`).
const GUEST_GDT: u64 = 0x500;
const GUEST_PML4: u64 = 0x1000;
const GUEST_PDPT: u64 = 0x2000;
const GUEST_PD: u64 = 0x3000;
/// Page directories that fit below the start-info page... and the 64 KiB limit.
const GUEST_MAX_PDS: u64 = (0x10000 - GUEST_PD) / PAGE;
const ELF_MIN_GPA: u64 = 1 << 20;

/// Everything the VM layer keeps outside the arena (transient: rebuilt at every boot).
pub struct Vms {
    root: &'static mut ArenaRoot,
    caps: Caps,
    /// Slot of the VM whose VMCS is current on this CPU (and whose FPU state is live).
    current: Option<usize>,
    /// Slot scheduled last: where the round robin continues.
    last: Option<usize>,
    slice_end: u64,
    /// Wall-clock time at boot (seconds since 1970, UTC): where guest RTCs start.
    epoch: u64,
    /// The GRUB modules (guest images), by index, for resets.
    modules: heapless::Vec<Range, { crate::bootinfo::MAX_MODULES }>,
}

/// VMX facts gathered once at boot.
#[derive(Clone, Copy)]
pub struct Caps {
    pub vmcs_revision: u32,
    pub timer_rate: u8,
    pub ept: EptCaps,
    pub vpid: bool,
    pub controls: crate::vmx::controls::ControlSet,
    /// IA32_VMX_CR0_FIXED0/1, CR4_FIXED0/1.
    pub cr_fixed: [u64; 4],
    pub xcr0: u64,
    /// Host TSC frequency in Hz (calibrated at boot): the clock of guest time.
    pub tsc_hz: u64,
}

impl Caps {
    /// Derives everything from the probe: the control set (adjusted to the capability
    /// MSRs), EPT and VPID support, the preemption-timer rate, the CR fixed bits and the
    /// XCR0 bits the host can switch. Err names what is missing.
    pub fn from_probe(
        report: &crate::cpu::CpuReport,
        vmx: &crate::cpu::VmxReport,
        tsc_hz: u64,
    ) -> Result<(Caps, crate::vmx::controls::Dropped), crate::vmx::controls::ControlError> {
        use crate::vmx::controls::{Capabilities, ControlSet, OptionalControl};
        let m = &report.msrs;
        let caps = Capabilities {
            pinbased: m.pinbased,
            procbased: m.procbased,
            procbased2: m.procbased2,
            exit: m.exit,
            entry: m.entry,
        };
        let (controls, dropped) = ControlSet::lazarus(&caps)?;
        let xsave = raw_cpuid::cpuid!(1).ecx & (1 << 26) != 0;
        let xcr0 = if xsave {
            let leaf = raw_cpuid::cpuid!(0xd, 0);
            (u64::from(leaf.edx) << 32) | u64::from(leaf.eax)
        } else {
            1
        };
        Ok((
            Caps {
                vmcs_revision: vmx.vmcs_revision,
                timer_rate: vmx.preemption_timer_rate,
                ept: EptCaps::from_ept_vpid_cap(m.ept_vpid_cap),
                vpid: !dropped.contains(OptionalControl::Vpid),
                controls,
                cr_fixed: m.cr_fixed,
                xcr0,
                tsc_hz,
            },
            dropped,
        ))
    }
}

/// Physical memory through the identity map, as the EPT builder sees it.
struct ArenaTables<'a> {
    root: &'a mut ArenaRoot,
    /// Pages handed out, so a failed build can give them back.
    taken: heapless::Vec<u64, 64>,
}

impl TableMemory for ArenaTables<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.taken.is_full() {
            return None;
        }
        let page = self.root.alloc_page()?;
        zero_page(page);
        let _ = self.taken.push(page);
        Some(page)
    }

    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is an arena page handed out by `alloc_table` for this EPT; the
        // arena is identity-mapped and only the VM layer (on this CPU) touches it.
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }

    fn table_ref(&self, phys: u64) -> &[u64; 512] {
        // SAFETY: as above, read-only.
        unsafe { &*(phys as *const [u64; 512]) }
    }
}

fn zero_page(page: u64) {
    // SAFETY: callers pass pages they own (fresh arena pages), identity-mapped.
    unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE as usize) };
}

/// A VM's RAM through the identity map, indexed by guest-physical address.
pub struct Ram {
    base: u64,
    size: u64,
}

impl Ram {
    fn of(vm: &VmRecord) -> Self {
        Self {
            base: vm.config.ram_start,
            size: vm.config.ram_size,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: [base, base + size) is this VM's RAM, allocated from the free pool for it
        // alone and identity-mapped; nothing else holds a reference while this one lives.
        unsafe { core::slice::from_raw_parts_mut(self.base as *mut u8, self.size as usize) }
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, len: u64) -> Option<&[u8]> {
        let end = gpa.checked_add(len)?;
        if end > self.size {
            return None;
        }
        // SAFETY: bounds checked against the VM's RAM just above.
        Some(unsafe { core::slice::from_raw_parts((self.base + gpa) as *const u8, len as usize) })
    }
}

impl GuestMemoryMut for Ram {
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let Some(end) = gpa.checked_add(data.len() as u64) else {
            return false;
        };
        if end > self.size {
            return false;
        }
        self.bytes()[gpa as usize..end as usize].copy_from_slice(data);
        true
    }
}

struct RealHost<'a> {
    caps: &'a Caps,
}

impl Host for RealHost<'_> {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = raw_cpuid::cpuid!(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    fn rdtsc(&self) -> u64 {
        rdtsc()
    }
    fn supported_xcr0(&self) -> u64 {
        self.caps.xcr0
    }
    fn cr_fixed(&self) -> [u64; 4] {
        self.caps.cr_fixed
    }
    fn tsc_hz(&self) -> u64 {
        self.caps.tsc_hz
    }
}

/// Guest console lines: `[NAME] text`.
struct SerialSink;

impl ConsoleSink for SerialSink {
    fn vm_line(&mut self, vm: &str, line: &str) {
        let mut out: heapless::String<{ arena::CONSOLE_LINE + 32 }> = heapless::String::new();
        let _ = writeln!(out, "[{vm}] {line}");
        serial::write_line(&out);
    }
}

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
    TooLarge,
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
            Self::TooLarge => write!(
                f,
                "ELF VMs may have at most {} of RAM (identity map limit)",
                format_size(GUEST_MAX_PDS << 30)
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
        Ok(Vms {
            root,
            caps,
            current: None,
            last: None,
            epoch,
            slice_end: 0,
            modules: modules.iter().copied().collect(),
        })
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

    /// Creates one VM.
    pub fn create(
        &mut self,
        plan: &VmPlan,
        free: &mut FrameAllocator<FREE_RANGES>,
    ) -> Result<usize, CreateError> {
        if self.root.find_vm(&plan.name).is_some() {
            return Err(CreateError::Exists);
        }
        if plan.mem > GUEST_MAX_PDS << 30 {
            return Err(CreateError::TooLarge);
        }
        let slot = self.root.free_slot().ok_or(CreateError::TableFull)?;
        let module = *self
            .modules
            .get(plan.image)
            .ok_or(CreateError::NoModule(plan.image))?;
        let entry = match plan.role {
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
        };
        let ram = free
            .allocate(plan.mem, 2 << 20)
            .ok_or(CreateError::NoMemory {
                needed: plan.mem,
                largest: free.largest_free(),
            })?;
        let mut vm = VmRecord::EMPTY;
        vm.id = self.root.next_vm_id;
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
        let pages = (|| {
            let vmcs = self.root.alloc_page()?;
            let xsave = self.root.alloc_page()?;
            Some((vmcs, xsave))
        })();
        let Some((vmcs, xsave)) = pages else {
            let _ = free.free(ram);
            return Err(CreateError::ArenaFull);
        };
        zero_page(vmcs);
        zero_page(xsave);
        vm.vcpu.vmcs = vmcs;
        vm.vcpu.xsave = xsave;
        let mut tables = ArenaTables {
            root: &mut *self.root,
            taken: heapless::Vec::new(),
        };
        let all = Access {
            read: true,
            write: true,
            execute: true,
        };
        let mapping = Mapping {
            gpa: 0,
            hpa: ram.start,
            len: plan.mem,
            access: all,
        };
        let ept = Ept::new(&mut tables)
            .and_then(|ept| ept.map(&mut tables, &mapping, &self.caps.ept).map(|()| ept));
        let Ok(ept) = ept else {
            // Give back everything taken for this VM: its RAM and its arena pages.
            let taken = core::mem::take(&mut tables.taken);
            let _ = free.free(ram);
            for page in [vmcs, xsave].into_iter().chain(taken) {
                let _ = self.root.free_page(page);
            }
            return Err(CreateError::ArenaFull);
        };
        vm.ept_root = ept.pml4;
        self.root.next_vm_id += 1;
        self.root.vms[slot] = vm;
        if let Err(e) = self.reset_guest(slot) {
            vmx_failure("VMCS setup", &self.root.vms[slot], e);
        }
        self.root.vms[slot].set_state(VmState::Runnable);
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

    /// Puts the VM in slot `slot` in its initial state: RAM zeroed and reloaded from its
    /// module, page tables, GDT and start info written, registers cleared, VMCS set up.
    fn reset_guest(&mut self, slot: usize) -> Result<(), VmxError> {
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
        ram.bytes().fill(0);
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
        write_guest_tables(&mut ram, vm);
        vm.vcpu.journal = arena::Journal::default();
        vm.vcpu.xcr0 = 1;
        vm.vcpu.fpu_saved = 0;
        vm.vcpu.msrs = arena::SwappedMsrs::default();
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
        // The guest's TSC starts at 0 when the VM does (TSC offsetting, SDM Vol. 3C §26.6.5).
        vmx::CurrentVmcs.write(VmcsField::TscOffset, 0u64.wrapping_sub(vm.clock_start))?;
        // Give the CPU back to the VM that was current: its VMCS, and (untouched) its FPU
        // state still live in the registers. If the reset VM itself was current, nothing
        // is: the next switch loads it from scratch, with the initial FPU state.
        match self.current {
            Some(previous) if previous != slot => {
                // SAFETY: that VM's VMCS page, initialised when it was created.
                unsafe { vmx::vmptrld(self.root.vms[previous].vcpu.vmcs)? };
            }
            _ => self.current = None,
        }
        Ok(())
    }
}

/// Allocates an arena page filled with `byte`.
fn alloc_filled(root: &mut ArenaRoot, byte: u8) -> Option<u64> {
    let page = root.alloc_page()?;
    // SAFETY: a fresh arena page, identity-mapped, owned by the caller.
    unsafe { core::ptr::write_bytes(page as *mut u8, byte, PAGE as usize) };
    Some(page)
}

/// The code and data selectors a guest starts with (see `write_guest_tables`).
fn selectors(vm: &VmRecord) -> (u16, u16) {
    if vm.config.kind == arena::KIND_LINUX {
        (0x10, 0x18)
    } else {
        (0x08, 0x10)
    }
}

/// Writes the GDT, identity-map page tables (2 MiB pages over all of RAM) and start
/// info that an ELF guest expects (`abi::StartInfo`).
fn write_guest_tables(ram: &mut Ram, vm: &VmRecord) {
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
fn setup_vmcs(
    v: &mut impl VmcsAccess,
    vm: &VmRecord,
    caps: &Caps,
    eptp: u64,
    io_bitmaps: [u64; 2],
    msr_bitmap: u64,
) -> Result<(), VmxError> {
    use VmcsField as F;
    let [cr0, _, cr3, cr4] = crate::arch::instructions::control_registers();
    let (gdtr, idtr) = (
        x86_64::instructions::tables::sgdt(),
        x86_64::instructions::tables::sidt(),
    );
    let c = &caps.controls;
    // SAFETY (rdmsr): IA32_EFER and IA32_PAT exist on every CPU with VMX.
    let (efer, pat) = unsafe { (rdmsr(0xc000_0080), rdmsr(0x277)) };
    let writes: [(F, u64); 31] = [
        // Controls.
        (F::PinBasedControls, u64::from(c.pin)),
        (F::PrimaryProcBasedControls, u64::from(c.proc)),
        (F::SecondaryProcBasedControls, u64::from(c.proc2)),
        (F::ExitControls, u64::from(c.exit)),
        (F::EntryControls, u64::from(c.entry) | (1 << 9)),
        (F::ExceptionBitmap, 0),
        (F::IoBitmapA, io_bitmaps[0]),
        (F::IoBitmapB, io_bitmaps[1]),
        (F::MsrBitmap, msr_bitmap),
        (F::EptPointer, eptp),
        (F::VmcsLinkPointer, u64::MAX),
        (
            F::Cr0GuestHostMask,
            cr_owned(caps.cr_fixed[0], caps.cr_fixed[1]) & !((1 << 0) | (1 << 31)),
        ),
        (
            F::Cr4GuestHostMask,
            cr_owned(caps.cr_fixed[2], caps.cr_fixed[3]),
        ),
        // Host state: where and how VM exits land.
        (F::HostCr0, cr0),
        (F::HostCr3, cr3),
        (F::HostCr4, cr4),
        (
            F::HostCsSelector,
            u64::from(crate::arch::gdt::KERNEL_CODE_SELECTOR),
        ),
        (F::HostSsSelector, 0),
        (F::HostDsSelector, 0),
        (F::HostEsSelector, 0),
        (F::HostFsSelector, 0),
        (F::HostGsSelector, 0),
        (F::HostTrSelector, u64::from(crate::arch::gdt::TSS_SELECTOR)),
        (F::HostFsBase, 0),
        (F::HostGsBase, 0),
        (F::HostTrBase, crate::arch::gdt::tss_base(0)),
        (F::HostGdtrBase, gdtr.base.as_u64()),
        (F::HostIdtrBase, idtr.base.as_u64()),
        (F::HostIa32Efer, efer),
        (F::HostIa32Pat, pat),
        (F::HostRip, vmentry::exit_landing()),
    ];
    for (field, value) in writes {
        v.write(field, value)?;
    }
    if caps.vpid {
        v.write(F::Vpid, u64::from(vm.id))?;
    }
    // Guest state: 64-bit mode, CPL 0, flat segments, paging on (page tables at GUEST_PML4).
    let [f0, f1, g0, g1] = caps.cr_fixed;
    let guest_cr0: u64 = (1 << 0) | (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 31);
    let guest_cr4: u64 = 1 << 5;
    let code_ar = 0xa09b; // present, S, execute/read accessed, L, G (SDM Vol. 3C §25.4.1)
    let data_ar = 0xc093; // present, S, read/write accessed, D/B, G
    let guest: [(F, u64); 38] = [
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
        (F::TscOffset, 0),
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

/// CR bits whose value VMX operation fixes (fixed0 set: must be 1; fixed1 clear: must
/// be 0): the guest/host mask owns them so the guest sees only its own view.
fn cr_owned(fixed0: u64, fixed1: u64) -> u64 {
    (fixed0 | !fixed1) & 0xffff_ffff
}

/// A hypervisor failure in the VMX layer: VMX instructions and VM entries must not fail
/// (DESIGN 5), so this ends in the failure hook.
fn vmx_failure(what: &str, vm: &VmRecord, error: VmxError) -> ! {
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
                None => return false,
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
        vm.vcpu.journal.phase = Phase::InGuest as u32;
        // SAFETY: this VM's VMCS is current (switch_to / reset_guest) and fully set up; its
        // registers live in the arena record, which nothing else touches while it runs.
        let result = unsafe { vmentry::enter(&mut vm.vcpu.regs, vm.vcpu.launched != 0) };
        let exited_at = rdtsc();
        match result {
            EntryResult::Exited => vm.vcpu.launched = 1,
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
        if exit.entry_failed {
            log::error!(
                "vm {}: VM entry failed: exit reason {}",
                vm.name(),
                exit.exit.reason.name()
            );
            vmx_failure(
                "VM entry (invalid guest state or MSR loading)",
                vm,
                VmxError::VmFailInvalid,
            );
        }
        let exit = exit.exit;
        let j = &mut vm.vcpu.journal;
        j.phase = Phase::Handling as u32;
        j.exit_seq += 1;
        j.exit_reason = u32::from(exit.reason.basic());
        j.rip_at_exit = exit.rip;
        vm.stats.exits += 1;
        vm.stats.by_reason[exit.reason.index()] += 1;
        if exit.reason == ExitReason::ExternalInterrupt {
            acknowledge_external(exit.interruption_info);
        }
        let host = RealHost { caps: &caps };
        let effect = exits::handle(&exit, vm, &Ram::of(vm), &host);
        let mut ram = Ram::of(vm);
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
        if vm.vcpu.msrs != msrs_before {
            load_swapped_msrs(&vm.vcpu.msrs);
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
        let _ = exited_at;
        self.apply(slot, outcome);
        true
    }

    fn apply(&mut self, slot: usize, outcome: Outcome) {
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
                if let Err(e) = self.reset_guest(slot) {
                    vmx_failure("reset", &self.root.vms[slot], e);
                }
                self.root.vms[slot].set_state(VmState::Runnable);
            }
        }
        // Anything but Resume ends the slice.
        self.slice_end = 0;
    }

    /// Wakes the waiting VMs whose interrupt is due, then picks the next VM round robin.
    fn wake_and_pick(&mut self, now: u64) -> Option<usize> {
        let caps = self.caps;
        for vm in self
            .root
            .vms
            .iter_mut()
            .filter(|vm| vm.state() == Some(VmState::Waiting))
        {
            let now_ns =
                crate::arch::tsc::ticks_to_ns(now.saturating_sub(vm.clock_start), caps.tsc_hz);
            let due = vm.devices.pic.pending_vector().is_some()
                || vm.devices.next_deadline().is_some_and(|d| d <= now_ns);
            if due {
                vm.set_state(VmState::Runnable);
            }
        }
        scheduler::next_runnable(&self.root.vms, self.last)
    }

    /// Makes `next`'s VMCS current and its MSRs live.
    fn switch_to(&mut self, next: usize) {
        if self.current == Some(next) {
            return;
        }
        if let Some(p) = self.current.filter(|&p| p != next) {
            let vm = &mut self.root.vms[p];
            save_fpu(vm);
            // SWAPGS changes IA32_KERNEL_GS_BASE without an exit: keep the live value.
            // SAFETY: the MSR exists on every x86-64 CPU; reading it has no side effect.
            vm.vcpu.msrs.kernel_gs_base =
                unsafe { crate::arch::instructions::rdmsr(exits::msr::IA32_KERNEL_GS_BASE) };
        }
        let vm = &mut self.root.vms[next];
        // SAFETY: the VMCS page belongs to this VM and was initialised by reset_guest.
        if let Err(e) = unsafe { vmx::vmptrld(vm.vcpu.vmcs) } {
            vmx_failure("VMPTRLD", vm, e);
        }
        restore_fpu(vm, self.caps.xcr0);
        load_swapped_msrs(&vm.vcpu.msrs);
        self.current = Some(next);
    }
}

/// The exit as read from the current VMCS.
struct ReadExit {
    exit: Exit,
    entry_failed: bool,
}

fn read_exit(
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
        cr4: v.read(F::GuestCr4)?,
        cr0_shadow: v.read(F::Cr0ReadShadow)?,
        cr4_shadow: v.read(F::Cr4ReadShadow)?,
        efer: v.read(F::GuestIa32Efer)?,
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

/// A module's bytes through the identity map.
pub fn module_bytes(m: Range) -> &'static [u8] {
    // SAFETY: GRUB modules are excluded from every allocation (memory::plan) and never
    // written, so a shared view of them is sound for the hypervisor's lifetime.
    unsafe { core::slice::from_raw_parts(m.start as *const u8, m.len() as usize) }
}

/// Sends the EOI for an interrupt acknowledged by a VM exit (interruption info valid).
fn acknowledge_external(info: u32) {
    if info & (1 << 31) != 0 {
        crate::arch::pic::end_of_interrupt(info as u8);
    }
}

/// Loads the MSRs the VMCS does not switch (SDM Vol. 4, indices in `exits::msr`).
fn load_swapped_msrs(m: &arena::SwappedMsrs) {
    use exits::msr::*;
    // SAFETY: these MSRs exist on every x86-64 CPU; the host never uses SYSCALL or SWAPGS,
    // so guest values in them cannot affect it.
    unsafe {
        wrmsr(IA32_STAR, m.star);
        wrmsr(IA32_LSTAR, m.lstar);
        wrmsr(IA32_CSTAR, m.cstar);
        wrmsr(IA32_FMASK, m.sfmask);
        wrmsr(IA32_KERNEL_GS_BASE, m.kernel_gs_base);
        // IA32_TSC_AUX exists only with RDTSCP (CPUID.80000001h:EDX[27]).
        if raw_cpuid::cpuid!(0x8000_0001).edx & (1 << 27) != 0 {
            wrmsr(IA32_TSC_AUX, m.tsc_aux);
        }
    }
}

/// Saves the guest FPU/SSE/AVX state of `vm` (it is live in the registers while the VM
/// is current, since the host never touches it).
fn save_fpu(vm: &mut VmRecord) {
    if vm.vcpu.xsave == 0 || !xsave_enabled() {
        return;
    }
    // SAFETY: the XSAVE area is this VM's arena page; XCR0 holds the VM's value.
    unsafe { vmx::xsave(vm.vcpu.xsave, u64::MAX) };
    vm.vcpu.fpu_saved = 1;
}

/// Makes `vm`'s XCR0 and FPU state live (a zeroed area restores the init state).
fn restore_fpu(vm: &mut VmRecord, supported: u64) {
    if vm.vcpu.xsave == 0 || !xsave_enabled() {
        return;
    }
    let xcr0 = if vm.vcpu.xcr0 & !supported == 0 && vm.vcpu.xcr0 & 1 != 0 {
        vm.vcpu.xcr0
    } else {
        1
    };
    // SAFETY: xcr0 was validated against the CPU's supported set; the area is the VM's
    // own page, either written by XSAVE or zeroed (XSTATE_BV = 0: init state).
    unsafe {
        vmx::xsetbv(xcr0);
        vmx::xrstor(vm.vcpu.xsave, u64::MAX);
    }
}

fn xsave_enabled() -> bool {
    crate::arch::instructions::control_registers()[3] & (1 << 18) != 0
}

impl Vms {
    /// `vm list`: one line per VM.
    pub fn list(&self, out: &mut dyn Write) -> fmt::Result {
        let total: u64 = self.root.vms.iter().map(|vm| vm.stats.guest_tsc).sum();
        let mut any = false;
        for vm in self
            .root
            .vms
            .iter()
            .filter(|vm| vm.state() != Some(VmState::Free))
        {
            any = true;
            let state = vm.state().map_or("corrupt", VmState::as_str);
            write!(
                out,
                "{} id={} state={} exits={} share={}% mem={}",
                vm.name(),
                vm.id,
                state,
                vm.stats.exits,
                scheduler::share_percent(vm.stats.guest_tsc, total),
                format_size(vm.config.ram_size)
            )?;
            if vm.state() == Some(VmState::Stopped) {
                write!(out, " reason=\"{}\"", vm.stop_reason())?;
            }
            writeln!(out)?;
        }
        if !any {
            writeln!(out, "no VMs")?;
        }
        Ok(())
    }

    /// `vm stats NAME`: the counters and the exits by reason.
    pub fn stats(&self, name: &str, out: &mut dyn Write) -> fmt::Result {
        let Some(slot) = self.root.find_vm(name) else {
            return writeln!(out, "error: vm: no VM named '{name}'");
        };
        let s = &self.root.vms[slot].stats;
        writeln!(
            out,
            "{name} exits={} tsc={} unclaimed_io={} unknown_msr={} hypercalls={} hypercall_errors={} interrupts={} timer_missed={} time_ms={}",
            s.exits, s.guest_tsc, s.unclaimed_io, s.unknown_msr, s.hypercalls, s.hypercall_errors, s.interrupts, s.timer_missed,
            guest_ns(&self.root.vms[slot], &self.caps) / 1_000_000
        )?;
        for reason in ExitReason::ALL {
            let n = s.by_reason[reason.index()];
            if n != 0 {
                writeln!(out, "exit {} {}", reason.name(), n)?;
            }
        }
        Ok(())
    }

    /// The slot of the running VM called `name` (for `vm console`).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.root.find_vm(name)
    }

    /// A byte typed for VM `slot`'s serial port. False if its receive FIFO is full (the
    /// caller keeps the byte and tries again later).
    pub fn console_input(&mut self, slot: usize, byte: u8) -> bool {
        let vm = &mut self.root.vms[slot];
        if vm.devices.uart.rx_space() == 0 {
            return false;
        }
        let mut ev = crate::devices::DeviceEvents::default();
        vm.devices.receive(byte, &mut ev);
        true
    }

    /// `vm reset NAME`: the VM starts again from its module, whatever state it was in.
    pub fn reset(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        let Some(slot) = self.root.find_vm(name) else {
            return writeln!(out, "error: vm: no VM named '{name}'");
        };
        if let Err(e) = self.reset_guest(slot) {
            vmx_failure("reset", &self.root.vms[slot], e);
        }
        let vm = &mut self.root.vms[slot];
        vm.set_state(VmState::Runnable);
        vm.set_stop_reason(format_args!(""));
        log::info!("vm {name}: reset by the operator");
        writeln!(out, "vm {name}: reset")
    }

    /// `vm create module=N [initrd=M] WORDS`: a new VM from boot module N (and initramfs
    /// module M), described by WORDS as a module string would be (one VM name).
    pub fn create_from_console(
        &mut self,
        words: &str,
        free: &mut FrameAllocator<FREE_RANGES>,
        out: &mut dyn Write,
    ) -> fmt::Result {
        let mut image = None;
        let mut initrd = None;
        let mut rest: heapless::String<{ crate::console::line::MAX_LINE }> =
            heapless::String::new();
        for word in words.split_ascii_whitespace() {
            if let Some(n) = word.strip_prefix("module=") {
                image = Some(n);
            } else if let Some(n) = word.strip_prefix("initrd=") {
                initrd = Some(n);
            } else {
                let _ = rest.push_str(word);
                let _ = rest.push(' ');
            }
        }
        let Some(image) = image else {
            return writeln!(
                out,
                "error: vm create: missing module=N (the boot module holding the image)"
            );
        };
        let count = self.modules.len();
        let index = |n: &str| n.parse::<usize>().ok().filter(|&i| i < count);
        let Some(image_index) = index(image) else {
            return writeln!(
                out,
                "error: vm create: no boot module '{image}' (there are {count})"
            );
        };
        let initrd_index = match initrd.map(|n| (n, index(n))) {
            None => None,
            Some((_, Some(i))) => Some(i),
            Some((n, None)) => {
                return writeln!(
                    out,
                    "error: vm create: no boot module '{n}' (there are {count})"
                )
            }
        };
        let spec = match config::parse(rest.trim_end()) {
            Ok(spec) => spec,
            Err(e) => return writeln!(out, "error: vm create: {e}"),
        };
        if spec.names.len() != 1 || spec.role == Role::Initrd {
            return writeln!(
                out,
                "error: vm create: name one VM (vm=NAME) and its role (elf or kernel)"
            );
        }
        let mut specs: heapless::Vec<(usize, config::ModuleSpec), 2> = heapless::Vec::new();
        let name = spec.names[0].clone();
        let _ = specs.push((image_index, spec));
        if let Some(i) = initrd_index {
            let mut rd = config::ModuleSpec {
                names: heapless::Vec::new(),
                role: Role::Initrd,
                mem: None,
                on_triple_fault: None,
                on_reboot: None,
                cmdline: None,
                args: Default::default(),
            };
            let _ = rd.names.push(name.clone());
            let _ = specs.push((i, rd));
        }
        let (plans, errors) = config::plan(&specs);
        if let Some(e) = errors.first() {
            return writeln!(out, "error: vm {name}: not created: {e}");
        }
        match self.create(&plans[0], free) {
            Ok(slot) => writeln!(out, "vm {}: created", self.root.vms[slot].name()),
            Err(e) => writeln!(out, "error: vm {name}: not created: {e}"),
        }
    }

    /// `vm stop NAME`.
    pub fn stop(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        let Some(slot) = self.root.find_vm(name) else {
            return writeln!(out, "error: vm: no VM named '{name}'");
        };
        let vm = &mut self.root.vms[slot];
        match vm.state() {
            Some(VmState::Runnable | VmState::Waiting | VmState::Halted) => {
                vm.set_state(VmState::Stopped);
                vm.set_stop_reason(format_args!("stopped by the operator"));
                log::info!("vm {name}: stopped: stopped by the operator");
                writeln!(out, "vm {name}: stopped")
            }
            Some(state) => writeln!(out, "error: vm: {name} is already {}", state.as_str()),
            None => writeln!(out, "error: vm: {name} has a corrupt state"),
        }
    }
}

/// Guest time: nanoseconds since the VM started, from the host TSC.
fn guest_ns(vm: &VmRecord, caps: &Caps) -> u64 {
    crate::arch::tsc::ticks_to_ns(rdtsc().saturating_sub(vm.clock_start), caps.tsc_hz)
}

/// Before a VM entry: fire due timers, then inject the PIC's pending interrupt if the
/// guest can take it, or ask for an exit as soon as it can (interrupt-window exiting).
fn deliver_interrupts(vm: &mut VmRecord, caps: &Caps) -> Result<(), VmxError> {
    use super::interrupts::{decide, Delivery};
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
            if let Some(vector) = vm.devices.pic.acknowledge() {
                crate::vmx::event::inject_external_interrupt(vector).write_to(v)?;
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
