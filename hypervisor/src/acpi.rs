//! Just enough ACPI to switch the machine off and to find the interrupt controllers.
//!
//! Powering off is the one ACPI service the hypervisor needs for itself, and it needs it
//! on QEMU, Bochs and real boards alike. Doing it properly means running the DSDT's AML,
//! which is far more machinery than a hypervisor core should carry. Almost every
//! firmware, however, declares the soft-off state as a plain named package of constants,
//! so scanning the AML bytes for that one declaration gives the same answer without an
//! interpreter. Everything read comes from firmware and is checked (signature, length,
//! checksum) before it is believed; a failure is reported, never guessed around, so the
//! caller can fall back to another way of stopping the machine.
//!
//! Memory is only ever read through [`PhysMemory`], so the boot code decides how
//! physical addresses become bytes and the tests can serve fabricated tables.
//!
//! The MADT ("APIC" table) gives the watchdog what it needs to route the PIT to an NMI:
//! where the I/O APIC is, which global system interrupt (GSI) ISA IRQ 0 arrives on, and
//! with which polarity and trigger mode ([`madt`]).
//!
//! What this does not handle: hardware-reduced ACPI platforms (which have no PM1 control
//! block and use the FADT's sleep control register instead), PM1 blocks in memory space,
//! and \_S5 computed by a method; all of these are reported as errors.

use core::fmt;

/// Read access to physical memory.
pub trait PhysMemory {
    /// The `len` bytes at physical address `addr`, or `None` if they cannot be read.
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// SLP_EN: writing it with SLP_TYP starts the sleep transition (ACPI 6.5 §4.8.3.2.1,
/// PM1 Control Registers: SLP_TYPx is bits 10-12, SLP_EN is bit 13).
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0b111;

/// How to enter the S5 (soft off) state: write [`pm1a_value`](Self::pm1a_value) to the
/// 16-bit I/O port `pm1a_cnt`, and [`pm1b_value`](Self::pm1b_value) to `pm1b_cnt` if
/// there is one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerOff {
    /// I/O port of the PM1a control register.
    pub pm1a_cnt: u16,
    /// I/O port of the PM1b control register, if the platform has one.
    pub pm1b_cnt: Option<u16>,
    /// SLP_TYP for PM1a from the \_S5 package.
    pub slp_typ_a: u16,
    /// SLP_TYP for PM1b from the \_S5 package.
    pub slp_typ_b: u16,
}

impl PowerOff {
    /// The value to write to PM1a_CNT: SLP_TYPa (3 bits; higher bits are dropped so a
    /// bogus value cannot set unrelated control bits) and SLP_EN.
    #[must_use]
    pub const fn pm1a_value(&self) -> u16 {
        ((self.slp_typ_a & SLP_TYP_MASK) << SLP_TYP_SHIFT) | SLP_EN
    }

    /// The value to write to PM1b_CNT, built like [`pm1a_value`](Self::pm1a_value).
    #[must_use]
    pub const fn pm1b_value(&self) -> u16 {
        ((self.slp_typ_b & SLP_TYP_MASK) << SLP_TYP_SHIFT) | SLP_EN
    }
}

/// Why the power-off method could not be determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// The RSDP has a wrong signature, checksum or length.
    BadRsdp,
    /// A required table is absent, unreadable, or has the wrong signature.
    TableNotFound(&'static str),
    /// A table's bytes do not sum to zero.
    BadChecksum([u8; 4]),
    /// A table is shorter than the fields read from it, or than its own length says.
    Truncated([u8; 4]),
    /// The DSDT declares no \_S5 package of constants.
    NoS5,
    /// The FADT gives no I/O port for PM1a_CNT.
    NoPm1aControl,
    /// The MADT lists no I/O APIC.
    NoIoApic,
}

/// A table signature for messages: firmware bytes, so only printable ASCII is shown.
struct Signature([u8; 4]);

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &byte in &self.0 {
            let c = if byte.is_ascii_graphic() {
                byte as char
            } else {
                '?'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadRsdp => {
                f.write_str("the ACPI RSDP is invalid (signature, checksum or length)")
            }
            Self::TableNotFound(name) => write!(f, "ACPI table {name} not found"),
            Self::BadChecksum(sig) => write!(f, "ACPI table {} has a bad checksum", Signature(sig)),
            Self::Truncated(sig) => write!(f, "ACPI table {} is truncated", Signature(sig)),
            Self::NoS5 => f.write_str("the ACPI DSDT declares no \\_S5 (soft off) package"),
            Self::NoPm1aControl => f.write_str("the ACPI FADT gives no I/O port for PM1a_CNT"),
            Self::NoIoApic => f.write_str("the ACPI MADT lists no I/O APIC"),
        }
    }
}

// ACPI 6.5 §5.2.5.3, Root System Description Pointer (RSDP) Structure.
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// The ACPI 1.0 part, covered by the first checksum (offset 8).
const RSDP_V1_LEN: usize = 20;
const RSDP_REVISION: usize = 15;
const RSDP_RSDT_ADDRESS: usize = 16;
/// Length of the whole structure, covered by the extended checksum (offset 32).
const RSDP_LENGTH: usize = 20;
const RSDP_XSDT_ADDRESS: usize = 24;
const RSDP_V2_LEN: usize = 36;

// ACPI 6.5 §5.2.6, System Description Table Header.
const HEADER_SIGNATURE: usize = 0;
const HEADER_LENGTH: usize = 4;
const HEADER_LEN: usize = 36;

// ACPI 6.5 §5.2.9, Fixed ACPI Description Table (FADT).
const FADT_DSDT: usize = 40;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_PM1B_CNT_BLK: usize = 68;
const FADT_X_DSDT: usize = 140;
const FADT_X_PM1A_CNT_BLK: usize = 172;
const FADT_X_PM1B_CNT_BLK: usize = 184;
/// Shortest FADT holding every legacy field used here (through PM1b_CNT_BLK).
const FADT_MIN_LEN: usize = FADT_PM1B_CNT_BLK + 4;

// ACPI 6.5 §5.2.3.2, Generic Address Structure: Address Space ID at offset 0, Address
// at offset 4 (8 bytes); space 1 is System I/O.
const GAS_LEN: usize = 12;
const GAS_ADDRESS: usize = 4;
const GAS_SPACE_SYSTEM_IO: u8 = 1;

// ACPI 6.5 §20.2, AML grammar.
/// NameOp (§20.2.5.1, DefName := NameOp NameString DataRefObject).
const AML_NAME_OP: u8 = 0x08;
/// RootChar '\' (§20.2.2).
const AML_ROOT_CHAR: u8 = b'\\';
/// PackageOp (§20.2.5.4, DefPackage := PackageOp PkgLength NumElements PackageElementList).
const AML_PACKAGE_OP: u8 = 0x12;
// Integer encodings (§20.2.3, Data Objects Encoding).
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;
const AML_BYTE_PREFIX: u8 = 0x0A;
const AML_WORD_PREFIX: u8 = 0x0B;
const AML_DWORD_PREFIX: u8 = 0x0C;
const AML_QWORD_PREFIX: u8 = 0x0E;
const S5_NAME: &[u8; 4] = b"_S5_";

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn signature_of(name: &'static str) -> [u8; 4] {
    let mut sig = [0; 4];
    for (dst, src) in sig.iter_mut().zip(name.bytes()) {
        *dst = src;
    }
    sig
}

