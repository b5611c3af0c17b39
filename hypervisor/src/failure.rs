//! The single door every detected hypervisor failure goes through (DESIGN 5).
//!
//! Detection sites (the panic handler in `boot`, the exception entry in `arch::idt`, and
//! later the watchdog and VMX instruction checks) call [`fail`]. `boot` installs the hook
//! that decides what happens next; this library never calls recovery itself, which keeps
//! the dependency direction `boot -> recovery -> hypervisor`.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::idt::{exception_name, ExceptionFrame, RegisterDump};

/// What went wrong.
pub enum Failure<'a> {
    Panic(&'a core::panic::PanicInfo<'a>),
    Exception {
        vector: u8,
        frame: &'a ExceptionFrame,
    },
    /// A VMX instruction or VM entry failed: the hypervisor set something up wrong.
    Vmx {
        what: &'a str,
        vm: &'a str,
        error: crate::vmx::fields::VmxError,
    },
    /// The watchdog saw no progress for `HANG_MS` (the NMI interrupted `frame`).
    Hang {
        rip: u64,
        frame: &'a ExceptionFrame,
    },
}

/// The first line of the report: `hypervisor failure: ...` (documented in the README).
impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Panic(info) => {
                f.write_str("hypervisor failure: panic")?;
                if let Some(loc) = info.location() {
                    write!(f, " at {}:{}:{}", loc.file(), loc.line(), loc.column())?;
                }
                write!(f, ": {}", info.message())
            }
            Failure::Exception { vector, frame } => {
                let (mnemonic, name) = exception_name(*vector);
                write!(
                    f,
                    "hypervisor failure: exception {mnemonic} {name} (vector {vector}) error_code={:#x} rip={:#x}",
                    frame.error_code, frame.rip
                )
            }
            Failure::Vmx { what, vm, error } => write!(
                f,
                "hypervisor failure: vmx: {what} failed for vm {vm}: {error}"
            ),
            Failure::Hang { rip, .. } => write!(
                f,
                "hypervisor failure: hang: no progress for {} ms (rip={rip:#x})",
                crate::watchdog::HANG_MS
            ),
        }
    }
}

static HOOK: spin::Once<fn(&Failure) -> !> = spin::Once::new();
static FAILING: AtomicBool = AtomicBool::new(false);

/// Installs what happens after a failure is reported (boot: halt now, recovery later).
pub fn install(hook: fn(&Failure) -> !) {
    HOOK.call_once(|| hook);
}

/// Reports `failure` on the console and hands it to the installed hook.
///
/// A second failure while the first is being handled (the report itself faulted) stops
/// the CPU at once rather than looping.
pub fn fail(failure: &Failure) -> ! {
    if FAILING.swap(true, Ordering::SeqCst) {
        crate::arch::serial::write_str(
            "\n[lazarus] ERROR hypervisor failure while handling a failure; halted\n",
        );
        crate::arch::instructions::halt_forever();
    }
    crate::arch::instructions::disable_interrupts();
    crate::watchdog::disarm();
    // SAFETY: interrupts are masked and Lazarus runs one CPU so far: whoever held the
    // console lock is the code that just failed, and it will not run again.
    unsafe { crate::arch::serial::force_unlock() };
    report(failure);
    match HOOK.get() {
        Some(hook) => hook(failure),
        None => crate::arch::instructions::halt_forever(),
    }
}

fn report(failure: &Failure) {
    log::error!("{failure}");
    if let Failure::Exception { frame, .. } | Failure::Hang { frame, .. } = failure {
        let dump = RegisterDump {
            frame,
            control: crate::arch::instructions::control_registers(),
        };
        // One log line per dump row, so every row carries the hypervisor prefix.
        let mut text: heapless::String<1024> = heapless::String::new();
        let _ = fmt::write(&mut text, format_args!("{dump}"));
        for row in text.lines() {
            log::error!("  {row}");
        }
    }
}

/// Entry from the exception stubs. An NMI is a watchdog tick: a hang if the watchdog
/// says so, else it returns (nothing may be logged: the NMI can interrupt the console);
/// every other vector is a hypervisor failure.
pub fn on_exception(vector: u8, frame: &mut ExceptionFrame) {
    if vector == 2 {
        if crate::watchdog::on_host_nmi(frame.rip) {
            fail(&Failure::Hang {
                rip: frame.rip,
                frame,
            })
        }
        return;
    }
    fail(&Failure::Exception { vector, frame })
}
