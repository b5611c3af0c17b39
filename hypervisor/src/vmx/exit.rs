//! Decoding a VM exit: the exit reason, the exit qualifications Lazarus handles, and the
//! interruption-information format shared by the VM-exit interruption information, the
//! IDT-vectoring information and the VM-entry interruption information fields.

use core::fmt;

/// Defines [`ExitReason`] and its tables from one list.
macro_rules! exit_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $raw:literal, $name:literal; )*) => {
        /// Basic exit reason, bits 15:0 of the exit-reason field (SDM Vol. 3D Appendix C,
        /// "VMX Basic Exit Reasons", Table C-1).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ExitReason {
            $( $(#[$doc])* $variant, )*
            /// A number Appendix C does not define (or one newer than this list).
            Unknown(u16),
        }

        /// The known variants numbered densely from 0 in declaration order.
        #[derive(Clone, Copy)]
        enum Position {
            $( $variant, )*
        }

        impl ExitReason {
            /// Every known reason, in the order of their statistics indexes.
            pub const ALL: &'static [ExitReason] = &[$( ExitReason::$variant, )*];
            /// Size of a per-reason counter array: the known reasons plus one slot shared
            /// by all unknown ones (the last).
            pub const COUNT: usize = Self::ALL.len() + 1;

            /// The reason with basic exit reason `basic`.
            pub const fn from_basic(basic: u16) -> ExitReason {
                match basic {
                    $( $raw => ExitReason::$variant, )*
                    other => ExitReason::Unknown(other),
                }
            }

            /// The basic exit reason number.
            pub const fn basic(self) -> u16 {
                match self {
                    $( ExitReason::$variant => $raw, )*
                    ExitReason::Unknown(n) => n,
                }
            }

            /// Short snake_case name, stable: per-reason statistics are keyed by it.
            pub const fn name(self) -> &'static str {
                match self {
                    $( ExitReason::$variant => $name, )*
                    ExitReason::Unknown(_) => "unknown",
                }
            }

            /// Index into a `[_; ExitReason::COUNT]` counter array; every unknown reason
            /// shares the last slot.
            pub const fn index(self) -> usize {
                match self {
                    $( ExitReason::$variant => Position::$variant as usize, )*
                    ExitReason::Unknown(_) => Self::COUNT - 1,
                }
            }
        }
    };
}

