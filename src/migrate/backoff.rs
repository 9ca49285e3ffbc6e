//! Migration that yields to the guest (DESIGN decision 5): how much of its
//! share of the migration budget a volume's mover uses now.
//!
//! The mover measures the guest in windows of at least [`WINDOW`] (and,
//! while the guest is active, at least [`MIN_REQUESTS`] completions or
//! [`MAX_WINDOW`]) from the volume's queue counters
//! ([`crate::volume::load`]): the mean latency of the requests completed
//! in the window, the mean depth (their summed latency over the window's
//! length, by Little's law) and how many were *slow*: slower than the
//! baseline's mean latency plus [`LATENCY_TOLERANCE`].
//!
//! - A window in which the mover copied nothing measures the guest alone:
//!   it updates the *baseline* (a running mean of the three figures).
//! - A window with copies in it is compared with the baseline. Latency
//!   more than [`LATENCY_TOLERANCE`] above it, or depth more than
//!   [`DEPTH_TOLERANCE`] (and one request) above it, halves the rate at
//!   once.
//! - The tail needs more requests than a window holds (copies that delay
//!   one request in thirty hardly move a window's mean, yet they are the
//!   guest's p99): the copying windows' slow requests add up until
//!   [`TAIL_REQUESTS`] (or [`TAIL_MAX`]). A slow share more than
//!   [`SLOW_TOLERANCE`] above the baseline's (and at least three slow
//!   requests) halves the rate; otherwise the rate grows by [`STEP`] of
//!   the share. It never drops below [`FLOOR`], so migration always
//!   progresses.
//! - Halving and growth start from what the mover achieved
//!   ([`Backoff::note_achieved`]), not only from its limit: a mover held
//!   back by the device itself copies below its limit, and halving a limit
//!   it does not reach would change nothing.
//! - A window with no request at all (the guest idle) doubles the rate, up
//!   to the whole share.
//! - While the guest is busy and the mover keeps copying, the mover
//!   pauses for one window to measure the guest alone when it has no
//!   baseline and then every [`PROBE_EVERY`]. Until the first such window
//!   a busy guest gets the floor.

use std::time::{Duration, Instant};

use crate::volume::load::LoadSample;

/// Shortest measurement window.
pub const WINDOW: Duration = Duration::from_millis(25);
/// Longest window while waiting for [`MIN_REQUESTS`] completions.
pub const MAX_WINDOW: Duration = Duration::from_millis(250);
/// Completions a busy guest's window waits for (up to [`MAX_WINDOW`]).
pub const MIN_REQUESTS: u64 = 8;
/// The least share of its budget the mover keeps using.
pub const FLOOR: f64 = 0.25;
/// Guest latency this much above the baseline (relative) backs off, and
/// a request this much slower than the baseline's mean counts as slow.
pub const LATENCY_TOLERANCE: f64 = 0.10;
/// Guest depth this much above the baseline (relative, and at least one
/// request) backs off.
pub const DEPTH_TOLERANCE: f64 = 0.5;
/// Completions the tail is judged on.
pub const TAIL_REQUESTS: u64 = 200;
/// Longest wait for [`TAIL_REQUESTS`] completions.
pub const TAIL_MAX: Duration = Duration::from_secs(1);
/// Share of slow requests this much above the baseline's backs off.
pub const SLOW_TOLERANCE: f64 = 0.01;
/// Growth of the rate per tail judged within the tolerances.
pub const STEP: f64 = 0.0625;
/// How often a busy guest is measured without migration.
pub const PROBE_EVERY: Duration = Duration::from_secs(3);
/// Weight of a new quiet window in the baseline.
const BASE_WEIGHT: f64 = 0.3;
/// Weight of a new window in the achieved share.
const ACHIEVED_WEIGHT: f64 = 0.25;

/// The guest without migration.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Base {
    latency_ns: f64,
    depth: f64,
    /// Share of the requests that were slow.
    slow: f64,
}

/// The copying windows' requests since the tail was last judged.
#[derive(Debug, Clone, Copy)]
struct Tail {
    since: Instant,
    requests: u64,
    slow: u64,
}

