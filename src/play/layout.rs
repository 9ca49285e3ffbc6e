//! Where a trace's requests land in the volume, and what writes carry.
//!
//! Each trace device (address space) gets its own region of the volume:
//! device 0 starts at byte 0, each next device after the previous one's
//! span (its highest byte touched in the played slice), rounded up to
//! [`DEVICE_ALIGN`]. A request's volume offset is `base(dev) + offset`,
//! wrapped modulo the volume size and aligned down to 512 B; its length is
//! rounded up to 512 B and capped at [`MAX_REQUEST_BYTES`]; a request that
//! would run past the end of the volume is moved back to end at the end.
//! When the volume is at least as large as the laid-out spans nothing
//! wraps, chunk boundaries are kept (bases are aligned to 16 MiB, a
//! multiple of every chunk size), and the daemon sees chunk for chunk the
//! accesses `tierblk replay` counts for the same slice.

use serde::Serialize;

/// Sector size of virtio-blk requests: offsets and lengths are multiples.
pub const SECTOR: u64 = 512;
/// Alignment of each device's region in the volume.
pub const DEVICE_ALIGN: u64 = 16 << 20;
/// Longest request played (the daemon's `size_max`, 1 MiB); longer trace
/// requests are cut to it and counted.
pub const MAX_REQUEST_BYTES: u64 = crate::blk::config_space::SIZE_MAX as u64;
/// Tag at the start of every sector play writes.
pub const PATTERN_MAGIC: &[u8; 8] = b"TIERPLAY";

/// One trace device's region of the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeviceRegion {
    pub dev: u32,
    /// Volume byte offset of the device's byte 0 (before wrapping).
    pub base: u64,
    /// Highest byte the played slice touches on the device, plus one.
    pub span: u64,
}

/// The devices' regions and the volume they are mapped into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub volume_bytes: u64,
    pub devices: Vec<DeviceRegion>,
    /// Some offsets wrap: the laid-out spans exceed the volume.
    pub wraps: bool,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to).saturating_mul(to)
}

impl Layout {
    /// Lays out devices of these spans (indexed by device id) in a volume
    /// of `volume_bytes` (a multiple of 512, at least 512).
    pub fn new(spans: &[u64], volume_bytes: u64) -> Self {
        let mut base = 0u64;
        let mut devices = Vec::with_capacity(spans.len());
        for (dev, &span) in spans.iter().enumerate() {
            devices.push(DeviceRegion {
                dev: dev as u32,
                base,
                span,
            });
            base = round_up(base.saturating_add(span), DEVICE_ALIGN);
        }
        let end = devices.last().map_or(0, |d| d.base.saturating_add(d.span));
        Self {
            volume_bytes,
            devices,
            wraps: end > volume_bytes,
        }
    }

    /// (volume offset, length, cut) of a trace request; `cut` says the
    /// length was capped at [`MAX_REQUEST_BYTES`] or the volume size.
    pub fn map(&self, dev: u32, offset: u64, len: u64) -> (u64, u64, bool) {
        let size = self.volume_bytes;
        let want = round_up(len.max(1), SECTOR);
        let len = want.min(MAX_REQUEST_BYTES).min(size);
        let base = self.devices.get(dev as usize).map_or(0, |d| d.base);
        let mut off = (base.wrapping_add(offset) % size) / SECTOR * SECTOR;
        if off + len > size {
            off = size - len;
        }
        (off, len, len < want)
    }
}

/// Fills `buf` with the pattern of the volume bytes it will be written to,
/// starting at `volume_offset` (a multiple of 512): every sector starts
/// with [`PATTERN_MAGIC`] and its own volume byte offset (little endian),
/// followed by bytes derived from that offset. Any write of play to a
/// sector therefore leaves the same bytes, so a read-back can check them
/// whatever the order writes completed in.
pub fn fill_pattern(buf: &mut [u8], volume_offset: u64) {
    for (i, sector) in buf.chunks_mut(SECTOR as usize).enumerate() {
        let at = volume_offset + i as u64 * SECTOR;
        sector_pattern(at, sector);
    }
}

fn sector_pattern(at: u64, out: &mut [u8]) {
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(PATTERN_MAGIC);
    head[8..].copy_from_slice(&at.to_le_bytes());
    let seed = (at / SECTOR) as u8;
    for (j, b) in out.iter_mut().enumerate() {
        *b = if j < 16 { head[j] } else { seed ^ (j as u8) };
    }
}

/// Checks bytes read from `volume_offset` against [`fill_pattern`]: the
/// volume offset of the first sector that differs, if any.
pub fn check_pattern(buf: &[u8], volume_offset: u64) -> Option<u64> {
    let mut want = [0u8; SECTOR as usize];
    for (i, sector) in buf.chunks(SECTOR as usize).enumerate() {
        let at = volume_offset + i as u64 * SECTOR;
        sector_pattern(at, &mut want[..sector.len()]);
        if sector != &want[..sector.len()] {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn devices_get_aligned_regions_and_offsets_stay_when_they_fit() {
        let l = Layout::new(&[5 * MIB, 3 * MIB], 64 * MIB);
        assert!(!l.wraps);
        assert_eq!(l.devices[1].base, 16 * MIB);
        assert_eq!(l.map(0, 4096, 4096), (4096, 4096, false));
        assert_eq!(l.map(1, 4096, 4096), (16 * MIB + 4096, 4096, false));
        // Unaligned trace requests are widened to whole sectors.
        assert_eq!(l.map(0, 1000, 100), (512, 512, false));
    }

    #[test]
    fn offsets_past_the_volume_wrap_and_never_run_past_its_end() {
        let l = Layout::new(&[100 * MIB], 8 * MIB);
        assert!(l.wraps);
        assert_eq!(l.map(0, 9 * MIB, 4096), (MIB, 4096, false));
        // A request that would cross the end is moved back inside.
        assert_eq!(l.map(0, 8 * MIB - 512, 4096), (8 * MIB - 4096, 4096, false));
        let (off, len, cut) = l.map(0, 0, 3 * MIB);
        assert_eq!((off, len, cut), (0, MAX_REQUEST_BYTES, true));
        let tiny = Layout::new(&[MIB], 1024);
        assert_eq!(tiny.map(0, 0, 4096), (0, 1024, true));
        // An unknown device maps like device 0.
        assert_eq!(l.map(7, 4096, 512), (4096, 512, false));
    }

    #[test]
    fn pattern_names_its_sector_and_a_changed_byte_is_found() {
        let mut b = vec![0u8; 2048];
        fill_pattern(&mut b, 8192);
        assert_eq!(&b[512..520], PATTERN_MAGIC);
        assert_eq!(u64::from_le_bytes(b[520..528].try_into().unwrap()), 8704);
        assert_eq!(check_pattern(&b, 8192), None);
        // The same bytes written by another request covering them agree.
        let mut c = vec![0u8; 1024];
        fill_pattern(&mut c, 8704);
        assert_eq!(&c[..], &b[512..1536]);
        b[1500] ^= 1;
        assert_eq!(check_pattern(&b, 8192), Some(9216));
        assert_eq!(check_pattern(&b, 0), Some(0));
    }
}
