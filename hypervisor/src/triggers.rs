//! Deterministic failure triggers: the way tests (and operators checking a deployment)
//! make the hypervisor fail on purpose. Off unless the command line says `triggers=on`.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One way to make the hypervisor fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A Rust panic.
    Panic,
    /// A read of an unmapped (but canonical) address: #PF.
    PageFault,
    /// A read of a non-canonical address: #GP.
    GeneralProtection,
    /// UD2: #UD.
    InvalidOpcode,
    /// DIV by zero: #DE.
    DivideError,
    /// INT3: #BP.
    Breakpoint,
    /// Corrupts a host-state field (CR4 without VMXE) of the VMCS about to be entered:
    /// the VM entry fails (armed; fires at the next VM entry).
    VmcsHost,
    /// A panic in the middle of handling a VM exit, after the handler computed its
    /// effect and before the commit (armed; fires at the next VM exit).
    MidExit,
    /// A panic now, and another in the middle of the recovery it starts (after the first
    /// repair passes): recovery itself fails once and is retried.
    RecoveryFail,
    /// Makes the named VM's arena record inconsistent (its configuration checksum), then
    /// panics: recovery must stop that VM and only that one.
    CorruptVm,
    /// CLI, then spin forever: only the watchdog can notice.
    Hang,
    /// Take an arena lock this CPU already holds: spins forever with interrupts off.
    Deadlock,
    /// A panic once the next VM exit has entered its commit (armed; fires at the next VM
    /// exit): recovery must finish that commit from the commit log (roll forward).
    MidCommit,
    /// Flips one bit of code that never runs ([`scrub_target`]) and returns: nothing
    /// fails until the image scrub finds the change (cause `image`).
    CodeFlip,
    /// A stray write into the arena header (one bit of its magic flipped, its base
    /// changed: [`overwrite_header`]), then a panic: the failure path must restore the
    /// header's fixed fields from the recovery anchor and recover as usual.
    ArenaHeader,
    /// Makes every VM entry of a VM fail from now on (the calling VM's, or those named on
    /// the console), through a flag in its arena record that recovery keeps: it models a
    /// VM whose state breaks every entry ([`break_guest_pat`] before each entry). Nothing
    /// fails at once.
    BadEntry,
    /// One bit of the next VM exit's guest RIP flipped after the exit was read, as a
    /// flipped frame pointer would show the run loop another exit (campaign finding 14):
    /// the check before the commit must catch it (armed; fires at the next VM exit).
    ExitFlip,
    /// Unbounded recursion on the current stack ([`recurse`]): the first push into the
    /// guard page below it faults, the #PF's own delivery faults again (#DF, on its IST
    /// stack), and recovery goes on as from any exception (`arch::stacks`).
    StackOverflow,
    /// A stray write into the arena's boot record ([`overwrite_boot_record`]), then a
    /// panic: the recovery boot must restore the record from its copy.
    BootRecord,
    /// A panic in the middle of the next VM creation (`vm create`), after its arena pages
    /// were taken and its record written, before it is runnable: recovery must undo the
    /// creation (armed; fires in the next VM creation).
    MidCreate,
    /// A panic in the middle of the next VM reset (`vm reset`, or a guest's reboot), once
    /// half the VM's RAM is cleared: recovery must complete the reset (armed; fires in the
    /// next VM reset).
    MidReset,
    /// The run loop goes on (it pets the heartbeat, the console answers) but never enters
    /// a VM again ([`no_entry`]), as twice after a code flip in a campaign: only the
    /// watchdog's no-entry check can notice, while a VM is runnable.
    NoEntry,
}

