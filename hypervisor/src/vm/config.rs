//! How VMs are described: the words of GRUB `module2` lines.
//!
//! ```text
//! module2 /boot/testguest.elf vm=alpha elf mem=16M on_triple_fault=reset mode=work
//! module2 /boot/vmlinuz       vm=web,db kernel mem=128M cmdline="console=ttyS0 quiet"
//! module2 /boot/initrd.gz     vm=web,db initrd
//! ```
//! `vm=NAME[,NAME...]` says which VMs the module belongs to, so one kernel or initramfs
//! loaded once can serve several VMs (GRUB reads the image slowly in Bochs). One role
//! word says what the module is: `elf` (a test guest), `kernel` (a Linux bzImage) or
//! `initrd` (its initramfs). `mem=`, `on_triple_fault=` and, for kernels, `cmdline=`
//! configure the VMs the line names; for `elf` every other `key=value` word is passed to
//! the guest. A word may be quoted (`"..."`, with `\"` and `\\` inside) to hold spaces.
//! Mistakes are reported one line per module or VM, and the correct VMs still start.

use core::fmt;

use crate::arena::{valid_name, MAX_VMS, NAME_LEN};
use crate::cmdline::parse_size;

/// Guest RAM of an ELF VM that does not say `mem=`.
pub const DEFAULT_ELF_MEM: u64 = 16 << 20;
/// Guest RAM of a Linux VM that does not say `mem=`.
pub const DEFAULT_LINUX_MEM: u64 = 128 << 20;
/// The smallest guest RAM: page tables and start info below 1 MiB, the image above.
pub const MIN_MEM: u64 = 4 << 20;
/// The largest guest RAM a VM may ask for (the identity map built for the guest must fit
/// below 64 KiB of guest memory: see `machine`).
pub const MAX_MEM: u64 = 8 << 30;
/// The kernel command line of a Linux VM that does not say `cmdline=`.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0,115200 panic=-1";
/// Room for an ELF guest's arguments in its start-info page.
pub const ELF_ARGS_LEN: usize = 256;
/// Longest word (a quoted command line included).
pub const MAX_WORD: usize = 256;

pub type Name = heapless::String<NAME_LEN>;
/// A module string is at most 256 bytes (`bootinfo::Module::string`), so is any word.
pub type Text = heapless::String<256>;
/// A word quoted in an error message (cut to fit, with "...").
pub type Snippet = heapless::String<40>;

fn snippet(s: &str) -> Snippet {
    let mut out = Snippet::new();
    if s.len() <= 40 {
        let _ = out.push_str(s);
    } else {
        let cut = (0..=36).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        let _ = out.push_str(&s[..cut]);
        let _ = out.push_str("...");
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An ELF64 test guest.
    Elf,
    /// A Linux bzImage.
    Kernel,
    /// An initramfs for a Linux VM.
    Initrd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripleFault {
    Stop,
    Reset,
}

/// One module line, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleSpec {
    pub names: heapless::Vec<Name, MAX_VMS>,
    pub role: Role,
    pub mem: Option<u64>,
    pub on_triple_fault: Option<TripleFault>,
    /// `on_reboot=`: what a guest-requested reset does (reset, the default, or stop).
    pub on_reboot: Option<TripleFault>,
    /// `cmdline=` of a kernel line.
    pub cmdline: Option<Text>,
    /// The other words of an `elf` line, space-separated.
    pub args: Text,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// No `vm=` word: the module is not a VM's.
    NotAVm,
    BadName(Snippet),
    TooManyNames,
    NoRole,
    UnknownRole(Snippet),
    TwoRoles,
    BadMem(Snippet),
    BadTripleFault(Snippet),
    BadReboot(Snippet),
    Duplicate(&'static str),
    ArgsTooLong,
    WordTooLong,
    UnterminatedQuote,
    NotKeyValue(Snippet),
    /// A word the role does not take (e.g. `mem=` on an initrd line).
    NotFor {
        word: Snippet,
        role: &'static str,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAVm => f.write_str("no vm=NAME word"),
            Self::BadName(n) => write!(f, "bad VM name '{n}' (1-15 of a-z 0-9 - _, not 'lazarus')"),
            Self::TooManyNames => write!(f, "more than {MAX_VMS} VM names"),
            Self::NoRole => f.write_str("no role word (elf, kernel or initrd)"),
            Self::UnknownRole(r) => write!(f, "unknown role '{r}' (elf, kernel or initrd)"),
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
            Self::BadReboot(v) => write!(f, "bad on_reboot= value '{v}' (reset or stop)"),
            Self::Duplicate(k) => write!(f, "{k}= given twice"),
            Self::ArgsTooLong => {
                write!(f, "guest arguments longer than {} bytes", ELF_ARGS_LEN - 1)
            }
            Self::WordTooLong => write!(f, "a word longer than {} bytes", MAX_WORD - 1),
            Self::UnterminatedQuote => f.write_str("a quote is not closed"),
            Self::NotKeyValue(w) => write!(f, "unexpected word '{w}' (expected key=value)"),
            Self::NotFor { word, role } => write!(f, "'{word}' does not apply to a {role} module"),
        }
    }
}

/// Splits a module string into words: whitespace separates, double quotes group (and
/// are removed), a backslash inside quotes takes the next character literally.
pub fn words(s: &str) -> Result<heapless::Vec<Text, 32>, SpecError> {
    let mut out = heapless::Vec::new();
    let mut word = Text::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                let next = chars.next().ok_or(SpecError::UnterminatedQuote)?;
                word.push(next).map_err(|_| SpecError::WordTooLong)?;
            }
            c if c.is_ascii_whitespace() && !quoted => {
                if in_word {
                    out.push(core::mem::take(&mut word))
                        .map_err(|_| SpecError::ArgsTooLong)?;
                    in_word = false;
                }
            }
            c => {
                word.push(c).map_err(|_| SpecError::WordTooLong)?;
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(SpecError::UnterminatedQuote);
    }
    if in_word {
        out.push(word).map_err(|_| SpecError::ArgsTooLong)?;
    }
    Ok(out)
}

