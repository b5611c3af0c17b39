//! The watchdog benchmark (`scripts/bench-watchdog`, docs/benchmarks.md): in one Bochs
//! run with three busy Linux VMs and two test guests (one that never exits on its own),
//!
//! 1. a soak of N minutes with no injected failure: every hang report is a false
//!    positive; the console is kept busy (`help`, `recovery`, `vm list`, ... every few
//!    seconds), a 128 MiB VM is created a third of the way in and the Linux VM `web` is
//!    reset at two thirds (seconds of RAM zeroing and loading with VMs runnable); at the
//!    end the `watchdog` command says how close legitimate work came to
//!    each limit (the longest run of ticks without progress, and without a VM entry while
//!    a VM was runnable);
//! 2. K rounds of the triggers `hang`, `deadlock` and `no-entry` from the console: the
//!    detection latency of each (the report's `trigger: 'KIND' was detected N cycles
//!    (M ms) after it fired`, host TSC, emulated time in Bochs), the hang report it gave,
//!    and its recovery line; every VM must make progress after each;
//! 3. the longest console reply there is, `recovery` with its 16 lines, then `watchdog`:
//!    how long console output alone kept the VMs from being entered.
//!
//! It reads only documented console lines, through the shared harness. A console timeout
//! or a wrong workload line panics with the console around it; the panic hook stops
//! Bochs (binaries abort on panic).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lazarus_tests::testguest::checked_sequences;
use lazarus_tests::{
    image_with_modules, key_number, linux, linux_guest, recovery, root, test_guest, watchdog,
    Firmware, Machine, Platform, Regex,
};

/// The Linux guest's command line (as tests/tests/linux.rs and bench-recovery).
const LINUX_CMDLINE: &str =
    "console=ttyS0,115200 panic=-1 mitigations=off quiet cryptomgr.notests lzpause=1";
const LINUX_VMS: [&str; 3] = ["web", "db", "cache"];
/// Until every Linux VM printed its first workload line.
const BOOT: Duration = Duration::from_secs(900);
/// From a trigger to its recovery line, or a console command to its reply.
const STEP: Duration = Duration::from_secs(180);
/// Console commands the soak cycles through, one every `--every` seconds.
const COMMANDS: [&str; 7] = [
    "watchdog",
    "help",
    "vm list",
    "recovery",
    "mem",
    "vm stats web",
    "cpu",
];

static EMULATOR_PID: AtomicU32 = AtomicU32::new(0);

struct Options {
    minutes: f64,
    count: usize,
    kinds: Vec<String>,
    every: u64,
    out: PathBuf,
}

const USAGE: &str = "\
usage: bench_watchdog [--minutes M] [--count K] [--kinds K1,K2,...] [--every S] [--out DIR]

  --minutes M   wall-clock minutes of the soak without injected failures (default 20)
  --count K     rounds of the triggers after the soak (default 5)
  --kinds LIST  the triggers of each round (default hang,deadlock,no-entry)
  --every S     seconds between two console commands during the soak (default 5)
  --out DIR     serial log, emulator output and report.md (default target/bench-watchdog)
";

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        minutes: 20.0,
        count: 5,
        kinds: ["hang", "deadlock", "no-entry"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        every: 5,
        out: root().join("target/bench-watchdog"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => o.minutes = value()?.parse().map_err(|_| "bad --minutes")?,
            "--count" => o.count = value()?.parse().map_err(|_| "bad --count")?,
            "--every" => o.every = value()?.parse().map_err(|_| "bad --every")?,
            "--kinds" => o.kinds = value()?.split(',').map(str::to_string).collect(),
            "--out" => o.out = PathBuf::from(value()?),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0)
            }
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        }
    }
    Ok(o)
}

/// One trigger's detection and recovery.
struct Detection {
    kind: String,
    report: watchdog::HangReport,
    detected: watchdog::Detected,
    recovery: recovery::Line,
}

/// What the soak saw.
struct Soak {
    wall: Duration,
    /// Emulated milliseconds (the test guest `alpha`'s guest time, which follows the
    /// host TSC).
    emulated_ms: u64,
    hang_reports: Vec<String>,
    other_failures: Vec<String>,
    stats: Option<watchdog::Stats>,
    commands: usize,
    workload_lines: u64,
}

