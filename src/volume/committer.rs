//! The committer: one daemon-wide thread that makes chunk-map changes
//! durable for FLUSH requests, so a queue thread never waits on a store
//! commit (DESIGN decision 1). A queue thread hands over its synced FLUSH
//! through a bounded lock-free queue and goes on serving; the committer
//! commits (one store transaction per volume for every FLUSH of that volume
//! waiting, i.e. group commit) and answers through the queue thread's own
//! lock-free reply queue and completion eventfd. No FLUSH completes before
//! the changes made before it are durable: `Volume::commit` keeps that
//! order whoever calls it.

use std::{
    sync::{Arc, OnceLock},
    thread::{self, Thread},
};

use crossbeam_queue::ArrayQueue;
use log::warn;
use vmm_sys_util::eventfd::EventFd;

use super::{FlushTicket, Volume};

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

/// Commits every volume of the batch once, up to its latest ticket, and
/// answers each job.
fn commit_batch(batch: &mut Vec<Job>) {
    while let Some(first) = batch.first() {
        let volume = first.volume.clone();
        let latest = batch
            .iter()
            .filter(|j| Arc::ptr_eq(&j.volume, &volume))
            .map(|j| j.ticket)
            .max()
            .expect("the batch holds this volume's first job");
        volume.count_group_commit();
        let ok = match volume.commit(latest) {
            Ok(()) => true,
            Err(e) => {
                warn!("{e}");
                false
            }
        };
        let mut notified: Vec<Arc<Replies>> = Vec::new();
        batch.retain(|j| {
            if !Arc::ptr_eq(&j.volume, &volume) {
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
