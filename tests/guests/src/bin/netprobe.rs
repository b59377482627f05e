//! `netprobe`: the network test guest. One binary, four roles chosen on the
//! kernel command line (`key=value` words):
//!
//! - `role=server ip=A.B.C.D/N [duration_ms=20000]`: answers ping, echoes
//!   UDP on port 7, sends one line `hello from <ip>:<port>` on TCP 80 and
//!   8080 then closes, counts bytes on TCP 9000 (`sink: ...` per
//!   connection); after `duration_ms` prints `netprobe server done`, exit 0.
//! - `role=client ip=... checks=SPEC,SPEC,... [timeout_ms=1500]
//!   [start_delay_ms=500]`: SPEC is `ping:IP:EXPECT`, `udp:IP:PORT:EXPECT`
//!   or `tcp:IP:PORT:EXPECT` with EXPECT `ok`, `blocked` (no answer within
//!   `timeout_ms`) or `refused` (TCP RST, or ICMP destination unreachable
//!   of any code for ping/UDP/TCP). One `check SPEC: OBSERVED ok` or
//!   `FAIL: check SPEC: expected X, observed Y` line each; exit 0 iff all
//!   matched.
//! - `role=bulk ip=... target=IP:PORT [bytes=1048576]`: sends that many
//!   bytes over TCP, prints `bulk: N bytes in T ms = X KiB/s`, exit 0.
//! - `role=spoof ip=... target=IP[:PORT] [spoof_mac=..] [spoof_ip=..]`:
//!   raw frames (no smoltcp): UDP to PORT (ICMP echo without a port) with
//!   a forged source MAC, then with a forged source IPv4; exit 0 with
//!   `spoof: no reply (dropped)` if nothing comes back, else
//!   `FAIL: spoof got a reply`, exit 1.
//!
//! Every role first prints `netprobe <role> start ip=<ip/N> mac=<mac>`.
//! Optional everywhere: `gw=IP` (default route).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::Ipv4Addr;
use core::sync::atomic::{AtomicU16, Ordering};

use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, raw, tcp, udp};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, IpAddress, IpEndpoint, IpProtocol, IpVersion, Ipv4Cidr, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};
use test_guests::net::{MacDisplay, NetDevice, Stack};
use test_guests::{clock, cpu, println, BootInfo};

test_guests::entry!(main);

const DEFAULT_TIMEOUT_MS: u64 = 1500;
const DEFAULT_START_DELAY_MS: u64 = 500;
const DEFAULT_SERVER_MS: u64 = 20_000;
const DEFAULT_BULK_BYTES: u64 = 1 << 20;
/// Resend interval of ping / UDP probes within one check.
const RESEND_MS: u64 = 500;
const LINE_PORTS: [u16; 2] = [80, 8080];
const SINK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 7;
/// Listening sockets per TCP port of the server.
const SOCKETS_PER_PORT: usize = 4;

/// The value of `key=` on the command line.
fn arg<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn arg_u64(cmdline: &str, key: &str, default: u64) -> Result<u64, u32> {
    match arg(cmdline, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| fail(format_args!("bad {}={}", key, v))),
    }
}

fn fail(what: fmt::Arguments<'_>) -> u32 {
    println!("FAIL: {}", what);
    1
}

fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (addr, len) = s.split_once('/').unwrap_or((s, "24"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|&l| l <= 32)?;
    Some(Ipv4Cidr::new(addr, len))
}

