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
    ///
    /// Must be called before writers can see the chunk MIGRATING (the
    /// mover sets that in the chunk map after this returns).
    pub fn register(&self, chunk: u32) -> Option<usize> {
        let slot = self.slots.iter().position(|s| {
            s.chunk
                .compare_exchange(FREE, chunk, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        // Only the slot claimed starts clean; the others belong to running
        // migrations and keep their bits. Bits this one still holds are
        // from its previous chunk (an aborted migration, or a writer that
        // saw that chunk just before it was unregistered). The clear comes
        // after the claim and before the caller publishes MIGRATING
        // (begin_migration's AcqRel CAS); a writer marks `chunk` only after
        // seeing MIGRATING (acquire load in release_written), so this store
        // happens before that mark's fetch_or and cannot wipe its bits. A
        // late mark for the previous chunk landing after the clear only
        // adds bits: one more copy of those parts, never a lost write.
        self.slots[slot].dirty.store(0, Ordering::Release);
        Some(slot)
    }

    pub fn unregister(&self, slot: usize) {
        self.slots[slot].chunk.store(FREE, Ordering::Release);
    }

    /// Records a completed write to a migrating chunk, in every slot that
    /// names it: a second registration of a chunk (a migration attempt that
    /// begin_migration will turn away) may hold a lower slot for a moment,
    /// and must not divert the marks of the migration that is running.
    pub fn mark(&self, chunk: u32, bits: u64) {
        for s in &self.slots {
            if s.chunk.load(Ordering::Acquire) == chunk {
                s.dirty.fetch_or(bits, Ordering::AcqRel);
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

    #[test]
    fn registering_another_chunk_keeps_running_migrations_marks() {
        let t = DirtyTracker::default();
        let a = t.register(3).unwrap();
        t.mark(3, 0b1001);
        // A second migration starts while the first is copying: its slot
        // search passes the first slot, which must keep its bits.
        let b = t.register(4).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.take(a), 0b1001, "write to chunk 3 lost");
        assert_eq!(t.take(b), 0);
        // A freed slot is reused clean, whatever its last chunk left there
        // (an aborted migration), and still without touching the others.
        t.mark(3, 0b100);
        t.mark(4, 0b10);
        t.unregister(a);
        let c = t.register(5).unwrap();
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(t.take(c), 0, "a reused slot starts clean");
        assert_eq!(t.take(b), 0b10, "write to chunk 4 lost");
    }

    #[test]
    fn a_second_registration_of_a_chunk_does_not_divert_its_marks() {
        // Chunk 3 migrates in slot 1; a second attempt to migrate it
        // registers (slot 0, freed meanwhile) before begin_migration tells
        // it the chunk is busy. Writes in between must still reach slot 1.
        let t = DirtyTracker::default();
        let first = t.register(1).unwrap();
        let running = t.register(3).unwrap();
        t.unregister(first);
        let again = t.register(3).unwrap();
        assert!(again < running);
        t.mark(3, 0b110);
        t.unregister(again);
        assert_eq!(t.take(running), 0b110, "write to chunk 3 lost");
    }
}
