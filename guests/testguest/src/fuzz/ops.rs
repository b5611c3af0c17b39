//! The operations: what each one is ([`Op`]), how operation N of a seed is drawn
//! ([`generate`]), and its one-line description (`Display`), which is what
//! `log=1` prints before running it and what a `fuzz unexpected` line quotes.

use core::fmt;

use super::insn::{Exiting, Misc, Raise, Shadow, Window, Xsave, INT_VECTORS, VMX_INSNS};
use super::model::{self, DEVICE_PORTS, INTERESTING_MSRS};
use super::rng::{self, Rng};
use super::Ctx;

#[derive(Clone, Copy, Debug)]
pub enum Op {
    Cpuid {
        leaf: u32,
        subleaf: u32,
    },
    Rdmsr {
        msr: u32,
    },
    Wrmsr {
        msr: u32,
        value: u64,
    },
    In {
        port: u16,
        width: u8,
    },
    Out {
        port: u16,
        width: u8,
        value: u32,
    },
    Hypercall {
        nr: u64,
        a0: u64,
        a1: u64,
        a2: u64,
    },
    Cr0 {
        value: u64,
    },
    Cr3 {
        value: u64,
    },
    Cr4 {
        value: u64,
    },
    /// MOV to CR8, then (with `exit`) a `yield`, then CR8 read back.
    Cr8 {
        value: u64,
        exit: bool,
    },
    /// MOV to DRn, a `yield` (the other VMs run), DRn read back.
    Dr {
        reg: u8,
        value: u64,
    },
    /// MOV from DR4/DR5 (aliases of DR6/DR7 with CR4.DE clear).
    DrRead {
        reg: u8,
    },
    /// XSETBV, XGETBV read back, then (with `exit`) a `yield` with that XCR0.
    Xsetbv {
        xcr: u32,
        value: u64,
        exit: bool,
    },
    /// XSAVE/XSAVEOPT with `mask`, or XRSTOR of a fresh image spoiled as `spoil` says.
    Xsave {
        kind: Xsave,
        mask: u64,
        spoil: u8,
        bits: u64,
    },
    /// SSE/AVX/AVX-512 registers loaded with a pattern, a `yield`, then compared.
    XstateKeep {
        pattern: u64,
    },
    Table {
        idt: bool,
        limit: u16,
        base: u64,
        window: Window,
    },
    Ltr {
        selector: u16,
    },
    Lldt {
        selector: u16,
    },
    Vmx {
        which: u8,
        a: u64,
        c: u64,
    },
    Misc {
        which: Misc,
        a: u64,
        c: u64,
    },
    Raise {
        what: Raise,
        arg: u64,
    },
    Step {
        what: Exiting,
    },
    Shadow {
        what: Shadow,
        flags: u64,
    },
}

/// How `spoil` spoils an XRSTOR image (0: not at all).
pub const SPOIL_NAMES: [&str; 6] = [
    "none",
    "xstate-bv",
    "xcomp-bv",
    "header",
    "mxcsr",
    "misaligned",
];

/// Operation `op` of `seed`: a pure function of the two and the VM (its RAM size and
/// processor features), so a replay draws the same operation.
/// The operation families, by the name `avoid=` uses, with their weights.
pub const FAMILIES: [(&str, u64); 23] = [
    ("cpuid", 6),
    ("rdmsr", 8),
    ("wrmsr", 14),
    ("in", 8),
    ("out", 9),
    ("hypercall", 10),
    ("cr0", 5),
    ("cr3", 2),
    ("cr4", 5),
    ("cr8", 3),
    ("dr", 4),
    ("drread", 1),
    ("xsetbv", 4),
    ("xsave", 3),
    ("xstate", 1),
    ("table", 4),
    ("ltr", 2),
    ("lldt", 1),
    ("vmx", 5),
    ("misc", 5),
    ("raise", 4),
    ("step", 2),
    ("shadow", 3),
];

/// A set of families (bit i: `FAMILIES[i]`).
pub type FamilySet = u32;

/// Parses `avoid=` (comma-separated family names); `None` for an unknown name.
pub fn families(list: &[u8]) -> Option<FamilySet> {
    let mut set = 0;
    for name in list.split(|&b| b == b',').filter(|n| !n.is_empty()) {
        let i = FAMILIES.iter().position(|f| f.0.as_bytes() == name)?;
        set |= 1 << i;
    }
    Some(set)
}

