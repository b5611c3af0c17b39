//! The serial console: the hypervisor's log, and the operator's command line.
//!
//! Every log line starts with [`LOG_PREFIX`] so that, once VMs print on the same wire
//! (each line prefixed with its VM's name), a reader or a script can always tell the
//! hypervisor's own lines apart. Replies to console commands are printed bare, right
//! after the command that asked for them.

pub mod line;
pub mod shell;

use core::fmt::Write;

/// Start of every hypervisor log line: `[lazarus] LEVEL message`.
pub const LOG_PREFIX: &str = "[lazarus]";

/// Formats one log line, without the trailing newline: `[lazarus] INFO  message`.
pub fn format_log_line<W: Write>(
    out: &mut W,
    level: log::Level,
    args: &core::fmt::Arguments,
) -> core::fmt::Result {
    write!(out, "{LOG_PREFIX} {level:<5} {args}")
}

/// The `log` crate's sink: COM1.
#[cfg(target_os = "none")]
pub mod logger {
    use crate::arch::serial;

    struct SerialLogger;

    impl log::Log for SerialLogger {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &log::Record) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let mut line: heapless::String<512> = heapless::String::new();
            if super::format_log_line(&mut line, record.level(), record.args()).is_err() {
                // Longer than the buffer: print what fit and say so.
                line.truncate(line.len().min(500));
                let _ = line.push_str(" [...]");
            }
            let _ = line.push('\n');
            serial::write_line(&line);
        }

        fn flush(&self) {}
    }

    static LOGGER: SerialLogger = SerialLogger;

    /// Routes the `log` crate to COM1 at `level`.
    pub fn init(level: log::LevelFilter) {
        let _ = log::set_logger(&LOGGER);
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_line_format() {
        let mut s = std::string::String::new();
        super::format_log_line(&mut s, log::Level::Info, &format_args!("memory: {} MiB", 5))
            .unwrap();
        assert_eq!(s, "[lazarus] INFO  memory: 5 MiB");
        let mut s = std::string::String::new();
        super::format_log_line(&mut s, log::Level::Error, &format_args!("x")).unwrap();
        assert_eq!(s, "[lazarus] ERROR x");
    }
}
