//! ACPI tables for a PC-like guest with no firmware: RSDP, RSDT, XSDT, FADT,
//! FACS, MADT and a DSDT with a tiny hand-written AML encoder.
//!
//! The guest has no BIOS, so these tables are its only description of the
//! interrupt controllers, the PM1/PM timer registers (power off via `\_S5`),
//! the COM1 port and the virtio-mmio devices (Linux's `virtio_mmio` driver
//! binds `LNRO0005` devices from the DSDT, so no `virtio_mmio.device=` is
//! needed on the command line). The RSDP is the first thing in the boot-info
//! area, inside `[0xE0000, 0x100000)`, so kernels that scan the BIOS area
//! find it as well as those told its address.

use alloc::vec::Vec;

use crate::area::{Area, Le};
use crate::LoadError;

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"BMONTR";
/// OEM table id in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"BMONITOR";
/// Creator id in every table header.
const CREATOR_ID: [u8; 4] = *b"BMON";

/// ISA IRQ (and GSI) of the SCI; the PM1 device model raises it.
pub const SCI_IRQ: u16 = 9;
/// I/O port of the PM1a event block (status at +0, enable at +2).
pub const PM1A_EVT_BLK: u16 = 0x600;
/// Length in bytes of the PM1a event block.
pub const PM1_EVT_LEN: u8 = 4;
/// I/O port of the PM1a control block (SLP_TYP bits 10..13, SLP_EN bit 13).
pub const PM1A_CNT_BLK: u16 = 0x604;
/// Length in bytes of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// I/O port of the 32-bit ACPI PM timer (3.579545 MHz).
pub const PM_TMR_BLK: u16 = 0x608;
/// Length in bytes of the PM timer block.
pub const PM_TMR_LEN: u8 = 4;
/// The SLP_TYP value `\_S5` announces; writing it with SLP_EN powers off.
pub const SLP_TYP_S5: u8 = 5;
/// I/O port of the FADT reset register.
pub const RESET_PORT: u16 = 0xCF9;
/// Value the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 0x06;
/// CMOS RTC index of the century register.
pub const CENTURY_CMOS_INDEX: u8 = 0x32;
/// Local APIC base the MADT reports.
pub const LOCAL_APIC_ADDRESS: u32 = 0xFEE0_0000;
/// I/O APIC base the MADT reports.
pub const IO_APIC_ADDRESS: u32 = 0xFEC0_0000;
/// Most vCPUs the MADT can describe with xAPIC entries (id 0xFF is broadcast).
pub const MAX_VCPUS: u32 = 255;
/// Most virtio-mmio devices the DSDT names (`V000`..`VFFF`).
pub const MAX_VIRTIO_DEVICES: usize = 4096;

const FADT_FLAG_WBINVD: u32 = 1 << 0;
const FADT_FLAG_PROC_C1: u32 = 1 << 2;
const FADT_FLAG_PWR_BUTTON: u32 = 1 << 4;
const FADT_FLAG_SLP_BUTTON: u32 = 1 << 5;
const FADT_FLAG_TMR_VAL_EXT: u32 = 1 << 8;
const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const MADT_PCAT_COMPAT: u32 = 1;
const GAS_SYSTEM_IO: u8 = 1;

/// What the guest's platform looks like, for the MADT and DSDT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    /// Number of vCPUs; their local APIC ids (and ACPI UIDs) are `0..vcpus`.
    pub vcpus: u32,
    /// The I/O APIC's id.
    pub ioapic_id: u8,
    /// The virtio-mmio devices, named `V000`, `V001`, ... in this order.
    pub virtio: Vec<VirtioMmio>,
}

/// One virtio-mmio device the guest should find in the DSDT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    /// Guest-physical base of its register window (below 4 GiB).
    pub base: u64,
    /// Length of the window.
    pub len: u64,
    /// The I/O APIC input (GSI) its level-triggered, active-high interrupt uses.
    pub gsi: u32,
}

