//! Chunked, resumable image upload.
//!
//! `UploadImageBegin` on an upload the node already holds (same name, size
//! and hash) answers with the bytes it has, so after a broken connection the
//! client reconnects and continues from there instead of starting over.

use std::time::Duration;

use indicatif::ProgressBar;
use mgmt_proto::{image_digest, ImageSignature, LeaseId, Request, Response, MAX_CHUNK};
use serde::Serialize;

use crate::client::{Client, ClientError};

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Image name on the node.
    pub name: String,
    /// Lease the image is for (its signing key applies).
    pub lease: Option<LeaseId>,
    /// Tenant signature over the image.
    pub signature: Option<ImageSignature>,
    /// Chunk size in bytes (capped at [`MAX_CHUNK`]).
    pub chunk: usize,
    /// Reconnections allowed after transient failures.
    pub retries: u32,
    /// Pause before reconnecting.
    pub backoff: Duration,
}

/// What happened, for the user and for tests.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UploadReport {
    /// Image name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Offset the node reported at each (re)start: more than one entry means
    /// the upload was resumed.
    pub started_at: Vec<u64>,
}

/// Uploads `data`, reconnecting with `connect` after transient failures and
/// resuming where the node stands.
pub fn upload_image(
    connect: &mut dyn FnMut() -> Result<Client, ClientError>,
    data: &[u8],
    opts: &UploadOptions,
    bar: &ProgressBar,
) -> Result<UploadReport, ClientError> {
    let sha256 = image_digest(data);
    let size = data.len() as u64;
    let chunk = opts.chunk.clamp(1, MAX_CHUNK);
    bar.set_length(size);
    let mut started_at = Vec::new();
    let mut attempts = 0u32;
    loop {
        match attempt(connect, data, opts, sha256, chunk, bar, &mut started_at) {
            Ok(()) => {
                bar.finish();
                return Ok(UploadReport {
                    name: opts.name.clone(),
                    size,
                    sha256: mgmt_proto::crypto::to_hex(&sha256),
                    started_at,
                });
            }
            Err(e) if e.is_transient() && attempts < opts.retries => {
                attempts += 1;
                bar.println(format!("connection lost ({e}); resuming (attempt {attempts} of {})", opts.retries));
                std::thread::sleep(opts.backoff);
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
}

fn attempt(
    connect: &mut dyn FnMut() -> Result<Client, ClientError>,
    data: &[u8],
    opts: &UploadOptions,
    sha256: [u8; 32],
    chunk: usize,
    bar: &ProgressBar,
    started_at: &mut Vec<u64>,
) -> Result<(), ClientError> {
    let mut client = connect()?;
    let size = data.len() as u64;
    let begin = Request::UploadImageBegin {
        name: opts.name.clone(),
        size,
        sha256: Some(sha256),
        signature: opts.signature,
        lease: opts.lease,
    };
    let (upload, mut offset) = match client.call(begin)? {
        Response::Upload { upload, offset } => (upload, offset),
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    };
    started_at.push(offset);
    bar.set_position(offset);
    while offset < size {
        let start = usize::try_from(offset).map_err(|_| ClientError::Unexpected("offset too large".into()))?;
        let end = start.saturating_add(chunk).min(data.len());
        let bytes = data
            .get(start..end)
            .ok_or_else(|| ClientError::Unexpected(format!("node offset {offset} beyond the image")))?
            .to_vec();
        match client.call(Request::UploadImageChunk { upload, offset, bytes })? {
            Response::Upload { offset: o, .. } if o > offset => offset = o,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        bar.set_position(offset);
    }
    match client.call(Request::UploadImageCommit { upload })? {
        Response::ImageStored { sha256: h, .. } if h == sha256 => Ok(()),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}
