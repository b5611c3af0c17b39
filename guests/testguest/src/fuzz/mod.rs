//! `mode=fuzz`: the test guest as a hostile guest, for fuzzing the hypervisor.
//!
//! The point is to find the guest actions that make Lazarus fail (a `hypervisor failure`
//! line and a recovery), harm another VM, or show the guest something a real processor or
//! the README would not. The guest runs `ops=N` pseudo-random operations drawn from a
//! seed ([`ops::generate`]: CPUID, MSRs, port I/O, hypercalls, control and debug
//! registers, XCR0 and XSAVE, descriptor tables, VMX instructions, odd instructions,
//! deliberate exceptions, interrupt-flag games), each a small guarded instruction
//! sequence ([`guard`]) so that its own faults do not stop it, each checked against a
//! model of what it should do ([`model`]), and each restored afterwards so that one
//! operation's effects do not hide in the next one's.
//!
//! A failure must be found again by bisection: operation N depends only on the seed and
//! N ([`rng`]), `fuzz-from=K` starts at K, `log=K` prints a progress line with a running
//! hash every K operations, and `log=1` prints every operation before running it. The
//! lines are listed in `main.rs` (the guest's contract).
//!
//! `mix=stopping` (or `stop=KIND`) ends the run with one operation the README documents
//! as stopping a VM ([`stop`]), so a test can check that the documented line follows.
//! `mix=regress` runs, instead of drawn operations, the fixed list of [`regress`]: each
//! hostile operation of issue 11's review once.

pub mod guard;
mod insn;
mod model;
mod ops;
mod regress;
mod rng;
mod run;
mod stop;

use crate::args::Args;
use crate::console::until_nul;
use crate::once::TakeOnce;
use crate::{hypercall, println};
use abi::StartInfo;

pub use ops::families;
pub use stop::KINDS as STOP_KINDS;

/// Bytes in the XSAVE buffers (Skylake-SP with AVX-512 needs 2696).
const XSAVE_BYTES: usize = 8192;

#[repr(C, align(4096))]
struct Page([u8; 4096]);

#[repr(C, align(4096))]
struct XsaveArea([u8; XSAVE_BYTES]);

static SCRATCH: TakeOnce<Page> = TakeOnce::new(Page([0; 4096]));
static XSAVE_A: TakeOnce<XsaveArea> = TakeOnce::new(XsaveArea([0; XSAVE_BYTES]));
static XSAVE_B: TakeOnce<XsaveArea> = TakeOnce::new(XsaveArea([0; XSAVE_BYTES]));

/// What the guest restores after every operation.
#[derive(Clone, Copy)]
pub struct Baseline {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub xcr0: u64,
    pub efer: u64,
    pub gdt: insn::TablePointer,
    pub idt: insn::TablePointer,
}

/// Everything an operation needs to know about its VM.
pub struct Ctx {
    pub f: model::Features,
    pub mem: u64,
    pub id: u64,
    pub name: [u8; 32],
    pub name_len: u64,
    pub base: Baseline,
    /// A page of the fuzzer's own (memory operands, `vm_identity` target).
    pub scratch: u64,
    /// The top page of RAM, filled with '.': what `console_write` prints.
    pub filler: u64,
    pub xsave_a: u64,
    pub xsave_b: u64,
}

/// Counts and the running hash of one run.
#[derive(Default)]
pub struct Tally {
    pub gp: u64,
    pub ud: u64,
    pub other: u64,
    pub unexpected: u64,
    pub hash: u64,
    /// Something without a newline may sit in the VM's console line (UART output,
    /// `console_write` of the filler): the next line starts with one.
    pub dirty: bool,
}

