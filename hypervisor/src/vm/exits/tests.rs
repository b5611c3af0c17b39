use super::*;
use crate::arena::{set_text, VmRecord, ON_TRIPLE_FAULT_RESET};
use crate::vmx::exit::ExitReason;
use std::vec::Vec;

pub(crate) struct FakeMem(pub Vec<u8>);

impl GuestMemory for FakeMem {
    fn read(&self, gpa: u64, len: u64) -> Option<&[u8]> {
        let end = gpa.checked_add(len)?;
        (end <= self.0.len() as u64).then(|| &self.0[gpa as usize..end as usize])
    }
}

impl crate::vm::GuestMemoryMut for FakeMem {
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let end = gpa as usize + data.len();
        if end > self.0.len() {
            return false;
        }
        self.0[gpa as usize..end].copy_from_slice(data);
        true
    }
}

pub(crate) struct FakeHost;

impl Host for FakeHost {
    fn cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        match leaf {
            0 => [0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69],
            1 => [0x50654, 0x0810_0800, 0xfffa_32ab, 0xbfeb_fbff],
            _ => [leaf, 1, 2, 3],
        }
    }
    fn rdtsc(&self) -> u64 {
        0x1234_5678_9abc
    }
    fn guest_limits(&self) -> GuestLimits {
        fake_limits()
    }
    fn tsc_hz(&self) -> u64 {
        50_000_000
    }
    fn triggers_enabled(&self) -> bool {
        true
    }
    fn inject_enabled(&self) -> bool {
        true
    }
    fn cr_fixed(&self) -> [u64; 4] {
        // CR0: PE, NE, PG fixed to 1; CR4: VMXE fixed to 1 (Skylake-like values).
        [0x8000_0021, 0xffff_ffff, 0x2000, 0x3f_ffff]
    }
}

pub(crate) fn exit(reason: ExitReason) -> Exit {
    Exit {
        reason,
        qualification: 0,
        instruction_len: 2,
        guest_physical: 0,
        rip: 0x10_0000,
        rsp: 0x8000,
        rflags: 0x2,
        cpl: 0,
        cr0: 0x8000_0031,
        cr3: 0x1000,
        cr4: 0x2020,
        cr0_shadow: 0x8000_0011,
        cr4_shadow: 0x20,
        efer: 0x500,
        cs_access_rights: 0xa09b,
        entry_controls: 0x11ff,
        interruption_info: 0,
        vmcs_msr_value: 0,
        now_ns: 0,
    }
}

pub(crate) fn vm() -> VmRecord {
    let mut vm = VmRecord::EMPTY;
    vm.id = 3;
    set_text(&mut vm.name, "alpha");
    vm.config.ram_size = 0x10000;
    vm
}

fn mem() -> FakeMem {
    let mut m = FakeMem(std::vec![0; 0x10000]);
    m.0[0x100..0x106].copy_from_slice(b"hello\n");
    m
}

fn run(reason: ExitReason, vm: &VmRecord) -> Effect {
    handle(&exit(reason), vm, &mem(), &FakeHost)
}

#[test]
fn cpuid_hides_vmx_and_names_the_hypervisor() {
    let mut v = vm();
    v.vcpu.regs.rax = 1;
    let e = run(ExitReason::Cpuid, &v);
    assert_eq!(e.regs.rcx & (1 << 5), 0, "VMX hidden");
    assert_ne!(e.regs.rcx & (1 << 31), 0, "hypervisor bit");
    assert_eq!((e.regs.rbx >> 16) & 0xff, 1, "one logical processor");
    assert_eq!(e.regs.rdx & (1 << 9), 0, "no local APIC");
    assert_eq!(e.regs.rcx & (1 << 21), 0, "no x2APIC");
    assert_eq!(e.rip_advance, 2);
    v.vcpu.regs.rax = 0x4000_0000;
    let e = run(ExitReason::Cpuid, &v);
    let sig: Vec<u8> = [e.regs.rbx, e.regs.rcx, e.regs.rdx]
        .iter()
        .flat_map(|r| (*r as u32).to_le_bytes())
        .collect();
    assert_eq!(&sig, b"LazarusLzrHV");
    v.vcpu.regs.rax = 0;
    let e = run(ExitReason::Cpuid, &v);
    assert_eq!(e.regs.rbx, 0x756e_6547, "other leaves pass through");
}

