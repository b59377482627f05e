//! Image uploads and stored images: the upload requests (begin, chunks,
//! commit, cancel), quotas, expiry, listing with verification, reading an
//! image back to boot it, and boot-time preloading.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use mgmt_proto::msg::{
    ErrorCode, ErrorReply, ImageInfo, ImageList, ImageSignature, LeaseId, Request, Response, Role, UploadId, UploadInfo,
};
use mgmt_proto::sig::verify_image_digest;
use mgmt_proto::MAX_CHUNK;
use sha2::{Digest, Sha256};

use crate::images::{blocks_for, place, Extent, ImageStore, BLOCK};
use crate::limits::{check_name, internal, limit, mib, not_found};
use crate::NodeState;

/// An upload in progress.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Image name.
    pub name: String,
    /// Declared size.
    pub size: u64,
    /// Expected hash.
    pub sha256: Option<[u8; 32]>,
    /// Tenant signature.
    pub signature: Option<ImageSignature>,
    /// Lease the image is for.
    pub lease: Option<LeaseId>,
    /// Where its bytes go in the image store.
    pub extent: Extent,
    /// Bytes received (always a prefix: chunks arrive in order).
    pub received: u64,
    /// SHA-256 of the received prefix.
    pub hasher: Sha256,
    /// Node time of the last chunk, for expiry.
    pub touched: u64,
}

/// A stored image: its bytes are in the image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// Where its bytes are.
    pub extent: Extent,
    /// Its length.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

impl NodeState {
    /// Puts `bytes` into the image store as image `name`, as the node
    /// config's `[[image]]` asks at boot: `Ok(false)` when an image of that
    /// name with the same SHA-256 is already stored, `Ok(true)` when it was
    /// stored (replacing one of the same name). It goes the way of a
    /// landlord upload (begin, chunks, commit), so the same name rule,
    /// quotas, store placement and bootable check apply; a refusal leaves
    /// no partial upload behind.
    pub fn preload_image(&mut self, name: &str, bytes: &[u8]) -> Result<bool, ErrorReply> {
        check_name(name)?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if self.images.get(name).is_some_and(|i| i.sha256 == digest && i.size == bytes.len() as u64) {
            return Ok(false);
        }
        let begin = Request::UploadImageBegin {
            name: name.to_string(),
            size: bytes.len() as u64,
            sha256: Some(digest),
            signature: None,
            lease: None,
        };
        let Response::Upload { upload, offset } = self.apply(Role::Landlord, &begin)? else {
            return Err(internal());
        };
        let result = self.preload_rest(upload, offset, bytes);
        if result.is_err() && self.uploads.contains_key(&upload) {
            let _ = self.apply(Role::Landlord, &Request::CancelUpload { name: name.to_string() });
        }
        result.map(|()| true)
    }

    fn preload_rest(&mut self, upload: UploadId, mut offset: u64, bytes: &[u8]) -> Result<(), ErrorReply> {
        let start = usize::try_from(offset).map_err(|_| internal())?;
        for chunk in bytes.get(start..).unwrap_or_default().chunks(MAX_CHUNK) {
            let req = Request::UploadImageChunk { upload, offset, bytes: chunk.to_vec() };
            let Response::Upload { offset: next, .. } = self.apply(Role::Landlord, &req)? else {
                return Err(internal());
            };
            offset = next;
        }
        match self.apply(Role::Landlord, &Request::UploadImageCommit { upload })? {
            Response::ImageStored { .. } => Ok(()),
            _ => Err(internal()),
        }
    }

    /// Extents held by stored images and unfinished uploads.
    pub(crate) fn used_extents(&self) -> Vec<Extent> {
        self.images.values().map(|i| i.extent).chain(self.uploads.values().map(|u| u.extent)).collect()
    }

    /// Bytes of stored images plus declared sizes of unfinished uploads.
    pub fn images_bytes(&self) -> u64 {
        self.images.values().map(|i| i.size).chain(self.uploads.values().map(|u| u.size)).sum()
    }