impl Tally {
    /// FNV-1a 64 of `value`'s bytes into the running hash.
    pub fn mix(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.hash = (self.hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The most `fuzz unexpected` lines one run prints (all are counted).
const UNEXPECTED_LINES: u64 = 64;

pub fn run(info: &StartInfo, args: &Args) -> ! {
    let mut name = [0u8; 32];
    let given = until_nul(&info.name);
    name[..given.len()].copy_from_slice(given);
    let (Some(scratch), Some(xa), Some(xb)) = (SCRATCH.take(), XSAVE_A.take(), XSAVE_B.take())
    else {
        crate::cpu::halt_forever();
    };
    let f = model::Features::probe();
    let base = run::set_baseline(&f);
    let filler = info.mem_size - 4096;
    // SAFETY: the top page of RAM is not the guest's (its image and stacks are at 1 MiB,
    // Lazarus's start-up tables and start info below 64 KiB; `run` checks below that the
    // image ends before it).
    unsafe { core::ptr::write_bytes(filler as *mut u8, b'.', 4096) };
    let ctx = Ctx {
        f,
        mem: info.mem_size,
        id: info.vm_id,
        name,
        name_len: given.len() as u64,
        base,
        scratch: scratch.0.as_mut_ptr() as u64,
        filler,
        xsave_a: xa.0.as_mut_ptr() as u64,
        xsave_b: xb.0.as_mut_ptr() as u64,
    };
    let seed = args.seed;
    let from = args.fuzz_from;
    let regressions = args.mix == b"regress";
    let end = if regressions {
        regress::COUNT
    } else {
        args.ops.max(from)
    };
    let stopping = args.stop.is_some() || args.mix == b"stopping";
    let avoid = families(args.avoid).unwrap_or(0);
    println!(
        "fuzz start seed={} from={} ops={} mix={} log={} avoid={} xcr0=0x{:x} cr4=0x{:x}",
        seed,
        from,
        end,
        if stopping {
            "stopping"
        } else if regressions {
            "regress"
        } else {
            "safe"
        },
        args.log,
        if args.avoid.is_empty() {
            "none"
        } else {
            core::str::from_utf8(args.avoid).unwrap_or("?")
        },
        base.xcr0,
        base.cr4
    );
    guard::activate();
    let mut tally = Tally::default();
    for n in from..end {
        if args.log > 1 && n % args.log == 0 && n != from {
            line_start(&mut tally);
            println!("fuzz seed={} op={} hash=0x{:016x}", seed, n, tally.hash);
        }
        let op = if regressions {
            regress::op(n, seed, &ctx)
        } else {
            ops::generate(seed, n, &ctx, avoid)
        };
        if args.log == 1 {
            line_start(&mut tally);
            println!("fuzz op={} {}", n, op);
        }
        run::execute(n, &op, &ctx, &mut tally);
        run::restore(n, &op, &ctx, &mut tally);
    }
    line_start(&mut tally);
    println!(
        "fuzz done seed={} from={} ops={} gp={} ud={} other={} unexpected={} interrupts={} hash=0x{:016x}",
        seed,
        from,
        end - from,
        tally.gp,
        tally.ud,
        tally.other,
        tally.unexpected,
        guard::interrupts(),
        tally.hash
    );
    if stopping {
        stop::run(seed, end, args.stop, &ctx)
    }
    hypercall::power_off()
}

/// Ends whatever the console line holds, so the next line is whole.
pub fn line_start(tally: &mut Tally) {
    if core::mem::take(&mut tally.dirty) {
        hypercall::console_write(b"\n");
    }
}

/// One `fuzz unexpected op=N what=WHAT DETAIL in: OP` line (the first
/// [`UNEXPECTED_LINES`] of a run).
pub fn unexpected(
    tally: &mut Tally,
    n: u64,
    op: &ops::Op,
    what: &str,
    detail: core::fmt::Arguments,
) {
    tally.unexpected += 1;
    if tally.unexpected <= UNEXPECTED_LINES {
        line_start(tally);
        println!(
            "fuzz unexpected op={} what={} {} in: {}",
            n, what, detail, op
        );
    }
}
