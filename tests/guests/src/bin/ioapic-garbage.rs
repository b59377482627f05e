//! `ioapic-garbage`: writes garbage to every interrupt chip a VM has, with
//! interrupts on and an IDT that counts all 256 vectors (exceptions too:
//! an 8259 with base 0 or 8 raises external interrupts on exception
//! vectors), then checks a plain local APIC timer interrupt still arrives.
//!
//! - IOAPIC: every redirection entry, several rounds: vectors 0-23, level
//!   with nothing attached, each delivery mode (SMI, reserved 3, NMI, INIT,
//!   reserved 6, ExtINT), logical broadcast, then pseudo-random words
//!   (fixed seed); IOREGSEL out of range with IOWIN reads/writes, unused
//!   and unaligned offsets, byte writes; the EOI register with every vector.
//! - 8259 pair: init sequences with bases 0x00/0x08/0xF8, AEOI, single and
//!   MCS-80 modes, level everywhere (ELCR), all unmasked; OCW2/OCW3 garbage
//!   (rotate, set priority, special mask, poll); random bytes.
//! - PIT: channel 0 in mode 2 and 3 with counts 1, 2 and 3 (~600 kHz),
//!   mode 0 count 1, mode 4, modes 1/5, BCD, LSB-only, read-backs, junk
//!   control words, routed through the 8259, then through the IOAPIC, then
//!   nowhere; channel 2 with port 0x61 gate toggles.
//!
//! Each step runs ~10-20 ms with interrupts on and prints the vCPU's loop
//! progress, so a chip that floods or wedges the vCPU shows. Everything is
//! bounded by TSC time. Afterwards the chips are put back (IOAPIC masked,
//! PIC re-initialised and masked, PIT quiet), and a one-shot local APIC
//! timer must fire exactly once.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, Ordering};

use test_guests::apic::{self, reg, IOAPIC_BASE};
use test_guests::port::{inb, outb};
use test_guests::{cpu, idt, println, BootInfo};

test_guests::entry!(main);

const SPURIOUS: u8 = 0xFF;
const CHECK_VECTOR: u8 = 0x50;
const PINS: u32 = 24;

/// Set while the 8259 runs in auto-EOI mode at base 0x20 and only IRQ 0
/// can reach the CPU through it (the PIT steps): its vectors then need no
/// EOI at all, the others a local APIC EOI only. Each EOI is a VM exit,
/// and under an emulator the PIT's 10 kHz (the chipset's limit) leaves
/// little time between ticks.
static PIT_STEPS: AtomicBool = AtomicBool::new(false);

fn on_interrupt(vector: u8) {
    if PIT_STEPS.load(Ordering::Relaxed) {
        if !(0x20..0x28).contains(&vector) {
            apic::eoi();
        }
        return;
    }
    // Whoever raised it: retire it everywhere (nothing here is held).
    apic::eoi();
    outb(0xA0, 0x20);
    outb(0x20, 0x20);
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
}

/// Interrupts on for `ms`, spinning; prints and returns the loop turns.
fn run(step: &str, ms: u64) -> u64 {
    let before = idt::total();
    let start = cpu::rdtsc();
    let end = apic::tsc_after_ms(ms);
    let mut turns = 0u64;
    apic::sti();
    while cpu::rdtsc() < end {
        turns += 1;
    }
    apic::cli();
    println!(
        "ioapic-garbage: {}: {} interrupts, {} turns in {} ms",
        step,
        idt::total() - before,
        turns,
        apic::ms_since(start)
    );
    turns
}

fn ioapic_rounds(rng: &mut Rng) {
    for round in 0..8u32 {
        for pin in 0..PINS {
            let r = rng.next();
            let entry: u64 = match round {
                // Fixed, edge, unmasked, vectors 0-23 (0-15 are illegal).
                0 => u64::from(pin),
                // Level-triggered with nothing attached (or something).
                1 => (1 << 15) | u64::from(0x30 + pin),
                // Every delivery mode, reserved ones included.
                2 => (u64::from(2 + pin % 6) << 8) | u64::from(0x40 + pin),
                // Logical, all destinations, lowest priority, level, low-active.
                3 => (0xFF << 56) | (1 << 15) | (1 << 13) | (1 << 11) | (1 << 8) | u64::from(0x60 + pin),
                _ => r,
            };
            apic::ioapic_set_entry(pin, entry);
        }
        let mut readback = 0u64;
        for pin in 0..PINS {
            readback ^=
                u64::from(apic::ioapic_read(0x10 + 2 * pin)) | (u64::from(apic::ioapic_read(0x11 + 2 * pin)) << 32);
        }
        println!("ioapic-garbage: ioapic round {} written (readback xor {:#x})", round, readback);
        run("ioapic round", 10);
    }
}