/// `IP` or `IP:PORT`.
fn parse_target(s: &str) -> Option<(Ipv4Addr, Option<u16>)> {
    match s.split_once(':') {
        Some((ip, port)) => Some((ip.parse().ok()?, Some(port.parse().ok()?))),
        None => Some((s.parse().ok()?, None)),
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A fresh ephemeral port (49152..65535, starting at a TSC-derived point).
fn ephemeral_port() -> u16 {
    let mut p = NEXT_PORT.load(Ordering::Relaxed);
    if p == 0 {
        p = 49152 + (cpu::rdtsc() % 8192) as u16;
    }
    let next = if p >= 65534 { 49152 } else { p + 1 };
    NEXT_PORT.store(next, Ordering::Relaxed);
    p
}

fn main(info: &BootInfo) -> u32 {
    let cmd = info.cmdline;
    let role = arg(cmd, "role").unwrap_or("");
    if !matches!(role, "server" | "client" | "bulk" | "spoof") {
        return fail(format_args!(
            "netprobe: role= must be server, client, bulk or spoof (cmdline {:?}, boot {:?} ebx {:#x})",
            cmd, info.protocol, info.ebx
        ));
    }
    let Some(cidr) = arg(cmd, "ip").and_then(parse_cidr) else {
        return fail(format_args!("netprobe {}: ip=A.B.C.D/N missing or malformed (cmdline {:?})", role, cmd));
    };
    let gateway = match arg(cmd, "gw").map(str::parse::<Ipv4Addr>) {
        None => None,
        Some(Ok(gw)) => Some(gw),
        Some(Err(_)) => return fail(format_args!("netprobe {}: bad gw=", role)),
    };
    let timeout_ms = match arg_u64(cmd, "timeout_ms", DEFAULT_TIMEOUT_MS) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let start_delay_ms = match arg_u64(cmd, "start_delay_ms", DEFAULT_START_DELAY_MS) {
        Ok(v) => v,
        Err(code) => return code,
    };

    if role == "spoof" {
        let mut dev = match NetDevice::open() {
            Ok(d) => d,
            Err(e) => return fail(format_args!("netprobe {}: {}", role, e)),
        };
        println!("netprobe {} start ip={} mac={}", role, cidr, MacDisplay(dev.mac()));
        describe(&dev);
        return spoof(&mut dev, cmd, cidr.address(), timeout_ms, start_delay_ms);
    }

    let mut stack = match Stack::open(cidr, gateway) {
        Ok(s) => s,
        Err(e) => return fail(format_args!("netprobe {}: {}", role, e)),
    };
    println!("netprobe {} start ip={} mac={}", role, cidr, MacDisplay(stack.device.mac()));
    describe(&stack.device);
    match role {
        "server" => match arg_u64(cmd, "duration_ms", DEFAULT_SERVER_MS) {
            Ok(ms) => server(&mut stack, cidr.address(), ms),
            Err(code) => code,
        },
        "client" => client(&mut stack, arg(cmd, "checks").unwrap_or(""), timeout_ms, start_delay_ms),
        _ => {
            let Some((ip, Some(port))) = arg(cmd, "target").and_then(parse_target) else {
                return fail(format_args!("netprobe bulk: target=IP:PORT missing or malformed"));
            };
            match (arg_u64(cmd, "bytes", DEFAULT_BULK_BYTES), arg_u64(cmd, "duration_ms", 120_000)) {
                (Ok(bytes), Ok(limit)) => bulk(&mut stack, ip, port, bytes, start_delay_ms, limit),
                (Err(code), _) | (_, Err(code)) => code,
            }
        }
    }
}

fn describe(dev: &NetDevice) {
    let slot = dev.slot();
    let clock = match clock::source() {
        clock::Source::Hypercall => alloc::string::String::from("clock hypercall"),
        clock::Source::TscMeasured(hz) => format!("tsc {} MHz (pit)", hz / 1_000_000),
        clock::Source::TscAssumed => format!("tsc assumed {} MHz", clock::ASSUMED_TSC_HZ / 1_000_000),
    };
    println!(
        "netprobe: virtio-net in mmio slot {} at {:#x} (version {}), {}",
        slot.index, slot.base, slot.version, clock
    );
}

/// Waits `ms` while keeping the stack polled (answers ARP and ping).
fn settle(stack: &mut Stack, ms: u64) {
    let end = clock::now_ms() + ms;
    while clock::now_ms() < end {
        stack.poll_or_idle();
    }
}

// ---------------------------------------------------------------- server

struct LineServer {
    handle: SocketHandle,
    port: u16,
    served: bool,
}

struct Sink {
    handle: SocketHandle,
    bytes: u64,
    start_ms: Option<u64>,
    peer: Option<IpEndpoint>,
    reported: bool,
}

impl Sink {
    fn report(&mut self, how: &str) {
        if self.reported || self.start_ms.is_none() {
            return;
        }
        self.reported = true;
        let ms = clock::now_ms().saturating_sub(self.start_ms.unwrap_or(0));
        match self.peer {
            Some(p) => print_rate(format_args!("sink: {} bytes from {}{}", self.bytes, p, how), self.bytes, ms),
            None => print_rate(format_args!("sink: {} bytes{}", self.bytes, how), self.bytes, ms),
        }
    }
}

fn print_rate(what: fmt::Arguments<'_>, bytes: u64, ms: u64) {
    let kib_s = u128::from(bytes) * 1000 / 1024 / u128::from(ms.max(1));
    println!("{} in {} ms = {} KiB/s", what, ms, kib_s);
}

fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]))
}