    /// What [`Request::ListImages`] answers; with `verify` every image is
    /// re-read in small pieces (never whole in memory) and re-hashed.
    pub fn image_list(&mut self, verify: bool) -> ImageList {
        let mut images = Vec::with_capacity(self.images.len());
        for (name, img) in &self.images {
            let intact = verify.then(|| verify_extent(&mut *self.store, img));
            images.push(ImageInfo { name: name.clone(), size: img.size, sha256: img.sha256, intact });
        }
        let uploads = self
            .uploads
            .values()
            .map(|u| UploadInfo { name: u.name.clone(), received: u.received, size: u.size })
            .collect();
        ImageList {
            images,
            uploads,
            used_bytes: self.images_bytes(),
            limit_bytes: self.limits.max_images_bytes,
            max_image_bytes: self.limits.max_image_bytes,
        }
    }

    /// The whole image `name`, read from the store (to boot it). The
    /// caller checks it has room for `size` bytes first.
    pub fn image_bytes(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let img = *self.images.get(name).ok_or_else(|| format!("no image named {name:?}"))?;
        let len = usize::try_from(img.size).map_err(|_| String::from("image too large"))?;
        let mut buf = alloc::vec![0u8; len];
        self.store.read(img.extent.start * BLOCK, &mut buf)?;
        let digest: [u8; 32] = Sha256::digest(&buf).into();
        if digest != img.sha256 {
            return Err(format!("image {name:?} does not match its SHA-256 (store damaged)"));
        }
        Ok(buf)
    }

    /// Drops uploads no chunk reached for [`StateLimits::upload_expiry_secs`]
    /// and frees their room; returns their names.
    pub fn expire_uploads(&mut self) -> Vec<String> {
        let now = self.clock;
        let ttl = self.limits.upload_expiry_secs;
        let old: Vec<UploadId> =
            self.uploads.iter().filter(|(_, u)| now.saturating_sub(u.touched) >= ttl).map(|(id, _)| *id).collect();
        let mut names = Vec::new();
        for id in old {
            if let Some(u) = self.uploads.remove(&id) {
                self.store.discard(u.extent);
                names.push(u.name);
            }
        }
        names
    }

    /// Forgets every image and upload (their bytes were crypto-erased with
    /// the landlord key); returns how many images were dropped.
    pub fn drop_all_images(&mut self) -> usize {
        let n = self.images.len();
        for (_, i) in core::mem::take(&mut self.images) {
            self.store.discard(i.extent);
        }
        for (_, u) in core::mem::take(&mut self.uploads) {
            self.store.discard(u.extent);
        }
        n
    }

    /// [`Request::UploadImageBegin`]: a new upload (room placed, quotas
    /// checked), or the one of this name resumed where it was.
    pub(crate) fn upload_begin(
        &mut self,
        name: &str,
        size: &u64,
        sha256: &Option<[u8; 32]>,
        signature: &Option<ImageSignature>,
        lease: &Option<LeaseId>,
    ) -> Result<Response, ErrorReply> {
        check_name(name)?;
        if let Some(l) = lease {
            if !self.leases.contains_key(l) {
                return Err(not_found("lease"));
            }
        }
        if let Some((id, u)) = self.uploads.iter_mut().find(|(_, u)| u.name == *name) {
            if u.size != *size || u.sha256 != *sha256 {
                return Err(ErrorReply::new(
                    ErrorCode::Conflict,
                    "an upload of this name with another size or hash is in progress (cancel it first)",
                ));
            }
            // A resumed upload: already counted, continue where it was.
            u.touched = self.clock;
            return Ok(Response::Upload { upload: *id, offset: u.received });
        }
        if *size == 0 {
            return Err(ErrorReply::new(ErrorCode::Invalid, "size: an image cannot be empty"));
        }
        let l = self.limits;
        if *size > l.max_image_bytes {
            return Err(limit(format!(
                "size: images are limited to {} MiB each (max_image_bytes)",
                mib(l.max_image_bytes)
            )));
        }
        if self.uploads.len() >= l.max_uploads {
            return Err(limit(format!(
                "at most {} uploads may be unfinished at once (max_uploads); finish or cancel one",
                l.max_uploads
            )));
        }
        // Replacing an image of the same name frees its room at commit,
        // so it is not counted twice.
        let replaced = self.images.get(name).map_or(0, |i| i.size);
        let used = self.images_bytes().saturating_sub(replaced);
        if used.saturating_add(*size) > l.max_images_bytes {
            return Err(limit(format!(
                "size: the node stores at most {} MiB of images (max_images_bytes); {} MiB are in use",
                mib(l.max_images_bytes),
                used.div_ceil(1 << 20)
            )));
        }
        let extent = place(&self.used_extents(), blocks_for(*size), self.store.capacity_blocks()).ok_or_else(|| {
            limit(format!(
                "size: no room for {} MiB in the image store ({}, {} MiB)",
                size.div_ceil(1 << 20),
                self.store.kind(),
                mib(self.store.capacity_blocks() * BLOCK)
            ))
        })?;
        let id = UploadId(self.id());
        self.uploads.insert(
            id,
            Upload {
                name: name.to_string(),
                size: *size,
                sha256: *sha256,
                signature: *signature,
                lease: *lease,
                extent,
                received: 0,
                hasher: Sha256::new(),
                touched: self.clock,
            },
        );
        Ok(Response::Upload { upload: id, offset: 0 })
    }

