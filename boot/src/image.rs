//! Where the linker put the image (symbols from `linker.ld`).

use hypervisor::memory::Range;

unsafe extern "C" {
    static __image_start: u8;
    static __pristine_start: u8;
    static __pristine_end: u8;
    static __data_start: u8;
    static __bss_end: u8;
    static __image_end: u8;
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
    static recovery_stack_bottom: u8;
    static recovery_stack_top: u8;
}

fn addr(symbol: &u8) -> u64 {
    symbol as *const u8 as u64
}

/// The whole loaded image: headers, code, data, `.bss` and stacks.
pub fn whole() -> Range {
    // SAFETY: linker-defined symbols; only their addresses are used.
    unsafe { Range::new(addr(&__image_start), addr(&__image_end)) }
}

/// `.text`, `.rodata` and `.data`: what the pristine copy holds.
pub fn pristine_payload() -> Range {
    // SAFETY: as above.
    unsafe { Range::new(addr(&__pristine_start), addr(&__pristine_end)) }
}

/// The end of the code and read-only data (page-aligned: `.data` starts a page).
pub fn code_end() -> u64 {
    // SAFETY: as above.
    unsafe { addr(&__data_start) }
}

/// The boot stack (`entry.rs`), on which the cold and recovery boots run the VMs.
pub fn boot_stack() -> Range {
    // SAFETY: as above (symbols of `entry.rs`).
    unsafe { Range::new(addr(&boot_stack_bottom), addr(&boot_stack_top)) }
}

/// `.data` and `.bss`: the hypervisor's static data (what a data fault may hit).
pub fn static_data() -> Range {
    // SAFETY: as above.
    unsafe { Range::new(addr(&__data_start), addr(&__bss_end)) }
}

/// The stacks `entry` reserves (each with its guard page right below it): CPU 0's boot
/// stack and the failure path's recovery stack.
pub fn stacks() -> [hypervisor::arch::stacks::Stack; 2] {
    use hypervisor::arch::stacks::Stack;
    // SAFETY: as above (labels in boot/src/entry.rs).
    unsafe {
        [
            Stack {
                name: "boot",
                bottom: addr(&boot_stack_bottom),
                top: addr(&boot_stack_top),
            },
            Stack {
                name: "recovery",
                bottom: addr(&recovery_stack_bottom),
                top: addr(&recovery_stack_top),
            },
        ]
    }
}
