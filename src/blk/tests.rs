//! The worker driven through a real split virtqueue in test memory: every
//! malformed chain must come back with the right status (or none, when it
//! has no status byte), never a panic or an access outside guest memory.

use std::{
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::{
    virtio_blk::*,
    virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
    },
};
use virtio_queue::{
    desc::{split::Descriptor, RawDescriptor},
    mock::MockSplitQueue,
};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
};

use super::{
    request::Limits,
    worker::{Shared, Worker},
};
use crate::{config::Config, meta::Store, tier::TierSet, volume::Volume};

const QSIZE: u16 = 16;
const MEM_SIZE: u64 = 16 << 20;
const VOL_SIZE: u64 = 1 << 20;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;

struct Rig {
    volume: Arc<Volume>,
    _dir: tempfile::TempDir,
    /// Leaked so the mock queue can borrow it for the whole test.
    mem: &'static GuestMemoryMmap<()>,
    q: MockSplitQueue<'static, GuestMemoryMmap<()>>,
    vring: VringRwLock,
    worker: Worker,
    next_desc: u16,
    used_seen: u16,
}

fn volume(dir: &std::path::Path) -> Arc<Volume> {
    let cfg = Config::parse(&format!(
        r#"
[[tier]]
tier_id = 0
name = "t0"
capacity = "4MiB"
cost_per_gb = 0.1
path = "{0}"
performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}
[[volume]]
name = "v"
size = {VOL_SIZE}
chunk_size = "64KiB"
socket = "/tmp/unused.sock"
serial = "serial-0123"
"#,
        dir.display()
    ))
    .unwrap();
    let store = Arc::new(Store::open(&dir.join("state")).unwrap());
    let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
    Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap())
}

impl Rig {
    fn new() -> Self {
        Self::with_writeback(true)
    }

    fn with_writeback(writeback: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mem: &'static GuestMemoryMmap<()> = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        ));
        let q = MockSplitQueue::new(mem, QSIZE);
        let vring = VringRwLock::new(GuestMemoryAtomic::new(mem.clone()), QSIZE).unwrap();
        vring.set_queue_size(QSIZE);
        vring
            .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
            .unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let volume = volume(dir.path());
        let shared = Arc::new(Shared {
            limits: Limits {
                capacity: volume.size(),
                read_only: false,
            },
            volume,
            writeback: AtomicBool::new(writeback),
            busy_queues: Default::default(),
        });
        let volume = shared.volume.clone();
        let worker = Worker::new(shared, QSIZE).unwrap();
        Self {
            volume,
            _dir: dir,
            mem,
            q,
            vring,
            worker,
            next_desc: 0,
            used_seen: 0,
        }
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Writes 4 KiB of `byte` at `sector` through the queue; asserts OK.
    fn write_4k(&mut self, sector: u64, byte: u8) {
        self.mem
            .write_slice(&[byte; 4096], GuestAddress(DATA))
            .unwrap();
        self.header(VIRTIO_BLK_T_OUT, sector);
        let w = [(HDR, 16, false), (DATA, 4096, false), (STATUS, 1, true)];
        assert_eq!(self.submit(&w), (1, OK));
    }

    /// Submits a chain of (addr, len, device-writable) and returns the used
    /// length and the status byte once the request completes.
    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u32, u8) {
        self.submit_raw(descs, None)
    }

    fn submit_raw(&mut self, descs: &[(u64, u32, bool)], bad_next: Option<u16>) -> (u32, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let base = self.next_desc;
        let n = descs.len() as u16;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i as u16 == n - 1;
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                let mut next = 0;
                if !last || bad_next.is_some() {
                    flags |= VRING_DESC_F_NEXT as u16;
                    next = if last {
                        bad_next.unwrap()
                    } else {
                        base + i as u16 + 1
                    };
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        self.publish(&raw);
        let mem = GuestMemoryAtomic::new(self.mem.clone());
        self.worker.process_queue(&self.vring, &mem, false);
        self.wait_used()
    }

    /// Writes `raw` to the descriptor table and publishes it as a chain.
    fn publish(&mut self, raw: &[RawDescriptor]) {
        let base = self.next_desc;
        self.q.add_desc_chains(raw, base).unwrap();
        self.next_desc = (base + raw.len() as u16) % (QSIZE - 4);
    }

    /// Waits for the next used entry; returns its length and the status
    /// byte.
    fn wait_used(&mut self) -> (u32, u8) {
        let used_idx_addr = self.q.used_addr().unchecked_add(2);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let idx: u16 = self.mem.read_obj(used_idx_addr).unwrap();
            if idx != self.used_seen {
                break;
            }
            assert!(Instant::now() < deadline, "request never completed");
            std::thread::sleep(Duration::from_millis(1));
            self.worker.process_completions(&self.vring);
        }
        let slot = (self.used_seen % QSIZE) as u64;
        self.used_seen = self.used_seen.wrapping_add(1);
        let len: u32 = self
            .mem
            .read_obj(self.q.used_addr().unchecked_add(4 + slot * 8 + 4))
            .unwrap();
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn write_then_read_round_trips_through_guest_memory() {
    let mut r = Rig::new();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    r.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    r.header(VIRTIO_BLK_T_OUT, 100);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 8192, false), (STATUS, 1, true)]),
        (1, OK)
    );
    r.mem.write_slice(&[0u8; 8192], GuestAddress(DATA)).unwrap();
    r.header(VIRTIO_BLK_T_IN, 100);
    // Read into two buffers to exercise the iovec split.
    let d = [
        (HDR, 16, false),
        (DATA, 4096, true),
        (DATA + 0x8000, 4096, true),
        (STATUS, 1, true),
    ];
    assert_eq!(r.submit(&d), (8193, OK));
    let mut back = vec![0u8; 8192];
    r.mem
        .read_slice(&mut back[..4096], GuestAddress(DATA))
        .unwrap();
    r.mem
        .read_slice(&mut back[4096..], GuestAddress(DATA + 0x8000))
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn read_of_unwritten_sectors_fills_zeros() {
    let mut r = Rig::new();
    r.mem
        .write_slice(&[0xffu8; 4096], GuestAddress(DATA))
        .unwrap();
    r.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 4096, true), (STATUS, 1, true)]),
        (4097, OK)
    );
    let mut back = [1u8; 4096];
    r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert!(back.iter().all(|&b| b == 0));
}