/// Builds all tables into `area`, RSDP first; returns the RSDP's address.
pub(crate) fn build(area: &mut Area, fw: &Firmware) -> Result<u32, LoadError> {
    if fw.vcpus == 0 || fw.vcpus > MAX_VCPUS {
        return Err(LoadError::VcpuCount(fw.vcpus));
    }
    if fw.virtio.len() > MAX_VIRTIO_DEVICES {
        return Err(LoadError::TooManyVirtioDevices(fw.virtio.len()));
    }
    for (index, v) in fw.virtio.iter().enumerate() {
        let fits = v.len > 0 && v.base.checked_add(v.len).is_some_and(|end| end <= 1 << 32);
        if !fits {
            return Err(LoadError::VirtioWindow { index, base: v.base, len: v.len });
        }
    }
    let rsdp = area.push(&[0; 36], 16)?;
    let dsdt = area.push(&sdt(*b"DSDT", 2, &dsdt_aml(fw)?), 16)?;
    let facs = area.push(&facs_table(), 64)?;
    let fadt = area.push(&fadt_table(dsdt, facs), 16)?;
    let madt = area.push(&madt_table(fw), 16)?;
    let mut rsdt_body = Le::default();
    rsdt_body.u32(fadt).u32(madt);
    let rsdt = area.push(&sdt(*b"RSDT", 1, &rsdt_body.0), 16)?;
    let mut xsdt_body = Le::default();
    xsdt_body.u64(fadt.into()).u64(madt.into());
    let xsdt = area.push(&sdt(*b"XSDT", 1, &xsdt_body.0), 16)?;
    area.patch(rsdp, &rsdp_bytes(rsdt, xsdt));
    Ok(rsdp)
}

/// The byte that makes `bytes` sum to zero (mod 256) once added.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b)))
}

/// RSDP revision 2: checksum over the first 20 bytes, extended over all 36.
fn rsdp_bytes(rsdt: u32, xsdt: u32) -> Vec<u8> {
    let mut r = Le::default();
    r.bytes(b"RSD PTR ").u8(0).bytes(&OEM_ID).u8(2).u32(rsdt);
    r.u32(36).u64(xsdt.into()).u8(0).bytes(&[0; 3]);
    let mut v = r.0;
    let sum = checksum(v.get(..20).unwrap_or_default());
    if let Some(b) = v.get_mut(8) {
        *b = sum;
    }
    let ext = checksum(&v);
    if let Some(b) = v.get_mut(32) {
        *b = ext;
    }
    v
}

/// A system description table: the 36-byte header, then `body`, checksummed.
fn sdt(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len() as u32;
    let mut t = Le::default();
    t.bytes(&signature).u32(len).u8(revision).u8(0).bytes(&OEM_ID).bytes(&OEM_TABLE_ID);
    t.u32(1).bytes(&CREATOR_ID).u32(1).bytes(body);
    let mut v = t.0;
    let sum = checksum(&v);
    if let Some(b) = v.get_mut(9) {
        *b = sum;
    }
    v
}

/// A generic address structure for a system I/O register.
fn gas_io(le: &mut Le, bit_width: u8, access_size: u8, port: u16) {
    le.u8(GAS_SYSTEM_IO).u8(bit_width).u8(0).u8(access_size).u64(port.into());
}

