//! Guard pages below the hypervisor's stacks.
//!
//! A stack grows down. Without a guard, a stack that overflows (deep recursion, a large
//! frame, a corrupt stack pointer) silently overwrites whatever lies below it: below the
//! boot stack are the boot page tables, below each IST stack another IST stack. So every
//! stack gets one 4 KiB page just below it that the host page tables leave unmapped
//! (present bit clear, `protect::unmap`): the first push into it faults at once.
//!
//! How that fault is still handled: a push into the guard page raises #PF, and delivering
//! the #PF pushes its frame onto the same (exhausted) stack, into the guard page again: a
//! fault while delivering a #PF is a double fault (SDM Vol. 3A §6.15, "Interrupt 8 -
//! Double Fault Exception", Table 6-5). #DF runs on its own IST stack (`arch::gdt`), so
//! the failure path starts on a good stack, switches to the recovery stack and recovers
//! as from any exception. The report names the guard page hit (CR2, which the #PF set,
//! lies in it): [`guard_hit`].
//!
//! The stacks: the boot stack (CPU 0's, in `boot/src/entry.rs`), the recovery stack (the
//! failure path's, same file) and the IST stacks for #DF, NMI and #MC of every CPU
//! (`arch::gdt`). Each reserves its guard page itself, right below it, so nothing else
//! is ever placed there. The page tables and these pages live in `.stacks`, which a
//! microreboot neither copies nor zeroes: the guards stay unmapped across recoveries,
//! and the recovery boot unmapping them again changes nothing.

use core::fmt;

/// Bytes per page (and per guard).
pub const PAGE: u64 = 4096;
/// Stacks the registry holds: boot, recovery, and three IST stacks per CPU.
pub const MAX_STACKS: usize = 2 + 3 * super::gdt::MAX_CPUS;

/// One stack: `[bottom, top)`, growing down from `top`; its guard page is the page below
/// `bottom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub name: &'static str,
    pub bottom: u64,
    pub top: u64,
}

impl Stack {
    /// The guard page's address.
    pub const fn guard(&self) -> u64 {
        self.bottom.wrapping_sub(PAGE)
    }

    fn holds(&self, addr: u64) -> bool {
        (self.bottom..self.top).contains(&addr)
    }
}

/// Why a set of stacks cannot be guarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The stack's bottom or top is not page-aligned, or it is empty.
    Unaligned(&'static str),
    /// The guard page of the first stack lies inside the second (unmapping it would take
    /// a page of a stack away).
    GuardInStack(&'static str, &'static str),
    /// The two stacks overlap.
    Overlap(&'static str, &'static str),
    /// More stacks than [`MAX_STACKS`].
    TooMany,
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unaligned(s) => write!(f, "the {s} stack is not whole pages"),
            Self::GuardInStack(s, other) => {
                write!(
                    f,
                    "the guard page below the {s} stack lies in the {other} stack"
                )
            }
            Self::Overlap(a, b) => write!(f, "the {a} and {b} stacks overlap"),
            Self::TooMany => write!(f, "more than {MAX_STACKS} stacks"),
        }
    }
}

/// Checks that every stack is whole pages, that no two overlap, and that no guard page
/// lies inside a stack (so each stack keeps all its pages and has an unmapped page
/// below it once the guards are unmapped).
///
/// # Errors
/// The first [`LayoutError`] found.
pub fn check(stacks: &[Stack]) -> Result<(), LayoutError> {
    if stacks.len() > MAX_STACKS {
        return Err(LayoutError::TooMany);
    }
    for s in stacks {
        if s.bottom % PAGE != 0 || s.top % PAGE != 0 || s.top <= s.bottom || s.bottom < PAGE {
            return Err(LayoutError::Unaligned(s.name));
        }
    }
    for (i, a) in stacks.iter().enumerate() {
        for (j, b) in stacks.iter().enumerate() {
            if i != j && b.holds(a.guard()) {
                return Err(LayoutError::GuardInStack(a.name, b.name));
            }
            if i < j && a.bottom < b.top && b.bottom < a.top {
                return Err(LayoutError::Overlap(a.name, b.name));
            }
        }
    }
    Ok(())
}