exit_reasons! {
    ExceptionOrNmi = 0, "exception_nmi";
    ExternalInterrupt = 1, "external_interrupt";
    TripleFault = 2, "triple_fault";
    Init = 3, "init";
    Sipi = 4, "sipi";
    IoSmi = 5, "io_smi";
    OtherSmi = 6, "other_smi";
    InterruptWindow = 7, "interrupt_window";
    NmiWindow = 8, "nmi_window";
    TaskSwitch = 9, "task_switch";
    Cpuid = 10, "cpuid";
    Getsec = 11, "getsec";
    Hlt = 12, "hlt";
    Invd = 13, "invd";
    Invlpg = 14, "invlpg";
    Rdpmc = 15, "rdpmc";
    Rdtsc = 16, "rdtsc";
    Rsm = 17, "rsm";
    Vmcall = 18, "vmcall";
    Vmclear = 19, "vmclear";
    Vmlaunch = 20, "vmlaunch";
    Vmptrld = 21, "vmptrld";
    Vmptrst = 22, "vmptrst";
    Vmread = 23, "vmread";
    Vmresume = 24, "vmresume";
    Vmwrite = 25, "vmwrite";
    Vmxoff = 26, "vmxoff";
    Vmxon = 27, "vmxon";
    /// MOV to/from CR0, CR3, CR4, CR8, CLTS, LMSW; qualification [`CrAccess`].
    CrAccess = 28, "cr_access";
    MovDr = 29, "mov_dr";
    /// IN, OUT, INS, OUTS; qualification [`IoQualification`].
    Io = 30, "io";
    Rdmsr = 31, "rdmsr";
    Wrmsr = 32, "wrmsr";
    /// VM-entry failure (bit 31 of the exit-reason field set).
    EntryFailureGuestState = 33, "entry_invalid_guest_state";
    /// VM-entry failure; the exit qualification is the failing MSR-load entry (from 1).
    EntryFailureMsrLoading = 34, "entry_msr_loading";
    Mwait = 36, "mwait";
    MonitorTrapFlag = 37, "mtf";
    Monitor = 39, "monitor";
    Pause = 40, "pause";
    /// VM-entry failure.
    EntryFailureMachineCheck = 41, "entry_machine_check";
    TprBelowThreshold = 43, "tpr_below_threshold";
    ApicAccess = 44, "apic_access";
    VirtualizedEoi = 45, "virtualized_eoi";
    GdtrIdtrAccess = 46, "gdtr_idtr";
    LdtrTrAccess = 47, "ldtr_tr";
    /// Qualification [`EptViolation`]; the guest-physical address field holds the address.
    EptViolation = 48, "ept_violation";
    EptMisconfiguration = 49, "ept_misconfig";
    Invept = 50, "invept";
    Rdtscp = 51, "rdtscp";
    PreemptionTimer = 52, "preemption_timer";
    Invvpid = 53, "invvpid";
    /// WBINVD or WBNOINVD.
    Wbinvd = 54, "wbinvd";
    Xsetbv = 55, "xsetbv";
    ApicWrite = 56, "apic_write";
    Rdrand = 57, "rdrand";
    Invpcid = 58, "invpcid";
    Vmfunc = 59, "vmfunc";
    Encls = 60, "encls";
    Rdseed = 61, "rdseed";
    PmlFull = 62, "pml_full";
    Xsaves = 63, "xsaves";
    Xrstors = 64, "xrstors";
    Pconfig = 65, "pconfig";
    SppEvent = 66, "spp_event";
    Umwait = 67, "umwait";
    Tpause = 68, "tpause";
    Loadiwkey = 69, "loadiwkey";
    Enclv = 70, "enclv";
    EnqcmdPasidFailure = 72, "enqcmd_pasid_failure";
    EnqcmdsPasidFailure = 73, "enqcmds_pasid_failure";
    BusLock = 74, "bus_lock";
    InstructionTimeout = 75, "instruction_timeout";
    Seamcall = 76, "seamcall";
    Tdcall = 77, "tdcall";
    Rdmsrlist = 78, "rdmsrlist";
    Wrmsrlist = 79, "wrmsrlist";
}

/// Exit-reason field bit 31: the exit is a VM-entry failure (SDM Vol. 3C §25.9.1,
/// "Basic VM-Exit Information"; §27.8, "VM-Entry Failures During or After Loading Guest
/// State").
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

impl ExitReason {
    /// Decodes the exit-reason field: basic reason in bits 15:0, VM-entry failure in bit 31
    /// (SDM Vol. 3C §25.9.1). The other bits (27 enclave mode, 28 pending MTF, 29 exit from
    /// VMX root operation) are ignored.
    pub const fn from_raw(exit_reason_field: u32) -> (ExitReason, bool) {
        (
            Self::from_basic(exit_reason_field as u16),
            exit_reason_field & EXIT_REASON_ENTRY_FAILURE != 0,
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "unknown({n})"),
            known => f.write_str(known.name()),
        }
    }
}

/// Exit qualification for I/O instructions (SDM Vol. 3C §28.2.1, Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification {
    /// Access size in bytes: 1, 2 or 4 (bits 2:0 = 0, 1, 3).
    pub size: u8,
    /// Bit 3: IN (true) or OUT.
    pub is_in: bool,
    /// Bit 4: INS/OUTS.
    pub string: bool,
    /// Bit 5: REP prefix.
    pub rep: bool,
    /// Bit 6: the port was an immediate operand (else DX).
    pub immediate: bool,
    /// Bits 31:16.
    pub port: u16,
}

