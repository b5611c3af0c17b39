//! VM exits, dispatched by reason into small handlers.
//!
//! A VM exit is a transaction (DESIGN 4). A handler gets read-only views (the exit as
//! read from the VMCS, the VM's record, guest memory, the host CPU) and returns an
//! [`Effect`]: the complete description of what the exit changes. Nothing is changed
//! until [`super::commit`] applies the effect in one step. If the hypervisor fails
//! while a handler runs, nothing guest-visible has changed, so re-entering the guest at
//! the same RIP simply makes the exit happen again. The types enforce it: handlers
//! cannot mutate what they are given.
//!
//! Each handler's doc says whether it advances RIP.

use core::fmt::Write;

use super::hypercall;
use crate::arena::{VmRecord, ON_TRIPLE_FAULT_RESET};
use crate::vmx::event;
use crate::vmx::exit::{CrAccessType, ExitReason};
use crate::vmx::fields::{GuestRegisters, VmcsField};

/// The exit, as read from the VMCS before any handler runs.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    pub reason: ExitReason,
    pub qualification: u64,
    pub instruction_len: u64,
    pub guest_physical: u64,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Current privilege level (guest SS.DPL).
    pub cpl: u8,
    pub cr0: u64,
    pub cr4: u64,
    pub cr0_shadow: u64,
    pub cr4_shadow: u64,
    pub efer: u64,
    pub entry_controls: u64,
    pub interruption_info: u32,
    /// For RDMSR of an MSR held in the VMCS ([`vmcs_msr_field`]): that field's value; of
    /// IA32_KERNEL_GS_BASE: the live MSR.
    pub vmcs_msr_value: u64,
    /// Guest time (ns since the VM started) when the exit was read: device models see it.
    pub now_ns: u64,
}

/// Guest memory as a handler may see it: read-only, bounded by the VM's RAM.
pub trait GuestMemory {
    /// `len` bytes at guest-physical `gpa`, or None if any of them is outside RAM.
    fn read(&self, gpa: u64, len: u64) -> Option<&[u8]>;
}

/// The host facts handlers need.
pub trait Host {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
    fn rdtsc(&self) -> u64;
    /// XCR0 bits this CPU supports (CPUID.(EAX=0Dh,ECX=0):EDX:EAX).
    fn supported_xcr0(&self) -> u64;
    /// IA32_VMX_CR0_FIXED0/1 and CR4_FIXED0/1.
    fn cr_fixed(&self) -> [u64; 4];
    /// The TSC frequency in Hz (the guest's TSC runs at the host's rate).
    fn tsc_hz(&self) -> u64;
    /// Whether the failure triggers are enabled (`triggers=on`): the `trigger` hypercall
    /// exists only then.
    fn triggers_enabled(&self) -> bool;
    /// Whether the fault injector is enabled (`inject=on`): the `inject` hypercall exists
    /// only then.
    fn inject_enabled(&self) -> bool;
}

/// What happens to the VM after the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Re-enter the guest (within the current slice).
    Resume,
    /// Re-enter later: give the CPU to the next VM.
    Yield,
    /// The guest halted with interrupts off: nothing can wake it.
    Halt,
    /// The guest halted with interrupts on: it runs again when an interrupt is due.
    Wait,
    /// The guest powered itself off.
    PowerOff,
    /// Reset the VM to its initial state (triple fault with on_triple_fault=reset).
    Reset,
    /// The guest asked for a reset through a device (i8042, port 0xcf9 or 0x92): reboot.
    Reboot,
    /// Stop the VM, for the reason given (a bad guest, never the hypervisor's fault).
    Stop(heapless::String<96>),
}

/// Counters the commit adds to the VM's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub unclaimed_io: u64,
    pub unknown_msr: u64,
    pub hypercalls: u64,
    pub hypercall_errors: u64,
}

