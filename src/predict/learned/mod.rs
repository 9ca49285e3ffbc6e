//! The learned predictor: a small burn network (MLP or GRU) scoring the
//! candidate chunks of each epoch in batches on the CPU (`flex` backend).
//!
//! Model file layout (`.bpk`): the magic `TIERBLKM`, a little-endian u32
//! length, a JSON [`ModelHeader`] (architecture, sizes, how it was
//! trained), then the network's weights in burn's burnpack format.

mod file;
pub mod model;
pub mod train;

use std::path::{Path, PathBuf};

use burn::tensor::{activation, Device, Tensor, TensorData};
#[cfg(feature = "fuzzing")]
pub use file::fuzz as file_fuzz;
pub use file::ModelHeader;

/// Tests that train (and check that training is reproducible) and tests
/// that load models by the thousand must not run at the same time: burn's
/// CPU backend keeps process-wide state, and loads interleaved with a
/// training run change its result (seen only with both in one process;
/// `tierblk train` runs alone in its own).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn burn_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
pub use model::{Arch, Net};

use super::{
    features::{chunk_features, sequence_features, Candidates, N_FEATURES, N_STEP_FEATURES},
    HeatMap, Predictor, Result, SEED_FLOOR, SEED_KEEP,
};
use crate::profile::{History, HISTORY_EPOCHS};

/// Rows scored per forward pass: large enough to amortise dispatch, small
/// enough to keep the activations in a few MiB.
pub const SCORE_BATCH: usize = 65_536;

/// A trained network ready to score heat maps.
pub struct LearnedPredictor {
    header: ModelHeader,
    net: Net,
    device: Device,
    idle_score: f32,
    touch_score: f32,
    cand: Candidates,
    /// Candidates of the previous epoch, reset to the idle score next time.
    prev: Vec<u32>,
    /// Chunks whose seeded score (see [`Predictor::seed`]) still decays.
    seeded: Vec<u32>,
    flat: Vec<f32>,
    seq: Vec<f32>,
    source: Option<PathBuf>,
}

impl LearnedPredictor {
    /// Wraps a network (on any device; it is moved to the CPU backend).
    pub fn new(header: ModelHeader, net: Net) -> Self {
        let device = Device::flex();
        let net = burn::module::Module::to_device(net, &device);
        let mut p = Self {
            header,
            net,
            device,
            idle_score: 0.0,
            touch_score: 0.0,
            cand: Candidates::default(),
            prev: Vec::new(),
            seeded: Vec::new(),
            flat: Vec::new(),
            seq: Vec::new(),
            source: None,
        };
        let h = History::new(0);
        let mut row = [0f32; N_FEATURES];
        chunk_features(&h, None, &mut row);
        let mut seq = [0f32; HISTORY_EPOCHS * N_STEP_FEATURES];
        let mut stat = [0f32; N_FEATURES];
        sequence_features(&h, None, &mut seq, &mut stat);
        p.idle_score = p.score_rows(&row, &seq, 1)[0];
        // One read in the latest epoch, nothing else.
        let mut h = History::new(1);
        let c = crate::profile::ChunkCounters::new(1);
        c.record_read(0, 4096);
        h.fold(&c);
        chunk_features(&h, Some(0), &mut row);
        sequence_features(&h, Some(0), &mut seq, &mut stat);
        p.touch_score = p.score_rows(&row, &seq, 1)[0];
        p
    }

    /// Loads a model file; errors name the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Self> {
        let (header, net) = file::load(path)?;
        let mut p = Self::new(header, net);
        p.source = Some(path.to_path_buf());
        Ok(p)
    }

    /// Writes the model file.
    pub fn save(&self, path: &Path) -> Result<()> {
        file::save(path, &self.header, &self.net)
    }

    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    /// Score of a chunk with no recent activity nearby.
    pub fn idle_score(&self) -> f32 {
        self.idle_score
    }

    /// Scores `rows` chunks given their flat features (`rows × N_FEATURES`)
    /// and, for the GRU, their sequences (`rows × H × N_STEP_FEATURES`).
    pub fn score_rows(&self, flat: &[f32], seq: &[f32], rows: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows);
        let mut start = 0;
        while start < rows {
            let n = (rows - start).min(SCORE_BATCH);
            let x = Tensor::<2>::from_data(
                TensorData::new(
                    flat[start * N_FEATURES..(start + n) * N_FEATURES].to_vec(),
                    [n, N_FEATURES],
                ),
                &self.device,
            );
            let s = match self.header.arch {
                Arch::Gru => {
                    let w = HISTORY_EPOCHS * N_STEP_FEATURES;
                    Some(Tensor::<3>::from_data(
                        TensorData::new(
                            seq[start * w..(start + n) * w].to_vec(),
                            [n, HISTORY_EPOCHS, N_STEP_FEATURES],
                        ),
                        &self.device,
                    ))
                }
                Arch::Mlp => None,
            };
            let y = activation::sigmoid(self.net.forward_rows(x, s));
            let v: Vec<f32> = y
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_else(|_| vec![0.0; n]);
            out.extend_from_slice(&v);
            start += n;
        }
        out
    }

    /// Builds the feature rows of `chunks` into the internal buffers.
    fn build_rows(&mut self, history: &History, chunks: &[u32]) {
        let n = chunks.len();
        self.flat.resize(n * N_FEATURES, 0.0);
        let gru = self.header.arch == Arch::Gru;
        let w = HISTORY_EPOCHS * N_STEP_FEATURES;
        self.seq.resize(if gru { n * w } else { 0 }, 0.0);
        let mut stat = [0f32; N_FEATURES];
        for (r, &c) in chunks.iter().enumerate() {
            chunk_features(
                history,
                Some(c as usize),
                &mut self.flat[r * N_FEATURES..(r + 1) * N_FEATURES],
            );
            if gru {
                sequence_features(
                    history,
                    Some(c as usize),
                    &mut self.seq[r * w..(r + 1) * w],
                    &mut stat,
                );
            }
        }
    }
}

