//! What the guest should see: the fuzzer's model of the machine a Lazarus VM promises
//! (README "VMs" and "Hypercalls") and of the architecture (Intel SDM), against which
//! every operation's outcome is checked. A mismatch is a `fuzz unexpected` line.
//!
//! The model is deliberately narrow: it asserts only what is certain (documented by the
//! README or required by the SDM whatever the processor), and says [`Expect::Either`]
//! where real processors differ.

use super::insn::cpuid;

/// What an instruction should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Complete without an exception.
    Ok,
    /// Raise #GP (vector 13).
    Gp,
    /// Raise #UD (vector 6).
    Ud,
    /// Either; nothing is asserted.
    Either,
}

/// The CPUID bits the model depends on, as this VM sees them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    pub leaf1_ecx: u32,
    pub leaf1_edx: u32,
    pub leaf7_ebx: u32,
    pub leaf7_ecx: u32,
    pub leaf7_edx: u32,
    pub leaf7_1_eax: u32,
    /// CPUID.(EAX=0DH,ECX=0):EDX:EAX, the XCR0 bits supported.
    pub xcr0_supported: u64,
    /// CPUID.(EAX=0DH,ECX=0):ECX, the largest XSAVE area.
    pub xsave_max: u32,
    pub leaf_d_1_eax: u32,
    pub ext1_edx: u32,
    pub leaf_a_eax: u32,
    /// Linear-address width (CPUID.80000008H:EAX[15:8]).
    pub linear_bits: u32,
    /// Physical-address width (CPUID.80000008H:EAX[7:0]).
    pub phys_bits: u32,
}

impl Features {
    pub fn probe() -> Self {
        let max = cpuid(0, 0)[0];
        let max_ext = cpuid(0x8000_0000, 0)[0];
        let leaf = |l: u32, s: u32| if l <= max { cpuid(l, s) } else { [0; 4] };
        let ext = |l: u32| if l <= max_ext { cpuid(l, 0) } else { [0; 4] };
        let [_, _, ecx1, edx1] = leaf(1, 0);
        let [_, ebx7, ecx7, edx7] = leaf(7, 0);
        let [eax71, ..] = leaf(7, 1);
        let [eaxd, _, ecxd, edxd] = leaf(0xd, 0);
        let [eaxd1, ..] = leaf(0xd, 1);
        let [eaxa, ..] = leaf(0xa, 0);
        let [_, _, _, edxe1] = ext(0x8000_0001);
        let [eaxe8, ..] = ext(0x8000_0008);
        let osxsave_possible = ecx1 & (1 << 26) != 0;
        Features {
            leaf1_ecx: ecx1,
            leaf1_edx: edx1,
            leaf7_ebx: ebx7,
            leaf7_ecx: ecx7,
            leaf7_edx: edx7,
            leaf7_1_eax: eax71,
            xcr0_supported: if osxsave_possible {
                u64::from(edxd) << 32 | u64::from(eaxd)
            } else {
                0
            },
            xsave_max: ecxd,
            leaf_d_1_eax: eaxd1,
            ext1_edx: edxe1,
            leaf_a_eax: eaxa,
            linear_bits: if eaxe8 == 0 { 48 } else { (eaxe8 >> 8) & 0xff },
            phys_bits: if eaxe8 == 0 { 36 } else { eaxe8 & 0xff },
        }
    }

    pub fn xsave(&self) -> bool {
        self.leaf1_ecx & (1 << 26) != 0 && self.xcr0_supported & 3 == 3
    }

