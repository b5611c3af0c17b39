//! Virtual machines on emulated VT-x (Bochs): several test guests side by side with
//! checked workloads, bad guests stopped without harming the others, fair CPU sharing,
//! and the `vm` console commands. Test guests: guests/testguest (its module doc lists the
//! lines it prints).

use std::time::Duration;

use lazarus_tests::testguest::checked_sequences;
use lazarus_tests::{image_with_modules, test_guest, work_dir, Firmware, Machine, Platform, Regex};

const BOOT: Duration = Duration::from_secs(120);
const RUN: Duration = Duration::from_secs(120);

fn boot(name: &str, vms: &[&str]) -> Machine {
    let dir = work_dir(name);
    let guest = test_guest();
    let modules: Vec<(&std::path::Path, &str)> =
        vms.iter().map(|v| (guest.as_path(), *v)).collect();
    let iso = image_with_modules(&dir, "", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m
}

/// Waits until VM `vm` has printed work line `seq`.
fn wait_seq(m: &mut Machine, vm: &str, seq: u64) {
    m.wait_for_text(&format!("[{vm}] seq={seq} sum="), RUN);
}

#[test]
fn three_vms_run_side_by_side_with_correct_checksums() {
    let mut m = boot(
        "vms_three",
        &[
            "vm=alpha elf mem=16M mode=work",
            "vm=beta elf mem=8M mode=work",
            "vm=gamma elf mem=8M mode=work burn=2",
            "vm=alpha elf mem=4M mode=work",
            "vm=Bad elf",
            "vm=huge elf mem=1G",
        ],
    );
    let t = m.lines().join("\n");
    for vm in ["alpha", "beta", "gamma"] {
        assert!(
            t.contains(&format!("[lazarus] INFO  vm {vm}: created: id=")),
            "{vm} not created"
        );
    }
    assert!(t.contains(
        "[lazarus] ERROR vm alpha: not created: module 3 describes it again (module 0 already does)"
    ));
    assert!(t.contains("[lazarus] ERROR vm: module 4 (\"vm=Bad elf\"): bad VM name 'Bad'"));
    assert!(t.contains(
        "[lazarus] ERROR vm huge: not created: not enough free memory: needs 1 GiB in one piece"
    ));

    for vm in ["alpha", "beta", "gamma"] {
        wait_seq(&mut m, vm, 5);
    }
    // What each guest saw of its virtual machine.
    let lines = m.lines();
    for (vm, id) in [("alpha", 1), ("beta", 2), ("gamma", 3)] {
        for expected in [
            format!("[{vm}] cpuid vendor=GenuineIntel"),
            format!("[{vm}] io port=0x80 in=0xff"),
            format!("[{vm}] msr 0x10 ok"),
            format!("[{vm}] msr 0xdeadbeef gp"),
            format!("[{vm}] hypercall unknown=-1 fault=-2 invalid=-3"),
            format!("[{vm}] identity id={id} name={vm}"),
        ] {
            assert!(lines.contains(&expected), "missing: {expected}");
        }
    }

    let list = m.command("vm list");
    let re = Regex::new(r"^(\w+) id=(\d+) state=(\w+) exits=(\d+) share=(\d+)% mem=(.+)$").unwrap();
    let rows: Vec<_> = list.lines().filter_map(|l| re.captures(l)).collect();
    assert_eq!(rows.len(), 3, "{list}");
    for row in &rows {
        assert_eq!(&row[3], "running", "{list}");
        assert!(row[4].parse::<u64>().unwrap() > 10, "{list}");
    }
    let stats = m.command("vm stats alpha");
    let first = stats.lines().next().unwrap_or_default();
    let counter = |name: &str| -> u64 {
        let re = Regex::new(&format!(r"\b{name}=(\d+)")).unwrap();
        re.captures(first)
            .unwrap_or_else(|| panic!("no {name} in {stats}"))[1]
            .parse()
            .unwrap()
    };
    assert!(
        counter("unclaimed_io") >= 2,
        "one OUT and one IN to port 0x80: {stats}"
    );
    assert!(counter("unknown_msr") >= 1, "{stats}");
    // VMCS, XSAVE area, and an EPT of three tables (PML4, PDPT, one PD of 2 MiB pages).
    assert_eq!(counter("arena_pages"), 5, "{stats}");
    assert!(
        counter("hypercalls") >= 10 && counter("hypercall_errors") >= 3,
        "{stats}"
    );
    for reason in ["cpuid", "io", "rdmsr", "vmcall"] {
        assert!(
            stats
                .lines()
                .any(|l| l.starts_with(&format!("exit {reason} "))),
            "no {reason} exits: {stats}"
        );
    }

    // Stopping one VM leaves the other two running and correct.
    assert_eq!(
        m.command("vm stop beta"),
        "[lazarus] INFO  vm beta: stopped: stopped by the operator\nvm beta: stopped\n"
    );
    let beta_last = checked_sequences(&m)["beta"];
    let alpha_now = checked_sequences(&m)["alpha"];
    let gamma_now = checked_sequences(&m)["gamma"];
    wait_seq(&mut m, "alpha", alpha_now + 5);
    wait_seq(&mut m, "gamma", gamma_now + 3);
    let last = checked_sequences(&m);
    assert!(
        last["beta"] <= beta_last + 1,
        "beta kept running after vm stop"
    );
    assert!(m.command("vm list").contains("beta id=2 state=stopped"));
    assert_eq!(
        m.command("vm stop nobody"),
        "error: vm: no VM named 'nobody'\n"
    );
}

#[test]
fn bad_guests_are_stopped_and_the_good_one_is_unharmed() {
    let mut m = boot(
        "vms_bad",
        &[
            // 16 MiB at host 0x800000 (the first allocation): the others aim at it.
            "vm=good elf mem=16M mode=work",
            "vm=arena elf mem=4M mode=wild-write addr=0xf600000",
            "vm=neighbour elf mem=4M mode=wild-write addr=0x1000000",
            "vm=nowhere elf mem=4M mode=wild-read addr=0x100000000",
            "vm=tf elf mem=4M mode=triple-fault",
            "vm=tfr elf mem=4M mode=triple-fault on_triple_fault=reset",
            "vm=halter elf mem=4M mode=hlt",
            "vm=user elf mem=4M mode=user-hypercall",
            // The hypervisor image's host address is, to a VM, just its own RAM.
            "vm=hvimage elf mem=4M mode=wild-write addr=0x200000",
        ],
    );
    let t = m.lines().join("\n");
    assert!(
        t.contains("[lazarus] INFO  vm good: created: id=1 mem=16 MiB ram=[0x800000, 0x1800000)"),
        "{t}"
    );
    assert!(
        t.contains("[lazarus] INFO  arena: 8 MiB at 0xf600000"),
        "{t}"
    );
    let ept = |vm: &str, access: &str, addr: &str| {
        format!(
            r"^\[lazarus\] ERROR vm {vm}: stopped: EPT violation: {access} at guest-physical {addr} \(rip 0x[0-9a-f]+\)$"
        )
    };
    // The stop lines may come in any order; collect them all first.
    let wanted = [
        ept("arena", "write", "0xf600000"),
        ept("neighbour", "write", "0x1000000"),
        ept("nowhere", "read", "0x100000000"),
        r"^\[lazarus\] ERROR vm tf: stopped: triple fault \(rip 0x[0-9a-f]+\)$".to_string(),
        r"^\[lazarus\] INFO  vm halter: halted$".to_string(),
        r"^\[user\] user-hypercall result=-4$".to_string(),
        r"^\[hvimage\] wild-write survived$".to_string(),
        r"^\[lazarus\] WARN  vm tfr: triple fault; resetting \(on_triple_fault=reset\)$"
            .to_string(),
    ];
    wait_seq(&mut m, "good", 10);
    let deadline = std::time::Instant::now() + RUN;
    loop {
        let lines = m.lines();
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|p| !lines.iter().any(|l| Regex::new(p).unwrap().is_match(l)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never seen: {missing:?}"
        );
        let next = checked_sequences(&m).get("good").copied().unwrap_or(0) + 1;
        wait_seq(&mut m, "good", next);
    }
    let lines = m.lines();
    for vm in ["arena", "neighbour", "nowhere"] {
        let prefix = format!("[{vm}] wild-");
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.ends_with(" survived")),
            "{vm} reached memory outside its RAM"
        );
    }
    assert!(!lines.iter().any(|l| l.contains("user-hypercall leaked")));
    // The reset VM really started again.
    assert!(
        lines
            .iter()
            .filter(|l| l.starts_with("[tfr] start name=tfr"))
            .count()
            >= 2
    );

    // The good VM kept its memory intact through all of it, and keeps going.
    let now = checked_sequences(&m)["good"];
    wait_seq(&mut m, "good", now + 5);
    checked_sequences(&m);
    let list = m.command("vm list");
    assert!(list.contains("good id=1 state=running"), "{list}");
    assert!(
        list.contains("arena id=2 state=stopped") && list.contains("reason=\"EPT violation: write"),
        "{list}"
    );
    assert!(list.contains("halter id=7 state=halted"), "{list}");
}

