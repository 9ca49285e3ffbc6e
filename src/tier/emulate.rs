//! Emulated tier speed (DESIGN decision 7): an added latency per request and
//! a bandwidth cap, applied to completions, so one disk can act as NVMe, SSD
//! and HDD. Production configs leave it off.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::config::Emulate;

#[derive(Debug)]
pub struct Emulator {
    read_latency: Duration,
    write_latency: Duration,
    /// Nanoseconds per byte of the bandwidth cap (0 = none).
    ns_per_byte: f64,
    epoch: Instant,
    /// When (ns since `epoch`) the emulated device is free again.
    busy_until_ns: AtomicU64,
}

impl Emulator {
    pub fn new(e: &Emulate) -> Self {
        Self {
            read_latency: Duration::from_micros(e.read_latency_us),
            write_latency: Duration::from_micros(e.write_latency_us),
            ns_per_byte: if e.bandwidth_mibps == 0 {
                0.0
            } else {
                1e9 / (e.bandwidth_mibps as f64 * 1024.0 * 1024.0)
            },
            epoch: Instant::now(),
            busy_until_ns: AtomicU64::new(0),
        }
    }

    /// How long to hold back the completion of a transfer of `bytes` that
    /// the real device finished `elapsed` after submission.
    pub fn delay(&self, write: bool, bytes: u64, elapsed: Duration) -> Duration {
        let lat = if write {
            self.write_latency
        } else {
            self.read_latency
        };
        lat.saturating_sub(elapsed).max(self.occupy(bytes))
    }

    /// Books a transfer of `bytes` on the emulated device's bandwidth and
    /// returns how long from now until it is done (zero without a cap).
    /// A shared "device busy until" clock: transfers queue behind each
    /// other like on a real disk with the configured bandwidth, the
    /// guest's requests and the mover's copies alike.
    pub fn occupy(&self, bytes: u64) -> Duration {
        if self.ns_per_byte == 0.0 {
            return Duration::ZERO;
        }
        let cost = (bytes as f64 * self.ns_per_byte) as u64;
        let now = self.epoch.elapsed().as_nanos() as u64;
        let prev = self
            .busy_until_ns
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.max(now) + cost)
            })
            .unwrap_or(now);
        Duration::from_nanos(prev.max(now) + cost - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_is_topped_up_not_added_twice() {
        let e = Emulator::new(&Emulate {
            read_latency_us: 1000,
            write_latency_us: 0,
            bandwidth_mibps: 0,
        });
        assert_eq!(
            e.delay(false, 4096, Duration::from_micros(300)),
            Duration::from_micros(700)
        );
        assert_eq!(e.delay(true, 4096, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn bandwidth_cap_queues_transfers() {
        let e = Emulator::new(&Emulate {
            read_latency_us: 0,
            write_latency_us: 0,
            bandwidth_mibps: 1,
        });
        let a = e.delay(false, 1 << 20, Duration::ZERO);
        let b = e.delay(false, 1 << 20, Duration::ZERO);
        assert!(a >= Duration::from_millis(900), "{a:?}");
        assert!(b >= a + Duration::from_millis(900), "{b:?} after {a:?}");
    }
}
