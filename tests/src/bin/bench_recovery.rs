//! The recovery benchmark (`scripts/bench-recovery`, docs/benchmarks.md): from one Bochs
//! run with three VMs, makes the hypervisor fail N times with a mix of triggers and
//! reports the recovery latency (detection to first VM entry, and its four phases), the
//! cold boot to first VM entry, the memory recovery costs besides guest memory, and the
//! size of the recovery code, beside the targets of DESIGN section 9.
//!
//! It reads only documented console lines (README, "Console lines"). Unlike the test
//! harness it never panics on a console timeout: a recovery that fails or a VM that stops
//! making progress is reported with the serial log around it, and the figures gathered
//! until then are still printed. The serial transcript, the emulator output and the
//! report are kept under the output directory (default `target/bench-recovery/`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lazarus_tests::{
    image_with_modules, linux_cpu_sum, linux_file_sum, linux_guest, parse_size, pattern_checksum,
    root, test_guest, visible, Firmware, Regex, PROMPT,
};

/// The triggers a default run cycles through, in this order.
const DEFAULT_KINDS: [&str; 6] = ["panic", "pf", "gp", "ud", "mid-exit", "vmcs-host"];
/// The Linux guest's command line (as tests/tests/linux.rs).
const LINUX_CMDLINE: &str =
    "console=ttyS0,115200 panic=-1 mitigations=off quiet cryptomgr.notests lzpause=1";
/// Until every VM printed its first workload line (three Linux kernels boot in ~30-60 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// From a `trigger` command to its `recovery` line.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// From a `recovery` line until every VM printed a new workload line.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(180);
/// Console lines of context printed around a problem.
const EXCERPT_LINES: usize = 40;

/// The Bochs process, for the panic hook: a panic aborts (panic = "abort" in the
/// workspace profiles), so no destructor would stop the emulator.
static EMULATOR_PID: AtomicU32 = AtomicU32::new(0);

struct Options {
    count: usize,
    test_guests: bool,
    kinds: Vec<String>,
    out: PathBuf,
    memory_mib: u32,
    loc_only: bool,
}

const USAGE: &str = "\
usage: bench_recovery [--count N] [--test-guests] [--kinds K1,K2,...] [--out DIR]
                      [--memory MIB] [--loc-only]

  --count N        recoveries to make (default 20)
  --test-guests    three in-tree test guests (alpha, beta, gamma) instead of three Linux
                   VMs (web, db, cache; needs target/guests from scripts/guests)
  --kinds LIST     the triggers to cycle through (default panic,pf,gp,ud,mid-exit,vmcs-host)
  --out DIR        serial log, emulator output and report.md (default target/bench-recovery)
  --memory MIB     emulated RAM (default 512)
  --loc-only       only count the recovery code's lines (no emulator)";

fn parse_options() -> Result<Options, String> {
    let mut o = Options {
        count: 20,
        test_guests: false,
        kinds: DEFAULT_KINDS.iter().map(|k| k.to_string()).collect(),
        out: root().join("target/bench-recovery"),
        memory_mib: 512,
        loc_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--count" => {
                o.count = value("--count")?
                    .parse()
                    .map_err(|_| "--count needs a number".to_string())?;
                if o.count == 0 {
                    return Err("--count must be at least 1".into());
                }
            }
            "--test-guests" => o.test_guests = true,
            "--kinds" => {
                o.kinds = value("--kinds")?
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect();
                if o.kinds.is_empty() {
                    return Err("--kinds needs at least one trigger".into());
                }
            }
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--memory" => {
                o.memory_mib = value("--memory")?
                    .parse()
                    .map_err(|_| "--memory needs a number of MiB".to_string())?;
            }
            "--loc-only" => o.loc_only = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// The serial console (the harness's Machine, minus its panics)

/// Why waiting on the console ended without the line asked for.
enum Stall {
    Timeout,
    /// The emulator closed the console.
    Closed,
    /// A line saying the hypervisor gave up.
    Fatal(String),
}

impl Stall {
    fn describe(&self, what: &str, timeout: Duration) -> String {
        match self {
            Stall::Timeout => format!("no {what} within {} s", timeout.as_secs()),
            Stall::Closed => format!("the console closed while waiting for {what}"),
            Stall::Fatal(line) => format!("while waiting for {what}: {line}"),
        }
    }
}

/// A line after which the hypervisor does not go on (README, and recovery/src/failpath.rs).
fn is_fatal(line: &str) -> bool {
    line.starts_with("[lazarus] ERROR halted")
        || line.starts_with("[lazarus] ERROR recovery: the anchor or the arena header is damaged")
}

struct Console {
    child: Child,
    stream: TcpStream,
    transcript: File,
    /// Everything received, carriage returns removed.
    seen: String,
    /// Where the next unread line starts in `seen`.
    cursor: usize,
    /// Every complete line read so far, as a terminal shows it.
    lines: Vec<String>,
    eof: bool,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Console {
    /// Boots `iso` in Bochs (scripts/lib/bochsrc.in) and connects to COM1.
    fn boot(dir: &Path, iso: &Path, memory_mib: u32) -> Result<Console, String> {
        let port = free_port().map_err(|e| format!("no free TCP port: {e}"))?;
        let template = fs::read_to_string(root().join("scripts/lib/bochsrc.in"))
            .map_err(|e| format!("read scripts/lib/bochsrc.in: {e}"))?;
        let config = template
            .replace("@ISO@", &iso.display().to_string())
            .replace("@SERIAL_PORT@", &port.to_string())
            .replace("@MEGS@", &memory_mib.to_string())
            .replace("@LOG@", &dir.join("bochs.log").display().to_string());
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        fs::write(dir.join("bochsrc"), config).map_err(io)?;
        fs::write(dir.join("continue.rc"), "c\n").map_err(io)?;
        let log = File::create(dir.join("emulator.out")).map_err(io)?;
        let mut child = Command::new("bochs")
            .arg("-q")
            .arg("-f")
            .arg(dir.join("bochsrc"))
            .arg("-rc")
            .arg(dir.join("continue.rc"))
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start bochs: {e}"))?;
        EMULATOR_PID.store(child.id(), Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!(
                            "bochs exited ({status}) before its console was up; see {}",
                            dir.join("emulator.out").display()
                        ));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "cannot connect to Bochs's COM1 on port {port}: {e}"
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| format!("socket: {e}"))?;
        let transcript = File::create(dir.join("serial.log")).map_err(io)?;
        Ok(Console {
            child,
            stream,
            transcript,
            seen: String::new(),
            cursor: 0,
            lines: Vec::new(),
            eof: false,
        })
    }

