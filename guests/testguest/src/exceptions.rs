//! The guest's own IDT: the 32 CPU exception vectors and the 224 interrupt vectors.
//!
//! A guest that faults without an IDT triple-faults, and the hypervisor then sees only a
//! dead VM. With one, every unexpected exception becomes a console line saying which
//! vector and where, so an end-to-end test can tell a guest bug from a hypervisor bug.
//!
//! Three exceptions are expected rather than fatal, and each is recognised narrowly so that
//! a real fault is never mistaken for one: the #GP of the MSR probe ([`try_rdmsr`]), only
//! while the probe is armed, at ring 0, on an RDMSR instruction; the #UD with which the
//! ring-3 code of `usermode` comes back, only from ring 3 (`usermode` decides); and any
//! exception at ring 0 inside one of the `fuzz` mode's guarded instruction sequences,
//! which resumes at that sequence's landing pad (`fuzz::guard` decides). Vectors 32-255
//! (interrupts from the virtual PIC, `INT n`) are counted and acknowledged while the fuzz
//! mode runs, and fatal otherwise.
//!
//! Each vector has a 16-byte stub that pushes a zero in place of the error code when the
//! CPU pushes none, then the vector number, so the Rust handler sees one frame layout.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::{self, DescriptorTablePointer};
use crate::once::TakeOnce;
use crate::println;

/// Exception vectors; the IDT has [`IDT_VECTORS`] gates, the rest for interrupts.
const VECTORS: usize = 32;
const IDT_VECTORS: usize = 256;
const STUB_BYTES: u64 = 16;
const INVALID_OPCODE: u64 = 6;
const GENERAL_PROTECTION: u64 = 13;
/// Present, ring 0, 64-bit interrupt gate (IF stays clear in the handler).
const INTERRUPT_GATE: u8 = 0x8e;

/// What the stubs leave on the stack for [`exception_handler`], lowest address first:
/// the caller-saved registers, then the vector and error code the stub pushed, then the
/// frame the CPU pushed.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl ExceptionFrame {
    pub fn came_from_ring3(&self) -> bool {
        self.cs & 3 == 3
    }
}

// Stack alignment: the CPU aligns RSP to 16 before pushing its five-word frame; with the
// error code, the vector and nine registers, 16 words are pushed in all, so RSP is still
// 16-byte aligned at the call, as the SysV ABI wants.
global_asm!(
    ".macro lz_exception_stub vector, has_error_code",
    "    .balign 16",
    "    .if \\has_error_code == 0",
    "    push 0",
    "    .endif",
    "    push \\vector",
    "    jmp lz_exception_common",
    ".endm",
    "",
    ".section .text.lz_exceptions, \"ax\"",
    ".balign 16",
    ".global lz_exception_stubs",
    "lz_exception_stubs:",
    "lz_exception_stub 0, 0",
    "lz_exception_stub 1, 0",
    "lz_exception_stub 2, 0",
    "lz_exception_stub 3, 0",
    "lz_exception_stub 4, 0",
    "lz_exception_stub 5, 0",
    "lz_exception_stub 6, 0",
    "lz_exception_stub 7, 0",
    "lz_exception_stub 8, 1",
    "lz_exception_stub 9, 0",
    "lz_exception_stub 10, 1",
    "lz_exception_stub 11, 1",
    "lz_exception_stub 12, 1",
    "lz_exception_stub 13, 1",
    "lz_exception_stub 14, 1",
    "lz_exception_stub 15, 0",
    "lz_exception_stub 16, 0",
    "lz_exception_stub 17, 1",
    "lz_exception_stub 18, 0",
    "lz_exception_stub 19, 0",
    "lz_exception_stub 20, 0",
    "lz_exception_stub 21, 1",
    "lz_exception_stub 22, 0",
    "lz_exception_stub 23, 0",
    "lz_exception_stub 24, 0",
    "lz_exception_stub 25, 0",
    "lz_exception_stub 26, 0",
    "lz_exception_stub 27, 0",
    "lz_exception_stub 28, 0",
    "lz_exception_stub 29, 1",
    "lz_exception_stub 30, 1",
    "lz_exception_stub 31, 0",
    // Vectors 32-255: interrupts and INT n, never an error code. `push imm32` for
    // vectors over 127 still fits the 16 bytes.
    ".set lz_vector, 32",
    ".rept 224",
    "lz_exception_stub lz_vector, 0",
    ".set lz_vector, lz_vector + 1",
    ".endr",
    "",
    ".balign 16",
    "lz_exception_common:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    mov rdi, rsp",
    "    cld",
    "    call {handler}",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    add rsp, 16",
    "    iretq",
    handler = sym exception_handler,
);

