//! One queue's worker: pops descriptor chains, maps them onto the volume's
//! chunks and submits readv/writev straight between tier devices and guest
//! memory through this worker's own io_uring. Completions arrive through an
//! eventfd the ring signals, registered in the queue thread's epoll.

use std::{
    os::fd::AsRawFd,
    sync::{
        atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use io_uring::{opcode, squeue, types, IoUring};
use log::{debug, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{desc::split::Descriptor, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    inflight::{self, QueueInflight},
    request::{self, GuestBuf, Kind, Limits, Request, RequestBufs, ZeroSegment},
};
use crate::{
    blk::VIRTIO_BLK_ID_BYTES,
    config::FaultKind,
    tier::fault::Op,
    volume::{
        committer::{self, Replies},
        load::QueueLoad,
        FlushTicket, Segment, Target, Volume,
    },
};

/// Chains started before the driver hears of their completions: small
/// enough that, on a deep queue, the driver reaps and submits again while
/// this thread still works on the rest (the two overlap on two cores).
const SIGNAL_BATCH: usize = 6;
/// Bound of `Worker::inline_score`: how much history decides polling.
const INLINE_SCORE_MAX: i32 = 256;
pub type GuestMemory = GuestMemoryMmap<()>;

const TIMER_FLAG: u64 = 1 << 16;
/// Completions reaped per pass over the completion queue.
const CQE_BATCH: usize = 64;
const SLOT_MASK: u64 = 0xffff;
/// Alignment O_DIRECT needs of buffers, lengths and offsets.
const DIRECT_ALIGN: u64 = 512;

/// State the workers of one connection share with the backend.
#[derive(Debug)]
pub struct Shared {
    pub volume: Arc<Volume>,
    pub limits: Limits,
    /// Volatile write cache on (the guest may turn it off via CONFIG_WCE).
    pub writeback: AtomicBool,
    /// Queue threads of this device handling an event right now.
    pub busy_queues: AtomicUsize,
}

/// One in-flight request.
struct Slot {
    head: u16,
    status: GuestAddress,
    /// Keeps the guest memory mapped while the kernel may touch it.
    mem: Option<Arc<GuestMemory>>,
    /// Host iovecs of the whole data buffer.
    host: Vec<libc::iovec>,
    /// Per-operation iovec arrays, back to back; never reallocated while
    /// operations are in flight.
    op_iov: Vec<libc::iovec>,
    segs: Vec<Segment>,
    kind: Kind,
    pending: u32,
    expect: u64,
    done: u64,
    failed: bool,
    used_len: u32,
    started: Instant,
    timer: types::Timespec,
    /// Set while the request syncs the tier devices (FLUSH, or a write in
    /// write-through mode): the chunk-map changes to commit afterwards.
    ticket: Option<FlushTicket>,
    /// Tiers (bit per id) this request syncs; handed back to the volume if
    /// the sync fails, so the next flush tries them again.
    synced: u32,
    /// Synced; waiting for the committer to make the chunk-map changes
    /// before it durable (no kernel I/O in flight).
    committing: bool,
}

impl Slot {
    fn new(cap: usize) -> Self {
        Self {
            head: 0,
            status: GuestAddress(0),
            mem: None,
            host: Vec::with_capacity(cap),
            op_iov: Vec::with_capacity(cap * 2),
            segs: Vec::with_capacity(cap),
            kind: Kind::Read,
            pending: 0,
            expect: 0,
            done: 0,
            failed: false,
            used_len: 0,
            started: Instant::now(),
            timer: types::Timespec::new(),
            ticket: None,
            synced: 0,
            committing: false,
        }
    }
}

pub struct Worker {
    ring: IoUring,
    completion: EventFd,
    /// The committer's answers for this queue's FLUSHes.
    replies: Arc<Replies>,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    free: Vec<u16>,
    /// Requests in flight, completed and their latency (the volume's
    /// guest load, which the mover yields to).
    load: Arc<QueueLoad>,
    bufs: RequestBufs,
    zero_segs: Vec<ZeroSegment>,
    /// End of this queue's previous read or write (sequentiality signal).
    last_end: u64,
    /// Chains popped and completions reaped so far (wrapping): the poll
    /// loop's "was there work" signal.
    activity: u64,
    /// Completions found right after a submit minus those that arrived
    /// later through the eventfd, clamped to ±INLINE_SCORE_MAX: positive
    /// while requests complete at once (page cache), when polling pays.
    inline_score: i32,
    /// At the last look the driver's avail ring could not be served: its
    /// index more than a queue ahead of what this worker popped, or an
    /// entry outside guest memory (a broken or hostile driver).
    avail_bad: bool,
    avail_bad_logged: bool,
    /// Some tier emulates a slower device: completions are held back by
    /// its delay.
    timed: bool,
    /// The front-end's inflight region for this queue, when it gave one.
    tracker: Option<QueueInflight>,
    /// Chains in flight when the previous back-end died, to serve before
    /// the avail ring (see `inflight`).
    resubmit: Vec<u16>,
}

#[cfg(test)]
fn iovec_bytes(iov: &[libc::iovec]) -> u64 {
    iov.iter().map(|v| v.iov_len as u64).sum()
}

// SAFETY: the raw pointers in a worker's iovecs point into guest memory
// that the owning slot keeps mapped (`Slot::mem`); the worker is only ever
// used by one thread at a time (the backend keeps it behind a mutex), so
// moving it between threads cannot create shared mutable access.
unsafe impl Send for Worker {}

impl Worker {
    pub fn new(shared: Arc<Shared>, queue_size: u16) -> std::io::Result<Self> {
        let n = queue_size as usize;
        let ring = IoUring::builder().build((n * 2).next_power_of_two() as u32)?;
        let completion = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(completion.as_raw_fd())?;
        let replies = Replies::new(n, completion.try_clone()?);
        let timed = shared.volume.tiers().iter().any(|t| t.emulator().is_some());
        let load = shared.volume.guest_load().register();
        Ok(Self {
            ring,
            completion,
            replies,
            shared,
            slots: (0..n).map(|_| Slot::new(n)).collect(),
            free: (0..n as u16).rev().collect(),
            load,
            bufs: RequestBufs::with_capacity(n),
            zero_segs: Vec::with_capacity(request::MAX_DISCARD_SEG as usize),
            last_end: u64::MAX,
            activity: 0,
            inline_score: 0,
            avail_bad: false,
            avail_bad_logged: false,
            timed,
            tracker: None,
            resubmit: Vec::new(),
        })
    }

    pub fn completion_fd(&self) -> &EventFd {
        &self.completion
    }

    /// This queue's load counters: the backend waits for no request in
    /// flight before a queue is stopped.
    pub fn load(&self) -> Arc<QueueLoad> {
        self.load.clone()
    }

    /// Handles a kick: processes every available chain, with EVENT_IDX
    /// re-checking after re-enabling notifications.
    pub fn process_queue(
        &mut self,
        vring: &VringRwLock,
        memory: &GuestMemoryAtomic<GuestMemory>,
        event_idx: bool,
    ) {
        let mut mem = memory.memory().into_inner();
        loop {
            if event_idx {
                let _ = vring.disable_notification();
            }
            self.serve_all(vring, memory, &mut mem);
            if self.avail_bad {
                // Nothing can be popped, and the re-check below would say
                // "more" forever: back to the event loop until the driver
                // kicks again (or resets the queue).
                if !self.avail_bad_logged {
                    warn!("queue: the driver's avail ring is broken (index more than a queue ahead, or entries outside guest memory); serving nothing until it is fixed");
                    self.avail_bad_logged = true;
                }
                break;
            }
            if !event_idx {
                break;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!("queue: enable_notification: {e}");
                    break;
                }
            }
        }
    }

    /// Serves every available chain. While this is the device's only busy
    /// queue, in batches of SIGNAL_BATCH, each signalled at once, so the
    /// driver reaps and submits again while this thread works on the rest
    /// (driver and worker overlap on two cores); while other queues are
    /// busy too the cores are taken, and the extra signals and wake-ups
    /// would cost more than they overlap: then one batch, one signal.
    fn serve_all(
        &mut self,
        vring: &VringRwLock,
        memory: &GuestMemoryAtomic<GuestMemory>,
        mem: &mut Arc<GuestMemory>,
    ) {
        let max = if self.shared.busy_queues.load(Ordering::Relaxed) > 1 {
            usize::MAX
        } else {
            SIGNAL_BATCH
        };
        while self.serve_batch(vring, memory, mem, max) {}
    }

    /// Starts up to `max` available chains, submits them, completes what
    /// finished at once and signals the driver. Returns true if the batch
    /// was full (more chains may be waiting).
    fn serve_batch(
        &mut self,
        vring: &VringRwLock,
        memory: &GuestMemoryAtomic<GuestMemory>,
        mem: &mut Arc<GuestMemory>,
        max: usize,
    ) -> bool {
        let (mut used, full) = self.pop_batch(vring, memory, mem, max);
        used |= self.submit_and_reap(vring);
        if used {
            signal(vring);
        }
        full
    }

    /// Serves what is available with `mem` as the snapshot taken at the
    /// kick, as if the driver changed its memory table after it.
    #[cfg(test)]
    pub(super) fn serve_from_snapshot(
        &mut self,
        vring: &VringRwLock,
        memory: &GuestMemoryAtomic<GuestMemory>,
        mut mem: Arc<GuestMemory>,
    ) {
        self.serve_all(vring, memory, &mut mem);
    }

    /// Whether `poll` with this window would spin now: polling is on,
    /// requests have lately been completing at once (`inline_score`; on
    /// O_DIRECT or slow tiers a spin only takes the CPU from the driver and
    /// the other queues) and nothing is in flight.
    pub fn wants_poll(&self, window: Duration) -> bool {
        !window.is_zero() && self.inline_score > 0 && self.load.inflight() == 0
    }

    /// Busy-polls the virtqueue while `wants_poll` holds, until `window`
    /// passes without a new chain; then re-arms notifications (picking up
    /// what raced in) and returns. When requests complete at once
    /// (page-cache hits) this saves the driver's kick and this thread's
    /// wake-up per batch, as QEMU's adaptive polling does; requests waiting
    /// on a device end the poll.
    pub fn poll(
        &mut self,
        vring: &VringRwLock,
        memory: &GuestMemoryAtomic<GuestMemory>,
        event_idx: bool,
        window: Duration,
    ) {
        if !self.wants_poll(window) {
            return;
        }
        // Notifications stay as they are: with EVENT_IDX the driver is not
        // asked for a kick until the closing process_queue re-arms
        // avail_event; without it, VRING_USED_F_NO_NOTIFY would have to be
        // cleared again by hand, and a driver that is never told so hangs.
        let mut mem = memory.memory().into_inner();
        let mut last_work = Instant::now();
        loop {
            let before = self.activity;
            self.serve_all(vring, memory, &mut mem);
            if self.load.inflight() > 0 {
                // Waiting on the device (O_DIRECT, a slow tier): its
                // completion wakes us through the eventfd; spinning would
                // only take the CPU from the driver and other queues.
                break;
            }
            if self.activity != before {
                last_work = Instant::now();
            } else if last_work.elapsed() >= window {
                break;
            } else {
                std::hint::spin_loop();
            }
        }
        self.process_queue(vring, memory, event_idx);
    }

    /// Pops and starts up to `max` available chains; returns whether a
    /// chain was returned to the driver and whether more were available.
    /// `mem` is the guest memory the chains are read through; it is
    /// refreshed once they are seen published, before they are popped.
    fn pop_batch(
        &mut self,
        vring: &VringRwLock,
        memory: &GuestMemoryAtomic<GuestMemory>,
        mem: &mut Arc<GuestMemory>,
        max: usize,
    ) -> (bool, bool) {
        let mut used = false;
        // The avail ring is read through the latest memory table (a driver
        // that replaced its table must not be read through the old one).
        refresh(memory, mem);
        if !self.resubmit.is_empty() {
            used |= self.serve_resubmitted(vring, mem);
        }
        let (available, size) = {
            let mut guard = vring.get_mut();
            let queue = guard.get_queue_mut();
            match queue.avail_idx(&**mem, Ordering::Acquire) {
                Ok(avail) => (
                    avail.0.wrapping_sub(queue.next_avail()) as usize,
                    queue.size() as usize,
                ),
                Err(_) => (0, 0),
            }
        };
        self.avail_bad = available > size;
        if available == 0 || self.avail_bad {
            return (used, false);
        }
        // A driver adds a memory region (acknowledged) before it publishes
        // a chain that uses it, so a snapshot taken after the chains were
        // seen published has every region their descriptors, indirect
        // tables and buffers may use; the one taken at the kick may predate
        // them (the thread can be preempted between).
        refresh(memory, mem);
        let n = available.min(max);
        for _ in 0..n {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&**mem);
            let Some(chain) = chain else {
                // Published but unreadable (the avail ring runs off guest
                // memory): as broken as an index too far ahead.
                self.avail_bad = true;
                return (used, false);
            };
            self.activity = self.activity.wrapping_add(1);
            let head = chain.head_index();
            if let Some(t) = &mut self.tracker {
                t.taken(head);
            }
            used |= self.serve_chain(vring, mem, head, chain);
        }
        (used, available > n)
    }

    /// Parses and starts one chain; returns true if it completed at once.
    fn serve_chain(
        &mut self,
        vring: &VringRwLock,
        mem: &Arc<GuestMemory>,
        head: u16,
        chain: impl Iterator<Item = Descriptor>,
    ) -> bool {
        match request::parse(chain, &**mem, self.shared.limits, &mut self.bufs) {
            Err(r) => {
                debug!("queue: rejecting request {head}: {}", r.reason);
                self.answer(vring, mem, head, r.status, r.code, 0)
            }
            Ok(req) => self.start(vring, mem, head, req),
        }
    }

    /// Writes the status byte (if any) and returns the chain to the guest,
    /// through this queue's inflight tracking.
    fn answer(
        &mut self,
        vring: &VringRwLock,
        mem: &GuestMemory,
        head: u16,
        status: Option<GuestAddress>,
        code: u8,
        data_len: u32,
    ) -> bool {
        let mut len = 0;
        if let Some(addr) = status {
            if mem.write_obj(code, addr).is_ok() {
                len = data_len + 1;
            }
        }
        if let Some(t) = &self.tracker {
            t.publishing(head);
        }
        if let Err(e) = vring.add_used(head, len) {
            // A driver decides the head (one beyond the queue size cannot be
            // returned): a hostile one must not fill the log.
            if let Some(n) = count_for_log(&ADD_USED_ERRORS) {
                warn!("queue: add_used({head}): {e} ({n} such errors so far)");
            } else {
                debug!("queue: add_used({head}): {e}");
            }
            return false;
        }
        if let Some(t) = &mut self.tracker {
            t.published(head);
        }
        true
    }

    /// Hands this queue the front-end's inflight region (None: it gave
    /// none, or the connection ended).
    pub fn set_inflight(&mut self, tracker: Option<QueueInflight>) {
        self.tracker = tracker;
        self.resubmit.clear();
    }

    /// The queue starts: with an inflight region that was in use, the
    /// chains the previous back-end took and never returned are served
    /// again first, and the avail ring goes on after the last chain taken.
    /// Returns how many chains are served again.
    pub fn recover(&mut self, vring: &VringRwLock) -> usize {
        let Some(t) = &mut self.tracker else {
            return 0;
        };
        let used = match vring.queue_used_idx() {
            Ok(u) => u,
            Err(e) => {
                warn!("queue: reading the used index to recover requests in flight: {e}");
                return 0;
            }
        };
        let r = t.recover(used);
        debug!("queue: start with used index {used}: {r:?}");
        let Some(r) = r else {
            return 0;
        };
        vring.set_queue_next_avail(r.next_avail);
        self.resubmit = r.resubmit;
        self.resubmit.len()
    }

    /// Serves the chains left in flight by the previous back-end, in the
    /// order it took them (they stay marked taken until used).
    fn serve_resubmitted(&mut self, vring: &VringRwLock, mem: &Arc<GuestMemory>) -> bool {
        let heads = std::mem::take(&mut self.resubmit);
        let (desc_table, size) = {
            let g = vring.get_ref();
            (g.get_queue().desc_table(), g.get_queue().size())
        };
        let mut chains = Vec::with_capacity(heads.len());
        if let Err(e) = inflight::chains_of(mem, desc_table, size, &heads, |h, c| {
            chains.push((h, c.collect::<Vec<_>>()));
        }) {
            warn!(
                "queue: {e}; {} requests in flight before the restart are not served again",
                heads.len() - chains.len()
            );
        }
        let mut used = false;
        for (head, descs) in chains {
            self.activity = self.activity.wrapping_add(1);
            used |= self.serve_chain(vring, mem, head, descs.into_iter());
        }
        used
    }

    /// Starts a request; returns true if it completed at once.
    fn start(
        &mut self,
        vring: &VringRwLock,
        mem: &Arc<GuestMemory>,
        head: u16,
        req: Request,
    ) -> bool {
        let ok = VIRTIO_BLK_S_OK as u8;
        let err = VIRTIO_BLK_S_IOERR as u8;
        // Borrowed, not cloned: an Arc clone per request would bounce its
        // reference count between the queue threads.
        let volume = &self.shared.volume;
        match req.kind {
            Kind::Read | Kind::Write | Kind::Flush => {}
            Kind::GetId => {
                let id = volume.metadata().serial().as_bytes();
                let mut field = [0u8; VIRTIO_BLK_ID_BYTES];
                field[..id.len()].copy_from_slice(id);
                let n = write_stream(mem, &self.bufs.data, &field);
                let st = if n.is_some() { ok } else { err };
                return self.answer(vring, mem, head, Some(req.status), st, n.unwrap_or(0));
            }
            Kind::Discard | Kind::WriteZeroes => {
                let limits = self.shared.limits;
                let st = match request::zero_segments(
                    &**mem,
                    req.kind,
                    &self.bufs.data,
                    limits,
                    &mut self.zero_segs,
                ) {
                    Err(r) => {
                        debug!("queue: rejecting request {head}: {}", r.reason);
                        r.code
                    }
                    Ok(()) => {
                        let r = self
                            .zero_segs
                            .iter()
                            .try_for_each(|z| volume.zero_range(z.offset, z.len, z.unmap));
                        match r {
                            Ok(()) => ok,
                            Err(e) => {
                                warn!("{e}");
                                err
                            }
                        }
                    }
                };
                return self.answer(vring, mem, head, Some(req.status), st, 0);
            }
        }
        let Some(idx) = self.free.pop() else {
            // More chains in flight than slots: only a misbehaving driver
            // reuses heads like that.
            debug!("queue: request {head}: more chains in flight than the queue size");
            return self.answer(vring, mem, head, Some(req.status), err, 0);
        };
        let slot = &mut self.slots[idx as usize];
        slot.head = head;
        slot.status = req.status;
        slot.kind = req.kind;
        slot.pending = 0;
        slot.done = 0;
        slot.failed = false;
        slot.expect = 0;
        // Every request is timed (two clock reads): the latency the
        // mover yields to, and the emulated tier delay.
        slot.started = Instant::now();
        slot.used_len = if req.kind == Kind::Read {
            req.data_len as u32 + 1
        } else {
            1
        };
        slot.ticket = None;
        slot.committing = false;
        slot.host.clear();
        slot.op_iov.clear();
        slot.segs.clear();
        if req.kind == Kind::Flush {
            slot.mem = Some(mem.clone());
            self.load.start();
            self.submit_sync(idx);
            if self.slots[idx as usize].pending == 0 {
                return self.finish(vring, idx);
            }
            return false;
        }
        if !host_iovecs(mem, &self.bufs.data, &mut slot.host) {
            debug!("queue: request {head}: data buffer outside guest memory");
            self.free.push(idx);
            return self.answer(vring, mem, head, Some(req.status), err, 0);
        }
        let sequential = req.offset == self.last_end;
        self.last_end = req.offset + req.data_len;
        volume.record_access(
            req.kind == Kind::Write,
            req.offset,
            req.data_len,
            sequential,
        );
        let mapped = if req.kind == Kind::Read {
            volume.map_read(req.offset, req.data_len, &mut slot.segs)
        } else {
            volume.map_write(req.offset, req.data_len, &mut slot.segs)
        };
        if let Err(e) = mapped {
            warn!("{e}");
            self.free.push(idx);
            return self.answer(vring, mem, head, Some(req.status), err, 0);
        }
        volume.count_served(req.kind == Kind::Write, &slot.segs);
        slot.mem = Some(mem.clone());
        self.load.start();
        self.submit_segments(idx);
        if self.slots[idx as usize].pending == 0 {
            // Nothing to wait for (a read of holes only).
            return self.finish(vring, idx);
        }
        false
    }

    /// Queues one readv/writev per extent segment; fills holes with zeros.
    fn submit_segments(&mut self, idx: u16) {
        let volume = &self.shared.volume;
        let slot = &mut self.slots[idx as usize];
        let write = slot.kind == Kind::Write;
        // Upper bound of per-op iovecs: every chunk boundary splits at most
        // one host iovec.
        let need = slot.host.len() + slot.segs.len();
        if slot.op_iov.capacity() < need {
            slot.op_iov.reserve(need);
        }
        let mut pos = 0u64;
        for si in 0..slot.segs.len() {
            let seg = slot.segs[si];
            let start = slot.op_iov.len();
            cut_iovecs(&slot.host, pos, seg.len as u64, &mut slot.op_iov);
            pos += seg.len as u64;
            match seg.target {
                Target::Zeros => {
                    for v in slot.op_iov.drain(start..) {
                        // SAFETY: `v` was produced by `host_iovecs` from a
                        // bounds-checked slice of guest memory, which
                        // `slot.mem` keeps mapped; the guest may race on
                        // these bytes, which is its own business.
                        unsafe { std::ptr::write_bytes(v.iov_base as *mut u8, 0, v.iov_len) };
                    }
                }
                Target::Extent { tier, offset } => {
                    let Some(t) = volume.tiers().get(tier) else {
                        slot.failed = true;
                        continue;
                    };
                    let op = if write { Op::Write } else { Op::Read };
                    let mut end = slot.op_iov.len();
                    match t.fault_hit(op) {
                        None => {}
                        Some(FaultKind::Eio) => {
                            log_io_error(volume, write, libc::EIO);
                            slot.failed = true;
                            continue;
                        }
                        // Half of the first buffer only: the transfer
                        // comes back short and the request fails.
                        Some(FaultKind::Short) => {
                            slot.op_iov[start].iov_len /= 2;
                            end = start + 1;
                        }
                    }
                    let iov = &slot.op_iov[start..end];
                    let direct = t.has_direct_io()
                        && offset % DIRECT_ALIGN == 0
                        && iov.iter().all(|v| {
                            (v.iov_base as u64).is_multiple_of(DIRECT_ALIGN)
                                && (v.iov_len as u64).is_multiple_of(DIRECT_ALIGN)
                        });
                    let fd = types::Fd(t.fd(direct));
                    let offset = t.device_offset(offset);
                    let sqe = match (iov, write) {
                        // One buffer (the common 4k request): plain
                        // read/write, which spares the kernel copying and
                        // checking an iovec array.
                        ([v], true) => {
                            opcode::Write::new(fd, v.iov_base as *const u8, v.iov_len as u32)
                                .offset(offset)
                                .build()
                        }
                        ([v], false) => {
                            opcode::Read::new(fd, v.iov_base as *mut u8, v.iov_len as u32)
                                .offset(offset)
                                .build()
                        }
                        (_, true) => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                            .offset(offset)
                            .build(),
                        (_, false) => opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                            .offset(offset)
                            .build(),
                    };
                    slot.expect += seg.len as u64;
                    slot.pending += 1;
                    push(&mut self.ring, &sqe.user_data(idx as u64));
                }
            }
        }
    }

    /// Starts syncing the tier devices the volume wrote to since their last
    /// sync: the chunk-map changes made so far are committed once the syncs
    /// complete.
    fn submit_sync(&mut self, idx: u16) {
        let volume = &self.shared.volume;
        let slot = &mut self.slots[idx as usize];
        slot.ticket = Some(volume.flush_ticket());
        slot.expect = 0;
        slot.done = 0;
        // Written data is marked at completion (this request's own data, in
        // write-through mode, just now), so every write completed before
        // this point is in the mask.
        volume.note_written(&slot.segs);
        slot.synced = volume.take_unsynced();
        for t in volume.tiers_in(slot.synced) {
            if t.fault_hit(Op::Sync).is_some() {
                slot.failed = true;
                continue;
            }
            let sqe = opcode::Fsync::new(types::Fd(t.fd(false)))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(idx as u64);
            slot.pending += 1;
            push(&mut self.ring, &sqe);
        }
    }

    /// Handles the completion eventfd: reaps every CQE.
    pub fn process_completions(&mut self, vring: &VringRwLock) {
        let _ = self.completion.read();
        let (n, mut used) = self.reap(vring);
        while let Some((idx, ok)) = self.replies.pop() {
            used |= self.committed(vring, idx, ok);
        }
        self.inline_score = (self.inline_score - n as i32).max(-INLINE_SCORE_MAX);
        used |= self.submit_and_reap(vring);
        if used {
            signal(vring);
        }
    }

    /// Submits the queued entries and handles what completed meanwhile
    /// (page-cache hits complete inside the submit) until nothing is left.
    /// While this thread is reaping anyway, the ring does not signal its
    /// eventfd, which saves the signal and a later empty epoll round.
    /// Returns true if a chain was returned to the guest.
    fn submit_and_reap(&mut self, vring: &VringRwLock) -> bool {
        let mut used = false;
        loop {
            self.ring.completion().disable_eventfd();
            loop {
                let failed = if self.ring.submission().is_empty() {
                    None
                } else {
                    self.ring.submit().err()
                };
                let (n, u) = self.reap(vring);
                used |= u;
                self.inline_score = (self.inline_score + n as i32).min(INLINE_SCORE_MAX);
                if let Some(e) = failed {
                    warn!("io_uring submit: {e}");
                    break;
                }
                if n == 0 {
                    break;
                }
            }
            self.ring.completion().enable_eventfd();
            // A completion posted between the last reap and re-enabling
            // signalled nobody: look once more after the flag is visible.
            fence(Ordering::SeqCst);
            if self.ring.completion().is_empty() {
                return used;
            }
        }
    }

    /// Handles every completion in the ring; returns how many there were
    /// and whether a chain was returned to the guest.
    fn reap(&mut self, vring: &VringRwLock) -> (usize, bool) {
        let mut used = false;
        let mut total = 0;
        let mut batch = [(0u64, 0i32); CQE_BATCH];
        loop {
            let mut n = 0;
            for cqe in self.ring.completion() {
                batch[n] = (cqe.user_data(), cqe.result());
                n += 1;
                if n == CQE_BATCH {
                    break;
                }
            }
            if n == 0 {
                return (total, used);
            }
            total += n;
            self.activity = self.activity.wrapping_add(n as u64);
            for &(data, res) in &batch[..n] {
                used |= self.on_cqe(vring, data, res);
            }
        }
    }

    fn on_cqe(&mut self, vring: &VringRwLock, data: u64, res: i32) -> bool {
        let idx = (data & SLOT_MASK) as u16;
        if idx as usize >= self.slots.len() {
            return false;
        }
        if data & TIMER_FLAG != 0 {
            return self.complete(vring, idx);
        }
        let slot = &mut self.slots[idx as usize];
        if res < 0 {
            log_io_error(&self.shared.volume, slot.kind == Kind::Write, -res);
            slot.failed = true;
        } else {
            slot.done += res as u64;
        }
        slot.pending -= 1;
        if slot.pending == 0 {
            return self.finish(vring, idx);
        }
        false
    }

    /// All data operations of a request are done: apply emulated tier
    /// speed and write-through, then complete. Returns true if completed.
    fn finish(&mut self, vring: &VringRwLock, idx: u16) -> bool {
        let slot = &mut self.slots[idx as usize];
        if slot.done != slot.expect {
            // A device giving short transfers gives them for every request.
            if let Some(n) = count_for_log(&IO_ERRORS) {
                warn!(
                    "volume '{}': request {}: {} of {} bytes transferred ({n} I/O errors so far)",
                    self.shared.volume.name(),
                    slot.head,
                    slot.done,
                    slot.expect
                );
            }
            slot.failed = true;
        }
        let write = slot.kind == Kind::Write;
        if let Some(ticket) = slot.ticket.take() {
            if !slot.failed {
                // The store commit runs on the committer thread; its answer
                // comes back through `replies` and the completion eventfd.
                if committer::submit(&self.shared.volume, ticket, &self.replies, idx) {
                    slot.committing = true;
                    return false;
                }
                if let Err(e) = self.shared.volume.commit(ticket) {
                    warn!("{e}");
                    slot.failed = true;
                }
            } else {
                self.shared.volume.restore_unsynced(slot.synced);
            }
        } else if (slot.kind == Kind::Flush
            || (write && !self.shared.writeback.load(Ordering::Relaxed)))
            && !slot.failed
        {
            // Write-through: make this write durable before completing it.
            self.submit_sync(idx);
            if self.slots[idx as usize].pending > 0 {
                return false;
            }
            return self.finish(vring, idx);
        }
        self.finish_request(vring, idx)
    }

    /// The committer's answer for a slot's FLUSH (or write-through write).
    fn committed(&mut self, vring: &VringRwLock, idx: u16, ok: bool) -> bool {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return false;
        };
        if !slot.committing {
            return false;
        }
        slot.committing = false;
        slot.failed |= !ok;
        self.finish_request(vring, idx)
    }

    /// Completes a request whose I/O (and commit) is done, after the
    /// emulated tier delay if there is one.
    fn finish_request(&mut self, vring: &VringRwLock, idx: u16) -> bool {
        let slot = &mut self.slots[idx as usize];
        let write = slot.kind == Kind::Write;
        let delay = if self.timed && !slot.failed {
            emulated_delay(&self.shared.volume, &slot.segs, write, slot.started)
        } else {
            Duration::ZERO
        };
        if delay > Duration::ZERO {
            slot.timer = types::Timespec::new()
                .sec(delay.as_secs())
                .nsec(delay.subsec_nanos());
            let sqe = opcode::Timeout::new(&slot.timer as *const _)
                .build()
                .user_data(idx as u64 | TIMER_FLAG);
            push(&mut self.ring, &sqe);
            return false;
        }
        self.complete(vring, idx)
    }

    fn complete(&mut self, vring: &VringRwLock, idx: u16) -> bool {
        let slot = &mut self.slots[idx as usize];
        release_pins(&self.shared.volume, slot.kind, &slot.segs);
        slot.segs.clear();
        let Some(mem) = slot.mem.take() else {
            return false;
        };
        let (st, len) = if slot.failed {
            (VIRTIO_BLK_S_IOERR as u8, 0)
        } else {
            (VIRTIO_BLK_S_OK as u8, slot.used_len - 1)
        };
        let head = slot.head;
        let status = slot.status;
        let latency = slot.started.elapsed();
        self.free.push(idx);
        self.load.finish(latency);
        self.answer(vring, &mem, head, Some(status), st, len)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The kernel may still write into guest memory for requests in
        // flight: wait for them before the mappings they hold are dropped.
        // A FLUSH waiting for the committer has no I/O in flight: its
        // answer goes to `replies`, which outlives this worker.
        for slot in self.slots.iter_mut().filter(|s| s.committing) {
            release_pins(&self.shared.volume, slot.kind, &slot.segs);
            slot.segs.clear();
            slot.mem = None;
            slot.committing = false;
        }
        let mut waited = 0;
        while self.slots.iter().any(|s| s.mem.is_some()) && waited < 10_000 {
            let _ = self.ring.submit_and_wait(1);
            let mut done = Vec::new();
            for cqe in self.ring.completion() {
                done.push(cqe.user_data());
            }
            for d in done {
                let slot = &mut self.slots[(d & SLOT_MASK) as usize];
                if d & TIMER_FLAG == 0 && slot.pending > 0 {
                    slot.pending -= 1;
                }
                if slot.pending == 0 || d & TIMER_FLAG != 0 {
                    release_pins(&self.shared.volume, slot.kind, &slot.segs);
                    slot.segs.clear();
                    slot.mem = None;
                }
            }
            waited += 1;
        }
    }
}

