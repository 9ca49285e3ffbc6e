//! The `VhostUserBackend` of one volume and connection: features, config
//! space, memory updates, and dispatch of queue kicks and io_uring
//! completions to the per-queue workers (one thread per queue).

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
    time::{Duration, Instant},
};

use log::warn;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::{
    virtio_blk::{
        VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
    },
    virtio_config::VIRTIO_F_VERSION_1,
    virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC},
};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;

use super::{
    config_space::{self, BlkGeometry, CONFIG_SPACE_BYTES, OFF_WRITEBACK},
    inflight::QueueInflight,
    request::Limits,
    vring::BlkVring,
    worker::{GuestMemory, Shared, Worker},
};
use crate::volume::{load::QueueLoad, Volume};

/// How long stopping a queue waits for its requests in flight.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct BlkBackend {
    shared: Arc<Shared>,
    num_queues: usize,
    queue_size: u16,
    workers: Vec<Mutex<Worker>>,
    inflight: Vec<Arc<QueueLoad>>,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemory>>>,
    event_idx: AtomicBool,
    read_only: bool,
    /// How long a queue's worker busy-polls after its last work.
    poll: Duration,
}

impl BlkBackend {
    pub fn new(volume: Arc<Volume>) -> io::Result<Self> {
        let meta = volume.metadata().clone();
        let shared = Arc::new(Shared {
            limits: Limits {
                capacity: volume.size(),
                read_only: meta.read_only,
            },
            volume,
            writeback: AtomicBool::new(true),
            busy_queues: AtomicUsize::new(0),
        });
        let workers = (0..meta.num_queues)
            .map(|_| Worker::new(shared.clone(), meta.queue_size).map(Mutex::new))
            .collect::<io::Result<Vec<_>>>()?;
        let inflight = workers.iter().map(|w| lock(w).load()).collect();
        Ok(Self {
            shared,
            num_queues: meta.num_queues as usize,
            queue_size: meta.queue_size,
            workers,
            inflight,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            read_only: meta.read_only,
            poll: Duration::from_micros(meta.poll_us.into()),
        })
    }

    /// Epoll id of worker completions; above the ids the library reserves
    /// for queues and its exit event.
    pub fn completion_event(&self) -> u16 {
        self.num_queues as u16 + 1
    }

    /// The completion eventfd of queue `index`'s worker, for its queue
    /// thread's epoll.
    pub fn completion_fd(&self, index: usize) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.workers
            .get(index)
            .map(|w| lock(w).completion_fd().as_raw_fd())
    }

    fn config(&self) -> [u8; CONFIG_SPACE_BYTES] {
        config_space::build(&BlkGeometry {
            capacity_bytes: self.shared.volume.size(),
            chunk_bytes: self.shared.volume.chunk_size(),
            num_queues: self.num_queues as u16,
            seg_max: self.seg_max(),
            writeback: self.shared.writeback.load(Ordering::Relaxed),
        })
    }

    fn seg_max(&self) -> u32 {
        // Two descriptors of a chain carry the header and the status.
        self.queue_size as u32 - 2
    }

    pub fn volume_name(&self) -> &str {
        self.shared.volume.name()
    }

    /// Hands queue `index` its part of the front-end's inflight region.
    pub fn set_inflight(&self, index: usize, tracker: Option<QueueInflight>) {
        if let Some(w) = self.workers.get(index) {
            lock(w).set_inflight(tracker);
        }
    }

    /// Queue `index` starts: returns how many requests left in flight by
    /// a previous back-end it will serve again.
    pub fn recover_queue(&self, index: usize, vring: &BlkVring) -> usize {
        self.workers
            .get(index)
            .map_or(0, |w| lock(w).recover(vring))
    }

    fn memory(&self) -> Option<GuestMemoryAtomic<GuestMemory>> {
        self.mem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counts a queue thread as busy while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock(w: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    // A worker's state stays consistent between requests; a panic in one
    // handler must not take the queue down with a poisoned lock.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    /// Signals each new call eventfd once (see `vring`).
    type Vring = BlkVring;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.queue_size as usize
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_CONFIG_WCE)
            | (1 << VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    fn acked_features(&self, features: u64) {
        // Without CONFIG_WCE negotiated the cache mode is fixed: write-back
        // when FLUSH was negotiated, write-through otherwise.
        if features & (1 << VIRTIO_BLK_F_CONFIG_WCE) == 0 {
            let wb = features & (1 << VIRTIO_BLK_F_FLUSH) != 0;
            self.shared.writeback.store(wb, Ordering::Relaxed);
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn reset_device(&self) {
        self.shared.writeback.store(true, Ordering::Relaxed);
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_space::read(&self.config(), offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        if offset as usize == OFF_WRITEBACK && buf.len() == 1 {
            let wb = buf[0] != 0;
            if !wb {
                // Entering write-through: what was cached must be durable.
                self.shared.volume.flush().map_err(io::Error::other)?;
            }
            self.shared.writeback.store(wb, Ordering::Relaxed);
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "config space write of {} bytes at offset {offset}: only the writeback byte (offset {OFF_WRITEBACK}) is writable",
                buf.len()
            ),
        ))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Asynchronous backend: wait until the queue's requests in flight
        // have completed (the worker thread keeps reaping them).
        let Some(inflight) = self.inflight.get(queue_index as usize) else {
            return Ok(());
        };
        let start = Instant::now();
        while inflight.inflight() > 0 {
            if start.elapsed() > STOP_TIMEOUT {
                warn!(
                    "volume '{}': queue {queue_index} still has requests in flight after {STOP_TIMEOUT:?}",
                    self.shared.volume.name()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[BlkVring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let (Some(worker), Some(vring)) = (self.workers.get(thread_id), vrings.first()) else {
            return Err(io::Error::other(format!(
                "no worker for thread {thread_id}"
            )));
        };
        let mut w = lock(worker);
        let _busy = Busy::enter(&self.shared.busy_queues);
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        // Guest memory is looked up only for a kick or a poll, not for
        // every completion event of an O_DIRECT queue.
        let mut mem = None;
        if device_event == self.completion_event() {
            w.process_completions(vring);
        } else if device_event == 0 {
            mem = self.memory();
            let Some(m) = &mem else {
                return Ok(());
            };
            w.process_queue(vring, m, event_idx);
        } else {
            return Err(io::Error::other(format!("unknown event {device_event}")));
        }
        if w.wants_poll(self.poll) {
            if let Some(m) = mem.or_else(|| self.memory()) {
                w.poll(vring, &m, event_idx, self.poll);
            }
        }
        Ok(())
    }
}
