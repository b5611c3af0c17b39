//! The hypervisor proper, as a `no_std` library whose logic is unit-tested on the host.
//!
//! Everything that executes a privileged instruction lives under `arch` (and two small
//! `#[cfg(target_os = "none")]` functions in `cpu` and `triggers`); the rest is plain
//! data and algorithms.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod acpi;
pub mod arch;
pub mod arena;
pub mod bootinfo;
pub mod cmdline;
pub mod console;
pub mod cpu;
pub mod devices;
pub mod ept;
pub mod failure;
pub mod inject;
pub mod loader;
pub mod memory;
pub mod scrub;
pub mod triggers;
pub mod vm;
pub mod vmx;
pub mod watchdog;
