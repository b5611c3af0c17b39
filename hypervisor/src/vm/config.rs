//! How a VM is described: the words of its GRUB `module2` line.
//!
//! ```text
//! module2 /boot/testguest.elf vm=alpha elf mem=16M on_triple_fault=reset mode=work
//! ```
//! `vm=NAME` says which VM the module belongs to; a role word says what the module is
//! (`elf`: a test guest, an ELF64 executable started in long mode); `mem=` and
//! `on_triple_fault=` configure the VM; every other `key=value` word is passed to the
//! guest untouched (test guests read them from their start-info page). A module line
//! with a mistake is refused with one clear error and the other VMs still start.

use core::fmt;

use crate::arena::{valid_name, ARGS_LEN};
use crate::cmdline::parse_size;

/// Guest RAM of a VM that does not say `mem=`.
pub const DEFAULT_MEM: u64 = 16 << 20;
/// The smallest guest RAM: page tables and start info below 1 MiB, the image above.
pub const MIN_MEM: u64 = 4 << 20;
/// The largest guest RAM a VM may ask for (an ELF guest's identity map must fit below
/// its start-info page: see `machine`).
pub const MAX_MEM: u64 = 8 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An ELF64 test guest.
    Elf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripleFault {
    Stop,
    Reset,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec<'a> {
    pub name: &'a str,
    pub role: Role,
    pub mem: u64,
    pub on_triple_fault: TripleFault,
    /// The words passed to the guest, space-separated.
    pub args: heapless::String<ARGS_LEN>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecError<'a> {
    /// No `vm=` word: the module is not a VM's.
    NotAVm,
    BadName(&'a str),
    NoRole,
    UnknownRole(&'a str),
    TwoRoles,
    BadMem(&'a str),
    BadTripleFault(&'a str),
    Duplicate(&'a str),
    ArgsTooLong,
    NotKeyValue(&'a str),
}

impl fmt::Display for SpecError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAVm => f.write_str("no vm=NAME word"),
            Self::BadName(n) => write!(f, "bad VM name '{n}' (1-15 of a-z 0-9 - _, not 'lazarus')"),
            Self::NoRole => f.write_str("no role word (elf)"),
            Self::UnknownRole(r) => write!(f, "unknown role '{r}' (supported: elf)"),
            Self::TwoRoles => f.write_str("more than one role word"),
            Self::BadMem(v) => write!(
                f,
                "bad mem= value '{v}' (a size from {} MiB to {} GiB, multiple of 2 MiB)",
                MIN_MEM >> 20,
                MAX_MEM >> 30
            ),
            Self::BadTripleFault(v) => {
                write!(f, "bad on_triple_fault= value '{v}' (stop or reset)")
            }
            Self::Duplicate(k) => write!(f, "{k}= given twice"),
            Self::ArgsTooLong => write!(f, "guest arguments longer than {} bytes", ARGS_LEN - 1),
            Self::NotKeyValue(w) => write!(f, "unexpected word '{w}' (expected key=value)"),
        }
    }
}

/// Parses a module string.
pub fn parse(module_string: &str) -> Result<VmSpec<'_>, SpecError<'_>> {
    let mut name = None;
    let mut role = None;
    let mut mem = None;
    let mut triple = None;
    let mut args: heapless::String<ARGS_LEN> = heapless::String::new();
    let mut words = module_string.split_ascii_whitespace();
    // GRUB may or may not include the module's path as the first word.
    let mut first = words.next();
    if first.is_some_and(|w| w.starts_with('/')) {
        first = words.next();
    }
    for word in first.into_iter().chain(words) {
        match word.split_once('=') {
            None if word == "elf" => {
                if role.replace(Role::Elf).is_some() {
                    return Err(SpecError::TwoRoles);
                }
            }
            None if word == "kernel" || word == "initrd" => {
                return Err(SpecError::UnknownRole(word))
            }
            None => return Err(SpecError::NotKeyValue(word)),
            Some(("vm", v)) => {
                if name.replace(v).is_some() {
                    return Err(SpecError::Duplicate("vm"));
                }
            }
            Some(("mem", v)) => {
                let size = parse_size(v)
                    .filter(|s| (MIN_MEM..=MAX_MEM).contains(s) && s % (2 << 20) == 0)
                    .ok_or(SpecError::BadMem(v))?;
                if mem.replace(size).is_some() {
                    return Err(SpecError::Duplicate("mem"));
                }
            }
            Some(("on_triple_fault", v)) => {
                let t = match v {
                    "stop" => TripleFault::Stop,
                    "reset" => TripleFault::Reset,
                    _ => return Err(SpecError::BadTripleFault(v)),
                };
                if triple.replace(t).is_some() {
                    return Err(SpecError::Duplicate("on_triple_fault"));
                }
            }
            Some(_) => {
                let sep = if args.is_empty() { "" } else { " " };
                // Leave room for the NUL terminator in the start-info page.
                if args.len() + sep.len() + word.len() >= ARGS_LEN {
                    return Err(SpecError::ArgsTooLong);
                }
                let _ = args.push_str(sep);
                let _ = args.push_str(word);
            }
        }
    }
    let name = name.ok_or(SpecError::NotAVm)?;
    if !valid_name(name) {
        return Err(SpecError::BadName(name));
    }
    Ok(VmSpec {
        name,
        role: role.ok_or(SpecError::NoRole)?,
        mem: mem.unwrap_or(DEFAULT_MEM),
        on_triple_fault: triple.unwrap_or(TripleFault::Stop),
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_line() {
        let s = parse("vm=alpha elf mem=32M on_triple_fault=reset mode=work burn=3").unwrap();
        assert_eq!(s.name, "alpha");
        assert_eq!(s.role, Role::Elf);
        assert_eq!(s.mem, 32 << 20);
        assert_eq!(s.on_triple_fault, TripleFault::Reset);
        assert_eq!(s.args.as_str(), "mode=work burn=3");
    }

    #[test]
    fn defaults_and_path() {
        let s = parse("/boot/testguest.elf vm=b elf").unwrap();
        assert_eq!(
            (s.name, s.mem, s.on_triple_fault),
            ("b", DEFAULT_MEM, TripleFault::Stop)
        );
        assert_eq!(s.args.as_str(), "");
    }

    #[test]
    fn every_error() {
        assert_eq!(parse("elf mem=8M"), Err(SpecError::NotAVm));
        assert_eq!(parse(""), Err(SpecError::NotAVm));
        assert_eq!(parse("vm=Bad elf"), Err(SpecError::BadName("Bad")));
        assert_eq!(parse("vm=lazarus elf"), Err(SpecError::BadName("lazarus")));
        assert_eq!(parse("vm=a"), Err(SpecError::NoRole));
        assert_eq!(parse("vm=a kernel"), Err(SpecError::UnknownRole("kernel")));
        assert_eq!(parse("vm=a elf elf"), Err(SpecError::TwoRoles));
        assert_eq!(parse("vm=a elf mem=3M"), Err(SpecError::BadMem("3M")));
        assert_eq!(parse("vm=a elf mem=5M"), Err(SpecError::BadMem("5M")));
        assert_eq!(parse("vm=a elf mem=lots"), Err(SpecError::BadMem("lots")));
        assert_eq!(
            parse("vm=a elf mem=8M mem=8M"),
            Err(SpecError::Duplicate("mem"))
        );
        assert_eq!(parse("vm=a vm=b elf"), Err(SpecError::Duplicate("vm")));
        assert_eq!(
            parse("vm=a elf on_triple_fault=explode"),
            Err(SpecError::BadTripleFault("explode"))
        );
        assert_eq!(
            parse("vm=a elf stray"),
            Err(SpecError::NotKeyValue("stray"))
        );
        let long = std::format!("vm=a elf x={}", "y".repeat(300));
        assert_eq!(parse(&long), Err(SpecError::ArgsTooLong));
    }

    #[test]
    fn messages() {
        assert_eq!(
            std::format!("{}", SpecError::UnknownRole("kernel")),
            "unknown role 'kernel' (supported: elf)"
        );
        assert!(std::format!("{}", SpecError::BadMem("3M")).contains("from 4 MiB to 8 GiB"));
    }
}
