//! The per-volume epoch loop ("brain" thread): fold → predict → place →
//! migrate. Every epoch it folds the data path's access counters into the
//! history, predicts the heat map, publishes it as allocation hints, saves
//! it for a warm restart, asks the volume's [`Placer`] (the same engine
//! `tierblk replay` drives) for the epoch's moves and carries them out with
//! shadow-clone migrations under the migration rate limit. Between epochs
//! it takes the misses the data path posted (chunks served from a slower
//! tier, [`crate::volume::misses`]) and promotes those the placer admits
//! (demand promotion, [`Placer::on_miss`]), a few at a time, every
//! [`MISS_POLL`]. A few times per epoch (`placement.deviation_checks`)
//! it also measures how far the accesses so far deviate from the
//! predicted heat map ([`crate::place::Deviation`]); past
//! `placement.deviation_threshold` it ends the epoch at once (re-predicts
//! and re-plans) and starts the next one from there. It never runs per
//! I/O, and the data path never waits for it.
//!
//! The thread is supervised: a panic in an epoch is caught, logged and
//! counted ([`BrainHealth`]), and the next epoch runs as usual; after
//! [`MAX_CONSECUTIVE_PANICS`] panicking epochs in a row the brain stops
//! tiering its volume. The volume keeps serving I/O either way: the data
//! path never waits for the brain.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    panic::{self, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use log::{debug, error, warn};

use crate::{
    config::PlacementSettings,
    migrate::{mover, Budget, Done, Job, MoverThread, Outcome, Pacer},
    place::{self, Deviation, Move, Placer, PlacerParams},
    predict::{HeatMap, Predictor},
    profile::History,
    volume::Volume,
};

/// Panicking steps (epochs or rounds of misses) in a row after which the
/// brain stops tiering its volume.
pub const MAX_CONSECUTIVE_PANICS: u32 = 5;

/// How often the brain looks for misses between epochs.
pub const MISS_POLL: Duration = Duration::from_millis(5);

/// Most misses taken in one round, so a round never delays an epoch long.
const MISSES_PER_ROUND: usize = 64;

/// Most moves queued for the mover thread: past this the brain takes no
/// more misses (they wait in the volume's miss queue, which drops what
/// does not fit) until the mover catches up.
pub const MAX_QUEUED_MOVES: usize = 16_384;

/// How a brain thread fares, shared with whoever watches it (get it with
/// [`Brain::health`] before [`spawn`]).
#[derive(Debug, Default)]
pub struct BrainHealth {
    restarts: AtomicU64,
    stopped: AtomicBool,
}

impl BrainHealth {
    /// Epochs that panicked and after which the brain went on with the
    /// next one.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// True once the brain gave up on its volume after
    /// [`MAX_CONSECUTIVE_PANICS`] panicking epochs in a row: no more
    /// predictions or migrations until the daemon restarts.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// What one epoch did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochReport {
    pub epoch: u32,
    /// Moves of the epoch's plan, and what came of them.
    pub planned: usize,
    pub moves: MoveCounts,
    /// Promotions of chunks with no access in the epoch before.
    pub prefetched: usize,
    /// Demand promotion since the epoch before.
    pub demand: DemandReport,
    /// Ended early by a deviation check (re-tiering), not by the clock.
    pub early: bool,
}

/// What demand promotion did between two epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemandReport {
    /// Misses taken from the volume's queue.
    pub misses: usize,
    /// Their moves: promotions into tier 0, and the tier-0 chunks they
    /// displaced (demotions).
    pub moves: MoveCounts,
}

/// What came of a list of moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MoveCounts {
    pub promoted: usize,
    pub demoted: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl std::ops::AddAssign for MoveCounts {
    fn add_assign(&mut self, o: Self) {
        self.promoted += o.promoted;
        self.demoted += o.demoted;
        self.skipped += o.skipped;
        self.failed += o.failed;
    }
}

/// Where a brain's moves are carried out.
enum Mover {
    /// On the brain's own thread, before the call that planned them
    /// returns (tests; a brain before [`spawn`]).
    Inline(Pacer),
    /// On the volume's mover thread, while the brain goes on.
    Thread(MoverThread),
}

pub struct Brain {
    volume: Arc<Volume>,
    history: History,
    predictor: Box<dyn Predictor>,
    heat: HeatMap,
    /// The daemon's migration budget and this volume's slot in it.
    budget: Arc<Budget>,
    slot: usize,
    mover: Mover,
    /// Chunks sent to the mover thread and not reported back yet: the
    /// tier (fastest-first index) the last of their moves goes to, and
    /// how many of their moves are queued.
    in_flight: HashMap<u32, (u8, u32)>,
    /// Per tier (fastest-first index): chunks of room the moves sent to
    /// the mover and not finished will take, beyond what the tiers' usage
    /// shows now (negative). The room they will free is not counted: a
    /// move that fails frees nothing, and a promotion planned into room
    /// that never came would fail in turn.
    pending_room: Vec<i64>,
    /// Planned moves finished since the last epoch, and the prefetches
    /// among them.
    planned_done: MoveCounts,
    prefetched_done: usize,
    /// The volume's placement engine.
    placer: Placer,
    /// Epoch length, seconds (the placer's move budget).
    epoch_secs: f64,
    /// The moves the last epoch planned, in order.
    last_plan: Vec<Move>,
    /// Demand promotion since the last epoch.
    demand: DemandReport,
    /// How far accesses stray from the heat map.
    deviation: Deviation,
    health: Arc<BrainHealth>,
}

