//! Stock Debian Linux in Lazarus VMs (Bochs): three kernels booting side by side from
//! one shared kernel and initramfs module, their self-checking workloads verified line by
//! line, a VM that powers itself off, a VM reset while the others go on, and bad module
//! lines refused while the good VMs run. Guest lines: docs/linux-guest.md.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use lazarus_tests::{
    image_with_modules, linux_cpu_sum, linux_file_sum, linux_guest, work_dir, Firmware, Machine,
    Platform, Regex,
};

const BOOT: Duration = Duration::from_secs(120);
const RUN: Duration = Duration::from_secs(300);
const CMDLINE: &str = "console=ttyS0,115200 panic=-1 mitigations=off quiet cryptomgr.notests";

/// Per VM and workload, the last sequence number seen, after checking every line so far:
/// the checksum is the one step N must produce, the sequence has no gap (a VM that
/// started again begins again at 0), uptime never goes backwards within one boot.
fn checked(m: &Machine) -> HashMap<(String, String), u64> {
    let re = Regex::new(r"^\[([a-z0-9_-]+)\] lazarus-guest: (cpu|file) seq=(\d+) sum=([0-9a-f]{64})( ok)? uptime=([\d.]+)$").unwrap();
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut uptime: HashMap<String, f64> = HashMap::new();
    for line in m.lines() {
        if let Some(vm) = line
            .strip_suffix("] lazarus-guest: init started")
            .or_else(|| {
                line.split_once("] lazarus-guest: init started")
                    .map(|(v, _)| v)
            })
        {
            // A (re)boot: sequences and uptime start again.
            let vm = vm.trim_start_matches('[').to_string();
            last.retain(|(v, _), _| *v != vm);
            uptime.remove(&vm);
            continue;
        }
        assert!(
            !line.contains("CORRUPT") && !line.contains("lazarus-guest: error"),
            "guest reported: {line}"
        );
        let Some(c) = re.captures(&line) else {
            continue;
        };
        let (vm, work, n) = (
            c[1].to_string(),
            c[2].to_string(),
            c[3].parse::<u64>().unwrap(),
        );
        let expected = if work == "cpu" {
            linux_cpu_sum(n)
        } else {
            linux_file_sum(n)
        };
        assert_eq!(&c[4], expected, "wrong checksum: {line}");
        let key = (vm.clone(), work);
        let next = last.get(&key).map_or(0, |p| p + 1);
        assert_eq!(n, next, "sequence gap: {line}");
        last.insert(key, n);
        let t: f64 = c[6].parse().unwrap();
        let prev = uptime.insert(vm, t).unwrap_or(0.0);
        assert!(t >= prev, "uptime went backwards: {line}");
    }
    last
}

fn steps(m: &Machine, vm: &str) -> u64 {
    checked(m)
        .get(&(vm.to_string(), "file".to_string()))
        .map_or(0, |n| n + 1)
}

/// Waits until VM `vm` has completed `n` file steps (and so `n` cpu steps).
fn wait_steps(m: &mut Machine, vm: &str, n: u64) {
    m.wait_for_text(&format!("[{vm}] lazarus-guest: file seq={} ", n - 1), RUN);
}

fn boot(name: &str, modules: &[(&Path, &str)]) -> Machine {
    let dir = work_dir(name);
    let iso = image_with_modules(&dir, "", Firmware::BiosOnly, modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 512);
    m.wait_prompt(BOOT);
    m
}

#[test]
fn three_linux_vms_boot_and_work_side_by_side() {
    let (kernel, initrd) = linux_guest();
    let shared = format!("vm=web,db kernel mem=80M \"cmdline={CMDLINE} lzpause=1\"");
    let short = format!("vm=short kernel mem=80M \"cmdline={CMDLINE} lzsteps=2\"");
    let mut m = boot(
        "linux_three",
        &[
            (&kernel, &shared),
            (&initrd, "vm=web,db,short initrd"),
            (&kernel, &short),
            (&initrd, "vm=notlinux kernel mem=80M"),
            (&initrd, "vm=ghost initrd"),
        ],
    );
    let t = m.lines().join("\n");
    for vm in ["web", "db", "short"] {
        assert!(
            t.contains(&format!("[lazarus] INFO  vm {vm}: created: id=")),
            "{vm} not created:\n{t}"
        );
    }
    assert!(
        t.contains("[lazarus] ERROR vm notlinux: not created: kernel: not a bzImage"),
        "{t}"
    );
    assert!(
        t.contains("[lazarus] ERROR vm ghost: not created: an initrd but no kernel module"),
        "{t}"
    );

    // `short` runs its two steps and powers off (Linux halts: no ACPI) alone.
    m.expect_line(r"^\[short\] lazarus-guest: done$", RUN);
    m.expect_line(r"^\[lazarus\] INFO  vm short: halted$", RUN);
    let before = (steps(&m, "web"), steps(&m, "db"));
    for vm in ["web", "db"] {
        wait_steps(&mut m, vm, before.0.max(before.1) + 3);
    }
    let last = checked(&m);
    assert_eq!(
        last[&("short".to_string(), "file".to_string())],
        1,
        "short ran exactly 2 steps"
    );
    let list = m.command("vm list");
    assert!(list.contains("short id=3 state=halted"), "{list}");
    assert!(
        list.contains("web id=1 state=") && list.contains("db id=2 state="),
        "{list}"
    );
    assert!(!list.contains("stopped"), "{list}");
    // The counters a closing note reports: exits by reason for one VM.
    let stats = m.command("vm stats web");
    assert!(stats.lines().any(|l| l.starts_with("exit io ")), "{stats}");
    assert!(
        stats.lines().any(|l| l.starts_with("exit hlt ")),
        "a Linux VM idles with HLT: {stats}"
    );
}

#[test]
fn a_linux_vm_is_reset_while_the_other_goes_on() {
    let (kernel, initrd) = linux_guest();
    let kernel_line = format!("vm=web,db kernel mem=80M \"cmdline={CMDLINE} lzpause=1\"");
    let mut m = boot(
        "linux_reset",
        &[(&kernel, &kernel_line), (&initrd, "vm=web,db initrd")],
    );
    wait_steps(&mut m, "web", 2);
    wait_steps(&mut m, "db", 2);
    assert_eq!(
        m.command("vm reset db"),
        "[lazarus] INFO  vm db: reset by the operator\nvm db: reset\n"
    );
    let web_then = steps(&m, "web");
    // db boots again, and web never missed a step meanwhile.
    m.expect_line(r"^\[db\] lazarus-guest: init started uptime=", RUN);
    wait_steps(&mut m, "db", 2);
    let web_now = steps(&m, "web");
    assert!(
        web_now > web_then,
        "web made progress while db rebooted ({web_then} -> {web_now})"
    );
    checked(&m);
}
