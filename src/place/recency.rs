//! An intrusive recency (LRU) list over chunk indexes: O(1) unlink and
//! move-to-front, walkable from the least recently used end. Shared by the
//! fast-tier manager and the replay's LRU policy.

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct RecencyList {
    prev: Vec<u32>,
    next: Vec<u32>,
    /// Most recently used, or NIL.
    head: u32,
    /// Least recently used, or NIL.
    tail: u32,
}

impl RecencyList {
    /// An empty list over chunks `0..n`.
    pub fn new(n: usize) -> Self {
        Self {
            prev: vec![NIL; n],
            next: vec![NIL; n],
            head: NIL,
            tail: NIL,
        }
    }

    /// Removes `c`, which must be in the list.
    pub fn unlink(&mut self, c: u32) {
        let (p, n) = (self.prev[c as usize], self.next[c as usize]);
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.prev[c as usize] = NIL;
        self.next[c as usize] = NIL;
    }

    /// Inserts `c`, which must not be in the list, as most recently used.
    pub fn push_front(&mut self, c: u32) {
        self.prev[c as usize] = NIL;
        self.next[c as usize] = self.head;
        if self.head != NIL {
            self.prev[self.head as usize] = c;
        }
        self.head = c;
        if self.tail == NIL {
            self.tail = c;
        }
    }

    /// Makes `c`, which must be in the list, the most recently used.
    pub fn touch(&mut self, c: u32) {
        if self.head != c {
            self.unlink(c);
            self.push_front(c);
        }
    }

    /// The least recently used chunk.
    pub fn lru(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// Chunks from the least recently used towards the most recent.
    pub fn iter_lru(&self) -> impl Iterator<Item = u32> + '_ {
        let mut c = self.tail;
        std::iter::from_fn(move || {
            (c != NIL).then(|| {
                let cur = c;
                c = self.prev[c as usize];
                cur
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_recency() {
        let mut l = RecencyList::new(8);
        for c in [1, 2, 3] {
            l.push_front(c);
        }
        assert_eq!(l.iter_lru().collect::<Vec<_>>(), vec![1, 2, 3]);
        l.touch(1);
        assert_eq!(l.iter_lru().collect::<Vec<_>>(), vec![2, 3, 1]);
        l.touch(1);
        assert_eq!(l.iter_lru().collect::<Vec<_>>(), vec![2, 3, 1]);
        l.unlink(3);
        assert_eq!(l.iter_lru().collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(l.lru(), Some(2));
        l.unlink(2);
        l.unlink(1);
        assert_eq!(l.lru(), None);
    }
}
