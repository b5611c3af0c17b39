//! The hypervisor's own command line, as handed over by the bootloader.
//!
//! The command line is the only way to configure the hypervisor before it runs, and it is
//! typed by hand into a GRUB entry, far away from any feedback. A typo must therefore
//! never stop the machine from booting: the parser is lenient and total. Every word is
//! examined on its own, and the policy is:
//!
//! * each bad word (unknown option, missing or malformed value, repeated option) yields
//!   exactly one [`CmdlineError`] and is otherwise ignored, so its option keeps the default;
//! * only the first occurrence of an option counts, whether or not its value was valid, so
//!   the outcome depends on where a word stands and not on which of several spellings
//!   happened to parse (`log=verbose log=debug` leaves the level at its default and
//!   reports two errors);
//! * parsing always runs to the end of the line, so that one boot shows every mistake
//!   at once instead of one per reboot.
//!
//! Errors borrow from the command line rather than copying it, because there is no heap
//! this early; at most [`MAX_ERRORS`] are kept and the rest are only counted, which is
//! enough to tell the operator that the line needs a second look.
//!
//! Bootloaders disagree on whether the kernel's own path is part of the command line
//! (GRUB's `multiboot2 /boot/lazarus.elf log=debug` may or may not arrive with the path),
//! so a leading word that looks like a path rather than an option is skipped.

use core::fmt;

use log::LevelFilter;

/// How many errors [`Parsed`] keeps; further ones are only counted.
pub const MAX_ERRORS: usize = 16;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE_SIZE: u64 = 4096;

const HEAP_DEFAULT: u64 = 4 * MIB;
const HEAP_MIN: u64 = MIB;
const HEAP_MAX: u64 = 256 * MIB;
const ARENA_DEFAULT: u64 = 8 * MIB;
const ARENA_MIN: u64 = 2 * MIB;
const ARENA_MAX: u64 = GIB;

const EXPECT_LEVEL: &str = "off, error, warn, info, debug or trace";
const EXPECT_SWITCH: &str = "on or off";
const EXPECT_HEAP: &str = "a size from 1M to 256M in whole 4K pages";
const EXPECT_ARENA: &str = "a size from 2M to 1G in whole 4K pages";

/// The settings the command line controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Most verbose log level that is emitted (`log=`).
    pub log_level: LevelFilter,
    /// Size in bytes of the hypervisor's own heap (`heap=`).
    pub heap_size: u64,
    /// Size in bytes of the arena guests are carved from (`arena=`).
    pub arena_size: u64,
    /// Whether the console offers the deterministic failure triggers (`triggers=`).
    pub triggers: bool,
    /// Whether the interactive serial console reads input (`console=`).
    pub console_input: bool,
    /// The fault injector (`inject=`): off, on (armed later from the console or a
    /// hypercall), or armed at boot with a fault type and seed (`inject=TYPE:SEED`).
    pub inject: Inject,
}

/// The `inject=` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inject {
    Off,
    On,
    Plan(crate::inject::FaultType, u64),
}

impl Inject {
    pub fn enabled(self) -> bool {
        self != Inject::Off
    }
}

const EXPECT_INJECT: &str = "on, off or TYPE:SEED (TYPE: failstop register code data hang lock)";

fn parse_inject(value: &str) -> Option<Inject> {
    if let Some(on) = parse_switch(value) {
        return Some(if on { Inject::On } else { Inject::Off });
    }
    let (kind, seed) = value.split_once(':')?;
    Some(Inject::Plan(
        crate::inject::FaultType::from_name(kind)?,
        seed.parse().ok()?,
    ))
}

impl Default for Options {
    fn default() -> Self {
        Self {
            log_level: LevelFilter::Info,
            heap_size: HEAP_DEFAULT,
            arena_size: ARENA_DEFAULT,
            triggers: false,
            console_input: true,
            inject: Inject::Off,
        }
    }
}

/// One bad word of the command line. The strings borrow from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    /// A word that names no option (the key, or the whole word if the key is empty).
    UnknownOption(&'a str),
    /// A known option whose value does not parse or is out of range.
    BadValue {
        /// The option's name, without `=`.
        option: &'a str,
        /// The rejected value.
        value: &'a str,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A known option given without a value (`log` or `log=`).
    MissingValue(&'a str),
    /// A known option given again after its first occurrence.
    Duplicate(&'a str),
}

impl fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOption(word) => write!(f, "unknown option '{word}'"),
            Self::BadValue {
                option,
                value,
                expected,
            } => write!(f, "bad value '{value}' for {option}= (expected {expected})"),
            Self::MissingValue(option) => {
                write!(f, "option '{option}' needs a value ({option}=...)")
            }
            Self::Duplicate(option) => write!(f, "option '{option}' given twice"),
        }
    }
}

