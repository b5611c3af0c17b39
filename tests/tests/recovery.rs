//! Recovery from the hypervisor's own failures (Bochs): every `trigger` kind, one after
//! the other in one run, while three Linux VMs run their self-checking workloads; a
//! recovery that fails once and a VM whose record is corrupt; and quick checks with the
//! in-tree test guest (among them a stray write into the arena header, which the failure
//! path repairs from the recovery anchor, one into the arena's boot record, which the
//! recovery boot repairs from its copy, and a stack overflow into a guard page). A recovery must be, to a VM, only a stall: every workload line is
//! still checked (checksum, no sequence gap, uptime never going backwards), each VM
//! keeps making progress, no VM boots again, and a VM created afterwards boots and runs.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use lazarus_tests::linux::{checked, steps, wait_steps, CMDLINE, RUN};
use lazarus_tests::testguest::checked_sequences;
use lazarus_tests::{
    image_with_modules, linux_guest, test_guest, visible, work_dir, Firmware, Machine, Platform,
    Regex,
};

const BOOT: Duration = Duration::from_secs(120);
/// From the trigger to its `recovery` line (a hang takes the watchdog a fifth of a second of
/// emulated time to notice).
const RECOVERY: Duration = Duration::from_secs(120);

/// The triggers of the ten-failure run, in firing order (kinds mixed), with the cause
/// each recovery line must name.
const TRIGGERS: [(&str, &str); 10] = [
    ("panic", "panic"),
    ("pf", "exception#PF"),
    ("vmcs-host", "vmx"),
    ("gp", "exception#GP"),
    ("mid-exit", "panic"),
    ("hang", "hang"),
    ("ud", "exception#UD"),
    ("de", "exception#DE"),
    ("deadlock", "hang"),
    ("bp", "exception#BP"),
];

/// One `recovery` line, parsed (the harness's one parser for it).
type Recovery = lazarus_tests::recovery::Line;

/// Types `trigger KIND` and waits for the recovery it causes: the trigger's own line
/// (`firing`, or `armed` for those that fire later), the failure report, then the
/// recovery line, which must be number `number`, name `cause`, and add up.
fn fire(m: &mut Machine, kind: &str, cause: &str, number: u64) -> Recovery {
    m.send_line(&format!("trigger {kind}"));
    match kind {
        "vmcs-host" => m.expect_line(
            r"^trigger: vmcs-host armed: fires at the next VM entry$",
            RECOVERY,
        ),
        "mid-exit" | "mid-commit" | "exit-flip" => m.expect_line(
            &format!(r"^trigger: {kind} armed: fires at the next VM exit$"),
            RECOVERY,
        ),
        _ => {
            let name = kind.split(' ').next().unwrap();
            m.expect_line(
                &format!(r"^\[lazarus\] WARN  trigger: firing '{name}'$"),
                RECOVERY,
            )
        }
    };
    let report = match cause {
        "panic" => r"panic at \S+:\d+:\d+: .+".to_string(),
        "vmx" => r"vmx: .+ failed for vm [a-z0-9_-]+: .+".to_string(),
        "hang" => lazarus_tests::watchdog::HANG_TAIL.to_string(),
        "arena" if kind == "exit-flip" => {
            r"check: the VM exit changed between its read and its commit \(vm (?:alpha|beta)\)$"
                .to_string()
        }
        c if c.starts_with("exception#") => {
            format!(
                r"exception #{} .+ \(vector \d+\) ",
                &c["exception#".len()..]
            )
        }
        _ => ".+".to_string(),
    };
    m.expect_line(
        &format!(r"^\[lazarus\] ERROR hypervisor failure: {report}"),
        RECOVERY,
    );
    if cause.starts_with("exception#") || cause == "hang" {
        for first in ["rax", "rsi", "r8", "r12", "rip", "cr0"] {
            m.expect_line(
                &format!(r"^\[lazarus\] ERROR   {first}=0x[0-9a-f]{{16}} "),
                RECOVERY,
            );
        }
    }
    let line = m.expect_line_not_after(
        r"^\[lazarus\] INFO  recovery \d+: ",
        r"^\[lazarus\] ERROR (?:halted|hypervisor failure)",
        RECOVERY,
    );
    let r = lazarus_tests::recovery::parse(&line)
        .unwrap_or_else(|| panic!("malformed recovery line: {line}"));
    assert_eq!(r.number, number, "{line}");
    assert_eq!(r.cause, cause, "trigger {kind}: {line}");
    assert_eq!(
        r.get("latency"),
        r.get("failpath") + r.get("boot") + r.get("repair") + r.get("entry"),
        "the latency is the sum of its parts: {line}"
    );
    assert!(r.get("latency") > 0, "{line}");
    r
}

