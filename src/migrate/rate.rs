//! Migration bandwidth limit: a pacing clock that sleeps the mover so its
//! copies average at most the configured rate.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    ns_per_byte: f64,
    next: Instant,
    /// Bytes acquired so far.
    acquired: u64,
}

impl RateLimiter {
    /// `mib_per_sec` = 0 means unlimited.
    pub fn new(mib_per_sec: f64) -> Self {
        Self {
            ns_per_byte: if mib_per_sec > 0.0 {
                1e9 / (mib_per_sec * 1024.0 * 1024.0)
            } else {
                0.0
            },
            next: Instant::now(),
            acquired: 0,
        }
    }

    /// Bytes acquired since the limiter was made.
    pub fn acquired(&self) -> u64 {
        self.acquired
    }

    /// Changes the rate from now on (`mib_per_sec` = 0: unlimited).
    pub fn set_rate(&mut self, mib_per_sec: f64) {
        self.ns_per_byte = Self::new(mib_per_sec).ns_per_byte;
    }

    /// Waits until `bytes` more may be copied.
    pub fn acquire(&mut self, bytes: u64) {
        self.acquired += bytes;
        if self.ns_per_byte == 0.0 {
            return;
        }
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else {
            // Idle time is not banked beyond a short burst.
            self.next = self.next.max(now - Duration::from_millis(10));
        }
        self.next += Duration::from_nanos((bytes as f64 * self.ns_per_byte) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_paces_copies() {
        let mut l = RateLimiter::new(10.0); // 10 MiB/s
        let t = Instant::now();
        for _ in 0..4 {
            l.acquire(1 << 20);
        }
        // 4 MiB at 10 MiB/s cannot finish before ~0.3 s (first MiB is free).
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn unlimited_never_sleeps() {
        let mut l = RateLimiter::new(0.0);
        let t = Instant::now();
        for _ in 0..1000 {
            l.acquire(1 << 30);
        }
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