pub fn generate(seed: u64, op: u64, ctx: &Ctx, avoid: FamilySet) -> Op {
    let mut r = Rng::for_op(seed, op, 0);
    let total: u64 = FAMILIES
        .iter()
        .enumerate()
        .filter(|(i, _)| avoid & (1 << i) == 0)
        .map(|(_, f)| f.1)
        .sum();
    let mut pick = r.below(total.max(1));
    let mut family = 0;
    for (i, (_, w)) in FAMILIES.iter().enumerate() {
        if avoid & (1 << i) != 0 {
            continue;
        }
        if pick < *w {
            family = i;
            break;
        }
        pick -= w;
    }
    match family {
        0 => Op::Cpuid {
            leaf: match r.below(6) {
                0 => r.below(0x20) as u32,
                1 => 0xd,
                2 => 0x4000_0000 + r.below(0x10) as u32,
                3 => 0x8000_0000 + r.below(0x20) as u32,
                4 => r.pick(&[7, 0xb, 0x1f, 0x4fff_ffff, 0xffff_ffff, 0x8fff_ffff]),
                _ => r.next() as u32,
            },
            subleaf: if r.one_in(3) {
                r.next() as u32
            } else {
                r.below(64) as u32
            },
        },
        1 => Op::Rdmsr {
            msr: msr_index(&mut r),
        },
        2 => {
            let msr = msr_index(&mut r);
            Op::Wrmsr {
                msr,
                value: msr_value(&mut r, msr, ctx),
            }
        }
        3 => Op::In {
            port: port(&mut r),
            width: r.pick(&[1, 2, 4]),
        },
        4 => {
            let port = port(&mut r);
            let width = r.pick(&[1, 2, 4]);
            let value = sanitize_out(port, width, r.value() as u32);
            Op::Out { port, width, value }
        }
        5 => hypercall(&mut r, ctx),
        6 => {
            let mut flip = 0;
            for bit in [0, 1, 2, 3, 5, 16, 18, 29, 30, 31] {
                if r.one_in(6) {
                    flip |= 1 << bit;
                }
            }
            if r.one_in(8) {
                flip |= 1 << (32 + r.below(32));
            }
            if r.one_in(8) {
                flip |= 1 << r.pick(&[4, 6, 7, 12, 15, 17, 19, 24, 28]);
            }
            Op::Cr0 {
                value: ctx.base.cr0 ^ flip,
            }
        }
        7 => {
            let mut value = ctx.base.cr3 ^ (r.below(4) << 3);
            if r.one_in(4) {
                let bits = u64::from(ctx.f.phys_bits);
                value |= 1 << (bits + r.below(63 - bits));
            }
            if r.one_in(6) {
                value |= 1 << 63;
            }
            Op::Cr3 { value }
        }
        8 => {
            let mut flip = 0;
            for bit in 0..29 {
                if r.one_in(10) {
                    flip |= 1 << bit;
                }
            }
            if r.one_in(10) {
                flip |= 1 << (32 + r.below(32));
            }
            if r.one_in(10) {
                flip |= 1 << 15;
            }
            Op::Cr4 {
                value: ctx.base.cr4 ^ flip,
            }
        }
        9 => Op::Cr8 {
            value: if r.one_in(4) { r.value() } else { r.below(16) },
            exit: r.one_in(2),
        },
        10 => {
            let reg = r.pick(&[0, 1, 2, 3, 6, 7, 7]);
            let value = match reg {
                6 | 7 if r.one_in(6) => r.value() | 1 << (32 + r.below(32)),
                // Breakpoint enables and types, LE/GE, never GD (bit 13) or RTM (11).
                7 => (r.next() & 0xffff_03ff) | 0x400,
                6 => r.next() & 0xffff_ffff,
                _ => r.value(),
            };
            Op::Dr { reg, value }
        }
        11 => Op::DrRead {
            reg: r.pick(&[4, 5]),
        },
        12 => {
            let s = ctx.f.xcr0_supported;
            let value = match r.below(8) {
                0..=3 => (s & r.next()) | 1,
                4 | 5 => s & r.next(),
                6 => s | 1 << r.below(64),
                _ => r.value(),
            };
            let xcr = if r.one_in(8) {
                r.pick(&[1, 2, 0xffff_ffff])
            } else {
                0
            };
            Op::Xsetbv {
                xcr,
                value,
                exit: r.one_in(2),
            }
        }
        13 => Op::Xsave {
            kind: r.pick(&[Xsave::Xsave, Xsave::Xsaveopt, Xsave::Xrstor, Xsave::Xrstor]),
            mask: match r.below(4) {
                0 => u64::MAX,
                1 => r.value(),
                _ => r.next() & 0x2ff,
            },
            spoil: if r.one_in(2) { 0 } else { 1 + r.below(5) as u8 },
            bits: r.next(),
        },
        14 => Op::XstateKeep { pattern: r.next() },
        15 => Op::Table {
            idt: r.one_in(2),
            limit: r.next() as u16,
            base: if r.one_in(4) {
                rng::non_canonical(r.next())
            } else {
                r.value()
            },
            window: if r.one_in(2) {
                Window::Store
            } else {
                Window::Yield
            },
        },
        16 => Op::Ltr {
            selector: if r.one_in(3) {
                r.next() as u16
            } else {
                r.pick(&[
                    0, 0x08, 0x10, 0x18, 0x20, 0x28, 0x2c, 0x30, 0x38, 0x3b, 0x3c, 0x40, 0x48,
                ])
            },
        },
        17 => Op::Lldt {
            selector: if r.one_in(2) {
                r.next() as u16
            } else {
                r.pick(&[0, 3, 4, 0x28, 0x38])
            },
        },
        18 => Op::Vmx {
            which: r.below(VMX_INSNS.len() as u64) as u8,
            a: r.value(),
            c: r.value(),
        },
        19 => {
            let which = r.pick(&[
                Misc::Invd,
                Misc::Wbinvd,
                Misc::Rdpmc,
                Misc::Rdrand,
                Misc::Rdseed,
                Misc::Rdtscp,
                Misc::Rdpid,
                Misc::Monitor,
                Misc::Mwait,
                Misc::Clflush,
                Misc::Invlpg,
                Misc::Swapgs,
                Misc::Wrfsbase,
                Misc::Xgetbv,
                Misc::Pause,
            ]);
            let c = match which {
                Misc::Rdpmc => {
                    let any = r.next() & 0xffff_ffff;
                    r.pick(&[0, 1, 2, 3, 1 << 30, (1 << 30) | 1, any])
                }
                Misc::Xgetbv => {
                    let any = r.next() & 0xffff_ffff;
                    r.pick(&[0, 1, 1, any])
                }
                Misc::Monitor | Misc::Mwait => 0,
                _ => r.value(),
            };
            let a = if which == Misc::Mwait { 0 } else { r.value() };
            Op::Misc { which, a, c }
        }
        20 => {
            let what = r.pick(&[
                Raise::Ud2,
                Raise::Int3,
                Raise::Icebp,
                Raise::Into,
                Raise::DivideByZero,
                Raise::Read,
                Raise::Write,
                Raise::Read,
                Raise::Write,
                Raise::Int,
                Raise::Int,
                Raise::DeviceNotAvailable,
            ]);
            let arg = match what {
                Raise::Read | Raise::Write => {
                    if r.one_in(3) {
                        rng::non_canonical(r.next())
                    } else {
                        // Beyond RAM, below 512 GiB: not present in the start-up tables.
                        (ctx.mem + r.below((1 << 39) - ctx.mem)) & !7
                    }
                }
                Raise::Int => r.below(INT_VECTORS.len() as u64),
                _ => 0,
            };
            Op::Raise { what, arg }
        }
        21 => Op::Step {
            what: r.pick(&[
                Exiting::Nop,
                Exiting::Cpuid,
                Exiting::Out80,
                Exiting::Rdmsr,
                Exiting::Yield,
            ]),
        },
        _ => Op::Shadow {
            what: r.pick(&[
                Shadow::StiNop,
                Shadow::StiHlt,
                Shadow::StiCpuid,
                Shadow::MovSsCpuid,
                Shadow::MovSsYield,
                Shadow::PopfCpuid,
                Shadow::PopfCpuid,
            ]),
            flags: r.next(),
        },
    }
}

