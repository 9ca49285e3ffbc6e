//! Training: replays traces through the profiler, labels each epoch's
//! candidate chunks with their accesses in the next `horizon` epochs, and
//! fits the network with Adam on a binary cross-entropy against soft
//! targets `1 - 2^-x`, where `x` is the accesses of the following epochs
//! discounted by [`HORIZON_DISCOUNT`] per epoch (with horizon 1: one
//! access → 0.5, two → 0.75, …). A horizon beyond one epoch aligns the
//! score with cache value: a chunk reused two epochs from now is worth
//! keeping on the fast tier, one never reused is not.
//!
//! Reproducible: the weights' initialisation, the example sampling and the
//! batch order all derive from one seed, and the CPU backend runs on one
//! thread, so the same inputs and seed give bit-identical weights.

use std::path::PathBuf;

use burn::{
    module::Module,
    optim::{AdamConfig, GradientsParams},
    tensor::{activation, Device, Tensor, TensorData},
};

use super::{
    file::{ModelHeader, FORMAT_VERSION},
    model::{Arch, Net},
    LearnedPredictor,
};
use crate::{
    predict::{
        features::{chunk_features, sequence_features, Candidates, N_FEATURES, N_STEP_FEATURES},
        Error, Result,
    },
    profile::{ChunkCounters, History, HISTORY_EPOCHS},
    trace::{self, ChunkSpace, Request},
};

/// What and how to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub traces: Vec<PathBuf>,
    pub chunk_sizes: Vec<u64>,
    /// Requests per profiling epoch.
    pub epoch_requests: u64,
    /// Share of each trace (from its start) used; the rest is held out.
    pub train_fraction: f64,
    /// Use at most this many requests of each trace (after the fraction).
    pub max_requests: Option<usize>,
    pub arch: Arch,
    pub hidden: usize,
    pub seed: u64,
    /// Passes over the examples.
    pub passes: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Examples kept per (trace, chunk size), sampled uniformly.
    pub max_examples: usize,
    /// Epochs ahead the target counts accesses over.
    pub horizon: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            traces: Vec::new(),
            chunk_sizes: vec![64 << 10, 1 << 20],
            epoch_requests: 1000,
            train_fraction: 0.5,
            max_requests: None,
            arch: Arch::Mlp,
            hidden: 32,
            seed: 42,
            passes: 4,
            batch_size: 512,
            learning_rate: 3e-3,
            max_examples: 100_000,
            horizon: 1,
        }
    }
}

/// Labelled examples in the flat and sequence layouts.
#[derive(Debug, Default, Clone)]
pub struct Examples {
    pub flat: Vec<f32>,
    pub seq: Vec<f32>,
    pub target: Vec<f32>,
}

const SEQ_W: usize = HISTORY_EPOCHS * N_STEP_FEATURES;

impl Examples {
    pub fn len(&self) -> usize {
        self.target.len()
    }

    pub fn is_empty(&self) -> bool {
        self.target.is_empty()
    }

    fn push_from(&mut self, other: &Examples, i: usize) {
        self.flat
            .extend_from_slice(&other.flat[i * N_FEATURES..(i + 1) * N_FEATURES]);
        self.seq
            .extend_from_slice(&other.seq[i * SEQ_W..(i + 1) * SEQ_W]);
        self.target.push(other.target[i]);
    }
}

/// splitmix64: small, seedable, good enough for sampling and shuffling.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Weight of accesses one epoch further ahead in the training target.
pub const HORIZON_DISCOUNT: f32 = 0.5;

/// Soft target for `accesses` in the next epoch.
pub fn soft_target(accesses: u16) -> f32 {
    soft_target_of(accesses as f32)
}

/// Soft target for a (discounted) access count.
pub fn soft_target_of(x: f32) -> f32 {
    1.0 - 0.5f32.powf(x.clamp(0.0, 30.0))
}

/// Rows of one epoch waiting for their label.
struct PendingEpoch {
    chunks: Vec<u32>,
    rows: Examples,
    /// Discounted accesses seen so far per row.
    acc: Vec<f32>,
    /// Epochs of the horizon already counted.
    seen: usize,
}

