//! Storage glue: guest virtio-blk disks on encrypted volumes kept on the
//! node's disk (`nodedisk` over `blockcrypt`), or in memory when the node
//! has none.

pub mod node;
pub mod replica;
pub mod vdisk;

pub use node::Storage;
pub use vdisk::GuestDisk;
