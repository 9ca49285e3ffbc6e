//! Trace replay: runs a block trace through the same profiler, predictor
//! and placement code as the daemon, against a simulated clock and a
//! per-tier latency model taken from the tiers' `performance_metrics`, and
//! compares with reference policies in the same harness.
//!
//! Definitions shared by every policy (and by `benches/libcachesim_baseline.py`):
//! - one *access* is one chunk touched by one request (a request spanning
//!   three chunks is three accesses);
//! - the *footprint* is the number of distinct chunks the replayed requests
//!   touch; the fast tier holds `fast_fraction × footprint` chunks (floor,
//!   at least one) when `fast_fraction` is given;
//! - the *fast-tier hit ratio* is the share of accesses served by tier 0;
//! - every chunk starts on the slowest tier, which is the backing store and
//!   is never full; promotions and demotions move whole chunks.

mod latency;
mod policies;
mod report;

use std::path::{Path, PathBuf};

pub use latency::LatencyModel;
pub use policies::PolicyKind;
pub use report::{Report, RunReport};

use crate::{
    config::{Config, TierDefinition, TieringPolicy},
    place::FastTierConfig,
    trace::{self, ChunkSpace, Request},
};

/// Errors of the replay harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Trace(#[from] trace::Error),
    #[error(transparent)]
    Predict(#[from] crate::predict::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("replay: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The example configuration shipped with tierblk; replay uses its tiers
/// when no configuration is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub chunk_size: u64,
    /// Fast-tier capacity as a share of the footprint (overrides the
    /// configured capacity of tier 0).
    pub fast_fraction: Option<f64>,
    /// Requests per profiling epoch.
    pub epoch_requests: u64,
    /// Replay starts at this share of the trace (e.g. 0.5: the second half,
    /// held out from training on the first half).
    pub from_fraction: f64,
    /// Replay at most this many requests.
    pub max_requests: Option<usize>,
    pub tiering_policy: TieringPolicy,
    /// Migration budget per epoch, as a share of the fast tier's capacity.
    pub budget_fraction: f64,
    /// Score a promotion must beat the displaced chunk by.
    pub margin: f32,
    /// How tierblk's runs manage the fastest tier.
    pub fast_tier: FastTierConfig,
    pub policies: Vec<PolicyKind>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            fast_fraction: Some(0.1),
            epoch_requests: 1000,
            from_fraction: 0.0,
            max_requests: None,
            tiering_policy: TieringPolicy::PerformanceOptimized,
            budget_fraction: 0.5,
            margin: 0.05,
            fast_tier: FastTierConfig::default(),
            policies: vec![
                PolicyKind::Predictive("learned".into()),
                PolicyKind::Predictive("ewma".into()),
                PolicyKind::NoTiering,
                PolicyKind::AllFast,
                PolicyKind::Lru,
                PolicyKind::Oracle,
            ],
        }
    }
}

/// The requests of `path` that a replay with `cfg` uses.
pub fn replay_slice(path: &Path, from_fraction: f64, max: Option<usize>) -> Result<Vec<Request>> {
    if !(0.0..1.0).contains(&from_fraction) {
        return Err(Error::Invalid(format!(
            "--from {from_fraction}: must be in [0, 1)"
        )));
    }
    let reqs = trace::read_all(path)?;
    let start = ((reqs.len() as f64) * from_fraction).floor() as usize;
    let end = reqs
        .len()
        .min(start.saturating_add(max.unwrap_or(usize::MAX)));
    Ok(reqs[start..end].to_vec())
}

/// Fast-tier capacity in chunks for a footprint.
pub fn fast_chunks(footprint: usize, fraction: f64) -> u64 {
    ((footprint as f64 * fraction).floor() as u64).max(1)
}

/// Replays `requests` (named `name` in the report) over `tiers` (any
/// order; sorted fastest first here).
pub fn replay(
    name: &str,
    requests: &[Request],
    tiers: &[TierDefinition],
    cfg: &ReplayConfig,
) -> Result<Report> {
    if tiers.is_empty() {
        return Err(Error::Invalid("no tiers to replay on".into()));
    }
    if cfg.epoch_requests == 0 {
        return Err(Error::Invalid(
            "epoch length must be at least one request".into(),
        ));
    }
    if !cfg.chunk_size.is_power_of_two() || cfg.chunk_size < 512 {
        return Err(Error::Invalid(format!(
            "chunk size {}: must be a power of two ≥ 512",
            cfg.chunk_size
        )));
    }
    let mut tiers: Vec<&TierDefinition> = tiers.iter().collect();
    tiers.sort_by_key(|t| t.tier_id);
    let space = ChunkSpace::build(requests, cfg.chunk_size);
    let accesses = space.accesses(requests);
    let footprint = space.len();
    if footprint == 0 {
        return Err(Error::Invalid(format!(
            "trace {name}: no request touches any data"
        )));
    }
    let mut capacity: Vec<u64> = tiers
        .iter()
        .map(|t| t.capacity.0 / cfg.chunk_size)
        .collect();
    if let Some(f) = cfg.fast_fraction {
        if !(f > 0.0 && f <= 1.0) {
            return Err(Error::Invalid(format!(
                "fast fraction {f}: must be in (0, 1]"
            )));
        }
        capacity[0] = fast_chunks(footprint, f);
    }
    let last = capacity.len() - 1;
    capacity[last] = u64::MAX;
    if capacity[0] == 0 {
        return Err(Error::Invalid(format!(
            "tier '{}' holds no whole {}-byte chunk",
            tiers[0].name, cfg.chunk_size
        )));
    }
    let latency = LatencyModel::new(&tiers);
    let ctx = policies::Context {
        accesses: &accesses,
        footprint,
        capacity: &capacity,
        tiers: &tiers,
        latency: &latency,
        cfg,
    };
    let mut runs = Vec::new();
    for p in &cfg.policies {
        runs.push(policies::run(&ctx, p)?);
    }
    Ok(Report {
        trace: name.to_string(),
        requests: requests.len() as u64,
        accesses: accesses.len() as u64,
        chunk_size: cfg.chunk_size,
        footprint_chunks: footprint as u64,
        fast_capacity_chunks: capacity[0],
        epoch_requests: cfg.epoch_requests,
        tiering_policy: cfg.tiering_policy.to_string(),
        runs,
    })
}

