//! Migration that yields to the guest (issue 11, item 4; DESIGN decision
//! 5): guest latency with migration running, with and without the mover's
//! backoff, against the same guest load with no migration.
//!
//! In one process it opens a daemon's tiers, store and volume (the real
//! data path, served on a vhost-user socket) on two emulated tiers that
//! share their bandwidth between guest requests and migration copies
//! (`emulate`: an SSD, and an HDD of 4 ms and 160 MiB/s). The guest is
//! `loadgen` (a separate process, libblkio's vhost-user client): random
//! reads over the volume's first half, which lives on the HDD. The
//! volume's own mover (`migrate::MoverThread`) moves the chunks of the
//! second half between the HDD and the SSD, back and forth, at
//! `--mibps`. Three phases of `--secs` each:
//!
//! 1. no migration;
//! 2. migration at a fixed rate (`migration_yield = false`);
//! 3. migration that yields (`migration_yield = true`, the default).
//!
//! Prints the guest's IOPS, mean, p50, p99 and p99.9 latency and the
//! migration's MiB/s per phase, p99 as a ratio of phase 1's, and the
//! migration rate as a share of `--mibps`. `--rounds` repeats the three
//! phases, interleaved so that a noisy neighbour hits them alike; each
//! figure is then the median over the rounds (the p99 ratio is taken
//! within each round first).
//!
//! Usage: migration_yield [--secs S] [--rounds R] [--mibps M] [--bs BYTES]
//!        [--qd N] [--loadgen PATH] [--json]
//! `loadgen` is looked for beside this binary (build both with
//! `cargo build --release --examples`).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::Arc,
    time::{Duration, Instant},
};

use tierblk::{
    config::Config,
    daemon::{self, ServeOptions},
    migrate::{Budget, Job, MoverThread, Outcome, Pacer, RateLimiter},
    place::Move,
    volume::Volume,
};

const USAGE: &str =
    "usage: migration_yield [--secs S] [--rounds R] [--mibps M] [--bs BYTES] [--qd N] [--loadgen PATH] [--json]

Guest random reads (loadgen) on an emulated HDD tier while the volume's mover
moves other chunks between that HDD and an SSD: guest latency with no
migration, with migration at a fixed rate, and with migration that yields
(defaults: 3 rounds of 20 s per phase, 32 MiB/s, 128 KiB reads, queue depth 4;
figures are medians over the rounds).";

struct Args {
    secs: f64,
    rounds: usize,
    mibps: f64,
    bs: u64,
    qd: u32,
    loadgen: PathBuf,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        secs: 20.0,
        rounds: 3,
        mibps: 32.0,
        bs: 128 << 10,
        qd: 4,
        loadgen: std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("loadgen"),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--json" {
            a.json = true;
            continue;
        }
        if k == "--help" || k == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().ok_or(format!("{k} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{k}: not a number: '{v}'"))
        };
        match k.as_str() {
            "--secs" => a.secs = num(&v)?,
            "--rounds" => a.rounds = num(&v)? as usize,
            "--mibps" => a.mibps = num(&v)?,
            "--bs" => a.bs = num(&v)? as u64,
            "--qd" => a.qd = num(&v)? as u32,
            "--loadgen" => a.loadgen = PathBuf::from(v),
            _ => return Err(format!("unknown option '{k}'")),
        }
    }
    if !(a.secs > 0.0
        && a.rounds >= 1
        && a.mibps > 0.0
        && a.bs >= 4096
        && a.bs.is_multiple_of(4096)
        && a.qd >= 1)
    {
        return Err(
            "--secs and --mibps must be > 0, --rounds ≥ 1, --bs a multiple of 4096, --qd ≥ 1"
                .into(),
        );
    }
    Ok(a)
}

/// Volume size; the guest reads the first half, the mover moves the
/// second.
const VOLUME_MIB: u64 = 256;
const CHUNK_KIB: u64 = 64;

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[daemon]
state_dir = "{d}/state"
epoch_secs = 3600

[[tier]]
tier_id = 0
name = "ssd"
capacity = "512MiB"
cost_per_gb = 0.10
path = "{d}/tier-ssd"
performance_metrics = {{ read_latency_us = 250, write_latency_us = 80, bandwidth_mibps = 500 }}
emulate = {{ read_latency_us = 250, write_latency_us = 80, bandwidth_mibps = 500 }}

