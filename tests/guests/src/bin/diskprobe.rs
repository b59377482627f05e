//! `diskprobe`: the disk test guest. One binary, four roles chosen on the
//! kernel command line (`key=value` words), all on the first virtio-mmio
//! virtio-blk device ([`test_guests::blk`]):
//!
//! - `role=write seed=S sectors=N [start=0] [pass=0] [chunk=8]`: writes the
//!   pattern of (S, sector, pass) to sectors start..start+N in requests of
//!   `chunk` sectors, flushes, reads every sector back and checks it;
//!   `diskprobe write ok: N sectors seed=S`, exit 0.
//! - `role=verify seed=S sectors=N [start=0] [pass=0] expect=E`: reads the
//!   sectors one by one and classifies each (pattern / I/O error / zero /
//!   anything else); E is `ok` (all carry the pattern of `pass`), `ioerror`
//!   (at least one read failed with an I/O error status), `zero` (all read
//!   as zeros), `mismatch` (none of those) or `versions` (alias
//!   `any-version`: all carry a valid pattern of some pass, no I/O error).
//!   Prints `diskprobe verify: <observed>`, exit 0 iff observed == E.
//! - `role=stream seed=S sectors=N [start=0] [pass=1] [chunk=8]
//!   [passes=0]`: rewrites the sectors with pass 1, 2, ... (flushing after
//!   each pass), printing `diskprobe stream pass P` as each pass starts;
//!   forever unless `passes=` > 0.
//! - `role=bench [sectors=4096] [start=0]`: sequential write (plus a
//!   flush) then read of the sectors in 64 KiB requests;
//!   `diskprobe bench: write X KiB/s read Y KiB/s`, exit 0.
//!
//! - `role=fleet seed=S sectors=N [stream_sectors=64] [chunk=8] [pause_ms=200]`: a
//!   facility VM that may be healed on another node. Sectors 0..N are its
//!   data: all zeros, it writes the pattern of pass 0 and prints
//!   `diskprobe fleet: fresh ... sum=X`; otherwise every sector must carry
//!   that pattern and it prints `diskprobe fleet: intact ... sum=X` (X an
//!   FNV-1a checksum of the bytes read back). Sectors N..N+stream_sectors
//!   must hold zeros or valid patterns of any pass (a replica lags; a
//!   sector caught mid-round by a failover reads as an I/O error, counted
//!   as unreadable, never as other data); it then streams over them
//!   forever from the next pass (`pause_ms` between passes: a steady
//!   write load), printing each pass's start.
//!
//! Every role first prints `diskprobe <role> start capacity=<sectors>`.
//! Anything unexpected prints `FAIL: ...` and exits with 1. Optional
//! everywhere: `io_timeout_ms=` (30000), the time limit of one request.
//!
//! The pattern of a sector: the ASCII line
//! `BMDISKPATTERN:seed=<S> sector=<n> pass=<p>\n` (decimal), then
//! pseudo-random bytes (splitmix64 seeded from S, n and p) up to 512 bytes.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use core::fmt::{self, Write};

use test_guests::blk::{self, BlkDevice, FeaturesDisplay, IoError, SECTOR_SIZE};
use test_guests::{clock, println, BootInfo};

test_guests::entry!(main);

/// The marker every pattern sector starts with.
const MARKER: &str = "BMDISKPATTERN:";
/// Longest header line looked at when parsing a sector.
const MAX_HEADER: usize = 128;
/// Sectors per request of `write` / `stream` unless `chunk=` says otherwise.
const DEFAULT_CHUNK: u64 = 8;
/// Largest request: 64 KiB (also the bench's request size).
const MAX_CHUNK: u64 = 128;
const DEFAULT_BENCH_SECTORS: u64 = 4096;

/// The value of `key=` on the command line.
fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn fail(what: fmt::Arguments<'_>) -> u32 {
    println!("FAIL: {}", what);
    1
}

