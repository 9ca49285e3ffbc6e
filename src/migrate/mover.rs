//! Carrying out a volume's moves: [`execute`] runs a list of moves in
//! order (committing a switch before a later move needs the room it
//! frees), at the volume's share of the daemon-wide [`Budget`]; a
//! [`MoverThread`] runs lists the brain hands it on a thread of its own,
//! one list after another, so the brain's epochs keep their length while
//! chunks are copied.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::{mpsc, Arc},
    thread,
    time::Instant,
};

use log::warn;

use super::{
    backoff::{self, Backoff},
    migrate_chunk, Budget, Error, Outcome, RateLimiter, Result,
};
use crate::{place::Move, volume::Volume};

/// One move to carry out (tiers as fastest-first indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub m: Move,
    /// Of an epoch's plan (else of a miss).
    pub planned: bool,
    /// A planned promotion of a chunk idle in the epoch before.
    pub prefetch: bool,
}

/// What came of one job.
#[derive(Debug)]
pub struct Done {
    pub job: Job,
    pub result: Result<Outcome>,
}

/// Paces one volume's copies at its share of the daemon's budget, less
/// what it yields to the volume's guest ([`Backoff`]).
#[derive(Debug)]
pub struct Pacer {
    budget: Arc<Budget>,
    slot: usize,
    limiter: RateLimiter,
    backoff: Backoff,
    /// Bytes the limiter had given out, and when, at the last window.
    window_bytes: u64,
    window_start: Instant,
}

impl Pacer {
    /// Volume `slot` of `budget`.
    pub fn new(budget: Arc<Budget>, slot: usize) -> Self {
        let limiter = RateLimiter::new(budget.mibps());
        let now = Instant::now();
        let backoff = Backoff::new(budget.yields(), now);
        Self {
            budget,
            slot,
            limiter,
            backoff,
            window_bytes: 0,
            window_start: now,
        }
    }

    /// The limiter for the next copy of `volume`, at the rate for now.
    /// With the guest busy and no recent measurement of it alone, first
    /// pauses one window to take one.
    fn limiter(&mut self, volume: &Volume) -> &mut RateLimiter {
        let now = Instant::now();
        let share = self.budget.share(self.slot);
        if self.backoff.due(now) {
            self.note_achieved(now, Some(share));
            self.measure(volume, now, true);
        }
        self.backoff.copying();
        let yielded = self.backoff.share();
        volume.served().note_migration_share(yielded);
        self.limiter.set_rate(share * yielded);
        &mut self.limiter
    }

    /// The mover has nothing to copy: measures the guest alone.
    fn idle(&mut self, volume: &Volume) {
        let now = Instant::now();
        if self.backoff.due(now) {
            // Idle time says nothing of what copies reach.
            self.note_achieved(now, None);
            self.measure(volume, now, false);
        }
    }

    /// Starts a new span of copies at `now`; with `share` (the budget's
    /// MiB/s for this volume), first tells the backoff what share of it
    /// the copies since the last window reached.
    fn note_achieved(&mut self, now: Instant, share: Option<f64>) {
        let bytes = self.limiter.acquired() - self.window_bytes;
        let secs = now.duration_since(self.window_start).as_secs_f64();
        self.window_bytes = self.limiter.acquired();
        self.window_start = now;
        if let Some(budget) = share.filter(|&b| b > 0.0) {
            if secs > 0.0 {
                let mibps = bytes as f64 / secs / (1024.0 * 1024.0);
                self.backoff.note_achieved(mibps / budget);
            }
        }
    }

    /// Closes the backoff's window on the guest's load now (`probe`: and,
    /// when one is due, pauses one window to measure the guest alone),
    /// then hands the data path the new slow-request threshold.
    fn measure(&mut self, volume: &Volume, now: Instant, probe: bool) {
        let load = volume.guest_load();
        self.backoff.observe(load.sample(), now);
        if probe && self.backoff.probe_due(now) {
            self.backoff.restart(load.sample(), now);
            loop {
                thread::sleep(backoff::WINDOW);
                if self.backoff.observe(load.sample(), Instant::now()) {
                    break;
                }
            }
        }
        load.set_slow_above(self.backoff.slow_above_ns());
    }
}