/// The outcome of [`parse`]: the options in force and what was wrong with the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The defaults, overridden by every option that was given correctly.
    pub options: Options,
    /// The first [`MAX_ERRORS`] errors, in command-line order.
    pub errors: heapless::Vec<CmdlineError<'a>, MAX_ERRORS>,
    /// How many further errors did not fit into `errors`.
    pub errors_dropped: usize,
}

impl<'a> Parsed<'a> {
    fn report(&mut self, error: CmdlineError<'a>) {
        if self.errors.push(error).is_err() {
            self.errors_dropped += 1;
        }
    }

    /// Whether the command line was entirely correct.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.errors_dropped == 0
    }
}

/// The options the command line knows, in the order [`describe`] prints them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Log,
    Heap,
    Arena,
    Triggers,
    Console,
    Inject,
}

impl Key {
    const ALL: [Key; 6] = [
        Key::Log,
        Key::Heap,
        Key::Arena,
        Key::Triggers,
        Key::Console,
        Key::Inject,
    ];

    fn name(self) -> &'static str {
        match self {
            Key::Log => "log",
            Key::Heap => "heap",
            Key::Arena => "arena",
            Key::Triggers => "triggers",
            Key::Console => "console",
            Key::Inject => "inject",
        }
    }

    fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|key| key.name() == name)
    }

    /// Parses `value` and stores it into `options`, or says what was expected instead.
    fn apply(self, value: &str, options: &mut Options) -> Result<(), &'static str> {
        match self {
            Key::Log => options.log_level = parse_level(value).ok_or(EXPECT_LEVEL)?,
            Key::Heap => options.heap_size = sized(value, HEAP_MIN, HEAP_MAX, EXPECT_HEAP)?,
            Key::Arena => options.arena_size = sized(value, ARENA_MIN, ARENA_MAX, EXPECT_ARENA)?,
            Key::Triggers => options.triggers = parse_switch(value).ok_or(EXPECT_SWITCH)?,
            Key::Console => options.console_input = parse_switch(value).ok_or(EXPECT_SWITCH)?,
            Key::Inject => options.inject = parse_inject(value).ok_or(EXPECT_INJECT)?,
        }
        Ok(())
    }
}

fn sized(value: &str, min: u64, max: u64, expected: &'static str) -> Result<u64, &'static str> {
    parse_size(value)
        .filter(|size| (min..=max).contains(size))
        .ok_or(expected)
}

fn parse_switch(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("on") {
        Some(true)
    } else if value.eq_ignore_ascii_case("off") {
        Some(false)
    } else {
        None
    }
}

/// Whether `word` is the kernel's own path rather than an option.
fn is_kernel_path(word: &str) -> bool {
    !word.contains('=') && (word.starts_with('/') || word.contains(".elf"))
}

/// Parses the command line; see the module documentation for how errors are handled.
pub fn parse(cmdline: &str) -> Parsed<'_> {
    let mut parsed = Parsed {
        options: Options::default(),
        errors: heapless::Vec::new(),
        errors_dropped: 0,
    };
    let mut seen = [false; Key::ALL.len()];

    let mut words = cmdline
        .split([' ', '\t'])
        .filter(|word| !word.is_empty())
        .peekable();
    if words.peek().is_some_and(|word| is_kernel_path(word)) {
        words.next();
    }

    for word in words {
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name, value),
            None => (word, ""),
        };
        let Some(key) = Key::from_name(name) else {
            let shown = if name.is_empty() { word } else { name };
            parsed.report(CmdlineError::UnknownOption(shown));
            continue;
        };

        let first = !core::mem::replace(&mut seen[key as usize], true);
        if !first {
            parsed.report(CmdlineError::Duplicate(name));
        } else if value.is_empty() {
            parsed.report(CmdlineError::MissingValue(name));
        } else if let Err(expected) = key.apply(value, &mut parsed.options) {
            parsed.report(CmdlineError::BadValue {
                option: name,
                value,
                expected,
            });
        }
    }
    parsed
}

/// Parses a size: a decimal number of bytes, optionally followed by `K`, `M` or `G`
/// (binary units, either case).
///
/// Returns `None` unless the result is a non-zero multiple of 4096 that fits in a `u64`.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], KIB),
        b'm' | b'M' => (&s[..s.len() - 1], MIB),
        b'g' | b'G' => (&s[..s.len() - 1], GIB),
        _ => (s, 1),
    };
    // `u64::from_str` would also take a leading `+`, which is not a size.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (size != 0 && size.is_multiple_of(PAGE_SIZE)).then_some(size)
}

