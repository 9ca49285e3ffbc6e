//! Daemon configuration: tiers, volumes and daemon settings, read from TOML.
//!
//! Every validation error names the offending key and value, so an operator
//! can fix the file without reading the source.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize};

/// Errors found while reading or checking a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(key: impl Into<String>, value: impl fmt::Display, reason: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A size in bytes, written in TOML as an integer or a string with a binary
/// or decimal suffix ("512", "64KiB", "1 GiB", "10G", "2TB").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (name, unit) in UNITS {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{}", self.0 / unit, name);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a size (expected e.g. 512, 64KiB, 10GiB)"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            other => return Err(format!("'{s}': unknown size unit '{other}'")),
        };
        // A TOML integer holds at most i64::MAX: a larger size could not be
        // printed back (`check-config` prints the config it read).
        n.checked_mul(mult)
            .filter(|b| *b <= i64::MAX as u64)
            .map(ByteSize)
            .ok_or_else(|| format!("'{s}' is too large (at most 8388607TiB)"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"64KiB\" or \"10GiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is 0 or more bytes")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<ByteSize, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number of bytes (write e.g. \"1536KiB\")"
                )))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// File mode bits of the volume sockets, written in TOML as an octal
/// string ("0660").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Default for SocketMode {
    fn default() -> Self {
        Self(0o600)
    }
}

impl fmt::Display for SocketMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(SocketMode)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "socket_mode '{s}': expected an octal mode such as \"0600\" or \"0660\""
                ))
            })
    }
}

/// Expected speed of a tier; placement and the replay latency model read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceMetrics {
    /// Expected read latency of one 4 KiB access, microseconds.
    pub read_latency_us: f64,
    /// Expected write latency of one 4 KiB access, microseconds.
    pub write_latency_us: f64,
    /// Expected random 4 KiB IOPS.
    #[serde(default)]
    pub iops: u64,
    /// Expected sequential bandwidth, MiB/s.
    pub bandwidth_mibps: f64,
}

/// Optional slow-down applied to a tier's completions so that one disk can
/// stand in for NVMe, SSD and HDD in tests and benchmarks (DESIGN decision 7).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emulate {
    /// Added latency per read request, microseconds.
    #[serde(default)]
    pub read_latency_us: u64,
    /// Added latency per write request, microseconds.
    #[serde(default)]
    pub write_latency_us: u64,
    /// Bandwidth cap, MiB/s (0 = no cap).
    #[serde(default)]
    pub bandwidth_mibps: u64,
}

/// How an injected fault fails an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// The operation fails with EIO.
    Eio,
    /// Only half of the bytes are transferred.
    Short,
}

fn default_fault_every() -> u64 {
    1
}

/// TEST ONLY: faults injected into a tier's operations (SPDK error-bdev
/// style), to test that a failing device fails only what touches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub reads: bool,
    #[serde(default)]
    pub writes: bool,
    #[serde(default)]
    pub syncs: bool,
    pub kind: FaultKind,
    /// Every Nth matching operation fails (1 = all).
    #[serde(default = "default_fault_every")]
    pub every: u64,
}

/// One class of storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierDefinition {
    /// 0 is the fastest tier; ids must be unique.
    pub tier_id: u8,
    pub name: String,
    pub performance_metrics: PerformanceMetrics,
    /// Bytes of volume data this tier may hold.
    pub capacity: ByteSize,
    /// Cost per GB (10^9 bytes) per month, in the operator's currency.
    pub cost_per_gb: f64,
    /// A directory (the tier keeps its extent file `extents.dat` in it) or a
    /// block device.
    pub path: PathBuf,
    /// Open the device with O_DIRECT (bypass the host page cache).
    #[serde(default)]
    pub direct_io: bool,
    #[serde(default)]
    pub emulate: Option<Emulate>,
    /// TEST ONLY: injected faults; never set in production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// How placement chooses tiers for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TieringPolicy {
    /// Score thresholds 0.8 / 0.3 over the heat map, within tier capacity.
    #[default]
    Default,
    /// Prefer the fastest tier while it has room.
    PerformanceOptimized,
    /// Keep data on the cheapest tier unless it is clearly hot.
    CostOptimized,
}

impl FromStr for TieringPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" => Ok(Self::Default),
            "performance-optimized" => Ok(Self::PerformanceOptimized),
            "cost-optimized" => Ok(Self::CostOptimized),
            _ => Err(format!(
                "unknown tiering policy '{s}' (expected default, performance-optimized or cost-optimized)"
            )),
        }
    }
}

