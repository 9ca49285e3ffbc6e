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
    inflight::Region,
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
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
    /// Leaked so the mock queue can borrow it for the whole test.
    mem: &'static GuestMemoryMmap<()>,
    q: MockSplitQueue<'static, GuestMemoryMmap<()>>,
    vring: VringRwLock,
    worker: Worker,
    next_desc: u16,
    used_seen: u16,
}

/// The test volume; `tier_extra` is added to its tier's definition.
fn volume(dir: &std::path::Path, tier_extra: &str) -> Arc<Volume> {
    let cfg = Config::parse(&format!(
        r#"
[[tier]]
tier_id = 0
name = "t0"
capacity = "4MiB"
cost_per_gb = 0.1
path = "{0}"
performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}
{tier_extra}
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
        Self::build(writeback, false, "")
    }

    fn read_only() -> Self {
        Self::build(true, true, "")
    }

    fn build(writeback: bool, read_only: bool, tier_extra: &str) -> Self {
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
        let volume = volume(dir.path(), tier_extra);
        let shared = Arc::new(Shared {
            limits: Limits {
                capacity: volume.size(),
                read_only,
            },
            volume,
            writeback: AtomicBool::new(writeback),
            busy_queues: Default::default(),
        });
        let volume = shared.volume.clone();
        let worker = Worker::new(shared.clone(), QSIZE).unwrap();
        Self {
            volume,
            shared,
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
        self.kick(descs, bad_next);
        self.wait_used()
    }

    /// Publishes a chain of (addr, len, device-writable) and handles the
    /// kick, without waiting for the request to complete.
    fn kick(&mut self, descs: &[(u64, u32, bool)], bad_next: Option<u16>) {
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
    }

    /// Writes `raw` to the descriptor table and publishes it as a chain.
    fn publish(&mut self, raw: &[RawDescriptor]) {
        let base = self.next_desc;
        for (i, d) in raw.iter().enumerate() {
            self.q.desc_table().store(base + i as u16, *d).unwrap();
        }
        // The avail ring entry goes at the index modulo the queue size (the
        // mock's `add_desc_chains` does not wrap: it serves QSIZE chains).
        let avail = self.q.avail_addr();
        let idx: u16 = self.mem.read_obj(avail.unchecked_add(2)).unwrap();
        let entry = avail.unchecked_add(4 + 2 * (idx % QSIZE) as u64);
        self.mem.write_obj(base, entry).unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
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
fn a_flush_is_committed_by_the_committer_thread_not_the_queue_thread() {
    let mut r = Rig::new();
    r.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        r.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)])
            .1,
        OK
    );
    assert_eq!(r.volume.group_commits(), 0);
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(r.submit(&[(HDR, 16, false), (STATUS, 1, true)]), (1, OK));
    assert_eq!(
        r.volume.group_commits(),
        1,
        "the commit ran on the committer"
    );
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

#[test]
fn worker_dropped_with_a_read_in_flight_releases_it_as_a_read() {
    // Reads complete 300 ms late (emulated tier speed), so the worker is
    // dropped (the connection ends) while one is in flight. Its pin must
    // be dropped as a read's: released as a write, it marks the parts it
    // covers dirty on a chunk being migrated, and the mover copies them
    // again for nothing.
    let mut r = Rig::build(true, false, "emulate = { read_latency_us = 300000 }");
    r.write_4k(0, 5);
    let volume = r.volume.clone();
    let map = volume.chunk_map();
    assert!(map.begin_migration(0).is_some());
    let dirty = volume.dirty_tracker().register(0).unwrap();
    r.header(VIRTIO_BLK_T_IN, 0);
    r.kick(
        &[(HDR, 16, false), (DATA, 4096, true), (STATUS, 1, true)],
        None,
    );
    assert_eq!(map.pins(0), 1, "the read is in flight");
    drop(r.worker);
    assert_eq!(map.pins(0), 0, "the drop released the read's pin");
    assert_eq!(
        volume.dirty_tracker().take(dirty),
        0,
        "a read marked a migrating chunk dirty"
    );
}

