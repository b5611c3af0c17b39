//! VM-entry event injection: building the VM-entry interruption-information, exception
//! error-code and instruction-length fields (SDM Vol. 3C §25.8.3, "VM-Entry Controls for
//! Event Injection"), following the checks VM entry makes on them (§27.2.1.3, "Checks on
//! VM-Entry Control Fields"), and deciding when the guest can take an event
//! (§25.4.2, Table 25-3, "Format of Interruptibility State").

use core::fmt;

use super::exit::{InterruptionInfo, InterruptionKind};
use super::fields::{VmcsAccess, VmcsField, VmxError};

/// Exception vectors (SDM Vol. 3A, "Interrupt and Exception Handling", Table
/// "Protected-Mode Exceptions and Interrupts").
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
    pub const VE: u8 = 20;
    pub const CP: u8 = 21;
}

/// Bits of the guest interruptibility-state field (SDM Vol. 3C §25.4.2, Table 25-3).
pub mod interruptibility {
    pub const BLOCKING_BY_STI: u32 = 1 << 0;
    pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
    pub const BLOCKING_BY_SMI: u32 = 1 << 2;
    pub const BLOCKING_BY_NMI: u32 = 1 << 3;
}

/// RFLAGS.IF (SDM Vol. 1 §3.4.3).
const RFLAGS_IF: u64 = 1 << 9;

/// Interruption-information bit 11 (deliver error code) and bit 31 (valid).
const DELIVER_ERROR_CODE: u32 = 1 << 11;
const VALID: u32 = 1 << 31;

impl InterruptionInfo {
    /// Encodes the fields in the interruption-information format (SDM Vol. 3C §25.8.3;
    /// layout in [`InterruptionInfo`]). For VM entry, bits 30:12 must be 0, so
    /// `nmi_unblocking` must be false there.
    pub const fn to_raw(self) -> u32 {
        let mut raw = self.vector as u32 | (self.kind.bits() << 8);
        if self.error_code_valid {
            raw |= DELIVER_ERROR_CODE;
        }
        if self.nmi_unblocking {
            raw |= 1 << 12;
        }
        if self.valid {
            raw |= VALID;
        }
        raw
    }
}

/// Whether the exception pushes an error code: #DF, #TS, #NP, #SS, #GP, #PF and #AC, the
/// vectors for which VM entry requires "deliver error code" in protected mode (SDM Vol. 3C
/// §27.2.1.3). #CP (21) also has one but only exists with CET, which Lazarus does not
/// expose to guests.
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(
        vector,
        vector::DF | vector::TS | vector::NP | vector::SS | vector::GP | vector::PF | vector::AC
    )
}

/// The three VM-entry fields for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Injection {
    /// For the VM-entry interruption-information field.
    pub info: u32,
    /// For the VM-entry exception error code, present exactly when `info` bit 11 is set.
    pub error_code: Option<u32>,
    /// For the VM-entry instruction length: software interrupts and exceptions only.
    pub instruction_len: Option<u32>,
}

impl Injection {
    const fn new(kind: InterruptionKind, vector: u8, error_code: Option<u32>) -> Self {
        let info = InterruptionInfo {
            vector,
            kind,
            error_code_valid: error_code.is_some(),
            nmi_unblocking: false,
            valid: true,
        };
        Self {
            info: info.to_raw(),
            error_code,
            instruction_len: None,
        }
    }

    /// The interruption information, decoded.
    pub const fn interruption(&self) -> InterruptionInfo {
        InterruptionInfo::from_raw(self.info)
    }

    /// Adjusts for the guest's CR0: with "unrestricted guest", a guest in real mode
    /// (CR0.PE = 0) takes exceptions without error codes, and VM entry requires "deliver
    /// error code" to be 0 then (SDM Vol. 3C §27.2.1.3).
    pub const fn for_guest_cr0(self, cr0: u64) -> Self {
        const CR0_PE: u64 = 1 << 0;
        if cr0 & CR0_PE != 0 {
            return self;
        }
        Self {
            info: self.info & !DELIVER_ERROR_CODE,
            error_code: None,
            instruction_len: self.instruction_len,
        }
    }

