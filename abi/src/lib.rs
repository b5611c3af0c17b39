//! What a guest of Lazarus may rely on: the hypercall ABI and the start-info page that
//! test guests receive. Shared by the hypervisor and the in-tree test guests so that the
//! two sides cannot drift apart; documented for guest authors in the README.
//!
//! # Hypercalls
//! A hypercall is `VMCALL` with the number in RAX and up to three arguments in RDI, RSI
//! and RDX. The result comes back in RAX: zero or positive on success, one of the
//! negative [`Error`] codes otherwise. Every other register is preserved. VMCALL exits
//! at any privilege level, so the hypervisor checks the guest's CPL: a call from user
//! mode (CPL 3) is refused with [`Error::Permission`] unless [`Hypercall::user_allowed`].
//! Guest addresses are guest-physical and must lie entirely inside the VM's own RAM,
//! otherwise the call fails with [`Error::Fault`] and nothing is read or written.
#![no_std]

/// Hypercall numbers (RAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Hypercall {
    /// `console_write(gpa, len)`: prints `len` bytes (at most [`CONSOLE_WRITE_MAX`]) from
    /// guest-physical `gpa` on the console, each line prefixed with the VM's name.
    /// Returns the number of bytes taken.
    ConsoleWrite = 0,
    /// `vm_identity(gpa, len)`: returns the VM's numeric id; if `gpa` is not 0, also
    /// copies the VM's name, NUL-terminated, into the `len`-byte buffer there
    /// ([`Error::Invalid`] if it does not fit).
    VmIdentity = 1,
    /// `yield()`: gives the rest of the time slice to the other VMs. Returns 0.
    Yield = 2,
    /// `power_off()`: stops this VM for good. Does not return.
    PowerOff = 3,
    /// `trigger(kind, count)`: for tests only, and only when the hypervisor was booted
    /// with `triggers=on` (otherwise [`Error::Unknown`]): once this hypercall is
    /// committed (RAX = 0, RIP past VMCALL), the hypervisor fails on purpose with failure
    /// trigger number `kind` ([`TRIGGERS`]); `count` is how many recoveries in a row the
    /// `recovery-fail` trigger makes fail (1 for the others). [`Error::Invalid`] for an
    /// unknown kind or a count of 0 or over 8. `bad-entry` is the exception: nothing
    /// fails at once, but every later VM entry of the calling VM fails (each a hypervisor
    /// failure with this VM in flight), so the call never returns to the guest: recovery
    /// stops the VM after a bounded number of failures (README, "Recovery").
    Trigger = 4,
    /// `inject(type, seed)`: for tests only, and only when the hypervisor was booted
    /// with `inject=on` (otherwise [`Error::Unknown`]): arms the fault injector with fault
    /// type number `type` ([`FAULT_TYPES`]) and `seed`, exactly as the console command
    /// `inject TYPE SEED` does. Returns 0, or [`Error::Invalid`] for an unknown type or
    /// when an injection is already armed.
    Inject = 5,
}

/// The fault types an `inject` hypercall names, by number (the console's names).
pub const FAULT_TYPES: [&str; 6] = ["failstop", "register", "code", "data", "hang", "lock"];

/// The failure triggers a `trigger` hypercall names, by number (the same names as the
/// console's `trigger KIND`). Number 15, `bad-entry`, makes every later VM entry of the
/// calling VM fail; 16, `exit-flip`, changes the next exit after it was read;
/// 17, `stack-overflow`, and 18, `boot-record`, are the stack and boot-record failures;
/// 19, `mid-create`, and 20, `mid-reset`, arm a failure in the middle of the next VM
/// creation and the next VM reset; 21, `no-entry`, makes the run loop stop entering
/// VMs (for the watchdog).
pub const TRIGGERS: [&str; 22] = [
    "panic",
    "pf",
    "gp",
    "ud",
    "de",
    "bp",
    "vmcs-host",
    "mid-exit",
    "recovery-fail",
    "corrupt-vm",
    "hang",
    "deadlock",
    "mid-commit",
    "code-flip",
    "arena-header",
    "bad-entry",
    "exit-flip",
    "stack-overflow",
    "boot-record",
    "mid-create",
    "mid-reset",
    "no-entry",
];

impl Hypercall {
    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            0 => Some(Self::ConsoleWrite),
            1 => Some(Self::VmIdentity),
            2 => Some(Self::Yield),
            3 => Some(Self::PowerOff),
            4 => Some(Self::Trigger),
            5 => Some(Self::Inject),
            _ => None,
        }
    }

    /// Whether guest user mode may make this call. Only `yield` is harmless enough.
    pub fn user_allowed(self) -> bool {
        matches!(self, Self::Yield)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ConsoleWrite => "console_write",
            Self::VmIdentity => "vm_identity",
            Self::Yield => "yield",
            Self::PowerOff => "power_off",
            Self::Trigger => "trigger",
            Self::Inject => "inject",
        }
    }
}

/// The most bytes one `console_write` takes.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Negative results (RAX, as a two's-complement i64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// No such hypercall number.
    Unknown = -1,
    /// A guest address range is not entirely inside the VM's RAM.
    Fault = -2,
    /// An argument is out of range (e.g. a length over the limit, a buffer too small).
    Invalid = -3,
    /// Not allowed from guest user mode (CPL 3).
    Permission = -4,
}

impl Error {
    pub fn as_result(self) -> u64 {
        self as i64 as u64
    }

    pub fn from_result(rax: u64) -> Option<Self> {
        match rax as i64 {
            -1 => Some(Self::Unknown),
            -2 => Some(Self::Fault),
            -3 => Some(Self::Invalid),
            -4 => Some(Self::Permission),
            _ => None,
        }
    }
}

/// Guest-physical address of the [`StartInfo`] page given to test guests (in RDI).
pub const START_INFO_GPA: u64 = 0x5000;

/// `StartInfo::magic`: "LZSTART1" little-endian.
pub const START_INFO_MAGIC: u64 = u64::from_le_bytes(*b"LZSTART1");

/// What a test guest (an ELF VM) finds at [`START_INFO_GPA`] when it starts.
///
/// Machine state at entry: 64-bit long mode, CPL 0, RFLAGS.IF = 0, CS = 0x08 (64-bit
/// code), DS = ES = SS = 0x10, paging on with all of guest RAM identity-mapped (2 MiB
/// pages; the tables live in the first 64 KiB of guest RAM, below 0x10000), RSP at the
/// top of guest RAM, RDI = [`START_INFO_GPA`], RIP = the ELF entry point. Guest RAM
/// starts at guest-physical 0; ELF segments are loaded at their physical addresses,
/// which must lie at or above 1 MiB.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    pub magic: u64,
    /// Bytes of guest RAM (from guest-physical 0).
    pub mem_size: u64,
    pub vm_id: u64,
    /// The VM's name, NUL-padded.
    pub name: [u8; 32],
    /// The module's extra words (everything Lazarus did not interpret), NUL-padded.
    pub args: [u8; 256],
}
