//! A volume: one VM disk made of chunks spread over tiers. This module holds
//! the request semantics (what a read, write, discard, write-zeroes and
//! flush do to the volume), free of virtio, testable with plain buffers.

pub mod chunk_map;
pub mod committer;
pub mod dirty;
pub mod load;
pub mod misses;

use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc, Mutex, MutexGuard,
};

pub use chunk_map::{ChunkMap, ChunkState, Mapping, WritePin};

use crate::{
    config::{TieringPolicy, VolumeMetadata},
    meta::Store,
    tier::{Tier, TierSet, UNIT_BYTES},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "volume '{volume}': request at byte {offset} (+{len}) is beyond the end ({size} bytes)"
    )]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("volume '{volume}': no tier has a free extent for chunk {chunk}")]
    NoSpace { volume: String, chunk: u32 },
    #[error("volume '{volume}': chunk {chunk} maps to tier {tier}, which is not configured")]
    MissingTier {
        volume: String,
        chunk: u32,
        tier: u8,
    },
    #[error("volume '{volume}': stored {what} is {stored}, config says {configured}; changing it needs a new volume")]
    Incompatible {
        volume: String,
        what: &'static str,
        stored: String,
        configured: String,
    },
    #[error(transparent)]
    Tier(#[from] crate::tier::Error),
    #[error(transparent)]
    Meta(#[from] crate::meta::Error),
    #[error("volume '{volume}': I/O on tier '{tier}': {source}")]
    Io {
        volume: String,
        tier: String,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where one piece of a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Unallocated chunk: reads return zeros.
    Zeros,
    /// Byte offset on a tier device.
    Extent { tier: u8, offset: u64 },
}

/// One chunk's share of a request. Segments with an `Extent` target hold a
/// pin on their chunk until `Volume::release` is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub chunk: u32,
    pub len: u32,
    pub target: Target,
}

/// Per-chunk metadata as DESIGN.md names it ("block" = chunk).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BlockMetadata {
    pub chunk: u32,
    pub tier: Option<u8>,
    pub extent_offset: Option<u64>,
    pub prediction_score: f32,
    pub state: ChunkState,
}

/// Chunk-map changes not yet in the store, numbered in the order they were
/// made: a flush commits exactly the changes made before it started.
#[derive(Debug, Default)]
struct Pending {
    /// (chunk, persistent entry), oldest first; `changes[i]` has sequence
    /// number `first_seq + i`.
    changes: std::collections::VecDeque<(u32, u64)>,
    first_seq: u64,
    /// Extents unmapped by a change, with that change's sequence number;
    /// reusable only once the change is durable, so a crash can never leave
    /// two chunks on one extent.
    frees: std::collections::VecDeque<(u64, Mapping)>,
}

impl Pending {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.changes.len() as u64
    }

    fn push(&mut self, chunk: u32, entry: u64, freed: Option<Mapping>) {
        if let Some(m) = freed {
            self.frees.push_back((self.next_seq(), m));
        }
        self.changes.push_back((chunk, entry));
    }
}

/// What a flush must make durable: every chunk-map change made before it.
/// A later ticket covers everything an earlier one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlushTicket(u64);

#[derive(Debug)]
pub struct Volume {
    meta: VolumeMetadata,
    chunk_shift: u32,
    map: ChunkMap,
    /// Predicted heat of each chunk (f32 bits), written by the brain, read
    /// for tier hints.
    scores: Vec<AtomicU32>,
    tiers: Arc<TierSet>,
    store: Arc<Store>,
    pending: Mutex<Pending>,
    commit_lock: Mutex<()>,
    /// Writes that land on chunks being migrated.
    dirty: dirty::DirtyTracker,
    /// Per-chunk access counters the data path bumps, the brain drains.
    counters: crate::profile::ChunkCounters,
    /// One bit per tier id: tiers this volume wrote to since their last
    /// sync, so a flush syncs only those (a failed tier the volume has no
    /// new data on does not fail its flushes).
    unsynced: AtomicU32,
    /// Store commits the committer thread made for this volume's FLUSHes.
    group_commits: std::sync::atomic::AtomicU64,
    /// Where guest accesses were served, and the brain's migration totals
    /// (published once per epoch by `stats::publish`).
    served: crate::stats::VolumeCounters,
    /// Chunks the data path served from a slower tier, for the brain's
    /// demand promotion.
    misses: misses::MissQueue,
    /// Requests in flight, completed and their latency, per queue, for
    /// the mover to yield to the guest.
    load: load::GuestLoad,
}