fn ioapic_registers(rng: &mut Rng) {
    let mut reads = 0u64;
    for sel in [0x00u32, 0x01, 0x02, 0x03, 0x0F, 0x40, 0x41, 0x7F, 0x80, 0xFE, 0xFF, 0x100, 0x1FF, 0xFFFF_FFFF] {
        apic::mmio_write32(IOAPIC_BASE, sel);
        reads ^= u64::from(apic::mmio_read32(IOAPIC_BASE + 0x10));
        apic::mmio_write32(IOAPIC_BASE + 0x10, rng.next() as u32);
        reads ^= u64::from(apic::mmio_read32(IOAPIC_BASE + 0x10));
    }
    for off in [0x04u64, 0x08, 0x0C, 0x14, 0x20, 0x30, 0x44, 0x80, 0x800, 0xFFC] {
        apic::mmio_write32(IOAPIC_BASE + off, rng.next() as u32);
        reads ^= u64::from(apic::mmio_read32(IOAPIC_BASE + off));
    }
    // Narrow and unaligned accesses (dropped by the chip).
    apic::mmio_write8(IOAPIC_BASE, 0x12);
    apic::mmio_write8(IOAPIC_BASE + 0x10, 0xFF);
    apic::mmio_write8(IOAPIC_BASE + 0x11, 0xFF);
    apic::mmio_write32(IOAPIC_BASE + 0x12, 0xFFFF_FFFF);
    reads ^= u64::from(apic::mmio_read32(IOAPIC_BASE + 0x11));
    // The EOI register, every vector and junk.
    for v in 0..=255u32 {
        apic::mmio_write32(IOAPIC_BASE + 0x40, v);
    }
    apic::mmio_write32(IOAPIC_BASE + 0x40, 0xFFFF_FFFF);
    println!(
        "ioapic-garbage: ioregsel/iowin/eoi garbage done (id {:#x}, version {:#x}, reads xor {:#x})",
        apic::ioapic_read(0),
        apic::ioapic_read(1),
        reads
    );
    run("ioapic registers", 10);
}

fn pic_init(base_master: u8, base_slave: u8, icw1: u8, icw4: u8) {
    outb(0x20, icw1);
    outb(0x21, base_master);
    outb(0x21, 0x04);
    outb(0x21, icw4);
    outb(0xA0, icw1);
    outb(0xA1, base_slave);
    outb(0xA1, 0x02);
    outb(0xA1, icw4);
}

fn pic_garbage(rng: &mut Rng) {
    // Exception vectors, auto-EOI, level everywhere, all unmasked.
    pic_init(0x00, 0x08, 0x11, 0x03);
    outb(0x4D0, 0xFF);
    outb(0x4D1, 0xFF);
    outb(0x21, 0x00);
    outb(0xA1, 0x00);
    run("pic base 0/8 aeoi level unmasked", 10);
    // Single mode, LTIM, MCS-80 mode (ICW4 bit 0 clear), top vectors.
    pic_init(0xF8, 0xF8, 0x1B, 0x00);
    outb(0x21, 0x00);
    outb(0xA1, 0x00);
    run("pic single ltim mcs-80 base f8", 10);
    pic_init(0x08, 0x70, 0x11, 0x01);
    outb(0x21, 0x00);
    outb(0xA1, 0x00);
    // OCW2: rotate on AEOI, set priority, specific EOIs, rotate on EOI;
    // OCW3: special mask, read ISR, poll.
    let mut polled = 0u32;
    for cmd in [0x80u8, 0x00, 0xC3, 0xC7, 0x67, 0x60, 0xA0, 0xE5, 0x68, 0x0B, 0x0A, 0x0C, 0x48] {
        outb(0x20, cmd);
        outb(0xA0, cmd);
        polled ^= u32::from(inb(0x20)) ^ u32::from(inb(0xA0));
    }
    run("pic ocw garbage", 10);
    for _ in 0..400 {
        let port = match rng.byte() % 6 {
            0 => 0x20,
            1 => 0x21,
            2 => 0xA0,
            3 => 0xA1,
            4 => 0x4D0,
            _ => 0x4D1,
        };
        outb(port, rng.byte());
        polled ^= u32::from(inb(port));
    }
    println!("ioapic-garbage: pic random bytes done (reads xor {:#x})", polled);
    run("pic random", 10);
    // Leave it routable for the PIT step: base 0x20, all unmasked.
    pic_init(0x20, 0x28, 0x11, 0x01);
    outb(0x21, 0x00);
    outb(0xA1, 0x00);
}

