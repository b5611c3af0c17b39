//! The hypercall ABI (crate `abi`) on the hypervisor's side. Like every exit handler,
//! dispatch only computes an [`Effect`]: copies into guest memory and console output
//! happen at the commit, and every guest range is checked against the VM's RAM here,
//! before anything can touch it.

use abi::{Error, Hypercall, CONSOLE_WRITE_MAX};

use super::exits::{Effect, Exit, GuestMemory, Outcome};
use crate::arena::VmRecord;

/// Sets RAX to an error and counts it.
fn fail(mut e: Effect, err: Error) -> Effect {
    e.regs.rax = err.as_result();
    e.counts.hypercall_errors = 1;
    e
}

/// Which test-only hypercalls exist (they do only when the command line enables them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Enabled {
    /// `trigger` (`triggers=on`).
    pub triggers: bool,
    /// `inject` (`inject=on`).
    pub inject: bool,
}

/// Dispatches the hypercall in RAX. `e` already advances RIP past VMCALL.
pub fn dispatch(
    exit: &Exit,
    vm: &VmRecord,
    mem: &impl GuestMemory,
    enabled: Enabled,
    mut e: Effect,
) -> Effect {
    e.counts.hypercalls = 1;
    let regs = vm.vcpu.regs;
    let exists = |c: &Hypercall| match c {
        Hypercall::Trigger => enabled.triggers,
        Hypercall::Inject => enabled.inject,
        _ => true,
    };
    let Some(call) = Hypercall::from_number(regs.rax).filter(exists) else {
        return fail(e, Error::Unknown);
    };
    if exit.cpl != 0 && !call.user_allowed() {
        return fail(e, Error::Permission);
    }
    match call {
        Hypercall::ConsoleWrite => {
            let (gpa, len) = (regs.rdi, regs.rsi);
            if len > CONSOLE_WRITE_MAX {
                return fail(e, Error::Invalid);
            }
            if mem.read(gpa, len).is_none() {
                return fail(e, Error::Fault);
            }
            e.console = Some((gpa, len));
            e.regs.rax = len;
        }
        Hypercall::VmIdentity => {
            let (gpa, len) = (regs.rdi, regs.rsi);
            if gpa != 0 {
                let name = vm.name().as_bytes();
                if len < name.len() as u64 + 1 {
                    return fail(e, Error::Invalid);
                }
                let n = name.len() + 1;
                if mem.read(gpa, n as u64).is_none() {
                    return fail(e, Error::Fault);
                }
                let mut data = [0u8; 16];
                data[..name.len()].copy_from_slice(name);
                e.guest_write = Some((gpa, data, n));
            }
            e.regs.rax = u64::from(vm.id);
        }
        Hypercall::Yield => {
            e.regs.rax = 0;
            e.outcome = Outcome::Yield;
        }
        Hypercall::PowerOff => {
            e.regs.rax = 0;
            e.outcome = Outcome::PowerOff;
        }
        Hypercall::Trigger => {
            let trigger = crate::triggers::Trigger::from_number(regs.rdi);
            let count = regs.rsi;
            match trigger {
                Some(t) if (1..=8).contains(&count) => {
                    e.trigger = Some((t, count as u32));
                    e.regs.rax = 0;
                }
                _ => return fail(e, Error::Invalid),
            }
        }
        Hypercall::Inject => match crate::inject::FaultType::from_number(regs.rdi) {
            Some(fault) => {
                e.arm_injector = Some(crate::inject::Plan::from_seed(fault, regs.rsi));
                e.regs.rax = 0;
            }
            None => return fail(e, Error::Invalid),
        },
    }
    e
}