impl Trigger {
    pub const ALL: [Trigger; 22] = [
        Trigger::Panic,
        Trigger::PageFault,
        Trigger::GeneralProtection,
        Trigger::InvalidOpcode,
        Trigger::DivideError,
        Trigger::Breakpoint,
        Trigger::VmcsHost,
        Trigger::MidExit,
        Trigger::RecoveryFail,
        Trigger::CorruptVm,
        Trigger::Hang,
        Trigger::Deadlock,
        Trigger::MidCommit,
        Trigger::CodeFlip,
        Trigger::ArenaHeader,
        Trigger::BadEntry,
        Trigger::ExitFlip,
        Trigger::StackOverflow,
        Trigger::BootRecord,
        Trigger::MidCreate,
        Trigger::MidReset,
        Trigger::NoEntry,
    ];

    /// The name used on the console: `trigger NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Panic => "panic",
            Trigger::PageFault => "pf",
            Trigger::GeneralProtection => "gp",
            Trigger::InvalidOpcode => "ud",
            Trigger::DivideError => "de",
            Trigger::Breakpoint => "bp",
            Trigger::VmcsHost => "vmcs-host",
            Trigger::MidExit => "mid-exit",
            Trigger::RecoveryFail => "recovery-fail",
            Trigger::CorruptVm => "corrupt-vm",
            Trigger::Hang => "hang",
            Trigger::Deadlock => "deadlock",
            Trigger::MidCommit => "mid-commit",
            Trigger::CodeFlip => "code-flip",
            Trigger::ArenaHeader => "arena-header",
            Trigger::BadEntry => "bad-entry",
            Trigger::ExitFlip => "exit-flip",
            Trigger::StackOverflow => "stack-overflow",
            Trigger::BootRecord => "boot-record",
            Trigger::MidCreate => "mid-create",
            Trigger::MidReset => "mid-reset",
            Trigger::NoEntry => "no-entry",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the trigger takes a VM name on the console (`trigger corrupt-vm NAME`,
    /// `trigger bad-entry NAME [NAME...]`).
    pub fn needs_vm(self) -> bool {
        matches!(self, Trigger::CorruptVm | Trigger::BadEntry)
    }

    /// Whether the console trigger takes several VM names (all marked at once, so that
    /// their failures can fall within one recovery).
    pub fn takes_vm_list(self) -> bool {
        self == Trigger::BadEntry
    }

    /// The number a test guest passes to the `trigger` hypercall (its index in [`ALL`]).
    ///
    /// [`ALL`]: Trigger::ALL
    pub fn from_number(n: u64) -> Option<Self> {
        Self::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// For a trigger that is armed rather than fired at once ([`arm`]): where it fires,
    /// for the console's reply `trigger: KIND armed: fires WHEN`.
    pub fn armed_when(self) -> Option<&'static str> {
        Some(match self {
            Trigger::VmcsHost => "at the next VM entry",
            Trigger::MidExit | Trigger::MidCommit | Trigger::ExitFlip => "at the next VM exit",
            Trigger::MidCreate => "in the next VM creation",
            Trigger::MidReset => "in the next VM reset",
            _ => return None,
        })
    }
}

/// Triggers armed for a later point of the run loop. In `.bss`: a microreboot disarms
/// them, so each fires once.
static ARMED_VMCS_HOST: AtomicBool = AtomicBool::new(false);
static ARMED_MID_EXIT: AtomicBool = AtomicBool::new(false);
static ARMED_MID_COMMIT: AtomicBool = AtomicBool::new(false);
static ARMED_EXIT_FLIP: AtomicBool = AtomicBool::new(false);
static ARMED_MID_CREATE: AtomicBool = AtomicBool::new(false);
static ARMED_MID_RESET: AtomicBool = AtomicBool::new(false);
/// Trigger `no-entry` has fired: the run loop enters no VM until a microreboot.
static NO_ENTRY: AtomicBool = AtomicBool::new(false);
/// Host TSC when the last trigger that fails later fired (0: none), and which (its index
/// in [`Trigger::ALL`]), for the report's `trigger: 'KIND' was detected ...` line: how
/// long detection took ([`fired_before`]).
static FIRED_AT: AtomicU64 = AtomicU64::new(0);
static FIRED_KIND: AtomicU64 = AtomicU64::new(0);

/// Arms a trigger that fires later ([`Trigger::armed_when`]); false for a trigger that is
/// not armed but fired.
pub fn arm(trigger: Trigger) -> bool {
    match trigger {
        Trigger::VmcsHost => ARMED_VMCS_HOST.store(true, Ordering::SeqCst),
        Trigger::MidExit => ARMED_MID_EXIT.store(true, Ordering::SeqCst),
        Trigger::MidCommit => ARMED_MID_COMMIT.store(true, Ordering::SeqCst),
        Trigger::ExitFlip => ARMED_EXIT_FLIP.store(true, Ordering::SeqCst),
        Trigger::MidCreate => ARMED_MID_CREATE.store(true, Ordering::SeqCst),
        Trigger::MidReset => ARMED_MID_RESET.store(true, Ordering::SeqCst),
        _ => return false,
    }
    true
}

/// Whether `vmcs-host` is armed; disarms it.
pub fn take_vmcs_host() -> bool {
    ARMED_VMCS_HOST.swap(false, Ordering::SeqCst)
}

/// Whether `mid-commit` is armed; disarms it.
pub fn take_mid_commit() -> bool {
    ARMED_MID_COMMIT.swap(false, Ordering::SeqCst)
}

/// Whether `mid-exit` is armed; disarms it.
pub fn take_exit_flip() -> bool {
    ARMED_EXIT_FLIP.swap(false, Ordering::SeqCst)
}

pub fn take_mid_exit() -> bool {
    ARMED_MID_EXIT.swap(false, Ordering::SeqCst)
}

/// Whether `mid-create` is armed; disarms it.
pub fn take_mid_create() -> bool {
    ARMED_MID_CREATE.swap(false, Ordering::SeqCst)
}

/// Whether `mid-reset` is armed; disarms it.
pub fn take_mid_reset() -> bool {
    ARMED_MID_RESET.swap(false, Ordering::SeqCst)
}

/// Whether `no-entry` fired (the run loop checks it before each VM entry).
#[inline]
pub fn no_entry() -> bool {
    NO_ENTRY.load(Ordering::Relaxed)
}

/// Whether the trigger's failure comes some time after it fires, found by a detector
/// (the watchdog): the report then says how long detection took.
pub fn detected_later(trigger: Trigger) -> bool {
    matches!(
        trigger,
        Trigger::Hang | Trigger::Deadlock | Trigger::NoEntry
    )
}

/// Notes that `trigger` fires now, at host TSC `now`.
#[cfg(any(test, target_os = "none"))]
fn note_fired(trigger: Trigger, now: u64) {
    if detected_later(trigger) {
        let kind = Trigger::ALL.iter().position(|&t| t == trigger).unwrap_or(0);
        FIRED_KIND.store(kind as u64, Ordering::SeqCst);
        FIRED_AT.store(now, Ordering::SeqCst);
    }
}

/// How long the detection of a trigger's failure took: the report's line
/// `trigger: 'KIND' was detected N cycles (M.M ms) after it fired` (README, "Console
/// lines"), which `scripts/bench-watchdog` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    pub trigger: Trigger,
    pub cycles: u64,
    /// The TSC rate, for the milliseconds (0: unknown, none printed).
    pub tsc_hz: u64,
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trigger: '{}' was detected {} cycles",
            self.trigger.name(),
            self.cycles
        )?;
        if self.tsc_hz != 0 {
            let tenths = u128::from(self.cycles) * 10_000 / u128::from(self.tsc_hz);
            write!(f, " ({}.{} ms)", tenths / 10, tenths % 10)?;
        }
        f.write_str(" after it fired")
    }
}

