//! Creating and resetting a VM are transactions that recovery finishes (issue 11), in
//! Bochs with the test guest: a failure in the middle of `vm create` is undone (the
//! arena pages it took are free again, the VM does not exist, the same `vm create` then
//! works), and one in the middle of `vm reset` is completed (the VM boots again from its
//! start), while the other VMs count on through both.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lazarus_tests::{
    image_with_modules, pattern_checksum, test_guest, work_dir, Firmware, Machine, Platform, Regex,
};

const BOOT: Duration = Duration::from_secs(120);
const RECOVERY: Duration = Duration::from_secs(120);
const RUN: Duration = Duration::from_secs(300);

/// What the test guests run (module 0 serves `vm create` too).
const WORK: &str = "elf mem=8M mode=work burn=20";

/// Boots `alpha` and `beta` (slots 0 and 1, ids 1 and 2) with `triggers=on`.
fn boot(name: &str) -> Machine {
    let dir = work_dir(name);
    let guest = test_guest();
    let alpha = format!("vm=alpha {WORK}");
    let beta = format!("vm=beta {WORK}");
    let modules: [(&Path, &str); 2] = [(&guest, &alpha), (&guest, &beta)];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m
}

/// Every `[VM] seq=N sum=0x... ok` line so far, checked: the checksum is iteration N's,
/// and each VM counts 1, 2, 3... without a gap, starting again at 1 after each of its
/// `start` lines (a reset). Returns each VM's last N and how many times it started.
fn checked(m: &Machine) -> (HashMap<String, u64>, HashMap<String, u64>) {
    let work = Regex::new(r"^\[([a-z0-9_-]+)\] seq=(\d+) sum=0x([0-9a-f]{16}) (.*)$").unwrap();
    let start = Regex::new(r"^\[([a-z0-9_-]+)\] start name=([a-z0-9_-]+) ").unwrap();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut starts: HashMap<String, u64> = HashMap::new();
    for line in m.lines() {
        assert!(!line.contains("CORRUPT"), "guest reported: {line}");
        if let Some(c) = start.captures(&line) {
            assert_eq!(&c[1], &c[2], "{line}");
            *starts.entry(c[1].to_string()).or_default() += 1;
            last.remove(&c[1]);
            continue;
        }
        let Some(c) = work.captures(&line) else {
            continue;
        };
        let (vm, n) = (c[1].to_string(), c[2].parse::<u64>().unwrap());
        assert_eq!(&c[4], "ok", "{line}");
        let sum = u64::from_str_radix(&c[3], 16).unwrap();
        assert_eq!(sum, pattern_checksum(n), "wrong checksum: {line}");
        let expected = last.get(&vm).map_or(1, |p| p + 1);
        assert_eq!(n, expected, "sequence gap for {vm}: {line}");
        last.insert(vm, n);
    }
    (last, starts)
}

/// Last work line and start count of each VM, as [`checked`] returns them.
type Counts = HashMap<String, u64>;

/// Receives console output until `done` holds of the checked work lines.
fn wait_until(m: &mut Machine, what: &str, done: impl Fn(&Counts, &Counts) -> bool) {
    let deadline = Instant::now() + RUN;
    loop {
        let (last, starts) = checked(m);
        if done(&last, &starts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RUN:?}; last {last:?}, starts {starts:?}"
        );
        assert!(
            m.poll(Duration::from_millis(500)),
            "{what}: the console closed"
        );
    }
}

/// Each of `vms` prints `n` more checked work lines (in its current boot).
fn count_on(m: &mut Machine, vms: &[&str], n: u64) {
    let (before, _) = checked(m);
    let seq = |counts: &Counts, vm: &str| counts.get(vm).copied().unwrap_or(0);
    wait_until(m, &format!("{vms:?} count on by {n}"), |last, _| {
        vms.iter().all(|vm| seq(last, vm) >= seq(&before, vm) + n)
    });
}

/// `vm` has started `boots` times and printed work line `seq` in its last boot.
fn wait_boot(m: &mut Machine, vm: &str, boots: u64, seq: u64) {
    wait_until(
        m,
        &format!("{vm} boot {boots} seq={seq}"),
        |last, starts| starts.get(vm) == Some(&boots) && last.get(vm).is_some_and(|&n| n >= seq),
    );
}

/// The free arena pages, from `mem`'s `arena-pages N free of M` line.
fn arena_free(m: &mut Machine) -> u64 {
    let mem = m.command("mem");
    let re = Regex::new(r"^arena-pages (\d+) free of (\d+)$").unwrap();
    mem.lines()
        .find_map(|l| re.captures(l))
        .unwrap_or_else(|| panic!("no arena-pages line in: {mem}"))[1]
        .parse()
        .unwrap()
}

