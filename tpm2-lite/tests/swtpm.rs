//! The command sequences against a real TPM 2.0 implementation: `swtpm`
//! (libtpms), spawned here with a fresh state directory per "node", over
//! its data socket with the TPM simulator framing (`TPM_SEND_COMMAND` = 8,
//! locality, u32 length, command → u32 length, response, u32 acknowledge).
//! Skipped (with a note) when `swtpm` is not installed (Debian: `swtpm`).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tpm2_lite::{Error, Transport};

/// One swtpm process over a state directory; killed on drop.
struct Swtpm {
    child: Child,
    sock: PathBuf,
}

impl Swtpm {
    fn start(state: &Path) -> Swtpm {
        std::fs::create_dir_all(state).unwrap();
        let sock = state.join("data.sock");
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", sock.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", state.join("ctrl.sock").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Swtpm { child, sock }
    }

    fn connect(&self) -> SimLink {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    return SimLink(s);
                }
                Err(e) if Instant::now() > deadline => panic!("swtpm socket {}: {e}", self.sock.display()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TPM simulator protocol on swtpm's data socket.
struct SimLink(UnixStream);

impl Transport for SimLink {
    fn transact(&mut self, cmd: &[u8], resp: &mut [u8]) -> Result<usize, Error> {
        let io = |_| Error::Transport("swtpm socket");
        let mut frame = Vec::with_capacity(cmd.len() + 9);
        frame.extend_from_slice(&8u32.to_be_bytes()); // TPM_SEND_COMMAND
        frame.push(0); // locality
        frame.extend_from_slice(&(cmd.len() as u32).to_be_bytes());
        frame.extend_from_slice(cmd);
        self.0.write_all(&frame).map_err(io)?;
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        let out = resp.get_mut(..len).ok_or(Error::Transport("response larger than the buffer"))?;
        self.0.read_exact(out).map_err(io)?;
        let mut ack = [0u8; 4];
        self.0.read_exact(&mut ack).map_err(io)?;
        if ack != [0; 4] {
            return Err(Error::Transport("swtpm did not acknowledge the command"));
        }
        Ok(len)
    }
}

fn swtpm_present() -> bool {
    Command::new("swtpm").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tpm2-lite-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn seal_unseal_and_node_key_against_swtpm() {
    if !swtpm_present() {
        eprintln!("swtpm not installed (Debian: apt-get install swtpm swtpm-tools): skipped");
        return;
    }
    let (dir_a, dir_b) = (scratch("a"), scratch("b"));
    let provisioning = [0x5C; 32];
    let secret: [u8; 32] = core::array::from_fn(|i| i as u8 ^ 0xA5);

    // Node A: seal, unseal, node key.
    let (blob, key_a) = {
        let a = Swtpm::start(&dir_a);
        let mut t = a.connect();
        tpm2_lite::startup(&mut t).unwrap(); // already started: TPM_RC_INITIALIZE tolerated
        let r1 = tpm2_lite::get_random(&mut t, 32).unwrap();
        let r2 = tpm2_lite::get_random(&mut t, 100).unwrap();
        assert_eq!((r1.len(), r2.len()), (32, 100));
        assert_ne!(r1, r2[..32]);
        let blob = tpm2_lite::seal(&mut t, &secret).unwrap();
        assert!(blob.as_bytes().len() < tpm2_lite::MAX_SEALED_BLOB);
        assert!(!blob.as_bytes().windows(32).any(|w| w == secret), "the blob holds no plaintext");
        assert_eq!(tpm2_lite::unseal(&mut t, &blob).unwrap(), secret);
        let key_a = tpm2_lite::node_seal_key(&mut t, &provisioning).unwrap();
        assert_eq!(tpm2_lite::node_seal_key(&mut t, &provisioning).unwrap(), key_a, "same TPM, same key");
        assert_ne!(tpm2_lite::node_seal_key(&mut t, &[0x5D; 32]).unwrap(), key_a, "provisioning secret matters");
        // A tampered blob does not load.
        let mut bad = blob.as_bytes().to_vec();
        bad[10] ^= 1;
        let bad = tpm2_lite::SealedBlob::from_bytes(&bad).unwrap();
        assert!(matches!(tpm2_lite::unseal(&mut t, &bad), Err(Error::Tpm { .. })));
        // Nothing leaked: all transient slots are free again (a TPM has
        // ~3); many rounds would fail with TPM_RC_OBJECT_MEMORY otherwise.
        for _ in 0..8 {
            assert_eq!(tpm2_lite::unseal(&mut t, &blob).unwrap(), secret);
            assert!(tpm2_lite::unseal(&mut t, &bad).is_err());
        }
        (blob, key_a)
    };

    // Node A after a power cycle (new process, same state): same answers.
    {
        let a = Swtpm::start(&dir_a);
        let mut t = a.connect();
        tpm2_lite::startup(&mut t).unwrap();
        assert_eq!(tpm2_lite::unseal(&mut t, &blob).unwrap(), secret);
        assert_eq!(tpm2_lite::node_seal_key(&mut t, &provisioning).unwrap(), key_a);
    }

    // Node B (another TPM): the blob does not load, the node key differs.
    {
        let b = Swtpm::start(&dir_b);
        let mut t = b.connect();
        tpm2_lite::startup(&mut t).unwrap();
        match tpm2_lite::unseal(&mut t, &blob) {
            Err(Error::Tpm { cc, rc }) => {
                assert_eq!(cc, tpm2_lite::TPM_CC_LOAD);
                eprintln!("other TPM refuses the blob: {}", Error::Tpm { cc, rc });
            }
            other => panic!("another TPM unsealed or failed oddly: {other:?}"),
        }
        assert_ne!(tpm2_lite::node_seal_key(&mut t, &provisioning).unwrap(), key_a, "another TPM, another key");
    }
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}
