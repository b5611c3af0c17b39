//! The guest's side of the hypercall ABI (`abi` crate docs): the one place that executes
//! VMCALL.
//!
//! Results are returned raw, as the `u64` that came back in RAX, because the test guest's
//! job is to report what the hypervisor really answered, including answers the ABI does
//! not allow; decoding them into [`abi::Error`] is left to whoever prints them.

use abi::Hypercall;
use core::arch::asm;

/// Makes hypercall `number` with three arguments and returns RAX.
///
/// # Safety
/// The hypervisor may write guest memory on the guest's behalf (`vm_identity` does): the
/// caller must make sure that any range the call can write is not memory Rust code
/// currently relies on.
pub unsafe fn call(number: u64, arg0: u64, arg1: u64, arg2: u64) -> u64 {
    let result: u64;
    // SAFETY: VMCALL exits to the hypervisor, which by the ABI changes only RAX (and,
    // for calls that write, the guest memory the caller has vouched for). The block is
    // not `nomem`, so the compiler assumes memory may have changed. It does not touch
    // the stack.
    unsafe {
        asm!(
            "vmcall",
            inlateout("rax") number => result,
            in("rdi") arg0,
            in("rsi") arg1,
            in("rdx") arg2,
            options(nostack),
        );
    }
    result
}

/// `console_write(gpa, len)` on an arbitrary guest-physical range, valid or not.
pub fn console_write_raw(gpa: u64, len: u64) -> u64 {
    // SAFETY: console_write only reads guest memory.
    unsafe { call(Hypercall::ConsoleWrite as u64, gpa, len, 0) }
}

/// `console_write` of `bytes`, whose address is guest-physical because guest RAM is
/// identity-mapped.
pub fn console_write(bytes: &[u8]) -> u64 {
    console_write_raw(bytes.as_ptr() as u64, bytes.len() as u64)
}

/// `vm_identity` with `name` as the buffer for the VM's name.
pub fn vm_identity(name: &mut [u8]) -> u64 {
    // SAFETY: the hypervisor writes at most `name.len()` bytes at `name`, which we hold
    // exclusively.
    unsafe {
        call(
            Hypercall::VmIdentity as u64,
            name.as_mut_ptr() as u64,
            name.len() as u64,
            0,
        )
    }
}

/// `trigger(kind, count)`: the hypervisor fails on purpose after committing this call
/// (when booted with `triggers=on`); the VM resumes here after the recovery.
pub fn trigger(kind: u64, count: u64) -> u64 {
    // SAFETY: `trigger` takes two numbers and touches no guest memory.
    unsafe { call(Hypercall::Trigger as u64, kind, count, 0) }
}

/// `inject(type, seed)`: arms the hypervisor's fault injector (when booted with
/// `inject=on`).
pub fn inject(kind: u64, seed: u64) -> u64 {
    // SAFETY: `inject` takes two numbers and touches no guest memory.
    unsafe { call(Hypercall::Inject as u64, kind, seed, 0) }
}

/// A hypercall number the ABI does not define, with zero arguments.
pub fn undefined(number: u64) -> u64 {
    // SAFETY: the ABI answers an unknown number with `Error::Unknown` and no other effect;
    // with zero arguments there is no guest memory it could be tempted to write.
    unsafe { call(number, 0, 0, 0) }
}

/// `power_off()`; should the hypervisor return anyway, the CPU halts for good.
pub fn power_off() -> ! {
    // SAFETY: power_off takes no arguments and touches no guest memory.
    unsafe { call(Hypercall::PowerOff as u64, 0, 0, 0) };
    crate::cpu::halt_forever()
}
