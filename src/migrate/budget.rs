//! The daemon-wide migration budget (`daemon.migration_mibps`), shared
//! equally between the volumes migrating now: each volume's mover asks
//! for its share before every copy, so N busy volumes together copy at
//! the configured rate, not N times it, and a volume that stops
//! migrating leaves its share to the others within [`ACTIVE_WINDOW`].
//! Lock-free: one timestamp per volume.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// A volume that copied within this long counts as migrating.
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

/// Bandwidth for all migrations of a daemon.
#[derive(Debug)]
pub struct Budget {
    mibps: f64,
    start: Instant,
    /// Per volume slot: when it last copied (ns since `start`, + 1; 0 =
    /// never).
    last_copy: Box<[AtomicU64]>,
    /// Movers yield to their volume's guest (`daemon.migration_yield`).
    yields: bool,
}

impl Budget {
    /// `mibps` for `volumes` volumes together (0: unlimited).
    pub fn new(mibps: f64, volumes: usize) -> Self {
        Self {
            mibps,
            start: Instant::now(),
            last_copy: (0..volumes).map(|_| AtomicU64::new(0)).collect(),
            yields: true,
        }
    }

    /// Whether movers yield to their volume's guest
    /// ([`super::backoff`]); on unless turned off here.
    pub fn with_yield(mut self, yields: bool) -> Self {
        self.yields = yields;
        self
    }

    /// Whether movers yield to their volume's guest.
    pub fn yields(&self) -> bool {
        self.yields
    }

    /// The whole budget, MiB/s (0: unlimited).
    pub fn mibps(&self) -> f64 {
        self.mibps
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// Volume `slot` is about to copy: marks it migrating and returns its
    /// share now, MiB/s (0: unlimited).
    pub fn share(&self, slot: usize) -> f64 {
        if self.mibps == 0.0 {
            return 0.0;
        }
        let now = self.now_ns();
        if let Some(s) = self.last_copy.get(slot) {
            s.store(now, Relaxed);
        }
        let window = ACTIVE_WINDOW.as_nanos() as u64;
        let migrating = self
            .last_copy
            .iter()
            .filter(|s| {
                let t = s.load(Relaxed);
                t != 0 && now.saturating_sub(t) < window
            })
            .count()
            .max(1);
        self.mibps / migrating as f64
    }

    /// The share volume `slot` would get if it copied now, without marking
    /// it (for planning how much an epoch can move).
    pub fn expected_share(&self, slot: usize) -> f64 {
        if self.mibps == 0.0 {
            return 0.0;
        }
        let now = self.now_ns();
        let window = ACTIVE_WINDOW.as_nanos() as u64;
        let others = self
            .last_copy
            .iter()
            .enumerate()
            .filter(|&(i, s)| {
                let t = s.load(Relaxed);
                i != slot && t != 0 && now.saturating_sub(t) < window
            })
            .count();
        self.mibps / (others + 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_split_between_the_volumes_migrating_now() {
        let b = Budget::new(60.0, 3);
        assert_eq!(b.expected_share(0), 60.0);
        assert_eq!(b.share(0), 60.0, "alone");
        assert_eq!(b.share(1), 30.0, "two migrating");
        assert_eq!(b.expected_share(2), 20.0, "a third would get a third");
        assert_eq!(b.share(2), 20.0);
        assert_eq!(b.share(0), 20.0);
        // Volume 2 stops; after the window the others split it in two.
        std::thread::sleep(ACTIVE_WINDOW + Duration::from_millis(50));
        b.share(0);
        assert_eq!(b.share(1), 30.0);
        assert_eq!(Budget::new(0.0, 2).share(0), 0.0, "unlimited");
    }
}