fn io_exit(port: u16, size: u8, is_in: bool, string: bool) -> Exit {
    let size_code = u64::from(size - 1);
    let q =
        size_code | (u64::from(is_in) << 3) | (u64::from(string) << 4) | (u64::from(port) << 16);
    Exit {
        qualification: q,
        ..exit(ExitReason::Io)
    }
}

#[test]
fn unclaimed_ports_read_all_ones_and_count() {
    let mut v = vm();
    v.vcpu.regs.rax = 0x1122_3344_5566_7788;
    let e = handle(&io_exit(0x80, 1, true, false), &v, &mem(), &FakeHost);
    assert_eq!(
        e.regs.rax, 0x1122_3344_5566_77ff,
        "port 0x80 (POST codes) is unclaimed"
    );
    assert_eq!(e.counts.unclaimed_io, 1);
    assert_eq!(e.rip_advance, 2);
    let e = handle(&io_exit(0x80, 2, true, false), &v, &mem(), &FakeHost);
    assert_eq!(e.regs.rax, 0x1122_3344_5566_ffff);
    let e = handle(&io_exit(0x80, 4, true, false), &v, &mem(), &FakeHost);
    assert_eq!(e.regs.rax, 0xffff_ffff);
    let e = handle(&io_exit(0x80, 1, false, false), &v, &mem(), &FakeHost);
    assert_eq!(e.regs.rax, v.vcpu.regs.rax, "OUT changes nothing");
    assert_eq!(e.outcome, Outcome::Resume);
    let e = handle(&io_exit(0x3f8, 1, false, true), &v, &mem(), &FakeHost);
    assert!(matches!(e.outcome, Outcome::Stop(ref r) if r.starts_with("string I/O to port 0x3f8")));
    assert_eq!(e.devices, None);
}

#[test]
fn claimed_ports_reach_the_devices_on_a_copy() {
    let mut v = vm();
    // The UART's scratch register: write, then read back.
    v.vcpu.regs.rax = 0x5a;
    let e = handle(&io_exit(0x3ff, 1, false, false), &v, &mem(), &FakeHost);
    assert_eq!(e.counts.unclaimed_io, 0);
    assert_ne!(v.devices, e.devices.unwrap(), "only the copy changed");
    v.devices = e.devices.unwrap();
    v.vcpu.regs.rax = 0;
    let e = handle(&io_exit(0x3ff, 1, true, false), &v, &mem(), &FakeHost);
    assert_eq!(e.regs.rax, 0x5a);
    // A byte written to the transmit register comes out.
    v.vcpu.regs.rax = u64::from(b'L');
    let e = handle(&io_exit(0x3f8, 1, false, false), &v, &mem(), &FakeHost);
    assert_eq!(e.serial_out.as_slice(), b"L");
    // The i8042 reset line resets the VM.
    v.vcpu.regs.rax = 0xfe;
    let e = handle(&io_exit(0x64, 1, false, false), &v, &mem(), &FakeHost);
    assert_eq!(e.outcome, Outcome::Reboot);
}