/// Loads the tiers to replay on: from a config file, or the shipped
/// example configuration.
pub fn load_tiers(config: Option<&Path>) -> Result<Vec<TierDefinition>> {
    let cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::parse(DEFAULT_CONFIG)?,
    };
    if cfg.tiers.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no [[tier]] to replay on",
            config
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "default config".into())
        )));
    }
    Ok(cfg.tiers)
}

/// Replays a trace file.
pub fn replay_file(path: &Path, config: Option<&Path>, cfg: &ReplayConfig) -> Result<Report> {
    let tiers = load_tiers(config)?;
    let reqs = replay_slice(path, cfg.from_fraction, cfg.max_requests)?;
    let name = path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| path.to_path_buf());
    replay(&name.display().to_string(), &reqs, &tiers, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simplest LRU there is: a recency list searched linearly.
    fn reference_lru_hits(accesses: &[trace::Access], capacity: usize) -> u64 {
        let mut list: Vec<u32> = Vec::new(); // most recent last
        let mut hits = 0;
        for a in accesses {
            if let Some(pos) = list.iter().position(|&c| c == a.chunk) {
                hits += 1;
                list.remove(pos);
            } else if list.len() == capacity {
                list.remove(0);
            }
            list.push(a.chunk);
        }
        hits
    }

    fn slice() -> Vec<Request> {
        let mut reqs = trace::read_all(&trace::vendored_trace("msr_hm_0_excerpt.csv")).unwrap();
        reqs.truncate(3000);
        reqs
    }

    #[test]
    fn replay_of_real_slice_keeps_invariants_and_lru_matches_reference() {
        let reqs = slice();
        let tiers = load_tiers(None).unwrap();
        let cfg = ReplayConfig {
            chunk_size: 64 << 10,
            epoch_requests: 250,
            policies: vec![
                PolicyKind::Predictive("ewma".into()),
                PolicyKind::NoTiering,
                PolicyKind::AllFast,
                PolicyKind::Lru,
                PolicyKind::Oracle,
            ],
            ..ReplayConfig::default()
        };
        let r = replay("hm_0 slice", &reqs, &tiers, &cfg).unwrap();
        let space = ChunkSpace::build(&reqs, cfg.chunk_size);
        assert_eq!(r.footprint_chunks as usize, space.len());
        assert_eq!(r.fast_capacity_chunks, fast_chunks(space.len(), 0.1));
        let by = |n: &str| r.runs.iter().find(|x| x.policy == n).unwrap();
        for run in &r.runs {
            assert!((0.0..=1.0).contains(&run.hit_ratio), "{run:?}");
            assert_eq!(run.accesses, r.accesses);
            assert!(run.p99_latency_us >= run.mean_latency_us * 0.0 && run.mean_latency_us > 0.0);
            if run.policy != "all-fast" {
                assert!(run.max_fast_chunks <= r.fast_capacity_chunks, "{run:?}");
            }
        }
        assert_eq!(by("no-tiering").hit_ratio, 0.0);
        assert_eq!(by("all-fast").hit_ratio, 1.0);
        assert!(by("all-fast").mean_latency_us < by("no-tiering").mean_latency_us);
        assert!(by("all-fast").cost_per_month > by("no-tiering").cost_per_month);
        let accesses = space.accesses(&reqs);
        let reference = reference_lru_hits(&accesses, r.fast_capacity_chunks as usize);
        assert_eq!(by("lru").fast_hits, reference);
        assert!(by("oracle").fast_hits >= by("lru").fast_hits);
        assert!(by("tierblk-ewma").fast_hits > 0);
    }

    #[test]
    fn bad_replay_parameters_are_rejected_with_reasons() {
        let reqs = slice();
        let tiers = load_tiers(None).unwrap();
        let bad = |cfg: ReplayConfig| replay("x", &reqs, &tiers, &cfg).unwrap_err().to_string();
        assert!(bad(ReplayConfig {
            epoch_requests: 0,
            ..Default::default()
        })
        .contains("epoch"));
        assert!(bad(ReplayConfig {
            chunk_size: 1000,
            ..Default::default()
        })
        .contains("power of two"));
        assert!(bad(ReplayConfig {
            fast_fraction: Some(1.5),
            ..Default::default()
        })
        .contains("fast fraction"));
        let e = replay("x", &reqs, &[], &ReplayConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tiers"), "{e}");
        assert!(replay_slice(Path::new("/nonexistent.csv"), 0.0, None).is_err());
        assert!(replay_slice(Path::new("/nonexistent.csv"), 1.0, None)
            .unwrap_err()
            .to_string()
            .contains("--from"));
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!("lru".parse::<PolicyKind>().unwrap(), PolicyKind::Lru);
        assert_eq!(
            "tierblk:gru".parse::<PolicyKind>().unwrap(),
            PolicyKind::Predictive("gru".into())
        );
        assert_eq!(
            PolicyKind::Predictive("/x/my.bpk".into()).name(),
            "tierblk-my"
        );
    }
}
