//! Fault-injection campaigns (`scripts/campaign`, docs/campaign.md): boots Lazarus in
//! Bochs with three VMs running self-checking workloads, arms one fault injection
//! (`inject TYPE SEED` on the console), watches what the fault does, creates a new VM
//! after any recovery, and classifies the run: `not_manifested`, `silent_corruption`,
//! `recovered`, `recovered_one_vm_lost`, `recovery_failed` or `undetected_hang`.
//!
//! Many runs go in parallel (one Bochs per core). Every run starts from one saved Bochs
//! state taken when the VMs had reached a steady state (`bochs -r`), unless `--cold`
//! boots each run from scratch. Each finished run appends one JSON line to
//! `OUT/records.jsonl` (so an interrupted campaign resumes where it stopped), and the
//! campaign ends with `OUT/summary.md` (rates per fault type with Wilson 95% intervals),
//! `OUT/summary.json` and `OUT/chart.png`.
//!
//! It reads only documented console lines (README, "Console lines", "Fault injection")
//! and, like `bench_recovery`, never panics on what the console does: a run that goes
//! wrong is a classified run, not a crash of the campaign.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lazarus_tests::{
    image_with_modules, linux_cpu_sum, linux_file_sum, linux_guest, pattern_checksum, root,
    test_guest, visible, Firmware, Regex,
};

/// The fault types of the injector (README, "Fault injection"), in plan order.
const FAULT_TYPES: [&str; 6] = ["failstop", "register", "code", "data", "hang", "lock"];
/// The run classes (docs/campaign.md).
const CLASSES: [&str; 6] = [
    "not_manifested",
    "silent_corruption",
    "recovered",
    "recovered_one_vm_lost",
    "recovery_failed",
    "undetected_hang",
];
const DEFAULT_PLAN: &str = "failstop=200,register=200,code=200,data=50,hang=50,lock=50";
/// The Linux guest's command line (as tests/tests/recovery.rs).
const LINUX_CMDLINE: &str =
    "console=ttyS0,115200 panic=-1 mitigations=off quiet cryptomgr.notests lzpause=1";
/// The VMs a campaign boots.
const LINUX_VMS: [&str; 3] = ["web", "db", "cache"];
const TEST_VMS: [&str; 3] = ["alpha", "beta", "gamma"];
/// The VM created after a recovery.
const NEW_VM: &str = "fresh";
/// Checked workload steps each VM must have done before an injection (steady state),
/// and after the fault (or the last recovery) for a run to end before its window.
const STEADY_STEPS: u64 = 2;
/// Workload lines waited for before typing `inject`, at most (the seed picks 0 to this):
/// the injection point moves across what the guests do.
const MAX_DELAY_LINES: u64 = 4;
/// Console lines kept around a problem in a record's notes.
const EXCERPT_LINES: usize = 12;

const USAGE: &str = "\
usage: campaign [run] [--plan TYPE=N,...] [--seed BASE] [--jobs N] [--test-guests]
                [--out DIR] [--shard K/N] [--window SECS] [--cold] [--memory MIB]
                [--stop-after MINUTES] [--max-runs N]
       campaign --rerun ID|TYPE:SEED [--out DIR] [--cold]
       campaign merge --out DIR SOURCE...
       campaign report [--out DIR]

  --plan LIST       runs per fault type, interleaved (default
                    failstop=200,register=200,code=200,data=50,hang=50,lock=50)
  --seed BASE       base seed: run i injects with a seed derived from BASE and i (default 1)
  --jobs N          emulators in parallel (default: the number of cores)
  --test-guests     three in-tree test guests instead of three Linux VMs (much faster)
  --out DIR         records, logs, summary (default target/campaign)
  --shard K/N       only the runs whose id is K-1 modulo N (for several machines)
  --window SECS     how long a run watches the fault at most (default 60 with Linux,
                    40 with test guests); a healthy run ends as soon as every VM has
                    done 2 more checked steps (and a new VM its first)
  --cold            boot every run from scratch instead of from the saved state
  --memory MIB      emulated RAM (default 512 with Linux, 256 with test guests)
  --stop-after MIN  start no new run after MIN minutes (the campaign resumes later)
  --max-runs N      start at most N new runs
  --rerun ID        run campaign run ID again (its type and seed from OUT/campaign.json);
                    TYPE:SEED runs any injection; the record goes to OUT/reruns.jsonl
  merge             merge the records of several campaign directories or records files
                    (the same plan and seed, e.g. shards run on several machines) into
                    OUT, and write its summary
  report            write OUT's summary again from its records

OUT/records.jsonl holds one JSON object per run; OUT/summary.md the rates per fault
type with 95% Wilson intervals; OUT/chart.png the chart (python3-matplotlib). Runs
already in OUT/records.jsonl are skipped: running the same command again resumes.";

// ---------------------------------------------------------------------------------------
// Options

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Run,
    Rerun,
    Merge,
    Report,
}

#[derive(Clone, Debug)]
struct Options {
    action: Action,
    plan: Vec<(String, u64)>,
    plan_text: String,
    seed: u64,
    jobs: usize,
    test_guests: bool,
    out: PathBuf,
    shard: (u64, u64),
    window: Duration,
    window_given: bool,
    cold: bool,
    memory_mib: u32,
    memory_given: bool,
    stop_after: Option<Duration>,
    max_runs: Option<usize>,
    rerun: Option<String>,
    sources: Vec<PathBuf>,
    plan_given: bool,
    seed_given: bool,
    guests_given: bool,
}

fn parse_plan(text: &str) -> Result<Vec<(String, u64)>, String> {
    let mut plan: Vec<(String, u64)> = Vec::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (name, n) = item
            .split_once('=')
            .ok_or(format!("--plan: '{item}' is not TYPE=N"))?;
        if !FAULT_TYPES.contains(&name) {
            return Err(format!(
                "--plan: unknown fault type '{name}' (one of: {})",
                FAULT_TYPES.join(" ")
            ));
        }
        let n: u64 = n
            .parse()
            .map_err(|_| format!("--plan: '{n}' is not a number of runs"))?;
        if plan.iter().any(|(t, _)| t == name) {
            return Err(format!("--plan: {name} given twice"));
        }
        if n > 0 {
            plan.push((name.to_string(), n));
        }
    }
    if plan.is_empty() {
        return Err("--plan: no runs".into());
    }
    // Plan order is the injector's type order, whatever the order given.
    plan.sort_by_key(|(t, _)| FAULT_TYPES.iter().position(|f| f == t));
    Ok(plan)
}

fn plan_text(plan: &[(String, u64)]) -> String {
    plan.iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_options() -> Result<Options, String> {
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut o = Options {
        action: Action::Run,
        plan: parse_plan(DEFAULT_PLAN)?,
        plan_text: DEFAULT_PLAN.to_string(),
        seed: 1,
        jobs,
        test_guests: false,
        out: root().join("target/campaign"),
        shard: (1, 1),
        window: Duration::from_secs(60),
        window_given: false,
        cold: false,
        memory_mib: 512,
        memory_given: false,
        stop_after: None,
        max_runs: None,
        rerun: None,
        sources: Vec::new(),
        plan_given: false,
        seed_given: false,
        guests_given: false,
    };
    let mut args = std::env::args().skip(1).peekable();
    match args.peek().map(String::as_str) {
        Some("run") => {
            args.next();
        }
        Some("merge") => {
            args.next();
            o.action = Action::Merge;
        }
        Some("report") => {
            args.next();
            o.action = Action::Report;
        }
        _ => {}
    }
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--plan" => {
                o.plan = parse_plan(&value("--plan")?)?;
                o.plan_text = plan_text(&o.plan);
                o.plan_given = true;
            }
            "--seed" => {
                o.seed = value("--seed")?
                    .parse()
                    .map_err(|_| "--seed needs a decimal number".to_string())?;
                o.seed_given = true;
            }
            "--jobs" => {
                o.jobs = value("--jobs")?
                    .parse()
                    .map_err(|_| "--jobs needs a number".to_string())?;
                if o.jobs == 0 {
                    return Err("--jobs must be at least 1".into());
                }
            }
            "--test-guests" => {
                o.test_guests = true;
                o.guests_given = true;
            }
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--shard" => {
                let v = value("--shard")?;
                let (k, n) = v
                    .split_once('/')
                    .and_then(|(k, n)| Some((k.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
                    .ok_or(format!("--shard: '{v}' is not K/N"))?;
                if n == 0 || k == 0 || k > n {
                    return Err(format!("--shard: '{v}' needs 1 <= K <= N"));
                }
                o.shard = (k, n);
            }
            "--window" => {
                let secs: f64 = value("--window")?
                    .parse()
                    .map_err(|_| "--window needs a number of seconds".to_string())?;
                if !(1.0..=3600.0).contains(&secs) {
                    return Err("--window must be 1 to 3600 seconds".into());
                }
                o.window = Duration::from_secs_f64(secs);
                o.window_given = true;
            }
            "--cold" => o.cold = true,
            "--memory" => {
                o.memory_mib = value("--memory")?
                    .parse()
                    .map_err(|_| "--memory needs a number of MiB".to_string())?;
                o.memory_given = true;
            }
            "--stop-after" => {
                let m: f64 = value("--stop-after")?
                    .parse()
                    .map_err(|_| "--stop-after needs a number of minutes".to_string())?;
                o.stop_after = Some(Duration::from_secs_f64(m.max(0.0) * 60.0));
            }
            "--max-runs" => {
                o.max_runs = Some(
                    value("--max-runs")?
                        .parse()
                        .map_err(|_| "--max-runs needs a number".to_string())?,
                );
            }
            "--rerun" => {
                o.rerun = Some(value("--rerun")?);
                o.action = Action::Rerun;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if o.action == Action::Merge && !other.starts_with('-') => {
                o.sources.push(PathBuf::from(other));
            }
            other => return Err(format!("unknown option '{other}'\n{USAGE}")),
        }
    }
    // Bochs runs in each run's directory: every path it is given must be absolute.
    o.out = std::path::absolute(&o.out).map_err(|e| format!("--out: {e}"))?;
    if o.action == Action::Merge && o.sources.is_empty() {
        return Err("merge needs at least one campaign directory or records file".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------
// The plan: which fault type and seed each run id gets

/// SplitMix64, as the injector uses (hypervisor/src/inject.rs).
fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Run `id`'s injection seed: a mix of the base seed and the id, below 2^53 so that
/// every JSON reader keeps it exact.
fn run_seed(base: u64, id: u64) -> u64 {
    splitmix(splitmix(base) ^ id.wrapping_mul(0xd1b5_4a32_d192_ed03)) & ((1 << 53) - 1)
}

/// How many workload lines run `id` waits for before it injects (0 to MAX_DELAY_LINES).
fn delay_lines(seed: u64) -> u64 {
    splitmix(seed ^ 0x6c61_7a61_7275_7321) % (MAX_DELAY_LINES + 1)
}

/// The fault type of every run id, interleaved: type t's k-th run sits at (k + 0.5) / n_t
/// of the campaign, so any prefix of it is balanced in proportion to the plan.
fn schedule(plan: &[(String, u64)]) -> Vec<String> {
    let mut slots: Vec<(f64, usize, String)> = Vec::new();
    for (rank, (t, n)) in plan.iter().enumerate() {
        for k in 0..*n {
            slots.push(((k as f64 + 0.5) / *n as f64, rank, t.clone()));
        }
    }
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    slots.into_iter().map(|(_, _, t)| t).collect()
}

// ---------------------------------------------------------------------------------------
// JSON: a writer for the records and a small reader for resuming, merging and reporting

#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }
    fn f64(&self, key: &str) -> Option<f64> {
        match self.get(key)? {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }
    fn arr(&self, key: &str) -> &[Json] {
        match self.get(key) {
            Some(Json::Arr(a)) => a,
            _ => &[],
        }
    }
}

fn parse_json(text: &str) -> Result<Json, String> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let v = json_value(bytes, &mut at)?;
    json_space(bytes, &mut at);
    if at != bytes.len() {
        return Err(format!("trailing characters at {at}"));
    }
    Ok(v)
}

fn json_space(b: &[u8], at: &mut usize) {
    while *at < b.len() && matches!(b[*at], b' ' | b'\t' | b'\n' | b'\r') {
        *at += 1;
    }
}

fn json_value(b: &[u8], at: &mut usize) -> Result<Json, String> {
    json_space(b, at);
    let Some(&c) = b.get(*at) else {
        return Err("unexpected end".into());
    };
    let lit = |at: &mut usize, word: &str, v: Json| {
        if b[*at..].starts_with(word.as_bytes()) {
            *at += word.len();
            Ok(v)
        } else {
            Err(format!("bad literal at {at}"))
        }
    };
    match c {
        b'n' => lit(at, "null", Json::Null),
        b't' => lit(at, "true", Json::Bool(true)),
        b'f' => lit(at, "false", Json::Bool(false)),
        b'"' => Ok(Json::Str(json_string(b, at)?)),
        b'[' => {
            *at += 1;
            let mut items = Vec::new();
            json_space(b, at);
            if b.get(*at) == Some(&b']') {
                *at += 1;
                return Ok(Json::Arr(items));
            }
            loop {
                items.push(json_value(b, at)?);
                json_space(b, at);
                match b.get(*at) {
                    Some(b',') => *at += 1,
                    Some(b']') => {
                        *at += 1;
                        return Ok(Json::Arr(items));
                    }
                    _ => return Err(format!("expected , or ] at {at}")),
                }
            }
        }
        b'{' => {
            *at += 1;
            let mut fields = Vec::new();
            json_space(b, at);
            if b.get(*at) == Some(&b'}') {
                *at += 1;
                return Ok(Json::Obj(fields));
            }
            loop {
                json_space(b, at);
                if b.get(*at) != Some(&b'"') {
                    return Err(format!("expected a key at {at}"));
                }
                let key = json_string(b, at)?;
                json_space(b, at);
                if b.get(*at) != Some(&b':') {
                    return Err(format!("expected : at {at}"));
                }
                *at += 1;
                fields.push((key, json_value(b, at)?));
                json_space(b, at);
                match b.get(*at) {
                    Some(b',') => *at += 1,
                    Some(b'}') => {
                        *at += 1;
                        return Ok(Json::Obj(fields));
                    }
                    _ => return Err(format!("expected , or }} at {at}")),
                }
            }
        }
        b'-' | b'0'..=b'9' => {
            let start = *at;
            while *at < b.len() && matches!(b[*at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                *at += 1;
            }
            let n = std::str::from_utf8(&b[start..*at]).map_err(|e| e.to_string())?;
            n.parse::<f64>().map_err(|_| format!("bad number '{n}'"))?;
            Ok(Json::Num(n.to_string()))
        }
        _ => Err(format!("unexpected '{}' at {at}", c as char)),
    }
}

fn json_string(b: &[u8], at: &mut usize) -> Result<String, String> {
    *at += 1;
    let mut out: Vec<u8> = Vec::new();
    while let Some(&c) = b.get(*at) {
        *at += 1;
        match c {
            b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
            b'\\' => {
                let e = *b.get(*at).ok_or("unterminated escape")?;
                *at += 1;
                match e {
                    b'"' | b'\\' | b'/' => out.push(e),
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'u' => {
                        let hex = b.get(*at..*at + 4).ok_or("short \\u escape")?;
                        *at += 4;
                        let code = u32::from_str_radix(
                            std::str::from_utf8(hex).map_err(|e| e.to_string())?,
                            16,
                        )
                        .map_err(|_| "bad \\u escape")?;
                        let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => return Err(format!("bad escape at {at}")),
                }
            }
            _ => out.push(c),
        }
    }
    Err("unterminated string".into())
}

/// `s` as a JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn js_opt(s: &Option<String>) -> String {
    s.as_deref().map_or("null".to_string(), js)
}

fn js_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|s| js(s)).collect::<Vec<_>>().join(",")
    )
}

// ---------------------------------------------------------------------------------------
// Emulator processes: every Bochs this campaign started is killed when it ends, even by a
// panic or a signal (a watchdog shell kills what `OUT/.pids` lists once we are gone).

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static PID_FILE: Mutex<Option<PathBuf>> = Mutex::new(None);

fn pids_changed(pids: &[u32]) {
    if let Some(path) = PID_FILE.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        let _ = fs::write(path, text);
    }
}

