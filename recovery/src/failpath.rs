//! The failure path in the dying instance (DESIGN 6, steps 1-5) and the cold-boot step
//! that makes it possible (taking the pristine copy and writing the anchor).
//!
//! What it may trust: the anchor (checksummed, at a fixed address), the pristine copy
//! (checksummed, verified before use) and the arena header (magic checked). What it does
//! not: the heap (never used here), the failing stack (the trampoline switches to the
//! recovery stack before it rewrites anything) and the image's own code (the trampoline
//! lives in `.recovery_text`, outside what it overwrites).
//!
//! Lazarus runs one CPU, so step 2 (stop the other CPUs) has nothing to stop yet.

use core::arch::global_asm;
use core::fmt::Write;

use hypervisor::arch::{instructions, serial, vmx};
use hypervisor::arena::boot::{self, BootRepair};
use hypervisor::arena::{ArenaRoot, BootRecord, VmState};
use hypervisor::failure::{self, Failure};
use hypervisor::memory::Range;

use crate::anchor::{
    pristine_checksum, Anchor, ANCHOR_MAGIC, OFFSET_LEN, OFFSET_PAYLOAD, OFFSET_SUM,
};

// The microreboot trampoline. Entered with RDI = the anchor, interrupts masked, VMX off.
//
// 0. Turn CR0.WP off: the image's code and read-only data are read-only pages.
// 1. Take the recovery stack: the failing stack may be what broke.
// 2. Recompute the pristine payload's checksum (a 64-bit sum, `anchor::pristine_checksum`)
//    and compare it with the anchor's; a mismatch means the copy itself is damaged, and
//    copying it would make things worse: print a line on COM1 by polling and halt.
// 3. Copy the payload over `.text .rodata .data` (REP MOVSQ).
// 4. Zero `.bss` (REP STOSQ).
// 5. Jump to `lazarus_recovery_start` (boot/src/entry.rs) in the fresh image.
//
// Nothing here calls into the image, and the code and its message live in
// `.recovery_text`, which the copy does not touch.
global_asm!(
    r#"
    .section .recovery_text, "ax"
    .global lazarus_microreboot
lazarus_microreboot:
    cli
    cld
    /* The image and the anchor are read-only pages (hypervisor/src/arch/protect.rs):
       CR0.WP off for the restore; the recovery boot sets it again. */
    mov rax, cr0
    btr rax, 16
    mov cr0, rax
    /* 1. */
    mov rsp, offset recovery_stack_top
    mov r12, rdi
    /* 2. */
    mov rsi, [r12 + {payload}]
    mov rcx, [r12 + {len}]
    mov rax, offset __pristine_end
    sub rax, offset __pristine_start
    cmp rax, rcx
    jne 5f
    shr rcx, 3
    xor eax, eax
    /* Eight words an iteration (the length is a multiple of 64). */
2:
    test rcx, rcx
    jz 3f
    add rax, [rsi]
    add rax, [rsi + 8]
    add rax, [rsi + 16]
    add rax, [rsi + 24]
    add rax, [rsi + 32]
    add rax, [rsi + 40]
    add rax, [rsi + 48]
    add rax, [rsi + 56]
    add rsi, 64
    sub rcx, 8
    jmp 2b
3:
    cmp rax, [r12 + {sum}]
    jne 5f
    /* 3. */
    mov rsi, [r12 + {payload}]
    mov rdi, offset __pristine_start
    mov rcx, [r12 + {len}]
    shr rcx, 3
    rep movsq
    /* 4. */
    mov rdi, offset __bss_start
    mov rcx, offset __bss_end
    sub rcx, rdi
    shr rcx, 3
    xor eax, eax
    rep stosq
    /* 5. */
    jmp lazarus_recovery_start
5:
    lea rsi, [rip + 7f]
6:
    mov dx, 0x3fd
    in al, dx
    test al, 0x20
    jz 6b
    lodsb
    test al, al
    jz 8f
    mov dx, 0x3f8
    out dx, al
    jmp 6b
8:
    hlt
    jmp 8b
7:
    .asciz "\r\n[lazarus] ERROR halted: the pristine copy is damaged (checksum mismatch); cannot recover\r\n"
    "#,
    payload = const OFFSET_PAYLOAD,
    len = const OFFSET_LEN,
    sum = const OFFSET_SUM,
);

