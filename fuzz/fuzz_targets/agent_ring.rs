//! Fuzzes the node's side of the guest agent: the shared region (control
//! block + two rings) is whatever the input says, and the relay's
//! `kick` runs on it after an attach, interleaved with what a tenant's
//! console does (open, send, poll), time passing (tick: hung detection,
//! idle streams), heartbeat settings, the agent consuming its ring, and
//! re-attach/detach. Nothing may panic, and every queue stays within its
//! limit: streams, the agent log, and the events a stream holds (its
//! window, plus one error event that ends it).
//!
//! Input layout:
//!
//! - byte 0: bit 0 = small limits (4 streams, 4 KiB window, 8 KiB input
//!   queue, 16 log entries, 32 records a kick) instead of the defaults;
//!   bit 1 = 128 KiB data areas per direction instead of 64 KiB;
//! - bytes 1-2 (LE): length L of the region image that follows;
//! - L bytes: copied over the region from offset 0 after the agent's
//!   `init` (so they set the magic, cursors and flags, then the
//!   agent-to-node data);
//! - then operations, each one opcode byte and its operands (see `step`).
#![no_main]

use agent_proto::msg::{encode, ExecSpec, FromAgent, GuestLoad};
use agent_proto::relay::RelayLimits;
use agent_proto::ring::{Layout, CTRL_SIZE, MIN_DATA};
use agent_proto::{Event, Input, Op, Relay, ToAgent, MAX_DATA, MAX_RECORD};
use libfuzzer_sys::fuzz_target;

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([self.u8()?, self.u8()?, self.u8()?, self.u8()?]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// The agent's half: its own cursors over the shared memory.
struct Agent {
    layout: Layout,
    g2h_head: u32,
    h2g_tail: u32,
}

fn small_limits() -> RelayLimits {
    RelayLimits {
        max_streams: 4,
        stream_window: 4096,
        input_bytes: 8192,
        log_entries: 16,
        idle_stream_ms: 1000,
        records_per_kick: 32,
    }
}

fn exec_op(stdin: bool) -> Op {
    Op::Exec(ExecSpec { argv: vec!["true".into()], env: vec![], cwd: None, timeout_ms: 0, stdin, pty: None })
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let Some(mode) = c.u8() else { return };
    let limits = if mode & 1 == 1 { small_limits() } else { RelayLimits::default() };
    let data_size = u64::from(MIN_DATA) << ((mode >> 1) & 1);
    let Ok(layout) = Layout::new(data_size) else { return };
    // One buffer per process, zeroed per input: a fresh 132-260 KiB
    // allocation is an mmap and page faults each time (3x slower).
    REGION.with(|r| {
        let mut mem = r.borrow_mut();
        mem.clear();
        mem.resize(layout.total() as usize, 0);
        run(&mut c, layout, limits, &mut mem);
    });
});

thread_local! {
    static REGION: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn run(c: &mut Cursor<'_>, layout: Layout, limits: RelayLimits, mem: &mut [u8]) {
    layout.init(mem).expect("init in bounds");
    let image_len = usize::from(c.u16().unwrap_or(0));
    let image = c.bytes(image_len);
    let n = image.len().min(mem.len());
    mem[..n].copy_from_slice(&image[..n]);

    let mut relay = Relay::new(limits);
    let mut now = 0u64;
    relay.attach(layout, now);
    let mut agent = Agent { layout, g2h_head: read_u32(mem, 16), h2g_tail: read_u32(mem, 28) };
    let mut streams: Vec<u32> = Vec::new();
    let mut steps = 0;
    while let Some(op) = c.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        step(op, c, &mut relay, mem, &mut agent, &mut streams, &mut now, &limits);
        // (The check clones the log: every 8th step and at the end.)
        if steps % 8 == 0 {
            check(&relay, &limits, now);
        }
    }
    check(&relay, &limits, now);
}

fn read_u32(mem: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(mem[off..off + 4].try_into().expect("4 bytes"))
}

