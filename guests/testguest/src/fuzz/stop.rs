//! The stopping mix: one last operation that the README documents as stopping the VM
//! (or resetting it), after the safe ones, so that a test can check the documented line
//! and that nothing else happened (no hypervisor failure, the other VMs going on).
//!
//! | KIND | README line that must follow |
//! |---|---|
//! | `string-io` | `vm NAME: stopped: string I/O to port 0x80 is not supported (rip 0xR)` |
//! | `ept-read`, `ept-write`, `cr3-outside` | `vm NAME: stopped: EPT violation: ...` |
//! | `triple-fault` | `vm NAME: stopped: triple fault (rip 0xR)` |
//! | `halt` | `vm NAME: halted` |
//! | `power-off` | `vm NAME: powered off` |
//! | `reset-i8042`, `reset-output-port`, `reset-92`, `reset-cf9` | `vm NAME: rebooting (reset requested by the guest)` (or, with `on_reboot=stop`, `vm NAME: stopped: the guest reset itself (on_reboot=stop)`) |

use core::arch::asm;

use super::rng::Rng;
use super::Ctx;
use crate::console::Text;
use crate::cpu::{self, DescriptorTablePointer};
use crate::{hypercall, paging, println};

pub const KINDS: [&str; 12] = [
    "string-io",
    "ept-read",
    "ept-write",
    "cr3-outside",
    "triple-fault",
    "halt",
    "power-off",
    "reset-i8042",
    "reset-output-port",
    "reset-92",
    "reset-cf9",
    "reset-92-word",
];

/// Separates the stopping operation's random stream from the safe operations'.
const SALT: u64 = 0x5707;

/// Runs stopping operation number `op` (`forced`, or drawn from the seed). Does not
/// return: if the VM survives, prints `fuzz unexpected op=N what=stop-survived kind=KIND`
/// and powers off.
pub fn run(seed: u64, op: u64, forced: Option<&[u8]>, ctx: &Ctx) -> ! {
    let mut r = Rng::for_op(seed, op, SALT);
    let kind = match forced {
        Some(k) => k,
        None => r.pick(&KINDS).as_bytes(),
    };
    println!("fuzz stop op={} what={}", op, Text(kind));
    // Outside RAM, inside the physical-address width of every VT-x processor (36 bits).
    let outside = (ctx.mem + 0x20_0000 + (r.below(0x1000) << 21)) & 0xf_ffff_fff8;
    // SAFETY (each arm): the point is for the VM to stop; nothing after it matters, and
    // none of these touches memory the guest relies on before stopping.
    unsafe {
        match kind {
            b"string-io" => {
                asm!("outsb", in("dx") 0x80u16, in("rsi") ctx.scratch, options(nostack))
            }
            b"ept-read" | b"ept-write" => {
                if let Some(at) = paging::map_window(outside) {
                    if kind == b"ept-read" {
                        cpu::load_u64(at);
                    } else {
                        cpu::store_u64(at, 0);
                    }
                }
            }
            b"cr3-outside" => asm!("mov cr3, {}", in(reg) outside & !0xfff, options(nostack)),
            b"triple-fault" => {
                let empty = DescriptorTablePointer { limit: 0, base: 0 };
                cpu::load_idt(&empty);
                cpu::int3();
            }
            b"halt" => cpu::halt_forever(),
            b"power-off" => hypercall::power_off(),
            b"reset-i8042" => cpu::outb(0x64, 0xfe),
            b"reset-output-port" => {
                cpu::outb(0x64, 0xd1);
                cpu::outb(0x60, 0x00);
            }
            b"reset-92" => cpu::outb(0x92, 0x01),
            b"reset-cf9" => cpu::outb(0xcf9, 0x06),
            // A 16-bit OUT at 0x92 reaches the reset bit of port 0x92 too.
            b"reset-92-word" => {
                asm!("out dx, ax", in("dx") 0x92u16, in("ax") 0x0001u16, options(nostack))
            }
            _ => {}
        }
    }
    println!(
        "fuzz unexpected op={} what=stop-survived kind={}",
        op,
        Text(kind)
    );
    hypercall::power_off()
}
