//! The arena: the preserved region that holds everything a VM needs to survive a
//! microreboot of the hypervisor (DESIGN 3).
//!
//! Its rules are what make recovery possible, so the types here keep them by
//! construction: every record is `#[repr(C)]` plain data (integers, fixed arrays,
//! physical addresses; no pointers into the image or the heap, no enums whose invalid
//! values would be undefined behaviour to read back), the location and size are fixed
//! at cold boot, the header carries a magic, a layout version, a boot generation and a
//! checksum of the parts that never change, and [`ArenaRoot::validate`] checks all of it
//! so that a new instance can decide what to trust.
//!
//! Layout: the [`ArenaRoot`] (header, page bitmap, VM table) occupies the first pages;
//! the remaining pages are handed out one at a time by the bitmap for VMCS pages, XSAVE
//! areas and EPT tables.

pub mod boot;
pub mod commit;
pub mod intent;
pub mod lock;
pub mod pages;
pub mod recovery;
pub mod suspect;

use core::fmt;

pub use boot::BootRecord;
pub use commit::CommitLog;
pub use intent::{CreateIntent, TransactionReport};
pub use lock::ArenaLock;
pub use pages::{PageBitmap, PageError, MAX_PAGES};
pub use recovery::{Cause, RecoveryRecord, RecoveryState, Repairs};
pub use suspect::SuspectRecord;

use crate::devices::Devices;
use crate::vmx::exit::ExitReason;
use crate::vmx::fields::GuestRegisters;

/// "LZARENA1".
pub const ARENA_MAGIC: u64 = u64::from_le_bytes(*b"LZARENA1");
/// Bumped whenever any `#[repr(C)]` type in the arena changes shape.
pub const LAYOUT_VERSION: u32 = 6;
/// How many VMs the table holds.
pub const MAX_VMS: usize = 16;
/// Longest VM name (bytes, ASCII).
pub const NAME_LEN: usize = 16;
/// The guest arguments of an ELF VM, or the kernel command line of a Linux VM.
pub const ARGS_LEN: usize = 512;
/// Why a VM stopped, as text for `vm list`.
pub const REASON_LEN: usize = 96;
/// One console line being assembled from a VM's `console_write` calls.
pub const CONSOLE_LINE: usize = 160;

const PAGE: u64 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaHeader {
    pub magic: u64,
    pub layout_version: u32,
    /// `size_of::<ArenaRoot>()` of the instance that created the arena.
    pub root_size: u32,
    /// Physical base and size, as chosen at cold boot.
    pub base: u64,
    pub size: u64,
    /// FNV-1a of the fields above: they never change after cold boot.
    pub fixed_checksum: u64,
    /// Incremented by every boot of the hypervisor (cold or recovery).
    pub generation: u64,
    /// Incremented by every recovery.
    pub recovery_count: u64,
}

impl ArenaHeader {
    /// The header cold boot writes for an arena at `base` of `size` bytes (counters at 0).
    pub fn fixed(base: u64, size: u64) -> Self {
        let mut h = ArenaHeader {
            magic: ARENA_MAGIC,
            layout_version: LAYOUT_VERSION,
            root_size: core::mem::size_of::<ArenaRoot>() as u32,
            base,
            size,
            fixed_checksum: 0,
            generation: 0,
            recovery_count: 0,
        };
        h.fixed_checksum = h.compute_checksum();
        h
    }

    /// Rewrites the fields that never change after cold boot with what they must be for
    /// an arena at `base` of `size` bytes, keeping the counters; returns whether any was
    /// wrong. For a caller that knows `base` and `size` from elsewhere (the recovery
    /// anchor, which is checksummed and lives outside the arena): a stray write into the
    /// header then costs nothing, while the rest of the root is still validated.
    pub fn restore_fixed(&mut self, base: u64, size: u64) -> bool {
        let want = ArenaHeader {
            generation: self.generation,
            recovery_count: self.recovery_count,
            ..ArenaHeader::fixed(base, size)
        };
        let damaged = *self != want;
        *self = want;
        damaged
    }

    fn compute_checksum(&self) -> u64 {
        let mut h = Fnv::new();
        h.u64(self.magic);
        h.u64(u64::from(self.layout_version));
        h.u64(u64::from(self.root_size));
        h.u64(self.base);
        h.u64(self.size);
        h.finish()
    }
}