/// `key=` as a number (`default` if absent; `None` there = required).
fn arg_u64(cmdline: &str, role: &str, key: &str, default: Option<u64>) -> Result<u64, u32> {
    match (arg(cmdline, key), default) {
        (None, Some(d)) => Ok(d),
        (None, None) => Err(fail(format_args!("diskprobe {}: {}= missing", role, key))),
        (Some(v), _) => {
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            };
            parsed.ok_or_else(|| fail(format_args!("diskprobe {}: bad {}={}", role, key, v)))
        }
    }
}

// ---------------------------------------------------------------- pattern

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `fmt::Write` into a byte slice (output beyond its end is an error).
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.pos.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf.get_mut(self.pos..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.pos = end;
        Ok(())
    }
}

/// Fills one 512-byte sector with the pattern of (`seed`, `sector`, `pass`).
fn fill_sector(out: &mut [u8], seed: u64, sector: u64, pass: u64) {
    let mut w = SliceWriter { buf: out, pos: 0 };
    // At most 14 + 5 + 20 + 8 + 20 + 6 + 20 + 1 = 94 bytes: always fits.
    let _ = writeln!(w, "{}seed={} sector={} pass={}", MARKER, seed, sector, pass);
    let pos = w.pos;
    let mut state = seed ^ sector.rotate_left(21) ^ pass.rotate_left(43) ^ 0x424D_4449_534B_5054;
    for chunk in out.get_mut(pos..).unwrap_or(&mut []).chunks_mut(8) {
        let bytes = splitmix64(&mut state).to_le_bytes();
        for (b, v) in chunk.iter_mut().zip(bytes) {
            *b = v;
        }
    }
}

/// The (seed, sector, pass) a sector's header line names, if it has one.
fn parse_header(data: &[u8]) -> Option<(u64, u64, u64)> {
    let head = data.get(..MAX_HEADER.min(data.len()))?;
    let nl = head.iter().position(|&b| b == b'\n')?;
    let line = core::str::from_utf8(head.get(..nl)?).ok()?;
    let rest = line.strip_prefix(MARKER)?.strip_prefix("seed=")?;
    let (seed, rest) = rest.split_once(" sector=")?;
    let (sector, pass) = rest.split_once(" pass=")?;
    Some((seed.parse().ok()?, sector.parse().ok()?, pass.parse().ok()?))
}

/// What one sector holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// The exact pattern of (our seed, this sector, pass).
    Pattern(u64),
    /// All zeros.
    Zero,
    /// A header naming (seed, sector, pass), but the sector is not exactly
    /// that pattern (`true`) or names another seed or sector (`false`).
    Foreign(u64, u64, u64, bool),
    /// Anything else.
    Garbage,
}

impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Pattern(p) => write!(f, "the pattern of pass {}", p),
            Content::Zero => f.write_str("zeros"),
            Content::Foreign(s, n, p, true) => write!(f, "a corrupted pattern seed={} sector={} pass={}", s, n, p),
            Content::Foreign(s, n, p, false) => write!(f, "the pattern of seed={} sector={} pass={}", s, n, p),
            Content::Garbage => f.write_str("no pattern"),
        }
    }
}

fn classify(data: &[u8], seed: u64, sector: u64) -> Content {
    if let Some((s, n, p)) = parse_header(data) {
        if s != seed || n != sector {
            return Content::Foreign(s, n, p, false);
        }
        let mut want = [0u8; SECTOR_SIZE];
        fill_sector(&mut want, s, n, p);
        return if data == &want[..] { Content::Pattern(p) } else { Content::Foreign(s, n, p, true) };
    }
    if data.iter().all(|&b| b == 0) {
        Content::Zero
    } else {
        Content::Garbage
    }
}

// ---------------------------------------------------------------- main

