//! The in-tree test guest: a small bare-metal program that runs as a Lazarus VM and does
//! one thing per `mode=`, so that end-to-end tests can make a VM behave well, badly or
//! hostilely on demand and read the outcome off the console.
//!
//! It starts as `abi::StartInfo` describes (64-bit, ring 0, interrupts off, guest RAM
//! identity-mapped, RDI pointing at the start info) and trusts as little else as it can:
//! it brings its own stack, zeroes its own .bss, and loads its own GDT, TSS and IDT before
//! anything else, so that even an early fault is reported as a line rather than a silent
//! triple fault.
//!
//! # Arguments
//!
//! `StartInfo::args` holds space-separated `key=value` words; unknown keys are ignored.
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `mode=` | `work`, `spin`, `hlt`, `echo`, `wild-write`, `wild-read`, `triple-fault`, `user-hypercall`, `fuzz` | `work` |
//! | `iterations=K` | `work`: power off after K iterations (decimal) | run forever |
//! | `burn=N` | `work`: N extra rounds of CPU work per iteration (decimal) | 0 |
//! | `addr=0xHEX` | `wild-*`: the guest-physical target (hex, `0x` optional, below 2^52) | required |
//! | `trigger=KIND` | `work`: after iteration `trigger-after`, the `trigger` hypercall with this failure trigger (`abi::TRIGGERS`; the hypervisor needs `triggers=on`) | none |
//! | `trigger-after=N` | `work`: the iteration after which `trigger=` fires (decimal) | 3 |
//! | `trigger-count=C` | `work`: the hypercall's count (recoveries `recovery-fail` makes fail) | 1 |
//! | `inject=TYPE` | `work`: after iteration `trigger-after`, the `inject` hypercall arms the fault injector with this type (`abi::FAULT_TYPES`; the hypervisor needs `inject=on`) | none |
//! | `inject-seed=S` | `work`: the seed for `inject=` (decimal) | 1 |
//! | `seed=S` | `fuzz`: the seed (decimal); operation N depends only on S and N | 1 |
//! | `ops=N` | `fuzz`: the operation number to stop before (decimal) | 10000 |
//! | `fuzz-from=K` | `fuzz`: the first operation run (decimal), for bisection | 0 |
//! | `log=K` | `fuzz`: a progress line every K operations; `1`: every operation is printed before it runs; `0`: none | 1000 |
//! | `mix=safe\|stopping` | `fuzz`: `stopping` ends the run with one operation that stops the VM | `safe` |
//! | `stop=KIND` | `fuzz`: that stopping operation (implies `mix=stopping`; kinds below) | drawn from the seed |
//! | `avoid=NAME,...` | `fuzz`: operation families not to draw (`fuzz::ops::FAMILIES`: `cpuid rdmsr wrmsr in out hypercall cr0 cr3 cr4 cr8 dr drread xsetbv xsave xstate table ltr lldt vmx misc raise step shadow`) | none |
//!
//! # Output
//!
//! Every line below is sent whole, with its `'\n'`, by one `console_write` (the hypervisor
//! adds the VM's name in front). Numbers are decimal unless written `0x...`, which is
//! lowercase hex: `0xHH` has exactly 2 digits, `0xHHHHHHHHHHHHHHHH` exactly 16, and
//! `0x...` as many as needed without leading zeros. Results of hypercalls are printed as
//! signed decimals (`-1` is `Error::Unknown`, `-2` `Fault`, `-3` `Invalid`, `-4`
//! `Permission`). Text from outside (names, arguments, the CPU vendor) is printed with
//! every byte that is not printable ASCII replaced by `?`.
//!
//! In every mode, first:
//!
//! * `start name=NAME id=ID mem=BYTES mode=MODE` (from the start info; MODE as given).
//! * `error bad value KEY=VALUE`, then power-off, if `iterations=`, `burn=`, `addr=`,
//!   `seed=`, `ops=`, `fuzz-from=`, `log=`, `mix=`, `stop=` or `avoid=` does not parse
//!   (or `mode=` is empty).
//! * `error bad start-info magic=0xHHHHHHHHHHHHHHHH`, then power-off, *instead of* the
//!   `start` line if the start info's magic is wrong.
//!
//! `mode=work`, in this order:
//!
//! * `cpuid vendor=VENDOR`: CPUID leaf 0's 12-byte vendor string as the VM sees it.
//! * `io port=0x80 in=0xHH`: the byte read back from port 0x80 after writing 0x5a to it
//!   (an unclaimed port should read `0xff`).
//! * `msr 0x10 ok|gp`, then `msr 0xdeadbeef ok|gp`: whether RDMSR of IA32_TSC and of a
//!   non-existent MSR completed (`ok`) or raised #GP (`gp`). Expected: `ok`, then `gp`.
//! * `hypercall unknown=A fault=B invalid=C`: the results of hypercall number 99,
//!   `console_write(0xffff_0000_0000, 16)` and `console_write` of CONSOLE_WRITE_MAX + 1
//!   bytes inside RAM. Expected: `unknown=-1 fault=-2 invalid=-3`.
//! * `identity id=ID name=NAME`: what `vm_identity` returned (ID, signed) and the name it
//!   wrote into a 64-byte buffer (empty if it wrote none).
//! * Then, for n = 1, 2, 3, ...: `seq=N sum=0xHHHHHHHHHHHHHHHH ok` when the checksum read
//!   back equals the one computed while writing, else
//!   `seq=N sum=0xHHHHHHHHHHHHHHHH expected=0xHHHHHHHHHHHHHHHH CORRUPT` (`sum` is what
//!   was read back, `expected` what was written). In an `ok` line, `sum` must equal
//!   `pattern_checksum(N)` below.
//! * With `trigger=KIND`: `trigger KIND result=R` after line `seq=N` for N =
//!   `trigger-after`, once the hypervisor has failed and recovered (R = 0), or at once
//!   with the error (`-1` when triggers are off, `-3` for an unknown KIND or bad count).
//!   Never for `bad-entry` with triggers on: every later entry of the VM fails, and
//!   recovery stops it.
//! * With `inject=TYPE`: `inject TYPE seed=S result=R` after line `seq=N` for N =
//!   `trigger-after` (R = 0 when armed, `-1` when the injector is off, `-3` for an
//!   unknown TYPE).
//! * With `iterations=K`: `done seq=K` after line `seq=K`, then power-off (`done seq=0`
//!   at once for K = 0).
//!
//! Other modes:
//!
//! * `spin`: `spinning`, then a tight loop with interrupts off and no VM exit.
//! * `hlt`: `halting`, then CLI; HLT forever.
//! * `echo`: `echo ready`, then for every line received on COM1 (polled; CR or LF ends
//!   a line, at most 80 bytes kept) `echo got=TEXT`.
//! * `wild-write`: `wild-write addr=0x...`, then an 8-byte write at guest-physical ADDR
//!   (mapped through a window in PML4 slot 511); if the write completes,
//!   `wild-write survived` and a spin loop. Without `addr=`: `error missing addr`, then
//!   power-off.
//! * `wild-read`: the same with a read: `wild-read addr=0x...`, then `wild-read survived`.
//! * `triple-fault`: `triple-fault`, then INT3 with an empty IDT.
//! * `user-hypercall`: `user-hypercall`; ring-3 code then calls `console_write` on the
//!   text `user-hypercall leaked` (so that line appearing means the hypervisor let it
//!   through), stores the result and executes UD2; the #UD handler prints
//!   `user-hypercall result=N` (expected `-4`), or `user-hypercall result=none` if the
//!   hypercall never returned, and halts.
//! * `fuzz` (module `fuzz`): N pseudo-random hostile operations (CPUID, RDMSR/WRMSR,
//!   IN/OUT to the device models' ports and others, hypercalls, MOV to CR0/CR3/CR4/CR8
//!   and the debug registers, XSETBV, XSAVE/XRSTOR, LGDT/LIDT/LTR/LLDT, the VMX
//!   instructions, INVD, WBINVD, RDPMC, RDRAND, RDTSCP, MONITOR/MWAIT, deliberate
//!   exceptions, single-stepping over exiting instructions, interrupt-flag and
//!   interrupt-shadow games). Each runs guarded (a fault resumes after it), is checked
//!   against what hardware and the README say the guest should see, and is undone
//!   (control registers, XCR0, MSRs, tables, TR). Interrupts and INT n (vectors 32-255)
//!   are counted and acknowledged. Lines, in order:
//!   * `fuzz start seed=S from=K ops=N mix=safe|stopping log=L avoid=LIST|none
//!     xcr0=0x... cr4=0x...` (the XCR0 and CR4 the operations start from);
//!   * with `log=L` over 1: `fuzz seed=S op=M hash=0xHHHHHHHHHHHHHHHH` before operation
//!     M, for each M > K that is a multiple of L: a hash (FNV-1a 64) of the outcomes of
//!     the operations run so far (exceptions and values that do not depend on time), equal
//!     between two runs of the same S, K and build;
//!   * with `log=1`: `fuzz op=M DESCRIPTION` before operation M (e.g. `fuzz op=17
//!     wrmsr msr=0xc0000100 value=0x8000000000000000`);
//!   * `fuzz unexpected op=M what=WHAT DETAIL in: DESCRIPTION` when the outcome differs
//!     from the model (the first 64 of a run): WHAT is `fault` (`want=#GP|#UD|none|...
//!     got=#GP(0xERR)|none|...`), `readback`, `in-rax`, `hypercall-result`,
//!     `hypercall-registers`, `vm-identity-name`, `cr8-kept`, `dr-kept`, `xgetbv`,
//!     `xcr0-kept`, `xstate-lost`, `table-readback`, `str`, `rdtscp-aux`, `rdpid`,
//!     `pf-error-code`, `cr2`, `cr2-kept`, `single-step`, `cpuid`, `xsave`, `xrstor`,
//!     `restore` or `restore-*` (WANT and GOT as `want=0x... got=0x...` for values).
//!     Each is a hypervisor bug (or a model mistake) to look at;
//!   * `fuzz done seed=S from=K ops=COUNT gp=G ud=U other=O unexpected=X interrupts=I
//!     hash=0xHHHHHHHHHHHHHHHH` (COUNT operations run; G, U, O the #GP, #UD and other
//!     exceptions they raised; X the unexpected outcomes; I the interrupts taken);
//!   * then, in the safe mix, power-off; in the stopping mix `fuzz stop op=N what=KIND`
//!     and the stopping operation: KIND is `string-io` (OUTSB to port 0x80), `ept-read`,
//!     `ept-write` (outside RAM), `cr3-outside` (CR3 outside RAM), `triple-fault`, `halt`
//!     (CLI; HLT), `power-off`, `reset-i8042` (command 0xFE), `reset-output-port`
//!     (command 0xD1, data 0x00), `reset-92`, `reset-92-word` (a 16-bit OUT), `reset-cf9`;
//!     should the VM survive it, `fuzz unexpected op=N what=stop-survived kind=KIND` and
//!     power-off.
//!
//!   Output from the fuzzed UART and `console_write` of the top page of RAM (filled with
//!   `.`) may appear as other `[NAME]` lines; each fuzz line starts on a line of its own.
//! * Any other mode: `error unknown mode=MODE`, then power-off.
//!
//! At any time:
//!
//! * `exception vector=N rip=0x...`: an unexpected CPU exception (N decimal), or an
//!   interrupt (N 32-255) outside `mode=fuzz`; the guest then halts (CLI; HLT forever).
//! * `panic at FILE:LINE:COL: MESSAGE`: a bug in the guest; it then halts.
//!
//! # The work checksum
//!
//! Iteration n fills a 64 KiB buffer with 8192 64-bit words from xorshift64 seeded with n:
//! the state starts at n, each word is the new state after one step
//! `x ^= x << 13; x ^= x >> 7; x ^= x << 17` (64-bit, shifts discard bits), and each word
//! is stored little-endian. The checksum is 64-bit FNV-1a over the 65536 bytes in address
//! order: `h = 0xcbf29ce484222325`, then for each byte `h = (h ^ byte) * 0x100000001b3`
//! (wrapping). This is [`workload::pattern_checksum`]. Between writing and reading back,
//! `burn=N` runs N x 8192 further xorshift64 steps, on registers only.
#![no_std]
#![no_main]

