//! The per-volume epoch loop ("brain" thread). Every epoch it folds the
//! data path's access counters into the history, predicts the heat map,
//! publishes it as allocation hints, saves it for a warm restart, plans
//! promotions and demotions and carries them out with shadow-clone
//! migrations under the migration rate limit. It never runs per I/O.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use log::{debug, warn};

use crate::{
    migrate::{self, Outcome, RateLimiter},
    place::{self, FastTier, FastTierConfig, Move, PlanInput},
    predict::{HeatMap, Predictor},
    profile::History,
    volume::Volume,
};

/// Hysteresis a promotion must beat the chunk it displaces by.
const PLAN_MARGIN: f32 = 0.1;
/// Upper bound of moves per epoch whatever the rate allows.
const MAX_MOVES_PER_EPOCH: usize = 4096;

/// What one epoch did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochReport {
    pub epoch: u32,
    pub planned: usize,
    pub promoted: usize,
    pub demoted: usize,
    pub skipped: usize,
    pub failed: usize,
}

pub struct Brain {
    volume: Arc<Volume>,
    history: History,
    predictor: Box<dyn Predictor>,
    heat: HeatMap,
    limiter: RateLimiter,
    budget: usize,
    /// Recency and residency of this volume's chunks on the fastest tier.
    fast: FastTier,
}

impl Brain {
    /// `migration_mibps` bounds migration bandwidth; the epoch's move budget
    /// is what that rate copies in one epoch.
    pub fn new(
        volume: Arc<Volume>,
        predictor: Box<dyn Predictor>,
        epoch: Duration,
        migration_mibps: f64,
    ) -> Self {
        let n = volume.chunk_count() as usize;
        let bytes = migration_mibps * 1024.0 * 1024.0 * epoch.as_secs_f64();
        let budget = if migration_mibps <= 0.0 {
            MAX_MOVES_PER_EPOCH
        } else {
            ((bytes / volume.chunk_size() as f64) as usize).clamp(1, MAX_MOVES_PER_EPOCH)
        };
        let heat = HeatMap::from_scores((0..n as u32).map(|c| volume.score(c)).collect());
        let fastest = volume.tiers().ids()[0];
        let fast_chunks = volume
            .tiers()
            .get(fastest)
            .map_or(0, |t| (t.usage().1 / volume.chunk_size()) as usize);
        Self {
            fast: FastTier::new(n, fast_chunks, FastTierConfig::default()),
            history: History::new(n),
            predictor,
            heat,
            limiter: RateLimiter::new(migration_mibps),
            budget,
            volume,
        }
    }