fn register_pid(pid: u32) {
    let mut pids = PIDS.lock().unwrap_or_else(|e| e.into_inner());
    pids.push(pid);
    pids_changed(&pids);
}

fn unregister_pid(pid: u32) {
    let mut pids = PIDS.lock().unwrap_or_else(|e| e.into_inner());
    pids.retain(|&p| p != pid);
    pids_changed(&pids);
}

/// Starts the shell that kills our emulators once this process is gone (killed by a
/// signal, say); it only kills PIDs whose command line is Bochs's. Each runner process
/// has its own list, `OUT/.pids.PID`: a rerun next to a running campaign in the same
/// directory must not take that campaign's emulators for leftovers (campaign finding 9).
fn start_reaper(out: &Path) {
    // Emulators left by a runner that died before its reaper ran: lists whose runner
    // process is gone.
    for entry in fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(owner) = name
            .strip_prefix(".pids")
            .map(|rest| rest.trim_start_matches('.'))
        else {
            continue;
        };
        if !owner.is_empty() && Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains("bochs") && cmdline.contains(&*out.to_string_lossy()) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
        let _ = fs::remove_file(entry.path());
    }
    let path = out.join(format!(".pids.{}", std::process::id()));
    let _ = fs::write(&path, "");
    *PID_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 2; done; \
         for p in $(cat '{pids}' 2>/dev/null); do \
           grep -q bochs /proc/$p/cmdline 2>/dev/null && kill -9 $p; done; rm -f '{pids}'",
        me = std::process::id(),
        pids = path.display()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

fn kill_all_emulators() {
    let pids = PIDS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in pids {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}

// ---------------------------------------------------------------------------------------
// The serial console

/// Why waiting for a line ended without one.
#[derive(Debug, PartialEq)]
enum Stall {
    Timeout,
    /// The emulator closed the console (it exited, or died).
    Closed,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free TCP port: {e}"))
}

/// A Bochs process and its COM1, as TCP.
struct Console {
    child: Child,
    pid: u32,
    stream: TcpStream,
    transcript: File,
    /// Everything received (carriage returns removed), after any baseline.
    seen: String,
    /// Where the next unread line starts in `seen`.
    cursor: usize,
    /// Every complete line read so far, as a terminal shows it (baseline included).
    lines: Vec<String>,
    eof: bool,
    exit: Option<String>,
}

impl Console {
    /// Starts Bochs with `args` in `dir` (output to `dir/emulator.out`) and connects to
    /// COM1 on `port`.
    fn start(dir: &Path, args: &[String], port: u16) -> Result<Console, String> {
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        let log = File::create(dir.join("emulator.out")).map_err(io)?;
        let mut child = Command::new("bochs")
            .args(args)
            .current_dir(dir)
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start bochs: {e}"))?;
        let pid = child.id();
        register_pid(pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        unregister_pid(pid);
                        return Err(format!(
                            "bochs exited ({status}) before its console was up; see {}",
                            dir.join("emulator.out").display()
                        ));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        unregister_pid(pid);
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
            pid,
            stream,
            transcript,
            seen: String::new(),
            cursor: 0,
            lines: Vec::new(),
            eof: false,
            exit: None,
        })
    }

    /// Reads whatever arrived (up to 100 ms of waiting). False at end of stream.
    fn pump(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                let _ = self.transcript.write_all(&buf[..n]);
                self.seen
                    .push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
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

    fn send_line(&mut self, text: &str) -> bool {
        self.stream
            .write_all(text.as_bytes())
            .and_then(|_| self.stream.write_all(b"\r"))
            .is_ok()
    }

    /// The last `n` lines read, as one string.
    fn excerpt(&self, n: usize) -> String {
        let from = self.lines.len().saturating_sub(n);
        self.lines[from..].join("\n")
    }

    /// Whether the emulator has exited on its own; remembers how.
    fn exited(&mut self) -> bool {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(format!("exited by itself: {status}"));
                unregister_pid(self.pid);
            }
        }
        self.exit.is_some()
    }

    /// Stops the emulator; returns how it ended.
    fn stop(&mut self) -> String {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            unregister_pid(self.pid);
            self.exit = Some("running until stopped by the campaign".to_string());
        }
        self.exit.clone().unwrap_or_default()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------
// The VMs' workload lines

#[derive(Default, Debug, Clone)]
struct VmWork {
    /// Console line numbers of the checked steps (Linux: `file` lines, each after its
    /// `cpu` line; test guest: `seq` lines).
    step_lines: Vec<usize>,
    /// (workload) -> last sequence number.
    last: HashMap<String, u64>,
    uptime: f64,
    /// Console line numbers where the VM (re)started.
    boots: Vec<usize>,
    problems: Vec<String>,
}

/// Checks every workload line as the tests do (lazarus_tests::linux::checked,
/// testguest::checked_sequences): the checksum step N must produce, no sequence gap, uptime
/// never going backwards; a VM that starts again begins its sequences again.
struct Checker {
    linux: Regex,
    testguest: Regex,
    restart: Regex,
    vms: HashMap<String, VmWork>,
    line_no: usize,
    /// Workload lines seen in total.
    workload_lines: u64,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            linux: Regex::new(
                r"^\[([a-z0-9_-]+)\] lazarus-guest: (cpu|file) seq=(\d+) sum=([0-9a-f]{64}|none)( ok| CORRUPT)? uptime=([\d.]+)$",
            )
            .expect("valid pattern"),
            testguest: Regex::new(r"^\[([a-z0-9_-]+)\] seq=(\d+) sum=0x([0-9a-f]{16}) (.*)$")
                .expect("valid pattern"),
            restart: Regex::new(r"^\[([a-z0-9_-]+)\] (?:lazarus-guest: init started|start name=)")
                .expect("valid pattern"),
            vms: HashMap::new(),
            line_no: 0,
            workload_lines: 0,
        }
    }

    fn vm(&mut self, name: &str) -> &mut VmWork {
        self.vms.entry(name.to_string()).or_default()
    }

    /// Looks at console line number `self.line_no` (then counts it).
    fn observe(&mut self, line: &str) {
        let at = self.line_no;
        self.line_no += 1;
        if let Some(c) = self.restart.captures(line) {
            let vm = self.vm(&c[1]);
            vm.boots.push(at);
            vm.last.clear();
            vm.uptime = 0.0;
            return;
        }
        if let Some(c) = self.linux.captures(line) {
            let (name, work) = (c[1].to_string(), c[2].to_string());
            let n: u64 = c[3].parse().unwrap_or(u64::MAX);
            let expected = if work == "cpu" {
                linux_cpu_sum(n)
            } else {
                linux_file_sum(n)
            };
            let mut problems = Vec::new();
            if c[4] != expected {
                problems.push(format!("wrong checksum: {line}"));
            }
            if work == "file" && c.get(5).map(|m| m.as_str()) != Some(" ok") {
                problems.push(format!("file data corrupt: {line}"));
            }
            let t: f64 = c[6].parse().unwrap_or(0.0);
            self.workload_lines += 1;
            let vm = self.vm(&name);
            if let Some(&prev) = vm.last.get(&work) {
                if n != prev + 1 {
                    problems.push(format!("sequence gap (expected {}): {line}", prev + 1));
                }
            }
            if t < vm.uptime {
                problems.push(format!("uptime went backwards: {line}"));
            }
            vm.uptime = t;
            vm.last.insert(work.clone(), n);
            if work == "file" {
                vm.step_lines.push(at);
            }
            vm.problems.extend(problems);
            return;
        }
        if let Some(c) = self.testguest.captures(line) {
            let name = c[1].to_string();
            let n: u64 = c[2].parse().unwrap_or(u64::MAX);
            let sum = u64::from_str_radix(&c[3], 16).unwrap_or(0);
            let mut problems = Vec::new();
            if &c[4] != "ok" || sum != pattern_checksum(n) {
                problems.push(format!("wrong checksum: {line}"));
            }
            self.workload_lines += 1;
            let vm = self.vm(&name);
            let expected = vm.last.get("work").map_or(1, |p| p + 1);
            if n != expected {
                problems.push(format!("sequence gap (expected {expected}): {line}"));
            }
            vm.last.insert("work".to_string(), n);
            vm.step_lines.push(at);
            vm.problems.extend(problems);
            return;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if let Some((name, text)) = rest.split_once("] ") {
                if name != "lazarus"
                    && (text.contains("CORRUPT") || text.starts_with("lazarus-guest: error"))
                {
                    let line = line.to_string();
                    self.vm(name)
                        .problems
                        .push(format!("guest reported: {line}"));
                }
            }
        }
    }

    /// Checked steps VM `name` completed after console line `after` (all of them for
    /// `None`).
    fn steps_after(&self, name: &str, after: Option<usize>) -> u64 {
        self.vms.get(name).map_or(0, |v| {
            v.step_lines
                .iter()
                .filter(|&&l| after.is_none_or(|a| l > a))
                .count() as u64
        })
    }
}

// ---------------------------------------------------------------------------------------
// The guests a campaign runs

#[derive(Clone)]
struct Guests {
    linux: bool,
    vms: Vec<String>,
    /// (file, module string) for scripts/image.
    modules: Vec<(PathBuf, String)>,
}