mod args;
mod console;
mod cpu;
mod exceptions;
mod fuzz;
mod gdt;
mod hypercall;
mod modes;
mod once;
mod paging;
mod usermode;
mod workload;

use abi::{StartInfo, START_INFO_MAGIC};
use console::{until_nul, Text};

const BOOT_STACK_BYTES: usize = 64 * 1024;

// The entry point. Lazarus's RSP is not trusted (a test may give the VM odd RAM sizes),
// so the stack is ours, in .bss. `rep stosb` zeroes .bss (the stack included, which is
// still empty) without touching the stack; RDI, the start info, waits in R12.
core::arch::global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + lz_boot_stack_top]",
    "    mov r12, rdi",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __bss_end]",
    "    sub rcx, rdi",
    "    xor eax, eax",
    "    cld",
    "    rep stosb",
    "    mov rdi, r12",
    "    xor ebp, ebp",
    "    call {main}",
    "lz_start_halt:",
    "    cli",
    "    hlt",
    "    jmp lz_start_halt",
    "",
    ".section .bss.lz_boot_stack, \"aw\", @nobits",
    ".balign 16",
    "    .skip {stack_bytes}",
    "lz_boot_stack_top:",
    main = sym main,
    stack_bytes = const BOOT_STACK_BYTES,
);

