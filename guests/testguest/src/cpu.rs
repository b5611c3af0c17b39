//! One small wrapper per machine instruction the guest needs (VMCALL aside, which lives
//! in `hypercall`), so that the rest of the guest is ordinary Rust and every piece of
//! inline assembly can be checked on its own.
//!
//! Most of these instructions are what the tests want the guest to do to the hypervisor:
//! they are meant to exit, fault or misbehave, and the wrappers do not try to make that
//! safe, only to state what each one can do to the guest itself.

use core::arch::asm;

/// Operand of LGDT and LIDT.
#[repr(C, packed)]
pub struct DescriptorTablePointer {
    pub limit: u16,
    pub base: u64,
}

/// Stops the CPU for good: with interrupts off, HLT only wakes for NMI or SMI, after
/// which the loop halts again.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI and HLT change nothing but the interrupt flag and the CPU's activity.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// CPUID leaf 0's vendor string, as EBX, EDX, ECX.
pub fn cpuid_vendor() -> [u8; 12] {
    let leaf = core::arch::x86_64::__cpuid(0);
    let mut vendor = [0u8; 12];
    vendor[0..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
    vendor[8..12].copy_from_slice(&leaf.ecx.to_le_bytes());
    vendor
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The caller must know what the device behind `port` does with the write.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: OUT touches only the port; the caller vouches for its effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// Reading some ports has side effects on devices.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: IN touches only the port and AL; the caller vouches for the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// The two bytes of RDMSR, which the #GP handler checks before skipping one.
pub const RDMSR_BYTES: [u8; 2] = [0x0f, 0x32];

/// Executes RDMSR as a single two-byte instruction.
///
/// # Safety
/// For an MSR that does not exist RDMSR raises #GP: the caller must have armed the
/// exception handler to skip the instruction. On such a skip the returned value is
/// meaningless.
pub unsafe fn rdmsr_raw(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR only reads. Not `nomem`: the #GP handler, if it runs, writes the
    // probe's flags, which the caller reads after this block.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reloads CR3 with its own value, flushing the non-global TLB entries after the page
/// tables changed.
pub fn flush_tlb() {
    // SAFETY: writing back the current CR3 keeps the same address space.
    unsafe {
        asm!("mov rax, cr3", "mov cr3, rax", out("rax") _, options(nostack, preserves_flags))
    };
}

pub fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: reading CR4 has no side effect.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// # Safety
/// `value` must be a CR4 the guest can keep running with.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: the caller vouches for the new value.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

pub fn read_cs() -> u16 {
    let value: u16;
    // SAFETY: reading a segment selector has no side effect.
    unsafe { asm!("mov {:x}, cs", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Loads GDTR, then CS with `code` (through a far return) and DS, ES, SS with `data`;
/// FS and GS get the null selector.
///
/// # Safety
/// `gdt` must describe a table that lives for the rest of the run, in which `code` is a
/// 64-bit ring-0 code segment and `data` a writable ring-0 data segment.
pub unsafe fn load_gdt(gdt: &DescriptorTablePointer, code: u16, data: u16) {
    // SAFETY: the caller vouches for the table and selectors. The far return pops the two
    // words it was given, so RSP ends where it started.
    unsafe {
        asm!(
            "lgdt [{gdt}]",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {data:x}",
            "mov es, {data:x}",
            "mov ss, {data:x}",
            "xor {tmp:e}, {tmp:e}",
            "mov fs, {tmp:x}",
            "mov gs, {tmp:x}",
            gdt = in(reg) gdt,
            code = in(reg) u64::from(code),
            data = in(reg) data,
            tmp = out(reg) _,
            options(preserves_flags),
        );
    }
}

/// Loads the task register.
///
/// # Safety
/// `selector` must name an available 64-bit TSS descriptor in the current GDT whose TSS
/// lives for the rest of the run.
pub unsafe fn load_tr(selector: u16) {
    // SAFETY: the caller vouches for the descriptor.
    unsafe { asm!("ltr {:x}", in(reg) selector, options(nostack, preserves_flags)) };
}

/// Loads IDTR.
///
/// # Safety
/// `idt` must describe a table that lives for the rest of the run and whose gates lead to
/// handlers (a limit of 0 is fine for a guest that wants to triple-fault).
pub unsafe fn load_idt(idt: &DescriptorTablePointer) {
    // SAFETY: the caller vouches for the table.
    unsafe { asm!("lidt [{}]", in(reg) idt, options(readonly, nostack, preserves_flags)) };
}

/// Raises a breakpoint exception.
///
/// # Safety
/// Whatever the IDT does with vector 3 happens.
pub unsafe fn int3() {
    // SAFETY: the caller accepts the consequences.
    unsafe { asm!("int3", options(nomem, nostack)) };
}

/// Raises an invalid-opcode exception; works at any privilege level.
pub fn ud2() -> ! {
    // SAFETY: UD2 only raises #UD, which the IDT handles; it never falls through.
    unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
}

/// Stores `value` at `address` with one MOV, whatever the alignment.
///
/// # Safety
/// `address` must be mapped writable and the memory there must not be in use by Rust code.
pub unsafe fn store_u64(address: u64, value: u64) {
    // SAFETY: the caller vouches for the target.
    unsafe {
        asm!(
            "mov qword ptr [{address}], {value}",
            address = in(reg) address,
            value = in(reg) value,
            options(nostack, preserves_flags),
        )
    };
}

/// Loads the u64 at `address` with one MOV, whatever the alignment.
///
/// # Safety
/// `address` must be mapped.
pub unsafe fn load_u64(address: u64) -> u64 {
    let value: u64;
    // SAFETY: the caller vouches for the mapping; a read changes nothing in the guest.
    unsafe {
        asm!(
            "mov {value}, qword ptr [{address}]",
            value = out(reg) value,
            address = in(reg) address,
            options(readonly, nostack, preserves_flags),
        )
    };
    value
}

/// Drops to ring 3 at `rip` with stack `rsp`, interrupts off.
///
/// # Safety
/// `cs` and `ss` must be ring-3 selectors of the current GDT, the code and stack must be
/// user-accessible in the page tables, and the TSS must give ring 0 a stack for the
/// exception that brings control back.
pub unsafe fn enter_user(rip: u64, rsp: u64, cs: u16, ss: u16) -> ! {
    // SAFETY: the caller vouches for the selectors, mappings and TSS. IRETQ pops the
    // frame pushed here; RFLAGS = 0x2 is the reserved bit alone (IF = 0, IOPL = 0).
    unsafe {
        asm!(
            "push {ss}",
            "push {rsp}",
            "push 0x2",
            "push {cs}",
            "push {rip}",
            "iretq",
            ss = in(reg) u64::from(ss),
            rsp = in(reg) rsp,
            cs = in(reg) u64::from(cs),
            rip = in(reg) rip,
            options(noreturn),
        );
    }
}
