//! Fuzzes the node's side of an established management session: what a
//! console that completed the Noise handshake can make the node parse. The
//! fuzz input is a list of records, each encrypted as a real transport
//! message, so they get past the MAC to the envelope decoder, the sequence
//! check, authorization and the encrypted reply.
//!
//! A handshake costs several X25519 operations, far too slow to redo per
//! input, so each role keeps one established node session across inputs.
//! Records that would make the node refuse (and close) are checked without
//! the node by the same decoder, except in one input of 512 (chosen by a
//! hash of the input): there the node gets the first such hostile record,
//! must refuse it with an encrypted error and close, and the next input
//! using that role re-does the handshake. Sequence numbers are relative to the session's last accepted
//! one, so an input means the same on a fresh or a long-lived session.
//!
//! The console side is this file's own Noise initiator with explicit
//! nonces, handshaken once against a real `NodeSession` (the node's
//! ephemeral key comes from a seeded DRBG, so every re-done handshake gives
//! the same keys and the same transcript, which is checked).
#![no_main]

use std::cell::RefCell;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
#[path = "common/mgmt.rs"]
mod mgmt;
use mgmt::Owners;
use mgmt_proto::msg::{decode, encode};
use mgmt_proto::*;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, StatelessTransportState};

/// One role's established session, as the console holds it.
struct Console {
    role: Role,
    /// Hello frame and Noise message 1, replayed to every new node session.
    opening: Vec<u8>,
    /// What the node answers to `opening` (checked on every re-handshake).
    answer: Vec<u8>,
    transport: StatelessTransportState,
}

struct Fixture {
    keys: KeyTable,
    consoles: [Console; 2],
}

/// The node side, kept across inputs.
struct Live {
    node: NodeSession,
    /// Next nonce console → node, and node → console.
    up: u64,
    down: u64,
    /// The last sequence number the node accepted.
    last_seq: u64,
}

const NODE_SEED: [u8; 32] = [4; 32];

/// One input in this many (by hash, which mutations cannot steer) may end
/// with a hostile record. Each costs a new handshake (about 2.5 ms under
/// the sanitizers); were the choice a plain flag, the fuzzer would keep
/// the refusal paths' inputs and spend most of its time in handshakes.
const HOSTILE_ONE_IN: u32 = 512;

/// Records delivered to the node per input: enough for sequence-number
/// games, and a bound on the per-input cost (three AEAD operations each).
const MAX_DELIVERED: usize = 4;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let node = KeyPair::generate(&mut HashDrbg::new([1; 32])).expect("node key");
        let console = KeyPair::generate(&mut HashDrbg::new([2; 32])).expect("console key");
        let keys = KeyTable {
            landlord: Some((node.secret.clone(), console.public)),
            tenants: [(LeaseId(1), (node.secret.clone(), console.public))].into_iter().collect(),
        };
        let consoles = [Role::Landlord, Role::Tenant(LeaseId(1))].map(|role| connect(role, &console, &node, &keys));
        Fixture { keys, consoles }
    })
}

/// Runs the handshake once for `role`: our initiator against a real node.
fn connect(role: Role, console: &KeyPair, node: &KeyPair, keys: &KeyTable) -> Console {
    let hello = encode(&Hello { version: PROTOCOL_VERSION, role }, 64).expect("hello");
    let params = NOISE_PARAMS.parse().expect("noise params");
    let mut hs = Builder::with_resolver(params, Box::new(Seeded(std::sync::Mutex::new(Some([3; 32])))))
        .local_private_key(&console.secret.0)
        .and_then(|b| b.remote_public_key(&node.public.0))
        .and_then(|b| b.prologue(&hello))
        .and_then(|b| b.build_initiator())
        .expect("initiator");
    let mut msg1 = vec![0u8; 256];
    let n = hs.write_message(&[], &mut msg1).expect("message 1");
    msg1.truncate(n);
    let mut opening = encode_frame(&hello).expect("hello frame");
    opening.extend_from_slice(&encode_frame(&msg1).expect("message 1 frame"));
    let (live, answer) = handshake(&opening, keys);
    assert!(live.node.role() == Some(role));
    let mut dec = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
    dec.push(&answer);
    let frame = dec.next_frame().expect("answer frame").expect("whole answer");
    let HandshakeReply::Accept(msg2) = decode(&frame, MAX_HANDSHAKE_FRAME).expect("handshake reply") else {
        panic!("the node refused the fixture's handshake");
    };
    let mut payload = vec![0u8; msg2.len()];
    hs.read_message(&msg2, &mut payload).expect("message 2");
    let transport = hs.into_stateless_transport_mode().expect("transport");
    Console { role, opening, answer, transport }
}

