//! `lru`: no prediction. Every chunk scores 1, so every policy lets every
//! chunk onto tier 0, no plan finds one chunk hotter than another, and the
//! placer's tier-0 management degenerates to LRU promote-on-miss (its
//! victim is the lowest score among the least recently used, ties to the
//! least recently used): the dm-cache/bcache stand-in that tierblk's own
//! predictors are measured against, run by the same daemon.

use super::{HeatMap, Predictor};
use crate::profile::History;

/// Scores every chunk 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flat;

impl Predictor for Flat {
    fn name(&self) -> String {
        "lru".into()
    }

    fn predict(&mut self, history: &History, out: &mut HeatMap) {
        out.reset(history.len(), 1.0);
    }

    fn first_touch_score(&mut self) -> f32 {
        1.0
    }

    /// Seeds are ignored: an LRU cache keeps no heat across restarts.
    fn seed(&mut self, _heat: &HeatMap) {}
}