#[test]
fn busy_vms_each_get_a_fair_share_of_the_cpu() {
    let mut m = boot(
        "vms_fair",
        &[
            "vm=spin1 elf mem=4M mode=spin",
            "vm=spin2 elf mem=4M mode=spin",
            "vm=worker elf mem=8M mode=work burn=4",
        ],
    );
    m.expect_line(r"^\[spin1\] spinning$", RUN);
    m.expect_line(r"^\[spin2\] spinning$", RUN);
    // The worker makes progress although two VMs never exit on their own.
    wait_seq(&mut m, "worker", 20);
    checked_sequences(&m);
    let list = m.command("vm list");
    let re = Regex::new(r"^(\w+) id=\d+ state=running exits=\d+ share=(\d+)% ").unwrap();
    let shares: Vec<(String, u64)> = list
        .lines()
        .filter_map(|l| re.captures(l))
        .map(|c| (c[1].to_string(), c[2].parse().unwrap()))
        .collect();
    assert_eq!(shares.len(), 3, "{list}");
    for (vm, share) in &shares {
        assert!(*share >= 20, "{vm} got only {share}% of the CPU:\n{list}");
    }
    let stats = m.command("vm stats spin1");
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("exit preemption_timer ")),
        "{stats}"
    );
}

#[test]
fn vms_are_reset_and_created_from_the_console() {
    let mut m = boot("vms_console", &["vm=alpha elf mem=8M mode=work burn=20"]);
    wait_seq(&mut m, "alpha", 3);
    assert_eq!(
        m.command("vm reset alpha"),
        "[lazarus] INFO  vm alpha: reset by the operator\nvm alpha: reset\n"
    );
    // It starts again from the beginning (the reply was consumed, so these are new lines).
    m.expect_line(
        r"^\[alpha\] start name=alpha id=1 mem=8388608 mode=work$",
        RUN,
    );
    m.expect_line(r"^\[alpha\] seq=1 sum=0x10df206665fccc2f ok$", RUN);
    let starts = m
        .lines()
        .iter()
        .filter(|l| l.starts_with("[alpha] start name=alpha"))
        .count();
    assert_eq!(starts, 2);

    let reply = m.command("vm create module=0 vm=delta elf mem=8M mode=work burn=20");
    assert!(reply.ends_with("vm delta: created\n"), "{reply}");
    assert!(
        reply.contains("[lazarus] INFO  vm delta: created: id=2 mem=8 MiB"),
        "{reply}"
    );
    wait_seq(&mut m, "delta", 3);
    assert_eq!(
        m.command("vm create module=7 vm=echo elf"),
        "error: vm create: no boot module '7' (there are 1)\n"
    );
    assert_eq!(
        m.command("vm create module=0 vm=alpha elf"),
        "error: vm alpha: not created: a VM with this name exists\n"
    );
    assert_eq!(
        m.command("vm create vm=echo elf"),
        "error: vm create: missing module=N (the boot module holding the image)\n"
    );
    assert!(m.command("vm list").contains("delta id=2 state=running"));
}