/// A new node session fed the console's opening; returns it and its answer.
fn handshake(opening: &[u8], keys: &KeyTable) -> (Live, Vec<u8>) {
    let mut node = NodeSession::new(Box::new(HashDrbg::new(NODE_SEED)));
    let events = node.receive(opening, keys).expect("the fixture's handshake is accepted");
    assert!(matches!(events[..], [NodeEvent::Established { .. }]));
    let answer = node.take_output();
    (Live { node, up: 0, down: 0, last_seq: 0 }, answer)
}

thread_local! {
    static LIVE: RefCell<[Option<Live>; 2]> = const { RefCell::new([None, None]) };
}

// Input layout: a flags byte (bit 0: tenant instead of landlord), then
// records of a tag byte, a length (one byte, or two little-endian when tag
// bit 7 is set) and that many payload bytes. Tag bits 0-1: 0 an envelope
// whose sequence number is the session's last plus the payload's first
// byte, the rest of the payload being the postcard request; 1 a whole
// plaintext; 2 a raw (unauthenticated) transport message; 3 raw bytes for
// the frame decoder. At most MAX_DELIVERED records reach the node.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let f = fixture();
    let which = usize::from(flags & 1);
    let console = &f.consoles[which];
    let hostile_ok = fnv1a(data).is_multiple_of(HOSTILE_ONE_IN);
    LIVE.with_borrow_mut(|live| {
        let slot = &mut live[which];
        let mut delivered = 0;
        while let Some((tag, payload, tail)) = record(rest) {
            rest = tail;
            if delivered == MAX_DELIVERED {
                break;
            }
            let s = slot.get_or_insert_with(|| {
                let (s, answer) = handshake(&console.opening, &f.keys);
                assert_eq!(answer, console.answer, "re-done handshakes are identical");
                s
            });
            let (frame, expect) = match tag & 3 {
                0 | 1 => {
                    let plain = if tag & 3 == 0 { envelope(s.last_seq, payload) } else { payload.to_vec() };
                    // The node takes a request numbered above the last one,
                    // except PUSH_SEQ (reserved for its own pushes).
                    let env = decode::<Envelope>(&plain, MAX_MESSAGE)
                        .ok()
                        .filter(|e| e.seq > s.last_seq && e.seq != mgmt_proto::monitor::PUSH_SEQ);
                    if env.is_none() && !hostile_ok {
                        continue;
                    }
                    let mut ct = vec![0u8; plain.len() + NOISE_TAG_LEN];
                    let Ok(n) = console.transport.write_message(s.up, &plain, &mut ct) else { continue };
                    ct.truncate(n);
                    let Ok(frame) = encode_frame(&ct) else { continue };
                    s.up += 1;
                    (frame, env)
                }
                2 if hostile_ok && !payload.is_empty() => (encode_frame(payload).expect("short frame"), None),
                3 if hostile_ok => (payload.to_vec(), None),
                _ => continue,
            };
            delivered += 1;
            match s.node.receive(&frame, &f.keys) {
                Ok(events) => {
                    let Some(env) = expect else {
                        // Raw bytes that made no whole frame: nothing happened,
                        // but the node now holds a partial frame; start over.
                        assert!(events.is_empty() && tag & 3 == 3);
                        *slot = None;
                        break;
                    };
                    assert!(matches!(&events[..], [NodeEvent::Request(e)] if *e == env));
                    s.last_seq = env.seq;
                    serve(console, s, &env, delivered == 1);
                }
                Err(_) => {
                    assert!(s.node.is_closed() && expect.is_none());
                    // The refusal is encrypted, numbered 0 or as the request.
                    let out = s.node.take_output();
                    if let Some(reply) = open_reply(console, s, &out) {
                        assert!(reply.body.is_err());
                    }
                    *slot = None;
                    break;
                }
            }
        }
    });
});

