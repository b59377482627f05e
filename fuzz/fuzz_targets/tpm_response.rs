//! Fuzzes `tpm2-lite`'s parsing of untrusted TPM responses: every
//! command's response parser on the raw input, the sealed-blob decoder,
//! and the high-level operations (seal, unseal, node key, random) against
//! a fake TPM that answers each command with the next length-prefixed
//! chunk of the input. Nothing may panic; results are only checked for
//! their promises (32-byte outputs, blobs that re-decode).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tpm2_lite::{cmd, Error, SealedBlob, Transport};

/// Answers each command with the next chunk of the input (u16 length,
/// then that many bytes); runs dry with a transport error.
struct Replay<'a>(&'a [u8]);

impl Transport for Replay<'_> {
    fn transact(&mut self, _cmd: &[u8], resp: &mut [u8]) -> Result<usize, Error> {
        let [a, b, rest @ ..] = self.0 else { return Err(Error::Transport("dry")) };
        let n = (usize::from(*a) << 8 | usize::from(*b)).min(rest.len()).min(resp.len());
        let (now, later) = rest.split_at(n);
        resp[..n].copy_from_slice(now);
        self.0 = later;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = cmd::parse_startup(data);
    let _ = cmd::parse_get_random(data);
    let _ = cmd::parse_create_primary(data);
    if let Ok(blob) = cmd::parse_create(data) {
        assert_eq!(SealedBlob::from_bytes(blob.as_bytes()).as_ref(), Ok(&blob));
    }
    let _ = cmd::parse_load(data);
    let _ = cmd::parse_unseal(data);
    let _ = cmd::parse_hmac(data);
    let _ = cmd::parse_flush(data);
    let _ = cmd::response_code(data);
    if let Ok(blob) = SealedBlob::from_bytes(data) {
        let _ = cmd::load(tpm2_lite::Handle(0x8000_0000), &blob);
    }

    let Some((&op, script)) = data.split_first() else { return };
    let mut t = Replay(script);
    match op % 5 {
        0 => {
            let _ = tpm2_lite::seal(&mut t, &[0xAB; 32]);
        }
        1 => {
            let blob = SealedBlob::from_bytes(&[0, 2, 1, 1, 0, 2, 2, 2]).expect("fixed blob");
            let _ = tpm2_lite::unseal(&mut t, &blob);
        }
        2 => {
            let _ = tpm2_lite::node_seal_key(&mut t, &[0x42; 32]);
        }
        3 => {
            if let Ok(r) = tpm2_lite::get_random(&mut t, usize::from(op)) {
                assert_eq!(r.len(), usize::from(op));
            }
        }
        _ => {
            let _ = tpm2_lite::startup(&mut t);
        }
    }
});
