//! Creating and resetting a VM as transactions that recovery finishes (issue 11).
//!
//! Both take many steps, and a hypervisor failure between two of them used to leave
//! something no repair pass knew about: a creation left its arena pages allocated for
//! ever (a leak the operator could not see or undo), a reset left a VM that was neither
//! the old one nor the new one (half its RAM cleared, its registers and VMCS half
//! rewritten). So each writes its intent into the arena before its first step, and
//! clears it as its last; recovery finds an intent still set and finishes the
//! transaction one way or the other.
//!
//! - **Creating is undone.** [`CreateIntent`] names the VM-table slot and every arena
//!   page taken so far. Each page is recorded *before* its bit is set in the bitmap
//!   ([`ArenaRoot::alloc_create_page`]), so there is no point at which a page is taken
//!   and not recorded: recovery frees every recorded page that is allocated, and empties
//!   the slot ([`ArenaRoot::undo_create`]). The VM's RAM needs nothing: it comes from the
//!   free-memory allocator, which is transient, and a recovery boot rebuilds it with only
//!   the live VMs' RAM taken. Undoing rather than completing, because the creation's plan
//!   (module, words, memory size) is transient, the half-made VM has never run, and the
//!   operator, who got no reply, simply types `vm create` again.
//! - **Resetting is rolled forward.** [`VmRecord::reset`](super::VmRecord::reset) says a
//!   reset is under way (and whether the operator or the guest asked for it). The old
//!   state is destroyed from the first step (RAM zeroed), so it cannot be undone; but a
//!   reset reloads the VM from its GRUB module, which recovery keeps, and rewrites every
//!   part of the VM from scratch, so redoing it from the start is correct from any point.
//!
//! Plain `#[repr(C)]` integers, like the rest of the arena; every index and count is
//! bound-checked where it is read.

use super::{set_text, text, ArenaRoot, VmRecord, VmState, MAX_VMS, NAME_LEN, PAGE};

/// Most EPT tables one VM's creation builds (the EPT builder refuses more).
pub const MAX_EPT_TABLES: usize = 64;
/// Most arena pages one creation takes: its VMCS, its XSAVE area and its EPT tables.
pub const CREATE_PAGES: usize = 2 + MAX_EPT_TABLES;

/// [`CreateIntent::phase`]: no creation under way.
pub const CREATE_IDLE: u32 = 0;
/// [`CreateIntent::phase`]: a creation is under way; undone if found by recovery.
pub const CREATE_ACTIVE: u32 = 1;

/// [`VmRecord::reset`](super::VmRecord::reset): no reset under way.
pub const RESET_NONE: u32 = 0;
/// A `vm reset` from the console is under way: completing it also forgets the VM's stop
/// reason, its failure record and a test's `bad-entry`.
pub const RESET_OPERATOR: u32 = 1;
/// A reset the guest asked for (or its triple fault with `on_triple_fault=reset`) is
/// under way: completing it keeps the VM's failure record.
pub const RESET_GUEST: u32 = 2;

/// The VM creation under way, if any.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateIntent {
    /// [`CREATE_IDLE`] or [`CREATE_ACTIVE`].
    pub phase: u32,
    /// The VM-table slot the VM is being created in.
    pub slot: u32,
    /// The VM's name, ASCII, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// Entries of `pages` in use.
    pub count: u32,
    pub _pad: u32,
    /// Host-physical addresses of the arena pages taken, each written before it is taken.
    pub pages: [u64; CREATE_PAGES],
}

impl CreateIntent {
    pub const IDLE: Self = Self {
        phase: CREATE_IDLE,
        slot: 0,
        name: [0; NAME_LEN],
        count: 0,
        _pad: 0,
        pages: [0; CREATE_PAGES],
    };

    /// The pages recorded so far (bound-checked).
    pub fn recorded(&self) -> &[u64] {
        &self.pages[..(self.count as usize).min(CREATE_PAGES)]
    }

    /// The slot of the creation under way, if there is one and the slot exists.
    pub fn slot_in_progress(&self) -> Option<usize> {
        let slot = self.slot as usize;
        (self.phase == CREATE_ACTIVE && slot < MAX_VMS).then_some(slot)
    }

    pub fn name(&self) -> &str {
        text(&self.name)
    }
}