impl Predictor for LearnedPredictor {
    fn name(&self) -> String {
        format!("learned-{}", self.header.arch)
    }

    fn first_touch_score(&mut self) -> f32 {
        self.touch_score
    }

    fn seed(&mut self, heat: &HeatMap) {
        self.seeded = (0..heat.len() as u32)
            .filter(|&c| (heat.score(c as usize) - self.idle_score).abs() > SEED_FLOOR)
            .collect();
    }

    fn predict(&mut self, history: &History, out: &mut HeatMap) {
        let n = history.len();
        if out.len() != n {
            out.reset(n, self.idle_score);
            self.prev.clear();
            self.seeded.clear();
        }
        for &c in &self.prev {
            out.set(c as usize, self.idle_score);
        }
        // Seeded scores decay toward the idle score; the model's score
        // replaces one as soon as its chunk is a candidate.
        let idle = self.idle_score;
        self.seeded.retain(|&c| {
            let s = out.score(c as usize);
            let next = idle + (s - idle) * SEED_KEEP;
            out.set(c as usize, next);
            (next - idle).abs() > SEED_FLOOR
        });
        self.cand.collect(history);
        let chunks = std::mem::take(&mut self.cand.chunks);
        self.build_rows(history, &chunks);
        let scores = self.score_rows(&self.flat, &self.seq, chunks.len());
        for (&c, &s) in chunks.iter().zip(&scores) {
            out.set(c as usize, s);
        }
        let cand = &self.cand;
        self.seeded.retain(|&c| !cand.contains(c as usize));
        self.prev.clear();
        self.prev.extend_from_slice(&chunks);
        self.cand.chunks = chunks;
    }
}

impl std::fmt::Debug for LearnedPredictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedPredictor")
            .field("header", &self.header)
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::{predict::HeatMap, profile::History};

    #[test]
    fn seeded_scores_decay_to_the_idle_score_unless_the_model_scores_the_chunk() {
        let mut h = History::new(64);
        let c = crate::profile::ChunkCounters::new(64);
        h.fold(&c);
        // The model's score for a chunk with no activity nearby.
        let mut fresh = HeatMap::default();
        crate::predict::load("learned")
            .unwrap()
            .predict(&h, &mut fresh);
        let idle = fresh.score(60);
        let mut scores = vec![idle; 64];
        scores[5] = 0.95;
        let mut heat = HeatMap::from_scores(scores);
        let mut p = crate::predict::load("learned").unwrap();
        p.seed(&heat);
        p.predict(&h, &mut heat);
        let first = heat.score(5);
        assert!(
            (first - (idle + (0.95 - idle) * crate::predict::SEED_KEEP)).abs() < 1e-6,
            "{first} (idle {idle})"
        );
        assert_eq!(heat.score(60), idle);
        for _ in 0..10 {
            h.fold(&c);
            p.predict(&h, &mut heat);
        }
        assert!((heat.score(5) - idle).abs() <= 0.01, "{}", heat.score(5));
        // A chunk the model scores (accessed) drops its seed at once.
        let mut heat = HeatMap::from_scores(vec![0.95; 64]);
        p = crate::predict::load("learned").unwrap();
        p.seed(&heat);
        c.record_read(10, 4096);
        h.fold(&c);
        p.predict(&h, &mut heat);
        let mut again = HeatMap::from_scores(vec![0.0; 64]);
        let mut q = crate::predict::load("learned").unwrap();
        q.predict(&h, &mut again);
        assert_eq!(heat.score(10), again.score(10), "the model's score");
        assert!(heat.score(40) > 0.4, "still seeded: {}", heat.score(40));
    }
}
