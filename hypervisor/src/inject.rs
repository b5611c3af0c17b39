//! The fault injector (DESIGN 7): faults of the kinds the ReHype and NiLiHype campaigns
//! injected, at a random point of hypervisor execution, each reproducible from its seed.
//!
//! A seed fixes a [`Plan`]: which VM exit to start from (one of the next
//! [`MAX_EXITS_TO_SKIP`]), how many hypervisor instructions to single-step after it (0 to
//! [`MAX_STEPS`]), and the fault's target (register and bit, code byte and bit, data
//! word and bit). The machine side (`machine`, bare metal only) sets RFLAGS.TF at that VM
//! exit, counts the single-step traps (#DB) until the plan's step, and there changes the
//! interrupted context: the fault happens in whatever hypervisor code was running.
//! Instructions of guest mode are never counted: TF is cleared before every VM entry and
//! set again at the next exit.

use core::fmt;

/// The most VM exits that may pass before stepping starts.
pub const MAX_EXITS_TO_SKIP: u64 = 64;
/// The most single-stepped hypervisor instructions before the fault.
pub const MAX_STEPS: u64 = 20_000;

/// What is injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultType {
    /// Jump to address 0 (which is not executable): the classic fail-stop fault.
    FailStop,
    /// One bit of a general register, RSP, RFLAGS or RIP of the interrupted context.
    Register,
    /// One bit within the 15 bytes at RIP (the instruction about to run, or the next).
    Code,
    /// One bit of a word of hypervisor static data (`.data`, `.bss`) or of the heap.
    Data,
    /// Interrupts off and an endless loop, from the interrupted point.
    Hang,
    /// The arena lock taken and never released.
    Lock,
}

impl FaultType {
    pub const ALL: [FaultType; 6] = [
        FaultType::FailStop,
        FaultType::Register,
        FaultType::Code,
        FaultType::Data,
        FaultType::Hang,
        FaultType::Lock,
    ];

    /// The name on the console and command line (`inject TYPE SEED`).
    pub fn name(self) -> &'static str {
        match self {
            FaultType::FailStop => "failstop",
            FaultType::Register => "register",
            FaultType::Code => "code",
            FaultType::Data => "data",
            FaultType::Hang => "hang",
            FaultType::Lock => "lock",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The number a test guest passes to the `inject` hypercall (index in [`ALL`]).
    ///
    /// [`ALL`]: FaultType::ALL
    pub fn from_number(n: u64) -> Option<Self> {
        Self::ALL.get(usize::try_from(n).ok()?).copied()
    }
}

/// The registers a register fault may flip, in [`Plan::register`] order: the 15
/// general registers as the exception frame saves them, then RSP, RFLAGS and RIP.
pub const REGISTERS: [&str; 18] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
    "r15", "rsp", "rflags", "rip",
];

/// Where a data fault lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataRegion {
    /// `.data` and `.bss`.
    Static,
    Heap,
    /// The live part of the run loop's stack: the [`STACK_WINDOW`] bytes above the
    /// interrupted RSP, where the exit being handled, its effect and the loop's other
    /// transient structures are. `.data`, `.bss` and the heap are mostly words nobody
    /// reads, so flips there seldom manifest (0 of 35 in the committed campaigns): half
    /// the data faults land here.
    Stack,
}

/// How far above the interrupted RSP a stack data fault may land: the frames of the
/// code that was running and of its callers up to the run loop.
pub const STACK_WINDOW: u64 = 4096;

impl DataRegion {
    pub fn name(self) -> &'static str {
        match self {
            DataRegion::Static => "static",
            DataRegion::Heap => "heap",
            DataRegion::Stack => "stack",
        }
    }

    /// The region a seed's draw `n` picks: stack for half of them.
    fn from_draw(n: u64) -> DataRegion {
        match n % 4 {
            0 => DataRegion::Static,
            1 => DataRegion::Heap,
            _ => DataRegion::Stack,
        }
    }
}

/// Everything a seed decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub fault: FaultType,
    pub seed: u64,
    /// VM exits to let pass before stepping starts (0: the next exit).
    pub exits: u64,
    /// Hypervisor instructions to step after that exit before the fault.
    pub steps: u64,
    /// Register fault: index into [`REGISTERS`].
    pub register: usize,
    /// Register and data faults: the bit (0-63); code faults: the bit (0-7).
    pub bit: u32,
    /// Code fault: byte offset from RIP (0-14).
    pub code_offset: u64,
    /// Data fault: the region, and a random number that picks the word within it.
    pub region: DataRegion,
    pub word: u64,
}

/// SplitMix64: a tiny, well-mixed generator; the same seed gives the same plan everywhere.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0); the tiny modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

impl Plan {
    /// The plan seed `seed` gives for `fault`. Every field is drawn, whatever the fault,
    /// so that one seed means the same point in execution for every fault type.
    pub fn from_seed(fault: FaultType, seed: u64) -> Plan {
        let mut r = SplitMix64::new(seed);
        let exits = r.below(MAX_EXITS_TO_SKIP);
        let steps = r.below(MAX_STEPS + 1);
        let register = r.below(REGISTERS.len() as u64) as usize;
        let wide_bit = r.below(64) as u32;
        let code_offset = r.below(15);
        let code_bit = r.below(8) as u32;
        let region = DataRegion::from_draw(r.next_u64());
        let word = r.next_u64();
        Plan {
            fault,
            seed,
            exits,
            steps,
            register,
            bit: if fault == FaultType::Code {
                code_bit
            } else {
                wide_bit
            },
            code_offset,
            region,
            word,
        }
    }

