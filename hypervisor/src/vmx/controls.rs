//! VM-execution, VM-exit and VM-entry control settings, adjusted to what the capability
//! MSRs allow, and the fixed bits of CR0 and CR4 in VMX operation.
//!
//! Each control capability MSR (SDM Vol. 3D §A.3.1-§A.3.3, §A.4, §A.5) reports in bits 31:0
//! the allowed 0-settings (a bit set there must be 1 in the control field) and in bits 63:32
//! the allowed 1-settings (a bit clear there must be 0). Callers pass the IA32_VMX_TRUE_*
//! MSRs when IA32_VMX_BASIC bit 55 is set (§A.1), since only those report which "default1"
//! controls may be 0; the legacy MSRs report all of them as must-be-1, and [`adjust`]
//! turns them on either way.
//!
//! Bit positions of the controls are defined in SDM Vol. 3C §25.6.1 (Table 25-5, pin-based),
//! §25.6.2 (Table 25-6 primary and Table 25-7 secondary processor-based), §25.7.1 (primary
//! VM-exit controls) and §25.8.1 (VM-entry controls).

use core::fmt;

use super::fields::{VmcsAccess, VmcsField, VmxError};

/// Capability MSRs for the exit and entry controls and the fixed CR bits (SDM Vol. 3D
/// Appendix A; the pin-based and processor-based ones are in [`crate::cpu`]).
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;

/// Pin-based VM-execution controls (SDM Vol. 3C §25.6.1, Table 25-5).
pub mod pin {
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    pub const ACTIVATE_PREEMPTION_TIMER: u32 = 1 << 6;

    /// Bit names, for diagnostics.
    pub const NAMES: &[(u32, &str)] = &[
        (0, "external-interrupt exiting"),
        (3, "NMI exiting"),
        (5, "virtual NMIs"),
        (6, "activate VMX-preemption timer"),
    ];
}

/// Primary processor-based VM-execution controls (SDM Vol. 3C §25.6.2, Table 25-6).
pub mod primary {
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const INVLPG_EXITING: u32 = 1 << 9;
    pub const MWAIT_EXITING: u32 = 1 << 10;
    pub const RDPMC_EXITING: u32 = 1 << 11;
    pub const RDTSC_EXITING: u32 = 1 << 12;
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    pub const MOV_DR_EXITING: u32 = 1 << 23;
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const MONITOR_EXITING: u32 = 1 << 29;
    pub const PAUSE_EXITING: u32 = 1 << 30;
    pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 1 << 31;

    pub const NAMES: &[(u32, &str)] = &[
        (2, "interrupt-window exiting"),
        (3, "use TSC offsetting"),
        (7, "HLT exiting"),
        (9, "INVLPG exiting"),
        (10, "MWAIT exiting"),
        (11, "RDPMC exiting"),
        (12, "RDTSC exiting"),
        (15, "CR3-load exiting"),
        (16, "CR3-store exiting"),
        (19, "CR8-load exiting"),
        (20, "CR8-store exiting"),
        (21, "use TPR shadow"),
        (22, "NMI-window exiting"),
        (23, "MOV-DR exiting"),
        (24, "unconditional I/O exiting"),
        (25, "use I/O bitmaps"),
        (27, "monitor trap flag"),
        (28, "use MSR bitmaps"),
        (29, "MONITOR exiting"),
        (30, "PAUSE exiting"),
        (31, "activate secondary controls"),
    ];
}

/// Secondary processor-based VM-execution controls (SDM Vol. 3C §25.6.2, Table 25-7).
pub mod secondary {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    pub const ENABLE_EPT: u32 = 1 << 1;
    pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    pub const ENABLE_VPID: u32 = 1 << 5;
    pub const WBINVD_EXITING: u32 = 1 << 6;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    pub const ENABLE_XSAVES_XRSTORS: u32 = 1 << 20;

    pub const NAMES: &[(u32, &str)] = &[
        (0, "virtualize APIC accesses"),
        (1, "enable EPT"),
        (2, "descriptor-table exiting"),
        (3, "enable RDTSCP"),
        (5, "enable VPID"),
        (6, "WBINVD exiting"),
        (7, "unrestricted guest"),
        (12, "enable INVPCID"),
        (20, "enable XSAVES/XRSTORS"),
    ];
}

/// Primary VM-exit controls (SDM Vol. 3C §25.7.1).
pub mod exit {
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    pub const ACKNOWLEDGE_INTERRUPT_ON_EXIT: u32 = 1 << 15;
    pub const SAVE_IA32_PAT: u32 = 1 << 18;
    pub const LOAD_IA32_PAT: u32 = 1 << 19;
    pub const SAVE_IA32_EFER: u32 = 1 << 20;
    pub const LOAD_IA32_EFER: u32 = 1 << 21;
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;

