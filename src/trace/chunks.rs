//! Dense chunk ids for replay and training.
//!
//! A trace addresses sparse regions of several devices; replay and training
//! work on dense ids `0..n` instead, assigned in address order (device,
//! then offset) so that neighbouring ids are neighbouring touched chunks.

use std::collections::HashMap;

use super::{Op, Request};

/// One chunk-sized piece of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Dense chunk id.
    pub chunk: u32,
    /// Bytes of the request inside this chunk.
    pub bytes: u32,
    pub write: bool,
    /// The request started where the previous request on its device ended
    /// (set on the request's first piece only).
    pub sequential: bool,
    /// First piece of its request.
    pub first: bool,
}

impl Access {
    /// Counts this access in a profiler counter block.
    #[inline]
    pub fn record(&self, counters: &crate::profile::ChunkCounters) {
        let c = self.chunk as u64;
        if self.write {
            counters.record_write(c, self.bytes as u64);
        } else {
            counters.record_read(c, self.bytes as u64);
        }
        if self.sequential {
            counters.record_sequential(c);
        }
    }
}

/// The chunks a list of requests touches, with dense address-ordered ids.
#[derive(Debug, Clone)]
pub struct ChunkSpace {
    chunk_size: u64,
    ids: HashMap<(u32, u64), u32>,
}

impl ChunkSpace {
    pub fn build(requests: &[Request], chunk_size: u64) -> Self {
        let mut keys = Vec::new();
        for r in requests {
            r.for_each_chunk(chunk_size, |c, _| keys.push((r.dev, c)));
        }
        keys.sort_unstable();
        keys.dedup();
        let ids = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, i as u32))
            .collect();
        Self { chunk_size, ids }
    }

    /// Distinct chunks touched: the footprint in chunks.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The access stream of `requests` (which must be those the space was
    /// built from, or a subset): one [`Access`] per chunk each request
    /// touches, in trace order.
    pub fn accesses(&self, requests: &[Request]) -> Vec<Access> {
        let mut out = Vec::with_capacity(requests.len() * 2);
        let mut last_end: HashMap<u32, u64> = HashMap::new();
        for r in requests {
            let seq = last_end.insert(r.dev, r.offset.saturating_add(r.len)) == Some(r.offset);
            let mut first = true;
            r.for_each_chunk(self.chunk_size, |c, b| {
                out.push(Access {
                    chunk: self.ids[&(r.dev, c)],
                    bytes: b as u32,
                    write: r.op == Op::Write,
                    sequential: seq && first,
                    first,
                });
                first = false;
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dev: u32, offset: u64, len: u64) -> Request {
        Request {
            ts_s: 0.0,
            dev,
            op: Op::Read,
            offset,
            len,
        }
    }

    #[test]
    fn ids_follow_address_order_and_streams_split_requests() {
        let reqs = [
            req(1, 0, 10),
            req(0, 1 << 20, 10),
            req(0, 0, 70_000),
            req(0, 70_000, 10),
        ];
        let s = ChunkSpace::build(&reqs, 65536);
        assert_eq!(s.len(), 4); // dev0: chunks 0, 1, 16; dev1: chunk 0
        let a = s.accesses(&reqs);
        let ids: Vec<u32> = a.iter().map(|x| x.chunk).collect();
        assert_eq!(ids, vec![3, 2, 0, 1, 1]);
        assert!(a[4].sequential && a[4].first);
        assert!(!a[3].first && !a[2].sequential);
    }
}
