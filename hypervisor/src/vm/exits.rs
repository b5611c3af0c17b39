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
use super::rules::{self, GuestLimits, Mode};
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
    pub cr3: u64,
    pub cr4: u64,
    pub cr0_shadow: u64,
    pub cr4_shadow: u64,
    pub efer: u64,
    /// Guest CS access rights (SDM Vol. 3C §25.4.1): bit 13 is CS.L.
    pub cs_access_rights: u64,
    pub entry_controls: u64,
    pub interruption_info: u32,
    /// For RDMSR of an MSR held in the VMCS ([`vmcs_msr_field`]): that field's value; of
    /// IA32_KERNEL_GS_BASE: the live MSR.
    pub vmcs_msr_value: u64,
    /// Guest time (ns since the VM started) when the exit was read: device models see it.
    pub now_ns: u64,
}

impl Exit {
    /// A digest of every field: the run loop keeps it in the arena when it reads the exit
    /// and checks it again before the commit, so that an exit corrupted on the stack in
    /// between (a flipped frame pointer shifts every local: campaign finding 14) is a
    /// detected hypervisor failure, which re-executes the exit, not a wrong decision
    /// silently applied to the VM.
    pub fn digest(&self) -> u64 {
        let words = [
            u64::from(self.reason.basic()),
            self.qualification,
            self.instruction_len,
            self.guest_physical,
            self.rip,
            self.rsp,
            self.rflags,
            u64::from(self.cpl),
            self.cr0,
            self.cr3,
            self.cr4,
            self.cr0_shadow,
            self.cr4_shadow,
            self.efer,
            self.cs_access_rights,
            self.entry_controls,
            u64::from(self.interruption_info),
            self.vmcs_msr_value,
            self.now_ns,
        ];
        digest_words(&words)
    }
}

