//! The single door every detected hypervisor failure goes through (DESIGN 5).
//!
//! Detection sites (the panic handler in `boot`, the exception entry in `arch::idt`, and
//! later the watchdog and VMX instruction checks) call [`fail`]. `boot` installs the hook
//! that decides what happens next; this library never calls recovery itself, which keeps
//! the dependency direction `boot -> recovery -> hypervisor`.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
    /// A VM exit that the VM's controls cannot produce (they were corrupted), or a failed
    /// VM entry reported as an exit (invalid guest state, MSR loading, machine check).
    Exit {
        vm: &'a str,
        reason: crate::vmx::exit::ExitReason,
        qualification: u64,
        entry_failed: bool,
    },
    /// A consistency check of the run loop failed: the exit or the handler's decision
    /// changed under the hypervisor (recorded as an arena-check cause).
    Check {
        what: &'a str,
        vm: &'a str,
    },
    /// A check found the arena inconsistent.
    Arena {
        what: &'a str,
        error: crate::arena::ArenaError,
    },
    /// The image scrub found a word of code or read-only data that differs from the
    /// pristine copy (which is intact).
    Image {
        address: u64,
    },
    /// The watchdog found a hang (`what`: no progress, or no VM entry while VMs were
    /// runnable); the NMI interrupted `frame`.
    Hang {
        what: crate::watchdog::Hang,
        rip: u64,
        frame: &'a ExceptionFrame,
    },
}

impl Failure<'_> {
    /// The cause as the arena's recovery record stores it, and the exception vector.
    pub fn cause(&self) -> (crate::arena::Cause, u8) {
        use crate::arena::Cause;
        match self {
            Failure::Panic(_) => (Cause::Panic, 0),
            Failure::Exception { vector, .. } => (Cause::Exception, *vector),
            Failure::Vmx { .. } | Failure::Exit { .. } => (Cause::Vmx, 0),
            Failure::Arena { .. } | Failure::Check { .. } => (Cause::Arena, 0),
            Failure::Hang { .. } => (Cause::Hang, 0),
            Failure::Image { .. } => (Cause::Image, 0),
        }
    }
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
                )?;
                // A push into a stack's guard page is a #PF whose delivery faults again:
                // a #DF, with CR2 in the guard page (`arch::stacks`).
                let cr2 = fault_address();
                match crate::arch::stacks::guard_hit(cr2) {
                    Some(stack) if matches!(vector, 8 | 14) => write!(
                        f,
                        ": stack overflow: the guard page below the {stack} stack was hit (cr2={cr2:#x})"
                    ),
                    _ => Ok(()),
                }
            }
            Failure::Vmx { what, vm, error } => write!(
                f,
                "hypervisor failure: vmx: {what} failed for vm {vm}: {error}"
            ),
            Failure::Exit {
                vm,
                reason,
                qualification,
                entry_failed: true,
            } => write!(
                f,
                "hypervisor failure: vmx: VM entry failed for vm {vm}: exit reason {} ({reason}), qualification {qualification:#x}",
                reason.basic()
            ),
            Failure::Exit {
                vm,
                reason,
                qualification,
                entry_failed: false,
            } => write!(
                f,
                "hypervisor failure: vmx: vm {vm} exited for reason {} ({reason}), qualification {qualification:#x}, which its controls cannot produce (the VMCS's controls are corrupt)",
                reason.basic()
            ),
            Failure::Arena { what, error } => {
                write!(f, "hypervisor failure: arena check ({what}): {error}")
            }
            Failure::Check { what, vm } => {
                write!(f, "hypervisor failure: check: {what} (vm {vm})")
            }
            Failure::Image { address } => write!(
                f,
                "hypervisor failure: image scrub: code or read-only data changed at {address:#x}"
            ),
            Failure::Hang { what, rip, .. } => {
                write!(f, "hypervisor failure: hang: {what} (rip={rip:#x})")
            }
        }
    }
}

/// CR2: the address of the last page fault.
#[cfg(target_os = "none")]
fn fault_address() -> u64 {
    crate::arch::instructions::control_registers()[1]
}

/// Unit tests cannot read CR2: no page fault.
#[cfg(not(target_os = "none"))]
fn fault_address() -> u64 {
    0
}

/// What happens after a failure: `failure` and how deep in nested failures this one is
/// (1 = the first; 2 = the failure path itself failed).
pub type Hook = fn(&Failure, u32) -> !;

static HOOK: spin::Once<Hook> = spin::Once::new();
/// Failures entered and not yet recovered from (`.bss`: a microreboot resets it).
static DEPTH: AtomicU32 = AtomicU32::new(0);
/// Host TSC when the first of them was detected.
static DETECTED: AtomicU64 = AtomicU64::new(0);