/// Validates an RSDP and returns `(revision, RSDT address, XSDT address)`.
///
/// The XSDT address is only given for revision 2 or later and when non-zero; the
/// extended checksum is only checked for those revisions.
///
/// # Errors
/// [`AcpiError::BadRsdp`] for a wrong signature, a bad checksum, or too few bytes.
pub fn rsdp_from_bytes(bytes: &[u8]) -> Result<(u8, u32, Option<u64>), AcpiError> {
    let v1 = bytes.get(..RSDP_V1_LEN).ok_or(AcpiError::BadRsdp)?;
    if !v1.starts_with(RSDP_SIGNATURE) || !checksum_ok(v1) {
        return Err(AcpiError::BadRsdp);
    }
    let revision = v1[RSDP_REVISION];
    let rsdt = le_u32(v1, RSDP_RSDT_ADDRESS).ok_or(AcpiError::BadRsdp)?;
    if revision < 2 {
        return Ok((revision, rsdt, None));
    }
    let length = le_u32(bytes, RSDP_LENGTH).ok_or(AcpiError::BadRsdp)?;
    let length = usize::try_from(length).map_err(|_| AcpiError::BadRsdp)?;
    if length < RSDP_V2_LEN {
        return Err(AcpiError::BadRsdp);
    }
    let full = bytes.get(..length).ok_or(AcpiError::BadRsdp)?;
    if !checksum_ok(full) {
        return Err(AcpiError::BadRsdp);
    }
    let xsdt = le_u64(full, RSDP_XSDT_ADDRESS).ok_or(AcpiError::BadRsdp)?;
    Ok((revision, rsdt, (xsdt != 0).then_some(xsdt)))
}

/// Finds a valid RSDP in `bytes`, which hold physical memory starting at `base`, and
/// returns its physical address.
///
/// Only 16-byte aligned physical addresses are tried, as firmware must place it there
/// (ACPI 6.5 §5.2.5.1, Finding the RSDP on IA-PC Systems).
#[must_use]
pub fn find_rsdp_in(bytes: &[u8], base: u64) -> Option<u64> {
    // Both values are below 16, so the casts are exact.
    let first = ((16 - base % 16) % 16) as usize;
    (first..bytes.len())
        .step_by(16)
        .find(|&offset| rsdp_from_bytes(&bytes[offset..]).is_ok())
        .map(|offset| base + offset as u64)
}

/// A table whose signature, length and checksum have been verified.
struct Table<'m> {
    bytes: &'m [u8],
    signature: [u8; 4],
}

impl<'m> Table<'m> {
    /// Reads and verifies the table with signature `name` at `addr`.
    fn read(mem: &'m impl PhysMemory, addr: u64, name: &'static str) -> Result<Self, AcpiError> {
        let signature = signature_of(name);
        if addr == 0 {
            return Err(AcpiError::TableNotFound(name));
        }
        let header = mem
            .read(addr, HEADER_LEN)
            .ok_or(AcpiError::TableNotFound(name))?;
        if header.get(HEADER_SIGNATURE..HEADER_SIGNATURE + 4) != Some(&signature[..]) {
            return Err(AcpiError::TableNotFound(name));
        }
        let length = le_u32(header, HEADER_LENGTH).ok_or(AcpiError::Truncated(signature))?;
        let length = usize::try_from(length).map_err(|_| AcpiError::Truncated(signature))?;
        if length < HEADER_LEN {
            return Err(AcpiError::Truncated(signature));
        }
        let bytes = mem
            .read(addr, length)
            .filter(|b| b.len() == length)
            .ok_or(AcpiError::Truncated(signature))?;
        if !checksum_ok(bytes) {
            return Err(AcpiError::BadChecksum(signature));
        }
        Ok(Self { bytes, signature })
    }

    /// What follows the header.
    fn body(&self) -> &'m [u8] {
        &self.bytes[HEADER_LEN..]
    }
}

/// The signature of the table at `addr`, if its header is readable.
fn peek_signature(mem: &impl PhysMemory, addr: u64) -> Option<[u8; 4]> {
    let header = mem.read(addr, HEADER_LEN)?;
    header
        .get(HEADER_SIGNATURE..HEADER_SIGNATURE + 4)?
        .try_into()
        .ok()
}

/// Finds the table with signature `wanted` through the RSDT (4-byte entries, ACPI 6.5
/// §5.2.7) or the XSDT (8-byte entries, §5.2.8); entries start right after the header.
fn find_table<'m>(
    mem: &'m impl PhysMemory,
    root: u64,
    name: &'static str,
    entry_len: usize,
    wanted: &'static str,
) -> Result<Table<'m>, AcpiError> {
    let root = Table::read(mem, root, name)?;
    for entry in root.body().chunks_exact(entry_len) {
        let addr = match entry_len {
            4 => le_u32(entry, 0).map(u64::from),
            _ => le_u64(entry, 0),
        };
        let Some(addr) = addr.filter(|&a| a != 0) else {
            continue;
        };
        if peek_signature(mem, addr) == Some(signature_of(wanted)) {
            return Table::read(mem, addr, wanted);
        }
    }
    Err(AcpiError::TableNotFound(wanted))
}

/// Finds the table `wanted` from the RSDT and, if given, the XSDT. The XSDT is preferred;
/// if it cannot be used (or leads nowhere) and an RSDT is given, the RSDT is tried before
/// giving up with the XSDT's error.
fn locate<'m>(
    mem: &'m impl PhysMemory,
    rsdt: u32,
    xsdt: Option<u64>,
    wanted: &'static str,
) -> Result<Table<'m>, AcpiError> {
    match xsdt.filter(|&x| x != 0) {
        Some(xsdt) => match find_table(mem, xsdt, "XSDT", 8, wanted) {
            Ok(table) => Ok(table),
            Err(err) if rsdt != 0 => {
                find_table(mem, rsdt.into(), "RSDT", 4, wanted).map_err(|_| err)
            }
            Err(err) => Err(err),
        },
        None => find_table(mem, rsdt.into(), "RSDT", 4, wanted),
    }
}

/// An I/O port from the FADT: the extended Generic Address at `x_offset` if the table
/// reaches it and it names a System I/O address, else the legacy 32-bit block address at
/// `legacy_offset`. Zero means absent.
fn fadt_port(fadt: &Table<'_>, x_offset: usize, legacy_offset: usize) -> Option<u16> {
    if let Some(gas) = fadt.bytes.get(x_offset..x_offset + GAS_LEN) {
        let address = le_u64(gas, GAS_ADDRESS).unwrap_or(0);
        if gas[0] == GAS_SPACE_SYSTEM_IO && address != 0 {
            if let Ok(port) = u16::try_from(address) {
                return Some(port);
            }
        }
    }
    let legacy = le_u32(fadt.bytes, legacy_offset)?;
    u16::try_from(legacy).ok().filter(|&port| port != 0)
}

/// Decodes a PkgLength (ACPI 6.5 §20.2.4): returns the length it states (which counts the
/// PkgLength bytes themselves) and how many bytes the encoding took.
fn pkg_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let lead = *bytes.first()?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    // With following bytes, bits 4-5 of the lead byte are reserved and must be zero.
    if lead & 0x30 != 0 {
        return None;
    }
    let mut length = usize::from(lead & 0x0f);
    for (i, byte) in bytes.get(1..=follow)?.iter().enumerate() {
        length |= usize::from(*byte) << (4 + 8 * i);
    }
    Some((length, 1 + follow))
}

/// Decodes one constant integer package element; returns its value and encoded size.
fn aml_integer(bytes: &[u8]) -> Option<(u64, usize)> {
    let prefix = *bytes.first()?;
    let width = match prefix {
        AML_ZERO_OP => return Some((0, 1)),
        AML_ONE_OP => return Some((1, 1)),
        AML_BYTE_PREFIX => 1,
        AML_WORD_PREFIX => 2,
        AML_DWORD_PREFIX => 4,
        AML_QWORD_PREFIX => 8,
        _ => return None,
    };
    let data = bytes.get(1..=width)?;
    let value = data
        .iter()
        .rev()
        .fold(0u64, |value, byte| (value << 8) | u64::from(*byte));
    Some((value, 1 + width))
}