fn main(info: &BootInfo) -> u32 {
    let cmd = info.cmdline;
    let role = arg(cmd, "role").unwrap_or("");
    if !matches!(role, "write" | "verify" | "stream" | "bench" | "fleet") {
        return fail(format_args!(
            "diskprobe: role= must be write, verify, stream, bench or fleet (cmdline {:?}, boot {:?} ebx {:#x})",
            cmd, info.protocol, info.ebx
        ));
    }
    let mut dev = match BlkDevice::open() {
        Ok(d) => d,
        Err(e) => return fail(format_args!("diskprobe {}: {}", role, e)),
    };
    println!("diskprobe {} start capacity={}", role, dev.capacity());
    describe(&mut dev);
    match run(&mut dev, role, cmd) {
        Ok(code) => code,
        Err(code) => code,
    }
}

fn describe(dev: &mut BlkDevice) {
    let slot = dev.slot();
    let clock = match clock::source() {
        clock::Source::Hypercall => String::from("clock hypercall"),
        clock::Source::TscMeasured(hz) => format!("tsc {} MHz (pit)", hz / 1_000_000),
        clock::Source::TscAssumed => format!("tsc assumed {} MHz", clock::ASSUMED_TSC_HZ / 1_000_000),
    };
    println!(
        "diskprobe: virtio-blk in mmio slot {} at {:#x} (version {}), queue max {}, {}",
        slot.index,
        slot.base,
        slot.version,
        dev.queue_max(),
        clock
    );
    println!(
        "diskprobe: features offered {:#x} [{}], negotiated {:#x} [{}]",
        dev.offered_features(),
        FeaturesDisplay(dev.offered_features()),
        dev.negotiated_features(),
        FeaturesDisplay(dev.negotiated_features())
    );
    match dev.id() {
        Ok(id) => println!("diskprobe: device id {:?}", id),
        Err(e) => println!("diskprobe: device id unavailable ({})", e),
    }
}

fn run(dev: &mut BlkDevice, role: &str, cmd: &str) -> Result<u32, u32> {
    dev.set_timeout_ms(arg_u64(cmd, role, "io_timeout_ms", Some(blk::DEFAULT_TIMEOUT_MS))?);
    let start = arg_u64(cmd, role, "start", Some(0))?;
    let default_sectors = if role == "bench" { Some(DEFAULT_BENCH_SECTORS) } else { None };
    let sectors = arg_u64(cmd, role, "sectors", default_sectors)?;
    if sectors == 0 || start.checked_add(sectors).is_none() {
        return Err(fail(format_args!("diskprobe {}: bad range start={} sectors={}", role, start, sectors)));
    }
    if role == "bench" {
        return bench(dev, start, sectors);
    }
    let seed = arg_u64(cmd, role, "seed", None)?;
    if role == "fleet" {
        let stream_sectors = arg_u64(cmd, role, "stream_sectors", Some(64))?;
        let chunk = chunk_arg(cmd, role)?;
        let pause_ms = arg_u64(cmd, role, "pause_ms", Some(200))?;
        return fleet(dev, seed, start, sectors, stream_sectors, chunk, pause_ms);
    }
    match role {
        "write" => {
            let pass = arg_u64(cmd, role, "pass", Some(0))?;
            let chunk = chunk_arg(cmd, role)?;
            write(dev, seed, start, sectors, pass, chunk)
        }
        "verify" => {
            let pass = arg_u64(cmd, role, "pass", Some(0))?;
            let expect = match arg(cmd, "expect") {
                Some(e @ ("ok" | "ioerror" | "mismatch" | "zero" | "versions")) => e,
                Some("any-version") => "versions",
                other => {
                    return Err(fail(format_args!(
                        "diskprobe verify: expect= must be ok, ioerror, mismatch, zero or versions (got {:?})",
                        other
                    )))
                }
            };
            verify(dev, seed, start, sectors, pass, expect)
        }
        _ => {
            let pass = arg_u64(cmd, role, "pass", Some(1))?;
            let chunk = chunk_arg(cmd, role)?;
            let passes = arg_u64(cmd, role, "passes", Some(0))?;
            stream(dev, seed, start, sectors, pass, chunk, passes)
        }
    }
}

