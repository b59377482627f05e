//! The node's own CMOS RTC, read once per VM start so each VM's RTC starts
//! at the node's wall-clock time.

use x86::io::{inb, outb};

fn read(reg: u8) -> u8 {
    // SAFETY: ports 0x70/0x71 are the PC CMOS index/data pair; selecting a
    // time register (NMI-disable bit kept clear) and reading it has no
    // other effect.
    unsafe {
        outb(0x70, reg & 0x7F);
        inb(0x71)
    }
}

fn bcd(v: u8) -> u64 {
    u64::from(v >> 4) * 10 + u64::from(v & 0xF)
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the Unix epoch by the node's RTC (0 if it reads nonsense).
pub fn unix_time() -> u64 {
    // Wait out an update in progress (bounded), then read twice until equal.
    for _ in 0..100_000 {
        if read(0x0A) & 0x80 == 0 {
            break;
        }
    }
    let regs = || [read(0x00), read(0x02), read(0x04), read(0x07), read(0x08), read(0x09), read(0x32)];
    let mut a = regs();
    for _ in 0..4 {
        let b = regs();
        if a == b {
            break;
        }
        a = b;
    }
    let binary = read(0x0B) & 0x04 != 0;
    let conv = |v: u8| if binary { u64::from(v) } else { bcd(v) };
    let [s, min, h, d, mon, y, c] = a;
    let hour = conv(h & 0x7F);
    let century = if c == 0 || c == 0xFF { 20 } else { conv(c) };
    let year = century * 100 + conv(y);
    let (mon, d) = (conv(mon), conv(d));
    if !(1..=12).contains(&mon) || !(1..=31).contains(&d) || hour > 23 {
        return 0;
    }
    let days = days_from_civil(year as i64, mon as i64, d as i64);
    let secs = days * 86_400 + (hour * 3600 + conv(min) * 60 + conv(s)) as i64;
    u64::try_from(secs).unwrap_or(0)
}
