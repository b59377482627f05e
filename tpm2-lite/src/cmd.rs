//! Command builders and response parsers, one pair per command (TPM 2.0
//! Part 3). Builders return complete command bytes; parsers take complete
//! response bytes as untrusted input. Public so the fuzz target and tests
//! reach each parser directly.

use crate::wire::{CommandBuf, Reader};
use crate::{Error, Handle, SealedBlob};
use crate::{
    TPM_CC_CREATE, TPM_CC_CREATE_PRIMARY, TPM_CC_FLUSH_CONTEXT, TPM_CC_GET_RANDOM, TPM_CC_HMAC, TPM_CC_LOAD,
    TPM_CC_STARTUP, TPM_CC_UNSEAL, TPM_RC_INITIALIZE, TPM_RC_SUCCESS, TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS,
};
use alloc::vec::Vec;
use zeroize::Zeroizing;

/// `TPM_SU_CLEAR` (Part 2 §6.8).
const TPM_SU_CLEAR: u16 = 0x0000;
/// `TPM_ALG_SHA256` (Part 2 §6.3 / TCG algorithm registry).
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// `TPM_HT_TRANSIENT`: the top byte of a transient object handle.
const TPM_HT_TRANSIENT: u8 = 0x80;

/// The fixed object templates (`TPMT_PUBLIC`, Part 2 §12.2.4). Fixed so a
/// primary key derived from them is the same on every boot.
pub mod templates {
    use alloc::vec::Vec;

    /// `TPM_ALG_AES`.
    const ALG_AES: u16 = 0x0006;
    /// `TPM_ALG_HMAC`.
    const ALG_HMAC: u16 = 0x0005;
    /// `TPM_ALG_KEYEDHASH`.
    const ALG_KEYEDHASH: u16 = 0x0008;
    /// `TPM_ALG_NULL`.
    const ALG_NULL: u16 = 0x0010;
    /// `TPM_ALG_ECC`.
    const ALG_ECC: u16 = 0x0023;
    /// `TPM_ALG_CFB`.
    const ALG_CFB: u16 = 0x0043;
    /// `TPM_ECC_NIST_P256`.
    const ECC_NIST_P256: u16 = 0x0003;

    /// `TPMA_OBJECT` bits (Part 2 §8.3).
    const FIXED_TPM: u32 = 1 << 1;
    const FIXED_PARENT: u32 = 1 << 4;
    const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    const USER_WITH_AUTH: u32 = 1 << 6;
    const NO_DA: u32 = 1 << 10;
    const RESTRICTED: u32 = 1 << 16;
    const DECRYPT: u32 = 1 << 17;
    const SIGN: u32 = 1 << 18;

    /// Attributes of the storage primary key: a restricted decryption
    /// (parent) key generated in and bound to this TPM.
    pub const STORAGE_PRIMARY_ATTRIBUTES: u32 =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | NO_DA | RESTRICTED | DECRYPT;
    /// Attributes of a sealed data object: caller-supplied data, never
    /// leaves this TPM or parent, usable with the (empty) password.
    pub const SEALED_ATTRIBUTES: u32 = FIXED_TPM | FIXED_PARENT | USER_WITH_AUTH | NO_DA;
    /// Attributes of the node HMAC key: generated from the seed, signing
    /// (HMAC) only, not restricted so `TPM2_HMAC` accepts any data.
    pub const NODE_HMAC_ATTRIBUTES: u32 =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | NO_DA | SIGN;

    /// The `unique` field of the node HMAC key: part of the template, so
    /// it makes the derived key BMonitor's own (other software using a
    /// keyed-hash primary with another `unique` gets another key).
    pub const NODE_HMAC_UNIQUE: &[u8; 32] = b"BMonitor node HMAC key v1\0\0\0\0\0\0\0";