/// The guarded stacks of this boot, for [`guard_hit`]. In `.bss`: each boot registers
/// them again.
static GUARDED: spin::Once<heapless::Vec<Stack, MAX_STACKS>> = spin::Once::new();

/// Remembers `stacks` as guarded (the first call of a boot wins).
pub fn register(stacks: &[Stack]) {
    GUARDED.call_once(|| stacks.iter().copied().take(MAX_STACKS).collect());
}

/// The stack whose guard page holds `addr` (a fault address), if any. Lock-free: the
/// failure path calls it.
pub fn guard_hit(addr: u64) -> Option<&'static str> {
    GUARDED
        .get()?
        .iter()
        .find(|s| (s.guard()..s.bottom).contains(&addr))
        .map(|s| s.name)
}

/// Why the guards could not be put in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardError {
    Layout(LayoutError),
    Tables(super::protect::ProtectError),
    /// After unmapping, the page tables still map this guard page, or no longer map a
    /// page of this stack.
    NotInEffect(&'static str),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Layout(e) => write!(f, "{e}"),
            Self::Tables(e) => write!(f, "{e}"),
            Self::NotInEffect(s) => write!(f, "the guard of the {s} stack did not take"),
        }
    }
}

/// Unmaps the guard page below each of `stacks` in `tables`, then checks the result with
/// a page walk: every guard page unmapped, every stack's first and last page still
/// mapped to themselves.
///
/// # Errors
/// [`GuardError`]; guards unmapped before the error stay unmapped.
pub fn guard_in(
    tables: &mut impl super::protect::Tables,
    stacks: &[Stack],
) -> Result<(), GuardError> {
    check(stacks).map_err(GuardError::Layout)?;
    for s in stacks {
        super::protect::clear_bits(tables, s.guard(), s.bottom, super::protect::PRESENT)
            .map_err(GuardError::Tables)?;
    }
    verify(tables, stacks)
}

/// The check [`guard_in`] ends with (see there).
///
/// # Errors
/// [`GuardError::NotInEffect`] naming the first stack whose guard is not in effect.
pub fn verify(tables: &impl super::protect::Tables, stacks: &[Stack]) -> Result<(), GuardError> {
    use super::protect::translate;
    for s in stacks {
        let unmapped =
            translate(tables, s.guard()).is_none() && translate(tables, s.bottom - 1).is_none();
        let mapped = [s.bottom, s.top - 1]
            .iter()
            .all(|&a| translate(tables, a) == Some((a, true)));
        if !(unmapped && mapped) {
            return Err(GuardError::NotInEffect(s.name));
        }
    }
    Ok(())
}