/// Labelled examples from one request list at one chunk size: every
/// epoch's candidates, plus as many idle chunks (sampled) as there are
/// candidates, labelled by the accesses of the next `horizon` epochs
/// (rows whose horizon runs past the end of the trace are dropped).
pub fn examples_from(
    requests: &[Request],
    chunk_size: u64,
    epoch_requests: u64,
    horizon: usize,
    rng: &mut Rng,
) -> Examples {
    let space = ChunkSpace::build(requests, chunk_size);
    let accesses = space.accesses(requests);
    let n = space.len();
    let horizon = horizon.max(1);
    let mut ex = Examples::default();
    if n == 0 {
        return ex;
    }
    let counters = ChunkCounters::new(n);
    let mut history = History::new(n);
    let mut cand = Candidates::default();
    let mut pending: std::collections::VecDeque<PendingEpoch> = Default::default();
    let mut stat = [0f32; N_FEATURES];
    let mut req_in_epoch = 0u64;
    let mut close_epoch =
        |counters: &ChunkCounters, history: &mut History, ex: &mut Examples, rng: &mut Rng| {
            history.fold(counters);
            // Add this epoch's accesses to the rows still inside their horizon.
            for p in pending.iter_mut() {
                let w = HORIZON_DISCOUNT.powi(p.seen as i32);
                for (r, &c) in p.chunks.iter().enumerate() {
                    p.acc[r] += w * history.count(c as usize, 0) as f32;
                }
                p.seen += 1;
            }
            while pending.front().is_some_and(|p| p.seen == horizon) {
                let mut p = pending.pop_front().expect("front exists");
                for (r, &a) in p.acc.iter().enumerate() {
                    p.rows.target[r] = soft_target_of(a);
                    ex.push_from(&p.rows, r);
                }
            }
            cand.collect(history);
            let mut chunks = cand.chunks.clone();
            let n_idle = cand.chunks.len().min(n - cand.chunks.len());
            for _ in 0..n_idle {
                let c = rng.below(n);
                if !cand.contains(c) {
                    chunks.push(c as u32);
                }
            }
            let mut rows = Examples::default();
            for &c in &chunks {
                let mut row = [0f32; N_FEATURES];
                let mut seq = [0f32; SEQ_W];
                chunk_features(history, Some(c as usize), &mut row);
                sequence_features(history, Some(c as usize), &mut seq, &mut stat);
                rows.flat.extend_from_slice(&row);
                rows.seq.extend_from_slice(&seq);
                rows.target.push(0.0);
            }
            let acc = vec![0.0; chunks.len()];
            pending.push_back(PendingEpoch {
                chunks,
                rows,
                acc,
                seen: 0,
            });
        };
    for a in &accesses {
        if a.first {
            if req_in_epoch == epoch_requests {
                close_epoch(&counters, &mut history, &mut ex, rng);
                req_in_epoch = 0;
            }
            req_in_epoch += 1;
        }
        a.record(&counters);
    }
    close_epoch(&counters, &mut history, &mut ex, rng);
    ex
}

/// Keeps a uniform sample of at most `max` examples (order preserved).
fn subsample(ex: Examples, max: usize, rng: &mut Rng) -> Examples {
    if ex.len() <= max {
        return ex;
    }
    let mut idx: Vec<usize> = (0..ex.len()).collect();
    rng.shuffle(&mut idx);
    idx.truncate(max);
    idx.sort_unstable();
    let mut out = Examples::default();
    for i in idx {
        out.push_from(&ex, i);
    }
    out
}

/// The requests of `path` used for training: the first `fraction` of
/// them, capped at `max`.
pub fn training_slice(
    path: &std::path::Path,
    fraction: f64,
    max: Option<usize>,
) -> Result<Vec<Request>> {
    let mut reqs = trace::read_all(path)?;
    let keep = ((reqs.len() as f64) * fraction.clamp(0.0, 1.0)).floor() as usize;
    reqs.truncate(keep.min(max.unwrap_or(usize::MAX)));
    Ok(reqs)
}

/// Builds the training set described by `cfg`.
pub fn build_examples(cfg: &TrainConfig) -> Result<Examples> {
    if cfg.traces.is_empty() {
        return Err(Error::Training("no training traces given".into()));
    }
    if cfg.epoch_requests == 0 {
        return Err(Error::Training(
            "epoch length must be at least one request".into(),
        ));
    }
    let mut rng = Rng::new(cfg.seed ^ 0x7453_4d50);
    let mut all = Examples::default();
    for t in &cfg.traces {
        let reqs = training_slice(t, cfg.train_fraction, cfg.max_requests)?;
        for &cs in &cfg.chunk_sizes {
            let ex = examples_from(&reqs, cs, cfg.epoch_requests, cfg.horizon, &mut rng);
            let ex = subsample(ex, cfg.max_examples, &mut rng);
            log::info!("{}: chunk {cs}: {} examples", t.display(), ex.len());
            for i in 0..ex.len() {
                all.push_from(&ex, i);
            }
        }
    }
    if all.is_empty() {
        return Err(Error::Training(
            "the training traces produced no examples".into(),
        ));
    }
    Ok(all)
}

