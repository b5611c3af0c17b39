//! The fault-injection campaign runner (`scripts/campaign`, docs/campaign.md) in CI: a
//! mini campaign with the in-tree test guests, a few injections of each fault type, all
//! started from one saved Bochs state. Every fail-stop injection must be recovered (at
//! worst with the VM whose exit was in flight lost), and every run must leave one
//! well-formed record; running the same command again must resume, not redo.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use lazarus_tests::root;

/// The six classes a run ends in (docs/campaign.md).
const CLASSES: [&str; 6] = [
    "not_manifested",
    "silent_corruption",
    "recovered",
    "recovered_one_vm_lost",
    "recovery_failed",
    "undetected_hang",
];

const PLAN: &str = "failstop=3,register=2,code=2,data=1,hang=1,lock=1";
const RUNS: usize = 10;

/// A JSON value, as far as the checks below need one.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

/// A strict little JSON parser: a record that does not parse is not well-formed.
fn parse(text: &str) -> Result<Value, String> {
    fn ws(s: &[u8], i: &mut usize) {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    }
    fn string(s: &[u8], i: &mut usize) -> Result<String, String> {
        *i += 1;
        let mut out = String::new();
        loop {
            let c = *s.get(*i).ok_or("unterminated string")?;
            *i += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let e = *s.get(*i).ok_or("bad escape")?;
                    *i += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex = std::str::from_utf8(s.get(*i..*i + 4).ok_or("bad \\u")?)
                                .map_err(|e| e.to_string())?;
                            *i += 4;
                            char::from_u32(u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?)
                                .ok_or("bad \\u")?
                        }
                        _ => return Err("bad escape".into()),
                    });
                }
                c if c < 0x20 => return Err("control character in a string".into()),
                _ => {
                    // Copy the whole UTF-8 sequence.
                    let start = *i - 1;
                    while *i < s.len() && (s[*i] & 0xc0) == 0x80 {
                        *i += 1;
                    }
                    out.push_str(std::str::from_utf8(&s[start..*i]).map_err(|e| e.to_string())?);
                }
            }
        }
    }
    fn value(s: &[u8], i: &mut usize) -> Result<Value, String> {
        ws(s, i);
        match s.get(*i).ok_or("unexpected end")? {
            b'{' => {
                *i += 1;
                let mut map = BTreeMap::new();
                ws(s, i);
                if s.get(*i) == Some(&b'}') {
                    *i += 1;
                    return Ok(Value::Map(map));
                }
                loop {
                    ws(s, i);
                    if s.get(*i) != Some(&b'"') {
                        return Err(format!("expected a key at {i}"));
                    }
                    let k = string(s, i)?;
                    ws(s, i);
                    if s.get(*i) != Some(&b':') {
                        return Err(format!("expected ':' at {i}"));
                    }
                    *i += 1;
                    let v = value(s, i)?;
                    if map.insert(k.clone(), v).is_some() {
                        return Err(format!("key {k} twice"));
                    }
                    ws(s, i);
                    match s.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b'}') => {
                            *i += 1;
                            return Ok(Value::Map(map));
                        }
                        _ => return Err(format!("expected ',' or '}}' at {i}")),
                    }
                }
            }
            b'[' => {
                *i += 1;
                let mut list = Vec::new();
                ws(s, i);
                if s.get(*i) == Some(&b']') {
                    *i += 1;
                    return Ok(Value::List(list));
                }
                loop {
                    list.push(value(s, i)?);
                    ws(s, i);
                    match s.get(*i) {
                        Some(b',') => *i += 1,
                        Some(b']') => {
                            *i += 1;
                            return Ok(Value::List(list));
                        }
                        _ => return Err(format!("expected ',' or ']' at {i}")),
                    }
                }
            }
            b'"' => Ok(Value::Str(string(s, i)?)),
            b't' if s[*i..].starts_with(b"true") => {
                *i += 4;
                Ok(Value::Bool(true))
            }
            b'f' if s[*i..].starts_with(b"false") => {
                *i += 5;
                Ok(Value::Bool(false))
            }
            b'n' if s[*i..].starts_with(b"null") => {
                *i += 4;
                Ok(Value::Null)
            }
            _ => {
                let start = *i;
                while *i < s.len() && (s[*i] == b'-' || s[*i] == b'.' || s[*i].is_ascii_digit()) {
                    *i += 1;
                }
                let n = std::str::from_utf8(&s[start..*i]).map_err(|e| e.to_string())?;
                n.parse()
                    .map(Value::Num)
                    .map_err(|_| format!("bad value at {start}"))
            }
        }
    }
    let s = text.as_bytes();
    let mut i = 0;
    let v = value(s, &mut i)?;
    ws(s, &mut i);
    if i != s.len() {
        return Err(format!("trailing text at {i}"));
    }
    Ok(v)
}

