//! Host tests: exact command bytes (from Part 2/3 layouts, written out by
//! hand), response parsing, malformed responses, and the command
//! sequences of the high-level operations against a scripted fake TPM.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

const PW: &str = "00000009 40000009 0000 00 0000";
const AUTH_RESP: [u8; 5] = [0, 0, 1, 0, 0];

/// A successful response with sessions: header, handle, parameterSize,
/// parameters, one password auth response.
fn ok_sessions(handle: Option<u32>, params: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(h) = handle {
        body.extend_from_slice(&h.to_be_bytes());
    }
    body.extend_from_slice(&(params.len() as u32).to_be_bytes());
    body.extend_from_slice(params);
    body.extend_from_slice(&AUTH_RESP);
    frame(TPM_ST_SESSIONS, 0, &body)
}

fn ok_plain(params: &[u8]) -> Vec<u8> {
    frame(TPM_ST_NO_SESSIONS, 0, params)
}

fn err(rc: u32) -> Vec<u8> {
    frame(TPM_ST_NO_SESSIONS, rc, &[])
}

fn frame(tag: u16, rc: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&tag.to_be_bytes());
    v.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    v.extend_from_slice(&rc.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn b2(data: &[u8]) -> Vec<u8> {
    let mut v = (data.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(data);
    v
}

/// CreatePrimary / Create creation info: creationData, creationHash, ticket.
fn creation_info() -> Vec<u8> {
    let mut v = b2(&[7; 20]);
    v.extend(b2(&[8; 32]));
    v.extend_from_slice(&0x8021u16.to_be_bytes());
    v.extend_from_slice(&TPM_RH_OWNER.to_be_bytes());
    v.extend(b2(&[9; 32]));
    v
}

fn create_primary_resp(handle: u32) -> Vec<u8> {
    let mut p = b2(&cmd::templates::storage_primary());
    p.extend(creation_info());
    p.extend(b2(&[0xAA; 34]));
    ok_sessions(Some(handle), &p)
}

fn private() -> Vec<u8> {
    b2(&[0x11; 80])
}

fn public() -> Vec<u8> {
    b2(&cmd::templates::sealed_object())
}

fn create_resp() -> Vec<u8> {
    let mut p = private();
    p.extend(public());
    p.extend(creation_info());
    ok_sessions(None, &p)
}

fn blob() -> SealedBlob {
    let mut v = private();
    v.extend(public());
    SealedBlob::from_bytes(&v).unwrap()
}

/// A scripted TPM: answers each command with the next canned response
/// and records the commands.
#[derive(Default)]
struct Fake {
    responses: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl Fake {
    fn new(responses: Vec<Vec<u8>>) -> Fake {
        Fake { responses: responses.into(), sent: Vec::new() }
    }

    fn codes(&self) -> Vec<u32> {
        self.sent.iter().map(|c| u32::from_be_bytes(c[6..10].try_into().unwrap())).collect()
    }
}

impl Transport for Fake {
    fn transact(&mut self, cmd: &[u8], resp: &mut [u8]) -> Result<usize, Error> {
        self.sent.push(cmd.to_vec());
        let r = self.responses.pop_front().ok_or(Error::Transport("fake: no response left"))?;
        let out = resp.get_mut(..r.len()).ok_or(Error::Transport("fake: response too long"))?;
        out.copy_from_slice(&r);
        Ok(r.len())
    }
}

// ---- exact command bytes ----

#[test]
fn command_bytes() {
    let label_hex: String = NODE_SECRET_LABEL.iter().map(|b| format!("{b:02x}")).collect();
    let unique_hex: String = cmd::templates::NODE_HMAC_UNIQUE.iter().map(|b| format!("{b:02x}")).collect();
    let zeros32 = "00".repeat(32);
    let secret_hex = "ab".repeat(32);
    let table: Vec<(&str, Vec<u8>, String)> = vec![
        ("Startup(CLEAR)", cmd::startup_clear().unwrap(), "8001 0000000c 00000144 0000".into()),
        ("GetRandom(32)", cmd::get_random(32).unwrap(), "8001 0000000c 0000017b 0020".into()),
        ("FlushContext", cmd::flush_context(Handle(0x8000_0001)).unwrap(), "8001 0000000e 00000165 80000001".into()),
        ("Unseal", cmd::unseal(Handle(0x8000_0002)).unwrap(), format!("8002 0000001b 0000015e 80000002 {PW}")),
        (
            "CreatePrimary(SRK)",
            cmd::create_primary(TPM_RH_OWNER, &cmd::templates::storage_primary()).unwrap(),
            format!(
                "8002 00000083 00000131 40000001 {PW}
                 0004 0000 0000
                 005a 0023 000b 00030472 0000
                      0006 0080 0043 0010 0003 0010
                      0020 {zeros32} 0020 {zeros32}
                 0000 00000000"
            ),
        ),
        (
            "CreatePrimary(node HMAC key)",
            cmd::create_primary(TPM_RH_OWNER, &cmd::templates::node_hmac_primary()).unwrap(),
            format!(
                "8002 00000059 00000131 40000001 {PW}
                 0004 0000 0000
                 0030 0008 000b 00040472 0000 0005 000b 0020 {unique_hex}
                 0000 00000000"
            ),
        ),
        (
            "Create(sealed)",
            cmd::create_sealed(Handle(0x8000_0000), &[0xAB; 32]).unwrap(),
            format!(
                "8002 00000057 00000153 80000000 {PW}
                 0024 0000 0020 {secret_hex}
                 000e 0008 000b 00000452 0000 0010 0000
                 0000 00000000"
            ),
        ),
        (
            "HMAC",
            cmd::hmac(Handle(0x8000_0003), NODE_SECRET_LABEL).unwrap(),
            format!("8002 {:08x} 00000155 80000003 {PW} 0025 {label_hex} 000b", 10 + 4 + 13 + 2 + 37 + 2),
        ),
        (
            "Load",
            cmd::load(Handle(0x8000_0000), &blob()).unwrap(),
            format!(
                "8002 {:08x} 00000157 80000000 {PW} 0050 {} 000e 0008 000b 00000452 0000 0010 0000",
                10 + 4 + 13 + 82 + 16,
                "11".repeat(80)
            ),
        ),
    ];
    assert_eq!(NODE_SECRET_LABEL.len(), 37);
    for (name, got, want) in table {
        assert_eq!(got, hex(&want), "{name}");
    }
}

#[test]
fn command_input_limits() {
    assert_eq!(cmd::create_sealed(Handle(0x8000_0000), &[]), Err(Error::Input("sealed data must be 1..128 bytes")));
    assert!(cmd::create_sealed(Handle(0x8000_0000), &[0; 129]).is_err());
    assert!(cmd::hmac(Handle(0x8000_0000), &[0; 1025]).is_err());
    assert!(cmd::create_primary(TPM_RH_OWNER, &vec![0; 70_000]).is_err());
}

// ---- response parsing ----

#[test]
fn parse_good_responses() {
    cmd::parse_startup(&ok_plain(&[])).unwrap();
    cmd::parse_startup(&err(TPM_RC_INITIALIZE)).unwrap();
    assert_eq!(cmd::parse_get_random(&ok_plain(&b2(&[5; 16]))).unwrap(), vec![5; 16]);
    assert_eq!(cmd::parse_create_primary(&create_primary_resp(0x8000_0000)).unwrap(), Handle(0x8000_0000));
    assert_eq!(cmd::parse_create(&create_resp()).unwrap(), blob());
    assert_eq!(cmd::parse_load(&ok_sessions(Some(0x8000_0001), &b2(&[1; 34]))).unwrap(), Handle(0x8000_0001));
    assert_eq!(*cmd::parse_unseal(&ok_sessions(None, &b2(&[3; 32]))).unwrap(), vec![3; 32]);
    assert_eq!(*cmd::parse_hmac(&ok_sessions(None, &b2(&[4; 32]))).unwrap(), [4; 32]);
    cmd::parse_flush(&ok_plain(&[])).unwrap();
}

#[test]
fn tpm_error_codes_are_reported() {
    assert_eq!(cmd::parse_startup(&err(0x101)), Err(Error::Tpm { cc: TPM_CC_STARTUP, rc: 0x101 }));
    assert_eq!(cmd::parse_load(&err(0x9a2)), Err(Error::Tpm { cc: TPM_CC_LOAD, rc: 0x9a2 }));
    let e = Error::Tpm { cc: TPM_CC_UNSEAL, rc: 0x98e };
    assert_eq!(e.to_string(), "TPM2_Unseal failed: TPM response code 0x98e");
}

#[test]
fn malformed_responses_are_refused() {
    let good_load = ok_sessions(Some(0x8000_0001), &b2(&[1; 34]));
    // Every truncation of every good response.
    type Refuses = fn(&[u8]) -> bool;
    let goods: Vec<(Vec<u8>, Refuses)> = vec![
        (create_primary_resp(0x8000_0000), |r| cmd::parse_create_primary(r).is_err()),
        (create_resp(), |r| cmd::parse_create(r).is_err()),
        (good_load.clone(), |r| cmd::parse_load(r).is_err()),
        (ok_sessions(None, &b2(&[3; 32])), |r| cmd::parse_unseal(r).is_err()),
        (ok_sessions(None, &b2(&[4; 32])), |r| cmd::parse_hmac(r).is_err()),
        (ok_plain(&b2(&[5; 16])), |r| cmd::parse_get_random(r).is_err()),
    ];
    for (good, fails) in &goods {
        for n in 0..good.len() {
            assert!(fails(&good[..n]), "truncated to {n}");
            // Also with the size field patched to match the truncation.
            let mut t = good[..n].to_vec();
            if n >= 6 {
                t[2..6].copy_from_slice(&(n as u32).to_be_bytes());
                assert!(fails(&t), "truncated to {n} with consistent size");
            }
        }
        // One trailing byte, size patched: refused.
        let mut long = good.clone();
        long.push(0);
        let n = long.len() as u32;
        long[2..6].copy_from_slice(&n.to_be_bytes());
        assert!(fails(&long));
    }
    let m = |s| Err(Error::Malformed(s));
    // Size field differs from the length.
    let mut bad = good_load.clone();
    bad[5] ^= 1;
    assert_eq!(cmd::parse_load(&bad), m("response size field differs from its length"));
    // Wrong tag.
    let mut bad = good_load.clone();
    bad[1] = 0x01;
    assert_eq!(cmd::parse_load(&bad), m("response tag does not match the command's"));
    // Handle not transient.
    assert_eq!(
        cmd::parse_load(&ok_sessions(Some(0x4000_0001), &b2(&[1; 34]))),
        m("returned handle is not a transient object")
    );
    // parameterSize larger than the rest.
    let mut bad = good_load.clone();
    bad[14..18].copy_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    assert_eq!(cmd::parse_load(&bad), m("parameterSize"));
    // Auth response with an hmac.
    let mut body = 0x8000_0001u32.to_be_bytes().to_vec();
    body.extend_from_slice(&36u32.to_be_bytes());
    body.extend(b2(&[1; 34]));
    body.extend_from_slice(&[0, 0, 1, 0, 1, 0xEE]);
    assert_eq!(cmd::parse_load(&frame(TPM_ST_SESSIONS, 0, &body)), m("password session response with a nonce or hmac"));
    // An error response with a body.
    assert_eq!(
        cmd::parse_flush(&frame(TPM_ST_NO_SESSIONS, 0x101, &[0])),
        Err(Error::Malformed("error response with a body"))
    );
    // HMAC that is not 32 bytes.
    assert_eq!(
        cmd::parse_hmac(&ok_sessions(None, &b2(&[4; 20]))).map(|_| ()),
        Err(Error::Malformed("HMAC: not a SHA-256 digest"))
    );
    // TPM2B inside the parameters running past them.
    assert!(cmd::parse_unseal(&ok_sessions(None, &[0x00, 0x40, 1, 2])).is_err());
    // Create with an empty outPrivate.
    let mut p = b2(&[]);
    p.extend(public());
    p.extend(creation_info());
    assert_eq!(cmd::parse_create(&ok_sessions(None, &p)), Err(Error::Malformed("sealed blob: empty part")));
}

#[test]
fn sealed_blob_checks() {
    let b = blob();
    assert_eq!(SealedBlob::from_bytes(b.as_bytes()).unwrap(), b);
    assert!(SealedBlob::from_bytes(&[]).is_err());
    assert!(SealedBlob::from_bytes(&b.as_bytes()[..b.as_bytes().len() - 1]).is_err());
    let mut long = b.as_bytes().to_vec();
    long.push(0);
    assert!(SealedBlob::from_bytes(&long).is_err());
    assert!(SealedBlob::from_bytes(&vec![0; MAX_SEALED_BLOB + 1]).is_err());
}

// ---- high-level sequences ----

#[test]
fn seal_sequence() {
    let mut f = Fake::new(vec![create_primary_resp(0x8000_0000), create_resp(), ok_plain(&[])]);
    let got = seal(&mut f, &[0xAB; 32]).unwrap();
    assert_eq!(got, blob());
    assert_eq!(f.codes(), vec![TPM_CC_CREATE_PRIMARY, TPM_CC_CREATE, TPM_CC_FLUSH_CONTEXT]);
    assert_eq!(f.sent[1], cmd::create_sealed(Handle(0x8000_0000), &[0xAB; 32]).unwrap());
    assert_eq!(f.sent[2], cmd::flush_context(Handle(0x8000_0000)).unwrap());
}

#[test]
fn unseal_sequence_and_flush_on_error() {
    let mut f = Fake::new(vec![
        create_primary_resp(0x8000_0000),
        ok_sessions(Some(0x8000_0001), &b2(&[1; 34])),
        ok_plain(&[]),
        ok_sessions(None, &b2(&[0x5A; 32])),
        ok_plain(&[]),
    ]);
    assert_eq!(unseal(&mut f, &blob()).unwrap(), [0x5A; 32]);
    assert_eq!(
        f.codes(),
        vec![TPM_CC_CREATE_PRIMARY, TPM_CC_LOAD, TPM_CC_FLUSH_CONTEXT, TPM_CC_UNSEAL, TPM_CC_FLUSH_CONTEXT]
    );
    assert_eq!(f.sent[2], cmd::flush_context(Handle(0x8000_0000)).unwrap());
    assert_eq!(f.sent[4], cmd::flush_context(Handle(0x8000_0001)).unwrap());

    // Load refused (another TPM): the primary is still flushed, the TPM's code reported.
    let mut f = Fake::new(vec![create_primary_resp(0x8000_0000), err(0x9a2), ok_plain(&[])]);
    assert_eq!(unseal(&mut f, &blob()), Err(Error::Tpm { cc: TPM_CC_LOAD, rc: 0x9a2 }));
    assert_eq!(f.codes(), vec![TPM_CC_CREATE_PRIMARY, TPM_CC_LOAD, TPM_CC_FLUSH_CONTEXT]);

    // Unsealed data of the wrong size.
    let mut f = Fake::new(vec![
        create_primary_resp(0x8000_0000),
        ok_sessions(Some(0x8000_0001), &b2(&[1; 34])),
        ok_plain(&[]),
        ok_sessions(None, &b2(&[0x5A; 31])),
        ok_plain(&[]),
    ]);
    assert_eq!(unseal(&mut f, &blob()), Err(Error::Malformed("unsealed data is not 32 bytes")));
}

#[test]
fn node_seal_key_sequence() {
    let prov = [0x42; 32];
    let mut f = Fake::new(vec![
        err(TPM_RC_INITIALIZE),
        create_primary_resp(0x8000_0000),
        ok_sessions(None, &b2(&[0x77; 32])),
        ok_plain(&[]),
    ]);
    let k = node_seal_key(&mut f, &prov).unwrap();
    assert_eq!(f.codes(), vec![TPM_CC_STARTUP, TPM_CC_CREATE_PRIMARY, TPM_CC_HMAC, TPM_CC_FLUSH_CONTEXT]);
    assert_eq!(f.sent[1], cmd::create_primary(TPM_RH_OWNER, &cmd::templates::node_hmac_primary()).unwrap());
    assert_eq!(f.sent[2], cmd::hmac(Handle(0x8000_0000), NODE_SECRET_LABEL).unwrap());
    assert_eq!(k, combine_seal_key(&prov, &[0x77; 32]).unwrap());
    // Both shares matter.
    assert_ne!(k, combine_seal_key(&[0x43; 32], &[0x77; 32]).unwrap());
    assert_ne!(k, combine_seal_key(&prov, &[0x78; 32]).unwrap());
    assert_ne!(k, prov);
}

#[test]
fn combine_is_fixed() {
    // Pinned: a change here changes every TPM node's seal key (their disks
    // would no longer open).
    let k = combine_seal_key(&[1; 32], &[2; 32]).unwrap();
    let again = combine_seal_key(&[1; 32], &[2; 32]).unwrap();
    assert_eq!(k, again);
    assert_eq!(
        k.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        PINNED_COMBINE,
        "combine_seal_key output changed"
    );
}

// Independently computed (Python hmac/hashlib, RFC 5869).
const PINNED_COMBINE: &str = "a02da46cb67b92ad5fb0f2911dc5c3b111eacc3f5ea9757bb5d6352036a0b23c";

#[test]
fn retries_then_succeeds_and_bounds_retries() {
    let mut f = Fake::new(vec![err(TPM_RC_RETRY), err(TPM_RC_YIELDED), err(TPM_RC_TESTING), ok_plain(&[])]);
    flush(&mut f, Handle(0x8000_0000)).unwrap();
    assert_eq!(f.sent.len(), 4);
    let mut f = Fake::new(vec![err(TPM_RC_RETRY); 40]);
    assert_eq!(flush(&mut f, Handle(0x8000_0000)), Err(Error::Transport("the TPM kept asking to retry")));
}

#[test]
fn get_random_loops_and_bounds() {
    let mut f = Fake::new(vec![ok_plain(&b2(&[1; 20])), ok_plain(&b2(&[2; 20]))]);
    assert_eq!(get_random(&mut f, 40).unwrap().len(), 40);
    let mut f = Fake::new(vec![ok_plain(&b2(&[1; 40]))]);
    assert!(get_random(&mut f, 20).is_err(), "more than asked");
    let mut f = Fake::new(vec![ok_plain(&b2(&[])); 40]);
    assert!(get_random(&mut f, 20).is_err(), "never any bytes");
}

#[test]
fn lying_transport_length_is_refused() {
    struct Liar;
    impl Transport for Liar {
        fn transact(&mut self, _: &[u8], _: &mut [u8]) -> Result<usize, Error> {
            Ok(MAX_RESPONSE + 1)
        }
    }
    assert!(matches!(startup(&mut Liar), Err(Error::Transport(_))));
}

type Parser = fn(&[u8]) -> bool;

const PARSERS: [Parser; 8] = [
    |r| cmd::parse_startup(r).is_ok(),
    |r| cmd::parse_get_random(r).is_ok(),
    |r| cmd::parse_create_primary(r).is_ok(),
    |r| cmd::parse_create(r).is_ok(),
    |r| cmd::parse_load(r).is_ok(),
    |r| cmd::parse_unseal(r).is_ok(),
    |r| cmd::parse_hmac(r).is_ok(),
    |r| cmd::parse_flush(r).is_ok(),
];

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for p in PARSERS {
            let _ = p(&bytes);
        }
        let _ = SealedBlob::from_bytes(&bytes);
    }

    #[test]
    fn mutated_responses_never_panic(which in 0usize..3, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut r = [create_primary_resp(0x8000_0000), create_resp(), ok_sessions(None, &b2(&[3; 32]))][which].clone();
        for (i, x) in flips {
            let n = r.len();
            r[i % n] ^= x;
        }
        for p in PARSERS {
            let _ = p(&r);
        }
    }
}
