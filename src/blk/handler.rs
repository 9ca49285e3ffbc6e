//! The vhost-user protocol handler of one connection: features, memory
//! table, vring set-up, config space and inflight tracking, over the vhost
//! crate's message layer.
//!
//! vhost-user-backend's handler answers GET/SET_INFLIGHT_FD with an error
//! and gives a backend no hook for them, so tierblk has its own; the vring
//! type (`BlkVring`), the backend interface (`VhostUserBackend`) and the
//! message parsing stay the libraries'.

use std::{fs::File, os::fd::AsRawFd, sync::Arc};

use log::{info, warn};
use vhost::{
    vhost_user::{
        message::{
            VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags,
            VhostUserInflight, VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures,
            VhostUserShMemConfig, VhostUserSharedMsg, VhostUserSingleMemoryRegion,
            VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
        },
        Error, GpuBackend, Result, VhostUserBackendReqHandlerMut,
    },
    VhostUserMemoryRegionBase,
};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestRegionMmap};

use super::{
    backend::BlkBackend, inflight::Region, queue_thread::QueueThread, vring::BlkVring,
    worker::GuestMemory,
};

/// Memory slots offered to a front-end with CONFIGURE_MEM_SLOTS.
const MAX_MEM_SLOTS: u64 = 509;

/// Where a front-end's virtual address range lies in guest memory.
#[derive(Debug)]
struct Mapping {
    vmm_addr: u64,
    size: u64,
    gpa: u64,
}

/// One queue: its vring and its thread (dropping it stops and joins the
/// thread, which holds the last other references to the backend).
struct Queue {
    vring: BlkVring,
    thread: QueueThread,
}

pub struct Handler {
    backend: Arc<BlkBackend>,
    mem: GuestMemoryAtomic<GuestMemory>,
    mappings: Vec<Mapping>,
    queues: Vec<Queue>,
    owned: bool,
    acked_features: u64,
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::ReqHandlerError(std::io::Error::other(e.to_string()))
}

impl Handler {
    pub fn new(backend: Arc<BlkBackend>) -> std::io::Result<Self> {
        let mem = GuestMemoryAtomic::new(GuestMemory::new());
        let mut queues = Vec::new();
        for index in 0..backend.num_queues() {
            let vring = BlkVring::new(mem.clone(), backend.max_queue_size() as u16)
                .map_err(|e| std::io::Error::other(format!("queue {index}: {e:?}")))?;
            let thread = QueueThread::spawn(index, backend.clone(), vring.clone())?;
            queues.push(Queue { vring, thread });
        }
        Ok(Self {
            backend,
            mem,
            mappings: Vec::new(),
            queues,
            owned: false,
            acked_features: 0,
        })
    }

    fn queue(&mut self, index: u32) -> Result<&mut Queue> {
        self.queues
            .get_mut(index as usize)
            .ok_or(Error::InvalidParam)
    }

    /// Watches the queue's kick while the queue is started and enabled,
    /// so that no request is served otherwise and no kick is lost.
    fn update_watch(&mut self, index: u32) -> Result<()> {
        let q = self.queue(index)?;
        let fd = {
            let state = q.vring.get_ref();
            (state.get_queue().ready() && state.is_enabled())
                .then(|| state.get_kick().as_ref().map(|k| k.as_raw_fd()))
                .flatten()
        };
        q.thread.watch_kick(fd).map_err(Error::ReqHandlerError)
    }

    /// A queue with a kick fd and not yet started starts: requests left in
    /// flight by a previous back-end (inflight region) are served again.
    fn start_if_ready(&mut self, index: u32) -> Result<()> {
        let backend = self.backend.clone();
        let q = self.queue(index)?;
        let ready = {
            let state = q.vring.get_ref();
            state.get_queue().ready() || state.get_kick().is_none()
        };
        if ready {
            return Ok(());
        }
        q.vring.set_queue_ready(true);
        let n = backend.recover_queue(index as usize, &q.vring);
        if n > 0 {
            info!(
                "volume '{}': queue {index}: serving again {n} requests left in flight by the previous connection",
                backend.volume_name()
            );
            q.thread.wake();
        }
        self.update_watch(index)
    }