fn alpha_ms(m: &mut Machine) -> u64 {
    key_number(&m.command("vm stats alpha"), "time_ms").unwrap_or(0)
}

/// Every Linux VM prints a workload line past what it had printed, and every line so far
/// is checked (linux::checked panics on a wrong checksum or a gap).
fn wait_progress(m: &mut Machine) {
    let last = linux::checked(m);
    for vm in LINUX_VMS {
        let next = last
            .get(&(vm.to_string(), "cpu".to_string()))
            .map_or(0, |n| n + 1);
        m.wait_for_text(&format!("[{vm}] lazarus-guest: cpu seq={next} "), STEP);
    }
    let alpha = checked_sequences(m).get("alpha").copied().unwrap_or(0);
    m.wait_for_text(&format!("[alpha] seq={} sum=", alpha + 1), STEP);
    linux::checked(m);
}

fn soak(m: &mut Machine, o: &Options) -> Soak {
    let hang = Regex::new(watchdog::ANY_HANG).unwrap();
    let from = m.lines().len();
    let start = Instant::now();
    let start_ms = alpha_ms(m);
    let length = Duration::from_secs_f64(o.minutes * 60.0);
    let mut commands = 0;
    let (mut created, mut reset) = (false, false);
    while start.elapsed() < length {
        m.poll(Duration::from_secs(o.every));
        if !created && start.elapsed() >= length / 3 {
            // Seconds of zeroing and loading with five VMs runnable.
            let reply = m.command("vm create module=2 vm=big elf mem=128M mode=work burn=20");
            assert!(reply.ends_with("vm big: created\n"), "vm create: {reply}");
            created = true;
        } else if !reset && start.elapsed() >= length * 2 / 3 {
            // A Linux VM's 80 MiB zeroed, its kernel and initramfs loaded: it boots again.
            let reply = m.command("vm reset web");
            assert!(reply.ends_with("vm web: reset\n"), "vm reset: {reply}");
            reset = true;
        } else {
            m.command(COMMANDS[commands % COMMANDS.len()]);
        }
        commands += 1;
        eprintln!(
            "bench-watchdog: soak {:.1}/{} min, {} console commands",
            start.elapsed().as_secs_f64() / 60.0,
            o.minutes,
            commands
        );
    }
    let stats = watchdog::stats(&m.command("watchdog"));
    let emulated_ms = alpha_ms(m).saturating_sub(start_ms);
    let wall = start.elapsed();
    wait_progress(m);
    let lines = m.lines();
    let lines = &lines[from.min(lines.len())..];
    let workload_lines = linux::checked(m).values().map(|n| n + 1).sum();
    Soak {
        wall,
        emulated_ms,
        hang_reports: lines.iter().filter(|l| hang.is_match(l)).cloned().collect(),
        other_failures: lines
            .iter()
            .filter(|l| l.contains("hypervisor failure") && !hang.is_match(l))
            .cloned()
            .collect(),
        stats,
        commands,
        workload_lines,
    }
}

fn detect(m: &mut Machine, kind: &str, number: u64) -> Detection {
    m.send_line(&format!("trigger {kind}"));
    m.expect_line(
        &format!(r"^\[lazarus\] WARN  trigger: firing '{kind}'$"),
        STEP,
    );
    let line = m.expect_line(watchdog::ANY_HANG, STEP);
    let report =
        watchdog::hang_report(&line).unwrap_or_else(|| panic!("malformed hang report: {line}"));
    let line = m.expect_line(r"^\[lazarus\] ERROR trigger: '", STEP);
    let detected =
        watchdog::detected(&line).unwrap_or_else(|| panic!("malformed detection: {line}"));
    assert_eq!(detected.trigger, kind, "{line}");
    let line = m.expect_line(recovery::PATTERN, STEP);
    let recovery = recovery::parse(&line).unwrap_or_else(|| panic!("malformed: {line}"));
    assert_eq!(
        (
            recovery.number,
            recovery.cause.as_str(),
            recovery.get("stopped")
        ),
        (number, "hang", 0),
        "{line}"
    );
    wait_progress(m);
    Detection {
        kind: kind.to_string(),
        report,
        detected,
        recovery,
    }
}