fn chunk_arg(cmd: &str, role: &str) -> Result<u64, u32> {
    let chunk = arg_u64(cmd, role, "chunk", Some(DEFAULT_CHUNK))?;
    if chunk == 0 || chunk > MAX_CHUNK {
        return Err(fail(format_args!("diskprobe {}: chunk= must be 1..={} sectors", role, MAX_CHUNK)));
    }
    Ok(chunk)
}

fn sector_bytes(sectors: u64) -> usize {
    usize::try_from(sectors).unwrap_or(usize::MAX).saturating_mul(SECTOR_SIZE)
}

/// Writes the pattern of `pass` over start..start+n in requests of
/// `chunk` sectors, then flushes.
fn write_pass(
    dev: &mut BlkDevice,
    role: &str,
    seed: u64,
    start: u64,
    n: u64,
    pass: u64,
    chunk: u64,
) -> Result<(), u32> {
    let mut buf = vec![0u8; sector_bytes(chunk)];
    let end = start + n;
    let mut s = start;
    while s < end {
        let k = chunk.min(end - s);
        let part = buf.get_mut(..sector_bytes(k)).unwrap_or(&mut []);
        for (i, sec) in part.chunks_exact_mut(SECTOR_SIZE).enumerate() {
            fill_sector(sec, seed, s + i as u64, pass);
        }
        if let Err(e) = dev.write(s, part) {
            return Err(fail(format_args!("diskprobe {}: write of {} sectors at sector {}: {}", role, k, s, e)));
        }
        s += k;
    }
    flush(dev, role)
}

fn flush(dev: &mut BlkDevice, role: &str) -> Result<(), u32> {
    match dev.flush() {
        Ok(true) => Ok(()),
        Ok(false) => {
            println!("diskprobe {}: device offers no FLUSH; nothing flushed", role);
            Ok(())
        }
        Err(e) => Err(fail(format_args!("diskprobe {}: flush: {}", role, e))),
    }
}

/// Per-sector results of a read scan.
#[derive(Default)]
struct Tally {
    ok: u64,
    ioerror: u64,
    mismatch: u64,
    zero: u64,
    first_ioerror: Option<u64>,
    first_mismatch: Option<(u64, Content)>,
    passes: Option<(u64, u64)>,
}

/// Reads start..start+n sector by sector. `want`: the pass a sector must
/// carry to count as ok (`None`: any pass). Other sectors count as zero,
/// ioerror (I/O error status) or mismatch. Any other failure is fatal.
fn scan(dev: &mut BlkDevice, role: &str, seed: u64, start: u64, n: u64, want: Option<u64>) -> Result<Tally, u32> {
    let mut t = Tally::default();
    let mut buf = vec![0u8; SECTOR_SIZE];
    for s in start..start + n {
        buf.fill(0xA5);
        match dev.read(s, &mut buf) {
            Ok(()) => {}
            Err(IoError::Status) => {
                t.ioerror += 1;
                t.first_ioerror.get_or_insert(s);
                continue;
            }
            Err(e) => return Err(fail(format_args!("diskprobe {}: read of sector {}: {}", role, s, e))),
        }
        let c = classify(&buf, seed, s);
        match c {
            Content::Pattern(p) if want.is_none_or(|w| w == p) => {
                t.ok += 1;
                t.passes = Some(match t.passes {
                    None => (p, p),
                    Some((lo, hi)) => (lo.min(p), hi.max(p)),
                });
            }
            Content::Zero => t.zero += 1,
            _ => {
                t.mismatch += 1;
                t.first_mismatch.get_or_insert((s, c));
            }
        }
    }
    Ok(t)
}