impl Guests {
    fn new(test_guests: bool) -> Guests {
        if test_guests {
            let guest = test_guest();
            Guests {
                linux: false,
                vms: TEST_VMS.iter().map(|s| s.to_string()).collect(),
                modules: vec![(
                    guest,
                    format!("vm={} elf mem=16M mode=work burn=300", TEST_VMS.join(",")),
                )],
            }
        } else {
            let (kernel, initrd) = linux_guest();
            Guests {
                linux: true,
                vms: LINUX_VMS.iter().map(|s| s.to_string()).collect(),
                modules: vec![
                    (
                        kernel,
                        format!(
                            "vm={} kernel mem=80M \"cmdline={LINUX_CMDLINE}\"",
                            LINUX_VMS.join(",")
                        ),
                    ),
                    (initrd, format!("vm={} initrd", LINUX_VMS.join(","))),
                ],
            }
        }
    }

    /// The console command that creates the new VM after a recovery.
    fn create_command(&self) -> String {
        if self.linux {
            format!(
                "vm create module=0 initrd=1 vm={NEW_VM} kernel mem=80M \"cmdline={LINUX_CMDLINE}\""
            )
        } else {
            format!("vm create module=0 vm={NEW_VM} elf mem=16M mode=work burn=300")
        }
    }

    /// How long the new VM may take to its first checked step (Linux boots in Bochs
    /// take 40-50 s while three other VMs run).
    fn new_vm_timeout(&self) -> Duration {
        Duration::from_secs(if self.linux { 240 } else { 60 })
    }

    /// How long a cold boot may take to the steady state.
    fn boot_timeout(&self) -> Duration {
        Duration::from_secs(if self.linux { 600 } else { 120 })
    }
}

/// Writes `dir/bochsrc` from scripts/lib/bochsrc.in.
fn write_bochsrc(
    dir: &Path,
    iso: &Path,
    port: u16,
    memory_mib: u32,
    display: &str,
) -> Result<PathBuf, String> {
    let template = fs::read_to_string(root().join("scripts/lib/bochsrc.in"))
        .map_err(|e| format!("read scripts/lib/bochsrc.in: {e}"))?;
    let config = template
        .replace("@ISO@", &iso.display().to_string())
        .replace("@SERIAL_PORT@", &port.to_string())
        .replace("@MEGS@", &memory_mib.to_string())
        .replace("@LOG@", &dir.join("bochs.log").display().to_string())
        .replace("display_library: term", display);
    let path = dir.join("bochsrc");
    fs::write(&path, config).map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::write(dir.join("continue.rc"), "c\n")
        .map_err(|e| format!("write {}: {e}", dir.display()))?;
    Ok(path)
}

/// Reads console lines until every VM of `vms` has done `STEADY_STEPS` checked steps.
fn wait_steady(
    c: &mut Console,
    w: &mut Checker,
    vms: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let waiting: Vec<&String> = vms
            .iter()
            .filter(|vm| w.steps_after(vm, None) < STEADY_STEPS)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let line = c.next_line(deadline).map_err(|s| {
            format!(
                "{} before {} had done {STEADY_STEPS} workload steps\n{}",
                match s {
                    Stall::Timeout => format!("no steady state within {} s", timeout.as_secs()),
                    Stall::Closed => "the console closed".to_string(),
                },
                waiting
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                c.excerpt(20)
            )
        })?;
        w.observe(&line);
        if line.starts_with("[lazarus] ERROR hypervisor failure")
            || line.starts_with("[lazarus] ERROR halted")
        {
            return Err(format!(
                "the hypervisor failed before any injection: {line}"
            ));
        }
        for (_, vm) in w.vms.iter() {
            if let Some(p) = vm.problems.first() {
                return Err(format!("a workload went wrong before any injection: {p}"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The saved state: three VMs at steady state, saved once by Bochs, restored by every run

/// A Bochs state saved at steady state, and the console transcript up to it.
struct Snapshot {
    /// The directory Bochs saved into (`bochs -r` restores from a copy of it).
    state: PathBuf,
    /// Everything COM1 sent before the save (the runs check their lines after it).
    baseline: String,
}

/// Bochs's RFB (VNC) display: the only headless one whose headerbar has the
/// "save state" button. The campaign presses it like a VNC client would, and types the
/// directory into the dialog Bochs then shows in the framebuffer.
struct Rfb {
    stream: TcpStream,
    width: u16,
}

impl Rfb {
    fn connect(port: u16) -> Result<Rfb, String> {
        let err = |e: std::io::Error| format!("RFB: {e}");
        let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        let mut version = [0u8; 12];
        s.read_exact(&mut version).map_err(err)?;
        s.write_all(&version).map_err(err)?;
        if version.starts_with(b"RFB 003.003") {
            let mut auth = [0u8; 4];
            s.read_exact(&mut auth).map_err(err)?;
        } else {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).map_err(err)?;
            let mut types = vec![0u8; usize::from(n[0])];
            s.read_exact(&mut types).map_err(err)?;
            s.write_all(&[1]).map_err(err)?;
            if version.as_slice() >= b"RFB 003.008\n".as_slice() {
                let mut result = [0u8; 4];
                s.read_exact(&mut result).map_err(err)?;
            }
        }
        s.write_all(&[1]).map_err(err)?; // shared session
        let mut init = [0u8; 24];
        s.read_exact(&mut init).map_err(err)?;
        let width = u16::from_be_bytes([init[0], init[1]]);
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        let mut name = vec![0u8; name_len.min(4096) as usize];
        s.read_exact(&mut name).map_err(err)?;
        Ok(Rfb { stream: s, width })
    }

    /// A left click at (x, y).
    fn click(&mut self, x: u16, y: u16) -> Result<(), String> {
        for buttons in [1u8, 0] {
            let mut msg = vec![5u8, buttons];
            msg.extend_from_slice(&x.to_be_bytes());
            msg.extend_from_slice(&y.to_be_bytes());
            self.stream
                .write_all(&msg)
                .map_err(|e| format!("RFB: {e}"))?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Types `text` ('\n' is Return), one key at a time: Bochs's text dialog takes at most
    /// 16 keys per poll.
    fn type_text(&mut self, text: &str) -> Result<(), String> {
        for ch in text.chars() {
            let key: u32 = if ch == '\n' { 0xff0d } else { ch as u32 };
            for down in [1u8, 0] {
                let mut msg = vec![4u8, down, 0, 0];
                msg.extend_from_slice(&key.to_be_bytes());
                self.stream
                    .write_all(&msg)
                    .map_err(|e| format!("RFB: {e}"))?;
            }
            std::thread::sleep(Duration::from_millis(60));
        }
        Ok(())
    }
}

/// Boots the VMs to steady state in Bochs with the RFB display, saves the whole machine
/// with Bochs's save button, and fixes the saved configuration so that a restore
/// registers Bochs's timers in the order the saving process did (else COM1 never reads
/// again: `bochs -r` loads the USB plugin before the serial one and every timer index
/// after it shifts by one).
fn make_snapshot(o: &Options, guests: &Guests, dir: &Path) -> Result<Snapshot, String> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let iso = build_image(dir, guests)?;
    let port = free_port()?;
    write_bochsrc(
        dir,
        &iso,
        port,
        o.memory_mib,
        "display_library: rfb, options=\"timeout=0\"",
    )?;
    eprintln!(
        "campaign: booting {} to a steady state to save it (log: {})",
        guests.vms.join(", "),
        dir.join("serial.log").display()
    );
    let started = Instant::now();
    let args: Vec<String> = ["-q", "-f", "bochsrc", "-rc", "continue.rc"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut c = Console::start(dir, &args, port)?;
    let mut w = Checker::new();
    wait_steady(&mut c, &mut w, &guests.vms, guests.boot_timeout())?;
    // The RFB server's port (5900 and up, the first free one) is in the Bochs log.
    let log = fs::read_to_string(dir.join("bochs.log")).unwrap_or_default();
    let rfb_port: u16 = Regex::new(r"listening for connections on port (\d+)")
        .expect("valid pattern")
        .captures(&log)
        .and_then(|c| c[1].parse().ok())
        .ok_or("the Bochs log names no RFB port (display_library: rfb)")?;
    let mut rfb = Rfb::connect(rfb_port)?;
    // The headerbar's right-hand buttons, right to left: power, save state, ...; each is
    // 32 pixels wide.
    let state = dir.join("state");
    fs::create_dir_all(&state).map_err(|e| format!("create {}: {e}", state.display()))?;
    rfb.click(rfb.width.saturating_sub(48), 8)?;
    std::thread::sleep(Duration::from_millis(500));
    rfb.type_text("state\n")?;
    // Saving writes the RAM (sparse) and every device's file, then asks whether to go on.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = (0usize, 0u64);
    let mut stable_since = Instant::now();
    loop {
        let files: Vec<(String, u64)> = fs::read_dir(&state)
            .map_err(|e| format!("{}: {e}", state.display()))?
            .filter_map(|e| e.ok())
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.file_name().to_string_lossy().to_string(), len)
            })
            .collect();
        let now = (files.len(), files.iter().map(|(_, l)| l).sum::<u64>());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        let complete = [
            "config",
            "cpu0",
            "memory.ram",
            "serial",
            "pc_system",
            "virt_timer",
        ]
        .iter()
        .all(|f| files.iter().any(|(n, _)| n == f));
        if complete && stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "Bochs did not save its state into {} (the save button of the RFB display; see {})",
                state.display(),
                dir.join("emulator.out").display()
            ));
        }
        c.pump();
        std::thread::sleep(Duration::from_millis(200));
    }
    // "Do you want to continue?" No: Bochs powers off.
    rfb.type_text("no\n")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.exited() && Instant::now() < deadline {
        c.pump();
        std::thread::sleep(Duration::from_millis(100));
    }
    if !c.exited() {
        return Err("Bochs did not exit after saving its state".into());
    }
    while c.pump() {}
    // What COM1 sent until the machine stopped for the save: the saved state goes on
    // from there.
    let baseline = c.seen.clone();
    fs::write(dir.join("baseline.log"), &baseline)
        .map_err(|e| format!("write baseline.log: {e}"))?;
    // The timer order fix (see above): the USB plugins last.
    let config_path = state.join("config");
    let config = fs::read_to_string(&config_path)
        .map_err(|e| format!("read {}: {e}", config_path.display()))?;
    let fixed: Vec<String> = config
        .lines()
        .map(|line| match line.strip_prefix("plugin_ctrl: ") {
            Some(list) => {
                let (usb, other): (Vec<&str>, Vec<&str>) =
                    list.split(", ").partition(|p| p.starts_with("usb_"));
                format!("plugin_ctrl: {}", [other, usb].concat().join(", "))
            }
            None => line.to_string(),
        })
        .collect();
    fs::write(&config_path, fixed.join("\n") + "\n")
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    eprintln!(
        "campaign: saved the state in {:.0} s ({})",
        started.elapsed().as_secs_f64(),
        state.display()
    );
    Ok(Snapshot { state, baseline })
}

/// Loads a snapshot made earlier.
fn load_snapshot(dir: &Path) -> Option<Snapshot> {
    let state = dir.join("state");
    let baseline = fs::read_to_string(dir.join("baseline.log")).ok()?;
    state
        .join("config")
        .exists()
        .then_some(Snapshot { state, baseline })
}

/// A copy of the saved state for one run: small files copied, RAM and video memory
/// linked (a restore only reads them), the configuration pointed at this run's COM1
/// port and log, and the display back to `term`.
fn state_for_run(snap: &Snapshot, run_dir: &Path, port: u16) -> Result<PathBuf, String> {
    let dest = run_dir.join("state");
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    let entries =
        fs::read_dir(&snap.state).map_err(|e| format!("{}: {e}", snap.state.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let from = e.path();
        let to = dest.join(e.file_name());
        let big = e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false);
        let result = if big {
            std::os::unix::fs::symlink(
                fs::canonicalize(&from).map_err(|e| format!("{}: {e}", from.display()))?,
                &to,
            )
        } else {
            fs::copy(&from, &to).map(|_| ())
        };
        result.map_err(|e| format!("copy {}: {e}", from.display()))?;
    }
    let config_path = dest.join("config");
    let config = fs::read_to_string(&config_path)
        .map_err(|e| format!("read {}: {e}", config_path.display()))?;
    let config: Vec<String> = config
        .lines()
        .map(|line| {
            if line.starts_with("com1:") {
                format!("com1: enabled=true, mode=socket-server, dev=\"127.0.0.1:{port}\"")
            } else if line.starts_with("log:") {
                format!("log: {}", run_dir.join("bochs.log").display())
            } else if line.starts_with("display_library:") {
                "display_library: term".to_string()
            } else {
                line.to_string()
            }
        })
        .collect();
    fs::write(&config_path, config.join("\n") + "\n")
        .map_err(|e| format!("write {}: {e}", config_path.display()))?;
    fs::write(run_dir.join("continue.rc"), "c\n")
        .map_err(|e| format!("write {}: {e}", run_dir.display()))?;
    Ok(dest)
}

