//! How far a volume's accesses deviate from its predicted heat map, and
//! when that is far enough to re-tier before the epoch ends (the same
//! object in the daemon's brain and in `tierblk replay`).
//!
//! The figure. After each prediction the chunks the heat map puts in tier
//! 0's share, its `fast_capacity` highest scores (only chunks scored above
//! the map's lowest score, so an untrained map predicts nothing hot), are
//! the *predicted hot* set. The *cold share* of some accesses is the share
//! that landed outside that set. Every closed epoch's cold share, measured
//! against the prediction that was in force during it (when there was
//! one: a hot set, and at least [`MIN_ACCESSES`]), is folded into the
//! *expected* cold share (a running mean that weighs the last epoch half):
//! how wrong this volume's predictions usually are. Several times per epoch
//! the brain measures the cold share of the accesses counted so far in the
//! epoch; the *deviation* is that share minus the expected one. A
//! deviation of at least `placement.deviation_threshold`, over at least
//! [`MIN_ACCESSES`] accesses, means the hot set moved: the brain closes
//! the epoch at once (fold → predict → plan) instead of waiting for its end.

use crate::{
    predict::HeatMap,
    profile::{ChunkCounters, History},
};

/// Fewest accesses in the epoch so far for a check to count: fewer say
/// nothing about a hot set.
pub const MIN_ACCESSES: u64 = 64;

/// Weight of the last epoch in the expected cold share.
const EXPECTED_WEIGHT: f64 = 0.5;

/// One measurement of the accesses so far in an epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Check {
    /// Chunk accesses counted since the epoch began.
    pub accesses: u64,
    /// Share of them outside the predicted hot set.
    pub cold_share: f64,
    /// The cold share past epochs had (0 before any epoch was measured).
    pub expected: f64,
    /// `cold_share - expected` (0 with no expectation yet or too few
    /// accesses to count).
    pub deviation: f64,
    /// The deviation reached the threshold: re-tier now.
    pub retier: bool,
}

/// Tracks a volume's predicted hot set and how wrong it usually is.
#[derive(Debug, Clone)]
pub struct Deviation {
    /// One bit per chunk: in the predicted hot set.
    hot: Vec<u64>,
    /// The hot set is not empty: there is a prediction to measure.
    predicted: bool,
    expected: Option<f64>,
    threshold: f64,
    fast_capacity: usize,
}

impl Deviation {
    /// For a volume of `n_chunks` chunks whose tier 0 holds
    /// `fast_capacity` of them; re-tiers at a deviation of `threshold`.
    pub fn new(n_chunks: usize, fast_capacity: usize, threshold: f64) -> Self {
        Self {
            hot: vec![0; n_chunks.div_ceil(64)],
            predicted: false,
            expected: None,
            threshold,
            fast_capacity,
        }
    }

    fn is_hot(&self, chunk: usize) -> bool {
        self.hot
            .get(chunk / 64)
            .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
    }

    /// Closes an epoch, after `history` folded it and `heat` was predicted
    /// from it: scores the epoch's accesses against the prediction that was
    /// in force during it (the hot set of the previous call), then takes
    /// the new heat map's hot set. O(active chunks + chunks scored above
    /// the lowest score).
    pub fn on_epoch(&mut self, history: &History, heat: &HeatMap) {
        let (mut all, mut cold) = (0u64, 0u64);
        for &c in history.active() {
            let n = u64::from(history.count(c as usize, 0));
            all += n;
            if !self.is_hot(c as usize) {
                cold += n;
            }
        }
        if self.predicted && all >= MIN_ACCESSES {
            let share = cold as f64 / all as f64;
            self.expected = Some(match self.expected {
                None => share,
                Some(e) => e + EXPECTED_WEIGHT * (share - e),
            });
        }
        self.take_hot_set(heat);
    }

    fn take_hot_set(&mut self, heat: &HeatMap) {
        self.hot.fill(0);
        self.predicted = false;
        let scores = heat.scores();
        let floor = scores.iter().copied().fold(f32::INFINITY, f32::min);
        let mut ranked: Vec<u32> = (0..scores.len() as u32)
            .filter(|&c| scores[c as usize] > floor)
            .collect();
        let k = self.fast_capacity.min(ranked.len());
        if k == 0 {
            return;
        }
        if k < ranked.len() {
            ranked.select_nth_unstable_by(k - 1, |&a, &b| {
                scores[b as usize].total_cmp(&scores[a as usize])
            });
        }
        for &c in &ranked[..k] {
            self.hot[c as usize / 64] |= 1 << (c % 64);
        }
        self.predicted = true;
    }

