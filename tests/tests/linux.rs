//! Stock Debian Linux in Lazarus VMs (Bochs): three kernels booting side by side from
//! one shared kernel and initramfs module, their self-checking workloads verified line by
//! line, a VM that powers itself off, a VM reset while the others go on, and bad module
//! lines refused while the good VMs run. Guest lines: docs/linux-guest.md.

use std::path::Path;
use std::time::Duration;

use lazarus_tests::linux::{checked, steps, wait_steps, CMDLINE, RUN};
use lazarus_tests::{image_with_modules, linux_guest, work_dir, Firmware, Machine, Platform};

const BOOT: Duration = Duration::from_secs(120);

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
