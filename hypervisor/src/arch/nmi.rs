//! NMI blocking, and how the host ends it.
//!
//! Delivering an NMI through the IDT blocks further NMIs until the next IRET (SDM Vol. 3A
//! §6.7.1, "Handling Multiple NMIs": the processor "blocks delivery", it does not discard).
//! An NMI that arrives while they are blocked is therefore not lost: the processor latches
//! it and delivers it right after the IRET; the latch holds one, so a second one arriving
//! during the same block collapses into the first (the behaviour Linux's nested-NMI entry
//! code also assumes; Bochs models it with one pending-NMI event flag). The watchdog relies
//! on both: its handler is never re-entered, and a tick that lands during the handler is
//! taken afterwards.
//!
//! With the pin-based controls "NMI exiting" = 1 and "virtual NMIs" = 1 (Lazarus sets
//! both), an NMI that arrives while a guest runs is not delivered through any IDT: it
//! causes a VM exit (basic exit reason 0, interruption type NMI). SDM Vol. 3C §28.1,
//! "Architectural State Before a VM Exit", states that such an NMI blocks subsequent NMIs
//! only after the VM exit completes: so yes, blocking by NMI **is in effect in the host**
//! after an NMI VM exit, exactly as if the host's own NMI handler had been entered, and it
//! stays in effect until the host executes IRET. ("Virtual NMIs" only changes what the
//! guest-state field "blocking by NMI" means in VMX non-root operation, §25.6.1 and
//! §27.6.1; it does not make the physical NMI unblock itself.) Bochs 2.7 does the same: it
//! masks NMIs before taking the exit and unmasks them on IRET (and, with virtual NMIs, on
//! the next VM entry).
//!
//! The host does not wait for that next VM entry: a hang in the exit handler right after
//! an NMI exit would otherwise go unseen. [`unblock_nmis`] ends the blocking at once.

use core::arch::asm;

/// Ends NMI blocking on this CPU: builds an interrupt frame for the next instruction on
/// the current stack (SS, RSP, RFLAGS, CS, RIP, as a 64-bit interrupt pushes them, SDM
/// Vol. 3A §6.14.2) and executes IRETQ to it. Nothing else changes: same stack pointer,
/// same flags (interrupts stay masked), same code segment. Harmless when NMIs are not
/// blocked. A pending NMI is delivered right after the IRETQ.
///
/// Must not be called from the NMI handler itself (it would let a nested NMI overwrite the
/// handler's IST stack).
pub fn unblock_nmis() {
    // SAFETY: the frame pushed describes exactly the state after the `iretq` (the current
    // SS and CS, RSP as it was before the pushes, the current RFLAGS, the local label as
    // RIP), so IRETQ resumes here with every register as it was, and pops what was
    // pushed. The stack is not `nostack`: the asm pushes five quadwords below RSP.
    unsafe {
        asm!(
            "mov {ss:e}, ss",
            "mov {cs:e}, cs",
            "mov {rsp}, rsp",
            "push {ss}",
            "push {rsp}",
            "pushfq",
            "push {cs}",
            "lea {rsp}, [rip + 2f]",
            "push {rsp}",
            "iretq",
            "2:",
            ss = out(reg) _,
            cs = out(reg) _,
            rsp = out(reg) _,
        );
    }
}