impl IoQualification {
    /// `None` when bits 2:0 hold a size encoding the SDM does not use (2, 4-7).
    pub const fn from_qualification(qualification: u64) -> Option<Self> {
        let size = match qualification & 0b111 {
            0 => 1,
            1 => 2,
            3 => 4,
            _ => return None,
        };
        Some(Self {
            size,
            is_in: qualification & (1 << 3) != 0,
            string: qualification & (1 << 4) != 0,
            rep: qualification & (1 << 5) != 0,
            immediate: qualification & (1 << 6) != 0,
            port: (qualification >> 16) as u16,
        })
    }
}

/// Access type of a control-register exit, qualification bits 5:4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessType {
    MovToCr,
    MovFromCr,
    Clts,
    Lmsw,
}

/// Exit qualification for control-register accesses (SDM Vol. 3C §28.2.1, Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess {
    /// Bits 3:0: the control register (0 for CLTS and LMSW).
    pub cr: u8,
    pub access_type: CrAccessType,
    /// Bit 6, LMSW only: the operand was in memory (else a register).
    pub lmsw_memory: bool,
    /// Bits 11:8, MOV CR only: the general register, numbered as in
    /// [`super::fields::GuestRegisters::gpr`] (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, ...).
    pub gpr: u8,
    /// Bits 31:16, LMSW only: the source operand.
    pub lmsw_source: u16,
}

impl CrAccess {
    pub const fn from_qualification(qualification: u64) -> Self {
        Self {
            cr: (qualification & 0xf) as u8,
            access_type: match (qualification >> 4) & 0b11 {
                0 => CrAccessType::MovToCr,
                1 => CrAccessType::MovFromCr,
                2 => CrAccessType::Clts,
                _ => CrAccessType::Lmsw,
            },
            lmsw_memory: qualification & (1 << 6) != 0,
            gpr: ((qualification >> 8) & 0xf) as u8,
            lmsw_source: (qualification >> 16) as u16,
        }
    }
}

/// Exit qualification for EPT violations (SDM Vol. 3C §28.2.1, Table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolation {
    /// Bit 0: the access was a data read.
    pub read: bool,
    /// Bit 1: the access was a data write.
    pub write: bool,
    /// Bit 2: the access was an instruction fetch.
    pub fetch: bool,
    /// Bits 3-5: the guest-physical address was readable, writable, executable (for
    /// supervisor-mode linear addresses when mode-based execute control is on): the AND
    /// of the corresponding bits of the EPT entries walked.
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    /// Bit 6: executable for user-mode linear addresses (only meaningful with mode-based
    /// execute control).
    pub user_executable: bool,
    /// Bit 7: the guest-linear address field is valid.
    pub gla_valid: bool,
    /// Bit 8, when `gla_valid`: the access was to the translation of the linear address
    /// (true) or to a guest paging-structure entry during the walk (false).
    pub translated_access: bool,
    /// Bit 12: the faulting access was part of an IRET that unblocked NMIs. With virtual
    /// NMIs the VMM sets "blocking by NMI" in the interruptibility state before resuming
    /// the guest at that IRET (SDM Vol. 3C §28.2.3, "Information About NMI Unblocking Due
    /// to IRET").
    pub nmi_unblocking: bool,
}

impl EptViolation {
    pub const fn from_qualification(q: u64) -> Self {
        const fn bit(q: u64, n: u32) -> bool {
            q & (1 << n) != 0
        }
        Self {
            read: bit(q, 0),
            write: bit(q, 1),
            fetch: bit(q, 2),
            readable: bit(q, 3),
            writable: bit(q, 4),
            executable: bit(q, 5),
            user_executable: bit(q, 6),
            gla_valid: bit(q, 7),
            translated_access: bit(q, 8),
            nmi_unblocking: bit(q, 12),
        }
    }
}