#[allow(clippy::too_many_arguments)]
fn step(
    op: u8,
    c: &mut Cursor<'_>,
    relay: &mut Relay,
    mem: &mut [u8],
    agent: &mut Agent,
    streams: &mut Vec<u32>,
    now: &mut u64,
    limits: &RelayLimits,
) {
    let pick = |c: &mut Cursor<'_>, streams: &[u32]| -> u32 {
        let i = c.u8().unwrap_or(0);
        if streams.is_empty() || i == 0xFF {
            u32::from(i)
        } else {
            streams[usize::from(i) % streams.len()]
        }
    };
    match op % 14 {
        // A hostile write anywhere in the region.
        0 => {
            let off = c.u32().unwrap_or(0) as usize % mem.len();
            let len = usize::from(c.u8().unwrap_or(0));
            let bytes = c.bytes(len);
            let end = (off + bytes.len()).min(mem.len());
            mem[off..end].copy_from_slice(&bytes[..end - off]);
        }
        // A well-framed record with arbitrary payload (reaches the decoder).
        1 => {
            let len = usize::from(c.u16().unwrap_or(0));
            let payload = c.bytes(len).to_vec();
            if !payload.is_empty() {
                let _ = agent.layout.guest_to_host().produce(mem, &mut agent.g2h_head, &payload);
            }
        }
        // A genuine agent message.
        2 => {
            let kind = c.u8().unwrap_or(0);
            let stream = pick(c, streams);
            // Mostly small payloads (each input runs up to 256 steps);
            // bit 7 of the kind asks for a full MAX_DATA one.
            let n = if kind & 0x80 != 0 { MAX_DATA } else { usize::from(c.u16().unwrap_or(0)) % 4097 };
            let msg = match kind % 8 {
                0 => FromAgent::Hello {
                    protocol: agent_proto::AGENT_PROTOCOL,
                    agent_version: "0.1.0".into(),
                    hostname: "vm".into(),
                    kernel: "6.1".into(),
                },
                1 => FromAgent::Heartbeat { seq: u64::from(kind), uptime_ms: *now, load: GuestLoad::default() },
                2 => FromAgent::ServiceEvent { name: "web".into(), what: "exited with status 1".into() },
                3 => FromAgent::Event { stream, event: Event::Stdout(vec![b'x'; n]) },
                4 => FromAgent::Event { stream, event: Event::Data(vec![0; n]) },
                5 => {
                    FromAgent::Event { stream, event: Event::Exited { code: Some(3), signal: None, timed_out: false } }
                }
                6 => FromAgent::Event { stream, event: Event::Error("no such file".into()) },
                _ => FromAgent::Event { stream, event: Event::Stderr(vec![b'e'; n]) },
            };
            if let Ok(b) = encode(&msg, MAX_RECORD) {
                let _ = agent.layout.guest_to_host().produce(mem, &mut agent.g2h_head, &b);
            }
        }
        // The agent's hypercall.
        3 => {
            let was = relay.attached();
            match relay.kick(mem, *now) {
                Ok(o) => {
                    assert!(o.records_in <= limits.records_per_kick);
                    assert!(o.records_out <= limits.records_per_kick + limits.max_streams);
                }
                Err(_) => assert!(!relay.attached(), "a failed kick detaches (attached before: {was})"),
            }
        }
        // The console opens an operation.
        4 => {
            let stdin = c.u8().unwrap_or(0) & 1 == 1;
            if let Ok(s) = relay.open(exec_op(stdin), *now) {
                assert!(!streams.contains(&s), "stream id {s} reused while open");
                streams.push(s);
            }
        }
        // Console input.
        5 => {
            let s = pick(c, streams);
            let kind = c.u8().unwrap_or(0);
            let n = usize::from(c.u16().unwrap_or(0)) % 4097;
            let input = match kind % 5 {
                0 => Input::Data(vec![1; n]),
                1 => Input::End,
                2 => Input::Signal(i32::from(kind)),
                3 => Input::Cancel,
                _ => Input::Data(vec![2; MAX_DATA + (n & 1)]),
            };
            let _ = relay.send(s, input, *now);
        }
        // The console polls.
        6 => {
            let s = pick(c, streams);
            // 0 drains the stream: what it held must fit its window (plus
            // the one error event that ends an overrun stream).
            let max = match c.u16().unwrap_or(0) {
                0 => usize::MAX,
                m => usize::from(m),
            };
            if let Ok((events, finished)) = relay.poll(s, max, *now) {
                let w: usize = events.iter().map(Event::weight).sum();
                if max == usize::MAX {
                    assert!(w <= limits.stream_window + 64, "stream {s} held {w} bytes of events");
                }
                for (i, e) in events.iter().enumerate() {
                    if e.is_terminal() {
                        assert_eq!(i + 1, events.len(), "events after a terminal event");
                    }
                }
                if finished {
                    streams.retain(|x| *x != s);
                }
            }
        }
        // Time passes.
        7 => {
            *now += u64::from(c.u16().unwrap_or(0)) * 16;
            relay.tick(*now);
        }
        8 => {
            let p = c.u32().unwrap_or(0);
            let t = u64::from(c.u32().unwrap_or(0));
            let _ = relay.set_heartbeat(p % 70_000, t);
        }
        // The agent reads what the node gave it.
        9 => {
            let mut rec = Vec::new();
            for _ in 0..64 {
                match agent.layout.host_to_guest().consume(mem, &mut agent.h2g_tail, &mut rec) {
                    Ok(true) => {
                        assert!(rec.len() <= MAX_RECORD);
                        // What the node writes always decodes (unless the
                        // input scribbled over the ring in between).
                        let _ = agent_proto::msg::decode::<ToAgent>(&rec, MAX_RECORD);
                    }
                    _ => break,
                }
            }
        }
        10 => {
            relay.attach(agent.layout, *now);
            agent.g2h_head = 0;
            agent.h2g_tail = 0;
            mem[..CTRL_SIZE as usize].fill(0);
            agent.layout.init(mem).expect("init in bounds");
        }
        11 => relay.detach("fuzz", *now),
        12 => {
            let st = relay.status(*now);
            assert!(st.streams as usize <= limits.max_streams);
            let (log, next) = relay.log_since(u64::from(c.u8().unwrap_or(0)), 1000);
            assert!(log.len() <= limits.log_entries);
            if let Some(l) = log.last() {
                assert_eq!(next, l.index + 1);
            }
        }
        _ => {
            let _ = relay.wants_doorbell();
            relay.doorbell_rung();
        }
    }
}

/// The relay's queues stay within their limits.
fn check(relay: &Relay, limits: &RelayLimits, now: u64) {
    let st = relay.status(now);
    assert!(st.streams as usize <= limits.max_streams, "{} streams open", st.streams);
    let (log, _) = relay.log_since(0, usize::MAX);
    assert!(log.len() <= limits.log_entries, "{} log entries", log.len());
    if st.attached {
        assert!(relay.layout().is_some());
    }
}
