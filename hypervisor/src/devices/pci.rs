//! The chipset ports around PCI: configuration mechanism #1 (0xcf8 address, 0xcfc-0xcff
//! data) with no device behind it, the reset control register (0xcf9) and System
//! Control Port A (0x92).
//!
//! Why answer at all when there is no PCI device: Linux probes configuration mechanism
//! #1 by writing 0x80000000 to 0xcf8 and reading it back, then scans bus 0. An address
//! register that reads back what was written, and a data port that reads all ones (what
//! a configuration read of an absent function returns, a master abort), let it conclude
//! "mechanism present, nothing on the bus" instead of guessing from floating ports.
//! (Without firmware tables claiming a recent machine, Linux then also requires a host
//! bridge or a known vendor on bus 0, finds none and runs without PCI; either way no
//! device appears.)
//!
//! Why the two reset registers live here: they share the chipset (0xcf9 sits inside the
//! 0xcf8-0xcff window, decoded by access size), and they are ways a guest reboots.
//! Linux's `reboot=pci` writes 0xcf9 with bit 1 (hard reset) and then bits 1 and 2;
//! port 0x92 bit 0 is the "fast reset" of PS/2-era machines. Either sets
//! `DeviceEvents::reset`. Real chipsets act on a 0-to-1 transition of the bit; here any
//! write with the bit set asks for a reset, which is the same thing for a guest
//! because the reset it asks for puts both registers back to 0.
//!
//! How accesses are decoded, as on the chipset: only a 32-bit access at 0xcf8 reaches
//! the address register; a byte at 0xcf9 is the reset control register; other bytes or
//! words at 0xcf8-0xcfb are not claimed (read 0xff, writes ignored), which is also
//! what makes Linux's probe for the old mechanism #2 fail. Any access at 0xcfc-0xcff
//! reads all ones and writes nothing, whatever the address register says. A20 cannot
//! be turned off in a VM here, so port 0x92 bit 1 always reads 1.

use super::{BadState, DeviceEvents, Named};

pub const SYSTEM_CONTROL_A: u16 = 0x92;
pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const RESET_CONTROL: u16 = 0xcf9;
pub const CONFIG_DATA: u16 = 0xcfc;

/// Port 0x92 bit 0: fast reset.
const PORT_A_RESET: u8 = 0x01;
/// Port 0x92 bit 1: A20 gate.
const PORT_A_A20: u8 = 0x02;
/// 0xcf9 bit 2: reset the CPU (with bit 1: hard, without: soft; both reset a VM here).
const RCR_RESET_CPU: u8 = 0x04;

/// The registers. The padding is explicit so that every byte of the state is defined
/// (it is kept in the arena and copied byte for byte).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// CONFIG_ADDRESS as last written.
    address: u32,
    /// 0xcf9 as last written.
    reset_control: u8,
    /// Port 0x92 as last written.
    port_a: u8,
    pad: [u8; 2],
}

