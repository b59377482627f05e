//! What consoles may make the node keep, the naming rule, and the refusals
//! that name them.

use alloc::format;
use alloc::string::String;

use mgmt_proto::msg::{ErrorCode, ErrorReply};

/// Limits on what consoles may make the node keep; each refusal names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Largest single image.
    pub max_image_bytes: u64,
    /// All stored images and unfinished uploads together.
    pub max_images_bytes: u64,
    /// Unfinished uploads at once.
    pub max_uploads: usize,
    /// An upload with no chunk for this long is discarded.
    pub upload_expiry_secs: u64,
    /// Leases at once.
    pub max_leases: usize,
    /// VM definitions at once.
    pub max_vms: usize,
    /// Tenant sub-boundary rules (all leases).
    pub max_sub_rules: usize,
    /// Rules in one cluster boundary.
    pub max_boundary_rules: usize,
    /// Audit entries kept (older ones are trimmed).
    pub max_audit: usize,
}

impl StateLimits {
    /// The node's defaults.
    pub const DEFAULT: StateLimits = StateLimits {
        max_image_bytes: 16 << 20,
        max_images_bytes: 64 << 20,
        max_uploads: 8,
        upload_expiry_secs: 600,
        max_leases: 256,
        max_vms: 64,
        max_sub_rules: 1024,
        max_boundary_rules: 256,
        max_audit: 4096,
    };
}

/// A VM or image name against the config's naming rule, refused naming it.
pub fn check_name(name: &str) -> Result<(), ErrorReply> {
    if vmm_config::text::valid_name(name) {
        Ok(())
    } else {
        Err(ErrorReply::new(ErrorCode::Invalid, format!("name: {}", vmm_config::text::NAME_RULE)))
    }
}

/// A refusal for a limit, naming it in `msg`.
pub(crate) fn limit(msg: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Limit, msg)
}

/// Whole MiB in `bytes`, for refusals.
pub(crate) fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// What cannot happen but is answered rather than panicked on.
pub(crate) fn internal() -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, "internal error")
}

/// A refusal for something the request names that the node does not hold.
pub(crate) fn not_found(what: &str) -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, format!("no such {what}"))
}
