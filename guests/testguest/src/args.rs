//! The guest's behaviour, read from `StartInfo::args`.
//!
//! The words come from the module line of the hypervisor's boot entry, after Lazarus took
//! what it understands, so words meant for someone else may be left over: keys the guest
//! does not know are ignored. A known key with a value that does not parse is a mistake in
//! the test, though, and is reported rather than silently replaced by a default.

use crate::paging::PHYSICAL_LIMIT;

/// What the arguments ask for.
#[derive(Clone, Copy, Debug)]
pub struct Args<'a> {
    /// `mode=`, `work` when absent.
    pub mode: &'a [u8],
    /// `iterations=`: how many work iterations before powering off; forever when absent.
    pub iterations: Option<u64>,
    /// `burn=`: extra rounds of CPU work per iteration.
    pub burn: u64,
    /// `addr=`: the target of `wild-write` and `wild-read`.
    pub addr: Option<u64>,
    /// The first known key whose value did not parse; that key keeps its default.
    pub bad: Option<BadValue<'a>>,
    /// `trigger=KIND`: in `work` mode, make the hypervisor fail (the `trigger`
    /// hypercall) after `trigger-after=` iterations (default 3), with `trigger-count=`
    /// (default 1).
    pub trigger: Option<&'a [u8]>,
    pub trigger_after: u64,
    pub trigger_count: u64,
    /// `inject=TYPE`: in `work` mode, arm the fault injector (the `inject` hypercall)
    /// with `inject-seed=` (default 1) after `trigger-after=` iterations.
    pub inject: Option<&'a [u8]>,
    pub inject_seed: u64,
    /// `fuzz`: `seed=` (default 1), `ops=` (the operation to stop before, default
    /// 10000), `fuzz-from=` (the first operation, default 0), `log=` (a progress line
    /// every K operations, 1 for every operation described before it runs, 0 for none;
    /// default 1000), `mix=safe|stopping|regress` and `stop=KIND` (the stopping operation).
    pub seed: u64,
    pub ops: u64,
    pub fuzz_from: u64,
    pub log: u64,
    pub mix: &'a [u8],
    pub stop: Option<&'a [u8]>,
    /// `fuzz`: `avoid=NAME,...`, operation families not to draw (to get past a known
    /// failure).
    pub avoid: &'a [u8],
}

/// A known key whose value does not parse.
#[derive(Clone, Copy, Debug)]
pub struct BadValue<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Parses the space-separated `key=value` words of `args` (already cut at the first NUL).
/// Later words override earlier ones. A bad value does not stop the parse, so that the
/// `start` line can still show the mode.
pub fn parse(args: &[u8]) -> Args<'_> {
    let mut parsed = Args {
        mode: b"work",
        iterations: None,
        burn: 0,
        addr: None,
        bad: None,
        trigger: None,
        trigger_after: 3,
        trigger_count: 1,
        inject: None,
        inject_seed: 1,
        seed: 1,
        ops: 10_000,
        fuzz_from: 0,
        log: 1000,
        mix: b"safe",
        stop: None,
        avoid: b"",
    };
    for word in args.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let Some(eq) = word.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&word[..eq], &word[eq + 1..]);
        let ok = match key {
            b"mode" => {
                parsed.mode = value;
                !value.is_empty()
            }
            b"iterations" => decimal(value)
                .map(|k| parsed.iterations = Some(k))
                .is_some(),
            b"burn" => decimal(value).map(|n| parsed.burn = n).is_some(),
            b"trigger" => {
                parsed.trigger = Some(value);
                !value.is_empty()
            }
            b"trigger-after" => decimal(value).map(|n| parsed.trigger_after = n).is_some(),
            b"trigger-count" => decimal(value).map(|n| parsed.trigger_count = n).is_some(),
            b"inject" => {
                parsed.inject = Some(value);
                !value.is_empty()
            }
            b"inject-seed" => decimal(value).map(|n| parsed.inject_seed = n).is_some(),
            b"seed" => decimal(value).map(|n| parsed.seed = n).is_some(),
            b"ops" => decimal(value).map(|n| parsed.ops = n).is_some(),
            b"fuzz-from" => decimal(value).map(|n| parsed.fuzz_from = n).is_some(),
            b"log" => decimal(value).map(|n| parsed.log = n).is_some(),
            b"mix" => {
                parsed.mix = value;
                value == b"safe" || value == b"stopping" || value == b"regress"
            }
            b"avoid" => {
                parsed.avoid = value;
                crate::fuzz::families(value).is_some()
            }
            b"stop" => {
                parsed.stop = Some(value);
                crate::fuzz::STOP_KINDS
                    .iter()
                    .any(|k| k.as_bytes() == value)
            }
            b"addr" => hex(value)
                .filter(|&a| a < PHYSICAL_LIMIT)
                .map(|a| parsed.addr = Some(a))
                .is_some(),
            _ => true,
        };
        if !ok && parsed.bad.is_none() {
            parsed.bad = Some(BadValue { key, value });
        }
    }
    parsed
}

fn decimal(text: &[u8]) -> Option<u64> {
    number(text, 10)
}

/// Hexadecimal with or without `0x`.
fn hex(text: &[u8]) -> Option<u64> {
    let digits = text
        .strip_prefix(b"0x")
        .or_else(|| text.strip_prefix(b"0X"))
        .unwrap_or(text);
    number(digits, 16)
}

fn number(digits: &[u8], radix: u32) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        let digit = char::from(b).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))
    })
}