#[test]
fn msrs_emulated_or_gp() {
    let mut v = vm();
    v.vcpu.regs.rcx = 0x10;
    let e = run(ExitReason::Rdmsr, &v);
    assert_eq!((e.regs.rdx << 32) | e.regs.rax, 0x1234_5678_9abc);
    assert_eq!(e.rip_advance, 2);
    v.vcpu.regs.rcx = 0xdead_beef;
    let e = run(ExitReason::Rdmsr, &v);
    assert_eq!(e.rip_advance, 0, "a faulting RDMSR is not skipped");
    let inj = e.inject.expect("#GP injected");
    assert_eq!(inj.info & 0xff, 13);
    assert_eq!(inj.error_code, Some(0));
    assert_eq!(e.counts.unknown_msr, 1);
    let e = run(ExitReason::Wrmsr, &v);
    assert!(e.inject.is_some());
    // LSTAR is kept in the record and swapped with the VM.
    v.vcpu.regs.rcx = u64::from(msr::IA32_LSTAR);
    v.vcpu.regs.rax = 0x8000_1000;
    v.vcpu.regs.rdx = 0xffff_ffff;
    let e = run(ExitReason::Wrmsr, &v);
    assert_eq!(e.msrs.unwrap().lstar, 0xffff_ffff_8000_1000);
    // EFER: reserved bits refused, LMA kept.
    v.vcpu.regs.rcx = u64::from(msr::IA32_EFER);
    v.vcpu.regs.rdx = 0;
    v.vcpu.regs.rax = 1 << 5;
    assert!(run(ExitReason::Wrmsr, &v).inject.is_some());
    v.vcpu.regs.rax = (1 << 8) | (1 << 11) | 1;
    let e = run(ExitReason::Wrmsr, &v);
    assert_eq!(
        e.vmcs.as_slice(),
        &[(VmcsField::GuestIa32Efer, 0x901 | (1 << 10))]
    );
}