// Step 1 of the failure path: continue on the recovery stack (the failing stack may be
// what broke). RDI = the new stack top (16-aligned), RSI and EDX = the two arguments,
// RCX = the function, which never returns. After the CALL the callee sees RSP = 8 mod 16,
// as the System V ABI wants.
global_asm!(
    r#"
    .section .recovery_text, "ax"
    .global lazarus_call_on_stack
lazarus_call_on_stack:
    mov rsp, rdi
    xor ebp, ebp
    mov rdi, rsi
    mov esi, edx
    call rcx
    ud2
    "#
);

unsafe extern "C" {
    static mut recovery_anchor: Anchor;
    static __pristine_start: u8;
    static __pristine_end: u8;
    static __data_start: u8;
    static __data_stash: u8;
    fn lazarus_microreboot(anchor: *const Anchor) -> !;
    static recovery_stack_top: u8;
    fn lazarus_call_on_stack(
        top: u64,
        failure: *const core::ffi::c_void,
        depth: u32,
        then: extern "C" fn(*const core::ffi::c_void, u32) -> !,
    ) -> !;
}

/// The second copy of the arena's boot record (`hypervisor::arena::boot`): written once at
/// cold boot, beside the anchor in `.stacks` (its own pages, `linker.ld`), read-only from
/// then on, so a single wild write cannot take it and the arena's record out together.
#[repr(C, align(4096))]
struct BootCopy(core::mem::MaybeUninit<BootRecord>);

#[unsafe(link_section = ".stacks.record")]
static mut BOOT_COPY: BootCopy = BootCopy(core::mem::MaybeUninit::zeroed());

/// Where the copy is (`BootCopy` is `repr(C)`: the record is at its start).
fn boot_copy() -> *mut BootRecord {
    (&raw mut BOOT_COPY).cast()
}

/// The copy's pages: `[start, end)`.
pub fn boot_copy_range() -> (u64, u64) {
    let start = (&raw const BOOT_COPY) as u64;
    (start, start + core::mem::size_of::<BootCopy>() as u64)
}

/// Cold boot: the copy of `record` (already saved and sealed), before the copy's pages
/// are made read-only.
pub fn save_boot_copy(record: &BootRecord) {
    // SAFETY: BOOT_COPY is reserved for the copy; nothing else references it; cold boot
    // runs on one CPU.
    unsafe { boot_copy().write(*record) };
}

/// The recovery boot: checks the arena's boot record against its copy and repairs the
/// damaged one from the other (`hypervisor::arena::boot::reconcile`); writing the copy
/// opens a CR0.WP window (its pages are read-only).
pub fn reconcile_boot_record(original: &mut BootRecord) -> BootRepair {
    hypervisor::arch::protect::with_writes_allowed(|| {
        // SAFETY: the copy's reserved area, zeroed at cold boot and written by
        // `save_boot_copy`; any bit pattern is a valid BootRecord (plain integers), and
        // nothing else references it while this runs (one CPU, interrupts masked).
        let copy = unsafe { &mut *boot_copy() };
        boot::reconcile(original, copy)
    })
}

/// Bytes of the recovery stack each nesting depth gets: a failure inside the failure
/// path continues below the frames of the first, so it cannot overwrite what the first
/// is still reading.
const STACK_PER_DEPTH: u64 = 32 * 1024;

fn addr(symbol: *const u8) -> u64 {
    symbol as u64
}

