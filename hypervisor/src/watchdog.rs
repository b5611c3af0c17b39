//! The hang watchdog (DESIGN 5): a periodic NMI checks a per-CPU heartbeat that the
//! hypervisor's loops advance; no progress for [`HANG_TICKS`] ticks while in the host is
//! a hang, reported as a hypervisor failure.
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
//! - in the host, as an NMI through the IDT: [`on_host_nmi`] compares the heartbeat with
//!   the value it saw last and counts stale ticks;
//! - while a guest runs, as a VM exit ("NMI exiting" is on): the host was making progress
//!   by definition (it was running the guest), so [`on_guest_nmi_exit`] counts a tick with
//!   progress, and ends the NMI blocking the exit left behind (see `arch::nmi`).
//!
//! What is not caught: a hang before [`start`] (early boot), a hang in the failure path
//! itself (it disarms the watchdog first), and every hang when [`start`] failed (no MADT,
//! no I/O APIC: the boot says `watchdog: not armed: WHY`). A hang with NMIs blocked (inside
//! the NMI handler, or between an NMI exit and [`on_guest_nmi_exit`]) is not seen either.
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
/// kept low: 20 Hz costs a VM about 20 exits a second and still detects a hang within
/// a second.
pub const TICK_HZ: u32 = 20;
/// Milliseconds between two NMIs.
pub const TICK_MS: u64 = 1000 / TICK_HZ as u64;
/// Stale ticks that make a hang: one second without progress.
pub const HANG_TICKS: u32 = TICK_HZ;
/// The hang limit in milliseconds (for messages).
pub const HANG_MS: u64 = HANG_TICKS as u64 * TICK_MS;

/// One CPU's watchdog: the heartbeat value seen at the last tick and how many ticks in a
/// row saw it unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchdog {
    pub last_seen: u64,
    pub stale: u32,
    pub limit: u32,
}

impl Watchdog {
    #[must_use]
    pub const fn new(heartbeat: u64, limit: u32) -> Self {
        Self {
            last_seen: heartbeat,
            stale: 0,
            limit,
        }
    }

    /// A tick in the host with the heartbeat at `heartbeat`. Returns true when the
    /// heartbeat has not moved for `limit` ticks in a row: a hang.
    pub fn tick(&mut self, heartbeat: u64) -> bool {
        if heartbeat == self.last_seen {
            self.stale = self.stale.saturating_add(1);
        } else {
            self.last_seen = heartbeat;
            self.stale = 0;
        }
        self.stale >= self.limit
    }