impl Named for PciHost {
    const NAME: &'static str = "pci";
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    pub const PORTS: &'static [(u16, u16)] = &[
        (SYSTEM_CONTROL_A, SYSTEM_CONTROL_A),
        (CONFIG_ADDRESS, CONFIG_DATA + 3),
    ];

    /// Everything 0 (A20 reads as on regardless).
    pub const fn new() -> Self {
        PciHost {
            address: 0,
            reset_control: 0,
            port_a: 0,
            pad: [0; 2],
        }
    }

    /// A guest read of `size` bytes at `port`.
    pub fn read(&mut self, port: u16, size: u8, _now_ns: u64, _ev: &mut DeviceEvents) -> u32 {
        if port == CONFIG_ADDRESS && super::access_width(size) == 4 {
            return self.address;
        }
        let mut value = 0;
        for i in 0..super::access_width(size) {
            let byte = match port.wrapping_add(i) {
                SYSTEM_CONTROL_A => self.port_a | PORT_A_A20,
                RESET_CONTROL => self.reset_control,
                // Configuration data of a function that is not there: all ones. Other
                // bytes are unclaimed and float to all ones as well.
                _ => 0xff,
            };
            value |= u32::from(byte) << (8 * i);
        }
        value
    }

    /// A guest write of the low `size` bytes of `value` at `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, _now_ns: u64, ev: &mut DeviceEvents) {
        if port == CONFIG_ADDRESS && super::access_width(size) == 4 {
            self.address = value;
            return;
        }
        for i in 0..super::access_width(size) {
            let byte = (value >> (8 * i)) as u8;
            match port.wrapping_add(i) {
                SYSTEM_CONTROL_A => {
                    self.port_a = byte;
                    if byte & PORT_A_RESET != 0 {
                        ev.reset = true;
                    }
                }
                RESET_CONTROL => {
                    self.reset_control = byte;
                    if byte & RCR_RESET_CPU != 0 {
                        ev.reset = true;
                    }
                }
                // Configuration data writes go nowhere; the rest is not claimed.
                _ => {}
            }
        }
    }

    /// CONFIG_ADDRESS as the guest last wrote it.
    pub fn config_address(&self) -> u32 {
        self.address
    }

    /// Bound checks for recovery: every value of the registers is one a guest can
    /// write, so only the padding can be wrong.
    pub fn validate(&self) -> Result<(), BadState> {
        if self.pad != [0; 2] {
            return Err(BadState {
                device: Self::NAME,
                what: "padding not zero",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pci: &mut PciHost, port: u16, size: u8) -> u32 {
        let mut ev = DeviceEvents::default();
        let value = pci.read(port, size, 0, &mut ev);
        assert_eq!(ev, DeviceEvents::default(), "reads have no effect outside");
        value
    }

    /// Writes and returns whether a reset was asked for.
    fn write(pci: &mut PciHost, port: u16, size: u8, value: u32) -> bool {
        let mut ev = DeviceEvents::default();
        pci.write(port, size, value, 0, &mut ev);
        assert_eq!((ev.raise, ev.lower, ev.serial_out.len()), (0, 0, 0));
        assert_eq!(pci.validate(), Ok(()));
        ev.reset
    }

    #[test]
    fn power_on_state() {
        let mut pci = PciHost::new();
        assert_eq!(pci, PciHost::default());
        assert_eq!(pci.validate(), Ok(()));
        assert_eq!(read(&mut pci, CONFIG_ADDRESS, 4), 0);
        assert_eq!(read(&mut pci, RESET_CONTROL, 1), 0);
        assert_eq!(read(&mut pci, SYSTEM_CONTROL_A, 1), 0x02);
    }

    #[test]
    fn config_address_reads_back_what_was_written() {
        let mut pci = PciHost::new();
        for address in [
            0x8000_0000,
            0x8000_f808,
            0x0000_0000,
            0xffff_ffff,
            0x8a01_2345,
        ] {
            assert!(!write(&mut pci, CONFIG_ADDRESS, 4, address));
            assert_eq!(read(&mut pci, CONFIG_ADDRESS, 4), address);
            assert_eq!(pci.config_address(), address);
        }
    }

    #[test]
    fn every_function_reads_all_ones_and_ignores_writes() {
        let mut pci = PciHost::new();
        for bus in [0u32, 1, 255] {
            for device in [0u32, 1, 31] {
                for function in [0u32, 7] {
                    for register in [0x00u32, 0x08, 0x3c, 0xfc] {
                        let address =
                            0x8000_0000 | bus << 16 | device << 11 | function << 8 | register;
                        write(&mut pci, CONFIG_ADDRESS, 4, address);
                        assert!(!write(&mut pci, CONFIG_DATA, 4, 0x1234_5678));
                        assert_eq!(read(&mut pci, CONFIG_DATA, 4), 0xffff_ffff);
                        assert_eq!(read(&mut pci, CONFIG_DATA + 2, 2), 0xffff);
                        assert_eq!(read(&mut pci, CONFIG_DATA + 3, 1), 0xff);
                    }
                }
            }
        }
        write(&mut pci, CONFIG_ADDRESS, 4, 0);
        assert_eq!(
            read(&mut pci, CONFIG_DATA, 4),
            0xffff_ffff,
            "enable bit clear"
        );
        assert_eq!(pci, PciHost::new(), "data writes changed nothing");
    }

    /// Linux's `pci_check_type1()` and `pci_check_type2()`, and the bus 0 scan of its
    /// sanity check: mechanism #1 answers, #2 does not, no device is found.
    #[test]
    fn linux_probe_sees_mechanism_1_and_an_empty_bus() {
        let mut pci = PciHost::new();
        write(&mut pci, CONFIG_ADDRESS + 3, 1, 0x01);
        let saved = read(&mut pci, CONFIG_ADDRESS, 4);
        write(&mut pci, CONFIG_ADDRESS, 4, 0x8000_0000);
        assert_eq!(
            read(&mut pci, CONFIG_ADDRESS, 4),
            0x8000_0000,
            "type 1 present"
        );
        for devfn in 0..=255u32 {
            write(&mut pci, CONFIG_ADDRESS, 4, 0x8000_0000 | devfn << 8 | 0x08);
            let class = read(&mut pci, CONFIG_DATA + 2, 2);
            write(&mut pci, CONFIG_ADDRESS, 4, 0x8000_0000 | devfn << 8);
            let vendor = read(&mut pci, CONFIG_DATA, 2);
            assert_eq!((class, vendor), (0xffff, 0xffff), "devfn {devfn}");
        }
        write(&mut pci, CONFIG_ADDRESS, 4, saved);

        write(&mut pci, CONFIG_ADDRESS + 3, 1, 0x00);
        write(&mut pci, CONFIG_ADDRESS, 1, 0x00);
        write(&mut pci, CONFIG_ADDRESS + 2, 1, 0x00);
        assert_ne!(read(&mut pci, CONFIG_ADDRESS, 1), 0x00, "type 2 absent");
        assert_ne!(read(&mut pci, CONFIG_ADDRESS + 2, 1), 0x00);
        assert_eq!(
            pci.config_address(),
            saved,
            "byte writes left the address alone"
        );
    }

    #[test]
    fn narrow_accesses_at_0xcf8_are_not_the_address_register() {
        let mut pci = PciHost::new();
        write(&mut pci, CONFIG_ADDRESS, 4, 0x8000_1234);
        assert_eq!(
            read(&mut pci, CONFIG_ADDRESS, 2),
            0x00ff,
            "0xcf8 floats, 0xcf9 is RCR"
        );
        assert_eq!(read(&mut pci, CONFIG_ADDRESS + 2, 2), 0xffff);
        write(&mut pci, CONFIG_ADDRESS, 2, 0x0000);
        write(&mut pci, CONFIG_ADDRESS + 2, 2, 0x0000);
        assert_eq!(pci.config_address(), 0x8000_1234);
    }

    #[test]
    fn reset_control_register() {
        let mut pci = PciHost::new();
        // Linux's reboot=pci: read, clear bits 1 and 2, hard reset armed, then go.
        let cf9 = read(&mut pci, RESET_CONTROL, 1) as u8 & !0x06;
        assert!(!write(&mut pci, RESET_CONTROL, 1, u32::from(cf9 | 0x02)));
        assert_eq!(read(&mut pci, RESET_CONTROL, 1), 0x02);
        assert!(write(&mut pci, RESET_CONTROL, 1, u32::from(cf9 | 0x06)));
        assert_eq!(read(&mut pci, RESET_CONTROL, 1), 0x06);
        // Soft reset (bit 2 alone) and full reset (bits 1-3) also reset.
        assert!(write(&mut pci, RESET_CONTROL, 1, 0x04));
        assert!(write(&mut pci, RESET_CONTROL, 1, 0x0e));
        assert!(!write(&mut pci, RESET_CONTROL, 1, 0x08));
        assert_eq!(read(&mut pci, RESET_CONTROL, 1), 0x08);
        // Through a 16-bit write at 0xcf8 too (the 0xcf9 byte).
        assert!(write(&mut pci, CONFIG_ADDRESS, 2, 0x0600));
    }

    #[test]
    fn system_control_port_a() {
        let mut pci = PciHost::new();
        // Linux's boot code: read, set A20, keep bit 0 clear, write.
        let port_a = (read(&mut pci, SYSTEM_CONTROL_A, 1) as u8 | 0x02) & !0x01;
        assert!(!write(&mut pci, SYSTEM_CONTROL_A, 1, u32::from(port_a)));
        assert_eq!(read(&mut pci, SYSTEM_CONTROL_A, 1), 0x02);
        assert!(!write(&mut pci, SYSTEM_CONTROL_A, 1, 0x00));
        assert_eq!(read(&mut pci, SYSTEM_CONTROL_A, 1), 0x02, "A20 stays on");
        assert!(!write(&mut pci, SYSTEM_CONTROL_A, 1, 0xc0));
        assert_eq!(
            read(&mut pci, SYSTEM_CONTROL_A, 1),
            0xc2,
            "other bits read back"
        );
        assert!(write(&mut pci, SYSTEM_CONTROL_A, 1, 0x03), "fast reset");
        assert_eq!(read(&mut pci, SYSTEM_CONTROL_A, 2), 0xff03, "0x93 floats");
    }

    #[test]
    fn state_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<PciHost>(), 4 + 1 + 1 + 2);
    }

    #[test]
    fn validate_checks_the_padding() {
        let mut pci = PciHost::new();
        pci.pad[1] = 1;
        assert_eq!(pci.validate().unwrap_err().device, "pci");
    }
}