fn text(s: &str) -> Text {
    let mut t = Text::new();
    let cut = (0..=s.len().min(255))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    let _ = t.push_str(&s[..cut]);
    t
}

/// Parses a module string.
pub fn parse(module_string: &str) -> Result<ModuleSpec, SpecError> {
    let all = words(module_string)?;
    let mut names = None;
    let mut role = None;
    let mut mem = None;
    let mut triple = None;
    let mut reboot = None;
    let mut cmdline: Option<Text> = None;
    let mut args = Text::new();
    let mut others: heapless::Vec<&str, 32> = heapless::Vec::new();
    // GRUB may or may not include the module's path as the first word.
    let skip = usize::from(all.first().is_some_and(|w| w.starts_with('/')));
    for word in all.iter().skip(skip).map(|w| w.as_str()) {
        match word.split_once('=') {
            None => {
                let r = match word {
                    "elf" => Role::Elf,
                    "kernel" => Role::Kernel,
                    "initrd" => Role::Initrd,
                    _ => return Err(SpecError::NotKeyValue(snippet(word))),
                };
                if role.replace(r).is_some() {
                    return Err(SpecError::TwoRoles);
                }
            }
            Some(("vm", v)) => {
                if names.is_some() {
                    return Err(SpecError::Duplicate("vm"));
                }
                let mut list: heapless::Vec<Name, MAX_VMS> = heapless::Vec::new();
                for n in v.split(',') {
                    if !valid_name(n) {
                        return Err(SpecError::BadName(snippet(n)));
                    }
                    let mut name = Name::new();
                    let _ = name.push_str(n);
                    list.push(name).map_err(|_| SpecError::TooManyNames)?;
                }
                names = Some(list);
            }
            Some(("mem", v)) => {
                let size = parse_size(v)
                    .filter(|s| (MIN_MEM..=MAX_MEM).contains(s) && s % (2 << 20) == 0)
                    .ok_or_else(|| SpecError::BadMem(snippet(v)))?;
                if mem.replace(size).is_some() {
                    return Err(SpecError::Duplicate("mem"));
                }
            }
            Some(("on_triple_fault", v)) => {
                let t = match v {
                    "stop" => TripleFault::Stop,
                    "reset" => TripleFault::Reset,
                    _ => return Err(SpecError::BadTripleFault(snippet(v))),
                };
                if triple.replace(t).is_some() {
                    return Err(SpecError::Duplicate("on_triple_fault"));
                }
            }
            Some(("on_reboot", v)) => {
                let t = match v {
                    "stop" => TripleFault::Stop,
                    "reset" => TripleFault::Reset,
                    _ => return Err(SpecError::BadReboot(snippet(v))),
                };
                if reboot.replace(t).is_some() {
                    return Err(SpecError::Duplicate("on_reboot"));
                }
            }
            Some(("cmdline", v)) => {
                if cmdline.replace(text(v)).is_some() {
                    return Err(SpecError::Duplicate("cmdline"));
                }
            }
            Some(_) => {
                let _ = others.push(word);
            }
        }
    }
    let names = names.ok_or(SpecError::NotAVm)?;
    let role = role.ok_or(SpecError::NoRole)?;
    let not_for = |word: &str, role: &'static str| SpecError::NotFor {
        word: snippet(word),
        role,
    };
    match role {
        Role::Elf => {
            if cmdline.is_some() {
                return Err(not_for("cmdline=", "elf"));
            }
            // The start-info page holds the arguments NUL-terminated (abi::StartInfo::args).
            let limit = ELF_ARGS_LEN;
            for w in others {
                let sep = if args.is_empty() { "" } else { " " };
                if args.len() + sep.len() + w.len() >= limit {
                    return Err(SpecError::ArgsTooLong);
                }
                let _ = args.push_str(sep);
                let _ = args.push_str(w);
            }
        }
        Role::Kernel => {
            if let Some(w) = others.first() {
                return Err(not_for(w, "kernel"));
            }
        }
        Role::Initrd => {
            if let Some(w) = others.first() {
                return Err(not_for(w, "initrd"));
            }
            if mem.is_some() || triple.is_some() || reboot.is_some() || cmdline.is_some() {
                return Err(not_for(
                    "mem=/on_triple_fault=/on_reboot=/cmdline=",
                    "initrd",
                ));
            }
        }
    }
    Ok(ModuleSpec {
        names,
        role,
        mem,
        on_triple_fault: triple,
        on_reboot: reboot,
        cmdline,
        args,
    })
}

