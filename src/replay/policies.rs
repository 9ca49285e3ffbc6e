//! The policies replay compares, all driven through one simulator so that
//! accesses, hits, migrations, latency and cost are counted the same way.

use std::{
    collections::{BTreeSet, VecDeque},
    str::FromStr,
    time::Instant,
};

use super::{
    latency::{mean_p99, LatencyModel},
    Epoch, Error, ReplayConfig, Result, RunReport,
};
use crate::{
    config::TierDefinition,
    cost,
    place::{recency::RecencyList, Deviation, Move, Placer, PlacerParams, UNPLACED},
    play::PREFILL_BYTES,
    predict::{self, HeatMap, Predictor},
    profile::{ChunkCounters, History},
    trace::Access,
};

/// A placement policy replay can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKind {
    /// tierblk: profiler → predictor (named as in `prediction_model`) →
    /// the daemon's [`Placer`] → moves that take a copy time.
    Predictive(String),
    /// Everything on the slowest tier.
    NoTiering,
    /// Everything on tier 0, ignoring its capacity (upper bound on speed and cost).
    AllFast,
    /// Tier 0 as an LRU cache: promote on every miss, demote the least recently used.
    Lru,
    /// Tier 0 managed with future knowledge (Belady): promote on every miss,
    /// demote the chunk used furthest in the future.
    Oracle,
}

impl FromStr for PolicyKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "none" | "no-tiering" => Self::NoTiering,
            "all-fast" => Self::AllFast,
            "lru" => Self::Lru,
            "oracle" | "belady" => Self::Oracle,
            "" => return Err("empty policy name".into()),
            other => Self::Predictive(other.strip_prefix("tierblk:").unwrap_or(other).to_string()),
        })
    }
}

impl PolicyKind {
    pub fn name(&self) -> String {
        match self {
            Self::Predictive(m) => {
                let short = std::path::Path::new(m)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| m.clone());
                format!("tierblk-{short}")
            }
            Self::NoTiering => "no-tiering".into(),
            Self::AllFast => "all-fast".into(),
            Self::Lru => "lru".into(),
            Self::Oracle => "oracle".into(),
        }
    }
}

pub(super) struct Context<'a> {
    pub accesses: &'a [Access],
    /// Trace time (seconds) of each request.
    pub times: &'a [f64],
    pub footprint: usize,
    /// Chunks per tier, fastest first (the slowest is unbounded).
    pub capacity: &'a [u64],
    pub tiers: &'a [&'a TierDefinition],
    pub latency: &'a LatencyModel,
    pub cfg: &'a ReplayConfig,
}

/// Placement state and counters shared by all policies.
struct Sim<'a> {
    ctx: &'a Context<'a>,
    tier_of: Vec<u8>,
    /// Chunks holding an extent on each tier (a chunk being moved holds
    /// one on both).
    occupancy: Vec<u64>,
    /// Chunks being moved off each tier: their extents there are free
    /// once the copy engine, which copies one chunk at a time, reaches a
    /// move queued behind them.
    leaving: Vec<u64>,
    hits: u64,
    promoted: u64,
    promoted_fast: u64,
    demoted: u64,
    prefetches: u64,
    max_fast: u64,
    latencies: Vec<f32>,
    request_us: f64,
    cost_sum: f64,
    cost_samples: u64,
    /// Set when a move would overfill a tier: a harness bug, reported as an error.
    overfull: Option<String>,
    /// Trace time, seconds.
    now: f64,
    /// Moves being copied, in completion order: (done at, move).
    in_flight: VecDeque<(f64, Move)>,
    moving: Vec<bool>,
    /// The copy engine is busy until then (moves are copied one at a time).
    busy_until: f64,
    skipped: u64,
    /// Epochs a deviation check ended early.
    early_epochs: u64,
}