fn write(dev: &mut BlkDevice, seed: u64, start: u64, n: u64, pass: u64, chunk: u64) -> Result<u32, u32> {
    if dev.read_only() {
        return Err(fail(format_args!("diskprobe write: the device is read-only")));
    }
    let t0 = clock::now_ms();
    write_pass(dev, "write", seed, start, n, pass, chunk)?;
    let t1 = clock::now_ms();
    let t = scan(dev, "write", seed, start, n, Some(pass))?;
    if t.ok != n {
        print_tally("write read-back", seed, start, n, Some(pass), &t);
        return Err(fail(format_args!("diskprobe write: read-back of {} sectors: {} not as written", n, n - t.ok)));
    }
    println!(
        "diskprobe write: sectors {}..{} pass {} in {}-sector requests: written and flushed in {} ms, read back in {} ms",
        start,
        start + n,
        pass,
        chunk,
        t1 - t0,
        clock::now_ms() - t1
    );
    println!("diskprobe write ok: {} sectors seed={}", n, seed);
    Ok(0)
}

fn print_tally(what: &str, seed: u64, start: u64, n: u64, want: Option<u64>, t: &Tally) {
    let pass = match want {
        Some(p) => format!("{}", p),
        None => String::from("any"),
    };
    let passes = match (want, t.passes) {
        (None, Some((lo, hi))) => format!(" passes={}..{}", lo, hi),
        _ => String::new(),
    };
    println!(
        "diskprobe {}: sectors {}..{} seed={} pass={}: ok={} ioerror={} mismatch={} zero={}{}",
        what,
        start,
        start + n,
        seed,
        pass,
        t.ok,
        t.ioerror,
        t.mismatch,
        t.zero,
        passes
    );
    if let Some(s) = t.first_ioerror {
        println!("diskprobe {}: first ioerror at sector {}", what, s);
    }
    if let Some((s, c)) = t.first_mismatch {
        println!("diskprobe {}: first mismatch at sector {}: {}", what, s, c);
    }
}

fn verify(dev: &mut BlkDevice, seed: u64, start: u64, n: u64, pass: u64, expect: &str) -> Result<u32, u32> {
    let want = if expect == "versions" { None } else { Some(pass) };
    let t = scan(dev, "verify", seed, start, n, want)?;
    print_tally("verify", seed, start, n, want, &t);
    let observed = if t.ioerror > 0 {
        "ioerror"
    } else if t.ok == n {
        if want.is_none() {
            "versions"
        } else {
            "ok"
        }
    } else if t.zero == n {
        "zero"
    } else {
        "mismatch"
    };
    println!("diskprobe verify: {}", observed);
    if observed == expect {
        Ok(0)
    } else {
        Err(fail(format_args!("diskprobe verify: expected {}, observed {}", expect, observed)))
    }
}

fn stream(
    dev: &mut BlkDevice,
    seed: u64,
    start: u64,
    n: u64,
    first_pass: u64,
    chunk: u64,
    passes: u64,
) -> Result<u32, u32> {
    if dev.read_only() {
        return Err(fail(format_args!("diskprobe stream: the device is read-only")));
    }
    let mut pass = first_pass;
    let mut done = 0u64;
    while passes == 0 || done < passes {
        println!("diskprobe stream pass {}", pass);
        write_pass(dev, "stream", seed, start, n, pass, chunk)?;
        pass = pass.wrapping_add(1);
        done += 1;
    }
    println!("diskprobe stream done: {} passes", done);
    Ok(0)
}

