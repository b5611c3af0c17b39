//! The fuzzer's machine instructions, one small function each, every one that can fault
//! run through [`guarded!`] so that a fault returns here as a [`Fault`] instead of
//! stopping the guest.
//!
//! Soundness, for the whole module: these functions change machine state that Rust code
//! does not depend on (the test guest is built without SSE, never uses FS, GS, SYSCALL,
//! SYSENTER, breakpoints or the FPU, and runs with interrupts off), and every caller in
//! `exec` restores what an operation changed (control registers, XCR0, descriptor tables,
//! MSRs) before the next one. The values that the guest does depend on (CR0.PE/PG,
//! CR4.PAE, CR3's table, EFER.LME, the GDT/IDT/TR in use) are either kept or, when
//! deliberately broken, broken inside one sequence that restores them before any
//! exception can need them (interrupts off, no faulting instruction in between). Every
//! memory operand points at a buffer the caller owns for the purpose.

use core::arch::asm;

use super::guard::{guarded, take_fault, Fault};

/// Outcome of a guarded sequence: the fault it raised, if any.
pub type Outcome = Option<Fault>;

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads DR6, then clears DR7's enables and DR6 (called by the #DB handler). Returns DR6.
pub fn disarm_debug_registers() -> u64 {
    let dr6: u64;
    // SAFETY: debug registers only control breakpoints, which the guest never relies on;
    // 0x400 is DR7's reset value, 0xffff0ff0 DR6's (SDM Vol. 3B §19.2).
    unsafe {
        asm!(
            "mov {dr6}, dr6",
            "mov {t}, 0x400",
            "mov dr7, {t}",
            "mov {t}, 0xffff0ff0",
            "mov dr6, {t}",
            dr6 = out(reg) dr6,
            t = out(reg) _,
            options(nomem, nostack, preserves_flags)
        )
    };
    dr6
}

/// Non-specific EOI (OCW2 0x20) to the master 8259, and to the slave first if `slave`.
pub fn end_of_interrupt(slave: bool) {
    // SAFETY: an EOI only clears the in-service bit of the VM's own virtual PIC.
    unsafe {
        if slave {
            asm!("out 0xa0, al", in("al") 0x20u8, options(nomem, nostack, preserves_flags));
        }
        asm!("out 0x20, al", in("al") 0x20u8, options(nomem, nostack, preserves_flags));
    }
}

pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn rdmsr(msr: u32) -> (Outcome, u64) {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR only reads; a #GP lands after it.
    unsafe { guarded!(["rdmsr"], in("ecx") msr, out("eax") lo, out("edx") hi) };
    (take_fault(), u64::from(hi) << 32 | u64::from(lo))
}

pub fn wrmsr(msr: u32, value: u64) -> Outcome {
    // SAFETY: see the module doc: the caller restores the MSR, none of which Rust uses.
    unsafe {
        guarded!(["wrmsr"], in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    };
    take_fault()
}

/// IN of `width` bytes with RAX = `rax` before; returns RAX after.
pub fn port_in(port: u16, width: u8, rax: u64) -> (Outcome, u64) {
    let mut v = rax;
    // SAFETY: a port read changes only RAX and the VM's own device models.
    unsafe {
        match width {
            1 => guarded!(["in al, dx"], in("dx") port, inout("rax") v),
            2 => guarded!(["in ax, dx"], in("dx") port, inout("rax") v),
            _ => guarded!(["in eax, dx"], in("dx") port, inout("rax") v),
        }
    }
    (take_fault(), v)
}

pub fn port_out(port: u16, width: u8, value: u32) -> Outcome {
    // SAFETY: a port write reaches only the VM's own device models (the caller keeps the
    // reset lines alone in the safe mix).
    unsafe {
        match width {
            1 => guarded!(["out dx, al"], in("dx") port, in("eax") value),
            2 => guarded!(["out dx, ax"], in("dx") port, in("eax") value),
            _ => guarded!(["out dx, eax"], in("dx") port, in("eax") value),
        }
    }
    take_fault()
}

/// Registers a hypercall must preserve, loaded with these values before VMCALL.
pub const CANARIES: [u64; 5] = [
    0x1111_2222_3333_4444,
    0x5555_6666_7777_8888,
    0x9999_aaaa_bbbb_cccc,
    0xdddd_eeee_ffff_0000,
    0x0123_4567_89ab_cdef,
];

/// VMCALL with RAX = `nr`; returns RAX and whether RDI, RSI, RDX, RCX and R8-R11 came
/// back unchanged.
pub fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64) -> (Outcome, u64, bool) {
    let mut rax = nr;
    let (mut rdi, mut rsi, mut rdx) = (a0, a1, a2);
    let [mut rcx, mut r8, mut r9, mut r10, mut r11] = CANARIES;
    // SAFETY: the caller picked the arguments so that the calls that write guest memory
    // (`vm_identity`) can only write the fuzzer's own buffers, and never power off.
    unsafe {
        guarded!(
            ["vmcall"],
            inout("rax") rax,
            inout("rdi") rdi,
            inout("rsi") rsi,
            inout("rdx") rdx,
            inout("rcx") rcx,
            inout("r8") r8,
            inout("r9") r9,
            inout("r10") r10,
            inout("r11") r11,
        )
    };
    let kept = (rdi, rsi, rdx) == (a0, a1, a2) && [rcx, r8, r9, r10, r11] == CANARIES;
    (take_fault(), rax, kept)
}

