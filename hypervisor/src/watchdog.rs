//! The hang watchdog (DESIGN 5): a periodic NMI checks what the hypervisor's loops
//! advance, and reports a hang, a hypervisor failure, in two cases:
//!
//! - **no progress**: the per-CPU heartbeat has not moved for [`HANG_TICKS`] ticks while
//!   in the host (a deadlock, an endless loop, interrupts off);
//! - **no VM entry**: at least one VM is runnable, yet the host has neither entered a VM
//!   nor done bounded work that keeps the VMs waiting for [`NO_ENTRY_TICKS`] ticks. The
//!   heartbeat alone misses this: twice in a campaign a code flip left the run loop going
//!   round (petting the heartbeat, answering the console) without ever entering a VM, and
//!   every VM stopped making progress with nothing detected.
//!
//! The NMI source is the physical PIT's channel 0 at [`TICK_HZ`] (a rate generator),
//! routed through the I/O APIC with delivery mode NMI to the boot CPU's local APIC. Not a
//! performance counter: Bochs has no usable PMU. The 8259 pair stays fully masked, so IRQ
//! 0 reaches the CPU only as this NMI. Where the PIT's IRQ 0 arrives (which I/O APIC, which
//! pin, which polarity) comes from the ACPI MADT, read once at cold boot ([`find_route`]);
//! the route is kept in the arena's boot record, and a recovery boot arms the watchdog
//! from there, without reading firmware tables a wild write may have destroyed.
//!
//! Ticks arrive two ways:
//! - in the host, as an NMI through the IDT: [`on_host_nmi`] compares the heartbeat and
//!   the VM-entry count with the values it saw last and counts stale ticks;
//! - while a guest runs, as a VM exit ("NMI exiting" is on): the host was making progress
//!   and a VM was entered, by definition (it was running the guest), so
//!   [`on_guest_nmi_exit`] counts a tick with progress of both kinds, and ends the NMI
//!   blocking the exit left behind (see `arch::nmi`).
//!
//! What advances what:
//! - [`pet`] (the heartbeat): every iteration of every host loop (the console, the VM run
//!   loop), and the console output, for each group of bytes the UART takes
//!   (`arch::serial`): a long reply at 115200 baud is progress, bytes leave;
//! - [`vm_entered`]: every VM entry;
//! - [`pet_long_work`] (both): bounded host work that legitimately keeps every VM waiting,
//!   zeroing and loading a VM's RAM (`vm create`, `vm reset`, a guest's reboot: 128 MiB
//!   takes seconds in Bochs, 8 GiB about a second on hardware), in pieces.
//!
//! Console output is progress for the heartbeat but not a VM entry: the longest reply or
//! guest line (a few KiB, a third of a second at 115200 baud) must fit in
//! [`NO_ENTRY_TICKS`], so a loop that prints for ever while the VMs wait is still caught.
//! The image scrub (a page per step) and the run loop's own work are microseconds; a
//! recovery re-arms the watchdog ([`start`]) and enters the VMs within milliseconds; a VM
//! that waits (HLT with interrupts on), halts or is stopped is not runnable, so idle VMs
//! never make a hang.
//!
//! Whether a VM is runnable is read from the arena's VM table itself ([`watch_vms`]):
//! sixteen plain `u32` reads, no lock, nothing the run loop could have forgotten to
//! publish (the check must hold when the run loop is what broke).
//!
//! What is not caught: a hang before [`start`] (early boot), a hang in the failure path
//! itself (it disarms the watchdog first), and every hang when [`start`] failed (no MADT,
//! no I/O APIC: the boot says `watchdog: not armed: WHY`). A hang with NMIs blocked (inside
//! the NMI handler, or between an NMI exit and [`on_guest_nmi_exit`]) is not seen either,
//! nor VMs that wait for an interrupt the hypervisor never delivers (they are not
//! runnable; the image scrub goes on while they wait).
//!
//! The state machine ([`Watchdog`]) is plain data, unit-tested; the machine part keeps it
//! per CPU in atomics, touched only with NMIs blocked (in the NMI handler, or right after
//! an NMI exit), so the two users never interleave. One CPU runs so far: index 0.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::acpi::{self, AcpiError};
use crate::arch::gdt::MAX_CPUS;
use crate::arch::ioapic::{IoApic, RedirectionEntry};
use crate::arch::lapic::{self, LapicError};
use crate::arch::mmio::MapError;
use crate::arch::{nmi, pit, power};

