//! The boot CPU's local APIC, enabled only so that it accepts the NMIs the I/O APIC sends
//! it (the watchdog). Every local interrupt source is masked: the host takes no interrupts
//! (DESIGN 4).
//!
//! Register layout and bits: SDM Vol. 3A §11.4.1 (Table 11-1, "Local APIC Register Address
//! Map"), §11.4.4 (IA32_APIC_BASE, Figure 11-5), §11.5.1 (LVT, Figure 11-8), §11.9
//! (spurious-interrupt vector register, Figure 11-23).
//!
//! xAPIC mode (memory-mapped registers) is what Lazarus turns on. An APIC that firmware
//! already put in x2APIC mode is left there and driven through its MSRs (SDM Vol. 3A
//! §11.12.1, MSR 0x800 + offset / 16): leaving x2APIC mode needs a disable/enable cycle,
//! and on processors where firmware locked legacy xAPIC off, the attempt raises #GP.
//! The xAPIC page is mapped uncacheable before it is touched ([`super::mmio`]).

use super::instructions::{rdmsr, wrmsr};
use super::mmio::{self, MapError};

/// IA32_APIC_BASE (MSR 0x1B, SDM Vol. 3A §11.4.4 and Vol. 4 Table 2-2).
const IA32_APIC_BASE: u32 = 0x1b;
/// Bit 10: x2APIC mode (EXTD); bit 11: APIC global enable (EN); bits 51:12: the base.
/// (Writing EXTD = 1 with EN = 0 is invalid, §11.12.5, so EXTD implies EN here.)
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_ADDRESS: u64 = 0x000f_ffff_ffff_f000;

// Register offsets (Table 11-1).
const ID: u64 = 0x20;
const VERSION: u64 = 0x30;
const TPR: u64 = 0x80;
const SVR: u64 = 0xf0;
const LVT_CMCI: u64 = 0x2f0;
const LVT_TIMER: u64 = 0x320;
const LVT_THERMAL: u64 = 0x330;
const LVT_PERF: u64 = 0x340;
const LVT_LINT0: u64 = 0x350;
const LVT_LINT1: u64 = 0x360;
const LVT_ERROR: u64 = 0x370;
/// LVT entries by the "Max LVT Entry" value (version register bits 23:16) that makes them
/// present: timer, LINT0/1 and error always; performance from 4, thermal from 5, CMCI from
/// 6 (SDM Vol. 3A §11.5.1).
const LVTS: [(u64, u32); 7] = [
    (LVT_TIMER, 0),
    (LVT_LINT0, 0),
    (LVT_LINT1, 0),
    (LVT_ERROR, 0),
    (LVT_PERF, 4),
    (LVT_THERMAL, 5),
    (LVT_CMCI, 6),
];
/// LVT bit 16: masked.
const LVT_MASKED: u32 = 1 << 16;
/// SVR bit 8: APIC software enable; bits 7:0 the spurious vector (0xFF: its low four bits
/// must be ones on older processors, and the host IDT has a stub for every vector).
const SVR_ENABLE: u32 = 1 << 8;
const SPURIOUS_VECTOR: u32 = 0xff;
/// x2APIC register MSRs start here (SDM Vol. 3A §11.12.1, Table 11-6).
const X2APIC_MSR_BASE: u32 = 0x800;

/// Why the local APIC could not be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicError {
    /// CPUID.1:EDX.APIC[bit 9] is clear.
    NoApic,
    /// Its registers are not in the identity map, or not in a 2 MiB page of it.
    Unmappable(MapError),
    /// x2APIC mode with an APIC ID an I/O APIC cannot name (above 255).
    IdTooLarge(u32),
}

impl core::fmt::Display for LapicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoApic => f.write_str("the CPU has no local APIC (CPUID.1:EDX bit 9 is clear)"),
            Self::Unmappable(e) => write!(f, "local APIC registers: {e}"),
            Self::IdTooLarge(id) => write!(
                f,
                "this CPU's x2APIC ID {id} is above 255, beyond an I/O APIC destination"
            ),
        }
    }
}

/// How the registers are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// xAPIC: the register page at this physical address.
    Mmio(u64),
    /// x2APIC: MSRs.
    Msr,
}

/// The enabled local APIC of the running CPU.
#[derive(Clone, Copy, Debug)]
pub struct LocalApic {
    access: Access,
}

/// The IA32_APIC_BASE value to write, if any: an APIC in x2APIC mode stays as it is; a
/// disabled one is enabled in xAPIC mode at the same base.
const fn enabling_write(value: u64) -> Option<u64> {
    if value & APIC_BASE_EXTD != 0 || value & APIC_BASE_ENABLE != 0 {
        None
    } else {
        Some(value | APIC_BASE_ENABLE)
    }
}

