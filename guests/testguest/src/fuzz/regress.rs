//! `mix=regress`: the hostile operations the review of issue 11 reproduced against
//! Lazarus, each exactly once and in order, through the fuzzer's runner, so that each
//! is checked against the model of what hardware does: values hardware refuses must
//! raise #GP (never reach the VMCS or a host register), XSETBV must refuse partial
//! AVX-512 state, lowering XCR0 after SSE use must not halt anything, and the guest's
//! SSE registers, CR8 and debug registers must be its own across a `yield` to the other
//! VMs (two regress VMs with different seeds put different values in them).
//!
//! Operation N of the list is [`op`]; the run has [`COUNT`] operations.

use super::insn::Misc;
use super::ops::Op;
use super::Ctx;

/// A plausible, 48-bit non-canonical address.
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;
const SYSENTER_ESP: u32 = 0x175;
const SYSENTER_EIP: u32 = 0x176;
const PAT: u32 = 0x277;
const EFER: u32 = 0xc000_0080;
const LSTAR: u32 = 0xc000_0082;
const CSTAR: u32 = 0xc000_0083;
const FS_BASE: u32 = 0xc000_0100;
const GS_BASE: u32 = 0xc000_0101;
const KERNEL_GS_BASE: u32 = 0xc000_0102;
const TSC_AUX: u32 = 0xc000_0103;
const FEATURE_CONTROL: u32 = 0x3a;
const TSC: u32 = 0x10;
const EFER_LME: u64 = 1 << 8;
const CR0_PE: u64 = 1 << 0;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_VMXE: u64 = 1 << 13;
const CR4_PKE: u64 = 1 << 22;
const CR4_CET: u64 = 1 << 23;

/// Operations in the list.
pub const COUNT: u64 = 36;

/// Operation `n` of the list, with the values that tell VMs apart drawn from `seed`.
pub fn op(n: u64, seed: u64, ctx: &Ctx) -> Op {
    let b = &ctx.base;
    let mine = 0x1000 + (seed % 0x100) * 0x1000;
    let wrmsr = |msr: u32, value: u64| Op::Wrmsr { msr, value };
    match n {
        // Guest-chosen values that used to reach the VMCS unchecked.
        0 => wrmsr(SYSENTER_ESP, NON_CANONICAL),
        1 => wrmsr(SYSENTER_EIP, NON_CANONICAL),
        2 => wrmsr(FS_BASE, NON_CANONICAL),
        3 => wrmsr(GS_BASE, NON_CANONICAL),
        4 => wrmsr(PAT, 0x0007_0406_0007_0402),
        5 => wrmsr(EFER, b.efer & !EFER_LME),
        6 => Op::Cr4 {
            value: b.cr4 | CR4_VMXE,
        },
        7 => Op::Cr4 {
            value: (b.cr4 | CR4_VMXE) & !CR4_PAE,
        },
        8 => Op::Cr0 {
            value: (b.cr0 & !CR0_PE) ^ CR0_NE,
        },
        9 => Op::Cr0 {
            value: b.cr0 & !CR0_PG,
        },
        10 => Op::Cr0 {
            value: b.cr0 | CR0_NW,
        },
        11 => Op::Cr4 {
            value: b.cr4 | CR4_PKE,
        },
        12 => Op::Cr4 {
            value: b.cr4 | CR4_CET,
        },
        // Guest-chosen values that used to reach host registers.
        13 => wrmsr(LSTAR, NON_CANONICAL),
        14 => wrmsr(CSTAR, NON_CANONICAL),
        15 => wrmsr(KERNEL_GS_BASE, NON_CANONICAL),
        16 => Op::Xsetbv {
            xcr: 0,
            value: 0x27,
            exit: true,
        },
        17 => Op::Xsetbv {
            xcr: 0,
            value: 0x47,
            exit: true,
        },
        // Legal code that used to halt the hypervisor: SSE with XCR0 = 3, then XCR0 = 1,
        // then a switch (the XRSTOR of this VM's state); and the SSE registers must stay
        // this VM's with XCR0 = 1 (XSAVE under XCR0 = 1 saved none of them).
        18 => Op::Xsetbv {
            xcr: 0,
            value: 0b11,
            exit: true,
        },
        19 => Op::XstateKeep {
            pattern: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        },
        20 => Op::Xsetbv {
            xcr: 0,
            value: 0b1,
            exit: true,
        },
        21 => Op::XstateKeep {
            pattern: seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1,
        },
        // State that used to be shared between VMs: CR8, DR0-DR3, DR7.
        22 => Op::Cr8 {
            value: 1 + seed % 15,
            exit: true,
        },
        23..=26 => Op::Dr {
            reg: (n - 23) as u8,
            value: mine + (n - 23) * 8,
        },
        27 => Op::Dr {
            reg: 7,
            value: 0x400 | (1 << (2 * (seed % 4))),
        },
        // Smaller differences from hardware.
        28 => Op::Misc {
            which: Misc::Monitor,
            a: ctx.scratch,
            c: 0,
        },
        29 => Op::Misc {
            which: Misc::Mwait,
            a: 0,
            c: 0,
        },
        30 => Op::Misc {
            which: Misc::Rdpmc,
            a: 0,
            c: 0,
        },
        31 => Op::Rdmsr { msr: TSC },
        32 => wrmsr(TSC_AUX, 1 << 32),
        33 => wrmsr(FEATURE_CONTROL, 5),
        34 => Op::Cr0 {
            value: b.cr0 | CR0_CD,
        },
        _ => Op::Cr0 {
            value: b.cr0 | CR0_CD | CR0_NW,
        },
    }
}
