//! Deterministic failure triggers: the way tests (and operators checking a deployment)
//! make the hypervisor fail on purpose. Off unless the command line says `triggers=on`.

use core::fmt;

/// One way to make the hypervisor fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A Rust panic.
    Panic,
    /// A read of an unmapped (but canonical) address: #PF.
    PageFault,
    /// A read of a non-canonical address: #GP.
    GeneralProtection,
    /// UD2: #UD.
    InvalidOpcode,
    /// DIV by zero: #DE.
    DivideError,
    /// INT3: #BP.
    Breakpoint,
    /// CLI, then spin forever: only the watchdog can notice.
    Hang,
    /// Take an arena lock this CPU already holds: spins forever with interrupts off.
    Deadlock,
}

impl Trigger {
    pub const ALL: [Trigger; 8] = [
        Trigger::Panic,
        Trigger::PageFault,
        Trigger::GeneralProtection,
        Trigger::InvalidOpcode,
        Trigger::DivideError,
        Trigger::Breakpoint,
        Trigger::Hang,
        Trigger::Deadlock,
    ];

    /// The name used on the console: `trigger NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Panic => "panic",
            Trigger::PageFault => "pf",
            Trigger::GeneralProtection => "gp",
            Trigger::InvalidOpcode => "ud",
            Trigger::DivideError => "de",
            Trigger::Breakpoint => "bp",
            Trigger::Hang => "hang",
            Trigger::Deadlock => "deadlock",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Lists the trigger names, separated by spaces.
pub struct Names;

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in Trigger::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(t.name())?;
        }
        Ok(())
    }
}

/// An address far above anything the boot identity map (first 4 GiB) covers.
pub const UNMAPPED_ADDRESS: u64 = 0x0000_4000_0000_0000;
/// An address with bits 63:47 not all equal: any access raises #GP.
pub const NON_CANONICAL_ADDRESS: u64 = 0x8000_0000_0000_0000;

/// Makes the failure happen. Returns only if the CPU did not fault (which would itself be
/// a bug worth reporting).
#[cfg(target_os = "none")]
pub fn fire(trigger: Trigger) {
    use core::arch::asm;
    match trigger {
        Trigger::Panic => panic!("trigger: deliberate panic"),
        // SAFETY (the four asm blocks): each is meant to fault; the fault is reported as a
        // hypervisor failure and the code after it never runs. No memory is written.
        Trigger::PageFault => unsafe {
            asm!("mov {tmp}, [{addr}]", addr = in(reg) UNMAPPED_ADDRESS, tmp = out(reg) _, options(nostack))
        },
        Trigger::GeneralProtection => unsafe {
            asm!("mov {tmp}, [{addr}]", addr = in(reg) NON_CANONICAL_ADDRESS, tmp = out(reg) _, options(nostack))
        },
        Trigger::InvalidOpcode => unsafe { asm!("ud2", options(nomem, nostack)) },
        Trigger::DivideError => unsafe {
            asm!("xor edx, edx", "xor eax, eax", "div ecx", in("ecx") 0u32, out("eax") _, out("edx") _, options(nomem, nostack))
        },
        Trigger::Breakpoint => unsafe { asm!("int3", options(nomem, nostack)) },
        Trigger::Hang => {
            crate::arch::instructions::disable_interrupts();
            loop {
                core::hint::spin_loop();
            }
        }
        Trigger::Deadlock => {
            // A lock of the kind the arena uses, taken twice by the same CPU: the second
            // acquire waits for a release that can never come.
            static LOCK: crate::arena::lock::ArenaLock = crate::arena::lock::ArenaLock::new();
            crate::arch::instructions::disable_interrupts();
            LOCK.acquire(0, 0);
            LOCK.acquire(0, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::from_name(t.name()), Some(t));
        }
        assert_eq!(Trigger::from_name("nope"), None);
        assert_eq!(
            std::format!("{Names}"),
            "panic pf gp ud de bp hang deadlock"
        );
    }
}
