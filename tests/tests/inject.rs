//! The fault injector (README "Fault injection"): an injection is armed from the console
//! or the command line, fires at the step its seed names, prints what it did, and its
//! effect is what the fault makes of the hypervisor (here: a fail-stop fault, detected and
//! recovered, with the VMs counting on). Campaigns of many injections: `campaign.rs`.

use std::path::Path;
use std::time::Duration;

use lazarus_tests::testguest::checked_sequences;
use lazarus_tests::{image_with_modules, test_guest, work_dir, Firmware, Machine, Platform};

const BOOT: Duration = Duration::from_secs(120);
const FIRE: Duration = Duration::from_secs(60);

fn boot(name: &str, cmdline: &str) -> Machine {
    let dir = work_dir(name);
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (&guest, "vm=beta elf mem=8M mode=work burn=20"),
    ];
    let iso = image_with_modules(&dir, cmdline, Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.wait_for_text("[beta] seq=2 sum=", FIRE);
    m
}

/// Each VM prints three more checked work lines.
fn progress(m: &mut Machine) {
    let last = checked_sequences(m);
    for vm in ["alpha", "beta"] {
        let next = last.get(vm).copied().unwrap_or(0) + 3;
        m.wait_for_text(&format!("[{vm}] seq={next} sum="), FIRE);
    }
    checked_sequences(m);
}

#[test]
fn a_failstop_injection_is_reproducible_detected_and_recovered() {
    let mut m = boot("inject_failstop", "inject=on");
    // The seed alone fixes the plan: seed 1 starts stepping at the second VM exit from
    // now and faults at step 8656.
    assert_eq!(
        m.command("inject failstop 1"),
        "inject: armed failstop seed=1: stepping starts at VM exit 1 from now, the fault comes at step 8656\n"
    );
    m.expect_line(
        r"inject: failstop seed=1 exit=1 step=8656 rip=0x[0-9a-f]+ jump to 0x0$",
        FIRE,
    );
    // Address 0 is mapped but execute-disabled: an instruction fetch #PF at rip 0.
    m.expect_line(
        r"^\[lazarus\] ERROR hypervisor failure: exception #PF page fault \(vector 14\) error_code=0x11 rip=0x0$",
        FIRE,
    );
    m.expect_line(
        r"^\[lazarus\] INFO  recovery 1: cause=exception#PF attempts=1 .* stopped=0$",
        FIRE,
    );
    progress(&mut m);
    // The recovered hypervisor's injector is disarmed but still enabled: it can be armed
    // again, and refuses a second plan while one is armed.
    assert!(m
        .command("inject register 7")
        .starts_with("inject: armed register seed=7: "));
    let again = m.command("inject code 3");
    assert!(
        again == "error: inject: an injection is already armed\n"
            || again.starts_with("inject: armed code seed=3: "),
        "{again}"
    );
}

#[test]
fn the_injector_is_off_unless_enabled_and_can_be_armed_from_the_command_line() {
    let mut m = boot("inject_cmdline", "inject=lock:6");
    // Armed at boot; seed 6 starts at the first VM exit. A leaked arena lock makes the
    // next commit wait forever: the watchdog reports a hang, and recovery releases it.
    assert!(m.lines().iter().any(|l| l.starts_with(
        "[lazarus] WARN  inject: armed lock seed=6 from the command line: stepping starts at VM exit 0, the fault comes at step 12143"
    )));
    m.expect_line(r"inject: lock seed=6 exit=0 step=12143 rip=0x[0-9a-f]+ lock=arena taken and never released$", FIRE);
    m.expect_line(lazarus_tests::watchdog::NO_PROGRESS, FIRE);
    m.expect_line(
        r"^\[lazarus\] INFO  recovery 1: cause=hang attempts=1 .* locks=1 .* stopped=0$",
        FIRE,
    );
    progress(&mut m);
    drop(m);

    let mut off = boot("inject_off", "");
    assert_eq!(
        off.command("inject failstop 1"),
        "error: inject: injection is disabled (boot with inject=on)\n"
    );
}

#[test]
fn a_test_guest_arms_the_injector_by_hypercall() {
    let dir = work_dir("inject_hypercall");
    let guest = test_guest();
    let modules: [(&Path, &str); 2] = [
        (
            &guest,
            "vm=alpha elf mem=8M mode=work burn=20 inject=failstop inject-seed=1 trigger-after=2",
        ),
        (&guest, "vm=beta elf mem=8M mode=work burn=20"),
    ];
    let iso = image_with_modules(&dir, "inject=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(BOOT);
    m.expect_line(
        r"^\[lazarus\] WARN  inject: vm alpha armed failstop seed=1$",
        FIRE,
    );
    m.expect_line(r"^\[alpha\] inject failstop seed=1 result=0$", FIRE);
    m.expect_line(
        r"inject: failstop seed=1 exit=1 step=8656 rip=0x[0-9a-f]+ jump to 0x0$",
        FIRE,
    );
    m.expect_line(
        r"^\[lazarus\] INFO  recovery 1: cause=exception#PF attempts=1 .* stopped=0$",
        FIRE,
    );
    progress(&mut m);
}
