//! Background chunk migration by shadow clone (DESIGN decision 5): copy a
//! chunk to a new extent while the guest keeps using the old one, recopy
//! the parts it wrote meanwhile, then hold the chunk for a moment, copy the
//! last written parts and switch. The switch is committed with the next
//! flush (after the copy is synced), and only then is the old extent freed:
//! a crash at any point leaves either the old or the new extent
//! authoritative, never a mix, and no flushed write is lost.

pub mod backoff;
mod budget;
pub mod mover;
mod rate;

use std::time::{Duration, Instant};

pub use budget::Budget;
pub use mover::{Done, Job, MoverThread, Pacer};
pub use rate::RateLimiter;

use crate::{
    tier::{Tier, UNIT_BYTES},
    volume::{dirty::PARTS, Mapping, Volume},
};

/// Copy passes while the guest keeps writing, before holding the chunk.
const MAX_LIVE_PASSES: usize = 4;
/// How long the mover waits for in-flight I/O on the chunk to drain before
/// giving up on this chunk for now.
const HOLD_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Volume(#[from] crate::volume::Error),
    #[error(transparent)]
    Tier(#[from] crate::tier::Error),
    #[error(transparent)]
    Meta(#[from] crate::meta::Error),
    #[error("volume '{volume}': copying chunk {chunk} from tier '{from}' to '{to}': {source}")]
    Copy {
        volume: String,
        chunk: u32,
        from: String,
        to: String,
        source: std::io::Error,
    },
    #[error("volume '{volume}': no tier {tier}")]
    NoTier { volume: String, tier: u8 },
    #[error("migration panicked: {0}")]
    Panicked(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What happened to one requested move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Moved { from: u8, to: u8 },
    Skipped(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// No extent (nothing to move) or another migration holds it.
    NotMovable,
    AlreadyThere,
    TargetFull,
    /// Guest I/O did not drain in time; try again later.
    Busy,
    /// All migration slots of the volume are in use.
    TooManyMigrations,
}

/// Moves `chunk` of `volume` to tier `to`. Never loses data: on any error
/// or skip the chunk stays where it was.
pub fn migrate_chunk(
    volume: &Volume,
    chunk: u32,
    to: u8,
    limiter: &mut RateLimiter,
) -> Result<Outcome> {
    let map = volume.chunk_map();
    if map.get(chunk).is_some_and(|m| m.tier == to) {
        return Ok(Outcome::Skipped(SkipReason::AlreadyThere));
    }
    let target = volume.tiers().get(to).ok_or(Error::NoTier {
        volume: volume.name().to_string(),
        tier: to,
    })?;
    // Register for dirty tracking before writers can see MIGRATING.
    let Some(slot) = volume.dirty_tracker().register(chunk) else {
        return Ok(Outcome::Skipped(SkipReason::TooManyMigrations));
    };
    let guard = EndOnUnwind::new(volume, chunk, slot);
    let Some(from) = map.begin_migration(chunk) else {
        guard.end(false);
        return Ok(Outcome::Skipped(SkipReason::NotMovable));
    };
    guard.begun();
    let abort = |new: Option<u64>| {
        guard.end(true);
        if let Some(off) = new {
            target.free(off, volume.chunk_size());
        }
    };
    if from.tier == to {
        abort(None);
        return Ok(Outcome::Skipped(SkipReason::AlreadyThere));
    }
    match clone_and_switch(volume, chunk, from, target, slot, limiter) {
        Ok(Some(_new)) => {
            // switch_extent ended the migration.
            guard.end(false);
            Ok(Outcome::Moved {
                from: from.tier,
                to,
            })
        }
        Ok(None) => {
            abort(None);
            Ok(Outcome::Skipped(SkipReason::TargetFull))
        }
        Err(Failure::Busy(new)) => {
            abort(Some(new));
            Ok(Outcome::Skipped(SkipReason::Busy))
        }
        Err(Failure::Error(e, new)) => {
            abort(new);
            Err(*e)
        }
    }
}

/// Ends a migration that a panic interrupts (the brain catches panics and
/// goes on with the next epoch): the chunk must not stay held, or new I/O
/// on it would wait forever, nor migrating, and its dirty slot is freed.
/// The extent allocated on the target, if any, stays reserved until the
/// next restart (an extent no map references is free then).
struct EndOnUnwind<'a> {
    volume: &'a Volume,
    chunk: u32,
    slot: usize,
    stage: std::cell::Cell<Stage>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Registered,
    Begun,
    Ended,
}

impl<'a> EndOnUnwind<'a> {
    fn new(volume: &'a Volume, chunk: u32, slot: usize) -> Self {
        Self {
            volume,
            chunk,
            slot,
            stage: std::cell::Cell::new(Stage::Registered),
        }
    }

    /// begin_migration succeeded: the chunk is ours to end.
    fn begun(&self) {
        self.stage.set(Stage::Begun);
    }

    /// The normal end: ends the migration without a switch if
    /// `end_migration` (the caller's hold and MIGRATING are released),
    /// and frees the dirty slot.
    fn end(&self, end_migration: bool) {
        if end_migration {
            self.volume.chunk_map().end_migration(self.chunk, None);
        }
        self.volume.dirty_tracker().unregister(self.slot);
        self.stage.set(Stage::Ended);
    }
}

impl Drop for EndOnUnwind<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        match self.stage.get() {
            Stage::Ended => {}
            Stage::Registered => self.end(false),
            Stage::Begun => {
                log::error!(
                    "volume '{}': migration of chunk {} interrupted by a panic; ended without a switch",
                    self.volume.name(),
                    self.chunk
                );
                self.end(true);
            }
        }
    }
}

enum Failure {
    /// In-flight I/O did not drain; the new extent is to be freed.
    Busy(u64),
    Error(Box<Error>, Option<u64>),
}

type CloneResult = std::result::Result<Option<Mapping>, Failure>;

/// Copies, holds, commits and switches. Ok(None): target tier full. On
/// failure the new extent's offset (if allocated) is returned for cleanup;
/// the chunk is left migrating (and possibly held) for the caller to end.
fn clone_and_switch(
    volume: &Volume,
    chunk: u32,
    from: Mapping,
    target: &Tier,
    slot: usize,
    limiter: &mut RateLimiter,
) -> CloneResult {
    let map = volume.chunk_map();
    let cs = volume.chunk_size();
    let Some(new_off) = target
        .allocate(cs)
        .map_err(|e| Failure::Error(Box::new(e.into()), None))?
    else {
        return Ok(None);
    };
    let fail = |e: Error| Failure::Error(Box::new(e), Some(new_off));
    let source = volume.tiers().get(from.tier).ok_or_else(|| {
        fail(Error::NoTier {
            volume: volume.name().to_string(),
            tier: from.tier,
        })
    })?;
    let old_off = from.unit * UNIT_BYTES;
    let copier = Copier {
        volume,
        chunk,
        source,
        target,
        old_off,
        new_off,
        part: cs / PARTS,
    };
    let mut buf = vec![0u8; copier.part as usize];
    let mut dirty = u64::MAX;
    for _ in 0..MAX_LIVE_PASSES {
        copier.copy(dirty, &mut buf, Some(limiter)).map_err(fail)?;
        dirty = volume.dirty_tracker().take(slot);
        if dirty == 0 {
            break;
        }
    }
    // Hold new I/O on the chunk once the I/O in flight has drained.
    let deadline = Instant::now() + HOLD_TIMEOUT;
    while !map.try_hold_idle(chunk) {
        if Instant::now() > deadline {
            return Err(Failure::Busy(new_off));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    // Held: no I/O in flight or starting. Copy what was written last.
    let last = dirty | volume.dirty_tracker().take(slot);
    if last != 0 {
        copier.copy(last, &mut buf, None).map_err(fail)?;
    }
    let to = Mapping {
        tier: target.id(),
        unit: new_off / UNIT_BYTES,
    };
    // Switch while held. The switch becomes durable with the next flush,
    // which syncs the copy first; until then the old extent stays reserved
    // and authoritative on disk, so a crash in between finds the old map
    // and the old extent with every flushed write.
    volume.switch_extent(chunk, from, to);
    Ok(Some(to))
}

struct Copier<'a> {
    volume: &'a Volume,
    chunk: u32,
    source: &'a Tier,
    target: &'a Tier,
    old_off: u64,
    new_off: u64,
    part: u64,
}

impl Copier<'_> {
    /// Copies the parts whose bits are set in `parts`.
    fn copy(
        &self,
        parts: u64,
        buf: &mut [u8],
        mut limiter: Option<&mut RateLimiter>,
    ) -> Result<()> {
        // The copy must be synced by the flush that commits the switch.
        self.volume.mark_unsynced(self.target.id());
        let mut copied = 0;
        for i in 0..PARTS {
            if parts & (1 << i) == 0 {
                continue;
            }
            if let Some(l) = limiter.as_deref_mut() {
                l.acquire(self.part);
            }
            let off = i * self.part;
            self.source
                .read_exact_at(buf, self.old_off + off)
                .and_then(|()| self.target.write_all_at(buf, self.new_off + off))
                .map_err(|source| Error::Copy {
                    volume: self.volume.name().to_string(),
                    chunk: self.chunk,
                    from: self.source.name().to_string(),
                    to: self.target.name().to_string(),
                    source,
                })?;
            copied += self.part;
        }
        // An emulated device's bandwidth is the guest's and the mover's
        // together: the copy books its bytes as one transfer each way (a
        // real mover's copy is one request per side, not one per part).
        // A paced copy then waits until the device has done it, behind
        // the guest's requests booked before; the last copy of a held
        // chunk only books its share (the guest waits on that chunk
        // meanwhile).
        if copied > 0 {
            let busy = booked(self.source, copied).max(booked(self.target, copied));
            if limiter.is_some() && busy > EMULATED_WAIT_MIN {
                std::thread::sleep(busy);
            }
        }
        Ok(())
    }
}

/// Paced copies sleep through an emulated device's backlog longer than
/// this (shorter waits are below a sleep's granularity).
const EMULATED_WAIT_MIN: Duration = Duration::from_micros(500);

/// Books `bytes` on `tier`'s emulated bandwidth, if it has one; how long
/// until the transfer is done.
fn booked(tier: &Tier, bytes: u64) -> Duration {
    tier.emulator().map_or(Duration::ZERO, |e| e.occupy(bytes))
}

#[cfg(test)]
mod tests;