/// Parses a log level name (`off`, `error`, `warn`, `info`, `debug` or `trace`, either case).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    [
        ("off", LevelFilter::Off),
        ("error", LevelFilter::Error),
        ("warn", LevelFilter::Warn),
        ("info", LevelFilter::Info),
        ("debug", LevelFilter::Debug),
        ("trace", LevelFilter::Trace),
    ]
    .into_iter()
    .find(|(name, _)| s.eq_ignore_ascii_case(name))
    .map(|(_, level)| level)
}

/// The lower-case name [`parse_level`] accepts for `level`.
pub fn level_name(level: LevelFilter) -> &'static str {
    match level {
        LevelFilter::Off => "off",
        LevelFilter::Error => "error",
        LevelFilter::Warn => "warn",
        LevelFilter::Info => "info",
        LevelFilter::Debug => "debug",
        LevelFilter::Trace => "trace",
    }
}

/// A one-line summary of `options` in command-line syntax, which [`parse`] reads back
/// to the same options (for sizes that are multiples of 4096).
pub fn describe(options: &Options) -> impl fmt::Display {
    Summary(*options)
}

struct Summary(Options);

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.0;
        let switch = |on: bool| if on { "on" } else { "off" };
        write!(
            f,
            "log={} heap={} arena={} triggers={} console={} inject=",
            level_name(o.log_level),
            Size(o.heap_size),
            Size(o.arena_size),
            switch(o.triggers),
            switch(o.console_input),
        )?;
        match o.inject {
            Inject::Off => f.write_str("off"),
            Inject::On => f.write_str("on"),
            Inject::Plan(kind, seed) => write!(f, "{}:{seed}", kind.name()),
        }
    }
}