impl fmt::Display for TieringPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Default => "default",
            Self::PerformanceOptimized => "performance-optimized",
            Self::CostOptimized => "cost-optimized",
        })
    }
}

pub const DEFAULT_CHUNK_SIZE: u64 = ByteSize::MIB;
pub const MIN_CHUNK_SIZE: u64 = 64 * ByteSize::KIB;
pub const MAX_CHUNK_SIZE: u64 = 64 * ByteSize::MIB;
pub const MAX_QUEUES: u16 = 16;

fn default_chunk_size() -> ByteSize {
    ByteSize(DEFAULT_CHUNK_SIZE)
}
fn default_true() -> bool {
    true
}
fn default_queues() -> u16 {
    1
}
fn default_queue_size() -> u16 {
    256
}
/// Longest accepted `poll_us`: beyond this a poll costs more than a wake-up.
const MAX_POLL_US: u32 = 1000;
fn default_poll_us() -> u32 {
    50
}
fn default_model() -> String {
    "ewma".to_string()
}

/// One VM disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMetadata {
    pub name: String,
    pub size: ByteSize,
    #[serde(default = "default_chunk_size")]
    pub chunk_size: ByteSize,
    /// vhost-user socket the daemon listens on for this volume.
    pub socket: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default = "default_true")]
    pub tiering_enabled: bool,
    #[serde(default)]
    pub tiering_policy: TieringPolicy,
    /// A builtin predictor name ("ewma", "gru", …) or a path to a model file.
    #[serde(default = "default_model")]
    pub prediction_model: String,
    /// Tier used for every chunk when tiering is disabled (default: the
    /// slowest tier).
    #[serde(default)]
    pub pinned_tier: Option<u8>,
    #[serde(default = "default_queues")]
    pub num_queues: u16,
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    /// After a queue's worker runs out of work it busy-polls the virtqueue
    /// and its io_uring this long (µs) before sleeping; 0 never polls.
    #[serde(default = "default_poll_us")]
    pub poll_us: u32,
    /// Serial reported by GET_ID (default: the volume name); at most 20 bytes.
    #[serde(default)]
    pub serial: Option<String>,
    /// libvirt domain XML this volume's VM profile is seeded from.
    #[serde(default)]
    pub domain_xml: Option<PathBuf>,
}

impl VolumeMetadata {
    pub fn chunk_count(&self) -> u64 {
        self.size.0.div_ceil(self.chunk_size.0)
    }

    pub fn serial(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.name)
    }
}

fn default_epoch_secs() -> f64 {
    10.0
}
/// Longest profiling interval accepted: a day.
pub const MAX_EPOCH_SECS: f64 = 86_400.0;
/// Fastest migration rate accepted (MiB/s): beyond any device today.
pub const MAX_MIGRATION_MIBPS: f64 = 1_000_000.0;
/// Most chunks a volume may have. Each chunk costs about 93 bytes of daemon
/// memory (chunk map word, score, counters, history), so this ceiling keeps
/// one volume's metadata under about 780 MB: 512 GiB at 64 KiB chunks,
/// 8 TiB at 1 MiB chunks, 512 TiB at 64 MiB chunks.
pub const MAX_CHUNKS: u64 = 1 << 23;
/// Longest socket path a Unix socket address holds (sun_path, with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
fn default_migration_mibps() -> f64 {
    64.0
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tierblk")
}

/// Daemon-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// Holds the metadata store (`meta.redb`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Profiling interval, seconds.
    #[serde(default = "default_epoch_secs")]
    pub epoch_secs: f64,
    /// Bandwidth background migration may use, MiB/s, for the whole
    /// daemon: the volumes migrating at a time share it (0 = no limit).
    #[serde(default = "default_migration_mibps")]
    pub migration_mibps: f64,
    /// A volume's migration backs off (down to a quarter of its share)
    /// while its guest's request latency, depth or share of slow requests
    /// rises above what it is without migration, and speeds up again
    /// while the guest is idle. Needs a limit (`migration_mibps` > 0).
    #[serde(default = "default_true")]
    pub migration_yield: bool,
    /// Mode of the volume sockets (octal string); other users never get
    /// access. A QEMU that runs as another user (libvirt's qemu user) needs
    /// "0660" and `socket_group`.
    #[serde(default)]
    pub socket_mode: SocketMode,
    /// Group (name or gid) the volume sockets belong to.
    #[serde(default)]
    pub socket_group: Option<String>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            state_dir: default_state_dir(),
            epoch_secs: default_epoch_secs(),
            migration_mibps: default_migration_mibps(),
            migration_yield: true,
            socket_mode: SocketMode::default(),
            socket_group: None,
        }
    }
}

