//! The placement engine of one volume, driven alike by the daemon's brain
//! and by `tierblk replay` (DESIGN decision 9): the same inputs (history,
//! heat map, where each chunk is, room on each tier) at the same cadence
//! (once per epoch) give the same moves.
//!
//! Per epoch, within the move budget the migration rate allows:
//! 1. tier-0 residents whose score the policy no longer puts on tier 0
//!    (with the plan margin as hysteresis) are demoted, coldest first, to
//!    their policy tier — so `cost-optimized` drains idle chunks off the
//!    most expensive tier;
//! 2. tier 0 prefetches chunks the policy puts there (recency-protected,
//!    score-evicted: [`FastTier`]);
//! 3. the slower tiers are planned by [`plan`] with the thresholds of the
//!    whole tier list, the same [`tier_for_score`] the allocation hint uses.
//!
//! Between epochs it takes demand-promotion events ([`Placer::on_miss`]):
//! replay feeds them when asked to model demand promotion; the daemon's
//! mover will feed them from the data path's miss queue.

use super::{
    plan, tier_for_score, FastTier, FastTierConfig, MissAction, Move, Plan, PlanInput, UNPLACED,
};
use crate::{
    config::{PlacementSettings, TieringPolicy},
    predict::HeatMap,
    profile::History,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Chunks of tier 0 the placer fills, of `fast_capacity`: it keeps a
/// reserve of 1/32 (at most 64 chunks, none below 32) free, so that a
/// promotion that displaces a chunk can use a free extent at once instead
/// of waiting for the commit that frees the displaced chunk's (a commit
/// syncs the tiers and the store: about a millisecond or more, as long as
/// the copy of a 64 KiB chunk at 64 MiB/s); the mover commits when the
/// reserve runs out or at the end of a round.
pub fn usable_fast_capacity(fast_capacity: usize) -> usize {
    fast_capacity - (fast_capacity / 32).min(64)
}

/// What a [`Placer`] is made for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacerParams {
    pub policy: TieringPolicy,
    pub settings: PlacementSettings,
    pub n_chunks: usize,
    /// Tiers of the volume, fastest first (at least one).
    pub n_tiers: usize,
    /// Chunks tier 0 can hold.
    pub fast_capacity: usize,
    pub chunk_size: u64,
    /// Migration bandwidth, MiB/s (0 = unlimited).
    pub migration_mibps: f64,
}

/// One volume's placement engine.
#[derive(Debug, Clone)]
pub struct Placer {
    params: PlacerParams,
    fast: FastTier,
}

impl Placer {
    pub fn new(params: PlacerParams) -> Self {
        let s = &params.settings;
        let cfg = FastTierConfig {
            protected_share: s.protected_share,
            max_window: s.max_window,
            admit_slack: s.admit_slack,
            prefetch_margin: s.prefetch_margin,
            prefetch_min: s.prefetch_min,
        };
        Self {
            fast: FastTier::new(
                params.n_chunks,
                usable_fast_capacity(params.fast_capacity),
                cfg,
            ),
            params,
        }
    }

    pub fn params(&self) -> &PlacerParams {
        &self.params
    }

    /// The migration rate from now on (a volume's share of the daemon's
    /// budget changes as other volumes start and stop migrating).
    pub fn set_migration_mibps(&mut self, mibps: f64) {
        self.params.migration_mibps = mibps;
    }

    pub fn policy(&self) -> TieringPolicy {
        self.params.policy
    }

    /// Tier (fastest-first index) a new chunk with `score` is allocated
    /// on: the policy's tier for the score, the same function every plan
    /// uses.
    pub fn hint(&self, score: f32) -> usize {
        tier_for_score(self.params.policy, score, self.params.n_tiers)
    }

    /// Most chunk moves in an epoch of `epoch_secs`: what the migration
    /// rate copies in that time (at least one), capped by
    /// `max_moves_per_epoch`.
    pub fn move_budget(&self, epoch_secs: f64) -> usize {
        let p = &self.params;
        let max = p.settings.max_moves_per_epoch.max(1);
        if p.migration_mibps <= 0.0 {
            return max;
        }
        let chunks = p.migration_mibps * MIB * epoch_secs.max(0.0) / p.chunk_size.max(1) as f64;
        (chunks as usize).clamp(1, max)
    }

    /// Seconds one chunk's copy takes at the migration rate (0: unlimited).
    pub fn copy_secs(&self) -> f64 {
        let p = &self.params;
        if p.migration_mibps <= 0.0 {
            0.0
        } else {
            p.chunk_size as f64 / (p.migration_mibps * MIB)
        }
    }

    /// Whether a chunk of `score` stays on (or may enter) tier 0: the
    /// policy puts it there, give or take the plan margin.
    fn keeps_fast(&self, score: f32) -> bool {
        let p = &self.params;
        tier_for_score(p.policy, score + p.settings.plan_margin, p.n_tiers) == 0
    }