fn server(stack: &mut Stack, ip: Ipv4Addr, duration_ms: u64) -> u32 {
    let mut echo = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]),
    );
    if echo.bind(ECHO_PORT).is_err() {
        return fail(format_args!("netprobe server: cannot bind udp {}", ECHO_PORT));
    }
    let echo = stack.sockets.add(echo);
    let mut lines = Vec::new();
    for port in LINE_PORTS {
        for _ in 0..SOCKETS_PER_PORT {
            lines.push(LineServer { handle: stack.sockets.add(tcp_socket(1024, 1024)), port, served: false });
        }
    }
    let mut sinks = Vec::new();
    for _ in 0..2 {
        let mut s = tcp_socket(64 * 1024, 256);
        s.set_ack_delay(None);
        sinks.push(Sink { handle: stack.sockets.add(s), bytes: 0, start_ms: None, peer: None, reported: false });
    }
    println!(
        "netprobe server ready: ping, udp {} echo, tcp {} {} line, tcp {} sink, for {} ms",
        ECHO_PORT, LINE_PORTS[0], LINE_PORTS[1], SINK_PORT, duration_ms
    );

    let mut echoed = 0u64;
    let end = clock::now_ms() + duration_ms;
    while clock::now_ms() < end {
        let mut busy = stack.poll();

        let sock = stack.sockets.get_mut::<udp::Socket>(echo);
        let mut buf = [0u8; 1500];
        while let Ok((n, meta)) = sock.recv_slice(&mut buf) {
            let _ = sock.send_slice(buf.get(..n).unwrap_or(&[]), meta.endpoint);
            echoed += 1;
            if echoed <= 16 {
                println!("server: udp {} echoed {} bytes to {}", ECHO_PORT, n, meta.endpoint);
            }
            busy = true;
        }

        for l in &mut lines {
            let s = stack.sockets.get_mut::<tcp::Socket>(l.handle);
            if !s.is_open() {
                let _ = s.listen(l.port);
                l.served = false;
                continue;
            }
            if !l.served && s.can_send() {
                let line = format!("hello from {}:{}\n", ip, l.port);
                let _ = s.send_slice(line.as_bytes());
                s.close();
                l.served = true;
                busy = true;
                match s.remote_endpoint() {
                    Some(peer) => println!("server: tcp {} served {}", l.port, peer),
                    None => println!("server: tcp {} served", l.port),
                }
            }
            if s.can_recv() {
                let _ = s.recv(|b| (b.len(), ()));
            }
        }

        for k in &mut sinks {
            let s = stack.sockets.get_mut::<tcp::Socket>(k.handle);
            if !s.is_open() {
                k.report(" (reset)");
                let _ = s.listen(SINK_PORT);
                *k = Sink { handle: k.handle, bytes: 0, start_ms: None, peer: None, reported: false };
                continue;
            }
            if s.is_active() && k.start_ms.is_none() && s.state() != tcp::State::SynReceived {
                k.start_ms = Some(clock::now_ms());
                k.peer = s.remote_endpoint();
            }
            while s.can_recv() {
                let n = s.recv(|b| (b.len(), b.len())).unwrap_or(0);
                if n == 0 {
                    break;
                }
                k.bytes += n as u64;
                busy = true;
            }
            if s.state() == tcp::State::CloseWait && !s.can_recv() {
                k.report("");
                s.close();
            }
        }

        if !busy {
            clock::idle();
        }
    }
    let st = stack.device.stats();
    println!(
        "server: frames rx {} tx {} tx-dropped {} rx-errors {}, heap {} KiB",
        st.rx_frames,
        st.tx_frames,
        st.tx_dropped,
        st.rx_errors,
        test_guests::heap::used() / 1024
    );
    println!("netprobe server done");
    0
}

// ---------------------------------------------------------------- client

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Blocked,
    Refused,
    /// Something else (e.g. TCP connected but no line): named.
    Other(&'static str),
}