/// The line of recovery 1, with cause `cause`, before any halt or further failure: one
/// attempt, no VM stopped.
fn first_recovery(m: &mut Machine, cause: &str) -> Recovery {
    let line = m.expect_line_not_after(
        &format!(
            r"^\[lazarus\] INFO  recovery 1: cause={} ",
            regex::escape(cause)
        ),
        r"^\[lazarus\] ERROR (?:halted|hypervisor failure)",
        RECOVERY,
    );
    let first =
        lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!(
        (first.get("attempts"), first.get("stopped")),
        (1, 0),
        "{line}"
    );
    first
}

/// Each of `vms` printed `init started` exactly once: no recovery made a VM boot again.
fn assert_booted_once(m: &Machine, vms: &[&str]) {
    let lines = m.lines();
    for vm in vms {
        let prefix = format!("[{vm}] lazarus-guest: init started");
        let boots = lines.iter().filter(|l| l.starts_with(&prefix)).count();
        assert_eq!(boots, 1, "{vm} booted {boots} times");
    }
}

/// Waits until each of `vms` has done at least one more file step than it had so far,
/// then checks every workload line.
fn progress(m: &mut Machine, vms: &[&str]) {
    let before: Vec<u64> = vms.iter().map(|vm| steps(m, vm)).collect();
    for (vm, n) in vms.iter().zip(&before) {
        wait_steps(m, vm, n + 1);
    }
    checked(m);
}

/// Boots Lazarus with `triggers=on` and the Linux VMs `vms` (comma-separated), each
/// pausing a second between steps; module 0 is the kernel, module 1 the initramfs.
fn boot_linux(name: &str, vms: &str) -> Machine {
    let (kernel, initrd) = linux_guest();
    let kernel_line = format!("vm={vms} kernel mem=80M \"cmdline={CMDLINE} lzpause=1\"");
    let initrd_line = format!("vm={vms} initrd");
    let dir = work_dir(name);
    let modules: [(&Path, &str); 2] = [(&kernel, &kernel_line), (&initrd, &initrd_line)];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 512);
    m.wait_prompt(BOOT);
    m
}

/// The `recovery` command: its recovery lines (checked against the ones printed when
/// each happened) and the count in its last line.
fn recovery_command(m: &mut Machine, printed: &[Recovery]) {
    let reply = m.command("recovery");
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines.len(), printed.len() + 1, "{reply}");
    for (i, (listed, seen)) in lines.iter().zip(printed).enumerate() {
        let listed =
            lazarus_tests::recovery::parse(listed).unwrap_or_else(|| panic!("malformed: {listed}"));
        assert_eq!(listed.number, i as u64 + 1, "{reply}");
        assert_eq!(
            listed.line,
            seen.line.trim_start_matches("[lazarus] INFO  "),
            "the log repeats the line printed at the time"
        );
    }
    let total =
        Regex::new(r"^recovery: (\d+) recoveries since cold boot \(generation (\d+)\)$").unwrap();
    let c = total
        .captures(lines[lines.len() - 1])
        .unwrap_or_else(|| panic!("no total line: {reply}"));
    assert_eq!(c[1].parse::<usize>().unwrap(), printed.len(), "{reply}");
    assert!(
        c[2].parse::<usize>().unwrap() > printed.len(),
        "a generation per recovery boot: {reply}"
    );
}

#[test]
fn ten_mixed_failures_in_one_run_and_three_linux_vms_stay_correct() {
    let vms = ["web", "db", "cache"];
    let mut m = boot_linux("recovery_linux_ten", "web,db,cache");
    for vm in vms {
        wait_steps(&mut m, vm, 1);
    }
    checked(&m);

    let mut recoveries = Vec::new();
    for (i, (kind, cause)) in TRIGGERS.iter().enumerate() {
        let r = fire(&mut m, kind, cause, i as u64 + 1);
        let line = &r.line;
        assert_eq!(r.get("attempts"), 1, "{line}");
        assert_eq!(r.get("stopped"), 0, "no VM stopped: {line}");
        assert_eq!(
            r.get("exits"),
            u64::from(*kind == "mid-exit"),
            "only mid-exit leaves a VM exit to roll back: {line}"
        );
        assert_eq!(
            r.get("locks"),
            u64::from(*kind == "deadlock"),
            "only deadlock leaves a lock held: {line}"
        );
        // A stall, nothing more: every VM goes on where it was.
        progress(&mut m, &vms);
        assert_booted_once(&m, &vms);
        recoveries.push(r);
    }
    let list = m.command("vm list");
    for vm in vms {
        assert!(
            list.lines().any(|l| l.starts_with(&format!("{vm} id="))
                && (l.contains(" state=running ") || l.contains(" state=idle "))),
            "{vm} is not running: {list}"
        );
    }
    recovery_command(&mut m, &recoveries);

    // A VM created after all that boots and runs its workload.
    let reply = m.command(&format!(
        "vm create module=0 initrd=1 vm=fresh kernel mem=80M \"cmdline={CMDLINE} lzpause=1\""
    ));
    assert!(reply.ends_with("vm fresh: created\n"), "{reply}");
    m.expect_line(r"^\[fresh\] lazarus-guest: init started uptime=", RUN);
    wait_steps(&mut m, "fresh", 3);
    let all = ["web", "db", "cache", "fresh"];
    progress(&mut m, &all);
    assert_booted_once(&m, &all);
}

