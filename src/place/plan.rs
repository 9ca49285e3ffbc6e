//! The per-epoch migration plan.

use super::tier_for_score;
use crate::{config::TieringPolicy, predict::HeatMap};

/// What the planner needs to know.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub policy: TieringPolicy,
    pub heat: &'a HeatMap,
    /// Current tier (index into the fastest-first tier list) of every
    /// chunk, or [`super::UNPLACED`].
    pub current: &'a [u8],
    /// Capacity of each tier in chunks, fastest first.
    pub capacity: &'a [u64],
    /// Most chunk moves (promotions + demotions) this epoch.
    pub budget: usize,
    /// Hysteresis against ping-pong between epochs: a promotion must beat
    /// the chunk it displaces by this much, and a chunk is demoted only
    /// when its score is this far below what its current tier needs.
    pub margin: f32,
    /// Tiers faster than this are managed elsewhere (tier 0 by
    /// [`super::FastTier`]): their chunks are left alone and nothing moves
    /// into them. The policy's tier for a score is still taken over the
    /// whole tier list, so the plan agrees with the allocation hint.
    pub managed_from: u8,
}

/// One chunk migration, tiers as fastest-first indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub chunk: u32,
    pub from: u8,
    pub to: u8,
}

/// Moves to apply in order; applying them in order never puts more chunks
/// on a tier than its capacity, provided the current placement fits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub moves: Vec<Move>,
}

impl Plan {
    pub fn promotions(&self) -> usize {
        self.moves.iter().filter(|m| m.to < m.from).count()
    }

    pub fn demotions(&self) -> usize {
        self.moves.iter().filter(|m| m.to > m.from).count()
    }
}

