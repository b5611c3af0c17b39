use super::*;
use std::boxed::Box;
use std::format;
use std::string::String;
use std::vec::Vec;

fn state() -> Box<RecoveryState> {
    // SAFETY: every field of RecoveryState is an integer or an array of integers (or of
    // records made of integers), for which all-zero bytes are a valid value.
    let mut s = unsafe { Box::<RecoveryState>::new_zeroed().assume_init() };
    s.inflight_slot = NO_SLOT;
    s
}

// ---------------------------------------------------------------------------------------
// begin

#[test]
fn first_failure_starts_a_recovery() {
    let mut s = state();
    s.completed = 4;
    s.pending_print = 1;
    s.append_report("stale report from the last recovery");
    assert_eq!(s.begin(Cause::Exception, 14, 1000, 2), 1);
    assert_eq!(s.in_progress, 1);
    assert_eq!(s.inflight_slot, 2);
    assert_eq!(s.pending_print, 0);
    assert_eq!(s.report(), "");
    assert_eq!(
        s.current,
        RecoveryRecord {
            number: 5,
            cause: Cause::Exception as u32,
            vector: 14,
            attempts: 1,
            t_detect: 1000,
            ..RecoveryRecord::default()
        }
    );
}

#[test]
fn failure_during_recovery_counts_an_attempt_and_keeps_the_first_cause() {
    let mut s = state();
    s.begin(Cause::Hang, 0, 1000, 3);
    s.append_report("hypervisor failure: hang\n");
    s.current.t_failpath = 1100;
    assert_eq!(s.begin(Cause::Panic, 0, 5000, NO_SLOT), 2);
    assert_eq!(s.begin(Cause::Exception, 13, 9000, 3), 3);
    assert_eq!(s.in_progress, 1);
    assert_eq!(s.current.attempts, 3);
    assert_eq!(s.current.number, 1);
    assert_eq!(s.current.cause, Cause::Hang as u32);
    assert_eq!(s.current.vector, 0);
    assert_eq!(
        s.current.t_detect, 1000,
        "latency counts from the first detection"
    );
    assert_eq!(s.current.t_failpath, 1100);
    assert_eq!(s.inflight_slot, 3, "the first failure's VM is the suspect");
    assert_eq!(s.suspect_attempts, 3);
    assert_eq!(s.report(), "hypervisor failure: hang\n");
}

#[test]
fn a_failure_during_recovery_with_another_vm_in_flight_makes_it_the_suspect() {
    // Two VMs that break every entry: the first is stopped by the third attempt, and the
    // first entry after that is the second one's, which fails too.
    let mut s = state();
    assert_eq!(s.begin(Cause::Vmx, 0, 100, 0), 1);
    assert_eq!(s.begin(Cause::Vmx, 0, 200, 0), 2);
    assert_eq!(s.begin(Cause::Vmx, 0, 300, 0), 3);
    assert!(!s.exhausted());
    assert_eq!(
        s.begin(Cause::Vmx, 0, 400, 1),
        1,
        "slot 1 is the suspect now"
    );
    assert_eq!((s.inflight_slot, s.suspect_attempts), (1, 1));
    assert!(
        !s.exhausted(),
        "no halt: stopping slot 1 may let the others run"
    );
    // No VM in flight (a failure in the repair passes): another attempt against slot 1.
    assert_eq!(s.begin(Cause::Panic, 0, 500, NO_SLOT), 2);
    assert_eq!(s.begin(Cause::Vmx, 0, 600, 1), 3);
    assert_eq!(s.inflight_slot, 1);
    assert_eq!(s.current.attempts, 6, "every recovery boot is counted");
    assert_eq!(
        (s.current.number, s.current.t_detect),
        (1, 100),
        "one recovery"
    );
    assert!(!s.exhausted());
    // The attempt that was to stop slot 1 fails with no VM in flight: the last resort.
    assert_eq!(s.begin(Cause::Panic, 0, 700, NO_SLOT), 4);
    assert!(s.exhausted());
}

#[test]
fn the_same_suspect_is_exhausted_after_max_attempts() {
    let mut s = state();
    for attempt in 1..=MAX_ATTEMPTS {
        assert_eq!(s.begin(Cause::Panic, 0, u64::from(attempt), 2), attempt);
        assert!(!s.exhausted(), "attempt {attempt}");
    }
    assert_eq!(s.begin(Cause::Panic, 0, 99, 2), MAX_ATTEMPTS + 1);
    assert!(s.exhausted());
}

#[test]
fn recovery_boots_are_bounded_whatever_the_suspects() {
    let mut s = state();
    s.begin(Cause::Vmx, 0, 0, 0);
    for boot in 2..=MAX_RECOVERY_BOOTS {
        // A different VM in flight each time: never the same suspect twice in a row.
        s.begin(Cause::Vmx, 0, u64::from(boot), boot % 16);
        assert!(!s.exhausted(), "boot {boot}");
    }
    s.begin(Cause::Vmx, 0, 1000, 5);
    assert_eq!(s.current.attempts, MAX_RECOVERY_BOOTS + 1);
    assert_eq!(s.suspect_attempts, 1);
    assert!(s.exhausted());
}

