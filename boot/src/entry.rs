//! The first instructions Lazarus runs: from GRUB's 32-bit protected mode to Rust in
//! 64-bit long mode. Read top to bottom; every step says why it is there.
//!
//! Machine state on entry (Multiboot2 spec §3.3, "I386 machine state"): 32-bit protected
//! mode, paging off, interrupts masked, EAX = 0x36d76289, EBX = physical address of the
//! boot information (MBI), no usable stack.
//!
//! 1. Check EAX: a different loader means no MBI, and nothing below would make sense.
//! 2. Zero `.bss` and `.stacks` (everything after the pristine payload): GRUB zeroes
//!    `.bss` of ELF images, but a recovery boot will not come through GRUB, so Lazarus
//!    never relies on it. ESI keeps the MBI address (REP STOSB leaves it alone).
//!    Then save `.data` as GRUB loaded it into `__data_stash` (in `.stacks`): the pristine
//!    copy must hold `.data` before any Rust code has changed a static.
//! 3. Take the boot stack (CPU 0's stack, in `.stacks`).
//! 4. Check CPUID.80000001h:EDX.LM[bit 29]; a CPU without long mode gets a message.
//! 5. Build the boot page tables: PML4[0] -> PDPT, PDPT[0..4] -> four page directories
//!    of 2 MiB pages, identity-mapping the first 4 GiB (SDM Vol. 3A §4.5). The image,
//!    the MBI, GRUB's modules, ACPI tables and the arena all lie below 4 GiB. The first
//!    2 MiB go through a table of 4 KiB pages instead, with page 0 execute-disabled
//!    (XD, bit 63, when CPUID.80000001h:EDX[20] says the CPU has it; EBP remembers).
//! 6. Enable PAE (CR4 bit 5), point CR3 at the PML4, set IA32_EFER.LME (MSR 0xC0000080
//!    bit 8) and, with XD, EFER.NXE (bit 11), then enable paging with write protection (CR0 bits 31 and 16): the CPU is
//!    now in IA-32e compatibility mode (SDM Vol. 3A §10.8.5, "Initializing IA-32e mode").
//! 7. Load a GDT with a 64-bit code segment and far-jump into it: long mode proper.
//! 8. Load the data segment registers, pass the MBI address in EDI (first argument of
//!    the System V ABI) and call `lazarus_cold_entry`, which never returns.
//!
//! Errors before long mode are printed by polling COM1 directly (GRUB's serial terminal
//! has usually programmed it already), then the CPU halts.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6                                    /* magic (Multiboot2 spec §3.1.1) */
    .long 0                                             /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header                   /* header length */
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header))  /* checksum */
    .balign 8
    .short 6, 0                                         /* module alignment tag: page-align modules */
    .long 8
    .balign 8
    .short 0, 0                                         /* end tag */
    .long 8
mb2_header_end:

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0                                             /* null descriptor */
    /* Accessed bits preset (0x9b, 0x93): the CPU would otherwise set them on the first
       load, a write into .rodata, which is read-only (hypervisor/src/arch/protect.rs). */
    .quad 0x00af9b000000ffff                            /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf93000000ffff                            /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    /* The same for LGDT in 64-bit mode, which reads an 8-byte base. */
    .balign 8
boot_gdt_pointer64:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
msg_not_multiboot2:
    .asciz "lazarus: not started by a Multiboot2 boot loader (use GRUB's multiboot2 command); halted\r\n"
msg_no_long_mode:
    .asciz "lazarus: this CPU has no 64-bit long mode; halted\r\n"

    .section .stacks.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
boot_pt:
    .skip 4096
    /* Guard page: unmapped at boot (hypervisor/src/arch/stacks.rs), so an overflow of the
       boot stack faults instead of running into the page tables above. */
boot_stack_guard:
    .skip 4096
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 256 * 1024
    .global boot_stack_top
boot_stack_top:

    /* The recovery stack: the failure path switches to it (the failing stack may be
       corrupt) before it rewrites the image. */
    .section .stacks.recovery, "aw", @nobits
    .balign 4096
    /* Guard page, as for the boot stack. */
recovery_stack_guard:
    .skip 4096
    .global recovery_stack_bottom
recovery_stack_bottom:
    .skip 64 * 1024
    .global recovery_stack_top
recovery_stack_top:

    /* The recovery anchor (recovery/src/anchor.rs): where the pristine copy and the arena
       are. Written once at cold boot; a microreboot neither copies nor zeroes it.
       `linker.ld` places it below the page tables and stacks. */
    .section .stacks.anchor, "aw", @nobits
    .balign 64
    .global recovery_anchor
