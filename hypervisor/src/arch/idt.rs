//! The interrupt descriptor table and the exception entry path.
//!
//! Every one of the 256 vectors has a stub, so nothing the CPU can raise while the
//! hypervisor runs goes unreported: an exception in host code is a hypervisor failure
//! (DESIGN 5) and ends in [`crate::failure::fail`] with the full register state.
//!
//! Entry, step by step (the assembly below):
//! 1. The CPU pushes SS, RSP, RFLAGS, CS, RIP (and an error code for vectors 8, 10-14,
//!    17, 21, 29, 30), switching to an IST stack first for #DF, NMI and #MC.
//! 2. The vector's stub, 16-byte aligned at `isr_stubs + 16 * vector`, pushes a zero
//!    error code where the CPU did not, then `call`s the common path. The return address
//!    the `call` leaves on the stack identifies the stub and therefore the vector.
//! 3. The common path saves the 15 general registers, so the stack holds an
//!    [`ExceptionFrame`], and calls [`exception_entry`] with a pointer to it
//!    (RSP is 16-byte aligned at that call: 5 + 1 + 1 + 15 quadwords were pushed).
//! 4. If the handler returns (an NMI that was only noted), the registers are restored,
//!    the stub address and error code dropped, and IRETQ resumes the interrupted code.

use core::arch::global_asm;
use core::fmt;

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CODE_SELECTOR};

global_asm!(
    r#"
    .section .text.isr, "ax"
    .balign 16
    .global isr_stubs
isr_stubs:
    .set vector, 0
    .rept 256
        .balign 16
        .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
        .else
            push 0
        .endif
        call isr_common
        .set vector, vector + 1
    .endr

isr_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    cld
    mov rdi, rsp
    call {entry}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    iretq
    "#,
    entry = sym exception_entry,
);

unsafe extern "C" {
    static isr_stubs: u8;
}

/// The stack contents at [`exception_entry`], lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Return address of the stub's `call`: inside stub number `vector`.
    pub stub_return: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl ExceptionFrame {
    /// The vector, recovered from which 16-byte stub made the call.
    pub fn vector(&self, stubs_base: u64) -> u8 {
        ((self.stub_return.wrapping_sub(stubs_base)) / 16) as u8
    }
}

/// Mnemonic and name of the architectural exceptions (SDM Vol. 3A §6.15, Table 6-1).
pub fn exception_name(vector: u8) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection"),
        22..=31 => ("#??", "reserved exception"),
        _ => ("INT", "unexpected interrupt"),
    }
}

/// The register dump printed after a `hypervisor failure` line: four registers a line.
pub struct RegisterDump<'a> {
    pub frame: &'a ExceptionFrame,
    pub control: [u64; 4],
}

impl fmt::Display for RegisterDump<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.frame;
        let [cr0, cr2, cr3, cr4] = self.control;
        let rows: [[(&str, u64); 4]; 6] = [
            [
                ("rax", r.rax),
                ("rbx", r.rbx),
                ("rcx", r.rcx),
                ("rdx", r.rdx),
            ],
            [
                ("rsi", r.rsi),
                ("rdi", r.rdi),
                ("rbp", r.rbp),
                ("rsp", r.rsp),
            ],
            [("r8", r.r8), ("r9", r.r9), ("r10", r.r10), ("r11", r.r11)],
            [
                ("r12", r.r12),
                ("r13", r.r13),
                ("r14", r.r14),
                ("r15", r.r15),
            ],
            [
                ("rip", r.rip),
                ("rflags", r.rflags),
                ("cs", r.cs),
                ("ss", r.ss),
            ],
            [("cr0", cr0), ("cr2", cr2), ("cr3", cr3), ("cr4", cr4)],
        ];
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            for (j, (name, value)) in row.iter().enumerate() {
                if j > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{name}={value:#018x}")?;
            }
        }
        Ok(())
    }
}

/// One IDT gate descriptor (SDM Vol. 3A §6.14.1, Figure 6-8).
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present, DPL 0, 64-bit interrupt gate (type 0xE: IF is cleared on entry).
    fn interrupt(handler: u64, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector: KERNEL_CODE_SELECTOR,
            ist,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: spin::Once<Idt> = spin::Once::new();

fn stubs_base() -> u64 {
    // Taking the address of an extern static needs no `unsafe`; nothing reads through it.
    core::ptr::addr_of!(isr_stubs) as u64
}

/// Builds the IDT (once) and loads it on this CPU.
pub fn load() {
    let idt = IDT.call_once(|| {
        let base = stubs_base();
        let mut gates = [Gate::MISSING; 256];
        for (vector, gate) in gates.iter_mut().enumerate() {
            let ist = match vector {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => 0,
            };
            *gate = Gate::interrupt(base + 16 * vector as u64, ist);
        }
        Idt(gates)
    });
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT is a static that lives forever, every gate points at a stub above,
    // and the stubs use the code selector that `gdt::load` installed.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

/// Called by the common stub with interrupts masked, on the interrupted stack or an IST stack.
extern "C" fn exception_entry(frame: &mut ExceptionFrame) {
    let vector = frame.vector(stubs_base());
    crate::failure::on_exception(vector, frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout_matches_the_pushes() {
        // 15 registers + stub return + error code + 5 CPU-pushed quadwords.
        assert_eq!(core::mem::size_of::<ExceptionFrame>(), 22 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rax), 14 * 8);
        assert_eq!(core::mem::offset_of!(ExceptionFrame, rip), 17 * 8);
    }

    #[test]
    fn vector_from_stub_return_address() {
        let f = ExceptionFrame {
            stub_return: 0x1000 + 16 * 14 + 5,
            ..Default::default()
        };
        assert_eq!(f.vector(0x1000), 14);
        let f = ExceptionFrame {
            stub_return: 0x1000 + 16 * 255 + 7,
            ..Default::default()
        };
        assert_eq!(f.vector(0x1000), 255);
    }

    #[test]
    fn gate_encoding() {
        let g = Gate::interrupt(0x1234_5678_9abc_def0, 3);
        assert_eq!({ g.offset_low }, 0xdef0);
        assert_eq!({ g.offset_mid }, 0x9abc);
        assert_eq!({ g.offset_high }, 0x1234_5678);
        assert_eq!(g.ist, 3);
        assert_eq!(g.type_attr, 0x8e);
        assert_eq!(core::mem::size_of::<Gate>(), 16);
    }

    #[test]
    fn dump_format() {
        let f = ExceptionFrame {
            rax: 1,
            rip: 0x200000,
            ..Default::default()
        };
        let s = std::format!(
            "{}",
            RegisterDump {
                frame: &f,
                control: [0x80000011, 0, 0x1000, 0x20]
            }
        );
        let lines: std::vec::Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(lines[0].starts_with("rax=0x0000000000000001 rbx="));
        assert!(lines[4].starts_with("rip=0x0000000000200000 "));
        assert_eq!(exception_name(14), ("#PF", "page fault"));
    }
}
