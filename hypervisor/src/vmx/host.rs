//! The VMCS fields that come from the hypervisor, not the guest: host state (where and
//! how VM exits land) and the execution controls. VM creation writes them once; a
//! recovery boot rewrites them in every VMCS it reloads, because the dead instance's
//! values may be what failed (DESIGN 6: "reload each VMCS: rewrite host state and
//! control fields from the known-good configuration").
//!
//! Host-state fields: SDM Vol. 3C §25.5; the checks a VM entry applies to them: §27.2.2
//! and §27.2.3. Control fields: §25.6.

use super::controls::{primary, ControlSet};
use super::fields::{VmcsAccess, VmcsField, VmxError};

/// VM-entry control "IA-32e mode guest" (SDM Vol. 3C §25.8.1, bit 9): follows the guest's
/// EFER.LMA, so it is guest state kept across a rewrite of the entry controls.
pub const ENTRY_IA32E_MODE_GUEST: u32 = 1 << 9;

/// Host state, as the hypervisor's own registers hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cs: u16,
    pub tr: u16,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub efer: u64,
    pub pat: u64,
    /// Where VM exits land (`arch::vmentry::exit_landing`).
    pub rip: u64,
}

impl HostState {
    /// Writes every host-state field. Data segment selectors are 0 (allowed for all but
    /// CS and TR, §27.2.3); FS and GS bases are 0 because the host uses neither.
    pub fn write(&self, v: &mut impl VmcsAccess) -> Result<(), VmxError> {
        use VmcsField as F;
        let writes: [(F, u64); 18] = [
            (F::HostCr0, self.cr0),
            (F::HostCr3, self.cr3),
            (F::HostCr4, self.cr4),
            (F::HostCsSelector, u64::from(self.cs)),
            (F::HostSsSelector, 0),
            (F::HostDsSelector, 0),
            (F::HostEsSelector, 0),
            (F::HostFsSelector, 0),
            (F::HostGsSelector, 0),
            (F::HostTrSelector, u64::from(self.tr)),
            (F::HostFsBase, 0),
            (F::HostGsBase, 0),
            (F::HostTrBase, self.tr_base),
            (F::HostGdtrBase, self.gdtr_base),
            (F::HostIdtrBase, self.idtr_base),
            (F::HostIa32Efer, self.efer),
            (F::HostIa32Pat, self.pat),
            (F::HostRip, self.rip),
        ];
        for (field, value) in writes {
            v.write(field, value)?;
        }
        Ok(())
    }
}

/// The execution, exit and entry controls and what they point at, for one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub set: ControlSet,
    pub io_bitmaps: [u64; 2],
    pub msr_bitmap: u64,
    pub eptp: u64,
    /// The VM's VPID, when VPIDs are in use.
    pub vpid: Option<u16>,
    pub cr0_mask: u64,
    pub cr4_mask: u64,
    /// TSC offset: makes the guest's TSC count from its start (§26.6.5).
    pub tsc_offset: u64,
    /// Interrupt-window exiting on (an interrupt waits for the guest to accept it).
    pub interrupt_window: bool,
    /// The "IA-32e mode guest" entry control (the guest's EFER.LMA).
    pub ia32e_guest: bool,
}

impl Controls {
    pub fn write(&self, v: &mut impl VmcsAccess) -> Result<(), VmxError> {
        use VmcsField as F;
        let c = &self.set;
        let window = if self.interrupt_window {
            primary::INTERRUPT_WINDOW_EXITING
        } else {
            0
        };
        let ia32e = if self.ia32e_guest {
            ENTRY_IA32E_MODE_GUEST
        } else {
            0
        };
        // The exception bitmap is empty and the page-fault error-code mask and match are 0,
        // so no guest exception exits (SDM Vol. 3C §25.6.3: with bit 14 clear, a #PF exits
        // only when its error code ANDed with the mask differs from the match).
        let writes: [(F, u64); 16] = [
            (F::PinBasedControls, u64::from(c.pin)),
            (F::PrimaryProcBasedControls, u64::from(c.proc | window)),
            (F::SecondaryProcBasedControls, u64::from(c.proc2)),
            (F::ExitControls, u64::from(c.exit)),
            (F::EntryControls, u64::from(c.entry | ia32e)),
            (F::ExceptionBitmap, 0),
            (F::PageFaultErrorCodeMask, 0),
            (F::PageFaultErrorCodeMatch, 0),
            (F::IoBitmapA, self.io_bitmaps[0]),
            (F::IoBitmapB, self.io_bitmaps[1]),
            (F::MsrBitmap, self.msr_bitmap),
            (F::EptPointer, self.eptp),
            (F::VmcsLinkPointer, u64::MAX),
            (F::Cr0GuestHostMask, self.cr0_mask),
            (F::Cr4GuestHostMask, self.cr4_mask),
            (F::TscOffset, self.tsc_offset),
        ];
        for (field, value) in writes {
            v.write(field, value)?;
        }
        if let Some(vpid) = self.vpid {
            v.write(F::Vpid, u64::from(vpid))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmx::fields::FakeVmcs;

    #[test]
    fn controls_keep_the_runtime_bits_they_are_given() {
        let mut v = FakeVmcs::new();
        let c = Controls {
            set: ControlSet {
                pin: 0x49,
                proc: 0x8000_0000,
                proc2: 0x82,
                exit: 0x200,
                entry: 0x4,
            },
            io_bitmaps: [0x1000, 0x2000],
            msr_bitmap: 0x3000,
            eptp: 0x5000 | 0x1e,
            vpid: Some(3),
            cr0_mask: 0x21,
            cr4_mask: 0x2000,
            tsc_offset: 0u64.wrapping_sub(77),
            interrupt_window: true,
            ia32e_guest: true,
        };
        c.write(&mut v).unwrap();
        assert_eq!(
            v.read(VmcsField::PrimaryProcBasedControls).unwrap(),
            u64::from(0x8000_0000 | primary::INTERRUPT_WINDOW_EXITING)
        );
        assert_eq!(
            v.read(VmcsField::EntryControls).unwrap(),
            u64::from(0x4 | ENTRY_IA32E_MODE_GUEST)
        );
        assert_eq!(v.read(VmcsField::Vpid).unwrap(), 3);
        assert_eq!(v.read(VmcsField::TscOffset).unwrap(), 0u64.wrapping_sub(77));
        assert_eq!(v.read(VmcsField::VmcsLinkPointer).unwrap(), u64::MAX);
    }

    #[test]
    fn host_state_writes_every_host_field() {
        let mut v = FakeVmcs::new();
        let h = HostState {
            cr0: 0x8001_0033,
            cr3: 0x20_0000,
            cr4: 0x2020,
            cs: 8,
            tr: 0x18,
            tr_base: 0x23_0000,
            gdtr_base: 0x23_1000,
            idtr_base: 0x23_2000,
            efer: 0x500,
            pat: 0x0007_0406_0007_0406,
            rip: 0x20_1234,
        };
        h.write(&mut v).unwrap();
        assert_eq!(v.read(VmcsField::HostRip).unwrap(), 0x20_1234);
        assert_eq!(v.read(VmcsField::HostTrSelector).unwrap(), 0x18);
        assert!(v.was_written(VmcsField::HostGsBase));
    }
}