fn summary(values: &mut [f64]) -> String {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return "— | — | —".to_string();
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    format!("{:.1} | {:.1} | {:.1}", values[0], median, values[n - 1])
}

/// The `recovery` reply's size and the longest run without a VM entry after it.
struct LongReply {
    lines: usize,
    bytes: usize,
    stats: Option<watchdog::Stats>,
}

fn long_reply(m: &mut Machine) -> LongReply {
    let reply = m.command("recovery");
    let stats = watchdog::stats(&m.command("watchdog"));
    LongReply {
        lines: reply.lines().count(),
        bytes: reply.len(),
        stats,
    }
}

fn report(
    o: &Options,
    soak: &Soak,
    detections: &[Detection],
    long: &LongReply,
    wall: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#### Lazarus watchdog benchmark\n");
    let _ = writeln!(
        s,
        "One Bochs run of {:.1} min: three Linux VMs (web, db, cache: Debian cloud kernel, busybox initramfs, self-checking workloads, 80 MiB each), the test guests alpha (mode=work) and spinner (mode=spin, never exits on its own); during the soak a console command every few seconds, `vm create` of a 128 MiB test guest and `vm reset web`; `scripts/bench-watchdog --minutes {} --count {} --kinds {}`.\n",
        wall.as_secs_f64() / 60.0,
        o.minutes,
        o.count,
        o.kinds.join(",")
    );
    if let Some(st) = &soak.stats {
        let _ = writeln!(
            s,
            "Limits: a tick every {} ms; hang after {} ms without progress, or {} ms without a VM entry while a VM is runnable.\n",
            st.tick_ms, st.hang_ms, st.no_entry_ms
        );
    }
    let _ = writeln!(s, "##### False positives: soak without injected failures\n");
    let _ = writeln!(s, "| measure | value |\n|---|---:|");
    let _ = writeln!(
        s,
        "| soak, wall-clock | {:.1} min |",
        soak.wall.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        s,
        "| soak, emulated (alpha's guest time) | {:.1} min |",
        soak.emulated_ms as f64 / 60_000.0
    );
    let _ = writeln!(s, "| console commands typed | {} |", soak.commands);
    let _ = writeln!(
        s,
        "| Linux workload lines checked (whole run so far) | {} |",
        soak.workload_lines
    );
    let _ = writeln!(
        s,
        "| **hang reports (false positives)** | **{}** |",
        soak.hang_reports.len()
    );
    let _ = writeln!(
        s,
        "| other hypervisor failures | {} |",
        soak.other_failures.len()
    );
    if let Some(st) = &soak.stats {
        let _ = writeln!(
            s,
            "| longest run without progress (limit {} ms) | {} ms |",
            st.hang_ms, st.longest_stale_ms
        );
        let _ = writeln!(
            s,
            "| longest run without a VM entry, a VM runnable (limit {} ms) | {} ms |",
            st.no_entry_ms, st.longest_no_entry_ms
        );
        let _ = writeln!(
            s,
            "| ticks in the host / as NMI exits | {} / {} |",
            st.host_ticks, st.guest_ticks
        );
    } else {
        let _ = writeln!(s, "| watchdog | not armed |");
    }
    let _ = writeln!(
        s,
        "\nThe longest runs count whole ticks in which nothing moved: a run of N ms means the gap between two pets (or two entries) was longer than N ms and shorter than N + {} ms. They cover this instance only (a recovery starts them afresh), here the whole soak.",
        soak.stats.map_or(50, |s| 2 * s.tick_ms)
    );
    for line in soak.hang_reports.iter().chain(&soak.other_failures) {
        let _ = writeln!(s, "\n    {line}");
    }
    let _ = writeln!(
        s,
        "\n##### Detection latency: trigger to detection (host TSC; emulated ms)\n"
    );
    let _ = writeln!(
        s,
        "| trigger | report | n | min ms | median ms | max ms | median recovery latency (cycles) |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for kind in &o.kinds {
        let mine: Vec<&Detection> = detections.iter().filter(|d| &d.kind == kind).collect();
        let mut ms: Vec<f64> = mine.iter().map(|d| d.detected.ms).collect();
        let mut latencies: Vec<f64> = mine
            .iter()
            .map(|d| d.recovery.get("latency") as f64)
            .collect();
        let reports: Vec<&str> = mine
            .iter()
            .map(|d| match d.report.runnable {
                None => "no progress",
                Some(_) => "no VM entry",
            })
            .collect();
        let mut kinds = reports.clone();
        kinds.dedup();
        let recovery = summary(&mut latencies);
        let median = recovery
            .split(" | ")
            .nth(1)
            .map_or("—".to_string(), |m| m.trim_end_matches(".0").to_string());
        let _ = writeln!(
            s,
            "| {kind} | {} | {} | {} | {median} |",
            kinds.join(", "),
            mine.len(),
            summary(&mut ms)
        );
    }
    let _ = writeln!(
        s,
        "\nEach detection line gives cycles and ms at the measured TSC rate; in Bochs (ips=50M, TSC 50 MHz) the ms are emulated time, not wall time. Every VM printed a new checked workload line after each recovery."
    );
    if let Some(st) = &long.stats {
        let _ = writeln!(
            s,
            "\n##### The longest console reply\n\nAfter the last recovery, `recovery` printed {} lines ({} bytes at 115200 baud); `watchdog` then said: longest run without progress {} ms (limit {} ms), without a VM entry while a VM was runnable {} ms (limit {} ms).",
            long.lines,
            long.bytes,
            st.longest_stale_ms,
            st.hang_ms,
            st.longest_no_entry_ms,
            st.no_entry_ms
        );
    }
    s
}