/// Builds the ISO (scripts/image) with `inject=on` and the guests' modules.
fn build_image(dir: &Path, guests: &Guests) -> Result<PathBuf, String> {
    let modules: Vec<(&Path, &str)> = guests
        .modules
        .iter()
        .map(|(f, w)| (f.as_path(), w.as_str()))
        .collect();
    Ok(image_with_modules(
        dir,
        "triggers=off inject=on",
        Firmware::BiosOnly,
        &modules,
    ))
}

// ---------------------------------------------------------------------------------------
// One run

/// The `inject:` line the injector printed when it fired.
#[derive(Clone, Debug, Default)]
struct Fired {
    exit: u64,
    step: u64,
    rip: String,
    detail: String,
}

/// One `recovery N:` line.
#[derive(Clone, Debug)]
struct RecoveryLine {
    number: u64,
    cause: String,
    fields: BTreeMap<String, u64>,
    line: String,
}

fn parse_recovery(line: &str) -> Option<RecoveryLine> {
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
    Some(RecoveryLine {
        number: number.parse().ok()?,
        cause,
        fields,
        line: line.to_string(),
    })
}

/// Everything one run observed, and its class.
#[derive(Clone, Debug, Default)]
struct Outcome {
    id: Option<u64>,
    seed: u64,
    fault: String,
    class: String,
    start: String,
    delay_lines: u64,
    armed: Option<(u64, u64)>,
    fired: Option<Fired>,
    failures: Vec<String>,
    failed_attempts: u64,
    recoveries: Vec<RecoveryLine>,
    halted: Option<String>,
    /// (VM, why) for each original VM lost.
    lost: Vec<(String, String)>,
    new_vm: String,
    console: String,
    cold_boot_again: bool,
    /// (phase, time since the run started): ready, inject, fired, recovered, new_vm,
    /// watched.
    timing: Vec<(&'static str, Duration)>,
    wall: Duration,
    emulator: String,
    serial_log: String,
    notes: Vec<String>,
}

impl Outcome {
    fn detected(&self) -> bool {
        !self.failures.is_empty() || !self.recoveries.is_empty() || self.halted.is_some()
    }

    fn to_json(&self) -> String {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"id\":{},\"seed\":{},\"fault\":{},\"class\":{},\"start\":{},\"delay_lines\":{},",
            self.id.map_or("null".to_string(), |i| i.to_string()),
            self.seed,
            js(&self.fault),
            js(&self.class),
            js(&self.start),
            self.delay_lines
        );
        let (armed_exit, armed_step) =
            self.armed.map_or(("null".into(), "null".into()), |(e, n)| {
                (e.to_string(), n.to_string())
            });
        let _ = write!(
            s,
            "\"inject\":{{\"armed_exit\":{armed_exit},\"armed_step\":{armed_step},\"fired\":{}",
            self.fired.is_some()
        );
        if let Some(f) = &self.fired {
            let _ = write!(
                s,
                ",\"exit\":{},\"step\":{},\"rip\":{},\"detail\":{}",
                f.exit,
                f.step,
                js(&f.rip),
                js(&f.detail)
            );
            for (k, v) in detail_fields(&f.detail) {
                let _ = write!(s, ",{}:{}", js(&k), js(&v));
            }
        }
        s.push_str("},");
        let _ = write!(
            s,
            "\"detected\":{},\"failures\":{},\"failed_attempts\":{},\"recoveries\":[",
            self.detected(),
            js_list(&self.failures),
            self.failed_attempts
        );
        for (i, r) in self.recoveries.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{{\"n\":{},\"cause\":{}", r.number, js(&r.cause));
            for (k, v) in &r.fields {
                let _ = write!(s, ",{}:{v}", js(k));
            }
            s.push('}');
        }
        let _ = write!(s, "],\"halted\":{},\"vms_lost\":[", js_opt(&self.halted));
        for (i, (vm, why)) in self.lost.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{{\"vm\":{},\"why\":{}}}", js(vm), js(why));
        }
        let _ = write!(
            s,
            "],\"new_vm\":{},\"console\":{},\"timing\":{{{}}},\"wall_s\":{:.1},\"emulator\":{},\"serial_log\":{},\"notes\":{}}}",
            js(&self.new_vm),
            js(&self.console),
            self.timing
                .iter()
                .map(|(k, t)| format!("\"{k}_s\":{:.1}", t.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(","),
            self.wall.as_secs_f64(),
            js(&self.emulator),
            js(&self.serial_log),
            js_list(&self.notes)
        );
        s
    }
}

/// `register=r10 bit=36 old=0x.. new=0x..` -> its key=value pairs (the words without
/// `=` are left in `detail`).
fn detail_fields(detail: &str) -> Vec<(String, String)> {
    detail
        .split(' ')
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| {
            matches!(
                *k,
                "register" | "bit" | "old" | "new" | "code" | "data" | "region" | "lock"
            )
        })
        .map(|(k, v)| (format!("target_{k}"), v.to_string()))
        .collect()
}

/// What the runner needs to do a run.
struct Context {
    o: Options,
    guests: Guests,
    snapshot: Option<Snapshot>,
    iso: Option<PathBuf>,
    runs_dir: PathBuf,
    out: PathBuf,
}

/// What a run watches: the console lines after the start, checked and interpreted.
struct Watch {
    w: Checker,
    o: Outcome,
    inject_re: Regex,
    armed_re: Regex,
    vm_line_re: Regex,
    /// Console line number of the first line after the saved state (or after the cold
    /// boot's steady state): a VM that starts after it booted again.
    first_run_line: usize,
    /// Console line number of the latest event progress is counted from: the command
    /// `inject`, the fault firing, a failure report, a recovery line.
    reference: usize,
    /// The text a glued `inject:` line interrupted, waiting for its rest.
    glued: Option<(String, usize)>,
    /// VM name -> state, from the latest `vm list` answer.
    vm_states: HashMap<String, String>,
    /// VM name -> why, for VMs the hypervisor stopped (or that halted, or powered off).
    stopped: HashMap<String, String>,
    /// VM name -> how, for VMs that reset.
    reboots: HashMap<String, String>,
    create_reply: Option<String>,
    inject_refused: Option<String>,
}

impl Watch {
    fn new(o: Outcome) -> Watch {
        Watch {
            w: Checker::new(),
            o,
            inject_re: Regex::new(
                r"inject: (failstop|register|code|data|hang|lock) seed=(\d+) exit=(\d+) step=(\d+) rip=(0x[0-9a-f]+) (.*)$",
            )
            .expect("valid pattern"),
            armed_re: Regex::new(
                r"^(?:lazarus> )?inject: armed (\S+) seed=(\d+): stepping starts at VM exit (\d+) from now, the fault comes at step (\d+)",
            )
            .expect("valid pattern"),
            vm_line_re: Regex::new(r"^(?:lazarus> )?([a-z0-9_-]+) id=\d+ state=(\S+)")
                .expect("valid pattern"),
            first_run_line: 0,
            reference: 0,
            glued: None,
            vm_states: HashMap::new(),
            stopped: HashMap::new(),
            reboots: HashMap::new(),
            create_reply: None,
            inject_refused: None,
        }
    }