    fn header(v: &mut Vec<u8>, kind: u16, attributes: u32) {
        v.extend_from_slice(&kind.to_be_bytes());
        v.extend_from_slice(&super::TPM_ALG_SHA256.to_be_bytes()); // nameAlg
        v.extend_from_slice(&attributes.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
    }

    /// ECC NIST P-256 storage key (as in the TCG provisioning guidance's
    /// SRK template): AES-128-CFB for its children, no scheme, no KDF,
    /// `unique` two 32-byte zero coordinates.
    pub fn storage_primary() -> Vec<u8> {
        let mut v = Vec::with_capacity(90);
        header(&mut v, ALG_ECC, STORAGE_PRIMARY_ATTRIBUTES);
        for x in [ALG_AES, 128, ALG_CFB, ALG_NULL, ECC_NIST_P256, ALG_NULL] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        for _ in 0..2 {
            v.extend_from_slice(&32u16.to_be_bytes());
            v.extend_from_slice(&[0u8; 32]);
        }
        v
    }

    /// A sealed data object: keyed-hash with the NULL scheme, empty
    /// `unique` (the TPM computes it).
    pub fn sealed_object() -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        header(&mut v, ALG_KEYEDHASH, SEALED_ATTRIBUTES);
        v.extend_from_slice(&ALG_NULL.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        v
    }

    /// The node HMAC key: keyed-hash, HMAC-SHA-256 scheme, `unique`
    /// [`NODE_HMAC_UNIQUE`].
    pub fn node_hmac_primary() -> Vec<u8> {
        let mut v = Vec::with_capacity(52);
        header(&mut v, ALG_KEYEDHASH, NODE_HMAC_ATTRIBUTES);
        v.extend_from_slice(&ALG_HMAC.to_be_bytes());
        v.extend_from_slice(&super::TPM_ALG_SHA256.to_be_bytes());
        v.extend_from_slice(&32u16.to_be_bytes());
        v.extend_from_slice(NODE_HMAC_UNIQUE);
        v
    }
}

/// The response code of a response, when it has a complete header.
pub fn response_code(resp: &[u8]) -> Option<u32> {
    let b: [u8; 4] = resp.get(6..10)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// A checked successful response: its handle (if the command returns one)
/// and its parameter area.
struct Parsed<'a> {
    handle: Option<Handle>,
    params: Reader<'a>,
}

/// Checks the header (tag, size = bytes received, response code) and the
/// areas of a response to command `cc`, sent with (`sessions`) or without
/// an authorization area, returning `handles` (0 or 1) handles.
fn parse_response(resp: &[u8], cc: u32, sessions: bool, handles: usize) -> Result<Parsed<'_>, Error> {
    let mut r = Reader::new(resp);
    let tag = r.u16("response header")?;
    let size = r.u32("response header")?;
    let rc = r.u32("response header")?;
    if usize::try_from(size).ok() != Some(resp.len()) {
        return Err(Error::Malformed("response size field differs from its length"));
    }
    if rc != TPM_RC_SUCCESS {
        // Error responses carry nothing after the header (their tag is
        // TPM_ST_NO_SESSIONS; not checked, so the code is still reported).
        if resp.len() != 10 {
            return Err(Error::Malformed("error response with a body"));
        }
        return Err(Error::Tpm { cc, rc });
    }
    let want_tag = if sessions { TPM_ST_SESSIONS } else { TPM_ST_NO_SESSIONS };
    if tag != want_tag {
        return Err(Error::Malformed("response tag does not match the command's"));
    }
    let handle = if handles == 1 {
        let h = r.u32("response handle")?;
        if h.to_be_bytes().first() != Some(&TPM_HT_TRANSIENT) {
            return Err(Error::Malformed("returned handle is not a transient object"));
        }
        Some(Handle(h))
    } else {
        None
    };
    if !sessions {
        return Ok(Parsed { handle, params: Reader::new(r.rest()) });
    }
    let param_size = r.u32("parameterSize")?;
    let params =
        r.bytes(usize::try_from(param_size).map_err(|_| Error::Malformed("parameterSize"))?, "parameterSize")?;
    // One TPMS_AUTH_RESPONSE for our one password session: nonceTPM
    // (empty for a password session), sessionAttributes, hmac (empty).
    let nonce = r.tpm2b("auth response nonce")?;
    let _attributes = r.u8("auth response attributes")?;
    let hmac = r.tpm2b("auth response hmac")?;
    r.end("bytes after the auth response")?;
    if !nonce.is_empty() || !hmac.is_empty() {
        return Err(Error::Malformed("password session response with a nonce or hmac"));
    }
    Ok(Parsed { handle, params: Reader::new(params) })
}