/// Parses the declaration whose `_S5_` name starts at `at`, if it is a NameOp binding it
/// to a package of constants.
fn s5_package_at(aml: &[u8], at: usize) -> Option<(u16, u16)> {
    let declared = match at.checked_sub(1).map(|i| aml[i]) {
        Some(AML_NAME_OP) => true,
        Some(AML_ROOT_CHAR) => at >= 2 && aml[at - 2] == AML_NAME_OP,
        _ => false,
    };
    if !declared {
        return None;
    }
    let package = at + S5_NAME.len();
    if *aml.get(package)? != AML_PACKAGE_OP {
        return None;
    }
    let (length, length_len) = pkg_length(aml.get(package + 1..)?)?;
    if length < length_len {
        return None;
    }
    let contents = aml.get(package + 1 + length_len..package + 1 + length)?;
    let (&count, mut elements) = contents.split_first()?;
    if count == 0 {
        return None;
    }
    let (a, used) = aml_integer(elements)?;
    elements = &elements[used..];
    let b = if count >= 2 {
        aml_integer(elements)?.0
    } else {
        a
    };
    Some((u16::try_from(a).ok()?, u16::try_from(b).ok()?))
}

/// Finds `Name(_S5, Package(){SLP_TYPa, SLP_TYPb, ...})` in an AML byte stream and
/// returns the two SLP_TYP values (ACPI 6.5 §7.4.2, \_Sx System States; §7.4.2.6 for S5).
fn find_s5(aml: &[u8]) -> Option<(u16, u16)> {
    aml.windows(S5_NAME.len())
        .enumerate()
        .filter(|(_, window)| window == S5_NAME)
        .find_map(|(at, _)| s5_package_at(aml, at))
}

/// Works out how to power the machine off from the RSDT and, if given, the XSDT.
///
/// The XSDT is preferred; if it cannot be used (or leads nowhere) and an RSDT is given,
/// the RSDT is tried before giving up with the XSDT's error.
///
/// # Errors
/// See [`AcpiError`]: the first table that is missing or fails verification, or the
/// absence of a PM1a control port or of the \_S5 package.
pub fn power_off_method(
    rsdt: u32,
    xsdt: Option<u64>,
    mem: &impl PhysMemory,
) -> Result<PowerOff, AcpiError> {
    let fadt = locate(mem, rsdt, xsdt, "FACP")?;
    if fadt.bytes.len() < FADT_MIN_LEN {
        return Err(AcpiError::Truncated(fadt.signature));
    }

    let pm1a_cnt =
        fadt_port(&fadt, FADT_X_PM1A_CNT_BLK, FADT_PM1A_CNT_BLK).ok_or(AcpiError::NoPm1aControl)?;
    let pm1b_cnt = fadt_port(&fadt, FADT_X_PM1B_CNT_BLK, FADT_PM1B_CNT_BLK);

    let x_dsdt = le_u64(fadt.bytes, FADT_X_DSDT).unwrap_or(0);
    let dsdt_addr = if x_dsdt != 0 {
        x_dsdt
    } else {
        le_u32(fadt.bytes, FADT_DSDT).map_or(0, u64::from)
    };
    // ACPI 6.5 §5.2.11.1: the DSDT is a header followed by AML.
    let dsdt = Table::read(mem, dsdt_addr, "DSDT")?;
    let (slp_typ_a, slp_typ_b) = find_s5(dsdt.body()).ok_or(AcpiError::NoS5)?;

    Ok(PowerOff {
        pm1a_cnt,
        pm1b_cnt,
        slp_typ_a,
        slp_typ_b,
    })
}

// ACPI 6.5 §5.2.12, Multiple APIC Description Table (MADT), signature "APIC".
/// Local Interrupt Controller Address (32 bits) right after the header.
const MADT_LOCAL_APIC_ADDRESS: usize = 0;
/// Flags (32 bits); bit 0 is PCAT_COMPAT (a dual 8259 is also installed).
const MADT_FLAGS: usize = 4;
/// The interrupt controller structures start here (offset 44 of the table).
const MADT_ENTRIES: usize = 8;
const MADT_PCAT_COMPAT: u32 = 1;
// Interrupt controller structure types (ACPI 6.5 Table 5.45) and their lengths.
/// §5.2.12.2, Processor Local APIC: UID at 2, APIC ID at 3, flags (u32) at 4.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_LOCAL_APIC_LEN: usize = 8;
/// §5.2.12.3, I/O APIC: ID at 2, address (u32) at 4, GSI base (u32) at 8.
const MADT_IO_APIC: u8 = 1;
const MADT_IO_APIC_LEN: usize = 12;
/// §5.2.12.5, Interrupt Source Override: bus at 2, source at 3, GSI (u32) at 4, flags
/// (u16, MPS INTI flags) at 8.
const MADT_SOURCE_OVERRIDE: u8 = 2;
const MADT_SOURCE_OVERRIDE_LEN: usize = 10;
/// §5.2.12.8, Local APIC Address Override: the 64-bit address at 4.
const MADT_LOCAL_APIC_OVERRIDE: u8 = 5;
const MADT_LOCAL_APIC_OVERRIDE_LEN: usize = 12;
/// §5.2.12.12, Processor Local x2APIC: x2APIC ID (u32) at 4, flags (u32) at 8.
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_LOCAL_X2APIC_LEN: usize = 16;
/// Local APIC flags (Table 5.47): bit 0 Enabled, bit 1 Online Capable.
const LAPIC_ENABLED: u32 = 1;
const LAPIC_ONLINE_CAPABLE: u32 = 2;
/// Bus 0 of an Interrupt Source Override is ISA (§5.2.12.5).
const ISA_BUS: u8 = 0;

/// How many I/O APICs and source overrides are kept (more are counted, not kept).
pub const MAX_IO_APICS: usize = 8;
pub const MAX_OVERRIDES: usize = 16;

/// Signal polarity of an interrupt input (MPS INTI flags bits 1:0, ACPI 6.5 Table 5.50).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    ActiveHigh,
    ActiveLow,
}

/// Trigger mode of an interrupt input (MPS INTI flags bits 3:2, ACPI 6.5 Table 5.50).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// One I/O APIC as the MADT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApicEntry {
    pub id: u8,
    /// Physical address of its registers (IOREGSEL; IOWIN is 0x10 above).
    pub address: u32,
    /// The first global system interrupt its input pin 0 receives.
    pub gsi_base: u32,
}

/// Where an ISA IRQ arrives: an Interrupt Source Override, or the ISA default (the GSI
/// equal to the IRQ, active high, edge triggered).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaRoute {
    pub irq: u8,
    pub gsi: u32,
    pub polarity: Polarity,
    pub trigger: TriggerMode,
}

/// What the MADT says about the interrupt controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Madt {
    /// Physical address of every CPU's local APIC (the override's, if there is one).
    pub local_apic_address: u64,
    /// A dual 8259 is installed too (PCAT_COMPAT).
    pub pcat_compat: bool,
    /// The APIC ID of the first enabled processor entry. ACPI 6.5 §5.2.12 asks firmware
    /// to list the boot processor first; the running CPU's own APIC ID register is the
    /// authority, this is a cross-check.
    pub boot_cpu_apic_id: Option<u32>,
    /// Usable processor entries (enabled or online capable), xAPIC and x2APIC.
    pub cpus: u32,
    pub io_apics: heapless::Vec<IoApicEntry, MAX_IO_APICS>,
    /// ISA interrupt source overrides (other buses are ignored).
    pub overrides: heapless::Vec<IsaRoute, MAX_OVERRIDES>,
}

impl Madt {
    /// Where ISA IRQ `irq` arrives.
    #[must_use]
    pub fn isa_route(&self, irq: u8) -> IsaRoute {
        self.overrides
            .iter()
            .copied()
            .find(|o| o.irq == irq)
            .unwrap_or(IsaRoute {
                irq,
                gsi: u32::from(irq),
                polarity: Polarity::ActiveHigh,
                trigger: TriggerMode::Edge,
            })
    }

