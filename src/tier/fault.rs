//! Injected tier faults, for tests only (like SPDK's error bdev): a tier
//! configured with `fault` fails every Nth read, write or sync with EIO, or
//! transfers only half of it (a short read or write). Production configs
//! leave it out; the daemon logs a warning at start when one is set.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Fault, FaultKind};

/// The kind of tier operation a fault may hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Sync,
}

#[derive(Debug)]
pub struct FaultInjector {
    cfg: Fault,
    /// Matching operations seen so far.
    seen: AtomicU64,
}

impl FaultInjector {
    pub fn new(cfg: &Fault) -> Self {
        Self {
            cfg: cfg.clone(),
            seen: AtomicU64::new(0),
        }
    }

    /// Whether this operation fails, and how.
    pub fn hit(&self, op: Op) -> Option<FaultKind> {
        let applies = match op {
            Op::Read => self.cfg.reads,
            Op::Write => self.cfg.writes,
            Op::Sync => self.cfg.syncs,
        };
        if !applies {
            return None;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        // Syncs move no data: a "short" sync is a failed one.
        let kind = match (op, self.cfg.kind) {
            (Op::Sync, _) => FaultKind::Eio,
            (_, k) => k,
        };
        n.is_multiple_of(self.cfg.every.max(1)).then_some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_matching_operation_fails() {
        let f = FaultInjector::new(&Fault {
            reads: true,
            writes: false,
            syncs: true,
            kind: FaultKind::Short,
            every: 3,
        });
        let reads: Vec<_> = (0..6).map(|_| f.hit(Op::Read)).collect();
        assert_eq!(
            reads,
            [
                None,
                None,
                Some(FaultKind::Short),
                None,
                None,
                Some(FaultKind::Short)
            ]
        );
        assert_eq!(f.hit(Op::Write), None);
        assert_eq!(f.hit(Op::Sync), None);
        assert_eq!(f.hit(Op::Sync), None);
        assert_eq!(f.hit(Op::Sync), Some(FaultKind::Eio));
    }
}
