//! Trace replay: runs a block trace through the same profiler, predictor
//! and placement engine ([`crate::place::Placer`]) as the daemon, at the
//! daemon's cadence (an epoch every `epoch_secs` of trace time, moves
//! copied at `migration_mibps` and served from the old tier until done),
//! against a per-tier latency model taken from the tiers'
//! `performance_metrics`, and compares with reference policies in the same
//! harness.
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
    config::{Config, PlacementSettings, TierDefinition, TieringPolicy},
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

/// When an epoch ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epoch {
    /// Every this many seconds of trace time, as the daemon's clock
    /// (`daemon.epoch_secs`).
    Secs(f64),
    /// Every this many requests (an explicit option for comparisons that
    /// need a fixed number of requests per epoch).
    Requests(u64),
}

/// What to replay and how.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    pub chunk_size: u64,
    /// Fast-tier capacity as a share of the footprint (overrides the
    /// configured capacity of tier 0).
    pub fast_fraction: Option<f64>,
    pub epoch: Epoch,
    /// Replay starts at this share of the trace (e.g. 0.5: the second half,
    /// held out from training on the first half).
    pub from_fraction: f64,
    /// Replay at most this many requests.
    pub max_requests: Option<usize>,
    pub tiering_policy: TieringPolicy,
    /// Migration bandwidth (`daemon.migration_mibps`, 0 = unlimited): the
    /// epoch's move budget and each move's copy time.
    pub migration_mibps: f64,
    /// The placement engine's tunables (`[placement]`).
    pub placement: PlacementSettings,
    /// Start tierblk's runs from the volume `tierblk play --prefill`
    /// leaves (every chunk written once, placed by the allocation hint,
    /// one epoch before the trace) instead of everything on the slowest
    /// tier. Needs an epoch in seconds.
    pub prefill: bool,
    pub policies: Vec<PolicyKind>,
}

impl ReplayConfig {
    /// The replay of what a daemon with `cfg` does: its epoch length,
    /// migration rate and placement tunables.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            epoch: Epoch::Secs(cfg.daemon.epoch_secs),
            migration_mibps: cfg.daemon.migration_mibps,
            placement: cfg.placement,
            ..Self::default()
        }
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            fast_fraction: Some(0.1),
            epoch: Epoch::Secs(10.0),
            from_fraction: 0.0,
            max_requests: None,
            tiering_policy: TieringPolicy::PerformanceOptimized,
            migration_mibps: 64.0,
            placement: PlacementSettings::default(),
            prefill: false,
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
    match cfg.epoch {
        Epoch::Requests(0) => {
            return Err(Error::Invalid(
                "epoch length must be at least one request".into(),
            ))
        }
        Epoch::Secs(s) if !(s.is_finite() && s > 0.0) => {
            return Err(Error::Invalid(format!(
                "epoch length {s} s: must be a positive number of seconds"
            )))
        }
        _ => {}
    }
    if !(cfg.migration_mibps.is_finite() && cfg.migration_mibps >= 0.0) {
        return Err(Error::Invalid(format!(
            "migration rate {} MiB/s: must be a non-negative number (0 = unlimited)",
            cfg.migration_mibps
        )));
    }
    cfg.placement.validate()?;
    if cfg.prefill && matches!(cfg.epoch, Epoch::Requests(_)) {
        return Err(Error::Invalid(
            "prefill models the daemon's clock: give the epoch in seconds, not requests".into(),
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
    let times: Vec<f64> = requests.iter().map(|r| r.ts_s).collect();
    let ctx = policies::Context {
        accesses: &accesses,
        times: &times,
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
        epoch_requests: match cfg.epoch {
            Epoch::Requests(n) => Some(n),
            Epoch::Secs(_) => None,
        },
        epoch_secs: match cfg.epoch {
            Epoch::Secs(s) => Some(s),
            Epoch::Requests(_) => None,
        },
        migration_mibps: cfg.migration_mibps,
        demand_promotion: cfg.placement.demand_promotion,
        prefill: cfg.prefill,
        tiering_policy: cfg.tiering_policy.to_string(),
        runs,
    })
}

/// Loads the configuration whose tiers, daemon settings and placement
/// tunables replay uses: a config file, or the shipped example.
pub fn load_config(config: Option<&Path>) -> Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::parse(DEFAULT_CONFIG)?,
    })
}