fn main() -> ExitCode {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        let pid = EMULATOR_PID.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }));
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench-watchdog: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = fs::remove_dir_all(&o.out);
    fs::create_dir_all(&o.out).expect("create the output directory");
    let (kernel, initrd) = linux_guest();
    let guest = test_guest();
    let kernel_words = format!("vm=web,db,cache kernel mem=80M \"cmdline={LINUX_CMDLINE}\"");
    let modules: [(&Path, &str); 4] = [
        (&kernel, &kernel_words),
        (&initrd, "vm=web,db,cache initrd"),
        (&guest, "vm=alpha elf mem=8M mode=work burn=20"),
        (&guest, "vm=spinner elf mem=8M mode=spin"),
    ];
    eprintln!("bench-watchdog: building the image");
    let iso = image_with_modules(&o.out, "triggers=on", Firmware::BiosOnly, &modules);
    eprintln!(
        "bench-watchdog: booting Bochs (log: {})",
        o.out.join("serial.log").display()
    );
    let started = Instant::now();
    let mut m = Machine::boot(&o.out, Platform::Bochs, &iso, 512);
    EMULATOR_PID.store(m.pid(), Ordering::SeqCst);
    m.wait_prompt(BOOT);
    for vm in LINUX_VMS {
        m.wait_for_text(&format!("[{vm}] lazarus-guest: cpu seq=0 "), BOOT);
    }
    eprintln!(
        "bench-watchdog: VMs at steady state after {:.0} s; soak of {} min",
        started.elapsed().as_secs_f64(),
        o.minutes
    );
    let soak = soak(&mut m, &o);
    let mut detections = Vec::new();
    for round in 0..o.count {
        for kind in &o.kinds {
            let number = detections.len() as u64 + 1;
            eprintln!("bench-watchdog: round {}: trigger {kind}", round + 1);
            detections.push(detect(&mut m, kind, number));
        }
    }
    let long = long_reply(&mut m);
    m.send_line("shutdown");
    let text = report(&o, &soak, &detections, &long, started.elapsed());
    print!("{text}");
    let path = o.out.join("report.md");
    if let Err(e) = fs::write(&path, &text) {
        eprintln!("bench-watchdog: write {}: {e}", path.display());
    }
    if soak.hang_reports.is_empty() && soak.other_failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
