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

use hypervisor::arch::{gdt, idt, instructions, nmi, pic, power, protect, serial, stacks, tsc};
use hypervisor::arena::boot::{BootRepair, PlatformRecord};
use hypervisor::bootinfo::{self, BootInfo};
use hypervisor::cmdline;
use hypervisor::console::logger;
use hypervisor::cpu;
use hypervisor::failure;
use hypervisor::memory::{self, format_size, LayoutRequest};
use hypervisor::vm::machine::{Caps, Vms};
use hypervisor::watchdog;
use linked_list_allocator::LockedHeap;
use log::{error, info, warn};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Called by `entry` in long mode on the boot stack, with the physical address of the
/// multiboot2 information.
#[unsafe(no_mangle)]
extern "C" fn lazarus_cold_entry(mbi: u32) -> ! {
    let entered = instructions::rdtsc();
    bring_up_cpu();
    info!("Lazarus {} cold boot", env!("CARGO_PKG_VERSION"));
    match guard_stacks() {
        Ok(n) => info!("memory: guard pages: an unmapped page below each of {n} stacks (boot, recovery, #DF, NMI, #MC)"),
        Err(e) => warn!("memory: no guard pages below the stacks: {e}"),
    }

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
    let regions: heapless::Vec<(u64, u64, bool), { bootinfo::MAX_REGIONS }> = boot
        .regions
        .iter()
        .map(|r| (r.base, r.len, r.kind == bootinfo::RegionKind::Usable))
        .collect();
    let modules: heapless::Vec<memory::Range, { bootinfo::MAX_MODULES }> = boot
        .modules
        .iter()
        .map(|m| memory::Range::new(m.start, m.end))
        .collect();
    let layout = match plan_memory(&regions, &modules, boot.mbi, &options) {
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
    let route = watchdog::find_route(boot.rsdp.map(|r| (r.rsdt, r.xsdt)));
    let watchdog_route = match route.and_then(|route| watchdog::start(route).map(|_| route)) {
        Ok(route) => {
            info!(
                "watchdog: NMI every {} ms from the PIT via IO-APIC pin {}, hang after {} ms without progress or {} ms without a VM entry while a VM is runnable",
                watchdog::TICK_MS,
                route.pin,
                watchdog::HANG_MS,
                watchdog::NO_ENTRY_MS
            );
            Some(route)
        }
        Err(e) => {
            warn!("watchdog: not armed: {e}; hangs will not be detected");
            None
        }
    };
    let mut layout = layout;
    let epoch = hypervisor::arch::cmos::epoch_seconds();
    let epoch_tsc = instructions::rdtsc();
    let mut vms = start_vms(&boot, &mut layout, caps, epoch);
    if let Some(vms) = vms.as_mut() {
        let platform = PlatformRecord::new(watchdog_route, power_off);
        let record = &mut vms.root_mut().boot;
        record.save(&boot, tsc_hz, epoch, epoch_tsc, platform);
        recovery::save_boot_copy(record);
        vms.note_cold_boot(entered);
        if options.triggers {
            vms.enable_triggers();
        }
        match recovery::take_pristine(layout.pristine, layout.arena) {
            Ok(anchor) => info!(
                "recovery: armed: pristine copy of {} at {:#x} (checksum {:#018x}), arena {} at {:#x}",
                format_size(anchor.len),
                anchor.payload,
                anchor.sum,
                format_size(anchor.arena_size),
                anchor.arena_base
            ),
            Err(why) => error!("recovery: not armed: {why}"),
        }
        match write_protect(&layout) {
            Ok(()) => info!(
                "memory: read-only: code and read-only data [{:#x}, {:#x}), recovery anchor and boot record copy, pristine copy [{:#x}, {:#x})",
                image::whole().start,
                image::code_end(),
                layout.pristine.start,
                layout.pristine.end
            ),
            Err(e) => warn!("memory: not write-protected: {e}"),
        }
        start_scrub();
    }

    if options.inject.enabled() {
        enable_injector(&layout, vms.as_ref());
        if let cmdline::Inject::Plan(kind, seed) = options.inject {
            let plan = hypervisor::inject::Plan::from_seed(kind, seed);
            hypervisor::inject::machine::arm(plan);
            warn!(
                "inject: armed {} seed={} from the command line: stepping starts at VM exit {}, the fault comes at step {}",
                kind.name(),
                seed,
                plan.exits,
                plan.steps
            );
        }
    }
    let machine = machine::BootMachine {
        layout,
        cpu,
        options,
        power_off,
        vms,
        attached: None,
    };
    run(machine, Some("type 'help' for commands"))
}

/// What both boots do first: the console, the GDT and IDT of CPU 0, and the failure hook,
/// so that everything after them is reported (and recovered from) if it fails.
fn bring_up_cpu() {
    serial::init();
    logger::init(log::LevelFilter::Info);
    gdt::load(0);
    idt::load();
    failure::install(recovery::on_failure);
    // A recovery after a hang starts inside the watchdog's NMI handler, with NMIs
    // blocked until an IRET: end that now that the IDT is in place (harmless otherwise).
    nmi::unblock_nmis();
}

/// Unmaps the guard page below every stack (hypervisor/src/arch/stacks.rs): the boot and
/// recovery stacks (boot/src/entry.rs) and every CPU's IST stacks. Both boots, first
/// thing after the IDT (idempotent: the page tables survive a microreboot). Returns how
/// many stacks are guarded.
fn guard_stacks() -> Result<usize, stacks::GuardError> {
    let mut all: heapless::Vec<stacks::Stack, { stacks::MAX_STACKS }> = heapless::Vec::new();
    let ist = gdt::ist_stacks();
    for stack in image::stacks().into_iter().chain(ist) {
        all.push(stack)
            .map_err(|_| stacks::GuardError::Layout(stacks::LayoutError::TooMany))?;
    }
    stacks::guard(&all)?;
    Ok(all.len())
}

/// Makes what nothing may write after cold boot read-only (hypervisor/src/arch/protect.rs):
/// the image's code and read-only data, the recovery anchor's page and the boot record's
/// copy beside it, the pristine copy. Again after each microreboot, which restored the
/// image with CR0.WP off.
fn write_protect(layout: &memory::Layout) -> Result<(), protect::ProtectError> {
    let anchor = recovery::anchor_address();
    let (copy_start, copy_end) = recovery::boot_copy_range();
    protect::write_protect(image::whole().start, image::code_end())?;
    protect::write_protect(anchor, anchor + 1)?;
    protect::write_protect(copy_start, copy_end)?;
    protect::write_protect(layout.pristine.start, layout.pristine.end)
}

/// Starts the image scrub (`hypervisor::scrub`) once the pristine copy exists.
fn start_scrub() {
    if let Some((regions, payload, sum)) = recovery::scrub_regions() {
        hypervisor::scrub::machine::start(regions, payload, sum);
    }
}

/// `inject=` on the command line: the injector may be armed, and aims at this image's
/// static data, the heap, the run loop's stack and the arena's lock.
fn enable_injector(layout: &memory::Layout, vms: Option<&Vms>) {
    use hypervisor::inject::machine;
    machine::enable();
    machine::set_targets(
        image::static_data(),
        layout.heap,
        image::boot_stack(),
        vms.map_or(0, Vms::arena_lock_addr),
    );
}

/// What both boots end in: the VMs run, and the console (unless `console=off`). A
/// recovery boot passes no greeting: it prints nothing before the VMs run again (its
/// `recovery` line redraws the prompt).
fn run(mut machine: machine::BootMachine, greeting: Option<&str>) -> ! {
    let options = machine.options;
    if !options.console_input {
        if greeting.is_some() {
            info!("ready: console input disabled (console=off); running the VMs");
        }
        loop {
            hypervisor::watchdog::pet();
            let ran = machine.vms.as_mut().is_some_and(|vms| vms.step());
            if !ran {
                instructions::pause();
            }
        }
    }
    if let Some(greeting) = greeting {
        info!("ready: {greeting}");
    }
    machine::run_console(&mut machine, greeting.is_some())
}

/// Entered from `lazarus_recovery_start` (boot/src/entry.rs) after the failure path
/// restored the image from the pristine copy (DESIGN 6, "recovery boot"): the cold boot
/// minus the multiboot2 parsing and the TSC measurement, both saved in the arena, then the
/// repair passes, then the VMs run again. Nothing is printed until the first VM entry
/// (`Vms::finish_recovery`), so the console does not delay the VMs.
#[unsafe(no_mangle)]
extern "C" fn lazarus_recovery_entry() -> ! {
    bring_up_cpu();
    if let Err(e) = guard_stacks() {
        warn!("memory: no guard pages below the stacks after recovery: {e}");
    }
    // The dead instance may have left a prompt on the terminal: the first line printed
    // (a rolled-forward VM line, the failure report) replaces it like any log line.
    serial::set_prompt_line(&[machine::PROMPT.as_bytes()]);
    let Some((root, header_restored)) = recovery::arena() else {
        error!("halted: recovery impossible: the recovery anchor is damaged");
        instructions::halt_forever()
    };
    if header_restored {
        warn!("recovery: the arena header was damaged during the recovery boot; its fixed fields were restored from the anchor");
    }
    match recovery::reconcile_boot_record(&mut root.boot) {
        BootRepair::Intact => {}
        BootRepair::RestoredFromCopy => root.recovery.append_report(BOOT_RESTORED),
        BootRepair::CopyRestored => root.recovery.append_report(BOOT_COPY_RESTORED),
        BootRepair::BothDamaged => {
            root.recovery.print_report();
            error!("halted: recovery impossible: the arena's boot record and its copy are both damaged");
            instructions::halt_forever()
        }
    }
    let boot = &root.boot;
    let parsed = cmdline::parse(boot.cmdline());
    log::set_max_level(parsed.options.log_level);
    let options = parsed.options;
    let regions: heapless::Vec<(u64, u64, bool), { bootinfo::MAX_REGIONS }> =
        boot.regions().collect();
    let modules: heapless::Vec<memory::Range, { bootinfo::MAX_MODULES }> =
        boot.modules().map(|(range, _)| range).collect();
    let mbi = (boot.mbi[0], boot.mbi[1]);
    // What cold boot found in the ACPI tables, from the record: the tables themselves are
    // not read again (a wild write may have destroyed them: campaign finding 7).
    let power_off = boot.platform.power_off();
    let watchdog_route = boot.platform.watchdog_route();
    let tsc_hz = boot.tsc_hz;
    let epoch = boot.epoch_at(instructions::rdtsc());
    let anchor_arena = (root.header.base, root.header.size);
    let mut layout = match plan_memory(&regions, &modules, mbi, &options) {
        Ok(layout) if (layout.arena.start, layout.arena.len()) == anchor_arena => layout,
        _ => {
            error!(
                "halted: recovery impossible: the memory layout does not come out as at cold boot"
            );
            instructions::halt_forever()
        }
    };
    // SAFETY: as at cold boot: the layout (recomputed identically) reserved `heap`.
    unsafe {
        HEAP.lock()
            .init(layout.heap.start as *mut u8, layout.heap.len() as usize)
    };
    let cpu = cpu::probe();
    let caps = match (&cpu.vmx, cpu.vmx_unavailable()) {
        (Ok(vmx), None) => Caps::from_probe(&cpu, vmx, tsc_hz)
            .ok()
            .map(|(caps, _)| caps),
        _ => None,
    };
    let Some(caps) = caps else {
        error!("halted: recovery impossible: VT-x is no longer usable");
        instructions::halt_forever()
    };
    pic::acknowledge_in_service();
    pic::remap_and_mask();
    match watchdog_route {
        Ok(Some(route)) => {
            if let Err(e) = watchdog::start(route) {
                warn!("watchdog: not armed after recovery: {e}; hangs will not be detected");
            }
        }
        Ok(None) => warn!(
            "watchdog: not armed after recovery: it was not armed at cold boot; hangs will not be detected"
        ),
        Err(e) => warn!(
            "watchdog: not armed after recovery: the boot record's watchdog route is invalid ({e}); hangs will not be detected"
        ),
    }
    let mut vms = match Vms::adopt(layout.arena, &mut layout.free, caps, &modules, epoch) {
        Ok(vms) => vms,
        Err(e) => failure::fail(&failure::Failure::Arena {
            what: "recovery boot",
            error: match e {
                hypervisor::vm::machine::StartError::Arena(e) => e,
                _ => hypervisor::arena::ArenaError::BadChecksum,
            },
        }),
    };
    if options.triggers {
        vms.enable_triggers();
    }
    if let Err(e) = write_protect(&layout) {
        warn!("memory: not write-protected after recovery: {e}");
    }
    start_scrub();
    vms.root_mut().recovery.current.t_boot = instructions::rdtsc();
    let mut repairs = recovery::repair(&mut vms);
    repairs.stopped += vms.adopt_ram(&mut layout.free);
    let now = instructions::rdtsc();
    let root = vms.root_mut();
    root.header.generation += 1;
    root.header.recovery_count += 1;
    root.recovery.current.repairs = repairs;
    root.recovery.current.t_passes = now;
    if repairs.runnable > 0 {
        root.recovery.pending_print = 1;
    } else {
        vms.finish_recovery(now);
    }
    if options.inject.enabled() {
        enable_injector(&layout, Some(&vms));
    }
    let machine = machine::BootMachine {
        layout,
        cpu,
        options,
        power_off,
        vms: Some(vms),
        attached: None,
    };
    run(machine, None)
}

/// The report lines of a recovery boot that found the arena's boot record, or its copy,
/// damaged and repaired it from the other (fixed text, like the failure path's line for
/// the arena header).
const BOOT_RESTORED: &str =
    "recovery: the arena's boot record was damaged; it was restored from its copy\n";
const BOOT_COPY_RESTORED: &str =
    "recovery: the copy of the arena's boot record was damaged; it was restored from the arena\n";

/// Turns VMX on, lays out the arena and creates a VM for every module that describes
/// one. A module with a mistake gets one error line; the others still start.
fn start_vms(boot: &BootInfo, layout: &mut memory::Layout, caps: Caps, epoch: u64) -> Option<Vms> {
    let modules: heapless::Vec<memory::Range, { bootinfo::MAX_MODULES }> = boot
        .modules
        .iter()
        .map(|m| memory::Range::new(m.start, m.end))
        .collect();
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

/// The memory layout: a pure function of the memory map, the modules, the MBI and the
/// options, so a recovery boot computes the same one from the arena's boot record.
fn plan_memory(
    regions: &[(u64, u64, bool)],
    modules: &[memory::Range],
    mbi: (u64, u64),
    options: &cmdline::Options,
) -> Result<memory::Layout, memory::LayoutError> {
    memory::plan(&LayoutRequest {
        regions,
        image: image::whole(),
        pristine_payload: image::pristine_payload().len(),
        modules,
        boot_info: memory::Range::new(mbi.0, mbi.1),
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
