//! A volume's guest load as its queues see it, for the mover to yield to
//! (DESIGN decision 5): each queue worker counts its requests in flight,
//! completed, and their summed latency in a [`QueueLoad`] of its own (one
//! writer, relaxed atomics on a cache line of its own: no lock, no
//! allocation, no sharing between queues), and how many of them took
//! longer than a threshold the mover sets ([`GuestLoad::set_slow_above`]:
//! a tail signal, which a mean hides); [`GuestLoad`] keeps the queues of
//! the volume's connections, and [`GuestLoad::sample`] adds them up for
//! the mover, off the data path.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

/// One queue's counters.
#[derive(Debug)]
#[repr(align(64))]
pub struct QueueLoad {
    inflight: AtomicUsize,
    completed: AtomicU64,
    /// Summed latency of the completed requests, ns.
    busy_ns: AtomicU64,
    /// Completed requests that took longer than `slow_above_ns`.
    slow: AtomicU64,
    /// The volume's threshold (read per completion, written once per
    /// measurement window by the mover).
    slow_above_ns: Arc<AtomicU64>,
}

impl QueueLoad {
    /// A request starts.
    #[inline]
    pub fn start(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// A request started `latency` ago completes.
    #[inline]
    pub fn finish(&self, latency: Duration) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        let ns = latency.as_nanos() as u64;
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
        if ns > self.slow_above_ns.load(Ordering::Relaxed) {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests started and not completed.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
}

/// The sum of a volume's queues at one moment. `completed` and `busy_ns`
/// only grow (queues of ended connections stay counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSample {
    pub inflight: usize,
    pub completed: u64,
    pub busy_ns: u64,
    /// Completed requests slower than the threshold at their completion.
    pub slow: u64,
}

/// The queues of a volume's connections.
#[derive(Debug)]
pub struct GuestLoad {
    queues: Mutex<Queues>,
    slow_above_ns: Arc<AtomicU64>,
}

impl Default for GuestLoad {
    fn default() -> Self {
        Self {
            queues: Mutex::default(),
            slow_above_ns: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }
}

#[derive(Debug, Default)]
struct Queues {
    live: Vec<Arc<QueueLoad>>,
    /// Totals of the queues whose workers are gone.
    retired: LoadSample,
}

impl GuestLoad {
    /// A new queue worker's counters (called once per queue and
    /// connection, not per request).
    pub fn register(&self) -> Arc<QueueLoad> {
        let q = Arc::new(QueueLoad {
            inflight: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            slow_above_ns: Arc::clone(&self.slow_above_ns),
        });
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.live.push(Arc::clone(&q));
        q
    }

    /// Requests that complete after more than `ns` count as slow from now
    /// on (`u64::MAX`: none).
    pub fn set_slow_above(&self, ns: u64) {
        self.slow_above_ns.store(ns, Ordering::Relaxed);
    }

    /// The volume's queues added up now.
    pub fn sample(&self) -> LoadSample {
        let mut guard = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queues = &mut *guard;
        // A queue only this registry still holds has no worker left: keep
        // its totals and drop it.
        let retired = &mut queues.retired;
        queues.live.retain(|q| {
            if Arc::strong_count(q) > 1 {
                return true;
            }
            retired.completed += q.completed.load(Ordering::Relaxed);
            retired.busy_ns += q.busy_ns.load(Ordering::Relaxed);
            retired.slow += q.slow.load(Ordering::Relaxed);
            false
        });
        let mut s = LoadSample {
            inflight: 0,
            ..queues.retired
        };
        for q in &queues.live {
            s.inflight += q.inflight();
            s.completed += q.completed.load(Ordering::Relaxed);
            s.busy_ns += q.busy_ns.load(Ordering::Relaxed);
            s.slow += q.slow.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_add_up_queues_and_keep_those_of_ended_workers() {
        let load = GuestLoad::default();
        let a = load.register();
        let b = load.register();
        a.start();
        a.start();
        b.start();
        a.finish(Duration::from_micros(100));
        load.set_slow_above(200_000);
        b.finish(Duration::from_micros(300));
        assert_eq!(
            load.sample(),
            LoadSample {
                inflight: 1,
                completed: 2,
                busy_ns: 400_000,
                slow: 1,
            }
        );
        drop(b);
        let s = load.sample();
        assert_eq!(
            (s.inflight, s.completed, s.busy_ns, s.slow),
            (1, 2, 400_000, 1)
        );
        a.finish(Duration::from_micros(250));
        drop(a);
        assert_eq!(
            load.sample(),
            LoadSample {
                inflight: 0,
                completed: 3,
                busy_ns: 650_000,
                slow: 2,
            }
        );
    }
}
