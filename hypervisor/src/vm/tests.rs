//! The transaction property: an exit's effect changes nothing until the commit, and the
//! commit applies all of it.

use super::exits::tests::{FakeHost as HostStub, FakeMem as Mem};
use super::exits::{handle, Exit};
use super::*;
use crate::arena::{set_text, VmRecord};
use crate::vmx::exit::ExitReason;
use crate::vmx::fields::FakeVmcs;
use std::string::String;
use std::vec::Vec;

#[derive(Default)]
struct Lines(Vec<String>);

impl ConsoleSink for Lines {
    fn vm_line(&mut self, vm: &str, line: &str) {
        self.0.push(std::format!("[{vm}] {line}"));
    }
}

fn vm() -> VmRecord {
    let mut vm = VmRecord::EMPTY;
    vm.id = 2;
    set_text(&mut vm.name, "beta");
    vm
}

fn vmcall_exit() -> Exit {
    Exit {
        reason: ExitReason::Vmcall,
        qualification: 0,
        instruction_len: 3,
        guest_physical: 0,
        rip: 0x10_0040,
        rsp: 0,
        rflags: 2,
        cpl: 0,
        cr0: 0,
        cr3: 0,
        cr4: 0,
        cr0_shadow: 0,
        cr4_shadow: 0,
        efer: 0,
        cs_access_rights: 0,
        entry_controls: 0,
        interruption_info: 0,
        vmcs_msr_value: 0,
        now_ns: 0,
    }
}

fn bytes_of(vm: &VmRecord) -> Vec<u8> {
    // SAFETY: VmRecord is repr(C) plain data; reading its bytes (padding included, which is
    // zero for a record built from EMPTY) is only used for comparison.
    unsafe {
        std::slice::from_raw_parts(
            (vm as *const VmRecord).cast::<u8>(),
            core::mem::size_of::<VmRecord>(),
        )
    }
    .to_vec()
}

#[test]
fn an_abandoned_exit_changes_nothing() {
    let mut v = vm();
    v.vcpu.regs.rax = 1; // vm_identity into a buffer
    v.vcpu.regs.rdi = 0x80;
    v.vcpu.regs.rsi = 16;
    let mut vmcs = FakeVmcs::new();
    vmcs.poke(VmcsField::GuestRip, 0x10_0040);
    let mem = Mem(std::vec![0xaa; 0x1000]);
    let before = (bytes_of(&v), mem.0.clone());
    let effect = handle(&vmcall_exit(), &v, &mem, &HostStub);
    // The hypervisor "fails" here: the effect is dropped before the commit.
    drop(effect);
    assert_eq!((bytes_of(&v), mem.0.clone()), before);
    assert!(
        !vmcs.was_written(VmcsField::GuestRip) || vmcs.read(VmcsField::GuestRip) == Ok(0x10_0040)
    );
    // Re-executing the same exit gives the same effect, which commits fully.
    let mut mem = mem;
    let effect = handle(&vmcall_exit(), &v, &mem, &HostStub);
    let mut lines = Lines::default();
    let outcome = commit(
        effect,
        &vmcall_exit(),
        &mut v,
        &mut vmcs,
        &mut mem,
        &mut lines,
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Resume);
    assert_eq!(vmcs.read(VmcsField::GuestRip), Ok(0x10_0043));
    assert_eq!(v.vcpu.regs.rax, 2, "the VM id");
    assert_eq!(&mem.0[0x80..0x85], b"beta\0");
    assert_eq!(v.stats.hypercalls, 1);
    assert_eq!(v.vcpu.journal.phase, crate::arena::Phase::Committed as u32);
}

#[test]
fn commit_prints_console_lines_with_the_vm_name() {
    let mut v = vm();
    let mut mem = Mem(std::vec![0; 0x1000]);
    mem.0[..22].copy_from_slice(b"seq=1 ok\npartial\tend\r\n");
    v.vcpu.regs.rax = 0;
    v.vcpu.regs.rdi = 0;
    v.vcpu.regs.rsi = 13;
    let mut vmcs = FakeVmcs::new();
    let mut lines = Lines::default();
    let effect = handle(&vmcall_exit(), &v, &mem, &HostStub);
    commit(
        effect,
        &vmcall_exit(),
        &mut v,
        &mut vmcs,
        &mut mem,
        &mut lines,
    )
    .unwrap();
    assert_eq!(lines.0, ["[beta] seq=1 ok"]);
    v.vcpu.regs.rax = 0;
    v.vcpu.regs.rdi = 13;
    v.vcpu.regs.rsi = 9;
    let effect = handle(&vmcall_exit(), &v, &mem, &HostStub);
    commit(
        effect,
        &vmcall_exit(),
        &mut v,
        &mut vmcs,
        &mut mem,
        &mut lines,
    )
    .unwrap();
    assert_eq!(lines.0, ["[beta] seq=1 ok", "[beta] partial\tend"]);
}

#[test]
fn long_and_binary_console_output_is_bounded() {
    let mut v = vm();
    let mut lines = Lines::default();
    let long = std::vec![b'x'; crate::arena::CONSOLE_LINE + 10];
    append_console(&mut v, &long, &mut lines);
    assert_eq!(lines.0.len(), 1);
    assert_eq!(
        lines.0[0].len(),
        "[beta] ".len() + crate::arena::CONSOLE_LINE
    );
    append_console(&mut v, b"\x01\x02\n", &mut lines);
    assert_eq!(lines.0[1], "[beta] xxxxxxxxxx??");
}

#[test]
fn commit_clears_sti_blocking_when_skipping_an_instruction() {
    let mut v = vm();
    v.vcpu.regs.rax = 2; // yield
    let mut vmcs = FakeVmcs::new();
    vmcs.poke(VmcsField::GuestInterruptibilityState, 0b1001);
    let mut mem = Mem(std::vec![0; 16]);
    let effect = handle(&vmcall_exit(), &v, &mem, &HostStub);
    let outcome = commit(
        effect,
        &vmcall_exit(),
        &mut v,
        &mut vmcs,
        &mut mem,
        &mut Lines::default(),
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Yield);
    assert_eq!(vmcs.read(VmcsField::GuestInterruptibilityState), Ok(0b1000));
}
