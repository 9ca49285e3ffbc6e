//! What the daemon did, per volume, for those outside it: the data path
//! counts where each chunk access was served (relaxed atomics, no lock or
//! allocation), the brain adds each epoch's migrations, and once per epoch
//! [`publish`] writes a snapshot to `<state_dir>/stats/<volume>.json`
//! (atomically by rename, mode 0600). `tierblk play` reads it before and
//! after a playback; there is no control API yet.
//!
//! Counting follows `tierblk replay` (see `replay` module docs): one
//! *access* is one chunk touched by one request, reads and writes alike,
//! and the *fast-tier hit ratio* is the share of accesses served by tier 0
//! (the fastest configured tier). A read of a chunk that has no extent yet
//! is served as zeros and counts as a miss, as replay counts a chunk it has
//! not promoted (every chunk starts on the slowest tier there).

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{cost, epoch::EpochReport, place::Check, volume::Volume};

/// Folder of the stats files, under the daemon's `state_dir`.
pub const STATS_DIR: &str = "stats";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("stats file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("stats file {path}: not a tierblk stats file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "stats file {path}: schema {schema}, written by a newer tierblk (this one reads up to {SCHEMA})"
    )]
    Newer { path: PathBuf, schema: u32 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The stats file of `volume` under a daemon's `state_dir`.
pub fn stats_path(state_dir: &Path, volume: &str) -> PathBuf {
    state_dir.join(STATS_DIR).join(format!("{volume}.json"))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A volume's running totals since the daemon opened it.
#[derive(Debug)]
pub struct VolumeCounters {
    read_fast: AtomicU64,
    read_other: AtomicU64,
    write_fast: AtomicU64,
    write_other: AtomicU64,
    // Brain-side totals, added once per epoch.
    promotions: AtomicU64,
    demotions: AtomicU64,
    prefetches: AtomicU64,
    demand_promotions: AtomicU64,
    early_epochs: AtomicU64,
    /// The last deviation check's figures (f64 bits).
    cold_share: AtomicU64,
    expected_cold_share: AtomicU64,
    deviation: AtomicU64,
    /// Share of its migration budget the mover used at its last copy
    /// (f64 bits; `migrate::backoff`).
    migration_share: AtomicU64,
    published: AtomicU64,
    last_publish_ms: AtomicU64,
    opened_ms: u64,
    /// A failing stats write is logged once, not every epoch.
    warned: AtomicBool,
}

impl Default for VolumeCounters {
    fn default() -> Self {
        Self {
            read_fast: AtomicU64::new(0),
            read_other: AtomicU64::new(0),
            write_fast: AtomicU64::new(0),
            write_other: AtomicU64::new(0),
            promotions: AtomicU64::new(0),
            demotions: AtomicU64::new(0),
            prefetches: AtomicU64::new(0),
            demand_promotions: AtomicU64::new(0),
            early_epochs: AtomicU64::new(0),
            cold_share: AtomicU64::new(0),
            expected_cold_share: AtomicU64::new(0),
            deviation: AtomicU64::new(0),
            migration_share: AtomicU64::new(1f64.to_bits()),
            published: AtomicU64::new(0),
            last_publish_ms: AtomicU64::new(0),
            opened_ms: unix_ms(SystemTime::now()),
            warned: AtomicBool::new(false),
        }
    }
}

impl VolumeCounters {
    /// Counts one chunk access of a guest request (data path: one relaxed
    /// add).
    #[inline]
    pub fn record(&self, write: bool, fast: bool) {
        let c = match (write, fast) {
            (false, true) => &self.read_fast,
            (false, false) => &self.read_other,
            (true, true) => &self.write_fast,
            (true, false) => &self.write_other,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Adds one epoch's migrations: its plan's and the demand promotions
    /// since the epoch before.
    pub fn add_epoch(&self, r: &EpochReport) {
        let d = &r.demand.moves;
        self.promotions
            .fetch_add((r.moves.promoted + d.promoted) as u64, Relaxed);
        self.demotions
            .fetch_add((r.moves.demoted + d.demoted) as u64, Relaxed);
        self.prefetches.fetch_add(r.prefetched as u64, Relaxed);
        self.demand_promotions.fetch_add(d.promoted as u64, Relaxed);
        self.early_epochs.fetch_add(u64::from(r.early), Relaxed);
    }

    /// Keeps the figures of the brain's last deviation check.
    pub fn note_deviation(&self, c: &Check) {
        self.cold_share.store(c.cold_share.to_bits(), Relaxed);
        self.expected_cold_share
            .store(c.expected.to_bits(), Relaxed);
        self.deviation.store(c.deviation.to_bits(), Relaxed);
    }

    /// Keeps the share of its budget the mover copies at now.
    pub fn note_migration_share(&self, share: f64) {
        self.migration_share.store(share.to_bits(), Relaxed);
    }

    /// The share of its budget the mover copied at last.
    pub fn migration_share(&self) -> f64 {
        f64::from_bits(self.migration_share.load(Relaxed))
    }
}

/// Chunks of one volume on one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierChunks {
    pub tier_id: u8,
    pub name: String,
    pub chunks: u64,
}

/// One snapshot of a volume's stats: the stats file's content. Counters
/// are totals since the daemon opened the volume (`opened_unix_ms`); they
/// start again from zero when the daemon restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeStats {
    /// The file's format ([`SCHEMA`]; files without one are version 1).
    /// Fields are only ever added, with defaults: a reader takes any
    /// version up to its own and refuses newer ones.
    #[serde(default = "schema_v1")]
    pub schema: u32,
    pub volume: String,
    /// When the daemon opened the volume: a different value means a
    /// restart, and counters that cannot be compared with older snapshots.
    pub opened_unix_ms: u64,
    /// Snapshots written since then (one per epoch).
    pub seq: u64,
    pub written_unix_ms: u64,
    /// Seconds since the snapshot before (0 for the first).
    pub interval_secs: f64,
    pub chunk_size: u64,
    pub tiering_enabled: bool,
    /// Chunk accesses of guest reads served by tier 0 / by any other tier
    /// or as zeros (no extent yet).
    pub read_accesses_fast: u64,
    pub read_accesses_other: u64,
    /// The same for guest writes (a write lands where its chunk's extent is,
    /// or where the allocation hint puts a new one).
    pub write_accesses_fast: u64,
    pub write_accesses_other: u64,
    /// Accesses served by tier 0 over all accesses (0 when none), as
    /// `tierblk replay` counts it.
    pub fast_hit_ratio: f64,
    /// Bytes moved to a faster tier (any, not only tier 0) / to a slower one,
    /// by the epochs' plans and by demand promotion.
    pub bytes_promoted: u64,
    pub bytes_demoted: u64,
    /// Promotions of chunks that had no access in the epoch before: moved
    /// on the prediction alone (replay counts them the same way).
    pub prefetches: u64,
    /// Chunks promoted into tier 0 because they were served from a slower
    /// tier (demand promotion; included in `bytes_promoted`).
    pub demand_promotions: u64,
    /// Misses the data path posted for demand promotion, and those it
    /// dropped because the volume's queue was full.
    pub misses_posted: u64,
    pub misses_dropped: u64,
    /// The brain's last deviation check (`crate::place::Deviation`): the
    /// share of the accesses since the epoch began that fell outside the
    /// predicted hot set, the share usual for this volume, and the
    /// difference (0 before the first check, and while too few accesses
    /// were counted to tell).
    pub cold_share: f64,
    pub expected_cold_share: f64,
    pub deviation: f64,
    /// Epochs a deviation check ended early to re-tier at once.
    pub early_epochs: u64,
    /// Guest requests completed since the volume was opened, and their
    /// mean latency (from the data path's view: popped to answered), µs.
    #[serde(default)]
    pub guest_requests: u64,
    #[serde(default)]
    pub guest_latency_us_mean: f64,
    /// Share of its migration budget the volume's mover used at its last
    /// copy: below 1 while it yields to a busy guest
    /// (`daemon.migration_yield`).
    #[serde(default = "one")]
    pub migration_share: f64,
    /// Where the volume's allocated chunks are now, fastest tier first.
    pub chunks_per_tier: Vec<TierChunks>,
    /// Monthly cost of the current placement (`cost_per_gb` of each tier).
    pub cost_per_month: f64,
    /// Monthly cost of the same chunks all on tier 0.
    pub cost_per_month_all_fast: f64,
}

/// Version of the stats file this tierblk writes: 2 added the guest load
/// and the migration share (`guest_requests`, `guest_latency_us_mean`,
/// `migration_share`).
pub const SCHEMA: u32 = 2;

fn schema_v1() -> u32 {
    1
}

impl VolumeStats {
    pub fn accesses(&self) -> u64 {
        self.read_accesses_fast
            + self.read_accesses_other
            + self.write_accesses_fast
            + self.write_accesses_other
    }

    /// Reads a stats file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stats: Self = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if stats.schema > SCHEMA {
            return Err(Error::Newer {
                path: path.to_path_buf(),
                schema: stats.schema,
            });
        }
        Ok(stats)
    }
}

