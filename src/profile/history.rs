//! Per-chunk access history, advanced one epoch at a time from the counters.
//!
//! Updates are lazy: a chunk's record is touched only in epochs where it was
//! accessed, so folding an epoch costs O(accessed chunks) beyond the counter
//! drain, and idle chunks of a large volume cost nothing.

use super::counters::{ChunkCounters, EpochCounts};

/// Epochs of per-epoch access counts kept per chunk.
pub const HISTORY_EPOCHS: usize = 8;

/// Decay per epoch of the read/write/sequential running sums.
const DECAY: f32 = 0.5;

/// One chunk's history.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChunkHistory {
    /// Accesses per epoch, ring indexed by epoch number.
    counts: [u16; HISTORY_EPOCHS],
    /// Decayed sums as of epoch `last`.
    reads: f32,
    writes: f32,
    sequential: f32,
    /// Accesses ever (saturating).
    pub total: u32,
    /// Last epoch (1-based) with an access; 0 = never accessed.
    pub last: u32,
}

impl ChunkHistory {
    fn record(&mut self, epoch: u32, c: EpochCounts) {
        let h = HISTORY_EPOCHS as u32;
        if self.last < epoch {
            // Zero the ring slots of the idle epochs in between (at most H).
            let from = (self.last + 1).max(epoch.saturating_sub(h - 1));
            for e in from..=epoch {
                self.counts[(e % h) as usize] = 0;
            }
            let f = DECAY.powi((epoch - self.last).min(64) as i32);
            self.reads *= f;
            self.writes *= f;
            self.sequential *= f;
            self.last = epoch;
        }
        let slot = &mut self.counts[(epoch % h) as usize];
        *slot = slot.saturating_add(c.accesses().min(u16::MAX as u32) as u16);
        self.reads += c.reads as f32;
        self.writes += c.writes as f32;
        self.sequential += c.sequential as f32;
        self.total = self.total.saturating_add(c.accesses());
    }

    /// Accesses in epoch `e` (1-based), as seen at epoch `now`.
    pub fn count_at(&self, e: u32) -> u16 {
        let h = HISTORY_EPOCHS as u32;
        if e == 0 || e > self.last || e + h <= self.last {
            0
        } else {
            self.counts[(e % h) as usize]
        }
    }

    fn decayed(&self, v: f32, now: u32) -> f32 {
        if self.last == 0 {
            0.0
        } else {
            v * DECAY.powi(now.saturating_sub(self.last).min(64) as i32)
        }
    }

    /// Decayed (half-life one epoch) reads, writes and sequential starts at epoch `now`.
    pub fn decayed_rws(&self, now: u32) -> (f32, f32, f32) {
        (
            self.decayed(self.reads, now),
            self.decayed(self.writes, now),
            self.decayed(self.sequential, now),
        )
    }

    /// Epochs since the last access at epoch `now` (`None`: never accessed).
    pub fn age(&self, now: u32) -> Option<u32> {
        (self.last > 0).then(|| now.saturating_sub(self.last))
    }
}

/// The history of every chunk of one volume.
#[derive(Debug, Clone)]
pub struct History {
    chunks: Vec<ChunkHistory>,
    /// Completed epochs so far.
    epoch: u32,
    /// Chunks accessed in the last [`HISTORY_EPOCHS`] epochs.
    active: Vec<u32>,
}

impl History {
    pub fn new(n_chunks: usize) -> Self {
        Self {
            chunks: vec![ChunkHistory::default(); n_chunks],
            epoch: 0,
            active: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Completed epochs.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn chunk(&self, i: usize) -> &ChunkHistory {
        &self.chunks[i]
    }

    /// Accesses of chunk `i`, `k` epochs before the last completed one
    /// (`k = 0`: the last completed epoch).
    pub fn count(&self, i: usize, k: usize) -> u16 {
        match self.epoch.checked_sub(k as u32) {
            Some(e) => self.chunks[i].count_at(e),
            None => 0,
        }
    }

    /// Chunks accessed in the last [`HISTORY_EPOCHS`] epochs (unordered).
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    /// Closes the current epoch: drains `counters` into the history.
    pub fn fold(&mut self, counters: &ChunkCounters) {
        assert_eq!(
            counters.len(),
            self.chunks.len(),
            "counter block and history differ in size"
        );
        self.fold_with(|f| counters.drain(f));
    }

    /// Closes the current epoch with counts from any source.
    pub fn fold_with(&mut self, source: impl FnOnce(&mut dyn FnMut(usize, EpochCounts))) {
        self.epoch += 1;
        let epoch = self.epoch;
        let h = HISTORY_EPOCHS as u32;
        let chunks = &mut self.chunks;
        let active = &mut self.active;
        source(&mut |i, c| {
            let ch = &mut chunks[i];
            let was_active = ch.last > 0 && ch.last + h >= epoch;
            ch.record(epoch, c);
            if !was_active {
                active.push(i as u32);
            }
        });
        let chunks = &self.chunks;
        self.active.retain(|&i| chunks[i as usize].last + h > epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch_with(h: &mut History, accesses: &[(usize, u32)]) {
        let c = ChunkCounters::new(h.len());
        for &(chunk, n) in accesses {
            for _ in 0..n {
                c.record_read(chunk as u64, 4096);
            }
        }
        h.fold(&c);
    }

    #[test]
    fn counts_shift_by_epoch_and_expire_after_window() {
        let mut h = History::new(3);
        epoch_with(&mut h, &[(0, 3), (1, 1)]);
        epoch_with(&mut h, &[(0, 2)]);
        assert_eq!(
            (h.count(0, 0), h.count(0, 1), h.count(1, 0), h.count(1, 1)),
            (2, 3, 0, 1)
        );
        let mut active = h.active().to_vec();
        active.sort();
        assert_eq!(active, vec![0, 1]);
        for _ in 0..HISTORY_EPOCHS {
            epoch_with(&mut h, &[]);
        }
        assert_eq!(h.count(0, HISTORY_EPOCHS - 1), 0);
        assert!(h.active().is_empty());
        assert_eq!(h.chunk(0).age(h.epoch()), Some(HISTORY_EPOCHS as u32));
        assert_eq!(h.chunk(2).age(h.epoch()), None);
        assert_eq!(h.chunk(0).total, 5);
    }

    #[test]
    fn ring_slot_is_cleared_when_chunk_returns_after_a_gap() {
        let mut h = History::new(1);
        epoch_with(&mut h, &[(0, 7)]);
        for _ in 0..(HISTORY_EPOCHS - 1) {
            epoch_with(&mut h, &[]);
        }
        // Epoch 1 + H reuses epoch 1's ring slot: old count must not leak.
        epoch_with(&mut h, &[(0, 1)]);
        assert_eq!(h.count(0, 0), 1);
        for k in 1..HISTORY_EPOCHS {
            assert_eq!(h.count(0, k), 0, "k={k}");
        }
    }

    #[test]
    fn decayed_sums_halve_each_idle_epoch() {
        let mut h = History::new(1);
        let c = ChunkCounters::new(1);
        c.record_write(0, 1);
        c.record_write(0, 1);
        c.record_read(0, 1);
        c.record_read(0, 1);
        h.fold(&c);
        epoch_with(&mut h, &[]);
        let (r, w, _) = h.chunk(0).decayed_rws(h.epoch());
        assert_eq!((r, w), (1.0, 1.0));
    }
}
