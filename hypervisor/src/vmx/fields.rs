//! VMCS field encodings, the failure forms of the VMX instructions, and the guest
//! registers the VMCS does not hold.
//!
//! A field encoding is the 32-bit operand of VMREAD/VMWRITE. Its structure (SDM Vol. 3C
//! §25.11.2, "VMREAD, VMWRITE, and Encodings of VMCS Fields"):
//!
//! | bits  | meaning |
//! |-------|---------|
//! | 0     | access type: 0 = full, 1 = high 32 bits of a 64-bit field (always 0 here) |
//! | 9:1   | index within the (width, type) group |
//! | 11:10 | type: 0 control, 1 VM-exit information (read-only), 2 guest state, 3 host state |
//! | 12    | reserved, 0 |
//! | 14:13 | width: 0 16-bit, 1 64-bit, 2 32-bit, 3 natural width |
//! | 31:15 | reserved, 0 |
//!
//! The encodings themselves are listed in SDM Vol. 3D Appendix B (§B.1 16-bit, §B.2 64-bit,
//! §B.3 32-bit, §B.4 natural-width fields; in each, .1 control, .2 read-only data, .3 guest
//! state, .4 host state; 16-bit fields have no read-only group, so there .2 is guest state).

use core::fmt;
use core::mem::offset_of;

/// Width of a VMCS field, encoding bits 14:13 (SDM Vol. 3C §25.11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Bits16,
    Bits32,
    Bits64,
    /// 64 bits on processors that support Intel 64 architecture.
    Natural,
}

impl Width {
    /// The bits of a VMWRITE operand the field keeps; VMWRITE ignores the rest and
    /// VMREAD zero-extends (SDM Vol. 3C §31.3, "VMREAD", "VMWRITE").
    pub const fn mask(self) -> u64 {
        match self {
            Width::Bits16 => 0xffff,
            Width::Bits32 => 0xffff_ffff,
            Width::Bits64 | Width::Natural => u64::MAX,
        }
    }
}

/// Type of a VMCS field, encoding bits 11:10 (SDM Vol. 3C §25.11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Control,
    /// "VM-exit information" (read-only data fields).
    ExitInformation,
    GuestState,
    HostState,
}

