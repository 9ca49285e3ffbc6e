//! Feature extraction for the learned predictors.
//!
//! Only *candidate* chunks are scored by the network: chunks accessed in
//! the last [`HISTORY_EPOCHS`] epochs and their neighbours within
//! [`NEIGHBOUR_REACH`] chunks (the neighbours carry the prefetch signal of
//! sequential scans). Every other chunk has the same, "idle" feature vector
//! and gets one shared score, so an epoch costs O(active chunks), not
//! O(volume size).

use crate::profile::{History, HISTORY_EPOCHS};

/// Neighbour distance (in chunks) that makes an idle chunk a candidate.
pub const NEIGHBOUR_REACH: usize = 2;
/// Features per chunk of the flat (MLP) layout.
pub const N_FEATURES: usize = HISTORY_EPOCHS + 7;
/// Per-step inputs of the sequence (GRU) layout: own accesses, neighbours'.
pub const N_STEP_FEATURES: usize = 2;
/// Static (non-sequence) features of the GRU layout.
pub const N_STATIC_FEATURES: usize = N_FEATURES - HISTORY_EPOCHS;
/// Age (epochs since last access) at which the age feature saturates.
const AGE_CAP: f32 = 64.0;

fn ln1p(x: f32) -> f32 {
    x.ln_1p()
}

/// Candidate chunks of the current epoch, deduplicated and sorted.
#[derive(Default)]
pub struct Candidates {
    mark: Vec<u32>,
    stamp: u32,
    pub chunks: Vec<u32>,
}

impl Candidates {
    /// Recomputes the candidate set from `history`.
    pub fn collect(&mut self, history: &History) {
        let n = history.len();
        if self.mark.len() != n {
            self.mark = vec![0; n];
            self.stamp = 0;
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.mark.fill(0);
            self.stamp = 1;
        }
        self.chunks.clear();
        for &a in history.active() {
            let a = a as usize;
            let lo = a.saturating_sub(NEIGHBOUR_REACH);
            let hi = (a + NEIGHBOUR_REACH).min(n - 1);
            for c in lo..=hi {
                if self.mark[c] != self.stamp {
                    self.mark[c] = self.stamp;
                    self.chunks.push(c as u32);
                }
            }
        }
        self.chunks.sort_unstable();
    }

    pub fn contains(&self, chunk: usize) -> bool {
        self.mark.get(chunk) == Some(&self.stamp) && self.stamp != 0
    }
}

/// Sum of the last `epochs` epochs of accesses of the chunks at distance
/// `d_lo..=d_hi` on both sides of `i`.
fn neighbour_sum(h: &History, i: usize, d_lo: usize, d_hi: usize, k: usize) -> f32 {
    let mut s = 0u32;
    for d in d_lo..=d_hi {
        if let Some(l) = i.checked_sub(d) {
            s += h.count(l, k) as u32;
        }
        if i + d < h.len() {
            s += h.count(i + d, k) as u32;
        }
    }
    s as f32
}

/// Writes the flat feature vector of chunk `i` (or of an idle chunk when
/// `i` is `None`) into `out[..N_FEATURES]`.
///
/// Layout: `[0, H)` ln(1+accesses) of the last H epochs, newest first; then
/// ln(1+decayed reads), ln(1+decayed writes), sequential share, scaled
/// ln(1+age), ln(1+accesses of the two adjacent chunks over the last two
/// epochs), ln(1+last-epoch accesses of chunks 2..4 away), scaled
/// ln(1+lifetime accesses).
pub fn chunk_features(h: &History, i: Option<usize>, out: &mut [f32]) {
    let out = &mut out[..N_FEATURES];
    let Some(i) = i else {
        out.fill(0.0);
        out[HISTORY_EPOCHS + 3] = 1.0;
        return;
    };
    for (k, o) in out[..HISTORY_EPOCHS].iter_mut().enumerate() {
        *o = ln1p(h.count(i, k) as f32);
    }
    let ch = h.chunk(i);
    let now = h.epoch();
    let (r, w, s) = ch.decayed_rws(now);
    let f = &mut out[HISTORY_EPOCHS..];
    f[0] = ln1p(r);
    f[1] = ln1p(w);
    f[2] = (s / (r + w).max(1e-3)).min(1.0);
    f[3] = match ch.age(now) {
        Some(a) => ln1p((a as f32).min(AGE_CAP)) / ln1p(AGE_CAP),
        None => 1.0,
    };
    f[4] = ln1p(neighbour_sum(h, i, 1, 1, 0) + neighbour_sum(h, i, 1, 1, 1));
    f[5] = ln1p(neighbour_sum(h, i, 2, 4, 0));
    f[6] = ln1p(ch.total as f32) / 10.0;
}

/// Writes the sequence layout of chunk `i`: `seq` gets H steps oldest
/// first of [ln(1+own accesses), ln(1+adjacent chunks' accesses)], and
/// `stat` the static features (the flat layout's tail).
pub fn sequence_features(h: &History, i: Option<usize>, seq: &mut [f32], stat: &mut [f32]) {
    let mut flat = [0f32; N_FEATURES];
    chunk_features(h, i, &mut flat);
    stat[..N_STATIC_FEATURES].copy_from_slice(&flat[HISTORY_EPOCHS..]);
    for step in 0..HISTORY_EPOCHS {
        let k = HISTORY_EPOCHS - 1 - step;
        let (own, nb) = match i {
            Some(i) => (
                ln1p(h.count(i, k) as f32),
                ln1p(neighbour_sum(h, i, 1, 1, k)),
            ),
            None => (0.0, 0.0),
        };
        seq[step * N_STEP_FEATURES] = own;
        seq[step * N_STEP_FEATURES + 1] = nb;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ChunkCounters;

    #[test]
    fn candidates_are_active_chunks_and_their_neighbours() {
        let mut h = History::new(10);
        let c = ChunkCounters::new(10);
        c.record_read(5, 1);
        c.record_read(0, 1);
        h.fold(&c);
        let mut cand = Candidates::default();
        cand.collect(&h);
        assert_eq!(cand.chunks, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert!(cand.contains(7) && !cand.contains(8));
    }

    #[test]
    fn features_reflect_recent_counts_neighbours_and_age() {
        let mut h = History::new(4);
        let c = ChunkCounters::new(4);
        for _ in 0..3 {
            c.record_read(1, 1);
        }
        c.record_write(2, 1);
        h.fold(&c);
        let mut f = [0f32; N_FEATURES];
        chunk_features(&h, Some(1), &mut f);
        assert!((f[0] - 4f32.ln()).abs() < 1e-6);
        assert_eq!(f[1], 0.0);
        assert_eq!(f[HISTORY_EPOCHS + 3], 0.0, "accessed this epoch: age 0");
        assert!(
            (f[HISTORY_EPOCHS + 4] - 2f32.ln()).abs() < 1e-6,
            "one access next door"
        );
        chunk_features(&h, Some(3), &mut f);
        assert_eq!(f[HISTORY_EPOCHS + 3], 1.0, "never accessed: saturated age");
        let mut idle = [9f32; N_FEATURES];
        chunk_features(&h, None, &mut idle);
        let mut expected = [0f32; N_FEATURES];
        expected[HISTORY_EPOCHS + 3] = 1.0;
        assert_eq!(idle, expected);
    }
}