#[test]
fn ept_violation_stops_the_vm_with_the_address() {
    let v = vm();
    let x = Exit {
        guest_physical: 0x1f60_0000,
        qualification: 0b10,
        ..exit(ExitReason::EptViolation)
    };
    let e = handle(&x, &v, &mem(), &FakeHost);
    match e.outcome {
        Outcome::Stop(r) => {
            assert!(
                r.starts_with("EPT violation: write at guest-physical 0x1f600000"),
                "{r}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.rip_advance, 0);
}

#[test]
fn triple_fault_stops_or_resets() {
    let mut v = vm();
    assert!(matches!(
        run(ExitReason::TripleFault, &v).outcome,
        Outcome::Stop(_)
    ));
    v.config.on_triple_fault = ON_TRIPLE_FAULT_RESET;
    assert_eq!(run(ExitReason::TripleFault, &v).outcome, Outcome::Reset);
}

#[test]
fn scheduling_exits() {
    let v = vm();
    assert_eq!(run(ExitReason::PreemptionTimer, &v).outcome, Outcome::Yield);
    let e = run(ExitReason::Hlt, &v);
    assert_eq!(
        (e.outcome, e.rip_advance),
        (Outcome::Halt, 2),
        "IF clear: halted for good"
    );
    let x = Exit {
        rflags: 0x202,
        ..exit(ExitReason::Hlt)
    };
    assert_eq!(
        handle(&x, &v, &mem(), &FakeHost).outcome,
        Outcome::Wait,
        "IF set: waits for an interrupt"
    );
    assert_eq!(
        run(ExitReason::InterruptWindow, &v).outcome,
        Outcome::Resume
    );
    assert_eq!(
        run(ExitReason::ExternalInterrupt, &v).outcome,
        Outcome::Resume
    );
    assert_eq!(run(ExitReason::ExternalInterrupt, &v).rip_advance, 0);
}

#[test]
fn vmx_instructions_raise_ud_and_unknown_exits_stop() {
    let v = vm();
    let e = run(ExitReason::Vmxon, &v);
    assert_eq!(e.inject.unwrap().info & 0xff, 6);
    assert!(
        matches!(run(ExitReason::Rsm, &v).outcome, Outcome::Stop(ref r) if r.starts_with("unhandled exit reason"))
    );
}

fn call(v: &mut VmRecord, nr: u64, rdi: u64, rsi: u64, cpl: u8) -> Effect {
    v.vcpu.regs.rax = nr;
    v.vcpu.regs.rdi = rdi;
    v.vcpu.regs.rsi = rsi;
    handle(
        &Exit {
            cpl,
            instruction_len: 3,
            ..exit(ExitReason::Vmcall)
        },
        v,
        &mem(),
        &FakeHost,
    )
}

#[test]
fn test_hypercalls_trigger_and_inject() {
    use crate::inject::{FaultType, Plan};
    use crate::triggers::Trigger;
    let mut v = vm();
    let e = call(&mut v, 4, 7, 1, 0);
    assert_eq!((e.regs.rax, e.trigger), (0, Some((Trigger::MidExit, 1))));
    for (kind, count) in [(99, 1), (0, 0), (0, 9)] {
        let e = call(&mut v, 4, kind, count, 0);
        assert_eq!(
            abi::Error::from_result(e.regs.rax),
            Some(abi::Error::Invalid)
        );
        assert_eq!(e.trigger, None);
    }
    let e = call(&mut v, 5, 2, 42, 0);
    assert_eq!(
        (e.regs.rax, e.arm_injector),
        (0, Some(Plan::from_seed(FaultType::Code, 42)))
    );
    let e = call(&mut v, 5, 6, 1, 0);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Invalid)
    );
    // Without triggers=on and inject=on, neither exists.
    v.vcpu.regs.rax = 5;
    let off = super::super::hypercall::dispatch(
        &exit(ExitReason::Vmcall),
        &v,
        &mem(),
        super::super::hypercall::Enabled::default(),
        Effect::new(&v.vcpu.regs),
    );
    assert_eq!(
        abi::Error::from_result(off.regs.rax),
        Some(abi::Error::Unknown)
    );
    assert_eq!(off.arm_injector, None);
}

#[test]
fn hypercalls() {
    let mut v = vm();
    let e = call(&mut v, 0, 0x100, 6, 0);
    assert_eq!(
        (e.regs.rax, e.console, e.rip_advance),
        (6, Some((0x100, 6)), 3)
    );
    let e = call(&mut v, 0, 0xffff, 2, 0);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Fault),
        "crosses the end of RAM"
    );
    assert_eq!(e.console, None);
    let e = call(&mut v, 0, u64::MAX - 1, 4, 0);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Fault),
        "wraps around"
    );
    let e = call(&mut v, 0, 0x100, abi::CONSOLE_WRITE_MAX + 1, 0);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Invalid)
    );
    let e = call(&mut v, 99, 0, 0, 0);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Unknown)
    );
    assert_eq!((e.counts.hypercall_errors, e.rip_advance), (1, 3));
    let e = call(&mut v, 0, 0x100, 6, 3);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Permission),
        "user mode"
    );
    assert_eq!(
        call(&mut v, 2, 0, 0, 3).outcome,
        Outcome::Yield,
        "yield is allowed from user mode"
    );
    let e = call(&mut v, 1, 0x200, 16, 0);
    assert_eq!(e.regs.rax, 3);
    let (gpa, data, len) = e.guest_write.unwrap();
    assert_eq!((gpa, &data[..len]), (0x200, &b"alpha\0"[..]));
    let e = call(&mut v, 1, 0x200, 3, 0);
    assert_eq!(
        abi::Error::from_result(e.regs.rax),
        Some(abi::Error::Invalid),
        "buffer too small"
    );
    assert_eq!(call(&mut v, 3, 0, 0, 0).outcome, Outcome::PowerOff);
}

#[test]
fn xsetbv_is_checked() {
    let mut v = vm();
    v.vcpu.regs.rax = 0b111;
    assert_eq!(run(ExitReason::Xsetbv, &v).xcr0, Some(0b111));
    for bad in [0b110, 0b101, 0b1_0000_0001] {
        v.vcpu.regs.rax = bad;
        let e = run(ExitReason::Xsetbv, &v);
        assert_eq!(e.xcr0, None, "{bad:#b}");
        assert!(e.inject.is_some());
    }
}

