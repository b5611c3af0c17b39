//! Per-CPU GDT and TSS: the TSS is what gives #DF, NMI and #MC stacks of their own, so
//! that a hypervisor failure caused by a blown or corrupt stack can still be reported
//! (and, later, recovered from).

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// How many physical CPUs the per-CPU tables are sized for.
pub const MAX_CPUS: usize = 8;

/// Selector of the 64-bit kernel code segment: the first descriptor after the null one,
/// the same index the 32-bit entry code's temporary GDT uses.
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;

/// Selector of the TSS: the descriptor after code and data (16 bytes, two slots).
pub const TSS_SELECTOR: u16 = 0x18;

/// Linear address of CPU `cpu`'s TSS (for the VMCS host-state area), 0 before `load`.
pub fn tss_base(cpu: usize) -> u64 {
    TSS[cpu]
        .get()
        .map_or(0, |t| t as *const TaskStateSegment as u64)
}

/// IST slots (1-based, as the IDT gate's IST field counts them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;

/// Bytes per IST stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// One IST stack with its guard page right below it (`arch::stacks`): the guard is
/// reserved here, so nothing else can be placed there, and unmapped at boot.
#[repr(C, align(4096))]
struct IstStack {
    guard: [u8; 4096],
    stack: [u8; IST_STACK_SIZE],
}

/// The IST stacks of every CPU, in the image's `.stacks` section (transient memory: not
/// part of the pristine copy, never preserved).
#[unsafe(link_section = ".stacks")]
static mut IST_STACKS: [[IstStack; 3]; MAX_CPUS] = [const {
    [const {
        IstStack {
            guard: [0; 4096],
            stack: [0; IST_STACK_SIZE],
        }
    }; 3]
}; MAX_CPUS];

static TSS: [spin::Once<TaskStateSegment>; MAX_CPUS] = [const { spin::Once::new() }; MAX_CPUS];
static GDT: [spin::Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector)>; MAX_CPUS] =
    [const { spin::Once::new() }; MAX_CPUS];

/// The lowest address of IST stack `slot` (1-based) of CPU `cpu`.
fn ist_bottom(cpu: usize, slot: u8) -> u64 {
    // SAFETY: only the address is computed; the stacks are used by the CPU alone, through
    // the TSS, and each CPU's slots are distinct.
    unsafe { core::ptr::addr_of!(IST_STACKS[cpu][usize::from(slot) - 1].stack) as u64 }
}

/// The top of IST stack `slot` (1-based) of CPU `cpu`: what the TSS holds.
pub fn ist_top(cpu: usize, slot: u8) -> VirtAddr {
    VirtAddr::new(ist_bottom(cpu, slot) + IST_STACK_SIZE as u64)
}

/// Every CPU's IST stacks, for `arch::stacks` (their guard pages are the pages below).
pub fn ist_stacks() -> impl Iterator<Item = super::stacks::Stack> {
    (0..MAX_CPUS).flat_map(|cpu| {
        [
            (IST_DOUBLE_FAULT, "#DF"),
            (IST_NMI, "NMI"),
            (IST_MACHINE_CHECK, "#MC"),
        ]
        .into_iter()
        .map(move |(slot, name)| super::stacks::Stack {
            name,
            bottom: ist_bottom(cpu, slot),
            top: ist_top(cpu, slot).as_u64(),
        })
    })
}

/// Whether `addr` is one of the guard pages reserved below the IST stacks.
pub fn is_ist_guard(addr: u64) -> bool {
    (0..MAX_CPUS).any(|cpu| {
        (0..3).any(|k| {
            // SAFETY: only the address is taken.
            let guard = unsafe { core::ptr::addr_of!(IST_STACKS[cpu][k].guard) } as u64;
            guard == addr
        })
    })
}

/// Builds (once) and loads CPU `cpu`'s GDT and TSS, and reloads every segment register.
pub fn load(cpu: usize) {
    let tss = TSS[cpu].call_once(|| {
        let mut tss = TaskStateSegment::new();
        for slot in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
            tss.interrupt_stack_table[usize::from(slot) - 1] = ist_top(cpu, slot);
        }
        tss
    });
    let (gdt, code, tss_selector) = GDT[cpu].call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        gdt.append(Descriptor::kernel_data_segment());
        let tss_selector = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, tss_selector)
    });
    debug_assert_eq!(code.0, KERNEL_CODE_SELECTOR);
    debug_assert_eq!(tss_selector.0, TSS_SELECTOR);
    gdt.load();
    let null = SegmentSelector(0);
    // SAFETY: the GDT just loaded holds a valid 64-bit code segment at `code` and a valid
    // TSS at `tss_selector`; data segments are unused in long mode and may be null.
    unsafe {
        CS::set_reg(*code);
        DS::set_reg(null);
        ES::set_reg(null);
        FS::set_reg(null);
        GS::set_reg(null);
        SS::set_reg(null);
        load_tss(*tss_selector);
    }
}