impl<'a> Sim<'a> {
    fn new(ctx: &'a Context<'a>, initial_tier: usize) -> Self {
        let mut occupancy = vec![0; ctx.capacity.len()];
        occupancy[initial_tier] = ctx.footprint as u64;
        Self {
            ctx,
            tier_of: vec![initial_tier as u8; ctx.footprint],
            leaving: vec![0; occupancy.len()],
            occupancy,
            hits: 0,
            promoted: 0,
            promoted_fast: 0,
            demoted: 0,
            prefetches: 0,
            max_fast: if initial_tier == 0 {
                ctx.footprint as u64
            } else {
                0
            },
            latencies: Vec::new(),
            request_us: 0.0,
            cost_sum: 0.0,
            cost_samples: 0,
            overfull: None,
            now: 0.0,
            in_flight: VecDeque::new(),
            moving: vec![false; ctx.footprint],
            busy_until: 0.0,
            skipped: 0,
            early_epochs: 0,
        }
    }

    fn slowest(&self) -> usize {
        self.ctx.capacity.len() - 1
    }

    /// Puts `chunk` (not placed yet) on `hint`, or where the daemon's
    /// allocation falls back to: the slower tiers, then the faster ones.
    fn allocate(&mut self, chunk: u32, hint: usize) {
        let n = self.ctx.capacity.len();
        let hint = hint.min(n - 1);
        let t = (hint..n)
            .chain((0..hint).rev())
            .find(|&t| self.has_room(t))
            .unwrap_or(n - 1);
        self.occupancy[t] += 1;
        self.tier_of[chunk as usize] = t as u8;
        self.note_fast();
    }

    /// Forgets what was counted so far (hits, latencies, moves, cost),
    /// keeping the placement and the moves in flight.
    fn reset_counts(&mut self) {
        self.hits = 0;
        self.promoted = 0;
        self.promoted_fast = 0;
        self.demoted = 0;
        self.prefetches = 0;
        self.max_fast = self.held(0);
        self.latencies.clear();
        self.request_us = 0.0;
        self.cost_sum = 0.0;
        self.cost_samples = 0;
        self.skipped = 0;
        self.early_epochs = 0;
    }

    /// Whether a chunk moved now (behind the moves in flight, as the
    /// daemon's mover runs them in order, committing each switch before a
    /// later move into the tier it left) finds a free extent on `tier`.
    fn has_room(&self, tier: usize) -> bool {
        self.held(tier) < self.ctx.capacity[tier]
    }

    /// Extents `tier` holds once the moves in flight off it are done.
    fn held(&self, tier: usize) -> u64 {
        self.occupancy[tier] - self.leaving[tier]
    }

    /// Keeps `max_fast` the most extents tier 0 has held.
    fn note_fast(&mut self) {
        self.max_fast = self.max_fast.max(self.held(0));
    }

    /// Moves `chunk` to `to` at once.
    fn move_chunk(&mut self, chunk: u32, to: usize) {
        let from = self.tier_of[chunk as usize] as usize;
        if from == to {
            return;
        }
        self.reserve(chunk, to);
        self.switch(chunk, from, to);
    }

    /// Takes room for `chunk` on `to` (the extent a copy goes to).
    fn reserve(&mut self, chunk: u32, to: usize) {
        self.occupancy[to] += 1;
        self.note_fast();
        if self.held(to) > self.ctx.capacity[to] && self.overfull.is_none() {
            self.overfull = Some(format!("tier {to} over capacity moving chunk {chunk}"));
        }
    }

    /// Starts a move the way the daemon's migration does: skipped when the
    /// chunk is already being moved, is not where the plan thinks, or the
    /// target has no room; else copied for `copy_secs` after the moves
    /// before it (one at a time), holding room on both tiers meanwhile and
    /// served from the old tier until the switch. Returns whether it started.
    fn start_move(&mut self, m: &Move, copy_secs: f64) -> bool {
        let (c, from, to) = (m.chunk as usize, m.from as usize, m.to as usize);
        if c >= self.tier_of.len()
            || self.moving[c]
            || self.tier_of[c] as usize != from
            || from == to
            || !self.has_room(to)
        {
            self.skipped += 1;
            return false;
        }
        if copy_secs <= 0.0 {
            self.move_chunk(m.chunk, to);
            return true;
        }
        self.reserve(m.chunk, to);
        self.leaving[from] += 1;
        self.moving[c] = true;
        self.busy_until = self.busy_until.max(self.now) + copy_secs;
        self.in_flight.push_back((self.busy_until, *m));
        true
    }