/// Checks that a configured volume can open the stored one: same chunk
/// size, no smaller.
pub fn check_compatible(stored: &VolumeMetadata, meta: &VolumeMetadata) -> Result<()> {
    if stored.chunk_size != meta.chunk_size {
        return Err(Error::Incompatible {
            volume: meta.name.clone(),
            what: "chunk_size",
            stored: stored.chunk_size.to_string(),
            configured: meta.chunk_size.to_string(),
        });
    }
    if meta.size < stored.size {
        return Err(Error::Incompatible {
            volume: meta.name.clone(),
            what: "size",
            stored: stored.size.to_string(),
            configured: format!("{} (shrinking would drop data)", meta.size),
        });
    }
    Ok(())
}

/// Score a chunk gets before anything is known about it.
pub const PRIOR_SCORE: f32 = 0.5;

/// Chunk-map changes taken from a volume for one commit, with its commit
/// lock held: `finish` once they are durable, `restore` if the commit failed.
struct Taken<'a> {
    volume: &'a Volume,
    _commit: MutexGuard<'a, ()>,
    changes: Vec<(u32, u64)>,
    frees: Vec<(u64, Mapping)>,
    /// Sequence number of the first taken change.
    first: u64,
}

impl Taken<'_> {
    /// The changes are durable: the extents they unmapped may be reused.
    fn finish(self) {
        let v = self.volume;
        for (_, m) in self.frees {
            if let Some(t) = v.tiers.get(m.tier) {
                t.free(m.unit * UNIT_BYTES, v.chunk_size());
            }
        }
    }

    /// The commit failed: puts the changes and frees back, ahead of newer
    /// ones, for the next flush.
    fn restore(self) {
        let mut p = lock(&self.volume.pending);
        for c in self.changes.into_iter().rev() {
            p.changes.push_front(c);
        }
        for f in self.frees.into_iter().rev() {
            p.frees.push_front(f);
        }
        p.first_seq = self.first;
    }
}

