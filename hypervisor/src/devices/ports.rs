//! The VM's port space. Unknown ports read all-ones and ignore writes (and
//! are counted), as on a PC; ports that would act on the node are emulated
//! for the VM alone.

use super::uart::Uart;

/// Base of the VM's COM1.
pub const COM1_BASE: u16 = 0x3F8;
/// isa-debug-exit: a write stops the VM with that exit code.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
const PM1A_QEMU: u16 = 0x604;
const PM1A_BOCHS: u16 = 0xB004;
const PM1A_VBOX: u16 = 0x4004;
const SLP_EN: u32 = 1 << 13;
const PCI_ADDR: u16 = 0xCF8;
const RESET_CONTROL: u16 = 0xCF9;
const KBC_COMMAND: u16 = 0x64;
const SYSTEM_CONTROL_A: u16 = 0x92;

/// What a port write asks of the VM's lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEffect {
    /// Nothing beyond the device state.
    None,
    /// isa-debug-exit with this code.
    DebugExit(u32),
    /// ACPI sleep/power-off request.
    PowerOff,
    /// Reset request (0xCF9, keyboard controller, port 0x92 bit 0).
    Reset,
}

/// Legacy devices of one VM.
#[derive(Default)]
pub struct PortBus {
    pub uart: Uart,
    pci_address: u32,
    /// Accesses to ports with no device.
    pub unclaimed: u64,
}

fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

impl PortBus {
    /// Guest IN of `size` bytes from `port`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match port {
            COM1_BASE..=0x3FF if size == 1 => u32::from(self.uart.read(port - COM1_BASE)),
            PCI_ADDR if size == 4 => self.pci_address,
            // No PCI devices: every configuration read finds nothing.
            0xCFC..=0xCFF => all_ones(size),
            SYSTEM_CONTROL_A => 0x02, // A20 enabled
            KBC_COMMAND => 0x1C,      // keyboard controller idle
            _ => {
                self.unclaimed += 1;
                all_ones(size)
            }
        }
    }

    /// Guest OUT of `size` bytes of `value` to `port`.
    pub fn write(&mut self, port: u16, size: u8, value: u32, name: &str) -> PortEffect {
        match port {
            COM1_BASE..=0x3FF if size == 1 => {
                self.uart.write(port - COM1_BASE, value as u8, name);
                PortEffect::None
            }
            DEBUG_EXIT_PORT => PortEffect::DebugExit(value & all_ones(size)),
            PM1A_QEMU | PM1A_BOCHS | PM1A_VBOX if size >= 2 && value & SLP_EN != 0 => PortEffect::PowerOff,
            PCI_ADDR if size == 4 => {
                self.pci_address = value;
                PortEffect::None
            }
            RESET_CONTROL if value & 0x04 != 0 => PortEffect::Reset,
            KBC_COMMAND if value & 0xFF == 0xFE => PortEffect::Reset,
            SYSTEM_CONTROL_A if value & 0x01 != 0 => PortEffect::Reset,
            0x80 | SYSTEM_CONTROL_A | RESET_CONTROL | KBC_COMMAND | 0xCFC..=0xCFF => PortEffect::None,
            _ => {
                self.unclaimed += 1;
                PortEffect::None
            }
        }
    }
}
