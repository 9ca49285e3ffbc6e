//! The `tierblk` command: argument parsing only; all logic is in the library.

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tierblk::{
    config::{ByteSize, Config, TieringPolicy},
    daemon,
    play::{self, PlayConfig},
    predict::learned::{train, Arch},
    replay::{self, PolicyKind, ReplayConfig},
};

/// vhost-user-blk storage daemon with predictive, cost-aware data tiering.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve every volume of the config on its vhost-user socket until
    /// SIGINT/SIGTERM.
    Serve {
        /// Daemon config (TOML): tiers, volumes, daemon settings.
        #[arg(long, short)]
        config: PathBuf,
        /// Create missing state, socket and tier directories.
        #[arg(long)]
        create_dirs: bool,
    },
    /// Check a config file as `serve` would (models, VM profiles, and the
    /// metadata store and tier devices when they exist), without creating or
    /// changing anything; print it with all defaults filled in.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Volumes in the metadata store (the daemon must not be running).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Replay a block trace through profiler → predictor → placement with a
    /// simulated clock, and compare with reference policies.
    Replay(ReplayArgs),
    /// Play a block trace against a running daemon's vhost-user socket, as
    /// a guest: real reads and writes at the trace's sizes and (scaled)
    /// times; report guest-side latency and what the daemon did meanwhile.
    Play(PlayArgs),
    /// Train a learned predictor on block traces and write a model file.
    Train(TrainArgs),
}

#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// List the stored volumes and whether the config serves them.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Delete a stored volume that is no longer in the config: its chunk
    /// map and heat map go in one durable transaction, and its extents are
    /// free for other volumes from the next start. Its data is gone.
    Delete {
        #[arg(long, short)]
        config: PathBuf,
        /// Name of the volume.
        name: String,
    },
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// Trace file: normalized CSV, or MSR Cambridge CSV (`*.msr.csv`).
    #[arg(long)]
    trace: PathBuf,
    /// Daemon config whose tiers (latency, bandwidth, capacity, cost) are
    /// used; default: the shipped example config.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "1MiB")]
    chunk_size: ByteSize,
    /// Fast-tier size as a share of the trace footprint; 0 keeps the
    /// configured capacity of tier 0.
    #[arg(long, default_value_t = 0.1)]
    fast_fraction: f64,
    /// Seconds of trace time per epoch, as the daemon's clock; default:
    /// the config's `daemon.epoch_secs`.
    #[arg(long, conflicts_with = "epoch_requests")]
    epoch_secs: Option<f64>,
    /// End an epoch every this many requests instead of by trace time
    /// (for comparisons that need a fixed request count per epoch).
    #[arg(long)]
    epoch_requests: Option<u64>,
    /// Migration bandwidth in MiB/s (0 = unlimited): each epoch's move
    /// budget and each move's copy time; default: the config's
    /// `daemon.migration_mibps`.
    #[arg(long)]
    migration_mibps: Option<f64>,
    /// Overrides `placement.demand_promotion` (default true, as the
    /// daemon runs): also promote a chunk into tier 0 when it is accessed
    /// on a slower tier and the placer admits it.
    #[arg(long, value_name = "BOOL")]
    demand_promotion: Option<bool>,
    /// Overrides `placement.deviation_checks` (default 4): deviation
    /// checks between two epochs; 0 turns them off.
    #[arg(long, value_name = "N")]
    deviation_checks: Option<u32>,
    /// Overrides `placement.deviation_threshold` (default 0.3): the
    /// deviation from the predicted heat map at which a check ends the
    /// epoch early.
    #[arg(long, value_name = "SHARE")]
    deviation_threshold: Option<f64>,
    /// Start tierblk's runs from the volume `tierblk play --prefill`
    /// leaves: every chunk the slice touches written once, in address
    /// order, placed by the allocation hint, one epoch before the trace
    /// (default: every chunk starts on the slowest tier).
    #[arg(long, conflicts_with = "epoch_requests")]
    prefill: bool,
    /// Start at this share of the trace (0.5: replay the second half only).
    #[arg(long, default_value_t = 0.0)]
    from: f64,
    #[arg(long)]
    max_requests: Option<usize>,
    /// Tiering policy of tierblk's runs: the score thresholds for every
    /// tier, tier 0 included.
    #[arg(long, default_value = "performance-optimized")]
    policy: TieringPolicy,
    /// Predictors for tierblk's runs, comma-separated: builtin names or model files.
    #[arg(long, default_value = "learned,ewma", value_delimiter = ',')]
    models: Vec<String>,
    /// Comparison policies, comma-separated: none, all-fast, lru, oracle.
    #[arg(
        long,
        default_value = "none,all-fast,lru,oracle",
        value_delimiter = ','
    )]
    compare: Vec<String>,
    /// Overrides `placement.protected_share`: share of the fast tier kept
    /// as the protected recency segment.
    #[arg(long)]
    protected_share: Option<f64>,
    /// Overrides `placement.admit_slack` (demand promotion): a missing
    /// chunk is promoted unless its score is below the victim's by more
    /// than this (1 = always, like LRU).
    #[arg(long)]
    admit_slack: Option<f32>,
    /// Overrides `placement.prefetch_min`: lowest score a chunk needs to
    /// be prefetched at an epoch boundary (above 1: no prefetch).
    #[arg(long)]
    prefetch_min: Option<f32>,
    /// Overrides `placement.prefetch_margin`: score gain a prefetch needs
    /// over the chunk it displaces.
    #[arg(long)]
    prefetch_margin: Option<f32>,
    /// Overrides `placement.plan_margin`: the plan's hysteresis.
    #[arg(long)]
    plan_margin: Option<f32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Offsets of each trace device are laid out one device after another in