#[test]
fn the_console_types_into_a_vm_until_ctrl_bracket() {
    let mut m = boot(
        "vms_console_attach",
        &[
            "vm=echo elf mem=4M mode=echo",
            "vm=alpha elf mem=8M mode=work burn=50",
        ],
    );
    m.wait_for_text("[echo] echo ready", RUN);
    m.send_line("vm console echo");
    m.expect_line(
        r"^vm echo: console attached; Ctrl-\] returns to the hypervisor$",
        RUN,
    );
    m.send_line("hello lazarus");
    m.expect_line(r"^\[echo\] echo got=hello lazarus$", RUN);
    // A line longer than the UART's 16-byte FIFO arrives whole.
    m.send_line("0123456789abcdefghijklmnopqrstuvwxyz");
    m.expect_line(
        r"^\[echo\] echo got=0123456789abcdefghijklmnopqrstuvwxyz$",
        RUN,
    );
    m.send_bytes(&[0x1d]);
    m.expect_line(r"^\[lazarus\] INFO  console: back to the hypervisor$", RUN);
    m.wait_prompt(RUN);
    assert!(m.command("vm list").contains("echo id=1 state=running"));
    assert!(
        !m.lines()
            .iter()
            .any(|l| l.contains("unknown command 'hello'")),
        "typed text reached the hypervisor console"
    );
    assert_eq!(
        m.command("vm console nobody"),
        "error: vm: no VM named 'nobody'\n"
    );
}