const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const CAP_SECTORS: u64 = VOL_SIZE / 512;

/// A discard / write-zeroes segment: sector, num_sectors, flags.
type Seg = (u64, u32, u32);

/// One row of the status table.
#[derive(Debug, Clone, Copy)]
struct Case {
    ty: u32,
    sector: u64,
    /// Device-readable bytes after the header: `segs`, or zeros.
    out: u32,
    segs: &'static [Seg],
    /// Device-writable data bytes before the status byte.
    inn: u32,
    read_only: bool,
    want: u8,
}

const fn req(ty: u32, sector: u64, out: u32, inn: u32, want: u8) -> Case {
    Case {
        ty,
        sector,
        out,
        segs: &[],
        inn,
        read_only: false,
        want,
    }
}

impl Case {
    const fn ro(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The request carries these segments as its device-readable data.
    const fn segs(mut self, segs: &'static [Seg]) -> Self {
        self.out = segs.len() as u32 * 16;
        self.segs = segs;
        self
    }
}

const IN: u32 = VIRTIO_BLK_T_IN;
const OUT: u32 = VIRTIO_BLK_T_OUT;
const FLUSH: u32 = VIRTIO_BLK_T_FLUSH;
const GET_ID: u32 = VIRTIO_BLK_T_GET_ID;
const DISCARD: u32 = VIRTIO_BLK_T_DISCARD;
const WZ: u32 = VIRTIO_BLK_T_WRITE_ZEROES;
const UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
/// A sector whose byte offset does not fit in 64 bits.
const SECTOR_OVERFLOW: u64 = u64::MAX / 256;
/// The last sector whose byte offset fits: offset + 1024 overflows.
const SECTOR_LAST_OFFSET: u64 = u64::MAX >> 9;

/// Every request type × flags × lengths, with the status virtio 1.2 5.2.6
/// (Device Operation) asks for. Where the spec binds only the driver
/// (5.2.6.1), breaking the rule is a driver error, and the status for
/// that is VIRTIO_BLK_S_IOERR ("for device or driver error", 5.2.6);
/// UNSUPP is "for a request unsupported by device". The device rules
/// (5.2.6.2) are cited where they decide.
const CASES: &[Case] = &[
    // --- VIRTIO_BLK_T_IN ---
    // 5.2.6: IN fills data with sectors read, in multiples of 512.
    req(IN, 0, 0, 4096, OK),
    // 0 bytes is a multiple of 512 (5.2.6.1) and reads nothing beyond capacity.
    req(IN, 0, 0, 0, OK),
    // 5.2.6.1: data length MUST be a multiple of 512 for IN; driver error.
    req(IN, 0, 0, 700, IOERR),
    // 5.2.6.1: no read beyond capacity; the last sector itself is fine.
    req(IN, CAP_SECTORS - 1, 0, 512, OK),
    // 5.2.6.1: MUST NOT read beyond capacity; driver error.
    req(IN, CAP_SECTORS - 1, 0, 1024, IOERR),
    // Nothing read, ending exactly at capacity: not beyond it.
    req(IN, CAP_SECTORS, 0, 0, OK),
    // Starts beyond capacity (5.2.6.1), even with no data.
    req(IN, CAP_SECTORS + 1, 0, 0, IOERR),
    // sector × 512 overflows 64 bits: beyond capacity (5.2.6.1).
    req(IN, SECTOR_OVERFLOW, 0, 512, IOERR),
    req(IN, u64::MAX, 0, 512, IOERR),
    // offset + length overflows 64 bits: beyond capacity (5.2.6.1).
    req(IN, SECTOR_LAST_OFFSET, 0, 1024, IOERR),
    // 5.2.6.2: only writes are refused on a read-only device.
    req(IN, 0, 0, 4096, OK).ro(),
    // 5.2.6: IN data is device-writable; readable data is a driver error.
    req(IN, 0, 512, 0, IOERR),
    // --- VIRTIO_BLK_T_OUT ---
    // 5.2.6: OUT writes data, in multiples of 512.
    req(OUT, 8, 4096, 0, OK),
    // 0 bytes is a multiple of 512 (5.2.6.1).
    req(OUT, 8, 0, 0, OK),
    // 5.2.6.1: data length MUST be a multiple of 512 for OUT.
    req(OUT, 8, 700, 0, IOERR),
    // 5.2.6.1: MUST NOT write beyond capacity.
    req(OUT, CAP_SECTORS - 1, 1024, 0, IOERR),
    req(OUT, CAP_SECTORS, 512, 0, IOERR),
    req(OUT, SECTOR_OVERFLOW, 512, 0, IOERR),
    req(OUT, SECTOR_LAST_OFFSET, 1024, 0, IOERR),
    // 5.2.6.2: a device MUST set IOERR for a write request if
    // VIRTIO_BLK_F_RO is offered, and MUST NOT write any data.
    req(OUT, 8, 4096, 0, IOERR).ro(),
    req(OUT, 8, 0, 0, IOERR).ro(),
    // 5.2.6: OUT data is device-readable; writable data is a driver error.
    req(OUT, 8, 0, 512, IOERR),
    // --- VIRTIO_BLK_T_FLUSH ---
    req(FLUSH, 0, 0, 0, OK),
    // 5.2.6.1: the driver SHOULD NOT include data: only a SHOULD, served.
    req(FLUSH, 0, 512, 0, OK),
    req(FLUSH, 0, 0, 512, OK),
    // 5.2.6.1: the driver MUST set sector to 0 for FLUSH; driver error.
    req(FLUSH, 1, 0, 0, IOERR),
    // A flush writes no data: served on a read-only device (5.2.6.2
    // refuses write requests only).
    req(FLUSH, 0, 0, 0, OK).ro(),
    // --- VIRTIO_BLK_T_GET_ID ---
    // 5.2.6: the ID string is up to 20 bytes; data MUST be 20 bytes
    // (5.2.6.1).
    req(GET_ID, 0, 0, 20, OK),
    req(GET_ID, 0, 0, 20, OK).ro(),
    // 5.2.6.1: data MUST be 20 bytes. Shorter cannot hold the ID (a cut ID
    // could match another disk's): driver error.
    req(GET_ID, 0, 0, 19, IOERR),
    req(GET_ID, 0, 0, 0, IOERR),
    // Longer: the whole ID fits; the device writes its 20 bytes.
    req(GET_ID, 0, 0, 512, OK),
    // --- VIRTIO_BLK_T_DISCARD ---
    // 5.2.6: data is one or more segments; flags 0 is a plain discard.
    req(DISCARD, 0, 0, 0, OK).segs(&[(0, 8, 0)]),
    // 5.2.6.2: the device MUST set UNSUPP for discard commands if the
    // unmap flag is set (unmap is for write zeroes only).
    req(DISCARD, 0, 0, 0, UNSUPP).segs(&[(0, 8, UNMAP)]),
    // 5.2.6.2: the device MUST set UNSUPP for discard if any unknown flag
    // is set.
    req(DISCARD, 0, 0, 0, UNSUPP).segs(&[(0, 8, 2)]),
    req(DISCARD, 0, 0, 0, UNSUPP).segs(&[(0, 8, 1 << 31)]),
    // ... in any segment of the request,
    req(DISCARD, 0, 0, 0, UNSUPP).segs(&[(0, 8, 0), (16, 8, 4)]),
    // ... whatever else is wrong with it (the MUST is unconditional):
    req(DISCARD, 0, 0, 0, UNSUPP).segs(&[(CAP_SECTORS, 8, 0), (0, 8, 2)]),
    req(DISCARD, 0, 0, 0, UNSUPP).segs(&[(0, 8, UNMAP)]).ro(),
    // 5.2.6: data consists of one or more segments; none is a driver error.
    req(DISCARD, 0, 0, 0, IOERR),
    // 5.2.6.1: data length MUST be a multiple of the segment size (16).
    // The segments cannot be told apart, so no flag can be read: IOERR.
    req(DISCARD, 0, 10, 0, IOERR),
    req(DISCARD, 0, 24, 0, IOERR),
    // 5.2.6.1: MUST NOT contain more than max_discard_seg (32) segments.
    req(DISCARD, 0, 0, 0, OK).segs(&[(0, 1, 0); 32]),
    req(DISCARD, 0, 0, 0, IOERR).segs(&[(0, 1, 0); 33]),
    // 5.2.6.1: no request beyond capacity: a segment past the end.
    req(DISCARD, 0, 0, 0, OK).segs(&[(CAP_SECTORS - 8, 8, 0)]),
    req(DISCARD, 0, 0, 0, IOERR).segs(&[(CAP_SECTORS - 8, 9, 0)]),
    req(DISCARD, 0, 0, 0, IOERR).segs(&[(0, 8, 0), (CAP_SECTORS, 1, 0)]),
    req(DISCARD, 0, 0, 0, IOERR).segs(&[(SECTOR_OVERFLOW, 1, 0)]),
    req(DISCARD, 0, 0, 0, IOERR).segs(&[(SECTOR_LAST_OFFSET, 2, 0)]),
    // An empty segment discards nothing, within capacity.
    req(DISCARD, 0, 0, 0, OK).segs(&[(8, 0, 0)]),
    // Read-only: DISCARD is not offered and would change data; refused
    // like a write (5.2.6.2), nothing written.
    req(DISCARD, 0, 0, 0, IOERR).segs(&[(0, 8, 0)]).ro(),
    // The header's sector is unused for discard (5.2.6): ignored.
    req(DISCARD, 77, 0, 0, OK).segs(&[(0, 8, 0)]),
    // 5.2.6: segments are device-readable; writable ones are no segments.
    req(DISCARD, 0, 0, 16, IOERR),
    // --- VIRTIO_BLK_T_WRITE_ZEROES ---
    // 5.2.6.2: reads of the range MUST return zeroes, with or without unmap.
    req(WZ, 0, 0, 0, OK).segs(&[(0, 8, 0)]),
    // 5.2.6: unmap lets the device deallocate (write zeroes only).
    req(WZ, 0, 0, 0, OK).segs(&[(0, 8, UNMAP)]),
    // 5.2.6.2: the device MUST set UNSUPP for write zeroes if any unknown
    // flag is set.
    req(WZ, 0, 0, 0, UNSUPP).segs(&[(0, 8, 2)]),
    req(WZ, 0, 0, 0, UNSUPP).segs(&[(0, 8, UNMAP | 1 << 31)]),
    req(WZ, 0, 0, 0, UNSUPP).segs(&[(0, 8, UNMAP), (8, 8, 8)]),
    req(WZ, 0, 0, 0, UNSUPP).segs(&[(SECTOR_OVERFLOW, 8, 2)]),
    req(WZ, 0, 0, 0, UNSUPP).segs(&[(0, 8, 2)]).ro(),
    // 5.2.6 / 5.2.6.1: one or more whole segments.
    req(WZ, 0, 0, 0, IOERR),
    req(WZ, 0, 20, 0, IOERR),
    // 5.2.6.1: MUST NOT contain more than max_write_zeroes_seg (32).
    req(WZ, 0, 0, 0, OK).segs(&[(0, 1, UNMAP); 32]),
    req(WZ, 0, 0, 0, IOERR).segs(&[(0, 1, 0); 33]),
    // 5.2.6.1: no request beyond capacity.
    req(WZ, 0, 0, 0, OK).segs(&[(CAP_SECTORS - 8, 8, UNMAP)]),
    req(WZ, 0, 0, 0, IOERR).segs(&[(CAP_SECTORS - 8, 9, 0)]),
    req(WZ, 0, 0, 0, IOERR).segs(&[(SECTOR_OVERFLOW, 1, 0)]),
    req(WZ, 0, 0, 0, IOERR).segs(&[(SECTOR_LAST_OFFSET, 2, UNMAP)]),
    // Read-only: not offered, would change data; refused like a write.
    req(WZ, 0, 0, 0, IOERR).segs(&[(0, 8, 0)]).ro(),
    req(WZ, 0, 0, 0, IOERR).segs(&[(0, 8, UNMAP)]).ro(),
    // --- Types this device does not offer ---
    // 5.2.6: UNSUPP is for a request unsupported by the device: unknown
    // types, legacy SCSI (2, 3) and FLUSH_OUT (5) of a VERSION_1 device,
    // GET_LIFETIME (10) and SECURE_ERASE (14) whose features are not
    // offered, and any type with the legacy BARRIER bit.
    req(2, 0, 0, 0, UNSUPP),
    req(3, 0, 512, 0, UNSUPP),
    req(5, 0, 0, 0, UNSUPP),
    req(10, 0, 0, 6, UNSUPP),
    req(14, 0, 0, 0, UNSUPP).segs(&[(0, 8, 0)]),
    req(IN | 0x8000_0000, 0, 0, 512, UNSUPP),
    req(0x1234, 0, 0, 0, UNSUPP),
    req(0x1234, CAP_SECTORS * 2, 700, 3, UNSUPP),
    req(0x1234, 0, 0, 0, UNSUPP).ro(),
    // 5.2.6.2: without VIRTIO_BLK_F_ZONED the device MUST reject the zone
    // requests (ZONE_APPEND 15, REPORT 16, OPEN 18, CLOSE 20, FINISH 22,
    // RESET 24, RESET_ALL 26) with UNSUPP.
    req(15, 0, 512, 8, UNSUPP),
    req(16, 0, 0, 4096, UNSUPP),
    req(18, 0, 0, 0, UNSUPP),
    req(20, 0, 0, 0, UNSUPP),
    req(22, 0, 0, 0, UNSUPP),
    req(24, 0, 0, 0, UNSUPP),
    req(26, 0, 0, 0, UNSUPP),
];

/// Where a case's device-writable data goes (apart from its readable data).
const DATA_IN: u64 = DATA + 0x8_0000;

#[test]
fn every_request_gets_the_status_virtio_1_2_asks_for() {
    let mut rw = Rig::new();
    let mut ro = Rig::read_only();
    let mut wrong = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let r = if c.read_only { &mut ro } else { &mut rw };
        r.header(c.ty, c.sector);
        let mut out = vec![0u8; c.out as usize];
        for (seg, s) in out.chunks_exact_mut(16).zip(c.segs) {
            seg[0..8].copy_from_slice(&s.0.to_le_bytes());
            seg[8..12].copy_from_slice(&s.1.to_le_bytes());
            seg[12..16].copy_from_slice(&s.2.to_le_bytes());
        }
        r.mem.write_slice(&out, GuestAddress(DATA)).unwrap();
        let mut chain = vec![(HDR, 16, false)];
        if c.out > 0 {
            chain.push((DATA, c.out, false));
        }
        if c.inn > 0 {
            chain.push((DATA_IN, c.inn, true));
        }
        chain.push((STATUS, 1, true));
        // The used length counts the bytes written: data read or the ID,
        // and the status byte.
        let len = match (c.want, c.ty) {
            (OK, IN) => c.inn + 1,
            (OK, GET_ID) => 21,
            _ => 1,
        };
        let got = r.submit(&chain);
        if got != (len, c.want) {
            wrong.push(format!(
                "row {i} {c:?}: got (used length, status) {got:?}, want {:?}",
                (len, c.want)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // 5.2.6.2: on the read-only device no data was written.
    assert!((0..ro.volume.chunk_count()).all(|c| ro.volume.chunk_map().get(c).is_none()));
}

impl Rig {
    /// The used index and the heads in the used ring so far.
    fn used_ring(&self) -> (u16, Vec<u32>) {
        let used = self.q.used_addr();
        let idx: u16 = self.mem.read_obj(used.unchecked_add(2)).unwrap();
        let heads = (0..idx)
            .map(|i| {
                let slot = (i % QSIZE) as u64;
                self.mem.read_obj(used.unchecked_add(4 + slot * 8)).unwrap()
            })
            .collect();
        (idx, heads)
    }

    /// Reaps completions until the used index reaches `idx`.
    fn wait_used_idx(&mut self, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_ring().0 != idx {
            assert!(Instant::now() < deadline, "requests never completed");
            std::thread::sleep(Duration::from_millis(1));
            self.worker.process_completions(&self.vring);
        }
    }
}

#[test]
fn requests_in_flight_when_the_backend_dies_are_served_once_after_restart() {
    // Writes complete 300 ms late, reads of unwritten sectors at once: a
    // write then a read complete out of order.
    let mut r = Rig::build(true, false, "emulate = { write_latency_us = 300000 }");
    let (file, len) = Region::create(1, QSIZE).unwrap();
    let region = Region::map(&file, len, 0, 1, QSIZE).unwrap();
    r.worker.set_inflight(region.queue(0));
    assert_eq!(r.worker.recover(&r.vring), 0, "a new region");
    // Chain at descriptors 0..3: write 0xab to sector 8.
    r.mem
        .write_slice(&[0xab; 4096], GuestAddress(DATA))
        .unwrap();
    r.header(VIRTIO_BLK_T_OUT, 8);
    r.kick(
        &[(HDR, 16, false), (DATA, 4096, false), (STATUS, 1, true)],
        None,
    );
    // Chain at descriptors 3..6: read sector 512 (never written).
    let (hdr2, data2, status2) = (HDR + 0x100, DATA + 0x10_000, STATUS + 0x10);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..16].copy_from_slice(&512u64.to_le_bytes());
    r.mem.write_slice(&h, GuestAddress(hdr2)).unwrap();
    r.kick(
        &[(hdr2, 16, false), (data2, 4096, true), (status2, 1, true)],
        None,
    );
    assert_eq!(r.used_ring(), (1, vec![3]), "the read completed first");

    // The back-end dies with the write in flight: its worker goes without
    // completing it. The front-end restarts the ring from the used index
    // (QEMU's SET_VRING_BASE after a lost back-end) and hands the same
    // inflight region to the new back-end.
    drop(region);
    r.worker = Worker::new(r.shared.clone(), QSIZE).unwrap();
    r.vring.set_queue_next_avail(1);
    let region = Region::map(&file, len, 0, 1, QSIZE).unwrap();
    r.worker.set_inflight(region.queue(0));
    assert_eq!(r.worker.recover(&r.vring), 1, "the write is served again");
    assert_eq!(r.vring.queue_next_avail(), 2, "and the read is not");
    let mem = GuestMemoryAtomic::new(r.mem.clone());
    r.worker.process_queue(&r.vring, &mem, false);
    r.wait_used_idx(2);
    // Served once each: no more completions come.
    r.worker.process_queue(&r.vring, &mem, false);
    std::thread::sleep(Duration::from_millis(50));
    r.worker.process_completions(&r.vring);
    assert_eq!(r.used_ring(), (2, vec![3, 0]));
    let mut got = vec![0u8; 4096];
    r.volume.read_at(8 * 512, &mut got).unwrap();
    assert!(got.iter().all(|&b| b == 0xab), "the write landed");
    // A clean restart now has nothing to serve again.
    drop(region);
    let region = Region::map(&file, len, 0, 1, QSIZE).unwrap();
    r.worker.set_inflight(region.queue(0));
    assert_eq!(r.worker.recover(&r.vring), 0);
    assert_eq!(r.vring.queue_next_avail(), 2);
}