/// `yield`, unguarded (it cannot fault).
pub fn yield_now() {
    // SAFETY: yield takes no arguments and touches no memory.
    unsafe { crate::hypercall::call(abi::Hypercall::Yield as u64, 0, 0, 0) };
}

macro_rules! control_register {
    ($read:ident, $write:ident, $reg:literal) => {
        pub fn $read() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effect.
            unsafe {
                asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags))
            };
            v
        }

        pub fn $write(value: u64) -> Outcome {
            // SAFETY: see the module doc: the caller keeps what the guest needs or
            // restores it at once.
            unsafe { guarded!([concat!("mov ", $reg, ", {}")], in(reg) value) };
            take_fault()
        }
    };
}
control_register!(read_cr0, write_cr0, "cr0");
control_register!(read_cr3, write_cr3, "cr3");
control_register!(read_cr4, write_cr4, "cr4");
control_register!(read_cr8, write_cr8, "cr8");

macro_rules! debug_registers {
    ($($n:literal),*) => {
        pub fn read_dr(n: u8) -> (Outcome, u64) {
            let mut v = 0u64;
            match n {
                // SAFETY: reading a debug register has no side effect (DR4/DR5 may #UD).
                $($n => unsafe { guarded!([concat!("mov {}, dr", $n)], out(reg) v) },)*
                _ => {}
            }
            (take_fault(), v)
        }

        pub fn write_dr(n: u8, value: u64) -> Outcome {
            match n {
                // SAFETY: breakpoints the guest never relies on; the #DB handler and the
                // caller disarm them.
                $($n => unsafe { guarded!([concat!("mov dr", $n, ", {}")], in(reg) value) },)*
                _ => {}
            }
            take_fault()
        }
    };
}
debug_registers!(0, 1, 2, 3, 4, 5, 6, 7);

pub fn xsetbv(xcr: u32, value: u64) -> Outcome {
    // SAFETY: XCR0 gates only the x87/SSE/AVX state, which Rust code here never uses.
    unsafe {
        guarded!(["xsetbv"], in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32)
    };
    take_fault()
}

pub fn xgetbv(xcr: u32) -> (Outcome, u64) {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV only reads.
    unsafe { guarded!(["xgetbv"], in("ecx") xcr, out("eax") lo, out("edx") hi) };
    (take_fault(), u64::from(hi) << 32 | u64::from(lo))
}

/// The XSAVE-family instructions the fuzzer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// The variants are the mnemonics.
#[allow(clippy::enum_variant_names)]
pub enum Xsave {
    Xsave,
    Xsaveopt,
    Xrstor,
}

