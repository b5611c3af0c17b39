//! The commit log: a copy of the VM exit being committed and its effect, so that a
//! recovery can finish a commit the dead instance left half done (roll forward) instead
//! of stopping the VM.
//!
//! The commit applies plain copies (registers, device models, VMCS fields, the RIP as
//! exit RIP plus length), so applying it a second time from the start gives the same
//! guest state; only counters and a console line may be seen twice. The exit and effect
//! are Rust values, not `#[repr(C)]` records, so they are kept as words with a checksum
//! and read back only when the checksum, the slot and the exit number all match: the same
//! image (restored from the pristine copy) reads exactly what it wrote.

use super::Fnv;
use crate::vm::exits::{Effect, Exit};

type Entry = (Exit, Effect);

/// Words that hold one [`Entry`].
pub const COMMIT_WORDS: usize = core::mem::size_of::<Entry>().div_ceil(8);

#[repr(C)]
pub struct CommitLog {
    /// 1 + the slot of the VM whose exit is logged, 0 when none.
    pub slot: u32,
    pub _pad: u32,
    /// The exit's number (`Journal::exit_seq`).
    pub exit_seq: u64,
    /// Checksum of `words` (and of the two fields above).
    pub checksum: u64,
    pub words: [u64; COMMIT_WORDS],
}

impl CommitLog {
    /// Logs `exit` and `effect` of exit `exit_seq` of the VM in `slot`, before the commit.
    pub fn save(&mut self, slot: usize, exit_seq: u64, exit: &Exit, effect: &Effect) {
        self.slot = 0;
        // SAFETY: `words` is COMMIT_WORDS * 8 >= size_of::<Entry>() bytes; the write is
        // unaligned-safe and moves a clone in, which `load` moves out again. The value is
        // never dropped in place (only bit copies are read back).
        unsafe {
            core::ptr::write_unaligned(
                self.words.as_mut_ptr().cast::<Entry>(),
                (*exit, effect.clone()),
            );
        }
        self.exit_seq = exit_seq;
        self.slot = slot as u32 + 1;
        self.checksum = self.compute();
    }

    /// The logged exit and effect, if they are intact and are exit `exit_seq` of `slot`.
    pub fn load(&self, slot: usize, exit_seq: u64) -> Option<Entry> {
        if self.slot != slot as u32 + 1
            || self.exit_seq != exit_seq
            || self.checksum != self.compute()
        {
            return None;
        }
        // SAFETY: the checksum matches what `save` computed over the bytes it wrote from a
        // valid Entry of this same image, so they are that Entry's bytes.
        Some(unsafe { core::ptr::read_unaligned(self.words.as_ptr().cast::<Entry>()) })
    }

    /// Forgets the log (after the commit completed).
    pub fn clear(&mut self) {
        self.slot = 0;
    }

    fn compute(&self) -> u64 {
        let mut h = Fnv::new();
        h.u64(u64::from(self.slot));
        h.u64(self.exit_seq);
        // Word-wise: this runs on every VM exit.
        self.words.iter().fold(h.finish(), |h, &w| {
            (h ^ w).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }
}
