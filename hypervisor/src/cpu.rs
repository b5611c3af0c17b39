//! What this CPU offers for hardware virtualisation, and whether Lazarus can run on it.
//!
//! The decision is made from raw CPUID bits and VMX capability MSR values by pure
//! functions ([`VmxMsrs::report`], [`VmxReport::unavailable`]) so that every branch is
//! unit-tested with the values real and emulated CPUs return; [`probe`] only gathers them.

use core::fmt;

/// IA32_FEATURE_CONTROL (SDM Vol. 3C §24.7, "Enabling and entering VMX operation").
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
/// IA32_FEATURE_CONTROL bit 0: lock; bit 2: VMXON allowed outside SMX.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// VMX capability MSRs (SDM Vol. 3D Appendix A).
pub const IA32_VMX_BASIC: u32 = 0x480;
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const IA32_VMX_MISC: u32 = 0x485;
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;

/// CPUID.1:ECX bit 5 reports VMX (SDM Vol. 3C §24.6, "Discovering support for VMX").
pub const CPUID_1_ECX_VMX: u32 = 1 << 5;

/// The state of IA32_FEATURE_CONTROL as far as VMX is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureControl {
    /// Locked by firmware with VMX allowed outside SMX.
    LockedEnabled,
    /// Left unlocked by firmware; Lazarus sets the VMX bit and locks it.
    EnabledByLazarus,
    /// Locked by firmware with VMX off: only the firmware setup can change it.
    LockedDisabled,
}

impl FeatureControl {
    /// Classifies the value read at boot (before Lazarus writes anything).
    pub fn from_msr(value: u64) -> Self {
        let locked = value & FEATURE_CONTROL_LOCK != 0;
        let vmx = value & FEATURE_CONTROL_VMX_OUTSIDE_SMX != 0;
        match (locked, vmx) {
            (true, true) => Self::LockedEnabled,
            (true, false) => Self::LockedDisabled,
            (false, _) => Self::EnabledByLazarus,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LockedEnabled => "locked-enabled",
            Self::EnabledByLazarus => "enabled-by-lazarus",
            Self::LockedDisabled => "locked-disabled",
        }
    }
}

/// The raw VMX capability MSR values (read only when CPUID reports VMX).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxMsrs {
    pub feature_control: u64,
    pub basic: u64,
    /// IA32_VMX_TRUE_PINBASED_CTLS when IA32_VMX_BASIC bit 55 is set, else the legacy MSR.
    pub pinbased: u64,
    /// IA32_VMX_TRUE_PROCBASED_CTLS when IA32_VMX_BASIC bit 55 is set, else the legacy MSR.
    pub procbased: u64,
    /// Zero when the primary controls do not allow secondary controls.
    pub procbased2: u64,
    pub misc: u64,
    /// Zero when neither EPT nor VPID may be enabled.
    pub ept_vpid_cap: u64,
    /// IA32_VMX_TRUE_EXIT_CTLS / TRUE_ENTRY_CTLS when IA32_VMX_BASIC bit 55 is set, else
    /// the legacy MSRs (SDM Vol. 3D A.4, A.5).
    pub exit: u64,
    pub entry: u64,
    /// IA32_VMX_CR0_FIXED0/1 and CR4_FIXED0/1 (A.7, A.8).
    pub cr_fixed: [u64; 4],
}

/// What the VMX capability MSRs allow, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxReport {
    pub feature_control: FeatureControl,
    /// VMCS revision identifier, IA32_VMX_BASIC bits 30:0 (SDM Vol. 3D A.1).
    pub vmcs_revision: u32,
    pub ept: bool,
    pub vpid: bool,
    pub unrestricted_guest: bool,
    pub preemption_timer: bool,
    /// The preemption timer counts down once every 2^rate TSC ticks (IA32_VMX_MISC bits 4:0, A.6).
    pub preemption_timer_rate: u8,
    pub ept_walk_4: bool,
    pub ept_write_back: bool,
    pub ept_2m: bool,
    pub ept_1g: bool,
    pub invept: bool,
    pub invvpid: bool,
}

/// Allowed-1 settings are the high 32 bits of a control capability MSR (SDM Vol. 3D A.3).
fn allowed1(msr: u64, bit: u32) -> bool {
    (msr >> 32) & (1 << bit) != 0
}

impl VmxMsrs {
    /// IA32_VMX_BASIC bit 55: the TRUE_* control MSRs exist (SDM Vol. 3D A.1).
    pub fn has_true_controls(basic: u64) -> bool {
        basic & (1 << 55) != 0
    }

    /// Primary processor-based control bit 31: "activate secondary controls" (A.3.2).
    pub fn allows_secondary(procbased: u64) -> bool {
        allowed1(procbased, 31)
    }