/// XSAVE, XSAVEOPT or XRSTOR at `area` with requested-feature bitmap `mask`.
///
/// # Safety
/// `area` must be a buffer of the fuzzer's, large enough for the state XCR0 enables.
pub unsafe fn xsave(kind: Xsave, area: u64, mask: u64) -> Outcome {
    let (lo, hi) = (mask as u32, (mask >> 32) as u32);
    // SAFETY: the caller vouches for the area; the state loaded is never used by Rust.
    unsafe {
        match kind {
            Xsave::Xsave => guarded!(["xsave64 [{}]"], in(reg) area, in("eax") lo, in("edx") hi),
            Xsave::Xsaveopt => {
                guarded!(["xsaveopt64 [{}]"], in(reg) area, in("eax") lo, in("edx") hi)
            }
            Xsave::Xrstor => guarded!(["xrstor64 [{}]"], in(reg) area, in("eax") lo, in("edx") hi),
        }
    }
    take_fault()
}

/// Operand of LGDT and LIDT, and what SGDT and SIDT store.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub struct TablePointer {
    pub limit: u16,
    pub base: u64,
}

/// What to do while a garbage GDTR or IDTR is loaded, before the good one comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// SGDT/SIDT into `seen`.
    Store,
    /// A `yield` hypercall: the hypervisor and the other VMs run meanwhile.
    Yield,
}

/// LGDT (or LIDT, `idt`) of `bad`, then `window`, then the table in `good` again. Nothing
/// in between can fault, so no exception ever meets the garbage table.
pub fn load_table(
    idt: bool,
    bad: &TablePointer,
    good: &TablePointer,
    window: Window,
) -> (Outcome, TablePointer) {
    let mut seen = TablePointer::default();
    let seen_ptr = &mut seen as *mut TablePointer;
    // SAFETY: the garbage table is in place only between two instructions that cannot
    // fault (SGDT/SIDT into our buffer, or VMCALL), with interrupts off; `good` is the
    // table in use before. If the first LGDT/LIDT faults (non-canonical base) nothing
    // changed.
    unsafe {
        match (idt, window) {
            (false, Window::Store) => guarded!(
                ["lgdt [{b}]", "sgdt [{s}]", "lgdt [{g}]"],
                b = in(reg) bad, s = in(reg) seen_ptr, g = in(reg) good
            ),
            (true, Window::Store) => guarded!(
                ["lidt [{b}]", "sidt [{s}]", "lidt [{g}]"],
                b = in(reg) bad, s = in(reg) seen_ptr, g = in(reg) good
            ),
            (false, Window::Yield) => guarded!(
                ["lgdt [{b}]", "vmcall", "lgdt [{g}]"],
                b = in(reg) bad, g = in(reg) good,
                inout("rax") abi::Hypercall::Yield as u64 => _,
            ),
            (true, Window::Yield) => guarded!(
                ["lidt [{b}]", "vmcall", "lidt [{g}]"],
                b = in(reg) bad, g = in(reg) good,
                inout("rax") abi::Hypercall::Yield as u64 => _,
            ),
        }
    }
    (take_fault(), seen)
}

pub fn store_tables() -> (TablePointer, TablePointer) {
    let (mut gdt, mut idt) = (TablePointer::default(), TablePointer::default());
    // SAFETY: SGDT and SIDT only write the two buffers.
    unsafe {
        asm!("sgdt [{}]", "sidt [{}]", in(reg) &mut gdt as *mut TablePointer, in(reg) &mut idt as *mut TablePointer, options(nostack, preserves_flags))
    };
    (gdt, idt)
}

pub fn ltr(selector: u16) -> Outcome {
    // SAFETY: a TR that loads names one of the guest's own TSSs (`gdt`); the caller
    // reloads the usual one.
    unsafe { guarded!(["ltr {:x}"], in(reg) selector) };
    take_fault()
}

pub fn lldt(selector: u16) -> Outcome {
    // SAFETY: the guest never uses the LDT; only the null selector can load here.
    unsafe { guarded!(["lldt {:x}"], in(reg) selector) };
    take_fault()
}