#[test]
fn a_new_recovery_forgets_the_last_ones_suspect_and_stops() {
    let mut s = state();
    s.begin(Cause::Vmx, 0, 1, 4);
    s.begin(Cause::Vmx, 0, 2, 4);
    s.stopped_slots = 1 << 4;
    s.complete();
    assert_eq!(s.begin(Cause::Vmx, 0, 3, 4), 1);
    assert_eq!((s.suspect_attempts, s.stopped_slots), (1, 0));
}

#[test]
fn attempts_saturate() {
    let mut s = state();
    s.begin(Cause::Vmx, 0, 1, NO_SLOT);
    s.current.attempts = u32::MAX;
    s.suspect_attempts = u32::MAX;
    assert_eq!(s.begin(Cause::Vmx, 0, 2, NO_SLOT), u32::MAX);
    assert_eq!(s.current.attempts, u32::MAX);
    assert!(s.exhausted());
}

#[test]
fn in_progress_without_an_attempt_starts_afresh() {
    // A half-written record (the dying instance failed before counting the attempt).
    let mut s = state();
    s.in_progress = 1;
    s.current.attempts = 0;
    s.current.cause = 77;
    assert_eq!(s.begin(Cause::Arena, 0, 42, 1), 1);
    assert_eq!(s.current.cause, Cause::Arena as u32);
    assert_eq!(s.current.t_detect, 42);
    assert_eq!(s.inflight_slot, 1);
}

#[test]
fn next_failure_after_completion_is_a_new_recovery() {
    let mut s = state();
    s.begin(Cause::Panic, 0, 100, NO_SLOT);
    s.complete();
    assert_eq!(s.begin(Cause::Hang, 0, 200, 1), 1);
    assert_eq!(s.current.number, 2);
    assert_eq!(s.current.cause, Cause::Hang as u32);
}

// ---------------------------------------------------------------------------------------
// report

#[test]
fn report_is_truncated_at_its_capacity() {
    let mut s = state();
    let line = "x".repeat(1000);
    s.append_report(&line);
    s.append_report(&line);
    assert_eq!(s.report_len as usize, REPORT_LEN);
    assert_eq!(s.report(), "x".repeat(REPORT_LEN));
    s.append_report("more");
    assert_eq!(s.report_len as usize, REPORT_LEN);
}

#[test]
fn report_is_cut_at_a_char_boundary() {
    let mut s = state();
    s.append_report(&"a".repeat(REPORT_LEN - 3));
    // "é" is two bytes, "€" three: the first fits, the second does not.
    s.append_report("é€");
    assert_eq!(s.report_len as usize, REPORT_LEN - 1);
    assert!(s.report().ends_with("aé"));
    s.append_report("é");
    assert_eq!(s.report_len as usize, REPORT_LEN - 1);
    s.append_report("z");
    assert_eq!(s.report_len as usize, REPORT_LEN);
    assert!(s.report().ends_with("éz"));
}

#[test]
fn report_is_written_through_fmt() {
    use core::fmt::Write;
    let mut s = state();
    let mnemonic = "#PF";
    writeln!(s, "hypervisor failure: {mnemonic} at {:#x}", 0x1234).unwrap();
    assert_eq!(s.report(), "hypervisor failure: #PF at 0x1234\n");
}

#[test]
fn corrupt_report_length_is_bounded() {
    let mut s = state();
    s.report_len = u32::MAX;
    s.report.fill(b'r');
    assert_eq!(s.report().len(), REPORT_LEN);
    s.append_report("nothing fits");
    assert_eq!(s.report_len as usize, REPORT_LEN);
    s.report[0] = 0xff;
    assert_eq!(s.report(), "(report not readable)");
}

// ---------------------------------------------------------------------------------------
// complete, log and history

fn recover(s: &mut RecoveryState, t: u64) -> RecoveryRecord {
    s.begin(Cause::Panic, 0, t, 0);
    s.current.t_entry = t + 10;
    s.complete()
}

#[test]
fn completed_recovery_joins_the_log() {
    let mut s = state();
    s.begin(Cause::Exception, 6, 100, 4);
    s.current.t_entry = 250;
    s.current.repairs.rolled_back = 1;
    let r = s.complete();
    assert_eq!(r.number, 1);
    assert_eq!(r.latency(), 150);
    assert_eq!(s.completed, 1);
    assert_eq!(s.log[0], r);
    assert_eq!(s.in_progress, 0);
    assert_eq!(s.inflight_slot, NO_SLOT);
    assert_eq!(s.history().copied().collect::<Vec<_>>(), [r]);
}

