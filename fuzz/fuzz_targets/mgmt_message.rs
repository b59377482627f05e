//! Fuzzes the management protocol's cleartext decoders, with no handshake
//! (the authenticated path behind Noise is `mgmt_session`): the incremental
//! frame decoder fed in arbitrary pieces, every message type's decoder with
//! a decode/encode/decode identity, authorization of whatever requests
//! decode, and the node session's hello phase (which ends before the first
//! Diffie-Hellman: the handshake frame is never completed here).
#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "common/mgmt.rs"]
mod mgmt;
use mgmt::Owners;
use mgmt_proto::msg::{decode, encode};
use mgmt_proto::*;

// Input layout: one mode byte, then the bytes every decoder sees.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    frames(mode, rest);
    round_trip::<Hello>(rest);
    round_trip::<HandshakeReply>(rest);
    round_trip::<Reply>(rest);
    round_trip::<ErrorReply>(rest);
    if let Some(env) = round_trip::<Envelope>(rest) {
        for role in [Role::Landlord, Role::Tenant(LeaseId(1)), Role::Tenant(LeaseId(2))] {
            if let Err(denied) = authorize(&role, &env.body, &Owners) {
                assert!(!denied.to_error().message.is_empty());
            }
        }
    }
    hello_phase(rest);
});

/// Decodes `data` as `T`; what decodes must re-encode and decode the same.
fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + core::fmt::Debug,
{
    let v = decode::<T>(data, MAX_MESSAGE).ok()?;
    let again = encode(&v, MAX_FRAME).expect("a decoded value re-encodes");
    assert_eq!(decode::<T>(&again, MAX_FRAME).expect("a re-encoded value decodes"), v);
    Some(v)
}

/// The frame decoder, fed in pieces of a size and under a limit chosen by
/// `mode`: the frames it returns, framed again, are exactly the bytes it
/// consumed, and it never returns a frame above its limit.
fn frames(mode: u8, data: &[u8]) {
    let limit = match mode & 3 {
        0 => MAX_HANDSHAKE_FRAME,
        1 => MAX_FRAME,
        2 => 16,
        _ => usize::from(mode),
    };
    let mut dec = FrameDecoder::new(limit);
    let mut seen = Vec::new();
    'feed: for piece in data.chunks(usize::from(mode >> 2) + 1) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    assert!(!f.is_empty() && f.len() <= limit.min(MAX_FRAME));
                    seen.extend_from_slice(&encode_frame(&f).expect("a decoded frame re-encodes"));
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(&data[..seen.len()], &seen[..]);
}

/// The node before the handshake: the hello frame and at most the header of
/// the next frame (completing it would start the Noise handshake).
fn hello_phase(data: &[u8]) {
    let keys = keys();
    let mut n = NodeSession::new(Box::new(HashDrbg::new([4; 32])));
    let hello_end = match data {
        [hi, lo, ..] => (2 + usize::from(u16::from_be_bytes([*hi, *lo]))).min(data.len()),
        _ => data.len(),
    };
    let (hello, next) = data.split_at(hello_end);
    let header = &next[..next.len().min(2)];
    for piece in [hello, header] {
        match n.receive(piece, keys) {
            Ok(events) => assert!(events.is_empty() && !n.is_established()),
            Err(_) => {
                assert!(n.is_closed());
                // The refusal is a cleartext handshake reply the console can read.
                let out = n.take_output();
                let mut dec = FrameDecoder::new(MAX_HANDSHAKE_FRAME);
                dec.push(&out);
                let frame = dec.next_frame().expect("a framed refusal").expect("a whole frame");
                assert!(matches!(
                    decode::<HandshakeReply>(&frame, MAX_HANDSHAKE_FRAME),
                    Ok(HandshakeReply::Refused(_))
                ));
                return;
            }
        }
    }
}

/// Landlord and lease 1 keys (never used for a handshake here).
fn keys() -> &'static KeyTable {
    static K: std::sync::OnceLock<KeyTable> = std::sync::OnceLock::new();
    K.get_or_init(|| KeyTable {
        landlord: Some((SecretKey([1; 32]), PublicKey([2; 32]))),
        tenants: [(LeaseId(1), (SecretKey([3; 32]), PublicKey([4; 32])))].into_iter().collect(),
    })
}
