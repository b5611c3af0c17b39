//! The injector on the real machine: arming, single-stepping the hypervisor from a VM
//! exit, and changing the interrupted context at the planned step.
//!
//! Its state is in `.bss` (transient): a microreboot disarms it, so every plan fires at
//! most once. The #DB handler runs with the interrupted code's locks possibly held, so it
//! takes none: the state is atomics, and the `inject:` line is written to COM1 without the
//! console lock (it may cut into a line being printed).

use core::arch::asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{DataRegion, Done, FaultType, Line, Plan, REGISTERS};
use crate::arch::idt::ExceptionFrame;
use crate::arena::ArenaLock;
use crate::memory::Range;

/// RFLAGS.TF (SDM Vol. 1 §3.4.3.3) and IF.
const TF: u64 = 1 << 8;
const IF: u64 = 1 << 9;

static ENABLED: AtomicBool = AtomicBool::new(false);
static ARMED: AtomicBool = AtomicBool::new(false);
static STEPPING: AtomicBool = AtomicBool::new(false);
static EXITS_LEFT: AtomicU64 = AtomicU64::new(0);
static STEPS_LEFT: AtomicU64 = AtomicU64::new(0);
static PLAN: spin::Mutex<Option<Plan>> = spin::Mutex::new(None);
static STATIC_DATA: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static HEAP: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static STACK: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static LOCK: AtomicUsize = AtomicUsize::new(0);
/// The `inject:` line of the injection that fired, until someone prints it.
static PENDING: AtomicBool = AtomicBool::new(false);
static mut PENDING_LINE: LineBuffer = LineBuffer::new();

type LineBuffer = heapless::String<192>;

/// The `inject:` line of an injection that fired and was not printed yet (without the
/// `[lazarus] WARN  ` prefix); taking it marks it printed.
pub fn take_line() -> Option<LineBuffer> {
    if !PENDING.swap(false, Ordering::Acquire) {
        return None;
    }
    // SAFETY: PENDING was set after the handler finished writing, and the handler never
    // writes again for this plan; a new plan cannot fire before this copy ends (the
    // caller is the run loop or the failure path, with no VM exit in between). The
    // buffer is plain bytes and a length: a bit copy is a proper copy.
    Some(unsafe { core::ptr::read(&raw const PENDING_LINE) })
}