/// FADT revision 6 (276 bytes), full (not hardware-reduced) ACPI: the PM1
/// and PM timer blocks exist and ACPI mode is always on (SMI_CMD = 0).
fn fadt_table(dsdt: u32, facs: u32) -> Vec<u8> {
    let mut f = Le::default();
    f.u32(facs).u32(dsdt).u8(0).u8(0); // FIRMWARE_CTRL, DSDT, reserved, PM profile unspecified
    f.u16(SCI_IRQ).u32(0).u8(0).u8(0).u8(0).u8(0); // SCI_INT, SMI_CMD, ACPI_ENABLE/DISABLE, S4BIOS_REQ, PSTATE_CNT
    f.u32(PM1A_EVT_BLK.into()).u32(0).u32(PM1A_CNT_BLK.into()).u32(0).u32(0);
    f.u32(PM_TMR_BLK.into()).u32(0).u32(0); // PM_TMR, GPE0, GPE1
    f.u8(PM1_EVT_LEN).u8(PM1_CNT_LEN).u8(0).u8(PM_TMR_LEN).u8(0).u8(0).u8(0).u8(0);
    f.u16(0x0FFF).u16(0x0FFF); // C2/C3 latencies above the limits: not supported
    f.u16(0).u16(0).u8(0).u8(0); // flush size/stride, duty offset/width
    f.u8(0).u8(0).u8(CENTURY_CMOS_INDEX); // day/month alarm, century
    f.u16(IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT).u8(0);
    f.u32(
        FADT_FLAG_WBINVD
            | FADT_FLAG_PROC_C1
            | FADT_FLAG_PWR_BUTTON
            | FADT_FLAG_SLP_BUTTON
            | FADT_FLAG_TMR_VAL_EXT
            | FADT_FLAG_RESET_REG_SUP,
    );
    gas_io(&mut f, 8, 1, RESET_PORT);
    f.u8(RESET_VALUE).u16(0).u8(5); // ARM_BOOT_ARCH, FADT minor version (6.5)
    f.u64(facs.into()).u64(dsdt.into());
    gas_io(&mut f, PM1_EVT_LEN * 8, 2, PM1A_EVT_BLK);
    f.bytes(&[0; 12]);
    gas_io(&mut f, PM1_CNT_LEN * 8, 2, PM1A_CNT_BLK);
    f.bytes(&[0; 12]).bytes(&[0; 12]); // X_PM1b_CNT, X_PM2_CNT
    gas_io(&mut f, PM_TMR_LEN * 8, 3, PM_TMR_BLK);
    f.bytes(&[0; 12]).bytes(&[0; 12]); // X_GPE0, X_GPE1
    f.bytes(&[0; 12]).bytes(&[0; 12]); // sleep control/status (hardware-reduced only)
    f.bytes(&OEM_TABLE_ID); // hypervisor vendor identity
    sdt(*b"FACP", 6, &f.0)
}

/// FACS version 2 (64 bytes): required outside hardware-reduced ACPI; no
/// S4BIOS, no waking vector, a global lock nobody contends.
fn facs_table() -> Vec<u8> {
    let mut f = Le::default();
    f.bytes(b"FACS").u32(64).u32(0).u32(0).u32(0).u32(0).u64(0).u8(2);
    f.0.resize(64, 0);
    f.0
}

/// MADT: one enabled local APIC per vCPU, the I/O APIC, the PC's ISA
/// overrides (timer on pin 2, SCI level/high) and LINT1 as NMI.
fn madt_table(fw: &Firmware) -> Vec<u8> {
    let mut m = Le::default();
    m.u32(LOCAL_APIC_ADDRESS).u32(MADT_PCAT_COMPAT);
    for id in 0..fw.vcpus {
        let id = id as u8; // at most MAX_VCPUS
        m.u8(0).u8(8).u8(id).u8(id).u32(1);
    }
    m.u8(1).u8(12).u8(fw.ioapic_id).u8(0).u32(IO_APIC_ADDRESS).u32(0);
    m.u8(2).u8(10).u8(0).u8(0).u32(2).u16(0);
    m.u8(2).u8(10).u8(0).u8(SCI_IRQ as u8).u32(SCI_IRQ.into()).u16(0x000D);
    m.u8(4).u8(6).u8(0xFF).u16(0).u8(1);
    sdt(*b"APIC", 5, &m.0)
}

/// The DSDT's AML: `\_S5`, and under `\_SB` COM1, COM2 (the guest
/// agent's doorbell) and the virtio devices.
fn dsdt_aml(fw: &Firmware) -> Result<Vec<u8>, LoadError> {
    use aml::*;
    let s5 = package(&[int(SLP_TYP_S5.into()), int(SLP_TYP_S5.into()), int(0), int(0)])?;
    let mut body = name(b"\\_S5_", &s5);

    let mut com1_crs = Vec::new();
    com1_crs.extend_from_slice(&[0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x00, 0x08]); // IO (Decode16, 0x3F8, 0x3F8, 0, 8)
    com1_crs.extend_from_slice(&[0x22, 0x10, 0x00]); // IRQNoFlags () {4}
    let mut com1 = name(b"_HID", &eisa_id(*b"PNP0501"));
    com1.extend(name(b"_UID", &int(0)));
    com1.extend(name(b"_CRS", &resource_template(&com1_crs)?));
    let mut sb = device(*b"COM1", &com1)?;

    let mut com2_crs = Vec::new();
    com2_crs.extend_from_slice(&[0x47, 0x01, 0xF8, 0x02, 0xF8, 0x02, 0x00, 0x08]); // IO (Decode16, 0x2F8, 0x2F8, 0, 8)
    com2_crs.extend_from_slice(&[0x22, 0x08, 0x00]); // IRQNoFlags () {3}
    let mut com2 = name(b"_HID", &eisa_id(*b"PNP0501"));
    com2.extend(name(b"_UID", &int(1)));
    com2.extend(name(b"_CRS", &resource_template(&com2_crs)?));
    sb.extend(device(*b"COM2", &com2)?);

    for (n, v) in fw.virtio.iter().enumerate() {
        let mut crs = Le::default();
        // Memory32Fixed (ReadWrite, base, len); both checked to fit 32 bits.
        crs.u8(0x86).u16(9).u8(1).u32(v.base as u32).u32(v.len as u32);
        // Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {gsi}
        crs.u8(0x89).u16(6).u8(0x01).u8(1).u32(v.gsi);
        let mut dev = name(b"_HID", &string("LNRO0005"));
        dev.extend(name(b"_UID", &int(n as u64)));
        dev.extend(name(b"_CRS", &resource_template(&crs.0)?));
        sb.extend(device(hex_name(n), &dev)?);
    }
    body.extend(scope(b"\\_SB_", &sb)?);
    Ok(body)
}