/// `.text .rodata .data` of the image: what the pristine copy holds.
fn payload() -> Range {
    // Linker-defined symbols: only their addresses are taken, never their contents.
    Range::new(
        addr(&raw const __pristine_start),
        addr(&raw const __pristine_end),
    )
}

/// Where the anchor is (its page holds nothing else: `linker.ld`).
pub fn anchor_address() -> u64 {
    (&raw const recovery_anchor) as u64
}

/// The anchor as it is now.
pub fn anchor() -> Anchor {
    // SAFETY: the anchor is a 64-byte, 64-aligned area in `.stacks` reserved for it
    // (boot/src/entry.rs); any bit pattern is a valid `Anchor` (plain integers).
    unsafe { core::ptr::read_volatile(&raw const recovery_anchor) }
}

/// Cold boot: copies the payload into `pristine` (after its header page) and writes the
/// anchor that names it and `arena`. `.text` and `.rodata` come from the image itself
/// (nothing writes them); `.data` comes from the copy the entry code saved before any
/// Rust ran (`__data_stash`), because statics in `.data` have changed since.
pub fn take_pristine(pristine: Range, arena: Range) -> Result<Anchor, &'static str> {
    let payload = payload();
    let len = payload.len();
    // The trampoline sums eight words an iteration; the payload is page-aligned.
    if pristine.len() < 4096 + len || !len.is_multiple_of(64) {
        return Err("the pristine area is too small for the image");
    }
    let dst = pristine.start + 4096;
    let (data_start, stash) = (addr(&raw const __data_start), addr(&raw const __data_stash));
    let code_len = (data_start - payload.start) as usize;
    let data_len = (payload.end - data_start) as usize;
    // SAFETY: `pristine` is the layout's pristine range (usable RAM reserved for it,
    // identity-mapped, disjoint from the image); the sources are the image's code and
    // read-only data and the `.data` stash in `.stacks`, each exactly as long as copied.
    unsafe {
        core::ptr::copy_nonoverlapping(payload.start as *const u8, dst as *mut u8, code_len);
        core::ptr::copy_nonoverlapping(
            stash as *const u8,
            (dst + code_len as u64) as *mut u8,
            data_len,
        );
    }
    // SAFETY: the copy just written: `len` bytes, 8-aligned.
    let words = unsafe { core::slice::from_raw_parts(dst as *const u64, (len / 8) as usize) };
    let sum = pristine_checksum(words.iter().copied());
    let anchor = Anchor::new(dst, len, sum, arena.start, arena.len());
    // SAFETY: the anchor's reserved area; written once here, read by the failure path.
    unsafe {
        core::ptr::write_volatile(&raw mut recovery_anchor, anchor);
        // The header page says what follows, for anyone reading memory.
        let header = pristine.start as *mut u64;
        core::ptr::write_volatile(header, u64::from_le_bytes(*b"LZPRISTN"));
        core::ptr::write_volatile(header.add(1), len);
        core::ptr::write_volatile(header.add(2), sum);
    }
    Ok(anchor)
}

/// What the image scrub compares: `.text .rodata` of the running image against the
/// pristine copy, and the whole payload with its checksum (from an intact anchor).
pub fn scrub_regions() -> Option<(hypervisor::scrub::Regions, (u64, u64), u64)> {
    let anchor = anchor();
    let payload = payload();
    if !anchor.is_intact(payload.len()) {
        return None;
    }
    let immutable = addr(&raw const __data_start) - payload.start;
    Some((
        hypervisor::scrub::Regions {
            live: payload.start,
            len: immutable,
            pristine: anchor.payload,
        },
        (anchor.payload, anchor.len),
        anchor.sum,
    ))
}

