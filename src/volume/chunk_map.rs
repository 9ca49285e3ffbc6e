//! The per-volume chunk map: one atomic word per chunk, so the data path
//! looks a chunk up and pins it with a single compare-and-swap, without
//! locks (DESIGN decision 1).
//!
//! Word layout:
//! ```text
//!  63            24 23  20 19   18   17   16 15        0
//! | extent unit    | tier |  - |MIG |HOLD|ALLOC| pins   |
//! ```
//! `pins` counts in-flight I/Os on the chunk: an extent is never freed or
//! switched while pinned, so a stale mapping can never redirect I/O into
//! another chunk's (or volume's) data. `HOLD` briefly stops new writes while
//! a migration switches the map.

use std::sync::atomic::{AtomicU64, Ordering};

const PINS_MASK: u64 = 0xffff;
const ALLOCATED: u64 = 1 << 16;
const HOLD: u64 = 1 << 17;
const MIGRATING: u64 = 1 << 18;
const TIER_SHIFT: u32 = 20;
const TIER_MASK: u64 = 0xf;
const UNIT_SHIFT: u32 = 24;
/// Largest tier id the map can encode.
pub const MAX_TIER_ID: u8 = TIER_MASK as u8;

/// Where an allocated chunk lives: tier and first 64 KiB unit of its extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub tier: u8,
    pub unit: u64,
}

impl Mapping {
    /// The stored form (no pins, no transient flags); never 0.
    pub fn to_persistent(self) -> u64 {
        ALLOCATED | ((self.tier as u64) << TIER_SHIFT) | (self.unit << UNIT_SHIFT)
    }

    pub fn from_persistent(word: u64) -> Option<Self> {
        (word & ALLOCATED != 0).then(|| decode(word))
    }
}

fn decode(word: u64) -> Mapping {
    Mapping {
        tier: ((word >> TIER_SHIFT) & TIER_MASK) as u8,
        unit: word >> UNIT_SHIFT,
    }
}

/// State of a chunk, as reported in `BlockMetadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkState {
    Unallocated,
    Allocated,
    Migrating,
}

/// Result of trying to pin a chunk for a write.
#[derive(Debug, PartialEq, Eq)]
pub enum WritePin {
    /// Pinned at this mapping.
    Mapped(Mapping),
    /// No extent yet: the caller allocates one and calls `install`.
    Unallocated,
}

#[derive(Debug)]
pub struct ChunkMap {
    words: Vec<AtomicU64>,
}

impl ChunkMap {
    pub fn new(chunks: usize) -> Self {
        Self {
            words: (0..chunks).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Sets a chunk's mapping while loading (no I/O is running yet).
    pub fn load(&self, chunk: u32, m: Mapping) {
        self.words[chunk as usize].store(m.to_persistent(), Ordering::Release);
    }

    pub fn get(&self, chunk: u32) -> Option<Mapping> {
        Mapping::from_persistent(self.words[chunk as usize].load(Ordering::Acquire))
    }

    pub fn state(&self, chunk: u32) -> ChunkState {
        let w = self.words[chunk as usize].load(Ordering::Acquire);
        if w & ALLOCATED == 0 {
            ChunkState::Unallocated
        } else if w & (MIGRATING | HOLD) != 0 {
            ChunkState::Migrating
        } else {
            ChunkState::Allocated
        }
    }

    pub fn pins(&self, chunk: u32) -> u64 {
        self.words[chunk as usize].load(Ordering::Acquire) & PINS_MASK
    }

    /// Pins an allocated chunk: one CAS adding a pin, after waiting out a
    /// migration's brief hold (so no I/O can be in flight on an extent that
    /// is being switched away). `None` if the chunk is unallocated.
    fn pin(&self, chunk: u32) -> Option<Mapping> {
        let w = &self.words[chunk as usize];
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & HOLD != 0 {
                std::hint::spin_loop();
                std::thread::yield_now();
                cur = w.load(Ordering::Acquire);
                continue;
            }
            if cur & ALLOCATED == 0 {
                return None;
            }
            debug_assert!(cur & PINS_MASK < PINS_MASK);
            match w.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(decode(cur)),
                Err(now) => cur = now,
            }
        }
    }

    /// Pins an allocated chunk for a read; `None` if unallocated (the read
    /// returns zeros and needs no pin).
    pub fn pin_read(&self, chunk: u32) -> Option<Mapping> {
        self.pin(chunk)
    }

    /// Pins a chunk for a write.
    pub fn pin_write(&self, chunk: u32) -> WritePin {
        match self.pin(chunk) {
            Some(m) => WritePin::Mapped(m),
            None => WritePin::Unallocated,
        }
    }

