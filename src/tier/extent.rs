//! Extent allocator of one tier: a bitmap of 64 KiB units. A chunk of size
//! S takes S / 64 KiB contiguous units aligned to their own size, so chunks
//! of any power-of-two size share one device without fragmentation games.

/// Allocation granularity: the smallest chunk size.
pub const UNIT_BYTES: u64 = 64 * 1024;
const WORD_BITS: u64 = 64;

/// Free/used bitmap plus a "may hold old data" bitmap, so extents handed out
/// fresh from a new file are not zeroed needlessly.
#[derive(Debug)]
pub struct ExtentAllocator {
    units: u64,
    used: Vec<u64>,
    dirty: Vec<u64>,
    used_units: u64,
    cursor: u64,
}

impl ExtentAllocator {
    /// An allocator over `units` units, all free; `dirty` says whether free
    /// units may hold stale bytes.
    pub fn new(units: u64, dirty: bool) -> Self {
        let words = units.div_ceil(WORD_BITS) as usize;
        let fill = if dirty { u64::MAX } else { 0 };
        Self {
            units,
            used: vec![0; words],
            dirty: vec![fill; words],
            used_units: 0,
            cursor: 0,
        }
    }

    pub fn total_units(&self) -> u64 {
        self.units
    }

    pub fn used_units(&self) -> u64 {
        self.used_units
    }

    pub fn free_units(&self) -> u64 {
        self.units - self.used_units
    }

    fn bit(map: &[u64], u: u64) -> bool {
        map[(u / WORD_BITS) as usize] & (1 << (u % WORD_BITS)) != 0
    }

    fn set(map: &mut [u64], u: u64, v: bool) {
        let w = &mut map[(u / WORD_BITS) as usize];
        if v {
            *w |= 1 << (u % WORD_BITS);
        } else {
            *w &= !(1 << (u % WORD_BITS));
        }
    }

    fn range_free(&self, start: u64, n: u64) -> bool {
        (start..start + n).all(|u| !Self::bit(&self.used, u))
    }

    /// Marks `n` units at `start` as used (restart: rebuilding from maps).
    /// Fails if any of them is already used or out of range.
    pub fn claim(&mut self, start: u64, n: u64) -> Result<(), String> {
        if start.checked_add(n).is_none_or(|e| e > self.units) {
            return Err(format!(
                "extent at unit {start} (+{n}) lies beyond the tier's {} units",
                self.units
            ));
        }
        if !self.range_free(start, n) {
            return Err(format!("extent at unit {start} (+{n}) is referenced twice"));
        }
        for u in start..start + n {
            Self::set(&mut self.used, u, true);
        }
        self.used_units += n;
        Ok(())
    }

    /// Allocates `n` (a power of two) contiguous units aligned to `n`.
    /// Returns the first unit and whether the range must be zeroed first.
    pub fn allocate(&mut self, n: u64) -> Option<(u64, bool)> {
        debug_assert!(n.is_power_of_two());
        if n > self.free_units() || n > self.units {
            return None;
        }
        let slots = self.units / n;
        let first = (self.cursor / n) % slots.max(1);
        for i in 0..slots {
            let slot = (first + i) % slots;
            let start = slot * n;
            if self.range_free(start, n) {
                let mut dirty = false;
                for u in start..start + n {
                    Self::set(&mut self.used, u, true);
                    dirty |= Self::bit(&self.dirty, u);
                    Self::set(&mut self.dirty, u, false);
                }
                self.used_units += n;
                self.cursor = start + n;
                return Some((start, dirty));
            }
        }
        None
    }

    /// Returns `n` units at `start` to the pool; they may hold old data.
    pub fn free(&mut self, start: u64, n: u64) {
        for u in start..(start + n).min(self.units) {
            if Self::bit(&self.used, u) {
                Self::set(&mut self.used, u, false);
                self.used_units -= 1;
            }
            Self::set(&mut self.dirty, u, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_disjoint() {
        let mut a = ExtentAllocator::new(64, false);
        let (x, dirty) = a.allocate(16).unwrap();
        assert_eq!(x % 16, 0);
        assert!(!dirty);
        let (y, _) = a.allocate(1).unwrap();
        let (z, _) = a.allocate(16).unwrap();
        assert_eq!(z % 16, 0);
        assert!(y < x || y >= x + 16);
        assert!(z + 16 <= x || z >= x + 16);
        assert_eq!(a.used_units(), 33);
    }

    #[test]
    fn full_tier_refuses_allocation() {
        let mut a = ExtentAllocator::new(32, false);
        assert!(a.allocate(16).is_some());
        assert!(a.allocate(16).is_some());
        assert!(a.allocate(1).is_none());
        assert_eq!(a.free_units(), 0);
    }

    #[test]
    fn freed_extent_is_reused_and_reported_dirty() {
        let mut a = ExtentAllocator::new(16, false);
        let (x, _) = a.allocate(16).unwrap();
        a.free(x, 16);
        let (y, dirty) = a.allocate(16).unwrap();
        assert_eq!(x, y);
        assert!(dirty, "a reused extent must be zeroed before use");
    }

    #[test]
    fn claim_rejects_double_reference_and_out_of_range() {
        let mut a = ExtentAllocator::new(16, true);
        a.claim(0, 4).unwrap();
        assert!(a.claim(2, 4).unwrap_err().contains("twice"));
        assert!(a.claim(14, 4).unwrap_err().contains("beyond"));
        assert_eq!(a.used_units(), 4);
    }
}