recovery_anchor:
    .skip 64

    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    /* 1. */
    cmp eax, 0x36d76289
    jne .Lnot_multiboot2
    mov esi, ebx
    /* 2. */
    mov edi, offset __bss_start
    mov ecx, offset __image_end
    sub ecx, edi
    xor eax, eax
    rep stosb
    mov edx, esi
    mov esi, offset __data_start
    mov edi, offset __data_stash
    mov ecx, offset __pristine_end
    sub ecx, esi
    rep movsb
    mov esi, edx
    /* 3. */
    mov esp, offset boot_stack_top
    /* 4. */
    mov eax, 0x80000000
    cpuid
    cmp eax, 0x80000001
    jb .Lno_long_mode
    mov eax, 0x80000001
    cpuid
    test edx, 0x20000000
    jz .Lno_long_mode
    mov ebp, edx
    and ebp, 0x100000                                   /* EDX bit 20: execute-disable (NX) */
    /* 5. */
    mov eax, offset boot_pdpt
    or eax, 3                                           /* present, writable */
    mov dword ptr [boot_pml4], eax
    xor ecx, ecx
.Lfill_pdpt:
    mov eax, ecx
    shl eax, 12
    add eax, offset boot_pd
    or eax, 3
    mov dword ptr [boot_pdpt + 8 * ecx], eax
    inc ecx
    cmp ecx, 4
    jb .Lfill_pdpt
    xor ecx, ecx
.Lfill_pd:
    mov eax, ecx
    shl eax, 21
    or eax, 0x83                                        /* present, writable, 2 MiB page */
    mov dword ptr [boot_pd + 8 * ecx], eax
    inc ecx
    cmp ecx, 2048
    jb .Lfill_pd
    /* The first 2 MiB through a page table of 4 KiB pages, so that page 0 can be made
       non-executable: a jump to address 0 (the fault injector's fail-stop fault, or a
       null function pointer) faults at once instead of running the BIOS data there. */
    mov eax, offset boot_pt
    or eax, 3
    mov dword ptr [boot_pd], eax
    xor ecx, ecx
.Lfill_pt:
    mov eax, ecx
    shl eax, 12
    or eax, 3                                           /* present, writable */
    mov dword ptr [boot_pt + 8 * ecx], eax
    inc ecx
    cmp ecx, 512
    jb .Lfill_pt
    test ebp, ebp
    jz .Lno_nx
    mov dword ptr [boot_pt + 4], 0x80000000             /* page 0: XD (bit 63) */
.Lno_nx:
    /* 6. */
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    test ebp, ebp
    jz .Lefer
    or eax, 0x800                                       /* EFER.NXE (bit 11), if NX exists */
.Lefer:
    wrmsr
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax
    /* 7. */
    lgdt [boot_gdt_pointer]
    /* JMP ptr16:32 (opcode EA, SDM Vol. 2A "JMP"), spelled out as bytes so the assembler
       cannot pick another encoding: offset .Llong_mode, selector 0x08. */
    .byte 0xea
    .long .Llong_mode
    .short 0x08

.Lnot_multiboot2:
    mov esi, offset msg_not_multiboot2
    jmp .Lprint_and_halt
.Lno_long_mode:
    mov esi, offset msg_no_long_mode
.Lprint_and_halt:
    mov dx, 0x3fd
.Lwait_transmitter:
    in al, dx
    test al, 0x20
    jz .Lwait_transmitter
    lodsb
    test al, al
    jz .Lhalt32
    mov dx, 0x3f8
    out dx, al
    jmp .Lprint_and_halt
.Lhalt32:
    hlt
    jmp .Lhalt32

    .code64
.Llong_mode:
    /* 8. */
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    xor ebp, ebp
    mov edi, esi
    call lazarus_cold_entry
.Lhalt64:
    cli
    hlt
    jmp .Lhalt64

    /* Recovery entry: the microreboot trampoline (recovery/src/failpath.rs) jumps here
       after it has restored the image and zeroed .bss. Still long mode on the boot page
       tables (in .stacks, untouched). Reload the boot GDT and segments (the dead
       instance's GDT was in .bss), take the boot stack afresh and enter Rust. */
    .global lazarus_recovery_start
lazarus_recovery_start:
    cli
    cld
    lgdt [boot_gdt_pointer64]
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, offset boot_stack_top
    push 0x08
    lea rax, [rip + .Lrecovery_cs]
    push rax
    retfq
.Lrecovery_cs:
    xor ebp, ebp
    call lazarus_recovery_entry
    jmp .Lhalt64
"#
);
