//! Just enough TPM 2.0 for BMonitor to bind the node disk's seal key to the
//! node's TPM: command marshalling and response parsing for Startup,
//! GetRandom, CreatePrimary, Create, Load, Unseal, HMAC and FlushContext,
//! with password sessions (`TPM_RS_PW`, empty password) only.
//!
//! The crate never touches hardware: a [`Transport`] moves bytes (the
//! hypervisor's TIS driver, a TCP link to `swtpm` in tests, a fake TPM in
//! unit tests). Every response is untrusted input: it is parsed with
//! bounds-checked reads, must match its structure exactly, and an error is
//! returned for anything else, never a panic.
//!
//! Two ways to tie a secret to a TPM are offered:
//! - [`node_seal_key`] (what BMonitor uses): a keyed-hash primary key in
//!   the owner hierarchy is *derived* from the TPM's owner seed with a
//!   fixed template, so the same TPM re-creates it on every boot and
//!   nothing needs storing; `TPM2_HMAC` under it over a fixed label gives
//!   32 bytes only that TPM can produce, mixed with the provisioning secret.
//! - [`seal`] / [`unseal`]: a classic sealed data object (a keyed-hash
//!   object holding the secret) under an ECC P-256 storage primary key;
//!   the returned [`SealedBlob`] must be stored somewhere and only this TPM
//!   can load it.
//!
//! Neither is bound to PCRs (that needs policy sessions): the binding is to
//! the TPM's owner seed, which `TPM2_Clear` replaces (crypto-erasing what
//! was bound to it).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

extern crate alloc;

pub mod cmd;
mod wire;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use zeroize::{Zeroize, Zeroizing};

/// Command tag without an authorization area (Part 2 §6.9 `TPM_ST`).
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// Command tag with an authorization area.
pub const TPM_ST_SESSIONS: u16 = 0x8002;

/// Command codes (Part 2 §6.5 `TPM_CC`) of the commands this crate sends.
pub const TPM_CC_CREATE_PRIMARY: u32 = 0x0000_0131;
/// `TPM2_Create`.
pub const TPM_CC_CREATE: u32 = 0x0000_0153;
/// `TPM2_HMAC`.
pub const TPM_CC_HMAC: u32 = 0x0000_0155;
/// `TPM2_Load`.
pub const TPM_CC_LOAD: u32 = 0x0000_0157;
/// `TPM2_Unseal`.
pub const TPM_CC_UNSEAL: u32 = 0x0000_015E;
/// `TPM2_FlushContext`.
pub const TPM_CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
/// `TPM2_GetRandom`.
pub const TPM_CC_GET_RANDOM: u32 = 0x0000_017B;
/// `TPM2_Startup`.
pub const TPM_CC_STARTUP: u32 = 0x0000_0144;

/// Success (Part 2 §6.6 `TPM_RC`).
pub const TPM_RC_SUCCESS: u32 = 0;
/// `TPM2_Startup` after the TPM was already started (by firmware): fine.
pub const TPM_RC_INITIALIZE: u32 = 0x100;
/// The TPM is still self-testing: try again.
pub const TPM_RC_TESTING: u32 = 0x90A;
/// The TPM was interrupted (yielded): try again.
pub const TPM_RC_YIELDED: u32 = 0x908;
/// The TPM asks for the command again.
pub const TPM_RC_RETRY: u32 = 0x922;

/// The password authorization session (Part 2 §7.4 `TPM_RS_PW`).
pub const TPM_RS_PW: u32 = 0x4000_0009;
/// The owner (storage) hierarchy (`TPM_RH_OWNER`).
pub const TPM_RH_OWNER: u32 = 0x4000_0001;

/// Largest response this crate accepts; PC Client TPMs answer in at most
/// 4 KiB (`MAX_RESPONSE_SIZE`), and ours are far smaller.
pub const MAX_RESPONSE: usize = 4096;
/// Largest [`SealedBlob`] accepted (TPM2B_PRIVATE + TPM2B_PUBLIC of a
/// 32-byte sealed object are about 200 bytes), so a caller can reserve a
/// fixed area for it.
pub const MAX_SEALED_BLOB: usize = 1024;

