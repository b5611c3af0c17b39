use super::*;
use crate::arena::{set_text, VmRecord};
use std::boxed::Box;

const BASE: u64 = 0x1f60_0000;
const SIZE: u64 = 8 << 20;
/// Bochs's TSC rate (`ips=50000000`): a 10 s window is 500 million ticks.
const HZ: u64 = 50_000_000;
const W: u64 = SUSPECT_WINDOW_SECONDS * HZ;

fn arena() -> Box<ArenaRoot> {
    // SAFETY: every field of ArenaRoot is an integer, an array of integers or an atomic,
    // for which all-zero bytes are a valid value.
    let mut root = unsafe { Box::<ArenaRoot>::new_zeroed().assume_init() };
    root.init(BASE, SIZE).unwrap();
    root.boot.tsc_hz = HZ;
    root
}

/// Three runnable VMs in slots 0, 1, 2.
fn three_vms() -> Box<ArenaRoot> {
    let mut root = arena();
    for (slot, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let mut vm = VmRecord::EMPTY;
        assert!(set_text(&mut vm.name, name));
        vm.set_state(VmState::Runnable);
        root.vms[slot] = vm;
    }
    root
}

// ---------------------------------------------------------------------------------------
// SuspectRecord::note, is_sane

#[test]
fn failures_within_a_window_are_counted_to_exhaustion() {
    let mut r = SuspectRecord::EMPTY;
    assert_eq!(r.note(1000, W), 1);
    assert!(!r.exhausted());
    assert_eq!(r.note(1000 + W / 2, W), 2);
    assert!(!r.exhausted());
    assert_eq!(r.note(1000 + W - 1, W), 3);
    assert!(r.exhausted());
    assert_eq!((r.first, r.last), (1000, 1000 + W - 1));
    assert!(r.is_sane(1000 + W - 1, W));
}

#[test]
fn a_failure_a_window_after_the_first_starts_afresh() {
    let mut r = SuspectRecord::EMPTY;
    r.note(1000, W);
    r.note(2000, W);
    assert_eq!(r.note(1000 + W, W), 1, "the window closed");
    assert_eq!((r.first, r.last), (1000 + W, 1000 + W));
    assert_eq!(r.note(1000 + W + 5, W), 2);
}

#[test]
fn a_whole_window_without_failures_forgives_everything() {
    let mut r = SuspectRecord::EMPTY;
    r.note(0, W);
    r.note(W - 10, W);
    // Two failures just before the window closed, then a clean window: afresh.
    assert_eq!(r.note(2 * W, W), 1);
}

#[test]
fn windows_are_fixed_so_the_fourth_failure_within_any_window_is_the_last() {
    let mut r = SuspectRecord::EMPTY;
    r.note(0, W);
    r.note(W - 1, W);
    // Three failures within 3 ticks, but across two windows: not yet.
    assert_eq!(r.note(W, W), 1);
    assert_eq!(r.note(W + 1, W), 2);
    assert!(!r.exhausted());
    assert_eq!(r.note(W + 2, W), 3);
    assert!(r.exhausted());
}

#[test]
fn records_that_cannot_be_believed_are_not_sane_and_start_afresh() {
    let now = 10 * W;
    let good = SuspectRecord {
        count: 2,
        first: now - 100,
        last: now - 50,
        ..SuspectRecord::EMPTY
    };
    assert!(good.is_sane(now, W));
    assert!(SuspectRecord::EMPTY.is_sane(0, W));
    let bad = [
        SuspectRecord {
            count: SUSPECT_FAILURES + 1,
            ..good
        },
        SuspectRecord {
            count: u32::MAX,
            ..good
        },
        SuspectRecord {
            first: now - 10,
            ..good
        },
        SuspectRecord {
            last: now + 1,
            ..good
        },
        SuspectRecord {
            first: now - W - 60,
            ..good
        },
    ];
    for r in bad {
        assert!(!r.is_sane(now, W), "{r:?}");
        let mut noted = r;
        assert_eq!(noted.note(now, W), 1, "{r:?} starts afresh");
        assert_eq!((noted.first, noted.last), (now, now));
    }
    // A count of 0 ignores the times: no window is open.
    let closed = SuspectRecord {
        count: 0,
        first: u64::MAX,
        last: 3,
        ..SuspectRecord::EMPTY
    };
    assert!(closed.is_sane(0, W));
    let mut c = closed;
    assert_eq!(c.note(7, W), 1);
}

#[test]
fn the_tsc_rate_is_clamped_to_a_plausible_range() {
    assert_eq!(window_ticks(HZ), 500_000_000);
    assert_eq!(window_ticks(0), SUSPECT_WINDOW_SECONDS * MIN_TSC_HZ);
    assert_eq!(window_ticks(u64::MAX), SUSPECT_WINDOW_SECONDS * MAX_TSC_HZ);
    assert_eq!(arena().suspect_window(), W);
}

// ---------------------------------------------------------------------------------------
// ArenaRoot::note_failure

#[test]
fn a_failure_is_charged_to_the_vm_in_flight_and_running_is_cleared() {
    let mut root = three_vms();
    root.running = 2;
    assert_eq!(root.note_failure(Cause::Vmx, 0, 5000), 1);
    assert_eq!(
        root.running, 0,
        "nothing in flight during the recovery boot"
    );
    assert_eq!(root.recovery.inflight_slot, 1);
    assert_eq!(root.vms[1].suspect.count, 1);
    assert_eq!(root.vms[1].suspect.first, 5000);
    assert_eq!(root.vms[0].suspect, SuspectRecord::EMPTY);
    assert_eq!(root.vms[2].suspect, SuspectRecord::EMPTY);
    assert_eq!(root.recovery.resumable_at_failure, 0b111);
}

#[test]
fn a_failure_with_no_live_vm_in_flight_is_charged_to_none() {
    for running in [0, 4, 17, u32::MAX] {
        let mut root = three_vms();
        root.running = running;
        assert_eq!(root.note_failure(Cause::Panic, 0, 10), 1);
        assert_eq!(root.recovery.inflight_slot, NO_SLOT, "running={running}");
        assert!(root.vms.iter().all(|vm| vm.suspect.count == 0));
        assert_eq!(root.running, 0);
    }
}

#[test]
fn the_count_goes_on_across_recoveries_that_succeeded() {
    // The amplifier: each recovery completes at another VM's entry, and beta fails again.
    let mut root = three_vms();
    for (n, t) in [(1, 100), (2, 200), (3, 300)] {
        root.running = 2;
        assert_eq!(root.note_failure(Cause::Vmx, 0, t), 1, "a new recovery");
        assert_eq!(root.vms[1].suspect.count, n);
        root.recovery.complete();
    }
    assert!(root.vms[1].suspect.exhausted());
    assert_eq!(root.recovery.completed, 3);
}

#[test]
fn the_resumable_vms_are_those_of_the_first_failure() {
    let mut root = three_vms();
    root.vms[2].set_state(VmState::Waiting);
    root.vms[0].set_state(VmState::Halted);
    root.running = 2;
    root.note_failure(Cause::Vmx, 0, 1);
    assert_eq!(root.recovery.resumable_at_failure, 0b110);
    // A failure during that recovery, after beta was stopped, keeps the first snapshot.
    root.vms[1].set_state(VmState::Stopped);
    root.running = 3;
    assert_eq!(
        root.note_failure(Cause::Vmx, 0, 2),
        1,
        "gamma is the suspect"
    );
    assert_eq!(root.recovery.resumable_at_failure, 0b110);
    assert_eq!(root.stopped_mask(), 0b010);
    assert_eq!(root.resumable_mask(), 0b100);
}