/// `TPM2_Startup(TPM_SU_CLEAR)`.
pub fn startup_clear() -> Result<Vec<u8>, Error> {
    let mut c = CommandBuf::new(TPM_ST_NO_SESSIONS, TPM_CC_STARTUP);
    c.u16(TPM_SU_CLEAR);
    c.finish()
}

/// Startup's response; `TPM_RC_INITIALIZE` (already started) is success.
pub fn parse_startup(resp: &[u8]) -> Result<(), Error> {
    match parse_response(resp, TPM_CC_STARTUP, false, 0) {
        Ok(p) => p.params.end("Startup: parameters"),
        Err(Error::Tpm { rc: TPM_RC_INITIALIZE, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `TPM2_GetRandom(bytesRequested)`.
pub fn get_random(n: u16) -> Result<Vec<u8>, Error> {
    let mut c = CommandBuf::new(TPM_ST_NO_SESSIONS, TPM_CC_GET_RANDOM);
    c.u16(n);
    c.finish()
}

/// GetRandom's `randomBytes` (possibly fewer than asked).
pub fn parse_get_random(resp: &[u8]) -> Result<Vec<u8>, Error> {
    let mut p = parse_response(resp, TPM_CC_GET_RANDOM, false, 0)?.params;
    let bytes = p.tpm2b("GetRandom: randomBytes")?;
    p.end("GetRandom: trailing bytes")?;
    Ok(bytes.to_vec())
}

/// The parameters CreatePrimary and Create share: `inSensitive`
/// (`TPM2B_SENSITIVE_CREATE`: empty userAuth, then `data`), `inPublic`,
/// empty `outsideInfo`, no `creationPCR`.
fn create_params(c: &mut CommandBuf, template: &[u8], data: &[u8]) -> Result<(), Error> {
    let data_len = u16::try_from(data.len()).map_err(|_| Error::Input("sensitive data too long"))?;
    let sensitive_len = data_len.checked_add(4).ok_or(Error::Input("sensitive data too long"))?;
    c.u16(sensitive_len).u16(0).u16(data_len).bytes(data);
    c.tpm2b(template)?;
    c.u16(0).u32(0);
    Ok(())
}

/// `TPM2_CreatePrimary` under `hierarchy` with `template`.
pub fn create_primary(hierarchy: u32, template: &[u8]) -> Result<Vec<u8>, Error> {
    let mut c = CommandBuf::new(TPM_ST_SESSIONS, TPM_CC_CREATE_PRIMARY);
    c.u32(hierarchy).password_session();
    create_params(&mut c, template, &[])?;
    c.finish()
}

/// Skips `TPM2B_CREATION_DATA`, `TPM2B_DIGEST` creationHash and
/// `TPMT_TK_CREATION` (tag, hierarchy, digest).
fn creation_info(p: &mut Reader<'_>, what: &'static str) -> Result<(), Error> {
    p.tpm2b(what)?;
    p.tpm2b(what)?;
    p.u16(what)?;
    p.u32(what)?;
    p.tpm2b(what)?;
    Ok(())
}

/// CreatePrimary's object handle (outPublic, creation data and name are
/// checked for structure and dropped).
pub fn parse_create_primary(resp: &[u8]) -> Result<Handle, Error> {
    let parsed = parse_response(resp, TPM_CC_CREATE_PRIMARY, true, 1)?;
    let mut p = parsed.params;
    let public = p.tpm2b("CreatePrimary: outPublic")?;
    if public.is_empty() {
        return Err(Error::Malformed("CreatePrimary: empty outPublic"));
    }
    creation_info(&mut p, "CreatePrimary: creation data")?;
    p.tpm2b("CreatePrimary: name")?;
    p.end("CreatePrimary: trailing bytes")?;
    parsed.handle.ok_or(Error::Malformed("CreatePrimary: no handle"))
}

/// `TPM2_Create` of a sealed data object holding `secret` under `parent`.
/// The command holds the secret: wipe it after sending.
pub fn create_sealed(parent: Handle, secret: &[u8]) -> Result<Vec<u8>, Error> {
    if secret.is_empty() || secret.len() > 128 {
        return Err(Error::Input("sealed data must be 1..128 bytes"));
    }
    let mut c = CommandBuf::new(TPM_ST_SESSIONS, TPM_CC_CREATE);
    c.u32(parent.0).password_session();
    create_params(&mut c, &templates::sealed_object(), secret)?;
    c.finish()
}

/// Create's outPrivate and outPublic, as a [`SealedBlob`].
pub fn parse_create(resp: &[u8]) -> Result<SealedBlob, Error> {
    let mut p = parse_response(resp, TPM_CC_CREATE, true, 0)?.params;
    let private = p.tpm2b_raw("Create: outPrivate")?;
    let public = p.tpm2b_raw("Create: outPublic")?;
    creation_info(&mut p, "Create: creation data")?;
    p.end("Create: trailing bytes")?;
    let mut blob = Vec::with_capacity(private.len() + public.len());
    blob.extend_from_slice(private);
    blob.extend_from_slice(public);
    SealedBlob::from_bytes(&blob)
}

/// `TPM2_Load` of `blob` under `parent`.
pub fn load(parent: Handle, blob: &SealedBlob) -> Result<Vec<u8>, Error> {
    let (private, public) = blob.parts()?;
    let mut c = CommandBuf::new(TPM_ST_SESSIONS, TPM_CC_LOAD);
    c.u32(parent.0).password_session().bytes(private).bytes(public);
    c.finish()
}

/// Load's object handle (the name is checked for structure and dropped).
pub fn parse_load(resp: &[u8]) -> Result<Handle, Error> {
    let parsed = parse_response(resp, TPM_CC_LOAD, true, 1)?;
    let mut p = parsed.params;
    p.tpm2b("Load: name")?;
    p.end("Load: trailing bytes")?;
    parsed.handle.ok_or(Error::Malformed("Load: no handle"))
}

/// `TPM2_Unseal` of `item`.
pub fn unseal(item: Handle) -> Result<Vec<u8>, Error> {
    let mut c = CommandBuf::new(TPM_ST_SESSIONS, TPM_CC_UNSEAL);
    c.u32(item.0).password_session();
    c.finish()
}

/// Unseal's outData.
pub fn parse_unseal(resp: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut p = parse_response(resp, TPM_CC_UNSEAL, true, 0)?.params;
    let data = p.tpm2b("Unseal: outData")?;
    p.end("Unseal: trailing bytes")?;
    Ok(Zeroizing::new(data.to_vec()))
}

/// `TPM2_HMAC` of `data` (at most 1024 bytes, `MAX_DIGEST_BUFFER`) under
/// `key`, SHA-256.
pub fn hmac(key: Handle, data: &[u8]) -> Result<Vec<u8>, Error> {
    if data.len() > 1024 {
        return Err(Error::Input("HMAC data longer than 1024 bytes"));
    }
    let mut c = CommandBuf::new(TPM_ST_SESSIONS, TPM_CC_HMAC);
    c.u32(key.0).password_session();
    c.tpm2b(data)?;
    c.u16(TPM_ALG_SHA256);
    c.finish()
}

/// HMAC's outHMAC, which must be a SHA-256 digest.
pub fn parse_hmac(resp: &[u8]) -> Result<Zeroizing<[u8; 32]>, Error> {
    let mut p = parse_response(resp, TPM_CC_HMAC, true, 0)?.params;
    let digest = p.tpm2b("HMAC: outHMAC")?;
    p.end("HMAC: trailing bytes")?;
    let out: [u8; 32] = digest.try_into().map_err(|_| Error::Malformed("HMAC: not a SHA-256 digest"))?;
    Ok(Zeroizing::new(out))
}

/// `TPM2_FlushContext(flushHandle)` (a parameter, not a handle area).
pub fn flush_context(handle: Handle) -> Result<Vec<u8>, Error> {
    let mut c = CommandBuf::new(TPM_ST_NO_SESSIONS, TPM_CC_FLUSH_CONTEXT);
    c.u32(handle.0);
    c.finish()
}

/// FlushContext's (empty) response.
pub fn parse_flush(resp: &[u8]) -> Result<(), Error> {
    parse_response(resp, TPM_CC_FLUSH_CONTEXT, false, 0)?.params.end("FlushContext: parameters")
}
