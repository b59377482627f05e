//! Chunked, resumable image upload.
//!
//! `UploadImageBegin` on an upload the node already holds (same name, size
//! and hash) answers with the bytes it has, so after a broken connection the
//! client reconnects and continues from there instead of starting over.
//!
//! An interrupted upload (Ctrl-C sets [`UploadOptions::cancel`], checked
//! between chunks) is cancelled on the node, so its reserved space is freed
//! at once instead of when the upload expires.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;
use mgmt_proto::{image_digest, ImageSignature, LeaseId, Request, Response, MAX_CHUNK};

/// Chunks sent ahead of the node's answers: enough to keep the link busy,
/// few enough that the answers never back up (each is a few dozen bytes).
const WINDOW: usize = 4;
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
    /// Set (by a Ctrl-C handler) to stop: the upload is then cancelled on
    /// the node and [`upload_image`] returns [`ClientError::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl UploadOptions {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst))
    }
}

/// How an attempt ended without an error.
enum Step {
    /// The image is stored.
    Stored,
    /// Stopped by [`UploadOptions::cancel`]; the session, to cancel on.
    Cancelled(Box<Client>),
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
/// resuming where the node stands. When [`UploadOptions::cancel`] is set,
/// cancels the partial upload on the node (best effort, on a fresh session
/// if the current one is gone) and returns [`ClientError::Interrupted`].
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
            Ok(Step::Cancelled(client)) => {
                bar.abandon();
                return Err(cancel_on_node(Some(*client), connect, &opts.name));
            }
            Err(_) if opts.cancelled() => {
                bar.abandon();
                return Err(cancel_on_node(None, connect, &opts.name));
            }
            Ok(Step::Stored) => {
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
                if opts.cancelled() {
                    bar.abandon();
                    return Err(cancel_on_node(None, connect, &opts.name));
                }
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
) -> Result<Step, ClientError> {
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
    // Up to WINDOW chunks in flight: a round trip per chunk would leave the
    // link idle most of the time.
    let mut sent = offset;
    let mut in_flight = 0usize;
    while offset < size {
        while in_flight < WINDOW && sent < size && !opts.cancelled() {
            let start = usize::try_from(sent).map_err(|_| ClientError::Unexpected("offset too large".into()))?;
            let end = start.saturating_add(chunk).min(data.len());
            let bytes = data
                .get(start..end)
                .ok_or_else(|| ClientError::Unexpected(format!("node offset {sent} beyond the image")))?
                .to_vec();
            let next = end as u64;
            client.send(Request::UploadImageChunk { upload, offset: sent, bytes })?;
            sent = next;
            in_flight += 1;
        }
        if in_flight == 0 {
            // Cancelled with nothing outstanding.
            return Ok(Step::Cancelled(Box::new(client)));
        }
        match client.reply()? {
            Response::Upload { offset: o, .. } if o > offset => offset = o,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        }
        in_flight -= 1;
        bar.set_position(offset);
    }
    if opts.cancelled() {
        return Ok(Step::Cancelled(Box::new(client)));
    }
    match client.call(Request::UploadImageCommit { upload })? {
        Response::ImageStored { sha256: h, .. } if h == sha256 => Ok(Step::Stored),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// Sends `CancelUpload` for `name` on `client`, or on a fresh session when
/// there is none or it broke; returns the [`ClientError::Interrupted`]
/// saying what happened on the node.
fn cancel_on_node(
    client: Option<Client>,
    connect: &mut dyn FnMut() -> Result<Client, ClientError>,
    name: &str,
) -> ClientError {
    let req = || Request::CancelUpload { name: name.to_string() };
    let on_current = client.map(|mut c| c.call(req()));
    let r = match on_current {
        Some(r @ (Ok(_) | Err(ClientError::Node(_)))) => r,
        // No session, or it broke: a fresh one.
        Some(Err(_)) | None => connect().and_then(|mut c| c.call(req())),
    };
    let shown = vmm_config::text::escape_control(name);
    ClientError::Interrupted(match r {
        Ok(_) => format!("upload of {shown} interrupted: the partial upload was cancelled on the node"),
        Err(ClientError::Node(e)) if e.code == mgmt_proto::ErrorCode::NotFound => {
            format!("upload of {shown} interrupted: the node holds no partial upload of it")
        }
        Err(e) => format!(
            "upload of {shown} interrupted; cancelling it on the node failed ({e}): \
             run `bmctl landlord image cancel {shown}` (or let it expire)"
        ),
    })
}