    /// A tick that proves progress whatever the heartbeat says (an NMI VM exit).
    pub fn progress(&mut self, heartbeat: u64) {
        self.last_seen = heartbeat;
        self.stale = 0;
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

/// Each CPU's heartbeat: advanced by [`pet`], read by the NMI handler (`.bss`).
static HEARTBEAT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Each CPU's [`Watchdog`], kept in atomics so the NMI handler needs no lock.
static LAST_SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static STALE: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Where the host was at the last host NMI (diagnostics).
static LAST_RIP: AtomicU64 = AtomicU64::new(0);
/// Set by [`start`], cleared by [`disarm`].
static ARMED: AtomicBool = AtomicBool::new(false);
/// The I/O APIC and pin that [`disarm`] masks (no page-table walk on the failure path).
static TARGET: spin::Once<(IoApic, u32)> = spin::Once::new();

/// The running CPU's index (only the boot CPU runs so far).
const fn this_cpu() -> usize {
    0
}

fn load(cpu: usize) -> Watchdog {
    Watchdog {
        last_seen: LAST_SEEN[cpu].load(Ordering::Relaxed),
        stale: STALE[cpu].load(Ordering::Relaxed),
        limit: HANG_TICKS,
    }
}

fn store(cpu: usize, w: &Watchdog) {
    LAST_SEEN[cpu].store(w.last_seen, Ordering::Relaxed);
    STALE[cpu].store(w.stale, Ordering::Relaxed);
}

/// Records progress on this CPU. Called once per iteration of every host loop (the
/// console, the VM run loop) and in chunks by long operations. A load and a store on a
/// per-CPU word: no lock, no atomic read-modify-write (only this CPU writes it).
#[inline]
pub fn pet() {
    let h = &HEARTBEAT[this_cpu()];
    h.store(h.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
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
    let cpu = this_cpu();
    store(
        cpu,
        &Watchdog::new(HEARTBEAT[cpu].load(Ordering::Relaxed), HANG_TICKS),
    );
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

/// An NMI taken in the host, at `rip`. Returns true when it finds a hang: the heartbeat
/// has not moved for [`HANG_TICKS`] ticks. Lock-free and allocation-free: it runs in the
/// NMI handler, possibly on top of code that holds any lock. An NMI while the watchdog is
/// not armed is ignored.
pub fn on_host_nmi(rip: u64) -> bool {
    if !ARMED.load(Ordering::Relaxed) {
        return false;
    }
    LAST_RIP.store(rip, Ordering::Relaxed);
    let cpu = this_cpu();
    let mut w = load(cpu);
    let hang = w.tick(HEARTBEAT[cpu].load(Ordering::Relaxed));
    store(cpu, &w);
    hang
}

/// An NMI arrived as a VM exit: a tick with progress. Ends the NMI blocking that the exit
/// left in effect (SDM Vol. 3C §28.1, see `arch::nmi`), so the next tick can reach the host.
pub fn on_guest_nmi_exit() {
    if ARMED.load(Ordering::Relaxed) {
        let cpu = this_cpu();
        let mut w = load(cpu);
        w.progress(HEARTBEAT[cpu].load(Ordering::Relaxed));
        store(cpu, &w);
    }
    nmi::unblock_nmis();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants() {
        assert_eq!((TICK_MS, HANG_MS), (50, 1000));
    }

    #[test]
    fn a_moving_heartbeat_is_never_a_hang() {
        let mut w = Watchdog::new(0, 3);
        for beat in 1..1000 {
            assert!(!w.tick(beat));
            assert_eq!(w.stale, 0);
        }
    }

    #[test]
    fn k_stale_ticks_are_a_hang() {
        let mut w = Watchdog::new(7, 3);
        assert!(!w.tick(7));
        assert!(!w.tick(7));
        assert!(w.tick(7), "third tick without progress");
        assert!(w.tick(7), "still hung");
        assert_eq!(w.stale, 4);
    }

    #[test]
    fn progress_resets_the_count() {
        let mut w = Watchdog::new(0, 3);
        assert!(!w.tick(0));
        assert!(!w.tick(0));
        assert!(!w.tick(1), "the heartbeat moved just in time");
        assert_eq!((w.last_seen, w.stale), (1, 0));
        assert!(!w.tick(1));
        assert!(!w.tick(1));
        // An NMI exit counts as progress even if the heartbeat did not move.
        w.progress(1);
        assert!(!w.tick(1));
        assert!(!w.tick(1));
        assert!(w.tick(1));
    }

    #[test]
    fn wrapping_heartbeat_and_saturating_count() {
        let mut w = Watchdog::new(u64::MAX, 2);
        assert!(!w.tick(0), "wrapped around: still progress");
        let mut w = Watchdog {
            last_seen: 5,
            stale: u32::MAX,
            limit: 2,
        };
        assert!(w.tick(5));
        assert_eq!(w.stale, u32::MAX);
    }

    #[test]
    fn one_second_of_ticks() {
        // Progress one tick short of a second apart is fine; a second of none is a hang.
        assert_eq!(HANG_MS, 1000);
        let mut w = Watchdog::new(0, HANG_TICKS);
        let mut beat = 0;
        for tick in 1..=10 * (HANG_TICKS - 1) {
            if tick % (HANG_TICKS - 1) == 0 {
                beat += 1;
            }
            assert!(!w.tick(beat), "tick {tick}");
        }
        let hang = (0..HANG_TICKS).map(|_| w.tick(beat)).position(|h| h);
        assert_eq!(hang, Some(HANG_TICKS as usize - 1));
    }

    #[test]
    fn messages() {
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
    fn pet_advances_this_cpus_heartbeat() {
        let before = HEARTBEAT[0].load(Ordering::Relaxed);
        pet();
        pet();
        assert_eq!(HEARTBEAT[0].load(Ordering::Relaxed), before.wrapping_add(2));
        // Not armed in tests: host NMIs are ignored.
        assert!(!on_host_nmi(0x1234));
    }
}