    /// Writes the VM-entry error code and instruction length when present, then the
    /// VM-entry interruption information.
    pub fn write_to(&self, vmcs: &mut impl VmcsAccess) -> Result<(), VmxError> {
        if let Some(code) = self.error_code {
            vmcs.write(VmcsField::EntryExceptionErrorCode, code.into())?;
        }
        if let Some(len) = self.instruction_len {
            vmcs.write(VmcsField::EntryInstructionLength, len.into())?;
        }
        vmcs.write(VmcsField::EntryInterruptionInfo, self.info.into())
    }
}

/// An event that cannot be injected as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventError {
    /// A hardware exception needs a vector of at most 31 (SDM Vol. 3C §27.2.1.3); vector 2
    /// is refused too, since an NMI is injected with the NMI type ([`inject_nmi`]).
    NotAHardwareException(u8),
    /// A software exception is #BP (INT3) or #OF (INTO).
    NotASoftwareException(u8),
    /// Software interrupts and exceptions need an instruction length of 1 to 15 (SDM Vol. 3C
    /// §27.2.1.3; 0 is allowed only when IA32_VMX_MISC bit 30 is set, which Lazarus does
    /// not rely on).
    BadInstructionLength(u32),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAHardwareException(v) => {
                write!(f, "vector {v} cannot be injected as a hardware exception")
            }
            Self::NotASoftwareException(v) => {
                write!(f, "vector {v} cannot be injected as a software exception")
            }
            Self::BadInstructionLength(n) => {
                write!(f, "instruction length {n} is outside 1..=15")
            }
        }
    }
}

const fn check_len(instruction_len: u32) -> Result<(), EventError> {
    if instruction_len >= 1 && instruction_len <= 15 {
        Ok(())
    } else {
        Err(EventError::BadInstructionLength(instruction_len))
    }
}

/// A hardware exception (type 3). The error code follows [`exception_has_error_code`]:
/// for #DF, #TS, #NP, #SS, #GP, #PF and #AC it is delivered (0 if `error_code` is `None`);
/// for every other vector it is dropped. For a real-mode guest, apply
/// [`Injection::for_guest_cr0`].
pub fn inject_hardware_exception(
    vector: u8,
    error_code: Option<u32>,
) -> Result<Injection, EventError> {
    if vector > 31 || vector == vector::NMI {
        return Err(EventError::NotAHardwareException(vector));
    }
    let error_code = if exception_has_error_code(vector) {
        Some(error_code.unwrap_or(0))
    } else {
        None
    };
    Ok(Injection::new(
        InterruptionKind::HardwareException,
        vector,
        error_code,
    ))
}

/// An NMI (type 2, vector 2). With virtual NMIs, "blocking by NMI" must be 0 in the guest
/// interruptibility state (see [`can_inject_nmi`]).
pub const fn inject_nmi() -> Injection {
    Injection::new(InterruptionKind::Nmi, vector::NMI, None)
}

/// An external interrupt (type 0) with `vector`; the guest must be able to take it (see
/// [`can_inject_external_interrupt`]).
pub const fn inject_external_interrupt(vector: u8) -> Injection {
    Injection::new(InterruptionKind::ExternalInterrupt, vector, None)
}

/// A software interrupt (type 4, INT n) whose instruction is `instruction_len` bytes long.
pub fn inject_software_interrupt(
    vector: u8,
    instruction_len: u32,
) -> Result<Injection, EventError> {
    check_len(instruction_len)?;
    let mut i = Injection::new(InterruptionKind::SoftwareInterrupt, vector, None);
    i.instruction_len = Some(instruction_len);
    Ok(i)
}

/// A software exception (type 6): #BP from INT3 or #OF from INTO.
pub fn inject_software_exception(
    vector: u8,
    instruction_len: u32,
) -> Result<Injection, EventError> {
    if vector != vector::BP && vector != vector::OF {
        return Err(EventError::NotASoftwareException(vector));
    }
    check_len(instruction_len)?;
    let mut i = Injection::new(InterruptionKind::SoftwareException, vector, None);
    i.instruction_len = Some(instruction_len);
    Ok(i)
}

