//! `tierblk play`: plays a block trace against a running daemon's
//! vhost-user socket as a guest would, and reports what the guest saw
//! (latency, IOPS, bytes per op type) beside what the daemon did meanwhile
//! (from its per-volume stats file, see [`crate::stats`]).
//!
//! The trace is read twice, streaming: a first pass checks every line and
//! measures each device's span in the played slice (for the [`layout`]),
//! the second plays. Requests are issued at their trace time divided by
//! `speed` (0: as fast as possible), at most `qd` in flight on one queue;
//! a request whose time has come while `qd` are in flight waits for a slot
//! (the report gives the largest such lag). Writes carry
//! [`layout::fill_pattern`]'s pattern.
//!
//! With `prefill`, the volume first gets the data the trace assumes
//! exists: right after an epoch ends, every chunk the slice touches is
//! written once (4 KiB at its start, in address order, so the daemon's
//! allocation hint places it), and the play starts as the next epoch
//! begins; `tierblk replay --prefill` models the same start.

pub mod layout;
mod report;

use std::{
    mem::MaybeUninit,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
pub use report::{DaemonReport, OpReport, PlayReport};

use crate::{
    client::{self, Client, Completion, ReqFlags},
    config::Config,
    stats::{self, VolumeStats},
    trace::{self, Op, Request, TraceReader},
};

/// How long play waits for a request in flight before it gives up on the
/// daemon.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often play looks for a new stats file.
const STATS_POLL: Duration = Duration::from_millis(50);
/// Wait for a stats file when nothing tells the epoch length.
const DEFAULT_STATS_TIMEOUT: Duration = Duration::from_secs(30);
/// Latency histogram range: 1 ns to 60 s, 3 significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Trace(#[from] trace::Error),
    #[error(transparent)]
    Client(#[from] client::Error),
    #[error(transparent)]
    Stats(#[from] stats::Error),
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error("play: {0}")]
    Invalid(String),
    #[error("trace {trace}: no request in the slice to play ({slice})")]
    EmptySlice { trace: PathBuf, slice: String },
    #[error("vhost-user socket {socket}: {message}")]
    Io { socket: PathBuf, message: String },
    #[error(
        "stats file {path}: no new snapshot within {waited:?} (is the daemon running, and is \
         this the stats file of the volume behind the socket? --stats-timeout waits longer)"
    )]
    StatsStale { path: PathBuf, waited: Duration },
    #[error("stats file {path}: the daemon restarted during the play; its counters began again")]
    DaemonRestarted { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to play, where, and how.
#[derive(Debug, Clone)]
pub struct PlayConfig {
    pub socket: PathBuf,
    pub trace: PathBuf,
    /// Trace time runs this many times faster; 0 = as fast as possible.
    pub speed: f64,
    /// Requests in flight at most.
    pub qd: usize,
    /// Trace seconds to skip from the start.
    pub start_secs: f64,
    /// Trace seconds to play from `start_secs` (None: to the end).
    pub duration_secs: Option<f64>,
    pub max_requests: Option<u64>,
    /// The volume's stats file (None: daemon stats are not reported).
    pub stats: Option<PathBuf>,
    /// How long to wait for a stats snapshot (None: three epochs and 5 s,
    /// or 30 s while the epoch length is unknown).
    pub stats_timeout: Option<Duration>,
    /// Write every chunk the slice touches before playing (needs `stats`:
    /// the chunk size and the epoch boundaries come from it).
    pub prefill: bool,
}

impl PlayConfig {
    /// Checks the numbers; errors name the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(what));
        if !(self.speed.is_finite() && self.speed >= 0.0) {
            return bad(format!(
                "--speed {}: must be a finite number ≥ 0 (0 = as fast as possible)",
                self.speed
            ));
        }
        if self.qd == 0 || self.qd > 1024 {
            return bad(format!("--qd {}: must be in 1..=1024", self.qd));
        }
        if !(self.start_secs.is_finite() && self.start_secs >= 0.0) {
            return bad(format!(
                "--start {}: must be trace seconds ≥ 0",
                self.start_secs
            ));
        }
        if let Some(d) = self.duration_secs {
            if !(d.is_finite() && d > 0.0) {
                return bad(format!("--duration {d}: must be trace seconds > 0"));
            }
        }
        if self.max_requests == Some(0) {
            return bad("--max-requests 0: must be at least 1".into());
        }
        if self.prefill && self.stats.is_none() {
            return bad(
                "--prefill needs the daemon's stats file (give --config or --stats): it \
                 tells the chunk size and when an epoch ends"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Socket and stats file of volume `volume` (or the config's only volume,
/// or the one whose socket is `socket`) of a daemon config.
pub fn target_from_config(
    config: &Path,
    volume: Option<&str>,
    socket: Option<&Path>,
) -> Result<(PathBuf, PathBuf)> {
    let cfg = Config::load(config)?;
    let names = || {
        cfg.volumes
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let v = match (volume, socket) {
        (Some(n), _) => cfg.volumes.iter().find(|v| v.name == n).ok_or_else(|| {
            Error::Invalid(format!(
                "--volume {n}: no such volume in {} (it has: {})",
                config.display(),
                names()
            ))
        })?,
        (None, Some(s)) => cfg.volumes.iter().find(|v| v.socket == s).ok_or_else(|| {
            Error::Invalid(format!(
                "--socket {}: no volume of {} listens there; name it with --volume (volumes: {})",
                s.display(),
                config.display(),
                names()
            ))
        })?,
        (None, None) => match cfg.volumes.as_slice() {
            [v] => v,
            _ => {
                return Err(Error::Invalid(format!(
                    "{} has {} volumes; pick one with --volume (volumes: {})",
                    config.display(),
                    cfg.volumes.len(),
                    names()
                )))
            }
        },
    };
    let socket = socket.map_or_else(|| v.socket.clone(), Path::to_path_buf);
    Ok((socket, stats::stats_path(&cfg.daemon.state_dir, &v.name)))
}

/// The requests of the slice, from a fresh reader.
struct Slice<'a> {
    reader: TraceReader,
    cfg: &'a PlayConfig,
    taken: u64,
}

impl Iterator for Slice<'_> {
    type Item = trace::Result<Request>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.cfg.max_requests.is_some_and(|m| self.taken >= m) {
            return None;
        }
        loop {
            let r = match self.reader.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(e)),
            };
            if r.ts_s < self.cfg.start_secs {
                continue;
            }
            if let Some(d) = self.cfg.duration_secs {
                if r.ts_s >= self.cfg.start_secs + d {
                    return None;
                }
            }
            self.taken += 1;
            return Some(Ok(r));
        }
    }
}

fn slice(cfg: &PlayConfig) -> Result<Slice<'_>> {
    Ok(Slice {
        reader: TraceReader::open(&cfg.trace)?,
        cfg,
        taken: 0,
    })
}

