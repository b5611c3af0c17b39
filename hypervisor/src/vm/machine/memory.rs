//! How the VM layer reaches memory: arena pages for EPT tables, a VM's RAM by
//! guest-physical address, GRUB modules, and the host facts and console the exit
//! handlers are given.

use super::*;

/// Physical memory through the identity map, as the EPT builder sees it.
pub(super) struct ArenaTables<'a> {
    pub(super) root: &'a mut ArenaRoot,
    /// Pages handed out (at most [`arena::intent::MAX_EPT_TABLES`]).
    pub(super) taken: heapless::Vec<u64, { arena::intent::MAX_EPT_TABLES }>,
    /// Whether the pages are for a VM being created: they are then recorded in the
    /// arena's creation intent as they are taken, so a failure gives them back.
    pub(super) creating: bool,
}

impl<'a> ArenaTables<'a> {
    /// Tables for an existing VM (verified or rebuilt by recovery).
    pub(super) fn of(root: &'a mut ArenaRoot) -> Self {
        Self {
            root,
            taken: heapless::Vec::new(),
            creating: false,
        }
    }

    /// Tables for the VM being created (`ArenaRoot::begin_create`).
    pub(super) fn creating(root: &'a mut ArenaRoot) -> Self {
        Self {
            creating: true,
            ..Self::of(root)
        }
    }
}

impl TableMemory for ArenaTables<'_> {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.taken.is_full() {
            return None;
        }
        let page = if self.creating {
            self.root.alloc_create_page()?
        } else {
            self.root.alloc_page()?
        };
        zero_page(page);
        let _ = self.taken.push(page);
        Some(page)
    }

    fn table(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is an arena page handed out by `alloc_table` for this EPT; the
        // arena is identity-mapped and only the VM layer (on this CPU) touches it.
        unsafe { &mut *(phys as *mut [u64; 512]) }
    }

    fn table_ref(&self, phys: u64) -> &[u64; 512] {
        // SAFETY: as above, read-only.
        unsafe { &*(phys as *const [u64; 512]) }
    }
}

pub(super) fn zero_page(page: u64) {
    // SAFETY: callers pass pages they own (fresh arena pages), identity-mapped.
    unsafe { core::ptr::write_bytes(page as *mut u8, 0, PAGE as usize) };
}

/// A VM's RAM through the identity map, indexed by guest-physical address.
pub struct Ram {
    pub(super) base: u64,
    pub(super) size: u64,
}

impl Ram {
    pub(super) fn of(vm: &VmRecord) -> Self {
        Self {
            base: vm.config.ram_start,
            size: vm.config.ram_size,
        }
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: [base, base + size) is this VM's RAM, allocated from the free pool for it
        // alone and identity-mapped; nothing else holds a reference while this one lives.
        unsafe { core::slice::from_raw_parts_mut(self.base as *mut u8, self.size as usize) }
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, len: u64) -> Option<&[u8]> {
        let end = gpa.checked_add(len)?;
        if end > self.size {
            return None;
        }
        // SAFETY: bounds checked against the VM's RAM just above.
        Some(unsafe { core::slice::from_raw_parts((self.base + gpa) as *const u8, len as usize) })
    }
}

impl GuestMemoryMut for Ram {
    fn write(&mut self, gpa: u64, data: &[u8]) -> bool {
        let Some(end) = gpa.checked_add(data.len() as u64) else {
            return false;
        };
        if end > self.size {
            return false;
        }
        self.bytes()[gpa as usize..end as usize].copy_from_slice(data);
        true
    }
}

pub(super) struct RealHost<'a> {
    pub(super) caps: &'a Caps,
    pub(super) triggers: bool,
}

impl Host for RealHost<'_> {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = raw_cpuid::cpuid!(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    fn rdtsc(&self) -> u64 {
        rdtsc()
    }
    fn guest_limits(&self) -> crate::vm::rules::GuestLimits {
        self.caps.limits
    }
    fn cr_fixed(&self) -> [u64; 4] {
        self.caps.cr_fixed
    }
    fn tsc_hz(&self) -> u64 {
        self.caps.tsc_hz
    }
    fn triggers_enabled(&self) -> bool {
        self.triggers
    }
    fn inject_enabled(&self) -> bool {
        crate::inject::machine::enabled()
    }
}

/// Guest console lines: `[NAME] text`.
pub(super) struct SerialSink;

impl ConsoleSink for SerialSink {
    fn vm_line(&mut self, vm: &str, line: &str) {
        let mut out: heapless::String<{ arena::CONSOLE_LINE + 32 }> = heapless::String::new();
        let _ = writeln!(out, "[{vm}] {line}");
        serial::write_line(&out);
    }
}

/// Allocates an arena page filled with `byte`.
pub(super) fn alloc_filled(root: &mut ArenaRoot, byte: u8) -> Option<u64> {
    let page = root.alloc_page()?;
    // SAFETY: a fresh arena page, identity-mapped, owned by the caller.
    unsafe { core::ptr::write_bytes(page as *mut u8, byte, PAGE as usize) };
    Some(page)
}

/// A module's bytes through the identity map.
pub fn module_bytes(m: Range) -> &'static [u8] {
    // SAFETY: GRUB modules are excluded from every allocation (memory::plan) and never
    // written, so a shared view of them is sound for the hypervisor's lifetime.
    unsafe { core::slice::from_raw_parts(m.start as *const u8, m.len() as usize) }
}

/// All of a VM's RAM at guest-physical 0, readable, writable and executable.
pub(super) fn ram_mapping(vm: &VmRecord) -> Mapping {
    Mapping {
        gpa: 0,
        hpa: vm.config.ram_start,
        len: vm.config.ram_size,
        access: Access {
            read: true,
            write: true,
            execute: true,
        },
    }
}