/// NMIs per second. Each one that arrives while a guest runs is a VM exit, so this is
/// kept low: 20 Hz costs a VM about 20 exits a second.
pub const TICK_HZ: u32 = 20;
/// Milliseconds between two NMIs.
pub const TICK_MS: u64 = 1000 / TICK_HZ as u64;
/// Stale ticks that make a hang: the heartbeat unchanged for this many ticks in a row.
/// Under load in Bochs no tick ever found it unchanged (docs/benchmarks.md, "Watchdog");
/// four leave room for the tick's phase and for a tick lost to things an emulator does
/// not show (the vCPU descheduled by a KVM host, an SMI), and detect in 200-250 ms.
pub const HANG_TICKS: u32 = 4;
/// The hang limit in milliseconds (for messages).
pub const HANG_MS: u64 = HANG_TICKS as u64 * TICK_MS;
/// Ticks without a VM entry, while a VM is runnable, that make a hang. Longer than
/// [`HANG_TICKS`]: console output keeps the heartbeat going but enters no VM, and the
/// longest legitimate output (a 4 KiB `console_write`, about 360 ms at 115200 baud) must
/// fit.
pub const NO_ENTRY_TICKS: u32 = 10;
/// The no-entry limit in milliseconds (for messages).
pub const NO_ENTRY_MS: u64 = NO_ENTRY_TICKS as u64 * TICK_MS;

/// What the watchdog found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hang {
    /// The heartbeat has not moved for [`HANG_TICKS`] ticks.
    NoProgress,
    /// No VM entry (nor long host work) for [`NO_ENTRY_TICKS`] ticks while `runnable` VMs
    /// were runnable.
    NoEntry { runnable: u32 },
}

/// The `hang: ...` part of the failure report (README, "Console lines").
impl fmt::Display for Hang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hang::NoProgress => write!(f, "no progress for {HANG_MS} ms"),
            Hang::NoEntry { runnable: 1 } => {
                write!(f, "no VM entry for {NO_ENTRY_MS} ms while 1 VM is runnable")
            }
            Hang::NoEntry { runnable } => write!(
                f,
                "no VM entry for {NO_ENTRY_MS} ms while {runnable} VMs are runnable"
            ),
        }
    }
}

/// What a tick sees: the counters the host advances and how many VMs are runnable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub heartbeat: u64,
    pub entries: u64,
    pub runnable: u32,
}

/// One CPU's watchdog: the heartbeat and entry count seen at the last tick, how many
/// ticks in a row saw each unchanged, and the longest such runs (for the `watchdog`
/// console command: how close legitimate work came to the limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchdog {
    pub last_seen: u64,
    pub stale: u32,
    pub limit: u32,
    pub entries_seen: u64,
    pub no_entry: u32,
    pub no_entry_limit: u32,
    pub longest_stale: u32,
    pub longest_no_entry: u32,
}

impl Watchdog {
    #[must_use]
    pub const fn new(heartbeat: u64, entries: u64, limit: u32, no_entry_limit: u32) -> Self {
        Self {
            last_seen: heartbeat,
            stale: 0,
            limit,
            entries_seen: entries,
            no_entry: 0,
            no_entry_limit,
            longest_stale: 0,
            longest_no_entry: 0,
        }
    }