/// A privileged software exception (type 5): #DB from INT1 (ICEBP, 1 byte).
pub fn inject_privileged_software_exception(instruction_len: u32) -> Result<Injection, EventError> {
    check_len(instruction_len)?;
    let mut i = Injection::new(
        InterruptionKind::PrivilegedSoftwareException,
        vector::DB,
        None,
    );
    i.instruction_len = Some(instruction_len);
    Ok(i)
}

/// Re-delivers an event the VM exit interrupted, from the IDT-vectoring information and
/// error code and the VM-exit instruction length (SDM Vol. 3C §28.2.4, "Information for VM
/// Exits During Event Delivery"), or reflects an exception from the VM-exit interruption
/// information and error code (§28.2.2): the formats are the same. `None` when the
/// information is not valid (no event was being delivered). Bit 12 is cleared, since VM
/// entry requires bits 30:12 to be 0.
pub const fn reinject(info: u32, error_code: u32, instruction_len: u32) -> Option<Injection> {
    let decoded = InterruptionInfo::from_raw(info);
    if !decoded.valid {
        return None;
    }
    let reentry = InterruptionInfo {
        nmi_unblocking: false,
        ..decoded
    };
    Some(Injection {
        info: reentry.to_raw(),
        error_code: if decoded.error_code_valid {
            Some(error_code)
        } else {
            None
        },
        instruction_len: if decoded.kind.is_software() {
            Some(instruction_len)
        } else {
            None
        },
    })
}

/// Whether an external interrupt can be injected now: RFLAGS.IF set and no blocking by STI
/// or by MOV SS (SDM Vol. 3C §27.3.1.5, "Checks on Guest Non-Register State"). Otherwise
/// open an interrupt window ("interrupt-window exiting").
pub const fn can_inject_external_interrupt(rflags: u64, interruptibility_state: u32) -> bool {
    rflags & RFLAGS_IF != 0
        && interruptibility_state
            & (interruptibility::BLOCKING_BY_STI | interruptibility::BLOCKING_BY_MOV_SS)
            == 0
}