#[test]
fn a_failed_recovery_is_retried_and_a_corrupt_vm_is_stopped_alone() {
    let vms = ["web", "db", "cache"];
    let mut m = boot_linux("recovery_linux_nested", "web,db,cache");
    for vm in vms {
        wait_steps(&mut m, vm, 1);
    }

    // Recovery itself panics once: the second attempt succeeds and no VM notices.
    m.send_line("trigger recovery-fail");
    m.expect_line(
        r"^\[lazarus\] WARN  trigger: firing 'recovery-fail'$",
        RECOVERY,
    );
    m.expect_line(
        r"^\[lazarus\] ERROR hypervisor failure: panic at \S+: trigger: deliberate panic",
        RECOVERY,
    );
    m.expect_line(r"^\[lazarus\] ERROR recovery attempt 1 failed:", RECOVERY);
    let line = m.expect_line(r"^\[lazarus\] INFO  recovery \d+: ", RECOVERY);
    let first =
        lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!(
        (
            first.number,
            first.cause.as_str(),
            first.get("attempts"),
            first.get("stopped")
        ),
        (1, "panic", 2, 0),
        "{line}"
    );
    progress(&mut m, &vms);
    assert_booted_once(&m, &vms);

    // db's record no longer adds up: recovery stops db, and only db.
    let second = fire(&mut m, "corrupt-vm db", "panic", 2);
    assert_eq!(second.get("stopped"), 1, "{}", second.line);
    let stop_lines: Vec<String> = m
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("[lazarus] ERROR vm ") && l.contains(": stopped: recovery: "))
        .collect();
    assert_eq!(
        stop_lines,
        ["[lazarus] ERROR vm db: stopped: recovery: state corrupt: vm slot 1: configuration checksum mismatch"],
        "one stop line, for db"
    );
    let list = m.command("vm list");
    let re = Regex::new(r"^(\w+) id=\d+ state=(\w+) .*$").unwrap();
    let states: HashMap<String, String> = list
        .lines()
        .filter_map(|l| re.captures(l))
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    assert_eq!(states.len(), 3, "{list}");
    assert_eq!(states["db"], "stopped", "{list}");
    assert!(
        list.lines().any(|l| l.starts_with("db id=2 state=stopped")
            && Regex::new(
                r#" reason="recovery: state corrupt: vm slot \d+: configuration checksum mismatch"$"#
            )
            .unwrap()
            .is_match(l)),
        "{list}"
    );
    for vm in ["web", "cache"] {
        assert!(
            matches!(states[vm].as_str(), "running" | "idle"),
            "{vm}: {list}"
        );
    }
    let db_steps = steps(&m, "db");
    progress(&mut m, &["web", "cache"]);
    progress(&mut m, &["web", "cache"]);
    assert_eq!(steps(&m, "db"), db_steps, "db ran after it was stopped");
    assert_booted_once(&m, &vms);

    let reply = m.command("vm reset db");
    assert!(
        reply.starts_with("error: ") && reply.contains("cannot be reset"),
        "{reply}"
    );
    assert!(m.command("vm list").contains("db id=2 state=stopped"));
    recovery_command(&mut m, &[first, second]);
    progress(&mut m, &["web", "cache"]);
}

#[test]
fn test_guests_count_on_through_a_panic_and_failures_mid_exit_and_mid_commit() {
    let dir = work_dir("recovery_testguest");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (&guest, "vm=beta elf mem=8M mode=work burn=20"),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    count_on(&mut m, 3);

    let panic = fire(&mut m, "panic", "panic", 1);
    assert_eq!(panic.get("exits"), 0, "{}", panic.line);
    count_on(&mut m, 3);
    let mid = fire(&mut m, "mid-exit", "panic", 2);
    assert_eq!(mid.get("exits"), 1, "the exit is rolled back: {}", mid.line);
    count_on(&mut m, 3);
    let commit = fire(&mut m, "mid-commit", "panic", 3);
    assert_eq!(
        (commit.get("exits"), commit.get("committed")),
        (0, 1),
        "the half-done commit is rolled forward: {}",
        commit.line
    );
    count_on(&mut m, 3);

    for r in [&panic, &mid, &commit] {
        assert_eq!(r.get("attempts"), 1, "{}", r.line);
        assert_eq!(r.get("stopped"), 0, "{}", r.line);
    }
    both_still_running(&mut m);
    recovery_command(&mut m, &[panic, mid, commit]);
}