/// The arena named by an intact anchor, if any, and whether its header had to be
/// restored. An intact anchor means cold boot had initialised the arena before writing
/// it, and it holds the arena's base and size outside the arena; the header's fixed
/// fields are rewritten from it, so a stray write into the header (campaign finding 3)
/// does not end in a halt. The rest of the root is still validated by the recovery boot.
pub fn arena() -> Option<(&'static mut ArenaRoot, bool)> {
    let anchor = anchor();
    if !anchor.is_intact(payload().len()) {
        return None;
    }
    // SAFETY: cold boot wrote the anchor with the arena's base (identity-mapped RAM that
    // the layout reserved for the arena alone) after initialising the arena; the root is
    // plain integers, so any content is a valid value.
    let root = unsafe { &mut *(anchor.arena_base as *mut ArenaRoot) };
    let restored = root
        .header
        .restore_fixed(anchor.arena_base, anchor.arena_size);
    Some((root, restored))
}

/// The failure hook `boot` installs (DESIGN 6, the failure path). Never returns: it
/// switches to the recovery stack and ends in the trampoline, or, when recovery is
/// impossible or has failed too often, in a halt with a diagnostic dump.
pub fn on_failure(failure: &Failure, depth: u32) -> ! {
    let top =
        addr(&raw const recovery_stack_top) - u64::from(depth.clamp(1, 2) - 1) * STACK_PER_DEPTH;
    let failure = (failure as *const Failure).cast::<core::ffi::c_void>();
    // SAFETY: `top` is inside the recovery stack (64 KiB in `.stacks`, used by nothing
    // else), 16-aligned; `failure` stays valid: it lives on the failing stack, which is
    // left as it is. `continue_failure` never returns.
    unsafe { lazarus_call_on_stack(top, failure, depth, continue_failure) }
}

extern "C" fn continue_failure(failure: *const core::ffi::c_void, depth: u32) -> ! {
    // SAFETY: the `&Failure` that `on_failure` was given, whose frame is never popped.
    let failure = unsafe { &*failure.cast::<Failure>() };
    if depth > 2 {
        bare_microreboot();
    }
    let Some((root, header_restored)) = arena() else {
        no_arena(failure)
    };
    if depth == 1 {
        let (cause, vector) = failure.cause();
        root.note_failure(cause, vector, failure::detected_at());
        if let Some(line) = hypervisor::inject::machine::take_line() {
            root.recovery.set_inject_line(&line);
        }
        let boots = root.recovery.current.attempts;
        if boots > 1 {
            let _ = writeln!(root.recovery, "recovery attempt {} failed:", boots - 1);
        }
        if boots == 1 {
            if let Ok(Some((frame, control))) =
                failure::write_report_line(failure, &mut root.recovery)
            {
                root.recovery.dump_frame = frame;
                root.recovery.dump_control = control;
                root.recovery.dump_valid = 1;
            }
        } else {
            let _ = failure::write_report(failure, &mut root.recovery);
        }
        if root.recovery.report_len == 0 {
            // Formatting produced nothing: the formatting code itself may be what the
            // fault broke. Say so with a fixed line (no formatting involved).
            root.recovery.append_report(unformatted_report(cause));
        }
        if let Some(d) =
            hypervisor::triggers::fired_before(failure::detected_at(), root.boot.tsc_hz)
        {
            // Tests and scripts/bench-watchdog only (a trigger needs triggers=on).
            let _ = writeln!(root.recovery, "{d}");
        }
        if header_restored {
            root.recovery.append_report(HEADER_RESTORED);
        }
        if root.recovery.exhausted() {
            last_resort(root);
        }
        // The VM being created counts as live: its VMCS may be active already.
        let creating = root.create.slot_in_progress();
        let pages = root
            .vms
            .iter()
            .enumerate()
            .filter(|&(slot, vm)| vm.state != VmState::Free as u32 || Some(slot) == creating)
            .map(|(_, vm)| vm.vcpu.vmcs)
            .filter(|&page| root.owns_page(page))
            .collect::<heapless::Vec<u64, { hypervisor::arena::MAX_VMS }>>();
        vmx::teardown(pages.into_iter());
    }
    // Depth 2: the failure path itself failed. The report and VMX teardown are skipped
    // (they may be what failed); the recovery boot copes with VMX still on. A fixed line
    // (no formatting) says so.
    if depth > 1 {
        root.recovery.append_report(
            "hypervisor failure: a second failure inside the failure path (its report is lost)\n",
        );
    }
    root.recovery.current.t_failpath = instructions::rdtsc();
    // SAFETY: the anchor is intact (checked by `arena()`) and lives outside everything the
    // trampoline rewrites; the trampoline verifies the pristine copy before it overwrites
    // the image, and never returns.
    unsafe { lazarus_microreboot(&raw const recovery_anchor) }
}