/// The kind of access: `read`, `write`, `fetch`, or several joined with `+`. The alternate
/// form (`{:#}`) adds the EPT permissions found, e.g. `write [r-x]`.
impl fmt::Display for EptViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (set, word) in [
            (self.read, "read"),
            (self.write, "write"),
            (self.fetch, "fetch"),
        ] {
            if set {
                if !first {
                    f.write_str("+")?;
                }
                f.write_str(word)?;
                first = false;
            }
        }
        if first {
            f.write_str("access")?;
        }
        if f.alternate() {
            let flag = |set: bool, c: char| if set { c } else { '-' };
            write!(
                f,
                " [{}{}{}]",
                flag(self.readable, 'r'),
                flag(self.writable, 'w'),
                flag(self.executable, 'x')
            )?;
        }
        Ok(())
    }
}

/// Interruption type, bits 10:8 of the interruption-information formats (SDM Vol. 3C
/// §25.8.3 for VM entry, §25.9.2 for VM exit, §25.9.3 for IDT vectoring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptionKind {
    /// 0
    ExternalInterrupt,
    /// 1: not used.
    Reserved,
    /// 2
    Nmi,
    /// 3: every exception but those below (including #DB and #BP/#OF not from INT1/INT3/INTO).
    HardwareException,
    /// 4: INT n.
    SoftwareInterrupt,
    /// 5: INT1 (ICEBP).
    PrivilegedSoftwareException,
    /// 6: INT3 and INTO.
    SoftwareException,
    /// 7: "other event"; on VM entry with vector 0, a pending MTF VM exit.
    Other,
}

impl InterruptionKind {
    /// From bits 2:0 of `bits`.
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 0b111 {
            0 => Self::ExternalInterrupt,
            1 => Self::Reserved,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => Self::Other,
        }
    }

    /// The 3-bit type value.
    pub const fn bits(self) -> u32 {
        match self {
            Self::ExternalInterrupt => 0,
            Self::Reserved => 1,
            Self::Nmi => 2,
            Self::HardwareException => 3,
            Self::SoftwareInterrupt => 4,
            Self::PrivilegedSoftwareException => 5,
            Self::SoftwareException => 6,
            Self::Other => 7,
        }
    }

    /// Software interrupts and exceptions need the VM-entry instruction length when
    /// injected (SDM Vol. 3C §25.8.3).
    pub const fn is_software(self) -> bool {
        matches!(
            self,
            Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException
        )
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::ExternalInterrupt => "external_interrupt",
            Self::Reserved => "reserved",
            Self::Nmi => "nmi",
            Self::HardwareException => "hardware_exception",
            Self::SoftwareInterrupt => "software_interrupt",
            Self::PrivilegedSoftwareException => "privileged_software_exception",
            Self::SoftwareException => "software_exception",
            Self::Other => "other",
        }
    }
}

/// An interruption-information field, decoded (SDM Vol. 3C §25.9.2 VM-exit interruption
/// information and §25.9.3 IDT-vectoring information; the VM-entry format of §25.8.3 is the
/// same with bits 30:12 reserved, and its encoder is in [`super::event`]):
///
/// | bits  | meaning |
/// |-------|---------|
/// | 7:0   | vector |
/// | 10:8  | type ([`InterruptionKind`]) |
/// | 11    | error code valid (VM exit) / deliver error code (VM entry) |
/// | 12    | NMI unblocking due to IRET (VM-exit interruption information only) |
/// | 31    | valid |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo {
    pub vector: u8,
    pub kind: InterruptionKind,
    pub error_code_valid: bool,
    /// Undefined in the IDT-vectoring information field; see [`EptViolation::nmi_unblocking`]
    /// for what the VMM does when it is set.
    pub nmi_unblocking: bool,
    pub valid: bool,
}

impl InterruptionInfo {
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            vector: raw as u8,
            kind: InterruptionKind::from_bits(raw >> 8),
            error_code_valid: raw & (1 << 11) != 0,
            nmi_unblocking: raw & (1 << 12) != 0,
            valid: raw & (1 << 31) != 0,
        }
    }
}