/// The watchdog's NMIs keep coming while VMs run (as VM exits while a guest runs, as host
/// NMIs otherwise) and never mistake the busy host for a hung one: 20 s and more of three
/// VMs, one of which never exits on its own.
#[test]
fn the_watchdog_ticks_through_running_vms_without_a_false_hang() {
    let mut m = boot(
        "vms_watchdog",
        &[
            "vm=alpha elf mem=16M mode=work",
            "vm=beta elf mem=8M mode=work burn=2",
            "vm=gamma elf mem=8M mode=spin",
        ],
    );
    let watchdog = lazarus_tests::watchdog::BOCHS_LINE;
    assert!(m.lines().iter().any(|l| l == watchdog), "no watchdog line");
    wait_seq(&mut m, "alpha", 2);
    let alpha_before = checked_sequences(&m)["alpha"];
    // 25 s of emulated time (guest time, `time_ms`), however loaded the host is: the
    // watchdog's ticks are 50 ms of emulated time apart.
    let guest_ms = |m: &mut Machine| -> u64 {
        let stats = m.command("vm stats gamma");
        let re = Regex::new(r"\btime_ms=(\d+)").unwrap();
        re.captures(&stats)
            .and_then(|c| c[1].parse().ok())
            .unwrap_or_else(|| panic!("no time_ms in {stats}"))
    };
    let start = guest_ms(&mut m);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while guest_ms(&mut m) < start + 25_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "emulated time stalled"
        );
        assert!(m.command("vm list").contains("gamma id=3 state=running"));
        m.poll(Duration::from_secs(2));
    }
    let alpha_after = checked_sequences(&m)["alpha"];
    assert!(
        alpha_after >= alpha_before + 5,
        "alpha kept working: {alpha_before} -> {alpha_after}"
    );
    let t = m.transcript();
    assert!(!t.contains("hypervisor failure"), "false alarm:\n{t}");
    // Ticks that landed in a guest came out as NMI exits.
    let nmi_exits = |vm: &str, m: &mut Machine| -> u64 {
        let stats = m.command(&format!("vm stats {vm}"));
        stats
            .lines()
            .find_map(|l| l.strip_prefix("exit exception_nmi "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    let (alpha, gamma) = (nmi_exits("alpha", &mut m), nmi_exits("gamma", &mut m));
    assert!(
        gamma > 100 && alpha > 0,
        "NMI exits: gamma {gamma}, alpha {alpha}"
    );
}