impl Tail {
    /// None yet, counted from `now`.
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            requests: 0,
            slow: 0,
        }
    }
}

/// One mover's yield controller.
#[derive(Debug)]
pub struct Backoff {
    enabled: bool,
    share: f64,
    /// The open window.
    start: Instant,
    at_start: LoadSample,
    copied: bool,
    base: Option<Base>,
    tail: Tail,
    /// When the guest was last measured without migration.
    last_quiet: Instant,
    /// The last window had requests in it.
    guest_active: bool,
    /// Share of the budget the mover copied at lately (running mean).
    achieved: f64,
}

impl Backoff {
    /// `enabled` false: always the whole share.
    pub fn new(enabled: bool, now: Instant) -> Self {
        Self {
            enabled,
            share: 1.0,
            start: now,
            at_start: LoadSample::default(),
            copied: false,
            base: None,
            tail: Tail::new(now),
            last_quiet: now,
            guest_active: false,
            achieved: 1.0,
        }
    }

    /// The mover copied at `share` of its budget since the last window
    /// closed (call before [`Self::observe`]). A running mean: one window
    /// may hold no whole chunk copy.
    pub fn note_achieved(&mut self, share: f64) {
        self.achieved += ACHIEVED_WEIGHT * (share.clamp(0.0, 1.0) - self.achieved);
    }

    /// Share of the volume's migration budget to copy at now (1 = all).
    pub fn share(&self) -> f64 {
        if self.enabled {
            self.share
        } else {
            1.0
        }
    }

    /// Whether the open window is old enough to close (sample the load
    /// only then: sampling takes a lock).
    pub fn due(&self, now: Instant) -> bool {
        self.enabled && now.duration_since(self.start) >= WINDOW
    }

    /// The mover is about to copy (call [`Self::observe`] first when
    /// [`Self::due`]).
    pub fn copying(&mut self) {
        self.copied = true;
    }