/// A VM's lifecycle state, stored as a raw `u32` in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum VmState {
    /// Slot unused.
    Free = 0,
    /// Ready to run or running.
    Runnable = 1,
    /// Executed HLT with nothing to wake it.
    Halted = 2,
    /// Stopped by the hypervisor (a fault, `vm stop`); `stop_reason` says why.
    Stopped = 3,
    /// Powered itself off.
    Off = 4,
    /// Executed HLT with interrupts enabled: runs again when an interrupt is due.
    Waiting = 5,
}

impl VmState {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Free,
            1 => Self::Runnable,
            2 => Self::Halted,
            3 => Self::Stopped,
            4 => Self::Off,
            5 => Self::Waiting,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Runnable => "running",
            Self::Halted => "halted",
            Self::Stopped => "stopped",
            Self::Off => "off",
            Self::Waiting => "idle",
        }
    }
}

/// What a VM runs.
pub const KIND_ELF: u32 = 0;
pub const KIND_LINUX: u32 = 1;
/// `initrd_module` when there is none.
pub const NO_MODULE: u32 = u32::MAX;

/// What to do when the guest triple-faults.
pub const ON_TRIPLE_FAULT_STOP: u32 = 0;
pub const ON_TRIPLE_FAULT_RESET: u32 = 1;
/// What to do when the guest resets itself (i8042, 0xcf9, 0x92).
pub const ON_REBOOT_RESET: u32 = 0;
pub const ON_REBOOT_STOP: u32 = 1;

/// How the VM was configured: never changes while the VM exists (checksummed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Index of the GRUB module holding the guest image (ELF or bzImage).
    pub module_index: u32,
    pub on_triple_fault: u32,
    /// [`KIND_ELF`] or [`KIND_LINUX`].
    pub kind: u32,
    /// Index of the initramfs module of a Linux VM, [`NO_MODULE`] if none.
    pub initrd_module: u32,
    /// What a guest-requested reset does: [`ON_REBOOT_RESET`] or [`ON_REBOOT_STOP`].
    pub on_reboot: u32,
    pub _pad: u32,
    /// Guest RAM: host-physical range, mapped at guest-physical 0.
    pub ram_start: u64,
    pub ram_size: u64,
    pub entry: u64,
    pub args: [u8; ARGS_LEN],
}

/// Progress of the exit being handled (DESIGN 4, "A VM exit is a transaction").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    /// [`Phase`] as a raw value.
    pub phase: u32,
    pub exit_reason: u32,
    /// Number of the exit being or last handled.
    pub exit_seq: u64,
    /// Guest RIP when the exit happened (what a rolled-back exit re-executes).
    pub rip_at_exit: u64,
    /// [`crate::vm::exits::Exit::digest`] of the exit as read from the VMCS: checked
    /// again before the commit.
    pub exit_digest: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    /// The vCPU is in (or about to enter) the guest.
    InGuest = 0,
    /// An exit is being handled; nothing is committed yet.
    Handling = 1,
    /// The exit's effect is committed; the next step is VM entry.
    Committed = 2,
    /// The commit is being applied: a failure now leaves the exit half done, so it can
    /// neither be rolled back nor re-executed (recovery stops the VM).
    Committing = 3,
}

impl Phase {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::InGuest,
            1 => Self::Handling,
            2 => Self::Committed,
            3 => Self::Committing,
            _ => return None,
        })
    }
}

/// MSRs that the guest uses directly (pass-through) and that the VMCS does not switch,
/// so the scheduler swaps them between VMs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwappedMsrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    /// IA32_TSC_AUX: RDTSCP and RDPID read it directly.
    pub tsc_aux: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRecord {
    /// Host-physical address of the VMCS (an arena page).
    pub vmcs: u64,
    /// Host-physical address of the XSAVE area (an arena page).
    pub xsave: u64,
    /// Whether VMLAUNCH succeeded since the last VMCLEAR (next entry is VMRESUME).
    pub launched: u32,
    /// Physical CPU the vCPU last ran on.
    pub cpu: u32,
    pub regs: GuestRegisters,
    pub journal: Journal,
    /// The guest's XCR0 (set by XSETBV).
    pub xcr0: u64,
    /// Whether the XSAVE area holds this vCPU's state (it is not live in the registers).
    pub fpu_saved: u32,
    pub _pad: u32,
    pub msrs: SwappedMsrs,
    /// The guest's CR8 (task priority, bits 3:0): CR8 accesses exit, since the physical
    /// CR8 is the host's.
    pub cr8: u64,
    /// DR0-DR3 and DR6, which the guest uses directly and the VMCS does not switch (DR7
    /// is in the VMCS): swapped with the FPU state, live while the VM is current.
    pub debug: DebugRegisters,
}