pub fn str_() -> u16 {
    let v: u16;
    // SAFETY: STR only reads.
    unsafe { asm!("str {:x}", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The VMX instructions (SDM Vol. 3C chapter 31) and GETSEC, VMFUNC.
pub const VMX_INSNS: [&str; 14] = [
    "vmxon",
    "vmxoff",
    "vmclear",
    "vmptrld",
    "vmptrst",
    "vmread",
    "vmwrite",
    "vmlaunch",
    "vmresume",
    "invept",
    "invvpid",
    "vmfunc",
    "getsec",
    "vmcall-ud",
];

/// VMX instruction number `which` (index in [`VMX_INSNS`]) with RAX = `a`, RCX = `c` and
/// memory operands at `area`.
///
/// # Safety
/// `area` must be 16 bytes or more of the fuzzer's own memory.
pub unsafe fn vmx(which: usize, a: u64, c: u64, area: u64) -> Outcome {
    // SAFETY: in a VM every one of these exits or raises #UD; should one run for real it
    // reads or writes the area only.
    unsafe {
        match which {
            0 => {
                guarded!(["vmxon qword ptr [{m}]"], m = in(reg) area, inout("rax") a => _, inout("rcx") c => _)
            }
            1 => guarded!(["vmxoff"], inout("rax") a => _, inout("rcx") c => _),
            2 => {
                guarded!(["vmclear qword ptr [{m}]"], m = in(reg) area, inout("rax") a => _, inout("rcx") c => _)
            }
            3 => {
                guarded!(["vmptrld qword ptr [{m}]"], m = in(reg) area, inout("rax") a => _, inout("rcx") c => _)
            }
            4 => {
                guarded!(["vmptrst qword ptr [{m}]"], m = in(reg) area, inout("rax") a => _, inout("rcx") c => _)
            }
            5 => guarded!(["vmread rax, rcx"], inout("rax") a => _, inout("rcx") c => _),
            6 => guarded!(["vmwrite rcx, rax"], inout("rax") a => _, inout("rcx") c => _),
            7 => guarded!(["vmlaunch"], inout("rax") a => _, inout("rcx") c => _),
            8 => guarded!(["vmresume"], inout("rax") a => _, inout("rcx") c => _),
            9 => {
                guarded!(["invept rax, xmmword ptr [{m}]"], m = in(reg) area, inout("rax") a => _, inout("rcx") c => _)
            }
            10 => {
                guarded!(["invvpid rax, xmmword ptr [{m}]"], m = in(reg) area, inout("rax") a => _, inout("rcx") c => _)
            }
            11 => guarded!(["vmfunc"], inout("rax") a => _, inout("rcx") c => _),
            12 => guarded!(["getsec"], inout("rax") a => _, inout("rcx") c => _, out("rdx") _),
            // VMCALL with a prefix that makes it invalid (LOCK): #UD before any exit.
            _ => {
                guarded!([".byte 0xf0, 0x0f, 0x01, 0xc1"], inout("rax") a => _, inout("rcx") c => _)
            }
        }
    }
    take_fault()
}

/// Miscellaneous instructions with ECX = `c`, EAX = `a`, a memory operand at `area`;
/// returns ECX after (RDTSCP's TSC_AUX) and RAX after.
///
/// # Safety
/// `area` must be 64 bytes or more of the fuzzer's own memory.
pub unsafe fn misc(which: Misc, a: u64, c: u64, area: u64) -> (Outcome, u64, u64) {
    let (mut rax, mut rcx) = (a, c);
    // SAFETY: none of these changes state the guest relies on; see each line.
    unsafe {
        match which {
            // Caches: the guest's memory stays coherent in a VM (INVD exits).
            Misc::Invd => guarded!(["invd"]),
            Misc::Wbinvd => guarded!(["wbinvd"]),
            Misc::Rdpmc => guarded!(["rdpmc"], inout("rcx") rcx, inout("rax") rax, out("rdx") _),
            Misc::Rdrand => guarded!(["rdrand rax"], inout("rax") rax),
            Misc::Rdseed => guarded!(["rdseed rax"], inout("rax") rax),
            Misc::Rdtscp => guarded!(["rdtscp"], inout("rcx") rcx, inout("rax") rax, out("rdx") _),
            Misc::Rdpid => guarded!(["rdpid rax"], inout("rax") rax),
            // MONITOR arms a watch on the area; MWAIT may wait for a store or interrupt.
            Misc::Monitor => {
                guarded!(["monitor"], inout("rax") area => _, inout("rcx") rcx, in("rdx") 0u64)
            }
            Misc::Mwait => guarded!(["mwait"], inout("rax") rax, inout("rcx") rcx),
            Misc::Clflush => guarded!(["clflush byte ptr [{}]"], in(reg) area),
            Misc::Invlpg => guarded!(["invlpg byte ptr [{}]"], in(reg) a),
            // Twice, so KERNEL_GS_BASE and GS_BASE end as they were.
            Misc::Swapgs => guarded!(["swapgs", "swapgs"]),
            Misc::Wrfsbase => guarded!(["wrfsbase rax"], inout("rax") rax),
            Misc::Xgetbv => guarded!(["xgetbv"], inout("rcx") rcx, inout("rax") rax, out("rdx") _),
            Misc::Pause => guarded!(["pause"]),
        }
    }
    (take_fault(), rcx, rax)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misc {
    Invd,
    Wbinvd,
    Rdpmc,
    Rdrand,
    Rdseed,
    Rdtscp,
    Rdpid,
    Monitor,
    Mwait,
    Clflush,
    Invlpg,
    Swapgs,
    Wrfsbase,
    Xgetbv,
    Pause,
}

/// Deliberate exceptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Raise {
    Ud2,
    Int3,
    Icebp,
    Into,
    DivideByZero,
    /// A read at the address given.
    Read,
    /// A write at the address given.
    Write,
    /// `INT n` for the n given (a few fixed vectors).
    Int,
    /// FWAIT with CR0.TS set: #NM.
    DeviceNotAvailable,
}

/// The vectors `Raise::Int` can use (no CPU exception that pushes an error code, whose
/// stub would then misread the frame).
pub const INT_VECTORS: [u8; 10] = [0x00, 0x02, 0x03, 0x04, 0x12, 0x20, 0x2f, 0x30, 0x80, 0xff];

/// Raises `what`; `arg` is the address for Read/Write and the index into
/// [`INT_VECTORS`] for Int.
///
/// # Safety
/// For Write, `arg` must not be memory the guest uses (the fuzzer passes unmapped or
/// non-canonical addresses only).
pub unsafe fn raise(what: Raise, arg: u64) -> Outcome {
    // SAFETY: every one of these raises an exception inside the guarded sequence, or
    // (INT n >= 32) enters the interrupt handler, which returns.
    unsafe {
        match what {
            Raise::Ud2 => guarded!(["ud2"]),
            Raise::Int3 => guarded!(["int3"]),
            Raise::Icebp => guarded!([".byte 0xf1"]),
            Raise::Into => guarded!([".byte 0xce"]),
            Raise::DivideByZero => {
                guarded!(["xor ecx, ecx", "div rcx"], out("rax") _, out("rdx") _, out("rcx") _)
            }
            Raise::Read => guarded!(["mov {t}, qword ptr [{a}]"], a = in(reg) arg, t = out(reg) _),
            Raise::Write => guarded!(["mov qword ptr [{a}], {a}"], a = in(reg) arg),
            Raise::Int => match INT_VECTORS[arg as usize % INT_VECTORS.len()] {
                0x00 => guarded!(["int 0x00"]),
                0x02 => guarded!(["int 0x02"]),
                0x03 => guarded!(["int 0x03"]),
                0x04 => guarded!(["int 0x04"]),
                0x12 => guarded!(["int 0x12"]),
                0x20 => guarded!(["int 0x20"]),
                0x2f => guarded!(["int 0x2f"]),
                0x30 => guarded!(["int 0x30"]),
                0x80 => guarded!(["int 0x80"]),
                _ => guarded!(["int 0xff"]),
            },
            Raise::DeviceNotAvailable => {
                // CR0.TS set, FWAIT (#NM with CR0.MP set), then TS cleared again.
                guarded!(
                    ["mov {t}, cr0", "or {t}, 8", "mov cr0, {t}", "fwait"],
                    t = out(reg) _,
                )
            }
        }
    }
    take_fault()
}

/// Instructions that exit to the hypervisor, for the single-step and shadow tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exiting {
    Nop,
    Cpuid,
    Out80,
    Rdmsr,
    Yield,
}

/// With RFLAGS.TF set by POPF, executes `what`: the single-step trap must arrive right
/// after it (SDM Vol. 3B §18.3.1.4). Returns the fault and the address just after `what`.
pub fn single_step(what: Exiting) -> (Outcome, u64) {
    let after: u64;
    // SAFETY: TF only makes the CPU trap; the handler clears it in the frame, and the
    // landing pad restores RFLAGS. The exiting instructions change only the registers
    // declared.
    unsafe {
        match what {
            Exiting::Nop => guarded!(
                ["lea {a}, [rip + 78f]", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "nop", "78:", "nop"],
                a = out(reg) after,
            ),
            Exiting::Cpuid => guarded!(
                ["lea {a}, [rip + 78f]", "mov {t}, rbx", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "cpuid", "78:", "mov rbx, {t}"],
                a = out(reg) after, t = out(reg) _,
                inout("eax") 0u32 => _, inout("ecx") 0u32 => _, out("edx") _,
            ),
            Exiting::Out80 => guarded!(
                ["lea {a}, [rip + 78f]", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "out 0x80, al", "78:", "nop"],
                a = out(reg) after, in("al") 0u8,
            ),
            Exiting::Rdmsr => guarded!(
                ["lea {a}, [rip + 78f]", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "rdmsr", "78:", "nop"],
                a = out(reg) after, in("ecx") 0x10u32, out("eax") _, out("edx") _,
            ),
            Exiting::Yield => guarded!(
                ["lea {a}, [rip + 78f]", "pushfq", "or qword ptr [rsp], 0x100", "popfq", "vmcall", "78:", "nop"],
                a = out(reg) after, inout("rax") abi::Hypercall::Yield as u64 => _,
            ),
        }
    }
    (take_fault(), after)
}

/// Interrupt-flag and interrupt-shadow games.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shadow {
    /// STI; NOP; NOP; CLI: interrupts that are due arrive.
    StiNop,
    /// STI; HLT; CLI: the VM waits for its next interrupt.
    StiHlt,
    /// STI; CPUID; CLI: an exit in the STI shadow.
    StiCpuid,
    /// MOV SS; CPUID: an exit in the MOV-SS shadow.
    MovSsCpuid,
    /// MOV SS; VMCALL (yield).
    MovSsYield,
    /// POPF of the value given (TF and IF cleared), then CPUID.
    PopfCpuid,
}

pub fn shadow(what: Shadow, flags: u64) -> Outcome {
    // SAFETY: interrupts, if enabled, go to the fuzz IDT vectors (PIC bases set by the
    // caller); the landing pad restores RFLAGS (IF off again, DF clear).
    unsafe {
        match what {
            Shadow::StiNop => guarded!(["sti", "nop", "nop", "cli"]),
            Shadow::StiHlt => guarded!(["sti", "hlt", "cli"]),
            Shadow::StiCpuid => guarded!(
                ["mov {t}, rbx", "sti", "cpuid", "cli", "mov rbx, {t}"],
                t = out(reg) _, inout("eax") 0u32 => _, inout("ecx") 0u32 => _, out("edx") _,
            ),
            Shadow::MovSsCpuid => guarded!(
                ["mov {t}, rbx", "mov {s:x}, ss", "mov ss, {s:x}", "cpuid", "mov rbx, {t}"],
                t = out(reg) _, s = out(reg) _, inout("eax") 0u32 => _, inout("ecx") 0u32 => _, out("edx") _,
            ),
            Shadow::MovSsYield => guarded!(
                ["mov {s:x}, ss", "mov ss, {s:x}", "vmcall"],
                s = out(reg) _, inout("rax") abi::Hypercall::Yield as u64 => _,
            ),
            Shadow::PopfCpuid => guarded!(
                ["mov {t}, rbx", "push {f}", "popfq", "cpuid", "mov rbx, {t}"],
                f = in(reg) flags & !((1 << 8) | (1 << 9)), t = out(reg) _,
                inout("eax") 0u32 => _, inout("ecx") 0u32 => _, out("edx") _,
            ),
        }
    }
    take_fault()
}