impl Outcome {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(Outcome::Ok),
            "blocked" => Some(Outcome::Blocked),
            "refused" => Some(Outcome::Refused),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Blocked => "blocked",
            Outcome::Refused => "refused",
            Outcome::Other(s) => s,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Probe {
    Ping(Ipv4Addr),
    Udp(Ipv4Addr, u16),
    Tcp(Ipv4Addr, u16),
}

fn parse_check(spec: &str) -> Result<(Probe, Outcome), &'static str> {
    let parts: Vec<&str> = spec.split(':').collect();
    let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|_| "bad IPv4 address");
    let port = |s: &str| s.parse::<u16>().map_err(|_| "bad port");
    let outcome = |s: &str| Outcome::parse(s).ok_or("expected outcome must be ok, blocked or refused");
    match parts.as_slice() {
        ["ping", a, e] => Ok((Probe::Ping(ip(a)?), outcome(e)?)),
        ["udp", a, p, e] => Ok((Probe::Udp(ip(a)?, port(p)?), outcome(e)?)),
        ["tcp", a, p, e] => Ok((Probe::Tcp(ip(a)?, port(p)?), outcome(e)?)),
        _ => Err("want ping:IP:EXPECT, udp:IP:PORT:EXPECT or tcp:IP:PORT:EXPECT"),
    }
}

fn client(stack: &mut Stack, checks: &str, timeout_ms: u64, start_delay_ms: u64) -> u32 {
    let specs: Vec<&str> = checks.split(',').filter(|s| !s.is_empty()).collect();
    if specs.is_empty() {
        return fail(format_args!("netprobe client: no checks= given"));
    }
    settle(stack, start_delay_ms);
    let mut failed = 0;
    for spec in &specs {
        let (probe, expected) = match parse_check(spec) {
            Ok(c) => c,
            Err(why) => {
                println!("FAIL: check {}: {}", spec, why);
                failed += 1;
                continue;
            }
        };
        let observed = run_probe(stack, probe, timeout_ms);
        if observed == expected {
            println!("check {}: {} ok", spec, observed);
        } else {
            println!("FAIL: check {}: expected {}, observed {}", spec, expected, observed);
            failed += 1;
        }
    }
    if failed == 0 {
        println!("netprobe client done: {} checks ok", specs.len());
        0
    } else {
        println!("FAIL: netprobe client: {} of {} checks failed", failed, specs.len());
        1
    }
}

/// An ICMP destination unreachable, with the start of the packet it quotes.
struct Unreachable {
    /// Protocol of the quoted packet.
    proto: u8,
    /// Destination of the quoted packet.
    dst: Ipv4Addr,
    /// First bytes of the quoted packet's payload (ports, ICMP ident).
    l4: [u8; 8],
}

/// Parses an IPv4 packet carrying ICMP destination unreachable (any code),
/// tolerating quotes shorter than their original packet.
fn parse_unreachable(pkt: &[u8]) -> Option<Unreachable> {
    let ihl = usize::from(pkt.first()? & 0x0F) * 4;
    if *pkt.get(9)? != 1 {
        return None;
    }
    let icmp = pkt.get(ihl..)?;
    if *icmp.first()? != 3 {
        return None;
    }
    let inner = icmp.get(8..)?;
    let inner_ihl = usize::from(inner.first()? & 0x0F) * 4;
    let dst: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
    let mut l4 = [0u8; 8];
    for (d, s) in l4.iter_mut().zip(inner.get(inner_ihl..).unwrap_or(&[])) {
        *d = *s;
    }
    Some(Unreachable { proto: *inner.get(9)?, dst: Ipv4Addr::from(dst), l4 })
}

/// Whether the raw ICMP socket got an unreachable matching `pred`.
fn take_unreachable(stack: &mut Stack, raw: SocketHandle, pred: impl Fn(&Unreachable) -> bool) -> bool {
    let sock = stack.sockets.get_mut::<raw::Socket>(raw);
    let mut hit = false;
    while let Ok(pkt) = sock.recv() {
        if parse_unreachable(pkt).is_some_and(|u| pred(&u)) {
            hit = true;
        }
    }
    hit
}

fn icmp_raw_socket() -> raw::Socket<'static> {
    raw::Socket::new(
        IpVersion::Ipv4,
        IpProtocol::Icmp,
        raw::PacketBuffer::new(vec![raw::PacketMetadata::EMPTY; 16], vec![0; 8192]),
        raw::PacketBuffer::new(vec![raw::PacketMetadata::EMPTY; 1], vec![0; 64]),
    )
}