/// How often a command is re-sent when the TPM answers "retry", "yielded"
/// or "testing".
const RETRIES: usize = 16;

/// Why a TPM operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The transport could not deliver the command or fetch the answer
    /// (no device, timeout, link error).
    Transport(&'static str),
    /// The TPM refused the command with response code `rc`.
    Tpm {
        /// The command code that failed.
        cc: u32,
        /// The TPM's response code.
        rc: u32,
    },
    /// The response does not have the structure the command promises.
    Malformed(&'static str),
    /// The caller's input cannot be encoded (too long, wrong size).
    Input(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Transport(why) => write!(f, "TPM transport: {why}"),
            Error::Tpm { cc, rc } => write!(f, "{} failed: TPM response code {rc:#x}", command_name(*cc)),
            Error::Malformed(what) => write!(f, "malformed TPM response: {what}"),
            Error::Input(what) => write!(f, "TPM command input: {what}"),
        }
    }
}

/// The spec name of a command code, for messages.
pub fn command_name(cc: u32) -> &'static str {
    match cc {
        TPM_CC_STARTUP => "TPM2_Startup",
        TPM_CC_GET_RANDOM => "TPM2_GetRandom",
        TPM_CC_CREATE_PRIMARY => "TPM2_CreatePrimary",
        TPM_CC_CREATE => "TPM2_Create",
        TPM_CC_LOAD => "TPM2_Load",
        TPM_CC_UNSEAL => "TPM2_Unseal",
        TPM_CC_HMAC => "TPM2_HMAC",
        TPM_CC_FLUSH_CONTEXT => "TPM2_FlushContext",
        _ => "TPM command",
    }
}

/// Moves one command to the TPM and its response back. Implemented by
/// the hypervisor's TIS driver, by a TCP link to `swtpm` in host tests,
/// and by fakes in unit tests.
pub trait Transport {
    /// Sends `cmd` (a complete TPM command) and writes the TPM's complete
    /// response into `resp`, returning its length. The bytes are not
    /// checked here: the caller parses them as untrusted input.
    fn transact(&mut self, cmd: &[u8], resp: &mut [u8]) -> Result<usize, Error>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn transact(&mut self, cmd: &[u8], resp: &mut [u8]) -> Result<usize, Error> {
        (**self).transact(cmd, resp)
    }
}

/// A transient object handle the TPM returned (`0x80xx_xxxx`); must be
/// flushed with [`flush`] when done, the TPM has only a few slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle(pub u32);

/// A sealed data object as the TPM returned it from `TPM2_Create`:
/// `TPM2B_PRIVATE` (the secret, encrypted and integrity-protected under
/// the TPM's storage primary key) followed by `TPM2B_PUBLIC`, each with
/// its size prefix. Not secret by itself: only the TPM that made it can
/// load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlob(Vec<u8>);

impl SealedBlob {
    /// Checks and wraps stored bytes (both parts present, non-empty,
    /// nothing after them, at most [`MAX_SEALED_BLOB`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<SealedBlob, Error> {
        Self::split(bytes)?;
        Ok(SealedBlob(bytes.to_vec()))
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// (TPM2B_PRIVATE, TPM2B_PUBLIC), each with its size prefix.
    fn parts(&self) -> Result<(&[u8], &[u8]), Error> {
        Self::split(&self.0)
    }

    fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), Error> {
        if bytes.len() > MAX_SEALED_BLOB {
            return Err(Error::Malformed("sealed blob too long"));
        }
        let mut r = wire::Reader::new(bytes);
        let private = r.tpm2b_raw("sealed blob: TPM2B_PRIVATE")?;
        let public = r.tpm2b_raw("sealed blob: TPM2B_PUBLIC")?;
        r.end("sealed blob: trailing bytes")?;
        if private.len() <= 2 || public.len() <= 2 {
            return Err(Error::Malformed("sealed blob: empty part"));
        }
        Ok((private, public))
    }
}