impl Brain {
    /// `migration_mibps` bounds migration bandwidth (this volume's alone;
    /// see [`Brain::with_budget`] for the daemon's shared budget); the
    /// epoch's move budget is what that rate copies in one epoch (see
    /// [`Placer::move_budget`]).
    pub fn new(
        volume: Arc<Volume>,
        mut predictor: Box<dyn Predictor>,
        epoch: Duration,
        migration_mibps: f64,
        placement: PlacementSettings,
    ) -> Self {
        let n = volume.chunk_count() as usize;
        // The scores the volume starts with (a saved heat map, a VM
        // profile's prior, or cold) seed the predictor.
        let heat = HeatMap::from_scores((0..n as u32).map(|c| volume.score(c)).collect());
        predictor.seed(&heat);
        let fastest = volume.tiers().ids()[0];
        let fast_chunks = volume
            .tiers()
            .get(fastest)
            .map_or(0, |t| (t.usage().1 / volume.chunk_size()) as usize);
        let deviation = Deviation::new(n, fast_chunks, placement.deviation_threshold);
        let placer = Placer::new(PlacerParams {
            policy: volume.policy(),
            settings: placement,
            n_chunks: n,
            n_tiers: volume.tiers().ids().len(),
            fast_capacity: fast_chunks,
            chunk_size: volume.chunk_size(),
            migration_mibps,
        });
        let budget = Arc::new(Budget::new(migration_mibps, 1));
        Self {
            placer,
            mover: Mover::Inline(Pacer::new(Arc::clone(&budget), 0)),
            budget,
            slot: 0,
            in_flight: HashMap::new(),
            pending_room: vec![0; volume.tiers().ids().len()],
            planned_done: MoveCounts::default(),
            prefetched_done: 0,
            epoch_secs: epoch.as_secs_f64(),
            last_plan: Vec::new(),
            demand: DemandReport::default(),
            deviation,
            history: History::new(n),
            predictor,
            heat,
            volume,
            health: Arc::default(),
        }
    }

    /// Copies at volume `slot`'s share of `budget`, the daemon-wide
    /// migration budget, instead of a budget of its own.
    pub fn with_budget(mut self, budget: Arc<Budget>, slot: usize) -> Self {
        self.mover = Mover::Inline(Pacer::new(Arc::clone(&budget), slot));
        self.budget = budget;
        self.slot = slot;
        self
    }

    /// Moves are carried out on a mover thread of the volume's own from
    /// now on (the brain goes on while chunks are copied).
    fn start_mover(&mut self) -> std::io::Result<()> {
        if let Mover::Inline(_) = self.mover {
            let pacer = Pacer::new(Arc::clone(&self.budget), self.slot);
            self.mover = Mover::Thread(MoverThread::spawn(Arc::clone(&self.volume), pacer)?);
        }
        Ok(())
    }

    /// This brain's panic counter and stop flag, readable while its thread
    /// runs.
    pub fn health(&self) -> Arc<BrainHealth> {
        Arc::clone(&self.health)
    }

    /// Runs one step of the brain (an epoch, or a round of misses),
    /// catching a panic in it: logs it with the volume's name and message
    /// and counts it. `consecutive` counts the panicking steps in a row;
    /// Break once there were MAX_CONSECUTIVE_PANICS; Continue(None) after a
    /// caught panic.
    fn supervised<T>(
        &mut self,
        what: &str,
        consecutive: &mut u32,
        step: impl FnOnce(&mut Self) -> T,
    ) -> ControlFlow<(), Option<T>> {
        // AssertUnwindSafe: after a panic the brain's own state may be half
        // updated, and nothing needs it whole. The history at worst misses
        // or half-counts one epoch's accesses, which only shifts advisory
        // scores; the heat map is rewritten whole by the next prediction;
        // the fast tier's view is brought in line with the chunk map at the
        // start of every plan; the rate limiter is a clock. A predictor left
        // in a bad state that panics again makes the brain give up below.
        // The volume is shared with the data path but changed only through
        // its API, whose locks ignore poisoning (every holder finishes its
        // update before it can panic) and whose atomics are never half
        // written; a migration a panic interrupts is ended by migrate_chunk's
        // unwind guard, so no chunk stays held.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| step(self)));
        let name = self.volume.name();
        match outcome {
            Ok(r) => {
                *consecutive = 0;
                ControlFlow::Continue(Some(r))
            }
            Err(payload) => {
                *consecutive += 1;
                let msg = crate::error::panic_message(payload.as_ref());
                if *consecutive >= MAX_CONSECUTIVE_PANICS {
                    self.health.stopped.store(true, Ordering::Relaxed);
                    error!(
                        "volume '{name}': brain panicked in {consecutive} steps in a row (last, in {what}: {msg}); \
                         tiering of this volume is STOPPED until the daemon restarts \
                         (the volume keeps serving I/O; its chunks stay where they are)"
                    );
                    return ControlFlow::Break(());
                }
                let total = self.health.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                error!(
                    "volume '{name}': brain panicked in {what}: {msg}; skipped, going on \
                     ({consecutive} in a row, {total} in all; tiering stops after \
                     {MAX_CONSECUTIVE_PANICS} in a row)"
                );
                ControlFlow::Continue(None)
            }
        }
    }

