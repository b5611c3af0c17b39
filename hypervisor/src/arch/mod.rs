//! Everything that executes a privileged instruction or depends on the machine's layout.
//! The rest of the crate reaches the hardware only through these modules.

pub mod cmos;
pub mod gdt;
pub mod idt;
pub mod instructions;
pub mod ioapic;
pub mod lapic;
pub mod mmio;
pub mod nmi;
pub mod pic;
pub mod pit;
pub mod power;
pub mod protect;
pub mod serial;
pub mod stacks;
pub mod tsc;
pub mod vmentry;
pub mod vmx;
