//! Intel VT-x (VMX) as plain data and logic: VMCS field encodings, control settings derived
//! from the capability MSRs, VM-exit decoding and VM-entry event injection.
//!
//! Nothing here executes a VMX instruction. Code that must touch the VMCS goes through
//! [`fields::VmcsAccess`], so that everything above the instruction wrappers is unit-tested
//! on the host against [`fields::FakeVmcs`].
//!
//! SDM references are to the Intel 64 and IA-32 Architectures Software Developer's Manual,
//! order number 325462, in the numbering of the 2023 and later editions (Vol. 3C: Ch. 24
//! "Introduction to VMX Operation", Ch. 25 "Virtual Machine Control Structures", Ch. 27
//! "VM Entries", Ch. 28 "VM Exits", Ch. 31 "VMX Instruction Reference"; Vol. 3D: Appendix A
//! "VMX Capability Reporting Facility", Appendix B "Field Encoding in VMCS", Appendix C
//! "VMX Basic Exit Reasons"). Earlier editions number the same Vol. 3C chapters one lower.

pub mod controls;
pub mod event;
pub mod exit;
pub mod fields;
pub mod host;