/// Everything an exit changes, applied at once by the commit.
#[derive(Clone, Debug)]
pub struct Effect {
    /// The general registers after the exit.
    pub regs: GuestRegisters,
    /// Bytes to add to RIP (the exiting instruction's length, or 0 to re-execute it).
    pub rip_advance: u64,
    /// An event to inject at the next entry.
    pub inject: Option<event::Injection>,
    /// VMCS guest-state or control fields to write.
    pub vmcs: heapless::Vec<(VmcsField, u64), 6>,
    /// Guest bytes to print on the console: (gpa, len), already bounds-checked.
    pub console: Option<(u64, u64)>,
    /// Bytes to write into guest memory: (gpa, data, len), already bounds-checked.
    pub guest_write: Option<(u64, [u8; 16], usize)>,
    /// New guest XCR0.
    pub xcr0: Option<u64>,
    /// New values of the pass-through-style MSRs kept in the vCPU record.
    pub msrs: Option<crate::arena::SwappedMsrs>,
    /// The VM's devices after a port access they claimed.
    pub devices: Option<crate::devices::Devices>,
    /// Bytes the guest sent out of its serial port.
    pub serial_out: heapless::Vec<u8, 16>,
    /// A failure trigger to fire once the exit is committed (`trigger` hypercall):
    /// the trigger and its count.
    pub trigger: Option<(crate::triggers::Trigger, u32)>,
    /// A fault-injection plan to arm once the exit is committed (`inject` hypercall).
    pub arm_injector: Option<crate::inject::Plan>,
    pub counts: Counts,
    pub outcome: Outcome,
}

impl Effect {
    pub(crate) fn new(regs: &GuestRegisters) -> Self {
        Self {
            regs: *regs,
            rip_advance: 0,
            inject: None,
            vmcs: heapless::Vec::new(),
            console: None,
            guest_write: None,
            xcr0: None,
            msrs: None,
            devices: None,
            serial_out: heapless::Vec::new(),
            trigger: None,
            arm_injector: None,
            counts: Counts::default(),
            outcome: Outcome::Resume,
        }
    }

    fn advance(mut self, exit: &Exit) -> Self {
        self.rip_advance = exit.instruction_len;
        self
    }

    fn stop(mut self, reason: core::fmt::Arguments) -> Self {
        let mut s = heapless::String::new();
        let _ = s.write_fmt(reason);
        self.outcome = Outcome::Stop(s);
        self
    }

    fn inject_gp(mut self) -> Self {
        self.inject = event::inject_hardware_exception(event::vector::GP, Some(0)).ok();
        self
    }

    fn inject_ud(mut self) -> Self {
        self.inject = event::inject_hardware_exception(event::vector::UD, None).ok();
        self
    }

    fn set_vmcs(&mut self, field: VmcsField, value: u64) {
        // Handlers write at most a handful of fields; capacity is 6.
        let _ = self.vmcs.push((field, value));
    }
}

/// Handles one exit: dispatch by reason.
pub fn handle(exit: &Exit, vm: &VmRecord, mem: &impl GuestMemory, host: &impl Host) -> Effect {
    let regs = &vm.vcpu.regs;
    let e = Effect::new(regs);
    match exit.reason {
        ExitReason::Cpuid => cpuid(exit, regs, host, e),
        ExitReason::Io => io(exit, vm, e),
        ExitReason::Hlt => hlt(exit, e),
        // The guest can take the interrupt now; the next entry injects it.
        ExitReason::InterruptWindow => e,
        ExitReason::Vmcall => vmcall(exit, vm, mem, host, e),
        ExitReason::Rdmsr => rdmsr(exit, vm, host, e),
        ExitReason::Wrmsr => wrmsr(exit, vm, host, e),
        ExitReason::EptViolation => ept_violation(exit, e),
        ExitReason::EptMisconfiguration => e.stop(format_args!(
            "EPT misconfiguration at guest-physical {:#x}",
            exit.guest_physical
        )),
        ExitReason::TripleFault => triple_fault(exit, vm, e),
        ExitReason::PreemptionTimer => Effect {
            outcome: Outcome::Yield,
            ..e
        },
        ExitReason::ExternalInterrupt => e,
        ExitReason::ExceptionOrNmi => {
            if let Some(b) = mem.read(exit.rip, 8) {
                log::debug!(
                    "vm {}: exception exit: bytes at gpa {:#x}: {:02x?} rax={:#x} rcx={:#x} rdx={:#x}",
                    vm.name(),
                    exit.rip,
                    b,
                    regs.rax,
                    regs.rcx,
                    regs.rdx
                );
            }
            exception_or_nmi(exit, e)
        }
        ExitReason::Xsetbv => xsetbv(exit, regs, host, e),
        ExitReason::CrAccess => cr_access(exit, regs, host, e),
        ExitReason::Invd | ExitReason::Wbinvd => e.advance(exit),
        ExitReason::Vmclear
        | ExitReason::Vmlaunch
        | ExitReason::Vmptrld
        | ExitReason::Vmptrst
        | ExitReason::Vmread
        | ExitReason::Vmresume
        | ExitReason::Vmwrite
        | ExitReason::Vmxoff
        | ExitReason::Vmxon
        | ExitReason::Invept
        | ExitReason::Invvpid
        | ExitReason::Vmfunc
        | ExitReason::Getsec => e.inject_ud(),
        other => e.stop(format_args!(
            "unhandled exit reason {} at rip {:#x}",
            other.name(),
            exit.rip
        )),
    }
}