    pub const NAMES: &[(u32, &str)] = &[
        (2, "save debug controls"),
        (9, "host address-space size"),
        (15, "acknowledge interrupt on exit"),
        (18, "save IA32_PAT"),
        (19, "load IA32_PAT"),
        (20, "save IA32_EFER"),
        (21, "load IA32_EFER"),
        (22, "save VMX-preemption timer value"),
    ];
}

/// VM-entry controls (SDM Vol. 3C §25.8.1).
pub mod entry {
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const LOAD_IA32_PAT: u32 = 1 << 14;
    pub const LOAD_IA32_EFER: u32 = 1 << 15;

    pub const NAMES: &[(u32, &str)] = &[
        (2, "load debug controls"),
        (9, "IA-32e mode guest"),
        (14, "load IA32_PAT"),
        (15, "load IA32_EFER"),
    ];
}

/// Requested controls some of which the processor does not allow to be 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    pub requested: u32,
    /// The bits that would be 1 but whose allowed 1-setting is 0.
    pub unsupported: u32,
}

/// The control field value for `requested`: the must-be-1 bits of `capability` (bits 31:0)
/// added, and an error naming every bit that would be 1 but may not be (bits 63:32 clear).
pub fn adjust(requested: u32, capability: u64) -> Result<u32, Missing> {
    let must_be_one = capability as u32;
    let may_be_one = (capability >> 32) as u32;
    let value = requested | must_be_one;
    let unsupported = value & !may_be_one;
    if unsupported == 0 {
        Ok(value)
    } else {
        Err(Missing {
            requested,
            unsupported,
        })
    }
}

/// Whether every bit of `bits` may be 1 (its allowed 1-setting is set).
pub fn allows(capability: u64, bits: u32) -> bool {
    (capability >> 32) as u32 & bits == bits
}

/// One of the five control fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlField {
    PinBased,
    PrimaryProcBased,
    SecondaryProcBased,
    Exit,
    Entry,
}

impl ControlField {
    pub const fn name(self) -> &'static str {
        match self {
            Self::PinBased => "pin-based VM-execution controls",
            Self::PrimaryProcBased => "primary processor-based VM-execution controls",
            Self::SecondaryProcBased => "secondary processor-based VM-execution controls",
            Self::Exit => "VM-exit controls",
            Self::Entry => "VM-entry controls",
        }
    }

    pub const fn vmcs_field(self) -> VmcsField {
        match self {
            Self::PinBased => VmcsField::PinBasedControls,
            Self::PrimaryProcBased => VmcsField::PrimaryProcBasedControls,
            Self::SecondaryProcBased => VmcsField::SecondaryProcBasedControls,
            Self::Exit => VmcsField::ExitControls,
            Self::Entry => VmcsField::EntryControls,
        }
    }

    /// The SDM name of `bit` in this field, if Lazarus defines it.
    pub fn bit_name(self, bit: u32) -> Option<&'static str> {
        let names = match self {
            Self::PinBased => pin::NAMES,
            Self::PrimaryProcBased => primary::NAMES,
            Self::SecondaryProcBased => secondary::NAMES,
            Self::Exit => exit::NAMES,
            Self::Entry => entry::NAMES,
        };
        names.iter().find(|(b, _)| *b == bit).map(|(_, n)| *n)
    }
}

/// A required control the processor does not offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlError {
    pub field: ControlField,
    pub missing: Missing,
}

/// `secondary processor-based VM-execution controls: bit 7 (unrestricted guest) cannot be 1`
impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.missing.unsupported;
        write!(
            f,
            "{}: {} ",
            self.field.name(),
            if bits.count_ones() == 1 {
                "bit"
            } else {
                "bits"
            }
        )?;
        let mut first = true;
        for bit in (0..32).filter(|b| bits & (1 << b) != 0) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            match self.field.bit_name(bit) {
                Some(name) => write!(f, "{bit} ({name})")?,
                None => write!(f, "{bit}")?,
            }
        }
        f.write_str(" cannot be 1")
    }
}

/// The five control capability MSRs, already the TRUE_ versions where IA32_VMX_BASIC bit 55
/// says they exist. `procbased2` is 0 when secondary controls cannot be activated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pinbased: u64,
    pub procbased: u64,
    pub procbased2: u64,
    pub exit: u64,
    pub entry: u64,
}