fn msr_index(r: &mut Rng) -> u32 {
    match r.below(4) {
        0 | 1 => r.pick(&INTERESTING_MSRS),
        2 => r
            .pick(&INTERESTING_MSRS)
            .wrapping_add(r.below(5) as u32)
            .wrapping_sub(2),
        _ => r.next() as u32,
    }
}

fn msr_value(r: &mut Rng, msr: u32, ctx: &Ctx) -> u64 {
    match model::msr(msr) {
        model::Msr::Pat if r.one_in(2) => {
            let mut v = 0u64;
            for i in 0..8 {
                v |= r.pick(&[0u64, 1, 4, 5, 6, 7]) << (8 * i);
            }
            v
        }
        model::Msr::Efer if r.one_in(2) => {
            let mut v = ctx.base.efer;
            for bit in [0, 8, 10, 11] {
                if r.one_in(3) {
                    v ^= 1 << bit;
                }
            }
            v
        }
        model::Msr::Address | model::Msr::Cstar if r.one_in(2) => rng::canonical(r.next()),
        model::Msr::TscAux if r.one_in(2) => r.next() & 0xffff_ffff,
        _ => r.value(),
    }
}

fn port(r: &mut Rng) -> u16 {
    match r.below(8) {
        0..=3 => r.pick(&DEVICE_PORTS),
        4 => r
            .pick(&DEVICE_PORTS)
            .wrapping_add(r.below(7) as u16)
            .wrapping_sub(3),
        5 => r.pick(&[
            0x80, 0xe9, 0x3fb, 0x3fc, 0x402, 0xb000, 0xfffc, 0xfffe, 0xffff,
        ]),
        _ => r.next() as u16,
    }
}