/// The detection of the trigger that fired last in this instance (`.bss`: a microreboot
/// forgets it), if it is one a detector finds later and it fired before `detected` (the
/// failure's detection TSC).
pub fn fired_before(detected: u64, tsc_hz: u64) -> Option<Detected> {
    let fired = FIRED_AT.load(Ordering::SeqCst);
    if fired == 0 {
        return None;
    }
    let trigger = Trigger::from_number(FIRED_KIND.load(Ordering::SeqCst))?;
    Some(Detected {
        trigger,
        cycles: detected.checked_sub(fired)?,
        tsc_hz,
    })
}

/// Lists the trigger names, separated by spaces.
pub struct Names;

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in Trigger::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(t.name())?;
        }
        Ok(())
    }
}

/// An address far above anything the boot identity map (first 4 GiB) covers.
pub const UNMAPPED_ADDRESS: u64 = 0x0000_4000_0000_0000;
/// An address with bits 63:47 not all equal: any access raises #GP.
pub const NON_CANONICAL_ADDRESS: u64 = 0x8000_0000_0000_0000;

/// Makes the failure happen. Returns only if the CPU did not fault (which would itself be
/// a bug worth reporting).
#[cfg(target_os = "none")]
pub fn fire(trigger: Trigger) {
    use core::arch::asm;
    note_fired(trigger, crate::arch::instructions::rdtsc());
    match trigger {
        Trigger::Panic => panic!("trigger: deliberate panic"),
        // SAFETY (the four asm blocks): each is meant to fault; the fault is reported as a
        // hypervisor failure and the code after it never runs. No memory is written.
        Trigger::PageFault => unsafe {
            asm!("mov {tmp}, [{addr}]", addr = in(reg) UNMAPPED_ADDRESS, tmp = out(reg) _, options(nostack))
        },
        Trigger::GeneralProtection => unsafe {
            asm!("mov {tmp}, [{addr}]", addr = in(reg) NON_CANONICAL_ADDRESS, tmp = out(reg) _, options(nostack))
        },
        Trigger::InvalidOpcode => unsafe { asm!("ud2", options(nomem, nostack)) },
        Trigger::DivideError => unsafe {
            asm!("xor edx, edx", "xor eax, eax", "div ecx", in("ecx") 0u32, out("eax") _, out("edx") _, options(nomem, nostack))
        },
        Trigger::Breakpoint => unsafe { asm!("int3", options(nomem, nostack)) },
        Trigger::RecoveryFail | Trigger::CorruptVm => {
            panic!("trigger: deliberate panic ({})", trigger.name())
        }
        // The caller has overwritten the header ([`overwrite_header`]).
        Trigger::ArenaHeader => panic!("trigger: arena header overwritten"),
        // The caller has overwritten the record ([`overwrite_boot_record`]).
        Trigger::BootRecord => panic!("trigger: arena boot record overwritten"),
        Trigger::StackOverflow => {
            recurse(0);
        }
        Trigger::CodeFlip => {
            let target = scrub_target as *const () as *mut u8;
            // SAFETY: the first byte of `scrub_target`, a function nothing calls: the
            // image is identity-mapped (read-only, hence the CR0.WP window), and changing
            // it is the point (the scrub must notice; the recovery restores it from the
            // pristine copy).
            crate::arch::protect::with_writes_allowed(|| unsafe {
                core::ptr::write_volatile(target, core::ptr::read_volatile(target) ^ 0x10)
            });
        }
        Trigger::VmcsHost
        | Trigger::MidExit
        | Trigger::MidCommit
        | Trigger::ExitFlip
        | Trigger::MidCreate
        | Trigger::MidReset => {
            arm(trigger);
        }
        // The caller has set the VM's flag; its next VM entry fails.
        Trigger::BadEntry => {}
        Trigger::NoEntry => NO_ENTRY.store(true, Ordering::SeqCst),
        Trigger::Hang => {
            crate::arch::instructions::disable_interrupts();
            loop {
                core::hint::spin_loop();
            }
        }
        Trigger::Deadlock => {
            // Without VMs there is no arena: a lock of the same kind stands in.
            static LOCK: crate::arena::lock::ArenaLock = crate::arena::lock::ArenaLock::new();
            deadlock(&LOCK)
        }
    }
}