/// `inject=on` (or a plan) on the command line: injections may be armed.
pub fn enable() {
    ENABLED.store(true, Ordering::SeqCst);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// The memory data faults may hit (static data, the heap, the run loop's stack), and the
/// address of the lock lock faults leak (the arena's; 0 when there is none).
pub fn set_targets(static_data: Range, heap: Range, stack: Range, lock_addr: u64) {
    STATIC_DATA[0].store(static_data.start, Ordering::SeqCst);
    STATIC_DATA[1].store(static_data.end, Ordering::SeqCst);
    HEAP[0].store(heap.start, Ordering::SeqCst);
    HEAP[1].store(heap.end, Ordering::SeqCst);
    STACK[0].store(stack.start, Ordering::SeqCst);
    STACK[1].store(stack.end, Ordering::SeqCst);
    LOCK.store(lock_addr as usize, Ordering::SeqCst);
}

/// Arms `plan`: stepping starts at VM exit number `plan.exits` from now. False if
/// injection is not enabled or a plan is already armed.
pub fn arm(plan: Plan) -> bool {
    if !enabled() || ARMED.load(Ordering::SeqCst) {
        return false;
    }
    *PLAN.lock() = Some(plan);
    EXITS_LEFT.store(plan.exits, Ordering::SeqCst);
    STEPS_LEFT.store(plan.steps, Ordering::SeqCst);
    STEPPING.store(false, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    true
}

/// Right after a VM exit: counts down to the planned exit, then (and at every later exit
/// until the fault) sets TF so the hypervisor's instructions are single-stepped.
pub fn after_exit() {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    if !STEPPING.load(Ordering::Relaxed) {
        if EXITS_LEFT.load(Ordering::Relaxed) > 0 {
            EXITS_LEFT.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        STEPPING.store(true, Ordering::SeqCst);
    }
    set_tf(true);
}

/// Right before a VM entry: guest instructions are not counted.
pub fn before_entry() {
    if STEPPING.load(Ordering::Relaxed) {
        set_tf(false);
    }
}

/// Sets or clears RFLAGS.TF.
fn set_tf(on: bool) {
    // SAFETY: PUSHFQ/POPFQ of the current flags with only TF changed: with TF set, each
    // following instruction raises #DB (vector 1), which `on_debug` handles and returns
    // from; nothing else in the flags changes.
    unsafe {
        if on {
            asm!("pushfq", "or qword ptr [rsp], {tf}", "popfq", tf = const TF);
        } else {
            asm!("pushfq", "and qword ptr [rsp], {mask}", "popfq", mask = const !TF as i64 as i32);
        }
    }
}

/// The #DB handler's first call: true if the trap was the injector's single step (then
/// `frame` may have been changed: that is the fault), false for any other #DB.
pub fn on_debug(frame: &mut ExceptionFrame) -> bool {
    if !STEPPING.load(Ordering::Relaxed) {
        return false;
    }
    let left = STEPS_LEFT.load(Ordering::Relaxed);
    if left > 0 {
        STEPS_LEFT.store(left - 1, Ordering::Relaxed);
        // A stepped instruction is progress: up to 20000 of them, each a #DB costing
        // hundreds of instructions, could otherwise look like a hang to the watchdog's
        // 200 ms. Bounded: the stepping ends at the fault, before its effect.
        crate::watchdog::pet();
        return true;
    }
    STEPPING.store(false, Ordering::SeqCst);
    ARMED.store(false, Ordering::SeqCst);
    frame.rflags &= !TF;
    let Some(plan) = PLAN.try_lock().and_then(|p| *p) else {
        return true;
    };
    let rip = frame.rip;
    let done = inject(&plan, frame);
    // The line waits in a buffer: the trap may have interrupted a line being printed
    // (or the console lock's holder). The run loop prints it before its next VM entry,
    // or the failure path takes it into the arena when the fault is detected first.
    let mut line = LineBuffer::new();
    let _ = write!(
        line,
        "{}",
        Line {
            plan: &plan,
            rip,
            done
        }
    );
    // SAFETY: the #DB handler is the only writer and runs once per armed plan; readers
    // look only after PENDING says the buffer is complete (Release/Acquire).
    unsafe { core::ptr::write(&raw mut PENDING_LINE, line) };
    PENDING.store(true, Ordering::Release);
    if plan.fault == FaultType::Lock {
        if let Some(lock) = lock() {
            lock.acquire(0, 0);
        }
    }
    true
}

fn lock() -> Option<&'static ArenaLock> {
    let addr = LOCK.load(Ordering::SeqCst);
    // SAFETY: `set_targets` stored the address of the arena's lock, which lives as long
    // as the arena (for good) and is only ever used through atomics.
    (addr != 0).then(|| unsafe { &*(addr as *const ArenaLock) })
}

/// Changes the interrupted context as `plan` says and reports what changed.
fn inject(plan: &Plan, frame: &mut ExceptionFrame) -> Done {
    match plan.fault {
        FaultType::FailStop => {
            frame.rip = 0;
            Done::FailStop
        }
        FaultType::Register => {
            let slot = register(frame, plan.register);
            let old = *slot;
            *slot ^= 1 << plan.bit;
            Done::Register {
                index: plan.register,
                old,
                new: *slot,
            }
        }
        FaultType::Code => {
            let address = frame.rip.wrapping_add(plan.code_offset);
            // SAFETY: RIP points into the image (host code), identity-mapped (read-only
            // except in this CR0.WP window); 15 bytes past it are still inside the image.
            // Changing the code is the fault being injected.
            let (old, new) = crate::arch::protect::with_writes_allowed(|| unsafe {
                let p = address as *mut u8;
                let old = core::ptr::read_volatile(p);
                let new = old ^ (1 << plan.bit);
                core::ptr::write_volatile(p, new);
                (old, new)
            });
            Done::Code { address, old, new }
        }
        FaultType::Data => {
            let region = plan.region;
            let load =
                |r: &[AtomicU64; 2]| (r[0].load(Ordering::SeqCst), r[1].load(Ordering::SeqCst));
            let (start, end) = match region {
                DataRegion::Static => load(&STATIC_DATA),
                DataRegion::Heap => load(&HEAP),
                DataRegion::Stack => {
                    let (bottom, top) = load(&STACK);
                    Plan::stack_window(frame.rsp, bottom, top)
                }
            };
            let Some(address) = plan.data_address(start, end) else {
                return Done::NoData { region };
            };
            // SAFETY: an aligned word inside `.data`/`.bss`, the heap or the used part
            // of the run loop's stack (identity-mapped RAM the hypervisor owns, inside
            // the ranges `set_targets` was given); flipping one of its bits is the fault.
            let (old, new) = unsafe {
                let p = address as *mut u64;
                let old = core::ptr::read_volatile(p);
                let new = old ^ (1 << plan.bit);
                core::ptr::write_volatile(p, new);
                (old, new)
            };
            Done::Data {
                region,
                address,
                old,
                new,
            }
        }
        FaultType::Hang => {
            frame.rip = hang_loop as *const () as u64;
            frame.rflags &= !IF;
            Done::Hang
        }
        FaultType::Lock => match lock() {
            Some(_) => Done::Lock,
            None => Done::NoLock,
        },
    }
}

/// Where a hang fault sends the CPU.
extern "C" fn hang_loop() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// The register `index` (in [`REGISTERS`] order) of the interrupted context.
fn register(frame: &mut ExceptionFrame, index: usize) -> &mut u64 {
    debug_assert!(index < REGISTERS.len());
    match index {
        0 => &mut frame.rax,
        1 => &mut frame.rbx,
        2 => &mut frame.rcx,
        3 => &mut frame.rdx,
        4 => &mut frame.rsi,
        5 => &mut frame.rdi,
        6 => &mut frame.rbp,
        7 => &mut frame.r8,
        8 => &mut frame.r9,
        9 => &mut frame.r10,
        10 => &mut frame.r11,
        11 => &mut frame.r12,
        12 => &mut frame.r13,
        13 => &mut frame.r14,
        14 => &mut frame.r15,
        15 => &mut frame.rsp,
        16 => &mut frame.rflags,
        _ => &mut frame.rip,
    }
}
