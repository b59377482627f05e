//! The small PC ports a guest expects to find, each a bus device:
//! isa-debug-exit, the POST port, system control port A (A20, fast
//! reset), the keyboard controller's command port (reset pulse), and the
//! PCI configuration mechanism #1 with no devices behind it (its 0xCF9
//! byte is the reset control register). Ports that would act on the node
//! act on this VM alone.

use pc_devices::bus::{BusDevice, Effect, Env};

/// isa-debug-exit: a write stops the VM with that exit code.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Port of the isa-debug-exit device.
pub struct DebugExit;

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        data.fill(0xFF);
    }

    fn write(&mut self, _offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        let mut v = [0u8; 4];
        for (d, s) in v.iter_mut().zip(data) {
            *d = *s;
        }
        Effect::DebugExit(u32::from_le_bytes(v))
    }

    fn name(&self) -> &'static str {
        "isa-debug-exit"
    }
}

/// Port 0x80: POST codes, written by firmware and some kernels as an I/O
/// delay; nothing to do.
pub struct PostPort;

impl BusDevice for PostPort {
    fn read(&mut self, _offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        data.fill(0xFF);
    }

    fn write(&mut self, _offset: u64, _data: &[u8], _env: &mut Env<'_>) -> Effect {
        Effect::None
    }

    fn name(&self) -> &'static str {
        "post"
    }
}

/// Port 0x92, system control port A: A20 always enabled; bit 0 resets.
pub struct SystemControlA;

impl BusDevice for SystemControlA {
    fn read(&mut self, _offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = 0x02;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        if data.first().is_some_and(|b| b & 1 != 0) {
            Effect::Reset
        } else {
            Effect::None
        }
    }

    fn name(&self) -> &'static str {
        "port92"
    }
}

/// The keyboard controller's status/command port (0x64): always idle, no
/// keyboard; command 0xFE pulses the reset line.
pub struct KbcCommand;

impl BusDevice for KbcCommand {
    fn read(&mut self, _offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = 0x1C;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        if data.first() == Some(&0xFE) {
            Effect::Reset
        } else {
            Effect::None
        }
    }

    fn name(&self) -> &'static str {
        "kbc"
    }
}

/// PCI configuration mechanism #1 at 0xCF8-0xCFF with an empty bus: the
/// address register keeps what is written, every configuration read finds
/// no device (all ones), and the byte at 0xCF9 is the reset control
/// register (bit 2 resets, as the FADT's RESET_REG says).
#[derive(Default)]
pub struct PciConfig {
    address: u32,
}

impl BusDevice for PciConfig {
    fn read(&mut self, offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
        } else {
            data.fill(0xFF);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        match (offset, data.len()) {
            (0, 4) => {
                let mut v = [0u8; 4];
                v.copy_from_slice(data);
                self.address = u32::from_le_bytes(v);
                Effect::None
            }
            (1, 1) if data.first().is_some_and(|b| b & 0x04 != 0) => Effect::Reset,
            _ => Effect::None,
        }
    }

    fn name(&self) -> &'static str {
        "pci-conf1"
    }
}

/// The PM1a control ports of Bochs (0xB004) and VirtualBox (0x4004)
/// firmware: guests written for those machines power off through them
/// (SLP_EN, bit 13, in a 16-bit write). Reads see no device.
pub struct FirmwareSleepPort;

impl BusDevice for FirmwareSleepPort {
    fn read(&mut self, _offset: u64, data: &mut [u8], _env: &mut Env<'_>) {
        data.fill(0xFF);
    }

    fn write(&mut self, offset: u64, data: &[u8], _env: &mut Env<'_>) -> Effect {
        let high = match (offset, data) {
            (0, [_, hi, ..]) | (1, [hi, ..]) => *hi,
            _ => 0,
        };
        if high & 0x20 != 0 {
            Effect::PowerOff
        } else {
            Effect::None
        }
    }

    fn name(&self) -> &'static str {
        "firmware-pm1a"
    }
}