fn run_probe(stack: &mut Stack, probe: Probe, timeout_ms: u64) -> Outcome {
    let raw = stack.sockets.add(icmp_raw_socket());
    let outcome = match probe {
        Probe::Ping(ip) => ping(stack, raw, ip, timeout_ms),
        Probe::Udp(ip, port) => udp_probe(stack, raw, ip, port, timeout_ms),
        Probe::Tcp(ip, port) => tcp_probe(stack, raw, ip, port, timeout_ms),
    };
    stack.sockets.remove(raw);
    outcome
}

fn ping(stack: &mut Stack, raw: SocketHandle, ip: Ipv4Addr, timeout_ms: u64) -> Outcome {
    let ident = ephemeral_port();
    let mut sock = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 8], vec![0; 2048]),
    );
    if sock.bind(icmp::Endpoint::Ident(ident)).is_err() {
        return Outcome::Other("bind-error");
    }
    let h = stack.sockets.add(sock);
    let start = clock::now_ms();
    let mut next_send = start;
    let mut seq = 0u16;
    let outcome = loop {
        let now = clock::now_ms();
        if now >= start + timeout_ms {
            break Outcome::Blocked;
        }
        let sock = stack.sockets.get_mut::<icmp::Socket>(h);
        if now >= next_send {
            let repr = Icmpv4Repr::EchoRequest { ident, seq_no: seq, data: b"netprobe ping" };
            if let Ok(buf) = sock.send(repr.buffer_len(), IpAddress::Ipv4(ip)) {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &ChecksumCapabilities::default());
            }
            seq = seq.wrapping_add(1);
            next_send = now + RESEND_MS;
        }
        let busy = stack.poll();
        let sock = stack.sockets.get_mut::<icmp::Socket>(h);
        let mut got = false;
        while let Ok((data, from)) = sock.recv() {
            let reply = Icmpv4Packet::new_checked(data)
                .and_then(|p| Icmpv4Repr::parse(&p, &ChecksumCapabilities::default()))
                .is_ok_and(|r| matches!(r, Icmpv4Repr::EchoReply { ident: i, .. } if i == ident));
            got |= reply && from == IpAddress::Ipv4(ip);
        }
        if got {
            break Outcome::Ok;
        }
        if take_unreachable(stack, raw, |u| {
            u.proto == 1 && u.dst == ip && u.l4[0] == 8 && u16::from_be_bytes([u.l4[4], u.l4[5]]) == ident
        }) {
            break Outcome::Refused;
        }
        if !busy {
            clock::idle();
        }
    };
    stack.sockets.remove(h);
    outcome
}

fn udp_probe(stack: &mut Stack, raw: SocketHandle, ip: Ipv4Addr, port: u16, timeout_ms: u64) -> Outcome {
    let local = ephemeral_port();
    let mut sock = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
    );
    if sock.bind(local).is_err() {
        return Outcome::Other("bind-error");
    }
    let h = stack.sockets.add(sock);
    let payload = format!("netprobe udp {} -> {}:{}", local, ip, port);
    let remote = IpEndpoint::new(IpAddress::Ipv4(ip), port);
    let start = clock::now_ms();
    let mut next_send = start;
    let outcome = loop {
        let now = clock::now_ms();
        if now >= start + timeout_ms {
            break Outcome::Blocked;
        }
        let sock = stack.sockets.get_mut::<udp::Socket>(h);
        if now >= next_send {
            let _ = sock.send_slice(payload.as_bytes(), remote);
            next_send = now + RESEND_MS;
        }
        let busy = stack.poll();
        let sock = stack.sockets.get_mut::<udp::Socket>(h);
        let mut got = false;
        while let Ok((data, meta)) = sock.recv() {
            got |= meta.endpoint == remote && data == payload.as_bytes();
        }
        if got {
            break Outcome::Ok;
        }
        if take_unreachable(stack, raw, |u| {
            u.proto == 17
                && u.dst == ip
                && u16::from_be_bytes([u.l4[0], u.l4[1]]) == local
                && u16::from_be_bytes([u.l4[2], u.l4[3]]) == port
        }) {
            break Outcome::Refused;
        }
        if !busy {
            clock::idle();
        }
    };
    stack.sockets.remove(h);
    outcome
}