/// Tunables of the placement engine ([`crate::place::Placer`]), the same
/// for every volume and for `tierblk replay`. A volume's
/// `tiering_policy` picks the score thresholds; these shape how tier 0
/// is managed and how much moves per epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementSettings {
    /// Share of tier 0 kept as the protected recency segment: its most
    /// recently used chunks are never displaced.
    pub protected_share: f64,
    /// Most tier-0 residents examined (from the least recently used end)
    /// when picking a chunk to displace.
    pub max_window: usize,
    /// A chunk promoted on demand (a miss) is admitted unless its score is
    /// below the displaced chunk's by more than this (1 or more: always,
    /// like LRU).
    pub admit_slack: f32,
    /// Lowest score a chunk needs to be promoted into tier 0 ahead of use
    /// (prefetch) at an epoch; above 1: no prefetch.
    pub prefetch_min: f32,
    /// Score gain a prefetch needs over the tier-0 chunk it displaces.
    pub prefetch_margin: f32,
    /// Hysteresis of the plan: a promotion must beat the chunk it
    /// displaces by this much, and a chunk stays on its tier until its
    /// score is this far below the policy's threshold for it.
    pub plan_margin: f32,
    /// Upper bound of chunk moves per epoch whatever the migration rate
    /// allows.
    pub max_moves_per_epoch: usize,
    /// Between epochs, promote a chunk served from a slower tier into tier
    /// 0 when the policy and the admission rule let it in (demand
    /// promotion).
    pub demand_promotion: bool,
    /// Times per epoch the brain measures how far the accesses so far
    /// deviate from the predicted heat map (0: never; see
    /// [`crate::place::Deviation`]).
    pub deviation_checks: u32,
    /// Deviation (the share of accesses outside the predicted hot set,
    /// minus the share usual for the volume) at which the brain re-tiers
    /// at once instead of waiting for the epoch's end.
    pub deviation_threshold: f64,
}

/// Most deviation checks per epoch (`placement.deviation_checks`).
pub const MAX_DEVIATION_CHECKS: u32 = 100;

impl Default for PlacementSettings {
    fn default() -> Self {
        Self {
            protected_share: 0.5,
            max_window: 256,
            admit_slack: 1.0,
            prefetch_min: 0.5,
            prefetch_margin: 0.2,
            plan_margin: 0.1,
            max_moves_per_epoch: 4096,
            demand_promotion: true,
            deviation_checks: 4,
            deviation_threshold: 0.3,
        }
    }
}