    /// Measures the accesses `counters` holds (those since the epoch
    /// began; read, not taken). O(chunks).
    pub fn check(&self, counters: &ChunkCounters) -> Check {
        let (mut all, mut cold) = (0u64, 0u64);
        counters.peek(|c, n| {
            all += u64::from(n);
            if !self.is_hot(c) {
                cold += u64::from(n);
            }
        });
        let cold_share = if all == 0 {
            0.0
        } else {
            cold as f64 / all as f64
        };
        let expected = self.expected.unwrap_or(0.0);
        let deviation = match self.expected {
            Some(e) if all >= MIN_ACCESSES => cold_share - e,
            _ => 0.0,
        };
        Check {
            accesses: all,
            cold_share,
            expected,
            deviation,
            retier: deviation >= self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closes an epoch in which `accesses` (chunk, count) happened, with a
    /// heat map that scores `hot` chunks 1 and the rest 0.
    fn epoch(d: &mut Deviation, h: &mut History, accesses: &[(usize, u32)], hot: &[usize]) {
        let c = ChunkCounters::new(h.len());
        record(&c, accesses);
        h.fold(&c);
        let mut scores = vec![0.0; h.len()];
        for &i in hot {
            scores[i] = 1.0;
        }
        d.on_epoch(h, &HeatMap::from_scores(scores));
    }

    fn record(c: &ChunkCounters, accesses: &[(usize, u32)]) {
        for &(chunk, n) in accesses {
            for _ in 0..n {
                c.record_read(chunk as u64, 4096);
            }
        }
    }

    #[test]
    fn a_jump_of_the_hot_set_deviates_and_the_usual_misses_do_not() {
        let mut d = Deviation::new(100, 4, 0.3);
        let mut h = History::new(100);
        // Chunks 0..4 hot, with a few accesses elsewhere (20% cold) each
        // epoch: the prediction (0..4) matches. The first epoch ran with
        // no prediction and is not measured.
        let usual = [(0, 20), (1, 20), (2, 20), (3, 20), (50, 10), (60, 10)];
        epoch(&mut d, &mut h, &usual, &[0, 1, 2, 3]);
        assert_eq!(d.expected, None);
        epoch(&mut d, &mut h, &usual, &[0, 1, 2, 3]);
        let c = ChunkCounters::new(100);
        record(&c, &usual);
        let same = d.check(&c);
        assert!((same.expected - 0.2).abs() < 1e-9, "{same:?}");
        assert!(same.deviation.abs() < 1e-9 && !same.retier, "{same:?}");
        // The hot set jumps to 10..14: almost every access is cold.
        let c = ChunkCounters::new(100);
        record(&c, &[(10, 30), (11, 30), (12, 30), (1, 5)]);
        let jump = d.check(&c);
        assert!(jump.cold_share > 0.9 && jump.deviation > 0.7, "{jump:?}");
        assert!(jump.retier);
        // Too few accesses say nothing.
        let c = ChunkCounters::new(100);
        record(&c, &[(10, 10), (11, 10)]);
        let few = d.check(&c);
        assert_eq!(few.accesses, 20);
        assert!(!few.retier && few.deviation == 0.0, "{few:?}");
    }

    #[test]
    fn nothing_is_expected_before_a_measured_epoch_and_a_flat_map_predicts_nothing_hot() {
        let mut d = Deviation::new(64, 8, 0.1);
        let c = ChunkCounters::new(64);
        record(&c, &[(5, 100)]);
        let first = d.check(&c);
        assert_eq!(first.cold_share, 1.0);
        assert!(!first.retier, "no expectation yet: {first:?}");
        // A flat heat map (all chunks at the floor) predicts no hot chunk.
        let mut h = History::new(64);
        epoch(&mut d, &mut h, &[(5, 100)], &[]);
        assert!((0..64).all(|c| !d.is_hot(c)));
    }

    #[test]
    fn the_hot_set_is_the_top_scores_up_to_tier_0s_capacity() {
        let mut d = Deviation::new(130, 2, 0.3);
        let mut scores = vec![0.1; 130];
        scores[129] = 0.9;
        scores[64] = 0.8;
        scores[3] = 0.5;
        d.take_hot_set(&HeatMap::from_scores(scores));
        let hot: Vec<usize> = (0..130).filter(|&c| d.is_hot(c)).collect();
        assert_eq!(hot, vec![64, 129]);
    }
}