fn batch_tensors(
    ex: &Examples,
    idx: &[usize],
    arch: Arch,
    device: &Device,
) -> (Tensor<2>, Option<Tensor<3>>, Tensor<2>) {
    let b = idx.len();
    let mut flat = Vec::with_capacity(b * N_FEATURES);
    let mut seq = Vec::with_capacity(if arch == Arch::Gru { b * SEQ_W } else { 0 });
    let mut y = Vec::with_capacity(b);
    for &i in idx {
        flat.extend_from_slice(&ex.flat[i * N_FEATURES..(i + 1) * N_FEATURES]);
        if arch == Arch::Gru {
            seq.extend_from_slice(&ex.seq[i * SEQ_W..(i + 1) * SEQ_W]);
        }
        y.push(ex.target[i]);
    }
    let flat = Tensor::<2>::from_data(TensorData::new(flat, [b, N_FEATURES]), device);
    let seq = (arch == Arch::Gru).then(|| {
        Tensor::<3>::from_data(
            TensorData::new(seq, [b, HISTORY_EPOCHS, N_STEP_FEATURES]),
            device,
        )
    });
    let y = Tensor::<2>::from_data(TensorData::new(y, [b, 1]), device);
    (flat, seq, y)
}

/// Binary cross-entropy on logits, numerically stable.
fn bce_with_logits(logits: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    let pos = activation::log_sigmoid(logits.clone());
    let neg = activation::log_sigmoid(logits.neg());
    let ones = y.ones_like();
    (y.clone().mul(pos) + (ones - y).mul(neg)).neg().mean()
}

/// Mean loss of `net` over `idx`.
fn eval_loss(net: &Net, ex: &Examples, idx: &[usize], arch: Arch, device: &Device) -> f32 {
    if idx.is_empty() {
        return f32::NAN;
    }
    let mut total = 0.0f64;
    for b in idx.chunks(8192) {
        let (x, s, y) = batch_tensors(ex, b, arch, device);
        let l = bce_with_logits(net.forward_rows(x, s), y);
        let v: Vec<f32> = l.into_data().try_into_vec::<f32>().unwrap_or_default();
        total += v.first().copied().unwrap_or(f32::NAN) as f64 * b.len() as f64;
    }
    (total / idx.len() as f64) as f32
}

/// Trains on prepared examples; 10% of them (sampled) are held out for the
/// validation loss in the header.
pub fn train_on(ex: &Examples, cfg: &TrainConfig) -> Result<LearnedPredictor> {
    if ex.is_empty() {
        return Err(Error::Training("no examples".into()));
    }
    if cfg.hidden < 2 || cfg.batch_size == 0 || cfg.passes == 0 {
        return Err(Error::Training(
            "hidden size ≥ 2, batch size ≥ 1 and passes ≥ 1 are required".into(),
        ));
    }
    let mut rng = Rng::new(cfg.seed);
    let mut idx: Vec<usize> = (0..ex.len()).collect();
    rng.shuffle(&mut idx);
    let n_valid = ex.len() / 10;
    let (valid, train) = idx.split_at(n_valid);
    let mut train = train.to_vec();

    let device = Device::flex().autodiff();
    let mut net = Net::seeded(cfg.arch, cfg.hidden, &device, cfg.seed);
    let mut optim = AdamConfig::new().init();
    let mut last_loss = f32::NAN;
    for pass in 0..cfg.passes {
        rng.shuffle(&mut train);
        let mut sum = 0.0f64;
        let mut batches = 0usize;
        for b in train.chunks(cfg.batch_size) {
            let (x, s, y) = batch_tensors(ex, b, cfg.arch, &device);
            let loss = bce_with_logits(net.forward_rows(x, s), y);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            if batches.is_multiple_of(64) {
                let v: Vec<f32> = loss.into_data().try_into_vec::<f32>().unwrap_or_default();
                sum += v.first().copied().unwrap_or(f32::NAN) as f64;
            }
            net = optim.step(cfg.learning_rate, net, grads);
            batches += 1;
        }
        last_loss = (sum / batches.div_ceil(64) as f64) as f32;
        log::info!(
            "pass {}/{}: train loss ≈ {last_loss:.4}",
            pass + 1,
            cfg.passes
        );
    }
    let net = net.valid();
    let valid_loss = eval_loss(&net, ex, valid, cfg.arch, &Device::flex());
    let header = ModelHeader {
        format_version: FORMAT_VERSION,
        arch: cfg.arch,
        hidden: cfg.hidden,
        n_features: N_FEATURES,
        history_epochs: HISTORY_EPOCHS,
        seed: cfg.seed,
        epoch_requests: cfg.epoch_requests,
        chunk_sizes: cfg.chunk_sizes.clone(),
        trained_on: cfg.traces.iter().map(|p| p.display().to_string()).collect(),
        train_fraction: cfg.train_fraction,
        examples: ex.len(),
        train_loss: last_loss,
        valid_loss,
        horizon: cfg.horizon.max(1),
    };
    Ok(LearnedPredictor::new(header, net))
}

