//! Cost of a placement per month, from each tier's `cost_per_gb`.

use crate::config::TierDefinition;

/// Bytes per GB in `cost_per_gb` (decimal, as storage is billed).
pub const BYTES_PER_GB: f64 = 1e9;

/// Monthly cost of holding `bytes_per_tier[i]` bytes on `tiers[i]`.
pub fn monthly_cost(tiers: &[&TierDefinition], bytes_per_tier: &[u64]) -> f64 {
    tiers
        .iter()
        .zip(bytes_per_tier)
        .map(|(t, &b)| b as f64 / BYTES_PER_GB * t.cost_per_gb)
        .sum()
}

/// Monthly cost of a placement: `chunks_per_tier[i]` chunks of
/// `chunk_size` bytes on `tiers[i]`.
pub fn placement_cost(tiers: &[&TierDefinition], chunks_per_tier: &[u64], chunk_size: u64) -> f64 {
    let bytes: Vec<u64> = chunks_per_tier
        .iter()
        .map(|&c| c.saturating_mul(chunk_size))
        .collect();
    monthly_cost(tiers, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn cost_sums_used_bytes_times_price_per_gb() {
        let cfg = Config::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/default.toml"
        )))
        .unwrap();
        let tiers = cfg.tiers_by_speed();
        // 2 GB on nvme at 0.25 + 10 GB on hdd at 0.03.
        let c = monthly_cost(&tiers, &[2_000_000_000, 0, 10_000_000_000]);
        assert!((c - (0.5 + 0.3)).abs() < 1e-9, "{c}");
        let c = placement_cost(&tiers, &[1000, 0, 0], 1_000_000);
        assert!((c - 0.25).abs() < 1e-9, "{c}");
    }
}
