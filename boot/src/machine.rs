//! The hypervisor console on the real machine: the shell's [`Machine`] over what cold
//! boot found, and the polling loop that feeds it keystrokes from COM1.

use core::fmt::{self, Write};

use hypervisor::acpi::PowerOff;
use hypervisor::arch::{instructions, serial};
use hypervisor::cmdline::Options;
use hypervisor::console::line::{Event, LineEditor, MAX_LINE};
use hypervisor::console::shell::{self, Machine};
use hypervisor::cpu::CpuReport;
use hypervisor::memory::{format_size, Layout};
use hypervisor::triggers::Trigger;
use hypervisor::vm::machine::Vms;

/// The console prompt. Scripts wait for it before typing.
pub const PROMPT: &str = "lazarus> ";

pub struct BootMachine {
    pub layout: Layout,
    pub cpu: CpuReport,
    pub options: Options,
    pub power_off: Option<PowerOff>,
    /// None when VMX could not be started (the console still works).
    pub vms: Option<Vms>,
    /// The VM whose serial port the console is attached to (`vm console`), if any.
    pub attached: Option<usize>,
}

/// Leaves `vm console` (Ctrl-]).
pub const DETACH_KEY: u8 = 0x1d;

impl Machine for BootMachine {
    fn mem(&self, out: &mut dyn Write) -> fmt::Result {
        for (class, range) in self.layout.classes() {
            writeln!(
                out,
                "{:<9} {} {}",
                class.as_str(),
                range,
                format_size(range.len())
            )?;
        }
        let heap = crate::HEAP.lock();
        writeln!(
            out,
            "heap-used {} of {}",
            format_size(heap.used() as u64),
            format_size(heap.size() as u64)
        )?;
        if let Some(vms) = &self.vms {
            let pages = &vms.root().pages;
            writeln!(
                out,
                "arena-pages {} free of {}",
                pages.pages() - pages.used(),
                pages.pages()
            )?;
        }
        let free = &self.layout.free;
        writeln!(
            out,
            "free      {} in {} ranges",
            format_size(free.free_bytes()),
            free.free_ranges().len()
        )?;
        writeln!(out, "usable    {}", format_size(self.layout.usable_total))
    }

    fn cpu(&self, out: &mut dyn Write) -> fmt::Result {
        writeln!(out, "cpu: {}", self.cpu.identity)?;
        match (&self.cpu.vmx, self.cpu.vmx_unavailable()) {
            (_, Some(why)) => writeln!(out, "vmx: unavailable: {why}"),
            (Ok(vmx), None) => writeln!(out, "vmx: {vmx}"),
            (Err(_), None) => Ok(()),
        }
    }

    fn triggers_enabled(&self) -> bool {
        self.options.triggers
    }

    fn fire(&mut self, trigger: Trigger, vm: Option<&str>, out: &mut dyn Write) -> fmt::Result {
        use hypervisor::triggers;
        if let Some(when) = trigger.armed_when() {
            triggers::arm(trigger);
            return writeln!(out, "trigger: {} armed: fires {when}", trigger.name());
        }
        match (trigger, self.vms.as_mut()) {
            (Trigger::RecoveryFail, Some(vms)) => vms.root_mut().recovery.fail_next_recovery = 1,
            (Trigger::CorruptVm, Some(vms)) => {
                if let Err(e) = vms.corrupt_for_test(vm.unwrap_or("")) {
                    return writeln!(out, "error: trigger corrupt-vm: {e}");
                }
            }
            (Trigger::Deadlock, Some(vms)) => {
                log::warn!("trigger: firing 'deadlock'");
                triggers::deadlock(&vms.root().lock)
            }
            (Trigger::ArenaHeader, Some(vms)) => {
                triggers::overwrite_header(&mut vms.root_mut().header)
            }
            (Trigger::BadEntry, Some(vms)) => {
                return vms.bad_entry_for_test(vm.unwrap_or(""), out);
            }
            (Trigger::BootRecord, Some(vms)) => {
                triggers::overwrite_boot_record(&mut vms.root_mut().boot)
            }
            (
                Trigger::RecoveryFail
                | Trigger::CorruptVm
                | Trigger::ArenaHeader
                | Trigger::BadEntry
                | Trigger::BootRecord,
                None,
            ) => return writeln!(out, "error: trigger {}: VMX is not running", trigger.name()),
            _ => {}
        }
        log::warn!("trigger: firing '{}'", trigger.name());
        triggers::fire(trigger);
        if trigger == Trigger::CodeFlip {
            return writeln!(
                out,
                "trigger: code-flip: one bit of unused code changed; the image scrub will find it"
            );
        }
        if trigger == Trigger::NoEntry {
            return writeln!(
                out,
                "trigger: no-entry: the run loop enters no VM from now on; the watchdog will find it"
            );
        }
        writeln!(
            out,
            "error: trigger {}: the failure did not happen",
            trigger.name()
        )
    }

