//! Replay results, as a table or JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// Results of one policy.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub policy: String,
    pub accesses: u64,
    pub fast_hits: u64,
    /// Share of accesses served by tier 0.
    pub hit_ratio: f64,
    /// Bytes moved to any faster tier.
    pub bytes_promoted: u64,
    /// Bytes moved into tier 0 (what a two-level cache would call promotions).
    pub bytes_promoted_fast: u64,
    pub bytes_demoted: u64,
    /// Promotions of chunks not accessed in the epoch before (predicted, not observed).
    pub prefetches: u64,
    pub mean_latency_us: f64,
    pub p99_latency_us: f64,
    /// Placement cost per month, averaged over the epochs.
    pub cost_per_month: f64,
    /// Most chunks tier 0 held at any time.
    pub max_fast_chunks: u64,
    /// Wall-clock seconds the predictor spent scoring.
    pub predict_secs: f64,
    /// Planned moves that did not happen (the chunk was being moved, or
    /// the target had no room), as the daemon's migration skips them.
    pub moves_skipped: u64,
    /// Epochs a deviation check ended early to re-tier at once.
    pub early_epochs: u64,
}

/// Results of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub trace: String,
    pub requests: u64,
    pub accesses: u64,
    pub chunk_size: u64,
    pub footprint_chunks: u64,
    pub fast_capacity_chunks: u64,
    /// Requests per epoch, when epochs count requests.
    pub epoch_requests: Option<u64>,
    /// Seconds of trace time per epoch, when epochs follow the clock.
    pub epoch_secs: Option<f64>,
    /// Migration rate (0 = unlimited): move budget and copy time.
    pub migration_mibps: f64,
    /// Whether tierblk's runs also promoted on each miss.
    pub demand_promotion: bool,
    /// Whether tierblk's runs started from a prefilled volume.
    pub prefill: bool,
    pub tiering_policy: String,
    pub runs: Vec<RunReport>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "trace {}: {} requests, {} chunk accesses, chunk {} B, footprint {} chunks, fast tier {} chunks, epoch {}, migration {}, policy {}{}{}",
            self.trace,
            self.requests,
            self.accesses,
            self.chunk_size,
            self.footprint_chunks,
            self.fast_capacity_chunks,
            match (self.epoch_requests, self.epoch_secs) {
                (Some(n), _) => format!("{n} requests"),
                (None, Some(s)) => format!("{s} s of trace time"),
                (None, None) => "?".into(),
            },
            if self.migration_mibps > 0.0 {
                format!("{} MiB/s", self.migration_mibps)
            } else {
                "unlimited".into()
            },
            self.tiering_policy,
            if self.demand_promotion {
                ", with demand promotion"
            } else {
                ", without demand promotion"
            },
            if self.prefill {
                ", from a prefilled volume"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "{:<18} {:>9} {:>12} {:>12} {:>10} {:>11} {:>11} {:>10}",
            "policy",
            "hit ratio",
            "promoted MiB",
            "demoted MiB",
            "prefetches",
            "mean µs",
            "p99 µs",
            "cost/month"
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "{:<18} {:>9.4} {:>12.1} {:>12.1} {:>10} {:>11.1} {:>11.1} {:>10.4}",
                r.policy,
                r.hit_ratio,
                r.bytes_promoted as f64 / 1048576.0,
                r.bytes_demoted as f64 / 1048576.0,
                r.prefetches,
                r.mean_latency_us,
                r.p99_latency_us,
                r.cost_per_month
            );
        }
        s
    }
}
