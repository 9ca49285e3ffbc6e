//! Placement: which tier each chunk should live on, given its predicted
//! score, the volume's tiering policy and the tiers' capacities.
//!
//! One engine, [`Placer`], used alike by the daemon's brain
//! (`epoch.rs`) and by `tierblk replay`. It is built from:
//! - [`tier_for_score`], the policy's score thresholds: the one function
//!   that says which tier a score belongs on, used for the data path's
//!   allocation hint and by every plan, so no chunk is placed by one and
//!   moved back by the other;
//! - [`FastTier`], the recency-protected, score-evicted management of
//!   tier 0 (gated by the same policy);
//! - [`plan`], the per-epoch promotions and demotions of the slower tiers;
//! - [`Deviation`], which says when accesses strayed so far from the
//!   predicted heat map that the epoch should end at once.

mod deviation;
mod fast_tier;
mod placer;
mod plan;
pub mod recency;

pub use deviation::{Check, Deviation};
pub use fast_tier::{FastTier, FastTierConfig, MissAction};
pub use placer::{Placer, PlacerParams};

pub use plan::{plan, Move, Plan, PlanInput};

use crate::config::TieringPolicy;

/// The tier of a chunk that has no extent yet (never written): plans
/// leave it alone (the allocation hint places it when it is written) and
/// it takes no room.
pub const UNPLACED: u8 = u8::MAX;

/// Score at or above which a chunk belongs on the fastest tier (default policy).
pub const HOT: f32 = 0.8;
/// Score at or above which a chunk belongs on a middle tier (default policy).
pub const WARM: f32 = 0.3;
/// Performance-optimized: anything with at least this score goes to the fastest tier.
pub const PERF_MIN: f32 = 0.1;
/// Cost-optimized: only chunks at least this hot leave the cheapest tier for the fastest.
pub const COST_HOT: f32 = 0.95;

/// Index (into the fastest-first tier list) of the tier a chunk with
/// `score` belongs on under `policy`, before capacity is considered
/// (`n_tiers` ≥ 1; 0 when it is 0). The seed's thresholds:
///
/// - default: `score ≥ 0.8` → fastest, `≥ 0.3` → second fastest (the
///   slowest when there are only two tiers), else slowest;
/// - performance-optimized: `score ≥ 0.1` → fastest, else second fastest;
/// - cost-optimized: `score ≥ 0.95` → fastest, `≥ 0.8` → second fastest,
///   else the slowest (cheapest) tier.
///
/// This is the allocation hint of a new chunk ([`crate::volume::Volume::tier_hint`])
/// and the target of every plan ([`Placer`]).
pub fn tier_for_score(policy: TieringPolicy, score: f32, n_tiers: usize) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_uses_08_and_03_thresholds() {
        let p = TieringPolicy::Default;
        assert_eq!(tier_for_score(p, 0.85, 3), 0);
        assert_eq!(tier_for_score(p, 0.8, 3), 0);
        assert_eq!(tier_for_score(p, 0.5, 3), 1);
        assert_eq!(tier_for_score(p, 0.3, 4), 1);
        assert_eq!(tier_for_score(p, 0.29, 3), 2);
        assert_eq!(tier_for_score(p, f32::NAN, 3), 2);
        assert_eq!(
            tier_for_score(p, 0.5, 2),
            1,
            "two tiers: warm goes to the slow one"
        );
        assert_eq!(tier_for_score(p, 0.9, 1), 0);
        assert_eq!(tier_for_score(p, 0.9, 0), 0);
    }

    #[test]
    fn performance_and_cost_policies_shift_the_thresholds() {
        assert_eq!(
            tier_for_score(TieringPolicy::PerformanceOptimized, 0.2, 3),
            0
        );
        assert_eq!(
            tier_for_score(TieringPolicy::PerformanceOptimized, 0.05, 3),
            1
        );
        assert_eq!(tier_for_score(TieringPolicy::CostOptimized, 0.9, 3), 1);
        assert_eq!(tier_for_score(TieringPolicy::CostOptimized, 0.5, 3), 2);
        assert_eq!(tier_for_score(TieringPolicy::CostOptimized, 0.97, 3), 0);
    }
}