/// Carries out `jobs` on `volume` in order. An old extent is free only
/// once its switch is committed, so before a job moves into a tier that
/// has no free extent and that an uncommitted switch left, the switches
/// so far are committed (the plan counts on that room; a commit costs
/// syncs, so while the tier has free extents, such as the reserve the
/// placer keeps on tier 0, the commits wait); the rest are committed at
/// the end. A panic in one move is caught (the migration's unwind guard
/// has ended it) and reported as its failure; the next move goes on.
pub fn execute(volume: &Volume, jobs: &[Job], pacer: &mut Pacer) -> Vec<Done> {
    let ids = volume.tiers().ids();
    let cs = volume.chunk_size();
    let full = |t: usize| {
        ids.get(t)
            .and_then(|&id| volume.tiers().get(id))
            .is_none_or(|tier| tier.free_chunks(cs) == 0)
    };
    let mut out = Vec::with_capacity(jobs.len());
    let mut moved = false;
    // Tiers (fastest-first indexes, bit per index) left by uncommitted
    // switches.
    let mut left = 0u32;
    for job in jobs {
        let m = job.m;
        if left & (1 << m.to.min(31)) != 0 && full(m.to as usize) {
            if let Err(e) = volume.flush() {
                warn!("volume '{}': committing migrations: {e}", volume.name());
            }
            left = 0;
            moved = false;
        }
        let result = match ids.get(m.to as usize) {
            None => Err(Error::NoTier {
                volume: volume.name().to_string(),
                tier: m.to,
            }),
            Some(&to) => panic::catch_unwind(AssertUnwindSafe(|| {
                migrate_chunk(volume, m.chunk, to, pacer.limiter(volume))
            }))
            .unwrap_or_else(|p| {
                Err(Error::Panicked(
                    crate::error::panic_message(p.as_ref()).to_string(),
                ))
            }),
        };
        if let Ok(Outcome::Moved { .. }) = result {
            moved = true;
            left |= 1 << m.from.min(31);
        }
        out.push(Done { job: *job, result });
    }
    if moved {
        // Make the switches durable and free the old extents, whether or
        // not the guest flushes.
        if let Err(e) = volume.flush() {
            warn!("volume '{}': committing migrations: {e}", volume.name());
        }
    }
    out
}

/// A volume's mover thread: runs the job lists it is sent, in order, and
/// sends back what came of each list. It ends when its handle is dropped.
#[derive(Debug)]
pub struct MoverThread {
    jobs: mpsc::Sender<Vec<Job>>,
    done: mpsc::Receiver<Vec<Done>>,
    /// Jobs sent and not yet reported.
    queued: usize,
}

impl MoverThread {
    /// Starts the mover of `volume`; every list it runs is committed at
    /// its end.
    pub fn spawn(volume: Arc<Volume>, mut pacer: Pacer) -> std::io::Result<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Vec<Job>>();
        let (done_tx, done_rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("mover-{}", volume.name()))
            .spawn(move || loop {
                let jobs = match jobs_rx.recv_timeout(backoff::WINDOW) {
                    Ok(jobs) => jobs,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        pacer.idle(&volume);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                let done = execute(&volume, &jobs, &mut pacer);
                if done_tx.send(done).is_err() {
                    return;
                }
            })?;
        Ok(Self {
            jobs: jobs_tx,
            done: done_rx,
            queued: 0,
        })
    }

    /// Jobs sent and not yet reported back.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues `jobs` behind those sent before; gives them back if the
    /// thread is gone.
    pub fn send(&mut self, jobs: Vec<Job>) -> std::result::Result<(), Vec<Job>> {
        let n = jobs.len();
        self.jobs.send(jobs).map_err(|e| e.0)?;
        self.queued += n;
        Ok(())
    }

    /// What came of the lists finished since the last call, without
    /// waiting.
    pub fn finished(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        while let Ok(d) = self.done.try_recv() {
            self.queued -= d.len();
            out.extend(d);
        }
        out
    }
}