    /// A tick in the host. Returns the hang it finds: the heartbeat unchanged for `limit`
    /// ticks in a row (checked first: it is the more general), or the entry count
    /// unchanged for `no_entry_limit` ticks in a row with a VM runnable at each. A tick
    /// with no VM runnable starts the no-entry count afresh: VMs that all wait are owed
    /// nothing.
    pub fn tick(&mut self, beat: Beat) -> Option<Hang> {
        if beat.heartbeat == self.last_seen {
            self.stale = self.stale.saturating_add(1);
        } else {
            self.last_seen = beat.heartbeat;
            self.stale = 0;
        }
        if beat.runnable == 0 || beat.entries != self.entries_seen {
            self.entries_seen = beat.entries;
            self.no_entry = 0;
        } else {
            self.no_entry = self.no_entry.saturating_add(1);
        }
        self.longest_stale = self.longest_stale.max(self.stale);
        self.longest_no_entry = self.longest_no_entry.max(self.no_entry);
        if self.stale >= self.limit {
            Some(Hang::NoProgress)
        } else if self.no_entry >= self.no_entry_limit {
            Some(Hang::NoEntry {
                runnable: beat.runnable,
            })
        } else {
            None
        }
    }

    /// A tick that proves progress of both kinds whatever the counters say (an NMI VM
    /// exit: a VM was running).
    pub fn progress(&mut self, heartbeat: u64, entries: u64) {
        self.last_seen = heartbeat;
        self.stale = 0;
        self.entries_seen = entries;
        self.no_entry = 0;
    }
}

/// Why the watchdog could not be armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchdogError {
    /// Neither the boot loader nor the BIOS areas gave an ACPI RSDP.
    NoRsdp,
    /// No usable MADT (missing, bad checksum, malformed, no I/O APIC).
    Acpi(AcpiError),
    /// No I/O APIC receives the GSI that ISA IRQ 0 arrives on.
    NoIoApicFor {
        gsi: u32,
    },
    /// The I/O APIC has fewer pins than that GSI needs.
    PinOutOfRange {
        pin: u32,
        pins: u32,
    },
    Lapic(LapicError),
    IoApic(MapError),
}

impl fmt::Display for WatchdogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRsdp => f.write_str("no ACPI RSDP found"),
            Self::Acpi(e) => write!(f, "{e}"),
            Self::NoIoApicFor { gsi } => {
                write!(f, "no I/O APIC receives GSI {gsi} (the PIT's IRQ 0)")
            }
            Self::PinOutOfRange { pin, pins } => write!(
                f,
                "the PIT's IRQ 0 is on I/O APIC pin {pin}, but the I/O APIC has {pins} pins"
            ),
            Self::Lapic(e) => write!(f, "{e}"),
            Self::IoApic(e) => write!(f, "I/O APIC registers: {e}"),
        }
    }
}

/// One CPU's counters and [`Watchdog`], in atomics so the NMI handler needs no lock
/// (`.bss`: a microreboot starts them afresh).
struct PerCpu {
    /// Advanced by [`pet`] and [`pet_long_work`].
    heartbeat: AtomicU64,
    /// Advanced by [`vm_entered`] and [`pet_long_work`].
    entries: AtomicU64,
    last_seen: AtomicU64,
    stale: AtomicU32,
    entries_seen: AtomicU64,
    no_entry: AtomicU32,
    longest_stale: AtomicU32,
    longest_no_entry: AtomicU32,
    host_ticks: AtomicU64,
    guest_ticks: AtomicU64,
}

impl PerCpu {
    const fn new() -> Self {
        Self {
            heartbeat: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            last_seen: AtomicU64::new(0),
            stale: AtomicU32::new(0),
            entries_seen: AtomicU64::new(0),
            no_entry: AtomicU32::new(0),
            longest_stale: AtomicU32::new(0),
            longest_no_entry: AtomicU32::new(0),
            host_ticks: AtomicU64::new(0),
            guest_ticks: AtomicU64::new(0),
        }
    }

    fn load(&self) -> Watchdog {
        Watchdog {
            last_seen: self.last_seen.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            limit: HANG_TICKS,
            entries_seen: self.entries_seen.load(Ordering::Relaxed),
            no_entry: self.no_entry.load(Ordering::Relaxed),
            no_entry_limit: NO_ENTRY_TICKS,
            longest_stale: self.longest_stale.load(Ordering::Relaxed),
            longest_no_entry: self.longest_no_entry.load(Ordering::Relaxed),
        }
    }

