//! The boot CPU's local APIC, in xAPIC mode, enabled only so that it accepts the NMIs the
//! I/O APIC sends it (the watchdog). Every local interrupt source is masked: the host
//! takes no interrupts (DESIGN 4).
//!
//! Register layout and bits: SDM Vol. 3A §11.4.1 (Table 11-1, "Local APIC Register Address
//! Map"), §11.4.4 (IA32_APIC_BASE, Figure 11-5), §11.5.1 (LVT, Figure 11-8), §11.9
//! (spurious-interrupt vector register, Figure 11-23).
//!
//! The APIC page is mapped uncacheable before it is touched ([`super::mmio`]).

use super::instructions::{rdmsr, wrmsr};
use super::mmio::{self, MapError};

/// IA32_APIC_BASE (MSR 0x1B, SDM Vol. 3A §11.4.4 and Vol. 4 Table 2-2).
const IA32_APIC_BASE: u32 = 0x1b;
/// Bit 10: x2APIC mode (EXTD); bit 11: APIC global enable (EN); bits 51:12: the base.
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

/// Why the local APIC could not be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicError {
    /// CPUID.1:EDX.APIC[bit 9] is clear.
    NoApic,
    /// Its registers are not in the identity map, or not in a 2 MiB page of it.
    Unmappable(MapError),
}

impl core::fmt::Display for LapicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoApic => f.write_str("the CPU has no local APIC (CPUID.1:EDX bit 9 is clear)"),
            Self::Unmappable(e) => write!(f, "local APIC registers: {e}"),
        }
    }
}

/// The enabled local APIC of the running CPU.
#[derive(Clone, Copy, Debug)]
pub struct LocalApic {
    base: u64,
}

/// The IA32_APIC_BASE value that selects xAPIC mode with the APIC enabled at the same base.
const fn xapic_enabled(value: u64) -> u64 {
    (value & !APIC_BASE_EXTD) | APIC_BASE_ENABLE
}

/// Enables the running CPU's local APIC in xAPIC mode, with every LVT entry masked, the
/// task priority at 0 and the spurious vector 0xFF.
///
/// A local APIC found in x2APIC mode is first disabled, then enabled in xAPIC mode: the
/// only legal way back (SDM Vol. 3A §11.12.5, "x2APIC State Transitions").
///
/// # Errors
/// [`LapicError`] when there is no local APIC or its page cannot be mapped uncacheable.
pub fn enable() -> Result<LocalApic, LapicError> {
    let has_apic = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_apic());
    if !has_apic {
        return Err(LapicError::NoApic);
    }
    // SAFETY: IA32_APIC_BASE exists on every CPU with CPUID.1:EDX.APIC set (checked).
    let value = unsafe { rdmsr(IA32_APIC_BASE) };
    let base = value & APIC_BASE_ADDRESS;
    mmio::make_uncacheable(base).map_err(LapicError::Unmappable)?;
    // SAFETY: same MSR; the writes only change the APIC's mode and enable bit (the base is
    // kept), and the host takes no interrupts that the change could lose.
    unsafe {
        if value & APIC_BASE_EXTD != 0 {
            wrmsr(IA32_APIC_BASE, value & !(APIC_BASE_EXTD | APIC_BASE_ENABLE));
        }
        if value & (APIC_BASE_EXTD | APIC_BASE_ENABLE) != APIC_BASE_ENABLE {
            wrmsr(IA32_APIC_BASE, xapic_enabled(value));
        }
    }
    let apic = LocalApic { base };
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
    /// This CPU's APIC ID (xAPIC ID register bits 31:24, SDM Vol. 3A §11.4.6).
    pub fn id(&self) -> u8 {
        (self.read(ID) >> 24) as u8
    }

    /// Physical address of the register page.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn read(&self, register: u64) -> u32 {
        // SAFETY: `base` is the enabled xAPIC's register page (from IA32_APIC_BASE, mapped
        // UC by `enable`) and `register` one of the architectural offsets above, whose
        // reads have no side effects.
        unsafe { mmio::read32(self.base + register) }
    }

    fn write(&self, register: u64, value: u32) {
        // SAFETY: as for `read`; the writes mask LVT entries and set TPR and SVR.
        unsafe { mmio::write32(self.base + register, value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_base_values() {
        // BSP, enabled, at the default base: unchanged.
        assert_eq!(xapic_enabled(0xfee0_0900), 0xfee0_0900);
        // Disabled: enabled. x2APIC: back to xAPIC.
        assert_eq!(xapic_enabled(0xfee0_0100), 0xfee0_0900);
        assert_eq!(xapic_enabled(0xfee0_0d00), 0xfee0_0900);
    }
}
