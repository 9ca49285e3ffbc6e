//! vhost-user inflight tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD),
//! split rings only, in the layout QEMU's libvhost-user uses, so that QEMU
//! hands the same region back after this daemon dies and no request is
//! lost or completed twice.
//!
//! Without it, a front-end that lost its back-end restarts each ring from
//! the used index: with requests completed out of order, chains already
//! completed are served again and a pending one is never served (its
//! guest waits forever). With it, the back-end marks every chain it takes
//! from the avail ring in a shared memory region and clears the mark once
//! the chain is in the used ring; after a restart it serves the marked
//! chains again, in the order it took them, and goes on with the avail ring
//! after the last chain taken.
//!
//! Layout of the region: one part per queue, each
//! `align_up(16 * queue_size + 2, 64)` bytes, starting with a 16-byte
//! header {features u64, version u16, desc_num u16, last_batch_head u16,
//! used_idx u16} followed by `queue_size` 16-byte descriptor states
//! {inflight u8, padding [u8; 5], next u16, counter u64}, all little
//! endian. `used_idx` is the used index this back-end last published and
//! `last_batch_head` the head it was publishing then: a used index in the
//! guest's ring ahead of `used_idx` means the back-end died between
//! publishing that head and clearing its mark.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd},
    ptr::NonNull,
    sync::{
        atomic::{fence, Ordering},
        Arc,
    },
};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

use super::worker::GuestMemory;

/// Bytes of a queue's header.
const HEADER: usize = 16;
/// Bytes of one descriptor's state.
const DESC: usize = 16;
/// Every queue's part starts at a multiple of this.
const ALIGN: u64 = 64;
/// The header's `version` once the region is in use.
const VERSION: u16 = 1;

// Offsets in the header.
const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
// Offsets in a descriptor state.
const OFF_INFLIGHT: usize = 0;
const OFF_COUNTER: usize = 8;

/// Bytes of one queue's part for `queue_size` descriptors.
pub fn queue_bytes(queue_size: u16) -> u64 {
    (DESC as u64 * queue_size as u64 + 2).div_ceil(ALIGN) * ALIGN
}

/// A shared mapping of an inflight region.
#[derive(Debug)]
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// `QueueInflight`, which one queue thread owns at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above; the mapping itself is never mutated after creation.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` came from a successful mmap that nothing
        // else unmaps.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// The inflight region of one connection, as the front-end handed it over
/// (SET_INFLIGHT_FD).
#[derive(Debug)]
pub struct Region {
    map: Arc<Mapping>,
    num_queues: u16,
    queue_size: u16,
}

