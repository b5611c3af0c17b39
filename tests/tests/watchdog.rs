//! The hang watchdog's no-entry check (Bochs): a run loop that goes on petting the
//! heartbeat but never enters a VM again (trigger `no-entry`, the campaign's case) is a
//! hang, reported as such and recovered, and the test guests count on afterwards; long
//! legitimate host work with VMs runnable (zeroing a large new VM's RAM) is not.

use std::path::Path;
use std::time::Duration;

use lazarus_tests::testguest::checked_sequences;
use lazarus_tests::watchdog::{self, HangReport};
use lazarus_tests::{
    image_with_modules, recovery, test_guest, work_dir, Firmware, Machine, Platform,
};

const BOOT: Duration = Duration::from_secs(120);
const RUN: Duration = Duration::from_secs(300);
/// From the trigger to its recovery line: half a second of emulated time, and Bochs.
const DETECT: Duration = Duration::from_secs(60);

/// Each of `vms` prints `n` more work lines, and every line so far is checked
/// (checksum, no sequence gap, nothing CORRUPT).
fn count_on(m: &mut Machine, vms: &[&str], n: u64) {
    let last = checked_sequences(m);
    for vm in vms {
        let next = last.get(*vm).copied().unwrap_or(0) + n;
        m.wait_for_text(&format!("[{vm}] seq={next} sum="), RUN);
    }
    checked_sequences(m);
}

/// Waits for a no-entry hang report, its detection line (after `trigger`) and the
/// recovery line `number`, and checks them: `runnable` VMs named, detected within the
/// limit and one tick, `cause=hang`, one attempt, nothing stopped.
fn no_entry_recovery(m: &mut Machine, runnable: u32, number: u64) -> recovery::Line {
    let line = m.expect_line_not_after(
        watchdog::NO_ENTRY,
        r"^\[lazarus\] ERROR (?:halted|hypervisor failure: (?:panic|exception|vmx|arena|check|image|hang: no progress))",
        DETECT,
    );
    let report = watchdog::hang_report(&line).unwrap();
    assert_eq!(
        report,
        HangReport {
            runnable: Some(runnable),
            ms: 500,
            rip: report.rip
        },
        "{line}"
    );
    assert!(
        (0x200000..0x1000000).contains(&report.rip),
        "rip {:#x} lies in the image",
        report.rip
    );
    let line = m.expect_line(
        r"^\[lazarus\] ERROR trigger: 'no-entry' was detected ",
        DETECT,
    );
    let detected = watchdog::detected(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    // The count starts at the first tick after the last entry: detection comes 500 to
    // 550 ms after that entry (emulated time, TSC at 50 MHz). The trigger fires a little
    // after the last entry (right after it from a guest's hypercall, a few ms later from
    // the console, which prints the `firing` line first).
    assert!(
        (400.0..560.0).contains(&detected.ms),
        "detected after {} ms: {line}",
        detected.ms
    );
    let line = m.expect_line_not_after(recovery::PATTERN, r"^\[lazarus\] ERROR halted", DETECT);
    let r = recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!(
        (
            r.number,
            r.cause.as_str(),
            r.get("attempts"),
            r.get("stopped")
        ),
        (number, "hang", 1, 0),
        "{line}"
    );
    assert_eq!(r.get("runnable"), u64::from(runnable), "{line}");
    r
}

#[test]
fn a_run_loop_that_stops_entering_vms_is_a_hang_and_is_recovered() {
    let dir = work_dir("watchdog_no_entry");
    let guest = test_guest();
    let modules: [(&Path, &str); 3] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (
            &guest,
            "vm=beta elf mem=8M mode=work burn=20 trigger=no-entry trigger-after=2",
        ),
        (&guest, "vm=gamma elf mem=8M mode=work burn=20"),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 512);
    m.wait_prompt(BOOT);
    assert!(
        m.lines().iter().any(|l| l == watchdog::BOCHS_LINE),
        "no watchdog line"
    );

    // From the guest: beta's `trigger` hypercall after its second work line. Its exit was
    // committed before the loop stopped entering VMs: no VM is in flight, none is blamed.
    m.expect_line(
        r"^\[lazarus\] WARN  trigger: vm beta fires 'no-entry' \(count 1\)$",
        RUN,
    );
    no_entry_recovery(&mut m, 3, 1);
    m.wait_for_text("[beta] trigger no-entry result=0", RUN);
    count_on(&mut m, &["alpha", "beta", "gamma"], 3);

    // Long host work with VMs runnable is no hang: a 128 MiB VM zeroed and loaded
    // (seconds in Bochs; `vm reset` and a guest's reboot go through the same code) while
    // alpha, beta and gamma want the CPU.
    let created = m.command("vm create module=0 vm=delta elf mem=128M mode=work burn=20");
    assert!(created.ends_with("\nvm delta: created\n"), "{created}");
    count_on(&mut m, &["alpha", "beta", "gamma", "delta"], 2);

    // From the console, with four VMs runnable.
    let reply = m.command("trigger no-entry");
    assert!(
        reply.ends_with(
            "[lazarus] WARN  trigger: firing 'no-entry'\ntrigger: no-entry\ntrigger: no-entry: the run loop enters no VM from now on; the watchdog will find it\n"
        ),
        "{reply}"
    );
    no_entry_recovery(&mut m, 4, 2);
    count_on(&mut m, &["alpha", "beta", "gamma", "delta"], 3);

    let list = m.command("vm list");
    for (vm, id) in [("alpha", 1), ("beta", 2), ("gamma", 3), ("delta", 4)] {
        assert!(
            list.contains(&format!("{vm} id={id} state=running")),
            "{vm}: {list}"
        );
    }
    let hangs = m
        .lines()
        .iter()
        .filter(|l| l.contains("hypervisor failure"))
        .count();
    assert_eq!(hangs, 2, "only the two no-entry hangs were reported");
    let stats = watchdog::stats(&m.command("watchdog")).expect("watchdog: armed");
    assert_eq!(
        (stats.tick_ms, stats.hang_ms, stats.no_entry_ms),
        (50, 200, 500)
    );
    assert!(
        stats.longest_no_entry_ms < stats.no_entry_ms && stats.host_ticks + stats.guest_ticks > 0,
        "{stats:?}"
    );
}