/// the volume (16 MiB aligned), wrapped modulo the volume size and aligned
/// down to 512 bytes; lengths are rounded up to 512 bytes and cut at 1 MiB.
/// Writes carry a pattern that names each sector's own volume offset.
/// Daemon stats come from the volume's stats file, which the daemon
/// rewrites at the end of every epoch (`<state_dir>/stats/<volume>.json`):
/// play reads one before and waits for one written after the last
/// completion.
#[derive(clap::Args, Debug)]
struct PlayArgs {
    /// Trace file: normalized CSV, or MSR Cambridge CSV (`*.msr.csv`).
    #[arg(long)]
    trace: PathBuf,
    /// The volume's vhost-user socket (default: the volume's socket in
    /// --config).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The daemon's config: gives the socket and the stats file of
    /// --volume.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Volume of --config to play against (default: its only volume, or
    /// the one listening on --socket).
    #[arg(long, requires = "config")]
    volume: Option<String>,
    /// The volume's stats file (instead of finding it from --config).
    #[arg(long, conflicts_with = "config")]
    stats: Option<PathBuf>,
    /// Seconds to wait for a stats snapshot [default: 3 epochs + 5 s, or 30
    /// s before the epoch length is known].
    #[arg(long)]
    stats_timeout: Option<f64>,
    /// Trace time runs this many times faster (10: ten times faster); 0
    /// plays as fast as --qd allows. Traces without timestamps (arc_P3.csv)
    /// count one second per request: play them with --speed 0.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    speed: f64,
    /// Requests in flight at most (one queue).
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Skip the trace's first SECS seconds (trace time).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    start: f64,
    /// Play SECS seconds of trace time from --start (default: to the end).
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    duration: Option<f64>,
    /// Play at most N requests.
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// First give the volume the data the trace assumes exists: right
    /// after an epoch ends, write 4 KiB at the start of every chunk the
    /// slice touches (address order; the allocation hint places them),
    /// then play from the next epoch. `tierblk replay --prefill` models
    /// the same start. Needs the stats file (--config or --stats).
    #[arg(long)]
    prefill: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl TryFrom<PlayArgs> for PlayConfig {
    type Error = tierblk::Error;

    fn try_from(a: PlayArgs) -> tierblk::Result<Self> {
        let (socket, stats) = match (&a.config, a.socket, a.stats) {
            (Some(c), socket, _) => {
                let (s, f) = play::target_from_config(c, a.volume.as_deref(), socket.as_deref())?;
                (s, Some(f))
            }
            (None, Some(s), stats) => (s, stats),
            (None, None, _) => {
                return Err(play::Error::Invalid(
                    "give the volume's --socket, or the daemon's --config".into(),
                )
                .into())
            }
        };
        let stats_timeout = match a.stats_timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(std::time::Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(play::Error::Invalid(format!(
                    "--stats-timeout {t}: must be seconds > 0"
                ))
                .into())
            }
        };
        Ok(PlayConfig {
            socket,
            trace: a.trace,
            speed: a.speed,
            qd: a.qd,
            start_secs: a.start,
            duration_secs: a.duration,
            max_requests: a.max_requests,
            stats,
            stats_timeout,
            prefill: a.prefill,
        })
    }
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Training traces (repeat the flag); default: the four real traces
    /// vendored in traces/ (run from the repository root).
    #[arg(long)]
    trace: Vec<PathBuf>,
    /// Model file to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "mlp")]
    arch: Arch,
    #[arg(long, default_value_t = 32)]
    hidden: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Passes over the training examples.
    #[arg(long, default_value_t = 4)]
    passes: usize,
    #[arg(long, default_value_t = 1000)]
    epoch_requests: u64,
    /// Share of each trace, from its start, used for training (the rest is held out).
    #[arg(long, default_value_t = 0.5)]
    train_fraction: f64,
    #[arg(long, default_value = "64KiB,1MiB", value_delimiter = ',')]
    chunk_sizes: Vec<ByteSize>,
    /// Examples kept per trace and chunk size.
    #[arg(long, default_value_t = 100_000)]
    max_examples: usize,
    #[arg(long, default_value_t = 512)]
    batch_size: usize,
    #[arg(long, default_value_t = 3e-3)]
    learning_rate: f64,
    /// Epochs ahead the training target counts accesses over (discounted
    /// by half per epoch); 1 = the next epoch only.
    #[arg(long, default_value_t = 1)]
    horizon: usize,
}