impl Region {
    /// Creates a zeroed region for `num_queues` queues of `queue_size`
    /// (GET_INFLIGHT_FD): the memfd to send and its size.
    pub fn create(num_queues: u16, queue_size: u16) -> io::Result<(File, u64)> {
        if num_queues == 0 || queue_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("inflight region for {num_queues} queues of {queue_size} descriptors"),
            ));
        }
        let size = queue_bytes(queue_size) * num_queues as u64;
        // SAFETY: a NUL-terminated name and valid flags; the result is
        // checked before use.
        let fd = unsafe { libc::memfd_create(c"tierblk-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        // A new memfd reads as zeros: every descriptor not in flight and
        // version 0 (unused).
        file.set_len(size)?;
        Ok((file, size))
    }

    /// Maps `size` bytes at `offset` of `file` for `num_queues` queues of
    /// `queue_size` descriptors (SET_INFLIGHT_FD), checking that they fit.
    pub fn map(
        file: &File,
        size: u64,
        offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> io::Result<Self> {
        let need = queue_bytes(queue_size) * num_queues as u64;
        let len = file.metadata()?.len();
        if num_queues == 0
            || queue_size == 0
            || size < need
            || offset.checked_add(size).is_none_or(|end| end > len)
            || !offset.is_multiple_of(page_size())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "inflight region of {size} bytes at offset {offset} in a file of {len} for {num_queues} queues of {queue_size} descriptors ({need} bytes needed)"
                ),
            ));
        }
        let len = usize::try_from(size).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of a range checked to lie inside
        // the file; the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = Arc::new(Mapping {
            addr: NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap gave NULL"))?,
            len,
        });
        Ok(Self {
            map,
            num_queues,
            queue_size,
        })
    }

    /// The part of queue `index`, if the region has one.
    pub fn queue(&self, index: usize) -> Option<QueueInflight> {
        if index >= self.num_queues as usize {
            return None;
        }
        let off = index * queue_bytes(self.queue_size) as usize;
        let q = QueueInflight {
            // SAFETY: `off` plus the queue's part lies inside the mapping
            // (checked in `map`).
            base: unsafe { self.map.addr.add(off) },
            desc_num: self.queue_size,
            counter: 0,
            used_idx: 0,
            _map: self.map.clone(),
        };
        q.store_u16(OFF_DESC_NUM, self.queue_size);
        Some(q)
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// One queue's inflight state: marks chains taken and clears them once
/// used. Owned by the queue's worker; a few stores per request, no lock.
#[derive(Debug)]
pub struct QueueInflight {
    base: NonNull<u8>,
    desc_num: u16,
    /// Order in which chains were taken (libvhost-user's `counter`).
    counter: u64,
    /// The used index as this back-end last published it (set when the
    /// queue starts, then counted; the vring is not read per request).
    used_idx: u16,
    _map: Arc<Mapping>,
}

// SAFETY: the pointer is into a shared mapping kept alive by `_map`; one
// thread at a time owns a `QueueInflight` (the worker, behind its mutex).
unsafe impl Send for QueueInflight {}

/// What a restarted queue has to do (see `QueueInflight::recover`).
#[derive(Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Chains taken and never used, in the order they were taken.
    pub resubmit: Vec<u16>,
    /// Where the avail ring goes on: the next chain never taken.
    pub next_avail: u16,
}

impl QueueInflight {
    fn at(&self, off: usize) -> *mut u8 {
        // SAFETY: callers pass offsets inside the queue's part (header, or
        // a descriptor index checked against `desc_num`).
        unsafe { self.base.as_ptr().add(off) }
    }

    fn load_u16(&self, off: usize) -> u16 {
        // SAFETY: in the mapping (see `at`); volatile because the memory
        // is shared with the front-end.
        u16::from_le(unsafe { self.at(off).cast::<u16>().read_volatile() })
    }

    fn store_u16(&self, off: usize, v: u16) {
        // SAFETY: as in `load_u16`; offsets are 2-aligned in a page-aligned
        // mapping.
        unsafe { self.at(off).cast::<u16>().write_volatile(v.to_le()) }
    }

    fn desc(&self, head: u16) -> Option<usize> {
        (head < self.desc_num).then(|| HEADER + head as usize * DESC)
    }

    fn set_inflight(&self, d: usize, v: u8) {
        // SAFETY: `d` is a checked descriptor offset.
        unsafe { self.at(d + OFF_INFLIGHT).write_volatile(v) }
    }

    fn inflight(&self, d: usize) -> bool {
        // SAFETY: `d` is a checked descriptor offset.
        unsafe { self.at(d + OFF_INFLIGHT).read_volatile() == 1 }
    }

    fn counter_of(&self, d: usize) -> u64 {
        // SAFETY: `d` is a checked descriptor offset; 8-aligned.
        u64::from_le(unsafe { self.at(d + OFF_COUNTER).cast::<u64>().read_volatile() })
    }

    /// A chain was taken from the avail ring.
    pub fn taken(&mut self, head: u16) {
        let Some(d) = self.desc(head) else {
            return;
        };
        // SAFETY: `d` is a checked descriptor offset; 8-aligned.
        unsafe {
            self.at(d + OFF_COUNTER)
                .cast::<u64>()
                .write_volatile(self.counter.to_le())
        };
        self.counter += 1;
        fence(Ordering::Release);
        self.set_inflight(d, 1);
    }

    /// `head` is about to be published in the used ring.
    pub fn publishing(&self, head: u16) {
        if head < self.desc_num {
            self.store_u16(OFF_LAST_BATCH_HEAD, head);
            fence(Ordering::Release);
        }
    }

