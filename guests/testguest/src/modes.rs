//! The modes, kept out of `main.rs` so that it reads as the guest's contract (the lines
//! it prints, which tests parse, and the dispatch) while each mode here can be read on its
//! own.

use core::hint::black_box;

use crate::args::Args;
use crate::console::{until_nul, Text};
use crate::cpu::{self, DescriptorTablePointer};
use crate::once::TakeOnce;
use crate::workload::{self, BUFFER_WORDS};
use crate::{exceptions, hypercall, paging, println};

/// The port the I/O probe writes and reads back: the POST diagnostic port, which no
/// device of a Lazarus VM claims.
const PROBE_PORT: u16 = 0x80;
const PROBE_PORT_VALUE: u8 = 0x5a;
const IA32_TIME_STAMP_COUNTER: u32 = 0x10;
const NO_SUCH_MSR: u32 = 0xdead_beef;
const UNDEFINED_HYPERCALL: u64 = 99;
/// Far outside any VM's RAM, yet a plausible (48-bit) guest-physical address.
const GPA_OUTSIDE_RAM: u64 = 0xffff_0000_0000;

/// One byte over `console_write`'s limit, inside RAM, so that only the length is wrong;
/// printable, in case a hypervisor takes it anyway.
static OVERSIZED: [u8; abi::CONSOLE_WRITE_MAX as usize + 1] =
    [b'.'; abi::CONSOLE_WRITE_MAX as usize + 1];

#[repr(C, align(4096))]
struct WorkBuffer([u64; BUFFER_WORDS]);

static WORK_BUFFER: TakeOnce<WorkBuffer> = TakeOnce::new(WorkBuffer([0; BUFFER_WORDS]));

/// `work`: the probes, then the self-checking loop.
pub fn work(args: &Args) -> ! {
    probes();
    let Some(buffer) = WORK_BUFFER.take() else {
        cpu::halt_forever();
    };
    let mut n: u64 = 1;
    loop {
        if args.iterations.is_some_and(|k| n > k) {
            println!("done seq={}", n - 1);
            hypercall::power_off();
        }
        let written = workload::fill(&mut buffer.0, n);
        // The burn sits between writing and reading back so that the check spans the
        // time (and the VM exits) the burn takes.
        black_box(workload::burn(args.burn, n));
        let read = workload::checksum(black_box(&buffer.0));
        if read == written {
            println!("seq={} sum=0x{:016x} ok", n, read);
            if args.trigger.is_some() && n == args.trigger_after {
                trigger(args);
            }
            if args.inject.is_some() && n == args.trigger_after {
                inject(args);
            }
        } else {
            println!(
                "seq={} sum=0x{:016x} expected=0x{:016x} CORRUPT",
                n, read, written
            );
        }
        n += 1;
    }
}

/// `trigger=KIND`: asks the hypervisor to fail on purpose (test builds of Lazarus only,
/// `triggers=on`) and prints the result once the VM runs again: `trigger KIND result=R`.
fn trigger(args: &Args) {
    let kind = args.trigger.unwrap_or(b"");
    let number = abi::TRIGGERS
        .iter()
        .position(|name| name.as_bytes() == kind)
        .map_or(u64::MAX, |n| n as u64);
    let result = hypercall::trigger(number, args.trigger_count);
    println!("trigger {} result={}", Text(kind), result as i64);
}

/// `inject=TYPE`: arms the hypervisor's fault injector (`inject=on` Lazarus only) and
/// prints the result: `inject TYPE seed=S result=R`.
fn inject(args: &Args) {
    let kind = args.inject.unwrap_or(b"");
    let number = abi::FAULT_TYPES
        .iter()
        .position(|name| name.as_bytes() == kind)
        .map_or(u64::MAX, |n| n as u64);
    let result = hypercall::inject(number, args.inject_seed);
    println!(
        "inject {} seed={} result={}",
        Text(kind),
        args.inject_seed,
        result as i64
    );
}

/// The one-off checks of how the VM sees the machine, each printing what it found.
fn probes() {
    println!("cpuid vendor={}", Text(&cpu::cpuid_vendor()));

    // SAFETY: nothing in a Lazarus VM claims port 0x80; at worst a POST card shows a code.
    let port_value = unsafe {
        cpu::outb(PROBE_PORT, PROBE_PORT_VALUE);
        cpu::inb(PROBE_PORT)
    };
    println!("io port={:#x} in=0x{:02x}", PROBE_PORT, port_value);

    for msr in [IA32_TIME_STAMP_COUNTER, NO_SUCH_MSR] {
        let outcome = match exceptions::try_rdmsr(msr) {
            Some(_) => "ok",
            None => "gp",
        };
        println!("msr {:#x} {}", msr, outcome);
    }

    let unknown = hypercall::undefined(UNDEFINED_HYPERCALL);
    let fault = hypercall::console_write_raw(GPA_OUTSIDE_RAM, 16);
    let invalid = hypercall::console_write(&OVERSIZED);
    println!(
        "hypercall unknown={} fault={} invalid={}",
        unknown as i64, fault as i64, invalid as i64
    );

    let mut name = [0u8; 64];
    let id = hypercall::vm_identity(&mut name);
    println!("identity id={} name={}", id as i64, Text(until_nul(&name)));
}

/// `spin`: no exits at all, forever.
pub fn spin() -> ! {
    println!("spinning");
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// `echo`: reads its serial port (COM1, polled through the line status register) and
/// prints each line it receives, so a test can type into the VM through `vm console`.
pub fn echo() -> ! {
    const COM1: u16 = 0x3f8;
    println!("echo ready");
    let mut line = [0u8; 80];
    let mut len = 0;
    loop {
        // SAFETY: COM1's line status register (LSR, base + 5): bit 0 = data ready. Reading
        // the receive buffer (base + 0) takes the byte; both are the VM's own UART.
        let byte = unsafe {
            if cpu::inb(COM1 + 5) & 1 == 0 {
                continue;
            }
            cpu::inb(COM1)
        };
        match byte {
            b'\r' | b'\n' => {
                println!("echo got={}", Text(&line[..len]));
                len = 0;
            }
            b if len < line.len() => {
                line[len] = b;
                len += 1;
            }
            _ => {}
        }
    }
}

/// `hlt`: halted with interrupts off.
pub fn halt() -> ! {
    println!("halting");
    cpu::halt_forever()
}

/// `wild-write` and `wild-read`: one 8-byte access at guest-physical `addr`.
pub fn wild(write: bool, addr: u64) -> ! {
    let what = if write { "wild-write" } else { "wild-read" };
    println!("{} addr={:#x}", what, addr);
    let Some(address) = paging::map_window(addr) else {
        println!("error cannot map addr={:#x}", addr);
        hypercall::power_off();
    };
    if write {
        // SAFETY: the window maps `addr` writable, and no Rust code uses what is there
        // (inside RAM it may be the guest's own memory, which is the test's business).
        unsafe { cpu::store_u64(address, 0x5741_4c44_5752_4954) };
    } else {
        // SAFETY: the window maps `addr`.
        black_box(unsafe { cpu::load_u64(address) });
    }
    println!("{} survived", what);
    loop {
        core::hint::spin_loop();
    }
}

/// `triple-fault`: an exception with no IDT to deliver it.
pub fn triple_fault() -> ! {
    println!("triple-fault");
    let empty = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: the point is for the breakpoint to find no gate: #BP becomes #GP, then #DF,
    // then a triple fault, which ends the VM.
    unsafe {
        cpu::load_idt(&empty);
        cpu::int3();
    }
    cpu::halt_forever()
}