    /// Reads whatever arrived (up to 100 ms of waiting). False at end of stream.
    fn pump(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                let _ = self.transcript.write_all(&buf[..n]);
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                self.seen.push_str(&text);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                true
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    /// The next complete line, or why there is none before `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Result<String, Stall> {
        loop {
            if let Some(nl) = self.seen[self.cursor..].find('\n') {
                let line = visible(&self.seen[self.cursor..self.cursor + nl]).to_string();
                self.cursor += nl + 1;
                self.lines.push(line.clone());
                return Ok(line);
            }
            if Instant::now() > deadline {
                return Err(Stall::Timeout);
            }
            if !self.pump() {
                return Err(Stall::Closed);
            }
        }
    }

    /// Reads lines (each shown to `w`) until one matches `re`.
    fn wait_line(
        &mut self,
        re: &Regex,
        timeout: Duration,
        w: &mut Workloads,
    ) -> Result<String, Stall> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.next_line(deadline)?;
            w.observe(&line);
            if re.is_match(&line) {
                return Ok(line);
            }
            if is_fatal(&line) {
                return Err(Stall::Fatal(line));
            }
        }
    }

    fn send_line(&mut self, text: &str) -> Result<(), String> {
        self.stream
            .write_all(text.as_bytes())
            .and_then(|_| self.stream.write_all(b"\r"))
            .map_err(|e| format!("write to the console: {e}"))
    }

    /// Runs a console command; returns its reply (the text between the echoed command and
    /// the next prompt: a reply is printed in one piece).
    fn command(&mut self, text: &str, w: &mut Workloads) -> Result<String, String> {
        let timeout = Duration::from_secs(60);
        self.send_line(text)?;
        let echo = Regex::new(&format!(
            "^(?:{})?{}$",
            regex::escape(PROMPT),
            regex::escape(text)
        ))
        .expect("valid pattern");
        self.wait_line(&echo, timeout, w)
            .map_err(|s| s.describe(&format!("the echo of '{text}'"), timeout))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.seen[self.cursor..].find(PROMPT) {
                let reply = self.seen[self.cursor..self.cursor + at].to_string();
                self.cursor += at + PROMPT.len();
                self.lines
                    .extend(reply.lines().map(|l| visible(l).to_string()));
                return Ok(reply);
            }
            if Instant::now() > deadline || !self.pump() {
                return Err(format!("no prompt after '{text}'"));
            }
        }
    }

    /// The last `n` lines read.
    fn excerpt(&self, n: usize) -> String {
        let from = self.lines.len().saturating_sub(n);
        self.lines[from..].join("\n")
    }

    /// Powers the machine off (`shutdown`), or stops the emulator.
    fn shut_down(&mut self) {
        let _ = self.send_line("shutdown");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                while self.pump() {}
                return;
            }
            if !self.pump() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        EMULATOR_PID.store(0, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// The VMs' workload lines

/// Checks every workload line (checksum, no sequence gap) and remembers, per VM, the
/// console line number of its latest one.
struct Workloads {
    linux: Regex,
    testguest: Regex,
    restart: Regex,
    /// (VM, workload) -> last sequence number.
    last: HashMap<(String, String), u64>,
    /// VM -> number of its latest workload line (in `Console::lines` order).
    progress: HashMap<String, usize>,
    line_no: usize,
    checked: u64,
    problems: Vec<String>,
}

impl Workloads {
    fn new() -> Workloads {
        Workloads {
            linux: Regex::new(
                r"^\[([a-z0-9_-]+)\] lazarus-guest: (cpu|file) seq=(\d+) sum=([0-9a-f]{64})( ok)? uptime=[\d.]+$",
            )
            .expect("valid pattern"),
            testguest: Regex::new(r"^\[([a-z0-9_-]+)\] seq=(\d+) sum=0x([0-9a-f]{16}) (\S+)")
                .expect("valid pattern"),
            restart: Regex::new(r"^\[([a-z0-9_-]+)\] (?:lazarus-guest: init started|start )")
                .expect("valid pattern"),
            last: HashMap::new(),
            progress: HashMap::new(),
            line_no: 0,
            checked: 0,
            problems: Vec::new(),
        }
    }

    fn observe(&mut self, line: &str) {
        self.line_no += 1;
        if let Some(c) = self.restart.captures(line) {
            // The VM started (again): its sequences start again.
            let vm = c[1].to_string();
            self.last.retain(|(v, _), _| *v != vm);
            return;
        }
        let parsed = if let Some(c) = self.linux.captures(line) {
            let n: u64 = c[3].parse().unwrap_or(u64::MAX);
            let expected = if &c[2] == "cpu" {
                linux_cpu_sum(n)
            } else {
                linux_file_sum(n)
            };
            Some((c[1].to_string(), c[2].to_string(), n, c[4] == expected, 0))
        } else if let Some(c) = self.testguest.captures(line) {
            let n: u64 = c[2].parse().unwrap_or(u64::MAX);
            let sum = u64::from_str_radix(&c[3], 16).unwrap_or(0);
            let good = &c[4] == "ok" && sum == pattern_checksum(n);
            Some((c[1].to_string(), "work".to_string(), n, good, 1))
        } else {
            if line.contains("CORRUPT") || line.contains("lazarus-guest: error") {
                self.problems.push(format!("guest reported: {line}"));
            }
            None
        };
        let Some((vm, work, n, good, first)) = parsed else {
            return;
        };
        self.checked += 1;
        if !good {
            self.problems.push(format!("wrong checksum: {line}"));
        }
        let key = (vm.clone(), work);
        let expected = self.last.get(&key).map_or(first, |p| p + 1);
        if n != expected && self.last.contains_key(&key) {
            self.problems
                .push(format!("sequence gap (expected {expected}): {line}"));
        }
        self.last.insert(key, n);
        self.progress.insert(vm, self.line_no);
    }

    /// The VMs among `vms` without a workload line after console line `after`.
    fn waiting(&self, vms: &[String], after: usize) -> Vec<String> {
        vms.iter()
            .filter(|vm| self.progress.get(*vm).is_none_or(|&at| at <= after))
            .cloned()
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The run

/// One `recovery N: ...` line.
#[derive(Clone, Debug)]
struct Recovery {
    kind: String,
    number: u64,
    cause: String,
    attempts: u64,
    latency: u64,
    failpath: u64,
    boot: u64,
    repair: u64,
    entry: u64,
    fields: BTreeMap<String, u64>,
    line: String,
}

fn parse_recovery(kind: &str, line: &str) -> Option<Recovery> {
    let rest = line.strip_prefix("[lazarus] INFO  recovery ")?;
    let (number, rest) = rest.split_once(": ")?;
    let mut cause = String::new();
    let mut fields = BTreeMap::new();
    for word in rest.split(' ') {
        let (key, value) = word.split_once('=')?;
        if key == "cause" {
            cause = value.to_string();
        } else {
            fields.insert(key.to_string(), value.parse().ok()?);
        }
    }
    let get = |k: &str| fields.get(k).copied();
    Some(Recovery {
        kind: kind.to_string(),
        number: number.parse().ok()?,
        cause,
        attempts: get("attempts")?,
        latency: get("latency")?,
        failpath: get("failpath")?,
        boot: get("boot")?,
        repair: get("repair")?,
        entry: get("entry")?,
        line: line.to_string(),
        fields,
    })
}

/// The cause a trigger should produce.
fn expected_cause(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "panic" | "mid-exit" | "recovery-fail" => "panic",
        "pf" => "exception#PF",
        "gp" => "exception#GP",
        "ud" => "exception#UD",
        "de" => "exception#DE",
        "bp" => "exception#BP",
        "vmcs-host" => "vmx",
        "hang" | "deadlock" => "hang",
        _ => return None,
    })
}

/// Everything one run produced.
#[derive(Default)]
struct Run {
    vms: Vec<String>,
    recoveries: Vec<Recovery>,
    /// Things a reader should know about (each with its console excerpt when relevant).
    notes: Vec<String>,
    /// The run ended early.
    failed: bool,
    mem: String,
    vm_list: String,
    vm_stats: Vec<String>,
    lines: Vec<String>,
    checked_lines: u64,
    wall: Duration,
}

fn run_bochs(o: &Options) -> Result<Run, String> {
    let _ = fs::remove_dir_all(&o.out);
    fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    let (files, vms): (Vec<(PathBuf, String)>, Vec<String>) = if o.test_guests {
        let guest = test_guest();
        let names = ["alpha", "beta", "gamma"];
        (
            names
                .iter()
                .map(|vm| {
                    (
                        guest.clone(),
                        format!("vm={vm} elf mem=16M mode=work burn=300"),
                    )
                })
                .collect(),
            names.iter().map(|s| s.to_string()).collect(),
        )
    } else {
        let (kernel, initrd) = linux_guest();
        (
            vec![
                (
                    kernel,
                    format!("vm=web,db,cache kernel mem=80M \"cmdline={LINUX_CMDLINE}\""),
                ),
                (initrd, "vm=web,db,cache initrd".to_string()),
            ],
            ["web", "db", "cache"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    };
    let modules: Vec<(&Path, &str)> = files
        .iter()
        .map(|(f, w)| (f.as_path(), w.as_str()))
        .collect();
    eprintln!("bench-recovery: building the image");
    let iso = image_with_modules(&o.out, "triggers=on", Firmware::BiosOnly, &modules);
    eprintln!(
        "bench-recovery: booting Bochs with {} (log: {})",
        vms.join(", "),
        o.out.join("serial.log").display()
    );
    let started = Instant::now();
    let mut c = Console::boot(&o.out, &iso, o.memory_mib)?;
    let mut w = Workloads::new();
    let mut run = Run {
        vms: vms.clone(),
        ..Run::default()
    };
    let result = drive(o, &mut c, &mut w, &mut run, started);
    if let Err(why) = result {
        run.failed = true;
        run.notes.push(format!(
            "{why}\n--- serial console, last {EXCERPT_LINES} lines (full log: {}) ---\n{}",
            o.out.join("serial.log").display(),
            c.excerpt(EXCERPT_LINES)
        ));
    }
    // Whatever happened, the closing figures if the console still answers.
    if !run.failed {
        match c.command("mem", &mut w) {
            Ok(reply) => run.mem = reply,
            Err(e) => run.notes.push(format!("mem: {e}")),
        }
        match c.command("vm list", &mut w) {
            Ok(reply) => run.vm_list = reply,
            Err(e) => run.notes.push(format!("vm list: {e}")),
        }
        for vm in &vms {
            match c.command(&format!("vm stats {vm}"), &mut w) {
                Ok(reply) => run.vm_stats.push(reply),
                Err(e) => run.notes.push(format!("vm stats {vm}: {e}")),
            }
        }
        for line in run.vm_list.lines() {
            if !line.contains("state=running") && !line.contains("state=idle") {
                run.notes
                    .push(format!("a VM is not running at the end: {line}"));
            }
        }
        c.shut_down();
    }
    run.wall = started.elapsed();
    run.checked_lines = w.checked;
    for p in &w.problems {
        run.notes.push(p.clone());
    }
    run.lines = c.lines.clone();
    Ok(run)
}

/// Boots to steady state, then the recoveries.
fn drive(
    o: &Options,
    c: &mut Console,
    w: &mut Workloads,
    run: &mut Run,
    started: Instant,
) -> Result<(), String> {
    let vms = run.vms.clone();
    // Steady state: every VM printed a workload line.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let waiting = w.waiting(&vms, 0);
        if waiting.is_empty() {
            break;
        }
        let line = c.next_line(deadline).map_err(|s| {
            s.describe(
                &format!("a first workload line from {}", waiting.join(", ")),
                BOOT_TIMEOUT,
            )
        })?;
        w.observe(&line);
        if is_fatal(&line) || line.starts_with("[lazarus] ERROR hypervisor failure") {
            return Err(format!("the hypervisor failed during the boot: {line}"));
        }
    }
    eprintln!(
        "bench-recovery: {} running after {:.0} s; {} recoveries follow",
        vms.join(", "),
        started.elapsed().as_secs_f64(),
        o.count
    );
    let recovery_re = Regex::new(r"^\[lazarus\] INFO  recovery \d+: ").expect("valid pattern");
    let reply_error = Regex::new(r"^(?:lazarus> )?error: ").expect("valid pattern");
    for i in 0..o.count {
        let kind = &o.kinds[i % o.kinds.len()];
        c.send_line(&format!("trigger {kind}"))?;
        // The recovery line, or an error reply to the trigger.
        let either = Regex::new(&format!(
            "(?:{})|(?:{})",
            recovery_re.as_str(),
            reply_error.as_str()
        ))
        .expect("valid pattern");
        let line = c.wait_line(&either, RECOVERY_TIMEOUT, w).map_err(|s| {
            s.describe(
                &format!("the recovery line of trigger {kind} (recovery {})", i + 1),
                RECOVERY_TIMEOUT,
            )
        })?;
        if reply_error.is_match(&line) {
            return Err(format!("trigger {kind} refused: {line}"));
        }
        let r = parse_recovery(kind, &line)
            .ok_or_else(|| format!("a recovery line not in the documented format: {line}"))?;
        let mut odd = Vec::new();
        if r.number != i as u64 + 1 {
            odd.push(format!("number {} (expected {})", r.number, i + 1));
        }
        if let Some(cause) = expected_cause(kind) {
            if r.cause != cause {
                odd.push(format!("cause {} (expected {cause})", r.cause));
            }
        }
        if r.attempts != 1 && kind != "recovery-fail" {
            odd.push(format!("{} attempts", r.attempts));
        }
        if r.failpath + r.boot + r.repair + r.entry != r.latency {
            odd.push("the phases do not add up to the latency".to_string());
        }
        if r.fields.get("stopped").copied().unwrap_or(0) != 0 {
            odd.push("a VM was stopped".to_string());
        }
        eprintln!(
            "bench-recovery: {:>2}/{} {kind:<10} cause={:<13} latency={} cycles",
            i + 1,
            o.count,
            r.cause,
            r.latency
        );
        let at = c.lines.len();
        if !odd.is_empty() {
            run.notes.push(format!(
                "recovery {} (trigger {kind}): {}\n  {line}\n--- serial console before it ---\n{}",
                r.number,
                odd.join(", "),
                c.excerpt(20)
            ));
        }
        run.recoveries.push(r);
        // Every VM goes on: a new workload line from each before the next failure.
        let deadline = Instant::now() + PROGRESS_TIMEOUT;
        loop {
            let waiting = w.waiting(&vms, at);
            if waiting.is_empty() {
                break;
            }
            let line = c.next_line(deadline).map_err(|s| {
                s.describe(
                    &format!(
                        "a workload line from {} after recovery {}",
                        waiting.join(", "),
                        i + 1
                    ),
                    PROGRESS_TIMEOUT,
                )
            })?;
            w.observe(&line);
            if is_fatal(&line) {
                return Err(format!("after recovery {}: {line}", i + 1));
            }
            if line.starts_with("[lazarus] ERROR vm ") && line.contains(": stopped") {
                return Err(format!("a VM stopped after recovery {}: {line}", i + 1));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Figures

struct Stats {
    min: u64,
    median: f64,
    mean: f64,
    max: u64,
}

fn stats(values: &[u64]) -> Option<Stats> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    };
    Some(Stats {
        min: v[0],
        median,
        mean: v.iter().sum::<u64>() as f64 / n as f64,
        max: v[n - 1],
    })
}

/// The first line starting with `prefix`, without it.
fn find_after<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(prefix))
}

fn kib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// What the console told about memory.
#[derive(Default)]
struct Memory {
    pristine: Option<u64>,
    /// The `pristine` class as `mem` prints it (whole pages).
    pristine_class: Option<u64>,
    arena_size: Option<u64>,
    root: Option<u64>,
    root_pages: Option<u64>,
    /// Free arena pages once the arena was laid out (before the VMs).
    free_before_vms: Option<u64>,
    /// Arena pages the VMs use, when a line says so.
    vm_pages: Option<u64>,
    image_class: Option<u64>,
    transient_class: Option<u64>,
}

fn memory(run: &Run) -> Memory {
    let mut m = Memory::default();
    let arena = Regex::new(
        r"^\[lazarus\] INFO  arena: (\S+ \S+) at 0x[0-9a-f]+, root (\S+ \S+) \((\d+) pages\), (\d+) pages free",
    )
    .expect("valid pattern");
    let armed = Regex::new(r"^\[lazarus\] INFO  recovery: armed: pristine copy of (\S+ \S+) at")
        .expect("valid pattern");
    for line in &run.lines {
        if let Some(c) = arena.captures(line) {
            m.arena_size = parse_size(&c[1]);
            m.root = parse_size(&c[2]);
            m.root_pages = c[3].parse().ok();
            m.free_before_vms = c[4].parse().ok();
        }
        if let Some(c) = armed.captures(line) {
            m.pristine = parse_size(&c[1]);
        }
    }
    // `mem`: `CLASS [START, END) SIZE`.
    let class =
        Regex::new(r"^([a-z ]+?) \[0x[0-9a-f]+, 0x[0-9a-f]+\) (\S+ \S+)$").expect("valid pattern");
    for line in run.mem.lines() {
        if let Some(c) = class.captures(line) {
            let size = parse_size(&c[2]);
            let slot = match c[1].trim() {
                "pristine" => &mut m.pristine_class,
                "image" => &mut m.image_class,
                "transient" => &mut m.transient_class,
                _ => continue,
            };
            *slot = Some(slot.unwrap_or(0) + size.unwrap_or(0));
        }
    }
    // Per-VM arena pages: no documented line carries them yet. Accept `arena_pages=N` in
    // `vm stats` should it appear.
    let pages = Regex::new(r"\barena_pages=(\d+)").expect("valid pattern");
    let per_vm: Vec<u64> = run
        .vm_stats
        .iter()
        .filter_map(|s| pages.captures(s).and_then(|c| c[1].parse().ok()))
        .collect();
    if !per_vm.is_empty() && per_vm.len() == run.vm_stats.len() {
        m.vm_pages = Some(per_vm.iter().sum());
    }
    m
}

// ---------------------------------------------------------------------------------------
// Lines of code

/// The cost of the check before each commit (campaign finding 14), from `vm stats`:
/// `exit_cycles` (every exit, from the exit to the end of its commit) and `check_cycles`
/// (the check alone), summed over the VMs, side by side in one run.
fn exit_check(s: &mut String, run: &Run) {
    let field = |name: &str| {
        let re = Regex::new(&format!(r"\b{name}=(\d+)")).expect("valid pattern");
        run.vm_stats
            .iter()
            .filter_map(|st| re.captures(st).and_then(|c| c[1].parse::<u64>().ok()))
            .sum::<u64>()
    };
    let (exits, handling, check) = (field("exits"), field("exit_cycles"), field("check_cycles"));
    let _ = writeln!(s, "\n## Exit handling and the check before each commit\n");
    if exits == 0 || handling == 0 {
        let _ = writeln!(s, "No `exit_cycles` in `vm stats`: not measured.");
        return;
    }
    let _ = writeln!(
        s,
        "| exits | cycles handling them (per exit) | of which the check (per exit) | share |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| {exits} | {handling} ({}) | {check} ({}) | {:.2}% |",
        handling / exits,
        check / exits,
        100.0 * check as f64 / handling as f64
    );
}

/// Per line of a Rust file: (code outside comments and strings, with every string
/// replaced by `""`; the text inside strings on that line).
fn split_lines(src: &str) -> Vec<(String, String)> {
    enum State {
        Code,
        Block(u32),
        Str,
        Raw(usize),
    }
    let mut out = Vec::new();
    let mut state = State::Code;
    for line in src.lines() {
        let (mut code, mut text) = (String::new(), String::new());
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let ch = chars[i];
            let next = chars.get(i + 1).copied();
            match state {
                State::Code => {
                    if ch == '/' && next == Some('/') {
                        break;
                    } else if ch == '/' && next == Some('*') {
                        state = State::Block(1);
                        i += 1;
                    } else if ch == '"' {
                        code.push_str("\"\"");
                        state = State::Str;
                    } else if ch == 'r' && (next == Some('"') || next == Some('#')) && {
                        let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
                        chars.get(i + 1 + hashes) == Some(&'"')
                            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_'))
                    } {
                        let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
                        code.push_str("\"\"");
                        state = State::Raw(hashes);
                        i += 1 + hashes;
                    } else if ch == '\'' {
                        // A character literal ('x', '\n', '\u{..}'), not a lifetime.
                        let close = if next == Some('\\') {
                            chars[i + 2..]
                                .iter()
                                .position(|&c| c == '\'')
                                .map(|p| i + 2 + p)
                        } else if chars.get(i + 2) == Some(&'\'') {
                            Some(i + 2)
                        } else {
                            None
                        };
                        code.push('\'');
                        if let Some(end) = close {
                            code.push_str("c'");
                            i = end;
                        }
                    } else {
                        code.push(ch);
                    }
                }
                State::Block(depth) => {
                    if ch == '*' && next == Some('/') {
                        state = if depth == 1 {
                            State::Code
                        } else {
                            State::Block(depth - 1)
                        };
                        i += 1;
                    } else if ch == '/' && next == Some('*') {
                        state = State::Block(depth + 1);
                        i += 1;
                    }
                }
                State::Str => {
                    if ch == '\\' {
                        text.push(ch);
                        if let Some(n) = next {
                            text.push(n);
                        }
                        i += 1;
                    } else if ch == '"' {
                        state = State::Code;
                    } else {
                        text.push(ch);
                    }
                }
                State::Raw(hashes) => {
                    if ch == '"'
                        && chars[i + 1..].iter().take_while(|&&c| c == '#').count() >= hashes
                    {
                        state = State::Code;
                        i += hashes;
                    } else {
                        text.push(ch);
                    }
                }
            }
            i += 1;
        }
        // A string continued with a trailing backslash goes on; nothing else to do.
        out.push((code, text));
    }
    out
}

/// Whether a line counts: code outside comments, or text inside a string literal that is
/// not an assembly comment (`global_asm!` bodies are code).
fn counts(code: &str, text: &str) -> bool {
    if !code.trim().is_empty() {
        return true;
    }
    let t = text.trim();
    !(t.is_empty()
        || t.starts_with("//")
        || t.starts_with('#')
        || (t.starts_with("/*") && t.ends_with("*/")))
}

fn brace_delta(code: &str) -> i64 {
    code.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// Non-blank, non-comment lines, leaving out `#[cfg(test)]` items.
fn count_code(src: &str) -> usize {
    let lines = split_lines(src);
    let mut n = 0;
    let mut i = 0;
    while i < lines.len() {
        let (code, text) = &lines[i];
        if code.trim_start().starts_with("#[cfg(test)]") {
            // Skip the item: to its `;` or to its closing brace.
            let mut depth = 0i64;
            let mut opened = false;
            while i < lines.len() {
                let code = &lines[i].0;
                depth += brace_delta(code);
                opened |= code.contains('{');
                i += 1;
                if (opened && depth <= 0) || (!opened && code.contains(';')) {
                    break;
                }
            }
            continue;
        }
        if counts(code, text) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Non-blank, non-comment lines of function `name` (its attributes included).
fn count_function(src: &str, name: &str) -> Option<usize> {
    let lines = split_lines(src);
    let needle = format!("fn {name}");
    let start = lines.iter().position(|(code, _)| {
        code.contains(&needle)
            && !code[code.find(&needle).unwrap_or(0) + needle.len()..]
                .starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })?;
    // Its attributes (`#[unsafe(no_mangle)]`) count with it; its doc comment does not.
    let mut first = start;
    while first > 0 && lines[first - 1].0.trim_start().starts_with("#[") {
        first -= 1;
    }
    let mut depth = 0i64;
    let mut opened = false;
    let mut end = start;
    for (j, (code, _)) in lines.iter().enumerate().skip(start) {
        depth += brace_delta(code);
        opened |= code.contains('{');
        end = j;
        if opened && depth <= 0 {
            break;
        }
    }
    Some(
        lines[first..=end]
            .iter()
            .filter(|(c, t)| counts(c, t))
            .count(),
    )
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "tests" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// (what, lines) for every part of the recovery code; `None` when a part is missing.
fn recovery_code() -> Vec<(String, Option<usize>)> {
    let root = root();
    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).display().to_string();
    let mut parts = Vec::new();
    let mut files = Vec::new();
    rust_files(&root.join("recovery/src"), &mut files);
    for f in &files {
        let n = fs::read_to_string(f).ok().map(|s| count_code(&s));
        parts.push((rel(f), n));
    }
    for f in [
        "hypervisor/src/vm/machine/recover.rs",
        "hypervisor/src/arena/recovery.rs",
        "hypervisor/src/arena/boot.rs",
    ] {
        let n = fs::read_to_string(root.join(f))
            .ok()
            .map(|s| count_code(&s));
        parts.push((f.to_string(), n));
    }
    let entry = fs::read_to_string(root.join("boot/src/main.rs"))
        .ok()
        .and_then(|s| count_function(&s, "lazarus_recovery_entry"));
    parts.push((
        "boot/src/main.rs: fn lazarus_recovery_entry".to_string(),
        entry,
    ));
    parts
}

// ---------------------------------------------------------------------------------------
// The report

fn report(o: &Options, run: Option<&Run>) -> String {
    let mut s = String::new();
    let code = recovery_code();
    let code_total: usize = code.iter().filter_map(|(_, n)| *n).sum();
    let Some(run) = run else {
        let _ = writeln!(
            s,
            "## Recovery code (non-blank, non-comment Rust lines, tests excluded)\n"
        );
        code_table(&mut s, &code, code_total);
        return s;
    };
    let lines = &run.lines;
    let mhz: Option<f64> = find_after(lines, "[lazarus] INFO  tsc: ")
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok());
    let us = |cycles: f64| mhz.map(|m| cycles / m);
    // Emulated time: µs up to 10 ms, then ms.
    let fmt_us = |cycles: f64| {
        us(cycles).map_or("?".to_string(), |u| {
            if u < 10_000.0 {
                format!("{u:.0} µs")
            } else {
                format!("{:.1} ms", u / 1000.0)
            }
        })
    };
    let cold: Option<u64> = find_after(lines, "[lazarus] INFO  boot: first VM entry ")
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok());
    let n = run.recoveries.len();
    let latency = stats(&run.recoveries.iter().map(|r| r.latency).collect::<Vec<_>>());
    let guests = if o.test_guests {
        "three test guests (alpha, beta, gamma: `mode=work burn=300`, 16 MiB each)"
    } else {
        "three Linux VMs (web, db, cache: Debian cloud kernel, busybox initramfs, self-checking workloads, 80 MiB each)"
    };
    let kinds = o.kinds.join(", ");
    let _ = writeln!(s, "# Lazarus recovery benchmark\n");
    let _ = writeln!(
        s,
        "{n} recoveries of {} asked ({kinds}, in turn) with {guests}, in one Bochs run \
         of {:.0} s; TSC {}.",
        o.count,
        run.wall.as_secs_f64(),
        mhz.map_or("not reported".to_string(), |m| format!("{m:.3} MHz"))
    );
    let _ = writeln!(
        s,
        "Bochs executes about one instruction per emulated TSC cycle (ips=50M, TSC 50 MHz): \
         the cycle figures are instruction counts more than real-hardware time, and the \
         microseconds are emulated time.\n"
    );
    if run.failed {
        let _ = writeln!(s, "**The run ended early: see the notes at the end.**\n");
    }

    // 1. Latency.
    let _ = writeln!(
        s,
        "## Recovery latency, detection to first VM entry ({n} recoveries)\n"
    );
    let _ = writeln!(
        s,
        "| phase | min | median | mean | max | median µs | mean µs |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    type Phase = (&'static str, fn(&Recovery) -> u64);
    let phases: [Phase; 5] = [
        ("latency (total)", |r| r.latency),
        ("failpath", |r| r.failpath),
        ("boot", |r| r.boot),
        ("repair", |r| r.repair),
        ("entry", |r| r.entry),
    ];
    for (name, f) in phases {
        if let Some(st) = stats(&run.recoveries.iter().map(f).collect::<Vec<_>>()) {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.0} | {:.0} | {} | {} | {} |",
                st.min,
                st.median,
                st.mean,
                st.max,
                us(st.median).map_or("?".into(), |u| format!("{u:.1}")),
                us(st.mean).map_or("?".into(), |u| format!("{u:.1}")),
            );
        }
    }
    let _ = writeln!(
        s,
        "\nCycles; µs at the measured TSC rate. failpath: the dying instance (report \
         included); boot: pristine verify and copy, recovery boot to VMX on and arena \
         validated; repair: the repair passes; entry: to the first VM entry.\n"
    );
    // Per trigger.
    let mut by_kind: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &run.recoveries {
        by_kind.entry(&r.kind).or_default().push(r.latency);
    }
    let _ = writeln!(
        s,
        "| trigger | cause | n | median latency | max latency |\n|---|---|---:|---:|---:|"
    );
    for kind in &o.kinds {
        if let Some(v) = by_kind.get(kind.as_str()) {
            let st = stats(v).expect("non-empty");
            let cause = run
                .recoveries
                .iter()
                .find(|r| &r.kind == kind)
                .map_or("", |r| r.cause.as_str());
            let _ = writeln!(
                s,
                "| {kind} | {cause} | {} | {:.0} ({}) | {} ({}) |",
                v.len(),
                st.median,
                fmt_us(st.median),
                st.max,
                fmt_us(st.max as f64)
            );
        }
    }

    // 2. Cold boot.
    let _ = writeln!(s, "\n## Cold boot\n");
    match cold {
        Some(cold) => {
            let ms = mhz.map_or("?".to_string(), |m| {
                format!("{:.1} ms", cold as f64 / m / 1000.0)
            });
            let ratio = latency.as_ref().map_or("?".to_string(), |l| {
                format!("{:.0}", cold as f64 / l.median)
            });
            let _ = writeln!(
                s,
                "Cold boot's first instruction to first VM entry: {cold} cycles ({ms}); \
                 cold boot / median recovery = {ratio}x.",
            );
        }
        None => {
            let _ = writeln!(s, "No `boot: first VM entry` line.");
        }
    }

    // 3. Memory.
    let m = memory(run);
    let _ = writeln!(s, "\n## Memory besides guest memory\n");
    let page = 4096u64;
    let shared_pages = match (m.arena_size, m.root_pages, m.free_before_vms) {
        (Some(size), Some(root), Some(free)) => (size / page).checked_sub(root + free),
        _ => None,
    };
    let opt = |v: Option<u64>| v.map_or("not printed".to_string(), kib);
    let _ = writeln!(s, "| item | size | from |\n|---|---:|---|");
    let _ = writeln!(
        s,
        "| pristine copy (`.text .rodata .data`) | {} | `recovery: armed` |",
        opt(m.pristine)
    );
    if let Some(p) = m.pristine_class {
        let _ = writeln!(
            s,
            "| `pristine` memory class (whole pages) | {} | `mem` |",
            kib(p)
        );
    }
    let _ = writeln!(
        s,
        "| arena root (header, page bitmap, VM table, boot record, recovery log) | {}{} | `arena:` |",
        opt(m.root),
        m.root_pages.map_or(String::new(), |p| format!(" ({p} pages)"))
    );
    let _ = writeln!(
        s,
        "| arena pages shared by all VMs (I/O and MSR bitmaps) | {} | `arena:` (size / 4 KiB - root pages - pages free) |",
        shared_pages.map_or("?".to_string(), |p| format!("{} ({p} pages)", kib(p * page)))
    );
    let _ = writeln!(
        s,
        "| arena pages of the {} VMs (VMCS, XSAVE area, EPT tables) | {} | {} |",
        run.vms.len(),
        m.vm_pages.map_or("not printed".to_string(), |p| format!(
            "{} ({p} pages)",
            kib(p * page)
        )),
        if m.vm_pages.is_some() {
            "`vm stats`"
        } else {
            "needs a line (see below)"
        }
    );
    // In whole pages, as the memory is taken: the `pristine` class, the root's pages.
    let total = m.pristine_class.or(m.pristine).unwrap_or(0)
        + m.root_pages.map(|p| p * page).or(m.root).unwrap_or(0)
        + shared_pages.unwrap_or(0) * page
        + m.vm_pages.unwrap_or(0) * page;
    let _ = writeln!(
        s,
        "| **total recovery overhead{}** | **{}** | whole pages: `pristine` class, root pages, shared pages |",
        if m.vm_pages.is_some() {
            ""
        } else {
            " (without the VMs' arena pages)"
        },
        kib(total)
    );
    let _ = writeln!(
        s,
        "\nReserved but not all used: the arena, {} ({} pages free once laid out, before \
         the VMs). For comparison, not recovery costs: image {}, transient (heap, stacks, \
         page tables) {}.",
        opt(m.arena_size),
        m.free_before_vms.map_or("?".to_string(), |f| f.to_string()),
        opt(m.image_class),
        opt(m.transient_class)
    );
    if m.vm_pages.is_none() {
        let _ = writeln!(
            s,
            "The arena pages the VMs use are printed nowhere yet: a field `arena_pages=N` \
             in `vm stats NAME` (or the arena's free pages after the VMs were created, e.g. \
             a `mem` line `arena-used N of M pages`) would give them."
        );
    }

    exit_check(&mut s, run);

    // 4. Code.
    let _ = writeln!(
        s,
        "\n## Recovery code (non-blank, non-comment Rust lines, tests excluded)\n"
    );
    code_table(&mut s, &code, code_total);

    // 5. Against the targets.
    let _ = writeln!(s, "\n## Against DESIGN section 9\n");
    let _ = writeln!(
        s,
        "| measure | ReHype | NiLiHype | Lazarus goal | Lazarus, this run (Bochs) |\n|---|---|---|---|---|"
    );
    if let Some(l) = &latency {
        let _ = writeln!(
            s,
            "| recovery latency, detection to VMs running | 713 ms | 22 ms | < 1 ms of hypervisor work | median {} ({:.0} cycles), max {} ({} cycles), n={n} |",
            fmt_us(l.median),
            l.median,
            fmt_us(l.max as f64),
            l.max
        );
    }
    let _ = writeln!(
        s,
        "| memory overhead | 2.1 MB | — | < 1 MiB besides the arena's VM state | {}{} |",
        kib(total),
        if m.vm_pages.is_some() {
            ""
        } else {
            " (pristine + arena root + shared pages)"
        }
    );
    if let (Some(cold), Some(l)) = (cold, &latency) {
        let _ = writeln!(
            s,
            "| cold boot to first VM entry | — | — | — | {} ({cold} cycles) = {:.0}x the median recovery |",
            fmt_us(cold as f64),
            cold as f64 / l.median
        );
    }
    let _ = writeln!(s, "| recovery code | — | — | — | {code_total} lines |");

    // Health of the run.
    let _ = writeln!(s, "\n## The VMs\n");
    let _ = writeln!(
        s,
        "{} workload lines checked (checksum, sequence); at the end:\n\n```\n{}```",
        run.checked_lines, run.vm_list
    );
    let _ = writeln!(s, "\n## The recovery lines\n\n```");
    for r in &run.recoveries {
        let _ = writeln!(s, "trigger {:<10} {}", r.kind, r.line);
    }
    let _ = writeln!(s, "```");
    if !run.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for note in &run.notes {
            let _ = writeln!(s, "```\n{note}\n```");
        }
    }
    s
}

