//! Recency-protected, score-evicted management of the fastest tier.
//!
//! The fastest tier is kept as a recency list of its residents. The most
//! recently used share of it (the *protected segment*, like the small FIFO
//! of S3-FIFO or the A1 queue of 2Q) is never displaced; when room is
//! needed, the victim is the resident with the **lowest predicted score
//! among the least recently used rest** (the *eviction window*), ties going
//! to the least recently used. So:
//! - with a predictor that scores every chunk alike this is exactly LRU,
//!   which bounds how much a bad model can lose;
//! - a good model keeps chunks it predicts hot past their LRU turn and
//!   drops chunks it predicts cold early, and, once per epoch, promotes
//!   (prefetches) predicted-hot chunks that are not resident into the room
//!   made by the same rule.
//!
//! It is a part of [`super::Placer`], which touches the chunks accessed on
//! tier 0 once per epoch, plans with [`FastTier::plan_epoch`] and takes
//! demand-promotion events with [`FastTier::on_miss`]. Both keep the tier
//! at or under its capacity at every step.

use super::{recency::RecencyList, Move, Plan};
use crate::predict::HeatMap;

/// Tunables of [`FastTier`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastTierConfig {
    /// Share of the tier's capacity kept as the protected recency segment.
    pub protected_share: f64,
    /// Most residents examined when picking a victim (from the LRU end).
    pub max_window: usize,
    /// A chunk that misses is admitted unless its score is below the
    /// victim's by more than this (1.0 or more: always admit, like LRU).
    pub admit_slack: f32,
    /// A prefetch must beat its victim's score by this much.
    pub prefetch_margin: f32,
    /// Lowest score a non-resident chunk must have to be prefetched.
    pub prefetch_min: f32,
}

impl Default for FastTierConfig {
    fn default() -> Self {
        Self {
            protected_share: 0.5,
            max_window: 256,
            admit_slack: 1.0,
            prefetch_margin: 0.2,
            prefetch_min: 0.5,
        }
    }
}

/// Residency and recency of the fastest tier's chunks.
#[derive(Debug, Clone)]
pub struct FastTier {
    cfg: FastTierConfig,
    capacity: usize,
    len: usize,
    resident: Vec<bool>,
    recency: RecencyList,
}

/// What to do with a chunk that missed the fastest tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissAction {
    /// Promote it; first demote `evict` when it is `Some`.
    Promote { evict: Option<u32> },
    /// Leave it where it is.
    Skip,
}

impl FastTier {
    /// An empty fastest tier of `capacity` chunks over a volume of
    /// `n_chunks` chunks.
    pub fn new(n_chunks: usize, capacity: usize, cfg: FastTierConfig) -> Self {
        Self {
            cfg,
            capacity,
            len: 0,
            resident: vec![false; n_chunks],
            recency: RecencyList::new(n_chunks),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, chunk: u32) -> bool {
        self.resident.get(chunk as usize) == Some(&true)
    }

    /// Records an access to a resident chunk (most recently used now).
    /// Accesses to chunks that are not resident are ignored.
    pub fn touch(&mut self, chunk: u32) {
        if self.contains(chunk) {
            self.recency.touch(chunk);
        }
    }

    /// Makes `chunk` resident and most recently used. Returns false (and
    /// changes nothing) when the tier is full or the chunk is out of range.
    pub fn insert(&mut self, chunk: u32) -> bool {
        if chunk as usize >= self.resident.len() || self.len >= self.capacity {
            return false;
        }
        if !self.resident[chunk as usize] {
            self.resident[chunk as usize] = true;
            self.len += 1;
            self.recency.push_front(chunk);
        }
        true
    }

    /// Removes `chunk` from the tier (no-op when it is not resident).
    pub fn remove(&mut self, chunk: u32) {
        if self.contains(chunk) {
            self.recency.unlink(chunk);
            self.resident[chunk as usize] = false;
            self.len -= 1;
        }
    }

    /// The resident to displace: the lowest `score` in the eviction window
    /// (the least recently used residents outside the protected segment,
    /// at most `max_window` of them), the least recently used among equals.
    /// `None` when the tier is empty.
    pub fn victim(&self, score: impl Fn(u32) -> f32) -> Option<u32> {
        let protected = (self.capacity as f64 * self.cfg.protected_share).floor() as usize;
        let window = self
            .len
            .saturating_sub(protected)
            .clamp(1, self.cfg.max_window.max(1));
        let mut best: Option<(u32, f32)> = None;
        for c in self.recency.iter_lru().take(window) {
            let s = score(c);
            let s = if s.is_nan() { 0.0 } else { s };
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((c, s));
            }
        }
        best.map(|(c, _)| c)
    }