fn tcp_probe(stack: &mut Stack, raw: SocketHandle, ip: Ipv4Addr, port: u16, timeout_ms: u64) -> Outcome {
    let local = ephemeral_port();
    let h = stack.sockets.add(tcp_socket(2048, 256));
    let remote = IpEndpoint::new(IpAddress::Ipv4(ip), port);
    if stack.sockets.get_mut::<tcp::Socket>(h).connect(stack.iface.context(), remote, local).is_err() {
        stack.sockets.remove(h);
        return Outcome::Other("connect-error");
    }
    let start = clock::now_ms();
    let mut connected = false;
    let mut line: Vec<u8> = Vec::new();
    let outcome = loop {
        let busy = stack.poll();
        let s = stack.sockets.get_mut::<tcp::Socket>(h);
        if s.state() == tcp::State::Established || s.state() == tcp::State::CloseWait {
            connected = true;
        }
        while s.can_recv() {
            let n = s
                .recv(|b| {
                    line.extend_from_slice(b);
                    (b.len(), b.len())
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
        }
        let peer_done = connected && !s.may_recv();
        if line.contains(&b'\n') || (peer_done && !line.is_empty()) {
            break Outcome::Ok;
        }
        if s.state() == tcp::State::Closed {
            break if connected { Outcome::Other("closed-without-data") } else { Outcome::Refused };
        }
        if peer_done {
            break Outcome::Other("closed-without-data");
        }
        if take_unreachable(stack, raw, |u| {
            u.proto == 6
                && u.dst == ip
                && u16::from_be_bytes([u.l4[0], u.l4[1]]) == local
                && u16::from_be_bytes([u.l4[2], u.l4[3]]) == port
        }) {
            break Outcome::Refused;
        }
        if clock::now_ms() >= start + timeout_ms {
            break if connected { Outcome::Other("connected-no-data") } else { Outcome::Blocked };
        }
        if !busy {
            clock::idle();
        }
    };
    // Close politely after a good exchange (so the server's socket is
    // freed); otherwise reset.
    let s = stack.sockets.get_mut::<tcp::Socket>(h);
    if outcome == Outcome::Ok {
        s.close();
        let end = clock::now_ms() + 300;
        while clock::now_ms() < end {
            stack.poll_or_idle();
            let st = stack.sockets.get_mut::<tcp::Socket>(h).state();
            if matches!(st, tcp::State::Closed | tcp::State::TimeWait) {
                break;
            }
        }
    }
    stack.sockets.get_mut::<tcp::Socket>(h).abort();
    stack.poll();
    stack.sockets.remove(h);
    outcome
}

// ---------------------------------------------------------------- bulk

fn bulk(stack: &mut Stack, ip: Ipv4Addr, port: u16, bytes: u64, start_delay_ms: u64, limit_ms: u64) -> u32 {
    settle(stack, start_delay_ms);
    let mut s = tcp_socket(4096, 64 * 1024);
    s.set_nagle_enabled(false);
    let h = stack.sockets.add(s);
    let remote = IpEndpoint::new(IpAddress::Ipv4(ip), port);
    if stack.sockets.get_mut::<tcp::Socket>(h).connect(stack.iface.context(), remote, ephemeral_port()).is_err() {
        return fail(format_args!("bulk: connect to {} failed", remote));
    }
    let deadline = clock::now_ms() + limit_ms;
    let mut start_ms = None;
    let mut sent = 0u64;
    let mut closed = false;
    loop {
        let busy = stack.poll();
        let now = clock::now_ms();
        let s = stack.sockets.get_mut::<tcp::Socket>(h);
        let state = s.state();
        if start_ms.is_none() && state == tcp::State::Established {
            start_ms = Some(now);
        }
        if start_ms.is_some() {
            while sent < bytes && s.can_send() {
                let n = s
                    .send(|buf| {
                        let n = buf.len().min(usize::try_from(bytes - sent).unwrap_or(usize::MAX));
                        for (i, b) in buf.iter_mut().take(n).enumerate() {
                            *b = (sent as usize).wrapping_add(i) as u8;
                        }
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                sent += n as u64;
            }
            if sent >= bytes && !closed {
                s.close();
                closed = true;
            }
        }
        // Our FIN acknowledged: every byte arrived.
        if closed && matches!(state, tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed) {
            break;
        }
        if state == tcp::State::Closed {
            return fail(format_args!(
                "bulk: connection to {} {} after {} bytes",
                remote,
                if start_ms.is_some() { "reset" } else { "refused" },
                sent
            ));
        }
        if now >= deadline {
            return fail(format_args!("bulk: {} bytes of {} sent to {} within {} ms", sent, bytes, remote, limit_ms));
        }
        if !busy {
            clock::idle();
        }
    }
    let ms = clock::now_ms().saturating_sub(start_ms.unwrap_or(0));
    // Let the receiver's FIN be acknowledged, so it reports and closes.
    let end = clock::now_ms() + 500;
    while clock::now_ms() < end && stack.sockets.get_mut::<tcp::Socket>(h).state() != tcp::State::TimeWait {
        stack.poll_or_idle();
    }
    print_rate(format_args!("bulk: {} bytes", bytes), bytes, ms);
    let st = stack.device.stats();
    println!("bulk: frames rx {} tx {} tx-dropped {}", st.rx_frames, st.tx_frames, st.tx_dropped);
    0
}

// ---------------------------------------------------------------- spoof

const DEFAULT_SPOOF_MAC: [u8; 6] = [0x02, 0x5b, 0x0f, 0x00, 0x0f, 0x01];
const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

fn eth_ipv4_frame(src_mac: [u8; 6], dst_mac: EthernetAddress, ip: &Ipv4Repr, l4: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let eth = EthernetRepr { src_addr: EthernetAddress(src_mac), dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv4 };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + ip.payload_len];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut pkt = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut pkt, &ChecksumCapabilities::default());
    l4(pkt.payload_mut());
    buf
}

/// A UDP datagram or (without a port) an ICMP echo request, as a frame.
fn probe_frame(
    src_mac: [u8; 6],
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let caps = ChecksumCapabilities::default();
    match dport {
        Some(dport) => {
            let udp = UdpRepr { src_port: sport, dst_port: dport };
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Udp,
                payload_len: udp.header_len() + payload.len(),
                hop_limit: 64,
            };
            eth_ipv4_frame(src_mac, dst_mac, &ip, |b| {
                udp.emit(
                    &mut UdpPacket::new_unchecked(b),
                    &IpAddress::Ipv4(src),
                    &IpAddress::Ipv4(dst),
                    payload.len(),
                    |p| p.copy_from_slice(payload),
                    &caps,
                )
            })
        }
        None => {
            let icmp = Icmpv4Repr::EchoRequest { ident: sport, seq_no: 1, data: payload };
            let ip = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: IpProtocol::Icmp,
                payload_len: icmp.buffer_len(),
                hop_limit: 64,
            };
            eth_ipv4_frame(src_mac, dst_mac, &ip, |b| icmp.emit(&mut Icmpv4Packet::new_unchecked(b), &caps))
        }
    }
}