/// First pass: every line checked; each device's span, the requests and
/// the longest request of the slice, and its first timestamp.
struct Scan {
    spans: Vec<u64>,
    requests: u64,
    longest: u64,
    first_ts: f64,
}

fn scan(cfg: &PlayConfig) -> Result<Scan> {
    let mut s = Scan {
        spans: Vec::new(),
        requests: 0,
        longest: 0,
        first_ts: f64::NAN,
    };
    for r in slice(cfg)? {
        let r = r?;
        if s.requests == 0 {
            s.first_ts = r.ts_s;
        }
        s.requests += 1;
        let d = r.dev as usize;
        if s.spans.len() <= d {
            s.spans.resize(d + 1, 0);
        }
        s.spans[d] = s.spans[d].max(r.offset + r.len);
        s.longest = s.longest.max(r.len);
    }
    if s.requests == 0 {
        let mut what = format!("--start {}", cfg.start_secs);
        if let Some(d) = cfg.duration_secs {
            what += &format!(" --duration {d}");
        }
        return Err(Error::EmptySlice {
            trace: cfg.trace.clone(),
            slice: format!("{what}; trace times are seconds from the first record"),
        });
    }
    Ok(s)
}

/// The volume chunks (indexes, ascending) the slice's requests touch, as
/// laid out.
fn touched_chunks(cfg: &PlayConfig, layout: &layout::Layout, chunk_size: u64) -> Result<Vec<u64>> {
    let mut touched = std::collections::BTreeSet::new();
    for r in slice(cfg)? {
        let r = r?;
        let (off, len, _) = layout.map(r.dev, r.offset, r.len);
        touched.extend(off / chunk_size..(off + len).div_ceil(chunk_size));
    }
    Ok(touched.into_iter().collect())
}