/// Computes the epoch's plan:
/// 1. chunks whose policy tier is faster than their current tier are
///    promoted, hottest first, into free space of the target tier (or the
///    fastest tier between target and current with room); when those are
///    full, the coldest resident of the target tier is first demoted to the
///    fastest slower tier with room, if the promotion is hotter by `margin`;
/// 2. with budget left, chunks whose policy tier is slower than their
///    current tier are demoted, coldest first, where there is room.
pub fn plan(input: PlanInput<'_>) -> Plan {
    let PlanInput {
        policy,
        heat,
        current,
        capacity,
        budget,
        margin,
        managed_from,
    } = input;
    let first = managed_from as usize;
    let n_tiers = capacity.len();
    let mut plan = Plan::default();
    if n_tiers == 0 || budget == 0 || first >= n_tiers {
        return plan;
    }
    let score = |c: u32| heat.scores().get(c as usize).copied().unwrap_or(0.0);
    let want_of = |s: f32| tier_for_score(policy, s, n_tiers).max(first);
    let mut occupancy = vec![0u64; n_tiers];
    // Residents of each tier except the slowest, coldest first (victims).
    let mut residents: Vec<Vec<u32>> = vec![Vec::new(); n_tiers];
    let mut promote = Vec::new();
    let mut demote = Vec::new();
    for (c, &t) in current.iter().enumerate() {
        if t == super::UNPLACED {
            continue;
        }
        let t = (t as usize).min(n_tiers - 1);
        occupancy[t] += 1;
        if t < first {
            continue;
        }
        let s = score(c as u32);
        if t + 1 < n_tiers {
            residents[t].push(c as u32);
        }
        if want_of(s) < t {
            promote.push(c as u32);
        } else if want_of(s + margin) > t {
            demote.push(c as u32);
        }
    }
    let by_score_desc = |a: &u32, b: &u32| score(*b).total_cmp(&score(*a)).then(a.cmp(b));
    promote.sort_unstable_by(by_score_desc);
    for r in &mut residents {
        r.sort_unstable_by(|a, b| by_score_desc(b, a));
    }
    let mut victim_pos = vec![0usize; n_tiers];
    let mut moved = vec![false; 0];
    let moved_set = |c: u32, moved: &mut Vec<bool>| {
        if moved.is_empty() {
            moved.resize(current.len(), false);
        }
        moved[c as usize] = true;
    };
    let mut left = budget;
    for &c in &promote {
        if left == 0 {
            break;
        }
        let from = current[c as usize] as usize;
        let want = want_of(score(c));
        // Free room in the wanted tier or, failing that, in a tier between.
        if let Some(t) = (want..from).find(|&t| occupancy[t] < capacity[t]) {
            occupancy[t] += 1;
            occupancy[from] -= 1;
            plan.moves.push(Move {
                chunk: c,
                from: from as u8,
                to: t as u8,
            });
            moved_set(c, &mut moved);
            left -= 1;
            continue;
        }
        // Make room: demote the coldest not-yet-moved resident of the
        // wanted tier to the fastest slower tier with room, then promote.
        if left < 2 {
            break;
        }
        let res = &residents[want];
        while victim_pos[want] < res.len()
            && moved.get(res[victim_pos[want]] as usize) == Some(&true)
        {
            victim_pos[want] += 1;
        }
        let Some(&v) = res.get(victim_pos[want]) else {
            continue;
        };
        if score(v) + margin >= score(c) {
            continue;
        }
        let Some(dest) = (want + 1..n_tiers).find(|&t| occupancy[t] < capacity[t]) else {
            continue;
        };
        victim_pos[want] += 1;
        occupancy[dest] += 1;
        occupancy[from] -= 1;
        plan.moves.push(Move {
            chunk: v,
            from: want as u8,
            to: dest as u8,
        });
        plan.moves.push(Move {
            chunk: c,
            from: from as u8,
            to: want as u8,
        });
        moved_set(v, &mut moved);
        moved_set(c, &mut moved);
        left -= 2;
    }
    demote.sort_unstable_by(|a, b| by_score_desc(b, a));
    for &c in &demote {
        if left == 0 {
            break;
        }
        if moved.get(c as usize) == Some(&true) {
            continue;
        }
        let from = current[c as usize] as usize;
        let want = want_of(score(c) + margin);
        if let Some(t) = (from + 1..=want)
            .rev()
            .find(|&t| occupancy[t] < capacity[t])
        {
            occupancy[t] += 1;
            occupancy[from] -= 1;
            plan.moves.push(Move {
                chunk: c,
                from: from as u8,
                to: t as u8,
            });
            left -= 1;
        }
    }
    plan
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Applies `plan` to `current`, checking each move's source and that
    /// no tier goes over its capacity on the way.
    pub(in crate::place) fn apply(current: &mut [u8], capacity: &[u64], plan: &Plan) {
        for m in &plan.moves {
            assert_eq!(current[m.chunk as usize], m.from, "{m:?}");
            current[m.chunk as usize] = m.to;
            for (t, &cap) in capacity.iter().enumerate() {
                let used = current.iter().filter(|&&x| x as usize == t).count() as u64;
                assert!(used <= cap, "tier {t} holds {used} > {cap} after {m:?}");
            }
        }
    }

    #[test]
    fn hot_chunks_fill_fast_tier_up_to_capacity_hottest_first() {
        let heat = HeatMap::from_scores(vec![0.9, 0.95, 0.85, 0.1, 0.99]);
        let mut current = vec![1u8; 5];
        let capacity = [2, 10];
        let p = plan(PlanInput {
            policy: TieringPolicy::Default,
            heat: &heat,
            current: &current.clone(),
            capacity: &capacity,
            budget: 100,
            margin: 0.05,
            managed_from: 0,
        });
        apply(&mut current, &capacity, &p);
        assert_eq!(current, vec![1, 0, 1, 1, 0]);
    }

    #[test]
    fn swap_needs_margin_and_budget_limits_moves() {
        let heat = HeatMap::from_scores(vec![0.82, 0.84, 0.99, 0.97]);
        let capacity = [2, 10];
        let mut current = vec![0u8, 0, 1, 1];
        let start = current.clone();
        let mut input = PlanInput {
            policy: TieringPolicy::Default,
            heat: &heat,
            current: &start,
            capacity: &capacity,
            budget: 2,
            margin: 0.05,
            managed_from: 0,
        };
        let p = plan(input);
        assert_eq!(p.moves.len(), 2, "{p:?}");
        assert_eq!((p.promotions(), p.demotions()), (1, 1));
        apply(&mut current, &capacity, &p);
        assert_eq!(current, vec![1, 0, 0, 1]);
        let h2 = HeatMap::from_scores(vec![0.82, 0.84, 0.85, 0.86]);
        input.heat = &h2;
        input.budget = 100;
        let c2 = vec![0u8, 0, 1, 1];
        input.current = &c2;
        assert!(plan(input).moves.is_empty(), "gain below margin: no churn");
    }

    #[test]
    fn cold_chunks_are_demoted_with_leftover_budget() {
        let heat = HeatMap::from_scores(vec![0.1, 0.5, 0.9]);
        let capacity = [3, 3, 3];
        let mut current = vec![0u8, 0, 0];
        let p = plan(PlanInput {
            policy: TieringPolicy::Default,
            heat: &heat,
            current: &current.clone(),
            capacity: &capacity,
            budget: 10,
            margin: 0.0,
            managed_from: 0,
        });
        apply(&mut current, &capacity, &p);
        assert_eq!(current, vec![2, 1, 0]);
    }

    #[test]
    fn random_plans_never_exceed_capacity() {
        let mut rng = crate::predict::learned::train::Rng::new(3);
        for _ in 0..50 {
            let n = 40;
            let caps = [1 + rng.below(8) as u64, 1 + rng.below(12) as u64, n as u64];
            let mut current: Vec<u8> = Vec::new();
            let mut occ = [0u64; 3];
            for _ in 0..n {
                let mut t = rng.below(3);
                while occ[t] >= caps[t] {
                    t = (t + 1) % 3;
                }
                occ[t] += 1;
                current.push(t as u8);
            }
            let heat =
                HeatMap::from_scores((0..n).map(|_| rng.below(1000) as f32 / 1000.0).collect());
            for policy in [
                TieringPolicy::Default,
                TieringPolicy::PerformanceOptimized,
                TieringPolicy::CostOptimized,
            ] {
                let mut cur = current.clone();
                let p = plan(PlanInput {
                    policy,
                    heat: &heat,
                    current: &cur.clone(),
                    capacity: &caps,
                    budget: rng.below(30),
                    margin: 0.02,
                    managed_from: rng.below(2) as u8,
                });
                apply(&mut cur, &caps, &p);
            }
        }
    }

    #[test]
    fn managed_from_leaves_faster_tiers_alone_and_keeps_the_whole_list_thresholds() {
        // Three tiers; tier 0 is managed elsewhere. Warm chunks (0.3..0.8)
        // belong on tier 1 of three: a two-tier sub-problem over tiers 1..
        // would have sent them to the slowest.
        let heat = HeatMap::from_scores(vec![0.35, 0.5, 0.9, 0.0, 0.05]);
        let capacity = [1, 10, u64::MAX];
        let current = vec![1u8, 2, 2, 0, 1];
        let p = plan(PlanInput {
            policy: TieringPolicy::Default,
            heat: &heat,
            current: &current,
            capacity: &capacity,
            budget: 100,
            margin: 0.1,
            managed_from: 1,
        });
        let mut now = current.clone();
        apply(&mut now, &capacity, &p);
        assert_eq!(now, vec![1, 1, 1, 0, 2], "{p:?}");
    }
}