    /// Secondary control bits 1 (enable EPT) and 5 (enable VPID) gate IA32_VMX_EPT_VPID_CAP (A.10).
    pub fn allows_ept_or_vpid(procbased2: u64) -> bool {
        allowed1(procbased2, 1) || allowed1(procbased2, 5)
    }

    pub fn report(&self) -> VmxReport {
        let cap = self.ept_vpid_cap;
        VmxReport {
            feature_control: FeatureControl::from_msr(self.feature_control),
            vmcs_revision: (self.basic & 0x7fff_ffff) as u32,
            // Secondary processor-based controls, SDM Vol. 3C Table 25-7 (A.3.3).
            ept: allowed1(self.procbased2, 1),
            vpid: allowed1(self.procbased2, 5),
            unrestricted_guest: allowed1(self.procbased2, 7),
            // Pin-based control bit 6: activate VMX-preemption timer (A.3.1).
            preemption_timer: allowed1(self.pinbased, 6),
            preemption_timer_rate: (self.misc & 0x1f) as u8,
            // IA32_VMX_EPT_VPID_CAP bit positions (A.10).
            ept_walk_4: cap & (1 << 6) != 0,
            ept_write_back: cap & (1 << 14) != 0,
            ept_2m: cap & (1 << 16) != 0,
            ept_1g: cap & (1 << 17) != 0,
            invept: cap & (1 << 20) != 0,
            invvpid: cap & (1 << 32) != 0,
        }
    }
}

/// Why Lazarus cannot run its VMs on this CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmxUnavailable {
    /// CPUID does not report VMX at all (an AMD CPU, or a VM without nested VT-x).
    NoVmx { vendor: heapless::String<12> },
    /// The firmware locked VMX off.
    DisabledByFirmware,
    /// VMX is there but lacks a capability Lazarus is built on.
    Missing(&'static str),
}

impl fmt::Display for VmxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVmx { vendor } => write!(
                f,
                "the CPU ({vendor}) does not implement Intel VMX (CPUID.1:ECX bit 5 is clear); \
                 on a VM host enable nested virtualization, or use Bochs with cpu model corei7_skylake_x"
            ),
            Self::DisabledByFirmware => f.write_str(
                "VMX is disabled by the firmware (IA32_FEATURE_CONTROL is locked with VMX off); \
                 enable Intel Virtualization Technology in the firmware setup",
            ),
            Self::Missing(what) => write!(f, "VMX lacks {what}, which Lazarus requires"),
        }
    }
}

impl VmxReport {
    /// The capabilities Lazarus cannot do without: EPT (4-level, write-back), unrestricted
    /// guest (real-mode Linux setup code) and the preemption timer (the scheduler's slice).
    pub fn unavailable(&self) -> Option<VmxUnavailable> {
        let missing = if self.feature_control == FeatureControl::LockedDisabled {
            return Some(VmxUnavailable::DisabledByFirmware);
        } else if !self.ept {
            "EPT (secondary control 1)"
        } else if !self.ept_walk_4 || !self.ept_write_back {
            "4-level write-back EPT (IA32_VMX_EPT_VPID_CAP bits 6 and 14)"
        } else if !self.unrestricted_guest {
            "unrestricted guest (secondary control 7)"
        } else if !self.preemption_timer {
            "the VMX-preemption timer (pin-based control 6)"
        } else {
            return None;
        };
        Some(VmxUnavailable::Missing(missing))
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The documented `vmx:` console line (README, "Console lines").
impl fmt::Display for VmxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vt-x=yes feature_control={} ept={} vpid={} unrestricted_guest={} preemption_timer={} \
             timer_rate={} ept_2m={} ept_1g={} invept={} invvpid={} vmcs_revision={:#x}",
            self.feature_control.as_str(),
            yes(self.ept),
            yes(self.vpid),
            yes(self.unrestricted_guest),
            yes(self.preemption_timer),
            self.preemption_timer_rate,
            yes(self.ept_2m),
            yes(self.ept_1g),
            yes(self.invept),
            yes(self.invvpid),
            self.vmcs_revision,
        )
    }
}

/// Identity of the processor, for the `cpu:` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuIdentity {
    pub vendor: heapless::String<12>,
    pub brand: heapless::String<48>,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
}

/// Family and model with the extended fields folded in (SDM Vol. 2A, CPUID leaf 1, EAX).
pub fn family_model_stepping(eax: u32) -> (u32, u32, u32) {
    let stepping = eax & 0xf;
    let base_model = (eax >> 4) & 0xf;
    let base_family = (eax >> 8) & 0xf;
    let ext_model = (eax >> 16) & 0xf;
    let ext_family = (eax >> 20) & 0xff;
    let family = if base_family == 0xf {
        base_family + ext_family
    } else {
        base_family
    };
    let model = if base_family == 0x6 || base_family == 0xf {
        (ext_model << 4) | base_model
    } else {
        base_model
    };
    (family, model, stepping)
}