/// Whether an NMI can be injected now: no blocking by NMI, MOV SS or STI (§27.3.1.5; some
/// processors refuse NMI injection under STI blocking, so it is avoided). Otherwise open an
/// NMI window ("NMI-window exiting", which needs "virtual NMIs").
pub const fn can_inject_nmi(interruptibility_state: u32) -> bool {
    interruptibility_state
        & (interruptibility::BLOCKING_BY_STI
            | interruptibility::BLOCKING_BY_MOV_SS
            | interruptibility::BLOCKING_BY_NMI)
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fields::FakeVmcs;
    use std::format;

    #[test]
    fn hardware_exceptions() {
        // #GP(0): valid | deliver error code 0x800 | type 3 (0x300) | vector 13.
        assert_eq!(
            inject_hardware_exception(vector::GP, Some(0)),
            Ok(Injection {
                info: 0x8000_0b0d,
                error_code: Some(0),
                instruction_len: None
            })
        );
        // #PF with error code 0x6 (user write to a non-present page).
        let pf = inject_hardware_exception(vector::PF, Some(6)).unwrap();
        assert_eq!((pf.info, pf.error_code), (0x8000_0b0e, Some(6)));
        // #DF, #TS, #NP, #SS and #AC carry an error code too; 0 when none was given.
        for (v, info) in [
            (vector::DF, 0x8000_0b08),
            (vector::TS, 0x8000_0b0a),
            (vector::NP, 0x8000_0b0b),
            (vector::SS, 0x8000_0b0c),
            (vector::AC, 0x8000_0b11),
        ] {
            assert_eq!(
                inject_hardware_exception(v, None),
                Ok(Injection {
                    info,
                    error_code: Some(0),
                    instruction_len: None
                })
            );
        }
        // #UD has none: a given one is dropped.
        assert_eq!(
            inject_hardware_exception(vector::UD, Some(5)),
            Ok(Injection {
                info: 0x8000_0306,
                error_code: None,
                instruction_len: None
            })
        );
        // #DE, #DB (as a hardware exception), #MC.
        assert_eq!(
            inject_hardware_exception(0, None).unwrap().info,
            0x8000_0300
        );
        assert_eq!(
            inject_hardware_exception(1, None).unwrap().info,
            0x8000_0301
        );
        assert_eq!(
            inject_hardware_exception(18, None).unwrap().info,
            0x8000_0312
        );
    }

    #[test]
    fn only_exception_vectors_are_hardware_exceptions() {
        assert_eq!(
            inject_hardware_exception(2, None),
            Err(EventError::NotAHardwareException(2))
        );
        assert_eq!(
            inject_hardware_exception(32, Some(0)),
            Err(EventError::NotAHardwareException(32))
        );
        assert!(inject_hardware_exception(31, None).is_ok());
        assert_eq!(
            format!("{}", EventError::NotAHardwareException(32)),
            "vector 32 cannot be injected as a hardware exception"
        );
    }

    #[test]
    fn error_code_vectors() {
        let with: std::vec::Vec<u8> = (0..=255).filter(|&v| exception_has_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17]);
    }

    #[test]
    fn real_mode_guest_gets_no_error_code() {
        let gp = inject_hardware_exception(vector::GP, Some(0x18)).unwrap();
        // CR0 = ET only: real mode.
        assert_eq!(
            gp.for_guest_cr0(0x10),
            Injection {
                info: 0x8000_030d,
                error_code: None,
                instruction_len: None
            }
        );
        // Protected mode keeps it.
        assert_eq!(gp.for_guest_cr0(0x8000_0011), gp);
    }

    #[test]
    fn nmi_and_external_interrupts() {
        // Type 2 (0x200), vector 2.
        assert_eq!(inject_nmi().info, 0x8000_0202);
        assert_eq!(inject_nmi().error_code, None);
        // Type 0, vector 0x30 (an 8259 IRQ 0 remapped to 0x30).
        assert_eq!(
            inject_external_interrupt(0x30),
            Injection {
                info: 0x8000_0030,
                error_code: None,
                instruction_len: None
            }
        );
        assert_eq!(inject_external_interrupt(0xff).info, 0x8000_00ff);
    }

    #[test]
    fn software_events_carry_the_instruction_length() {
        // INT 0x80 (CD 80, 2 bytes): type 4 (0x400).
        assert_eq!(
            inject_software_interrupt(0x80, 2),
            Ok(Injection {
                info: 0x8000_0480,
                error_code: None,
                instruction_len: Some(2)
            })
        );
        // INT3 (CC): type 6 (0x600), vector 3. INTO: vector 4.
        assert_eq!(inject_software_exception(3, 1).unwrap().info, 0x8000_0603);
        assert_eq!(inject_software_exception(4, 1).unwrap().info, 0x8000_0604);
        assert_eq!(
            inject_software_exception(6, 1),
            Err(EventError::NotASoftwareException(6))
        );
        // INT1 (F1): type 5 (0x500), vector 1.
        assert_eq!(
            inject_privileged_software_exception(1),
            Ok(Injection {
                info: 0x8000_0501,
                error_code: None,
                instruction_len: Some(1)
            })
        );
        assert_eq!(
            inject_software_interrupt(0x80, 0),
            Err(EventError::BadInstructionLength(0))
        );
        assert_eq!(
            inject_software_interrupt(0x80, 16),
            Err(EventError::BadInstructionLength(16))
        );
        assert!(inject_software_interrupt(0x80, 15).is_ok());
    }

    #[test]
    fn encode_decode_round_trip() {
        for raw in [
            0x8000_0b0e_u32,
            0x8000_1b0e,
            0x8000_0020,
            0x8000_0202,
            0x8000_0480,
            0x8000_0501,
            0x8000_0603,
            0x8000_0700,
            0x0000_0000,
        ] {
            assert_eq!(InterruptionInfo::from_raw(raw).to_raw(), raw, "{raw:#x}");
        }
        for v in [0, 8, 13, 14, 17, 31] {
            let i = inject_hardware_exception(v, Some(1)).unwrap();
            let d = i.interruption();
            assert_eq!(d.vector, v);
            assert_eq!(d.kind, InterruptionKind::HardwareException);
            assert_eq!(d.error_code_valid, i.error_code.is_some());
            assert!(d.valid && !d.nmi_unblocking);
        }
    }

    #[test]
    fn reinjection_from_idt_vectoring() {
        // A #PF whose delivery hit an EPT violation: IDT-vectoring 0x8000_0b0e with the
        // undefined bit 12 set; error code 2.
        assert_eq!(
            reinject(0x8000_1b0e, 2, 3),
            Some(Injection {
                info: 0x8000_0b0e,
                error_code: Some(2),
                instruction_len: None
            })
        );
        // An INT 0x80 interrupted: the instruction length comes along.
        assert_eq!(
            reinject(0x8000_0480, 0xdead, 2),
            Some(Injection {
                info: 0x8000_0480,
                error_code: None,
                instruction_len: Some(2)
            })
        );
        // An external interrupt and an NMI.
        assert_eq!(reinject(0x8000_0030, 0, 0).unwrap().info, 0x8000_0030);
        assert_eq!(reinject(0x8000_0202, 0, 0).unwrap().info, 0x8000_0202);
        // Nothing being delivered.
        assert_eq!(reinject(0x0000_0b0e, 2, 3), None);
        assert_eq!(reinject(0, 0, 0), None);
    }

    #[test]
    fn injection_is_written_to_the_vmcs() {
        let mut vmcs = FakeVmcs::new();
        inject_hardware_exception(vector::PF, Some(4))
            .unwrap()
            .write_to(&mut vmcs)
            .unwrap();
        assert_eq!(vmcs.read(VmcsField::EntryInterruptionInfo), Ok(0x8000_0b0e));
        assert_eq!(vmcs.read(VmcsField::EntryExceptionErrorCode), Ok(4));
        assert!(!vmcs.was_written(VmcsField::EntryInstructionLength));

        let mut vmcs = FakeVmcs::new();
        inject_software_interrupt(0x21, 2)
            .unwrap()
            .write_to(&mut vmcs)
            .unwrap();
        assert_eq!(vmcs.read(VmcsField::EntryInterruptionInfo), Ok(0x8000_0421));
        assert_eq!(vmcs.read(VmcsField::EntryInstructionLength), Ok(2));
        assert!(!vmcs.was_written(VmcsField::EntryExceptionErrorCode));

        let mut vmcs = FakeVmcs::new();
        vmcs.set_unsupported(VmcsField::EntryInterruptionInfo);
        assert_eq!(
            inject_nmi().write_to(&mut vmcs),
            Err(VmxError::VmFailValid(
                crate::vmx::fields::InstructionError::UnsupportedComponent
            ))
        );
    }

    #[test]
    fn event_windows() {
        let if_set = 0x202;
        let if_clear = 0x2;
        assert!(can_inject_external_interrupt(if_set, 0));
        assert!(!can_inject_external_interrupt(if_clear, 0));
        assert!(!can_inject_external_interrupt(
            if_set,
            interruptibility::BLOCKING_BY_STI
        ));
        assert!(!can_inject_external_interrupt(
            if_set,
            interruptibility::BLOCKING_BY_MOV_SS
        ));
        // Blocking by NMI does not hold off external interrupts.
        assert!(can_inject_external_interrupt(
            if_set,
            interruptibility::BLOCKING_BY_NMI
        ));

        assert!(can_inject_nmi(0));
        assert!(can_inject_nmi(interruptibility::BLOCKING_BY_SMI));
        assert!(!can_inject_nmi(interruptibility::BLOCKING_BY_NMI));
        assert!(!can_inject_nmi(interruptibility::BLOCKING_BY_MOV_SS));
        assert!(!can_inject_nmi(interruptibility::BLOCKING_BY_STI));
    }
}