/// CPUID: the host's answer, minus what Lazarus does not virtualise (VMX, MONITOR,
/// performance counters), plus the hypervisor bit and leaf 0x40000000. Advances RIP.
fn cpuid(exit: &Exit, regs: &GuestRegisters, host: &impl Host, mut e: Effect) -> Effect {
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    let [mut a, mut b, mut c, mut d] = host.cpuid(leaf, subleaf);
    match leaf {
        1 => {
            // ECX: clear MONITOR (3), DS-CPL (4), VMX (5), SMX (6), EST (7), TM2 (8),
            // PDCM (15), x2APIC (21), TSC-deadline (24); set "hypervisor" (31).
            c &= !((1 << 3)
                | (1 << 4)
                | (1 << 5)
                | (1 << 6)
                | (1 << 7)
                | (1 << 8)
                | (1 << 15)
                | (1 << 21)
                | (1 << 24));
            c |= 1 << 31;
            // EDX: clear MCE (7), APIC (9), MTRR (12), MCA (14), DS (21), ACPI (22), TM (29),
            // PBE (31): devices and MSRs Lazarus does not model. The guest uses the 8259 PIC.
            d &= !((1 << 7)
                | (1 << 9)
                | (1 << 12)
                | (1 << 14)
                | (1 << 21)
                | (1 << 22)
                | (1 << 29)
                | (1 << 31));
            // EBX: one logical processor, initial APIC id 0.
            b &= 0x0000_ffff;
            b |= 1 << 16;
        }
        7 if subleaf == 0 => {
            // EDX: clear the speculation-control bits whose MSRs are not emulated: IBRS/IBPB
            // (26), STIBP (27), L1D_FLUSH (28), ARCH_CAPABILITIES (29), CORE_CAPABILITIES
            // (30), SSBD (31).
            d &= !(0x3f << 26);
        }
        0xd if subleaf == 1 => {
            // XSAVE extensions: keep XSAVEOPT (0) and XGETBV with ECX=1 (2); hide the
            // compacted formats XSAVEC (1) and XSAVES (3), whose supervisor states need
            // IA32_XSS, which is not emulated. The sizes in EBX-EDX go with XSAVES.
            a &= (1 << 0) | (1 << 2);
            b = 0;
            c = 0;
            d = 0;
        }
        0x15 => {
            // TSC and core crystal clock: ratio 1/1 with the crystal at the TSC frequency,
            // so the guest knows its TSC rate exactly instead of trusting the model's
            // nominal one (SDM Vol. 2A, CPUID leaf 15H).
            [a, b, c, d] = [1, 1, host.tsc_hz() as u32, 0];
        }
        0x16 => {
            // Base and maximum frequency in MHz: the TSC's.
            let mhz = (host.tsc_hz() / 1_000_000) as u32;
            [a, b, c, d] = [mhz, mhz, 0, 0];
        }
        5 | 6 | 0xa => [a, b, c, d] = [0; 4],
        0x4000_0000 => {
            let sig = *b"LazarusLzrHV";
            a = 0x4000_0000;
            b = u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]);
            c = u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]);
            d = u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]);
        }
        0x4000_0001..=0x4fff_ffff => [a, b, c, d] = [0; 4],
        _ => {}
    }
    e.regs.rax = u64::from(a);
    e.regs.rbx = u64::from(b);
    e.regs.rcx = u64::from(c);
    e.regs.rdx = u64::from(d);
    e.advance(exit)
}

