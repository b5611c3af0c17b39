//! The guest's own GDT and TSS.
//!
//! Lazarus starts the guest with CS = 0x08 and SS = 0x10 but promises nothing about the
//! descriptor table behind them, and an exception reloads CS from the GDT: a guest that
//! wants its exceptions delivered had better bring its own. The table also carries what
//! the `user-hypercall` mode needs to reach ring 3 and come back: user segments, and a TSS
//! whose RSP0 gives ring 0 a stack of its own when an exception arrives from ring 3.
//!
//! The layout keeps Lazarus's selectors (kernel code 0x08, kernel data 0x10), so nothing
//! changes for code that never leaves ring 0. A second descriptor of the same TSS
//! ([`SPARE_TSS`]) gives the `fuzz` mode an LTR that can succeed; [`reset_task_register`]
//! puts TR back afterwards.

use core::sync::atomic::{AtomicPtr, Ordering};

use crate::cpu::{self, DescriptorTablePointer};
use crate::once::TakeOnce;

pub const KERNEL_CODE: u16 = 0x08;
pub const KERNEL_DATA: u16 = 0x10;
pub const USER_DATA: u16 = 0x18 | 3;
pub const USER_CODE: u16 = 0x20 | 3;
pub const TSS: u16 = 0x28;
/// Another descriptor of the same TSS, available (never loaded except by the fuzzer).
pub const SPARE_TSS: u16 = 0x38;

/// Null, kernel code (64-bit), kernel data, user data, user code (64-bit): flat segments.
const SEGMENTS: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
];
/// The segments plus the two 16-byte TSS descriptors.
const ENTRIES: usize = SEGMENTS.len() + 4;
/// The busy bit of a TSS descriptor's type (available 0x9, busy 0xB; SDM Vol. 3A §8.2.2).
const TSS_BUSY: u64 = 1 << 41;
/// Present, ring 0, available 64-bit TSS.
const TSS_TYPE: u64 = 0x89;
/// Bytes in a 64-bit TSS; an I/O map base at the end means no I/O permission bitmap.
const TSS_BYTES: usize = 104;
const RING0_STACK_BYTES: usize = 16 * 1024;

#[repr(C, align(16))]
struct Gdt([u64; ENTRIES]);

/// The 64-bit TSS as 32-bit words, since its 64-bit fields are not 8-byte aligned.
#[repr(C, align(16))]
struct Tss([u32; TSS_BYTES / 4]);

#[repr(C, align(16))]
struct Stack([u8; RING0_STACK_BYTES]);

static GDT: TakeOnce<Gdt> = TakeOnce::new(Gdt([0; ENTRIES]));
/// The GDT, once loaded, for [`reset_task_register`].
static LOADED: AtomicPtr<Gdt> = AtomicPtr::new(core::ptr::null_mut());
static TASK_STATE: TakeOnce<Tss> = TakeOnce::new(Tss([0; TSS_BYTES / 4]));
static RING0_STACK: TakeOnce<Stack> = TakeOnce::new(Stack([0; RING0_STACK_BYTES]));

/// Loads the GDT, the segment registers and the task register. Does nothing the second
/// time.
pub fn init() {
    let (Some(gdt), Some(tss), Some(stack)) = (GDT.take(), TASK_STATE.take(), RING0_STACK.take())
    else {
        return;
    };
    let rsp0 = stack.0.as_ptr_range().end as u64;
    tss.0[1] = rsp0 as u32;
    tss.0[2] = (rsp0 >> 32) as u32;
    tss.0[TSS_BYTES / 4 - 1] = (TSS_BYTES as u32) << 16;

    let base = tss as *const Tss as u64;
    let limit = (TSS_BYTES - 1) as u64;
    let low = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | TSS_TYPE << 40
        | (limit >> 16 & 0xf) << 48
        | (base >> 24 & 0xff) << 56;
    gdt.0[..SEGMENTS.len()].copy_from_slice(&SEGMENTS);
    gdt.0[SEGMENTS.len()] = low;
    gdt.0[SEGMENTS.len() + 1] = base >> 32;
    gdt.0[SEGMENTS.len() + 2] = low;
    gdt.0[SEGMENTS.len() + 3] = base >> 32;

    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: gdt as *const Gdt as u64,
    };
    // SAFETY: the GDT and TSS are statics never handed out again; KERNEL_CODE and
    // KERNEL_DATA are a 64-bit ring-0 code segment and a writable ring-0 data segment of
    // it, and TSS an available 64-bit TSS descriptor, loaded once.
    unsafe {
        cpu::load_gdt(&pointer, KERNEL_CODE, KERNEL_DATA);
        cpu::load_tr(TSS);
    }
    LOADED.store(gdt, Ordering::SeqCst);
}

/// Marks both TSS descriptors available again and loads [`TSS`] into TR: after the
/// fuzzer's LTR of [`SPARE_TSS`] (or of [`TSS`], which only faults).
pub fn reset_task_register() {
    let gdt = LOADED.load(Ordering::SeqCst);
    if gdt.is_null() {
        return;
    }
    for selector in [TSS, SPARE_TSS] {
        let index = usize::from(selector >> 3);
        // SAFETY: `gdt` is the loaded GDT, a static whose `&mut` from `init` is no longer
        // used; the CPU reads these descriptors only at LTR and task switches, never
        // behind this single-CPU guest's back, and only the busy bit changes.
        unsafe {
            let entry = core::ptr::addr_of_mut!((*gdt).0[index]);
            entry.write_volatile(entry.read_volatile() & !TSS_BUSY);
        }
    }
    // SAFETY: TSS names an available 64-bit TSS descriptor again (just above).
    unsafe { cpu::load_tr(TSS) };
}