#[test]
fn turning_paging_on_with_lme_enters_long_mode() {
    let mut v = vm();
    v.vcpu.regs.rbx = 0x8000_0011;
    // MOV to CR0 from RBX: access type 0, CR 0, GPR 3 (qualification bits 11:8).
    let x = Exit {
        qualification: 3 << 8,
        cr0: 0x31,
        cr0_shadow: 0x11,
        efer: 1 << 8,
        entry_controls: 0x11ff & !(1 << 9),
        ..exit(ExitReason::CrAccess)
    };
    let e = handle(&x, &v, &mem(), &FakeHost);
    let writes = e.vmcs.as_slice();
    assert!(writes.contains(&(VmcsField::Cr0ReadShadow, 0x8000_0011)));
    assert!(
        writes.contains(&(VmcsField::GuestCr0, 0x8000_0031)),
        "NE forced on: {writes:?}"
    );
    assert!(writes.contains(&(VmcsField::GuestIa32Efer, (1 << 8) | (1 << 10))));
    assert!(writes.contains(&(VmcsField::EntryControls, 0x11ff | (1 << 9))));
}

/// The limits of a Skylake-like host: x87, SSE, AVX; CR4 as a Linux guest uses it.
pub(crate) fn fake_limits() -> GuestLimits {
    let allowed_cr4 = (0x7ff & !(1 << 6)) | (0b111 << 16) | (0b11 << 20);
    GuestLimits {
        xcr0: 0b111,
        xsave_size: 832,
        cr4: allowed_cr4,
        linear_bits: 48,
        cr0_mask: (1 << 5) | (1 << 29) | (1 << 30),
        cr4_mask: !allowed_cr4,
    }
}

fn is_gp(e: &Effect) -> bool {
    e.rip_advance == 0 && e.inject.is_some_and(|i| i.info & 0xff == 13)
}

fn is_ud(e: &Effect) -> bool {
    e.rip_advance == 0 && e.inject.is_some_and(|i| i.info & 0xff == 6)
}

fn wrmsr_of(index: u32, value: u64) -> Effect {
    let mut v = vm();
    v.vcpu.regs.rcx = u64::from(index);
    v.vcpu.regs.rax = value & 0xffff_ffff;
    v.vcpu.regs.rdx = value >> 32;
    run(ExitReason::Wrmsr, &v)
}

#[test]
fn wrmsr_refuses_what_hardware_refuses_with_gp() {
    let non_canonical = 0x0000_8000_0000_0000;
    for index in [
        msr::IA32_SYSENTER_ESP,
        msr::IA32_SYSENTER_EIP,
        msr::IA32_FS_BASE,
        msr::IA32_GS_BASE,
        msr::IA32_KERNEL_GS_BASE,
        msr::IA32_LSTAR,
        msr::IA32_CSTAR,
    ] {
        let e = wrmsr_of(index, non_canonical);
        assert!(is_gp(&e), "{index:#x}");
        assert!(
            e.vmcs.is_empty() && e.msrs.is_none(),
            "{index:#x}: nothing written"
        );
        let e = wrmsr_of(index, 0xffff_8000_0000_1000);
        assert_eq!(e.rip_advance, 2, "{index:#x}: canonical taken");
    }
    // PAT with a reserved memory type (2) in one entry.
    assert!(is_gp(&wrmsr_of(msr::IA32_PAT, 0x0007_0406_0007_0402)));
    assert_eq!(
        wrmsr_of(msr::IA32_PAT, 0x0007_0406_0007_0401)
            .vmcs
            .as_slice(),
        &[(VmcsField::GuestIa32Pat, 0x0007_0406_0007_0401)]
    );
    // EFER.LME cleared while paging is on (the test exit is in 64-bit mode).
    assert!(is_gp(&wrmsr_of(msr::IA32_EFER, 0x001)));
    // Reserved bits of TSC_AUX, FMASK, DEBUGCTL.
    assert!(is_gp(&wrmsr_of(msr::IA32_TSC_AUX, 1 << 32)));
    assert_eq!(wrmsr_of(msr::IA32_TSC_AUX, 7).msrs.unwrap().tsc_aux, 7);
    assert!(is_gp(&wrmsr_of(msr::IA32_FMASK, 1 << 32)));
    assert!(is_gp(&wrmsr_of(msr::IA32_DEBUGCTL, 1 << 2)));
    assert_eq!(
        wrmsr_of(msr::IA32_DEBUGCTL, 2).vmcs.as_slice(),
        &[(VmcsField::GuestIa32Debugctl, 2)]
    );
    // Locked and read-only identification MSRs.
    assert!(is_gp(&wrmsr_of(msr::IA32_FEATURE_CONTROL, 5)));
    assert!(is_gp(&wrmsr_of(msr::IA32_PLATFORM_ID, 0)));
    assert_eq!(wrmsr_of(msr::IA32_BIOS_SIGN_ID, 0).rip_advance, 2);
}

