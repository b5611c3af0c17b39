//! The Lazarus bare-metal image: GRUB loads it, `entry` brings the CPU to long mode, and
//! [`lazarus_cold_entry`] brings up the hypervisor step by step, printing what it finds.
//!
//! The order matters: the console first (so every later step can report), then the
//! GDT/IDT (so an exception in any later step is a reported failure rather than a
//! triple fault), then the boot information, the memory classes, the heap, the CPU probe
//! and finally the interactive console.
#![no_std]
#![no_main]

extern crate alloc;

mod entry;
mod image;
mod machine;

use hypervisor::arch::{gdt, idt, instructions, pic, power, serial, tsc};
use hypervisor::bootinfo::{self, BootInfo};
use hypervisor::cmdline;
use hypervisor::console::logger;
use hypervisor::cpu;
use hypervisor::failure;
use hypervisor::memory::{self, format_size, LayoutRequest};
use hypervisor::vm::machine::{Caps, Vms};
use linked_list_allocator::LockedHeap;
use log::{error, info, warn};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Called by `entry` in long mode on the boot stack, with the physical address of the
/// multiboot2 information.
#[unsafe(no_mangle)]
extern "C" fn lazarus_cold_entry(mbi: u32) -> ! {
    serial::init();
    logger::init(log::LevelFilter::Info);
    gdt::load(0);
    idt::load();
    failure::install(recovery::on_failure);
    info!("Lazarus {} cold boot", env!("CARGO_PKG_VERSION"));

    let boot = match read_boot_info(mbi) {
        Ok(boot) => boot,
        Err(e) => {
            error!("boot information: {e}");
            fatal_stop()
        }
    };
    let parsed = cmdline::parse(&boot.cmdline);
    log::set_max_level(parsed.options.log_level);
    for e in &parsed.errors {
        error!("cmdline: {e}");
    }
    if parsed.errors_dropped > 0 {
        error!("cmdline: {} more errors not shown", parsed.errors_dropped);
    }
    let options = parsed.options;
    info!(
        "cmdline: \"{}\" -> {}",
        boot.cmdline.as_str(),
        cmdline::describe(&options)
    );
    info!("boot loader: {}", boot.bootloader.as_str());
    let power_off = find_power_off(&boot);

    report_memory_map(&boot);
    let layout = match plan_memory(&boot, &options) {
        Ok(layout) => layout,
        Err(e) => {
            error!("memory: {e}");
            shutdown(power_off)
        }
    };
    for (class, range) in layout.classes() {
        info!(
            "memory: {:<9} {} {}",
            class.as_str(),
            range,
            format_size(range.len())
        );
    }
    info!(
        "memory: {:<9} {} in {} ranges",
        "free",
        format_size(layout.free.free_bytes()),
        layout.free.free_ranges().len()
    );
    // SAFETY: the layout reserved `heap` for the heap alone: it is usable RAM, identity-mapped,
    // outside the image, modules, MBI, pristine area and arena, and handed out nowhere else.
    unsafe {
        HEAP.lock()
            .init(layout.heap.start as *mut u8, layout.heap.len() as usize)
    };

    let cpu = cpu::probe();
    info!("cpu: {}", cpu.identity);
    if let Some(why) = cpu.vmx_unavailable() {
        error!("vt-x not available: {why}");
        shutdown(power_off);
    }
    let Ok(vmx) = &cpu.vmx else {
        // vmx_unavailable() above covers this case; nothing else can reach here.
        shutdown(power_off)
    };
    info!("vmx: {vmx}");
    let Some(tsc_hz) = tsc::calibrate() else {
        error!("tsc: the PIT never counted down; cannot measure the TSC frequency");
        shutdown(power_off)
    };
    info!(
        "tsc: {}.{:03} MHz (measured against the PIT)",
        tsc_hz / 1_000_000,
        tsc_hz / 1000 % 1000
    );
    let (caps, dropped) = match Caps::from_probe(&cpu, vmx, tsc_hz) {
        Ok(caps) => caps,
        Err(why) => {
            error!("vt-x not available: {why}");
            shutdown(power_off)
        }
    };
    let c = &caps.controls;
    info!(
        "vmx: controls pin={:#x} proc={:#x} proc2={:#x} exit={:#x} entry={:#x} dropped={dropped}",
        c.pin, c.proc, c.proc2, c.exit, c.entry
    );
    pic::remap_and_mask();
    if let Err(e) = hypervisor::watchdog::start(boot.rsdp.map(|r| (r.rsdt, r.xsdt))) {
        warn!("watchdog: not armed: {e}; hangs will not be detected");
    }
    let mut layout = layout;
    let vms = start_vms(&boot, &mut layout, caps);

    let mut machine = machine::BootMachine {
        layout,
        cpu,
        options,
        power_off,
        vms,
        attached: None,
    };
    if !options.console_input {
        info!("ready: console input disabled (console=off); running the VMs");
        loop {
            hypervisor::watchdog::pet();
            let ran = machine.vms.as_mut().is_some_and(|vms| vms.step());
            if !ran {
                instructions::pause();
            }
        }
    }
    info!("ready: type 'help' for commands");
    machine::run_console(&mut machine)
}