/// The failure path failed twice. The likeliest reason is that it runs through code a
/// fault changed (a flipped bit in `memcpy` that every report and record write uses),
/// and the trampoline is what restores that code: go there with nothing else done (no
/// arena, no formatting, no memory routines), if the anchor still says where to. The
/// recovery attempt was counted at depth 1, so the retry policy still holds.
fn bare_microreboot() -> ! {
    serial::write_str(
        "\n[lazarus] ERROR the failure path failed twice: microreboot without a report\n",
    );
    let anchor = anchor();
    if anchor.magic != ANCHOR_MAGIC || anchor.len != payload().len() {
        serial::write_str("[lazarus] ERROR halted: the failure path keeps failing\n");
        instructions::halt_forever();
    }
    // SAFETY: as in `continue_failure`; the trampoline checks the pristine copy's
    // checksum (from the anchor) before it overwrites anything, and halts on a mismatch.
    unsafe { lazarus_microreboot(&raw const recovery_anchor) }
}

/// The halt when the arena cannot be found: the report, the injection that may have
/// caused it (campaigns need it most here), and what is wrong with the anchor.
fn no_arena(failure: &Failure) -> ! {
    if let Some(line) = hypervisor::inject::machine::take_line() {
        log::warn!("{line}");
    }
    failure::print_report(failure);
    let why = anchor()
        .damage(payload().len())
        .unwrap_or("intact when checked again");
    log::error!("halted: no recovery possible: no arena: recovery anchor {why}");
    instructions::halt_forever()
}

/// The report line saying the arena header was damaged (fixed text: it is written before
/// any formatting).
const HEADER_RESTORED: &str =
    "recovery: the arena header was damaged; its fixed fields were restored from the anchor\n";

/// The report line for a failure whose report could not be formatted: fixed text only.
fn unformatted_report(cause: hypervisor::arena::Cause) -> &'static str {
    use hypervisor::arena::Cause;
    match cause {
        Cause::Panic => "hypervisor failure: panic (the report could not be formatted)\n",
        Cause::Exception => "hypervisor failure: exception (the report could not be formatted)\n",
        Cause::Vmx => "hypervisor failure: vmx (the report could not be formatted)\n",
        Cause::Hang => "hypervisor failure: hang (the report could not be formatted)\n",
        Cause::Arena => "hypervisor failure: arena check (the report could not be formatted)\n",
        Cause::Image => "hypervisor failure: image scrub (the report could not be formatted)\n",
    }
}

/// Recovery failed too often (`RecoveryState::exhausted`: the attempt that stopped the
/// suspect failed too): print everything known and stop (DESIGN 6: "as a last resort the
/// hypervisor halts with a diagnostic dump").
fn last_resort(root: &mut ArenaRoot) -> ! {
    root.recovery.print_report();
    log::error!(
        "halted: recovery failed {} times in a row; the VMs were not resumed",
        root.recovery.current.attempts.saturating_sub(1)
    );
    for vm in root
        .vms
        .iter()
        .filter(|vm| vm.state != VmState::Free as u32)
    {
        log::error!(
            "  vm {}: state={} phase={} exit={} rip_at_exit={:#x}",
            vm.name(),
            vm.state,
            vm.vcpu.journal.phase,
            vm.vcpu.journal.exit_seq,
            vm.vcpu.journal.rip_at_exit
        );
    }
    instructions::halt_forever()
}
