//! One thread per queue: waits on the queue's kick eventfd, its worker's
//! completion eventfd, a wake-up (requests to serve again after a restart)
//! and an exit event, and hands each to the backend.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    thread::{self, JoinHandle},
};

use log::warn;
use vhost_user_backend::{VhostUserBackend, VringT};
use vmm_sys_util::{
    epoll::{ControlOperation, Epoll, EpollEvent, EventSet},
    eventfd::{EventFd, EFD_NONBLOCK},
};

use super::{backend::BlkBackend, vring::BlkVring};

const KICK: u64 = 0;
const COMPLETION: u64 = 1;
const WAKE: u64 = 2;
const EXIT: u64 = 3;

/// A running queue thread; dropping it stops and joins the thread.
pub struct QueueThread {
    epoll: Arc<Epoll>,
    wake: EventFd,
    exit: EventFd,
    /// The kick fd registered now, if any.
    kick: Option<RawFd>,
    thread: Option<JoinHandle<()>>,
}

impl QueueThread {
    /// Starts the thread of queue `index`.
    pub fn spawn(index: usize, backend: Arc<BlkBackend>, vring: BlkVring) -> io::Result<Self> {
        let epoll = Arc::new(Epoll::new()?);
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let completion = backend.completion_fd(index).ok_or_else(|| {
            io::Error::other(format!("queue {index}: the backend has no such worker"))
        })?;
        let add = |fd: RawFd, data: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        add(completion, COMPLETION)?;
        add(wake.as_raw_fd(), WAKE)?;
        add(exit.as_raw_fd(), EXIT)?;
        let (ep, wk) = (epoll.clone(), wake.try_clone()?);
        let thread = thread::Builder::new()
            .name(format!("queue{index}"))
            .spawn(move || run(index, &ep, &wk, &backend, &vring))?;
        Ok(Self {
            epoll,
            wake,
            exit,
            kick: None,
            thread: Some(thread),
        })
    }

    /// Watches `fd` as the queue's kick (None: watches none). A kick
    /// written before the fd is watched is seen at once (the eventfd keeps
    /// its count).
    pub fn watch_kick(&mut self, fd: Option<RawFd>) -> io::Result<()> {
        if self.kick == fd {
            return Ok(());
        }
        if let Some(old) = self.kick.take() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                old,
                EpollEvent::new(EventSet::IN, KICK),
            );
        }
        if let Some(new) = fd {
            self.epoll.ctl(
                ControlOperation::Add,
                new,
                EpollEvent::new(EventSet::IN, KICK),
            )?;
            self.kick = Some(new);
        }
        Ok(())
    }

    /// Makes the thread look at its queue as if kicked.
    pub fn wake(&self) {
        if let Err(e) = self.wake.write(1) {
            warn!("queue: waking the queue thread: {e}");
        }
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        let _ = self.exit.write(1);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                warn!("a queue thread panicked");
            }
        }
    }
}

fn run(index: usize, epoll: &Epoll, wake: &EventFd, backend: &BlkBackend, vring: &BlkVring) {
    let mut events = [EpollEvent::default(); 4];
    let vrings = std::slice::from_ref(vring);
    let mut errors = 0u64;
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!("queue {index}: epoll: {e}; the queue thread stops");
                return;
            }
        };
        for ev in &events[..n] {
            let event = match ev.data() {
                KICK => match vring.read_kick() {
                    Ok(true) => 0,
                    Ok(false) => continue,
                    Err(e) => {
                        warn!("queue {index}: reading the kick: {e}");
                        continue;
                    }
                },
                WAKE => {
                    let _ = wake.read();
                    if !vring.get_ref().is_enabled() {
                        continue;
                    }
                    0
                }
                COMPLETION => backend.completion_event(),
                _ => return,
            };
            if let Err(e) = backend.handle_event(event, EventSet::IN, vrings, index) {
                errors += 1;
                if errors.is_power_of_two() {
                    warn!("queue {index}: {e} ({errors} such errors)");
                }
            }
        }
    }
}