impl fmt::Display for CpuIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} family {} model {} stepping {} \"{}\"",
            self.vendor,
            self.family,
            self.model,
            self.stepping,
            self.brand.trim()
        )
    }
}

/// Everything the probe learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuReport {
    pub identity: CpuIdentity,
    /// The raw capability MSRs (all zero without VMX).
    pub msrs: VmxMsrs,
    /// `Err` when CPUID has no VMX; the MSRs are not read then (they would #GP).
    pub vmx: Result<VmxReport, VmxUnavailable>,
}

impl CpuReport {
    /// Whether Lazarus can run VMs here, and if not why.
    pub fn vmx_unavailable(&self) -> Option<VmxUnavailable> {
        match &self.vmx {
            Err(e) => Some(e.clone()),
            Ok(report) => report.unavailable(),
        }
    }
}

#[cfg(target_os = "none")]
pub use probe_impl::probe;

#[cfg(target_os = "none")]
mod probe_impl {
    use super::*;
    use crate::arch::instructions::{rdmsr, wrmsr};
    use core::fmt::Write;
    use raw_cpuid::CpuId;

    /// Reads CPUID and, when VMX is reported, the capability MSRs. If firmware left
    /// IA32_FEATURE_CONTROL unlocked, enables VMX in it and locks it (SDM Vol. 3C §24.7).
    pub fn probe() -> CpuReport {
        let cpuid = CpuId::new();
        let mut identity = CpuIdentity::default();
        if let Some(v) = cpuid.get_vendor_info() {
            let _ = identity.vendor.push_str(v.as_str());
        }
        if let Some(b) = cpuid.get_processor_brand_string() {
            let _ = write!(identity.brand, "{}", b.as_str());
        }
        let leaf1 = raw_cpuid::cpuid!(1);
        (identity.family, identity.model, identity.stepping) = family_model_stepping(leaf1.eax);
        if leaf1.ecx & CPUID_1_ECX_VMX == 0 {
            let vendor = identity.vendor.clone();
            return CpuReport {
                identity,
                msrs: VmxMsrs::default(),
                vmx: Err(VmxUnavailable::NoVmx { vendor }),
            };
        }
        // SAFETY (all MSR accesses below): CPUID.1:ECX.VMX = 1 guarantees IA32_FEATURE_CONTROL
        // and the basic VMX capability MSRs exist (SDM Vol. 3D A.1); the optional ones are read
        // only when the bits named beside them say they exist.
        let mut msrs = VmxMsrs {
            feature_control: unsafe { rdmsr(IA32_FEATURE_CONTROL) },
            ..Default::default()
        };
        if msrs.feature_control & FEATURE_CONTROL_LOCK == 0 {
            // SAFETY: unlocked, so the write is allowed; it only permits VMXON outside SMX.
            unsafe {
                wrmsr(
                    IA32_FEATURE_CONTROL,
                    msrs.feature_control | FEATURE_CONTROL_VMX_OUTSIDE_SMX | FEATURE_CONTROL_LOCK,
                )
            };
        }
        unsafe {
            msrs.basic = rdmsr(IA32_VMX_BASIC);
            let true_ctls = VmxMsrs::has_true_controls(msrs.basic);
            msrs.pinbased = rdmsr(if true_ctls {
                IA32_VMX_TRUE_PINBASED_CTLS
            } else {
                IA32_VMX_PINBASED_CTLS
            });
            msrs.procbased = rdmsr(if true_ctls {
                IA32_VMX_TRUE_PROCBASED_CTLS
            } else {
                IA32_VMX_PROCBASED_CTLS
            });
            msrs.misc = rdmsr(IA32_VMX_MISC);
            use crate::vmx::controls as c;
            msrs.exit = rdmsr(if true_ctls {
                c::IA32_VMX_TRUE_EXIT_CTLS
            } else {
                c::IA32_VMX_EXIT_CTLS
            });
            msrs.entry = rdmsr(if true_ctls {
                c::IA32_VMX_TRUE_ENTRY_CTLS
            } else {
                c::IA32_VMX_ENTRY_CTLS
            });
            msrs.cr_fixed = [
                rdmsr(c::IA32_VMX_CR0_FIXED0),
                rdmsr(c::IA32_VMX_CR0_FIXED1),
                rdmsr(c::IA32_VMX_CR4_FIXED0),
                rdmsr(c::IA32_VMX_CR4_FIXED1),
            ];
            if VmxMsrs::allows_secondary(msrs.procbased) {
                msrs.procbased2 = rdmsr(IA32_VMX_PROCBASED_CTLS2);
                if VmxMsrs::allows_ept_or_vpid(msrs.procbased2) {
                    msrs.ept_vpid_cap = rdmsr(IA32_VMX_EPT_VPID_CAP);
                }
            }
        }
        CpuReport {
            identity,
            msrs,
            vmx: Ok(msrs.report()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Capability values as Bochs 2.7 reports them for `corei7_skylake_x` (shape, not bit-exact):
    /// everything Lazarus needs allowed.
    fn skylake() -> VmxMsrs {
        VmxMsrs {
            feature_control: FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMX_OUTSIDE_SMX,
            basic: (1 << 55) | 0x1,
            pinbased: (0x7f_u64 << 32) | 0x16,
            procbased: (0xfff9_fffe_u64 << 32) | 0x0401_e172,
            procbased2: (0x0000_00ff_u64 << 32),
            misc: 0x5,
            ept_vpid_cap: (1 << 6) | (1 << 14) | (1 << 16) | (1 << 17) | (1 << 20) | (1 << 32),
            ..Default::default()
        }
    }

    #[test]
    fn full_featured_cpu_is_usable() {
        let r = skylake().report();
        assert!(r.ept && r.vpid && r.unrestricted_guest && r.preemption_timer);
        assert!(r.ept_2m && r.ept_1g && r.invept && r.invvpid && r.ept_walk_4 && r.ept_write_back);
        assert_eq!(r.preemption_timer_rate, 5);
        assert_eq!(r.vmcs_revision, 1);
        assert_eq!(r.unavailable(), None);
    }

    #[test]
    fn report_line_is_stable() {
        let line = std::format!("{}", skylake().report());
        assert_eq!(
            line,
            "vt-x=yes feature_control=locked-enabled ept=yes vpid=yes unrestricted_guest=yes \
             preemption_timer=yes timer_rate=5 ept_2m=yes ept_1g=yes invept=yes invvpid=yes vmcs_revision=0x1"
        );
    }

    #[test]
    fn feature_control_states() {
        assert_eq!(
            FeatureControl::from_msr(0),
            FeatureControl::EnabledByLazarus
        );
        assert_eq!(FeatureControl::from_msr(1), FeatureControl::LockedDisabled);
        assert_eq!(FeatureControl::from_msr(5), FeatureControl::LockedEnabled);
        let mut m = skylake();
        m.feature_control = 1;
        assert_eq!(
            m.report().unavailable(),
            Some(VmxUnavailable::DisabledByFirmware)
        );
    }

    #[test]
    fn each_missing_capability_is_named() {
        let mut m = skylake();
        m.procbased2 &= !(1 << 33); // EPT
        assert!(
            matches!(m.report().unavailable(), Some(VmxUnavailable::Missing(s)) if s.starts_with("EPT"))
        );
        let mut m = skylake();
        m.procbased2 &= !(1 << 39); // unrestricted guest
        assert!(
            matches!(m.report().unavailable(), Some(VmxUnavailable::Missing(s)) if s.contains("unrestricted"))
        );
        let mut m = skylake();
        m.pinbased &= !(1 << 38); // preemption timer
        assert!(
            matches!(m.report().unavailable(), Some(VmxUnavailable::Missing(s)) if s.contains("preemption"))
        );
        let mut m = skylake();
        m.ept_vpid_cap &= !(1 << 14); // write-back EPT
        assert!(
            matches!(m.report().unavailable(), Some(VmxUnavailable::Missing(s)) if s.contains("write-back"))
        );
        // VPID is reported but not required.
        let mut m = skylake();
        m.procbased2 &= !(1 << 37);
        assert!(!m.report().vpid);
        assert_eq!(m.report().unavailable(), None);
    }

    #[test]
    fn gating_bits() {
        assert!(VmxMsrs::has_true_controls(1 << 55));
        assert!(!VmxMsrs::has_true_controls(0));
        assert!(VmxMsrs::allows_secondary(1 << 63));
        assert!(!VmxMsrs::allows_secondary(1 << 31));
        assert!(VmxMsrs::allows_ept_or_vpid(1 << 33));
        assert!(VmxMsrs::allows_ept_or_vpid(1 << 37));
        assert!(!VmxMsrs::allows_ept_or_vpid(1 << 1));
    }

    #[test]
    fn no_vmx_message_names_vendor_and_bit() {
        let e = VmxUnavailable::NoVmx {
            vendor: heapless::String::try_from("AuthenticAMD").unwrap(),
        };
        let s = std::format!("{e}");
        assert!(s.contains("AuthenticAMD") && s.contains("CPUID.1:ECX bit 5"));
    }

    #[test]
    fn family_model_decoding() {
        // Skylake-X: family 6, ext model 5, model 5 -> 0x55.
        assert_eq!(family_model_stepping(0x0005_0654), (6, 0x55, 4));
        // AMD Zen: base family 0xf + ext family 8 = 0x17.
        assert_eq!(family_model_stepping(0x0080_0f11), (0x17, 1, 1));
    }
}