/// A word-wise multiplicative hash of `words` (FNV-1a's constants, one step per word):
/// each step, `h = (h ^ w) * K` with K odd, is a bijection of `w` for any `h` and of `h`
/// for any `w`, so changing any bits of any one word always changes the result.
pub fn digest_words(words: &[u64]) -> u64 {
    words.iter().fold(0xcbf2_9ce4_8422_2325, |h, &w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    /// What a guest may set (XCR0, CR4, canonical addresses) and the CR guest/host masks.
    fn guest_limits(&self) -> GuestLimits;
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
    /// New guest CR8 (the task-priority register, kept per vCPU).
    pub cr8: Option<u64>,
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
    /// Whether the effect takes the VM out of its normal course (stop, reset, reboot,
    /// halt, power off): a decision worth computing twice before it is applied.
    pub fn is_drastic(&self) -> bool {
        !matches!(
            self.outcome,
            Outcome::Resume | Outcome::Yield | Outcome::Wait
        )
    }

    /// Whether `other` decides the same for the guest: outcome, registers, RIP, VMCS
    /// writes and injected event.
    pub fn same_decision(&self, other: &Effect) -> bool {
        self.outcome == other.outcome
            && self.regs == other.regs
            && self.rip_advance == other.rip_advance
            && self.vmcs == other.vmcs
            && self.inject == other.inject
    }

    pub(crate) fn new(regs: &GuestRegisters) -> Self {
        Self {
            regs: *regs,
            rip_advance: 0,
            inject: None,
            vmcs: heapless::Vec::new(),
            console: None,
            guest_write: None,
            xcr0: None,
            cr8: None,
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
        ExitReason::CrAccess => cr_access(exit, vm, host, e),
        ExitReason::Invd | ExitReason::Wbinvd => e.advance(exit),
        // CPUID hides MONITOR/MWAIT: the instructions are undefined, as on a CPU without
        // them (SDM Vol. 2B MONITOR, "#UD if CPUID.01H:ECX.MONITOR[bit 3] = 0").
        ExitReason::Monitor | ExitReason::Mwait => e.inject_ud(),
        // No performance counters (CPUID leaf 0Ah is zero): every counter index is
        // invalid, and RDPMC of an invalid index raises #GP(0) (SDM Vol. 2B RDPMC).
        ExitReason::Rdpmc => e.inject_gp(),
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

/// CPUID: [`guest_cpuid`] of the host's answer, with the OS-enabled bits (OSXSAVE,
/// OSPKE) from the guest's own CR4. Advances RIP.
fn cpuid(exit: &Exit, regs: &GuestRegisters, host: &impl Host, mut e: Effect) -> Effect {
    let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
    let limits = host.guest_limits();
    let raw = host.cpuid(leaf, subleaf);
    let mut r = guest_cpuid(leaf, subleaf, raw, host.tsc_hz(), &limits);
    let cr4 = guest_mode(exit, &limits).cr4;
    match leaf {
        // CPUID.1:ECX.OSXSAVE[27] mirrors CR4.OSXSAVE[18]; CPUID.7.0:ECX.OSPKE[4] mirrors
        // CR4.PKE[22] (SDM Vol. 2A CPUID): the guest's CR4, not the host's.
        1 => r[2] = (r[2] & !(1 << 27)) | (((cr4 >> 18) as u32 & 1) << 27),
        7 if subleaf == 0 => r[2] = (r[2] & !(1 << 4)) | (((cr4 >> 22) as u32 & 1) << 4),
        _ => {}
    }
    [e.regs.rax, e.regs.rbx, e.regs.rcx, e.regs.rdx] = r.map(u64::from);
    e.advance(exit)
}

/// The CPUID a guest sees for `leaf`/`subleaf`, from the host's answer `raw`: the host's
/// minus what Lazarus does not virtualise (VMX, MONITOR, the local APIC, performance
/// counters, MPX, CET, XSAVE components beyond `limits.xcr0`...), plus the hypervisor
/// bit and leaf 0x40000000.
pub fn guest_cpuid(
    leaf: u32,
    subleaf: u32,
    raw: [u32; 4],
    tsc_hz: u64,
    limits: &GuestLimits,
) -> [u32; 4] {
    let [mut a, mut b, mut c, mut d] = raw;
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
            // EBX: clear MPX (14): its state and IA32_BNDCFGS are not switched.
            b &= !(1 << 14);
            if limits.xcr0 & rules::xcr0::AVX512 == 0 {
                // No AVX-512 state, no AVX-512: EBX F (16), DQ (17), IFMA (21), PF (26),
                // ER (27), CD (28), BW (30), VL (31); ECX VBMI (1), VBMI2 (6), VNNI (11),
                // BITALG (12), VPOPCNTDQ (14); EDX 4VNNIW (2), 4FMAPS (3), VP2INTERSECT (8).
                b &= !((0b11 << 16) | (1 << 21) | (0b111 << 26) | (0b11 << 30));
                c &= !((1 << 1) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14));
                d &= !((1 << 2) | (1 << 3) | (1 << 8));
            }
            if limits.xcr0 & rules::xcr0::PKRU == 0 {
                c &= !(1 << 3); // PKU
            }
            // ECX: clear WAITPKG (5: UMWAIT/TPAUSE raise #UD without their VM-execution
            // control), CET_SS (7) and PKS (31): their state is not switched.
            c &= !((1 << 5) | (1 << 7) | (1u32 << 31));
            // EDX: clear the speculation-control bits whose MSRs are not emulated: IBRS/IBPB
            // (26), STIBP (27), L1D_FLUSH (28), ARCH_CAPABILITIES (29), CORE_CAPABILITIES
            // (30), SSBD (31); and CET_IBT (20).
            d &= !((0x3f << 26) | (1 << 20));
        }
        0xd if subleaf == 0 => {
            // The components a guest may enable, and the area size they need (EBX, the
            // size for the current XCR0, is the CPU's: the guest's XCR0 is live).
            a = limits.xcr0 as u32;
            d = (limits.xcr0 >> 32) as u32;
            c = limits.xsave_size;
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
        0xd if subleaf < 64 && limits.xcr0 & (1 << subleaf) == 0 => [a, b, c, d] = [0; 4],
        0x15 => {
            // TSC and core crystal clock: ratio 1/1 with the crystal at the TSC frequency,
            // so the guest knows its TSC rate exactly instead of trusting the model's
            // nominal one (SDM Vol. 2A, CPUID leaf 15H).
            [a, b, c, d] = [1, 1, tsc_hz as u32, 0];
        }
        0x16 => {
            // Base and maximum frequency in MHz: the TSC's.
            let mhz = (tsc_hz / 1_000_000) as u32;
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
    [a, b, c, d]
}

/// The guest's mode at `exit`: a bit the guest/host mask owns is the read shadow's, the
/// others the register's.
pub fn guest_mode(exit: &Exit, limits: &GuestLimits) -> Mode {
    let view = |real: u64, shadow: u64, mask: u64| (real & !mask) | (shadow & mask);
    Mode {
        cr0: view(exit.cr0, exit.cr0_shadow, limits.cr0_mask),
        cr3: exit.cr3,
        cr4: view(exit.cr4, exit.cr4_shadow, limits.cr4_mask),
        efer: exit.efer,
        cs_long: exit.efer & rules::efer::LMA != 0 && exit.cs_access_rights & (1 << 13) != 0,
    }
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
        // The guest's TSC, as RDTSC reads it: the host's minus the VM's start (the TSC
        // offset, SDM Vol. 3C §26.6.5).
        msr::IA32_TSC => Some(host.rdtsc().wrapping_sub(vm.clock_start)),
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

/// IA32_DEBUGCTL bits a guest may set: BTF (1), single-step on branches. The others
/// (LBR, the trace and PMU controls) drive features CPUID hides; VM entry refuses the
/// reserved ones (SDM Vol. 3C §27.3.1.1), so a WRMSR with them raises #GP.
const DEBUGCTL_WRITABLE: u64 = 1 << 1;

/// Whether hardware would take `value` for MSR `index` (SDM Vol. 4 Table 2-2): base and
/// entry-point addresses must be canonical, PAT entries valid memory types, and the
/// reserved bits of EFER, DEBUGCTL, TSC_AUX and FMASK zero. A value it would refuse
/// raises #GP, and so never reaches the VMCS or a host register.
fn msr_value_ok(index: u32, value: u64, mode: &Mode, limits: &GuestLimits) -> bool {
    match index {
        msr::IA32_SYSENTER_ESP
        | msr::IA32_SYSENTER_EIP
        | msr::IA32_FS_BASE
        | msr::IA32_GS_BASE
        | msr::IA32_KERNEL_GS_BASE
        | msr::IA32_LSTAR
        | msr::IA32_CSTAR => rules::canonical(value, limits.linear_bits),
        msr::IA32_PAT => rules::valid_pat(value),
        msr::IA32_EFER => rules::efer_write(value, mode),
        msr::IA32_DEBUGCTL => value & !DEBUGCTL_WRITABLE == 0,
        // Bits 63:32 are reserved.
        msr::IA32_TSC_AUX | msr::IA32_FMASK => value >> 32 == 0,
        _ => true,
    }
}

/// WRMSR: emulated MSRs take the value once [`msr_value_ok`] accepts it (EFER keeps
/// LMA, which only the CPU changes); the TSC and the identification MSRs ignore writes;
/// IA32_FEATURE_CONTROL is locked and IA32_PLATFORM_ID read-only (#GP); any other MSR
/// raises #GP (counted). Advances RIP only on success.
fn wrmsr(exit: &Exit, vm: &VmRecord, host: &impl Host, mut e: Effect) -> Effect {
    let regs = &vm.vcpu.regs;
    let index = regs.rcx as u32;
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    let limits = host.guest_limits();
    if !msr_value_ok(index, value, &guest_mode(exit, &limits), &limits) {
        return e.inject_gp();
    }
    match index {
        msr::IA32_TSC | msr::IA32_BIOS_SIGN_ID | msr::IA32_MISC_ENABLE => {}
        msr::IA32_EFER => e.set_vmcs(
            VmcsField::GuestIa32Efer,
            (value & !rules::efer::LMA) | (exit.efer & rules::efer::LMA),
        ),
        i => {
            if let Some(field) = vmcs_msr_field(i) {
                e.set_vmcs(field, value);
            } else {
                let mut msrs = vm.vcpu.msrs;
                match swapped_msr(&mut msrs, i) {
                    Some(slot) => *slot = value,
                    None => {
                        e.counts.unknown_msr = u64::from(constant_msr(i).is_none());
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
/// it was meant for the host (the watchdog) and the guest resumes untouched. (The run
/// loop treats any other exception exit as a hypervisor failure before it gets here:
/// the stop below is the last line of defence.)
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

/// XSETBV: the guest's XCR0, checked as the CPU would ([`rules::valid_xcr0`] against
/// what the guest may enable, ECX = 0, CPL 0; else #GP). Advances RIP on success.
fn xsetbv(exit: &Exit, regs: &GuestRegisters, host: &impl Host, mut e: Effect) -> Effect {
    let value = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
    let valid =
        regs.rcx as u32 == 0 && rules::valid_xcr0(value, host.guest_limits().xcr0) && exit.cpl == 0;
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

/// Writes general register `n` (numbered as in [`gpr`]): RSP is in the VMCS.
fn set_gpr(e: &mut Effect, n: u8, value: u64) {
    let r = &mut e.regs;
    match n {
        0 => r.rax = value,
        1 => r.rcx = value,
        2 => r.rdx = value,
        3 => r.rbx = value,
        4 => e.set_vmcs(VmcsField::GuestRsp, value),
        5 => r.rbp = value,
        6 => r.rsi = value,
        7 => r.rdi = value,
        8 => r.r8 = value,
        9 => r.r9 = value,
        10 => r.r10 = value,
        11 => r.r11 = value,
        12 => r.r12 = value,
        13 => r.r13 = value,
        14 => r.r14 = value,
        _ => r.r15 = value,
    }
}

const CR0_TS: u64 = 1 << 3;
/// VM-entry control "IA-32e mode guest" (SDM Vol. 3C §25.8.1).
const ENTRY_IA32E: u64 = 1 << 9;

/// Control-register exits: MOV to CR0/CR4, CLTS and LMSW that change a bit the guest/host
/// masks own, and every MOV to or from CR8 (CR8 is per vCPU: the physical one is the
/// host's task priority, which no VM may set or read). Advances RIP, except after #GP.
fn cr_access(exit: &Exit, vm: &VmRecord, host: &impl Host, mut e: Effect) -> Effect {
    use crate::vmx::exit::CrAccess;
    let q = CrAccess::from_qualification(exit.qualification);
    let mode = guest_mode(exit, &host.guest_limits());
    let value = gpr(&vm.vcpu.regs, exit, q.gpr);
    match (q.access_type, q.cr) {
        (CrAccessType::MovToCr, 0) => write_cr0(exit, &mode, value, host, e),
        (CrAccessType::Clts, _) => write_cr0(exit, &mode, mode.cr0 & !CR0_TS, host, e),
        // LMSW loads CR0[3:0] but cannot clear PE (SDM Vol. 2A LMSW).
        (CrAccessType::Lmsw, _) => {
            let msw = u64::from(q.lmsw_source & 0xf);
            write_cr0(
                exit,
                &mode,
                (mode.cr0 & !0xe) | msw | (mode.cr0 & 1),
                host,
                e,
            )
        }
        (CrAccessType::MovToCr, 4) => {
            if !rules::cr4_write(value, &mode, host.guest_limits().cr4) {
                return e.inject_gp();
            }
            let [_, _, g0, g1] = host.cr_fixed();
            e.set_vmcs(VmcsField::GuestCr4, cr4_real(value, g0, g1));
            e.set_vmcs(VmcsField::Cr4ReadShadow, value);
            e.advance(exit)
        }
        // CR8 is TPR[7:4]; bits 63:4 are reserved (SDM Vol. 3A §11.8.6.1).
        (CrAccessType::MovToCr, 8) if value >> 4 != 0 => e.inject_gp(),
        (CrAccessType::MovToCr, 8) => {
            e.cr8 = Some(value);
            e.advance(exit)
        }
        (CrAccessType::MovFromCr, 8) => {
            set_gpr(&mut e, q.gpr, vm.vcpu.cr8 & 0xf);
            e.advance(exit)
        }
        _ => e.stop(format_args!(
            "unexpected control-register access (rip {:#x})",
            exit.rip
        )),
    }
}

/// A guest write of `new` to CR0, checked ([`rules::cr0_write`], #GP if refused): the
/// shadow takes the guest's value, the real register gets it with the fixed bits forced,
/// and turning paging on or off with EFER.LME set moves EFER.LMA and the IA-32e entry
/// control the way the CPU would (SDM Vol. 3A §10.8.5).
fn write_cr0(exit: &Exit, mode: &Mode, new: u64, host: &impl Host, mut e: Effect) -> Effect {
    let Some(new) = rules::cr0_write(new, mode) else {
        return e.inject_gp();
    };
    let [f0, f1, _, _] = host.cr_fixed();
    e.set_vmcs(VmcsField::GuestCr0, cr0_real(new, f0, f1));
    e.set_vmcs(VmcsField::Cr0ReadShadow, new);
    let paging_was = mode.cr0 & rules::cr0::PG != 0;
    let paging_now = new & rules::cr0::PG != 0;
    if paging_was != paging_now && exit.efer & rules::efer::LME != 0 {
        let (efer, entry) = if paging_now {
            (
                exit.efer | rules::efer::LMA,
                exit.entry_controls | ENTRY_IA32E,
            )
        } else {
            (
                exit.efer & !rules::efer::LMA,
                exit.entry_controls & !ENTRY_IA32E,
            )
        };
        e.set_vmcs(VmcsField::GuestIa32Efer, efer);
        e.set_vmcs(VmcsField::EntryControls, entry);
    }
    e.advance(exit)
}

#[cfg(test)]
pub(crate) mod tests;
