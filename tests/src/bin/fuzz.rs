//! Long fuzz campaigns (`scripts/fuzz`): many seeds of the test guest's `mode=fuzz`,
//! one Bochs per job, each next to a `mode=work` VM, judged by the fuzz criterion
//! (tests/tests/fuzz.rs): no hypervisor failure or recovery, no `fuzz unexpected` line,
//! no guest dying, the good VM's checksums still right and coming, the fuzz VM finished
//! (or stopped as documented).
//!
//! Each finished run appends one JSON line to `OUT/results.jsonl`; a run already there
//! (same seed, operations, mix and avoid list) is skipped, so the same command resumes.
//! A run that went wrong is replayed from its last progress line with `log=1`
//! (`--bisect`), which names the operation that was running when it went wrong. The
//! report (`OUT/report.md`, also printed) lists seeds, operations, time, and every
//! problem with its first bad line.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazarus_tests::fuzz::{self, field};
use lazarus_tests::testguest::checked_sequences;
use lazarus_tests::{image_with_modules, root, test_guest, Firmware, Machine, Platform, Regex};

const USAGE: &str = "\
usage: fuzz [run] [--seeds A-B] [--ops N] [--log K] [--mix safe|stopping] [--avoid LIST]
            [--jobs N] [--out DIR] [--stall SECS] [--timeout SECS] [--no-bisect]
       fuzz replay --seed S [--from K] [--ops N] [--mix safe|stopping] [--avoid LIST] [--out DIR]
       fuzz report [--out DIR]

  --seeds A-B    the seeds to run, inclusive (default 1-8); a single number is one seed
  --ops N        operations per run (default 20000)
  --log K        a progress line every K operations (default 1000): a failure is
                 replayed from the last one
  --mix M        safe (default) or stopping (ends with an operation that stops the VM)
  --avoid LIST   operation families not to draw, comma-separated (e.g. xsetbv,cr4),
                 to get past a known failure
  --jobs N       emulators in parallel (default: the number of cores)
  --out DIR      results, logs and report (default target/fuzz)
  --stall SECS   a run with no fuzz line for this long has stalled (default 120)
  --timeout SECS the longest one run may take (default 1800)
  --no-bisect    do not replay failed runs with log=1
  replay         one run with log=1 (every operation printed before it runs), from
                 operation K; its transcript is in OUT/replay-S-K/serial.log

Running the same command again resumes: runs in OUT/results.jsonl are skipped.";

#[derive(Clone, Debug)]
struct Plan {
    seeds: (u64, u64),
    ops: u64,
    log: u64,
    mix: String,
    avoid: String,
    jobs: usize,
    out: PathBuf,
    stall: u64,
    timeout: u64,
    bisect: bool,
}

/// What one run found.
#[derive(Clone, Debug, Default)]
struct Outcome {
    verdict: &'static str,
    ops_run: u64,
    secs: u64,
    first_bad: String,
    done: String,
    ended: String,
    last_op: Option<u64>,
    culprit: String,
}

fn json_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn json_unescape(s: &str) -> String {
    let mut o = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            o.push(c);
            continue;
        }
        match it.next() {
            Some('u') => {
                let hex: String = it.by_ref().take(4).collect();
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    o.push(ch);
                }
            }
            Some(other) => o.push(other),
            None => {}
        }
    }
    o
}