/// Commits several volumes of one store, each up to its ticket, in one
/// durable store transaction (one fsync), then lets the extents they
/// unmapped be reused; on error every volume keeps its changes for the next
/// flush. Commit locks are taken in name order, so concurrent group and
/// single-volume commits cannot deadlock and each volume's commits stay
/// serialized. A volume named twice is committed up to its latest ticket.
pub fn commit_group(group: &[(&Volume, FlushTicket)]) -> Result<()> {
    let mut order = group.to_vec();
    order.sort_by(|a, b| {
        (a.0.name(), std::ptr::from_ref(a.0)).cmp(&(b.0.name(), std::ptr::from_ref(b.0)))
    });
    order.dedup_by(|later, kept| {
        let same = std::ptr::eq(later.0, kept.0);
        if same {
            kept.1 = kept.1.max(later.1);
        }
        same
    });
    let Some(store) = order.first().map(|(v, _)| v.store.clone()) else {
        return Ok(());
    };
    debug_assert!(
        order.iter().all(|(v, _)| Arc::ptr_eq(&v.store, &store)),
        "a group commit covers volumes of one store"
    );
    let taken: Vec<Taken> = order
        .iter()
        .filter_map(|&(v, t)| v.take_pending(t))
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    let changes: Vec<(&str, &[(u32, u64)])> = taken
        .iter()
        .map(|t| (t.volume.name(), t.changes.as_slice()))
        .collect();
    if let Err(e) = store.apply_chunk_changes_many(&changes) {
        taken.into_iter().for_each(Taken::restore);
        return Err(e.into());
    }
    taken.into_iter().for_each(Taken::finish);
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder finishes its update before it can panic, so a poisoned
    // lock still guards consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volume {
    /// Opens a volume: checks the config against the stored definition,
    /// loads its chunk map and claims its extents on the tiers.
    pub fn open(meta: VolumeMetadata, tiers: Arc<TierSet>, store: Arc<Store>) -> Result<Self> {
        let name = meta.name.clone();
        if let Some(stored) = store.volume(&name)? {
            check_compatible(&stored, &meta)?;
        }
        let chunks = meta.chunk_count() as usize;
        let map = ChunkMap::new(chunks);
        let chunk_bytes = meta.chunk_size.0;
        for (chunk, word) in store.chunk_map(&name)? {
            let Some(m) = Mapping::from_persistent(word) else {
                continue;
            };
            if chunk as usize >= chunks {
                continue;
            }
            let tier = tiers.get(m.tier).ok_or(Error::MissingTier {
                volume: name.clone(),
                chunk,
                tier: m.tier,
            })?;
            tier.claim(m.unit * UNIT_BYTES, chunk_bytes)?;
            map.load(chunk, m);
        }
        store.put_volume(&meta)?;
        let prior = PRIOR_SCORE.to_bits();
        Ok(Self {
            chunk_shift: chunk_bytes.trailing_zeros(),
            scores: (0..chunks).map(|_| AtomicU32::new(prior)).collect(),
            meta,
            map,
            tiers,
            store,
            pending: Mutex::default(),
            commit_lock: Mutex::new(()),
            dirty: dirty::DirtyTracker::default(),
            counters: crate::profile::ChunkCounters::new(chunks),
            unsynced: AtomicU32::new(0),
            group_commits: std::sync::atomic::AtomicU64::new(0),
            served: crate::stats::VolumeCounters::default(),
            misses: misses::MissQueue::new(chunks),
            load: load::GuestLoad::default(),
        })
    }

    pub fn metadata(&self) -> &VolumeMetadata {
        &self.meta
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    pub fn size(&self) -> u64 {
        self.meta.size.0
    }

    pub fn chunk_size(&self) -> u64 {
        1 << self.chunk_shift
    }

    pub fn chunk_count(&self) -> u32 {
        self.map.len() as u32
    }

    /// Where `chunk`'s extent is, as an index into the fastest-first tier
    /// list (None: no extent yet).
    pub fn tier_index(&self, chunk: u32) -> Option<usize> {
        let tier = self.map.get(chunk)?.tier;
        self.tiers.ids().iter().position(|&i| i == tier)
    }

    pub fn chunk_map(&self) -> &ChunkMap {
        &self.map
    }

    pub fn tiers(&self) -> &Arc<TierSet> {
        &self.tiers
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn score(&self, chunk: u32) -> f32 {
        f32::from_bits(self.scores[chunk as usize].load(Ordering::Relaxed))
    }

    /// Sets the predicted heat of a chunk (clamped to [0, 1]).
    pub fn set_score(&self, chunk: u32, score: f32) {
        let s = if score.is_nan() {
            0.0
        } else {
            score.clamp(0.0, 1.0)
        };
        self.scores[chunk as usize].store(s.to_bits(), Ordering::Relaxed);
    }

    pub fn block_metadata(&self, chunk: u32) -> BlockMetadata {
        let m = self.map.get(chunk);
        BlockMetadata {
            chunk,
            tier: m.map(|m| m.tier),
            extent_offset: m.map(|m| m.unit * UNIT_BYTES),
            prediction_score: self.score(chunk),
            state: self.map.state(chunk),
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(Error::OutOfRange {
                volume: self.meta.name.clone(),
                offset,
                len,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// Splits [offset, offset+len) at chunk boundaries: (chunk, offset in
    /// chunk, length).
    fn pieces(&self, offset: u64, len: u64) -> impl Iterator<Item = (u32, u64, u64)> + '_ {
        let cs = self.chunk_size();
        let end = offset + len;
        let mut pos = offset;
        std::iter::from_fn(move || {
            if pos >= end {
                return None;
            }
            let chunk = pos >> self.chunk_shift;
            let within = pos & (cs - 1);
            let n = (cs - within).min(end - pos);
            pos += n;
            Some((chunk as u32, within, n))
        })
    }

    /// Tier a new extent of `chunk` should go to (the allocation hint).
    pub fn tier_hint(&self, chunk: u32) -> u8 {
        let ids = self.tiers.ids();
        let slowest = *ids.last().expect("a volume has at least one tier");
        if !self.meta.tiering_enabled {
            return self.meta.pinned_tier.unwrap_or(slowest);
        }
        // The placement engine's one score → tier function, so the plan
        // never moves a chunk back from where this put it.
        ids[crate::place::tier_for_score(self.meta.tiering_policy, self.score(chunk), ids.len())]
    }

    /// Allocates an extent for `chunk`: the hinted tier first, then slower
    /// tiers, then faster ones.
    fn allocate(&self, chunk: u32) -> Result<Mapping> {
        let hint = self.tier_hint(chunk);
        let cs = self.chunk_size();
        let order = self
            .tiers
            .iter()
            .filter(|t| t.id() >= hint)
            .chain(self.tiers.iter().filter(|t| t.id() < hint).rev());
        let mut failed = None;
        for t in order {
            match t.allocate(cs) {
                Ok(Some(off)) => {
                    // The extent may have been zeroed: that must be durable
                    // before the map that points at it.
                    self.mark_unsynced(t.id());
                    return Ok(Mapping {
                        tier: t.id(),
                        unit: off / UNIT_BYTES,
                    });
                }
                Ok(None) => {}
                // A failing tier: try the others, report it if none helps.
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Err(Error::NoSpace {
                volume: self.meta.name.clone(),
                chunk,
            }),
        }
    }

    fn segment(&self, chunk: u32, within: u64, len: u64, m: Mapping) -> Segment {
        Segment {
            chunk,
            len: len as u32,
            target: Target::Extent {
                tier: m.tier,
                offset: m.unit * UNIT_BYTES + within,
            },
        }
    }

    /// Maps a read into per-chunk segments, pinning allocated chunks.
    pub fn map_read(&self, offset: u64, len: u64, out: &mut Vec<Segment>) -> Result<()> {
        self.check_range(offset, len)?;
        for (chunk, within, n) in self.pieces(offset, len) {
            out.push(match self.map.pin_read(chunk) {
                Some(m) => self.segment(chunk, within, n, m),
                None => Segment {
                    chunk,
                    len: n as u32,
                    target: Target::Zeros,
                },
            });
        }
        Ok(())
    }

    /// Maps a write into per-chunk segments, allocating extents for chunks
    /// that have none (by the tier hint) and pinning every chunk. On error
    /// nothing stays pinned.
    pub fn map_write(&self, offset: u64, len: u64, out: &mut Vec<Segment>) -> Result<()> {
        self.check_range(offset, len)?;
        let first = out.len();
        for (chunk, within, n) in self.pieces(offset, len) {
            let m = match self.map.pin_write(chunk) {
                WritePin::Mapped(m) => m,
                WritePin::Unallocated => match self.install_new(chunk) {
                    Ok(m) => m,
                    Err(e) => {
                        self.release(&out[first..]);
                        out.truncate(first);
                        return Err(e);
                    }
                },
            };
            out.push(self.segment(chunk, within, n, m));
        }
        Ok(())
    }

    fn install_new(&self, chunk: u32) -> Result<Mapping> {
        let m = self.allocate(chunk)?;
        match self.map.install(chunk, m) {
            Ok(m) => {
                lock(&self.pending).push(chunk, m.to_persistent(), None);
                Ok(m)
            }
            Err(theirs) => {
                // Never published: safe to reuse at once.
                self.tier_of(m)?
                    .free(m.unit * UNIT_BYTES, self.chunk_size());
                Ok(theirs)
            }
        }
    }

    fn tier_of(&self, m: Mapping) -> Result<&Tier> {
        self.tiers.get(m.tier).ok_or(Error::MissingTier {
            volume: self.meta.name.clone(),
            chunk: u32::MAX,
            tier: m.tier,
        })
    }

    /// Drops the pins taken by `map_read` / `map_write`.
    pub fn release(&self, segs: &[Segment]) {
        for s in segs {
            if let Target::Extent { .. } = s.target {
                self.map.unpin(s.chunk);
            }
        }
    }

    /// Records that `tier` holds data written since its last sync.
    #[inline]
    pub fn mark_unsynced(&self, tier: u8) {
        let bit = 1u32 << tier;
        // A load first: the common case (already marked) writes nothing, so
        // queues do not bounce the cache line.
        if self.unsynced.load(Ordering::Relaxed) & bit == 0 {
            self.unsynced.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Records the tiers of written segments as holding unsynced data.
    pub fn note_written(&self, segs: &[Segment]) {
        for s in segs {
            if let Target::Extent { tier, .. } = s.target {
                self.mark_unsynced(tier);
            }
        }
    }

    /// Takes the set of tiers to sync for a flush (bit per tier id); give it
    /// back with `restore_unsynced` if the sync fails.
    pub fn take_unsynced(&self) -> u32 {
        self.unsynced.swap(0, Ordering::AcqRel)
    }

    pub fn restore_unsynced(&self, mask: u32) {
        self.unsynced.fetch_or(mask, Ordering::AcqRel);
    }

    /// Tiers of `mask`, fastest first.
    pub fn tiers_in(&self, mask: u32) -> impl Iterator<Item = &Tier> {
        self.tiers.iter().filter(move |t| mask & (1 << t.id()) != 0)
    }

    /// Like `release`, for segments that were written: their tiers are
    /// marked for the next flush, and a write that lands on a chunk being
    /// migrated is recorded (before its pin is dropped) so the mover copies
    /// that part again.
    pub fn release_written(&self, segs: &[Segment]) {
        self.note_written(segs);
        for s in segs {
            if let Target::Extent { offset, .. } = s.target {
                if self.map.state(s.chunk) == ChunkState::Migrating {
                    let cs = self.chunk_size();
                    let bits = dirty::part_bits(offset & (cs - 1), s.len as u64, cs);
                    self.dirty.mark(s.chunk, bits);
                }
                self.map.unpin(s.chunk);
            }
        }
    }

    /// Access counters of this volume's chunks (bumped per request).
    pub fn counters(&self) -> &crate::profile::ChunkCounters {
        &self.counters
    }

    /// Counts a guest read or write for the profiler: a few relaxed atomic
    /// adds on the chunks it touches, no lock, no allocation. `sequential`
    /// says the request continues the previous one of the same queue (each
    /// queue tracks that itself, so queues share no counter).
    #[inline]
    pub fn record_access(&self, write: bool, offset: u64, len: u64, sequential: bool) {
        for (chunk, _, n) in self.pieces(offset, len) {
            if write {
                self.counters.record_write(chunk as u64, n);
            } else {
                self.counters.record_read(chunk as u64, n);
            }
        }
        if sequential && len > 0 {
            self.counters.record_sequential(offset >> self.chunk_shift);
        }
    }

    /// Counts where a mapped guest request is served, one access per chunk
    /// segment: tier 0 (the fastest tier) or not (a slower tier, or zeros
    /// for a chunk without an extent). A relaxed add per segment; a chunk
    /// served from a slower tier is also posted to the miss queue (a load,
    /// or a lock-free push when it is not waiting yet). Reads and writes
    /// alike, as `tierblk replay` counts accesses.
    #[inline]
    pub fn count_served(&self, write: bool, segs: &[Segment]) {
        let fastest = self.tiers.ids().first().copied();
        for s in segs {
            let fast = match s.target {
                Target::Extent { tier, .. } if Some(tier) == fastest => true,
                Target::Extent { .. } => {
                    self.misses.post(s.chunk);
                    false
                }
                Target::Zeros => false,
            };
            self.served.record(write, fast);
        }
    }

    /// Chunks served from a slower tier and not yet taken by the brain.
    pub fn misses(&self) -> &misses::MissQueue {
        &self.misses
    }

    /// The guest's requests as the queue workers count them.
    pub fn guest_load(&self) -> &load::GuestLoad {
        &self.load
    }

    /// This volume's served-access and migration totals.
    pub fn served(&self) -> &crate::stats::VolumeCounters {
        &self.served
    }

    pub fn dirty_tracker(&self) -> &dirty::DirtyTracker {
        &self.dirty
    }

    /// Ends a migration of a held chunk: records the switch from `from` to
    /// `to` for the next flush (freeing `from` once that is durable), then
    /// points the chunk at `to` and releases the hold. The record comes
    /// first, so any flush covering a write to the new extent also commits
    /// the switch.
    pub fn switch_extent(&self, chunk: u32, from: Mapping, to: Mapping) {
        lock(&self.pending).push(chunk, to.to_persistent(), Some(from));
        self.map.end_migration(chunk, Some(to));
    }

    /// Makes [offset, offset+len) read as zeros. Whole chunks are unmapped
    /// (their extents freed after the next commit) when `unmap` is set;
    /// partial chunks, and chunks busy with I/O, are zeroed in place.
    pub fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_range(offset, len)?;
        let cs = self.chunk_size();
        for (chunk, within, n) in self.pieces(offset, len) {
            if unmap && n == cs {
                if let Some(m) = self.map.try_unmap(chunk) {
                    lock(&self.pending).push(chunk, 0, Some(m));
                    continue;
                }
            }
            // Pin so the extent cannot move while we zero it.
            if let WritePin::Mapped(m) = self.map.pin_write(chunk) {
                let offset = m.unit * UNIT_BYTES + within;
                let r = self.tier_of(m).and_then(|t| Ok(t.zero_range(offset, n)?));
                self.release_written(&[Segment {
                    chunk,
                    len: n as u32,
                    target: Target::Extent {
                        tier: m.tier,
                        offset,
                    },
                }]);
                r?;
            }
        }
        Ok(())
    }

    /// Makes every completed write durable: syncs the tier devices this
    /// volume wrote to, then commits the chunk-map changes made before the
    /// call.
    pub fn flush(&self) -> Result<()> {
        let ticket = self.flush_ticket();
        let mask = self.take_unsynced();
        for t in self.tiers_in(mask) {
            if let Err(e) = t.sync_data() {
                self.restore_unsynced(mask);
                return Err(e.into());
            }
        }
        self.commit(ticket)
    }

    /// Starts a flush: the changes it covers are those made so far. The
    /// caller then syncs every tier device (e.g. with io_uring fsync) and
    /// calls `commit`.
    pub fn flush_ticket(&self) -> FlushTicket {
        FlushTicket(lock(&self.pending).next_seq())
    }

    /// Second half of a flush, once the tier devices are synced: commits the
    /// chunk-map changes the ticket covers in one durable transaction, then
    /// lets the extents they unmapped be reused. Data (and the zeroing of
    /// new extents) is synced before the map that points at it, so a crash
    /// in between leaves the old, consistent map. Commits are serialized:
    /// a flush that finds its changes being committed by another waits for
    /// that commit instead of returning early.
    pub fn commit(&self, ticket: FlushTicket) -> Result<()> {
        commit_group(&[(self, ticket)])
    }

    /// First step of a commit: waits for any commit of this volume in
    /// progress, then takes the changes (and frees) `ticket` covers. None
    /// when there are none left to commit. The commit lock stays held
    /// until the taken changes are finished or restored.
    fn take_pending(&self, ticket: FlushTicket) -> Option<Taken<'_>> {
        let guard = lock(&self.commit_lock);
        let mut p = lock(&self.pending);
        let n = ticket.0.saturating_sub(p.first_seq) as usize;
        if n == 0 {
            return None;
        }
        let changes = p.changes.drain(..n).collect();
        let first = p.first_seq;
        p.first_seq += n as u64;
        let k = p.frees.iter().take_while(|f| f.0 < ticket.0).count();
        let frees = p.frees.drain(..k).collect();
        Some(Taken {
            volume: self,
            _commit: guard,
            changes,
            frees,
            first,
        })
    }

    /// Store commits the committer thread made for this volume's FLUSHes
    /// (each covers every FLUSH of this volume that was waiting, in one
    /// transaction with the other volumes' waiting FLUSHes).
    pub fn group_commits(&self) -> u64 {
        self.group_commits.load(Ordering::Relaxed)
    }

    pub(crate) fn count_group_commit(&self) {
        self.group_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// True when chunk-map changes wait for a flush.
    pub fn has_pending_changes(&self) -> bool {
        !lock(&self.pending).changes.is_empty()
    }

    fn io_err(&self, tier: &Tier, source: std::io::Error) -> Error {
        Error::Io {
            volume: self.meta.name.clone(),
            tier: tier.name().to_string(),
            source,
        }
    }

    /// Reads into a plain buffer (control path, migration, tests).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut segs = Vec::new();
        self.map_read(offset, buf.len() as u64, &mut segs)?;
        let r = self.for_each_piece(&segs, |dev, range| match dev {
            None => {
                buf[range].fill(0);
                Ok(())
            }
            Some((t, off)) => t
                .read_exact_at(&mut buf[range], off)
                .map_err(|e| self.io_err(t, e)),
        });
        self.release(&segs);
        r
    }

    /// Writes a plain buffer (control path, migration, tests).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let mut segs = Vec::new();
        self.map_write(offset, data.len() as u64, &mut segs)?;
        let r = self.for_each_piece(&segs, |dev, range| match dev {
            None => Ok(()),
            Some((t, off)) => t
                .write_all_at(&data[range], off)
                .map_err(|e| self.io_err(t, e)),
        });
        self.release_written(&segs);
        r
    }

    /// Calls `f` with each segment's device (None for holes) and its byte
    /// range within the request.
    fn for_each_piece(
        &self,
        segs: &[Segment],
        mut f: impl FnMut(Option<(&Tier, u64)>, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let mut pos = 0usize;
        for s in segs {
            let range = pos..pos + s.len as usize;
            pos = range.end;
            let dev = match s.target {
                Target::Zeros => None,
                Target::Extent { tier, offset } => {
                    let t = self.tiers.get(tier).ok_or(Error::MissingTier {
                        volume: self.meta.name.clone(),
                        chunk: s.chunk,
                        tier,
                    })?;
                    Some((t, offset))
                }
            };
            f(dev, range)?;
        }
        Ok(())
    }

    /// Tiering policy of this volume.
    pub fn policy(&self) -> TieringPolicy {
        self.meta.tiering_policy
    }
}

#[cfg(test)]
mod tests;