extern "sysv64" fn main(info: &'static StartInfo) -> ! {
    gdt::init();
    exceptions::init();

    if info.magic != START_INFO_MAGIC {
        println!("error bad start-info magic=0x{:016x}", info.magic);
        hypercall::power_off();
    }
    let args = args::parse(until_nul(&info.args));
    println!(
        "start name={} id={} mem={} mode={}",
        Text(until_nul(&info.name)),
        info.vm_id,
        info.mem_size,
        Text(args.mode)
    );
    if let Some(bad) = args.bad {
        println!("error bad value {}={}", Text(bad.key), Text(bad.value));
        hypercall::power_off();
    }

    match args.mode {
        b"work" => modes::work(&args),
        b"spin" => modes::spin(),
        b"hlt" => modes::halt(),
        b"echo" => modes::echo(),
        b"wild-write" | b"wild-read" => {
            let Some(addr) = args.addr else {
                println!("error missing addr");
                hypercall::power_off();
            };
            modes::wild(args.mode == b"wild-write", addr)
        }
        b"triple-fault" => modes::triple_fault(),
        b"user-hypercall" => usermode::run(),
        b"fuzz" => fuzz::run(info, &args),
        other => {
            println!("error unknown mode={}", Text(other));
            hypercall::power_off();
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => println!(
            "panic at {}:{}:{}: {}",
            at.file(),
            at.line(),
            at.column(),
            info.message()
        ),
        None => println!("panic at ?: {}", info.message()),
    }
    cpu::halt_forever()
}
