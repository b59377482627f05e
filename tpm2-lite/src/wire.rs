//! Big-endian marshalling (TPM 2.0 Part 1 §18: every integer on the wire is
//! big-endian, every `TPM2B_*` is a `u16` size then that many bytes) and
//! the bounds-checked reader every response goes through.

use crate::Error;
use alloc::vec::Vec;

/// Builds one command: header first, size patched in by [`CommandBuf::finish`].
pub(crate) struct CommandBuf {
    buf: Vec<u8>,
}

impl CommandBuf {
    /// Starts a command with `tag` (sessions or not) and command code `cc`.
    pub(crate) fn new(tag: u16, cc: u32) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&tag.to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&cc.to_be_bytes());
        CommandBuf { buf }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// A `TPM2B_*`: `u16` size, then the bytes.
    pub(crate) fn tpm2b(&mut self, v: &[u8]) -> Result<&mut Self, Error> {
        let len = u16::try_from(v.len()).map_err(|_| Error::Input("TPM2B longer than 65535 bytes"))?;
        Ok(self.u16(len).bytes(v))
    }

    /// The authorization area with one password session (`TPM_RS_PW`) and
    /// an empty password: every object BMonitor uses has an empty auth
    /// value (Part 1 §19.6.5; Part 2 §10.13.2 `TPMS_AUTH_COMMAND`).
    pub(crate) fn password_session(&mut self) -> &mut Self {
        // authorizationSize: handle (4) + nonce size (2) + attributes (1) + hmac size (2)
        self.u32(9).u32(crate::TPM_RS_PW).u16(0).u8(0).u16(0)
    }

    /// The finished command with its size field filled in.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, Error> {
        let size = u32::try_from(self.buf.len()).map_err(|_| Error::Input("command too long"))?;
        match self.buf.get_mut(2..6) {
            Some(field) => field.copy_from_slice(&size.to_be_bytes()),
            None => return Err(Error::Input("command header missing")),
        }
        Ok(self.buf)
    }
}

/// Reads untrusted bytes: every read is bounds-checked and fails with
/// [`Error::Malformed`] instead of panicking.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Malformed(what))?;
        let out = self.buf.get(self.pos..end).ok_or(Error::Malformed(what))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        let b = self.bytes(1, what)?;
        b.first().copied().ok_or(Error::Malformed(what))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        let b = self.bytes(2, what)?;
        let a: [u8; 2] = b.try_into().map_err(|_| Error::Malformed(what))?;
        Ok(u16::from_be_bytes(a))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        let b = self.bytes(4, what)?;
        let a: [u8; 4] = b.try_into().map_err(|_| Error::Malformed(what))?;
        Ok(u32::from_be_bytes(a))
    }

    /// A `TPM2B_*`: its payload (without the size).
    pub(crate) fn tpm2b(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let n = self.u16(what)?;
        self.bytes(usize::from(n), what)
    }

    /// A `TPM2B_*` with its size prefix, as stored (for blobs passed back
    /// to the TPM unchanged).
    pub(crate) fn tpm2b_raw(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let start = self.pos;
        self.tpm2b(what)?;
        self.buf.get(start..self.pos).ok_or(Error::Malformed(what))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        out
    }

    /// Fails unless every byte was read: trailing bytes mean we and the
    /// TPM disagree about the structure, which we never paper over.
    pub(crate) fn end(&self, what: &'static str) -> Result<(), Error> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Error::Malformed(what))
        }
    }
}
