//! A vhost-user-blk client on libblkio's Rust core (the
//! `virtio-blk-vhost-user` driver): what `tierblk play`, the load generator
//! (`benches/loadgen.rs`) and the whole-daemon tests use to talk to a
//! running daemon as a guest would. It connects, starts the queues and maps
//! one buffer region the requests' data lives in; the callers submit on the
//! queues themselves.

use std::{
    mem::MaybeUninit,
    path::{Path, PathBuf},
    time::Duration,
};

pub use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// libblkio's driver for vhost-user-blk sockets.
const DRIVER: &str = "virtio-blk-vhost-user";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vhost-user socket {socket}: {step}: {message}")]
    Blkio {
        socket: PathBuf,
        step: &'static str,
        message: String,
    },
    #[error("vhost-user socket {socket}: path is not valid UTF-8")]
    Path { socket: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// A connected, started client with one mapped buffer region.
pub struct Client {
    pub queues: Vec<Blkioq>,
    /// The mapped buffer region; request data must lie in it.
    pub buf: MemoryRegion,
    blkio: Blkio,
    socket: PathBuf,
}

impl Client {
    /// Connects to `socket`, starts `queues` virtqueues and maps a buffer
    /// region of `buffer_bytes` (rounded up by libblkio as it needs).
    pub fn connect(
        socket: &Path,
        queues: usize,
        read_only: bool,
        buffer_bytes: usize,
    ) -> Result<Self> {
        let err = |step: &'static str| {
            move |e: blkio::Error| Error::Blkio {
                socket: socket.to_path_buf(),
                step,
                message: e.message().to_string(),
            }
        };
        let path = socket.to_str().ok_or_else(|| Error::Path {
            socket: socket.to_path_buf(),
        })?;
        let mut b = Blkio::new(DRIVER).map_err(err("creating the client"))?;
        b.set_str("path", path).map_err(err("setting the path"))?;
        b.set_bool("read-only", read_only)
            .map_err(err("setting read-only"))?;
        b.connect().map_err(err("connecting"))?;
        b.set_i32("num-queues", i32::try_from(queues).unwrap_or(i32::MAX))
            .map_err(err("setting the number of queues"))?;
        let started = b.start().map_err(err("starting the device"))?;
        let buf = b
            .alloc_mem_region(buffer_bytes.max(1))
            .map_err(err("allocating the buffer region"))?;
        b.map_mem_region(&buf)
            .map_err(err("mapping the buffer region"))?;
        Ok(Self {
            queues: started.queues,
            buf,
            blkio: b,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The device's size in bytes.
    pub fn capacity(&self) -> Result<u64> {
        self.blkio.get_u64("capacity").map_err(|e| Error::Blkio {
            socket: self.socket.clone(),
            step: "reading the capacity",
            message: e.message().to_string(),
        })
    }

    /// Address of byte `off` of the buffer region.
    pub fn ptr(&self, off: usize) -> *mut u8 {
        (self.buf.addr + off) as *mut u8
    }

    /// Bytes `off..off + len` of the buffer region (panics past its end).
    /// Requests in flight must not use these bytes while the slice lives:
    /// the daemon reads and writes the region from its own process.
    pub fn buf_mut(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.buf.len));
        // SAFETY: the region is `buf.len` bytes this client allocated and
        // keeps mapped; the range is inside it (checked above) and `&mut
        // self` keeps any other slice of it from this client away.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(off), len) }
    }

    /// The libblkio instance, kept alive as long as its queues are used.
    pub fn blkio(&self) -> &Blkio {
        &self.blkio
    }

    /// Splits the client so that its queues can move to threads; keep the
    /// returned `Blkio` alive until they are done.
    pub fn into_parts(self) -> (Blkio, Vec<Blkioq>, MemoryRegion) {
        (self.blkio, self.queues, self.buf)
    }
}

/// Waits on `q` for at least one completion for up to `timeout`, filling
/// `out` (at most its length); returns how many completed, 0 when the
/// timeout passed first. The caller must have at least one request in
/// flight on `q`.
pub fn wait_some<'a>(
    q: &mut Blkioq,
    comps: &'a mut [MaybeUninit<Completion>],
    timeout: Duration,
) -> std::result::Result<&'a [Completion], blkio::Error> {
    let mut t = timeout;
    match q.do_io(comps, 1, Some(&mut t), None) {
        Ok(n) => {
            // SAFETY: do_io initialised the first `n` entries of `comps`.
            Ok(unsafe { std::slice::from_raw_parts(comps.as_ptr().cast::<Completion>(), n) })
        }
        Err(e) if e.errno().raw_os_error() == libc::ETIME => Ok(&[]),
        Err(e) => Err(e),
    }
}