    fn store(&self, w: &Watchdog) {
        self.last_seen.store(w.last_seen, Ordering::Relaxed);
        self.stale.store(w.stale, Ordering::Relaxed);
        self.entries_seen.store(w.entries_seen, Ordering::Relaxed);
        self.no_entry.store(w.no_entry, Ordering::Relaxed);
        self.longest_stale.store(w.longest_stale, Ordering::Relaxed);
        self.longest_no_entry
            .store(w.longest_no_entry, Ordering::Relaxed);
    }
}

static CPUS: [PerCpu; MAX_CPUS] = [const { PerCpu::new() }; MAX_CPUS];
/// Where the host was at the last host NMI (diagnostics).
static LAST_RIP: AtomicU64 = AtomicU64::new(0);
/// Set by [`start`], cleared by [`disarm`].
static ARMED: AtomicBool = AtomicBool::new(false);
/// The I/O APIC and pin that [`disarm`] masks (no page-table walk on the failure path).
static TARGET: spin::Once<(IoApic, u32)> = spin::Once::new();
/// The address of the arena's VM table ([`watch_vms`]); 0 before VMX runs.
static VM_TABLE: AtomicU64 = AtomicU64::new(0);

/// The running CPU's index (only the boot CPU runs so far).
const fn this_cpu() -> usize {
    0
}

/// A load and a store on a per-CPU word: no lock, no atomic read-modify-write (only this
/// CPU writes it).
#[inline]
fn advance(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// Records progress on this CPU. Called once per iteration of every host loop (the
/// console, the VM run loop) and by the console output as bytes leave.
#[inline]
pub fn pet() {
    advance(&CPUS[this_cpu()].heartbeat);
}

/// Records a VM entry on this CPU (the run loop, just before it enters a VM).
#[inline]
pub fn vm_entered() {
    advance(&CPUS[this_cpu()].entries);
}

/// Records a piece of bounded host work that legitimately keeps every VM waiting
/// (zeroing or loading a VM's RAM): progress for both checks.
#[inline]
pub fn pet_long_work() {
    let cpu = &CPUS[this_cpu()];
    advance(&cpu.heartbeat);
    advance(&cpu.entries);
}

/// Tells the watchdog where the arena's VM table is, so that it knows whether any VM is
/// runnable (VMX start and every recovery boot). The table stays where it is for the
/// machine's life: the arena never moves.
pub fn watch_vms(table: &[crate::arena::VmRecord; crate::arena::MAX_VMS]) {
    VM_TABLE.store(table.as_ptr() as u64, Ordering::Relaxed);
}

/// How many VMs of the watched table are runnable (0 before [`watch_vms`]).
fn runnable_vms() -> u32 {
    match VM_TABLE.load(Ordering::Relaxed) {
        0 => 0,
        table => vm_table::runnable(table),
    }
}

/// The one raw read of the watchdog: VM states straight from the arena's VM table, in
/// the NMI handler, which may have interrupted the run loop while it holds the table
/// mutably.
mod vm_table {
    use crate::arena::{VmRecord, VmState, MAX_VMS};

    /// How many of the `MAX_VMS` records at `table` say [`VmState::Runnable`].
    pub(super) fn runnable(table: u64) -> u32 {
        let mut n = 0;
        for slot in 0..MAX_VMS {
            let at = table
                + (slot * core::mem::size_of::<VmRecord>() + core::mem::offset_of!(VmRecord, state))
                    as u64;
            // SAFETY: `table` is the address of the arena's `[VmRecord; MAX_VMS]`
            // (`watch_vms`): identity-mapped RAM the layout reserved for the arena, never
            // unmapped or moved, so `at` is the aligned `state` word of record `slot`. The
            // word is a plain `u32` (any value is valid) and this CPU is the only writer:
            // the NMI came between two instructions, so the read cannot tear. A volatile
            // read, because the interrupted code may hold the table mutably; nothing is
            // written.
            let raw = unsafe { core::ptr::read_volatile(at as *const u32) };
            n += u32::from(raw == VmState::Runnable as u32);
        }
        n
    }
}

/// The watchdog's limits and what it saw since this instance armed it (cold boot or the
/// last recovery boot): the `watchdog` console command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub armed: bool,
    /// The longest run of ticks without progress, and without a VM entry while a VM was
    /// runnable, that ended (or goes on) below the limits.
    pub longest_stale: u32,
    pub longest_no_entry: u32,
    /// Ticks taken in the host and as NMI VM exits.
    pub host_ticks: u64,
    pub guest_ticks: u64,
}