/// In the safe mix, keeps an OUT from asking for a reset (README "VMs": i8042 command
/// 0xFE and the pulse commands with bit 0 clear, the i8042 output port with bit 0 clear,
/// port 0x92 bit 0, port 0xcf9 bit 2): the bit that resets is forced to its other value,
/// the rest of the value stays random.
pub fn sanitize_out(port: u16, width: u8, value: u32) -> u32 {
    let mut bytes = value.to_le_bytes();
    for (i, byte) in bytes.iter_mut().enumerate().take(usize::from(width)) {
        match port.wrapping_add(i as u16) {
            0x64 if *byte >= 0xf0 => *byte |= 1,
            // Data after command 0xD1 is the output port: keep bit 0 (reset) high.
            0x60 => *byte |= 1,
            0x92 => *byte &= !1,
            0xcf9 if !(port == 0xcf8 && width == 4) => *byte &= !4,
            _ => {}
        }
    }
    u32::from_le_bytes(bytes)
}

fn hypercall(r: &mut Rng, ctx: &Ctx) -> Op {
    let any = r.next();
    let nr = r.pick(&[
        0,
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        4,
        5,
        6,
        99,
        1 << 32,
        1 << 63,
        u64::MAX,
        any,
    ]);
    let mem = ctx.mem;
    let (a0, a1) = match nr {
        0 => {
            let len = match r.below(12) {
                0 => 0,
                1 => 1,
                2..=5 => r.below(64),
                6 => r.below(4097),
                7 => abi::CONSOLE_WRITE_MAX,
                8 => abi::CONSOLE_WRITE_MAX + 1,
                9 => r.pick(&[u64::MAX, 1 << 63, mem, mem + 1, 1 << 32]),
                _ => r.below(256),
            };
            let short = len.min(4096);
            let gpa = match r.below(9) {
                0 | 1 => ctx.filler + r.below(4096 - short + 1),
                2 => mem.wrapping_sub(short),
                3 => mem.wrapping_sub(short) + 1 + r.below(8),
                4 => {
                    let near = mem + r.below(0x10000);
                    r.pick(&[mem, near, 0xffff_0000_0000, 1 << 52, 1 << 63])
                }
                5 => u64::MAX - r.below(16),
                // The start of RAM (the start-up page tables): a short look only.
                6 => {
                    return Op::Hypercall {
                        nr,
                        a0: r.below(64),
                        a1: r.below(33),
                        a2: r.value(),
                    }
                }
                _ => r.value(),
            };
            (gpa, len)
        }
        1 => {
            let need = ctx.name_len + 1;
            let gpa = match r.below(8) {
                0 => 0,
                1 | 2 => ctx.scratch,
                3 => mem - need,
                4 => mem - need + 1 + r.below(need),
                5 => {
                    let top = u64::MAX - r.below(16);
                    r.pick(&[mem, mem + 4096, top, 1 << 63])
                }
                _ => r.value(),
            };
            let small = r.below(32);
            let len = r.pick(&[0, ctx.name_len, need, need, 64, 4096, u64::MAX, small]);
            (writable_target(ctx, gpa, need), len)
        }
        4 => (r.value(), 0),  // trigger with count 0: invalid even where enabled
        5 => (99, r.value()), // inject of no fault type: invalid even where enabled
        _ => (r.value(), r.value()),
    };
    Op::Hypercall {
        nr,
        a0,
        a1,
        a2: r.value(),
    }
}

