//! The backend's vring type: the library's `VringRwLock`, except that every
//! new call eventfd (VHOST_USER_SET_VRING_CALL) is signalled once, as QEMU's
//! libvhost-user does (`vu_set_vring_call_exec`: "in case of I/O hang after
//! reconnecting"). Completions whose interrupt went to the previous call fd
//! while the front-end was switching it (a reconnect, a device restart,
//! MSI-X vector masking) are otherwise never seen by a driver that waits
//! for them without kicking again: its I/O hangs. One spurious interrupt
//! only makes the driver look at its used ring.
//!
//! vhost-user-backend 0.24 gives a backend no hook for SET_VRING_CALL: its
//! handler calls `VringT::set_call` on the backend's `Vring` type and
//! nothing else, and a backend only sees its vrings again in `handle_event`,
//! which needs a kick or a completion, the very events a hung driver does
//! not produce. Wrapping the vring type is the one place that runs exactly
//! when the front-end hands over a new call fd.

use std::{
    fs::File,
    io,
    ops::Deref,
    sync::{RwLockReadGuard, RwLockWriteGuard},
};

use log::warn;
use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;
use vm_memory::GuestMemoryAtomic;

use super::worker::GuestMemory;

type Mem = GuestMemoryAtomic<GuestMemory>;

/// A `VringRwLock` that signals each new call eventfd once.
#[derive(Clone)]
pub struct BlkVring(VringRwLock<Mem>);

impl Deref for BlkVring {
    type Target = VringRwLock<Mem>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> VringStateGuard<'a, Mem> for BlkVring {
    type G = RwLockReadGuard<'a, VringState<Mem>>;
}

impl<'a> VringStateMutGuard<'a, Mem> for BlkVring {
    type G = RwLockWriteGuard<'a, VringState<Mem>>;
}

impl VringT<Mem> for BlkVring {
    fn new(mem: Mem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        VringRwLock::new(mem, max_queue_size).map(Self)
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, Mem>>::G {
        self.0.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, Mem>>::G {
        self.0.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.0.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.0.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.0.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.0.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.0.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.0.set_enabled(enabled)
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.0.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.0.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.0.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.0.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.0.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        self.0.set_queue_size(num)
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.0.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.0.set_queue_ready(ready)
    }

    fn set_kick(&self, file: Option<File>) {
        self.0.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.0.read_kick()
    }

    /// Installs the new call fd and signals it once (see the module
    /// comment). `None` (the library clears the fd when a ring stops) is
    /// not signalled.
    fn set_call(&self, file: Option<File>) {
        let new = file.is_some();
        self.0.set_call(file);
        if new {
            if let Err(e) = self.0.signal_used_queue() {
                warn!("queue: signalling the new call eventfd: {e}");
            }
        }
    }

    fn set_err(&self, file: Option<File>) {
        self.0.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, IntoRawFd};

    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    fn vring() -> BlkVring {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        BlkVring::new(GuestMemoryAtomic::new(mem), 16).unwrap()
    }

    /// The front-end's end of a call eventfd and the copy it sends.
    fn call_fd() -> (EventFd, File) {
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        let sent = efd.try_clone().unwrap().into_raw_fd();
        // SAFETY: `sent` was just released by `into_raw_fd`, so the File
        // is its only owner.
        (efd, unsafe { File::from_raw_fd(sent) })
    }

    #[test]
    fn each_new_call_fd_is_signalled_once() {
        let v = vring();
        let (first, file) = call_fd();
        v.set_call(Some(file));
        assert_eq!(first.read().unwrap(), 1, "one signal on SET_VRING_CALL");
        assert!(first.read().is_err(), "and only one");
        // A reconnect hands over another fd: it is signalled too, the old
        // one no more.
        let (second, file) = call_fd();
        v.set_call(Some(file));
        assert_eq!(second.read().unwrap(), 1);
        assert!(first.read().is_err());
        // Clearing the fd (a ring stopping) signals nothing and fails not.
        v.set_call(None);
        assert!(second.read().is_err());
        // Completions still go to the current fd.
        let (third, file) = call_fd();
        v.set_call(Some(file));
        let _ = third.read();
        v.signal_used_queue().unwrap();
        assert_eq!(third.read().unwrap(), 1);
    }
}
