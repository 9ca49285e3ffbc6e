//! Demand-promotion events: the data path posts each chunk it served from
//! a slower tier (a *miss*), the volume's brain takes them between epochs
//! and asks the placer whether to promote (DESIGN decision 9; issue 11,
//! demand promotion).
//!
//! Posting never blocks or allocates: a chunk already waiting is not
//! posted again (one bit per chunk, checked with a plain load first), and
//! when the bounded lock-free queue is full the event is dropped and
//! counted.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crossbeam_queue::ArrayQueue;

/// Most events waiting at once, per volume.
pub const MAX_WAITING: usize = 1024;

#[derive(Debug)]
pub struct MissQueue {
    queue: ArrayQueue<u32>,
    /// One bit per chunk: waiting in `queue` now.
    waiting: Vec<AtomicU64>,
    chunks: u32,
    posted: AtomicU64,
    dropped: AtomicU64,
}

impl MissQueue {
    /// A queue for a volume of `chunks` chunks.
    pub fn new(chunks: usize) -> Self {
        Self {
            queue: ArrayQueue::new(chunks.clamp(1, MAX_WAITING)),
            waiting: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            chunks: u32::try_from(chunks).unwrap_or(u32::MAX),
            posted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Posts a miss on `chunk` (data path). A chunk out of range is
    /// ignored.
    #[inline]
    pub fn post(&self, chunk: u32) {
        if chunk >= self.chunks {
            return;
        }
        let word = &self.waiting[chunk as usize / 64];
        let bit = 1u64 << (chunk % 64);
        // The common case on a busy slow chunk: already waiting, a load.
        if word.load(Relaxed) & bit != 0 || word.fetch_or(bit, Relaxed) & bit != 0 {
            return;
        }
        if self.queue.push(chunk).is_ok() {
            self.posted.fetch_add(1, Relaxed);
        } else {
            word.fetch_and(!bit, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// The oldest waiting miss (brain). The chunk may be posted again from
    /// now on.
    pub fn pop(&self) -> Option<u32> {
        let chunk = self.queue.pop()?;
        self.waiting[chunk as usize / 64].fetch_and(!(1u64 << (chunk % 64)), Relaxed);
        Some(chunk)
    }

    /// Events queued since the volume opened.
    pub fn posted(&self) -> u64 {
        self.posted.load(Relaxed)
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_chunk_is_posted_once_and_again_after_it_is_taken() {
        let q = MissQueue::new(100);
        q.post(7);
        q.post(7);
        q.post(99);
        q.post(100); // out of range
        assert_eq!(q.posted(), 2);
        assert_eq!(q.pop(), Some(7));
        q.post(7);
        assert_eq!(q.pop(), Some(99));
        assert_eq!(q.pop(), Some(7));
        assert_eq!(q.pop(), None);
        assert_eq!((q.posted(), q.dropped()), (3, 0));
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_the_chunk_can_post_later() {
        let q = MissQueue::new(4 * MAX_WAITING);
        for c in 0..MAX_WAITING as u32 + 3 {
            q.post(c);
        }
        assert_eq!(q.posted(), MAX_WAITING as u64);
        assert_eq!(q.dropped(), 3);
        assert_eq!(q.pop(), Some(0));
        let late = MAX_WAITING as u32 + 1;
        q.post(late);
        assert_eq!(
            q.posted(),
            MAX_WAITING as u64 + 1,
            "dropped, so not waiting"
        );
        let mut last = None;
        while let Some(c) = q.pop() {
            last = Some(c);
        }
        assert_eq!(last, Some(late));
    }

    #[test]
    fn concurrent_posters_lose_no_event_and_queue_no_chunk_twice() {
        let q = std::sync::Arc::new(MissQueue::new(512));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for c in 0..512 {
                        q.post(c);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen = vec![false; 512];
        while let Some(c) = q.pop() {
            assert!(!std::mem::replace(&mut seen[c as usize], true), "{c} twice");
        }
        let n = seen.iter().filter(|&&s| s).count() as u64;
        assert_eq!(n, q.posted());
        assert_eq!(n + q.dropped(), 512);
    }
}