/// Turns VMX on, lays out the arena and creates a VM for every module that describes
/// one. A module with a mistake gets one error line; the others still start.
fn start_vms(boot: &BootInfo, layout: &mut memory::Layout, caps: Caps) -> Option<Vms> {
    let modules: heapless::Vec<memory::Range, { bootinfo::MAX_MODULES }> = boot
        .modules
        .iter()
        .map(|m| memory::Range::new(m.start, m.end))
        .collect();
    let epoch = hypervisor::arch::cmos::epoch_seconds();
    let mut vms = match Vms::start(layout.arena, &mut layout.free, caps, &modules, epoch) {
        Ok(vms) => vms,
        Err(e) => {
            error!("vmx: {e}; no VMs can run");
            return None;
        }
    };
    let strings: heapless::Vec<&str, { bootinfo::MAX_MODULES }> =
        boot.modules.iter().map(|m| m.string.as_str()).collect();
    vms.create_all(&strings, &mut layout.free);
    Some(vms)
}

/// Reads the MBI in place (identity-mapped) and parses it into plain data.
fn read_boot_info(mbi: u32) -> Result<BootInfo, bootinfo::BootInfoError> {
    let mbi = u64::from(mbi);
    if mbi == 0 || mbi % 8 != 0 {
        return Err(bootinfo::BootInfoError::Misaligned { addr: mbi as usize });
    }
    // SAFETY: GRUB passed `mbi` in EBX; it is 8-aligned (checked) and below 4 GiB, so the
    // boot identity map covers it. Its first word is `total_size`.
    let total = unsafe { core::ptr::read_volatile(mbi as *const u32) } as usize;
    let total = total.min(1 << 20);
    // SAFETY: the MBI occupies [mbi, mbi + total_size) per the Multiboot2 spec (§3.6); the
    // length is capped at 1 MiB so a garbage size cannot run off the identity map, and the
    // parser checks every tag against it. Nothing writes the MBI while it is read.
    let bytes = unsafe { core::slice::from_raw_parts(mbi as *const u8, total) };
    bootinfo::parse(bytes, mbi)
}

fn report_memory_map(boot: &BootInfo) {
    info!(
        "memory map: {} regions, {} usable",
        boot.regions.len(),
        format_size(boot.usable_bytes())
    );
    for r in &boot.regions {
        log::debug!(
            "memory map: {:#014x}-{:#014x} {:?}",
            r.base,
            r.base + r.len,
            r.kind
        );
    }
    if let Some(efi) = &boot.efi_memory_map {
        info!(
            "efi memory map: {} descriptors, {} usable",
            efi.descriptors,
            format_size(efi.usable_bytes)
        );
    }
    for (i, m) in boot.modules.iter().enumerate() {
        info!(
            "module {i}: {:#x}-{:#x} {} \"{}\"",
            m.start,
            m.end,
            format_size(m.end - m.start),
            m.string.as_str()
        );
    }
}

fn plan_memory(
    boot: &BootInfo,
    options: &cmdline::Options,
) -> Result<memory::Layout, memory::LayoutError> {
    let mut regions: heapless::Vec<(u64, u64, bool), { bootinfo::MAX_REGIONS }> =
        heapless::Vec::new();
    for r in &boot.regions {
        // Capacities match, so this cannot overflow.
        let _ = regions.push((r.base, r.len, r.kind == bootinfo::RegionKind::Usable));
    }
    let mut modules: heapless::Vec<memory::Range, { bootinfo::MAX_MODULES }> = heapless::Vec::new();
    for m in &boot.modules {
        let _ = modules.push(memory::Range::new(m.start, m.end));
    }
    memory::plan(&LayoutRequest {
        regions: &regions,
        image: image::whole(),
        pristine_payload: image::pristine_payload().len(),
        modules: &modules,
        boot_info: memory::Range::new(boot.mbi.0, boot.mbi.1),
        heap_size: options.heap_size,
        arena_size: options.arena_size,
    })
}

/// The ACPI power-off method, from the RSDP GRUB passed or one found in low memory.
fn find_power_off(boot: &BootInfo) -> Option<hypervisor::acpi::PowerOff> {
    let rsdp = match boot.rsdp {
        Some(r) => Some((r.rsdt, r.xsdt)),
        None => power::scan_for_rsdp().and_then(power::rsdp_at),
    };
    let Some((rsdt, xsdt)) = rsdp else {
        warn!("acpi: no RSDP found; shutdown will try the emulator power-off ports");
        return None;
    };
    match power::method(rsdt, xsdt) {
        Ok(m) => {
            info!(
                "acpi: power off via PM1a_CNT={:#x} SLP_TYPa={}",
                m.pm1a_cnt, m.slp_typ_a
            );
            Some(m)
        }
        Err(e) => {
            warn!("acpi: {e}; shutdown will try the emulator power-off ports");
            None
        }
    }
}

/// The documented way Lazarus ends: one `shutdown:` line, then power off.
pub fn shutdown(method: Option<hypervisor::acpi::PowerOff>) -> ! {
    info!("shutdown: powering off");
    power::power_off(method)
}

/// A stop before the ACPI tables could even be located (no usable boot information).
fn fatal_stop() -> ! {
    let method = power::scan_for_rsdp()
        .and_then(power::rsdp_at)
        .and_then(|(rsdt, xsdt)| power::method(rsdt, xsdt).ok());
    shutdown(method)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    failure::fail(&failure::Failure::Panic(info))
}