/// Drops the chunk pins of a request's segments, by its direction: only
/// written segments count as writes to a chunk being migrated (which the
/// mover then copies again).
fn release_pins(volume: &Volume, kind: Kind, segs: &[Segment]) {
    if kind == Kind::Write {
        volume.release_written(segs);
    } else {
        volume.release(segs);
    }
}

/// Pushes an SQE, flushing the submission queue to the kernel when full.
fn push(ring: &mut IoUring, sqe: &squeue::Entry) {
    loop {
        // SAFETY: every buffer the entry points to (iovec arrays, guest
        // memory, timespec) lives in a slot that stays untouched, with its
        // guest-memory mapping held, until the entry's completion is reaped.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            warn!("io_uring submit: {e}");
            std::thread::yield_now();
        }
    }
}

/// Points `mem` at the current guest memory table.
fn refresh(memory: &GuestMemoryAtomic<GuestMemory>, mem: &mut Arc<GuestMemory>) {
    let now = memory.memory();
    if !std::ptr::eq(&*now, &**mem) {
        *mem = now.into_inner();
    }
}

/// Extra completion delay from the emulated speed of the tiers involved.
fn emulated_delay(volume: &Volume, segs: &[Segment], write: bool, started: Instant) -> Duration {
    let elapsed = started.elapsed();
    let mut delay = Duration::ZERO;
    for s in segs {
        if let Target::Extent { tier, .. } = s.target {
            if let Some(e) = volume.tiers().get(tier).and_then(|t| t.emulator()) {
                delay = delay.max(e.delay(write, s.len as u64, elapsed));
            }
        }
    }
    delay
}