/// `hardware_exception vector 14 error_code`, or `none` when not valid.
impl fmt::Display for InterruptionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.valid {
            return f.write_str("none");
        }
        write!(f, "{} vector {}", self.kind.name(), self.vector)?;
        if self.error_code_valid {
            f.write_str(" error_code")?;
        }
        if self.nmi_unblocking {
            f.write_str(" nmi_unblocking")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::format;

    #[test]
    fn exit_reason_field_decoding() {
        assert_eq!(ExitReason::from_raw(10), (ExitReason::Cpuid, false));
        assert_eq!(ExitReason::from_raw(30), (ExitReason::Io, false));
        assert_eq!(ExitReason::from_raw(48), (ExitReason::EptViolation, false));
        // VM-entry failure, invalid guest state: 0x8000_0000 | 33.
        assert_eq!(
            ExitReason::from_raw(0x8000_0021),
            (ExitReason::EntryFailureGuestState, true)
        );
        assert_eq!(
            ExitReason::from_raw(0x8000_0022),
            (ExitReason::EntryFailureMsrLoading, true)
        );
        // Pending MTF (bit 28) and root-operation (bit 29) bits do not disturb the reason.
        assert_eq!(
            ExitReason::from_raw(0x3000_0034),
            (ExitReason::PreemptionTimer, false)
        );
        // Gaps and numbers past the list.
        assert_eq!(ExitReason::from_raw(35), (ExitReason::Unknown(35), false));
        assert_eq!(ExitReason::from_raw(71), (ExitReason::Unknown(71), false));
        assert_eq!(
            ExitReason::from_raw(0xffff),
            (ExitReason::Unknown(0xffff), false)
        );
    }

    #[test]
    fn exit_reason_numbers_match_appendix_c() {
        let expected = [
            (ExitReason::ExceptionOrNmi, 0),
            (ExitReason::ExternalInterrupt, 1),
            (ExitReason::TripleFault, 2),
            (ExitReason::Init, 3),
            (ExitReason::Sipi, 4),
            (ExitReason::InterruptWindow, 7),
            (ExitReason::NmiWindow, 8),
            (ExitReason::TaskSwitch, 9),
            (ExitReason::Hlt, 12),
            (ExitReason::Vmcall, 18),
            (ExitReason::Vmclear, 19),
            (ExitReason::Vmxon, 27),
            (ExitReason::CrAccess, 28),
            (ExitReason::Rdmsr, 31),
            (ExitReason::Wrmsr, 32),
            (ExitReason::Mwait, 36),
            (ExitReason::MonitorTrapFlag, 37),
            (ExitReason::Monitor, 39),
            (ExitReason::Pause, 40),
            (ExitReason::EntryFailureMachineCheck, 41),
            (ExitReason::TprBelowThreshold, 43),
            (ExitReason::EptMisconfiguration, 49),
            (ExitReason::PreemptionTimer, 52),
            (ExitReason::Xsetbv, 55),
            (ExitReason::Xrstors, 64),
            (ExitReason::Enclv, 70),
            (ExitReason::EnqcmdPasidFailure, 72),
            (ExitReason::Wrmsrlist, 79),
        ];
        for (reason, n) in expected {
            assert_eq!(reason.basic(), n, "{reason}");
        }
        // Everything from 0 to 79 except the undefined 35, 38, 42 and 71.
        assert_eq!(ExitReason::ALL.len(), 80 - 4);
    }

    #[test]
    fn table_is_consistent() {
        let mut names = HashSet::new();
        assert_eq!(ExitReason::COUNT, ExitReason::ALL.len() + 1);
        for (i, &r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(ExitReason::from_basic(r.basic()), r);
            assert!(names.insert(r.name()), "duplicate {}", r.name());
            assert!(r
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert!(!names.contains("unknown"));
        assert_eq!(ExitReason::Unknown(35).index(), ExitReason::COUNT - 1);
        assert_eq!(ExitReason::Unknown(200).index(), ExitReason::COUNT - 1);
        assert_eq!(ExitReason::Unknown(35).name(), "unknown");
    }

    #[test]
    fn exit_reason_names_are_stable() {
        assert_eq!(ExitReason::Cpuid.name(), "cpuid");
        assert_eq!(ExitReason::Io.name(), "io");
        assert_eq!(ExitReason::EptViolation.name(), "ept_violation");
        assert_eq!(ExitReason::CrAccess.name(), "cr_access");
        assert_eq!(ExitReason::PreemptionTimer.name(), "preemption_timer");
        assert_eq!(format!("{}", ExitReason::Hlt), "hlt");
        assert_eq!(format!("{}", ExitReason::Unknown(71)), "unknown(71)");
    }

    #[test]
    fn io_qualification() {
        // OUT DX, AL with DX = 0x3f8: size 0, OUT, port in bits 31:16.
        assert_eq!(
            IoQualification::from_qualification(0x03f8_0000),
            Some(IoQualification {
                size: 1,
                is_in: false,
                string: false,
                rep: false,
                immediate: false,
                port: 0x3f8
            })
        );
        // IN EAX, 0x71: size 3 (4 bytes) | IN 0x8 | immediate 0x40.
        assert_eq!(
            IoQualification::from_qualification(0x0071_004b),
            Some(IoQualification {
                size: 4,
                is_in: true,
                string: false,
                rep: false,
                immediate: true,
                port: 0x71
            })
        );
        // REP OUTSW to DX = 0x1f0: size 1 (2 bytes) | string 0x10 | REP 0x20.
        assert_eq!(
            IoQualification::from_qualification(0x01f0_0031),
            Some(IoQualification {
                size: 2,
                is_in: false,
                string: true,
                rep: true,
                immediate: false,
                port: 0x1f0
            })
        );
        // Port 0xffff, IN AX: all port bits.
        let q = IoQualification::from_qualification(0xffff_0009).unwrap();
        assert_eq!((q.size, q.is_in, q.port), (2, true, 0xffff));
        // Size encodings 2 and 4-7 are not used.
        assert_eq!(IoQualification::from_qualification(0x0060_0002), None);
        assert_eq!(IoQualification::from_qualification(0x0060_0007), None);
    }

    #[test]
    fn cr_access_qualification() {
        // MOV CR3, RAX: CR 3, type 0, register 0.
        assert_eq!(
            CrAccess::from_qualification(0x3),
            CrAccess {
                cr: 3,
                access_type: CrAccessType::MovToCr,
                lmsw_memory: false,
                gpr: 0,
                lmsw_source: 0
            }
        );
        // MOV R12, CR3: type 1 (0x10), register 12 (0xc00).
        let q = CrAccess::from_qualification(0xc13);
        assert_eq!(
            (q.cr, q.access_type, q.gpr),
            (3, CrAccessType::MovFromCr, 12)
        );
        // MOV CR0, R15 and MOV CR8, RCX.
        let q = CrAccess::from_qualification(0xf00);
        assert_eq!((q.cr, q.access_type, q.gpr), (0, CrAccessType::MovToCr, 15));
        let q = CrAccess::from_qualification(0x108);
        assert_eq!((q.cr, q.access_type, q.gpr), (8, CrAccessType::MovToCr, 1));
        // CLTS: type 2.
        assert_eq!(
            CrAccess::from_qualification(0x20).access_type,
            CrAccessType::Clts
        );
        // LMSW from memory with source 0x0001: type 3 (0x30) | memory 0x40 | 1 << 16.
        assert_eq!(
            CrAccess::from_qualification(0x0001_0070),
            CrAccess {
                cr: 0,
                access_type: CrAccessType::Lmsw,
                lmsw_memory: true,
                gpr: 0,
                lmsw_source: 1
            }
        );
        // LMSW AX with AX = 0xfff1 from a register.
        let q = CrAccess::from_qualification(0xfff1_0030);
        assert_eq!(
            (q.access_type, q.lmsw_memory, q.lmsw_source),
            (CrAccessType::Lmsw, false, 0xfff1)
        );
    }

    #[test]
    fn ept_violation_qualification() {
        // Write to a read-only page through a valid linear address: write 0x2 | readable 0x8
        // | GLA valid 0x80 | translated 0x100.
        let v = EptViolation::from_qualification(0x18a);
        assert_eq!(
            v,
            EptViolation {
                read: false,
                write: true,
                fetch: false,
                readable: true,
                writable: false,
                executable: false,
                user_executable: false,
                gla_valid: true,
                translated_access: true,
                nmi_unblocking: false,
            }
        );
        assert_eq!(format!("{v}"), "write");
        assert_eq!(format!("{v:#}"), "write [r--]");

        // Fetch from a readable, writable, non-executable page: 0x4 | 0x8 | 0x10 | 0x180.
        let v = EptViolation::from_qualification(0x19c);
        assert!(v.fetch && v.readable && v.writable && !v.executable);
        assert_eq!(format!("{v:#}"), "fetch [rw-]");

        // Read of an unmapped address during a guest page walk: read 0x1 | GLA valid 0x80,
        // bit 8 clear.
        let v = EptViolation::from_qualification(0x81);
        assert!(v.read && v.gla_valid && !v.translated_access);
        assert_eq!(format!("{v:#}"), "read [---]");

        // A locked read-modify-write reports both, and bit 12 is NMI unblocking.
        let v = EptViolation::from_qualification(0x1183);
        assert!(v.nmi_unblocking);
        assert_eq!(format!("{v}"), "read+write");

        // Executable for supervisor (5) and user (6) mode.
        let v = EptViolation::from_qualification(0x64);
        assert!(v.executable && v.user_executable && !v.gla_valid);
        assert_eq!(format!("{}", EptViolation::from_qualification(0)), "access");
    }

    #[test]
    fn interruption_info_decoding() {
        // #PF on exit: valid | error code 0x800 | type 3 (0x300) | vector 14.
        let i = InterruptionInfo::from_raw(0x8000_0b0e);
        assert_eq!(
            i,
            InterruptionInfo {
                vector: 14,
                kind: InterruptionKind::HardwareException,
                error_code_valid: true,
                nmi_unblocking: false,
                valid: true,
            }
        );
        assert_eq!(format!("{i}"), "hardware_exception vector 14 error_code");
        // Same with NMI unblocking (bit 12).
        assert!(InterruptionInfo::from_raw(0x8000_1b0e).nmi_unblocking);
        // External interrupt 0x20 acknowledged on exit.
        let i = InterruptionInfo::from_raw(0x8000_0020);
        assert_eq!(
            (i.kind, i.vector),
            (InterruptionKind::ExternalInterrupt, 0x20)
        );
        assert!(!i.error_code_valid);
        // NMI: type 2, vector 2.
        let i = InterruptionInfo::from_raw(0x8000_0202);
        assert_eq!((i.kind, i.vector), (InterruptionKind::Nmi, 2));
        // INT3: software exception, INT 0x80: software interrupt, INT1: privileged.
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0603).kind,
            InterruptionKind::SoftwareException
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0480).kind,
            InterruptionKind::SoftwareInterrupt
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x8000_0501).kind,
            InterruptionKind::PrivilegedSoftwareException
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x100).kind,
            InterruptionKind::Reserved
        );
        assert_eq!(
            InterruptionInfo::from_raw(0x700).kind,
            InterruptionKind::Other
        );
        // Bit 31 clear: nothing.
        let i = InterruptionInfo::from_raw(0x0000_0b0e);
        assert!(!i.valid);
        assert_eq!(format!("{i}"), "none");
    }

    #[test]
    fn interruption_kind_bits_round_trip() {
        for bits in 0..8 {
            let k = InterruptionKind::from_bits(bits);
            assert_eq!(k.bits(), bits);
            assert_eq!(k.is_software(), matches!(bits, 4..=6));
        }
    }
}
