//! Storage tiers: the backing device of each tier (an extent file in a
//! directory, or a raw block device) with its identity header, its extent
//! allocator and its optional speed emulation.
//!
//! Device layout: the identity header (`header`) in the first 64 KiB, then
//! `capacity` bytes of extents. Offsets handed out by `allocate` and taken
//! by every other method are extent offsets (0 = first byte after the
//! header); `device_offset` turns one into a position on the device.

mod emulate;
pub mod extent;
pub mod fault;
pub mod header;
mod set;

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::{FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU8, Ordering},
        Mutex,
    },
};

pub use emulate::Emulator;
pub use extent::{ExtentAllocator, UNIT_BYTES};
pub use header::{TierHeader, HEADER_BYTES};
pub use set::TierSet;

use crate::config::TierDefinition;

/// Name of the extent file inside a tier directory.
pub const EXTENT_FILE: &str = "extents.dat";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tier '{tier}': path {path} does not exist")]
    Missing { tier: String, path: PathBuf },
    #[error("tier '{tier}': cannot open {path}: {source}")]
    Open {
        tier: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tier '{tier}': {path}: {what}: {source}")]
    Io {
        tier: String,
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "tier '{tier}': block device {path} holds {size} bytes, the tier needs {needed} (capacity plus its 64KiB header)"
    )]
    DeviceTooSmall {
        tier: String,
        path: PathBuf,
        needed: u64,
        size: u64,
    },
    #[error("tier '{tier}': capacity must be a multiple of 64KiB (got {capacity} bytes)")]
    Unaligned { tier: String, capacity: u64 },
    #[error("tier '{tier}': {reason}")]
    Extent { tier: String, reason: String },
    #[error("tier '{tier}': {path}: {reason}; refusing to use it")]
    Identity {
        tier: String,
        path: PathBuf,
        reason: String,
    },
    #[error("tier '{tier}': {path} is in use by another process (locked); is another tierblk using this tier?")]
    Locked { tier: String, path: PathBuf },
    #[error("tier '{tier}': capacity {configured} is smaller than the {recorded} its device was made with; shrinking a tier is not supported")]
    Shrunk {
        tier: String,
        recorded: crate::config::ByteSize,
        configured: crate::config::ByteSize,
    },
    #[error("tiers '{first}' and '{second}' use the same device {path}")]
    Shared {
        first: String,
        second: String,
        path: PathBuf,
    },
    #[error("tier '{tier}' (tier_id {id}) holds chunks of volume(s) {volumes} but is not in the config; put it back (tiers cannot be removed while they hold data)")]
    Removed {
        tier: String,
        id: u8,
        volumes: String,
    },
    #[error(transparent)]
    Meta(#[from] crate::meta::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What the metadata store says a tier's device must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect<'a> {
    /// The store does not know the tier: its device must not carry a
    /// tierblk header yet (a new tier).
    New,
    /// The store knows the tier: its device must carry this UUID.
    Uuid(&'a str),
}

/// How a tier makes a range read as zeros, found out on first use.
const ZERO_BY_ZERO_RANGE: u8 = 0;
const ZERO_BY_PUNCH_HOLE: u8 = 1;
const ZERO_BY_WRITING: u8 = 2;

/// One open tier.
#[derive(Debug)]
pub struct Tier {
    def: TierDefinition,
    path: PathBuf,
    uuid: String,
    /// Buffered (page-cached) handle; always present. It holds the tier's
    /// exclusive lock.
    file: File,
    /// O_DIRECT handle, when the tier is configured for direct I/O.
    direct: Option<File>,
    is_block_device: bool,
    alloc: Mutex<ExtentAllocator>,
    emulator: Option<Emulator>,
    zero_method: AtomicU8,
    fault: Option<fault::FaultInjector>,
    /// This open made the device a tier (created the extent file, or wrote
    /// the header of a block device).
    made_new: bool,
}

impl Tier {
    /// Opens the tier's device, checking its identity header against what
    /// the store expects. A new tier directory gets its extent file
    /// (created 0600, preallocated, header written); a new block device gets
    /// its header. The device is locked against other processes.
    pub fn open(def: &TierDefinition, expect: Expect<'_>) -> Result<Self> {
        let (path, is_block_device) = device_path(def)?;
        let existed = is_block_device || path.exists();
        let r = Self::open_device(def, expect, path.clone(), is_block_device, existed);
        if r.is_err() && !existed {
            // Never leave a half-made extent file behind.
            let _ = std::fs::remove_file(&path);
        }
        r
    }

    fn open_device(
        def: &TierDefinition,
        expect: Expect<'_>,
        path: PathBuf,
        is_block_device: bool,
        exists: bool,
    ) -> Result<Self> {
        let name = def.name.clone();
        let capacity = def.capacity.0;
        if !capacity.is_multiple_of(UNIT_BYTES) {
            return Err(Error::Unaligned {
                tier: name,
                capacity,
            });
        }
        let identity = |reason: String| Error::Identity {
            tier: name.clone(),
            path: path.clone(),
            reason,
        };
        let (file, fresh) = if exists {
            (open_existing(def, &path)?, false)
        } else if let Expect::Uuid(u) = expect {
            return Err(missing_file(def, &path, u));
        } else {
            (create_extent_file(def, &path)?, true)
        };
        lock(&file).map_err(|_| Error::Locked {
            tier: name.clone(),
            path: path.clone(),
        })?;
        let io_err = |what, source| Error::Io {
            tier: name.clone(),
            path: path.clone(),
            what,
            source,
        };
        let found = TierHeader::read(&file).map_err(|e| identity(e.to_string()))?;
        let made_new = found.is_none();
        let header = match judge(def, &path, found, expect, fresh || is_block_device)? {
            Some(h) => h,
            None => TierHeader::new(&name, UNIT_BYTES, capacity),
        };
        let needed = HEADER_BYTES + capacity;
        if is_block_device {
            let size = block_device_size(&file).map_err(|e| io_err("BLKGETSIZE64", e))?;
            if size < needed {
                return Err(Error::DeviceTooSmall {
                    tier: name,
                    path,
                    needed,
                    size,
                });
            }
        } else if !fresh {
            preallocate(&file, needed).map_err(|e| io_err("preallocating extent file", e))?;
        }
        let direct = if def.direct_io {
            Some(open_file(def, &path, true, false)?)
        } else {
            None
        };
        if made_new || header.capacity < capacity {
            // Last step: a device gets its identity only once it is whole.
            let h = TierHeader {
                capacity,
                ..header.clone()
            };
            h.write(&file)
                .map_err(|e| io_err("writing the tier header", e))?;
        }
        // A fresh file reads as zeros; any other device may hold old bytes.
        let alloc = ExtentAllocator::new(capacity / UNIT_BYTES, !fresh);
        Ok(Self {
            def: def.clone(),
            path,
            uuid: header.uuid,
            file,
            direct,
            is_block_device,
            alloc: Mutex::new(alloc),
            emulator: def.emulate.as_ref().map(Emulator::new),
            zero_method: AtomicU8::new(ZERO_BY_ZERO_RANGE),
            fault: def.fault.as_ref().map(fault::FaultInjector::new),
            made_new,
        })
    }

    /// Undoes what `open` did to a device it made a tier (when the daemon
    /// does not start after all): removes the new extent file, or wipes the
    /// header written on a block device. A tier that existed is left alone.
    pub fn undo_new(self) {
        if !self.made_new {
            return;
        }
        if self.is_block_device {
            let _ = self.file.write_all_at(&[0u8; 4096], 0);
            let _ = self.file.sync_data();
        } else {
            let path = self.path.clone();
            drop(self);
            let _ = std::fs::remove_file(path);
        }
    }

    pub fn id(&self) -> u8 {
        self.def.tier_id
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The identity in the device's header.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    pub fn definition(&self) -> &TierDefinition {
        &self.def
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File descriptor for I/O at `device_offset`s; `direct` picks the
    /// O_DIRECT handle when the tier has one (the caller checks buffer
    /// alignment).
    pub fn fd(&self, direct: bool) -> RawFd {
        match (&self.direct, direct) {
            (Some(d), true) => d.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    /// Position on the device of an extent offset.
    #[inline]
    pub fn device_offset(&self, extent_offset: u64) -> u64 {
        HEADER_BYTES + extent_offset
    }

    pub fn has_direct_io(&self) -> bool {
        self.direct.is_some()
    }

    pub fn emulator(&self) -> Option<&Emulator> {
        self.emulator.as_ref()
    }

    /// Whether an injected fault (tests only) fails this operation.
    #[inline]
    pub fn fault_hit(&self, op: fault::Op) -> Option<crate::config::FaultKind> {
        self.fault.as_ref().and_then(|f| f.hit(op))
    }

    fn injected(&self, op: fault::Op) -> std::io::Result<()> {
        match self.fault_hit(op) {
            Some(crate::config::FaultKind::Eio) => {
                Err(std::io::Error::from_raw_os_error(libc::EIO))
            }
            Some(crate::config::FaultKind::Short) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "injected short transfer",
            )),
            None => Ok(()),
        }
    }

    /// Reads at an extent offset (control path, migration copies).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.injected(fault::Op::Read)?;
        self.file.read_exact_at(buf, self.device_offset(offset))
    }

    /// Writes at an extent offset (control path, migration copies).
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.injected(fault::Op::Write)?;
        self.file.write_all_at(buf, self.device_offset(offset))
    }

    fn allocator(&self) -> std::sync::MutexGuard<'_, ExtentAllocator> {
        // The allocator holds no invariants a panicking holder could break
        // half-way (each call finishes its bitmap update), so a poisoned
        // lock is still usable.
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates an extent of `bytes` (a power of two ≥ 64 KiB); returns its
    /// extent offset. The extent reads as zeros.
    pub fn allocate(&self, bytes: u64) -> Result<Option<u64>> {
        let n = bytes / UNIT_BYTES;
        let got = self.allocator().allocate(n);
        let Some((unit, dirty)) = got else {
            return Ok(None);
        };
        let off = unit * UNIT_BYTES;
        if dirty {
            if let Err(e) = self.zero_range(off, bytes) {
                self.allocator().free(unit, n);
                return Err(e);
            }
        }
        Ok(Some(off))
    }

    /// Marks an extent used while rebuilding from the chunk maps.
    pub fn claim(&self, offset: u64, bytes: u64) -> Result<()> {
        self.allocator()
            .claim(offset / UNIT_BYTES, bytes / UNIT_BYTES)
            .map_err(|e| Error::Extent {
                tier: self.def.name.clone(),
                reason: e,
            })
    }

    pub fn free(&self, offset: u64, bytes: u64) {
        self.allocator()
            .free(offset / UNIT_BYTES, bytes / UNIT_BYTES);
    }

    /// (used, total) bytes.
    pub fn usage(&self) -> (u64, u64) {
        let a = self.allocator();
        (a.used_units() * UNIT_BYTES, a.total_units() * UNIT_BYTES)
    }

    /// Chunks of `chunk_size` bytes the free space would hold.
    pub fn free_chunks(&self, chunk_size: u64) -> u64 {
        let (used, total) = self.usage();
        total.saturating_sub(used) / chunk_size.max(1)
    }

    /// Makes `len` bytes at extent offset `offset` read as zeros: ZERO_RANGE
    /// (BLKZEROOUT on a block device) where the filesystem has it, else
    /// PUNCH_HOLE, else writing zeros (tmpfs of old kernels, ext2/3).
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        let at = self.device_offset(offset);
        let r = loop {
            let method = self.zero_method.load(Ordering::Relaxed);
            let r = match method {
                ZERO_BY_ZERO_RANGE if self.is_block_device => blk_zeroout(&self.file, at, len),
                ZERO_BY_ZERO_RANGE => fallocate(
                    &self.file,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    len,
                ),
                ZERO_BY_PUNCH_HOLE => fallocate(
                    &self.file,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    len,
                ),
                _ => write_zeros(&self.file, at, len),
            };
            match r {
                Err(e) if method < ZERO_BY_WRITING && unsupported(&e) => {
                    let next = if self.is_block_device {
                        ZERO_BY_WRITING
                    } else {
                        method + 1
                    };
                    self.zero_method.store(next, Ordering::Relaxed);
                }
                r => break r,
            }
        };
        r.map_err(|source| Error::Io {
            tier: self.def.name.clone(),
            path: self.path.clone(),
            what: "zeroing range",
            source,
        })
    }

    /// Makes written data durable.
    pub fn sync_data(&self) -> Result<()> {
        self.injected(fault::Op::Sync)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| Error::Io {
                tier: self.def.name.clone(),
                path: self.path.clone(),
                what: "fdatasync",
                source,
            })
    }
}

