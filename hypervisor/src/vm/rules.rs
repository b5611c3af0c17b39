//! The processor's rules for values a guest writes through an exit: which values of
//! CR0, CR4, EFER, XCR0 and the emulated MSRs hardware accepts, and which it refuses
//! with #GP.
//!
//! Why a module of its own: every value a guest writes through WRMSR, MOV to CR or
//! XSETBV ends up in the VMCS guest-state area or in a host register. A value hardware
//! would refuse then makes the next VM entry fail (SDM Vol. 3C §27.3.1), or the
//! hypervisor's own WRMSR/XSETBV fault: a hypervisor failure that the guest chose. So
//! each handler checks the value where it enters, with these functions, and raises #GP
//! in the guest exactly where the CPU would. A failed VM entry then means the
//! hypervisor's own state went wrong, never that a guest asked for it.
//!
//! What the guest may enable is also what its CPUID offers (a CR4 or XCR0 bit of a
//! feature CPUID hides is reserved for it), derived once at boot into [`GuestLimits`].

/// What a guest may set, derived at boot from the host and from the CPUID the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLimits {
    /// XCR0 bits a guest may set: the user state components the host supports, that
    /// Lazarus exposes, and that fit the one-page XSAVE area.
    pub xcr0: u64,
    /// XSAVE area size for all of [`GuestLimits::xcr0`] (CPUID.(EAX=0Dh,ECX=0):ECX).
    pub xsave_size: u32,
    /// CR4 bits a guest may set (the rest raise #GP).
    pub cr4: u64,
    /// The processor's linear-address width (CPUID.80000008h:EAX[15:8]): an address is
    /// canonical when bits 63:width-1 are all equal (SDM Vol. 1 §3.3.7.1).
    pub linear_bits: u8,
    /// The CR0 and CR4 guest/host masks every VMCS gets (see [`GuestLimits::derive`]).
    pub cr0_mask: u64,
    pub cr4_mask: u64,
}

/// XCR0 state components (SDM Vol. 1 §13.1, Table 13-1).
pub mod xcr0 {
    pub const X87: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    pub const AVX: u64 = 1 << 2;
    pub const BNDREGS: u64 = 1 << 3;
    pub const BNDCSR: u64 = 1 << 4;
    /// Opmask, ZMM_Hi256 and Hi16_ZMM: the AVX-512 state.
    pub const AVX512: u64 = 0b111 << 5;
    pub const PKRU: u64 = 1 << 9;
    pub const TILECFG: u64 = 1 << 17;
    pub const TILEDATA: u64 = 1 << 18;
    /// The components Lazarus lets a guest enable (when the host has them): x87, SSE,
    /// AVX, AVX-512 and PKRU. MPX needs IA32_BNDCFGS and AMX needs more than the one
    /// XSAVE page per vCPU; CPUID hides both.
    pub const EXPOSED: u64 = X87 | SSE | AVX | AVX512 | PKRU;
}

/// The size of the XSAVE area that holds each vCPU's FPU state (one arena page).
pub const XSAVE_AREA: u32 = 4096;
/// The legacy region and the XSAVE header: the area size with only x87 and SSE.
pub const XSAVE_LEGACY_AND_HEADER: u32 = 576;

impl GuestLimits {
    /// The limits on a host whose CPUID answers `cpuid(leaf, subleaf)`, with VMX fixed
    /// CR bits `cr_fixed` (IA32_VMX_CR0_FIXED0/1, CR4_FIXED0/1), for a guest whose CPUID
    /// leaf `l` (subleaf 0) is `guest_leaf(l, limits so far)`.
    pub fn derive(
        host_xcr0: u64,
        cpuid: impl Fn(u32, u32) -> [u32; 4],
        cr_fixed: [u64; 4],
        guest_leaf: impl Fn(u32, &GuestLimits) -> [u32; 4],
    ) -> GuestLimits {
        let (xcr0, xsave_size) = guest_xcr0(host_xcr0, &cpuid);
        let width = (cpuid(0x8000_0008, 0)[0] >> 8) as u8;
        let [f0, f1, g0, g1] = cr_fixed;
        let mut limits = GuestLimits {
            xcr0,
            xsave_size,
            cr4: 0,
            linear_bits: if width == 0 { 48 } else { width },
            cr0_mask: 0,
            cr4_mask: 0,
        };
        limits.cr4 = allowed_cr4(guest_leaf(1, &limits), guest_leaf(7, &limits)) & g1 & !g0;
        // The guest/host masks (SDM Vol. 3C §25.6.6): a bit the mask owns reads from the
        // shadow and a guest write that changes it exits. Owned: the bits VMX operation
        // fixes (the guest sees its own value), CD and NW (so that NW without CD can be
        // refused), and every CR4 bit a guest may not set (so that setting one exits and
        // is refused). PE and PG are free under unrestricted guest.
        limits.cr0_mask = (cr_fixed_bits(f0, f1) & !(cr0::PE | cr0::PG)) | cr0::CD | cr0::NW;
        limits.cr4_mask = cr_fixed_bits(g0, g1) | !limits.cr4;
        limits
    }
}