    /// Looks at one console line of the run.
    fn line(&mut self, raw: &str) {
        let mut line = raw.to_string();
        // The rest of a line the `inject:` line was written into (it is written without
        // the console lock, README "Console lines").
        if let Some((prefix, at)) = self.glued.take() {
            if !line.starts_with('[') && !line.starts_with("lazarus> ") {
                line = format!("{prefix}{line}");
            } else if self.w.line_no < at + 50 {
                self.glued = Some((prefix, at));
            }
        }
        if let Some(c) = self.inject_re.captures(&line) {
            let at = c.get(0).expect("the whole match").start();
            let start = line[..at].rfind("[lazarus] WARN  ").unwrap_or(at);
            // The report after a recovery repeats the line: the first one counts.
            if self.o.fired.is_none() {
                self.o.fired = Some(Fired {
                    exit: c[3].parse().unwrap_or(0),
                    step: c[4].parse().unwrap_or(0),
                    rip: c[5].to_string(),
                    detail: c[6].to_string(),
                });
                self.reference = self.w.line_no;
            }
            let prefix = line[..start].to_string();
            self.w.line_no += 1;
            if !prefix.is_empty() && !prefix.starts_with("lazarus> ") {
                self.glued = Some((prefix, self.w.line_no));
            }
            return;
        }
        if let Some(c) = self.armed_re.captures(&line) {
            self.o.armed = Some((c[3].parse().unwrap_or(0), c[4].parse().unwrap_or(0)));
        } else if let Some(rest) = line
            .strip_prefix("error: inject: ")
            .or_else(|| line.strip_prefix("lazarus> error: inject: "))
        {
            self.inject_refused = Some(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("[lazarus] ERROR hypervisor failure: ") {
            self.o.failures.push(rest.to_string());
            self.reference = self.w.line_no;
        } else if line.starts_with("[lazarus] ERROR recovery attempt ") {
            self.o.failed_attempts += 1;
        } else if line.starts_with("[lazarus] INFO  recovery ") {
            if let Some(r) = parse_recovery(&line) {
                self.o.recoveries.push(r);
                self.reference = self.w.line_no;
            }
        } else if let Some(rest) = line.strip_prefix("[lazarus] ERROR halted") {
            if self.o.halted.is_none() {
                self.o.halted = Some(format!("halted{rest}"));
            }
        } else if line.starts_with("[lazarus] INFO  Lazarus ") && line.ends_with(" cold boot") {
            self.o.cold_boot_again = true;
        } else if let Some(rest) = line
            .strip_prefix("[lazarus] ERROR vm ")
            .or_else(|| line.strip_prefix("[lazarus] INFO  vm "))
            .or_else(|| line.strip_prefix("[lazarus] WARN  vm "))
        {
            let note = |map: &mut HashMap<String, String>, name: &str, why: String| {
                map.entry(name.to_string()).or_insert(why);
            };
            if let Some((name, why)) = rest.split_once(": stopped: ") {
                note(&mut self.stopped, name, format!("stopped: {why}"));
            } else if let Some((name, _)) = rest.split_once(": rebooting") {
                note(
                    &mut self.reboots,
                    name,
                    "reset (requested by the guest)".into(),
                );
            } else if let Some((name, _)) = rest.split_once(": triple fault; resetting") {
                note(&mut self.reboots, name, "triple fault, reset".into());
            } else if let Some(name) = rest.strip_suffix(": halted") {
                note(&mut self.stopped, name, "halted".into());
            } else if let Some(name) = rest.strip_suffix(": powered off") {
                note(&mut self.stopped, name, "powered off".into());
            }
        } else if let Some(c) = self.vm_line_re.captures(&line) {
            self.vm_states.insert(c[1].to_string(), c[2].to_string());
        } else if line.ends_with(&format!("vm {NEW_VM}: created"))
            || line.contains("error: vm create")
            || line.contains(&format!("error: vm {NEW_VM}:"))
        {
            self.create_reply = Some(line.clone());
        }
        self.w.observe(&line);
    }

    /// Checked steps `vm` completed after console line `since`.
    fn steps_since(&self, vm: &str, since: usize) -> u64 {
        self.w.steps_after(vm, Some(since))
    }

    /// The VMs of `vms` not known to be stopped that have done fewer than `n` steps
    /// after line `since`.
    fn waiting(&self, vms: &[String], since: usize, n: u64) -> Vec<String> {
        vms.iter()
            .filter(|vm| !self.stopped.contains_key(*vm))
            .filter(|vm| self.steps_since(vm, since) < n)
            .cloned()
            .collect()
    }

    /// Reads one console line (up to `deadline`) into the watch.
    fn read(&mut self, c: &mut Console, deadline: Instant) -> Result<(), Stall> {
        let line = c.next_line(deadline)?;
        self.line(&line);
        Ok(())
    }
}

/// Runs one injection of `fault` with `seed`. An `Err` is a problem of the campaign's
/// own (the emulator would not start, the console refused `inject`), not an outcome: the
/// run is not recorded and a resumed campaign does it again.
fn run_one(ctx: &Context, id: Option<u64>, fault: &str, seed: u64) -> Result<Outcome, String> {
    let run_dir = match id {
        Some(id) => ctx.runs_dir.join(id.to_string()),
        None => ctx.out.join("reruns").join(format!("{fault}-{seed}")),
    };
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir).map_err(|e| format!("create {}: {e}", run_dir.display()))?;
    let started = Instant::now();
    let serial_log = run_dir.join("serial.log");
    let outcome = Outcome {
        id,
        seed,
        fault: fault.to_string(),
        start: if ctx.snapshot.is_some() {
            "snapshot"
        } else {
            "cold"
        }
        .into(),
        delay_lines: delay_lines(seed),
        new_vm: "not_needed".into(),
        serial_log: serial_log
            .strip_prefix(&ctx.out)
            .unwrap_or(&serial_log)
            .display()
            .to_string(),
        ..Outcome::default()
    };
    let port = free_port()?;
    let mut watch = Watch::new(outcome);
    let mut c = if let Some(snap) = &ctx.snapshot {
        let state = state_for_run(snap, &run_dir, port)?;
        let args = [
            "-q".to_string(),
            "-r".to_string(),
            state.display().to_string(),
            "-rc".to_string(),
            "continue.rc".to_string(),
        ];
        let mut c = Console::start(&run_dir, &args, port)?;
        // The lines before the save, as if this run had seen them (a partial last line
        // goes on with what the restored machine sends).
        c.seen = snap.baseline.clone();
        while let Ok(line) = c.next_line(Instant::now()) {
            watch.w.observe(&line);
        }
        c
    } else {
        let iso = ctx.iso.as_ref().ok_or("no image")?;
        write_bochsrc(
            &run_dir,
            iso,
            port,
            ctx.o.memory_mib,
            "display_library: term",
        )?;
        let args: Vec<String> = ["-q", "-f", "bochsrc", "-rc", "continue.rc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut c = Console::start(&run_dir, &args, port)?;
        let vms = ctx.guests.vms.clone();
        wait_steady(&mut c, &mut watch.w, &vms, ctx.guests.boot_timeout())?;
        c
    };
    watch.first_run_line = watch.w.line_no;
    watch.o.timing.push(("ready", started.elapsed()));
    let result = drive(ctx, &mut c, &mut watch, fault, seed, started);
    watch.o.emulator = c.stop();
    watch.o.wall = started.elapsed();
    result?;
    classify(ctx, &mut watch, &c);
    // The copied state is not needed any more; the logs are.
    let _ = fs::remove_dir_all(run_dir.join("state"));
    Ok(watch.o)
}

/// The run once the VMs are at steady state: inject, watch, and after a recovery create
/// the new VM at once (it boots while the old VMs are watched), then ask the console
/// for every VM's state.
fn drive(
    ctx: &Context,
    c: &mut Console,
    watch: &mut Watch,
    fault: &str,
    seed: u64,
    started: Instant,
) -> Result<(), String> {
    let vms = ctx.guests.vms.clone();
    // A few more workload lines, as many as the seed says, so that injections start at
    // different points of what the guests do.
    let target = watch.w.workload_lines + watch.o.delay_lines;
    let deadline = Instant::now() + Duration::from_secs(60);
    while watch.w.workload_lines < target && watch.read(c, deadline).is_ok() {}
    watch.reference = watch.w.line_no;
    let armed_at = watch.w.line_no;
    watch.o.timing.push(("inject", started.elapsed()));
    if !c.send_line(&format!("inject {fault} {seed}")) {
        watch.o.console = "closed".into();
        return Ok(());
    }
    // Watch until every VM has done its steps after the fault (and after the last
    // recovery) and the new VM has run, or the window ends, the hypervisor halts, the
    // console closes.
    // A fault may show itself only when the console is asked (the `vm list` below):
    // its answer is then lost with the dead instance, and the run goes on as after any
    // recovery, in a second round (the new VM, then `vm list` again).
    for round in 0..2 {
        let detected_before = watch.o.detected();
        let window_end = Instant::now() + ctx.o.window;
        let mut new_vm_end: Option<Instant> = None;
        let mut halted_at: Option<Instant> = None;
        loop {
            if let Some(why) = &watch.inject_refused {
                return Err(format!("the console refused the injection: {why}"));
            }
            if halted_at.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
                break;
            }
            if watch.o.fired.is_some() && !watch.o.timing.iter().any(|(k, _)| *k == "fired") {
                watch.o.timing.push(("fired", started.elapsed()));
            }
            let recovered = !watch.o.recoveries.is_empty();
            if recovered && new_vm_end.is_none() && watch.o.halted.is_none() {
                watch.o.timing.push(("recovered", started.elapsed()));
                if !c.send_line(&ctx.guests.create_command()) {
                    break;
                }
                new_vm_end = Some(Instant::now() + ctx.guests.new_vm_timeout());
                watch.o.new_vm = "pending".into();
            }
            if watch.o.new_vm == "pending" {
                if let Some(result) = new_vm_result(watch) {
                    watch.o.timing.push(("new_vm", started.elapsed()));
                    watch.o.new_vm = result;
                }
            }
            let detected = watch.o.detected();
            let went_on = if watch.o.fired.is_some() || detected {
                (!detected || recovered)
                    && watch.o.halted.is_none()
                    && watch
                        .waiting(&vms, watch.reference, STEADY_STEPS)
                        .is_empty()
            } else {
                // Not fired after twice the steps: it will not (no VM exits, say).
                watch.waiting(&vms, armed_at, 2 * STEADY_STEPS).is_empty()
            };
            if went_on && watch.o.new_vm != "pending" {
                break;
            }
            // The old VMs have the window; a new VM has its own time to boot.
            let deadline = match new_vm_end {
                Some(end) if watch.o.new_vm == "pending" => end.max(window_end),
                _ => window_end,
            };
            match watch.read(c, deadline) {
                Ok(()) => {
                    if watch.o.halted.is_some() && halted_at.is_none() {
                        halted_at = Some(Instant::now());
                    }
                }
                Err(Stall::Timeout) | Err(Stall::Closed) => break,
            }
        }
        if watch.o.new_vm == "pending" {
            watch.o.new_vm = if watch.o.halted.is_some() {
                "failed: the hypervisor halted".into()
            } else if c.eof || c.exited() {
                "failed: the console closed".into()
            } else {
                format!(
                    "failed: no checked workload step within {} s{}",
                    ctx.guests.new_vm_timeout().as_secs(),
                    if watch.create_reply.is_none() {
                        " (no reply to vm create)"
                    } else {
                        ""
                    }
                )
            };
        }
        watch.o.timing.retain(|(k, _)| *k != "watched");
        watch.o.timing.push(("watched", started.elapsed()));
        if c.eof || c.exited() {
            watch.o.console = "closed".into();
            return Ok(());
        }
        if watch.o.halted.is_some() {
            watch.o.console = "halted".into();
            return Ok(());
        }
        // Does the console still answer? `vm list` names every VM with its state.
        let mut all = vms.clone();
        if watch
            .create_reply
            .as_deref()
            .is_some_and(|r| r.ends_with("created"))
        {
            all.push(NEW_VM.to_string());
        }
        watch.o.console = if probe(c, watch, &all, Duration::from_secs(20)) {
            "answered"
        } else if c.eof || c.exited() {
            "closed"
        } else {
            "silent"
        }
        .into();
        if round == 0
            && watch.o.console == "silent"
            && !detected_before
            && watch.o.detected()
            && watch.o.halted.is_none()
        {
            watch.o.notes.push(
                "the fault showed itself when the console was asked `vm list`; watched again"
                    .into(),
            );
            continue;
        }
        break;
    }
    Ok(())
}

/// Sends `vm list` and waits for the state line of each of `vms`. False when the
/// console does not answer within `timeout`.
fn probe(c: &mut Console, watch: &mut Watch, vms: &[String], timeout: Duration) -> bool {
    watch.vm_states.clear();
    if !c.send_line("vm list") {
        return false;
    }
    let deadline = Instant::now() + timeout;
    while !vms.iter().all(|vm| watch.vm_states.contains_key(vm)) {
        if watch.read(c, deadline).is_err() {
            return false;
        }
    }
    true
}

/// The new VM's result once it is known: `ok` at its first checked step, or what went
/// wrong.
fn new_vm_result(watch: &Watch) -> Option<String> {
    if let Some(reply) = watch
        .create_reply
        .as_ref()
        .filter(|r| !r.ends_with("created"))
    {
        return Some(format!("failed: {reply}"));
    }
    if let Some(p) = watch.w.vms.get(NEW_VM).and_then(|v| v.problems.first()) {
        return Some(format!("failed: {p}"));
    }
    if watch.w.steps_after(NEW_VM, None) >= 1 {
        return Some("ok".into());
    }
    if let Some(why) = watch
        .stopped
        .get(NEW_VM)
        .or_else(|| watch.reboots.get(NEW_VM))
    {
        return Some(format!("failed: {why}"));
    }
    watch
        .o
        .halted
        .as_ref()
        .map(|_| "failed: the hypervisor halted".to_string())
}

/// Decides the run's class from what it saw (docs/campaign.md, "Classes").
fn classify(ctx: &Context, watch: &mut Watch, c: &Console) {
    let vms = &ctx.guests.vms;
    let since = watch.reference;
    let answered = watch.o.console == "answered";
    let mut lost: Vec<(String, String)> = Vec::new();
    for vm in vms {
        let work = watch.w.vms.get(vm);
        let why = if let Some(why) = watch.stopped.get(vm) {
            Some(why.clone())
        } else if let Some(why) = watch.reboots.get(vm) {
            Some(why.clone())
        } else if work.is_some_and(|v| v.boots.iter().any(|&b| b >= watch.first_run_line)) {
            Some("booted again (its init started again)".to_string())
        } else if let Some(p) = work.and_then(|v| v.problems.first()) {
            Some(format!("workload wrong: {p}"))
        } else if let Some(state) = watch
            .vm_states
            .get(vm)
            .filter(|s| !matches!(s.as_str(), "running" | "idle"))
        {
            Some(format!("state={state} in vm list"))
        } else if answered && watch.steps_since(vm, since) < STEADY_STEPS {
            Some(format!(
                "no progress: {} checked steps in the window after the fault",
                watch.steps_since(vm, since)
            ))
        } else {
            None
        };
        if let Some(why) = why {
            lost.push((vm.clone(), why));
        }
    }
    let progressed = vms.iter().any(|vm| watch.steps_since(vm, since) >= 1);
    let o = &mut watch.o;
    if o.cold_boot_again {
        o.notes
            .push("the whole machine booted again (a cold boot line)".into());
    }
    o.class = if !o.detected() {
        if !answered || o.cold_boot_again || !progressed {
            "undetected_hang"
        } else if !lost.is_empty() {
            "silent_corruption"
        } else {
            "not_manifested"
        }
    } else if o.halted.is_some()
        || o.recoveries.is_empty()
        || !answered
        || o.cold_boot_again
        || lost.len() > 1
        || o.new_vm != "ok"
    {
        "recovery_failed"
    } else if lost.len() == 1 {
        "recovered_one_vm_lost"
    } else {
        "recovered"
    }
    .to_string();
    // Output that never completes a line (a fault in the console's own code) is not
    // silence: say so.
    let tail = &c.seen[c.cursor.min(c.seen.len())..];
    if tail.len() > 500 {
        let shown: String = tail
            .chars()
            .rev()
            .take(300)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        o.notes.push(format!(
            "the console kept sending ({} bytes after its last complete line), e.g.: {:?}",
            tail.len(),
            shown
        ));
    }
    if o.class != "not_manifested" && o.class != "recovered" {
        o.notes.push(format!(
            "console, last {EXCERPT_LINES} lines:\n{}",
            c.excerpt(EXCERPT_LINES)
        ));
    }
    o.lost = lost;
}

// ---------------------------------------------------------------------------------------
// The campaign: plan, resume, parallel runs, records

/// What identifies a campaign (OUT/campaign.json): runs of two campaigns never mix.
#[derive(Clone, Debug, PartialEq)]
struct Meta {
    plan: String,
    seed: u64,
    guests: String,
    kernel: String,
}

impl Meta {
    fn to_json(&self, o: &Options) -> String {
        format!(
            "{{\"plan\":{},\"seed\":{},\"guests\":{},\"kernel\":{},\"window_s\":{},\"memory_mib\":{},\"start\":{}}}\n",
            js(&self.plan),
            self.seed,
            js(&self.guests),
            js(&self.kernel),
            o.window.as_secs_f64(),
            o.memory_mib,
            js(if o.cold { "cold" } else { "snapshot" })
        )
    }