/// What recovery's transaction passes did, kept until the recovery's lines are printed
/// (at its first VM entry: a retried recovery must not lose them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionReport {
    /// The VM whose creation was undone, "" if none.
    pub undone: [u8; NAME_LEN],
    /// Bit `slot` set for each VM whose interrupted reset was completed.
    pub resets_completed: u32,
    /// Bit `slot` set for each VM whose interrupted reset could not be completed (the VM
    /// is stopped).
    pub resets_abandoned: u32,
}

impl TransactionReport {
    pub const EMPTY: Self = Self {
        undone: [0; NAME_LEN],
        resets_completed: 0,
        resets_abandoned: 0,
    };

    pub fn undone(&self) -> &str {
        text(&self.undone)
    }
}

/// What [`ArenaRoot::undo_create`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UndoneCreate {
    /// The VM that was being created.
    pub name: [u8; NAME_LEN],
    /// Arena pages given back.
    pub pages_freed: u32,
    /// Whether its half-written record was removed from the VM table.
    pub slot_freed: bool,
}

impl ArenaRoot {
    /// Starts a creation in `slot` (a free one) of the VM `name`: from now until
    /// [`ArenaRoot::commit_create`], a failure makes recovery undo it.
    pub fn begin_create(&mut self, slot: usize, name: &str) {
        let mut intent = CreateIntent::IDLE;
        intent.slot = slot as u32;
        set_text(&mut intent.name, name);
        intent.phase = CREATE_ACTIVE;
        self.create = intent;
    }

    /// Takes an arena page for the creation under way, recording it in the intent first.
    /// None if no creation is under way, the intent is full or the arena has no page.
    pub fn alloc_create_page(&mut self) -> Option<u64> {
        let count = self.create.count as usize;
        if self.create.phase != CREATE_ACTIVE || count >= CREATE_PAGES {
            return None;
        }
        let index = self.pages.first_free()?;
        let page = self.header.base + index * PAGE;
        self.create.pages[count] = page;
        self.create.count += 1;
        self.pages.take(index).ok()?;
        Some(page)
    }

    /// Ends the creation under way: the VM exists (its record is in its slot, runnable).
    pub fn commit_create(&mut self) {
        self.create = CreateIntent::IDLE;
    }

    /// Undoes the creation under way, if any (recovery, and a creation that failed):
    /// every recorded page that is allocated and that nothing else refers to is freed, and
    /// the slot, if it holds the half-made VM (its name), is emptied. An intent whose
    /// phase is unreadable is dropped without freeing anything (nothing in it can be
    /// trusted; at worst its pages stay allocated). Idempotent.
    pub fn undo_create(&mut self) -> Option<UndoneCreate> {
        let intent = self.create;
        self.create = CreateIntent::IDLE;
        if intent.phase != CREATE_ACTIVE {
            return None;
        }
        // The slot holds the half-made VM if its record was written (under its name).
        let half_made = intent
            .slot_in_progress()
            .filter(|&s| text(&self.vms[s].name) == intent.name());
        let mut pages_freed = 0;
        for &page in intent.recorded() {
            if self.owns_page(page)
                && !self.page_in_use(page, half_made)
                && self.free_page(page).is_ok()
            {
                pages_freed += 1;
            }
        }
        if let Some(s) = half_made {
            self.vms[s] = VmRecord::EMPTY;
        }
        let slot_freed = half_made.is_some();
        Some(UndoneCreate {
            name: intent.name,
            pages_freed,
            slot_freed,
        })
    }

    /// Whether `page` is one a live VM other than the half-made one in `creating` (its
    /// VMCS, XSAVE area or EPT root) or the whole arena (the shared bitmaps) refers to: a
    /// corrupt intent must not free it.
    fn page_in_use(&self, page: u64, creating: Option<usize>) -> bool {
        let shared = self.io_bitmaps.contains(&page) || self.msr_bitmap == page;
        shared
            || self.vms.iter().enumerate().any(|(slot, vm)| {
                Some(slot) != creating
                    && vm.state != VmState::Free as u32
                    && [vm.vcpu.vmcs, vm.vcpu.xsave, vm.ept_root].contains(&page)
            })
    }
}

#[cfg(test)]
mod tests;
