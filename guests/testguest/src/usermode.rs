//! The `user-hypercall` mode: a hypercall made from ring 3.
//!
//! The ABI lets ring 3 make only the harmless hypercalls, and the hypervisor must enforce
//! that from the guest's CPL, not trust the guest kernel. To test it the guest needs real
//! ring-3 code, which costs user segments and a TSS (`gdt`), user-accessible pages
//! (`paging`) and a way back. The way back is deliberately crude: the ring-3 code stores
//! what the hypercall returned and executes UD2, and the exception handler, at ring 0
//! again, reports the stored value. There is no system call path to get wrong.
//!
//! The ring-3 code asks to print [`LEAK`]: that line on the console means the hypervisor
//! let a forbidden call through.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::once::TakeOnce;
use crate::{cpu, gdt, hypercall, paging, println};

/// What the ring-3 code tries to print.
pub const LEAK: &[u8] = b"user-hypercall leaked\n";

const USER_STACK_BYTES: usize = 16 * 1024;
/// SMEP and SMAP: with every page user-accessible they would fault ring 0 itself.
const CR4_SMEP_SMAP: u64 = (1 << 20) | (1 << 21);

#[repr(C, align(16))]
struct Stack([u8; USER_STACK_BYTES]);

static USER_STACK: TakeOnce<Stack> = TakeOnce::new(Stack([0; USER_STACK_BYTES]));
/// Set just before dropping to ring 3.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Set by the ring-3 code once the hypercall returned, with its result in `RESULT`.
static RETURNED: AtomicBool = AtomicBool::new(false);
static RESULT: AtomicU64 = AtomicU64::new(0);

/// Prints `user-hypercall` and runs the ring-3 code; the exception handler finishes.
pub fn run() -> ! {
    println!("user-hypercall");
    let Some(stack) = USER_STACK.take() else {
        cpu::halt_forever();
    };
    // SAFETY: clearing SMEP and SMAP only lifts restrictions on ring 0.
    unsafe { cpu::write_cr4(cpu::read_cr4() & !CR4_SMEP_SMAP) };
    paging::make_all_user_accessible();
    // Entered as if called: the ABI wants RSP + 8 to be 16-byte aligned at entry.
    let rsp = stack.0.as_ptr_range().end as u64 - 8;
    ACTIVE.store(true, Ordering::SeqCst);
    // SAFETY: USER_CODE and USER_DATA are ring-3 segments of the loaded GDT, every page is
    // now user-accessible, and `gdt::init` gave the TSS a ring-0 stack.
    unsafe {
        cpu::enter_user(
            ring3 as *const () as u64,
            rsp,
            gdt::USER_CODE,
            gdt::USER_DATA,
        )
    }
}

/// The ring-3 code.
extern "sysv64" fn ring3() -> ! {
    let result = hypercall::console_write(LEAK);
    RESULT.store(result, Ordering::SeqCst);
    RETURNED.store(true, Ordering::SeqCst);
    cpu::ud2()
}

/// Called by the exception handler for a #UD from ring 3: once this mode has dropped to
/// ring 3, reports the hypercall's result (`none` if it never returned, for instance
/// because the hypervisor injected an exception) and halts. Returns otherwise.
pub fn on_user_invalid_opcode() {
    if !ACTIVE.load(Ordering::SeqCst) {
        return;
    }
    if RETURNED.load(Ordering::SeqCst) {
        println!(
            "user-hypercall result={}",
            RESULT.load(Ordering::SeqCst) as i64
        );
    } else {
        println!("user-hypercall result=none");
    }
    cpu::halt_forever();
}