    /// Runs one epoch now.
    pub fn run_epoch(&mut self) -> EpochReport {
        // An owned handle: `self` is borrowed mutably for planning below.
        let volume = Arc::clone(&self.volume);
        let v = &*volume;
        self.history.fold(v.counters());
        self.predictor.predict(&self.history, &mut self.heat);
        for (c, &s) in self.heat.scores().iter().enumerate() {
            v.set_score(c as u32, s);
        }
        if let Err(e) = v.store().put_heatmap(v.name(), &self.heat.to_bytes()) {
            warn!("volume '{}': saving heat map: {e}", v.name());
        }
        let mut report = EpochReport {
            epoch: self.history.epoch(),
            ..Default::default()
        };
        if !v.metadata().tiering_enabled {
            return report;
        }
        let ids = v.tiers().ids();
        let slowest = ids.len() - 1;
        let cs = v.chunk_size();
        // Unallocated chunks count as slowest-tier residents: promoting them
        // is a no-op (migrate skips them) and the slowest tier is unbounded
        // for planning, so they never crowd out real data.
        let current: Vec<u8> = (0..v.chunk_count())
            .map(|c| {
                v.chunk_map()
                    .get(c)
                    .and_then(|m| ids.iter().position(|&i| i == m.tier))
                    .unwrap_or(slowest) as u8
            })
            .collect();
        let capacity: Vec<u64> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if i == slowest {
                    return u64::MAX;
                }
                let (used, total) = v.tiers().get(id).map(|t| t.usage()).unwrap_or((0, 0));
                let mine = current.iter().filter(|&&t| t as usize == i).count() as u64;
                mine + (total - used) / cs
            })
            .collect();
        let moves = self.plan(&current, &capacity);
        report.planned = moves.len();
        for m in &moves {
            let to = ids[m.to as usize];
            match migrate::migrate_chunk(v, m.chunk, to, &mut self.limiter) {
                Ok(Outcome::Moved { .. }) if m.to < m.from => report.promoted += 1,
                Ok(Outcome::Moved { .. }) => report.demoted += 1,
                Ok(Outcome::Skipped(why)) => {
                    // Keep the fast tier's view true to where the chunk is.
                    if m.to == 0 {
                        self.fast.remove(m.chunk);
                    } else if m.from == 0 {
                        self.fast.insert(m.chunk);
                    }
                    debug!(
                        "volume '{}': chunk {} not moved: {why:?}",
                        v.name(),
                        m.chunk
                    );
                    report.skipped += 1;
                }
                Err(e) => {
                    warn!("volume '{}': {e}", v.name());
                    report.failed += 1;
                }
            }
        }
        if report.promoted + report.demoted > 0 {
            // Make this epoch's switches durable and free the old extents,
            // whether or not the guest flushes.
            if let Err(e) = v.flush() {
                warn!("volume '{}': committing migrations: {e}", v.name());
            }
        }
        report
    }

    /// The epoch's moves, tiers as fastest-first indexes. The fastest tier
    /// is managed by `place::FastTier` (recency-protected, evicting the
    /// chunks predicted coldest among the least recently used, prefetching
    /// predicted-hot ones); the slower tiers by `place::plan`'s score
    /// thresholds over the chunks that are not on the fastest tier.
    fn plan(&mut self, current: &[u8], capacity: &[u64]) -> Vec<Move> {
        // Bring the fast tier's view in line with the chunk map, then
        // record this epoch's accesses to its residents.
        for (c, &t) in current.iter().enumerate() {
            let c = c as u32;
            match (t == 0, self.fast.contains(c)) {
                (true, false) => {
                    self.fast.insert(c);
                }
                (false, true) => self.fast.remove(c),
                _ => {}
            }
        }
        for &c in self.history.active() {
            if self.history.count(c as usize, 0) > 0 {
                self.fast.touch(c);
            }
        }
        let mut moves = self
            .fast
            .plan_epoch(&self.heat, current, capacity, self.budget)
            .moves;
        let left = self.budget.saturating_sub(moves.len());
        if left == 0 || capacity.len() < 3 {
            return moves;
        }
        // The slower tiers: chunks not on the fastest tier (after the moves
        // above), as a placement problem over tiers 1.. .
        let mut now = current.to_vec();
        for m in &moves {
            now[m.chunk as usize] = m.to;
        }
        let ids: Vec<u32> = (0..now.len() as u32)
            .filter(|&c| now[c as usize] != 0)
            .collect();
        let sub_heat =
            HeatMap::from_scores(ids.iter().map(|&c| self.heat.score(c as usize)).collect());
        let sub_current: Vec<u8> = ids.iter().map(|&c| now[c as usize] - 1).collect();
        let sub = place::plan(PlanInput {
            policy: self.volume.policy(),
            heat: &sub_heat,
            current: &sub_current,
            capacity: &capacity[1..],
            budget: left,
            margin: PLAN_MARGIN,
        });
        moves.extend(sub.moves.into_iter().map(|m| Move {
            chunk: ids[m.chunk as usize],
            from: m.from + 1,
            to: m.to + 1,
        }));
        moves
    }
}