/// Controls Lazarus uses when the processor allows them and does without otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionalControl {
    /// Without it every VM exit and entry flushes the guest's TLB entries.
    Vpid,
    /// Without it RDTSCP raises #UD in the guest.
    Rdtscp,
    /// Without it INVPCID raises #UD in the guest.
    Invpcid,
    /// Without it XSAVES/XRSTORS raise #UD in the guest.
    Xsaves,
    /// Without it the preemption timer restarts from the VMCS value at every VM entry.
    SavePreemptionTimer,
}

impl OptionalControl {
    pub const ALL: [OptionalControl; 5] = [
        Self::Vpid,
        Self::Rdtscp,
        Self::Invpcid,
        Self::Xsaves,
        Self::SavePreemptionTimer,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Vpid => "vpid",
            Self::Rdtscp => "rdtscp",
            Self::Invpcid => "invpcid",
            Self::Xsaves => "xsaves",
            Self::SavePreemptionTimer => "save_preemption_timer",
        }
    }

    const fn mask(self) -> u8 {
        1 << self as u8
    }
}

/// The optional controls that were left off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped(u8);

impl Dropped {
    pub const fn contains(self, control: OptionalControl) -> bool {
        self.0 & control.mask() != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = OptionalControl> {
        OptionalControl::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }

    fn insert(&mut self, control: OptionalControl) {
        self.0 |= control.mask();
    }
}

/// `vpid,xsaves`, or `none`.
impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, c) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(c.name())?;
        }
        Ok(())
    }
}

/// Values for the five control fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlSet {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    pub entry: u32,
}

impl ControlSet {
    /// Lazarus's controls on a processor with these capabilities.
    ///
    /// - pin-based: external interrupts and NMIs exit (host code runs with interrupts off and
    ///   NMIs belong to the watchdog), virtual NMIs (guest NMI blocking is tracked by the
    ///   processor), the preemption timer (the scheduler's time slice);
    /// - primary: HLT exits, I/O and MSR accesses go through bitmaps, TSC offsetting,
    ///   secondary controls active; MONITOR, MWAIT and RDPMC exit (CPUID hides them: the
    ///   guest gets #UD or #GP, as without the feature, instead of running them on the
    ///   host's hardware); CR8 loads and stores exit (the physical CR8 is the host's task
    ///   priority: each vCPU has its own);
    /// - secondary: EPT and unrestricted guest (required); VPID, RDTSCP, INVPCID and
    ///   XSAVES/XRSTORS when allowed, so that a Linux guest that sees those instructions
    ///   in CPUID does not take #UD;
    /// - VM-exit: 64-bit host, interrupts acknowledged on exit (the vector is in the
    ///   VM-exit interruption information), guest DR7 and IA32_DEBUGCTL, EFER and PAT
    ///   saved and host ones loaded, the preemption timer value saved when allowed;
    /// - VM-entry: guest DR7, IA32_DEBUGCTL, EFER and PAT loaded (without the debug
    ///   controls a guest's DR7 would be lost at every exit, which sets DR7 to 0x400). "IA-32e mode guest" follows the guest's
    ///   EFER.LMA at each entry: see [`ControlSet::entry_for_guest_efer`].
    ///
    /// Must-be-1 bits of the capability MSRs are added. The first required control that
    /// cannot be 1 is an error; the optional ones left off are returned.
    ///
    /// With VPID on, the VPID field must be non-zero (SDM Vol. 3C §27.2.1.1); with
    /// XSAVES/XRSTORS on, write [`VmcsField::XssExitingBitmap`], which those instructions
    /// consult (§25.6, "XSS-Exiting Bitmap").
    pub fn lazarus(caps: &Capabilities) -> Result<(ControlSet, Dropped), ControlError> {
        let mut dropped = Dropped::default();
        let mut optional = |cap: u64, bit: u32, control: OptionalControl| {
            if allows(cap, bit) {
                bit
            } else {
                dropped.insert(control);
                0
            }
        };

        let pin_req = pin::EXTERNAL_INTERRUPT_EXITING
            | pin::NMI_EXITING
            | pin::VIRTUAL_NMIS
            | pin::ACTIVATE_PREEMPTION_TIMER;
        let proc_req = primary::HLT_EXITING
            | primary::MWAIT_EXITING
            | primary::RDPMC_EXITING
            | primary::CR8_LOAD_EXITING
            | primary::CR8_STORE_EXITING
            | primary::MONITOR_EXITING
            | primary::USE_TSC_OFFSETTING
            | primary::USE_IO_BITMAPS
            | primary::USE_MSR_BITMAPS
            | primary::ACTIVATE_SECONDARY_CONTROLS;
        let proc2_req = secondary::ENABLE_EPT
            | secondary::UNRESTRICTED_GUEST
            | optional(
                caps.procbased2,
                secondary::ENABLE_VPID,
                OptionalControl::Vpid,
            )
            | optional(
                caps.procbased2,
                secondary::ENABLE_RDTSCP,
                OptionalControl::Rdtscp,
            )
            | optional(
                caps.procbased2,
                secondary::ENABLE_INVPCID,
                OptionalControl::Invpcid,
            )
            | optional(
                caps.procbased2,
                secondary::ENABLE_XSAVES_XRSTORS,
                OptionalControl::Xsaves,
            );
        let exit_req = exit::SAVE_DEBUG_CONTROLS
            | exit::HOST_ADDRESS_SPACE_SIZE
            | exit::ACKNOWLEDGE_INTERRUPT_ON_EXIT
            | exit::SAVE_IA32_PAT
            | exit::LOAD_IA32_PAT
            | exit::SAVE_IA32_EFER
            | exit::LOAD_IA32_EFER
            | optional(
                caps.exit,
                exit::SAVE_PREEMPTION_TIMER,
                OptionalControl::SavePreemptionTimer,
            );
        let entry_req = entry::LOAD_DEBUG_CONTROLS | entry::LOAD_IA32_PAT | entry::LOAD_IA32_EFER;

        let adjust_field = |field: ControlField, requested: u32, cap: u64| {
            adjust(requested, cap).map_err(|missing| ControlError { field, missing })
        };
        let set = ControlSet {
            pin: adjust_field(ControlField::PinBased, pin_req, caps.pinbased)?,
            proc: adjust_field(ControlField::PrimaryProcBased, proc_req, caps.procbased)?,
            proc2: adjust_field(ControlField::SecondaryProcBased, proc2_req, caps.procbased2)?,
            exit: adjust_field(ControlField::Exit, exit_req, caps.exit)?,
            entry: adjust_field(ControlField::Entry, entry_req, caps.entry)?,
        };
        Ok((set, dropped))
    }