    /// [`Request::UploadImageChunk`]: the next bytes of an upload, in order.
    pub(crate) fn upload_chunk(
        &mut self,
        upload: &UploadId,
        offset: &u64,
        bytes: &[u8],
    ) -> Result<Response, ErrorReply> {
        let clock = self.clock;
        let u = self.uploads.get_mut(upload).ok_or_else(|| not_found("upload"))?;
        if bytes.len() > MAX_CHUNK {
            return Err(ErrorReply::new(ErrorCode::Invalid, format!("bytes: chunk above {MAX_CHUNK} bytes")));
        }
        if *offset != u.received {
            return Err(ErrorReply::new(ErrorCode::Invalid, format!("offset: expected {}, got {offset}", u.received)));
        }
        if u.received + bytes.len() as u64 > u.size {
            return Err(ErrorReply::new(ErrorCode::Invalid, "bytes: past the declared size"));
        }
        self.store
            .write(u.extent.start * BLOCK + u.received, bytes)
            .map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("image store: {e}")))?;
        u.hasher.update(bytes);
        u.received += bytes.len() as u64;
        u.touched = clock;
        Ok(Response::Upload { upload: *upload, offset: u.received })
    }

    /// [`Request::CancelUpload`]: drops the upload of that name, freeing its room.
    pub(crate) fn cancel_upload(&mut self, name: &str) -> Result<Response, ErrorReply> {
        let id = self.uploads.iter().find(|(_, u)| u.name == *name).map(|(id, _)| *id);
        let u = id.and_then(|id| self.uploads.remove(&id)).ok_or_else(|| not_found("upload"))?;
        self.store.discard(u.extent);
        Ok(Response::Done)
    }

    /// [`Request::UploadImageCommit`]: checks the complete upload (hash,
    /// signature, bootable) and stores it as an image.
    pub(crate) fn upload_commit(&mut self, upload: &UploadId) -> Result<Response, ErrorReply> {
        let u = self.uploads.get(upload).ok_or_else(|| not_found("upload"))?;
        if u.received != u.size {
            return Err(ErrorReply::new(
                ErrorCode::Invalid,
                format!("size: {} of {} bytes received", u.received, u.size),
            ));
        }
        let digest: [u8; 32] = u.hasher.clone().finalize().into();
        if u.sha256.is_some_and(|h| h != digest) {
            return Err(ErrorReply::new(ErrorCode::Invalid, "sha256: image does not match"));
        }
        let key = u.lease.and_then(|l| self.leases.get(&l)).and_then(|l| l.signing_key);
        if let Some(key) = key {
            let sig = u.signature.ok_or_else(|| {
                ErrorReply::new(ErrorCode::BadSignature, "signature: required by the lease's signing key")
            })?;
            verify_image_digest(&key, &digest, &sig)
                .map_err(|e| ErrorReply::new(ErrorCode::BadSignature, e.to_string()))?;
        }
        let u = self.uploads.remove(upload).ok_or_else(|| not_found("upload"))?;
        let checked =
            self.store.flush().map_err(|e| ErrorReply::new(ErrorCode::Internal, format!("image store: {e}"))).and_then(
                |()| {
                    self.store
                        .check(u.extent, u.size)
                        .map_err(|e| ErrorReply::new(ErrorCode::Invalid, format!("image: not a bootable kernel: {e}")))
                },
            );
        if let Err(e) = checked {
            // It can never succeed: free its room.
            self.store.discard(u.extent);
            return Err(e);
        }
        let (name, size) = (u.name.clone(), u.size);
        if let Some(old) = self.images.insert(u.name, Image { extent: u.extent, size, sha256: digest }) {
            self.store.discard(old.extent);
        }
        Ok(Response::ImageStored { name, size, sha256: digest })
    }
}