#[test]
fn data_buffer_outside_guest_memory_is_ioerr() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    let d = [
        (HDR, 16, false),
        (MEM_SIZE - 512, 4096, true),
        (STATUS, 1, true),
    ];
    assert_eq!(r.submit(&d), (1, IOERR));
    r.header(VIRTIO_BLK_T_OUT, 0);
    let d = [
        (HDR, 16, false),
        (u64::MAX - 1023, 1024, false),
        (STATUS, 1, true),
    ];
    assert_eq!(r.submit(&d), (1, IOERR));
}

#[test]
fn sector_out_of_range_is_ioerr() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_OUT, VOL_SIZE / 512);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]),
        (1, IOERR)
    );
}

#[test]
fn bad_length_and_wrong_direction_are_ioerr() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 700, true), (STATUS, 1, true)]),
        (1, IOERR)
    );
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]),
        (1, IOERR)
    );
    r.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(r.submit(&[(HDR, 8, false), (STATUS, 1, true)]), (1, IOERR));
}

#[test]
fn unknown_type_is_unsupp() {
    let mut r = Rig::new();
    r.header(0x1234, 0);
    let st = r.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(st, (1, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn chain_without_status_byte_is_returned_untouched() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_OUT, 0);
    let (len, status) = r.submit(&[(HDR, 16, false), (DATA, 512, false)]);
    assert_eq!((len, status), (0, 0xff), "nothing written, used length 0");
}

#[test]
fn chain_with_next_beyond_queue_is_refused_without_panic() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_IN, 0);
    // The last descriptor claims a successor outside the table: the chain
    // is cut there and the request has no writable status byte.
    let (len, _) = r.submit_raw(&[(HDR, 16, false)], Some(QSIZE + 100));
    assert_eq!(len, 0);
    // The queue keeps working afterwards.
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)])
            .1,
        OK
    );
}

#[test]
fn get_id_returns_volume_serial() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_GET_ID, 0);
    r.mem
        .write_slice(&[0xffu8; 20], GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]),
        (21, OK)
    );
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"serial-0123");
    assert!(id[11..].iter().all(|&b| b == 0));
}

#[test]
fn flush_and_discard_complete_ok() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 1, true)]), (1, OK));
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&128u32.to_le_bytes());
    r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    r.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]),
        (1, OK)
    );
    // A discard segment past the end is an I/O error.
    seg[0..8].copy_from_slice(&(VOL_SIZE / 512).to_le_bytes());
    r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 16, false), (STATUS, 1, true)]),
        (1, IOERR)
    );
}

#[test]
fn flush_commits_the_allocation_of_an_earlier_write() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)])
            .1,
        OK
    );
    assert!(r.volume.has_pending_changes());
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 1, true)]), (1, OK));
    assert!(!r.volume.has_pending_changes());
    assert_eq!(r.volume.store().chunk_map("v").unwrap().len(), 1);
}

#[test]
fn write_through_mode_makes_each_write_durable_before_completion() {
    let mut r = Rig::with_writeback(false);
    r.header(VIRTIO_BLK_T_OUT, 256);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 4096, false), (STATUS, 1, true)])
            .1,
        OK
    );
    assert!(!r.volume.has_pending_changes());
    assert_eq!(r.volume.store().chunk_map("v").unwrap().len(), 1);
}