/// CR bits whose value VMX operation fixes (FIXED0 set: must be 1; FIXED1 clear: must be
/// 0; SDM Vol. 3D §A.7, §A.8), within bits 31:0.
pub fn cr_fixed_bits(fixed0: u64, fixed1: u64) -> u64 {
    (fixed0 | !fixed1) & 0xffff_ffff
}

/// The exposed components the host supports whose state fits the XSAVE page (the
/// AVX-512 components together or not at all: SDM Vol. 1 §13.3), and the area size
/// they need. Component i's offset and size are CPUID.(EAX=0Dh,ECX=i):EBX and EAX.
fn guest_xcr0(host_xcr0: u64, cpuid: &impl Fn(u32, u32) -> [u32; 4]) -> (u64, u32) {
    let mut mask = host_xcr0 & xcr0::EXPOSED;
    if mask & xcr0::AVX512 != xcr0::AVX512 || mask & xcr0::AVX == 0 {
        mask &= !xcr0::AVX512;
    }
    if mask & xcr0::SSE == 0 {
        mask &= !xcr0::AVX;
    }
    let end = |i: u32| {
        let [size, offset, _, _] = cpuid(0xd, i);
        offset.saturating_add(size)
    };
    for i in 2..63 {
        if mask & (1 << i) != 0 && end(i) > XSAVE_AREA {
            mask &= !(1 << i);
            if xcr0::AVX512 & (1 << i) != 0 {
                mask &= !xcr0::AVX512;
            }
        }
    }
    let size = (2..63)
        .filter(|i| mask & (1 << i) != 0)
        .map(end)
        .fold(XSAVE_LEGACY_AND_HEADER, u32::max);
    (mask | xcr0::X87, size)
}

/// CR4 bits (SDM Vol. 3A §2.5, Figure 2-7), each with the CPUID feature that makes it
/// settable: (bit, leaf, register index in [EAX, EBX, ECX, EDX], feature bit).
const CR4_FEATURES: [(u32, u32, usize, u32); 17] = [
    (0, 1, 3, 1),   // VME: CPUID.1:EDX.VME
    (1, 1, 3, 1),   // PVI: VME
    (2, 1, 3, 4),   // TSD: TSC
    (3, 1, 3, 2),   // DE
    (4, 1, 3, 3),   // PSE
    (5, 1, 3, 6),   // PAE
    (6, 1, 3, 7),   // MCE
    (7, 1, 3, 13),  // PGE
    (9, 1, 3, 24),  // OSFXSR: FXSR
    (10, 1, 3, 25), // OSXMMEXCPT: SSE
    (11, 7, 2, 2),  // UMIP: CPUID.7.0:ECX.UMIP
    (12, 7, 2, 16), // LA57
    (16, 7, 1, 0),  // FSGSBASE: CPUID.7.0:EBX
    (17, 1, 2, 17), // PCIDE: CPUID.1:ECX.PCID
    (18, 1, 2, 26), // OSXSAVE: XSAVE
    (20, 7, 1, 7),  // SMEP
    (21, 7, 1, 20), // SMAP
];
/// CR4.PKE (22): CPUID.7.0:ECX.PKU (bit 3).
const CR4_PKE: u64 = 1 << 22;
/// CR4.PCE (8) needs no feature. VMXE (13), SMXE (14), CET (23), PKS (24) and the rest
/// follow features Lazarus hides, so they are reserved for a guest.
const CR4_ALWAYS: u64 = 1 << 8;

/// The CR4 bits a guest whose CPUID leaves 1 and 7 are these may set.
pub fn allowed_cr4(leaf1: [u32; 4], leaf7: [u32; 4]) -> u64 {
    let has = |leaf: u32, reg: usize, bit: u32| {
        let regs = if leaf == 1 { leaf1 } else { leaf7 };
        regs[reg] & (1 << bit) != 0
    };
    let mut allowed = CR4_ALWAYS;
    for (cr4_bit, leaf, reg, bit) in CR4_FEATURES {
        if has(leaf, reg, bit) {
            allowed |= 1 << cr4_bit;
        }
    }
    if has(7, 2, 3) {
        allowed |= CR4_PKE;
    }
    allowed
}

/// Whether `addr` is canonical for a `linear_bits`-bit linear address space.
pub fn canonical(addr: u64, linear_bits: u8) -> bool {
    let shift = 64 - u32::from(linear_bits.clamp(32, 64));
    ((addr << shift) as i64 >> shift) as u64 == addr
}