/// Waits for the failure report of a `trigger` panic (`what`: the end of its message),
/// then for `line` among the recovery's lines, then for the `recovery 1` line, which must
/// have stopped nothing.
fn recovered_with(m: &mut Machine, what: &str, line: &str) {
    let halted = r"^\[lazarus\] ERROR halted";
    m.expect_line_not_after(
        &format!(r"^\[lazarus\] ERROR hypervisor failure: panic at \S+: trigger: {what}$"),
        halted,
        RECOVERY,
    );
    m.expect_line_not_after(
        &format!("^{}$", regex::escape(line)),
        &format!(r"{halted}|^\[lazarus\] INFO  recovery \d+: "),
        RECOVERY,
    );
    let recovery = m.expect_line_not_after(
        r"^\[lazarus\] INFO  recovery 1: cause=panic attempts=1 ",
        &format!(r"{halted}|^\[lazarus\] ERROR hypervisor failure"),
        RECOVERY,
    );
    assert!(recovery.ends_with(" stopped=0"), "{recovery}");
}

#[test]
fn a_creation_interrupted_by_a_failure_is_undone_and_can_be_made_again() {
    let mut m = boot("tx_create");
    count_on(&mut m, &["alpha", "beta"], 2);
    let free = arena_free(&mut m);
    assert_eq!(
        m.command("trigger mid-create"),
        "trigger: mid-create\ntrigger: mid-create armed: fires in the next VM creation\n"
    );
    let create = format!("vm create module=0 vm=delta {WORK}");
    m.send_line(&create);
    recovered_with(
        &mut m,
        r"deliberate panic in the middle of creating vm delta \(\d+ arena pages taken\)",
        "[lazarus] ERROR vm delta: not created: interrupted by a hypervisor failure; undone",
    );
    count_on(&mut m, &["alpha", "beta"], 3);
    assert_eq!(
        arena_free(&mut m),
        free,
        "every page the creation took is free"
    );
    let list = m.command("vm list");
    assert!(!list.contains("delta"), "{list}");
    assert!(list.contains("alpha id=1 state=running"), "{list}");
    assert!(list.contains("beta id=2 state=running"), "{list}");

    // The same command now makes the VM, with the id the undone one would have had.
    let reply = m.command(&create);
    assert!(reply.ends_with("vm delta: created\n"), "{reply}");
    assert!(
        reply.contains("[lazarus] INFO  vm delta: created: id=3 mem=8 MiB"),
        "{reply}"
    );
    count_on(&mut m, &["delta", "alpha", "beta"], 3);
    let stats = m.command("vm stats delta");
    let pages: u64 = Regex::new(r" arena_pages=(\d+)")
        .unwrap()
        .captures(&stats)
        .unwrap_or_else(|| panic!("{stats}"))[1]
        .parse()
        .unwrap();
    assert_eq!(arena_free(&mut m), free - pages, "{stats}");
    let (_, starts) = checked(&m);
    for vm in ["alpha", "beta", "delta"] {
        assert_eq!(starts.get(vm), Some(&1), "{vm} started once");
    }
}

#[test]
fn a_reset_interrupted_by_a_failure_is_completed_by_recovery() {
    let mut m = boot("tx_reset");
    count_on(&mut m, &["alpha", "beta"], 3);
    assert_eq!(
        m.command("trigger mid-reset"),
        "trigger: mid-reset\ntrigger: mid-reset armed: fires in the next VM reset\n"
    );
    m.send_line("vm reset beta");
    recovered_with(
        &mut m,
        r"deliberate panic in the middle of resetting vm beta \(half its RAM cleared\)",
        "[lazarus] INFO  vm beta: its interrupted reset was completed",
    );
    // beta boots again from its start and counts from 1; alpha just goes on.
    wait_boot(&mut m, "beta", 2, 3);
    count_on(&mut m, &["alpha", "beta"], 2);
    let (_, starts) = checked(&m);
    assert_eq!(starts.get("beta"), Some(&2), "beta started again");
    assert_eq!(starts.get("alpha"), Some(&1), "alpha did not");
    let lines = m.lines();
    let restart = lines
        .iter()
        .rposition(|l| l.starts_with("[beta] start name=beta id=2 "))
        .unwrap();
    assert!(
        lines[restart..]
            .iter()
            .any(|l| l.starts_with("[beta] seq=1 sum=")),
        "beta counts from seq=1 after its reset"
    );
    let list = m.command("vm list");
    assert!(list.contains("alpha id=1 state=running"), "{list}");
    assert!(list.contains("beta id=2 state=running"), "{list}");
    // An ordinary reset still works afterwards (the intent was cleared).
    assert_eq!(
        m.command("vm reset beta"),
        "[lazarus] INFO  vm beta: reset by the operator\nvm beta: reset\n"
    );
    wait_boot(&mut m, "beta", 3, 2);
    count_on(&mut m, &["alpha"], 1);
}
