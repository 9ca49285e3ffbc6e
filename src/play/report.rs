//! Play results, as a table or JSON.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use super::layout::Layout;
use crate::stats::{ratio, TierChunks, VolumeStats};

/// Guest-side results of one op type (or all).
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Requests completed.
    pub requests: u64,
    pub bytes: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    /// Latency from submission to completion.
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// What the daemon counted between the stats snapshots before and after
/// the play (anything else the volume served meanwhile included).
#[derive(Debug, Clone, Serialize)]
pub struct DaemonReport {
    pub stats_file: String,
    /// Epochs (snapshots) between the two, and how many of them a
    /// deviation check ended early.
    pub epochs: u64,
    pub early_epochs: u64,
    /// Chunk accesses (one per chunk a request touches), reads and writes.
    pub accesses: u64,
    pub read_accesses: u64,
    /// Accesses served by tier 0.
    pub fast_hits: u64,
    /// `fast_hits / accesses`: the definition `tierblk replay` prints.
    pub fast_hit_ratio: f64,
    /// The same over read accesses only.
    pub read_fast_hit_ratio: f64,
    pub bytes_promoted: u64,
    pub bytes_demoted: u64,
    pub prefetches: u64,
    /// Placement cost per month after the play, and of the same chunks all
    /// on tier 0.
    pub cost_per_month: f64,
    pub cost_per_month_all_fast: f64,
    pub chunks_per_tier: Vec<TierChunks>,
}

impl DaemonReport {
    pub fn between(path: &Path, b: &VolumeStats, a: &VolumeStats) -> Self {
        let d = |x: u64, y: u64| x.saturating_sub(y);
        let rf = d(a.read_accesses_fast, b.read_accesses_fast);
        let ro = d(a.read_accesses_other, b.read_accesses_other);
        let wf = d(a.write_accesses_fast, b.write_accesses_fast);
        let wo = d(a.write_accesses_other, b.write_accesses_other);
        Self {
            stats_file: path.display().to_string(),
            epochs: d(a.seq, b.seq),
            early_epochs: d(a.early_epochs, b.early_epochs),
            accesses: rf + ro + wf + wo,
            read_accesses: rf + ro,
            fast_hits: rf + wf,
            fast_hit_ratio: ratio(rf + wf, rf + ro + wf + wo),
            read_fast_hit_ratio: ratio(rf, rf + ro),
            bytes_promoted: d(a.bytes_promoted, b.bytes_promoted),
            bytes_demoted: d(a.bytes_demoted, b.bytes_demoted),
            prefetches: d(a.prefetches, b.prefetches),
            cost_per_month: a.cost_per_month,
            cost_per_month_all_fast: a.cost_per_month_all_fast,
            chunks_per_tier: a.chunks_per_tier.clone(),
        }
    }
}

/// Results of a play.
#[derive(Debug, Clone, Serialize)]
pub struct PlayReport {
    pub trace: String,
    pub socket: String,
    pub speed: f64,
    pub qd: usize,
    pub start_secs: f64,
    /// Trace time from the first to the last played request.
    pub trace_secs: f64,
    /// Requests issued (and completed: a failed one fails the play).
    pub requests: u64,
    /// Requests cut to 1 MiB or to the volume size.
    pub cut_requests: u64,
    /// Chunk accesses the played requests make, in the daemon's chunk
    /// size (known from its stats file).
    pub chunk_accesses: Option<u64>,
    /// Chunks written before the play (`--prefill`).
    pub prefilled_chunks: Option<u64>,
    pub wall_secs: f64,
    /// Most a request was issued after its (scaled) trace time, waiting
    /// for a free slot.
    pub max_issue_lag_ms: f64,
    pub layout: Layout,
    pub read: OpReport,
    pub write: OpReport,
    pub all: OpReport,
    pub daemon: Option<DaemonReport>,
}

impl PlayReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let speed = if self.speed == 0.0 {
            "as fast as possible".to_string()
        } else {
            format!("speed {}×", self.speed)
        };
        let _ = writeln!(
            s,
            "play {} → {}: {} requests, {:.1} s of trace from {} s, {speed}, qd {}, {:.2} s wall, max issue lag {:.1} ms",
            self.trace,
            self.socket,
            self.requests,
            self.trace_secs,
            self.start_secs,
            self.qd,
            self.wall_secs,
            self.max_issue_lag_ms
        );
        if let Some(n) = self.prefilled_chunks {
            let _ = writeln!(
                s,
                "prefilled {n} chunks (4 KiB each) in the epoch before the play"
            );
        }
        let regions: Vec<String> = self
            .layout
            .devices
            .iter()
            .map(|d| format!("dev {} at {} (span {})", d.dev, d.base, d.span))
            .collect();
        let _ = writeln!(
            s,
            "layout in {} volume bytes: {}{}{}",
            self.layout.volume_bytes,
            regions.join(", "),
            if self.layout.wraps {
                "; offsets WRAP (volume smaller than the spans)"
            } else {
                ""
            },
            if self.cut_requests > 0 {
                format!("; {} requests cut to 1 MiB", self.cut_requests)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "{:<6} {:>9} {:>10} {:>10} {:>9} {:>10} {:>10} {:>10}",
            "op", "requests", "MiB", "IOPS", "MiB/s", "mean µs", "p50 µs", "p99 µs"
        );
        for (name, r) in [
            ("read", &self.read),
            ("write", &self.write),
            ("all", &self.all),
        ] {
            let _ = writeln!(
                s,
                "{:<6} {:>9} {:>10.1} {:>10.0} {:>9.1} {:>10.1} {:>10.1} {:>10.1}",
                name,
                r.requests,
                r.bytes as f64 / 1048576.0,
                r.iops,
                r.mib_per_s,
                r.mean_us,
                r.p50_us,
                r.p99_us
            );
        }
        match &self.daemon {
            None => {
                let _ = writeln!(s, "daemon: not read (give --stats FILE or --config FILE)");
            }
            Some(d) => {
                let tiers: Vec<String> = d
                    .chunks_per_tier
                    .iter()
                    .map(|t| format!("{} {}", t.name, t.chunks))
                    .collect();
                let _ = writeln!(
                    s,
                    "daemon ({} epochs, {} early): fast-tier hit ratio {:.4} ({} of {} chunk accesses; reads {:.4}), \
                     promoted {:.1} MiB, demoted {:.1} MiB, {} prefetches, cost/month {:.4} (all on tier 0: {:.4}), chunks: {}",
                    d.epochs,
                    d.early_epochs,
                    d.fast_hit_ratio,
                    d.fast_hits,
                    d.accesses,
                    d.read_fast_hit_ratio,
                    d.bytes_promoted as f64 / 1048576.0,
                    d.bytes_demoted as f64 / 1048576.0,
                    d.prefetches,
                    d.cost_per_month,
                    d.cost_per_month_all_fast,
                    tiers.join(", ")
                );
            }
        }
        s
    }
}
