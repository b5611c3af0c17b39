//! Running one operation, checking it against the model, and putting back what it
//! changed.

use super::guard::Fault;
use super::insn::{self, Misc, Raise, Shadow, TablePointer, Window, Xsave};
use super::model::{self, Expect, Features, Msr};
use super::ops::Op;
use super::{unexpected, Baseline, Ctx, Tally, XSAVE_BYTES};

const GP: u8 = 13;
const UD: u8 = 6;
const DB: u8 = 1;
const PF: u8 = 14;
const EFER: u32 = 0xc000_0080;
const TSC_AUX: u32 = 0xc000_0103;
const DR7_RESET: u64 = 0x400;
/// The marker RAX holds before an IN, to see which bits the IN changed.
const IN_MARKER: u64 = 0xa5a5_5a5a_c3c3_3c3c;
/// XSAVE area offsets (SDM Vol. 1 §13.4): MXCSR, the XMM registers, the header.
const MXCSR: usize = 24;
const XMM: core::ops::Range<usize> = 160..416;
const XSTATE_BV: usize = 512;
const XCOMP_BV: usize = 520;

/// Turns on what the fuzzer's XSAVE operations need (CR4.OSFXSR, OSXMMEXCPT, OSXSAVE;
/// XCR0 with x87, SSE, AVX and AVX-512 as supported) and returns the state every
/// operation restores.
pub fn set_baseline(f: &Features) -> Baseline {
    let mut cr4 = insn::read_cr4() | model::CR4_OSFXSR | model::CR4_OSXMMEXCPT;
    if f.xsave() {
        cr4 |= model::CR4_OSXSAVE;
    }
    if insn::write_cr4(cr4).is_some() {
        cr4 = insn::read_cr4();
    }
    let mut xcr0 = 0;
    if f.xsave() {
        let mut want = f.xcr0_supported & 0x7;
        if want & 4 != 0 && f.xcr0_supported & 0xe0 == 0xe0 {
            want |= 0xe0;
        }
        if insn::xsetbv(0, want).is_none() {
            xcr0 = want;
        } else {
            xcr0 = insn::xgetbv(0).1;
        }
    }
    let (gdt, idt) = insn::store_tables();
    Baseline {
        cr0: insn::read_cr0(),
        cr3: insn::read_cr3(),
        cr4,
        xcr0,
        efer: insn::rdmsr(EFER).1,
        gdt,
        idt,
    }
}

fn vector_name(v: u8) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "v15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    NAMES.get(usize::from(v)).copied().unwrap_or("v>21")
}

struct Got(Option<Fault>);

impl core::fmt::Display for Got {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            None => f.write_str("none"),
            Some(fault) => write!(f, "{}({:#x})", vector_name(fault.vector), fault.error),
        }
    }
}

/// Counts the outcome, hashes it and compares it with `want`.
fn outcome(n: u64, op: &Op, tally: &mut Tally, want: Expect, got: Option<Fault>) -> bool {
    let vector = got.map(|f| f.vector);
    match vector {
        Some(GP) => tally.gp += 1,
        Some(UD) => tally.ud += 1,
        Some(_) => tally.other += 1,
        None => {}
    }
    tally.mix(vector.map_or(0xff, u64::from));
    let ok = match want {
        Expect::Ok => vector.is_none(),
        Expect::Gp => vector == Some(GP),
        Expect::Ud => vector == Some(UD),
        Expect::Either => true,
    };
    if !ok {
        let want = match want {
            Expect::Ok => "none",
            Expect::Gp => "#GP",
            Expect::Ud => "#UD",
            Expect::Either => "any",
        };
        unexpected(
            tally,
            n,
            op,
            "fault",
            format_args!("want={} got={}", want, Got(got)),
        );
    }
    ok
}

/// Compares a value read back with what it should be.
fn same(n: u64, op: &Op, tally: &mut Tally, what: &str, got: u64, want: u64) {
    if got != want {
        unexpected(
            tally,
            n,
            op,
            what,
            format_args!("want={:#x} got={:#x}", want, got),
        );
    }
}