#[test]
fn rdmsr_of_the_tsc_is_the_guest_tsc() {
    let mut v = vm();
    v.clock_start = 0x1000;
    v.vcpu.regs.rcx = u64::from(msr::IA32_TSC);
    let e = run(ExitReason::Rdmsr, &v);
    assert_eq!((e.regs.rdx << 32) | e.regs.rax, 0x1234_5678_9abc - 0x1000);
}

#[test]
fn xsetbv_refuses_partial_avx512_and_bits_not_offered() {
    let mut v = vm();
    for bad in [0x27, 0x47, 0x207, 0b1001] {
        v.vcpu.regs.rax = bad;
        assert!(is_gp(&run(ExitReason::Xsetbv, &v)), "{bad:#x}");
    }
    v.vcpu.regs.rax = 0b11;
    assert_eq!(run(ExitReason::Xsetbv, &v).xcr0, Some(0b11));
}

/// MOV to CR`cr` from RBX (qualification: CR in bits 3:0, GPR 3 in bits 11:8).
fn mov_to_cr(cr: u64, value: u64) -> Effect {
    let mut v = vm();
    v.vcpu.regs.rbx = value;
    let x = Exit {
        qualification: cr | (3 << 8),
        ..exit(ExitReason::CrAccess)
    };
    handle(&x, &v, &mem(), &FakeHost)
}

#[test]
fn cr_writes_hardware_refuses_raise_gp() {
    // The test exit: 64-bit mode, CR0 = PE|ET|NE|PG (shadow without NE), CR4 = PAE.
    let cr0 = 0x8000_0011;
    assert!(is_gp(&mov_to_cr(0, cr0 | (1 << 29))), "NW without CD");
    assert!(is_gp(&mov_to_cr(0, cr0 & !1)), "PG without PE");
    assert!(
        is_gp(&mov_to_cr(0, cr0 & !(1 << 31))),
        "PG cleared in 64-bit mode"
    );
    assert!(is_gp(&mov_to_cr(0, cr0 | 1 << 32)), "bit 32");
    let e = mov_to_cr(0, cr0 | (3 << 29));
    assert!(e
        .vmcs
        .contains(&(VmcsField::Cr0ReadShadow, cr0 | (3 << 29))));
    // CR4: VMXE, PKE and CET are not offered; PAE cannot be cleared in IA-32e mode.
    for bit in [13, 22, 23, 32] {
        assert!(is_gp(&mov_to_cr(4, 0x20 | 1 << bit)), "CR4 bit {bit}");
    }
    assert!(is_gp(&mov_to_cr(4, 0)), "PAE cleared");
    let e = mov_to_cr(4, 0x20 | (1 << 7));
    assert!(e.vmcs.contains(&(VmcsField::Cr4ReadShadow, 0xa0)));
    assert!(
        e.vmcs.contains(&(VmcsField::GuestCr4, 0x20a0)),
        "VMXE forced in the real CR4"
    );
}