/// FNV-1a over the whole input.
fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Splits off the next record: (tag, payload, rest).
fn record(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (len, rest) = if tag & 0x80 != 0 {
        let (l, rest) = rest.split_first_chunk::<2>()?;
        (usize::from(u16::from_le_bytes(*l)), rest)
    } else {
        let (&l, rest) = rest.split_first()?;
        (usize::from(l), rest)
    };
    let len = len.min(rest.len());
    Some((tag, &rest[..len], &rest[len..]))
}

/// An envelope plaintext: sequence number `last + payload[0]` (postcard
/// varint), then the rest of the payload as the encoded request.
fn envelope(last: u64, payload: &[u8]) -> Vec<u8> {
    let (step, body) = payload.split_first().map_or((0, &[][..]), |(&s, b)| (s, b));
    let mut seq = last.saturating_add(u64::from(step));
    let mut plain = Vec::with_capacity(10 + body.len());
    loop {
        let byte = (seq & 0x7f) as u8;
        seq >>= 7;
        if seq == 0 {
            plain.push(byte);
            break;
        }
        plain.push(byte | 0x80);
    }
    plain.extend_from_slice(body);
    plain
}

/// Answers an accepted request as the node does: authorize, then reply.
/// With `check`, the console decrypts the reply and compares it (each
/// AEAD operation is slow under the sanitizers, so only the first reply of
/// an input is opened; the others only advance the nonce).
fn serve(console: &Console, s: &mut Live, env: &Envelope, check: bool) {
    let body = match authorize(&console.role, &env.body, &Owners) {
        Ok(()) => Ok(Response::Done),
        Err(denied) => Err(denied.to_error()),
    };
    s.node.reply(env.seq, body.clone()).expect("an open session replies");
    let out = s.node.take_output();
    if check {
        let reply = open_reply(console, s, &out).expect("the console reads the node's reply");
        assert_eq!(reply, Reply { seq: env.seq, body });
    } else {
        assert!(!out.is_empty());
        s.down += 1;
    }
}

/// Decrypts and decodes one reply frame from the node.
fn open_reply(console: &Console, s: &mut Live, out: &[u8]) -> Option<Reply> {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(out);
    let frame = dec.next_frame().ok()??;
    assert_eq!(dec.pending(), 0, "one reply per request");
    let mut plain = vec![0u8; frame.len()];
    let n = console.transport.read_message(s.down, &frame, &mut plain).expect("the node's reply authenticates");
    s.down += 1;
    Some(decode::<Reply>(&plain[..n], MAX_MESSAGE).expect("the node's reply decodes"))
}

/// snow resolver for the fuzz console: snow's primitives, and an ephemeral
/// key from a fixed seed so the fixture is the same on every run.
struct Seeded(std::sync::Mutex<Option<[u8; 32]>>);

struct DrbgRandom(HashDrbg);

impl Random for DrbgRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill(dest).map_err(|_| snow::Error::Rng)
    }
}

impl CryptoResolver for Seeded {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        let seed = self.0.lock().ok()?.take()?;
        Some(Box::new(DrbgRandom(HashDrbg::new(seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}