/// Port I/O. A port a device model claims is handled on a copy of the VM's devices that
/// the commit stores (with the bytes the UART sent and a reset request, if any); any
/// other port is unclaimed: IN reads all ones, OUT is ignored, both counted. String I/O
/// (INS/OUTS) stops the VM (it would need guest-linear address translation). Advances RIP.
fn io(exit: &Exit, vm: &VmRecord, mut e: Effect) -> Effect {
    let Some(q) = crate::vmx::exit::IoQualification::from_qualification(exit.qualification) else {
        return e.stop(format_args!(
            "malformed I/O exit qualification {:#x}",
            exit.qualification
        ));
    };
    if q.string {
        return e.stop(format_args!(
            "string I/O to port {:#x} is not supported (rip {:#x})",
            q.port, exit.rip
        ));
    }
    let mask = crate::devices::size_mask(q.size);
    let access = crate::devices::PortAccess {
        port: q.port,
        size: q.size,
        write: (!q.is_in).then_some(e.regs.rax as u32 & mask),
    };
    let mut devices = vm.devices;
    let mut ev = crate::devices::DeviceEvents::default();
    if let Some(value) = devices.access(access, exit.now_ns, &mut ev) {
        if q.is_in {
            e.regs.rax = match q.size {
                4 => u64::from(value),
                _ => (e.regs.rax & !u64::from(mask)) | u64::from(value & mask),
            };
        }
        e.devices = Some(devices);
        e.serial_out = ev.serial_out;
        if ev.reset {
            e.outcome = Outcome::Reboot;
        }
        return e.advance(exit);
    }
    e.counts.unclaimed_io = 1;
    if q.is_in {
        e.regs.rax = match q.size {
            1 => (e.regs.rax & !0xff) | 0xff,
            2 => (e.regs.rax & !0xffff) | 0xffff,
            // A 32-bit IN zero-extends into RAX, as any 32-bit register write does.
            _ => 0xffff_ffff,
        };
    }
    e.advance(exit)
}

/// HLT: with interrupts on (RFLAGS.IF) the VM waits for its next interrupt (a device
/// timer or input); with them off nothing can wake it, and it is halted for good.
/// Advances RIP, so the wake-up resumes after the HLT.
fn hlt(exit: &Exit, e: Effect) -> Effect {
    let outcome = if exit.rflags & super::interrupts::RFLAGS_IF != 0 {
        Outcome::Wait
    } else {
        Outcome::Halt
    };
    Effect {
        outcome,
        ..e.advance(exit)
    }
}

/// VMCALL: a hypercall (see `abi`). Advances RIP (also on error: the error is the result).
fn vmcall(
    exit: &Exit,
    vm: &VmRecord,
    mem: &impl GuestMemory,
    host: &impl Host,
    e: Effect,
) -> Effect {
    let enabled = hypercall::Enabled {
        triggers: host.triggers_enabled(),
        inject: host.inject_enabled(),
    };
    hypercall::dispatch(exit, vm, mem, enabled, e.advance(exit))
}

/// MSR indices Lazarus emulates (SDM Vol. 4, chapter 2).
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_PLATFORM_ID: u32 = 0x17;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_DEBUGCTL: u32 = 0x1d9;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_LSTAR: u32 = 0xc000_0082;
    pub const IA32_CSTAR: u32 = 0xc000_0083;
    pub const IA32_FMASK: u32 = 0xc000_0084;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// Which VMCS guest-state field holds the guest value of MSR `index`, if any: the exit
/// reader fetches it into [`Exit::vmcs_msr_value`] so the handler stays read-only.
pub fn vmcs_msr_field(index: u32) -> Option<VmcsField> {
    Some(match index {
        msr::IA32_SYSENTER_CS => VmcsField::GuestIa32SysenterCs,
        msr::IA32_SYSENTER_ESP => VmcsField::GuestIa32SysenterEsp,
        msr::IA32_SYSENTER_EIP => VmcsField::GuestIa32SysenterEip,
        msr::IA32_PAT => VmcsField::GuestIa32Pat,
        msr::IA32_DEBUGCTL => VmcsField::GuestIa32Debugctl,
        msr::IA32_FS_BASE => VmcsField::GuestFsBase,
        msr::IA32_GS_BASE => VmcsField::GuestGsBase,
        _ => return None,
    })
}

fn swapped_msr(msrs: &mut crate::arena::SwappedMsrs, index: u32) -> Option<&mut u64> {
    Some(match index {
        msr::IA32_STAR => &mut msrs.star,
        msr::IA32_LSTAR => &mut msrs.lstar,
        msr::IA32_CSTAR => &mut msrs.cstar,
        msr::IA32_FMASK => &mut msrs.sfmask,
        msr::IA32_KERNEL_GS_BASE => &mut msrs.kernel_gs_base,
        msr::IA32_TSC_AUX => &mut msrs.tsc_aux,
        _ => return None,
    })
}