/// The IA32_PAT value trigger `bad-entry` gives a guest: `pat` with its byte 0 (PA0) set
/// to memory type 2, which is reserved. With the "load IA32_PAT" VM-entry control (which
/// Lazarus always sets), VM entry requires each byte of the guest IA32_PAT field to be 0,
/// 1, 4, 5, 6 or 7 (SDM Vol. 3C §27.3.1.1), so the entry fails with "invalid guest state"
/// (basic exit reason 33). Recovery's guest-state check does not look at PAT, so the VM
/// is resumed and fails again, as a VM whose state breaks every entry would.
pub fn broken_pat(pat: u64) -> u64 {
    (pat & !0xff) | 2
}

/// Trigger `arena-header`: the stray write, before the panic. Flips one bit of the
/// header's magic and moves its base by 2 MiB, so that both the "is this an arena" check
/// and the fixed-field checksum would fail if nothing restored them.
pub fn overwrite_header(header: &mut crate::arena::ArenaHeader) {
    header.magic ^= 1 << 13;
    header.base = header.base.wrapping_add(0x20_0000);
}

/// Trigger `boot-record`: the stray write, before the panic. Changes the measured TSC
/// frequency (a word the checksum covers) and leaves the checksum as it was: the record
/// no longer matches it.
pub fn overwrite_boot_record(record: &mut crate::arena::BootRecord) {
    record.tsc_hz ^= 1 << 20;
}

