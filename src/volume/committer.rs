//! The committer: one daemon-wide thread that makes chunk-map changes
//! durable for FLUSH requests, so a queue thread never waits on a store
//! commit (DESIGN decision 1). A queue thread hands over its synced FLUSH
//! through a bounded lock-free queue and goes on serving; the committer
//! commits every FLUSH waiting, of all volumes, in one store transaction
//! (group commit: one fsync for the batch, each volume up to its latest
//! FLUSH) and answers through the queue thread's own lock-free reply queue
//! and completion eventfd. No FLUSH completes before the changes made
//! before it are durable: `commit_group` holds each volume's commit lock,
//! as `Volume::commit` does, so that order holds whoever commits.

use std::{
    sync::{Arc, OnceLock},
    thread::{self, Thread},
};

use crossbeam_queue::ArrayQueue;
use log::warn;
use vmm_sys_util::eventfd::EventFd;

use super::{commit_group, FlushTicket, Volume};

/// Jobs waiting for the committer; a full inbox makes the caller commit
/// itself (it cannot be full with fewer in-flight FLUSHes than this).
const INBOX: usize = 4096;

/// Where the committer answers one queue thread: (tag, committed) pairs,
/// announced on the thread's completion eventfd.
#[derive(Debug)]
pub struct Replies {
    done: ArrayQueue<(u16, bool)>,
    notify: EventFd,
}

impl Replies {
    /// Room for `capacity` answers (the queue's slot count: a slot waits
    /// for at most one), announced on `notify`.
    pub fn new(capacity: usize, notify: EventFd) -> Arc<Self> {
        Arc::new(Self {
            done: ArrayQueue::new(capacity.max(1)),
            notify,
        })
    }

    /// Takes one answer: (tag, whether the commit succeeded).
    pub fn pop(&self) -> Option<(u16, bool)> {
        self.done.pop()
    }
}

struct Job {
    volume: Arc<Volume>,
    ticket: FlushTicket,
    replies: Arc<Replies>,
    tag: u16,
}

struct Committer {
    inbox: Arc<ArrayQueue<Job>>,
    thread: Thread,
}

static COMMITTER: OnceLock<Committer> = OnceLock::new();

fn committer() -> &'static Committer {
    COMMITTER.get_or_init(|| {
        let inbox = Arc::new(ArrayQueue::new(INBOX));
        let theirs = inbox.clone();
        let handle = thread::Builder::new()
            .name("committer".into())
            .spawn(move || run(&theirs))
            .expect("spawning the committer thread");
        Committer {
            inbox,
            thread: handle.thread().clone(),
        }
    })
}

/// Hands a synced FLUSH to the committer; its answer comes as `(tag, ok)`
/// on `replies`. False when the inbox is full: the caller commits itself.
pub fn submit(volume: &Arc<Volume>, ticket: FlushTicket, replies: &Arc<Replies>, tag: u16) -> bool {
    let c = committer();
    let job = Job {
        volume: volume.clone(),
        ticket,
        replies: replies.clone(),
        tag,
    };
    if c.inbox.push(job).is_err() {
        return false;
    }
    c.thread.unpark();
    true
}

fn run(inbox: &ArrayQueue<Job>) {
    let mut batch: Vec<Job> = Vec::new();
    loop {
        while let Some(job) = inbox.pop() {
            batch.push(job);
        }
        if batch.is_empty() {
            // An unpark between the last pop and here is not lost: park
            // returns at once when a token is pending.
            thread::park();
            continue;
        }
        commit_batch(&mut batch);
    }
}

