//! What the arena remembers about recoveries: the one in progress (written by the dying
//! instance, read by the new one) and a log of the last [`RECOVERY_LOG`] completed ones
//! (the console command `recovery` prints it).
//!
//! The dying instance writes here without trusting anything else, so every field is a
//! plain integer or byte array and every length is bound-checked by its reader.

use core::fmt;

/// Completed recoveries kept in the log (the oldest is overwritten).
pub const RECOVERY_LOG: usize = 16;
/// Bytes of failure report (the `hypervisor failure` line and register dump) kept for
/// printing after the VMs run again.
pub const REPORT_LEN: usize = 1536;
/// Bytes of the kept `inject:` line.
pub const INJECT_LINE: usize = 192;
/// `inflight_slot` when no VM exit was in flight.
pub const NO_SLOT: u32 = u32::MAX;
/// Recovery attempts against one suspect (the VM in flight at the failures) before that
/// VM is stopped; one more attempt after that, then the hypervisor halts.
pub const MAX_ATTEMPTS: u32 = 3;
/// Recovery boots for one recovery, whatever the suspects, after which the hypervisor
/// halts: a safety net only. The suspects' own bounds ([`MAX_ATTEMPTS`] and
/// `suspect::SUSPECT_FAILURES`, each stopping a VM) end a recovery long before, since each
/// VM can be the suspect of only a few attempts.
pub const MAX_RECOVERY_BOOTS: u32 = MAX_ATTEMPTS * (crate::arena::MAX_VMS as u32 + 1);

/// What was detected. Stored as a raw `u32` ([`Cause::from_raw`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Cause {
    Panic = 1,
    Exception = 2,
    Vmx = 3,
    Hang = 4,
    Arena = 5,
    /// The image scrub found the running code or read-only data changed.
    Image = 6,
}

impl Cause {
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Panic,
            2 => Self::Exception,
            3 => Self::Vmx,
            4 => Self::Hang,
            5 => Self::Arena,
            6 => Self::Image,
            _ => return None,
        })
    }
}

/// What each repair pass changed (DESIGN 6), counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Arena locks that were held and force-released.
    pub locks: u32,
    /// Uncommitted VM exits rolled back (they re-execute).
    pub rolled_back: u32,
    /// Half-committed VM exits rolled forward (their commit finished from the log).
    pub committed: u32,
    /// VMs runnable after the scheduler state was re-derived.
    pub runnable: u32,
    /// EPT hierarchies verified intact, and rebuilt.
    pub ept_verified: u32,
    pub ept_rebuilt: u32,
    /// VMCSs reloaded with host and control state rewritten.
    pub vmcs: u32,
    /// Interrupts re-delivered (in flight at the failure).
    pub interrupts: u32,
    /// Virtual timer periods caught up.
    pub timers: u32,
    /// Device models and console buffers whose state was out of bounds and was fixed.
    pub devices: u32,
    /// VMs stopped because their state could not be trusted.
    pub stopped: u32,
}

/// One recovery, as the `recovery` line reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryRecord {
    /// 1 for the first recovery since cold boot.
    pub number: u64,
    /// [`Cause`] as a raw value, and the exception vector for [`Cause::Exception`].
    pub cause: u32,
    pub vector: u32,
    /// Recovery boots it took (more than 1 when recovery itself failed).
    pub attempts: u32,
    pub _pad: u32,
    /// Host TSC at detection, when the failure path handed over to the pristine image,
    /// when the new instance had VMX on and the arena validated, when the repair passes
    /// were done, and at the first VM entry (= `passes` when no VM could run).
    pub t_detect: u64,
    pub t_failpath: u64,
    pub t_boot: u64,
    pub t_passes: u64,
    pub t_entry: u64,
    pub repairs: Repairs,
}

impl RecoveryRecord {
    /// Detection to first VM entry, in TSC cycles.
    pub fn latency(&self) -> u64 {
        self.t_entry.saturating_sub(self.t_detect)
    }

    /// When the failure path handed over to the trampoline. A failure path that failed
    /// twice goes there without recording it: its time then counts as the boot phase's,
    /// and `failpath=0` is printed.
    fn failpath_end(&self) -> u64 {
        self.t_failpath.max(self.t_detect)
    }
}