    /// `head` was published: the used index moved on by one.
    pub fn published(&mut self, head: u16) {
        self.used_idx = self.used_idx.wrapping_add(1);
        let Some(d) = self.desc(head) else {
            return;
        };
        fence(Ordering::Release);
        self.set_inflight(d, 0);
        fence(Ordering::Release);
        self.store_u16(OFF_USED_IDX, self.used_idx);
    }

    /// Called when the queue starts, with the used index in the guest's
    /// ring. A region never used is initialised (nothing to do); otherwise
    /// returns the chains to serve again and where the avail ring goes on.
    pub fn recover(&mut self, used_idx: u16) -> Option<Recovery> {
        self.used_idx = used_idx;
        if self.load_u16(OFF_VERSION) == 0 {
            self.store_u16(OFF_VERSION, VERSION);
            self.store_u16(OFF_USED_IDX, used_idx);
            return None;
        }
        if self.load_u16(OFF_USED_IDX) != used_idx {
            // Died after publishing the last head but before clearing it.
            if let Some(d) = self.desc(self.load_u16(OFF_LAST_BATCH_HEAD)) {
                self.set_inflight(d, 0);
            }
            fence(Ordering::Release);
            self.store_u16(OFF_USED_IDX, used_idx);
        }
        let mut taken: Vec<(u64, u16)> = (0..self.desc_num)
            .filter_map(|h| {
                let d = self.desc(h)?;
                self.inflight(d).then(|| (self.counter_of(d), h))
            })
            .collect();
        taken.sort_unstable();
        self.counter = taken.last().map_or(0, |&(c, _)| c + 1);
        Some(Recovery {
            next_avail: used_idx.wrapping_add(taken.len() as u16),
            resubmit: taken.into_iter().map(|(_, h)| h).collect(),
        })
    }
}