/// Sends `cmd` and returns the raw response (zeroed when dropped: it may
/// hold a secret), re-sending while the TPM asks to retry.
fn exchange<T: Transport + ?Sized>(t: &mut T, cmd: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut resp = Zeroizing::new(vec![0u8; MAX_RESPONSE]);
    for _ in 0..RETRIES {
        let n = t.transact(cmd, &mut resp)?;
        let got = resp.get(..n).ok_or(Error::Transport("transport reported more bytes than the buffer holds"))?;
        if !matches!(cmd::response_code(got), Some(TPM_RC_RETRY | TPM_RC_YIELDED | TPM_RC_TESTING)) {
            resp.truncate(n);
            return Ok(resp);
        }
    }
    Err(Error::Transport("the TPM kept asking to retry"))
}

/// `TPM2_Startup(TPM_SU_CLEAR)`; success when the firmware already
/// started the TPM (`TPM_RC_INITIALIZE`). Call once before the others.
pub fn startup<T: Transport + ?Sized>(t: &mut T) -> Result<(), Error> {
    let c = cmd::startup_clear()?;
    cmd::parse_startup(&exchange(t, &c)?)
}

/// `n` random bytes from the TPM's generator (looping: a TPM may return
/// fewer than asked per command).
pub fn get_random<T: Transport + ?Sized>(t: &mut T, n: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(n);
    let mut empty = 0;
    while out.len() < n {
        let want = u16::try_from(n - out.len()).unwrap_or(u16::MAX).min(64);
        let c = cmd::get_random(want)?;
        let got = cmd::parse_get_random(&exchange(t, &c)?)?;
        if got.len() > usize::from(want) {
            return Err(Error::Malformed("GetRandom returned more bytes than asked"));
        }
        if got.is_empty() {
            empty += 1;
            if empty > RETRIES {
                return Err(Error::Malformed("GetRandom keeps returning no bytes"));
            }
        }
        out.extend_from_slice(&got);
    }
    Ok(out)
}

/// `TPM2_CreatePrimary` in the owner hierarchy from `template` (a
/// marshalled `TPMT_PUBLIC`, see [`cmd::templates`]); the same template
/// gives the same key on the same TPM (until `TPM2_Clear`).
pub fn create_primary<T: Transport + ?Sized>(t: &mut T, template: &[u8]) -> Result<Handle, Error> {
    let c = cmd::create_primary(TPM_RH_OWNER, template)?;
    cmd::parse_create_primary(&exchange(t, &c)?)
}

/// `TPM2_Create` of a sealed data object holding `secret` under `parent`.
pub fn create_sealed<T: Transport + ?Sized>(t: &mut T, parent: Handle, secret: &[u8]) -> Result<SealedBlob, Error> {
    let c = Zeroizing::new(cmd::create_sealed(parent, secret)?);
    cmd::parse_create(&exchange(t, &c)?)
}

/// `TPM2_Load` of a sealed blob under `parent`.
pub fn load<T: Transport + ?Sized>(t: &mut T, parent: Handle, blob: &SealedBlob) -> Result<Handle, Error> {
    let c = cmd::load(parent, blob)?;
    cmd::parse_load(&exchange(t, &c)?)
}

/// `TPM2_Unseal` of a loaded sealed object: its data.
pub fn unseal_object<T: Transport + ?Sized>(t: &mut T, item: Handle) -> Result<Zeroizing<Vec<u8>>, Error> {
    let c = cmd::unseal(item)?;
    cmd::parse_unseal(&exchange(t, &c)?)
}

/// `TPM2_HMAC` (SHA-256) of `data` under a loaded keyed-hash key.
pub fn hmac<T: Transport + ?Sized>(t: &mut T, key: Handle, data: &[u8]) -> Result<Zeroizing<[u8; 32]>, Error> {
    let c = cmd::hmac(key, data)?;
    cmd::parse_hmac(&exchange(t, &c)?)
}

/// `TPM2_FlushContext`: frees a transient object's slot.
pub fn flush<T: Transport + ?Sized>(t: &mut T, handle: Handle) -> Result<(), Error> {
    let c = cmd::flush_context(handle)?;
    cmd::parse_flush(&exchange(t, &c)?)
}

