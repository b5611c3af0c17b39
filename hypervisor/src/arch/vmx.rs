//! The VMX instructions (SDM Vol. 3C chapter 31, "VMX instruction reference"), each
//! wrapped so that its two failure forms come back as a [`VmxError`] instead of being
//! silently ignored: CF=1 is VMfailInvalid (no current VMCS), ZF=1 is VMfailValid with
//! the reason in the VM-instruction error field (SDM Vol. 3C §31.2).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::vmx::controls::{
    IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1, IA32_VMX_CR4_FIXED0, IA32_VMX_CR4_FIXED1,
};
use crate::vmx::fields::{InstructionError, VmcsAccess, VmcsField, VmxError};

/// CR4.VMXE (SDM Vol. 3A §2.5).
pub const CR4_VMXE: u64 = 1 << 13;

fn check(cf: u8, zf: u8) -> Result<(), VmxError> {
    if cf != 0 {
        Err(VmxError::VmFailInvalid)
    } else if zf != 0 {
        Err(VmxError::VmFailValid(current_error()))
    } else {
        Ok(())
    }
}

/// The VM-instruction error of the current VMCS (meaningful after VMfailValid).
fn current_error() -> InstructionError {
    let (value, cf, zf): (u64, u8, u8);
    // SAFETY: VMREAD of a read-only field of the current VMCS; it changes nothing.
    unsafe {
        asm!("vmread {v}, {f}", "setc {cf}", "setz {zf}",
             f = in(reg) VmcsField::InstructionError as u64, v = out(reg) value,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    if cf != 0 || zf != 0 {
        return InstructionError::Other(0);
    }
    InstructionError::from_number(value as u32)
}

/// Reads CR0/CR4 and the VMX fixed-bit MSRs, forces the bits VMX operation requires,
/// sets CR4.VMXE and executes VMXON with `region` (a zeroed, 4 KiB-aligned page whose
/// first word will hold the VMCS revision identifier).
///
/// # Safety
/// `region` must be a page reserved for this CPU's VMXON region, identity-mapped, and
/// not used for anything else while VMX is on. The caller has checked (cpu::probe) that
/// VMX is available and enabled in IA32_FEATURE_CONTROL.
pub unsafe fn vmxon(region: u64, revision: u32) -> Result<(), VmxError> {
    use super::instructions::rdmsr;
    // SAFETY: the caller guarantees the page; writing the revision id is what VMXON requires.
    unsafe { core::ptr::write_volatile(region as *mut u32, revision) };
    let (mut cr0, mut cr4): (u64, u64);
    // SAFETY: reads of control registers.
    unsafe {
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    // SAFETY: the fixed-bit MSRs exist whenever VMX does (SDM Vol. 3D A.7/A.8).
    let (f0, f1, g0, g1) = unsafe {
        (
            rdmsr(IA32_VMX_CR0_FIXED0),
            rdmsr(IA32_VMX_CR0_FIXED1),
            rdmsr(IA32_VMX_CR4_FIXED0),
            rdmsr(IA32_VMX_CR4_FIXED1),
        )
    };
    cr0 = (cr0 | f0) & f1;
    cr4 = ((cr4 | CR4_VMXE) | g0) & g1;
    let (cf, zf): (u8, u8);
    // SAFETY: CR0/CR4 only gain the bits VMX operation requires (NE, VMXE) on a CPU
    // already in long mode with paging; VMXON takes the physical address of the region.
    unsafe {
        asm!("mov cr0, {}", in(reg) cr0, options(nostack));
        asm!("mov cr4, {}", in(reg) cr4, options(nostack));
        asm!("vmxon [{r}]", "setc {cf}", "setz {zf}", r = in(reg) &region,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)?;
    VMX_ON.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether this CPU is in VMX operation (a VMXON succeeded and no VMXOFF followed): the
/// failure path must not execute VMPTRST, VMCLEAR or VMXOFF otherwise (they would #UD).
static VMX_ON: AtomicBool = AtomicBool::new(false);

pub fn is_on() -> bool {
    VMX_ON.load(Ordering::SeqCst)
}

/// The failure path's VMX shutdown (DESIGN 6, step 3): VMCLEAR the current VMCS (named by
/// VMPTRST) and every page in `vmcs_pages`, so their contents reach memory for the next
/// instance, then VMXOFF. Errors are ignored: a page that is not a VMCS makes VMCLEAR
/// fail harmlessly, and nothing better can be done in a dying instance.
pub fn teardown(vmcs_pages: impl Iterator<Item = u64>) {
    if !is_on() {
        return;
    }
    let current = vmptrst();
    // SAFETY: VMCLEAR of the current VMCS and of the VMs' VMCS pages (arena pages that
    // hold nothing else); VMXOFF afterwards, and the dying instance uses no VMCS again.
    unsafe {
        if current != u64::MAX {
            let _ = vmclear(current);
        }
        for page in vmcs_pages {
            let _ = vmclear(page);
        }
        let _ = vmxoff();
    }
}

/// VMXOFF.
///
/// # Safety
/// No VMCS may be in use afterwards until the next VMXON.
pub unsafe fn vmxoff() -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: leaves VMX operation; the caller guarantees nothing depends on it.
    unsafe {
        asm!("vmxoff", "setc {cf}", "setz {zf}", cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack))
    };
    VMX_ON.store(false, Ordering::SeqCst);
    check(cf, zf)
}

/// VMCLEAR: flushes the VMCS at `vmcs` to memory and marks it clear (next entry: VMLAUNCH).
///
/// # Safety
/// `vmcs` must be a VMCS page owned by the caller.
pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: the operand is the physical address of a VMCS the caller owns.
    unsafe {
        asm!("vmclear [{r}]", "setc {cf}", "setz {zf}", r = in(reg) &vmcs,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// VMPTRLD: makes the VMCS at `vmcs` current on this CPU.
///
/// # Safety
/// `vmcs` must be a VMCS page (revision id written) owned by the caller.
pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: as for vmclear.
    unsafe {
        asm!("vmptrld [{r}]", "setc {cf}", "setz {zf}", r = in(reg) &vmcs,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// VMPTRST: the physical address of the current VMCS (u64::MAX when none).
pub fn vmptrst() -> u64 {
    let mut current: u64 = 0;
    // SAFETY: stores the current-VMCS pointer into a local; no other effect.
    unsafe { asm!("vmptrst [{r}]", r = in(reg) &mut current, options(nostack)) };
    current
}

/// INVEPT single-context (type 1) for `eptp` (SDM Vol. 3C §31.3, "INVEPT").
///
/// # Safety
/// Only invalidates cached translations; the caller must be in VMX operation.
pub unsafe fn invept_single(eptp: u64) -> Result<(), VmxError> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: INVEPT reads the 128-bit descriptor; it only drops cached translations.
    unsafe {
        asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 1u64, d = in(reg) &descriptor,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// INVEPT all-context (type 2): drops every EPT-derived translation on this CPU. A
/// recovery boot does this once after it has verified or rebuilt the VMs' EPTs.
///
/// # Safety
/// Only invalidates cached translations; the caller must be in VMX operation.
pub unsafe fn invept_all() -> Result<(), VmxError> {
    let descriptor: [u64; 2] = [0, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: as for invept_single.
    unsafe {
        asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 2u64, d = in(reg) &descriptor,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// INVVPID all-context (type 2): drops the linear translations of every VPID.
///
/// # Safety
/// As for [`invept_all`].
pub unsafe fn invvpid_all() -> Result<(), VmxError> {
    let descriptor: [u64; 2] = [0, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: as for invept_single.
    unsafe {
        asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 2u64, d = in(reg) &descriptor,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// INVVPID single-context (type 1) for `vpid`.
///
/// # Safety
/// As for [`invept_single`].
pub unsafe fn invvpid_single(vpid: u16) -> Result<(), VmxError> {
    let descriptor: [u64; 2] = [u64::from(vpid), 0];
    let (cf, zf): (u8, u8);
    // SAFETY: as for invept_single.
    unsafe {
        asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) 1u64, d = in(reg) &descriptor,
             cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// The current VMCS, read and written with VMREAD/VMWRITE.
pub struct CurrentVmcs;

impl VmcsAccess for CurrentVmcs {
    fn read(&self, field: VmcsField) -> Result<u64, VmxError> {
        let (value, cf, zf): (u64, u8, u8);
        // SAFETY: VMREAD has no side effects; failure is reported through the flags.
        unsafe {
            asm!("vmread {v}, {f}", "setc {cf}", "setz {zf}", f = in(reg) field as u64, v = out(reg) value,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        check(cf, zf).map(|()| value)
    }

    fn write(&mut self, field: VmcsField, value: u64) -> Result<(), VmxError> {
        let (cf, zf): (u8, u8);
        // SAFETY: VMWRITE changes only the current VMCS, which this CPU owns while it runs
        // the vCPU; a bad field or value is reported through the flags.
        unsafe {
            asm!("vmwrite {f}, {v}", "setc {cf}", "setz {zf}", f = in(reg) field as u64, v = in(reg) value,
                 cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
        }
        check(cf, zf)
    }
}

/// XSETBV: sets XCR0.
///
/// # Safety
/// `value` must be a valid XCR0 for this CPU (bit 0 set, only supported bits).
pub unsafe fn xsetbv(value: u64) {
    // SAFETY: the caller checked the value against CPUID leaf 0Dh.
    unsafe {
        asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack))
    };
}

/// XGETBV: reads XCR0.
pub fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads XCR0; requires CR4.OSXSAVE, which boot sets before any caller runs.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// XSAVE of the components in `mask` to `area` (64-byte aligned, large enough).
///
/// # Safety
/// `area` must be an identity-mapped page owned by the caller.
pub unsafe fn xsave(area: u64, mask: u64) {
    // SAFETY: writes only the caller's area.
    unsafe {
        asm!("xsave64 [{a}]", a = in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack))
    };
}

/// XRSTOR of the components in `mask` from `area`.
///
/// # Safety
/// `area` must hold a valid XSAVE image (or be zeroed: the header then requests init state).
pub unsafe fn xrstor(area: u64, mask: u64) {
    // SAFETY: reads only the caller's area; a malformed header would #GP (a hypervisor failure).
    unsafe {
        asm!("xrstor64 [{a}]", a = in(reg) area, in("eax") mask as u32, in("edx") (mask >> 32) as u32, options(nostack))
    };
}

/// Sets CR4.OSXSAVE (bit 18) when CPUID.1:ECX.XSAVE[bit 26] is set, so the host may
/// execute XSAVE/XRSTOR/XSETBV to switch guest FPU state between VMs.
pub fn enable_xsave() {
    if raw_cpuid::cpuid!(1).ecx & (1 << 26) == 0 {
        return;
    }
    // SAFETY: CPUID reports XSAVE; the bit only enables those instructions. The host never
    // uses FPU/SSE state itself (soft-float target).
    unsafe {
        let cr4: u64;
        asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
        asm!("mov cr4, {}", in(reg) cr4 | (1 << 18), options(nostack));
    }
}