impl Stats {
    /// This CPU's figures.
    pub fn now() -> Stats {
        let cpu = &CPUS[this_cpu()];
        Stats {
            armed: armed(),
            longest_stale: cpu.longest_stale.load(Ordering::Relaxed),
            longest_no_entry: cpu.longest_no_entry.load(Ordering::Relaxed),
            host_ticks: cpu.host_ticks.load(Ordering::Relaxed),
            guest_ticks: cpu.guest_ticks.load(Ordering::Relaxed),
        }
    }
}

/// The `watchdog` console command's line (README, "Console").
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.armed {
            return f.write_str("watchdog: not armed");
        }
        write!(
            f,
            "watchdog: tick={TICK_MS}ms hang={HANG_MS}ms no_entry={NO_ENTRY_MS}ms longest_stale={}ms longest_no_entry={}ms host_ticks={} guest_ticks={}",
            u64::from(self.longest_stale) * TICK_MS,
            u64::from(self.longest_no_entry) * TICK_MS,
            self.host_ticks,
            self.guest_ticks
        )
    }
}

/// Where the PIT's IRQ 0 reaches an I/O APIC: what [`find_route`] reads from the MADT
/// at cold boot, kept in the arena's boot record for the recovery boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Physical address of the I/O APIC's registers.
    pub ioapic: u64,
    /// Its input pin.
    pub pin: u32,
    pub polarity: crate::acpi::Polarity,
}

/// Finds the route of the PIT's IRQ 0 in the MADT (from the RSDT/XSDT the boot loader
/// gave, or from an RSDP found in the BIOS areas): the ISA override for IRQ 0, if any,
/// and the I/O APIC that receives its GSI. Cold boot only: a recovery boot takes the
/// route from the boot record instead of reading firmware tables again.
///
/// # Errors
/// [`WatchdogError`] when there is no RSDP, no usable MADT, or no I/O APIC for the GSI.
pub fn find_route(acpi_roots: Option<(u32, Option<u64>)>) -> Result<Route, WatchdogError> {
    let (rsdt, xsdt) = acpi_roots
        .or_else(|| power::scan_for_rsdp().and_then(power::rsdp_at))
        .ok_or(WatchdogError::NoRsdp)?;
    let madt = acpi::madt(rsdt, xsdt, &power::IdentityMapped).map_err(WatchdogError::Acpi)?;
    let route = madt.isa_route(0);
    let (entry, pin) = madt
        .io_apic_for(route.gsi)
        .ok_or(WatchdogError::NoIoApicFor { gsi: route.gsi })?;
    log::debug!(
        "watchdog: the MADT lists APIC ID {:?} first",
        madt.boot_cpu_apic_id
    );
    Ok(Route {
        ioapic: u64::from(entry.address),
        pin,
        polarity: route.polarity,
    })
}