    /// Runs one epoch, supervised, then publishes and logs what it did.
    fn supervised_epoch(&mut self, consecutive: &mut u32) -> ControlFlow<()> {
        let start = Instant::now();
        let Some(r) = self.supervised("an epoch", consecutive, Self::run_epoch)? else {
            return ControlFlow::Continue(());
        };
        self.publish(&r, start.elapsed());
        ControlFlow::Continue(())
    }

    /// Publishes an epoch's report (stats file) and logs it.
    fn publish(&self, r: &EpochReport, took: Duration) {
        crate::stats::publish(&self.volume, r);
        let (m, d) = (&r.moves, &r.demand.moves);
        let level = if m.promoted + m.demoted + m.failed + d.promoted + d.failed > 0 {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "volume '{}': epoch {}{} ({took:?}): {} moves planned, {} promoted, {} demoted, {} skipped, {} failed; \
             since the epoch before: {} misses, {} promoted on demand, {} displaced, {} skipped, {} failed",
            self.volume.name(),
            r.epoch,
            if r.early { " (early: deviation)" } else { "" },
            r.planned,
            m.promoted,
            m.demoted,
            m.skipped,
            m.failed,
            r.demand.misses,
            d.promoted,
            d.demoted,
            d.skipped,
            d.failed,
        );
    }

    /// Measures how far the accesses since the epoch began deviate from
    /// the predicted heat map (kept in the volume's stats); past the
    /// threshold, on a tiered volume, ends the epoch now and returns its
    /// report (marked early).
    pub fn check_deviation(&mut self) -> Option<EpochReport> {
        let v = &*self.volume;
        let c = self.deviation.check(v.counters());
        v.served().note_deviation(&c);
        if !(c.retier && v.metadata().tiering_enabled) {
            debug!(
                "volume '{}': deviation {:.2} ({} accesses, {:.2} cold, {:.2} usual)",
                v.name(),
                c.deviation,
                c.accesses,
                c.cold_share,
                c.expected
            );
            return None;
        }
        log::info!(
            "volume '{}': {:.0}% of {} accesses since the epoch began fell outside the predicted hot set \
             ({:.0}% usual; deviation {:.2}): re-tiering now",
            v.name(),
            c.cold_share * 100.0,
            c.accesses,
            c.expected * 100.0,
            c.deviation
        );
        let mut r = self.run_epoch();
        r.early = true;
        Some(r)
    }