    /// Advances trace time to `t`, switching the moves whose copy is done.
    fn advance(&mut self, t: f64) {
        self.now = self.now.max(t);
        while let Some(&(done, m)) = self.in_flight.front() {
            if done > self.now {
                break;
            }
            self.in_flight.pop_front();
            self.moving[m.chunk as usize] = false;
            self.leaving[m.from as usize] -= 1;
            self.switch(m.chunk, m.from as usize, m.to as usize);
        }
    }

    /// What the placer is told: each chunk's tier (a chunk being moved
    /// where it goes) and each tier's room (a chunk being moved holds room
    /// on its old tier too).
    fn planner_view(&self) -> (Vec<u8>, Vec<u64>) {
        let mut current = self.tier_of.clone();
        let mut capacity = self.ctx.capacity.to_vec();
        for (_, m) in &self.in_flight {
            current[m.chunk as usize] = m.to;
            let cap = &mut capacity[m.from as usize];
            *cap = cap.saturating_sub(1);
        }
        (current, capacity)
    }

    /// The switch of a move whose room on `to` is already taken.
    fn switch(&mut self, chunk: u32, from: usize, to: usize) {
        self.occupancy[from] -= 1;
        let cs = self.ctx.cfg.chunk_size;
        if to == 0 {
            self.promoted_fast += cs;
        }
        if to < from {
            self.promoted += cs;
        } else {
            self.demoted += cs;
        }
        self.tier_of[chunk as usize] = to as u8;
        self.note_fast();
    }

    /// Serves one access from the chunk's current tier.
    fn serve(&mut self, a: &Access) {
        let t = self.tier_of[a.chunk as usize] as usize;
        if t == 0 {
            self.hits += 1;
        }
        let us = self.ctx.latency.access_us(t, a.write, a.bytes);
        if a.first {
            self.end_request();
            self.request_us = us;
        } else {
            self.request_us = self.request_us.max(us);
        }
    }

    fn end_request(&mut self) {
        if self.request_us > 0.0 {
            self.latencies.push(self.request_us as f32);
        }
        self.request_us = 0.0;
    }

    fn sample_cost(&mut self) {
        self.cost_sum +=
            cost::placement_cost(self.ctx.tiers, &self.occupancy, self.ctx.cfg.chunk_size);
        self.cost_samples += 1;
    }

    fn finish(mut self, policy: String, predict_secs: f64) -> Result<RunReport> {
        self.end_request();
        self.sample_cost();
        if let Some(e) = self.overfull {
            return Err(Error::Invalid(format!("{policy}: {e}")));
        }
        let (mean, p99) = mean_p99(&mut self.latencies);
        let n = self.ctx.accesses.len() as u64;
        Ok(RunReport {
            policy,
            accesses: n,
            fast_hits: self.hits,
            hit_ratio: if n == 0 {
                0.0
            } else {
                self.hits as f64 / n as f64
            },
            bytes_promoted: self.promoted,
            bytes_promoted_fast: self.promoted_fast,
            bytes_demoted: self.demoted,
            prefetches: self.prefetches,
            mean_latency_us: mean,
            p99_latency_us: p99,
            cost_per_month: self.cost_sum / self.cost_samples as f64,
            max_fast_chunks: self.max_fast,
            predict_secs,
            moves_skipped: self.skipped,
            early_epochs: self.early_epochs,
        })
    }
}