    /// Tier a chunk leaving tier 0 goes to: its policy tier, else the
    /// nearest slower one with room, else the fastest slower with room.
    fn demotion_target(&self, score: f32, has_room: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.params.n_tiers;
        if n < 2 {
            return None;
        }
        let own = tier_for_score(self.params.policy, score, n).clamp(1, n - 1);
        (own..n).chain(1..own).find(|&t| has_room(t))
    }

    /// Brings the tier-0 view in line with `current` (where each chunk is,
    /// a chunk in flight counted where it goes), then records the epoch's
    /// tier-0 accesses: the chunks accessed least in the epoch first, so
    /// the busiest end up most recently used.
    fn observe(&mut self, history: &History, current: &[u8]) {
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
        let mut touched: Vec<u32> = history
            .active()
            .iter()
            .copied()
            .filter(|&c| history.count(c as usize, 0) > 0 && self.fast.contains(c))
            .collect();
        touched.sort_unstable_by_key(|&c| (history.count(c as usize, 0), c));
        for c in touched {
            self.fast.touch(c);
        }
    }

    /// The epoch's moves, tiers as fastest-first indexes. `current[c]` is
    /// chunk `c`'s tier (a chunk being moved: where it goes; [`UNPLACED`]:
    /// no extent yet, left alone), `capacity`
    /// the chunks each tier can hold for this volume (a chunk being moved
    /// holds room on both tiers), `epoch_secs` the epoch's length (the move
    /// budget). Applying the moves in order never overfills a tier.
    pub fn plan_epoch(
        &mut self,
        history: &History,
        heat: &HeatMap,
        current: &[u8],
        capacity: &[u64],
        epoch_secs: f64,
    ) -> Plan {
        self.observe(history, current);
        let mut out = Plan::default();
        let n_tiers = capacity.len().min(self.params.n_tiers);
        let mut left = self.move_budget(epoch_secs);
        if n_tiers < 2 {
            return out;
        }
        let policy = self.params.policy;
        let score = |c: u32| heat.scores().get(c as usize).copied().unwrap_or(0.0);
        let mut now = current.to_vec();
        let mut occupancy = vec![0u64; n_tiers];
        for &t in now.iter().filter(|&&t| t != UNPLACED) {
            occupancy[(t as usize).min(n_tiers - 1)] += 1;
        }
        // 1. Off tier 0: residents the policy no longer keeps there.
        let mut cold: Vec<u32> = (0..now.len() as u32)
            .filter(|&c| now[c as usize] == 0 && !self.keeps_fast(score(c)))
            .collect();
        cold.sort_unstable_by(|a, b| score(*a).total_cmp(&score(*b)).then(a.cmp(b)));
        for c in cold {
            if left == 0 {
                break;
            }
            let Some(to) = self.demotion_target(score(c), |t| occupancy[t] < capacity[t]) else {
                continue;
            };
            self.fast.remove(c);
            occupancy[0] -= 1;
            occupancy[to] += 1;
            now[c as usize] = to as u8;
            out.moves.push(Move {
                chunk: c,
                from: 0,
                to: to as u8,
            });
            left -= 1;
        }
        // 2. Into tier 0.
        let fast = self.fast.plan_epoch(heat, &now, capacity, left, |s| {
            tier_for_score(policy, s, n_tiers)
        });
        for m in &fast.moves {
            now[m.chunk as usize] = m.to;
        }
        left -= fast.moves.len().min(left);
        out.moves.extend(fast.moves);
        // 3. The slower tiers.
        if left > 0 {
            let slow = plan(PlanInput {
                policy,
                heat,
                current: &now,
                capacity: &capacity[..n_tiers],
                budget: left,
                margin: self.params.settings.plan_margin,
                managed_from: 1,
            });
            out.moves.extend(slow.moves);
        }
        out
    }

    /// A demand-promotion event: `chunk`, on tier `from`, was just read
    /// there. Promotes it into tier 0 when the policy lets a chunk of
    /// `priority` (its score, or more when the caller knows it is in use)
    /// onto tier 0 and [`FastTier::on_miss`] admits it; a displaced chunk
    /// goes where [`Placer::plan_epoch`] would send it. `has_room(t)`:
    /// tier `t` has a free extent. Returns the moves, in order (empty: no
    /// promotion).
    pub fn on_miss(
        &mut self,
        chunk: u32,
        from: usize,
        priority: f32,
        heat: &HeatMap,
        has_room: impl Fn(usize) -> bool,
    ) -> Plan {
        let mut out = Plan::default();
        if from == 0 || !self.keeps_fast(priority) {
            return out;
        }
        let score = |c: u32| {
            if c == chunk {
                priority
            } else {
                heat.scores().get(c as usize).copied().unwrap_or(0.0)
            }
        };
        if let MissAction::Promote { evict } = self.fast.on_miss(chunk, has_room(0), score) {
            if let Some(v) = evict {
                let last = self.params.n_tiers - 1;
                let to = self.demotion_target(score(v), &has_room).unwrap_or(last);
                out.moves.push(Move {
                    chunk: v,
                    from: 0,
                    to: to as u8,
                });
            }
            out.moves.push(Move {
                chunk,
                from: from as u8,
                to: 0,
            });
        }
        out
    }