    /// Runs one epoch now.
    pub fn run_epoch(&mut self) -> EpochReport {
        // An owned handle: `self` is borrowed mutably for planning below.
        let volume = Arc::clone(&self.volume);
        let v = &*volume;
        self.history.fold(v.counters());
        self.predictor.predict(&self.history, &mut self.heat);
        self.deviation.on_epoch(&self.history, &self.heat);
        for (c, &s) in self.heat.scores().iter().enumerate() {
            v.set_score(c as u32, s);
        }
        if let Err(e) = v.store().put_heatmap(v.name(), &self.heat.to_bytes()) {
            warn!("volume '{}': saving heat map: {e}", v.name());
        }
        self.collect();
        let mut report = EpochReport {
            epoch: self.history.epoch(),
            demand: std::mem::take(&mut self.demand),
            moves: std::mem::take(&mut self.planned_done),
            prefetched: std::mem::take(&mut self.prefetched_done),
            ..Default::default()
        };
        self.last_plan.clear();
        if !v.metadata().tiering_enabled {
            return report;
        }
        let ids = v.tiers().ids();
        let slowest = ids.len() - 1;
        let cs = v.chunk_size();
        // Unallocated chunks have no tier: the allocation hint places them
        // when they are written.
        // A chunk on its way counts where it goes, as the placer has it.
        let current: Vec<u8> = (0..v.chunk_count())
            .map(|c| match self.in_flight.get(&c) {
                Some(&(to, _)) => to,
                None => v.tier_index(c).map_or(place::UNPLACED, |t| t as u8),
            })
            .collect();
        let capacity: Vec<u64> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if i == slowest {
                    return u64::MAX;
                }
                let free = v.tiers().get(id).map_or(0, |t| t.free_chunks(cs));
                let mine = current.iter().filter(|&&t| t as usize == i).count() as i64;
                let free = free as i64 + self.pending_room[i];
                (mine + free).max(0) as u64
            })
            .collect();
        self.placer
            .set_migration_mibps(self.budget.expected_share(self.slot));
        let moves = self.placer.plan_epoch(
            &self.history,
            &self.heat,
            &current,
            &capacity,
            self.epoch_secs,
        );
        let moves = moves.moves;
        report.planned = moves.len();
        self.last_plan.clone_from(&moves);
        let jobs = moves
            .iter()
            .map(|&m| Job {
                m,
                planned: true,
                prefetch: m.to < m.from && self.history.count(m.chunk as usize, 0) == 0,
            })
            .collect();
        self.carry_out(jobs);
        // Moves carried out inline are this epoch's; the mover thread's
        // are reported with the epoch after they finish.
        report.moves += std::mem::take(&mut self.planned_done);
        report.prefetched += std::mem::take(&mut self.prefetched_done);
        report
    }

    /// Takes up to `max` misses the data path posted and promotes those
    /// the placer admits, one at a time (displacing a tier-0 chunk when it
    /// says so: that move first, committed, then the promotion).
    /// Returns how many misses it took (0: none waiting). Misses of a
    /// volume without tiering, or with `placement.demand_promotion` off,
    /// are taken and dropped.
    pub fn serve_misses(&mut self, max: usize) -> usize {
        let volume = Arc::clone(&self.volume);
        let v = &*volume;
        let enabled =
            v.metadata().tiering_enabled && self.placer.params().settings.demand_promotion;
        self.collect();
        if let Mover::Thread(t) = &self.mover {
            if t.queued() >= MAX_QUEUED_MOVES {
                return 0;
            }
        }
        let ids = v.tiers().ids();
        let cs = v.chunk_size();
        let mut taken = 0;
        // The round's moves in order (a displacement before the promotion
        // that needs its room; a chunk promoted early in the round may be
        // displaced later in it).
        let mut jobs = Vec::new();
        // Room this round's moves will take (-) and free (+).
        let mut round = vec![0i64; ids.len()];
        while taken < max {
            let Some(chunk) = v.misses().pop() else {
                break;
            };
            taken += 1;
            if !enabled || self.in_flight.contains_key(&chunk) {
                continue;
            }
            let Some(from) = v.tier_index(chunk).filter(|&t| t > 0) else {
                continue;
            };
            let pending = &self.pending_room;
            let room = |t: usize| {
                v.tiers()
                    .get(ids[t])
                    .is_some_and(|tier| tier.free_chunks(cs) as i64 + pending[t] + round[t] > 0)
            };
            let score = self.heat.score(chunk as usize);
            let plan = self.placer.on_miss(chunk, from, score, &self.heat, room);
            for m in plan.moves {
                round[m.to as usize] -= 1;
                round[m.from as usize] += 1;
                jobs.push(Job {
                    m,
                    planned: false,
                    prefetch: false,
                });
            }
        }
        self.demand.misses += taken;
        if !jobs.is_empty() {
            self.carry_out(jobs);
        }
        taken
    }

    /// Carries out `jobs` in order, inline or on the mover thread.
    fn carry_out(&mut self, jobs: Vec<Job>) {
        match &mut self.mover {
            Mover::Inline(pacer) => {
                // Done (and committed) before this returns: no room is
                // pending.
                let done = mover::execute(&self.volume, &jobs, pacer);
                self.account(done);
            }
            Mover::Thread(t) => {
                for j in &jobs {
                    let e = self.in_flight.entry(j.m.chunk).or_insert((j.m.to, 0));
                    *e = (j.m.to, e.1 + 1);
                    self.pending_room[j.m.to as usize] -= 1;
                }
                if let Err(jobs) = t.send(jobs) {
                    error!(
                        "volume '{}': the mover thread is gone; {} moves not carried out",
                        self.volume.name(),
                        jobs.len()
                    );
                    for j in &jobs {
                        self.done_with(j.m.chunk);
                        self.pending_room[j.m.to as usize] += 1;
                        self.placer.skipped(&j.m);
                    }
                }
            }
        }
    }

    /// Takes what the mover thread finished since the last call.
    fn collect(&mut self) {
        let Mover::Thread(t) = &mut self.mover else {
            return;
        };
        let done = t.finished();
        // The mover commits each list at its end: the usage the tiers
        // show now includes these moves.
        for d in &done {
            self.done_with(d.job.m.chunk);
            self.pending_room[d.job.m.to as usize] += 1;
        }
        self.account(done);
    }

    /// One queued move of `chunk` is over.
    fn done_with(&mut self, chunk: u32) {
        if let Some(e) = self.in_flight.get_mut(&chunk) {
            e.1 -= 1;
            if e.1 == 0 {
                self.in_flight.remove(&chunk);
            }
        }
    }

    /// Counts what came of moves (an epoch's plan or misses) and tells
    /// the placer of each that did not happen.
    fn account(&mut self, done: Vec<Done>) {
        let v = &*self.volume;
        let ids = v.tiers().ids();
        for d in done {
            let m = d.job.m;
            let t = if d.job.planned {
                &mut self.planned_done
            } else {
                &mut self.demand.moves
            };
            match d.result {
                Ok(Outcome::Moved { .. }) => {
                    if m.to < m.from {
                        t.promoted += 1;
                        self.prefetched_done += usize::from(d.job.prefetch);
                    } else {
                        t.demoted += 1;
                    }
                }
                Ok(Outcome::Skipped(why)) => {
                    t.skipped += 1;
                    self.placer.skipped(&m);
                    debug!(
                        "volume '{}': chunk {} not moved from tier {:?} to {:?}: {why:?}",
                        v.name(),
                        m.chunk,
                        ids.get(m.from as usize),
                        ids.get(m.to as usize)
                    );
                }
                Err(e) => {
                    t.failed += 1;
                    self.placer.skipped(&m);
                    warn!("volume '{}': {e}", v.name());
                }
            }
        }
    }

    /// The moves the last epoch planned, in order (tiers as fastest-first
    /// indexes), whether or not each happened.
    pub fn last_plan(&self) -> &[Move] {
        &self.last_plan
    }
}