fn get_str(line: &str, key: &str) -> String {
    let re = Regex::new(&format!(r#""{key}":"((?:[^"\\]|\\.)*)""#)).unwrap();
    re.captures(line)
        .map(|c| json_unescape(&c[1]))
        .unwrap_or_default()
}

fn get_num(line: &str, key: &str) -> u64 {
    let re = Regex::new(&format!(r#""{key}":(\d+)"#)).unwrap();
    re.captures(line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or(0)
}

fn key(seed: u64, plan: &Plan) -> String {
    format!("{}/{}/{}/{}", seed, plan.ops, plan.mix, plan.avoid)
}

fn fuzz_words(seed: u64, from: u64, ops: u64, log: u64, mix: &str, avoid: &str) -> String {
    let mut w = format!(
        "vm=fz elf mem=8M mode=fuzz seed={seed} fuzz-from={from} ops={ops} log={log} mix={mix}"
    );
    if !avoid.is_empty() {
        w.push_str(&format!(" avoid={avoid}"));
    }
    if mix == "stopping" {
        w.push_str(" on_reboot=stop");
    }
    w
}

/// Boots one machine with the good VM and one fuzz VM and judges it.
fn one_run(dir: &Path, words: &str, stall: u64, timeout: u64) -> (Outcome, Vec<String>) {
    let started = Instant::now();
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("create the run directory");
    let guest = test_guest();
    let good = "vm=good elf mem=16M mode=work";
    let modules = [(guest.as_path(), good), (guest.as_path(), words)];
    let booted = std::panic::catch_unwind(|| {
        let iso = image_with_modules(dir, "", Firmware::BiosOnly, &modules);
        let mut m = Machine::boot(dir, Platform::Bochs, &iso, 256);
        m.wait_prompt(Duration::from_secs(180));
        m
    });
    let mut o = Outcome::default();
    let Ok(mut m) = booted else {
        o.verdict = "boot-failed";
        o.first_bad = "Lazarus did not reach its prompt".into();
        return (o, Vec::new());
    };
    let mut last_count = 0;
    let mut last_change = Instant::now();
    let mut failure_at: Option<Instant> = None;
    loop {
        let open = m.poll(Duration::from_millis(500));
        let lines = m.lines();
        let r = fuzz::run(&lines, "fz");
        let mine = lines.iter().filter(|l| l.starts_with("[fz] ")).count();
        if mine != last_count {
            last_count = mine;
            last_change = Instant::now();
        }
        if let Some(bad) = lines.iter().find(|l| fuzz::is_failure(l)) {
            if o.first_bad.is_empty() {
                o.verdict = "failure";
                o.first_bad = bad.clone();
                failure_at = Some(Instant::now());
            }
        } else if let Some(bad) = lines.iter().find(|l| fuzz::is_guest_death(l)) {
            o.verdict = "guest-died";
            o.first_bad = bad.clone();
            break;
        }
        // After a failure, the report and the recovery line come within seconds.
        if failure_at.is_some_and(|t| t.elapsed() > Duration::from_secs(20)) {
            break;
        }
        if failure_at.is_none() && r.ended.is_some() {
            // Let the good VM show two more checked lines.
            break;
        }
        if !open {
            o.verdict = "emulator-exited";
            o.first_bad = "the emulator exited".into();
            break;
        }
        if failure_at.is_none() && last_change.elapsed() > Duration::from_secs(stall) {
            o.verdict = "stall";
            o.first_bad = format!("no line from the fuzz VM for {stall} s");
            break;
        }
        if started.elapsed() > Duration::from_secs(timeout) {
            o.verdict = "timeout";
            o.first_bad = format!("not finished after {timeout} s");
            break;
        }
    }
    let lines = m.lines();
    let r = fuzz::run(&lines, "fz");
    o.done = r.done.clone().unwrap_or_default();
    o.ended = r.ended.clone().unwrap_or_default();
    o.last_op = r.last_op;
    o.ops_run = r
        .done
        .as_deref()
        .and_then(|d| field(d, "ops"))
        .or(r.last_op)
        .unwrap_or(0);
    if o.verdict.is_empty() {
        if let Some(u) = r.unexpected.first() {
            o.verdict = "unexpected";
            o.first_bad = format!("[fz] {u}");
        } else if r.done.is_none() && r.stop.is_none() {
            o.verdict = "no-done-line";
            o.first_bad = o.ended.clone();
        } else {
            o.verdict = "ok";
        }
    }
    // The good VM: right checksums, and still going.
    let before = checked_sequences_safe(&m).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && m.poll(Duration::from_millis(500)) {
        if checked_sequences_safe(&m).unwrap_or(0) >= before + 2 {
            break;
        }
    }
    match checked_sequences_safe(&m) {
        None => {
            o.verdict = "good-vm-corrupt";
            o.first_bad = "the good VM printed a wrong or CORRUPT line".into();
        }
        Some(after) if after < before + 2 && o.verdict == "ok" => {
            o.verdict = "good-vm-stalled";
            o.first_bad = format!("the good VM stopped at seq={after}");
        }
        _ => {}
    }
    o.secs = started.elapsed().as_secs();
    (o, m.lines())
}

fn checked_sequences_safe(m: &Machine) -> Option<u64> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checked_sequences(m)))
        .ok()
        .map(|s| s.get("good").copied().unwrap_or(0))
}

/// Replays a run from `from` with `log=1` and names the operation printed last before the
/// first failure (or the last one printed at all).
fn bisect(plan: &Plan, seed: u64, from: u64) -> String {
    let end = (from + plan.log).min(plan.ops);
    let dir = plan.out.join(format!("runs/seed-{seed}-replay-{from}"));
    let words = fuzz_words(seed, from, end, 1, &plan.mix, &plan.avoid);
    let (_, lines) = one_run(&dir, &words, plan.stall, plan.timeout);
    let cut = lines
        .iter()
        .position(|l| fuzz::is_failure(l) || fuzz::is_guest_death(l))
        .unwrap_or(lines.len());
    let first_unexpected = lines[..cut]
        .iter()
        .find(|l| l.starts_with("[fz] fuzz unexpected "));
    let last_op = lines[..cut]
        .iter()
        .rev()
        .find(|l| l.starts_with("[fz] fuzz op="));
    // A failure: the operation printed last before it. Otherwise the first unexpected
    // outcome (it names its operation), else the last operation printed.
    let failed = cut < lines.len();
    match (failed, first_unexpected, last_op) {
        (true, _, Some(op)) | (false, None, Some(op)) => op.clone(),
        (_, Some(u), _) => u.clone(),
        (_, None, None) => "no operation line (the console stayed silent)".into(),
    }
}

fn record(plan: &Plan, seed: u64, o: &Outcome) -> String {
    format!(
        "{{\"seed\":{seed},\"ops\":{},\"mix\":\"{}\",\"avoid\":\"{}\",\"key\":\"{}\",\"verdict\":\"{}\",\"ops_run\":{},\"secs\":{},\"last_op\":{},\"first_bad\":\"{}\",\"culprit\":\"{}\",\"done\":\"{}\",\"ended\":\"{}\"}}",
        plan.ops,
        json_escape(&plan.mix),
        json_escape(&plan.avoid),
        json_escape(&key(seed, plan)),
        o.verdict,
        o.ops_run,
        o.secs,
        o.last_op.unwrap_or(0),
        json_escape(&o.first_bad),
        json_escape(&o.culprit),
        json_escape(&o.done),
        json_escape(&o.ended),
    )
}

fn results_path(out: &Path) -> PathBuf {
    out.join("results.jsonl")
}

fn run_campaign(plan: Plan) -> ExitCode {
    fs::create_dir_all(&plan.out).expect("create the output directory");
    // Two runners in one directory would run the same seeds twice and record both: the
    // lock, held until this process ends, keeps the second one out.
    let lock = fs::File::create(plan.out.join(".lock")).expect("create the lock file");
    if lock.try_lock().is_err() {
        eprintln!(
            "lazarus: error: another scripts/fuzz is running in {}",
            plan.out.display()
        );
        return ExitCode::from(2);
    }
    let done: HashSet<String> = fs::read_to_string(results_path(&plan.out))
        .unwrap_or_default()
        .lines()
        .map(|l| get_str(l, "key"))
        .collect();
    let todo: Vec<u64> = (plan.seeds.0..=plan.seeds.1)
        .filter(|s| !done.contains(&key(*s, &plan)))
        .collect();
    eprintln!(
        "fuzz: {} seeds to run ({} already in {}), {} operations each, {} jobs",
        todo.len(),
        (plan.seeds.1 - plan.seeds.0 + 1) as usize - todo.len(),
        results_path(&plan.out).display(),
        plan.ops,
        plan.jobs
    );
    test_guest();
    let queue = Arc::new(Mutex::new(todo.into_iter()));
    let file = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(results_path(&plan.out))
            .expect("open results.jsonl"),
    ));
    let workers: Vec<_> = (0..plan.jobs)
        .map(|_| {
            let (queue, file, plan) = (queue.clone(), file.clone(), plan.clone());
            std::thread::spawn(move || loop {
                let Some(seed) = queue.lock().unwrap().next() else {
                    return;
                };
                let dir = plan.out.join(format!("runs/seed-{seed}"));
                let words = fuzz_words(seed, 0, plan.ops, plan.log, &plan.mix, &plan.avoid);
                let (mut o, _) = one_run(&dir, &words, plan.stall, plan.timeout);
                if o.verdict != "ok" && plan.bisect {
                    let from = o.last_op.unwrap_or(0);
                    o.culprit = bisect(&plan, seed, from);
                }
                eprintln!(
                    "fuzz: seed {seed}: {} ({} ops, {} s){}",
                    o.verdict,
                    o.ops_run,
                    o.secs,
                    if o.first_bad.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", o.first_bad)
                    }
                );
                let line = record(&plan, seed, &o);
                let mut f = file.lock().unwrap();
                let _ = writeln!(f, "{line}");
                let _ = f.flush();
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    report(&plan.out)
}

fn report(out: &Path) -> ExitCode {
    let text = fs::read_to_string(results_path(out)).unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut md = String::new();
    let ops: u64 = rows.iter().map(|r| get_num(r, "ops_run")).sum();
    let secs: u64 = rows.iter().map(|r| get_num(r, "secs")).sum();
    let bad: Vec<&&str> = rows
        .iter()
        .filter(|r| get_str(r, "verdict") != "ok")
        .collect();
    md.push_str(&format!(
        "# Fuzz report\n\n{} runs, {} operations, {} s of runs ({:.1} min), {} with problems.\n\n",
        rows.len(),
        ops,
        secs,
        secs as f64 / 60.0,
        bad.len()
    ));
    let mut verdicts: Vec<(String, usize)> = Vec::new();
    for r in &rows {
        let v = get_str(r, "verdict");
        match verdicts.iter_mut().find(|(k, _)| *k == v) {
            Some((_, n)) => *n += 1,
            None => verdicts.push((v, 1)),
        }
    }
    md.push_str("| verdict | runs |\n|---|---|\n");
    for (v, n) in &verdicts {
        md.push_str(&format!("| {v} | {n} |\n"));
    }
    if !bad.is_empty() {
        md.push_str("\n## Problems\n\n");
        for r in &bad {
            md.push_str(&format!(
                "- seed {} (ops={} mix={} avoid={}): **{}** after op {}\n  - first bad line: `{}`\n  - running then: `{}`\n",
                get_num(r, "seed"),
                get_num(r, "ops"),
                get_str(r, "mix"),
                if get_str(r, "avoid").is_empty() { "none".into() } else { get_str(r, "avoid") },
                get_str(r, "verdict"),
                get_num(r, "last_op"),
                get_str(r, "first_bad"),
                get_str(r, "culprit"),
            ));
        }
    }
    let _ = fs::write(out.join("report.md"), &md);
    print!("{md}");
    ExitCode::SUCCESS
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("fuzz: error: {msg}\ntry 'scripts/fuzz --help'");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut action = "run";
    let mut i = 0;
    if let Some(first) = args.first() {
        if ["run", "replay", "report"].contains(&first.as_str()) {
            action = match first.as_str() {
                "replay" => "replay",
                "report" => "report",
                _ => "run",
            };
            i = 1;
        }
    }
    let mut plan = Plan {
        seeds: (1, 8),
        ops: 20_000,
        log: 1000,
        mix: "safe".into(),
        avoid: String::new(),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        out: root().join("target/fuzz"),
        stall: 120,
        timeout: 1800,
        bisect: true,
    };
    let mut from = 0;
    let mut seed_given = None;
    while i < args.len() {
        let a = args[i].as_str();
        let value = args.get(i + 1).cloned();
        let need = |v: Option<String>| v.ok_or_else(|| format!("{a} needs a value"));
        let number = |v: Option<String>| -> Result<u64, String> {
            need(v)?.parse().map_err(|_| format!("{a}: not a number"))
        };
        let step = match a {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--no-bisect" => {
                plan.bisect = false;
                Ok(1)
            }
            "--seeds" => need(value).and_then(|v| {
                let (a, b) = v.split_once('-').unwrap_or((&v, &v));
                match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) if a <= b => {
                        plan.seeds = (a, b);
                        Ok(2)
                    }
                    _ => Err(format!("--seeds: '{v}' is not A-B")),
                }
            }),
            "--seed" => number(value).map(|n| {
                seed_given = Some(n);
                2
            }),
            "--from" => number(value).map(|n| {
                from = n;
                2
            }),
            "--ops" => number(value).map(|n| {
                plan.ops = n;
                2
            }),
            "--log" => number(value).map(|n| {
                plan.log = n.max(2);
                2
            }),
            "--jobs" => number(value).map(|n| {
                plan.jobs = (n as usize).max(1);
                2
            }),
            "--stall" => number(value).map(|n| {
                plan.stall = n;
                2
            }),
            "--timeout" => number(value).map(|n| {
                plan.timeout = n;
                2
            }),
            "--mix" => need(value).and_then(|v| {
                if v == "safe" || v == "stopping" {
                    plan.mix = v;
                    Ok(2)
                } else {
                    Err(format!("--mix: '{v}' (safe or stopping)"))
                }
            }),
            "--avoid" => need(value).map(|v| {
                plan.avoid = v;
                2
            }),
            "--out" => need(value).map(|v| {
                plan.out = PathBuf::from(v);
                2
            }),
            other => Err(format!("unexpected argument '{other}'")),
        };
        match step {
            Ok(n) => i += n,
            Err(e) => return usage_error(&e),
        }
    }
    match action {
        "report" => report(&plan.out),
        "replay" => {
            let Some(seed) = seed_given else {
                return usage_error("replay needs --seed S");
            };
            let dir = plan.out.join(format!("replay-{seed}-{from}"));
            let words = fuzz_words(seed, from, plan.ops.max(from), 1, &plan.mix, &plan.avoid);
            let (o, lines) = one_run(&dir, &words, plan.stall, plan.timeout);
            for l in lines.iter().filter(|l| {
                l.starts_with("[fz] fuzz") || fuzz::is_failure(l) || fuzz::is_guest_death(l)
            }) {
                println!("{l}");
            }
            println!(
                "verdict: {} ({} s){}",
                o.verdict,
                o.secs,
                if o.first_bad.is_empty() {
                    String::new()
                } else {
                    format!(": {}", o.first_bad)
                }
            );
            ExitCode::SUCCESS
        }
        _ => {
            if let Some(s) = seed_given {
                plan.seeds = (s, s);
            }
            run_campaign(plan)
        }
    }
}