fn one() -> f64 {
    1.0
}

/// Share of `hits` in `total`, 0 when there is nothing.
pub fn ratio(hits: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

/// A snapshot of `v`'s stats now (walks the chunk map: once per epoch,
/// never per request).
pub fn snapshot(v: &Volume) -> VolumeStats {
    let c = v.served();
    let ids = v.tiers().ids();
    let mut chunks = vec![0u64; ids.len()];
    for ch in 0..v.chunk_count() {
        if let Some(pos) = v.tier_index(ch) {
            chunks[pos] += 1;
        }
    }
    let defs: Vec<_> = ids
        .iter()
        .filter_map(|&i| v.tiers().get(i).map(|t| t.definition()))
        .collect();
    let cs = v.chunk_size();
    let allocated: u64 = chunks.iter().sum();
    let mut all_fast = vec![0u64; chunks.len()];
    if let Some(first) = all_fast.first_mut() {
        *first = allocated;
    }
    let now = unix_ms(SystemTime::now());
    let last = c.last_publish_ms.load(Relaxed);
    let load = v.guest_load().sample();
    let (rf, ro, wf, wo) = (
        c.read_fast.load(Relaxed),
        c.read_other.load(Relaxed),
        c.write_fast.load(Relaxed),
        c.write_other.load(Relaxed),
    );
    VolumeStats {
        schema: SCHEMA,
        volume: v.name().to_string(),
        opened_unix_ms: c.opened_ms,
        seq: c.published.load(Relaxed),
        written_unix_ms: now,
        interval_secs: if last == 0 {
            0.0
        } else {
            now.saturating_sub(last) as f64 / 1000.0
        },
        chunk_size: cs,
        tiering_enabled: v.metadata().tiering_enabled,
        read_accesses_fast: rf,
        read_accesses_other: ro,
        write_accesses_fast: wf,
        write_accesses_other: wo,
        fast_hit_ratio: ratio(rf + wf, rf + ro + wf + wo),
        bytes_promoted: c.promotions.load(Relaxed) * cs,
        bytes_demoted: c.demotions.load(Relaxed) * cs,
        prefetches: c.prefetches.load(Relaxed),
        demand_promotions: c.demand_promotions.load(Relaxed),
        misses_posted: v.misses().posted(),
        misses_dropped: v.misses().dropped(),
        cold_share: f64::from_bits(c.cold_share.load(Relaxed)),
        expected_cold_share: f64::from_bits(c.expected_cold_share.load(Relaxed)),
        deviation: f64::from_bits(c.deviation.load(Relaxed)),
        early_epochs: c.early_epochs.load(Relaxed),
        guest_requests: load.completed,
        guest_latency_us_mean: if load.completed == 0 {
            0.0
        } else {
            load.busy_ns as f64 / load.completed as f64 / 1000.0
        },
        migration_share: c.migration_share(),
        chunks_per_tier: defs
            .iter()
            .zip(&chunks)
            .map(|(d, &n)| TierChunks {
                tier_id: d.tier_id,
                name: d.name.clone(),
                chunks: n,
            })
            .collect(),
        cost_per_month: cost::placement_cost(&defs, &chunks, cs),
        cost_per_month_all_fast: cost::placement_cost(&defs, &all_fast, cs),
    }
}

/// The brain's one call per epoch: adds the epoch's migrations to the
/// volume's totals and writes its stats file. A failing write is logged
/// (once) and otherwise ignored: stats never stop tiering.
pub fn publish(v: &Volume, report: &EpochReport) {
    let c = v.served();
    c.add_epoch(report);
    c.published.fetch_add(1, Relaxed);
    let stats = snapshot(v);
    c.last_publish_ms.store(stats.written_unix_ms, Relaxed);
    let Some(state_dir) = v.store().path().parent() else {
        return;
    };
    let path = stats_path(state_dir, v.name());
    match write_atomic(&path, &stats) {
        Ok(()) => c.warned.store(false, Relaxed),
        Err(e) => {
            if !c.warned.swap(true, Relaxed) {
                log::warn!("volume '{}': {e} (stats not published)", v.name());
            }
        }
    }
}

/// Writes `stats` to a temporary file beside `path` (mode 0600), then
/// renames it over `path`: a reader sees the old or the new file, whole.
fn write_atomic(path: &Path, stats: &VolumeStats) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(stats).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{config::Config, meta::Store, tier::TierSet};

    fn open(dir: &Path) -> Arc<Volume> {
        let mut s = String::new();
        for (i, cap) in ["256KiB", "4MiB"].iter().enumerate() {
            let p = dir.join(format!("t{i}"));
            std::fs::create_dir_all(&p).unwrap();
            s += &format!(
                "[[tier]]\ntier_id = {i}\nname = \"t{i}\"\ncapacity = \"{cap}\"\ncost_per_gb = {}\npath = \"{}\"\n\
                 performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}\n",
                1.0 / (i + 1) as f64,
                p.display()
            );
        }
        s += "[[volume]]\nname = \"v\"\nsize = \"2MiB\"\nchunk_size = \"64KiB\"\nsocket = \"/tmp/unused\"\n";
        let cfg = Config::parse(&s).unwrap();
        let store = Arc::new(Store::open(&dir.join("state")).unwrap());
        let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
        Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap())
    }

    #[test]
    fn published_stats_count_accesses_migrations_and_cost() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path());
        // Six chunks with extents, wherever the allocation hint puts them.
        for c in 0..6u64 {
            v.write_at(c * 65536, &[1u8; 512]).unwrap();
        }
        v.served().record(false, true);
        v.served().record(false, false);
        v.served().record(true, true);
        v.served().record(false, false);
        let moves = |promoted, demoted| crate::epoch::MoveCounts {
            promoted,
            demoted,
            ..Default::default()
        };
        let r = EpochReport {
            moves: moves(2, 1),
            prefetched: 1,
            demand: crate::epoch::DemandReport {
                misses: 5,
                moves: moves(1, 1),
            },
            ..Default::default()
        };
        v.misses().post(3);
        publish(&v, &r);
        let path = stats_path(&dir.path().join("state"), "v");
        let s = VolumeStats::load(&path).unwrap();
        assert_eq!(s.seq, 1);
        assert_eq!(s.accesses(), 4);
        assert_eq!((s.read_accesses_fast, s.read_accesses_other), (1, 2));
        assert!((s.fast_hit_ratio - 0.5).abs() < 1e-12, "{s:?}");
        assert_eq!((s.bytes_promoted, s.bytes_demoted), (3 * 65536, 2 * 65536));
        assert_eq!((s.prefetches, s.demand_promotions), (1, 1));
        assert_eq!((s.misses_posted, s.misses_dropped), (1, 0));
        let on: Vec<u64> = s.chunks_per_tier.iter().map(|t| t.chunks).collect();
        assert_eq!(on.len(), 2);
        assert_eq!(on[0] + on[1], 6);
        // Tier 0 costs 1 per GB-month, tier 1 0.5.
        let want = (on[0] as f64 * 1.0 + on[1] as f64 * 0.5) * 65536.0 / 1e9;
        assert!((s.cost_per_month - want).abs() < 1e-12, "{s:?}");
        assert!((s.cost_per_month_all_fast - 6.0 * 65536.0 / 1e9).abs() < 1e-12);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        publish(&v, &EpochReport::default());
        let s2 = VolumeStats::load(&path).unwrap();
        assert_eq!((s2.seq, s2.opened_unix_ms), (2, s.opened_unix_ms));
        assert_eq!(s2.bytes_promoted, s.bytes_promoted);
        assert_eq!(s2.schema, SCHEMA);
    }

    #[test]
    fn older_stats_files_read_and_newer_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path());
        publish(&v, &EpochReport::default());
        let path = stats_path(&dir.path().join("state"), "v");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // Version 1: no schema and none of version 2's fields.
        let o = json.as_object_mut().unwrap();
        for k in [
            "schema",
            "guest_requests",
            "guest_latency_us_mean",
            "migration_share",
        ] {
            assert!(o.remove(k).is_some(), "{k} missing from a new file");
        }
        std::fs::write(&path, json.to_string()).unwrap();
        let s = VolumeStats::load(&path).unwrap();
        assert_eq!((s.schema, s.guest_requests, s.migration_share), (1, 0, 1.0));
        json["schema"] = (SCHEMA + 1).into();
        std::fs::write(&path, json.to_string()).unwrap();
        let e = VolumeStats::load(&path).unwrap_err().to_string();
        assert!(e.contains("newer tierblk") && e.contains("v.json"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_stats_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, "{\"volume\": 3}").unwrap();
        let e = VolumeStats::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("x.json") && e.contains("not a tierblk stats file"),
            "{e}"
        );
        let e = VolumeStats::load(&dir.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.json"), "{e}");
    }
}
