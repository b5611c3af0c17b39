//! Guarded instruction sequences: how the fuzzer survives its own faults.
//!
//! Every hostile operation is a small inline-assembly sequence wrapped by [`guarded!`],
//! which records, before the sequence runs, where it ends (its landing pad), the stack
//! pointer and RFLAGS. An exception raised at ring 0 while a sequence is armed does not
//! stop the guest: the handler ([`take_exception`]) notes the vector, error code, RIP and
//! (for #PF) CR2 and resumes at the landing pad with the recorded stack pointer, and the
//! pad restores RFLAGS, so a sequence that set DF, AC, NT or IF mid-way cannot leak them
//! into Rust code. No decoding of instruction lengths is needed, and a fault anywhere in
//! a multi-instruction sequence (after a PUSH, say) still lands cleanly.
//!
//! Interrupts (vectors 32-255) are taken only while the fuzz mode runs
//! ([`take_interrupt`]): they are counted and acknowledged to the virtual 8259 pair,
//! whose vector bases the interrupt-flag operations set to 0x20/0x28 before any STI.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::exceptions::ExceptionFrame;

/// Where the armed sequence resumes after a fault (its label `77:`).
#[export_name = "lz_fuzz_resume_rip"]
static RESUME_RIP: AtomicU64 = AtomicU64::new(0);
/// RSP at the start of the armed sequence.
#[export_name = "lz_fuzz_resume_rsp"]
static RESUME_RSP: AtomicU64 = AtomicU64::new(0);
/// RFLAGS at the start of the armed sequence, restored by its landing pad.
#[export_name = "lz_fuzz_flags"]
static FLAGS: AtomicU64 = AtomicU64::new(0);
/// 1 while a sequence runs (set and cleared by the sequence itself).
#[export_name = "lz_fuzz_armed"]
static ARMED: AtomicU8 = AtomicU8::new(0);

/// Whether the fuzz mode runs (interrupts are taken only then).
static ACTIVE: AtomicBool = AtomicBool::new(false);

const NO_FAULT: u64 = u64::MAX;
static FAULT_VECTOR: AtomicU64 = AtomicU64::new(NO_FAULT);
static FAULT_ERROR: AtomicU64 = AtomicU64::new(0);
static FAULT_RIP: AtomicU64 = AtomicU64::new(0);
static FAULT_CR2: AtomicU64 = AtomicU64::new(0);
static FAULT_DR6: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

const DEBUG: u64 = 1;
const PAGE_FAULT: u64 = 14;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;

/// What a guarded sequence raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error: u64,
    /// RIP the CPU pushed (the faulting instruction, or the next one for a trap).
    pub rip: u64,
    /// CR2 when the handler ran (meaningful for #PF).
    pub cr2: u64,
    /// DR6 when the handler ran (meaningful for #DB).
    pub dr6: u64,
}

/// Runs an inline-assembly sequence armed: a fault inside it resumes after it. Usage:
/// `guarded!(["insn", ...], operands...)`. The sequence must leave RSP as it found it
/// when it completes; the landing pad restores RSP and RFLAGS only after a fault and
/// RFLAGS always. Callers take the outcome with [`take_fault`].
macro_rules! guarded {
    ([$($tmpl:expr),* $(,)?] $(, $($ops:tt)*)?) => {
        core::arch::asm!(
            "pushfq",
            "pop qword ptr [rip + lz_fuzz_flags]",
            "push rax",
            "lea rax, [rip + 77f]",
            "mov qword ptr [rip + lz_fuzz_resume_rip], rax",
            "pop rax",
            "mov qword ptr [rip + lz_fuzz_resume_rsp], rsp",
            "mov byte ptr [rip + lz_fuzz_armed], 1",
            $($tmpl,)*
            "77:",
            "mov byte ptr [rip + lz_fuzz_armed], 0",
            "push qword ptr [rip + lz_fuzz_flags]",
            "popfq",
            $($($ops)*)?
        )
    };
}
pub(crate) use guarded;

/// Starts taking interrupts (the fuzz mode is running).
pub fn activate() {
    ACTIVE.store(true, Ordering::SeqCst);
}

/// The fault the last guarded sequence raised, if any (and forgets it).
pub fn take_fault() -> Option<Fault> {
    let vector = FAULT_VECTOR.swap(NO_FAULT, Ordering::SeqCst);
    (vector != NO_FAULT).then(|| Fault {
        vector: vector as u8,
        error: FAULT_ERROR.load(Ordering::SeqCst),
        rip: FAULT_RIP.load(Ordering::SeqCst),
        cr2: FAULT_CR2.load(Ordering::SeqCst),
        dr6: FAULT_DR6.load(Ordering::SeqCst),
    })
}

/// Interrupts taken so far.
pub fn interrupts() -> u64 {
    INTERRUPTS.load(Ordering::SeqCst)
}

/// Called first by the exception handler: an exception at ring 0 inside an armed sequence
/// is recorded and the frame is pointed at the landing pad (returns true). The first
/// fault disarms, so a fault in the landing pad itself would be fatal, not a loop.
pub fn take_exception(frame: &mut ExceptionFrame) -> bool {
    if frame.vector >= 32 || frame.came_from_ring3() || ARMED.swap(0, Ordering::SeqCst) == 0 {
        return false;
    }
    FAULT_ERROR.store(frame.error_code, Ordering::SeqCst);
    FAULT_RIP.store(frame.rip, Ordering::SeqCst);
    if frame.vector == PAGE_FAULT {
        FAULT_CR2.store(super::insn::read_cr2(), Ordering::SeqCst);
    }
    if frame.vector == DEBUG {
        // A breakpoint the fuzzer armed must not fire again in the landing pad.
        FAULT_DR6.store(super::insn::disarm_debug_registers(), Ordering::SeqCst);
    }
    FAULT_VECTOR.store(frame.vector, Ordering::SeqCst);
    frame.rip = RESUME_RIP.load(Ordering::SeqCst);
    frame.rsp = RESUME_RSP.load(Ordering::SeqCst);
    frame.rflags &= !(RFLAGS_TF | RFLAGS_IF);
    true
}

/// Called by the exception handler for vectors 32-255: while fuzzing, counts the
/// interrupt and sends a non-specific EOI to the 8259(s) (returns true).
pub fn take_interrupt(vector: u64) -> bool {
    if !ACTIVE.load(Ordering::SeqCst) {
        return false;
    }
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    super::insn::end_of_interrupt((0x28..0x30).contains(&vector));
    true
}
