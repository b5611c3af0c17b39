//! VMs on the real machine: VMX on, the arena laid out, VMs created from GRUB modules,
//! and the loop that runs them. Everything here executes privileged instructions or
//! dereferences physical addresses; the decisions it acts on are made by the pure
//! modules beside it (`config`, `exits`, `hypercall`, `scheduler`, `crate::ept`,
//! `crate::loader`), which are unit-tested on the host.

use core::fmt::{self, Write};

use super::config::{self, Role, TripleFault, VmPlan};
use super::exits::{self, Exit, GuestMemory, Host, Outcome};
use super::scheduler::{self, SLICE_TSC};
use super::{commit, ConsoleSink, GuestMemoryMut};
use crate::arch::instructions::{rdmsr, rdtsc, wrmsr};
use crate::arch::vmentry::{self, EntryResult};
use crate::arch::{serial, vmx};
use crate::arena::{self, ArenaRoot, Phase, VmRecord, VmState, MAX_VMS};
use crate::ept::{Access, Ept, EptCaps, Mapping, TableMemory};
use crate::failure::{self, Failure};
use crate::loader::linux;
use crate::memory::{format_size, FrameAllocator, Range, FREE_RANGES};
use crate::vmx::exit::ExitReason;
use crate::vmx::fields::{GuestRegisters, VmcsAccess, VmcsField, VmxError};
use crate::vmx::host::{Controls, HostState};

mod commands;
mod create;
mod memory;
mod recover;
mod run;

pub use create::{host_state, CreateError, StartError};
use memory::*;
pub use memory::{module_bytes, Ram};
use run::*;

pub(super) const PAGE: u64 = 4096;
/// Guest-physical layout of an ELF VM (see `abi::StartInfo`).
pub(super) const GUEST_GDT: u64 = 0x500;
pub(super) const GUEST_PML4: u64 = 0x1000;
pub(super) const GUEST_PDPT: u64 = 0x2000;
pub(super) const GUEST_PD: u64 = 0x3000;
/// Page directories that fit below the start-info page... and the 64 KiB limit.
pub(super) const GUEST_MAX_PDS: u64 = (0x10000 - GUEST_PD) / PAGE;
pub(super) const ELF_MIN_GPA: u64 = 1 << 20;
// Every VM's RAM fits the identity map written below GUEST_PD (config enforces MAX_MEM).
const _: () = assert!(config::MAX_MEM <= GUEST_MAX_PDS << 30);

/// Everything the VM layer keeps outside the arena (transient: rebuilt at every boot).
pub struct Vms {
    root: &'static mut ArenaRoot,
    caps: Caps,
    /// Slot of the VM whose VMCS is current on this CPU (and whose FPU state is live).
    current: Option<usize>,
    /// Slot scheduled last: where the round robin continues.
    last: Option<usize>,
    slice_end: u64,
    /// TSC after which the next image page is scrubbed whatever the exit count
    /// (`Vms::scrub_due`).
    next_timed_scrub: u64,
    /// Wall-clock time at boot (seconds since 1970, UTC): where guest RTCs start.
    epoch: u64,
    /// The GRUB modules (guest images), by index, for resets.
    modules: heapless::Vec<Range, { crate::bootinfo::MAX_MODULES }>,
    /// Host TSC at the cold boot's first instruction, until the first VM entry reports
    /// how long the boot took (the benchmark's comparison figure).
    cold_boot: Option<u64>,
    /// Whether the failure triggers are enabled (`triggers=on`), for the `trigger`
    /// hypercall.
    triggers: bool,
}

impl Vms {
    /// The transient state over an arena `root` (fresh or adopted): nothing current,
    /// nothing scheduled yet.
    fn over(root: &'static mut ArenaRoot, caps: Caps, modules: &[Range], epoch: u64) -> Vms {
        // The watchdog's no-entry check reads the VM states from here.
        crate::watchdog::watch_vms(&root.vms);
        Vms {
            root,
            caps,
            current: None,
            last: None,
            epoch,
            slice_end: 0,
            next_timed_scrub: 0,
            modules: modules.iter().copied().collect(),
            cold_boot: None,
            triggers: false,
        }
    }
}

/// VMX facts gathered once at boot.
#[derive(Clone, Copy)]
pub struct Caps {
    pub vmcs_revision: u32,
    pub timer_rate: u8,
    pub ept: EptCaps,
    pub vpid: bool,
    pub controls: crate::vmx::controls::ControlSet,
    /// IA32_VMX_CR0_FIXED0/1, CR4_FIXED0/1.
    pub cr_fixed: [u64; 4],
    /// What guests may set, and the XSAVE components switched between VMs (`limits.xcr0`,
    /// the union of what any VM may enable).
    pub limits: crate::vm::rules::GuestLimits,
    /// Host TSC frequency in Hz (calibrated at boot): the clock of guest time.
    pub tsc_hz: u64,
    /// Whether IA32_TSC_AUX exists (RDTSCP: CPUID.80000001h:EDX[27]).
    pub tsc_aux: bool,
}

impl Caps {
    /// Derives everything from the probe: the control set (adjusted to the capability
    /// MSRs), EPT and VPID support, the preemption-timer rate, the CR fixed bits and the
    /// XCR0 bits the host can switch. Err names what is missing.
    pub fn from_probe(
        report: &crate::cpu::CpuReport,
        vmx: &crate::cpu::VmxReport,
        tsc_hz: u64,
    ) -> Result<(Caps, crate::vmx::controls::Dropped), crate::vmx::controls::ControlError> {
        use crate::vmx::controls::{Capabilities, ControlSet, OptionalControl};
        let m = &report.msrs;
        let caps = Capabilities {
            pinbased: m.pinbased,
            procbased: m.procbased,
            procbased2: m.procbased2,
            exit: m.exit,
            entry: m.entry,
        };
        let (controls, dropped) = ControlSet::lazarus(&caps)?;
        let xsave = raw_cpuid::cpuid!(1).ecx & (1 << 26) != 0;
        let xcr0 = if xsave {
            let leaf = raw_cpuid::cpuid!(0xd, 0);
            (u64::from(leaf.edx) << 32) | u64::from(leaf.eax)
        } else {
            1
        };
        Ok((
            Caps {
                vmcs_revision: vmx.vmcs_revision,
                timer_rate: vmx.preemption_timer_rate,
                ept: EptCaps::from_ept_vpid_cap(m.ept_vpid_cap),
                vpid: !dropped.contains(OptionalControl::Vpid),
                controls,
                cr_fixed: m.cr_fixed,
                limits: guest_limits(xcr0, m.cr_fixed, tsc_hz),
                tsc_hz,
                tsc_aux: raw_cpuid::cpuid!(0x8000_0001).edx & (1 << 27) != 0,
            },
            dropped,
        ))
    }
}

/// What guests of this CPU may set ([`crate::vm::rules::GuestLimits::derive`]) from its
/// CPUID, XCR0 support and VMX fixed CR bits.
fn guest_limits(host_xcr0: u64, cr_fixed: [u64; 4], tsc_hz: u64) -> crate::vm::rules::GuestLimits {
    let cpuid = |leaf: u32, subleaf: u32| {
        let r = raw_cpuid::cpuid!(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    crate::vm::rules::GuestLimits::derive(host_xcr0, cpuid, cr_fixed, |leaf, limits| {
        exits::guest_cpuid(leaf, 0, cpuid(leaf, 0), tsc_hz, limits)
    })
}