/// Runs `f` with `h`, then flushes `h` whatever happened; `f`'s error wins.
fn with_flush<T: Transport + ?Sized, R>(
    t: &mut T,
    h: Handle,
    f: impl FnOnce(&mut T) -> Result<R, Error>,
) -> Result<R, Error> {
    let out = f(t);
    let flushed = flush(t, h);
    let r = out?;
    flushed?;
    Ok(r)
}

/// Seals `secret` to this TPM: a keyed-hash data object (empty password,
/// `userWithAuth`, `fixedTPM | fixedParent`, no PCR policy) under the
/// ECC P-256 storage primary key [`cmd::templates::storage_primary`].
/// The returned blob must be stored by the caller.
pub fn seal<T: Transport + ?Sized>(t: &mut T, secret: &[u8; 32]) -> Result<SealedBlob, Error> {
    let parent = create_primary(t, &cmd::templates::storage_primary())?;
    with_flush(t, parent, |t| create_sealed(t, parent, secret))
}

/// Recovers a secret sealed by [`seal`] on this TPM; another TPM (or this
/// one after `TPM2_Clear`) fails with [`Error::Tpm`] at `TPM2_Load`.
pub fn unseal<T: Transport + ?Sized>(t: &mut T, blob: &SealedBlob) -> Result<[u8; 32], Error> {
    let parent = create_primary(t, &cmd::templates::storage_primary())?;
    let item = with_flush(t, parent, |t| load(t, parent, blob))?;
    let data = with_flush(t, item, |t| unseal_object(t, item))?;
    let out: [u8; 32] = data.as_slice().try_into().map_err(|_| Error::Malformed("unsealed data is not 32 bytes"))?;
    Ok(out)
}

/// The label HMAC'd under the node's derived TPM key ([`tpm_node_secret`]).
pub const NODE_SECRET_LABEL: &[u8] = b"BMonitor node seal key: TPM share, v1";

/// 32 bytes only this TPM (with its current owner seed) can produce, the
/// same on every boot, with nothing stored: the keyed-hash primary key
/// [`cmd::templates::node_hmac_primary`] is derived from the owner seed,
/// and `TPM2_HMAC` under it of [`NODE_SECRET_LABEL`] is returned.
pub fn tpm_node_secret<T: Transport + ?Sized>(t: &mut T) -> Result<Zeroizing<[u8; 32]>, Error> {
    let key = create_primary(t, &cmd::templates::node_hmac_primary())?;
    with_flush(t, key, |t| hmac(t, key, NODE_SECRET_LABEL))
}

/// HKDF salt of [`combine_seal_key`].
const COMBINE_SALT: &[u8] = b"BMonitor nodedisk seal key v1: provisioning secret + TPM";

/// The node disk's seal key from both shares: HKDF-SHA256 (salt fixed,
/// IKM = provisioning secret ‖ TPM share, info "seal key"). Needs both the
/// boot bundle's secret and this node's TPM.
pub fn combine_seal_key(provisioning: &[u8; 32], tpm_share: &[u8; 32]) -> Result<[u8; 32], Error> {
    let mut ikm = Zeroizing::new([0u8; 64]);
    let (a, b) = ikm.split_at_mut(32);
    a.copy_from_slice(provisioning);
    b.copy_from_slice(tpm_share);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(COMBINE_SALT), ikm.as_slice());
    let mut out = [0u8; 32];
    if hk.expand(b"seal key", &mut out).is_err() {
        out.zeroize();
        return Err(Error::Input("HKDF output length"));
    }
    Ok(out)
}

/// Everything BMonitor does at boot with a TPM: `TPM2_Startup` (tolerating
/// firmware's), the TPM share ([`tpm_node_secret`]), combined with the
/// provisioning secret ([`combine_seal_key`]).
pub fn node_seal_key<T: Transport + ?Sized>(t: &mut T, provisioning: &[u8; 32]) -> Result<[u8; 32], Error> {
    startup(t)?;
    let share = tpm_node_secret(t)?;
    combine_seal_key(provisioning, &share)
}

#[cfg(test)]
mod tests;