fn pit_program(control: u8, bytes: &[u8]) {
    outb(0x43, control);
    for &b in bytes {
        outb(0x40, b);
    }
}

fn pit_garbage(rng: &mut Rng) {
    // IRQ 0 through the 8259 only (auto-EOI, base 0x20), IOAPIC pin 2 masked.
    pic_init(0x20, 0x28, 0x11, 0x03);
    outb(0x21, 0xFE);
    outb(0xA1, 0xFF);
    apic::ioapic_set_entry(2, 1 << 16);
    PIT_STEPS.store(true, Ordering::Relaxed);
    let programs: [(&str, u8, &[u8]); 12] = [
        ("pit mode 2 count 1", 0x34, &[1, 0]),
        ("pit mode 3 count 1", 0x36, &[1, 0]),
        ("pit mode 2 count 2", 0x34, &[2, 0]),
        ("pit mode 3 count 2", 0x36, &[2, 0]),
        ("pit mode 3 count 3", 0x36, &[3, 0]),
        ("pit mode 0 count 1", 0x30, &[1, 0]),
        ("pit mode 4 count 65536", 0x38, &[0, 0]),
        ("pit mode 1 count 1", 0x32, &[1, 0]),
        ("pit mode 5 count 2", 0x3A, &[2, 0]),
        ("pit bcd mode 2 count 1", 0x35, &[1, 0]),
        ("pit lsb-only mode 2 count 2", 0x14, &[2]),
        ("pit mode 6 (=2) count 1", 0x3C, &[1, 0]),
    ];
    for (name, control, bytes) in programs {
        pit_program(control, bytes);
        run(name, 15);
    }
    // Junk control words, read-backs, stray data bytes, channel 2.
    let mut reads = 0u32;
    for control in [0xFFu8, 0xC2, 0xE2, 0xD2, 0x00, 0x40, 0x80, 0xF0] {
        outb(0x43, control);
        reads ^= u32::from(inb(0x40)) ^ u32::from(inb(0x42)) ^ u32::from(inb(0x43));
    }
    for _ in 0..64 {
        outb(0x40 + u16::from(rng.byte() % 3), rng.byte());
    }
    outb(0x43, 0xB6);
    outb(0x42, 1);
    outb(0x42, 0);
    for i in 0..256u32 {
        outb(0x61, (i & 3) as u8);
        reads ^= u32::from(inb(0x61));
    }
    println!("ioapic-garbage: pit control/data/port 0x61 garbage done (reads xor {:#x})", reads);
    run("pit garbage", 15);
    // IRQ 0 through IOAPIC pin 2 (edge, vector 0x70) instead, PIC masked.
    outb(0x21, 0xFF);
    apic::ioapic_set_entry(2, 0x70);
    for (name, control, bytes) in
        [("pit mode 2 count 2 via ioapic", 0x34u8, [2u8, 0]), ("pit mode 3 count 3 via ioapic", 0x36, [3, 0])]
    {
        pit_program(control, &bytes);
        run(name, 15);
    }
    // And with the ticks reaching no one.
    apic::ioapic_set_entry(2, 1 << 16);
    pit_program(0x34, &[2, 0]);
    run("pit mode 2 count 2, unrouted", 15);
    PIT_STEPS.store(false, Ordering::Relaxed);
}

