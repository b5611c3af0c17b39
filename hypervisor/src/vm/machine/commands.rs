//! The `vm` console commands on the real machine.

use super::*;

impl Vms {
    /// `vm list`: one line per VM.
    pub fn list(&self, out: &mut dyn Write) -> fmt::Result {
        let total: u64 = self.root.vms.iter().map(|vm| vm.stats.guest_tsc).sum();
        let mut any = false;
        for vm in self
            .root
            .vms
            .iter()
            .filter(|vm| vm.state() != Some(VmState::Free))
        {
            any = true;
            let state = vm.state().map_or("corrupt", VmState::as_str);
            write!(
                out,
                "{} id={} state={} exits={} share={}% mem={}",
                vm.name(),
                vm.id,
                state,
                vm.stats.exits,
                scheduler::share_percent(vm.stats.guest_tsc, total),
                format_size(vm.config.ram_size)
            )?;
            if vm.state() == Some(VmState::Stopped) {
                write!(out, " reason=\"{}\"", vm.stop_reason())?;
            }
            writeln!(out)?;
        }
        if !any {
            writeln!(out, "no VMs")?;
        }
        Ok(())
    }

    /// `vm stats NAME`: the counters and the exits by reason.
    pub fn stats(&self, name: &str, out: &mut dyn Write) -> fmt::Result {
        let Some(slot) = self.root.find_vm(name) else {
            return writeln!(out, "error: vm: no VM named '{name}'");
        };
        let vm = &self.root.vms[slot];
        let s = &vm.stats;
        // The VMCS and XSAVE pages and the EPT tables of its one mapping.
        let arena_pages = 2 + Ept::tables_needed(&[ram_mapping(vm)], &self.caps.ept);
        writeln!(
            out,
            "{name} exits={} tsc={} unclaimed_io={} unknown_msr={} hypercalls={} hypercall_errors={} interrupts={} timer_missed={} time_ms={} arena_pages={arena_pages} exit_cycles={} check_cycles={}",
            s.exits, s.guest_tsc, s.unclaimed_io, s.unknown_msr, s.hypercalls, s.hypercall_errors, s.interrupts, s.timer_missed,
            guest_ns(vm, &self.caps) / 1_000_000, s.exit_tsc, s.check_tsc
        )?;
        for reason in ExitReason::ALL {
            let n = s.by_reason[reason.index()];
            if n != 0 {
                writeln!(out, "exit {} {}", reason.name(), n)?;
            }
        }
        Ok(())
    }

