//! Virtual machines: how they are described (`config`), how their exits are handled
//! (`exits`, `hypercall`), which one runs next (`scheduler`), and — on the real machine
//! only — how they are created and run (`machine`).
//!
//! The commit step lives here: it is the one place where an exit's [`Effect`] reaches
//! the vCPU record, the VMCS, guest memory and the console.

pub mod config;
pub mod exits;
pub mod hypercall;
pub mod interrupts;
#[cfg(target_os = "none")]
pub mod machine;
pub mod rules;
pub mod scheduler;

use exits::{Effect, Exit, GuestMemory, Outcome};

use crate::arena::{Phase, VmRecord, CONSOLE_LINE};
use crate::vmx::fields::{VmcsAccess, VmcsField, VmxError};

/// Guest memory that the commit may write.
pub trait GuestMemoryMut: GuestMemory {
    /// Writes `data` at `gpa`; false (and nothing written) if any byte is outside RAM.
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool;
}

/// Where a VM's console lines go: `[NAME] line` on the physical console.
pub trait ConsoleSink {
    fn vm_line(&mut self, vm: &str, line: &str);
}

/// Interruptibility state bits 0 (blocking by STI) and 1 (by MOV SS): they last for one
/// instruction, so skipping an instruction ends them (SDM Vol. 3C §25.4.2).
const BLOCKING_BY_STI_OR_MOV_SS: u64 = 0b11;

/// Applies `effect` in one step: guest memory, console, VMCS fields, RIP, event
/// injection, registers, MSRs, counters, and finally the journal. Returns the outcome
/// for the scheduler.
pub fn commit(
    effect: Effect,
    exit: &Exit,
    vm: &mut VmRecord,
    vmcs: &mut impl VmcsAccess,
    mem: &mut impl GuestMemoryMut,
    console: &mut impl ConsoleSink,
) -> Result<Outcome, VmxError> {
    if let Some((gpa, data, len)) = effect.guest_write {
        mem.write(gpa, &data[..len]);
    }
    if let Some((gpa, len)) = effect.console {
        let mut bytes = [0u8; abi::CONSOLE_WRITE_MAX as usize];
        let len = len as usize;
        if let Some(src) = mem.read(gpa, len as u64) {
            bytes[..len].copy_from_slice(src);
            append_console(vm, &bytes[..len], console);
        }
    }
    for &(field, value) in &effect.vmcs {
        vmcs.write(field, value)?;
    }
    if effect.rip_advance != 0 {
        vmcs.write(
            VmcsField::GuestRip,
            exit.rip.wrapping_add(effect.rip_advance),
        )?;
        let blocking = vmcs.read(VmcsField::GuestInterruptibilityState)?;
        if blocking & BLOCKING_BY_STI_OR_MOV_SS != 0 {
            vmcs.write(
                VmcsField::GuestInterruptibilityState,
                blocking & !BLOCKING_BY_STI_OR_MOV_SS,
            )?;
        }
    }
    if let Some(injection) = effect.inject {
        injection.write_to(vmcs)?;
    }
    if !effect.serial_out.is_empty() {
        append_console(vm, &effect.serial_out, console);
    }
    if let Some(devices) = effect.devices {
        vm.devices = devices;
    }
    vm.vcpu.regs = effect.regs;
    if let Some(msrs) = effect.msrs {
        vm.vcpu.msrs = msrs;
    }
    if let Some(xcr0) = effect.xcr0 {
        vm.vcpu.xcr0 = xcr0;
    }
    if let Some(cr8) = effect.cr8 {
        vm.vcpu.cr8 = cr8;
    }
    let s = &mut vm.stats;
    s.unclaimed_io += effect.counts.unclaimed_io;
    s.unknown_msr += effect.counts.unknown_msr;
    s.hypercalls += effect.counts.hypercalls;
    s.hypercall_errors += effect.counts.hypercall_errors;
    vm.vcpu.journal.phase = Phase::Committed as u32;
    Ok(effect.outcome)
}

/// Adds guest console bytes to the VM's line buffer, emitting each complete line. A line
/// longer than the buffer is emitted in pieces; control characters other than tab become
/// '?', CR is dropped.
pub fn append_console(vm: &mut VmRecord, bytes: &[u8], console: &mut impl ConsoleSink) {
    for &b in bytes {
        let mut len = (vm.console_len as usize).min(CONSOLE_LINE);
        match b {
            b'\r' => continue,
            b'\n' => {
                flush_console(vm, len, console);
                continue;
            }
            b'\t' | 0x20..=0x7e => vm.console[len] = b,
            _ => vm.console[len] = b'?',
        }
        len += 1;
        vm.console_len = len as u32;
        if len == CONSOLE_LINE {
            flush_console(vm, len, console);
        }
    }
}

fn flush_console(vm: &mut VmRecord, len: usize, console: &mut impl ConsoleSink) {
    let mut line = [0u8; CONSOLE_LINE];
    line[..len].copy_from_slice(&vm.console[..len]);
    let text = core::str::from_utf8(&line[..len]).unwrap_or("?");
    let mut name = [0u8; crate::arena::NAME_LEN];
    name.copy_from_slice(&vm.name);
    console.vm_line(crate::arena::text(&name), text);
    vm.console_len = 0;
}

#[cfg(test)]
mod tests;