#[test]
fn an_exit_changed_after_it_was_read_is_caught_before_its_commit() {
    // A flipped frame pointer shows the run loop another exit than the VMCS reported
    // (campaign finding 14): the check before the commit catches it, nothing of the exit
    // is committed, and recovery re-executes it. (Apart from the test above: three
    // failures with one VM in flight within 10 s would stop that VM.)
    let dir = work_dir("recovery_exit_flip");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (&guest, "vm=beta elf mem=8M mode=work burn=20"),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    count_on(&mut m, 3);
    let flip = fire(&mut m, "exit-flip", "arena", 1);
    assert_eq!(
        (flip.get("exits"), flip.get("attempts"), flip.get("stopped")),
        (1, 1, 0),
        "the changed exit is rolled back: {}",
        flip.line
    );
    let warn = Regex::new(
        r"^\[lazarus\] WARN  trigger: exit-flip: flipping bit 6 of exit \d+'s guest RIP in vm (?:alpha|beta)$",
    )
    .unwrap();
    assert_eq!(m.lines().iter().filter(|l| warn.is_match(l)).count(), 1);
    count_on(&mut m, 3);
    both_still_running(&mut m);
    recovery_command(&mut m, &[flip]);
}

/// Boots two test guests; `beta` fires `trigger=recovery-fail` with `count` through the
/// hypercall after its second work line, so its exit is the one in flight.
fn failing_recoveries(name: &str, count: u32) -> Machine {
    let dir = work_dir(name);
    let guest = test_guest();
    let beta = format!(
        "vm=beta elf mem=8M mode=work burn=20 trigger=recovery-fail trigger-count={count} trigger-after=2"
    );
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (&guest, &beta),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.expect_line(
        &format!(r"^\[lazarus\] WARN  trigger: vm beta fires 'recovery-fail' \(count {count}\)$"),
        RECOVERY,
    );
    m
}