    /// CR4 bits this processor supports (SDM Vol. 3A §2.5 and the CPUID feature flag of
    /// each bit): setting any other bit raises #GP (SDM Vol. 2B, MOV to CR4).
    pub fn cr4_supported(&self) -> u64 {
        let bit = |reg: u32, n: u32, cr4: u32| if reg & (1 << n) != 0 { 1u64 << cr4 } else { 0 };
        // PCE needs no feature; each of the others is reserved where CPUID lacks its
        // feature (a hypervisor may hide MCE, for one).
        (1 << 8)
            | bit(self.leaf1_edx, 1, 0) // VME
            | bit(self.leaf1_edx, 1, 1) // PVI
            | bit(self.leaf1_edx, 4, 2) // TSD: TSC
            | bit(self.leaf1_edx, 2, 3) // DE
            | bit(self.leaf1_edx, 3, 4) // PSE
            | bit(self.leaf1_edx, 6, 5) // PAE
            | bit(self.leaf1_edx, 7, 6) // MCE
            | bit(self.leaf1_edx, 13, 7) // PGE
            | bit(self.leaf1_edx, 24, 9) // OSFXSR: FXSR
            | bit(self.leaf1_edx, 25, 10) // OSXMMEXCPT: SSE
            | bit(self.leaf7_ecx, 2, 11) // UMIP
            | bit(self.leaf7_ecx, 16, 12) // LA57
            | bit(self.leaf1_ecx, 5, 13) // VMXE
            | bit(self.leaf1_ecx, 6, 14) // SMXE
            | bit(self.leaf7_ebx, 0, 16) // FSGSBASE
            | bit(self.leaf1_ecx, 17, 17) // PCIDE
            | bit(self.leaf1_ecx, 26, 18) // OSXSAVE
            | bit(self.leaf7_ecx, 23, 19) // KL
            | bit(self.leaf7_ebx, 7, 20) // SMEP
            | bit(self.leaf7_ebx, 20, 21) // SMAP
            | bit(self.leaf7_ecx, 3, 22) // PKE
            | bit(self.leaf7_ecx, 7, 23) // CET (shadow stacks)
            | bit(self.leaf7_edx, 20, 23) // CET (IBT)
            | bit(self.leaf7_ecx, 31, 24) // PKS
            | bit(self.leaf7_edx, 5, 25) // UINTR
            | bit(self.leaf7_1_eax, 26, 28) // LAM_SUP
            | bit(self.leaf7_1_eax, 17, 32) // FRED
    }

    pub fn canonical(&self, v: u64) -> bool {
        let shift = 64 - self.linear_bits.clamp(48, 57);
        (((v << shift) as i64) >> shift) as u64 == v
    }
}

pub const CR0_PE: u64 = 1 << 0;
pub const CR0_ET: u64 = 1 << 4;
pub const CR0_WP: u64 = 1 << 16;
pub const CR0_NW: u64 = 1 << 29;
pub const CR0_CD: u64 = 1 << 30;
pub const CR0_PG: u64 = 1 << 31;
/// PE MP EM TS ET NE WP AM NW CD PG: the CR0 bits with a meaning (SDM Vol. 3A §2.5).
pub const CR0_DEFINED: u64 = 0xe005_003f;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_LA57: u64 = 1 << 12;
pub const CR4_PCIDE: u64 = 1 << 17;
pub const CR4_OSXSAVE: u64 = 1 << 18;
pub const CR4_CET: u64 = 1 << 23;
pub const CR4_OSFXSR: u64 = 1 << 9;
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;

/// MOV to CR0 from `old` to `new` in 64-bit mode (SDM Vol. 2B, MOV—Move to/from Control
/// Registers, 64-bit mode exceptions): #GP for bits 63:32, PG without PE, NW without CD,
/// clearing PG, clearing WP while CR4.CET is set. Other reserved bits (low 32) are
/// ignored or not depending on the processor: `Either`.
pub fn cr0_expect(new: u64, cr4: u64) -> Expect {
    // In 64-bit mode PG cannot be cleared, and PE cannot be clear with PG set: both stay.
    let pg = new & CR0_PG != 0;
    if new >> 32 != 0
        || !pg
        || new & CR0_PE == 0
        || (new & CR0_NW != 0 && new & CR0_CD == 0)
        || (cr4 & CR4_CET != 0 && new & CR0_WP == 0)
    {
        Expect::Gp
    } else if new & !CR0_DEFINED & 0xffff_ffff != 0 {
        Expect::Either
    } else {
        Expect::Ok
    }
}

/// MOV to CR4 from `old` to `new` in 64-bit mode: #GP for an unsupported (reserved) bit,
/// clearing PAE, changing LA57, setting PCIDE with CR3[11:0] not 0, setting CET with
/// CR0.WP clear (SDM Vol. 2B, MOV; Vol. 3A §4.1.1, §4.10.1).
pub fn cr4_expect(f: &Features, old: u64, new: u64, cr0: u64, cr3: u64) -> Expect {
    if new & !f.cr4_supported() != 0
        || new & CR4_PAE == 0
        || (new ^ old) & CR4_LA57 != 0
        || (new & CR4_PCIDE != 0 && old & CR4_PCIDE == 0 && cr3 & 0xfff != 0)
        || (new & CR4_CET != 0 && cr0 & CR0_WP == 0)
    {
        Expect::Gp
    } else {
        Expect::Ok
    }
}

