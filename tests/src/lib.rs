//! The end-to-end test harness: builds GRUB images of Lazarus, boots them in Bochs (the
//! VT-x platform) or QEMU (the boot path without VT-x), and talks to the serial console
//! over TCP, the way an operator or a campaign script would.
//!
//! Every run has hard time limits, keeps its serial transcript and emulator log under
//! `target/e2e/<test name>/`, picks its own TCP port so runs can go in parallel, and
//! kills its emulator when the test ends, whatever the outcome.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use regex::Regex;

/// The console prompt (README, "Console").
pub const PROMPT: &str = "lazarus> ";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory for one test's files.
pub fn work_dir(name: &str) -> PathBuf {
    let dir = root().join("target/e2e").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the test's work directory");
    dir
}

/// Which GRUB platforms an image carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    BiosOnly,
    BiosAndUefi,
}

/// Builds (through `scripts/image`, exactly as a user would) an ISO with `cmdline`.
pub fn image(dir: &Path, cmdline: &str, firmware: Firmware) -> PathBuf {
    image_with_modules(dir, cmdline, firmware, &[])
}

/// Like [`image`], with GRUB modules: (file, module string).
pub fn image_with_modules(
    dir: &Path,
    cmdline: &str,
    firmware: Firmware,
    modules: &[(&Path, &str)],
) -> PathBuf {
    let iso = dir.join("lazarus.iso");
    let mut cmd = Command::new(root().join("scripts/image"));
    cmd.arg("--out").arg(&iso).arg("--cmdline").arg(cmdline);
    for (file, words) in modules {
        cmd.arg("--module").arg(file).arg(words);
    }
    if firmware == Firmware::BiosOnly {
        cmd.arg("--bios-only");
    }
    let out = cmd.output().expect("run scripts/image");
    assert!(
        out.status.success(),
        "scripts/image failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

/// The emulator a test boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// Bochs 2.7, `corei7_skylake_x`: VT-x with EPT, VPID, unrestricted guest.
    Bochs,
    /// QEMU without KVM, SeaBIOS: no VT-x.
    QemuBios,
    /// QEMU without KVM, OVMF: no VT-x, UEFI GRUB.
    QemuUefi,
}

/// A running emulator with its serial console connected.
pub struct Machine {
    child: Child,
    stream: TcpStream,
    transcript: File,
    /// Console text received and not yet consumed by an `expect`.
    pending: String,
    /// Everything received, for failure messages.
    seen: String,
    dir: PathBuf,
    eof: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

const OVMF_PATHS: [&str; 3] = [
    "/usr/share/ovmf/OVMF.fd",
    "/usr/share/OVMF/OVMF.fd",
    "/usr/share/qemu/OVMF.fd",
];

impl Machine {
    /// Boots `iso` on `platform` with `memory_mib` of RAM and connects to COM1.
    pub fn boot(dir: &Path, platform: Platform, iso: &Path, memory_mib: u32) -> Machine {
        let port = free_port();
        let emulator_log = File::create(dir.join("emulator.out")).expect("create emulator.out");
        let mut cmd = match platform {
            Platform::Bochs => {
                let template = fs::read_to_string(root().join("scripts/lib/bochsrc.in"))
                    .expect("read bochsrc.in");
                let config = template
                    .replace("@ISO@", &iso.display().to_string())
                    .replace("@SERIAL_PORT@", &port.to_string())
                    .replace("@MEGS@", &memory_mib.to_string())
                    .replace("@LOG@", &dir.join("bochs.log").display().to_string());
                fs::write(dir.join("bochsrc"), config).expect("write bochsrc");
                fs::write(dir.join("continue.rc"), "c\n").expect("write continue.rc");
                let mut c = Command::new("bochs");
                c.arg("-q")
                    .arg("-f")
                    .arg(dir.join("bochsrc"))
                    .arg("-rc")
                    .arg(dir.join("continue.rc"));
                c.env("TERM", "dumb");
                c
            }
            Platform::QemuBios | Platform::QemuUefi => {
                let mut c = Command::new("qemu-system-x86_64");
                c.args([
                    "-m",
                    &memory_mib.to_string(),
                    "-display",
                    "none",
                    "-no-reboot",
                    "-monitor",
                    "none",
                ]);
                c.arg("-cdrom").arg(iso);
                c.arg("-serial")
                    .arg(format!("tcp:127.0.0.1:{port},server=on,wait=on"));
                if platform == Platform::QemuUefi {
                    let ovmf = OVMF_PATHS
                        .iter()
                        .find(|p| Path::new(p).exists())
                        .expect("OVMF.fd (Debian package ovmf)");
                    c.args(["-bios", ovmf]);
                }
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(emulator_log.try_clone().expect("dup log"))
            .stderr(emulator_log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {platform:?}: {e}"));
        let mut machine_child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => {
                    let child = machine_child.as_mut().expect("child");
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "{platform:?} exited ({status}) before its console was up; see {}",
                            dir.display()
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        panic!("could not connect to {platform:?}'s console on port {port}: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set read timeout");
        let transcript = File::create(dir.join("serial.log")).expect("create serial.log");
        Machine {
            child: machine_child.take().expect("child"),
            stream,
            transcript,
            pending: String::new(),
            seen: String::new(),
            dir: dir.to_path_buf(),
            eof: false,
        }
    }

    /// Reads whatever arrived (up to 100 ms of waiting). Returns false at end of stream.
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
                let text: String = String::from_utf8_lossy(&buf[..n])
                    .chars()
                    .filter(|&c| c != '\r')
                    .collect();
                self.pending.push_str(&text);
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

    fn context(&self) -> String {
        let tail: String = self
            .seen
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "--- console (last 3000 chars; full log in {}) ---\n{tail}",
            self.dir.display()
        )
    }

    /// Waits for a complete line matching `pattern` (a regex) and returns its captures'
    /// full text. Consumes the console up to and including that line.
    pub fn expect_line(&mut self, pattern: &str, timeout: Duration) -> String {
        let re = Regex::new(pattern).expect("valid pattern");
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(nl) = self.pending.find('\n') {
                let line = visible(&self.pending[..nl]).to_string();
                self.pending.drain(..=nl);
                if re.is_match(&line) {
                    return line;
                }
            }
            if Instant::now() > deadline || !self.pump() {
                panic!(
                    "no console line matching /{pattern}/ within {timeout:?}\n{}",
                    self.context()
                );
            }
        }
    }

    /// Like [`Machine::expect_line`], but also fails if a line matching `forbidden`
    /// arrives first.
    pub fn expect_line_not_after(
        &mut self,
        pattern: &str,
        forbidden: &str,
        timeout: Duration,
    ) -> String {
        let bad = Regex::new(forbidden).expect("valid pattern");
        let line = self.expect_line(&format!("(?:{pattern})|(?:{forbidden})"), timeout);
        assert!(
            !bad.is_match(&line),
            "unexpected console line before /{pattern}/: {line}\n{}",
            self.context()
        );
        line
    }

    /// Waits for the prompt; returns the text before it (consumed).
    pub fn wait_prompt(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.pending.find(PROMPT) {
                let before = self.pending[..at].to_string();
                self.pending.drain(..at + PROMPT.len());
                return before;
            }
            if Instant::now() > deadline || !self.pump() {
                panic!("no prompt within {timeout:?}\n{}", self.context());
            }
        }
    }

    /// Types `text` and Enter.
    pub fn send_line(&mut self, text: &str) {
        self.stream
            .write_all(text.as_bytes())
            .and_then(|_| self.stream.write_all(b"\r"))
            .expect("write to console");
    }

    /// Types raw bytes (no Enter).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to console");
    }

    /// Runs a console command and returns its reply: the lines between the echoed
    /// command and the next prompt (a reply is printed in one piece, so VM output
    /// cannot interleave with it).
    pub fn command(&mut self, text: &str) -> String {
        self.send_line(text);
        let echo = format!("^(?:{})?{}$", regex::escape(PROMPT), regex::escape(text));
        self.expect_line(&echo, Duration::from_secs(60));
        self.wait_prompt(Duration::from_secs(30))
    }

    /// Waits until `text` has appeared anywhere in the console output (consumed or not):
    /// for waiting on one VM's progress while others print too.
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut from = 0;
        loop {
            if self.seen[from..].contains(text) {
                return;
            }
            from = self.seen.len().saturating_sub(text.len());
            while !self.seen.is_char_boundary(from) {
                from -= 1;
            }
            if Instant::now() > deadline || !self.pump() {
                panic!(
                    "'{text}' did not appear within {timeout:?}\n{}",
                    self.context()
                );
            }
        }
    }

    /// Receives console output for up to `wait` (less if the stream ends): for callers
    /// that judge the transcript as it grows ([`Machine::lines`]) instead of waiting for
    /// one line. Returns false once the console has closed.
    pub fn poll(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if !self.pump() {
                return false;
            }
        }
        true
    }

    /// Every complete console line so far, as a terminal would show it.
    pub fn lines(&self) -> Vec<String> {
        self.seen.lines().map(|l| visible(l).to_string()).collect()
    }

    /// Waits until the emulator exits on its own (the console closes first).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                while self.pump() {}
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the emulator did not exit within {timeout:?}\n{}",
                    self.context()
                );
            }
            if !self.pump() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Everything the console printed so far.
    pub fn transcript(&self) -> &str {
        &self.seen
    }

    /// The emulator's process id (for a panic hook that must stop it: binaries built
    /// with `panic = "abort"` run no destructor).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The number of a `key=N` word in `text` (a `vm stats` reply, a `recovery` line...).