#[test]
fn cr8_is_per_vcpu() {
    let e = mov_to_cr(8, 0xa);
    assert_eq!((e.cr8, e.rip_advance), (Some(0xa), 2));
    assert!(is_gp(&mov_to_cr(8, 0x10)), "bits 63:4 are reserved");
    // MOV RSI, CR8 (access type 1): the vCPU's value, not the host's.
    let mut v = vm();
    v.vcpu.cr8 = 0x7;
    v.vcpu.regs.rsi = u64::MAX;
    let x = Exit {
        qualification: 8 | (1 << 4) | (6 << 8),
        ..exit(ExitReason::CrAccess)
    };
    let e = handle(&x, &v, &mem(), &FakeHost);
    assert_eq!((e.regs.rsi, e.rip_advance, e.cr8), (7, 2, None));
    // Into RSP, which lives in the VMCS.
    let x = Exit {
        qualification: 8 | (1 << 4) | (4 << 8),
        ..exit(ExitReason::CrAccess)
    };
    let e = handle(&x, &v, &mem(), &FakeHost);
    assert_eq!(e.vmcs.as_slice(), &[(VmcsField::GuestRsp, 7)]);
}

#[test]
fn hidden_instructions_fault_as_without_the_feature() {
    let v = vm();
    assert!(is_ud(&run(ExitReason::Monitor, &v)));
    assert!(is_ud(&run(ExitReason::Mwait, &v)));
    assert!(is_gp(&run(ExitReason::Rdpmc, &v)));
}

#[test]
fn cpuid_reports_the_guests_own_xsave_state() {
    let mut v = vm();
    v.vcpu.regs.rax = 1;
    // The test exit's CR4 (shadow and real) has no OSXSAVE, although the host's would.
    assert_eq!(run(ExitReason::Cpuid, &v).regs.rcx & (1 << 27), 0);
    let x = Exit {
        cr4: 0x2020 | (1 << 18),
        ..exit(ExitReason::Cpuid)
    };
    let e = handle(&x, &v, &mem(), &FakeHost);
    assert_ne!(e.regs.rcx & (1 << 27), 0, "OSXSAVE follows the guest's CR4");
    v.vcpu.regs.rax = 0xd;
    v.vcpu.regs.rcx = 0;
    let e = run(ExitReason::Cpuid, &v);
    assert_eq!((e.regs.rax, e.regs.rdx, e.regs.rcx), (0b111, 0, 832));
    v.vcpu.regs.rcx = 5;
    assert_eq!(
        run(ExitReason::Cpuid, &v).regs.rax,
        0,
        "no AVX-512 state offered"
    );
}

#[test]
fn the_exit_digest_changes_with_any_field() {
    let x = exit(ExitReason::Hlt);
    let d = x.digest();
    assert_eq!(d, exit(ExitReason::Hlt).digest(), "deterministic");
    let changed = [
        Exit {
            rip: x.rip ^ 0x40,
            ..x
        },
        Exit {
            reason: ExitReason::ExceptionOrNmi,
            ..x
        },
        Exit {
            cr0: x.cr0 ^ 1,
            ..x
        },
        Exit { now_ns: 1, ..x },
        Exit {
            cs_access_rights: 0,
            ..x
        },
        Exit {
            interruption_info: 1 << 31,
            ..x
        },
    ];
    for c in changed {
        assert_ne!(c.digest(), d, "{c:?}");
    }
}

#[test]
fn drastic_decisions_are_recognised_and_compared() {
    let v = vm();
    let halt = run(ExitReason::Hlt, &v);
    assert!(halt.is_drastic(), "HLT with interrupts off halts the VM");
    assert!(halt.same_decision(&run(ExitReason::Hlt, &v)));
    let stop = run(ExitReason::Rsm, &v);
    assert!(stop.is_drastic());
    assert!(!stop.same_decision(&halt));
    assert!(!run(ExitReason::Cpuid, &v).is_drastic());
    assert!(!run(ExitReason::PreemptionTimer, &v).is_drastic());
    // Another RIP in the exit makes another stop reason.
    let x = Exit {
        rip: 0x8,
        ..exit(ExitReason::Rsm)
    };
    assert!(!handle(&x, &v, &mem(), &FakeHost).same_decision(&stop));
}