/// FNV-1a over sectors start..start+n as read back.
fn checksum(dev: &mut BlkDevice, role: &str, start: u64, n: u64) -> Result<u64, u32> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; SECTOR_SIZE];
    for s in start..start + n {
        if let Err(e) = dev.read(s, &mut buf) {
            return Err(fail(format_args!("diskprobe {}: read of sector {}: {}", role, s, e)));
        }
        for &b in buf.iter() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

/// The `fleet` role (module docs).
fn fleet(dev: &mut BlkDevice, seed: u64, start: u64, n: u64, m: u64, chunk: u64, pause_ms: u64) -> Result<u32, u32> {
    if dev.read_only() {
        return Err(fail(format_args!("diskprobe fleet: the device is read-only")));
    }
    let t = scan(dev, "fleet", seed, start, n, Some(0))?;
    let state = if t.zero == n {
        write_pass(dev, "fleet", seed, start, n, 0, chunk)?;
        "fresh"
    } else if t.ok == n {
        "intact"
    } else {
        print_tally("fleet", seed, start, n, Some(0), &t);
        return Err(fail(format_args!("diskprobe fleet: data sectors damaged: {} of {} not as written", n - t.ok, n)));
    };
    let sum = checksum(dev, "fleet", start, n)?;
    println!("diskprobe fleet: {} {} sectors seed={} sum={:016x}", state, n, seed, sum);
    let stream_start = start + n;
    let s = scan(dev, "fleet", seed, stream_start, m, None)?;
    if s.mismatch > 0 {
        print_tally("fleet stream region", seed, stream_start, m, None, &s);
        return Err(fail(format_args!("diskprobe fleet: stream sectors hold data never written there")));
    }
    let last = s.passes.map_or(0, |(_, hi)| hi);
    println!(
        "diskprobe fleet: stream region at pass {} ({} of {} sectors written, {} unreadable)",
        last, s.ok, m, s.ioerror
    );
    let mut pass = last + 1;
    loop {
        println!("diskprobe stream pass {}", pass);
        write_pass(dev, "fleet", seed, stream_start, m, pass, chunk)?;
        pass = pass.wrapping_add(1);
        let until = clock::now_ms() + pause_ms;
        while clock::now_ms() < until {
            clock::idle();
        }
    }
}

fn bench(dev: &mut BlkDevice, start: u64, n: u64) -> Result<u32, u32> {
    if dev.read_only() {
        return Err(fail(format_args!("diskprobe bench: the device is read-only")));
    }
    let mut data = vec![0u8; sector_bytes(MAX_CHUNK)];
    let mut state = 0x6265_6E63_6864_6174u64;
    for c in data.chunks_mut(8) {
        c.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    let mut back = vec![0u8; data.len()];
    let end = start + n;
    let mut requests = 0u64;

    let t0 = clock::now_ns();
    let mut s = start;
    while s < end {
        let k = MAX_CHUNK.min(end - s);
        let part = data.get(..sector_bytes(k)).unwrap_or(&[]);
        if let Err(e) = dev.write(s, part) {
            return Err(fail(format_args!("diskprobe bench: write of {} sectors at sector {}: {}", k, s, e)));
        }
        requests += 1;
        s += k;
    }
    flush(dev, "bench")?;
    let t1 = clock::now_ns();
    let mut s = start;
    while s < end {
        let k = MAX_CHUNK.min(end - s);
        let len = sector_bytes(k);
        let part = back.get_mut(..len).unwrap_or(&mut []);
        if let Err(e) = dev.read(s, part) {
            return Err(fail(format_args!("diskprobe bench: read of {} sectors at sector {}: {}", k, s, e)));
        }
        if part != data.get(..len).unwrap_or(&[]) {
            return Err(fail(format_args!("diskprobe bench: {} sectors at sector {} read back differently", k, s)));
        }
        s += k;
    }
    let t2 = clock::now_ns();

    let kib = n * SECTOR_SIZE as u64 / 1024;
    let rate = |ns: u64| u128::from(n) * SECTOR_SIZE as u128 * 1_000_000_000 / 1024 / u128::from(ns.max(1));
    println!(
        "diskprobe bench: {} sectors ({} KiB) from sector {}, {} requests of up to 64 KiB each way: \
         write {} ms (flush included), read {} ms",
        n,
        kib,
        start,
        requests,
        (t1 - t0) / 1_000_000,
        (t2 - t1) / 1_000_000
    );
    println!("diskprobe bench: write {} KiB/s read {} KiB/s", rate(t1 - t0), rate(t2 - t1));
    Ok(0)
}
