//! Failures inside the hypervisor, made deliberately with `trigger`: each is caught,
//! recovered from (a microreboot: the hypervisor restarts from its pristine copy), and
//! then reported with the documented `hypervisor failure` line, register dump and
//! `recovery` line. Recovery with VMs running is tested in `recovery.rs`.

use std::time::Duration;

use lazarus_tests::watchdog::{self, BOCHS_LINE as WATCHDOG_LINE};
use lazarus_tests::{image, work_dir, Firmware, Machine, Platform};

const BOOT: Duration = Duration::from_secs(90);
const SHORT: Duration = Duration::from_secs(30);

fn boot_with_triggers(name: &str) -> Machine {
    let dir = work_dir(name);
    let iso = image(&dir, "triggers=on", Firmware::BiosOnly);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m
}

/// The six register rows of the dump, returned as (name, value) pairs.
fn read_dump(m: &mut Machine) -> Vec<(String, u64)> {
    let mut regs = Vec::new();
    for first in ["rax", "rsi", "r8", "r12", "rip", "cr0"] {
        let line = m.expect_line(&format!(r"^\[lazarus\] ERROR   {first}="), SHORT);
        for pair in line.trim_start_matches("[lazarus] ERROR   ").split(' ') {
            let (name, value) = pair.split_once('=').expect("name=value");
            let value = u64::from_str_radix(value.trim_start_matches("0x"), 16).expect("hex value");
            regs.push((name.to_string(), value));
        }
    }
    regs
}

fn reg(regs: &[(String, u64)], name: &str) -> u64 {
    regs.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in dump"))
        .1
}

#[test]
fn exceptions_in_the_hypervisor_are_recovered_and_reported_with_registers() {
    // (trigger, first failure line pattern, a register the dump must show with its value)
    type Case = (&'static str, &'static str, Option<(&'static str, u64)>);
    let cases: [Case; 5] = [
        (
            "ud",
            r"exception #UD invalid opcode \(vector 6\) error_code=0x0 rip=0x[0-9a-f]+$",
            None,
        ),
        (
            "pf",
            r"exception #PF page fault \(vector 14\) error_code=0x0 rip=0x[0-9a-f]+$",
            Some(("cr2", 0x4000_0000_0000)),
        ),
        (
            "gp",
            r"exception #GP general protection \(vector 13\) error_code=0x0 rip=0x[0-9a-f]+$",
            None,
        ),
        (
            "de",
            r"exception #DE divide error \(vector 0\) error_code=0x0 rip=0x[0-9a-f]+$",
            None,
        ),
        (
            "bp",
            r"exception #BP breakpoint \(vector 3\) error_code=0x0 rip=0x[0-9a-f]+$",
            None,
        ),
    ];
    // One boot: every failure is recovered from, so the next trigger is typed into the
    // recovered hypervisor.
    let mut m = boot_with_triggers("trigger_exceptions");
    for (n, (trigger, pattern, check)) in cases.into_iter().enumerate() {
        m.send_line(&format!("trigger {trigger}"));
        m.expect_line(
            &format!(r"^\[lazarus\] WARN  trigger: firing '{trigger}'$"),
            SHORT,
        );
        let line = m.expect_line(
            &format!(r"^\[lazarus\] ERROR hypervisor failure: {pattern}"),
            SHORT,
        );
        let rip = u64::from_str_radix(line.rsplit("rip=0x").next().unwrap(), 16).unwrap();
        let regs = read_dump(&mut m);
        assert_eq!(reg(&regs, "rip"), rip, "dump rip matches the failure line");
        assert!(
            (0x200000..0x1000000).contains(&rip),
            "rip {rip:#x} lies in the image"
        );
        assert_eq!(
            reg(&regs, "cs"),
            0x8,
            "failed in the hypervisor's code segment"
        );
        if let Some((name, value)) = check {
            assert_eq!(reg(&regs, name), value, "{name} for trigger {trigger}");
        }
        let mnemonic = pattern.split(' ').nth(1).unwrap();
        m.expect_line(
            &format!(
                r"^\[lazarus\] INFO  recovery {}: cause=exception{mnemonic} attempts=1 latency=\d+ ",
                n + 1
            ),
            SHORT,
        );
    }
    let listed = m.command("recovery");
    assert_eq!(
        listed.lines().count(),
        6,
        "five records and a total:\n{listed}"
    );
    assert!(listed.ends_with("recovery: 5 recoveries since cold boot (generation 6)\n"));
}

#[test]
fn panics_are_reported_with_their_location() {
    let mut m = boot_with_triggers("trigger_panic");
    m.send_line("trigger panic");
    m.expect_line(
        r"^\[lazarus\] ERROR hypervisor failure: panic at hypervisor/src/triggers\.rs:\d+:\d+: trigger: deliberate panic$",
        SHORT,
    );
    m.expect_line(
        r"^\[lazarus\] INFO  recovery 1: cause=panic attempts=1 latency=\d+ .* stopped=0$",
        SHORT,
    );
    assert!(
        m.command("cpu").starts_with("cpu: GenuineIntel"),
        "the recovered hypervisor answers commands"
    );
}

#[test]
fn triggers_are_refused_unless_enabled() {
    let dir = work_dir("triggers_disabled");
    let iso = image(&dir, "", Firmware::BiosOnly);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    assert_eq!(
        m.command("trigger ud"),
        "error: trigger ud: triggers are disabled (boot with triggers=on)\n"
    );
    assert!(
        m.command("cpu").starts_with("cpu: GenuineIntel"),
        "still running after the refusal"
    );
}

#[test]
fn hangs_are_caught_by_the_watchdog() {
    for trigger in ["hang", "deadlock"] {
        let mut m = boot_with_triggers(&format!("trigger_{trigger}"));
        assert!(
            m.lines().iter().any(|l| l == WATCHDOG_LINE),
            "no watchdog line:\n{}",
            m.lines().join("\n")
        );
        // Alive well past the hang limit before the trigger: no false alarm at the prompt.
        std::thread::sleep(Duration::from_secs(3));
        assert!(m.command("cpu").starts_with("cpu: GenuineIntel"));
        m.send_line(&format!("trigger {trigger}"));
        m.expect_line(
            &format!(r"^\[lazarus\] WARN  trigger: firing '{trigger}'$"),
            SHORT,
        );
        let line = m.expect_line(watchdog::NO_PROGRESS, SHORT);
        let report = watchdog::hang_report(&line).unwrap();
        assert_eq!((report.runnable, report.ms), (None, 200), "{line}");
        let rip = report.rip;
        let regs = read_dump(&mut m);
        assert_eq!(reg(&regs, "rip"), rip, "dump rip matches the failure line");
        assert!(
            (0x200000..0x1000000).contains(&rip),
            "rip {rip:#x} lies in the image"
        );
        assert_eq!(reg(&regs, "rflags") & 0x200, 0, "hung with interrupts off");
        // What follows (halt now, recovery later) is not the watchdog's business.
    }
}