fn arp_frame(
    op: ArpOperation,
    mac: [u8; 6],
    ip: Ipv4Addr,
    target_mac: EthernetAddress,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: ip,
        target_hardware_addr: target_mac,
        target_protocol_addr: target_ip,
    };
    let dst = if op == ArpOperation::Request { BROADCAST } else { target_mac };
    let eth = EthernetRepr { src_addr: EthernetAddress(mac), dst_addr: dst, ethertype: EthernetProtocol::Arp };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

/// What a received frame means to the spoofer.
enum Seen {
    Nothing,
    /// ARP reply: `ip` is at `mac`.
    ArpReply(Ipv4Addr, EthernetAddress),
    /// ARP request from (`mac`, `ip`) for `target`.
    ArpRequest(EthernetAddress, Ipv4Addr, Ipv4Addr),
    /// An IPv4 packet src -> dst with this protocol.
    Ipv4(Ipv4Addr, Ipv4Addr, IpProtocol),
}

fn classify(frame: &[u8]) -> Seen {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return Seen::Nothing };
    match eth.ethertype() {
        EthernetProtocol::Arp => match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
            Ok(ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            }) => match operation {
                ArpOperation::Reply => Seen::ArpReply(source_protocol_addr, source_hardware_addr),
                ArpOperation::Request => {
                    Seen::ArpRequest(source_hardware_addr, source_protocol_addr, target_protocol_addr)
                }
                _ => Seen::Nothing,
            },
            _ => Seen::Nothing,
        },
        EthernetProtocol::Ipv4 => match Ipv4Packet::new_checked(eth.payload()) {
            Ok(p) => Seen::Ipv4(p.src_addr(), p.dst_addr(), p.next_header()),
            Err(_) => Seen::Nothing,
        },
        _ => Seen::Nothing,
    }
}

struct Spoofer<'a> {
    dev: &'a mut NetDevice,
    mac: [u8; 6],
    ip: Ipv4Addr,
    forged_ip: Ipv4Addr,
    target: Ipv4Addr,
    target_mac: Option<EthernetAddress>,
    reply: Option<(Ipv4Addr, Ipv4Addr, IpProtocol)>,
}