#[test]
fn polling_without_event_idx_leaves_the_driver_kicking() {
    let mut r = Rig::new();
    r.write_4k(8, 7);
    r.header(VIRTIO_BLK_T_IN, 8);
    let rd = [(HDR, 16, false), (DATA, 4096, true), (STATUS, 1, true)];
    for _ in 0..4 {
        assert_eq!(r.submit(&rd), (4097, OK));
    }
    assert!(
        r.worker.wants_poll(Duration::from_millis(2)),
        "page-cache reads complete inside the submit, so the worker polls"
    );
    let mem = GuestMemoryAtomic::new(r.mem.clone());
    r.worker
        .poll(&r.vring, &mem, false, Duration::from_millis(2));
    let flags: u16 = r.mem.read_obj(r.q.used_addr()).unwrap();
    assert_eq!(
        flags & VRING_USED_F_NO_NOTIFY as u16,
        0,
        "without EVENT_IDX the driver must still be asked to kick after a poll"
    );
    // And the queue still serves requests.
    assert_eq!(r.submit(&rd), (4097, OK));
}

#[test]
fn chain_in_a_region_added_after_the_kick_is_served() {
    // The worker's snapshot of guest memory predates a region the driver
    // added (and had acknowledged) before publishing a chain whose indirect
    // table and data buffer live in it: the chain must be read through the
    // current table, not failed.
    let mut r = Rig::new();
    r.write_4k(16, 9);

    const HIGH: u64 = MEM_SIZE;
    let region = GuestRegionMmap::from_range(GuestAddress(HIGH), 0x10_000, None).unwrap();
    let grown = r.mem.insert_region(Arc::new(region)).unwrap();
    let (table, data) = (HIGH, HIGH + 0x1000);
    let next = VRING_DESC_F_NEXT as u16;
    let wr = VRING_DESC_F_WRITE as u16;
    let entries = [
        Descriptor::new(HDR, 16, next, 1),
        Descriptor::new(data, 4096, wr | next, 2),
        Descriptor::new(STATUS, 1, wr, 0),
    ];
    for (i, d) in entries.iter().enumerate() {
        grown
            .write_obj(RawDescriptor::from(*d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    r.header(VIRTIO_BLK_T_IN, 16);
    r.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let head = Descriptor::new(table, 48, VRING_DESC_F_INDIRECT as u16, 0);
    r.publish(&[RawDescriptor::from(head)]);

    let stale = Arc::new(r.mem.clone());
    let current = GuestMemoryAtomic::new(grown.clone());
    r.worker.serve_from_snapshot(&r.vring, &current, stale);
    assert_eq!(r.wait_used(), (4097, OK));
    let mut back = [0u8; 4096];
    grown.read_slice(&mut back, GuestAddress(data)).unwrap();
    assert!(back.iter().all(|&b| b == 9));
}

/// Handles a kick (EVENT_IDX on) on another thread; fails if the worker
/// does not return to its event loop within 5 s.
fn assert_kick_returns(mut r: Rig) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mem = GuestMemoryAtomic::new(r.mem.clone());
    let handle = std::thread::spawn(move || {
        r.worker.process_queue(&r.vring, &mem, true);
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "process_queue did not return"
    );
    handle.join().unwrap();
}

#[test]
fn avail_index_more_than_a_queue_ahead_does_not_spin_the_worker() {
    // A driver that publishes an avail index far beyond what the queue can
    // hold: nothing can be popped, and the worker must return to its event
    // loop instead of re-checking the ring forever.
    let r = Rig::new();
    let avail_idx = r.q.avail_addr().unchecked_add(2);
    r.mem.write_obj(100u16, avail_idx).unwrap();
    assert_kick_returns(r);
}

#[test]
fn avail_ring_running_off_guest_memory_does_not_spin_the_worker() {
    // The avail ring's header (flags, index) is the last 4 bytes of guest
    // memory, its entries lie beyond: a published chain cannot be read.
    let r = Rig::new();
    let avail = GuestAddress(MEM_SIZE - 4);
    r.vring
        .set_queue_info(r.q.desc_table_addr().0, avail.0, r.q.used_addr().0)
        .unwrap();
    r.mem.write_obj(1u16, avail.unchecked_add(2)).unwrap();
    assert_kick_returns(r);
}

#[test]
fn head_index_beyond_the_queue_is_dropped_and_the_queue_keeps_serving() {
    let mut r = Rig::new();
    let avail = r.q.avail_addr();
    let idx: u16 = r.mem.read_obj(avail.unchecked_add(2)).unwrap();
    let slot = avail.unchecked_add(4 + 2 * (idx % QSIZE) as u64);
    r.mem.write_obj(QSIZE + 3, slot).unwrap();
    r.mem
        .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
        .unwrap();
    let mem = GuestMemoryAtomic::new(r.mem.clone());
    r.worker.process_queue(&r.vring, &mem, false);
    let used: u16 = r.mem.read_obj(r.q.used_addr().unchecked_add(2)).unwrap();
    assert_eq!(used, 0, "a head the queue cannot hold is not returned");
    r.header(VIRTIO_BLK_T_IN, 0);
    let rd = [(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)];
    assert_eq!(r.submit(&rd), (513, OK));
}