impl PlacementSettings {
    /// Checks every key's range; errors name `placement.<key>`.
    pub fn validate(&self) -> Result<()> {
        let share = self.protected_share;
        if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
            return Err(invalid(
                "placement.protected_share",
                share,
                "must be a share in [0, 1]",
            ));
        }
        if self.max_window == 0 {
            return Err(invalid("placement.max_window", 0, "must be at least 1"));
        }
        for (k, v) in [
            ("placement.admit_slack", self.admit_slack),
            ("placement.prefetch_min", self.prefetch_min),
            ("placement.prefetch_margin", self.prefetch_margin),
            ("placement.plan_margin", self.plan_margin),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(k, v, "must be a non-negative number"));
            }
        }
        if self.deviation_checks > MAX_DEVIATION_CHECKS {
            return Err(invalid(
                "placement.deviation_checks",
                self.deviation_checks,
                format!("must be at most {MAX_DEVIATION_CHECKS} (0: no checks)"),
            ));
        }
        let t = self.deviation_threshold;
        if !(t.is_finite() && t > 0.0 && t <= 1.0) {
            return Err(invalid(
                "placement.deviation_threshold",
                t,
                "must be a share in (0, 1]",
            ));
        }
        if self.max_moves_per_epoch == 0 {
            return Err(invalid(
                "placement.max_moves_per_epoch",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonSettings,
    #[serde(default)]
    pub placement: PlacementSettings,
    #[serde(rename = "tier", default)]
    pub tiers: Vec<TierDefinition>,
    #[serde(rename = "volume", default)]
    pub volumes: Vec<VolumeMetadata>,
}

impl Config {
    /// Reads and validates a TOML config file. Relative paths inside it are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let with_path = |e: Error| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        };
        let mut cfg = Self::from_toml(&text).map_err(with_path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_relative_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg = Self::from_toml(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string(),
        })
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            // An empty path stays empty, for validation to name.
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.daemon.state_dir);
        for t in &mut self.tiers {
            fix(&mut t.path);
        }
        for v in &mut self.volumes {
            fix(&mut v.socket);
            if let Some(p) = v.domain_xml.as_mut() {
                fix(p);
            }
            if !crate::predict::is_builtin(&v.prediction_model) {
                let mut p = PathBuf::from(&v.prediction_model);
                fix(&mut p);
                v.prediction_model = p.to_string_lossy().into_owned();
            }
        }
    }

    /// Tiers sorted fastest first.
    pub fn tiers_by_speed(&self) -> Vec<&TierDefinition> {
        let mut t: Vec<_> = self.tiers.iter().collect();
        t.sort_by_key(|t| t.tier_id);
        t
    }

    pub fn validate(&self) -> Result<()> {
        if self.daemon.state_dir.as_os_str().is_empty() {
            return Err(invalid("daemon.state_dir", "\"\"", "must name a directory"));
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if t.path.as_os_str().is_empty() {
                return Err(invalid(
                    format!("tier[{i}] ('{}').path", t.name),
                    "\"\"",
                    "must name a directory or a block device",
                ));
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if v.socket.as_os_str().is_empty() {
                return Err(invalid(
                    format!("volume[{i}] ('{}').socket", v.name),
                    "\"\"",
                    "must name the socket file",
                ));
            }
        }
        let e = self.daemon.epoch_secs;
        if !(e.is_finite() && e > 0.0 && e <= MAX_EPOCH_SECS) {
            return Err(invalid(
                "daemon.epoch_secs",
                e,
                format!("must be a number of seconds in (0, {MAX_EPOCH_SECS}]"),
            ));
        }
        let m = self.daemon.migration_mibps;
        if !(m.is_finite() && (0.0..=MAX_MIGRATION_MIBPS).contains(&m)) {
            return Err(invalid(
                "daemon.migration_mibps",
                m,
                format!("must be a number of MiB/s in [0, {MAX_MIGRATION_MIBPS}] (0 = no limit)"),
            ));
        }
        self.placement.validate()?;
        if self.daemon.socket_mode.0 & 0o007 != 0 {
            return Err(invalid(
                "daemon.socket_mode",
                self.daemon.socket_mode,
                "must not give other users access (use socket_group for QEMU's group)",
            ));
        }
        if self.daemon.socket_group.as_deref() == Some("") {
            return Err(invalid(
                "daemon.socket_group",
                "\"\"",
                "must name a group or be left out",
            ));
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let key = |k: &str| format!("tier[{i}] ('{}').{k}", t.name);
            validate_tier(t, &key)?;
            if !ids.insert(t.tier_id) {
                return Err(invalid(key("tier_id"), t.tier_id, "duplicate tier_id"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(key("name"), &t.name, "duplicate tier name"));
            }
            if let Some((j, other)) = self.tiers[..i]
                .iter()
                .enumerate()
                .find(|(_, o)| same_path(&o.path, &t.path))
            {
                return Err(invalid(
                    key("path"),
                    t.path.display(),
                    format!(
                        "already the path of tier[{j}] ('{}'); each tier needs its own device",
                        other.name
                    ),
                ));
            }
        }
        let mut vnames = HashSet::new();
        let mut sockets = HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let key = |k: &str| format!("volume[{i}] ('{}').{k}", v.name);
            validate_volume(v, &key, &ids)?;
            if !vnames.insert(v.name.as_str()) {
                return Err(invalid(key("name"), &v.name, "duplicate volume name"));
            }
            if !sockets.insert(v.socket.as_path()) {
                return Err(invalid(
                    key("socket"),
                    v.socket.display(),
                    "socket already used by another volume",
                ));
            }
        }
        if !self.volumes.is_empty() && self.tiers.is_empty() {
            return Err(invalid("tier", "[]", "volumes need at least one [[tier]]"));
        }
        Ok(())
    }
}

/// Two spellings of one path ("a/./b", "a//b", a symlink) are one path.
fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.components().eq(b.components()),
    }
}

