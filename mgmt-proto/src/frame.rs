//! Length-prefixed framing: a 2-byte big-endian length, then that many bytes.
//!
//! The same framing runs over TCP and over a serial line, so the decoder is
//! incremental: bytes arrive in arbitrary pieces and whole frames come out.

use alloc::vec::Vec;

use crate::MAX_FRAME;

/// Why a frame was refused; any of these closes the session, because after a
/// bad length the byte stream can no longer be trusted to be in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame declared a length above the limit in force.
    Oversize {
        /// The declared length.
        len: usize,
        /// The limit in force when it arrived.
        limit: usize,
    },
    /// A frame declared length zero; no message is empty.
    Empty,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FrameError::Oversize { len, limit } => write!(f, "frame of {len} bytes exceeds the limit of {limit}"),
            FrameError::Empty => write!(f, "empty frame"),
        }
    }
}

/// Wraps `payload` in a frame, so callers never hand-roll the length prefix.
///
/// Fails when the payload does not fit the 2-byte length or is empty.
pub fn encode_frame(payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    if payload.is_empty() {
        return Err(FrameError::Empty);
    }
    let len =
        u16::try_from(payload.len()).map_err(|_| FrameError::Oversize { len: payload.len(), limit: MAX_FRAME })?;
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Incremental frame decoder: buffers at most one frame, so memory use is
/// bounded by the limit whatever the peer sends.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `limit` (capped at [`MAX_FRAME`]),
    /// so each protocol phase can set its own ceiling.
    pub fn new(limit: usize) -> Self {
        FrameDecoder { buf: Vec::new(), limit: limit.min(MAX_FRAME) }
    }

    /// Changes the limit (e.g. from the handshake limit to [`MAX_FRAME`] once
    /// the session is established).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_FRAME);
    }

    /// Appends received bytes; frames are taken out with [`Self::next_frame`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as a frame, so a transport can tell
    /// a clean end of stream from a truncated frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame's payload, `Ok(None)` when more bytes are
    /// needed, or an error as soon as a bad length header is seen (without
    /// waiting for the body).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let (Some(&hi), Some(&lo)) = (self.buf.first(), self.buf.get(1)) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.limit {
            return Err(FrameError::Oversize { len, limit: self.limit });
        }
        if self.buf.len() < len + 2 {
            return Ok(None);
        }
        let rest = self.buf.split_off(len + 2);
        let mut frame = core::mem::replace(&mut self.buf, rest);
        frame.drain(..2);
        Ok(Some(frame))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let a = encode_frame(b"hello").unwrap();
        let b = encode_frame(&[7u8; 300]).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut d = FrameDecoder::new(MAX_FRAME);
        let mut out = Vec::new();
        for byte in all {
            d.push(&[byte]);
            while let Some(f) = d.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, [b"hello".to_vec(), alloc::vec![7u8; 300]]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn oversize_refused_from_header() {
        let mut d = FrameDecoder::new(10);
        d.push(&[0, 11]);
        assert_eq!(d.next_frame(), Err(FrameError::Oversize { len: 11, limit: 10 }));
    }

    #[test]
    fn empty_refused() {
        let mut d = FrameDecoder::new(10);
        d.push(&[0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
        assert_eq!(encode_frame(&[]), Err(FrameError::Empty));
    }

    #[test]
    fn too_long_to_encode() {
        assert!(matches!(encode_frame(&alloc::vec![0u8; MAX_FRAME + 1]), Err(FrameError::Oversize { .. })));
        assert!(encode_frame(&alloc::vec![0u8; MAX_FRAME]).is_ok());
    }
}