    fn vmm_to_gpa(&self, addr: u64) -> Result<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.vmm_addr && addr - m.vmm_addr < m.size)
            .map(|m| addr - m.vmm_addr + m.gpa)
            .ok_or(Error::InvalidParam)
    }

    fn publish_memory(&mut self, mem: GuestMemory) -> Result<()> {
        self.mem.lock().map_err(internal)?.replace(mem);
        self.backend
            .update_memory(self.mem.clone())
            .map_err(Error::ReqHandlerError)
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> Result<()> {
        if self.owned {
            return Err(Error::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.owned = false;
        self.acked_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        for index in 0..self.queues.len() as u32 {
            self.queue(index)?.vring.set_enabled(false);
            self.update_watch(index)?;
        }
        self.acked_features = 0;
        self.backend.reset_device();
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !self.backend.features() != 0 {
            return Err(Error::InvalidParam);
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES rings start enabled.
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for index in 0..self.queues.len() as u32 {
                self.queue(index)?.vring.set_enabled(true);
                self.update_watch(index)?;
            }
        }
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for q in &self.queues {
            q.vring.set_queue_event_idx(event_idx);
        }
        self.backend.set_event_idx(event_idx);
        self.backend.acked_features(features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(Error::InvalidOperation("postcopy is not supported"));
        }
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (r, file) in ctx.iter().zip(files) {
            let region =
                GuestRegionMmap::new(r.mmap_region(file)?, GuestAddress(r.guest_phys_addr))
                    .ok_or(Error::InvalidParam)?;
            regions.push(region);
            mappings.push(Mapping {
                vmm_addr: r.user_addr,
                size: r.memory_size,
                gpa: r.guest_phys_addr,
            });
        }
        let mem = GuestMemory::from_regions(regions).map_err(internal)?;
        self.publish_memory(mem)?;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let max = self.backend.max_queue_size() as u32;
        let q = self.queue(index)?;
        if num == 0 || num > max || !num.is_power_of_two() {
            warn!("queue {index}: size {num} refused (a power of two up to {max})");
            return Err(Error::InvalidParam);
        }
        q.vring.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let desc = self.vmm_to_gpa(descriptor)?;
        let avail = self.vmm_to_gpa(available)?;
        let used = self.vmm_to_gpa(used)?;
        let q = self.queue(index)?;
        q.vring
            .set_queue_info(desc, avail, used)
            .map_err(|_| Error::InvalidParam)?;
        // The used index goes on from what the guest's ring says (a guest
        // reset starts it at 0 again).
        let idx = q
            .vring
            .queue_used_idx()
            .map_err(|_| Error::BackendInternalError)?;
        q.vring.set_queue_next_used(idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.queue(index)?.vring.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        // The ring stops: nothing more is taken from it, and what is in
        // flight completes before its state is read.
        self.queue(index)?.vring.set_queue_ready(false);
        self.update_watch(index)?;
        self.backend
            .stop_vring(index)
            .map_err(Error::ReqHandlerError)?;
        let q = self.queue(index)?;
        let next_avail = q.vring.queue_next_avail();
        q.vring.set_kick(None);
        q.vring.set_call(None);
        Ok(VhostUserVringState::new(index, next_avail.into()))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let index = index as u32;
        // Unwatch the old fd before it is closed.
        self.queue(index)?
            .thread
            .watch_kick(None)
            .map_err(Error::ReqHandlerError)?;
        self.queue(index)?.vring.set_kick(fd);
        self.start_if_ready(index)?;
        self.update_watch(index)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.queue(index as u32)?.vring.set_call(fd);
        self.start_if_ready(index as u32)
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.queue(index as u32)?.vring.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features())
    }

    fn set_protocol_features(&mut self, _features: u64) -> Result<()> {
        // The vhost crate keeps the acknowledged set and checks messages
        // against it; nothing here depends on it.
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.queues.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(Error::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.queue(index)?.vring.set_enabled(enable);
        self.update_watch(index)?;
        if enable {
            // Requests to serve again (or kicks) that came while disabled.
            self.queue(index)?.thread.wake();
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> Result<()> {
        self.backend
            .set_config(offset, buf)
            .map_err(Error::ReqHandlerError)
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(Error::InvalidOperation("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(Error::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, msg: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        let (file, size) =
            Region::create(msg.num_queues, msg.queue_size).map_err(Error::ReqHandlerError)?;
        Ok((
            VhostUserInflight::new(size, 0, msg.num_queues, msg.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, msg: &VhostUserInflight, file: File) -> Result<()> {
        let region = Region::map(
            &file,
            msg.mmap_size,
            msg.mmap_offset,
            msg.num_queues,
            msg.queue_size,
        )
        .map_err(Error::ReqHandlerError)?;
        // Each queue's tracker keeps the mapping alive while it is used.
        for index in 0..self.queues.len() {
            self.backend.set_inflight(index, region.queue(index));
        }
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        if postcopy_listening.is_some() {
            return Err(Error::InvalidOperation("postcopy is not supported"));
        }
        let r = GuestRegionMmap::new(
            region.mmap_region(fd)?,
            GuestAddress(region.guest_phys_addr),
        )
        .ok_or(Error::InvalidParam)?;
        let mem = self
            .mem
            .memory()
            .insert_region(Arc::new(r))
            .map_err(internal)?;
        self.publish_memory(mem)?;
        self.mappings.push(Mapping {
            vmm_addr: region.user_addr,
            size: region.memory_size,
            gpa: region.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        let (mem, _) = self
            .mem
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(internal)?;
        self.publish_memory(mem)?;
        self.mappings.retain(|m| m.gpa != region.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(Error::InvalidOperation(
            "device state transfer is not supported",
        ))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(Error::InvalidOperation(
            "device state transfer is not supported",
        ))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(Error::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(Error::InvalidOperation("dirty logging is not supported"))
    }
}
