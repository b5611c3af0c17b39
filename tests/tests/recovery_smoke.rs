use lazarus_tests::{image_with_modules, test_guest, work_dir, Firmware, Machine, Platform};
use std::time::Duration;

#[test]
fn smoke() {
    let dir = work_dir("recovery_smoke");
    let guest = test_guest();
    let modules: Vec<(&std::path::Path, &str)> = vec![
        (guest.as_path(), "vm=alpha elf mem=16M mode=work"),
        (guest.as_path(), "vm=beta elf mem=8M mode=work"),
    ];
    let iso = image_with_modules(&dir, "triggers=on", Firmware::BiosOnly, &modules);
    let mut m = Machine::boot(&dir, Platform::Bochs, &iso, 256);
    m.wait_prompt(Duration::from_secs(120));
    m.wait_for_text("[beta] seq=3 sum=", Duration::from_secs(60));
    m.send_line("trigger panic");
    m.expect_line(r"recovery 1: cause=panic", Duration::from_secs(60));
    m.wait_for_text("[beta] seq=8 sum=", Duration::from_secs(60));
    let mut n = 1;
    for t in [
        "pf",
        "gp",
        "ud",
        "de",
        "bp",
        "mid-exit",
        "vmcs-host",
        "recovery-fail",
        "corrupt-vm beta",
    ] {
        n += 1;
        m.send_line(&format!("trigger {t}"));
        m.expect_line(&format!("recovery {n}: cause="), Duration::from_secs(60));
    }
    m.send_line("vm list");
    m.send_line("recovery");
    m.wait_for_text("recoveries since", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    println!("{}", m.transcript());
}