    /// The I/O APIC that receives `gsi` and its input pin: the one with the highest GSI
    /// base not above `gsi` (how many pins it has is only known from its version
    /// register, so the caller checks the pin against that).
    #[must_use]
    pub fn io_apic_for(&self, gsi: u32) -> Option<(IoApicEntry, u32)> {
        self.io_apics
            .iter()
            .copied()
            .filter(|a| a.gsi_base <= gsi)
            .max_by_key(|a| a.gsi_base)
            .map(|a| (a, gsi - a.gsi_base))
    }
}

/// MPS INTI flags (ACPI 6.5 Table 5.50) of an ISA source: "conforms to the bus" (00) is
/// ISA's active high, edge triggered; 01 is high/edge, 11 low/level; 10 is reserved and
/// read as the bus default.
fn inti_flags(flags: u16) -> (Polarity, TriggerMode) {
    let polarity = match flags & 0b11 {
        0b11 => Polarity::ActiveLow,
        _ => Polarity::ActiveHigh,
    };
    let trigger = match (flags >> 2) & 0b11 {
        0b11 => TriggerMode::Level,
        _ => TriggerMode::Edge,
    };
    (polarity, trigger)
}

/// Parses the body of a MADT (what follows the 36-byte header).
///
/// # Errors
/// [`AcpiError::Truncated`] when the fixed fields are missing or an interrupt controller
/// structure is shorter than its type requires or runs past the end;
/// [`AcpiError::NoIoApic`] when no I/O APIC is listed.
pub fn parse_madt(body: &[u8]) -> Result<Madt, AcpiError> {
    let truncated = AcpiError::Truncated(*b"APIC");
    let mut madt = Madt {
        local_apic_address: le_u32(body, MADT_LOCAL_APIC_ADDRESS)
            .map(u64::from)
            .ok_or(truncated)?,
        pcat_compat: le_u32(body, MADT_FLAGS).ok_or(truncated)? & MADT_PCAT_COMPAT != 0,
        boot_cpu_apic_id: None,
        cpus: 0,
        io_apics: heapless::Vec::new(),
        overrides: heapless::Vec::new(),
    };
    let mut rest = body.get(MADT_ENTRIES..).ok_or(truncated)?;
    while !rest.is_empty() {
        let (&kind, &len) = (
            rest.first().ok_or(truncated)?,
            rest.get(1).ok_or(truncated)?,
        );
        let len = usize::from(len);
        if len < 2 {
            return Err(truncated);
        }
        let entry = rest.get(..len).ok_or(truncated)?;
        rest = &rest[len..];
        let need = |min: usize| if len < min { Err(truncated) } else { Ok(()) };
        match kind {
            MADT_LOCAL_APIC | MADT_LOCAL_X2APIC => {
                let (id, flags) = if kind == MADT_LOCAL_APIC {
                    need(MADT_LOCAL_APIC_LEN)?;
                    (u32::from(entry[3]), le_u32(entry, 4).ok_or(truncated)?)
                } else {
                    need(MADT_LOCAL_X2APIC_LEN)?;
                    (
                        le_u32(entry, 4).ok_or(truncated)?,
                        le_u32(entry, 8).ok_or(truncated)?,
                    )
                };
                if flags & (LAPIC_ENABLED | LAPIC_ONLINE_CAPABLE) != 0 {
                    madt.cpus += 1;
                    if madt.boot_cpu_apic_id.is_none() && flags & LAPIC_ENABLED != 0 {
                        madt.boot_cpu_apic_id = Some(id);
                    }
                }
            }
            MADT_IO_APIC => {
                need(MADT_IO_APIC_LEN)?;
                let _ = madt.io_apics.push(IoApicEntry {
                    id: entry[2],
                    address: le_u32(entry, 4).ok_or(truncated)?,
                    gsi_base: le_u32(entry, 8).ok_or(truncated)?,
                });
            }
            MADT_SOURCE_OVERRIDE => {
                need(MADT_SOURCE_OVERRIDE_LEN)?;
                if entry[2] == ISA_BUS {
                    let flags = u16::from_le_bytes([entry[8], entry[9]]);
                    let (polarity, trigger) = inti_flags(flags);
                    let irq = entry[3];
                    // The first override of an IRQ wins; a repeat is ignored.
                    if !madt.overrides.iter().any(|o| o.irq == irq) {
                        let _ = madt.overrides.push(IsaRoute {
                            irq,
                            gsi: le_u32(entry, 4).ok_or(truncated)?,
                            polarity,
                            trigger,
                        });
                    }
                }
            }
            MADT_LOCAL_APIC_OVERRIDE => {
                need(MADT_LOCAL_APIC_OVERRIDE_LEN)?;
                madt.local_apic_address = le_u64(entry, 4).ok_or(truncated)?;
            }
            // Every other structure (NMI sources, local APIC NMI, SAPIC, GIC, ...) is
            // skipped by its length.
            _ => {}
        }
    }
    if madt.io_apics.is_empty() {
        return Err(AcpiError::NoIoApic);
    }
    Ok(madt)
}