/// Starts the brain thread of a volume, and its mover thread, which
/// carries out the brain's moves from then on (an epoch's moves are
/// reported with the first epoch after they finish): one epoch every
/// `epoch`, and rounds of misses and deviation checks in between, each
/// supervised (see [`BrainHealth`]). An epoch a deviation check ends early starts the
/// next one's clock. The thread ends only when the brain gives up after
/// [`MAX_CONSECUTIVE_PANICS`] panicking steps in a row.
pub fn spawn(mut brain: Brain, epoch: Duration) -> std::io::Result<thread::JoinHandle<()>> {
    brain.start_mover()?;
    let checks = brain.placer.params().settings.deviation_checks;
    // `checks` evenly spaced checks between two epochs.
    let check_every = (checks > 0).then(|| epoch / (checks + 1));
    thread::Builder::new()
        .name(format!("brain-{}", brain.volume.name()))
        .spawn(move || {
            // Epochs, rounds of misses and deviation checks each count
            // their own run of panics: a round that works says nothing of
            // the epochs.
            let (mut epochs, mut rounds, mut deviations) = (0, 0, 0);
            loop {
                let mut deadline = Instant::now() + epoch;
                let mut next_check = check_every.map(|d| Instant::now() + d);
                while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                    if let (Some(at), Some(every)) = (next_check, check_every) {
                        if Instant::now() >= at && at < deadline {
                            let start = Instant::now();
                            match brain.supervised("a deviation check", &mut deviations, |b| {
                                b.check_deviation()
                            }) {
                                ControlFlow::Break(()) => return,
                                ControlFlow::Continue(Some(Some(r))) => {
                                    brain.publish(&r, start.elapsed());
                                    deadline = Instant::now() + epoch;
                                    next_check = Some(Instant::now() + every);
                                }
                                ControlFlow::Continue(_) => next_check = Some(at + every),
                            }
                            continue;
                        }
                    }
                    let taken = brain.supervised("a round of misses", &mut rounds, |b| {
                        b.serve_misses(MISSES_PER_ROUND)
                    });
                    let until_check = next_check.map_or(left, |at| {
                        at.saturating_duration_since(Instant::now()).min(left)
                    });
                    match taken {
                        ControlFlow::Break(()) => return,
                        ControlFlow::Continue(Some(n)) if n > 0 => {}
                        _ => thread::sleep(until_check.min(MISS_POLL)),
                    }
                }
                if brain.supervised_epoch(&mut epochs).is_break() {
                    return;
                }
            }
        })
}

