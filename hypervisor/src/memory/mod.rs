//! Physical memory, accounted in classes.
//!
//! Lazarus survives its own crashes by microrebooting: it throws away everything it can
//! rebuild and restarts from a pristine copy of itself, keeping only what the guests need
//! to live on. That only works if every byte it owns has a known fate across a reboot,
//! so physical memory is split into classes decided once at cold boot:
//!
//! - `image`: the running .text/.rodata/.data/.bss, replaced on microreboot;
//! - `pristine`: the read-only boot-time copy the replacement is made from;
//! - `arena`: everything VMs need to survive, at a physical address and size that never
//!   change after cold boot (so the rebooted hypervisor can find it without help);
//! - `transient`: heap, host page tables and stacks, rebuilt from scratch each boot;
//! - `free`: the pool guest RAM is handed out from.
//!
//! Alongside them sit the ranges nobody may hand out: the first MiB, firmware-reserved
//! memory, the GRUB modules (guest kernels) and the multiboot2 information.
//!
//! Memory is identity mapped, so a physical address is also the pointer the caller uses;
//! this module only computes ranges and never touches memory itself, which is why it runs
//! (and is tested) on the host.

mod frames;
mod layout;
mod range;

pub use frames::{FrameAllocator, FrameError};
pub use layout::{
    format_size, plan, Classes, FormatSize, Layout, LayoutError, LayoutRequest, MemoryClass, Needs,
    FIRMWARE_RANGES, FREE_RANGES, LOW_MEMORY_RANGES, MIN_FREE_FOR_GUESTS, MODULE_RANGES,
    PLAN_RANGES,
};
pub use range::{Full, Range, RangeSet};

/// Size of the pages everything in this module is rounded to.
pub const PAGE_SIZE: u64 = 4096;