/// `V` and three upper-case hex digits of `n` (below [`MAX_VIRTIO_DEVICES`]).
fn hex_name(n: usize) -> [u8; 4] {
    let digit = |shift: usize| {
        let d = ((n >> shift) & 0xF) as u8;
        if d < 10 {
            b'0' + d
        } else {
            b'A' + d - 10
        }
    };
    [b'V', digit(8), digit(4), digit(0)]
}

/// Just enough AML (ACPI 6.x, chapter 20) for names, devices and resources.
mod aml {
    use alloc::vec::Vec;

    use crate::LoadError;

    const ZERO_OP: u8 = 0x00;
    const ONE_OP: u8 = 0x01;
    const NAME_OP: u8 = 0x08;
    const BYTE_PREFIX: u8 = 0x0A;
    const WORD_PREFIX: u8 = 0x0B;
    const DWORD_PREFIX: u8 = 0x0C;
    const STRING_PREFIX: u8 = 0x0D;
    const QWORD_PREFIX: u8 = 0x0E;
    const SCOPE_OP: u8 = 0x10;
    const BUFFER_OP: u8 = 0x11;
    const PACKAGE_OP: u8 = 0x12;
    const EXT_OP_PREFIX: u8 = 0x5B;
    const DEVICE_OP: u8 = 0x82;
    const END_TAG: [u8; 2] = [0x79, 0x00];

    /// `op`, a PkgLength covering itself and `body`, then `body`.
    fn with_pkg_length(op: &[u8], body: &[u8]) -> Result<Vec<u8>, LoadError> {
        let too_big = LoadError::BootInfoTooLarge(body.len());
        let mut v = Vec::with_capacity(op.len() + body.len() + 4);
        v.extend_from_slice(op);
        if body.len() < 0x3F {
            v.push(body.len() as u8 + 1);
        } else {
            // Lead byte: count of following bytes in bits 6..8, low nibble in 0..4.
            let (extra, total) = (1..=3u32)
                .map(|extra| (extra, body.len() + 1 + extra as usize))
                .find(|&(extra, total)| total < 1 << (4 + 8 * extra))
                .ok_or(too_big)?;
            v.push(((extra as u8) << 6) | (total & 0xF) as u8);
            for i in 0..extra {
                v.push((total >> (4 + 8 * i)) as u8);
            }
        }
        v.extend_from_slice(body);
        Ok(v)
    }