/// What a device's header means for a tier the store expects as `expect`:
/// `Some(header)` for the known tier, `None` for a new tier that gets a
/// fresh header (`blank_ok`: the device may be made a tier), else the
/// refusal, naming the tier, the path and the UUIDs.
fn judge(
    def: &TierDefinition,
    path: &Path,
    found: Option<TierHeader>,
    expect: Expect<'_>,
    blank_ok: bool,
) -> Result<Option<TierHeader>> {
    let identity = |reason: String| Error::Identity {
        tier: def.name.clone(),
        path: path.to_path_buf(),
        reason,
    };
    let h = match (found, expect) {
        (None, Expect::New) if blank_ok => return Ok(None),
        (None, Expect::New) => {
            return Err(identity(
                "the file exists but carries no tierblk header (not an extent file of this daemon); move it away to make a new tier".into(),
            ))
        }
        (None, Expect::Uuid(u)) => {
            return Err(identity(format!(
                "the device carries no tierblk header (emptied, replaced or foreign); the metadata store expects the tier with UUID {u}"
            )))
        }
        (Some(h), Expect::New) => {
            return Err(identity(format!(
                "the device belongs to tier '{}' (UUID {}), which the metadata store does not know: the store is missing, empty or another daemon's. Restore the store; to start this tier empty instead, remove the device's tierblk header (for a directory: delete {})",
                h.tier_name, h.uuid, path.display()
            )))
        }
        (Some(h), Expect::Uuid(u)) if h.uuid != u => {
            return Err(identity(format!(
                "the device carries UUID {} (tier '{}'), the metadata store expects UUID {u}: a wrong or swapped device",
                h.uuid, h.tier_name
            )))
        }
        (Some(h), Expect::Uuid(_)) => h,
    };
    if h.unit_bytes != UNIT_BYTES {
        return Err(identity(format!(
            "the device was made with {}-byte extent units, this tierblk uses {UNIT_BYTES}",
            h.unit_bytes
        )));
    }
    if h.capacity > def.capacity.0 {
        return Err(Error::Shrunk {
            tier: def.name.clone(),
            recorded: crate::config::ByteSize(h.capacity),
            configured: def.capacity,
        });
    }
    Ok(Some(h))
}