pub fn execute(n: u64, op: &Op, ctx: &Ctx, tally: &mut Tally) {
    tally.mix(n);
    let f = &ctx.f;
    match *op {
        Op::Cpuid { leaf, subleaf } => {
            let r = insn::cpuid(leaf, subleaf);
            for v in r {
                tally.mix(u64::from(v));
            }
            // README "VMs": VMX hidden, the hypervisor bit set, leaf 0x40000000.
            if leaf == 1 && (r[2] & (1 << 5) != 0 || r[2] & (1 << 31) == 0) {
                unexpected(
                    tally,
                    n,
                    op,
                    "cpuid",
                    format_args!("leaf 1 ecx={:#x}", r[2]),
                );
            }
            if leaf == 0x4000_0000 && (r[1], r[2], r[3]) != (0x617a_614c, 0x4c73_7572, 0x5648_727a)
            {
                unexpected(
                    tally,
                    n,
                    op,
                    "cpuid",
                    format_args!("signature {:#x} {:#x} {:#x}", r[1], r[2], r[3]),
                );
            }
        }
        Op::Rdmsr { msr } => {
            let kind = model::msr(msr);
            let (fault, value) = insn::rdmsr(msr);
            let want = if kind == Msr::Unknown {
                Expect::Gp
            } else {
                Expect::Ok
            };
            if outcome(n, op, tally, want, fault) && fault.is_none() && kind != Msr::Tsc {
                tally.mix(value);
            }
        }
        Op::Wrmsr { msr, value } => {
            let kind = model::msr(msr);
            let old = match kind {
                Msr::Unknown | Msr::Tsc => None,
                _ => Some(insn::rdmsr(msr))
                    .filter(|r| r.0.is_none())
                    .map(|r| r.1),
            };
            let want = model::wrmsr_expect(f, kind, value, ctx.base.efer);
            let fault = insn::wrmsr(msr, value);
            outcome(n, op, tally, want, fault);
            if fault.is_none() && want != Expect::Gp {
                if model::reads_back(kind) {
                    same(n, op, tally, "readback", insn::rdmsr(msr).1, value);
                }
                if kind == Msr::Efer && want == Expect::Ok {
                    let lma = 1 << 10;
                    same(
                        n,
                        op,
                        tally,
                        "readback",
                        insn::rdmsr(msr).1,
                        (value & !lma) | (ctx.base.efer & lma),
                    );
                }
            }
            if let (None, Some(old)) = (fault, old) {
                if let Some(fault) = insn::wrmsr(msr, old) {
                    unexpected(
                        tally,
                        n,
                        op,
                        "restore",
                        format_args!("wrmsr of {:#x} got={}", old, Got(Some(fault))),
                    );
                }
            }
        }
        Op::In { port, width } => {
            let (fault, rax) = insn::port_in(port, width, IN_MARKER);
            if outcome(n, op, tally, Expect::Ok, fault) {
                let (mask, want) = model::in_expect(port, width, IN_MARKER);
                same(n, op, tally, "in-rax", rax & mask, want);
            }
        }
        Op::Out { port, width, value } => {
            if (0x3f8..=0x3ff).contains(&port) {
                tally.dirty = true;
            }
            let fault = insn::port_out(port, width, value);
            outcome(n, op, tally, Expect::Ok, fault);
        }
        Op::Hypercall { nr, a0, a1, a2 } => hypercall(n, op, ctx, tally, nr, a0, a1, a2),
        Op::Cr0 { value } => {
            let want = model::cr0_expect(value, ctx.base.cr4);
            let fault = insn::write_cr0(value);
            outcome(n, op, tally, want, fault);
            if fault.is_none() && want != Expect::Gp {
                let d = model::CR0_DEFINED;
                same(
                    n,
                    op,
                    tally,
                    "readback",
                    insn::read_cr0() & d,
                    (value | model::CR0_ET) & d,
                );
            }
        }
        Op::Cr3 { value } => {
            let phys = (1u64 << f.phys_bits) - 1;
            let reserved = value & !phys & !(1 << 63) != 0
                || (value & (1 << 63) != 0 && ctx.base.cr4 & model::CR4_PCIDE == 0);
            let want = if reserved { Expect::Gp } else { Expect::Ok };
            let fault = insn::write_cr3(value);
            outcome(n, op, tally, want, fault);
            if fault.is_none() && want == Expect::Ok {
                let m = (phys & !0xfff) | 0x18;
                same(n, op, tally, "readback", insn::read_cr3() & m, value & m);
            }
        }
        Op::Cr4 { value } => {
            let want = model::cr4_expect(f, ctx.base.cr4, value, ctx.base.cr0, ctx.base.cr3);
            let fault = insn::write_cr4(value);
            outcome(n, op, tally, want, fault);
            if fault.is_none() && want != Expect::Gp {
                same(n, op, tally, "readback", insn::read_cr4(), value);
            }
        }
        Op::Cr8 { value, exit } => {
            let want = if value > 15 { Expect::Gp } else { Expect::Ok };
            let fault = insn::write_cr8(value);
            if outcome(n, op, tally, want, fault) && fault.is_none() {
                if exit {
                    insn::yield_now();
                }
                same(n, op, tally, "cr8-kept", insn::read_cr8(), value);
            }
        }
        Op::Dr { reg, value } => {
            let want = if reg >= 6 && value >> 32 != 0 {
                Expect::Gp
            } else {
                Expect::Ok
            };
            let fault = insn::write_dr(reg, value);
            if outcome(n, op, tally, want, fault) && fault.is_none() && reg != 6 {
                // A yield in between (the other VMs run): the debug registers are the
                // guest's across it.
                insn::yield_now();
                let (fault, got) = insn::read_dr(reg);
                if fault.is_none() {
                    same(n, op, tally, "dr-kept", got, value);
                }
            }
        }
        Op::DrRead { reg } => {
            let (fault, _) = insn::read_dr(reg);
            outcome(n, op, tally, Expect::Ok, fault);
        }
        Op::Xsetbv { xcr, value, exit } => {
            let want = if f.xsave() {
                model::xcr0_expect(f, xcr, value)
            } else {
                Expect::Ud
            };
            let fault = insn::xsetbv(xcr, value);
            if outcome(n, op, tally, want, fault) && fault.is_none() {
                same(n, op, tally, "xgetbv", insn::xgetbv(0).1, value);
                if exit {
                    insn::yield_now();
                    same(n, op, tally, "xcr0-kept", insn::xgetbv(0).1, value);
                }
            }
        }
        Op::Xsave {
            kind,
            mask,
            spoil,
            bits,
        } => xsave(n, op, ctx, tally, kind, mask, spoil, bits),
        Op::XstateKeep { pattern } => xstate_keep(n, op, ctx, tally, pattern),
        Op::Table {
            idt,
            limit,
            base,
            window,
        } => {
            let want = if f.canonical(base) {
                Expect::Ok
            } else {
                Expect::Gp
            };
            let good = if idt { ctx.base.idt } else { ctx.base.gdt };
            let bad = TablePointer { limit, base };
            let (fault, seen) = insn::load_table(idt, &bad, &good, window);
            if outcome(n, op, tally, want, fault) && fault.is_none() && window == Window::Store {
                let (sl, sb) = (seen.limit, seen.base);
                same(n, op, tally, "table-readback", sb, base);
                same(
                    n,
                    op,
                    tally,
                    "table-readback",
                    u64::from(sl),
                    u64::from(limit),
                );
            }
        }
        Op::Ltr { selector } => {
            let limit = u64::from(ctx.base.gdt.limit);
            let index = u64::from(selector >> 3);
            // SDM Vol. 2A, LTR: #GP for the null selector, a local one, one beyond the
            // GDT limit, or anything but an available TSS (only the spare one is).
            let ok = selector & 4 == 0
                && index != 0
                && index * 8 + 7 <= limit
                && selector & !3 == crate::gdt::SPARE_TSS;
            let want = if ok { Expect::Ok } else { Expect::Gp };
            let fault = insn::ltr(selector);
            if outcome(n, op, tally, want, fault) && fault.is_none() {
                same(
                    n,
                    op,
                    tally,
                    "str",
                    u64::from(insn::str_()),
                    u64::from(selector),
                );
            }
        }
        Op::Lldt { selector } => {
            let want = if selector & !3 == 0 {
                Expect::Ok
            } else {
                Expect::Gp
            };
            let fault = insn::lldt(selector);
            outcome(n, op, tally, want, fault);
        }
        Op::Vmx { which, a, c } => {
            // SAFETY: the scratch page is the fuzzer's.
            let fault = unsafe { insn::vmx(usize::from(which), a, c, ctx.scratch) };
            // README "VMs": VMX instructions raise #UD (VMFUNC and GETSEC do on their own).
            outcome(n, op, tally, Expect::Ud, fault);
        }
        Op::Misc { which, a, c } => misc(n, op, ctx, tally, which, a, c),
        Op::Raise { what, arg } => raise(n, op, tally, what, arg),
        Op::Step { what } => {
            let (fault, after) = insn::single_step(what);
            // SDM Vol. 3B §18.3.1.4: the single-step trap comes after the instruction
            // that ran with TF set, with DR6.BS; an instruction the hypervisor emulates
            // must look the same.
            let good = matches!(fault, Some(f) if f.vector == DB && f.rip == after && f.dr6 & (1 << 14) != 0);
            tally.mix(u64::from(good));
            if !good {
                unexpected(
                    tally,
                    n,
                    op,
                    "single-step",
                    format_args!(
                        "want=#DB@{:#x} got={}@{:#x} dr6={:#x}",
                        after,
                        Got(fault),
                        fault.map_or(0, |f| f.rip),
                        fault.map_or(0, |f| f.dr6)
                    ),
                );
            }
        }
        Op::Shadow { what, flags } => {
            let interrupts = matches!(what, Shadow::StiNop | Shadow::StiHlt | Shadow::StiCpuid);
            if interrupts {
                open_interrupts();
            }
            let fault = insn::shadow(what, flags);
            if interrupts {
                close_interrupts();
            }
            outcome(n, op, tally, Expect::Ok, fault);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn hypercall(n: u64, op: &Op, ctx: &Ctx, tally: &mut Tally, nr: u64, a0: u64, a1: u64, a2: u64) {
    let scratch = ctx.scratch as *mut u8;
    // SAFETY: the scratch page is the fuzzer's; nothing else refers to it now.
    unsafe { core::ptr::write_bytes(scratch, 0xee, 64) };
    let (fault, rax, kept) = insn::hypercall(nr, a0, a1, a2);
    if !outcome(n, op, tally, Expect::Ok, fault) {
        return;
    }
    if nr != 1 {
        // (vm_identity returns the VM's id, which differs between VMs of one seed.)
        tally.mix(rax);
    }
    let want = model::hypercall_expect(nr, a0, a1, ctx.mem, ctx.name_len, ctx.id);
    same(n, op, tally, "hypercall-result", rax, want);
    if !kept {
        unexpected(
            tally,
            n,
            op,
            "hypercall-registers",
            format_args!("a register other than rax changed"),
        );
    }
    if nr == 0 && a1 > 0 && rax == a1 {
        tally.dirty = true;
    }
    if nr == 1 && a0 == ctx.scratch && rax == ctx.id {
        let len = ctx.name_len as usize;
        // SAFETY: as above; the hypervisor wrote it during the call.
        let got = unsafe { core::slice::from_raw_parts(scratch, len + 1) };
        if got[..len] != ctx.name[..len] || got[len] != 0 {
            unexpected(
                tally,
                n,
                op,
                "vm-identity-name",
                format_args!("the name written is wrong"),
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn xsave(
    n: u64,
    op: &Op,
    ctx: &Ctx,
    tally: &mut Tally,
    kind: Xsave,
    mask: u64,
    spoil: u8,
    bits: u64,
) {
    let f = &ctx.f;
    if !f.xsave() || f.xsave_max as usize > XSAVE_BYTES - 64 {
        return;
    }
    let area = ctx.xsave_a;
    match kind {
        Xsave::Xsave | Xsave::Xsaveopt => {
            let want = if kind == Xsave::Xsaveopt && f.leaf_d_1_eax & 1 == 0 {
                Expect::Ud
            } else {
                Expect::Ok
            };
            // SAFETY: the area is the fuzzer's and holds the largest XSAVE image.
            let fault = unsafe { insn::xsave(kind, area, mask) };
            outcome(n, op, tally, want, fault);
        }
        Xsave::Xrstor => {
            // XSAVE writes only XSTATE_BV of the header: clear what an earlier spoiled
            // image left there (SDM Vol. 1 §13.7).
            // SAFETY: inside the fuzzer's area.
            unsafe { core::ptr::write_bytes((area as *mut u8).add(XSTATE_BV), 0, 64) };
            // SAFETY: as above.
            if let Some(fault) = unsafe { insn::xsave(Xsave::Xsave, area, u64::MAX) } {
                unexpected(
                    tally,
                    n,
                    op,
                    "xsave",
                    format_args!("got={}", Got(Some(fault))),
                );
                return;
            }
            let bytes = area as *mut u8;
            let put = |offset: usize, value: u64| {
                // SAFETY: inside the fuzzer's area.
                unsafe { (bytes.add(offset) as *mut u64).write_unaligned(value) }
            };
            let get = |offset: usize| {
                // SAFETY: inside the fuzzer's area.
                unsafe { (bytes.add(offset) as *const u64).read_unaligned() }
            };
            let rfbm = mask & ctx.base.xcr0;
            let mut at = area;
            // SDM Vol. 1 §13.8 (XRSTOR, standard form): #GP for XSTATE_BV bits not in
            // XCR0, a non-zero XCOMP_BV or bytes 23:16 of the header, reserved MXCSR bits
            // when SSE or AVX is restored, an area not 64-byte aligned.
            let want = match spoil {
                1 => {
                    let b = bits % 64;
                    let b = if ctx.base.xcr0 >> b & 1 == 0 { b } else { 63 };
                    put(XSTATE_BV, get(XSTATE_BV) | 1 << b);
                    Expect::Gp
                }
                2 => {
                    put(XCOMP_BV, (bits | 1) & !(1 << 63));
                    Expect::Gp
                }
                3 => {
                    put(XCOMP_BV + 8, bits | 1);
                    Expect::Gp
                }
                4 => {
                    put(MXCSR, get(MXCSR) | 1 << (16 + bits % 16));
                    if rfbm & 6 != 0 {
                        Expect::Gp
                    } else {
                        Expect::Ok
                    }
                }
                5 => {
                    at += 8;
                    Expect::Gp
                }
                _ => Expect::Ok,
            };
            // SAFETY: as above.
            let fault = unsafe { insn::xsave(Xsave::Xrstor, at, mask) };
            outcome(n, op, tally, want, fault);
        }
    }
}

/// Loads a pattern into the SSE, AVX and AVX-512 registers, lets the other VMs and the
/// hypervisor run (`yield`), and checks that every register came back (README "VMs":
/// guest FPU/SSE/AVX state is switched between VMs with XSAVE).
fn xstate_keep(n: u64, op: &Op, ctx: &Ctx, tally: &mut Tally, pattern: u64) {
    let f = &ctx.f;
    let comps = ctx.base.xcr0 & 0xe6;
    if !f.xsave() || comps & 2 == 0 || f.xsave_max as usize > XSAVE_BYTES {
        return;
    }
    let (a, b) = (ctx.xsave_a as *mut u8, ctx.xsave_b as *mut u8);
    let size = f.xsave_max as usize;
    // SAFETY: both areas are the fuzzer's, `size` bytes fit.
    unsafe {
        core::ptr::write_bytes(a, 0, size);
        core::ptr::write_bytes(b, 0, size);
    }
    let mut x = pattern | 1;
    let mut regions: [(u8, usize, usize); 5] = [
        (1, XMM.start, XMM.len()),
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
    ];
    let mut count = 1;
    for comp in [2u8, 5, 6, 7] {
        if comps >> comp & 1 != 0 {
            let [len, offset, ..] = insn::cpuid(0xd, u32::from(comp));
            regions[count] = (comp, offset as usize, len as usize);
            count += 1;
        }
    }
    for &(_, offset, len) in &regions[..count] {
        for i in (0..len).step_by(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: inside area a (offsets and sizes from CPUID leaf 0xd).
            unsafe { (a.add(offset + i) as *mut u64).write_unaligned(x) };
        }
    }
    // SAFETY: as above.
    unsafe {
        (a as *mut u16).write_unaligned(0x037f);
        (a.add(MXCSR) as *mut u32).write_unaligned(0x1f80);
        (a.add(XSTATE_BV) as *mut u64).write_unaligned(comps);
    }
    // SAFETY: a valid standard-form image in the fuzzer's area.
    if let Some(fault) = unsafe { insn::xsave(Xsave::Xrstor, ctx.xsave_a, comps) } {
        unexpected(
            tally,
            n,
            op,
            "xrstor",
            format_args!("got={}", Got(Some(fault))),
        );
        return;
    }
    insn::yield_now();
    // SAFETY: the fuzzer's area b.
    if let Some(fault) = unsafe { insn::xsave(Xsave::Xsave, ctx.xsave_b, comps) } {
        unexpected(
            tally,
            n,
            op,
            "xsave",
            format_args!("got={}", Got(Some(fault))),
        );
        return;
    }
    for &(comp, offset, len) in &regions[..count] {
        // SAFETY: inside both areas.
        let (want, got) = unsafe {
            (
                core::slice::from_raw_parts(a.add(offset), len),
                core::slice::from_raw_parts(b.add(offset), len),
            )
        };
        if want != got {
            let at = want.iter().zip(got).position(|(w, g)| w != g).unwrap_or(0);
            unexpected(
                tally,
                n,
                op,
                "xstate-lost",
                format_args!("component={} byte={}", comp, at),
            );
        }
    }
}

fn misc(n: u64, op: &Op, ctx: &Ctx, tally: &mut Tally, which: Misc, a: u64, c: u64) {
    let f = &ctx.f;
    let tsc_aux = insn::rdmsr(TSC_AUX).1 & 0xffff_ffff;
    let bit = |reg: u32, b: u32| reg & (1 << b) != 0;
    let ok_if = |supported: bool| if supported { Expect::Ok } else { Expect::Ud };
    let want = match which {
        Misc::Invd | Misc::Wbinvd | Misc::Clflush | Misc::Invlpg | Misc::Swapgs | Misc::Pause => {
            Expect::Ok
        }
        // README "VMs": performance counters are not modelled (CPUID leaf 0xa is zero),
        // so no counter index is valid (SDM Vol. 2B, RDPMC).
        Misc::Rdpmc if f.leaf_a_eax & 0xff == 0 => Expect::Gp,
        Misc::Rdpmc => Expect::Either,
        Misc::Rdrand => ok_if(bit(f.leaf1_ecx, 30)),
        Misc::Rdseed => ok_if(bit(f.leaf7_ebx, 18)),
        Misc::Rdtscp => ok_if(bit(f.ext1_edx, 27)),
        Misc::Rdpid => ok_if(bit(f.leaf7_ecx, 22)),
        // README "VMs": MONITOR is hidden from CPUID; then MONITOR and MWAIT raise #UD
        // (SDM Vol. 2B, MONITOR, MWAIT).
        Misc::Monitor | Misc::Mwait => ok_if(bit(f.leaf1_ecx, 3)),
        // CR4.FSGSBASE is clear at the baseline.
        Misc::Wrfsbase => Expect::Ud,
        Misc::Xgetbv => match c {
            0 => ok_if(f.xsave()),
            1 if f.leaf_d_1_eax & 4 != 0 => Expect::Ok,
            _ => Expect::Gp,
        },
    };
    // SAFETY: the scratch page is the fuzzer's.
    let (fault, rcx, rax) = unsafe { insn::misc(which, a, c, ctx.scratch) };
    if outcome(n, op, tally, want, fault) && fault.is_none() {
        match which {
            Misc::Rdtscp => same(n, op, tally, "rdtscp-aux", rcx & 0xffff_ffff, tsc_aux),
            Misc::Rdpid => same(n, op, tally, "rdpid", rax, tsc_aux),
            Misc::Xgetbv if c == 0 => same(
                n,
                op,
                tally,
                "xgetbv",
                rax & 0xffff_ffff,
                ctx.base.xcr0 & 0xffff_ffff,
            ),
            _ => {}
        }
    }
}

fn raise(n: u64, op: &Op, tally: &mut Tally, what: Raise, arg: u64) {
    let want: Option<u8> = match what {
        Raise::Ud2 | Raise::Into => Some(UD),
        Raise::Int3 => Some(3),
        Raise::Icebp => Some(DB),
        Raise::DivideByZero => Some(0),
        Raise::Read | Raise::Write => Some(if arg >> 47 == 0 { PF } else { GP }),
        Raise::Int => {
            let v = insn::INT_VECTORS[arg as usize % insn::INT_VECTORS.len()];
            (v < 32).then_some(v)
        }
        Raise::DeviceNotAvailable => Some(7),
    };
    // SAFETY: Write addresses are unmapped or non-canonical (ops::generate).
    let fault = unsafe { insn::raise(what, arg) };
    let vector = fault.map(|f| f.vector);
    tally.mix(vector.map_or(0xff, u64::from));
    match vector {
        Some(GP) => tally.gp += 1,
        Some(UD) => tally.ud += 1,
        Some(_) => tally.other += 1,
        None => {}
    }
    if vector != want {
        unexpected(
            tally,
            n,
            op,
            "fault",
            format_args!(
                "want={} got={}",
                want.map_or("none", vector_name),
                Got(fault)
            ),
        );
        return;
    }
    if let (Some(PF), Some(fault)) = (vector, fault) {
        // A not-present page: error code P=0, W as the access (SDM Vol. 3A §5.7).
        let w = if what == Raise::Write { 2 } else { 0 };
        same(n, op, tally, "pf-error-code", fault.error & 3, w);
        same(n, op, tally, "cr2", fault.cr2, arg);
        // CR2 is not in the VMCS: the hypervisor keeps it for the guest across exits.
        insn::yield_now();
        same(n, op, tally, "cr2-kept", insn::read_cr2(), arg);
    }
}

/// Before an STI: the 8259s at vector bases 0x20/0x28 with only IRQ0 unmasked, edge
/// triggered, and the PIT's channel 0 at 1 kHz (mode 2), so that the interrupts that come
/// find a handler and HLT wakes up. Whatever earlier OUTs did to them is undone.
fn open_interrupts() {
    for (port, value) in [
        (0x20u16, 0x11u32),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0xa0, 0x11),
        (0xa1, 0x28),
        (0xa1, 0x02),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
        (0x4d0, 0),
        (0x4d1, 0),
        (0x43, 0x34),
        (0x40, 1193 & 0xff),
        (0x40, 1193 >> 8),
    ] {
        insn::port_out(port, 1, value);
    }
}

/// After the interrupt window: every IRQ masked.
fn close_interrupts() {
    insn::port_out(0x21, 1, 0xff);
    insn::port_out(0xa1, 1, 0xff);
}

/// Puts back the control registers, XCR0, DR7, CR8, TR and LDTR an operation may have
/// left changed, and checks that the GDT and IDT are the guest's.
pub fn restore(n: u64, op: &Op, ctx: &Ctx, tally: &mut Tally) {
    let base = &ctx.base;
    let mut put = |what: &str, current: u64, want: u64, write: fn(u64) -> Option<Fault>| {
        if current != want {
            if let Some(fault) = write(want) {
                unexpected(tally, n, op, what, format_args!("got={}", Got(Some(fault))));
            }
        }
    };
    put("restore-cr0", insn::read_cr0(), base.cr0, insn::write_cr0);
    put("restore-cr4", insn::read_cr4(), base.cr4, insn::write_cr4);
    put("restore-cr3", insn::read_cr3(), base.cr3, insn::write_cr3);
    put("restore-cr8", insn::read_cr8(), 0, insn::write_cr8);
    put("restore-dr7", insn::read_dr(7).1, DR7_RESET, |v| {
        insn::write_dr(7, v)
    });
    if ctx.f.xsave() {
        put("restore-xcr0", insn::xgetbv(0).1, base.xcr0, |v| {
            insn::xsetbv(0, v)
        });
    }
    match op {
        Op::Ltr { .. } => crate::gdt::reset_task_register(),
        Op::Lldt { .. } => {
            insn::lldt(0);
        }
        Op::Table { .. } => {
            let (gdt, idt) = insn::store_tables();
            let same_table = |a: TablePointer, b: TablePointer| {
                let (al, ab, bl, bb) = (a.limit, a.base, b.limit, b.base);
                al == bl && ab == bb
            };
            if !same_table(gdt, base.gdt) || !same_table(idt, base.idt) {
                unexpected(
                    tally,
                    n,
                    op,
                    "restore-table",
                    format_args!("GDTR or IDTR not restored"),
                );
            }
        }
        _ => {}
    }
}
