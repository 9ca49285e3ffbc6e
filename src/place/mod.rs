//! Placement: which tier each chunk should live on, given its predicted
//! score, the volume's tiering policy and the tiers' capacities.
//!
//! Two layers: [`tier_for_score`], the pure per-chunk hint the data path
//! uses when it allocates a chunk on first write; and [`plan`], the
//! per-epoch promotion/demotion plan over a whole heat map that respects
//! every tier's capacity and a migration budget.

mod fast_tier;
mod plan;
pub mod recency;

pub use fast_tier::{FastTier, FastTierConfig, MissAction};
pub use plan::{plan, Move, Plan, PlanInput};

use crate::config::{TierDefinition, TieringPolicy};

/// Score at or above which a chunk belongs on the fastest tier (default policy).
pub const HOT: f32 = 0.8;
/// Score at or above which a chunk belongs on a middle tier (default policy).
pub const WARM: f32 = 0.3;
/// Performance-optimized: anything with at least this score goes to the fastest tier.
pub const PERF_MIN: f32 = 0.1;
/// Cost-optimized: only chunks at least this hot leave the cheapest tier for the fastest.
pub const COST_HOT: f32 = 0.95;

/// Index (into the fastest-first tier list) a chunk with `score` should go
/// to under `policy`, before capacity is considered. `n_tiers` ≥ 1.
///
/// - default: `score ≥ 0.8` → fastest, `≥ 0.3` → second fastest (the
///   slowest when there are only two tiers), else slowest;
/// - performance-optimized: `score ≥ 0.1` → fastest, else second fastest;
/// - cost-optimized: `score ≥ 0.95` → fastest, `≥ 0.8` → second fastest,
///   else the slowest (cheapest) tier.
pub fn tier_index_for_score(policy: TieringPolicy, score: f32, n_tiers: usize) -> usize {
    let last = n_tiers.saturating_sub(1);
    let second = 1.min(last);
    let score = if score.is_nan() { 0.0 } else { score };
    let idx = match policy {
        TieringPolicy::Default if score >= HOT => 0,
        TieringPolicy::Default if score >= WARM && n_tiers > 2 => second,
        TieringPolicy::Default => last,
        TieringPolicy::PerformanceOptimized if score >= PERF_MIN => 0,
        TieringPolicy::PerformanceOptimized => second,
        TieringPolicy::CostOptimized if score >= COST_HOT => 0,
        TieringPolicy::CostOptimized if score >= HOT && n_tiers > 2 => second,
        TieringPolicy::CostOptimized => last,
    };
    idx.min(last)
}

/// The `tier_id` a chunk with `score` should be allocated on, for the data
/// path's allocation-before-write. `tiers_fastest_first` must be sorted
/// fastest first (e.g. [`crate::config::Config::tiers_by_speed`]); when it
/// is empty, 0 is returned. Capacity is the allocator's business: when the
/// hinted tier is full it falls back to the next slower one.
pub fn tier_for_score(
    policy: TieringPolicy,
    score: f32,
    tiers_fastest_first: &[&TierDefinition],
) -> u8 {
    if tiers_fastest_first.is_empty() {
        return 0;
    }
    tiers_fastest_first[tier_index_for_score(policy, score, tiers_fastest_first.len())].tier_id
}

/// Whether a chunk that just missed the fastest tier should be promoted
/// now (between epochs) rather than wait for the next plan. `priority` is
/// the chunk's predicted score (raised to the model's first-touch score
/// once it is accessed in the current epoch); `victim` is the priority of
/// the coldest resident the promotion would displace, `None` when the tier
/// has room. Ties go to the newcomer (recency breaks ties, as in LRU):
/// - performance-optimized: any chunk at least as hot as the victim;
/// - default: the same, but never a chunk below the warm threshold (0.3);
/// - cost-optimized: only chunks at or above the hot threshold (0.8).
pub fn admit_on_miss(policy: TieringPolicy, priority: f32, victim: Option<f32>) -> bool {
    let floor = match policy {
        TieringPolicy::PerformanceOptimized => 0.0,
        TieringPolicy::Default => WARM,
        TieringPolicy::CostOptimized => HOT,
    };
    priority >= floor && victim.is_none_or(|v| priority >= v)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{ByteSize, PerformanceMetrics};

    fn tier(id: u8) -> TierDefinition {
        TierDefinition {
            tier_id: id,
            name: format!("t{id}"),
            performance_metrics: PerformanceMetrics {
                read_latency_us: 1.0,
                write_latency_us: 1.0,
                iops: 0,
                bandwidth_mibps: 1.0,
            },
            capacity: ByteSize(1 << 30),
            cost_per_gb: 0.1,
            path: PathBuf::from("/tmp"),
            direct_io: false,
            emulate: None,
            fault: None,
        }
    }

    #[test]
    fn default_policy_uses_08_and_03_thresholds() {
        let t = [tier(0), tier(1), tier(5)];
        let t: Vec<&TierDefinition> = t.iter().collect();
        let p = TieringPolicy::Default;
        assert_eq!(tier_for_score(p, 0.85, &t), 0);
        assert_eq!(tier_for_score(p, 0.8, &t), 0);
        assert_eq!(tier_for_score(p, 0.5, &t), 1);
        assert_eq!(tier_for_score(p, 0.29, &t), 5);
        assert_eq!(tier_for_score(p, f32::NAN, &t), 5);
        assert_eq!(
            tier_for_score(p, 0.5, &t[..2]),
            1,
            "two tiers: warm goes to the slow one"
        );
        assert_eq!(tier_for_score(p, 0.9, &t[..1]), 0);
        assert_eq!(tier_for_score(p, 0.9, &[]), 0);
    }

    #[test]
    fn performance_and_cost_policies_shift_the_thresholds() {
        let t = [tier(0), tier(1), tier(2)];
        let t: Vec<&TierDefinition> = t.iter().collect();
        assert_eq!(
            tier_for_score(TieringPolicy::PerformanceOptimized, 0.2, &t),
            0
        );
        assert_eq!(
            tier_for_score(TieringPolicy::PerformanceOptimized, 0.05, &t),
            1
        );
        assert_eq!(tier_for_score(TieringPolicy::CostOptimized, 0.9, &t), 1);
        assert_eq!(tier_for_score(TieringPolicy::CostOptimized, 0.5, &t), 2);
        assert_eq!(tier_for_score(TieringPolicy::CostOptimized, 0.97, &t), 0);
    }

    #[test]
    fn miss_admission_needs_heat_and_a_colder_victim() {
        let p = TieringPolicy::Default;
        assert!(admit_on_miss(p, 0.5, None));
        assert!(!admit_on_miss(p, 0.2, None));
        assert!(!admit_on_miss(p, 0.5, Some(0.6)));
        assert!(admit_on_miss(p, 0.5, Some(0.5)), "ties go to the newcomer");
        assert!(admit_on_miss(
            TieringPolicy::PerformanceOptimized,
            0.01,
            Some(0.01)
        ));
        assert!(!admit_on_miss(TieringPolicy::CostOptimized, 0.7, None));
    }
}
