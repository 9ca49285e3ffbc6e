//! EWMA baseline: a chunk's score is the smoothed access rate per epoch,
//! mapped into [0, 1].

use super::{HeatMap, Predictor, SEED_FLOOR};
use crate::profile::History;

/// Exponentially weighted moving average of per-epoch accesses.
#[derive(Debug, Clone)]
pub struct Ewma {
    /// Weight of the newest epoch.
    alpha: f32,
    /// Accesses per epoch that map to a score of 1 - 1/e.
    scale: f32,
    rate: Vec<f32>,
    /// Epoch `rate` is current as of, per chunk (lazy decay).
    as_of: Vec<u32>,
    touched: Vec<u32>,
    /// Some seeded chunks still decay (see [`Predictor::seed`]).
    seeded: bool,
}

impl Default for Ewma {
    fn default() -> Self {
        Self::new(0.5, 1.0)
    }
}

impl Ewma {
    pub fn new(alpha: f32, scale: f32) -> Self {
        Self {
            alpha: alpha.clamp(0.01, 1.0),
            scale: scale.max(1e-3),
            rate: Vec::new(),
            as_of: Vec::new(),
            touched: Vec::new(),
            seeded: false,
        }
    }

    fn score(&self, rate: f32) -> f32 {
        1.0 - (-rate / self.scale).exp()
    }

    /// The rate whose score is `score` (scores of 1 and more: the rate of
    /// 0.999).
    fn rate_of(&self, score: f32) -> f32 {
        let s = if score.is_finite() {
            score.clamp(0.0, 0.999)
        } else {
            0.0
        };
        -self.scale * (1.0 - s).ln()
    }
}

impl Predictor for Ewma {
    fn name(&self) -> String {
        "ewma".into()
    }

    fn first_touch_score(&mut self) -> f32 {
        self.score(self.alpha)
    }

    fn seed(&mut self, heat: &HeatMap) {
        let n = heat.len();
        self.rate = heat.scores().iter().map(|&s| self.rate_of(s)).collect();
        self.as_of = vec![0; n];
        self.touched = (0..n as u32)
            .filter(|&c| self.rate[c as usize] > 0.0)
            .collect();
        self.seeded = !self.touched.is_empty();
    }

    fn predict(&mut self, history: &History, out: &mut HeatMap) {
        let n = history.len();
        if self.rate.len() != n {
            self.rate = vec![0.0; n];
            self.as_of = vec![0; n];
            out.reset(n, 0.0);
        }
        let now = history.epoch();
        let keep = 1.0 - self.alpha;
        // Only chunks that were ever active change; others decay lazily and
        // are rescored when they fall out of the active set.
        let mut touched = std::mem::take(&mut self.touched);
        for &i in history.active() {
            let i = i as usize;
            let idle = now.saturating_sub(self.as_of[i]).saturating_sub(1).min(64);
            let decayed = self.rate[i] * keep.powi(idle as i32);
            let x = history.count(i, 0) as f32;
            self.rate[i] = self.alpha * x + keep * decayed;
            self.as_of[i] = now;
            out.set(i, self.score(self.rate[i]));
        }
        // Chunks that left the active set since last epoch, or were seeded
        // and are idle: decay them once more; a seeded chunk goes on
        // decaying each epoch until its score is negligible.
        let mut seeded = Vec::new();
        for &i in &touched {
            let i = i as usize;
            if self.as_of[i] != now {
                let idle = now.saturating_sub(self.as_of[i]).min(64);
                self.rate[i] *= keep.powi(idle as i32);
                self.as_of[i] = now;
                let s = self.score(self.rate[i]);
                out.set(i, s);
                if self.seeded && s > SEED_FLOOR {
                    seeded.push(i as u32);
                }
            }
        }
        touched.clear();
        touched.extend_from_slice(history.active());
        touched.extend_from_slice(&seeded);
        self.seeded = !seeded.is_empty();
        self.touched = touched;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ChunkCounters;

    #[test]
    fn busier_chunk_scores_higher_and_idle_chunk_cools() {
        let mut h = History::new(3);
        let mut p = Ewma::default();
        let mut heat = HeatMap::default();
        let c = ChunkCounters::new(3);
        for _ in 0..5 {
            c.record_read(0, 1);
        }
        c.record_read(1, 1);
        h.fold(&c);
        p.predict(&h, &mut heat);
        assert!(heat.score(0) > heat.score(1) && heat.score(1) > heat.score(2));
        assert_eq!(heat.score(2), 0.0);
        let before = heat.score(0);
        for _ in 0..3 {
            h.fold(&c);
            p.predict(&h, &mut heat);
        }
        assert!(
            heat.score(0) < before / 3.0,
            "{} vs {before}",
            heat.score(0)
        );
        assert!(heat.scores().iter().all(|s| (0.0..=1.0).contains(s)));
    }

    #[test]
    fn a_seeded_score_holds_while_busy_and_decays_each_idle_epoch() {
        let mut h = History::new(3);
        let mut p = Ewma::default();
        let mut heat = HeatMap::from_scores(vec![0.95, 0.95, 0.0]);
        p.seed(&heat);
        let c = ChunkCounters::new(3);
        let mut last = heat.score(1);
        for epoch in 0..12 {
            // Chunk 0 stays busy; chunk 1 (as hot when saved) is idle.
            c.record_read(0, 1);
            c.record_read(0, 1);
            h.fold(&c);
            p.predict(&h, &mut heat);
            assert!(heat.score(0) > 0.8, "epoch {epoch}: {}", heat.score(0));
            let s = heat.score(1);
            if last > SEED_FLOOR {
                assert!(
                    s < last,
                    "epoch {epoch}: idle seeded chunk decays ({s} after {last})"
                );
            }
            if epoch == 0 {
                assert!(s > 0.7, "one idle epoch keeps most of the seed: {s}");
            }
            last = s;
            assert_eq!(heat.score(2), 0.0);
        }
        assert!(last < 0.05, "the seed is outweighed: {last}");
    }
}