/// Counts one more error in `counter`; returns the count when it should be
/// logged: at the 1st, 2nd, 4th, 8th … occurrence, so an error that repeats
/// per request leaves a few lines with its growing count.
fn count_for_log(counter: &AtomicU64) -> Option<u64> {
    let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
    n.is_power_of_two().then_some(n)
}

/// Logs a failed tier read or write; a failing tier device fails every
/// request, so only the 1st, 2nd, 4th … are logged, with the count.
fn log_io_error(volume: &Volume, write: bool, errno: i32) {
    if let Some(n) = count_for_log(&IO_ERRORS) {
        warn!(
            "volume '{}': {} failed: {} ({n} I/O errors so far)",
            volume.name(),
            if write { "write" } else { "read" },
            std::io::Error::from_raw_os_error(errno)
        );
    }
}

/// Chains that could not be returned to their driver, over all queues.
static ADD_USED_ERRORS: AtomicU64 = AtomicU64::new(0);
/// Failed tier reads and writes, over all queues and volumes.
static IO_ERRORS: AtomicU64 = AtomicU64::new(0);

fn signal(vring: &VringRwLock) {
    match vring.needs_notification() {
        Ok(true) | Err(_) => {
            if let Err(e) = vring.signal_used_queue() {
                warn!("queue: signal: {e}");
            }
        }
        Ok(false) => {}
    }
}

