//! COM1, the physical serial console: every line the hypervisor prints and every key the
//! operator types pass through here.
//!
//! Output is polled (host code runs with interrupts masked) and newlines become CR LF so
//! that raw terminals and log files both read well.

use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550};

/// The legacy I/O base of COM1.
pub const COM1: u16 = 0x3f8;

struct Serial {
    uart: Option<Uart16550<PioBackend>>,
    /// What the interactive prompt line shows (prompt and typed text) while the operator
    /// is typing; empty when no prompt is on screen.
    prompt: [u8; PROMPT_MAX],
    prompt_len: usize,
}

/// Longest prompt line kept for redrawing.
const PROMPT_MAX: usize = 256;

static SERIAL: Mutex<Serial> = Mutex::new(Serial {
    uart: None,
    prompt: [0; PROMPT_MAX],
    prompt_len: 0,
});

/// Programs COM1 (115200 8N1, FIFOs on). Returns false when no UART answers at COM1; the
/// hypervisor still runs then, silently.
pub fn init() -> bool {
    // SAFETY: 0x3f8..0x3ff is the architectural COM1 range on PC-compatible machines, and this
    // module is the only code that touches it (all access goes through `SERIAL`).
    let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
        return false;
    };
    let config = Config {
        baud_rate: BaudRate::Baud115200,
        ..Config::DEFAULT
    };
    let ok = uart.init(config).is_ok();
    let mut serial = SERIAL.lock();
    serial.uart = ok.then_some(uart);
    serial.prompt_len = 0;
    ok
}

/// Writes `s` to COM1 directly (translating `\n` into `\r\n`), without the console
/// lock: for code that may have interrupted the lock's holder (the fault injector's #DB
/// handler). The text may land inside a line being printed.
pub fn write_unlocked(s: &str) {
    for &b in s.as_bytes() {
        if b == b'\n' {
            put_unlocked(b'\r');
        }
        put_unlocked(b);
    }
}

fn put_unlocked(byte: u8) {
    use super::instructions::{inb, outb};
    // SAFETY: COM1's line status (0x3fd, bit 5: transmitter holding register empty) and
    // data (0x3f8) ports: polling (bounded, in case no UART answers) then writing one byte
    // is all it takes on a 16550; a byte interleaved with another writer's is harmless.
    unsafe {
        for _ in 0..100_000 {
            if inb(0x3fd) & 0x20 != 0 {
                break;
            }
        }
        outb(0x3f8, byte);
    }
}

/// Sends `bytes`, waiting for room in the UART as needed, and pets the watchdog's
/// heartbeat whenever the UART takes some: at 115200 baud a reply of a few KiB takes a
/// good part of a second, and bytes leaving are progress (a UART that never takes any is
/// not, and stays a hang).
fn send(uart: &mut Uart16550<PioBackend>, bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = uart.send_bytes(rest);
        if n == 0 {
            core::hint::spin_loop();
            continue;
        }
        rest = &rest[n..];
        crate::watchdog::pet();
    }
}

/// Writes text, translating `\n` into `\r\n`.
pub fn write_str(s: &str) {
    let mut serial = SERIAL.lock();
    if let Some(uart) = serial.uart.as_mut() {
        for chunk in s.split_inclusive('\n') {
            match chunk.strip_suffix('\n') {
                Some(line) => {
                    send(uart, line.as_bytes());
                    send(uart, b"\r\n");
                }
                None => send(uart, chunk.as_bytes()),
            }
        }
    }
}

/// Writes one complete line (`line` ends with '\n') that is not a reply to the operator:
/// a log line or a VM's output. If a prompt is on screen, the line replaces it
/// (carriage return, erase to end of line: ECMA-48 EL) and the prompt with whatever was
/// typed so far is drawn again below, so output and typing never mix on one line.
pub fn write_line(line: &str) {
    let visible = SERIAL.lock().prompt_len;
    if visible == 0 {
        write_str(line);
        return;
    }
    write_bytes(b"\r\x1b[K");
    write_str(line);
    let mut serial = SERIAL.lock();
    let Serial {
        uart,
        prompt,
        prompt_len,
    } = &mut *serial;
    if let Some(uart) = uart.as_mut() {
        send(uart, &prompt[..*prompt_len]);
    }
}

/// Records what the prompt line now shows (prompt and typed text); empty: no prompt.
pub fn set_prompt_line(parts: &[&[u8]]) {
    let mut serial = SERIAL.lock();
    let mut len = 0;
    for part in parts {
        let n = part.len().min(PROMPT_MAX - len);
        serial.prompt[len..len + n].copy_from_slice(&part[..n]);
        len += n;
    }
    serial.prompt_len = len;
}

/// Writes raw bytes (no newline translation): echo of typed characters.
pub fn write_bytes(bytes: &[u8]) {
    if let Some(uart) = SERIAL.lock().uart.as_mut() {
        send(uart, bytes);
    }
}

/// Waits until every byte written so far has left the UART (LSR bit 6, "transmitter
/// empty", 16550 datasheet): called before powering off, so the last line is not cut.
pub fn flush() {
    if SERIAL.lock().uart.is_none() {
        return;
    }
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register of COM1 has no side effect on output.
        if unsafe { super::instructions::inb(COM1 + 5) } & 0x40 != 0 {
            return;
        }
        super::instructions::pause();
    }
}

/// Returns a received byte if one is waiting.
pub fn try_read_byte() -> Option<u8> {
    SERIAL.lock().uart.as_mut()?.try_receive_byte().ok()
}

/// Forgets the lock: the failure path must print even if the failing code held it.
///
/// # Safety
/// Only for the failure path, after every other CPU has stopped.
pub unsafe fn force_unlock() {
    // SAFETY: the caller guarantees no other holder is still running.
    unsafe { SERIAL.force_unlock() };
}

/// A `core::fmt::Write` sink for `write!` to the console.
pub struct Writer;

impl core::fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_str(s);
        Ok(())
    }
}