/// A brain with the EWMA predictor, 1 s epochs, no migration rate limit
/// and default placement settings (tests of the brain and of replay).
#[cfg(test)]
pub(crate) fn ewma_brain(v: &Arc<Volume>) -> Brain {
    Brain::new(
        v.clone(),
        crate::predict::load("ewma").unwrap(),
        Duration::from_secs(1),
        0.0,
        PlacementSettings::default(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::Config, meta::Store, tier::TierSet};

    const CHUNK: u64 = 64 * 1024;

    fn open(dir: &Path, volume_extra: &str) -> Arc<Volume> {
        open_sized(dir, ["256KiB", "1MiB", "4MiB"], "2MiB", volume_extra)
    }

    fn open_sized(dir: &Path, caps: [&str; 3], size: &str, volume_extra: &str) -> Arc<Volume> {
        let mut s = String::new();
        for (i, cap) in caps.iter().enumerate() {
            let p = dir.join(format!("t{i}"));
            std::fs::create_dir_all(&p).unwrap();
            s += &format!(
                "[[tier]]\ntier_id = {i}\nname = \"t{i}\"\ncapacity = \"{cap}\"\ncost_per_gb = 0.1\npath = \"{}\"\n\
                 performance_metrics = {{ read_latency_us = 1, write_latency_us = 1, bandwidth_mibps = 1 }}\n",
                p.display()
            );
        }
        s += &format!(
            "[[volume]]\nname = \"v\"\nsize = \"{size}\"\nchunk_size = \"64KiB\"\nsocket = \"/tmp/unused\"\n{volume_extra}\n"
        );
        let cfg = Config::parse(&s).unwrap();
        let store = Arc::new(Store::open(&dir.join("state")).unwrap());
        let tiers = Arc::new(TierSet::open(&cfg.tiers, &store).unwrap());
        Arc::new(Volume::open(cfg.volumes[0].clone(), tiers, store).unwrap())
    }

    /// Chunks `0..n` each start with 4 KiB of `chunk + 1` (as the tests
    /// write them).
    fn assert_chunks_hold_their_data(v: &Volume, n: u32) {
        let mut buf = [0u8; 4096];
        for c in 0..n {
            v.read_at(c as u64 * CHUNK, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == c as u8 + 1), "chunk {c} data");
        }
    }

    /// Writes 4 KiB of `chunk + 1` to chunks `0..n`, each scored cold when
    /// written (so placed on the slowest tier).
    fn write_cold(v: &Volume, n: u32) {
        for c in 0..n {
            v.set_score(c, 0.0);
            v.write_at(c as u64 * CHUNK, &[c as u8 + 1; 4096]).unwrap();
        }
        assert!((0..n).all(|c| v.block_metadata(c).tier == Some(2)));
    }

    #[test]
    fn hot_chunk_is_promoted_and_data_survives() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "");
        // Every chunk starts cold on the slowest tier.
        write_cold(&v, 32);
        let predictor = crate::predict::load("ewma").unwrap();
        let mut brain = Brain::new(
            v.clone(),
            predictor,
            Duration::from_secs(1),
            0.0,
            PlacementSettings::default(),
        );
        let mut buf = [0u8; 4096];
        let mut promoted = 0;
        for _ in 0..6 {
            // Chunk 7 is read over and over; the rest stay idle.
            for _ in 0..50 {
                v.record_access(false, 7 * CHUNK, 4096, false);
            }
            let r = brain.run_epoch();
            assert_eq!(r.moves.failed, 0);
            promoted += r.moves.promoted;
        }
        assert!(promoted >= 1);
        assert_eq!(
            v.block_metadata(7).tier,
            Some(0),
            "hot chunk on the fast tier"
        );
        assert!(v.score(7) > v.score(8));
        for c in 0..32u32 {
            v.read_at(c as u64 * CHUNK, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == c as u8 + 1), "chunk {c} data");
        }
        // Capacity is respected: tier 0 holds at most 4 chunks of 64 KiB.
        let (used, total) = v.tiers().get(0).unwrap().usage();
        assert!(used <= total);
        // The heat map was saved for a warm restart.
        let saved = v.store().heatmap("v").unwrap().unwrap();
        let h = HeatMap::from_bytes("v", &saved).unwrap();
        assert_eq!(h.len(), 32);
        assert!(h.score(7) > h.score(8));
    }

    /// A predictor (EWMA underneath) that panics on the calls `panics_on`
    /// picks (numbered from 1), and counts its calls.
    struct Flaky {
        calls: Arc<AtomicU64>,
        panics_on: fn(u64) -> bool,
        inner: crate::predict::Ewma,
    }

    impl Flaky {
        fn boxed(panics_on: fn(u64) -> bool) -> (Box<dyn Predictor>, Arc<AtomicU64>) {
            let calls = Arc::new(AtomicU64::new(0));
            let p = Self {
                calls: calls.clone(),
                panics_on,
                inner: crate::predict::Ewma::default(),
            };
            (Box::new(p), calls)
        }
    }

    impl Predictor for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }

        fn predict(&mut self, history: &History, out: &mut HeatMap) {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if (self.panics_on)(n) {
                panic!("injected predictor panic on call {n}");
            }
            self.inner.predict(history, out);
        }

        fn first_touch_score(&mut self) -> f32 {
            self.inner.first_touch_score()
        }

        fn seed(&mut self, heat: &HeatMap) {
            self.inner.seed(heat);
        }
    }

    #[test]
    fn panicking_epochs_are_counted_and_tiering_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "");
        for c in 0..32u32 {
            v.set_score(c, 0.0);
            v.write_at(c as u64 * CHUNK, &[c as u8 + 1; 4096]).unwrap();
        }
        let (predictor, calls) = Flaky::boxed(|n| n <= 2);
        let mut brain = Brain::new(
            v.clone(),
            predictor,
            Duration::from_secs(1),
            0.0,
            PlacementSettings::default(),
        );
        let health = brain.health();
        let mut consecutive = 0;
        let mut promoted = false;
        for _ in 0..8 {
            for _ in 0..50 {
                v.record_access(false, 7 * CHUNK, 4096, false);
            }
            assert!(brain.supervised_epoch(&mut consecutive).is_continue());
            promoted |= v.block_metadata(7).tier == Some(0);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 8);
        assert_eq!(health.restarts(), 2);
        assert!(!health.stopped());
        assert_eq!(consecutive, 0);
        assert!(promoted, "the hot chunk was promoted after the panics");
        assert_chunks_hold_their_data(&v, 32);
    }

    #[test]
    fn brain_thread_survives_panics_and_gives_up_after_a_run_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "");
        v.write_at(0, &[9u8; 4096]).unwrap();
        // Panics on calls 1-2, works on 3-6, then panics for good.
        let (predictor, calls) = Flaky::boxed(|n| n <= 2 || n >= 7);
        let brain = Brain::new(
            v.clone(),
            predictor,
            Duration::from_millis(1),
            0.0,
            PlacementSettings::default(),
        );
        let health = brain.health();
        let handle = spawn(brain, Duration::from_millis(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !handle.is_finished() {
            assert!(
                Instant::now() < deadline,
                "brain still running after {} calls, {} restarts",
                calls.load(Ordering::SeqCst),
                health.restarts()
            );
            thread::sleep(Duration::from_millis(5));
        }
        assert!(handle.join().is_ok(), "the brain thread ended by a panic");
        let n = MAX_CONSECUTIVE_PANICS as u64;
        assert_eq!(calls.load(Ordering::SeqCst), 6 + n, "epochs went on");
        // Calls 1-2 and the first n-1 of the final run were restarts.
        assert_eq!(health.restarts(), 2 + n - 1);
        assert!(health.stopped());
        // The volume serves I/O without its brain.
        v.write_at(4096, &[8u8; 4096]).unwrap();
        let mut buf = [0u8; 8192];
        v.read_at(0, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 9) && buf[4096..].iter().all(|&b| b == 8));
    }

    #[test]
    fn epochs_keep_their_length_while_the_mover_copies() {
        let dir = tempfile::tempdir().unwrap();
        let v = open_sized(dir.path(), ["4MiB", "4MiB", "8MiB"], "4MiB", "");
        write_cold(&v, 64);
        // At 1 MiB/s an epoch of 0.4 s moves 6 chunks of 64 KiB, which
        // take 0.375 s to copy: copied on the brain's thread, every epoch
        // would last about 0.8 s.
        let epoch = Duration::from_millis(400);
        let mut brain = planning_brain(&v, epoch, 1.0, 0);
        // Every chunk is hot: there is more to promote than the epochs can
        // move.
        read_chunks(&v, 0..64, 20);
        brain.run_epoch();
        let before = crate::stats::snapshot(&v).seq;
        let start = Instant::now();
        let _thread = spawn(brain, epoch).unwrap();
        thread::sleep(Duration::from_millis(2400));
        let s = crate::stats::snapshot(&v);
        let epochs = s.seq - before;
        assert!(
            epochs >= 5,
            "{epochs} epochs of 0.4 s in {:?} while migrating",
            start.elapsed()
        );
        assert!(s.bytes_promoted > 0, "{s:?}");
        assert!(on_tier_0(&v, 0..64) > 0);
    }

    #[test]
    fn missed_chunks_are_promoted_between_epochs_displacing_the_least_recent() {
        let dir = tempfile::tempdir().unwrap();
        // Tier 0 holds 4 of the 64 KiB chunks.
        let v = open(dir.path(), "");
        write_cold(&v, 8);
        for c in 0..8u32 {
            v.set_score(c, 0.9);
        }
        let mut brain = ewma_brain(&v);
        assert_eq!(brain.serve_misses(64), 0, "nothing posted");
        for c in 0..6u32 {
            v.misses().post(c);
        }
        assert_eq!(brain.serve_misses(64), 6);
        let on_0: Vec<u32> = (0..8)
            .filter(|&c| v.block_metadata(c).tier == Some(0))
            .collect();
        assert_eq!(on_0.len(), 4, "{on_0:?}");
        assert!(
            on_0.contains(&4) && on_0.contains(&5),
            "latest misses in: {on_0:?}"
        );
        let r = brain.run_epoch();
        assert_eq!(
            r.demand,
            DemandReport {
                misses: 6,
                moves: MoveCounts {
                    promoted: 6,
                    demoted: 2,
                    skipped: 0,
                    failed: 0
                }
            }
        );
        assert_eq!(brain.run_epoch().demand, DemandReport::default());
        assert_chunks_hold_their_data(&v, 8);
    }

    #[test]
    fn misses_are_dropped_without_demand_promotion_or_tiering() {
        for (extra, demand) in [("", false), ("tiering_enabled = false", true)] {
            let dir = tempfile::tempdir().unwrap();
            let v = open(dir.path(), extra);
            v.set_score(0, 0.0);
            v.write_at(0, &[1u8; 4096]).unwrap();
            v.set_score(0, 1.0);
            let settings = PlacementSettings {
                demand_promotion: demand,
                ..Default::default()
            };
            let mut brain = Brain::new(
                v.clone(),
                crate::predict::load("ewma").unwrap(),
                Duration::from_secs(1),
                0.0,
                settings,
            );
            v.misses().post(0);
            assert_eq!(brain.serve_misses(64), 1);
            assert_eq!(v.misses().pop(), None);
            assert_eq!(v.block_metadata(0).tier, Some(2), "{extra} {demand}");
        }
    }

    #[test]
    fn tiering_disabled_volume_is_profiled_but_not_moved() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "tiering_enabled = false");
        v.write_at(0, &[1u8; 4096]).unwrap();
        let mut brain = ewma_brain(&v);
        for _ in 0..3 {
            for _ in 0..50 {
                v.record_access(false, 0, 4096, false);
            }
            let r = brain.run_epoch();
            assert_eq!(r.planned, 0);
        }
        assert_eq!(v.block_metadata(0).tier, Some(2));
        assert!(v.score(0) > 0.0, "still profiled");
    }

    #[test]
    fn database_profile_chunks_hinted_to_the_middle_tier_are_not_demoted_at_epoch_1() {
        let dir = tempfile::tempdir().unwrap();
        // 256 chunks of 64 KiB; tier 1 holds them all.
        let v = open_sized(dir.path(), ["1MiB", "32MiB", "64MiB"], "16MiB", "");
        let xml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("libvirt/profile-example.xml"),
        )
        .unwrap();
        let profile = crate::profile::VmProfile::parse(&xml).unwrap();
        assert_eq!(profile.app.as_deref(), Some("postgres"));
        let prior = crate::profile::initial_heat_map(Some(&profile), None, 256);
        for (c, &s) in prior.scores().iter().enumerate() {
            v.set_score(c as u32, s);
        }
        let mut brain = ewma_brain(&v);
        for c in 0..256u32 {
            v.write_at(c as u64 * CHUNK, &[1u8; 4096]).unwrap();
            v.record_access(true, c as u64 * CHUNK, 4096, false);
        }
        assert!(
            (0..256).all(|c| v.block_metadata(c).tier == Some(1)),
            "the hint puts a lukewarm database disk on the middle tier"
        );
        let r = brain.run_epoch();
        assert_eq!(
            (r.moves.demoted, r.moves.failed),
            (0, 0),
            "{r:?}: {:?}",
            brain.last_plan()
        );
        assert!((0..256).all(|c| v.block_metadata(c).tier == Some(1)));
    }

    #[test]
    fn cost_optimized_moves_chunks_idle_for_many_epochs_off_tier_0() {
        let dir = tempfile::tempdir().unwrap();
        let v = open(dir.path(), "tiering_policy = \"cost-optimized\"");
        for c in 0..4u32 {
            v.set_score(c, 1.0);
            v.write_at(c as u64 * CHUNK, &[c as u8 + 1; 4096]).unwrap();
        }
        assert!((0..4).all(|c| v.block_metadata(c).tier == Some(0)));
        let mut brain = ewma_brain(&v);
        // Busy for three epochs: they stay on tier 0.
        for _ in 0..3 {
            for c in 0..4u32 {
                for _ in 0..50 {
                    v.record_access(false, c as u64 * CHUNK, 4096, false);
                }
            }
            brain.run_epoch();
            assert!((0..4).all(|c| v.block_metadata(c).tier == Some(0)));
        }
        // Chunk 0 stays busy; the others go idle for 12 epochs.
        for _ in 0..12 {
            for _ in 0..50 {
                v.record_access(false, 0, 4096, false);
            }
            assert_eq!(brain.run_epoch().moves.failed, 0);
        }
        assert_eq!(v.block_metadata(0).tier, Some(0), "the busy chunk stays");
        for c in 1..4u32 {
            assert_eq!(
                v.block_metadata(c).tier,
                Some(2),
                "idle chunk {c} is on the cheapest tier"
            );
        }
        assert_chunks_hold_their_data(&v, 4);
    }

    /// Reads each of `chunks` `n` times (counted, as the data path counts
    /// them).
    fn read_chunks(v: &Volume, chunks: std::ops::Range<u32>, n: usize) {
        for _ in 0..n {
            for c in chunks.clone() {
                v.record_access(false, c as u64 * CHUNK, 4096, false);
            }
        }
    }

    fn on_tier_0(v: &Volume, chunks: std::ops::Range<u32>) -> usize {
        chunks
            .filter(|&c| v.block_metadata(c).tier == Some(0))
            .count()
    }

    /// An EWMA brain that moves chunks only by its epoch plans (and
    /// deviation checks), never on misses.
    fn planning_brain(v: &Arc<Volume>, epoch: Duration, mibps: f64, checks: u32) -> Brain {
        Brain::new(
            v.clone(),
            crate::predict::load("ewma").unwrap(),
            epoch,
            mibps,
            PlacementSettings {
                demand_promotion: false,
                deviation_checks: checks,
                ..PlacementSettings::default()
            },
        )
    }

    /// A volume whose tier 0 holds 8 chunks, 4 of them hot (0..4) after
    /// a few epochs of a brain that moves chunks between epochs only by a
    /// deviation check, with the epoch length and checks given.
    fn hot_set_on_tier_0(dir: &Path, epoch: Duration, checks: u32) -> (Arc<Volume>, Brain) {
        let v = open_sized(dir, ["512KiB", "1MiB", "4MiB"], "2MiB", "");
        write_cold(&v, 32);
        let mut brain = planning_brain(&v, epoch, 0.0, checks);
        for _ in 0..4 {
            read_chunks(&v, 0..4, 20);
            assert_eq!(brain.check_deviation(), None, "the usual accesses");
            brain.run_epoch();
        }
        assert_eq!(on_tier_0(&v, 0..4), 4);
        (v, brain)
    }

    #[test]
    fn a_hot_set_that_jumps_mid_epoch_is_retiered_by_a_deviation_check() {
        let dir = tempfile::tempdir().unwrap();
        let (v, mut brain) = hot_set_on_tier_0(dir.path(), Duration::from_secs(1), 4);
        // Mid-epoch the hot set jumps to chunks 10..14.
        read_chunks(&v, 10..14, 20);
        let r = brain.check_deviation().expect("the jump is re-tiered now");
        assert!(r.early && r.moves.promoted >= 4, "{r:?}");
        assert_eq!(on_tier_0(&v, 10..14), 4, "the new hot set is on tier 0");
        let stats = crate::stats::snapshot(&v);
        assert!(
            stats.cold_share == 1.0 && stats.deviation >= 0.3,
            "{stats:?}"
        );
        assert_chunks_hold_their_data(&v, 32);
    }

    #[test]
    fn the_brain_thread_retiers_a_jump_before_the_epoch_ends() {
        let dir = tempfile::tempdir().unwrap();
        // Checks every 0.5 s of a 6 s epoch.
        let epoch = Duration::from_secs(6);
        let (v, brain) = hot_set_on_tier_0(dir.path(), epoch, 11);
        let jump = Instant::now();
        let _thread = spawn(brain, epoch).unwrap();
        read_chunks(&v, 10..14, 20);
        while on_tier_0(&v, 10..14) < 4 {
            assert!(
                jump.elapsed() < epoch,
                "the new hot set is still off tier 0 when the epoch ends"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let took = jump.elapsed();
        // The stats file is written after the moves.
        while crate::stats::snapshot(&v).early_epochs == 0 {
            assert!(
                jump.elapsed() < epoch,
                "no early epoch counted after {took:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert_chunks_hold_their_data(&v, 32);
    }
}
