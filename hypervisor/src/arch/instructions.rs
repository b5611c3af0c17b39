//! The privileged instructions the hypervisor executes, each in a one-line wrapper.
//!
//! Keeping them here (and only here, apart from the entry and exception assembly) means
//! every other module is plain Rust that runs under `cargo test` on the host. The
//! wrappers are `unsafe fn` where the instruction can change machine state in ways the
//! compiler cannot see; the caller states why that use is sound.

use core::arch::asm;

/// Reads a byte from an I/O port.
///
/// # Safety
/// Reading some ports has side effects on devices (e.g. acknowledging an interrupt).
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches only the named port and AL; the caller vouches for the port.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// The caller must know what the device behind `port` does with the write.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches only the named port; the caller vouches for its effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a 16-bit word to an I/O port.
///
/// # Safety
/// As for [`outb`].
#[inline]
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a model-specific register.
///
/// # Safety
/// RDMSR raises #GP for an MSR the CPU does not implement: the caller must have checked
/// (through CPUID) that `msr` exists.
#[inline]
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads only; existence of the MSR is the caller's obligation.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
/// The caller must know the MSR exists and that the value is valid for it.
#[inline]
pub unsafe fn wrmsr(msr: u32, value: u64) {
    let (lo, hi) = (value as u32, (value >> 32) as u32);
    // SAFETY: the caller vouches for the MSR and the value.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") lo, in("edx") hi, options(nostack, preserves_flags))
    };
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC has no side effects (CR4.TSD is never set by Lazarus).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Masks maskable interrupts on this CPU.
#[inline]
pub fn disable_interrupts() {
    // SAFETY: host code always runs with interrupts masked (DESIGN 4); masking again is harmless.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Stops this CPU for good: interrupts masked, HLT in a loop (an NMI returns to the loop).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: with interrupts masked HLT only waits for NMI/SMI/INIT; no state changes.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Invalidates the TLB entries for the page holding linear address `addr` (SDM Vol. 2A
/// "INVLPG"; for a 2 MiB page, the whole page's entry).
///
/// # Safety
/// None beyond CPL 0: dropping a TLB entry only makes the CPU re-read the page tables.
#[inline]
pub unsafe fn invlpg(addr: u64) {
    // SAFETY: INVLPG changes no memory and no register; the next access re-walks the tables.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) };
}

/// Hints to the CPU that this is a busy-wait loop.
#[inline]
pub fn pause() {
    core::hint::spin_loop();
}

/// Reads CR0, CR3 and CR4 (for the register dump).
pub fn control_registers() -> [u64; 4] {
    let (cr0, cr2, cr3, cr4): (u64, u64, u64, u64);
    // SAFETY: reading control registers has no side effects at CPL 0.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags));
        asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags));
    }
    [cr0, cr2, cr3, cr4]
}

/// Reads DR0-DR3 and DR6: the guest's, while a VM is current (the host never uses them).
pub fn debug_registers() -> ([u64; 4], u64) {
    let (dr0, dr1, dr2, dr3, dr6): (u64, u64, u64, u64, u64);
    // SAFETY: reading debug registers has no side effects at CPL 0 (DR7.GD is clear in
    // the host: VM exit loads DR7 with 0x400, SDM Vol. 3C §28.5.1).
    unsafe {
        asm!("mov {}, dr0", out(reg) dr0, options(nomem, nostack, preserves_flags));
        asm!("mov {}, dr1", out(reg) dr1, options(nomem, nostack, preserves_flags));
        asm!("mov {}, dr2", out(reg) dr2, options(nomem, nostack, preserves_flags));
        asm!("mov {}, dr3", out(reg) dr3, options(nomem, nostack, preserves_flags));
        asm!("mov {}, dr6", out(reg) dr6, options(nomem, nostack, preserves_flags));
    }
    ([dr0, dr1, dr2, dr3], dr6)
}

/// Loads DR0-DR3 and DR6.
///
/// # Safety
/// DR6 bits 63:32 must be 0 (else #GP). The addresses arm nothing in the host: DR7,
/// which enables breakpoints, is 0x400 after every VM exit (SDM Vol. 3C §28.5.1) and the
/// guest's DR7 is loaded only by VM entry.
pub unsafe fn set_debug_registers(dr: [u64; 4], dr6: u64) {
    // SAFETY: see the function's contract; writing DR0-3 has no effect while DR7 is 0x400.
    unsafe {
        asm!("mov dr0, {}", in(reg) dr[0], options(nomem, nostack, preserves_flags));
        asm!("mov dr1, {}", in(reg) dr[1], options(nomem, nostack, preserves_flags));
        asm!("mov dr2, {}", in(reg) dr[2], options(nomem, nostack, preserves_flags));
        asm!("mov dr3, {}", in(reg) dr[3], options(nomem, nostack, preserves_flags));
        asm!("mov dr6, {}", in(reg) dr6, options(nomem, nostack, preserves_flags));
    }
}