/// XSETBV (SDM Vol. 1 §13.3, Vol. 2D XSETBV): ECX must be 0; bit 0 set; only supported
/// bits; AVX needs SSE; the three AVX-512 bits together, and only with AVX; BNDREGS and
/// BNDCSR together; the two AMX bits together.
pub fn xcr0_expect(f: &Features, xcr: u32, v: u64) -> Expect {
    let avx512 = v & 0xe0;
    if xcr != 0
        || v & 1 == 0
        || v & !f.xcr0_supported != 0
        || (v & 4 != 0 && v & 2 == 0)
        || (avx512 != 0 && (avx512 != 0xe0 || v & 4 == 0))
        || (v >> 3 & 1) != (v >> 4 & 1)
        || (v >> 17 & 1) != (v >> 18 & 1)
    {
        Expect::Gp
    } else {
        Expect::Ok
    }
}

/// How Lazarus treats an MSR (README "VMs"), plus what the SDM says about its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msr {
    /// Not emulated: RDMSR and WRMSR raise #GP.
    Unknown,
    /// IA32_TSC: readable; writes are ignored.
    Tsc,
    /// Read as a constant: IA32_PLATFORM_ID, IA32_BIOS_SIGN_ID, IA32_MISC_ENABLE.
    Constant,
    /// IA32_FEATURE_CONTROL, read as locked: a write raises #GP (SDM Vol. 3C §24.7).
    FeatureControl,
    Efer,
    Pat,
    /// An address MSR: a non-canonical value raises #GP (SDM Vol. 2B, WRMSR): FS_BASE,
    /// GS_BASE, KERNEL_GS_BASE, LSTAR, SYSENTER_ESP, SYSENTER_EIP.
    Address,
    /// IA32_CSTAR: stored; whether non-canonical values fault differs between processors.
    Cstar,
    /// IA32_STAR: any value.
    Star,
    /// IA32_FMASK: bits 63:32 reserved; processors differ on whether they fault.
    Fmask,
    /// IA32_TSC_AUX: bits 63:32 reserved (#GP).
    TscAux,
    /// IA32_DEBUGCTL: bits 63:16 reserved (#GP).
    Debugctl,
    /// IA32_SYSENTER_CS.
    SysenterCs,
}

pub fn msr(index: u32) -> Msr {
    match index {
        0x10 => Msr::Tsc,
        0x17 | 0x8b | 0x1a0 => Msr::Constant,
        0x3a => Msr::FeatureControl,
        0xc000_0080 => Msr::Efer,
        0x277 => Msr::Pat,
        0x175 | 0x176 | 0xc000_0082 | 0xc000_0100 | 0xc000_0101 | 0xc000_0102 => Msr::Address,
        0xc000_0083 => Msr::Cstar,
        0xc000_0081 => Msr::Star,
        0xc000_0084 => Msr::Fmask,
        0xc000_0103 => Msr::TscAux,
        0x1d9 => Msr::Debugctl,
        0x174 => Msr::SysenterCs,
        _ => Msr::Unknown,
    }
}

/// MSRs worth aiming at: every emulated one, and neighbours of Lazarus's and the
/// processor's (x2APIC, VMX capabilities, MTRRs, machine check, performance monitoring,
/// speculation control, XSS, CET, PKRS, other hypervisors' ranges, AMD's).
pub const INTERESTING_MSRS: [u32; 64] = [
    0x10,
    0x17,
    0x3a,
    0x8b,
    0x1a0,
    0x1d9,
    0x174,
    0x175,
    0x176,
    0x277,
    0xc000_0080,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0100,
    0xc000_0101,
    0xc000_0102,
    0xc000_0103,
    0xc000_0104,
    0xc000_007f,
    0x0,
    0x1,
    0x6,
    0x1b,
    0x3b,
    0x48,
    0x49,
    0x10a,
    0xfe,
    0x179,
    0x17a,
    0x17b,
    0x186,
    0xc1,
    0x309,
    0x38f,
    0x390,
    0x200,
    0x20f,
    0x2ff,
    0x480,
    0x481,
    0x482,
    0x48b,
    0x48d,
    0x491,
    0x492,
    0x800,
    0x802,
    0x808,
    0x80b,
    0x830,
    0x838,
    0x8ff,
    0x6e0,
    0x6e1,
    0x6a0,
    0x6a2,
    0xda0,
    0x4000_0000,
    0x4b56_4d00,
    0xc001_0015,
    0xffff_ffff,
];