#[test]
fn the_third_attempt_stops_the_vm_whose_exit_was_in_flight_and_a_fourth_halts() {
    // Two recoveries fail: the third attempt stops beta (its hypercall was in flight) and
    // succeeds; alpha goes on.
    let mut m = failing_recoveries("recovery_inflight", 2);
    for n in 1..=2 {
        m.expect_line(
            &format!(r"^\[lazarus\] ERROR recovery attempt {n} failed:$"),
            RECOVERY,
        );
    }
    m.expect_line(
        r"^\[lazarus\] ERROR vm beta: stopped: recovery: its exit was in flight in 2 failed recoveries$",
        RECOVERY,
    );
    let line = m.expect_line(r"^\[lazarus\] INFO  recovery 1: ", RECOVERY);
    let r = lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!(
        (r.get("attempts"), r.get("stopped"), r.get("runnable")),
        (3, 1, 1),
        "{line}"
    );
    let before = checked_sequences(&m).get("alpha").copied().unwrap_or(0);
    m.wait_for_text(&format!("[alpha] seq={} sum=", before + 3), RUN);
    checked_sequences(&m);
    let list = m.command("vm list");
    assert!(list.contains("alpha id=1 state=running"), "{list}");
    assert!(
        list.contains(r#"beta id=2 state=stopped"#)
            && list.contains(r#"reason="recovery: its exit was in flight in 2 failed recoveries""#),
        "{list}"
    );
    drop(m);

    // Three fail: the last resort is a halt with the reports and the VM table.
    let mut m = failing_recoveries("recovery_last_resort", 3);
    m.expect_line(
        r"^\[lazarus\] ERROR halted: recovery failed 3 times in a row; the VMs were not resumed$",
        RECOVERY,
    );
    m.expect_line(
        r"^\[lazarus\] ERROR   vm alpha: state=1 phase=\d exit=\d+ rip_at_exit=0x[0-9a-f]+$",
        RECOVERY,
    );
    m.expect_line(
        r"^\[lazarus\] ERROR   vm beta: state=3 phase=\d exit=\d+ rip_at_exit=0x[0-9a-f]+$",
        RECOVERY,
    );
    let t = m.transcript();
    assert!(!t.contains("INFO  recovery 1:"), "no recovery completed");
    assert_eq!(
        t.matches("recovery attempt").count(),
        3,
        "three failed attempts reported"
    );
}

#[test]
fn a_flipped_bit_in_code_that_never_runs_is_found_by_the_image_scrub() {
    let dir = work_dir("recovery_scrub");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (&guest, "vm=beta elf mem=8M mode=work burn=20"),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.wait_for_text("[beta] seq=2 sum=", RUN);
    let reply = m.command("trigger code-flip");
    assert!(
        reply.ends_with(
            "trigger: code-flip\ntrigger: code-flip: one bit of unused code changed; the image scrub will find it\n"
        ),
        "{reply}"
    );
    m.expect_line(
        r"^\[lazarus\] ERROR hypervisor failure: image scrub: code or read-only data changed at 0x[0-9a-f]+$",
        RECOVERY,
    );
    let line = m.expect_line(r"^\[lazarus\] INFO  recovery 1: cause=image ", RECOVERY);
    let r = lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!((r.get("attempts"), r.get("stopped")), (1, 0), "{line}");
    // The restored image is whole again: no second report, and the VMs count on.
    let last = checked_sequences(&m);
    for vm in ["alpha", "beta"] {
        let next = last.get(vm).copied().unwrap_or(0) + 5;
        m.wait_for_text(&format!("[{vm}] seq={next} sum="), RUN);
    }
    checked_sequences(&m);
    assert_eq!(
        m.transcript().matches("failure: image scrub").count(),
        1,
        "one report only"
    );
}

#[test]
fn the_image_scrub_goes_on_while_every_vm_waits() {
    // One VM that halts for good (CLI; HLT): no VM exits, so only the idle scrub can find
    // the flip.
    let dir = work_dir("recovery_idle_scrub");
    let guest = test_guest();
    let modules: [(&Path, &str); 1] = [(&guest, "vm=sleeper elf mem=8M mode=hlt")];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.wait_for_text("halting", RUN);
    let waits = (0..20).any(|_| m.command("vm list").contains("sleeper id=1 state=halted"));
    assert!(waits, "the VM never waited: {}", m.command("vm list"));
    let exits_before = m.command("vm list");
    m.command("trigger code-flip");
    m.expect_line(
        r"^\[lazarus\] ERROR hypervisor failure: image scrub: code or read-only data changed at 0x[0-9a-f]+$",
        RECOVERY,
    );
    let line = m.expect_line(r"^\[lazarus\] INFO  recovery 1: cause=image ", RECOVERY);
    let r = lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!((r.get("attempts"), r.get("stopped")), (1, 0), "{line}");
    // No VM exit paced it: the VM's exit count had stopped.
    let exits = |list: &str| {
        list.split_whitespace()
            .find_map(|w| w.strip_prefix("exits="))
            .map(str::to_string)
    };
    assert_eq!(
        exits(&exits_before),
        exits(&m.command("vm list")),
        "exits went on"
    );
}

/// The test guests `alpha` and `beta` each print `n` more work lines, and every line so
/// far is checked (checksum, no sequence gap, nothing CORRUPT).
fn count_on(m: &mut Machine, n: u64) {
    count_on_vms(m, &["alpha", "beta"], n);
}

/// The same for the test guests `vms`.
fn count_on_vms(m: &mut Machine, vms: &[&str], n: u64) {
    let last = checked_sequences(m);
    for vm in vms {
        let next = last.get(*vm).copied().unwrap_or(0) + n;
        m.wait_for_text(&format!("[{vm}] seq={next} sum="), RUN);
    }
    checked_sequences(m);
}

/// `alpha` and `beta` are running, each started once (no reset behind a recovery).
fn both_still_running(m: &mut Machine) {
    still_running(m, &[("alpha", 1), ("beta", 2)]);
}

/// Each of `vms` (name, id) is running and started once (no reset behind a recovery).
fn still_running(m: &mut Machine, vms: &[(&str, u32)]) {
    let list = m.command("vm list");
    let lines = m.lines();
    for (vm, id) in vms {
        assert!(
            list.contains(&format!("{vm} id={id} state=running")),
            "{vm}: {list}"
        );
        let starts = lines
            .iter()
            .filter(|l| l.starts_with(&format!("[{vm}] start name={vm}")))
            .count();
        assert_eq!(starts, 1, "{vm} started again");
    }
}

/// The report line of a failure whose failure path found the arena header damaged.
const HEADER_RESTORED: &str =
    "[lazarus] ERROR recovery: the arena header was damaged; its fixed fields were restored from the anchor";

#[test]
fn a_stray_write_into_the_arena_header_is_repaired_from_the_anchor() {
    // beta overwrites the header through the `trigger` hypercall after its second work
    // line (recovery 1); then the console does it again (recovery 2).
    let dir = work_dir("recovery_arena_header");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (
            &guest,
            "vm=beta elf mem=8M mode=work burn=20 trigger=arena-header trigger-after=2",
        ),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.expect_line(
        r"^\[lazarus\] WARN  trigger: vm beta fires 'arena-header' \(count 1\)$",
        RECOVERY,
    );
    let halted = r"^\[lazarus\] ERROR halted";
    m.expect_line_not_after(
        r"^\[lazarus\] ERROR hypervisor failure: panic at \S+: trigger: arena header overwritten$",
        halted,
        RECOVERY,
    );
    m.expect_line_not_after(
        &format!("^{}$", regex::escape(HEADER_RESTORED)),
        &format!(r"{halted}|^\[lazarus\] INFO  recovery \d+: "),
        RECOVERY,
    );
    let first = first_recovery(&mut m, "panic");
    assert_eq!(first.get("runnable"), 2, "{}", first.line);
    // Anywhere: the VM that is entered first may print before the recovery line does.
    m.wait_for_text("[beta] trigger arena-header result=0\n", RUN);

    count_on(&mut m, 3);

    // The same from the console.
    let second = fire(&mut m, "arena-header", "panic", 2);
    assert_eq!(
        (second.get("attempts"), second.get("stopped")),
        (1, 0),
        "{}",
        second.line
    );
    count_on(&mut m, 3);

    let t = m.transcript();
    assert_eq!(
        t.lines().filter(|l| visible(l) == HEADER_RESTORED).count(),
        2,
        "one header line per report"
    );
    assert_eq!(
        t.matches("trigger: arena header overwritten").count(),
        2,
        "two failures, each reported once"
    );
    assert!(!t.contains("ERROR halted"), "no halt");
    both_still_running(&mut m);
    recovery_command(&mut m, &[first, second]);
    count_on(&mut m, 2);
}

/// Boots the test guests `alpha`, `beta` and `gamma` (in that order: slots 0, 1, 2), each
/// with `mode=work burn=20` and its extra words.
fn three_test_guests(name: &str, extra: [&str; 3]) -> Machine {
    let dir = work_dir(name);
    let guest = test_guest();
    let words: Vec<String> = ["alpha", "beta", "gamma"]
        .iter()
        .zip(extra)
        .map(|(vm, extra)| format!("vm={vm} elf mem=8M mode=work burn=20 {extra}"))
        .collect();
    let modules: Vec<(&Path, &str)> = words
        .iter()
        .map(|w| (guest.as_path(), w.as_str()))
        .collect();
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m
}

/// The stop line of a VM in flight at too many hypervisor failures (README, "Recovery").
fn suspect_stop_line(vm: &str) -> String {
    format!(
        r"^\[lazarus\] ERROR vm {vm}: stopped: recovery: in flight at 3 hypervisor failures within 10 s$"
    )
}

/// How many VM entries of `vm` failed, as the failure reports say.
fn failed_entries(m: &Machine, vm: &str) -> usize {
    let report = format!(
        "[lazarus] ERROR hypervisor failure: vmx: VM entry failed for vm {vm}: exit reason 33 (entry_invalid_guest_state), "
    );
    m.lines().iter().filter(|l| l.starts_with(&report)).count()
}

#[test]
fn a_vm_that_breaks_every_vm_entry_is_stopped_after_three_failures() {
    // beta turns `bad-entry` on for itself after its second work line. Each recovery
    // completes at alpha's entry (the first slot), and beta fails again at its next turn:
    // the third failure within 10 s stops beta, and only beta.
    let mut m = three_test_guests(
        "recovery_bad_entry",
        ["", "trigger=bad-entry trigger-after=2", ""],
    );
    m.expect_line(
        r"^\[lazarus\] WARN  trigger: vm beta fires 'bad-entry' \(count 1\)$",
        RECOVERY,
    );
    let halted = r"^\[lazarus\] ERROR halted";
    let mut lines = Vec::new();
    for n in 1..=3 {
        let line = m.expect_line_not_after(
            &format!(r"^\[lazarus\] INFO  recovery {n}: cause=vmx "),
            halted,
            RECOVERY,
        );
        lines.push(
            lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}")),
        );
    }
    let got: Vec<(u64, u64)> = lines
        .iter()
        .map(|r| (r.get("attempts"), r.get("stopped")))
        .collect();
    assert_eq!(
        got,
        [(1, 0), (1, 0), (1, 1)],
        "three recoveries, the third stops beta"
    );
    assert_eq!(lines[2].get("runnable"), 2, "{}", lines[2].line);

    count_on_vms(&mut m, &["alpha", "gamma"], 3);
    let t = m.transcript();
    assert!(!t.contains("INFO  recovery 4:"), "no fourth recovery");
    assert!(!t.contains("ERROR halted"), "no halt");
    let stops: Vec<String> = m
        .lines()
        .into_iter()
        .filter(|l| l.contains(": stopped: "))
        .collect();
    assert_eq!(
        stops,
        ["[lazarus] ERROR vm beta: stopped: recovery: in flight at 3 hypervisor failures within 10 s"],
        "one stop line, for beta"
    );
    assert!(Regex::new(&suspect_stop_line("beta"))
        .unwrap()
        .is_match(&stops[0]));
    assert_eq!(failed_entries(&m, "beta"), 3, "three failed entries");
    assert_eq!(failed_entries(&m, "alpha") + failed_entries(&m, "gamma"), 0);
    let list = m.command("vm list");
    assert!(
        list.contains(r#"beta id=2 state=stopped"#)
            && list
                .contains(r#"reason="recovery: in flight at 3 hypervisor failures within 10 s""#),
        "{list}"
    );
    still_running(&mut m, &[("alpha", 1), ("gamma", 3)]);
    // Stopped for good: beta prints nothing more while the others count on.
    let beta = checked_sequences(&m).get("beta").copied();
    count_on_vms(&mut m, &["alpha", "gamma"], 2);
    assert_eq!(checked_sequences(&m).get("beta").copied(), beta);
}

#[test]
fn two_vms_that_break_every_vm_entry_are_both_stopped_without_a_halt() {
    // alpha and beta are marked at once from the console: every first VM entry of the
    // recovery is one of theirs until both are stopped (the second one's failures no
    // longer count against the first's attempts), then gamma runs and the recovery
    // completes: one recovery of six boots, two VMs stopped.
    let mut m = three_test_guests("recovery_bad_entry_two", ["", "", ""]);
    count_on_vms(&mut m, &["alpha", "beta", "gamma"], 2);
    m.send_line("trigger bad-entry alpha beta");
    m.expect_line(
        r"^trigger: bad-entry: every VM entry of vm alpha fails from now on$",
        RECOVERY,
    );
    m.expect_line(
        r"^trigger: bad-entry: every VM entry of vm beta fails from now on$",
        RECOVERY,
    );
    // The report of the one recovery: five failed attempts, then the two stop lines,
    // then its line.
    let halted = r"^\[lazarus\] ERROR halted";
    for n in 1..=5 {
        m.expect_line_not_after(
            &format!(r"^\[lazarus\] ERROR recovery attempt {n} failed:$"),
            halted,
            RECOVERY,
        );
    }
    for vm in ["alpha", "beta"] {
        m.expect_line_not_after(&suspect_stop_line(vm), halted, RECOVERY);
    }
    let line = m.expect_line_not_after(
        r"^\[lazarus\] INFO  recovery 1: cause=vmx ",
        halted,
        RECOVERY,
    );
    let r = lazarus_tests::recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!(
        (r.get("attempts"), r.get("stopped"), r.get("runnable")),
        (6, 2, 1),
        "{line}"
    );
    count_on_vms(&mut m, &["gamma"], 3);
    let t = m.transcript();
    assert!(!t.contains("ERROR halted"), "no halt");
    assert!(!t.contains("INFO  recovery 2:"), "one recovery");
    assert_eq!(
        (failed_entries(&m, "alpha"), failed_entries(&m, "beta")),
        (3, 3),
        "three failed entries each"
    );
    let list = m.command("vm list");
    for vm in ["alpha", "beta"] {
        assert!(
            list.lines().any(|l| l.starts_with(&format!("{vm} id="))
                && l.contains("state=stopped")
                && l.ends_with(
                    r#" reason="recovery: in flight at 3 hypervisor failures within 10 s""#
                )),
            "{vm}: {list}"
        );
    }
    still_running(&mut m, &[("gamma", 3)]);
}

/// The cold boot's line saying every stack has its guard page (boot, recovery, and the
/// three IST stacks of each of the 8 CPUs the tables are sized for).
const GUARDS: &str = "[lazarus] INFO  memory: guard pages: an unmapped page below each of 26 stacks (boot, recovery, #DF, NMI, #MC)";

/// The report line of a stack overflow into the boot stack's guard page: the #PF of the
/// first push below the stack could not be delivered on that stack, hence a #DF.
const OVERFLOW: &str = r"^\[lazarus\] ERROR hypervisor failure: exception #DF double fault \(vector 8\) error_code=0x0 rip=0x[0-9a-f]+: stack overflow: the guard page below the boot stack was hit \(cr2=0x[0-9a-f]+\)$";

#[test]
fn a_stack_overflow_in_the_hypervisor_hits_the_guard_page_and_is_recovered() {
    // beta makes the hypervisor recurse without end through the `trigger` hypercall after
    // its second work line (recovery 1); then the console does it again (recovery 2).
    let dir = work_dir("recovery_stack_overflow");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (
            &guest,
            "vm=beta elf mem=8M mode=work burn=20 trigger=stack-overflow trigger-after=2",
        ),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.expect_line(&format!("^{}$", regex::escape(GUARDS)), BOOT);
    m.wait_prompt(BOOT);
    m.expect_line(
        r"^\[lazarus\] WARN  trigger: vm beta fires 'stack-overflow' \(count 1\)$",
        RECOVERY,
    );
    let halted = r"^\[lazarus\] ERROR halted";
    m.expect_line_not_after(OVERFLOW, halted, RECOVERY);
    for first in ["rax", "rsi", "r8", "r12", "rip", "cr0"] {
        m.expect_line(
            &format!(r"^\[lazarus\] ERROR   {first}=0x[0-9a-f]{{16}} "),
            RECOVERY,
        );
    }
    let first = first_recovery(&mut m, "exception#DF");
    assert_eq!(first.get("runnable"), 2, "{}", first.line);
    m.wait_for_text("[beta] trigger stack-overflow result=0\n", RUN);
    count_on(&mut m, 3);

    // The same from the console: the recovery boot put the guard back (it is kept).
    let second = fire(&mut m, "stack-overflow", "exception#DF", 2);
    assert_eq!(
        (second.get("attempts"), second.get("stopped")),
        (1, 0),
        "{}",
        second.line
    );
    count_on(&mut m, 3);

    let t = m.transcript();
    let overflow = Regex::new(OVERFLOW).unwrap();
    assert_eq!(
        t.lines().filter(|l| overflow.is_match(visible(l))).count(),
        2,
        "both overflows are named as such"
    );
    assert!(!t.contains("ERROR halted"), "no halt");
    assert!(
        !t.contains("no guard pages"),
        "the guards went in at every boot"
    );
    both_still_running(&mut m);
    recovery_command(&mut m, &[first, second]);
}

/// The report line of a recovery boot that found the arena's boot record damaged.
const BOOT_RESTORED: &str =
    "[lazarus] ERROR recovery: the arena's boot record was damaged; it was restored from its copy";

#[test]
fn a_stray_write_into_the_boot_record_is_repaired_from_its_copy() {
    // beta damages the arena's boot record through the `trigger` hypercall (recovery 1);
    // a hang then shows the watchdog armed again after that recovery, from the route the
    // record keeps (recovery 2); the console damages the record again (recovery 3); and
    // `shutdown` powers off with the method the record keeps.
    let dir = work_dir("recovery_boot_record");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (
            &guest,
            "vm=beta elf mem=8M mode=work burn=20 trigger=boot-record trigger-after=2",
        ),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.expect_line(
        r"^\[lazarus\] WARN  trigger: vm beta fires 'boot-record' \(count 1\)$",
        RECOVERY,
    );
    let halted = r"^\[lazarus\] ERROR halted";
    m.expect_line_not_after(
        r"^\[lazarus\] ERROR hypervisor failure: panic at \S+: trigger: arena boot record overwritten$",
        halted,
        RECOVERY,
    );
    m.expect_line_not_after(
        &format!("^{}$", regex::escape(BOOT_RESTORED)),
        &format!(r"{halted}|^\[lazarus\] INFO  recovery \d+: "),
        RECOVERY,
    );
    let first = first_recovery(&mut m, "panic");
    m.wait_for_text("[beta] trigger boot-record result=0\n", RUN);
    count_on(&mut m, 3);

    let hang = fire(&mut m, "hang", "hang", 2);
    count_on(&mut m, 2);
    let third = fire(&mut m, "boot-record", "panic", 3);
    count_on(&mut m, 3);

    let t = m.transcript();
    assert_eq!(
        t.lines().filter(|l| visible(l) == BOOT_RESTORED).count(),
        2,
        "one line per damaged record"
    );
    assert!(!t.contains("ERROR halted"), "no halt");
    assert!(
        !t.contains("watchdog: not armed"),
        "the watchdog was armed again at every recovery"
    );
    both_still_running(&mut m);
    recovery_command(&mut m, &[first, hang, third]);
    m.send_line("shutdown");
    m.expect_line(r"^\[lazarus\] INFO  shutdown: powering off$", RUN);
    m.wait_exit(RUN);
}
