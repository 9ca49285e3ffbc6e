//! Storage tiers: the backing device of each tier (an extent file in a
//! directory, or a raw block device), its extent allocator and its optional
//! speed emulation.

mod emulate;
pub mod extent;

use std::{
    fs::{File, OpenOptions},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::Mutex,
};

pub use emulate::Emulator;
pub use extent::{ExtentAllocator, UNIT_BYTES};

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
        "tier '{tier}': capacity {capacity} bytes exceeds block device {path} size {size} bytes"
    )]
    DeviceTooSmall {
        tier: String,
        path: PathBuf,
        capacity: u64,
        size: u64,
    },
    #[error("tier '{tier}': capacity must be a multiple of 64KiB (got {capacity} bytes)")]
    Unaligned { tier: String, capacity: u64 },
    #[error("tier '{tier}': {reason}")]
    Extent { tier: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// One open tier.
#[derive(Debug)]
pub struct Tier {
    def: TierDefinition,
    path: PathBuf,
    /// Buffered (page-cached) handle; always present.
    file: File,
    /// O_DIRECT handle, when the tier is configured for direct I/O.
    direct: Option<File>,
    is_block_device: bool,
    alloc: Mutex<ExtentAllocator>,
    emulator: Option<Emulator>,
}

impl Tier {
    /// Opens (creating and preallocating if needed) the tier's device.
    pub fn open(def: &TierDefinition) -> Result<Self> {
        let name = def.name.clone();
        let capacity = def.capacity.0;
        if !capacity.is_multiple_of(UNIT_BYTES) {
            return Err(Error::Unaligned {
                tier: name,
                capacity,
            });
        }
        if !def.path.exists() {
            return Err(Error::Missing {
                tier: name,
                path: def.path.clone(),
            });
        }
        let meta = std::fs::metadata(&def.path).map_err(|source| Error::Open {
            tier: name.clone(),
            path: def.path.clone(),
            source,
        })?;
        let is_block_device = meta.file_type().is_block_device();
        let (path, fresh) = if is_block_device {
            (def.path.clone(), false)
        } else if meta.is_dir() {
            let p = def.path.join(EXTENT_FILE);
            let fresh = !p.exists();
            (p, fresh)
        } else {
            return Err(Error::Open {
                tier: name,
                path: def.path.clone(),
                source: std::io::Error::other("not a directory or a block device"),
            });
        };
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if !is_block_device {
                o.create(true).truncate(false);
            }
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path).map_err(|source| Error::Open {
                tier: name.clone(),
                path: path.clone(),
                source,
            })
        };
        let file = open(false)?;
        let io_err = |what, source| Error::Io {
            tier: name.clone(),
            path: path.clone(),
            what,
            source,
        };
        if is_block_device {
            let size = block_device_size(&file).map_err(|e| io_err("BLKGETSIZE64", e))?;
            if size < capacity {
                return Err(Error::DeviceTooSmall {
                    tier: name,
                    path,
                    capacity,
                    size,
                });
            }
        } else {
            preallocate(&file, capacity).map_err(|e| io_err("preallocating extent file", e))?;
        }
        let direct = if def.direct_io {
            Some(open(true)?)
        } else {
            None
        };
        // A fresh file reads as zeros; any other device may hold old bytes.
        let alloc = ExtentAllocator::new(capacity / UNIT_BYTES, !fresh);
        Ok(Self {
            def: def.clone(),
            path,
            file,
            direct,
            is_block_device,
            alloc: Mutex::new(alloc),
            emulator: def.emulate.as_ref().map(Emulator::new),
        })
    }

    pub fn id(&self) -> u8 {
        self.def.tier_id
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    pub fn definition(&self) -> &TierDefinition {
        &self.def
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File descriptor for I/O; `direct` picks the O_DIRECT handle when the
    /// tier has one (the caller checks buffer alignment).
    pub fn fd(&self, direct: bool) -> RawFd {
        match (&self.direct, direct) {
            (Some(d), true) => d.as_raw_fd(),
            _ => self.file.as_raw_fd(),
        }
    }

    pub fn has_direct_io(&self) -> bool {
        self.direct.is_some()
    }

    pub fn emulator(&self) -> Option<&Emulator> {
        self.emulator.as_ref()
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn allocator(&self) -> std::sync::MutexGuard<'_, ExtentAllocator> {
        // The allocator holds no invariants a panicking holder could break
        // half-way (each call finishes its bitmap update), so a poisoned
        // lock is still usable.
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates an extent of `bytes` (a power of two ≥ 64 KiB); returns its
    /// byte offset. The extent reads as zeros.
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

    /// Makes `len` bytes at `offset` read as zeros.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<()> {
        let r = if self.is_block_device {
            blk_zeroout(&self.file, offset, len)
        } else {
            fallocate(
                &self.file,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
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
        self.file.sync_data().map_err(|source| Error::Io {
            tier: self.def.name.clone(),
            path: self.path.clone(),
            what: "fdatasync",
            source,
        })
    }
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

fn preallocate(file: &File, capacity: u64) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len >= capacity {
        return Ok(());
    }
    match fallocate(file, 0, 0, capacity) {
        Ok(()) => Ok(()),
        // Filesystems without fallocate (tmpfs of old kernels, some FUSE):
        // fall back to a sparse file of the right size.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => file.set_len(capacity),
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

/// All tiers of the daemon, indexed by tier id.
#[derive(Debug, Default)]
pub struct TierSet {
    by_id: Vec<Option<Tier>>,
    /// Configured tier ids, fastest first.
    ids: Vec<u8>,
}

impl TierSet {
    pub fn open(defs: &[TierDefinition]) -> Result<Self> {
        let mut by_id: Vec<Option<Tier>> = Vec::new();
        for d in defs {
            let t = Tier::open(d)?;
            let i = d.tier_id as usize;
            if by_id.len() <= i {
                by_id.resize_with(i + 1, || None);
            }
            by_id[i] = Some(t);
        }
        let ids = by_id.iter().flatten().map(Tier::id).collect();
        Ok(Self { by_id, ids })
    }

    /// Configured tier ids, fastest first.
    pub fn ids(&self) -> &[u8] {
        &self.ids
    }

    pub fn get(&self, id: u8) -> Option<&Tier> {
        self.by_id.get(id as usize).and_then(|t| t.as_ref())
    }

    /// Tiers fastest (lowest id) first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Tier> {
        self.by_id.iter().flatten()
    }

    pub fn slowest(&self) -> Option<&Tier> {
        self.iter().last()
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
        }
    }

    #[test]
    fn missing_directory_is_named_in_error() {
        let e = Tier::open(&def(0, Path::new("/nonexistent/tier"), 1 << 20)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tier 't0': path /nonexistent/tier does not exist"
        );
    }

    #[test]
    fn new_tier_preallocates_extent_file() {
        let d = tempfile::tempdir().unwrap();
        let t = Tier::open(&def(0, d.path(), 4 << 20)).unwrap();
        assert_eq!(std::fs::metadata(t.path()).unwrap().len(), 4 << 20);
        assert_eq!(t.usage(), (0, 4 << 20));
    }

    #[test]
    fn reused_extent_reads_zeros() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        let t = Tier::open(&def(0, d.path(), 1 << 20)).unwrap();
        let off = t.allocate(1 << 20).unwrap().unwrap();
        t.file().write_all_at(&[0xab; 4096], off + 8192).unwrap();
        t.free(off, 1 << 20);
        let again = t.allocate(1 << 20).unwrap().unwrap();
        assert_eq!(again, off);
        let mut buf = [1u8; 4096];
        t.file().read_exact_at(&mut buf, off + 8192).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        assert!(t.allocate(UNIT_BYTES).unwrap().is_none(), "tier is full");
    }
}
