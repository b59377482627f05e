//! Fuzzes the management protocol's decoders through `NodeSession`: raw
//! bytes in the handshake phase, raw frames after a real handshake, and
//! arbitrary plaintexts inside valid encrypted frames (envelope decoding,
//! sequence checks); plus direct message decoding and the console side.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgmt_proto::msg::{decode, encode};
use mgmt_proto::*;

fn rng(seed: u8) -> Box<dyn Entropy> {
    Box::new(HashDrbg::new([seed; 32]))
}

struct Fixture {
    keys: KeyTable,
    console: KeyPair,
    node_public: PublicKey,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(make_fixture)
}

fn make_fixture() -> Fixture {
    let node = KeyPair::generate(&mut HashDrbg::new([1; 32])).unwrap();
    let console = KeyPair::generate(&mut HashDrbg::new([2; 32])).unwrap();
    let mut keys = KeyTable::default();
    keys.landlord = Some((node.secret.clone(), console.public));
    keys.tenants.insert(LeaseId(1), (node.secret.clone(), console.public));
    Fixture { keys, console, node_public: node.public }
}

fn established(f: &Fixture, role: Role) -> (ConsoleSession, NodeSession) {
    let mut c = ConsoleSession::new(role, &f.console.secret, &f.node_public, rng(3)).unwrap();
    let mut n = NodeSession::new(rng(4));
    n.receive(&c.take_output(), &f.keys).unwrap();
    c.receive(&n.take_output()).unwrap();
    assert!(c.is_established() && n.is_established());
    (c, n)
}

fn answer(n: &mut NodeSession, events: Vec<NodeEvent>) {
    for ev in events {
        if let NodeEvent::Request(env) = ev {
            let _ = n.reply(env.seq, Ok(Response::Done));
        }
    }
}

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + core::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = decode::<T>(data, MAX_MESSAGE) {
        let again = encode(&v, MAX_FRAME).expect("decoded value re-encodes");
        assert_eq!(decode::<T>(&again, MAX_FRAME).expect("re-encoded value decodes"), v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    match mode % 5 {
        // The handshake phase: arbitrary bytes in arbitrary pieces.
        0 => {
            let mut n = NodeSession::new(rng(4));
            for piece in rest.chunks(usize::from(mode / 5).max(1)) {
                if n.receive(piece, &f.keys).is_err() {
                    assert!(n.is_closed());
                    break;
                }
            }
            let _ = n.take_output();
        }
        // Raw (unauthenticated) frames after a real handshake.
        1 => {
            let (_c, mut n) = established(&f, Role::Landlord);
            match n.receive(rest, &f.keys) {
                Ok(ev) => answer(&mut n, ev),
                Err(_) => assert!(n.is_closed()),
            }
        }
        // Arbitrary plaintexts in valid encrypted frames: each message is
        // a 1-byte length then that many bytes.
        2 => {
            let role = if mode & 0x80 != 0 { Role::Tenant(LeaseId(1)) } else { Role::Landlord };
            let (mut c, mut n) = established(&f, role);
            let mut rest = rest;
            while let Some((&len, tail)) = rest.split_first() {
                let len = usize::from(len).min(tail.len());
                let (msg, tail) = tail.split_at(len);
                rest = tail;
                if msg.is_empty() || c.send_raw(msg).is_err() {
                    break;
                }
                match n.receive(&c.take_output(), &f.keys) {
                    Ok(ev) => {
                        for e in &ev {
                            if let NodeEvent::Request(env) = e {
                                let _ = authorize(&role, &env.body, &NoOwners);
                            }
                        }
                        answer(&mut n, ev);
                        let _ = n.take_output();
                    }
                    Err(_) => {
                        assert!(n.is_closed());
                        break;
                    }
                }
            }
        }
        // Direct decoding of every message type.
        3 => {
            round_trip::<Hello>(rest);
            round_trip::<HandshakeReply>(rest);
            round_trip::<Envelope>(rest);
            round_trip::<Reply>(rest);
        }
        // The console side receiving arbitrary bytes after a handshake.
        _ => {
            let (mut c, _n) = established(&f, Role::Landlord);
            let _ = c.send(Request::NodeStatus);
            if c.receive(rest).is_err() {
                assert!(c.is_closed());
            }
        }
    }
});

struct NoOwners;
impl Ownership for NoOwners {
    fn vm_lease(&self, vm: VmId) -> Option<LeaseId> {
        (vm.0 == 1).then_some(LeaseId(1))
    }
    fn rule_lease(&self, _: RuleId) -> Option<LeaseId> {
        None
    }
}