/// Identification and feature MSRs that read as a constant and ignore writes: platform
/// id 0, no microcode revision, IA32_FEATURE_CONTROL locked with VMX off (no nested
/// virtualisation), IA32_MISC_ENABLE with only fast strings (bit 0) and XD not disabled.
fn constant_msr(index: u32) -> Option<u64> {
    Some(match index {
        msr::IA32_PLATFORM_ID | msr::IA32_BIOS_SIGN_ID => 0,
        msr::IA32_FEATURE_CONTROL => 1,
        msr::IA32_MISC_ENABLE => 1,
        _ => return None,
    })
}

/// RDMSR: emulated MSRs answer; any other raises #GP in the guest (counted). Advances
/// RIP only on success.
fn rdmsr(exit: &Exit, vm: &VmRecord, host: &impl Host, mut e: Effect) -> Effect {
    let index = vm.vcpu.regs.rcx as u32;
    let mut msrs = vm.vcpu.msrs;
    let value = match index {
        msr::IA32_TSC => Some(host.rdtsc()),
        msr::IA32_EFER => Some(exit.efer),
        // SWAPGS changes it without an exit: the exit reader fetched the live value.
        msr::IA32_KERNEL_GS_BASE => Some(exit.vmcs_msr_value),
        i if constant_msr(i).is_some() => constant_msr(i),
        i if vmcs_msr_field(i).is_some() => Some(exit.vmcs_msr_value),
        i => swapped_msr(&mut msrs, i).map(|v| *v),
    };
    match value {
        Some(v) => {
            e.regs.rax = v & 0xffff_ffff;
            e.regs.rdx = v >> 32;
            e.advance(exit)
        }
        None => {
            e.counts.unknown_msr = 1;
            e.inject_gp()
        }
    }
}

/// EFER bits a guest may set: SCE (0), LME (8), NXE (11) (SDM Vol. 3A §2.2.1).
const EFER_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 11);
const EFER_LMA: u64 = 1 << 10;

/// WRMSR: emulated MSRs take the value (EFER keeps LMA, which only the CPU changes);
/// the TSC is not writable (the write is ignored); any other MSR raises #GP (counted).
/// Advances RIP only on success.
fn wrmsr(exit: &Exit, vm: &VmRecord, _host: &impl Host, mut e: Effect) -> Effect {
    let regs = &vm.vcpu.regs;
    let index = regs.rcx as u32;
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    match index {
        msr::IA32_TSC => {}
        i if constant_msr(i).is_some() => {}
        msr::IA32_EFER => {
            if value & !(EFER_WRITABLE | EFER_LMA) != 0 {
                e.counts.unknown_msr = 1;
                return e.inject_gp();
            }
            e.set_vmcs(
                VmcsField::GuestIa32Efer,
                (value & EFER_WRITABLE) | (exit.efer & EFER_LMA),
            );
        }
        i => {
            if let Some(field) = vmcs_msr_field(i) {
                e.set_vmcs(field, value);
            } else {
                let mut msrs = vm.vcpu.msrs;
                match swapped_msr(&mut msrs, i) {
                    Some(slot) => *slot = value,
                    None => {
                        e.counts.unknown_msr = 1;
                        return e.inject_gp();
                    }
                }
                e.msrs = Some(msrs);
            }
        }
    }
    e.advance(exit)
}

/// EPT violation: the guest touched guest-physical memory outside its RAM (EPT maps
/// nothing else). The VM is stopped; RIP is left at the faulting instruction.
fn ept_violation(exit: &Exit, e: Effect) -> Effect {
    let v = crate::vmx::exit::EptViolation::from_qualification(exit.qualification);
    e.stop(format_args!(
        "EPT violation: {} at guest-physical {:#x} (rip {:#x})",
        v, exit.guest_physical, exit.rip
    ))
}

/// Triple fault: stop, or reset if the VM's configuration asks for it.
fn triple_fault(exit: &Exit, vm: &VmRecord, e: Effect) -> Effect {
    // (A reset requested through a device, e.g. the i8042, always resets.)
    if vm.config.on_triple_fault == ON_TRIPLE_FAULT_RESET {
        Effect {
            outcome: Outcome::Reset,
            ..e
        }
    } else {
        e.stop(format_args!("triple fault (rip {:#x})", exit.rip))
    }
}