fn missing_file(def: &TierDefinition, path: &Path, uuid: &str) -> Error {
    Error::Identity {
        tier: def.name.clone(),
        path: path.to_path_buf(),
        reason: format!("the extent file is missing (deleted, or the path changed?); the metadata store expects the tier with UUID {uuid} there"),
    }
}

/// Runs the checks of `TierSet::open` without creating, locking or writing
/// anything (`check-config`); with no store yet, every tier must be new.
pub fn check_against(defs: &[TierDefinition], store: Option<&crate::meta::Store>) -> Result<()> {
    let records = match store {
        Some(store) => {
            let records = set::records(store)?;
            set::refuse_removed_tiers(defs, &records, store)?;
            records
        }
        None => Default::default(),
    };
    set::refuse_shared_devices(defs)?;
    for d in defs {
        let expect = set::expect_of(&records, &d.name);
        if expect == Expect::New && !d.path.exists() {
            continue; // serve --create-dirs makes it
        }
        let (path, is_block_device) = device_path(d)?;
        if !is_block_device && !path.exists() {
            if let Expect::Uuid(u) = expect {
                return Err(missing_file(d, &path, u));
            }
            continue;
        }
        let file = File::open(&path).map_err(|source| Error::Open {
            tier: d.name.clone(),
            path: path.clone(),
            source,
        })?;
        let found = TierHeader::read(&file).map_err(|e| Error::Identity {
            tier: d.name.clone(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        judge(d, &path, found, expect, is_block_device)?;
    }
    Ok(())
}

/// The device a tier definition names: (path, is a block device).
fn device_path(def: &TierDefinition) -> Result<(PathBuf, bool)> {
    if !def.path.exists() {
        return Err(Error::Missing {
            tier: def.name.clone(),
            path: def.path.clone(),
        });
    }
    let meta = std::fs::metadata(&def.path).map_err(|source| Error::Open {
        tier: def.name.clone(),
        path: def.path.clone(),
        source,
    })?;
    if meta.file_type().is_block_device() {
        Ok((def.path.clone(), true))
    } else if meta.is_dir() {
        Ok((def.path.join(EXTENT_FILE), false))
    } else {
        Err(Error::Open {
            tier: def.name.clone(),
            path: def.path.clone(),
            source: std::io::Error::other("not a directory or a block device"),
        })
    }
}

fn open_file(def: &TierDefinition, path: &Path, direct: bool, create: bool) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if create {
        o.create_new(true).mode(0o600);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path).map_err(|source| Error::Open {
        tier: def.name.clone(),
        path: path.to_path_buf(),
        source,
    })
}

/// Opens an existing extent file or block device; an extent file readable
/// by others is made private (0600).
fn open_existing(def: &TierDefinition, path: &Path) -> Result<File> {
    let file = open_file(def, path, false, false)?;
    let meta = file.metadata().map_err(|source| Error::Open {
        tier: def.name.clone(),
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| Error::Io {
                tier: def.name.clone(),
                path: path.to_path_buf(),
                what: "making the extent file private (chmod 0600)",
                source,
            })?;
    }
    Ok(file)
}

/// Creates a new tier's extent file (0600) at its full size.
fn create_extent_file(def: &TierDefinition, path: &Path) -> Result<File> {
    let file = open_file(def, path, false, true)?;
    let needed = HEADER_BYTES + def.capacity.0;
    preallocate(&file, needed).map_err(|source| Error::Io {
        tier: def.name.clone(),
        path: path.to_path_buf(),
        what: "preallocating extent file",
        source,
    })?;
    if let Some(dir) = path.parent() {
        // Make the new file's name durable with it.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(file)
}

fn free_bytes(file: &File) -> std::io::Result<u64> {
    // SAFETY: statvfs is plain data; fstatvfs fills it for the open fd.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the duration of the call and `st` is a
    // live, writable statvfs.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn lock(file: &File) -> std::io::Result<()> {
    // SAFETY: flock only takes the fd (open for the call) and flags.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::ENOSYS)
    )
}

fn write_zeros(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    const BLOCK: u64 = 1 << 20;
    let zeros = vec![0u8; BLOCK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = BLOCK.min(len - done) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate only reads its scalar arguments; the fd is owned by
    // `file` and open for the duration of the call.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes `file` at least `size` bytes, with its blocks allocated where the
/// filesystem can.
fn preallocate(file: &File, size: u64) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len >= size {
        return Ok(());
    }
    match fallocate(file, 0, 0, size) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate (ext2/3, tmpfs of old kernels, some
        // FUSE): a sparse file of the right size, but only if the
        // filesystem has room for it today, so a tier is never promised
        // more than its disk holds.
        Err(e) if unsupported(&e) => {
            let free = free_bytes(file)?;
            let more = size - len;
            if free < more {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("the filesystem cannot preallocate and has {free} bytes free, {more} are needed"),
                ));
            }
            file.set_len(size)
        }
        Err(e) => Err(e),
    }
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKZEROOUT: libc::c_ulong = 0x127f;

fn block_device_size(file: &File) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // to a live local of that type.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r == 0 {
        Ok(size)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn blk_zeroout(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer,
    // which points to a live local array of exactly that shape.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, PerformanceMetrics};

    pub(crate) fn def(id: u8, dir: &Path, cap: u64) -> TierDefinition {
        TierDefinition {
            tier_id: id,
            name: format!("t{id}"),
            performance_metrics: PerformanceMetrics {
                read_latency_us: 100.0,
                write_latency_us: 100.0,
                iops: 0,
                bandwidth_mibps: 100.0,
            },
            capacity: ByteSize(cap),
            cost_per_gb: 0.1,
            path: dir.to_path_buf(),
            direct_io: false,
            emulate: None,
            fault: None,
        }
    }

    #[test]
    fn missing_directory_is_named_in_error() {
        let e = Tier::open(
            &def(0, Path::new("/nonexistent/tier"), 1 << 20),
            Expect::New,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "tier 't0': path /nonexistent/tier does not exist"
        );
    }

    #[test]
    fn new_tier_preallocates_a_private_extent_file_after_its_header() {
        let d = tempfile::tempdir().unwrap();
        let t = Tier::open(&def(0, d.path(), 4 << 20), Expect::New).unwrap();
        let meta = std::fs::metadata(t.path()).unwrap();
        assert_eq!(meta.len(), HEADER_BYTES + (4 << 20));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(t.usage(), (0, 4 << 20));
        let h = TierHeader::read(&File::open(t.path()).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((h.uuid.as_str(), h.tier_name.as_str()), (t.uuid(), "t0"));
        assert_eq!(h.capacity, 4 << 20);
    }

    #[test]
    fn reused_extent_reads_zeros() {
        let d = tempfile::tempdir().unwrap();
        let t = Tier::open(&def(0, d.path(), 1 << 20), Expect::New).unwrap();
        let off = t.allocate(1 << 20).unwrap().unwrap();
        t.write_all_at(&[0xab; 4096], off + 8192).unwrap();
        t.free(off, 1 << 20);
        let again = t.allocate(1 << 20).unwrap().unwrap();
        assert_eq!(again, off);
        let mut buf = [1u8; 4096];
        t.read_exact_at(&mut buf, off + 8192).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(t.allocate(UNIT_BYTES).unwrap().is_none(), "tier is full");
    }

    #[test]
    fn every_zeroing_method_zeroes_and_never_touches_the_header() {
        let d = tempfile::tempdir().unwrap();
        let t = Tier::open(&def(0, d.path(), 1 << 20), Expect::New).unwrap();
        for method in [ZERO_BY_ZERO_RANGE, ZERO_BY_PUNCH_HOLE, ZERO_BY_WRITING] {
            t.write_all_at(&[0xcd; 8192], 4096).unwrap();
            t.zero_method.store(method, Ordering::Relaxed);
            t.zero_range(0, 1 << 20).unwrap();
            let mut buf = [1u8; 8192];
            t.read_exact_at(&mut buf, 4096).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "method {method}");
        }
        let h = TierHeader::read(&File::open(t.path()).unwrap()).unwrap();
        assert_eq!(h.unwrap().uuid, t.uuid());
    }

    #[test]
    fn a_tier_is_refused_on_a_wrong_missing_or_foreign_device() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let ua = Tier::open(&def(0, &a, 1 << 20), Expect::New)
            .unwrap()
            .uuid()
            .to_string();
        let ub = Tier::open(&def(1, &b, 1 << 20), Expect::New)
            .unwrap()
            .uuid()
            .to_string();
        // Swapped: a's device where b is expected.
        let e = Tier::open(&def(1, &a, 1 << 20), Expect::Uuid(&ub))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&ua) && e.contains(&ub) && e.contains("swapped"),
            "{e}"
        );
        // Known device reopens; a store that does not know it refuses it.
        Tier::open(&def(0, &a, 1 << 20), Expect::Uuid(&ua)).unwrap();
        let e = Tier::open(&def(0, &a, 1 << 20), Expect::New)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not know") && e.contains(&ua), "{e}");
        // Emptied: the extent file replaced by zeros of the same size.
        let f = a.join(EXTENT_FILE);
        std::fs::write(&f, vec![0u8; (HEADER_BYTES + (1 << 20)) as usize]).unwrap();
        let e = Tier::open(&def(0, &a, 1 << 20), Expect::Uuid(&ua))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tierblk header") && e.contains(&ua), "{e}");
        // Deleted.
        std::fs::remove_file(&f).unwrap();
        let e = Tier::open(&def(0, &a, 1 << 20), Expect::Uuid(&ua))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains(&ua), "{e}");
        assert!(!f.exists(), "a refused open creates nothing");
    }

    #[test]
    fn a_tier_device_is_locked_against_a_second_opener() {
        let d = tempfile::tempdir().unwrap();
        let t = Tier::open(&def(0, d.path(), 1 << 20), Expect::New).unwrap();
        let e = Tier::open(&def(0, d.path(), 1 << 20), Expect::Uuid(t.uuid())).unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        let uuid = t.uuid().to_string();
        drop(t);
        Tier::open(&def(0, d.path(), 1 << 20), Expect::Uuid(&uuid)).unwrap();
    }

    #[test]
    fn capacity_grows_but_never_shrinks() {
        let d = tempfile::tempdir().unwrap();
        let uuid = Tier::open(&def(0, d.path(), 1 << 20), Expect::New)
            .unwrap()
            .uuid()
            .to_string();
        let t = Tier::open(&def(0, d.path(), 2 << 20), Expect::Uuid(&uuid)).unwrap();
        assert_eq!(t.usage().1, 2 << 20);
        drop(t);
        let e = Tier::open(&def(0, d.path(), 1 << 20), Expect::Uuid(&uuid)).unwrap_err();
        assert!(e.to_string().contains("shrinking"), "{e}");
    }

    #[test]
    fn a_failed_new_tier_leaves_no_file_behind() {
        let d = tempfile::tempdir().unwrap();
        // Far beyond any test machine's disk: preallocation fails.
        let e = Tier::open(&def(0, d.path(), 1 << 60), Expect::New).unwrap_err();
        assert!(e.to_string().contains("preallocating"), "{e}");
        assert!(!d.path().join(EXTENT_FILE).exists());
    }
}