/// A byte count in the largest unit that divides it exactly.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        match [(GIB, "G"), (MIB, "M"), (KIB, "K")]
            .into_iter()
            .find(|(unit, _)| bytes != 0 && bytes.is_multiple_of(*unit))
        {
            Some((unit, suffix)) => write!(f, "{}{suffix}", bytes / unit),
            None => write!(f, "{bytes}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn clean(line: &str) -> Options {
        let parsed = parse(line);
        assert!(parsed.is_clean(), "{line:?}: {:?}", parsed.errors);
        parsed.options
    }

    fn errors(line: &str) -> (Options, std::vec::Vec<CmdlineError<'_>>) {
        let parsed = parse(line);
        assert_eq!(parsed.errors_dropped, 0);
        (parsed.options, parsed.errors.to_vec())
    }

    #[test]
    fn defaults() {
        let defaults = Options::default();
        assert_eq!(defaults.log_level, LevelFilter::Info);
        assert_eq!(defaults.heap_size, 4 * MIB);
        assert_eq!(defaults.arena_size, 8 * MIB);
        assert!(!defaults.triggers);
        assert!(defaults.console_input);
        assert_eq!(clean(""), defaults);
        assert_eq!(clean(" \t  "), defaults);
    }

    #[test]
    fn every_option() {
        let options = clean("log=trace heap=16M arena=1G triggers=on console=off");
        assert_eq!(
            options,
            Options {
                log_level: LevelFilter::Trace,
                heap_size: 16 * MIB,
                arena_size: GIB,
                triggers: true,
                console_input: false,
                inject: Inject::Off,
            }
        );
        assert!(!clean("triggers=off").triggers);
        assert_eq!(clean("inject=on").inject, Inject::On);
        assert_eq!(
            clean("inject=register:7").inject,
            Inject::Plan(crate::inject::FaultType::Register, 7)
        );
        assert_eq!(errors("inject=zap:1").0.inject, Inject::Off);
        assert_eq!(errors("inject=code:x").1.len(), 1);
        assert!(clean("console=on").console_input);
        assert!(clean("triggers=ON").triggers);
    }

    #[test]
    fn every_level() {
        for (word, level) in [
            ("off", LevelFilter::Off),
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ] {
            assert_eq!(parse_level(word), Some(level));
            assert_eq!(level_name(level), word);
            assert_eq!(clean(&std::format!("log={word}")).log_level, level);
        }
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("verbose"), None);
        assert_eq!(parse_level(""), None);
        assert_eq!(parse_level("warning"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("8192"), Some(8192));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("12K"), Some(12 * KIB));
        assert_eq!(parse_size("1M"), Some(MIB));
        assert_eq!(parse_size("3m"), Some(3 * MIB));
        assert_eq!(parse_size("2G"), Some(2 * GIB));
        assert_eq!(parse_size("1g"), Some(GIB));
        assert_eq!(parse_size("0004K"), Some(4096));
        // The largest page multiple that fits, and the first one that does not.
        assert_eq!(parse_size("18446744073709547520"), Some(u64::MAX - 4095));
        assert_eq!(parse_size("17179869183G"), Some(17_179_869_183 * GIB));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            "",
            "0",
            "0K",
            "0G",
            "4095",
            "4097",
            "1K",
            "6K",
            "K",
            "M",
            "+4K",
            "-4K",
            " 4K",
            "4 K",
            "4KB",
            "4KiB",
            "4T",
            "1.5M",
            "0x1000",
            "four",
            "4Kk",
            "18446744073709551616",
            "99999999999999999999999",
            "17179869184G",
            "18014398509481984K",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn size_limits() {
        assert_eq!(clean("heap=1M").heap_size, MIB);
        assert_eq!(clean("heap=256M").heap_size, 256 * MIB);
        assert_eq!(clean("heap=1024K").heap_size, MIB);
        assert_eq!(clean("heap=1052672").heap_size, MIB + 4096);
        assert_eq!(clean("arena=2M").arena_size, 2 * MIB);
        assert_eq!(clean("arena=1G").arena_size, GIB);
        assert_eq!(clean("arena=1024m").arena_size, GIB);

        for (line, option, value) in [
            ("heap=1020K", "heap", "1020K"),
            ("heap=257M", "heap", "257M"),
            ("heap=1G", "heap", "1G"),
            ("heap=0", "heap", "0"),
            ("heap=12345", "heap", "12345"),
            ("heap=lots", "heap", "lots"),
            (
                "heap=99999999999999999999G",
                "heap",
                "99999999999999999999G",
            ),
            ("arena=1M", "arena", "1M"),
            ("arena=1025M", "arena", "1025M"),
            ("arena=2G", "arena", "2G"),
        ] {
            let (options, errs) = errors(line);
            assert_eq!(options, Options::default(), "{line}");
            let expected = if option == "heap" {
                EXPECT_HEAP
            } else {
                EXPECT_ARENA
            };
            assert_eq!(
                errs,
                [CmdlineError::BadValue {
                    option,
                    value,
                    expected
                }],
                "{line}"
            );
        }
    }

    #[test]
    fn bad_values() {
        let (options, errs) = errors("log=verbose triggers=yes console=1");
        assert_eq!(options, Options::default());
        assert_eq!(
            errs,
            [
                CmdlineError::BadValue {
                    option: "log",
                    value: "verbose",
                    expected: EXPECT_LEVEL
                },
                CmdlineError::BadValue {
                    option: "triggers",
                    value: "yes",
                    expected: EXPECT_SWITCH
                },
                CmdlineError::BadValue {
                    option: "console",
                    value: "1",
                    expected: EXPECT_SWITCH
                },
            ]
        );
        // `=` inside the value belongs to the value.
        let (_, errs) = errors("log=debug=1");
        assert_eq!(
            errs,
            [CmdlineError::BadValue {
                option: "log",
                value: "debug=1",
                expected: EXPECT_LEVEL
            }]
        );
    }

    #[test]
    fn unknown_options() {
        let (options, errs) = errors("foo log=debug bar=1 =x LOG=warn quiet");
        assert_eq!(options.log_level, LevelFilter::Debug);
        assert_eq!(
            errs,
            [
                CmdlineError::UnknownOption("foo"),
                CmdlineError::UnknownOption("bar"),
                CmdlineError::UnknownOption("=x"),
                CmdlineError::UnknownOption("LOG"),
                CmdlineError::UnknownOption("quiet"),
            ]
        );
    }

    #[test]
    fn missing_values() {
        let (options, errs) = errors("log heap= triggers");
        assert_eq!(options, Options::default());
        assert_eq!(
            errs,
            [
                CmdlineError::MissingValue("log"),
                CmdlineError::MissingValue("heap"),
                CmdlineError::MissingValue("triggers"),
            ]
        );
        let (_, errs) = errors("log=");
        assert_eq!(errs, [CmdlineError::MissingValue("log")]);
    }

    #[test]
    fn duplicates_keep_the_first_occurrence() {
        let (options, errs) = errors("log=debug heap=8M log=trace log=bogus heap=16M");
        assert_eq!(options.log_level, LevelFilter::Debug);
        assert_eq!(options.heap_size, 8 * MIB);
        assert_eq!(
            errs,
            [
                CmdlineError::Duplicate("log"),
                CmdlineError::Duplicate("log"),
                CmdlineError::Duplicate("heap"),
            ]
        );

        // A bad first occurrence still claims the option.
        let (options, errs) = errors("log=verbose log=debug");
        assert_eq!(options.log_level, LevelFilter::Info);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[1], CmdlineError::Duplicate("log"));

        let (options, errs) = errors("log log=debug");
        assert_eq!(options.log_level, LevelFilter::Info);
        assert_eq!(
            errs,
            [
                CmdlineError::MissingValue("log"),
                CmdlineError::Duplicate("log")
            ]
        );
    }

    #[test]
    fn kernel_path_is_skipped() {
        for line in [
            "/boot/lazarus.elf log=debug",
            "lazarus.elf log=debug",
            "/lazarus log=debug",
            "  \t/boot/lazarus.elf\tlog=debug  ",
            "(hd0,gpt2)/boot/lazarus.elf log=debug",
        ] {
            assert_eq!(clean(line).log_level, LevelFilter::Debug, "{line:?}");
        }
        assert_eq!(clean("/boot/lazarus.elf"), Options::default());

        // Only the first word can be the path, and only if it is no option.
        let (_, errs) = errors("log=debug /boot/lazarus.elf");
        assert_eq!(errs, [CmdlineError::UnknownOption("/boot/lazarus.elf")]);
        let (_, errs) = errors("/boot/lazarus.elf /boot/lazarus.elf");
        assert_eq!(errs, [CmdlineError::UnknownOption("/boot/lazarus.elf")]);
        let (_, errs) = errors("lazarus log=debug");
        assert_eq!(errs, [CmdlineError::UnknownOption("lazarus")]);
        let (_, errs) = errors("/x=1 log=debug");
        assert_eq!(errs, [CmdlineError::UnknownOption("/x")]);
    }

    #[test]
    fn tabs_and_spaces_separate_words() {
        let options = clean("\tlog=warn\t\theap=2M   arena=4M\t");
        assert_eq!(options.log_level, LevelFilter::Warn);
        assert_eq!(options.heap_size, 2 * MIB);
        assert_eq!(options.arena_size, 4 * MIB);
    }

    #[test]
    fn errors_beyond_capacity_are_counted() {
        let line = "a b c d e f g h i j k l m n o p q r s t log=debug";
        let parsed = parse(line);
        assert_eq!(parsed.options.log_level, LevelFilter::Debug);
        assert_eq!(parsed.errors.len(), MAX_ERRORS);
        assert_eq!(parsed.errors_dropped, 4);
        assert_eq!(parsed.errors[0], CmdlineError::UnknownOption("a"));
        assert_eq!(parsed.errors[15], CmdlineError::UnknownOption("p"));
        assert!(!parsed.is_clean());

        let exactly_full = parse("a b c d e f g h i j k l m n o p");
        assert_eq!(exactly_full.errors.len(), MAX_ERRORS);
        assert_eq!(exactly_full.errors_dropped, 0);
    }

    #[test]
    fn error_messages() {
        let cases = [
            (CmdlineError::UnknownOption("foo"), "unknown option 'foo'"),
            (
                CmdlineError::BadValue {
                    option: "log",
                    value: "verbose",
                    expected: EXPECT_LEVEL,
                },
                "bad value 'verbose' for log= (expected off, error, warn, info, debug or trace)",
            ),
            (
                CmdlineError::MissingValue("log"),
                "option 'log' needs a value (log=...)",
            ),
            (CmdlineError::Duplicate("log"), "option 'log' given twice"),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
        let (_, errs) = errors("heap=3");
        assert_eq!(
            errs[0].to_string(),
            "bad value '3' for heap= (expected a size from 1M to 256M in whole 4K pages)"
        );
    }

    #[test]
    fn description() {
        assert_eq!(
            describe(&Options::default()).to_string(),
            "log=info heap=4M arena=8M triggers=off console=on inject=off"
        );
        let options = Options {
            log_level: LevelFilter::Off,
            heap_size: MIB + 4 * KIB,
            arena_size: GIB,
            triggers: true,
            console_input: false,
            inject: Inject::Plan(crate::inject::FaultType::Code, 42),
        };
        let text = describe(&options).to_string();
        assert_eq!(
            text,
            "log=off heap=1028K arena=1G triggers=on console=off inject=code:42"
        );
        assert_eq!(clean(&text), options);

        assert_eq!(Size(0).to_string(), "0");
        assert_eq!(Size(1000).to_string(), "1000");
        assert_eq!(Size(1536 * MIB).to_string(), "1536M");
        assert_eq!(Size(4 * GIB).to_string(), "4G");
    }
}