fn validate_tier(t: &TierDefinition, key: &dyn Fn(&str) -> String) -> Result<()> {
    if t.name.is_empty() || t.name.len() > 64 {
        return Err(invalid(key("name"), &t.name, "must be 1..=64 characters"));
    }
    if t.tier_id > crate::volume::chunk_map::MAX_TIER_ID {
        return Err(invalid(
            key("tier_id"),
            t.tier_id,
            format!(
                "must be 0..={} (the chunk map encodes at most {} tiers)",
                crate::volume::chunk_map::MAX_TIER_ID,
                crate::volume::chunk_map::MAX_TIER_ID as u32 + 1
            ),
        ));
    }
    if !t.capacity.0.is_multiple_of(crate::tier::UNIT_BYTES) {
        return Err(invalid(
            key("capacity"),
            t.capacity,
            "must be a multiple of 64KiB",
        ));
    }
    if t.capacity.0 == 0 {
        return Err(invalid(
            key("capacity"),
            t.capacity,
            "must be greater than 0",
        ));
    }
    if t.fault.as_ref().is_some_and(|f| f.every == 0) {
        return Err(invalid(key("fault.every"), 0, "must be at least 1"));
    }
    if !(t.cost_per_gb.is_finite() && t.cost_per_gb >= 0.0) {
        return Err(invalid(
            key("cost_per_gb"),
            t.cost_per_gb,
            "must be a non-negative number",
        ));
    }
    let pm = &t.performance_metrics;
    for (k, v) in [
        ("performance_metrics.read_latency_us", pm.read_latency_us),
        ("performance_metrics.write_latency_us", pm.write_latency_us),
        ("performance_metrics.bandwidth_mibps", pm.bandwidth_mibps),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(invalid(key(k), v, "must be a non-negative number"));
        }
    }
    Ok(())
}

fn validate_volume(
    v: &VolumeMetadata,
    key: &dyn Fn(&str) -> String,
    tier_ids: &HashSet<u8>,
) -> Result<()> {
    if v.name.is_empty()
        || v.name.len() > 64
        || !v
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(
            key("name"),
            &v.name,
            "must be 1..=64 characters of [A-Za-z0-9._-]",
        ));
    }
    let cs = v.chunk_size.0;
    if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
        return Err(invalid(
            key("chunk_size"),
            v.chunk_size,
            "must be a power of two between 64KiB and 64MiB",
        ));
    }
    if v.size.0 == 0 || !v.size.0.is_multiple_of(512) {
        return Err(invalid(
            key("size"),
            v.size,
            "must be a non-zero multiple of 512 bytes",
        ));
    }
    if v.chunk_count() > MAX_CHUNKS {
        return Err(invalid(
            key("size"),
            v.size,
            format!(
                "{} chunks of {}; at most {MAX_CHUNKS} per volume (about 93 bytes of daemon memory each): use a larger chunk_size (at most {} with this one)",
                v.chunk_count(),
                v.chunk_size,
                ByteSize(MAX_CHUNKS * v.chunk_size.0)
            ),
        ));
    }
    let sock = v.socket.as_os_str().len();
    if sock > MAX_SOCKET_PATH {
        return Err(invalid(
            key("socket"),
            v.socket.display(),
            format!("{sock} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}"),
        ));
    }
    if v.num_queues == 0 || v.num_queues > MAX_QUEUES {
        return Err(invalid(
            key("num_queues"),
            v.num_queues,
            format!("must be 1..={MAX_QUEUES}"),
        ));
    }
    if !v.queue_size.is_power_of_two() || !(2..=1024).contains(&v.queue_size) {
        return Err(invalid(
            key("queue_size"),
            v.queue_size,
            "must be a power of two between 2 and 1024",
        ));
    }
    if v.poll_us > MAX_POLL_US {
        return Err(invalid(
            key("poll_us"),
            v.poll_us,
            format!("must be 0..={MAX_POLL_US} (microseconds)"),
        ));
    }
    if v.serial().len() > crate::blk::VIRTIO_BLK_ID_BYTES {
        let max = crate::blk::VIRTIO_BLK_ID_BYTES;
        return Err(invalid(
            key("serial"),
            v.serial(),
            match v.serial {
                Some(_) => format!("at most {max} bytes"),
                None => format!(
                    "at most {max} bytes; the serial defaults to the volume name: set serial, or use a name of at most {max} bytes"
                ),
            },
        ));
    }
    if let Some(t) = v.pinned_tier {
        if !tier_ids.contains(&t) {
            return Err(invalid(key("pinned_tier"), t, "no tier with this tier_id"));
        }
    }
    if v.prediction_model.is_empty() {
        return Err(invalid(
            key("prediction_model"),
            "\"\"",
            "must name a builtin model or a model file",
        ));
    }
    Ok(())
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
state_dir = "/tmp/x"