/// Installs what happens after a failure is detected (boot: the microreboot).
pub fn install(hook: Hook) {
    HOOK.call_once(|| hook);
}

/// Host TSC when the failure being handled was detected.
pub fn detected_at() -> u64 {
    DETECTED.load(Ordering::SeqCst)
}

/// Hands `failure` to the installed hook, with interrupts masked. The hook writes the
/// report (or prints it with [`print_report`] when it cannot recover).
///
/// A failure inside the failure path reaches the hook again with a higher depth, and
/// the hook takes a shorter path; without a hook the report is printed and the CPU halts.
pub fn fail(failure: &Failure) -> ! {
    let now = crate::arch::instructions::rdtsc();
    crate::arch::instructions::disable_interrupts();
    // No more NMIs while the image is rewritten (the failure path must not be interrupted).
    crate::watchdog::disarm();
    let depth = DEPTH.fetch_add(1, Ordering::SeqCst) + 1;
    if depth == 1 {
        DETECTED.store(now, Ordering::SeqCst);
    }
    // SAFETY: interrupts are masked and Lazarus runs one CPU: whoever held the console
    // lock is the code that just failed, and it will not run again.
    unsafe { crate::arch::serial::force_unlock() };
    match HOOK.get() {
        Some(hook) => hook(failure, depth),
        None => {
            print_report(failure);
            crate::arch::instructions::halt_forever()
        }
    }
}

/// The report of `failure`: the `hypervisor failure` line, then for an exception the
/// six register rows (each line ends with '\n'; documented in the README).
pub fn write_report(failure: &Failure, out: &mut impl fmt::Write) -> fmt::Result {
    writeln!(out, "{failure}")?;
    if let Failure::Exception { frame, .. } | Failure::Hang { frame, .. } = failure {
        let dump = RegisterDump {
            frame,
            control: crate::arch::instructions::control_registers(),
        };
        let mut text: heapless::String<1024> = heapless::String::new();
        let _ = fmt::write(&mut text, format_args!("{dump}"));
        for row in text.lines() {
            writeln!(out, "  {row}")?;
        }
    }
    Ok(())
}

/// The `hypervisor failure` line of `failure` alone, and the registers of an exception or
/// hang, for formatting later ([`print_kept_report`]): the failure path keeps them raw,
/// because formatting the register dump costs more than the rest of the path.
pub fn write_report_line(
    failure: &Failure,
    out: &mut impl fmt::Write,
) -> Result<Option<(ExceptionFrame, [u64; 4])>, fmt::Error> {
    writeln!(out, "{failure}")?;
    Ok(match failure {
        Failure::Exception { frame, .. } | Failure::Hang { frame, .. } => {
            Some((**frame, crate::arch::instructions::control_registers()))
        }
        _ => None,
    })
}

/// Prints a report kept in the arena: its first line, then the register dump kept raw
/// with it (if any), then the rest (failures during recovery, formatted at the time).
pub fn print_kept_report(text: &str, dump: Option<(&ExceptionFrame, [u64; 4])>) {
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        log::error!("{first}");
    }
    if let Some((frame, control)) = dump {
        let mut rows: heapless::String<1024> = heapless::String::new();
        let _ = fmt::write(
            &mut rows,
            format_args!("{}", RegisterDump { frame, control }),
        );
        for row in rows.lines() {
            log::error!("  {row}");
        }
    }
    for line in lines {
        log::error!("{line}");
    }
}

/// Prints a report (from [`write_report`]) as error lines, one per report line, so every
/// line carries the hypervisor prefix.
pub fn print_report_text(text: &str) {
    for line in text.lines() {
        log::error!("{line}");
    }
}

/// Prints the report of `failure` on the console.
pub fn print_report(failure: &Failure) {
    let mut text: heapless::String<2048> = heapless::String::new();
    let _ = write_report(failure, &mut text);
    print_report_text(&text);
}

/// Entry from the exception stubs. An NMI is a watchdog tick: a hang if the watchdog
/// says so, else it returns (nothing may be logged: the NMI can interrupt the console);
/// every other vector is a hypervisor failure.
pub fn on_exception(vector: u8, frame: &mut ExceptionFrame) {
    // #DB from the fault injector's single-stepping (its own, or the fault it injects).
    #[cfg(target_os = "none")]
    if vector == 1 && crate::inject::machine::on_debug(frame) {
        return;
    }
    if vector == 2 {
        if let Some(what) = crate::watchdog::on_host_nmi(frame.rip) {
            fail(&Failure::Hang {
                what,
                rip: frame.rip,
                frame,
            })
        }
        return;
    }
    fail(&Failure::Exception { vector, frame })
}