const DEFAULT_TRACES: &[&str] = &[
    "cloudphysics_vm.csv",
    "msr_hm_0_excerpt.csv",
    "hplajw_1week.csv",
    "arc_P3.csv",
];

fn run(cli: Cli) -> tierblk::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            create_dirs,
        } => {
            let cfg = Config::load(&config)?;
            daemon::serve(&cfg, &daemon::ServeOptions { create_dirs })
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            for note in daemon::check(&cfg)? {
                eprintln!("note: {note}");
            }
            print_stdout(&toml::to_string_pretty(&cfg).expect("a loaded config serializes"))
        }
        Command::Volume(VolumeCommand::List { config }) => {
            let cfg = Config::load(&config)?;
            let mut out = String::new();
            for (name, size, served) in daemon::list_volumes(&cfg)? {
                let state = if served {
                    "in config"
                } else {
                    "not in config (kept, not served)"
                };
                out += &format!("{name}\t{size}\t{state}\n");
            }
            print_stdout(&out)
        }
        Command::Volume(VolumeCommand::Delete { config, name }) => {
            let cfg = Config::load(&config)?;
            daemon::delete_volume(&cfg, &name)?;
            eprintln!("volume '{name}' deleted");
            Ok(())
        }
        Command::Replay(a) => {
            let mut policies: Vec<PolicyKind> = a
                .models
                .iter()
                .map(|m| PolicyKind::Predictive(m.clone()))
                .collect();
            for c in &a.compare {
                let p: PolicyKind = c
                    .parse()
                    .map_err(|e: String| replay::Error::Invalid(format!("--compare: {e}")))?;
                if matches!(p, PolicyKind::Predictive(_)) {
                    return Err(replay::Error::Invalid(format!(
                        "--compare {c}: expected none, all-fast, lru or oracle (predictors go in --models)"
                    ))
                    .into());
                }
                policies.push(p);
            }
            let config = replay::load_config(a.config.as_deref())?;
            let mut cfg = ReplayConfig::from_config(&config);
            cfg.chunk_size = a.chunk_size.0;
            cfg.fast_fraction = (a.fast_fraction > 0.0).then_some(a.fast_fraction);
            if let Some(s) = a.epoch_secs {
                cfg.epoch = replay::Epoch::Secs(s);
            }
            if let Some(n) = a.epoch_requests {
                cfg.epoch = replay::Epoch::Requests(n);
            }
            if let Some(m) = a.migration_mibps {
                cfg.migration_mibps = m;
            }
            cfg.prefill = a.prefill;
            cfg.from_fraction = a.from;
            cfg.max_requests = a.max_requests;
            cfg.tiering_policy = a.policy;
            let p = &mut cfg.placement;
            p.protected_share = a.protected_share.unwrap_or(p.protected_share);
            p.admit_slack = a.admit_slack.unwrap_or(p.admit_slack);
            p.demand_promotion = a.demand_promotion.unwrap_or(p.demand_promotion);
            p.deviation_checks = a.deviation_checks.unwrap_or(p.deviation_checks);
            p.deviation_threshold = a.deviation_threshold.unwrap_or(p.deviation_threshold);
            p.prefetch_min = a.prefetch_min.unwrap_or(p.prefetch_min);
            p.prefetch_margin = a.prefetch_margin.unwrap_or(p.prefetch_margin);
            p.plan_margin = a.plan_margin.unwrap_or(p.plan_margin);
            cfg.policies = policies;
            if config.tiers.is_empty() {
                return Err(replay::Error::Invalid(
                    "the config has no [[tier]] to replay on".into(),
                )
                .into());
            }
            let report = replay::replay_file(&a.trace, &config.tiers, &cfg)?;
            if a.json {
                print_stdout(&format!("{}\n", report.to_json()))
            } else {
                print_stdout(&report.to_table())
            }
        }
        Command::Play(a) => {
            let json = a.json;
            let report = play::play(&PlayConfig::try_from(a)?)?;
            if json {
                print_stdout(&format!("{}\n", report.to_json()))
            } else {
                print_stdout(&report.to_table())
            }
        }
        Command::Train(a) => {
            let traces = if a.trace.is_empty() {
                let dir = PathBuf::from("traces");
                if !dir.is_dir() {
                    return Err(tierblk::predict::Error::Training(format!(
                        "no --trace given and the vendored traces folder {} does not exist (run from the repository root)",
                        dir.display()
                    ))
                    .into());
                }
                DEFAULT_TRACES.iter().map(|t| dir.join(t)).collect()
            } else {
                a.trace
            };
            let cfg = train::TrainConfig {
                traces,
                chunk_sizes: a.chunk_sizes.iter().map(|c| c.0).collect(),
                epoch_requests: a.epoch_requests,
                train_fraction: a.train_fraction,
                max_requests: None,
                arch: a.arch,
                hidden: a.hidden,
                seed: a.seed,
                passes: a.passes,
                batch_size: a.batch_size,
                learning_rate: a.learning_rate,
                max_examples: a.max_examples,
                horizon: a.horizon,
            };
            let model = train::train(&cfg)?;
            model.save(&a.out)?;
            let h = model.header();
            eprintln!(
                "wrote {}: {} hidden {}, {} examples, train loss {:.4}, validation loss {:.4}",
                a.out.display(),
                h.arch,
                h.hidden,
                h.examples,
                h.train_loss,
                h.valid_loss
            );
            Ok(())
        }
    }
}

/// Writes `text` to standard output (use this, not `print!`, which panics
/// on a write error). A reader that went away (`tierblk replay … | head`)
/// ends the output quietly, as with other Unix tools; any other write error
/// (a full disk, …) is an error.
fn print_stdout(text: &str) -> tierblk::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(tierblk::Error::Stdout(e)),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tierblk: {e}");
            ExitCode::FAILURE
        }
    }
}