    /// Decides about a chunk that just missed: promote it (displacing the
    /// victim when the tier is full) unless its score is below the victim's
    /// by more than the admission slack. `room`: the tier has a free
    /// extent; when it has none the tier counts as full even if fewer than
    /// `capacity` chunks are known here (another volume, or a chunk placed
    /// since the last plan, holds the rest). Applies the decision to the
    /// tier (the caller moves the data).
    pub fn on_miss(&mut self, chunk: u32, room: bool, score: impl Fn(u32) -> f32) -> MissAction {
        if chunk as usize >= self.resident.len() || self.capacity == 0 {
            return MissAction::Skip;
        }
        if self.contains(chunk) {
            self.touch(chunk);
            return MissAction::Skip;
        }
        if self.len < self.capacity && room {
            self.insert(chunk);
            return MissAction::Promote { evict: None };
        }
        let Some(v) = self.victim(&score) else {
            return MissAction::Skip;
        };
        if score(chunk) + self.cfg.admit_slack < score(v) {
            return MissAction::Skip;
        }
        self.remove(v);
        self.insert(chunk);
        MissAction::Promote { evict: Some(v) }
    }

    /// The epoch's prefetch plan for the fastest tier (index 0): the
    /// hottest non-resident chunks of `heat` that the policy puts on tier 0
    /// (`policy_tier(score) == 0`) and that score at least `prefetch_min`
    /// are promoted, each into free room or in place of the current victim
    /// when it beats the victim's score by `prefetch_margin`, at most
    /// `budget` moves in all (a swap is two). `current[c]` is chunk `c`'s
    /// tier (index into `capacity`, fastest first, in chunks); a displaced
    /// chunk goes to its policy tier or the nearest slower one with room,
    /// else the fastest slower tier with room (none: no swap). Applies
    /// the plan to this tier's state; applying the returned moves in order
    /// never puts more chunks on any tier than its capacity, provided the
    /// current placement fits.
    pub fn plan_epoch(
        &mut self,
        heat: &HeatMap,
        current: &[u8],
        capacity: &[u64],
        budget: usize,
        policy_tier: impl Fn(f32) -> usize,
    ) -> Plan {
        let mut plan = Plan::default();
        let n_tiers = capacity.len();
        if n_tiers < 2 || budget == 0 {
            return plan;
        }
        let mut occupancy = vec![0u64; n_tiers];
        for &t in current.iter().filter(|&&t| t != super::UNPLACED) {
            occupancy[(t as usize).min(n_tiers - 1)] += 1;
        }
        let scores = heat.scores();
        let score = |c: u32| scores.get(c as usize).copied().unwrap_or(0.0);
        let n = scores.len().min(self.resident.len()).min(current.len());
        let mut want: Vec<u32> = (0..n as u32)
            .filter(|&c| {
                !self.contains(c) && score(c) >= self.cfg.prefetch_min && policy_tier(score(c)) == 0
            })
            .collect();
        want.sort_unstable_by(|a, b| score(*b).total_cmp(&score(*a)).then(a.cmp(b)));
        let mut left = budget;
        for c in want {
            if left == 0 {
                break;
            }
            if current[c as usize] == super::UNPLACED {
                continue;
            }
            let from = (current[c as usize] as usize).min(n_tiers - 1);
            if from == 0 {
                continue; // on tier 0 but not tracked here: leave it alone
            }
            let room = self.len < self.capacity && occupancy[0] < capacity[0];
            if room {
                self.insert(c);
                occupancy[0] += 1;
                occupancy[from] -= 1;
                plan.moves.push(Move {
                    chunk: c,
                    from: from as u8,
                    to: 0,
                });
                left -= 1;
                continue;
            }
            if left < 2 {
                break;
            }
            let Some(v) = self.victim(score) else {
                break;
            };
            if score(v) + self.cfg.prefetch_margin >= score(c) {
                // Candidates are sorted: no later one beats this victim.
                break;
            }
            let own = policy_tier(score(v)).clamp(1, n_tiers - 1);
            let Some(dest) = (own..n_tiers)
                .chain(1..own)
                .find(|&t| occupancy[t] < capacity[t])
            else {
                break;
            };
            self.remove(v);
            occupancy[0] -= 1;
            occupancy[dest] += 1;
            plan.moves.push(Move {
                chunk: v,
                from: 0,
                to: dest as u8,
            });
            self.insert(c);
            occupancy[0] += 1;
            occupancy[from] -= 1;
            plan.moves.push(Move {
                chunk: c,
                from: from as u8,
                to: 0,
            });
            left -= 2;
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::learned::train::Rng;

    fn lru_hits(trace: &[u32], cap: usize) -> u64 {
        let mut list: Vec<u32> = Vec::new();
        let mut hits = 0;
        for &c in trace {
            if let Some(p) = list.iter().position(|&x| x == c) {
                hits += 1;
                list.remove(p);
            } else if list.len() == cap {
                list.remove(0);
            }
            list.push(c);
        }
        hits
    }

    fn run(ft: &mut FastTier, trace: &[u32], score: impl Fn(u32) -> f32) -> u64 {
        let mut hits = 0;
        for &c in trace {
            if ft.contains(c) {
                hits += 1;
                ft.touch(c);
            } else {
                ft.on_miss(c, true, &score);
            }
            assert!(ft.len() <= ft.capacity());
        }
        hits
    }

    #[test]
    fn equal_scores_make_it_exactly_lru() {
        let mut rng = Rng::new(5);
        let trace: Vec<u32> = (0..5000)
            .map(|i| if i % 3 == 0 { rng.below(200) } else { rng.below(20) } as u32)
            .collect();
        for cap in [1, 7, 30] {
            let mut ft = FastTier::new(200, cap, FastTierConfig::default());
            assert_eq!(
                run(&mut ft, &trace, |_| 0.5),
                lru_hits(&trace, cap),
                "cap {cap}"
            );
        }
    }

    #[test]
    fn cold_scored_chunks_are_evicted_before_hot_ones_outside_the_protected_segment() {
        let mut ft = FastTier::new(10, 4, FastTierConfig::default());
        for c in 0..4 {
            assert!(ft.insert(c));
        }
        // Recency (most recent first): 3 2 1 0; protected: 3 2; window: 1 0.
        let hot0 = |c: u32| if c == 0 { 0.9 } else { 0.1 };
        assert_eq!(ft.victim(hot0), Some(1), "hot LRU chunk is kept");
        assert_eq!(ft.victim(|_| 0.1), Some(0), "ties: least recently used");
        let cold3 = |c: u32| if c == 3 { 0.0 } else { 0.5 };
        assert_eq!(
            ft.victim(cold3),
            Some(0),
            "protected chunks are never victims"
        );
        assert!(!ft.insert(9), "full tier refuses inserts");
    }

    #[test]
    fn admission_slack_filters_chunks_predicted_much_colder_than_the_victim() {
        let cfg = FastTierConfig {
            admit_slack: 0.1,
            ..FastTierConfig::default()
        };
        let mut ft = FastTier::new(10, 2, cfg);
        let score = |c: u32| if c < 5 { 0.9 } else { 0.2 };
        assert_eq!(
            ft.on_miss(0, true, score),
            MissAction::Promote { evict: None }
        );
        assert_eq!(
            ft.on_miss(1, true, score),
            MissAction::Promote { evict: None }
        );
        assert_eq!(ft.on_miss(7, true, score), MissAction::Skip);
        assert_eq!(
            ft.on_miss(2, true, score),
            MissAction::Promote { evict: Some(0) }
        );
    }

    #[test]
    fn epoch_plan_prefetches_hot_chunks_within_budget_and_capacity() {
        let mut rng = Rng::new(11);
        for _ in 0..100 {
            let n = 60;
            let cap = 1 + rng.below(15);
            let mut ft = FastTier::new(n, cap, FastTierConfig::default());
            let mut current = vec![2u8; n];
            for _ in 0..rng.below(40) {
                let c = rng.below(n) as u32;
                if ft.insert(c) {
                    current[c as usize] = 0;
                }
            }
            let heat =
                HeatMap::from_scores((0..n).map(|_| rng.below(1000) as f32 / 1000.0).collect());
            // Tier 1 has little room, tier 2 is unbounded.
            let caps = [cap as u64, 3, u64::MAX];
            let budget = rng.below(20);
            let plan = ft.plan_epoch(&heat, &current, &caps, budget, |_| 0);
            assert!(plan.moves.len() <= budget);
            for m in &plan.moves {
                assert_eq!(current[m.chunk as usize], m.from, "{m:?}");
                current[m.chunk as usize] = m.to;
                if m.to == 0 {
                    assert!(heat.score(m.chunk as usize) >= FastTierConfig::default().prefetch_min);
                }
                for (t, &c) in caps.iter().enumerate() {
                    let used = current.iter().filter(|&&x| x as usize == t).count() as u64;
                    assert!(used <= c, "tier {t} holds {used} > {c} after {m:?}");
                }
            }
            for c in 0..n as u32 {
                assert_eq!(ft.contains(c), current[c as usize] == 0);
            }
        }
    }
}