/// Calls `f` with the descriptor chain of each of `heads` (in order), read
/// from the queue's descriptor table at `desc_table` in `mem`.
///
/// virtio-queue builds chains only from avail-ring entries, and the avail
/// ring slots of chains in flight may since have been reused by the driver.
/// So the heads are put in a private avail ring, in a private region mapped
/// just above guest memory, and popped from there: the chains are walked by
/// virtio-queue itself (bounds, indirect tables, loops), through guest
/// memory plus that region. Requests are then parsed against guest memory
/// alone, so a descriptor pointing into the private region is refused like
/// any address outside guest memory.
pub fn chains_of(
    mem: &GuestMemory,
    desc_table: u64,
    queue_size: u16,
    heads: &[u16],
    mut f: impl FnMut(u16, DescriptorChain<&GuestMemory>),
) -> io::Result<()> {
    let heads: Vec<u16> = heads.iter().copied().filter(|&h| h < queue_size).collect();
    if heads.is_empty() {
        return Ok(());
    }
    let n = queue_size as u64;
    let avail_bytes = (4 + 2 * n + 2).next_multiple_of(4);
    let used_bytes = 4 + 8 * n + 2;
    let page = page_size();
    let len = (avail_bytes + used_bytes).next_multiple_of(page);
    let base = mem
        .iter()
        .map(|r| r.last_addr().0)
        .max()
        .and_then(|last| last.checked_add(1))
        .and_then(|a| a.checked_next_multiple_of(page))
        .filter(|a| a.checked_add(len).is_some())
        .ok_or_else(|| io::Error::other("no guest-physical room above guest memory"))?;
    let region = MmapRegion::new(len as usize).map_err(io::Error::other)?;
    let region = GuestRegionMmap::new(region, GuestAddress(base))
        .ok_or_else(|| io::Error::other("private avail ring region"))?;
    let all = mem
        .insert_region(Arc::new(region))
        .map_err(io::Error::other)?;
    let avail = GuestAddress(base);
    let used = GuestAddress(base + avail_bytes);
    for (i, &h) in heads.iter().enumerate() {
        all.write_obj(h.to_le(), avail.unchecked_add(4 + 2 * i as u64))
            .map_err(io::Error::other)?;
    }
    all.write_obj((heads.len() as u16).to_le(), avail.unchecked_add(2))
        .map_err(io::Error::other)?;
    let mut q = Queue::new(queue_size).map_err(|e| io::Error::other(format!("{e:?}")))?;
    q.set_size(queue_size);
    q.try_set_desc_table_address(GuestAddress(desc_table))
        .and_then(|()| q.try_set_avail_ring_address(avail))
        .and_then(|()| q.try_set_used_ring_address(used))
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    q.set_ready(true);
    for &h in &heads {
        let chain = q
            .pop_descriptor_chain(&all)
            .ok_or_else(|| io::Error::other(format!("chain of head {h} unreadable")))?;
        f(h, chain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(queues: u16, size: u16) -> (File, Region) {
        let (f, len) = Region::create(queues, size).unwrap();
        let r = Region::map(&f, len, 0, queues, size).unwrap();
        (f, r)
    }

    #[test]
    fn queue_parts_follow_libvhost_user_sizes() {
        assert_eq!(queue_bytes(128), 2112);
        assert_eq!(queue_bytes(256), 4160);
        assert_eq!(queue_bytes(1), 64);
        // The header and every descriptor fit the part.
        for n in 1..=1024u16 {
            assert!(queue_bytes(n) >= (HEADER + DESC * n as usize) as u64, "{n}");
        }
    }

    #[test]
    fn a_fresh_region_has_nothing_to_recover() {
        let (_f, r) = region(2, 8);
        let mut q = r.queue(1).unwrap();
        assert_eq!(q.recover(5), None);
        // Once in use, a clean stop leaves nothing to do either.
        q.taken(3);
        q.publishing(3);
        q.published(3);
        assert_eq!(
            q.recover(6),
            Some(Recovery {
                resubmit: vec![],
                next_avail: 6
            })
        );
        assert!(r.queue(2).is_none());
    }

    #[test]
    fn out_of_order_completions_resubmit_only_the_pending_in_taken_order() {
        let (f, r) = region(1, 8);
        let mut q = r.queue(0).unwrap();
        assert_eq!(q.recover(0), None);
        // Taken in this order; 2 and 7 complete, 5, 0 and 4 do not.
        for h in [5, 2, 0, 7, 4] {
            q.taken(h);
        }
        for h in [2, 7] {
            q.publishing(h);
            q.published(h);
        }
        drop(q);
        drop(r);
        // A new daemon maps the same memfd (QEMU kept it).
        let len = f.metadata().unwrap().len();
        let r = Region::map(&f, len, 0, 1, 8).unwrap();
        let mut q = r.queue(0).unwrap();
        let rec = q.recover(2).unwrap();
        assert_eq!(rec.resubmit, vec![5, 0, 4]);
        assert_eq!(rec.next_avail, 5, "used 2 + 3 in flight");
        // New chains are ordered after the resubmitted ones.
        q.taken(6);
        let d = q.desc(6).unwrap();
        assert!(q.counter_of(d) > q.counter_of(q.desc(4).unwrap()));
    }

    #[test]
    fn a_death_between_publishing_and_clearing_does_not_resubmit_that_head() {
        let (_f, r) = region(1, 4);
        let mut q = r.queue(0).unwrap();
        q.recover(0);
        q.taken(1);
        q.taken(2);
        q.publishing(2);
        // The used ring now says 1, but the daemon died before `published`.
        let rec = q.recover(1).unwrap();
        assert_eq!(rec.resubmit, vec![1]);
        assert_eq!(rec.next_avail, 2);
    }

    #[test]
    fn heads_beyond_the_region_and_bad_sizes_are_refused_without_panic() {
        let (f, r) = region(1, 4);
        let mut q = r.queue(0).unwrap();
        q.recover(0);
        q.taken(60_000);
        q.publishing(60_000);
        q.published(60_000);
        let len = f.metadata().unwrap().len();
        assert!(
            Region::map(&f, len, 0, 2, 4).is_err(),
            "two queues do not fit"
        );
        assert!(Region::map(&f, len, 4096, 1, 4).is_err(), "beyond the file");
        assert!(Region::map(&f, len, 0, 0, 4).is_err());
        assert!(Region::create(0, 4).is_err());
    }
}