[[tier]]
tier_id = 0
name = "nvme"
capacity = "1GiB"
cost_per_gb = 0.20
path = "/tmp/t0"
performance_metrics = { read_latency_us = 80, write_latency_us = 20, bandwidth_mibps = 3000 }

[[tier]]
tier_id = 1
name = "hdd"
capacity = 4294967296
cost_per_gb = 0.02
path = "/tmp/t1"
performance_metrics = { read_latency_us = 8000, write_latency_us = 8000, bandwidth_mibps = 150 }
emulate = { read_latency_us = 5000 }

[[volume]]
name = "vm1-disk0"
size = "2GiB"
socket = "/tmp/vm1.sock"
tiering_policy = "cost-optimized"
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.tiers.len(), 2);
        assert_eq!(c.tiers[1].capacity.0, 4 << 30);
        assert_eq!(c.tiers[1].emulate.as_ref().unwrap().read_latency_us, 5000);
        let v = &c.volumes[0];
        assert_eq!(v.chunk_size.0, DEFAULT_CHUNK_SIZE);
        assert_eq!(v.chunk_count(), 2048);
        assert_eq!(v.tiering_policy, TieringPolicy::CostOptimized);
        assert!(v.tiering_enabled);
        assert_eq!(v.serial(), "vm1-disk0");
    }

    #[test]
    fn byte_sizes_parse_and_print() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().0, 65536);
        assert_eq!("1 GiB".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("10GB".parse::<ByteSize>().unwrap().0, 10_000_000_000);
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("GiB".parse::<ByteSize>().is_err());
        assert!("99999999999999T".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(3 << 20).to_string(), "3MiB");
    }

    fn err_of(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_chunk_size_names_key_and_value() {
        let e = err_of(&GOOD.replace("tiering_policy", "chunk_size = \"100KiB\"\ntiering_policy"));
        assert!(
            e.contains("chunk_size") && e.contains("100KiB") && e.contains("power of two"),
            "{e}"
        );
    }

    #[test]
    fn poll_window_over_the_limit_names_key_and_value() {
        let e = err_of(&GOOD.replace("tiering_policy", "poll_us = 5000\ntiering_policy"));
        assert!(e.contains("poll_us") && e.contains("5000"), "{e}");
    }

    #[test]
    fn duplicate_tier_id_is_rejected() {
        let e = err_of(&GOOD.replace("tier_id = 1", "tier_id = 0"));
        assert!(e.contains("tier_id") && e.contains("duplicate"), "{e}");
    }

    #[test]
    fn unknown_policy_and_unknown_key_are_rejected() {
        let e = err_of(&GOOD.replace("cost-optimized", "fastest"));
        assert!(e.contains("fastest"), "{e}");
        let e = err_of(&GOOD.replace("cost_per_gb = 0.02", "cost_per_gb = 0.02\ncolour = 1"));
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn bad_size_and_pinned_tier_are_rejected() {
        let e = err_of(&GOOD.replace("size = \"2GiB\"", "size = 1000"));
        assert!(e.contains("size") && e.contains("512"), "{e}");
        let e = err_of(&GOOD.replace("tiering_policy", "pinned_tier = 7\ntiering_policy"));
        assert!(e.contains("pinned_tier") && e.contains('7'), "{e}");
    }

    #[test]
    fn negative_cost_is_rejected() {
        let e = err_of(&GOOD.replace("0.20", "-1.0"));
        assert!(e.contains("cost_per_gb") && e.contains("-1"), "{e}");
    }

    #[test]
    fn tier_ids_the_chunk_map_cannot_encode_are_rejected() {
        let e = err_of(&GOOD.replace("tier_id = 1", "tier_id = 16"));
        assert!(e.contains("tier_id = 16") && e.contains("0..=15"), "{e}");
    }

    #[test]
    fn two_tiers_on_one_path_are_rejected() {
        let e = err_of(&GOOD.replace("/tmp/t1", "/tmp/./t0"));
        assert!(e.contains("path") && e.contains("tier[0]"), "{e}");
    }

    #[test]
    fn out_of_range_numbers_are_errors_not_panics() {
        let e = err_of(&GOOD.replace("state_dir", "epoch_secs = 1e20\nstate_dir"));
        assert!(e.contains("epoch_secs = 100000000000000000000"), "{e}");
        let e = err_of(&GOOD.replace("size = \"2GiB\"", "size = \"200TiB\""));
        assert!(
            e.contains("size = 200TiB") && e.contains("chunk_size"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("size = \"2GiB\"", "size = -5"));
        assert!(e.contains("-5 is negative"), "{e}");
        let e = err_of(&GOOD.replace("size = \"2GiB\"", "size = 1.5"));
        assert!(e.contains("whole number"), "{e}");
    }

    #[test]
    fn sizes_past_what_toml_can_print_are_rejected() {
        // Found by fuzz_config_byte_sizes: 2^63 bytes parsed, and then
        // `check-config` panicked printing it (TOML integers are i64).
        let e = err_of(&GOOD.replace("capacity = \"1GiB\"", "capacity = \"8388608TiB\""));
        assert!(e.contains("capacity") && e.contains("too large"), "{e}");
        assert_eq!("8388607TiB".parse::<ByteSize>().unwrap().0, 8388607 << 40);
        assert!("9223372036854775808".parse::<ByteSize>().is_err());
        let c = Config::parse(&GOOD.replace("capacity = \"1GiB\"", "capacity = \"8388607TiB\""))
            .unwrap();
        assert_eq!(Config::parse(&toml::to_string(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn strings_with_long_runs_of_quotes_print_and_read_back() {
        // Found by AFL (fuzz target `config`, 10 M runs): toml 0.8's writer
        // counted a run of quotes in a u8, so `check-config` panicked (or,
        // in a release build, could print a wrong string) on a path with
        // more than 255 quotes in a row. toml 1's writer saturates.
        let odd = format!("/tmp/{}x{}", "'".repeat(300), "\"".repeat(300));
        let mut c = Config::parse(GOOD).unwrap();
        c.daemon.state_dir = PathBuf::from(&odd);
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c);
    }

    #[test]
    fn serial_too_long_by_default_names_the_volume_name() {
        // Found by fuzz_config_one_edit_names_the_key: a 21-byte volume
        // name failed as `serial`, a key the config does not contain.
        let e = err_of(&GOOD.replace("vm1-disk0", "vm1-disk0-0123456789ab"));
        assert!(e.contains("serial") && e.contains("volume name"), "{e}");
    }

    #[test]
    fn socket_paths_no_client_can_reach_are_rejected() {
        let long = format!("/tmp/{}.sock", "x".repeat(110));
        let e = err_of(&GOOD.replace("/tmp/vm1.sock", &long));
        assert!(e.contains("socket") && e.contains("at most 107"), "{e}");
    }

    #[test]
    fn socket_mode_never_opens_to_other_users() {
        let e = err_of(&GOOD.replace("state_dir", "socket_mode = \"0666\"\nstate_dir"));
        assert!(
            e.contains("socket_mode = 0666") && e.contains("other users"),
            "{e}"
        );
        let e = err_of(&GOOD.replace("state_dir", "socket_mode = \"rw\"\nstate_dir"));
        assert!(e.contains("octal"), "{e}");
        let c =
            Config::parse(&GOOD.replace("state_dir", "socket_mode = \"0660\"\nstate_dir")).unwrap();
        assert_eq!(c.daemon.socket_mode, SocketMode(0o660));
    }

    #[test]
    fn empty_paths_are_rejected_by_key() {
        let e = err_of(&GOOD.replace("state_dir = \"/tmp/x\"", "state_dir = \"\""));
        assert!(e.contains("daemon.state_dir"), "{e}");
        let e = err_of(&GOOD.replace("path = \"/tmp/t1\"", "path = \"\""));
        assert!(e.contains("tier[1] ('hdd').path"), "{e}");
        let e = err_of(&GOOD.replace("socket = \"/tmp/vm1.sock\"", "socket = \"\""));
        assert!(e.contains("volume[0] ('vm1-disk0').socket"), "{e}");
    }
}