/// Translates guest buffers to host iovecs; false if any byte lies outside
/// guest memory.
fn host_iovecs(mem: &GuestMemory, bufs: &[GuestBuf], out: &mut Vec<libc::iovec>) -> bool {
    for &(addr, len) in bufs {
        for s in mem.get_slices(GuestAddress(addr), len as usize) {
            let Ok(s) = s else {
                return false;
            };
            out.push(libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
    }
    true
}

/// Appends the iovecs covering bytes [skip, skip+take) of `src`.
fn cut_iovecs(src: &[libc::iovec], mut skip: u64, mut take: u64, out: &mut Vec<libc::iovec>) {
    for v in src {
        if take == 0 {
            break;
        }
        let len = v.iov_len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(take);
        out.push(libc::iovec {
            iov_base: (v.iov_base as usize + skip as usize) as *mut libc::c_void,
            iov_len: n as usize,
        });
        take -= n;
        skip = 0;
    }
}

/// Writes `data` to the start of the guest byte stream `bufs`; returns the
/// bytes written, None if the stream lies outside guest memory.
fn write_stream(mem: &GuestMemory, bufs: &[GuestBuf], data: &[u8]) -> Option<u32> {
    let mut pos = 0;
    for &(addr, len) in bufs {
        if pos == data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - pos);
        mem.write_slice(&data[pos..pos + n], GuestAddress(addr))
            .ok()?;
        pos += n;
    }
    Some(pos as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_iovecs_splits_at_byte_offsets() {
        let base = [0u8; 64];
        let p = base.as_ptr() as usize;
        let src = [
            libc::iovec {
                iov_base: p as *mut _,
                iov_len: 10,
            },
            libc::iovec {
                iov_base: (p + 32) as *mut _,
                iov_len: 20,
            },
        ];
        let mut out = Vec::new();
        cut_iovecs(&src, 5, 10, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].iov_base as usize - p, out[0].iov_len), (5, 5));
        assert_eq!((out[1].iov_base as usize - p, out[1].iov_len), (32, 5));
        assert_eq!(iovec_bytes(&out), 10);
    }
}