/// Arms the watchdog on `route`: enables the local APIC, masks every I/O APIC pin but
/// the route's, programs it to send an NMI to this CPU, and starts the PIT at
/// [`TICK_HZ`]. Returns the I/O APIC pin; prints nothing (a recovery boot re-arms it
/// silently; cold boot prints the `watchdog:` line).
///
/// # Errors
/// [`WatchdogError`]: the watchdog is not armed and hangs are not detected.
pub fn start(route: Route) -> Result<u32, WatchdogError> {
    let Route { pin, polarity, .. } = route;
    let apic = lapic::enable().map_err(WatchdogError::Lapic)?;
    let ioapic = IoApic::at(route.ioapic).map_err(WatchdogError::IoApic)?;
    let pins = ioapic.pins();
    if pin >= pins {
        return Err(WatchdogError::PinOutOfRange { pin, pins });
    }
    for other in (0..pins).filter(|&p| p != pin) {
        ioapic.mask(other);
    }
    let cpu = &CPUS[this_cpu()];
    cpu.store(&Watchdog::new(
        cpu.heartbeat.load(Ordering::Relaxed),
        cpu.entries.load(Ordering::Relaxed),
        HANG_TICKS,
        NO_ENTRY_TICKS,
    ));
    let &(ioapic, pin) = TARGET.call_once(|| (ioapic, pin));
    ARMED.store(true, Ordering::SeqCst);
    pit::start_rate_generator(TICK_HZ);
    ioapic.set_entry(pin, RedirectionEntry::nmi(apic.id(), polarity));
    Ok(pin)
}

/// Stops the NMIs (masks the I/O APIC entry). The failure path calls it first, so no NMI
/// arrives while the hypervisor image is being replaced. Safe to call when not armed.
pub fn disarm() {
    if !ARMED.swap(false, Ordering::SeqCst) {
        return;
    }
    if let Some((ioapic, pin)) = TARGET.get() {
        ioapic.mask(*pin);
    }
}

/// Whether [`start`] armed the watchdog (and nothing disarmed it since).
pub fn armed() -> bool {
    ARMED.load(Ordering::Relaxed)
}

/// An NMI taken in the host, at `rip`. Returns the hang it finds (see [`Watchdog::tick`]).
/// Lock-free and allocation-free: it runs in the NMI handler, possibly on top of code
/// that holds any lock; it reads per-CPU atomics and the arena's VM states. An NMI while
/// the watchdog is not armed is ignored.
pub fn on_host_nmi(rip: u64) -> Option<Hang> {
    if !ARMED.load(Ordering::Relaxed) {
        return None;
    }
    LAST_RIP.store(rip, Ordering::Relaxed);
    let cpu = &CPUS[this_cpu()];
    advance(&cpu.host_ticks);
    let mut w = cpu.load();
    let hang = w.tick(Beat {
        heartbeat: cpu.heartbeat.load(Ordering::Relaxed),
        entries: cpu.entries.load(Ordering::Relaxed),
        runnable: runnable_vms(),
    });
    cpu.store(&w);
    hang
}