    fn read(dir: &Path) -> Option<Meta> {
        let text = fs::read_to_string(dir.join("campaign.json")).ok()?;
        let j = parse_json(text.trim()).ok()?;
        Some(Meta {
            plan: j.str("plan")?.to_string(),
            seed: j.u64("seed")?,
            guests: j.str("guests")?.to_string(),
            kernel: j.str("kernel").unwrap_or("").to_string(),
        })
    }
}

/// Builds the hypervisor (`cargo kernel`) so that its digest names what the campaign
/// injects into (scripts/image would build it too, later).
fn build_kernel() -> Result<(), String> {
    let status = Command::new("cargo")
        .current_dir(root())
        .args(["kernel", "--quiet"])
        .status()
        .map_err(|e| format!("cargo kernel: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("cargo kernel failed".into())
    }
}

/// The SHA-256 (first 16 hex digits) of the hypervisor ELF the campaign injects into.
fn kernel_digest() -> String {
    use sha2::Digest;
    let path = root().join("target/x86_64-unknown-none/release/lazarus");
    match fs::read(&path) {
        Ok(bytes) => sha2::Sha256::digest(&bytes)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => "unknown".to_string(),
    }
}

/// The records of a records file (lines that do not parse are reported and skipped).
fn read_records(path: &Path) -> Vec<Json> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_json(line) {
            Ok(j) if j.u64("id").is_some() => records.push(j),
            Ok(_) => eprintln!(
                "campaign: {}:{}: a record without an id",
                path.display(),
                i + 1
            ),
            Err(e) => eprintln!("campaign: {}:{}: not JSON ({e})", path.display(), i + 1),
        }
    }
    records
}

/// Adjusts the options from OUT/campaign.json when resuming: what was not given on the
/// command line is the campaign's; what was given must agree with it.
fn meta_for(o: &mut Options) -> Result<Meta, String> {
    let kernel = kernel_digest();
    let old = Meta::read(&o.out);
    if let Some(old) = &old {
        if !o.plan_given {
            o.plan = parse_plan(&old.plan)?;
            o.plan_text = plan_text(&o.plan);
        }
        if !o.seed_given {
            o.seed = old.seed;
        }
        if !o.guests_given {
            o.test_guests = old.guests == "test";
        }
    }
    apply_guest_defaults(o);
    let meta = Meta {
        plan: o.plan_text.clone(),
        seed: o.seed,
        guests: if o.test_guests { "test" } else { "linux" }.to_string(),
        kernel,
    };
    if let Some(old) = old {
        if (&old.plan, old.seed, &old.guests) != (&meta.plan, meta.seed, &meta.guests) {
            return Err(format!(
                "{} holds another campaign (plan {}, seed {}, {} guests): use another --out",
                o.out.display(),
                old.plan,
                old.seed,
                old.guests
            ));
        }
        if old.kernel != meta.kernel && o.action == Action::Run {
            return Err(format!(
                "the hypervisor changed since the campaign in {} started (kernel {} then, {} now): \
                 its runs would not be comparable; use another --out",
                o.out.display(),
                old.kernel,
                meta.kernel
            ));
        }
    }
    Ok(meta)
}

fn apply_guest_defaults(o: &mut Options) {
    if o.test_guests {
        if !o.window_given {
            o.window = Duration::from_secs(40);
        }
        if !o.memory_given {
            o.memory_mib = 256;
        }
    }
}

/// The snapshot of OUT (made when missing or made for another kernel).
fn ensure_snapshot(o: &Options, guests: &Guests, meta: &Meta) -> Result<Snapshot, String> {
    let dir = o.out.join("snapshot");
    let stamp = format!("{} {} {}", meta.kernel, meta.guests, o.memory_mib);
    let made_for = fs::read_to_string(dir.join("made-for")).unwrap_or_default();
    if made_for == stamp {
        if let Some(s) = load_snapshot(&dir) {
            return Ok(s);
        }
    } else if o.action == Action::Rerun {
        // A rerun repeats a campaign's run: from the campaign's own machine, whatever
        // hypervisor the tree builds now.
        if let Some(s) = load_snapshot(&dir) {
            if !made_for.starts_with(&meta.kernel) {
                eprintln!(
                    "campaign: note: rerunning from the campaign's saved machine (made for {made_for}), not the hypervisor built now ({})",
                    meta.kernel
                );
            }
            return Ok(s);
        }
    }
    let snap = make_snapshot(o, guests, &dir)?;
    fs::write(dir.join("made-for"), stamp).map_err(|e| format!("write made-for: {e}"))?;
    Ok(snap)
}

/// Counts of each class, for the progress line.
fn tally_line(tally: &BTreeMap<String, u64>) -> String {
    let short = [
        ("recovered", "recovered"),
        ("recovered_one_vm_lost", "1-lost"),
        ("recovery_failed", "failed"),
        ("not_manifested", "not-manifested"),
        ("silent_corruption", "silent"),
        ("undetected_hang", "hang"),
    ];
    short
        .iter()
        .map(|(k, s)| format!("{} {s}", tally.get(*k).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn run_campaign(mut o: Options) -> Result<bool, String> {
    fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    build_kernel()?;
    let meta = meta_for(&mut o)?;
    fs::write(o.out.join("campaign.json"), meta.to_json(&o))
        .map_err(|e| format!("write campaign.json: {e}"))?;
    start_reaper(&o.out);
    let schedule = schedule(&o.plan);
    let records_path = o.out.join("records.jsonl");
    let done: HashSet<u64> = read_records(&records_path)
        .iter()
        .filter_map(|r| r.u64("id"))
        .collect();
    let (k, n) = o.shard;
    let mut todo: VecDeque<u64> = (0..schedule.len() as u64)
        .filter(|id| id % n == k - 1)
        .filter(|id| !done.contains(id))
        .collect();
    if let Some(max) = o.max_runs {
        todo.truncate(max);
    }
    let planned: Vec<u64> = (0..schedule.len() as u64)
        .filter(|id| id % n == k - 1)
        .collect();
    let recorded = planned.iter().filter(|id| done.contains(id)).count();
    eprintln!(
        "campaign: {} runs planned{} ({}), seed {}, {} guests; {recorded} recorded, {} to run, {} at a time; records in {}",
        planned.len(),
        if n > 1 { format!(" in shard {k}/{n}") } else { String::new() },
        o.plan_text,
        o.seed,
        meta.guests,
        todo.len(),
        o.jobs.min(todo.len().max(1)),
        records_path.display()
    );
    if !todo.is_empty() {
        let guests = Guests::new(o.test_guests);
        let (snapshot, iso) = if o.cold {
            let dir = o.out.join("image");
            fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            (None, Some(build_image(&dir, &guests)?))
        } else {
            (Some(ensure_snapshot(&o, &guests, &meta)?), None)
        };
        let ctx = Arc::new(Context {
            o: o.clone(),
            guests,
            snapshot,
            iso,
            runs_dir: o.out.join("runs"),
            out: o.out.clone(),
        });
        run_parallel(&ctx, todo, &schedule, &records_path)?;
    }
    let ok = write_report(&o.out, &o.out)?;
    Ok(ok)
}

/// Runs `todo` on `jobs` threads, one emulator each; the main thread records. A run that
/// fails for the campaign's own reasons (an emulator that would not start) is tried once
/// more, then left unrecorded.
fn run_parallel(
    ctx: &Arc<Context>,
    todo: VecDeque<u64>,
    schedule: &[String],
    records_path: &Path,
) -> Result<(), String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let o = &ctx.o;
    let total = todo.len();
    let jobs = o.jobs.min(total);
    let queue = Arc::new(Mutex::new(
        todo.into_iter()
            .map(|id| (id, 0u32))
            .collect::<VecDeque<_>>(),
    ));
    // Runs not finally done (recorded or given up).
    let outstanding = Arc::new(AtomicUsize::new(total));
    let (tx, rx) = mpsc::channel::<(u64, u32, Result<Outcome, String>)>();
    let started = Instant::now();
    let session_start = now_unix();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let ctx = Arc::clone(ctx);
        let queue = Arc::clone(&queue);
        let outstanding = Arc::clone(&outstanding);
        let tx = tx.clone();
        let schedule = schedule.to_vec();
        workers.push(std::thread::spawn(move || loop {
            if ctx.o.stop_after.is_some_and(|d| started.elapsed() > d) {
                return;
            }
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            let Some((id, tries)) = next else {
                if outstanding.load(Ordering::SeqCst) == 0 {
                    return;
                }
                // A retry may come back.
                std::thread::sleep(Duration::from_millis(500));
                continue;
            };
            let fault = &schedule[id as usize];
            let result = run_one(&ctx, Some(id), fault, run_seed(ctx.o.seed, id));
            if tx.send((id, tries, result)).is_err() {
                return;
            }
        }));
    }
    drop(tx);
    let mut records = OpenOptions::new()
        .create(true)
        .append(true)
        .open(records_path)
        .map_err(|e| format!("open {}: {e}", records_path.display()))?;
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut finished = 0usize;
    let mut given_up = Vec::new();
    for (id, tries, result) in rx {
        let fault = &schedule[id as usize];
        match result {
            Ok(outcome) => {
                finished += 1;
                writeln!(records, "{}", outcome.to_json())
                    .and_then(|_| records.flush())
                    .map_err(|e| format!("write {}: {e}", records_path.display()))?;
                *tally.entry(outcome.class.clone()).or_default() += 1;
                eprintln!(
                    "campaign: {finished:>4}/{total} #{id} {fault} seed={} {} ({}; {:.0} s) | {}",
                    outcome.seed,
                    outcome.class,
                    outcome.short(),
                    outcome.wall.as_secs_f64(),
                    tally_line(&tally)
                );
                outstanding.fetch_sub(1, Ordering::SeqCst);
            }
            Err(e) if tries == 0 => {
                eprintln!("campaign: #{id} {fault}: {e}; trying it once more");
                queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((id, 1));
            }
            Err(e) => {
                eprintln!("campaign: #{id} {fault}: {e}; giving up on it (not recorded)");
                given_up.push(id);
                outstanding.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let session = format!(
        "{{\"start\":{session_start:.0},\"end\":{:.0},\"wall_s\":{wall:.1},\"runs\":{finished},\"jobs\":{jobs},\"start_mode\":{}}}\n",
        now_unix(),
        js(if o.cold { "cold" } else { "snapshot" })
    );
    let _ = OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.out.join("sessions.jsonl"))
        .and_then(|mut f| f.write_all(session.as_bytes()));
    eprintln!(
        "campaign: {finished} runs in {:.1} min ({:.0} runs/hour with {jobs} emulators){}",
        wall / 60.0,
        if wall > 0.0 {
            finished as f64 * 3600.0 / wall
        } else {
            0.0
        },
        if given_up.is_empty() {
            String::new()
        } else {
            format!("; not recorded (campaign problems, see above): {given_up:?}")
        }
    );
    Ok(())
}

impl Outcome {
    /// A few words on what happened, for the progress line.
    fn short(&self) -> String {
        let lost = if self.lost.is_empty() {
            String::new()
        } else {
            format!(
                " lost={}",
                self.lost
                    .iter()
                    .map(|(v, _)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let text = match (self.recoveries.first(), self.lost.first(), &self.halted) {
            (_, _, Some(h)) => h.clone(),
            (Some(r), _, _) => format!(
                "cause={} latency={}{lost}{}",
                r.cause,
                r.fields.get("latency").copied().unwrap_or(0),
                if self.new_vm != "ok" {
                    format!(" new VM {}", self.new_vm)
                } else {
                    String::new()
                }
            ),
            (None, Some((vm, why)), _) => format!("{vm}: {why}"),
            (None, None, _) if !self.failures.is_empty() => self.failures[0].clone(),
            (None, None, _) if self.fired.is_none() && self.console == "answered" => {
                "did not fire".to_string()
            }
            (None, None, _) if self.fired.is_none() => {
                format!("no inject line seen, console {}", self.console)
            }
            (None, None, _) => format!("console {}", self.console),
        };
        text.chars().take(110).collect()
    }
}

/// `--rerun ID` or `--rerun TYPE:SEED`: one run, printed, kept in OUT/reruns.jsonl.
fn rerun(mut o: Options) -> Result<bool, String> {
    let what = o.rerun.clone().unwrap_or_default();
    fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    build_kernel()?;
    let (id, fault, seed) = if let Some((fault, seed)) = what.split_once(':') {
        if !FAULT_TYPES.contains(&fault) {
            return Err(format!("--rerun: unknown fault type '{fault}'"));
        }
        let seed: u64 = seed
            .parse()
            .map_err(|_| format!("--rerun: bad seed '{seed}'"))?;
        apply_guest_defaults(&mut o);
        (None, fault.to_string(), seed)
    } else {
        let id: u64 = what
            .parse()
            .map_err(|_| format!("--rerun: '{what}' is neither a run id nor TYPE:SEED"))?;
        if Meta::read(&o.out).is_none() {
            return Err(format!(
                "--rerun {id}: no campaign in {} (its campaign.json names the plan and seed)",
                o.out.display()
            ));
        }
        let _ = meta_for(&mut o)?;
        let schedule = schedule(&o.plan);
        let fault = schedule
            .get(id as usize)
            .ok_or(format!("--rerun: the plan has {} runs", schedule.len()))?
            .clone();
        (Some(id), fault, run_seed(o.seed, id))
    };
    let meta = Meta {
        plan: o.plan_text.clone(),
        seed: o.seed,
        guests: if o.test_guests { "test" } else { "linux" }.to_string(),
        kernel: kernel_digest(),
    };
    start_reaper(&o.out);
    let guests = Guests::new(o.test_guests);
    let (snapshot, iso) = if o.cold {
        let dir = o.out.join("image");
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        (None, Some(build_image(&dir, &guests)?))
    } else {
        (Some(ensure_snapshot(&o, &guests, &meta)?), None)
    };
    let ctx = Context {
        o: o.clone(),
        guests,
        snapshot,
        iso,
        runs_dir: o.out.join("reruns"),
        out: o.out.clone(),
    };
    eprintln!("campaign: rerun {what}: {fault} seed={seed}");
    // Reruns live in OUT/reruns/TYPE-SEED, whatever their id.
    let mut outcome = run_one(&ctx, None, &fault, seed)?;
    outcome.id = id;
    let json = outcome.to_json();
    println!("{json}");
    let _ = OpenOptions::new()
        .create(true)
        .append(true)
        .open(o.out.join("reruns.jsonl"))
        .and_then(|mut f| writeln!(f, "{json}"));
    eprintln!(
        "campaign: {} ({}); serial log {}",
        outcome.class,
        outcome
            .recoveries
            .iter()
            .map(|r| r.line.trim_start_matches("[lazarus] INFO  ").to_string())
            .chain(outcome.lost.iter().map(|(v, w)| format!("{v}: {w}")))
            .collect::<Vec<_>>()
            .join("; "),
        o.out.join(&outcome.serial_log).display()
    );
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// The summary: rates per fault type with Wilson intervals, against DESIGN section 9

/// The Wilson score interval (95%) of `k` successes in `n` trials, as fractions.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_964);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

fn pct(k: u64, n: u64) -> String {
    if n == 0 {
        return "—".to_string();
    }
    let (lo, hi) = wilson(k, n);
    format!(
        "{:.1}% [{:.1}, {:.1}] ({k}/{n})",
        100.0 * k as f64 / n as f64,
        100.0 * lo,
        100.0 * hi
    )
}

/// Per fault type: counts per class and the figures the report gives.
#[derive(Default, Clone)]
struct TypeStats {
    runs: u64,
    classes: BTreeMap<String, u64>,
    latencies: Vec<u64>,
    wall: f64,
}

impl TypeStats {
    fn class(&self, c: &str) -> u64 {
        self.classes.get(c).copied().unwrap_or(0)
    }
    fn manifested(&self) -> u64 {
        self.runs - self.class("not_manifested")
    }
    fn success(&self) -> u64 {
        self.class("recovered") + self.class("recovered_one_vm_lost")
    }
    fn no_vm_lost(&self) -> u64 {
        self.class("recovered")
    }
}

/// The anchors of DESIGN section 9: (fault, measure) -> (ReHype, NiLiHype, goal), in %.
const TARGETS: [(&str, &str, f64, f64, f64); 6] = [
    ("failstop", "recovered", 98.9, 98.6, 99.5),
    ("register", "recovered", 96.3, 94.5, 97.0),
    ("code", "recovered", 90.7, 88.7, 95.0),
    ("failstop", "no VM lost", 95.0, 94.6, 98.0),
    ("register", "no VM lost", 92.9, 91.8, 96.0),
    ("code", "no VM lost", 85.2, 83.9, 92.0),
];

/// Writes OUT/summary.md, OUT/summary.json and (with python3-matplotlib) OUT/chart.png
/// from the records of `from`. True when every fail-stop run recovered.
fn write_report(from: &Path, out: &Path) -> Result<bool, String> {
    let records = read_records(&from.join("records.jsonl"));
    let meta = Meta::read(from);
    let mut by_type: BTreeMap<usize, (String, TypeStats)> = BTreeMap::new();
    for r in &records {
        let fault = r.str("fault").unwrap_or("?").to_string();
        let rank = FAULT_TYPES.iter().position(|f| *f == fault).unwrap_or(99);
        let t = &mut by_type
            .entry(rank)
            .or_insert_with(|| (fault, TypeStats::default()))
            .1;
        t.runs += 1;
        *t.classes
            .entry(r.str("class").unwrap_or("?").to_string())
            .or_default() += 1;
        if let Some(l) = r.arr("recoveries").first().and_then(|x| x.u64("latency")) {
            t.latencies.push(l);
        }
        t.wall += r.f64("wall_s").unwrap_or(0.0);
    }
    let mut all = TypeStats::default();
    for (_, t) in by_type.values() {
        all.runs += t.runs;
        for (c, n) in &t.classes {
            *all.classes.entry(c.clone()).or_default() += n;
        }
        all.latencies.extend(&t.latencies);
        all.wall += t.wall;
    }
    let mut s = String::new();
    let _ = writeln!(s, "# Fault-injection campaign\n");
    if let Some(m) = &meta {
        let total: u64 = parse_plan(&m.plan)
            .map(|p| p.iter().map(|(_, n)| n).sum())
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "Plan `{}` ({total} runs), base seed {}, {} guests ({}), hypervisor `{}`: {} runs recorded.\n",
            m.plan,
            m.seed,
            m.guests,
            if m.guests == "linux" {
                "three Linux VMs web, db, cache"
            } else {
                "three test guests alpha, beta, gamma"
            },
            m.kernel,
            records.len()
        );
    }
    // Speed.
    let sessions: Vec<Json> = fs::read_to_string(from.join("sessions.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| parse_json(l).ok())
        .collect();
    let session_wall: f64 = sessions.iter().filter_map(|j| j.f64("wall_s")).sum();
    let session_runs: u64 = sessions.iter().filter_map(|j| j.u64("runs")).sum();
    if session_wall > 0.0 {
        let jobs: Vec<String> = sessions
            .iter()
            .filter_map(|j| j.u64("jobs"))
            .map(|j| j.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(
            s,
            "Took {:.1} min of wall time in {} session(s) ({} emulators at a time): {:.0} runs/hour; \
             {:.1} s per run on average (each run's own wall time).\n",
            session_wall / 60.0,
            sessions.len(),
            jobs.join("/"),
            session_runs as f64 * 3600.0 / session_wall,
            if all.runs > 0 { all.wall / all.runs as f64 } else { 0.0 }
        );
    }
    let _ = writeln!(s, "## Outcomes\n");
    let _ = writeln!(
        s,
        "| fault | runs | not manifested | silent corruption | recovered | recovered, 1 VM lost | recovery failed | undetected hang |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    let rows: Vec<(String, TypeStats)> = by_type
        .values()
        .cloned()
        .chain(std::iter::once(("**all**".to_string(), all.clone())))
        .collect();
    for (fault, t) in &rows {
        let _ = write!(s, "| {fault} | {} |", t.runs);
        for c in CLASSES {
            let _ = write!(s, " {} |", t.class(c));
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nSuccess = recovered + recovered with one VM lost (the NiLiHype criterion). Rates \
         with their 95% Wilson score interval, over the manifested runs (not manifested \
         excluded, as the ReHype and NiLiHype papers count) and over all runs.\n"
    );
    let _ = writeln!(
        s,
        "| fault | manifested | success / manifested | no VM lost / manifested | success / all runs | no VM lost / all runs |\n|---|---:|---|---|---|---|"
    );
    for (fault, t) in &rows {
        let _ = writeln!(
            s,
            "| {fault} | {} | {} | {} | {} | {} |",
            t.manifested(),
            pct(t.success(), t.manifested()),
            pct(t.no_vm_lost(), t.manifested()),
            pct(t.success(), t.runs),
            pct(t.no_vm_lost(), t.runs)
        );
    }
    let _ = writeln!(s, "\n## Against DESIGN section 9 (over manifested runs)\n");
    let _ = writeln!(
        s,
        "| measure | ReHype | NiLiHype | Lazarus goal | this campaign |\n|---|---:|---:|---:|---|"
    );
    let stats_of = |f: &str| {
        by_type
            .values()
            .find(|(n, _)| n == f)
            .map(|(_, t)| t.clone())
    };
    for (fault, measure, rehype, nilihype, goal) in TARGETS {
        let this = stats_of(fault).map_or("no runs".to_string(), |t| {
            let k = if measure == "recovered" {
                t.success()
            } else {
                t.no_vm_lost()
            };
            pct(k, t.manifested())
        });
        let _ = writeln!(
            s,
            "| {measure}, {fault} | {rehype}% | {nilihype}% | >= {goal}% | {this} |"
        );
    }
    // Latency.
    let _ = writeln!(
        s,
        "\n## Recovery latency (first recovery of each run; TSC cycles, Bochs: ~50 per µs)\n"
    );
    let _ = writeln!(
        s,
        "| fault | recoveries | median | max |\n|---|---:|---:|---:|"
    );
    for (fault, t) in &rows {
        let mut v = t.latencies.clone();
        v.sort_unstable();
        if let (Some(max), false) = (v.last(), v.is_empty()) {
            let _ = writeln!(s, "| {fault} | {} | {} | {max} |", v.len(), v[v.len() / 2]);
        }
    }
    // The runs to look at.
    let bad: Vec<&Json> = records
        .iter()
        .filter(|r| !matches!(r.str("class"), Some("recovered") | Some("not_manifested")))
        .collect();
    if !bad.is_empty() {
        let _ = writeln!(
            s,
            "\n## Runs to study ({}; `scripts/campaign --out DIR --rerun ID` runs one again)\n",
            bad.len()
        );
        let _ = writeln!(
            s,
            "| id | fault | seed | class | what | serial log |\n|---:|---|---:|---|---|---|"
        );
        let mut bad = bad;
        bad.sort_by_key(|r| (r.str("class").map(str::to_string), r.u64("id")));
        for r in bad {
            let inject = r.get("inject");
            let detail = inject
                .and_then(|i| i.str("detail"))
                .unwrap_or("no line seen (it may have been cut or kept in a lost report)");
            let lost: Vec<String> = r
                .arr("vms_lost")
                .iter()
                .map(|v| {
                    format!(
                        "{}: {}",
                        v.str("vm").unwrap_or("?"),
                        v.str("why").unwrap_or("?")
                    )
                })
                .collect();
            let what = [
                format!("inject: {detail}"),
                r.arr("failures")
                    .first()
                    .and_then(|f| match f {
                        Json::Str(s) => Some(format!("failure: {s}")),
                        _ => None,
                    })
                    .unwrap_or_default(),
                r.str("halted").map(|h| h.to_string()).unwrap_or_default(),
                lost.join("; "),
                match r.str("new_vm") {
                    Some("ok") | Some("not_needed") | None => String::new(),
                    Some(v) => format!("new VM {v}"),
                },
            ]
            .into_iter()
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
            .replace('|', "\\|");
            let what: String = what.chars().take(300).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {what} | `{}` |",
                r.u64("id").unwrap_or(0),
                r.str("fault").unwrap_or("?"),
                r.u64("seed").unwrap_or(0),
                r.str("class").unwrap_or("?"),
                r.str("serial_log").unwrap_or("?")
            );
        }
    }
    fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    fs::write(out.join("summary.md"), &s).map_err(|e| format!("write summary.md: {e}"))?;
    // summary.json, for the chart.
    let mut j = String::from("{\"types\":[");
    for (i, (fault, t)) in by_type.values().enumerate() {
        if i > 0 {
            j.push(',');
        }
        let (slo, shi) = wilson(t.success(), t.manifested());
        let (nlo, nhi) = wilson(t.no_vm_lost(), t.manifested());
        let rate = |k: u64| {
            if t.manifested() > 0 {
                k as f64 / t.manifested() as f64
            } else {
                0.0
            }
        };
        let _ = write!(
            j,
            "{{\"fault\":{},\"runs\":{},\"manifested\":{},\"success\":{},\"no_vm_lost\":{},\
             \"success_rate\":{:.4},\"success_lo\":{slo:.4},\"success_hi\":{shi:.4},\
             \"no_vm_lost_rate\":{:.4},\"no_vm_lost_lo\":{nlo:.4},\"no_vm_lost_hi\":{nhi:.4}}}",
            js(fault),
            t.runs,
            t.manifested(),
            t.success(),
            t.no_vm_lost(),
            rate(t.success()),
            rate(t.no_vm_lost())
        );
    }
    j.push_str("],\"targets\":[");
    for (i, (fault, measure, rehype, nilihype, goal)) in TARGETS.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        let _ = write!(
            j,
            "{{\"fault\":{},\"measure\":{},\"rehype\":{rehype},\"nilihype\":{nilihype},\"goal\":{goal}}}",
            js(fault),
            js(measure)
        );
    }
    let _ = write!(
        j,
        "],\"title\":{}}}",
        js(&meta.map_or(String::new(), |m| format!(
            "{} runs, {} guests, seed {}",
            records.len(),
            m.guests,
            m.seed
        )))
    );
    fs::write(out.join("summary.json"), j + "\n")
        .map_err(|e| format!("write summary.json: {e}"))?;
    chart(out);
    eprintln!(
        "campaign: summary in {} ({} runs)",
        out.join("summary.md").display(),
        records.len()
    );
    let failstop_ok = by_type
        .values()
        .filter(|(f, _)| f == "failstop")
        .all(|(_, t)| t.success() == t.runs);
    Ok(failstop_ok)
}

/// Draws OUT/chart.png from OUT/summary.json with matplotlib, when it is installed.
fn chart(out: &Path) {
    const SCRIPT: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
src, dst = sys.argv[1], sys.argv[2]
d = json.load(open(src))
types = d["types"]
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
for ax, key, measure, title in [(axes[0], "success", "recovered", "Recovered (success), over manifested runs"),
                                (axes[1], "no_vm_lost", "no VM lost", "Recovered with no VM lost, over manifested runs")]:
    names = [t["fault"] for t in types]
    x = list(range(len(names)))
    w = 0.2
    vals = [100 * t[key + "_rate"] if t["manifested"] else 0 for t in types]
    lo = [100 * (t[key + "_rate"] - t[key + "_lo"]) if t["manifested"] else 0 for t in types]
    hi = [100 * (t[key + "_hi"] - t[key + "_rate"]) if t["manifested"] else 0 for t in types]
    ax.bar([i - 1.5 * w for i in x], vals, w, yerr=[lo, hi], capsize=4, color="#2b6cb0", label="Lazarus (this campaign, 95% CI)")
    for off, name, color in [(-0.5, "rehype", "#a0aec0"), (0.5, "nilihype", "#718096"), (1.5, "goal", "#38a169")]:
        xs, ys = [], []
        for i, t in enumerate(types):
            for tg in d["targets"]:
                if tg["fault"] == t["fault"] and tg["measure"] == measure:
                    xs.append(i + off * w); ys.append(tg[name])
        label = {"rehype": "ReHype", "nilihype": "NiLiHype", "goal": "Lazarus goal"}[name]
        ax.bar(xs, ys, w, color=color, label=label)
    for i, t in enumerate(types):
        ax.text(i - 1.5 * w, 2, "n=%d" % t["manifested"], ha="center", va="bottom", fontsize=7,
                color="white" if t["manifested"] else "black", rotation=90)
    ax.set_xticks(x); ax.set_xticklabels(names)
    ax.set_ylim(0, 105); ax.set_title(title, fontsize=10); ax.grid(axis="y", alpha=0.3)
axes[0].set_ylabel("% of manifested runs")
handles, labels = axes[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
fig.suptitle("Lazarus fault-injection campaign: " + d.get("title", ""), fontsize=11)
fig.tight_layout(rect=(0, 0.06, 1, 1))
fig.savefig(dst, dpi=110)
"##;
    // Debian's python3 (where python3-matplotlib goes), before any other in PATH.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .unwrap_or("python3");
    let result = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(out.join("summary.json"))
        .arg(out.join("chart.png"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match result {
        Ok(r) if r.status.success() => {
            eprintln!("campaign: chart in {}", out.join("chart.png").display())
        }
        Ok(r) => eprintln!(
            "campaign: no chart (python3-matplotlib missing? scripts/campaign installs it): {}",
            String::from_utf8_lossy(&r.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        Err(e) => eprintln!("campaign: no chart (python3: {e})"),
    }
}

/// `merge`: the records of several campaign directories (shards) in one.
fn merge(o: &Options) -> Result<bool, String> {
    fs::create_dir_all(&o.out).map_err(|e| format!("create {}: {e}", o.out.display()))?;
    let mut meta: Option<(Meta, PathBuf)> = None;
    let mut by_id: BTreeMap<u64, Json> = BTreeMap::new();
    let mut records_text: BTreeMap<u64, String> = BTreeMap::new();
    let mut sessions = String::new();
    let mut conflicts = 0;
    for src in &o.sources {
        let (dir, file) = if src.is_dir() {
            (src.clone(), src.join("records.jsonl"))
        } else {
            (
                src.parent().map(Path::to_path_buf).unwrap_or_default(),
                src.clone(),
            )
        };
        if !file.exists() {
            return Err(format!("{}: no records", file.display()));
        }
        if let Some(m) = Meta::read(&dir) {
            match &meta {
                Some((first, from))
                    if (&first.plan, first.seed, &first.guests) != (&m.plan, m.seed, &m.guests) =>
                {
                    return Err(format!(
                        "{} is another campaign than {} (plan {} seed {} {} vs plan {} seed {} {})",
                        dir.display(),
                        from.display(),
                        m.plan,
                        m.seed,
                        m.guests,
                        first.plan,
                        first.seed,
                        first.guests
                    ));
                }
                Some((first, from)) if first.kernel != m.kernel => eprintln!(
                    "campaign: warning: {} ran hypervisor {}, {} ran {}",
                    dir.display(),
                    m.kernel,
                    from.display(),
                    first.kernel
                ),
                Some(_) => {}
                None => meta = Some((m, dir.clone())),
            }
        }
        sessions.push_str(&fs::read_to_string(dir.join("sessions.jsonl")).unwrap_or_default());
        for r in read_records(&file) {
            let id = r.u64("id").unwrap_or(0);
            if let Some(old) = by_id.get(&id) {
                if old.str("class") != r.str("class") {
                    conflicts += 1;
                    eprintln!(
                        "campaign: run {id} recorded twice with different classes ({} and {}); keeping the first",
                        old.str("class").unwrap_or("?"),
                        r.str("class").unwrap_or("?")
                    );
                }
                continue;
            }
            // The serial log's path, from OUT.
            let mut text = String::new();
            if let Json::Obj(fields) = &r {
                text.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    let value = match (k.as_str(), v) {
                        ("serial_log", Json::Str(p)) => js(&dir.join(p).display().to_string()),
                        _ => to_json_text(v),
                    };
                    let _ = write!(text, "{}:{value}", js(k));
                }
                text.push('}');
            }
            records_text.insert(id, text);
            by_id.insert(id, r);
        }
    }
    let Some((m, _)) = meta else {
        return Err("no campaign.json beside any of the records: the plan is unknown".into());
    };
    let mut opts = o.clone();
    opts.test_guests = m.guests == "test";
    apply_guest_defaults(&mut opts);
    fs::write(o.out.join("campaign.json"), m.to_json(&opts))
        .map_err(|e| format!("write campaign.json: {e}"))?;
    let all: String = records_text.values().map(|t| format!("{t}\n")).collect();
    fs::write(o.out.join("records.jsonl"), all).map_err(|e| format!("write records: {e}"))?;
    fs::write(o.out.join("sessions.jsonl"), sessions)
        .map_err(|e| format!("write sessions: {e}"))?;
    let planned: u64 = parse_plan(&m.plan)
        .map(|p| p.iter().map(|(_, n)| n).sum())
        .unwrap_or(0);
    eprintln!(
        "campaign: merged {} runs of {planned} from {} sources{}",
        by_id.len(),
        o.sources.len(),
        if conflicts > 0 {
            format!(" ({conflicts} conflicting duplicates)")
        } else {
            String::new()
        }
    );
    write_report(&o.out, &o.out)
}

fn to_json_text(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Num(n) => n.clone(),
        Json::Str(s) => js(s),
        Json::Arr(a) => format!(
            "[{}]",
            a.iter().map(to_json_text).collect::<Vec<_>>().join(",")
        ),
        Json::Obj(f) => format!(
            "{{{}}}",
            f.iter()
                .map(|(k, v)| format!("{}:{}", js(k), to_json_text(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn main() -> ExitCode {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        kill_all_emulators();
    }));
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("campaign: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match o.action {
        Action::Run => run_campaign(o),
        Action::Rerun => rerun(o),
        Action::Merge => merge(&o),
        Action::Report => write_report(&o.out, &o.out),
    };
    kill_all_emulators();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("campaign: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_interleaves_fault_types_in_proportion() {
        let plan = parse_plan("failstop=4,register=4,data=2").unwrap();
        let s = schedule(&plan);
        assert_eq!(s.len(), 10);
        // Any prefix is balanced to within one run per type.
        for n in 1..=10 {
            let prefix = &s[..n];
            for (t, count) in &plan {
                let have = prefix.iter().filter(|x| x == &t).count() as f64;
                let want = n as f64 * *count as f64 / 10.0;
                assert!(
                    (have - want).abs() <= 1.0,
                    "{t} in the first {n}: {prefix:?}"
                );
            }
        }
        assert_eq!(schedule(&plan), s, "deterministic");
    }

    #[test]
    fn seeds_are_deterministic_distinct_and_exact_in_json() {
        let a: Vec<u64> = (0..1000).map(|i| run_seed(1, i)).collect();
        assert_eq!(a, (0..1000).map(|i| run_seed(1, i)).collect::<Vec<_>>());
        let distinct: HashSet<u64> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 1000);
        assert!(a.iter().all(|&s| s < 1 << 53));
        assert_ne!(run_seed(2, 0), run_seed(1, 0));
    }

    #[test]
    fn plans_parse_and_refuse_mistakes() {
        let p = parse_plan("register=2,failstop=3").unwrap();
        assert_eq!(plan_text(&p), "failstop=3,register=2");
        assert!(parse_plan("bogus=1").is_err());
        assert!(parse_plan("failstop=x").is_err());
        assert!(parse_plan("failstop=1,failstop=2").is_err());
        assert!(parse_plan("failstop=0").is_err());
    }

    #[test]
    fn wilson_intervals() {
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 0.001, "{lo} {hi}");
        let (lo, hi) = wilson(95, 100);
        assert!(
            (lo - 0.8883).abs() < 0.001 && (hi - 0.9785).abs() < 0.001,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn json_round_trips() {
        let o = Outcome {
            id: Some(3),
            seed: 42,
            fault: "register".into(),
            class: "recovered".into(),
            fired: Some(Fired {
                exit: 3,
                step: 1234,
                rip: "0x201000".into(),
                detail: "register=rsp bit=4 old=0x28dc80 new=0x28dc90".into(),
            }),
            failures: vec!["exception #GP \"quoted\"\tx".into()],
            notes: vec!["line\nbreak".into()],
            ..Outcome::default()
        };
        let j = parse_json(&o.to_json()).unwrap();
        assert_eq!(j.u64("id"), Some(3));
        assert_eq!(j.str("class"), Some("recovered"));
        let inject = j.get("inject").unwrap();
        assert_eq!(inject.str("target_register"), Some("rsp"));
        assert_eq!(inject.u64("step"), Some(1234));
        assert_eq!(
            j.arr("failures")[0],
            Json::Str("exception #GP \"quoted\"\tx".into())
        );
        assert_eq!(parse_json(&to_json_text(&j)).unwrap(), j);
    }

    #[test]
    fn a_glued_inject_line_is_seen_and_the_line_it_cut_is_joined_again() {
        let mut w = Watch::new(Outcome::default());
        w.line("[alpha] seq=5 sum=0x[lazarus] WARN  inject: failstop seed=1 exit=1 step=8656 rip=0x235adc jump to 0x0");
        w.line(&format!("{:016x} ok", pattern_checksum(5))[2..]);
        let f = w.o.fired.clone().unwrap();
        assert_eq!(
            (f.exit, f.step, f.detail.as_str()),
            (1, 8656, "jump to 0x0")
        );
        // The rest of the test guest's line: "0x" + 16 digits - 2 taken above.
        let mut w = Watch::new(Outcome::default());
        let sum = format!("{:016x}", pattern_checksum(1));
        w.line(&format!("[alpha] seq=1 sum=0x{}[lazarus] WARN  inject: hang seed=2 exit=0 step=1 rip=0x1 hang: interrupts off, endless loop", &sum[..4]));
        w.line(&format!("{} ok", &sum[4..]));
        assert_eq!(w.w.steps_after("alpha", None), 1);
        assert!(
            w.w.vms["alpha"].problems.is_empty(),
            "{:?}",
            w.w.vms["alpha"].problems
        );
    }

    #[test]
    fn recovery_lines_parse() {
        let r = parse_recovery("[lazarus] INFO  recovery 7: cause=panic attempts=1 latency=278070 failpath=2265 boot=216208 repair=55135 entry=4462 locks=0 exits=1 committed=0 runnable=2 ept=2 ept_rebuilt=0 vmcs=2 interrupts=0 timers=2 devices=0 stopped=0").unwrap();
        assert_eq!((r.number, r.cause.as_str()), (7, "panic"));
        assert_eq!(r.fields["latency"], 278070);
        assert!(parse_recovery("[lazarus] INFO  recovery: armed: x").is_none());
    }
}
