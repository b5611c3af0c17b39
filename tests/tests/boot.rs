//! Booting Lazarus on every platform the project's machines have: Bochs with emulated
//! VT-x, QEMU with BIOS GRUB and with UEFI GRUB (no VT-x), and the errors a user gets
//! for a bad command line or too little memory.

use std::time::Duration;

use lazarus_tests::{image, parse_size, work_dir, Firmware, Machine, Platform};

const BOOT: Duration = Duration::from_secs(90);
const SHORT: Duration = Duration::from_secs(30);

/// Matches the `vt-x not available` line for a CPU without VMX (QEMU TCG emulates AMD).
const NO_VTX: &str = r"^\[lazarus\] ERROR vt-x not available: the CPU \(\w+\) does not implement Intel VMX \(CPUID\.1:ECX bit 5 is clear\)";

#[test]
fn bochs_reports_vmx_and_answers_the_console() {
    let dir = work_dir("bochs_console");
    let iso = image(&dir, "", Firmware::BiosOnly);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 512);
    m.expect_line(r"^\[lazarus\] INFO  Lazarus \d+\.\d+\.\d+ cold boot$", BOOT);
    let vmx = m.expect_line(r"^\[lazarus\] INFO  vmx: ", BOOT);
    for feature in [
        "vt-x=yes",
        "ept=yes",
        "vpid=yes",
        "unrestricted_guest=yes",
        "preemption_timer=yes",
    ] {
        assert!(vmx.contains(feature), "{feature} missing from: {vmx}");
    }
    m.expect_line(
        r"^\[lazarus\] INFO  ready: type 'help' for commands$",
        SHORT,
    );
    m.wait_prompt(SHORT);

    let cpu = m.command("cpu");
    assert!(
        cpu.contains("cpu: GenuineIntel family 6 model 85"),
        "cpu reply: {cpu}"
    );
    assert!(
        cpu.lines()
            .any(|l| l.starts_with("vmx: vt-x=yes ") && l.contains(" ept=yes")),
        "cpu reply: {cpu}"
    );

    let mem = m.command("mem");
    let size_of = |class: &str| -> u64 {
        let line = mem
            .lines()
            .find(|l| l.starts_with(class))
            .unwrap_or_else(|| panic!("no {class} in: {mem}"));
        let size = line.rsplit(") ").next().unwrap_or_default();
        parse_size(size).unwrap_or_else(|| panic!("bad size in: {line}"))
    };
    assert_eq!(size_of("arena "), 8 << 20, "default arena is 8 MiB");
    assert_eq!(size_of("transient "), 4 << 20, "default heap is 4 MiB");
    assert!(size_of("image ") > 0 && size_of("pristine ") > 0);
    assert!(
        size_of("pristine ") <= size_of("image "),
        "pristine copies part of the image"
    );
    let usable = mem
        .lines()
        .find_map(|l| l.strip_prefix("usable    "))
        .and_then(parse_size)
        .expect("usable line");
    assert!(
        (500 << 20..512 << 20).contains(&usable),
        "usable RAM of a 512 MiB Bochs: {usable}"
    );

    assert_eq!(m.command("log debug"), "log level: debug\n");
    assert_eq!(m.command("log"), "log level: debug\n");
    assert_eq!(
        m.command("frobnicate"),
        "error: unknown command 'frobnicate' (type 'help' for the list)\n"
    );
    assert_eq!(
        m.command("mem now"),
        "error: mem: unexpected argument 'now'\n"
    );
    assert!(m
        .command("help")
        .contains("shutdown        power the machine off"));

    m.send_line("shutdown");
    m.expect_line(r"^\[lazarus\] INFO  shutdown: powering off$", SHORT);
    m.wait_exit(SHORT);
    assert!(m
        .transcript()
        .contains("[lazarus] INFO  acpi: power off via PM1a_CNT=0xb004"));
}

/// Boots QEMU (no VT-x) and checks the one line that says so, then a clean power-off.
/// `platform_line` is a line only that firmware path prints.
fn vtx_missing_then_power_off(name: &str, platform: Platform, platform_line: &str) {
    let dir = work_dir(name);
    let iso = image(&dir, "", Firmware::BiosAndUefi);
    let mut m = Machine::boot(&dir, platform, &iso, 256);
    m.expect_line(r"^\[lazarus\] INFO  boot loader: GRUB", BOOT);
    m.expect_line(platform_line, SHORT);
    m.expect_line(r"^\[lazarus\] INFO  memory: arena ", SHORT);
    m.expect_line(NO_VTX, SHORT);
    m.expect_line(r"^\[lazarus\] INFO  shutdown: powering off$", SHORT);
    let status = m.wait_exit(SHORT);
    assert!(
        status.success(),
        "QEMU should exit cleanly on ACPI power-off: {status}"
    );
}

#[test]
fn qemu_bios_says_vtx_is_missing_and_powers_off() {
    vtx_missing_then_power_off(
        "qemu_bios",
        Platform::QemuBios,
        r"^\[lazarus\] INFO  memory map: \d+ regions",
    );
}

#[test]
fn qemu_uefi_says_vtx_is_missing_and_powers_off() {
    vtx_missing_then_power_off(
        "qemu_uefi",
        Platform::QemuUefi,
        r"^\[lazarus\] INFO  efi memory map: \d+ descriptors",
    );
}

#[test]
fn bad_command_line_options_are_reported_and_defaults_kept() {
    let dir = work_dir("bad_cmdline");
    let iso = image(
        &dir,
        "log=loud frobnicate=1 heap=3 arena=16M",
        Firmware::BiosOnly,
    );
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 512);
    m.expect_line(
        r"^\[lazarus\] ERROR cmdline: bad value 'loud' for log= \(expected off, error, warn, info, debug or trace\)$",
        BOOT,
    );
    m.expect_line(
        r"^\[lazarus\] ERROR cmdline: unknown option 'frobnicate'$",
        SHORT,
    );
    m.expect_line(
        r"^\[lazarus\] ERROR cmdline: bad value '3' for heap=",
        SHORT,
    );
    let summary = m.expect_line(r"^\[lazarus\] INFO  cmdline: ", SHORT);
    assert!(
        summary.ends_with("-> log=info heap=4M arena=16M triggers=off console=on inject=off"),
        "{summary}"
    );
    m.wait_prompt(BOOT);
    assert_eq!(m.command("log"), "log level: info\n");
    let mem = m.command("mem");
    assert!(
        mem.lines()
            .any(|l| l.starts_with("arena ") && l.ends_with(" 16 MiB")),
        "{mem}"
    );
}

#[test]
fn too_little_memory_is_refused_with_the_numbers() {
    let dir = work_dir("too_little_memory");
    let iso = image(&dir, "", Firmware::BiosAndUefi);
    let mut m = Machine::boot(&dir, Platform::QemuBios, &iso, 40);
    let line = m.expect_line(r"^\[lazarus\] ERROR memory: ", BOOT);
    let re = lazarus_tests::Regex::new(
        r"only ([\d.]+ MiB) of usable RAM, Lazarus needs at least ([\d.]+ MiB)",
    )
    .unwrap();
    let caps = re
        .captures(&line)
        .unwrap_or_else(|| panic!("unexpected memory error: {line}"));
    let (have, need) = (parse_size(&caps[1]).unwrap(), parse_size(&caps[2]).unwrap());
    assert!(have < need && have < 40 << 20, "{line}");
    m.expect_line(r"^\[lazarus\] INFO  shutdown: powering off$", SHORT);
    m.wait_exit(SHORT);
}