/// Bytes the prefill writes at the start of each chunk.
pub const PREFILL_BYTES: u64 = 4096;

/// Writes [`PREFILL_BYTES`] of the play pattern at the start of each of
/// `chunks`, in order, `qd` at a time.
fn write_starts(
    client: &mut Client,
    socket: &Path,
    chunks: &[u64],
    chunk_size: u64,
    qd: usize,
    buf_len: usize,
) -> Result<()> {
    let len = PREFILL_BYTES.min(chunk_size) as usize;
    let io = |message: String| Error::Io {
        socket: socket.to_path_buf(),
        message,
    };
    let mut comps: Vec<MaybeUninit<Completion>> = (0..qd).map(|_| MaybeUninit::uninit()).collect();
    let mut free: Vec<usize> = (0..qd).collect();
    let mut next = chunks.iter();
    let mut in_flight = 0;
    loop {
        while let Some(&slot) = free.last() {
            let Some(&c) = next.next() else { break };
            free.pop();
            let off = c * chunk_size;
            let at = slot * buf_len;
            layout::fill_pattern(client.buf_mut(at, len), off);
            let p = client.ptr(at);
            client.queues[0].write(off, p, len, slot, ReqFlags::empty());
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(());
        }
        let done = client::wait_some(&mut client.queues[0], &mut comps, STALL_TIMEOUT)
            .map_err(|e| io(format!("prefill: {}", e.message())))?;
        if done.is_empty() {
            return Err(io(format!(
                "prefill: {in_flight} writes still in flight after {STALL_TIMEOUT:?}"
            )));
        }
        for c in done {
            if c.ret != 0 {
                return Err(io(format!(
                    "prefill: a write failed: {}",
                    std::io::Error::from_raw_os_error(-c.ret)
                )));
            }
            free.push(c.user_data);
            in_flight -= 1;
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Waits for a stats snapshot written after `after_ms` (any snapshot when
/// 0); the latest one.
fn wait_stats(path: &Path, after_ms: u64, timeout: Duration) -> Result<VolumeStats> {
    let deadline = Instant::now() + timeout;
    loop {
        match VolumeStats::load(path) {
            Ok(s) if s.written_unix_ms > after_ms => return Ok(s),
            Ok(_) => {}
            // Not there yet: the daemon writes it at the end of an epoch.
            Err(stats::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(Error::StatsStale {
                path: path.to_path_buf(),
                waited: timeout,
            });
        }
        std::thread::sleep(STATS_POLL);
    }
}

fn stats_timeout(cfg: &PlayConfig, known: Option<&VolumeStats>) -> Duration {
    cfg.stats_timeout.unwrap_or_else(|| match known {
        Some(s) if s.interval_secs > 0.0 => Duration::from_secs_f64(3.0 * s.interval_secs + 5.0),
        _ => DEFAULT_STATS_TIMEOUT,
    })
}

/// Guest-side counters of one op type.
struct OpStats {
    requests: u64,
    bytes: u64,
    hist: Histogram<u64>,
}

impl OpStats {
    fn new() -> Self {
        Self {
            requests: 0,
            bytes: 0,
            hist: Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds"),
        }
    }

    fn report(&self, secs: f64) -> OpReport {
        let us = |ns: u64| ns as f64 / 1000.0;
        let empty = self.hist.is_empty();
        OpReport {
            requests: self.requests,
            bytes: self.bytes,
            iops: if secs > 0.0 {
                self.requests as f64 / secs
            } else {
                0.0
            },
            mib_per_s: if secs > 0.0 {
                self.bytes as f64 / secs / (1 << 20) as f64
            } else {
                0.0
            },
            mean_us: if empty {
                0.0
            } else {
                self.hist.mean() / 1000.0
            },
            p50_us: us(self.hist.value_at_quantile(0.5)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            max_us: us(self.hist.max()),
        }
    }
}

/// A request in flight.
#[derive(Clone, Copy)]
struct Slot {
    write: bool,
    bytes: u64,
    started: Instant,
}

/// Plays the trace; returns the report. Fails on a bad option, trace or
/// socket, a request the daemon failed (after the others finished), or a
/// missing stats snapshot.
pub fn play(cfg: &PlayConfig) -> Result<PlayReport> {
    cfg.validate()?;
    let scan = scan(cfg)?;
    // Room for the longest request, and for a prefill write (whose size
    // replay's model of the prefill counts).
    let longest = if cfg.prefill {
        scan.longest.max(PREFILL_BYTES)
    } else {
        scan.longest
    };
    let buf_len = layout::MAX_REQUEST_BYTES.min(longest.max(layout::SECTOR)) as usize;
    let buf_len = buf_len.next_multiple_of(layout::SECTOR as usize);
    let mut client = Client::connect(&cfg.socket, 1, false, cfg.qd * buf_len)?;
    let capacity = client.capacity()? / layout::SECTOR * layout::SECTOR;
    if capacity == 0 {
        return Err(Error::Io {
            socket: cfg.socket.clone(),
            message: "the device has no whole 512-byte sector".into(),
        });
    }
    let layout = layout::Layout::new(&scan.spans, capacity);
    let mut before = match &cfg.stats {
        Some(p) => Some(wait_stats(p, 0, stats_timeout(cfg, None))?),
        None => None,
    };
    let chunk_size = before.as_ref().map(|s| s.chunk_size).filter(|&c| c > 0);
    let mut prefilled = None;
    if let (true, Some(path), Some(cs)) = (cfg.prefill, &cfg.stats, chunk_size) {
        // Start at an epoch boundary, so the prefill's accesses fall in
        // one epoch (when it is shorter than one), and play from the next.
        let timeout = stats_timeout(cfg, before.as_ref());
        wait_stats(path, unix_ms_now(), timeout)?;
        let chunks = touched_chunks(cfg, &layout, cs)?;
        write_starts(&mut client, &cfg.socket, &chunks, cs, cfg.qd, buf_len)?;
        prefilled = Some(chunks.len() as u64);
        before = Some(wait_stats(path, unix_ms_now(), timeout)?);
    }

    let mut reads = OpStats::new();
    let mut writes = OpStats::new();
    let mut free: Vec<usize> = (0..cfg.qd).rev().collect();
    let mut slots = vec![
        Slot {
            write: false,
            bytes: 0,
            started: Instant::now(),
        };
        cfg.qd
    ];
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..cfg.qd).map(|_| MaybeUninit::uninit()).collect();
    let (mut errors, mut first_error) = (0u64, None::<String>);
    let (mut cut, mut accesses, mut issued) = (0u64, 0u64, 0u64);
    let mut max_lag = Duration::ZERO;
    let mut last_ts = scan.first_ts;
    let mut requests = slice(cfg)?.peekable();
    let t0 = Instant::now();
    let due = |ts: f64| {
        if cfg.speed == 0.0 {
            t0
        } else {
            t0 + Duration::from_secs_f64(((ts - scan.first_ts) / cfg.speed).max(0.0))
        }
    };
    loop {
        // Issue every request whose time has come, while slots are free.
        while let Some(next) = requests.peek() {
            let r = match next {
                Ok(r) => *r,
                // The first pass read these lines; only a file changed
                // since can fail here.
                Err(_) => match requests.next() {
                    Some(Err(e)) => return Err(e.into()),
                    _ => continue,
                },
            };
            let now = Instant::now();
            let at = due(r.ts_s);
            if now < at {
                break;
            }
            let Some(slot) = free.pop() else { break };
            requests.next();
            if cfg.speed > 0.0 {
                max_lag = max_lag.max(now - at);
            }
            last_ts = r.ts_s;
            let (off, len, was_cut) = layout.map(r.dev, r.offset, r.len);
            cut += was_cut as u64;
            if let Some(cs) = chunk_size {
                accesses += (off + len).div_ceil(cs) - off / cs;
            }
            let write = r.op == Op::Write;
            let at_buf = slot * buf_len;
            if write {
                layout::fill_pattern(client.buf_mut(at_buf, len as usize), off);
            }
            let p = client.ptr(at_buf);
            slots[slot] = Slot {
                write,
                bytes: len,
                started: Instant::now(),
            };
            let q = &mut client.queues[0];
            if write {
                q.write(off, p, len as usize, slot, ReqFlags::empty());
            } else {
                q.read(off, p, len as usize, slot, ReqFlags::empty());
            }
            issued += 1;
        }
        let in_flight = cfg.qd - free.len();
        let next_due = match requests.peek() {
            Some(Ok(r)) => Some(due(r.ts_s)),
            _ => None,
        };
        if in_flight == 0 {
            match next_due {
                None => break,
                Some(at) => {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    continue;
                }
            }
        }
        // Wake for a completion, or when the next request is due if a slot
        // is free for it.
        let timeout = match next_due {
            Some(at) if !free.is_empty() => at.saturating_duration_since(Instant::now()),
            _ => STALL_TIMEOUT,
        };
        let done = client::wait_some(&mut client.queues[0], &mut comps, timeout).map_err(|e| {
            Error::Io {
                socket: cfg.socket.clone(),
                message: format!("waiting for completions: {}", e.message()),
            }
        })?;
        if done.is_empty() && timeout == STALL_TIMEOUT {
            return Err(Error::Io {
                socket: cfg.socket.clone(),
                message: format!(
                    "{in_flight} requests still in flight after {STALL_TIMEOUT:?} without a completion"
                ),
            });
        }
        let now = Instant::now();
        for c in done {
            let Some(s) = slots.get(c.user_data).copied() else {
                continue;
            };
            free.push(c.user_data);
            if c.ret != 0 {
                errors += 1;
                first_error.get_or_insert_with(|| {
                    format!(
                        "a {} of {} bytes failed: {}",
                        if s.write { "write" } else { "read" },
                        s.bytes,
                        std::io::Error::from_raw_os_error(-c.ret)
                    )
                });
                continue;
            }
            let st = if s.write { &mut writes } else { &mut reads };
            st.requests += 1;
            st.bytes += s.bytes;
            st.hist
                .saturating_record((now - s.started).as_nanos().max(1) as u64);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(Error::Io {
            socket: cfg.socket.clone(),
            message: format!(
                "{errors} of {issued} requests failed; the first: {}",
                first_error.unwrap_or_default()
            ),
        });
    }
    let daemon = match (&cfg.stats, &before) {
        (Some(path), Some(b)) => {
            let after = wait_stats(path, unix_ms_now(), stats_timeout(cfg, Some(b)))?;
            if after.opened_unix_ms != b.opened_unix_ms {
                return Err(Error::DaemonRestarted { path: path.clone() });
            }
            Some(DaemonReport::between(path, b, &after))
        }
        _ => None,
    };
    let mut all = OpStats::new();
    for s in [&reads, &writes] {
        all.requests += s.requests;
        all.bytes += s.bytes;
        // Same bounds, so adding cannot fail.
        let _ = all.hist.add(&s.hist);
    }
    Ok(PlayReport {
        trace: cfg.trace.display().to_string(),
        socket: cfg.socket.display().to_string(),
        speed: cfg.speed,
        qd: cfg.qd,
        start_secs: cfg.start_secs,
        trace_secs: last_ts - scan.first_ts,
        requests: issued,
        cut_requests: cut,
        chunk_accesses: chunk_size.map(|_| accesses),
        prefilled_chunks: prefilled,
        wall_secs: wall,
        max_issue_lag_ms: max_lag.as_secs_f64() * 1000.0,
        layout,
        read: reads.report(wall),
        write: writes.report(wall),
        all: all.report(wall),
        daemon,
    })
}