/// Exception or NMI exit. The exception bitmap is empty, so only an NMI arrives here:
/// it was meant for the host (no watchdog yet) and the guest resumes untouched.
fn exception_or_nmi(exit: &Exit, e: Effect) -> Effect {
    let info = crate::vmx::exit::InterruptionInfo::from_raw(exit.interruption_info);
    if info.kind == crate::vmx::exit::InterruptionKind::Nmi {
        return e;
    }
    e.stop(format_args!(
        "unexpected exception vector {} in guest (rip {:#x} qual {:#x} cr0 {:#x} cr4 {:#x} efer {:#x})",
        info.vector, exit.rip, exit.qualification, exit.cr0, exit.cr4, exit.efer
    ))
}

/// XSETBV: the guest's XCR0, checked like the CPU would (bit 0 set, AVX needs SSE,
/// only supported bits; else #GP). Advances RIP on success.
fn xsetbv(exit: &Exit, regs: &GuestRegisters, host: &impl Host, mut e: Effect) -> Effect {
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    let valid = regs.rcx as u32 == 0
        && value & 1 != 0
        && (value & 4 == 0 || value & 2 != 0)
        && value & !host.supported_xcr0() == 0
        && exit.cpl == 0;
    if !valid {
        return e.inject_gp();
    }
    e.xcr0 = Some(value);
    e.advance(exit)
}

/// CR0 and CR4 bits that are fixed in VMX operation (SDM Vol. 3D A.7, A.8): the guest
/// sees its own values through the read shadows, the CPU runs with the fixed bits
/// forced. With unrestricted guest, CR0.PE and CR0.PG are free.
pub fn cr0_real(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    let fixed0 = fixed0 & !((1 << 0) | (1 << 31));
    (value | fixed0) & fixed1
}

pub fn cr4_real(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// General register number `n` in the SDM's encoding (0 RAX, 1 RCX, 2 RDX, 3 RBX,
/// 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15; Vol. 3C Table 28-3).
pub fn gpr(regs: &GuestRegisters, exit: &Exit, n: u8) -> u64 {
    match n {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => exit.rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

const CR0_PG: u64 = 1 << 31;
const CR0_TS: u64 = 1 << 3;
const EFER_LME: u64 = 1 << 8;
/// VM-entry control "IA-32e mode guest" (SDM Vol. 3C §25.8.1).
const ENTRY_IA32E: u64 = 1 << 9;

/// MOV to CR0/CR4, CLTS and LMSW on bits the guest/host masks own. The shadow takes the
/// guest's value, the real register gets it with the fixed bits forced, and turning
/// paging on or off with EFER.LME set moves EFER.LMA and the IA-32e entry control the
/// way the CPU would (SDM Vol. 3A §10.8.5). Advances RIP.
fn cr_access(exit: &Exit, regs: &GuestRegisters, host: &impl Host, mut e: Effect) -> Effect {
    use crate::vmx::exit::CrAccess;
    let q = CrAccess::from_qualification(exit.qualification);
    let [f0, f1, g0, g1] = host.cr_fixed();
    let new_cr0 = match q.access_type {
        CrAccessType::MovToCr if q.cr == 4 => {
            let value = gpr(regs, exit, q.gpr);
            e.set_vmcs(VmcsField::GuestCr4, cr4_real(value, g0, g1));
            e.set_vmcs(VmcsField::Cr4ReadShadow, value);
            return e.advance(exit);
        }
        CrAccessType::MovToCr if q.cr == 0 => gpr(regs, exit, q.gpr),
        CrAccessType::Clts => exit.cr0_shadow & !CR0_TS,
        CrAccessType::Lmsw => {
            (exit.cr0_shadow & !0xe) | u64::from(q.lmsw_source & 0xf) | (exit.cr0_shadow & 1)
        }
        _ => {
            return e.stop(format_args!(
                "unexpected control-register access (rip {:#x})",
                exit.rip
            ))
        }
    };
    e.set_vmcs(VmcsField::GuestCr0, cr0_real(new_cr0, f0, f1));
    e.set_vmcs(VmcsField::Cr0ReadShadow, new_cr0);
    let paging_was = exit.cr0_shadow & CR0_PG != 0;
    let paging_now = new_cr0 & CR0_PG != 0;
    if paging_was != paging_now && exit.efer & EFER_LME != 0 {
        let (efer, entry) = if paging_now {
            (exit.efer | EFER_LMA, exit.entry_controls | ENTRY_IA32E)
        } else {
            (exit.efer & !EFER_LMA, exit.entry_controls & !ENTRY_IA32E)
        };
        e.set_vmcs(VmcsField::GuestIa32Efer, efer);
        e.set_vmcs(VmcsField::EntryControls, entry);
    }
    e.advance(exit)
}

#[cfg(test)]
pub(crate) mod tests;