extern "C" {
    /// The first of the 256 stubs; stub `v` is at `16 * v` bytes from it.
    static lz_exception_stubs: [u8; 0];
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt(handler: u64, selector: u16) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist: 0,
            attributes: INTERRUPT_GATE,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; IDT_VECTORS]);

static IDT: TakeOnce<Idt> = TakeOnce::new(Idt([Gate::MISSING; IDT_VECTORS]));

/// Installs the IDT, its gates using the current code segment. Does nothing the second
/// time.
pub fn init() {
    let Some(idt) = IDT.take() else {
        return;
    };
    let stubs = core::ptr::addr_of!(lz_exception_stubs) as u64;
    let selector = cpu::read_cs();
    for (vector, gate) in idt.0.iter_mut().enumerate() {
        *gate = Gate::interrupt(stubs + STUB_BYTES * vector as u64, selector);
    }
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt as *const Idt as u64,
    };
    // SAFETY: the table is a static that is never handed out again, and every gate leads
    // to a stub of this module in the current code segment.
    unsafe { cpu::load_idt(&pointer) };
}

/// Set while [`try_rdmsr`] executes its RDMSR.
static PROBE_ARMED: AtomicBool = AtomicBool::new(false);
/// Set by the handler when it skipped the probe's RDMSR after a #GP.
static PROBE_FAULTED: AtomicBool = AtomicBool::new(false);

/// Reads MSR `msr`, or returns `None` if RDMSR raised #GP. Needs [`init`] first.
pub fn try_rdmsr(msr: u32) -> Option<u64> {
    PROBE_FAULTED.store(false, Ordering::SeqCst);
    PROBE_ARMED.store(true, Ordering::SeqCst);
    // SAFETY: the probe is armed, so a #GP on this RDMSR is skipped by the handler.
    let value = unsafe { cpu::rdmsr_raw(msr) };
    PROBE_ARMED.store(false, Ordering::SeqCst);
    (!PROBE_FAULTED.load(Ordering::SeqCst)).then_some(value)
}

/// Whether this #GP is the armed probe's: ring 0, on an RDMSR instruction.
fn is_probe_fault(frame: &ExceptionFrame) -> bool {
    if frame.vector != GENERAL_PROTECTION
        || frame.came_from_ring3()
        || !PROBE_ARMED.load(Ordering::SeqCst)
    {
        return false;
    }
    // SAFETY: while the probe is armed, ring-0 code runs only inside `try_rdmsr`, so RIP
    // points into this guest's own code, which is mapped.
    let bytes = unsafe { core::ptr::read_unaligned(frame.rip as *const [u8; 2]) };
    bytes == cpu::RDMSR_BYTES
}

/// Set when a fatal exception is being reported, so that a fault while reporting it halts
/// at once instead of recursing.
static FATAL: AtomicBool = AtomicBool::new(false);

extern "sysv64" fn exception_handler(frame: &mut ExceptionFrame) {
    if crate::fuzz::guard::take_exception(frame) {
        return;
    }
    if frame.vector >= VECTORS as u64 && crate::fuzz::guard::take_interrupt(frame.vector) {
        return;
    }
    if is_probe_fault(frame) {
        PROBE_FAULTED.store(true, Ordering::SeqCst);
        frame.rip += cpu::RDMSR_BYTES.len() as u64;
        return;
    }
    if frame.vector == INVALID_OPCODE && frame.came_from_ring3() {
        crate::usermode::on_user_invalid_opcode();
    }
    if FATAL.swap(true, Ordering::SeqCst) {
        cpu::halt_forever();
    }
    println!("exception vector={} rip={:#x}", frame.vector, frame.rip);
    cpu::halt_forever();
}