    /// A planned move did not happen (the chunk was busy, being moved,
    /// or had no extent): keeps the tier-0 view true to where it is.
    pub fn skipped(&mut self, m: &Move) {
        if m.to == 0 {
            self.fast.remove(m.chunk);
        } else if m.from == 0 {
            self.fast.insert(m.chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::plan::tests::apply;

    fn placer(policy: TieringPolicy, n: usize, fast: usize) -> Placer {
        Placer::new(PlacerParams {
            policy,
            settings: PlacementSettings::default(),
            n_chunks: n,
            n_tiers: 3,
            fast_capacity: fast,
            chunk_size: 1 << 20,
            migration_mibps: 0.0,
        })
    }

    #[test]
    fn move_budget_follows_the_migration_rate() {
        let mut p = placer(TieringPolicy::Default, 4, 1);
        assert_eq!(p.move_budget(10.0), 4096, "unlimited: the cap");
        p.params.migration_mibps = 64.0;
        assert_eq!(p.move_budget(10.0), 640);
        assert_eq!(p.move_budget(0.001), 1, "at least one");
        assert!((p.copy_secs() - 1.0 / 64.0).abs() < 1e-9);
    }

    #[test]
    fn cost_optimized_drains_cold_chunks_off_tier_0_and_default_keeps_warm_ones() {
        let heat = HeatMap::from_scores(vec![0.01, 0.75, 0.99, 0.0]);
        let capacity = [4, 10, u64::MAX];
        let h = History::new(4);
        for (policy, want) in [
            (TieringPolicy::CostOptimized, vec![2u8, 2, 0, 2]),
            // Default: 0.75 is within the margin of 0.8, so it stays.
            (TieringPolicy::Default, vec![2, 0, 0, 2]),
            // Performance-optimized keeps anything scored on tier 0.
            // (and puts cold ones on the second tier, never the slowest).
            (TieringPolicy::PerformanceOptimized, vec![0, 0, 0, 1]),
        ] {
            let mut p = placer(policy, 4, 4);
            let mut current = vec![0u8, 0, 0, 2];
            let plan = p.plan_epoch(&h, &heat, &current, &capacity, 10.0);
            apply(&mut current, &capacity, &plan);
            assert_eq!(current, want, "{policy}");
        }
    }

    #[test]
    fn warm_chunks_hinted_to_the_middle_tier_stay_there() {
        // What the allocation hint does with scores 0.3..0.8 under the
        // default policy, the plan keeps.
        let p0 = placer(TieringPolicy::Default, 8, 2);
        let heat = HeatMap::from_scores(vec![0.35; 8]);
        let mut current: Vec<u8> = (0..8).map(|c| p0.hint(heat.score(c)) as u8).collect();
        assert!(current.iter().all(|&t| t == 1));
        let mut p = p0;
        let capacity = [2, 8, u64::MAX];
        let plan = p.plan_epoch(&History::new(8), &heat, &current.clone(), &capacity, 10.0);
        apply(&mut current, &capacity, &plan);
        assert!(plan.moves.is_empty(), "{plan:?}");
    }

    #[test]
    fn chunks_without_an_extent_are_left_to_the_allocation_hint() {
        let mut p = placer(TieringPolicy::PerformanceOptimized, 3, 2);
        let heat = HeatMap::from_scores(vec![0.9, 0.0, 0.9]);
        let current = [UNPLACED, UNPLACED, 2];
        let plan = p.plan_epoch(&History::new(3), &heat, &current, &[2, 4, u64::MAX], 10.0);
        assert_eq!(
            plan.moves,
            vec![Move {
                chunk: 2,
                from: 2,
                to: 0
            }]
        );
    }

    #[test]
    fn demand_promotion_follows_the_policy_and_evicts_to_the_victims_tier() {
        let heat = HeatMap::from_scores(vec![0.9, 0.4, 0.95, 0.05]);
        let mut p = placer(TieringPolicy::Default, 4, 1);
        // Chunk 1 (0.4) belongs on tier 1 by the policy: not promoted.
        assert!(p.on_miss(1, 2, 0.4, &heat, |_| true).moves.is_empty());
        let plan = p.on_miss(0, 2, 0.9, &heat, |_| true);
        assert_eq!(
            plan.moves,
            vec![Move {
                chunk: 0,
                from: 2,
                to: 0
            }]
        );
        // Chunk 2 displaces chunk 0 (equal scores would too: slack 1).
        let plan = p.on_miss(2, 1, 0.95, &heat, |_| true);
        assert_eq!(
            plan.moves,
            vec![
                Move {
                    chunk: 0,
                    from: 0,
                    to: 1
                },
                Move {
                    chunk: 2,
                    from: 1,
                    to: 0
                }
            ]
        );
        // A skipped promotion leaves the tier-0 view as it was.
        p.skipped(&plan.moves[1]);
        p.skipped(&plan.moves[0]);
        let plan = p.on_miss(3, 2, 0.95, &heat, |_| true);
        assert_eq!(plan.moves[0].chunk, 0, "chunk 0 is the resident again");
    }
}