/// An NMI arrived as a VM exit: a tick with progress. Ends the NMI blocking that the exit
/// left in effect (SDM Vol. 3C §28.1, see `arch::nmi`), so the next tick can reach the host.
pub fn on_guest_nmi_exit() {
    if ARMED.load(Ordering::Relaxed) {
        let cpu = &CPUS[this_cpu()];
        advance(&cpu.guest_ticks);
        let mut w = cpu.load();
        w.progress(
            cpu.heartbeat.load(Ordering::Relaxed),
            cpu.entries.load(Ordering::Relaxed),
        );
        cpu.store(&w);
    }
    nmi::unblock_nmis();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A beat with `runnable` VMs and the entry count left at 0.
    fn beat(heartbeat: u64, runnable: u32) -> Beat {
        Beat {
            heartbeat,
            entries: 0,
            runnable,
        }
    }

    /// A heartbeat-only watchdog (no VM runnable).
    fn hb(w: &mut Watchdog, heartbeat: u64) -> bool {
        w.tick(beat(heartbeat, 0)) == Some(Hang::NoProgress)
    }

    #[test]
    fn constants() {
        assert_eq!((TICK_MS, HANG_MS, NO_ENTRY_MS), (50, 200, 500));
        const { assert!(NO_ENTRY_TICKS > HANG_TICKS) };
    }

    #[test]
    fn a_moving_heartbeat_is_never_a_hang() {
        let mut w = Watchdog::new(0, 0, 3, 5);
        for b in 1..1000 {
            assert!(!hb(&mut w, b));
            assert_eq!(w.stale, 0);
        }
    }

    #[test]
    fn k_stale_ticks_are_a_hang() {
        let mut w = Watchdog::new(7, 0, 3, 5);
        assert!(!hb(&mut w, 7));
        assert!(!hb(&mut w, 7));
        assert!(hb(&mut w, 7), "third tick without progress");
        assert!(hb(&mut w, 7), "still hung");
        assert_eq!(w.stale, 4);
        assert_eq!(w.longest_stale, 4);
    }

    #[test]
    fn progress_resets_the_count() {
        let mut w = Watchdog::new(0, 0, 3, 5);
        assert!(!hb(&mut w, 0));
        assert!(!hb(&mut w, 0));
        assert!(!hb(&mut w, 1), "the heartbeat moved just in time");
        assert_eq!((w.last_seen, w.stale), (1, 0));
        assert!(!hb(&mut w, 1));
        assert!(!hb(&mut w, 1));
        // An NMI exit counts as progress even if the heartbeat did not move.
        w.progress(1, 0);
        assert!(!hb(&mut w, 1));
        assert!(!hb(&mut w, 1));
        assert!(hb(&mut w, 1));
        assert_eq!(w.longest_stale, 3, "the longest run is kept");
    }

    #[test]
    fn wrapping_heartbeat_and_saturating_count() {
        let mut w = Watchdog::new(u64::MAX, 0, 2, 5);
        assert!(!hb(&mut w, 0), "wrapped around: still progress");
        let mut w = Watchdog {
            stale: u32::MAX,
            no_entry: u32::MAX,
            ..Watchdog::new(5, 9, 2, 3)
        };
        assert_eq!(w.tick(beat(5, 1)), Some(Hang::NoProgress));
        assert_eq!(
            (w.stale, w.no_entry),
            (u32::MAX, 0),
            "entries moved: 0 -> 9"
        );
    }

    #[test]
    fn the_hang_limit_in_ticks() {
        // Progress one tick short of the limit apart is fine; the limit without is a hang.
        let mut w = Watchdog::new(0, 0, HANG_TICKS, NO_ENTRY_TICKS);
        let mut b = 0;
        for tick in 1..=10 * HANG_TICKS {
            if tick % HANG_TICKS == 0 {
                b += 1;
            }
            assert!(!hb(&mut w, b), "tick {tick}");
        }
        assert_eq!(w.longest_stale, HANG_TICKS - 1);
        let hang = (0..HANG_TICKS).map(|_| hb(&mut w, b)).position(|h| h);
        assert_eq!(hang, Some(HANG_TICKS as usize - 1));
    }

    /// Ticks of a run loop that pets the heartbeat but enters no VM (the `no-entry`
    /// trigger, the campaign's case).
    #[test]
    fn a_heartbeat_without_entries_is_a_hang_when_a_vm_is_runnable() {
        let mut w = Watchdog::new(0, 0, 3, 5);
        let mut found = None;
        for t in 1..=5 {
            found = w.tick(Beat {
                heartbeat: t,
                entries: 0,
                runnable: 2,
            });
            if t < 5 {
                assert_eq!(found, None, "tick {t}");
            }
        }
        assert_eq!(found, Some(Hang::NoEntry { runnable: 2 }));
        assert_eq!((w.stale, w.no_entry, w.longest_no_entry), (0, 5, 5));
    }

    #[test]
    fn idle_vms_are_owed_no_entry() {
        let mut w = Watchdog::new(0, 0, 3, 5);
        for t in 1..100 {
            assert_eq!(w.tick(beat(t, 0)), None, "every VM waits: tick {t}");
        }
        assert_eq!(w.longest_no_entry, 0);
        // Four ticks runnable, one idle, four runnable: never five in a row.
        for t in 100..200 {
            let runnable = u32::from(t % 5 != 0);
            assert_eq!(w.tick(beat(t, runnable)), None, "tick {t}");
        }
        assert_eq!(w.longest_no_entry, 4);
    }

    #[test]
    fn entries_and_guest_ticks_are_progress() {
        let mut w = Watchdog::new(0, 0, 3, 5);
        for t in 1..100u64 {
            // An entry every fourth tick keeps the count below 5.
            let b = Beat {
                heartbeat: t,
                entries: t / 4,
                runnable: 3,
            };
            assert_eq!(w.tick(b), None, "tick {t}");
        }
        assert_eq!(w.longest_no_entry, 3);
        for t in 100..104u64 {
            assert_eq!(w.tick(beat(t, 3)), None);
        }
        w.progress(104, 0);
        assert_eq!(w.no_entry, 0, "an NMI exit: a VM was running");
        for t in 105..109u64 {
            assert_eq!(w.tick(beat(t, 3)), None);
        }
        assert_eq!(w.tick(beat(109, 3)), Some(Hang::NoEntry { runnable: 3 }));
    }

    #[test]
    fn no_progress_is_reported_before_no_entry() {
        let mut w = Watchdog::new(0, 0, 3, 3);
        assert_eq!(w.tick(beat(0, 1)), None);
        assert_eq!(w.tick(beat(0, 1)), None);
        assert_eq!(w.tick(beat(0, 1)), Some(Hang::NoProgress));
    }

    #[test]
    fn the_vm_table_is_read_for_runnable_states() {
        use crate::arena::{VmRecord, VmState, MAX_VMS};
        let mut table = std::boxed::Box::new([VmRecord::EMPTY; MAX_VMS]);
        assert_eq!(vm_table::runnable(table.as_ptr() as u64), 0);
        for (slot, state) in [
            (0, VmState::Runnable),
            (3, VmState::Waiting),
            (7, VmState::Runnable),
            (MAX_VMS - 1, VmState::Runnable),
            (9, VmState::Stopped),
        ] {
            table[slot].set_state(state);
        }
        assert_eq!(vm_table::runnable(table.as_ptr() as u64), 3);
    }

    #[test]
    fn messages() {
        assert_eq!(Hang::NoProgress.to_string(), "no progress for 200 ms");
        assert_eq!(
            Hang::NoEntry { runnable: 3 }.to_string(),
            "no VM entry for 500 ms while 3 VMs are runnable"
        );
        assert_eq!(
            Hang::NoEntry { runnable: 1 }.to_string(),
            "no VM entry for 500 ms while 1 VM is runnable"
        );
        let stats = Stats {
            armed: true,
            longest_stale: 2,
            longest_no_entry: 3,
            host_ticks: 40,
            guest_ticks: 1234,
        };
        assert_eq!(
            stats.to_string(),
            "watchdog: tick=50ms hang=200ms no_entry=500ms longest_stale=100ms longest_no_entry=150ms host_ticks=40 guest_ticks=1234"
        );
        assert_eq!(
            Stats {
                armed: false,
                ..stats
            }
            .to_string(),
            "watchdog: not armed"
        );
        assert_eq!(
            WatchdogError::NoIoApicFor { gsi: 2 }.to_string(),
            "no I/O APIC receives GSI 2 (the PIT's IRQ 0)"
        );
        assert_eq!(
            WatchdogError::Acpi(AcpiError::TableNotFound("APIC")).to_string(),
            "ACPI table APIC not found"
        );
        assert_eq!(
            WatchdogError::PinOutOfRange { pin: 30, pins: 24 }.to_string(),
            "the PIT's IRQ 0 is on I/O APIC pin 30, but the I/O APIC has 24 pins"
        );
        assert_eq!(WatchdogError::NoRsdp.to_string(), "no ACPI RSDP found");
    }

    #[test]
    fn pets_advance_this_cpus_counters() {
        let cpu = &CPUS[0];
        let (h, e) = (
            cpu.heartbeat.load(Ordering::Relaxed),
            cpu.entries.load(Ordering::Relaxed),
        );
        pet();
        pet();
        vm_entered();
        pet_long_work();
        assert_eq!(cpu.heartbeat.load(Ordering::Relaxed), h.wrapping_add(3));
        assert_eq!(cpu.entries.load(Ordering::Relaxed), e.wrapping_add(2));
        // Not armed in tests: host NMIs are ignored.
        assert_eq!(on_host_nmi(0x1234), None);
    }
}
