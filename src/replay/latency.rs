//! Per-tier latency model from the tiers' `performance_metrics`.

use crate::config::TierDefinition;

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Service time of an access on each tier: the tier's read or write
/// latency plus the transfer time at its bandwidth. Tiers serve accesses
/// independently (no queueing); a request takes as long as its slowest
/// chunk piece.
#[derive(Debug, Clone)]
pub struct LatencyModel {
    read_us: Vec<f64>,
    write_us: Vec<f64>,
    us_per_byte: Vec<f64>,
}

impl LatencyModel {
    /// `tiers` fastest first.
    pub fn new(tiers: &[&TierDefinition]) -> Self {
        Self {
            read_us: tiers
                .iter()
                .map(|t| t.performance_metrics.read_latency_us)
                .collect(),
            write_us: tiers
                .iter()
                .map(|t| t.performance_metrics.write_latency_us)
                .collect(),
            us_per_byte: tiers
                .iter()
                .map(|t| {
                    let bw = t.performance_metrics.bandwidth_mibps;
                    if bw > 0.0 {
                        1e6 / (bw * BYTES_PER_MIB)
                    } else {
                        0.0
                    }
                })
                .collect(),
        }
    }

    /// Microseconds for `bytes` on tier index `tier`.
    pub fn access_us(&self, tier: usize, write: bool, bytes: u32) -> f64 {
        let base = if write {
            self.write_us[tier]
        } else {
            self.read_us[tier]
        };
        base + bytes as f64 * self.us_per_byte[tier]
    }
}

/// Mean and 99th percentile of request latencies.
pub fn mean_p99(lat: &mut [f32]) -> (f64, f64) {
    if lat.is_empty() {
        return (0.0, 0.0);
    }
    let mean = lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64;
    let k = ((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1;
    let (_, p, _) = lat.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    (mean, *p as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_picks_the_99th_percentile() {
        let mut v: Vec<f32> = (1..=100).map(|x| x as f32).collect();
        let (m, p) = mean_p99(&mut v);
        assert_eq!((m, p), (50.5, 99.0));
        assert_eq!(mean_p99(&mut []), (0.0, 0.0));
    }
}
