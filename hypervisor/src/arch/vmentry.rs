//! Entering the guest and coming back: the only code that runs with guest register
//! values in the CPU. Read it top to bottom.
//!
//! `vmx_enter(regs, launched)` (System V ABI: RDI = pointer to the vCPU's
//! [`GuestRegisters`] in the arena, ESI = 1 if the VMCS was launched since its last
//! VMCLEAR, else 0):
//!
//! 1. Save the callee-saved host registers (RBX, RBP, R12-R15) and then RDI (the regs
//!    pointer) on the host stack: after the exit, that stack slot is how we find the
//!    regs again, because every general register will hold a guest value.
//! 2. VMWRITE HOST_RSP := RSP. The CPU loads RSP from this field at every VM exit, so
//!    the exit lands exactly on the stack frame built in step 1. (HOST_RIP, the address
//!    of step 6, is written once when the VMCS is set up.)
//! 3. Load the guest's CR2 (not part of the VMCS) and its general registers from `regs`,
//!    RDI last because it holds the pointer.
//! 4. VMRESUME if launched, else VMLAUNCH. On success the CPU is now in the guest and
//!    the next instruction here never executes.
//! 5. If the instruction fell through, VM entry failed before loading guest state
//!    (VMfailInvalid: CF=1, VMfailValid: ZF=1). Restore the host registers and return
//!    1 or 2; the caller reads the VM-instruction error.
//! 6. `vmx_exit_landing` (HOST_RIP): a VM exit put us here with host RSP from step 2,
//!    interrupts masked, segment state and CR3 from the host-state fields. Push the
//!    guest's RDI, fetch the regs pointer from the frame, store every guest register
//!    and CR2 into `regs`, then restore the host registers and return 0.
//!
//! Nothing between steps 3 and 6 touches memory other than `regs` and the host stack,
//! and the host stack pointer is whatever we wrote, so a guest cannot influence where
//! the hypervisor resumes.

use core::arch::global_asm;

use crate::vmx::fields::{GuestRegisters, VmcsField};

global_asm!(
    r#"
    .section .text.vmx, "ax"
    .global vmx_enter
vmx_enter:
    /* 1. */
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
    push rdi
    /* 2. */
    mov rax, {host_rsp}
    vmwrite rax, rsp
    jc .Lfail_invalid
    jz .Lfail_valid
    /* 3. */
    mov rax, [rdi + {cr2}]
    mov cr2, rax
    test esi, esi
    mov rax, [rdi + {rax}]
    mov rbx, [rdi + {rbx}]
    mov rcx, [rdi + {rcx}]
    mov rdx, [rdi + {rdx}]
    mov rsi, [rdi + {rsi}]
    mov rbp, [rdi + {rbp}]
    mov r8,  [rdi + {r8}]
    mov r9,  [rdi + {r9}]
    mov r10, [rdi + {r10}]
    mov r11, [rdi + {r11}]
    mov r12, [rdi + {r12}]
    mov r13, [rdi + {r13}]
    mov r14, [rdi + {r14}]
    mov r15, [rdi + {r15}]
    mov rdi, [rdi + {rdi}]
    /* 4. The flags still hold the TEST of the launched argument (MOV leaves them alone). */
    jz .Llaunch
    vmresume
    jmp .Lentry_failed
.Llaunch:
    vmlaunch
    /* 5. */
.Lentry_failed:
    jc .Lfail_invalid
.Lfail_valid:
    mov eax, 2
    jmp .Lreturn
.Lfail_invalid:
    mov eax, 1
.Lreturn:
    pop rdi
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    ret

    /* 6. */
    .global vmx_exit_landing
vmx_exit_landing:
    push rdi
    mov rdi, [rsp + 8]
    mov [rdi + {rax}], rax
    mov [rdi + {rbx}], rbx
    mov [rdi + {rcx}], rcx
    mov [rdi + {rdx}], rdx
    mov [rdi + {rsi}], rsi
    mov [rdi + {rbp}], rbp
    mov [rdi + {r8}],  r8
    mov [rdi + {r9}],  r9
    mov [rdi + {r10}], r10
    mov [rdi + {r11}], r11
    mov [rdi + {r12}], r12
    mov [rdi + {r13}], r13
    mov [rdi + {r14}], r14
    mov [rdi + {r15}], r15
    pop rax
    mov [rdi + {rdi}], rax
    mov rax, cr2
    mov [rdi + {cr2}], rax
    xor eax, eax
    jmp .Lreturn
    "#,
    host_rsp = const VmcsField::HostRsp as u32,
    rax = const GuestRegisters::RAX_OFFSET,
    rbx = const GuestRegisters::RBX_OFFSET,
    rcx = const GuestRegisters::RCX_OFFSET,
    rdx = const GuestRegisters::RDX_OFFSET,
    rsi = const GuestRegisters::RSI_OFFSET,
    rdi = const GuestRegisters::RDI_OFFSET,
    rbp = const GuestRegisters::RBP_OFFSET,
    r8 = const GuestRegisters::R8_OFFSET,
    r9 = const GuestRegisters::R9_OFFSET,
    r10 = const GuestRegisters::R10_OFFSET,
    r11 = const GuestRegisters::R11_OFFSET,
    r12 = const GuestRegisters::R12_OFFSET,
    r13 = const GuestRegisters::R13_OFFSET,
    r14 = const GuestRegisters::R14_OFFSET,
    r15 = const GuestRegisters::R15_OFFSET,
    cr2 = const GuestRegisters::CR2_OFFSET,
);

unsafe extern "C" {
    fn vmx_enter(regs: *mut GuestRegisters, launched: u32) -> u32;
    static vmx_exit_landing: u8;
}

/// How an attempt to run the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryResult {
    /// The guest ran and a VM exit brought us back: read the exit reason.
    Exited,
    /// VMLAUNCH/VMRESUME failed with no current VMCS.
    FailInvalid,
    /// VMLAUNCH/VMRESUME failed; the VM-instruction error field says why.
    FailValid,
}

/// The HOST_RIP value: where VM exits land.
pub fn exit_landing() -> u64 {
    core::ptr::addr_of!(vmx_exit_landing) as u64
}

/// Runs the guest of the current VMCS until the next VM exit.
///
/// # Safety
/// The current VMCS must be fully set up for `regs`' vCPU (host state with HOST_RIP =
/// [`exit_landing`], guest state, controls), and `regs` must stay valid and unaliased
/// until this returns.
pub unsafe fn enter(regs: &mut GuestRegisters, launched: bool) -> EntryResult {
    // SAFETY: the caller's contract; the assembly restores every callee-saved register.
    match unsafe { vmx_enter(regs, u32::from(launched)) } {
        0 => EntryResult::Exited,
        1 => EntryResult::FailInvalid,
        _ => EntryResult::FailValid,
    }
}