/// [`guard_in`] on the running page tables, with the TLB flushed, and the stacks
/// registered for [`guard_hit`]. Both boots call it (idempotent).
///
/// # Errors
/// As [`guard_in`].
#[cfg(target_os = "none")]
pub fn guard(stacks: &[Stack]) -> Result<(), GuardError> {
    check(stacks).map_err(GuardError::Layout)?;
    for s in stacks {
        super::protect::unmap(s.guard(), s.bottom).map_err(GuardError::Tables)?;
    }
    verify(&super::protect::Live, stacks)?;
    register(stacks);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::protect::{model::Model, translate};

    /// The stacks as `boot/src/entry.rs` and `arch::gdt` lay them out: the boot page
    /// tables, a guard, the boot stack; a guard, the recovery stack; then the IST stacks
    /// of `arch::gdt`, each after its own guard.
    fn boot_layout() -> std::vec::Vec<Stack> {
        let mut v = std::vec![
            Stack {
                name: "boot",
                bottom: 0x26_0000,
                top: 0x2a_0000,
            },
            Stack {
                name: "recovery",
                bottom: 0x2a_1000,
                top: 0x2b_1000,
            },
        ];
        let mut at = 0x2b_1000;
        for name in ["#DF", "NMI", "#MC"] {
            v.push(Stack {
                name,
                bottom: at + PAGE,
                top: at + PAGE + crate::arch::gdt::IST_STACK_SIZE as u64,
            });
            at += PAGE + crate::arch::gdt::IST_STACK_SIZE as u64;
        }
        v
    }

    #[test]
    fn each_stack_has_an_unmapped_page_below_it_and_keeps_its_own() {
        let stacks = boot_layout();
        let mut m = Model::identity_4g();
        guard_in(&mut m, &stacks).unwrap();
        for s in &stacks {
            assert_eq!(translate(&m, s.guard()), None, "{} guard", s.name);
            assert_eq!(
                translate(&m, s.bottom - 8),
                None,
                "{}: the first push below",
                s.name
            );
            for addr in (s.bottom..s.top).step_by(PAGE as usize) {
                assert_eq!(
                    translate(&m, addr),
                    Some((addr, true)),
                    "{} {addr:#x}",
                    s.name
                );
            }
            // What lies below the guard (page tables, another stack) is untouched.
            let below = s.guard() - 1;
            assert_eq!(translate(&m, below), Some((below, true)), "{}", s.name);
        }
        assert_eq!(m.spare, 5, "the image's 2 MiB page, split once");
        // A recovery boot does it again: same result.
        guard_in(&mut m, &stacks).unwrap();
        verify(&m, &stacks).unwrap();
    }

    #[test]
    fn the_ist_stacks_each_have_a_guard_page_of_their_own() {
        let ist: std::vec::Vec<Stack> = crate::arch::gdt::ist_stacks().collect();
        assert_eq!(ist.len(), 3 * crate::arch::gdt::MAX_CPUS);
        check(&ist).unwrap();
        for s in &ist {
            assert_eq!(s.top - s.bottom, crate::arch::gdt::IST_STACK_SIZE as u64);
            assert!(
                crate::arch::gdt::is_ist_guard(s.guard()),
                "{}: the page below is the stack's reserved guard",
                s.name
            );
        }
        // The TSS points each IST slot at its stack's top.
        for cpu in 0..crate::arch::gdt::MAX_CPUS {
            for (k, slot) in [
                crate::arch::gdt::IST_DOUBLE_FAULT,
                crate::arch::gdt::IST_NMI,
                crate::arch::gdt::IST_MACHINE_CHECK,
            ]
            .into_iter()
            .enumerate()
            {
                assert_eq!(
                    crate::arch::gdt::ist_top(cpu, slot).as_u64(),
                    ist[3 * cpu + k].top
                );
            }
        }
    }

    #[test]
    fn layouts_that_cannot_be_guarded() {
        let s = |name, bottom, top| Stack { name, bottom, top };
        assert_eq!(
            check(&[s("a", 0x1_0000, 0x2_0000), s("b", 0x2_0000, 0x3_0000)]),
            Err(LayoutError::GuardInStack("b", "a")),
            "b's guard would be a's top page"
        );
        assert_eq!(
            check(&[s("a", 0x1_0800, 0x2_0000)]),
            Err(LayoutError::Unaligned("a"))
        );
        assert_eq!(
            check(&[s("a", 0x1_0000, 0x3_0000), s("b", 0x2_1000, 0x2_2000)]),
            Err(LayoutError::Overlap("a", "b"))
        );
        assert_eq!(
            check(&[s("a", 0x1_0000, 0x2_0000), s("b", 0x2_1000, 0x3_0000)]),
            Ok(())
        );
        assert_eq!(
            LayoutError::GuardInStack("boot", "recovery").to_string(),
            "the guard page below the boot stack lies in the recovery stack"
        );
    }

    #[test]
    fn a_fault_address_in_a_guard_names_its_stack() {
        let stacks = boot_layout();
        register(&stacks);
        assert_eq!(guard_hit(0x25_fff8), Some("boot"));
        assert_eq!(guard_hit(0x2a_0000), Some("recovery"));
        assert_eq!(guard_hit(0x26_0000), None, "the stack itself");
        assert_eq!(guard_hit(0), None);
    }
}