/// Loads the tiers to replay on: from a config file, or the shipped
/// example configuration.
pub fn load_tiers(config: Option<&Path>) -> Result<Vec<TierDefinition>> {
    let cfg = load_config(config)?;
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

/// Replays a trace file on `tiers`.
pub fn replay_file(path: &Path, tiers: &[TierDefinition], cfg: &ReplayConfig) -> Result<Report> {
    let reqs = replay_slice(path, cfg.from_fraction, cfg.max_requests)?;
    let name = path
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| path.to_path_buf());
    replay(&name.display().to_string(), &reqs, tiers, cfg)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        meta::Store, place::Move, predict::learned::train::Rng, tier::TierSet, trace::Op,
        volume::Volume,
    };

    const SMALL_TIERS: &str = r#"
[[tier]]
tier_id = 0
name = "t0"
capacity = "256KiB"
cost_per_gb = 0.3
path = "t0"
performance_metrics = { read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }
[[tier]]
tier_id = 1
name = "t1"
capacity = "1MiB"
cost_per_gb = 0.1
path = "t1"
performance_metrics = { read_latency_us = 2, write_latency_us = 2, bandwidth_mibps = 1 }
[[tier]]
tier_id = 2
name = "t2"
capacity = "4MiB"
cost_per_gb = 0.01
path = "t2"
performance_metrics = { read_latency_us = 3, write_latency_us = 3, bandwidth_mibps = 1 }
[[volume]]
name = "v"
size = "2MiB"
chunk_size = "64KiB"
socket = "/tmp/unused"
tiering_policy = "default"
"#;

    /// The plans tierblk's pipeline made at each epoch of a replay.
    fn replay_plans(
        requests: &[Request],
        tiers: &[TierDefinition],
        cfg: &ReplayConfig,
    ) -> Vec<Vec<Move>> {
        let mut tiers: Vec<&TierDefinition> = tiers.iter().collect();
        tiers.sort_by_key(|t| t.tier_id);
        let space = ChunkSpace::build(requests, cfg.chunk_size);
        let accesses = space.accesses(requests);
        let mut capacity: Vec<u64> = tiers
            .iter()
            .map(|t| t.capacity.0 / cfg.chunk_size)
            .collect();
        *capacity.last_mut().unwrap() = u64::MAX;
        let latency = LatencyModel::new(&tiers);
        let times: Vec<f64> = requests.iter().map(|r| r.ts_s).collect();
        let ctx = policies::Context {
            accesses: &accesses,
            times: &times,
            footprint: space.len(),
            capacity: &capacity,
            tiers: &tiers,
            latency: &latency,
            cfg,
        };
        let (_, p) =
            policies::run_predictive(&ctx, "x".into(), crate::predict::load("ewma").unwrap())
                .unwrap();
        p.plans
    }

    #[test]
    fn daemon_brain_and_replay_make_the_same_placement_decisions() {
        const CHUNK: u64 = 64 << 10;
        const EPOCHS: usize = 12;
        let dir = tempfile::tempdir().unwrap();
        let text = SMALL_TIERS.replace(
            "path = \"t",
            &format!("path = \"{}/t", dir.path().display()),
        );
        let cfg = Config::parse(&text).unwrap();
        for t in &cfg.tiers {
            std::fs::create_dir_all(&t.path).unwrap();
        }
        // One access sequence: epoch 0 touches every chunk once, later
        // epochs a hot set that moves, over a cold background.
        let mut rng = Rng::new(7);
        let mut epochs: Vec<Vec<u32>> = vec![(0..32).collect()];
        for e in 1..EPOCHS {
            let hot = (e as u32 / 4) * 5;
            let mut ev = Vec::new();
            for _ in 0..60 {
                let c = if rng.below(4) == 0 {
                    rng.below(32) as u32
                } else {
                    hot + rng.below(5) as u32
                };
                ev.push(c);
            }
            epochs.push(ev);
        }
        // The daemon: a real volume, its chunks written cold first.
        let store = Arc::new(Store::open(&dir.path().join("state")).unwrap());
        let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
        let v = Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap());
        for c in 0..32u32 {
            v.set_score(c, 0.0);
            v.write_at(c as u64 * CHUNK, &[1u8; 4096]).unwrap();
        }
        let mut brain = crate::epoch::ewma_brain(&v);
        let mut daemon_plans = Vec::new();
        let mut demand = 0;
        for ev in &epochs {
            for &c in ev {
                // What a queue thread does for a guest read, then the
                // brain's next round of misses (replay posts each miss to
                // the placer as it happens).
                let (off, mut segs) = (c as u64 * CHUNK, Vec::new());
                v.record_access(false, off, 4096, false);
                v.map_read(off, 4096, &mut segs).unwrap();
                v.count_served(false, &segs);
                v.release(&segs);
                brain.serve_misses(usize::MAX);
            }
            let r = brain.run_epoch();
            demand += r.demand.moves.promoted;
            assert_eq!(
                (
                    r.moves.skipped,
                    r.moves.failed,
                    r.demand.moves.skipped,
                    r.demand.moves.failed
                ),
                (0, 0, 0, 0),
                "{:?} {:?}",
                brain.last_plan(),
                (0..32)
                    .map(|c| v.block_metadata(c).tier)
                    .collect::<Vec<_>>()
            );
            daemon_plans.push(brain.last_plan().to_vec());
        }
        // The replay: the same accesses as a trace, one epoch per second.
        let mut reqs = Vec::new();
        for (e, ev) in epochs.iter().enumerate() {
            for (i, &c) in ev.iter().enumerate() {
                reqs.push(Request {
                    ts_s: e as f64 + i as f64 / (ev.len() + 1) as f64,
                    dev: 0,
                    op: Op::Read,
                    offset: c as u64 * CHUNK,
                    len: 4096,
                });
            }
        }
        // A last request closes the last epoch.
        reqs.push(Request {
            ts_s: EPOCHS as f64,
            dev: 0,
            op: Op::Read,
            offset: 0,
            len: 4096,
        });
        let rcfg = ReplayConfig {
            chunk_size: CHUNK,
            fast_fraction: None,
            tiering_policy: TieringPolicy::Default,
            migration_mibps: 0.0,
            policies: vec![],
            ..ReplayConfig::from_config(&Config {
                daemon: crate::config::DaemonSettings {
                    epoch_secs: 1.0,
                    ..Default::default()
                },
                ..cfg.clone()
            })
        };
        assert_eq!(rcfg.epoch, Epoch::Secs(1.0));
        let replay_plans = replay_plans(&reqs, &cfg.tiers, &rcfg);
        assert_eq!(replay_plans.len(), EPOCHS);
        let moved: usize = daemon_plans.iter().map(Vec::len).sum();
        assert!(
            moved > 10 && demand > 5,
            "the sequence exercises placement ({demand} promoted on demand): {daemon_plans:?}"
        );
        for (e, (d, r)) in daemon_plans.iter().zip(&replay_plans).enumerate() {
            assert_eq!(d, r, "epoch {e}: daemon and replay planned differently");
        }
    }

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
            epoch: Epoch::Requests(250),
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
    fn the_lru_baseline_through_the_placer_is_lru() {
        // `prediction_model = "lru"` runs the daemon's own placer with no
        // prediction; with instant moves it is the textbook LRU, except
        // that it fills free room in tier 0 at epochs, and that hits on tier 0 reach the placer's recency list once per
        // epoch (the data path posts misses only), as in the daemon.
        let reqs = slice();
        let tiers = load_tiers(None).unwrap();
        let cfg = ReplayConfig {
            chunk_size: 64 << 10,
            migration_mibps: 0.0,
            policies: vec![PolicyKind::Predictive("lru".into()), PolicyKind::Lru],
            ..ReplayConfig::default()
        };
        let r = replay("hm_0 slice", &reqs, &tiers, &cfg).unwrap();
        let (placer, lru) = (&r.runs[0], &r.runs[1]);
        assert_eq!(placer.policy, "tierblk-lru");
        assert!(lru.fast_hits > 0);
        let gap = placer.fast_hits.abs_diff(lru.fast_hits) as f64 / lru.fast_hits as f64;
        assert!(gap < 0.02, "{placer:?} against {lru:?}");
        // A flat heat map predicts no hot set to deviate from.
        assert_eq!(placer.early_epochs, 0);
    }

    #[test]
    fn bad_replay_parameters_are_rejected_with_reasons() {
        let reqs = slice();
        let tiers = load_tiers(None).unwrap();
        let bad = |cfg: ReplayConfig| replay("x", &reqs, &tiers, &cfg).unwrap_err().to_string();
        assert!(bad(ReplayConfig {
            epoch: Epoch::Requests(0),
            ..Default::default()
        })
        .contains("epoch"));
        assert!(bad(ReplayConfig {
            epoch: Epoch::Secs(0.0),
            ..Default::default()
        })
        .contains("epoch"));
        assert!(bad(ReplayConfig {
            migration_mibps: -1.0,
            ..Default::default()
        })
        .contains("migration"));
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