/// WRMSR of `value` (a valid EFER needs the current one, `efer`).
pub fn wrmsr_expect(f: &Features, kind: Msr, value: u64, efer: u64) -> Expect {
    const EFER_SCE: u64 = 1 << 0;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    const EFER_NXE: u64 = 1 << 11;
    match kind {
        Msr::Unknown | Msr::FeatureControl => Expect::Gp,
        Msr::Tsc | Msr::Star => Expect::Ok,
        Msr::Constant | Msr::Cstar | Msr::Fmask | Msr::SysenterCs => Expect::Either,
        Msr::Efer => {
            let mut allowed = EFER_LME | EFER_LMA;
            if f.ext1_edx & (1 << 11) != 0 {
                allowed |= EFER_SCE;
            }
            if f.ext1_edx & (1 << 20) != 0 {
                allowed |= EFER_NXE;
            }
            // Reserved bits, or LME changed while paging is on (SDM Vol. 3A §10.8.5;
            // LMA itself is not writable and is ignored).
            if value & !allowed != 0 || (value ^ efer) & EFER_LME != 0 {
                Expect::Gp
            } else if (value ^ efer) & EFER_LMA != 0 {
                Expect::Either
            } else {
                Expect::Ok
            }
        }
        // Each byte a memory type: 0 UC, 1 WC, 4 WT, 5 WP, 6 WB, 7 UC- (SDM Vol. 3A §13.12.2).
        Msr::Pat => {
            if value
                .to_le_bytes()
                .iter()
                .all(|t| matches!(t, 0 | 1 | 4..=7))
            {
                Expect::Ok
            } else {
                Expect::Gp
            }
        }
        Msr::Address => {
            if f.canonical(value) {
                Expect::Ok
            } else {
                Expect::Gp
            }
        }
        Msr::TscAux => {
            if value >> 32 == 0 {
                Expect::Ok
            } else {
                Expect::Gp
            }
        }
        Msr::Debugctl => {
            if value >> 16 != 0 {
                Expect::Gp
            } else {
                Expect::Either
            }
        }
    }
}

/// Whether a WRMSR that completed must read back exactly what was written.
pub fn reads_back(kind: Msr) -> bool {
    matches!(
        kind,
        Msr::Pat | Msr::Address | Msr::Cstar | Msr::Star | Msr::TscAux
    )
}

/// I/O ports the device models claim (README "VMs"): the first port of an access
/// decides.
pub fn claimed(port: u16) -> bool {
    matches!(port,
        0x20..=0x21 | 0xa0..=0xa1 | 0x4d0..=0x4d1 | 0x40..=0x43 | 0x61 | 0x70..=0x71
        | 0x60 | 0x64 | 0x92 | 0xcf8..=0xcff | 0x3f8..=0x3ff)
}

/// Every claimed port, for aiming.
pub const DEVICE_PORTS: [u16; 26] = [
    0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x60, 0x64,
    0x92, 0xcf8, 0xcf9, 0xcfa, 0xcfb, 0xcfc, 0xcfd, 0xcfe, 0xcff, 0x3f8, 0x3fd,
];

/// The RAX an IN must leave (README "VMs"; SDM Vol. 2A, IN): an 8- or 16-bit IN
/// replaces only AL or AX, a 32-bit IN zero-extends into RAX; an unclaimed port reads
/// all ones. For a claimed port only the untouched bits are known: returns (mask of the
/// bits that are known, their value).
pub fn in_expect(port: u16, width: u8, before: u64) -> (u64, u64) {
    let low = match width {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    let high = if width == 4 { 0 } else { before & !low };
    if claimed(port) {
        (!low, high)
    } else {
        (u64::MAX, high | low)
    }
}

/// The result a hypercall must return (README "Hypercalls", `abi`) in a VM booted
/// without `triggers=on` and `inject=on`, from ring 0.
pub fn hypercall_expect(nr: u64, a0: u64, a1: u64, mem: u64, name_len: u64, id: u64) -> u64 {
    const UNKNOWN: u64 = -1i64 as u64;
    const FAULT: u64 = -2i64 as u64;
    const INVALID: u64 = -3i64 as u64;
    let inside = |gpa: u64, len: u64| gpa.checked_add(len).is_some_and(|end| end <= mem);
    match nr {
        0 => {
            if a1 > abi::CONSOLE_WRITE_MAX {
                INVALID
            } else if inside(a0, a1) {
                a1
            } else {
                FAULT
            }
        }
        1 => {
            if a0 == 0 {
                id
            } else if a1 < name_len + 1 {
                INVALID
            } else if inside(a0, name_len + 1) {
                id
            } else {
                FAULT
            }
        }
        2 => 0,
        _ => UNKNOWN,
    }
}
