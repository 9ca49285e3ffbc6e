//! Sub-chunk write tracking for chunks being migrated (shadow clones): a
//! few slots, each naming a chunk and holding a 64-bit map of which 1/64th
//! parts of it were written since the mover last looked. Writers touch
//! this only when the chunk's map word says MIGRATING.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Chunks that can be migrated at once per volume.
pub const SLOTS: usize = 8;
/// Parts a chunk is divided into for dirty tracking.
pub const PARTS: u64 = 64;
const FREE: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    chunk: AtomicU32,
    dirty: AtomicU64,
}

#[derive(Debug)]
pub struct DirtyTracker {
    slots: [Slot; SLOTS],
}

impl Default for DirtyTracker {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Slot {
                chunk: AtomicU32::new(FREE),
                dirty: AtomicU64::new(0),
            }),
        }
    }
}

/// Bits of the parts that [within, within+len) of a chunk touches.
pub fn part_bits(within: u64, len: u64, chunk_size: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let part = chunk_size / PARTS;
    let first = within / part;
    let last = ((within + len - 1) / part).min(PARTS - 1);
    let n = last - first + 1;
    let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    mask << first
}

impl DirtyTracker {
    /// Starts tracking `chunk`; returns its slot, or None if all are busy.
    pub fn register(&self, chunk: u32) -> Option<usize> {
        self.slots.iter().position(|s| {
            s.dirty.store(0, Ordering::Relaxed);
            s.chunk
                .compare_exchange(FREE, chunk, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    pub fn unregister(&self, slot: usize) {
        self.slots[slot].chunk.store(FREE, Ordering::Release);
    }

    /// Records a completed write to a migrating chunk.
    pub fn mark(&self, chunk: u32, bits: u64) {
        for s in &self.slots {
            if s.chunk.load(Ordering::Acquire) == chunk {
                s.dirty.fetch_or(bits, Ordering::AcqRel);
                return;
            }
        }
    }

    /// Takes (and clears) the parts written since the last call.
    pub fn take(&self, slot: usize) -> u64 {
        self.slots[slot].dirty.swap(0, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_bits_cover_the_written_range() {
        let cs = 64 * 1024; // parts of 1 KiB
        assert_eq!(part_bits(0, 1024, cs), 1);
        assert_eq!(part_bits(1000, 100, cs), 0b11);
        assert_eq!(part_bits(0, cs, cs), u64::MAX);
        assert_eq!(part_bits(cs - 1, 1, cs), 1 << 63);
        assert_eq!(part_bits(5, 0, cs), 0);
    }

    #[test]
    fn marks_reach_only_the_registered_chunk() {
        let t = DirtyTracker::default();
        let s = t.register(7).unwrap();
        t.mark(7, 0b101);
        t.mark(8, 0b010);
        assert_eq!(t.take(s), 0b101);
        assert_eq!(t.take(s), 0);
        t.unregister(s);
        t.mark(7, 1);
        let s2 = t.register(9).unwrap();
        assert_eq!(t.take(s2), 0, "a reused slot starts clean");
    }
}