/// A policy's reaction to accesses and epoch boundaries.
trait Policy {
    /// Serves access number `i` (calling `sim.serve`) and reacts to it.
    fn access(&mut self, sim: &mut Sim<'_>, i: usize, a: &Access);
    /// Called between epochs, after the last access of the epoch, which
    /// lasted `secs` of trace time.
    fn epoch(&mut self, _sim: &mut Sim<'_>, _secs: f64) {}
    /// A deviation check between epochs (epochs in seconds only): true
    /// when it ended the epoch early, so the next one starts now.
    fn check(&mut self, _sim: &mut Sim<'_>, _secs: f64) -> bool {
        false
    }
}

/// Feeds the accesses to `policy` and ends epochs at the configured
/// cadence: every `epoch_secs` of trace time (idle epochs included, as
/// the daemon's clock runs them), with `placement.deviation_checks`
/// evenly spaced checks in between, as the brain runs them (an epoch a
/// check ends early starts the next one's clock); or every `n` requests.
fn drive(ctx: &Context<'_>, sim: &mut Sim<'_>, policy: &mut dyn Policy) {
    let mut in_epoch = 0u64;
    let mut request = 0usize;
    let mut start = ctx.times.first().copied().unwrap_or(0.0);
    let mut last = start;
    let checks = ctx.cfg.placement.deviation_checks;
    let mut next_check = 1;
    let mut accessed = false;
    for (i, a) in ctx.accesses.iter().enumerate() {
        if a.first {
            let t = ctx.times.get(request).copied().unwrap_or(last).max(last);
            last = t;
            request += 1;
            match ctx.cfg.epoch {
                Epoch::Requests(n) => {
                    if in_epoch == n {
                        sim.advance(t);
                        policy.epoch(sim, t - start);
                        sim.sample_cost();
                        start = t;
                        in_epoch = 0;
                    }
                }
                Epoch::Secs(s) => {
                    let every = s / f64::from(checks + 1);
                    loop {
                        let at = start + every * f64::from(next_check);
                        if next_check <= checks && t >= at {
                            next_check += 1;
                            // With no access since the last check the
                            // figures are the same: nothing to re-tier.
                            if accessed {
                                accessed = false;
                                sim.advance(at);
                                if policy.check(sim, s) {
                                    sim.sample_cost();
                                    start = at;
                                    next_check = 1;
                                }
                            }
                        } else if t >= start + s {
                            start += s;
                            sim.advance(start);
                            policy.epoch(sim, s);
                            sim.sample_cost();
                            next_check = 1;
                            accessed = false;
                        } else {
                            break;
                        }
                    }
                }
            }
            in_epoch += 1;
            sim.advance(t);
        }
        accessed = true;
        policy.access(sim, i, a);
    }
}

struct Static;

impl Policy for Static {
    fn access(&mut self, sim: &mut Sim<'_>, _i: usize, a: &Access) {
        sim.serve(a);
    }
}

const NIL: u32 = u32::MAX;

/// Tier 0 as an LRU list (intrusive, O(1) per access).
struct Lru {
    list: RecencyList,
}

impl Lru {
    fn new(n: usize) -> Self {
        Self {
            list: RecencyList::new(n),
        }
    }
}

impl Policy for Lru {
    fn access(&mut self, sim: &mut Sim<'_>, _i: usize, a: &Access) {
        sim.serve(a);
        let c = a.chunk;
        if sim.tier_of[c as usize] == 0 {
            self.list.touch(c);
            return;
        }
        if !sim.has_room(0) {
            let victim = self.list.lru().expect("a full tier 0 has residents");
            self.list.unlink(victim);
            let to = sim.slowest();
            sim.move_chunk(victim, to);
        }
        sim.move_chunk(c, 0);
        self.list.push_front(c);
    }
}

/// Belady: evict the resident chunk whose next use is furthest away.
struct Oracle {
    next_use: Vec<u32>,
    key: Vec<u32>,
    resident: BTreeSet<(u32, u32)>,
}

impl Oracle {
    fn new(accesses: &[Access], footprint: usize) -> Self {
        let mut next_use = vec![NIL; accesses.len()];
        let mut seen = vec![NIL; footprint];
        for (i, a) in accesses.iter().enumerate().rev() {
            next_use[i] = seen[a.chunk as usize];
            seen[a.chunk as usize] = i as u32;
        }
        Self {
            next_use,
            key: vec![NIL; footprint],
            resident: BTreeSet::new(),
        }
    }
}

impl Policy for Oracle {
    fn access(&mut self, sim: &mut Sim<'_>, i: usize, a: &Access) {
        sim.serve(a);
        let c = a.chunk;
        if sim.tier_of[c as usize] == 0 {
            self.resident.remove(&(self.key[c as usize], c));
        } else {
            if !sim.has_room(0) {
                if let Some((_, victim)) = self.resident.pop_last() {
                    let to = sim.slowest();
                    sim.move_chunk(victim, to);
                }
            }
            sim.move_chunk(c, 0);
        }
        self.key[c as usize] = self.next_use[i];
        self.resident.insert((self.next_use[i], c));
    }
}

/// tierblk's own pipeline, as the daemon runs it: counters → history →
/// predictor → heat map → the volume's [`Placer`] once per epoch, its
/// moves copied at the migration rate; with demand promotion, each miss is
/// also posted to the placer.
pub(super) struct Predictive {
    predictor: Box<dyn Predictor>,
    counters: ChunkCounters,
    history: History,
    heat: HeatMap,
    placer: Placer,
    deviation: Deviation,
    demand_promotion: bool,
    predict_secs: f64,
    /// Every epoch's plan, in order (for tests comparing with the daemon).
    pub plans: Vec<Vec<Move>>,
}

impl Predictive {
    pub(super) fn new(ctx: &Context<'_>, mut predictor: Box<dyn Predictor>) -> Self {
        let cfg = ctx.cfg;
        // A volume's scores before its first epoch, without a VM profile
        // or a saved heat map (as the daemon seeds them).
        let heat = crate::profile::initial_heat_map(None, None, ctx.footprint);
        predictor.seed(&heat);
        Self {
            predictor,
            counters: ChunkCounters::new(ctx.footprint),
            history: History::new(ctx.footprint),
            heat,
            placer: Placer::new(PlacerParams {
                policy: cfg.tiering_policy,
                settings: cfg.placement,
                n_chunks: ctx.footprint,
                n_tiers: ctx.capacity.len(),
                fast_capacity: ctx.capacity[0] as usize,
                chunk_size: cfg.chunk_size,
                migration_mibps: cfg.migration_mibps,
            }),
            deviation: Deviation::new(
                ctx.footprint,
                ctx.capacity[0] as usize,
                cfg.placement.deviation_threshold,
            ),
            demand_promotion: cfg.placement.demand_promotion,
            predict_secs: 0.0,
            plans: Vec::new(),
        }
    }

    /// The volume as `tierblk play --prefill` leaves it: after an idle
    /// epoch (the daemon ran at least one before the prefill, predicting
    /// on no accesses), every chunk is written once in address order
    /// (dense ids are in address order), placed by the allocation hint of
    /// its score then, each write seen by demand promotion; then an epoch
    /// ends and the trace starts. Nothing counted so far is reported.
    fn prefill(&mut self, sim: &mut Sim<'_>, epoch_secs: f64) {
        self.history.fold(&self.counters);
        self.predictor.predict(&self.history, &mut self.heat);
        let t0 = sim.ctx.times.first().copied().unwrap_or(0.0);
        sim.now = t0 - epoch_secs;
        sim.tier_of.fill(UNPLACED);
        sim.occupancy.fill(0);
        sim.max_fast = 0;
        for c in 0..sim.ctx.footprint as u32 {
            let hint = self.placer.hint(self.heat.score(c as usize));
            sim.allocate(c, hint);
            let a = Access {
                chunk: c,
                bytes: PREFILL_BYTES as u32,
                write: true,
                sequential: c > 0,
                first: true,
            };
            a.record(&self.counters);
            self.demand(sim, &a);
        }
        sim.advance(t0);
        self.epoch(sim, epoch_secs);
        sim.reset_counts();
    }

    /// Demand promotion of a chunk just accessed off tier 0.
    fn demand(&mut self, sim: &mut Sim<'_>, a: &Access) {
        let c = a.chunk as usize;
        if !self.demand_promotion || sim.tier_of[c] == 0 || sim.moving[c] {
            return;
        }
        let from = sim.tier_of[c] as usize;
        let plan = self
            .placer
            .on_miss(a.chunk, from, self.heat.score(c), &self.heat, |t| {
                sim.has_room(t)
            });
        self.start(sim, &plan.moves);
    }

    fn start(&mut self, sim: &mut Sim<'_>, moves: &[Move]) {
        let copy = self.placer.copy_secs();
        for m in moves {
            if !sim.start_move(m, copy) {
                self.placer.skipped(m);
            }
        }
    }
}

impl Policy for Predictive {
    fn access(&mut self, sim: &mut Sim<'_>, _i: usize, a: &Access) {
        a.record(&self.counters);
        sim.serve(a);
        self.demand(sim, a);
    }

    fn epoch(&mut self, sim: &mut Sim<'_>, secs: f64) {
        self.history.fold(&self.counters);
        let t = Instant::now();
        self.predictor.predict(&self.history, &mut self.heat);
        self.predict_secs += t.elapsed().as_secs_f64();
        self.deviation.on_epoch(&self.history, &self.heat);
        let (current, capacity) = sim.planner_view();
        let plan = self
            .placer
            .plan_epoch(&self.history, &self.heat, &current, &capacity, secs);
        for m in &plan.moves {
            if m.to == 0 && self.history.count(m.chunk as usize, 0) == 0 {
                sim.prefetches += 1;
            }
        }
        self.start(sim, &plan.moves);
        self.plans.push(plan.moves);
    }

    fn check(&mut self, sim: &mut Sim<'_>, secs: f64) -> bool {
        if !self.deviation.check(&self.counters).retier {
            return false;
        }
        sim.early_epochs += 1;
        self.epoch(sim, secs);
        true
    }
}

/// Runs tierblk's pipeline with `predictor` and returns it with its report.
pub(super) fn run_predictive(
    ctx: &Context<'_>,
    name: String,
    predictor: Box<dyn Predictor>,
) -> Result<(RunReport, Predictive)> {
    let mut p = Predictive::new(ctx, predictor);
    let mut sim = Sim::new(ctx, ctx.capacity.len() - 1);
    if let (true, Epoch::Secs(secs)) = (ctx.cfg.prefill, ctx.cfg.epoch) {
        p.prefill(&mut sim, secs);
    }
    drive(ctx, &mut sim, &mut p);
    let secs = p.predict_secs;
    Ok((sim.finish(name, secs)?, p))
}

pub(super) fn run(ctx: &Context<'_>, kind: &PolicyKind) -> Result<RunReport> {
    let slowest = ctx.capacity.len() - 1;
    let name = kind.name();
    match kind {
        PolicyKind::NoTiering => {
            let mut sim = Sim::new(ctx, slowest);
            drive(ctx, &mut sim, &mut Static);
            sim.finish(name, 0.0)
        }
        PolicyKind::AllFast => {
            let mut sim = Sim::new(ctx, 0);
            drive(ctx, &mut sim, &mut Static);
            sim.finish(name, 0.0)
        }
        PolicyKind::Lru => {
            let mut sim = Sim::new(ctx, slowest);
            drive(ctx, &mut sim, &mut Lru::new(ctx.footprint));
            sim.finish(name, 0.0)
        }
        PolicyKind::Oracle => {
            let mut sim = Sim::new(ctx, slowest);
            drive(ctx, &mut sim, &mut Oracle::new(ctx.accesses, ctx.footprint));
            sim.finish(name, 0.0)
        }
        PolicyKind::Predictive(model) => Ok(run_predictive(ctx, name, predict::load(model)?)?.0),
    }
}