/// The debug registers the scheduler swaps between VMs (SDM Vol. 3B §18.2).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegisters {
    pub dr: [u64; 4],
    pub dr6: u64,
}

impl DebugRegisters {
    /// DR6's value at reset: reserved bits set, no condition recorded (SDM Vol. 3B §18.2.3).
    pub const DR6_INIT: u64 = 0xffff_0ff0;
    pub const INIT: DebugRegisters = DebugRegisters {
        dr: [0; 4],
        dr6: Self::DR6_INIT,
    };
}

impl Default for DebugRegisters {
    fn default() -> Self {
        Self::INIT
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmStats {
    pub exits: u64,
    pub by_reason: [u64; ExitReason::COUNT],
    /// TSC ticks spent in guest mode (including exit handling on its behalf).
    pub guest_tsc: u64,
    pub unclaimed_io: u64,
    pub unknown_msr: u64,
    pub hypercalls: u64,
    pub hypercall_errors: u64,
    /// External interrupts injected.
    pub interrupts: u64,
    /// Timer periods that passed while the VM could not run (caught up, not replayed).
    pub timer_missed: u64,
    /// TSC ticks from each VM exit to the end of its commit (the exits' handling).
    pub exit_tsc: u64,
    /// Of those, the ticks of the check before each commit (`run::confirm_decision`).
    pub check_tsc: u64,
}

impl Default for VmStats {
    fn default() -> Self {
        Self {
            exits: 0,
            by_reason: [0; ExitReason::COUNT],
            guest_tsc: 0,
            unclaimed_io: 0,
            unknown_msr: 0,
            hypercalls: 0,
            hypercall_errors: 0,
            interrupts: 0,
            timer_missed: 0,
            exit_tsc: 0,
            check_tsc: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmRecord {
    /// [`VmState`] as a raw value.
    pub state: u32,
    pub id: u32,
    /// ASCII, NUL-padded.
    pub name: [u8; NAME_LEN],
    pub config: VmConfig,
    /// FNV-1a of `id`, `name` and `config`.
    pub config_checksum: u64,
    /// Host-physical address of the EPT PML4 (an arena page); 0 when none.
    pub ept_root: u64,
    pub vcpu: VcpuRecord,
    pub stats: VmStats,
    /// The VM's device models (DESIGN 4: device-model state lives in the arena).
    pub devices: Devices,
    /// Host TSC when the VM (re)started: guest time is measured from it, and the guest's
    /// TSC offset makes its TSC start there at 0.
    pub clock_start: u64,
    /// Whether interrupt-window exiting is on in the VMCS (an interrupt waits for the
    /// guest to accept it).
    pub window_open: u32,
    pub _pad2: u32,
    /// ASCII, NUL-padded.
    pub stop_reason: [u8; REASON_LEN],
    pub console_len: u32,
    pub console: [u8; CONSOLE_LINE],
    /// The hypervisor failures this VM was in flight at, in the current window
    /// ([`suspect`]): kept across recoveries, cleared by `vm reset` and a new VM.
    pub suspect: SuspectRecord,
    /// Test trigger `bad-entry` ([`suspect::BAD_ENTRY_ON`]): every VM entry of this VM is
    /// made to fail, and a recovery keeps it so (it models a VM whose state breaks every
    /// entry). Acted on only with `triggers=on`.
    pub bad_entry: u32,
    /// A reset under way ([`intent::RESET_NONE`], [`intent::RESET_OPERATOR`] or
    /// [`intent::RESET_GUEST`]): set before its first step, cleared after its last, so
    /// recovery finds an interrupted one and completes it (`intent`).
    pub reset: u32,
}

impl VmRecord {
    pub const EMPTY: Self = Self {
        state: VmState::Free as u32,
        id: 0,
        name: [0; NAME_LEN],
        config: VmConfig {
            module_index: 0,
            on_triple_fault: ON_TRIPLE_FAULT_STOP,
            kind: KIND_ELF,
            initrd_module: NO_MODULE,
            on_reboot: ON_REBOOT_RESET,
            _pad: 0,
            ram_start: 0,
            ram_size: 0,
            entry: 0,
            args: [0; ARGS_LEN],
        },
        config_checksum: 0,
        ept_root: 0,
        vcpu: VcpuRecord {
            vmcs: 0,
            xsave: 0,
            launched: 0,
            cpu: 0,
            regs: GuestRegisters {
                rax: 0,
                rbx: 0,
                rcx: 0,
                rdx: 0,
                rsi: 0,
                rdi: 0,
                rbp: 0,
                r8: 0,
                r9: 0,
                r10: 0,
                r11: 0,
                r12: 0,
                r13: 0,
                r14: 0,
                r15: 0,
                cr2: 0,
            },
            journal: Journal {
                phase: 0,
                exit_reason: 0,
                exit_seq: 0,
                rip_at_exit: 0,
                exit_digest: 0,
            },
            xcr0: 1,
            fpu_saved: 0,
            _pad: 0,
            msrs: SwappedMsrs {
                star: 0,
                lstar: 0,
                cstar: 0,
                sfmask: 0,
                kernel_gs_base: 0,
                tsc_aux: 0,
            },
            cr8: 0,
            debug: DebugRegisters::INIT,
        },
        stats: VmStats {
            exits: 0,
            by_reason: [0; ExitReason::COUNT],
            guest_tsc: 0,
            unclaimed_io: 0,
            unknown_msr: 0,
            hypercalls: 0,
            hypercall_errors: 0,
            interrupts: 0,
            timer_missed: 0,
            exit_tsc: 0,
            check_tsc: 0,
        },
        devices: Devices::new(0),
        clock_start: 0,
        window_open: 0,
        _pad2: 0,
        stop_reason: [0; REASON_LEN],
        console_len: 0,
        console: [0; CONSOLE_LINE],
        suspect: SuspectRecord::EMPTY,
        bad_entry: 0,
        reset: intent::RESET_NONE,
    };

    pub fn state(&self) -> Option<VmState> {
        VmState::from_raw(self.state)
    }

    /// Whether the VM can run again (runnable, or waiting for an interrupt).
    pub fn resumable(&self) -> bool {
        matches!(
            self.state(),
            Some(VmState::Runnable) | Some(VmState::Waiting)
        )
    }

    pub fn set_state(&mut self, state: VmState) {
        self.state = state as u32;
    }

    pub fn name(&self) -> &str {
        text(&self.name)
    }

    pub fn stop_reason(&self) -> &str {
        text(&self.stop_reason)
    }

    pub fn args(&self) -> &str {
        text(&self.config.args)
    }

    /// Records why the VM stopped (truncated to fit).
    pub fn set_stop_reason(&mut self, reason: fmt::Arguments) {
        let mut w = FixedWriter {
            buf: &mut self.stop_reason,
            len: 0,
        };
        let _ = fmt::write(&mut w, reason);
        let len = w.len;
        self.stop_reason[len..].fill(0);
    }

    pub fn compute_config_checksum(&self) -> u64 {
        let mut h = Fnv::new();
        h.u64(u64::from(self.id));
        h.bytes(&self.name);
        h.u64(u64::from(self.config.module_index));
        h.u64(u64::from(self.config.on_triple_fault));
        h.u64(u64::from(self.config.kind));
        h.u64(u64::from(self.config.initrd_module));
        h.u64(u64::from(self.config.on_reboot));
        h.u64(self.config.ram_start);
        h.u64(self.config.ram_size);
        h.u64(self.config.entry);
        h.bytes(&self.config.args);
        h.finish()
    }

    pub fn seal_config(&mut self) {
        self.config_checksum = self.compute_config_checksum();
    }
}

/// The NUL-terminated ASCII text in `bytes` ("" if it is not ASCII).
pub fn text(bytes: &[u8]) -> &str {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    match core::str::from_utf8(&bytes[..len]) {
        Ok(s) if s.is_ascii() => s,
        _ => "",
    }
}

/// Copies `s` into a NUL-padded field; false if it does not fit (leaving room for a NUL).
pub fn set_text(field: &mut [u8], s: &str) -> bool {
    if s.len() >= field.len() {
        return false;
    }
    field.fill(0);
    field[..s.len()].copy_from_slice(s.as_bytes());
    true
}

struct FixedWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for FixedWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len().saturating_sub(self.len + 1);
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Everything at the start of the arena.
#[repr(C)]
pub struct ArenaRoot {
    pub header: ArenaHeader,
    /// Guards the VM table and the page bitmap.
    pub lock: ArenaLock,
    pub pages: PageBitmap,
    pub vms: [VmRecord; MAX_VMS],
    /// Next VM id to hand out.
    pub next_vm_id: u32,
    pub _pad: u32,
    /// The I/O bitmaps A and B and the MSR bitmap shared by every VMCS (arena pages).
    pub io_bitmaps: [u64; 2],
    pub msr_bitmap: u64,
    /// 1 + the slot of the VM entered last (its exit may be in flight), 0 when none.
    pub running: u32,
    /// 1 + the slot of the VM whose FPU/SSE/AVX state and swapped MSRs are live in the
    /// CPU's registers (not in its record), 0 when none. They survive a microreboot (the
    /// host never uses them), so recovery saves them from the registers.
    pub fpu_owner: u32,
    /// The boot configuration a recovery boot starts from.
    pub boot: BootRecord,
    /// The recovery in progress and the recovery log.
    pub recovery: RecoveryState,
    /// The exit being committed (this CPU's), for rolling a half-done commit forward.
    pub commit: CommitLog,
    /// The VM creation under way, which recovery undoes (`intent`).
    pub create: CreateIntent,
    /// What recovery did to interrupted creations and resets, until it is printed.
    pub transactions: TransactionReport,
}

/// Why the arena cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArenaError {
    BadMagic(u64),
    BadVersion(u32),
    BadRootSize {
        recorded: u32,
        expected: u32,
    },
    Moved {
        recorded_base: u64,
        recorded_size: u64,
    },
    BadChecksum,
    TooSmall {
        size: u64,
        needed: u64,
    },
    Pages(PageError),
    BadVmState {
        slot: usize,
        raw: u32,
    },
    BadVmConfig {
        slot: usize,
    },
    BadVmName {
        slot: usize,
    },
    PageNotOwned {
        slot: usize,
        what: &'static str,
        addr: u64,
    },
    RamOutOfBounds {
        slot: usize,
    },
    RamOverlap {
        a: usize,
        b: usize,
    },
    DuplicateName {
        a: usize,
        b: usize,
    },
    BadJournal {
        slot: usize,
    },
    BadReset {
        slot: usize,
        raw: u32,
    },
    BadDevice {
        slot: usize,
        device: &'static str,
        what: &'static str,
    },
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "bad magic {m:#018x}"),
            Self::BadVersion(v) => {
                write!(f, "layout version {v}, this build uses {LAYOUT_VERSION}")
            }
            Self::BadRootSize { recorded, expected } => {
                write!(f, "root size {recorded}, this build uses {expected}")
            }
            Self::Moved {
                recorded_base,
                recorded_size,
            } => {
                write!(f, "arena recorded at {recorded_base:#x} size {recorded_size:#x}, expected elsewhere")
            }
            Self::BadChecksum => f.write_str("header checksum mismatch"),
            Self::TooSmall { size, needed } => {
                write!(f, "arena of {size} bytes, needs at least {needed}")
            }
            Self::Pages(e) => write!(f, "{e}"),
            Self::BadVmState { slot, raw } => write!(f, "vm slot {slot}: invalid state {raw}"),
            Self::BadVmConfig { slot } => {
                write!(f, "vm slot {slot}: configuration checksum mismatch")
            }
            Self::BadVmName { slot } => write!(f, "vm slot {slot}: invalid name"),
            Self::PageNotOwned { slot, what, addr } => {
                write!(
                    f,
                    "vm slot {slot}: {what} at {addr:#x} is not an allocated arena page"
                )
            }
            Self::RamOutOfBounds { slot } => {
                write!(f, "vm slot {slot}: guest RAM range is invalid")
            }
            Self::RamOverlap { a, b } => write!(f, "vm slots {a} and {b}: guest RAM overlaps"),
            Self::DuplicateName { a, b } => write!(f, "vm slots {a} and {b}: same name"),
            Self::BadJournal { slot } => write!(f, "vm slot {slot}: invalid journal phase"),
            Self::BadReset { slot, raw } => write!(f, "vm slot {slot}: invalid reset intent {raw}"),
            Self::BadDevice { slot, device, what } => write!(f, "vm slot {slot}: {device}: {what}"),
        }
    }
}

/// Whether a VM name is acceptable: 1-15 characters of `a-z 0-9 - _`, not "lazarus".
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < NAME_LEN
        && name != "lazarus"
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl ArenaRoot {
    /// Pages the root itself occupies.
    pub const fn root_pages() -> u64 {
        (core::mem::size_of::<ArenaRoot>() as u64).div_ceil(PAGE)
    }

    /// Initialises a fresh arena at cold boot. `self` must be the start of the region.
    pub fn init(&mut self, base: u64, size: u64) -> Result<(), ArenaError> {
        let needed = (Self::root_pages() + 4) * PAGE;
        if size < needed {
            return Err(ArenaError::TooSmall { size, needed });
        }
        self.header = ArenaHeader::fixed(base, size);
        self.header.generation = 1;
        self.lock = ArenaLock::new();
        self.pages.init(size / PAGE);
        self.pages
            .reserve(0, Self::root_pages())
            .map_err(ArenaError::Pages)?;
        self.vms = [VmRecord::EMPTY; MAX_VMS];
        self.next_vm_id = 1;
        self.io_bitmaps = [0; 2];
        self.msr_bitmap = 0;
        self.running = 0;
        self.fpu_owner = 0;
        self.recovery.in_progress = 0;
        self.recovery.inflight_slot = recovery::NO_SLOT;
        self.recovery.suspect_attempts = 0;
        self.recovery.resumable_at_failure = 0;
        self.recovery.stopped_slots = 0;
        self.recovery.completed = 0;
        self.recovery.fail_next_recovery = 0;
        self.commit.clear();
        self.create = CreateIntent::IDLE;
        self.transactions = TransactionReport::EMPTY;
        Ok(())
    }

    /// Allocates a zeroed-on-use page: returns its host-physical address. The caller
    /// zeroes it (the arena code never dereferences physical addresses).
    pub fn alloc_page(&mut self) -> Option<u64> {
        self.pages.allocate().map(|i| self.header.base + i * PAGE)
    }

    pub fn free_page(&mut self, addr: u64) -> Result<(), PageError> {
        self.pages
            .free(self.page_index(addr).ok_or(PageError::OutOfRange(addr))?)
    }

    fn page_index(&self, addr: u64) -> Option<u64> {
        let offset = addr.checked_sub(self.header.base)?;
        (offset % PAGE == 0 && offset < self.header.size).then_some(offset / PAGE)
    }

    /// Whether `addr` is an allocated page of the arena's pool (not the root).
    pub fn owns_page(&self, addr: u64) -> bool {
        self.page_index(addr)
            .is_some_and(|i| i >= Self::root_pages() && self.pages.is_allocated(i))
    }

    /// The slot index of the VM called `name`.
    pub fn find_vm(&self, name: &str) -> Option<usize> {
        self.vms
            .iter()
            .position(|vm| vm.state != VmState::Free as u32 && vm.name() == name)
    }

    pub fn free_slot(&self) -> Option<usize> {
        self.vms
            .iter()
            .position(|vm| vm.state == VmState::Free as u32)
    }

    /// Checks everything that can be checked without touching guest memory.
    pub fn validate(&self, base: u64, size: u64) -> Result<(), ArenaError> {
        self.validate_header(base, size)?;
        for slot in 0..MAX_VMS {
            self.validate_vm(slot)?;
        }
        match self.conflicts().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// What the whole arena depends on: header, page bitmap, shared bitmaps. If this
    /// fails, nothing in the arena can be trusted.
    pub fn validate_header(&self, base: u64, size: u64) -> Result<(), ArenaError> {
        let h = &self.header;
        if h.magic != ARENA_MAGIC {
            return Err(ArenaError::BadMagic(h.magic));
        }
        if h.layout_version != LAYOUT_VERSION {
            return Err(ArenaError::BadVersion(h.layout_version));
        }
        let expected = core::mem::size_of::<ArenaRoot>() as u32;
        if h.root_size != expected {
            return Err(ArenaError::BadRootSize {
                recorded: h.root_size,
                expected,
            });
        }
        if h.fixed_checksum != h.compute_checksum() {
            return Err(ArenaError::BadChecksum);
        }
        if h.base != base || h.size != size {
            return Err(ArenaError::Moved {
                recorded_base: h.base,
                recorded_size: h.size,
            });
        }
        self.pages.validate().map_err(ArenaError::Pages)?;
        if self.pages.pages() != size / PAGE {
            return Err(ArenaError::Pages(PageError::OutOfRange(self.pages.pages())));
        }
        for (what, addr) in [
            ("I/O bitmap A", self.io_bitmaps[0]),
            ("I/O bitmap B", self.io_bitmaps[1]),
            ("MSR bitmap", self.msr_bitmap),
        ] {
            if addr != 0 && !self.owns_page(addr) {
                return Err(ArenaError::PageNotOwned {
                    slot: MAX_VMS,
                    what,
                    addr,
                });
            }
        }
        Ok(())
    }

    /// One VM record on its own: state, name, configuration checksum, journal, reset
    /// intent, device models, RAM range, and that its VMCS, XSAVE and EPT pages are allocated arena
    /// pages. A failure concerns this VM only.
    pub fn validate_vm(&self, slot: usize) -> Result<(), ArenaError> {
        let vm = &self.vms[slot];
        let state = vm.state().ok_or(ArenaError::BadVmState {
            slot,
            raw: vm.state,
        })?;
        if state == VmState::Free {
            return Ok(());
        }
        if !valid_name(vm.name()) {
            return Err(ArenaError::BadVmName { slot });
        }
        if vm.config_checksum != vm.compute_config_checksum() {
            return Err(ArenaError::BadVmConfig { slot });
        }
        Phase::from_raw(vm.vcpu.journal.phase).ok_or(ArenaError::BadJournal { slot })?;
        if vm.reset > intent::RESET_GUEST {
            return Err(ArenaError::BadReset {
                slot,
                raw: vm.reset,
            });
        }
        vm.devices.validate().map_err(|e| ArenaError::BadDevice {
            slot,
            device: e.device,
            what: e.what,
        })?;
        let arena = (self.header.base, self.header.base + self.header.size);
        let ram = vm_ram(vm);
        if vm.config.ram_size == 0
            || ram.1 <= ram.0
            || !ram.0.is_multiple_of(PAGE)
            || overlaps(ram, arena)
        {
            return Err(ArenaError::RamOutOfBounds { slot });
        }
        for (what, addr) in [
            ("VMCS", vm.vcpu.vmcs),
            ("XSAVE area", vm.vcpu.xsave),
            ("EPT root", vm.ept_root),
        ] {
            if !self.owns_page(addr) {
                return Err(ArenaError::PageNotOwned { slot, what, addr });
            }
        }
        Ok(())
    }

    /// Pairs of live VMs that conflict (overlapping RAM, same name): the later slot of
    /// each pair is named `b`.
    pub fn conflicts(&self) -> impl Iterator<Item = ArenaError> + '_ {
        let live = |i: usize| self.vms[i].state != VmState::Free as u32;
        (0..MAX_VMS).filter(move |&a| live(a)).flat_map(move |a| {
            (a + 1..MAX_VMS)
                .filter(move |&b| live(b))
                .filter_map(move |b| {
                    let (va, vb) = (&self.vms[a], &self.vms[b]);
                    if overlaps(vm_ram(va), vm_ram(vb)) {
                        Some(ArenaError::RamOverlap { a, b })
                    } else if va.name() == vb.name() {
                        Some(ArenaError::DuplicateName { a, b })
                    } else {
                        None
                    }
                })
        })
    }
}

fn vm_ram(vm: &VmRecord) -> (u64, u64) {
    (
        vm.config.ram_start,
        vm.config.ram_start.wrapping_add(vm.config.ram_size),
    )
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// 64-bit FNV-1a: small, dependency-free, good enough to catch corruption (not an
/// adversary).
pub(crate) struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