/// Trigger `stack-overflow`: calls itself with a 512-byte frame until the stack runs
/// out. The frame is used after the call, so the recursion is neither a loop nor a tail
/// call; `black_box` keeps the compiler from seeing that it never ends.
#[inline(never)]
pub fn recurse(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(frame[(depth % 64) as usize])
}

/// Code that never runs, for `code-flip` to change. Not inlined and kept, so it has an
/// address of its own in `.text`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn scrub_target() -> u64 {
    core::hint::black_box(0x5c2b)
}

/// Trigger `deadlock`: takes `lock` (the arena's, when VMs run) twice on the same CPU with
/// interrupts off; the second acquire waits for a release that can never come.
#[cfg(target_os = "none")]
pub fn deadlock(lock: &crate::arena::lock::ArenaLock) -> ! {
    note_fired(Trigger::Deadlock, crate::arch::instructions::rdtsc());
    crate::arch::instructions::disable_interrupts();
    lock.acquire(0, 0);
    lock.acquire(0, 0);
    unreachable!("an arena lock was taken twice")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Trigger::ALL {
            assert_eq!(Trigger::from_name(t.name()), Some(t));
        }
        assert_eq!(Trigger::from_name("nope"), None);
        assert_eq!(
            std::format!("{Names}"),
            "panic pf gp ud de bp vmcs-host mid-exit recovery-fail corrupt-vm hang deadlock mid-commit code-flip arena-header bad-entry exit-flip stack-overflow boot-record mid-create mid-reset no-entry"
        );
        assert_eq!(Trigger::from_number(14), Some(Trigger::ArenaHeader));
        assert_eq!(Trigger::from_number(15), Some(Trigger::BadEntry));
        assert_eq!(Trigger::from_number(16), Some(Trigger::ExitFlip));
        assert_eq!(Trigger::from_number(17), Some(Trigger::StackOverflow));
        assert_eq!(Trigger::from_number(18), Some(Trigger::BootRecord));
        assert_eq!(Trigger::from_number(19), Some(Trigger::MidCreate));
        assert_eq!(Trigger::from_number(20), Some(Trigger::MidReset));
        assert_eq!(Trigger::from_number(21), Some(Trigger::NoEntry));
        assert_eq!(Trigger::from_number(22), None);
        assert_eq!(abi::TRIGGERS.len(), Trigger::ALL.len());
        assert_eq!(Trigger::from_number(7), Some(Trigger::MidExit));
        for (n, name) in abi::TRIGGERS.iter().enumerate() {
            assert_eq!(
                Trigger::from_number(n as u64).map(Trigger::name),
                Some(*name)
            );
        }
        assert_eq!(Trigger::from_number(99), None);
        assert!(arm(Trigger::MidExit) && take_mid_exit() && !take_mid_exit());
        assert!(!arm(Trigger::Panic));
        assert!(!arm(Trigger::ArenaHeader));
        assert!(!Trigger::ArenaHeader.needs_vm());
        assert!(Trigger::BadEntry.needs_vm() && Trigger::BadEntry.takes_vm_list());
        assert!(Trigger::CorruptVm.needs_vm() && !Trigger::CorruptVm.takes_vm_list());
        assert!(!arm(Trigger::BadEntry));
        assert!(arm(Trigger::MidCreate) && take_mid_create() && !take_mid_create());
        assert!(arm(Trigger::MidReset) && take_mid_reset() && !take_mid_reset());
        for t in Trigger::ALL {
            assert_eq!(
                t.armed_when().is_some(),
                arm(t),
                "{t:?}: armed exactly when it has a place to fire"
            );
        }
        for take in [
            take_vmcs_host,
            take_mid_exit,
            take_mid_commit,
            take_exit_flip,
            take_mid_create,
            take_mid_reset,
        ] {
            take();
        }
        assert!(!arm(Trigger::NoEntry) && !Trigger::NoEntry.needs_vm());
    }

    #[test]
    fn detection_time_of_the_triggers_a_detector_finds() {
        assert_eq!(fired_before(1000, 0), None, "nothing fired");
        note_fired(Trigger::Panic, 500);
        assert_eq!(fired_before(1000, 0), None, "a panic is its own detection");
        note_fired(Trigger::NoEntry, 500);
        let d = fired_before(26_000_500, 50_000_000).unwrap();
        assert_eq!((d.trigger, d.cycles), (Trigger::NoEntry, 26_000_000));
        assert_eq!(
            d.to_string(),
            "trigger: 'no-entry' was detected 26000000 cycles (520.0 ms) after it fired"
        );
        assert_eq!(
            Detected { tsc_hz: 0, ..d }.to_string(),
            "trigger: 'no-entry' was detected 26000000 cycles after it fired"
        );
        assert_eq!(
            fired_before(400, 1),
            None,
            "a detection before the firing is no figure"
        );
        for t in Trigger::ALL {
            assert_eq!(
                detected_later(t),
                matches!(t, Trigger::Hang | Trigger::Deadlock | Trigger::NoEntry),
                "{t:?}"
            );
        }
    }

    #[test]
    fn bad_entry_pat_has_a_reserved_memory_type_in_byte_0_only() {
        // The PAT Lazarus gives a new guest (WB, WT, UC-, UC twice).
        let pat = 0x0007_0406_0007_0406;
        let bad = broken_pat(pat);
        assert_eq!(bad, 0x0007_0406_0007_0402);
        let types: std::vec::Vec<u64> = (0..8).map(|i| (bad >> (i * 8)) & 0xff).collect();
        let valid = [0, 1, 4, 5, 6, 7];
        assert!(!valid.contains(&types[0]), "byte 0 is reserved type 2");
        assert!(types[1..].iter().all(|t| valid.contains(t)));
        assert_eq!(broken_pat(bad), bad, "idempotent");
    }

    #[test]
    fn arena_header_damage_is_what_restore_fixed_repairs() {
        use crate::arena::ArenaHeader;
        let (base, size) = (0x0400_0000, 8 << 20);
        let mut header = ArenaHeader {
            generation: 5,
            recovery_count: 3,
            ..ArenaHeader::fixed(base, size)
        };
        let intact = header;
        overwrite_header(&mut header);
        assert_ne!(header.magic, intact.magic);
        assert_ne!(header.base, intact.base);
        assert_eq!(
            (header.size, header.fixed_checksum, header.generation),
            (intact.size, intact.fixed_checksum, intact.generation),
            "only the magic and the base change"
        );
        assert!(header.restore_fixed(base, size), "the damage is seen");
        assert_eq!(header, intact, "and repaired, counters kept");
        assert!(!header.restore_fixed(base, size));
    }
}