/// Re-hashes a stored image in 64 KiB pieces: whether it still matches.
fn verify_extent(store: &mut dyn ImageStore, img: &Image) -> bool {
    let mut hasher = Sha256::new();
    let mut piece = alloc::vec![0u8; 64 * 1024];
    let mut at = 0u64;
    while at < img.size {
        let n = usize::try_from((img.size - at).min(piece.len() as u64)).unwrap_or(piece.len());
        let Some(buf) = piece.get_mut(..n) else { return false };
        if store.read(img.extent.start * BLOCK + at, buf).is_err() {
            return false;
        }
        hasher.update(&*buf);
        at += n as u64;
    }
    let digest: [u8; 32] = hasher.finalize().into();
    digest == img.sha256
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::images::MemImageStore;
    use crate::limits::StateLimits;
    use crate::sim::SimNode;
    use crate::snapshot::Snapshot;
    use alloc::boxed::Box;
    use mgmt_proto::crypto::{HashDrbg, PublicKey};

    fn only_elf(b: &[u8]) -> Result<(), String> {
        if b.starts_with(b"\x7fELF") {
            Ok(())
        } else {
            Err(String::from("not an ELF file"))
        }
    }

    fn node(capacity: u64, limits: StateLimits) -> NodeState {
        NodeState::provision(Box::new(HashDrbg::new([1; 32])), PublicKey([7; 32]))
            .unwrap()
            .with_image_store(Box::new(MemImageStore::new(capacity, only_elf)), limits)
    }

    fn image(len: usize, seed: u8) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        v[..4].copy_from_slice(b"\x7fELF");
        v
    }

    fn begin(n: &mut NodeState, name: &str, size: u64) -> Result<(UploadId, u64), ErrorReply> {
        let req = Request::UploadImageBegin { name: name.into(), size, sha256: None, signature: None, lease: None };
        match n.handle(Role::Landlord, &req, &mut SimNode::default())? {
            Response::Upload { upload, offset } => Ok((upload, offset)),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn image_list_reports_usage_uploads_and_damage() {
        let mut n = node(1 << 20, StateLimits::DEFAULT);
        let a = image(10_000, 1);
        upload(&mut n, "a", &a).unwrap();
        begin(&mut n, "partial", 5000).unwrap();
        let Response::Images(l) =
            n.handle(Role::Landlord, &Request::ListImages { verify: true }, &mut SimNode::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(l.images.len(), 1);
        assert_eq!(l.images[0].sha256, <[u8; 32]>::from(Sha256::digest(&a)));
        assert_eq!(l.images[0].intact, Some(true));
        assert_eq!(l.uploads, alloc::vec![UploadInfo { name: "partial".into(), received: 0, size: 5000 }]);
        assert_eq!(l.used_bytes, 15_000);
        assert_eq!(l.limit_bytes, StateLimits::DEFAULT.max_images_bytes);
        // A flipped byte on the disk shows up in a verifying list only.
        let at = n.images["a"].extent.start * BLOCK + 9_999;
        n.store.write(at, &[0]).unwrap();
        let Response::Images(l) =
            n.handle(Role::Landlord, &Request::ListImages { verify: true }, &mut SimNode::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(l.images[0].intact, Some(false));
        let Response::Images(l) =
            n.handle(Role::Landlord, &Request::ListImages { verify: false }, &mut SimNode::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(l.images[0].intact, None);
        assert!(n
            .handle(Role::Tenant(LeaseId(1)), &Request::ListImages { verify: false }, &mut SimNode::default())
            .is_err());
    }

    fn upload(n: &mut NodeState, name: &str, data: &[u8]) -> Result<Response, ErrorReply> {
        let (id, mut offset) = begin(n, name, data.len() as u64)?;
        for c in data.chunks(MAX_CHUNK) {
            let r = n.handle(
                Role::Landlord,
                &Request::UploadImageChunk { upload: id, offset, bytes: c.to_vec() },
                &mut SimNode::default(),
            )?;
            let Response::Upload { offset: o, .. } = r else { panic!("{r:?}") };
            offset = o;
        }
        n.handle(Role::Landlord, &Request::UploadImageCommit { upload: id }, &mut SimNode::default())
    }

    #[test]
    fn preloaded_images_go_through_the_upload_checks() {
        let mut n = node(8 << 20, limits(2 << 20));
        let a = image(300_000, 1);
        assert_eq!(n.preload_image("kernel", &a), Ok(true));
        assert_eq!(n.image_bytes("kernel").unwrap(), a);
        // The same bytes again: nothing to do.
        assert_eq!(n.preload_image("kernel", &a), Ok(false));
        // Other bytes under the same name replace the image (its room too).
        let b = image(200_000, 2);
        assert_eq!(n.preload_image("kernel", &b), Ok(true));
        assert_eq!(n.image_bytes("kernel").unwrap(), b);
        assert_eq!(n.images.len(), 1);
        assert_eq!(n.images_bytes(), 200_000);
        // The upload refusals apply, and leave no upload behind.
        let e = n.preload_image("junk", b"not a kernel").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("not a bootable kernel"), "{e}");
        let e = n.preload_image("big", &image((1 << 20) + 1, 3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Limit);
        assert!(e.message.contains("max_image_bytes"), "{e}");
        assert_eq!(n.preload_image("bad name", &a).unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(n.preload_image("empty", b"").unwrap_err().code, ErrorCode::Invalid);
        assert_eq!(n.preload_image("second", &image(1 << 20, 4)), Ok(true));
        let e = n.preload_image("third", &image(1 << 20, 5)).unwrap_err();
        assert!(e.message.contains("max_images_bytes"), "{e}");
        assert!(n.uploads.is_empty());
        let names: Vec<&str> = n.images.keys().map(String::as_str).collect();
        assert_eq!(names, ["kernel", "second"]);
    }

    fn limits(total: u64) -> StateLimits {
        StateLimits { max_image_bytes: 1 << 20, max_images_bytes: total, ..StateLimits::DEFAULT }
    }

    #[test]
    fn images_are_stored_and_read_back_intact() {
        let mut n = node(8 << 20, limits(4 << 20));
        let a = image(300_000, 1);
        let b = image(123_457, 2);
        upload(&mut n, "a", &a).unwrap();
        upload(&mut n, "b", &b).unwrap();
        assert_eq!(n.image_bytes("a").unwrap(), a);
        assert_eq!(n.image_bytes("b").unwrap(), b);
        // Replacing an image keeps one copy.
        let a2 = image(1000, 3);
        upload(&mut n, "a", &a2).unwrap();
        assert_eq!(n.image_bytes("a").unwrap(), a2);
        assert_eq!(n.images_bytes(), 1000 + 123_457);
    }

    #[test]
    fn the_quota_refuses_past_the_limit_and_names_it() {
        let mut n = node(8 << 20, limits(2 << 20));
        upload(&mut n, "a", &image(1 << 20, 1)).unwrap();
        upload(&mut n, "b", &image(1 << 20, 2)).unwrap();
        let e = upload(&mut n, "c", &image(8, 3)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Limit);
        assert!(e.message.contains("max_images_bytes") && e.message.contains("2 MiB"), "{}", e.message);
        let e = upload(&mut n, "d", &image((1 << 20) + 1, 3)).unwrap_err();
        assert!(e.message.contains("max_image_bytes"), "{}", e.message);
        // Nothing changed: both images intact.
        assert_eq!(n.image_bytes("a").unwrap(), image(1 << 20, 1));
        assert_eq!(n.image_bytes("b").unwrap(), image(1 << 20, 2));
        assert!(n.uploads.is_empty());
    }

    #[test]
    fn a_resumed_upload_counts_once() {
        let mut n = node(8 << 20, limits(1 << 20));
        let data = image(700_000, 4);
        let (id, _) = begin(&mut n, "r", data.len() as u64).unwrap();
        n.handle(
            Role::Landlord,
            &Request::UploadImageChunk { upload: id, offset: 0, bytes: data[..1000].to_vec() },
            &mut SimNode::default(),
        )
        .unwrap();
        // The console reconnects and begins again: same upload, same offset.
        for _ in 0..3 {
            assert_eq!(begin(&mut n, "r", data.len() as u64).unwrap(), (id, 1000));
        }
        assert_eq!(n.images_bytes(), 700_000);
        let e = begin(&mut n, "other", 400_000).unwrap_err();
        assert_eq!(e.code, ErrorCode::Limit);
        assert!(begin(&mut n, "other", 300_000).is_ok());
    }

    #[test]
    fn cancel_and_expiry_free_partial_uploads() {
        let mut n = node(8 << 20, limits(1 << 20));
        begin(&mut n, "x", 1 << 20).unwrap();
        assert_eq!(begin(&mut n, "y", 1).unwrap_err().code, ErrorCode::Limit);
        n.handle(Role::Landlord, &Request::CancelUpload { name: "x".into() }, &mut SimNode::default()).unwrap();
        assert_eq!(
            n.handle(Role::Landlord, &Request::CancelUpload { name: "x".into() }, &mut SimNode::default())
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
        begin(&mut n, "y", 1 << 20).unwrap();
        n.set_clock(n.limits.upload_expiry_secs - 1);
        assert!(n.expire_uploads().is_empty());
        n.set_clock(n.limits.upload_expiry_secs);
        assert_eq!(n.expire_uploads(), alloc::vec![String::from("y")]);
        assert_eq!(n.images_bytes(), 0);
    }

    #[test]
    fn unbootable_empty_and_badly_named_images_are_refused() {
        let mut n = node(8 << 20, limits(4 << 20));
        let e = upload(&mut n, "junk", b"not a kernel").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("not an ELF file"), "{}", e.message);
        assert!(!n.images.contains_key("junk"));
        assert_eq!(n.images_bytes(), 0, "a refused image gives its room back");
        assert_eq!(begin(&mut n, "empty", 0).unwrap_err().code, ErrorCode::Invalid);
        let e = begin(&mut n, "web\nvm web stopped: exit-code=0", 10).unwrap_err();
        assert!(e.message.starts_with("name: "), "{}", e.message);
    }

    #[test]
    fn too_many_unfinished_uploads_are_refused() {
        let mut n = node(8 << 20, StateLimits { max_uploads: 2, ..limits(4 << 20) });
        begin(&mut n, "a", 10).unwrap();
        begin(&mut n, "b", 10).unwrap();
        let e = begin(&mut n, "c", 10).unwrap_err();
        assert!(e.message.contains("max_uploads"), "{}", e.message);
    }

    #[test]
    fn the_audit_log_is_bounded_and_pages_from_the_oldest_kept() {
        let mut n = node(1 << 20, StateLimits { max_audit: 64, ..StateLimits::DEFAULT });
        for i in 0..1000 {
            n.log(None, "test", format!("entry {i}"));
        }
        assert!(n.audit.len() <= 64);
        assert_eq!(n.audit.last().unwrap().index, 999);
        assert_eq!(n.audit_base, n.audit[0].index);
        let r = n.handle(Role::Landlord, &Request::ReadAudit { from: 0 }, &mut SimNode::default()).unwrap();
        let Response::Audit { entries, next, prev_chain } = r else { panic!() };
        assert_eq!(entries[0].index, n.audit_base);
        assert_eq!(next, 1000);
        assert!(entries.windows(2).all(|w| w[1].index == w[0].index + 1));
        // The chain holds across the trimming: the page checks from its
        // anchor, and the anchor is the last trimmed entry's chain value.
        assert_eq!(prev_chain, n.audit_anchor);
        assert_ne!(prev_chain, [0; 32]);
        let mut prev = prev_chain;
        for e in &entries {
            assert!(e.follows(&prev), "entry {}", e.index);
            prev = e.chain;
        }
        // A page further on starts from the entry before it.
        let from = entries[10].index;
        let Response::Audit { entries: later, prev_chain, .. } =
            n.handle(Role::Landlord, &Request::ReadAudit { from }, &mut SimNode::default()).unwrap()
        else {
            panic!()
        };
        assert_eq!(prev_chain, entries[9].chain);
        assert!(later[0].follows(&prev_chain));
        // A changed entry no longer follows.
        let mut forged = later[0].clone();
        forged.outcome.push('!');
        assert!(!forged.follows(&prev_chain));
        // The anchor survives a snapshot.
        let snap = n.snapshot();
        let back = Snapshot::decode(&postcard::to_allocvec(&snap).unwrap()).unwrap();
        assert_eq!(back.audit_anchor, n.audit_anchor);
    }
}