/// Builds the examples and trains.
pub fn train(cfg: &TrainConfig) -> Result<LearnedPredictor> {
    let ex = build_examples(cfg)?;
    train_on(&ex, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores of a fixed set of feature rows: equal for equal weights.
    fn fingerprint(p: &LearnedPredictor) -> Vec<u32> {
        let mut rng = Rng::new(99);
        let rows = 64;
        let flat: Vec<f32> = (0..rows * N_FEATURES)
            .map(|_| rng.below(400) as f32 / 100.0)
            .collect();
        let seq: Vec<f32> = (0..rows * SEQ_W)
            .map(|_| rng.below(400) as f32 / 100.0)
            .collect();
        p.score_rows(&flat, &seq, rows)
            .iter()
            .map(|s| s.to_bits())
            .collect()
    }

    #[test]
    fn training_twice_with_same_seed_gives_identical_weights() {
        let _burn = crate::predict::learned::burn_test_lock();
        let cfg = TrainConfig {
            traces: vec![trace::vendored_trace("msr_hm_0_excerpt.csv")],
            chunk_sizes: vec![1 << 20],
            epoch_requests: 200,
            train_fraction: 1.0,
            max_requests: Some(2000),
            hidden: 8,
            passes: 1,
            batch_size: 256,
            max_examples: 2000,
            ..TrainConfig::default()
        };
        let a = train(&cfg).unwrap();
        let b = train(&cfg).unwrap();
        assert!(a.header().examples > 100, "{}", a.header().examples);
        assert!(a.header().valid_loss.is_finite());
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = train(&TrainConfig { seed: 7, ..cfg }).unwrap();
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn horizon_labels_count_accesses_several_epochs_ahead() {
        use crate::trace::Op;
        // Epochs of one request each (chunk size 4096): chunk 0, then
        // chunks 9, 9, then chunk 0 again, then 9.
        let req = |chunk: u64| Request {
            ts_s: 0.0,
            dev: 0,
            op: Op::Read,
            offset: chunk * 4096,
            len: 4096,
        };
        let reqs: Vec<Request> = [0, 9, 9, 0, 9].iter().map(|&c| req(c)).collect();
        // Row features of chunk 0 after epoch 1: one access, newest epoch.
        let target_of_chunk0_after_first_epoch = |horizon| {
            let ex = examples_from(&reqs, 4096, 1, horizon, &mut Rng::new(1));
            (0..ex.len())
                .find(|&i| {
                    ex.flat[i * N_FEATURES] > 0.0
                        && ex.flat[i * N_FEATURES + 1] == 0.0
                        && ex.flat[i * N_FEATURES + HISTORY_EPOCHS + 6] < 0.1
                })
                .map(|i| ex.target[i])
        };
        assert_eq!(target_of_chunk0_after_first_epoch(1), Some(0.0));
        let t3 = target_of_chunk0_after_first_epoch(3).unwrap();
        assert!((t3 - soft_target_of(0.25)).abs() < 1e-6, "{t3}");
    }

    #[test]
    fn soft_targets_grow_with_accesses() {
        assert_eq!(soft_target(0), 0.0);
        assert_eq!(soft_target(1), 0.5);
        assert!(soft_target(3) > soft_target(2) && soft_target(100) <= 1.0);
    }
}