fn cleanup() {
    for pin in 0..PINS {
        apic::ioapic_set_entry(pin, 1 << 16);
    }
    apic::ioapic_write(0, 0);
    for v in 0..=255u32 {
        apic::mmio_write32(IOAPIC_BASE + 0x40, v);
    }
    pic_init(0x20, 0x28, 0x11, 0x01);
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    outb(0x4D0, 0);
    outb(0x4D1, 0);
    outb(0x20, 0x20);
    outb(0xA0, 0x20);
    // PIT channel 0: mode 0, the longest count, its one edge unrouted.
    pit_program(0x30, &[0xFF, 0xFF]);
    outb(0x61, 0);
    for _ in 0..256 {
        if apic::highest_in_service().is_none() {
            break;
        }
        apic::eoi();
    }
    apic::enable(SPURIOUS);
    apic::write(reg::LVT_LINT0, 0x700);
}

fn main(_info: &BootInfo) -> u32 {
    println!("ioapic-garbage start");
    idt::install_all();
    idt::catch_exceptions(true);
    idt::set_hook(on_interrupt);
    apic::enable(SPURIOUS);
    let per_ms = apic::tsc_per_ms();
    println!("ioapic-garbage: tsc {} per ms, lint0 {:#x}", per_ms, apic::read(reg::LVT_LINT0));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    ioapic_rounds(&mut rng);
    ioapic_registers(&mut rng);
    pic_garbage(&mut rng);
    pit_garbage(&mut rng);

    cleanup();
    run("after cleanup", 20);
    let seen: u64 = idt::total();
    print_counts();

    let before = idt::count(CHECK_VECTOR);
    apic::timer_one_shot(CHECK_VECTOR, u32::try_from(apic::timer_hz() / 1000).unwrap_or(u32::MAX).max(1));
    apic::sti();
    let fired = apic::wait_until(apic::tsc_after_ms(200), || idt::count(CHECK_VECTOR) > before);
    let _ = apic::wait_until(apic::tsc_after_ms(20), || false);
    apic::cli();
    let got = idt::count(CHECK_VECTOR) - before;
    let strays = idt::total() - seen - got;
    println!("ioapic-garbage: local apic timer after garbage: {} interrupt(s), {} others", got, strays);
    apic::timer_stop();
    if !fired || got != 1 {
        println!("FAIL: the local APIC timer fired {} time(s) after the garbage (expected 1)", got);
        return 1;
    }
    println!("ioapic-garbage ok");
    0
}

/// The nonzero per-vector counts, eight to a line.
fn print_counts() {
    let mut line = heapless_line::Line::new();
    let mut n = 0u32;
    for v in 0..=255u8 {
        let c = idt::count(v);
        if c == 0 {
            continue;
        }
        line.push(v, c);
        n += 1;
        if n.is_multiple_of(8) {
            println!("ioapic-garbage: vectors{}", line.as_str());
            line = heapless_line::Line::new();
        }
    }
    if !n.is_multiple_of(8) {
        println!("ioapic-garbage: vectors{}", line.as_str());
    }
    println!("ioapic-garbage: {} vectors seen, {} interrupts in all", n, idt::total());
}

/// A fixed-size line buffer (no heap in this guest).
mod heapless_line {
    use core::fmt::Write;

    pub struct Line {
        buf: [u8; 160],
        len: usize,
    }

    impl Write for Line {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for &b in s.as_bytes() {
                if let Some(slot) = self.buf.get_mut(self.len) {
                    *slot = b;
                    self.len += 1;
                }
            }
            Ok(())
        }
    }

    impl Line {
        pub fn new() -> Line {
            Line { buf: [0; 160], len: 0 }
        }
        pub fn push(&mut self, vector: u8, count: u64) {
            let _ = write!(self, " {:#04x}:{}", vector, count);
        }
        pub fn as_str(&self) -> &str {
            self.buf.get(..self.len).and_then(|b| core::str::from_utf8(b).ok()).unwrap_or("")
        }
    }
}