/// The documented `recovery` line (README, "Recovery"); tests and the benchmark parse it.
impl fmt::Display for RecoveryRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.repairs;
        write!(f, "recovery {}: cause=", self.number)?;
        match Cause::from_raw(self.cause) {
            Some(Cause::Panic) => f.write_str("panic")?,
            Some(Cause::Exception) => {
                let (mnemonic, _) = crate::arch::idt::exception_name(self.vector as u8);
                write!(f, "exception{mnemonic}")?
            }
            Some(Cause::Vmx) => f.write_str("vmx")?,
            Some(Cause::Hang) => f.write_str("hang")?,
            Some(Cause::Arena) => f.write_str("arena")?,
            Some(Cause::Image) => f.write_str("image")?,
            None => f.write_str("unknown")?,
        }
        write!(
            f,
            " attempts={} latency={} failpath={} boot={} repair={} entry={} \
             locks={} exits={} committed={} runnable={} ept={} ept_rebuilt={} vmcs={} \
             interrupts={} timers={} devices={} stopped={}",
            self.attempts,
            self.latency(),
            self.failpath_end().saturating_sub(self.t_detect),
            self.t_boot.saturating_sub(self.failpath_end()),
            self.t_passes.saturating_sub(self.t_boot),
            self.t_entry.saturating_sub(self.t_passes),
            r.locks,
            r.rolled_back,
            r.committed,
            r.runnable,
            r.ept_verified,
            r.ept_rebuilt,
            r.vmcs,
            r.interrupts,
            r.timers,
            r.devices,
            r.stopped
        )
    }
}

/// The recovery in progress and the log of completed ones.
#[repr(C)]
pub struct RecoveryState {
    /// 1 from detection until the recovered instance's first VM entry.
    pub in_progress: u32,
    /// The suspect: slot of the VM in flight at the first failure, or at the latest
    /// failure during the recovery that had a different VM in flight; [`NO_SLOT`] if none.
    pub inflight_slot: u32,
    /// Recovery attempts against the suspect: 1 at the failure that made it the suspect,
    /// one more for each later failure during the recovery with no VM or the suspect in
    /// flight (what [`MAX_ATTEMPTS`] bounds).
    pub suspect_attempts: u32,
    /// Bit `slot` set for each VM that could run at the recovery's first failure (the VMs
    /// it stopped, in whichever attempt, are among these).
    pub resumable_at_failure: u32,
    /// The recovery being carried out.
    pub current: RecoveryRecord,
    /// 1 while the report and `recovery` line wait to be printed (after the first VM entry).
    pub pending_print: u32,
    pub report_len: u32,
    /// The failure report text, lines separated by '\n'.
    pub report: [u8; REPORT_LEN],
    /// Test trigger `recovery-fail`: how many of the next recovery attempts fail on
    /// purpose, mid-repair.
    pub fail_next_recovery: u32,
    /// Bit `slot` set for each VM the recovery in progress stopped (printed with it).
    pub stopped_slots: u32,
    /// 1 when `dump_frame` and `dump_control` hold the registers of the first failure (an
    /// exception or a hang), to be formatted when the report is printed.
    pub dump_valid: u32,
    pub _pad3: u32,
    pub dump_frame: crate::arch::idt::ExceptionFrame,
    pub dump_control: [u64; 4],
    /// The fault injector's `inject:` line, when the injected fault was detected before
    /// the line could be printed (it is printed before the report).
    pub inject_len: u32,
    pub _pad: u32,
    pub inject_line: [u8; INJECT_LINE],
    /// Completed recoveries: `log[(n - 1) % RECOVERY_LOG]` is number n.
    pub completed: u64,
    pub log: [RecoveryRecord; RECOVERY_LOG],
}

