//! Line editing for a serial terminal: what the operator types is echoed, Backspace
//! and Ctrl-U edit, Enter (CR or LF, or CR LF) completes the line.
//!
//! Scripts drive the same console, so the rules are simple and exact: a CR LF pair is
//! one Enter, control characters other than the editing keys are ignored, and a line
//! longer than [`MAX_LINE`] is refused with an error instead of being cut silently.

/// The longest command line accepted.
pub const MAX_LINE: usize = 200;

/// What one received byte did.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Nothing visible (ignored byte or the LF of a CR LF pair).
    None,
    /// Echo these bytes to the terminal.
    Echo(&'a [u8]),
    /// A complete line (without its terminator).
    Line(&'a str),
    /// The line grew past [`MAX_LINE`]; it is discarded.
    TooLong,
    /// Ctrl-C: the line is discarded.
    Cancel,
}

pub struct LineEditor {
    buf: [u8; MAX_LINE],
    len: usize,
    overflowed: bool,
    last_was_cr: bool,
    done: bool,
    echo: [u8; 1],
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_LINE],
            len: 0,
            overflowed: false,
            last_was_cr: false,
            done: false,
            echo: [0],
        }
    }

    /// The text typed so far on the current line.
    pub fn typed(&self) -> &[u8] {
        if self.done {
            &[]
        } else {
            &self.buf[..self.len.min(MAX_LINE)]
        }
    }

    /// Feeds one received byte.
    pub fn feed(&mut self, byte: u8) -> Event<'_> {
        if self.done {
            self.len = 0;
            self.overflowed = false;
            self.done = false;
        }
        let after_cr = core::mem::replace(&mut self.last_was_cr, byte == b'\r');
        match byte {
            b'\n' if after_cr => Event::None,
            b'\r' | b'\n' => {
                self.done = true;
                if self.overflowed {
                    return Event::TooLong;
                }
                // Only printable ASCII is ever stored, so this cannot fail.
                Event::Line(core::str::from_utf8(&self.buf[..self.len]).unwrap_or(""))
            }
            0x03 => {
                self.done = true;
                Event::Cancel
            }
            0x08 | 0x7f => {
                if self.len > 0 && !self.overflowed {
                    self.len -= 1;
                    Event::Echo(b"\x08 \x08")
                } else {
                    Event::None
                }
            }
            0x15 => {
                // Ctrl-U: erase the whole line on the terminal.
                let erased = self.len;
                self.len = 0;
                self.overflowed = false;
                if erased == 0 {
                    Event::None
                } else {
                    Event::Echo(b"\r\x1b[K")
                }
            }
            0x20..=0x7e => {
                if self.len == MAX_LINE {
                    self.overflowed = true;
                    return Event::None;
                }
                self.buf[self.len] = byte;
                self.len += 1;
                self.echo[0] = byte;
                Event::Echo(&self.echo)
            }
            _ => Event::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(ed: &mut LineEditor, bytes: &[u8]) -> std::vec::Vec<std::string::String> {
        let mut lines = std::vec::Vec::new();
        for &b in bytes {
            match ed.feed(b) {
                Event::Line(l) => lines.push(l.into()),
                Event::TooLong => lines.push("<too long>".into()),
                Event::Cancel => lines.push("<cancel>".into()),
                _ => {}
            }
        }
        lines
    }

    #[test]
    fn lines_with_any_terminator() {
        let mut ed = LineEditor::new();
        assert_eq!(
            feed_all(&mut ed, b"mem\r\ncpu\nhelp\r\r"),
            ["mem", "cpu", "help", ""]
        );
    }

    #[test]
    fn editing_keys() {
        let mut ed = LineEditor::new();
        assert_eq!(feed_all(&mut ed, b"memx\x7f\r"), ["mem"]);
        assert_eq!(feed_all(&mut ed, b"\x08\x08cpu\r"), ["cpu"]);
        assert_eq!(feed_all(&mut ed, b"garbage\x15log debug\r"), ["log debug"]);
        assert_eq!(feed_all(&mut ed, b"half\x03"), ["<cancel>"]);
        assert_eq!(feed_all(&mut ed, b"\x1b[Ahelp\r"), ["[Ahelp"]);
    }

    #[test]
    fn echo_of_printables_only() {
        let mut ed = LineEditor::new();
        assert_eq!(ed.feed(b'a'), Event::Echo(b"a"));
        assert_eq!(ed.feed(0x01), Event::None);
        assert_eq!(ed.feed(0x7f), Event::Echo(b"\x08 \x08"));
        assert_eq!(ed.feed(0x7f), Event::None);
    }

    #[test]
    fn overlong_line_is_refused_whole() {
        let mut ed = LineEditor::new();
        let mut input = std::vec![b'x'; MAX_LINE + 5];
        input.push(b'\r');
        input.extend_from_slice(b"ok\r");
        assert_eq!(feed_all(&mut ed, &input), ["<too long>", "ok"]);
        let mut exact = std::vec![b'y'; MAX_LINE];
        exact.push(b'\r');
        assert_eq!(feed_all(&mut ed, &exact)[0].len(), MAX_LINE);
    }
}