/// Starts the brain thread of a volume: one epoch every `epoch`.
pub fn spawn(mut brain: Brain, epoch: Duration) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("brain-{}", brain.volume.name()))
        .spawn(move || loop {
            let start = Instant::now();
            thread::sleep(epoch);
            let r = brain.run_epoch();
            let level = if r.promoted + r.demoted + r.failed > 0 {
                log::Level::Info
            } else {
                log::Level::Debug
            };
            log::log!(
                level,
                "volume '{}': epoch {} ({:?}): {} moves planned, {} promoted, {} demoted, {} skipped, {} failed",
                brain.volume.name(),
                r.epoch,
                start.elapsed(),
                r.planned,
                r.promoted,
                r.demoted,
                r.skipped,
                r.failed
            );
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::Config, meta::Store, tier::TierSet};

    const CHUNK: u64 = 64 * 1024;

    fn open(dir: &Path, volume_extra: &str) -> Arc<Volume> {
        let mut s = String::new();
        for (i, cap) in ["256KiB", "1MiB", "4MiB"].iter().enumerate() {
            let p = dir.join(format!("t{i}"));
            std::fs::create_dir_all(&p).unwrap();
            s += &format!(
                "[[tier]]\ntier_id = {i}\nname = \"t{i}\"\ncapacity = \"{cap}\"\ncost_per_gb = 0.1\npath = \"{}\"\n\
                 performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}\n",
                p.display()
            );
        }
        s += &format!(
            "[[volume]]\nname = \"v\"\nsize = \"2MiB\"\nchunk_size = \"64KiB\"\nsocket = \"/tmp/unused\"\n{volume_extra}\n"
        );
        let cfg = Config::parse(&s).unwrap();
        let store = Arc::new(Store::open(&dir.join("state")).unwrap());
        let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
        Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap())
    }

    #[test]
    fn hot_chunk_is_promoted_and_data_survives() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "");
        // Every chunk starts cold on the slowest tier.
        for c in 0..32u32 {
            v.set_score(c, 0.0);
            v.write_at(c as u64 * CHUNK, &[c as u8 + 1; 4096]).unwrap();
        }
        assert!((0..32).all(|c| v.block_metadata(c).tier == Some(2)));
        let predictor = crate::predict::load("ewma").unwrap();
        let mut brain = Brain::new(v.clone(), predictor, Duration::from_secs(1), 0.0);
        let mut buf = [0u8; 4096];
        let mut promoted = 0;
        for _ in 0..6 {
            // Chunk 7 is read over and over; the rest stay idle.
            for _ in 0..50 {
                v.record_access(false, 7 * CHUNK, 4096, false);
            }
            let r = brain.run_epoch();
            assert_eq!(r.failed, 0);
            promoted += r.promoted;
        }
        assert!(promoted >= 1);
        assert_eq!(
            v.block_metadata(7).tier,
            Some(0),
            "hot chunk on the fast tier"
        );
        assert!(v.score(7) > v.score(8));
        for c in 0..32u32 {
            v.read_at(c as u64 * CHUNK, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == c as u8 + 1), "chunk {c} data");
        }
        // Capacity is respected: tier 0 holds at most 4 chunks of 64 KiB.
        let (used, total) = v.tiers().get(0).unwrap().usage();
        assert!(used <= total);
        // The heat map was saved for a warm restart.
        let saved = v.store().heatmap("v").unwrap().unwrap();
        let h = HeatMap::from_bytes("v", &saved).unwrap();
        assert_eq!(h.len(), 32);
        assert!(h.score(7) > h.score(8));
    }

    #[test]
    fn tiering_disabled_volume_is_profiled_but_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "tiering_enabled = false");
        v.write_at(0, &[1u8; 4096]).unwrap();
        let mut brain = Brain::new(
            v.clone(),
            crate::predict::load("ewma").unwrap(),
            Duration::from_secs(1),
            0.0,
        );
        for _ in 0..3 {
            for _ in 0..50 {
                v.record_access(false, 0, 4096, false);
            }
            let r = brain.run_epoch();
            assert_eq!(r.planned, 0);
        }
        assert_eq!(v.block_metadata(0).tier, Some(2));
        assert!(v.score(0) > 0.0, "still profiled");
    }
}
