//! Line-at-a-time output through `console_write`.
//!
//! The hypervisor prefixes every line it prints with the VM's name, and the tests match
//! whole lines, so a line must reach the hypervisor in one piece: each `println!` is
//! formatted into a fixed buffer on the stack (there is no heap, and a stack buffer stays
//! correct when an exception handler prints in the middle of another line) and sent with
//! its `'\n'`. A line too long for the buffer is cut, never split.

use core::fmt::{self, Write};

use crate::hypercall;

/// Longest line, `'\n'` included.
pub const LINE_MAX: usize = 512;

struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep the last byte for the newline.
        let room = LINE_MAX - 1 - self.len;
        let take = s.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Formats `args` plus a newline and sends it. What the hypervisor answers is ignored,
/// except that a short count makes it send the rest.
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut line = Line {
        buf: [0; LINE_MAX],
        len: 0,
    };
    // Writing to a Line cannot fail; a Display impl that fails only shortens the line.
    let _ = line.write_fmt(args);
    line.buf[line.len] = b'\n';
    line.len += 1;
    let mut rest = &line.buf[..line.len];
    while !rest.is_empty() {
        let taken = hypercall::console_write(rest);
        match usize::try_from(taken) {
            Ok(n) if n > 0 && n <= rest.len() => rest = &rest[n..],
            _ => break,
        }
    }
}

/// Prints one line on the VM's console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}

/// Bytes from outside (the VM's name, the arguments, the CPU vendor) shown as text:
/// printable ASCII as is, anything else as `?`, so a line stays one line.
pub struct Text<'a>(pub &'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in self.0 {
            let c = if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '?'
            };
            f.write_char(c)?;
        }
        Ok(())
    }
}

/// The bytes of a NUL-padded field up to its first NUL.
pub fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}