/// Defines [`VmcsField`] and its tables from one list, so that the encoding, the name and
/// the dense index of a field can never disagree.
macro_rules! vmcs_fields {
    ($( $(#[$doc:meta])* $variant:ident = $encoding:literal, $name:literal; )*) => {
        /// A VMCS field; the discriminant is its encoding (SDM Vol. 3D Appendix B).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum VmcsField {
            $( $(#[$doc])* $variant = $encoding, )*
        }

        /// The same variants numbered densely from 0 in declaration order.
        #[derive(Clone, Copy)]
        enum Position {
            $( $variant, )*
        }

        impl VmcsField {
            /// Every field Lazarus knows, in declaration order (`ALL[f.index()] == f`).
            pub const ALL: &'static [VmcsField] = &[$( VmcsField::$variant, )*];
            /// Number of fields in [`VmcsField::ALL`].
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, for logs and VMCS dumps.
            pub const fn name(self) -> &'static str {
                match self {
                    $( VmcsField::$variant => $name, )*
                }
            }

            /// Position in [`VmcsField::ALL`], for arrays keyed by field.
            pub const fn index(self) -> usize {
                match self {
                    $( VmcsField::$variant => Position::$variant as usize, )*
                }
            }

            /// The field with this encoding, if Lazarus knows it.
            pub const fn from_encoding(encoding: u32) -> Option<VmcsField> {
                match encoding {
                    $( $encoding => Some(VmcsField::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

vmcs_fields! {
    // §B.1.1 16-bit control fields.
    Vpid = 0x0000, "vpid";

    // §B.1.2 16-bit guest-state fields.
    GuestEsSelector = 0x0800, "guest_es_selector";
    GuestCsSelector = 0x0802, "guest_cs_selector";
    GuestSsSelector = 0x0804, "guest_ss_selector";
    GuestDsSelector = 0x0806, "guest_ds_selector";
    GuestFsSelector = 0x0808, "guest_fs_selector";
    GuestGsSelector = 0x080a, "guest_gs_selector";
    GuestLdtrSelector = 0x080c, "guest_ldtr_selector";
    GuestTrSelector = 0x080e, "guest_tr_selector";

    // §B.1.3 16-bit host-state fields.
    HostEsSelector = 0x0c00, "host_es_selector";
    HostCsSelector = 0x0c02, "host_cs_selector";
    HostSsSelector = 0x0c04, "host_ss_selector";
    HostDsSelector = 0x0c06, "host_ds_selector";
    HostFsSelector = 0x0c08, "host_fs_selector";
    HostGsSelector = 0x0c0a, "host_gs_selector";
    HostTrSelector = 0x0c0c, "host_tr_selector";

    // §B.2.1 64-bit control fields.
    IoBitmapA = 0x2000, "io_bitmap_a";
    IoBitmapB = 0x2002, "io_bitmap_b";
    MsrBitmap = 0x2004, "msr_bitmap";
    ExitMsrStoreAddress = 0x2006, "exit_msr_store_address";
    ExitMsrLoadAddress = 0x2008, "exit_msr_load_address";
    EntryMsrLoadAddress = 0x200a, "entry_msr_load_address";
    TscOffset = 0x2010, "tsc_offset";
    VirtualApicAddress = 0x2012, "virtual_apic_address";
    ApicAccessAddress = 0x2014, "apic_access_address";
    EptPointer = 0x201a, "ept_pointer";
    /// Consulted by XSAVES/XRSTORS when "enable XSAVES/XRSTORS" is 1 (SDM Vol. 3C §25.6,
    /// "XSS-Exiting Bitmap"); write it (0: no exits) whenever that control is set.
    XssExitingBitmap = 0x202c, "xss_exiting_bitmap";

    // §B.2.2 64-bit read-only data field.
    GuestPhysicalAddress = 0x2400, "guest_physical_address";

    // §B.2.3 64-bit guest-state fields.
    VmcsLinkPointer = 0x2800, "vmcs_link_pointer";
    GuestIa32Debugctl = 0x2802, "guest_ia32_debugctl";
    GuestIa32Pat = 0x2804, "guest_ia32_pat";
    GuestIa32Efer = 0x2806, "guest_ia32_efer";
    /// PDPTEs, loaded on VM entry when EPT is on and the guest uses PAE paging
    /// (SDM Vol. 3C §27.3.2.4).
    GuestPdpte0 = 0x280a, "guest_pdpte0";
    GuestPdpte1 = 0x280c, "guest_pdpte1";
    GuestPdpte2 = 0x280e, "guest_pdpte2";
    GuestPdpte3 = 0x2810, "guest_pdpte3";

    // §B.2.4 64-bit host-state fields.
    HostIa32Pat = 0x2c00, "host_ia32_pat";
    HostIa32Efer = 0x2c02, "host_ia32_efer";

    // §B.3.1 32-bit control fields.
    PinBasedControls = 0x4000, "pin_based_controls";
    PrimaryProcBasedControls = 0x4002, "primary_proc_based_controls";
    ExceptionBitmap = 0x4004, "exception_bitmap";
    PageFaultErrorCodeMask = 0x4006, "page_fault_error_code_mask";
    PageFaultErrorCodeMatch = 0x4008, "page_fault_error_code_match";
    Cr3TargetCount = 0x400a, "cr3_target_count";
    ExitControls = 0x400c, "exit_controls";
    ExitMsrStoreCount = 0x400e, "exit_msr_store_count";
    ExitMsrLoadCount = 0x4010, "exit_msr_load_count";
    EntryControls = 0x4012, "entry_controls";
    EntryMsrLoadCount = 0x4014, "entry_msr_load_count";
    EntryInterruptionInfo = 0x4016, "entry_interruption_info";
    EntryExceptionErrorCode = 0x4018, "entry_exception_error_code";
    EntryInstructionLength = 0x401a, "entry_instruction_length";
    TprThreshold = 0x401c, "tpr_threshold";
    SecondaryProcBasedControls = 0x401e, "secondary_proc_based_controls";

    // §B.3.2 32-bit read-only data fields.
    InstructionError = 0x4400, "instruction_error";
    ExitReason = 0x4402, "exit_reason";
    ExitInterruptionInfo = 0x4404, "exit_interruption_info";
    ExitInterruptionErrorCode = 0x4406, "exit_interruption_error_code";
    IdtVectoringInfo = 0x4408, "idt_vectoring_info";
    IdtVectoringErrorCode = 0x440a, "idt_vectoring_error_code";
    ExitInstructionLength = 0x440c, "exit_instruction_length";
    ExitInstructionInfo = 0x440e, "exit_instruction_info";

    // §B.3.3 32-bit guest-state fields.
    GuestEsLimit = 0x4800, "guest_es_limit";
    GuestCsLimit = 0x4802, "guest_cs_limit";
    GuestSsLimit = 0x4804, "guest_ss_limit";
    GuestDsLimit = 0x4806, "guest_ds_limit";
    GuestFsLimit = 0x4808, "guest_fs_limit";
    GuestGsLimit = 0x480a, "guest_gs_limit";
    GuestLdtrLimit = 0x480c, "guest_ldtr_limit";
    GuestTrLimit = 0x480e, "guest_tr_limit";
    GuestGdtrLimit = 0x4810, "guest_gdtr_limit";
    GuestIdtrLimit = 0x4812, "guest_idtr_limit";
    GuestEsAccessRights = 0x4814, "guest_es_access_rights";
    GuestCsAccessRights = 0x4816, "guest_cs_access_rights";
    GuestSsAccessRights = 0x4818, "guest_ss_access_rights";
    GuestDsAccessRights = 0x481a, "guest_ds_access_rights";
    GuestFsAccessRights = 0x481c, "guest_fs_access_rights";
    GuestGsAccessRights = 0x481e, "guest_gs_access_rights";
    GuestLdtrAccessRights = 0x4820, "guest_ldtr_access_rights";
    GuestTrAccessRights = 0x4822, "guest_tr_access_rights";
    GuestInterruptibilityState = 0x4824, "guest_interruptibility_state";
    GuestActivityState = 0x4826, "guest_activity_state";
    GuestSmbase = 0x4828, "guest_smbase";
    GuestIa32SysenterCs = 0x482a, "guest_ia32_sysenter_cs";
    PreemptionTimerValue = 0x482e, "preemption_timer_value";

    // §B.3.4 32-bit host-state field.
    HostIa32SysenterCs = 0x4c00, "host_ia32_sysenter_cs";

    // §B.4.1 natural-width control fields.
    Cr0GuestHostMask = 0x6000, "cr0_guest_host_mask";
    Cr4GuestHostMask = 0x6002, "cr4_guest_host_mask";
    Cr0ReadShadow = 0x6004, "cr0_read_shadow";
    Cr4ReadShadow = 0x6006, "cr4_read_shadow";

    // §B.4.2 natural-width read-only data fields.
    ExitQualification = 0x6400, "exit_qualification";
    GuestLinearAddress = 0x640a, "guest_linear_address";

    // §B.4.3 natural-width guest-state fields.
    GuestCr0 = 0x6800, "guest_cr0";
    GuestCr3 = 0x6802, "guest_cr3";
    GuestCr4 = 0x6804, "guest_cr4";
    GuestEsBase = 0x6806, "guest_es_base";
    GuestCsBase = 0x6808, "guest_cs_base";
    GuestSsBase = 0x680a, "guest_ss_base";
    GuestDsBase = 0x680c, "guest_ds_base";
    GuestFsBase = 0x680e, "guest_fs_base";
    GuestGsBase = 0x6810, "guest_gs_base";
    GuestLdtrBase = 0x6812, "guest_ldtr_base";
    GuestTrBase = 0x6814, "guest_tr_base";
    GuestGdtrBase = 0x6816, "guest_gdtr_base";
    GuestIdtrBase = 0x6818, "guest_idtr_base";
    GuestDr7 = 0x681a, "guest_dr7";
    GuestRsp = 0x681c, "guest_rsp";
    GuestRip = 0x681e, "guest_rip";
    GuestRflags = 0x6820, "guest_rflags";
    GuestPendingDebugExceptions = 0x6822, "guest_pending_debug_exceptions";
    GuestIa32SysenterEsp = 0x6824, "guest_ia32_sysenter_esp";
    GuestIa32SysenterEip = 0x6826, "guest_ia32_sysenter_eip";

    // §B.4.4 natural-width host-state fields.
    HostCr0 = 0x6c00, "host_cr0";
    HostCr3 = 0x6c02, "host_cr3";
    HostCr4 = 0x6c04, "host_cr4";
    HostFsBase = 0x6c06, "host_fs_base";
    HostGsBase = 0x6c08, "host_gs_base";
    HostTrBase = 0x6c0a, "host_tr_base";
    HostGdtrBase = 0x6c0c, "host_gdtr_base";
    HostIdtrBase = 0x6c0e, "host_idtr_base";
    HostIa32SysenterEsp = 0x6c10, "host_ia32_sysenter_esp";
    HostIa32SysenterEip = 0x6c12, "host_ia32_sysenter_eip";
    HostRsp = 0x6c14, "host_rsp";
    HostRip = 0x6c16, "host_rip";
}

impl VmcsField {
    /// The VMREAD/VMWRITE operand.
    pub const fn encoding(self) -> u32 {
        self as u32
    }

    /// Encoding bits 14:13.
    pub const fn width(self) -> Width {
        match (self.encoding() >> 13) & 0b11 {
            0 => Width::Bits16,
            1 => Width::Bits64,
            2 => Width::Bits32,
            _ => Width::Natural,
        }
    }

    /// Encoding bits 11:10.
    pub const fn field_type(self) -> FieldType {
        match (self.encoding() >> 10) & 0b11 {
            0 => FieldType::Control,
            1 => FieldType::ExitInformation,
            2 => FieldType::GuestState,
            _ => FieldType::HostState,
        }
    }

    /// A "VM-exit information" field (type 1). VMWRITE to one fails with
    /// [`InstructionError::VmwriteReadOnly`] unless IA32_VMX_MISC bit 29 is set
    /// (SDM Vol. 3D §A.6); Lazarus never relies on that bit.
    pub const fn is_read_only(self) -> bool {
        matches!(self.field_type(), FieldType::ExitInformation)
    }
}

impl fmt::Display for VmcsField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// VM-instruction error numbers, read from the VM-instruction error field after VMfailValid
/// (SDM Vol. 3C §31.4, Table 31-1). Numbers 14, 21 and 27 are not defined there and
/// decode as [`InstructionError::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstructionError {
    /// 1
    VmcallInRoot,
    /// 2
    VmclearInvalidAddress,
    /// 3
    VmclearVmxonPointer,
    /// 4
    VmlaunchNonClear,
    /// 5
    VmresumeNonLaunched,
    /// 6
    VmresumeAfterVmxoff,
    /// 7
    EntryInvalidControls,
    /// 8
    EntryInvalidHostState,
    /// 9
    VmptrldInvalidAddress,
    /// 10
    VmptrldVmxonPointer,
    /// 11
    VmptrldBadRevision,
    /// 12
    UnsupportedComponent,
    /// 13
    VmwriteReadOnly,
    /// 15
    VmxonInRoot,
    /// 16
    EntryInvalidExecutivePointer,
    /// 17
    EntryNonLaunchedExecutive,
    /// 18
    EntryExecutiveNotVmxonPointer,
    /// 19
    VmcallNonClear,
    /// 20
    VmcallInvalidExitControls,
    /// 22
    VmcallBadMsegRevision,
    /// 23
    VmxoffUnderDualMonitor,
    /// 24
    VmcallInvalidSmmMonitorFeatures,
    /// 25
    EntryInvalidExecutiveControls,
    /// 26
    EntryBlockedByMovSs,
    /// 28
    InvalidInveptInvvpidOperand,
    /// A number Table 31-1 does not define.
    Other(u32),
}

impl InstructionError {
    pub const fn from_number(number: u32) -> Self {
        match number {
            1 => Self::VmcallInRoot,
            2 => Self::VmclearInvalidAddress,
            3 => Self::VmclearVmxonPointer,
            4 => Self::VmlaunchNonClear,
            5 => Self::VmresumeNonLaunched,
            6 => Self::VmresumeAfterVmxoff,
            7 => Self::EntryInvalidControls,
            8 => Self::EntryInvalidHostState,
            9 => Self::VmptrldInvalidAddress,
            10 => Self::VmptrldVmxonPointer,
            11 => Self::VmptrldBadRevision,
            12 => Self::UnsupportedComponent,
            13 => Self::VmwriteReadOnly,
            15 => Self::VmxonInRoot,
            16 => Self::EntryInvalidExecutivePointer,
            17 => Self::EntryNonLaunchedExecutive,
            18 => Self::EntryExecutiveNotVmxonPointer,
            19 => Self::VmcallNonClear,
            20 => Self::VmcallInvalidExitControls,
            22 => Self::VmcallBadMsegRevision,
            23 => Self::VmxoffUnderDualMonitor,
            24 => Self::VmcallInvalidSmmMonitorFeatures,
            25 => Self::EntryInvalidExecutiveControls,
            26 => Self::EntryBlockedByMovSs,
            28 => Self::InvalidInveptInvvpidOperand,
            other => Self::Other(other),
        }
    }

    pub const fn number(self) -> u32 {
        match self {
            Self::VmcallInRoot => 1,
            Self::VmclearInvalidAddress => 2,
            Self::VmclearVmxonPointer => 3,
            Self::VmlaunchNonClear => 4,
            Self::VmresumeNonLaunched => 5,
            Self::VmresumeAfterVmxoff => 6,
            Self::EntryInvalidControls => 7,
            Self::EntryInvalidHostState => 8,
            Self::VmptrldInvalidAddress => 9,
            Self::VmptrldVmxonPointer => 10,
            Self::VmptrldBadRevision => 11,
            Self::UnsupportedComponent => 12,
            Self::VmwriteReadOnly => 13,
            Self::VmxonInRoot => 15,
            Self::EntryInvalidExecutivePointer => 16,
            Self::EntryNonLaunchedExecutive => 17,
            Self::EntryExecutiveNotVmxonPointer => 18,
            Self::VmcallNonClear => 19,
            Self::VmcallInvalidExitControls => 20,
            Self::VmcallBadMsegRevision => 22,
            Self::VmxoffUnderDualMonitor => 23,
            Self::VmcallInvalidSmmMonitorFeatures => 24,
            Self::EntryInvalidExecutiveControls => 25,
            Self::EntryBlockedByMovSs => 26,
            Self::InvalidInveptInvvpidOperand => 28,
            Self::Other(n) => n,
        }
    }

    /// The description Table 31-1 gives for the number.
    pub const fn description(self) -> &'static str {
        match self {
            Self::VmcallInRoot => "VMCALL executed in VMX root operation",
            Self::VmclearInvalidAddress => "VMCLEAR with invalid physical address",
            Self::VmclearVmxonPointer => "VMCLEAR with VMXON pointer",
            Self::VmlaunchNonClear => "VMLAUNCH with non-clear VMCS",
            Self::VmresumeNonLaunched => "VMRESUME with non-launched VMCS",
            Self::VmresumeAfterVmxoff => {
                "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)"
            }
            Self::EntryInvalidControls => "VM entry with invalid control field(s)",
            Self::EntryInvalidHostState => "VM entry with invalid host-state field(s)",
            Self::VmptrldInvalidAddress => "VMPTRLD with invalid physical address",
            Self::VmptrldVmxonPointer => "VMPTRLD with VMXON pointer",
            Self::VmptrldBadRevision => "VMPTRLD with incorrect VMCS revision identifier",
            Self::UnsupportedComponent => "VMREAD/VMWRITE from/to unsupported VMCS component",
            Self::VmwriteReadOnly => "VMWRITE to read-only VMCS component",
            Self::VmxonInRoot => "VMXON executed in VMX root operation",
            Self::EntryInvalidExecutivePointer => "VM entry with invalid executive-VMCS pointer",
            Self::EntryNonLaunchedExecutive => "VM entry with non-launched executive VMCS",
            Self::EntryExecutiveNotVmxonPointer => {
                "VM entry with executive-VMCS pointer not VMXON pointer \
                 (when attempting to deactivate the dual-monitor treatment of SMIs and SMM)"
            }
            Self::VmcallNonClear => {
                "VMCALL with non-clear VMCS \
                 (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
            }
            Self::VmcallInvalidExitControls => "VMCALL with invalid VM-exit control fields",
            Self::VmcallBadMsegRevision => {
                "VMCALL with incorrect MSEG revision identifier \
                 (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
            }
            Self::VmxoffUnderDualMonitor => "VMXOFF under dual-monitor treatment of SMIs and SMM",
            Self::VmcallInvalidSmmMonitorFeatures => {
                "VMCALL with invalid SMM-monitor features \
                 (when attempting to activate the dual-monitor treatment of SMIs and SMM)"
            }
            Self::EntryInvalidExecutiveControls => {
                "VM entry with invalid VM-execution control fields in executive VMCS \
                 (when attempting to return from SMM)"
            }
            Self::EntryBlockedByMovSs => "VM entry with events blocked by MOV SS",
            Self::InvalidInveptInvvpidOperand => "invalid operand to INVEPT/INVVPID",
            Self::Other(_) => "undefined VM-instruction error number",
        }
    }
}

/// `error 7 (VM entry with invalid control field(s))`
impl fmt::Display for InstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error {} ({})", self.number(), self.description())
    }
}

/// How a VMX instruction fails (SDM Vol. 3C §31.2, "Conventions"): VMfailInvalid sets
/// RFLAGS.CF when there is no current VMCS to hold an error number; VMfailValid sets
/// RFLAGS.ZF and stores the number in the VM-instruction error field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    VmFailInvalid,
    VmFailValid(InstructionError),
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VmFailInvalid => f.write_str("VMfailInvalid (no current VMCS)"),
            Self::VmFailValid(e) => write!(f, "VMfailValid, {e}"),
        }
    }
}

/// Reading and writing the current VMCS. The real implementation wraps VMREAD/VMWRITE;
/// [`FakeVmcs`] stands in for it in tests. Values are zero-extended to 64 bits on read and
/// truncated to the field's width on write, as the instructions do.
pub trait VmcsAccess {
    fn read(&self, field: VmcsField) -> Result<u64, VmxError>;
    fn write(&mut self, field: VmcsField, value: u64) -> Result<(), VmxError>;

    /// Sets `bits` in `field` (read-modify-write).
    fn set_bits(&mut self, field: VmcsField, bits: u64) -> Result<(), VmxError> {
        let value = self.read(field)?;
        self.write(field, value | bits)
    }

    /// Clears `bits` in `field` (read-modify-write).
    fn clear_bits(&mut self, field: VmcsField, bits: u64) -> Result<(), VmxError> {
        let value = self.read(field)?;
        self.write(field, value & !bits)
    }
}

/// An in-memory VMCS for tests: every field reads 0 until written, VMWRITE to a read-only
/// field fails as on hardware without IA32_VMX_MISC bit 29, and fields can be marked
/// unsupported to exercise error paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeVmcs {
    values: [u64; VmcsField::COUNT],
    written: [bool; VmcsField::COUNT],
    unsupported: [bool; VmcsField::COUNT],
}

impl Default for FakeVmcs {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeVmcs {
    pub const fn new() -> Self {
        Self {
            values: [0; VmcsField::COUNT],
            written: [false; VmcsField::COUNT],
            unsupported: [false; VmcsField::COUNT],
        }
    }

    /// Stores a value the way the processor does on a VM exit: read-only fields included,
    /// truncated to the field's width, not counted as a VMWRITE.
    pub fn poke(&mut self, field: VmcsField, value: u64) {
        self.values[field.index()] = value & field.width().mask();
    }

    /// Whether `field` was the target of a successful [`VmcsAccess::write`].
    pub fn was_written(&self, field: VmcsField) -> bool {
        self.written[field.index()]
    }

    /// Makes VMREAD/VMWRITE of `field` fail with error 12, as on a processor without it.
    pub fn set_unsupported(&mut self, field: VmcsField) {
        self.unsupported[field.index()] = true;
    }
}

impl VmcsAccess for FakeVmcs {
    fn read(&self, field: VmcsField) -> Result<u64, VmxError> {
        if self.unsupported[field.index()] {
            return Err(VmxError::VmFailValid(
                InstructionError::UnsupportedComponent,
            ));
        }
        Ok(self.values[field.index()])
    }

    fn write(&mut self, field: VmcsField, value: u64) -> Result<(), VmxError> {
        if self.unsupported[field.index()] {
            return Err(VmxError::VmFailValid(
                InstructionError::UnsupportedComponent,
            ));
        }
        if field.is_read_only() {
            return Err(VmxError::VmFailValid(InstructionError::VmwriteReadOnly));
        }
        self.poke(field, value);
        self.written[field.index()] = true;
        Ok(())
    }
}

/// The guest's general registers that the VMCS does not hold (RSP, RIP and RFLAGS are VMCS
/// guest-state fields, SDM Vol. 3C §25.4.1), plus CR2, which VM entries and exits do not
/// switch. The entry assembly saves and restores them at the `*_OFFSET` constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub cr2: u64,
}

impl GuestRegisters {
    pub const RAX_OFFSET: usize = offset_of!(GuestRegisters, rax);
    pub const RBX_OFFSET: usize = offset_of!(GuestRegisters, rbx);
    pub const RCX_OFFSET: usize = offset_of!(GuestRegisters, rcx);
    pub const RDX_OFFSET: usize = offset_of!(GuestRegisters, rdx);
    pub const RSI_OFFSET: usize = offset_of!(GuestRegisters, rsi);
    pub const RDI_OFFSET: usize = offset_of!(GuestRegisters, rdi);
    pub const RBP_OFFSET: usize = offset_of!(GuestRegisters, rbp);
    pub const R8_OFFSET: usize = offset_of!(GuestRegisters, r8);
    pub const R9_OFFSET: usize = offset_of!(GuestRegisters, r9);
    pub const R10_OFFSET: usize = offset_of!(GuestRegisters, r10);
    pub const R11_OFFSET: usize = offset_of!(GuestRegisters, r11);
    pub const R12_OFFSET: usize = offset_of!(GuestRegisters, r12);
    pub const R13_OFFSET: usize = offset_of!(GuestRegisters, r13);
    pub const R14_OFFSET: usize = offset_of!(GuestRegisters, r14);
    pub const R15_OFFSET: usize = offset_of!(GuestRegisters, r15);
    pub const CR2_OFFSET: usize = offset_of!(GuestRegisters, cr2);
    pub const SIZE: usize = core::mem::size_of::<GuestRegisters>();

    /// Register number `n` in the encoding exit qualifications and VM-exit instruction
    /// information use (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15;
    /// SDM Vol. 3C §28.2.1, Table 28-3). `None` for 4 (RSP is the VMCS field
    /// [`VmcsField::GuestRsp`]) and for numbers above 15.
    pub const fn gpr(&self, n: u8) -> Option<u64> {
        Some(match n {
            0 => self.rax,
            1 => self.rcx,
            2 => self.rdx,
            3 => self.rbx,
            5 => self.rbp,
            6 => self.rsi,
            7 => self.rdi,
            8 => self.r8,
            9 => self.r9,
            10 => self.r10,
            11 => self.r11,
            12 => self.r12,
            13 => self.r13,
            14 => self.r14,
            15 => self.r15,
            _ => return None,
        })
    }

    /// Sets register number `n` (encoding as in [`GuestRegisters::gpr`]); returns false,
    /// changing nothing, for 4 (RSP) and numbers above 15.
    pub fn set_gpr(&mut self, n: u8, value: u64) -> bool {
        let slot = match n {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            15 => &mut self.r15,
            _ => return false,
        };
        *slot = value;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::format;

    #[test]
    fn encodings_match_appendix_b() {
        // One or two per Appendix B group, checked by hand against the tables.
        let expected = [
            (VmcsField::Vpid, 0x0000),
            (VmcsField::GuestTrSelector, 0x080e),
            (VmcsField::HostTrSelector, 0x0c0c),
            (VmcsField::MsrBitmap, 0x2004),
            (VmcsField::EptPointer, 0x201a),
            (VmcsField::GuestPhysicalAddress, 0x2400),
            (VmcsField::GuestIa32Efer, 0x2806),
            (VmcsField::HostIa32Efer, 0x2c02),
            (VmcsField::SecondaryProcBasedControls, 0x401e),
            (VmcsField::ExitReason, 0x4402),
            (VmcsField::PreemptionTimerValue, 0x482e),
            (VmcsField::HostIa32SysenterCs, 0x4c00),
            (VmcsField::Cr4ReadShadow, 0x6006),
            (VmcsField::ExitQualification, 0x6400),
            (VmcsField::GuestRip, 0x681e),
            (VmcsField::HostRip, 0x6c16),
        ];
        for (field, encoding) in expected {
            assert_eq!(field.encoding(), encoding, "{field}");
            assert_eq!(VmcsField::from_encoding(encoding), Some(field));
        }
        assert_eq!(VmcsField::from_encoding(0x6c18), None);
    }

    #[test]
    fn width_and_type_come_from_the_encoding() {
        assert_eq!(VmcsField::Vpid.width(), Width::Bits16);
        assert_eq!(VmcsField::GuestCsSelector.width(), Width::Bits16);
        assert_eq!(VmcsField::EptPointer.width(), Width::Bits64);
        assert_eq!(VmcsField::GuestPhysicalAddress.width(), Width::Bits64);
        assert_eq!(VmcsField::PinBasedControls.width(), Width::Bits32);
        assert_eq!(VmcsField::GuestCsAccessRights.width(), Width::Bits32);
        assert_eq!(VmcsField::GuestCr0.width(), Width::Natural);
        assert_eq!(VmcsField::HostRsp.width(), Width::Natural);

        assert_eq!(VmcsField::Cr0GuestHostMask.field_type(), FieldType::Control);
        assert_eq!(VmcsField::GuestRflags.field_type(), FieldType::GuestState);
        assert_eq!(VmcsField::HostIa32Pat.field_type(), FieldType::HostState);
        for f in [
            VmcsField::InstructionError,
            VmcsField::ExitReason,
            VmcsField::ExitQualification,
            VmcsField::GuestPhysicalAddress,
            VmcsField::GuestLinearAddress,
            VmcsField::IdtVectoringInfo,
            VmcsField::ExitInstructionInfo,
        ] {
            assert!(f.is_read_only(), "{f}");
        }
        assert!(!VmcsField::GuestRip.is_read_only());
        assert!(!VmcsField::EntryInterruptionInfo.is_read_only());
        let read_only = VmcsField::ALL.iter().filter(|f| f.is_read_only()).count();
        assert_eq!(read_only, 11);
    }

    #[test]
    fn table_is_consistent() {
        let mut encodings = HashSet::new();
        let mut names = HashSet::new();
        assert_eq!(VmcsField::ALL.len(), VmcsField::COUNT);
        for (i, &f) in VmcsField::ALL.iter().enumerate() {
            let e = f.encoding();
            assert_eq!(f.index(), i);
            assert!(encodings.insert(e), "duplicate encoding {e:#x}");
            assert!(names.insert(f.name()), "duplicate name {}", f.name());
            // Full access, bit 12 and bits 31:15 reserved (§25.11.2).
            assert_eq!(e & 1, 0, "{f}");
            assert_eq!(e & (1 << 12), 0, "{f}");
            assert_eq!(e >> 15, 0, "{f}");
            assert!(f
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            // The name says which group the field is in.
            let prefix_ok = match f.field_type() {
                FieldType::GuestState => {
                    f.name().starts_with("guest_")
                        || f.name() == "vmcs_link_pointer"
                        || f.name() == "preemption_timer_value"
                }
                FieldType::HostState => f.name().starts_with("host_"),
                _ => !f.name().starts_with("host_"),
            };
            assert!(prefix_ok, "{f}");
        }
    }

    #[test]
    fn fake_vmcs_reads_back_truncated_writes() {
        let mut v = FakeVmcs::new();
        assert_eq!(v.read(VmcsField::GuestRip), Ok(0));
        v.write(VmcsField::GuestRip, 0xffff_ffff_8100_0000).unwrap();
        assert_eq!(v.read(VmcsField::GuestRip), Ok(0xffff_ffff_8100_0000));
        v.write(VmcsField::GuestCsSelector, 0x1_0010).unwrap();
        assert_eq!(v.read(VmcsField::GuestCsSelector), Ok(0x10));
        v.write(VmcsField::PinBasedControls, 0xdead_0000_0000_007f)
            .unwrap();
        assert_eq!(v.read(VmcsField::PinBasedControls), Ok(0x7f));
        assert!(v.was_written(VmcsField::PinBasedControls));
        assert!(!v.was_written(VmcsField::GuestRsp));
        v.set_bits(VmcsField::PinBasedControls, 0x100).unwrap();
        v.clear_bits(VmcsField::PinBasedControls, 0x1).unwrap();
        assert_eq!(v.read(VmcsField::PinBasedControls), Ok(0x17e));
    }

    #[test]
    fn fake_vmcs_rejects_read_only_and_unsupported() {
        let mut v = FakeVmcs::new();
        assert_eq!(
            v.write(VmcsField::ExitReason, 12),
            Err(VmxError::VmFailValid(InstructionError::VmwriteReadOnly))
        );
        assert_eq!(v.read(VmcsField::ExitReason), Ok(0));
        v.poke(VmcsField::ExitReason, 12);
        assert_eq!(v.read(VmcsField::ExitReason), Ok(12));
        assert!(!v.was_written(VmcsField::ExitReason));

        v.set_unsupported(VmcsField::XssExitingBitmap);
        let unsupported = Err(VmxError::VmFailValid(
            InstructionError::UnsupportedComponent,
        ));
        assert_eq!(v.read(VmcsField::XssExitingBitmap), unsupported);
        assert_eq!(
            v.write(VmcsField::XssExitingBitmap, 0),
            unsupported.map(|_| ())
        );
    }

    #[test]
    fn instruction_error_numbers_round_trip() {
        let mut defined = 0;
        for n in 0..=30 {
            let e = InstructionError::from_number(n);
            assert_eq!(e.number(), n);
            let undefined = matches!(n, 0 | 14 | 21 | 27 | 29 | 30);
            assert_eq!(matches!(e, InstructionError::Other(_)), undefined, "{n}");
            if !undefined {
                defined += 1;
            }
        }
        assert_eq!(defined, 25);
        assert_eq!(
            InstructionError::from_number(7),
            InstructionError::EntryInvalidControls
        );
        assert_eq!(
            InstructionError::from_number(28),
            InstructionError::InvalidInveptInvvpidOperand
        );
    }

    #[test]
    fn errors_display_number_and_text() {
        assert_eq!(
            format!("{}", InstructionError::EntryInvalidHostState),
            "error 8 (VM entry with invalid host-state field(s))"
        );
        assert_eq!(
            format!(
                "{}",
                VmxError::VmFailValid(InstructionError::VmlaunchNonClear)
            ),
            "VMfailValid, error 4 (VMLAUNCH with non-clear VMCS)"
        );
        assert_eq!(
            format!("{}", VmxError::VmFailValid(InstructionError::Other(99))),
            "VMfailValid, error 99 (undefined VM-instruction error number)"
        );
        assert_eq!(
            format!("{}", VmxError::VmFailInvalid),
            "VMfailInvalid (no current VMCS)"
        );
    }

    #[test]
    fn guest_register_offsets() {
        let offsets = [
            GuestRegisters::RAX_OFFSET,
            GuestRegisters::RBX_OFFSET,
            GuestRegisters::RCX_OFFSET,
            GuestRegisters::RDX_OFFSET,
            GuestRegisters::RSI_OFFSET,
            GuestRegisters::RDI_OFFSET,
            GuestRegisters::RBP_OFFSET,
            GuestRegisters::R8_OFFSET,
            GuestRegisters::R9_OFFSET,
            GuestRegisters::R10_OFFSET,
            GuestRegisters::R11_OFFSET,
            GuestRegisters::R12_OFFSET,
            GuestRegisters::R13_OFFSET,
            GuestRegisters::R14_OFFSET,
            GuestRegisters::R15_OFFSET,
            GuestRegisters::CR2_OFFSET,
        ];
        for (i, off) in offsets.into_iter().enumerate() {
            assert_eq!(off, i * 8);
        }
        assert_eq!(GuestRegisters::R15_OFFSET, 112);
        assert_eq!(GuestRegisters::CR2_OFFSET, 120);
        assert_eq!(GuestRegisters::SIZE, 128);
    }

    #[test]
    fn guest_registers_by_sdm_number() {
        let mut r = GuestRegisters::default();
        for n in 0..16u8 {
            assert_eq!(r.set_gpr(n, 0x100 + n as u64), n != 4);
        }
        assert_eq!(r.rax, 0x100);
        assert_eq!(r.rcx, 0x101);
        assert_eq!(r.rdx, 0x102);
        assert_eq!(r.rbx, 0x103);
        assert_eq!(r.rbp, 0x105);
        assert_eq!(r.rsi, 0x106);
        assert_eq!(r.rdi, 0x107);
        assert_eq!(r.r8, 0x108);
        assert_eq!(r.r15, 0x10f);
        assert_eq!(r.cr2, 0);
        assert_eq!(r.gpr(3), Some(0x103));
        assert_eq!(r.gpr(12), Some(0x10c));
        assert_eq!(r.gpr(4), None);
        assert_eq!(r.gpr(16), None);
        assert!(!r.set_gpr(16, 1));
    }
}