/// Finds and parses the MADT from the RSDT and, if given, the XSDT (the XSDT preferred,
/// the RSDT as the fallback, as for [`power_off_method`]).
///
/// # Errors
/// See [`AcpiError`]: the first table missing or failing verification, or a malformed
/// MADT ([`parse_madt`]).
pub fn madt(rsdt: u32, xsdt: Option<u64>, mem: &impl PhysMemory) -> Result<Madt, AcpiError> {
    let table = locate(mem, rsdt, xsdt, "APIC")?;
    parse_madt(table.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory made of a few separate byte blocks.
    #[derive(Default)]
    struct FakeMemory {
        blocks: Vec<(u64, Vec<u8>)>,
    }

    impl FakeMemory {
        fn put(&mut self, addr: u64, bytes: impl Into<Vec<u8>>) -> &mut Self {
            self.blocks.push((addr, bytes.into()));
            self
        }
    }

    impl PhysMemory for FakeMemory {
        fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
            self.blocks.iter().find_map(|(base, bytes)| {
                let offset = usize::try_from(addr.checked_sub(*base)?).ok()?;
                bytes.get(offset..offset.checked_add(len)?)
            })
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize, over: usize) {
        bytes[at] = 0;
        let sum = bytes[..over].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        bytes[at] = sum.wrapping_neg();
    }

    fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let length = HEADER_LEN + body.len();
        let mut t = Vec::with_capacity(length);
        t.extend_from_slice(signature);
        t.extend_from_slice(&u32::try_from(length).unwrap().to_le_bytes());
        t.push(revision);
        t.push(0);
        t.extend_from_slice(b"LAZTST");
        t.extend_from_slice(b"TESTTABL");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"LZRS");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        fix_checksum(&mut t, 9, length);
        t
    }

    fn rsdt(entries: &[u32]) -> Vec<u8> {
        let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        table(b"RSDT", 1, &body)
    }

    fn xsdt(entries: &[u64]) -> Vec<u8> {
        let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        table(b"XSDT", 1, &body)
    }

    fn rsdp_v1(rsdt: u32) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(RSDP_SIGNATURE);
        r.push(0);
        r.extend_from_slice(b"LAZTST");
        r.push(0);
        r.extend_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8, RSDP_V1_LEN);
        r
    }

    fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
        let mut r = rsdp_v1(rsdt);
        r[RSDP_REVISION] = 2;
        r.extend_from_slice(&36u32.to_le_bytes());
        r.extend_from_slice(&xsdt.to_le_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        fix_checksum(&mut r, 8, RSDP_V1_LEN);
        fix_checksum(&mut r, 32, RSDP_V2_LEN);
        r
    }

    /// The FADT fields the power-off path reads; everything else stays zero.
    #[derive(Clone, Copy)]
    struct Fadt {
        length: usize,
        revision: u8,
        dsdt: u32,
        x_dsdt: u64,
        pm1a_cnt: u32,
        pm1b_cnt: u32,
        x_pm1a_cnt: (u8, u64),
        x_pm1b_cnt: (u8, u64),
    }

    impl Fadt {
        /// An ACPI 1.0 FADT (116 bytes), as old QEMU and Bochs BIOSes build.
        fn v1(pm1a_cnt: u32, dsdt: u32) -> Self {
            Self {
                length: 116,
                revision: 1,
                dsdt,
                x_dsdt: 0,
                pm1a_cnt,
                pm1b_cnt: 0,
                x_pm1a_cnt: (0, 0),
                x_pm1b_cnt: (0, 0),
            }
        }

        /// An ACPI 6 FADT (276 bytes).
        fn v6(x_pm1a_cnt: (u8, u64), x_dsdt: u64) -> Self {
            Self {
                length: 276,
                revision: 6,
                x_dsdt,
                x_pm1a_cnt,
                ..Self::v1(0, 0)
            }
        }

        fn bytes(&self) -> Vec<u8> {
            let mut t = table(b"FACP", self.revision, &vec![0; self.length - HEADER_LEN]);
            let mut put = |at: usize, value: &[u8]| {
                if at + value.len() <= self.length {
                    t[at..at + value.len()].copy_from_slice(value);
                }
            };
            put(FADT_DSDT, &self.dsdt.to_le_bytes());
            put(FADT_PM1A_CNT_BLK, &self.pm1a_cnt.to_le_bytes());
            put(FADT_PM1B_CNT_BLK, &self.pm1b_cnt.to_le_bytes());
            put(FADT_X_DSDT, &self.x_dsdt.to_le_bytes());
            for (at, (space, address)) in [
                (FADT_X_PM1A_CNT_BLK, self.x_pm1a_cnt),
                (FADT_X_PM1B_CNT_BLK, self.x_pm1b_cnt),
            ] {
                put(at, &[space, 16, 0, 2]);
                put(at + GAS_ADDRESS, &address.to_le_bytes());
            }
            fix_checksum(&mut t, 9, self.length);
            t
        }
    }

    fn dsdt(aml: &[u8]) -> Vec<u8> {
        table(b"DSDT", 2, aml)
    }

    /// Some AML that is not \_S5: `Scope (\_SB) { Name (_HID, ...) }`-like bytes,
    /// including a `_S5_` that is a reference, not a declaration.
    const AML_PREAMBLE: &[u8] = &[
        0x10, 0x0e, b'\\', b'_', b'S', b'B', b'_', 0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41, 0xd0,
        0x0a, 0x03, 0x70, b'_', b'S', b'5', b'_', 0x60,
    ];

    /// `Name (_S5, Package (4) { Zero, Zero, Zero, Zero })`, as QEMU generates it.
    const QEMU_S5: &[u8] = &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0, 0, 0, 0];

    fn aml(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const RSDT_ADDR: u32 = 0x7ffe_1a00;
    const FADT_ADDR: u32 = 0x7ffe_1800;
    const DSDT_ADDR: u32 = 0x7ffe_0040;
    const APIC_ADDR: u32 = 0x7ffe_1900;

    /// A machine with an RSDT listing an APIC table and `fadt`, and a DSDT of `aml`.
    fn rsdt_machine(fadt: Fadt, aml: &[u8]) -> FakeMemory {
        let mut mem = FakeMemory::default();
        mem.put(RSDT_ADDR.into(), rsdt(&[APIC_ADDR, FADT_ADDR]))
            .put(APIC_ADDR.into(), table(b"APIC", 1, &[0; 8]))
            .put(FADT_ADDR.into(), fadt.bytes())
            .put(DSDT_ADDR.into(), dsdt(aml));
        mem
    }

    #[test]
    fn qemu_like_machine_powers_off_with_s5_zero() {
        // The RSDP sits in the BIOS area among other data, 16-byte aligned.
        let mut bios = vec![0xaa; 0x2_0000];
        let rsdp = rsdp_v1(RSDT_ADDR);
        bios[0x1_5a40..0x1_5a40 + rsdp.len()].copy_from_slice(&rsdp);
        let at = find_rsdp_in(&bios, 0xe_0000).unwrap();
        assert_eq!(at, 0xf_5a40);
        let offset = usize::try_from(at - 0xe_0000).unwrap();
        let (revision, rsdt, xsdt) = rsdp_from_bytes(&bios[offset..]).unwrap();
        assert_eq!((revision, rsdt, xsdt), (0, RSDT_ADDR, None));

        let mem = rsdt_machine(Fadt::v1(0x604, DSDT_ADDR), &aml(&[AML_PREAMBLE, QEMU_S5]));
        let off = power_off_method(rsdt, xsdt, &mem).unwrap();
        assert_eq!(
            off,
            PowerOff {
                pm1a_cnt: 0x604,
                pm1b_cnt: None,
                slp_typ_a: 0,
                slp_typ_b: 0
            }
        );
        assert_eq!(off.pm1a_value(), 0x2000);
    }

    #[test]
    fn bochs_like_machine_with_root_prefixed_s5() {
        // `Name (\_S5, Package (2) { Zero, Zero })` with the PIIX4 PM block at 0xb000.
        let s5 = [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x04, 0x02, 0x00, 0x00,
        ];
        let mem = rsdt_machine(Fadt::v1(0xb004, DSDT_ADDR), &aml(&[AML_PREAMBLE, &s5]));
        let off = power_off_method(RSDT_ADDR, None, &mem).unwrap();
        assert_eq!(off.pm1a_cnt, 0xb004);
        assert_eq!(off.pm1b_cnt, None);
        assert_eq!((off.slp_typ_a, off.slp_typ_b), (0, 0));
        assert_eq!(off.pm1a_value(), 0x2000);
    }

    #[test]
    fn byte_prefixed_package_through_the_xsdt() {
        // A real board: ACPI 6 FADT reached through the XSDT, extended fields above 4 GiB,
        // legacy fields deliberately different to show the extended ones win.
        let xsdt_addr = 0x1_0000_2000;
        let x_dsdt_addr = 0x1_2345_0000;
        let mut fadt = Fadt::v6((GAS_SPACE_SYSTEM_IO, 0x1804), x_dsdt_addr);
        fadt.pm1a_cnt = 0x404;
        fadt.dsdt = DSDT_ADDR;
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x07, 0x0a, 0x07, 0x00, 0x00,
        ];
        let mut mem = FakeMemory::default();
        mem.put(
            xsdt_addr,
            xsdt(&[u64::from(APIC_ADDR), u64::from(FADT_ADDR)]),
        )
        .put(APIC_ADDR.into(), table(b"APIC", 1, &[0; 8]))
        .put(FADT_ADDR.into(), fadt.bytes())
        .put(x_dsdt_addr, dsdt(&aml(&[AML_PREAMBLE, &s5])))
        .put(DSDT_ADDR.into(), dsdt(QEMU_S5));

        let rsdp = rsdp_v2(0, xsdt_addr);
        let (revision, rsdt, xsdt) = rsdp_from_bytes(&rsdp).unwrap();
        assert_eq!((revision, rsdt, xsdt), (2, 0, Some(xsdt_addr)));
        let off = power_off_method(rsdt, xsdt, &mem).unwrap();
        assert_eq!(off.pm1a_cnt, 0x1804);
        assert_eq!((off.slp_typ_a, off.slp_typ_b), (7, 7));
        assert_eq!(off.pm1a_value(), 0x3c00);
    }

    #[test]
    fn word_prefixed_package_with_two_byte_length_and_pm1b() {
        // Contents: NumElements, WordPrefix 5, WordPrefix 6, Zero, Zero = 9 bytes, plus a
        // 2-byte PkgLength = 11.
        let s5 = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x4b, 0x00, 0x04, 0x0b, 0x05, 0x00, 0x0b, 0x06,
            0x00, 0x00, 0x00,
        ];
        let mut fadt = Fadt::v1(0x1004, DSDT_ADDR);
        fadt.pm1b_cnt = 0x1104;
        let mem = rsdt_machine(fadt, &aml(&[AML_PREAMBLE, &s5, QEMU_S5]));
        let off = power_off_method(RSDT_ADDR, None, &mem).unwrap();
        assert_eq!(
            off,
            PowerOff {
                pm1a_cnt: 0x1004,
                pm1b_cnt: Some(0x1104),
                slp_typ_a: 5,
                slp_typ_b: 6
            }
        );
        assert_eq!(off.pm1a_value(), (5 << 10) | 0x2000);
        assert_eq!(off.pm1b_value(), (6 << 10) | 0x2000);
    }

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(&[0x06]), Some((6, 1)));
        assert_eq!(pkg_length(&[0x3f]), Some((63, 1)));
        assert_eq!(pkg_length(&[0x4b, 0x01]), Some((0x1b, 2)));
        assert_eq!(pkg_length(&[0x85, 0x34, 0x12]), Some((0x12345, 3)));
        assert_eq!(pkg_length(&[0xc5, 0x34, 0x12, 0x0f]), Some((0x0f12345, 4)));
        assert_eq!(pkg_length(&[0x55, 0x00]), None, "reserved bits set");
        assert_eq!(pkg_length(&[0x85, 0x34]), None, "truncated");
        assert_eq!(pkg_length(&[]), None);
    }

    #[test]
    fn integer_encodings_and_short_packages() {
        assert_eq!(aml_integer(&[0x00]), Some((0, 1)));
        assert_eq!(aml_integer(&[0x01]), Some((1, 1)));
        assert_eq!(aml_integer(&[0x0a, 0x05]), Some((5, 2)));
        assert_eq!(aml_integer(&[0x0b, 0x34, 0x12]), Some((0x1234, 3)));
        assert_eq!(aml_integer(&[0x0c, 0x07, 0, 0, 0]), Some((7, 5)));
        assert_eq!(aml_integer(&[0x0e, 1, 0, 0, 0, 0, 0, 0, 0]), Some((1, 9)));
        assert_eq!(aml_integer(&[0xff]), None, "OnesOp is no sleep type");
        assert_eq!(aml_integer(&[0x0b, 0x34]), None);

        // One element: PM1b gets the same value. A 3-byte PkgLength (lead 0x85: two more
        // bytes, low nibble 5) covering itself, the count and one OneOp.
        let one = [
            0x08, b'_', b'S', b'5', b'_', 0x12, 0x85, 0x00, 0x00, 0x01, 0x01,
        ];
        assert_eq!(find_s5(&one), Some((1, 1)));

        // A package that claims more bytes than the table has is ignored.
        let cut = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x04, 0x0a, 0x05];
        assert_eq!(find_s5(&cut), None);
        // An empty package carries nothing.
        assert_eq!(
            find_s5(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x02, 0x00]),
            None
        );
        // A Method named _S5_ is not a package of constants.
        assert_eq!(
            find_s5(&[0x14, 0x08, b'_', b'S', b'5', b'_', 0x00, 0xa4, 0x00]),
            None
        );
    }

    #[test]
    fn bad_checksums_are_rejected() {
        let good = Fadt::v1(0x604, DSDT_ADDR);

        let mut rsdp = rsdp_v1(RSDT_ADDR);
        rsdp[12] ^= 1;
        assert_eq!(rsdp_from_bytes(&rsdp), Err(AcpiError::BadRsdp));
        let mut rsdp = rsdp_v2(RSDT_ADDR, 0x1000);
        rsdp[34] ^= 1; // reserved byte: only the extended checksum covers it
        assert_eq!(rsdp_from_bytes(&rsdp), Err(AcpiError::BadRsdp));

        let mut mem = rsdt_machine(good, QEMU_S5);
        mem.blocks[0].1[40] ^= 1; // an RSDT entry
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::BadChecksum(*b"RSDT"))
        );

        let mut mem = rsdt_machine(good, QEMU_S5);
        mem.blocks[2].1[100] ^= 1;
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::BadChecksum(*b"FACP"))
        );

        let mut mem = rsdt_machine(good, QEMU_S5);
        mem.blocks[3].1[HEADER_LEN] ^= 1;
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::BadChecksum(*b"DSDT"))
        );
    }

    #[test]
    fn missing_tables() {
        let mut mem = FakeMemory::default();
        mem.put(RSDT_ADDR.into(), rsdt(&[APIC_ADDR, 0]))
            .put(APIC_ADDR.into(), table(b"APIC", 1, &[0; 8]));
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::TableNotFound("FACP"))
        );
        assert_eq!(
            power_off_method(0, None, &mem),
            Err(AcpiError::TableNotFound("RSDT"))
        );
        assert_eq!(
            power_off_method(0x1234_5000, None, &mem),
            Err(AcpiError::TableNotFound("RSDT")),
            "nothing readable there"
        );
        assert_eq!(
            power_off_method(APIC_ADDR, None, &mem),
            Err(AcpiError::TableNotFound("RSDT")),
            "wrong signature"
        );

        // The DSDT pointer leads to something else.
        let mem = rsdt_machine(Fadt::v1(0x604, APIC_ADDR), QEMU_S5);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::TableNotFound("DSDT"))
        );
        let mem = rsdt_machine(Fadt::v1(0x604, 0), QEMU_S5);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::TableNotFound("DSDT"))
        );
    }

    #[test]
    fn dsdt_without_s5() {
        let mem = rsdt_machine(Fadt::v1(0x604, DSDT_ADDR), AML_PREAMBLE);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::NoS5)
        );
        let mem = rsdt_machine(Fadt::v1(0x604, DSDT_ADDR), &[]);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::NoS5)
        );
    }

    #[test]
    fn pm1a_control_port_choice() {
        // Extended block in memory space: the legacy I/O port is used instead.
        let mut fadt = Fadt::v6((0, 0xfed8_0804), 0);
        fadt.pm1a_cnt = 0x804;
        fadt.dsdt = DSDT_ADDR;
        let mem = rsdt_machine(fadt, QEMU_S5);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem).unwrap().pm1a_cnt,
            0x804
        );

        // Extended I/O block with a zero address: also the legacy port.
        let mut fadt = Fadt::v6((GAS_SPACE_SYSTEM_IO, 0), 0);
        fadt.pm1a_cnt = 0x808;
        fadt.dsdt = DSDT_ADDR;
        fadt.x_pm1b_cnt = (GAS_SPACE_SYSTEM_IO, 0x908);
        let mem = rsdt_machine(fadt, QEMU_S5);
        let off = power_off_method(RSDT_ADDR, None, &mem).unwrap();
        assert_eq!((off.pm1a_cnt, off.pm1b_cnt), (0x808, Some(0x908)));

        // No port anywhere.
        let mut fadt = Fadt::v6((0, 0xfed8_0804), 0);
        fadt.dsdt = DSDT_ADDR;
        let mem = rsdt_machine(fadt, QEMU_S5);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::NoPm1aControl)
        );
        // A legacy "port" that does not fit in 16 bits is no port.
        let mem = rsdt_machine(Fadt::v1(0x1_0000, DSDT_ADDR), QEMU_S5);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::NoPm1aControl)
        );
    }

    #[test]
    fn short_tables_are_truncated() {
        let mut fadt = Fadt::v1(0x604, DSDT_ADDR);
        fadt.length = 60;
        let mem = rsdt_machine(fadt, QEMU_S5);
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::Truncated(*b"FACP"))
        );

        // A DSDT whose length runs past readable memory.
        let mut mem = rsdt_machine(Fadt::v1(0x604, DSDT_ADDR), QEMU_S5);
        let dsdt = &mut mem.blocks[3].1;
        dsdt[HEADER_LENGTH..HEADER_LENGTH + 4].copy_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::Truncated(*b"DSDT"))
        );

        // A length smaller than the header.
        let mut mem = rsdt_machine(Fadt::v1(0x604, DSDT_ADDR), QEMU_S5);
        mem.blocks[0].1[HEADER_LENGTH..HEADER_LENGTH + 4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            power_off_method(RSDT_ADDR, None, &mem),
            Err(AcpiError::Truncated(*b"RSDT"))
        );
    }

    #[test]
    fn x_dsdt_needs_a_long_enough_fadt() {
        // An ACPI 2.0-style FADT cut off before X_DSDT: the legacy DSDT is used.
        let mut fadt = Fadt::v6((0, 0), 0x1_0000_0000);
        fadt.length = 140;
        fadt.pm1a_cnt = 0x604;
        fadt.dsdt = DSDT_ADDR;
        let mem = rsdt_machine(fadt, QEMU_S5);
        assert!(power_off_method(RSDT_ADDR, None, &mem).is_ok());
    }

    #[test]
    fn xsdt_is_preferred_and_rsdt_is_the_fallback() {
        let xsdt_addr = 0x7ffe_1c00u64;
        let other_fadt = 0x7ffe_1e00u32;
        let mut mem = rsdt_machine(Fadt::v1(0x604, DSDT_ADDR), QEMU_S5);
        mem.put(xsdt_addr, xsdt(&[u64::from(other_fadt)]))
            .put(other_fadt.into(), Fadt::v1(0xb004, DSDT_ADDR).bytes());
        let off = power_off_method(RSDT_ADDR, Some(xsdt_addr), &mem).unwrap();
        assert_eq!(off.pm1a_cnt, 0xb004, "the XSDT's FADT");

        // Break the XSDT: the RSDT still works.
        let x = mem
            .blocks
            .iter()
            .position(|(a, _)| *a == xsdt_addr)
            .unwrap();
        mem.blocks[x].1[HEADER_LEN] ^= 1;
        let off = power_off_method(RSDT_ADDR, Some(xsdt_addr), &mem).unwrap();
        assert_eq!(off.pm1a_cnt, 0x604, "the RSDT's FADT");

        // Without an RSDT, the XSDT's error is reported.
        assert_eq!(
            power_off_method(0, Some(xsdt_addr), &mem),
            Err(AcpiError::BadChecksum(*b"XSDT"))
        );
        // A zero XSDT address means "use the RSDT".
        assert_eq!(
            power_off_method(RSDT_ADDR, Some(0), &mem).unwrap().pm1a_cnt,
            0x604
        );
    }

    #[test]
    fn rsdp_parsing_and_search() {
        let v2 = rsdp_v2(0x1000, 0);
        assert_eq!(rsdp_from_bytes(&v2), Ok((2, 0x1000, None)), "zero XSDT");
        assert_eq!(
            rsdp_from_bytes(&v2[..20]),
            Err(AcpiError::BadRsdp),
            "rev 2 needs 36 bytes"
        );
        assert_eq!(rsdp_from_bytes(&v2[..19]), Err(AcpiError::BadRsdp));
        let mut wrong = rsdp_v1(0x1000);
        wrong[0] = b'X';
        fix_checksum(&mut wrong, 8, RSDP_V1_LEN);
        assert_eq!(rsdp_from_bytes(&wrong), Err(AcpiError::BadRsdp));
        // A rev 2 RSDP whose length field is smaller than the structure.
        let mut short = rsdp_v2(0x1000, 0x2000);
        short[RSDP_LENGTH..RSDP_LENGTH + 4].copy_from_slice(&20u32.to_le_bytes());
        fix_checksum(&mut short, 8, RSDP_V1_LEN);
        fix_checksum(&mut short, 32, RSDP_V2_LEN);
        assert_eq!(rsdp_from_bytes(&short), Err(AcpiError::BadRsdp));

        let rsdp = rsdp_v1(0x1000);
        // Misaligned copy: not found.
        let mut area = vec![0u8; 256];
        area[8..28].copy_from_slice(&rsdp);
        assert_eq!(find_rsdp_in(&area, 0x9_fc00), None);
        // The same offset is aligned when the area starts 8 bytes past a boundary.
        assert_eq!(find_rsdp_in(&area, 0x9_fc08), Some(0x9_fc10));
        // The first valid one wins; a bad one before it is skipped.
        let mut area = vec![0u8; 256];
        let mut bad = rsdp.clone();
        bad[9] ^= 1;
        area[32..52].copy_from_slice(&bad);
        area[64..84].copy_from_slice(&rsdp);
        area[128..148].copy_from_slice(&rsdp);
        assert_eq!(find_rsdp_in(&area, 0xe_0000), Some(0xe_0040));
        assert_eq!(find_rsdp_in(&[], 0xe_0000), None);
        // A structure cut off by the end of the area is not found.
        assert_eq!(find_rsdp_in(&area[..140], 0xe_0000), Some(0xe_0040));
        assert_eq!(find_rsdp_in(&area[64..80], 0xe_0040), None);
    }

    #[test]
    fn messages() {
        assert_eq!(
            AcpiError::BadChecksum(*b"FACP").to_string(),
            "ACPI table FACP has a bad checksum"
        );
        assert_eq!(
            AcpiError::Truncated([b'D', 0, b'S', 0xff]).to_string(),
            "ACPI table D?S? is truncated"
        );
        assert_eq!(
            AcpiError::TableNotFound("FACP").to_string(),
            "ACPI table FACP not found"
        );
        for e in [
            AcpiError::BadRsdp,
            AcpiError::NoS5,
            AcpiError::NoPm1aControl,
        ] {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains('\n'));
        }
    }

    #[test]
    fn sleep_type_is_masked_to_three_bits() {
        let off = PowerOff {
            pm1a_cnt: 0x604,
            pm1b_cnt: None,
            slp_typ_a: 0xff,
            slp_typ_b: 0x5,
        };
        assert_eq!(off.pm1a_value(), 0x3c00);
        assert_eq!(off.pm1b_value(), 0x3400);
    }

    /// MADT body builders: the fixed fields, then interrupt controller structures.
    fn madt_body(lapic: u32, flags: u32, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&lapic.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        for e in entries {
            b.extend_from_slice(e);
        }
        b
    }

    fn local_apic(uid: u8, id: u8, flags: u32) -> Vec<u8> {
        let mut e = vec![MADT_LOCAL_APIC, 8, uid, id];
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    fn local_x2apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = vec![MADT_LOCAL_X2APIC, 16, 0, 0];
        e.extend_from_slice(&id.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e.extend_from_slice(&7u32.to_le_bytes());
        e
    }

    fn io_apic(id: u8, address: u32, gsi_base: u32) -> Vec<u8> {
        let mut e = vec![MADT_IO_APIC, 12, id, 0];
        e.extend_from_slice(&address.to_le_bytes());
        e.extend_from_slice(&gsi_base.to_le_bytes());
        e
    }

    fn source_override(bus: u8, irq: u8, gsi: u32, flags: u16) -> Vec<u8> {
        let mut e = vec![MADT_SOURCE_OVERRIDE, 10, bus, irq];
        e.extend_from_slice(&gsi.to_le_bytes());
        e.extend_from_slice(&flags.to_le_bytes());
        e
    }

    /// What the Bochs and QEMU BIOSes build: one CPU, one I/O APIC at 0xfec00000, IRQ 0
    /// on GSI 2, the PCI IRQs level triggered, plus a local APIC NMI structure (type 4).
    fn pc_madt() -> Vec<u8> {
        madt_body(
            0xfee0_0000,
            1,
            &[
                local_apic(0, 0, 1),
                io_apic(1, 0xfec0_0000, 0),
                source_override(0, 0, 2, 0),
                source_override(0, 5, 5, 0x000d),
                source_override(0, 9, 9, 0x000d),
                vec![4, 6, 0xff, 0x05, 0x00, 0x01],
            ],
        )
    }

    #[test]
    fn madt_of_a_pc() {
        let m = parse_madt(&pc_madt()).unwrap();
        assert_eq!(m.local_apic_address, 0xfee0_0000);
        assert!(m.pcat_compat);
        assert_eq!((m.boot_cpu_apic_id, m.cpus), (Some(0), 1));
        assert_eq!(
            m.io_apics.as_slice(),
            &[IoApicEntry {
                id: 1,
                address: 0xfec0_0000,
                gsi_base: 0
            }]
        );
        let timer = m.isa_route(0);
        assert_eq!(
            timer,
            IsaRoute {
                irq: 0,
                gsi: 2,
                polarity: Polarity::ActiveHigh,
                trigger: TriggerMode::Edge
            }
        );
        assert_eq!(
            m.io_apic_for(timer.gsi).map(|(a, pin)| (a.id, pin)),
            Some((1, 2))
        );
        let sci = m.isa_route(9);
        assert_eq!(
            (sci.polarity, sci.trigger),
            (Polarity::ActiveHigh, TriggerMode::Level)
        );
        // No override: identity, ISA defaults.
        assert_eq!(
            m.isa_route(4),
            IsaRoute {
                irq: 4,
                gsi: 4,
                polarity: Polarity::ActiveHigh,
                trigger: TriggerMode::Edge
            }
        );
    }

    #[test]
    fn madt_found_through_rsdt_and_xsdt() {
        let mut mem = FakeMemory::default();
        mem.put(RSDT_ADDR.into(), rsdt(&[FADT_ADDR, APIC_ADDR]))
            .put(APIC_ADDR.into(), table(b"APIC", 3, &pc_madt()))
            .put(FADT_ADDR.into(), Fadt::v1(0x604, DSDT_ADDR).bytes());
        let m = madt(RSDT_ADDR, None, &mem).unwrap();
        assert_eq!(m.isa_route(0).gsi, 2);

        // The XSDT's MADT is preferred; a broken XSDT falls back to the RSDT.
        let xsdt_addr = 0x7ffe_1c00u64;
        let other = 0x7ffe_2000u64;
        let two_io_apics = madt_body(
            0xfee0_0000,
            0,
            &[io_apic(2, 0xfec0_1000, 0), local_apic(0, 3, 1)],
        );
        mem.put(xsdt_addr, xsdt(&[other]))
            .put(other, table(b"APIC", 3, &two_io_apics));
        let m = madt(RSDT_ADDR, Some(xsdt_addr), &mem).unwrap();
        assert_eq!((m.io_apics[0].id, m.boot_cpu_apic_id), (2, Some(3)));
        assert!(!m.pcat_compat);
        let x = mem
            .blocks
            .iter()
            .position(|(a, _)| *a == xsdt_addr)
            .unwrap();
        mem.blocks[x].1[HEADER_LEN] ^= 1;
        assert_eq!(
            madt(RSDT_ADDR, Some(xsdt_addr), &mem).unwrap().io_apics[0].id,
            1
        );

        // No MADT at all.
        let mut mem = FakeMemory::default();
        mem.put(RSDT_ADDR.into(), rsdt(&[FADT_ADDR]))
            .put(FADT_ADDR.into(), Fadt::v1(0x604, DSDT_ADDR).bytes());
        assert_eq!(
            madt(RSDT_ADDR, None, &mem),
            Err(AcpiError::TableNotFound("APIC"))
        );
        // A MADT with a bad checksum.
        let mut mem = FakeMemory::default();
        let mut bad = table(b"APIC", 3, &pc_madt());
        bad[HEADER_LEN + 20] ^= 1;
        mem.put(RSDT_ADDR.into(), rsdt(&[APIC_ADDR]))
            .put(APIC_ADDR.into(), bad);
        assert_eq!(
            madt(RSDT_ADDR, None, &mem),
            Err(AcpiError::BadChecksum(*b"APIC"))
        );
    }

    #[test]
    fn madt_processors_and_overrides() {
        let body = madt_body(
            0xfee0_0000,
            0,
            &[
                // Disabled, not online capable: not counted, not the boot CPU.
                local_apic(0, 9, 0),
                // Online capable only: counted, but not running, so not the boot CPU.
                local_apic(1, 8, 2),
                local_x2apic(0x100, 1),
                local_apic(2, 4, 1),
                io_apic(0, 0xfec0_0000, 0),
                io_apic(1, 0xfec1_0000, 24),
                // Active low, level; the repeat of IRQ 0 is ignored; another bus is too.
                source_override(0, 0, 20, 0x000f),
                source_override(0, 0, 2, 0),
                source_override(1, 3, 30, 0),
                // Local APIC address override.
                {
                    let mut e = vec![MADT_LOCAL_APIC_OVERRIDE, 12, 0, 0];
                    e.extend_from_slice(&0x1_fee0_0000u64.to_le_bytes());
                    e
                },
                // An unknown structure type is skipped by its length.
                vec![0x7f, 5, 1, 2, 3],
            ],
        );
        let m = parse_madt(&body).unwrap();
        assert_eq!((m.boot_cpu_apic_id, m.cpus), (Some(0x100), 3));
        assert_eq!(m.local_apic_address, 0x1_fee0_0000);
        let timer = m.isa_route(0);
        assert_eq!(
            (timer.gsi, timer.polarity, timer.trigger),
            (20, Polarity::ActiveLow, TriggerMode::Level)
        );
        assert_eq!(m.isa_route(3).gsi, 3, "bus 1 overrides are not ISA");
        assert_eq!(m.io_apic_for(20).map(|(a, p)| (a.id, p)), Some((0, 20)));
        assert_eq!(m.io_apic_for(27).map(|(a, p)| (a.id, p)), Some((1, 3)));
        // The reserved polarity/trigger encoding 10b reads as the ISA default.
        assert_eq!(
            inti_flags(0b1010),
            (Polarity::ActiveHigh, TriggerMode::Edge)
        );
        assert_eq!(
            inti_flags(0b0101),
            (Polarity::ActiveHigh, TriggerMode::Edge)
        );
    }

    #[test]
    fn malformed_madts() {
        let truncated = Err(AcpiError::Truncated(*b"APIC"));
        assert_eq!(parse_madt(&[0; 7]), truncated);
        // Fixed fields only: no I/O APIC.
        assert_eq!(parse_madt(&[0; 8]), Err(AcpiError::NoIoApic));
        let no_io = madt_body(0xfee0_0000, 1, &[local_apic(0, 0, 1)]);
        assert_eq!(parse_madt(&no_io), Err(AcpiError::NoIoApic));
        // A structure length below 2 would loop forever: refused.
        let zero_len = madt_body(0xfee0_0000, 1, &[vec![0x7f, 0]]);
        assert_eq!(parse_madt(&zero_len), truncated);
        // A structure running past the end of the table.
        let mut past = pc_madt();
        past.extend_from_slice(&[MADT_IO_APIC, 12, 0, 0]);
        assert_eq!(parse_madt(&past), truncated);
        // A known type shorter than its layout.
        let short = madt_body(0, 0, &[vec![MADT_IO_APIC, 8, 0, 0, 0, 0, 0xc0, 0xfe]]);
        assert_eq!(parse_madt(&short), truncated);
        // A lone type byte at the end.
        let mut lone = pc_madt();
        lone.push(MADT_IO_APIC);
        assert_eq!(parse_madt(&lone), truncated);
        assert_eq!(
            AcpiError::NoIoApic.to_string(),
            "the ACPI MADT lists no I/O APIC"
        );
    }
}