    /// Whether the mover should pause for one window to measure the guest
    /// alone.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.enabled
            && self.guest_active
            && (self.base.is_none() || now.duration_since(self.last_quiet) >= PROBE_EVERY)
    }

    /// The latency (ns) above which a guest request counts as slow, for
    /// [`crate::volume::load::GuestLoad::set_slow_above`]: the baseline's
    /// mean plus [`LATENCY_TOLERANCE`] (none before a baseline).
    pub fn slow_above_ns(&self) -> u64 {
        match self.base {
            Some(b) if self.enabled => (b.latency_ns * (1.0 + LATENCY_TOLERANCE)) as u64,
            _ => u64::MAX,
        }
    }

    /// Starts a new window at `now` without judging the open one (before
    /// a probe: the open window has copies in it).
    pub fn restart(&mut self, s: LoadSample, now: Instant) {
        self.start = now;
        self.at_start = s;
        self.copied = false;
    }

    fn back_off(&mut self, now: Instant) {
        self.share = (self.share.min(self.achieved) * 0.5).max(FLOOR);
        self.tail = Tail::new(now);
    }

    /// Closes the open window if it is complete, given the load now.
    /// Returns whether it closed.
    pub fn observe(&mut self, s: LoadSample, now: Instant) -> bool {
        let dt = now.duration_since(self.start);
        if !self.enabled || dt < WINDOW {
            return false;
        }
        let n = s.completed.saturating_sub(self.at_start.completed);
        let idle = n == 0 && s.inflight == 0;
        if !idle && n < MIN_REQUESTS && dt < MAX_WINDOW {
            return false;
        }
        let copied = self.copied;
        let before = self.at_start;
        self.restart(s, now);
        self.guest_active = !idle;
        if idle {
            self.share = (self.share * 2.0).min(1.0);
            return true;
        }
        let busy = s.busy_ns.saturating_sub(before.busy_ns) as f64;
        let slow = s.slow.saturating_sub(before.slow);
        let dt_ns = dt.as_nanos().max(1) as f64;
        let seen = if n > 0 {
            Base {
                latency_ns: busy / n as f64,
                depth: busy / dt_ns,
                slow: slow as f64 / n as f64,
            }
        } else {
            // Requests in flight and none completed in the whole window:
            // they take at least that long.
            Base {
                latency_ns: dt_ns,
                depth: s.inflight as f64,
                slow: 1.0,
            }
        };
        if !copied {
            self.base = Some(match self.base {
                None => seen,
                Some(b) => Base {
                    latency_ns: b.latency_ns + BASE_WEIGHT * (seen.latency_ns - b.latency_ns),
                    depth: b.depth + BASE_WEIGHT * (seen.depth - b.depth),
                    slow: b.slow + BASE_WEIGHT * (seen.slow - b.slow),
                },
            });
            self.last_quiet = now;
            return true;
        }
        let Some(b) = self.base else {
            self.share = FLOOR;
            return true;
        };
        let slower = seen.latency_ns > b.latency_ns * (1.0 + LATENCY_TOLERANCE);
        let deeper = seen.depth > b.depth * (1.0 + DEPTH_TOLERANCE) + 1.0;
        if slower || deeper {
            self.back_off(now);
            return true;
        }
        self.tail.requests += n;
        self.tail.slow += slow;
        if self.tail.requests >= TAIL_REQUESTS || now.duration_since(self.tail.since) >= TAIL_MAX {
            let share = self.tail.slow as f64 / self.tail.requests.max(1) as f64;
            if self.tail.slow >= 3 && share > b.slow + SLOW_TOLERANCE {
                self.back_off(now);
            } else {
                // Beyond what the mover reaches, growth would only store up
                // a limit that the next halving could not bring down.
                self.share = (self.share + STEP).min(self.achieved + 2.0 * STEP).min(1.0);
                self.tail = Tail::new(now);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a backoff with a synthetic guest: each window of `WINDOW`
    /// completes `n` requests of `latency_us`.
    struct Guest {
        now: Instant,
        load: LoadSample,
    }

    impl Guest {
        fn new() -> Self {
            Self {
                now: Instant::now(),
                load: LoadSample::default(),
            }
        }

        /// One window passes; returns whether `b` closed it.
        fn window(&mut self, b: &mut Backoff, n: u64, latency_us: u64, copying: bool) -> bool {
            self.mixed(b, &[(n, latency_us)], copying)
        }

        /// A window of `n` requests of `latency_us` for each pair, counted
        /// slow as the queue workers count them.
        fn mixed(&mut self, b: &mut Backoff, requests: &[(u64, u64)], copying: bool) -> bool {
            if copying {
                b.copying();
            }
            self.now += WINDOW;
            let mut total = 0;
            for &(n, latency_us) in requests {
                total += n;
                self.load.completed += n;
                self.load.busy_ns += n * latency_us * 1000;
                if latency_us * 1000 > b.slow_above_ns() {
                    self.load.slow += n;
                }
            }
            self.load.inflight = usize::from(total > 0);
            b.observe(self.load, self.now)
        }
    }

    #[test]
    fn backs_off_while_the_guest_slows_down_and_recovers_when_it_does_not() {
        let mut g = Guest::new();
        let mut b = Backoff::new(true, g.now);
        // Busy guest, no baseline yet: the floor, and a probe is due.
        assert!(g.window(&mut b, 20, 100, true));
        assert_eq!(b.share(), FLOOR);
        assert!(b.probe_due(g.now));
        // The probe: a window without copies sets the baseline (100 µs).
        assert!(g.window(&mut b, 20, 100, false));
        assert!(!b.probe_due(g.now));
        // Copying without slowing the guest: the share grows to 1, a step
        // per TAIL_REQUESTS requests.
        for _ in 0..TAIL_REQUESTS / 20 {
            g.window(&mut b, 20, 105, true);
        }
        assert_eq!(b.share(), FLOOR + STEP);
        for _ in 0..TAIL_REQUESTS {
            g.window(&mut b, 20, 105, true);
        }
        assert_eq!(b.share(), 1.0);
        // The guest slows down by 30%: halved, down to the floor.
        g.window(&mut b, 20, 130, true);
        assert_eq!(b.share(), 0.5);
        for _ in 0..5 {
            g.window(&mut b, 20, 130, true);
        }
        assert_eq!(b.share(), FLOOR, "never below the floor");
        // The guest goes idle: doubled each window, back to the whole.
        g.window(&mut b, 0, 0, true);
        assert_eq!(b.share(), 0.5);
        g.window(&mut b, 0, 0, true);
        assert_eq!(b.share(), 1.0);
        // Copying with a busy guest: a new probe every PROBE_EVERY.
        let windows = (PROBE_EVERY.as_millis() / WINDOW.as_millis()) as usize;
        for _ in 0..windows {
            g.window(&mut b, 20, 100, true);
        }
        assert!(b.probe_due(g.now));
    }

    #[test]
    fn a_deeper_queue_backs_off_and_a_light_guest_waits_for_enough_requests() {
        let mut g = Guest::new();
        let mut b = Backoff::new(true, g.now);
        assert!(g.window(&mut b, 20, 1000, false), "baseline: depth 0.8");
        // Same latency, twice the requests: depth 1.6 is within 0.8 × 1.5
        // + 1; four times (3.2) is not.
        g.window(&mut b, 40, 1000, true);
        assert_eq!(b.share(), 1.0);
        g.window(&mut b, 80, 1000, true);
        assert_eq!(b.share(), 0.5);
        // Two completions a window: the window stays open until
        // MIN_REQUESTS, or MAX_WINDOW.
        let mut closed = 0;
        for _ in 0..(MAX_WINDOW.as_millis() / WINDOW.as_millis()) {
            closed += usize::from(g.window(&mut b, 2, 1000, true));
        }
        assert_eq!(closed, 2, "8 completions close the window, twice");
    }

    #[test]
    fn a_longer_tail_backs_off_though_the_mean_hardly_moves() {
        let mut g = Guest::new();
        let mut b = Backoff::new(true, g.now);
        assert!(g.window(&mut b, 20, 100, false), "baseline: 100 µs");
        assert_eq!(b.slow_above_ns(), 110_000);
        let windows = TAIL_REQUESTS / 20;
        // One slow request in TAIL_REQUESTS: within the tolerance.
        for _ in 1..windows {
            g.mixed(&mut b, &[(20, 100)], true);
        }
        g.mixed(&mut b, &[(19, 100), (1, 150)], true);
        assert_eq!(b.share(), 1.0);
        // One in twenty: each window's mean is within 10%, but the tail is
        // judged on TAIL_REQUESTS requests.
        for _ in 1..windows {
            g.mixed(&mut b, &[(19, 100), (1, 150)], true);
            assert_eq!(b.share(), 1.0);
        }
        g.mixed(&mut b, &[(19, 100), (1, 150)], true);
        assert_eq!(b.share(), 0.5);
    }

    #[test]
    fn halving_starts_from_what_the_mover_reached() {
        let mut g = Guest::new();
        let mut b = Backoff::new(true, g.now);
        assert!(g.window(&mut b, 20, 100, false), "baseline: 100 µs");
        // Limited to the whole share but held back to 40% by the device:
        // the guest slows down, and the rate drops to 20% (the floor),
        // not 50%.
        for _ in 0..40 {
            b.note_achieved(0.4);
        }
        g.window(&mut b, 20, 150, true);
        assert_eq!(b.share(), FLOOR);
        // Growth stays within two steps of what the mover reaches.
        for _ in 0..TAIL_REQUESTS {
            b.note_achieved(0.25);
            g.window(&mut b, 20, 100, true);
        }
        assert!(
            (b.share() - (0.25 + 2.0 * STEP)).abs() < 1e-6,
            "{}",
            b.share()
        );
    }

    #[test]
    fn turned_off_it_always_uses_the_whole_share() {
        let mut g = Guest::new();
        let mut b = Backoff::new(false, g.now);
        for _ in 0..4 {
            assert!(!g.window(&mut b, 20, 10_000, true));
        }
        assert_eq!(b.share(), 1.0);
        assert!(!b.probe_due(g.now) && !b.due(g.now));
    }
}