#[test]
fn history_is_oldest_first_before_and_after_the_log_wraps() {
    let mut s = state();
    assert_eq!(s.history().count(), 0);
    for n in 1..=5u64 {
        assert_eq!(recover(&mut s, n * 1000).number, n);
    }
    let numbers = |s: &RecoveryState| s.history().map(|r| r.number).collect::<Vec<_>>();
    assert_eq!(numbers(&s), [1, 2, 3, 4, 5]);

    for n in 6..=RECOVERY_LOG as u64 + 7 {
        recover(&mut s, n * 1000);
    }
    let total = RECOVERY_LOG as u64 + 7;
    assert_eq!(s.completed, total);
    let expected: Vec<u64> = (total - RECOVERY_LOG as u64 + 1..=total).collect();
    assert_eq!(numbers(&s), expected);
    // Number n is at log[(n - 1) % RECOVERY_LOG], with its own detection time.
    for r in s.history() {
        assert_eq!(s.log[((r.number - 1) % RECOVERY_LOG as u64) as usize], *r);
        assert_eq!(r.t_detect, r.number * 1000);
    }
}

// ---------------------------------------------------------------------------------------
// the `recovery` line

#[test]
fn recovery_line_is_the_documented_format() {
    let r = RecoveryRecord {
        number: 3,
        cause: Cause::Exception as u32,
        vector: 14,
        attempts: 1,
        _pad: 0,
        t_detect: 1_000_000,
        t_failpath: 1_012_345,
        t_boot: 3_500_000,
        t_passes: 3_640_000,
        t_entry: 3_700_500,
        repairs: Repairs {
            locks: 1,
            rolled_back: 2,
            committed: 11,
            runnable: 3,
            ept_verified: 4,
            ept_rebuilt: 5,
            vmcs: 6,
            interrupts: 7,
            timers: 8,
            devices: 9,
            stopped: 10,
        },
    };
    // latency = entry - detect; then failpath - detect, boot - failpath,
    // passes - boot, entry - passes.
    assert_eq!(
        format!("{r}"),
        "recovery 3: cause=exception#PF attempts=1 latency=2700500 failpath=12345 \
         boot=2487655 repair=140000 entry=60500 locks=1 exits=2 committed=11 runnable=3 ept=4 \
         ept_rebuilt=5 vmcs=6 interrupts=7 timers=8 devices=9 stopped=10"
    );
}

#[test]
fn recovery_line_names_every_cause() {
    let line = |cause: u32, vector: u32| {
        let r = RecoveryRecord {
            number: 1,
            cause,
            vector,
            attempts: 2,
            ..RecoveryRecord::default()
        };
        let s = format!("{r}");
        let cause = s.split(' ').nth(2).unwrap().to_owned();
        assert!(s.starts_with("recovery 1: cause="));
        assert!(s.contains(" attempts=2 latency=0 failpath=0 boot=0 repair=0 entry=0 "));
        cause
    };
    assert_eq!(line(Cause::Panic as u32, 0), "cause=panic");
    assert_eq!(line(Cause::Exception as u32, 8), "cause=exception#DF");
    assert_eq!(line(Cause::Exception as u32, 13), "cause=exception#GP");
    assert_eq!(line(Cause::Vmx as u32, 0), "cause=vmx");
    assert_eq!(line(Cause::Hang as u32, 0), "cause=hang");
    assert_eq!(line(Cause::Arena as u32, 0), "cause=arena");
    assert_eq!(line(Cause::Image as u32, 0), "cause=image");
    assert_eq!(line(0, 0), "cause=unknown");
    assert_eq!(line(99, 0), "cause=unknown");
}

#[test]
fn stamps_out_of_order_do_not_underflow() {
    let r = RecoveryRecord {
        number: 1,
        cause: Cause::Panic as u32,
        attempts: 1,
        t_detect: 500,
        t_failpath: 400,
        t_boot: 300,
        t_passes: 200,
        t_entry: 100,
        ..RecoveryRecord::default()
    };
    assert_eq!(r.latency(), 0);
    let s: String = format!("{r}");
    assert!(
        s.contains(" latency=0 failpath=0 boot=0 repair=0 entry=0 "),
        "{s}"
    );
}

#[test]
fn causes_round_trip() {
    for c in [
        Cause::Panic,
        Cause::Exception,
        Cause::Vmx,
        Cause::Hang,
        Cause::Arena,
        Cause::Image,
    ] {
        assert_eq!(Cause::from_raw(c as u32), Some(c));
    }
    assert_eq!(Cause::from_raw(0), None);
    assert_eq!(Cause::from_raw(7), None);
}

#[test]
fn a_failure_path_that_never_finished_counts_its_time_as_the_boot_phase() {
    let record = RecoveryRecord {
        t_detect: 1_000,
        t_failpath: 0,
        t_boot: 5_000,
        t_passes: 6_000,
        t_entry: 6_500,
        ..RecoveryRecord::default()
    };
    let line = std::format!("{record}");
    assert!(
        line.contains(" latency=5500 failpath=0 boot=4000 repair=1000 entry=500 "),
        "{line}"
    );
}
