//! Lock-free per-chunk access counters for the data path.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// One chunk's counters for the current epoch. 24 bytes, so a few chunks
/// share a cache line; contention is rare because guests seldom hammer
/// neighbouring chunks from several queues at once.
#[derive(Debug, Default)]
struct Slot {
    reads: AtomicU32,
    writes: AtomicU32,
    /// Requests that started where the previous request on the volume ended.
    sequential: AtomicU32,
    bytes: AtomicU64,
}

/// Counts taken out of one chunk's [`Slot`] at an epoch boundary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochCounts {
    pub reads: u32,
    pub writes: u32,
    pub sequential: u32,
    pub bytes: u64,
}

impl EpochCounts {
    pub fn accesses(&self) -> u32 {
        self.reads.saturating_add(self.writes)
    }
}

/// The counter block of one volume: what the data path bumps on every I/O.
///
/// Every method takes `&self`, does a few relaxed atomic adds and never
/// allocates or locks, so worker threads of all queues can share one block
/// (e.g. in an `Arc`). The profiler thread drains it once per epoch with
/// [`ChunkCounters::drain`]. Chunk indexes out of range are ignored (and
/// counted in [`ChunkCounters::dropped`]) instead of panicking on the data
/// path.
#[derive(Debug)]
pub struct ChunkCounters {
    slots: Box<[Slot]>,
    /// Byte offset one past the end of the last request, for sequentiality.
    last_end: AtomicU64,
    dropped: AtomicU64,
}

impl ChunkCounters {
    /// A zeroed block for a volume of `n_chunks` chunks.
    pub fn new(n_chunks: usize) -> Self {
        Self {
            slots: (0..n_chunks).map(|_| Slot::default()).collect(),
            last_end: AtomicU64::new(u64::MAX),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot(&self, chunk: u64) -> Option<&Slot> {
        let s = usize::try_from(chunk).ok().and_then(|c| self.slots.get(c));
        if s.is_none() {
            self.dropped.fetch_add(1, Relaxed);
        }
        s
    }

    /// Counts a read of `bytes` bytes that touched `chunk`.
    #[inline]
    pub fn record_read(&self, chunk: u64, bytes: u64) {
        if let Some(s) = self.slot(chunk) {
            s.reads.fetch_add(1, Relaxed);
            s.bytes.fetch_add(bytes, Relaxed);
        }
    }

    /// Counts a write of `bytes` bytes that touched `chunk`.
    #[inline]
    pub fn record_write(&self, chunk: u64, bytes: u64) {
        if let Some(s) = self.slot(chunk) {
            s.writes.fetch_add(1, Relaxed);
            s.bytes.fetch_add(bytes, Relaxed);
        }
    }

    /// Marks that a request starting in `chunk` continued the previous
    /// request (for callers that split requests themselves).
    #[inline]
    pub fn record_sequential(&self, chunk: u64) {
        if let Some(s) = self.slot(chunk) {
            s.sequential.fetch_add(1, Relaxed);
        }
    }

    /// Counts a whole request: splits it by chunk, bumps each chunk it
    /// touches, and marks the first chunk sequential when the request starts
    /// where the previous one ended. One extra atomic swap per request.
    #[inline]
    pub fn record_request(&self, write: bool, offset: u64, len: u64, chunk_size: u64) {
        if len == 0 || chunk_size == 0 {
            return;
        }
        let end = offset.saturating_add(len);
        let prev_end = self.last_end.swap(end, Relaxed);
        let mut pos = offset;
        while pos < end {
            let chunk = pos / chunk_size;
            let chunk_end = (chunk + 1).saturating_mul(chunk_size).min(end);
            if write {
                self.record_write(chunk, chunk_end - pos);
            } else {
                self.record_read(chunk, chunk_end - pos);
            }
            pos = chunk_end;
        }
        if prev_end == offset {
            if let Some(s) = self.slot(offset / chunk_size) {
                s.sequential.fetch_add(1, Relaxed);
            }
        }
    }

    /// Takes (and zeroes) the counts of `chunk`.
    pub fn take(&self, chunk: usize) -> EpochCounts {
        let s = &self.slots[chunk];
        EpochCounts {
            reads: s.reads.swap(0, Relaxed),
            writes: s.writes.swap(0, Relaxed),
            sequential: s.sequential.swap(0, Relaxed),
            bytes: s.bytes.swap(0, Relaxed),
        }
    }

    /// Takes the counts of every chunk, calling `f(chunk, counts)` for each
    /// chunk with at least one access. Increments racing with the drain
    /// land in this epoch or the next, never lost.
    pub fn drain(&self, mut f: impl FnMut(usize, EpochCounts)) {
        for (i, s) in self.slots.iter().enumerate() {
            // Cheap pre-check so idle chunks cost two loads, not four swaps.
            if s.reads.load(Relaxed) == 0 && s.writes.load(Relaxed) == 0 {
                continue;
            }
            f(i, self.take(i));
        }
    }

    /// Reads (without taking) the accesses counted so far, calling
    /// `f(chunk, reads + writes)` for each chunk with at least one.
    pub fn peek(&self, mut f: impl FnMut(usize, u32)) {
        for (i, s) in self.slots.iter().enumerate() {
            let n = s.reads.load(Relaxed).saturating_add(s.writes.load(Relaxed));
            if n > 0 {
                f(i, n);
            }
        }
    }

    /// Number of bumps that named a chunk outside the volume.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread};

    use super::*;

    #[test]
    fn counts_reads_writes_bytes_and_sequential_requests() {
        let c = ChunkCounters::new(4);
        c.record_request(false, 0, 4096, 65536);
        c.record_request(false, 4096, 4096, 65536); // sequential
        c.record_request(true, 60 * 1024, 8192, 65536); // spans chunks 0 and 1
        c.record_read(3, 512);
        let mut seen = vec![];
        c.drain(|i, e| seen.push((i, e)));
        assert_eq!(seen.len(), 3);
        assert_eq!(
            seen[0],
            (
                0,
                EpochCounts {
                    reads: 2,
                    writes: 1,
                    sequential: 1,
                    bytes: 12288
                }
            )
        );
        assert_eq!(
            seen[1].1,
            EpochCounts {
                reads: 0,
                writes: 1,
                sequential: 0,
                bytes: 4096
            }
        );
        assert_eq!(
            seen[2],
            (
                3,
                EpochCounts {
                    reads: 1,
                    writes: 0,
                    sequential: 0,
                    bytes: 512
                }
            )
        );
        let mut again = 0;
        c.drain(|_, _| again += 1);
        assert_eq!(again, 0, "drain zeroes the counters");
    }

    #[test]
    fn out_of_range_chunk_is_dropped_not_panicking() {
        let c = ChunkCounters::new(2);
        c.record_write(2, 1);
        c.record_read(u64::MAX, 1);
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn concurrent_bumps_are_all_counted() {
        let c = Arc::new(ChunkCounters::new(8));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                thread::spawn(move || {
                    for i in 0..10_000u64 {
                        c.record_read((i + t) % 8, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut total = 0u64;
        c.drain(|_, e| total += e.reads as u64);
        assert_eq!(total, 40_000);
    }
}