fn field<'a>(record: &'a Value, key: &str) -> &'a Value {
    match record {
        Value::Map(m) => m
            .get(key)
            .unwrap_or_else(|| panic!("record without '{key}': {record:?}")),
        _ => panic!("a record is not an object: {record:?}"),
    }
}

fn text(v: &Value) -> &str {
    match v {
        Value::Str(s) => s,
        _ => panic!("not a string: {v:?}"),
    }
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Num(n) => *n,
        _ => panic!("not a number: {v:?}"),
    }
}

fn list(v: &Value) -> &[Value] {
    match v {
        Value::List(l) => l,
        _ => panic!("not a list: {v:?}"),
    }
}

fn campaign(out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_campaign"))
        .args([
            "--test-guests",
            "--plan",
            PLAN,
            "--seed",
            "7",
            "--jobs",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .output()
        .expect("run the campaign binary")
}

/// Checks one record: every field present with its type, the class one of the six, the
/// classes consistent with what the record says happened.
fn check_record(out: &Path, r: &Value) {
    let id = number(field(r, "id"));
    assert!(
        id >= 0.0 && id < RUNS as f64 && id.fract() == 0.0,
        "id {id}"
    );
    assert!(number(field(r, "seed")) >= 0.0);
    let fault = text(field(r, "fault"));
    assert!(
        ["failstop", "register", "code", "data", "hang", "lock"].contains(&fault),
        "{fault}"
    );
    let class = text(field(r, "class"));
    assert!(CLASSES.contains(&class), "class {class}");
    assert_eq!(text(field(r, "start")), "snapshot");
    let inject = field(r, "inject");
    assert!(matches!(field(inject, "fired"), Value::Bool(_)));
    if field(inject, "fired") == &Value::Bool(true) {
        assert!(number(field(inject, "step")) <= 20000.0);
        assert!(number(field(inject, "exit")) < 64.0);
        assert!(text(field(inject, "rip")).starts_with("0x"));
        assert!(!text(field(inject, "detail")).is_empty());
        // What the console said when arming it is what happened.
        assert_eq!(field(inject, "armed_exit"), field(inject, "exit"), "{r:?}");
        assert_eq!(field(inject, "armed_step"), field(inject, "step"), "{r:?}");
    }
    let detected = field(r, "detected") == &Value::Bool(true);
    for f in list(field(r, "failures")) {
        assert!(!text(f).is_empty());
    }
    let recoveries = list(field(r, "recoveries"));
    for rec in recoveries {
        assert!(!text(field(rec, "cause")).is_empty());
        for k in ["n", "attempts", "latency", "stopped"] {
            assert!(number(field(rec, k)) >= 0.0, "{k}");
        }
        assert_eq!(
            number(field(rec, "latency")),
            ["failpath", "boot", "repair", "entry"]
                .iter()
                .map(|k| number(field(rec, k)))
                .sum::<f64>(),
            "the latency is the sum of its phases: {rec:?}"
        );
    }
    assert!(matches!(field(r, "halted"), Value::Null | Value::Str(_)));
    let lost = list(field(r, "vms_lost"));
    for l in lost {
        assert!(["alpha", "beta", "gamma"].contains(&text(field(l, "vm"))));
        assert!(!text(field(l, "why")).is_empty());
    }
    let new_vm = text(field(r, "new_vm"));
    assert!(
        new_vm == "ok" || new_vm == "not_needed" || new_vm.starts_with("failed: "),
        "{new_vm}"
    );
    assert!(number(field(r, "wall_s")) > 0.0);
    assert!(!text(field(r, "emulator")).is_empty());
    assert!(!text(field(r, "console")).is_empty());
    let log = out.join(text(field(r, "serial_log")));
    assert!(log.exists(), "no serial log {}", log.display());
    list(field(r, "notes"));
    // The class agrees with the facts it stands for.
    match class {
        "not_manifested" => {
            assert!(!detected && lost.is_empty(), "{r:?}");
            assert_eq!(text(field(r, "console")), "answered");
        }
        "silent_corruption" => assert!(!detected && !lost.is_empty(), "{r:?}"),
        "undetected_hang" => assert!(!detected, "{r:?}"),
        "recovered" => {
            assert!(
                detected && !recoveries.is_empty() && lost.is_empty(),
                "{r:?}"
            );
            assert_eq!(new_vm, "ok");
        }
        "recovered_one_vm_lost" => {
            assert!(detected && lost.len() == 1, "{r:?}");
            assert_eq!(new_vm, "ok");
        }
        _ => assert!(detected, "{r:?}"),
    }
}

#[test]
fn a_mini_campaign_recovers_every_failstop_injection_and_records_every_run() {
    let out = root().join("target/e2e/campaign_mini");
    let _ = fs::remove_dir_all(&out);
    let run = campaign(&out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the campaign failed:\n{stderr}");
    // One progress line per run, with the running tally.
    let progress = stderr
        .lines()
        .filter(|l| l.contains(&format!("/{RUNS} #")) && l.contains(" recovered, "))
        .count();
    assert_eq!(progress, RUNS, "{stderr}");

    let records = fs::read_to_string(out.join("records.jsonl")).expect("records.jsonl");
    let records: Vec<Value> = records
        .lines()
        .map(|l| parse(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(records.len(), RUNS, "one record per run");
    let mut ids: Vec<u64> = records
        .iter()
        .map(|r| number(field(r, "id")) as u64)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..RUNS as u64).collect::<Vec<_>>());
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        check_record(&out, r);
        *per_type
            .entry(text(field(r, "fault")).to_string())
            .or_default() += 1;
        if text(field(r, "fault")) == "failstop" {
            let class = text(field(r, "class"));
            assert!(
                class == "recovered" || class == "recovered_one_vm_lost",
                "a fail-stop injection was not recovered ({class}): {r:?}\n{stderr}"
            );
        }
    }
    let expected: BTreeMap<String, usize> = PLAN
        .split(',')
        .map(|p| p.split_once('=').unwrap())
        .map(|(t, n)| (t.to_string(), n.parse().unwrap()))
        .collect();
    assert_eq!(per_type, expected, "the plan's runs, per fault type");

    // The summary: a row per fault type and the Wilson intervals.
    let summary = fs::read_to_string(out.join("summary.md")).expect("summary.md");
    for t in expected.keys() {
        assert!(summary.contains(&format!("| {t} | ")), "{summary}");
    }
    assert!(summary.contains("success / manifested"), "{summary}");

    // The same command again resumes: nothing left to run, the records unchanged.
    let before = fs::read_to_string(out.join("records.jsonl")).unwrap();
    let again = campaign(&out);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{RUNS} recorded, 0 to run")),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(out.join("records.jsonl")).unwrap(),
        before
    );
}

#[test]
fn the_json_checker_refuses_what_is_not_json() {
    assert!(parse(r#"{"a":[1,2.5,"x\n"],"b":null,"c":true}"#).is_ok());
    for bad in [
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{"a":"x}"#,
        r#"{"a":1}x"#,
        r#"{"a":1,"a":2}"#,
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
}