    /// Publishes a freshly allocated extent for an unallocated chunk and pins
    /// it. If another writer won the race, its mapping is pinned and
    /// returned as `Err`, and the caller frees its own extent.
    pub fn install(&self, chunk: u32, m: Mapping) -> Result<Mapping, Mapping> {
        let w = &self.words[chunk as usize];
        let new = m.to_persistent() | 1;
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & ALLOCATED != 0 {
                // Someone else installed first: pin theirs (like pin_write).
                match self.pin_write(chunk) {
                    WritePin::Mapped(theirs) => return Err(theirs),
                    WritePin::Unallocated => {
                        cur = w.load(Ordering::Acquire);
                        continue;
                    }
                }
            }
            // Unallocated words carry no pins (reads of holes do not pin).
            match w.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(m),
                Err(now) => cur = now,
            }
        }
    }

    pub fn unpin(&self, chunk: u32) {
        let prev = self.words[chunk as usize].fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev & PINS_MASK > 0, "unpin of unpinned chunk {chunk}");
    }

    /// Unmaps an allocated, unpinned chunk (discard); returns the old
    /// mapping. `None` if it was unallocated or is in use right now.
    pub fn try_unmap(&self, chunk: u32) -> Option<Mapping> {
        let w = &self.words[chunk as usize];
        let cur = w.load(Ordering::Acquire);
        if cur & ALLOCATED == 0 || cur & (PINS_MASK | HOLD | MIGRATING) != 0 {
            return None;
        }
        w.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(decode)
    }

    /// Starts a migration of an allocated chunk: sets MIGRATING so discards
    /// leave it alone. Returns its mapping.
    pub fn begin_migration(&self, chunk: u32) -> Option<Mapping> {
        let w = &self.words[chunk as usize];
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur & ALLOCATED == 0 || cur & (MIGRATING | HOLD) != 0 {
                return None;
            }
            match w.compare_exchange_weak(cur, cur | MIGRATING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(decode(cur)),
                Err(now) => cur = now,
            }
        }
    }

    /// Holds new writes to a migrating chunk. Returns true once the chunk is
    /// held with no I/O in flight; false (hold released) if I/O is in flight.
    pub fn try_hold_idle(&self, chunk: u32) -> bool {
        let w = &self.words[chunk as usize];
        let prev = w.fetch_or(HOLD, Ordering::AcqRel);
        if prev & PINS_MASK == 0 {
            return true;
        }
        w.fetch_and(!HOLD, Ordering::AcqRel);
        false
    }

    /// Ends a migration: switches to `to` (if given) and releases the hold.
    pub fn end_migration(&self, chunk: u32, to: Option<Mapping>) {
        let w = &self.words[chunk as usize];
        let mut cur = w.load(Ordering::Acquire);
        loop {
            let next = match to {
                Some(m) => m.to_persistent() | (cur & PINS_MASK),
                None => cur & !(HOLD | MIGRATING),
            };
            match w.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Mapping = Mapping {
        tier: 2,
        unit: 12345,
    };

    #[test]
    fn persistent_form_round_trips() {
        let w = M.to_persistent();
        assert_ne!(w, 0);
        assert_eq!(Mapping::from_persistent(w), Some(M));
        assert_eq!(Mapping::from_persistent(0), None);
    }

    #[test]
    fn read_of_hole_takes_no_pin() {
        let m = ChunkMap::new(4);
        assert_eq!(m.pin_read(1), None);
        assert_eq!(m.pins(1), 0);
    }

    #[test]
    fn install_pins_and_second_installer_gets_winner() {
        let m = ChunkMap::new(4);
        assert_eq!(m.pin_write(0), WritePin::Unallocated);
        assert_eq!(m.install(0, M), Ok(M));
        let other = Mapping { tier: 0, unit: 7 };
        assert_eq!(m.install(0, other), Err(M));
        assert_eq!(m.pins(0), 2);
        assert_eq!(m.state(0), ChunkState::Allocated);
    }

    #[test]
    fn pinned_chunk_cannot_be_unmapped() {
        let m = ChunkMap::new(1);
        m.load(0, M);
        assert_eq!(m.pin_read(0), Some(M));
        assert_eq!(m.try_unmap(0), None);
        m.unpin(0);
        assert_eq!(m.try_unmap(0), Some(M));
        assert_eq!(m.state(0), ChunkState::Unallocated);
    }

    #[test]
    fn migration_switches_mapping_and_keeps_pins() {
        let m = ChunkMap::new(1);
        m.load(0, M);
        assert_eq!(m.begin_migration(0), Some(M));
        assert_eq!(m.state(0), ChunkState::Migrating);
        assert_eq!(m.try_unmap(0), None, "discard leaves a migrating chunk");
        assert_eq!(m.pin_read(0), Some(M));
        assert!(!m.try_hold_idle(0), "in-flight read blocks the switch");
        m.unpin(0);
        assert!(m.try_hold_idle(0));
        let to = Mapping { tier: 0, unit: 3 };
        m.end_migration(0, Some(to));
        assert_eq!(m.pin_write(0), WritePin::Mapped(to));
        assert_eq!(m.state(0), ChunkState::Allocated);
    }
}
