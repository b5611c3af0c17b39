//! Getting a device's interrupt into the guest. Before every VM entry the scheduler asks
//! [`decide`] what to do with the interrupt controller's pending vector: inject it now
//! (the guest can take interrupts), or ask the CPU for an exit as soon as it can
//! (interrupt-window exiting, SDM Vol. 3C §26.7.5), or nothing.

use crate::vmx::event;

/// What to do before the next VM entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing pending.
    Nothing,
    /// Acknowledge the controller and inject its vector.
    Inject,
    /// Something is pending but the guest cannot take it yet: exit when it can.
    OpenWindow,
}

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;

/// Decides from the pending state, the guest's RFLAGS and interruptibility state, and
/// whether an event is already set up for injection (the VM-entry interruption info is
/// valid, e.g. an exception a handler queued).
pub fn decide(pending: bool, rflags: u64, interruptibility: u32, event_queued: bool) -> Delivery {
    if !pending {
        Delivery::Nothing
    } else if !event_queued && event::can_inject_external_interrupt(rflags, interruptibility) {
        Delivery::Inject
    } else {
        Delivery::OpenWindow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decide(false, RFLAGS_IF, 0, false), Delivery::Nothing);
        assert_eq!(decide(true, RFLAGS_IF | 2, 0, false), Delivery::Inject);
        assert_eq!(decide(true, 2, 0, false), Delivery::OpenWindow, "IF clear");
        assert_eq!(
            decide(true, RFLAGS_IF, 1, false),
            Delivery::OpenWindow,
            "blocking by STI"
        );
        assert_eq!(
            decide(true, RFLAGS_IF, 2, false),
            Delivery::OpenWindow,
            "blocking by MOV SS"
        );
        assert_eq!(
            decide(true, RFLAGS_IF, 0, true),
            Delivery::OpenWindow,
            "an exception is queued first"
        );
    }
}
