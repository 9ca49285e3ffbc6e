//! The vhost-user-blk device: virtio request parsing and the per-queue
//! workers that move bytes between guest memory and tier devices.

/// Bytes of the serial returned by VIRTIO_BLK_T_GET_ID.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

pub mod backend;
pub mod config_space;
pub mod handler;
pub mod inflight;
pub mod queue_thread;
pub mod request;
pub mod vring;
pub mod worker;

#[cfg(test)]
mod tests;