[[tier]]
tier_id = 1
name = "hdd"
capacity = "1GiB"
cost_per_gb = 0.03
path = "{d}/tier-hdd"
performance_metrics = {{ read_latency_us = 4000, write_latency_us = 4000, bandwidth_mibps = 160 }}
emulate = {{ read_latency_us = 4000, write_latency_us = 4000, bandwidth_mibps = 160 }}

[[volume]]
name = "bench"
size = "{VOLUME_MIB}MiB"
chunk_size = "{CHUNK_KIB}KiB"
socket = "{d}/bench.sock"
num_queues = 1
"#
    )
}

/// What loadgen printed (its --json).
#[derive(Debug, serde::Deserialize)]
struct Guest {
    iops: f64,
    lat_us: Latency,
}

#[derive(Debug, serde::Deserialize)]
struct Latency {
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

struct Phase {
    name: &'static str,
    guest: Guest,
    migrated_mib: f64,
    secs: f64,
}

fn run_loadgen(a: &Args, socket: &Path) -> Result<Guest, String> {
    let out = Command::new(&a.loadgen)
        .args(["--socket", &socket.display().to_string()])
        .args(["--op", "randread", "--bs", &a.bs.to_string()])
        .args(["--qd", &a.qd.to_string(), "--secs", &a.secs.to_string()])
        .args(["--size", &((VOLUME_MIB << 20) / 2).to_string(), "--json"])
        .output()
        .map_err(|e| format!("running {}: {e}", a.loadgen.display()))?;
    if !out.status.success() {
        return Err(format!(
            "loadgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "loadgen's output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Moves the second half's chunks between tier indexes 1 and 0 while the
/// guest phase runs; returns MiB moved.
fn migrate_during(
    volume: &Arc<Volume>,
    mibps: f64,
    yields: bool,
    guest: impl FnOnce() -> Result<Guest, String> + Send,
) -> Result<(Guest, f64), String> {
    let budget = Arc::new(Budget::new(mibps, 1).with_yield(yields));
    let mut mover = MoverThread::spawn(Arc::clone(volume), Pacer::new(budget, 0))
        .map_err(|e| format!("starting the mover: {e}"))?;
    let chunks = volume.chunk_count();
    let (first, last) = (chunks / 2, chunks);
    let done = &std::sync::atomic::AtomicBool::new(false);
    let mut moved = 0u64;
    let mut count = |d: Vec<tierblk::migrate::Done>| {
        for d in d {
            if let Ok(Outcome::Moved { .. }) = d.result {
                moved += 1;
            }
        }
    };
    let result = std::thread::scope(|s| {
        let g = s.spawn(move || {
            let r = guest();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            r
        });
        let mut next = first;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            count(mover.finished());
            if mover.queued() >= 32 {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let jobs: Vec<Job> = (0..16)
                .map(|_| {
                    let c = next;
                    next = if next + 1 >= last { first } else { next + 1 };
                    let on = volume.tier_index(c).unwrap_or(1) as u8;
                    Job {
                        m: Move {
                            chunk: c,
                            from: on,
                            to: 1 - on.min(1),
                        },
                        planned: true,
                        prefetch: false,
                    }
                })
                .collect();
            if mover.send(jobs).is_err() {
                break;
            }
        }
        g.join()
            .map_err(|_| "the guest thread panicked".to_string())?
    });
    // The guest is done: what the mover still has queued does not count.
    let stop = Instant::now() + Duration::from_secs(30);
    while mover.queued() > 0 && Instant::now() < stop {
        std::thread::sleep(Duration::from_millis(5));
        let f = mover.finished();
        drop(f);
    }
    Ok((result?, moved as f64 * CHUNK_KIB as f64 / 1024.0))
}

fn run(a: &Args) -> Result<Vec<Phase>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = Config::parse(&config(dir.path())).map_err(|e| e.to_string())?;
    let opened =
        daemon::open(&cfg, &ServeOptions { create_dirs: true }).map_err(|e| e.to_string())?;
    let volume = Arc::clone(&opened.volumes[0]);
    // No brain: this benchmark's mover gets its moves from here.
    drop(opened.brains);
    // Every chunk gets data, then lives on the HDD.
    let cs = volume.chunk_size();
    let data = vec![0x5au8; cs as usize];
    let mut unlimited = RateLimiter::new(0.0);
    for c in 0..volume.chunk_count() {
        volume
            .write_at(c as u64 * cs, &data)
            .map_err(|e| e.to_string())?;
        let hdd = volume.tiers().ids()[1];
        tierblk::migrate::migrate_chunk(&volume, c, hdd, &mut unlimited)
            .map_err(|e| e.to_string())?;
    }
    volume.flush().map_err(|e| e.to_string())?;
    let bound = daemon::listen_and_serve(&volume, opened.access).map_err(|e| e.to_string())?;
    let socket = volume.metadata().socket.clone();
    let mut phases = Vec::new();
    for _ in 0..a.rounds {
        let t = Instant::now();
        let guest = run_loadgen(a, &socket)?;
        phases.push(Phase {
            name: "no migration",
            guest,
            migrated_mib: 0.0,
            secs: t.elapsed().as_secs_f64(),
        });
        for (name, yields) in [
            ("migration, fixed rate", false),
            ("migration, yielding", true),
        ] {
            let t = Instant::now();
            let (guest, mib) =
                migrate_during(&volume, a.mibps, yields, || run_loadgen(a, &socket))?;
            phases.push(Phase {
                name,
                guest,
                migrated_mib: mib,
                secs: t.elapsed().as_secs_f64(),
            });
        }
    }
    bound.remove();
    Ok(phases)
}

/// One phase's medians over the rounds.
struct Row {
    name: &'static str,
    iops: f64,
    mean: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// Median of the rounds' p99 over the same round's no-migration p99.
    p99_ratio: f64,
    mibps: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Row {
    /// Phase `i` (of three per round).
    fn of(phases: &[Phase], i: usize) -> Self {
        let rounds: Vec<(&Phase, &Phase)> = phases
            .chunks(3)
            .map(|round| (&round[0], &round[i]))
            .collect();
        let m = |f: &dyn Fn(&Phase) -> f64| median(rounds.iter().map(|(_, p)| f(p)).collect());
        Self {
            name: rounds[0].1.name,
            iops: m(&|p| p.guest.iops),
            mean: m(&|p| p.guest.lat_us.mean),
            p50: m(&|p| p.guest.lat_us.p50),
            p99: m(&|p| p.guest.lat_us.p99),
            p999: m(&|p| p.guest.lat_us.p999),
            p99_ratio: median(
                rounds
                    .iter()
                    .map(|(base, p)| p.guest.lat_us.p99 / base.guest.lat_us.p99)
                    .collect(),
            ),
            mibps: m(&|p| p.migrated_mib / p.secs),
        }
    }
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("migration_yield: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let phases = match run(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("migration_yield: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows: Vec<Row> = (0..3).map(|i| Row::of(&phases, i)).collect();
    if a.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "phase": r.name,
                    "rounds": a.rounds,
                    "iops": r.iops,
                    "lat_mean_us": r.mean,
                    "lat_p50_us": r.p50,
                    "lat_p99_us": r.p99,
                    "lat_p999_us": r.p999,
                    "p99_vs_no_migration": r.p99_ratio,
                    "migration_mibps": r.mibps,
                    "migration_share_of_rate": r.mibps / a.mibps,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return ExitCode::SUCCESS;
    }
    println!(
        "guest: random {} KiB reads, queue depth {}, {} s per phase, on an emulated HDD (4 ms, 160 MiB/s)",
        a.bs >> 10,
        a.qd,
        a.secs
    );
    println!(
        "migration: {CHUNK_KIB} KiB chunks between that HDD and an emulated SSD, at up to {} MiB/s",
        a.mibps
    );
    println!("medians over {} rounds", a.rounds);
    println!(
        "{:<24} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7}",
        "phase", "IOPS", "mean µs", "p50 µs", "p99 µs", "p99.9 µs", "p99 ×", "mig MiB/s", "of rate"
    );
    for r in &rows {
        println!(
            "{:<24} {:>7.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8.3} {:>9.2} {:>6.0}%",
            r.name,
            r.iops,
            r.mean,
            r.p50,
            r.p99,
            r.p999,
            r.p99_ratio,
            r.mibps,
            100.0 * r.mibps / a.mibps
        );
    }
    ExitCode::SUCCESS
}