/// Enables the running CPU's local APIC (xAPIC mode, unless firmware left it in x2APIC
/// mode), with every LVT entry masked, the task priority at 0 and the spurious vector 0xFF.
///
/// # Errors
/// [`LapicError`] when there is no local APIC, its page cannot be mapped uncacheable, or
/// its x2APIC ID does not fit an I/O APIC destination.
pub fn enable() -> Result<LocalApic, LapicError> {
    let has_apic = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_apic());
    if !has_apic {
        return Err(LapicError::NoApic);
    }
    // SAFETY: IA32_APIC_BASE exists on every CPU with CPUID.1:EDX.APIC set (checked).
    let value = unsafe { rdmsr(IA32_APIC_BASE) };
    let apic = if value & APIC_BASE_EXTD != 0 {
        LocalApic {
            access: Access::Msr,
        }
    } else {
        let base = value & APIC_BASE_ADDRESS;
        mmio::make_uncacheable(base).map_err(LapicError::Unmappable)?;
        if let Some(enabled) = enabling_write(value) {
            // SAFETY: same MSR; the write only sets the global enable bit (same base, xAPIC
            // mode), and the host takes no interrupts that enabling could deliver early.
            unsafe { wrmsr(IA32_APIC_BASE, enabled) };
        }
        LocalApic {
            access: Access::Mmio(base),
        }
    };
    if apic.access == Access::Msr && apic.read(ID) > 0xff {
        return Err(LapicError::IdTooLarge(apic.read(ID)));
    }
    let max_lvt = (apic.read(VERSION) >> 16) & 0xff;
    for (register, needs) in LVTS {
        if max_lvt >= needs {
            apic.write(register, LVT_MASKED);
        }
    }
    apic.write(TPR, 0);
    apic.write(SVR, SVR_ENABLE | SPURIOUS_VECTOR);
    Ok(apic)
}

impl LocalApic {
    /// This CPU's APIC ID: xAPIC ID register bits 31:24 (SDM Vol. 3A §11.4.6), or the
    /// x2APIC ID (checked by `enable` to fit in 8 bits).
    pub fn id(&self) -> u8 {
        match self.access {
            Access::Mmio(_) => (self.read(ID) >> 24) as u8,
            Access::Msr => self.read(ID) as u8,
        }
    }

    /// Whether firmware had it in x2APIC mode.
    pub fn is_x2apic(&self) -> bool {
        self.access == Access::Msr
    }

    fn read(&self, register: u64) -> u32 {
        match self.access {
            // SAFETY: `base` is the enabled xAPIC's register page (from IA32_APIC_BASE,
            // mapped UC by `enable`) and `register` one of the architectural offsets above,
            // whose reads have no side effects.
            Access::Mmio(base) => unsafe { mmio::read32(base + register) },
            // SAFETY: in x2APIC mode every register above has its MSR (Table 11-6); reading
            // ID, version and LVT MSRs has no side effect.
            Access::Msr => unsafe { rdmsr(x2apic_msr(register)) as u32 },
        }
    }

    fn write(&self, register: u64, value: u32) {
        match self.access {
            // SAFETY: as for `read`; the writes mask LVT entries and set TPR and SVR.
            Access::Mmio(base) => unsafe { mmio::write32(base + register, value) },
            // SAFETY: as for `read`; LVT, TPR and SVR MSRs are writable in x2APIC mode.
            Access::Msr => unsafe { wrmsr(x2apic_msr(register), u64::from(value)) },
        }
    }
}

/// The x2APIC MSR of xAPIC register offset `register` (SDM Vol. 3A §11.12.1.2).
const fn x2apic_msr(register: u64) -> u32 {
    X2APIC_MSR_BASE + (register >> 4) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_base_values() {
        // BSP, enabled, at the default base: nothing to write.
        assert_eq!(enabling_write(0xfee0_0900), None);
        // Disabled: enabled at the same base. x2APIC: left alone.
        assert_eq!(enabling_write(0xfee0_0100), Some(0xfee0_0900));
        assert_eq!(enabling_write(0xfee0_0d00), None);
    }

    #[test]
    fn x2apic_msrs() {
        assert_eq!(x2apic_msr(ID), 0x802);
        assert_eq!(x2apic_msr(SVR), 0x80f);
        assert_eq!(x2apic_msr(LVT_CMCI), 0x82f);
        assert_eq!(x2apic_msr(LVT_LINT1), 0x836);
    }
}