/// Commits the batch: the volumes of one store together, each up to its
/// latest ticket, in one store transaction (one fsync); then answers each
/// job. If that transaction fails, every job of its volumes is answered
/// false and the volumes keep their changes for the next flush.
fn commit_batch(batch: &mut Vec<Job>) {
    while let Some(first) = batch.first() {
        let store = first.volume.store().clone();
        let mut group: Vec<(Arc<Volume>, FlushTicket)> = Vec::new();
        for j in batch
            .iter()
            .filter(|j| Arc::ptr_eq(j.volume.store(), &store))
        {
            match group.iter_mut().find(|(v, _)| Arc::ptr_eq(v, &j.volume)) {
                Some((_, latest)) => *latest = (*latest).max(j.ticket),
                None => group.push((j.volume.clone(), j.ticket)),
            }
        }
        for (v, _) in &group {
            v.count_group_commit();
        }
        let refs: Vec<(&Volume, FlushTicket)> = group.iter().map(|(v, t)| (&**v, *t)).collect();
        let ok = match commit_group(&refs) {
            Ok(()) => true,
            Err(e) => {
                warn!("{e}");
                false
            }
        };
        let mut notified: Vec<Arc<Replies>> = Vec::new();
        batch.retain(|j| {
            if !Arc::ptr_eq(j.volume.store(), &store) {
                return true;
            }
            // Room is guaranteed: one answer per waiting slot.
            let _ = j.replies.done.push((j.tag, ok));
            if !notified.iter().any(|r| Arc::ptr_eq(r, &j.replies)) {
                notified.push(j.replies.clone());
            }
            false
        });
        for r in notified {
            let _ = r.notify.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::{
        meta::Store,
        volume::tests::{Fixture, CHUNK},
    };

    fn job(volume: &Arc<Volume>, replies: &Arc<Replies>, tag: u16) -> Job {
        Job {
            volume: volume.clone(),
            ticket: volume.flush_ticket(),
            replies: replies.clone(),
            tag,
        }
    }

    fn replies() -> Arc<Replies> {
        Replies::new(16, EventFd::new(EFD_NONBLOCK).unwrap())
    }

    fn answers(r: &Replies) -> Vec<(u16, bool)> {
        let mut out: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        out.sort();
        out
    }

    fn used(v: &Volume) -> u64 {
        v.tiers().iter().map(|t| t.usage().0).sum()
    }

    #[test]
    fn one_batch_commits_several_volumes_in_one_store_transaction() {
        let f = Fixture::new(1 << 20);
        let vols = f.open_many(&["c", "a", "b"]);
        let store = vols[0].store().clone();
        let r = replies();
        let mut batch = Vec::new();
        for (i, v) in vols.iter().enumerate() {
            v.write_at(0, &[1; 512]).unwrap();
            batch.push(job(v, &r, 2 * i as u16));
            v.write_at(CHUNK, &[2; 512]).unwrap();
            batch.push(job(v, &r, 2 * i as u16 + 1));
        }
        let before = store.chunk_commits();
        commit_batch(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(
            store.chunk_commits(),
            before + 1,
            "one transaction (one fsync) for every volume of the batch"
        );
        assert_eq!(answers(&r), (0..6).map(|t| (t, true)).collect::<Vec<_>>());
        for v in &vols {
            assert!(!v.has_pending_changes(), "volume {}", v.name());
            assert_eq!(v.group_commits(), 1, "volume {}", v.name());
        }
        let expect: Vec<_> = vols
            .iter()
            .map(|v| {
                let m = v.chunk_map();
                let entry = |c| m.get(c).unwrap().to_persistent();
                (v.name().to_string(), vec![(0, entry(0)), (1, entry(1))])
            })
            .collect();
        drop((vols, store));
        let store = Store::open(&f.store_dir()).unwrap();
        for (name, map) in expect {
            assert_eq!(store.chunk_map(&name).unwrap(), map, "volume {name}");
        }
    }

    #[test]
    fn a_failed_group_commit_keeps_every_volumes_changes_and_answers_all_false() {
        let f = Fixture::new(1 << 20);
        let vols = f.open_many(&["a", "b"]);
        let (a, b) = (&vols[0], &vols[1]);
        let store = a.store().clone();
        a.write_at(0, &[1; 512]).unwrap();
        a.flush().unwrap();
        let old = a.chunk_map().get(0).unwrap();
        // Pending: a unmaps chunk 0 (its extent to be freed) and maps
        // chunk 1; b maps chunk 0.
        a.zero_range(0, CHUNK, true).unwrap();
        a.write_at(CHUNK, &[2; 512]).unwrap();
        b.write_at(0, &[3; 512]).unwrap();
        let in_use = used(a);
        let r = replies();
        let mut batch = vec![job(a, &r, 0), job(b, &r, 1), job(a, &r, 2)];
        store.fail_next_commits(1);
        commit_batch(&mut batch);
        assert_eq!(answers(&r), vec![(0, false), (1, false), (2, false)]);
        assert!(a.has_pending_changes() && b.has_pending_changes());
        assert_eq!(
            used(a),
            in_use,
            "no extent freed before the unmap is durable"
        );
        assert_eq!(
            store.chunk_map("a").unwrap(),
            vec![(0, old.to_persistent())]
        );
        assert!(store.chunk_map("b").unwrap().is_empty());
        // A later change to chunk 0 must land after the restored unmap.
        a.write_at(0, &[4; 512]).unwrap();
        let mut batch = vec![job(a, &r, 3), job(b, &r, 4)];
        commit_batch(&mut batch);
        assert_eq!(answers(&r), vec![(3, true), (4, true)]);
        assert!(!a.has_pending_changes() && !b.has_pending_changes());
        let entry = |v: &Volume, c| v.chunk_map().get(c).unwrap().to_persistent();
        assert_eq!(
            store.chunk_map("a").unwrap(),
            vec![(0, entry(a, 0)), (1, entry(a, 1))]
        );
        assert_eq!(store.chunk_map("b").unwrap(), vec![(0, entry(b, 0))]);
        assert_eq!(
            used(a),
            in_use,
            "the old extent of chunk 0 went back, the new one is in use"
        );
    }
}