    /// The VM-entry controls for a guest whose IA32_EFER is `guest_efer`: "IA-32e mode
    /// guest" must equal EFER.LMA (bit 10, SDM Vol. 3A §2.2.1) when "load IA32_EFER" is 1
    /// (SDM Vol. 3C §27.3.1.1).
    pub const fn entry_for_guest_efer(&self, guest_efer: u64) -> u32 {
        const EFER_LMA: u64 = 1 << 10;
        if guest_efer & EFER_LMA != 0 {
            self.entry | entry::IA32E_MODE_GUEST
        } else {
            self.entry & !entry::IA32E_MODE_GUEST
        }
    }

    /// Writes the five control fields (VM-entry controls as built, without "IA-32e mode
    /// guest"; see [`ControlSet::entry_for_guest_efer`]).
    pub fn write_to(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmxError> {
        vmcs.write(VmcsField::PinBasedControls, self.pin.into())?;
        vmcs.write(VmcsField::PrimaryProcBasedControls, self.proc.into())?;
        vmcs.write(VmcsField::SecondaryProcBasedControls, self.proc2.into())?;
        vmcs.write(VmcsField::ExitControls, self.exit.into())?;
        vmcs.write(VmcsField::EntryControls, self.entry.into())
    }
}

impl ControlSet {
    /// Whether a VM running under these controls can exit for `reason`: the exits that
    /// are unconditional (SDM Vol. 3C §26.1.2 for instructions, §26.2 for events: CPUID,
    /// GETSEC, INVD, XSETBV, the VMX instructions, triple fault, INIT, task switch,
    /// SEAMCALL, TDCALL), and those a control in the set enables (§26.1.3, §25.6). Any
    /// other exit means the VMCS's controls are not these: they were corrupted under the
    /// VM, a hypervisor failure (campaign findings 11 and 12), never the guest's doing.
    /// VM-entry failures are not exits and are judged apart.
    pub fn can_exit_for(&self, reason: super::exit::ExitReason) -> bool {
        use super::exit::ExitReason as R;
        let proc = |bit: u32| self.proc & bit != 0;
        let proc2 = |bit: u32| proc(primary::ACTIVATE_SECONDARY_CONTROLS) && self.proc2 & bit != 0;
        match reason {
            R::Cpuid
            | R::Getsec
            | R::Invd
            | R::Xsetbv
            | R::Vmcall
            | R::Vmclear
            | R::Vmlaunch
            | R::Vmptrld
            | R::Vmptrst
            | R::Vmread
            | R::Vmresume
            | R::Vmwrite
            | R::Vmxoff
            | R::Vmxon
            | R::Invept
            | R::Invvpid
            | R::TripleFault
            | R::Init
            | R::TaskSwitch
            | R::Seamcall
            | R::Tdcall => true,
            // NMIs always exit with NMI exiting; exceptions per the bitmap (empty).
            R::ExceptionOrNmi => self.pin & pin::NMI_EXITING != 0,
            R::ExternalInterrupt => self.pin & pin::EXTERNAL_INTERRUPT_EXITING != 0,
            R::PreemptionTimer => self.pin & pin::ACTIVATE_PREEMPTION_TIMER != 0,
            // Turned on and off at run time while an interrupt waits.
            R::InterruptWindow => true,
            R::NmiWindow => proc(primary::NMI_WINDOW_EXITING),
            R::Hlt => proc(primary::HLT_EXITING),
            R::Invlpg => proc(primary::INVLPG_EXITING),
            R::Rdpmc => proc(primary::RDPMC_EXITING),
            R::Rdtsc => proc(primary::RDTSC_EXITING),
            R::Rdtscp => proc(primary::RDTSC_EXITING) && proc2(secondary::ENABLE_RDTSCP),
            // The CR0/CR4 masks always own some bits; CR8 exits with its controls.
            R::CrAccess => true,
            R::MovDr => proc(primary::MOV_DR_EXITING),
            R::Io => proc(primary::USE_IO_BITMAPS | primary::UNCONDITIONAL_IO_EXITING),
            // Without MSR bitmaps every access exits; with them, the bitmaps decide.
            R::Rdmsr | R::Wrmsr => true,
            R::Mwait => proc(primary::MWAIT_EXITING),
            R::MonitorTrapFlag => proc(primary::MONITOR_TRAP_FLAG),
            R::Monitor => proc(primary::MONITOR_EXITING),
            R::Pause => proc(primary::PAUSE_EXITING),
            R::EptViolation | R::EptMisconfiguration => proc2(secondary::ENABLE_EPT),
            R::Wbinvd => proc2(secondary::WBINVD_EXITING),
            R::GdtrIdtrAccess | R::LdtrTrAccess => proc2(secondary::DESCRIPTOR_TABLE_EXITING),
            R::Invpcid => proc(primary::INVLPG_EXITING) && proc2(secondary::ENABLE_INVPCID),
            // Everything else needs a control Lazarus never defines or sets (SMIs under the
            // dual-monitor treatment, APIC virtualization, VM functions, SGX, PML, user
            // wait, ...), or is no exit reason at all.
            _ => false,
        }
    }
}

/// CR0.PE, CR0.NE, CR0.PG and CR4.VMXE (SDM Vol. 3A §2.5, "Control Registers").
pub const CR0_PE: u64 = 1 << 0;
pub const CR0_NE: u64 = 1 << 5;
pub const CR0_PG: u64 = 1 << 31;
pub const CR4_VMXE: u64 = 1 << 13;

/// `value` with the bits IA32_VMX_CRn_FIXED0 fixes to 1 set and the bits IA32_VMX_CRn_FIXED1
/// fixes to 0 cleared (SDM Vol. 3D §A.7 for CR0, §A.8 for CR4): a bit set in FIXED0 must be
/// 1, a bit clear in FIXED1 must be 0.
pub const fn fixed_cr(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// [`fixed_cr`] for a guest CR0 under "unrestricted guest", where PE and PG may be 0 even
/// though IA32_VMX_CR0_FIXED0 reports them as fixed to 1 (SDM Vol. 3D §A.7; Vol. 3C
/// §27.3.1.1).
pub const fn fixed_cr0_unrestricted(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    fixed_cr(value, fixed0 & !(CR0_PE | CR0_PG), fixed1)
}

/// The bits of `value` that break the fixed settings: 0 where FIXED0 requires 1, or 1 where
/// FIXED1 requires 0. Zero when `value` is allowed.
pub const fn cr_violations(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (fixed0 & !value) | (value & !fixed1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fields::FakeVmcs;
    use std::format;

    /// A Skylake client processor's TRUE_ capability MSRs (IA32_VMX_BASIC bit 55 set).
    fn skylake() -> Capabilities {
        Capabilities {
            // Must be 1: bits 1, 2, 4; may be 1: bits 0-7.
            pinbased: 0x0000_00ff_0000_0016,
            // Must be 1: 1, 4-6, 8, 13, 14, 26; may be 1: all but 0, 17, 18.
            procbased: 0xfff9_fffe_0400_6172,
            // Nothing must be 1; may be 1: 0-7, 10-20, 22.
            procbased2: 0x005f_fcff_0000_0000,
            // Must be 1: 0, 1, 3-8, 10, 11, 13, 14, 16, 17; may be 1: 0-24.
            exit: 0x01ff_ffff_0003_6dfb,
            // Must be 1: 0, 1, 3-8, 12; may be 1: 0-17.
            entry: 0x0003_ffff_0000_11fb,
        }
    }

    #[test]
    fn adjust_adds_must_be_one_bits() {
        // Requested 0x69 (bits 0, 3, 5, 6) plus default1 bits 1, 2, 4 = 0x7f.
        assert_eq!(adjust(0x69, skylake().pinbased), Ok(0x7f));
        // Nothing requested: the default1 bits alone.
        assert_eq!(adjust(0, skylake().pinbased), Ok(0x16));
        // Legacy IA32_VMX_EXIT_CTLS reports "save debug controls" (bit 2) as must-be-1:
        // it is forced on although not requested.
        let legacy_exit = 0x01ff_ffff_0003_6dff;
        let v = adjust(exit::HOST_ADDRESS_SPACE_SIZE, legacy_exit).unwrap();
        assert_ne!(v & exit::SAVE_DEBUG_CONTROLS, 0);
        assert_eq!(v, 0x0003_6fff);
        // The TRUE MSR lets it be 0.
        let v = adjust(exit::HOST_ADDRESS_SPACE_SIZE, skylake().exit).unwrap();
        assert_eq!(v & exit::SAVE_DEBUG_CONTROLS, 0);
    }

    #[test]
    fn adjust_names_unsupported_bits() {
        // May be 1: bits 0-5 only, so the preemption timer (6) is refused.
        let cap = 0x0000_003f_0000_0016;
        assert_eq!(
            adjust(0x69, cap),
            Err(Missing {
                requested: 0x69,
                unsupported: 0x40
            })
        );
        // Bit 17 of the primary controls is reserved (allowed-1 clear).
        assert_eq!(
            adjust(1 << 17, skylake().procbased),
            Err(Missing {
                requested: 1 << 17,
                unsupported: 1 << 17
            })
        );
        assert!(allows(skylake().procbased2, secondary::ENABLE_EPT));
        assert!(!allows(skylake().procbased2, 1 << 8));
        assert!(!allows(
            skylake().procbased2,
            secondary::ENABLE_EPT | (1 << 8)
        ));
    }

    #[test]
    fn lazarus_controls_on_skylake() {
        let (set, dropped) = ControlSet::lazarus(&skylake()).unwrap();
        assert_eq!(
            set,
            ControlSet {
                // 0x69 requested | 0x16 default1.
                pin: 0x7f,
                // 0x04006172 | HLT 0x80 | TSC 0x8 | I/O 0x0200_0000 | MSR 0x1000_0000
                //            | secondary 0x8000_0000 | MWAIT 0x400 | RDPMC 0x800
                //            | CR8 load/store 0x18_0000 | MONITOR 0x2000_0000.
                proc: 0xb618_6dfa,
                // EPT 0x2 | RDTSCP 0x8 | VPID 0x20 | UG 0x80 | INVPCID 0x1000 | XSAVES 0x10_0000.
                proc2: 0x0010_10aa,
                // 0x36dfb | debug 0x4 | 0x200 | 0x8000 | PAT 0xc_0000 | EFER 0x30_0000
                //         | timer 0x40_0000.
                exit: 0x007f_efff,
                // 0x11fb | debug 0x4 | PAT 0x4000 | EFER 0x8000.
                entry: 0x0000_d1ff,
            }
        );
        assert!(dropped.is_empty());
        assert_eq!(format!("{dropped}"), "none");
    }

    #[test]
    fn optional_controls_are_dropped() {
        let mut caps = skylake();
        // A CPU without VPID, INVPCID and XSAVES, nor saving the timer value.
        caps.procbased2 &= !(((secondary::ENABLE_VPID
            | secondary::ENABLE_INVPCID
            | secondary::ENABLE_XSAVES_XRSTORS) as u64)
            << 32);
        caps.exit &= !((exit::SAVE_PREEMPTION_TIMER as u64) << 32);
        let (set, dropped) = ControlSet::lazarus(&caps).unwrap();
        assert_eq!(set.proc2, 0x8a);
        assert_eq!(set.exit, 0x003f_efff);
        assert!(dropped.contains(OptionalControl::Vpid));
        assert!(!dropped.contains(OptionalControl::Rdtscp));
        assert!(dropped.contains(OptionalControl::SavePreemptionTimer));
        assert_eq!(
            format!("{dropped}"),
            "vpid,invpcid,xsaves,save_preemption_timer"
        );
    }

    #[test]
    fn missing_required_control_is_an_error() {
        let mut caps = skylake();
        caps.procbased2 &= !((secondary::UNRESTRICTED_GUEST as u64) << 32);
        let err = ControlSet::lazarus(&caps).unwrap_err();
        assert_eq!(err.field, ControlField::SecondaryProcBased);
        assert_eq!(err.missing.unsupported, secondary::UNRESTRICTED_GUEST);
        assert_eq!(
            format!("{err}"),
            "secondary processor-based VM-execution controls: bit 7 (unrestricted guest) \
             cannot be 1"
        );

        // No secondary controls at all: the primary field already refuses bit 31.
        let mut caps = skylake();
        caps.procbased &= !(1 << 63);
        caps.procbased2 = 0;
        let err = ControlSet::lazarus(&caps).unwrap_err();
        assert_eq!(err.field, ControlField::PrimaryProcBased);
        assert_eq!(
            format!("{err}"),
            "primary processor-based VM-execution controls: bit 31 (activate secondary \
             controls) cannot be 1"
        );

        // Two pin-based bits missing are both named.
        let mut caps = skylake();
        caps.pinbased = 0x0000_001f_0000_0016;
        let err = ControlSet::lazarus(&caps).unwrap_err();
        assert_eq!(
            format!("{err}"),
            "pin-based VM-execution controls: bits 5 (virtual NMIs), \
             6 (activate VMX-preemption timer) cannot be 1"
        );
    }

    #[test]
    fn a_forced_bit_that_cannot_be_one_is_reported() {
        // An inconsistent MSR (bit 8 must be 1 but may not be) names the unnamed bit.
        let mut caps = skylake();
        caps.entry = 0x0000_feff_0000_0100;
        let err = ControlSet::lazarus(&caps).unwrap_err();
        assert_eq!(err.field, ControlField::Entry);
        assert_eq!(err.missing.unsupported, 1 << 8);
        assert_eq!(format!("{err}"), "VM-entry controls: bit 8 cannot be 1");
    }

    #[test]
    fn ia32e_mode_follows_efer_lma() {
        let (set, _) = ControlSet::lazarus(&skylake()).unwrap();
        // EFER with LME|LMA|SCE|NXE.
        assert_eq!(set.entry_for_guest_efer(0xd01), 0xd1ff | 0x200);
        // LME set but not yet active.
        assert_eq!(set.entry_for_guest_efer(0x100), 0xd1ff);
    }

    #[test]
    fn exits_the_controls_cannot_produce_are_named() {
        use crate::vmx::exit::ExitReason as R;
        let (set, _) = ControlSet::lazarus(&skylake()).unwrap();
        for reason in [
            R::Cpuid,
            R::Hlt,
            R::Io,
            R::Rdmsr,
            R::CrAccess,
            R::Xsetbv,
            R::EptViolation,
            R::PreemptionTimer,
            R::ExternalInterrupt,
            R::ExceptionOrNmi,
            R::InterruptWindow,
            R::Monitor,
            R::Mwait,
            R::Rdpmc,
            R::TaskSwitch,
            R::Vmxon,
        ] {
            assert!(set.can_exit_for(reason), "{reason}");
        }
        for reason in [
            R::MonitorTrapFlag,
            R::NmiWindow,
            R::Invlpg,
            R::Rdtsc,
            R::Rdtscp,
            R::MovDr,
            R::Pause,
            R::Wbinvd,
            R::GdtrIdtrAccess,
            R::ApicAccess,
            R::Vmfunc,
            R::PmlFull,
            R::Xsaves,
            R::IoSmi,
            R::Sipi,
            R::Unknown(99),
        ] {
            assert!(!set.can_exit_for(reason), "{reason}");
        }
        // A control that is set makes its exit possible.
        let mtf = ControlSet {
            proc: set.proc | primary::MONITOR_TRAP_FLAG,
            ..set
        };
        assert!(mtf.can_exit_for(R::MonitorTrapFlag));
    }

    #[test]
    fn control_set_is_written_to_the_vmcs() {
        let (set, _) = ControlSet::lazarus(&skylake()).unwrap();
        let mut vmcs = FakeVmcs::new();
        set.write_to(&mut vmcs).unwrap();
        assert_eq!(vmcs.read(VmcsField::PinBasedControls), Ok(0x7f));
        assert_eq!(
            vmcs.read(VmcsField::PrimaryProcBasedControls),
            Ok(0xb618_6dfa)
        );
        assert_eq!(
            vmcs.read(VmcsField::SecondaryProcBasedControls),
            Ok(0x10_10aa)
        );
        assert_eq!(vmcs.read(VmcsField::ExitControls), Ok(0x7f_efff));
        assert_eq!(vmcs.read(VmcsField::EntryControls), Ok(0xd1ff));
        assert_eq!(ControlField::Exit.vmcs_field(), VmcsField::ExitControls);
    }

    #[test]
    fn bit_constants_match_names_tables() {
        let tables: [(ControlField, &[u32]); 5] = [
            (
                ControlField::PinBased,
                &[
                    pin::EXTERNAL_INTERRUPT_EXITING,
                    pin::NMI_EXITING,
                    pin::VIRTUAL_NMIS,
                    pin::ACTIVATE_PREEMPTION_TIMER,
                ],
            ),
            (
                ControlField::PrimaryProcBased,
                &[
                    primary::INTERRUPT_WINDOW_EXITING,
                    primary::USE_TSC_OFFSETTING,
                    primary::HLT_EXITING,
                    primary::INVLPG_EXITING,
                    primary::MWAIT_EXITING,
                    primary::RDPMC_EXITING,
                    primary::RDTSC_EXITING,
                    primary::CR3_LOAD_EXITING,
                    primary::CR3_STORE_EXITING,
                    primary::CR8_LOAD_EXITING,
                    primary::CR8_STORE_EXITING,
                    primary::USE_TPR_SHADOW,
                    primary::NMI_WINDOW_EXITING,
                    primary::MOV_DR_EXITING,
                    primary::UNCONDITIONAL_IO_EXITING,
                    primary::USE_IO_BITMAPS,
                    primary::MONITOR_TRAP_FLAG,
                    primary::USE_MSR_BITMAPS,
                    primary::MONITOR_EXITING,
                    primary::PAUSE_EXITING,
                    primary::ACTIVATE_SECONDARY_CONTROLS,
                ],
            ),
            (
                ControlField::SecondaryProcBased,
                &[
                    secondary::VIRTUALIZE_APIC_ACCESSES,
                    secondary::ENABLE_EPT,
                    secondary::DESCRIPTOR_TABLE_EXITING,
                    secondary::ENABLE_RDTSCP,
                    secondary::ENABLE_VPID,
                    secondary::WBINVD_EXITING,
                    secondary::UNRESTRICTED_GUEST,
                    secondary::ENABLE_INVPCID,
                    secondary::ENABLE_XSAVES_XRSTORS,
                ],
            ),
            (
                ControlField::Exit,
                &[
                    exit::SAVE_DEBUG_CONTROLS,
                    exit::HOST_ADDRESS_SPACE_SIZE,
                    exit::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
                    exit::SAVE_IA32_PAT,
                    exit::LOAD_IA32_PAT,
                    exit::SAVE_IA32_EFER,
                    exit::LOAD_IA32_EFER,
                    exit::SAVE_PREEMPTION_TIMER,
                ],
            ),
            (
                ControlField::Entry,
                &[
                    entry::LOAD_DEBUG_CONTROLS,
                    entry::IA32E_MODE_GUEST,
                    entry::LOAD_IA32_PAT,
                    entry::LOAD_IA32_EFER,
                ],
            ),
        ];
        for (field, bits) in tables {
            for &b in bits {
                assert_eq!(b.count_ones(), 1);
                assert!(
                    field.bit_name(b.trailing_zeros()).is_some(),
                    "{field:?} {b:#x}"
                );
            }
        }
        assert_eq!(ControlField::Exit.bit_name(3), None);
    }

    #[test]
    fn fixed_cr_bits() {
        // Typical values: CR0 PE, NE, PG fixed to 1; CR4 VMXE fixed to 1.
        let (cr0_fixed0, cr0_fixed1) = (0x8000_0021, 0xffff_ffff);
        let (cr4_fixed0, cr4_fixed1) = (0x2000, 0x0037_27ff);

        // A real-mode CR0 (ET only) becomes protected mode with paging and NE.
        assert_eq!(fixed_cr(0x10, cr0_fixed0, cr0_fixed1), 0x8000_0031);
        // Under unrestricted guest PE and PG stay as the guest wants; NE is still forced.
        assert_eq!(fixed_cr0_unrestricted(0x10, cr0_fixed0, cr0_fixed1), 0x30);
        assert_eq!(
            fixed_cr0_unrestricted(0x8000_0011, cr0_fixed0, cr0_fixed1),
            0x8000_0031
        );
        // Bits above 31 are fixed to 0 by FIXED1.
        assert_eq!(fixed_cr(1 << 40, cr0_fixed0, cr0_fixed1), 0x8000_0021);

        // CR4: PAE (5) kept, VMXE (13) added, bit 12 (LA57) not allowed here, removed.
        assert_eq!(fixed_cr(0x1020, cr4_fixed0, cr4_fixed1), 0x2020);
        assert_eq!(cr_violations(0x1020, cr4_fixed0, cr4_fixed1), 0x3000);
        assert_eq!(cr_violations(0x2020, cr4_fixed0, cr4_fixed1), 0);
        assert_eq!(cr_violations(0x10, cr0_fixed0, cr0_fixed1), 0x8000_0021);
    }
}