    /// The 8-byte-aligned address of the data word this plan flips in `[start, end)`.
    pub fn data_address(&self, start: u64, end: u64) -> Option<u64> {
        let start = start.div_ceil(8) * 8;
        let words = end.saturating_sub(start) / 8;
        (words > 0).then(|| start + (self.word % words) * 8)
    }

    /// Where a stack data fault may land: from `rsp` (the interrupted code's) up
    /// [`STACK_WINDOW`] bytes, within the run loop's stack `[bottom, top)`; empty when
    /// `rsp` is on another stack.
    pub fn stack_window(rsp: u64, bottom: u64, top: u64) -> (u64, u64) {
        if rsp < bottom || rsp >= top {
            return (0, 0);
        }
        (rsp, top.min(rsp.saturating_add(STACK_WINDOW)))
    }
}

/// What an injection did, for the documented `inject:` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    FailStop,
    Register {
        index: usize,
        old: u64,
        new: u64,
    },
    Code {
        address: u64,
        old: u8,
        new: u8,
    },
    Data {
        region: DataRegion,
        address: u64,
        old: u64,
        new: u64,
    },
    /// A data fault with no memory to hit (the region is empty).
    NoData {
        region: DataRegion,
    },
    Hang,
    Lock,
    /// A lock fault with no arena (no VMs): nothing was done.
    NoLock,
}

/// The `inject:` line (README, "Fault injection"): `inject: TYPE seed=S exit=K step=N
/// rip=0xR WHAT`.
pub struct Line<'a> {
    pub plan: &'a Plan,
    pub rip: u64,
    pub done: Done,
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.plan;
        write!(
            f,
            "inject: {} seed={} exit={} step={} rip={:#x} ",
            p.fault.name(),
            p.seed,
            p.exits,
            p.steps,
            self.rip
        )?;
        match self.done {
            Done::FailStop => f.write_str("jump to 0x0"),
            Done::Register { index, old, new } => write!(
                f,
                "register={} bit={} old={old:#x} new={new:#x}",
                REGISTERS[index], p.bit
            ),
            Done::Code { address, old, new } => write!(
                f,
                "code={address:#x} bit={} old={old:#04x} new={new:#04x}",
                p.bit
            ),
            Done::Data {
                region,
                address,
                old,
                new,
            } => write!(
                f,
                "data={address:#x} region={} bit={} old={old:#x} new={new:#x}",
                region.name(),
                p.bit
            ),
            Done::NoData { region } => {
                write!(f, "data region={} is empty: nothing done", region.name())
            }
            Done::Hang => f.write_str("hang: interrupts off, endless loop"),
            Done::Lock => f.write_str("lock=arena taken and never released"),
            Done::NoLock => f.write_str("lock: no arena: nothing done"),
        }
    }
}

#[cfg(target_os = "none")]
pub mod machine;

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn the_same_seed_gives_the_same_plan_and_fields_stay_in_range() {
        for seed in 0..2000u64 {
            for fault in FaultType::ALL {
                let p = Plan::from_seed(fault, seed);
                assert_eq!(p, Plan::from_seed(fault, seed));
                assert!(p.exits < MAX_EXITS_TO_SKIP && p.steps <= MAX_STEPS);
                assert!(p.register < REGISTERS.len() && p.code_offset < 15);
                assert!(p.bit < if fault == FaultType::Code { 8 } else { 64 });
            }
            // One seed is one point in execution, whatever the fault.
            let a = Plan::from_seed(FaultType::FailStop, seed);
            let b = Plan::from_seed(FaultType::Data, seed);
            assert_eq!((a.exits, a.steps), (b.exits, b.steps));
        }
        let spread: std::collections::HashSet<u64> = (0..200)
            .map(|s| Plan::from_seed(FaultType::Register, s).steps)
            .collect();
        assert!(spread.len() > 190, "steps are spread out");
    }

    #[test]
    fn data_addresses_are_aligned_words_inside_the_region() {
        for seed in 0..500 {
            let p = Plan::from_seed(FaultType::Data, seed);
            let a = p.data_address(0x1000, 0x1ff8).unwrap();
            assert!((0x1000..0x1ff8).contains(&a) && a.is_multiple_of(8));
        }
        assert_eq!(Plan::from_seed(FaultType::Data, 1).data_address(8, 8), None);
    }

    #[test]
    fn names_numbers_and_the_line() {
        for (n, t) in FaultType::ALL.into_iter().enumerate() {
            assert_eq!(FaultType::from_name(t.name()), Some(t));
            assert_eq!(FaultType::from_number(n as u64), Some(t));
        }
        assert_eq!(FaultType::from_name("nope"), None);
        for (n, name) in abi::FAULT_TYPES.iter().enumerate() {
            assert_eq!(
                FaultType::from_number(n as u64).map(FaultType::name),
                Some(*name)
            );
        }
        let p = Plan {
            fault: FaultType::Register,
            seed: 7,
            exits: 3,
            steps: 1234,
            register: 15,
            bit: 4,
            code_offset: 0,
            region: DataRegion::Heap,
            word: 0,
        };
        let line = Line {
            plan: &p,
            rip: 0x20_1000,
            done: Done::Register {
                index: 15,
                old: 0x28_dc80,
                new: 0x28_dc90,
            },
        };
        assert_eq!(
            format!("{line}"),
            "inject: register seed=7 exit=3 step=1234 rip=0x201000 register=rsp bit=4 old=0x28dc80 new=0x28dc90"
        );
    }
}