    /// The slot of the running VM called `name` (for `vm console`).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.root.find_vm(name)
    }

    /// A byte typed for VM `slot`'s serial port. False if its receive FIFO is full (the
    /// caller keeps the byte and tries again later).
    pub fn console_input(&mut self, slot: usize, byte: u8) -> bool {
        let vm = &mut self.root.vms[slot];
        if vm.devices.uart.rx_space() == 0 {
            return false;
        }
        let mut ev = crate::devices::DeviceEvents::default();
        vm.devices.receive(byte, &mut ev);
        true
    }

    /// `vm reset NAME`: the VM starts again from its module, whatever state it was in.
    pub fn reset(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        let Some(slot) = self.root.find_vm(name) else {
            return writeln!(out, "error: vm: no VM named '{name}'");
        };
        if let Err(e) = self.root.validate_vm(slot) {
            // Its RAM range or pages cannot be trusted: reloading it could write anywhere.
            return writeln!(
                out,
                "error: vm {name}: its record is corrupt ({e}); it cannot be reset"
            );
        }
        if let Err(e) = self.reset_vm(slot, arena::intent::RESET_OPERATOR) {
            vmx_failure("reset", &self.root.vms[slot], e);
        }
        log::info!("vm {name}: reset by the operator");
        writeln!(out, "vm {name}: reset")
    }

    /// `vm create module=N [initrd=M] WORDS`: a new VM from boot module N (and initramfs
    /// module M), described by WORDS as a module string would be (one VM name).
    pub fn create_from_console(
        &mut self,
        words: &str,
        free: &mut FrameAllocator<FREE_RANGES>,
        out: &mut dyn Write,
    ) -> fmt::Result {
        let mut image = None;
        let mut initrd = None;
        let mut rest: heapless::String<{ crate::console::line::MAX_LINE }> =
            heapless::String::new();
        for word in words.split_ascii_whitespace() {
            if let Some(n) = word.strip_prefix("module=") {
                image = Some(n);
            } else if let Some(n) = word.strip_prefix("initrd=") {
                initrd = Some(n);
            } else {
                let _ = rest.push_str(word);
                let _ = rest.push(' ');
            }
        }
        let Some(image) = image else {
            return writeln!(
                out,
                "error: vm create: missing module=N (the boot module holding the image)"
            );
        };
        let count = self.modules.len();
        let index = |n: &str| n.parse::<usize>().ok().filter(|&i| i < count);
        let Some(image_index) = index(image) else {
            return writeln!(
                out,
                "error: vm create: no boot module '{image}' (there are {count})"
            );
        };
        let initrd_index = match initrd.map(|n| (n, index(n))) {
            None => None,
            Some((_, Some(i))) => Some(i),
            Some((n, None)) => {
                return writeln!(
                    out,
                    "error: vm create: no boot module '{n}' (there are {count})"
                )
            }
        };
        let spec = match config::parse(rest.trim_end()) {
            Ok(spec) => spec,
            Err(e) => return writeln!(out, "error: vm create: {e}"),
        };
        if spec.names.len() != 1 || spec.role == Role::Initrd {
            return writeln!(
                out,
                "error: vm create: name one VM (vm=NAME) and its role (elf or kernel)"
            );
        }
        let mut specs: heapless::Vec<(usize, config::ModuleSpec), 2> = heapless::Vec::new();
        let name = spec.names[0].clone();
        let _ = specs.push((image_index, spec));
        if let Some(i) = initrd_index {
            let mut rd = config::ModuleSpec {
                names: heapless::Vec::new(),
                role: Role::Initrd,
                mem: None,
                on_triple_fault: None,
                on_reboot: None,
                cmdline: None,
                args: Default::default(),
            };
            let _ = rd.names.push(name.clone());
            let _ = specs.push((i, rd));
        }
        let (plans, errors) = config::plan(&specs);
        if let Some(e) = errors.first() {
            return writeln!(out, "error: vm {name}: not created: {e}");
        }
        match self.create(&plans[0], free) {
            Ok(slot) => writeln!(out, "vm {}: created", self.root.vms[slot].name()),
            Err(e) => writeln!(out, "error: vm {name}: not created: {e}"),
        }
    }

    /// `vm stop NAME`.
    pub fn stop(&mut self, name: &str, out: &mut dyn Write) -> fmt::Result {
        let Some(slot) = self.root.find_vm(name) else {
            return writeln!(out, "error: vm: no VM named '{name}'");
        };
        let vm = &mut self.root.vms[slot];
        match vm.state() {
            Some(VmState::Runnable | VmState::Waiting | VmState::Halted) => {
                vm.set_state(VmState::Stopped);
                vm.set_stop_reason(format_args!("stopped by the operator"));
                log::info!("vm {name}: stopped: stopped by the operator");
                writeln!(out, "vm {name}: stopped")
            }
            Some(state) => writeln!(out, "error: vm: {name} is already {}", state.as_str()),
            None => writeln!(out, "error: vm: {name} has a corrupt state"),
        }
    }

    /// `recovery`: one documented `recovery` line per logged recovery, oldest first,
    /// then the total.
    pub fn recoveries(&self, out: &mut dyn Write) -> fmt::Result {
        let r = &self.root.recovery;
        for record in r.history() {
            writeln!(out, "{record}")?;
        }
        writeln!(
            out,
            "recovery: {} recoveries since cold boot (generation {})",
            r.completed, self.root.header.generation
        )
    }

    /// Trigger `bad-entry NAME [NAME...]`: every VM entry of each named VM fails from now
    /// on (all are marked before any VM runs again). Writes one line per VM, or the error.
    pub fn bad_entry_for_test(&mut self, names: &str, out: &mut dyn Write) -> fmt::Result {
        let mut slots: heapless::Vec<usize, MAX_VMS> = heapless::Vec::new();
        for name in names.split_ascii_whitespace() {
            match self.root.find_vm(name) {
                Some(slot) if !slots.contains(&slot) => {
                    let _ = slots.push(slot);
                }
                Some(_) => {}
                None => return writeln!(out, "error: trigger bad-entry: no VM named '{name}'"),
            }
        }
        for slot in slots {
            let vm = &mut self.root.vms[slot];
            vm.bad_entry = arena::suspect::BAD_ENTRY_ON;
            writeln!(
                out,
                "trigger: bad-entry: every VM entry of vm {} fails from now on",
                vm.name()
            )?;
        }
        Ok(())
    }

    /// Trigger `corrupt-vm NAME`: breaks the VM's configuration checksum, which recovery
    /// must notice and answer by stopping that VM alone.
    pub fn corrupt_for_test(&mut self, name: &str) -> Result<(), &'static str> {
        let slot = self.root.find_vm(name).ok_or("no VM with that name")?;
        self.root.vms[slot].config_checksum ^= 1;
        Ok(())
    }
}