/// Whether every byte of an IA32_PAT value is a memory type the PAT accepts: 0 (UC),
/// 1 (WC), 4 (WT), 5 (WP), 6 (WB) or 7 (UC-); 2, 3 and 8-255 are reserved and a WRMSR
/// with them raises #GP (SDM Vol. 3A §13.12.2, Table 13-10).
pub fn valid_pat(value: u64) -> bool {
    value
        .to_le_bytes()
        .iter()
        .all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

/// XSETBV's checks on a new XCR0 (SDM Vol. 1 §13.3; Vol. 2C XSETBV): x87 always on,
/// AVX only with SSE, the AVX-512 components all together and with AVX, the MPX ones
/// together, the AMX ones together, and only bits in `allowed`.
pub fn valid_xcr0(value: u64, allowed: u64) -> bool {
    use xcr0::*;
    let both = |bits: u64| value & bits == 0 || value & bits == bits;
    value & X87 != 0
        && (value & AVX == 0 || value & SSE != 0)
        && (value & AVX512 == 0 || value & (AVX512 | AVX | SSE) == AVX512 | AVX | SSE)
        && both(BNDREGS | BNDCSR)
        && both(TILECFG | TILEDATA)
        && value & !allowed == 0
}

/// CR0 bits (SDM Vol. 3A §2.5).
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
    /// PE, MP, EM, TS, ET, NE, WP, AM, NW, CD, PG: the bits that exist. Setting another
    /// bit of 31:0 is ignored (it reads back as 0); any of 63:32 raises #GP.
    pub const DEFINED: u64 = 0x3f | WP | AM | NW | CD | PG;
}

/// CR4 bits the checks below name.
pub mod cr4 {
    pub const PAE: u64 = 1 << 5;
    pub const LA57: u64 = 1 << 12;
    pub const PCIDE: u64 = 1 << 17;
}

/// EFER bits (SDM Vol. 3A §2.2.1): SCE, LME, LMA, NXE.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// The guest's mode at the exit, as the checks need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// 64-bit mode: IA-32e mode active and CS.L set (SDM Vol. 3A §3.4.5, §2.2.1).
    pub cs_long: bool,
}

impl Mode {
    fn long_mode_active(&self) -> bool {
        self.efer & efer::LMA != 0
    }
}

/// The CR0 a MOV to CR0 (or CLTS, LMSW) leaves: the reserved bits of 31:0 dropped and ET
/// set (it is fixed to 1 on every processor since the 486), or None where the
/// instruction raises #GP (SDM Vol. 2B "MOV—Move to/from Control Registers"):
/// bits 63:32 set, NW without CD, PG without PE, PG cleared in 64-bit mode or while
/// CR4.PCIDE is set, and IA-32e mode activated (PG set with EFER.LME) without CR4.PAE.
pub fn cr0_write(new: u64, mode: &Mode) -> Option<u64> {
    let value = (new & cr0::DEFINED) | cr0::ET;
    let refused = new >> 32 != 0
        || (value & cr0::NW != 0 && value & cr0::CD == 0)
        || (value & cr0::PG != 0 && value & cr0::PE == 0);
    let paging_was = mode.cr0 & cr0::PG != 0;
    let paging_now = value & cr0::PG != 0;
    let clears_paging = paging_was && !paging_now;
    let activates_long_mode = !paging_was && paging_now && mode.efer & efer::LME != 0;
    let refused = refused
        || (clears_paging && (mode.cs_long || mode.cr4 & cr4::PCIDE != 0))
        || (activates_long_mode && mode.cr4 & cr4::PAE == 0);
    (!refused).then_some(value)
}

/// Whether a MOV to CR4 of `new` completes (else #GP; SDM Vol. 2B "MOV", Vol. 3A §2.5):
/// only bits in `allowed`, PAE kept in IA-32e mode, LA57 unchanged in IA-32e mode,
/// PCIDE set only in IA-32e mode with CR3[11:0] = 0.
pub fn cr4_write(new: u64, mode: &Mode, allowed: u64) -> bool {
    let long = mode.long_mode_active();
    let sets_pcide = mode.cr4 & cr4::PCIDE == 0 && new & cr4::PCIDE != 0;
    new & !allowed == 0
        && !(long && new & cr4::PAE == 0)
        && !(long && (new ^ mode.cr4) & cr4::LA57 != 0)
        && !(sets_pcide && (!long || mode.cr3 & 0xfff != 0))
}

/// Whether a WRMSR of IA32_EFER with `new` completes (SDM Vol. 3A §2.2.1, Vol. 4 Table
/// 2-2): only SCE, LME, LMA and NXE, and LME unchanged while paging is on. LMA is the
/// CPU's to change: the caller keeps the current one.
pub fn efer_write(new: u64, mode: &Mode) -> bool {
    let writable = efer::SCE | efer::LME | efer::LMA | efer::NXE;
    let paging = mode.cr0 & cr0::PG != 0;
    new & !writable == 0 && !(paging && (new ^ mode.efer) & efer::LME != 0)
}

#[cfg(test)]
mod tests;