impl Spoofer<'_> {
    /// Handles received frames for `ms`: answers ARP for our address and
    /// the forged one, learns the target's MAC, notes replies.
    fn listen(&mut self, ms: u64) {
        let end = clock::now_ms() + ms;
        loop {
            let mut any = false;
            while let Some(seen) = self.dev.recv_frame(classify) {
                any = true;
                match seen {
                    Seen::ArpReply(ip, mac) if ip == self.target => self.target_mac = Some(mac),
                    Seen::ArpRequest(mac, ip, wanted) if wanted == self.ip || wanted == self.forged_ip => {
                        let f = arp_frame(ArpOperation::Reply, self.mac, wanted, mac, ip);
                        self.dev.send_frame(&f);
                    }
                    Seen::Ipv4(src, dst, proto)
                        if src == self.target && (dst == self.ip || dst == self.forged_ip) && self.reply.is_none() =>
                    {
                        self.reply = Some((src, dst, proto));
                    }
                    _ => {}
                }
            }
            if clock::now_ms() >= end {
                return;
            }
            if !any {
                clock::idle();
            }
        }
    }
}

fn spoof(dev: &mut NetDevice, cmd: &str, ip: Ipv4Addr, timeout_ms: u64, start_delay_ms: u64) -> u32 {
    let Some((target, port)) = arg(cmd, "target").and_then(parse_target) else {
        return fail(format_args!("netprobe spoof: target=IP[:PORT] missing or malformed"));
    };
    let forged_mac = match arg(cmd, "spoof_mac").map(parse_mac) {
        None => DEFAULT_SPOOF_MAC,
        Some(Some(m)) => m,
        Some(None) => return fail(format_args!("netprobe spoof: bad spoof_mac=")),
    };
    let forged_ip = match arg(cmd, "spoof_ip").map(str::parse::<Ipv4Addr>) {
        None => {
            let [a, b, c, d] = ip.octets();
            Ipv4Addr::new(a, b, c, if d == 250 { 251 } else { 250 })
        }
        Some(Ok(f)) => f,
        Some(Err(_)) => return fail(format_args!("netprobe spoof: bad spoof_ip=")),
    };
    let mac = dev.mac();
    let mut sp = Spoofer { dev, mac, ip, forged_ip, target, target_mac: None, reply: None };
    sp.listen(start_delay_ms);

    // Resolve the target legitimately (our own MAC and IP).
    let arp_deadline = clock::now_ms() + timeout_ms;
    while sp.target_mac.is_none() && clock::now_ms() < arp_deadline {
        let f = arp_frame(ArpOperation::Request, mac, ip, EthernetAddress([0; 6]), target);
        sp.dev.send_frame(&f);
        sp.listen(300);
    }
    let dst_mac = match sp.target_mac {
        Some(m) => {
            println!("spoof: target {} is at {}", target, MacDisplay(m.0));
            m
        }
        None => {
            println!("spoof: target {} did not answer ARP, sending to broadcast", target);
            BROADCAST
        }
    };

    let what = match port {
        Some(p) => format!("udp to {}:{}", target, p),
        None => format!("icmp echo to {}", target),
    };
    let (sport_mac, sport_ip) = (ephemeral_port(), ephemeral_port());
    for _ in 0..3 {
        let f = probe_frame(forged_mac, dst_mac, ip, target, sport_mac, port, b"netprobe spoof: forged source MAC");
        sp.dev.send_frame(&f);
        sp.listen(50);
        let f = probe_frame(mac, dst_mac, forged_ip, target, sport_ip, port, b"netprobe spoof: forged source IP");
        sp.dev.send_frame(&f);
        sp.listen(50);
    }
    println!(
        "spoof: sent 3 frames ({}) with forged source MAC {} and 3 with forged source IP {}",
        what,
        MacDisplay(forged_mac),
        forged_ip
    );
    sp.listen(timeout_ms);
    match sp.reply {
        None => {
            println!("spoof: no reply (dropped)");
            0
        }
        Some((src, dst, proto)) => {
            let kind = if dst == forged_ip { "forged source IP" } else { "forged source MAC" };
            fail(format_args!("spoof got a reply ({} {} -> {}, to the {} frame)", proto, src, dst, kind))
        }
    }
}
