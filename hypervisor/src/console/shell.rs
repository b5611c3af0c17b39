//! The hypervisor's command interpreter. Commands are parsed into [`Command`] and run
//! against a [`Machine`], which `boot` implements over the real hardware and the unit
//! tests implement over a fake, so every reply and error message is tested here.
//!
//! Every error reply is one line starting with `error: `.

use core::fmt::{self, Write};

use crate::cmdline::{level_name, parse_level};
use crate::triggers::{self, Trigger};

/// What a line asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Help,
    Mem,
    Cpu,
    /// `log` shows the level, `log LEVEL` sets it.
    Log(Option<log::LevelFilter>),
    Shutdown,
    /// `trigger KIND [VM]`, or `trigger bad-entry VM [VM...]` (the names as typed,
    /// separated by blanks).
    Trigger(Trigger, Option<&'a str>),
    /// `recovery`: the recoveries so far.
    Recovery,
    /// `watchdog`: the hang watchdog's limits and what it saw.
    Watchdog,
    /// `inject TYPE SEED`: arm the fault injector.
    Inject(crate::inject::FaultType, u64),
    VmList,
    VmStats(&'a str),
    VmStop(&'a str),
    VmReset(&'a str),
    /// `vm console NAME`: the serial line now goes to that VM's UART.
    VmConsole(&'a str),
    /// `vm create module=N WORDS...`: the words after `create`.
    VmCreate(&'a str),
}

/// Why a line was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellError<'a> {
    UnknownCommand(&'a str),
    UnexpectedArgument {
        command: &'static str,
        argument: &'a str,
    },
    MissingArgument {
        command: &'static str,
        expected: &'static str,
    },
    BadLevel(&'a str),
    UnknownTrigger(&'a str),
    UnknownFault(&'a str),
    BadSeed(&'a str),
    UnknownVmCommand(&'a str),
}

impl fmt::Display for ShellError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCommand(c) => {
                write!(f, "error: unknown command '{c}' (type 'help' for the list)")
            }
            Self::UnexpectedArgument { command, argument } => {
                write!(f, "error: {command}: unexpected argument '{argument}'")
            }
            Self::MissingArgument { command, expected } => {
                write!(f, "error: {command}: missing argument ({expected})")
            }
            Self::BadLevel(l) => {
                write!(f, "error: log: unknown level '{l}' (expected off, error, warn, info, debug or trace)")
            }
            Self::UnknownFault(t) => write!(
                f,
                "error: inject: unknown fault type '{t}' (one of: failstop register code data hang lock)"
            ),
            Self::BadSeed(s) => write!(f, "error: inject: bad seed '{s}' (a decimal number)"),
            Self::UnknownTrigger(t) => write!(
                f,
                "error: trigger: unknown kind '{t}' (one of: {})",
                triggers::Names
            ),
            Self::UnknownVmCommand(c) => {
                write!(
                    f,
                    "error: vm: unknown subcommand '{c}' (list, stats NAME, stop NAME, reset NAME, console NAME, create module=N WORDS)"
                )
            }
        }
    }
}

/// One line per command: the text of `help`.
pub const HELP: &str = "\
commands:
  help            this list
  mem             physical memory by class (image, pristine, arena, heap, free), free
                  arena pages
  cpu             processor identity and VT-x capabilities
  log [LEVEL]     show or set the log level (off, error, warn, info, debug, trace)
  trigger KIND    make the hypervisor fail on purpose (needs triggers=on): panic pf gp ud
                  de bp vmcs-host mid-exit mid-commit recovery-fail hang deadlock code-flip
                  arena-header exit-flip stack-overflow boot-record mid-create mid-reset
                  no-entry;
                  trigger corrupt-vm NAME; trigger bad-entry NAME...
  recovery        the recoveries so far: one `recovery` line each
  watchdog        the hang watchdog's limits, and the longest it has seen without
                  progress and without a VM entry
  inject TYPE SEED
                  arm one fault injection (needs inject=on): failstop register code data
                  hang lock; SEED (decimal) fixes where and what
  vm list         every VM: state, exits, CPU share, memory
  vm stats NAME   a VM's counters and its exits by reason
  vm stop NAME    stop a VM for good
  vm reset NAME   restart a VM from its module
  vm console NAME type into a VM's serial port; Ctrl-] comes back here
  vm create module=N WORDS
                  create a VM from boot module N (see README: VMs), e.g.
                  vm create module=0 vm=delta elf mem=8M mode=work
  shutdown        power the machine off
";

/// The part of `line` from `word` (one of its words) to its end, trailing blanks removed.
fn rest_of<'a>(line: &'a str, word: &'a str) -> &'a str {
    let start = (word.as_ptr() as usize).saturating_sub(line.as_ptr() as usize);
    line.get(start..).unwrap_or(word).trim_end()
}

/// Parses one line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<Command<'_>>, ShellError<'_>> {
    let mut words = line.split_ascii_whitespace();
    let Some(name) = words.next() else {
        return Ok(None);
    };
    let arg = words.next();
    let extra = words.next();
    let no_args = |command: &'static str, c: Command<'static>| match arg {
        Some(argument) => Err(ShellError::UnexpectedArgument { command, argument }),
        None => Ok(Some(c)),
    };
    let cmd = match name {
        "help" | "?" => no_args("help", Command::Help),
        "mem" => no_args("mem", Command::Mem),
        "cpu" => no_args("cpu", Command::Cpu),
        "shutdown" => no_args("shutdown", Command::Shutdown),
        "recovery" => no_args("recovery", Command::Recovery),
        "watchdog" => no_args("watchdog", Command::Watchdog),
        "inject" => {
            let usage = ShellError::MissingArgument {
                command: "inject",
                expected: "TYPE SEED (TYPE: failstop register code data hang lock)",
            };
            let (Some(kind), Some(seed)) = (arg, extra) else {
                return Err(usage);
            };
            if let Some(argument) = words.next() {
                return Err(ShellError::UnexpectedArgument {
                    command: "inject",
                    argument,
                });
            }
            let kind = crate::inject::FaultType::from_name(kind).ok_or(ShellError::UnknownFault(kind))?;
            let seed = seed.parse().map_err(|_| ShellError::BadSeed(seed))?;
            return Ok(Some(Command::Inject(kind, seed)));
        }
        "log" => match arg {
            None => Ok(Some(Command::Log(None))),
            Some(level) => parse_level(level)
                .map(|l| Some(Command::Log(Some(l))))
                .ok_or(ShellError::BadLevel(level)),
        },
        "trigger" => match arg {
            None => Err(ShellError::MissingArgument {
                command: "trigger",
                expected:
                    "one of: panic pf gp ud de bp vmcs-host mid-exit recovery-fail corrupt-vm hang deadlock mid-commit code-flip arena-header bad-entry exit-flip stack-overflow boot-record mid-create mid-reset no-entry",
            }),
            Some(kind) => match Trigger::from_name(kind) {
                Some(t) if t.takes_vm_list() => {
                    let first = extra.ok_or(ShellError::MissingArgument {
                        command: "trigger bad-entry",
                        expected: "one or more VM names",
                    })?;
                    return Ok(Some(Command::Trigger(t, Some(rest_of(line, first)))));
                }
                Some(t) if t.needs_vm() => {
                    let vm = extra.ok_or(ShellError::MissingArgument {
                        command: "trigger corrupt-vm",
                        expected: "a VM name",
                    })?;
                    if let Some(argument) = words.next() {
                        return Err(ShellError::UnexpectedArgument {
                            command: "trigger",
                            argument,
                        });
                    }
                    return Ok(Some(Command::Trigger(t, Some(vm))));
                }
                Some(t) => Ok(Some(Command::Trigger(t, None))),
                None => Err(ShellError::UnknownTrigger(kind)),
            },
        },
        "vm" => {
            let name = |command: &'static str| {
                extra.ok_or(ShellError::MissingArgument {
                    command,
                    expected: "a VM name",
                })
            };
            let cmd = match arg {
                None | Some("list") => Command::VmList,
                Some("stats") => Command::VmStats(name("vm stats")?),
                Some("stop") => Command::VmStop(name("vm stop")?),
                Some("reset") => Command::VmReset(name("vm reset")?),
                Some("console") => Command::VmConsole(name("vm console")?),
                Some("create") => {
                    let rest = line
                        .trim_start()
                        .strip_prefix("vm")
                        .unwrap_or("")
                        .trim_start();
                    let rest = rest.strip_prefix("create").unwrap_or("").trim();
                    if rest.is_empty() {
                        return Err(ShellError::MissingArgument {
                            command: "vm create",
                            expected: "module=N and a VM description",
                        });
                    }
                    return Ok(Some(Command::VmCreate(rest)));
                }
                Some(other) => return Err(ShellError::UnknownVmCommand(other)),
            };
            let limit = if matches!(cmd, Command::VmList) { 2 } else { 3 };
            if let Some(argument) = line.split_ascii_whitespace().nth(limit) {
                return Err(ShellError::UnexpectedArgument {
                    command: "vm",
                    argument,
                });
            }
            return Ok(Some(cmd));
        }
        other => return Err(ShellError::UnknownCommand(other)),
    }?;
    if let (Some(argument), Some(c)) = (extra, cmd) {
        let command = match c {
            Command::Log(_) => "log",
            Command::Trigger(..) => "trigger",
            _ => "command",
        };
        return Err(ShellError::UnexpectedArgument { command, argument });
    }
    Ok(cmd)
}

/// What the shell needs from the machine it runs on.
pub trait Machine {
    /// Writes the `mem` report.
    fn mem(&self, out: &mut dyn Write) -> fmt::Result;
    /// Writes the `cpu` report.
    fn cpu(&self, out: &mut dyn Write) -> fmt::Result;
    /// Whether `triggers=on` was given on the command line.
    fn triggers_enabled(&self) -> bool;
    /// Makes the failure happen (does not return on real hardware), or arms it; writes
    /// what happened when it returns.
    fn fire(&mut self, trigger: Trigger, vm: Option<&str>, out: &mut dyn Write) -> fmt::Result;
    /// `recovery`: one line per recorded recovery.
    fn recovery(&self, out: &mut dyn Write) -> fmt::Result;
    /// `inject TYPE SEED`: arms the injector, or says why not.
    fn inject(&mut self, plan: crate::inject::Plan, out: &mut dyn Write) -> fmt::Result;
    /// Powers off (does not return on real hardware).
    fn shutdown(&mut self);
    /// `vm list`, `vm stats NAME`, `vm stop NAME`.
    fn vm_list(&self, out: &mut dyn Write) -> fmt::Result;
    fn vm_stats(&self, name: &str, out: &mut dyn Write) -> fmt::Result;
    fn vm_stop(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result;
    fn vm_reset(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result;
    fn vm_console(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result;
    fn vm_create(&mut self, words: &str, out: &mut dyn Write) -> fmt::Result;
}

/// Runs `cmd`, writing its reply to `out`.
pub fn execute(cmd: Command<'_>, machine: &mut dyn Machine, out: &mut dyn Write) -> fmt::Result {
    match cmd {
        Command::Help => out.write_str(HELP),
        Command::Mem => machine.mem(out),
        Command::Cpu => machine.cpu(out),
        Command::Log(None) => writeln!(out, "log level: {}", level_name(log::max_level())),
        Command::Log(Some(level)) => {
            log::set_max_level(level);
            writeln!(out, "log level: {}", level_name(level))
        }
        Command::Recovery => machine.recovery(out),
        Command::Watchdog => writeln!(out, "{}", crate::watchdog::Stats::now()),
        Command::Inject(kind, seed) => {
            machine.inject(crate::inject::Plan::from_seed(kind, seed), out)
        }
        Command::Trigger(t, _) if !machine.triggers_enabled() => {
            writeln!(
                out,
                "error: trigger {}: triggers are disabled (boot with triggers=on)",
                t.name()
            )
        }
        Command::Trigger(t, vm) => {
            writeln!(out, "trigger: {}", t.name())?;
            machine.fire(t, vm, out)
        }
        Command::Shutdown => {
            machine.shutdown();
            Ok(())
        }
        Command::VmList => machine.vm_list(out),
        Command::VmStats(name) => machine.vm_stats(name, out),
        Command::VmStop(name) => machine.vm_stop(name, out),
        Command::VmReset(name) => machine.vm_reset(name, out),
        Command::VmConsole(name) => machine.vm_console(name, out),
        Command::VmCreate(words) => machine.vm_create(words, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[derive(Default)]
    struct Fake {
        triggers: bool,
        fired: Option<Trigger>,
        shut_down: bool,
        stopped: Option<String>,
    }

    impl Machine for Fake {
        fn mem(&self, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "image 1 MiB")
        }
        fn cpu(&self, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "cpu: test")
        }
        fn triggers_enabled(&self) -> bool {
            self.triggers
        }
        fn fire(&mut self, t: Trigger, _vm: Option<&str>, out: &mut dyn Write) -> fmt::Result {
            self.fired = Some(t);
            writeln!(
                out,
                "error: trigger {}: the failure did not happen",
                t.name()
            )
        }
        fn recovery(&self, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "recovery: 0 recoveries")
        }
        fn inject(&mut self, plan: crate::inject::Plan, out: &mut dyn Write) -> fmt::Result {
            writeln!(
                out,
                "inject: armed {} seed={}",
                plan.fault.name(),
                plan.seed
            )
        }
        fn shutdown(&mut self) {
            self.shut_down = true;
        }
        fn vm_list(&self, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "a id=1 state=running")
        }
        fn vm_stats(&self, name: &str, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "{name} exits=0")
        }
        fn vm_stop(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
            self.stopped = Some(name.into());
            writeln!(out, "vm {name}: stopped")
        }
        fn vm_reset(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "vm {name}: reset")
        }
        fn vm_console(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "console {name}")
        }
        fn vm_create(&mut self, words: &str, out: &mut dyn Write) -> fmt::Result {
            writeln!(out, "create [{words}]")
        }
    }

    fn run(line: &str, m: &mut Fake) -> String {
        let mut out = String::new();
        match parse(line) {
            Ok(Some(c)) => execute(c, m, &mut out).unwrap(),
            Ok(None) => {}
            Err(e) => writeln!(out, "{e}").unwrap(),
        }
        out
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse("  "), Ok(None));
        assert_eq!(parse("mem"), Ok(Some(Command::Mem)));
        assert_eq!(parse(" cpu "), Ok(Some(Command::Cpu)));
        assert_eq!(parse("log"), Ok(Some(Command::Log(None))));
        assert_eq!(
            parse("log debug"),
            Ok(Some(Command::Log(Some(log::LevelFilter::Debug))))
        );
        assert_eq!(
            parse("trigger ud"),
            Ok(Some(Command::Trigger(Trigger::InvalidOpcode, None)))
        );
        assert_eq!(
            parse("trigger arena-header"),
            Ok(Some(Command::Trigger(Trigger::ArenaHeader, None)))
        );
        assert!(parse("trigger arena-header db").is_err());
        assert_eq!(
            parse("trigger bad-entry alpha  beta "),
            Ok(Some(Command::Trigger(
                Trigger::BadEntry,
                Some("alpha  beta")
            )))
        );
        assert_eq!(
            parse("  trigger   bad-entry gamma"),
            Ok(Some(Command::Trigger(Trigger::BadEntry, Some("gamma"))))
        );
        assert_eq!(
            parse("trigger bad-entry"),
            Err(ShellError::MissingArgument {
                command: "trigger bad-entry",
                expected: "one or more VM names",
            })
        );
        assert_eq!(parse("shutdown"), Ok(Some(Command::Shutdown)));
    }

    #[test]
    fn errors_are_one_line_and_named() {
        let mut m = Fake::default();
        assert_eq!(
            run("frobnicate", &mut m),
            "error: unknown command 'frobnicate' (type 'help' for the list)\n"
        );
        assert_eq!(
            run("mem now", &mut m),
            "error: mem: unexpected argument 'now'\n"
        );
        assert_eq!(
            run("log loud", &mut m),
            "error: log: unknown level 'loud' (expected off, error, warn, info, debug or trace)\n"
        );
        assert_eq!(
            run("log info extra", &mut m),
            "error: log: unexpected argument 'extra'\n"
        );
        assert_eq!(
            run("trigger", &mut m),
            "error: trigger: missing argument (one of: panic pf gp ud de bp vmcs-host mid-exit recovery-fail corrupt-vm hang deadlock mid-commit code-flip arena-header bad-entry exit-flip stack-overflow boot-record mid-create mid-reset no-entry)\n"
        );
        assert_eq!(
            run("trigger boom", &mut m),
            "error: trigger: unknown kind 'boom' (one of: panic pf gp ud de bp vmcs-host mid-exit recovery-fail corrupt-vm hang deadlock mid-commit code-flip arena-header bad-entry exit-flip stack-overflow boot-record mid-create mid-reset no-entry)\n"
        );
    }

    #[test]
    fn vm_commands() {
        let mut m = Fake::default();
        assert_eq!(parse("vm"), Ok(Some(Command::VmList)));
        assert_eq!(parse("vm list"), Ok(Some(Command::VmList)));
        assert_eq!(parse("vm stats a"), Ok(Some(Command::VmStats("a"))));
        assert_eq!(run("vm stop web", &mut m), "vm web: stopped\n");
        assert_eq!(m.stopped.as_deref(), Some("web"));
        assert_eq!(
            run("vm stats", &mut m),
            "error: vm stats: missing argument (a VM name)\n"
        );
        assert_eq!(
            run("vm reboot x", &mut m),
            "error: vm: unknown subcommand 'reboot' (list, stats NAME, stop NAME, reset NAME, console NAME, create module=N WORDS)\n"
        );
        assert_eq!(
            run("vm list x", &mut m),
            "error: vm: unexpected argument 'x'\n"
        );
        assert_eq!(
            run("vm stop a b", &mut m),
            "error: vm: unexpected argument 'b'\n"
        );
    }

    #[test]
    fn triggers_need_the_option() {
        let mut m = Fake::default();
        assert_eq!(
            run("trigger ud", &mut m),
            "error: trigger ud: triggers are disabled (boot with triggers=on)\n"
        );
        assert_eq!(m.fired, None);
        let mut m = Fake {
            triggers: true,
            ..Default::default()
        };
        let out = run("trigger pf", &mut m);
        assert_eq!(m.fired, Some(Trigger::PageFault));
        assert!(out.starts_with("trigger: pf\n"));
        let out = run("trigger arena-header", &mut m);
        assert_eq!(m.fired, Some(Trigger::ArenaHeader));
        assert!(out.starts_with("trigger: arena-header\n"));
    }

    #[test]
    fn replies() {
        let mut m = Fake::default();
        let help = run("help", &mut m);
        assert!(help.contains("shutdown        power the machine off"));
        for t in Trigger::ALL {
            assert!(help.contains(t.name()), "help lists {}", t.name());
        }
        assert_eq!(run("mem", &mut m), "image 1 MiB\n");
        assert_eq!(run("cpu", &mut m), "cpu: test\n");
        run("shutdown", &mut m);
        assert!(m.shut_down);
        assert_eq!(run("log warn", &mut m), "log level: warn\n");
        assert_eq!(run("log", &mut m), "log level: warn\n");
        // Not armed in unit tests.
        assert_eq!(run("watchdog", &mut m), "watchdog: not armed\n");
        assert!(help.contains("watchdog        the hang watchdog's limits"));
        assert_eq!(
            parse("watchdog now"),
            Err(ShellError::UnexpectedArgument {
                command: "watchdog",
                argument: "now"
            })
        );
    }

    #[test]
    fn trigger_corrupt_vm_takes_a_name_and_recovery_takes_nothing() {
        assert_eq!(
            parse("trigger corrupt-vm db"),
            Ok(Some(Command::Trigger(Trigger::CorruptVm, Some("db"))))
        );
        assert!(parse("trigger corrupt-vm").is_err());
        assert!(parse("trigger corrupt-vm db web").is_err());
        assert!(parse("trigger panic db").is_err());
        assert_eq!(parse("recovery"), Ok(Some(Command::Recovery)));
        assert!(parse("recovery now").is_err());
    }

    #[test]
    fn inject_takes_a_type_and_a_seed() {
        use crate::inject::FaultType;
        assert_eq!(
            parse("inject code 42"),
            Ok(Some(Command::Inject(FaultType::Code, 42)))
        );
        let mut m = Fake::default();
        assert_eq!(
            run("inject register 7", &mut m),
            "inject: armed register seed=7\n"
        );
        assert_eq!(
            run("inject zap 1", &mut m),
            "error: inject: unknown fault type 'zap' (one of: failstop register code data hang lock)\n"
        );
        assert_eq!(
            run("inject code x", &mut m),
            "error: inject: bad seed 'x' (a decimal number)\n"
        );
        assert!(run("inject code", &mut m).starts_with("error: inject: missing argument"));
        assert!(run("inject code 1 2", &mut m).starts_with("error: inject: unexpected argument"));
    }
}