impl RecoveryState {
    /// Starts a recovery (first failure) or counts one more attempt (a failure during
    /// recovery). The suspect is the VM `inflight` at the first failure; a failure during
    /// the recovery with another VM in flight makes that VM the suspect instead, with its
    /// attempts counted from 1 (so that two bad VMs, each failing the recovery in turn,
    /// are each stopped rather than the second one's failure halting the hypervisor).
    /// Returns the attempt number against the suspect.
    pub fn begin(&mut self, cause: Cause, vector: u8, t_detect: u64, inflight: u32) -> u32 {
        if self.in_progress == 1 && self.current.attempts >= 1 {
            self.current.attempts = self.current.attempts.saturating_add(1);
            if inflight != NO_SLOT && inflight != self.inflight_slot {
                self.inflight_slot = inflight;
                self.suspect_attempts = 1;
            } else {
                self.suspect_attempts = self.suspect_attempts.saturating_add(1);
            }
            return self.suspect_attempts;
        }
        self.in_progress = 1;
        self.inflight_slot = inflight;
        self.suspect_attempts = 1;
        self.stopped_slots = 0;
        self.inject_len = 0;
        self.dump_valid = 0;
        self.pending_print = 0;
        self.report_len = 0;
        self.current = RecoveryRecord {
            number: self.completed + 1,
            cause: cause as u32,
            vector: u32::from(vector),
            attempts: 1,
            t_detect,
            ..RecoveryRecord::default()
        };
        1
    }

    /// Whether recovery has failed too often to go on: the attempts against the suspect
    /// are past [`MAX_ATTEMPTS`] (its attempt to stop it failed too), or the recovery
    /// boots past [`MAX_RECOVERY_BOOTS`]. The last resort is then a halt (DESIGN 6).
    pub fn exhausted(&self) -> bool {
        self.suspect_attempts > MAX_ATTEMPTS || self.current.attempts > MAX_RECOVERY_BOOTS
    }

    /// Keeps the injector's line (truncated to [`INJECT_LINE`]).
    pub fn set_inject_line(&mut self, line: &str) {
        let n = (0..=line.len().min(INJECT_LINE))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        self.inject_line[..n].copy_from_slice(&line.as_bytes()[..n]);
        self.inject_len = n as u32;
    }

    /// Takes the kept `inject:` line, if any.
    pub fn take_inject_line(&mut self) -> Option<&str> {
        let len = (core::mem::take(&mut self.inject_len) as usize).min(INJECT_LINE);
        (len > 0).then(|| core::str::from_utf8(&self.inject_line[..len]).unwrap_or("inject: ?"))
    }

    /// The first failure's raw register dump, if kept.
    pub fn dump(&self) -> Option<(&crate::arch::idt::ExceptionFrame, [u64; 4])> {
        (self.dump_valid == 1).then_some((&self.dump_frame, self.dump_control))
    }

    /// Prints the kept report: the `inject:` line (if any), then the report with its
    /// register dump.
    pub fn print_report(&mut self) {
        if let Some(line) = self.take_inject_line() {
            log::warn!("{line}");
        }
        crate::failure::print_kept_report(self.report(), self.dump());
    }

    /// The failure report text (bound-checked).
    pub fn report(&self) -> &str {
        let len = (self.report_len as usize).min(REPORT_LEN);
        core::str::from_utf8(&self.report[..len]).unwrap_or("(report not readable)")
    }

    /// Appends to the report, truncating at [`REPORT_LEN`].
    pub fn append_report(&mut self, text: &str) {
        let len = (self.report_len as usize).min(REPORT_LEN);
        let n = text.len().min(REPORT_LEN - len);
        // Cut at a character boundary so the report stays UTF-8.
        let n = (0..=n)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        self.report[len..len + n].copy_from_slice(&text.as_bytes()[..n]);
        self.report_len = (len + n) as u32;
    }

    /// Ends the recovery in progress: the record joins the log.
    pub fn complete(&mut self) -> RecoveryRecord {
        let record = self.current;
        self.completed += 1;
        self.log[((self.completed - 1) % RECOVERY_LOG as u64) as usize] = record;
        self.in_progress = 0;
        self.inflight_slot = NO_SLOT;
        record
    }

    /// The logged recoveries, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &RecoveryRecord> {
        let n = self.completed;
        let first = n.saturating_sub(RECOVERY_LOG as u64);
        (first..n).map(move |i| &self.log[(i % RECOVERY_LOG as u64) as usize])
    }
}

/// A `fmt::Write` into the report buffer.
impl fmt::Write for RecoveryState {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.append_report(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