fn code_table(s: &mut String, code: &[(String, Option<usize>)], total: usize) {
    let _ = writeln!(s, "| part | lines |\n|---|---:|");
    for (what, n) in code {
        let _ = writeln!(
            s,
            "| {what} | {} |",
            n.map_or("missing".to_string(), |n| n.to_string())
        );
    }
    let _ = writeln!(s, "| **total** | **{total}** |");
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
            eprintln!("bench-recovery: {e}");
            return ExitCode::from(2);
        }
    };
    if o.kinds.len() > 1 && o.kinds.iter().any(|k| k == "recovery-fail") {
        eprintln!("bench-recovery: note: recovery-fail recoveries take two attempts by design");
    }
    if o.loc_only {
        print!("{}", report(&o, None));
        return ExitCode::SUCCESS;
    }
    let run = match run_bochs(&o) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("bench-recovery: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = report(&o, Some(&run));
    print!("{text}");
    let path = o.out.join("report.md");
    if let Err(e) = fs::write(&path, &text) {
        eprintln!("bench-recovery: write {}: {e}", path.display());
    } else {
        eprintln!("bench-recovery: report kept in {}", path.display());
    }
    if run.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_test_modules_do_not_count() {
        let src = "//! doc\n\
                   /// doc\n\
                   fn a() -> &'static str {\n\
                   \n\
                   \x20   let c = '{'; // a brace in a char\n\
                   \x20   /* block\n\
                   \x20      still comment */\n\
                   \x20   \"// not a comment {\"\n\
                   }\n\
                   #[cfg(test)]\n\
                   mod tests {\n\
                   \x20   fn t() {}\n\
                   }\n\
                   #[cfg(test)]\n\
                   mod more;\n\
                   const B: u8 = 1;\n";
        // fn a, let c, the string, }, const B.
        assert_eq!(count_code(src), 5);
    }

    #[test]
    fn assembly_in_raw_strings_counts_but_not_its_comments() {
        let src = "global_asm!(r#\"\n    mov rax, 1\n    /* 3. */\n\n    ret\n\"#);\n";
        // global_asm!(, mov, ret, "#);
        assert_eq!(count_code(src), 4);
    }

    #[test]
    fn a_function_counts_with_its_attributes() {
        let src = "fn before() {}\n/// doc\n#[unsafe(no_mangle)]\nextern \"C\" fn entry() -> ! {\n    // note\n    loop {\n    }\n}\nfn after() {}\n";
        assert_eq!(count_function(src, "entry"), Some(5));
        assert_eq!(count_function(src, "entr"), None);
    }

    #[test]
    fn recovery_lines_parse() {
        let line = "[lazarus] INFO  recovery 7: cause=panic attempts=1 latency=278070 failpath=2265 boot=216208 repair=55135 entry=4462 locks=0 exits=1 runnable=2 ept=2 ept_rebuilt=0 vmcs=2 interrupts=0 timers=2 devices=0 stopped=0";
        let r = parse_recovery("mid-exit", line).unwrap();
        assert_eq!(
            (r.number, r.cause.as_str(), r.latency),
            (7, "panic", 278070)
        );
        assert_eq!(r.failpath + r.boot + r.repair + r.entry, r.latency);
        assert_eq!(r.fields["exits"], 1);
        assert!(parse_recovery("panic", "[lazarus] INFO  recovery: armed: x").is_none());
    }

    #[test]
    fn medians() {
        let s = stats(&[4, 1, 3, 2]).unwrap();
        assert_eq!((s.min, s.median, s.mean, s.max), (1, 2.5, 2.5, 4));
        assert_eq!(stats(&[5, 1, 3]).unwrap().median, 3.0);
    }
}