    /// The shortest integer encoding of `v`.
    pub(super) fn int(v: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        match v {
            0 => out.push(ZERO_OP),
            1 => out.push(ONE_OP),
            2..=0xFF => out.extend_from_slice(&[BYTE_PREFIX, v as u8]),
            0x100..=0xFFFF => {
                out.push(WORD_PREFIX);
                out.extend_from_slice(&(v as u16).to_le_bytes());
            }
            0x1_0000..=0xFFFF_FFFF => {
                out.push(DWORD_PREFIX);
                out.extend_from_slice(&(v as u32).to_le_bytes());
            }
            _ => {
                out.push(QWORD_PREFIX);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// A NUL-terminated ASCII string object.
    pub(super) fn string(s: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len() + 2);
        out.push(STRING_PREFIX);
        out.extend_from_slice(s.as_bytes());
        out.push(0);
        out
    }

    /// `EISAID("ABC1234")`: three 5-bit letters and four hex digits, as a DWord.
    pub(super) fn eisa_id(id: [u8; 7]) -> Vec<u8> {
        let [a, b, c, d0, d1, d2, d3] = id;
        let letters = (u16::from(a & 0x1F) << 10) | (u16::from(b & 0x1F) << 5) | u16::from(c & 0x1F);
        let hex =
            |d: u8| u16::from(if d.is_ascii_digit() { d - b'0' } else { (d | 0x20).wrapping_sub(b'a' - 10) } & 0xF);
        let product = (hex(d0) << 12) | (hex(d1) << 8) | (hex(d2) << 4) | hex(d3);
        let mut out = Vec::with_capacity(5);
        out.push(DWORD_PREFIX);
        out.extend_from_slice(&letters.to_be_bytes());
        out.extend_from_slice(&product.to_be_bytes());
        out
    }

    /// `Name (path, value)`; `path` is a NameSeg or `\` plus a NameSeg.
    pub(super) fn name(path: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + path.len() + value.len());
        out.push(NAME_OP);
        out.extend_from_slice(path);
        out.extend_from_slice(value);
        out
    }

    /// `Package () { elements }`.
    pub(super) fn package(elements: &[Vec<u8>]) -> Result<Vec<u8>, LoadError> {
        let count = u8::try_from(elements.len()).map_err(|_| LoadError::BootInfoTooLarge(elements.len()))?;
        let mut body = Vec::from([count]);
        for e in elements {
            body.extend_from_slice(e);
        }
        with_pkg_length(&[PACKAGE_OP], &body)
    }

    /// `ResourceTemplate () { descriptors }`: a buffer ending in an end tag.
    pub(super) fn resource_template(descriptors: &[u8]) -> Result<Vec<u8>, LoadError> {
        let mut bytes = Vec::from(descriptors);
        bytes.extend_from_slice(&END_TAG);
        let mut body = int(bytes.len() as u64);
        body.extend_from_slice(&bytes);
        with_pkg_length(&[BUFFER_OP], &body)
    }

    /// `Device (name) { body }`.
    pub(super) fn device(name: [u8; 4], body: &[u8]) -> Result<Vec<u8>, LoadError> {
        let mut inner = Vec::from(name);
        inner.extend_from_slice(body);
        with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &inner)
    }

    /// `Scope (path) { body }`.
    pub(super) fn scope(path: &[u8], body: &[u8]) -> Result<Vec<u8>, LoadError> {
        let mut inner = Vec::from(path);
        inner.extend_from_slice(body);
        with_pkg_length(&[SCOPE_OP], &inner)
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    mod tests {
        use super::*;

        #[test]
        fn pkg_length_encodings() {
            assert_eq!(with_pkg_length(&[0x10], &[0; 2]).unwrap()[..2], [0x10, 3]);
            assert_eq!(with_pkg_length(&[], &[0; 0x3E]).unwrap()[0], 0x3F);
            // 0x3F body bytes + 2 length bytes = 0x41: lead 0x41 (1 extra, nibble 1), then 0x04.
            assert_eq!(with_pkg_length(&[], &[0; 0x3F]).unwrap()[..2], [0x41, 0x04]);
            // 0x1000 body bytes + 3 length bytes = 0x1003.
            assert_eq!(with_pkg_length(&[], &[0; 0x1000]).unwrap()[..3], [0x83, 0x00, 0x01]);
        }

        #[test]
        fn integers_and_ids() {
            assert_eq!(int(0), [0]);
            assert_eq!(int(1), [1]);
            assert_eq!(int(5), [0x0A, 5]);
            assert_eq!(int(0x3F8), [0x0B, 0xF8, 0x03]);
            assert_eq!(int(0xFEC0_0000), [0x0C, 0, 0, 0xC0, 0xFE]);
            assert_eq!(int(1 << 40).len(), 9);
            assert_eq!(eisa_id(*b"PNP0501"), [0x0C, 0x41, 0xD0, 0x05, 0x01]);
            assert_eq!(eisa_id(*b"PNP0A03"), [0x0C, 0x41, 0xD0, 0x0A, 0x03]);
        }
    }
}