/// One VM to create, gathered from the module lines that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPlan {
    pub name: Name,
    /// Index of the `elf` or `kernel` module.
    pub image: usize,
    pub role: Role,
    /// Index of the `initrd` module (Linux VMs only).
    pub initrd: Option<usize>,
    pub mem: u64,
    pub on_triple_fault: TripleFault,
    /// What a guest-requested reset does.
    pub on_reboot: TripleFault,
    /// Guest arguments (elf) or kernel command line (kernel).
    pub args: Text,
}

/// Why a VM named by the modules cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// A second elf/kernel module names a VM: the first one wins.
    TwoImages {
        name: Name,
        module: usize,
        first: usize,
    },
    TwoInitrds {
        name: Name,
    },
    InitrdWithoutKernel {
        name: Name,
    },
    InitrdForElf {
        name: Name,
    },
}

impl PlanError {
    /// The VM the error is about.
    pub fn name(&self) -> &str {
        match self {
            Self::TwoImages { name, .. }
            | Self::TwoInitrds { name }
            | Self::InitrdWithoutKernel { name }
            | Self::InitrdForElf { name } => name,
        }
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TwoImages { module, first, .. } => {
                write!(
                    f,
                    "module {module} describes it again (module {first} already does)"
                )
            }
            Self::TwoInitrds { .. } => f.write_str("more than one initrd module names it"),
            Self::InitrdWithoutKernel { .. } => f.write_str("an initrd but no kernel module"),
            Self::InitrdForElf { .. } => f.write_str("an initrd is only for a kernel"),
        }
    }
}

/// Gathers the VMs described by the parsed modules `(index, spec)`, in the order their
/// image modules appear. VMs with a mistake are returned as errors, the rest as plans.
pub fn plan(
    modules: &[(usize, ModuleSpec)],
) -> (
    heapless::Vec<VmPlan, MAX_VMS>,
    heapless::Vec<PlanError, MAX_VMS>,
) {
    let mut plans: heapless::Vec<VmPlan, MAX_VMS> = heapless::Vec::new();
    let mut errors: heapless::Vec<PlanError, MAX_VMS> = heapless::Vec::new();
    let mut broken: heapless::Vec<Name, MAX_VMS> = heapless::Vec::new();
    for (index, spec) in modules.iter().filter(|(_, s)| s.role != Role::Initrd) {
        for name in &spec.names {
            if let Some(first) = plans.iter().find(|p| &p.name == name) {
                let _ = errors.push(PlanError::TwoImages {
                    name: name.clone(),
                    module: *index,
                    first: first.image,
                });
                continue;
            }
            let (args, default_mem) = match spec.role {
                Role::Kernel => (
                    spec.cmdline
                        .clone()
                        .unwrap_or_else(|| text(DEFAULT_CMDLINE)),
                    DEFAULT_LINUX_MEM,
                ),
                _ => (spec.args.clone(), DEFAULT_ELF_MEM),
            };
            let _ = plans.push(VmPlan {
                name: name.clone(),
                image: *index,
                role: spec.role,
                initrd: None,
                mem: spec.mem.unwrap_or(default_mem),
                on_triple_fault: spec.on_triple_fault.unwrap_or(TripleFault::Stop),
                on_reboot: spec.on_reboot.unwrap_or(TripleFault::Reset),
                args,
            });
        }
    }
    for (index, spec) in modules.iter().filter(|(_, s)| s.role == Role::Initrd) {
        for name in &spec.names {
            let error = match plans.iter_mut().find(|p| &p.name == name) {
                None => Some(PlanError::InitrdWithoutKernel { name: name.clone() }),
                Some(p) if p.role == Role::Elf => {
                    Some(PlanError::InitrdForElf { name: name.clone() })
                }
                Some(p) if p.initrd.is_some() => Some(PlanError::TwoInitrds { name: name.clone() }),
                Some(p) => {
                    p.initrd = Some(*index);
                    None
                }
            };
            if let Some(e) = error {
                let _ = errors.push(e);
                let _ = broken.push(name.clone());
            }
        }
    }
    plans.retain(|p| !broken.contains(&p.name));
    (plans, errors)
}

#[cfg(test)]
mod tests;