pub fn key_number(text: &str, key: &str) -> Option<u64> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a terminal shows of a raw line: output that replaced the prompt line starts
/// after the last erase-line sequence (README, "Console").
pub fn visible(raw: &str) -> &str {
    raw.rsplit("\x1b[K").next().unwrap_or(raw)
}

/// The checksum a test guest's `work` iteration `n` must report: xorshift64 (13, 7, 17)
/// seeded with `n` fills 8192 little-endian words, FNV-1a 64 hashes their bytes
/// (guests/testguest/src/main.rs documents it).
pub fn pattern_checksum(n: u64) -> u64 {
    let mut x = n;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..8192 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for byte in x.to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Fetches and builds the Linux guest (`scripts/guests`): returns (bzImage, initramfs).
pub fn linux_guest() -> (PathBuf, PathBuf) {
    let out = Command::new(root().join("scripts/guests"))
        .output()
        .expect("run scripts/guests");
    assert!(
        out.status.success(),
        "scripts/guests failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = root().join("target/guests");
    (dir.join("vmlinuz"), dir.join("initrd.gz"))
}

/// The SHA-256 a Linux guest's `cpu seq=N` line must carry: "lazarus-N\n" repeated,
/// cut to 65536 bytes (docs/linux-guest.md).
pub fn linux_cpu_sum(n: u64) -> String {
    let unit = format!("lazarus-{n}\n");
    let data: Vec<u8> = unit.bytes().cycle().take(65536).collect();
    hex(&data)
}

/// The SHA-256 of a Linux guest's `file seq=N` data: 2048 lines "%6d\tlazarus-file N\n".
pub fn linux_file_sum(n: u64) -> String {
    let data: String = (1..=2048)
        .map(|i| format!("{i:6}\tlazarus-file {n}\n"))
        .collect();
    hex(data.as_bytes())
}

fn hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds the in-tree test guest (`cargo guests`) and returns its ELF.
pub fn test_guest() -> PathBuf {
    let status = Command::new("cargo")
        .current_dir(root())
        .args(["guests", "--quiet"])
        .status()
        .expect("run cargo guests");
    assert!(status.success(), "cargo guests failed");
    root().join("target/x86_64-unknown-none/release/testguest")
}

/// Parses a size as the console prints it ("584 KiB", "1.5 MiB", "8 MiB") into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.trim().split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "B" => 1u64,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    Some((number * scale as f64) as u64)
}

/// The Linux guest's workload lines, checked the way every Linux test checks them
/// (docs/linux-guest.md).
pub mod linux {
    use std::collections::HashMap;
    use std::time::Duration;

    use crate::{linux_cpu_sum, linux_file_sum, Machine, Regex};

    /// The guest kernel command line the tests use (`quiet cryptomgr.notests` saves about
    /// 7 s per boot in Bochs); tests append `lzpause=`, `lzsteps=` and such.
    pub const CMDLINE: &str =
        "console=ttyS0,115200 panic=-1 mitigations=off quiet cryptomgr.notests";

    /// How long [`wait_steps`] waits.
    pub const RUN: Duration = Duration::from_secs(300);

    /// Per VM and workload, the last sequence number seen, after checking every line so
    /// far: the checksum is the one step N must produce, the sequence has no gap (a VM
    /// that started again begins again at 0), uptime never goes backwards within one boot.
    pub fn checked(m: &Machine) -> HashMap<(String, String), u64> {
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

    /// The file steps VM `vm` has completed (checked, as [`checked`] does).
    pub fn steps(m: &Machine, vm: &str) -> u64 {
        checked(m)
            .get(&(vm.to_string(), "file".to_string()))
            .map_or(0, |n| n + 1)
    }

    /// Waits until VM `vm` has completed `n` file steps (and so `n` cpu steps).
    pub fn wait_steps(m: &mut Machine, vm: &str, n: u64) {
        m.wait_for_text(&format!("[{vm}] lazarus-guest: file seq={} ", n - 1), RUN);
    }
}

/// The in-tree test guest's `mode=work` lines, checked (guests/testguest/src/main.rs).
pub mod testguest {
    use std::collections::HashMap;

    use crate::{pattern_checksum, Machine, Regex};

    /// Every `[VM] seq=N sum=0x... ok` line seen so far, per VM, checked: the checksum is
    /// the one iteration N must produce, the sequence has no gap, and no line says
    /// CORRUPT. Returns each VM's last N.
    pub fn checked_sequences(m: &Machine) -> HashMap<String, u64> {
        let re = Regex::new(r"^\[([a-z0-9_-]+)\] seq=(\d+) sum=0x([0-9a-f]{16}) (ok|expected=.*)$")
            .unwrap();
        let mut last: HashMap<String, u64> = HashMap::new();
        for line in m.lines() {
            assert!(
                !line.contains("CORRUPT"),
                "guest reported corruption: {line}"
            );
            let Some(c) = re.captures(&line) else {
                continue;
            };
            let (vm, n) = (c[1].to_string(), c[2].parse::<u64>().unwrap());
            let sum = u64::from_str_radix(&c[3], 16).unwrap();
            assert_eq!(&c[4], "ok", "{line}");
            assert_eq!(sum, pattern_checksum(n), "wrong checksum in: {line}");
            let expected = last.get(&vm).map_or(1, |p| p + 1);
            assert_eq!(n, expected, "sequence gap for {vm}: {line}");
            last.insert(vm, n);
        }
        last
    }
}

/// The in-tree test guest's `mode=fuzz` lines and the fuzzing criterion, shared by the
/// fuzz tests and `scripts/fuzz` (guests/testguest/src/main.rs lists the lines).
pub mod fuzz {
    use crate::Regex;

    /// A transcript line that means the hypervisor failed or recovered: never acceptable
    /// in a fuzz run (README "Console lines").
    pub fn is_failure(line: &str) -> bool {
        line.contains("hypervisor failure")
            || line.starts_with("[lazarus] INFO  recovery ")
            || line.starts_with("[lazarus] ERROR recovery")
            || line.starts_with("[lazarus] ERROR halted")
            || line.starts_with("[lazarus] ERROR the failure path")
    }

    /// A line of a test guest that died on its own (an exception it did not expect, or a
    /// panic): the fuzzer's guard failed, or the hypervisor broke the guest.
    pub fn is_guest_death(line: &str) -> bool {
        Regex::new(r"^\[[a-z0-9_-]+\] (exception vector=|panic at )")
            .unwrap()
            .is_match(line)
    }

    /// What one fuzz VM printed, and how it ended.
    #[derive(Clone, Debug, Default)]
    pub struct Run {
        pub start: Option<String>,
        pub done: Option<String>,
        /// `fuzz stop op=N what=KIND`.
        pub stop: Option<String>,
        pub unexpected: Vec<String>,
        /// The last `fuzz seed=S op=N hash=...` progress line's N.
        pub last_op: Option<u64>,
        /// The hypervisor's line saying the VM stopped, halted, powered off or reset.
        pub ended: Option<String>,
    }

    /// Reads VM `vm`'s fuzz lines out of `lines`.
    pub fn run(lines: &[String], vm: &str) -> Run {
        let mine = format!("[{vm}] ");
        let progress = Regex::new(r"^fuzz seed=\d+ op=(\d+) hash=0x[0-9a-f]{16}$").unwrap();
        let op_line = Regex::new(r"^fuzz op=(\d+) ").unwrap();
        let ends = [
            format!("[lazarus] ERROR vm {vm}: stopped: "),
            format!("[lazarus] INFO  vm {vm}: stopped: "),
            format!("[lazarus] INFO  vm {vm}: halted"),
            format!("[lazarus] INFO  vm {vm}: powered off"),
            format!("[lazarus] INFO  vm {vm}: rebooting"),
            format!("[lazarus] WARN  vm {vm}: triple fault"),
        ];
        let mut r = Run::default();
        for line in lines {
            if r.ended.is_none() && ends.iter().any(|e| line.starts_with(e.as_str())) {
                r.ended = Some(line.clone());
            }
            let Some(text) = line.strip_prefix(&mine) else {
                continue;
            };
            if text.starts_with("fuzz start ") {
                r.start = Some(text.to_string());
            } else if text.starts_with("fuzz done ") {
                r.done = Some(text.to_string());
            } else if text.starts_with("fuzz stop ") {
                r.stop = Some(text.to_string());
            } else if text.starts_with("fuzz unexpected ") {
                r.unexpected.push(text.to_string());
            } else if let Some(c) = progress.captures(text).or_else(|| op_line.captures(text)) {
                r.last_op = c[1].parse().ok();
            }
        }
        r
    }

    /// A `key=N` number of a fuzz line.
    pub fn field(line: &str, key: &str) -> Option<u64> {
        let re = Regex::new(&format!(r"\b{key}=(0x[0-9a-f]+|\d+)\b")).unwrap();
        let v = re.captures(line)?[1].to_string();
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

/// The `recovery N: ...` line (README, "Recovery").
pub mod recovery {
    use std::collections::HashMap;

    use crate::Regex;

    /// One `recovery` line, parsed: its number, cause and every `key=N` field.
    #[derive(Clone, Debug)]
    pub struct Line {
        pub line: String,
        pub number: u64,
        pub cause: String,
        pub fields: HashMap<String, u64>,
    }

    impl Line {
        /// A numeric field (`latency`, `attempts`, `stopped`, ...); panics if absent.
        pub fn get(&self, field: &str) -> u64 {
            self.fields[field]
        }
    }

    /// The pattern of a recovery line (any number).
    pub const PATTERN: &str = r"^\[lazarus\] INFO  recovery \d+: cause=";

    /// Parses a recovery line as the console shows it.
    pub fn parse(line: &str) -> Option<Line> {
        let re = Regex::new(
            r"^(?:\[lazarus\] INFO  )?recovery (\d+): cause=(\S+) attempts=\d+ latency=\d+ failpath=\d+ boot=\d+ repair=\d+ entry=\d+ locks=\d+ exits=\d+ committed=\d+ runnable=\d+ ept=\d+ ept_rebuilt=\d+ vmcs=\d+ interrupts=\d+ timers=\d+ devices=\d+ stopped=\d+$",
        )
        .unwrap();
        let c = re.captures(line)?;
        let fields = line
            .split(' ')
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect();
        Some(Line {
            line: line.to_string(),
            number: c[1].parse().ok()?,
            cause: c[2].to_string(),
            fields,
        })
    }
}

/// The hang watchdog's lines (README, "Hang watchdog" and "Console lines"): the boot
/// line, the two hang reports, the report's detection line after a trigger, and the
/// `watchdog` command's reply.
pub mod watchdog {
    use crate::Regex;

    /// The watchdog line every Bochs boot prints (the Bochs BIOS's MADT overrides IRQ 0
    /// to GSI 2, and Bochs wires the PIT to I/O APIC pin 2).
    pub const BOCHS_LINE: &str = "[lazarus] INFO  watchdog: NMI every 50 ms from the PIT via IO-APIC pin 2, hang after 200 ms without progress or 500 ms without a VM entry while a VM is runnable";

    /// The first line of a "no progress" hang report (a regex over the whole line).
    pub const NO_PROGRESS: &str =
        r"^\[lazarus\] ERROR hypervisor failure: hang: no progress for \d+ ms \(rip=0x[0-9a-f]+\)$";

    /// The first line of a "no VM entry" hang report (a regex over the whole line).
    pub const NO_ENTRY: &str = r"^\[lazarus\] ERROR hypervisor failure: hang: no VM entry for \d+ ms while \d+ VMs? (?:is|are) runnable \(rip=0x[0-9a-f]+\)$";

    /// Either hang report's first line after `hypervisor failure: ` (a regex).
    pub const HANG_TAIL: &str = r"hang: (?:no progress for \d+ ms|no VM entry for \d+ ms while \d+ VMs? (?:is|are) runnable) \(rip=0x[0-9a-f]+\)$";

    /// Either hang report's first line (a regex).
    pub const ANY_HANG: &str =
        r"^\[lazarus\] ERROR hypervisor failure: hang: (?:no progress|no VM entry) ";

    /// A hang report's first line, parsed.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct HangReport {
        /// `None` for "no progress"; the runnable VMs for "no VM entry".
        pub runnable: Option<u32>,
        /// The limit the line names, in ms.
        pub ms: u64,
        pub rip: u64,
    }

    /// Parses a hang report's first line.
    pub fn hang_report(line: &str) -> Option<HangReport> {
        let re = Regex::new(r"^\[lazarus\] ERROR hypervisor failure: hang: (?:no progress for (\d+) ms|no VM entry for (\d+) ms while (\d+) VMs? (?:is|are) runnable) \(rip=0x([0-9a-f]+)\)$").unwrap();
        let c = re.captures(line)?;
        let ms = c.get(1).or(c.get(2))?.as_str().parse().ok()?;
        Some(HangReport {
            runnable: c.get(3).and_then(|m| m.as_str().parse().ok()),
            ms,
            rip: u64::from_str_radix(&c[4], 16).ok()?,
        })
    }

    /// The report line after a trigger a detector finds (`hang`, `deadlock`,
    /// `no-entry`): `trigger: 'KIND' was detected N cycles (M.M ms) after it fired`.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Detected {
        pub trigger: String,
        pub cycles: u64,
        pub ms: f64,
    }

    /// Parses a detection line.
    pub fn detected(line: &str) -> Option<Detected> {
        let re = Regex::new(r"^\[lazarus\] ERROR trigger: '([a-z-]+)' was detected (\d+) cycles \((\d+\.\d) ms\) after it fired$").unwrap();
        let c = re.captures(line)?;
        Some(Detected {
            trigger: c[1].to_string(),
            cycles: c[2].parse().ok()?,
            ms: c[3].parse().ok()?,
        })
    }

    /// The `watchdog` command's reply, parsed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Stats {
        pub tick_ms: u64,
        pub hang_ms: u64,
        pub no_entry_ms: u64,
        pub longest_stale_ms: u64,
        pub longest_no_entry_ms: u64,
        pub host_ticks: u64,
        pub guest_ticks: u64,
    }

    /// Parses the reply of `watchdog` (one line; None for `watchdog: not armed`).
    pub fn stats(reply: &str) -> Option<Stats> {
        let re = Regex::new(r"(?m)^watchdog: tick=(\d+)ms hang=(\d+)ms no_entry=(\d+)ms longest_stale=(\d+)ms longest_no_entry=(\d+)ms host_ticks=(\d+) guest_ticks=(\d+)$").unwrap();
        let c = re.captures(reply)?;
        let n = |i: usize| c[i].parse::<u64>().ok();
        Some(Stats {
            tick_ms: n(1)?,
            hang_ms: n(2)?,
            no_entry_ms: n(3)?,
            longest_stale_ms: n(4)?,
            longest_no_entry_ms: n(5)?,
            host_ticks: n(6)?,
            guest_ticks: n(7)?,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn lines_parse() {
            let r = hang_report("[lazarus] ERROR hypervisor failure: hang: no VM entry for 500 ms while 2 VMs are runnable (rip=0x20a1b2)").unwrap();
            assert_eq!((r.runnable, r.ms, r.rip), (Some(2), 500, 0x20a1b2));
            let r = hang_report("[lazarus] ERROR hypervisor failure: hang: no VM entry for 500 ms while 1 VM is runnable (rip=0x1)").unwrap();
            assert_eq!(r.runnable, Some(1));
            let r = hang_report(
                "[lazarus] ERROR hypervisor failure: hang: no progress for 200 ms (rip=0xff)",
            )
            .unwrap();
            assert_eq!((r.runnable, r.ms, r.rip), (None, 200, 0xff));
            let any = Regex::new(ANY_HANG).unwrap();
            for line in [
                "[lazarus] ERROR hypervisor failure: hang: no progress for 200 ms (rip=0xff)",
                "[lazarus] ERROR hypervisor failure: hang: no VM entry for 500 ms while 3 VMs are runnable (rip=0x2)",
            ] {
                assert!(any.is_match(line));
            }
            let d = detected("[lazarus] ERROR trigger: 'no-entry' was detected 26000000 cycles (520.0 ms) after it fired").unwrap();
            assert_eq!(
                (d.trigger.as_str(), d.cycles, d.ms),
                ("no-entry", 26000000, 520.0)
            );
            let s = stats("watchdog: tick=50ms hang=200ms no_entry=500ms longest_stale=100ms longest_no_entry=150ms host_ticks=40 guest_ticks=1234\n").unwrap();
            assert_eq!(
                (s.hang_ms, s.longest_no_entry_ms, s.guest_ticks),
                (200, 150, 1234)
            );
            assert_eq!(stats("watchdog: not armed\n"), None);
            let tail = Regex::new(HANG_TAIL).unwrap();
            assert!(tail.is_match("hang: no progress for 200 ms (rip=0xff)"));
            assert!(tail.is_match("hang: no VM entry for 500 ms while 1 VM is runnable (rip=0xff)"));
        }
    }
}