/// `vm_identity` writes the name: inside RAM, only into the fuzzer's scratch buffer or the
/// top page of RAM (which the guest does not use) may it land.
fn writable_target(ctx: &Ctx, gpa: u64, need: u64) -> u64 {
    let inside = gpa.checked_add(need).is_some_and(|end| end <= ctx.mem);
    let safe = gpa == 0
        || !inside
        || (gpa >= ctx.filler)
        || (gpa >= ctx.scratch && gpa + need <= ctx.scratch + 4096);
    if safe {
        gpa
    } else {
        ctx.scratch
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Cpuid { leaf, subleaf } => write!(f, "cpuid leaf={leaf:#x} subleaf={subleaf:#x}"),
            Op::Rdmsr { msr } => write!(f, "rdmsr msr={msr:#x}"),
            Op::Wrmsr { msr, value } => write!(f, "wrmsr msr={msr:#x} value={value:#x}"),
            Op::In { port, width } => write!(f, "in port={port:#x} width={width}"),
            Op::Out { port, width, value } => {
                write!(f, "out port={port:#x} width={width} value={value:#x}")
            }
            Op::Hypercall { nr, a0, a1, a2 } => {
                write!(
                    f,
                    "hypercall nr={nr:#x} rdi={a0:#x} rsi={a1:#x} rdx={a2:#x}"
                )
            }
            Op::Cr0 { value } => write!(f, "mov-cr0 value={value:#x}"),
            Op::Cr3 { value } => write!(f, "mov-cr3 value={value:#x}"),
            Op::Cr4 { value } => write!(f, "mov-cr4 value={value:#x}"),
            Op::Cr8 { value, exit } => write!(f, "mov-cr8 value={value:#x} yield={}", exit as u8),
            Op::Dr { reg, value } => write!(f, "mov-dr{reg} value={value:#x}"),
            Op::DrRead { reg } => write!(f, "read-dr{reg}"),
            Op::Xsetbv { xcr, value, exit } => {
                write!(
                    f,
                    "xsetbv xcr={xcr:#x} value={value:#x} yield={}",
                    exit as u8
                )
            }
            Op::Xsave {
                kind,
                mask,
                spoil,
                bits,
            } => write!(
                f,
                "{} mask={mask:#x} spoil={} bits={bits:#x}",
                match kind {
                    Xsave::Xsave => "xsave",
                    Xsave::Xsaveopt => "xsaveopt",
                    Xsave::Xrstor => "xrstor",
                },
                SPOIL_NAMES[usize::from(spoil)]
            ),
            Op::XstateKeep { pattern } => write!(f, "xstate-keep pattern={pattern:#x}"),
            Op::Table {
                idt,
                limit,
                base,
                window,
            } => write!(
                f,
                "{} limit={limit:#x} base={base:#x} then={}",
                if idt { "lidt" } else { "lgdt" },
                match window {
                    Window::Store => "store",
                    Window::Yield => "yield",
                }
            ),
            Op::Ltr { selector } => write!(f, "ltr selector={selector:#x}"),
            Op::Lldt { selector } => write!(f, "lldt selector={selector:#x}"),
            Op::Vmx { which, a, c } => {
                write!(f, "{} rax={a:#x} rcx={c:#x}", VMX_INSNS[usize::from(which)])
            }
            Op::Misc { which, a, c } => write!(f, "{which:?} rax={a:#x} rcx={c:#x}"),
            Op::Raise { what, arg } => match what {
                Raise::Int => write!(
                    f,
                    "int vector={:#x}",
                    INT_VECTORS[arg as usize % INT_VECTORS.len()]
                ),
                Raise::Read | Raise::Write => write!(f, "{what:?} addr={arg:#x}"),
                _ => write!(f, "{what:?}"),
            },
            Op::Step { what } => write!(f, "single-step {what:?}"),
            Op::Shadow { what, flags } => write!(f, "shadow {what:?} flags={flags:#x}"),
        }
    }
}