    fn inject(&mut self, plan: hypervisor::inject::Plan, out: &mut dyn Write) -> fmt::Result {
        use hypervisor::inject::machine;
        if !machine::enabled() {
            return writeln!(
                out,
                "error: inject: injection is disabled (boot with inject=on)"
            );
        }
        if !machine::arm(plan) {
            return writeln!(out, "error: inject: an injection is already armed");
        }
        writeln!(
            out,
            "inject: armed {} seed={}: stepping starts at VM exit {} from now, the fault comes at step {}",
            plan.fault.name(),
            plan.seed,
            plan.exits,
            plan.steps
        )
    }

    fn recovery(&self, out: &mut dyn Write) -> fmt::Result {
        match &self.vms {
            Some(vms) => vms.recoveries(out),
            None => writeln!(out, "recovery: not armed (VMX is not running)"),
        }
    }

    fn shutdown(&mut self) {
        crate::shutdown(self.power_off)
    }

    fn vm_list(&self, out: &mut dyn Write) -> fmt::Result {
        match &self.vms {
            Some(vms) => vms.list(out),
            None => writeln!(out, "error: vm: VMX is not running"),
        }
    }

    fn vm_stats(&self, name: &str, out: &mut dyn Write) -> fmt::Result {
        match &self.vms {
            Some(vms) => vms.stats(name, out),
            None => writeln!(out, "error: vm: VMX is not running"),
        }
    }

    fn vm_stop(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        match &mut self.vms {
            Some(vms) => vms.stop(name, out),
            None => writeln!(out, "error: vm: VMX is not running"),
        }
    }

    fn vm_console(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        match self.vms.as_ref().map(|vms| vms.find(name)) {
            None => writeln!(out, "error: vm: VMX is not running"),
            Some(None) => writeln!(out, "error: vm: no VM named '{name}'"),
            Some(Some(slot)) => {
                self.attached = Some(slot);
                writeln!(
                    out,
                    "vm {name}: console attached; Ctrl-] returns to the hypervisor"
                )
            }
        }
    }

    fn vm_reset(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        match &mut self.vms {
            Some(vms) => vms.reset(name, out),
            None => writeln!(out, "error: vm: VMX is not running"),
        }
    }

    fn vm_create(&mut self, words: &str, out: &mut dyn Write) -> fmt::Result {
        match &mut self.vms {
            Some(vms) => vms.create_from_console(words, &mut self.layout.free, out),
            None => writeln!(out, "error: vm: VMX is not running"),
        }
    }
}

/// Runs the VMs and the console, forever (until `shutdown`): between two VM exits,
/// one check for a typed byte.
pub fn run_console(machine: &mut BootMachine, draw_prompt: bool) -> ! {
    let mut editor = LineEditor::new();
    if draw_prompt {
        serial::write_str(PROMPT);
    }
    serial::set_prompt_line(&[PROMPT.as_bytes()]);
    loop {
        hypervisor::watchdog::pet();
        let Some(byte) = serial::try_read_byte() else {
            let ran = machine.vms.as_mut().is_some_and(|vms| vms.step());
            if !ran {
                instructions::pause();
            }
            continue;
        };
        if let Some(slot) = machine.attached {
            if byte == DETACH_KEY {
                machine.attached = None;
                serial::write_str("\n[lazarus] INFO  console: back to the hypervisor\n");
                serial::write_str(PROMPT);
                serial::set_prompt_line(&[PROMPT.as_bytes()]);
            } else if let Some(vms) = machine.vms.as_mut() {
                // The UART FIFO holds 16 bytes: run the VM until it has room.
                while !vms.console_input(slot, byte) {
                    if !vms.step() {
                        break;
                    }
                }
            }
            continue;
        }
        let mut reply: heapless::String<8192> = heapless::String::new();
        match editor.feed(byte) {
            Event::None => continue,
            Event::Echo(bytes) => {
                serial::write_bytes(bytes);
                if bytes.starts_with(b"\r") {
                    // Ctrl-U erased the whole line, prompt included: draw the prompt again.
                    serial::write_str(PROMPT);
                }
                serial::set_prompt_line(&[PROMPT.as_bytes(), editor.typed()]);
                continue;
            }
            Event::Cancel => reply.push_str("^C\n").unwrap_or(()),
            Event::TooLong => {
                let _ = writeln!(
                    reply,
                    "\nerror: line too long (at most {MAX_LINE} characters)"
                );
            }
            Event::Line(line) => {
                serial::set_prompt_line(&[]);
                serial::write_str("\n");
                let result = match shell::parse(line) {
                    Ok(Some(cmd)) => shell::execute(cmd, machine, &mut reply),
                    Ok(None) => Ok(()),
                    Err(e) => writeln!(reply, "{e}"),
                };
                if result.is_err() {
                    reply.clear();
                    let _ = writeln!(reply, "error: reply too long for the console buffer");
                }
                if machine.attached.is_some() {
                    serial::write_str(&reply);
                    continue;
                }
            }
        }
        serial::set_prompt_line(&[]);
        serial::write_str(&reply);
        serial::write_str(PROMPT);
        serial::set_prompt_line(&[PROMPT.as_bytes()]);
    }
}
